//! The invoice as the contract represents it, and the only methods that change its
//! lifecycle. Every stage of the pipeline carries this one shape.

use crate::fiscal::{Entry, FiscalRecord, InvoiceKind};
use crate::{
    money, Currency, DraftInvoice, IdempotencyKey, InvoiceId, InvoiceState, IssuedAt, TenantId,
    TerminalId, Timestamp, Version,
};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// The buyer named on an invoice; both fields optional.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Customer {
    /// The buyer's name, at most 200 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The buyer's tax id, at most 64 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tax_id: Option<String>,
}

/// How a payment was made.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PaymentMethod {
    /// Notes and coins.
    Cash,
    /// A debit or credit card.
    Card,
    /// A voucher or gift card.
    Voucher,
    /// Any other means.
    Other,
}

impl PaymentMethod {
    /// The method for its contract name (`cash`, `card`, `voucher`, `other`); `None` otherwise.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "cash" => Some(Self::Cash),
            "card" => Some(Self::Card),
            "voucher" => Some(Self::Voucher),
            "other" => Some(Self::Other),
            _ => None,
        }
    }

    /// The contract's name, as serialised.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cash => "cash",
            Self::Card => "card",
            Self::Voucher => "voucher",
            Self::Other => "other",
        }
    }
}

/// One payment towards an invoice.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Payment {
    /// How it was paid.
    pub method: PaymentMethod,
    /// The amount paid, > 0, at most the currency's minor-unit digits.
    pub amount: Decimal,
}

/// One invoice line: what the terminal sent, plus `net` / `tax` / `total` once computed.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Line {
    /// The product code.
    pub sku: String,
    /// The product name.
    pub name: String,
    /// Units sold; negative on a credit note.
    pub quantity: Decimal,
    /// Price of one unit; including tax if the invoice is tax-inclusive.
    pub unit_price: Decimal,
    /// Amount off the line; negative on a credit note.
    pub discount: Decimal,
    /// Tax rate as a fraction in [0, 1] (`0.21` = 21 %).
    pub tax_rate: Decimal,
    /// Amount before tax, rounded to the minor unit; `None` until computed.
    pub net: Option<Decimal>,
    /// Tax on the line, rounded half away from zero; `None` until computed.
    pub tax: Option<Decimal>,
    /// `net + tax`; `None` until computed.
    pub total: Option<Decimal>,
}

/// Net and tax of all lines at one tax rate (`taxBreakdown`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaxBand {
    /// The tax rate, as a fraction.
    pub rate: Decimal,
    /// Sum of the net of the lines at this rate.
    pub net: Decimal,
    /// Sum of the tax of the lines at this rate.
    pub tax: Decimal,
}

/// An invoice's computed money (contract § Money).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    /// Sum of the lines' net.
    pub net: Decimal,
    /// Sum of the lines' tax.
    pub tax: Decimal,
    /// Sum of the lines' totals: what the customer owes.
    pub total: Decimal,
    /// Sum of the payments.
    pub paid: Decimal,
    /// `paid − total` when positive, else zero in the minor unit's scale.
    pub change: Decimal,
    /// Net and tax grouped by tax rate.
    pub tax_breakdown: Vec<TaxBand>,
}

/// Why an invoice is FAILED: a stable machine code and a human message.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceError {
    /// Stable machine code, e.g. `retries_exhausted` or `insufficient_payment`.
    pub code: String,
    /// What went wrong, for a human.
    pub message: String,
}

/// The contract's invoice representation. Fields are public for reading; the lifecycle
/// changes only through the methods below, which refuse backward moves.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Invoice {
    /// The invoice's id, a UUIDv7.
    pub(crate) id: InvoiceId,
    /// The shop the invoice belongs to; no other tenant ever sees it.
    pub(crate) tenant_id: TenantId,
    /// The terminal that issued it.
    pub(crate) terminal_id: TerminalId,
    /// The client's idempotency key, if it sent one.
    pub(crate) idempotency_key: Option<IdempotencyKey>,
    /// Where the invoice is in its lifecycle.
    pub(crate) state: InvoiceState,
    /// The invoice's currency; amounts are rounded to its minor unit.
    pub(crate) currency: Currency,
    /// Whether unit prices include tax.
    pub(crate) tax_inclusive: bool,
    /// The terminal's own clock, kept exactly as given (offline invoices keep their time).
    pub(crate) issued_at: IssuedAt,
    /// When the backend accepted the invoice.
    pub(crate) created_at: Timestamp,
    /// When the invoice last changed state.
    pub(crate) updated_at: Timestamp,
    /// The buyer, if the invoice names one.
    pub(crate) customer: Option<Customer>,
    /// The invoice lines, in the order sent.
    pub(crate) items: Vec<Line>,
    /// The payments, in the order sent.
    pub(crate) payments: Vec<Payment>,
    /// The computed money; `None` until COMPLETED.
    pub(crate) totals: Option<Totals>,
    /// Processing attempts of the current generation; reset by a replay.
    pub(crate) attempts: u32,
    /// Why the invoice FAILED; `None` in any other state.
    pub(crate) error: Option<InvoiceError>,
    /// How many times an operator replayed this invoice out of the dead-letter stream.
    #[serde(default)]
    pub(crate) replays: u32,
    /// `invoice`, or `credit_note` (then `creditFor` names the invoice it corrects).
    #[serde(default)]
    pub(crate) kind: InvoiceKind,
    /// The invoice a credit note corrects; `None` for an invoice.
    #[serde(default)]
    pub(crate) credit_for: Option<InvoiceId>,
    /// Why a credit note was issued (as the manager gave it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) credit_reason: Option<String>,
    /// The invoice's record in its tenant's fiscal series: set with COMPLETED, never
    /// before, never on FAILED.
    #[serde(default)]
    pub(crate) fiscal: Option<FiscalRecord>,
}

/// A lifecycle method was asked for a move the state machine forbids.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invoice {id} cannot move from {from} to {to}")]
pub struct IllegalTransition {
    /// The invoice asked to move.
    pub id: InvoiceId,
    /// Its current state.
    pub from: InvoiceState,
    /// The state it was asked to move to.
    pub to: InvoiceState,
}

/// The computed money of an invoice (see [`crate::totals::compute`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Computed {
    /// Per line, in the invoice's line order.
    pub lines: Vec<LineAmounts>,
    /// The invoice's totals.
    pub totals: Totals,
}

/// The computed money of one line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LineAmounts {
    /// Amount before tax, rounded to the minor unit.
    pub net: Decimal,
    /// Tax on the line, rounded half away from zero.
    pub tax: Decimal,
    /// `net + tax`.
    pub total: Decimal,
}

impl Invoice {
    /// A newly accepted invoice, QUEUED, nothing computed yet.
    pub fn queued(id: InvoiceId, tenant_id: TenantId, draft: DraftInvoice, now: Timestamp) -> Self {
        let DraftInvoice {
            idempotency_key,
            terminal_id,
            currency,
            issued_at,
            tax_inclusive,
            customer,
            lines,
            payments,
        } = draft;
        Self {
            id,
            tenant_id,
            terminal_id,
            idempotency_key,
            state: InvoiceState::Queued,
            currency,
            tax_inclusive,
            issued_at: issued_at.unwrap_or_else(|| IssuedAt::at(now)),
            created_at: now,
            updated_at: now,
            customer,
            items: lines
                .into_iter()
                .map(|l| Line {
                    sku: l.sku,
                    name: l.name,
                    quantity: l.quantity,
                    unit_price: l.unit_price,
                    discount: l.discount,
                    tax_rate: l.tax_rate,
                    net: None,
                    tax: None,
                    total: None,
                })
                .collect(),
            payments,
            totals: None,
            attempts: 0,
            error: None,
            replays: 0,
            kind: InvoiceKind::Invoice,
            credit_for: None,
            credit_reason: None,
            fiscal: None,
        }
    }

    /// Where the invoice stands in the total order of its states, replays included.
    pub fn version(&self) -> Version {
        Version::of(self.state, self.attempts, self.replays)
    }

    fn advance(&mut self, to: InvoiceState, now: Timestamp) -> Result<(), IllegalTransition> {
        if !self.state.can_advance_to(to) {
            return Err(IllegalTransition {
                id: self.id,
                from: self.state,
                to,
            });
        }
        self.state = to;
        self.updated_at = now.max(self.updated_at);
        Ok(())
    }

    /// Processing attempt number `attempt` (1-based) has started.
    pub fn start_attempt(&mut self, attempt: u32, now: Timestamp) -> Result<(), IllegalTransition> {
        self.advance(InvoiceState::Processing, now)?;
        self.attempts = self.attempts.max(attempt);
        Ok(())
    }

    /// The facts the fiscal record of this invoice chains, once `computed` is its money.
    pub fn entry(&self, computed: &Computed) -> Entry {
        Entry::new(self, &computed.totals)
    }

    /// Records the computed amounts and the fiscal record, and completes the invoice.
    pub fn complete(
        &mut self,
        computed: Computed,
        fiscal: FiscalRecord,
        now: Timestamp,
    ) -> Result<(), IllegalTransition> {
        self.advance(InvoiceState::Completed, now)?;
        self.fiscal = Some(fiscal);
        for (line, amounts) in self.items.iter_mut().zip(computed.lines) {
            line.net = Some(amounts.net);
            line.tax = Some(amounts.tax);
            line.total = Some(amounts.total);
        }
        self.totals = Some(computed.totals);
        self.error = None;
        Ok(())
    }

    /// Fails the invoice with a contract error `code` and `message`.
    pub fn fail(
        &mut self,
        code: &str,
        message: &str,
        now: Timestamp,
    ) -> Result<(), IllegalTransition> {
        self.advance(InvoiceState::Failed, now)?;
        self.error = Some(InvoiceError {
            code: code.to_owned(),
            message: message.to_owned(),
        });
        Ok(())
    }

    /// An operator's replay out of the dead-letter stream: the one way back, FAILED →
    /// QUEUED. It starts a new generation (so its events outrank the failure's) and keeps
    /// the id and idempotency key.
    pub fn replay(&mut self, now: Timestamp) -> Result<(), IllegalTransition> {
        if self.state != InvoiceState::Failed {
            return Err(IllegalTransition {
                id: self.id,
                from: self.state,
                to: InvoiceState::Queued,
            });
        }
        self.state = InvoiceState::Queued;
        self.replays += 1;
        self.attempts = 0;
        self.error = None;
        self.totals = None;
        self.fiscal = None;
        for line in &mut self.items {
            line.net = None;
            line.tax = None;
            line.total = None;
        }
        self.updated_at = now.max(self.updated_at);
        Ok(())
    }

    /// Zero in this invoice's currency, in its minor-unit scale.
    pub fn zero(&self) -> Decimal {
        money::zero(self.currency)
    }

    // Read access only: every field changes through the lifecycle methods above, so
    // no caller can move a state backwards or complete an invoice without its record.
    /// The invoice's id, a UUIDv7.
    pub fn id(&self) -> InvoiceId {
        self.id
    }

    /// The shop the invoice belongs to.
    pub fn tenant_id(&self) -> &TenantId {
        &self.tenant_id
    }

    /// The terminal that issued it.
    pub fn terminal_id(&self) -> &TerminalId {
        &self.terminal_id
    }

    /// The client's idempotency key, if it sent one.
    pub fn idempotency_key(&self) -> Option<&IdempotencyKey> {
        self.idempotency_key.as_ref()
    }

    /// Where the invoice is in its lifecycle.
    pub fn state(&self) -> InvoiceState {
        self.state
    }

    /// The invoice's currency.
    pub fn currency(&self) -> Currency {
        self.currency
    }

    /// Whether unit prices include tax.
    pub fn tax_inclusive(&self) -> bool {
        self.tax_inclusive
    }

    /// The terminal's own clock, as given.
    pub fn issued_at(&self) -> &IssuedAt {
        &self.issued_at
    }

    /// When the backend accepted the invoice.
    pub fn created_at(&self) -> Timestamp {
        self.created_at
    }

    /// When the invoice last changed state.
    pub fn updated_at(&self) -> Timestamp {
        self.updated_at
    }

    /// The buyer, if the invoice names one.
    pub fn customer(&self) -> Option<&Customer> {
        self.customer.as_ref()
    }

    /// The invoice lines, in the order sent.
    pub fn items(&self) -> &[Line] {
        &self.items
    }

    /// The payments, in the order sent.
    pub fn payments(&self) -> &[Payment] {
        &self.payments
    }

    /// The computed money; `None` until COMPLETED.
    pub fn totals(&self) -> Option<&Totals> {
        self.totals.as_ref()
    }

    /// Processing attempts of the current generation.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Why the invoice FAILED; `None` in any other state.
    pub fn error(&self) -> Option<&InvoiceError> {
        self.error.as_ref()
    }

    /// How many times an operator replayed it out of the dead-letter stream.
    pub fn replays(&self) -> u32 {
        self.replays
    }

    /// An invoice or a credit note.
    pub fn kind(&self) -> InvoiceKind {
        self.kind
    }

    /// The invoice a credit note corrects.
    pub fn credit_for(&self) -> Option<InvoiceId> {
        self.credit_for
    }

    /// Why a credit note was issued.
    pub fn credit_reason(&self) -> Option<&str> {
        self.credit_reason.as_deref()
    }

    /// The fiscal record; set with COMPLETED, never before.
    pub fn fiscal(&self) -> Option<&FiscalRecord> {
        self.fiscal.as_ref()
    }
}
