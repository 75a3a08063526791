//! CPU work done ahead of need — decoding and computing the days a run has not reached
//! yet while Postgres writes the earlier ones, preparing what the commit sends — on
//! threads of their own at a lower priority, not on the async runtime's workers. On a
//! worker, a long computation keeps the thread that would have polled for I/O: the run's
//! transaction, waiting on its socket, stalled until the computation ended. And on two
//! cores that work competes with the transaction: its Postgres backend and the task that
//! drives it wait on each other, a round trip at a time, and each wait for a core held by
//! work not needed yet made a few rows' `DELETE` take a fifth of a second. Lowered, the
//! work ahead takes the cores the transaction leaves idle; it still runs at full speed on
//! an idle machine.
//!
//! The threads are a fixed pool ([`pool_size`]) that lives as long as the process: a
//! thread per piece of work cost a full recompute a third more CPU, in the allocator,
//! whose per-thread heaps were abandoned with each thread and rebuilt with the next.

use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::Context as _;
use tokio::sync::oneshot;

/// The niceness of the work ahead: the transaction's threads (niceness 0) get about ten
/// times its share of a contended core.
const NICENESS: libc::c_int = 10;

type Job = Box<dyn FnOnce() + Send>;

/// Runs `work` on a thread of the pool at [`NICENESS`], in the order the work was
/// given; the future gives its result, or an error when it panicked.
pub fn ahead<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> impl Future<Output = anyhow::Result<T>> + Send + 'static {
    let (sender, receiver) = oneshot::channel();
    let queued = pool().send(Box::new(move || {
        // The receiver is gone only when the run stopped.
        let _ = sender.send(work());
    }));
    async move {
        queued.map_err(|_| anyhow::anyhow!("the threads of the work ahead are gone"))?;
        receiver.await.context("the work ahead panicked")
    }
}

/// Runs `work`, which may take as long as a run, on a thread of its own at
/// [`NICENESS`] (not the pool's: it would hold one of its threads).
pub fn alongside<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> impl Future<Output = anyhow::Result<T>> + Send + 'static {
    let (sender, receiver) = oneshot::channel();
    let started = std::thread::Builder::new()
        .name("batch-alongside".into())
        .spawn(move || {
            lower_priority();
            let _ = sender.send(work());
        })
        .map(drop)
        .context("could not start a thread for the work alongside");
    async move {
        started?;
        receiver.await.context("the work alongside panicked")
    }
}

/// As many threads as cores, at least two: the work ahead of a run is a few days' worth
/// of pieces at a time.
fn pool_size() -> usize {
    std::thread::available_parallelism().map_or(2, |cores| cores.get().max(2))
}

/// The pool's queue; its threads start with the first piece of work.
fn pool() -> &'static mpsc::Sender<Job> {
    static POOL: OnceLock<mpsc::Sender<Job>> = OnceLock::new();
    POOL.get_or_init(|| {
        let (sender, receiver) = mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        for index in 0..pool_size() {
            let receiver = Arc::clone(&receiver);
            let spawned = std::thread::Builder::new()
                .name(format!("batch-ahead-{index}"))
                .spawn(move || {
                    lower_priority();
                    loop {
                        // A poisoned lock only means another thread panicked while
                        // waiting, which it does not do holding the queue.
                        let job = match receiver.lock() {
                            Ok(queue) => queue.recv(),
                            Err(poisoned) => poisoned.into_inner().recv(),
                        };
                        let Ok(job) = job else { return };
                        // A panic is the job's: its caller learns of it from its
                        // dropped sender, and the thread goes on.
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                    }
                });
            if let Err(error) = spawned {
                // With fewer threads the work waits longer; with none, `ahead` fails.
                eprintln!("batch-layer: could not start a thread for the work ahead: {error}");
            }
        }
        sender
    })
}

fn lower_priority() {
    // On Linux, PRIO_PROCESS with id 0 is the calling thread only. Failing (a seccomp
    // filter, say) leaves the thread as it is: slower, not wrong.
    // SAFETY: setpriority takes integer arguments and touches no memory of ours.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, NICENESS);
    }
}
