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
    /// The invoice in its current state.
    pub invoice: Invoice,
    /// Fingerprint of the request that created the invoice (see `DraftInvoice::fingerprint`).
    pub fingerprint: String,
}

/// A submission that left the pipeline without success: what was submitted, how many
/// attempts were made, and the last error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeadLetter {
    /// The submission as the processor consumed it from the invoices stream.
    pub submission: Envelope,
    /// Processing attempts made before giving up.
    pub attempts: u32,
    /// The error of the last attempt.
    pub last_error: InvoiceError,
    /// When it was dead-lettered.
    pub dead_at: Timestamp,
}

/// An envelope with its wire form, encoded once for every place it goes (the broker,
/// Redis): a state change used to be serialised again for each.
#[derive(Debug, Clone)]
pub struct Encoded<'a> {
    /// The envelope.
    pub envelope: &'a Envelope,
    /// Its JSON, as published and cached.
    pub bytes: bytes::Bytes,
}

impl Envelope {
    /// The envelope as JSON, the wire form.
    pub fn encode(&self) -> bytes::Bytes {
        // Serializing plain data with string keys cannot fail.
        serde_json::to_vec(self).map(Into::into).unwrap_or_default()
    }

    /// The envelope with its wire form, encoded once.
    pub fn encoded(&self) -> Encoded<'_> {
        Encoded {
            envelope: self,
            bytes: self.encode(),
        }
    }

    /// Reads an envelope from its JSON; unknown fields are refused.
    pub fn decode(payload: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(payload)
    }
}

impl DeadLetter {
    /// The dead letter as JSON, the wire form.
    pub fn encode(&self) -> bytes::Bytes {
        serde_json::to_vec(self).map(Into::into).unwrap_or_default()
    }

    /// Reads a dead letter from its JSON; unknown fields are refused.
    pub fn decode(payload: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(payload)
    }
}
