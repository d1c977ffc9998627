//! The building-block services a node runs, each a gRPC service over the
//! replicated state. A new building block is a new module here plus its
//! `.proto`.

pub mod auth;
pub mod broker;
pub mod config;
pub mod events;
pub mod registry;
pub mod runtime;
pub mod store;
