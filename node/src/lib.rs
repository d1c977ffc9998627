//! The Micro server: one node of a Micro cluster.
//!
//! Each building-block service is a module in [`services`] that translates its
//! gRPC API into transactions on the replicated state (`micro-raft`).
//! [`server`] is the composition root: it opens the data directory, starts
//! Raft, binds the gRPC endpoint, the API gateway and the dashboard, registers
//! the node's own services and shuts everything down in order.
//!
//! Architecture invariant: nothing here talks to sled or openraft (the crate
//! does not depend on openraft at all): membership, status and Raft traffic
//! go through [`micro_raft::Replica`] in micro-raft's own types. Nothing
//! here reads a terminal.

pub mod auth;
mod backend;
pub mod client_tls;
pub mod cluster;
pub mod data_dir;
pub mod framework;
mod grpc;
pub mod keys;
mod login_limit;
pub mod paths;
pub mod reflection;
pub mod router;
pub mod routing;
pub mod runtime;
pub mod secrets;
pub mod server;
pub mod services;
pub mod target;
mod tls_accept;

pub use client_tls::TlsFiles;
pub use server::{run, ServerError, ServerOptions};

/// The Raft timing a node runs with unless told otherwise (the CLI's
/// defaults are these).
pub use micro_raft::{
    DEFAULT_ELECTION_TIMEOUT as DEFAULT_RAFT_ELECTION_TIMEOUT,
    DEFAULT_HEARTBEAT as DEFAULT_RAFT_HEARTBEAT,
    DEFAULT_SNAPSHOT_AFTER as DEFAULT_RAFT_SNAPSHOT_AFTER,
};

/// The version of Micro this node runs.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
