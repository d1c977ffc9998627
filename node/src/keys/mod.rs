//! Every key of the replicated state, built (and, where code reads keys
//! back, parsed) in one place: one submodule per family, each listing its
//! layout and the encoding of its values.
//!
//! | family | prefix | values |
//! |---|---|---|
//! | [`store`] | `store/<ns>/<db>/<table>/<key>` | protobuf `Record` without its key |
//! | [`config`] | `config/<ns>` | one JSON document (secrets sealed) |
//! | [`auth`] | `auth/…` | JSON accounts, names, refresh tokens, rules |
//! | [`registry`] | `registry/…`, `registry-owners/…`, `registry-schemas/…` | protobuf registrations and schemas, JSON owners |
//! | [`runtime`] | `runtime/<ns>/<name>/{spec,status}`, `runtime-source/<ns>/<name>` | JSON; the upload as sent |
//! | [`events`] | `events/<ns>/<topic>/…` | see the module |
//! | [`cluster`] | `cluster/…` | see the module |
//!
//! Every name that becomes a segment passed `paths::check_name` (no `/`),
//! and every prefix of a family's records ends in `/`, so a scan of one
//! namespace, service or table never reaches another whose name extends it
//! (`team` and `team2`).
//!
//! Must never: be bypassed by formatting one of these keys elsewhere, or
//! change the bytes of an existing layout (stored data must stay readable).

pub mod auth;
pub mod cluster;
pub mod config;
pub mod events;
pub mod registry;
pub mod runtime;
pub mod store;
