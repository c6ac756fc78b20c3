//! Message shapes. Every message is JSON; decoding refuses unknown shapes, so a message
//! from a future version fails loudly instead of being half-read.

use domain::{Invoice, InvoiceError, Timestamp};
use serde::{Deserialize, Serialize};

/// An invoice in flight, as carried on the submit and events subjects: the invoice in
/// its current state plus the fingerprint of the request that created it (needed by
/// whoever later answers an idempotent replay).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Envelope {
    pub invoice: Invoice,
    pub fingerprint: String,
}

/// A submission that left the pipeline without success: what was submitted, how many
/// attempts were made, and the last error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeadLetter {
    pub submission: Envelope,
    pub attempts: u32,
    pub last_error: InvoiceError,
    pub dead_at: Timestamp,
}

/// An envelope with its wire form, encoded once for every place it goes (the broker,
/// Redis): a state change used to be serialised again for each.
#[derive(Debug, Clone)]
pub struct Encoded<'a> {
    pub envelope: &'a Envelope,
    pub bytes: bytes::Bytes,
}

impl Envelope {
    pub fn encode(&self) -> bytes::Bytes {
        // Serializing plain data with string keys cannot fail.
        serde_json::to_vec(self).map(Into::into).unwrap_or_default()
    }

    pub fn encoded(&self) -> Encoded<'_> {
        Encoded {
            envelope: self,
            bytes: self.encode(),
        }
    }

    pub fn decode(payload: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(payload)
    }
}

impl DeadLetter {
    pub fn encode(&self) -> bytes::Bytes {
        serde_json::to_vec(self).map(Into::into).unwrap_or_default()
    }

    pub fn decode(payload: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(payload)
    }
}
