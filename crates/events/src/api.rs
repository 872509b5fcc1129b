//! JSON bodies of the HTTP API, shared by the backend and the web client.

use serde::{Deserialize, Serialize};

/// The longest accepted account name, in characters.
pub const MAX_ACCOUNT_NAME_CHARS: usize = 100;

/// `POST /api/auth/token`: asks for a development token for a user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenRequest {
    pub user_id: String,
    /// Topic patterns the token lets its user subscribe to (its `topics` claim).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topics: Vec<String>,
    /// Topic patterns the token lets its user publish to (its `publishTopics` claim).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish_topics: Vec<String>,
}

/// A signed token for a user and when it stops being accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenResponse {
    pub token: String,
    /// RFC 3339, UTC, millisecond precision.
    pub expires_at: String,
}

/// `POST /api/accounts`: the account to create for the caller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateAccountRequest {
    pub name: String,
    /// Whole units; never negative.
    pub balance: i64,
}

/// Why a request body was refused, naming the offending field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    pub field: &'static str,
    pub message: String,
}

impl std::fmt::Display for ValidationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for ValidationError {}

impl CreateAccountRequest {
    /// The rules the backend enforces, callable by the client before it sends.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let name = self.name.trim();
        if name.is_empty() {
            return Err(ValidationError {
                field: "name",
                message: "must not be empty".into(),
            });
        }
        if name.chars().count() > MAX_ACCOUNT_NAME_CHARS {
            return Err(ValidationError {
                field: "name",
                message: format!("must be at most {MAX_ACCOUNT_NAME_CHARS} characters"),
            });
        }
        if self.balance < 0 {
            return Err(ValidationError {
                field: "balance",
                message: "must not be negative".into(),
            });
        }
        Ok(())
    }
}

/// An account, owned by one user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Account {
    pub id: String,
    pub user_id: String,
    pub name: String,
    pub balance: i64,
    /// RFC 3339, UTC, millisecond precision.
    pub created_at: String,
}

/// The state of one account at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    pub id: String,
    pub account_id: String,
    pub user_id: String,
    pub name: String,
    pub balance: i64,
    /// RFC 3339, UTC, millisecond precision.
    pub taken_at: String,
}

/// The `data` of a `snapshots.generated` event, as in the original design.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotsGenerated {
    /// How many snapshots this generation took: one per account of the user.
    pub snapshot_count: u64,
    /// RFC 3339, UTC, millisecond precision.
    pub timestamp: String,
    /// The instance that took them.
    pub server_id: String,
}

/// The `data` of the `stream.opened` frame that starts every stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamOpened {
    /// The instance holding this stream.
    pub server_id: String,
    pub user_id: String,
    /// The topics the stream carries besides its user's events and the broadcasts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topics: Vec<String>,
}

/// `POST /api/publish`: an event for one user, in the original design's message shape,
/// for a topic's subscribers with `topic`, or for everyone with `"broadcast": true`:
/// exactly one of the three.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PublishRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub broadcast: bool,
    pub event_type: String,
    #[serde(default)]
    pub data: crate::Payload,
}

/// `POST /api/stream-tickets`, optionally: the topics the stream opened with the ticket
/// carries (besides any `topic` in its URL).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StreamTicketRequest {
    #[serde(default)]
    pub topics: Vec<String>,
}

/// `POST /api/stream-tickets` answers with this (and sets the ticket's secret in an
/// HttpOnly cookie): open the stream at `/api/events?ticket=<ticket>` within `expiresAt`.
/// The ticket is a public handle, worthless without the cookie; the pair is redeemable
/// once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamTicket {
    pub ticket: String,
    /// RFC 3339, UTC, millisecond precision.
    pub expires_at: String,
}

/// `POST /api/users/{userId}/disconnect`: ends every open stream of a user, on every
/// instance, with a `stream.disconnected` frame carrying `reason`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DisconnectRequest {
    #[serde(default)]
    pub reason: Option<String>,
}

/// The longest accepted disconnect reason, in characters.
pub const MAX_REASON_CHARS: usize = 200;

/// The `data` of the frame that ends a stream on the server's initiative
/// (`stream.expired`, `stream.disconnected`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamEnded {
    /// Why, for people.
    pub reason: String,
}

/// Which history a [`Resync`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ResyncScope {
    User,
    Broadcast,
    /// One of the stream's topics, named in [`Resync::topic`].
    Topic,
}

/// The `data` of a `stream.resync` frame: events may have been missed and cannot be
/// replayed, so the client should refetch whatever state it derives from them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resync {
    pub scope: ResyncScope,
    /// The topic, for [`ResyncScope::Topic`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Why, for people: e.g. "history trimmed past the requested position".
    pub reason: String,
}

/// `GET /api/topics/{topic}/presence`: who holds a stream of the topic, on any instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Presence {
    pub topic: String,
    /// How many distinct users are present: exact, whatever `users` holds.
    pub count: u64,
    /// The users present, earliest arrival first, at most the instance's
    /// `PRESENCE_LIST_MAX`.
    pub users: Vec<PresentUser>,
    /// Whether `users` leaves some out.
    pub truncated: bool,
    /// The topic's last event when this was read: the arrivals and departures announced
    /// up to it are counted here, so a client applies only the `stream.joined` and
    /// `stream.left` after it.
    pub head: TopicHead,
}

/// A position in a topic's sequence: `id` in `epoch`, as its events' envelopes carry them
/// (both 0 before the topic's first event).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicHead {
    pub epoch: u64,
    pub id: u64,
}

/// One user present in a topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PresentUser {
    pub user_id: String,
    /// Since when, in milliseconds since the Unix epoch (the Redis clock).
    pub since: u64,
}

/// Why a user joined or left a topic (the `reason` of [`PresenceChange`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PresenceReason {
    /// Their first stream of the topic opened.
    Opened,
    /// Presence was rebuilt after Redis lost it (a restart, a failover) and they were
    /// still there.
    Rebuilt,
    /// Their last stream of the topic closed, and no other opened within the grace window.
    Closed,
    /// The instance holding their streams stopped answering (a crash): another swept them.
    Timeout,
}

/// The `data` of a `stream.joined` or `stream.left` event, published to a topic's
/// subscribers when a user arrives in it or leaves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PresenceChange {
    pub user_id: String,
    pub reason: PresenceReason,
}

/// `GET /readyz`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReadinessReport {
    pub ready: bool,
    pub server_id: String,
    /// Why not ready, when not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    pub status: String,
    pub server_id: String,
}

/// Every error response: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// A stable machine-readable `code` and a human-readable `message`; `topic` names the
/// topic a `topic_forbidden` or `invalid_topic` refers to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(name: &str, balance: i64) -> CreateAccountRequest {
        CreateAccountRequest {
            name: name.into(),
            balance,
        }
    }

    #[test]
    fn account_request_rules() {
        assert_eq!(request("Savings", 0).validate(), Ok(()));
        assert_eq!(request(&"n".repeat(100), 5).validate(), Ok(()));
        assert_eq!(
            request("   ", 5).validate().map_err(|e| e.field),
            Err("name")
        );
        assert_eq!(
            request(&"n".repeat(101), 5).validate().map_err(|e| e.field),
            Err("name")
        );
        assert_eq!(
            request("Savings", -1).validate().map_err(|e| e.field),
            Err("balance")
        );
    }

    #[test]
    fn account_request_refuses_unknown_fields_and_fractional_balances() {
        let unknown = serde_json::from_value::<CreateAccountRequest>(
            json!({"name": "a", "balance": 1, "admin": true}),
        );
        assert!(unknown.is_err());
        let fractional =
            serde_json::from_value::<CreateAccountRequest>(json!({"name": "a", "balance": 1.5}));
        assert!(fractional.is_err());
    }

    #[test]
    fn error_body_shape() {
        let body = ErrorBody {
            error: ErrorDetail {
                code: "unauthorized".into(),
                message: "missing token".into(),
                topic: None,
            },
        };
        assert_eq!(
            serde_json::to_value(&body).expect("serializes"),
            json!({"error": {"code": "unauthorized", "message": "missing token"}})
        );
    }

    #[test]
    fn api_bodies_round_trip_in_camel_case() {
        let account = Account {
            id: "a1".into(),
            user_id: "u1".into(),
            name: "Savings".into(),
            balance: 10,
            created_at: "2025-08-26T10:00:00.000Z".into(),
        };
        let value = serde_json::to_value(&account).expect("serializes");
        assert_eq!(value["userId"], "u1");
        assert_eq!(value["createdAt"], "2025-08-26T10:00:00.000Z");
        assert_eq!(
            serde_json::from_value::<Account>(value).expect("parses"),
            account
        );

        let generated: SnapshotsGenerated = serde_json::from_value(json!({
            "snapshotCount": 1, "timestamp": "2025-08-26T10:00:00.000Z", "serverId": "backend-1"
        }))
        .expect("original data parses");
        assert_eq!(generated.snapshot_count, 1);
        assert_eq!(generated.server_id, "backend-1");
    }
}
