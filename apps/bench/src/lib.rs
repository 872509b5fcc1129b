//! The load generator: opens SSE streams against backend instances, publishes events
//! through `POST /api/publish`, and measures what arrives, how fast, and what it costs
//! the servers.
//!
//! `bench run` is the coordinator: it spawns `bench worker` processes (each holds at
//! most [`cli::STREAMS_PER_WORKER`] streams: this machine caps a process at 20,000 open
//! files), publishes at the requested rate, then merges the workers' results.
//! `bench floor` is a reference server that does only what any SSE server must, to
//! measure the machine's own cost under the backend's.

pub mod cli;
pub mod floor;
pub mod proc_stats;
pub mod report;
pub mod run;
pub mod worker;
