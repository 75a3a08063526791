//! The ingest HTTP API: `POST /v1/transactions` and `GET /openapi.json`.
//!
//! A request goes through, in order: authentication (scope `ingest`, 401/403), the
//! caller's rate limit (429), the instance's limit of requests in flight (503 with
//! `Retry-After` at once, so an overload sheds load instead of queueing it), the media
//! type (415), the body size (413), decoding (400)
//! and validation of every item (413 for too many, 422 listing every invalid field);
//! then the idempotency keys (409 for an id reused with other content), producing to
//! Kafka (503 with `Retry-After` under back-pressure) and the answer (202), which means
//! every event of the request is durable in Kafka. Nothing of a rejected request is
//! produced.

/// The body decoder and validator (the `fraud-intake` crate).
pub use fraud_intake as decode;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use fraud_config::{Scope, Settings};
use fraud_domain::{Currency, EventTime, Money};
use fraud_events::TransactionEvent;
use fraud_service::auth::ApiKeys;
use fraud_service::problem::{FieldError, Problem};
use fraud_service::rate_limit::RateLimiter;
use serde::Serialize;

use crate::idempotency::{Idempotency, Reservation};
use crate::publish::{PublishError, Publisher};
use decode::{Framing, Rules};

/// The OpenAPI document of this API with the default configuration; `/openapi.json`
/// serves it with the instance's limits ([`document`]).
pub const OPENAPI: &str = include_str!("../../openapi.json");

/// [`OPENAPI`] for an instance that accepts `currency` only, amounts up to `max_amount`
/// and batches of up to `max_items`: what its `/openapi.json` serves, so the schema
/// says exactly what it takes.
pub fn document(currency: Currency, max_amount: Money, max_items: usize) -> String {
    let mut document: serde_json::Value =
        serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
    if let Some(batch) = document.pointer_mut(
        "/paths/~1v1~1transactions/post/requestBody/content/application~1json/schema/oneOf/1",
    ) {
        batch["maxItems"] = serde_json::json!(max_items);
    }
    let fields = &mut document["components"]["schemas"]["Transaction"]["properties"];
    fields["currency"]["enum"] = serde_json::json!([currency.as_str(), null]);
    // The limit as the JSON number its decimal text is ("5000.00"), read by serde_json:
    // no arithmetic on money here.
    fields["transactionSum"]["oneOf"][0]["maximum"] =
        serde_json::from_str(&max_amount.to_string()).expect("an amount is a JSON number");
    document.to_string()
}

/// Media type of newline-delimited JSON.
pub const NDJSON: &str = "application/x-ndjson";

/// Seconds a client should wait after a 503.
const RETRY_AFTER_SECONDS: u64 = 1;

/// Everything a request needs.
pub struct Ingest {
    keys: ApiKeys,
    limiter: RateLimiter,
    currency: Currency,
    max_amount: Money,
    max_future_skew_ms: i64,
    max_items: usize,
    max_body_bytes: usize,
    idempotency: Idempotency,
    publisher: Publisher,
    openapi: String,
    /// One permit per request being worked on (`ingest.max_in_flight_requests`).
    in_flight: tokio::sync::Semaphore,
}

impl Ingest {
    /// The API's state from the configuration and its servers.
    pub fn new(
        settings: &Settings,
        idempotency: Idempotency,
        publisher: Publisher,
    ) -> anyhow::Result<Self> {
        let config = &settings.ingest;
        let currency = Currency::parse(&config.currency)?;
        let max_amount = Money::from_minor(config.max_amount_minor);
        let max_items = usize::try_from(config.max_batch_items).unwrap_or(usize::MAX);
        Ok(Self {
            keys: ApiKeys::from_config(&settings.auth),
            limiter: RateLimiter::new(config.rate_limit_per_second, config.rate_limit_burst),
            openapi: document(currency, max_amount, max_items),
            currency,
            max_amount,
            max_future_skew_ms: i64::try_from(config.max_future_skew_ms).unwrap_or(i64::MAX),
            max_items,
            max_body_bytes: usize::try_from(config.max_body_bytes).unwrap_or(usize::MAX),
            idempotency,
            publisher,
            in_flight: tokio::sync::Semaphore::new(
                usize::try_from(config.max_in_flight_requests).unwrap_or(usize::MAX),
            ),
        })
    }
}

/// The API's routes.
pub fn routes(ingest: Arc<Ingest>) -> Router {
    Router::new()
        .route("/v1/transactions", post(post_transactions))
        .route("/openapi.json", get(openapi))
        .with_state(ingest)
}

async fn openapi(State(ingest): State<Arc<Ingest>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        ingest.openapi.clone(),
    )
}

/// One transaction of the answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Accepted {
    transaction_id: String,
    /// True when this transaction had been accepted before (an idempotent replay).
    replayed: bool,
}

/// The answer to a batch.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct BatchAccepted {
    accepted: usize,
    replayed: usize,
    transactions: Vec<Accepted>,
}

async fn post_transactions(
    State(ingest): State<Arc<Ingest>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match accept(&ingest, &headers, body).await {
        Ok(response) => response,
        Err(problem) => {
            metrics::counter!("ingest_rejected_requests_total", "status" => problem.status.to_string())
                .increment(1);
            problem.into_response()
        }
    }
}

async fn accept(ingest: &Ingest, headers: &HeaderMap, body: Body) -> Result<Response, Problem> {
    let caller = ingest.keys.authorize(headers, Scope::Ingest)?;
    ingest
        .limiter
        .acquire(&caller.key_name)
        .map_err(Problem::rate_limited)?;
    // Held until the answer is made; nothing of a request refused here was read.
    let _working = ingest.in_flight.try_acquire().map_err(|_| {
        Problem::unavailable(
            "this instance is working on as many requests as it may; retry",
            RETRY_AFTER_SECONDS,
        )
    })?;
    let ndjson = media_type_is_ndjson(headers)?;
    let bytes = read_body(body, ingest.max_body_bytes).await?;
    let (framing, items) = if ndjson {
        (Framing::Batch, decode::split_ndjson(&bytes)?)
    } else {
        decode::split_json(&bytes)?
    };
    let rules = Rules {
        currency: ingest.currency,
        max_amount: ingest.max_amount,
        max_future_skew_ms: ingest.max_future_skew_ms,
        max_items: ingest.max_items,
        now: EventTime::now(),
    };
    let events = decode::validate(framing, &items, &rules)?;
    let replayed = store(ingest, &events, &trace_headers(headers)).await?;

    let accepted_count = replayed.iter().filter(|was| !**was).count();
    metrics::counter!("ingest_transactions_total", "outcome" => "accepted")
        .increment(accepted_count as u64);
    metrics::counter!("ingest_transactions_total", "outcome" => "replayed")
        .increment((replayed.len() - accepted_count) as u64);
    let mut answers = events
        .iter()
        .zip(&replayed)
        .map(|(event, replayed)| Accepted {
            transaction_id: event.transaction_id.as_str().to_owned(),
            replayed: *replayed,
        });
    let response = match framing {
        Framing::Single => {
            let answer = answers.next().ok_or_else(Problem::internal)?;
            let replay = answer.replayed;
            let mut response = (StatusCode::ACCEPTED, Json(answer)).into_response();
            if replay {
                response
                    .headers_mut()
                    .insert("idempotent-replayed", HeaderValue::from_static("true"));
            }
            response
        }
        Framing::Batch => {
            let transactions: Vec<Accepted> = answers.collect();
            let body = BatchAccepted {
                accepted: accepted_count,
                replayed: transactions.len() - accepted_count,
                transactions,
            };
            (StatusCode::ACCEPTED, Json(body)).into_response()
        }
    };
    Ok(response)
}

/// The trace context the records carry: the request span's (which continues the
/// caller's `traceparent`, or starts a trace), or the caller's headers as they came when
/// spans are not traced.
fn trace_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    let received: Vec<(&str, &str)> = fraud_telemetry::propagation::TRACE_HEADERS
        .iter()
        .filter_map(|name| Some((*name, headers.get(*name)?.to_str().ok()?)))
        .collect();
    fraud_telemetry::propagation::headers_for(&tracing::Span::current(), &received)
}

/// Makes every event durable exactly once (each record carrying `trace`); returns, per
/// event, whether it was a replay.
async fn store(
    ingest: &Ingest,
    events: &[TransactionEvent],
    trace: &[(String, String)],
) -> Result<Vec<bool>, Problem> {
    let fingerprints: Vec<String> = events
        .iter()
        .map(TransactionEvent::content_fingerprint)
        .collect();

    // The same id twice in one request: once if the content agrees, else a conflict.
    let mut first_of: HashMap<&str, usize> = HashMap::new();
    let mut repeat_of: Vec<Option<usize>> = vec![None; events.len()];
    let mut conflicts = Vec::new();
    for (index, event) in events.iter().enumerate() {
        let id = event.transaction_id.as_str();
        match first_of.get(id) {
            None => {
                first_of.insert(id, index);
            }
            Some(&first) if fingerprints[first] == fingerprints[index] => {
                repeat_of[index] = Some(first)
            }
            Some(&first) => conflicts.push(conflict(
                index,
                &format!("repeats the transactionId of item {first} with other content"),
            )),
        }
    }
    if !conflicts.is_empty() {
        return Err(conflict_problem(conflicts));
    }

    let unique: Vec<usize> = (0..events.len())
        .filter(|&i| repeat_of[i].is_none())
        .collect();
    let keys: Vec<(&str, &str)> = unique
        .iter()
        .map(|&i| (events[i].transaction_id.as_str(), fingerprints[i].as_str()))
        .collect();
    let (claim, reservations) = ingest.idempotency.claim(&keys).await.map_err(unavailable)?;

    let reserved: Vec<(&str, &str)> = keys
        .iter()
        .zip(&reservations)
        .filter(|(_, reservation)| **reservation == Reservation::Reserved)
        .map(|(key, _)| *key)
        .collect();
    let conflicts: Vec<FieldError> = unique
        .iter()
        .zip(&reservations)
        .filter(|(_, reservation)| **reservation == Reservation::Conflict)
        .map(|(&i, _)| conflict(i, "was already accepted with other content"))
        .collect();
    let in_flight = reservations.contains(&Reservation::InFlight);
    if !conflicts.is_empty() || in_flight {
        ingest
            .idempotency
            .release(&claim, &reserved)
            .await
            .map_err(unavailable)?;
        if !conflicts.is_empty() {
            return Err(conflict_problem(conflicts));
        }
        return Err(Problem::unavailable(
            "another request is accepting the same transaction right now; retry",
            RETRY_AFTER_SECONDS,
        ));
    }

    let to_produce: Vec<usize> = unique
        .iter()
        .zip(&reservations)
        .filter(|(_, reservation)| **reservation == Reservation::Reserved)
        .map(|(&i, _)| i)
        .collect();
    let batch: Vec<&TransactionEvent> = to_produce.iter().map(|&i| &events[i]).collect();
    let results = ingest.publisher.publish_all(&batch, trace).await;

    let mut produced = Vec::new();
    let mut failed = Vec::new();
    let mut queue_full = false;
    for (&i, result) in to_produce.iter().zip(&results) {
        let key = (events[i].transaction_id.as_str(), fingerprints[i].as_str());
        match result {
            Ok(()) => produced.push(key),
            Err(error) => {
                queue_full |= *error == PublishError::QueueFull;
                failed.push(key);
            }
        }
    }
    // The claims of what failed go first: the confirmation covers every claim the
    // request still holds.
    ingest
        .idempotency
        .release(&claim, &failed)
        .await
        .map_err(unavailable)?;
    if !produced.is_empty() {
        ingest
            .idempotency
            .confirm(&claim)
            .await
            .map_err(unavailable)?;
    }
    if !failed.is_empty() {
        let detail = if queue_full {
            "the producer queue is full; retry the request (accepted items are replays then)"
        } else {
            "Kafka did not acknowledge every transaction; retry the request (accepted items are replays then)"
        };
        tracing::warn!(
            failed = failed.len(),
            produced = produced.len(),
            queue_full,
            "transactions not produced"
        );
        return Err(Problem::unavailable(detail, RETRY_AFTER_SECONDS));
    }

    let mut replayed: Vec<bool> = vec![true; events.len()];
    for &i in &to_produce {
        replayed[i] = false;
    }
    Ok(replayed)
}

fn conflict(index: usize, detail: &str) -> FieldError {
    FieldError {
        index: Some(index),
        pointer: format!("/{index}/transactionId"),
        detail: format!("transactionId {detail}"),
    }
}

fn conflict_problem(errors: Vec<FieldError>) -> Problem {
    Problem::new(StatusCode::CONFLICT, "conflict", "Conflict")
        .with_detail("a transactionId is reused for a different transaction; nothing was accepted")
        .with_errors(errors)
}

fn unavailable(error: crate::idempotency::Unavailable) -> Problem {
    tracing::error!(%error, "idempotency store unavailable");
    Problem::unavailable(
        "a server the API needs is unavailable; retry",
        RETRY_AFTER_SECONDS,
    )
}

/// Whether the body is NDJSON (`false`: JSON); 415 for any other media type.
fn media_type_is_ndjson(headers: &HeaderMap) -> Result<bool, Problem> {
    let media_type = Problem::media_type(headers);
    match media_type.as_deref() {
        Some("application/json") => Ok(false),
        Some(NDJSON) | Some("application/ndjson") => Ok(true),
        Some(other) => Err(Problem::unsupported_media_type(format!(
            "`{other}` is not accepted; send application/json or {NDJSON}"
        ))),
        None => Err(Problem::unsupported_media_type(format!(
            "no Content-Type; send application/json or {NDJSON}"
        ))),
    }
}

async fn read_body(body: Body, limit: usize) -> Result<axum::body::Bytes, Problem> {
    axum::body::to_bytes(body, limit).await.map_err(|error| {
        let too_large = std::error::Error::source(&error)
            .is_some_and(|source| source.is::<http_body_util::LengthLimitError>());
        if too_large {
            Problem::too_large(format!("the body exceeds {limit} bytes"))
        } else {
            Problem::malformed(format!("the body could not be read: {error}"))
        }
    })
}
