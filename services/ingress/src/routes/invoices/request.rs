//! The body of `POST /invoices` and how it becomes a [`DraftInvoice`]: the DTO
//! (`validator` for shapes, its schema attributes for the OpenAPI document), the catalog
//! and tenant defaults filling what a line or the request left out, and every failing
//! field reported by its contract path (`items[3].sku`). No I/O: the handler fetches
//! what the catalog supplies and hands it in.

use crate::{error::ApiError, extract::DecimalText};
use domain::draft::{RawDraft, RawLine, RawPayment};
use domain::{Customer, DraftInvoice, FieldError};
use serde::Deserialize;
use validator::{Validate, ValidationErrors, ValidationErrorsKind};

// The schema attributes state the same rules the parser enforces (lengths, counts,
// required fields, the currency table), so generated valid requests pass them and
// invalid ones are refused. What a schema cannot say (decimal ranges, discount ≤ gross,
// a currency's decimal places) is the parser's alone.
#[derive(Debug, Deserialize, Validate, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InvoiceRequest {
    #[schema(nullable = false, pattern = "^[A-Za-z0-9._:-]{1,128}$")]
    idempotency_key: Option<String>,
    #[schema(required = true, nullable = false, min_length = 1, max_length = 64)]
    terminal_id: Option<String>,
    /// Optional when the tenant has a `defaultCurrency`.
    #[schema(nullable = false, value_type = domain::Currency)]
    currency: Option<String>,
    #[schema(nullable = false, format = DateTime)]
    issued_at: Option<String>,
    #[serde(default)]
    tax_inclusive: bool,
    #[schema(nullable = false)]
    customer: Option<Customer>,
    #[serde(default)]
    // Line count is a domain rule (DraftInvoice::parse); here only each line's shape.
    #[validate(nested)]
    #[schema(required = true, min_items = 1, max_items = 500)]
    items: Vec<ItemRequest>,
    #[serde(default)]
    #[schema(max_items = 100)]
    payments: Vec<PaymentRequest>,
}

#[derive(Debug, Deserialize, Validate, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct ItemRequest {
    #[validate(length(min = 1, max = 64, message = "must be 1–64 characters"))]
    #[schema(required = true, nullable = false, min_length = 1, max_length = 64)]
    sku: Option<String>,
    /// With `unitPrice` and `taxRate`; all three absent: taken from the catalog.
    #[validate(length(min = 1, max = 200, message = "must be 1–200 characters"))]
    #[schema(nullable = false, min_length = 1, max_length = 200)]
    name: Option<String>,
    #[schema(required = true, nullable = false)]
    quantity: Option<DecimalText>,
    #[schema(nullable = false)]
    unit_price: Option<DecimalText>,
    #[schema(nullable = false)]
    tax_rate: Option<DecimalText>,
    #[schema(nullable = false)]
    discount: Option<DecimalText>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct PaymentRequest {
    #[schema(required = true, nullable = false, value_type = String, example = "cash")]
    #[schema(pattern = "^(cash|card|voucher|other)$")]
    method: Option<String>,
    #[schema(required = true, nullable = false)]
    amount: Option<DecimalText>,
}

fn camel(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut upper = false;
    for c in field.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// Flattens `validator`'s nested errors into contract paths (`items[3].sku`).
fn flatten(prefix: &str, errors: &ValidationErrors, out: &mut Vec<FieldError>) {
    for (field, kind) in errors.errors() {
        let path = if prefix.is_empty() {
            camel(field)
        } else {
            format!("{prefix}.{}", camel(field))
        };
        match kind {
            ValidationErrorsKind::Field(list) => {
                for e in list {
                    let message = e
                        .message
                        .as_ref()
                        .map_or_else(|| e.code.to_string(), std::string::ToString::to_string);
                    out.push(FieldError::new(path.clone(), message));
                }
            }
            ValidationErrorsKind::Struct(inner) => flatten(&path, inner, out),
            ValidationErrorsKind::List(items) => {
                for (i, inner) in items {
                    flatten(&format!("{path}[{i}]"), inner, out);
                }
            }
        }
    }
}

/// What the tenant's catalog and settings supply to a request (contract § Catalog and
/// tenant): the active products its sku-only lines name, and the default currency.
#[derive(Debug, Default)]
pub(super) struct Supplied {
    pub(super) products: std::collections::HashMap<String, domain::Product>,
    pub(super) default_currency: Option<domain::Currency>,
}

impl ItemRequest {
    /// A line that gives none of name, unitPrice and taxRate is priced by the catalog.
    fn wants_catalog(&self) -> bool {
        self.name.is_none() && self.unit_price.is_none() && self.tax_rate.is_none()
    }
}

impl InvoiceRequest {
    /// The line and payment counts alone (constant time, before any per-line work).
    pub(super) fn check_counts(&self) -> Result<(), ApiError> {
        domain::draft::check_counts(self.items.len(), self.payments.len())
            .map_err(ApiError::validation)
    }

    /// Whether the request names its currency (else the tenant's default applies).
    pub(super) fn names_currency(&self) -> bool {
        self.currency.is_some()
    }

    /// The skus of the lines the catalog must price.
    pub(super) fn catalog_skus(&self) -> Vec<&str> {
        let mut skus: Vec<&str> = self
            .items
            .iter()
            .filter(|i| i.wants_catalog())
            .filter_map(|i| i.sku.as_deref())
            .collect();
        skus.sort_unstable();
        skus.dedup();
        skus
    }

    /// DTO → domain draft, with every failing field (nothing supplied by the tenant).
    #[cfg(test)]
    fn into_draft(self, header_key: Option<String>) -> Result<DraftInvoice, ApiError> {
        self.into_draft_with(header_key, &Supplied::default())
    }

    /// DTO → domain draft, the catalog and settings filling what the request left out.
    pub(super) fn into_draft_with(
        self,
        header_key: Option<String>,
        supplied: &Supplied,
    ) -> Result<DraftInvoice, ApiError> {
        // Before any per-line work: an oversized request costs the same as a small one.
        self.check_counts()?;
        let mut details = Vec::new();
        if let Err(e) = self.validate() {
            flatten("", &e, &mut details);
        }
        let idempotency_key = match (self.idempotency_key, header_key) {
            (Some(b), Some(h)) if b != h => {
                details.push(FieldError::new(
                    "idempotencyKey",
                    "differs from the Idempotency-Key header",
                ));
                Some(b)
            }
            (b, h) => b.or(h),
        };
        let raw = RawDraft {
            idempotency_key,
            terminal_id: self.terminal_id,
            currency: self
                .currency
                .or_else(|| supplied.default_currency.map(|c| c.code().to_owned())),
            issued_at: self.issued_at,
            tax_inclusive: self.tax_inclusive,
            customer: self.customer,
            items: self
                .items
                .into_iter()
                .enumerate()
                .map(|(n, i)| {
                    let product = i
                        .wants_catalog()
                        .then(|| i.sku.as_ref().and_then(|s| supplied.products.get(s)))
                        .flatten();
                    if i.wants_catalog() && product.is_none() {
                        details.push(FieldError::new(
                            format!("items[{n}].sku"),
                            "is not an active product of the catalog: give name, unitPrice and taxRate",
                        ));
                    }
                    match product {
                        Some(p) => RawLine {
                            sku: i.sku,
                            name: Some(p.name.clone()),
                            quantity: i.quantity.map(|d| d.text()),
                            unit_price: Some(p.unit_price.to_string()),
                            tax_rate: Some(p.tax_rate.to_string()),
                            discount: i.discount.map(|d| d.text()),
                            priced_by_catalog: true,
                        },
                        None => RawLine {
                            sku: i.sku,
                            name: i.name,
                            quantity: i.quantity.map(|d| d.text()),
                            unit_price: i.unit_price.map(|d| d.text()),
                            tax_rate: i.tax_rate.map(|d| d.text()),
                            discount: i.discount.map(|d| d.text()),
                            priced_by_catalog: false,
                        },
                    }
                })
                .collect(),
            payments: self
                .payments
                .into_iter()
                .map(|p| RawPayment {
                    method: p.method,
                    amount: p.amount.map(|d| d.text()),
                })
                .collect(),
        };
        match DraftInvoice::parse(raw) {
            Ok(draft) if details.is_empty() => Ok(draft),
            Ok(_) => Err(ApiError::validation(details)),
            Err(domain_errors) => {
                // One message per path: `validator` already named the shape problems.
                let mut seen: std::collections::HashSet<String> =
                    details.iter().map(|d| d.path.clone()).collect();
                details.extend(
                    domain_errors
                        .into_iter()
                        .filter(|e| seen.insert(e.path.clone())),
                );
                Err(ApiError::validation(details))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_keep_their_literal_text() {
        let r: InvoiceRequest = crate::extract::decode(
            br#"{"terminalId":"T1","currency":"EUR","items":[{"sku":"A","name":"a","quantity":2,"unitPrice":123456789012.123456789012,"taxRate":"0.10"}]}"#,
        )
        .unwrap();
        let item = &r.items[0];
        assert_eq!(item.quantity.as_ref().unwrap().text(), "2");
        assert_eq!(
            item.unit_price.as_ref().unwrap().text(),
            "123456789012.123456789012"
        );
        assert_eq!(item.tax_rate.as_ref().unwrap().text(), "0.10");
    }

    #[test]
    fn a_wrongly_typed_field_is_named_by_its_path() {
        let err =
            crate::extract::decode::<InvoiceRequest>(br#"{"terminalId":"T1","items":[{"sku":5}]}"#)
                .unwrap_err();
        match err {
            ApiError::Validation { details, .. } => assert_eq!(details[0].path, "items[0].sku"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn validator_and_domain_errors_are_merged_by_path() {
        let r: InvoiceRequest = crate::extract::decode(
            br#"{"currency":"EUR","items":[{"sku":"","name":"n","quantity":"0","unitPrice":true,"taxRate":"2"}]}"#,
        )
        .unwrap();
        let ApiError::Validation { details, .. } = r.into_draft(None).unwrap_err() else {
            panic!()
        };
        let paths: Vec<_> = details.iter().map(|d| d.path.as_str()).collect();
        for p in [
            "items[0].sku",
            "terminalId",
            "items[0].quantity",
            "items[0].unitPrice",
            "items[0].taxRate",
        ] {
            assert!(paths.contains(&p), "{p} missing in {paths:?}");
        }
        assert_eq!(paths.iter().filter(|p| **p == "items[0].sku").count(), 1);
    }

    #[test]
    fn too_many_items_are_refused_by_count_alone() {
        let body = format!(
            r#"{{"terminalId":"T1","currency":"EUR","items":[{}]}}"#,
            vec!["{}"; 87_000].join(",")
        );
        let r: InvoiceRequest = crate::extract::decode(body.as_bytes()).unwrap();
        let ApiError::Validation { details, .. } = r.into_draft(None).unwrap_err() else {
            panic!()
        };
        assert_eq!(details.len(), 1, "no per-line errors: {:?}", &details[..2]);
        assert_eq!(details[0].path, "items");
        assert!(
            details[0].message.contains("87000"),
            "{}",
            details[0].message
        );
    }

    #[test]
    fn details_are_capped_and_the_message_counts_them_all() {
        // 500 lines, each with sku, name, quantity, unitPrice and taxRate missing.
        let body = format!(
            r#"{{"terminalId":"T1","currency":"EUR","items":[{}]}}"#,
            vec!["{}"; 500].join(",")
        );
        let r: InvoiceRequest = crate::extract::decode(body.as_bytes()).unwrap();
        let ApiError::Validation { details, message } = r.into_draft(None).unwrap_err() else {
            panic!()
        };
        assert_eq!(details.len(), crate::error::MAX_DETAILS);
        assert!(message.starts_with("2500 fields"), "{message}");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// JSON-ish text: the decoder's likely inputs (braces, quotes, digits, the
        /// contract's field names) more often than uniform bytes would give them.
        fn jsonish() -> impl Strategy<Value = String> {
            let token = prop_oneof![
                Just("{".to_owned()),
                Just("}".to_owned()),
                Just("[".to_owned()),
                Just("]".to_owned()),
                Just(",".to_owned()),
                Just(":".to_owned()),
                Just("null".to_owned()),
                Just("true".to_owned()),
                Just("\"items\"".to_owned()),
                Just("\"quantity\"".to_owned()),
                Just("\"unitPrice\"".to_owned()),
                Just("\"currency\"".to_owned()),
                Just("\"terminalId\"".to_owned()),
                Just("\"payments\"".to_owned()),
                "-?[0-9]{0,30}(\\.[0-9]{0,30})?(e[0-9]{1,3})?",
                "\"[^\"\\\\]{0,12}\"",
            ];
            proptest::collection::vec(token, 0..60).prop_map(|t| t.concat())
        }

        fn check(bytes: &[u8]) {
            match crate::extract::decode::<InvoiceRequest>(bytes) {
                Ok(request) => match request.into_draft(None) {
                    Ok(draft) => assert_eq!(draft.fingerprint().len(), 64),
                    Err(ApiError::Validation { details, .. }) => {
                        assert!(!details.is_empty() && details.len() <= crate::error::MAX_DETAILS);
                        assert!(details.iter().all(|d| !d.path.is_empty()));
                    }
                    Err(other) => panic!("a decoded body is refused only as a 400: {other:?}"),
                },
                Err(ApiError::Validation { details, .. }) => {
                    assert_eq!(details.len(), 1);
                    assert!(!details[0].path.is_empty());
                }
                Err(other) => panic!("a malformed body is only a 400: {other:?}"),
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]
            #[test]
            fn any_bytes_decode_or_are_a_400_naming_a_field(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
                check(&bytes);
            }

            #[test]
            fn any_json_ish_text_decodes_or_is_a_400_naming_a_field(text in jsonish()) {
                check(text.as_bytes());
            }

            #[test]
            fn any_line_values_give_a_draft_or_field_errors(
                quantity in "\\PC{0,40}", price in "-?[0-9]{0,40}(\\.[0-9]{0,40})?",
                rate in "\\PC{0,12}", currency in "[A-Z]{0,4}",
            ) {
                let body = serde_json::json!({
                    "terminalId": "T1", "currency": currency,
                    "items": [{ "sku": "A", "name": "a", "quantity": quantity,
                                "unitPrice": price, "taxRate": rate }],
                });
                check(body.to_string().as_bytes());
            }
        }
    }
}
