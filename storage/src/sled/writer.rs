//! The storage writer: one thread that runs every client-facing mutation in arrival order
//! and hands each result to the journal, which releases it to the waiting request once the
//! `fdatasync` covering it has returned.
//!
//! A request costs one hand-off to this thread and one wake-up when it is durable. While
//! the journal thread `fdatasync`s one group, this thread already applies the next one; a
//! busy writer never sleeps between jobs.

use std::sync::mpsc;
use std::sync::{Arc, Mutex, Weak};
use std::thread::{JoinHandle, ThreadId};

use super::{Inner, lock};
use crate::StoreError;

/// A mutation, run on the writer thread.
pub(super) type Job = Box<dyn FnOnce(&Inner) + Send>;

#[derive(Debug, Default)]
pub(super) struct Writer {
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<(JoinHandle<()>, ThreadId)>>,
}

impl Writer {
    /// Starts the thread; it holds `inner` weakly, so dropping the store ends it.
    pub(super) fn start(inner: &Arc<Inner>) -> Result<(), StoreError> {
        let (tx, rx) = mpsc::channel::<Job>();
        let weak: Weak<Inner> = Arc::downgrade(inner);
        let handle = std::thread::Builder::new()
            .name("storage-writer".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    let Some(inner) = weak.upgrade() else { return };
                    job(&inner);
                    let mut batch = 1u64;
                    while let Ok(job) = rx.try_recv() {
                        job(&inner);
                        batch += 1;
                    }
                    metrics::histogram!("relay_storage_writer_batch").record(batch as f64);
                }
            })
            .map_err(|e| StoreError::Backend(format!("starting the storage writer: {e}")))?;
        let id = handle.thread().id();
        *lock(&inner.writer.tx) = Some(tx);
        *lock(&inner.writer.thread) = Some((handle, id));
        Ok(())
    }

    pub(super) fn submit(&self, job: Job) -> Result<(), StoreError> {
        match lock(&self.tx).as_ref() {
            Some(tx) => tx.send(job).map_err(|_| StoreError::Closed),
            None => Err(StoreError::Closed),
        }
    }

    /// Refuses new jobs, lets the queued ones finish and joins the thread.
    pub(super) fn stop(&self) {
        drop(lock(&self.tx).take());
        if let Some((handle, id)) = lock(&self.thread).take()
            && id != std::thread::current().id()
        {
            let _ = handle.join();
        }
    }
}
