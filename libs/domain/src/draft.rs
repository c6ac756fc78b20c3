//! A submitted invoice parsed into valid parts, and its fingerprint.
//!
//! [`DraftInvoice::parse`] takes the raw text of every field (decimals as the literal
//! text the client sent, JSON string or number) and either returns a draft in which
//! every value is valid, or the complete list of what is wrong, by JSON path.

use crate::money::{parse_decimal, DecimalError};
use crate::{Currency, Customer, IdempotencyKey, IssuedAt, Payment, PaymentMethod, TerminalId};
use rust_decimal::Decimal;
use sha2::{Digest, Sha256};

/// Most lines an invoice may hold (contract: `items` 1–500).
pub const MAX_LINES: usize = 500;
/// Longest sku, in characters.
pub const MAX_SKU_LEN: usize = 64;
/// Longest line, product, tenant or customer name, in characters.
pub const MAX_NAME_LEN: usize = 200;
/// Most payments an invoice may hold.
pub const MAX_PAYMENTS: usize = 100;
/// Upper bound for any amount, price or quantity. It keeps every product and sum of
/// the computation far inside `Decimal`'s range (500 × 10¹² × 10¹² < 7.9 × 10²⁸).
pub const MAX_MAGNITUDE: i64 = 1_000_000_000_000;

/// One failing field: its JSON path (`items[0].quantity`) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldError {
    /// Where: the field's JSON path, e.g. `items[0].quantity`.
    pub path: String,
    /// What is wrong with it, for a human (`must be > 0`).
    pub message: String,
}

impl FieldError {
    /// A failing field at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// The raw request, every field as text, as the HTTP layer decoded it.
#[derive(Debug, Clone, Default)]
pub struct RawDraft {
    /// `idempotencyKey`, from the body or the `Idempotency-Key` header.
    pub idempotency_key: Option<String>,
    /// `terminalId`: the terminal that issued the invoice.
    pub terminal_id: Option<String>,
    /// `currency`, an ISO 4217 code once checked.
    pub currency: Option<String>,
    /// `issuedAt`: the terminal's own clock, RFC 3339.
    pub issued_at: Option<String>,
    /// `taxInclusive`: whether unit prices include tax.
    pub tax_inclusive: bool,
    /// The buyer, if the invoice names one.
    pub customer: Option<Customer>,
    /// The invoice lines, as sent (or as ingress filled them from the catalog).
    pub items: Vec<RawLine>,
    /// The payments, as sent.
    pub payments: Vec<RawPayment>,
}

impl RawDraft {
    /// A valid one-line request (terminal `T1`, EUR, one unit of `A` at 1.00, 10 % tax):
    /// the starting point of tests and examples, which change what they are about.
    pub fn example() -> Self {
        Self {
            terminal_id: Some("T1".into()),
            currency: Some("EUR".into()),
            items: vec![RawLine {
                sku: Some("A".into()),
                name: Some("a".into()),
                quantity: Some("1".into()),
                unit_price: Some("1.00".into()),
                tax_rate: Some("0.10".into()),
                discount: None,
                priced_by_catalog: false,
            }],
            ..Self::default()
        }
    }
}

/// One invoice line of a [`RawDraft`], every field as the client's text.
#[derive(Debug, Clone, Default)]
pub struct RawLine {
    /// `sku`: the product code.
    pub sku: Option<String>,
    /// `name`: the product name.
    pub name: Option<String>,
    /// `quantity`: decimal text, > 0 once checked.
    pub quantity: Option<String>,
    /// `unitPrice`: decimal text, ≥ 0 once checked.
    pub unit_price: Option<String>,
    /// `taxRate`: decimal text, a fraction in [0, 1] once checked.
    pub tax_rate: Option<String>,
    /// `discount`: decimal text, an amount off the line; zero when absent.
    pub discount: Option<String>,
    /// Set by ingress when it filled name, unitPrice and taxRate from the catalog.
    pub priced_by_catalog: bool,
}

/// One payment of a [`RawDraft`], every field as the client's text.
#[derive(Debug, Clone, Default)]
pub struct RawPayment {
    /// `method`: `cash`, `card`, `voucher` or `other` once checked.
    pub method: Option<String>,
    /// `amount`: decimal text, > 0 once checked.
    pub amount: Option<String>,
}

/// A valid invoice line: every value within the contract's rules.
#[derive(Debug, Clone, PartialEq)]
pub struct DraftLine {
    /// The product code, 1–64 characters.
    pub sku: String,
    /// The product name, 1–200 characters.
    pub name: String,
    /// Units sold, > 0.
    pub quantity: Decimal,
    /// Price of one unit, ≥ 0; including tax if the invoice is tax-inclusive.
    pub unit_price: Decimal,
    /// Tax rate as a fraction in [0, 1] (`0.21` = 21 %).
    pub tax_rate: Decimal,
    /// Amount off the line, 0 ≤ discount ≤ quantity × unit price.
    pub discount: Decimal,
    /// Name, price and rate came from the tenant's catalog, not from the request: the
    /// fingerprint then leaves them out, so the same request sent again after a price
    /// change is still a replay of the invoice priced at acceptance.
    pub priced_by_catalog: bool,
}

/// A valid invoice request. Holding one proves every field passed the contract's rules.
#[derive(Debug, Clone, PartialEq)]
pub struct DraftInvoice {
    /// The client's key, scoped per tenant; `None` if it sent none.
    pub(crate) idempotency_key: Option<IdempotencyKey>,
    /// The terminal that issued the invoice.
    pub(crate) terminal_id: TerminalId,
    /// The invoice's currency; amounts round to its minor unit.
    pub(crate) currency: Currency,
    /// The terminal's `issuedAt`, valid RFC 3339 and kept as given; `None`: time of receipt.
    pub(crate) issued_at: Option<IssuedAt>,
    /// Whether unit prices include tax.
    pub(crate) tax_inclusive: bool,
    /// The buyer, if the invoice names one.
    pub(crate) customer: Option<Customer>,
    /// The invoice lines, 1–500.
    pub(crate) lines: Vec<DraftLine>,
    /// The payments, at most 100; may be empty.
    pub(crate) payments: Vec<Payment>,
}

/// The line and payment counts, checked before any line is looked at: a request over
/// them is refused in constant time whatever it holds (contract § Limits: a 256 KiB body
/// of empty items must not cost per-line work).
pub fn check_counts(items: usize, payments: usize) -> Result<(), Vec<FieldError>> {
    let mut errors = Vec::new();
    if items > MAX_LINES {
        errors.push(FieldError::new(
            "items",
            format!("must hold 1–{MAX_LINES} lines (got {items})"),
        ));
    }
    if payments > MAX_PAYMENTS {
        errors.push(FieldError::new(
            "payments",
            format!("must hold at most {MAX_PAYMENTS} payments (got {payments})"),
        ));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Collects every failing field instead of stopping at the first. Also the catalog's
/// (`catalog.rs`): one place for the text and decimal rules.
#[derive(Default)]
pub(crate) struct Errors(pub(crate) Vec<FieldError>);

impl Errors {
    pub(crate) fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError::new(path, message));
    }

    pub(crate) fn required<T>(&mut self, path: &str, value: Option<T>) -> Option<T> {
        if value.is_none() {
            self.push(path, "is required");
        }
        value
    }

    pub(crate) fn text(
        &mut self,
        path: &str,
        value: Option<&String>,
        max: usize,
    ) -> Option<String> {
        let value = self.required(path, value)?;
        let len = value.chars().count();
        if len == 0 || len > max {
            self.push(path, format!("must be 1–{max} characters"));
            return None;
        }
        Some(value.clone())
    }

    /// A decimal that must satisfy `rule` (described by `expectation`).
    pub(crate) fn decimal(
        &mut self,
        path: &str,
        text: Option<&String>,
        default: Option<Decimal>,
        rule: fn(Decimal) -> bool,
        expectation: &str,
    ) -> Option<Decimal> {
        let value = match (text, default) {
            (None, Some(d)) => return Some(d),
            (None, None) => {
                self.push(path, "is required");
                return None;
            }
            (Some(t), _) => t,
        };
        match parse_decimal(value) {
            Ok(d) if d.abs() > Decimal::from(MAX_MAGNITUDE) => {
                self.push(path, DecimalError::OutOfRange.to_string());
                None
            }
            Ok(d) if rule(d) => Some(d),
            Ok(_) => {
                self.push(path, expectation);
                None
            }
            Err(e) => {
                self.push(path, e.to_string());
                None
            }
        }
    }
}

impl DraftInvoice {
    /// Parses and checks every field; on failure returns every failing field.
    pub fn parse(raw: RawDraft) -> Result<Self, Vec<FieldError>> {
        check_counts(raw.items.len(), raw.payments.len())?;
        let mut errors = Errors(Vec::new());
        if raw.items.is_empty() {
            errors.push("items", format!("must hold 1–{MAX_LINES} lines"));
        }

        let idempotency_key = match raw.idempotency_key {
            None => None,
            Some(k) => IdempotencyKey::parse(k)
                .map_err(|e| errors.push("idempotencyKey", e.0))
                .ok(),
        };
        let terminal_id = errors
            .required("terminalId", raw.terminal_id)
            .and_then(|t| {
                TerminalId::parse(t)
                    .map_err(|e| errors.push("terminalId", e.0))
                    .ok()
            });
        let currency = errors.required("currency", raw.currency).and_then(|c| {
            Currency::parse(&c)
                .map_err(|e| errors.push("currency", e.to_string()))
                .ok()
        });
        let issued_at = raw.issued_at.and_then(|at| {
            IssuedAt::parse(at)
                .map_err(|_| {
                    errors.push(
                        "issuedAt",
                        "must be an RFC 3339 date-time, e.g. 2026-11-25T10:00:00Z",
                    );
                })
                .ok()
        });
        if let Some(c) = &raw.customer {
            if c.name
                .as_ref()
                .is_some_and(|n| n.chars().count() > MAX_NAME_LEN)
            {
                errors.push(
                    "customer.name",
                    format!("must be at most {MAX_NAME_LEN} characters"),
                );
            }
            if c.tax_id.as_ref().is_some_and(|n| n.chars().count() > 64) {
                errors.push("customer.taxId", "must be at most 64 characters");
            }
        }

        let mut lines = Vec::with_capacity(raw.items.len());
        for (i, item) in raw.items.iter().enumerate() {
            let p = |field: &str| format!("items[{i}].{field}");
            let sku = errors.text(&p("sku"), item.sku.as_ref(), MAX_SKU_LEN);
            let name = errors.text(&p("name"), item.name.as_ref(), MAX_NAME_LEN);
            let quantity = errors.decimal(
                &p("quantity"),
                item.quantity.as_ref(),
                None,
                |d| d > Decimal::ZERO,
                "must be > 0",
            );
            let unit_price = errors.decimal(
                &p("unitPrice"),
                item.unit_price.as_ref(),
                None,
                |d| d >= Decimal::ZERO,
                "must be ≥ 0",
            );
            let tax_rate = errors.decimal(
                &p("taxRate"),
                item.tax_rate.as_ref(),
                None,
                |d| d >= Decimal::ZERO && d <= Decimal::ONE,
                "must be a fraction in [0, 1] (\"0.21\" = 21 %)",
            );
            let discount = errors.decimal(
                &p("discount"),
                item.discount.as_ref(),
                Some(currency.map_or(Decimal::ZERO, crate::money::zero)),
                |d| d >= Decimal::ZERO,
                "must be ≥ 0",
            );
            if let (
                Some(sku),
                Some(name),
                Some(quantity),
                Some(unit_price),
                Some(tax_rate),
                Some(discount),
            ) = (sku, name, quantity, unit_price, tax_rate, discount)
            {
                if discount > quantity * unit_price {
                    errors.push(p("discount"), "must not exceed quantity × unitPrice");
                    continue;
                }
                lines.push(DraftLine {
                    sku,
                    name,
                    quantity,
                    unit_price,
                    tax_rate,
                    discount,
                    priced_by_catalog: item.priced_by_catalog,
                });
            }
        }

        let mut payments = Vec::with_capacity(raw.payments.len());
        for (i, payment) in raw.payments.iter().enumerate() {
            let method = errors
                .required(&format!("payments[{i}].method"), payment.method.as_ref())
                .and_then(|m| {
                    PaymentMethod::parse(m)
                        .ok_or_else(|| {
                            errors.push(
                                format!("payments[{i}].method"),
                                "must be one of cash, card, voucher, other",
                            );
                        })
                        .ok()
                });
            let path = format!("payments[{i}].amount");
            let amount = errors.decimal(
                &path,
                payment.amount.as_ref(),
                None,
                |d| d > Decimal::ZERO,
                "must be > 0",
            );
            if let (Some(amount), Some(cur)) = (amount, currency) {
                if amount.scale() > cur.minor_units()
                    && amount.normalize().scale() > cur.minor_units()
                {
                    errors.push(
                        path,
                        format!(
                            "has more decimal places than {cur} allows ({})",
                            cur.minor_units()
                        ),
                    );
                    continue;
                }
            }
            if let (Some(method), Some(amount)) = (method, amount) {
                payments.push(Payment { method, amount });
            }
        }

        match (terminal_id, currency) {
            (Some(terminal_id), Some(currency)) if errors.0.is_empty() => Ok(DraftInvoice {
                idempotency_key,
                terminal_id,
                currency,
                issued_at,
                tax_inclusive: raw.tax_inclusive,
                customer: raw.customer,
                lines,
                payments,
            }),
            _ => Err(errors.0),
        }
    }

    /// A digest of the request's content in canonical form: key order, and `3.5` versus
    /// `"3.50"`, do not change it; any change of meaning does. The idempotency key is not
    /// part of it (it is what the fingerprint is compared under).
    pub fn fingerprint(&self) -> String {
        let mut hasher = HashWriter(Sha256::new());
        // Writing into a hasher cannot fail.
        let _ = self.write_canonical(&mut hasher);
        hex::encode(hasher.0.finalize())
    }

    /// The canonical text the fingerprint digests: JSON with keys sorted and decimals
    /// normalised, written out by hand so that it is fixed by this code alone (serde_json's
    /// map order depends on a cargo feature that another crate may switch on), and
    /// streamed into the hasher without building a document first.
    fn write_canonical(&self, w: &mut impl std::io::Write) -> std::io::Result<()> {
        use Canonical::{Bool, Dec, Opt, Text};
        let issued_at = self.issued_at.as_ref().map(|t| t.instant().to_string());
        w.write_all(b"{\"currency\":")?;
        Text(self.currency.code()).write(w)?;
        w.write_all(b",\"customer\":")?;
        match &self.customer {
            Some(c) => object(
                w,
                &[
                    ("name", Opt(c.name.as_deref())),
                    ("taxId", Opt(c.tax_id.as_deref())),
                ],
            )?,
            None => w.write_all(b"null")?,
        }
        w.write_all(b",\"issuedAt\":")?;
        Opt(issued_at.as_deref()).write(w)?;
        w.write_all(b",\"items\":")?;
        array(w, &self.lines, |w, l| {
            if l.priced_by_catalog {
                // What the client sent: the catalog's values are not the request's.
                object(
                    w,
                    &[
                        ("discount", Dec(&l.discount)),
                        ("quantity", Dec(&l.quantity)),
                        ("sku", Text(&l.sku)),
                    ],
                )
            } else {
                object(
                    w,
                    &[
                        ("discount", Dec(&l.discount)),
                        ("name", Text(&l.name)),
                        ("quantity", Dec(&l.quantity)),
                        ("sku", Text(&l.sku)),
                        ("taxRate", Dec(&l.tax_rate)),
                        ("unitPrice", Dec(&l.unit_price)),
                    ],
                )
            }
        })?;
        w.write_all(b",\"payments\":")?;
        array(w, &self.payments, |w, p| {
            object(
                w,
                &[
                    ("amount", Dec(&p.amount)),
                    ("method", Text(p.method.as_str())),
                ],
            )
        })?;
        w.write_all(b",\"taxInclusive\":")?;
        Bool(self.tax_inclusive).write(w)?;
        w.write_all(b",\"terminalId\":")?;
        Text(self.terminal_id.as_str()).write(w)?;
        w.write_all(b"}")
    }
}

/// A value of the canonical text.
enum Canonical<'a> {
    Text(&'a str),
    Opt(Option<&'a str>),
    /// Normalised (`3.50` → `"3.5"`) and quoted.
    Dec(&'a Decimal),
    Bool(bool),
}

impl Canonical<'_> {
    fn write(&self, w: &mut impl std::io::Write) -> std::io::Result<()> {
        match self {
            Canonical::Text(s) | Canonical::Opt(Some(s)) => {
                serde_json::to_writer(&mut *w, s).map_err(std::io::Error::other)
            }
            Canonical::Opt(None) => w.write_all(b"null"),
            Canonical::Dec(d) => write!(w, "\"{}\"", d.normalize()),
            Canonical::Bool(b) => write!(w, "{b}"),
        }
    }
}

/// `{"k":v,...}` with the keys in the (sorted) order given.
fn object(w: &mut impl std::io::Write, fields: &[(&str, Canonical<'_>)]) -> std::io::Result<()> {
    for (i, (key, value)) in fields.iter().enumerate() {
        w.write_all(if i == 0 { b"{\"" } else { b",\"" })?;
        w.write_all(key.as_bytes())?;
        w.write_all(b"\":")?;
        value.write(w)?;
    }
    w.write_all(if fields.is_empty() { b"{}" } else { b"}" })
}

fn array<W: std::io::Write, T>(
    w: &mut W,
    items: &[T],
    mut each: impl FnMut(&mut W, &T) -> std::io::Result<()>,
) -> std::io::Result<()> {
    w.write_all(b"[")?;
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            w.write_all(b",")?;
        }
        each(w, item)?;
    }
    w.write_all(b"]")
}

/// Feeds what is written into a SHA-256.
struct HashWriter(Sha256);

impl std::io::Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn raw_line(q: &str, price: &str, rate: &str) -> RawLine {
        RawLine {
            sku: Some("SKU-1".into()),
            name: Some("Thing".into()),
            quantity: Some(q.into()),
            unit_price: Some(price.into()),
            tax_rate: Some(rate.into()),
            discount: None,
            priced_by_catalog: false,
        }
    }

    pub fn raw(currency: &str, items: Vec<RawLine>) -> RawDraft {
        RawDraft {
            terminal_id: Some("T1".into()),
            currency: Some(currency.into()),
            items,
            ..RawDraft::default()
        }
    }

    #[test]
    fn a_valid_request_parses() {
        let d = DraftInvoice::parse(raw("EUR", vec![raw_line("2", "3.50", "0.10")])).unwrap();
        assert_eq!(
            d.lines[0].discount.to_string(),
            "0.00",
            "a default discount is written in the minor unit"
        );
        assert_eq!(d.currency.code(), "EUR");
    }

    #[test]
    fn every_failing_field_is_listed_with_its_path() {
        let mut r = raw(
            "XXX",
            vec![raw_line("0", "-1", "1.5"), raw_line("x", "1", "0.1")],
        );
        r.terminal_id = None;
        r.idempotency_key = Some("bad key".into());
        r.payments = vec![RawPayment {
            method: Some("cheque".into()),
            amount: Some("0".into()),
        }];
        let errs = DraftInvoice::parse(r).unwrap_err();
        let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        for expected in [
            "idempotencyKey",
            "terminalId",
            "currency",
            "items[0].quantity",
            "items[0].unitPrice",
            "items[0].taxRate",
            "items[1].quantity",
            "payments[0].method",
            "payments[0].amount",
        ] {
            assert!(
                paths.contains(&expected),
                "{expected} missing from {paths:?}"
            );
        }
    }

    #[test]
    fn discount_may_not_exceed_the_gross_amount() {
        let mut line = raw_line("2", "1.00", "0");
        line.discount = Some("2.01".into());
        let errs = DraftInvoice::parse(raw("EUR", vec![line])).unwrap_err();
        assert_eq!(errs[0].path, "items[0].discount");
    }

    #[test]
    fn payments_cannot_be_finer_than_the_minor_unit() {
        let mut r = raw("JPY", vec![raw_line("1", "100", "0")]);
        r.payments = vec![RawPayment {
            method: Some("cash".into()),
            amount: Some("100.5".into()),
        }];
        assert_eq!(
            DraftInvoice::parse(r.clone()).unwrap_err()[0].path,
            "payments[0].amount"
        );
        r.payments[0].amount = Some("100.00".into());
        assert!(
            DraftInvoice::parse(r).is_ok(),
            "trailing zeros are not extra precision"
        );
    }

    #[test]
    fn the_canonical_text_is_sorted_normalised_json() {
        let mut r = raw("EUR", vec![raw_line("2.000", "3.50", "0.10")]);
        r.customer = Some(Customer {
            name: Some("ACME \"SL\"".into()),
            tax_id: None,
        });
        r.issued_at = Some("2026-11-25T11:00:00+01:00".into());
        r.payments = vec![RawPayment {
            method: Some("card".into()),
            amount: Some("10.0".into()),
        }];
        let d = DraftInvoice::parse(r).unwrap();
        let mut text = Vec::new();
        d.write_canonical(&mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert_eq!(
            text,
            r#"{"currency":"EUR","customer":{"name":"ACME \"SL\"","taxId":null},"issuedAt":"2026-11-25T10:00:00.000Z","items":[{"discount":"0","name":"Thing","quantity":"2","sku":"SKU-1","taxRate":"0.1","unitPrice":"3.5"}],"payments":[{"amount":"10","method":"card"}],"taxInclusive":false,"terminalId":"T1"}"#
        );
        // It is valid JSON, and the fingerprint is its digest.
        assert!(serde_json::from_str::<serde_json::Value>(&text).is_ok());
        assert_eq!(
            d.fingerprint(),
            hex::encode(Sha256::digest(text.as_bytes()))
        );
    }

    #[test]
    fn payment_method_names_are_the_serialised_ones() {
        use PaymentMethod::*;
        for m in [Cash, Card, Voucher, Other] {
            assert_eq!(
                serde_json::to_string(&m).unwrap(),
                format!("\"{}\"", m.as_str())
            );
            assert_eq!(PaymentMethod::parse(m.as_str()), Some(m));
        }
    }

    #[test]
    fn fingerprint_ignores_decimal_spelling_but_not_meaning() {
        let a = DraftInvoice::parse(raw("EUR", vec![raw_line("2", "3.5", "0.1")])).unwrap();
        let b = DraftInvoice::parse(raw("EUR", vec![raw_line("2.000", "3.50", "0.10")])).unwrap();
        let c = DraftInvoice::parse(raw("EUR", vec![raw_line("2", "3.51", "0.10")])).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
        let mut keyed = raw("EUR", vec![raw_line("2", "3.5", "0.1")]);
        keyed.idempotency_key = Some("k1".into());
        assert_eq!(
            DraftInvoice::parse(keyed).unwrap().fingerprint(),
            a.fingerprint()
        );
    }
}
