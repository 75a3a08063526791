//! W3C trace context in message headers (Kafka records, AMQP messages).
//!
//! The producer side calls [`current_context_headers`] and attaches the pairs to the
//! message; the consumer side calls [`context_from_headers`] and makes the result the
//! parent of its processing span, so one trace spans every hop.

use std::collections::HashMap;

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The `traceparent` (and `tracestate`) headers for the current span, if it is traced.
pub fn current_context_headers() -> Vec<(String, String)> {
    let context = tracing::Span::current().context();
    let mut carrier = HeaderCarrier::default();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut carrier);
    });
    carrier.0.into_iter().collect()
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
