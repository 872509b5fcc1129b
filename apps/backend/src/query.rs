//! Reading one parameter of a request's query string, whichever HTTP layer carries it.

/// The first value of `name` in `query`, percent-decoded (an escape that is not UTF-8
/// becomes U+FFFD). Lenient on purpose: a repeated parameter or a broken escape elsewhere
/// in the query must not make the others unreadable (a lost ticket, or a cursor read as
/// absent instead of unknown).
pub fn param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

/// Every value of `name` in `query`, in order, percent-decoded as [`param`] does.
pub fn params<'a>(query: &'a str, name: &'a str) -> impl Iterator<Item = String> + 'a {
    form_urlencoded::parse(query.as_bytes())
        .filter(move |(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_value_counts_and_bad_escapes_stay_local() {
        let query = "ticket=a%20b&ticket=c&lastEventId=%FF&x";
        assert_eq!(param(query, "ticket").as_deref(), Some("a b"));
        assert_eq!(param(query, "lastEventId").as_deref(), Some("\u{FFFD}"));
        assert_eq!(param(query, "x").as_deref(), Some(""));
        assert_eq!(param(query, "token"), None);
        assert_eq!(param("", "ticket"), None);
    }
}
