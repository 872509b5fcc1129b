//! The instance's background tasks, owned in one place so that one that ends while the
//! instance serves is noticed: the relay, the subscriptions, the probes, the shared head
//! reads, the history sweep and the snapshot service all run until shutdown, and a
//! silently dead one (a subscriber no longer relaying, say) would leave streams open
//! that receive nothing. `Application::run_until_stopped` watches [`Tasks::ended`]: the
//! first task to end early is logged with how it ended, readiness turns false, the
//! instance drains and stops, and the process exits non-zero for its supervisor to
//! restart it.

use std::{collections::HashMap, future::Future};

use tokio::task::{Id, JoinError, JoinSet};

/// Background tasks, each with a name for the log.
#[derive(Debug, Default)]
pub struct Tasks {
    set: JoinSet<()>,
    names: HashMap<Id, &'static str>,
}

/// How a background task ended.
#[derive(Debug)]
pub struct Ended {
    pub name: &'static str,
    /// `Err` when it panicked (or was cancelled).
    pub outcome: Result<(), JoinError>,
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.outcome {
            Ok(()) => write!(f, "background task `{}` returned", self.name),
            Err(error) => write!(f, "background task `{}` failed: {error}", self.name),
        }
    }
}

impl Tasks {
    /// Runs `task` in the background under `name`.
    pub fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        let handle = self.set.spawn(task);
        self.names.insert(handle.id(), name);
    }

    /// The next task to end, and how; pending forever when there are none (so that a
    /// `select!` over it waits on its other branches).
    pub async fn ended(&mut self) -> Ended {
        match self.set.join_next_with_id().await {
            Some(Ok((id, ()))) => Ended {
                name: self.names.remove(&id).unwrap_or("unnamed"),
                outcome: Ok(()),
            },
            Some(Err(error)) => Ended {
                name: self.names.remove(&error.id()).unwrap_or("unnamed"),
                outcome: Err(error),
            },
            None => std::future::pending().await,
        }
    }

    /// Waits for every task to end (after shutdown was signalled to them), logging any
    /// that panicked.
    pub async fn join_all(mut self) {
        while let Some(joined) = self.set.join_next_with_id().await {
            if let Err(error) = joined {
                let name = self.names.remove(&error.id()).unwrap_or("unnamed");
                tracing::error!(task = name, %error, "background task failed during shutdown");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_task_that_ends_is_named_with_how_it_ended() {
        let mut tasks = Tasks::default();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tasks.spawn("relay", async move {
            let _ = stopped.await;
        });
        tasks.spawn("probes", async { panic!("lost the subscriber") });
        let ended = tasks.ended().await;
        assert_eq!(ended.name, "probes");
        assert!(ended.outcome.as_ref().is_err_and(JoinError::is_panic));
        assert!(ended.to_string().contains("`probes` failed"), "{ended}");
        stop.send(()).expect("the relay waits");
        let ended = tasks.ended().await;
        assert_eq!((ended.name, ended.outcome.is_ok()), ("relay", true));
        // None left: waits on other branches.
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(20), tasks.ended())
                .await
                .is_err()
        );
    }
}
