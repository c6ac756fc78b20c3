//! The fiscal record and its hash chain (contract § Fiscal record and ledger), with no I/O.
//!
//! Data flows one way: a computed invoice gives an [`Entry`] (the invoice facts the chain
//! covers); [`Head::chain`] hangs it on the series' last record and yields the
//! [`LedgerRecord`] that is stored, exported and re-checked; its [`FiscalRecord`] is what
//! the invoice representation carries. [`Verifier`] walks a series in number order and
//! names the first record that no longer matches its hash, its link or its invoice.
//!
//! The hash is SHA-256 (64 uppercase hex digits) of the UTF-8 text
//! `v1|tenant|series|number|kind|invoiceId|issuedAt|currency|net|tax|total|previousHash|chainedAt`,
//! every field exactly as the representation writes it, so an auditor's own script can
//! re-check an export with these rules alone.

use crate::{Currency, Invoice, InvoiceId, IssuedAt, TaxBand, TenantId, Timestamp, Totals};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// An invoice, or a credit note that corrects one (an issued invoice is never edited).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvoiceKind {
    /// A sale.
    #[default]
    Invoice,
    /// A correction of a completed invoice, with negative quantities and amounts.
    CreditNote,
}

impl InvoiceKind {
    /// The kind as the API and the hash text spell it: `invoice` or `credit_note`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Invoice => "invoice",
            Self::CreditNote => "credit_note",
        }
    }
}

/// The fiscal record an invoice carries once COMPLETED (`fiscal` in the representation).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FiscalRecord {
    /// The series the record is numbered in (the tenant's `series` setting at the time).
    pub series: String,
    /// Position in the series: from 1, gapless, never reused.
    pub number: u64,
    /// When the record was chained; part of the hash text.
    pub chained_at: Timestamp,
    /// The hash of record `number − 1` of the series; empty for number 1.
    pub previous_hash: String,
    /// SHA-256 of the record's hash text, 64 uppercase hex digits.
    pub hash: String,
}

/// The facts of one computed invoice that its record covers.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The invoice's tenant.
    pub tenant_id: TenantId,
    /// Invoice or credit note.
    pub kind: InvoiceKind,
    /// The invoice the record is for.
    pub invoice_id: InvoiceId,
    /// The invoice's `issuedAt`, exactly as its representation writes it.
    pub issued_at: IssuedAt,
    /// The invoice's currency.
    pub currency: Currency,
    /// The invoice's net total.
    pub net: Decimal,
    /// The invoice's tax total.
    pub tax: Decimal,
    /// The invoice's total.
    pub total: Decimal,
    /// Net and tax by rate, as in the invoice's totals; exported, not hashed.
    pub tax_breakdown: Vec<TaxBand>,
}

impl Entry {
    /// The entry of a computed invoice; `None` while it has no totals.
    pub fn of(invoice: &Invoice) -> Option<Self> {
        Some(Self::new(invoice, invoice.totals.as_ref()?))
    }

    pub(crate) fn new(invoice: &Invoice, totals: &Totals) -> Self {
        Self {
            tenant_id: invoice.tenant_id.clone(),
            kind: invoice.kind,
            invoice_id: invoice.id,
            issued_at: invoice.issued_at.clone(),
            currency: invoice.currency,
            net: totals.net,
            tax: totals.tax,
            total: totals.total,
            tax_breakdown: totals.tax_breakdown.clone(),
        }
    }
}

/// One link of a series' chain, as stored and exported: every field of the hash text,
/// plus the invoice's tax breakdown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LedgerRecord {
    /// The tenant whose series this is.
    pub tenant_id: TenantId,
    /// The series the record is numbered in.
    pub series: String,
    /// Position in the series: from 1, gapless, never reused.
    pub number: u64,
    /// Invoice or credit note.
    pub kind: InvoiceKind,
    /// The invoice the record is for.
    pub invoice_id: InvoiceId,
    /// The invoice's `issuedAt`, exactly as its representation writes it.
    pub issued_at: IssuedAt,
    /// The invoice's currency.
    pub currency: Currency,
    /// The invoice's net total.
    pub net: Decimal,
    /// The invoice's tax total.
    pub tax: Decimal,
    /// The invoice's total.
    pub total: Decimal,
    /// The hash of record `number − 1` of the series; empty for number 1.
    pub previous_hash: String,
    /// SHA-256 of the hash text when chained, 64 uppercase hex digits.
    pub hash: String,
    /// When the record was chained.
    pub chained_at: Timestamp,
    /// Net and tax by rate, as in the invoice's totals; exported, not hashed.
    pub tax_breakdown: Vec<TaxBand>,
}

impl LedgerRecord {
    /// The contract's hash text of this record's fields.
    pub fn hash_text(&self) -> String {
        format!(
            "v1|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}",
            self.tenant_id,
            self.series,
            self.number,
            self.kind.as_str(),
            self.invoice_id,
            self.issued_at,
            self.currency.code(),
            self.net,
            self.tax,
            self.total,
            self.previous_hash,
            self.chained_at,
        )
    }

    /// SHA-256 of the hash text as the stored fields give it now.
    pub fn computed_hash(&self) -> String {
        hex::encode_upper(Sha256::digest(self.hash_text().as_bytes()))
    }

    /// The part of the record the invoice representation shows as `fiscal`.
    pub fn fiscal(&self) -> FiscalRecord {
        FiscalRecord {
            series: self.series.clone(),
            number: self.number,
            chained_at: self.chained_at,
            previous_hash: self.previous_hash.clone(),
            hash: self.hash.clone(),
        }
    }
}

/// The end of a series' chain: the number and hash a new record follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Number of the series' last record; 0 for an empty series.
    pub number: u64,
    /// Hash of the series' last record; empty for an empty series.
    pub hash: String,
}

impl Head {
    /// An empty series: the first record is number 1 and links to the empty text.
    pub fn empty() -> Self {
        Self {
            number: 0,
            hash: String::new(),
        }
    }

    /// The head after `record`: the next record follows it.
    pub fn of(record: &LedgerRecord) -> Self {
        Self {
            number: record.number,
            hash: record.hash.clone(),
        }
    }

    /// Hangs `entry` on this head as the next record of `series`, and moves the head to it.
    pub fn chain(&mut self, entry: &Entry, series: &str, chained_at: Timestamp) -> LedgerRecord {
        let mut record = LedgerRecord {
            tenant_id: entry.tenant_id.clone(),
            series: series.to_owned(),
            number: self.number + 1,
            kind: entry.kind,
            invoice_id: entry.invoice_id,
            issued_at: entry.issued_at.clone(),
            currency: entry.currency,
            net: entry.net,
            tax: entry.tax,
            total: entry.total,
            previous_hash: self.hash.clone(),
            hash: String::new(),
            chained_at,
            tax_breakdown: entry.tax_breakdown.clone(),
        };
        record.hash = record.computed_hash();
        *self = Self::of(&record);
        record
    }
}

/// The first record of a series that no longer holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Broken {
    /// The number of the first record that fails.
    pub number: u64,
    /// Why it fails, for a human (the `reason` of `firstBroken`).
    pub reason: String,
}

/// Walks one series in number order (feed every record, then [`Verifier::finish`]).
#[derive(Debug, Clone)]
pub struct Verifier {
    head: Head,
    count: u64,
}

impl Default for Verifier {
    fn default() -> Self {
        Self {
            head: Head::empty(),
            count: 0,
        }
    }
}

impl Verifier {
    /// Checks the next record, and the invoice it belongs to as stored once COMPLETED
    /// (`None` before that: the persister lags the ledger by a moment).
    pub fn check(
        &mut self,
        record: &LedgerRecord,
        invoice: Option<&Invoice>,
    ) -> Result<(), Broken> {
        let expected = self.head.number + 1;
        let broken = |number: u64, reason: String| Err(Broken { number, reason });
        if record.number != expected {
            return broken(
                expected,
                format!(
                    "record {expected} is missing (the next stored is {})",
                    record.number
                ),
            );
        }
        if record.previous_hash != self.head.hash {
            return broken(
                record.number,
                format!(
                    "previousHash is not the hash of record {}",
                    self.head.number
                ),
            );
        }
        if record.computed_hash() != record.hash {
            return broken(
                record.number,
                "hash does not match the record's fields".to_owned(),
            );
        }
        if let Some(invoice) = invoice {
            if let Some(what) = mismatch(record, invoice) {
                return broken(
                    record.number,
                    format!(
                        "invoice {} no longer matches its record: {what}",
                        record.invoice_id
                    ),
                );
            }
        }
        self.head = Head::of(record);
        self.count += 1;
        Ok(())
    }

    /// After the last record: `highest_on_invoices` is the highest number any stored
    /// invoice of the series shows (a deleted last record leaves no gap in the chain).
    pub fn finish(&self, highest_on_invoices: Option<u64>) -> Result<(), Broken> {
        match highest_on_invoices {
            Some(n) if n > self.head.number => Err(Broken {
                number: self.head.number + 1,
                reason: format!(
                    "record {} is missing (invoices carry numbers up to {n})",
                    self.head.number + 1
                ),
            }),
            _ => Ok(()),
        }
    }

    /// How many records passed so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The last record that passed: `lastNumber` and `lastHash` of the verify answer.
    pub fn head(&self) -> &Head {
        &self.head
    }
}

/// What of `invoice` differs from the facts its record chained, if anything.
fn mismatch(record: &LedgerRecord, invoice: &Invoice) -> Option<&'static str> {
    if invoice.id != record.invoice_id || invoice.tenant_id != record.tenant_id {
        return Some("id");
    }
    let Some(entry) = Entry::of(invoice) else {
        return Some("totals");
    };
    if (entry.net, entry.tax, entry.total) != (record.net, record.tax, record.total)
        || entry.tax_breakdown != record.tax_breakdown
    {
        return Some("totals");
    }
    if entry.issued_at != record.issued_at || entry.currency != record.currency {
        return Some("issuedAt or currency");
    }
    if entry.kind != record.kind {
        return Some("kind");
    }
    if invoice.fiscal.as_ref() != Some(&record.fiscal()) {
        return Some("fiscal");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn entry(total: &str) -> Entry {
        let d = |s: &str| Decimal::from_str(s).unwrap();
        Entry {
            tenant_id: TenantId::parse("acme").unwrap(),
            kind: InvoiceKind::Invoice,
            invoice_id: InvoiceId::parse("0193b7c2-0000-7000-8000-000000000001").unwrap(),
            issued_at: IssuedAt::parse("2026-11-25T10:00:00Z").unwrap(),
            currency: Currency::parse("EUR").unwrap(),
            net: d("7.00"),
            tax: d("0.70"),
            total: d(total),
            tax_breakdown: vec![],
        }
    }

    fn chain(n: usize) -> Vec<LedgerRecord> {
        let mut head = Head::empty();
        let at = Timestamp::parse_rfc3339("2026-11-25T10:00:00.456Z").unwrap();
        (0..n)
            .map(|_| head.chain(&entry("7.70"), "A", at))
            .collect()
    }

    #[test]
    fn the_hash_is_sha256_of_the_contract_text_in_uppercase_hex() {
        let first = &chain(1)[0];
        assert_eq!(
            first.hash_text(),
            "v1|acme|A|1|invoice|0193b7c2-0000-7000-8000-000000000001|2026-11-25T10:00:00Z|EUR|7.00|0.70|7.70||2026-11-25T10:00:00.456Z"
        );
        // printf '%s' '<text above>' | sha256sum | tr a-f A-F
        assert_eq!(
            first.hash,
            "E5BF27CA2E40A24CF74853A2AF297E585A1A6FB1EEAEC698DAD2D682C0004EF0"
        );
    }

    #[test]
    fn each_record_links_to_the_previous_hash_and_numbers_run_from_one() {
        let records = chain(3);
        assert_eq!(records[0].previous_hash, "");
        for (i, pair) in records.windows(2).enumerate() {
            assert_eq!(pair[1].previous_hash, pair[0].hash);
            assert_eq!(pair[1].number, i as u64 + 2);
        }
    }

    fn verify(records: &[LedgerRecord]) -> Result<u64, Broken> {
        let mut v = Verifier::default();
        for r in records {
            v.check(r, None)?;
        }
        v.finish(None)?;
        Ok(v.count())
    }

    #[test]
    fn verify_names_the_first_record_that_was_edited_relinked_or_deleted() {
        let good = chain(5);
        assert_eq!(verify(&good), Ok(5));

        let mut edited = good.clone();
        edited[2].total = Decimal::from_str("0.01").unwrap();
        assert_eq!(verify(&edited).unwrap_err().number, 3);

        let mut rehashed = good.clone();
        rehashed[3].hash = "0".repeat(64);
        assert_eq!(verify(&rehashed).unwrap_err().number, 4);

        let mut deleted = good.clone();
        deleted.remove(1);
        let broken = verify(&deleted).unwrap_err();
        assert_eq!(broken.number, 2);
        assert!(broken.reason.contains("missing"), "{}", broken.reason);

        let mut relinked = good.clone();
        relinked[4].previous_hash = good[2].hash.clone();
        assert_eq!(verify(&relinked).unwrap_err().number, 5);
    }

    #[test]
    fn a_deleted_last_record_is_named_from_the_invoices_numbers() {
        let mut records = chain(4);
        records.pop();
        let mut v = Verifier::default();
        for r in &records {
            v.check(r, None).unwrap();
        }
        assert_eq!(v.finish(Some(4)).unwrap_err().number, 4);
        assert_eq!(v.finish(Some(3)), Ok(()));
    }
}
