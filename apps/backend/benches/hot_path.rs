//! Micro-benchmarks of what every delivery goes through: parsing an envelope off Redis,
//! encoding it once for the hub, building and encoding each stream's frame, and the
//! hub's fan-out. `cargo bench -p backend` keeps regressions visible; the end-to-end
//! numbers come from the load generator (docs/PERFORMANCE.md).

use std::{hint::black_box, sync::Arc, time::Instant};

use std::{io::Read, pin::Pin, task::Context};

use backend::hub::{Capacity, Direct, Hub, Published, ShardId, Socket};
use bytes::BytesMut;
use criterion::{Criterion, criterion_group, criterion_main};
use events::{BROADCAST_USER_ID, Cursor, Envelope, Position};
use futures_util::{FutureExt, Stream, StreamExt};

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
        topics: Vec::new(),
    };
    c.bench_function("frame build (per stream)", |b| {
        b.iter(|| published.frame(Some(black_box(&cursor).to_string())))
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
        .filter_map(|i| hub.open(&format!("user-{i}"), &Default::default()).ok())
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

/// The direct write path: a broadcast offered to streams at rest, each written with one
/// `send` on a loopback socket (the kernel's share included, as in production). The
/// clients are drained between iterations, outside the measurement.
fn direct_fan_out(c: &mut Criterion) {
    const STREAMS: usize = 1_000;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let hub = Hub::new(Capacity::with_queue(64), Arc::default());
    let (streams, mut clients) = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        let address = listener.local_addr().expect("an address");
        let mut streams = Vec::new();
        let mut clients = Vec::new();
        for i in 0..STREAMS {
            let client = std::net::TcpStream::connect(address).expect("connects");
            client.set_nonblocking(true).expect("non-blocking");
            let (server, _) = listener.accept().await.expect("accepts");
            server.writable().await.expect("writable");
            let socket = Socket {
                io: Arc::new(server),
                named: true,
            };
            let user = format!("user-{i}");
            let mut stream = hub
                .open_direct(
                    &user,
                    &Default::default(),
                    Direct {
                        socket,
                        shard: ShardId::OWN,
                    },
                )
                .expect("opens");
            stream.set_cursor(Cursor {
                owner: events::owner_tag(&user),
                ..Cursor::default()
            });
            // At rest: the task waits and the carrier has written everything.
            let mut context = Context::from_waker(futures_util::task::noop_waker_ref());
            assert!(Pin::new(&mut stream).poll_next(&mut context).is_pending());
            assert!(stream.carrier().flushed(false));
            streams.push(stream);
            clients.push(client);
        }
        (streams, clients)
    });
    let mut seq = 0;
    let mut scratch = vec![0; 64 * 1024];
    c.bench_function(
        "direct write, one broadcast to 1,000 streams at rest",
        |b| {
            b.iter_custom(|iterations| {
                let mut spent = std::time::Duration::ZERO;
                for _ in 0..iterations {
                    seq += 1;
                    let broadcast = Envelope {
                        id: Some(seq),
                        ..envelope(BROADCAST_USER_ID)
                    };
                    let started = Instant::now();
                    hub.deliver(black_box(&broadcast));
                    spent += started.elapsed();
                    for client in &mut clients {
                        while matches!(client.read(&mut scratch), Ok(1..)) {}
                    }
                }
                spent
            })
        },
    );
    drop(streams);
}

criterion_group!(benches, parse_and_encode, fan_out, direct_fan_out);
criterion_main!(benches);
