//! The backend: per-user Server-Sent Events, fanned out across instances through Redis.
//!
//! [`Application`] assembles an instance; `main` only reads settings, binds, and runs it.

mod app;
pub mod auth;
pub mod bus;
mod clock;
pub mod config;
mod delivery;
mod direct;
mod error;
mod frame;
pub mod hub;
pub mod metrics;
mod query;
pub mod readiness;
mod redis;
mod routes;
pub mod snapshots;
mod state;
pub mod store;
pub mod telemetry;
mod tickets;

pub use app::{Application, Stop, listen};
pub use config::Settings;
pub use error::ApiError;
