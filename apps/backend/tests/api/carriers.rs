//! A stream is the same whichever HTTP layer carries it: served straight off a fresh
//! connection (whether its head arrives whole or in pieces), or by actix-web on a
//! connection that carried other requests first. Spoken over raw TCP, so the framing is
//! visible.

use std::{collections::HashMap, time::Duration};

use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::helpers::*;

/// One HTTP/1.1 connection, read by hand.
struct Raw {
    io: TcpStream,
    /// Read but not yet consumed.
    pending: Vec<u8>,
}

struct Head {
    status: u16,
    headers: HashMap<String, String>,
}

impl Raw {
    async fn connect(app: &TestApp) -> Self {
        let address = app.address.trim_start_matches("http://");
        let io = TcpStream::connect(address).await.expect("connects");
        Self {
            io,
            pending: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &str) {
        self.io.write_all(bytes.as_bytes()).await.expect("sends");
    }

    async fn get(&mut self, target: &str, headers: &str) {
        self.send(&format!(
            "GET {target} HTTP/1.1\r\nHost: test\r\n{headers}\r\n"
        ))
        .await;
    }

    /// Reads more bytes; false at end of input.
    async fn fill(&mut self) -> bool {
        let mut buf = [0; 4096];
        let n = tokio::time::timeout(PATIENCE, self.io.read(&mut buf))
            .await
            .expect("the server answers in time")
            .expect("reads");
        self.pending.extend_from_slice(&buf[..n]);
        n > 0
    }

    /// Takes bytes up to and including `delimiter`.
    async fn take_through(&mut self, delimiter: &[u8]) -> Vec<u8> {
        loop {
            if let Some(at) = find(&self.pending, delimiter) {
                return self.pending.drain(..at + delimiter.len()).collect();
            }
            assert!(self.fill().await, "connection ended early");
        }
    }

    async fn take(&mut self, len: usize) -> Vec<u8> {
        while self.pending.len() < len {
            assert!(self.fill().await, "connection ended early");
        }
        self.pending.drain(..len).collect()
    }

    async fn head(&mut self) -> Head {
        let head = String::from_utf8(self.take_through(b"\r\n\r\n").await).expect("text");
        let mut lines = head.split("\r\n");
        let status = lines.next().expect("status line")[9..12]
            .parse()
            .expect("status");
        let headers = lines
            .filter_map(|line| line.split_once(": "))
            .map(|(name, value)| (name.to_ascii_lowercase(), value.to_string()))
            .collect();
        Head { status, headers }
    }

    /// A response's body of known length.
    async fn sized_body(&mut self, head: &Head) -> Vec<u8> {
        let len = head.headers["content-length"].parse().expect("a length");
        self.take(len).await
    }

    /// The next `count` SSE frames of a streaming body, de-chunked if it is chunked,
    /// skipping comments (keep-alives go out on their own schedule).
    async fn frames(&mut self, head: &Head, count: usize) -> Vec<String> {
        let chunked = head.headers.get("transfer-encoding").map(String::as_str) == Some("chunked");
        let mut body = String::new();
        let mut frames = Vec::new();
        while frames.len() < count {
            if let Some(end) = body.find("\n\n") {
                let frame: String = body.drain(..end + 2).collect();
                if !frame.starts_with(':') {
                    frames.push(frame);
                }
                continue;
            }
            let bytes = if chunked {
                let size = String::from_utf8(self.take_through(b"\r\n").await).expect("text");
                let size = usize::from_str_radix(size.trim(), 16).expect("a chunk size");
                let data = self.take(size).await;
                self.take(2).await;
                data
            } else {
                if self.pending.is_empty() {
                    assert!(self.fill().await, "stream ended early");
                }
                std::mem::take(&mut self.pending)
            };
            body.push_str(std::str::from_utf8(&bytes).expect("text"));
        }
        frames
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// How each carrier is reached.
#[derive(Debug, Clone, Copy)]
enum Carrier {
    /// A fresh connection: served straight off the socket.
    Fresh,
    /// A connection that already carried a request: actix-web.
    KeptAlive,
    /// A fresh connection whose head arrives in two pieces: still served off the socket,
    /// which waits for the whole head.
    Split,
}

impl Carrier {
    /// The `carrier` label of the layer that must serve it.
    fn label(self) -> &'static str {
        match self {
            Self::Fresh | Self::Split => "direct",
            Self::KeptAlive => "actix",
        }
    }
}

/// `head`'s headers as every carrier must send them alike: the `date` checked and left
/// out (its value is the time), and the body's framing left out (close-delimited or
/// chunked, the one difference).
fn comparable(head: &Head) -> HashMap<String, String> {
    let mut headers = head.headers.clone();
    let date = headers.remove("date").expect("a date header (RFC 9110)");
    assert!(
        httpdate::parse_http_date(&date).is_ok(),
        "an HTTP date: {date}"
    );
    headers.remove("transfer-encoding");
    headers
}

/// `GET target` with extra `headers` (each line ending in CRLF), over `carrier`.
async fn request(app: &TestApp, carrier: Carrier, target: &str, headers: &str) -> (Raw, Head) {
    let mut raw = Raw::connect(app).await;
    match carrier {
        Carrier::Fresh => raw.get(target, headers).await,
        Carrier::KeptAlive => {
            raw.get("/healthz", "").await;
            let head = raw.head().await;
            assert_eq!(head.status, 200);
            raw.sized_body(&head).await;
            raw.get(target, headers).await;
        }
        Carrier::Split => {
            let request = format!("GET {target} HTTP/1.1\r\nHost: test\r\n{headers}\r\n");
            let (first, rest) = request.split_at(12);
            raw.send(first).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            raw.send(rest).await;
        }
    }
    let head = raw.head().await;
    (raw, head)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_carrier_sends_the_same_headers_and_frames() {
    let app = spawn_app(None).await;
    let token = app.token("alice").await;
    let target = "/api/events";
    let auth = format!("Authorization: Bearer {token}\r\n");

    let mut streams = Vec::new();
    let mut all_headers = Vec::new();
    for carrier in [Carrier::Fresh, Carrier::KeptAlive, Carrier::Split] {
        let before = app
            .metric_value(&format!(
                "sse_streams_carried_total{{carrier=\"{}\"}}",
                carrier.label()
            ))
            .await
            .unwrap_or(0.0);
        let (mut raw, head) = request(&app, carrier, target, &auth).await;
        assert_eq!(head.status, 200, "{carrier:?}");
        for (name, value) in [
            ("content-type", "text/event-stream"),
            ("cache-control", "no-cache"),
            ("x-accel-buffering", "no"),
            ("connection", "close"),
        ] {
            assert_eq!(
                head.headers.get(name).map(String::as_str),
                Some(value),
                "{carrier:?}: {name}"
            );
        }
        let carried = app
            .metric_value(&format!(
                "sse_streams_carried_total{{carrier=\"{}\"}}",
                carrier.label()
            ))
            .await;
        assert_eq!(
            carried,
            Some(before + 1.0),
            "{carrier:?} is served by its carrier"
        );
        all_headers.push((carrier, comparable(&head)));
        let opening = raw.frames(&head, 2).await;
        assert_eq!(opening[0], "retry: 2000\n\n", "{carrier:?}");
        assert!(
            opening[1].starts_with(&format!(
                "id: 0-0.0-0.{:016x}\nevent: stream.opened\ndata: {{",
                events::owner_tag("alice")
            )),
            "{carrier:?}: {}",
            opening[1]
        );
        streams.push((carrier, raw, head));
    }
    assert_eq!(app.hub.stream_count(), 3);
    for (carrier, headers) in &all_headers {
        assert_eq!(
            headers, &all_headers[0].1,
            "{carrier:?}: every header alike"
        );
    }
    let direct = &streams[0].2;
    assert!(
        !direct.headers.contains_key("transfer-encoding"),
        "a fresh connection's stream is delimited by its close"
    );

    let accepted = app
        .publish("alice", "orders.shipped", json!({"orderId": 7}))
        .await;
    let expected_id = format!(
        "id: {}-1.0-0.{:016x}\n",
        accepted["epoch"],
        events::owner_tag("alice")
    );
    let mut seen = Vec::new();
    for (carrier, raw, head) in &mut streams {
        let frame = raw.frames(head, 1).await.remove(0);
        assert!(frame.starts_with(&expected_id), "{carrier:?}: {frame}");
        seen.push(frame);
    }
    assert!(
        seen.iter().all(|frame| frame == &seen[0]),
        "byte for byte the same event on every carrier: {seen:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_carrier_resumes_after_the_last_event_id_header() {
    let app = spawn_app(None).await;
    let token = app.token("alice").await;
    let first = app
        .publish("alice", "orders.shipped", json!({"n": 1}))
        .await;
    app.publish("alice", "orders.shipped", json!({"n": 2}))
        .await;
    let epoch = &first["epoch"];
    let owner = format!("{:016x}", events::owner_tag("alice"));
    let last_seen =
        format!("Last-Event-ID: {epoch}-1.0-0.{owner}\r\nAuthorization: Bearer {token}\r\n");

    for carrier in [Carrier::Fresh, Carrier::KeptAlive, Carrier::Split] {
        let (mut raw, head) = request(&app, carrier, "/api/events", &last_seen).await;
        assert_eq!(head.status, 200, "{carrier:?}");
        let frames = raw.frames(&head, 3).await;
        assert!(
            frames[1].starts_with(&format!("id: {epoch}-1.0-0.{owner}\nevent: stream.opened")),
            "{carrier:?}: opened at the requested cursor: {}",
            frames[1]
        );
        assert!(
            frames[2].starts_with(&format!("id: {epoch}-2.0-0.{owner}\nevent: orders.shipped"))
                && frames[2].contains(r#""data":{"n":2}"#),
            "{carrier:?}: replays only what came after it: {}",
            frames[2]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_carrier_refuses_a_bad_token_alike() {
    let app = spawn_app(None).await;
    let mut answers = Vec::new();
    for carrier in [Carrier::Fresh, Carrier::KeptAlive] {
        let (mut raw, head) = request(
            &app,
            carrier,
            "/api/events",
            "Authorization: Bearer forged\r\n",
        )
        .await;
        assert_eq!(head.status, 401, "{carrier:?}");
        assert_eq!(head.headers["content-type"], "application/json");
        assert_eq!(head.headers["www-authenticate"], "Bearer");
        let body: Value = serde_json::from_slice(&raw.sized_body(&head).await).expect("JSON");
        assert_eq!(body["error"]["code"], "unauthorized", "{carrier:?}");
        answers.push((comparable(&head), body));
    }
    assert_eq!(answers[0], answers[1], "the same headers and body");
    assert_eq!(app.hub.stream_count(), 0, "nothing registered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_is_forgotten_at_once() {
    let app = spawn_app(None).await;
    let token = app.token("alice").await;
    let (mut raw, head) = request(
        &app,
        Carrier::Fresh,
        "/api/events",
        &format!("Authorization: Bearer {token}\r\n"),
    )
    .await;
    raw.frames(&head, 2).await;
    assert_eq!(app.hub.stream_count(), 1);

    drop(raw);
    eventually("the stream ends with its connection", PATIENCE, || async {
        (app.hub.stream_count() == 0).then_some(())
    })
    .await;
}
