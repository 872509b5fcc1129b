//! What a hostile or careless client can and cannot do: no input yields a 5xx or reaches
//! another user, every resource is bounded, credentials stay out of URLs and end streams
//! when they expire.

use std::{net::IpAddr, time::Duration};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{helpers::*, topology::Nginx};

/// Cursors a client may send that the server cannot use: each must open a stream (that
/// resyncs) or be refused with a 4xx, never fail the server.
fn hostile_cursors() -> Vec<String> {
    let max = u64::MAX;
    let mut cursors: Vec<String> = [
        "1-100000000000000.0-0",
        "0-100000000000000.0-100000000000000",
        "1-9007199254740993.1-9007199254740993",
        "garbage",
        "E-1",
        "-1-2.3-4",
        "1-2.3-4.5",
        "99999999999999999999999-1.0-0",
        "0-0.0-0",
        "",
        "%00",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    cursors.push(format!("{max}-{max}.{max}-{max}"));
    cursors.push(format!("1-{max}.0-0"));
    cursors.push(format!("{max}-0.0-{max}"));
    // A few pseudo-random ones of every size.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..12 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        cursors.push(format!(
            "{}-{}.{}-{}",
            x % 1_000,
            x,
            x >> 3,
            x.rotate_left(17)
        ));
    }
    cursors
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_cursor_makes_the_server_fail_and_unusable_ones_resync() {
    let redis = RedisServer::start().await;
    let app = spawn_app(Some(&redis)).await;
    let token = app.token("alice").await;
    app.publish("alice", "orders.shipped", json!({"n": 1}))
        .await;
    for cursor in hostile_cursors() {
        for via_query in [false, true] {
            let mut request = app.client.get(app.url("/api/events")).bearer_auth(&token);
            request = if via_query {
                request.query(&[("lastEventId", cursor.as_str())])
            } else {
                request.header("Last-Event-ID", cursor.as_str())
            };
            let response = request.send().await.expect("stream request");
            let status = response.status();
            assert_eq!(status, 200, "{cursor:?} (query: {via_query})");
            let mut stream = SseStream::new(response);
            let opened = stream.next_event().await;
            assert_eq!(opened.event.as_deref(), Some("stream.opened"), "{cursor:?}");
        }
    }
    // And the instance is as it was: others' streams work, readiness holds.
    let mut stream = app.open_stream(&app.token("bob").await).await;
    app.publish("bob", "orders.shipped", json!({"n": 2})).await;
    assert_eq!(stream.next_event().await.json()["data"]["n"], 2);
    assert!(readiness_becomes(&app.address, 200).await);
}

/// A client bound to its own loopback address, so that nginx's per-address limits see
/// the hostile client and its victims apart.
fn client_from(address: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::from(address))
        .build()
        .expect("a client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_hostile_requests_through_nginx_leaves_other_users_untouched() {
    let redis = RedisServer::start().await;
    let one = BackendProcess::start(Some(&redis), &[("SERVER_ID", "backend-1")]).await;
    let two = BackendProcess::start(Some(&redis), &[("SERVER_ID", "backend-2")]).await;
    let web = crate::topology::TempDir::new("web");
    std::fs::write(web.path.join("index.html"), "<!doctype html>").expect("index");
    let nginx = Nginx::start(
        crate::topology::host_port(&one.address),
        crate::topology::host_port(&two.address),
        &web.path,
    )
    .await;
    let base = nginx.base.clone();
    let victim_token = Api::new(&base).token("victim").await;
    let victim = client_from([127, 0, 0, 3]);
    let response = victim
        .get(format!("{base}/api/events"))
        .bearer_auth(&victim_token)
        .send()
        .await
        .expect("victim's stream");
    assert_eq!(response.status(), 200);
    let mut victim_stream = SseStream::new(response);
    victim_stream.next_event().await;

    let attacker = client_from([127, 0, 0, 2]);
    let mallory = Api::new(&base).token("mallory").await;
    let mut statuses = Vec::new();
    for round in 0..2 {
        for cursor in hostile_cursors().iter().take(12) {
            let response = attacker
                .get(format!("{base}/api/events"))
                .bearer_auth(&mallory)
                .header("Last-Event-ID", cursor.as_str())
                .timeout(Duration::from_secs(1))
                .send()
                .await;
            if let Ok(response) = response {
                statuses.push((format!("cursor {cursor}"), response.status()));
            }
        }
        let hostile: Vec<(String, reqwest::RequestBuilder)> = vec![
            (
                "made-up method".into(),
                attacker.request(
                    Method::from_bytes(b"AAAA").expect("method"),
                    format!("{base}/api/accounts"),
                ),
            ),
            (
                "array body".into(),
                attacker
                    .post(format!("{base}/api/accounts"))
                    .bearer_auth(&mallory)
                    .header("content-type", "application/json")
                    .body(r#"["Savings",100]"#),
            ),
            (
                "deep nesting".into(),
                attacker
                    .post(format!("{base}/api/publish"))
                    .bearer_auth("test-publish-key")
                    .header("content-type", "application/json")
                    .body(format!(
                        r#"{{"userId":"victim","eventType":"a.b","data":{}1{}}}"#,
                        "[".repeat(5000),
                        "]".repeat(5000)
                    )),
            ),
            (
                "line break in the event type".into(),
                attacker
                    .post(format!("{base}/api/publish"))
                    .bearer_auth("test-publish-key")
                    .json(&json!({"userId": "victim", "eventType": "a\nb", "data": {}})),
            ),
            (
                "publish key in the URL".into(),
                attacker
                    .post(format!("{base}/api/publish?token=test-publish-key"))
                    .json(&json!({"userId": "victim", "eventType": "a.b", "data": {}})),
            ),
            (
                "forged token".into(),
                attacker
                    .get(format!("{base}/api/accounts"))
                    .bearer_auth("x.y.z"),
            ),
            (
                "path traversal".into(),
                attacker.get(format!("{base}/api/../../etc/passwd")),
            ),
            (
                "unknown ticket".into(),
                attacker
                    .get(format!("{base}/api/events?ticket=../../x"))
                    .header("cookie", "st_../../x=y"),
            ),
            ("metrics".into(), attacker.get(format!("{base}/metrics"))),
        ];
        for (case, request) in hostile {
            if let Ok(response) = request.timeout(Duration::from_secs(2)).send().await {
                statuses.push((format!("{case} (round {round})"), response.status()));
            }
        }
    }
    for (case, status) in &statuses {
        assert!(!status.is_server_error(), "{case}: {status}");
    }
    assert!(
        statuses.iter().any(|(_, s)| *s == StatusCode::OK),
        "some hostile streams reached a backend: {statuses:?}"
    );

    // The victim's stream still receives, and the victim (and anyone else) can still
    // open streams through nginx on either backend.
    let accepted = Api::new(&base).token("victim").await;
    for n in 1..=2 {
        let response = victim
            .post(format!("{base}/api/publish"))
            .bearer_auth(PUBLISH_KEY)
            .json(&json!({"userId": "victim", "eventType": "test.counted", "data": {"n": n}}))
            .send()
            .await
            .expect("publish");
        assert_eq!(response.status(), 202);
    }
    for n in 1..=2 {
        assert_eq!(victim_stream.next_event().await.json()["data"]["n"], n);
    }
    let bystander = client_from([127, 0, 0, 4]);
    for _ in 0..4 {
        let response = bystander
            .get(format!("{base}/api/events"))
            .bearer_auth(&accepted)
            .send()
            .await
            .expect("a new stream");
        assert_eq!(
            response.status(),
            200,
            "new streams keep opening through nginx"
        );
    }
    // Made-up methods do not become metric series.
    let metrics = reqwest::get(format!("{}/metrics", one.address))
        .await
        .expect("metrics");
    let text = metrics.text().await.expect("text");
    let text2 = reqwest::get(format!("{}/metrics", two.address))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(!text.contains("AAAA") && !text2.contains("AAAA"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_limited_per_user_and_per_instance_with_clear_answers() {
    let mut settings = settings(None);
    settings.max_streams_per_user = 2;
    settings.max_streams = 3;
    let app = spawn_app_with(settings).await;
    let alice = app.token("alice").await;
    let _one = app.open_stream(&alice).await;
    let _two = app.open_stream(&alice).await;
    let third = app.get("/api/events", Some(&alice)).await;
    assert_eq!(third.status(), 429, "a third tab over the per-user limit");
    assert!(third.headers().contains_key("retry-after"));
    let body: Value = third.json().await.expect("error body");
    assert_eq!(body["error"]["code"], "too_many_streams");

    let _bob = app.open_stream(&app.token("bob").await).await;
    let full = app
        .get("/api/events", Some(&app.token("carol").await))
        .await;
    assert_eq!(full.status(), 503, "the instance is full: go elsewhere");
    assert!(full.headers().contains_key("retry-after"));
    assert!(
        readiness_becomes(&app.address, 503).await,
        "and it says so to the balancer"
    );
    assert_eq!(
        app.metric_value("sse_streams_refused_total{reason=\"instance_full\"}")
            .await,
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_and_accounts_are_bounded_and_bodies_must_be_objects() {
    let redis = RedisServer::start().await;
    let mut settings = settings(Some(&redis));
    settings.max_event_bytes = 100;
    settings.max_accounts_per_user = 2;
    let app = spawn_app_with(settings).await;
    let big = app
        .post_json(
            "/api/publish",
            Some(PUBLISH_KEY),
            &json!({"userId": "alice", "eventType": "a.b", "data": {"x": "y".repeat(200)}}),
        )
        .await;
    assert_eq!(big.status(), 413);
    let body: Value = big.json().await.expect("error body");
    assert_eq!(body["error"]["code"], "event_too_large");

    let token = app.token("alice").await;
    app.create_account(&token, "one", 1).await;
    app.create_account(&token, "two", 2).await;
    let third = app
        .post_json(
            "/api/accounts",
            Some(&token),
            &json!({"name": "three", "balance": 3}),
        )
        .await;
    assert_eq!(third.status(), 409);
    assert_eq!(
        app.list("/api/accounts", &token).await.len(),
        2,
        "nothing stored"
    );
    let other = app.token("bob").await;
    app.create_account(&other, "one", 1).await;

    // serde reads a struct from an array too: only objects are bodies.
    for (path, token, body) in [
        ("/api/accounts", other.as_str(), r#"["Savings",100]"#),
        ("/api/publish", PUBLISH_KEY, r#"["bob",false,"a.b",{}]"#),
        ("/api/auth/token", "", r#"["bob"]"#),
        ("/api/accounts", other.as_str(), "42"),
    ] {
        let response = app
            .client
            .post(app.url(path))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 400, "{path} {body}");
        let error: Value = response.json().await.expect("error body");
        assert_eq!(error["error"]["code"], "invalid_body", "{path} {body}");
    }
    assert_eq!(
        app.list("/api/accounts", &other).await.len(),
        1,
        "nothing stored"
    );

    // The publish key is read from the Authorization header only.
    let in_url = app
        .client
        .post(app.url(&format!("/api/publish?token={PUBLISH_KEY}")))
        .json(&json!({"userId": "alice", "eventType": "a.b"}))
        .send()
        .await
        .expect("publish");
    assert_eq!(in_url.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_record_is_a_500_with_a_request_id_and_no_internals() {
    let redis = RedisServer::start().await;
    let app = spawn_app(Some(&redis)).await;
    let token = app.token("alice").await;
    redis
        .command(&["HSET", "accounts:{alice}", "x", "{not json"])
        .await
        .expect("corrupt the record");
    let response = app.get("/api/accounts", Some(&token)).await;
    assert_eq!(response.status(), 500);
    let body: Value = response.json().await.expect("error body");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert_eq!(body["error"]["code"], "internal");
    assert!(message.contains("request id"), "{message}");
    assert!(
        !message.contains("line") && !message.contains("key"),
        "{message}"
    );
}

/// A ticket and its cookie, from `app`.
async fn ticket(app: &TestApp, token: &str) -> (String, String) {
    let response = app
        .post_json("/api/stream-tickets", Some(token), &json!({}))
        .await;
    assert_eq!(response.status(), 201);
    let cookie = response.headers()["set-cookie"]
        .to_str()
        .expect("cookie text")
        .to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("Path=/api/events"),
        "{cookie}"
    );
    let body: Value = response.json().await.expect("ticket body");
    let pair = cookie.split(';').next().unwrap_or_default().to_string();
    (body["ticket"].as_str().expect("ticket").to_string(), pair)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ticket_opens_one_stream_on_any_instance_and_only_with_its_cookie() {
    let redis = RedisServer::start().await;
    let a = spawn_app(Some(&redis)).await;
    let b = spawn_app(Some(&redis)).await;
    let token = a.token("alice").await;

    // Issued by A, redeemed on B: the ticket names alice.
    let (handle, cookie) = ticket(&a, &token).await;
    let open = |app: &TestApp, handle: &str, cookie: Option<&str>| {
        let mut request = app
            .client
            .get(app.url(&format!("/api/events?ticket={handle}")));
        if let Some(cookie) = cookie {
            request = request.header("cookie", format!("theme=dark; {cookie}"));
        }
        request.send()
    };
    let response = open(&b, &handle, Some(&cookie))
        .await
        .expect("stream request");
    assert_eq!(response.status(), 200);
    let mut stream = SseStream::new(response);
    let opened = stream.next_event().await;
    assert_eq!(opened.json()["data"]["userId"], "alice");
    let again = open(&a, &handle, Some(&cookie))
        .await
        .expect("stream request");
    assert_eq!(again.status(), 401, "single use");

    // The handle alone (as a log line would show it) opens nothing, and burns the ticket.
    let (handle, cookie) = ticket(&a, &token).await;
    assert_eq!(
        open(&a, &handle, None).await.expect("request").status(),
        401
    );
    let secret = cookie.split_once('=').map(|(_, s)| s).unwrap_or_default();
    let wrong = format!("st_{handle}={}", secret.chars().rev().collect::<String>());
    assert_eq!(
        open(&a, &handle, Some(&wrong))
            .await
            .expect("request")
            .status(),
        401
    );
    assert_eq!(
        open(&a, &handle, Some(&cookie))
            .await
            .expect("request")
            .status(),
        401
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ends_when_its_token_expires_and_resumes_with_a_fresh_one_missing_nothing() {
    let app = spawn_app(None).await;
    let soon = sign(
        JWT_SECRET,
        &backend::auth::Claims {
            sub: "alice".into(),
            exp: epoch_secs() + 2,
            iat: epoch_secs(),
            ..Default::default()
        },
    );
    let mut stream = app.open_stream(&soon).await;
    app.publish("alice", "test.counted", json!({"n": 1})).await;
    let first = stream.next_event().await;
    assert_eq!(first.json()["data"]["n"], 1);
    let ended = stream.next_event().await;
    assert_eq!(ended.event.as_deref(), Some("stream.expired"));
    assert_eq!(ended.id, first.id, "the last frame carries where to resume");
    stream.expect_end().await;

    // Published while the client was away: the resumed stream replays it.
    app.publish("alice", "test.counted", json!({"n": 2})).await;
    let fresh = app.token("alice").await;
    let mut resumed = app.resume_stream(&fresh, ended.id.as_deref()).await;
    assert_eq!(resumed.next_event().await.json()["data"]["n"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_disconnects_every_stream_of_a_user_on_every_instance() {
    let redis = RedisServer::start().await;
    let a = spawn_app(Some(&redis)).await;
    let b = spawn_app(Some(&redis)).await;
    let alice = a.token("alice").await;
    let mut on_a = a.open_stream(&alice).await;
    let mut on_b = b.open_stream(&alice).await;
    let mut bob = b.open_stream(&b.token("bob").await).await;

    let refused = a
        .post_json("/api/users/alice/disconnect", Some(&alice), &json!({}))
        .await;
    assert_eq!(refused.status(), 403, "a user cannot disconnect anyone");
    let response = a
        .post_json(
            "/api/users/alice/disconnect",
            Some(PUBLISH_KEY),
            &json!({"reason": "signed out everywhere"}),
        )
        .await;
    assert_eq!(response.status(), 202);
    for stream in [&mut on_a, &mut on_b] {
        let last = stream.next_event().await;
        assert_eq!(last.event.as_deref(), Some("stream.disconnected"));
        assert_eq!(last.json()["data"]["reason"], "signed out everywhere");
        stream.expect_end().await;
    }
    b.publish("bob", "test.counted", json!({"n": 1})).await;
    assert_eq!(
        bob.next_event().await.json()["data"]["n"],
        1,
        "bob is untouched"
    );
}

/// Connects a raw socket to `app`, sends `prefix`, then a byte every `pace` up to
/// `bytes` more; returns how long until the server closed the connection.
async fn time_until_closed(app: &TestApp, prefix: &[u8], pace: Duration, bytes: usize) -> Duration {
    let address = app.address.trim_start_matches("http://").to_string();
    let mut socket = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    let started = tokio::time::Instant::now();
    socket.write_all(prefix).await.expect("write");
    let mut buffer = [0u8; 256];
    for _ in 0..bytes {
        match tokio::time::timeout(pace, socket.read(&mut buffer)).await {
            Ok(Ok(0) | Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => {
                if socket.write_all(b"x").await.is_err() {
                    return started.elapsed();
                }
            }
        }
    }
    let _ = tokio::time::timeout(PATIENCE, socket.read(&mut buffer)).await;
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_or_trickling_client_gets_one_request_head_timeout() {
    let mut settings = settings(None);
    settings.request_head_timeout_secs = 2;
    let app = spawn_app_with(settings).await;
    // Two timeouts stacked (ours, then actix-web's) would take 4 s.
    for (case, prefix, pace, bytes) in [
        ("silent", &b""[..], Duration::from_secs(30), 1),
        (
            "trickling a stream request",
            b"GET /api/events HTTP/1.1\r\n",
            Duration::from_secs(1),
            20,
        ),
        (
            "trickling another route",
            b"GET /api/accounts HTTP/1.1\r\n",
            Duration::from_secs(1),
            20,
        ),
    ] {
        let closed = time_until_closed(&app, prefix, pace, bytes).await;
        assert!(
            closed < Duration::from_millis(3500),
            "{case}: closed after {closed:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_probes_can_live_on_an_internal_listener() {
    let mut settings = settings(None);
    settings.metrics_addr = Some(([127, 0, 0, 1], 0).into());
    let listener = backend::listen(([127, 0, 0, 1], 0).into()).expect("bind");
    let app = backend::Application::build(settings, listener)
        .await
        .expect("builds");
    let public = format!("http://127.0.0.1:{}", app.port());
    let internal = format!(
        "http://127.0.0.1:{}",
        app.metrics_port().expect("a metrics port")
    );
    let running = tokio::spawn(app.run_until_stopped(async {
        tokio::time::sleep(PATIENCE).await;
        backend::Stop::Abort
    }));
    assert_eq!(
        reqwest::get(format!("{public}/metrics"))
            .await
            .expect("get")
            .status(),
        404
    );
    let metrics = reqwest::get(format!("{internal}/metrics"))
        .await
        .expect("get");
    assert_eq!(metrics.status(), 200);
    assert!(
        metrics
            .text()
            .await
            .expect("text")
            .contains("sse_streams_open")
    );
    assert_eq!(
        reqwest::get(format!("{internal}/api/accounts"))
            .await
            .expect("get")
            .status(),
        404
    );
    // An orchestrator's probes may go to the internal port too (a NetworkPolicy then
    // keeps the whole port inside).
    for probe in ["/healthz", "/readyz"] {
        let answer = reqwest::get(format!("{internal}{probe}"))
            .await
            .expect("get");
        assert_eq!(answer.status(), 200, "{probe}");
    }
    running.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_messages_that_break_the_rules_are_dropped_and_every_stream_survives() {
    let redis = RedisServer::start().await;
    let app = spawn_app_with(Settings {
        legacy_channels: true,
        ..settings(Some(&redis))
    })
    .await;
    let mut alice = app.open_stream(&app.token("alice").await).await;
    let mut bob = app.open_stream(&app.token("bob").await).await;
    let hostile = [
        (
            "system-events",
            r#"{"userId":"*","eventType":"a\nb","data":{}}"#.to_string(),
        ),
        (
            "user-events",
            r#"{"userId":"alice","eventType":"x\r\ny","data":{}}"#.to_string(),
        ),
        (
            "user-events",
            r#"{"userId":"alice","eventType":"stream.resync","data":{"scope":"user"}}"#.to_string(),
        ),
        (
            "user-events",
            r#"{"userId":"al ice","eventType":"a.b","data":{}}"#.to_string(),
        ),
        (
            "user-events",
            r#"{"userId":"alice","eventType":"A.B","data":{}}"#.to_string(),
        ),
        (
            "user-events",
            format!(
                r#"{{"userId":"alice","eventType":"a.b","data":"{}"}}"#,
                "x".repeat(40_000)
            ),
        ),
        ("user-events", "not json".to_string()),
        ("user-events", "[1,2,3]".to_string()),
        ("stream-control", r#"{"action":"nonsense"}"#.to_string()),
        // Control messages are held to the disconnect API's rules before any stream of
        // the user is ended: a user id that is none, a reason the API would refuse.
        (
            "stream-control",
            r#"{"action":"disconnect","userId":"al ice","reason":"x"}"#.to_string(),
        ),
        (
            "stream-control",
            r#"{"action":"disconnect","userId":"alice","reason":"a\u0000b"}"#.to_string(),
        ),
        (
            "stream-control",
            format!(
                r#"{{"action":"disconnect","userId":"alice","reason":"{}"}}"#,
                "r".repeat(events::MAX_REASON_CHARS + 1)
            ),
        ),
    ];
    for (channel, message) in &hostile {
        redis
            .command(&["PUBLISH", channel, message])
            .await
            .expect("publish raw");
    }
    // The original design's shape, well formed: delivered to alice only.
    redis
        .command(&[
            "PUBLISH",
            "user-events",
            r#"{"userId":"alice","eventType":"orders.shipped","data":{"n":7}}"#,
        ])
        .await
        .expect("publish raw");
    let delivered = alice.next_event().await;
    assert_eq!(
        delivered.event.as_deref(),
        Some("orders.shipped"),
        "{}",
        alice.raw
    );
    assert_eq!(delivered.json()["data"]["n"], 7);
    app.publish("bob", "test.counted", json!({"n": 1})).await;
    assert_eq!(
        bob.next_event().await.json()["data"]["n"],
        1,
        "bob's stream survived"
    );
    let rejected = |reason: &str| {
        let series = format!("relay_messages_rejected_total{{reason=\"{reason}\"}}");
        let app = &app;
        async move { app.metric_value(&series).await }
    };
    assert_eq!(rejected("bad_event_type").await, Some(4.0));
    assert_eq!(rejected("bad_user_id").await, Some(2.0));
    assert_eq!(rejected("bad_reason").await, Some(2.0));
    assert_eq!(rejected("too_large").await, Some(1.0));
    assert_eq!(rejected("not_an_envelope").await, Some(3.0));
    // A well-formed control message still acts.
    redis
        .command(&[
            "PUBLISH",
            "stream-control",
            r#"{"action":"disconnect","userId":"alice","reason":"signed out"}"#,
        ])
        .await
        .expect("publish raw");
    let ended = alice.next_event().await;
    assert_eq!(ended.event.as_deref(), Some("stream.disconnected"));
    assert_eq!(ended.json()["data"]["reason"], "signed out");
}

/// A history entry no publish wrote (a hand-written `XADD`, a field an older version
/// left) is skipped and counted, and the stream says so (`stream.resync`); the events
/// around it are still replayed, and the stream does not fail (and reconnect, and read
/// it again) over it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_entry_in_a_history_is_skipped_and_the_rest_replayed() {
    let redis = RedisServer::start().await;
    let app = spawn_app(Some(&redis)).await;
    let token = app.token("alice").await;
    let mut stream = app.open_stream(&token).await;
    app.publish("alice", "test.counted", json!({"n": 1})).await;
    let first = stream.next_event().await;
    drop(stream);
    let log = cli(redis.port, &["--scan", "--pattern", "ev:*:log:alice"]);
    let meta = log.trim().replace(":log:", ":meta:");
    for entry in [["e", "not json"], ["x", "a field of another version"]] {
        let seq = redis
            .command(&["HINCRBY", &meta, "seq", "1"])
            .await
            .expect("HINCRBY");
        let id = format!("{}-0", seq.trim_start_matches(':'));
        let added = redis
            .command(&["XADD", log.trim(), &id, entry[0], entry[1]])
            .await
            .expect("XADD");
        assert!(!added.starts_with('-'), "{added}");
    }
    app.publish("alice", "test.counted", json!({"n": 4})).await;

    let mut resumed = app.resume_stream(&token, first.id.as_deref()).await;
    let resync = resumed.next_event().await;
    assert_eq!(
        resync.event.as_deref(),
        Some("stream.resync"),
        "the skipped numbers are said, not stepped over: {}",
        resumed.raw
    );
    assert_eq!(resync.json()["data"]["scope"], "user");
    let next = resumed.next_event().await;
    assert_eq!(next.json()["data"]["n"], 4, "{}", resumed.raw);
    assert_eq!(next.json()["id"], 4);
    let skipped = app
        .metric_value("relay_messages_rejected_total{reason=\"not_an_envelope\"}")
        .await;
    assert!(skipped.is_some_and(|n| n >= 2.0), "{skipped:?}");
}

/// Finding 1 of the correctness issue, in both modes: user X's cursor presented on user
/// Y's stream (a page that signed X out and Y in, keeping its last id) must not be read
/// as Y's position, whose events would then be skipped without a word. One rule for
/// every cursor the server cannot place (another user's, one of the earlier format
/// without its owner, one it never wrote): one `stream.resync` per history, each
/// followed by every event that history still keeps, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_or_foreign_cursor_resyncs_once_per_history_then_replays_what_is_kept() {
    let redis = RedisServer::start().await;
    for redis in [None, Some(&redis)] {
        let app = spawn_app(redis).await;
        let (x, y) = (app.token("user-x").await, app.token("user-y").await);
        let mut x_stream = app.open_stream(&x).await;
        for n in 1..=2 {
            app.publish("user-x", "test.counted", json!({"n": n})).await;
        }
        for n in 1..=3 {
            app.publish("user-y", "test.counted", json!({"n": n})).await;
        }
        app.publish_broadcast("test.counted", json!({"n": 10}))
            .await;
        x_stream.next_event().await;
        let x_last = x_stream.next_event().await.id.expect("a cursor");

        for cursor in [x_last.as_str(), "0-0.0-0", "not-a-cursor"] {
            let mut y_stream = app.resume_stream(&y, Some(cursor)).await;
            let mut seen = Vec::new();
            for _ in 0..6 {
                let frame = y_stream.next_event().await;
                let json = frame.json();
                seen.push(match frame.event.as_deref() {
                    Some("stream.resync") => format!(
                        "resync:{}",
                        json["data"]["scope"].as_str().unwrap_or_default()
                    ),
                    _ => json["data"]["n"].to_string(),
                });
            }
            assert_eq!(
                seen,
                ["resync:user", "1", "2", "3", "resync:broadcast", "10"],
                "cursor {cursor:?}, redis: {}",
                redis.is_some()
            );
            y_stream.expect_no_event(Duration::from_millis(300)).await;
        }
        // Y's own cursor still resumes exactly.
        let mut y_own = app.open_stream(&y).await;
        app.publish("user-y", "test.counted", json!({"n": 4})).await;
        let fourth = y_own.next_event().await;
        let mut resumed = app.resume_stream(&y, fourth.id.as_deref()).await;
        app.publish("user-y", "test.counted", json!({"n": 5})).await;
        assert_eq!(resumed.next_event().await.json()["data"]["n"], 5);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_1_0_stream_is_never_chunked() {
    let app = spawn_app(None).await;
    let token = app.token("alice").await;
    let address = app.address.trim_start_matches("http://").to_string();
    let mut socket = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    let request = format!("GET /api/events HTTP/1.0\r\nAuthorization: Bearer {token}\r\n\r\n");
    socket.write_all(request.as_bytes()).await.expect("write");
    let mut received = Vec::new();
    let mut buffer = [0u8; 1024];
    while !String::from_utf8_lossy(&received).contains("event: stream.opened") {
        let read = tokio::time::timeout(PATIENCE, socket.read(&mut buffer))
            .await
            .expect("the stream opens")
            .expect("read");
        assert!(
            read > 0,
            "closed early: {}",
            String::from_utf8_lossy(&received)
        );
        received.extend_from_slice(&buffer[..read]);
    }
    let text = String::from_utf8_lossy(&received).to_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(
        !text.contains("transfer-encoding"),
        "RFC 9112: no chunking for 1.0: {text}"
    );
}

/// A query a careless or hostile client writes (a repeated parameter, an escape that is
/// not UTF-8) still redeems its ticket and still resyncs on a cursor it cannot read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_odd_query_neither_loses_the_ticket_nor_skips_the_resync() {
    let app = spawn_app(None).await;
    let token = app.token("alice").await;
    let (handle, cookie) = ticket(&app, &token).await;
    let response = app
        .client
        .get(app.url(&format!(
            "/api/events?ticket={handle}&ticket=other&lastEventId=%FF%FE&lastEventId=1"
        )))
        .header("cookie", cookie)
        .send()
        .await
        .expect("stream request");
    assert_eq!(response.status(), 200, "the first ticket counts");
    let mut stream = SseStream::new(response);
    assert_eq!(
        stream.next_event().await.event.as_deref(),
        Some("stream.opened")
    );
    let resync = stream.next_event().await;
    assert_eq!(
        resync.event.as_deref(),
        Some("stream.resync"),
        "{}",
        stream.raw
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_cannot_take_every_stream_ticket_on_any_instance() {
    let redis = RedisServer::start().await;
    let a = spawn_app(Some(&redis)).await;
    let b = spawn_app(Some(&redis)).await;
    let mallory = a.token("mallory").await;
    for i in 0..64 {
        let app = if i % 2 == 0 { &a } else { &b };
        let response = app
            .post_json("/api/stream-tickets", Some(&mallory), &json!({}))
            .await;
        assert_eq!(response.status(), 201, "ticket {i}");
    }
    let over = b
        .post_json("/api/stream-tickets", Some(&mallory), &json!({}))
        .await;
    assert_eq!(over.status(), 429, "the limit holds across instances");
    assert!(over.headers().contains_key("retry-after"));
    let body: Value = over.json().await.expect("error body");
    assert_eq!(body["error"]["code"], "too_many_tickets");
    let alice = a.token("alice").await;
    ticket(&a, &alice).await;
}
