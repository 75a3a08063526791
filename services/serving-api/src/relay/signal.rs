//! "An alert was committed": one watch per process of the highest `alerts.seq` known to
//! be committed, fed by `LISTEN fraud_alerts` and a fallback poll.
//!
//! Alert writers end their transaction with `pg_notify('fraud_alerts', seq)`, so a
//! notification arrives as the alert becomes visible. Notifications are transient: one
//! sent while the listening connection is down is lost. So the same task also polls
//! `max(seq)` every [`POLL`], and nothing waits longer than that for an alert that was
//! committed. The relay and every Server-Sent Events stream wait on this one watch
//! instead of holding a Postgres connection each.
//!
//! The value only grows. When the task stops (shutdown), the sender is dropped and every
//! waiter's `changed()` fails: that is how the streams learn to end.

use std::time::Duration;

use fraud_service::Shutdown;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The channel alert writers notify, with the alert's `seq` as text.
pub use crate::evaluate::store::ALERTS_CHANNEL as CHANNEL;

/// The fallback poll: the longest a committed alert waits when a notification is lost.
pub const POLL: Duration = Duration::from_secs(1);

/// The highest committed `alerts.seq` this process knows of (0 before any alert).
#[derive(Clone)]
pub struct AlertSignal {
    latest: watch::Receiver<i64>,
}

impl AlertSignal {
    /// Starts the listening task `alert-signal` under `shutdown`.
    pub fn spawn(pool: PgPool, shutdown: &Shutdown) -> AlertSignal {
        let (sender, latest) = watch::channel(0);
        shutdown.spawn("alert-signal", follow(pool, sender, shutdown.token()));
        AlertSignal { latest }
    }

    /// A receiver that wakes whenever a newer alert is known to be committed; its
    /// `changed()` fails once the process shuts down.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.latest.clone()
    }
}

async fn follow(
    pool: PgPool,
    sender: watch::Sender<i64>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut listener: Option<PgListener> = None;
    let mut poll = tokio::time::interval(POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut listener_failed = false;
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            notification = next_notification(&mut listener) => match notification {
                Ok(payload) => match payload.parse::<i64>() {
                    Ok(seq) => advance(&sender, seq),
                    // Not ours to judge: the poll finds whatever it announced.
                    Err(_) => tracing::debug!(%payload, "ignoring a notification without a seq"),
                },
                Err(error) => {
                    tracing::warn!(error = %error, "lost the alert notification listener; polling until it is back");
                    listener = None;
                    listener_failed = true;
                }
            },
            _ = poll.tick() => {
                if listener.is_none() {
                    match listen(&pool).await {
                        Ok(connected) => {
                            if listener_failed {
                                tracing::info!("alert notification listener is back");
                            }
                            listener = Some(connected);
                            listener_failed = false;
                        }
                        Err(error) => {
                            if !listener_failed {
                                tracing::warn!(error = %error, "cannot listen for alert notifications; polling");
                            }
                            listener_failed = true;
                        }
                    }
                }
                match sqlx::query_scalar::<_, i64>("SELECT coalesce(max(seq), 0) FROM alerts")
                    .fetch_one(&pool)
                    .await
                {
                    Ok(seq) => advance(&sender, seq),
                    Err(error) => tracing::debug!(error = %error, "cannot poll the latest alert"),
                }
            }
        }
    }
}

async fn listen(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

/// The next notification's payload; never resolves without a listener.
async fn next_notification(listener: &mut Option<PgListener>) -> Result<String, sqlx::Error> {
    match listener {
        Some(listener) => Ok(listener.recv().await?.payload().to_owned()),
        None => std::future::pending().await,
    }
}

/// Raises the watch to `seq` if that is news; waiters wake only then.
fn advance(sender: &watch::Sender<i64>, seq: i64) {
    sender.send_if_modified(|latest| {
        let newer = seq > *latest;
        if newer {
            *latest = seq;
        }
        newer
    });
}
