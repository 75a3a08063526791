//! `schedule` mode: the job on a cron expression, until shutdown.

use std::str::FromStr;

use anyhow::Context;
use chrono::Utc;
use cron::Schedule;
use fraud_config::Settings;
use fraud_service::Shutdown;

use crate::job::{RunOptions, run};

/// Starts the task `scheduler`: it sleeps until the next time of `batch.schedule`, runs
/// the job, and repeats. A failed run is logged and counted; the next one comes on time.
pub(crate) fn spawn(settings: &Settings, shutdown: &Shutdown) -> anyhow::Result<()> {
    let schedule = Schedule::from_str(&settings.batch.schedule)
        .with_context(|| format!("batch.schedule `{}` is not valid", settings.batch.schedule))?;
    let settings = settings.clone();
    let token = shutdown.token();
    shutdown.spawn("scheduler", async move {
        loop {
            let Some(next) = schedule.upcoming(Utc).next() else {
                tracing::warn!("the schedule has no future run");
                return Ok(());
            };
            tracing::info!(next = %next.to_rfc3339(), "next batch run");
            let wait = (next - Utc::now()).to_std().unwrap_or_default();
            tokio::select! {
                _ = token.cancelled() => return Ok(()),
                _ = tokio::time::sleep(wait) => {}
            }
            match run(&settings, RunOptions::default()).await {
                Ok(report) => tracing::info!(
                    run_id = report.run_id,
                    days = report.days.len(),
                    rows = report.rows,
                    "scheduled batch run published"
                ),
                Err(error) => {
                    tracing::error!(error = format!("{error:#}"), "scheduled batch run failed")
                }
            }
        }
    });
    Ok(())
}
