//! Money in integer minor units, and the currency code that goes with it.
//!
//! [`Money`] holds an `i64` count of minor units (cents: the platform's currency has
//! two fraction digits). Text becomes money only through [`Money::parse`], which reads
//! the decimal digit by digit; no floating-point value is ever involved, so "99.90" is
//! exactly 9990 minor units. Arithmetic is checked: every operation that could
//! overflow returns `None` instead of wrapping or panicking.
//!
//! [`Currency`] is a three-letter ISO 4217-shaped code ("EUR"). Money does not carry
//! its currency: the platform has one, and events name it only to confirm it.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::json::{self, JsonLiteral};

/// Number of fraction digits of the platform's currency.
pub const FRACTION_DIGITS: usize = 2;

/// Minor units in one major unit (10^[`FRACTION_DIGITS`]).
const MINOR_PER_MAJOR: i64 = 100;

/// Why a text or JSON value is not an amount of money.
///
/// Each message completes a sentence that starts with the field's name
/// ("transactionSum has 3 fraction digits; at most 2 are allowed"). Positions count
/// characters from 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    /// The text is empty.
    #[error("is empty; expected a decimal amount such as \"99.90\"")]
    Empty,
    /// The text contains whitespace (leading, trailing or inside).
    #[error("contains whitespace at position {position}; write the amount without spaces")]
    Whitespace {
        /// Position of the first whitespace character, counting from 1.
        position: usize,
    },
    /// The text starts with `+`.
    #[error("starts with '+'; write a positive amount without a sign")]
    PlusSign,
    /// The text is only a `-` sign.
    #[error("has a '-' sign but no digits")]
    NoDigits,
    /// The text has a decimal point with nothing before it (".5").
    #[error("has no digits before the decimal point; write \"0.5\" rather than \".5\"")]
    MissingIntegerDigits,
    /// The text has a decimal point with nothing after it ("5.").
    #[error("has no digits after the decimal point; write \"5\" or \"5.00\" rather than \"5.\"")]
    MissingFractionDigits,
    /// The text has a second decimal point.
    #[error("has a second decimal point at position {position}")]
    SecondDecimalPoint {
        /// Position of the second `.`, counting from 1.
        position: usize,
    },
    /// The text uses exponent notation ("1e3", "1E+2").
    #[error("uses exponent notation; write the amount as a plain decimal such as \"1000.00\"")]
    Exponent,
    /// The text has more fraction digits than the currency has.
    #[error("has {count} fraction digits; at most {FRACTION_DIGITS} are allowed")]
    TooManyFractionDigits {
        /// How many digits follow the decimal point.
        count: usize,
    },
    /// The text contains a character that has no place in a decimal amount.
    #[error(
        "contains {found:?} at position {position}; only digits, an optional leading '-' \
         and one '.' are allowed"
    )]
    InvalidCharacter {
        /// The offending character.
        found: char,
        /// Its position, counting from 1.
        position: usize,
    },
    /// The amount does not fit in `i64` minor units.
    #[error(
        "is out of range; an amount must lie between -92233720368547758.08 \
         and 92233720368547758.07"
    )]
    OutOfRange,
    /// A JSON value of another type (boolean, null, object, array).
    #[error("must be a decimal number or string, not {found}")]
    NotNumberOrString {
        /// What was found instead ("a boolean", "null", "an object", ...).
        found: &'static str,
    },
    /// A JSON string literal that does not decode.
    #[error("is not a valid JSON string: {reason}")]
    InvalidJsonString {
        /// serde_json's description of the problem.
        reason: String,
    },
}

/// An exact amount of money: a signed count of minor units (cents).
///
/// Displays and serializes as a decimal string with exactly two fraction digits
/// ("99.90", "-0.05"); deserializes from such a string through [`Money::parse`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Money {
    minor: i64,
}

impl Money {
    /// No money.
    pub const ZERO: Money = Money { minor: 0 };
    /// The smallest amount: -92233720368547758.08.
    pub const MIN: Money = Money { minor: i64::MIN };
    /// The largest amount: 92233720368547758.07.
    pub const MAX: Money = Money { minor: i64::MAX };

    /// Money from a count of minor units: `from_minor(9990)` is 99.90.
    pub const fn from_minor(minor: i64) -> Money {
        Money { minor }
    }

    /// The count of minor units.
    pub const fn minor(self) -> i64 {
        self.minor
    }

    /// Whether the amount is exactly zero.
    pub const fn is_zero(self) -> bool {
        self.minor == 0
    }

    /// Whether the amount is greater than zero.
    pub const fn is_positive(self) -> bool {
        self.minor > 0
    }

    /// Whether the amount is less than zero.
    pub const fn is_negative(self) -> bool {
        self.minor < 0
    }

    /// `self + other`, or `None` on overflow.
    pub const fn checked_add(self, other: Money) -> Option<Money> {
        match self.minor.checked_add(other.minor) {
            Some(minor) => Some(Money { minor }),
            None => None,
        }
    }

    /// `self - other`, or `None` on overflow.
    pub const fn checked_sub(self, other: Money) -> Option<Money> {
        match self.minor.checked_sub(other.minor) {
            Some(minor) => Some(Money { minor }),
            None => None,
        }
    }

    /// `self * factor`, or `None` on overflow.
    pub const fn checked_mul_i64(self, factor: i64) -> Option<Money> {
        match self.minor.checked_mul(factor) {
            Some(minor) => Some(Money { minor }),
            None => None,
        }
    }

    /// The sum of all amounts, or `None` as soon as a partial sum overflows.
    ///
    /// An empty iterator sums to [`Money::ZERO`].
    pub fn checked_sum<I>(amounts: I) -> Option<Money>
    where
        I: IntoIterator<Item = Money>,
    {
        amounts
            .into_iter()
            .try_fold(Money::ZERO, |total, amount| total.checked_add(amount))
    }

    /// Parses a decimal amount exactly, digit by digit.
    ///
    /// Accepted: an optional `-`, one or more ASCII digits, then optionally a `.`
    /// followed by one or two digits: "99.9" and "99.90" are 9990 minor units, "0.01" is
    /// 1, "-5" is -500, and leading zeros are fine. Everything else is rejected with a
    /// [`MoneyError`] that says what is wrong: empty text, whitespace, a `+` sign,
    /// ".5", "5.", exponent notation, three or more fraction digits, any other
    /// character, and amounts outside `i64` minor units.
    pub fn parse(input: &str) -> Result<Money, MoneyError> {
        let shape = scan(input)?;
        let unsigned_text = if shape.negative {
            input.get(1..).unwrap_or_default()
        } else {
            input
        };
        let (integer_text, fraction_text) =
            unsigned_text.split_once('.').unwrap_or((unsigned_text, ""));

        // The magnitude of i64::MIN, the largest magnitude that can still fit.
        let limit = i128::from(i64::MAX) + 1;
        let mut magnitude: i128 = 0;
        for digit in integer_text.bytes() {
            magnitude = magnitude * 10 + digit_value(digit);
            if magnitude > limit {
                return Err(MoneyError::OutOfRange);
            }
        }
        let mut fraction: i128 = 0;
        for index in 0..FRACTION_DIGITS {
            let digit = fraction_text.as_bytes().get(index).copied().unwrap_or(b'0');
            fraction = fraction * 10 + digit_value(digit);
        }
        magnitude = magnitude * i128::from(MINOR_PER_MAJOR) + fraction;

        let signed = if shape.negative {
            -magnitude
        } else {
            magnitude
        };
        i64::try_from(signed)
            .map(Money::from_minor)
            .map_err(|_| MoneyError::OutOfRange)
    }

    /// Parses the raw text of one JSON value (as `RawValue::get()` gives it).
    ///
    /// A number literal (`99.90`) or a string literal (`"99.90"`, decoded with its
    /// escapes) is read with [`Money::parse`]; so exponent notation (`1e2`) is rejected
    /// with [`MoneyError::Exponent`]. Booleans, null, objects and arrays are rejected
    /// with [`MoneyError::NotNumberOrString`].
    pub fn parse_json_literal(raw: &str) -> Result<Money, MoneyError> {
        match json::classify(raw) {
            JsonLiteral::String(literal) => {
                let decoded = json::decode_string(literal)
                    .map_err(|reason| MoneyError::InvalidJsonString { reason })?;
                Money::parse(&decoded)
            }
            JsonLiteral::Number(literal) => Money::parse(literal),
            JsonLiteral::Other(found) => Err(MoneyError::NotNumberOrString { found }),
        }
    }
}

/// What [`scan`] learned about a syntactically valid amount.
struct Shape {
    negative: bool,
}

/// Checks the syntax `-?[0-9]+(\.[0-9]{1,2})?`, reporting the first problem found.
fn scan(input: &str) -> Result<Shape, MoneyError> {
    if input.is_empty() {
        return Err(MoneyError::Empty);
    }
    let mut negative = false;
    let mut seen_point = false;
    let mut integer_digits = 0_usize;
    let mut fraction_digits = 0_usize;
    for (index, character) in input.chars().enumerate() {
        let position = index + 1;
        match character {
            '0'..='9' if seen_point => fraction_digits += 1,
            '0'..='9' => integer_digits += 1,
            '-' if index == 0 => negative = true,
            '+' if index == 0 => return Err(MoneyError::PlusSign),
            '.' if seen_point => return Err(MoneyError::SecondDecimalPoint { position }),
            '.' => seen_point = true,
            'e' | 'E' if integer_digits + fraction_digits > 0 => {
                return Err(MoneyError::Exponent);
            }
            found if found.is_whitespace() => return Err(MoneyError::Whitespace { position }),
            found => return Err(MoneyError::InvalidCharacter { found, position }),
        }
    }
    if integer_digits == 0 {
        return Err(if seen_point {
            MoneyError::MissingIntegerDigits
        } else {
            MoneyError::NoDigits
        });
    }
    if seen_point && fraction_digits == 0 {
        return Err(MoneyError::MissingFractionDigits);
    }
    if fraction_digits > FRACTION_DIGITS {
        return Err(MoneyError::TooManyFractionDigits {
            count: fraction_digits,
        });
    }
    Ok(Shape { negative })
}

/// The value of an ASCII digit (already checked by [`scan`]).
fn digit_value(digit: u8) -> i128 {
    debug_assert!(digit.is_ascii_digit());
    i128::from(digit.saturating_sub(b'0'))
}

impl fmt::Display for Money {
    /// Always two fraction digits: "99.90", "-0.05", "0.00".
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.minor < 0 { "-" } else { "" };
        // unsigned_abs is exact even for i64::MIN.
        let magnitude = self.minor.unsigned_abs();
        let per_major = MINOR_PER_MAJOR.unsigned_abs();
        write!(
            formatter,
            "{sign}{}.{:0width$}",
            magnitude / per_major,
            magnitude % per_major,
            width = FRACTION_DIGITS
        )
    }
}

impl FromStr for Money {
    type Err = MoneyError;

    fn from_str(input: &str) -> Result<Money, MoneyError> {
        Money::parse(input)
    }
}

impl Serialize for Money {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Money, D::Error> {
        struct MoneyVisitor;

        impl Visitor<'_> for MoneyVisitor {
            type Value = Money;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a decimal amount as a string, such as \"99.90\"")
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<Money, E> {
                Money::parse(value)
                    .map_err(|error| E::custom(format_args!("amount {value:?} {error}")))
            }
        }

        deserializer.deserialize_str(MoneyVisitor)
    }
}

/// Why a text is not a currency code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CurrencyError {
    /// The text is empty.
    #[error("is empty; expected a three-letter currency code such as \"EUR\"")]
    Empty,
    /// The text does not have exactly three characters.
    #[error("has {length} characters; a currency code has exactly 3, such as \"EUR\"")]
    WrongLength {
        /// How many characters it has.
        length: usize,
    },
    /// The text contains something other than an uppercase ASCII letter.
    #[error(
        "contains {found:?} at position {position}; a currency code is three uppercase \
         letters A-Z, such as \"EUR\""
    )]
    InvalidCharacter {
        /// The offending character.
        found: char,
        /// Its position, counting from 1.
        position: usize,
    },
}

/// A currency code of ISO 4217 shape: exactly three ASCII uppercase letters.
///
/// Only the shape is checked, not membership in the ISO list.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Currency {
    /// Three ASCII uppercase letters; every constructor guarantees it.
    code: [u8; 3],
}

impl Currency {
    /// The euro.
    pub const EUR: Currency = Currency { code: *b"EUR" };

    /// Parses a code such as "EUR". Lowercase, whitespace and other lengths are rejected.
    pub fn parse(input: &str) -> Result<Currency, CurrencyError> {
        let length = input.chars().count();
        if length == 0 {
            return Err(CurrencyError::Empty);
        }
        if length != 3 {
            return Err(CurrencyError::WrongLength { length });
        }
        if let Some((index, found)) = input
            .chars()
            .enumerate()
            .find(|(_, character)| !character.is_ascii_uppercase())
        {
            return Err(CurrencyError::InvalidCharacter {
                found,
                position: index + 1,
            });
        }
        let mut code = [0_u8; 3];
        code.copy_from_slice(input.as_bytes());
        Ok(Currency { code })
    }

    /// The code, e.g. "EUR".
    pub fn as_str(&self) -> &str {
        debug_assert!(self.code.iter().all(u8::is_ascii_uppercase));
        // Always Ok: the code is ASCII by construction.
        std::str::from_utf8(&self.code).unwrap_or_default()
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_tuple("Currency")
            .field(&self.as_str())
            .finish()
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl FromStr for Currency {
    type Err = CurrencyError;

    fn from_str(input: &str) -> Result<Currency, CurrencyError> {
        Currency::parse(input)
    }
}

impl AsRef<str> for Currency {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Serialize for Currency {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Currency, D::Error> {
        struct CurrencyVisitor;

        impl Visitor<'_> for CurrencyVisitor {
            type Value = Currency;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a three-letter currency code such as \"EUR\"")
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<Currency, E> {
                Currency::parse(value)
                    .map_err(|error| E::custom(format_args!("currency {value:?} {error}")))
            }
        }

        deserializer.deserialize_str(CurrencyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn minor(input: &str) -> Result<i64, MoneyError> {
        Money::parse(input).map(Money::minor)
    }

    #[test]
    fn parses_exact_decimals() {
        assert_eq!(minor("99.9"), Ok(9990));
        assert_eq!(minor("99.90"), Ok(9990));
        assert_eq!(minor("0.01"), Ok(1));
        assert_eq!(minor("0"), Ok(0));
        assert_eq!(minor("-0"), Ok(0));
        assert_eq!(minor("-0.00"), Ok(0));
        assert_eq!(minor("5"), Ok(500));
        assert_eq!(minor("-5.5"), Ok(-550));
        assert_eq!(minor("-0.05"), Ok(-5));
        assert_eq!(minor("007.10"), Ok(710));
        assert_eq!(minor("000000000000000000000000000000000001.23"), Ok(123));
        assert_eq!(minor("92233720368547758.07"), Ok(i64::MAX));
        assert_eq!(minor("-92233720368547758.08"), Ok(i64::MIN));
    }

    #[test]
    fn rejects_each_malformed_amount_with_its_own_error() {
        assert_eq!(minor(""), Err(MoneyError::Empty));
        assert_eq!(minor(" 5"), Err(MoneyError::Whitespace { position: 1 }));
        assert_eq!(minor("5 "), Err(MoneyError::Whitespace { position: 2 }));
        assert_eq!(minor("1 000"), Err(MoneyError::Whitespace { position: 2 }));
        assert_eq!(minor("+5"), Err(MoneyError::PlusSign));
        assert_eq!(minor("-"), Err(MoneyError::NoDigits));
        assert_eq!(minor(".5"), Err(MoneyError::MissingIntegerDigits));
        assert_eq!(minor("-.5"), Err(MoneyError::MissingIntegerDigits));
        assert_eq!(minor("."), Err(MoneyError::MissingIntegerDigits));
        assert_eq!(minor("5."), Err(MoneyError::MissingFractionDigits));
        assert_eq!(
            minor("1.2.3"),
            Err(MoneyError::SecondDecimalPoint { position: 4 })
        );
        assert_eq!(minor("1e3"), Err(MoneyError::Exponent));
        assert_eq!(minor("1E+2"), Err(MoneyError::Exponent));
        assert_eq!(minor("1.5e-1"), Err(MoneyError::Exponent));
        assert_eq!(
            minor("1.234"),
            Err(MoneyError::TooManyFractionDigits { count: 3 })
        );
        assert_eq!(
            minor("1,00"),
            Err(MoneyError::InvalidCharacter {
                found: ',',
                position: 2
            })
        );
        assert_eq!(
            minor("--5"),
            Err(MoneyError::InvalidCharacter {
                found: '-',
                position: 2
            })
        );
        assert_eq!(
            minor("5-"),
            Err(MoneyError::InvalidCharacter {
                found: '-',
                position: 2
            })
        );
        assert_eq!(
            minor("e5"),
            Err(MoneyError::InvalidCharacter {
                found: 'e',
                position: 1
            })
        );
        assert_eq!(
            minor("€5"),
            Err(MoneyError::InvalidCharacter {
                found: '€',
                position: 1
            })
        );
        assert_eq!(
            minor("NaN"),
            Err(MoneyError::InvalidCharacter {
                found: 'N',
                position: 1
            })
        );
        assert_eq!(minor("92233720368547758.08"), Err(MoneyError::OutOfRange));
        assert_eq!(minor("-92233720368547758.09"), Err(MoneyError::OutOfRange));
        assert_eq!(minor(&"9".repeat(400)), Err(MoneyError::OutOfRange));
    }

    #[test]
    fn error_messages_say_what_is_wrong() {
        let message = |input: &str| Money::parse(input).map_err(|e| e.to_string()).err();
        assert_eq!(
            message("1.234").as_deref(),
            Some("has 3 fraction digits; at most 2 are allowed")
        );
        assert!(message("").unwrap().starts_with("is empty"));
        assert!(message("1e3").unwrap().contains("exponent notation"));
        assert!(message("+1").unwrap().contains("'+'"));
        assert!(message(".5").unwrap().contains("before the decimal point"));
        assert!(message("5.").unwrap().contains("after the decimal point"));
        assert!(message("5 ").unwrap().contains("whitespace at position 2"));
        assert!(message("1x").unwrap().contains("'x' at position 2"));
        let out_of_range = message("1".repeat(30).as_str()).unwrap();
        assert!(out_of_range.contains("out of range"));
        assert!(out_of_range.contains(&Money::MIN.to_string()));
        assert!(out_of_range.contains(&Money::MAX.to_string()));
    }

    #[test]
    fn parses_json_numbers_and_strings() {
        let literal = |raw: &str| Money::parse_json_literal(raw).map(Money::minor);
        assert_eq!(literal("99.90"), Ok(9990));
        assert_eq!(literal(" 99.9 "), Ok(9990));
        assert_eq!(literal("\"99.90\""), Ok(9990));
        assert_eq!(literal(r#""\u0039\u0039.90""#), Ok(9990));
        assert_eq!(literal("-1"), Ok(-100));
        assert_eq!(literal("1e2"), Err(MoneyError::Exponent));
        assert_eq!(literal("1E+2"), Err(MoneyError::Exponent));
        assert_eq!(literal("\"1e2\""), Err(MoneyError::Exponent));
        assert_eq!(
            literal("99.999"),
            Err(MoneyError::TooManyFractionDigits { count: 3 })
        );
        assert_eq!(
            literal("\" 5\""),
            Err(MoneyError::Whitespace { position: 1 })
        );
        assert_eq!(literal("\"\""), Err(MoneyError::Empty));
        assert_eq!(
            literal("true"),
            Err(MoneyError::NotNumberOrString { found: "a boolean" })
        );
        assert_eq!(
            literal("null"),
            Err(MoneyError::NotNumberOrString { found: "null" })
        );
        assert_eq!(
            literal("{\"a\":1}"),
            Err(MoneyError::NotNumberOrString { found: "an object" })
        );
        assert_eq!(
            literal("[1]"),
            Err(MoneyError::NotNumberOrString { found: "an array" })
        );
        assert!(matches!(
            literal("\"unterminated"),
            Err(MoneyError::InvalidJsonString { .. })
        ));
        let message = Money::parse_json_literal("null").unwrap_err().to_string();
        assert!(message.starts_with("must be a decimal number or string"));
    }

    #[test]
    fn displays_two_fraction_digits() {
        assert_eq!(Money::from_minor(9990).to_string(), "99.90");
        assert_eq!(Money::from_minor(-5).to_string(), "-0.05");
        assert_eq!(Money::from_minor(-100).to_string(), "-1.00");
        assert_eq!(Money::ZERO.to_string(), "0.00");
        assert_eq!(Money::from_minor(7).to_string(), "0.07");
        assert_eq!(Money::MAX.to_string(), "92233720368547758.07");
        assert_eq!(Money::MIN.to_string(), "-92233720368547758.08");
    }

    #[test]
    fn serde_uses_decimal_strings() {
        let amount = Money::from_minor(12345);
        assert_eq!(serde_json::to_string(&amount).unwrap(), "\"123.45\"");
        assert_eq!(serde_json::from_str::<Money>("\"123.45\"").unwrap(), amount);
        let error = serde_json::from_str::<Money>("\"1.234\"").unwrap_err();
        assert!(error.to_string().contains("has 3 fraction digits"));
        // A JSON number goes through parse_json_literal, not serde.
        assert!(serde_json::from_str::<Money>("123.45").is_err());
    }

    #[test]
    fn checked_arithmetic_reports_overflow() {
        let one = Money::from_minor(1);
        assert_eq!(Money::MAX.checked_add(one), None);
        assert_eq!(Money::MIN.checked_sub(one), None);
        assert_eq!(Money::MIN.checked_mul_i64(-1), None);
        assert_eq!(
            Money::from_minor(250).checked_mul_i64(3),
            Some(Money::from_minor(750))
        );
        assert_eq!(
            Money::from_minor(250).checked_sub(Money::from_minor(300)),
            Some(Money::from_minor(-50))
        );
        assert_eq!(Money::checked_sum([]), Some(Money::ZERO));
        assert_eq!(
            Money::checked_sum([1, 2, 3].map(Money::from_minor)),
            Some(Money::from_minor(6))
        );
        assert_eq!(Money::checked_sum([Money::MAX, one]), None);
        // Overflow in a partial sum is reported even if a later term would bring it back.
        assert_eq!(
            Money::checked_sum([Money::MAX, one, Money::from_minor(-1)]),
            None
        );
        assert!(one.is_positive() && !one.is_negative() && !one.is_zero());
        assert!(Money::ZERO.is_zero());
    }

    #[test]
    fn currency_is_three_uppercase_letters() {
        assert_eq!(Currency::parse("EUR"), Ok(Currency::EUR));
        assert_eq!(Currency::parse("USD").unwrap().as_str(), "USD");
        assert_eq!(Currency::parse(""), Err(CurrencyError::Empty));
        assert_eq!(
            Currency::parse("EURO"),
            Err(CurrencyError::WrongLength { length: 4 })
        );
        assert_eq!(
            Currency::parse("Eur"),
            Err(CurrencyError::InvalidCharacter {
                found: 'u',
                position: 2
            })
        );
        assert_eq!(
            Currency::parse("ÉUR"),
            Err(CurrencyError::InvalidCharacter {
                found: 'É',
                position: 1
            })
        );
        assert_eq!(
            Currency::parse(" EU"),
            Err(CurrencyError::InvalidCharacter {
                found: ' ',
                position: 1
            })
        );
        assert_eq!(format!("{:?}", Currency::EUR), "Currency(\"EUR\")");
        assert_eq!(serde_json::to_string(&Currency::EUR).unwrap(), "\"EUR\"");
        assert_eq!(
            serde_json::from_str::<Currency>("\"EUR\"").unwrap(),
            Currency::EUR
        );
        let error = serde_json::from_str::<Currency>("\"eur\"").unwrap_err();
        assert!(error.to_string().contains("uppercase"));
    }

    /// The naive model: the grammar by pattern, the value by i128 arithmetic on the
    /// digits with leading zeros stripped.
    fn model(input: &str) -> Option<i64> {
        let (negative, unsigned) = match input.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, input),
        };
        let (integer, written_fraction) = match unsigned.split_once('.') {
            Some((integer, fraction)) => (integer, Some(fraction)),
            None => (unsigned, None),
        };
        let all_digits = |text: &str| !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
        if !all_digits(integer) {
            return None;
        }
        let fraction = match written_fraction {
            None => "00".to_owned(),
            Some(digits) if all_digits(digits) && digits.len() <= 2 => format!("{digits:0<2}"),
            Some(_) => return None,
        };
        let significant = integer.trim_start_matches('0');
        if significant.len() > 20 {
            return None;
        }
        let whole: i128 = if significant.is_empty() {
            0
        } else {
            significant.parse().ok()?
        };
        let cents: i128 = fraction.parse().ok()?;
        let magnitude = whole * 100 + cents;
        i64::try_from(if negative { -magnitude } else { magnitude }).ok()
    }

    fn amount_text() -> impl Strategy<Value = String> {
        let digits = prop_oneof![
            "[0-9]{0,3}",
            "0{0,30}[0-9]{0,22}",
            "[0-9]{17,21}",
            "9{15,20}",
        ];
        let fraction = prop_oneof![
            Just(String::new()),
            Just(".".to_owned()),
            "\\.[0-9]{1,2}",
            "\\.[0-9]{3,5}",
        ];
        let sign = prop_oneof![Just(""), Just(""), Just("-"), Just("+"), Just("--")];
        (sign, digits, fraction)
            .prop_map(|(sign, digits, fraction)| format!("{sign}{digits}{fraction}"))
    }

    proptest! {
        #[test]
        fn display_round_trips_through_parse(minor in any::<i64>()) {
            let amount = Money::from_minor(minor);
            prop_assert_eq!(Money::parse(&amount.to_string()), Ok(amount));
        }

        #[test]
        fn parse_agrees_with_the_naive_model(input in amount_text()) {
            prop_assert_eq!(Money::parse(&input).ok().map(Money::minor), model(&input));
        }

        #[test]
        fn parse_never_panics(input in "\\PC{0,40}") {
            let _ = Money::parse(&input);
            let _ = Money::parse_json_literal(&input);
        }

        #[test]
        fn add_and_sub_agree_with_i128(left in any::<i64>(), right in any::<i64>()) {
            let left_money = Money::from_minor(left);
            let right_money = Money::from_minor(right);
            let sum = i64::try_from(i128::from(left) + i128::from(right)).ok();
            let difference = i64::try_from(i128::from(left) - i128::from(right)).ok();
            prop_assert_eq!(left_money.checked_add(right_money).map(Money::minor), sum);
            prop_assert_eq!(left_money.checked_sub(right_money).map(Money::minor), difference);
        }

        #[test]
        fn mul_agrees_with_i128(
            minor in prop_oneof![any::<i64>(), -1_000_000_i64..1_000_000],
            factor in prop_oneof![any::<i64>(), -1000_i64..1000],
        ) {
            let product = i64::try_from(i128::from(minor) * i128::from(factor)).ok();
            prop_assert_eq!(
                Money::from_minor(minor).checked_mul_i64(factor).map(Money::minor),
                product
            );
        }

        #[test]
        fn sum_agrees_with_i128(terms in prop::collection::vec(any::<i64>(), 0..8)) {
            // Some iff no partial sum leaves the i64 range.
            let partial_sums: Vec<i128> = terms
                .iter()
                .scan(0_i128, |total, term| {
                    *total += i128::from(*term);
                    Some(*total)
                })
                .collect();
            let expected = if partial_sums.iter().all(|sum| i64::try_from(*sum).is_ok()) {
                i64::try_from(partial_sums.last().copied().unwrap_or(0)).ok()
            } else {
                None
            };
            let actual = Money::checked_sum(terms.iter().copied().map(Money::from_minor));
            prop_assert_eq!(actual.map(Money::minor), expected);
        }
    }
}
