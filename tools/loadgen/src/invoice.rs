//! Realistic invoice bodies for `POST /invoices`, and the small PRNG that drives them.
//!
//! Amounts are kept as integers (cents, thousandths of a unit) and the expected total is
//! computed with the contract's rules (§ Money: net rounded to the minor unit, tax half
//! away from zero), so a card payment can pay the exact total. A body whose payment the
//! service judged insufficient would show up as a FAILED frame, which the report counts.

use std::fmt::Write as _;

/// splitmix64: tiny, fast and good enough to vary request shapes; not for anything secret.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p && p > 0.0
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// How an article is sold: by the piece (whole quantities, sometimes halves) or by
/// weight (kilograms with three decimals).
#[derive(Clone, Copy)]
enum Unit {
    Piece,
    Weight,
}

struct Article {
    sku: &'static str,
    name: &'static str,
    /// Price per unit in cents.
    price: u64,
    /// Tax rate in percent: 0, 4, 10 or 21.
    rate: u64,
    unit: Unit,
}

const fn article(
    sku: &'static str,
    name: &'static str,
    price: u64,
    rate: u64,
    unit: Unit,
) -> Article {
    Article {
        sku,
        name,
        price,
        rate,
        unit,
    }
}

#[rustfmt::skip]
const CATALOG: &[Article] = &[
    article("COFFEE-S", "Coffee small", 180, 10, Unit::Piece),
    article("COFFEE-L", "Coffee large", 350, 10, Unit::Piece),
    article("CROISSANT", "Butter croissant", 145, 10, Unit::Piece),
    article("BREAD-RYE", "Rye bread 500 g", 289, 4, Unit::Piece),
    article("MILK-1L", "Whole milk 1 l", 99, 4, Unit::Piece),
    article("EGGS-12", "Eggs, dozen", 359, 4, Unit::Piece),
    article("APPLES", "Apples (kg)", 249, 4, Unit::Weight),
    article("CHEESE-MAN", "Manchego cheese (kg)", 1895, 10, Unit::Weight),
    article("HAM-IB", "Iberian ham (kg)", 8990, 10, Unit::Weight),
    article("OLIVE-OIL", "Olive oil 1 l", 949, 10, Unit::Piece),
    article("WINE-RIOJA", "Rioja crianza 75 cl", 1250, 21, Unit::Piece),
    article("BEER-6", "Lager, six-pack", 575, 21, Unit::Piece),
    article("SOAP", "Hand soap 250 ml", 215, 21, Unit::Piece),
    article("BATTERY-AA", "AA batteries x4", 699, 21, Unit::Piece),
    article("NEWSPAPER", "Daily newspaper", 200, 4, Unit::Piece),
    article("BOOK-PB", "Paperback novel", 1990, 4, Unit::Piece),
    article("STAMP", "Postage stamp", 85, 0, Unit::Piece),
    article("TOPUP-10", "Phone top-up 10", 1000, 0, Unit::Piece),
    article("DONATION", "Charity donation", 150, 0, Unit::Piece),
    article("SHRIMP", "Shrimp (kg)", 2450, 10, Unit::Weight),
];

/// `1234` → `"12.34"`.
fn cents(v: u64) -> String {
    format!("{}.{:02}", v / 100, v % 100)
}

/// Thousandths → shortest exact decimal text: `2000` → `"2"`, `1500` → `"1.5"`, `250` → `"0.25"`.
fn thousandths(v: u64) -> String {
    let (whole, frac) = (v / 1000, v % 1000);
    if frac == 0 {
        return whole.to_string();
    }
    let mut s = format!("{whole}.{frac:03}");
    while s.ends_with('0') {
        s.pop();
    }
    s
}

/// `value / divisor`, rounded half away from zero (values are never negative here).
fn div_round(value: u64, divisor: u64) -> u64 {
    (value + divisor / 2) / divisor
}

/// A decimal either as a JSON string (`"3.50"`) or a bare number literal (`3.5`); the
/// contract accepts both and parses the literal's text exactly.
fn decimal(rng: &mut Rng, text: &str) -> String {
    if rng.chance(0.2) {
        text.to_owned()
    } else {
        format!("\"{text}\"")
    }
}

/// Builds the JSON body of one invoice for `terminal`. `key` must be unique per tenant
/// for a new invoice.
pub fn generate(rng: &mut Rng, terminal: &str, key: &str, sku_lines: bool) -> String {
    generate_with_total(rng, terminal, key, sku_lines).0
}

/// The articles as catalog products (`PUT /products/{sku}` bodies), for `--sku-lines`.
pub fn catalog() -> Vec<(&'static str, String)> {
    CATALOG
        .iter()
        .map(|a| {
            (
                a.sku,
                format!(
                    r#"{{"name":"{}","unitPrice":"{}","taxRate":"0.{:02}"}}"#,
                    a.name,
                    cents(a.price),
                    a.rate
                ),
            )
        })
        .collect()
}

/// The body and its expected total in cents.
fn generate_with_total(rng: &mut Rng, terminal: &str, key: &str, sku_lines: bool) -> (String, u64) {
    let tax_inclusive = rng.chance(0.1);
    let lines = 1 + rng.below(20) as usize;
    let mut items = String::new();
    let mut total: u64 = 0;
    for i in 0..lines {
        let article = rng.pick(CATALOG);
        let qty = match article.unit {
            Unit::Piece if rng.chance(0.1) => rng.between(1, 6) * 500, // 0.5, 1, 1.5 … 3
            Unit::Piece => rng.between(1, 4) * 1000,
            Unit::Weight => rng.between(80, 2500), // 0.080 … 2.500 kg
        };
        // gross in 1/1000 cent: quantity (thousandths) × price (cents)
        let gross = qty * article.price;
        let discount = if rng.chance(0.15) {
            gross / 1000 * rng.between(5, 20) / 100
        } else {
            0
        };
        let net = div_round(gross - discount * 1000, 1000);
        let line_total = if tax_inclusive {
            net
        } else {
            net + div_round(net * article.rate, 100)
        };
        total += line_total;

        if i > 0 {
            items.push(',');
        }
        if sku_lines {
            let _ = write!(
                items,
                r#"{{"sku":"{}","quantity":{}"#,
                article.sku,
                decimal(rng, &thousandths(qty)),
            );
        } else {
            let _ = write!(
                items,
                r#"{{"sku":"{}","name":"{}","quantity":{},"unitPrice":{},"taxRate":{}"#,
                article.sku,
                article.name,
                decimal(rng, &thousandths(qty)),
                decimal(rng, &cents(article.price)),
                decimal(rng, &format!("0.{:02}", article.rate)),
            );
        }
        if discount > 0 || rng.chance(0.3) {
            let _ = write!(items, r#","discount":{}"#, decimal(rng, &cents(discount)));
        }
        items.push('}');
    }

    let payments = if total == 0 || rng.chance(0.2) {
        String::new() // none: the processor does not check payment
    } else if total > 500 && rng.chance(0.1) {
        // voucher plus card for the rest
        format!(
            r#","payments":[{{"method":"voucher","amount":"5.00"}},{{"method":"card","amount":"{}"}}]"#,
            cents(total - 500)
        )
    } else if rng.chance(0.5) {
        format!(
            r#","payments":[{{"method":"card","amount":"{}"}}]"#,
            cents(total)
        )
    } else {
        let cash = total.div_ceil(500) * 500; // the next 5 euro note
        format!(
            r#","payments":[{{"method":"cash","amount":"{}"}}]"#,
            cents(cash)
        )
    };
    let customer = if rng.chance(0.3) {
        format!(
            r#","customer":{{"name":"Customer {}","taxId":"B{:08}"}}"#,
            rng.below(1000),
            rng.below(100_000_000)
        )
    } else {
        String::new()
    };
    let issued_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let body = format!(
        r#"{{"idempotencyKey":"{key}","terminalId":"{terminal}","currency":"EUR","issuedAt":"{issued_at}","taxInclusive":{tax_inclusive}{customer},"items":[{items}]{payments}}}"#
    );
    (body, total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_printed_exactly() {
        assert_eq!(cents(5), "0.05");
        assert_eq!(cents(1234), "12.34");
        assert_eq!(thousandths(2000), "2");
        assert_eq!(thousandths(1500), "1.5");
        assert_eq!(thousandths(250), "0.25");
        assert_eq!(thousandths(1005), "1.005");
        assert_eq!(div_round(1005, 10), 101);
        assert_eq!(div_round(1004, 10), 100);
    }

    #[test]
    fn every_generated_body_is_json_with_the_promised_shape() {
        let mut rng = Rng::new(7);
        for n in 0..500 {
            let key = format!("T1-test-{n}");
            let (body, total) = generate_with_total(&mut rng, "T1", &key, false);
            let v: serde_json::Value = serde_json::from_str(&body).expect(&body);
            let items = v["items"].as_array().unwrap();
            assert!((1..=20).contains(&items.len()));
            assert_eq!(v["idempotencyKey"], key.as_str());
            if let Some(payments) = v["payments"].as_array() {
                let paid: u64 = payments
                    .iter()
                    .map(|p| {
                        let a = p["amount"].as_str().unwrap().replace('.', "");
                        a.parse::<u64>().unwrap()
                    })
                    .sum();
                assert!(paid >= total, "{body}");
            }
        }
    }
}
