//! Carries events from the instance that accepts them to every instance holding a stream
//! of their user. Two implementations behind one interface: Redis Pub/Sub when Redis is
//! configured, an in-process channel on a single node. Nothing above the bus knows which
//! one runs.

mod local;
mod redis;

use std::time::{SystemTime, UNIX_EPOCH};

use events::Envelope;

pub use self::{
    local::LocalBus,
    redis::{RedisBus, start_relay},
};

#[derive(Debug)]
pub enum Bus {
    Local(LocalBus),
    Redis(RedisBus),
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
}

impl Bus {
    /// Publishes `envelope` to its user's streams on every instance. Stamps the event
    /// with this instance's id, the time, and its position in the user's sequence, and
    /// returns it as delivered.
    pub async fn publish(
        &self,
        mut envelope: Envelope,
        server_id: &str,
    ) -> Result<Envelope, BusError> {
        envelope.id = None;
        envelope.server_id = Some(server_id.to_string());
        envelope.published_at = Some(now_millis());
        match self {
            Self::Local(bus) => Ok(bus.publish(envelope)),
            Self::Redis(bus) => bus.publish(envelope).await,
        }
    }

    /// A short name for logs: "redis" or "in-process".
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Local(_) => "in-process",
            Self::Redis(_) => "redis",
        }
    }
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
