//! Replaying a CSV file of transactions through the ingest API (`fraud-replay`,
//! `deploy/dev replay`): columns mapped to the event's fields, time optionally shifted
//! so the file's last event lands at a chosen instant, and pacing compressed by a
//! speed-up factor.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::NaiveDateTime;
use serde_json::{Value, json};

use crate::post;

/// Which column holds each field (the defaults are the Sparkov data set's).
#[derive(Debug, Clone)]
pub struct Columns {
    pub id: String,
    pub customer: String,
    pub vendor: String,
    pub amount: String,
    pub time: String,
    /// The fraud label (`1`/`true` a fraud), if the file has one.
    pub label: Option<String>,
    /// How `time` is written (chrono's `strftime` syntax), read as UTC; `rfc3339` for
    /// times with their own offset.
    pub time_format: String,
}

impl Default for Columns {
    fn default() -> Self {
        Columns {
            id: "trans_num".to_owned(),
            customer: "cc_num".to_owned(),
            vendor: "merchant".to_owned(),
            amount: "amt".to_owned(),
            time: "trans_date_trans_time".to_owned(),
            label: Some("is_fraud".to_owned()),
            time_format: "%Y-%m-%d %H:%M:%S".to_owned(),
        }
    }
}

/// One transaction of the file, its fields as written (ids and amount are never
/// parsed as numbers: card numbers exceed 2^53, and ingest parses the amount exactly).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub id: String,
    pub customer: String,
    pub vendor: String,
    pub amount: String,
    /// The file's time, UTC ms.
    pub ts: i64,
    pub label: Option<bool>,
}

/// Reads every row of the CSV file at `path` (RFC 4180: a header line, fields in
/// double quotes when they hold commas or quotes).
pub fn read_csv(path: &Path, columns: &Columns) -> anyhow::Result<Vec<Row>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let mut records = parse_csv(&text).into_iter();
    let header = records.next().context("the file is empty")?;
    let index = |name: &str| {
        header
            .iter()
            .position(|column| column == name)
            .with_context(|| format!("no column `{name}` in {}: {header:?}", path.display()))
    };
    let id = index(&columns.id)?;
    let customer = index(&columns.customer)?;
    let vendor = index(&columns.vendor)?;
    let amount = index(&columns.amount)?;
    let time = index(&columns.time)?;
    let label = columns.label.as_deref().map(index).transpose()?;
    let mut rows = Vec::new();
    for (line, record) in records.enumerate() {
        let line = line + 2;
        if record.len() != header.len() {
            bail!(
                "line {line}: {} fields, the header has {}",
                record.len(),
                header.len()
            );
        }
        let ts = parse_time(&record[time], &columns.time_format)
            .with_context(|| format!("line {line}: `{}`", record[time]))?;
        let label = match label {
            None => None,
            Some(index) => Some(match record[index].trim() {
                "1" | "true" | "TRUE" => true,
                "0" | "false" | "FALSE" | "" => false,
                other => bail!("line {line}: label `{other}` is not 0/1"),
            }),
        };
        rows.push(Row {
            id: record[id].clone(),
            customer: record[customer].clone(),
            vendor: record[vendor].clone(),
            amount: record[amount].clone(),
            ts,
            label,
        });
    }
    Ok(rows)
}

fn parse_time(text: &str, format: &str) -> anyhow::Result<i64> {
    if format == "rfc3339" {
        return Ok(fraud_domain::EventTime::parse_rfc3339(text)?.as_millis());
    }
    let time = NaiveDateTime::parse_from_str(text.trim(), format)
        .with_context(|| format!("not a time of the format `{format}`"))?;
    Ok(time.and_utc().timestamp_millis())
}

/// The records of an RFC 4180 text: fields split at commas outside quotes, `""` a
/// quote inside quotes, records at line ends outside quotes (a trailing empty line
/// ignored).
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => record.push(std::mem::take(&mut field)),
            (false, '\r') => {}
            (false, '\n') => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
            }
            (false, c) => field.push(c),
        }
    }
    if !field.is_empty() || !record.is_empty() {
        record.push(field);
        records.push(record);
    }
    records
}

/// How to replay.
#[derive(Debug, Clone)]
pub struct Options {
    /// Ingest's base URL.
    pub url: String,
    /// An API key with scope `ingest`.
    pub key: String,
    /// 1: the file's pace; N: N times faster; 0: as fast as possible.
    pub speedup: f64,
    /// Shift every time so the file's last event lands at the replay's planned end,
    /// this instant (UTC ms, the start) plus the file's span ÷ the speed-up (as fast as
    /// possible: this instant). `None`: the file's times as they are.
    pub shift_to: Option<i64>,
    /// Most transactions in one request.
    pub batch: usize,
}

/// What a replay did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub rows: usize,
    /// Newly accepted, and idempotent replays (a transaction id already accepted).
    pub accepted: usize,
    pub replayed: usize,
    /// Added to every time, ms.
    pub shift_ms: i64,
    pub first_ts: i64,
    pub last_ts: i64,
    pub requests: usize,
    /// Requests answered 429/503 and sent again.
    pub retries: usize,
    pub labelled_frauds: usize,
}

impl Summary {
    /// The summary as one JSON object.
    pub fn to_json(&self) -> Value {
        json!({
            "rows": self.rows, "accepted": self.accepted, "replayed": self.replayed,
            "shiftMs": self.shift_ms,
            "firstTs": crate::reference::instant(self.first_ts),
            "lastTs": crate::reference::instant(self.last_ts),
            "requests": self.requests, "retries": self.retries,
            "labelledFrauds": self.labelled_frauds,
        })
    }
}

/// The shift that puts the last of `rows` (in file order or not) at `to`.
pub fn shift_for(rows: &[Row], to: i64) -> i64 {
    rows.iter()
        .map(|row| row.ts)
        .max()
        .map_or(0, |last| to - last)
}

/// The event `row` posts, its time shifted by `shift_ms`.
pub fn event_json(row: &Row, shift_ms: i64) -> Value {
    json!({
        "transactionId": row.id,
        "customerId": row.customer,
        "vendorId": row.vendor,
        "transactionSum": row.amount,
        "ts": crate::reference::instant(row.ts + shift_ms),
    })
}

/// Posts `rows` in time order (stable: the file's order among equal times) in batches,
/// paced by `options.speedup`, through the shared posting loop
/// ([`crate::post::post_lanes`], one lane): a 429 or 503 is waited out (`Retry-After`)
/// and the same batch sent again, which is idempotent. Any other answer than 202 fails
/// the replay.
pub async fn replay(rows: &[Row], options: &Options) -> anyhow::Result<Summary> {
    if rows.is_empty() {
        bail!("no rows to replay");
    }
    let mut order: Vec<&Row> = rows.iter().collect();
    order.sort_by_key(|row| row.ts);
    let first = order[0].ts;
    let last = order[order.len() - 1].ts;
    let span = Duration::from_millis(u64::try_from(last - first).unwrap_or(0));
    let planned = if options.speedup > 0.0 {
        span.div_f64(options.speedup)
    } else {
        Duration::ZERO
    };
    let shift_ms = options.shift_to.map_or(0, |to| {
        to + i64::try_from(planned.as_millis()).unwrap_or(i64::MAX) - last
    });
    let due = |row: &Row| {
        if options.speedup > 0.0 {
            Duration::from_millis(u64::try_from(row.ts - first).unwrap_or(0))
                .div_f64(options.speedup)
        } else {
            Duration::ZERO
        }
    };
    let lane: Vec<post::Item> = order
        .iter()
        .enumerate()
        .map(|(index, row)| (due(row), index))
        .collect();
    let target = post::Target {
        url: options.url.clone(),
        key: options.key.clone(),
    };
    let posting = post::Options {
        batch: options.batch,
        ..post::Options::default()
    };
    let body = |index: usize| event_json(order[index], shift_ms);
    let (_, counts) = post::post_lanes(&target, &[lane], Instant::now(), &posting, &body).await?;
    Ok(Summary {
        rows: rows.len(),
        accepted: counts.accepted,
        replayed: counts.replayed,
        shift_ms,
        first_ts: first + shift_ms,
        last_ts: last + shift_ms,
        requests: counts.requests,
        retries: counts.retries,
        labelled_frauds: rows.iter().filter(|row| row.label == Some(true)).count(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_fields_keep_their_commas_and_quotes_and_ids_stay_text() {
        let text = "trans_num,trans_date_trans_time,cc_num,merchant,amt,is_fraud\r\n\
                    t1,2020-06-21 12:14:25,4716123412341234567,\"Kirlin, \"\"and\"\" Sons\",2.86,0\n\
                    t2,2020-06-21 12:15:00,42,shop,1000.10,1\n";
        let path = std::env::temp_dir().join(fraud_testkit::unique_name("replay-csv"));
        std::fs::write(&path, text).unwrap();
        let rows = read_csv(&path, &Columns::default()).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            rows[0],
            Row {
                id: "t1".into(),
                customer: "4716123412341234567".into(),
                vendor: "Kirlin, \"and\" Sons".into(),
                amount: "2.86".into(),
                ts: 1_592_741_665_000,
                label: Some(false),
            }
        );
        assert_eq!(rows[1].label, Some(true));
        assert_eq!(
            event_json(&rows[1], 1_000)["ts"],
            "2020-06-21T12:15:01.000Z"
        );
        assert_eq!(shift_for(&rows, 1_592_741_700_000 + 5), 5);
    }

    #[test]
    fn a_missing_column_is_named() {
        let path = std::env::temp_dir().join(fraud_testkit::unique_name("replay-csv"));
        std::fs::write(&path, "a,b\n1,2\n").unwrap();
        let error = read_csv(&path, &Columns::default()).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(
            error.to_string().contains("no column `trans_num`"),
            "{error}"
        );
    }

    /// Paced at 4 times the file's pace, a file spanning 2 s takes about 0.5 s, and the
    /// last event lands at the end of the replay.
    #[tokio::test]
    async fn a_speedup_paces_the_posts_and_the_shift_puts_the_last_event_at_the_end() {
        use std::sync::{Arc, Mutex};
        let seen: Arc<Mutex<Vec<(Instant, Value)>>> = Arc::default();
        let recorder = seen.clone();
        let app = axum::Router::new().route(
            "/v1/transactions",
            axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
                let recorder = recorder.clone();
                async move {
                    let count = body.as_array().map_or(1, Vec::len);
                    recorder.lock().unwrap().push((Instant::now(), body));
                    (
                        axum::http::StatusCode::ACCEPTED,
                        axum::Json(json!({"accepted": count, "replayed": 0})),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let row = |id: &str, ts: i64| Row {
            id: id.into(),
            customer: "c".into(),
            vendor: "v".into(),
            amount: "1.00".into(),
            ts,
            label: None,
        };
        let rows = [row("t3", 12_000), row("t1", 10_000), row("t2", 11_000)];
        let start = chrono::Utc::now().timestamp_millis();
        let options = Options {
            url,
            key: "k".into(),
            speedup: 4.0,
            shift_to: Some(start),
            batch: 100,
        };
        let began = Instant::now();
        let summary = replay(&rows, &options).await.unwrap();
        let took = began.elapsed();
        assert!(
            took >= Duration::from_millis(500) && took < Duration::from_secs(3),
            "{took:?}"
        );
        assert_eq!(summary.accepted, 3);
        assert_eq!(summary.shift_ms, start + 500 - 12_000);
        let seen = seen.lock().unwrap();
        let ids: Vec<&str> = seen
            .iter()
            .flat_map(|(_, body)| body.as_array().unwrap().iter())
            .map(|event| event["transactionId"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["t1", "t2", "t3"], "in time order");
        let gap = seen[seen.len() - 1].0 - seen[0].0;
        assert!(gap >= Duration::from_millis(450), "{gap:?}");
    }
}
