//! The backend: per-user Server-Sent Events, fanned out across instances through Redis.
//!
//! [`Application`] assembles an instance; `main` only reads settings, binds, and runs it.

pub mod admission;
mod app;
pub mod auth;
pub mod bus;
mod carrier;
mod clock;
pub mod config;
mod connection;
mod delivery;
mod direct;
mod error;
pub mod feed;
mod files;
mod frame;
pub mod hub;
pub mod metrics;
pub mod presence;
mod query;
pub mod readiness;
mod rebalance;
pub mod redis;
mod routes;
mod sequence;
pub mod snapshots;
mod state;
pub mod store;
mod tasks;
pub mod telemetry;
mod throttle;
mod tickets;
mod topics;

pub use app::{Application, Stop, listen};
pub use config::Settings;
pub use error::ApiError;
