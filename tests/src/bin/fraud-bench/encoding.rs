//! `fraud-bench encoding`: the transaction record's encoding, chosen by measurement.
//!
//! The same realistic events (the ingest benchmark's generator) are encoded and decoded
//! with the platform's encoding (JSON, schema version 1, `fraud_events`) and with a
//! compact binary layout of the same fields (the best case for a schema'd binary format
//! such as Avro or Protobuf: no field names, fixed-width numbers, length-prefixed
//! strings). Both decoders build the same validated domain types. The figures are per
//! event, from one run, and the binary layout is the reference.

use std::fmt::Write as _;
use std::hint::black_box;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use fraud_domain::{Currency, CustomerId, EventTime, Money, TransactionId, VendorId};
use fraud_events::TransactionEvent;

use super::{EventGenerator, progress, workspace_root, write_report};

#[derive(Args, Clone)]
pub struct EncodingArgs {
    /// Events encoded and decoded per round.
    #[arg(long, default_value_t = 200_000)]
    events: usize,
    /// Rounds; the figure is the fastest.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Records per compressed batch (as a Kafka record batch).
    #[arg(long, default_value_t = 1_000)]
    batch: usize,
    /// Seed of the event generator.
    #[arg(long, default_value_t = 20_190_530)]
    seed: u64,
    /// Where to write the report (default: `target/bench/encoding.md` under the workspace).
    #[arg(long)]
    report: Option<PathBuf>,
}

/// One encoding's figures.
struct Figures {
    name: &'static str,
    encode_ns: f64,
    decode_ns: f64,
    bytes: f64,
    zstd_bytes: f64,
}

pub fn encoding_benchmark(args: EncodingArgs) -> anyhow::Result<()> {
    let mut generator = EventGenerator::new(args.seed, 10_000);
    let events: Vec<TransactionEvent> = (0..args.events)
        .map(|_| generator.next_event().record())
        .collect::<anyhow::Result<_>>()?;
    progress(format!("{} events generated", events.len()));
    let json = measure(
        "JSON, schema version 1 (fraud_events)",
        &events,
        &args,
        fraud_events::encode,
        |bytes| {
            fraud_events::decode(Some(fraud_events::SCHEMA_VERSION.as_bytes()), bytes)
                .map_err(|e| e.to_string())
        },
    )?;
    let binary = measure(
        "compact binary (reference)",
        &events,
        &args,
        encode_binary,
        decode_binary,
    )?;
    let mut report = String::new();
    writeln!(report, "# Record encoding benchmark\n")?;
    writeln!(
        report,
        "{} events of the ingest benchmark's generator, each encoded and decoded {} times; \
         the fastest round counts. zstd (level 3) compresses batches of {} records, as \
         the producer does.\n",
        events.len(),
        args.rounds,
        args.batch
    )?;
    writeln!(
        report,
        "| encoding | encode ns/event | decode ns/event | bytes/event | zstd bytes/event |"
    )?;
    writeln!(report, "|---|---|---|---|---|")?;
    for figures in [&json, &binary] {
        writeln!(
            report,
            "| {} | {:.0} | {:.0} | {:.1} | {:.1} |",
            figures.name, figures.encode_ns, figures.decode_ns, figures.bytes, figures.zstd_bytes
        )?;
    }
    writeln!(
        report,
        "| JSON ÷ binary | {:.2} | {:.2} | {:.2} | {:.2} |",
        json.encode_ns / binary.encode_ns,
        json.decode_ns / binary.decode_ns,
        json.bytes / binary.bytes,
        json.zstd_bytes / binary.zstd_bytes
    )?;
    writeln!(
        report,
        "\nAt 100,000 events/s, decoding JSON costs {:.3} CPUs and the binary layout {:.3}; \
         on the wire (compressed) JSON carries {:.1} MB/s more.",
        json.decode_ns * 1e5 / 1e9,
        binary.decode_ns * 1e5 / 1e9,
        (json.zstd_bytes - binary.zstd_bytes) * 1e5 / 1e6
    )?;
    let path = args
        .report
        .clone()
        .unwrap_or_else(|| workspace_root().join("target/bench/encoding.md"));
    write_report(&report, &path)
}

fn measure(
    name: &'static str,
    events: &[TransactionEvent],
    args: &EncodingArgs,
    encode: impl Fn(&TransactionEvent) -> Vec<u8>,
    decode: impl Fn(&[u8]) -> Result<TransactionEvent, String>,
) -> anyhow::Result<Figures> {
    let encoded: Vec<Vec<u8>> = events.iter().map(&encode).collect();
    for (event, bytes) in events.iter().zip(&encoded) {
        let back = decode(bytes)
            .map_err(anyhow::Error::msg)
            .context("decode")?;
        anyhow::ensure!(&back == event, "{name} does not round-trip");
    }
    let mut encode_best = f64::MAX;
    let mut decode_best = f64::MAX;
    for _ in 0..args.rounds.max(1) {
        let started = Instant::now();
        for event in events {
            black_box(encode(black_box(event)));
        }
        encode_best = encode_best.min(started.elapsed().as_nanos() as f64 / events.len() as f64);
        let started = Instant::now();
        for bytes in &encoded {
            black_box(decode(black_box(bytes)).ok());
        }
        decode_best = decode_best.min(started.elapsed().as_nanos() as f64 / events.len() as f64);
    }
    let bytes: usize = encoded.iter().map(Vec::len).sum();
    let mut compressed = 0;
    for batch in encoded.chunks(args.batch.max(1)) {
        let joined: Vec<u8> = batch.concat();
        compressed += zstd::bulk::compress(&joined, 3).context("zstd")?.len();
    }
    progress(format!("{name}: measured"));
    Ok(Figures {
        name,
        encode_ns: encode_best,
        decode_ns: decode_best,
        bytes: bytes as f64 / events.len() as f64,
        zstd_bytes: compressed as f64 / events.len() as f64,
    })
}

fn encode_binary(event: &TransactionEvent) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    out.push(1); // version
    for text in [
        event.transaction_id.as_str(),
        event.customer_id.as_str(),
        event.vendor_id.as_str(),
    ] {
        out.push(text.len() as u8);
        out.extend_from_slice(text.as_bytes());
    }
    out.extend_from_slice(&event.amount.minor().to_le_bytes());
    out.extend_from_slice(event.currency.as_str().as_bytes());
    out.extend_from_slice(&event.event_time.as_millis().to_le_bytes());
    out.extend_from_slice(&event.ingest_time.as_millis().to_le_bytes());
    out
}

fn decode_binary(bytes: &[u8]) -> Result<TransactionEvent, String> {
    let mut at = 1;
    let mut text = |bytes: &[u8]| -> Result<String, String> {
        let len = *bytes.get(at).ok_or("truncated")? as usize;
        let slice = bytes.get(at + 1..at + 1 + len).ok_or("truncated")?;
        at += 1 + len;
        String::from_utf8(slice.to_vec()).map_err(|e| e.to_string())
    };
    let transaction = text(bytes)?;
    let customer = text(bytes)?;
    let vendor = text(bytes)?;
    let number = |at: usize| -> Result<i64, String> {
        let slice: [u8; 8] = bytes
            .get(at..at + 8)
            .ok_or("truncated")?
            .try_into()
            .map_err(|_| "truncated")?;
        Ok(i64::from_le_bytes(slice))
    };
    let amount = number(at)?;
    let currency = std::str::from_utf8(bytes.get(at + 8..at + 11).ok_or("truncated")?)
        .map_err(|e| e.to_string())?;
    Ok(TransactionEvent {
        transaction_id: TransactionId::parse(&transaction).map_err(|e| e.to_string())?,
        customer_id: CustomerId::parse(&customer).map_err(|e| e.to_string())?,
        vendor_id: VendorId::parse(&vendor).map_err(|e| e.to_string())?,
        amount: Money::from_minor(amount),
        currency: Currency::parse(currency).map_err(|e| e.to_string())?,
        event_time: EventTime::from_millis(number(at + 11)?).map_err(|e| e.to_string())?,
        ingest_time: EventTime::from_millis(number(at + 19)?).map_err(|e| e.to_string())?,
    })
}
