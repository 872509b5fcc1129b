//! The topology `just dev` runs, on free ports: Redis, two backend processes, and nginx
//! with the repo's own nginx.conf in front of them.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::{Value, json};

use crate::helpers::*;

/// The repository's root, where nginx.conf and docker-compose.yml live.
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// nginx running the repo's nginx.conf, rendered for this machine; killed on drop.
pub struct Nginx {
    child: Child,
    pub base: String,
    _dir: TempDir,
}

impl Nginx {
    pub async fn start(backend_1: &str, backend_2: &str, web_root: &Path) -> Self {
        let dir = TempDir::new("nginx");
        let port = free_port();
        let template = std::fs::read_to_string(repo_root().join("nginx.conf"))
            .expect("nginx.conf is readable");
        let rendered = template
            .replace("${BACKEND_1}", backend_1)
            .replace("${BACKEND_2}", backend_2)
            .replace("${NGINX_PORT}", &format!("127.0.0.1:{port}"))
            .replace("${WEB_ROOT}", &web_root.display().to_string())
            .replace("${NGINX_RUN_DIR}", &dir.path.display().to_string());
        let unfilled = rendered
            .lines()
            .filter(|line| !line.trim_start().starts_with('#'))
            .any(|line| line.contains("${"));
        assert!(!unfilled, "every template name is filled in");
        let config = dir.path.join("nginx.conf");
        std::fs::write(&config, rendered).expect("write the rendered config");
        let child = Command::new("nginx")
            .arg("-c")
            .arg(&config)
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx must be installed: run `bash .ci/setup`");
        let nginx = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        let client = reqwest::Client::new();
        eventually("nginx answers", PATIENCE, || async {
            client.get(&nginx.base).send().await.ok().map(drop)
        })
        .await;
        nginx
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: only the master can take its workers down with it.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory removed on drop.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(name: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("{name}-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&path).expect("create a temp dir");
        Self { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

pub fn host_port(address: &str) -> &str {
    address.trim_start_matches("http://")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_in_front_of_two_backends_delivers_survives_a_dead_backend_and_reports() {
    let mut redis = RedisServer::start().await;
    let one = BackendProcess::start(Some(&redis), &[("SERVER_ID", "backend-1")]).await;
    let two = BackendProcess::start(Some(&redis), &[("SERVER_ID", "backend-2")]).await;
    let web = TempDir::new("web");
    std::fs::write(
        web.path.join("index.html"),
        r#"<!doctype html><title>t</title><script type="module" nonce="{{__TRUNK NONCE__}}">1</script>"#,
    )
    .expect("index");
    std::fs::write(web.path.join("web-0123abcd_bg.wasm"), b"\0asm").expect("wasm");
    let nginx = Nginx::start(host_port(&one.address), host_port(&two.address), &web.path).await;
    let through_nginx = Api::new(&nginx.base);
    let http = reqwest::Client::new();

    // The web build: the page revalidated, hashed assets cached for good, as wasm.
    let page = http.get(&nginx.base).send().await.expect("page");
    assert_eq!(page.headers()["cache-control"], "no-cache");
    // Hardened: a content security policy whose nonce is the one the page's inline
    // script carries (fresh per request), no framing, no sniffing, no referrer, no
    // server version.
    let header = |name: &str| {
        page.headers()[name]
            .to_str()
            .unwrap_or_default()
            .to_string()
    };
    let policy = header("content-security-policy");
    assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
    assert!(policy.contains("'wasm-unsafe-eval'"), "{policy}");
    assert_eq!(header("x-content-type-options"), "nosniff");
    assert_eq!(header("referrer-policy"), "no-referrer");
    assert_eq!(header("server"), "nginx", "no version");
    let nonce = policy
        .split("'nonce-")
        .nth(1)
        .and_then(|rest| rest.split('\'').next())
        .expect("the policy names a nonce")
        .to_string();
    let html = page.text().await.expect("page text");
    assert!(html.contains(&format!(r#"nonce="{nonce}""#)), "{html}");
    let again = http.get(&nginx.base).send().await.expect("page");
    assert!(
        !again.text().await.expect("page text").contains(&nonce),
        "a new nonce for every page load"
    );
    let wasm = http
        .get(format!("{}/web-0123abcd_bg.wasm", nginx.base))
        .send()
        .await
        .expect("wasm");
    assert_eq!(wasm.headers()["content-type"], "application/wasm");
    assert!(
        wasm.headers()["cache-control"]
            .to_str()
            .unwrap_or("")
            .contains("immutable")
    );

    // Streams through nginx land on both backends; every event published through nginx
    // reaches every one of them, whichever backend accepted it.
    let token = through_nginx.token("alice").await;
    let mut streams = Vec::new();
    let mut servers = HashSet::new();
    for _ in 0..4 {
        let (stream, server) = through_nginx.open_stream_served(&token, None).await;
        servers.insert(server);
        streams.push(stream);
    }
    assert_eq!(
        servers,
        HashSet::from(["backend-1".to_string(), "backend-2".to_string()])
    );
    let mut accepted_by = HashSet::new();
    for n in 1..=4 {
        let accepted = through_nginx
            .publish("alice", "test.counted", json!({ "n": n }))
            .await;
        accepted_by.insert(
            accepted["serverId"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
    }
    assert_eq!(
        accepted_by.len(),
        2,
        "publishes were spread over both backends"
    );
    for stream in &mut streams {
        for n in 1..=4 {
            assert_eq!(stream.next_event().await.json()["data"]["n"], n);
        }
    }
    drop(streams);

    // backend-1 dies: nginx skips it for new streams and publishes. (Another user now,
    // so that alice's closed streams, which a server notices only lazily, stay out of
    // the counts below.)
    drop(one);
    let token = through_nginx.token("bob").await;
    let before = metric_value(
        &two.address,
        "events_published_total{event_type=\"test.after-kill\"}",
    )
    .await;
    assert_eq!(before, None, "nothing of this type was published yet");
    let mut after = Vec::new();
    for _ in 0..3 {
        let (stream, server) = through_nginx.open_stream_served(&token, None).await;
        assert_eq!(server, "backend-2");
        after.push(stream);
    }
    for n in 1..=3 {
        through_nginx
            .publish("bob", "test.after-kill", json!({ "n": n }))
            .await;
    }
    for stream in &mut after {
        for n in 1..=3 {
            assert_eq!(stream.next_event().await.json()["data"]["n"], n);
        }
    }

    // backend-2's metrics count exactly what went through it.
    let metric = |series: &'static str| metric_value(&two.address, series);
    let published = metric("events_published_total{event_type=\"test.after-kill\"}").await;
    assert_eq!(published, Some(3.0));
    let delivered = metric("events_delivered_total{event_type=\"test.after-kill\"}").await;
    assert_eq!(delivered, Some(9.0), "3 events to 3 streams");
    let at_least = |value: Option<f64>, floor: f64| value.is_some_and(|v| v >= floor);
    assert!(at_least(metric("sse_streams_open").await, 3.0));
    // Only events delivered live have a latency; those a stream read from history (an
    // event published as bob's channel was being subscribed to) do not.
    let latencies = metric("event_delivery_latency_seconds_count").await;
    assert!(at_least(latencies, 1.0), "{latencies:?}");
    let requests =
        metric("http_requests_total{method=\"POST\",route=\"/api/publish\",status=\"202\"}").await;
    assert!(at_least(requests, 3.0), "{requests:?}");

    // Readiness and metrics are the orchestrator's, not the public's: nginx hides them.
    for internal in ["/readyz", "/metrics"] {
        let status = http
            .get(format!("{}{internal}", nginx.base))
            .send()
            .await
            .expect("internal route")
            .status();
        assert_eq!(status, 404, "{internal} through nginx");
    }

    // Redis stops: readiness says so.
    assert!(readiness_becomes(&two.address, 200).await);
    redis.stop();
    assert!(
        readiness_becomes(&two.address, 503).await,
        "/readyz answers 503 once Redis is gone"
    );
    let body: Value = http
        .get(format!("{}/readyz", two.address))
        .send()
        .await
        .expect("readyz")
        .json()
        .await
        .expect("readyz body");
    assert_eq!(body["ready"], false);
    assert!(body["reason"].as_str().is_some_and(|r| r.contains("probe")));
}

#[test]
fn the_compose_file_is_valid() {
    let output = Command::new("docker-compose")
        .current_dir(repo_root())
        .args(["config", "-q"])
        .env("JWT_SECRET", "a-secret-of-at-least-thirty-two-bytes!!")
        .env("PUBLISH_KEY", "key")
        .output()
        .expect("docker-compose must be installed: run `bash .ci/setup`");
    assert!(
        output.status.success(),
        "docker-compose config: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}
