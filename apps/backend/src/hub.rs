//! The open event streams of this instance, keyed by user.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard, OnceLock,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use events::Envelope;
use futures_util::Stream;
use tokio::sync::mpsc;

pub use crate::frame::{Frame, Published};
use crate::metrics::Metrics;

/// What the hub queues on a stream.
#[derive(Debug, Clone)]
pub enum Notice {
    /// A published event, encoded once and shared by every stream it goes to.
    Event(Arc<Published>),
    /// Events may have been missed (the Redis subscription reconnected or fell behind):
    /// the stream should catch up from history.
    CatchUp,
    /// A publisher disconnected the stream's user: say why, then end.
    Disconnect(Arc<str>),
}

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
    streams: Mutex<HashMap<String, Vec<Entry>>>,
    next_stream_id: AtomicU64,
    queue_size: usize,
    per_user: usize,
    total: usize,
    /// Streams alive now (registered and not yet dropped), whatever the map says: what
    /// the instance's memory and sockets are spent on.
    alive: AtomicUsize,
    /// Set at shutdown: streams opened from then on end at once.
    closing: AtomicBool,
    /// Told each user who gets their first stream here (see [`Hub::watch_arrivals`]).
    arrivals: OnceLock<mpsc::UnboundedSender<String>>,
    metrics: Arc<Metrics>,
}

#[derive(Debug)]
struct Entry {
    id: u64,
    tx: mpsc::Sender<Notice>,
}

impl Hub {
    pub fn new(capacity: Capacity, metrics: Arc<Metrics>) -> Self {
        Self {
            shared: Arc::new(Shared {
                streams: Mutex::new(HashMap::new()),
                next_stream_id: AtomicU64::new(1),
                queue_size: capacity.queue_size.max(1),
                per_user: capacity.per_user.max(1),
                total: capacity.total.max(1),
                alive: AtomicUsize::new(0),
                closing: AtomicBool::new(false),
                arrivals: OnceLock::new(),
                metrics,
            }),
        }
    }

    fn streams(&self) -> MutexGuard<'_, HashMap<String, Vec<Entry>>> {
        // Every critical section is a single insert, removal or sweep, so a panic while
        // holding the lock cannot leave the map half-updated: a poisoned lock is usable.
        self.shared
            .streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a new stream for `user_id`. It receives every event delivered to that
    /// user (and every broadcast) from now on, and unregisters itself when dropped.
    /// Refused when the user, or the instance, holds as many streams as it may.
    pub fn open(&self, user_id: &str) -> Result<EventStream, Refused> {
        let id = self.shared.next_stream_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.shared.queue_size);
        let arrived = {
            let mut streams = self.streams();
            let alive = self.shared.alive.load(Ordering::Acquire);
            if alive >= self.shared.total {
                return Err(Refused::InstanceFull(alive));
            }
            let entries = streams.entry(user_id.to_string()).or_default();
            if entries.len() >= self.shared.per_user {
                return Err(Refused::UserLimit(entries.len()));
            }
            let first = entries.is_empty();
            // Checked under the lock that close_all takes, so no stream slips in after it.
            if !self.shared.closing.load(Ordering::Acquire) {
                entries.push(Entry { id, tx });
            } else if first {
                streams.remove(user_id);
            }
            self.shared.alive.fetch_add(1, Ordering::AcqRel);
            first
        };
        if arrived && let Some(arrivals) = self.shared.arrivals.get() {
            let _ = arrivals.send(user_id.to_string());
        }
        self.shared.metrics.streams_opened.inc();
        self.shared.metrics.streams_open.inc();
        tracing::debug!(user_id, stream = id, "stream opened");
        Ok(EventStream {
            rx,
            _registration: Registration {
                hub: self.clone(),
                user_id: user_id.to_string(),
                id,
            },
        })
    }

    /// From now on, the id of each user who opens a stream here while holding none (the
    /// first of their streams, or the first since their last closed), so that the bus can
    /// subscribe to their events. Unbounded, but one message per arrival, which the
    /// per-instance stream limit bounds. Only the first call gets a receiver.
    pub fn watch_arrivals(&self) -> Option<mpsc::UnboundedReceiver<String>> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.shared.arrivals.set(tx).ok().map(|()| rx)
    }

    /// Whether the instance holds as many streams as it may (and so is not ready for more).
    pub fn is_full(&self) -> bool {
        self.shared.alive.load(Ordering::Acquire) >= self.shared.total
    }

    /// Ends every stream of `user_id` here: each is told `reason` (unless its queue is
    /// full, in which case it just ends) and receives nothing more. Returns how many.
    pub fn disconnect(&self, user_id: &str, reason: &str) -> usize {
        let Some(entries) = self.streams().remove(user_id) else {
            return 0;
        };
        let reason: Arc<str> = reason.into();
        for entry in &entries {
            let _ = entry.tx.try_send(Notice::Disconnect(reason.clone()));
        }
        tracing::info!(user_id, streams = entries.len(), "user disconnected");
        entries.len()
    }

    /// Queues `envelope` on every open stream of its user, or on every stream for a
    /// broadcast. Encodes it once. Never waits: a stream whose queue is full is closed
    /// instead (its client resumes from history), so one stalled client cannot hold up
    /// the others or make this instance's memory grow.
    pub fn deliver(&self, envelope: &Envelope) {
        let mut streams = self.streams();
        if envelope.is_broadcast() {
            if streams.is_empty() {
                return;
            }
            let notice = self.event_notice(envelope);
            streams.retain(|user_id, entries| self.offer(user_id, entries, &notice));
        } else if let Some(entries) = streams.get_mut(&envelope.user_id) {
            let notice = self.event_notice(envelope);
            if !self.offer(&envelope.user_id, entries, &notice) {
                streams.remove(&envelope.user_id);
            }
        }
    }

    /// The notice of an event, shared by every stream: encoded once, with its delivery
    /// counter.
    fn event_notice(&self, envelope: &Envelope) -> Notice {
        let metrics = &self.shared.metrics;
        let counter = metrics
            .events_delivered
            .get_or_create(&metrics.event_labels(&envelope.event_type))
            .clone();
        Notice::Event(Arc::new(Published {
            delivered: Some(counter),
            ..Published::new(envelope)
        }))
    }

    /// Tells every stream of `user_id` to catch up from history (their events may have
    /// been published before this instance was subscribed to them).
    pub fn catch_up(&self, user_id: &str) {
        let mut streams = self.streams();
        if let Some(entries) = streams.get_mut(user_id)
            && !self.offer(user_id, entries, &Notice::CatchUp)
        {
            streams.remove(user_id);
        }
    }

    /// Which of `users` hold no stream here.
    pub fn absent<'a>(&self, users: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
        let streams = self.streams();
        users.filter(|user| !streams.contains_key(*user)).collect()
    }

    /// Tells every stream to catch up from history.
    pub fn catch_up_all(&self) {
        let mut streams = self.streams();
        let count: usize = streams.values().map(Vec::len).sum();
        streams.retain(|user_id, entries| self.offer(user_id, entries, &Notice::CatchUp));
        tracing::info!(streams = count, "streams told to catch up from history");
    }

    /// Queues `notice` on each of `entries`, dropping those that are full or gone.
    /// Returns whether any remain.
    fn offer(&self, user_id: &str, entries: &mut Vec<Entry>, notice: &Notice) -> bool {
        entries.retain(|entry| match entry.tx.try_send(notice.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.shared.metrics.slow_consumer_disconnects.inc();
                tracing::warn!(
                    user_id,
                    stream = entry.id,
                    "stream closed: its queue is full (the client stopped reading)"
                );
                false
            }
            // The stream is being dropped; its registration removes it.
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
        !entries.is_empty()
    }

    /// Ends every stream at once, and any opened later: clients see the response end
    /// and reconnect.
    pub fn close_all(&self) {
        let mut streams = self.streams();
        self.shared.closing.store(true, Ordering::Release);
        let closed = std::mem::take(&mut *streams);
        drop(streams);
        tracing::info!(users = closed.len(), "closed all streams");
    }

    /// Ends every stream, spread evenly over `window`, so that their clients reconnect
    /// (elsewhere) gradually rather than all at once. Streams opened meanwhile end at once.
    pub async fn drain(&self, window: Duration) {
        const TICKS: u32 = 20;
        let all: Vec<(String, u64)> = {
            let streams = self.streams();
            self.shared.closing.store(true, Ordering::Release);
            streams
                .iter()
                .flat_map(|(user, entries)| entries.iter().map(|e| (user.clone(), e.id)))
                .collect()
        };
        tracing::info!(streams = all.len(), ?window, "draining streams");
        let per_tick = all.len().div_ceil(TICKS as usize).max(1);
        for (i, batch) in all.chunks(per_tick).enumerate() {
            if i > 0 {
                tokio::time::sleep(window / TICKS).await;
            }
            let mut streams = self.streams();
            for (user_id, id) in batch {
                unregister(&mut streams, user_id, *id);
            }
        }
        self.close_all();
    }

    /// Whether `user_id` has a stream open on this instance.
    pub fn has_streams(&self, user_id: &str) -> bool {
        self.streams().contains_key(user_id)
    }

    /// How many streams are open on this instance.
    pub fn stream_count(&self) -> usize {
        self.streams().values().map(Vec::len).sum()
    }

    fn remove(&self, user_id: &str, id: u64) {
        unregister(&mut self.streams(), user_id, id);
        tracing::debug!(user_id, stream = id, "stream closed");
    }
}

/// Takes stream `id` of `user_id` out of `streams`, and the user with it when it was
/// their last.
fn unregister(streams: &mut HashMap<String, Vec<Entry>>, user_id: &str, id: u64) {
    if let Some(entries) = streams.get_mut(user_id) {
        entries.retain(|entry| entry.id != id);
        if entries.is_empty() {
            streams.remove(user_id);
        }
    }
}

/// The receiving end of one stream's queue. Ends when the hub closes it.
#[derive(Debug)]
pub struct EventStream {
    rx: mpsc::Receiver<Notice>,
    /// Held only for its `Drop`, which unregisters the stream.
    _registration: Registration,
}

impl Stream for EventStream {
    type Item = Notice;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Notice>> {
        self.rx.poll_recv(cx)
    }
}

/// Removes its stream from the hub when the stream is dropped (the client went away).
#[derive(Debug)]
struct Registration {
    hub: Hub,
    user_id: String,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.remove(&self.user_id, self.id);
        self.hub.shared.alive.fetch_sub(1, Ordering::AcqRel);
        let metrics = &self.hub.shared.metrics;
        metrics.streams_closed.inc();
        metrics.streams_open.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use events::BROADCAST_USER_ID;
    use futures_util::StreamExt;
    use serde_json::json;

    fn hub(queue_size: usize) -> Hub {
        Hub::new(Capacity::with_queue(queue_size), Arc::default())
    }

    fn event(user: &str, id: u64) -> Envelope {
        Envelope {
            id: Some(id),
            epoch: Some(1),
            ..Envelope::new(user, "test.happened", json!({"n": id}))
        }
    }

    fn seq(notice: Option<Notice>) -> Option<u64> {
        match notice? {
            Notice::Event(published) => published.position.map(|p| p.seq),
            Notice::CatchUp | Notice::Disconnect(_) => None,
        }
    }

    #[tokio::test]
    async fn every_stream_of_a_user_receives_and_closing_one_keeps_the_others() {
        let hub = hub(8);
        let mut first = hub.open("alice").expect("opens");
        let second = hub.open("alice").expect("opens");
        hub.deliver(&event("alice", 1));
        assert_eq!(seq(first.next().await), Some(1));
        drop(second);
        assert_eq!(hub.stream_count(), 1);
        hub.deliver(&event("alice", 2));
        assert_eq!(seq(first.next().await), Some(2));
    }

    #[tokio::test]
    async fn users_are_isolated_but_broadcasts_reach_everyone() {
        let hub = hub(8);
        let mut alice = hub.open("alice").expect("opens");
        let mut bob = hub.open("bob").expect("opens");
        hub.deliver(&event("bob", 1));
        hub.deliver(&event(BROADCAST_USER_ID, 7));
        assert_eq!(
            seq(alice.next().await),
            Some(7),
            "alice gets only the broadcast"
        );
        assert_eq!(seq(bob.next().await), Some(1));
        assert_eq!(seq(bob.next().await), Some(7));
    }

    #[tokio::test]
    async fn a_stream_that_stops_reading_is_closed_when_its_queue_fills() {
        let hub = hub(2);
        let mut stalled = hub.open("alice").expect("opens");
        let mut reading = hub.open("alice").expect("opens");
        for id in 1..=3 {
            hub.deliver(&event("alice", id));
            reading.next().await;
        }
        assert_eq!(hub.shared.metrics.slow_consumer_disconnects.get(), 1);
        assert_eq!(hub.stream_count(), 1);
        // The closed stream still yields what was queued, then ends.
        assert_eq!(seq(stalled.next().await), Some(1));
        assert_eq!(seq(stalled.next().await), Some(2));
        assert!(stalled.next().await.is_none());
    }

    #[tokio::test]
    async fn close_all_ends_every_stream_and_refuses_new_ones() {
        let hub = hub(8);
        let mut stream = hub.open("alice").expect("opens");
        hub.close_all();
        assert!(stream.next().await.is_none());
        assert_eq!(hub.stream_count(), 0);
        let mut late = hub.open("alice").expect("opens");
        assert!(
            late.next().await.is_none(),
            "no stream opens after close_all"
        );
    }

    #[tokio::test]
    async fn streams_are_bounded_per_user_and_per_instance() {
        let capacity = Capacity {
            queue_size: 8,
            per_user: 2,
            total: 3,
        };
        let hub = Hub::new(capacity, Arc::default());
        let a1 = hub.open("alice").expect("first tab");
        let _a2 = hub.open("alice").expect("second tab");
        assert_eq!(hub.open("alice").err(), Some(Refused::UserLimit(2)));
        let _b1 = hub.open("bob").expect("another user is unaffected");
        assert!(hub.is_full());
        assert_eq!(hub.open("carol").err(), Some(Refused::InstanceFull(3)));
        drop(a1);
        assert!(!hub.is_full());
        hub.open("carol").expect("room again once a stream closes");
    }

    #[tokio::test]
    async fn disconnecting_a_user_tells_each_of_their_streams_and_no_one_else() {
        let hub = hub(8);
        let mut tabs = [
            hub.open("alice").expect("opens"),
            hub.open("alice").expect("opens"),
        ];
        let mut bob = hub.open("bob").expect("opens");
        assert_eq!(hub.disconnect("alice", "signed out"), 2);
        for tab in &mut tabs {
            assert!(
                matches!(tab.next().await, Some(Notice::Disconnect(reason)) if &*reason == "signed out")
            );
            assert!(tab.next().await.is_none(), "nothing after the disconnect");
        }
        hub.deliver(&event("bob", 1));
        assert_eq!(seq(bob.next().await), Some(1));
        assert_eq!(hub.disconnect("nobody", "x"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn drain_spreads_closing_over_the_window() {
        let hub = hub(8);
        let streams: Vec<_> = (0..40)
            .map(|i| hub.open(&format!("user-{i}")).expect("opens"))
            .collect();
        let draining = tokio::spawn({
            let hub = hub.clone();
            async move { hub.drain(Duration::from_secs(2)).await }
        });
        tokio::time::sleep(Duration::from_millis(1050)).await;
        let open = hub.stream_count();
        assert!(
            open > 0 && open < 40,
            "half-way through, some are open: {open}"
        );
        draining.await.expect("drain completes");
        assert_eq!(hub.stream_count(), 0);
        drop(streams);
    }
}
