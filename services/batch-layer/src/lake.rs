//! What the batch layer reads from the lake: the files of complete chunks, grouped by
//! `event_date`, each day with a fingerprint; and a day's events, deduplicated.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::NaiveDate;
use fraud_lake::{EVENT_COLUMNS, EventColumns, Lake, ListedFile, PartitionState};
use sha2::{Digest, Sha256};

use crate::compute::{DAY_MS, Event};

/// One `event_date` directory's readable files.
#[derive(Debug, Clone)]
pub struct LakeDay {
    pub files: Vec<ListedFile>,
    /// Each file as `<path> <size>`, in the order of `files`.
    pub listing: Vec<String>,
    /// A digest of `listing`: it changes when a file is added, removed or rewritten.
    pub fingerprint: String,
}

impl LakeDay {
    /// The day of `files`.
    pub fn new(mut files: Vec<ListedFile>) -> LakeDay {
        files.sort();
        let listing: Vec<String> = files
            .iter()
            .map(|listed| format!("{} {}", listed.file.path(), listed.size))
            .collect();
        let mut hash = Sha256::new();
        for line in &listing {
            hash.update(line);
            hash.update("\n");
        }
        let fingerprint = hex::encode(hash.finalize());
        LakeDay {
            files,
            listing,
            fingerprint,
        }
    }

    /// The files not in `stored` (a listing the day was computed from before), when the
    /// day is `stored`'s files and these; `None` when a stored file is gone or was
    /// rewritten (its size changed).
    pub fn added_since(&self, stored: &[String]) -> Option<Vec<ListedFile>> {
        let now: HashSet<&str> = self.listing.iter().map(String::as_str).collect();
        if !stored.iter().all(|line| now.contains(line.as_str())) {
            return None;
        }
        let before: HashSet<&str> = stored.iter().map(String::as_str).collect();
        Some(
            self.files
                .iter()
                .zip(&self.listing)
                .filter(|(_, line)| !before.contains(line.as_str()))
                .map(|(file, _)| *file)
                .collect(),
        )
    }
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
            .map(|(date, files)| (date, LakeDay::new(files)))
            .collect();
        Ok(LakeView { days, next_offsets })
    }
}

/// Events read from a day's files.
#[derive(Debug, Default)]
pub struct FilesEvents {
    pub events: Vec<Event>,
    /// A transaction id found in records of two customers, if any (the record with the
    /// smallest partition and offset stands all the same).
    pub shared_id: Option<String>,
}

/// The events of `files` (one day's) deduplicated by transaction id (the record with the
/// smallest partition and offset stands, wherever its time falls and whoever its
/// customer is), of those `keep(customer, ts)` holds for, given to `then`. The files are
/// fetched here; decoding, deduplicating and `then`, CPU work, run as one piece of work
/// ahead ([`crate::background`]): on one thread, so that the events are freed by the
/// thread that allocated them (freeing another thread's allocations cost the allocator
/// more than the allocations). Owned arguments, so it can run on a task of its own.
pub async fn files_events<R: Send + 'static>(
    lake: Lake,
    files: Vec<ListedFile>,
    keep: impl Fn(&str, i64) -> bool + Send + 'static,
    then: impl FnOnce(FilesEvents) -> R + Send + 'static,
) -> anyhow::Result<R> {
    let mut fetched = Vec::with_capacity(files.len());
    for listed in &files {
        fetched.push(lake.fetch_columns(listed, &EVENT_COLUMNS).await?);
    }
    let read = crate::background::ahead(move || {
        let mut batches = Vec::new();
        for file in fetched {
            batches.extend(file.decode()?);
        }
        let read = read_batches(&batches, keep)?;
        drop(batches);
        Ok::<_, fraud_lake::Error>(then(read))
    });
    Ok(read.await??)
}

/// The customers of `listed`'s records, duplicates included.
pub async fn file_customers(
    lake: &Lake,
    listed: &ListedFile,
) -> Result<crate::scope::Customers, fraud_lake::Error> {
    let mut customers = crate::scope::Customers::default();
    for batch in lake.fetch_columns(listed, &EVENT_COLUMNS).await?.decode()? {
        let columns = EventColumns::of(&batch)?;
        for row in 0..columns.len() {
            let customer = columns.customer_id.value(row);
            if !customers.contains(customer) {
                customers.insert(customer.to_owned());
            }
        }
    }
    Ok(customers)
}

/// [`files_events`] of the files' decoded `batches`.
fn read_batches(
    batches: &[arrow::array::RecordBatch],
    keep: impl Fn(&str, i64) -> bool,
) -> Result<FilesEvents, fraud_lake::Error> {
    // Only the columns an event needs were decoded, and fields are read in place: a
    // string is copied only into an event that is kept.
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
    // Each id's customer, as the record that stands has it.
    let mut first: HashMap<&str, &str, foldhash::fast::RandomState> =
        HashMap::with_capacity_and_hasher(order.len(), Default::default());
    let mut out = FilesEvents {
        events: Vec::with_capacity(order.len()),
        shared_id: None,
    };
    for (_, _, index, row) in order {
        let (batch, row) = (&columns[index as usize], row as usize);
        let id = batch.transaction_id.value(row);
        let customer = batch.customer_id.value(row);
        match first.entry(id) {
            Entry::Occupied(kept) => {
                metrics::counter!("batch_duplicates_total").increment(1);
                if *kept.get() != customer && out.shared_id.is_none() {
                    out.shared_id = Some(id.to_owned());
                }
                continue;
            }
            Entry::Vacant(entry) => {
                entry.insert(customer);
            }
        }
        let ts = batch.event_time.value(row);
        if keep(customer, ts) {
            out.events.push(Event {
                customer: customer.to_owned(),
                vendor: batch.vendor_id.value(row).to_owned(),
                amount: batch.amount_minor.value(row),
                ts,
            });
        }
    }
    Ok(out)
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
