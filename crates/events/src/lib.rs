//! The wire contract of the event delivery system.
//!
//! Every type that crosses a process boundary is defined here and nowhere else: the
//! [`Envelope`] that travels on Redis and inside each Server-Sent Events `data:` line,
//! the names of event types, and the JSON bodies of the HTTP API. The crate does no I/O
//! and builds for native targets and for `wasm32-unknown-unknown`, so the backend and the
//! browser client share one definition.

mod api;
mod control;
mod cursor;
mod envelope;
pub mod event_type;
mod payload;
mod topic;
mod user_id;

pub use api::{
    Account, CreateAccountRequest, DisconnectRequest, ErrorBody, ErrorDetail, Health,
    MAX_ACCOUNT_NAME_CHARS, MAX_REASON_CHARS, Presence, PresenceChange, PresenceReason,
    PresentUser, PublishRequest, ReadinessReport, Resync, ResyncScope, Snapshot,
    SnapshotsGenerated, StreamEnded, StreamOpened, StreamTicket, StreamTicketRequest, TokenRequest,
    TokenResponse, TopicHead, ValidationError,
};
pub use control::{CONTROL_CHANNEL, Control};
pub use cursor::{
    BadCursor, Cursor, MAX_CURSOR_LEN, MAX_CURSOR_TOPICS, Position, TopicPosition, owner_tag,
};
pub use envelope::{BROADCAST_USER_ID, Envelope, SYSTEM_EVENTS_CHANNEL, USER_EVENTS_CHANNEL};
pub use payload::{MAX_PAYLOAD_DEPTH, Payload};
pub use topic::{
    MAX_TOPIC_CHARS, is_topic_pattern, pattern_allows, patterns_allow, topic_tag, validate_topic,
};
pub use user_id::{MAX_USER_ID_CHARS, validate_user_id};
