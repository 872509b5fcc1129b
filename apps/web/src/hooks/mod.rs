//! Reactive hooks over browser APIs.

mod credentials;
pub mod reconnect;
mod use_events;

pub use credentials::Credentials;
pub use reconnect::{Backoff, ConnectionState};
pub use use_events::{
    ReceivedEvent, UseEventsOptions, UseEventsReturn, use_events, use_events_with_options,
};
