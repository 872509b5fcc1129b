//! The backend binary as its own process, as in production.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use super::{JWT_SECRET, PUBLISH_KEY, RedisServer, eventually, free_port, holds_within};

/// The backend binary running as its own process (as in production), for tests of
/// signals and of the command line. Killed on drop.
pub struct BackendProcess {
    child: Child,
    pub address: String,
}

impl BackendProcess {
    /// Starts `target/.../backend` on a free port with the test secrets and `env`.
    pub async fn start(redis: Option<&RedisServer>, env: &[(&str, &str)]) -> Self {
        let process = Self::spawn(redis, env, None);
        assert!(
            readiness_becomes(&process.address, 200).await,
            "the backend became ready"
        );
        process
    }

    /// [`BackendProcess::start`] with at most `files` open files (soft and hard, as a
    /// container runtime sets them), not yet ready.
    pub fn spawn(redis: Option<&RedisServer>, env: &[(&str, &str)], files: Option<u64>) -> Self {
        Self::spawn_on(free_port(), redis, env, files)
    }

    /// [`BackendProcess::spawn`] on `port` (one a proxy was told of before it started).
    pub fn spawn_on(
        port: u16,
        redis: Option<&RedisServer>,
        env: &[(&str, &str)],
        files: Option<u64>,
    ) -> Self {
        let mut command = match files {
            Some(files) => {
                // util-linux's, found on this process's PATH (the child's is cleared).
                let mut prlimit = Command::new("prlimit");
                prlimit
                    .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                    .arg(format!("--nofile={files}:{files}"))
                    .arg(env!("CARGO_BIN_EXE_backend"));
                prlimit
            }
            None => Command::new(env!("CARGO_BIN_EXE_backend")),
        };
        command
            .env_clear()
            .env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("JWT_SECRET", JWT_SECRET)
            .env("PUBLISH_KEY", PUBLISH_KEY)
            .env("DEV_TOKENS", "true")
            .env("WORKERS", "1")
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null());
        if let Some(redis) = redis {
            command.env("REDIS_URL", redis.url());
        }
        let child = command.spawn().expect("the backend binary starts");
        Self {
            child,
            address: format!("http://127.0.0.1:{port}"),
        }
    }

    /// The exit status, if it has exited by now.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Sends SIGTERM, as an orchestrator does before stopping a container.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// Waits for the process to exit and returns whether it exited successfully.
    pub async fn wait(mut self, within: Duration) -> bool {
        eventually("the backend exits", within, || {
            let exited = self.child.try_wait().expect("try_wait");
            async move { exited.map(|status| status.success()) }
        })
        .await
    }
}

impl Drop for BackendProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `address`'s `/readyz` until it answers `status`; returns whether it did within
/// five seconds (readiness follows a probe sent every 500 ms, stale after 2 s).
pub async fn readiness_becomes(address: &str, status: u16) -> bool {
    let client = reqwest::Client::new();
    let url = format!("{address}/readyz");
    holds_within(Duration::from_secs(5), || async {
        client
            .get(&url)
            .send()
            .await
            .is_ok_and(|response| response.status() == status)
    })
    .await
}
