//! Checkpoints: make sled's own files durable up to a journal LSN, so recovery replays only
//! what follows and old journal segments can go.
//!
//! A checkpoint takes the journal's applied watermark W (every record ≤ W is in sled's
//! memory), flushes sled, `fsync`s every file and directory under sled's path (sled's flush
//! uses `sync_file_range`, which a power loss does not respect), then records W in the
//! journal's checkpoint file and deletes the segments W covers. Records above W that sled
//! already holds are simply applied again at replay. The thread checkpoints when the journal
//! holds `checkpoint_bytes` not yet covered, or `checkpoint_interval` after the last one with
//! anything to cover; the gateway's close takes a final one.

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Instant;

use super::{Inner, SledConfig, lock};
use crate::StoreError;

/// The checkpoint thread's handle.
#[derive(Debug, Default)]
pub(super) struct Checkpointer {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Checkpointer {
    /// Starts the thread for `inner` (it holds only a weak reference, so dropping the store
    /// ends it).
    pub(super) fn start(inner: &Arc<Inner>, config: &SledConfig) {
        let weak: Weak<Inner> = Arc::downgrade(inner);
        let stop = Arc::clone(&inner.checkpoint.stop);
        let (bytes, every) = (config.checkpoint_bytes.max(1), config.checkpoint_interval);
        let spawned = std::thread::Builder::new().name("checkpoint".into()).spawn(move || {
            let mut last = Instant::now();
            loop {
                {
                    let (flag, cv) = &*stop;
                    let guard = lock(flag);
                    let (guard, _) = cv
                        .wait_timeout(guard, std::time::Duration::from_millis(200))
                        .unwrap_or_else(|e| e.into_inner());
                    if *guard {
                        return;
                    }
                }
                let Some(inner) = weak.upgrade() else { return };
                let pending = inner.journal.bytes_since_checkpoint();
                metrics::gauge!("relay_journal_uncheckpointed_bytes").set(pending as f64);
                if pending >= bytes || (pending > 0 && last.elapsed() >= every) {
                    last = Instant::now();
                    if let Err(e) = inner.checkpoint_now() {
                        metrics::counter!("relay_storage_failures_total", "stage" => "checkpoint").increment(1);
                        tracing::error!(cause = %e, "checkpoint failed; the journal keeps growing until one succeeds");
                    }
                }
            }
        });
        match spawned {
            Ok(handle) => *lock(&inner.checkpoint.thread) = Some(handle),
            Err(e) => tracing::error!(cause = %e, "the checkpoint thread did not start"),
        }
    }

    /// Stops the thread (the caller then takes a final checkpoint).
    pub(super) fn stop(&self) {
        {
            let (flag, cv) = &*self.stop;
            *lock(flag) = true;
            cv.notify_all();
        }
        if let Some(h) = lock(&self.thread).take() {
            let _ = h.join();
        }
    }
}

impl Inner {
    /// One checkpoint, now.
    pub(super) fn checkpoint_now(&self) -> Result<(), StoreError> {
        let started = Instant::now();
        let covered = self.journal.bytes_since_checkpoint();
        let watermark = self.journal.applied_watermark();
        self.db.flush().map_err(super::layout::backend)?;
        fsync_tree(&self.path).map_err(|e| StoreError::Backend(format!("fsync of sled's files: {e}")))?;
        self.journal.checkpoint(watermark, covered)?;
        metrics::histogram!("relay_checkpoint_seconds").record(started.elapsed().as_secs_f64());
        metrics::counter!("relay_checkpoints_total").increment(1);
        tracing::debug!(lsn = watermark, bytes = covered, "checkpoint");
        Ok(())
    }
}

/// `fsync` of every file and directory under `path`.
fn fsync_tree(path: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(path)? {
        let p = entry?.path();
        if p.is_dir() {
            fsync_tree(&p)?;
        } else {
            match std::fs::File::open(&p) {
                Ok(f) => f.sync_all()?,
                // sled removes old snapshot files as it writes new ones.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    crate::journal::sync_dir(path)
}
