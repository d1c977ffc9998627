//! Micro as a cluster of symmetric nodes: the CA and certificates
//! ([`pki`]), mutual TLS ([`tls`]) and which certificates it still takes
//! ([`trust`]), what a node keeps on disk to belong to a cluster
//! ([`material`]), join tokens ([`tokens`]), node-to-node calls ([`transport`] as
//! client, [`peer`] as server on the cluster port), membership and status
//! ([`state`]) and the admin API behind `micro cluster` ([`admin`]).
//!
//! Must never: let a node without the cluster's certificate or join token
//! read, write or join; or hold a lock across a network call.

pub mod admin;
pub mod material;
pub mod peer;
pub mod pki;
pub mod state;
pub mod tls;
pub mod tokens;
pub mod transport;
pub mod trust;

pub use state::Cluster;
