//! The money rule book (contract § Money): per-line net, tax and total, the invoice
//! totals, the tax breakdown by rate, paid and change.

use crate::invoice::{Computed, LineAmounts};
use crate::money::round_minor;
use crate::{Invoice, TaxBand, Totals};
use rust_decimal::Decimal;

/// Why an invoice can never be computed. Retrying does not help: these go to FAILED
/// at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Fault {
    /// Payments are present but sum to less than the total (`insufficient_payment`).
    #[error("payments total {paid} is below the invoice total {total}")]
    InsufficientPayment {
        /// Sum of the payments, as text.
        paid: String,
        /// The invoice total, as text.
        total: String,
    },
    /// A product or sum overflows `Decimal` (`amount_out_of_range`).
    #[error("an amount is out of the computable range")]
    OutOfRange,
}

impl Fault {
    /// The error code the contract shows in `error.code`.
    pub fn code(&self) -> &'static str {
        match self {
            Fault::InsufficientPayment { .. } => "insufficient_payment",
            Fault::OutOfRange => "amount_out_of_range",
        }
    }
}

/// Computes every line and the totals of `invoice`, exactly.
pub fn compute(invoice: &Invoice) -> Result<Computed, Fault> {
    let cur = invoice.currency;
    let zero = invoice.zero();
    let mut lines = Vec::with_capacity(invoice.items.len());
    let (mut net_sum, mut tax_sum, mut total_sum) = (zero, zero, zero);
    // (rate as first written, normalized rate, net, tax); few distinct rates, so a Vec.
    let mut bands: Vec<(Decimal, Decimal, Decimal, Decimal)> = Vec::new();

    for line in &invoice.items {
        let gross = line
            .quantity
            .checked_mul(line.unit_price)
            .ok_or(Fault::OutOfRange)?;
        let after_discount = gross.checked_sub(line.discount).ok_or(Fault::OutOfRange)?;
        let amounts = if invoice.tax_inclusive {
            let total = round_minor(after_discount, cur);
            let divisor = Decimal::ONE + line.tax_rate;
            let pre_tax = total.checked_div(divisor).ok_or(Fault::OutOfRange)?;
            let tax = round_minor(total - pre_tax, cur);
            LineAmounts {
                net: total - tax,
                tax,
                total,
            }
        } else {
            let net = round_minor(after_discount, cur);
            let tax = round_minor(
                net.checked_mul(line.tax_rate).ok_or(Fault::OutOfRange)?,
                cur,
            );
            LineAmounts {
                net,
                tax,
                total: net + tax,
            }
        };
        net_sum = net_sum.checked_add(amounts.net).ok_or(Fault::OutOfRange)?;
        tax_sum = tax_sum.checked_add(amounts.tax).ok_or(Fault::OutOfRange)?;
        total_sum = total_sum
            .checked_add(amounts.total)
            .ok_or(Fault::OutOfRange)?;
        let key = line.tax_rate.normalize();
        match bands.iter_mut().find(|b| b.1 == key) {
            Some(band) => {
                band.2 += amounts.net;
                band.3 += amounts.tax;
            }
            None => bands.push((line.tax_rate, key, amounts.net, amounts.tax)),
        }
        lines.push(amounts);
    }

    let mut paid = zero;
    for p in &invoice.payments {
        paid = paid.checked_add(p.amount).ok_or(Fault::OutOfRange)?;
    }
    paid = round_minor(paid, cur);
    if !invoice.payments.is_empty() && paid < total_sum {
        return Err(Fault::InsufficientPayment {
            paid: paid.to_string(),
            total: total_sum.to_string(),
        });
    }
    // Only what was paid gives change: a credit note (negative total, no payments)
    // gives none.
    let change = if !invoice.payments.is_empty() && paid > total_sum {
        paid - total_sum
    } else {
        zero
    };

    bands.sort_by_key(|b| b.1);
    let tax_breakdown = bands
        .into_iter()
        .map(|(rate, _, net, tax)| TaxBand { rate, net, tax })
        .collect();
    Ok(Computed {
        lines,
        totals: Totals {
            net: net_sum,
            tax: tax_sum,
            total: total_sum,
            paid,
            change,
            tax_breakdown,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::draft::tests::{raw, raw_line};
    use crate::draft::{RawLine, RawPayment};
    use crate::{DraftInvoice, InvoiceId, TenantId, Timestamp};
    use proptest::prelude::*;

    fn invoice(currency: &str, inclusive: bool, items: Vec<RawLine>, payments: &[&str]) -> Invoice {
        let mut r = raw(currency, items);
        r.tax_inclusive = inclusive;
        r.payments = payments
            .iter()
            .map(|a| RawPayment {
                method: Some("cash".into()),
                amount: Some((*a).into()),
            })
            .collect();
        let draft = DraftInvoice::parse(r).expect("valid test invoice");
        Invoice::queued(
            InvoiceId::generate(),
            TenantId::parse("t").unwrap(),
            draft,
            Timestamp::now(),
        )
    }

    fn line(q: &str, p: &str, rate: &str, discount: &str) -> RawLine {
        let mut l = raw_line(q, p, rate);
        l.discount = Some(discount.into());
        l
    }

    /// (net, tax, total, paid, change) of each case, as the contract prints them.
    #[test]
    fn money_table() {
        struct Case {
            name: &'static str,
            inv: Invoice,
            want: [&'static str; 5],
        }
        let cases = [
            Case {
                name: "contract example, EUR",
                inv: invoice(
                    "EUR",
                    false,
                    vec![line("2", "3.50", "0.10", "0.00")],
                    &["10.00"],
                ),
                want: ["7.00", "0.70", "7.70", "10.00", "2.30"],
            },
            Case {
                name: "USD without payments: change is zero in scale",
                inv: invoice("USD", false, vec![line("3", "0.99", "0.0825", "0")], &[]),
                want: ["2.97", "0.25", "3.22", "0.00", "0.00"],
            },
            Case {
                name: "half away from zero at exactly .5 of the minor unit",
                inv: invoice("EUR", false, vec![line("1", "0.50", "0.21", "0")], &[]),
                // 0.50 × 0.21 = 0.105 → 0.11
                want: ["0.50", "0.11", "0.61", "0.00", "0.00"],
            },
            Case {
                name: "JPY has no minor unit",
                inv: invoice("JPY", false, vec![line("3", "333", "0.10", "0")], &["1200"]),
                // 999 × 0.10 = 99.9 → 100
                want: ["999", "100", "1099", "1200", "101"],
            },
            Case {
                name: "JPY rounds half away at .5 yen",
                inv: invoice("JPY", false, vec![line("1", "105", "0.10", "0")], &[]),
                want: ["105", "11", "116", "0", "0"],
            },
            Case {
                name: "KWD has three decimals",
                inv: invoice("KWD", false, vec![line("1", "1.2345", "0.05", "0")], &["2"]),
                // net 1.2345 → 1.235 (half away); tax 0.06175 → 0.062
                want: ["1.235", "0.062", "1.297", "2.000", "0.703"],
            },
            Case {
                name: "discounts come off before tax",
                inv: invoice("EUR", false, vec![line("4", "2.50", "0.21", "1.00")], &[]),
                want: ["9.00", "1.89", "10.89", "0.00", "0.00"],
            },
            Case {
                name: "tax inclusive: the price holds the tax",
                inv: invoice("EUR", true, vec![line("1", "12.10", "0.21", "0")], &["20"]),
                want: ["10.00", "2.10", "12.10", "20.00", "7.90"],
            },
            Case {
                name: "tax inclusive with rounding",
                inv: invoice("EUR", true, vec![line("1", "1.00", "0.10", "0")], &[]),
                // 1.00 − 1.00/1.1 = 0.0909… → 0.09
                want: ["0.91", "0.09", "1.00", "0.00", "0.00"],
            },
            Case {
                name: "several rates on one invoice",
                inv: invoice(
                    "EUR",
                    false,
                    vec![
                        line("1", "10", "0.21", "0"),
                        line("2", "1.25", "0.10", "0"),
                        line("1", "5", "0.21", "0.50"),
                    ],
                    &["30", "0.35"],
                ),
                // 10.00+2.10, 2.50+0.25, 4.50+0.945→0.95
                want: ["17.00", "3.30", "20.30", "30.35", "10.05"],
            },
        ];
        for c in cases {
            let computed = compute(&c.inv).unwrap_or_else(|e| panic!("{}: {e}", c.name));
            let t = &computed.totals;
            let got = [t.net, t.tax, t.total, t.paid, t.change].map(|d| d.to_string());
            assert_eq!(got, c.want.map(String::from), "{}", c.name);
        }
    }

    #[test]
    fn tax_breakdown_groups_by_rate() {
        let inv = invoice(
            "EUR",
            false,
            vec![
                line("1", "10", "0.21", "0"),
                line("2", "1.25", "0.10", "0"),
                line("1", "5", "0.210", "0"),
            ],
            &[],
        );
        let t = compute(&inv).unwrap().totals;
        let bands: Vec<_> = t
            .tax_breakdown
            .iter()
            .map(|b| (b.rate.to_string(), b.net.to_string(), b.tax.to_string()))
            .collect();
        assert_eq!(
            bands,
            vec![
                ("0.10".into(), "2.50".into(), "0.25".into()),
                ("0.21".into(), "15.00".into(), "3.15".into())
            ]
        );
    }

    #[test]
    fn payments_below_the_total_are_a_permanent_fault() {
        let inv = invoice(
            "EUR",
            false,
            vec![line("2", "3.50", "0.10", "0")],
            &["7.00"],
        );
        let err = compute(&inv).unwrap_err();
        assert_eq!(err.code(), "insufficient_payment");
        assert_eq!(
            err,
            Fault::InsufficientPayment {
                paid: "7.00".into(),
                total: "7.70".into()
            }
        );
    }

    #[test]
    fn invoice_completes_with_line_amounts() {
        let mut inv = invoice("EUR", false, vec![line("2", "3.50", "0.10", "0")], &[]);
        inv.start_attempt(1, Timestamp::now()).unwrap();
        let c = compute(&inv).unwrap();
        let fiscal = crate::fiscal::Head::empty()
            .chain(&inv.entry(&c), "A", Timestamp::now())
            .fiscal();
        inv.complete(c, fiscal, Timestamp::now()).unwrap();
        let json = serde_json::to_value(&inv).unwrap();
        assert_eq!(json["fiscal"]["number"], 1);
        assert_eq!(json["kind"], "invoice");
        assert_eq!(json["creditFor"], serde_json::Value::Null);
        assert_eq!(json["items"][0]["total"], "7.70");
        assert_eq!(json["totals"]["taxBreakdown"][0]["rate"], "0.10");
        assert_eq!(json["state"], "COMPLETED");
        assert!(
            inv.start_attempt(2, Timestamp::now()).is_err(),
            "COMPLETED never goes back"
        );
    }

    fn decimal_text(max_int: u64, max_scale: u32) -> impl Strategy<Value = String> {
        (0..=max_int, 0..=max_scale).prop_flat_map(|(int, scale)| {
            (
                Just(int),
                proptest::collection::vec(0u8..10, scale as usize),
            )
                .prop_map(|(int, digits)| {
                    if digits.is_empty() {
                        int.to_string()
                    } else {
                        format!(
                            "{int}.{}",
                            digits
                                .iter()
                                .map(std::string::ToString::to_string)
                                .collect::<String>()
                        )
                    }
                })
        })
    }

    fn arb_line() -> impl Strategy<Value = RawLine> {
        (
            decimal_text(999, 3),
            decimal_text(99_999, 4),
            prop_oneof![
                Just("0"),
                Just("0.04"),
                Just("0.10"),
                Just("0.21"),
                Just("1")
            ],
        )
            .prop_filter("quantity must be > 0", |(q, _, _)| {
                q.trim_start_matches(['0', '.'])
                    .chars()
                    .any(|c| c != '0' && c != '.')
            })
            .prop_map(|(q, p, r)| raw_line(&q, &p, r))
    }

    proptest! {
        #[test]
        fn totals_are_sums_of_lines_and_never_negative(
            items in proptest::collection::vec(arb_line(), 1..20),
            currency in prop_oneof![Just("EUR"), Just("JPY"), Just("KWD")],
            inclusive in any::<bool>(),
        ) {
            let inv = invoice(currency, inclusive, items, &[]);
            let c = compute(&inv).unwrap();
            let dp = inv.currency.minor_units();
            let sum = |f: fn(&LineAmounts) -> Decimal| c.lines.iter().map(f).sum::<Decimal>();
            prop_assert_eq!(c.totals.net, sum(|l| l.net));
            prop_assert_eq!(c.totals.tax, sum(|l| l.tax));
            prop_assert_eq!(c.totals.total, sum(|l| l.total));
            prop_assert_eq!(c.totals.total, c.totals.net + c.totals.tax);
            for l in &c.lines {
                prop_assert!(l.tax >= Decimal::ZERO && l.net >= Decimal::ZERO);
                prop_assert_eq!(l.total, l.net + l.tax);
                for v in [l.net, l.tax, l.total] {
                    prop_assert_eq!(v.scale(), dp, "every amount is in the minor unit's scale");
                }
            }
            let band_tax: Decimal = c.totals.tax_breakdown.iter().map(|b| b.tax).sum();
            prop_assert_eq!(band_tax, c.totals.tax);
        }

        #[test]
        fn exclusive_line_amounts_match_the_rule_exactly(q in decimal_text(999, 3), p in decimal_text(9_999, 2)) {
            prop_assume!(q.chars().any(|c| c.is_ascii_digit() && c != '0'));
            let inv = invoice("EUR", false, vec![line(&q, &p, "0.21", "0")], &[]);
            let c = compute(&inv).unwrap();
            let gross = q.parse::<Decimal>().unwrap() * p.parse::<Decimal>().unwrap();
            let net = gross.round_dp_with_strategy(2, rust_decimal::RoundingStrategy::MidpointAwayFromZero);
            prop_assert_eq!(c.lines[0].net, net);
            let tax = (net * Decimal::new(21, 2)).round_dp_with_strategy(2, rust_decimal::RoundingStrategy::MidpointAwayFromZero);
            prop_assert_eq!(c.lines[0].tax, tax);
        }

        #[test]
        fn change_is_paid_minus_total_when_positive(extra in decimal_text(1000, 2)) {
            let inv0 = invoice("EUR", false, vec![line("1", "9.99", "0.10", "0")], &[]);
            let total = compute(&inv0).unwrap().totals.total;
            let paid = total + extra.parse::<Decimal>().unwrap();
            let inv = invoice("EUR", false, vec![line("1", "9.99", "0.10", "0")], &[&paid.to_string()]);
            let t = compute(&inv).unwrap().totals;
            prop_assert_eq!(t.change, t.paid - t.total);
            prop_assert!(t.change >= Decimal::ZERO);
        }
    }
}
