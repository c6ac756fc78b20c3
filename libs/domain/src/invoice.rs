//! The invoice as the contract represents it, and the only methods that change its
//! lifecycle. Every stage of the pipeline carries this one shape.

use crate::fiscal::{Entry, FiscalRecord, InvoiceKind};
use crate::{
    money, Currency, DraftInvoice, IdempotencyKey, InvoiceId, InvoiceState, TenantId, TerminalId,
    Timestamp, Version,
};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Customer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tax_id: Option<String>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PaymentMethod {
    Cash,
    Card,
    Voucher,
    Other,
}

impl PaymentMethod {
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

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Payment {
    pub method: PaymentMethod,
    pub amount: Decimal,
}

/// One invoice line: what the terminal sent, plus `net` / `tax` / `total` once computed.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Line {
    pub sku: String,
    pub name: String,
    pub quantity: Decimal,
    pub unit_price: Decimal,
    pub discount: Decimal,
    pub tax_rate: Decimal,
    pub net: Option<Decimal>,
    pub tax: Option<Decimal>,
    pub total: Option<Decimal>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaxBand {
    pub rate: Decimal,
    pub net: Decimal,
    pub tax: Decimal,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    pub net: Decimal,
    pub tax: Decimal,
    pub total: Decimal,
    pub paid: Decimal,
    pub change: Decimal,
    pub tax_breakdown: Vec<TaxBand>,
}

/// Why an invoice is FAILED: a stable machine code and a human message.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceError {
    pub code: String,
    pub message: String,
}

/// The contract's invoice representation. Fields are public for reading; the lifecycle
/// changes only through the methods below, which refuse backward moves.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Invoice {
    pub id: InvoiceId,
    pub tenant_id: TenantId,
    pub terminal_id: TerminalId,
    pub idempotency_key: Option<IdempotencyKey>,
    pub state: InvoiceState,
    pub currency: Currency,
    pub tax_inclusive: bool,
    /// The terminal's own clock, kept exactly as given (offline invoices keep their time).
    pub issued_at: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub customer: Option<Customer>,
    pub items: Vec<Line>,
    pub payments: Vec<Payment>,
    pub totals: Option<Totals>,
    pub attempts: u32,
    pub error: Option<InvoiceError>,
    /// How many times an operator replayed this invoice out of the dead-letter stream.
    #[serde(default)]
    pub replays: u32,
    /// `invoice`, or `credit_note` (then `creditFor` names the invoice it corrects).
    #[serde(default)]
    pub kind: InvoiceKind,
    #[serde(default)]
    pub credit_for: Option<InvoiceId>,
    /// Why a credit note was issued (as the manager gave it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credit_reason: Option<String>,
    /// The invoice's record in its tenant's fiscal series: set with COMPLETED, never
    /// before, never on FAILED.
    #[serde(default)]
    pub fiscal: Option<FiscalRecord>,
}

/// A lifecycle method was asked for a move the state machine forbids.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invoice {id} cannot move from {from} to {to}")]
pub struct IllegalTransition {
    pub id: InvoiceId,
    pub from: InvoiceState,
    pub to: InvoiceState,
}

/// The computed money of an invoice (see [`crate::totals::compute`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Computed {
    pub lines: Vec<LineAmounts>,
    pub totals: Totals,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LineAmounts {
    pub net: Decimal,
    pub tax: Decimal,
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
            issued_at: issued_at.unwrap_or_else(|| now.to_string()),
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
}
