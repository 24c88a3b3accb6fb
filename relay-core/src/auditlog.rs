//! The audit log's tamper evidence, sans I/O.
//!
//! Every audit record is a leaf of an append-only Merkle tree hashed as RFC 6962 says
//! (`tlog_tiles`: SHA-256, `0x00` leaves, `0x01` nodes). A **checkpoint** commits to the tree's
//! size and root: a C2SP `tlog-checkpoint` text in a C2SP signed note (`signed_note`), signed
//! with the audit key (Ed25519). Each record also carries a hash chained to the one before
//! (BLAKE3), which names an edited record exactly when the attacker did not recompute the rest.
//!
//! [`verify`] takes an exported log (records and checkpoints) and the audit key's verifier
//! key, and finds the first record it cannot prove: a gap or a record out of order, a record
//! that does not match its chain hash, a checkpoint that is not signed by the audit key, a
//! checkpoint whose root the records do not reproduce, or a log shorter than a checkpoint
//! says (its tail was cut). An auditor's older checkpoint (`against`) is checked the same way:
//! the log must still contain exactly the records it committed to.

use signed_note::{Note, StandardSigner, StandardVerifier, VerifierList};
use tlog_tiles::{Checkpoint, Hash, node_hash, record_hash};

/// The hash chain's value before the first record.
pub const CHAIN_START: [u8; 32] = [0; 32];

/// One record as the log keeps and exports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub at_ms: u64,
    pub kind: String,
    pub detail: String,
    /// `blake3(previous hash ‖ seq ‖ at_ms ‖ kind ‖ 0 ‖ detail)`.
    pub chain: [u8; 32],
}

/// The chain hash of a record after `prev`.
pub fn chain_hash(prev: &[u8; 32], seq: u64, at_ms: u64, kind: &str, detail: &str) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(prev);
    h.update(&seq.to_be_bytes());
    h.update(&at_ms.to_be_bytes());
    h.update(kind.as_bytes());
    h.update(&[0]);
    h.update(detail.as_bytes());
    *h.finalize().as_bytes()
}

/// The Merkle leaf hash of a record: RFC 6962 `SHA-256(0x00 ‖ leaf)` over an unambiguous
/// encoding (the detail is last, so it may hold anything).
pub fn leaf_hash(seq: u64, at_ms: u64, kind: &str, detail: &str) -> [u8; 32] {
    let leaf = format!("rcs-relay audit record v1\n{seq}\n{at_ms}\n{kind}\n{detail}");
    record_hash(leaf.as_bytes()).0
}

/// The right edge of an append-only Merkle tree: the roots of its perfect subtrees, largest
/// first (one per bit set in the size). Enough to append and to compute the root.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    nodes: Vec<[u8; 32]>,
}

impl Frontier {
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn push(&mut self, leaf: [u8; 32]) {
        let mut hash = Hash(leaf);
        let mut size = self.size;
        while size & 1 == 1 {
            let left = self.nodes.pop().expect("a node per bit set in the size");
            hash = node_hash(Hash(left), hash);
            size >>= 1;
        }
        self.nodes.push(hash.0);
        self.size += 1;
    }

    /// RFC 6962's Merkle tree hash of the leaves so far (`SHA-256("")` for none).
    pub fn root(&self) -> [u8; 32] {
        let mut nodes = self.nodes.iter().rev();
        let Some(last) = nodes.next() else {
            return EMPTY_ROOT;
        };
        nodes.fold(Hash(*last), |right, left| node_hash(Hash(*left), right)).0
    }

    /// `size:8` then the nodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.size.to_be_bytes().to_vec();
        for n in &self.nodes {
            out.extend_from_slice(n);
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let size = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
        let rest = &bytes[8..];
        if rest.len() != 32 * size.count_ones() as usize {
            return None;
        }
        let nodes = rest.chunks_exact(32).map(|c| c.try_into().expect("32 bytes")).collect();
        Some(Self { size, nodes })
    }
}

/// SHA-256 of the empty string.
const EMPTY_ROOT: [u8; 32] = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24, 0x27, 0xae, 0x41,
    0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

/// Why the audit key or a checkpoint could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AuditKeyError {
    #[error("the audit signing key is malformed: {0}")]
    Signer(String),
    #[error("the audit verifier key is malformed: {0}")]
    Verifier(String),
    #[error("signing a checkpoint: {0}")]
    Sign(String),
}

/// Signs a message with a key held elsewhere (an HSM): the Ed25519 signature, or why not.
pub type SignFn = std::sync::Arc<dyn Fn(&[u8]) -> Result<Vec<u8>, String> + Send + Sync>;

/// An Ed25519 signed-note key whose signatures are made elsewhere.
struct ExternalSigner {
    name: String,
    id: u32,
    sign: SignFn,
}

impl signed_note::Signer for ExternalSigner {
    fn name(&self) -> &str {
        &self.name
    }
    fn key_id(&self) -> u32 {
        self.id
    }
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
        (self.sign)(msg).map_err(|_| signature::Error::new())
    }
}

enum Key {
    Standard(Box<StandardSigner>),
    External(ExternalSigner),
}

/// The audit signing key (a signed-note Ed25519 key; its name is the log's origin).
pub struct AuditSigner {
    signer: Key,
    origin: String,
}

impl std::fmt::Debug for AuditSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AuditSigner({})", self.origin)
    }
}

/// A new key for the log `origin` (a name without spaces or `+`): (signer key, verifier key)
/// in the signed-note text forms. The signer key is secret.
pub fn generate_key(origin: &str) -> (String, String) {
    signed_note::generate_key(&mut rand_core::OsRng, origin)
}

/// The signed-note verifier key of the Ed25519 `public_key` named `origin`.
pub fn verifier_key(origin: &str, public_key: &[u8; 32]) -> String {
    use base64::Engine as _;
    let key = [&[1u8], public_key.as_slice()].concat();
    format!(
        "{origin}+{:08x}+{}",
        signed_note::key_id(origin, &key),
        base64::engine::general_purpose::STANDARD.encode(&key)
    )
}

impl AuditSigner {
    pub fn new(skey: &str) -> Result<Self, AuditKeyError> {
        let signer = StandardSigner::new(skey.trim()).map_err(|e| AuditKeyError::Signer(e.to_string()))?;
        let origin = signed_note::Signer::name(&signer).to_owned();
        Ok(Self {
            signer: Key::Standard(Box::new(signer)),
            origin,
        })
    }

    /// A key held elsewhere (an HSM) with this Ed25519 `public_key`, signing through `sign`.
    pub fn external(origin: &str, public_key: &[u8; 32], sign: SignFn) -> Self {
        let key = [&[1u8], public_key.as_slice()].concat();
        Self {
            signer: Key::External(ExternalSigner {
                name: origin.to_owned(),
                id: signed_note::key_id(origin, &key),
                sign,
            }),
            origin: origin.to_owned(),
        }
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    fn key(&self) -> &dyn signed_note::Signer {
        match &self.signer {
            Key::Standard(s) => s.as_ref(),
            Key::External(s) => s,
        }
    }

    /// The signed checkpoint of a tree of `size` records with root `root`.
    pub fn checkpoint(&self, size: u64, root: [u8; 32]) -> Result<String, AuditKeyError> {
        let text = Checkpoint::new(&self.origin, size, Hash(root), "")
            .map_err(|e| AuditKeyError::Sign(e.to_string()))?
            .to_bytes();
        self.sign_bytes(&text)
    }

    /// Any text (ending in a newline) as a signed note of the audit key: the evidence
    /// bundle's manifest.
    pub fn sign_note(&self, text: &str) -> Result<String, AuditKeyError> {
        self.sign_bytes(text.as_bytes())
    }

    /// The handover checkpoint of an audit-key rotation: signed by this (outgoing) key and
    /// by `next`, so whoever trusts one learns the other from the log itself.
    pub fn handover(&self, next: &Self, size: u64, root: [u8; 32]) -> Result<String, AuditKeyError> {
        if next.origin != self.origin {
            return Err(AuditKeyError::Sign(format!(
                "the new key names another log ({}, not {})",
                next.origin, self.origin
            )));
        }
        let text = Checkpoint::new(&self.origin, size, Hash(root), "")
            .map_err(|e| AuditKeyError::Sign(e.to_string()))?
            .to_bytes();
        let mut note = Note::new(&text, &[]).map_err(|e| AuditKeyError::Sign(e.to_string()))?;
        note.add_sigs(&[self.key(), next.key()])
            .map_err(|e| AuditKeyError::Sign(e.to_string()))?;
        String::from_utf8(note.to_bytes()).map_err(|e| AuditKeyError::Sign(e.to_string()))
    }

    fn sign_bytes(&self, text: &[u8]) -> Result<String, AuditKeyError> {
        let mut note = Note::new(text, &[]).map_err(|e| AuditKeyError::Sign(e.to_string()))?;
        note.add_sigs(&[self.key()])
            .map_err(|e| AuditKeyError::Sign(e.to_string()))?;
        String::from_utf8(note.to_bytes()).map_err(|e| AuditKeyError::Sign(e.to_string()))
    }
}

/// The verifiers of `vkeys`: one signed-note verifier key per line (every audit key the log
/// has had, after rotations), all naming the same log. Returns them and the log's origin.
fn verifiers(vkeys: &str) -> Result<(VerifierList, String), String> {
    let mut list: Vec<Box<dyn signed_note::Verifier>> = Vec::new();
    let mut origin: Option<String> = None;
    for line in vkeys.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let v = StandardVerifier::new(line).map_err(|e| format!("the verifier key is malformed: {e}"))?;
        let name = signed_note::Verifier::name(&v).to_owned();
        match &origin {
            Some(o) if *o != name => return Err(format!("verifier keys of two logs ({o}, {name})")),
            Some(_) => {}
            None => origin = Some(name),
        }
        list.push(Box::new(v));
    }
    let origin = origin.ok_or("no verifier key")?;
    Ok((VerifierList::new(list), origin))
}

/// How many of the audit keys in `vkeys` (one per line) signed `note`.
pub fn signers(note: &str, vkeys: &str) -> Result<usize, String> {
    let (list, _) = verifiers(vkeys)?;
    let note = Note::from_bytes(note.as_bytes()).map_err(|e| format!("not a signed note: {e}"))?;
    let (verified, _) = note
        .verify(&list)
        .map_err(|e| format!("not signed by an audit key ({e})"))?;
    Ok(verified.len())
}

/// The text of a note signed by the audit key `vkey` (an error if it is not).
pub fn open_note(note: &str, vkey: &str) -> Result<String, String> {
    let (list, _) = verifiers(vkey)?;
    let note = Note::from_bytes(note.as_bytes()).map_err(|e| format!("not a signed note: {e}"))?;
    note.verify(&list)
        .map_err(|e| format!("not signed by the audit key ({e})"))?;
    String::from_utf8(note.text().to_vec()).map_err(|_| "not text".to_owned())
}

/// A checkpoint whose signature verified: the log's origin, size and root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub origin: String,
    pub size: u64,
    pub root: [u8; 32],
}

/// Opens a signed checkpoint with the audit verifier key `vkey`.
pub fn open_checkpoint(note: &str, vkey: &str) -> Result<Opened, String> {
    let (_, origin) = verifiers(vkey)?;
    let text = open_note(note, vkey)?;
    let cp = Checkpoint::from_bytes(text.as_bytes()).map_err(|e| format!("not a checkpoint: {e}"))?;
    if cp.origin() != origin {
        return Err(format!("a checkpoint of another log ({})", cp.origin()));
    }
    Ok(Opened {
        origin,
        size: cp.size(),
        root: cp.hash().0,
    })
}

/// What a verification proved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub records: u64,
    pub checkpoints: usize,
    /// Records after the last checkpoint: chained, but not yet committed to by a signature.
    pub uncovered: u64,
}

/// The first record that could not be proven, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("record {record}: {reason}")]
pub struct Bad {
    pub record: u64,
    pub reason: String,
}

/// Where a log starts when its oldest records were pruned (retention): the chain hash and the
/// tree's frontier after record `size`. A signed checkpoint at `size` must prove it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Base {
    pub size: u64,
    pub chain: [u8; 32],
    pub frontier: Frontier,
}

/// Checks an exported log: every record in order and matching its chain hash, every
/// checkpoint signed by `vkey` and reproduced by the records, and `against` (an auditor's
/// earlier checkpoint) likewise. Checkpoints may come in any order.
pub fn verify(records: &[Record], checkpoints: &[String], vkey: &str, against: Option<&str>) -> Result<Verified, Bad> {
    verify_from(None, records, checkpoints, vkey, against)
}

/// [`verify`] for a log whose records up to `base.size` were pruned: the base must be proven
/// by a checkpoint at its size; checkpoints of the pruned part are no longer checked.
pub fn verify_from(
    base: Option<&Base>,
    records: &[Record],
    checkpoints: &[String],
    vkey: &str,
    against: Option<&str>,
) -> Result<Verified, Bad> {
    let mut opened = Vec::with_capacity(checkpoints.len() + 1);
    // Checkpoints that do not verify, with the size they claim (unproven, but it tells
    // which records they were meant to prove).
    let mut forged = Vec::new();
    for (n, note) in checkpoints.iter().map(String::as_str).chain(against).enumerate() {
        let what = if n < checkpoints.len() {
            "a checkpoint in the log"
        } else {
            "the checkpoint given to check against"
        };
        match open_checkpoint(note, vkey) {
            Ok(o) => opened.push((o, what)),
            Err(e) => forged.push((claimed_size(note), format!("{what} is {e}"))),
        }
    }
    opened.sort_by_key(|(o, _)| o.size);
    let pruned = base.map_or(0, |b| b.size);
    opened.retain(|(o, _)| o.size >= pruned);
    let walked = walk(base, records, &opened);
    // The first record a forged checkpoint leaves unproven: after the last valid checkpoint
    // below the size it claims.
    let first_forged = forged
        .into_iter()
        .map(|(claimed, reason)| {
            let proven = opened
                .iter()
                .map(|(o, _)| o.size)
                .filter(|s| claimed.is_none_or(|c| *s < c))
                .max()
                .unwrap_or(0);
            Bad {
                record: proven + 1,
                reason,
            }
        })
        .min_by_key(|b| b.record);
    match (walked, first_forged) {
        (Err(bad), Some(f)) => Err(if f.record < bad.record { f } else { bad }),
        (Err(bad), None) => Err(bad),
        (Ok(_), Some(f)) => Err(f),
        (Ok(v), None) => Ok(v),
    }
}

/// The size a checkpoint note claims, without checking its signature.
fn claimed_size(note: &str) -> Option<u64> {
    let note = Note::from_bytes(note.as_bytes()).ok()?;
    Checkpoint::from_bytes(note.text()).ok().map(|c| c.size())
}

/// Replays the records in order against the chain and the verified checkpoints (by size).
fn walk(base: Option<&Base>, records: &[Record], opened: &[(Opened, &str)]) -> Result<Verified, Bad> {
    let mut frontier = base.map_or_else(Frontier::default, |b| b.frontier.clone());
    let mut prev = base.map_or(CHAIN_START, |b| b.chain);
    let pruned = frontier.size();
    if base.is_some_and(|b| b.frontier.size() != b.size) {
        return Err(Bad {
            record: pruned + 1,
            reason: "the base of the pruned log is inconsistent".into(),
        });
    }
    let mut proven = 0u64;
    let mut next_checkpoint = opened.iter().peekable();
    let mut check = |frontier: &Frontier, proven: &mut u64| -> Result<(), Bad> {
        while let Some((o, what)) = next_checkpoint.next_if(|(o, _)| o.size == frontier.size()) {
            if o.root != frontier.root() {
                return Err(Bad {
                    record: *proven + 1,
                    reason: format!(
                        "records {}..={} do not reproduce {what} (size {}): one of them was changed, removed or reordered",
                        *proven + 1,
                        o.size,
                        o.size
                    ),
                });
            }
            *proven = o.size;
        }
        Ok(())
    };
    check(&frontier, &mut proven)?;
    if proven < pruned {
        return Err(Bad {
            record: pruned + 1,
            reason: format!("records 1..={pruned} were pruned, but no checkpoint at {pruned} proves what they were"),
        });
    }
    for (i, r) in records.iter().enumerate() {
        let want = pruned + i as u64 + 1;
        if r.seq != want {
            return Err(Bad {
                record: want,
                reason: format!("expected record {want}, found record {} (removed or reordered)", r.seq),
            });
        }
        let chain = chain_hash(&prev, r.seq, r.at_ms, &r.kind, &r.detail);
        if chain != r.chain {
            return Err(Bad {
                record: want,
                reason: "does not match its chain hash (changed)".into(),
            });
        }
        prev = chain;
        frontier.push(leaf_hash(r.seq, r.at_ms, &r.kind, &r.detail));
        check(&frontier, &mut proven)?;
    }
    if let Some((o, what)) = next_checkpoint.next() {
        return Err(Bad {
            record: frontier.size() + 1,
            reason: format!(
                "{what} commits to {} records, the log has {}: its tail was cut",
                o.size,
                frontier.size()
            ),
        });
    }
    Ok(Verified {
        records: frontier.size(),
        checkpoints: opened.len(),
        uncovered: frontier.size() - proven,
    })
}

#[cfg(test)]
mod tests;
