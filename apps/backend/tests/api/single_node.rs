//! Without Redis, one instance does everything in-process.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_delivers_snapshots_to_every_tab_of_the_user_only() {
    let app = spawn_app(None).await;
    let alice = app.token("alice").await;
    let bob = app.token("bob").await;
    let mut tab_1 = app.open_stream(&alice).await;
    let mut tab_2 = app.open_stream(&alice).await;
    let mut bob_stream = app.open_stream(&bob).await;

    app.create_account(&alice, "Savings", 10).await;
    for tab in [&mut tab_1, &mut tab_2] {
        let envelope = tab.next_event().await.json();
        assert_eq!(envelope["eventType"], "snapshots.generated");
        assert_eq!(envelope["data"]["snapshotCount"], 1);
        assert_eq!(envelope["data"]["serverId"], app.server_id.as_str());
    }

    drop(tab_2);
    eventually("the server notices the closed tab", PATIENCE, || async {
        (app.hub.stream_count() == 2).then_some(())
    })
    .await;
    app.create_account(&alice, "Checking", 20).await;
    assert_eq!(tab_1.next_event().await.json()["data"]["snapshotCount"], 2);
    bob_stream.expect_no_event(Duration::from_millis(300)).await;

    let accounts = app.list("/api/accounts", &alice).await;
    assert_eq!(accounts.len(), 2);
    assert_eq!(accounts[0]["userId"], "alice");
    let snapshots = app.list("/api/snapshots", &alice).await;
    assert_eq!(snapshots.len(), 3);
    let bobs = app.list("/api/accounts", &bob).await;
    assert_eq!(bobs, Vec::<Value>::new());

    app.publish("bob", "chat.message-posted", json!({"text": "hi"}))
        .await;
    assert_eq!(bob_stream.next_event().await.json()["data"]["text"], "hi");
    tab_1.expect_no_event(Duration::from_millis(200)).await;
}
