//! Where a stream stands in its user's event history, in the broadcast history and in the
//! history of each of its topics: the SSE `id:` of every frame, which a browser sends back
//! as `Last-Event-ID` to resume.

use std::{fmt, str::FromStr};

/// A position in one history: the history's epoch and the last sequence number seen.
///
/// The epoch names one life of a history. It changes when the history is lost (Redis
/// restarted empty, or the history expired), so that a cursor from an earlier life is
/// recognised instead of being silently misread. Epoch 0 means "no history existed yet";
/// sequence 0 means "nothing seen yet".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Position {
    pub epoch: u64,
    pub seq: u64,
}

impl Position {
    pub const fn new(epoch: u64, seq: u64) -> Self {
        Self { epoch, seq }
    }
}

/// A stream's cursor: `<userEpoch>-<userSeq>.<broadcastEpoch>-<broadcastSeq>.<owner>`,
/// then `.<tag>-<epoch>-<seq>` per topic of the stream, e.g.
/// `1764000000123-42.1763990000000-7.a0c4e5f39b1d2e77.5e1f0c2d3b4a6978-1764000000555-3`.
/// Only digits, hex, `-` and `.`, so it travels unescaped in a header or a query string.
///
/// `owner` ties the cursor to the one user whose history it counts in ([`owner_tag`]):
/// epochs are timestamps that two users' histories may share, so without it one user's
/// position could be misread as another's, silently skipping events. A topic is named
/// by its [`crate::topic_tag`] rather than its name, so a cursor grows by at most 59
/// characters per topic, whatever the names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Cursor {
    /// Position in the user's own history.
    pub user: Position,
    /// Position in the broadcast (`system-events`) history.
    pub broadcast: Position,
    /// [`owner_tag`] of the user whose stream wrote it.
    pub owner: u64,
    /// Position in each topic's history, by [`crate::topic_tag`]; no tag twice.
    pub topics: Vec<TopicPosition>,
}

/// Where a cursor stands in one topic's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TopicPosition {
    pub tag: u64,
    pub at: Position,
}

/// A cursor names at most this many topics: more is not a cursor this system wrote (a
/// stream has at most 128, whatever `MAX_TOPICS_PER_STREAM` says).
pub const MAX_CURSOR_TOPICS: usize = 128;

/// The longest cursor text: the three leading parts and [`MAX_CURSOR_TOPICS`] topics,
/// each of the longest numbers.
pub const MAX_CURSOR_LEN: usize = 2 * 41 + 2 + 16 + MAX_CURSOR_TOPICS * (1 + 16 + 1 + 41);

impl Cursor {
    /// Where the cursor stands in the topic of `tag`, if it names it.
    pub fn topic(&self, tag: u64) -> Option<Position> {
        self.topics.iter().find(|t| t.tag == tag).map(|t| t.at)
    }

    /// The position in the topic of `tag`, if the cursor names it.
    pub fn topic_mut(&mut self, tag: u64) -> Option<&mut Position> {
        self.topics
            .iter_mut()
            .find(|t| t.tag == tag)
            .map(|t| &mut t.at)
    }
}

/// The tag a user's cursors carry: FNV-1a (64 bits) of the user id. Stable across
/// versions and instances; not a secret (a cursor grants nothing), only a name.
pub fn owner_tag(user_id: &str) -> u64 {
    user_id.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}-{}.{}-{}.{:016x}",
            self.user.epoch, self.user.seq, self.broadcast.epoch, self.broadcast.seq, self.owner
        )?;
        for topic in &self.topics {
            write!(f, ".{:016x}-{}-{}", topic.tag, topic.at.epoch, topic.at.seq)?;
        }
        Ok(())
    }
}

/// A `Last-Event-ID` that is not a cursor of this system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadCursor;

impl fmt::Display for BadCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "not a cursor: expected <epoch>-<seq>.<epoch>-<seq>.<owner>[.<tag>-<epoch>-<seq>]...",
        )
    }
}

impl std::error::Error for BadCursor {}

impl FromStr for Cursor {
    type Err = BadCursor;

    fn from_str(s: &str) -> Result<Self, BadCursor> {
        let s = s.trim();
        if s.len() > MAX_CURSOR_LEN {
            return Err(BadCursor);
        }
        let mut parts = s.split('.');
        let (Some(user), Some(broadcast), Some(owner)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(BadCursor);
        };
        let mut cursor = Self {
            user: parse_position(user)?,
            broadcast: parse_position(broadcast)?,
            owner: parse_tag(owner)?,
            topics: Vec::new(),
        };
        for part in parts {
            let (tag, at) = part.split_once('-').ok_or(BadCursor)?;
            let topic = TopicPosition {
                tag: parse_tag(tag)?,
                at: parse_position(at)?,
            };
            if cursor.topics.len() == MAX_CURSOR_TOPICS || cursor.topic(topic.tag).is_some() {
                return Err(BadCursor);
            }
            cursor.topics.push(topic);
        }
        Ok(cursor)
    }
}

/// Exactly 16 lowercase hex digits.
fn parse_tag(s: &str) -> Result<u64, BadCursor> {
    let hex = s.len() == 16 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !hex {
        return Err(BadCursor);
    }
    u64::from_str_radix(s, 16).map_err(|_| BadCursor)
}

fn parse_position(s: &str) -> Result<Position, BadCursor> {
    let (epoch, seq) = s.split_once('-').ok_or(BadCursor)?;
    let number = |n: &str| {
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            return Err(BadCursor);
        }
        n.parse::<u64>().map_err(|_| BadCursor)
    };
    Ok(Position::new(number(epoch)?, number(seq)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_its_text_form() {
        let cursor = Cursor {
            user: Position::new(1_764_000_000_123, 42),
            broadcast: Position::new(1_763_990_000_000, 7),
            owner: 0xa0c4_e5f3_9b1d_2e77,
            topics: Vec::new(),
        };
        let text = cursor.to_string();
        assert_eq!(text, "1764000000123-42.1763990000000-7.a0c4e5f39b1d2e77");
        assert_eq!(text.parse::<Cursor>(), Ok(cursor.clone()));
        let with_topics = Cursor {
            topics: vec![
                TopicPosition {
                    tag: 0x5e1f_0c2d_3b4a_6978,
                    at: Position::new(1_764_000_000_555, 3),
                },
                TopicPosition {
                    tag: 1,
                    at: Position::default(),
                },
            ],
            ..cursor
        };
        let text = with_topics.to_string();
        assert_eq!(
            text,
            "1764000000123-42.1763990000000-7.a0c4e5f39b1d2e77.5e1f0c2d3b4a6978-1764000000555-3.0000000000000001-0-0"
        );
        assert_eq!(text.parse::<Cursor>(), Ok(with_topics));
        assert_eq!(
            "0-0.0-0.0000000000000000".parse::<Cursor>(),
            Ok(Cursor::default())
        );
    }

    #[test]
    fn owner_tags_tell_users_apart_and_never_change() {
        assert_eq!(
            owner_tag(""),
            0xcbf2_9ce4_8422_2325,
            "FNV-1a's offset basis"
        );
        assert_eq!(owner_tag("a"), 0xaf63_dc4c_8601_ec8c, "FNV-1a of \"a\"");
        assert_ne!(owner_tag("alice"), owner_tag("bob"));
    }

    #[test]
    fn refuses_anything_else() {
        for text in [
            "",
            "5",
            "1-2",
            "1-2.3",
            "a-1.2-3",
            "1-2.3-4.5",
            "-1-2.3-4",
            "1-2.3-+4",
            // The form before cursors named their owner: read as unknown, so resynced.
            "1-2.3-4",
            "1-2.3-4.abc",
            "1-2.3-4.A0C4E5F39B1D2E77",
            "1-2.3-4.a0c4e5f39b1d2e77.0",
            "1-2.3-4.a0c4e5f39b1d2e77.0000000000000001-2",
            "1-2.3-4.a0c4e5f39b1d2e77.0000000000000001-2-3-4",
            "1-2.3-4.a0c4e5f39b1d2e77.0000000000000001-2-3.0000000000000001-5-6",
            "1-2.3-4.a0c4e5f39b1d2e77.",
        ] {
            assert_eq!(text.parse::<Cursor>(), Err(BadCursor), "{text:?}");
        }
    }

    proptest::proptest! {
        /// Every cursor, however large its numbers, reads back as itself.
        #[test]
        fn every_cursor_round_trips(
            ue: u64, us: u64, be: u64, bs: u64, owner: u64,
            topics in proptest::collection::hash_map(proptest::num::u64::ANY, (proptest::num::u64::ANY, proptest::num::u64::ANY), 0..=MAX_CURSOR_TOPICS),
        ) {
            let topics = topics.into_iter().map(|(tag, (e, s))| TopicPosition { tag, at: Position::new(e, s) }).collect();
            let cursor = Cursor { user: Position::new(ue, us), broadcast: Position::new(be, bs), owner, topics };
            let text = cursor.to_string();
            proptest::prop_assert!(text.len() <= MAX_CURSOR_LEN, "{} > {}", text.len(), MAX_CURSOR_LEN);
            proptest::prop_assert_eq!(text.parse::<Cursor>(), Ok(cursor));
        }

        /// Any text at all parses to a cursor or to `BadCursor`: never a panic, and a
        /// cursor only when it is the canonical text of one (up to surrounding space).
        #[test]
        fn any_text_is_a_cursor_or_refused(text in "\\PC{0,60}|[0-9.-]{0,40}\\.[0-9a-f]{16}") {
            if let Ok(cursor) = text.parse::<Cursor>() {
                let canonical = cursor.to_string();
                let digits = |s: &str| s.trim().split(['.', '-']).map(|n| n.trim_start_matches('0').to_string()).collect::<Vec<_>>();
                proptest::prop_assert_eq!(digits(&canonical), digits(&text));
            }
        }
    }
}
