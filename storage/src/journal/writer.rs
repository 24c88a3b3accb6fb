//! The journal thread and the segment it appends to.

use std::fs::File;
use std::io::Write as _;
use std::path::Path;
use std::time::Instant;

use super::{JournalError, Shared, sync_dir};
use crate::StoreError;

/// The segment the journal thread appends to.
pub(super) struct Segment {
    file: File,
    len: u64,
}

impl Segment {
    pub(super) fn create(dir: &Path, first_lsn: u64) -> Result<Self, JournalError> {
        let path = dir.join(format!("{first_lsn:020}.log"));
        let io = |source| JournalError::Io {
            path: path.clone(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(io)?;
        // The new name must survive a power loss before any record in it is acknowledged.
        sync_dir(dir).map_err(io)?;
        Ok(Self { file, len: 0 })
    }
}

/// A group smaller than this waits up to [`GATHER_WAIT`] for more records.
const GATHER_RECORDS: u64 = 8;
const GATHER_WAIT: std::time::Duration = std::time::Duration::from_micros(150);

/// The journal thread: takes the group buffer, writes it, `fdatasync`s, completes waiters.
pub(super) fn writer(shared: &Shared, dir: &Path, mut segment: Segment, segment_bytes: u64) {
    let mut spare: Vec<u8> = Vec::with_capacity(1 << 20);
    loop {
        let (mut group, first, last, waiters) = {
            let mut s = shared.lock();
            while s.buf.is_empty() && s.waiters.is_empty() && !s.stop {
                s.thread_idle = true;
                s = shared.wake.wait(s).unwrap_or_else(|e| e.into_inner());
            }
            s.thread_idle = false;
            if s.stop && s.buf.is_empty() && s.waiters.is_empty() {
                return;
            }
            // A small group waits a moment for company: the same records in fewer
            // fdatasyncs, each of which costs the kernel tens of microseconds of CPU.
            if !s.stop && !s.buf.is_empty() && s.next_lsn - s.buf_first < GATHER_RECORDS {
                s = shared
                    .wake
                    .wait_timeout(s, GATHER_WAIT)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            let group = std::mem::replace(&mut s.buf, std::mem::take(&mut spare));
            let first = s.buf_first;
            let last = s.next_lsn - 1;
            s.buf_first = s.next_lsn;
            (group, first, last, std::mem::take(&mut s.waiters))
        };
        let result = if group.is_empty() {
            Ok(())
        } else {
            write_group(dir, &mut segment, segment_bytes, &group, first)
        };
        let records = last + 1 - first;
        let mut s = shared.lock();
        match result {
            Ok(()) => {
                if !group.is_empty() {
                    s.durable_lsn = last;
                    metrics::histogram!("relay_journal_group_records").record(records as f64);
                    metrics::counter!("relay_journal_bytes_total").increment(group.len() as u64);
                }
            }
            Err(e) => {
                tracing::error!(cause = %e, "journal write failed; writes are no longer acknowledged");
                metrics::counter!("relay_storage_failures_total", "stage" => "journal").increment(1);
                s.failed = true;
            }
        }
        let (durable, failed) = (s.durable_lsn, s.failed);
        let mut later = Vec::new();
        let mut done = Vec::with_capacity(waiters.len());
        for (lsn, completion) in waiters {
            if lsn <= durable {
                done.push((completion, true));
            } else if failed {
                done.push((completion, false));
            } else {
                later.push((lsn, completion));
            }
        }
        s.waiters.extend(later);
        drop(s);
        // Completed outside the lock: they wake tasks, and appends must not wait for that.
        for (completion, ok) in done {
            completion(if ok {
                Ok(())
            } else {
                Err(StoreError::Backend("journal write failed".into()))
            });
        }
        group.clear();
        spare = group;
    }
}

fn write_group(dir: &Path, segment: &mut Segment, segment_bytes: u64, group: &[u8], first: u64) -> std::io::Result<()> {
    if segment.len > 0 && segment.len + group.len() as u64 > segment_bytes {
        *segment = Segment::create(dir, first).map_err(|e| std::io::Error::other(e.to_string()))?;
    }
    let started = Instant::now();
    segment.file.write_all(group)?;
    segment.file.sync_data()?;
    segment.len += group.len() as u64;
    metrics::histogram!("relay_journal_fsync_seconds").record(started.elapsed().as_secs_f64());
    Ok(())
}
