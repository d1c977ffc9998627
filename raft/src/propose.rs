//! Group commit: the leader's writes, gathered into batches.
//!
//! Every write a leader replicates goes through one [`Proposer`] task. It
//! takes the writes that are waiting (up to a count and a byte bound) and
//! proposes them as one Raft entry, a [`Batch`]: one log append, one fsync
//! on the leader and on each follower, one state machine write, for all of
//! them. While `in_flight` batches are being replicated, new writes wait
//! and join the next batch, so the busier the leader, the larger its
//! batches; a lone write goes out at once, alone.
//!
//! Order: writes are proposed in the order they reached the proposer, and
//! the batches in the order they were formed (each is handed to openraft
//! before the next is gathered), so a client that sends a write after
//! another was accepted is applied after it.
//!
//! Each transaction keeps its own outcome (its conditions are judged on
//! their own, in order) and its own request id (exactly once, per
//! transaction).
//!
//! Must never: hand a batch to openraft out of order, or answer a write
//! with another write's outcome.

use std::sync::Arc;

use openraft::error::{ClientWriteError, ForwardToLeader};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::{BasicNode, Batch, Error, NodeId, Raft, Txn, TxnResult};

/// Bounds of one batch and of the batches replicated at once.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// At most this many transactions per batch.
    pub max_txns: usize,
    /// A batch stops growing once its transactions take this many bytes
    /// (a single larger transaction goes alone).
    pub max_bytes: usize,
    /// Batches proposed and not yet committed at once.
    pub in_flight: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits {
            max_txns: 1024,
            max_bytes: 256 * 1024,
            in_flight: 2,
        }
    }
}

/// Why a write was not applied by this replica.
#[derive(Debug, Clone)]
pub(crate) enum Rejected {
    /// This replica does not lead: the write never took effect here.
    Forward(ForwardToLeader<NodeId, BasicNode>),
    Failed(Error),
}

type Reply = oneshot::Sender<Result<TxnResult, Rejected>>;

struct Queued {
    txn: Txn,
    size: usize,
    reply: Reply,
}

/// The handle of the proposer task. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Proposer {
    tx: mpsc::UnboundedSender<Queued>,
}

impl Proposer {
    /// Starts the proposer task of `raft`; it ends when every handle is gone.
    pub(crate) fn start(raft: Raft, limits: BatchLimits) -> Proposer {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(raft, limits, rx));
        Proposer { tx }
    }

    /// Proposes `txn` (in the next batch) and returns its outcome once it
    /// is committed and applied here.
    pub(crate) async fn propose(&self, txn: Txn) -> Result<TxnResult, Rejected> {
        let (reply, rx) = oneshot::channel();
        let size = txn.approx_size();
        self.tx
            .send(Queued { txn, size, reply })
            .map_err(|_| Rejected::Failed(Error::Stopped))?;
        rx.await.map_err(|_| Rejected::Failed(Error::Stopped))?
    }
}

async fn run(raft: Raft, limits: BatchLimits, mut rx: mpsc::UnboundedReceiver<Queued>) {
    let slots = Arc::new(Semaphore::new(limits.in_flight.max(1)));
    let mut carry: Option<Queued> = None;
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let first = match carry.take() {
            Some(q) => q,
            None => match rx.recv().await {
                Some(q) => q,
                None => return,
            },
        };
        let mut bytes = first.size;
        let mut txns = vec![first.txn];
        let mut replies = vec![first.reply];
        while txns.len() < limits.max_txns && bytes < limits.max_bytes {
            match rx.try_recv() {
                Ok(q) if bytes + q.size > limits.max_bytes => {
                    carry = Some(q);
                    break;
                }
                Ok(q) => {
                    bytes += q.size;
                    txns.push(q.txn);
                    replies.push(q.reply);
                }
                Err(_) => break,
            }
        }
        // Handed to openraft here, in order; only the wait for the commit
        // runs beside the next batch.
        match raft.client_write_ff(Batch(txns)).await {
            Ok(pending) => {
                tokio::spawn(async move {
                    let outcome = pending.await;
                    drop(slot);
                    answer(replies, outcome);
                });
            }
            Err(_) => {
                for r in replies {
                    let _ = r.send(Err(Rejected::Failed(Error::Stopped)));
                }
            }
        }
    }
}

type Outcome = Result<
    Result<
        openraft::raft::ClientWriteResponse<crate::TypeConfig>,
        ClientWriteError<NodeId, BasicNode>,
    >,
    oneshot::error::RecvError,
>;

/// Sends each waiting write its own outcome, by its position in the batch.
fn answer(replies: Vec<Reply>, outcome: Outcome) {
    match outcome {
        Ok(Ok(resp)) => {
            let n = replies.len();
            let mut results = resp.data.into_iter();
            for reply in replies {
                let r = match results.next() {
                    Some(r) => Ok(r),
                    None => Err(Rejected::Failed(Error::Storage(format!(
                        "the state machine answered fewer than the {n} writes of a batch"
                    )))),
                };
                let _ = reply.send(r);
            }
        }
        Ok(Err(ClientWriteError::ForwardToLeader(f))) => {
            for reply in replies {
                let _ = reply.send(Err(Rejected::Forward(f.clone())));
            }
        }
        Ok(Err(e)) => {
            let e = Error::Raft(e.to_string());
            for reply in replies {
                let _ = reply.send(Err(Rejected::Failed(e.clone())));
            }
        }
        // openraft dropped the responder: it is shutting down.
        Err(_) => {
            for reply in replies {
                let _ = reply.send(Err(Rejected::Failed(Error::Stopped)));
            }
        }
    }
}
