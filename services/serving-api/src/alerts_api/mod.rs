//! `GET /v1/alerts` (history) and `GET /v1/alerts/stream` (Server-Sent Events), scope
//! `read`.
//!
//! Both read the `alerts` table in `seq` order. Alerts are inserted under one advisory
//! lock, so `seq` order is commit order: a reader that has seen `seq` n never later finds
//! a smaller one committed. That makes a position in the history a plain `seq`, and
//! both the cursor and the stream's `Last-Event-ID` are one: a page or a stream that
//! goes on after n can neither miss nor repeat an alert, however many are inserted
//! meanwhile.
//!
//! An alert as served is its body (the JSON message subscribers receive on RabbitMQ)
//! with `seq` and `raisedAt` added; history also adds `publishedAt` (the broker's
//! confirm, `null` while the alert waits in the outbox).
//!
//! History: `GET /v1/alerts?customerId=&since=&cursor=&limit=` answers
//! `{"alerts": [...], "nextCursor": "..." | null}`, oldest first; `since` (RFC 3339)
//! keeps alerts raised at or after it; `limit` is 1 to [`MAX_LIMIT`] (default
//! [`DEFAULT_LIMIT`]); `nextCursor` is `null` when no alert followed the page at the
//! time of the request. Unknown, repeated or invalid parameters answer 400 listing each.

mod stream;

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use fraud_config::Scope;
use fraud_domain::{CustomerId, EventTime};
use fraud_service::problem::{FieldError, Problem};
use serde::Serialize;
use serde_json::{Map, Value};
use sqlx::{PgPool, QueryBuilder};
use tokio::sync::Semaphore;

use crate::AppState;
use crate::relay::AlertSignal;

/// Alerts per page unless `limit` says otherwise.
pub const DEFAULT_LIMIT: i64 = 100;
/// The largest `limit`.
pub const MAX_LIMIT: i64 = 1000;
/// Streams open at once per instance; one more answers 503.
pub const MAX_STREAMS: usize = 512;
/// Streams reading Postgres at once per instance: an alert wakes every stream, and
/// they must not take the whole pool from the risk endpoints.
pub const STREAM_READERS: usize = 2;
/// Seconds a client should wait after a 503.
const RETRY_AFTER_SECONDS: u64 = 1;

/// What the alert endpoints share.
struct AlertsApi {
    state: Arc<AppState>,
    signal: AlertSignal,
    streams: Arc<Semaphore>,
    readers: Arc<Semaphore>,
}

/// The routes of the alert history and stream; `signal` wakes the streams (and ends
/// them at shutdown).
pub fn routes(state: Arc<AppState>, signal: AlertSignal) -> Router {
    let api = Arc::new(AlertsApi {
        state,
        signal,
        streams: Arc::new(Semaphore::new(MAX_STREAMS)),
        readers: Arc::new(Semaphore::new(STREAM_READERS)),
    });
    Router::new()
        .route("/v1/alerts", get(history))
        .route("/v1/alerts/stream", get(stream::stream))
        .with_state(api)
}

/// One page of history.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Page {
    alerts: Vec<Value>,
    next_cursor: Option<String>,
}

/// An alert row as read for serving.
#[derive(Debug, sqlx::FromRow)]
struct AlertRow {
    seq: i64,
    body: String,
    raised_at: DateTime<Utc>,
    published_at: Option<DateTime<Utc>>,
}

impl AlertRow {
    /// The body with `seq`, `raisedAt` and, for history, `publishedAt`.
    fn into_json(self, with_published: bool) -> Value {
        let mut item = match serde_json::from_str::<Value>(&self.body) {
            Ok(Value::Object(fields)) => fields,
            // The writers store objects; anything else is kept whole rather than lost.
            Ok(other) => Map::from_iter([("body".to_owned(), other)]),
            Err(_) => Map::from_iter([("body".to_owned(), Value::String(self.body))]),
        };
        item.insert("seq".to_owned(), Value::from(self.seq));
        item.insert(
            "raisedAt".to_owned(),
            Value::String(rfc3339(self.raised_at)),
        );
        if with_published {
            let published = self
                .published_at
                .map_or(Value::Null, |at| Value::String(rfc3339(at)));
            item.insert("publishedAt".to_owned(), published);
        }
        Value::Object(item)
    }
}

/// RFC 3339 UTC with milliseconds, as everywhere in the platform's JSON.
fn rfc3339(at: DateTime<Utc>) -> String {
    EventTime::from_millis(at.timestamp_millis())
        .map(EventTime::to_rfc3339)
        .unwrap_or_else(|_| at.to_rfc3339())
}

/// The filters both endpoints share.
#[derive(Debug, Default, Clone)]
struct Filter {
    customer: Option<CustomerId>,
    since: Option<DateTime<Utc>>,
}

/// Alerts after `after` (a `seq`) matching `filter`, oldest first, at most `limit`.
async fn fetch(
    pool: &PgPool,
    filter: &Filter,
    after: i64,
    limit: i64,
) -> Result<Vec<AlertRow>, sqlx::Error> {
    // One statement per combination of filters, so each gets the plan its index allows.
    let mut query = QueryBuilder::new(
        "SELECT seq, body::text AS body, raised_at, published_at FROM alerts WHERE seq > ",
    );
    query.push_bind(after);
    if let Some(customer) = &filter.customer {
        query
            .push(" AND customer_id = ")
            .push_bind(customer.as_str().to_owned());
    }
    if let Some(since) = filter.since {
        query.push(" AND raised_at >= ").push_bind(since);
    }
    query.push(" ORDER BY seq LIMIT ").push_bind(limit);
    query.build_query_as().fetch_all(pool).await
}

/// The opaque cursor for "after `seq`".
fn cursor(seq: i64) -> String {
    format!("a1.{seq}")
}

/// The `seq` a cursor stands for.
fn parse_cursor(text: &str) -> Option<i64> {
    text.strip_prefix("a1.")?
        .parse::<i64>()
        .ok()
        .filter(|seq| *seq >= 0)
}

/// The query's parameters as (name, value) pairs: each allowed name at most once, no
/// other names. Each problem becomes a field error.
fn parameters(
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    allowed: &[&str],
    errors: &mut Vec<FieldError>,
) -> Result<Vec<(String, String)>, Problem> {
    let Query(pairs) = query.map_err(|rejection| {
        Problem::malformed(format!("the query string cannot be read: {rejection}"))
    })?;
    let mut seen = BTreeSet::new();
    for (name, _) in &pairs {
        if !allowed.contains(&name.as_str()) {
            errors.push(field_error(
                name,
                format!(
                    "`{name}` is not a parameter of this endpoint; it takes {}",
                    allowed.join(", ")
                ),
            ));
        } else if !seen.insert(name.as_str()) {
            errors.push(field_error(
                name,
                format!("`{name}` is given more than once"),
            ));
        }
    }
    Ok(pairs)
}

/// A field error about query parameter `name` (pointed at as `/query/name`).
fn field_error(name: &str, detail: String) -> FieldError {
    FieldError {
        index: None,
        pointer: format!("/query/{name}"),
        detail,
    }
}

/// 400 listing every invalid parameter.
fn invalid_parameters(errors: Vec<FieldError>) -> Problem {
    let count = errors.len();
    Problem::malformed(format!(
        "{count} invalid query parameter(s); each is listed in `errors`"
    ))
    .with_errors(errors)
}

fn parse_customer(value: &str, errors: &mut Vec<FieldError>) -> Option<CustomerId> {
    CustomerId::parse(value)
        .map_err(|error| errors.push(field_error("customerId", format!("customerId {error}"))))
        .ok()
}

/// 503 for a store that does not answer; the cause is logged.
fn unavailable(error: &sqlx::Error) -> Problem {
    tracing::warn!(error = %error, "the alert store is unavailable");
    Problem::unavailable(
        "the alert store (Postgres) is unavailable",
        RETRY_AFTER_SECONDS,
    )
}

/// The validated history request.
#[derive(Debug)]
struct HistoryRequest {
    filter: Filter,
    after: i64,
    limit: i64,
}

fn parse_history(
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<HistoryRequest, Problem> {
    let mut errors = Vec::new();
    let pairs = parameters(
        query,
        &["customerId", "since", "cursor", "limit"],
        &mut errors,
    )?;
    let mut request = HistoryRequest {
        filter: Filter::default(),
        after: 0,
        limit: DEFAULT_LIMIT,
    };
    for (name, value) in &pairs {
        match name.as_str() {
            "customerId" => request.filter.customer = parse_customer(value, &mut errors),
            "since" => match EventTime::parse_rfc3339(value) {
                Ok(since) => {
                    request.filter.since = DateTime::from_timestamp_millis(since.as_millis());
                }
                Err(error) => errors.push(field_error("since", format!("since {error}"))),
            },
            "cursor" => match parse_cursor(value) {
                Some(after) => request.after = after,
                None => errors.push(field_error(
                    "cursor",
                    "cursor is not a cursor this API gave out; pass `nextCursor` unchanged"
                        .to_owned(),
                )),
            },
            "limit" => match value.parse::<i64>() {
                Ok(limit) if (1..=MAX_LIMIT).contains(&limit) => request.limit = limit,
                _ => errors.push(field_error(
                    "limit",
                    format!("limit must be an integer from 1 to {MAX_LIMIT}, not `{value}`"),
                )),
            },
            _ => {}
        }
    }
    if errors.is_empty() {
        Ok(request)
    } else {
        Err(invalid_parameters(errors))
    }
}

async fn history(
    State(api): State<Arc<AlertsApi>>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    match list(&api, &headers, query).await {
        Ok(page) => Json(page).into_response(),
        Err(problem) => problem.into_response(),
    }
}

async fn list(
    api: &AlertsApi,
    headers: &HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Page, Problem> {
    api.state.keys.authorize(headers, Scope::Read)?;
    let request = parse_history(query)?;
    // One more than asked: whether anything follows the page.
    let mut rows = fetch(
        &api.state.pool,
        &request.filter,
        request.after,
        request.limit + 1,
    )
    .await
    .map_err(|error| unavailable(&error))?;
    let more = rows.len() as i64 > request.limit;
    rows.truncate(request.limit as usize);
    let next_cursor = more.then(|| cursor(rows.last().map_or(request.after, |row| row.seq)));
    Ok(Page {
        alerts: rows.into_iter().map(|row| row.into_json(true)).collect(),
        next_cursor,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(query: &str) -> Result<HistoryRequest, Problem> {
        let uri: axum::http::Uri = format!("/v1/alerts?{query}").parse().unwrap();
        parse_history(Query::try_from_uri(&uri))
    }

    #[test]
    fn cursors_round_trip_and_reject_anything_else() {
        for seq in [0, 1, 42, i64::MAX] {
            assert_eq!(parse_cursor(&cursor(seq)), Some(seq));
        }
        for text in [
            "",
            "42",
            "a1.",
            "a1.-3",
            "a1.x",
            "a2.5",
            "a1.99999999999999999999",
        ] {
            assert_eq!(parse_cursor(text), None, "{text}");
        }
    }

    #[test]
    fn history_parameters_have_defaults_and_limits() {
        let request = parse("").unwrap();
        assert_eq!((request.after, request.limit), (0, DEFAULT_LIMIT));
        assert!(request.filter.customer.is_none() && request.filter.since.is_none());
        let request =
            parse("customerId=c-1&since=2026-01-02T03:04:05.678%2B01:00&cursor=a1.7&limit=1000")
                .unwrap();
        assert_eq!(request.filter.customer.unwrap().as_str(), "c-1");
        assert_eq!(
            request.filter.since.unwrap().to_rfc3339(),
            "2026-01-02T02:04:05.678+00:00"
        );
        assert_eq!((request.after, request.limit), (7, 1000));
    }

    #[test]
    fn every_bad_parameter_is_listed() {
        let problem =
            parse("limit=0&since=yesterday&cursor=nope&customer_id=x&customerId=%20").unwrap_err();
        assert_eq!(problem.status, 400);
        let pointers: Vec<&str> = problem
            .errors
            .iter()
            .map(|error| error.pointer.as_str())
            .collect();
        assert_eq!(
            pointers,
            [
                "/query/customer_id",
                "/query/limit",
                "/query/since",
                "/query/cursor",
                "/query/customerId"
            ]
        );
        for limit in ["1001", "-1", "ten", "1.5"] {
            assert!(parse(&format!("limit={limit}")).is_err(), "{limit}");
        }
        let repeated = parse("limit=5&limit=6").unwrap_err();
        assert!(repeated.errors[0].detail.contains("more than once"));
        assert!(parse("since=2026-01-02T03:04:05").is_err(), "no offset");
    }

    #[test]
    fn an_alert_is_its_body_with_seq_and_times() {
        let row = AlertRow {
            seq: 9,
            body: r#"{"alertId":"a","severity":"high"}"#.to_owned(),
            raised_at: DateTime::from_timestamp_millis(1_764_000_000_123).unwrap(),
            published_at: None,
        };
        let item = row.into_json(true);
        assert_eq!(item["alertId"], "a");
        assert_eq!(item["seq"], 9);
        assert_eq!(item["raisedAt"], "2025-11-24T16:00:00.123Z");
        assert!(item["publishedAt"].is_null());
    }
}
