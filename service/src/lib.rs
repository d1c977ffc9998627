//! Micro for service authors and clients.
//!
//! Today this crate is the client side: the CLI's environments
//! ([`env`]), a connection to a node's gRPC endpoint with typed clients for
//! the core services ([`client`]), and endpoint schemas derived from
//! protobuf descriptors ([`schema`]).
//!
//! Architecture invariant: nothing here knows about terminals or about the
//! node's internals; it speaks to a node only through its public gRPC API.

pub mod client;
pub mod env;
pub mod schema;

pub use client::{Client, Error};

/// The namespace used when none is chosen.
pub const DEFAULT_NAMESPACE: &str = "micro";

/// The gRPC metadata key carrying the caller's namespace.
pub const NAMESPACE_HEADER: &str = "micro-namespace";

/// The port of a node's gRPC endpoint, used when an address has none.
pub const DEFAULT_PROXY_PORT: u16 = 8081;
