//! Where a stream stands in its user's event history and in the broadcast history: the
//! SSE `id:` of every frame, which a browser sends back as `Last-Event-ID` to resume.

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

/// A stream's cursor: `<userEpoch>-<userSeq>.<broadcastEpoch>-<broadcastSeq>`, e.g.
/// `1764000000123-42.1763990000000-7`. Only digits, `-` and `.`, so it travels unescaped
/// in a header or a query string.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Cursor {
    /// Position in the user's own history.
    pub user: Position,
    /// Position in the broadcast (`system-events`) history.
    pub broadcast: Position,
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}-{}.{}-{}",
            self.user.epoch, self.user.seq, self.broadcast.epoch, self.broadcast.seq
        )
    }
}

/// A `Last-Event-ID` that is not a cursor of this system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadCursor;

impl fmt::Display for BadCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not a cursor: expected <epoch>-<seq>.<epoch>-<seq>")
    }
}

impl std::error::Error for BadCursor {}

impl FromStr for Cursor {
    type Err = BadCursor;

    fn from_str(s: &str) -> Result<Self, BadCursor> {
        let (user, broadcast) = s.trim().split_once('.').ok_or(BadCursor)?;
        Ok(Self {
            user: parse_position(user)?,
            broadcast: parse_position(broadcast)?,
        })
    }
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
        };
        let text = cursor.to_string();
        assert_eq!(text, "1764000000123-42.1763990000000-7");
        assert_eq!(text.parse::<Cursor>(), Ok(cursor));
        assert_eq!("0-0.0-0".parse::<Cursor>(), Ok(Cursor::default()));
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
        ] {
            assert_eq!(text.parse::<Cursor>(), Err(BadCursor), "{text:?}");
        }
    }

    proptest::proptest! {
        /// Every cursor, however large its numbers, reads back as itself.
        #[test]
        fn every_cursor_round_trips(ue: u64, us: u64, be: u64, bs: u64) {
            let cursor = Cursor { user: Position::new(ue, us), broadcast: Position::new(be, bs) };
            proptest::prop_assert_eq!(cursor.to_string().parse::<Cursor>(), Ok(cursor));
        }

        /// Any text at all parses to a cursor or to `BadCursor`: never a panic, and a
        /// cursor only when it is the canonical text of one (up to surrounding space).
        #[test]
        fn any_text_is_a_cursor_or_refused(text in "\\PC{0,40}|[0-9.-]{0,40}") {
            if let Ok(cursor) = text.parse::<Cursor>() {
                let canonical = cursor.to_string();
                let digits = |s: &str| s.trim().split(['.', '-']).map(|n| n.trim_start_matches('0').to_string()).collect::<Vec<_>>();
                proptest::prop_assert_eq!(digits(&canonical), digits(&text));
            }
        }
    }
}
