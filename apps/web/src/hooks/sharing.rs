//! One stream shared by a browser's tabs: what the tabs say to each other, the name they
//! meet under, and the record that keeps an event from being shown twice when the stream
//! changes hands. No browser API is touched here (see `leadership` for that), so all of
//! it is unit-tested natively.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use events::Envelope;
use serde::{Deserialize, Serialize};

use super::reconnect::ConnectionState;

/// Which tab holds the stream a hook shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamHolder {
    /// This tab holds the connection (shared with the user's other tabs, if any).
    ThisTab,
    /// Another tab of the same user holds it and relays every event to this one.
    AnotherTab,
}

impl StreamHolder {
    pub fn label(self) -> &'static str {
        match self {
            Self::ThisTab => "this tab",
            Self::AnotherTab => "another tab",
        }
    }
}

/// What tabs sharing a stream post on their channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TabMessage {
    /// A tab joined: the holder answers with its [`TabMessage::Status`].
    Hello,
    /// One frame of the holder's stream exactly as it arrived: its SSE `id:` and `data:`.
    /// Followers parse it themselves, so that every tab handles every frame the same way.
    Frame { id: Option<String>, data: String },
    /// The holder's connection as its own signals show it. `last_event_id` lets a tab that
    /// joined late resume from the right place should it become the holder.
    Status {
        state: ConnectionState,
        server_id: Option<String>,
        error: Option<String>,
        last_event_id: Option<String>,
    },
    /// The fallback election (see [`Election`]): `tab` holds the stream, since `since`
    /// (milliseconds since the Unix epoch). Repeated as a heartbeat.
    Claim { tab: u64, since: f64 },
    /// The fallback election: `tab` gives the stream up (its page is going away).
    Resign { tab: u64 },
}

impl TabMessage {
    pub fn encode(&self) -> String {
        // Strings and enums only: serializing cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// `None` for anything that is not a message of this version of the hook (another
    /// version of the app in an old tab, say): it is ignored rather than misread.
    pub fn decode(text: &str) -> Option<Self> {
        serde_json::from_str(text).ok()
    }
}

/// The name under which the tabs of one origin share the stream at `url` of the user a
/// token stands for (its JWT `sub` claim). The claim is read without checking the
/// signature: it only groups tabs, and the server checks the token of the tab that opens
/// the stream. `None` when the token is not a JWT: each tab then holds its own stream.
pub fn share_name(url: &str, token: &str) -> Option<String> {
    let mut parts = token.split('.');
    let (Some(_header), Some(payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    #[derive(Deserialize)]
    struct Subject {
        sub: String,
    }
    let claims = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let subject: Subject = serde_json::from_slice(&claims).ok()?;
    (!subject.sub.is_empty()).then(|| format!("use-events {url} {}", subject.sub))
}

/// How often a holder elected by [`Election`] repeats its claim, in milliseconds.
pub const HEARTBEAT_MS: f64 = 1_000.0;
/// How long without a claim before a waiting tab takes the stream, in milliseconds:
/// long enough for a holder in a background tab, whose timers the browser slows to
/// once a second.
pub const SILENCE_MS: f64 = 3_500.0;
/// How long a tab that just joined listens for a holder before taking the stream.
pub const JOIN_WAIT_MS: f64 = 500.0;

/// What the fallback election asks of its tab.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Wait,
    /// Take the stream.
    Lead,
    /// Another tab holds the stream: give it up.
    StepDown,
}

/// The election of the tab that holds the stream, for browsers without Web Locks,
/// carried by the tabs' channel: the holder repeats a [`TabMessage::Claim`]; a tab that
/// hears none for [`SILENCE_MS`] (the holder crashed, or its page was frozen) or hears
/// a [`TabMessage::Resign`] takes the stream. When two tabs hold it at once (both took
/// it in the same moment, or a holder throttled in the background was taken over), the
/// newer claim wins and the other steps down: a holder that was replaced stays replaced.
/// A step down costs a reconnection that resumes from the last id, never an event.
#[derive(Debug)]
pub struct Election {
    tab: u64,
    /// Since when this tab holds the stream.
    holding_since: Option<f64>,
    /// When this tab last heard another's claim, or joined.
    last_heard: f64,
    /// Whether any claim was heard since joining.
    heard_any: bool,
    last_claimed: f64,
}

impl Election {
    pub fn new(tab: u64, now: f64) -> Self {
        Self {
            tab,
            holding_since: None,
            last_heard: now,
            heard_any: false,
            last_claimed: f64::MIN,
        }
    }

    pub fn holds(&self) -> bool {
        self.holding_since.is_some()
    }

    /// Another tab's message.
    pub fn heard(&mut self, message: &TabMessage, now: f64) -> Verdict {
        match *message {
            TabMessage::Claim { tab, since } if tab != self.tab => {
                self.last_heard = now;
                self.heard_any = true;
                match self.holding_since {
                    Some(ours) if (since, tab) > (ours, self.tab) => {
                        self.holding_since = None;
                        Verdict::StepDown
                    }
                    _ => Verdict::Wait,
                }
            }
            TabMessage::Resign { tab } if tab != self.tab && !self.holds() => self.take(now),
            _ => Verdict::Wait,
        }
    }

    /// Time passed: a waiting tab takes the stream if no holder spoke for too long.
    pub fn tick(&mut self, now: f64) -> Verdict {
        let patience = if self.heard_any {
            SILENCE_MS
        } else {
            JOIN_WAIT_MS
        };
        if !self.holds() && now - self.last_heard >= patience {
            return self.take(now);
        }
        Verdict::Wait
    }

    /// The claim this tab should post now, if it holds the stream and its last claim is
    /// a heartbeat old.
    pub fn claim(&mut self, now: f64) -> Option<TabMessage> {
        let since = self.holding_since?;
        if now - self.last_claimed < HEARTBEAT_MS {
            return None;
        }
        self.last_claimed = now;
        Some(TabMessage::Claim {
            tab: self.tab,
            since,
        })
    }

    /// A tab that just joined said hello: the holder claims at once, before the newcomer's
    /// [`JOIN_WAIT_MS`] run out.
    pub fn answer_hello(&mut self, now: f64) -> Option<TabMessage> {
        self.last_claimed = f64::MIN;
        self.claim(now)
    }

    /// Gives the stream up (the page is going away, or frozen); the message to post.
    pub fn resign(&mut self, now: f64) -> Option<TabMessage> {
        self.holding_since.take()?;
        // Give the others their turn before this tab would take it back.
        self.last_heard = now;
        self.heard_any = true;
        Some(TabMessage::Resign { tab: self.tab })
    }

    fn take(&mut self, now: f64) -> Verdict {
        self.holding_since = Some(now);
        self.last_claimed = f64::MIN;
        Verdict::Lead
    }
}

/// How many histories [`Shown`] remembers: a stream carries its user's and the
/// broadcasts'; a few more cover epochs that change under it.
const HISTORIES: usize = 4;

/// The newest event shown from each history (a user and an epoch). Events of one history
/// arrive in id order, so one at or below the newest was shown already: that happens
/// when the stream changes tabs while frames of the old holder are still on their way.
#[derive(Debug, Default)]
pub struct Shown {
    newest: Vec<(String, u64, u64)>,
}

impl Shown {
    /// Records `envelope`; `false` when it was shown already. Events without an id (live
    /// only, published around the backend) are always new.
    pub fn first_time(&mut self, envelope: &Envelope) -> bool {
        let Some(id) = envelope.id else {
            return true;
        };
        let epoch = envelope.epoch.unwrap_or_default();
        let user = envelope.user_id.as_str();
        if let Some((_, _, newest)) = self
            .newest
            .iter_mut()
            .find(|(u, e, _)| u == user && *e == epoch)
        {
            if id <= *newest {
                return false;
            }
            *newest = id;
            return true;
        }
        // A new epoch starts the user's history over.
        self.newest.retain(|(u, ..)| u != user);
        if self.newest.len() >= HISTORIES {
            self.newest.remove(0);
        }
        self.newest.push((user.to_string(), epoch, id));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(claims: &str) -> String {
        format!(
            "eyJhbGciOiJIUzI1NiJ9.{}.c2lnbmF0dXJl",
            URL_SAFE_NO_PAD.encode(claims)
        )
    }

    #[test]
    fn tabs_of_one_user_meet_under_one_name() {
        let alice = share_name("/api/events", &token(r#"{"sub":"alice","exp":1}"#));
        assert_eq!(alice.as_deref(), Some("use-events /api/events alice"));
        let renewed = share_name("/api/events", &token(r#"{"exp":2,"sub":"alice"}"#));
        assert_eq!(renewed, alice, "a fresh token of the same user");
        let bob = share_name("/api/events", &token(r#"{"sub":"bob"}"#));
        assert_ne!(bob, alice);
        let elsewhere = share_name("https://other/api/events", &token(r#"{"sub":"alice"}"#));
        assert_ne!(elsewhere, alice, "another stream");
    }

    #[test]
    fn a_token_that_is_not_a_jwt_shares_nothing() {
        assert_eq!(share_name("/e", "opaque-token"), None);
        assert_eq!(share_name("/e", "a.b"), None);
        assert_eq!(share_name("/e", "a.!!!.c"), None);
        assert_eq!(share_name("/e", &token(r#"{"exp":1}"#)), None, "no sub");
        assert_eq!(share_name("/e", &token(r#"{"sub":""}"#)), None);
        assert_eq!(share_name("/e", &format!("{}.d", token("{}"))), None);
    }

    #[test]
    fn messages_round_trip_and_strangers_are_ignored() {
        let messages = [
            TabMessage::Hello,
            TabMessage::Frame {
                id: Some("7-1.0-0".into()),
                data: r#"{"eventType":"x","data":{"a":1}}"#.into(),
            },
            TabMessage::Status {
                state: ConnectionState::Offline,
                server_id: Some("backend-1".into()),
                error: None,
                last_event_id: Some("7-1.0-0".into()),
            },
            TabMessage::Claim {
                tab: u64::MAX,
                since: 1.5e12,
            },
            TabMessage::Resign { tab: 7 },
        ];
        for message in messages {
            assert_eq!(TabMessage::decode(&message.encode()), Some(message));
        }
        assert_eq!(TabMessage::decode(r#"{"kind":"takeover"}"#), None);
        assert_eq!(TabMessage::decode("not json"), None);
    }

    #[test]
    fn a_lone_tab_takes_the_stream_after_listening_briefly() {
        let mut election = Election::new(1, 0.0);
        assert_eq!(election.tick(JOIN_WAIT_MS - 1.0), Verdict::Wait);
        assert_eq!(election.tick(JOIN_WAIT_MS), Verdict::Lead);
        assert!(election.holds());
        assert_eq!(
            election.claim(JOIN_WAIT_MS),
            Some(TabMessage::Claim {
                tab: 1,
                since: JOIN_WAIT_MS
            }),
            "claims at once"
        );
        assert_eq!(
            election.claim(JOIN_WAIT_MS + 10.0),
            None,
            "then per heartbeat"
        );
        assert!(election.claim(JOIN_WAIT_MS + HEARTBEAT_MS).is_some());
        assert_eq!(election.tick(1e9), Verdict::Wait, "a holder stays");
    }

    #[test]
    fn a_tab_waits_while_the_holder_speaks_and_takes_over_when_it_falls_silent() {
        let mut election = Election::new(2, 0.0);
        let claim = TabMessage::Claim {
            tab: 1,
            since: -5.0,
        };
        assert_eq!(election.heard(&claim, 100.0), Verdict::Wait);
        assert_eq!(election.tick(100.0 + SILENCE_MS - 1.0), Verdict::Wait);
        assert_eq!(election.heard(&claim, 1_000.0), Verdict::Wait);
        assert_eq!(election.tick(1_000.0 + SILENCE_MS - 1.0), Verdict::Wait);
        assert_eq!(
            election.tick(1_000.0 + SILENCE_MS),
            Verdict::Lead,
            "silent holder"
        );
    }

    #[test]
    fn a_resignation_hands_the_stream_on_at_once() {
        let mut waiting = Election::new(2, 0.0);
        let mut holder = Election::new(1, 0.0);
        assert_eq!(holder.tick(JOIN_WAIT_MS), Verdict::Lead);
        let claim = holder.claim(JOIN_WAIT_MS).expect("a claim");
        assert_eq!(waiting.heard(&claim, JOIN_WAIT_MS), Verdict::Wait);
        let resignation = holder.resign(500.0).expect("it held the stream");
        assert!(!holder.holds());
        assert_eq!(waiting.heard(&resignation, 501.0), Verdict::Lead);
        assert_eq!(holder.resign(600.0), None, "nothing left to resign");
        assert_eq!(
            holder.tick(700.0),
            Verdict::Wait,
            "the resigned tab waits its turn"
        );
    }

    #[test]
    fn the_holder_answers_a_newcomer_before_it_would_take_the_stream() {
        let mut holder = Election::new(1, 0.0);
        holder.tick(JOIN_WAIT_MS);
        let _ = holder.claim(JOIN_WAIT_MS);
        let mut newcomer = Election::new(2, 600.0);
        let answer = holder
            .answer_hello(601.0)
            .expect("the holder claims at once");
        assert_eq!(newcomer.heard(&answer, 602.0), Verdict::Wait);
        assert_eq!(newcomer.tick(600.0 + JOIN_WAIT_MS), Verdict::Wait);
        assert_eq!(
            Election::new(3, 0.0).answer_hello(1.0),
            None,
            "only a holder answers"
        );
    }

    #[test]
    fn of_two_holders_the_newer_claim_wins_in_both_tabs() {
        let (mut old, mut new) = (Election::new(9, 0.0), Election::new(3, 0.0));
        assert_eq!(old.tick(JOIN_WAIT_MS), Verdict::Lead);
        assert_eq!(new.tick(JOIN_WAIT_MS + 1.0), Verdict::Lead);
        let (from_old, from_new) = (
            old.claim(400.0).expect("claim"),
            new.claim(400.0).expect("claim"),
        );
        assert_eq!(new.heard(&from_old, 401.0), Verdict::Wait);
        assert_eq!(old.heard(&from_new, 401.0), Verdict::StepDown);
        assert!(new.holds() && !old.holds());
        // The same moment: the tab ids decide, the same way in both tabs.
        let (mut a, mut b) = (Election::new(1, 0.0), Election::new(2, 0.0));
        a.tick(JOIN_WAIT_MS);
        b.tick(JOIN_WAIT_MS);
        let (from_a, from_b) = (
            a.claim(400.0).expect("claim"),
            b.claim(400.0).expect("claim"),
        );
        assert_eq!(a.heard(&from_b, 401.0), Verdict::StepDown);
        assert_eq!(b.heard(&from_a, 401.0), Verdict::Wait);
    }

    fn envelope(user: &str, epoch: u64, id: Option<u64>) -> Envelope {
        Envelope {
            id,
            epoch: Some(epoch),
            user_id: user.into(),
            event_type: "t".into(),
            data: Default::default(),
            server_id: None,
            published_at: None,
        }
    }

    #[test]
    fn an_event_is_shown_once_per_history() {
        let mut shown = Shown::default();
        assert!(shown.first_time(&envelope("alice", 1, Some(1))));
        assert!(shown.first_time(&envelope("alice", 1, Some(2))));
        assert!(!shown.first_time(&envelope("alice", 1, Some(2))), "again");
        assert!(!shown.first_time(&envelope("alice", 1, Some(1))), "older");
        assert!(
            shown.first_time(&envelope("*", 1, Some(1))),
            "broadcasts count apart"
        );
        assert!(shown.first_time(&envelope("alice", 1, Some(3))));
        assert!(
            shown.first_time(&envelope("alice", 9, Some(1))),
            "a new epoch"
        );
        assert!(shown.first_time(&envelope("alice", 9, None)), "live only");
        assert!(shown.first_time(&envelope("alice", 9, None)));
        for user in ["u1", "u2", "u3", "u4", "u5"] {
            assert!(shown.first_time(&envelope(user, 1, Some(1))));
        }
        assert_eq!(shown.newest.len(), HISTORIES, "bounded");
    }
}
