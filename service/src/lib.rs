//! Micro for service authors and clients.
//!
//! A service is a few lines: tonic handlers given to a [`Service`], which
//! serves them, registers them with the node and keeps them registered
//! ([`service`]); errors with HTTP-style codes ([`errors`]); calls to other
//! services, typed through [`client::Client::channel`] or with JSON through
//! [`dynamic`]; the store and config in one call each ([`store`],
//! [`config`]); replicated event streams with consumer groups ([`events`])
//! and fire-and-forget publish/subscribe ([`broker`]); the build-script
//! helper ([`build`], feature `build`).
//!
//! The CLI uses the same crate: environments ([`env`]), a connection to a
//! node ([`client`], plaintext or TLS through [`dial`]) and endpoint schemas
//! ([`schema`]).
//!
//! Architecture invariant: nothing here knows about terminals or about the
//! node's internals; it speaks to a node only through its public gRPC API.

pub mod bearer;
pub mod broker;
#[cfg(feature = "build")]
pub mod build;
pub mod client;
pub mod config;
pub mod dial;
pub mod dynamic;
pub mod env;
pub mod env_vars;
pub mod errors;
pub mod events;
pub mod log;
pub mod registry;
pub mod schema;
pub mod service;
pub mod signal;
pub mod store;

pub use client::{Client, Error};
pub use service::Service;

/// The descriptor set compiled by [`build::compile`] in this crate's build
/// script, as `&'static [u8]`.
#[macro_export]
macro_rules! include_descriptor {
    () => {
        include_bytes!(concat!(env!("OUT_DIR"), "/micro_descriptor.bin"))
    };
}

/// The namespace used when none is chosen.
pub const DEFAULT_NAMESPACE: &str = "micro";

/// The gRPC metadata key carrying the caller's namespace.
pub const NAMESPACE_HEADER: &str = "micro-namespace";

/// The gRPC metadata key naming the service a call is for, when the
/// method's path does not (a service's package may differ from its
/// registered name).
pub const SERVICE_HEADER: &str = "micro-service";

/// The port of a node's gRPC endpoint, used when an address has none.
pub const DEFAULT_PROXY_PORT: u16 = 8081;
