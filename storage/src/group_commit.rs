//! Group commit for sled.
//!
//! A writer applies its batch, then calls [`GroupCommit::durable`], which queues a
//! one-shot waiter and wakes the flusher thread if it is idle. The flusher loops: it
//! takes every queued waiter, calls the blocking `Db::flush()`, and completes exactly
//! those waiters. A waiter is queued only after its write was applied, and the flusher
//! takes the queue before it starts flushing, so every completed waiter's write is
//! covered by a flush that started after it: when `durable` returns, the write is on
//! disk.
//!
//! Many writers share one flush, so throughput grows with concurrency, and each writer
//! is woken exactly once (a broadcast to all waiters after every flush would wake
//! thousands of tasks per flush under load).
//!
//! sled 0.34's `flush_async` is not used: it hangs when many tasks call it (sled#1308).

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use crate::StoreError;

/// Owner of the flusher thread.
#[derive(Debug)]
pub struct GroupCommit {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Debug, Default)]
struct State {
    waiters: Vec<oneshot::Sender<Result<(), FlushFailed>>>,
    flusher_idle: bool,
    stop: bool,
    /// Once a flush fails, nothing is acknowledged any more.
    failed: bool,
}

#[derive(Debug, Clone, Copy)]
struct FlushFailed;

impl GroupCommit {
    /// Starts the flusher thread for `db`.
    pub fn start(db: sled::Db) -> Self {
        let shared = Arc::new(Shared::default());
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("sled-flusher".into())
            .spawn(move || flusher(&db, &thread_shared))
            .expect("spawning the flusher thread only fails when the OS is out of threads");
        Self {
            shared,
            thread: Mutex::new(Some(thread)),
        }
    }

    /// Resolves once a flush that started after this call has completed.
    pub async fn durable(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut state = self.shared.lock();
            if state.failed {
                return Err(StoreError::Backend("an earlier flush failed".into()));
            }
            if state.stop {
                return Err(StoreError::Closed);
            }
            state.waiters.push(tx);
            if state.flusher_idle {
                state.flusher_idle = false;
                self.shared.wake.notify_one();
            }
        }
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(FlushFailed)) => Err(StoreError::Backend("flush failed".into())),
            Err(_) => Err(StoreError::Closed),
        }
    }

    /// Completes queued waiters with a final flush and stops the flusher.
    pub fn stop(&self) {
        {
            let mut state = self.shared.lock();
            state.stop = true;
            self.shared.wake.notify_one();
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

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent across a panic (plain pushes and takes).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn flusher(db: &sled::Db, shared: &Shared) {
    loop {
        let (batch, stopping) = {
            let mut state = shared.lock();
            while state.waiters.is_empty() && !state.stop {
                state.flusher_idle = true;
                state = shared.wake.wait(state).unwrap_or_else(|e| e.into_inner());
            }
            state.flusher_idle = false;
            (std::mem::take(&mut state.waiters), state.stop)
        };
        let result = match db.flush() {
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::error!(cause = %e, "sled flush failed; writes are no longer acknowledged");
                shared.lock().failed = true;
                Err(FlushFailed)
            }
        };
        metrics::histogram!("relay_flush_batch_size").record(batch.len() as f64);
        metrics::counter!("relay_flushes_total").increment(1);
        for waiter in batch {
            let _ = waiter.send(result);
        }
        if stopping && shared.lock().waiters.is_empty() {
            return;
        }
    }
}
