/// The longest accepted user id, in characters.
pub const MAX_USER_ID_CHARS: usize = 128;

/// Checks a user id: 1 to [`MAX_USER_ID_CHARS`] characters from `A-Z a-z 0-9 _ - . : @`.
///
/// User ids become parts of Redis keys and log lines, so anything else (spaces, braces,
/// control characters) is refused rather than escaped.
pub fn validate_user_id(user_id: &str) -> Result<(), &'static str> {
    if user_id.is_empty() {
        return Err("userId must not be empty");
    }
    if user_id.chars().count() > MAX_USER_ID_CHARS {
        return Err("userId must be at most 128 characters");
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '@');
    if !user_id.chars().all(allowed) {
        return Err("userId may contain only letters, digits and _ - . : @");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_ids() {
        for id in ["123", "alice", "user:42", "a.b-c_d@example.com"] {
            assert_eq!(validate_user_id(id), Ok(()), "{id}");
        }
        assert!(validate_user_id(&"x".repeat(MAX_USER_ID_CHARS)).is_ok());
    }

    #[test]
    fn refuses_empty_long_and_odd_ids() {
        for id in ["", "a b", "{tag}", "new\nline", "é"] {
            assert!(validate_user_id(id).is_err(), "{id:?}");
        }
        assert!(validate_user_id(&"x".repeat(MAX_USER_ID_CHARS + 1)).is_err());
    }
}
