//! Decoding of the messages peers send on the cluster port (bincode inside
//! `Peer.Raft`, `Peer.Propose` and their replies), with the decoder the
//! transport uses (micro-raft decodes the Raft messages itself, in
//! `network.rs`, with the same `bincode::deserialize` from a slice).
//! Decoding must fail cleanly, never panic, overflow the stack or allocate
//! without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use micro_node::cluster::transport::{decode, encode};
use micro_raft::{NodeId, Txn, TxnResult, TypeConfig};
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

fn round_trip<T: serde::Serialize + serde::de::DeserializeOwned>(data: &[u8]) {
    if let Ok(v) = decode::<T>(data) {
        let again = encode(&v).expect("a decoded message encodes");
        decode::<T>(&again).expect("an encoded message decodes");
    }
}

fuzz_target!(|data: &[u8]| {
    let [which, rest @ ..] = data else {
        return;
    };
    match which % 8 {
        0 => round_trip::<AppendEntriesRequest<TypeConfig>>(rest),
        1 => round_trip::<VoteRequest<NodeId>>(rest),
        2 => round_trip::<InstallSnapshotRequest<TypeConfig>>(rest),
        3 => round_trip::<Txn>(rest),
        4 => round_trip::<Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>>(rest),
        5 => round_trip::<Result<VoteResponse<NodeId>, RaftError<NodeId>>>(rest),
        6 => round_trip::<
            Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
        >(rest),
        _ => round_trip::<TxnResult>(rest),
    }
});
