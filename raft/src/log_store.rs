//! The Raft log and vote on sled.
//!
//! Every change that openraft must be able to rely on after a crash (vote,
//! appended entries, truncation, purge) is made durable with
//! [`Durable::sync`] — sled's flush and then a real `fdatasync`, off the
//! runtime — before openraft is told it is done (see `durable.rs` for why
//! sled's flush alone is not enough).
//!
//! Must never: call openraft's `log_io_completed` before the sync returned.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{LogId, RaftLogReader, StorageError, StorageIOError, Vote};

use crate::durable::Durable;
use crate::txn::{decode_entry, encode_entry};
use crate::{Entry, NodeId, TypeConfig};

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const LAST_PURGED: &[u8] = b"last_purged";

type SErr = StorageError<NodeId>;

fn index_key(i: u64) -> [u8; 8] {
    i.to_be_bytes()
}

/// The log store. Cheap to clone: clones share the same trees.
#[derive(Clone)]
pub struct LogStore {
    durable: Durable,
    log: sled::Tree,
    meta: sled::Tree,
}

impl LogStore {
    pub(crate) fn open(db: &sled::Db, durable: Durable) -> Result<Self, crate::Error> {
        Ok(LogStore {
            durable,
            log: db.open_tree("log")?,
            meta: db.open_tree("log_meta")?,
        })
    }

    fn get_meta<T: for<'de> serde::Deserialize<'de>>(&self, key: &[u8]) -> Result<Option<T>, SErr> {
        match self.meta.get(key).map_err(|e| StorageIOError::read(&e))? {
            Some(raw) => Ok(Some(
                bincode::deserialize(&raw).map_err(|e| StorageIOError::read(&e))?,
            )),
            None => Ok(None),
        }
    }

    fn put_meta<T: serde::Serialize>(&self, key: &[u8], v: &T) -> Result<(), SErr> {
        let raw = bincode::serialize(v).map_err(|e| StorageIOError::write(&e))?;
        self.meta
            .insert(key, raw)
            .map_err(|e| StorageIOError::write(&e))?;
        Ok(())
    }

    async fn flush(&self) -> Result<(), SErr> {
        self.durable
            .sync()
            .await
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, SErr> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let iter = match range.end_bound() {
            Bound::Included(i) => self.log.range(index_key(start)..=index_key(*i)),
            Bound::Excluded(i) => self.log.range(index_key(start)..index_key(*i)),
            Bound::Unbounded => self.log.range(index_key(start)..),
        };
        let mut out = Vec::new();
        for item in iter {
            let (_, v) = item.map_err(|e| StorageIOError::read_logs(&e))?;
            out.push(decode_entry(&v).map_err(|e| StorageIOError::read_logs(&e))?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, SErr> {
        let last_purged: Option<LogId<NodeId>> = self.get_meta(LAST_PURGED)?;
        let last = match self.log.last().map_err(|e| StorageIOError::read_logs(&e))? {
            Some((_, v)) => {
                let e: Entry = decode_entry(&v).map_err(|e| StorageIOError::read_logs(&e))?;
                Some(e.log_id)
            }
            None => last_purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), SErr> {
        self.put_meta(VOTE, vote)?;
        self.durable
            .sync()
            .await
            .map_err(|e| StorageIOError::write_vote(&e))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, SErr> {
        self.get_meta(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), SErr> {
        // Not flushed on purpose: losing it only means re-learning the commit
        // point from the leader, never losing an entry.
        self.put_meta(COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, SErr> {
        Ok(self.get_meta::<Option<LogId<NodeId>>>(COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), SErr>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut batch = sled::Batch::default();
        for entry in entries {
            let raw = encode_entry(&entry).map_err(|e| StorageIOError::write_logs(&e))?;
            batch.insert(&index_key(entry.log_id.index), raw);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        let flushed = self.durable.sync().await;
        match flushed {
            Ok(_) => callback.log_io_completed(Ok(())),
            Err(e) => {
                let io = std::io::Error::other(e.to_string());
                callback.log_io_completed(Err(io));
                return Err(StorageIOError::write_logs(&e).into());
            }
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), SErr> {
        let mut batch = sled::Batch::default();
        for k in self.log.range(index_key(log_id.index)..).keys() {
            batch.remove(k.map_err(|e| StorageIOError::write_logs(&e))?);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        self.flush().await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), SErr> {
        // The purge point is made durable first; the entries at or below
        // it are then removed in the background. openraft runs a purge in
        // its core, which sends no heartbeat meanwhile, and removing the
        // thousands of entries a snapshot covers took long enough under
        // load for followers to start elections. Nothing reads below the
        // purge point, and no entry is ever written there again, so
        // entries left over by a crash are harmless (they go with the next
        // purge); the reverse order could leave a hole.
        self.put_meta(LAST_PURGED, &log_id)?;
        self.flush().await?;
        let log = self.log.clone();
        tokio::task::spawn_blocking(move || remove_up_to(&log, log_id.index));
        Ok(())
    }
}

/// Removes the log entries at or below `index`, a bounded batch at a time.
fn remove_up_to(log: &sled::Tree, index: u64) {
    const BATCH: usize = 1024;
    loop {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for k in log.range(..=index_key(index)).keys().take(BATCH) {
            let Ok(k) = k else { return };
            batch.remove(k);
            n += 1;
        }
        if n == 0 || log.apply_batch(batch).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload};

    /// A purge reports its point at once and survives a reopen; its
    /// entries are gone soon after, and the ones above it stay.
    #[tokio::test]
    async fn a_purge_keeps_its_point_and_removes_its_entries_behind_it() {
        let dir = tempfile::tempdir().unwrap();
        let id = |i| LogId::new(CommittedLeaderId::new(1, 1), i);
        {
            let (mut log, _sm) = crate::open_storage(dir.path()).unwrap();
            for i in 1..=3000u64 {
                let e = crate::Entry {
                    log_id: id(i),
                    payload: EntryPayload::Blank,
                };
                log.log
                    .insert(index_key(i), encode_entry(&e).unwrap())
                    .unwrap();
            }
            log.purge(id(2500)).await.unwrap();
            let state = log.get_log_state().await.unwrap();
            assert_eq!(state.last_purged_log_id, Some(id(2500)));
            assert_eq!(state.last_log_id, Some(id(3000)));
            let mut left = usize::MAX;
            for _ in 0..100 {
                left = log.log.range(..=index_key(2500)).count();
                if left == 0 {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            assert_eq!(left, 0, "purged entries are still in the log");
            assert_eq!(
                log.try_get_log_entries(2501..=3000).await.unwrap().len(),
                500
            );
            log.flush().await.unwrap();
        }
        let (mut log, _sm) = crate::open_storage(dir.path()).unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(id(2500)));
        assert_eq!(state.last_log_id, Some(id(3000)));
    }
}
