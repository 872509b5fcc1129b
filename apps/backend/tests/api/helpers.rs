//! The test harness: private redis-server processes, in-process backend instances, and a
//! small SSE reader.

use std::{
    net::TcpListener,
    pin::Pin,
    process::{Child, Command, Stdio},
    time::Duration,
};

use backend::{Application, Settings, Stop, config::Secret, hub::Hub};
use futures_util::{Stream, StreamExt};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
    sync::oneshot,
    task::JoinHandle,
};

/// The secret test instances sign tokens with (tests mint their own tokens with it too).
pub const JWT_SECRET: &str = "test-secret-test-secret-test-secret-0123";
pub const PUBLISH_KEY: &str = "test-publish-key";
/// How long a test waits for something that should happen.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A private redis-server on a free loopback port, without persistence; killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
}

impl RedisServer {
    pub async fn start() -> Self {
        let mut server = Self {
            child: None,
            port: free_port(),
        };
        server.restart().await;
        server
    }

    /// Starts (again) on the same port, empty, and waits until it answers.
    pub async fn restart(&mut self) {
        self.stop();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed: run `bash .ci/setup`");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Ok(reply) = self.command(&["PING"]).await
                && reply == "+PONG"
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the server (its data is gone: it has no persistence).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Sends `signal` (`STOP`, `CONT`) to the server: a stopped Redis keeps its
    /// connections but answers nothing, as one stalled by a long script or a slow disk.
    pub fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let _ = std::process::Command::new("kill")
                .args([format!("-{signal}"), child.id().to_string()])
                .status();
        }
    }

    /// Sends one command and returns the first line of the reply (enough for status,
    /// integer and error replies).
    pub async fn command(&self, args: &[&str]) -> std::io::Result<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).await?;
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(request.as_bytes()).await?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).await?;
        Ok(line.trim_end().to_string())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Settings for a test instance: loopback, port 0, the test secrets, and Redis if given.
pub fn settings(redis: Option<&RedisServer>) -> Settings {
    let mut settings = Settings::for_tests();
    settings.redis_url = redis.map(|r| Secret::new(r.url()));
    settings.jwt_secret = Some(Secret::new(JWT_SECRET));
    settings.publish_key = Some(Secret::new(PUBLISH_KEY));
    settings
}

/// A running backend instance; stops when dropped.
pub struct TestApp {
    pub address: String,
    pub server_id: String,
    pub client: reqwest::Client,
    pub hub: Hub,
    stop: Option<oneshot::Sender<Stop>>,
    running: Option<JoinHandle<anyhow::Result<()>>>,
}

pub async fn spawn_app(redis: Option<&RedisServer>) -> TestApp {
    spawn_app_with(settings(redis)).await
}

pub async fn spawn_app_with(settings: Settings) -> TestApp {
    let listener = backend::listen(([127, 0, 0, 1], 0).into()).expect("bind a free port");
    let app = Application::build(settings, listener)
        .await
        .expect("the application builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let server_id = app.server_id().to_string();
    let hub = app.hub();
    let (stop, stopped) = oneshot::channel::<Stop>();
    let running =
        tokio::spawn(app.run_until_stopped(async { stopped.await.unwrap_or(Stop::Graceful) }));
    TestApp {
        address,
        server_id,
        client: reqwest::Client::new(),
        hub,
        stop: Some(stop),
        running: Some(running),
    }
}

/// The value of one series (name and labels, as exposed) of `base`'s `/metrics`; `None`
/// when the series is absent, so that "absent" and "zero" are told apart.
pub async fn metric_value(base: &str, series: &str) -> Option<f64> {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        if name == series {
            value.parse().ok()
        } else {
            None
        }
    })
}

impl TestApp {
    /// See [`metric_value`].
    pub async fn metric_value(&self, series: &str) -> Option<f64> {
        metric_value(&self.address, series).await
    }

    /// Shuts the instance down gracefully (as on SIGTERM) and waits until it has stopped.
    pub async fn stop(self) {
        self.shut_down(Stop::Graceful).await;
    }

    /// Drops every connection at once, as a crash would, and waits until it has stopped.
    pub async fn kill(self) {
        self.shut_down(Stop::Abort).await;
    }

    async fn shut_down(mut self, how: Stop) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(how);
        }
        if let Some(running) = self.running.take() {
            tokio::time::timeout(PATIENCE, running)
                .await
                .expect("the instance stops in time")
                .expect("the run task completes")
                .expect("the instance stops cleanly");
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// A development token for `user_id`, from the instance's own token endpoint.
    pub async fn token(&self, user_id: &str) -> String {
        let response = self
            .post_json("/api/auth/token", None, &json!({ "userId": user_id }))
            .await;
        assert_eq!(response.status(), 200, "token endpoint");
        let body: Value = response.json().await.expect("token response is JSON");
        body["token"]
            .as_str()
            .expect("token is a string")
            .to_string()
    }

    pub async fn post_json(
        &self,
        path: &str,
        token: Option<&str>,
        body: &Value,
    ) -> reqwest::Response {
        let mut request = self.client.post(self.url(path)).json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("request is sent")
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut request = self.client.get(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("request is sent")
    }

    /// `GET path` as the token's user, asserting a 200 and a JSON list.
    pub async fn list(&self, path: &str, token: &str) -> Vec<Value> {
        let response = self.get(path, Some(token)).await;
        assert_eq!(response.status(), 200, "GET {path}");
        response.json().await.expect("a JSON list")
    }

    /// Creates an account and asserts it was created.
    pub async fn create_account(&self, token: &str, name: &str, balance: i64) -> Value {
        let response = self
            .post_json(
                "/api/accounts",
                Some(token),
                &json!({"name": name, "balance": balance}),
            )
            .await;
        assert_eq!(response.status(), 201, "account created");
        response.json().await.expect("account is JSON")
    }

    /// Publishes with the publish API key and asserts it was accepted.
    pub async fn publish(&self, user_id: &str, event_type: &str, data: Value) -> Value {
        let response = self
            .post_json(
                "/api/publish",
                Some(PUBLISH_KEY),
                &json!({"userId": user_id, "eventType": event_type, "data": data}),
            )
            .await;
        assert_eq!(response.status(), 202, "publish accepted");
        response.json().await.expect("publish response is JSON")
    }

    /// Opens a stream (token in the `Authorization` header, as a service would) and reads
    /// up to its `stream.opened` frame, after which it is sure to receive events.
    pub async fn open_stream(&self, token: &str) -> SseStream {
        self.resume_stream(token, None).await
    }

    /// Opens a stream that resumes after `last_event_id`.
    pub async fn resume_stream(&self, token: &str, last_event_id: Option<&str>) -> SseStream {
        let mut request = self.client.get(self.url("/api/events")).bearer_auth(token);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = request.send().await.expect("stream request is sent");
        assert_eq!(response.status(), 200, "stream opened");
        let mut stream = SseStream::new(response);
        let opened = stream.next_event().await;
        assert_eq!(opened.event.as_deref(), Some("stream.opened"));
        assert_eq!(opened.json()["data"]["serverId"], self.server_id.as_str());
        stream
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // Dropping the sender stops the instance.
        self.stop.take();
    }
}

/// The backend binary running as its own process (as in production), for tests of
/// signals and of the command line. Killed on drop.
pub struct BackendProcess {
    child: Child,
    pub address: String,
}

impl BackendProcess {
    /// Starts `target/.../backend` on a free port with the test secrets and `env`.
    pub async fn start(redis: Option<&RedisServer>, env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_backend"));
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
        let process = Self {
            child,
            address: format!("http://127.0.0.1:{port}"),
        };
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while client
            .get(format!("{}/readyz", process.address))
            .send()
            .await
            .map_or(true, |r| r.status() != 200)
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "backend did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        process
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
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.success();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "backend did not exit in time"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < deadline {
        if let Ok(response) = client.get(format!("{address}/readyz")).send().await
            && response.status() == status
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// An event as a client saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub event: String,
    pub envelope: Value,
}

impl Received {
    /// The `n` a test put in the event's data.
    pub fn n(&self) -> Option<u64> {
        self.envelope["data"]["n"].as_u64()
    }
}

/// Follows a user's stream the way a browser's EventSource does: when the stream ends
/// or cannot be opened, it reconnects after a short pause with its last event id,
/// trying `addresses` in turn. Records every event (not `stream.opened`) until `done`
/// says so or `deadline` passes; returns what it saw and how many times it connected.
pub async fn follow(
    addresses: Vec<String>,
    token: String,
    deadline: Duration,
    done: impl Fn(&[Received]) -> bool,
) -> (Vec<Received>, usize) {
    let client = reqwest::Client::new();
    let until = tokio::time::Instant::now() + deadline;
    let mut received: Vec<Received> = Vec::new();
    let mut last_id: Option<String> = None;
    let mut connections = 0;
    let mut next = 0;
    while !done(&received) && tokio::time::Instant::now() < until {
        let address = &addresses[next % addresses.len()];
        next += 1;
        let mut request = client
            .get(format!("{address}/api/events"))
            .bearer_auth(&token);
        if let Some(id) = &last_id {
            request = request.query(&[("lastEventId", id.as_str())]);
        }
        let response = match tokio::time::timeout_at(until, request.send()).await {
            Ok(Ok(response)) if response.status() == 200 => response,
            _ => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        connections += 1;
        let mut stream = SseStream::new(response);
        loop {
            if done(&received) {
                break;
            }
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            match stream.next_frame_within(left).await {
                Some(Some(frame)) => {
                    if frame.id.is_some() {
                        last_id.clone_from(&frame.id);
                    }
                    if let Some(event) = frame.event.clone()
                        && event != "stream.opened"
                    {
                        received.push(Received {
                            event,
                            envelope: frame.json(),
                        });
                    }
                }
                // Ended (or timed out): reconnect.
                Some(None) | None => break,
            }
        }
    }
    (received, connections)
}

/// Publishes `count` events `{"n": first..}` of type `test.counted` to `user_id`, in
/// order, through `addresses` in turn, retrying each until it is accepted (a 503 while
/// Redis is away is expected). Returns the `n`s accepted, in order.
pub async fn publish_counted(
    addresses: Vec<String>,
    user_id: String,
    first: u64,
    count: u64,
    pause: Duration,
) -> Vec<u64> {
    let client = reqwest::Client::new();
    let mut accepted = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for (i, n) in (first..first + count).enumerate() {
        loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "publishing took too long"
            );
            let address = &addresses[i % addresses.len()];
            let response = client
                .post(format!("{address}/api/publish"))
                .bearer_auth(PUBLISH_KEY)
                .json(&json!({"userId": user_id, "eventType": "test.counted", "data": {"n": n}}))
                .send()
                .await;
            match response {
                Ok(r) if r.status() == 202 => break,
                Ok(r) if r.status() == 503 => {}
                Ok(r) => panic!("publish refused: {}", r.status()),
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        accepted.push(n);
        tokio::time::sleep(pause).await;
    }
    accepted
}

/// The `n`s of the `test.counted` events in `received`, in order.
pub fn counted(received: &[Received]) -> Vec<u64> {
    received
        .iter()
        .filter(|r| r.event == "test.counted")
        .filter_map(Received::n)
        .collect()
}

/// One SSE frame: an event, a bare `retry:`, or a comment.
#[derive(Debug, Clone, Default)]
pub struct Frame {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: Option<String>,
    pub retry: Option<u64>,
    pub comment: Option<String>,
}

impl Frame {
    pub fn json(&self) -> Value {
        serde_json::from_str(self.data.as_deref().expect("frame has data"))
            .expect("frame data is JSON")
    }
}

/// Reads frames off a `text/event-stream` response.
pub struct SseStream {
    pub headers: reqwest::header::HeaderMap,
    body: Pin<Box<dyn Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buffer: String,
    /// Everything read so far, verbatim.
    pub raw: String,
}

impl SseStream {
    pub fn new(response: reqwest::Response) -> Self {
        Self {
            headers: response.headers().clone(),
            body: Box::pin(response.bytes_stream()),
            buffer: String::new(),
            raw: String::new(),
        }
    }

    /// The next frame of any kind; `None` when the server ended the stream.
    pub async fn next_frame_within(&mut self, wait: Duration) -> Option<Option<Frame>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                return Some(Some(parse_frame(&block)));
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Err(_) => return None,
                Ok(None) | Ok(Some(Err(_))) => return Some(None),
                Ok(Some(Ok(chunk))) => {
                    let text = std::str::from_utf8(&chunk).expect("stream is UTF-8");
                    self.raw.push_str(text);
                    self.buffer.push_str(text);
                }
            }
        }
    }

    /// The next frame that carries data, skipping comments and `retry:`; panics if none
    /// arrives in time or the stream ends.
    pub async fn next_event(&mut self) -> Frame {
        loop {
            match self.next_frame_within(PATIENCE).await {
                None => panic!("no event within {PATIENCE:?}; read so far:\n{}", self.raw),
                Some(None) => panic!("stream ended; read so far:\n{}", self.raw),
                Some(Some(frame)) if frame.data.is_some() => return frame,
                Some(Some(_)) => continue,
            }
        }
    }

    /// Asserts that no event arrives for `wait`.
    pub async fn expect_no_event(&mut self, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_frame_within(left).await {
                None => return,
                Some(Some(frame)) if frame.data.is_some() => {
                    panic!("unexpected event: {frame:?}")
                }
                Some(Some(_)) => continue,
                Some(None) => panic!("stream ended"),
            }
        }
    }

    /// Waits for the server to end the stream; panics if it does not in time.
    pub async fn expect_end(&mut self) {
        loop {
            match self.next_frame_within(PATIENCE).await {
                None => panic!("stream still open after {PATIENCE:?}"),
                Some(None) => return,
                Some(Some(_)) => continue,
            }
        }
    }
}

fn parse_frame(block: &str) -> Frame {
    let mut frame = Frame::default();
    for line in block.lines() {
        if let Some(comment) = line.strip_prefix(':') {
            frame.comment = Some(comment.trim().to_string());
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => frame.id = Some(value.to_string()),
            "event" => frame.event = Some(value.to_string()),
            "data" => {
                let data = frame.data.get_or_insert_with(String::new);
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(value);
            }
            "retry" => frame.retry = value.parse().ok(),
            _ => {}
        }
    }
    frame
}

/// Mints a token with the test secret directly (for forged, expired or publisher tokens).
pub fn sign(secret: &str, claims: &backend::auth::Claims) -> String {
    backend::auth::Tokens::new(secret, Duration::from_secs(60))
        .sign(claims)
        .expect("HS256 signs")
}

pub fn epoch_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}
