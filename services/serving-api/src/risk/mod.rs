//! Reading risk (scope `read`): `GET /v1/customers/{customerId}/risk` and
//! `GET /v1/customers/{customerId}/daily?from=&to=`, merged from the speed view
//! (Redis) and the batch view (Postgres) at the lambda seam T_b.
//!
//! - [`read`]: the two views, each read with a bounded wait; Redis first, then every
//!   Postgres row of an answer in one REPEATABLE READ READ ONLY snapshot, so a batch
//!   run publishing meanwhile is seen whole or not at all.
//! - [`cache`]: `/risk`'s batch rows per customer of the run in force, in memory, so
//!   that a request whose customer is cached reads Redis only; it follows the run in
//!   force by `LISTEN` and a check every second.
//! - [`merge`]: the figures from what was read, pure (unit-tested on every boundary).
//!
//! Answers (documented exactly in `openapi/risk.json`):
//! - `/risk`: the window `W(c, now)` (speed), today `[UTC day start, now]` and the last
//!   24 hours `[floor_hour(now) − 23 h, now]` (batch up to T_b ⊕ speed after it), the
//!   baseline (batch), the rules' score, level and reasons on the window and the
//!   baseline, and the freshness of both views.
//! - `/daily`: per UTC day with anything in it, sum and count merged the same way, max
//!   and distinct vendors where exact, and the peak 30-minute window of closed days.
//!
//! A view that cannot be read (Redis or Postgres down or slow, the speed layer
//! rebuilding, no batch run yet) never makes a 5xx: the answer is built from what is
//! there with `freshness.degraded = true` and a reason per missing part.

pub mod cache;
pub mod merge;
pub mod read;

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Days, NaiveDate, SecondsFormat, Utc};
use fraud_config::Scope;
use fraud_domain::{CustomerId, Money};
use fraud_service::problem::{FieldError, Problem};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::rules::{self, Level, Observation, Verdict};
use cache::Run;
use merge::{Ranges, Source, Totals};
use read::SpeedRead;

/// The most days one `/daily` request may span.
pub const MAX_DAILY_DAYS: i64 = 366;

/// The routes of this part of the API.
pub fn routes(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/customers/{customer_id}/risk", get(get_risk))
        .route("/v1/customers/{customer_id}/daily", get(get_daily))
        .with_state(state)
}

/// `/risk`'s answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RiskAnswer {
    pub customer_id: String,
    /// False when neither view knows the customer (every figure is then zero).
    pub known: bool,
    pub as_of: String,
    pub window30m: WindowFigures,
    pub today: RangeFigures,
    pub last24h: RangeFigures,
    pub baseline: Option<BaselineFigures>,
    pub score: f64,
    pub level: Level,
    pub reasons: Vec<Verdict>,
    pub freshness: Freshness,
}

/// `W(c, asOf)`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WindowFigures {
    pub sum: String,
    pub count: i64,
    pub avg: Option<String>,
    pub max: String,
    pub distinct_vendors: i64,
}

/// Sum and count over `[from, asOf]`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RangeFigures {
    pub from: String,
    pub sum: String,
    pub count: i64,
}

/// The batch layer's baseline of the customer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BaselineFigures {
    pub as_of: String,
    pub active_days: i64,
    pub mean_daily: String,
    pub stddev_daily: String,
    pub p95_peak30m: String,
    pub max_peak30m: String,
}

/// How current the views behind an answer are.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Freshness {
    pub batch_watermark: Option<String>,
    /// The batch run whose figures the answer used: two runs with the same T_b (a
    /// rerun after late arrivals) differ only by it.
    pub batch_run_id: Option<i64>,
    pub speed_lag_ms: Option<i64>,
    pub degraded: bool,
    pub degraded_reasons: Vec<String>,
}

/// `/daily`'s answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DailyAnswer {
    pub customer_id: String,
    pub from: String,
    pub to: String,
    pub as_of: String,
    pub days: Vec<DayFigures>,
    pub freshness: Freshness,
}

/// One day of `/daily`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DayFigures {
    pub date: String,
    pub source: Source,
    pub sum: String,
    pub count: i64,
    pub max: Option<String>,
    pub distinct_vendors: Option<i64>,
    pub peak30m: Option<PeakFigures>,
}

/// A closed day's peak 30-minute window `(end − 30 min, end]`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeakFigures {
    pub sum: String,
    pub count: i64,
    pub end: String,
}

fn money(minor: i64) -> String {
    Money::from_minor(minor).to_string()
}

fn rfc3339(millis: i64) -> String {
    DateTime::from_timestamp_millis(millis)
        .map(|time| time.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_else(|| millis.to_string())
}

fn increments_ttl_ms(app: &AppState) -> i64 {
    i64::try_from(app.settings.speed.increments_ttl_ms).unwrap_or(i64::MAX)
}

fn now_millis() -> i64 {
    Utc::now().timestamp_millis()
}

/// The customer id of the path, validated as `CustomerId` (400 otherwise).
fn customer_of(path: Result<Path<String>, PathRejection>) -> Result<CustomerId, Problem> {
    let Path(raw) = path.map_err(|rejection| {
        Problem::malformed(format!("the path is not valid: {}", rejection.body_text()))
    })?;
    CustomerId::parse(&raw).map_err(|error| {
        let detail = format!("customerId {error}");
        Problem::malformed(detail.clone()).with_errors(vec![FieldError {
            index: None,
            pointer: "/path/customerId".into(),
            detail,
        }])
    })
}

fn respond<T: Serialize>(endpoint: &'static str, answer: Result<T, Problem>) -> Response {
    match answer {
        Ok(answer) => Json(answer).into_response(),
        Err(problem) => {
            metrics::counter!(
                "serving_risk_rejected_requests_total",
                "endpoint" => endpoint,
                "status" => problem.status.to_string()
            )
            .increment(1);
            problem.into_response()
        }
    }
}

async fn get_risk(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    respond("risk", risk(&app, &headers, path).await)
}

/// Why the batch side of an answer is incomplete: it could not be read, no run has
/// succeeded, T_b is after now, or T_b is older than the speed layer keeps hourly
/// increments without a write (`speed.increments_ttl_ms`), so hours between T_b and
/// the speed layer's oldest may be gone.
fn batch_reasons<T>(
    read: &Result<T, String>,
    watermark: Option<i64>,
    now: i64,
    increments_ttl_ms: i64,
) -> Vec<String> {
    match read {
        Err(error) => {
            tracing::warn!(%error, "could not read the batch view");
            metrics::counter!("serving_risk_view_unavailable_total", "view" => "batch")
                .increment(1);
            vec![format!(
                "the batch view could not be read from Postgres ({error}): the figures up to \
                 the batch watermark and the baseline are missing; only the speed layer's \
                 are given"
            )]
        }
        Ok(_) => match watermark {
            None => vec![
                "no batch run has succeeded yet: every figure is the speed layer's alone (what \
                 it still holds) and there is no baseline"
                    .to_owned(),
            ],
            Some(tb) if tb > now => vec![format!(
                "the batch watermark {} is after now (clock skew?): figures up to it may \
                 include events after asOf",
                rfc3339(tb)
            )],
            Some(tb) if now.saturating_sub(tb) > increments_ttl_ms => vec![format!(
                "the batch watermark {} is older than the speed layer keeps hourly figures \
                 ({} h): figures between it and the speed layer's oldest hour may be missing",
                rfc3339(tb),
                increments_ttl_ms / 3_600_000
            )],
            Some(_) => Vec::new(),
        },
    }
}

fn freshness(speed: &SpeedRead, run: Option<Run>, reasons: Vec<String>, now: i64) -> Freshness {
    let speed_lag_ms = speed
        .meta
        .as_ref()
        .and_then(|meta| merge::speed_lag_ms(&meta.progress, now));
    let mut degraded_reasons = speed.reasons.clone();
    degraded_reasons.extend(reasons);
    let degraded = !degraded_reasons.is_empty();
    metrics::counter!("serving_risk_answers_total", "degraded" => degraded.to_string())
        .increment(1);
    Freshness {
        batch_watermark: run.map(|run| rfc3339(run.watermark)),
        batch_run_id: run.map(|run| run.id),
        speed_lag_ms,
        degraded,
        degraded_reasons,
    }
}

async fn risk(
    app: &AppState,
    headers: &HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<RiskAnswer, Problem> {
    app.keys.authorize(headers, Scope::Read)?;
    let customer = customer_of(path)?;
    let now = now_millis();
    let ranges = Ranges::at(now);
    // Redis first, then the batch rows of the run in force (cached, or from Postgres):
    // see `read` and `cache`.
    let speed = read::speed(app, customer.as_str()).await;
    let batch = app
        .batch_cache
        .risk_rows(
            &app.pool,
            app.settings.service.probe_timeout(),
            customer.as_str(),
            ranges,
        )
        .await;
    let read = batch.rows.as_ref();
    let run = read.ok().and_then(|(run, _)| *run);
    let rows = read.ok().map(|(_, rows)| rows.as_ref());
    let watermark = run.map(|run| run.watermark);
    let mut reasons = batch_reasons(&batch.rows, watermark, now, increments_ttl_ms(app));
    reasons.extend(batch.unconfirmed);
    let state = speed.state.as_ref();

    let window = merge::window(state, now);
    let batch_today = rows.map_or(Totals::default(), |rows| {
        rows.totals_from(ranges.today_from)
    });
    let batch_last24h = rows.map_or(Totals::default(), |rows| {
        rows.totals_from(ranges.last24h_from)
    });
    let today = batch_today.plus(merge::speed_part(state, watermark, ranges.today_from, now));
    let last24h = batch_last24h.plus(merge::speed_part(
        state,
        watermark,
        ranges.last24h_from,
        now,
    ));
    let baseline = rows.and_then(|rows| rows.baseline.clone());
    let assessment = rules::assess(
        &app.rules.current(),
        &Observation {
            window,
            baseline_peak_minor: baseline.as_ref().map(|b| b.p95_peak_30m),
            event: None,
        },
    );
    let known = state.is_some() || rows.is_some_and(|rows| rows.known);
    Ok(RiskAnswer {
        customer_id: customer.as_str().to_owned(),
        known,
        as_of: rfc3339(now),
        window30m: WindowFigures {
            sum: money(window.sum),
            count: window.count,
            avg: merge::average(window.sum, window.count).map(money),
            max: money(window.max),
            distinct_vendors: window.distinct_vendors,
        },
        today: RangeFigures {
            from: rfc3339(ranges.today_from),
            sum: money(today.sum),
            count: today.count,
        },
        last24h: RangeFigures {
            from: rfc3339(ranges.last24h_from),
            sum: money(last24h.sum),
            count: last24h.count,
        },
        baseline: baseline.map(|b| BaselineFigures {
            as_of: rfc3339(b.as_of),
            active_days: b.active_days,
            mean_daily: money(b.mean_daily),
            stddev_daily: money(b.stddev_daily),
            p95_peak30m: money(b.p95_peak_30m),
            max_peak30m: money(b.max_peak_30m),
        }),
        score: assessment.score,
        level: assessment.level,
        reasons: assessment.reasons,
        freshness: freshness(&speed, run, reasons, now),
    })
}

/// `/daily`'s query.
#[derive(Debug, Deserialize)]
pub struct DailyQuery {
    from: Option<String>,
    to: Option<String>,
}

async fn get_daily(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<DailyQuery>, QueryRejection>,
) -> Response {
    respond("daily", daily(&app, &headers, path, query).await)
}

/// A `YYYY-MM-DD` date, exactly.
fn parse_date(text: &str) -> Option<NaiveDate> {
    let bytes = text.as_bytes();
    let shape = bytes.len() == 10
        && bytes.iter().enumerate().all(|(index, byte)| match index {
            4 | 7 => *byte == b'-',
            _ => byte.is_ascii_digit(),
        });
    if !shape {
        return None;
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()
}

/// The validated `from..=to`, or a 400 listing every problem.
fn date_range(
    query: Result<Query<DailyQuery>, QueryRejection>,
) -> Result<(NaiveDate, NaiveDate), Problem> {
    let Query(query) = query.map_err(|rejection| {
        Problem::malformed(format!("the query is not valid: {}", rejection.body_text()))
    })?;
    let mut errors = Vec::new();
    let mut date = |name: &str, value: Option<String>| match value.as_deref().map(str::trim) {
        None | Some("") => {
            errors.push(FieldError {
                index: None,
                pointer: format!("/query/{name}"),
                detail: format!("{name} is required: a UTC date, YYYY-MM-DD"),
            });
            None
        }
        Some(text) => {
            let parsed = parse_date(text);
            if parsed.is_none() {
                errors.push(FieldError {
                    index: None,
                    pointer: format!("/query/{name}"),
                    detail: format!("{name} `{text}` is not a date YYYY-MM-DD"),
                });
            }
            parsed
        }
    };
    let from = date("from", query.from);
    let to = date("to", query.to);
    if let (Some(from), Some(to)) = (from, to) {
        let days = (to - from).num_days() + 1;
        if days < 1 {
            errors.push(FieldError {
                index: None,
                pointer: "/query/to".into(),
                detail: format!("to ({to}) is before from ({from})"),
            });
        } else if days > MAX_DAILY_DAYS {
            errors.push(FieldError {
                index: None,
                pointer: "/query/to".into(),
                detail: format!("from..to spans {days} days; at most {MAX_DAILY_DAYS} are allowed"),
            });
        }
    }
    match (from, to) {
        (Some(from), Some(to)) if errors.is_empty() => Ok((from, to)),
        _ => {
            let detail = errors
                .iter()
                .map(|error| error.detail.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            Err(Problem::malformed(detail).with_errors(errors))
        }
    }
}

async fn daily(
    app: &AppState,
    headers: &HeaderMap,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<DailyQuery>, QueryRejection>,
) -> Result<DailyAnswer, Problem> {
    app.keys.authorize(headers, Scope::Read)?;
    let customer = customer_of(path)?;
    let (from, to) = date_range(query)?;
    let now = now_millis();
    let speed = read::speed(app, customer.as_str()).await;
    let batch = read::daily_rows(
        &app.pool,
        app.settings.service.probe_timeout(),
        customer.as_str(),
        from,
        to,
    )
    .await;
    let rows = batch.as_ref().ok();
    let run = rows.and_then(|rows| rows.run);
    let watermark = run.map(|run| run.watermark);
    let reasons = batch_reasons(&batch, watermark, now, increments_ttl_ms(app));
    let mut days = Vec::new();
    let mut date = from;
    while date <= to {
        let start = date
            .and_hms_opt(0, 0, 0)
            .expect("midnight exists")
            .and_utc()
            .timestamp_millis();
        if start > now {
            break;
        }
        let stored = rows.and_then(|rows| rows.days.get(&date));
        if let Some(day) = merge::merge_day(start, now, watermark, stored, speed.state.as_ref()) {
            days.push(DayFigures {
                date: date.to_string(),
                source: day.source,
                sum: money(day.totals.sum),
                count: day.totals.count,
                max: day.max.map(money),
                distinct_vendors: day.distinct_vendors,
                peak30m: day.peak.map(|peak| PeakFigures {
                    sum: money(peak.sum),
                    count: peak.count,
                    end: rfc3339(peak.end),
                }),
            });
        }
        let Some(next) = date.checked_add_days(Days::new(1)) else {
            break;
        };
        date = next;
    }
    Ok(DailyAnswer {
        customer_id: customer.as_str().to_owned(),
        from: from.to_string(),
        to: to.to_string(),
        as_of: rfc3339(now),
        days,
        freshness: freshness(&speed, run, reasons, now),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(from: Option<&str>, to: Option<&str>) -> Result<(NaiveDate, NaiveDate), Problem> {
        date_range(Ok(Query(DailyQuery {
            from: from.map(str::to_owned),
            to: to.map(str::to_owned),
        })))
    }

    #[test]
    fn the_batch_side_says_why_it_is_incomplete() {
        const HOUR: i64 = 3_600_000;
        let ttl = 48 * HOUR;
        let now = 1_795_564_800_000;
        let read: Result<(), String> = Ok(());
        assert!(batch_reasons(&read, Some(now - HOUR), now, ttl).is_empty());
        assert!(batch_reasons(&read, Some(now - ttl), now, ttl).is_empty());
        let stale = batch_reasons(&read, Some(now - ttl - HOUR), now, ttl);
        assert!(stale[0].contains("older than"), "{stale:?}");
        assert!(batch_reasons(&read, None, now, ttl)[0].contains("no batch run"));
        assert!(batch_reasons(&read, Some(now + HOUR), now, ttl)[0].contains("after now"));
        let down: Result<(), String> = Err("refused".into());
        assert!(batch_reasons(&down, None, now, ttl)[0].contains("(refused)"));
    }

    #[test]
    fn dates_are_strict_and_the_range_bounded() {
        let day = |text| NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap();
        assert_eq!(
            range(Some("2026-11-01"), Some("2026-11-25")).unwrap(),
            (day("2026-11-01"), day("2026-11-25"))
        );
        assert!(range(Some("2026-11-25"), Some("2026-11-25")).is_ok());
        // 366 days, leap year included.
        assert!(range(Some("2024-01-01"), Some("2024-12-31")).is_ok());
        let too_long = range(Some("2024-01-01"), Some("2025-01-01")).unwrap_err();
        assert_eq!(too_long.status, 400);
        assert_eq!(too_long.errors[0].pointer, "/query/to");
        assert!(range(Some("2026-11-26"), Some("2026-11-25")).is_err());
        for bad in [
            "2026-1-05",
            "2026-02-30",
            "20261105",
            "2026-11-05T00:00:00Z",
            "x",
        ] {
            let problem = range(Some(bad), Some("2026-11-25")).unwrap_err();
            assert_eq!(problem.errors[0].pointer, "/query/from", "{bad}");
        }
        let both = range(None, Some("nope")).unwrap_err();
        assert_eq!(both.errors.len(), 2);
    }
}
