//! The open event streams of this instance, keyed by user.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use actix_web_lab::sse;
use events::Envelope;
use futures_util::Stream;
use tokio::sync::mpsc;

/// One encoded SSE frame, built once per event and cloned (cheaply: its strings are
/// reference-counted) into every stream of the user.
pub type Frame = sse::Event;

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
    /// Streams closed because their queue was full: the client was not reading.
    slow_closed: AtomicU64,
}

#[derive(Debug)]
struct Entry {
    id: u64,
    tx: mpsc::Sender<Frame>,
}

impl Hub {
    pub fn new(queue_size: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                streams: Mutex::new(HashMap::new()),
                next_stream_id: AtomicU64::new(1),
                queue_size: queue_size.max(1),
                closing: AtomicBool::new(false),
                slow_closed: AtomicU64::new(0),
            }),
        }
    }

    fn streams(&self) -> MutexGuard<'_, HashMap<String, Vec<Entry>>> {
        // A panic while holding the lock cannot leave the map half-updated (every
        // critical section is a single insert or removal), so a poisoned lock is usable.
        self.shared
            .streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a new stream for `user_id`. It receives every event delivered to that
    /// user from now on, and unregisters itself when dropped.
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
        tracing::debug!(user_id, stream = id, "stream opened");
        EventStream {
            rx,
            registration: Registration {
                hub: self.clone(),
                user_id: user_id.to_string(),
                id,
            },
        }
    }

    /// Queues `envelope` on every open stream of its user. Never waits: a stream whose
    /// queue is full is closed instead, so one stalled client cannot hold up the others
    /// or make this instance's memory grow.
    pub fn deliver(&self, envelope: &Envelope) {
        let mut streams = self.streams();
        let Some(entries) = streams.get_mut(&envelope.user_id) else {
            return;
        };
        let frame = encode(envelope);
        entries.retain(|entry| match entry.tx.try_send(frame.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.shared.slow_closed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    user_id = %envelope.user_id,
                    stream = entry.id,
                    "stream closed: its queue is full (the client stopped reading)"
                );
                false
            }
            // The stream is being dropped; its registration removes it.
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
        if entries.is_empty() {
            streams.remove(&envelope.user_id);
        }
    }

    /// Ends every stream, e.g. at shutdown: clients see the response end and reconnect.
    pub fn close_all(&self) {
        let mut streams = self.streams();
        self.shared.closing.store(true, Ordering::Release);
        let closed = std::mem::take(&mut *streams);
        drop(streams);
        tracing::info!(users = closed.len(), "closed all streams");
    }

    /// How many streams are open on this instance.
    pub fn stream_count(&self) -> usize {
        self.streams().values().map(Vec::len).sum()
    }

    /// How many streams were closed because their client stopped reading.
    pub fn slow_closed_count(&self) -> u64 {
        self.shared.slow_closed.load(Ordering::Relaxed)
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

/// The SSE frame for an event: `id:` when the event has a position in its user's
/// sequence, `event:` its type, `data:` the envelope as JSON.
pub fn encode(envelope: &Envelope) -> Frame {
    let json = serde_json::to_string(envelope).expect("an Envelope always serializes");
    let data = sse::Data::new(json).event(envelope.event_type.clone());
    match envelope.id {
        Some(id) => data.id(id.to_string()).into(),
        None => data.into(),
    }
}

/// The receiving end of one stream. Ends when the hub closes it.
#[derive(Debug)]
pub struct EventStream {
    rx: mpsc::Receiver<Frame>,
    registration: Registration,
}

impl EventStream {
    pub fn user_id(&self) -> &str {
        &self.registration.user_id
    }
}

impl Stream for EventStream {
    type Item = Frame;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Frame>> {
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use serde_json::json;

    fn event(user: &str, id: u64) -> Envelope {
        Envelope {
            id: Some(id),
            ..Envelope::new(user, "test.happened", json!({"n": id}))
        }
    }

    #[tokio::test]
    async fn every_stream_of_a_user_receives_and_closing_one_keeps_the_others() {
        let hub = Hub::new(8);
        let mut first = hub.open("alice");
        let second = hub.open("alice");
        hub.deliver(&event("alice", 1));
        assert!(first.next().await.is_some());
        drop(second);
        assert_eq!(hub.stream_count(), 1);
        hub.deliver(&event("alice", 2));
        assert!(first.next().await.is_some());
    }

    #[tokio::test]
    async fn users_are_isolated() {
        let hub = Hub::new(8);
        let mut alice = hub.open("alice");
        let _bob = hub.open("bob");
        hub.deliver(&event("bob", 1));
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), alice.next())
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_stream_that_stops_reading_is_closed_when_its_queue_fills() {
        let hub = Hub::new(2);
        let mut stalled = hub.open("alice");
        let mut reading = hub.open("alice");
        for id in 1..=3 {
            hub.deliver(&event("alice", id));
            reading.next().await;
        }
        assert_eq!(hub.slow_closed_count(), 1);
        assert_eq!(hub.stream_count(), 1);
        // The closed stream still yields what was queued, then ends.
        assert!(stalled.next().await.is_some());
        assert!(stalled.next().await.is_some());
        assert!(stalled.next().await.is_none());
    }

    #[tokio::test]
    async fn close_all_ends_every_stream() {
        let hub = Hub::new(8);
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
}
