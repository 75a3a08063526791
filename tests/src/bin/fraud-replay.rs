//! `fraud-replay FILE`: posts a CSV file of transactions through the ingest API
//! (`deploy/dev replay`). Columns map to the event's fields (defaults: the Sparkov data
//! set); `--shift-to-now` moves every time so the file's last event lands at the end of
//! the replay; `--speedup N` paces the posts at N times the file's pace (0: as fast as
//! possible; event times are never compressed, only the pacing). Prints a JSON summary.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use platform_tests::replay::{self, Columns, Options};

#[derive(Parser)]
#[command(
    about = "Post a CSV file of transactions through the ingest API",
    args_override_self = true
)]
struct Args {
    /// The CSV file (a header line, then one transaction per line).
    file: PathBuf,
    /// Ingest's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    url: String,
    /// The API key (scope `ingest`); default: the file `--key-file`.
    #[arg(long, env = "REPLAY_API_KEY", hide_env_values = true)]
    key: Option<String>,
    /// A file holding the API key.
    #[arg(long, default_value = ".dev/api-key")]
    key_file: PathBuf,
    /// 1: the file's own pace; N: N times faster; 0: as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    speedup: f64,
    /// Shift every time so the file's last event lands at the end of the replay (now,
    /// when as fast as possible).
    #[arg(long, conflicts_with = "shift_to")]
    shift_to_now: bool,
    /// Shift every time so the file's last event lands at this instant (RFC 3339) plus
    /// the replay's planned duration.
    #[arg(long)]
    shift_to: Option<String>,
    /// Most transactions in one request.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// The column of `transactionId`.
    #[arg(long, default_value = "trans_num")]
    id_column: String,
    /// The column of `customerId` (sent as a string, never through a float).
    #[arg(long, default_value = "cc_num")]
    customer_column: String,
    /// The column of `vendorId`.
    #[arg(long, default_value = "merchant")]
    vendor_column: String,
    /// The column of `transactionSum` (a decimal, sent as written).
    #[arg(long, default_value = "amt")]
    amount_column: String,
    /// The column of `ts`.
    #[arg(long, default_value = "trans_date_trans_time")]
    time_column: String,
    /// How the time column is written (strftime, read as UTC), or `rfc3339`.
    #[arg(long, default_value = "%Y-%m-%d %H:%M:%S")]
    time_format: String,
    /// The column of the fraud label (0/1), counted in the summary; `none` for none.
    #[arg(long, default_value = "is_fraud")]
    label_column: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !(args.speedup >= 0.0 && args.speedup.is_finite()) {
        anyhow::bail!("--speedup must be 0 or a positive number");
    }
    let key = match args.key {
        Some(key) => key,
        None => std::fs::read_to_string(&args.key_file)
            .with_context(|| format!("read the API key from {}", args.key_file.display()))?
            .trim()
            .to_owned(),
    };
    let columns = Columns {
        id: args.id_column,
        customer: args.customer_column,
        vendor: args.vendor_column,
        amount: args.amount_column,
        time: args.time_column,
        label: (args.label_column != "none").then_some(args.label_column),
        time_format: args.time_format,
    };
    let rows = replay::read_csv(&args.file, &columns)?;
    let shift_to = match (args.shift_to_now, args.shift_to) {
        (true, _) => Some(chrono::Utc::now().timestamp_millis()),
        (false, Some(text)) => Some(
            fraud_domain::EventTime::parse_rfc3339(&text)
                .with_context(|| format!("--shift-to {text}"))?
                .as_millis(),
        ),
        (false, None) => None,
    };
    eprintln!(
        "fraud-replay: {} rows from {} to {}",
        rows.len(),
        args.file.display(),
        args.url
    );
    let options = Options {
        url: args.url,
        key,
        speedup: args.speedup,
        shift_to,
        batch: args.batch,
    };
    let summary = replay::replay(&rows, &options).await?;
    println!("{}", summary.to_json());
    Ok(())
}
