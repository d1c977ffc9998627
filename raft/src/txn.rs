//! The small transaction language the state machine replicates.
//!
//! A [`Txn`] is a list of conditions and a list of operations. If every
//! condition holds, every operation is applied, atomically; otherwise nothing
//! changes and the result says which condition failed. The proposer stamps
//! the transaction with its clock (`now`, unix milliseconds), so applying it
//! is deterministic: expiry is judged against that stamp, never against the
//! applying node's clock.
//!
//! A transaction may carry a request id ([`Txn::request`]): the state
//! machine applies each id at most once and answers a repeat with the
//! first outcome, so a write retried after a leader change, a forward that
//! broke, or a client's retry cannot take effect twice.

use serde::{Deserialize, Serialize};

/// Unix time in milliseconds.
pub type Millis = u64;

/// A condition on one key. A record whose expiry is at or before the
/// transaction's `now` counts as absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cond {
    /// The key holds no live record.
    Absent(Vec<u8>),
    /// The key holds a live record.
    Exists(Vec<u8>),
    /// The key's live record has this version (the log index of its last write).
    VersionEq(Vec<u8>, u64),
    /// The key's live record has exactly this value.
    ValueEq(Vec<u8>, Vec<u8>),
}

/// One change to the key space.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Set a key, optionally with an absolute expiry.
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        expires_at: Option<Millis>,
    },
    /// Remove a key (no error if absent).
    Delete { key: Vec<u8> },
    /// Remove every key that starts with `prefix`.
    DeletePrefix { prefix: Vec<u8> },
    /// Store `value` under `prefix` followed by the prefix's next sequence
    /// number, written as 20 zero-padded decimal digits so keys sort in order.
    Append {
        prefix: Vec<u8>,
        value: Vec<u8>,
        expires_at: Option<Millis>,
    },
    /// Delete up to `limit` records whose expiry is at or before the
    /// transaction's `now`. Proposed by the leader's expiry sweeper.
    PurgeExpired { limit: u32 },
    /// Set `key` to the key the last `Append` before it in this
    /// transaction wrote (an index from a name to a sequenced record, such
    /// as a message id to its event). Without an earlier `Append` it
    /// writes nothing.
    PutAppendedKey {
        key: Vec<u8>,
        expires_at: Option<Millis>,
    },
    /// Remove up to `limit` records with keys in `start..end` (end
    /// excluded), in key order: trimming the oldest entries of a sequence.
    DeleteRange {
        start: Vec<u8>,
        end: Vec<u8>,
        limit: u32,
    },
}

/// Identifies one logical write across every retry and forward of it.
pub type RequestId = u128;

/// A transaction: all operations apply if and only if all conditions hold.
///
/// Encoded with bincode (log entries, peer messages), where fields are
/// positional: `request` is last, and entries written before it existed
/// are read through [`decode_entry`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    pub conds: Vec<Cond>,
    pub ops: Vec<Op>,
    /// The proposer's clock; [`crate::Replica::write`] fills it when zero.
    pub now: Millis,
    /// The write's request id: a transaction whose id was already applied
    /// (within the remembered window) changes nothing and returns the first
    /// outcome. [`crate::Replica::write`] draws a random one when absent.
    #[serde(default)]
    pub request: Option<RequestId>,
}

impl Txn {
    /// A transaction with no conditions.
    pub fn ops(ops: Vec<Op>) -> Self {
        Txn {
            conds: Vec::new(),
            ops,
            now: 0,
            request: None,
        }
    }

    /// Sets the request id (a client retrying a write passes the same one).
    pub fn with_request(mut self, id: RequestId) -> Self {
        self.request = Some(id);
        self
    }

    /// Adds a condition.
    pub fn when(mut self, cond: Cond) -> Self {
        self.conds.push(cond);
        self
    }

    /// A single put.
    pub fn put(
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        expires_at: Option<Millis>,
    ) -> Self {
        Txn::ops(vec![Op::Put {
            key: key.into(),
            value: value.into(),
            expires_at,
        }])
    }

    /// About how many bytes the transaction takes in a log entry: what
    /// bounds a batch.
    pub fn approx_size(&self) -> usize {
        let conds: usize = self
            .conds
            .iter()
            .map(|c| match c {
                Cond::Absent(k) | Cond::Exists(k) | Cond::VersionEq(k, _) => k.len() + 16,
                Cond::ValueEq(k, v) => k.len() + v.len() + 16,
            })
            .sum();
        let ops: usize = self
            .ops
            .iter()
            .map(|o| match o {
                Op::Put { key, value, .. } => key.len() + value.len() + 32,
                Op::Delete { key } => key.len() + 16,
                Op::DeletePrefix { prefix } => prefix.len() + 16,
                Op::Append { prefix, value, .. } => prefix.len() + value.len() + 32,
                Op::PurgeExpired { .. } => 8,
                Op::PutAppendedKey { key, .. } => key.len() + 24,
                Op::DeleteRange { start, end, .. } => start.len() + end.len() + 24,
            })
            .sum();
        48 + conds + ops
    }

    /// A single delete.
    pub fn delete(key: impl Into<Vec<u8>>) -> Self {
        Txn::ops(vec![Op::Delete { key: key.into() }])
    }
}

/// What a transaction did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResult {
    /// Whether every condition held (and so the operations were applied).
    pub succeeded: bool,
    /// Index of the first condition that failed, when one did.
    pub failed_cond: Option<u32>,
    /// The log index the transaction was applied at: the version of every
    /// record it wrote.
    pub index: u64,
    /// For each `Append`, the key it wrote, in operation order.
    pub appended: Vec<Vec<u8>>,
    /// Number of records removed by deletes and purges.
    pub deleted: u64,
}

/// A transaction as encoded before request ids existed.
#[derive(Deserialize)]
struct LegacyTxn {
    conds: Vec<Cond>,
    ops: Vec<Op>,
    now: Millis,
}

impl From<LegacyTxn> for Txn {
    fn from(t: LegacyTxn) -> Txn {
        Txn {
            conds: t.conds,
            ops: t.ops,
            now: t.now,
            request: None,
        }
    }
}

/// Decodes a bincode [`Txn`], also in the encoding from before request ids
/// (a forward from a node not yet upgraded).
pub fn decode_txn(raw: &[u8]) -> Result<Txn, bincode::Error> {
    match bincode::deserialize::<Txn>(raw) {
        Ok(t) => Ok(t),
        // The old encoding ends where `request` would start, so the new
        // decoder runs out of input; the old one cannot misread new bytes
        // because the new decoder is tried first.
        Err(e) => bincode::deserialize::<LegacyTxn>(raw)
            .map(Txn::from)
            .map_err(|_| e),
    }
}

/// What one Raft entry carries: transactions applied in order, each judged
/// on its own (a failed condition fails only its transaction, and a later
/// one sees what the earlier ones wrote), all in one atomic write of the
/// state machine. The leader gathers writes that arrive while earlier
/// ones are in flight into one batch: group commit, one log append and one
/// fsync for all of them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch(pub Vec<Txn>);

/// The first bytes of every stored log entry in the batch encoding. An
/// entry from before batches starts with its term as a little-endian u64,
/// which would have to be above 2^60 to begin like this.
const ENTRY_MAGIC: [u8; 8] = [0xB2, 0x6D, 0x69, 0x63, 0x72, 0x6F, 0x00, 0xF0];

/// Encodes a log entry for storage (the encoding [`decode_entry`] reads).
pub fn encode_entry(entry: &crate::Entry) -> Result<Vec<u8>, bincode::Error> {
    let size = bincode::serialized_size(entry)? as usize;
    let mut out = Vec::with_capacity(ENTRY_MAGIC.len() + size);
    out.extend_from_slice(&ENTRY_MAGIC);
    bincode::serialize_into(&mut out, entry)?;
    Ok(out)
}

/// A log entry as stored before batches: one transaction per entry (fields
/// and variants in the same positions as openraft's `Entry` and
/// `EntryPayload`), with request ids (`T` = [`Txn`]) or from before them
/// (`T` = [`LegacyTxn`]).
#[derive(Deserialize)]
struct OldEntry<T> {
    log_id: openraft::LogId<crate::NodeId>,
    payload: OldPayload<T>,
}

#[derive(Deserialize)]
enum OldPayload<T> {
    Blank,
    Normal(T),
    Membership(openraft::Membership<crate::NodeId, crate::BasicNode>),
}

impl<T: Into<Txn>> OldEntry<T> {
    fn upgrade(self) -> crate::Entry {
        let payload = match self.payload {
            OldPayload::Blank => openraft::EntryPayload::Blank,
            OldPayload::Normal(t) => openraft::EntryPayload::Normal(Batch(vec![t.into()])),
            OldPayload::Membership(m) => openraft::EntryPayload::Membership(m),
        };
        crate::Entry {
            log_id: self.log_id,
            payload,
        }
    }
}

/// Decodes a stored log entry, also one written by an older build (one
/// transaction per entry, with or without a request id): a data dir from
/// an older build keeps working.
pub fn decode_entry(raw: &[u8]) -> Result<crate::Entry, bincode::Error> {
    if let Some(rest) = raw.strip_prefix(&ENTRY_MAGIC) {
        return bincode::deserialize::<crate::Entry>(rest);
    }
    match bincode::deserialize::<OldEntry<Txn>>(raw) {
        Ok(e) => Ok(e.upgrade()),
        Err(e) => bincode::deserialize::<OldEntry<LegacyTxn>>(raw)
            .map(OldEntry::upgrade)
            .map_err(|_| e),
    }
}

/// A stored record as reads see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub value: Vec<u8>,
    /// Log index of the write that produced this value.
    pub version: u64,
    pub expires_at: Option<Millis>,
}

impl Record {
    /// Whether the record is expired at time `now`.
    pub fn expired(&self, now: Millis) -> bool {
        matches!(self.expires_at, Some(t) if t <= now)
    }
}

/// The key an `Append` writes for a prefix and sequence number.
pub fn sequence_key(prefix: &[u8], seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + 20);
    key.extend_from_slice(prefix);
    key.extend_from_slice(format!("{seq:020}").as_bytes());
    key
}

/// The current unix time in milliseconds.
pub fn now_millis() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}
