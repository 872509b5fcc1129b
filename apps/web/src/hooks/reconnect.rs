//! The pure logic behind `use_events`: connection states, backoff and URLs. No browser
//! API is touched here, so all of it is unit-tested natively.

use std::{fmt, time::Duration};

/// Where an event stream stands, as a person would put it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnectionState {
    /// Opening the first connection.
    Connecting,
    /// Connected: events flow.
    Open,
    /// The connection was lost; a new one is on its way (the browser's or ours).
    Reconnecting,
    /// The browser is offline: the stream reconnects the moment it is back online.
    Offline,
    /// Closed on purpose (unmounted or `close()`d): no reconnection.
    Closed,
}

impl ConnectionState {
    pub fn label(self) -> &'static str {
        match self {
            Self::Connecting => "connecting",
            Self::Open => "open",
            Self::Reconnecting => "reconnecting",
            Self::Offline => "offline",
            Self::Closed => "closed",
        }
    }
}

impl fmt::Display for ConnectionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// What happened to the EventSource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// `open` fired.
    Opened,
    /// `error` fired and the browser will retry by itself (readyState CONNECTING).
    Interrupted,
    /// `error` fired and the browser gave up (readyState CLOSED, e.g. a 502 or 503
    /// during a deploy): only a new EventSource will reconnect.
    GaveUp,
    /// The owner closed it (`close()`, or unmounting).
    ClosedByOwner,
    /// The server ended the user's streams for good (`stream.disconnected`).
    ClosedByServer,
    /// The browser went offline (`offline` on the window).
    WentOffline,
    /// The browser is back online (`online` on the window).
    CameOnline,
}

/// The next state, and whether the hook must schedule a new EventSource itself.
pub fn next_state(current: ConnectionState, signal: Signal) -> (ConnectionState, bool) {
    match (current, signal) {
        // Nothing revives a stream closed for good: not the browser, not `reconnect()`.
        (ConnectionState::Closed, _) | (_, Signal::ClosedByOwner | Signal::ClosedByServer) => {
            (ConnectionState::Closed, false)
        }
        (_, Signal::Opened) => (ConnectionState::Open, false),
        (_, Signal::WentOffline) => (ConnectionState::Offline, false),
        // Back online: reconnect now rather than wait out a backoff. A stream that never
        // noticed it was offline keeps its connection.
        (ConnectionState::Offline, Signal::CameOnline) => (ConnectionState::Reconnecting, true),
        (state, Signal::CameOnline) => (state, false),
        // Offline, failures are expected: wait for `online` instead of retrying.
        (ConnectionState::Offline, Signal::Interrupted | Signal::GaveUp) => {
            (ConnectionState::Offline, false)
        }
        (_, Signal::Interrupted) => (ConnectionState::Reconnecting, false),
        (_, Signal::GaveUp) => (ConnectionState::Reconnecting, true),
    }
}

/// Exponential backoff with jitter, for reconnecting after the browser gave up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The delay before the first retry (before jitter).
    pub initial: Duration,
    /// The longest delay.
    pub max: Duration,
    /// How much the delay grows per failed attempt.
    pub factor: f64,
}

impl Default for Backoff {
    /// 500 ms, doubling, up to 15 s.
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(15),
            factor: 2.0,
        }
    }
}

impl Backoff {
    /// The delay before retry number `attempt` (0-based). `random` in [0, 1) spreads
    /// clients over the upper half of the delay, so that a fleet of browsers cut off
    /// by one failure does not reconnect in one wave.
    pub fn delay(&self, attempt: u32, random: f64) -> Duration {
        let exponent = i32::try_from(attempt.min(30)).unwrap_or(30);
        let full =
            (self.initial.as_secs_f64() * self.factor.powi(exponent)).min(self.max.as_secs_f64());
        let random = random.clamp(0.0, 1.0);
        Duration::from_secs_f64(full / 2.0 + full / 2.0 * random)
    }
}

/// The stream's URL: unnamed frames (every event type reaches one `message` listener),
/// the stream ticket's handle (EventSource cannot send a token in a header, and a token
/// never goes in a URL; the ticket's secret travels as a cookie) and, when resuming in a
/// new EventSource, the last event id (which it cannot send as a header either).
pub fn events_url(base: &str, ticket: &str, last_event_id: Option<&str>) -> String {
    let separator = if base.contains('?') { '&' } else { '?' };
    // Unnamed frames, so that events of every type reach the hook's one listener.
    let mut url = format!(
        "{base}{separator}unnamed=true&ticket={}",
        encode_component(ticket)
    );
    if let Some(id) = last_event_id.filter(|id| !id.is_empty()) {
        url.push_str("&lastEventId=");
        url.push_str(&encode_component(id));
    }
    url
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub fn encode_component(value: &str) -> String {
    let mut encoded = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_follows_the_event_source() {
        use ConnectionState::*;
        assert_eq!(next_state(Connecting, Signal::Opened), (Open, false));
        assert_eq!(next_state(Open, Signal::Interrupted), (Reconnecting, false));
        assert_eq!(
            next_state(Open, Signal::GaveUp),
            (Reconnecting, true),
            "we reconnect"
        );
        assert_eq!(next_state(Reconnecting, Signal::Opened), (Open, false));
        assert_eq!(next_state(Open, Signal::ClosedByOwner), (Closed, false));
        assert_eq!(
            next_state(Reconnecting, Signal::ClosedByServer),
            (Closed, false)
        );
        assert_eq!(
            next_state(Closed, Signal::GaveUp),
            (Closed, false),
            "closed stays closed"
        );
        assert_eq!(next_state(Closed, Signal::Opened), (Closed, false));
    }

    #[test]
    fn offline_waits_for_online_then_reconnects_at_once() {
        use ConnectionState::*;
        assert_eq!(next_state(Open, Signal::WentOffline), (Offline, false));
        assert_eq!(
            next_state(Offline, Signal::GaveUp),
            (Offline, false),
            "no retries while offline"
        );
        assert_eq!(next_state(Offline, Signal::Interrupted), (Offline, false));
        assert_eq!(
            next_state(Offline, Signal::CameOnline),
            (Reconnecting, true)
        );
        assert_eq!(next_state(Offline, Signal::Opened), (Open, false));
        assert_eq!(next_state(Closed, Signal::CameOnline), (Closed, false));
        assert_eq!(
            next_state(Open, Signal::CameOnline),
            (Open, false),
            "a healthy stream is kept"
        );
    }

    #[test]
    fn backoff_grows_caps_and_jitters_within_bounds() {
        let backoff = Backoff::default();
        assert_eq!(backoff.delay(0, 0.0), Duration::from_millis(250));
        assert_eq!(backoff.delay(0, 1.0), Duration::from_millis(500));
        assert_eq!(backoff.delay(1, 1.0), Duration::from_secs(1));
        assert_eq!(backoff.delay(3, 1.0), Duration::from_secs(4));
        assert_eq!(backoff.delay(20, 1.0), Duration::from_secs(15), "capped");
        assert_eq!(backoff.delay(u32::MAX, 0.0), Duration::from_millis(7500));
        let jittered = backoff.delay(2, 0.5);
        assert!(jittered > Duration::from_secs(1) && jittered < Duration::from_secs(2));
    }

    #[test]
    fn url_carries_the_ticket_and_the_resume_position() {
        assert_eq!(
            events_url("/api/events", "a.b-c_d", None),
            "/api/events?unnamed=true&ticket=a.b-c_d"
        );
        assert_eq!(
            events_url("/api/events", "t", Some("17-3.0-0")),
            "/api/events?unnamed=true&ticket=t&lastEventId=17-3.0-0"
        );
        assert_eq!(
            events_url("/e?x=1", "t", Some("")),
            "/e?x=1&unnamed=true&ticket=t"
        );
        assert_eq!(encode_component("a b+c/=é"), "a%20b%2Bc%2F%3D%C3%A9");
    }
}
