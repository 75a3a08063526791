//! `GET /v1/alerts/stream`: alerts as Server-Sent Events, resumable.
//!
//! Each alert is one event: `event: alert`, `id: <seq>`, `data: <the alert as JSON>`
//! (its body with `seq` and `raisedAt`). A stream starts after the `Last-Event-ID`
//! header or, without it, the `lastEventId` query parameter (the header wins: a browser's
//! `EventSource` reconnects to the same URL with the header set to the last id it saw);
//! without either it starts at the latest alert, with only what comes next. It first
//! replays what was committed after that id, then follows new alerts as they commit;
//! `seq` order is commit order, so nothing is missed or repeated across a reconnect.
//! `customerId` keeps one customer's alerts.
//!
//! Memory per stream is bounded: alerts are read [`PAGE`] at a time, the next page only
//! once the client has taken the last, and a stream holds one page at most. Waiting
//! costs nothing but a watch ([`crate::relay::signal`]): no connection or query per
//! stream until an alert is committed, and then at most [`super::STREAM_READERS`]
//! streams read at a time, so streams never hold more of the Postgres pool than that
//! (the risk endpoints share it). A comment line goes out every
//! [`KEEP_ALIVE`] so proxies keep the connection open. Streams end when the service
//! shuts down; at most [`super::MAX_STREAMS`] are open at once (503 beyond).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use fraud_config::Scope;
use fraud_service::problem::{FieldError, Problem};
use sqlx::PgPool;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use super::{
    AlertRow, AlertsApi, Filter, field_error, invalid_parameters, parameters, parse_customer,
};

/// Alerts read from Postgres at a time, per stream.
pub const PAGE: i64 = 100;
/// How often a comment keeps an idle stream's connection alive.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// The wait before a stream reads again after Postgres failed.
const RETRY: Duration = Duration::from_secs(1);
/// The header a reconnecting client sends.
const LAST_EVENT_ID: &str = "last-event-id";

/// A validated stream request.
#[derive(Debug)]
struct StreamRequest {
    filter: Filter,
    /// The id (a `seq`) to resume after, if the client gave one.
    resume_after: Option<i64>,
}

fn parse_stream(
    headers: &HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<StreamRequest, Problem> {
    let mut errors = Vec::new();
    let pairs = parameters(query, &["customerId", "lastEventId"], &mut errors)?;
    let mut request = StreamRequest {
        filter: Filter::default(),
        resume_after: None,
    };
    let mut from_query = None;
    for (name, value) in &pairs {
        match name.as_str() {
            "customerId" => request.filter.customer = parse_customer(value, &mut errors),
            "lastEventId" => from_query = Some(value.clone()),
            _ => {}
        }
    }
    let from_header = match headers.get(LAST_EVENT_ID).map(|value| value.to_str()) {
        None => None,
        Some(Ok(text)) => Some(text.to_owned()),
        Some(Err(_)) => {
            errors.push(header_error(
                "the Last-Event-ID header is not ASCII text".to_owned(),
            ));
            None
        }
    };
    // An empty Last-Event-ID is what a client that saw no event yet may send: no id.
    let (source, id) = match (from_header.filter(|id| !id.trim().is_empty()), from_query) {
        (Some(id), _) => ("Last-Event-ID", Some(id)),
        (None, Some(id)) => ("lastEventId", Some(id)),
        (None, None) => ("", None),
    };
    let from_header_won = source == "Last-Event-ID";
    if let Some(id) = id {
        match id.trim().parse::<i64>() {
            Ok(seq) if seq >= 0 => request.resume_after = Some(seq),
            _ => {
                let detail = format!(
                    "{source} must be the id (a non-negative integer) of an event this stream sent, not `{id}`"
                );
                errors.push(if from_header_won {
                    header_error(detail)
                } else {
                    field_error("lastEventId", detail)
                });
            }
        }
    }
    if errors.is_empty() {
        Ok(request)
    } else {
        Err(invalid_parameters(errors))
    }
}

/// A field error about the `Last-Event-ID` header (pointed at as `/header/Last-Event-ID`).
fn header_error(detail: String) -> FieldError {
    FieldError {
        index: None,
        pointer: "/header/Last-Event-ID".to_owned(),
        detail,
    }
}

pub(super) async fn stream(
    State(api): State<Arc<AlertsApi>>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    match open(&api, &headers, query).await {
        Ok(follower) => Sse::new(follower.into_events())
            .keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"))
            .into_response(),
        Err(problem) => problem.into_response(),
    }
}

async fn open(
    api: &AlertsApi,
    headers: &HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Follower, Problem> {
    api.state.keys.authorize(headers, Scope::Read)?;
    let request = parse_stream(headers, query)?;
    let permit = Arc::clone(&api.streams).try_acquire_owned().map_err(|_| {
        Problem::unavailable(
            format!(
                "this instance already serves {} alert streams",
                super::MAX_STREAMS
            ),
            super::RETRY_AFTER_SECONDS,
        )
    })?;
    let latest: i64 = sqlx::query_scalar("SELECT coalesce(max(seq), 0) FROM alerts")
        .fetch_one(&api.state.pool)
        .await
        .map_err(|error| super::unavailable(&error))?;
    let after = match request.resume_after {
        None => latest,
        // Ids only come from committed alerts, which every later query sees: a larger
        // one was never sent by this API (another database, a made-up id), and waiting
        // for it would silently skip every alert up to it.
        Some(id) if id > latest => {
            return Err(invalid_parameters(vec![field_error(
                "lastEventId",
                format!(
                    "event id {id} is beyond the latest alert ({latest}); it was not sent by this API"
                ),
            )]));
        }
        Some(id) => id,
    };
    Ok(Follower {
        pool: api.state.pool.clone(),
        filter: request.filter,
        after,
        signal: api.signal.subscribe(),
        readers: Arc::clone(&api.readers),
        buffer: VecDeque::new(),
        _permit: permit,
    })
}

/// One stream's position and its current page.
struct Follower {
    pool: PgPool,
    filter: Filter,
    /// The `seq` of the last event sent (or the starting point).
    after: i64,
    signal: watch::Receiver<i64>,
    /// Taken for each read: at most [`super::STREAM_READERS`] streams read at once.
    readers: Arc<Semaphore>,
    /// At most [`PAGE`] alerts read but not yet sent.
    buffer: VecDeque<AlertRow>,
    _permit: OwnedSemaphorePermit,
}

impl Follower {
    fn into_events(self) -> impl futures::Stream<Item = Result<Event, Infallible>> {
        futures::stream::unfold(self, |mut follower| async move {
            let event = follower.next_event().await?;
            Some((Ok(event), follower))
        })
    }

    /// The next alert as an event; `None` once the service shuts down.
    async fn next_event(&mut self) -> Option<Event> {
        loop {
            if self.signal.has_changed().is_err() {
                return None; // shutting down
            }
            if let Some(row) = self.buffer.pop_front() {
                debug_assert!(row.seq > self.after, "events go out in seq order, once");
                self.after = row.seq;
                let id = row.seq.to_string();
                let data = row.into_json(false).to_string();
                return Some(Event::default().event("alert").id(id).data(data));
            }
            // Marked seen before reading: an alert committed from here on wakes the wait.
            self.signal.borrow_and_update();
            let read = async {
                let _reader = self.readers.acquire().await;
                super::fetch(&self.pool, &self.filter, self.after, PAGE).await
            };
            match read.await {
                Ok(rows) if !rows.is_empty() => self.buffer.extend(rows),
                Ok(_) => self.signal.changed().await.ok()?,
                Err(error) => {
                    tracing::warn!(error = %error, "an alert stream cannot read; retrying");
                    tokio::select! {
                        changed = self.signal.changed() => changed.ok()?,
                        () = tokio::time::sleep(RETRY) => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn parse(query: &str, header: Option<&str>) -> Result<StreamRequest, Problem> {
        let uri: axum::http::Uri = format!("/v1/alerts/stream?{query}").parse().unwrap();
        let mut headers = HeaderMap::new();
        if let Some(value) = header {
            headers.insert(LAST_EVENT_ID, HeaderValue::from_str(value).unwrap());
        }
        parse_stream(&headers, Query::try_from_uri(&uri))
    }

    #[test]
    fn the_header_wins_over_the_query() {
        assert_eq!(parse("", None).unwrap().resume_after, None);
        assert_eq!(parse("lastEventId=5", None).unwrap().resume_after, Some(5));
        assert_eq!(
            parse("lastEventId=5", Some("9")).unwrap().resume_after,
            Some(9)
        );
        assert_eq!(
            parse("lastEventId=5", Some("")).unwrap().resume_after,
            Some(5)
        );
        assert_eq!(parse("", Some("0")).unwrap().resume_after, Some(0));
    }

    #[test]
    fn bad_ids_and_parameters_are_400() {
        for (query, header) in [
            ("lastEventId=x", None),
            ("lastEventId=-1", None),
            ("", Some("abc")),
            ("limit=5", None),
            ("customerId=", None),
        ] {
            let problem = parse(query, header)
                .err()
                .unwrap_or_else(|| panic!("{query} {header:?}"));
            assert_eq!(problem.status, 400);
        }
    }
}
