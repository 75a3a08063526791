//! A polled batch: records decoded and grouped into one run per customer.

use std::collections::HashMap;

use fraud_events::{SCHEMA_VERSION_HEADER, TransactionEvent};
use fraud_speed_view::{Record, digest};
use fraud_telemetry::propagation::TRACE_HEADERS;
use rdkafka::Message;
use rdkafka::message::{BorrowedMessage, Headers};

/// One customer's records of a batch, in offset order.
#[derive(Debug)]
pub(crate) struct Run {
    pub customer: String,
    pub partition: i32,
    pub records: Vec<Record>,
    /// Each record's event (beside `records`), to describe the applied ones in the
    /// update.
    pub events: Vec<TransactionEvent>,
    /// The last record's trace-context headers: the parent of the update's span.
    pub trace: Vec<(String, String)>,
}

/// A batch of records, grouped by customer.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub runs: Vec<Run>,
    by_customer: HashMap<String, usize>,
    /// Per partition: the last offset polled and that record's timestamp.
    pub ends: HashMap<i32, (i64, Option<i64>)>,
    /// Per partition: the first offset polled.
    pub starts: HashMap<i32, i64>,
    pub records: usize,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Adds a polled record. One that does not decode is skipped (and counted): a
    /// window cannot use it, and stopping would stop every customer's window.
    pub fn push(&mut self, message: &BorrowedMessage<'_>) {
        let partition = message.partition();
        let offset = message.offset();
        self.records += 1;
        self.starts.entry(partition).or_insert(offset);
        self.ends
            .insert(partition, (offset, message.timestamp().to_millis()));
        let version = header(message, SCHEMA_VERSION_HEADER);
        let event = match fraud_events::decode(version, message.payload().unwrap_or_default()) {
            Ok(event) => event,
            Err(error) => {
                metrics::counter!("speed_records_total", "outcome" => "undecodable").increment(1);
                tracing::error!(
                    topic = message.topic(),
                    partition,
                    offset,
                    %error,
                    "undecodable record skipped"
                );
                return;
            }
        };
        let record = Record {
            offset,
            ts: event.event_time.as_millis(),
            amount: event.amount.minor(),
            vendor: digest(event.vendor_id.as_str()),
            transaction: digest(event.transaction_id.as_str()),
        };
        let trace = TRACE_HEADERS
            .iter()
            .filter_map(|name| {
                let value = std::str::from_utf8(header(message, name)?).ok()?;
                Some(((*name).to_owned(), value.to_owned()))
            })
            .collect();
        let customer = event.customer_id.as_str().to_owned();
        match self.by_customer.get(&customer) {
            Some(&index) => {
                let run = &mut self.runs[index];
                run.records.push(record);
                run.events.push(event);
                run.trace = trace;
            }
            None => {
                self.by_customer.insert(customer.clone(), self.runs.len());
                self.runs.push(Run {
                    customer,
                    partition,
                    records: vec![record],
                    events: vec![event],
                    trace,
                });
            }
        }
    }
}

fn header<'a>(message: &'a BorrowedMessage<'_>, name: &str) -> Option<&'a [u8]> {
    message.headers().and_then(|headers| {
        headers
            .iter()
            .find(|header| header.key == name)
            .and_then(|header| header.value)
    })
}
