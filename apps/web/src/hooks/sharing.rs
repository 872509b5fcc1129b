//! One stream shared by a browser's tabs: what the tabs say to each other, the name they
//! meet under, the topics the stream carries for them (the [`Roster`]), and the record
//! that keeps an event from being shown twice when the stream changes hands. No browser
//! API is touched here (see `leadership` for that), so all of it is unit-tested natively.

use std::collections::{BTreeMap, BTreeSet};

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
    /// joined late resume from the right place should it become the holder;
    /// `stream_topics` tells it what the stream carries, for a tab that joins a topic the
    /// stream carries already (no `stream.opened` follows: the union did not change).
    Status {
        state: ConnectionState,
        server_id: Option<String>,
        error: Option<String>,
        last_event_id: Option<String>,
        #[serde(default)]
        stream_topics: Vec<String>,
    },
    /// The fallback election (see [`Election`]): `tab` holds the stream, since `since`
    /// (milliseconds since the Unix epoch). Repeated as a heartbeat.
    Claim { tab: u64, since: f64 },
    /// The fallback election: `tab` gives the stream up (its page is going away).
    Resign { tab: u64 },
    /// The topics one hook wants (`member` names the hook, whatever tab it is in); an
    /// empty list when it goes. Every hook keeps them all (a [`Roster`]), so that whichever
    /// takes the stream over opens it with every tab's topics at once.
    Topics { member: u64, topics: Vec<String> },
    /// Every topic the server refused the holder's stream: replaces what a tab knew.
    Refusals { refused: Vec<TopicRefusal> },
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
/// token stands for (its JWT `sub` claim) with the same grants (a hash of its `topics` and
/// `publishTopics` claims): a tab whose token allows fewer topics never shares a stream
/// opened with a broader token, so it is never shown a topic through another tab's
/// grant. The claims are read without checking the signature: they only group tabs, and
/// the server checks the token of the tab that opens the stream. `None` when the token is
/// not a JWT: each tab then holds its own stream.
pub fn share_name(url: &str, token: &str) -> Option<String> {
    let mut parts = token.split('.');
    let (Some(_header), Some(payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    #[derive(Deserialize)]
    struct Claims {
        sub: String,
        #[serde(default)]
        topics: Vec<String>,
        #[serde(default, rename = "publishTopics")]
        publish_topics: Vec<String>,
    }
    let claims = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: Claims = serde_json::from_slice(&claims).ok()?;
    if claims.sub.is_empty() {
        return None;
    }
    let grants = grants_hash(&claims.topics, &claims.publish_topics);
    Some(format!("use-events {url} {} {grants:016x}", claims.sub))
}

/// A hash of a token's grants, the same whatever order its patterns are listed in
/// (FNV-1a: the name only groups tabs; the server checks every token).
fn grants_hash(topics: &[String], publish_topics: &[String]) -> u64 {
    fn sorted(patterns: &[String]) -> BTreeSet<&str> {
        patterns.iter().map(String::as_str).collect()
    }
    // JSON keeps the two lists and their items apart whatever they contain.
    let canonical = serde_json::json!([sorted(topics), sorted(publish_topics)]).to_string();
    canonical
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
        })
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

/// How many histories [`Shown`] remembers: a stream carries its user's, the broadcasts'
/// and those of its topics (at most [`events::MAX_CURSOR_TOPICS`]); a few more cover
/// epochs that change under it.
const HISTORIES: usize = 4 + events::MAX_CURSOR_TOPICS;

/// The newest event shown from each history (a user, the broadcasts, or a topic; and an
/// epoch). Events of one history arrive in id order, so one at or below the newest was
/// shown already: that happens when the stream changes tabs while frames of the old holder
/// are still on their way. When full, the history updated least recently is forgotten.
#[derive(Debug, Default)]
pub struct Shown {
    /// Least recently updated first.
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
        // A space is in neither a user id nor a topic: the two never share a name.
        let history = match &envelope.topic {
            Some(topic) => format!("topic {topic}"),
            None => envelope.user_id.clone(),
        };
        if let Some(at) = self
            .newest
            .iter()
            .position(|(h, e, _)| *h == history && *e == epoch)
        {
            if id <= self.newest[at].2 {
                return false;
            }
            // The most recently updated goes last.
            let mut entry = self.newest.remove(at);
            entry.2 = id;
            self.newest.push(entry);
            return true;
        }
        // A new epoch starts the history over.
        self.newest.retain(|(h, ..)| *h != history);
        if self.newest.len() >= HISTORIES {
            self.newest.remove(0);
        }
        self.newest.push((history, epoch, id));
        true
    }
}

/// A topic the stream does not carry, and why: the server refused it, or its name breaks
/// the rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicRefusal {
    pub topic: String,
    /// The server's error code (`topic_forbidden`, `invalid_topic`, `too_many_topics`).
    pub code: String,
    /// Why, for people: the server's message.
    pub reason: String,
}

impl TopicRefusal {
    /// Whether the user may not have the topic at all (rather than a bad name or too many).
    pub fn is_forbidden(&self) -> bool {
        self.code == "topic_forbidden"
    }
}

/// Which topics the hooks sharing a stream want, and which the server refused: every hook
/// keeps one, from the [`TabMessage::Topics`] and [`TabMessage::Refusals`] on the channel,
/// and the holder opens the stream with [`Roster::stream_topics`], the union.
#[derive(Debug, Default)]
pub struct Roster {
    wanted: BTreeMap<u64, Vec<String>>,
    refused: Vec<TopicRefusal>,
}

impl Roster {
    /// Records the topics `member` wants (none: it left); returns whether the topics the
    /// stream should carry changed.
    pub fn set(&mut self, member: u64, topics: &[String]) -> bool {
        let before = self.stream_topics();
        let wanted_before = self.wanted_owned();
        if topics.is_empty() {
            self.wanted.remove(&member);
        } else {
            self.wanted.insert(member, topics.to_vec());
        }
        self.forget_stale_refusals(&wanted_before);
        before != self.stream_topics()
    }

    /// Keeps only the hooks in `members` (those that answered a roll call: the others'
    /// tabs crashed, or went without a word); returns whether the topics the stream
    /// should carry changed.
    pub fn keep_only(&mut self, members: &BTreeSet<u64>) -> bool {
        let before = self.stream_topics();
        let wanted_before = self.wanted_owned();
        self.wanted.retain(|member, _| members.contains(member));
        self.forget_stale_refusals(&wanted_before);
        before != self.stream_topics()
    }

    /// A refusal of a topic lasts while a hook wants that topic: one that is asked for
    /// again later is asked of the server again (with a new token, the answer may
    /// differ). `too_many_topics` is about the set asked, not a topic: it goes whenever
    /// the wanted set changes, and the new set is asked for.
    fn forget_stale_refusals(&mut self, wanted_before: &BTreeSet<String>) {
        let wanted = self.wanted_owned();
        let set_changed = wanted != *wanted_before;
        self.refused
            .retain(|r| wanted.contains(&r.topic) && !(set_changed && r.code == "too_many_topics"));
    }

    /// What the stream should carry: every topic a hook wants, each once, in order, but
    /// for names that break the rule and the topics the server refused.
    pub fn stream_topics(&self) -> Vec<String> {
        self.wanted()
            .into_iter()
            .filter(|topic| events::validate_topic(topic).is_ok())
            .filter(|topic| !self.refused.iter().any(|r| r.topic == *topic))
            .map(str::to_string)
            .collect()
    }

    /// The server refused these topics: the stream goes on without them.
    pub fn refuse(&mut self, refusals: Vec<TopicRefusal>) {
        for refusal in refusals {
            self.refused.retain(|r| r.topic != refusal.topic);
            self.refused.push(refusal);
        }
    }

    /// Every refusal, as the holder tells the other tabs.
    pub fn refusals(&self) -> &[TopicRefusal] {
        &self.refused
    }

    /// The holder's refusals, which replace this tab's.
    pub fn set_refusals(&mut self, refused: Vec<TopicRefusal>) {
        self.refused = refused;
    }

    /// Why the stream does not carry some of `topics` (one hook's): names that break the
    /// rule, and what the server refused.
    pub fn refusals_of(&self, topics: &[String]) -> Vec<TopicRefusal> {
        topics
            .iter()
            .filter_map(|topic| match events::validate_topic(topic) {
                Err(rule) => Some(TopicRefusal {
                    topic: topic.clone(),
                    code: "invalid_topic".into(),
                    reason: rule.into(),
                }),
                Ok(()) => self.refused.iter().find(|r| r.topic == *topic).cloned(),
            })
            .collect()
    }

    fn wanted(&self) -> BTreeSet<&str> {
        self.wanted.values().flatten().map(String::as_str).collect()
    }

    fn wanted_owned(&self) -> BTreeSet<String> {
        self.wanted.values().flatten().cloned().collect()
    }
}

/// Whether a stream asked for `carried` must be reopened to carry `wanted` (the roster's
/// [`Roster::stream_topics`] now): the topics differ, whatever their order. Checked when
/// the stream opens, so that a change made while a ticket was on its way (a reconnection,
/// a hand-over during which a closing tab's topics are dropped) is not lost.
pub fn must_reopen(carried: &[String], wanted: &[String]) -> bool {
    let set = |topics: &[String]| topics.iter().cloned().collect::<BTreeSet<_>>();
    set(carried) != set(wanted)
}

/// Which of the `asked` topics a refused stream ticket refused, from the server's error
/// `code`, `message` and `topic`; `None` when the refusal is not about topics (or there
/// were none), and retrying may help. A refusal that names one of the topics (its error's
/// `topic`) refuses that one; one that names none (`too_many_topics`) refuses them all.
/// Never an empty list, so a stream retried without what was refused asks for strictly
/// less each time.
pub fn refused_topics(
    code: &str,
    message: &str,
    topic: Option<&str>,
    asked: &[String],
) -> Option<Vec<TopicRefusal>> {
    if asked.is_empty()
        || !matches!(
            code,
            "topic_forbidden" | "invalid_topic" | "too_many_topics"
        )
    {
        return None;
    }
    let named = topic.filter(|name| asked.iter().any(|topic| topic == name));
    let refused = match named {
        Some(name) => vec![name.to_string()],
        None => asked.to_vec(),
    };
    Some(
        refused
            .into_iter()
            .map(|topic| TopicRefusal {
                topic,
                code: code.into(),
                reason: message.into(),
            })
            .collect(),
    )
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
        assert!(
            alice
                .as_deref()
                .is_some_and(|name| name.starts_with("use-events /api/events alice ")),
            "{alice:?}"
        );
        let renewed = share_name("/api/events", &token(r#"{"exp":2,"sub":"alice"}"#));
        assert_eq!(renewed, alice, "a fresh token of the same user");
        let bob = share_name("/api/events", &token(r#"{"sub":"bob"}"#));
        assert_ne!(bob, alice);
        let elsewhere = share_name("https://other/api/events", &token(r#"{"sub":"alice"}"#));
        assert_ne!(elsewhere, alice, "another stream");
    }

    #[test]
    fn only_tabs_with_the_same_grants_share_a_stream() {
        let name = |claims: &str| share_name("/api/events", &token(claims));
        let rooms = name(r#"{"sub":"alice","topics":["room:*"],"exp":1}"#);
        assert!(rooms.is_some());
        assert_eq!(
            name(r#"{"exp":2,"topics":["room:*"],"sub":"alice"}"#),
            rooms,
            "a fresh token with the same grants"
        );
        let narrow = name(r#"{"sub":"alice","topics":["room:elsewhere"]}"#);
        assert_ne!(
            narrow, rooms,
            "a narrower grant shares nothing with a broader one"
        );
        assert_ne!(name(r#"{"sub":"alice"}"#), rooms, "no grant at all");
        let publishing = name(r#"{"sub":"alice","topics":["room:*"],"publishTopics":["room:*"]}"#);
        assert_ne!(publishing, rooms, "publishing grants count too");
        assert_eq!(
            name(r#"{"sub":"alice","topics":["room:b","room:a"]}"#),
            name(r#"{"sub":"alice","topics":["room:a","room:b"]}"#),
            "the order of patterns does not matter"
        );
        assert_ne!(
            name(r#"{"sub":"alice","topics":["room:a"]}"#),
            name(r#"{"sub":"alice","publishTopics":["room:a"]}"#),
            "subscribing and publishing grants are told apart"
        );
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
                stream_topics: topics(&["room:lobby"]),
            },
            TabMessage::Claim {
                tab: u64::MAX,
                since: 1.5e12,
            },
            TabMessage::Resign { tab: 7 },
            TabMessage::Topics {
                member: 3,
                topics: topics(&["room:lobby"]),
            },
            TabMessage::Refusals {
                refused: vec![TopicRefusal {
                    topic: "room:x".into(),
                    code: "topic_forbidden".into(),
                    reason: "no".into(),
                }],
            },
        ];
        for message in messages {
            assert_eq!(TabMessage::decode(&message.encode()), Some(message));
        }
        assert_eq!(
            TabMessage::decode(
                r#"{"kind":"status","state":"open","server_id":null,"error":null,"last_event_id":null}"#
            ),
            Some(TabMessage::Status {
                state: ConnectionState::Open,
                server_id: None,
                error: None,
                last_event_id: None,
                stream_topics: Vec::new(),
            }),
            "a status from a tab of the version before topics"
        );
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
            topic: None,
            event_type: "t".into(),
            data: Default::default(),
            server_id: None,
            published_at: None,
            publisher_id: None,
        }
    }

    fn topics(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
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
        for n in 0..=HISTORIES {
            assert!(shown.first_time(&envelope(&format!("u{n}"), 1, Some(1))));
        }
        assert_eq!(shown.newest.len(), HISTORIES, "bounded");
    }

    #[test]
    fn the_history_updated_least_recently_is_forgotten_first() {
        let mut shown = Shown::default();
        for n in 0..HISTORIES {
            assert!(shown.first_time(&envelope(&format!("u{n}"), 1, Some(1))));
        }
        // The first history inserted is the busiest: it stays.
        assert!(shown.first_time(&envelope("u0", 1, Some(2))));
        assert!(shown.first_time(&envelope("newcomer", 1, Some(1))));
        assert!(
            !shown.first_time(&envelope("u0", 1, Some(2))),
            "still known"
        );
        assert!(
            shown.first_time(&envelope("u1", 1, Some(1))),
            "the least recently updated was forgotten"
        );
        // A duplicate is not an update.
        let mut shown = Shown::default();
        for n in 0..HISTORIES {
            assert!(shown.first_time(&envelope(&format!("u{n}"), 1, Some(5))));
        }
        assert!(!shown.first_time(&envelope("u0", 1, Some(5))));
        assert!(shown.first_time(&envelope("newcomer", 1, Some(1))));
        assert!(
            shown.first_time(&envelope("u0", 1, Some(5))),
            "u0 went first"
        );
    }

    #[test]
    fn a_topic_counts_apart_from_the_user_and_from_other_topics() {
        let mut shown = Shown::default();
        let in_topic = |topic: &str, id| Envelope {
            topic: Some(topic.into()),
            ..envelope("", 1, Some(id))
        };
        assert!(shown.first_time(&envelope("alice", 1, Some(5))));
        assert!(shown.first_time(&in_topic("room:a", 1)));
        assert!(shown.first_time(&in_topic("room:b", 1)));
        assert!(!shown.first_time(&in_topic("room:a", 1)), "again");
        assert!(shown.first_time(&in_topic("room:a", 2)));
        assert!(
            !shown.first_time(&envelope("alice", 1, Some(5))),
            "the user's"
        );
    }

    #[test]
    fn the_stream_carries_the_union_of_every_hooks_topics() {
        let mut roster = Roster::default();
        assert!(roster.stream_topics().is_empty());
        assert!(roster.set(1, &topics(&["room:b", "room:a"])));
        assert!(roster.set(2, &topics(&["room:a", "room:c"])));
        assert_eq!(
            roster.stream_topics(),
            topics(&["room:a", "room:b", "room:c"])
        );
        assert!(
            !roster.set(2, &topics(&["room:c", "room:a"])),
            "the same, reordered"
        );
        assert!(!roster.set(1, &topics(&["room:a", "room:b"])));
        assert!(roster.set(1, &[]), "a hook that goes takes its own topics");
        assert_eq!(roster.stream_topics(), topics(&["room:a", "room:c"]));
        assert!(!roster.set(9, &[]), "one never seen");
    }

    #[test]
    fn refused_and_misnamed_topics_stay_out_of_the_stream_and_are_told_to_who_wants_them() {
        let mut roster = Roster::default();
        roster.set(1, &topics(&["room:a", "room:x"]));
        roster.set(2, &topics(&["room:a", "bad name"]));
        assert_eq!(roster.stream_topics(), topics(&["room:a", "room:x"]));
        let refusal = TopicRefusal {
            topic: "room:x".into(),
            code: "topic_forbidden".into(),
            reason: "topic \"room:x\" is not allowed to this user".into(),
        };
        roster.refuse(vec![refusal.clone()]);
        assert_eq!(roster.stream_topics(), topics(&["room:a"]));
        assert_eq!(
            roster.refusals_of(&topics(&["room:a", "room:x"])),
            vec![refusal.clone()]
        );
        let misnamed = roster.refusals_of(&topics(&["room:a", "bad name"]));
        assert_eq!(misnamed.len(), 1);
        assert_eq!(
            (misnamed[0].topic.as_str(), misnamed[0].code.as_str()),
            ("bad name", "invalid_topic")
        );
        assert!(refusal.is_forbidden() && !misnamed[0].is_forbidden());

        // Followers take the holder's word; a topic nobody wants any more is forgotten,
        // so asking for it again asks the server again.
        let mut follower = Roster::default();
        follower.set(1, &topics(&["room:a", "room:x"]));
        follower.set_refusals(roster.refusals().to_vec());
        assert_eq!(follower.stream_topics(), topics(&["room:a"]));
        roster.set(1, &topics(&["room:a"]));
        assert!(roster.refusals().is_empty());
        assert!(roster.set(1, &topics(&["room:a", "room:x"])), "asked again");
    }

    #[test]
    fn too_many_topics_is_forgotten_whenever_the_wanted_set_changes() {
        let mut roster = Roster::default();
        roster.set(1, &topics(&["room:a"]));
        roster.set(2, &topics(&["room:b"]));
        let asked = roster.stream_topics();
        roster
            .refuse(refused_topics("too_many_topics", "at most 1", None, &asked).expect("refused"));
        assert!(
            roster.stream_topics().is_empty(),
            "the stream goes on without"
        );
        assert_eq!(roster.refusals_of(&topics(&["room:a"])).len(), 1);
        // Nothing changed: the set stays refused, so the stream is not reopened in a loop.
        assert!(!roster.set(1, &topics(&["room:a"])));
        assert!(roster.stream_topics().is_empty());
        // One tab leaves its room: the smaller set is asked for again.
        assert!(roster.set(2, &[]));
        assert_eq!(roster.stream_topics(), topics(&["room:a"]));
        assert!(roster.refusals().is_empty());

        // A forbidden topic stays refused while it is wanted, whatever else changes.
        roster.set(2, &topics(&["room:x"]));
        roster.refuse(
            refused_topics(
                "topic_forbidden",
                "no",
                Some("room:x"),
                &roster.stream_topics(),
            )
            .expect("refused"),
        );
        roster.set(3, &topics(&["room:c"]));
        assert_eq!(roster.stream_topics(), topics(&["room:a", "room:c"]));
        assert_eq!(roster.refusals().len(), 1);
    }

    #[test]
    fn a_roll_call_drops_the_topics_of_hooks_that_did_not_answer() {
        let mut roster = Roster::default();
        roster.set(1, &topics(&["room:a"]));
        roster.set(2, &topics(&["room:b"]));
        roster.set(3, &topics(&["room:a", "room:c"]));
        assert!(
            roster.keep_only(&BTreeSet::from([1, 3])),
            "the crashed tab's room goes"
        );
        assert_eq!(roster.stream_topics(), topics(&["room:a", "room:c"]));
        assert!(
            !roster.keep_only(&BTreeSet::from([1, 3, 9])),
            "all answered"
        );
        assert!(roster.keep_only(&BTreeSet::from([9])));
        assert!(roster.stream_topics().is_empty());
    }

    #[test]
    fn a_stream_that_opened_with_other_topics_than_wanted_is_reopened() {
        let (a, b) = (topics(&["room:a", "room:b"]), topics(&["room:b", "room:a"]));
        assert!(!must_reopen(&a, &b), "the same, in another order");
        assert!(!must_reopen(&[], &[]));
        assert!(
            must_reopen(&a, &topics(&["room:b"])),
            "a closing tab's room dropped while the new holder's ticket was on its way"
        );
        assert!(
            must_reopen(&topics(&["room:a"]), &a),
            "a room joined while reconnecting"
        );
    }

    #[test]
    fn a_ticket_refusal_names_the_topic_it_refuses_or_refuses_them_all() {
        let asked = topics(&["room:a", "room:x"]);
        let forbidden = refused_topics(
            "topic_forbidden",
            "topic \"room:x\" is not allowed to this user",
            Some("room:x"),
            &asked,
        )
        .expect("about topics");
        assert_eq!(forbidden.len(), 1);
        assert_eq!(forbidden[0].topic, "room:x");
        let too_many = refused_topics(
            "too_many_topics",
            "a stream carries at most 1 topics",
            None,
            &asked,
        )
        .expect("about topics");
        assert_eq!(
            too_many
                .iter()
                .map(|r| r.topic.as_str())
                .collect::<Vec<_>>(),
            ["room:a", "room:x"]
        );
        let unknown = refused_topics("topic_forbidden", "not allowed", Some("room:z"), &asked)
            .expect("about topics");
        assert_eq!(unknown.len(), 2, "a name it did not ask for: all of them");
        assert_eq!(
            refused_topics("topic_auth_unavailable", "retry", None, &asked),
            None,
            "retry"
        );
        assert_eq!(refused_topics("unauthorized", "no", None, &asked), None);
        assert_eq!(
            refused_topics("topic_forbidden", "no", Some("room:x"), &[]),
            None,
            "nothing to drop"
        );
    }
}
