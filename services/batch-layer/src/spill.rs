//! A full run's rows written in key order, in bounded memory.
//!
//! PostgreSQL inserts into a B-tree far faster in key order, each row landing on the
//! rightmost leaf, than day by day, which walks the whole primary key once per day: with
//! `psql`, 8.1 million hourly rows went into `batch_hourly`'s indexes in 25 s in key order
//! and in 54 s day by day. A day's rows come out of [`crate::compute`] sorted by key
//! (customer, then hour or day), so a full run spills each day's rows, as binary `COPY`
//! data, to an unlinked temporary file ([`Spill::add`], about 90 bytes a row, in
//! `TMPDIR`) and at the end merges the days' files into one `COPY` stream in key order
//! ([`Spill::merge`]). Memory holds a buffer per day, not the rows; the files vanish with
//! the process, however it ends.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, Write};

use crate::binary::{BinaryRows, header};

/// Bytes of `COPY` data handed on at a time by [`Spill::merge`].
const CHUNK_BYTES: usize = 1 << 20;

/// Runs of binary `COPY` rows, each sorted by key, on temporary files.
#[derive(Default)]
pub struct Spill {
    runs: Vec<File>,
    rows: u64,
}

impl Spill {
    /// Adds a run: `rows`, sorted by their first two fields.
    pub fn add(&mut self, rows: BinaryRows) -> io::Result<()> {
        let count = rows.rows();
        if count == 0 {
            return Ok(());
        }
        let mut file = tempfile::tempfile()?;
        file.write_all(&rows.finish()[header().len()..])?;
        self.runs.push(file);
        self.rows += count;
        Ok(())
    }

    /// The rows added.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Merges the runs into one binary `COPY` stream in key order (the first field's
    /// bytes, then the second field as a signed big-endian integer: a timestamp or a
    /// date), handed to `sink` in chunks of about [`CHUNK_BYTES`]: the header with the
    /// first, the trailer with the last. Blocking: file reads.
    pub fn merge(self, mut sink: impl FnMut(Vec<u8>) -> anyhow::Result<()>) -> anyhow::Result<()> {
        let mut cursors = Vec::with_capacity(self.runs.len());
        for mut file in self.runs {
            file.rewind()?;
            cursors.push(BufReader::with_capacity(1 << 16, file));
        }
        // Per run, its next row; the heap holds (key, run) of every run not yet drained.
        let mut heads: Vec<Vec<u8>> = vec![Vec::new(); cursors.len()];
        let mut heap = BinaryHeap::with_capacity(cursors.len());
        for (run, cursor) in cursors.iter_mut().enumerate() {
            if read_row(cursor, &mut heads[run])? {
                heap.push(Reverse((key(&heads[run])?, run)));
            }
        }
        let mut chunk = Vec::with_capacity(CHUNK_BYTES + 1024);
        chunk.extend_from_slice(&header());
        while let Some(Reverse((_, run))) = heap.pop() {
            chunk.extend_from_slice(&heads[run]);
            if read_row(&mut cursors[run], &mut heads[run])? {
                heap.push(Reverse((key(&heads[run])?, run)));
            }
            if chunk.len() >= CHUNK_BYTES {
                sink(std::mem::replace(
                    &mut chunk,
                    Vec::with_capacity(CHUNK_BYTES + 1024),
                ))?;
            }
        }
        chunk.extend_from_slice(&(-1_i16).to_be_bytes());
        sink(chunk)
    }
}

/// Reads the next row of a run into `row` (its field count and fields, as they are);
/// false at the trailer.
fn read_row(reader: &mut impl Read, row: &mut Vec<u8>) -> io::Result<bool> {
    row.clear();
    let mut count = [0_u8; 2];
    reader.read_exact(&mut count)?;
    let fields = i16::from_be_bytes(count);
    if fields == -1 {
        return Ok(false);
    }
    row.extend_from_slice(&count);
    for _ in 0..fields {
        let mut length = [0_u8; 4];
        reader.read_exact(&mut length)?;
        row.extend_from_slice(&length);
        if let Ok(length) = usize::try_from(i32::from_be_bytes(length)) {
            let start = row.len();
            row.resize(start + length, 0);
            reader.read_exact(&mut row[start..])?;
        }
    }
    Ok(true)
}

/// A row's key: its first field's bytes and its second field as an integer.
fn key(row: &[u8]) -> io::Result<(Vec<u8>, i64)> {
    let malformed = || io::Error::new(io::ErrorKind::InvalidData, "a spilled row is malformed");
    let field = |at: usize| -> io::Result<(&[u8], usize)> {
        let length = row.get(at..at + 4).ok_or_else(malformed)?;
        let length = usize::try_from(i32::from_be_bytes(
            length.try_into().map_err(|_| malformed())?,
        ))
        .map_err(|_| malformed())?;
        let bytes = row.get(at + 4..at + 4 + length).ok_or_else(malformed)?;
        Ok((bytes, at + 4 + length))
    };
    let (first, next) = field(2)?;
    let (second, _) = field(next)?;
    let second = match second.len() {
        8 => i64::from_be_bytes(second.try_into().map_err(|_| malformed())?),
        4 => i64::from(i32::from_be_bytes(
            second.try_into().map_err(|_| malformed())?,
        )),
        _ => return Err(malformed()),
    };
    Ok((first.to_vec(), second))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::binary::BinaryReader;

    const DAY_MS: i64 = 24 * 60 * 60 * 1000;

    /// Spills `runs` (each sorted here) as rows (customer, time, value), the time as a
    /// timestamp or a date; returns what the merge streams, and the chunks it came in.
    fn spill_and_merge(runs: &[Vec<(String, i64, i64)>], as_date: bool) -> (Vec<u8>, usize) {
        let mut spill = Spill::default();
        for run in runs {
            let mut run = run.clone();
            run.sort_by(|a, b| (a.0.as_bytes(), a.1).cmp(&(b.0.as_bytes(), b.1)));
            let mut rows = BinaryRows::new();
            for (customer, time, value) in &run {
                rows.row(3).text(customer);
                if as_date {
                    rows.date(*time);
                } else {
                    rows.timestamp(*time);
                }
                rows.int8(*value);
            }
            spill.add(rows).unwrap();
        }
        let mut merged = Vec::new();
        let mut chunks = 0;
        spill
            .merge(|chunk| {
                merged.extend_from_slice(&chunk);
                chunks += 1;
                Ok(())
            })
            .unwrap();
        (merged, chunks)
    }

    fn read_back(data: &[u8], as_date: bool) -> Vec<(String, i64, i64)> {
        let mut reader = BinaryReader::new(data).unwrap();
        let mut rows = Vec::new();
        while let Some(fields) = reader.row().unwrap() {
            assert_eq!(fields, 3);
            let customer = reader.text().unwrap().to_owned();
            let time = if as_date {
                reader.date().unwrap()
            } else {
                reader.timestamp().unwrap()
            };
            rows.push((customer, time, reader.int8().unwrap()));
        }
        rows
    }

    fn row() -> impl Strategy<Value = (String, i64, i64)> {
        (
            // Prefixes of one another, and bytes above ASCII: byte order is what the
            // primary key's C.UTF-8 collation sorts by.
            prop::sample::select(vec!["", "a", "ab", "b", "é", "z9", "Z", "0042"]),
            // Before and after PostgreSQL's epoch (2000-01-01): negative and positive.
            -40_i64 * 365..40 * 365,
            any::<i64>(),
        )
            .prop_map(|(customer, day, value)| {
                (customer.to_owned(), 946_684_800_000 + day * DAY_MS, value)
            })
    }

    proptest! {
        #[test]
        fn runs_merge_into_key_order_with_every_row(
            runs in prop::collection::vec(prop::collection::vec(row(), 0..40), 0..8),
            as_date in any::<bool>(),
        ) {
            let (merged, _) = spill_and_merge(&runs, as_date);
            let rows = if runs.iter().all(Vec::is_empty) {
                prop_assert!(merged.is_empty() || read_back(&merged, as_date).is_empty());
                Vec::new()
            } else {
                read_back(&merged, as_date)
            };
            let mut expected: Vec<_> = runs.concat();
            expected.sort_by(|a, b| (a.0.as_bytes(), a.1, a.2).cmp(&(b.0.as_bytes(), b.1, b.2)));
            let mut sorted = rows.clone();
            sorted.sort_by(|a, b| (a.0.as_bytes(), a.1, a.2).cmp(&(b.0.as_bytes(), b.1, b.2)));
            prop_assert_eq!(&sorted, &expected, "every row, once");
            prop_assert!(
                rows.windows(2).all(|w| (w[0].0.as_bytes(), w[0].1) <= (w[1].0.as_bytes(), w[1].1)),
                "in key order"
            );
        }
    }

    #[test]
    fn a_large_merge_is_streamed_in_chunks() {
        let runs: Vec<Vec<(String, i64, i64)>> = (0..3)
            .map(|run| {
                (0..30_000)
                    .map(|i| (format!("customer-{i:08}"), run * DAY_MS, i))
                    .collect()
            })
            .collect();
        let (merged, chunks) = spill_and_merge(&runs, false);
        assert!(chunks >= 2, "{chunks} chunk(s) for {} bytes", merged.len());
        let rows = read_back(&merged, false);
        assert_eq!(rows.len(), 90_000);
        assert_eq!(rows[0], ("customer-00000000".to_owned(), 0, 0));
        assert_eq!(rows[1], ("customer-00000000".to_owned(), DAY_MS, 0));
        assert_eq!(
            rows[89_999],
            ("customer-00029999".to_owned(), 2 * DAY_MS, 29_999)
        );
    }
}
