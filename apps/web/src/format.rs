//! How values are shown on the page. Pure, so unit-tested natively.

/// `HH:MM:SS.mmm` (UTC) of a time in milliseconds since the Unix epoch.
pub fn clock_time(epoch_ms: f64) -> String {
    if !epoch_ms.is_finite() || epoch_ms < 0.0 {
        return "--:--:--.---".into();
    }
    let ms = epoch_ms as u64;
    let (h, m, s, milli) = (
        (ms / 3_600_000) % 24,
        (ms / 60_000) % 60,
        (ms / 1000) % 60,
        ms % 1000,
    );
    format!("{h:02}:{m:02}:{s:02}.{milli:03}")
}

/// Delivery latency in whole milliseconds, from publication to receipt. `None` when the
/// event carries no publication time; never negative (clocks of different machines
/// may disagree by a little).
pub fn latency_ms(published_at: Option<u64>, received_at: f64) -> Option<u64> {
    let published = published_at? as f64;
    Some((received_at - published).max(0.0).round() as u64)
}

/// A random user id for people who do not want to type one: `user-` and 6 hex digits.
pub fn generated_user_id(random: f64) -> String {
    let n = (random.clamp(0.0, 0.999_999_9) * f64::from(0x100_0000)) as u32;
    format!("user-{n:06x}")
}

/// A balance with thousands separators: `1,234,567`.
pub fn balance(value: i64) -> String {
    let digits = value.unsigned_abs().to_string();
    let mut grouped = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(c);
    }
    if value < 0 {
        format!("-{grouped}")
    } else {
        grouped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_time_of_epoch_millis() {
        assert_eq!(clock_time(1_756_202_400_123.0), "10:00:00.123");
        assert_eq!(clock_time(0.0), "00:00:00.000");
        assert_eq!(clock_time(f64::NAN), "--:--:--.---");
    }

    #[test]
    fn latency_is_whole_and_never_negative() {
        assert_eq!(latency_ms(Some(1000), 1012.4), Some(12));
        assert_eq!(latency_ms(Some(1000), 990.0), Some(0));
        assert_eq!(latency_ms(None, 990.0), None);
    }

    #[test]
    fn generated_ids_look_alike() {
        assert_eq!(generated_user_id(0.0), "user-000000");
        assert_eq!(generated_user_id(0.5), "user-800000");
        assert_eq!(generated_user_id(1.0).len(), "user-000000".len());
        assert!(events::validate_user_id(&generated_user_id(0.123)).is_ok());
    }

    #[test]
    fn balances_are_grouped() {
        assert_eq!(balance(0), "0");
        assert_eq!(balance(999), "999");
        assert_eq!(balance(1000), "1,000");
        assert_eq!(balance(1_234_567), "1,234,567");
        assert_eq!(balance(-1_234), "-1,234");
    }
}
