use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// How deep arrays and objects may nest in an event's `data`. Deeper data is refused
/// where events enter (the API, the relay), as subscribers' parsers may not cope with it.
pub const MAX_PAYLOAD_DEPTH: usize = 64;

/// An event's `data`: JSON kept exactly as its publisher wrote it.
///
/// Subscribers get the publisher's bytes, not a re-encoding of them: a parsed
/// `serde_json::Value` would round `2^64` to a float, write `1e5` as `100000.0`, drop a
/// big integer's digits and reorder an object's keys. Keeping the text also spares the
/// backend a parse and an encode per event. Checked as JSON on the way in.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Payload(Box<RawValue>);

impl Payload {
    /// The JSON `null`, which is what an event without `data` carries.
    pub fn null() -> Self {
        Self(RawValue::NULL.to_owned())
    }

    /// The payload that `value` serializes to.
    pub fn of<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<Self> {
        serde_json::value::to_raw_value(value).map(Self)
    }

    /// Checks that `json` is one JSON value and keeps it as written.
    pub fn from_json(json: String) -> serde_json::Result<Self> {
        RawValue::from_string(json).map(Self)
    }

    /// The JSON text, byte for byte as it was published.
    pub fn json(&self) -> &str {
        self.0.get()
    }

    /// Reads the payload as a `T`.
    pub fn parse<'a, T: Deserialize<'a>>(&'a self) -> serde_json::Result<T> {
        serde_json::from_str(self.json())
    }

    /// How deep its arrays and objects nest: 0 for a scalar, 1 for `[1]`, 2 for
    /// `{"a":[]}`. Counted without parsing, so any depth is cheap to measure.
    pub fn depth(&self) -> usize {
        let (mut depth, mut deepest) = (0_usize, 0_usize);
        let (mut in_string, mut escaped) = (false, false);
        for &byte in self.json().as_bytes() {
            if in_string {
                match byte {
                    _ if escaped => escaped = false,
                    b'\\' => escaped = true,
                    b'"' => in_string = false,
                    _ => {}
                }
                continue;
            }
            match byte {
                b'"' => in_string = true,
                b'[' | b'{' => {
                    depth += 1;
                    deepest = deepest.max(depth);
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        deepest
    }

    /// Whether the payload is the JSON `null`.
    pub fn is_null(&self) -> bool {
        self.json() == "null"
    }
}

impl Default for Payload {
    fn default() -> Self {
        Self::null()
    }
}

/// Two payloads are equal when their texts are: `{"a":1}` and `{ "a": 1 }` are not, as a
/// subscriber would tell them apart.
impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        self.json() == other.json()
    }
}

impl Eq for Payload {}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.json())
    }
}

impl From<serde_json::Value> for Payload {
    fn from(value: serde_json::Value) -> Self {
        // A `Value` always serializes.
        Self::of(&value).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_key_order_and_spacing_survive_a_round_trip() {
        let body = r#"{"z":18446744073709551616,"a":1e5,"big":123456789012345678901234567890,"f":0.1000, "s" : "\u00e9"}"#;
        let payload: Payload = serde_json::from_str(body).expect("parses");
        assert_eq!(payload.json(), body);
        let wrapped = serde_json::to_string(&payload).expect("serializes");
        assert_eq!(wrapped, body);
    }

    #[test]
    fn depth_counts_nesting_outside_strings() {
        let depth = |json: &str| Payload::from_json(json.into()).expect("is JSON").depth();
        assert_eq!(depth("1"), 0);
        assert_eq!(depth("[]"), 1);
        assert_eq!(depth(r#"{"a":[{"b":[]}],"c":{}}"#), 4);
        assert_eq!(depth(r#"["[[[{{", "\"[[", {"]]]": "\\"}]"#), 2);
        let deep = format!("{}1{}", "[".repeat(5000), "]".repeat(5000));
        assert_eq!(
            depth(&deep),
            5000,
            "deep input is measured, not parsed recursively"
        );
    }

    #[test]
    fn only_json_is_a_payload_and_missing_data_is_null() {
        assert!(Payload::from_json("{".into()).is_err());
        assert!(Payload::from_json("1 2".into()).is_err());
        assert!(Payload::default().is_null());
        assert_eq!(
            Payload::of(&serde_json::json!({"n": 1})).expect("serializes"),
            Payload::from_json(r#"{"n":1}"#.into()).expect("is JSON")
        );
    }
}
