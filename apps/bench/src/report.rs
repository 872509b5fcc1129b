//! The results of a run: a table for people, JSON for the plot.

use serde::Serialize;

use crate::{cli::Scenario, proc_stats::ProcStats};

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub samples: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerCost {
    pub pids: Vec<u32>,
    pub before: ProcStats,
    pub after_connect: ProcStats,
    pub after: ProcStats,
    /// Resident memory growth per open stream, from before connecting to all connected.
    pub kib_per_stream: f64,
    /// CPU seconds the servers spent during the whole run.
    pub cpu_secs: f64,
    /// CPU seconds from all streams open to the end of the grace period after the last
    /// publish (before the streams close): the deliveries' share.
    pub delivery_cpu_secs: f64,
    /// That, per delivery, in microseconds.
    pub cpu_us_per_delivery: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: Scenario,
    pub workers: usize,
    pub streams_connected: usize,
    pub connect_failed: usize,
    pub first_connect_error: Option<String>,
    pub connect_secs: f64,
    pub connects_per_sec: f64,
    pub published: u64,
    pub publish_failed: u64,
    pub publish_secs: f64,
    pub expected_deliveries: u64,
    pub deliveries: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub deliveries_per_sec: f64,
    pub latency: Latency,
    pub server: ServerCost,
}

impl Report {
    pub fn table(&self) -> String {
        let l = &self.latency;
        let mut rows = vec![
            ("scenario", self.scenario.name.clone()),
            (
                "streams",
                format!(
                    "{} open, {} failed ({} workers)",
                    self.streams_connected, self.connect_failed, self.workers
                ),
            ),
            (
                "connect rate",
                format!(
                    "{:.0} streams/s ({:.2} s)",
                    self.connects_per_sec, self.connect_secs
                ),
            ),
            (
                "published",
                format!(
                    "{} accepted, {} failed, over {:.1} s",
                    self.published, self.publish_failed, self.publish_secs
                ),
            ),
            (
                "deliveries",
                format!(
                    "{} of {} expected, {:.0}/s",
                    self.deliveries, self.expected_deliveries, self.deliveries_per_sec
                ),
            ),
            (
                "lost / duplicated",
                format!("{} / {}", self.lost, self.duplicates),
            ),
            (
                "latency (ms)",
                format!(
                    "p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  (n={})",
                    l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms, l.samples
                ),
            ),
        ];
        if !self.server.pids.is_empty() {
            let s = &self.server;
            rows.push((
                "server memory",
                format!(
                    "{} KiB before, {} KiB connected, {} KiB after: {:.2} KiB/stream",
                    s.before.rss_kib, s.after_connect.rss_kib, s.after.rss_kib, s.kib_per_stream
                ),
            ));
            rows.push((
                "server CPU",
                format!(
                    "{:.2} s; {:.2} s while delivering: {:.1} us per delivery",
                    s.cpu_secs, s.delivery_cpu_secs, s.cpu_us_per_delivery
                ),
            ));
        }
        if let Some(error) = &self.first_connect_error {
            rows.push(("first connect error", error.clone()));
        }
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        rows.iter()
            .map(|(k, v)| format!("{k:>width$}  {v}\n"))
            .collect()
    }
}
