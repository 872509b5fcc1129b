//! The open event streams of this instance, keyed by user and by topic.
//!
//! Each stream is an [`outlet`]: a bounded queue for its task, and, for a stream served
//! straight off its socket, the socket, which events are written to directly while the
//! stream is at rest. Streams are grouped in [`shard`]s, one per HTTP worker thread,
//! whose dispatcher writes each broadcast to its own streams, and its share of any other
//! event that reaches many streams (a topic's, or a user's with many tabs), so that one
//! key's fan-out uses every worker's core, as a broadcast does.

mod outlet;
mod shard;

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard, OnceLock, RwLock,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use events::{Cursor, Envelope};
use futures_util::Stream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use crate::frame::{Frame, Published};
pub use crate::sequence::StreamTopics;
use crate::{feed::Feed, metrics::Metrics, presence::Tracker};
pub use outlet::{CarrierEnd, KEEP_ALIVE, Notice, Socket};
use outlet::{Notices, Offering, Outlet, offer_each};
use shard::{Dispatcher, Lifeline, Shard};

/// Arriving users queued for the subscriptions at most. Past that, arrivals are not
/// queued one by one: the hub notes that some were missed, and the subscriptions take
/// every user holding a stream here instead (see [`Hub::missed_arrivals`]).
const ARRIVALS_QUEUE: usize = 16_384;

/// An event for at least this many streams is handed to their workers' dispatchers, each
/// writing to its own share, rather than written to all of them here: below it, the hop
/// costs more than it spreads.
const SPREAD_FROM: usize = 64;

/// Why the hub would not open a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the user holds {0} streams here already")]
    UserLimit(usize),
    #[error("this instance holds {0} streams already")]
    InstanceFull(usize),
}

/// How many streams the hub holds, per user and in all, and how many events each queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub queue_size: usize,
    pub per_user: usize,
    pub total: usize,
}

impl Capacity {
    /// Unbounded but for the queue, for tests and tools.
    pub fn with_queue(queue_size: usize) -> Self {
        Self {
            queue_size,
            per_user: usize::MAX,
            total: usize::MAX,
        }
    }
}

/// The registry of open streams. A cheap `Clone` handle; every clone sees the same streams.
///
/// A user may hold any number of streams (tabs, devices); each has its own bounded queue,
/// and closing one removes only that one.
#[derive(Clone, Debug)]
pub struct Hub {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    streams: Mutex<Registry>,
    next_stream_id: AtomicU64,
    queue_size: usize,
    per_user: usize,
    total: usize,
    /// Streams alive now (registered and not yet dropped), whatever the map says: what
    /// the instance's memory and sockets are spent on.
    alive: AtomicUsize,
    /// Set at shutdown: streams opened from then on end at once.
    closing: AtomicBool,
    /// Told each user and topic that gets its first stream here (see
    /// [`Hub::watch_arrivals`]).
    arrivals: OnceLock<mpsc::Sender<Feed>>,
    /// Told of every stream with topics as it opens and closes (see `presence`).
    presence: OnceLock<Arc<Tracker>>,
    /// An arrival did not fit in the queue: the subscriptions must resynchronise.
    arrivals_missed: AtomicBool,
    /// The hub's own shard first (for streams without a worker's), then one per worker.
    shards: RwLock<Vec<Arc<Shard>>>,
    /// Cancelled by `close_all`: stops the dispatchers.
    stopped: CancellationToken,
    /// Set once the instance begins to stop: dispatchers may end from then on.
    stopping: Arc<AtomicBool>,
    /// Cancelled when a dispatcher ended while the instance served.
    dispatcher_lost: CancellationToken,
    metrics: Arc<Metrics>,
}

/// Every open stream, under its user and under each of its topics.
#[derive(Debug, Default)]
struct Registry {
    users: HashMap<String, Vec<Entry>>,
    topics: HashMap<String, Vec<Entry>>,
}

impl Registry {
    fn feed(&self, feed: &Feed) -> Option<&Vec<Entry>> {
        match feed {
            Feed::User(user_id) => self.users.get(user_id),
            Feed::Topic(topic) => self.topics.get(topic),
            Feed::Broadcast => None,
        }
    }

    fn holds(&self, feed: &Feed) -> bool {
        match feed {
            Feed::Broadcast => !self.users.is_empty(),
            feed => self.feed(feed).is_some(),
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    id: u64,
    outlet: Arc<Outlet>,
    shard: ShardId,
}

/// A worker's shard (see [`Hub::start_shard`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardId(usize);

impl ShardId {
    /// The hub's own shard, without a dispatcher: its broadcasts are written where they
    /// are delivered (by whoever calls [`Hub::deliver`]).
    pub const OWN: Self = Self(0);
}

/// How a directly served stream is reached: its socket, and its worker's shard.
#[derive(Debug, Clone)]
pub struct Direct {
    pub socket: Socket,
    pub shard: ShardId,
}

impl Hub {
    pub fn new(capacity: Capacity, metrics: Arc<Metrics>) -> Self {
        Self {
            shared: Arc::new(Shared {
                streams: Mutex::new(Registry::default()),
                next_stream_id: AtomicU64::new(1),
                queue_size: capacity.queue_size.max(1),
                per_user: capacity.per_user.max(1),
                total: capacity.total.max(1),
                alive: AtomicUsize::new(0),
                closing: AtomicBool::new(false),
                arrivals: OnceLock::new(),
                presence: OnceLock::new(),
                arrivals_missed: AtomicBool::new(false),
                shards: RwLock::new(vec![Arc::new(Shard::new(None))]),
                stopped: CancellationToken::new(),
                stopping: Arc::new(AtomicBool::new(false)),
                dispatcher_lost: CancellationToken::new(),
                metrics,
            }),
        }
    }

    /// Starts a shard on the current runtime (an HTTP worker's): the broadcasts and
    /// keep-alives of the streams opened with it are written by one task there.
    pub fn start_shard(&self, keep_alive: Duration) -> ShardId {
        // As many broadcasts as a stream may have queued.
        let (dispatcher, broadcasts) = mpsc::channel(self.shared.queue_size);
        let shard = Arc::new(Shard::new(Some(dispatcher)));
        let id = {
            let mut shards = self.shards_mut();
            shards.push(shard.clone());
            ShardId(shards.len() - 1)
        };
        tokio::spawn(
            Dispatcher {
                shard,
                broadcasts,
                metrics: self.shared.metrics.clone(),
                queue_size: self.shared.queue_size,
                keep_alive: keep_alive.max(Duration::from_millis(4)),
                stopped: self.shared.stopped.clone(),
                _lifeline: Lifeline {
                    stopping: self.shared.stopping.clone(),
                    lost: self.shared.dispatcher_lost.clone(),
                },
            }
            .run(),
        );
        id
    }

    /// The instance begins to stop: from now on a worker's dispatcher may end.
    pub fn stopping(&self) {
        self.shared.stopping.store(true, Ordering::Release);
    }

    /// Completes if a worker's dispatcher ends while the instance serves (a bug: its
    /// streams would get no more broadcasts), so that the instance stops.
    pub async fn dispatcher_lost(&self) {
        self.shared.dispatcher_lost.cancelled().await;
    }

    fn shards(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<Shard>>> {
        // Only ever pushed to: a poisoned lock is whole.
        self.shared.shards.read().unwrap_or_else(|p| p.into_inner())
    }

    fn shards_mut(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Arc<Shard>>> {
        self.shared
            .shards
            .write()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn shard(&self, id: ShardId) -> Arc<Shard> {
        let shards = self.shards();
        shards.get(id.0).unwrap_or(&shards[0]).clone()
    }

    fn offering(&self) -> Offering<'_> {
        Offering {
            queue_size: self.shared.queue_size,
            metrics: &self.shared.metrics,
            now: Instant::now(),
        }
    }

    fn streams(&self) -> MutexGuard<'_, Registry> {
        // Every critical section is a single insert, removal or sweep, so a panic while
        // holding the lock cannot leave the map half-updated: a poisoned lock is usable.
        self.shared
            .streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a new stream for `user_id` and `topics`. It receives every event
    /// delivered to that user, to each of those topics and to everyone from now on, and
    /// unregisters itself when dropped. Refused when the user, or the instance, holds as
    /// many streams as it may.
    pub fn open(&self, user_id: &str, topics: &StreamTopics) -> Result<EventStream, Refused> {
        self.register(user_id, topics, None)
    }

    /// [`Hub::open`] for a stream served straight off its socket, which is written to
    /// directly while the stream is at rest.
    pub fn open_direct(
        &self,
        user_id: &str,
        topics: &StreamTopics,
        direct: Direct,
    ) -> Result<EventStream, Refused> {
        self.register(user_id, topics, Some(direct))
    }

    fn register(
        &self,
        user_id: &str,
        topics: &StreamTopics,
        direct: Option<Direct>,
    ) -> Result<EventStream, Refused> {
        let id = self.shared.next_stream_id.fetch_add(1, Ordering::Relaxed);
        let (socket, shard) = match direct {
            Some(Direct { socket, shard }) => (Some(socket), shard),
            None => (None, ShardId(0)),
        };
        let outlet = Arc::new(Outlet::new(user_id, topics.clone(), socket));
        let mut arrived = Vec::new();
        let mut registered = false;
        {
            let mut streams = self.streams();
            let alive = self.shared.alive.load(Ordering::Acquire);
            if alive >= self.shared.total {
                return Err(Refused::InstanceFull(alive));
            }
            let held = streams.users.get(user_id).map_or(0, Vec::len);
            if held >= self.shared.per_user {
                return Err(Refused::UserLimit(held));
            }
            // Checked under the lock that close_all takes, so no stream slips in after it.
            if self.shared.closing.load(Ordering::Acquire) {
                outlet.close();
            } else {
                let entry = Entry {
                    id,
                    outlet: outlet.clone(),
                    shard,
                };
                registered = true;
                let entries = streams.users.entry(user_id.to_string()).or_default();
                if entries.is_empty() {
                    arrived.push(Feed::User(user_id.to_string()));
                }
                entries.push(entry.clone());
                for (_, topic) in topics.iter() {
                    let entries = streams.topics.entry(topic.clone()).or_default();
                    if entries.is_empty() {
                        arrived.push(Feed::Topic(topic.clone()));
                    }
                    entries.push(entry.clone());
                }
            }
            self.shared.alive.fetch_add(1, Ordering::AcqRel);
        }
        if let Some(arrivals) = self.shared.arrivals.get() {
            for feed in arrived {
                if let Err(mpsc::error::TrySendError::Full(_)) = arrivals.try_send(feed)
                    && !self.shared.arrivals_missed.swap(true, Ordering::AcqRel)
                {
                    self.shared.metrics.arrivals_missed.inc();
                    tracing::warn!(
                        "arriving users and topics came faster than the subscriptions took \
                         them; they will subscribe every feed held here"
                    );
                }
            }
        }
        let tracked = registered
            && !topics.is_empty()
            && self
                .shared
                .presence
                .get()
                .is_some_and(|presence| presence.opened(user_id, topics));
        self.shared.metrics.streams_opened.inc();
        self.shared.metrics.streams_open.inc();
        tracing::debug!(user_id, stream = id, "stream opened");
        let shard = self.shard(shard);
        shard.join(id, outlet.clone());
        Ok(EventStream {
            notices: Notices::new(outlet.clone()),
            _registration: Registration {
                hub: self.clone(),
                shard,
                outlet,
                id,
                tracked,
            },
        })
    }

    /// From now on, tells `presence` of every stream with topics as it opens and closes.
    /// Only the first call takes effect.
    pub fn track_presence(&self, presence: Arc<Tracker>) {
        let _ = self.shared.presence.set(presence);
    }

    /// From now on, each user who opens a stream here while holding none (the first of
    /// their streams, or the first since their last closed), and each topic that gets
    /// its first stream here, so that the bus can subscribe to their events. Bounded
    /// ([`ARRIVALS_QUEUE`]): an arrival that does not fit is not lost but noted, and
    /// [`Hub::missed_arrivals`] then answers every feed held here. Only the first call
    /// gets a receiver.
    pub fn watch_arrivals(&self) -> Option<mpsc::Receiver<Feed>> {
        let (tx, rx) = mpsc::channel(ARRIVALS_QUEUE);
        self.shared.arrivals.set(tx).ok().map(|()| rx)
    }

    /// When arrivals were dropped for a full queue since the last call: every user and
    /// topic holding a stream here now, which the watcher should treat as arrived.
    pub fn missed_arrivals(&self) -> Option<Vec<Feed>> {
        if !self.shared.arrivals_missed.swap(false, Ordering::AcqRel) {
            return None;
        }
        let streams = self.streams();
        let users = streams.users.keys().cloned().map(Feed::User);
        let topics = streams.topics.keys().cloned().map(Feed::Topic);
        Some(users.chain(topics).collect())
    }

    /// How many more streams the instance may open.
    pub fn room(&self) -> usize {
        self.shared
            .total
            .saturating_sub(self.shared.alive.load(Ordering::Acquire))
    }

    /// Ends up to `count` streams, each told to reconnect (`reason`) so that its client
    /// resumes at once, elsewhere (see `rebalance`). Returns how many.
    pub fn shed(&self, count: usize, reason: &str) -> usize {
        let entries: Vec<Entry> = self
            .streams()
            .users
            .values()
            .flatten()
            .filter(|entry| !entry.outlet.is_closed())
            .take(count)
            .cloned()
            .collect();
        self.end(&entries, &Notice::Reconnect(reason.into()));
        entries.len()
    }

    /// Ends `entries`, each told `notice` first (unless its queue is full, in which case
    /// it just ends): offered outside the map's lock, then taken out of the map, under
    /// the user and each topic (closed: its task takes the notice, then ends).
    fn end(&self, entries: &[Entry], notice: &Notice) {
        let offering = self.offering();
        for entry in entries {
            entry.outlet.offer(notice, &offering);
        }
        let mut streams = self.streams();
        for entry in entries {
            unregister(&mut streams, &entry.outlet, entry.id);
        }
    }

    /// Whether the instance holds as many streams as it may (and so is not ready for more).
    pub fn is_full(&self) -> bool {
        self.shared.alive.load(Ordering::Acquire) >= self.shared.total
    }

    /// Ends every stream of `user_id` here: each is told `reason` (unless its queue is
    /// full, in which case it just ends) and receives nothing more. Returns how many.
    pub fn disconnect(&self, user_id: &str, reason: &str) -> usize {
        let Some(entries) = self.streams().users.get(user_id).cloned() else {
            return 0;
        };
        self.end(&entries, &Notice::Disconnect(reason.into()));
        tracing::info!(user_id, streams = entries.len(), "user disconnected");
        entries.len()
    }

    /// Queues `envelope` on every open stream of its user or its topic, or on every
    /// stream for a broadcast. Encodes it once. Never waits: a stream whose queue is full
    /// is closed instead (its client resumes from history), so one stalled client cannot
    /// hold up the others or make this instance's memory grow.
    ///
    /// A broadcast goes to each worker's shard as one message, and its dispatcher writes
    /// it to that worker's streams; an event for many streams goes to each worker's
    /// dispatcher with that worker's share of them; one for a few is offered here.
    pub fn deliver(&self, envelope: &Envelope) {
        let feed = Feed::of(envelope);
        if feed == Feed::Broadcast {
            if self.streams().users.is_empty() {
                return;
            }
            let published = self.published(envelope);
            let offering = self.offering();
            for shard in self.shards().iter() {
                shard.broadcast(&published, &offering);
            }
            return;
        }
        let outlets = self.outlets_of(&feed, |_| false);
        if !outlets.is_empty() {
            let notice = Notice::Event(self.published(envelope));
            self.offer_to(outlets, &notice);
        }
    }

    /// An event as every stream shares it: encoded once, with its delivery counter.
    fn published(&self, envelope: &Envelope) -> Arc<Published> {
        let metrics = &self.shared.metrics;
        let counter = metrics
            .events_delivered
            .get_or_create(&metrics.event_labels(&envelope.event_type))
            .clone();
        let mut published = Published::new(envelope);
        published.delivered = Some(counter);
        Arc::new(published)
    }

    /// Tells every stream of `feed` (a user or a topic) to catch up from its history (its
    /// events may have been published before this instance was subscribed to them;
    /// broadcasts have their own subscription, held all along).
    pub fn catch_up(&self, feed: &Feed) {
        self.offer_feed(feed, &Notice::CatchUpIn(feed.scope()), |_| false);
    }

    /// Tells the streams of `feed` to catch up from its history unless they stand at
    /// `head` already (read after the feed's subscription was confirmed, so everything
    /// after it arrives live). A stream whose position is not known yet (still opening)
    /// or is behind catches up.
    pub fn catch_up_unless_at(&self, feed: &Feed, head: events::Position) {
        let scope = feed.scope();
        self.offer_feed(feed, &Notice::CatchUpIn(scope), |outlet| {
            outlet.stands_at(scope, head)
        });
    }

    /// Which of `feeds` hold no stream here.
    pub fn absent<'a>(&self, feeds: impl Iterator<Item = &'a Feed>) -> Vec<&'a Feed> {
        let streams = self.streams();
        feeds.filter(|feed| !streams.holds(feed)).collect()
    }

    /// Tells every stream to catch up from history.
    pub fn catch_up_all(&self) {
        let outlets: Vec<Entry> = self.streams().users.values().flatten().cloned().collect();
        let streams = outlets.len();
        self.offer_to(outlets, &Notice::CatchUp);
        tracing::info!(streams, "streams told to catch up from history");
    }

    /// Offers `notice` to the streams of `feed` that `skip` does not pick.
    ///
    /// The streams are taken out of the hub's map first, and the map's lock is let go
    /// before any is offered anything: an offer may write to a socket (a system call),
    /// and every other user's delivery and every stream that opens or closes waits on
    /// that lock. Two publishers delivering one feed's events from two threads at once
    /// (the in-process bus) may then offer them out of order; a stream takes the later
    /// one as a gap and reads both from history, so nothing is lost or repeated.
    fn offer_feed(&self, feed: &Feed, notice: &Notice, skip: impl Fn(&Outlet) -> bool) {
        let outlets = self.outlets_of(feed, skip);
        if !outlets.is_empty() {
            self.offer_to(outlets, notice);
        }
    }

    /// The streams of `feed` that `skip` does not pick, taken out of the map (the lock
    /// is held only while they are copied).
    fn outlets_of(&self, feed: &Feed, skip: impl Fn(&Outlet) -> bool) -> Vec<Entry> {
        match self.streams().feed(feed) {
            Some(entries) => entries
                .iter()
                .filter(|entry| !skip(&entry.outlet))
                .cloned()
                .collect(),
            None => Vec::new(),
        }
    }

    /// Offers `notice` to `outlets`, outside the map's lock, then removes from the map
    /// the streams that are full or gone. An event for [`SPREAD_FROM`] streams or more
    /// is handed to each worker's dispatcher with its share (streams that are full or
    /// gone there leave when their registration drops).
    fn offer_to(&self, mut outlets: Vec<Entry>, notice: &Notice) {
        if outlets.len() >= SPREAD_FROM && matches!(notice, Notice::Event(_)) {
            outlets = self.spread(outlets, notice);
        }
        let removed = offer_each(
            outlets.iter().map(|entry| (entry.id, &*entry.outlet)),
            notice,
            &self.offering(),
        );
        if !removed.is_empty() {
            let mut streams = self.streams();
            for entry in outlets.iter().filter(|entry| removed.contains(&entry.id)) {
                unregister(&mut streams, &entry.outlet, entry.id);
            }
        }
    }

    /// Hands each worker's dispatcher its share of `outlets`; returns those left to
    /// offer here (the hub's own shard's, and any a dispatcher could not take).
    fn spread(&self, mut outlets: Vec<Entry>, notice: &Notice) -> Vec<Entry> {
        outlets.sort_unstable_by_key(|entry| entry.shard.0);
        let shards = self.shards();
        let mut here = Vec::new();
        for share in outlets.chunk_by(|a, b| a.shard == b.shard) {
            let shard = shards.get(share[0].shard.0).unwrap_or(&shards[0]);
            let members = share.iter().map(|entry| (entry.id, entry.outlet.clone()));
            if !shard.hand_over(notice, members.collect()) {
                here.extend_from_slice(share);
            }
        }
        here
    }

    /// Ends every stream at once, and any opened later: clients see the response end
    /// and reconnect.
    pub fn close_all(&self) {
        let mut streams = self.streams();
        self.shared.closing.store(true, Ordering::Release);
        let closed = std::mem::take(&mut *streams);
        drop(streams);
        for entry in closed.users.values().flatten() {
            entry.outlet.close();
        }
        self.shared.stopped.cancel();
        tracing::info!(users = closed.users.len(), "closed all streams");
    }

    /// Ends every stream, spread evenly over `window`, so that their clients reconnect
    /// (elsewhere) gradually rather than all at once. Streams opened meanwhile end at once.
    pub async fn drain(&self, window: Duration) {
        const TICKS: u32 = 20;
        let all: Vec<(Arc<Outlet>, u64)> = {
            let streams = self.streams();
            self.shared.closing.store(true, Ordering::Release);
            streams
                .users
                .values()
                .flatten()
                .map(|e| (e.outlet.clone(), e.id))
                .collect()
        };
        tracing::info!(streams = all.len(), ?window, "draining streams");
        let per_tick = all.len().div_ceil(TICKS as usize).max(1);
        for (i, batch) in all.chunks(per_tick).enumerate() {
            if i > 0 {
                tokio::time::sleep(window / TICKS).await;
            }
            let mut streams = self.streams();
            for (outlet, id) in batch {
                unregister(&mut streams, outlet, *id);
            }
        }
        self.close_all();
    }

    /// Whether a stream of `feed` is open on this instance (for the broadcasts: any
    /// stream).
    pub fn has_streams(&self, feed: &Feed) -> bool {
        self.streams().holds(feed)
    }

    /// How many streams are open on this instance (not closed, whether or not their
    /// tasks have ended yet).
    pub fn stream_count(&self) -> usize {
        self.streams()
            .users
            .values()
            .flatten()
            .filter(|entry| !entry.outlet.is_closed())
            .count()
    }

    /// Whether any stream is registered here.
    pub fn is_empty(&self) -> bool {
        self.streams().users.is_empty()
    }

    fn remove(&self, outlet: &Outlet, id: u64) {
        unregister(&mut self.streams(), outlet, id);
        tracing::debug!(user_id = %outlet.user_id, stream = id, "stream closed");
    }
}

/// Takes stream `id` (with `outlet`) out of `streams`, under its user and its topics, and
/// closes it; removes a user or topic when it was their last.
fn unregister(streams: &mut Registry, outlet: &Outlet, id: u64) {
    fn take_out(map: &mut HashMap<String, Vec<Entry>>, key: &str, id: u64) {
        if let Some(entries) = map.get_mut(key) {
            entries.retain(|entry| entry.id != id);
            if entries.is_empty() {
                map.remove(key);
            }
        }
    }
    outlet.close();
    take_out(&mut streams.users, &outlet.user_id, id);
    for (_, topic) in outlet.topics.iter() {
        take_out(&mut streams.topics, topic, id);
    }
}

/// What one stream's task receives: its notices, in order. Ends when the hub closes the
/// stream (after what was queued before). While the task waits on it, the hub may write
/// to the stream directly; [`EventStream::hold`] stops that and says where it got to.
#[derive(Debug)]
pub struct EventStream {
    notices: Notices,
    /// Held only for its `Drop`, which unregisters the stream.
    _registration: Registration,
}

impl EventStream {
    /// Stops direct writes until the task waits again, and returns the cursor they
    /// reached.
    pub fn hold(&self) -> Cursor {
        self.notices.hold()
    }

    /// Where the stream stands, for direct writes once the task waits again.
    pub fn set_cursor(&self, cursor: Cursor) {
        self.notices.set_cursor(cursor);
    }

    /// The carrier's end of the stream, for a directly served stream.
    pub fn carrier(&self) -> CarrierEnd {
        self.notices.carrier()
    }
}

impl Stream for EventStream {
    type Item = Notice;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Notice>> {
        Pin::new(&mut self.notices).poll_next(cx)
    }
}

/// Removes its stream from the hub when the stream is dropped (the client went away).
#[derive(Debug)]
struct Registration {
    hub: Hub,
    shard: Arc<Shard>,
    outlet: Arc<Outlet>,
    id: u64,
    /// Whether presence was told it opened (and so must be told it closed).
    tracked: bool,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.remove(&self.outlet, self.id);
        if self.tracked
            && let Some(presence) = self.hub.shared.presence.get()
        {
            presence.closed(&self.outlet.user_id, &self.outlet.topics);
        }
        self.shard.leave(self.id);
        self.hub.shared.alive.fetch_sub(1, Ordering::AcqRel);
        let metrics = &self.hub.shared.metrics;
        metrics.streams_closed.inc();
        metrics.streams_open.dec();
    }
}

#[cfg(test)]
mod tests;
