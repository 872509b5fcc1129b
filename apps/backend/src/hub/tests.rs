//! The hub's behaviour, stream by stream: who receives what, when a stream is closed,
//! and the direct path's writes, byte for byte.

use super::*;
use events::BROADCAST_USER_ID;
use futures_util::{FutureExt, StreamExt};
use serde_json::json;

fn hub(queue_size: usize) -> Hub {
    Hub::new(Capacity::with_queue(queue_size), Arc::default())
}

fn event(user: &str, id: u64) -> Envelope {
    Envelope {
        id: Some(id),
        epoch: Some(1),
        ..Envelope::new(user, "test.happened", json!({"n": id}))
    }
}

fn seq(notice: Option<Notice>) -> Option<u64> {
    match notice? {
        Notice::Event(published) => published.position.map(|p| p.seq),
        Notice::CatchUp | Notice::CatchUpIn(_) | Notice::Disconnect(_) | Notice::Reconnect(_) => {
            None
        }
    }
}

#[tokio::test]
async fn every_stream_of_a_user_receives_and_closing_one_keeps_the_others() {
    let hub = hub(8);
    let mut first = hub.open("alice", &Default::default()).expect("opens");
    let second = hub.open("alice", &Default::default()).expect("opens");
    hub.deliver(&event("alice", 1));
    assert_eq!(seq(first.next().await), Some(1));
    drop(second);
    assert_eq!(hub.stream_count(), 1);
    hub.deliver(&event("alice", 2));
    assert_eq!(seq(first.next().await), Some(2));
}

#[tokio::test]
async fn users_are_isolated_but_broadcasts_reach_everyone() {
    let hub = hub(8);
    let mut alice = hub.open("alice", &Default::default()).expect("opens");
    let mut bob = hub.open("bob", &Default::default()).expect("opens");
    hub.deliver(&event("bob", 1));
    hub.deliver(&event(BROADCAST_USER_ID, 7));
    assert_eq!(
        seq(alice.next().await),
        Some(7),
        "alice gets only the broadcast"
    );
    assert_eq!(seq(bob.next().await), Some(1));
    assert_eq!(seq(bob.next().await), Some(7));
}

#[tokio::test]
async fn a_stream_that_stops_reading_is_closed_when_its_queue_fills() {
    let hub = hub(2);
    let mut stalled = hub.open("alice", &Default::default()).expect("opens");
    let mut reading = hub.open("alice", &Default::default()).expect("opens");
    for id in 1..=3 {
        hub.deliver(&event("alice", id));
        reading.next().await;
    }
    assert_eq!(hub.shared.metrics.slow_consumer_disconnects.get(), 1);
    assert_eq!(hub.stream_count(), 1);
    // The closed stream still yields what was queued, then ends.
    assert_eq!(seq(stalled.next().await), Some(1));
    assert_eq!(seq(stalled.next().await), Some(2));
    assert!(stalled.next().await.is_none());
}

#[tokio::test]
async fn close_all_ends_every_stream_and_refuses_new_ones() {
    let hub = hub(8);
    let mut stream = hub.open("alice", &Default::default()).expect("opens");
    hub.close_all();
    assert!(stream.next().await.is_none());
    assert_eq!(hub.stream_count(), 0);
    let mut late = hub.open("alice", &Default::default()).expect("opens");
    assert!(
        late.next().await.is_none(),
        "no stream opens after close_all"
    );
}

#[tokio::test]
async fn streams_are_bounded_per_user_and_per_instance() {
    let capacity = Capacity {
        queue_size: 8,
        per_user: 2,
        total: 3,
    };
    let hub = Hub::new(capacity, Arc::default());
    let a1 = hub.open("alice", &Default::default()).expect("first tab");
    let _a2 = hub.open("alice", &Default::default()).expect("second tab");
    assert_eq!(
        hub.open("alice", &Default::default()).err(),
        Some(Refused::UserLimit(2))
    );
    let _b1 = hub
        .open("bob", &Default::default())
        .expect("another user is unaffected");
    assert!(hub.is_full());
    assert_eq!(
        hub.open("carol", &Default::default()).err(),
        Some(Refused::InstanceFull(3))
    );
    drop(a1);
    assert!(!hub.is_full());
    hub.open("carol", &Default::default())
        .expect("room again once a stream closes");
}

#[tokio::test]
async fn arrivals_past_the_queue_are_noted_and_then_every_user_is_answered() {
    let hub = hub(8);
    let mut arrivals = hub.watch_arrivals().expect("the first watcher");
    assert!(hub.watch_arrivals().is_none(), "one watcher");
    let _streams: Vec<_> = (0..ARRIVALS_QUEUE + 10)
        .map(|i| {
            hub.open(&format!("user-{i}"), &Default::default())
                .expect("opens")
        })
        .collect();
    let mut queued = 0;
    while arrivals.try_recv().is_ok() {
        queued += 1;
    }
    assert_eq!(queued, ARRIVALS_QUEUE, "bounded");
    let missed = hub.missed_arrivals().expect("the overflow was noted");
    assert_eq!(
        missed.len(),
        ARRIVALS_QUEUE + 10,
        "every user holding a stream"
    );
    assert_eq!(hub.shared.metrics.arrivals_missed.get(), 1);
    assert!(hub.missed_arrivals().is_none(), "answered once");
}

#[tokio::test]
async fn disconnecting_a_user_tells_each_of_their_streams_and_no_one_else() {
    let hub = hub(8);
    let mut tabs = [
        hub.open("alice", &Default::default()).expect("opens"),
        hub.open("alice", &Default::default()).expect("opens"),
    ];
    let mut bob = hub.open("bob", &Default::default()).expect("opens");
    assert_eq!(hub.disconnect("alice", "signed out"), 2);
    for tab in &mut tabs {
        assert!(
            matches!(tab.next().await, Some(Notice::Disconnect(reason)) if &*reason == "signed out")
        );
        assert!(tab.next().await.is_none(), "nothing after the disconnect");
    }
    hub.deliver(&event("bob", 1));
    assert_eq!(seq(bob.next().await), Some(1));
    assert_eq!(hub.disconnect("nobody", "x"), 0);
}

/// A socket the hub writes to, and its client end (std, to read without a runtime).
async fn socket_pair() -> (Arc<tokio::net::TcpStream>, std::net::TcpStream) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let client = std::net::TcpStream::connect(listener.local_addr().expect("has an address"))
        .expect("connects");
    let (server, _) = listener.accept().await.expect("accepts");
    // As after the carrier's first write: the socket is known to be writable.
    server.writable().await.expect("writable");
    (Arc::new(server), client)
}

/// Counts the wake-ups of the task that polls with it.
#[derive(Default)]
struct Wakes(AtomicUsize);

impl futures_util::task::ArcWake for Wakes {
    fn wake_by_ref(this: &Arc<Self>) {
        this.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A direct stream of `user` at rest at `cursor`: its task waits (polled with a
/// waker counted in the returned `Wakes`) and its carrier has written everything.
async fn at_rest(
    hub: &Hub,
    user: &str,
    cursor: Cursor,
    shard: ShardId,
) -> (EventStream, CarrierEnd, Arc<Wakes>, std::net::TcpStream) {
    let (io, client) = socket_pair().await;
    let socket = Socket { io, named: true };
    let mut stream = hub
        .open_direct(user, &Default::default(), Direct { socket, shard })
        .expect("opens");
    stream.set_cursor(cursor.clone());
    let carrier = stream.carrier();
    let wakes = Arc::new(Wakes::default());
    let waker = futures_util::task::waker(wakes.clone());
    assert!(
        Pin::new(&mut stream)
            .poll_next(&mut Context::from_waker(&waker))
            .is_pending()
    );
    assert!(carrier.flushed(false));
    (stream, carrier, wakes, client)
}

/// The frame a stream at `cursor` (before it) writes for `envelope`.
fn frame_bytes(envelope: &Envelope, cursor: &mut Cursor) -> Vec<u8> {
    let published = Published::new(envelope);
    let p = published.position.expect("has a position");
    if let Some(at) = crate::sequence::position_mut(cursor, published.scope) {
        *at = p;
    }
    let mut out = bytes::BytesMut::new();
    assert!(published.frame(Some(cursor.to_string())).encode(&mut out));
    out.to_vec()
}

fn read_exactly(client: &mut std::net::TcpStream, len: usize) -> Vec<u8> {
    use std::io::Read;
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("sets a timeout");
    let mut bytes = vec![0; len];
    client.read_exact(&mut bytes).expect("reads the frames");
    bytes
}

/// What the client has received by now, without waiting (loopback writes arrive
/// before `write` returns).
fn received_now(client: &mut std::net::TcpStream) -> Vec<u8> {
    use std::io::Read;
    client.set_nonblocking(true).expect("non-blocking");
    let mut all = Vec::new();
    let mut buf = [0; 64 * 1024];
    while let Ok(n @ 1..) = client.read(&mut buf) {
        all.extend_from_slice(&buf[..n]);
    }
    client.set_nonblocking(false).expect("blocking");
    all
}

fn owned(user: &str) -> Cursor {
    Cursor {
        owner: events::owner_tag(user),
        ..Cursor::default()
    }
}

#[tokio::test]
async fn a_stream_at_rest_is_written_to_directly_without_waking_its_task() {
    let hub = hub(8);
    let (mut stream, _carrier, wakes, mut client) =
        at_rest(&hub, "alice", owned("alice"), ShardId(0)).await;
    let mut cursor = owned("alice");
    let mut expected = frame_bytes(&event(BROADCAST_USER_ID, 1), &mut cursor);
    expected.extend(frame_bytes(&event("alice", 1), &mut cursor));
    hub.deliver(&event(BROADCAST_USER_ID, 1));
    hub.deliver(&event("alice", 1));
    assert_eq!(read_exactly(&mut client, expected.len()), expected);
    assert_eq!(wakes.0.load(Ordering::SeqCst), 0, "the task slept through");
    assert_eq!(stream.hold(), cursor, "the cursor moved with the writes");
    let metrics = &hub.shared.metrics;
    let delivered = metrics
        .events_delivered
        .get_or_create(&metrics.event_labels("test.happened"))
        .get();
    assert_eq!(delivered, 2, "direct writes are counted as deliveries");
    assert!(stream.next().now_or_never().is_none(), "nothing queued");
}

#[tokio::test]
async fn duplicates_are_skipped_and_gaps_go_to_the_task() {
    let hub = hub(8);
    let mut cursor = owned("alice");
    cursor.broadcast = events::Position::new(1, 1);
    let (mut stream, _carrier, wakes, mut client) =
        at_rest(&hub, "alice", cursor.clone(), ShardId(0)).await;
    hub.deliver(&event(BROADCAST_USER_ID, 1));
    assert_eq!(wakes.0.load(Ordering::SeqCst), 0);
    hub.deliver(&event(BROADCAST_USER_ID, 3));
    assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "the gap woke the task");
    // No longer at rest: the next event queues behind the gap, in order.
    hub.deliver(&event(BROADCAST_USER_ID, 4));
    assert_eq!(seq(stream.next().await), Some(3));
    assert_eq!(seq(stream.next().await), Some(4));
    assert_eq!(stream.hold(), cursor, "only the task moves the cursor now");
    assert!(received_now(&mut client).is_empty(), "nothing was written");
}

#[tokio::test]
async fn a_socket_that_would_block_leaves_the_rest_to_the_carrier_then_the_queue_fills() {
    let hub = hub(4);
    let (mut stream, carrier, wakes, mut client) =
        at_rest(&hub, "alice", owned("alice"), ShardId(0)).await;
    let big = |id: u64| Envelope {
        id: Some(id),
        epoch: Some(1),
        ..Envelope::new("alice", "test.big", json!({"pad": "x".repeat(64 * 1024)}))
    };
    // Written directly until the socket's buffers are full and one write is cut short.
    let mut cursor = owned("alice");
    let mut expected = Vec::new();
    let mut id = 0;
    while wakes.0.load(Ordering::SeqCst) == 0 {
        id += 1;
        assert!(id < 10_000, "the socket never filled");
        expected.extend(frame_bytes(&big(id), &mut cursor));
        hub.deliver(&big(id));
    }
    // From then on, events queue for the task; one more than the queue holds closes
    // the stream.
    for queued in id + 1..=id + 5 {
        hub.deliver(&big(queued));
    }
    assert_eq!(hub.shared.metrics.slow_consumer_disconnects.get(), 1);
    assert_eq!(hub.stream_count(), 0);
    // Nothing was lost on the way: what the client got, then what the carrier must
    // write first, is every frame written directly, whole and in order.
    let unwritten = carrier.take_unwritten();
    assert!(!unwritten.is_empty());
    let mut got = read_exactly(&mut client, expected.len() - unwritten.len());
    got.extend_from_slice(&unwritten);
    assert!(
        got == expected,
        "the stream's bytes are its frames in order"
    );
    for queued in id + 1..=id + 4 {
        assert_eq!(seq(stream.next().await), Some(queued));
    }
    assert!(
        stream.next().await.is_none(),
        "closed after what was queued"
    );
}

// Multi-threaded: the test reads its socket blocking while the dispatcher writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workers_shard_writes_broadcasts_and_keep_alives_to_its_streams() {
    let hub = hub(8);
    let shard = hub.start_shard(Duration::from_millis(200));
    let (_stream, _carrier, wakes, mut client) =
        at_rest(&hub, "alice", owned("alice"), shard).await;
    let mut cursor = owned("alice");
    let expected = frame_bytes(&event(BROADCAST_USER_ID, 1), &mut cursor);
    hub.deliver(&event(BROADCAST_USER_ID, 1));
    assert_eq!(read_exactly(&mut client, expected.len()), expected);
    // Quiet from then on: the shard's timer sends keep-alives.
    assert_eq!(read_exactly(&mut client, KEEP_ALIVE.len()), KEEP_ALIVE);
    assert_eq!(read_exactly(&mut client, KEEP_ALIVE.len()), KEEP_ALIVE);
    assert_eq!(wakes.0.load(Ordering::SeqCst), 0, "the task slept through");
    hub.close_all();
}

#[tokio::test]
async fn once_subscribed_only_streams_not_at_the_head_catch_up() {
    let hub = hub(8);
    let head = events::Position::new(7, 3);
    let mut at_head = hub.open("alice", &Default::default()).expect("opens");
    at_head.set_cursor(Cursor {
        user: head,
        ..owned("alice")
    });
    let mut behind = hub.open("alice", &Default::default()).expect("opens");
    behind.set_cursor(Cursor {
        user: events::Position::new(7, 2),
        ..owned("alice")
    });
    let mut opening = hub.open("alice", &Default::default()).expect("opens");
    hub.catch_up_unless_at(&crate::feed::Feed::User("alice".into()), head);
    assert!(
        at_head.next().now_or_never().is_none(),
        "nothing to catch up"
    );
    for stream in [&mut behind, &mut opening] {
        assert!(matches!(stream.next().await, Some(Notice::CatchUpIn(_))));
    }
}

#[tokio::test]
async fn a_worker_that_falls_behind_drops_broadcasts_then_has_its_streams_catch_up() {
    // Queues of two: the dispatcher's too.
    let hub = hub(2);
    let shard = hub.start_shard(Duration::from_secs(60));
    let (mut stream, _carrier, _wakes, mut client) =
        at_rest(&hub, "alice", owned("alice"), shard).await;
    let mut cursor = owned("alice");
    let mut expected = frame_bytes(&event(BROADCAST_USER_ID, 1), &mut cursor);
    expected.extend(frame_bytes(&event(BROADCAST_USER_ID, 2), &mut cursor));
    // Delivered faster than the dispatcher runs (it cannot: this thread is busy).
    for id in 1..=5 {
        hub.deliver(&event(BROADCAST_USER_ID, id));
    }
    // The two that fit are written; then the stream is told to repair the rest.
    assert!(matches!(stream.next().await, Some(Notice::CatchUp)));
    assert_eq!(read_exactly(&mut client, expected.len()), expected);
    assert!(
        received_now(&mut client).is_empty(),
        "3 to 5 were not written"
    );
    assert_eq!(stream.hold(), cursor);
}

#[test]
fn a_keep_alive_is_russes_comment() {
    use tokio_util::codec::Encoder as _;
    let mut out = bytes::BytesMut::new();
    russe::Encoder::default()
        .encode(russe::Event::Comment("keep-alive".into()), &mut out)
        .expect("encodes");
    assert_eq!(&out[..], KEEP_ALIVE);
}

#[tokio::test(start_paused = true)]
async fn drain_spreads_closing_over_the_window() {
    let hub = hub(8);
    let streams: Vec<_> = (0..40)
        .map(|i| {
            hub.open(&format!("user-{i}"), &Default::default())
                .expect("opens")
        })
        .collect();
    let draining = tokio::spawn({
        let hub = hub.clone();
        async move { hub.drain(Duration::from_secs(2)).await }
    });
    tokio::time::sleep(Duration::from_millis(1050)).await;
    let open = hub.stream_count();
    assert!(
        open > 0 && open < 40,
        "half-way through, some are open: {open}"
    );
    draining.await.expect("drain completes");
    assert_eq!(hub.stream_count(), 0);
    drop(streams);
}

#[test]
fn a_dispatcher_that_ends_while_serving_is_reported_and_one_ended_by_a_stop_is_not() {
    for stopping in [false, true] {
        let hub = hub(8);
        if stopping {
            hub.stopping();
        }
        let worker = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        worker.block_on(async {
            hub.start_shard(Duration::from_secs(60));
            tokio::task::yield_now().await;
        });
        // The worker's runtime stops, and drops its dispatcher with it.
        drop(worker);
        assert_eq!(
            hub.shared.dispatcher_lost.is_cancelled(),
            !stopping,
            "stopping: {stopping}"
        );
    }
}

#[tokio::test]
async fn a_disconnected_users_streams_leave_their_topics_at_once() {
    let hub = hub(8);
    let topics = crate::sequence::stream_topics(&["room:1".to_string()]);
    let mut stream = hub.open("alice", &topics).expect("opens");
    let bobs = hub.open("bob", &topics).expect("opens");
    let room = crate::feed::Feed::Topic("room:1".into());
    assert_eq!(hub.disconnect("alice", "bye"), 1);
    assert!(matches!(stream.next().await, Some(Notice::Disconnect(_))));
    assert!(stream.next().await.is_none(), "then it ends");
    assert!(hub.has_streams(&room), "bob's stream holds it still");
    drop(bobs);
    assert!(
        !hub.has_streams(&room),
        "nothing holds the topic: its channel may go"
    );
}
