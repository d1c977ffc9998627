//! The replicated state machine: an ordered key space on a sled tree.
//!
//! Layout of the `sm` tree (one tree, so one sled batch makes an entry's
//! effects and the new `last_applied` atomic):
//!
//! * `d` + key                      -> bincode [`Record`]
//! * `x` + expires_at (BE u64) + key -> empty (the expiry index)
//! * `q` + prefix                   -> next sequence number (BE u64)
//! * `m` + name                     -> metadata: last applied log id, membership
//! * `i` + request id (BE u128)     -> bincode [`Remembered`]: a request's
//!   first outcome
//! * `j` + now (BE u64) + index (BE u64) -> request id (the age index)
//! * `k`                            -> how many request ids are remembered
//!
//! Exactly once: a transaction with a request id that is remembered changes
//! nothing and returns the remembered result. Ids are forgotten when a
//! later transaction's `now` is more than [`REQUEST_WINDOW_MS`] past theirs,
//! or oldest first beyond [`REQUEST_CAP`] ids, at most
//! [`PRUNE_PER_ENTRY`] per entry; all of it judged from replicated data
//! only, so every replica remembers the same ids. The table lives in the
//! `sm` tree, so snapshots carry it.
//!
//! Apply uses no clock and no randomness: expiry is judged against the `now`
//! carried in each transaction. The state machine knows nothing of services.
//!
//! Must never: apply a remembered request id again, or let a replica's own
//! clock decide what is remembered.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::ops::Bound;
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{
    EntryPayload, LogId, Snapshot, SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, RwLock};

use crate::durable::Durable;
use crate::txn::{sequence_key, Cond, Millis, Op, Record, RequestId, Txn, TxnResult};
use crate::{BasicNode, NodeId, TypeConfig};

const DATA: u8 = b'd';
const EXPIRY: u8 = b'x';
const SEQ: u8 = b'q';
const REQUEST: u8 = b'i';
const REQUEST_AGE: u8 = b'j';
const REQUEST_COUNT: &[u8] = b"k";
pub(crate) const META_APPLIED: &[u8] = b"mapplied";
pub(crate) const META_MEMBERSHIP: &[u8] = b"mmembership";
pub(crate) const SNAP_META: &[u8] = b"meta";
pub(crate) const SNAP_DATA: &[u8] = b"data";

type SErr = StorageError<NodeId>;

/// How long (in proposer time, `Txn::now`) a request id is remembered: a
/// retry later than this may apply again.
pub const REQUEST_WINDOW_MS: Millis = 10 * 60 * 1000;
/// At most this many request ids are remembered; the oldest go first.
pub const REQUEST_CAP: u64 = 100_000;
/// At most this many remembered ids are forgotten per applied entry, so an
/// entry's work stays bounded (the table shrinks a little late, never
/// wrongly).
pub const PRUNE_PER_ENTRY: usize = 64;

/// A request's first outcome.
#[derive(Debug, Serialize, Deserialize)]
struct Remembered {
    now: Millis,
    result: TxnResult,
}

fn request_key(id: RequestId) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.push(REQUEST);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// The age index key of a request applied at `now`, as transaction `pos`
/// of the batch at log index `index` (so ids of one batch never share a key).
fn request_age_key(now: Millis, index: u64, pos: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(21);
    k.push(REQUEST_AGE);
    k.extend_from_slice(&now.to_be_bytes());
    k.extend_from_slice(&index.to_be_bytes());
    k.extend_from_slice(&pos.to_be_bytes());
    k
}

fn be_u64(raw: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = raw.len().min(8);
    b[..n].copy_from_slice(&raw[..n]);
    u64::from_be_bytes(b)
}

/// A change the state machine applied, for watchers of a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A key was written; `created` when it held no live record before.
    Put {
        key: Vec<u8>,
        record: Record,
        created: bool,
    },
    /// A key was removed (deleted, purged by prefix, or expired).
    Delete { key: Vec<u8> },
    /// The whole state was replaced by a snapshot: watchers must re-read.
    Reset,
}

fn data_key(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(DATA);
    k.extend_from_slice(key);
    k
}

fn expiry_key(at: Millis, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 9);
    k.push(EXPIRY);
    k.extend_from_slice(&at.to_be_bytes());
    k.extend_from_slice(key);
    k
}

fn seq_key(prefix: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + 1);
    k.push(SEQ);
    k.extend_from_slice(prefix);
    k
}

pub(crate) fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, bincode::Error> {
    bincode::serialize(v)
}

fn decode_record(raw: &[u8]) -> Result<Record, crate::Error> {
    bincode::deserialize(raw).map_err(|e| crate::Error::Storage(format!("corrupt record: {e}")))
}

/// The smallest key greater than every key that starts with `prefix`, or
/// `None` when no such key exists (prefix of all 0xFF).
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Read access to the applied state. Cheap to clone; safe to use from any
/// task. Reads never block on apply: sled batches are atomic, so a reader sees
/// an entry's effects whole or not at all.
#[derive(Clone)]
pub struct Reader {
    tree: sled::Tree,
}

impl Reader {
    /// The live record under `key` at time `now`.
    pub fn get(&self, key: &[u8], now: Millis) -> Result<Option<Record>, crate::Error> {
        match self.tree.get(data_key(key))? {
            Some(raw) => {
                let r = decode_record(&raw)?;
                Ok((!r.expired(now)).then_some(r))
            }
            None => Ok(None),
        }
    }

    /// Live records whose keys start with `prefix`, in key order (or reverse
    /// order).
    pub fn scan<'a>(
        &'a self,
        prefix: &[u8],
        now: Millis,
        reverse: bool,
    ) -> impl Iterator<Item = Result<(Vec<u8>, Record), crate::Error>> + 'a {
        let start = data_key(prefix);
        let end = match prefix_end(&start) {
            Some(end) => Bound::Excluded(end),
            None => Bound::Unbounded,
        };
        self.range(Bound::Included(start), end, now, reverse)
    }

    /// Live records whose keys start with `prefix`, beginning at `from`
    /// (included when it exists): in key order the keys at or after it, in
    /// reverse order the keys at or before it. One seek to `from`, however
    /// many keys lie before it: reading from sequence N of a long log costs
    /// what reading from its start does. A `from` outside the prefix is
    /// clamped to it.
    pub fn scan_from<'a>(
        &'a self,
        prefix: &[u8],
        from: &[u8],
        now: Millis,
        reverse: bool,
    ) -> impl Iterator<Item = Result<(Vec<u8>, Record), crate::Error>> + 'a {
        let first = data_key(prefix);
        let end = prefix_end(&first);
        let at = data_key(from);
        let (lo, hi) = if reverse {
            let hi = match &end {
                Some(end) if at >= *end => Bound::Excluded(end.clone()),
                _ => Bound::Included(at),
            };
            (Bound::Included(first), hi)
        } else {
            let hi = match end {
                Some(end) => Bound::Excluded(end),
                None => Bound::Unbounded,
            };
            (Bound::Included(at.max(first)), hi)
        };
        self.range(lo, hi, now, reverse)
    }

    /// Live records with raw (`sm` tree) keys within the bounds, returned
    /// with the data prefix stripped. An empty range yields nothing.
    fn range<'a>(
        &'a self,
        lo: Bound<Vec<u8>>,
        hi: Bound<Vec<u8>>,
        now: Millis,
        reverse: bool,
    ) -> impl Iterator<Item = Result<(Vec<u8>, Record), crate::Error>> + 'a {
        let empty = match (&lo, &hi) {
            (Bound::Included(l), Bound::Included(h)) => l > h,
            (Bound::Included(l), Bound::Excluded(h)) => l >= h,
            _ => false,
        };
        let iter: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> = if empty {
            // sled panics on a range whose start lies after its end.
            Box::new(std::iter::empty())
        } else if reverse {
            Box::new(self.tree.range((lo, hi)).rev())
        } else {
            Box::new(self.tree.range((lo, hi)))
        };
        iter.filter_map(move |item| match item {
            Err(e) => Some(Err(e.into())),
            Ok((k, v)) => match decode_record(&v) {
                Err(e) => Some(Err(e)),
                Ok(r) if r.expired(now) => None,
                Ok(r) => Some(Ok((k[1..].to_vec(), r))),
            },
        })
    }

    /// The distinct path segments directly below `prefix`, where segments end
    /// at `sep`: for keys `a/x/1`, `a/y/2` and prefix `a/`, yields `x`, `y`.
    /// Skips from one segment to the next, so it costs one seek per segment
    /// rather than a pass over every key. Segments with only expired records
    /// are left out.
    pub fn children(
        &self,
        prefix: &[u8],
        sep: u8,
        now: Millis,
    ) -> Result<Vec<Vec<u8>>, crate::Error> {
        let full = data_key(prefix);
        let end = prefix_end(&full);
        let mut out = Vec::new();
        let mut cursor = full.clone();
        loop {
            let range = match &end {
                Some(end) => self.tree.range(cursor.clone()..end.clone()),
                None => self.tree.range(cursor.clone()..),
            };
            let mut next_cursor = None;
            for item in range {
                let (k, v) = item?;
                let rest = &k[full.len()..];
                let Some(pos) = rest.iter().position(|b| *b == sep) else {
                    continue; // a key directly under the prefix, no segment
                };
                if decode_record(&v)?.expired(now) {
                    continue;
                }
                let segment = rest[..pos].to_vec();
                let mut skip = full.clone();
                skip.extend_from_slice(&segment);
                skip.push(sep + 1);
                out.push(segment);
                next_cursor = Some(skip);
                break;
            }
            match next_cursor {
                Some(c) => cursor = c,
                None => return Ok(out),
            }
        }
    }
}

/// Writes of one entry, held until the entry is done so that later
/// operations of the same transaction see earlier ones.
struct Pending<'a> {
    tree: &'a sled::Tree,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl<'a> Pending<'a> {
    fn new(tree: &'a sled::Tree) -> Self {
        Pending {
            tree,
            writes: BTreeMap::new(),
        }
    }

    fn get(&self, k: &[u8]) -> Result<Option<Vec<u8>>, crate::Error> {
        if let Some(w) = self.writes.get(k) {
            return Ok(w.clone());
        }
        Ok(self.tree.get(k)?.map(|v| v.to_vec()))
    }

    fn record(&self, key: &[u8], now: Millis) -> Result<Option<Record>, crate::Error> {
        match self.get(&data_key(key))? {
            Some(raw) => {
                let r = decode_record(&raw)?;
                Ok((!r.expired(now)).then_some(r))
            }
            None => Ok(None),
        }
    }

    fn insert(&mut self, k: Vec<u8>, v: Vec<u8>) {
        self.writes.insert(k, Some(v));
    }

    fn remove(&mut self, k: Vec<u8>) {
        self.writes.insert(k, None);
    }

    /// Keys (raw, in the `sm` tree) starting with `prefix`, tree and pending
    /// writes merged, at most `limit`.
    fn keys_with_prefix(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, crate::Error> {
        let mut keys: BTreeMap<Vec<u8>, ()> = BTreeMap::new();
        let iter = match end {
            Some(end) => self.tree.range(start.to_vec()..end.to_vec()),
            None => self.tree.range(start.to_vec()..),
        };
        for item in iter {
            let (k, _) = item?;
            if keys.len() >= limit {
                break;
            }
            keys.insert(k.to_vec(), ());
        }
        for (k, v) in self.writes.range(start.to_vec()..) {
            if end.is_some_and(|e| k.as_slice() >= e) {
                break;
            }
            match v {
                Some(_) => {
                    keys.insert(k.clone(), ());
                }
                None => {
                    keys.remove(k);
                }
            }
        }
        Ok(keys.into_keys().take(limit).collect())
    }

    /// Removes a record and its expiry index entry; reports whether it existed.
    fn delete_record(
        &mut self,
        key: &[u8],
        changes: &mut Vec<Change>,
    ) -> Result<bool, crate::Error> {
        let dk = data_key(key);
        let Some(raw) = self.get(&dk)? else {
            return Ok(false);
        };
        let old = decode_record(&raw)?;
        if let Some(at) = old.expires_at {
            self.remove(expiry_key(at, key));
        }
        self.remove(dk);
        changes.push(Change::Delete { key: key.to_vec() });
        Ok(true)
    }

    fn put_record(
        &mut self,
        key: &[u8],
        record: Record,
        now: Millis,
        changes: &mut Vec<Change>,
    ) -> Result<(), crate::Error> {
        let dk = data_key(key);
        let mut created = true;
        if let Some(raw) = self.get(&dk)? {
            let old = decode_record(&raw)?;
            created = old.expired(now);
            if let Some(at) = old.expires_at {
                self.remove(expiry_key(at, key));
            }
        }
        if let Some(at) = record.expires_at {
            self.insert(expiry_key(at, key), Vec::new());
        }
        let raw = encode(&record).map_err(|e| crate::Error::Storage(e.to_string()))?;
        self.insert(dk, raw);
        changes.push(Change::Put {
            key: key.to_vec(),
            record,
            created,
        });
        Ok(())
    }

    /// The first outcome of request `id`, when it is remembered.
    fn remembered(&self, id: RequestId) -> Result<Option<TxnResult>, crate::Error> {
        match self.get(&request_key(id))? {
            Some(raw) => {
                let r: Remembered = bincode::deserialize(&raw)
                    .map_err(|e| crate::Error::Storage(format!("corrupt request record: {e}")))?;
                Ok(Some(r.result))
            }
            None => Ok(None),
        }
    }

    /// Remembers `result` as request `id`'s outcome, first forgetting ids
    /// that aged out (judged against `now`) or exceed `cap` (always
    /// [`REQUEST_CAP`] but in tests).
    fn remember(
        &mut self,
        id: RequestId,
        now: Millis,
        pos: u32,
        result: &TxnResult,
        cap: u64,
    ) -> Result<(), crate::Error> {
        let mut count = self.get(REQUEST_COUNT)?.map(|r| be_u64(&r)).unwrap_or(0);
        let cutoff = now.saturating_sub(REQUEST_WINDOW_MS);
        let start = [REQUEST_AGE];
        let end = [REQUEST_AGE + 1];
        for age in self.keys_with_prefix(&start, Some(&end), PRUNE_PER_ENTRY)? {
            let stamp = be_u64(&age[1..]);
            if stamp >= cutoff && count < cap {
                break;
            }
            if let Some(old) = self.get(&age)? {
                let mut k = Vec::with_capacity(17);
                k.push(REQUEST);
                k.extend_from_slice(&old);
                self.remove(k);
            }
            self.remove(age);
            count = count.saturating_sub(1);
        }
        let raw = encode(&Remembered {
            now,
            result: result.clone(),
        })
        .map_err(|e| crate::Error::Storage(e.to_string()))?;
        self.insert(request_key(id), raw);
        self.insert(
            request_age_key(now, result.index, pos),
            id.to_be_bytes().to_vec(),
        );
        self.insert(REQUEST_COUNT.to_vec(), (count + 1).to_be_bytes().to_vec());
        Ok(())
    }

    fn into_batch(self) -> sled::Batch {
        let mut batch = sled::Batch::default();
        for (k, v) in self.writes {
            match v {
                Some(v) => batch.insert(k, v),
                None => batch.remove(k),
            }
        }
        batch
    }
}

/// Applies `txn`, transaction `pos` of the batch at `index`, unless its
/// request id was applied before; then changes nothing and returns the
/// first outcome.
fn apply_once(
    p: &mut Pending<'_>,
    txn: &Txn,
    index: u64,
    pos: u32,
    changes: &mut Vec<Change>,
) -> Result<TxnResult, crate::Error> {
    let Some(id) = txn.request else {
        return apply_txn(p, txn, index, changes);
    };
    if let Some(first) = p.remembered(id)? {
        return Ok(first);
    }
    let result = apply_txn(p, txn, index, changes)?;
    p.remember(id, txn.now, pos, &result, REQUEST_CAP)?;
    Ok(result)
}

/// Evaluates and applies one transaction at log index `index`.
fn apply_txn(
    p: &mut Pending<'_>,
    txn: &Txn,
    index: u64,
    changes: &mut Vec<Change>,
) -> Result<TxnResult, crate::Error> {
    let now = txn.now;
    for (i, cond) in txn.conds.iter().enumerate() {
        let ok = match cond {
            Cond::Absent(k) => p.record(k, now)?.is_none(),
            Cond::Exists(k) => p.record(k, now)?.is_some(),
            Cond::VersionEq(k, v) => p.record(k, now)?.is_some_and(|r| r.version == *v),
            Cond::ValueEq(k, v) => p.record(k, now)?.is_some_and(|r| &r.value == v),
        };
        if !ok {
            return Ok(TxnResult {
                succeeded: false,
                failed_cond: Some(i as u32),
                index,
                ..Default::default()
            });
        }
    }
    let mut result = TxnResult {
        succeeded: true,
        index,
        ..Default::default()
    };
    for op in &txn.ops {
        match op {
            Op::Put {
                key,
                value,
                expires_at,
            } => {
                let record = Record {
                    value: value.clone(),
                    version: index,
                    expires_at: *expires_at,
                };
                p.put_record(key, record, now, changes)?;
            }
            Op::Delete { key } => {
                if p.delete_record(key, changes)? {
                    result.deleted += 1;
                }
            }
            Op::DeletePrefix { prefix } => {
                let start = data_key(prefix);
                let end = prefix_end(&start);
                for raw in p.keys_with_prefix(&start, end.as_deref(), usize::MAX)? {
                    if p.delete_record(&raw[1..], changes)? {
                        result.deleted += 1;
                    }
                }
            }
            Op::Append {
                prefix,
                value,
                expires_at,
            } => {
                let sk = seq_key(prefix);
                let seq = match p.get(&sk)? {
                    Some(raw) if raw.len() == 8 => {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&raw);
                        u64::from_be_bytes(b)
                    }
                    _ => 1,
                };
                p.insert(sk, (seq + 1).to_be_bytes().to_vec());
                let key = sequence_key(prefix, seq);
                let record = Record {
                    value: value.clone(),
                    version: index,
                    expires_at: *expires_at,
                };
                p.put_record(&key, record, now, changes)?;
                result.appended.push(key);
            }
            Op::PutAppendedKey { key, expires_at } => {
                if let Some(target) = result.appended.last() {
                    let record = Record {
                        value: target.clone(),
                        version: index,
                        expires_at: *expires_at,
                    };
                    p.put_record(key, record, now, changes)?;
                }
            }
            Op::DeleteRange { start, end, limit } => {
                if start < end {
                    let from = data_key(start);
                    let to = data_key(end);
                    for raw in p.keys_with_prefix(&from, Some(&to), *limit as usize)? {
                        if p.delete_record(&raw[1..], changes)? {
                            result.deleted += 1;
                        }
                    }
                }
            }
            Op::PurgeExpired { limit } => {
                let start = [EXPIRY];
                let end = expiry_key(now.saturating_add(1), b"");
                for raw in p.keys_with_prefix(&start, Some(&end), *limit as usize)? {
                    let key = raw[9..].to_vec();
                    let mut at = [0u8; 8];
                    at.copy_from_slice(&raw[1..9]);
                    let at = u64::from_be_bytes(at);
                    let live = match p.get(&data_key(&key))? {
                        Some(r) => decode_record(&r)?.expires_at == Some(at),
                        None => false,
                    };
                    if live {
                        if p.delete_record(&key, changes)? {
                            result.deleted += 1;
                        }
                    } else {
                        p.remove(raw);
                    }
                }
            }
        }
    }
    Ok(result)
}

/// The state machine openraft drives. Also builds and installs snapshots.
#[derive(Clone)]
pub struct StateMachine {
    pub(crate) durable: Durable,
    pub(crate) tree: sled::Tree,
    pub(crate) snap: sled::Tree,
    /// Apply and snapshot install take it for writing, snapshot builds for
    /// reading, so a snapshot is a consistent cut of the state.
    pub(crate) gate: Arc<RwLock<()>>,
    pub(crate) changes: broadcast::Sender<Arc<Vec<Change>>>,
}

impl StateMachine {
    pub(crate) fn open(
        db: &sled::Db,
        durable: Durable,
        changes: broadcast::Sender<Arc<Vec<Change>>>,
    ) -> Result<Self, crate::Error> {
        Ok(StateMachine {
            durable,
            tree: db.open_tree("sm")?,
            snap: db.open_tree("snapshot")?,
            gate: Arc::new(RwLock::new(())),
            changes,
        })
    }

    /// A reader over the applied state.
    pub fn reader(&self) -> Reader {
        Reader {
            tree: self.tree.clone(),
        }
    }

    pub(crate) fn meta<T: for<'de> Deserialize<'de> + Default>(
        &self,
        key: &[u8],
    ) -> Result<T, SErr> {
        match self
            .tree
            .get(key)
            .map_err(|e| StorageIOError::read_state_machine(&e))?
        {
            Some(raw) => bincode::deserialize(&raw)
                .map_err(|e| StorageIOError::read_state_machine(&e).into()),
            None => Ok(T::default()),
        }
    }
}

pub(crate) fn sm_write_err(e: impl std::error::Error + 'static) -> SErr {
    StorageIOError::write_state_machine(&e).into()
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), SErr> {
        Ok((self.meta(META_APPLIED)?, self.meta(META_MEMBERSHIP)?))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<TxnResult>>, SErr>
    where
        I: IntoIterator<Item = crate::Entry> + Send,
        I::IntoIter: Send,
    {
        let _gate = self.gate.write().await;
        let mut results = Vec::new();
        let mut changes = Vec::new();
        for entry in entries {
            // One sled batch per entry: every transaction of a batch, and
            // the new `last_applied`, become visible (and durable) together.
            let mut p = Pending::new(&self.tree);
            let index = entry.log_id.index;
            let outcomes = match &entry.payload {
                EntryPayload::Blank => Vec::new(),
                EntryPayload::Normal(batch) => {
                    let mut outcomes = Vec::with_capacity(batch.0.len());
                    for (pos, txn) in batch.0.iter().enumerate() {
                        let r = apply_once(&mut p, txn, index, pos as u32, &mut changes)
                            .map_err(|e| StorageIOError::apply(entry.log_id, &e))?;
                        outcomes.push(r);
                    }
                    outcomes
                }
                EntryPayload::Membership(m) => {
                    let stored = StoredMembership::new(Some(entry.log_id), m.clone());
                    p.insert(
                        META_MEMBERSHIP.to_vec(),
                        encode(&stored).map_err(sm_write_err)?,
                    );
                    Vec::new()
                }
            };
            p.insert(
                META_APPLIED.to_vec(),
                encode(&Some(entry.log_id)).map_err(sm_write_err)?,
            );
            self.tree
                .apply_batch(p.into_batch())
                .map_err(sm_write_err)?;
            results.push(outcomes);
        }
        if !changes.is_empty() {
            // Nobody listening is fine.
            let _ = self.changes.send(Arc::new(changes));
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, SErr> {
        self.begin_receiving().await
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), SErr> {
        self.install(meta, snapshot).await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SErr> {
        self.current_snapshot().await
    }
}

impl Reader {
    /// The earliest expiry time in the expiry index, if any record expires.
    pub fn first_expiry(&self) -> Result<Option<Millis>, crate::Error> {
        let start = [EXPIRY];
        let end = [EXPIRY + 1];
        match self.tree.range(start..end).next() {
            Some(item) => {
                let (k, _) = item?;
                let mut at = [0u8; 8];
                at.copy_from_slice(&k[1..9]);
                Ok(Some(u64::from_be_bytes(at)))
            }
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beyond_the_cap_the_oldest_request_ids_are_forgotten() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("sm").unwrap();
        // Stamps out of order on purpose: "oldest" is by proposer time.
        for (index, (id, now)) in [(1u128, 50u64), (2, 10), (3, 30), (4, 40), (5, 60)]
            .into_iter()
            .enumerate()
        {
            let mut p = Pending::new(&tree);
            let result = TxnResult {
                succeeded: true,
                index: index as u64 + 1,
                ..Default::default()
            };
            p.remember(id, now, 0, &result, 3).unwrap();
            tree.apply_batch(p.into_batch()).unwrap();
        }
        let p = Pending::new(&tree);
        let kept: Vec<u128> = (1..=5)
            .filter(|id| p.remembered(*id).unwrap().is_some())
            .collect();
        assert_eq!(kept, vec![1, 4, 5], "ids 2 (t=10) and 3 (t=30) went first");
        let count = be_u64(&tree.get(REQUEST_COUNT).unwrap().unwrap());
        assert_eq!(count, 3);
        assert_eq!(
            tree.scan_prefix([REQUEST_AGE]).count(),
            3,
            "the age index shrinks with the table"
        );
    }
}
