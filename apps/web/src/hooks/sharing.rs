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
        ];
        for message in messages {
            assert_eq!(TabMessage::decode(&message.encode()), Some(message));
        }
        assert_eq!(TabMessage::decode(r#"{"kind":"takeover"}"#), None);
        assert_eq!(TabMessage::decode("not json"), None);
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
