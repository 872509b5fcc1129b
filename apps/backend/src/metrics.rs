//! What `GET /metrics` reports, in the Prometheus text format.

use std::{
    collections::HashSet,
    sync::{Mutex, PoisonError, atomic::AtomicU64},
};

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Event types get their own label value up to this many; the rest count as `other`, so a
/// publisher cannot blow up the number of series.
const MAX_EVENT_TYPES: usize = 64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub event_type: String,
}

/// Ordered from least to most telling: when two histories resume differently, the
/// stream counts as the greater.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelValue)]
#[allow(non_camel_case_types)] // Label values are written as they are spelled.
pub enum ResumeOutcome {
    /// No cursor: the stream started at the head.
    fresh,
    /// The cursor was already at the head.
    up_to_date,
    /// Missed events were replayed from history.
    replayed,
    /// History could not fill the gap: `stream.resync` was sent.
    resync,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResumeLabels {
    pub outcome: ResumeOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// The HTTP layer that carries a stream (see `direct` and `routes::stream`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)] // Label values are written as they are spelled.
pub enum Carrier {
    /// Served straight off a fresh connection.
    direct,
    /// Served by actix-web, on a connection that carried other requests first.
    actix,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CarrierLabels {
    pub carrier: Carrier,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabels {
    pub command: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    /// The route pattern, never the raw path (which could carry ids or tokens).
    pub route: String,
    pub status: u16,
}

/// Every metric of one instance. Cheap to update from any thread.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub streams_open: Gauge,
    /// Streams this instance may hold: `MAX_STREAMS`, or fewer if the open-file limit
    /// does not allow it.
    pub streams_max: Gauge,
    pub streams_opened: Counter,
    pub streams_closed: Counter,
    pub slow_consumer_disconnects: Counter,
    pub events_published: Family<EventLabels, Counter>,
    pub events_delivered: Family<EventLabels, Counter>,
    /// From `publishedAt` to the frame being handed to the connection, live events only:
    /// one observation per batch of streams written together (a dispatcher pass, a
    /// user's streams), not per stream.
    pub delivery_latency: Histogram,
    pub redis_reconnects: Counter,
    pub probe_round_trip: Gauge<f64, AtomicU64>,
    pub resumes: Family<ResumeLabels, Counter>,
    pub http_requests: Family<HttpLabels, Counter>,
    /// Messages from Redis dropped by the relay, by why.
    pub relay_rejected: Family<ReasonLabels, Counter>,
    /// Stream requests refused for a limit, by which.
    pub streams_refused: Family<ReasonLabels, Counter>,
    /// Streams that started, by the HTTP layer that carries them.
    pub streams_carried: Family<CarrierLabels, Counter>,
    /// Messages the relay received from Redis, by kind (see `bus::redis::Relay`).
    pub relay_received: Family<KindLabels, Counter>,
    /// Users whose shard channel this instance is subscribed to.
    pub subscriptions: Gauge,
    /// `SSUBSCRIBE` and `SUNSUBSCRIBE` commands sent, by command.
    pub subscription_commands: Family<CommandLabels, Counter>,
    /// Batches of arrivals subscribed (at most one per `subscriptions::BATCH_WINDOW`).
    pub subscription_batches: Counter,
    /// Times the Redis Cluster's slots were seen to have moved (reshard, failover).
    pub slots_moved: Counter,
    /// Times arriving users overflowed their queue (see `hub::Hub::missed_arrivals`).
    pub arrivals_missed: Counter,
    /// Instances of the fleet heard from (this one included).
    pub fleet_instances: Gauge,
    /// Streams this instance shed to balance the fleet.
    pub rebalance_shed: Counter,
    /// Users in topics this instance holds in the presence engine.
    pub presence_entries: Gauge,
    /// Users who arrived in a topic (counted by the instance whose change made it so).
    pub presence_joins: Counter,
    /// Users who left a topic, by why (`closed`, `timeout`).
    pub presence_leaves: Family<ReasonLabels, Counter>,
    /// Instances that stopped beating swept by this one (per partition).
    pub presence_sweeps: Counter,
    /// Partitions where Redis did not hold this instance's presence, put right.
    pub presence_resyncs: Counter,
    seen_event_types: Mutex<HashSet<String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut metrics = Self {
            registry: Registry::default(),
            streams_open: Gauge::default(),
            streams_max: Gauge::default(),
            streams_opened: Counter::default(),
            streams_closed: Counter::default(),
            slow_consumer_disconnects: Counter::default(),
            events_published: Family::default(),
            events_delivered: Family::default(),
            delivery_latency: Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            redis_reconnects: Counter::default(),
            probe_round_trip: Gauge::default(),
            resumes: Family::default(),
            http_requests: Family::default(),
            relay_rejected: Family::default(),
            streams_refused: Family::default(),
            streams_carried: Family::default(),
            relay_received: Family::default(),
            subscriptions: Gauge::default(),
            subscription_commands: Family::default(),
            subscription_batches: Counter::default(),
            slots_moved: Counter::default(),
            arrivals_missed: Counter::default(),
            fleet_instances: Gauge::default(),
            rebalance_shed: Counter::default(),
            presence_entries: Gauge::default(),
            presence_joins: Counter::default(),
            presence_leaves: Family::default(),
            presence_sweeps: Counter::default(),
            presence_resyncs: Counter::default(),
            seen_event_types: Mutex::new(HashSet::new()),
        };
        let r = &mut metrics.registry;
        r.register(
            "sse_streams_open",
            "Event streams open now",
            metrics.streams_open.clone(),
        );
        r.register(
            "sse_streams_max",
            "Streams this instance may hold: MAX_STREAMS, or fewer if the open-file limit \
             does not allow it",
            metrics.streams_max.clone(),
        );
        r.register(
            "sse_streams_opened",
            "Event streams opened",
            metrics.streams_opened.clone(),
        );
        r.register(
            "sse_streams_closed",
            "Event streams closed",
            metrics.streams_closed.clone(),
        );
        r.register(
            "sse_slow_consumer_disconnects",
            "Streams closed because their client stopped reading and the queue filled",
            metrics.slow_consumer_disconnects.clone(),
        );
        r.register(
            "events_published",
            "Events accepted by this instance, by type",
            metrics.events_published.clone(),
        );
        r.register(
            "events_delivered",
            "Events written to streams on this instance (live and replayed), by type",
            metrics.events_delivered.clone(),
        );
        r.register(
            "event_delivery_latency_seconds",
            "Time from publication to the frame reaching the connections, live events, one \
             observation per batch of streams written together",
            metrics.delivery_latency.clone(),
        );
        r.register(
            "redis_reconnects",
            "Reconnections of the Redis subscriber",
            metrics.redis_reconnects.clone(),
        );
        r.register(
            "redis_probe_round_trip_seconds",
            "Round trip of the last subscription probe through Redis",
            metrics.probe_round_trip.clone(),
        );
        r.register(
            "sse_resumes",
            "Streams opened, by how they resumed",
            metrics.resumes.clone(),
        );
        r.register(
            "http_requests",
            "HTTP requests, by method, route and status",
            metrics.http_requests.clone(),
        );
        r.register(
            "relay_messages_rejected",
            "Messages from Redis dropped because they break the event rules, by reason",
            metrics.relay_rejected.clone(),
        );
        r.register(
            "sse_streams_refused",
            "Stream requests refused by a limit (user_limit, instance_full), by reason",
            metrics.streams_refused.clone(),
        );
        r.register(
            "sse_streams_carried",
            "Streams that started, by the HTTP layer carrying them (direct: ~5 KiB each; \
             actix: ~20 KiB, a stream asked for on a kept-alive connection)",
            metrics.streams_carried.clone(),
        );
        r.register(
            "relay_messages_received",
            "Messages received from Redis, by kind (user: a user's shard channel; broadcast; \
             legacy: the original design's user-events and system-events; control; probe)",
            metrics.relay_received.clone(),
        );
        r.register(
            "redis_subscriptions",
            "Users whose shard channel this instance is subscribed to",
            metrics.subscriptions.clone(),
        );
        r.register(
            "redis_subscription_commands",
            "SSUBSCRIBE and SUNSUBSCRIBE commands sent (each covers a batch of users)",
            metrics.subscription_commands.clone(),
        );
        r.register(
            "redis_subscription_batches",
            "Batches of arriving users subscribed (at most one per 50 ms)",
            metrics.subscription_batches.clone(),
        );
        r.register(
            "redis_slots_moved",
            "Times the Redis Cluster's slots were seen to have moved (reshard, failover): \
             subscriptions renewed and streams caught up",
            metrics.slots_moved.clone(),
        );
        r.register(
            "hub_arrivals_missed",
            "Times users arrived faster than the subscriptions took them, so that the queue \
             of arrivals was full: the subscriptions then took every user holding a stream",
            metrics.arrivals_missed.clone(),
        );
        r.register(
            "fleet_instances",
            "Instances of the fleet heard from in the last 10 s, this one included",
            metrics.fleet_instances.clone(),
        );
        r.register(
            "rebalance_shed_streams",
            "Streams this instance closed (each told to reconnect elsewhere) because it held \
             more than REBALANCE_ABOVE times the fleet's mean",
            metrics.rebalance_shed.clone(),
        );
        r.register(
            "presence_entries",
            "Users in topics this instance holds in the presence engine",
            metrics.presence_entries.clone(),
        );
        r.register(
            "presence_joins",
            "Users who arrived in a topic, counted by the instance whose change made it so",
            metrics.presence_joins.clone(),
        );
        r.register(
            "presence_leaves",
            "Users who left a topic, by reason (closed: their last stream closed; timeout: \
             their instance stopped beating and this one swept it)",
            metrics.presence_leaves.clone(),
        );
        r.register(
            "presence_sweeps",
            "Instances that stopped beating whose presence this one swept, per partition",
            metrics.presence_sweeps.clone(),
        );
        r.register(
            "presence_resyncs",
            "Partitions where Redis did not hold this instance's presence (a restart, a \
             failover, a sweep while it stalled), put right",
            metrics.presence_resyncs.clone(),
        );
        metrics
    }

    pub fn relay_received(&self, kind: &'static str) {
        self.relay_received
            .get_or_create(&KindLabels { kind })
            .inc();
    }

    pub fn subscription_command(&self, command: &'static str) {
        self.subscription_commands
            .get_or_create(&CommandLabels { command })
            .inc();
    }

    pub fn stream_carried(&self, carrier: Carrier) {
        self.streams_carried
            .get_or_create(&CarrierLabels { carrier })
            .inc();
    }

    /// The label for `event_type`, or `other` once too many types have been seen.
    pub fn event_labels(&self, event_type: &str) -> EventLabels {
        let mut seen = self
            .seen_event_types
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let known = seen.contains(event_type) || {
            seen.len() < MAX_EVENT_TYPES && seen.insert(event_type.to_string())
        };
        EventLabels {
            event_type: if known { event_type } else { "other" }.to_string(),
        }
    }

    pub fn relay_rejected(&self, reason: &'static str) {
        self.relay_rejected
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Counts `users` leaving topics for `reason`.
    pub fn presence_left(&self, reason: &'static str, users: u64) {
        if users > 0 {
            self.presence_leaves
                .get_or_create(&ReasonLabels { reason })
                .inc_by(users);
        }
    }

    pub fn stream_refused(&self, reason: &'static str) {
        self.streams_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn resumed(&self, outcome: ResumeOutcome) {
        self.resumes.get_or_create(&ResumeLabels { outcome }).inc();
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

/// The `method` label of a request: the standard methods by name, anything else (which
/// a client can make up at will) as `other`, so that clients cannot add series.
pub fn method_label(method: &str) -> &'static str {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
    ];
    KNOWN
        .into_iter()
        .find(|known| *known == method)
        .unwrap_or("other")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_up_methods_share_one_label() {
        assert_eq!(method_label("GET"), "GET");
        assert_eq!(method_label("AAAA"), "other");
        assert_eq!(method_label("get"), "other");
        assert_eq!(method_label(""), "other");
    }

    #[test]
    fn exposes_counters_in_the_text_format() {
        let metrics = Metrics::new();
        metrics.streams_opened.inc();
        metrics
            .events_published
            .get_or_create(&metrics.event_labels("orders.shipped"))
            .inc();
        metrics.resumed(ResumeOutcome::replayed);
        let text = metrics.encode();
        assert!(text.contains("sse_streams_opened_total 1"), "{text}");
        assert!(
            text.contains(r#"events_published_total{event_type="orders.shipped"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"sse_resumes_total{outcome="replayed"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("event_delivery_latency_seconds_bucket"),
            "{text}"
        );
    }

    #[test]
    fn event_types_beyond_the_cap_are_counted_as_other() {
        let metrics = Metrics::new();
        for i in 0..MAX_EVENT_TYPES {
            assert_eq!(
                metrics.event_labels(&format!("t.e{i}")).event_type,
                format!("t.e{i}")
            );
        }
        assert_eq!(metrics.event_labels("t.one-too-many").event_type, "other");
        assert_eq!(
            metrics.event_labels("t.e0").event_type,
            "t.e0",
            "known types keep their label"
        );
    }
}
