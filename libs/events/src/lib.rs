//! The Kafka record of an accepted transaction, shared by its producer (ingest) and its
//! consumers (the lake writer, the speed layer).
//!
//! A record on the `transactions` topic is keyed by `customerId` (so one customer's
//! events keep their order in one partition) and carries:
//! - the value: a [`TransactionEvent`] encoded by [`encode`];
//! - the header [`SCHEMA_VERSION_HEADER`] naming the value's encoding version, so a
//!   consumer can refuse what it does not understand instead of misreading it, and
//!   [`CONTENT_TYPE_HEADER`];
//! - the W3C trace context (`traceparent`, `tracestate`) of the POST that accepted it.
//!
//! Version 1 is JSON with integer minor units and UTC epoch milliseconds: readable with
//! any Kafka tool, no schema registry needed, and money never passes through a float.

use fraud_domain::{Currency, CustomerId, EventTime, Money, TransactionId, VendorId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Header naming the encoding version of the record's value.
pub const SCHEMA_VERSION_HEADER: &str = "schema-version";
/// Header naming the media type of the record's value.
pub const CONTENT_TYPE_HEADER: &str = "content-type";
/// The version [`encode`] writes.
pub const SCHEMA_VERSION: &str = "1";
/// The media type [`encode`] writes.
pub const CONTENT_TYPE: &str = "application/json";

/// One accepted transaction, as ingest validated and normalised it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TransactionEvent {
    /// The client's idempotency key, or a UUIDv7 that ingest generated.
    pub transaction_id: TransactionId,
    pub customer_id: CustomerId,
    pub vendor_id: VendorId,
    /// The amount in minor units (cents); always positive.
    #[serde(with = "minor_units")]
    pub amount: Money,
    pub currency: Currency,
    /// Event time, UTC milliseconds since the epoch.
    #[serde(with = "epoch_millis")]
    pub event_time: EventTime,
    /// When ingest accepted it, UTC milliseconds since the epoch.
    #[serde(with = "epoch_millis")]
    pub ingest_time: EventTime,
}

impl TransactionEvent {
    /// A digest of what the client said (everything but the ingest time), to tell a
    /// replay of the same transaction from a different one reusing its id.
    pub fn content_fingerprint(&self) -> String {
        let mut hasher = Sha256::new();
        for part in [
            self.transaction_id.as_str(),
            self.customer_id.as_str(),
            self.vendor_id.as_str(),
            &self.amount.minor().to_string(),
            self.currency.as_str(),
            &self.event_time.as_millis().to_string(),
        ] {
            // Length-prefixed, so no two different field lists hash the same bytes.
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part.as_bytes());
        }
        hex::encode(hasher.finalize())
    }
}

/// Why a record could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("record has no {SCHEMA_VERSION_HEADER} header")]
    MissingVersion,
    #[error("record has schema version `{0}`; this consumer reads version {SCHEMA_VERSION}")]
    UnknownVersion(String),
    #[error("record value is not a version-1 transaction: {0}")]
    Malformed(#[from] serde_json::Error),
}

/// The record value for `event` (schema version [`SCHEMA_VERSION`]).
pub fn encode(event: &TransactionEvent) -> Vec<u8> {
    // Serializing these plain fields cannot fail.
    serde_json::to_vec(event).unwrap_or_default()
}

/// Reads a record value, given the record's `schema-version` header.
pub fn decode(
    schema_version: Option<&[u8]>,
    value: &[u8],
) -> Result<TransactionEvent, DecodeError> {
    let version = schema_version.ok_or(DecodeError::MissingVersion)?;
    if version != SCHEMA_VERSION.as_bytes() {
        return Err(DecodeError::UnknownVersion(
            String::from_utf8_lossy(version).into_owned(),
        ));
    }
    Ok(serde_json::from_slice(value)?)
}

mod minor_units {
    use fraud_domain::Money;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(amount: &Money, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_i64(amount.minor())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Money, D::Error> {
        i64::deserialize(deserializer).map(Money::from_minor)
    }
}

mod epoch_millis {
    use fraud_domain::EventTime;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(time: &EventTime, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_i64(time.as_millis())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<EventTime, D::Error> {
        let millis = i64::deserialize(deserializer)?;
        EventTime::from_millis(millis).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn event(amount_minor: i64, event_millis: i64) -> TransactionEvent {
        TransactionEvent {
            transaction_id: TransactionId::parse("2da90c7d74bd46a0caf3777415b3ebd3").unwrap(),
            customer_id: CustomerId::parse("4929878788898271234").unwrap(),
            vendor_id: VendorId::parse("fraud_Kirlin and Sons").unwrap(),
            amount: Money::from_minor(amount_minor),
            currency: Currency::EUR,
            event_time: EventTime::from_millis(event_millis).unwrap(),
            ingest_time: EventTime::from_millis(event_millis + 5).unwrap(),
        }
    }

    #[test]
    fn version_1_is_json_with_minor_units_and_epoch_millis() {
        let encoded = encode(&event(9990, 1_559_200_850_100));
        let json: serde_json::Value = serde_json::from_slice(&encoded).unwrap();
        assert_eq!(json["amount"], 9990);
        assert_eq!(json["eventTime"], 1_559_200_850_100_i64);
        assert_eq!(json["customerId"], "4929878788898271234");
        assert_eq!(json["currency"], "EUR");
    }

    #[test]
    fn records_without_a_known_version_are_refused() {
        let encoded = encode(&event(1, 0));
        assert!(matches!(
            decode(None, &encoded),
            Err(DecodeError::MissingVersion)
        ));
        assert!(matches!(
            decode(Some(b"2"), &encoded),
            Err(DecodeError::UnknownVersion(version)) if version == "2"
        ));
        assert!(matches!(
            decode(Some(b"1"), b"{\"amount\":1}"),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn the_fingerprint_ignores_ingest_time_but_not_content() {
        let first = event(9990, 1_000);
        let mut replay = first.clone();
        replay.ingest_time = EventTime::from_millis(99_999).unwrap();
        assert_eq!(first.content_fingerprint(), replay.content_fingerprint());
        let mut changed = first.clone();
        changed.amount = Money::from_minor(9991);
        assert_ne!(first.content_fingerprint(), changed.content_fingerprint());
        let mut other_vendor = first.clone();
        other_vendor.vendor_id = VendorId::parse("fraud_Kirlin and Son").unwrap();
        assert_ne!(
            first.content_fingerprint(),
            other_vendor.content_fingerprint()
        );
    }

    proptest! {
        #[test]
        fn decode_inverts_encode(amount in 1..i64::MAX, millis in 0..253_402_300_799_000_i64) {
            let original = event(amount, millis);
            let decoded = decode(Some(SCHEMA_VERSION.as_bytes()), &encode(&original)).unwrap();
            prop_assert_eq!(decoded, original);
        }
    }
}
