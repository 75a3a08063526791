//! A minimal OTLP/HTTP collector for tests: it accepts `POST /v1/traces` and keeps the
//! request bodies (protobuf), so a test can see which spans a real process exported.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;

/// A collector listening on 127.0.0.1 on an ephemeral port.
pub struct OtlpCollector {
    endpoint: String,
    received: Arc<Mutex<Vec<Bytes>>>,
    server: tokio::task::JoinHandle<()>,
}

impl OtlpCollector {
    /// Starts the collector.
    pub async fn start() -> OtlpCollector {
        let received = Arc::new(Mutex::new(Vec::new()));
        let router = Router::new()
            .route("/v1/traces", post(collect))
            .with_state(Arc::clone(&received));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the collector");
        let endpoint = format!("http://{}", listener.local_addr().expect("address"));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        OtlpCollector {
            endpoint,
            received,
            server,
        }
    }

    /// The value for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Whether any export so far contains `needle` (span names and attribute values are
    /// plain UTF-8 inside the protobuf).
    pub fn saw(&self, needle: &str) -> bool {
        self.saw_bytes(needle.as_bytes())
    }

    /// Whether any export so far contains `needle` (e.g. a 16-byte trace id).
    pub fn saw_bytes(&self, needle: &[u8]) -> bool {
        let received = self.received.lock().expect("lock");
        received
            .iter()
            .any(|body| body.windows(needle.len()).any(|window| window == needle))
    }
}

impl Drop for OtlpCollector {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn collect(State(received): State<Arc<Mutex<Vec<Bytes>>>>, body: Bytes) -> &'static str {
    received.lock().expect("lock").push(body);
    ""
}
