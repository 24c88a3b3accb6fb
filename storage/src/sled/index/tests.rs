use super::*;

fn key(n: u8) -> Key {
    (Rid([n; 32]), DeviceId(1))
}

fn entry(seq: u64, size: u32) -> NewEntry {
    NewEntry {
        id: server_id(seq, [seq as u8; 8]),
        size,
        urgent: false,
        received_at_ms: seq * 10,
        expires_at_ms: 1_000_000,
    }
}

#[test]
fn fan_out_is_one_blob_released_by_the_last_ack() {
    let mut ix = Index::default();
    let e = entry(1, 100);
    assert!(ix.enqueue(&mut vec![key(1), key(2), key(3)], e, 1 << 20).is_empty());
    assert_eq!(ix.blob(1).map(|b| b.remaining), Some(3));
    let mut fx = Vec::new();
    assert_eq!(ix.ack(key(1), None, &[e.id], &mut fx), 1);
    assert_eq!(ix.ack(key(2), Some(1), &[], &mut fx), 1);
    assert_eq!(
        fx,
        [
            Effect::Tombstone { id: e.id, key: key(1) },
            Effect::Tombstone { id: e.id, key: key(2) }
        ]
    );
    fx.clear();
    assert_eq!(ix.ack(key(3), None, &[e.id, e.id], &mut fx), 1, "acked once");
    assert_eq!(
        fx,
        [Effect::Release {
            id: e.id,
            tombstones: true
        }],
        "the other two recipients' tombstones go with it"
    );
    assert_eq!((ix.len(), ix.blob(1)), (0, None));
    assert_eq!(ix.ack(key(3), Some(99), &[e.id], &mut fx), 0, "idempotent");
}

#[test]
fn a_forged_random_half_acknowledges_nothing() {
    let mut ix = Index::default();
    let e = entry(5, 10);
    ix.enqueue(&mut vec![key(1)], e, 1 << 20);
    let forged = server_id(5, [0xee; 8]);
    let mut fx = Vec::new();
    assert_eq!(ix.ack(key(1), None, &[forged], &mut fx), 0);
    assert!(fx.is_empty());
    assert!(ix.holds(&key(1), 5));
}

#[test]
fn the_quota_trims_the_oldest_into_one_gap() {
    let mut ix = Index::default();
    for seq in 1..=5 {
        assert!(ix.enqueue(&mut vec![key(1)], entry(seq, 100), 500).is_empty());
    }
    // The sixth needs room: the oldest goes, replaced by a gap at its seq.
    let fx = ix.enqueue(&mut vec![key(1)], entry(6, 100), 500);
    assert_eq!(
        fx,
        [
            Effect::Release {
                id: entry(1, 0).id,
                tombstones: false
            },
            Effect::PutGap {
                key: key(1),
                seq: 1,
                slot: Slot::Gap {
                    dropped: 1,
                    received_at_ms: 10,
                    expires_at_ms: 1_000_000
                }
            }
        ]
    );
    // A large one (300 of 500 bytes) drops the gap and three more: one merged gap
    // counting four, at the seq of the newest dropped envelope.
    let fx = ix.enqueue(&mut vec![key(1)], entry(7, 300), 500);
    let (page, empty) = ix.page(&key(1), 0, 10);
    assert!(empty);
    assert_eq!(page.len(), 4, "{page:?}");
    assert_eq!(
        page[0],
        (
            4,
            Slot::Gap {
                dropped: 4,
                received_at_ms: 40,
                expires_at_ms: 1_000_000
            }
        )
    );
    assert!(fx.contains(&Effect::DelGap { key: key(1), seq: 1 }));
    assert_eq!(page.iter().map(|p| p.0).collect::<Vec<_>>(), [4, 5, 6, 7]);
}

#[test]
fn rebuilding_from_records_gives_the_same_mailboxes() {
    let mut live = Index::default();
    let a = entry(1, 10);
    let b = entry(2, 20);
    live.enqueue(&mut vec![key(1), key(2)], a, 1 << 20);
    live.enqueue(&mut vec![key(1)], b, 1 << 20);
    let mut fx = Vec::new();
    live.ack(key(2), None, &[a.id], &mut fx);
    let mut rebuilt = Index::default();
    let meta = |e: NewEntry| Blob {
        remaining: 0,
        tombstones: false,
        rand: [0; 8],
        received_at_ms: e.received_at_ms,
        expires_at_ms: e.expires_at_ms,
    };
    rebuilt.load_blob(a.id, 10, false, meta(a), &[key(1), key(2)]);
    rebuilt.load_blob(b.id, 20, false, meta(b), &[key(1)]);
    for f in fx {
        if let Effect::Tombstone { id, key } = f {
            assert!(!rebuilt.load_tombstone(id, key));
        }
    }
    for k in [key(1), key(2)] {
        assert_eq!(live.page(&k, 0, 10), rebuilt.page(&k, 0, 10));
    }
    assert_eq!(live.blob(1), rebuilt.blob(1));
    assert!(
        rebuilt.load_tombstone(a.id, key(1)),
        "the last holder's tombstone frees the blob"
    );
}

#[test]
fn removing_a_device_releases_what_only_it_held() {
    let mut ix = Index::default();
    ix.enqueue(&mut vec![key(1), key(2)], entry(1, 10), 1 << 20);
    ix.enqueue(&mut vec![key(1)], entry(2, 10), 1 << 20);
    let mut fx = Vec::new();
    assert_eq!(ix.remove_device(key(1), &mut fx), 2);
    assert_eq!(
        fx,
        [
            Effect::Tombstone {
                id: entry(1, 0).id,
                key: key(1)
            },
            Effect::Release {
                id: entry(2, 0).id,
                tombstones: false
            }
        ]
    );
    assert_eq!(ix.len(), 1);
    let mut targets = vec![key(1), key(2)];
    ix.enqueue(&mut targets, entry(3, 10), 1 << 20);
    assert_eq!(targets, [key(2)], "nothing is queued for a removed device");
    assert_eq!(ix.blob(3).map(|b| b.remaining), Some(1));
}
