//! The journal's record framing, sans-IO: encoding, and the scan that recovery runs over a
//! segment's bytes.
//!
//! ```text
//! record := magic:4 "RCJ1" | len:4 (payload bytes, LE) | lsn:8 (LE) | check:8 | payload
//! check  := the first 8 bytes of BLAKE3(derive_key("rcs-relay journal record v1"),
//!                                        lsn ‖ len ‖ payload)
//! ```
//! LSNs are consecutive across the whole journal. A segment ends where the bytes end, or at a
//! header of zeros. A record that does not check out is either a **torn tail** (the last
//! write before a crash, never acknowledged: nothing valid follows it, and it is in the last
//! segment) or **corruption** (a valid record follows it, or it is not in the last segment):
//! recovery truncates the first and refuses to start on the second, naming the offset, so
//! acknowledged data is never skipped silently.

/// Bytes of a record header.
pub const HEADER_LEN: usize = 24;
/// Largest payload accepted (a send of 5,000 recipients with a 16 MiB envelope fits).
pub const MAX_PAYLOAD: usize = 64 << 20;

const MAGIC: [u8; 4] = *b"RCJ1";
const CONTEXT: &str = "rcs-relay journal record v1";

/// Appends one framed record to `out`.
pub fn encode(out: &mut Vec<u8>, lsn: u64, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("payloads are bounded by MAX_PAYLOAD");
    out.reserve(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(&check(lsn, payload));
    out.extend_from_slice(payload);
}

fn check(lsn: u64, payload: &[u8]) -> [u8; 8] {
    let mut h = blake3::Hasher::new_derive_key(CONTEXT);
    h.update(&lsn.to_le_bytes());
    h.update(&(payload.len() as u64).to_le_bytes());
    h.update(payload);
    let mut out = [0u8; 8];
    out.copy_from_slice(&h.finalize().as_bytes()[..8]);
    out
}

/// One valid record found by [`scan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub lsn: u64,
    /// Offset of the record's header in the segment.
    pub offset: usize,
    /// Where its payload lies in the segment.
    pub payload: (usize, usize),
}

/// How a segment's scan ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The bytes (or a zero header) ended the segment at `offset`.
    Clean { offset: usize },
    /// A record that does not check out at `offset`, with nothing valid after it.
    Torn { offset: usize },
    /// A record that does not check out at `offset`, followed by a valid one at `next`
    /// (`next == offset` for a whole record whose LSN is out of sequence).
    Corrupt {
        offset: usize,
        next: usize,
        reason: &'static str,
    },
}

/// What [`scan`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    pub records: Vec<Found>,
    pub end: End,
}

/// Scans a segment's bytes; the first record must carry `first_lsn` and every next one the
/// next LSN.
pub fn scan(bytes: &[u8], first_lsn: u64) -> Scan {
    let mut records = Vec::new();
    let mut at = 0usize;
    let mut expect = first_lsn;
    loop {
        let rest = &bytes[at..];
        if rest.is_empty() || (rest.len() >= HEADER_LEN && rest[..HEADER_LEN].iter().all(|b| *b == 0)) {
            // A zero header ends the segment only if nothing valid follows it.
            return match find_valid(bytes, at + 1) {
                Some(next) => Scan {
                    records,
                    end: End::Corrupt {
                        offset: at,
                        next,
                        reason: "zeroed header",
                    },
                },
                None => Scan {
                    records,
                    end: End::Clean { offset: at },
                },
            };
        }
        match parse_at(bytes, at) {
            Ok((lsn, payload)) if lsn == expect => {
                records.push(Found {
                    lsn,
                    offset: at,
                    payload,
                });
                at = payload.1;
                expect += 1;
            }
            // A whole record from the future means records are missing: refuse, even at the
            // very end. One from the past can be stale disk content behind the last write
            // (a reused block after a power cut): like any bad record, it ends the journal
            // if nothing valid follows it.
            Ok((lsn, _)) if lsn > expect => {
                return Scan {
                    records,
                    end: End::Corrupt {
                        offset: at,
                        next: at,
                        reason: "LSN ahead of sequence (records missing)",
                    },
                };
            }
            Ok(_) => {
                return bad(bytes, at, records, "LSN out of sequence");
            }
            Err(reason) => return bad(bytes, at, records, reason),
        }
    }
}

fn bad(bytes: &[u8], at: usize, records: Vec<Found>, reason: &'static str) -> Scan {
    let end = match find_valid(bytes, at + 1) {
        Some(next) => End::Corrupt {
            offset: at,
            next,
            reason,
        },
        None => End::Torn { offset: at },
    };
    Scan { records, end }
}

/// The record at `at`: its LSN and payload range, or why it does not check out.
fn parse_at(bytes: &[u8], at: usize) -> Result<(u64, (usize, usize)), &'static str> {
    let header = bytes.get(at..at + HEADER_LEN).ok_or("short header")?;
    if header[..4] != MAGIC {
        return Err("bad magic");
    }
    let len = u32::from_le_bytes(header[4..8].try_into().map_err(|_| "header")?) as usize;
    if len > MAX_PAYLOAD {
        return Err("length out of range");
    }
    let lsn = u64::from_le_bytes(header[8..16].try_into().map_err(|_| "header")?);
    let start = at + HEADER_LEN;
    let payload = bytes.get(start..start + len).ok_or("short payload")?;
    if header[16..24] != check(lsn, payload) {
        return Err("checksum mismatch");
    }
    Ok((lsn, (start, start + len)))
}

/// The offset of the first record at or after `from` that checks out (any LSN).
fn find_valid(bytes: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    while at + HEADER_LEN <= bytes.len() {
        let pos = bytes[at..].windows(4).position(|w| w == MAGIC)?;
        at += pos;
        if parse_at(bytes, at).is_ok() {
            return Some(at);
        }
        at += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn segment(first: u64, payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, p) in payloads.iter().enumerate() {
            encode(&mut out, first + i as u64, p);
        }
        out
    }

    #[test]
    fn clean_segments_scan_back() {
        let seg = segment(7, &[b"a", b"", &[9u8; 1000]]);
        let s = scan(&seg, 7);
        assert_eq!(s.records.iter().map(|r| r.lsn).collect::<Vec<_>>(), [7, 8, 9]);
        assert_eq!(s.end, End::Clean { offset: seg.len() });
        let (a, b) = s.records[2].payload;
        assert_eq!(&seg[a..b], &[9u8; 1000]);
        // Zeros after the last record (a preallocated tail) end it cleanly too.
        let mut padded = seg.clone();
        padded.extend_from_slice(&[0; 100]);
        assert_eq!(scan(&padded, 7).end, End::Clean { offset: seg.len() });
        assert_eq!(scan(&[], 1).end, End::Clean { offset: 0 });
    }

    #[test]
    fn a_torn_tail_is_found_and_nothing_before_it_is_lost() {
        let seg = segment(1, &[b"one", b"two", b"three"]);
        let third = scan(&seg, 1).records[2].offset;
        for cut in third + 1..seg.len() {
            let s = scan(&seg[..cut], 1);
            assert_eq!(s.records.len(), 2, "cut at {cut}");
            assert_eq!(s.end, End::Torn { offset: third }, "cut at {cut}");
        }
        // Garbage after the last record (a torn write of the next group).
        let mut garbage = seg.clone();
        garbage.extend_from_slice(b"RCJ1\xff\xff");
        assert_eq!(scan(&garbage, 1).end, End::Torn { offset: seg.len() });
    }

    #[test]
    fn corruption_before_valid_records_is_refused_with_its_offset() {
        let seg = segment(1, &[b"one", b"two", b"three"]);
        let s = scan(&seg, 1);
        let (second, third) = (s.records[1].offset, s.records[2].offset);
        let mut flipped = seg.clone();
        flipped[second + HEADER_LEN] ^= 1; // a payload bit of record 2
        assert_eq!(
            scan(&flipped, 1).end,
            End::Corrupt {
                offset: second,
                next: third,
                reason: "checksum mismatch"
            }
        );
        let mut zeroed = seg.clone();
        zeroed[second..third].fill(0);
        assert!(matches!(scan(&zeroed, 1).end, End::Corrupt { offset, .. } if offset == second));
        // A record with the wrong LSN (a segment spliced from elsewhere) is not accepted,
        // even as the last record (it is whole, so it is not a torn write).
        assert!(matches!(scan(&seg, 2).end, End::Corrupt { offset: 0, .. }));
        let mut gap = segment(1, &[b"one"]);
        encode(&mut gap, 3, b"three");
        assert_eq!(
            scan(&gap, 1).end,
            End::Corrupt {
                offset: s.records[1].offset,
                next: s.records[1].offset,
                reason: "LSN ahead of sequence (records missing)"
            }
        );
        // An old record behind the last write (stale blocks) is a torn tail, not corruption.
        let mut stale = segment(10, &[b"ten", b"eleven"]);
        let end = stale.len();
        encode(&mut stale, 4, b"four, checkpointed long ago");
        let s = scan(&stale, 10);
        assert_eq!((s.records.len(), s.end), (2, End::Torn { offset: end }));
    }

    #[test]
    fn a_false_magic_inside_the_damage_is_skipped_on_the_way_to_the_next_record() {
        let seg = segment(1, &[b"one", b"two", b"three"]);
        let s = scan(&seg, 1);
        let (second, third) = (s.records[1].offset, s.records[2].offset);
        let mut damaged = seg;
        // Record 2 overwritten with bytes that contain the magic twice but no record.
        let junk = [b"RCJ1RCJ1".as_slice(), &vec![0xee; third - second - 8]].concat();
        damaged[second..third].copy_from_slice(&junk);
        assert_eq!(
            scan(&damaged, 1).end,
            End::Corrupt {
                offset: second,
                next: third,
                reason: "length out of range"
            }
        );
    }

    #[test]
    fn the_largest_payload_is_accepted_and_one_byte_more_is_not() {
        let mut out = Vec::new();
        encode(&mut out, 1, &vec![7u8; MAX_PAYLOAD]);
        let s = scan(&out, 1);
        assert_eq!((s.records.len(), s.end), (1, End::Clean { offset: out.len() }));
        // A header claiming one byte more is refused for its length, before any read.
        let mut header = out[..HEADER_LEN].to_vec();
        header[4..8].copy_from_slice(&(MAX_PAYLOAD as u32 + 1).to_le_bytes());
        assert_eq!(parse_at(&header, 0), Err("length out of range"));
    }

    proptest! {
        #[test]
        fn any_truncation_keeps_every_whole_record(
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 1..8),
            cut_fraction in 0.0f64..1.0,
        ) {
            let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
            let seg = segment(100, &refs);
            let cut = (seg.len() as f64 * cut_fraction) as usize;
            let s = scan(&seg[..cut], 100);
            let whole = scan(&seg, 100).records.iter().filter(|r| r.payload.1 <= cut).count();
            prop_assert_eq!(s.records.len(), whole);
            let corrupt = matches!(s.end, End::Corrupt { .. });
            prop_assert!(!corrupt, "a cut is never corruption: {:?}", s.end);
        }

        #[test]
        fn scanning_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = scan(&bytes, 1);
        }
    }
}
