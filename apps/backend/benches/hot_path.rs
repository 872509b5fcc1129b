//! Micro-benchmarks of what every delivery goes through: parsing an envelope off Redis,
//! encoding it once for the hub, building and encoding each stream's frame, and the
//! hub's fan-out. `cargo bench -p backend` keeps regressions visible; the end-to-end
//! numbers come from the load generator (docs/PERFORMANCE.md).

use std::{hint::black_box, sync::Arc, time::Instant};

use backend::hub::{Hub, Published};
use bytes::BytesMut;
use criterion::{Criterion, criterion_group, criterion_main};
use events::{BROADCAST_USER_ID, Cursor, Envelope, Position};
use futures_util::{FutureExt, StreamExt};

fn envelope(user: &str) -> Envelope {
    Envelope {
        id: Some(42),
        epoch: Some(1_764_000_000_123),
        server_id: Some("backend-1".into()),
        published_at: Some(1_764_000_000_456),
        ..Envelope::new(
            user,
            "snapshots.generated",
            serde_json::json!({"snapshotCount": 3, "timestamp": "2025-08-26T10:00:00.000Z", "serverId": "backend-1"}),
        )
    }
}

fn parse_and_encode(c: &mut Criterion) {
    let wire = serde_json::to_vec(&envelope("alice")).expect("serializes");
    c.bench_function("envelope parse (relay, per event)", |b| {
        b.iter(|| serde_json::from_slice::<Envelope>(black_box(&wire)).expect("parses"))
    });
    let event = envelope("alice");
    c.bench_function("envelope encode once (hub, per event)", |b| {
        b.iter(|| Published::new(black_box(&event)))
    });
    let published = Published::new(&event);
    let cursor = Cursor {
        user: Position::new(1_764_000_000_123, 42),
        broadcast: Position::new(1_763_990_000_000, 7),
        owner: events::owner_tag("alice"),
    };
    c.bench_function("frame build (per stream)", |b| {
        b.iter(|| published.frame(Some(black_box(cursor).to_string())))
    });
    c.bench_function("frame SSE encoding, 100 frames (per stream)", |b| {
        b.iter(|| {
            let mut out = BytesMut::new();
            for _ in 0..100 {
                published.frame(Some(cursor.to_string())).encode(&mut out);
            }
            out
        })
    });
}

fn fan_out(c: &mut Criterion) {
    const STREAMS: usize = 10_000;
    let hub = Hub::new(backend::hub::Capacity::with_queue(64), Arc::default());
    let mut streams: Vec<_> = (0..STREAMS)
        .filter_map(|i| hub.open(&format!("user-{i}")).ok())
        .collect();
    let broadcast = envelope(BROADCAST_USER_ID);
    c.bench_function("hub deliver, one broadcast to 10,000 streams", |b| {
        b.iter_custom(|iterations| {
            let mut spent = std::time::Duration::ZERO;
            for _ in 0..iterations {
                let started = Instant::now();
                hub.deliver(black_box(&broadcast));
                spent += started.elapsed();
                for stream in &mut streams {
                    let _ = stream.next().now_or_never();
                }
            }
            spent
        })
    });
}

criterion_group!(benches, parse_and_encode, fan_out);
criterion_main!(benches);
