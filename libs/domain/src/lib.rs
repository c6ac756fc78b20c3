//! The business vocabulary of the PoS invoice backend: ids, currencies, exact money,
//! invoices, their lifecycle, the totals computation, fiscal records, credit notes and
//! catalogs. No I/O, no async.
//!
//! Data flows through it in one direction:
//! - [`draft::DraftInvoice`] is a request already parsed into valid parts
//!   (ingress builds it from its DTO; holding one proves every field is valid);
//! - [`invoice::Invoice::queued`] turns a draft into the `QUEUED` invoice that travels
//!   through the pipeline; [`draft::DraftInvoice::fingerprint`] names its content for
//!   idempotency;
//! - [`totals::compute`] is the money rule book: per-line net / tax / total and the
//!   invoice totals, or a permanent fault (`insufficient_payment`);
//! - [`state::InvoiceState`] and [`state::Version`] say which state changes are
//!   allowed, so every writer can refuse to move an invoice backwards.
//!
//! Layout:
//! - `currency.rs`: ISO 4217 codes and their minor units
//! - `money.rs`: exact decimal parsing and the one rounding function
//! - `ids.rs`: validated identifiers (tenant, terminal, idempotency key, invoice id, …)
//! - `draft.rs`: a parsed, valid request and its fingerprint
//! - `invoice.rs`: the invoice representation of the contract
//! - `totals.rs`: the computation
//! - `state.rs`: lifecycle and monotonic versions
//! - `time.rs`: timestamps in one fixed, sortable format
//! - `fiscal.rs`: the fiscal record, its hash chain and the chain's verifier
//! - `credit.rs`: the lines of a credit note and what is left to credit
//! - `catalog.rs`: products and tenant settings, parsed like drafts
//! - `openapi.rs`: schemas of the scalar types (feature `openapi`)

#![warn(missing_docs)]

pub mod catalog;
pub mod credit;
pub mod currency;
pub mod draft;
pub mod fiscal;
pub mod ids;
pub mod invoice;
pub mod money;
#[cfg(feature = "openapi")]
mod openapi;
pub mod state;
pub mod time;
pub mod totals;

pub use catalog::{Product, ProductDraft, TenantSettings};
pub use currency::Currency;
pub use draft::{DraftInvoice, DraftLine, FieldError};
pub use fiscal::{FiscalRecord, InvoiceKind, LedgerRecord};
pub use ids::{IdempotencyKey, InvoiceId, TenantId, TerminalId};
pub use invoice::{Customer, Invoice, InvoiceError, Line, Payment, PaymentMethod, TaxBand, Totals};
pub use state::{InvoiceState, Version};
pub use time::{IssuedAt, Timestamp};
pub use totals::{compute, Fault};
