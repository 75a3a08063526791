//! What the batch layer reads from the lake: the files of complete chunks, grouped by
//! `event_date`, each day with a fingerprint; and a day's events, deduplicated.

use std::collections::{BTreeMap, HashSet};

use chrono::NaiveDate;
use fraud_lake::{EVENT_COLUMNS, EventColumns, Lake, ListedFile, PartitionState};
use sha2::{Digest, Sha256};

use crate::compute::{DAY_MS, Event};

/// One `event_date` directory's readable files.
#[derive(Debug, Clone)]
pub struct LakeDay {
    pub files: Vec<ListedFile>,
    /// A digest of the files' names and sizes: it changes when a file is added, removed
    /// or rewritten.
    pub fingerprint: String,
}

/// The lake's days, counting only files of complete chunks (a chunk its writer has not
/// finished may still lose or gain files), and each partition's next offset not in the
/// lake.
pub struct LakeView {
    pub days: BTreeMap<NaiveDate, LakeDay>,
    pub next_offsets: BTreeMap<i32, i64>,
}

impl LakeView {
    pub async fn read(lake: &Lake) -> Result<LakeView, fraud_lake::Error> {
        let listing = lake.list().await?;
        let states: BTreeMap<i32, PartitionState> = lake.partition_states().await?;
        let next_offsets = states
            .iter()
            .map(|(partition, state)| {
                (
                    *partition,
                    state.complete_through().map_or(0, |last| last + 1),
                )
            })
            .collect::<BTreeMap<_, _>>();
        let mut by_day: BTreeMap<NaiveDate, Vec<ListedFile>> = BTreeMap::new();
        for listed in listing {
            let chunk = listed.file.chunk();
            let complete = next_offsets
                .get(&chunk.partition())
                .is_some_and(|next| chunk.last_offset() < *next);
            if complete {
                by_day.entry(listed.file.date()).or_default().push(listed);
            }
        }
        let days = by_day
            .into_iter()
            .map(|(date, mut files)| {
                files.sort();
                let mut hash = Sha256::new();
                for listed in &files {
                    hash.update(format!("{} {}\n", listed.file.path(), listed.size));
                }
                let fingerprint = hex::encode(hash.finalize());
                (date, LakeDay { files, fingerprint })
            })
            .collect();
        Ok(LakeView { days, next_offsets })
    }
}

/// The events of `files` (one day's) with `after < ts <= up_to`, deduplicated by
/// transaction id: the record with the smallest partition and offset stands, wherever
/// its time falls. Owned arguments, so it can run on a task of its own.
pub async fn files_events(
    lake: Lake,
    files: Vec<ListedFile>,
    after: i64,
    up_to: i64,
) -> Result<Vec<Event>, fraud_lake::Error> {
    read_files(&lake, &files, |ts| after < ts && ts <= up_to).await
}

async fn read_files(
    lake: &Lake,
    files: &[ListedFile],
    keep: impl Fn(i64) -> bool,
) -> Result<Vec<Event>, fraud_lake::Error> {
    // Only the columns an event needs are decoded, and fields are read in place: a
    // string is copied only into an event that is kept.
    let mut batches = Vec::new();
    for listed in files {
        batches.extend(lake.read_columns(listed, &EVENT_COLUMNS).await?);
    }
    let columns = batches
        .iter()
        .map(EventColumns::of)
        .collect::<Result<Vec<_>, _>>()?;
    // Every row by (partition, offset), then (batch, row).
    let mut order: Vec<(i32, i64, u32, u32)> =
        Vec::with_capacity(columns.iter().map(EventColumns::len).sum());
    for (index, batch) in columns.iter().enumerate() {
        let index = u32::try_from(index).expect("fewer than 2^32 batches a day");
        for row in 0..batch.len() {
            order.push((
                batch.kafka_partition.value(row),
                batch.kafka_offset.value(row),
                index,
                u32::try_from(row).expect("fewer than 2^32 rows a batch"),
            ));
        }
    }
    order.sort_unstable();
    let mut first: HashSet<&str> = HashSet::with_capacity(order.len());
    let mut events = Vec::with_capacity(order.len());
    for (_, _, index, row) in order {
        let (batch, row) = (&columns[index as usize], row as usize);
        if !first.insert(batch.transaction_id.value(row)) {
            metrics::counter!("batch_duplicates_total").increment(1);
            continue;
        }
        let ts = batch.event_time.value(row);
        if keep(ts) {
            events.push(Event {
                customer: batch.customer_id.value(row).to_owned(),
                vendor: batch.vendor_id.value(row).to_owned(),
                amount: batch.amount_minor.value(row),
                ts,
            });
        }
    }
    Ok(events)
}

/// The start of `date`, UTC ms.
pub fn day_start(date: NaiveDate) -> i64 {
    date.and_hms_opt(0, 0, 0)
        .expect("midnight exists")
        .and_utc()
        .timestamp_millis()
}

/// The date holding `ts` (UTC ms).
pub fn date_of(ts: i64) -> NaiveDate {
    chrono::DateTime::from_timestamp_millis(ts - ts.rem_euclid(DAY_MS))
        .expect("a representable time")
        .date_naive()
}
