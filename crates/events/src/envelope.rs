use serde::{Deserialize, Serialize};

use crate::Payload;

/// The Redis Pub/Sub channel that carries every user's events between backend instances.
///
/// Kept from the original design so that its publishers keep working unchanged.
pub const USER_EVENTS_CHANNEL: &str = "user-events";

/// The Redis Pub/Sub channel that carries broadcast events, delivered to every stream.
pub const SYSTEM_EVENTS_CHANNEL: &str = "system-events";

/// The `userId` of a broadcast event. Not a valid user id, so it names no user.
pub const BROADCAST_USER_ID: &str = "*";

/// One event addressed to one user, to everyone, or to a topic's subscribers: the message
/// on Redis and the JSON of each SSE `data:`.
///
/// `userId`, `eventType` and `data` are exactly the original design's Redis message, so a
/// publisher that sends only those three keys is still understood. A topic's event has
/// `topic` instead of `userId` (exactly one of the two; the admission rules check it).
/// The other fields are filled in by the backend that accepts the event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    /// The event's position in its user's (or topic's) sequence: 1, 2, 3, ... without gaps.
    ///
    /// Assigned by the backend when the event is published; absent on messages that
    /// bypassed the backend (a plain `PUBLISH user-events`), which are delivered live only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// The epoch of the history `id` counts in (see [`crate::Position`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// The user whose streams receive the event; [`BROADCAST_USER_ID`] for a broadcast;
    /// empty (and left out) for a topic's event.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user_id: String,
    /// The topic whose subscribers receive the event (see [`crate::validate_topic`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// The event's name, sent as the SSE `event:` field (see [`crate::event_type`]).
    pub event_type: String,
    /// The payload, any JSON value exactly as published; `null` when the publisher sent
    /// none.
    #[serde(default)]
    pub data: Payload,
    /// The backend instance that accepted the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_id: Option<String>,
    /// When the event was accepted, in milliseconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_at: Option<u64>,
    /// The user who published it with their own token (a topic's `publishTopics`), set by
    /// the backend from the token and never taken from the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publisher_id: Option<String>,
}

impl Envelope {
    /// Whether this event goes to every stream rather than one user's.
    pub fn is_broadcast(&self) -> bool {
        self.topic.is_none() && self.user_id == BROADCAST_USER_ID
    }

    /// The event's position in its history, if it has one.
    pub fn position(&self) -> Option<crate::Position> {
        Some(crate::Position::new(self.epoch?, self.id?))
    }

    /// A new event for `user_id`, not yet published.
    pub fn new(
        user_id: impl Into<String>,
        event_type: impl Into<String>,
        data: impl Into<Payload>,
    ) -> Self {
        Self {
            id: None,
            epoch: None,
            user_id: user_id.into(),
            topic: None,
            event_type: event_type.into(),
            data: data.into(),
            server_id: None,
            published_at: None,
            publisher_id: None,
        }
    }

    /// A new event for the subscribers of `topic`, not yet published.
    pub fn to_topic(
        topic: impl Into<String>,
        event_type: impl Into<String>,
        data: impl Into<Payload>,
    ) -> Self {
        Self {
            topic: Some(topic.into()),
            ..Self::new(String::new(), event_type, data)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_the_original_designs_message_verbatim() {
        let original = r#"{"userId":"123","eventType":"snapshots.generated","data":{"snapshotCount":1,"timestamp":"2025-08-26T10:00:00.000Z","serverId":"backend-1"}}"#;

        let envelope: Envelope = serde_json::from_str(original).expect("original message parses");

        assert_eq!(envelope.user_id, "123");
        assert_eq!(envelope.event_type, "snapshots.generated");
        let data: serde_json::Value = envelope.data.parse().expect("data is JSON");
        assert_eq!(data["snapshotCount"], 1);
        assert_eq!(data["serverId"], "backend-1");
        assert_eq!(envelope.id, None);
        assert_eq!(envelope.server_id, None);
        assert_eq!(envelope.published_at, None);
    }

    #[test]
    fn round_trips_with_camel_case_keys() {
        let envelope = Envelope {
            id: Some(7),
            epoch: Some(1_764_000_000_000),
            user_id: "alice".into(),
            event_type: "orders.shipped".into(),
            data: json!({"orderId": 42, "items": []}).into(),
            server_id: Some("backend-2".into()),
            published_at: Some(1_764_000_000_123),
            topic: None,
            publisher_id: None,
        };

        let text = serde_json::to_string(&envelope).expect("serializes");
        let value: serde_json::Value = serde_json::from_str(&text).expect("is JSON");
        assert_eq!(value["userId"], "alice");
        assert_eq!(value["eventType"], "orders.shipped");
        assert_eq!(value["serverId"], "backend-2");
        assert_eq!(value["publishedAt"], 1_764_000_000_123_u64);
        assert_eq!(value["epoch"], 1_764_000_000_000_u64);
        assert_eq!(
            envelope.position(),
            Some(crate::Position::new(1_764_000_000_000, 7))
        );
        assert_eq!(
            serde_json::from_str::<Envelope>(&text).expect("parses"),
            envelope
        );
    }

    #[test]
    fn unpublished_envelope_serializes_without_id_and_starts_with_user_id() {
        // The Redis publish script splices `"id":N,` after the opening brace, so an
        // envelope without id must serialize as a non-empty object.
        let text = serde_json::to_string(&Envelope::new("u", "a.b", serde_json::Value::Null))
            .expect("serializes");
        assert!(text.starts_with(r#"{"userId":"u""#), "{text}");
        assert!(!text.contains(r#""id""#));
        assert!(!text.contains(r#""epoch""#));
    }

    #[test]
    fn missing_data_becomes_null() {
        let envelope: Envelope =
            serde_json::from_str(r#"{"userId":"1","eventType":"a.b"}"#).expect("parses");
        assert!(envelope.data.is_null());
    }

    #[test]
    fn a_topics_event_has_a_topic_and_no_user_id() {
        let text = serde_json::to_string(&Envelope {
            publisher_id: Some("alice".into()),
            ..Envelope::to_topic("chat:room-7", "chat.message", json!({"text": "hi"}))
        })
        .expect("serializes");
        assert!(text.starts_with(r#"{"topic":"chat:room-7""#), "{text}");
        assert!(!text.contains("userId"), "{text}");
        let back: Envelope = serde_json::from_str(&text).expect("parses");
        assert_eq!(back.topic.as_deref(), Some("chat:room-7"));
        assert_eq!(back.publisher_id.as_deref(), Some("alice"));
        assert!(!back.is_broadcast());
        // Neither a user nor a topic: parsed, then refused by the admission rules.
        let neither: Envelope =
            serde_json::from_str(r#"{"eventType":"a.b","data":{}}"#).expect("parses");
        assert!(neither.user_id.is_empty() && neither.topic.is_none());
    }
}
