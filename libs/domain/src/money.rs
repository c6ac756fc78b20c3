//! Exact decimal parsing and the one rounding function. No binary float is ever
//! involved: JSON numbers arrive here as their literal text.

use crate::Currency;
use rust_decimal::{Decimal, RoundingStrategy};
use std::str::FromStr;

/// Most fractional digits any input value may carry. Beyond this a value is almost
/// certainly a float artefact (`0.30000000000000004`) and would be rounded silently.
pub const MAX_INPUT_SCALE: u32 = 12;

/// Why a decimal's text was refused; the message is the failing field's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecimalError {
    /// Not a decimal literal (blank, `NaN`, hex, a leading `+`, …).
    #[error("must be a decimal number, as a string (\"3.50\") or a JSON number (3.5)")]
    NotANumber,
    /// More than [`MAX_INPUT_SCALE`] fractional digits: refused, never silently rounded.
    #[error("has more than {MAX_INPUT_SCALE} decimal places")]
    TooPrecise,
    /// Beyond what `Decimal` or the contract's bounds can hold.
    #[error("is out of range")]
    OutOfRange,
}

/// Parses the text of a decimal exactly: `"3.50"`, `"-2"`, or a JSON number literal such
/// as `3.5` or `1e2`. Leading `+`, blanks, `NaN` and hex are refused.
pub fn parse_decimal(text: &str) -> Result<Decimal, DecimalError> {
    let t = text.trim_start_matches('-');
    let well_formed = !t.is_empty()
        && t.bytes().next().is_some_and(|b| b.is_ascii_digit())
        && t.bytes().last().is_some_and(|b| b.is_ascii_digit())
        && t.bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'));
    if !well_formed || text.starts_with("--") {
        return Err(DecimalError::NotANumber);
    }
    let value = if t.contains(['e', 'E']) {
        Decimal::from_scientific(text).map_err(|_| DecimalError::OutOfRange)?
    } else {
        if let Some((_, frac)) = t.split_once('.') {
            if frac.len() > MAX_INPUT_SCALE as usize {
                return Err(DecimalError::TooPrecise);
            }
        }
        Decimal::from_str(text).map_err(|_| DecimalError::NotANumber)?
    };
    if value.scale() > MAX_INPUT_SCALE {
        return Err(DecimalError::TooPrecise);
    }
    Ok(value)
}

/// Rounds to the currency's minor unit, half away from zero, and fixes the scale to it,
/// so `7` in EUR prints as `7.00` and `1.005` becomes `1.01`.
pub fn round_minor(value: Decimal, currency: Currency) -> Decimal {
    let dp = currency.minor_units();
    let mut rounded = value.round_dp_with_strategy(dp, RoundingStrategy::MidpointAwayFromZero);
    rounded.rescale(dp);
    rounded
}

/// Zero in the currency's minor-unit scale (`0.00` for EUR, `0` for JPY).
pub fn zero(currency: Currency) -> Decimal {
    round_minor(Decimal::ZERO, currency)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn parses_strings_and_number_literals_exactly() {
        assert_eq!(parse_decimal("3.50").unwrap().to_string(), "3.50");
        assert_eq!(parse_decimal("3.5").unwrap(), d("3.5"));
        assert_eq!(parse_decimal("0.1").unwrap(), d("0.1"));
        assert_eq!(parse_decimal("1e2").unwrap(), d("100"));
        assert_eq!(parse_decimal("2.5E-1").unwrap(), d("0.25"));
        assert_eq!(parse_decimal("-4").unwrap(), d("-4"));
        assert_eq!(
            parse_decimal("12345678901234.123456789012")
                .unwrap()
                .to_string(),
            "12345678901234.123456789012"
        );
    }

    #[test]
    fn refuses_what_is_not_a_plain_decimal() {
        for bad in [
            "", "abc", "1,5", " 1", "+1", "NaN", "0x10", "1.", ".5", "--1", "1e", "inf",
        ] {
            assert!(parse_decimal(bad).is_err(), "{bad:?} should be refused");
        }
        assert_eq!(
            parse_decimal("0.1234567890123"),
            Err(DecimalError::TooPrecise)
        );
        assert_eq!(parse_decimal("1e99"), Err(DecimalError::OutOfRange));
    }

    #[test]
    fn rounds_half_away_from_zero_to_the_minor_unit() {
        let eur = Currency::parse("EUR").unwrap();
        let jpy = Currency::parse("JPY").unwrap();
        let kwd = Currency::parse("KWD").unwrap();
        assert_eq!(round_minor(d("1.005"), eur).to_string(), "1.01");
        assert_eq!(round_minor(d("1.0049"), eur).to_string(), "1.00");
        assert_eq!(round_minor(d("-1.005"), eur).to_string(), "-1.01");
        assert_eq!(round_minor(d("7"), eur).to_string(), "7.00");
        assert_eq!(round_minor(d("2.5"), jpy).to_string(), "3");
        assert_eq!(round_minor(d("1.0005"), kwd).to_string(), "1.001");
        assert_eq!(zero(kwd).to_string(), "0.000");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(5000))]
            /// Never a panic, whatever the text; what parses is exact (its plain
            /// decimal text parses back to the same value).
            #[test]
            fn any_text_parses_exactly_or_is_refused(text in "\\PC{0,60}") {
                if let Ok(v) = parse_decimal(&text) {
                    prop_assert_eq!(parse_decimal(&v.to_string()).unwrap(), v);
                }
            }

            #[test]
            fn number_shaped_text_parses_exactly_or_is_refused(
                text in "-?[0-9]{1,40}(\\.[0-9]{1,40})?([eE][-+]?[0-9]{1,4})?"
            ) {
                if let Ok(v) = parse_decimal(&text) {
                    prop_assert_eq!(parse_decimal(&v.to_string()).unwrap(), v);
                }
            }
        }
    }
}
