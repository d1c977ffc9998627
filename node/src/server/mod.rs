//! The composition root of a node, in two steps: [`build`] binds the ports,
//! reads the data dir (files named in [`crate::data_dir`]), makes or
//! fetches the cluster material, opens the replica and assembles the
//! building blocks; [`serve`] serves them, and on shutdown stops them in
//! order (a leader hands leadership over first).

mod build;
mod options;
mod serve;

use std::future::Future;

pub use options::{
    listen_address, ServerError, ServerOptions, DEFAULT_API_ADDRESS, DEFAULT_AUTH_TOKEN_TTL,
    DEFAULT_CLUSTER_ADDRESS, DEFAULT_CLUSTER_SIZE, DEFAULT_HTTP_HEADER_TIMEOUT,
    DEFAULT_PROXY_ADDRESS, DEFAULT_RESCHEDULE_AFTER, DEFAULT_WEB_ADDRESS,
};

/// Runs a node until `shutdown` resolves, then stops it in order: hand
/// leadership over, deregister its services, stop the listeners, stop Raft.
pub async fn run(
    opts: ServerOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let (node, ports) = build::Built::build(opts).await?;
    serve::serve(node, ports, shutdown).await
}
