//! Clients that behave like browsers and publishers over time: following a stream across
//! reconnects, publishing numbered events.

use std::time::Duration;

use serde_json::{Value, json};

use super::{FrameJson, PUBLISH_KEY, SseStream};

/// An event as a client saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub event: String,
    pub envelope: Value,
}

impl Received {
    /// The `n` a test put in the event's data.
    pub fn n(&self) -> Option<u64> {
        self.envelope["data"]["n"].as_u64()
    }
}

/// Follows a user's stream the way a browser's EventSource does: when the stream ends
/// or cannot be opened, it reconnects after a short pause with its last event id,
/// trying `addresses` in turn. Records every event (not `stream.opened`) until `done`
/// says so or `deadline` passes; returns what it saw and how many times it connected.
pub async fn follow(
    addresses: Vec<String>,
    token: String,
    deadline: Duration,
    done: impl Fn(&[Received]) -> bool,
) -> (Vec<Received>, usize) {
    let client = reqwest::Client::new();
    let until = tokio::time::Instant::now() + deadline;
    let mut received: Vec<Received> = Vec::new();
    let mut last_id: Option<String> = None;
    let mut connections = 0;
    let mut next = 0;
    while !done(&received) && tokio::time::Instant::now() < until {
        let address = &addresses[next % addresses.len()];
        next += 1;
        let mut request = client
            .get(format!("{address}/api/events"))
            .bearer_auth(&token);
        if let Some(id) = &last_id {
            request = request.query(&[("lastEventId", id.as_str())]);
        }
        let response = match tokio::time::timeout_at(until, request.send()).await {
            Ok(Ok(response)) if response.status() == 200 => response,
            _ => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        connections += 1;
        let mut stream = SseStream::new(response);
        loop {
            if done(&received) {
                break;
            }
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            match stream.next_frame_within(left).await {
                Some(Some(frame)) => {
                    if frame.id.is_some() {
                        last_id.clone_from(&frame.id);
                    }
                    if let Some(event) = frame.event.clone()
                        && event != "stream.opened"
                    {
                        received.push(Received {
                            event,
                            envelope: frame.json(),
                        });
                    }
                }
                // Ended (or timed out): reconnect.
                Some(None) | None => break,
            }
        }
    }
    (received, connections)
}

/// Publishes `count` events `{"n": first..}` of type `test.counted` to `user_id`, in
/// order, through `addresses` in turn, retrying each until it is accepted (a 503 while
/// Redis is away is expected), with an `Idempotency-Key` so that a retry of a write Redis
/// made after all publishes nothing twice. Returns the `n`s accepted, in order.
pub async fn publish_counted(
    addresses: Vec<String>,
    user_id: String,
    first: u64,
    count: u64,
    pause: Duration,
) -> Vec<u64> {
    let client = reqwest::Client::new();
    let mut accepted = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for (i, n) in (first..first + count).enumerate() {
        loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "publishing took too long"
            );
            let address = &addresses[i % addresses.len()];
            let response = client
                .post(format!("{address}/api/publish"))
                .bearer_auth(PUBLISH_KEY)
                .header("Idempotency-Key", format!("counted-{n}"))
                .json(&json!({"userId": user_id, "eventType": "test.counted", "data": {"n": n}}))
                .send()
                .await;
            match response {
                Ok(r) if r.status() == 202 => break,
                Ok(r) if r.status() == 503 => {}
                Ok(r) => panic!("publish refused: {}", r.status()),
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        accepted.push(n);
        tokio::time::sleep(pause).await;
    }
    accepted
}

/// The `n`s of the `test.counted` events in `received`, in order.
pub fn counted(received: &[Received]) -> Vec<u64> {
    received
        .iter()
        .filter(|r| r.event == "test.counted")
        .filter_map(Received::n)
        .collect()
}
