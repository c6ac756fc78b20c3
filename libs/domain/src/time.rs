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

/// An invoice's `issuedAt`: the terminal's own clock, a valid RFC 3339 date-time kept
/// exactly as the terminal wrote it (its offset too), because the fiscal record's hash
/// and the request fingerprint are computed over it. Only [`IssuedAt::parse`] and
/// [`IssuedAt::at`] make one, so holding one proves the text is a date-time.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IssuedAt {
    text: String,
    instant: Timestamp,
}

impl IssuedAt {
    /// Checks `text` is an RFC 3339 date-time and keeps it as written.
    pub fn parse(text: impl Into<String>) -> Result<Self, chrono::ParseError> {
        let text = text.into();
        let instant = Timestamp::parse_rfc3339(&text)?;
        Ok(Self { text, instant })
    }

    /// `now` (when the terminal did not say), in the backend's fixed format.
    pub fn at(now: Timestamp) -> Self {
        Self {
            text: now.to_string(),
            instant: now,
        }
    }

    /// The text as the terminal wrote it.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The instant it names, in UTC.
    pub fn instant(&self) -> Timestamp {
        self.instant
    }
}

impl fmt::Display for IssuedAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl serde::Serialize for IssuedAt {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> serde::Deserialize<'de> for IssuedAt {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::parse(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_at_keeps_the_terminals_text_and_knows_its_instant() {
        let at = IssuedAt::parse("2026-11-25T11:00:00+01:00").unwrap();
        assert_eq!(at.as_str(), "2026-11-25T11:00:00+01:00");
        assert_eq!(at.instant().to_string(), "2026-11-25T10:00:00.000Z");
        let json = serde_json::to_string(&at).unwrap();
        assert_eq!(json, "\"2026-11-25T11:00:00+01:00\"");
        assert_eq!(serde_json::from_str::<IssuedAt>(&json).unwrap(), at);
        assert!(IssuedAt::parse("yesterday").is_err());
        assert!(serde_json::from_str::<IssuedAt>("\"2026-13-01T00:00:00Z\"").is_err());
    }

    #[test]
    fn format_is_fixed_width_utc_and_sorts_as_text() {
        let a = Timestamp::parse_rfc3339("2026-11-25T10:00:00+01:00").unwrap();
        let b = Timestamp::parse_rfc3339("2026-11-25T09:30:00.5Z").unwrap();
        assert_eq!(a.to_string(), "2026-11-25T09:00:00.000Z");
        assert_eq!(b.to_string(), "2026-11-25T09:30:00.500Z");
        assert!(a < b && a.to_string() < b.to_string());
    }
}
