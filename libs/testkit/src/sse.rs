//! A reader of `GET /v1/alerts/stream` (Server-Sent Events).

use std::time::Duration;

use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(30);

/// One Server-Sent Event.
#[derive(Debug)]
pub struct SseEvent {
    pub id: i64,
    pub event: String,
    pub data: Value,
}

/// A reader of `GET /v1/alerts/stream`.
pub struct SseClient {
    response: reqwest::Response,
    buffer: String,
    /// The id of the last event received (0 before any).
    pub last: i64,
}

impl SseClient {
    /// Opens the stream of the serving API at `base` with `key` (scope `read`), the
    /// query string `query` and, if given, a `Last-Event-ID` header.
    pub async fn connect(
        base: &str,
        key: &str,
        query: &str,
        last_event_id: Option<i64>,
    ) -> SseClient {
        let mut request = reqwest::Client::new()
            .get(format!("{base}/v1/alerts/stream?{query}"))
            .bearer_auth(key);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        let response = request.send().await.expect("the stream answers");
        assert_eq!(response.status().as_u16(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        SseClient {
            response,
            buffer: String::new(),
            last: 0,
        }
    }

    /// The next event (comments skipped); `None` when the stream ended.
    pub async fn next_event(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut id = None;
                let mut event = String::new();
                let mut data = None;
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("id:") {
                        id = Some(value.trim().parse::<i64>().expect("a numeric id"));
                    } else if let Some(value) = line.strip_prefix("event:") {
                        event = value.trim().to_owned();
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data = Some(serde_json::from_str(value.trim()).expect("JSON data"));
                    }
                }
                if let Some(data) = data {
                    let id = id.expect("every alert event has an id");
                    assert!(
                        id > self.last,
                        "event {id} after {}: out of order or repeated",
                        self.last
                    );
                    self.last = id;
                    return Some(SseEvent { id, event, data });
                }
                continue; // a comment (keep-alive)
            }
            let chunk = tokio::time::timeout(DEADLINE, self.response.chunk())
                .await
                .expect("an event within the deadline")
                .expect("the stream reads");
            match chunk {
                Some(bytes) => self.buffer.push_str(&String::from_utf8_lossy(&bytes)),
                None => return None,
            }
        }
    }

    /// Reads until a comment line arrives; the comment's text.
    pub async fn next_comment(&mut self) -> String {
        loop {
            if let Some(line) = self.buffer.lines().find(|line| line.starts_with(':')) {
                return line.trim_start_matches(':').trim().to_owned();
            }
            let chunk = tokio::time::timeout(DEADLINE, self.response.chunk())
                .await
                .expect("a comment within the deadline")
                .expect("the stream reads")
                .expect("the stream is open");
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}
