//! The rules every event and control message is held to, whichever way it came in: the
//! publish API, a message another service wrote straight to Redis (`PUBLISH
//! user-events`, a control message), or an entry read back from a history. Written once,
//! here: the API turns a [`Breach`] into a 4xx (`error.rs`); everything read off Redis
//! goes through a [`Gate`], which drops what breaks a rule, counts it in
//! `relay_messages_rejected_total{reason}` and logs the first of each kind.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use events::{
    Control, Envelope, MAX_PAYLOAD_DEPTH, MAX_REASON_CHARS, Payload, PresenceChange, event_type,
};

use crate::metrics::Metrics;

/// Why an event or a control message may not be acted on. Its text says what the rule
/// is, for the [`Breach::field`] it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Breach {
    /// Not JSON of the expected shape (or not text at all).
    #[error("not a message of the expected shape")]
    Unreadable,
    /// The event's `data` is larger than `MAX_EVENT_BYTES`.
    #[error("event data exceeds {limit} bytes")]
    TooLarge { limit: u64 },
    /// The user id breaks the user id rule (and is not the broadcast's `*`).
    #[error("{0}")]
    BadUserId(&'static str),
    /// The topic breaks the topic name rule, or comes with a user id.
    #[error("{0}")]
    BadTopic(&'static str),
    /// The event type breaks the naming rule, or claims the server's `stream.` domain.
    #[error(
        "must be lowercase dot-separated segments like `orders.shipped`, at most 64 \
         bytes, outside the reserved `stream.` domain"
    )]
    BadEventType,
    /// The data nests deeper than [`MAX_PAYLOAD_DEPTH`].
    #[error("nests arrays and objects more than {MAX_PAYLOAD_DEPTH} deep")]
    TooDeep,
    /// A disconnect reason that is too long or holds control characters.
    #[error("must be at most {MAX_REASON_CHARS} characters, without control characters")]
    BadReason,
}

impl Breach {
    /// The `reason` label of `relay_messages_rejected_total`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Unreadable => "not_an_envelope",
            Self::TooLarge { .. } => "too_large",
            Self::BadUserId(_) => "bad_user_id",
            Self::BadEventType => "bad_event_type",
            Self::TooDeep => "too_deep",
            Self::BadReason => "bad_reason",
            Self::BadTopic(_) => "bad_topic",
        }
    }

    /// The request field a client should correct.
    pub fn field(self) -> &'static str {
        match self {
            Self::Unreadable => "body",
            Self::TooLarge { .. } | Self::TooDeep => "data",
            Self::BadUserId(_) => "userId",
            Self::BadEventType => "eventType",
            Self::BadReason => "reason",
            Self::BadTopic(_) => "topic",
        }
    }

    /// How many kinds there are.
    const KINDS: usize = 7;

    /// The kind's place among the [`Breach::KINDS`].
    fn index(self) -> usize {
        match self {
            Self::Unreadable => 0,
            Self::TooLarge { .. } => 1,
            Self::BadUserId(_) => 2,
            Self::BadEventType => 3,
            Self::TooDeep => 4,
            Self::BadReason => 5,
            Self::BadTopic(_) => 6,
        }
    }
}

/// The limits the rules are checked against (from the settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    pub max_event_bytes: u64,
}

impl Rules {
    /// Whether `envelope` may be delivered: to a valid user id, to everyone, or (with no
    /// user id) to a valid topic; its type and data by [`Rules::event`].
    pub fn envelope(&self, envelope: &Envelope) -> Result<(), Breach> {
        match &envelope.topic {
            Some(topic) if envelope.user_id.is_empty() => {
                events::validate_topic(topic).map_err(Breach::BadTopic)?;
            }
            Some(_) => {
                return Err(Breach::BadTopic(
                    "an event has a userId or a topic, not both",
                ));
            }
            None if envelope.user_id == events::BROADCAST_USER_ID => {}
            None => events::validate_user_id(&envelope.user_id).map_err(Breach::BadUserId)?,
        }
        self.event(&envelope.event_type, &envelope.data)
    }

    /// Whether `envelope` is a presence event as the server publishes it (`stream.joined`
    /// or `stream.left` to a valid topic, about a valid user): the only events of the
    /// reserved domain a history or a channel may carry. No publisher can send one
    /// through the API ([`Rules::event`] refuses the domain).
    pub fn presence_change(&self, envelope: &Envelope) -> Result<(), Breach> {
        let (Some(topic), true) = (&envelope.topic, envelope.user_id.is_empty()) else {
            return Err(Breach::BadTopic("a presence event is a topic's"));
        };
        events::validate_topic(topic).map_err(Breach::BadTopic)?;
        let change: PresenceChange = envelope.data.parse().map_err(|_| Breach::Unreadable)?;
        events::validate_user_id(&change.user_id).map_err(Breach::BadUserId)
    }

    /// Whether an event of `event_type` may carry `data`.
    pub fn event(&self, event_type: &str, data: &Payload) -> Result<(), Breach> {
        if u64::try_from(data.json().len()).unwrap_or(u64::MAX) > self.max_event_bytes {
            return Err(Breach::TooLarge {
                limit: self.max_event_bytes,
            });
        }
        if data.depth() > MAX_PAYLOAD_DEPTH {
            return Err(Breach::TooDeep);
        }
        if !event_type::is_publishable(event_type) {
            return Err(Breach::BadEventType);
        }
        Ok(())
    }

    /// Whether every stream of `user_id` may be ended with `reason`.
    pub fn disconnect(&self, user_id: &str, reason: &str) -> Result<(), Breach> {
        events::validate_user_id(user_id).map_err(Breach::BadUserId)?;
        if reason.chars().count() > MAX_REASON_CHARS || reason.chars().any(char::is_control) {
            return Err(Breach::BadReason);
        }
        Ok(())
    }
}

/// Room for an envelope's fields around its `data`: the longest user id, event type and
/// server id, two 20-digit numbers, a 13-digit time and the keys, with room to spare.
/// Bytes longer than the largest event plus this are refused before they are parsed.
const ENVELOPE_OVERHEAD: u64 = (2 * events::MAX_USER_ID_CHARS
    + events::MAX_TOPIC_CHARS
    + event_type::MAX_LEN
    + crate::config::MAX_SERVER_ID_CHARS
    + 512) as u64;

/// Where bytes read off Redis came from, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A Pub/Sub message (an event channel, or the control channel).
    Message,
    /// An entry of a history (a Redis Stream).
    History,
}

/// The gate for bytes read off Redis: untrusted, since other services write there too.
/// What passes is what the API would have accepted; what does not is dropped, counted
/// and (the first of each kind) logged, and never acted on. A cheap `Clone`.
#[derive(Debug, Clone)]
pub struct Gate {
    rules: Rules,
    metrics: Arc<Metrics>,
    /// Whether a breach of each kind was logged already.
    logged: Arc<[AtomicBool; Breach::KINDS]>,
}

impl Gate {
    pub fn new(rules: Rules, metrics: Arc<Metrics>) -> Self {
        Self {
            rules,
            metrics,
            logged: Arc::new(std::array::from_fn(|_| AtomicBool::new(false))),
        }
    }

    /// The envelope in `bytes`, if it may be delivered.
    pub fn envelope(&self, bytes: &[u8], source: Source) -> Option<Envelope> {
        self.admitted(self.check_envelope(bytes), bytes, source)
    }

    /// The control message in `bytes`, if it may be carried out.
    pub fn control(&self, bytes: &[u8]) -> Option<Control> {
        let checked = serde_json::from_slice::<Control>(bytes)
            .map_err(|_| Breach::Unreadable)
            .and_then(|control| match &control {
                Control::Disconnect { user_id, reason } => {
                    self.rules.disconnect(user_id, reason).map(|()| control)
                }
            });
        self.admitted(checked, bytes, Source::Message)
    }

    fn check_envelope(&self, bytes: &[u8]) -> Result<Envelope, Breach> {
        let most = self.rules.max_event_bytes.saturating_add(ENVELOPE_OVERHEAD);
        if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > most {
            return Err(Breach::TooLarge {
                limit: self.rules.max_event_bytes,
            });
        }
        let envelope = serde_json::from_slice::<Envelope>(bytes).map_err(|_| Breach::Unreadable)?;
        if event_type::is_presence(&envelope.event_type) {
            self.rules.presence_change(&envelope)?;
        } else {
            self.rules.envelope(&envelope)?;
        }
        Ok(envelope)
    }

    fn admitted<T>(&self, checked: Result<T, Breach>, bytes: &[u8], source: Source) -> Option<T> {
        match checked {
            Ok(admitted) => Some(admitted),
            Err(breach) => {
                self.reject(breach, bytes, source);
                None
            }
        }
    }

    fn reject(&self, breach: Breach, bytes: &[u8], source: Source) {
        self.metrics.relay_rejected(breach.label());
        if !self.logged[breach.index()].swap(true, Ordering::Relaxed) {
            let sample: String = String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
                .escape_debug()
                .collect();
            tracing::warn!(
                reason = breach.label(),
                ?source,
                sample,
                "dropped bytes from Redis that break the event rules (counted in \
                 relay_messages_rejected_total; only the first of each kind is logged)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{Capacity, Hub, Notice};
    use bytes::BytesMut;
    use futures_util::{FutureExt, StreamExt};

    fn gate() -> Gate {
        Gate::new(
            Rules {
                max_event_bytes: 1024,
            },
            Arc::default(),
        )
    }

    proptest::proptest! {
        /// Whatever bytes arrive, the gate never panics, and whatever it admits reaches
        /// an open stream as a frame that encodes: no message can break a stream.
        #[test]
        fn no_message_can_break_a_stream(
            user in "[a-z*]{1,3}|\\PC{0,4}",
            event_type in "[a-z.\\-_]{0,12}|\\PC{0,12}",
            data in "\\PC{0,40}",
            raw in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
        ) {
            let json = serde_json::json!({"userId": user, "eventType": event_type, "data": data}).to_string();
            let gate = gate();
            let hub = Hub::new(Capacity::with_queue(8), Arc::default());
            let mut stream = hub.open(&user, &Default::default()).map_err(|e| proptest::test_runner::TestCaseError::fail(e.to_string()))?;
            let mut admitted = 0;
            for bytes in [json.as_bytes(), &raw[..]] {
                if let Some(envelope) = gate.envelope(bytes, Source::Message) {
                    proptest::prop_assert!(event_type::is_publishable(&envelope.event_type));
                    hub.deliver(&envelope);
                    admitted += usize::from(envelope.is_broadcast() || envelope.user_id == user);
                }
            }
            let mut framed = 0;
            while let Some(Some(Notice::Event(published))) = stream.next().now_or_never() {
                let mut out = BytesMut::new();
                proptest::prop_assert!(published.frame(Some("1-1.0-0".into())).encode(&mut out));
                framed += 1;
            }
            proptest::prop_assert_eq!(framed, admitted, "every admitted event for the stream reached it");
            proptest::prop_assert_eq!(hub.stream_count(), 1, "the stream is still open");
        }
    }

    #[test]
    fn only_a_topics_well_formed_presence_change_may_use_the_reserved_names() {
        let gate = gate();
        let joined = br#"{"topic":"room:1","eventType":"stream.joined","data":{"userId":"alice","reason":"opened"}}"#;
        assert!(gate.envelope(joined, Source::History).is_some());
        for bad in [
            &br#"{"userId":"alice","eventType":"stream.joined","data":{"userId":"a","reason":"opened"}}"#[..],
            br#"{"topic":"room 1","eventType":"stream.left","data":{"userId":"a","reason":"closed"}}"#,
            br#"{"topic":"room:1","eventType":"stream.left","data":{"userId":"a","reason":"bored"}}"#,
            br#"{"topic":"room:1","eventType":"stream.left","data":{"userId":"a b","reason":"closed"}}"#,
            br#"{"topic":"room:1","eventType":"stream.left","data":"alice"}"#,
            br#"{"topic":"room:1","eventType":"stream.opened","data":{}}"#,
        ] {
            assert!(
                gate.envelope(bad, Source::Message).is_none(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn the_original_designs_message_is_admitted_and_spoofs_and_breaks_are_not() {
        let gate = gate();
        let ok = br#"{"userId":"123","eventType":"snapshots.generated","data":{}}"#;
        assert!(gate.envelope(ok, Source::Message).is_some());
        for (bad, breach) in [
            (
                &br#"{"userId":"*","eventType":"a\nb","data":{}}"#[..],
                "bad_event_type",
            ),
            (
                br#"{"userId":"u","eventType":"stream.resync","data":{}}"#,
                "bad_event_type",
            ),
            (br#"{"userId":"u u","eventType":"a.b"}"#, "bad_user_id"),
            (
                br#"{"userId":"u","eventType":"a.b","data":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}"#,
                "too_deep",
            ),
            (b"\xff\xfe", "not_an_envelope"),
        ] {
            assert!(
                gate.envelope(bad, Source::Message).is_none(),
                "{}",
                String::from_utf8_lossy(bad)
            );
            let counted = gate
                .metrics
                .relay_rejected
                .get_or_create(&crate::metrics::ReasonLabels { reason: breach })
                .get();
            assert!(counted > 0, "{breach}");
        }
        let big = format!(
            r#"{{"userId":"u","eventType":"a.b","data":"{}"}}"#,
            "x".repeat(1023)
        );
        assert!(gate.envelope(big.as_bytes(), Source::History).is_none());
    }

    #[test]
    fn control_messages_are_held_to_the_disconnect_apis_rules() {
        let gate = gate();
        let ok = br#"{"action":"disconnect","userId":"alice","reason":"signed out"}"#;
        assert_eq!(
            gate.control(ok),
            Some(Control::Disconnect {
                user_id: "alice".into(),
                reason: "signed out".into()
            })
        );
        let long = format!(
            r#"{{"action":"disconnect","userId":"alice","reason":"{}"}}"#,
            "x".repeat(MAX_REASON_CHARS + 1)
        );
        for bad in [
            br#"{"action":"disconnect","userId":"a b","reason":"x"}"#.to_vec(),
            br#"{"action":"disconnect","userId":"","reason":"x"}"#.to_vec(),
            br#"{"action":"disconnect","userId":"alice","reason":"a\u0000b"}"#.to_vec(),
            long.into_bytes(),
            br#"{"action":"explode","userId":"alice"}"#.to_vec(),
        ] {
            assert_eq!(
                gate.control(&bad),
                None,
                "{}",
                String::from_utf8_lossy(&bad)
            );
        }
    }

    #[test]
    fn the_largest_event_the_api_accepts_passes_every_gate() {
        let max_event_bytes = 1024;
        // `data` of exactly the limit, once encoded (a string: its quotes count).
        let data = serde_json::Value::String("x".repeat(max_event_bytes as usize - 2));
        let data = events::Payload::from(data);
        let envelope = Envelope {
            id: Some(u64::MAX),
            epoch: Some(u64::MAX),
            server_id: Some("s".repeat(crate::config::MAX_SERVER_ID_CHARS)),
            published_at: Some(9_999_999_999_999),
            ..Envelope::new(
                "u".repeat(events::MAX_USER_ID_CHARS),
                format!("a.{}", "b".repeat(event_type::MAX_LEN - 2)),
                data,
            )
        };
        let bytes = serde_json::to_vec(&envelope).expect("serializes");
        let gate = Gate::new(Rules { max_event_bytes }, Arc::default());
        assert!(
            gate.envelope(&bytes, Source::Message).is_some(),
            "{} bytes",
            bytes.len()
        );
    }
}
