use super::*;

/// A log of `n` records with a checkpoint every `every` records, signed with a fresh key.
fn log(n: u64, every: u64) -> (Vec<Record>, Vec<String>, AuditSigner, String) {
    let (skey, vkey) = generate_key("rcs-relay.test/audit");
    let signer = AuditSigner::new(&skey).unwrap();
    let mut records = Vec::new();
    let mut checkpoints = Vec::new();
    let mut frontier = Frontier::default();
    let mut prev = CHAIN_START;
    for seq in 1..=n {
        let (kind, detail) = ("interconnect.dead_letter", format!("peer=b envelope={seq:032x}"));
        let chain = chain_hash(&prev, seq, 1_700_000_000_000 + seq, kind, &detail);
        prev = chain;
        frontier.push(leaf_hash(seq, 1_700_000_000_000 + seq, kind, &detail));
        records.push(Record {
            seq,
            at_ms: 1_700_000_000_000 + seq,
            kind: kind.into(),
            detail,
            chain,
        });
        if seq % every == 0 {
            checkpoints.push(signer.checkpoint(seq, frontier.root()).unwrap());
        }
    }
    (records, checkpoints, signer, vkey)
}

/// Recomputes every chain hash, as an attacker with write access would.
fn rechain(records: &mut [Record]) {
    let mut prev = CHAIN_START;
    for (i, r) in records.iter_mut().enumerate() {
        r.seq = i as u64 + 1;
        r.chain = chain_hash(&prev, r.seq, r.at_ms, &r.kind, &r.detail);
        prev = r.chain;
    }
}

/// Stored hashes in the order `tlog_tiles` asks for them: the independent implementation.
struct Stored(Vec<Hash>);

impl tlog_tiles::HashReader for Stored {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog_tiles::Error> {
        Ok(indexes.iter().map(|i| self.0[*i as usize]).collect())
    }
}

#[test]
fn the_frontier_root_is_rfc6962s_tree_hash() {
    let mut frontier = Frontier::default();
    let mut stored = Stored(Vec::new());
    assert_eq!(Hash(frontier.root()), tlog_tiles::tree_hash(0, &stored).unwrap());
    for n in 0..200u64 {
        let leaf = format!("leaf {n}");
        frontier.push(record_hash(leaf.as_bytes()).0);
        let more = tlog_tiles::stored_hashes(n, leaf.as_bytes(), &stored).unwrap();
        stored.0.extend(more);
        assert_eq!(
            Hash(frontier.root()),
            tlog_tiles::tree_hash(n + 1, &stored).unwrap(),
            "size {}",
            n + 1
        );
        assert_eq!(Frontier::decode(&frontier.encode()), Some(frontier.clone()));
    }
    assert_eq!(
        Frontier::decode(&[0; 9]),
        None,
        "a node count that does not fit the size"
    );
}

#[test]
fn an_honest_log_verifies_and_so_does_an_older_checkpoint() {
    let (records, checkpoints, signer, vkey) = log(25, 10);
    let v = verify(&records, &checkpoints, &vkey, None).unwrap();
    assert_eq!((v.records, v.checkpoints, v.uncovered), (25, 2, 5));
    let mut f = Frontier::default();
    for r in &records[..7] {
        f.push(leaf_hash(r.seq, r.at_ms, &r.kind, &r.detail));
    }
    let kept = signer.checkpoint(7, f.root()).unwrap();
    assert_eq!(verify(&records, &checkpoints, &vkey, Some(&kept)).unwrap().records, 25);
    assert!(kept.starts_with("rcs-relay.test/audit\n7\n"), "{kept}");
    assert!(
        kept.contains("\n\n\u{2014} rcs-relay.test/audit "),
        "a C2SP signed note: {kept}"
    );
}

#[test]
fn each_kind_of_tampering_names_the_first_bad_record() {
    let (records, checkpoints, signer, vkey) = log(30, 10);
    let bad = |records: &[Record], checkpoints: &[String], against: Option<&str>| {
        verify(records, checkpoints, &vkey, against).unwrap_err()
    };
    // Editing one record.
    let mut edited = records.clone();
    edited[14].detail = "peer=b envelope=forged".into();
    assert_eq!(bad(&edited, &checkpoints, None).record, 15);
    // Deleting one.
    let mut deleted = records.clone();
    deleted.remove(14);
    assert_eq!(bad(&deleted, &checkpoints, None).record, 15);
    // Reordering two.
    let mut swapped = records.clone();
    swapped.swap(14, 15);
    assert_eq!(bad(&swapped, &checkpoints, None).record, 15);
    // Reordering two and recomputing the chain: the checkpoint at 20 no longer matches.
    rechain(&mut swapped);
    let b = bad(&swapped, &checkpoints, None);
    assert_eq!(b.record, 11, "{b}");
    // Truncating the tail (and its checkpoints): an auditor's checkpoint at 30 catches it.
    let kept = checkpoints[2].clone();
    let cut = bad(&records[..22], &checkpoints[..2], Some(&kept));
    assert_eq!(cut.record, 23, "{cut}");
    assert!(cut.reason.contains("tail was cut"), "{cut}");
    // Recomputing the whole log after an edit and re-signing every checkpoint with another
    // key: nothing verifies with the audit key.
    let mut rewritten = records.clone();
    rewritten[4].detail = "peer=b envelope=forged".into();
    rechain(&mut rewritten);
    let (other, _) = generate_key("rcs-relay.test/audit");
    let other = AuditSigner::new(&other).unwrap();
    let mut f = Frontier::default();
    let mut resigned = Vec::new();
    for r in &rewritten {
        f.push(leaf_hash(r.seq, r.at_ms, &r.kind, &r.detail));
        if r.seq % 10 == 0 {
            resigned.push(other.checkpoint(r.seq, f.root()).unwrap());
        }
    }
    let b = bad(&rewritten, &resigned, None);
    assert_eq!(b.record, 1, "{b}");
    assert!(b.reason.contains("not signed by the audit key"), "{b}");
    // ... and the auditor's honest checkpoint at 10 names the first ten.
    let b = bad(&rewritten, &[], Some(&checkpoints[0]));
    assert_eq!(b.record, 1, "{b}");
    // Keeping the honest checkpoints up to 20 and forging the one at 30 after an edit at 25.
    let mut late = records.clone();
    late[24].detail = "forged".into();
    rechain(&mut late);
    let mut f = Frontier::default();
    for r in &late {
        f.push(leaf_hash(r.seq, r.at_ms, &r.kind, &r.detail));
    }
    let forged = other.checkpoint(30, f.root()).unwrap();
    let b = bad(&late, &[checkpoints[0].clone(), checkpoints[1].clone(), forged], None);
    assert_eq!(b.record, 21, "{b}");
    // A checkpoint of another log, signed by its own key, is refused too.
    let (foreign_skey, _) = generate_key("someone.else/audit");
    let foreign = AuditSigner::new(&foreign_skey)
        .unwrap()
        .checkpoint(10, [0; 32])
        .unwrap();
    assert!(bad(&records, &[foreign], None).reason.contains("not signed"));
    let _ = signer;
}

#[test]
fn keys_round_trip_and_malformed_ones_are_refused() {
    let (skey, vkey) = generate_key("rcs-relay.test/audit");
    assert!(skey.starts_with("PRIVATE+KEY+rcs-relay.test/audit+"));
    assert!(vkey.starts_with("rcs-relay.test/audit+"));
    assert_eq!(AuditSigner::new(&skey).unwrap().origin(), "rcs-relay.test/audit");
    assert!(AuditSigner::new("PRIVATE+KEY+x").is_err());
    assert!(open_checkpoint("x", "not a key").is_err());
}

#[test]
fn a_pruned_log_verifies_from_its_checkpointed_base() {
    let (records, checkpoints, signer, vkey) = log(30, 10);
    let base_at = |n: usize| {
        let mut frontier = Frontier::default();
        for r in &records[..n] {
            frontier.push(leaf_hash(r.seq, r.at_ms, &r.kind, &r.detail));
        }
        Base {
            size: n as u64,
            chain: records[n - 1].chain,
            frontier,
        }
    };
    // Pruned behind the checkpoint at 20: the rest verifies, old checkpoints are skipped.
    let base = base_at(20);
    let v = verify_from(Some(&base), &records[20..], &checkpoints, &vkey, None).unwrap();
    assert_eq!((v.records, v.uncovered), (30, 0));
    // Pruned where no checkpoint is: unproven.
    let b = verify_from(Some(&base_at(15)), &records[15..], &checkpoints, &vkey, None).unwrap_err();
    assert_eq!(b.record, 16, "{b}");
    // ... unless one is signed there (what the gateway does before it prunes).
    let at15 = signer.checkpoint(15, base_at(15).frontier.root()).unwrap();
    let with = [checkpoints.clone(), vec![at15]].concat();
    assert!(verify_from(Some(&base_at(15)), &records[15..], &with, &vkey, None).is_ok());
    // A forged base (another frontier) does not match the checkpoint.
    let mut forged = base_at(20);
    forged.frontier = base_at(19).frontier;
    forged.frontier.push([9; 32]);
    assert_eq!(
        verify_from(Some(&forged), &records[20..], &checkpoints, &vkey, None)
            .unwrap_err()
            .record,
        1
    );
    // A record edited after the base is still named.
    let mut edited = records[20..].to_vec();
    edited[3].detail = "forged".into();
    assert_eq!(
        verify_from(Some(&base), &edited, &checkpoints, &vkey, None)
            .unwrap_err()
            .record,
        24
    );
}
