//! The names of event types, and the rule every name follows.
//!
//! A name is `domain.past_tense_verb`: two or more dot-separated segments of lowercase
//! ASCII letters, digits, `_` or `-`, at most [`MAX_LEN`] bytes in all
//! (`snapshots.generated`, `orders.shipped`, `chat.message-posted`). The `stream.` domain
//! is reserved for frames the server itself sends on a stream; publishers cannot use it.

/// Published to a user when snapshots of their accounts were taken.
pub const SNAPSHOTS_GENERATED: &str = "snapshots.generated";

/// Sent by the server as the first frame of every stream, with [`crate::StreamOpened`].
pub const STREAM_OPENED: &str = "stream.opened";

/// Sent by the server when it cannot replay what a stream missed (the history was
/// trimmed or lost): the client should refetch its state. Data: [`crate::Resync`].
pub const STREAM_RESYNC: &str = "stream.resync";

/// Sent by the server as the last frame of a stream whose credential expired: the client
/// should get a fresh one and resume from its last id. Data: [`crate::StreamEnded`].
pub const STREAM_EXPIRED: &str = "stream.expired";

/// Sent by the server as the last frame of a stream that a publisher disconnected
/// (logout, ban, leaked credential). Data: [`crate::StreamEnded`].
pub const STREAM_DISCONNECTED: &str = "stream.disconnected";

/// Sent by the server as the last frame of a stream it sheds to balance the fleet (it
/// holds more than its share): the client should reconnect at once, from its last id,
/// and will be served elsewhere. Data: [`crate::StreamEnded`].
pub const STREAM_RECONNECT: &str = "stream.reconnect";

/// Published by the server to a topic (for topics of `PRESENCE_EVENTS`) when a user's
/// first stream of it opens on any instance. Data: [`crate::PresenceChange`].
pub const STREAM_JOINED: &str = "stream.joined";

/// Published by the server to a topic (for topics of `PRESENCE_EVENTS`) when a user's
/// last stream of it closed (or their instance died). Data: [`crate::PresenceChange`].
pub const STREAM_LEFT: &str = "stream.left";

/// Whether `name` is one of the presence events the server publishes to topics: the only
/// reserved names an event in a history may carry.
pub fn is_presence(name: &str) -> bool {
    name == STREAM_JOINED || name == STREAM_LEFT
}

/// The domain reserved for the server's own frames.
pub const RESERVED_DOMAIN: &str = "stream";

/// The longest accepted name, in bytes.
pub const MAX_LEN: usize = 64;

/// Whether `name` follows the naming rule (reserved names included).
pub fn is_well_formed(name: &str) -> bool {
    let segment_ok = |segment: &str| {
        !segment.is_empty()
            && segment
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    };
    name.len() <= MAX_LEN && name.split('.').count() >= 2 && name.split('.').all(segment_ok)
}

/// Whether a publisher may send events named `name`: well formed and not reserved.
pub fn is_publishable(name: &str) -> bool {
    is_well_formed(name) && name.split('.').next() != Some(RESERVED_DOMAIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_names_follow_the_rule() {
        for name in [
            SNAPSHOTS_GENERATED,
            STREAM_OPENED,
            STREAM_RESYNC,
            STREAM_EXPIRED,
            STREAM_DISCONNECTED,
            STREAM_JOINED,
            STREAM_LEFT,
            STREAM_RECONNECT,
        ] {
            assert!(is_well_formed(name), "{name}");
        }
        assert!(is_publishable(SNAPSHOTS_GENERATED));
        assert!(is_publishable("chat.message-posted"));
        assert!(is_publishable("billing.invoice.paid_v2"));
    }

    #[test]
    fn malformed_and_reserved_names_are_refused() {
        for name in [
            "",
            "snapshots",
            "Snapshots.generated",
            "a..b",
            ".a",
            "a.",
            "a b.c",
            "a.b\n",
        ] {
            assert!(!is_publishable(name), "{name:?}");
        }
        assert!(!is_publishable(&format!("a.{}", "b".repeat(MAX_LEN))));
        assert!(!is_publishable(STREAM_OPENED));
        assert!(
            !is_publishable(STREAM_JOINED),
            "only the server announces presence"
        );
        assert!(is_presence(STREAM_LEFT) && !is_presence(STREAM_OPENED));
    }
}
