//! What the batch layer reads from the lake: the files of complete chunks, grouped by
//! `event_date`, each day with a fingerprint; and a day's events, deduplicated.

use std::collections::{BTreeMap, HashSet};

use chrono::NaiveDate;
use fraud_lake::{Lake, ListedFile, PartitionState};
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

    /// The events of `date` with `ts <= watermark`, deduplicated by transaction id (the
    /// record with the smallest partition and offset stands).
    pub async fn day_events(
        &self,
        lake: &Lake,
        date: NaiveDate,
        watermark: i64,
    ) -> Result<Vec<Event>, fraud_lake::Error> {
        let Some(day) = self.days.get(&date) else {
            return Ok(Vec::new());
        };
        read_files(lake, &day.files, |ts| ts <= watermark).await
    }
}

/// The events of `files` (one day's) with `ts <= watermark`, deduplicated by transaction
/// id as [`LakeView::day_events`] does; owned arguments, so it can run on a task of its
/// own.
pub async fn files_events(
    lake: Lake,
    files: Vec<ListedFile>,
    watermark: i64,
) -> Result<Vec<Event>, fraud_lake::Error> {
    read_files(&lake, &files, |ts| ts <= watermark).await
}

async fn read_files(
    lake: &Lake,
    files: &[ListedFile],
    keep: impl Fn(i64) -> bool,
) -> Result<Vec<Event>, fraud_lake::Error> {
    let mut rows = Vec::new();
    for listed in files {
        rows.extend(lake.read_file(listed).await?);
    }
    rows.sort_by_key(|row| (row.kafka_partition, row.kafka_offset));
    let mut first: HashSet<String> = HashSet::with_capacity(rows.len());
    let mut events = Vec::with_capacity(rows.len());
    for row in rows {
        if !first.insert(row.transaction_id) {
            metrics::counter!("batch_duplicates_total").increment(1);
            continue;
        }
        if keep(row.event_time_millis) {
            events.push(Event {
                customer: row.customer_id,
                vendor: row.vendor_id,
                amount: row.amount_minor,
                ts: row.event_time_millis,
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
