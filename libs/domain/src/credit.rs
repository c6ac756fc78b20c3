//! Credit notes (contract § Fiscal record and ledger): the lines a credit request takes
//! from a completed invoice, and what of it is left to credit. No I/O.
//!
//! `store` keeps a [`Credited`] per original invoice and changes it only through
//! [`take`] under optimistic concurrency, so two concurrent requests can never credit
//! more than the invoice had. A credit note's lines are the original's with the
//! quantity and the discount negated; a partial quantity takes its share of the line's
//! discount, rounded to the minor unit, and the request that credits a line's last
//! quantity takes the rest of the discount, so the credits of a line sum exactly to it.

use crate::fiscal::InvoiceKind;
use crate::money::round_minor;
use crate::{Invoice, InvoiceId, InvoiceState, IssuedAt, Line, Timestamp};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// How much of each line of an invoice (by index) credit notes have taken so far.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Credited {
    /// Quantity credited so far, per line of the original.
    pub quantity: Vec<Decimal>,
    /// Discount credited so far, per line of the original, in the invoice's currency.
    pub discount: Vec<Decimal>,
}

/// Why a credit request cannot be taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CreditError {
    /// The original is itself a credit note.
    #[error("a credit note cannot be credited")]
    OfCreditNote,
    /// The original has not reached `COMPLETED` (it has no fiscal record to credit); its state.
    #[error("only a COMPLETED invoice can be credited (this one is {0})")]
    NotCompleted(InvoiceState),
    /// A requested sku that no line of the original has.
    #[error("sku `{0}` is not on the invoice")]
    UnknownSku(String),
    /// More than what is left of the original (`credit_exceeds_invoice`).
    #[error("crediting {asked} of `{sku}` exceeds what is left of the invoice ({left})")]
    Exceeds {
        /// The sku asked for.
        sku: String,
        /// The quantity asked for, as text.
        asked: String,
        /// The quantity of it not yet credited, as text.
        left: String,
    },
}

/// One requested line: a sku of the original and a quantity (> 0) of it.
#[derive(Debug, Clone, PartialEq)]
pub struct CreditItem {
    /// The sku of a line of the original.
    pub sku: String,
    /// How much of it to credit, > 0 (the credit note's line carries it negated).
    pub quantity: Decimal,
}

/// The content of a credit request, for idempotency: the same key with another body is
/// refused like any reused key.
pub fn fingerprint(original: InvoiceId, items: Option<&[CreditItem]>, reason: &str) -> String {
    let mut h = Sha256::new();
    h.update(format!("credit-note v1\n{original}\n{reason}\n"));
    match items {
        None => h.update("whole\n"),
        Some(items) => {
            for i in items {
                h.update(format!("{}\t{}\n", i.sku, i.quantity.normalize()));
            }
        }
    }
    hex::encode(h.finalize())
}

/// The negative lines of a credit note for `items` (`None`: the whole invoice), and the
/// credited state after it; refused if any of it was credited already.
pub fn take(
    original: &Invoice,
    credited: &Credited,
    items: Option<&[CreditItem]>,
) -> Result<(Vec<Line>, Credited), CreditError> {
    if original.kind == InvoiceKind::CreditNote {
        return Err(CreditError::OfCreditNote);
    }
    if original.state != InvoiceState::Completed {
        return Err(CreditError::NotCompleted(original.state));
    }
    let n = original.items.len();
    let mut after = credited.clone();
    after.quantity.resize(n, Decimal::ZERO);
    after.discount.resize(n, Decimal::ZERO);
    // (line index, quantity taken)
    let mut takes: Vec<(usize, Decimal)> = Vec::new();
    match items {
        None => {
            for (i, line) in original.items.iter().enumerate() {
                if !after.quantity[i].is_zero() {
                    return Err(CreditError::Exceeds {
                        sku: line.sku.clone(),
                        asked: line.quantity.to_string(),
                        left: (line.quantity - after.quantity[i]).to_string(),
                    });
                }
                takes.push((i, line.quantity));
            }
        }
        Some(items) => {
            for item in items {
                if !original.items.iter().any(|l| l.sku == item.sku) {
                    return Err(CreditError::UnknownSku(item.sku.clone()));
                }
                let mut wanted = item.quantity;
                for (i, line) in original.items.iter().enumerate() {
                    if wanted.is_zero() {
                        break;
                    }
                    let already = after.quantity[i]
                        + takes
                            .iter()
                            .filter(|t| t.0 == i)
                            .map(|t| t.1)
                            .sum::<Decimal>();
                    let left = line.quantity - already;
                    if line.sku != item.sku || left <= Decimal::ZERO {
                        continue;
                    }
                    let t = wanted.min(left);
                    takes.push((i, t));
                    wanted -= t;
                }
                if !wanted.is_zero() {
                    let left: Decimal = original
                        .items
                        .iter()
                        .enumerate()
                        .filter(|(_, l)| l.sku == item.sku)
                        .map(|(i, l)| {
                            l.quantity - credited.quantity.get(i).copied().unwrap_or_default()
                        })
                        .sum();
                    return Err(CreditError::Exceeds {
                        sku: item.sku.clone(),
                        asked: item.quantity.to_string(),
                        left: left.to_string(),
                    });
                }
            }
        }
    }
    let mut lines = Vec::with_capacity(takes.len());
    for (i, quantity) in takes {
        let line = &original.items[i];
        after.quantity[i] += quantity;
        let discount = if after.quantity[i] == line.quantity {
            line.discount - after.discount[i]
        } else {
            round_minor(line.discount * quantity / line.quantity, original.currency)
        };
        after.discount[i] += discount;
        lines.push(Line {
            sku: line.sku.clone(),
            name: line.name.clone(),
            quantity: -quantity,
            unit_price: line.unit_price,
            discount: negated(discount),
            tax_rate: line.tax_rate,
            net: None,
            tax: None,
            total: None,
        });
    }
    Ok((lines, after))
}

impl Invoice {
    /// A QUEUED credit note of `original` with `lines` (from [`take`]).
    pub fn credit_note(
        id: InvoiceId,
        original: &Invoice,
        lines: Vec<Line>,
        reason: String,
        idempotency_key: Option<crate::IdempotencyKey>,
        now: Timestamp,
    ) -> Self {
        Self {
            id,
            tenant_id: original.tenant_id.clone(),
            terminal_id: original.terminal_id.clone(),
            idempotency_key,
            state: InvoiceState::Queued,
            currency: original.currency,
            tax_inclusive: original.tax_inclusive,
            issued_at: IssuedAt::at(now),
            created_at: now,
            updated_at: now,
            customer: original.customer.clone(),
            items: lines,
            payments: Vec::new(),
            totals: None,
            attempts: 0,
            error: None,
            replays: 0,
            kind: InvoiceKind::CreditNote,
            credit_for: Some(original.id),
            credit_reason: Some(reason),
            fiscal: None,
        }
    }
}

/// `-d`, without a negative zero: rust_decimal keeps the sign of `-0`, which would be
/// written "-0.00" in the representation.
fn negated(d: Decimal) -> Decimal {
    let mut n = -d;
    if n.is_zero() {
        n.set_sign_positive(true);
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{compute, Currency, TenantId, TerminalId};
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn line(sku: &str, qty: &str, price: &str, discount: &str) -> Line {
        Line {
            sku: sku.into(),
            name: sku.into(),
            quantity: d(qty),
            unit_price: d(price),
            discount: d(discount),
            tax_rate: d("0.21"),
            net: None,
            tax: None,
            total: None,
        }
    }

    fn completed(lines: Vec<Line>) -> Invoice {
        let now = Timestamp::now();
        let mut inv = Invoice {
            id: InvoiceId::generate(),
            tenant_id: TenantId::parse("acme").unwrap(),
            terminal_id: TerminalId::parse("T1").unwrap(),
            idempotency_key: None,
            state: InvoiceState::Completed,
            currency: Currency::parse("EUR").unwrap(),
            tax_inclusive: false,
            issued_at: IssuedAt::at(now),
            created_at: now,
            updated_at: now,
            customer: None,
            items: lines,
            payments: vec![],
            totals: None,
            attempts: 1,
            error: None,
            replays: 0,
            kind: InvoiceKind::Invoice,
            credit_for: None,
            credit_reason: None,
            fiscal: None,
        };
        inv.totals = Some(compute(&inv).unwrap().totals);
        inv
    }

    fn item(sku: &str, qty: &str) -> CreditItem {
        CreditItem {
            sku: sku.into(),
            quantity: d(qty),
        }
    }

    #[test]
    fn a_whole_credit_negates_every_line_and_the_totals() {
        let original = completed(vec![
            line("A", "2", "3.50", "0.50"),
            line("B", "1", "10", "0"),
        ]);
        let (lines, after) = take(&original, &Credited::default(), None).unwrap();
        let note = Invoice::credit_note(
            InvoiceId::generate(),
            &original,
            lines,
            "r".into(),
            None,
            Timestamp::now(),
        );
        assert_eq!(
            note.items[1].discount.to_string(),
            "0",
            "no discount is 0, never -0"
        );
        let totals = compute(&note).unwrap().totals;
        let was = original.totals.as_ref().unwrap();
        assert_eq!(totals.total, -was.total);
        assert_eq!(totals.net, -was.net);
        assert_eq!(totals.change, d("0.00"), "a credit note gives no change");
        assert_eq!(after.quantity, vec![d("2"), d("1")]);
        assert!(matches!(
            take(&original, &after, None),
            Err(CreditError::Exceeds { .. })
        ));
    }

    #[test]
    fn partial_credits_never_exceed_the_line_and_their_discounts_sum_to_it() {
        let original = completed(vec![line("A", "3", "1.00", "1.00")]);
        let (l1, c1) = take(&original, &Credited::default(), Some(&[item("A", "1")])).unwrap();
        assert_eq!(l1[0].quantity, d("-1"));
        assert_eq!(l1[0].discount, d("-0.33"));
        let (l2, c2) = take(&original, &c1, Some(&[item("A", "2")])).unwrap();
        assert_eq!(l2[0].discount, d("-0.67"), "the last credit takes the rest");
        assert_eq!(c2.discount[0], d("1.00"));
        let err = take(&original, &c2, Some(&[item("A", "0.5")])).unwrap_err();
        assert!(
            matches!(err, CreditError::Exceeds { ref left, .. } if left == "0"),
            "{err:?}"
        );
        assert!(matches!(
            take(&original, &c1, Some(&[item("A", "2.5")])),
            Err(CreditError::Exceeds { .. })
        ));
    }

    #[test]
    fn a_credit_note_an_unknown_sku_or_an_unfinished_invoice_is_refused() {
        let original = completed(vec![line("A", "1", "1", "0")]);
        assert_eq!(
            take(&original, &Credited::default(), Some(&[item("Z", "1")])),
            Err(CreditError::UnknownSku("Z".into()))
        );
        let (lines, _) = take(&original, &Credited::default(), None).unwrap();
        let mut note = Invoice::credit_note(
            InvoiceId::generate(),
            &original,
            lines,
            "r".into(),
            None,
            Timestamp::now(),
        );
        note.state = InvoiceState::Completed;
        assert_eq!(
            take(&note, &Credited::default(), None),
            Err(CreditError::OfCreditNote)
        );
        let mut queued = original.clone();
        queued.state = InvoiceState::Queued;
        assert!(matches!(
            take(&queued, &Credited::default(), None),
            Err(CreditError::NotCompleted(_))
        ));
    }
}
