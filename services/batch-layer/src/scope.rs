//! Which days a run recomputes, and how much of each.
//!
//! A day is recomputed whole when the run is `--full`, when the watermark moved over it
//! (events up to the new T_b join it), or when a file it was computed from is gone or
//! was rewritten. A day that only gained files since it was computed (late arrivals
//! land in new files of their event date) is recomputed only for the customers of its
//! new files: every other customer's events of the day are the ones already counted, so
//! its stored rows stand. The day after such a day is recomputed for the same customers
//! (its first 30-minute windows reach back into the day before), and the day after a
//! day recomputed whole, whole.
//!
//! Deduplication is by transaction id over the whole day, whatever the scope; a record
//! whose id another customer's record of the day also has could take an event away from
//! a customer outside the scope, so a day recomputed in part that holds one fails with
//! [`SharedId`] and the run recomputes its days whole instead.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use chrono::NaiveDate;
use fraud_lake::ListedFile;

use crate::lake::LakeView;
use crate::store::Previous;

/// A set of customers (foldhash: every record of a day recomputed in part is looked up).
pub type Customers = HashSet<String, foldhash::fast::RandomState>;

/// The customers of a day a run recomputes.
#[derive(Debug, Clone)]
pub enum Scope {
    /// Every customer.
    Whole,
    /// Only these.
    Customers(Arc<Customers>),
}

impl Scope {
    /// Whether `customer`'s rows of the day are recomputed.
    pub fn holds(&self, customer: &str) -> bool {
        match self {
            Scope::Whole => true,
            Scope::Customers(customers) => customers.contains(customer),
        }
    }

    /// The customers, when only some.
    pub fn customers(&self) -> Option<&Customers> {
        match self {
            Scope::Whole => None,
            Scope::Customers(customers) => Some(customers),
        }
    }
}

/// How a day is to be recomputed, before its customers are known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    Whole,
    /// For the customers of these files (new files of the day, or of the day before).
    Customers(Vec<ListedFile>),
}

impl Plan {
    fn join(&mut self, other: Plan) {
        match (&mut *self, other) {
            (Plan::Whole, _) => {}
            (_, Plan::Whole) => *self = Plan::Whole,
            (Plan::Customers(mine), Plan::Customers(more)) => mine.extend(more),
        }
    }
}

/// The days up to `last_day` a run recomputes, and how: every day of the lake when
/// `full`; else the days whose files changed since `previous`, the days from the
/// published watermark's on, and the day after a changed day.
pub fn plan_days(
    view: &LakeView,
    previous: &Previous,
    last_day: NaiveDate,
    full: bool,
) -> BTreeMap<NaiveDate, Plan> {
    let mut plans: BTreeMap<NaiveDate, Plan> = BTreeMap::new();
    let mut add = |date: NaiveDate, plan: Plan| match plans.get_mut(&date) {
        Some(known) => known.join(plan),
        None => {
            plans.insert(date, plan);
        }
    };
    for (&date, day) in view.days.range(..=last_day) {
        let changed = previous.fingerprints.get(&date) != Some(&day.fingerprint);
        let moved_over = previous
            .watermark
            .is_none_or(|published| date >= crate::lake::date_of(published));
        if !(full || changed || moved_over) {
            continue;
        }
        let added = previous
            .listings
            .get(&date)
            .and_then(|stored| day.added_since(stored));
        let plan = match added {
            Some(added) if changed && !full && !moved_over => Plan::Customers(added),
            _ => Plan::Whole,
        };
        if changed
            && let Some(next) = date.succ_opt()
            && next <= last_day
            && view.days.contains_key(&next)
        {
            add(next, plan.clone());
        }
        add(date, plan);
    }
    plans
}

/// Files whose ids are kept by one customer's record and dropped from another's: the
/// day cannot be recomputed for some of its customers only.
#[derive(Debug, thiserror::Error)]
#[error(
    "{date}: transaction id {id} belongs to records of two customers; the day is \
     recomputed whole"
)]
pub struct SharedId {
    pub date: NaiveDate,
    pub id: String,
}

/// The scopes of `plans`: the customers of each day's files, read from the lake.
pub async fn scopes(
    lake: &fraud_lake::Lake,
    plans: &BTreeMap<NaiveDate, Plan>,
) -> Result<Vec<(NaiveDate, Scope)>, fraud_lake::Error> {
    let mut customers_of: BTreeMap<ListedFile, Customers> = BTreeMap::new();
    let mut out = Vec::with_capacity(plans.len());
    for (&date, plan) in plans {
        let scope = match plan {
            Plan::Whole => Scope::Whole,
            Plan::Customers(files) => {
                let mut customers = Customers::default();
                for listed in files {
                    if !customers_of.contains_key(listed) {
                        let read = crate::lake::file_customers(lake, listed).await?;
                        customers_of.insert(*listed, read);
                    }
                    customers.extend(customers_of[listed].iter().cloned());
                }
                Scope::Customers(Arc::new(customers))
            }
        };
        out.push((date, scope));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use fraud_lake::{ChunkId, LakeFile};

    use super::*;
    use crate::lake::{LakeDay, day_start};

    fn date(day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, day).unwrap()
    }

    fn file(day: u32, partition: i32, first: i64, size: u64) -> ListedFile {
        ListedFile {
            file: LakeFile::new(
                ChunkId::new(partition, first, first + 9).unwrap(),
                date(day),
            ),
            size,
        }
    }

    fn view(files: &[ListedFile]) -> LakeView {
        let mut by_day: BTreeMap<NaiveDate, Vec<ListedFile>> = BTreeMap::new();
        for listed in files {
            by_day.entry(listed.file.date()).or_default().push(*listed);
        }
        LakeView {
            days: by_day
                .into_iter()
                .map(|(date, files)| (date, LakeDay::new(files)))
                .collect(),
            next_offsets: BTreeMap::new(),
        }
    }

    /// What a run that computed `view`'s days, at `watermark`, leaves.
    fn computed(view: &LakeView, watermark: i64) -> Previous {
        Previous {
            watermark: Some(watermark),
            run_id: Some(1),
            fingerprints: view
                .days
                .iter()
                .map(|(date, day)| (*date, day.fingerprint.clone()))
                .collect(),
            listings: view
                .days
                .iter()
                .map(|(date, day)| (*date, day.listing.clone()))
                .collect(),
        }
    }

    #[test]
    fn a_day_that_only_gained_files_is_recomputed_for_their_customers_and_so_is_the_next() {
        let before = [file(1, 0, 0, 100), file(2, 0, 10, 100), file(3, 0, 20, 100)];
        let watermark = day_start(date(4));
        let previous = computed(&view(&before), watermark);
        let late = file(1, 1, 50, 7);
        let mut after = before.to_vec();
        after.push(late);
        let plans = plan_days(&view(&after), &previous, date(4), false);
        assert_eq!(
            plans,
            BTreeMap::from([
                (date(1), Plan::Customers(vec![late])),
                (date(2), Plan::Customers(vec![late])),
            ])
        );
        // Unchanged, nothing; --full, every day whole.
        assert!(plan_days(&view(&before), &previous, date(4), false).is_empty());
        let full = plan_days(&view(&after), &previous, date(4), true);
        assert_eq!(full.len(), 3);
        assert!(full.values().all(|plan| *plan == Plan::Whole));
    }

    #[test]
    fn a_day_whose_files_went_or_changed_or_are_unknown_is_recomputed_whole() {
        let before = [file(1, 0, 0, 100), file(1, 1, 0, 100), file(2, 0, 10, 100)];
        let watermark = day_start(date(3));
        let previous = computed(&view(&before), watermark);
        let whole = |after: &[ListedFile], previous: &Previous| {
            let plans = plan_days(&view(after), previous, date(3), false);
            assert_eq!(
                plans,
                BTreeMap::from([(date(1), Plan::Whole), (date(2), Plan::Whole)]),
                "{after:?}"
            );
        };
        // A file gone.
        whole(&[before[0], before[2]], &previous);
        // A file rewritten (its size changed), and one added.
        whole(
            &[before[0], file(1, 1, 0, 101), before[2], file(1, 2, 0, 5)],
            &previous,
        );
        // Computed by a run that kept no listing.
        let unknown = Previous {
            listings: BTreeMap::new(),
            ..computed(&view(&before), watermark)
        };
        whole(
            &[before[0], before[1], before[2], file(1, 2, 0, 5)],
            &unknown,
        );
    }

    #[test]
    fn days_the_watermark_moves_over_are_recomputed_whole_and_dominate() {
        let before = [file(1, 0, 0, 100), file(2, 0, 10, 100), file(3, 0, 20, 100)];
        // Published at the start of day 2: days 2 and 3 are moved over.
        let previous = computed(&view(&before), day_start(date(2)));
        let late = file(1, 1, 50, 7);
        let mut after = before.to_vec();
        after.push(late);
        let plans = plan_days(&view(&after), &previous, date(3), false);
        assert_eq!(
            plans,
            BTreeMap::from([
                (date(1), Plan::Customers(vec![late])),
                (date(2), Plan::Whole),
                (date(3), Plan::Whole),
            ])
        );
        // A day gaining files after a day recomputed whole (a file gone): whole; the day
        // after it, for the customers of its new file.
        let gained = file(2, 3, 0, 4);
        let after = [file(1, 5, 0, 5), before[1], gained, before[2]];
        let previous = computed(&view(&before), day_start(date(4)));
        let plans = plan_days(&view(&after), &previous, date(4), false);
        assert_eq!(
            plans,
            BTreeMap::from([
                (date(1), Plan::Whole),
                (date(2), Plan::Whole),
                (date(3), Plan::Customers(vec![gained])),
            ])
        );
    }
}
