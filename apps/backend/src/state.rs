//! What every request handler can reach.

use std::{sync::Arc, time::Duration};

use crate::{
    admission::Rules, auth::Tokens, bus::Bus, config::Secret, config::Settings, delivery::Streams,
    hub::Hub, metrics::Metrics, presence::Presence, readiness::Readiness,
    snapshots::SnapshotRequests, store::Store, throttle::Throttle, tickets::Tickets,
    topics::TopicAccess,
};

/// What one caller may use, from the settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_streams_per_user: u64,
    pub max_event_bytes: u64,
    pub max_accounts_per_user: u64,
    pub max_replay: u64,
    pub max_topics_per_stream: u64,
}

impl Limits {
    /// The rules events and control messages are admitted by.
    pub fn rules(&self) -> Rules {
        Rules {
            max_event_bytes: self.max_event_bytes,
        }
    }

    pub fn from_settings(settings: &Settings) -> Self {
        Self {
            max_streams_per_user: settings.max_streams_per_user,
            max_event_bytes: settings.max_event_bytes,
            max_accounts_per_user: settings.max_accounts_per_user,
            max_replay: settings.max_replay,
            max_topics_per_stream: settings.max_topics_per_stream,
        }
    }
}

#[derive(Debug)]
pub struct AppState {
    /// This instance's name, stamped on every event it publishes.
    pub server_id: String,
    pub tokens: Tokens,
    /// Whether `POST /api/auth/token` mints tokens.
    pub dev_tokens: bool,
    pub publish_key: Option<Secret>,
    pub hub: Hub,
    pub bus: Arc<Bus>,
    /// What opening a stream needs (the hub, the bus and the limits again).
    pub streams: Streams,
    /// Who may subscribe to which topics.
    pub topics: TopicAccess,
    /// Who is in which topic.
    pub presence: Arc<Presence>,
    /// How often a user may publish with their own token.
    pub user_publishes: Throttle,
    pub store: Arc<Store>,
    pub snapshots: SnapshotRequests,
    /// Stream tickets waiting to be redeemed.
    pub tickets: Tickets,
    pub limits: Limits,
    pub readiness: Arc<Readiness>,
    pub metrics: Arc<Metrics>,
    pub keep_alive: Duration,
    pub sse_retry: Duration,
}
