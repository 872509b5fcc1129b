//! What every request handler can reach.

use std::{sync::Arc, time::Duration};

use crate::{
    auth::Tokens, bus::Bus, config::Secret, hub::Hub, metrics::Metrics, readiness::Readiness,
    snapshots::SnapshotRequests, store::Store,
};

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
    pub store: Arc<Store>,
    pub snapshots: SnapshotRequests,
    pub readiness: Arc<Readiness>,
    pub metrics: Arc<Metrics>,
    pub keep_alive: Duration,
    pub sse_retry: Duration,
}
