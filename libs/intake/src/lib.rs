//! The ingest API's body decoder and validator: from request bytes to validated
//! transactions, or to every error at once. A crate of its own (ingest re-exports it as
//! `ingest::api::decode`) so that its fuzz target (`fuzz/`) builds without Kafka,
//! Parquet and the rest of the service.
//!
//! The body is a JSON object, a JSON array of objects, or NDJSON (one object per line).
//! Field values are read as raw JSON text and parsed by the domain types, so amounts are
//! exact (never through a float) and integer ids keep every digit. Validation never
//! stops at the first problem: the caller gets one [`FieldError`] per invalid field.

use std::borrow::Cow;
use std::collections::HashMap;

use fraud_domain::{Currency, CustomerId, EventTime, Money, TransactionId, VendorId};
use fraud_events::TransactionEvent;
use fraud_service::problem::{FieldError, Problem};
use serde_json::value::RawValue;

/// How the request's items were framed; decides the shape of pointers and responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// One JSON object: pointers are `/field`, the answer is one object.
    Single,
    /// A JSON array or NDJSON: pointers are `/index/field`, the answer lists items.
    Batch,
}

/// What validation needs to know besides the body.
#[derive(Debug, Clone)]
pub struct Rules {
    pub currency: Currency,
    pub max_amount: Money,
    pub max_future_skew_ms: i64,
    pub max_items: usize,
    /// The instant to compare `ts` with (the request's arrival).
    pub now: EventTime,
}

const FIELDS: [&str; 6] = [
    "transactionId",
    "customerId",
    "vendorId",
    "transactionSum",
    "ts",
    "currency",
];

/// Splits a JSON body (object or array) into raw items.
pub fn split_json(body: &[u8]) -> Result<(Framing, Vec<&RawValue>), Problem> {
    let first = body
        .iter()
        .copied()
        .find(|byte| !byte.is_ascii_whitespace());
    match first {
        Some(b'[') => serde_json::from_slice::<Vec<&RawValue>>(body)
            .map(|items| (Framing::Batch, items))
            .map_err(|error| Problem::malformed(format!("the body is not valid JSON: {error}"))),
        Some(b'{') => serde_json::from_slice::<&RawValue>(body)
            .map(|item| (Framing::Single, vec![item]))
            .map_err(|error| Problem::malformed(format!("the body is not valid JSON: {error}"))),
        Some(_) => Err(Problem::malformed(
            "the body must be a JSON object or an array of objects",
        )),
        None => Err(Problem::malformed("the body is empty")),
    }
}

/// Splits an NDJSON body into raw items, one per non-blank line.
pub fn split_ndjson(body: &[u8]) -> Result<Vec<&RawValue>, Problem> {
    let mut items = Vec::new();
    let mut errors = Vec::new();
    for (line_number, line) in body.split(|byte| *byte == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let index = items.len() + errors.len();
        match serde_json::from_slice::<&RawValue>(line) {
            Ok(item) => items.push(item),
            Err(error) => errors.push(FieldError {
                index: Some(index),
                pointer: format!("/{index}"),
                detail: format!("line {} is not valid JSON: {error}", line_number + 1),
            }),
        }
    }
    if !errors.is_empty() {
        return Err(Problem::malformed("some lines are not valid JSON").with_errors(errors));
    }
    if items.is_empty() {
        return Err(Problem::malformed("the body holds no transactions"));
    }
    Ok(items)
}

/// Validates every item; returns the normalised events, or a 413/422 listing every error.
pub fn validate(
    framing: Framing,
    items: &[&RawValue],
    rules: &Rules,
) -> Result<Vec<TransactionEvent>, Problem> {
    if items.len() > rules.max_items {
        return Err(Problem::too_large(format!(
            "{} transactions in one request; at most {} are allowed",
            items.len(),
            rules.max_items
        )));
    }
    if items.is_empty() {
        return Err(Problem::invalid(vec![FieldError {
            index: None,
            pointer: String::new(),
            detail: "the batch holds no transactions".to_owned(),
        }]));
    }
    let mut events = Vec::with_capacity(items.len());
    let mut errors = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let at = Location { framing, index };
        if let Some(event) = validate_item(item, &at, rules, &mut errors) {
            events.push(event);
        }
    }
    if errors.is_empty() {
        Ok(events)
    } else {
        Err(Problem::invalid(errors))
    }
}

struct Location {
    framing: Framing,
    index: usize,
}

impl Location {
    fn error(&self, field: &str, detail: impl std::fmt::Display) -> FieldError {
        let (index, pointer) = match self.framing {
            Framing::Single => (None, format!("/{field}")),
            Framing::Batch if field.is_empty() => (Some(self.index), format!("/{}", self.index)),
            Framing::Batch => (Some(self.index), format!("/{}/{field}", self.index)),
        };
        let detail = if field.is_empty() {
            detail.to_string()
        } else {
            format!("{field} {detail}")
        };
        FieldError {
            index,
            pointer,
            detail,
        }
    }
}

fn validate_item(
    item: &RawValue,
    at: &Location,
    rules: &Rules,
    errors: &mut Vec<FieldError>,
) -> Option<TransactionEvent> {
    let Ok(fields) = serde_json::from_str::<HashMap<Cow<'_, str>, &RawValue>>(item.get()) else {
        errors.push(at.error("", "must be a JSON object with the transaction's fields"));
        return None;
    };
    let before = errors.len();
    for name in fields.keys() {
        if !FIELDS.contains(&name.as_ref()) {
            errors.push(at.error(
                name,
                format!(
                    "is not a field of a transaction (fields: {})",
                    FIELDS.join(", ")
                ),
            ));
        }
    }
    let present = |name: &str| fields.get(name).copied().filter(|raw| raw.get() != "null");
    let required = |name: &str, errors: &mut Vec<FieldError>| {
        let raw = present(name);
        if raw.is_none() {
            errors.push(at.error(name, "is required"));
        }
        raw
    };

    let transaction_id = match present("transactionId") {
        None => Some(TransactionId::generate()),
        Some(raw) => TransactionId::parse_json_literal(raw.get())
            .map_err(|error| errors.push(at.error("transactionId", error)))
            .ok(),
    };
    let customer_id = required("customerId", errors).and_then(|raw| {
        CustomerId::parse_json_literal(raw.get())
            .map_err(|error| errors.push(at.error("customerId", error)))
            .ok()
    });
    let vendor_id = required("vendorId", errors).and_then(|raw| {
        VendorId::parse_json_literal(raw.get())
            .map_err(|error| errors.push(at.error("vendorId", error)))
            .ok()
    });
    let amount =
        required("transactionSum", errors).and_then(|raw| {
            match Money::parse_json_literal(raw.get()) {
                Err(error) => {
                    errors.push(at.error("transactionSum", error));
                    None
                }
                Ok(amount) if !amount.is_positive() => {
                    errors.push(at.error("transactionSum", "must be greater than zero"));
                    None
                }
                Ok(amount) if amount > rules.max_amount => {
                    errors.push(at.error(
                        "transactionSum",
                        format!("is {amount}; at most {} is accepted", rules.max_amount),
                    ));
                    None
                }
                Ok(amount) => Some(amount),
            }
        });
    let event_time = required("ts", errors).and_then(|raw| {
        let latest = rules.now.checked_add_millis(rules.max_future_skew_ms);
        match EventTime::parse_json_literal(raw.get()) {
            Err(error) => {
                errors.push(at.error("ts", error));
                None
            }
            Ok(time) if latest.is_some_and(|latest| time > latest) => {
                errors.push(at.error(
                    "ts",
                    format!(
                        "is {} ms in the future; at most {} ms is allowed",
                        time.millis_since(rules.now),
                        rules.max_future_skew_ms
                    ),
                ));
                None
            }
            Ok(time) => Some(time),
        }
    });
    let currency = match present("currency") {
        None => Some(rules.currency),
        Some(raw) => match serde_json::from_str::<String>(raw.get()) {
            Err(_) => {
                errors.push(at.error("currency", "must be a string such as \"EUR\""));
                None
            }
            Ok(code) if code != rules.currency.as_str() => {
                errors.push(at.error(
                    "currency",
                    format!("is {code}; this platform accepts {} only", rules.currency),
                ));
                None
            }
            Ok(_) => Some(rules.currency),
        },
    };
    if errors.len() > before {
        return None;
    }
    Some(TransactionEvent {
        transaction_id: transaction_id?,
        customer_id: customer_id?,
        vendor_id: vendor_id?,
        amount: amount?,
        currency: currency?,
        event_time: event_time?,
        ingest_time: rules.now,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules {
            currency: Currency::EUR,
            max_amount: Money::from_minor(100_000_000),
            max_future_skew_ms: 300_000,
            max_items: 3,
            now: EventTime::parse_rfc3339("2026-01-01T12:00:00Z").unwrap(),
        }
    }

    fn decode(body: &str) -> Result<Vec<TransactionEvent>, Problem> {
        let (framing, items) = split_json(body.as_bytes())?;
        validate(framing, &items, &rules())
    }

    #[test]
    fn the_design_example_is_accepted_exactly() {
        let events = decode(
            r#"{"transactionId":"2da90c7d74bd46a0caf3777415b3ebd3","customerId":12345,
                "vendorId":"04ec092a-421a-4481","transactionSum":99.90,
                "ts":"2019-05-30T09:20:50.100+02:00","currency":"EUR"}"#,
        )
        .unwrap();
        let event = &events[0];
        assert_eq!(event.customer_id.as_str(), "12345");
        assert_eq!(event.amount, Money::from_minor(9990));
        assert_eq!(event.event_time.as_millis(), 1_559_200_850_100);
        assert_eq!(
            event.transaction_id.as_str(),
            "2da90c7d74bd46a0caf3777415b3ebd3"
        );
    }

    #[test]
    fn integer_ids_beyond_two_to_the_53_keep_every_digit() {
        let events = decode(
            r#"[{"customerId":4929878788898271234,"vendorId":7,"transactionSum":"1","ts":"2026-01-01T11:00:00Z"}]"#,
        )
        .unwrap();
        assert_eq!(events[0].customer_id.as_str(), "4929878788898271234");
        assert_eq!(events[0].vendor_id.as_str(), "7");
        assert_eq!(
            events[0].transaction_id.as_str().len(),
            36,
            "a generated UUIDv7"
        );
    }

    #[test]
    fn every_error_of_every_item_is_listed_with_a_pointer() {
        let problem = decode(
            r#"[{"customerId":"1","vendorId":"v","transactionSum":"1.234","ts":"2026-01-01T11:00:00Z"},
                {"customerId":"2","transactionSum":-5,"ts":"2026-01-01T12:10:00Z","colour":"red"},
                {"customerId":"3","vendorId":"v","transactionSum":1,"ts":"2026-01-01T11:00:00","currency":"USD"}]"#,
        )
        .unwrap_err();
        assert_eq!(problem.status, 422);
        let pointers: Vec<&str> = problem.errors.iter().map(|e| e.pointer.as_str()).collect();
        for expected in [
            "/0/transactionSum",
            "/1/colour",
            "/1/vendorId",
            "/1/transactionSum",
            "/1/ts",
            "/2/ts",
            "/2/currency",
        ] {
            assert!(
                pointers.contains(&expected),
                "{expected} missing from {pointers:?}"
            );
        }
        assert_eq!(problem.errors.len(), 7, "{:#?}", problem.errors);
    }

    #[test]
    fn framing_sets_the_pointer_shape() {
        let single =
            decode(r#"{"customerId":"1","vendorId":"v","ts":"2026-01-01T11:00:00Z"}"#).unwrap_err();
        assert_eq!(single.errors[0].pointer, "/transactionSum");
        assert_eq!(single.errors[0].index, None);
        assert_eq!(single.errors[0].detail, "transactionSum is required");
    }

    #[test]
    fn malformed_bodies_are_400_and_oversized_batches_413() {
        assert_eq!(decode("{").unwrap_err().status, 400);
        assert_eq!(decode("42").unwrap_err().status, 400);
        assert_eq!(decode("").unwrap_err().status, 400);
        let four = r#"[{},{},{},{}]"#;
        assert_eq!(decode(four).unwrap_err().status, 413);
        assert_eq!(decode("[]").unwrap_err().status, 422);
        assert_eq!(decode("[1]").unwrap_err().errors[0].pointer, "/0");
    }

    #[test]
    fn ndjson_lines_are_items_and_bad_lines_are_listed() {
        let items = split_ndjson(b"{\"a\":1}\n\n{\"b\":2}\n").unwrap();
        assert_eq!(items.len(), 2);
        let problem = split_ndjson(b"{\"a\":1}\n{oops\n").unwrap_err();
        assert_eq!(problem.status, 400);
        assert_eq!(problem.errors[0].pointer, "/1");
        assert!(problem.errors[0].detail.starts_with("line 2"));
    }
}
