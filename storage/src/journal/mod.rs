//! The write-ahead journal: every mutating request is one checksummed record, appended in
//! order; writers share one `fdatasync` per group; a write is acknowledged only after the
//! `fdatasync` that covers its record has returned.
//!
//! ```text
//!  writers ──append (under a short lock: LSN + bytes into the group buffer)──┐
//!     │                                                                     ▼
//!     │                                         journal thread: write(group) → fdatasync
//!     └──await durable(lsn) ◄──────────── completes exactly the waiters it covered
//! ```
//!
//! Records are opaque bytes here (the sled backend puts its write sets in them). Segments
//! are files `{first lsn:020}.log` in the journal directory; `checkpoint` names the LSN up to
//! which the store's own files are known durable, so [`Journal::open`] replays only what
//! follows it, and [`Journal::checkpoint`] deletes the segments it covers. [`frame`] is the
//! sans-IO framing and the recovery scan.
//!
//! Invariants:
//! - LSNs are assigned under the state lock in the order records enter the group buffer, so
//!   the file holds them in LSN order; the journal thread writes one group at a time.
//! - A waiter is completed only with the result of an `fdatasync` that started after its
//!   record was in the file, so `durable(lsn)` returning `Ok` means the record survives a
//!   power loss. After a failed write or `fdatasync` nothing is acknowledged any more
//!   (retrying an `fdatasync` after a failure can report success for lost data).
//! - [`Journal::applied_watermark`] is an LSN such that every record at or below it has been
//!   applied by its writer: a checkpoint taken at it loses nothing.

pub mod frame;
mod writer;

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use self::writer::{Segment, writer};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::oneshot;

use crate::StoreError;

/// Where the journal lives and how it is cut into segments.
#[derive(Debug, Clone)]
pub struct JournalConfig {
    pub dir: PathBuf,
    /// A new segment is started once the current one holds this many bytes.
    pub segment_bytes: u64,
}

/// The journal could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "journal {} is corrupt at byte {offset} ({reason}) and a valid record follows at byte {next}: \
         refusing to start rather than skip acknowledged data",
        path.display()
    )]
    Corrupt {
        path: PathBuf,
        offset: usize,
        next: usize,
        reason: &'static str,
    },
    #[error("journal {} ends torn at byte {offset} but is not the last segment", path.display())]
    TornMiddle { path: PathBuf, offset: usize },
    #[error("journal segment {} starts at LSN {found}, LSN {expected} was expected (a segment is missing)", path.display())]
    Gap { path: PathBuf, expected: u64, found: u64 },
    #[error("journal checkpoint file {} is corrupt", path.display())]
    Checkpoint { path: PathBuf },
    #[error("replaying LSN {lsn}: {source}")]
    Replay {
        lsn: u64,
        #[source]
        source: StoreError,
    },
}

/// What recovery did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovery {
    pub checkpoint_lsn: u64,
    pub records: u64,
    pub bytes: u64,
    /// Where a torn tail was cut off (its segment's first LSN, byte offset).
    pub torn_at: Option<(u64, usize)>,
}

/// Called once with the outcome of the `fdatasync` that covers a record.
pub type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// The journal of one store.
#[derive(Debug)]
pub struct Journal {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    dir: PathBuf,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

struct State {
    /// Records not yet handed to the journal thread, framed.
    buf: Vec<u8>,
    /// LSN of the first record in `buf`.
    buf_first: u64,
    next_lsn: u64,
    durable_lsn: u64,
    waiters: Vec<(u64, Completion)>,
    /// Appended but not yet applied by their writer.
    applying: BTreeSet<u64>,
    thread_idle: bool,
    stop: bool,
    failed: bool,
    /// Bytes appended since the last checkpoint.
    since_checkpoint: u64,
}

impl Journal {
    /// Opens the journal in `config.dir` (creating it), hands every record after the last
    /// checkpoint to `replay` in LSN order, cuts off a torn tail, and starts the journal
    /// thread on a fresh segment. Corruption (a bad record followed by a valid one, a missing
    /// segment) refuses to open and names the file and offset.
    pub fn open(
        config: &JournalConfig,
        mut replay: impl FnMut(u64, &[u8]) -> Result<(), StoreError>,
    ) -> Result<(Self, Recovery), JournalError> {
        let dir = config.dir.clone();
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| JournalError::Io { path, source }
        };
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let checkpoint_lsn = read_checkpoint(&dir)?;
        let segments = list_segments(&dir)?;
        let mut recovery = Recovery {
            checkpoint_lsn,
            ..Recovery::default()
        };
        let mut expect = checkpoint_lsn + 1;
        let started = Instant::now();
        let mut last_report = Instant::now();
        for (i, (first, path)) in segments.iter().enumerate() {
            // Segments wholly at or below the checkpoint are already in the store.
            if segments.get(i + 1).is_some_and(|(next, _)| *next <= checkpoint_lsn + 1) {
                continue;
            }
            if *first > expect {
                return Err(JournalError::Gap {
                    path: path.clone(),
                    expected: expect,
                    found: *first,
                });
            }
            let bytes = std::fs::read(path).map_err(io(path))?;
            let scan = frame::scan(&bytes, *first);
            for r in &scan.records {
                if r.lsn <= checkpoint_lsn {
                    continue;
                }
                replay(r.lsn, &bytes[r.payload.0..r.payload.1])
                    .map_err(|source| JournalError::Replay { lsn: r.lsn, source })?;
                recovery.records += 1;
                recovery.bytes += (r.payload.1 - r.offset) as u64;
                if last_report.elapsed().as_secs() >= 5 {
                    last_report = Instant::now();
                    tracing::info!(
                        records = recovery.records,
                        bytes = recovery.bytes,
                        lsn = r.lsn,
                        "replaying the journal"
                    );
                }
                metrics::counter!("relay_recovery_records_total").increment(1);
            }
            if let Some(last) = scan.records.last() {
                expect = expect.max(last.lsn + 1);
            }
            let is_last = i + 1 == segments.len();
            match scan.end {
                frame::End::Clean { .. } => {}
                frame::End::Torn { offset } if is_last => {
                    tracing::warn!(
                        segment = %path.display(),
                        offset,
                        "journal ends with a torn record (a write cut by a crash, never acknowledged): truncating"
                    );
                    let f = std::fs::OpenOptions::new().write(true).open(path).map_err(io(path))?;
                    f.set_len(offset as u64).and_then(|()| f.sync_all()).map_err(io(path))?;
                    recovery.torn_at = Some((*first, offset));
                }
                frame::End::Torn { offset } => {
                    return Err(JournalError::TornMiddle {
                        path: path.clone(),
                        offset,
                    });
                }
                frame::End::Corrupt { offset, next, reason } => {
                    return Err(JournalError::Corrupt {
                        path: path.clone(),
                        offset,
                        next,
                        reason,
                    });
                }
            }
        }
        if recovery.records > 0 {
            tracing::info!(
                records = recovery.records,
                bytes = recovery.bytes,
                secs = started.elapsed().as_secs_f64(),
                "journal replayed"
            );
        }
        metrics::gauge!("relay_recovery_seconds").set(started.elapsed().as_secs_f64());
        let next_lsn = expect;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                buf: Vec::with_capacity(1 << 20),
                buf_first: next_lsn,
                next_lsn,
                durable_lsn: next_lsn - 1,
                waiters: Vec::new(),
                applying: BTreeSet::new(),
                thread_idle: false,
                stop: false,
                failed: false,
                since_checkpoint: recovery.bytes,
            }),
            wake: Condvar::new(),
        });
        let segment = Segment::create(&dir, next_lsn)?;
        let thread_shared = Arc::clone(&shared);
        let segment_bytes = config.segment_bytes.max(1 << 20);
        let thread_dir = dir.clone();
        let thread = std::thread::Builder::new()
            .name("journal".into())
            .spawn(move || writer(&thread_shared, &thread_dir, segment, segment_bytes))
            .map_err(io(&dir))?;
        Ok((
            Self {
                shared,
                thread: Mutex::new(Some(thread)),
                dir,
            },
            recovery,
        ))
    }

    /// Appends `payload` as the next record, runs `apply` (the writer applies the record to
    /// the store while holding whatever locks order it), and returns the record's LSN. Until
    /// `apply` returns, the record holds back [`Self::applied_watermark`].
    pub fn append<R>(&self, payload: &[u8], apply: impl FnOnce() -> R) -> Result<(u64, R), StoreError> {
        if payload.len() > frame::MAX_PAYLOAD {
            return Err(StoreError::Backend("journal record too large".into()));
        }
        let lsn = {
            let mut s = self.shared.lock();
            if s.failed {
                return Err(StoreError::Backend("an earlier journal write failed".into()));
            }
            if s.stop {
                return Err(StoreError::Closed);
            }
            let lsn = s.next_lsn;
            s.next_lsn += 1;
            if s.buf.is_empty() {
                s.buf_first = lsn;
            }
            frame::encode(&mut s.buf, lsn, payload);
            s.since_checkpoint += (frame::HEADER_LEN + payload.len()) as u64;
            s.applying.insert(lsn);
            if s.thread_idle {
                s.thread_idle = false;
                self.shared.wake.notify_one();
            }
            lsn
        };
        let r = apply();
        self.shared.lock().applying.remove(&lsn);
        Ok((lsn, r))
    }

    /// Resolves once record `lsn` (and every record before it) is on disk.
    pub async fn durable(&self, lsn: u64) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.when_durable(
            lsn,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.await.unwrap_or(Err(StoreError::Closed))
    }

    /// Calls `done` once record `lsn` (and every record before it) is on disk, or with the
    /// error that means it never will be — on the journal thread, or at once if it is
    /// already durable. Keep `done` short: it delays the completions after it.
    pub fn when_durable(&self, lsn: u64, done: Completion) {
        let mut s = self.shared.lock();
        if s.durable_lsn >= lsn {
            drop(s);
            return done(Ok(()));
        }
        if s.failed {
            drop(s);
            return done(Err(StoreError::Backend("an earlier journal write failed".into())));
        }
        if s.stop && s.buf.is_empty() {
            drop(s);
            return done(Err(StoreError::Closed));
        }
        s.waiters.push((lsn, done));
        if s.thread_idle {
            s.thread_idle = false;
            self.shared.wake.notify_one();
        }
    }

    /// The LSN of the last record appended so far (wait on it to cover everything before).
    pub fn last_lsn(&self) -> u64 {
        self.shared.lock().next_lsn - 1
    }

    /// Every record at or below this LSN has been applied by its writer.
    pub fn applied_watermark(&self) -> u64 {
        let s = self.shared.lock();
        s.applying.first().map_or(s.next_lsn - 1, |first| first - 1)
    }

    /// Bytes appended since the last checkpoint (recovery would replay about this much).
    pub fn bytes_since_checkpoint(&self) -> u64 {
        self.shared.lock().since_checkpoint
    }

    /// Records that the store's own files hold everything up to `lsn` (they were made
    /// durable before this call), and deletes the segments that only hold such records.
    pub fn checkpoint(&self, lsn: u64, bytes_covered: u64) -> Result<(), StoreError> {
        let fail = |e: std::io::Error| StoreError::Backend(format!("journal checkpoint: {e}"));
        write_checkpoint(&self.dir, lsn).map_err(fail)?;
        {
            let mut s = self.shared.lock();
            s.since_checkpoint = s.since_checkpoint.saturating_sub(bytes_covered);
        }
        let segments = list_segments(&self.dir).map_err(|e| StoreError::Backend(e.to_string()))?;
        for pair in segments.windows(2) {
            let ((_, path), (next_first, _)) = (&pair[0], &pair[1]);
            if *next_first <= lsn + 1 {
                std::fs::remove_file(path).map_err(fail)?;
            }
        }
        Ok(())
    }

    /// Makes everything appended durable and stops the journal thread.
    pub fn stop(&self) {
        {
            let mut s = self.shared.lock();
            s.stop = true;
            self.shared.wake.notify_one();
        }
        let handle = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("next_lsn", &self.next_lsn)
            .field("durable_lsn", &self.durable_lsn)
            .field("waiters", &self.waiters.len())
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Plain field updates: the state stays consistent across a panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, JournalError> {
    let io = |source| JournalError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        let first = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(first) = first {
            out.push((first, path));
        }
    }
    out.sort();
    Ok(out)
}

const CHECKPOINT: &str = "checkpoint";

fn read_checkpoint(dir: &Path) -> Result<u64, JournalError> {
    let path = dir.join(CHECKPOINT);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(source) => return Err(JournalError::Io { path, source }),
    };
    let scan = frame::scan(&bytes, 0);
    match (scan.records.as_slice(), scan.end) {
        ([r], frame::End::Clean { .. }) if r.payload.1 - r.payload.0 == 8 => {
            let mut lsn = [0u8; 8];
            lsn.copy_from_slice(&bytes[r.payload.0..r.payload.1]);
            Ok(u64::from_le_bytes(lsn))
        }
        _ => Err(JournalError::Checkpoint { path }),
    }
}

/// Writes the checkpoint LSN atomically: a framed record in a temporary file, `fsync`,
/// rename, `fsync` of the directory.
fn write_checkpoint(dir: &Path, lsn: u64) -> std::io::Result<()> {
    let mut bytes = Vec::new();
    frame::encode(&mut bytes, 0, &lsn.to_le_bytes());
    let tmp = dir.join("checkpoint.tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(CHECKPOINT))?;
    sync_dir(dir)
}

/// `fsync` of a directory, so the names in it survive a power loss.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests;
