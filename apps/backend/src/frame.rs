//! SSE frames: one message of a stream before a carrier writes it, and an event as the
//! hub fans it out, its `event:` and `data:` encoded once for every stream it reaches.

use std::sync::OnceLock;

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use events::{Envelope, Position};
use prometheus_client::metrics::counter::Counter;
use tokio_util::codec::Encoder as _;

use crate::{clock::now_millis, metrics::Metrics, sequence::Scope};

/// An event as the hub fans it out: its position and its `event:` and `data:` fields,
/// already encoded. The `id:` is per stream (it carries the stream's whole cursor).
#[derive(Debug)]
pub struct Published {
    /// Which history it is in: a user's, the broadcasts', or a topic's.
    pub scope: Scope,
    /// Absent for messages that bypassed the backend (a plain `PUBLISH`).
    pub position: Option<Position>,
    pub event_type: ByteString,
    pub data: ByteString,
    /// When it was accepted (ms since the epoch), for the delivery latency.
    pub published_at: Option<u64>,
    /// The `events_delivered` counter of its type, resolved once per event by the hub
    /// rather than once per stream it reaches.
    pub delivered: Option<Counter>,
    /// Its frame without the `id:` line, named and unnamed, encoded the first time a
    /// stream is written to directly (see `hub::outlet`): every such stream then writes
    /// its own `id:` line and these shared bytes.
    bodies: [OnceLock<Option<Bytes>>; 2],
}

impl Published {
    pub fn new(envelope: &Envelope) -> Self {
        // An Envelope is strings, numbers and a JSON value: it always serializes.
        let json = serde_json::to_string(envelope).unwrap_or_default();
        Self {
            scope: match &envelope.topic {
                Some(topic) => Scope::Topic(events::topic_tag(topic)),
                None if envelope.is_broadcast() => Scope::Broadcast,
                None => Scope::User,
            },
            position: envelope.position(),
            event_type: envelope.event_type.as_str().into(),
            data: json.into(),
            published_at: envelope.published_at,
            delivered: None,
            bodies: Default::default(),
        }
    }

    /// The frame's `event:` (when `named`) and `data:` lines and the blank line that ends
    /// it: exactly what [`Frame::encode`] writes after the `id:` line. `None` when the
    /// frame cannot be framed (and so is dropped, as `encode` drops it).
    pub fn body(&self, named: bool) -> Option<&Bytes> {
        self.bodies[usize::from(named)]
            .get_or_init(|| {
                let mut frame = self.frame(None);
                if !named {
                    frame = frame.unnamed();
                }
                let mut out = BytesMut::new();
                frame.encode(&mut out).then(|| out.freeze())
            })
            .as_ref()
    }

    /// Counts this event as delivered live to `streams` connections, with its delivery
    /// latency. Called once for all the streams one dispatcher pass or one relay call
    /// wrote it to: the counters are shared by every worker, and one update per stream
    /// from two threads at once would make their cache line travel between cores for
    /// each. The latency is observed once per such batch (prometheus-client's histogram
    /// has no weighted observation), so `event_delivery_latency_seconds` counts batches.
    pub fn count_delivered(&self, metrics: &Metrics, streams: u64) {
        match &self.delivered {
            Some(counter) => {
                counter.inc_by(streams);
            }
            None => {
                metrics
                    .events_delivered
                    .get_or_create(&metrics.event_labels(&self.event_type))
                    .inc_by(streams);
            }
        }
        if let Some(at) = self.published_at {
            let latency = now_millis().saturating_sub(at) as f64 / 1000.0;
            metrics.delivery_latency.observe(latency);
        }
    }

    /// The SSE frame, with `id` if given.
    pub fn frame(&self, id: Option<String>) -> Frame {
        Frame {
            event: Some(self.event_type.clone()),
            id: id.map(ByteString::from),
            data: self.data.clone(),
        }
    }
}

impl Frame {
    /// Whether the frame's `event:` and `id:` can be written as SSE fields (hold no line
    /// break). Logs the ones that cannot, which are then dropped.
    pub fn is_framable(&self) -> bool {
        let framable = |field: &str| !field.contains(['\n', '\r']);
        let ok =
            self.event.as_deref().is_none_or(framable) && self.id.as_deref().is_none_or(framable);
        if !ok {
            let event = self.event.as_deref().unwrap_or_default();
            tracing::warn!(event = %event.escape_debug(), "dropped a frame that cannot be framed");
        }
        ok
    }

    /// The same frame without its `event:` field, for streams asked for with
    /// `unnamed=true`: an EventSource hands every such frame to `onmessage`, whatever the
    /// event's type (which the envelope in `data:` still says).
    pub fn unnamed(self) -> Self {
        Self {
            event: None,
            ..self
        }
    }
}

/// One SSE message as a stream sends it, before it is encoded for whichever HTTP layer
/// carries the stream (see `routes::stream` and `direct`). Cloning shares the `event:` and
/// `data:` fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The `event:` field; absent on a stream of unnamed frames.
    pub event: Option<ByteString>,
    pub id: Option<ByteString>,
    pub data: ByteString,
}

impl Frame {
    /// Appends the frame in `text/event-stream` form, as actix-web-lab's `Sse` writes it
    /// (both use russe's encoder). Returns false, appending nothing, for a frame that
    /// cannot be framed (a line break in its `event:` or `id:`): event types are checked
    /// where they enter (the API, the relay) and ids are cursors, so this is a last line
    /// of defence that drops the frame instead of breaking or killing the stream.
    pub fn encode(self, out: &mut BytesMut) -> bool {
        if !self.is_framable() {
            return false;
        }
        let message = russe::Message {
            data: self.data,
            event: self.event,
            id: self.id,
            retry: None,
        };
        let before = out.len();
        let encoded = russe::Encoder::default()
            .encode(russe::Event::Message(message), out)
            .is_ok();
        if !encoded {
            out.truncate(before);
        }
        encoded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_with_a_line_break_in_its_name_or_id_is_dropped_not_written() {
        for (event, id) in [("a\nb", None), ("a.b", Some("1\r\n")), ("a\rb", Some("1"))] {
            let mut out = BytesMut::from("before");
            let frame = Frame {
                event: Some(event.into()),
                id: id.map(ByteString::from),
                data: "{}".into(),
            };
            assert!(!frame.encode(&mut out), "{event:?}");
            assert_eq!(&out[..], b"before");
        }
    }

    #[test]
    fn an_id_line_and_the_shared_body_are_the_frame_byte_for_byte() {
        let envelope = events::Envelope {
            id: Some(3),
            epoch: Some(1),
            ..events::Envelope::new("alice", "a.b", serde_json::json!({"x": "1\n2"}))
        };
        let published = Published::new(&envelope);
        for named in [true, false] {
            let mut whole = BytesMut::new();
            let frame = published.frame(Some("1-3.0-0.00000000000000aa".into()));
            let frame = if named { frame } else { frame.unnamed() };
            assert!(frame.encode(&mut whole));
            let body = published.body(named).expect("framable");
            let mut pieces = b"id: 1-3.0-0.00000000000000aa\n".to_vec();
            pieces.extend_from_slice(body);
            assert_eq!(&whole[..], &pieces[..], "named: {named}");
        }
        let unframable = Published::new(&events::Envelope::new(
            "alice",
            "a\nb",
            serde_json::json!({}),
        ));
        assert!(unframable.body(true).is_none());
    }

    #[test]
    fn data_with_line_breaks_is_split_over_data_lines() {
        let mut out = BytesMut::new();
        let frame = Frame {
            event: Some("a.b".into()),
            id: None,
            data: "x\ny".into(),
        };
        assert!(frame.clone().encode(&mut out));
        assert_eq!(&out[..], b"event: a.b\ndata: x\ndata: y\n\n");
        let mut out = BytesMut::new();
        assert!(frame.unnamed().encode(&mut out));
        assert_eq!(&out[..], b"data: x\ndata: y\n\n", "no event: line");
    }
}
