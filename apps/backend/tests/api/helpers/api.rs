//! The HTTP API of one address, as its clients use it: an instance, a backend process,
//! or nginx in front of several.

use serde_json::{Value, json};

use super::{Frame, FrameJson, PUBLISH_KEY, SseStream};

/// A client of the API at `address` (`http://host:port`).
#[derive(Debug, Clone)]
pub struct Api {
    pub address: String,
    pub client: reqwest::Client,
    /// Streams open on a fresh connection each, as a browser's do (through nginx too):
    /// so they are served straight off the socket (`direct`), as in production.
    /// `tests/api/carriers.rs` covers the other carrier.
    streams: reqwest::Client,
}

impl Api {
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            client: reqwest::Client::new(),
            streams: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .expect("a client"),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// A development token for `user_id`, from the instance's own token endpoint.
    pub async fn token(&self, user_id: &str) -> String {
        let response = self
            .post_json("/api/auth/token", None, &json!({ "userId": user_id }))
            .await;
        assert_eq!(response.status(), 200, "token endpoint");
        let body: Value = response.json().await.expect("token response is JSON");
        body["token"]
            .as_str()
            .expect("token is a string")
            .to_string()
    }

    /// A development token for `user_id` granting `topics` and `publish_topics` patterns.
    pub async fn token_with(
        &self,
        user_id: &str,
        topics: &[&str],
        publish_topics: &[&str],
    ) -> String {
        let body = json!({ "userId": user_id, "topics": topics, "publishTopics": publish_topics });
        let response = self.post_json("/api/auth/token", None, &body).await;
        assert_eq!(response.status(), 200, "token endpoint");
        let body: Value = response.json().await.expect("token response is JSON");
        body["token"]
            .as_str()
            .expect("token is a string")
            .to_string()
    }

    /// `GET /api/events?<query>` with `token` (and `Last-Event-ID`), unread: for the
    /// status of a refusal.
    pub async fn stream_request(
        &self,
        token: &str,
        query: &str,
        last_event_id: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self
            .streams
            .get(self.url(&format!("/api/events?{query}")))
            .bearer_auth(token);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        request.send().await.expect("stream request is sent")
    }

    /// Opens a stream of `topics` (besides the user's own events), resuming after
    /// `last_event_id` if given, and reads up to its `stream.opened` frame.
    pub async fn open_topics(
        &self,
        token: &str,
        topics: &[&str],
        last_event_id: Option<&str>,
    ) -> (SseStream, Frame) {
        let query: Vec<String> = topics.iter().map(|t| format!("topic={t}")).collect();
        let response = self
            .stream_request(token, &query.join("&"), last_event_id)
            .await;
        assert_eq!(response.status(), 200, "stream of {topics:?} opened");
        let mut stream = SseStream::new(response);
        let opened = stream.next_event().await;
        assert_eq!(opened.event.as_deref(), Some("stream.opened"));
        (stream, opened)
    }

    /// Publishes to `topic` with the publish API key and asserts it was accepted.
    pub async fn publish_topic(&self, topic: &str, event_type: &str, data: Value) -> Value {
        self.publish_body(&json!({"topic": topic, "eventType": event_type, "data": data}))
            .await
    }

    pub async fn post_json(
        &self,
        path: &str,
        token: Option<&str>,
        body: &Value,
    ) -> reqwest::Response {
        let mut request = self.client.post(self.url(path)).json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("request is sent")
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut request = self.client.get(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("request is sent")
    }

    /// `GET path` as the token's user, asserting a 200 and a JSON list.
    pub async fn list(&self, path: &str, token: &str) -> Vec<Value> {
        let response = self.get(path, Some(token)).await;
        assert_eq!(response.status(), 200, "GET {path}");
        response.json().await.expect("a JSON list")
    }

    /// Creates an account and asserts it was created.
    pub async fn create_account(&self, token: &str, name: &str, balance: i64) -> Value {
        let response = self
            .post_json(
                "/api/accounts",
                Some(token),
                &json!({"name": name, "balance": balance}),
            )
            .await;
        assert_eq!(response.status(), 201, "account created");
        response.json().await.expect("account is JSON")
    }

    /// Publishes with the publish API key and asserts it was accepted.
    pub async fn publish(&self, user_id: &str, event_type: &str, data: Value) -> Value {
        self.publish_body(&json!({"userId": user_id, "eventType": event_type, "data": data}))
            .await
    }

    /// Publishes a broadcast with the publish API key and asserts it was accepted.
    pub async fn publish_broadcast(&self, event_type: &str, data: Value) -> Value {
        self.publish_body(&json!({"broadcast": true, "eventType": event_type, "data": data}))
            .await
    }

    async fn publish_body(&self, body: &Value) -> Value {
        let response = self
            .post_json("/api/publish", Some(PUBLISH_KEY), body)
            .await;
        assert_eq!(response.status(), 202, "publish accepted: {body}");
        response.json().await.expect("publish response is JSON")
    }

    /// Opens a stream (token in the `Authorization` header, as a service would),
    /// resuming after `last_event_id` if given, and reads up to its `stream.opened`
    /// frame, after which it is sure to receive events. Returns it with the id of the
    /// instance serving it.
    pub async fn open_stream_served(
        &self,
        token: &str,
        last_event_id: Option<&str>,
    ) -> (SseStream, String) {
        let (stream, opened) = self.open_stream_opened(token, last_event_id).await;
        let server = opened.json()["data"]["serverId"]
            .as_str()
            .expect("the serving instance's id")
            .to_string();
        (stream, server)
    }

    /// [`Api::open_stream_served`], returning the `stream.opened` frame itself (its id is
    /// the cursor the stream starts from).
    pub async fn open_stream_opened(
        &self,
        token: &str,
        last_event_id: Option<&str>,
    ) -> (SseStream, Frame) {
        let mut request = self.streams.get(self.url("/api/events")).bearer_auth(token);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = request.send().await.expect("stream request is sent");
        assert_eq!(response.status(), 200, "stream opened");
        let mut stream = SseStream::new(response);
        let opened = stream.next_event().await;
        assert_eq!(opened.event.as_deref(), Some("stream.opened"));
        (stream, opened)
    }

    /// See [`metric_value`].
    pub async fn metric_value(&self, series: &str) -> Option<f64> {
        metric_value(&self.address, series).await
    }
}

/// The value of one series (name and labels, as exposed) of `base`'s `/metrics`; `None`
/// when the series is absent, so that "absent" and "zero" are told apart.
pub async fn metric_value(base: &str, series: &str) -> Option<f64> {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        if name == series {
            value.parse().ok()
        } else {
            None
        }
    })
}
