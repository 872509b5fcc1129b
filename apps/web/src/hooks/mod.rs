//! Reactive hooks over browser APIs.

mod credentials;
mod leadership;
mod online;
pub mod reconnect;
pub mod sharing;
mod use_events;
mod use_presence;

pub use credentials::Credentials;
pub use online::Online;
pub use reconnect::{Backoff, ConnectionState};
pub use sharing::{StreamHolder, TopicRefusal};
pub use use_events::{
    ReceivedEvent, UseEventsOptions, UseEventsReturn, use_events, use_events_with_options,
};
pub use use_presence::{UsePresenceReturn, use_presence};
