use super::*;

fn config(dir: &Path, segment_bytes: u64) -> JournalConfig {
    JournalConfig {
        dir: dir.to_path_buf(),
        segment_bytes,
    }
}

type Replayed = Vec<(u64, Vec<u8>)>;

fn open_collect(cfg: &JournalConfig) -> Result<(Journal, Recovery, Replayed), JournalError> {
    let mut seen = Vec::new();
    let (j, r) = Journal::open(cfg, |lsn, p| {
        seen.push((lsn, p.to_vec()));
        Ok(())
    })?;
    Ok((j, r, seen))
}

async fn append_durable(j: &Journal, payload: &[u8]) -> u64 {
    let (lsn, ()) = j.append(payload, || ()).unwrap();
    j.durable(lsn).await.unwrap();
    lsn
}

#[tokio::test]
async fn records_are_replayed_in_order_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 64 << 20);
    let (j, r, seen) = open_collect(&cfg).unwrap();
    assert_eq!((r.records, seen.len()), (0, 0));
    for i in 0..100u32 {
        assert_eq!(append_durable(&j, &i.to_le_bytes()).await, u64::from(i) + 1);
    }
    drop(j);
    let (j, r, seen) = open_collect(&cfg).unwrap();
    assert_eq!(r.records, 100);
    assert_eq!(
        r.bytes,
        100 * (frame::HEADER_LEN as u64 + 4),
        "replayed bytes, headers included"
    );
    assert_eq!(seen.len(), 100);
    // Everything replayed is durable; the next LSN is not (it must wait for its fsync).
    assert_eq!(j.shared.lock().durable_lsn, 100);
    for (i, (lsn, p)) in seen.iter().enumerate() {
        assert_eq!(*lsn, i as u64 + 1);
        assert_eq!(p, &(i as u32).to_le_bytes());
    }
    // Appends continue after the replayed LSNs; the last LSN (what a no-op waits on) and
    // the bytes a checkpoint would cover follow each append.
    assert_eq!(j.last_lsn(), 100);
    assert_eq!(append_durable(&j, b"next").await, 101);
    assert_eq!(j.last_lsn(), 101);
    let (lsn, ()) = j.append(b"and more", || ()).unwrap();
    assert_eq!((lsn, j.last_lsn()), (102, 102));
    let header = frame::HEADER_LEN as u64;
    assert_eq!(
        j.bytes_since_checkpoint(),
        100 * (header + 4) + (header + 4) + (header + 8),
        "replayed and new bytes are both uncovered until a checkpoint"
    );
}

#[tokio::test]
async fn concurrent_writers_share_fsyncs_and_all_become_durable() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1 << 20);
    let (j, _, _) = open_collect(&cfg).unwrap();
    let j = Arc::new(j);
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..16u64 {
        let j = Arc::clone(&j);
        tasks.spawn(async move {
            let mut lsns = Vec::new();
            for i in 0..200u64 {
                lsns.push(append_durable(&j, &[(t * 1000 + i) as u8; 700]).await);
            }
            lsns
        });
    }
    let mut all = Vec::new();
    while let Some(l) = tasks.join_next().await {
        all.extend(l.unwrap());
    }
    all.sort_unstable();
    assert_eq!(all, (1..=3200).collect::<Vec<_>>(), "every append got its own LSN");
    drop(j);
    // 3,200 records of ~700 bytes over 1 MiB segments: several segments, replayed whole.
    assert!(list_segments(dir.path()).unwrap().len() >= 2);
    let (_, r, seen) = open_collect(&cfg).unwrap();
    assert_eq!(r.records, 3200);
    assert!(seen.windows(2).all(|w| w[1].0 == w[0].0 + 1));
}

#[tokio::test]
async fn a_torn_tail_is_cut_off_and_acknowledged_records_stay() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 64 << 20);
    let (j, _, _) = open_collect(&cfg).unwrap();
    for i in 0..10u8 {
        append_durable(&j, &[i; 100]).await;
    }
    drop(j);
    // A crash in the middle of the next group's write: half a record at the end.
    let (_, last) = list_segments(dir.path()).unwrap().pop().unwrap();
    let (_, last) = if std::fs::metadata(&last).unwrap().len() == 0 {
        let segs = list_segments(dir.path()).unwrap();
        segs[segs.len() - 2].clone()
    } else {
        (0, last)
    };
    let mut torn = Vec::new();
    frame::encode(&mut torn, 11, &[11; 100]);
    let good_len = std::fs::metadata(&last).unwrap().len();
    let mut f = std::fs::OpenOptions::new().append(true).open(&last).unwrap();
    f.write_all(&torn[..60]).unwrap();
    drop(f);
    let (j, r, seen) = open_collect(&cfg).unwrap();
    assert_eq!(seen.len(), 10, "every acknowledged record is replayed");
    assert_eq!(r.torn_at.map(|t| t.1 as u64), Some(good_len));
    assert_eq!(
        std::fs::metadata(&last).unwrap().len(),
        good_len,
        "the torn bytes are truncated"
    );
    assert_eq!(append_durable(&j, b"after").await, 11);
    drop(j);
    let (_, r, seen) = open_collect(&cfg).unwrap();
    assert_eq!((seen.len(), r.torn_at), (11, None));
}

#[tokio::test]
async fn corruption_in_the_middle_refuses_to_open_and_names_the_offset() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 64 << 20);
    let (j, _, _) = open_collect(&cfg).unwrap();
    for i in 0..10u8 {
        append_durable(&j, &[i; 100]).await;
    }
    drop(j);
    let segs = list_segments(dir.path()).unwrap();
    let path = &segs[0].1;
    let mut bytes = std::fs::read(path).unwrap();
    let record = frame::HEADER_LEN + 100;
    bytes[3 * record + frame::HEADER_LEN + 5] ^= 0x40; // a payload byte of record 4
    std::fs::write(path, &bytes).unwrap();
    let err = open_collect(&cfg).map(|_| ()).unwrap_err();
    match &err {
        JournalError::Corrupt { offset, next, .. } => assert_eq!((*offset, *next), (3 * record, 4 * record)),
        other => panic!("expected corruption, got {other:?}"),
    }
    assert!(err.to_string().contains(&format!("byte {}", 3 * record)), "{err}");
    // Nothing was changed: the file is as it was, for an operator to inspect.
    assert_eq!(std::fs::read(path).unwrap(), bytes);
}

#[tokio::test]
async fn a_checkpoint_bounds_replay_and_drops_covered_segments() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1 << 20);
    let (j, _, _) = open_collect(&cfg).unwrap();
    for i in 0..3000u32 {
        append_durable(&j, &[(i % 251) as u8; 1000]).await;
    }
    let before = list_segments(dir.path()).unwrap().len();
    assert!(before >= 3, "{before}");
    let w = j.applied_watermark();
    assert_eq!(w, 3000);
    j.checkpoint(2500, 0).unwrap();
    let after = list_segments(dir.path()).unwrap();
    assert!(after.len() < before, "covered segments are deleted");
    assert!(after[0].0 <= 2501, "the segment holding LSN 2501 stays");
    drop(j);
    let (_, r, seen) = open_collect(&cfg).unwrap();
    assert_eq!(r.checkpoint_lsn, 2500);
    assert_eq!(seen.first().map(|s| s.0), Some(2501));
    assert_eq!(seen.len(), 500);
    // Replaying twice hands the same records again: the store's apply must be idempotent.
    let (_, _, again) = open_collect(&cfg).unwrap();
    assert_eq!(again, seen);
}

#[tokio::test]
async fn the_watermark_waits_for_records_being_applied() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _, _) = open_collect(&config(dir.path(), 1 << 20)).unwrap();
    append_durable(&j, b"one").await;
    let (lsn, watermark_during) = j.append(b"two", || j.applied_watermark()).unwrap();
    assert_eq!(
        (lsn, watermark_during),
        (2, 1),
        "record 2 is not applied while its apply runs"
    );
    assert_eq!(j.applied_watermark(), 2);
}

#[tokio::test]
async fn a_torn_record_before_the_last_segment_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1 << 20);
    let (j, _, _) = open_collect(&cfg).unwrap();
    for i in 0..4u8 {
        append_durable(&j, &[i; 700 << 10]).await;
    }
    drop(j);
    let segments = list_segments(dir.path()).unwrap();
    assert!(segments.len() >= 2, "{segments:?}");
    let first = &segments[0].1;
    let len = std::fs::metadata(first).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(first)
        .unwrap()
        .set_len(len - 10)
        .unwrap();
    let err = open_collect(&cfg).map(|_| ()).unwrap_err();
    assert!(matches!(err, JournalError::TornMiddle { .. }), "{err}");
}

#[tokio::test]
async fn segments_are_at_least_a_mebibyte() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1);
    let (j, _, _) = open_collect(&cfg).unwrap();
    for i in 0..3u8 {
        append_durable(&j, &[i; 100]).await;
    }
    drop(j);
    let sizes: Vec<u64> = list_segments(dir.path())
        .unwrap()
        .iter()
        .map(|(_, p)| std::fs::metadata(p).unwrap().len())
        .filter(|len| *len > 0)
        .collect();
    assert_eq!(sizes.len(), 1, "three small groups share one segment: {sizes:?}");
}

#[tokio::test]
async fn the_largest_record_is_accepted_and_one_byte_more_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _, _) = open_collect(&config(dir.path(), 64 << 20)).unwrap();
    assert!(j.append(&vec![0; frame::MAX_PAYLOAD + 1], || ()).is_err());
    let (lsn, ()) = j.append(&vec![1; frame::MAX_PAYLOAD], || ()).unwrap();
    j.durable(lsn).await.unwrap();
}

#[tokio::test]
async fn a_checkpoint_at_a_segments_last_lsn_deletes_exactly_that_segment() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1 << 20);
    let (j, _, _) = open_collect(&cfg).unwrap();
    for i in 0..4u8 {
        append_durable(&j, &[i; 700 << 10]).await;
    }
    let segments = list_segments(dir.path()).unwrap();
    let second_first = segments[1].0;
    // One LSN short of covering the first segment: it stays.
    j.checkpoint(second_first - 2, 0).unwrap();
    assert_eq!(list_segments(dir.path()).unwrap()[0].0, segments[0].0);
    // Its last LSN: it goes, and only it.
    j.checkpoint(second_first - 1, 0).unwrap();
    assert_eq!(list_segments(dir.path()).unwrap()[0].0, second_first);
}

#[tokio::test]
async fn stop_flushes_and_refuses_more_and_drop_stops() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 64 << 20);
    let (j, _, _) = open_collect(&cfg).unwrap();
    j.append(b"not yet waited for", || ()).unwrap();
    j.stop();
    assert!(matches!(j.append(b"after stop", || ()), Err(StoreError::Closed)));
    drop(j);
    let (j, _, seen) = open_collect(&cfg).unwrap();
    assert_eq!(
        seen,
        [(1, b"not yet waited for".to_vec())],
        "stop wrote what was appended"
    );
    // Dropping the journal stops it the same way.
    j.append(b"dropped", || ()).unwrap();
    drop(j);
    let (_, _, seen) = open_collect(&cfg).unwrap();
    assert_eq!(seen.len(), 2, "drop wrote what was appended");
}

#[test]
fn an_unreadable_or_malformed_checkpoint_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 64 << 20);
    // Not "no checkpoint" (which would replay from the start): an error.
    std::fs::create_dir_all(dir.path().join(CHECKPOINT)).unwrap();
    assert!(matches!(open_collect(&cfg).map(|_| ()), Err(JournalError::Io { .. })));
    std::fs::remove_dir(dir.path().join(CHECKPOINT)).unwrap();
    // A well-framed record whose payload is not an 8-byte LSN.
    let mut bytes = Vec::new();
    frame::encode(&mut bytes, 0, &[1, 2, 3, 4, 5, 6, 7]);
    std::fs::write(dir.path().join(CHECKPOINT), bytes).unwrap();
    assert!(matches!(
        open_collect(&cfg).map(|_| ()),
        Err(JournalError::Checkpoint { .. })
    ));
}
