//! Topics: who may subscribe and publish, what a stream of topics receives, and how its
//! one cursor resumes every topic exactly, across instances and after a crash.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use crate::helpers::{
    Api, BackendProcess, FrameJson, PATIENCE, PUBLISH_KEY, RedisCluster, RedisServer, SseStream,
    eventually, settings, settings_for, spawn_app, spawn_app_with,
};

/// The code of an error response.
async fn error_code(response: reqwest::Response) -> (u16, String, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("an error body");
    (
        status,
        body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

/// The next event frame of `stream`, as `(topic, id in its feed, data)`.
async fn next_of(stream: &mut SseStream) -> (Option<String>, u64, Value) {
    let frame = stream.next_event().await;
    let json = frame.json();
    (
        json["topic"].as_str().map(str::to_string),
        json["id"].as_u64().unwrap_or(0),
        json["data"].clone(),
    )
}

#[tokio::test]
async fn subscribing_follows_the_tokens_topics_claim() {
    let app = spawn_app(None).await;
    let alice = app
        .token_with("alice", &["chat:room-7", "orders:*"], &[])
        .await;
    // Exact names and prefixes are allowed, together.
    let (_stream, opened) = app
        .open_topics(&alice, &["chat:room-7", "orders:42"], None)
        .await;
    assert_eq!(
        opened.json()["data"]["topics"],
        json!(["chat:room-7", "orders:42"])
    );
    // A look-alike, a longer name, and the prefix itself are not.
    for refused in ["orderz:1", "chat:room-70", "orders", "chat:room-"] {
        let response = app
            .stream_request(&alice, &format!("topic=chat:room-7&topic={refused}"), None)
            .await;
        let (status, code, message) = error_code(response).await;
        assert_eq!(
            (status, code.as_str()),
            (403, "topic_forbidden"),
            "{refused}"
        );
        assert!(
            message.contains(refused),
            "the refusal names the topic: {message}"
        );
    }
    // No claim: no topic.
    let bob = app.token("bob").await;
    let (status, code, _) =
        error_code(app.stream_request(&bob, "topic=chat:room-7", None).await).await;
    assert_eq!((status, code.as_str()), (403, "topic_forbidden"));
    // `*` alone: every topic.
    let carol = app.token_with("carol", &["*"], &[]).await;
    let _carol = app.open_topics(&carol, &["anything:at-all"], None).await;
    // Nothing was opened for a refusal: alice's stream and carol's.
    assert_eq!(app.hub.stream_count(), 2);
}

#[tokio::test]
async fn every_bad_topic_input_is_a_4xx() {
    let app = spawn_app(None).await;
    let alice = app.token_with("alice", &["*"], &["*"]).await;
    for (query, code) in [
        ("topic=a%20b", "invalid_topic"),
        ("topic=", "invalid_topic"),
        ("topic=a%2Ab", "invalid_topic"),
        ("topic=%7Bp1%7D", "invalid_topic"),
        ("topic=%FF", "invalid_topic"),
    ] {
        let (status, got, _) = error_code(app.stream_request(&alice, query, None).await).await;
        assert_eq!((status, got.as_str()), (400, code), "{query}");
    }
    let long = "t".repeat(129);
    let (status, code, _) = error_code(
        app.stream_request(&alice, &format!("topic={long}"), None)
            .await,
    )
    .await;
    assert_eq!((status, code.as_str()), (400, "invalid_topic"));
    let many: Vec<String> = (0..33).map(|n| format!("topic=t{n}")).collect();
    let (status, code, _) =
        error_code(app.stream_request(&alice, &many.join("&"), None).await).await;
    assert_eq!((status, code.as_str()), (400, "too_many_topics"));
    // The same topic twice counts once.
    let twice: Vec<String> = (0..40).map(|_| "topic=t".to_string()).collect();
    let response = app.stream_request(&alice, &twice.join("&"), None).await;
    assert_eq!(response.status(), 200);
    drop(response);

    for body in [
        json!({"topic": "a b", "eventType": "a.b"}),
        json!({"topic": "", "eventType": "a.b"}),
        json!({"topic": "t", "userId": "alice", "eventType": "a.b"}),
        json!({"topic": "t", "broadcast": true, "eventType": "a.b"}),
        json!({"topic": 7, "eventType": "a.b"}),
        json!({"topic": "t", "eventType": "a.b", "publisherId": "mallory"}),
    ] {
        let response = app
            .post_json("/api/publish", Some(PUBLISH_KEY), &body)
            .await;
        assert_eq!(response.status(), 400, "{body}");
    }
    for body in [
        json!({"topics": ["a b"]}),
        json!({"topics": "t"}),
        json!({"topics": ["t"], "extra": 1}),
        json!(["t"]),
    ] {
        let response = app
            .post_json("/api/stream-tickets", Some(&alice), &body)
            .await;
        assert_eq!(response.status(), 400, "{body}");
    }
}

#[tokio::test]
async fn a_ticket_carries_its_topics_and_a_refusal_is_readable_before_any_stream() {
    let app = spawn_app(None).await;
    let alice = app.token_with("alice", &["room:*"], &[]).await;
    let refused = app
        .post_json(
            "/api/stream-tickets",
            Some(&alice),
            &json!({"topics": ["room:a", "team:x"]}),
        )
        .await;
    assert_eq!(refused.status(), 403);
    let body: Value = refused.json().await.expect("an error body");
    assert_eq!(body["error"]["code"], "topic_forbidden");
    assert_eq!(
        body["error"]["topic"], "team:x",
        "the refused topic, for a page to show"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("team:x"))
    );

    let issued = app
        .post_json(
            "/api/stream-tickets",
            Some(&alice),
            &json!({"topics": ["room:lobby"]}),
        )
        .await;
    assert_eq!(issued.status(), 201);
    let cookie = issued.headers()["set-cookie"]
        .to_str()
        .expect("text")
        .split(';')
        .next()
        .expect("pair")
        .to_string();
    let ticket: Value = issued.json().await.expect("JSON");
    let response = reqwest::Client::new()
        .get(app.url(&format!(
            "/api/events?ticket={}",
            ticket["ticket"].as_str().expect("ticket")
        )))
        .header("cookie", cookie)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    let mut stream = SseStream::new(response);
    let opened = stream.next_event().await;
    assert_eq!(opened.json()["data"]["topics"], json!(["room:lobby"]));
    app.publish_topic("room:lobby", "chat.message", json!({"text": "hi"}))
        .await;
    let (topic, id, data) = next_of(&mut stream).await;
    assert_eq!(
        (topic.as_deref(), id, data),
        (Some("room:lobby"), 1, json!({"text": "hi"}))
    );
}

#[tokio::test]
async fn users_publish_to_the_topics_their_token_allows_and_cannot_forge_who_they_are() {
    let redis = RedisServer::start().await;
    let app = spawn_app(Some(&redis)).await;
    let alice = app.token_with("alice", &["chat:*"], &["chat:*"]).await;
    let bob = app.token_with("bob", &["chat:*"], &[]).await;
    let (mut bobs, _) = app.open_topics(&bob, &["chat:room-7"], None).await;

    let said = app
        .post_json(
            "/api/publish",
            Some(&alice),
            &json!({"topic": "chat:room-7", "eventType": "chat.message", "data": {"text": "hello"}}),
        )
        .await;
    assert_eq!(said.status(), 202);
    let accepted: Value = said.json().await.expect("JSON");
    assert_eq!(accepted["publisherId"], "alice");
    let frame = bobs.next_event().await.json();
    assert_eq!(
        frame["publisherId"], "alice",
        "the server names the publisher"
    );
    assert_eq!(frame["topic"], "chat:room-7");
    assert_eq!(frame["data"], json!({"text": "hello"}));

    // Not the user's topic, not a topic at all, no claim, a forged publisherId.
    let cases = [
        (
            &alice,
            json!({"topic": "team:x", "eventType": "chat.message"}),
            403,
            "topic_forbidden",
        ),
        (
            &alice,
            json!({"userId": "bob", "eventType": "chat.message"}),
            403,
            "forbidden",
        ),
        (
            &alice,
            json!({"broadcast": true, "eventType": "chat.message"}),
            403,
            "forbidden",
        ),
        (
            &bob,
            json!({"topic": "chat:room-7", "eventType": "chat.message"}),
            403,
            "topic_forbidden",
        ),
        (
            &alice,
            json!({"topic": "chat:room-7", "eventType": "chat.message", "publisherId": "bob"}),
            400,
            "invalid_body",
        ),
    ];
    for (token, body, status, code) in cases {
        let response = app.post_json("/api/publish", Some(token), &body).await;
        assert_eq!(error_code(response).await.0, status, "{body}");
        let again = app.post_json("/api/publish", Some(token), &body).await;
        assert_eq!(error_code(again).await.1, code, "{body}");
    }
    bobs.expect_no_event(Duration::from_millis(300)).await;

    // What another service writes straight to Redis with a publisherId is its word; a
    // client's never reaches it. A publish key's event names no publisher.
    let service = app
        .publish_topic("chat:room-7", "chat.message", json!({}))
        .await;
    assert!(service.get("publisherId").is_none(), "{service}");
    assert!(bobs.next_event().await.json().get("publisherId").is_none());
}

/// A host application's topic authorization endpoint on loopback: answers
/// `{"topics": allowed ∩ asked}` after `delay`, counting questions.
struct Host {
    url: String,
    asked: Arc<AtomicUsize>,
    questions: Arc<Mutex<Vec<Value>>>,
}

async fn host(allowed: &'static [&'static str], delay: Duration) -> Host {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!(
        "http://{}/topic-auth",
        listener.local_addr().expect("address")
    );
    let asked = Arc::new(AtomicUsize::new(0));
    let questions = Arc::new(Mutex::new(Vec::new()));
    let (count, log) = (asked.clone(), questions.clone());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let (count, log) = (count.clone(), log.clone());
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                let body = loop {
                    let Ok(n) = socket.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&request).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let length = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if body.len() >= length {
                            break body.to_string();
                        }
                    }
                };
                count.fetch_add(1, Ordering::SeqCst);
                let question: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                log.lock().expect("log").push(question.clone());
                tokio::time::sleep(delay).await;
                let asked: Vec<&str> = question["topics"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                let yes: Vec<&str> = asked.into_iter().filter(|t| allowed.contains(t)).collect();
                let answer = json!({ "topics": yes }).to_string();
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                    answer.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    Host {
        url,
        asked,
        questions,
    }
}

#[tokio::test]
async fn the_host_application_decides_what_the_claim_leaves_out_and_its_answers_are_kept() {
    let hook = host(&["doc:42"], Duration::ZERO).await;
    let mut settings = settings(None);
    settings.topic_auth_url = Some(hook.url.parse().expect("a URL"));
    let app = spawn_app_with(settings).await;
    let alice = app.token_with("alice", &["chat:*"], &[]).await;

    // The claim allows chat:1 without a question; the host allows doc:42.
    app.open_topics(&alice, &["chat:1", "doc:42"], None).await;
    assert_eq!(hook.asked.load(Ordering::SeqCst), 1);
    assert_eq!(
        hook.questions.lock().expect("log")[0],
        json!({"userId": "alice", "topics": ["doc:42"]}),
        "only what the claim leaves out is asked about"
    );
    // Kept: asked once per user and topic.
    app.open_topics(&alice, &["doc:42"], None).await;
    assert_eq!(hook.asked.load(Ordering::SeqCst), 1, "the answer was kept");
    // The host refuses doc:43 (and that refusal is kept too).
    for _ in 0..2 {
        let (status, code, _) =
            error_code(app.stream_request(&alice, "topic=doc:43", None).await).await;
        assert_eq!((status, code.as_str()), (403, "topic_forbidden"));
    }
    assert_eq!(hook.asked.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_host_application_that_is_down_or_slow_means_503_never_allowed() {
    // Down: nothing listens on the port.
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let down = format!(
        "http://{}/topic-auth",
        closed.local_addr().expect("address")
    );
    drop(closed);
    let slow = host(&["doc:42"], Duration::from_secs(3)).await;
    for url in [down, slow.url.clone()] {
        let mut settings = settings(None);
        settings.topic_auth_url = Some(url.parse().expect("a URL"));
        settings.topic_auth_timeout_ms = 300;
        let app = spawn_app_with(settings).await;
        let alice = app.token_with("alice", &[], &[]).await;
        let response = app.stream_request(&alice, "topic=doc:42", None).await;
        assert_eq!(
            response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().ok()),
            Some(Some("1"))
        );
        let (status, code, message) = error_code(response).await;
        assert_eq!(
            (status, code.as_str()),
            (503, "topic_auth_unavailable"),
            "{url}"
        );
        assert!(!message.contains("127.0.0.1"), "no internals: {message}");
        let refused = app
            .post_json(
                "/api/stream-tickets",
                Some(&alice),
                &json!({"topics": ["doc:42"]}),
            )
            .await;
        assert_eq!(refused.status(), 503);
    }
}

/// Publishes `n` events to each of `topics` through `api`, in turns.
async fn publish_rounds(api: &Api, topics: &[&str], rounds: std::ops::Range<u64>) {
    for n in rounds {
        for topic in topics {
            api.publish_topic(topic, "room.said", json!({"n": n})).await;
        }
    }
}

/// Reads frames off `stream` until each of `topics` has reached `last` or the wait is
/// over; returns the ids received per topic, in order, and the last frame's id.
async fn read_topics(
    stream: &mut SseStream,
    topics: &[&str],
    last: u64,
) -> (Vec<Vec<u64>>, Option<String>) {
    let mut ids = vec![Vec::new(); topics.len()];
    let mut cursor = None;
    while ids
        .iter()
        .any(|ids| ids.last().copied().unwrap_or(0) < last)
    {
        let Some(Some(frame)) = stream.next_frame_within(PATIENCE).await else {
            break;
        };
        if frame.data.is_none() {
            continue;
        }
        cursor = frame.id.clone().or(cursor);
        let json = frame.json();
        if let Some(i) = topics.iter().position(|t| json["topic"] == *t) {
            ids[i].push(json["id"].as_u64().expect("an id"));
        }
    }
    (ids, cursor)
}

#[tokio::test]
async fn one_cursor_resumes_every_topic_exactly_after_an_instance_is_killed() {
    let redis = RedisServer::start().await;
    let a = BackendProcess::start(Some(&redis), &[]).await;
    let b = BackendProcess::start(Some(&redis), &[]).await;
    let (on_a, on_b) = (Api::new(a.address.clone()), Api::new(b.address.clone()));
    let topics = ["room:1", "room:2", "room:3"];
    let alice = on_a.token_with("alice", &["room:*"], &[]).await;
    let (mut stream, _) = on_a.open_topics(&alice, &topics, None).await;
    publish_rounds(&on_b, &topics, 1..6).await;
    let (seen, cursor) = read_topics(&mut stream, &topics, 5).await;
    assert_eq!(seen, vec![vec![1, 2, 3, 4, 5]; 3]);
    let cursor = cursor.expect("frames carry the cursor");

    drop(stream);
    drop(a); // SIGKILL
    publish_rounds(&on_b, &topics, 6..11).await;
    let (mut resumed, _) = on_b.open_topics(&alice, &topics, Some(&cursor)).await;
    let (after, _) = read_topics(&mut resumed, &topics, 10).await;
    assert_eq!(
        after,
        vec![vec![6, 7, 8, 9, 10]; 3],
        "every missed event once, in order"
    );
    publish_rounds(&on_b, &topics, 11..12).await;
    let (live, _) = read_topics(&mut resumed, &topics, 11).await;
    assert_eq!(
        live,
        vec![vec![11]; 3],
        "then live, nothing twice at the seam"
    );
}

#[tokio::test]
async fn reopening_with_other_topics_keeps_the_shared_ones_starts_new_ones_live_and_drops_the_rest()
{
    let redis = RedisServer::start().await;
    let app = spawn_app(Some(&redis)).await;
    let alice = app.token_with("alice", &["*"], &[]).await;
    publish_rounds(&app, &["c"], 1..4).await; // c has history before alice subscribes.
    let (mut stream, _) = app.open_topics(&alice, &["a", "b"], None).await;
    publish_rounds(&app, &["a", "b"], 1..3).await;
    let (seen, cursor) = read_topics(&mut stream, &["a", "b"], 2).await;
    assert_eq!(seen, vec![vec![1, 2], vec![1, 2]]);
    drop(stream);

    publish_rounds(&app, &["a", "b"], 3..5).await;
    let (mut reopened, opened) = app
        .open_topics(&alice, &["b", "c"], cursor.as_deref())
        .await;
    assert!(
        opened
            .id
            .as_deref()
            .is_some_and(|id| id.split('.').count() == 5),
        "two topics in the cursor: {:?}",
        opened.id
    );
    publish_rounds(&app, &["c"], 4..5).await;
    let mut got = Vec::new();
    while got.len() < 3 {
        let (topic, id, _) = next_of(&mut reopened).await;
        got.push((topic.expect("a topic's event"), id));
    }
    assert_eq!(
        got,
        [
            ("b".to_string(), 3),
            ("b".to_string(), 4),
            ("c".to_string(), 4)
        ],
        "b's missed events, c live from its head, nothing of a"
    );
    reopened.expect_no_event(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_stream_of_topics_still_gets_its_users_events_and_broadcasts_under_one_cursor() {
    let app = spawn_app(None).await;
    let alice = app.token_with("alice", &["*"], &[]).await;
    let (mut stream, _) = app.open_topics(&alice, &["t"], None).await;
    app.publish("alice", "a.b", json!(1)).await;
    app.publish_topic("t", "a.b", json!(2)).await;
    app.publish_broadcast("a.b", json!(3)).await;
    let mut cursors = Vec::new();
    for expected in 1..=3 {
        let frame = stream.next_event().await;
        assert_eq!(frame.json()["data"], json!(expected));
        cursors.push(frame.id.expect("an id"));
    }
    // Resuming from the first frame replays the other two exactly.
    let (mut resumed, _) = app.open_topics(&alice, &["t"], Some(&cursors[0])).await;
    assert_eq!(
        resumed.next_event().await.json()["data"],
        json!(3),
        "the broadcast"
    );
    assert_eq!(
        resumed.next_event().await.json()["data"],
        json!(2),
        "the topic's"
    );
    resumed.expect_no_event(Duration::from_millis(300)).await;
}

async fn topic_messages(api: &Api) -> f64 {
    api.metric_value(r#"relay_messages_received_total{kind="topic"}"#)
        .await
        .unwrap_or(0.0)
}

async fn only_subscribers_receive(url: String) {
    let a = spawn_app_with(settings_for(&url)).await;
    let b = spawn_app_with(settings_for(&url)).await;
    let alice = a.token_with("alice", &["*"], &[]).await;
    let (mut stream, _) = a.open_topics(&alice, &["room:busy"], None).await;
    // The subscription is made in the background: wait until it carries events.
    eventually(
        "the topic's subscription carries events",
        PATIENCE,
        || async {
            a.publish_topic("room:busy", "a.b", json!("probe")).await;
            (topic_messages(&a).await > 0.0).then_some(())
        },
    )
    .await;
    while let Some(Some(_)) = stream.next_frame_within(Duration::from_millis(200)).await {}
    for n in 0..20 {
        b.publish_topic("room:busy", "a.b", json!(n)).await;
    }
    let mut received = 0;
    while received < 20 {
        if stream.next_event().await.json()["data"].is_number() {
            received += 1;
        }
    }
    assert_eq!(
        topic_messages(&b).await,
        0.0,
        "b holds no stream of it: it received none"
    );
    assert!(topic_messages(&a).await >= 20.0);
}

#[tokio::test]
async fn an_instance_without_subscribers_receives_none_of_a_topics_events() {
    let redis = RedisServer::start().await;
    only_subscribers_receive(redis.url()).await;
}

#[tokio::test]
async fn an_instance_without_subscribers_receives_none_of_a_topics_events_on_a_cluster() {
    let cluster = RedisCluster::start(3, 0).await;
    only_subscribers_receive(cluster.url()).await;
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config { cases: 48, ..Default::default() })]

    /// Whatever a client sends as its cursor (with topics in the stream), the answer is
    /// a stream (resynced if the cursor cannot be placed) or a 400: never a 5xx.
    #[test]
    fn any_cursor_is_a_stream_or_a_400(
        cursor in proptest::prop_oneof![
            "\\PC{0,80}",
            "[0-9]{1,20}-[0-9]{1,20}\\.[0-9]{1,20}-[0-9]{1,20}\\.[0-9a-f]{16}(\\.[0-9a-f]{16}-[0-9]{1,20}-[0-9]{1,20}){0,40}",
            "[0-9a-f.-]{0,9000}",
        ]
    ) {
        let runtime = tokio::runtime::Runtime::new().expect("a runtime");
        runtime.block_on(async {
            let app = CURSOR_APP.get_or_init(|| std::sync::Mutex::new(None));
            let address = {
                let mut held = app.lock().expect("held");
                if held.is_none() {
                    *held = Some(spawn_app_server());
                }
                held.as_ref().expect("started").clone()
            };
            let api = Api::new(address);
            let alice = api.token_with("alice", &["*"], &[]).await;
            let query = format!("topic=t1&topic=t2&lastEventId={}", urlencode(&cursor));
            let response = api.stream_request(&alice, &query, None).await;
            let status = response.status().as_u16();
            assert!(status == 200 || status == 400, "{status} for {cursor:?}");
        });
    }
}

static CURSOR_APP: std::sync::OnceLock<std::sync::Mutex<Option<String>>> =
    std::sync::OnceLock::new();

/// One instance on a runtime of its own thread, for every case of the property test.
fn spawn_app_server() -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().expect("a runtime");
        runtime.block_on(async move {
            let app = spawn_app(None).await;
            tx.send(app.address.clone()).expect("sent");
            std::future::pending::<()>().await;
        });
    });
    rx.recv().expect("the instance started")
}

fn urlencode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

#[tokio::test]
async fn a_user_publishing_too_often_is_refused_and_others_are_not() {
    let mut settings = settings(None);
    settings.user_publish_rate = 3;
    let app = spawn_app_with(settings).await;
    let alice = app.token_with("alice", &[], &["chat:*"]).await;
    let bob = app.token_with("bob", &[], &["chat:*"]).await;
    let say = json!({"topic": "chat:1", "eventType": "chat.message", "data": {}});
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(
            app.post_json("/api/publish", Some(&alice), &say)
                .await
                .status()
                .as_u16(),
        );
    }
    assert_eq!(statuses, [202, 202, 202, 429, 429]);
    let (status, code, _) =
        error_code(app.post_json("/api/publish", Some(&alice), &say).await).await;
    assert_eq!((status, code.as_str()), (429, "too_many_publishes"));
    assert_eq!(
        app.post_json("/api/publish", Some(&bob), &say)
            .await
            .status(),
        202
    );
    // Services are not limited.
    for _ in 0..5 {
        app.publish_topic("chat:1", "chat.message", json!({})).await;
    }
}

#[tokio::test]
async fn one_opening_replays_max_replay_events_in_all_not_per_topic() {
    let mut settings = settings(None);
    settings.max_replay = 4;
    let app = spawn_app_with(settings).await;
    let alice = app.token_with("alice", &["*"], &[]).await;
    let (stream, opened) = app.open_topics(&alice, &["a", "b", "c"], None).await;
    drop(stream);
    publish_rounds(&app, &["a", "b", "c"], 1..4).await;
    let (mut resumed, _) = app
        .open_topics(&alice, &["a", "b", "c"], opened.id.as_deref())
        .await;
    let mut got = Vec::new();
    for _ in 0..6 {
        let frame = resumed.next_event().await;
        let json = frame.json();
        got.push(match frame.event.as_deref() {
            Some("stream.resync") => {
                format!("resync {}", json["data"]["topic"].as_str().unwrap_or("?"))
            }
            _ => format!("{} {}", json["topic"].as_str().unwrap_or("?"), json["id"]),
        });
    }
    assert_eq!(
        got,
        ["a 1", "a 2", "a 3", "resync b", "b 3", "resync c"],
        "four events replayed in all; what did not fit is said, never skipped in silence"
    );
    resumed.expect_no_event(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_users_idempotency_keys_are_their_own_on_a_shared_topic() {
    let app = spawn_app(None).await;
    let alice = app.token_with("alice", &[], &["chat:*"]).await;
    let bob = app.token_with("bob", &[], &["chat:*"]).await;
    let say = |text: &str| json!({"topic": "chat:1", "eventType": "chat.message", "data": {"text": text}});
    let post = |token: String, body: Value| {
        let client = app.client.clone();
        let url = app.url("/api/publish");
        async move {
            client
                .post(url)
                .bearer_auth(token)
                .header("idempotency-key", "k-1")
                .json(&body)
                .send()
                .await
                .expect("sent")
        }
    };
    let first = post(alice.clone(), say("alice's")).await;
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.expect("JSON");
    let other = post(bob, say("bob's")).await;
    assert_eq!(other.status(), 202);
    assert!(
        other.headers().get("idempotent-replayed").is_none(),
        "bob's key is not alice's"
    );
    let other: Value = other.json().await.expect("JSON");
    assert_eq!(
        (
            other["publisherId"].as_str(),
            other["data"]["text"].as_str()
        ),
        (Some("bob"), Some("bob's"))
    );
    assert_ne!(other["id"], first["id"]);
    let retry = post(alice, say("alice's")).await;
    assert_eq!(
        retry
            .headers()
            .get("idempotent-replayed")
            .map(|v| v.to_str().ok()),
        Some(Some("true"))
    );
    let retry: Value = retry.json().await.expect("JSON");
    assert_eq!(
        retry["id"], first["id"],
        "alice's retry is alice's first publish"
    );
}
