//! A worker process: holds its share of the streams and measures what arrives.
//!
//! It speaks JSON lines on stdout (`progress`, `connected`, `done`) and finishes when
//! it reads a line on stdin (or stdin closes).

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use backend::auth::Tokens;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, watch};

use crate::cli::{Mode, Scenario, WorkerShare};

/// What a stream saw.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct StreamTally {
    pub user: usize,
    /// Distinct events of the user's own history.
    pub user_events: u64,
    /// Distinct broadcast events.
    pub broadcast_events: u64,
    /// Events whose id was not above the last one seen: duplicates (or disorder).
    pub duplicates: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Message {
    Progress {
        connected: usize,
        failed: usize,
        received: u64,
    },
    Connected {
        connected: usize,
        failed: usize,
        connect_secs: f64,
        first_error: Option<String>,
    },
    Done {
        tallies: Vec<StreamTally>,
        latency_us: Vec<(u64, u64)>,
        received: u64,
    },
}

fn say(message: &Message) {
    println!(
        "{}",
        serde_json::to_string(message).expect("messages serialize")
    );
}

pub fn main(share: WorkerShare) -> anyhow::Result<()> {
    let scenario: Scenario = serde_json::from_str(&share.scenario)?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(share, scenario))
}

/// The user id of stream `i`.
pub fn user_of(i: usize, users: usize) -> usize {
    i % users.max(1)
}

pub fn user_id(user: usize) -> String {
    format!("bench-{user}")
}

/// Local addresses 127.0.0.1 to 127.0.0.250, so that more than the ~28k ephemeral
/// ports of one address pair can connect to one server.
fn local_address(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i % 250) as u8))
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Delivered<'a> {
    id: Option<u64>,
    /// Absent on a topic's events.
    #[serde(borrow, default)]
    user_id: &'a str,
    #[serde(borrow)]
    event_type: &'a str,
    published_at: Option<u64>,
}

struct Shared {
    latency: Mutex<Histogram<u64>>,
    received: AtomicU64,
    started: Instant,
    /// When the last stream opened, in microseconds after `started`.
    last_connected_us: AtomicU64,
    connected: AtomicUsize,
    failed: AtomicUsize,
    first_error: Mutex<Option<String>>,
}

async fn run(share: WorkerShare, scenario: Scenario) -> anyhow::Result<()> {
    let tokens = Tokens::new(&scenario.jwt_secret, Duration::from_secs(24 * 3600));
    let servers: Vec<(SocketAddr, String)> = scenario
        .urls
        .iter()
        .map(|url| {
            let host = url.trim_start_matches("http://").trim_end_matches('/');
            let address = host
                .to_socket_addrs()?
                .next()
                .ok_or_else(|| anyhow::anyhow!("no address for {url}"))?;
            Ok((address, url.clone()))
        })
        .collect::<anyhow::Result<_>>()?;
    let shared = Arc::new(Shared {
        latency: Mutex::new(Histogram::new(3)?),
        received: AtomicU64::new(0),
        started: Instant::now(),
        last_connected_us: AtomicU64::new(0),
        connected: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        first_error: Mutex::new(None),
    });
    let (finish_tx, finish_rx) = watch::channel(false);
    let permits = Arc::new(Semaphore::new(scenario.connect_concurrency.max(1)));
    let mut tasks = Vec::with_capacity(share.count);
    for i in share.first..share.first + share.count {
        let user = user_of(i, scenario.users);
        let (server, _) = servers[i % servers.len()];
        let (grants, path) = match scenario.mode {
            Mode::Topic => {
                let topics: Vec<String> = (0..scenario.topics_per_stream)
                    .map(|j| format!("topic={}", crate::cli::topic_name(scenario.key_of(i + j))))
                    .collect();
                (
                    vec!["bench-t*".to_string()],
                    format!("/api/events?{}", topics.join("&")),
                )
            }
            Mode::User | Mode::Broadcast => (Vec::new(), "/api/events".to_string()),
        };
        let Some((token, _)) = tokens.issue_with(&user_id(user), grants, Vec::new()) else {
            continue;
        };
        let key = scenario.key_of(i);
        let shared = shared.clone();
        let permits = permits.clone();
        let finish = finish_rx.clone();
        tasks.push(tokio::spawn(async move {
            follow(i, key, server, path, token, shared, permits, finish).await
        }));
    }

    // Connecting: report progress until every stream is open or has failed.
    let mut ticker = tokio::time::interval(Duration::from_millis(500));
    loop {
        ticker.tick().await;
        let connected = shared.connected.load(Ordering::Relaxed);
        let failed = shared.failed.load(Ordering::Relaxed);
        if connected + failed >= share.count {
            let first_error = shared
                .first_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            let connect_secs = shared.last_connected_us.load(Ordering::Relaxed) as f64 / 1e6;
            say(&Message::Connected {
                connected,
                failed,
                connect_secs,
                first_error,
            });
            break;
        }
        say(&Message::Progress {
            connected,
            failed,
            received: 0,
        });
    }

    // Measuring: report progress until told to finish.
    let (stdin_tx, mut stdin_rx) = tokio::sync::mpsc::channel::<()>(1);
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        let _ = stdin_tx.blocking_send(());
    });
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stdin_rx.recv() => break,
            _ = ticker.tick() => say(&Message::Progress {
                connected: shared.connected.load(Ordering::Relaxed),
                failed: shared.failed.load(Ordering::Relaxed),
                received: shared.received.load(Ordering::Relaxed),
            }),
        }
    }
    let _ = finish_tx.send(true);
    let mut tallies = Vec::with_capacity(tasks.len());
    for task in tasks {
        if let Ok(Some(tally)) = task.await {
            tallies.push(tally);
        }
    }
    let latency = shared
        .latency
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    say(&Message::Done {
        tallies,
        latency_us: latency
            .iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect(),
        received: shared.received.load(Ordering::Relaxed),
    });
    Ok(())
}

/// One stream: connect, then tally every event until told to finish.
#[allow(clippy::too_many_arguments)]
async fn follow(
    i: usize,
    user: usize,
    server: SocketAddr,
    path: String,
    token: String,
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
    mut finish: watch::Receiver<bool>,
) -> Option<StreamTally> {
    let mut connection = {
        let _permit = permits.acquire().await.ok()?;
        let opened = async {
            let mut connection =
                raw_sse::open_stream(local_address(i), server, &path, &token).await?;
            // The stream is registered once its first frame (stream.opened) arrives.
            connection.next_data().await?;
            Ok::<_, std::io::Error>(connection)
        };
        match tokio::time::timeout(Duration::from_secs(30), opened).await {
            Ok(Ok(connection)) => connection,
            outcome => {
                shared.failed.fetch_add(1, Ordering::Relaxed);
                let error = match outcome {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".to_string(),
                };
                shared
                    .first_error
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get_or_insert(error);
                return None;
            }
        }
    };
    shared.connected.fetch_add(1, Ordering::Relaxed);
    let at = shared.started.elapsed().as_micros() as u64;
    shared.last_connected_us.fetch_max(at, Ordering::Relaxed);

    let mut tally = StreamTally {
        user,
        ..StreamTally::default()
    };
    let (mut last_user, mut last_broadcast) = (0_u64, 0_u64);
    // Made once and polled again each time: a fresh `changed()` per event would join and
    // leave the channel's waiter list every time, the client's own cost in the numbers.
    let mut finished = std::pin::pin!(finish.changed());
    loop {
        let data = tokio::select! {
            _ = &mut finished => break,
            data = connection.next_data() => match data {
                Ok(Some(data)) => data,
                _ => break,
            },
        };
        let Ok(event) = serde_json::from_slice::<Delivered<'_>>(&data) else {
            continue;
        };
        if event.event_type.starts_with("stream.") {
            continue;
        }
        if let Some(published) = event.published_at {
            let latency = now_us().saturating_sub(published * 1000).max(1);
            let _ = shared
                .latency
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .record(latency);
        }
        shared.received.fetch_add(1, Ordering::Relaxed);
        let (last, count) = if event.user_id == events::BROADCAST_USER_ID {
            (&mut last_broadcast, &mut tally.broadcast_events)
        } else {
            (&mut last_user, &mut tally.user_events)
        };
        match event.id {
            Some(id) if id > *last => {
                *last = id;
                *count += 1;
            }
            Some(_) => tally.duplicates += 1,
            None => *count += 1,
        }
    }
    Some(tally)
}
