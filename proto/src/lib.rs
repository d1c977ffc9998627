//! The wire contract of Micro: generated types and tonic clients/servers for
//! every core service, plus the protobuf descriptor set they were built from.
//!
//! This crate holds no logic. It must never depend on another Micro crate.

/// Key/value store service.
pub mod store {
    tonic::include_proto!("store");
}

/// Configuration service.
pub mod config {
    tonic::include_proto!("config");
}

/// Service registry.
pub mod registry {
    tonic::include_proto!("registry");
}

/// Accounts, tokens and rules.
pub mod auth {
    tonic::include_proto!("auth");
}

/// Build, run and supervise services.
pub mod runtime {
    tonic::include_proto!("runtime");
}

/// Cluster membership (admin API) and node-to-node calls.
pub mod cluster {
    tonic::include_proto!("cluster");
}

/// Replicated event streams.
pub mod events {
    tonic::include_proto!("events");
}

/// Fire-and-forget publish/subscribe.
pub mod broker {
    tonic::include_proto!("broker");
}

/// The serialized `FileDescriptorSet` of every core service, for gRPC
/// reflection and for deriving endpoint schemas.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/micro_descriptor.bin"));

/// Packages of the node's own services (served by every node, never by a
/// registered instance): a service of one of these names cannot be
/// registered, and a call into one is named by its package for the rule
/// check, whatever its metadata says.
pub const NODE_PACKAGES: &[&str] = &[
    "store", "config", "registry", "runtime", "auth", "cluster", "events", "broker", "network",
];

/// The gRPC service names (package.Service) of the core services.
pub const CORE_SERVICES: &[(&str, &str)] = &[
    ("store", "store.Store"),
    ("config", "config.Config"),
    ("registry", "registry.Registry"),
    ("runtime", "runtime.Runtime"),
    ("auth", "auth.Auth"),
    ("auth", "auth.Accounts"),
    ("auth", "auth.Rules"),
    ("events", "events.Events"),
    ("broker", "broker.Broker"),
];
