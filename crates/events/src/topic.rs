//! Topics: named streams of events between "one user" and "everyone" (a chat room, a
//! document, a team's dashboard), and the patterns a token grants them with.

/// The longest accepted topic name, in characters.
pub const MAX_TOPIC_CHARS: usize = 128;

/// Checks a topic name: 1 to [`MAX_TOPIC_CHARS`] characters from `A-Z a-z 0-9 _ - . : @`
/// (the user id alphabet: names become parts of Redis keys and log lines).
pub fn validate_topic(topic: &str) -> Result<(), &'static str> {
    if topic.is_empty() {
        return Err("a topic name must not be empty");
    }
    if topic.len() > MAX_TOPIC_CHARS {
        return Err("a topic name must be at most 128 characters");
    }
    if !topic.bytes().all(is_topic_byte) {
        return Err("a topic name may contain only letters, digits and _ - . : @");
    }
    Ok(())
}

fn is_topic_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'@')
}

/// Whether `pattern` (from a token's `topics` or `publishTopics` claim) allows `topic`:
/// an exact name, or a prefix ending in `*` (`orders:*` allows `orders:42`, not
/// `orderz:1`; `*` alone allows every topic). A `*` anywhere else is no wildcard, so such
/// a pattern allows nothing (no topic holds a `*`).
pub fn pattern_allows(pattern: &str, topic: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => topic.starts_with(prefix),
        None => pattern == topic,
    }
}

/// Whether any of `patterns` allows `topic`.
pub fn patterns_allow(patterns: &[String], topic: &str) -> bool {
    patterns
        .iter()
        .any(|pattern| pattern_allows(pattern, topic))
}

/// Whether `pattern` is one a token may carry: a topic name, optionally followed by `*`,
/// or `*` alone. Others are left out of a credential (they could match nothing anyway).
pub fn is_topic_pattern(pattern: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some("") => true,
        Some(prefix) => validate_topic(prefix).is_ok(),
        None => validate_topic(pattern).is_ok(),
    }
}

/// The tag a cursor names a topic by: FNV-1a (64 bits) of its name, as [`crate::owner_tag`].
/// Stable across versions and instances.
pub fn topic_tag(topic: &str) -> u64 {
    crate::owner_tag(topic)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_user_id_alphabet_and_length() {
        for ok in [
            "chat:room-7",
            "orders:42",
            "a",
            "team.x_y@z",
            &"t".repeat(128),
        ] {
            assert_eq!(validate_topic(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "a b",
            "a*",
            "ä",
            "a/b",
            "{p1}",
            &"t".repeat(129),
            "a\nb",
        ] {
            assert!(validate_topic(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn patterns_are_exact_names_or_prefixes() {
        assert!(pattern_allows("chat:room-7", "chat:room-7"));
        assert!(!pattern_allows("chat:room-7", "chat:room-70"));
        assert!(pattern_allows("orders:*", "orders:42"));
        assert!(!pattern_allows("orders:*", "orderz:1"));
        assert!(!pattern_allows("orders:*", "orders"));
        assert!(pattern_allows("*", "anything"));
        assert!(!pattern_allows("or*ders", "orders"));
        assert!(!patterns_allow(&[], "a"));
        assert!(is_topic_pattern("*") && is_topic_pattern("a:*") && is_topic_pattern("a"));
        assert!(!is_topic_pattern("a b") && !is_topic_pattern("**") && !is_topic_pattern(""));
    }
}
