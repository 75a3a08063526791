//! W3C trace context in message headers (HTTP requests, Kafka records, AMQP messages).
//!
//! Every hop that receives a context and sends one on is written the same way: a span
//! of its own for the work, made a child of the received context with [`follow`], and
//! the headers it sends built by [`headers_for`] from that span. So each hop is a span
//! of the caller's trace, and the next hop's parent is this span, not the caller's.
//!
//! When spans are not traced (no OTLP export configured, so no OpenTelemetry layer, or
//! the span is filtered out), [`headers_for`] sends the received `traceparent` and
//! `tracestate` on unchanged: the caller's trace id still reaches the alert.

use std::collections::HashMap;

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The W3C trace-context headers: what [`headers_for`] sends and [`follow`] reads.
pub const TRACE_HEADERS: [&str; 2] = ["traceparent", "tracestate"];

/// Makes `span` a child of the remote context carried by `received` (header name and
/// value pairs, as they arrived). Call it before the span is entered or its context
/// read. Without a valid `traceparent`, or without the OpenTelemetry layer, the span is
/// left as it is (a new trace when traced).
pub fn follow(span: &Span, received: &[(&str, &str)]) {
    let parent = context_from_headers(received.iter().copied());
    if parent.span().span_context().is_valid() {
        // Without an OpenTelemetry layer (or for a disabled span) this is a no-op.
        let _ = span.set_parent(parent);
    }
}

/// The trace-context headers to send on behalf of `span`: its own context when it is
/// traced, else the `traceparent` and `tracestate` of `received` unchanged.
pub fn headers_for(span: &Span, received: &[(&str, &str)]) -> Vec<(String, String)> {
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return received
            .iter()
            .filter(|(name, value)| {
                !value.is_empty()
                    && TRACE_HEADERS
                        .iter()
                        .any(|trace| name.eq_ignore_ascii_case(trace))
            })
            .map(|(name, value)| (name.to_ascii_lowercase(), (*value).to_owned()))
            .collect();
    }
    let mut carrier = HeaderCarrier::default();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut carrier);
    });
    let mut headers: Vec<(String, String)> = carrier
        .0
        .into_iter()
        .filter(|(_, value)| !value.is_empty())
        .collect();
    headers.sort();
    headers
}

/// The remote trace context carried by `headers` (name, value pairs).
pub fn context_from_headers<'a>(headers: impl IntoIterator<Item = (&'a str, &'a str)>) -> Context {
    let carrier = HeaderCarrier(
        headers
            .into_iter()
            .map(|(name, value)| (name.to_ascii_lowercase(), value.to_owned()))
            .collect(),
    );
    opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(&carrier))
}

#[derive(Default)]
struct HeaderCarrier(HashMap<String, String>);

impl Injector for HeaderCarrier {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

impl Extractor for HeaderCarrier {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
    const PARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn untraced_spans_send_the_received_context_on_unchanged() {
        let span = tracing::info_span!("untraced");
        let received = [
            ("TraceParent", PARENT),
            ("tracestate", "vendor=1"),
            ("schema-version", "2"),
            ("tracestate", ""),
        ];
        follow(&span, &received);
        assert_eq!(
            headers_for(&span, &received),
            vec![
                ("traceparent".to_owned(), PARENT.to_owned()),
                ("tracestate".to_owned(), "vendor=1".to_owned()),
            ]
        );
    }

    #[test]
    fn a_traced_span_continues_the_received_trace_as_a_child() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("hop");
            let received = [("traceparent", PARENT), ("tracestate", "vendor=1")];
            follow(&span, &received);
            let sent = headers_for(&span, &received);
            let traceparent = &sent[0];
            assert_eq!(traceparent.0, "traceparent");
            let parts: Vec<&str> = traceparent.1.split('-').collect();
            assert_eq!(parts[1], TRACE_ID, "the same trace: {sent:?}");
            assert_ne!(parts[2], "b7ad6b7169203331", "the hop's own span: {sent:?}");
            assert_eq!(parts[3], "01");
            assert_eq!(sent[1], ("tracestate".to_owned(), "vendor=1".to_owned()));

            // Without a received context the span starts a trace of its own.
            let root = tracing::info_span!("root");
            follow(&root, &[]);
            let sent = headers_for(&root, &[]);
            assert_eq!(sent.len(), 1, "{sent:?}");
            assert!(!sent[0].1.contains(TRACE_ID), "{sent:?}");
        });
    }
}
