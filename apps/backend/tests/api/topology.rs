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

/// One stream held the way a browser holds it, through nginx from its own source address:
/// reconnecting at once (from its last id) on `stream.reconnect`, after a pause when the
/// stream ends otherwise, until `stop`. Returns the `n`s of the broadcasts it received
/// and how many times it was told to reconnect.
async fn hold_stream(
    client: reqwest::Client,
    base: String,
    token: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    back_off: Duration,
) -> (Vec<u64>, usize) {
    use std::sync::atomic::Ordering;
    let (mut received, mut moved, mut last_id) = (Vec::new(), 0, None::<String>);
    while !stop.load(Ordering::Relaxed) {
        let mut request = client.get(format!("{base}/api/events")).bearer_auth(&token);
        if let Some(id) = &last_id {
            request = request.header("Last-Event-ID", id);
        }
        let mut stream = match request.send().await {
            Ok(response) if response.status() == 200 => SseStream::new(response),
            // Refused (nginx's limit per address, a busy instance): as a browser, later.
            _ => {
                tokio::time::sleep(back_off).await;
                continue;
            }
        };
        loop {
            if stop.load(Ordering::Relaxed) {
                return (received, moved);
            }
            match stream.next_frame_within(Duration::from_millis(300)).await {
                None => continue,
                Some(None) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    break;
                }
                Some(Some(frame)) => {
                    if frame.id.is_some() {
                        last_id.clone_from(&frame.id);
                    }
                    match frame.event.as_deref() {
                        Some("stream.reconnect") => {
                            moved += 1;
                            break;
                        }
                        Some("test.broadcast") => {
                            received.push(frame.json()["data"]["n"].as_u64().unwrap_or(0));
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    (received, moved)
}

/// 2,000 streams through nginx, all on the first instance while the second is down; the
/// second starts: within a minute each holds 1,000 ± 10% (the first sheds its excess,
/// each stream told to reconnect, and refuses new streams meanwhile, so nginx sends them
/// to the second), and every broadcast published meanwhile reaches every stream exactly
/// once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_instance_takes_its_share_of_the_streams_and_nothing_is_lost() {
    use std::sync::{Arc, atomic::AtomicBool};
    const STREAMS: usize = 2_000;
    const BROADCASTS: u64 = 40;
    let redis = RedisServer::start().await;
    let env = |id| [("SERVER_ID", id), ("REBALANCE_RATE", "100")];
    let one = BackendProcess::start(Some(&redis), &env("backend-1")).await;
    let two_port = free_port();
    let web = TempDir::new("web");
    std::fs::write(web.path.join("index.html"), "<!doctype html>").expect("index");
    let nginx = Nginx::start(
        host_port(&one.address),
        &format!("127.0.0.1:{two_port}"),
        &web.path,
    )
    .await;

    // Each stream from one of 100 loopback addresses, as from many browsers: nginx
    // allows 64 streams per address, and 10 opens a second.
    let clients: Vec<reqwest::Client> = (0..100u8)
        .map(|i| {
            reqwest::Client::builder()
                .local_address(std::net::IpAddr::from([127, 0, 0, 2 + i]))
                .pool_max_idle_per_host(0)
                .build()
                .expect("a client")
        })
        .collect();
    let tokens = backend::auth::Tokens::new(JWT_SECRET, Duration::from_secs(600));
    let stop = Arc::new(AtomicBool::new(false));
    let holders: Vec<_> = (0..STREAMS)
        .map(|i| {
            let (token, _) = tokens.issue(&format!("r{i}")).expect("a token");
            tokio::spawn(hold_stream(
                clients[i % clients.len()].clone(),
                nginx.base.clone(),
                token,
                stop.clone(),
                Duration::from_millis(300 + 70 * (i % 10) as u64),
            ))
        })
        .collect();
    let open = |address: String| async move {
        metric_value(&address, "sse_streams_open")
            .await
            .unwrap_or(0.0) as usize
    };
    eventually(
        "every stream open on backend-1",
        Duration::from_secs(60),
        || async { (open(one.address.clone()).await == STREAMS).then_some(()) },
    )
    .await;

    let two = BackendProcess::spawn_on(two_port, Some(&redis), &env("backend-2"), None);
    assert!(readiness_becomes(&two.address, 200).await);
    let publisher = {
        let base = nginx.base.clone();
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            for n in 1..=BROADCASTS {
                let body =
                    json!({"broadcast": true, "eventType": "test.broadcast", "data": {"n": n}});
                let response = client
                    .post(format!("{base}/api/publish"))
                    .bearer_auth(PUBLISH_KEY)
                    .json(&body)
                    .send()
                    .await
                    .expect("publish");
                assert_eq!(response.status(), 202);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let balanced = |held: usize| (900..=1_100).contains(&held);
    eventually("1,000 ± 10% on each", Duration::from_secs(60), || async {
        let (a, b) = (
            open(one.address.clone()).await,
            open(two.address.clone()).await,
        );
        (balanced(a) && balanced(b) && a + b == STREAMS).then_some(())
    })
    .await;
    publisher.await.expect("the publisher finishes");
    // Then until every stream has every broadcast (or a deadline says one never will).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let delivered = || async {
        let (a, b) = (one.address.clone(), two.address.clone());
        let count = |address: String| async move {
            metric_value(
                &address,
                r#"events_delivered_total{event_type="test.broadcast"}"#,
            )
            .await
            .unwrap_or(0.0)
        };
        count(a).await + count(b).await
    };
    while delivered().await < (STREAMS as u64 * BROADCASTS) as f64
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut moved = 0;
    for holder in holders {
        let (received, told) = holder.await.expect("a holder finishes");
        assert_eq!(
            received,
            (1..=BROADCASTS).collect::<Vec<_>>(),
            "every broadcast once, in order"
        );
        moved += told;
    }
    assert!(
        (900..=1_100).contains(&moved),
        "about half the streams moved, once each: {moved}"
    );
}
