//! Calls to the backend's HTTP API, with its error body turned into a message.

use events::{
    Account, CreateAccountRequest, Envelope, ErrorBody, Payload, Presence, PublishRequest,
    Snapshot, StreamTicket, StreamTicketRequest, TokenRequest, TokenResponse,
};
use gloo_net::http::{Request, Response};
use serde::de::DeserializeOwned;

/// A failed call: the server's own message when it sent one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiFailure {
    /// 0 when the request did not reach the server.
    pub status: u16,
    /// The server's error code (`topic_forbidden`, ...), when it sent one.
    pub code: Option<String>,
    pub message: String,
    /// The topic a `topic_forbidden` or `invalid_topic` refers to.
    pub topic: Option<String>,
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

fn unreachable(error: gloo_net::Error) -> ApiFailure {
    ApiFailure {
        status: 0,
        code: None,
        message: format!("the server could not be reached: {error}"),
        topic: None,
    }
}

async fn read<T: DeserializeOwned>(response: Response) -> Result<T, ApiFailure> {
    let status = response.status();
    if response.ok() {
        return response.json::<T>().await.map_err(|e| ApiFailure {
            status,
            code: None,
            message: format!("unreadable response: {e}"),
            topic: None,
        });
    }
    let (code, message, topic) = match response.json::<ErrorBody>().await {
        Ok(body) => (Some(body.error.code), body.error.message, body.error.topic),
        Err(_) => (None, format!("the server answered {status}"), None),
    };
    Err(ApiFailure {
        status,
        code,
        message,
        topic,
    })
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A single-use ticket to open the caller's stream with: its handle in the body, its
/// secret in an HttpOnly cookie the browser keeps for the stream request. The stream
/// carries `topics` besides the user's events and the broadcasts (no body without any).
pub async fn stream_ticket(
    url: &str,
    token: &str,
    topics: &[String],
) -> Result<StreamTicket, ApiFailure> {
    let request = Request::post(url).header("Authorization", &bearer(token));
    let sent = if topics.is_empty() {
        request.send().await
    } else {
        let body = StreamTicketRequest {
            topics: topics.to_vec(),
        };
        request.json(&body).map_err(unreachable)?.send().await
    };
    read(sent.map_err(unreachable)?).await
}

/// A development token for `user_id`, letting them subscribe and publish to the topics
/// `topic_patterns` allow (exact names, or prefixes ending in `*`).
pub async fn request_token(
    user_id: &str,
    topic_patterns: &[String],
) -> Result<TokenResponse, ApiFailure> {
    let body = TokenRequest {
        user_id: user_id.to_string(),
        topics: topic_patterns.to_vec(),
        publish_topics: topic_patterns.to_vec(),
    };
    let request = Request::post("/api/auth/token")
        .json(&body)
        .map_err(unreachable)?;
    read(request.send().await.map_err(unreachable)?).await
}

/// Creates an account. `idempotency_key` names this creation: a retry with the same key
/// (after a failure that may have created it) creates nothing and answers with the account
/// the first attempt created.
pub async fn create_account(
    token: &str,
    body: &CreateAccountRequest,
    idempotency_key: &str,
) -> Result<Account, ApiFailure> {
    let request = Request::post("/api/accounts")
        .header("Authorization", &bearer(token))
        .header("Idempotency-Key", idempotency_key)
        .json(body)
        .map_err(unreachable)?;
    read(request.send().await.map_err(unreachable)?).await
}

pub async fn accounts(token: &str) -> Result<Vec<Account>, ApiFailure> {
    let request = Request::get("/api/accounts").header("Authorization", &bearer(token));
    read(request.send().await.map_err(unreachable)?).await
}

pub async fn snapshots(token: &str) -> Result<Vec<Snapshot>, ApiFailure> {
    let request = Request::get("/api/snapshots").header("Authorization", &bearer(token));
    read(request.send().await.map_err(unreachable)?).await
}

/// Publishes an event to `topic`'s subscribers as the token's user (the event names them as
/// its publisher). `idempotency_key` names this publication: a retry with the same key
/// publishes nothing more.
pub async fn publish_to_topic(
    token: &str,
    topic: &str,
    event_type: &str,
    data: Payload,
    idempotency_key: &str,
) -> Result<Envelope, ApiFailure> {
    let body = PublishRequest {
        user_id: None,
        topic: Some(topic.to_string()),
        broadcast: false,
        event_type: event_type.to_string(),
        data,
    };
    let request = Request::post("/api/publish")
        .header("Authorization", &bearer(token))
        .header("Idempotency-Key", idempotency_key)
        .json(&body)
        .map_err(unreachable)?;
    read(request.send().await.map_err(unreachable)?).await
}

/// Who is in `topic` (every user holding a stream of it, on any instance), as the token's
/// user may see it: one whose grants allow the topic.
pub async fn presence(token: &str, topic: &str) -> Result<Presence, ApiFailure> {
    // A topic name is path-safe; one that breaks the rule is refused without a request.
    if let Err(error) = events::validate_topic(topic) {
        return Err(ApiFailure {
            status: 400,
            code: Some("invalid_topic".into()),
            message: error.to_string(),
            topic: Some(topic.to_string()),
        });
    }
    let request = Request::get(&format!("/api/topics/{topic}/presence"))
        .header("Authorization", &bearer(token));
    read(request.send().await.map_err(unreachable)?).await
}
