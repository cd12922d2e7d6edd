//! Gives back to the system the memory a burst of work freed, once the daemon is quiet.
//!
//! glibc returns freed heap memory to the system only from the top of each heap; what a burst of
//! requests (or the start-up pass, which reads every allocation) freed elsewhere stays resident,
//! about 3 MiB after 10,000 ADDs. `malloc_trim` hands those pages back. It locks each heap while
//! it walks it, so it runs only after [`QUIET`] without a request, on a blocking thread, once per
//! burst: an idle daemon never wakes up for it.

use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

/// How long without a request counts as quiet.
pub const QUIET: Duration = Duration::from_millis(250);

/// Work has happened: [`Trimmer::run`] trims once things are quiet again.
#[derive(Default)]
pub struct Trimmer {
    work: Notify,
}

impl Trimmer {
    /// A request (or a pass) has finished.
    pub fn worked(&self) {
        self.work.notify_one();
    }

    /// Until `stop` turns true: after each burst of work, once [`QUIET`] has passed without more,
    /// calls `trim` on a blocking thread.
    pub async fn run(
        self: Arc<Self>,
        trim: fn() -> bool,
        quiet: Duration,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                _ = self.work.notified() => {}
                _ = stop.changed() => return,
            }
            // More work within `quiet` starts the wait again.
            while tokio::time::timeout(quiet, self.work.notified())
                .await
                .is_ok()
            {}
            let t0 = Instant::now();
            let released = tokio::task::spawn_blocking(trim).await.unwrap_or(false);
            tracing::debug!(took = ?t0.elapsed(), released, "gave freed memory back to the system");
        }
    }
}

/// glibc's `malloc_trim(0)`: whether it released anything.
pub fn malloc_trim() -> bool {
    // SAFETY: malloc_trim only walks the allocator's own heaps, under their locks.
    unsafe { nix::libc::malloc_trim(0) == 1 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    static TRIMS: AtomicUsize = AtomicUsize::new(0);

    fn count() -> bool {
        TRIMS.fetch_add(1, Ordering::SeqCst);
        true
    }

    #[tokio::test(start_paused = true)]
    async fn trims_once_per_burst_and_only_when_quiet() {
        let t = Arc::new(Trimmer::default());
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(t.clone().run(count, QUIET, stop_rx));
        let trims = || TRIMS.load(Ordering::SeqCst);
        // Idle: nothing to do.
        tokio::time::sleep(QUIET * 10).await;
        assert_eq!(trims(), 0);
        // A burst of requests closer together than QUIET: no trim until it ends.
        for _ in 0..20 {
            t.worked();
            tokio::time::sleep(QUIET / 2).await;
            assert_eq!(trims(), 0);
        }
        tokio::time::sleep(QUIET).await;
        // The blocking thread runs in real time.
        for _ in 0..100 {
            if trims() > 0 {
                break;
            }
            tokio::task::yield_now().await;
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(trims(), 1);
        tokio::time::sleep(QUIET * 10).await;
        assert_eq!(trims(), 1, "one trim per burst");
        stop_tx.send(true).unwrap();
        task.await.unwrap();
    }
}
