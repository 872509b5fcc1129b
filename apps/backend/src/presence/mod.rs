//! Who is in a topic: every user holding at least one stream of it on any instance.
//!
//! The hub tells the [`Tracker`] as streams open and close; the tracker's [`book`] works
//! out what the engine must hear (a user's first stream of a topic here, their last one
//! once the grace window is over), and the [`worker`] tells it, in batches per partition.
//! The engine (`bus::presence`) counts each user once whatever instances hold them, and
//! announces arrivals and departures to the topic (`stream.joined`, `stream.left`) for
//! the topics of `PRESENCE_EVENTS`. Instances beat in Redis; any instance sweeps one that
//! stopped beating (its users leave with reason `timeout`), and one whose presence Redis
//! lost (a restart, a failover) enters its users again.

mod book;
mod worker;

use std::{
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use events::{PresentUser, TopicHead, patterns_allow};
use tokio::sync::Notify;

use crate::{bus::Bus, metrics::Metrics, sequence::StreamTopics};
use book::Book;

/// The presence settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Topics whose presence is kept (patterns).
    pub topics: Vec<String>,
    /// Topics whose arrivals and departures are announced (patterns).
    pub events: Vec<String>,
    pub grace: Duration,
    /// Within this, the users of a dead instance leave, and presence Redis lost is back.
    pub ttl: Duration,
    pub list_max: usize,
}

impl Settings {
    pub fn from_settings(settings: &crate::config::Settings) -> Self {
        let patterns = |list: &[String]| -> Vec<String> {
            list.iter()
                .map(|pattern| pattern.trim().to_string())
                .filter(|pattern| !pattern.is_empty())
                .collect()
        };
        Self {
            topics: patterns(&settings.presence_topics),
            events: patterns(&settings.presence_events),
            grace: Duration::from_millis(settings.presence_grace_ms),
            ttl: Duration::from_secs(settings.presence_ttl_secs),
            list_max: usize::try_from(settings.presence_list_max).unwrap_or(usize::MAX),
        }
    }
}

/// What the hub tells as streams open and close. A user's streams are counted per topic
/// here, so the engine hears only of their first and last (after the grace window).
#[derive(Debug)]
pub struct Tracker {
    book: Mutex<Book>,
    /// Wakes the worker when the book has something to tell.
    wake: Notify,
    /// The topics whose presence is kept (patterns).
    topics: Vec<String>,
}

impl Tracker {
    fn book(&self) -> MutexGuard<'_, Book> {
        // Every critical section leaves the book whole before anything can panic.
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn tracks(&self, topic: &str) -> bool {
        patterns_allow(&self.topics, topic)
    }

    /// A stream of `user_id` opened with `topics`. Returns whether any is tracked (then
    /// [`Tracker::closed`] must follow when it closes).
    pub fn opened(&self, user_id: &str, topics: &StreamTopics) -> bool {
        let mut tracked = false;
        let mut wake = false;
        let mut book = self.book();
        for (_, topic) in topics.iter().filter(|(_, topic)| self.tracks(topic)) {
            tracked = true;
            wake |= book.opened(topic, user_id);
        }
        drop(book);
        if wake {
            self.wake.notify_one();
        }
        tracked
    }

    /// A stream [`Tracker::opened`] with `topics` closed.
    pub fn closed(&self, user_id: &str, topics: &StreamTopics) {
        let now = Instant::now();
        let mut book = self.book();
        for (_, topic) in topics.iter().filter(|(_, topic)| self.tracks(topic)) {
            book.closed(topic, user_id, now);
        }
        drop(book);
        // The worker's timer may be set for a later window, or none.
        self.wake.notify_one();
    }
}

/// Why a presence question got no answer.
#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    /// The topic is not one of `PRESENCE_TOPICS`.
    #[error("presence is not kept for topic {0:?}")]
    NotKept(String),
    #[error(transparent)]
    Bus(#[from] crate::bus::BusError),
}

/// Presence: this instance's part (the tracker, told by the hub) and the answers.
#[derive(Debug)]
pub struct Presence {
    tracker: Arc<Tracker>,
    bus: Arc<Bus>,
    settings: Settings,
    /// This process among the instances: the server id and a nonce, so that a restarted
    /// instance of the same server id is never taken for the one that died.
    instance: String,
    metrics: Arc<Metrics>,
}

impl Presence {
    pub fn new(bus: Arc<Bus>, server_id: &str, settings: Settings, metrics: Arc<Metrics>) -> Self {
        Self {
            tracker: Arc::new(Tracker {
                book: Mutex::new(Book::new(settings.grace)),
                wake: Notify::new(),
                topics: settings.topics.clone(),
            }),
            bus,
            instance: format!("{server_id}~{}", uuid::Uuid::new_v4().simple()),
            settings,
            metrics,
        }
    }

    /// What the hub tells of its streams.
    pub fn tracker(&self) -> Arc<Tracker> {
        self.tracker.clone()
    }

    /// Who is in `topic` on any instance: how many, exactly, and the first
    /// `PRESENCE_LIST_MAX` to arrive.
    pub async fn of(&self, topic: &str) -> Result<events::Presence, PresenceError> {
        if !self.tracker.tracks(topic) {
            return Err(PresenceError::NotKept(topic.to_string()));
        }
        let list = self.bus.presence_of(topic, self.settings.list_max).await?;
        Ok(events::Presence {
            topic: topic.to_string(),
            count: list.count,
            truncated: (list.users.len() as u64) < list.count,
            head: TopicHead {
                epoch: list.head.epoch,
                id: list.head.seq,
            },
            users: list
                .users
                .into_iter()
                .map(|(user_id, since)| PresentUser { user_id, since })
                .collect(),
        })
    }
}
