//! Validated identifiers. Each keeps its field private and has one fallible
//! constructor; serde goes through it, so a deserialized id is as valid as a parsed one.

use std::fmt;

/// Why a text is not a valid id, for the failing field's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct IdError(pub String);

macro_rules! text_id {
    ($(#[$doc:meta])* $name:ident, $max:expr, $charset_ok:expr, $charset_msg:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Longest valid id, in characters.
            pub const MAX_LEN: usize = $max;

            /// Checks length and characters; the message says which rule failed.
            pub fn parse(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                let len = value.chars().count();
                if len == 0 || len > $max {
                    return Err(IdError(format!("must be 1–{} characters", $max)));
                }
                let ok: fn(char) -> bool = $charset_ok;
                if !value.chars().all(ok) {
                    return Err(IdError($charset_msg.to_owned()));
                }
                Ok(Self(value))
            }

            /// The id as given.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, IdError> {
                Self::parse(value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

fn subject_safe(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

text_id!(
    /// A tenant (shop or chain). It becomes a NATS subject token, so it is restricted to
    /// characters that cannot break a subject (no `.`, `*`, `>` or blanks).
    TenantId,
    64,
    subject_safe,
    "may only contain A-Z, a-z, 0-9, `_` and `-`"
);

text_id!(
    /// A terminal's own id, as the terminal reports it.
    TerminalId,
    64,
    |c: char| !c.is_control(),
    "must not contain control characters"
);

text_id!(
    /// The client's idempotency key, scoped per tenant.
    IdempotencyKey,
    128,
    |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'),
    "may only contain A-Z, a-z, 0-9 and . _ : -"
);

/// An invoice id: a UUIDv7, so ids sort by creation time.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct InvoiceId(uuid::Uuid);

impl InvoiceId {
    /// A fresh, time-ordered id.
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7())
    }

    /// Parses any UUID text; only [`InvoiceId::generate`] guarantees a v7.
    pub fn parse(value: &str) -> Result<Self, IdError> {
        uuid::Uuid::try_parse(value)
            .map(Self)
            .map_err(|_| IdError("must be a UUID".into()))
    }
}

impl TryFrom<String> for InvoiceId {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, IdError> {
        Self::parse(&value)
    }
}

impl From<InvoiceId> for String {
    fn from(value: InvoiceId) -> String {
        value.0.to_string()
    }
}

impl fmt::Display for InvoiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_follow_the_contract_charset() {
        assert!(IdempotencyKey::parse("T7-20261125-000123").is_ok());
        assert!(IdempotencyKey::parse("a.b_c:d-e").is_ok());
        assert!(IdempotencyKey::parse("").is_err());
        assert!(IdempotencyKey::parse("has space").is_err());
        assert!(IdempotencyKey::parse("x".repeat(128)).is_ok());
        assert!(IdempotencyKey::parse("x".repeat(129)).is_err());
    }

    #[test]
    fn tenant_ids_cannot_break_a_nats_subject() {
        assert!(TenantId::parse("acme-01").is_ok());
        for bad in ["a.b", "a*", "a>", "a b", ""] {
            assert!(TenantId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn invoice_ids_are_time_ordered_uuids() {
        let a = InvoiceId::generate();
        let b = InvoiceId::generate();
        assert!(a < b);
        assert_eq!(InvoiceId::parse(&a.to_string()).unwrap(), a);
        assert!(InvoiceId::parse("nope").is_err());
    }

    #[test]
    fn serde_goes_through_the_constructor() {
        assert!(serde_json::from_str::<TenantId>("\"a.b\"").is_err());
        let t: TenantId = serde_json::from_str("\"acme\"").unwrap();
        assert_eq!(t.as_str(), "acme");
    }
}
