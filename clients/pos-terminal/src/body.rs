//! The invoice body as the outbox stores it: checked once at enqueue ([`Draft::parse`]),
//! then sealed with its idempotency key and `issuedAt` ([`Draft::seal`]) into the exact
//! text every attempt will `POST`.
//!
//! The cashier's JSON is never re-serialised: the two members are spliced in front of
//! the original text. Parsing into a `serde_json::Value` and printing it again would turn
//! a number literal such as `12345678901234567890.10` into a binary float, changing the
//! money the contract parses exactly from its text.

use crate::policy::IdempotencyKey;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::value::RawValue;
use std::collections::HashMap;

/// Why a body cannot be enqueued.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the invoice body is not valid JSON ({0})")]
    NotJson(serde_json::Error),
    #[error("the invoice body must be a JSON object")]
    NotAnObject,
    #[error("the invoice body has no \"terminalId\"")]
    MissingTerminalId,
    #[error("\"terminalId\" must be a JSON string")]
    TerminalIdNotText,
    #[error("the invoice body already carries \"idempotencyKey\"; the outbox assigns the key, remove it")]
    AlreadyKeyed,
}

/// A body that passed the checks and waits for its key.
#[derive(Debug)]
pub struct Draft<'a> {
    /// The object's text, surrounding whitespace removed; starts with `{`.
    object: &'a str,
    terminal_id: String,
    has_issued_at: bool,
}

impl<'a> Draft<'a> {
    pub fn parse(raw: &'a str) -> Result<Self, BodyError> {
        // A byte-order mark from a Windows editor is not part of the JSON.
        let object = raw.trim_start_matches('\u{feff}').trim();
        let _: &RawValue = serde_json::from_str(object).map_err(BodyError::NotJson)?;
        if !object.starts_with('{') {
            return Err(BodyError::NotAnObject);
        }
        let members: HashMap<String, &RawValue> =
            serde_json::from_str(object).map_err(BodyError::NotJson)?;
        if members.contains_key("idempotencyKey") {
            return Err(BodyError::AlreadyKeyed);
        }
        let terminal_id = members
            .get("terminalId")
            .ok_or(BodyError::MissingTerminalId)?;
        let terminal_id: String =
            serde_json::from_str(terminal_id.get()).map_err(|_| BodyError::TerminalIdNotText)?;
        Ok(Self {
            object,
            terminal_id,
            has_issued_at: members.contains_key("issuedAt"),
        })
    }

    pub fn terminal_id(&self) -> &str {
        &self.terminal_id
    }

    /// The text to store and send: the original members, preceded by `idempotencyKey`
    /// and, when the cashier gave none, `issuedAt` = `now` (the terminal's clock: an
    /// invoice sent hours later keeps the time it was made).
    pub fn seal(&self, key: &IdempotencyKey, now: DateTime<Utc>) -> String {
        // The object has at least `terminalId`, so a comma always follows the new members.
        let rest = &self.object[1..];
        let key = serde_json::Value::from(key.as_str());
        if self.has_issued_at {
            format!("{{\"idempotencyKey\":{key},{rest}")
        } else {
            let issued_at = serde_json::Value::from(issued_at(now));
            format!("{{\"idempotencyKey\":{key},\"issuedAt\":{issued_at},{rest}")
        }
    }
}

/// RFC 3339 in UTC with milliseconds and `Z`, e.g. `2026-11-25T10:00:00.123Z`.
pub fn issued_at(now: DateTime<Utc>) -> String {
    now.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-25T10:00:00.123Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn key() -> IdempotencyKey {
        IdempotencyKey::for_entry("T7", "0a1b2c3d", 1)
    }

    #[test]
    fn sealing_adds_the_key_and_the_terminal_time() {
        let draft = Draft::parse(r#" {"terminalId":"T7","currency":"EUR","items":[]} "#).unwrap();
        assert_eq!(draft.terminal_id(), "T7");
        let sealed = draft.seal(&key(), now());
        assert_eq!(
            sealed,
            r#"{"idempotencyKey":"T7.0a1b2c3d.0000000001","issuedAt":"2026-11-25T10:00:00.123Z","terminalId":"T7","currency":"EUR","items":[]}"#
        );
        let value: Value = serde_json::from_str(&sealed).unwrap();
        assert_eq!(value["idempotencyKey"], "T7.0a1b2c3d.0000000001");
    }

    #[test]
    fn a_given_issued_at_is_kept() {
        let draft =
            Draft::parse(r#"{"terminalId":"T7","issuedAt":"2020-01-01T00:00:00Z"}"#).unwrap();
        let value: Value = serde_json::from_str(&draft.seal(&key(), now())).unwrap();
        assert_eq!(value["issuedAt"], "2020-01-01T00:00:00Z");
    }

    #[test]
    fn number_literals_keep_their_exact_text() {
        let raw = "{\n  \"terminalId\": \"T7\",\n  \"items\": [{\"quantity\": 12345678901234567890.10, \"unitPrice\": 3.50}]\n}\n";
        let sealed = Draft::parse(raw).unwrap().seal(&key(), now());
        assert!(sealed.contains("12345678901234567890.10"), "{sealed}");
        assert!(sealed.contains("3.50"), "{sealed}");
        serde_json::from_str::<Value>(&sealed).unwrap();
    }

    #[test]
    fn bodies_that_cannot_be_sent_are_refused() {
        assert!(matches!(
            Draft::parse("not json"),
            Err(BodyError::NotJson(_))
        ));
        assert!(matches!(Draft::parse(""), Err(BodyError::NotJson(_))));
        assert!(matches!(Draft::parse("[1]"), Err(BodyError::NotAnObject)));
        assert!(matches!(
            Draft::parse("\"T7\""),
            Err(BodyError::NotAnObject)
        ));
        assert!(matches!(
            Draft::parse("{}"),
            Err(BodyError::MissingTerminalId)
        ));
        assert!(matches!(
            Draft::parse(r#"{"terminalId":7}"#),
            Err(BodyError::TerminalIdNotText)
        ));
        assert!(matches!(
            Draft::parse(r#"{"terminalId":"T7","idempotencyKey":"mine"}"#),
            Err(BodyError::AlreadyKeyed)
        ));
        assert!(matches!(
            Draft::parse(r#"{"terminalId":"T7","idempotencyKey":null}"#),
            Err(BodyError::AlreadyKeyed)
        ));
    }

    #[test]
    fn a_nested_idempotency_key_is_the_cashiers_business() {
        let draft = Draft::parse(r#"{"terminalId":"T7","customer":{"idempotencyKey":"x"}}"#);
        assert!(draft.is_ok());
    }

    #[test]
    fn a_byte_order_mark_is_not_part_of_the_body() {
        let sealed = Draft::parse("\u{feff}{\"terminalId\":\"T7\"}\n")
            .unwrap()
            .seal(&key(), now());
        assert!(sealed.starts_with("{\"idempotencyKey\""), "{sealed}");
        serde_json::from_str::<Value>(&sealed).unwrap();
    }

    #[test]
    fn escaped_terminal_ids_are_decoded() {
        let draft = Draft::parse(r#"{"terminalId":"caja\u00203"}"#).unwrap();
        assert_eq!(draft.terminal_id(), "caja 3");
    }
}
