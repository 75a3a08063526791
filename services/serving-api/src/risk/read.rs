//! Reading one customer's views: the speed state from Redis, then the batch rows from
//! one Postgres snapshot. Each read waits at most the configured probe timeout; a view
//! that cannot be read is reported as a reason, never as an error.
//!
//! # Order: Redis first, then Postgres
//! The speed layer drops the hourly increments of hours before the watermark it knows,
//! and it learns a watermark only from committed `batch_runs` rows. Reading Redis
//! first means the Postgres snapshot, taken later, holds a watermark at least as recent
//! as any the state was trimmed with; `total_between` ignores the hours before the
//! snapshot's T_b, so no hour between the two watermarks is ever missing.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use fraud_speed_view::meta::meta_key;
use fraud_speed_view::{CustomerState, SpeedMeta, customer_key};
use redis::AsyncCommands;
use sqlx::PgPool;

use super::merge::{BatchDay, Ranges, Totals};
use crate::AppState;

/// What was read of the speed view.
#[derive(Debug, Default)]
pub struct SpeedRead {
    /// The meta key; `None` when Redis could not be read.
    pub meta: Option<SpeedMeta>,
    /// The customer's state, if it exists in the meta key's generation (a state of
    /// another generation counts as absent).
    pub state: Option<CustomerState>,
    /// Why the speed view is incomplete, if it is.
    pub reasons: Vec<String>,
}

/// Reads the meta key and the customer's state (concurrently, on the shared
/// multiplexed connection).
pub async fn speed(app: &AppState, customer: &str) -> SpeedRead {
    let timeout = app.settings.service.probe_timeout();
    let prefix = &app.settings.redis.key_prefix;
    let read = async {
        let connection = app.redis.connection().await.map_err(|e| e.to_string())?;
        let mut for_meta = connection.clone();
        let mut for_state = connection;
        let meta_key = meta_key(prefix);
        let state_key = customer_key(prefix, customer);
        let (meta, state) = tokio::join!(
            SpeedMeta::read(&mut for_meta, &meta_key),
            for_state.get::<_, Option<Vec<u8>>>(&state_key)
        );
        Ok::<_, String>((
            meta.map_err(|e| e.to_string())?,
            state.map_err(|e| e.to_string())?,
        ))
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

/// The batch rows `/risk` needs, from one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RiskRows {
    /// T_b of the latest succeeded run.
    pub watermark: Option<i64>,
    /// The batch parts: `[from, now] ∩ (−∞, T_b]`.
    pub today: Totals,
    pub last24h: Totals,
    /// The batch has a day of this customer.
    pub known: bool,
    pub baseline: Option<BaselineRow>,
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

/// The batch rows of `/risk`: T_b, the hours of today and of the last 24 hours up to T_b
/// (the row of hour T_b holds only `ts == T_b`), whether any day of the customer is
/// stored, and the baseline (mean and spread rounded half away from zero).
const RISK_ROWS: &str = "\
WITH run AS (
    SELECT max(watermark) AS watermark FROM batch_runs WHERE status = 'succeeded'
), hours AS (
    SELECT coalesce(sum(h.sum_minor), 0)::bigint AS last24h_sum,
           coalesce(sum(h.count), 0)::bigint AS last24h_count,
           coalesce(sum(h.sum_minor) FILTER (WHERE h.hour >= $3), 0)::bigint AS today_sum,
           coalesce(sum(h.count) FILTER (WHERE h.hour >= $3), 0)::bigint AS today_count
    FROM batch_hourly h CROSS JOIN run
    WHERE h.customer_id = $1 AND h.hour >= $2 AND h.hour <= run.watermark
)
SELECT run.watermark, hours.last24h_sum, hours.last24h_count, hours.today_sum,
       hours.today_count,
       EXISTS (SELECT 1 FROM batch_daily d WHERE d.customer_id = $1) AS known,
       b.as_of, b.active_days::bigint, round(b.mean_daily_minor)::bigint,
       round(b.stddev_daily_minor)::bigint, b.p95_peak_30m_minor, b.max_peak_30m_minor
FROM run CROSS JOIN hours LEFT JOIN batch_baselines b ON b.customer_id = $1";

type RiskRow = (
    Option<DateTime<Utc>>,
    i64,
    i64,
    i64,
    i64,
    bool,
    Option<DateTime<Utc>>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
);

/// Reads `/risk`'s batch rows with one statement: one snapshot, one round trip (a
/// transaction around it would add two round trips and see nothing more).
pub async fn risk_rows(
    pool: &PgPool,
    timeout: Duration,
    customer: &str,
    ranges: Ranges,
) -> Result<RiskRows, String> {
    let read = sqlx::query_as::<_, RiskRow>(RISK_ROWS)
        .bind(customer)
        .bind(time(ranges.last24h_from))
        .bind(time(ranges.today_from))
        .fetch_one(pool);
    let row = bounded(timeout, async { read.await.map_err(|e| e.to_string()) }).await?;
    let (watermark, last24h_sum, last24h_count, today_sum, today_count, known) =
        (row.0, row.1, row.2, row.3, row.4, row.5);
    let baseline = match (row.6, row.7, row.8, row.9, row.10, row.11) {
        (
            Some(as_of),
            Some(active_days),
            Some(mean_daily),
            Some(stddev_daily),
            Some(p95_peak_30m),
            Some(max_peak_30m),
        ) => Some(BaselineRow {
            as_of: as_of.timestamp_millis(),
            active_days,
            mean_daily,
            stddev_daily,
            p95_peak_30m,
            max_peak_30m,
        }),
        _ => None,
    };
    Ok(RiskRows {
        watermark: watermark.map(|w| w.timestamp_millis()),
        today: Totals {
            sum: today_sum,
            count: today_count,
        },
        last24h: Totals {
            sum: last24h_sum,
            count: last24h_count,
        },
        known,
        baseline,
    })
}

/// The batch rows `/daily` needs, from one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DailyRows {
    pub watermark: Option<i64>,
    /// The stored days in the range, by date.
    pub days: BTreeMap<NaiveDate, BatchDay>,
}

const WATERMARK: &str = "SELECT max(watermark) FROM batch_runs WHERE status = 'succeeded'";

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
        let watermark: Option<DateTime<Utc>> = sqlx::query_scalar(WATERMARK)
            .fetch_one(&mut *snapshot)
            .await?;
        let rows: Vec<DayRow> = sqlx::query_as(DAYS)
            .bind(customer)
            .bind(from)
            .bind(to)
            .fetch_all(&mut *snapshot)
            .await?;
        snapshot.commit().await?;
        Ok::<_, sqlx::Error>((watermark, rows))
    };
    let (watermark, rows) =
        bounded(timeout, async { read.await.map_err(|e| e.to_string()) }).await?;
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
        watermark: watermark.map(|w| w.timestamp_millis()),
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
