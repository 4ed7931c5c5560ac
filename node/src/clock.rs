//! The one clock of a node: now in Unix seconds and as a UTC instant, and
//! the RFC 3339 text of a Unix time. Every service reads time here.

use chrono::{DateTime, Utc};

/// Now, in Unix seconds.
#[must_use]
pub fn now() -> i64 {
    Utc::now().timestamp()
}

/// Now, as a UTC instant (whole seconds, as stored).
#[must_use]
pub fn now_utc() -> DateTime<Utc> {
    DateTime::from_timestamp(now(), 0).unwrap_or_default()
}

/// The RFC 3339 text of a Unix time (empty for a time out of range).
#[must_use]
pub fn rfc3339(ts: i64) -> String {
    DateTime::from_timestamp(ts, 0)
        .map(|t| t.to_rfc3339())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_of_known_times() {
        for (ts, text) in [
            (0, "1970-01-01T00:00:00+00:00"),
            (1_767_225_600, "2026-01-01T00:00:00+00:00"),
            (i64::MAX, ""),
        ] {
            assert_eq!(rfc3339(ts), text, "{ts}");
        }
    }

    #[test]
    fn now_and_now_utc_agree() {
        let (a, b) = (now(), now_utc().timestamp());
        assert!((b - a).abs() <= 1, "{a} {b}");
    }
}
