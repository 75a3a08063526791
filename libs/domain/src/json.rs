//! Classifying the raw text of one JSON value.
//!
//! The API layer captures each field as raw JSON text (`serde_json::value::RawValue`)
//! so that numbers reach our parsers digit for digit instead of through `f64`. This
//! module tells the three parsers (money, id, time) what kind of literal they were
//! given; each then decides what it accepts.

/// The shape of one raw JSON value, judged by its first character.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JsonLiteral<'a> {
    /// A string literal, still quoted and escaped: decode it with [`decode_string`].
    String(&'a str),
    /// Anything that is not a string, boolean, null, object or array: a number
    /// literal, or malformed text the caller's own parser will describe precisely.
    Number(&'a str),
    /// A value of another JSON type, described for an error message ("a boolean").
    Other(&'static str),
}

/// Classifies `raw`, ignoring JSON whitespace around the value.
pub(crate) fn classify(raw: &str) -> JsonLiteral<'_> {
    let text = raw.trim_matches(|c| matches!(c, ' ' | '\t' | '\n' | '\r'));
    match text.chars().next() {
        None => JsonLiteral::Other("empty"),
        Some('"') => JsonLiteral::String(text),
        Some('t' | 'f') => JsonLiteral::Other("a boolean"),
        Some('n') => JsonLiteral::Other("null"),
        Some('{') => JsonLiteral::Other("an object"),
        Some('[') => JsonLiteral::Other("an array"),
        Some(_) => JsonLiteral::Number(text),
    }
}

/// Decodes a quoted JSON string literal (escapes included), or returns serde_json's
/// description of what is wrong with it.
pub(crate) fn decode_string(literal: &str) -> Result<String, String> {
    serde_json::from_str::<String>(literal).map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_each_json_type() {
        assert_eq!(classify("\"a\""), JsonLiteral::String("\"a\""));
        assert_eq!(classify(" 12.5\n"), JsonLiteral::Number("12.5"));
        assert_eq!(classify("-1"), JsonLiteral::Number("-1"));
        assert_eq!(classify("true"), JsonLiteral::Other("a boolean"));
        assert_eq!(classify("false"), JsonLiteral::Other("a boolean"));
        assert_eq!(classify("null"), JsonLiteral::Other("null"));
        assert_eq!(classify("{}"), JsonLiteral::Other("an object"));
        assert_eq!(classify("[1]"), JsonLiteral::Other("an array"));
        assert_eq!(classify("  "), JsonLiteral::Other("empty"));
    }

    #[test]
    fn decodes_escapes_and_reports_bad_literals() {
        assert_eq!(decode_string(r#""a\u00e9\"b""#), Ok("aé\"b".to_owned()));
        assert!(decode_string(r#""unterminated"#).is_err());
        assert!(decode_string(r#""a" trailing"#).is_err());
    }
}
