//! A feed: one sequence of events with its own numbering and history. Below both the
//! hub (which finds a feed's streams) and the bus (which keeps its history).

use events::{BROADCAST_USER_ID, Envelope};

use crate::sequence::Scope;

/// One sequence of events with its own history: a user's own events, the broadcasts, or
/// a topic's events.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Feed {
    User(String),
    Broadcast,
    Topic(String),
}

impl Feed {
    pub fn of(envelope: &Envelope) -> Self {
        match &envelope.topic {
            Some(topic) => Self::Topic(topic.clone()),
            None if envelope.is_broadcast() => Self::Broadcast,
            None => Self::User(envelope.user_id.clone()),
        }
    }

    /// The feed's name in its Redis keys and channel: the user id, `*` for the broadcasts,
    /// `#` and the name for a topic (`#` is in neither alphabet, so no user id and no
    /// topic name share a key).
    pub fn key_name(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Self::User(user_id) => user_id.into(),
            Self::Broadcast => BROADCAST_USER_ID.into(),
            Self::Topic(topic) => format!("#{topic}").into(),
        }
    }
}

impl Feed {
    /// The feed whose [`Feed::key_name`] is `name`.
    pub fn from_key_name(name: &str) -> Self {
        match name {
            BROADCAST_USER_ID => Self::Broadcast,
            name => match name.strip_prefix('#') {
                Some(topic) => Self::Topic(topic.to_string()),
                None => Self::User(name.to_string()),
            },
        }
    }

    /// Where a stream's cursor counts this feed's events.
    pub fn scope(&self) -> Scope {
        match self {
            Self::User(_) => Scope::User,
            Self::Broadcast => Scope::Broadcast,
            Self::Topic(topic) => Scope::Topic(events::topic_tag(topic)),
        }
    }
}
