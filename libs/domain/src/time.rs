//! Event time: UTC milliseconds since the Unix epoch.
//!
//! [`EventTime`] is what the platform's windows are computed on. Clients send it as
//! RFC 3339 text with a required UTC offset; it is stored and compared as an `i64`
//! count of milliseconds, and written back as RFC 3339 in UTC with exactly three
//! fraction digits ("2019-05-30T07:20:50.100Z").
//!
//! The supported range is the one RFC 3339 can write: from 0000-01-01T00:00:00.000Z
//! to 9999-12-31T23:59:59.999Z. Every constructor enforces it, so formatting and
//! calendar conversions never fail.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::json::{self, JsonLiteral};

const MILLIS_PER_SECOND: i64 = 1_000;
const MILLIS_PER_MINUTE: i64 = 60 * MILLIS_PER_SECOND;
const MILLIS_PER_HOUR: i64 = 60 * MILLIS_PER_MINUTE;
const MILLIS_PER_DAY: i64 = 24 * MILLIS_PER_HOUR;

/// An example for error messages.
const EXAMPLE: &str = "2019-05-30T09:20:50.100+02:00";

/// Why a text, JSON value or number is not an event time.
///
/// Each message completes a sentence that starts with the field's name
/// ("ts has no UTC offset; ..."). Positions count characters from 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    /// The text does not follow the RFC 3339 layout.
    #[error(
        "is not an RFC 3339 timestamp such as \"{EXAMPLE}\": expected {expected} \
         at position {position}"
    )]
    Malformed {
        /// What the parser expected to find.
        expected: &'static str,
        /// Where, counting from 1 (one past the end if the text stopped short).
        position: usize,
    },
    /// The timestamp ends without `Z` or a `±hh:mm` offset.
    #[error(
        "has no UTC offset; end it with 'Z' or an offset such as '+02:00', \
         as in \"{EXAMPLE}\""
    )]
    NoOffset,
    /// Something follows the UTC offset.
    #[error("has unexpected text after the UTC offset at position {position}")]
    TrailingCharacters {
        /// Where the extra text starts, counting from 1.
        position: usize,
    },
    /// A date, time or offset field has a value outside its range.
    #[error("has {field} {value}; it must be between {min} and {max}")]
    FieldOutOfRange {
        /// Which field ("month", "day", "hour", "offset hours", ...).
        field: &'static str,
        /// The value found.
        value: u32,
        /// The smallest allowed value.
        min: u32,
        /// The largest allowed value (for a day, that of the given month).
        max: u32,
    },
    /// The seconds field is 60.
    #[error("has second 60 (a leap second), which is not supported")]
    LeapSecond,
    /// The instant lies outside the years 0000 to 9999 (in UTC).
    #[error(
        "is out of range; an event time must lie between 0000-01-01T00:00:00.000Z \
         and 9999-12-31T23:59:59.999Z"
    )]
    OutOfRange,
    /// A JSON value that is not a string.
    #[error("must be an RFC 3339 timestamp string such as \"{EXAMPLE}\", not {found}")]
    NotString {
        /// What was found instead ("a number", "null", ...).
        found: &'static str,
    },
    /// A JSON string literal that does not decode.
    #[error("is not a valid JSON string: {reason}")]
    InvalidJsonString {
        /// serde_json's description of the problem.
        reason: String,
    },
}

/// An instant in event time: UTC milliseconds since 1970-01-01T00:00:00Z.
///
/// Displays and serializes as RFC 3339 in UTC with three fraction digits; parses from
/// RFC 3339 with any offset.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventTime {
    /// Always within `MIN.millis..=MAX.millis`.
    millis: i64,
}

impl EventTime {
    /// 0000-01-01T00:00:00.000Z, the earliest supported instant.
    pub const MIN: EventTime = EventTime {
        millis: -62_167_219_200_000,
    };
    /// 9999-12-31T23:59:59.999Z, the latest supported instant.
    pub const MAX: EventTime = EventTime {
        millis: 253_402_300_799_999,
    };
    /// 1970-01-01T00:00:00.000Z.
    pub const UNIX_EPOCH: EventTime = EventTime { millis: 0 };

    /// The instant `millis` milliseconds after the Unix epoch (before it if negative).
    pub const fn from_millis(millis: i64) -> Result<EventTime, TimeError> {
        if millis < EventTime::MIN.millis || millis > EventTime::MAX.millis {
            return Err(TimeError::OutOfRange);
        }
        Ok(EventTime { millis })
    }

    /// Milliseconds since the Unix epoch.
    pub const fn as_millis(self) -> i64 {
        self.millis
    }

    /// The current wall-clock time, floored to the millisecond (and kept in range).
    pub fn now() -> EventTime {
        let millis = Utc::now().timestamp_millis();
        EventTime {
            millis: millis.clamp(EventTime::MIN.millis, EventTime::MAX.millis),
        }
    }

    /// Parses RFC 3339 text with a required UTC offset, e.g.
    /// "2019-05-30T09:20:50.100+02:00" (1559200850100 ms).
    ///
    /// The layout is `YYYY-MM-DDThh:mm:ss[.fraction](Z|±hh:mm)`; `T` and `Z` may be
    /// lowercase. The fraction may have any number of digits: those beyond the
    /// millisecond are dropped, which floors the instant to its millisecond (also before
    /// 1970). A missing offset is [`TimeError::NoOffset`]; a leap second (`:60`) is
    /// [`TimeError::LeapSecond`]; "-00:00" is taken as UTC.
    pub fn parse_rfc3339(input: &str) -> Result<EventTime, TimeError> {
        let fields = Fields::scan(input)?;
        fields.check_ranges()?;
        EventTime::from_millis(fields.utc_millis())
    }

    /// Parses the raw text of one JSON value (as `RawValue::get()` gives it), which
    /// must be a string literal holding an RFC 3339 timestamp.
    pub fn parse_json_literal(raw: &str) -> Result<EventTime, TimeError> {
        match json::classify(raw) {
            JsonLiteral::String(literal) => {
                let decoded = json::decode_string(literal)
                    .map_err(|reason| TimeError::InvalidJsonString { reason })?;
                EventTime::parse_rfc3339(&decoded)
            }
            JsonLiteral::Number(_) => Err(TimeError::NotString { found: "a number" }),
            JsonLiteral::Other(found) => Err(TimeError::NotString { found }),
        }
    }

    /// RFC 3339 in UTC, always with three fraction digits: "2019-05-30T07:20:50.100Z".
    pub fn to_rfc3339(self) -> String {
        self.to_datetime()
            .to_rfc3339_opts(SecondsFormat::Millis, true)
    }

    /// The calendar date in UTC.
    pub fn utc_date(self) -> NaiveDate {
        self.to_datetime().date_naive()
    }

    /// The start of this instant's UTC hour.
    pub const fn hour_floor(self) -> EventTime {
        // MIN is hour-aligned, so the floor never leaves the range.
        EventTime {
            millis: self.millis - self.millis.rem_euclid(MILLIS_PER_HOUR),
        }
    }

    /// `self + delta` milliseconds (`delta` may be negative), or `None` if that
    /// leaves the supported range.
    pub fn checked_add_millis(self, delta: i64) -> Option<EventTime> {
        let millis = self.millis.checked_add(delta)?;
        EventTime::from_millis(millis).ok()
    }

    /// Milliseconds from `earlier` to `self` (negative if `earlier` is later).
    /// Cannot overflow: the whole range spans about 3.2 * 10^14 ms.
    pub const fn millis_since(self, earlier: EventTime) -> i64 {
        self.millis - earlier.millis
    }

    fn to_datetime(self) -> DateTime<Utc> {
        // Always Some: chrono covers far more than years 0000 to 9999.
        let converted = DateTime::from_timestamp_millis(self.millis);
        debug_assert!(converted.is_some());
        converted.unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
    }
}

/// The fields of an RFC 3339 timestamp, as written (not yet range-checked).
struct Fields {
    year: u32,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    /// The first three fraction digits, as milliseconds.
    millisecond: u32,
    /// East of UTC is positive.
    offset_negative: bool,
    offset_hours: u32,
    offset_minutes: u32,
}

impl Fields {
    fn scan(input: &str) -> Result<Fields, TimeError> {
        let mut cursor = Cursor { input, index: 0 };
        let year = cursor.digits(4, "a 4-digit year")?;
        cursor.byte(b'-', "'-' after the year")?;
        let month = cursor.digits(2, "a 2-digit month")?;
        cursor.byte(b'-', "'-' after the month")?;
        let day = cursor.digits(2, "a 2-digit day")?;
        if !(cursor.eat(b'T') || cursor.eat(b't')) {
            return Err(cursor.malformed("'T' between the date and the time"));
        }
        let hour = cursor.digits(2, "a 2-digit hour")?;
        cursor.byte(b':', "':' after the hour")?;
        let minute = cursor.digits(2, "a 2-digit minute")?;
        cursor.byte(b':', "':' after the minute")?;
        let second = cursor.digits(2, "2-digit seconds")?;
        let mut millisecond = 0;
        if cursor.eat(b'.') {
            let mut count = 0;
            while let Some(digit) = cursor.peek_digit() {
                if count < 3 {
                    millisecond = millisecond * 10 + digit;
                }
                count += 1;
                cursor.index += 1;
            }
            if count == 0 {
                return Err(cursor.malformed("a digit after the decimal point"));
            }
            for _ in count..3 {
                millisecond *= 10;
            }
        }
        let (offset_negative, offset_hours, offset_minutes) = match cursor.peek() {
            None => return Err(TimeError::NoOffset),
            Some(b'Z' | b'z') => {
                cursor.index += 1;
                (false, 0, 0)
            }
            Some(sign @ (b'+' | b'-')) => {
                cursor.index += 1;
                let offset_hours = cursor.digits(2, "2-digit offset hours")?;
                cursor.byte(b':', "':' in the UTC offset")?;
                let offset_minutes = cursor.digits(2, "2-digit offset minutes")?;
                (sign == b'-', offset_hours, offset_minutes)
            }
            Some(_) => {
                return Err(cursor.malformed("'Z' or a UTC offset such as '+02:00'"));
            }
        };
        if cursor.peek().is_some() {
            return Err(TimeError::TrailingCharacters {
                position: cursor.position(),
            });
        }
        Ok(Fields {
            year,
            month,
            day,
            hour,
            minute,
            second,
            millisecond,
            offset_negative,
            offset_hours,
            offset_minutes,
        })
    }

    fn check_ranges(&self) -> Result<(), TimeError> {
        let check = |field, value, min, max| {
            if (min..=max).contains(&value) {
                Ok(())
            } else {
                Err(TimeError::FieldOutOfRange {
                    field,
                    value,
                    min,
                    max,
                })
            }
        };
        check("month", self.month, 1, 12)?;
        check("day", self.day, 1, days_in_month(self.year, self.month))?;
        check("hour", self.hour, 0, 23)?;
        check("minute", self.minute, 0, 59)?;
        if self.second == 60 {
            return Err(TimeError::LeapSecond);
        }
        check("second", self.second, 0, 59)?;
        check("offset hours", self.offset_hours, 0, 23)?;
        check("offset minutes", self.offset_minutes, 0, 59)
    }

    /// The instant in UTC milliseconds: local time minus the offset.
    fn utc_millis(&self) -> i64 {
        let days = days_from_civil(i64::from(self.year), self.month, self.day);
        let local = days * MILLIS_PER_DAY
            + i64::from(self.hour) * MILLIS_PER_HOUR
            + i64::from(self.minute) * MILLIS_PER_MINUTE
            + i64::from(self.second) * MILLIS_PER_SECOND
            + i64::from(self.millisecond);
        let offset_magnitude = i64::from(self.offset_hours) * MILLIS_PER_HOUR
            + i64::from(self.offset_minutes) * MILLIS_PER_MINUTE;
        if self.offset_negative {
            local + offset_magnitude
        } else {
            local - offset_magnitude
        }
    }
}

/// Reads ASCII fields from the text, reporting character positions.
struct Cursor<'a> {
    input: &'a str,
    /// A byte index; only ever advanced over ASCII, so always on a char boundary.
    index: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.input.as_bytes().get(self.index).copied()
    }

    fn peek_digit(&self) -> Option<u32> {
        self.peek()
            .filter(u8::is_ascii_digit)
            .map(|digit| u32::from(digit - b'0'))
    }

    fn eat(&mut self, expected: u8) -> bool {
        let found = self.peek() == Some(expected);
        if found {
            self.index += 1;
        }
        found
    }

    fn byte(&mut self, expected: u8, description: &'static str) -> Result<(), TimeError> {
        if self.eat(expected) {
            Ok(())
        } else {
            Err(self.malformed(description))
        }
    }

    fn digits(&mut self, count: usize, description: &'static str) -> Result<u32, TimeError> {
        let start = self.index;
        let mut value = 0;
        for _ in 0..count {
            let Some(digit) = self.peek_digit() else {
                self.index = start;
                return Err(self.malformed(description));
            };
            value = value * 10 + digit;
            self.index += 1;
        }
        Ok(value)
    }

    /// The current position in characters, counting from 1.
    fn position(&self) -> usize {
        let consumed = self.input.get(..self.index).unwrap_or(self.input);
        consumed.chars().count() + 1
    }

    fn malformed(&self, expected: &'static str) -> TimeError {
        TimeError::Malformed {
            expected,
            position: self.position(),
        }
    }
}

fn is_leap_year(year: u32) -> bool {
    (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400)
}

/// Days in a month of the proleptic Gregorian calendar (0 for a month outside 1–12).
fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap_year(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Days from 1970-01-01 to the given date of the proleptic Gregorian calendar
/// (Howard Hinnant's `days_from_civil`; exact for every year of i64 range we use).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    // Count years from March, so the leap day is the last day of the year.
    let march_year = if month <= 2 { year - 1 } else { year };
    let era = march_year.div_euclid(400);
    let year_of_era = march_year - era * 400;
    let month_from_march = i64::from(if month > 2 { month - 3 } else { month + 9 });
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

impl fmt::Debug for EventTime {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "EventTime({})", self.to_rfc3339())
    }
}

impl fmt::Display for EventTime {
    /// The same text as [`EventTime::to_rfc3339`].
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.to_rfc3339())
    }
}

impl FromStr for EventTime {
    type Err = TimeError;

    fn from_str(input: &str) -> Result<EventTime, TimeError> {
        EventTime::parse_rfc3339(input)
    }
}

impl Serialize for EventTime {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for EventTime {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<EventTime, D::Error> {
        struct EventTimeVisitor;

        impl Visitor<'_> for EventTimeVisitor {
            type Value = EventTime;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(formatter, "an RFC 3339 timestamp such as \"{EXAMPLE}\"")
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<EventTime, E> {
                EventTime::parse_rfc3339(value)
                    .map_err(|error| E::custom(format_args!("timestamp {value:?} {error}")))
            }
        }

        deserializer.deserialize_str(EventTimeVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn millis(input: &str) -> Result<i64, TimeError> {
        EventTime::parse_rfc3339(input).map(EventTime::as_millis)
    }

    fn malformed(expected: &'static str, position: usize) -> Result<i64, TimeError> {
        Err(TimeError::Malformed { expected, position })
    }

    fn out_of_range(field: &'static str, value: u32, min: u32, max: u32) -> Result<i64, TimeError> {
        Err(TimeError::FieldOutOfRange {
            field,
            value,
            min,
            max,
        })
    }

    #[test]
    fn parses_offsets_to_utc_millis() {
        assert_eq!(
            millis("2019-05-30T09:20:50.100+02:00"),
            Ok(1_559_200_850_100)
        );
        assert_eq!(millis("2019-05-30T07:20:50.100Z"), Ok(1_559_200_850_100));
        assert_eq!(millis("2019-05-30t07:20:50.100z"), Ok(1_559_200_850_100));
        assert_eq!(
            millis("2019-05-30T02:50:50.100-04:30"),
            Ok(1_559_200_850_100)
        );
        assert_eq!(
            millis("2019-05-30T07:20:50.100-00:00"),
            Ok(1_559_200_850_100)
        );
        assert_eq!(millis("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(millis("1970-01-01T01:00:00+01:00"), Ok(0));
        assert_eq!(millis("1969-12-31T23:59:59.999Z"), Ok(-1));
        assert_eq!(millis("2020-02-29T00:00:00Z"), Ok(1_582_934_400_000));
        assert_eq!(millis("2000-02-29T12:00:00Z"), Ok(951_825_600_000));
        assert_eq!(
            millis("0000-01-01T00:00:00Z"),
            Ok(EventTime::MIN.as_millis())
        );
        assert_eq!(
            millis("9999-12-31T23:59:59.999Z"),
            Ok(EventTime::MAX.as_millis())
        );
    }

    #[test]
    fn floors_fraction_digits_beyond_the_millisecond() {
        assert_eq!(millis("2019-05-30T07:20:50Z"), Ok(1_559_200_850_000));
        assert_eq!(millis("2019-05-30T07:20:50.1Z"), Ok(1_559_200_850_100));
        assert_eq!(millis("2019-05-30T07:20:50.12Z"), Ok(1_559_200_850_120));
        assert_eq!(millis("2019-05-30T07:20:50.1239Z"), Ok(1_559_200_850_123));
        assert_eq!(
            millis("2019-05-30T07:20:50.999999999999Z"),
            Ok(1_559_200_850_999)
        );
        // Before 1970 flooring still goes towards the past.
        assert_eq!(millis("1969-12-31T23:59:59.9999Z"), Ok(-1));
    }

    #[test]
    fn rejects_a_missing_offset() {
        assert_eq!(millis("2019-05-30T09:20:50.100"), Err(TimeError::NoOffset));
        assert_eq!(millis("2019-05-30T09:20:50"), Err(TimeError::NoOffset));
        let message = TimeError::NoOffset.to_string();
        assert!(message.starts_with("has no UTC offset"));
    }

    #[test]
    fn rejects_malformed_text_with_its_position() {
        assert_eq!(millis(""), malformed("a 4-digit year", 1));
        assert_eq!(millis("19-05-30T09:20:50Z"), malformed("a 4-digit year", 1));
        assert_eq!(
            millis("2019-5-30T09:20:50Z"),
            malformed("a 2-digit month", 6)
        );
        assert_eq!(
            millis("2019/05/30T09:20:50Z"),
            malformed("'-' after the year", 5)
        );
        assert_eq!(
            millis("2019-05-30 09:20:50Z"),
            malformed("'T' between the date and the time", 11)
        );
        assert_eq!(
            millis("2019-05-30"),
            malformed("'T' between the date and the time", 11)
        );
        assert_eq!(
            millis("2019-05-30T09:20Z"),
            malformed("':' after the minute", 17)
        );
        assert_eq!(
            millis("2019-05-30T09:20:50.Z"),
            malformed("a digit after the decimal point", 21)
        );
        assert_eq!(
            millis("2019-05-30T09:20:50+0200"),
            malformed("':' in the UTC offset", 23)
        );
        assert_eq!(
            millis("2019-05-30T09:20:50+02"),
            malformed("':' in the UTC offset", 23)
        );
        assert_eq!(
            millis("2019-05-30T09:20:50 Z"),
            malformed("'Z' or a UTC offset such as '+02:00'", 20)
        );
        assert_eq!(
            millis("2019-05-30T09:20:50ZZ"),
            Err(TimeError::TrailingCharacters { position: 21 })
        );
        assert_eq!(
            millis(" 2019-05-30T09:20:50Z"),
            malformed("a 4-digit year", 1)
        );
        // Positions count characters, not bytes.
        assert_eq!(
            millis("2019-05-30T09:20:50€"),
            malformed("'Z' or a UTC offset such as '+02:00'", 20)
        );
        assert_eq!(millis("1559200850100"), malformed("'-' after the year", 5));
        let message = millis("2019-05-30").unwrap_err().to_string();
        assert!(message.starts_with("is not an RFC 3339 timestamp"));
        assert!(message.contains("expected 'T' between the date and the time at position 11"));
    }

    #[test]
    fn rejects_fields_out_of_range() {
        assert_eq!(
            millis("2019-13-01T00:00:00Z"),
            out_of_range("month", 13, 1, 12)
        );
        assert_eq!(
            millis("2019-00-01T00:00:00Z"),
            out_of_range("month", 0, 1, 12)
        );
        assert_eq!(
            millis("2019-02-29T00:00:00Z"),
            out_of_range("day", 29, 1, 28)
        );
        assert_eq!(
            millis("1900-02-29T00:00:00Z"),
            out_of_range("day", 29, 1, 28)
        );
        assert_eq!(
            millis("2019-04-31T00:00:00Z"),
            out_of_range("day", 31, 1, 30)
        );
        assert_eq!(
            millis("2019-04-00T00:00:00Z"),
            out_of_range("day", 0, 1, 30)
        );
        assert_eq!(
            millis("2019-04-01T24:00:00Z"),
            out_of_range("hour", 24, 0, 23)
        );
        assert_eq!(
            millis("2019-04-01T23:60:00Z"),
            out_of_range("minute", 60, 0, 59)
        );
        assert_eq!(millis("2016-12-31T23:59:60Z"), Err(TimeError::LeapSecond));
        assert_eq!(
            millis("2019-04-01T23:59:61Z"),
            out_of_range("second", 61, 0, 59)
        );
        assert_eq!(
            millis("2019-04-01T00:00:00+24:00"),
            out_of_range("offset hours", 24, 0, 23)
        );
        assert_eq!(
            millis("2019-04-01T00:00:00-01:60"),
            out_of_range("offset minutes", 60, 0, 59)
        );
        assert_eq!(
            millis("2019-02-29T00:00:00Z").unwrap_err().to_string(),
            "has day 29; it must be between 1 and 28"
        );
        assert_eq!(
            millis("0000-01-01T00:00:00+00:01"),
            Err(TimeError::OutOfRange)
        );
        assert_eq!(
            millis("9999-12-31T23:59:59.999-00:01"),
            Err(TimeError::OutOfRange)
        );
    }

    #[test]
    fn formats_in_utc_with_three_fraction_digits() {
        let time = EventTime::from_millis(1_559_200_850_100).unwrap();
        assert_eq!(time.to_rfc3339(), "2019-05-30T07:20:50.100Z");
        assert_eq!(time.to_string(), "2019-05-30T07:20:50.100Z");
        assert_eq!(format!("{time:?}"), "EventTime(2019-05-30T07:20:50.100Z)");
        assert_eq!(
            EventTime::UNIX_EPOCH.to_rfc3339(),
            "1970-01-01T00:00:00.000Z"
        );
        assert_eq!(
            EventTime::from_millis(-1).unwrap().to_rfc3339(),
            "1969-12-31T23:59:59.999Z"
        );
        assert_eq!(EventTime::MIN.to_rfc3339(), "0000-01-01T00:00:00.000Z");
        assert_eq!(EventTime::MAX.to_rfc3339(), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn range_is_enforced_by_every_constructor() {
        let max = EventTime::MAX.as_millis();
        let min = EventTime::MIN.as_millis();
        assert_eq!(EventTime::from_millis(max + 1), Err(TimeError::OutOfRange));
        assert_eq!(EventTime::from_millis(min - 1), Err(TimeError::OutOfRange));
        assert_eq!(EventTime::from_millis(i64::MIN), Err(TimeError::OutOfRange));
        assert_eq!(EventTime::MAX.checked_add_millis(1), None);
        assert_eq!(EventTime::MIN.checked_add_millis(-1), None);
        assert_eq!(EventTime::MAX.checked_add_millis(i64::MAX), None);
        assert_eq!(EventTime::MIN.checked_add_millis(i64::MIN), None);
        assert_eq!(
            EventTime::UNIX_EPOCH.checked_add_millis(-5),
            EventTime::from_millis(-5).ok()
        );
        assert_eq!(EventTime::MIN.hour_floor(), EventTime::MIN);
        // The constants agree with chrono.
        let chrono_min = NaiveDate::from_ymd_opt(0, 1, 1)
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap();
        assert_eq!(chrono_min.and_utc().timestamp_millis(), min);
        let chrono_max = NaiveDate::from_ymd_opt(9999, 12, 31)
            .unwrap()
            .and_hms_milli_opt(23, 59, 59, 999)
            .unwrap();
        assert_eq!(chrono_max.and_utc().timestamp_millis(), max);
        let now = EventTime::now();
        assert!(now > EventTime::from_millis(1_700_000_000_000).unwrap());
        assert!(now.millis_since(EventTime::UNIX_EPOCH) == now.as_millis());
    }

    #[test]
    fn calendar_helpers() {
        let time = EventTime::parse_rfc3339("2019-05-30T01:20:50.100+02:00").unwrap();
        assert_eq!(
            time.utc_date(),
            NaiveDate::from_ymd_opt(2019, 5, 29).unwrap()
        );
        assert_eq!(time.hour_floor().to_rfc3339(), "2019-05-29T23:00:00.000Z");
        let before_epoch = EventTime::from_millis(-1).unwrap();
        assert_eq!(before_epoch.hour_floor().as_millis(), -3_600_000);
        assert_eq!(
            before_epoch.utc_date(),
            NaiveDate::from_ymd_opt(1969, 12, 31).unwrap()
        );
        let on_the_hour = EventTime::from_millis(3_600_000).unwrap();
        assert_eq!(on_the_hour.hour_floor(), on_the_hour);
    }

    #[test]
    fn json_literals_and_serde() {
        let expected = EventTime::from_millis(1_559_200_850_100).unwrap();
        assert_eq!(
            EventTime::parse_json_literal("\"2019-05-30T09:20:50.100+02:00\""),
            Ok(expected)
        );
        assert_eq!(
            EventTime::parse_json_literal("1559200850100"),
            Err(TimeError::NotString { found: "a number" })
        );
        assert_eq!(
            EventTime::parse_json_literal("null"),
            Err(TimeError::NotString { found: "null" })
        );
        assert_eq!(
            EventTime::parse_json_literal("\"2019-05-30T09:20:50\""),
            Err(TimeError::NoOffset)
        );
        assert!(matches!(
            EventTime::parse_json_literal("\"2019"),
            Err(TimeError::InvalidJsonString { .. })
        ));
        let message = EventTime::parse_json_literal("1").unwrap_err().to_string();
        assert!(message.starts_with("must be an RFC 3339 timestamp string"));

        assert_eq!(
            serde_json::to_string(&expected).unwrap(),
            "\"2019-05-30T07:20:50.100Z\""
        );
        assert_eq!(
            serde_json::from_str::<EventTime>("\"2019-05-30T09:20:50.100+02:00\"").unwrap(),
            expected
        );
        let error = serde_json::from_str::<EventTime>("\"2019-05-30T09:20:50\"").unwrap_err();
        assert!(error.to_string().contains("has no UTC offset"));
        assert_eq!(
            "2019-05-30T07:20:50.100Z".parse::<EventTime>(),
            Ok(expected)
        );
    }

    /// From 1970-01-01 to the end of 9999, in milliseconds.
    const YEARS_1970_TO_9999: std::ops::RangeInclusive<i64> = 0..=253_402_300_799_999;

    proptest! {
        #[test]
        fn rfc3339_output_parses_back(millis in YEARS_1970_TO_9999) {
            let time = EventTime::from_millis(millis).unwrap();
            let text = time.to_rfc3339();
            prop_assert_eq!(text.len(), 24);
            prop_assert_eq!(EventTime::parse_rfc3339(&text), Ok(time));
        }

        #[test]
        fn whole_range_round_trips(millis in EventTime::MIN.as_millis()..=EventTime::MAX.as_millis()) {
            let time = EventTime::from_millis(millis).unwrap();
            prop_assert_eq!(EventTime::parse_rfc3339(&time.to_rfc3339()), Ok(time));
            prop_assert_eq!(time.hour_floor().as_millis().rem_euclid(3_600_000), 0);
            prop_assert!(time.hour_floor() <= time);
            prop_assert!(time.millis_since(time.hour_floor()) < 3_600_000);
        }

        #[test]
        fn offset_timestamps_equal_local_time_minus_offset(
            year in 1970_i32..=9999,
            month in 1_u32..=12,
            day in 1_u32..=31,
            hour in 0_u32..=23,
            minute in 0_u32..=59,
            second in 0_u32..=59,
            fraction in "[0-9]{0,9}",
            offset_negative in any::<bool>(),
            offset_hours in 0_u32..=23,
            offset_minutes in 0_u32..=59,
        ) {
            let sign = if offset_negative { '-' } else { '+' };
            let dot = if fraction.is_empty() { "" } else { "." };
            let text = format!(
                "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}\
                 {dot}{fraction}{sign}{offset_hours:02}:{offset_minutes:02}"
            );
            let parsed = EventTime::parse_rfc3339(&text).map(EventTime::as_millis);
            match NaiveDate::from_ymd_opt(year, month, day) {
                None => prop_assert!(
                    matches!(parsed, Err(TimeError::FieldOutOfRange { field: "day", .. })),
                    "{} gave {:?}", text, parsed
                ),
                Some(date) => {
                    let millisecond: u32 = format!("{fraction:0<3}")[..3].parse().unwrap();
                    let local = date
                        .and_hms_milli_opt(hour, minute, second, millisecond)
                        .unwrap()
                        .and_utc()
                        .timestamp_millis();
                    let offset = i64::from(offset_hours * 60 + offset_minutes) * 60_000;
                    let utc = if offset_negative { local + offset } else { local - offset };
                    let expected = if utc <= EventTime::MAX.as_millis() {
                        Ok(utc)
                    } else {
                        Err(TimeError::OutOfRange)
                    };
                    prop_assert_eq!(parsed, expected, "{}", text);
                }
            }
        }

        #[test]
        fn parse_never_panics(input in "\\PC{0,40}|[0-9T:Z.+-]{0,40}") {
            let _ = EventTime::parse_rfc3339(&input);
            let _ = EventTime::parse_json_literal(&input);
        }
    }
}
