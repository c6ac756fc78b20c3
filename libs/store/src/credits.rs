//! What credit notes took from each invoice: collection `credits`, one document per
//! credited invoice (`_id` = `<tenant>:<invoice id>`) holding the credited quantity and
//! discount of each line, the credit notes issued (key, id, lines) and a version.
//!
//! A credit request reads the document, lets [`domain::credit::take`] decide, and
//! writes the result only if the version is still the one it read: of two concurrent
//! requests that together exceed the invoice, the second one's write matches nothing,
//! it reads again, and `take` refuses it. The same idempotency key finds its own note
//! and gets the same id and lines back, so a retried request publishes the same credit
//! note (the broker deduplicates it by key).

use crate::{ledger::is_duplicate, Store, StoreError};
use domain::credit::{take, CreditError, CreditItem, Credited};
use domain::{IdempotencyKey, Invoice, InvoiceId, Line, Timestamp};
use mongodb::bson::{self, doc};
use serde::{Deserialize, Serialize};

const CREDITS: &str = "credits";
/// Tries before a request is told the invoice is contended.
const TRIES: usize = 20;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Note {
    key: Option<String>,
    note_id: InvoiceId,
    fingerprint: String,
    lines: Vec<Line>,
    issued_at: Timestamp,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreditsDoc {
    #[serde(rename = "_id")]
    id: String,
    tenant_id: String,
    credited: Credited,
    notes: Vec<Note>,
    version: i64,
}

/// A credit note the caller may publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Reserved {
    /// The credit note's invoice id, the same on every retry of the request.
    pub note_id: InvoiceId,
    /// The credit note's lines: the original's, with quantity and discount negated.
    pub lines: Vec<Line>,
    /// When the note was reserved: its `issuedAt`.
    pub issued_at: Timestamp,
}

/// Why a credit request is not reserved.
#[derive(Debug, thiserror::Error)]
pub enum CreditRefused {
    /// The credit rules refuse it (already credited, not COMPLETED, unknown sku, …).
    #[error(transparent)]
    Rule(#[from] CreditError),
    /// The key was used for a credit request with another body (`422`).
    #[error("the idempotency key was already used for a different credit request")]
    KeyReused,
    /// MongoDB failed, or the invoice's credits stayed contended: retry later.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Store {
    /// Reserves what the credit request takes from `original` (COMPLETED), or refuses
    /// it; the same key and body get their earlier reservation back.
    pub async fn reserve_credit(
        &self,
        original: &Invoice,
        key: Option<&IdempotencyKey>,
        fingerprint: &str,
        items: Option<&[CreditItem]>,
    ) -> Result<Reserved, CreditRefused> {
        let id = format!("{}:{}", original.tenant_id(), original.id());
        let credits = self.db().collection::<CreditsDoc>(CREDITS);
        for _ in 0..TRIES {
            let found = self
                .bounded(async { Ok(credits.find_one(doc! { "_id": id.as_str() }).await?) })
                .await?;
            if let (Some(doc), Some(key)) = (&found, key) {
                if let Some(note) = doc
                    .notes
                    .iter()
                    .find(|n| n.key.as_deref() == Some(key.as_str()))
                {
                    if note.fingerprint != fingerprint {
                        return Err(CreditRefused::KeyReused);
                    }
                    return Ok(Reserved {
                        note_id: note.note_id,
                        lines: note.lines.clone(),
                        issued_at: note.issued_at,
                    });
                }
            }
            let credited = found
                .as_ref()
                .map(|d| d.credited.clone())
                .unwrap_or_default();
            let (lines, after) = take(original, &credited, items)?;
            let note = Note {
                key: key.map(|k| k.as_str().to_owned()),
                note_id: InvoiceId::generate(),
                fingerprint: fingerprint.to_owned(),
                lines: lines.clone(),
                issued_at: Timestamp::now(),
            };
            let reserved = Reserved {
                note_id: note.note_id,
                lines,
                issued_at: note.issued_at,
            };
            let written = match found {
                None => {
                    let doc = CreditsDoc {
                        id: id.clone(),
                        tenant_id: original.tenant_id().to_string(),
                        credited: after,
                        notes: vec![note],
                        version: 1,
                    };
                    self.bounded(async {
                        match credits.insert_one(doc).await {
                            Ok(_) => Ok(true),
                            Err(e) if is_duplicate(&e) => Ok(false),
                            Err(e) => Err(e.into()),
                        }
                    })
                    .await?
                }
                Some(doc) => {
                    let set = doc! {
                        "$set": {
                            "credited": bson::to_bson(&after).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                            "version": doc.version + 1,
                        },
                        "$push": { "notes": bson::to_bson(&note).map_err(|e| StoreError::Corrupt(e.to_string()))? },
                    };
                    self.bounded(async {
                        let r = credits
                            .update_one(doc! { "_id": id.as_str(), "version": doc.version }, set)
                            .await?;
                        Ok(r.matched_count == 1)
                    })
                    .await?
                }
            };
            if written {
                return Ok(reserved);
            }
        }
        Err(StoreError::Unavailable("the invoice's credits stayed contended".into()).into())
    }
}
