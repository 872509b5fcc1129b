//! Event streams served straight off their TCP connection, below actix-web.
//!
//! actix-http gives every connection a read and a write buffer of 8 KiB for as long as it
//! is open. An open event stream needs neither: its one request has been read, and it
//! writes a few hundred bytes now and then. At 19,000 streams those two buffers were 16 of
//! the 20 KiB each stream cost. So the first request of every new connection is peeked at
//! (read without being consumed): when it is a complete, plain `GET /api/events`, the
//! stream is served here, each batch of frames written straight to the socket from a
//! buffer that lives only until it is written. Anything else (another route, a head over
//! [`PEEK_LIMIT`], a request with a body, any request after the first on a kept-alive
//! connection) goes to actix-web untouched, which serves every route, this
//! one included (`routes::stream`).
//!
//! The peek waits for the whole head (a head split over several segments is still served
//! here), within the one request-head timeout: a connection whose head has not arrived by
//! then is closed here, not handed to actix-web to wait out a second timeout.
//!
//! Both carriers read the request into one `carrier::StreamRequest` and open it the same
//! way (`delivery::open`), answer errors with
//! [`ApiError`]'s responses and encode frames with the same SSE encoder (russe, which
//! actix-web-lab uses). This one ends the body by closing the connection instead of
//! chunking it: a stream's connection is never reused anyway.
//!
//! Its streams join their worker's shard of the hub, which writes events to the socket
//! directly while the stream is at rest, and sends its keep-alives (`hub::outlet`). This
//! carrier writes the rest (the opening frames, what a catch-up sends, what a direct
//! write left unwritten) and tells the hub when it has written all it was given.

use std::{
    future::{Future, poll_fn},
    io,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use actix_web::{ResponseError, body::to_bytes, http::Version, web};
use bytes::{Buf, BytesMut};
use futures_util::{FutureExt, Stream, StreamExt};
use russe::Encoder;
use std::time::Duration as StdDuration;
use tokio::{io::AsyncReadExt, net::TcpStream};
use tokio_util::codec::Encoder as _;

use crate::{
    carrier::StreamRequest, connection, error::ApiError, frame::Frame, hub::CarrierEnd,
    hub::ShardId, metrics::Carrier, state::AppState, telemetry,
};

/// The path this module serves.
const PATH: &str = "/api/events";

/// Request heads longer than this go to actix-web (which refuses heads over 32 KiB).
const PEEK_LIMIT: usize = 16 * 1024;

/// The first peek's size: most request heads fit.
const FIRST_PEEK: usize = 1024;

/// How long a refused client may take to read its error response.
const ERROR_STALL: Duration = Duration::from_secs(5);

/// Frames queued on a stream are written together, up to about this many bytes a write.
const BATCH_BYTES: usize = 64 * 1024;

/// The response head of every stream but its `date`: the headers actix-web-lab's `Sse`
/// and `routes::stream` give it, with the body delimited by the connection's close.
const STREAM_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\n\
    content-type: text/event-stream\r\n\
    content-encoding: identity\r\n\
    cache-control: no-cache\r\n\
    x-accel-buffering: no\r\n\
    connection: close\r\n";

/// The `date` header line every response carries (RFC 9110), as actix-web writes it.
fn date_line() -> String {
    format!(
        "date: {}\r\n",
        httpdate::fmt_http_date(std::time::SystemTime::now())
    )
}

/// A stream request read off a connection's first bytes.
#[derive(Debug, PartialEq, Eq)]
pub struct Peek {
    /// The bytes of the request head, to consume once the connection is ours.
    head_len: usize,
    request: StreamRequest,
}

/// What the first request of a new connection is.
#[derive(Debug, PartialEq, Eq)]
pub enum Peeked {
    /// A stream request this module serves.
    Stream(Peek),
    /// Anything else: the connection goes, unread, to actix-web.
    Other,
    /// The head did not arrive within the timeout: close the connection.
    TimedOut,
}

/// Peeks at a new connection's first request, waiting at most `timeout` for all of its
/// head (or for [`PEEK_LIMIT`] bytes of it).
pub async fn stream_request(io: &TcpStream, timeout: Duration) -> Peeked {
    let deadline = tokio::time::Instant::now() + timeout;
    // On the heap, and gone before the stream starts: a stream's task keeps its state
    // for as long as it lives. Small at first: most heads are a few hundred bytes, and
    // zeroing and freeing the whole limit for each connection showed in profiles.
    let mut first = vec![0; FIRST_PEEK];
    // Peeking does not consume, so a head still arriving is polled for, a little less
    // often each time: most heads arrive whole in the first segment.
    let mut pause = StdDuration::from_millis(2);
    loop {
        let peeked = match tokio::time::timeout_at(deadline, io.peek(&mut first)).await {
            Ok(Ok(peeked)) => peeked,
            Ok(Err(_)) => return Peeked::Other,
            Err(_) => return Peeked::TimedOut,
        };
        match parse(&first[..peeked]) {
            Some(Parsed::Stream(request)) => return Peeked::Stream(request),
            Some(Parsed::Other) => return Peeked::Other,
            // A closed connection, or a head too long to peek at: actix-web decides.
            None if peeked == 0 || peeked == PEEK_LIMIT => return Peeked::Other,
            // The buffer is full and the head goes on: peek again, further.
            None if peeked == first.len() => {
                first.resize(PEEK_LIMIT, 0);
                continue;
            }
            None => {}
        }
        if tokio::time::Instant::now() + pause >= deadline {
            return Peeked::TimedOut;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(StdDuration::from_millis(100));
    }
}

enum Parsed {
    Stream(Peek),
    Other,
}

/// `None` while the head is incomplete.
fn parse(bytes: &[u8]) -> Option<Parsed> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    let head_len = match request.parse(bytes) {
        Ok(httparse::Status::Complete(head_len)) => head_len,
        Ok(httparse::Status::Partial) => return None,
        Err(_) => return Some(Parsed::Other),
    };
    // HTTP/1.0 too: a close-delimited body is exactly what it allows (never chunked).
    if request.method != Some("GET") || !matches!(request.version, Some(0 | 1)) {
        return Some(Parsed::Other);
    }
    let Some(target) = request.path else {
        return Some(Parsed::Other);
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path != PATH {
        return Some(Parsed::Other);
    }
    // One set of HTTP rules for both carriers: a request with bad hosts is actix-web's
    // to answer, as every other request is (`connection::rules`).
    let version = if request.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let hosts = request
        .headers
        .iter()
        .filter(|header| header.name.eq_ignore_ascii_case("host"))
        .map(|header| header.value);
    if !connection::valid_hosts(version, hosts) {
        return Some(Parsed::Other);
    }
    let mut stream = StreamRequest {
        query: query.to_string(),
        ..StreamRequest::default()
    };
    for header in request.headers.iter() {
        let value = || {
            Some(
                std::str::from_utf8(header.value)
                    .unwrap_or_default()
                    .to_string(),
            )
        };
        let name = header.name;
        let has_body = (name.eq_ignore_ascii_case("content-length") && header.value != b"0")
            || name.eq_ignore_ascii_case("transfer-encoding");
        // Anything that makes this more than a plain request is actix-web's to handle.
        let special = name.eq_ignore_ascii_case("upgrade") || name.eq_ignore_ascii_case("expect");
        if has_body || special {
            return Some(Parsed::Other);
        }
        if name.eq_ignore_ascii_case("authorization") && stream.authorization.is_none() {
            stream.authorization = value();
        } else if name.eq_ignore_ascii_case("last-event-id") && stream.last_event_id.is_none() {
            stream.last_event_id = value();
        } else if name.eq_ignore_ascii_case("cookie") {
            stream.add_cookies(std::str::from_utf8(header.value).unwrap_or_default());
        }
    }
    Some(Parsed::Stream(Peek {
        head_len,
        request: stream,
    }))
}

/// A stream being served: drive it until it ends.
pub type Serving = Pin<Box<dyn Future<Output = ()>>>;

/// Answers `request` on `io`: with an error response, or with the stream's head and
/// opening frames, returning the stream to drive until it ends (the hub closes it at
/// shutdown or for a full queue, the client goes away, or the client takes nothing for
/// two keep-alive periods). The stream joins `shard`, its worker's.
pub async fn open(
    mut io: TcpStream,
    peek: Peek,
    state: web::Data<AppState>,
    shard: ShardId,
) -> Option<Serving> {
    let started = Instant::now();
    discard(&mut io, peek.head_len).await.ok()?;
    let io = Arc::new(io);
    let opened = peek.request.open(&state, Some((io.clone(), shard))).await;
    let status = match &opened {
        Ok(_) => 200,
        Err(error) => error.status_code().as_u16(),
    };
    telemetry::request_served(&state.metrics, "GET", PATH, PATH, status, started.elapsed());
    match opened {
        Ok((frames, carrier)) => {
            state.metrics.stream_carried(Carrier::direct);
            let mut out = BytesMut::from(STREAM_HEAD);
            out.extend_from_slice(date_line().as_bytes());
            out.extend_from_slice(b"\r\n");
            encode(russe::Event::Retry(state.sse_retry), &mut out);
            // The frames in an allocation of their own, and no async block around the
            // writer loop: an async block or fn keeps what it moves into the future it
            // awaits as well, so the frames' state would be allocated twice, for as long
            // as the stream lives.
            let frames = Box::pin(frames);
            Some(Box::pin(
                stream(io, frames, carrier, out, state.keep_alive).map(drop),
            ))
        }
        Err(error) => {
            // The stream never opened, or opened and was dropped with the error: nothing
            // else writes to the socket, and this handle answers through it.
            let _ = respond_with_error(&io, &error).await;
            None
        }
    }
}

/// Reads and drops the `len` bytes of the request head, which were only peeked at.
async fn discard(io: &mut TcpStream, mut len: usize) -> io::Result<()> {
    let mut head = [0; FIRST_PEEK];
    while len > 0 {
        let chunk = len.min(head.len());
        io.read_exact(&mut head[..chunk]).await?;
        len -= chunk;
    }
    Ok(())
}

/// Writes `frames` as they come, and what direct writes leave unwritten, then ends.
/// Between writes nothing is buffered. Keep-alives come from the worker's shard.
async fn stream(
    io: Arc<TcpStream>,
    mut frames: Pin<Box<impl Stream<Item = Frame>>>,
    carrier: CarrierEnd,
    mut out: BytesMut,
    keep_alive: Duration,
) -> io::Result<()> {
    let io = &*io;
    let mut scratch = [0u8; 64];
    loop {
        // A direct write's leftovers came before anything taken since.
        let unwritten = carrier.take_unwritten();
        if !unwritten.is_empty() {
            let mut all = BytesMut::from(&unwritten[..]);
            all.extend_from_slice(&out);
            out = all;
        }
        let wrote = !out.is_empty();
        if wrote {
            // Boxed: a stream is idle far more often than writing, and its task keeps
            // its largest state for as long as it lives.
            Box::pin(write_out(io, &mut out, 2 * keep_alive)).await?;
            out = BytesMut::new();
        }
        if !carrier.flushed(wrote) {
            continue;
        }
        tokio::select! {
            biased;
            frame = frames.next() => {
                let Some(frame) = frame else { return Ok(()) };
                carrier.busy();
                frame.encode(&mut out);
                // Whatever else is already queued goes in the same write.
                while out.len() < BATCH_BYTES {
                    match frames.next().now_or_never() {
                        Some(Some(frame)) => {
                            frame.encode(&mut out);
                        }
                        Some(None) | None => break,
                    }
                }
            }
            () = poll_fn(|cx| carrier.poll_unwritten(cx)) => {}
            // The client sends nothing after its request; end of input means it left.
            read = io.readable() => {
                if read.is_err() {
                    return Ok(());
                }
                match io.try_read(&mut scratch) {
                    Ok(0) => return Ok(()),
                    Ok(_) => {}
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return Ok(()),
                }
            }
        }
    }
}

/// Writes all of `out`, failing if the client takes nothing for `stall`.
async fn write_out(io: &TcpStream, out: &mut BytesMut, stall: Duration) -> io::Result<()> {
    while !out.is_empty() {
        let written = tokio::time::timeout(stall, async {
            loop {
                io.writable().await?;
                match io.try_write(out) {
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                    result => return result,
                }
            }
        })
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "client stopped reading"))??;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        out.advance(written);
    }
    Ok(())
}

/// Appends a comment or a `retry:`: fixed text, which always encodes.
fn encode(event: russe::Event, out: &mut BytesMut) {
    Encoder::default()
        .encode(event, out)
        .expect("comments and retries always encode");
}

/// Writes `error`'s response, as actix-web would have written it, and ends the
/// connection (its sending half; the socket closes when its last handle drops).
async fn respond_with_error(io: &TcpStream, error: &ApiError) -> io::Result<()> {
    let response = error.error_response();
    let status = response.status();
    let mut out = format!(
        "HTTP/1.1 {} {}\r\n",
        status.as_str(),
        status.canonical_reason().unwrap_or_default()
    );
    for (name, value) in response.headers() {
        out.push_str(name.as_str());
        out.push_str(": ");
        out.push_str(value.to_str().unwrap_or_default());
        out.push_str("\r\n");
    }
    let body = to_bytes(response.into_body())
        .await
        .map_err(|_| io::Error::other("error body"))?;
    out.push_str(&date_line());
    out.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    ));
    let mut out = BytesMut::from(out.as_bytes());
    out.extend_from_slice(&body);
    write_out(io, &mut out, ERROR_STALL).await?;
    socket2::SockRef::from(io).shutdown(std::net::Shutdown::Write)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn parsed(head: &str) -> Option<Peek> {
        match parse(head.as_bytes()) {
            Some(Parsed::Stream(peek)) => Some(peek),
            Some(Parsed::Other) | None => None,
        }
    }

    #[test]
    fn a_plain_stream_request_is_served_directly() {
        let head = "GET /api/events?ticket=abc&lastEventId=1-2.3-4 HTTP/1.1\r\nHost: x\r\n\
                    Authorization: Bearer t\r\nLast-Event-ID: 5-6.7-8\r\nCookie: a=1\r\n\
                    Cookie: st_abc=s\r\n\r\n";
        assert_eq!(
            parsed(head),
            Some(Peek {
                head_len: head.len(),
                request: StreamRequest {
                    query: "ticket=abc&lastEventId=1-2.3-4".into(),
                    authorization: Some("Bearer t".into()),
                    last_event_id: Some("5-6.7-8".into()),
                    cookies: Some("a=1; st_abc=s".into()),
                },
            })
        );
        assert!(
            parse(b"GET /api/events HTTP/1.1\r\nHost: x\r\n").is_none(),
            "incomplete: wait"
        );
    }

    /// A head longer than the first peek (a large cookie, say) is still served here,
    /// and one longer than the limit goes to actix-web.
    #[tokio::test]
    async fn heads_longer_than_the_first_peek_are_peeked_whole() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        for (cookie_len, served_here) in [(5_000, true), (PEEK_LIMIT, false)] {
            let mut client = TcpStream::connect(listener.local_addr().expect("an address"))
                .await
                .expect("connects");
            let (server, _) = listener.accept().await.expect("accepts");
            let cookie = format!("st_x={}", "c".repeat(cookie_len));
            let head = format!("GET /api/events HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\n\r\n");
            client.write_all(head.as_bytes()).await.expect("writes");
            let peeked = stream_request(&server, Duration::from_secs(5)).await;
            match peeked {
                Peeked::Stream(peek) => {
                    assert!(served_here, "{cookie_len}");
                    assert_eq!(peek.request.cookies, Some(cookie));
                    assert_eq!(peek.head_len, head.len());
                }
                Peeked::Other => assert!(!served_here, "{cookie_len}"),
                Peeked::TimedOut => panic!("the head was all there"),
            }
        }
    }

    #[test]
    fn everything_else_goes_to_actix() {
        for head in [
            // Other routes, methods, versions.
            "GET /api/accounts HTTP/1.1\r\n\r\n",
            "GET /api/events/x HTTP/1.1\r\n\r\n",
            "POST /api/events HTTP/1.1\r\ncontent-length: 0\r\n\r\n",
            "GET /api/events HTTP/2.0\r\n\r\n",
            // A body, or more than a plain request.
            "GET /api/events HTTP/1.1\r\ncontent-length: 3\r\n\r\nabc",
            "GET /api/events HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n",
            "GET /api/events HTTP/1.1\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
            // Not HTTP.
            "\x16\x03\x01 hello",
            // No Host, two, or one that is not a host.
            "GET /api/events HTTP/1.1\r\n\r\n",
            "GET /api/events HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET /api/events HTTP/1.1\r\nHost: a b\r\n\r\n",
        ] {
            assert_eq!(parsed(head), None, "{head:?}");
        }
    }

    #[test]
    fn frames_and_retries_encode_as_event_stream_text() {
        let mut out = BytesMut::new();
        let encoded = Frame {
            event: Some("a.b".into()),
            id: Some("1-2.3-4".into()),
            data: r#"{"x":1}"#.into(),
        }
        .encode(&mut out);
        assert!(encoded);
        encode(russe::Event::Retry(Duration::from_millis(2000)), &mut out);
        assert_eq!(
            &out[..],
            b"id: 1-2.3-4\nevent: a.b\ndata: {\"x\":1}\n\nretry: 2000\n\n"
        );
    }
}
