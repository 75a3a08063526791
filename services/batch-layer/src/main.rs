use std::process::ExitCode;

use batch_layer::{Backwards, Incomplete, Locked, RunOptions};
use clap::{Parser, Subcommand};
use fraud_service::startup::{self, ConfigArgs, ExitWith, Service};

/// A run makes and frees millions of small strings (a day's rows, their keys); glibc's
/// allocator spent about a third of a night's CPU on them (`perf`: `_int_malloc`,
/// `malloc_consolidate`, `unlink_chunk`), mimalloc about half as much in all.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages off for this process. mimalloc asks for them
/// (`MADV_HUGEPAGE`), and a run's short-lived buffers (decoded lake pages, grown
/// vectors) then fault in and zero 2 MiB at a time, again after each purge: a third of
/// a night's CPU in this process went to the kernel zeroing pages (`perf`:
/// `clear_page_erms` under `do_huge_pmd_anonymous_page`). Nothing else changes if the
/// kernel refuses.
fn no_transparent_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments and touches no memory of ours.
    let refused = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) } != 0;
    if refused {
        eprintln!("batch-layer: could not turn transparent huge pages off; going on");
    }
}

/// The batch layer: exact aggregates and baselines from the lake into Postgres.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply the schema migrations to the configured database, then exit.
    Migrate,
    /// Run the job once, then exit. Exit status: 0 published; 3 another run holds the
    /// lock; 4 refused (the lake is not complete up to the watermark, or the watermark
    /// is before the published one); 1 any other failure.
    Run {
        /// The watermark T_b, RFC 3339 (floored to the hour); default: the last full
        /// hour the lake is complete for.
        #[arg(long, value_parser = parse_time)]
        as_of: Option<i64>,
        /// Recompute every day, not only the days whose lake files changed.
        #[arg(long)]
        full: bool,
    },
    /// Stay up, serving health and metrics, and run the job on the configured schedule.
    Schedule,
}

fn parse_time(text: &str) -> Result<i64, String> {
    fraud_domain::EventTime::parse_rfc3339(text)
        .map(|time| time.as_millis())
        .map_err(|error| format!("not an RFC 3339 time with an offset: {error}"))
}

#[tokio::main]
async fn main() -> ExitCode {
    no_transparent_huge_pages();
    let cli = Cli::parse();
    startup::run(
        "batch-layer",
        cli.config.config.as_deref(),
        |settings, shutdown| async move {
            match cli.command {
                Command::Migrate => batch_layer::migrate(&settings).await,
                Command::Run { as_of, full } => {
                    let report = batch_layer::run(&settings, RunOptions { as_of, full })
                        .await
                        .map_err(exit_status)?;
                    println!(
                        "batch run {} published: watermark {}, {} day(s) recomputed, {} of \
                         them only for the customers of new files, {} file(s) read, {} \
                         row(s) written",
                        report.run_id,
                        fraud_domain::EventTime::from_millis(report.watermark)?.to_rfc3339(),
                        report.days.len(),
                        report.partial.len(),
                        report.input_files,
                        report.rows
                    );
                    Ok(())
                }
                Command::Schedule => {
                    batch_layer::App::build(&settings, shutdown)
                        .await?
                        .run_until_stopped()
                        .await
                }
            }
        },
    )
    .await
}

/// The documented exit statuses of a refused run.
fn exit_status(error: anyhow::Error) -> anyhow::Error {
    let code = if error.is::<Locked>() {
        3
    } else if error.is::<Incomplete>() || error.is::<Backwards>() {
        4
    } else {
        return error;
    };
    ExitWith { code, error }.into()
}
