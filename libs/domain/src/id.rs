//! Opaque identifiers: customer, vendor and transaction ids.
//!
//! All three follow one rule set, implemented once by the generic [`Id<K>`]; the kind
//! `K` is a marker type from [`kind`] that only keeps the three apart at compile time
//! (a `CustomerId` cannot be passed where a `VendorId` is expected). To parse, the text
//! is trimmed and put in Unicode NFC, then it must have 1 to [`MAX_ID_CHARS`]
//! characters and no control characters. Inner spaces are fine: merchant names such as
//! "fraud_Kirlin and Sons" are ids.
//!
//! From JSON an id may be a string or an integer literal; an integer is kept digit for
//! digit (card numbers exceed 2^53, so they never pass through `u64` or `f64`).

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use unicode_normalization::{IsNormalized, UnicodeNormalization, is_nfc_quick};

use crate::json::{self, JsonLiteral};

/// The most characters (Unicode scalar values, after normalisation) an id may have.
pub const MAX_ID_CHARS: usize = 64;

/// Why a text or JSON value is not an id.
///
/// Each message completes a sentence that starts with the field's name
/// ("customerId is empty"). Positions count characters from 1, after normalisation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Nothing is left after trimming whitespace.
    #[error("is empty; an id needs 1 to {MAX_ID_CHARS} characters besides surrounding whitespace")]
    Empty,
    /// More than [`MAX_ID_CHARS`] characters.
    #[error("has {length} characters; at most {max} are allowed")]
    TooLong {
        /// How many characters it has after normalisation.
        length: usize,
        /// The limit, [`MAX_ID_CHARS`].
        max: usize,
    },
    /// A control character (`char::is_control`), such as a newline or NUL.
    #[error("contains a control character (U+{code_point:04X}) at position {position}")]
    ControlCharacter {
        /// The character's code point.
        code_point: u32,
        /// Its position, counting from 1.
        position: usize,
    },
    /// A JSON value that is neither a string nor a non-negative integer literal.
    #[error("must be a string or a non-negative integer, not {found}")]
    NotStringOrInteger {
        /// What was found instead ("a negative number", "a boolean", ...).
        found: &'static str,
    },
    /// A JSON string literal that does not decode.
    #[error("is not a valid JSON string: {reason}")]
    InvalidJsonString {
        /// serde_json's description of the problem.
        reason: String,
    },
}

/// Marks one kind of id. Implement it for an uninhabited type to get another id type
/// with the same rules.
pub trait IdKind {
    /// The id type's name as people know it, used in `Debug` output and serde errors.
    const NAME: &'static str;
}

/// The kinds of id this crate defines.
pub mod kind {
    use super::IdKind;

    /// Marks a [`CustomerId`](super::CustomerId).
    pub enum Customer {}
    /// Marks a [`VendorId`](super::VendorId).
    pub enum Vendor {}
    /// Marks a [`TransactionId`](super::TransactionId).
    pub enum Transaction {}

    impl IdKind for Customer {
        const NAME: &'static str = "CustomerId";
    }
    impl IdKind for Vendor {
        const NAME: &'static str = "VendorId";
    }
    impl IdKind for Transaction {
        const NAME: &'static str = "TransactionId";
    }
}

/// The customer who pays.
pub type CustomerId = Id<kind::Customer>;
/// The vendor (merchant) who is paid.
pub type VendorId = Id<kind::Vendor>;
/// One transaction; the idempotency key of ingest.
pub type TransactionId = Id<kind::Transaction>;

/// A validated, normalised opaque identifier of kind `K`.
///
/// The only ways in are [`Id::parse`], [`Id::parse_json_literal`], `FromStr`, serde
/// (which validates through `parse`) and, for transactions, [`TransactionId::generate`].
/// Ids compare, hash and order by their text.
pub struct Id<K: IdKind> {
    value: Box<str>,
    // fn() -> K: the id owns no K, and stays Send + Sync whatever K is.
    kind: PhantomData<fn() -> K>,
}

impl<K: IdKind> Id<K> {
    /// Normalises and validates an id: trims surrounding whitespace, applies Unicode
    /// NFC, then requires 1 to [`MAX_ID_CHARS`] characters and no control characters.
    pub fn parse(input: &str) -> Result<Id<K>, IdError> {
        let trimmed = input.trim();
        let normalised: Box<str> = match is_nfc_quick(trimmed.chars()) {
            IsNormalized::Yes => trimmed.into(),
            IsNormalized::No | IsNormalized::Maybe => {
                let composed: String = trimmed.nfc().collect();
                composed.trim().into()
            }
        };
        let length = normalised.chars().count();
        if length == 0 {
            return Err(IdError::Empty);
        }
        if length > MAX_ID_CHARS {
            return Err(IdError::TooLong {
                length,
                max: MAX_ID_CHARS,
            });
        }
        if let Some((index, control)) = normalised
            .chars()
            .enumerate()
            .find(|(_, character)| character.is_control())
        {
            return Err(IdError::ControlCharacter {
                code_point: u32::from(control),
                position: index + 1,
            });
        }
        Ok(Id::new_unchecked(normalised))
    }

    /// Parses the raw text of one JSON value (as `RawValue::get()` gives it).
    ///
    /// A string literal is decoded and goes through [`Id::parse`]. An integer literal
    /// (ASCII digits only) becomes the id with exactly those digits:
    /// `4929878788898271234` stays "4929878788898271234". Negative, fractional and
    /// exponent numbers, booleans, null, objects and arrays are rejected with
    /// [`IdError::NotStringOrInteger`].
    pub fn parse_json_literal(raw: &str) -> Result<Id<K>, IdError> {
        match json::classify(raw) {
            JsonLiteral::String(literal) => {
                let decoded = json::decode_string(literal)
                    .map_err(|reason| IdError::InvalidJsonString { reason })?;
                Id::parse(&decoded)
            }
            JsonLiteral::Number(literal) if literal.bytes().all(|b| b.is_ascii_digit()) => {
                Id::parse(literal)
            }
            JsonLiteral::Number(literal) => Err(IdError::NotStringOrInteger {
                found: describe_non_integer(literal),
            }),
            JsonLiteral::Other(found) => Err(IdError::NotStringOrInteger { found }),
        }
    }

    /// The id's text.
    pub fn as_str(&self) -> &str {
        &self.value
    }

    /// The id's text, owned.
    pub fn into_string(self) -> String {
        self.value.into_string()
    }

    /// Wraps text that is already known to be a valid, normalised id.
    fn new_unchecked(value: Box<str>) -> Id<K> {
        debug_assert!(!value.is_empty() && value.chars().count() <= MAX_ID_CHARS);
        Id {
            value,
            kind: PhantomData,
        }
    }
}

impl TransactionId {
    /// A fresh, time-ordered UUIDv7 in lowercase hyphenated form, for events that
    /// arrive without a `transactionId`.
    pub fn generate() -> TransactionId {
        let text = uuid::Uuid::now_v7().hyphenated().to_string();
        Id::new_unchecked(text.into_boxed_str())
    }
}

/// Names the kind of a JSON number that is not a plain non-negative integer.
fn describe_non_integer(literal: &str) -> &'static str {
    if literal.starts_with('-') {
        "a negative number"
    } else if literal.contains(['e', 'E']) {
        "a number in exponent notation"
    } else if literal.contains('.') {
        "a fractional number"
    } else {
        "malformed JSON"
    }
}

impl<K: IdKind> Clone for Id<K> {
    fn clone(&self) -> Id<K> {
        Id {
            value: self.value.clone(),
            kind: PhantomData,
        }
    }
}

impl<K: IdKind> PartialEq for Id<K> {
    fn eq(&self, other: &Id<K>) -> bool {
        self.value == other.value
    }
}

impl<K: IdKind> Eq for Id<K> {}

impl<K: IdKind> PartialOrd for Id<K> {
    fn partial_cmp(&self, other: &Id<K>) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<K: IdKind> Ord for Id<K> {
    fn cmp(&self, other: &Id<K>) -> Ordering {
        self.value.cmp(&other.value)
    }
}

impl<K: IdKind> Hash for Id<K> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.value.hash(state);
    }
}

impl<K: IdKind> fmt::Debug for Id<K> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.debug_tuple(K::NAME).field(&self.value).finish()
    }
}

impl<K: IdKind> fmt::Display for Id<K> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.value)
    }
}

impl<K: IdKind> FromStr for Id<K> {
    type Err = IdError;

    fn from_str(input: &str) -> Result<Id<K>, IdError> {
        Id::parse(input)
    }
}

impl<K: IdKind> AsRef<str> for Id<K> {
    fn as_ref(&self) -> &str {
        &self.value
    }
}

impl<K: IdKind> Serialize for Id<K> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.value)
    }
}

impl<'de, K: IdKind> Deserialize<'de> for Id<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Id<K>, D::Error> {
        struct IdVisitor<K>(PhantomData<fn() -> K>);

        impl<K: IdKind> Visitor<'_> for IdVisitor<K> {
            type Value = Id<K>;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(formatter, "a {} string", K::NAME)
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<Id<K>, E> {
                Id::parse(value).map_err(|error| E::custom(format_args!("{} {error}", K::NAME)))
            }
        }

        deserializer.deserialize_str(IdVisitor(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_and_normalises_ids() {
        assert_eq!(CustomerId::parse("12345").unwrap().as_str(), "12345");
        assert_eq!(
            VendorId::parse("  fraud_Kirlin and Sons\t")
                .unwrap()
                .as_str(),
            "fraud_Kirlin and Sons"
        );
        // "e" + combining acute accent composes to "é" under NFC.
        let decomposed = CustomerId::parse("Caf\u{0065}\u{0301}").unwrap();
        let composed = CustomerId::parse("Caf\u{00e9}").unwrap();
        assert_eq!(decomposed, composed);
        assert_eq!(decomposed.as_str(), "Caf\u{00e9}");
        // The limit counts characters, not bytes: 64 three-byte characters pass.
        assert!(CustomerId::parse(&"€".repeat(64)).is_ok());
        assert!(CustomerId::parse(&"x".repeat(64)).is_ok());
        // 65 characters that compose to 64 pass too.
        let long = format!("{}e\u{0301}", "x".repeat(63));
        assert_eq!(
            CustomerId::parse(&long).unwrap().as_str().chars().count(),
            64
        );
    }

    #[test]
    fn rejects_invalid_ids_with_clear_errors() {
        assert_eq!(CustomerId::parse(""), Err(IdError::Empty));
        assert_eq!(CustomerId::parse(" \t\n "), Err(IdError::Empty));
        assert_eq!(
            CustomerId::parse(&"x".repeat(65)),
            Err(IdError::TooLong {
                length: 65,
                max: 64
            })
        );
        assert_eq!(
            CustomerId::parse("ab\u{7}c"),
            Err(IdError::ControlCharacter {
                code_point: 7,
                position: 3
            })
        );
        assert_eq!(
            CustomerId::parse("a\nb"),
            Err(IdError::ControlCharacter {
                code_point: 10,
                position: 2
            })
        );
        // U+0085 is both whitespace and a control character: trimmed at the ends,
        // rejected inside.
        assert_eq!(CustomerId::parse("\u{85}x\u{85}").unwrap().as_str(), "x");
        assert_eq!(
            CustomerId::parse("x\u{85}y"),
            Err(IdError::ControlCharacter {
                code_point: 0x85,
                position: 2
            })
        );
        assert_eq!(
            CustomerId::parse("x\u{9f}"),
            Err(IdError::ControlCharacter {
                code_point: 0x9f,
                position: 2
            })
        );

        let message = |input: &str| CustomerId::parse(input).unwrap_err().to_string();
        assert!(message("").starts_with("is empty"));
        assert_eq!(
            message(&"x".repeat(70)),
            "has 70 characters; at most 64 are allowed"
        );
        assert_eq!(
            message("a\u{0}"),
            "contains a control character (U+0000) at position 2"
        );
    }

    #[test]
    fn json_literals_keep_integer_digits() {
        let parse = |raw: &str| CustomerId::parse_json_literal(raw).map(Id::into_string);
        assert_eq!(
            parse("4929878788898271234").as_deref(),
            Ok("4929878788898271234")
        );
        assert_eq!(parse("0").as_deref(), Ok("0"));
        assert_eq!(parse("\"12345\"").as_deref(), Ok("12345"));
        assert_eq!(parse("\" a b \"").as_deref(), Ok("a b"));
        assert_eq!(parse(r#""caf\u00e9""#).as_deref(), Ok("café"));
        assert_eq!(
            parse(r#""a\u0000""#),
            Err(IdError::ControlCharacter {
                code_point: 0,
                position: 2
            })
        );
        assert_eq!(parse("\"\""), Err(IdError::Empty));
        assert_eq!(
            parse(&"1".repeat(65)),
            Err(IdError::TooLong {
                length: 65,
                max: 64
            })
        );
        let not = |found| Err(IdError::NotStringOrInteger { found });
        assert_eq!(parse("-12"), not("a negative number"));
        assert_eq!(parse("1.5"), not("a fractional number"));
        assert_eq!(parse("1e5"), not("a number in exponent notation"));
        assert_eq!(parse("1E+5"), not("a number in exponent notation"));
        assert_eq!(parse("true"), not("a boolean"));
        assert_eq!(parse("null"), not("null"));
        assert_eq!(parse("{}"), not("an object"));
        assert_eq!(parse("[\"a\"]"), not("an array"));
        assert!(matches!(
            parse("\"open"),
            Err(IdError::InvalidJsonString { .. })
        ));
        let message = CustomerId::parse_json_literal("-1")
            .unwrap_err()
            .to_string();
        assert!(message.starts_with("must be a string or a non-negative integer"));
    }

    #[test]
    fn traits_and_serde() {
        let id: VendorId = "fraud_Kirlin and Sons".parse().unwrap();
        assert_eq!(id.to_string(), "fraud_Kirlin and Sons");
        assert_eq!(format!("{id:?}"), "VendorId(\"fraud_Kirlin and Sons\")");
        assert_eq!(
            serde_json::to_string(&id).unwrap(),
            "\"fraud_Kirlin and Sons\""
        );
        assert_eq!(
            serde_json::from_str::<VendorId>("\" fraud_Kirlin and Sons \"").unwrap(),
            id
        );
        let error = serde_json::from_str::<VendorId>("\"\"").unwrap_err();
        assert!(error.to_string().contains("VendorId is empty"));
        assert!(serde_json::from_str::<VendorId>("12").is_err());

        let mut ids = [CustomerId::parse("b"), CustomerId::parse("a")].map(Result::unwrap);
        ids.sort();
        assert_eq!(ids[0].as_str(), "a");
        let set: std::collections::HashSet<CustomerId> = ids.iter().cloned().collect();
        assert!(set.contains(&CustomerId::parse(" a ").unwrap()));
    }

    #[test]
    fn generated_transaction_ids_are_lowercase_uuid_v7() {
        let first = TransactionId::generate();
        let second = TransactionId::generate();
        assert_ne!(first, second);
        let uuid = uuid::Uuid::parse_str(first.as_str()).unwrap();
        assert_eq!(uuid.get_version_num(), 7);
        assert_eq!(first.as_str().len(), 36);
        assert_eq!(first.as_str(), first.as_str().to_lowercase());
        assert_eq!(TransactionId::parse(first.as_str()), Ok(first));
    }

    proptest! {
        #[test]
        fn integer_literals_round_trip_digit_for_digit(digits in "[0-9]{1,64}") {
            let id = TransactionId::parse_json_literal(&digits).unwrap();
            prop_assert_eq!(id.as_str(), digits.as_str());
        }

        #[test]
        fn parsed_ids_are_valid_and_stable(input in "\\PC{0,70}|[ -~\\t\\n\\u{0}]{0,70}") {
            if let Ok(id) = CustomerId::parse(&input) {
                let length = id.as_str().chars().count();
                prop_assert!((1..=MAX_ID_CHARS).contains(&length));
                prop_assert!(!id.as_str().chars().any(char::is_control));
                prop_assert_eq!(id.as_str(), id.as_str().trim());
                // Normalisation is idempotent.
                prop_assert_eq!(CustomerId::parse(id.as_str()), Ok(id.clone()));
                // And the JSON string form parses to the same id.
                let literal = serde_json::to_string(id.as_str()).unwrap();
                prop_assert_eq!(CustomerId::parse_json_literal(&literal), Ok(id));
            }
        }
    }
}
