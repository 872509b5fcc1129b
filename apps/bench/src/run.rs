//! `bench run`: the coordinator.

use std::{
    process::Stdio,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    process::{Child, Command},
    sync::{Semaphore, mpsc},
};

use crate::{
    cli::{Mode, Scenario},
    proc_stats,
    report::{Latency, Report, ServerCost},
    worker::{Message, StreamTally, user_id},
};

pub fn main(scenario: Scenario) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(scenario))
}

/// Only loopback servers: this is a load generator, and the machine's network rules say so.
fn check_loopback(url: &str) -> anyhow::Result<()> {
    let host = url
        .strip_prefix("http://")
        .with_context(|| format!("{url}: only http:// URLs"))?
        .split(['/', ':'])
        .next()
        .unwrap_or_default();
    let loopback = host == "localhost"
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        bail!("{url}: the load generator only targets loopback (127.0.0.0/8)");
    }
    Ok(())
}

struct Worker {
    child: Child,
    connected: Option<Connected>,
    done: Option<Done>,
    received: u64,
}

/// A worker's report once its streams are open.
struct Connected {
    streams: usize,
    failed: usize,
    secs: f64,
    first_error: Option<String>,
}

/// A worker's final report.
struct Done {
    tallies: Vec<StreamTally>,
    latency_us: Vec<(u64, u64)>,
}

pub async fn run(scenario: Scenario) -> anyhow::Result<()> {
    for url in &scenario.urls {
        check_loopback(url)?;
    }
    let before = proc_stats::total(&scenario.pids);
    let workers_count = scenario
        .streams
        .div_ceil(scenario.streams_per_worker)
        .max(1);
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, Message)>();
    let scenario_json = serde_json::to_string(&scenario)?;
    let mut workers = Vec::new();
    let per_worker = scenario.streams.div_ceil(workers_count);
    for w in 0..workers_count {
        let first = w * per_worker;
        let count = per_worker.min(scenario.streams - first);
        let mut child = Command::new(std::env::current_exe()?)
            .args([
                "worker",
                "--first",
                &first.to_string(),
                "--count",
                &count.to_string(),
            ])
            .args(["--scenario", &scenario_json])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("spawning a worker")?;
        let stdout = child.stdout.take().context("worker stdout")?;
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(message) = serde_json::from_str::<Message>(&line) {
                    let _ = tx.send((w, message));
                }
            }
        });
        workers.push(Worker {
            child,
            connected: None,
            done: None,
            received: 0,
        });
    }
    drop(tx);

    // 1. Connect. Progress is one line redrawn on a terminal (indicatif draws nothing
    // when stderr is not one); a log gets the plain line after each phase.
    let progress = progress_line(
        &scenario.name,
        scenario.streams as u64,
        "{prefix} {bar:30} {pos}/{len} streams opened",
    );
    let mut opened = vec![0_usize; workers.len()];
    let started = Instant::now();
    let deadline = started + Duration::from_secs(180);
    while workers.iter().any(|w| w.connected.is_none()) {
        let (w, message) = tokio::time::timeout_at(deadline.into(), rx.recv())
            .await
            .context("workers took too long to connect")?
            .context("a worker died while connecting")?;
        match message {
            Message::Progress {
                connected, failed, ..
            } => {
                opened[w] = connected + failed;
                progress.set_position(opened.iter().sum::<usize>() as u64);
            }
            Message::Connected {
                connected,
                failed,
                connect_secs,
                first_error,
            } => {
                workers[w].connected = Some(Connected {
                    streams: connected,
                    failed,
                    secs: connect_secs,
                    first_error,
                });
            }
            Message::Done { .. } => bail!("worker {w} finished early"),
        }
    }
    let reports: Vec<&Connected> = workers
        .iter()
        .filter_map(|w| w.connected.as_ref())
        .collect();
    let connected: usize = reports.iter().map(|c| c.streams).sum();
    let failed: usize = reports.iter().map(|c| c.failed).sum();
    let connect_secs = reports.iter().map(|c| c.secs).fold(0.0_f64, f64::max);
    let first_error = reports.iter().find_map(|c| c.first_error.clone());
    progress.finish_and_clear();
    eprintln!(
        "[{}] {connected} streams open ({failed} failed) in {connect_secs:.2} s",
        scenario.name
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_connect = proc_stats::total(&scenario.pids);

    // 2. Publish (or hold).
    let accepted: Arc<Vec<AtomicU64>> =
        Arc::new((0..scenario.keys()).map(|_| AtomicU64::new(0)).collect());
    let broadcasts = Arc::new(AtomicU64::new(0));
    let publish_failed = Arc::new(AtomicU64::new(0));
    let publish_started = Instant::now();
    let publishing = publish(
        &scenario,
        accepted.clone(),
        broadcasts.clone(),
        publish_failed.clone(),
    );
    let progress = progress_line(
        &scenario.name,
        scenario.duration.ceil() as u64,
        "{prefix} {bar:30} {pos}/{len} s, {msg} events received",
    );
    let follow = async {
        loop {
            if let Some((w, Message::Progress { received, .. })) = rx.recv().await {
                workers_received(&mut workers, w, received);
                let total: u64 = workers.iter().map(|w| w.received).sum();
                progress.set_position(publish_started.elapsed().as_secs());
                progress.set_message(total.to_string());
            }
        }
    };
    tokio::select! {
        result = publishing => result?,
        () = follow => {}
    }
    progress.finish_and_clear();
    let publish_secs = publish_started.elapsed().as_secs_f64();
    eprintln!(
        "[{}] published for {publish_secs:.1} s; collecting",
        scenario.name
    );
    tokio::time::sleep(Duration::from_secs_f64(scenario.grace)).await;
    // Before the streams close: closing them costs the servers CPU too, unequally (a
    // server that notices a client leaving at once pays for it now).
    let after_delivery = proc_stats::total(&scenario.pids);

    // 3. Collect.
    for worker in &mut workers {
        if let Some(stdin) = worker.child.stdin.as_mut() {
            let _ = stdin.write_all(b"finish\n").await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while workers.iter().any(|w| w.done.is_none()) {
        let (w, message) = tokio::time::timeout_at(deadline.into(), rx.recv())
            .await
            .context("workers took too long to report")?
            .context("a worker died before reporting")?;
        if let Message::Done {
            tallies,
            latency_us,
            received,
        } = message
        {
            workers[w].done = Some(Done {
                tallies,
                latency_us,
            });
            workers[w].received = received;
        }
    }
    let after = proc_stats::total(&scenario.pids);
    for worker in &mut workers {
        let _ = worker.child.wait().await;
    }

    // 4. Merge.
    let mut latency = Histogram::<u64>::new(3)?;
    let (mut deliveries, mut duplicates, mut expected) = (0_u64, 0_u64, 0_u64);
    let broadcasts = broadcasts.load(Ordering::Relaxed);
    for done in workers.iter().filter_map(|w| w.done.as_ref()) {
        for &(value, count) in &done.latency_us {
            latency.record_n(value, count)?;
        }
        for tally in &done.tallies {
            let user_expected = accepted[tally.user].load(Ordering::Relaxed);
            expected += user_expected + broadcasts;
            deliveries +=
                tally.user_events.min(user_expected) + tally.broadcast_events.min(broadcasts);
            duplicates += tally.duplicates;
        }
    }
    let published = accepted
        .iter()
        .map(|a| a.load(Ordering::Relaxed))
        .sum::<u64>()
        + broadcasts;
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    // The report is written to disk: no secrets in it.
    let mut scenario = scenario;
    scenario.jwt_secret = "[redacted]".into();
    scenario.publish_key = "[redacted]".into();
    let report = Report {
        workers: workers.len(),
        streams_connected: connected,
        connect_failed: failed,
        first_connect_error: first_error,
        connect_secs,
        connects_per_sec: connected as f64 / connect_secs.max(1e-9),
        published,
        publish_failed: publish_failed.load(Ordering::Relaxed),
        publish_secs,
        expected_deliveries: expected,
        deliveries,
        lost: expected - deliveries,
        duplicates,
        deliveries_per_sec: deliveries as f64 / publish_secs.max(1e-9),
        latency: Latency {
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: latency.max() as f64 / 1000.0,
            samples: latency.len(),
        },
        server: ServerCost {
            pids: scenario.pids.clone(),
            before,
            after_connect,
            after,
            kib_per_stream: (after_connect.rss_kib as f64 - before.rss_kib as f64)
                / connected.max(1) as f64,
            cpu_secs: after.cpu_secs - before.cpu_secs,
            delivery_cpu_secs: after_delivery.cpu_secs - after_connect.cpu_secs,
            cpu_us_per_delivery: (after_delivery.cpu_secs - after_connect.cpu_secs) * 1e6
                / deliveries.max(1) as f64,
        },
        scenario,
    };
    print!("{}", report.table());
    if let Some(path) = &report.scenario.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn workers_received(workers: &mut [Worker], w: usize, received: u64) {
    if let Some(worker) = workers.get_mut(w) {
        worker.received = received;
    }
}

/// Publishes at `scenario.rate` for `scenario.duration` seconds (or just waits, at rate 0),
/// counting what was accepted per user.
async fn publish(
    scenario: &Scenario,
    accepted: Arc<Vec<AtomicU64>>,
    broadcasts: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let duration = Duration::from_secs_f64(scenario.duration);
    if scenario.rate <= 0.0 {
        tokio::time::sleep(duration).await;
        return Ok(());
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let in_flight = Arc::new(Semaphore::new(256));
    let rng = Mutex::new(0x2545_F491_4F6C_DD1D_u64);
    let started = Instant::now();
    // Every publish carries an Idempotency-Key, as a publisher should (a 503 may have
    // published): this run's start time makes the keys of two runs differ.
    let run = now_ms();
    let mut sent: u64 = 0;
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while started.elapsed() < duration {
        ticker.tick().await;
        let due = (started.elapsed().as_secs_f64() * scenario.rate) as u64;
        while sent < due {
            let permit = in_flight.clone().acquire_owned().await?;
            let url = format!(
                "{}/api/publish",
                scenario.urls[sent as usize % scenario.urls.len()]
            );
            let (body, user) = match scenario.mode {
                Mode::Broadcast if scenario.relayed_envelopes => (
                    json!({
                        "id": sent + 1,
                        "userId": events::BROADCAST_USER_ID,
                        "eventType": "bench.tick",
                        "data": {"n": sent},
                        "publishedAt": now_ms(),
                    }),
                    None,
                ),
                Mode::Broadcast => (
                    json!({"broadcast": true, "eventType": "bench.tick", "data": {"n": sent}}),
                    None,
                ),
                Mode::User | Mode::Topic => {
                    let key = {
                        let mut state = rng.lock().unwrap_or_else(PoisonError::into_inner);
                        *state ^= *state << 13;
                        *state ^= *state >> 7;
                        *state ^= *state << 17;
                        (*state % scenario.keys() as u64) as usize
                    };
                    let body = if scenario.mode == Mode::Topic {
                        json!({"topic": crate::cli::topic_name(key), "eventType": "bench.tick", "data": {"n": sent}})
                    } else {
                        json!({"userId": user_id(key), "eventType": "bench.tick", "data": {"n": sent}})
                    };
                    (body, Some(key))
                }
            };
            let request = client
                .post(url)
                .bearer_auth(&scenario.publish_key)
                .header("idempotency-key", format!("bench-{run}-{sent}"))
                .json(&body);
            let (accepted, broadcasts, failed) =
                (accepted.clone(), broadcasts.clone(), failed.clone());
            let relayed = scenario.relayed_envelopes;
            tokio::spawn(async move {
                let ok = matches!(request.send().await, Ok(r) if r.status() == 202 || (relayed && r.status().is_success()));
                match (ok, user) {
                    (true, Some(user)) => accepted[user].fetch_add(1, Ordering::Relaxed),
                    (true, None) => broadcasts.fetch_add(1, Ordering::Relaxed),
                    (false, _) => failed.fetch_add(1, Ordering::Relaxed),
                };
                drop(permit);
            });
            sent += 1;
        }
    }
    // Wait for the requests still in flight.
    let _ = in_flight.acquire_many(256).await?;
    Ok(())
}

/// A progress line for one phase, drawn on stderr when it is a terminal.
fn progress_line(name: &str, len: u64, template: &str) -> ProgressBar {
    let style =
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar());
    let bar = ProgressBar::new(len).with_style(style);
    bar.set_prefix(format!("[{name}]"));
    bar
}

/// Milliseconds since the Unix epoch, as `publishedAt` counts them.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::check_loopback;

    #[test]
    fn only_loopback_targets_are_accepted() {
        assert!(check_loopback("http://127.0.0.1:3000").is_ok());
        assert!(check_loopback("http://127.0.0.7:3000/").is_ok());
        assert!(check_loopback("http://localhost:3000").is_ok());
        assert!(check_loopback("http://10.0.0.1:3000").is_err());
        assert!(check_loopback("http://example.com").is_err());
        assert!(check_loopback("https://127.0.0.1").is_err());
    }
}
