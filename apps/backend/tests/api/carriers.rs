//! A stream is the same whichever HTTP layer carries it: served straight off a fresh
//! connection (whether its head arrives whole or in pieces), or by actix-web on a
//! connection that carried other requests first. Spoken over raw TCP, so the framing is
//! visible.

use std::{collections::HashMap, time::Duration};

use raw_sse::{Body, Connection, Head};
use serde_json::{Value, json};

use crate::helpers::*;

/// Within the tests' patience, or fail.
async fn soon<T>(io: impl std::future::Future<Output = std::io::Result<T>>) -> T {
    tokio::time::timeout(PATIENCE, io)
        .await
        .expect("the server answers in time")
        .expect("the connection works")
}

/// The next `count` SSE frames of a streaming body, as text, skipping comments
/// (keep-alives go out on their own schedule).
async fn frames(body: &mut Body, count: usize) -> Vec<String> {
    let mut frames = Vec::new();
    while frames.len() < count {
        let frame = soon(body.next_frame()).await.expect("the stream goes on");
        let frame = String::from_utf8(frame).expect("text");
        if !frame.starts_with(':') {
            frames.push(frame);
        }
    }
    frames
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
    let mut headers: HashMap<String, String> = head.headers.iter().cloned().collect();
    let date = headers.remove("date").expect("a date header (RFC 9110)");
    assert!(
        httpdate::parse_http_date(&date).is_ok(),
        "an HTTP date: {date}"
    );
    headers.remove("transfer-encoding");
    headers
}

/// `GET target` with extra `headers` (each line ending in CRLF), over `carrier`.
async fn request(
    app: &TestApp,
    carrier: Carrier,
    target: &str,
    headers: &str,
) -> (Connection, Head) {
    let server = app
        .address
        .trim_start_matches("http://")
        .parse()
        .expect("an address");
    let mut connection = soon(Connection::connect(server, None)).await;
    match carrier {
        Carrier::Fresh => soon(connection.get(target, headers)).await,
        Carrier::KeptAlive => {
            soon(connection.get("/healthz", "")).await;
            let head = soon(connection.head()).await;
            assert_eq!(head.status, 200);
            soon(connection.sized_body(&head)).await;
            soon(connection.get(target, headers)).await;
        }
        Carrier::Split => {
            let request = raw_sse::get_request(target, headers);
            let (first, rest) = request.split_at(12);
            soon(connection.send(first.as_bytes())).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            soon(connection.send(rest.as_bytes())).await;
        }
    }
    let head = soon(connection.head()).await;
    (connection, head)
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
        let (connection, head) = request(&app, carrier, target, &auth).await;
        assert_eq!(head.status, 200, "{carrier:?}");
        for (name, value) in [
            ("content-type", "text/event-stream"),
            ("cache-control", "no-cache"),
            ("x-accel-buffering", "no"),
            ("connection", "close"),
        ] {
            assert_eq!(head.get(name), Some(value), "{carrier:?}: {name}");
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
        let mut body = connection.into_body(&head);
        let opening = frames(&mut body, 2).await;
        assert_eq!(opening[0], "retry: 2000\n\n", "{carrier:?}");
        assert!(
            opening[1].starts_with(&format!(
                "id: 0-0.0-0.{:016x}\nevent: stream.opened\ndata: {{",
                events::owner_tag("alice")
            )),
            "{carrier:?}: {}",
            opening[1]
        );
        streams.push((carrier, body, head));
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
        direct.get("transfer-encoding").is_none(),
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
    for (carrier, body, _) in &mut streams {
        let frame = frames(body, 1).await.remove(0);
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
        let (connection, head) = request(&app, carrier, "/api/events", &last_seen).await;
        assert_eq!(head.status, 200, "{carrier:?}");
        let frames = frames(&mut connection.into_body(&head), 3).await;
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
        let (mut connection, head) = request(
            &app,
            carrier,
            "/api/events",
            "Authorization: Bearer forged\r\n",
        )
        .await;
        assert_eq!(head.status, 401, "{carrier:?}");
        assert_eq!(head.get("content-type"), Some("application/json"));
        assert_eq!(head.get("www-authenticate"), Some("Bearer"));
        let body = soon(connection.sized_body(&head)).await;
        let body: Value = serde_json::from_slice(&body).expect("JSON");
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
    let (connection, head) = request(
        &app,
        Carrier::Fresh,
        "/api/events",
        &format!("Authorization: Bearer {token}\r\n"),
    )
    .await;
    let mut body = connection.into_body(&head);
    frames(&mut body, 2).await;
    assert_eq!(app.hub.stream_count(), 1);

    drop(body);
    eventually("the stream ends with its connection", PATIENCE, || async {
        (app.hub.stream_count() == 0).then_some(())
    })
    .await;
}

/// Issue 13's "every event type": asked for with `unnamed=true`, every frame comes without
/// an `event:` field on either carrier (so an EventSource's `onmessage` gets them all),
/// its type still in the envelope.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unnamed_frames_carry_no_event_field_on_either_carrier() {
    let app = spawn_app(None).await;
    let token = app.token("alice").await;
    let auth = format!("Authorization: Bearer {token}\r\n");
    for carrier in [Carrier::Fresh, Carrier::KeptAlive] {
        let (connection, head) = request(&app, carrier, "/api/events?unnamed=true", &auth).await;
        assert_eq!(head.status, 200, "{carrier:?}");
        let mut body = connection.into_body(&head);
        let opening = frames(&mut body, 2).await;
        assert!(
            opening[1].starts_with("id: ")
                && !opening[1].contains("event:")
                && opening[1].contains(r#""eventType":"stream.opened""#),
            "{carrier:?}: {}",
            opening[1]
        );
        app.publish("alice", "inventory.restocked", json!({"n": 1}))
            .await;
        let event = frames(&mut body, 1).await.remove(0);
        assert!(
            !event.contains("event:") && event.contains(r#""eventType":"inventory.restocked""#),
            "{carrier:?}: {event}"
        );
    }
}
