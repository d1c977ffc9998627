//! Running services' processes on this node.
//!
//! [`supervisor`] builds a service from its source folder, runs it in its
//! own process group, restarts it with backoff when it exits, and stops it
//! (the whole group) on request. [`logs`] owns the service's log file: the
//! bounded, rotating writer the supervisor appends to, and `tail`/`follow`
//! for readers.
//!
//! This module knows nothing of Raft, namespaces or the registry: the
//! Runtime service (`services::runtime`) decides what should run and
//! reports the states it watches here.
//!
//! Must never: signal a process it did not start (only the process groups
//! of its own children are signalled), block the async runtime on disk or
//! process I/O, or let a log file grow without bound.

pub mod logs;
pub mod supervisor;
