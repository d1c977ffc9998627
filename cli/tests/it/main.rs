//! End-to-end tests: real `micro server` processes driven by the real CLI
//! and by gRPC clients. One test binary (fast to link on two cores).

mod harness;

mod auth;
mod basics;
mod broker;
mod cluster;
mod config;
mod durability;
mod events_cli;
mod events_groups;
mod events_topics;
mod gateway;
mod reflection;
mod registry;
mod runtime;
mod security;
mod services;
mod store;
mod tls;
