//! Who is signed in on this page.

/// A signed-in user: who, the token that proves it, and what it lets them into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub user_id: String,
    pub token: String,
    /// The topic patterns (`room:*`, `room:lobby`) the token lets the user join and post
    /// to; asked for again with each fresh token.
    pub rooms: Vec<String>,
}

/// The room patterns typed in the sign-in form: separated by commas or spaces.
pub fn room_patterns(typed: &str) -> Vec<String> {
    typed
        .split([',', ' '])
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

/// The topic of the room called `name`.
pub fn room_topic(name: &str) -> String {
    format!("room:{}", name.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_split_on_commas_and_spaces() {
        assert_eq!(room_patterns("room:*"), ["room:*"]);
        assert_eq!(
            room_patterns(" room:a, room:b  room:c,"),
            ["room:a", "room:b", "room:c"]
        );
        assert!(room_patterns("  ").is_empty());
    }

    #[test]
    fn a_room_is_a_topic() {
        assert_eq!(room_topic(" lobby "), "room:lobby");
    }
}
