//! Upgrading from the partition tags before topics: `backend --migrate-partitions`.

use std::process::Command;

use serde_json::json;

use crate::helpers::{FrameJson, RedisServer, spawn_app};

/// Writes alice's history as a version before topics kept it: under `{p<crc16 % 128>}`,
/// epoch 1000, events 1 and 2.
async fn old_history(redis: &RedisServer) {
    let partition = fred::util::redis_keyslot(b"alice") % 128;
    let (meta, log) = (
        format!("ev:{{p{partition}}}:meta:alice"),
        format!("ev:{{p{partition}}}:log:alice"),
    );
    redis
        .command(&["HSET", &meta, "epoch", "1000", "seq", "2"])
        .await
        .expect("meta written");
    for seq in 1..=2 {
        let envelope = json!({"id": seq, "epoch": 1000, "userId": "alice", "eventType": "old.event", "data": {"n": seq}, "publishedAt": 1});
        redis
            .command(&[
                "XADD",
                &log,
                &format!("{seq}-0"),
                "e",
                &envelope.to_string(),
                "t",
                "1",
            ])
            .await
            .expect("entry written");
    }
    // Event 2 was published with an idempotency key, ten minutes ago at most.
    let record = format!("ev:{{p{partition}}}:idem:alice:k-9");
    redis
        .command(&["SET", &record, "2 1000", "PX", "600000"])
        .await
        .expect("record written");
}

fn migrate(redis: &RedisServer) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_backend"))
        .arg("--migrate-partitions")
        .env_clear()
        .env("REDIS_URL", redis.url())
        .env("DEV_TOKENS", "true")
        .output()
        .expect("the backend runs");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn histories_under_the_earlier_tags_are_copied_and_resume_without_a_resync() {
    let redis = RedisServer::start().await;
    old_history(&redis).await;
    assert!(migrate(&redis).contains("copied to today's partition tags: 1;"));
    assert!(migrate(&redis).contains("copied to today's partition tags: 0; left as they were (today's layout had them already): 1"), "twice copies nothing twice");

    let app = spawn_app(Some(&redis)).await;
    let alice = app.token("alice").await;
    // A cursor a stream of the earlier version wrote after event 1.
    let cursor = format!("1000-1.0-0.{:016x}", events::owner_tag("alice"));
    let mut stream = app.resume_stream(&alice, Some(&cursor)).await;
    let replayed = stream.next_event().await;
    assert_eq!(
        replayed.event.as_deref(),
        Some("old.event"),
        "no resync: the history is where it was"
    );
    assert_eq!(replayed.json()["data"], json!({"n": 2}));
    // A publisher's retry with event 2's key publishes nothing: it is event 2.
    let retry = app
        .client
        .post(app.url("/api/publish"))
        .bearer_auth(crate::helpers::PUBLISH_KEY)
        .header("idempotency-key", "k-9")
        .json(&json!({"userId": "alice", "eventType": "old.event", "data": {"n": 2}}))
        .send()
        .await
        .expect("sent");
    assert_eq!(retry.status(), 202);
    assert!(
        retry.headers().contains_key("idempotent-replayed"),
        "the record moved too"
    );
    // And the history goes on from there.
    app.publish("alice", "new.event", json!(3)).await;
    let next = stream.next_event().await.json();
    assert_eq!(
        (next["id"].as_u64(), next["epoch"].as_u64()),
        (Some(3), Some(1000))
    );
}
