//! A minimal OTLP/HTTP collector for tests: it accepts `POST /v1/traces` and keeps the
//! request bodies (protobuf), so a test can see which spans a real process exported:
//! by bytes ([`OtlpCollector::saw`]) or decoded ([`OtlpCollector::spans`]).

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;

/// One exported span: the `service.name` of the process that exported it, its name,
/// and its ids in lowercase hex (`parent_span_id` empty for a root span).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedSpan {
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
}

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

    /// Every span exported so far, in the order received (an export that does not
    /// decode fails the test).
    pub fn spans(&self) -> Vec<ExportedSpan> {
        let received = self.received.lock().expect("lock");
        let mut spans = Vec::new();
        for body in received.iter() {
            let request = ExportTraceServiceRequest::decode(body.as_ref())
                .expect("an OTLP/HTTP protobuf export");
            for resource_spans in request.resource_spans {
                let service = resource_spans
                    .resource
                    .iter()
                    .flat_map(|resource| &resource.attributes)
                    .find(|attribute| attribute.key == "service.name")
                    .and_then(
                        |attribute| match attribute.value.as_ref()?.value.as_ref()? {
                            Value::StringValue(name) => Some(name.clone()),
                            _ => None,
                        },
                    )
                    .unwrap_or_default();
                for span in resource_spans
                    .scope_spans
                    .into_iter()
                    .flat_map(|scope| scope.spans)
                {
                    spans.push(ExportedSpan {
                        service: service.clone(),
                        name: span.name,
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                    });
                }
            }
        }
        spans
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
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
