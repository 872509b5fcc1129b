//! `use_presence`: who is online in the topic a page shows, kept live.
//!
//! The page says which topic to follow once its stream carries it (`follow`), and hands
//! over that topic's events as `use_events` delivers them (`hear`): the hook needs the
//! stream, and the stream's handler needs the hook, so the page joins the two. The hook
//! asks the server who is in the topic (`GET /api/topics/{topic}/presence`), then applies
//! the topic's `stream.joined` and `stream.left` after the answer's head (see `online`).
//! After a `stream.resync` of the topic some of them were missed: it asks again. Why the
//! list cannot be told is in `error`; a failure that may pass (the server away, a limit)
//! is asked again after [`RETRY`].

use std::time::Duration;

use events::{Presence, PresenceChange, PresentUser, TopicHead, event_type};
use leptos::{prelude::*, task::spawn_local};

use super::{online::Online, use_events::ReceivedEvent};
use crate::api::{self, ApiFailure};

/// How long after a failure that may pass the list is asked for again.
pub const RETRY: Duration = Duration::from_secs(3);

/// What [`use_presence`] returns: read-only signals, and the actions that feed them.
#[derive(Debug, Clone, Copy)]
pub struct UsePresenceReturn {
    /// Who is in the topic followed; `None` while none is.
    pub online: Signal<Option<Online>>,
    /// Why the list cannot be told, or may be out of date, for people.
    pub error: Signal<Option<String>>,
    asker: Asker,
}

impl UsePresenceReturn {
    /// Follows `topic` from now on, once the stream carries it (its arrivals and departures
    /// reach [`Self::hear`] from then on): asks who is in it. `None` follows nothing.
    pub fn follow(&self, topic: Option<String>) {
        let followed = self
            .asker
            .online
            .with_untracked(|online| online.as_ref().map(|o| o.topic().to_string()));
        if followed == topic {
            return;
        }
        self.asker.error.set(None);
        self.asker.online.set(topic.clone().map(Online::new));
        if let Some(topic) = topic {
            self.asker.ask(topic);
        }
    }

    /// One event of the stream: an arrival or departure in the topic followed updates the
    /// list, a resync of it asks again; anything else is not this hook's.
    pub fn hear(&self, event: &ReceivedEvent) {
        let Some(topic) = event.topic() else {
            return;
        };
        let followed = self
            .asker
            .online
            .with_untracked(|online| online.as_ref().is_some_and(|o| o.topic() == topic));
        if !followed {
            return;
        }
        let kind = event.event_type.as_str();
        if kind == event_type::STREAM_RESYNC {
            self.asker.ask(topic);
            return;
        }
        if !event_type::is_presence(kind) {
            return;
        }
        let Ok(change) = event.envelope.data.parse::<PresenceChange>() else {
            return;
        };
        let envelope = &event.envelope;
        // Since the announcement, or (an event without its time) since it arrived.
        let since = envelope.published_at.unwrap_or(event.received_at as u64);
        let at = envelope
            .epoch
            .zip(envelope.id)
            .map(|(epoch, id)| TopicHead { epoch, id });
        self.asker.online.update(|online| {
            let Some(online) = online else { return };
            if kind == event_type::STREAM_JOINED {
                let user_id = change.user_id;
                online.joined(PresentUser { user_id, since }, at);
            } else {
                online.left(&change.user_id, at);
            }
        });
    }
}

/// Who is online in the topic a page follows, asked of the server with `token` (a user
/// whose grants allow the topic), then kept live from the events the page hands over.
pub fn use_presence(token: StoredValue<String>) -> UsePresenceReturn {
    let asker = Asker {
        token,
        online: RwSignal::new(None),
        error: RwSignal::new(None),
        asks: StoredValue::new(0),
    };
    UsePresenceReturn {
        online: asker.online.into(),
        error: asker.error.into(),
        asker,
    }
}

/// The hook's state, and how it asks the server. Its answers may come after the page is
/// gone (the signals with it): those are dropped.
#[derive(Debug, Clone, Copy)]
struct Asker {
    token: StoredValue<String>,
    online: RwSignal<Option<Online>>,
    error: RwSignal<Option<String>>,
    /// Numbers the asks, so that only the latest one's answer counts, whatever the topic.
    asks: StoredValue<u64>,
}

impl Asker {
    /// Asks who is in `topic`, if it is still the one followed.
    fn ask(self, topic: String) {
        let Some(ask) = self.asks.try_update_value(|asks| {
            *asks += 1;
            *asks
        }) else {
            return;
        };
        let asked = self.online.try_update(|online| match online {
            Some(online) if online.topic() == topic => {
                online.asking(ask);
                true
            }
            _ => false,
        });
        let (Some(token), Some(true)) = (self.token.try_get_value(), asked) else {
            return;
        };
        spawn_local(async move {
            let answer = api::presence(&token, &topic).await;
            self.answered(topic, ask, answer);
        });
    }

    fn answered(self, topic: String, ask: u64, answer: Result<Presence, ApiFailure>) {
        match answer {
            Ok(presence) => {
                let applied = self.online.try_update(|online| match online {
                    Some(online) if online.topic() == topic => {
                        online.answered(ask, presence.users, presence.count, presence.head)
                    }
                    _ => false,
                });
                if applied == Some(true) {
                    self.error.try_set(None);
                }
            }
            Err(failure) => {
                let awaited = self.online.try_update(|online| match online {
                    Some(online) if online.topic() == topic => online.unanswered(ask),
                    _ => false,
                });
                if awaited != Some(true) {
                    return;
                }
                let (why, passing) = unknown_because(&topic, &failure);
                self.error.try_set(Some(why));
                if passing {
                    set_timeout(
                        move || {
                            // Unless the page asked again meanwhile, or is gone.
                            if self.asks.try_get_value() == Some(ask) {
                                self.ask(topic);
                            }
                        },
                        RETRY,
                    );
                }
            }
        }
    }
}

/// Why the list of who is in `topic` cannot be told, for people, and whether asking again
/// later may help.
fn unknown_because(topic: &str, failure: &ApiFailure) -> (String, bool) {
    match (failure.status, failure.code.as_deref()) {
        (403, _) => (format!("You may not see who is in {topic}."), false),
        (404, Some("presence_not_kept")) => (format!("{topic} does not keep who is in it."), false),
        (401, _) => (
            format!("Cannot tell who is in {topic}: sign in again."),
            false,
        ),
        (0 | 429 | 500..=599, _) => (
            format!(
                "Cannot tell who is in {topic} right now ({}); asking again.",
                failure.message
            ),
            true,
        ),
        _ => (
            format!("Cannot tell who is in {topic}: {}", failure.message),
            false,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(status: u16, code: Option<&str>, message: &str) -> ApiFailure {
        ApiFailure {
            status,
            code: code.map(str::to_string),
            message: message.into(),
            topic: None,
        }
    }

    #[test]
    fn a_refusal_is_told_plainly_and_not_asked_again() {
        let forbidden = failure(
            403,
            Some("topic_forbidden"),
            "topic \"room:x\" is not allowed",
        );
        assert_eq!(
            unknown_because("room:x", &forbidden),
            ("You may not see who is in room:x.".to_string(), false)
        );
        let not_kept = failure(404, Some("presence_not_kept"), "no presence");
        assert_eq!(
            unknown_because("room:x", &not_kept),
            ("room:x does not keep who is in it.".to_string(), false)
        );
        assert!(!unknown_because("room:x", &failure(401, None, "expired")).1);
        let odd = unknown_because("room:x", &failure(400, Some("invalid_topic"), "bad name"));
        assert_eq!(
            odd,
            ("Cannot tell who is in room:x: bad name".to_string(), false)
        );
    }

    #[test]
    fn a_failure_that_may_pass_is_asked_again() {
        for status in [0, 429, 502, 503] {
            let (why, again) = unknown_because("room:x", &failure(status, None, "away"));
            assert!(again, "{status}");
            assert!(why.contains("(away)"), "{why}");
        }
    }
}
