//! Reading one customer's views: the speed state from Redis, then the batch rows from
//! one Postgres snapshot. Each read waits at most the configured probe timeout; a view
//! that cannot be read is reported as a reason, never as an error.
//!
//! # Order: Redis first, then Postgres
//! The speed layer drops the hourly increments of hours before the watermark it knows,
//! and it learns a watermark only from committed `batch_runs` rows. Reading Redis
//! first means the Postgres snapshot, taken later, holds a watermark at least as recent
//! as any the state was trimmed with; `total_between` ignores the hours before the
//! snapshot's T_b, so no hour between the two watermarks is ever missing. `/risk` reads
//! Postgres only when `super::cache` does not hold the customer's rows of the run in
//! force; that module says why its rows keep the merge exact.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, Utc};
use fraud_speed_view::HOUR_MS;
use fraud_speed_view::meta::meta_key;
use fraud_speed_view::{CustomerState, Generation, SpeedMeta, customer_key};
use sqlx::PgPool;

use super::cache::{CustomerRows, HourTotals, Run, read_lock, write_lock};
use super::merge::{BatchDay, Ranges};
use crate::AppState;

/// What was read of the speed view.
#[derive(Debug, Default)]
pub struct SpeedRead {
    /// The meta key; `None` when Redis could not be read.
    pub meta: Option<Arc<SpeedMeta>>,
    /// The customer's state, if it exists in the meta key's generation (a state of
    /// another generation counts as absent).
    pub state: Option<CustomerState>,
    /// Why the speed view is incomplete, if it is.
    pub reasons: Vec<String>,
}

/// How long a read of the whole meta key serves later requests, within its generation.
pub const META_MAX_AGE: Duration = Duration::from_millis(50);

/// The speed view's meta key as last read whole, shared by the requests of this process.
///
/// Every request reads the meta key's generation with the customer's state (one round
/// trip), so a state is always judged against the generation current at that read; the
/// rest of the key (each partition's status and progress, about two dozen fields that
/// cost more to read and parse than the whole answer) is read again only when the
/// generation differs from the cached one or the cached read is older than
/// [`META_MAX_AGE`]. Within a generation a partition's status only goes from rebuilding
/// to ready, never back, so a cached `degraded` can only be a little late to clear; the
/// progress behind `speedLagMs` is reported about once a second anyway.
#[derive(Debug, Default)]
pub struct MetaCache {
    read: RwLock<Option<(Instant, Arc<SpeedMeta>)>>,
}

impl MetaCache {
    /// The cached meta key, if it was read less than [`META_MAX_AGE`] ago in `generation`.
    fn fresh(&self, generation: Option<Generation>) -> Option<Arc<SpeedMeta>> {
        let guard = read_lock(&self.read);
        let (at, meta) = guard.as_ref()?;
        (generation.is_some() && meta.generation == generation && at.elapsed() < META_MAX_AGE)
            .then(|| Arc::clone(meta))
    }

    fn store(&self, meta: &Arc<SpeedMeta>) {
        *write_lock(&self.read) = Some((Instant::now(), Arc::clone(meta)));
    }
}

/// Reads the customer's state with the meta key's generation (one round trip), and the
/// whole meta key when [`MetaCache`] has no fresh read of it.
pub async fn speed(app: &AppState, customer: &str) -> SpeedRead {
    let timeout = app.settings.service.probe_timeout();
    let prefix = &app.settings.redis.key_prefix;
    let read = async {
        let mut connection = app.redis.connection().await.map_err(|e| e.to_string())?;
        let meta_key = meta_key(prefix);
        let state_key = customer_key(prefix, customer);
        let (generation, state): (Option<String>, Option<Vec<u8>>) = redis::pipe()
            .hget(&meta_key, "generation")
            .get(&state_key)
            .query_async(&mut connection)
            .await
            .map_err(|e| e.to_string())?;
        let generation = generation.as_deref().and_then(Generation::parse_hex);
        let meta = match app.speed_meta.fresh(generation) {
            Some(meta) => meta,
            None => {
                let meta = Arc::new(
                    SpeedMeta::read(&mut connection, &meta_key)
                        .await
                        .map_err(|e| e.to_string())?,
                );
                app.speed_meta.store(&meta);
                meta
            }
        };
        Ok::<_, String>((meta, state))
    };
    let (meta, bytes) = match bounded(timeout, read).await {
        Ok(read) => read,
        Err(error) => {
            tracing::warn!(%error, "could not read the speed view");
            metrics::counter!("serving_risk_view_unavailable_total", "view" => "speed")
                .increment(1);
            return SpeedRead {
                meta: None,
                state: None,
                reasons: vec![format!(
                    "the speed view could not be read from Redis ({error}): the 30-minute window \
                     and the speed layer's part (after the batch watermark) of every figure \
                     are missing"
                )],
            };
        }
    };
    let mut reasons: Vec<String> = meta.degraded().into_iter().collect();
    let state = match bytes.map(|bytes| CustomerState::decode(&bytes)) {
        None => None,
        Some(Ok(state)) if Some(state.generation) == meta.generation => Some(state),
        // Written before the speed layer's state was lost and rebuilt: not this view.
        Some(Ok(_)) => None,
        Some(Err(error)) => {
            tracing::warn!(%error, customer, "unreadable speed state");
            reasons.push(format!(
                "the speed layer's state of this customer is unreadable ({error})"
            ));
            None
        }
    };
    SpeedRead {
        meta: Some(meta),
        state,
        reasons,
    }
}

/// `batch_baselines`' row, money rounded to the minor unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaselineRow {
    pub as_of: i64,
    pub active_days: i64,
    pub mean_daily: i64,
    pub stddev_daily: i64,
    pub p95_peak_30m: i64,
    pub max_peak_30m: i64,
}

/// How a snapshot is opened: every row of one answer from one run of the batch layer.
const SNAPSHOT: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";

/// The run in force: the latest succeeded run. Runs never overlap and a run's watermark
/// is never before the published one, so it also has the highest T_b.
const RUN_IN_FORCE: &str = "\
SELECT run_id, watermark FROM batch_runs WHERE status = 'succeeded'
ORDER BY watermark DESC, run_id DESC LIMIT 1";

/// Reads the run in force (`None` before any run has succeeded).
pub async fn run_in_force(pool: &PgPool) -> Result<Option<Run>, sqlx::Error> {
    let row: Option<(i64, DateTime<Utc>)> =
        sqlx::query_as(RUN_IN_FORCE).fetch_optional(pool).await?;
    Ok(row.map(|(id, watermark)| Run {
        id,
        watermark: watermark.timestamp_millis(),
    }))
}

/// The batch rows of `/risk`: the run in force, the customer's hours from
/// `least($2, T_b − 23 h)` up to T_b (the row of hour T_b holds only `ts == T_b`), whether
/// any day of the customer is stored (asked of `batch_vendors`, where every stored day
/// leaves the customer's vendors, in one index, rather than of `batch_daily`'s partition
/// per day), and the baseline (mean and spread rounded half away from zero). The hours from `T_b − 23 h` are what any later request needs
/// (`super::cache`); `$2` (the request's `last24h` start) reaches further back only for
/// a request whose clock is behind T_b. `$3`, when not null, says the same of a T_b known
/// before (see [`risk_rows`]): a bound Postgres knows before it reads `batch_runs`, so it
/// skips the other day partitions of `batch_hourly` when it plans or starts the statement
/// rather than setting up a scan of each.
const RISK_ROWS: &str = "\
WITH run AS (
    SELECT run_id, watermark FROM batch_runs WHERE status = 'succeeded'
    ORDER BY watermark DESC, run_id DESC LIMIT 1
)
SELECT run.run_id, run.watermark, hours.hours, hours.sums, hours.counts,
       EXISTS (SELECT 1 FROM batch_vendors v WHERE v.customer_id = $1) AS known,
       b.as_of, b.active_days::bigint, round(b.mean_daily_minor)::bigint,
       round(b.stddev_daily_minor)::bigint, b.p95_peak_30m_minor, b.max_peak_30m_minor
FROM (VALUES (1)) AS one (x)
LEFT JOIN run ON true
LEFT JOIN LATERAL (
    SELECT array_agg((extract(epoch FROM h.hour) * 1000)::bigint ORDER BY h.hour) AS hours,
           array_agg(h.sum_minor ORDER BY h.hour) AS sums,
           array_agg(h.count ORDER BY h.hour) AS counts
    FROM batch_hourly h
    WHERE h.customer_id = $1 AND h.hour <= run.watermark
      AND h.hour >= least($2, run.watermark - interval '23 hours')
      AND h.hour >= coalesce($3, '-infinity')
) hours ON true
LEFT JOIN batch_baselines b ON b.customer_id = $1";

/// One [`RISK_ROWS`] statement, with no hour before `floor` when it is given.
async fn risk_row(
    pool: &PgPool,
    timeout: Duration,
    customer: &str,
    ranges: Ranges,
    floor: Option<i64>,
) -> Result<RiskRow, String> {
    let read = sqlx::query_as::<_, RiskRow>(RISK_ROWS)
        .bind(customer)
        .bind(time(ranges.last24h_from))
        .bind(floor.map(time))
        .fetch_one(pool);
    bounded(timeout, async { read.await.map_err(|e| e.to_string()) }).await
}

type RiskRow = (
    Option<i64>,
    Option<DateTime<Utc>>,
    Option<Vec<i64>>,
    Option<Vec<i64>>,
    Option<Vec<i64>>,
    bool,
    Option<DateTime<Utc>>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
);

/// Reads `/risk`'s batch rows with one statement: one snapshot, one round trip (a
/// transaction around it would add two round trips and see nothing more). The rows
/// are the run's, returned with it. `known` is the T_b of a run that was in force: a
/// published watermark never moves back (the batch layer refuses to), so the run read
/// has a T_b at least as late and needs no hour before `least(last24h start, known −
/// 23 h)`. Should the run read have an earlier T_b all the same, it is read again
/// without that bound.
pub async fn risk_rows(
    pool: &PgPool,
    timeout: Duration,
    customer: &str,
    ranges: Ranges,
    known: Option<i64>,
) -> Result<(Option<Run>, CustomerRows), String> {
    let floor = known.map(|watermark| ranges.last24h_from.min(watermark - 23 * HOUR_MS));
    let mut row = risk_row(pool, timeout, customer, ranges, floor).await?;
    if let (Some(known), Some(read)) = (known, row.1)
        && read.timestamp_millis() < known
    {
        row = risk_row(pool, timeout, customer, ranges, None).await?;
    }
    let run = match (row.0, row.1) {
        (Some(id), Some(watermark)) => Some(Run {
            id,
            watermark: watermark.timestamp_millis(),
        }),
        _ => None,
    };
    let (hours, sums, counts) = (
        row.2.unwrap_or_default(),
        row.3.unwrap_or_default(),
        row.4.unwrap_or_default(),
    );
    if hours.len() != sums.len() || hours.len() != counts.len() {
        return Err("the batch hours came back in arrays of different lengths".into());
    }
    let hours = hours
        .into_iter()
        .zip(sums)
        .zip(counts)
        .map(|((hour, sum), count)| HourTotals { hour, sum, count })
        .collect();
    let baseline = baseline_of(row.6, row.7, row.8, row.9, row.10, row.11);
    Ok((
        run,
        CustomerRows {
            known: row.5,
            baseline,
            hours,
        },
    ))
}

/// The rows of the customers with hours in `[$1, $2]` (`T_b − 23 h` to T_b) as
/// [`RISK_ROWS`] reads them for one, the most recently active first, at most `$3`. Each
/// is known: it has a stored hour.
const ACTIVE_ROWS: &str = "\
SELECT h.customer_id,
       array_agg((extract(epoch FROM h.hour) * 1000)::bigint ORDER BY h.hour),
       array_agg(h.sum_minor ORDER BY h.hour), array_agg(h.count ORDER BY h.hour),
       true,
       b.as_of, b.active_days::bigint, round(b.mean_daily_minor)::bigint,
       round(b.stddev_daily_minor)::bigint, b.p95_peak_30m_minor, b.max_peak_30m_minor
FROM batch_hourly h LEFT JOIN batch_baselines b ON b.customer_id = h.customer_id
WHERE h.hour >= $1 AND h.hour <= $2
GROUP BY h.customer_id, b.customer_id
ORDER BY max(h.hour) DESC, h.customer_id
LIMIT $3";

type ActiveRow = (
    String,
    Vec<i64>,
    Vec<i64>,
    Vec<i64>,
    bool,
    Option<DateTime<Utc>>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
);

/// Calls `each` with the rows of `run` of every customer with hours in
/// `[T_b − 23 h, T_b]` (at most `limit`, the most recently active first), read in one
/// snapshot that still has `run` in force; returns how many, or `None` when another run
/// is in force by then.
pub async fn active_rows(
    pool: &PgPool,
    run: Run,
    limit: usize,
    mut each: impl FnMut(&str, CustomerRows),
) -> Result<Option<usize>, sqlx::Error> {
    use futures::TryStreamExt;

    let mut snapshot = pool.begin_with(SNAPSHOT).await?;
    let in_force: Option<(i64, DateTime<Utc>)> = sqlx::query_as(RUN_IN_FORCE)
        .fetch_optional(&mut *snapshot)
        .await?;
    if in_force.map(|(id, _)| id) != Some(run.id) {
        return Ok(None);
    }
    let mut rows = sqlx::query_as::<_, ActiveRow>(ACTIVE_ROWS)
        .bind(time(run.watermark - 23 * fraud_speed_view::HOUR_MS))
        .bind(time(run.watermark))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch(&mut *snapshot);
    let mut count = 0;
    while let Some(row) = rows.try_next().await? {
        let (customer, hours, sums, counts, known) = (row.0, row.1, row.2, row.3, row.4);
        if hours.len() != sums.len() || hours.len() != counts.len() {
            continue;
        }
        let hours = hours
            .into_iter()
            .zip(sums)
            .zip(counts)
            .map(|((hour, sum), count)| HourTotals { hour, sum, count })
            .collect();
        let baseline = baseline_of(row.5, row.6, row.7, row.8, row.9, row.10);
        each(
            &customer,
            CustomerRows {
                known,
                baseline,
                hours,
            },
        );
        count += 1;
    }
    drop(rows);
    snapshot.commit().await?;
    Ok(Some(count))
}

fn baseline_of(
    as_of: Option<DateTime<Utc>>,
    active_days: Option<i64>,
    mean_daily: Option<i64>,
    stddev_daily: Option<i64>,
    p95_peak_30m: Option<i64>,
    max_peak_30m: Option<i64>,
) -> Option<BaselineRow> {
    Some(BaselineRow {
        as_of: as_of?.timestamp_millis(),
        active_days: active_days?,
        mean_daily: mean_daily?,
        stddev_daily: stddev_daily?,
        p95_peak_30m: p95_peak_30m?,
        max_peak_30m: max_peak_30m?,
    })
}

/// The batch rows `/daily` needs, from one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DailyRows {
    /// The run in force in the snapshot.
    pub run: Option<Run>,
    /// The stored days in the range, by date.
    pub days: BTreeMap<NaiveDate, BatchDay>,
}

const DAYS: &str = "\
SELECT day, sum_minor, count, max_minor, distinct_vendors::bigint, peak_30m_sum_minor,
       peak_30m_count, peak_30m_end
FROM batch_daily WHERE customer_id = $1 AND day >= $2 AND day <= $3 ORDER BY day";

type DayRow = (NaiveDate, i64, i64, i64, i64, i64, i64, DateTime<Utc>);

/// Reads `/daily`'s batch rows (`from..=to`) in one REPEATABLE READ READ ONLY
/// transaction.
pub async fn daily_rows(
    pool: &PgPool,
    timeout: Duration,
    customer: &str,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<DailyRows, String> {
    let read = async {
        let mut snapshot = pool.begin_with(SNAPSHOT).await?;
        let run: Option<(i64, DateTime<Utc>)> = sqlx::query_as(RUN_IN_FORCE)
            .fetch_optional(&mut *snapshot)
            .await?;
        let rows: Vec<DayRow> = sqlx::query_as(DAYS)
            .bind(customer)
            .bind(from)
            .bind(to)
            .fetch_all(&mut *snapshot)
            .await?;
        snapshot.commit().await?;
        Ok::<_, sqlx::Error>((run, rows))
    };
    let (run, rows) = bounded(timeout, async { read.await.map_err(|e| e.to_string()) }).await?;
    let days = rows
        .into_iter()
        .map(
            |(date, sum, count, max, vendors, peak_sum, peak_count, peak_end)| {
                let day = date
                    .and_hms_opt(0, 0, 0)
                    .expect("midnight exists")
                    .and_utc()
                    .timestamp_millis();
                (
                    date,
                    BatchDay {
                        day,
                        sum,
                        count,
                        max,
                        distinct_vendors: vendors,
                        peak_sum,
                        peak_count,
                        peak_end: peak_end.timestamp_millis(),
                    },
                )
            },
        )
        .collect();
    Ok(DailyRows {
        run: run.map(|(id, watermark)| Run {
            id,
            watermark: watermark.timestamp_millis(),
        }),
        days,
    })
}

fn time(millis: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(millis).expect("a representable time")
}

/// `read`, or a timeout error after `timeout`.
async fn bounded<T>(
    timeout: Duration,
    read: impl Future<Output = Result<T, String>>,
) -> Result<T, String> {
    match tokio::time::timeout(timeout, read).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(generation: Option<Generation>) -> Arc<SpeedMeta> {
        Arc::new(SpeedMeta {
            generation,
            ..SpeedMeta::default()
        })
    }

    #[test]
    fn the_meta_cache_serves_only_a_fresh_read_of_the_same_generation() {
        let cache = MetaCache::default();
        let current = Generation::random();
        assert!(cache.fresh(Some(current)).is_none(), "nothing read yet");
        cache.store(&meta(Some(current)));
        assert!(cache.fresh(Some(current)).is_some());
        assert!(
            cache.fresh(Some(Generation::random())).is_none(),
            "another generation: read the key again"
        );
        assert!(
            cache.fresh(None).is_none(),
            "no generation: read the key again"
        );
        cache.store(&meta(None));
        assert!(
            cache.fresh(None).is_none(),
            "a key without a generation is never kept"
        );
        // Too old.
        *cache.read.write().unwrap() = Some((
            Instant::now() - META_MAX_AGE - Duration::from_millis(1),
            meta(Some(current)),
        ));
        assert!(cache.fresh(Some(current)).is_none());
    }
}
