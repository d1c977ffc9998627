//! Snapshots of the state machine: building one from the applied state,
//! keeping the current one, and installing one sent by the leader.
//!
//! Must never: install a snapshot partly (a reader sees the old state or the
//! new one), or tell openraft a snapshot is kept before it is durable.

use std::io::Cursor;

use openraft::{
    LogId, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership,
};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use crate::state_machine::{
    encode, sm_write_err, Change, StateMachine, META_APPLIED, META_MEMBERSHIP, SNAP_DATA, SNAP_META,
};
use crate::{BasicNode, NodeId, TypeConfig};

type SErr = StorageError<NodeId>;

#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    pairs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl StateMachine {
    pub(crate) async fn begin_receiving(&mut self) -> Result<Box<Cursor<Vec<u8>>>, SErr> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    pub(crate) async fn install(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), SErr> {
        let bytes = snapshot.into_inner();
        let body: SnapshotBody = bincode::deserialize(&bytes)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        {
            let _gate = self.gate.write().await;
            let mut batch = sled::Batch::default();
            for k in self.tree.iter().keys() {
                batch.remove(k.map_err(sm_write_err)?);
            }
            for (k, v) in body.pairs {
                batch.insert(k, v);
            }
            batch.insert(
                META_APPLIED,
                encode(&meta.last_log_id).map_err(sm_write_err)?,
            );
            batch.insert(
                META_MEMBERSHIP,
                encode(&meta.last_membership).map_err(sm_write_err)?,
            );
            self.tree.apply_batch(batch).map_err(sm_write_err)?;
        }
        self.save_snapshot(meta, &bytes).await?;
        let _ = self.changes.send(Arc::new(vec![Change::Reset]));
        Ok(())
    }

    pub(crate) async fn current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SErr> {
        let read_err = |e: String| -> SErr {
            StorageIOError::read_snapshot(None, openraft::AnyError::error(e)).into()
        };
        let meta = self
            .snap
            .get(SNAP_META)
            .map_err(|e| read_err(e.to_string()))?;
        let data = self
            .snap
            .get(SNAP_DATA)
            .map_err(|e| read_err(e.to_string()))?;
        match (meta, data) {
            (Some(meta), Some(data)) => {
                let meta: SnapshotMeta<NodeId, BasicNode> =
                    bincode::deserialize(&meta).map_err(|e| read_err(e.to_string()))?;
                Ok(Some(Snapshot {
                    meta,
                    snapshot: Box::new(Cursor::new(data.to_vec())),
                }))
            }
            _ => Ok(None),
        }
    }
    /// Keeps `bytes` as the current snapshot, durably.
    async fn save_snapshot(
        &self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        bytes: &[u8],
    ) -> Result<(), SErr> {
        let err = |e: String| -> SErr {
            StorageIOError::write_snapshot(Some(meta.signature()), openraft::AnyError::error(e))
                .into()
        };
        let mut batch = sled::Batch::default();
        batch.insert(SNAP_META, encode(meta).map_err(|e| err(e.to_string()))?);
        batch.insert(SNAP_DATA, bytes);
        self.snap
            .apply_batch(batch)
            .map_err(|e| err(e.to_string()))?;
        self.durable.sync().await.map_err(|e| err(e.to_string()))?;
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SErr> {
        let (bytes, last_applied, membership) = {
            let _gate = self.gate.read().await;
            let last_applied: Option<LogId<NodeId>> = self.meta(META_APPLIED)?;
            let membership: StoredMembership<NodeId, BasicNode> = self.meta(META_MEMBERSHIP)?;
            let mut pairs = Vec::new();
            for item in self.tree.iter() {
                let (k, v) = item.map_err(|e| StorageIOError::read_state_machine(&e))?;
                if k.first() != Some(&b'm') {
                    pairs.push((k.to_vec(), v.to_vec()));
                }
            }
            let bytes = encode(&SnapshotBody { pairs })
                .map_err(|e| StorageIOError::read_state_machine(&e))?;
            (bytes, last_applied, membership)
        };
        let snapshot_id = match &last_applied {
            Some(id) => format!(
                "{}-{}-{}",
                id.leader_id.term,
                id.index,
                crate::txn::now_millis()
            ),
            None => format!("0-0-{}", crate::txn::now_millis()),
        };
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: membership,
            snapshot_id,
        };
        self.save_snapshot(&meta, &bytes).await?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}
