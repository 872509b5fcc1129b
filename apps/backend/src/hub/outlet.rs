//! One open stream as the hub sees it: where its notices go, and, for a stream served
//! straight off its socket, the socket itself.
//!
//! Queuing every event for the stream's own task meant a broadcast to 10,000 streams
//! woke 10,000 tasks, each to pop one notice, build one frame and make one write. An
//! outlet lets whoever delivers an event (the relay for a user's events, the worker's
//! dispatcher for a broadcast, see `shard`) write it to the socket itself, without
//! waking anyone, when the stream is *at rest*: its task waits for a notice and its
//! carrier has written all it was given. The event must also be the stream's very next
//! one, by the rule every live event follows (`sequence::live_step`). Anything else (a
//! gap to repair from history, a catch-up, a disconnect, a stream carried by actix-web,
//! bytes the socket would not take at once) goes to the task as before, through the
//! outlet's bounded queue, and the stream stays off the direct path until its task has
//! handled all of it and its carrier has written all of it. So the order of a stream's
//! frames, its cursor and the slow-consumer rule are the same on both paths.
//!
//! A direct write never waits: it is one non-blocking `send` of the stream's own `id:`
//! line and the event's shared bytes (encoded once per event; `sendmsg` of the two for a
//! frame over [`SMALL_FRAME`]). What the socket does not take is left to the carrier,
//! which writes it first, with the usual stall limit.

use std::{
    collections::VecDeque,
    io::{self, IoSlice, Write as _},
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll},
    time::Instant,
};

use bytes::{Bytes, BytesMut};
use events::Cursor;
use futures_util::{Stream, task::AtomicWaker};
use tokio::net::TcpStream;

use crate::{
    frame::Published,
    metrics::Metrics,
    sequence::{self, LiveStep, Scope, StreamTopics},
};

/// What the hub queues on a stream.
#[derive(Debug, Clone)]
pub enum Notice {
    /// A published event, encoded once and shared by every stream it goes to.
    Event(Arc<Published>),
    /// Events may have been missed (the Redis subscription reconnected or fell behind):
    /// the stream should catch up from history.
    CatchUp,
    /// The events of one of the stream's feeds (its user's, or a topic's) may have been
    /// missed (published before this instance was subscribed to them): the stream should
    /// catch up from that history only.
    CatchUpIn(Scope),
    /// A publisher disconnected the stream's user: say why, then end.
    Disconnect(Arc<str>),
    /// The instance sheds the stream (it holds more than its share): say so, so that the
    /// client reconnects at once (elsewhere), then end.
    Reconnect(Arc<str>),
}

/// Frames up to this size are written from one buffer on the stack.
const SMALL_FRAME: usize = 2048;

/// A keep-alive comment, as russe encodes `Event::Comment("keep-alive")`.
pub const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";

/// The socket of a stream served straight off its connection.
#[derive(Debug, Clone)]
pub struct Socket {
    pub io: Arc<TcpStream>,
    /// Whether its frames carry their `event:` line (`delivery::Naming`).
    pub named: bool,
}

/// What an outlet did with a notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Written to the socket (or left to the carrier to finish): delivered. The one
    /// delivering counts it, once for all the streams it wrote to.
    Written,
    /// Skipped as a duplicate, or queued for the stream's task (which counts it).
    Taken,
    /// The queue is full: the client stopped reading. The stream is closed.
    Full,
    /// The stream is closed (or its socket failed): remove it.
    Gone,
}

/// What every offer of one round (one notice to some streams) needs from the one
/// offering it.
#[derive(Debug, Clone, Copy)]
pub struct Offering<'a> {
    pub queue_size: usize,
    pub metrics: &'a Metrics,
    /// Read once per round, not once per stream.
    pub now: Instant,
}

/// One open stream's delivery point, shared by the hub, the stream's task and (for a
/// direct stream) its carrier.
#[derive(Debug)]
pub struct Outlet {
    pub user_id: Box<str>,
    /// The topics the stream carries (shared with the stream's task).
    pub topics: StreamTopics,
    state: Mutex<State>,
    /// The stream's task: woken when a notice is queued, when a direct write leaves bytes
    /// for its carrier, and when the stream closes.
    task: AtomicWaker,
    socket: Option<Socket>,
}

#[derive(Debug)]
struct State {
    /// Notices for the task, in order. Bounded by the hub's queue size.
    queue: VecDeque<Notice>,
    /// The stream's cursor, kept here so that direct writes move it.
    cursor: Cursor,
    /// Whether the task has set the cursor yet (it has not while the stream opens).
    cursor_known: bool,
    /// The task waits for a notice: it has nothing of its own in hand.
    waiting: bool,
    /// The carrier has written everything it was given.
    flushed: bool,
    /// Bytes a direct write could not finish, for the carrier to write first.
    unwritten: Bytes,
    closed: bool,
    /// When the socket last took a write (for keep-alives).
    last_write: Instant,
}

impl State {
    fn at_rest(&self) -> bool {
        self.waiting && self.flushed && self.unwritten.is_empty() && !self.closed
    }
}

impl Outlet {
    pub fn new(user_id: &str, topics: StreamTopics, socket: Option<Socket>) -> Self {
        Self {
            user_id: user_id.into(),
            topics,
            state: Mutex::new(State {
                queue: VecDeque::new(),
                cursor: Cursor::default(),
                cursor_known: false,
                waiting: false,
                flushed: false,
                unwritten: Bytes::new(),
                closed: false,
                last_write: Instant::now(),
            }),
            task: AtomicWaker::new(),
            socket,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Each critical section leaves the state whole before anything that can panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands `notice` to the stream: written to its socket now when the stream is at
    /// rest and the notice is its next event (or skipped when it has it already), else
    /// queued for its task. A full queue closes the stream.
    pub fn offer(&self, notice: &Notice, offering: &Offering<'_>) -> Offer {
        let mut state = self.lock();
        if state.closed {
            return Offer::Gone;
        }
        if let (Some(socket), Notice::Event(published)) = (&self.socket, notice)
            && state.at_rest()
        {
            match sequence::live_step(&mut state.cursor, published) {
                LiveStep::Skip => return Offer::Taken,
                LiveStep::Send { with_id } => {
                    self.write_event(&mut state, socket, with_id, published, offering.now);
                    let gone = state.closed;
                    drop(state);
                    if gone {
                        self.task.wake();
                        return Offer::Gone;
                    }
                    return Offer::Written;
                }
                LiveStep::Repair(_) => {}
            }
        }
        let full = state.queue.len() >= offering.queue_size;
        if full {
            state.closed = true;
        } else {
            state.queue.push_back(notice.clone());
        }
        drop(state);
        self.task.wake();
        if full { Offer::Full } else { Offer::Taken }
    }

    fn write_event(
        &self,
        state: &mut State,
        socket: &Socket,
        with_id: bool,
        published: &Published,
        now: Instant,
    ) {
        // A frame that cannot be framed is dropped, as the carriers drop it.
        let Some(body) = published.body(socket.named) else {
            return;
        };
        if !with_id {
            self.write(state, socket, [&[], body], now);
        } else if state.cursor.topics.is_empty() {
            // On the stack: `id: `, a cursor without topics (4 numbers of 20 digits, 16
            // hex digits and separators), a line break. The hot path of a broadcast.
            let mut id = [0u8; 128];
            let mut line = io::Cursor::new(&mut id[..]);
            if writeln!(line, "id: {}", state.cursor).is_err() {
                return;
            }
            let len = usize::try_from(line.position()).unwrap_or_default();
            self.write(state, socket, [&id[..len], body], now);
        } else {
            let line = format!("id: {}\n", state.cursor);
            self.write(state, socket, [line.as_bytes(), body], now);
        }
    }

    /// Writes `parts` without waiting: what the socket does not take now is left for the
    /// carrier (and the stream is off the direct path until it is written).
    ///
    /// The socket is written to as a plain socket (`send`), not through tokio's
    /// readiness: tokio would first read the socket's readiness (one more cache line per
    /// stream) and, after a `WouldBlock`, refuse until its reactor has seen the socket
    /// writable again. A `WouldBlock` here leaves tokio's readiness as it was, so the
    /// carrier's next `try_write` finds out for itself. A frame that fits in
    /// [`SMALL_FRAME`] is copied into one buffer: one `send` is cheaper than a `sendmsg`
    /// of two pieces.
    fn write(&self, state: &mut State, socket: &Socket, parts: [&[u8]; 2], now: Instant) {
        let total = parts[0].len() + parts[1].len();
        let sock = socket2::SockRef::from(&*socket.io);
        let sent = if total <= SMALL_FRAME {
            let mut frame = [0u8; SMALL_FRAME];
            frame[..parts[0].len()].copy_from_slice(parts[0]);
            frame[parts[0].len()..total].copy_from_slice(parts[1]);
            sock.send(&frame[..total])
        } else {
            sock.send_vectored(&parts.map(IoSlice::new))
        };
        let written = match sent {
            Ok(written) => written,
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                0
            }
            Err(_) => {
                // The client is gone: the task ends the stream.
                state.closed = true;
                return;
            }
        };
        if written > 0 {
            state.last_write = now;
        }
        if written < total {
            let mut rest = BytesMut::with_capacity(total - written);
            let mut skip = written;
            for part in parts {
                let from = skip.min(part.len());
                rest.extend_from_slice(&part[from..]);
                skip -= from;
            }
            state.unwritten = rest.freeze();
            state.flushed = false;
            self.task.wake();
        }
    }

    /// Writes a keep-alive comment when the stream is at rest and the socket has taken
    /// nothing since `quiet_since`. A write that finds the client gone ends the stream.
    pub fn keep_alive(&self, quiet_since: Instant, now: Instant) {
        let mut state = self.lock();
        if let Some(socket) = &self.socket
            && state.at_rest()
            && state.last_write <= quiet_since
        {
            self.write(&mut state, socket, [&[], KEEP_ALIVE], now);
        }
        let gone = state.closed;
        drop(state);
        if gone {
            self.task.wake();
        }
    }

    /// Ends the stream: its task takes what is queued, then ends.
    pub fn close(&self) {
        self.lock().closed = true;
        self.task.wake();
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Whether the stream is known to stand at `head` in the history of `scope`.
    pub fn stands_at(&self, scope: Scope, head: events::Position) -> bool {
        let state = self.lock();
        state.cursor_known && sequence::position(&state.cursor, scope) == Some(head)
    }
}

/// Offers `notice` to each of `outlets` (with their stream ids), counting the events
/// written directly once for all of them. Returns the ids of the streams to remove: those
/// whose queue was full (closed now, and counted as cut off) and those already closed.
pub fn offer_each<'a>(
    outlets: impl IntoIterator<Item = (u64, &'a Outlet)>,
    notice: &Notice,
    offering: &Offering<'_>,
) -> Vec<u64> {
    let mut written = 0;
    let mut removed = Vec::new();
    for (id, outlet) in outlets {
        match outlet.offer(notice, offering) {
            Offer::Written => written += 1,
            Offer::Taken => {}
            Offer::Full => {
                cut_off(offering.metrics, &outlet.user_id, id);
                removed.push(id);
            }
            // Closed; its registration removes it from the shard when its task ends.
            Offer::Gone => removed.push(id),
        }
    }
    if let Notice::Event(published) = notice
        && written > 0
    {
        published.count_delivered(offering.metrics, written);
    }
    removed
}

/// Counts and logs a stream closed for a full queue.
fn cut_off(metrics: &Metrics, user_id: &str, stream: u64) {
    metrics.slow_consumer_disconnects.inc();
    tracing::warn!(
        user_id,
        stream,
        "stream closed: its queue is full (the client stopped reading)"
    );
}

/// The stream's task's end of its outlet: the notices it handles, in order. Ends once
/// the stream is closed and nothing is left queued. While it waits, the stream may be
/// written to directly.
#[derive(Debug)]
pub struct Notices {
    outlet: Arc<Outlet>,
}

impl Notices {
    pub fn new(outlet: Arc<Outlet>) -> Self {
        Self { outlet }
    }

    /// Stops direct writes until the next wait, and hands back the cursor they reached
    /// (the stream's task holds it until it waits again; meanwhile the stream's position
    /// is unknown here, see [`Outlet::stands_at`]).
    pub fn hold(&self) -> Cursor {
        let mut state = self.outlet.lock();
        state.waiting = false;
        state.cursor_known = false;
        std::mem::take(&mut state.cursor)
    }

    /// Where the stream stands now, for direct writes once the task waits again.
    pub fn set_cursor(&self, cursor: Cursor) {
        let mut state = self.outlet.lock();
        state.cursor = cursor;
        state.cursor_known = true;
    }

    /// The carrier's end of the same outlet.
    pub fn carrier(&self) -> CarrierEnd {
        CarrierEnd {
            outlet: self.outlet.clone(),
        }
    }
}

impl Stream for Notices {
    type Item = Notice;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Notice>> {
        let mut state = self.outlet.lock();
        if let Some(notice) = state.queue.pop_front() {
            state.waiting = false;
            return Poll::Ready(Some(notice));
        }
        if state.closed {
            return Poll::Ready(None);
        }
        // Registered under the lock an offer queues under: no wake-up is lost.
        self.outlet.task.register(cx.waker());
        state.waiting = true;
        Poll::Pending
    }
}

/// What the carrier of a direct stream tells its outlet, and takes from it.
#[derive(Debug, Clone)]
pub struct CarrierEnd {
    outlet: Arc<Outlet>,
}

impl CarrierEnd {
    /// Bytes a direct write left unwritten: they go before anything the carrier holds.
    pub fn take_unwritten(&self) -> Bytes {
        std::mem::take(&mut self.outlet.lock().unwritten)
    }

    /// The carrier has written all it was given (`wrote`: something, just now). False
    /// when a direct write has left bytes meanwhile: write those first.
    pub fn flushed(&self, wrote: bool) -> bool {
        let mut state = self.outlet.lock();
        if !state.unwritten.is_empty() {
            return false;
        }
        state.flushed = true;
        if wrote {
            state.last_write = Instant::now();
        }
        true
    }

    /// The carrier took a frame: no direct writes until it has written it.
    pub fn busy(&self) {
        self.outlet.lock().flushed = false;
    }

    /// Ready once a direct write has left bytes for the carrier.
    pub fn poll_unwritten(&self, cx: &mut Context<'_>) -> Poll<()> {
        let state = self.outlet.lock();
        if state.unwritten.is_empty() {
            self.outlet.task.register(cx.waker());
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }
}
