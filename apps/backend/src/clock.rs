//! Timestamps as the API writes them.

use std::time::SystemTime;

/// Now, as RFC 3339 in UTC with millisecond precision: `2025-08-26T10:00:00.000Z`.
pub fn now_rfc3339() -> String {
    rfc3339(SystemTime::now())
}

pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}
