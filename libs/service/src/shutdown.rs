//! The shutdown coordinator.
//!
//! One [`Shutdown`] per process. Work runs in named tasks spawned through it; the first
//! SIGINT or SIGTERM (or a task that fails) cancels the shared token, every task winds
//! down, and [`Shutdown::wait`] returns once they have, or once the grace period is over.
//! A second signal exits at once. Libraries take the token as a parameter and never
//! listen for signals themselves.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Exit code used when a second signal forces an immediate exit (128 + SIGINT).
const FORCED_EXIT_CODE: i32 = 130;

/// Coordinates the orderly stop of a service's tasks.
#[derive(Clone)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

struct Inner {
    token: CancellationToken,
    tracker: TaskTracker,
    grace: Duration,
    next_id: AtomicU64,
    running: Mutex<BTreeMap<u64, &'static str>>,
    failures: Mutex<Vec<String>>,
}

impl Shutdown {
    /// A coordinator whose drain may take at most `grace`.
    pub fn new(grace: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                token: CancellationToken::new(),
                tracker: TaskTracker::new(),
                grace,
                next_id: AtomicU64::new(0),
                running: Mutex::new(BTreeMap::new()),
                failures: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The token every task watches; cancelled when shutdown begins.
    pub fn token(&self) -> CancellationToken {
        self.inner.token.clone()
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.token.is_cancelled()
    }

    /// Begins shutdown (idempotent).
    pub fn trigger(&self) {
        self.inner.token.cancel();
    }

    /// Runs `task` under the name `name`. A task that returns an error, or panics, is
    /// logged with its cause and starts the shutdown of the whole process: a service
    /// never keeps running with one of its parts silently gone.
    pub fn spawn<F>(&self, name: &'static str, task: F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.inner.running).insert(id, name);
        let inner = Arc::clone(&self.inner);
        let handle = tokio::spawn(task);
        self.inner.tracker.spawn(async move {
            let outcome = handle.await;
            lock(&inner.running).remove(&id);
            let failure = match outcome {
                Ok(Ok(())) => None,
                Ok(Err(error)) => Some(format!("{error:#}")),
                Err(join_error) if join_error.is_panic() => Some("panicked".to_owned()),
                Err(join_error) => Some(join_error.to_string()),
            };
            match failure {
                None => tracing::debug!(task = name, "task finished"),
                Some(reason) => {
                    tracing::error!(task = name, error = %reason, "task failed; shutting down");
                    lock(&inner.failures).push(format!("{name}: {reason}"));
                    inner.token.cancel();
                }
            }
        });
    }

    /// Runs blocking `work` on a thread of its own named `name`, as the task `name`:
    /// `work` is handed a check that says when shutdown has begun, and its error (or
    /// panic) fails the task like [`Shutdown::spawn`]'s. For loops that poll a blocking
    /// client (a Kafka consumer) and must never hold a runtime thread.
    pub fn spawn_thread<W>(&self, name: &'static str, work: W)
    where
        W: FnOnce(&dyn Fn() -> bool) -> anyhow::Result<()> + Send + 'static,
    {
        let token = self.token();
        self.spawn(name, async move {
            let (done, outcome) = tokio::sync::oneshot::channel();
            std::thread::Builder::new()
                .name(name.to_owned())
                .spawn(move || {
                    let result = work(&|| token.is_cancelled());
                    let _ = done.send(result);
                })
                .map_err(|error| anyhow::anyhow!("failed to start the thread {name}: {error}"))?;
            // A panic drops `done` unsent.
            outcome
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the thread {name} panicked")))
        });
    }

    /// Listens for SIGINT and SIGTERM: the first begins shutdown, the second exits at once.
    pub fn listen_for_signals(&self) {
        let token = self.inner.token.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown signal received; draining (a second signal exits at once)");
            token.cancel();
            wait_for_signal().await;
            tracing::warn!("second shutdown signal; exiting now");
            std::process::exit(FORCED_EXIT_CODE);
        });
    }

    /// Waits until shutdown begins and every task has stopped, or the grace period runs
    /// out. Errors name the tasks that failed or did not stop in time.
    pub async fn wait(self) -> Result<(), ShutdownError> {
        self.inner.token.cancelled().await;
        self.inner.tracker.close();
        let drained = tokio::time::timeout(self.inner.grace, self.inner.tracker.wait())
            .await
            .is_ok();
        let failures = lock(&self.inner.failures).clone();
        if !drained {
            let stragglers = lock(&self.inner.running).values().copied().collect();
            return Err(ShutdownError::Timeout {
                grace: self.inner.grace,
                stragglers,
                failures,
            });
        }
        if !failures.is_empty() {
            return Err(ShutdownError::TaskFailed(failures));
        }
        tracing::info!("shutdown complete");
        Ok(())
    }
}

/// Why a service did not stop cleanly.
#[derive(Debug)]
pub enum ShutdownError {
    /// Tasks failed while running (each entry is `name: cause`).
    TaskFailed(Vec<String>),
    /// Tasks were still running when the grace period ended.
    Timeout {
        grace: Duration,
        stragglers: Vec<&'static str>,
        failures: Vec<String>,
    },
}

impl std::fmt::Display for ShutdownError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TaskFailed(failures) => {
                write!(formatter, "tasks failed: {}", failures.join("; "))
            }
            Self::Timeout {
                grace,
                stragglers,
                failures,
            } => {
                write!(
                    formatter,
                    "tasks still running after the {grace:?} grace period: {}",
                    stragglers.join(", ")
                )?;
                if !failures.is_empty() {
                    write!(formatter, "; tasks failed: {}", failures.join("; "))?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ShutdownError {}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding these short critical sections cannot leave bad state behind.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut interrupt), Ok(mut terminate)) => {
                tokio::select! {
                    _ = interrupt.recv() => {}
                    _ = terminate.recv() => {}
                }
            }
            _ => {
                tracing::error!("cannot listen for SIGINT/SIGTERM; only ctrl-c stops this process");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tasks_drain_when_shutdown_is_triggered() {
        let shutdown = Shutdown::new(Duration::from_secs(5));
        let token = shutdown.token();
        let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Arc::clone(&finished);
        shutdown.spawn("worker", async move {
            token.cancelled().await;
            flag.store(true, Ordering::SeqCst);
            Ok(())
        });
        shutdown.trigger();
        shutdown.clone().wait().await.expect("clean drain");
        assert!(finished.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_failing_task_starts_shutdown_and_is_reported() {
        let shutdown = Shutdown::new(Duration::from_secs(5));
        let token = shutdown.token();
        shutdown.spawn("steady", async move {
            token.cancelled().await;
            Ok(())
        });
        shutdown.spawn("broken", async { anyhow::bail!("lost the connection") });
        let error = shutdown.wait().await.expect_err("a task failed");
        assert!(
            error.to_string().contains("broken: lost the connection"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_task_that_ignores_shutdown_is_named_after_the_grace_period() {
        let shutdown = Shutdown::new(Duration::from_millis(50));
        shutdown.spawn("stubborn", async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(())
        });
        shutdown.trigger();
        let error = shutdown.wait().await.expect_err("did not drain");
        assert!(error.to_string().contains("stubborn"), "{error}");
    }
}
