//! The rules every connection actix-web serves is held to, on every request, not only
//! its first (the direct carrier, `direct`, serves one request per connection, and holds
//! it to the same rules):
//!
//! - A request head must arrive whole within `REQUEST_HEAD_TIMEOUT_SECS` of its first
//!   byte, and a request body within `REQUEST_BODY_TIMEOUT_SECS` of its head: a client
//!   that trickles either is cut off (actix-http bounds only a connection's first head).
//! - After a response that says `connection: close`, nothing more is read or answered:
//!   a request pipelined behind it is dropped unserved, and the connection ends.
//! - A request has exactly one `Host`, and a valid one (an HTTP/1.0 request may have
//!   none): RFC 9112 §3.2, which actix-http enforces only in part ([`valid_hosts`]).
//!
//! Two pieces carry this out: [`Guarded`], the connection's socket as actix-http reads
//! it, which times request heads and ends the connection when told to; and [`rules`], a
//! middleware that tells the connection when a head was read and when a response closes
//! it, bounds the body, and refuses bad hosts.

use std::{
    cell::Cell,
    convert::Infallible,
    future::Future,
    io,
    pin::Pin,
    rc::Rc,
    task::{Context, Poll},
    time::Duration,
};

use actix_http::{ConnectionType, Extensions};
use actix_web::{
    Error, HttpMessage, ResponseError,
    body::{EitherBody, MessageBody},
    dev::{Payload, ServiceRequest, ServiceResponse},
    error::PayloadError,
    http::{Version, header},
    middleware::Next,
};
use bytes::Bytes;
use futures_util::Stream;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    time::{Instant, Sleep},
};

use crate::error::ApiError;

/// How long each part of a request may take to arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub head: Duration,
    pub body: Duration,
}

/// One connection's state, shared by its socket and the middleware.
#[derive(Debug)]
struct Connection {
    timeouts: Timeouts,
    /// Whether the bytes read next belong to a request head: from the connection's
    /// start, and again once each response has been produced.
    awaiting_head: Cell<bool>,
    /// Request heads read so far: a head's clock belongs to one of them.
    heads_read: Cell<u64>,
    /// A response said `connection: close`.
    closed: Cell<bool>,
    /// A request came after that response: end the connection, once what was written
    /// before it is flushed.
    ended: Cell<bool>,
}

/// A connection's socket as actix-http reads and writes it: reads time each request head
/// from its first byte, and fail once it is late, which ends the connection.
#[derive(Debug)]
pub struct Guarded {
    io: TcpStream,
    connection: Rc<Connection>,
    /// Running while a head is being read, for the head numbered alongside.
    head_deadline: Option<(u64, Pin<Box<Sleep>>)>,
    /// A write or flush is waiting for the socket: the connection is not ended before it
    /// completes.
    writing: bool,
    /// Finds where a head ends in the bytes read.
    head_ends: HeadEnd,
}

/// Finds a blank line (`\n\n` or `\n\r\n`: the end of a request head) in bytes that
/// arrive in pieces.
#[derive(Debug, Default)]
struct HeadEnd {
    /// The last bytes seen: a blank line may span two reads.
    last: [u8; 2],
}

impl HeadEnd {
    fn seen_in(&mut self, bytes: &[u8]) -> bool {
        let mut found = false;
        for &byte in bytes {
            found |= byte == b'\n' && (self.last[1] == b'\n' || (self.last == *b"\n\r"));
            self.last = [self.last[1], byte];
        }
        if found {
            self.last = [0, 0];
        }
        found
    }
}

impl Guarded {
    pub fn new(io: TcpStream, timeouts: Timeouts) -> Self {
        Self {
            io,
            connection: Rc::new(Connection {
                timeouts,
                awaiting_head: Cell::new(true),
                heads_read: Cell::new(0),
                closed: Cell::new(false),
                ended: Cell::new(false),
            }),
            head_deadline: None,
            writing: false,
            head_ends: HeadEnd::default(),
        }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let connection = &*this.connection;
        if connection.ended.get() {
            if this.writing {
                // Woken when the socket takes the rest of what was written (`wrote`).
                return Poll::Pending;
            }
            // All is written: say so with a FIN, and take what the client pipelined
            // (unread bytes would make the close a reset, which can cut the answer short).
            let sock = socket2::SockRef::from(&this.io);
            let _ = sock.shutdown(std::net::Shutdown::Write);
            // At most 64 KiB: a client that keeps sending must not keep this worker here.
            let mut scratch = [0u8; 4096];
            for _ in 0..16 {
                if !matches!(this.io.try_read(&mut scratch), Ok(1..)) {
                    break;
                }
            }
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "a request came after a response that closed the connection",
            )));
        }
        let heads_read = connection.heads_read.get();
        if this
            .head_deadline
            .as_ref()
            .is_some_and(|(head, _)| *head != heads_read || !connection.awaiting_head.get())
        {
            // That head was read in time.
            this.head_deadline = None;
        }
        if let Some((_, deadline)) = &mut this.head_deadline
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "request head not received in time",
            )));
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        let new = &buf.filled()[before..];
        // Nothing after a closing response is served, so nothing after it is timed.
        if !new.is_empty() && connection.awaiting_head.get() && !connection.closed.get() {
            if this.head_deadline.is_none() {
                // The first byte of a head: its clock starts.
                let mut deadline = Box::pin(tokio::time::sleep(connection.timeouts.head));
                // Polled once, so that the connection wakes when it runs out.
                let _ = deadline.as_mut().poll(cx);
                this.head_deadline = Some((heads_read, deadline));
            }
            if this.head_ends.seen_in(new) {
                // The head is in, in time: a request pipelined behind a response still
                // being written waits for it untimed (actix-http serves it afterwards).
                this.head_deadline = None;
                connection.awaiting_head.set(false);
            }
        }
        read
    }
}

impl Guarded {
    /// Notes whether a write is left waiting for the socket.
    fn wrote<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        let was_writing = std::mem::replace(&mut self.writing, poll.is_pending());
        if was_writing && !self.writing && self.connection.ended.get() {
            // A read waits for this write to end the connection: poll again.
            cx.waker().wake_by_ref();
        }
        poll
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_write(cx, buf);
        this.wrote(cx, poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.wrote(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_flush(cx);
        this.wrote(cx, poll)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// The connection a request came on, for the middleware (from the connection's data).
#[derive(Debug, Clone)]
struct ConnectionHandle(Rc<Connection>);

/// actix-http's `on_connect_ext` hook: gives the connection's requests a handle on it.
pub fn on_connect(io: &Guarded, data: &mut Extensions) {
    data.insert(ConnectionHandle(io.connection.clone()));
}

/// Whether a request's `Host` lines (`hosts`) are as RFC 9112 §3.2 wants: exactly one,
/// a valid `host[:port]` (none at all is allowed to HTTP/1.0, which predates `Host`).
/// The one rule both carriers hold stream requests, and every other request, to.
pub fn valid_hosts<'a>(version: Version, mut hosts: impl Iterator<Item = &'a [u8]>) -> bool {
    match (hosts.next(), hosts.next()) {
        (None, _) => version < Version::HTTP_11,
        // `uri-host[:port]`: an authority without user info.
        (Some(host), None) => std::str::from_utf8(host)
            .ok()
            .filter(|value| !value.contains('@'))
            .and_then(|value| value.parse::<actix_web::http::uri::Authority>().ok())
            .is_some(),
        (Some(_), Some(_)) => false,
    }
}

/// The middleware: marks each request's head as read, refuses a request that came after
/// a closing response (by ending the connection, unanswered) or with bad hosts, bounds
/// the time its body may take, and notes a response that closes the connection (or that
/// left a late body unread, and so closes it).
pub async fn rules(
    mut req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, Error> {
    let connection = req.conn_data::<ConnectionHandle>().cloned();
    if let Some(ConnectionHandle(connection)) = &connection {
        if connection.closed.get() {
            // Pipelined behind a closing response: never served. The socket ends the
            // connection once that response is written; until then this waits.
            connection.ended.set(true);
            match Unanswered::default().await {}
        }
        connection.awaiting_head.set(false);
        connection.heads_read.set(connection.heads_read.get() + 1);
    }
    let hosts = req
        .headers()
        .get_all(header::HOST)
        .map(|value| value.as_bytes());
    let host_ok = valid_hosts(req.version(), hosts);
    // Said by the request itself (`Connection: close`, or HTTP/1.0 without keep-alive).
    let asked_to_close = req.head().connection_type() == ConnectionType::Close;
    let late = Rc::new(Cell::new(false));
    // Only a request that has a body gets its deadline (a GET, a stream, has none to wait
    // for: no timer for them).
    let has_body = req.headers().contains_key(header::CONTENT_LENGTH)
        || req.headers().contains_key(header::TRANSFER_ENCODING);
    if host_ok
        && has_body
        && let Some(ConnectionHandle(connection)) = &connection
    {
        let payload = req.take_payload();
        req.set_payload(Payload::Stream {
            payload: Box::pin(TimedBody {
                payload,
                deadline: Box::pin(tokio::time::sleep_until(
                    Instant::now() + connection.timeouts.body,
                )),
                late: late.clone(),
            }),
        });
    }
    // Refused here, the request still counts as answered below.
    let mut response = if host_ok {
        next.call(req).await?.map_into_left_body()
    } else {
        req.into_response(ApiError::BadHost.error_response())
            .map_into_right_body()
    };
    if late.get() {
        response
            .response_mut()
            .head_mut()
            .set_connection_type(ConnectionType::Close);
    }
    if let Some(ConnectionHandle(connection)) = connection {
        // Whether the response itself says close: its version is the request's only once
        // actix-http writes it, and at 1.1 only an explicit `close` reads as one.
        let head = response.response_mut().head_mut();
        head.version = Version::HTTP_11;
        if asked_to_close || head.connection_type() == ConnectionType::Close {
            connection.closed.set(true);
        }
        // Whatever arrives from now on begins the next request.
        connection.awaiting_head.set(true);
    }
    Ok(response)
}

/// A request that gets no answer: it wakes its connection once (whose socket then ends
/// it, see [`Guarded`]), and never completes.
#[derive(Default)]
struct Unanswered {
    woken: bool,
}

impl Future for Unanswered {
    type Output = Infallible;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Infallible> {
        if !self.woken {
            self.woken = true;
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}

/// A request body that fails once its deadline passes.
struct TimedBody {
    payload: Payload,
    deadline: Pin<Box<Sleep>>,
    /// Set when the deadline passed: the connection then closes with the response.
    late: Rc<Cell<bool>>,
}

impl Stream for TimedBody {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Poll::Ready(item) = Pin::new(&mut self.payload).poll_next(cx) {
            return Poll::Ready(item);
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.late.set(true);
            return Poll::Ready(Some(Err(PayloadError::Io(io::Error::new(
                io::ErrorKind::TimedOut,
                "request body not received in time",
            )))));
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_ends_at_its_blank_line_however_the_bytes_arrive() {
        let head = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        for split in 0..head.len() {
            let mut ends = HeadEnd::default();
            let (a, b) = head.split_at(split);
            assert!(!ends.seen_in(a) || split == head.len(), "{split}");
            assert!(ends.seen_in(b), "{split}");
        }
        assert!(HeadEnd::default().seen_in(b"GET / HTTP/1.0\n\n"));
        assert!(!HeadEnd::default().seen_in(b"GET / HTTP/1.1\r\nHost: x\r\n"));
    }

    #[test]
    fn hosts_follow_rfc_9112() {
        let one = |host: &'static str| std::iter::once(host.as_bytes());
        assert!(valid_hosts(Version::HTTP_11, one("example.com:8080")));
        assert!(valid_hosts(Version::HTTP_10, std::iter::empty()));
        assert!(!valid_hosts(Version::HTTP_11, std::iter::empty()));
        for bad in ["a b", "user:pw@x", ""] {
            assert!(!valid_hosts(Version::HTTP_11, one(bad)), "{bad:?}");
        }
        let two = [b"a".as_slice(), b"a".as_slice()];
        assert!(!valid_hosts(Version::HTTP_11, two.into_iter()));
    }
}
