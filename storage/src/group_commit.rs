//! Group commit for sled.
//!
//! Writers apply their batch, take a ticket ([`GroupCommit::ticket`]) and await
//! [`GroupCommit::wait`]. One flusher thread loops: it reads the highest ticket issued
//! so far, calls the blocking `Db::flush()`, then publishes that ticket as flushed.
//! Because a ticket is taken *after* the write and the flusher reads the ticket
//! counter *before* flushing, a published ticket always belongs to a flush that
//! started after the write: when `wait` returns, the write is on disk.
//!
//! Many writers share one flush, so throughput grows with concurrency while each
//! write still waits for at most about two flush durations.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use tokio::sync::watch;

use crate::StoreError;

/// Shared between writers and the flusher thread.
#[derive(Debug)]
pub struct GroupCommit {
    shared: Arc<Shared>,
    flushed: watch::Receiver<u64>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Debug)]
struct Shared {
    issued: AtomicU64,
    stop: AtomicBool,
    wake: Mutex<()>,
    cond: Condvar,
    failed: AtomicBool,
}

impl GroupCommit {
    /// Starts the flusher thread for `db`.
    pub fn start(db: sled::Db) -> Self {
        let shared = Arc::new(Shared {
            issued: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            wake: Mutex::new(()),
            cond: Condvar::new(),
            failed: AtomicBool::new(false),
        });
        let (tx, rx) = watch::channel(0u64);
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("sled-flusher".into())
            .spawn(move || flusher(&db, &thread_shared, &tx))
            .expect("spawning the flusher thread only fails when the OS is out of threads");
        Self {
            shared,
            flushed: rx,
            thread: Mutex::new(Some(thread)),
        }
    }

    /// Takes a ticket for a write that has been applied.
    pub fn ticket(&self) -> u64 {
        let t = self.shared.issued.fetch_add(1, Ordering::SeqCst) + 1;
        let _guard = self.shared.wake.lock().unwrap_or_else(|e| e.into_inner());
        self.shared.cond.notify_one();
        t
    }

    /// Resolves once a flush that started after `ticket` was issued has completed.
    pub async fn wait(&self, ticket: u64) -> Result<(), StoreError> {
        let mut rx = self.flushed.clone();
        let res = rx.wait_for(|&flushed| flushed >= ticket).await;
        if self.shared.failed.load(Ordering::SeqCst) {
            return Err(StoreError::Backend("flush failed".into()));
        }
        res.map(|_| ()).map_err(|_| StoreError::Closed)
    }

    /// Stops the flusher after a final flush.
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        {
            let _guard = self.shared.wake.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.cond.notify_one();
        }
        let handle = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        self.stop();
    }
}

fn flusher(db: &sled::Db, shared: &Shared, tx: &watch::Sender<u64>) {
    let mut flushed = 0u64;
    loop {
        let target = {
            let mut guard = shared.wake.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                let issued = shared.issued.load(Ordering::SeqCst);
                if issued > flushed || shared.stop.load(Ordering::SeqCst) {
                    break issued;
                }
                guard = shared.cond.wait(guard).unwrap_or_else(|e| e.into_inner());
            }
        };
        if let Err(e) = db.flush() {
            tracing::error!(cause = %e, "sled flush failed; writes are not acknowledged");
            shared.failed.store(true, Ordering::SeqCst);
        }
        metrics::histogram!("relay_flush_batch_size").record((target - flushed) as f64);
        metrics::counter!("relay_flushes_total").increment(1);
        flushed = target;
        tx.send_replace(flushed);
        if shared.stop.load(Ordering::SeqCst) && shared.issued.load(Ordering::SeqCst) == flushed {
            return;
        }
    }
}
