//! Reactive hooks over browser APIs.

mod credentials;
mod leadership;
pub mod reconnect;
pub mod sharing;
mod use_events;

pub use credentials::Credentials;
pub use reconnect::{Backoff, ConnectionState};
pub use sharing::{StreamHolder, TopicRefusal};
pub use use_events::{
    ReceivedEvent, UseEventsOptions, UseEventsReturn, use_events, use_events_with_options,
};
