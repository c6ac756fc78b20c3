//! Timestamps in one fixed, sortable format.

use chrono::{DateTime, SecondsFormat, Utc};
use std::fmt;

/// A UTC instant with millisecond precision. It is written as
/// `2026-11-25T10:00:00.123Z`, always the same width, so stored timestamps compare
/// correctly as strings (MongoDB range queries on `createdAt` rely on that).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(DateTime<Utc>);

impl Timestamp {
    /// The current instant, truncated to milliseconds.
    pub fn now() -> Self {
        Self::from_datetime(Utc::now())
    }

    /// `at`, truncated to milliseconds so it survives a round trip through its text.
    pub fn from_datetime(at: DateTime<Utc>) -> Self {
        // Truncated to milliseconds so a value survives a round trip through its text.
        let millis = at.timestamp_millis();
        Self(DateTime::from_timestamp_millis(millis).unwrap_or(at))
    }

    /// Parses any RFC 3339 text (any offset) into UTC.
    pub fn parse_rfc3339(text: &str) -> Result<Self, chrono::ParseError> {
        DateTime::parse_from_rfc3339(text).map(|t| Self::from_datetime(t.with_timezone(&Utc)))
    }

    /// The instant as a chrono UTC date-time.
    pub fn as_datetime(&self) -> DateTime<Utc> {
        self.0
    }

    /// Time from this instant until now; zero if it lies in the future (clock skew
    /// between hosts).
    pub fn elapsed(&self) -> std::time::Duration {
        (Utc::now() - self.0).to_std().unwrap_or_default()
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.to_rfc3339_opts(SecondsFormat::Millis, true))
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse_rfc3339(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_is_fixed_width_utc_and_sorts_as_text() {
        let a = Timestamp::parse_rfc3339("2026-11-25T10:00:00+01:00").unwrap();
        let b = Timestamp::parse_rfc3339("2026-11-25T09:30:00.5Z").unwrap();
        assert_eq!(a.to_string(), "2026-11-25T09:00:00.000Z");
        assert_eq!(b.to_string(), "2026-11-25T09:30:00.500Z");
        assert!(a < b && a.to_string() < b.to_string());
    }
}
