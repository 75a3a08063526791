//! The ingest decoder and validator (`fraud-intake`, `ingest::api::decode`) on arbitrary
//! bodies.
//!
//! The first byte picks the framing (even: JSON, odd: NDJSON), the rest is the body.
//! Beyond "never panics", every outcome must be one the API documents: a list of events
//! that obey the rules (and decode again to themselves when written back as JSON), or a
//! 400/413/422 problem whose field errors point into the body.

#![no_main]

use fraud_domain::{Currency, EventTime, Money};
use fraud_intake::{self as decode, Framing, Rules};
use libfuzzer_sys::fuzz_target;

const MAX_ITEMS: usize = 50;
const MAX_FUTURE_SKEW_MS: i64 = 300_000;

fn rules() -> Rules {
    Rules {
        currency: Currency::EUR,
        max_amount: Money::from_minor(100_000_000),
        max_future_skew_ms: MAX_FUTURE_SKEW_MS,
        max_items: MAX_ITEMS,
        now: EventTime::parse_rfc3339("2026-01-01T12:00:00Z").expect("a valid instant"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let rules = rules();
    let split = if mode % 2 == 0 {
        decode::split_json(body)
    } else {
        decode::split_ndjson(body).map(|items| (Framing::Batch, items))
    };
    let outcome = split.and_then(|(framing, items)| {
        decode::validate(framing, &items, &rules).map(|events| (framing, items.len(), events))
    });
    match outcome {
        Ok((framing, count, events)) => {
            assert_eq!(events.len(), count, "one event per item");
            assert!(count >= 1 && count <= MAX_ITEMS);
            assert!(framing == Framing::Batch || count == 1);
            for event in &events {
                assert!(event.amount.is_positive() && event.amount <= rules.max_amount);
                assert_eq!(event.currency, rules.currency);
                assert_eq!(event.ingest_time, rules.now);
                assert!(event.event_time.millis_since(rules.now) <= MAX_FUTURE_SKEW_MS);
                // Normalised values are a fixed point: written back, they decode to
                // the same event.
                let again = serde_json::json!({
                    "transactionId": event.transaction_id.as_str(),
                    "customerId": event.customer_id.as_str(),
                    "vendorId": event.vendor_id.as_str(),
                    "transactionSum": event.amount.to_string(),
                    "ts": event.event_time.to_rfc3339(),
                    "currency": event.currency.as_str(),
                })
                .to_string();
                let (framing, items) = decode::split_json(again.as_bytes())
                    .unwrap_or_else(|problem| panic!("{again}: {problem:?}"));
                let decoded = decode::validate(framing, &items, &rules)
                    .unwrap_or_else(|problem| panic!("{again}: {problem:?}"));
                assert_eq!(&decoded[0], event, "{again}");
            }
        }
        Err(problem) => {
            assert!(
                matches!(problem.status, 400 | 413 | 422),
                "unexpected status {}",
                problem.status
            );
            if problem.status == 422 {
                assert!(!problem.errors.is_empty(), "a 422 lists its errors");
            }
            for error in &problem.errors {
                assert!(
                    error.pointer.is_empty() || error.pointer.starts_with('/'),
                    "{error:?}"
                );
                assert!(!error.detail.is_empty());
            }
            serde_json::to_vec(&problem).expect("a problem serialises");
        }
    }
});
