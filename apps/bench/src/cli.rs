//! Command-line interface.

use clap::{Args, Parser, Subcommand, ValueEnum, builder::TypedValueParser};
use serde::{Deserialize, Serialize};

/// Streams one worker process holds by default (the per-process open-file cap is 20,000).
pub const STREAMS_PER_WORKER: usize = 10_000;

#[derive(Debug, Parser)]
#[command(
    name = "bench",
    about = "Load generator for the event delivery backend (loopback only)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a scenario and print its results.
    Run(Scenario),
    /// (Internal) hold a share of the streams; spawned by `run`.
    Worker(WorkerShare),
    /// Serve a minimal reference SSE server, to measure the machine's own floor.
    Floor(crate::floor::FloorArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Each event goes to one random user.
    User,
    /// Each event goes to every stream.
    Broadcast,
    /// Each event goes to one random topic; stream i subscribes to topic i mod `--topics`.
    Topic,
}

#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct Scenario {
    /// A short name for the table and the JSON.
    #[arg(long, default_value = "scenario")]
    pub name: String,
    /// Backend base URLs (loopback only); streams and publishes are spread over them.
    #[arg(long = "url", required = true)]
    pub urls: Vec<String>,
    /// Streams to open.
    #[arg(long, default_value_t = 1000)]
    pub streams: usize,
    /// Distinct users the streams belong to (stream i is user i mod users).
    #[arg(long, default_value_t = 1000)]
    pub users: usize,
    /// Events published per second (0: only open streams and hold them).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Seconds to publish (or to hold idle streams).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    #[arg(long, value_enum, default_value_t = Mode::User)]
    pub mode: Mode,
    /// Distinct topics, in `--mode topic` (stream i subscribes to topic i mod topics);
    /// 0: as many as users.
    #[arg(long, default_value_t = 0)]
    pub topics: usize,
    /// Topics each stream subscribes to, in `--mode topic`: stream i takes topics i,
    /// i + 1, … (mod `--topics`). Events are tallied against the first only, so use more
    /// than one with `--rate 0` (to measure what a stream of several topics costs).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=128).map(|v| v as usize))]
    pub topics_per_stream: usize,
    /// The backends' JWT_SECRET, to mint user tokens without a round trip each.
    #[arg(long, env = "JWT_SECRET")]
    pub jwt_secret: String,
    /// The backends' PUBLISH_KEY.
    #[arg(long, env = "PUBLISH_KEY")]
    pub publish_key: String,
    /// Server process ids whose memory and CPU time are measured.
    #[arg(long = "pid")]
    pub pids: Vec<u32>,
    /// Streams being opened at once, per worker.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Where to write the results as JSON.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Streams per worker process (at most 19,000: the open-file cap is 20,000). More,
    /// smaller workers spread the client's own work over the cores.
    #[arg(long, default_value_t = STREAMS_PER_WORKER, value_parser = clap::value_parser!(u64).range(1..=19_000).map(|v| v as usize))]
    pub streams_per_worker: usize,
    /// Publish each broadcast as the very envelope streams receive (its `id`, `userId`
    /// and `publishedAt` set here, from this clock), to a server that relays a body as it
    /// is: nchan (`just bench-nchan`). Any 2xx answer counts as accepted.
    #[arg(long)]
    pub relayed_envelopes: bool,
    /// Seconds to wait for late deliveries after the last publish.
    #[arg(long, default_value_t = 3.0)]
    pub grace: f64,
}

impl Scenario {
    /// How many keys events are published to at random: users, or topics in topic mode.
    pub fn keys(&self) -> usize {
        match self.mode {
            Mode::Topic if self.topics > 0 => self.topics,
            _ => self.users.max(1),
        }
    }

    /// The key (user, or topic) stream `i` receives events of.
    pub fn key_of(&self, i: usize) -> usize {
        i % self.keys()
    }
}

/// The name of topic `k` in topic mode.
pub fn topic_name(k: usize) -> String {
    format!("bench-t{k}")
}

/// A worker's share: streams `first..first + count` of the scenario.
#[derive(Debug, Clone, Args)]
pub struct WorkerShare {
    #[arg(long)]
    pub first: usize,
    #[arg(long)]
    pub count: usize,
    /// The scenario, as JSON.
    #[arg(long)]
    pub scenario: String,
}
