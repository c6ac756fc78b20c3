//! A tenant's catalog and settings (contract § Catalog and tenant), as values with their
//! rules: [`ProductDraft::parse`] and [`TenantSettings::parse`] take what a manager or
//! admin sent and return either valid values or every failing field, like
//! [`crate::DraftInvoice::parse`]. Storage and versions are the store's; ingress fills
//! sku-only invoice lines from [`Product`]s.

use crate::draft::{Errors, FieldError, MAX_NAME_LEN, MAX_SKU_LEN};
use crate::{Currency, TenantId, Timestamp};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// A product as the API shows it. `version` is the tenant's catalog version of its last
/// change (monotonic per tenant), which is what `GET /products?since=` pages by.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Product {
    /// The product's code, unique within the tenant; 1–64 characters.
    pub sku: String,
    /// The name invoice lines carry; 1–200 characters.
    pub name: String,
    /// Price of one unit, ≥ 0; copied into sku-only invoice lines.
    pub unit_price: Decimal,
    /// Tax rate as a fraction in [0, 1] (`0.21` = 21 %).
    pub tax_rate: Decimal,
    /// False once deactivated: kept for history, but no longer fills invoice lines.
    pub active: bool,
    /// The tenant's catalog version of this product's last change.
    pub version: u64,
    /// When the product last changed.
    pub updated_at: Timestamp,
}

/// What `PUT /products/{sku}` may set, valid.
#[derive(Debug, Clone, PartialEq)]
pub struct ProductDraft {
    /// The product's code, from the path.
    pub sku: String,
    /// The name invoice lines carry; 1–200 characters.
    pub name: String,
    /// Price of one unit, ≥ 0.
    pub unit_price: Decimal,
    /// Tax rate as a fraction in [0, 1].
    pub tax_rate: Decimal,
    /// Whether the product may fill invoice lines; true unless sent otherwise.
    pub active: bool,
}

impl ProductDraft {
    /// `sku` from the path; the other fields as the literal text the client sent.
    pub fn parse(
        sku: &str,
        name: Option<&str>,
        unit_price: Option<&str>,
        tax_rate: Option<&str>,
        active: Option<bool>,
    ) -> Result<Self, Vec<FieldError>> {
        let mut errors = Errors::default();
        let sku = errors.text("sku", Some(&sku.to_owned()), MAX_SKU_LEN);
        let name = errors.text("name", name.map(str::to_owned).as_ref(), MAX_NAME_LEN);
        let unit_price = errors.decimal(
            "unitPrice",
            unit_price.map(str::to_owned).as_ref(),
            None,
            |d| d >= Decimal::ZERO,
            "must be ≥ 0",
        );
        let tax_rate = errors.decimal(
            "taxRate",
            tax_rate.map(str::to_owned).as_ref(),
            None,
            |d| d >= Decimal::ZERO && d <= Decimal::ONE,
            "must be a fraction in [0, 1] (\"0.21\" = 21 %)",
        );
        match (sku, name, unit_price, tax_rate) {
            (Some(sku), Some(name), Some(unit_price), Some(tax_rate)) => Ok(Self {
                sku,
                name,
                unit_price,
                tax_rate,
                active: active.unwrap_or(true),
            }),
            _ => Err(errors.0),
        }
    }
}

impl Product {
    /// Whether `draft` would change nothing (a repeated PUT is not a new version). Equal
    /// decimals in another spelling (`3.5`, `3.50`) are no change either.
    pub fn same_as(&self, draft: &ProductDraft) -> bool {
        self.name == draft.name
            && self.unit_price == draft.unit_price
            && self.tax_rate == draft.tax_rate
            && self.active == draft.active
    }
}

/// The tenant's settings (`GET/PUT /tenant`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantSettings {
    /// The tenant these settings belong to.
    pub id: TenantId,
    /// The shop's name; its id until set.
    pub name: String,
    /// The shop's tax id as issuer of its invoices, if set.
    pub issuer_tax_id: Option<String>,
    /// The currency of invoices that omit `currency`, if set.
    pub default_currency: Option<Currency>,
    /// The fiscal series new records are numbered in.
    pub series: String,
}

/// Longest series code; letters, digits, `_` and `-`.
pub const MAX_SERIES_LEN: usize = 16;

/// Whether `text` is a series code (1–16 of `A-Z a-z 0-9 _ -`).
pub fn is_series(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= MAX_SERIES_LEN
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl TenantSettings {
    /// A tenant that was never set: its id as name, series `A`.
    pub fn defaults(id: TenantId) -> Self {
        Self {
            name: id.as_str().to_owned(),
            id,
            issuer_tax_id: None,
            default_currency: None,
            series: "A".into(),
        }
    }

    /// Validates what `PUT /tenant` sent: an omitted name becomes the id, an omitted series
    /// `A`. Returns every failing field.
    pub fn parse(
        id: TenantId,
        name: Option<&str>,
        issuer_tax_id: Option<&str>,
        default_currency: Option<&str>,
        series: Option<&str>,
    ) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let name = match name {
            Some(n) if !n.is_empty() && n.chars().count() <= MAX_NAME_LEN => n.to_owned(),
            Some(_) => {
                errors.push(FieldError::new(
                    "name",
                    format!("must be 1–{MAX_NAME_LEN} characters"),
                ));
                String::new()
            }
            None => id.as_str().to_owned(),
        };
        if issuer_tax_id.is_some_and(|t| t.is_empty() || t.chars().count() > 64) {
            errors.push(FieldError::new("issuerTaxId", "must be 1–64 characters"));
        }
        let default_currency = match default_currency.map(Currency::parse) {
            None => None,
            Some(Ok(c)) => Some(c),
            Some(Err(e)) => {
                errors.push(FieldError::new("defaultCurrency", e.to_string()));
                None
            }
        };
        let series = series.unwrap_or("A");
        if !is_series(series) {
            errors.push(FieldError::new(
                "series",
                format!("must be 1–{MAX_SERIES_LEN} of A-Z a-z 0-9 _ -"),
            ));
        }
        if errors.is_empty() {
            Ok(Self {
                id,
                name,
                issuer_tax_id: issuer_tax_id.map(str::to_owned),
                default_currency,
                series: series.to_owned(),
            })
        } else {
            Err(errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_product_draft_names_every_bad_field() {
        let errors = ProductDraft::parse("", Some(""), Some("-1"), Some("2"), None).unwrap_err();
        let paths: Vec<_> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["sku", "name", "unitPrice", "taxRate"]);
        let ok = ProductDraft::parse("A", Some("a"), Some("3.50"), Some("0.10"), None).unwrap();
        assert!(ok.active, "active unless said otherwise");
    }

    #[test]
    fn the_same_values_in_another_spelling_are_no_change() {
        let draft = ProductDraft::parse("A", Some("a"), Some("3.5"), Some("0.1"), None).unwrap();
        let stored = Product {
            sku: "A".into(),
            name: "a".into(),
            unit_price: "3.50".parse().unwrap(),
            tax_rate: "0.10".parse().unwrap(),
            active: true,
            version: 7,
            updated_at: Timestamp::now(),
        };
        assert!(stored.same_as(&draft));
        let cheaper = ProductDraft::parse("A", Some("a"), Some("3.4"), Some("0.1"), None).unwrap();
        assert!(!stored.same_as(&cheaper));
    }

    #[test]
    fn tenant_settings_default_and_validate() {
        let id = TenantId::parse("acme").unwrap();
        let d = TenantSettings::defaults(id.clone());
        assert_eq!((d.name.as_str(), d.series.as_str()), ("acme", "A"));
        let errors =
            TenantSettings::parse(id, Some(""), Some(""), Some("XXX"), Some("a b")).unwrap_err();
        let paths: Vec<_> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["name", "issuerTaxId", "defaultCurrency", "series"]);
    }
}
