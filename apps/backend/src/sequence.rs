//! The one rule every live event follows on its way to a stream, whoever writes it (the
//! stream's own task, or the hub writing straight to the socket of a stream at rest):
//! where it stands against the stream's cursor. Pure, and below both `hub` and
//! `delivery`, which take their decisions from here.

use events::{Cursor, Position, ResyncScope};

use crate::frame::Published;

/// A stream's topics: each one's [`events::topic_tag`] (as its cursor names it) and name.
/// Made once per stream and shared by the hub's registration and the stream's task.
pub type StreamTopics = std::sync::Arc<[(u64, String)]>;

/// The topics of `names`, as a stream carries them.
pub fn stream_topics(names: &[String]) -> StreamTopics {
    names
        .iter()
        .map(|name| (events::topic_tag(name), name.clone()))
        .collect()
}

/// Which of a stream's histories a position, an event or a catch-up is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    User,
    Broadcast,
    /// A topic, by its [`events::topic_tag`].
    Topic(u64),
}

impl Scope {
    /// What a `stream.resync` frame calls it.
    pub fn resync_scope(self) -> ResyncScope {
        match self {
            Self::User => ResyncScope::User,
            Self::Broadcast => ResyncScope::Broadcast,
            Self::Topic(_) => ResyncScope::Topic,
        }
    }
}

/// What a stream does with a live event, given where it stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveStep {
    /// Send it, with the cursor (already moved past it) as its `id:`, or without an id
    /// for a message that bypassed the backend and so has no position.
    Send { with_id: bool },
    /// Sent already (from history, at the seam).
    Skip,
    /// Events are missing before it, or its history restarted: catch up from that
    /// history first (which has this event too).
    Repair(Scope),
}

/// Decides what a stream at `cursor` does with `published`, moving the cursor past it
/// when it is sent. The one rule for every live event, whether the stream's task
/// handles it or the hub writes it directly.
pub fn live_step(cursor: &mut Cursor, published: &Published) -> LiveStep {
    let scope = published.scope;
    let Some(p) = published.position else {
        return LiveStep::Send { with_id: false };
    };
    let Some(at) = position_mut(cursor, scope) else {
        // A topic this stream does not carry (it never is offered one): not for it.
        return LiveStep::Skip;
    };
    match arrival(*at, p) {
        Arrival::Duplicate => LiveStep::Skip,
        Arrival::Next => {
            *at = p;
            LiveStep::Send { with_id: true }
        }
        Arrival::Gap => LiveStep::Repair(scope),
    }
}

/// Where `cursor` stands in `scope`; `None` for a topic it does not name.
pub fn position(cursor: &Cursor, scope: Scope) -> Option<Position> {
    match scope {
        Scope::User => Some(cursor.user),
        Scope::Broadcast => Some(cursor.broadcast),
        Scope::Topic(tag) => cursor.topic(tag),
    }
}

pub fn position_mut(cursor: &mut Cursor, scope: Scope) -> Option<&mut Position> {
    match scope {
        Scope::User => Some(&mut cursor.user),
        Scope::Broadcast => Some(&mut cursor.broadcast),
        Scope::Topic(tag) => cursor.topic_mut(tag),
    }
}

/// How a live event at `p` relates to a stream at `at` in the same history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arrival {
    /// Sent already.
    Duplicate,
    /// The very next one: send it.
    Next,
    /// Events are missing before it, or the history restarted.
    Gap,
}

/// Pure, like `delivery::reconcile`, and with its notion of one history's life: a stream that
/// opened before anything was published (at the default position) is in the life of
/// whatever epoch comes first, so the first event ever published reaches it directly
/// instead of sending every open stream to history at once.
fn arrival(at: Position, p: Position) -> Arrival {
    let same_life = p.epoch == at.epoch || at == Position::default();
    if !same_life {
        Arrival::Gap
    } else if p.seq <= at.seq {
        Arrival::Duplicate
    } else if Some(p.seq) == at.seq.checked_add(1) {
        Arrival::Next
    } else {
        Arrival::Gap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const E: u64 = 1_000;

    #[test]
    fn live_events_are_sent_in_sequence_and_gaps_go_to_history() {
        let at = Position::new(E, 5);
        assert_eq!(arrival(at, Position::new(E, 4)), Arrival::Duplicate);
        assert_eq!(arrival(at, Position::new(E, 5)), Arrival::Duplicate);
        assert_eq!(arrival(at, Position::new(E, 6)), Arrival::Next);
        assert_eq!(arrival(at, Position::new(E, 8)), Arrival::Gap);
        // The history restarted: what this stream missed of the old one is unknown.
        assert_eq!(arrival(at, Position::new(E + 1, 1)), Arrival::Gap);
        // The largest cursor a client can send is no exception.
        let far = Position::new(E, u64::MAX);
        assert_eq!(arrival(far, Position::new(E, 1)), Arrival::Duplicate);
    }

    #[test]
    fn the_first_event_ever_reaches_streams_opened_before_it_directly() {
        let never = Position::default();
        assert_eq!(arrival(never, Position::new(E, 1)), Arrival::Next);
        assert_eq!(arrival(never, Position::new(E, 3)), Arrival::Gap);
    }
}
