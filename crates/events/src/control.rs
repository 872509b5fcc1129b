//! What one backend instance asks every instance to do, through Redis.

use serde::{Deserialize, Serialize};

/// The Redis Pub/Sub channel on which instances tell each other to act on streams
/// (every instance subscribes).
pub const CONTROL_CHANNEL: &str = "stream-control";

/// A message on [`CONTROL_CHANNEL`]. Another service can write to that channel too, so
/// a receiver admits it under the same rules as the API request that would send it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "action")]
pub enum Control {
    /// End every stream of `user_id`, telling it `reason`.
    #[serde(rename_all = "camelCase")]
    Disconnect { user_id: String, reason: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disconnect_reads_as_the_original_json() {
        let json = r#"{"action":"disconnect","userId":"alice","reason":"signed out"}"#;
        let control = Control::Disconnect {
            user_id: "alice".into(),
            reason: "signed out".into(),
        };
        assert_eq!(
            serde_json::from_str::<Control>(json).ok(),
            Some(control.clone())
        );
        assert_eq!(serde_json::to_string(&control).ok().as_deref(), Some(json));
    }
}
