//! Domain types of the fraud-detection platform: the contract for money, ids and time.
//!
//! Every service parses client input into these types at the edge and passes only the
//! types inward, so a value that exists is a valid one. Each type has a
//! `parse(&str) -> Result` with no way around it, and each module has one error enum
//! whose messages say exactly what was wrong; they complete a sentence that starts with
//! the field's name ("transactionSum has 3 fraction digits; at most 2 are allowed"), so
//! the API can put them straight into its 422 responses.
//!
//! - [`money`]: [`Money`], an `i64` count of minor units (cents) parsed digit by digit
//!   (never through a float) with checked arithmetic, and the [`Currency`] code.
//! - [`id`]: the opaque [`CustomerId`], [`VendorId`] and [`TransactionId`], all one
//!   generic [`Id`] with normalisation (trim, Unicode NFC) and a 64-character limit.
//! - [`time`]: [`EventTime`], UTC milliseconds since the Unix epoch, read from RFC 3339
//!   with a required offset and written back in UTC.
//!
//! Ingest reads JSON fields as raw text (`serde_json::value::RawValue`) and hands it to
//! each type's `parse_json_literal`, so numbers keep every digit: amounts are never
//! rounded and card-number ids above 2^53 survive. Serde on the types themselves uses
//! their canonical strings ("99.90", "12345", "2019-05-30T07:20:50.100Z") and validates
//! through `parse` when deserializing.

pub mod id;
mod json;
pub mod money;
pub mod time;

pub use id::{CustomerId, Id, IdError, IdKind, TransactionId, VendorId};
pub use money::{Currency, CurrencyError, Money, MoneyError};
pub use time::{EventTime, TimeError};
