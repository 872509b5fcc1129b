//! The browser client: one page that shows a user's events arriving live.
//!
//! `main.rs` only mounts [`App`]. The reusable piece is [`hooks::use_events`].

pub mod api;
mod components;
pub mod format;
pub mod hooks;
mod session;

pub use components::App;
