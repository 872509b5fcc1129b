//! The open event streams of this instance, keyed by user.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::BytesMut;
use bytestring::ByteString;
use events::{Envelope, Position};
use futures_util::Stream;
use tokio::sync::mpsc;
use tokio_util::codec::Encoder as _;

use prometheus_client::metrics::counter::Counter;

use crate::metrics::Metrics;

/// What the hub queues on a stream.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// A published event, encoded once and shared by every stream it goes to.
    Event(Arc<Published>),
    /// Events may have been missed (the Redis subscription reconnected or fell behind):
    /// the stream should catch up from history.
    CatchUp,
}

/// An event as the hub fans it out: its position and its `event:` and `data:` fields,
/// already encoded. The `id:` is per stream (it carries the stream's whole cursor).
#[derive(Debug)]
pub struct Published {
    pub broadcast: bool,
    /// Absent for messages that bypassed the backend (a plain `PUBLISH`).
    pub position: Option<Position>,
    pub event_type: ByteString,
    pub data: ByteString,
    /// When it was accepted (ms since the epoch), for the delivery latency.
    pub published_at: Option<u64>,
    /// The `events_delivered` counter of its type, resolved once per event by the hub
    /// rather than once per stream it reaches.
    pub delivered: Option<Counter>,
}

impl Published {
    pub fn new(envelope: &Envelope) -> Self {
        let json = serde_json::to_string(envelope).expect("an Envelope always serializes");
        Self {
            broadcast: envelope.is_broadcast(),
            position: envelope.position(),
            event_type: envelope.event_type.as_str().into(),
            data: json.into(),
            published_at: envelope.published_at,
            delivered: None,
        }
    }

    /// The SSE frame, with `id` if given.
    pub fn frame(&self, id: Option<String>) -> Frame {
        Frame {
            event: self.event_type.clone(),
            id: id.map(ByteString::from),
            data: self.data.clone(),
        }
    }
}

/// One SSE message as a stream sends it, before it is encoded for whichever HTTP layer
/// carries the stream (see `routes::stream` and `direct`). Cloning shares the `event:` and
/// `data:` fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub event: ByteString,
    pub id: Option<ByteString>,
    pub data: ByteString,
}

impl Frame {
    /// Appends the frame in `text/event-stream` form, as actix-web-lab's `Sse` writes it
    /// (both use russe's encoder).
    pub fn encode(self, out: &mut BytesMut) {
        let message = russe::Message {
            data: self.data,
            event: Some(self.event),
            id: self.id,
            retry: None,
        };
        // Event types are validated and ids are cursors: no field holds a line break.
        russe::Encoder::default()
            .encode(russe::Event::Message(message), out)
            .expect("stream frames never hold line breaks");
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
    /// Set at shutdown: streams opened from then on end at once.
    closing: AtomicBool,
    metrics: Arc<Metrics>,
}

#[derive(Debug)]
struct Entry {
    id: u64,
    tx: mpsc::Sender<Delivery>,
}

impl Hub {
    pub fn new(queue_size: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            shared: Arc::new(Shared {
                streams: Mutex::new(HashMap::new()),
                next_stream_id: AtomicU64::new(1),
                queue_size: queue_size.max(1),
                closing: AtomicBool::new(false),
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
    pub fn open(&self, user_id: &str) -> EventStream {
        let id = self.shared.next_stream_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.shared.queue_size);
        {
            let mut streams = self.streams();
            // Checked under the lock that close_all takes, so no stream slips in after it.
            if !self.shared.closing.load(Ordering::Acquire) {
                streams
                    .entry(user_id.to_string())
                    .or_default()
                    .push(Entry { id, tx });
            }
        }
        self.shared.metrics.streams_opened.inc();
        self.shared.metrics.streams_open.inc();
        tracing::debug!(user_id, stream = id, "stream opened");
        EventStream {
            rx,
            _registration: Registration {
                hub: self.clone(),
                user_id: user_id.to_string(),
                id,
            },
        }
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
            let delivery = self.delivery(envelope);
            streams.retain(|user_id, entries| self.offer(user_id, entries, &delivery));
        } else if let Some(entries) = streams.get_mut(&envelope.user_id) {
            let delivery = self.delivery(envelope);
            if !self.offer(&envelope.user_id, entries, &delivery) {
                streams.remove(&envelope.user_id);
            }
        }
    }

    /// The shared delivery of an event: encoded once, with its delivery counter.
    fn delivery(&self, envelope: &Envelope) -> Delivery {
        let metrics = &self.shared.metrics;
        let counter = metrics
            .events_delivered
            .get_or_create(&metrics.event_labels(&envelope.event_type))
            .clone();
        Delivery::Event(Arc::new(Published {
            delivered: Some(counter),
            ..Published::new(envelope)
        }))
    }

    /// Tells every stream to catch up from history.
    pub fn catch_up_all(&self) {
        let mut streams = self.streams();
        let count: usize = streams.values().map(Vec::len).sum();
        streams.retain(|user_id, entries| self.offer(user_id, entries, &Delivery::CatchUp));
        tracing::info!(streams = count, "streams told to catch up from history");
    }

    /// Queues `delivery` on each of `entries`, dropping those that are full or gone.
    /// Returns whether any remain.
    fn offer(&self, user_id: &str, entries: &mut Vec<Entry>, delivery: &Delivery) -> bool {
        entries.retain(|entry| match entry.tx.try_send(delivery.clone()) {
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
                if let Some(entries) = streams.get_mut(user_id) {
                    entries.retain(|entry| entry.id != *id);
                    if entries.is_empty() {
                        streams.remove(user_id);
                    }
                }
            }
        }
        self.close_all();
    }

    /// How many streams are open on this instance.
    pub fn stream_count(&self) -> usize {
        self.streams().values().map(Vec::len).sum()
    }

    /// How many streams were closed because their client stopped reading.
    pub fn slow_closed_count(&self) -> u64 {
        self.shared.metrics.slow_consumer_disconnects.get()
    }

    fn remove(&self, user_id: &str, id: u64) {
        let mut streams = self.streams();
        if let Some(entries) = streams.get_mut(user_id) {
            entries.retain(|entry| entry.id != id);
            if entries.is_empty() {
                streams.remove(user_id);
            }
        }
        tracing::debug!(user_id, stream = id, "stream closed");
    }
}

/// The receiving end of one stream's queue. Ends when the hub closes it.
#[derive(Debug)]
pub struct EventStream {
    rx: mpsc::Receiver<Delivery>,
    /// Held only for its `Drop`, which unregisters the stream.
    _registration: Registration,
}

impl Stream for EventStream {
    type Item = Delivery;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
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

    fn event(user: &str, id: u64) -> Envelope {
        Envelope {
            id: Some(id),
            epoch: Some(1),
            ..Envelope::new(user, "test.happened", json!({"n": id}))
        }
    }

    fn seq(delivery: Option<Delivery>) -> Option<u64> {
        match delivery? {
            Delivery::Event(published) => published.position.map(|p| p.seq),
            Delivery::CatchUp => None,
        }
    }

    #[tokio::test]
    async fn every_stream_of_a_user_receives_and_closing_one_keeps_the_others() {
        let hub = Hub::new(8, Arc::default());
        let mut first = hub.open("alice");
        let second = hub.open("alice");
        hub.deliver(&event("alice", 1));
        assert_eq!(seq(first.next().await), Some(1));
        drop(second);
        assert_eq!(hub.stream_count(), 1);
        hub.deliver(&event("alice", 2));
        assert_eq!(seq(first.next().await), Some(2));
    }

    #[tokio::test]
    async fn users_are_isolated_but_broadcasts_reach_everyone() {
        let hub = Hub::new(8, Arc::default());
        let mut alice = hub.open("alice");
        let mut bob = hub.open("bob");
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
        let hub = Hub::new(2, Arc::default());
        let mut stalled = hub.open("alice");
        let mut reading = hub.open("alice");
        for id in 1..=3 {
            hub.deliver(&event("alice", id));
            reading.next().await;
        }
        assert_eq!(hub.slow_closed_count(), 1);
        assert_eq!(hub.stream_count(), 1);
        // The closed stream still yields what was queued, then ends.
        assert_eq!(seq(stalled.next().await), Some(1));
        assert_eq!(seq(stalled.next().await), Some(2));
        assert!(stalled.next().await.is_none());
    }

    #[tokio::test]
    async fn close_all_ends_every_stream_and_refuses_new_ones() {
        let hub = Hub::new(8, Arc::default());
        let mut stream = hub.open("alice");
        hub.close_all();
        assert!(stream.next().await.is_none());
        assert_eq!(hub.stream_count(), 0);
        let mut late = hub.open("alice");
        assert!(
            late.next().await.is_none(),
            "no stream opens after close_all"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn drain_spreads_closing_over_the_window() {
        let hub = Hub::new(8, Arc::default());
        let streams: Vec<_> = (0..40).map(|i| hub.open(&format!("user-{i}"))).collect();
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
