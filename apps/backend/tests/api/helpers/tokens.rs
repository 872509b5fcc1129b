//! Tokens minted by the tests themselves.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Mints a token with the test secret directly (for forged, expired or publisher tokens).
pub fn sign(secret: &str, claims: &backend::auth::Claims) -> String {
    backend::auth::Tokens::new(secret, Duration::from_secs(60))
        .sign(claims)
        .expect("HS256 signs")
}

/// Now, in seconds since the Unix epoch, as token claims count time.
pub fn epoch_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}
