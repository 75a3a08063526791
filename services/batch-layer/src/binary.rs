//! PostgreSQL's binary `COPY` format, for the few column types the batch tables use.
//!
//! Binary rows cost Postgres far less than CSV: no text to parse per field, and a
//! timestamp is an `i64` instead of a string through the date parser. The layout
//! (PostgreSQL documentation, "COPY", "Binary Format"): a header, then per row a field
//! count (`i16`) and per field its length (`i32`) and bytes, big-endian; then `-1_i16`.
//! Timestamps are microseconds and dates days since 2000-01-01 (UTC).

/// 2000-01-01T00:00:00Z in Unix ms: Postgres' epoch.
const POSTGRES_EPOCH_MS: i64 = 946_684_800_000;
const DAY_MS: i64 = 24 * 60 * 60 * 1000;
const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// The rows of one `COPY … FROM STDIN (FORMAT binary)`, being written.
pub struct BinaryRows {
    buffer: Vec<u8>,
    rows: u64,
}

/// The header a binary `COPY` stream starts with: the signature, then the flags (no
/// OIDs) and the header extension's length, both 0 (`i32`).
fn header() -> [u8; SIGNATURE.len() + 8] {
    let mut header = [0; SIGNATURE.len() + 8];
    header[..SIGNATURE.len()].copy_from_slice(SIGNATURE);
    header
}

impl BinaryRows {
    pub fn new() -> Self {
        let mut buffer = Vec::with_capacity(1 << 20);
        buffer.extend_from_slice(&header());
        Self { buffer, rows: 0 }
    }

    /// Starts a row of `fields` fields; the caller then writes exactly that many.
    pub fn row(&mut self, fields: i16) -> &mut Self {
        self.buffer.extend_from_slice(&fields.to_be_bytes());
        self.rows += 1;
        self
    }

    pub fn text(&mut self, text: &str) -> &mut Self {
        let length = i32::try_from(text.len()).expect("a field shorter than 2 GiB");
        self.buffer.extend_from_slice(&length.to_be_bytes());
        self.buffer.extend_from_slice(text.as_bytes());
        self
    }

    pub fn int8(&mut self, value: i64) -> &mut Self {
        self.buffer.extend_from_slice(&8_i32.to_be_bytes());
        self.buffer.extend_from_slice(&value.to_be_bytes());
        self
    }

    pub fn int4(&mut self, value: i32) -> &mut Self {
        self.buffer.extend_from_slice(&4_i32.to_be_bytes());
        self.buffer.extend_from_slice(&value.to_be_bytes());
        self
    }

    /// A `timestamptz` from UTC ms.
    pub fn timestamp(&mut self, millis: i64) -> &mut Self {
        self.int8((millis - POSTGRES_EPOCH_MS) * 1000)
    }

    /// A `date` from its start in UTC ms.
    pub fn date(&mut self, day_start_millis: i64) -> &mut Self {
        debug_assert_eq!(day_start_millis.rem_euclid(DAY_MS), 0);
        let days = (day_start_millis - POSTGRES_EPOCH_MS).div_euclid(DAY_MS);
        self.int4(i32::try_from(days).expect("a date Postgres can hold"))
    }

    /// A `numeric` of scale 4 (4 decimals, as `round(x, 4)` leaves) from its value
    /// times 10⁴. Postgres' binary numeric: the count of base-10⁴ digits, the weight of
    /// the first (a power of 10⁴), the sign, the display scale, then the digits; the
    /// fraction here is exactly the last digit.
    pub fn numeric4(&mut self, scaled: i128) -> &mut Self {
        let magnitude = scaled.unsigned_abs();
        let mut digits: Vec<i16> = Vec::with_capacity(12);
        let mut whole = magnitude / 10_000;
        while whole > 0 {
            digits.push((whole % 10_000) as i16);
            whole /= 10_000;
        }
        let weight = digits.len() as i16 - 1;
        digits.reverse();
        digits.push((magnitude % 10_000) as i16);
        let sign: u16 = if scaled < 0 { 0x4000 } else { 0 };
        let length = 8 + 2 * digits.len() as i32;
        self.buffer.extend_from_slice(&length.to_be_bytes());
        self.buffer
            .extend_from_slice(&(digits.len() as i16).to_be_bytes());
        self.buffer.extend_from_slice(&weight.to_be_bytes());
        self.buffer.extend_from_slice(&sign.to_be_bytes());
        self.buffer.extend_from_slice(&4_i16.to_be_bytes());
        for digit in digits {
            self.buffer.extend_from_slice(&digit.to_be_bytes());
        }
        self
    }

    /// A `bytea`.
    pub fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        let length = i32::try_from(bytes.len()).expect("a field shorter than 2 GiB");
        self.buffer.extend_from_slice(&length.to_be_bytes());
        self.buffer.extend_from_slice(bytes);
        self
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// The whole `COPY` data, with its trailer; empty when there is no row.
    pub fn finish(mut self) -> Vec<u8> {
        if self.rows == 0 {
            return Vec::new();
        }
        self.buffer.extend_from_slice(&(-1_i16).to_be_bytes());
        self.buffer
    }
}

/// Reads the rows of a `COPY … TO STDOUT (FORMAT binary)`.
pub struct BinaryReader<'a> {
    data: &'a [u8],
}

/// The data is not a binary `COPY` stream of the expected shape.
#[derive(Debug, thiserror::Error)]
#[error("unexpected binary COPY data: {0}")]
pub struct Malformed(&'static str);

impl<'a> BinaryReader<'a> {
    pub fn new(data: &'a [u8]) -> Result<Self, Malformed> {
        let rest = data
            .strip_prefix(SIGNATURE.as_slice())
            .ok_or(Malformed("no signature"))?;
        let mut reader = Self { data: rest };
        let _flags = reader.take::<4>()?;
        let extension = i32::from_be_bytes(reader.take::<4>()?);
        let extension = usize::try_from(extension).map_err(|_| Malformed("header extension"))?;
        reader.skip(extension)?;
        Ok(reader)
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], Malformed> {
        let (head, rest) = self
            .data
            .split_first_chunk::<N>()
            .ok_or(Malformed("truncated"))?;
        self.data = rest;
        Ok(*head)
    }

    fn skip(&mut self, bytes: usize) -> Result<&'a [u8], Malformed> {
        if self.data.len() < bytes {
            return Err(Malformed("truncated"));
        }
        let (head, rest) = self.data.split_at(bytes);
        self.data = rest;
        Ok(head)
    }

    /// Starts the next row: its field count, or `None` at the trailer.
    pub fn row(&mut self) -> Result<Option<i16>, Malformed> {
        let fields = i16::from_be_bytes(self.take::<2>()?);
        Ok((fields >= 0).then_some(fields))
    }

    fn field(&mut self, expected: Option<usize>) -> Result<&'a [u8], Malformed> {
        let length = i32::from_be_bytes(self.take::<4>()?);
        let length = usize::try_from(length).map_err(|_| Malformed("a NULL field"))?;
        if expected.is_some_and(|expected| expected != length) {
            return Err(Malformed("a field of the wrong size"));
        }
        self.skip(length)
    }

    pub fn bytes(&mut self) -> Result<&'a [u8], Malformed> {
        self.field(None)
    }

    pub fn text(&mut self) -> Result<&'a str, Malformed> {
        std::str::from_utf8(self.field(None)?).map_err(|_| Malformed("text not UTF-8"))
    }

    pub fn int8(&mut self) -> Result<i64, Malformed> {
        let bytes = self.field(Some(8))?;
        Ok(i64::from_be_bytes(bytes.try_into().expect("8 bytes")))
    }

    pub fn int4(&mut self) -> Result<i32, Malformed> {
        let bytes = self.field(Some(4))?;
        Ok(i32::from_be_bytes(bytes.try_into().expect("4 bytes")))
    }

    /// A `timestamptz` as UTC ms (the batch tables hold whole milliseconds).
    pub fn timestamp(&mut self) -> Result<i64, Malformed> {
        Ok(self.int8()?.div_euclid(1000) + POSTGRES_EPOCH_MS)
    }

    /// A `date` as its start in UTC ms.
    pub fn date(&mut self) -> Result<i64, Malformed> {
        Ok(i64::from(self.int4()?) * DAY_MS + POSTGRES_EPOCH_MS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The field of `scaled` as [`BinaryRows::numeric4`] writes it: (ndigits, weight,
    /// sign, dscale, digits).
    fn numeric_field(scaled: i128) -> (i16, i16, u16, i16, Vec<i16>) {
        let mut rows = BinaryRows::new();
        rows.row(1).numeric4(scaled);
        let data = rows.finish();
        let field = &data[header().len() + 2..data.len() - 2];
        let word = |at: usize| i16::from_be_bytes([field[4 + at], field[5 + at]]);
        let length = i32::from_be_bytes(field[..4].try_into().unwrap());
        assert_eq!(length as usize, field.len() - 4);
        let count = word(0);
        let digits = (0..count as usize).map(|i| word(8 + 2 * i)).collect();
        (count, word(2), word(4) as u16, word(6), digits)
    }

    #[test]
    fn numerics_are_base_10000_digits_with_the_fraction_last() {
        // 12345.6789
        assert_eq!(
            numeric_field(123_456_789),
            (3, 1, 0, 4, vec![1, 2345, 6789])
        );
        // 0.0000: one zero digit, which Postgres strips.
        assert_eq!(numeric_field(0), (1, -1, 0, 4, vec![0]));
        // -0.5000
        assert_eq!(numeric_field(-5_000), (1, -1, 0x4000, 4, vec![5000]));
        // 10000.0000: trailing zero digits are allowed too.
        assert_eq!(numeric_field(100_000_000), (3, 1, 0, 4, vec![1, 0, 0]));
        // 30000000.0333
        assert_eq!(
            numeric_field(300_000_000_333),
            (3, 1, 0, 4, vec![3000, 0, 333])
        );
    }

    #[test]
    fn rows_read_back_as_written() {
        let mut rows = BinaryRows::new();
        let day = 1_767_225_600_000; // 2026-01-01
        rows.row(5)
            .text("c,\"1\"")
            .timestamp(day + 3_723_004)
            .date(day)
            .int8(-42)
            .int4(7);
        rows.row(5)
            .text("")
            .timestamp(POSTGRES_EPOCH_MS - 1)
            .date(POSTGRES_EPOCH_MS - DAY_MS)
            .int8(i64::MAX)
            .int4(i32::MIN);
        assert_eq!(rows.rows(), 2);
        let data = rows.finish();
        let mut reader = BinaryReader::new(&data).unwrap();
        assert_eq!(reader.row().unwrap(), Some(5));
        assert_eq!(reader.text().unwrap(), "c,\"1\"");
        assert_eq!(reader.timestamp().unwrap(), day + 3_723_004);
        assert_eq!(reader.date().unwrap(), day);
        assert_eq!(reader.int8().unwrap(), -42);
        assert_eq!(reader.int4().unwrap(), 7);
        assert_eq!(reader.row().unwrap(), Some(5));
        assert_eq!(reader.text().unwrap(), "");
        assert_eq!(reader.timestamp().unwrap(), POSTGRES_EPOCH_MS - 1);
        assert_eq!(reader.date().unwrap(), POSTGRES_EPOCH_MS - DAY_MS);
        assert_eq!(reader.int8().unwrap(), i64::MAX);
        assert_eq!(reader.int4().unwrap(), i32::MIN);
        assert_eq!(reader.row().unwrap(), None);
    }

    #[test]
    fn no_rows_send_nothing() {
        assert!(BinaryRows::new().finish().is_empty());
    }
}
