//! One set of HTTP rules for every request, whichever carrier serves it, written as raw
//! bytes on a socket: what a hostile or old client can send and no HTTP library would.

use std::time::{Duration, Instant};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::helpers::*;

/// An instance whose clients get one second for each head and each body.
async fn strict_app() -> TestApp {
    let mut settings = settings(None);
    settings.request_head_timeout_secs = 1;
    settings.request_body_timeout_secs = 1;
    spawn_app_with(settings).await
}

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.address.trim_start_matches("http://"))
        .await
        .expect("connects")
}

/// Everything the server sends until it closes the connection, or until `within`.
async fn read_until_closed(socket: &mut TcpStream, within: Duration) -> (String, bool) {
    let deadline = tokio::time::Instant::now() + within;
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, socket.read(&mut buffer)).await {
            Ok(Ok(0) | Err(_)) => return (String::from_utf8_lossy(&received).into(), true),
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
            Err(_) => return (String::from_utf8_lossy(&received).into(), false),
        }
    }
}

/// Reads until `needle` has arrived (or the connection ends, or `PATIENCE` passes).
async fn read_until(socket: &mut TcpStream, needle: &str) -> String {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    while !String::from_utf8_lossy(&received).contains(needle) {
        match tokio::time::timeout_at(deadline, socket.read(&mut buffer)).await {
            Ok(Ok(n)) if n > 0 => received.extend_from_slice(&buffer[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&received).into()
}

/// Sends `head` one byte every 300 ms; returns whether the server closed the connection
/// before it was all sent. Fails if the server answers a head still arriving.
async fn trickle_head(socket: &mut TcpStream, head: &[u8]) -> bool {
    for byte in head {
        if socket.write_all(&[*byte]).await.is_err() {
            return true;
        }
        let mut buffer = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(300), socket.read(&mut buffer)).await {
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(n)) => panic!(
                "answered a head still arriving: {}",
                String::from_utf8_lossy(&buffer[..n])
            ),
            Err(_) => {}
        }
    }
    false
}

fn statuses(text: &str) -> Vec<&str> {
    text.match_indices("HTTP/1.")
        .filter_map(|(at, _)| text[at..].split(' ').nth(1))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_1_0_stream_that_actix_carries_is_close_delimited_too() {
    let app = spawn_app(None).await;
    let token = app.token("alice").await;
    // A head too large to be peeked at goes to actix-web; so does a stream asked for
    // after another request on a kept-alive 1.0 connection.
    let cookie = format!("pad={}", "c".repeat(17 * 1024));
    let large = format!(
        "GET /api/events HTTP/1.0\r\nHost: x\r\nAuthorization: Bearer {token}\r\nCookie: {cookie}\r\n\r\n"
    );
    let after_another = format!(
        "GET /healthz HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n\
         GET /api/events HTTP/1.0\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    for request in [large, after_another] {
        let mut socket = connect(&app).await;
        socket.write_all(request.as_bytes()).await.expect("writes");
        let text = read_until(&mut socket, "event: stream.opened").await;
        let stream = &text[text.rfind("HTTP/1.").expect("a response")..];
        assert_eq!(statuses(stream), ["200"], "{text}");
        let head = &stream[..stream.find("\r\n\r\n").expect("a whole head")].to_lowercase();
        assert!(
            !head.contains("transfer-encoding"),
            "RFC 9112: no chunking for 1.0: {head}"
        );
        assert!(head.contains("content-type: text/event-stream"), "{head}");
        let body = &stream[stream.find("\r\n\r\n").expect("a whole head") + 4..];
        assert!(
            body.starts_with("retry: 2000\n\n") && body.contains("\nevent: stream.opened\n"),
            "the body is the frames themselves, no chunk sizes: {body:?}"
        );
    }
    let carried = app
        .metric_value("sse_streams_carried_total{carrier=\"actix\"}")
        .await;
    assert_eq!(carried, Some(2.0), "both went through actix-web");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_pipelined_behind_a_closing_response_is_read_or_served() {
    let app = spawn_app(None).await;
    let token = app.token("alice").await;
    let mut socket = connect(&app).await;
    // A first request keeps the connection with actix-web; the stream request without a
    // credential is refused with `connection: close`; behind it, in the same write, a
    // stream request that would be served on a connection of its own.
    let requests = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n\
         GET /api/events HTTP/1.1\r\nHost: x\r\n\r\n\
         GET /api/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    socket.write_all(requests.as_bytes()).await.expect("writes");
    let (text, closed) = read_until_closed(&mut socket, PATIENCE).await;
    assert!(
        closed,
        "the connection ends after the closing response: {text}"
    );
    assert_eq!(statuses(&text), ["200", "401"], "{text}");
    assert!(!text.contains("stream.opened"), "{text}");
    assert_eq!(
        app.metric_value("sse_streams_opened_total").await,
        Some(0.0),
        "no stream was opened for the request behind the close"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_request_head_trickled_byte_by_byte_is_cut_off() {
    let app = strict_app().await;
    let mut socket = connect(&app).await;
    socket
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("writes");
    let first = read_until(&mut socket, "\"status\"").await;
    assert_eq!(statuses(&first), ["200"], "{first}");
    // The second head arrives one byte every 300 ms: 12 s in all, were it let through.
    let started = Instant::now();
    let cut_off = trickle_head(
        &mut socket,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: abcd\r\n\r\n",
    )
    .await;
    assert!(cut_off, "the trickled head was waited for whole");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "cut off near the 1 s head timeout, not after {:?}",
        started.elapsed()
    );
}

/// A request refused for its `Host` leaves the connection open, and the next head on it
/// is timed like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_trickled_after_a_bad_host_is_cut_off_too() {
    let app = strict_app().await;
    let mut socket = connect(&app).await;
    socket
        .write_all(b"GET /healthz HTTP/1.1\r\n\r\n")
        .await
        .expect("writes");
    let first = read_until(&mut socket, "bad_host").await;
    assert_eq!(statuses(&first), ["400"], "{first}");
    let started = Instant::now();
    let cut_off = trickle_head(
        &mut socket,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: abcdefgh\r\n\r\n",
    )
    .await;
    assert!(cut_off, "the trickled head was waited for whole");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_trickled_byte_by_byte_is_answered_408_and_closed() {
    let app = strict_app().await;
    let mut socket = connect(&app).await;
    let body = br#"{"userId":"alice","eventType":"test.slow","data":{"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}"#;
    let head = format!(
        "POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {PUBLISH_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    socket.write_all(head.as_bytes()).await.expect("writes");
    let started = Instant::now();
    let mut answer = Vec::new();
    for byte in body {
        if socket.write_all(&[*byte]).await.is_err() {
            break;
        }
        let mut buffer = [0u8; 1024];
        match tokio::time::timeout(Duration::from_millis(300), socket.read(&mut buffer)).await {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&buffer[..n]),
            Err(_) => {}
        }
        if !answer.is_empty() {
            break;
        }
    }
    let (rest, closed) = read_until_closed(&mut socket, PATIENCE).await;
    let text = String::from_utf8_lossy(&answer).to_string() + &rest;
    assert_eq!(statuses(&text), ["408"], "{text}");
    assert!(text.contains("request_timeout"), "{text}");
    assert!(closed, "the connection is closed after the 408");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "near the 1 s body timeout, not after {:?}",
        started.elapsed()
    );
    assert_eq!(
        app.metric_value("events_published_total{event_type=\"test.slow\"}")
            .await,
        None,
        "nothing was published"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_request_with_a_missing_doubled_or_broken_host_is_refused_like_any_other() {
    let app = spawn_app(None).await;
    let token = app.token("alice").await;
    for hosts in ["", "Host: a\r\nHost: b\r\n", "Host: a b\r\n", "Host: \r\n"] {
        let mut answers = Vec::new();
        for path in ["/api/events", "/healthz"] {
            let mut socket = connect(&app).await;
            // `Connection: close`, so that the answer ends with the connection rather than
            // with actix's keep-alive timeout.
            let request = format!(
                "GET {path} HTTP/1.1\r\n{hosts}Authorization: Bearer {token}\r\n\
                 Connection: close\r\n\r\n"
            );
            socket.write_all(request.as_bytes()).await.expect("writes");
            let (text, closed) = read_until_closed(&mut socket, PATIENCE).await;
            assert!(closed, "{path} {hosts:?}: {text}");
            answers.push(statuses(&text).join(","));
        }
        assert_eq!(answers[0], "400", "{hosts:?}");
        assert_eq!(answers[0], answers[1], "{hosts:?}: both carriers alike");
    }
    assert_eq!(
        app.metric_value("sse_streams_opened_total").await,
        Some(0.0)
    );
}

/// A client that closes its side of the connection has left, whichever carrier serves
/// its stream: the stream ends at once, not at a later keep-alive write that fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_client_leaves_ends_at_once_on_either_carrier() {
    let app = spawn_app(None).await;
    let token = app.token("alice").await;
    let stream_request =
        format!("GET /api/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n");
    for after_another in [false, true] {
        let mut socket = connect(&app).await;
        if after_another {
            // A first request keeps the connection with actix-web.
            socket
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .expect("writes");
            read_until(&mut socket, "\"status\"").await;
        }
        socket
            .write_all(stream_request.as_bytes())
            .await
            .expect("writes");
        let opened = read_until(&mut socket, "event: stream.opened").await;
        assert!(opened.contains("stream.opened"), "{opened}");
        assert_eq!(app.metric_value("sse_streams_open").await, Some(1.0));
        socket.shutdown().await.expect("half-closes");
        // Well within the 15 s keep-alive interval: no write has to fail first.
        eventually("the stream ends", Duration::from_secs(3), || async {
            (app.metric_value("sse_streams_open").await == Some(0.0)).then_some(())
        })
        .await;
    }
}
