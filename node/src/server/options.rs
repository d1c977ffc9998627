//! How to run a node ([`ServerOptions`], with the defaults the CLI's flags
//! take), and why it could not ([`ServerError`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::client_tls::{ClientTlsError, TlsFiles};
use crate::data_dir::FileError;

/// Where a node listens unless told otherwise: loopback only. Reaching a
/// node from elsewhere is a choice the operator makes with an address flag.
pub const DEFAULT_API_ADDRESS: &str = "127.0.0.1:8080";
pub const DEFAULT_PROXY_ADDRESS: &str = "127.0.0.1:8081";
pub const DEFAULT_WEB_ADDRESS: &str = "127.0.0.1:8082";
pub const DEFAULT_CLUSTER_ADDRESS: &str = "127.0.0.1:8083";

/// How long access tokens live unless told otherwise.
pub const DEFAULT_AUTH_TOKEN_TTL: Duration = Duration::from_secs(600);
/// How long a node is held down before its services move, by default.
pub const DEFAULT_RESCHEDULE_AFTER: Duration = Duration::from_secs(30);
/// How many voters a cluster keeps unless told otherwise.
pub const DEFAULT_CLUSTER_SIZE: u32 = 5;
/// How long an HTTP client may take to send a request head, by default.
pub const DEFAULT_HTTP_HEADER_TIMEOUT: Duration = micro_api::serve::HEADER_READ_TIMEOUT;

/// How to run a node.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub data_dir: PathBuf,
    /// HTTP API gateway, `HOST:PORT` or `:PORT` (all interfaces)
    pub api_address: String,
    /// gRPC endpoint
    pub proxy_address: String,
    /// web dashboard
    pub web_address: String,
    /// node-to-node traffic; advertised to peers
    pub cluster_address: String,
    /// key for config secrets; generated and kept in the data dir when `None`
    pub config_secret_key: Option<String>,
    /// the Cargo target dir shared by the services this node builds
    /// (default `<data-dir>/runtime/target`)
    pub runtime_target_dir: Option<PathBuf>,
    /// build services with `--release`
    pub runtime_release: bool,
    /// how long gossip must hold a node down before its services are
    /// started elsewhere
    pub runtime_reschedule_after: Duration,
    /// build the framework's dependencies when the node starts
    pub runtime_warm_up: bool,
    /// the first admin's password (default `micro`, with a warning)
    pub auth_admin_password: Option<String>,
    /// how long access tokens live
    pub auth_token_ttl: Duration,
    /// the cluster address of a member to join through (with `token`)
    pub join: Option<String>,
    /// the join token
    pub token: Option<String>,
    /// how many voters the cluster keeps
    pub cluster_size: usize,
    /// Raft log entries between snapshots
    pub raft_snapshot_after: u64,
    /// how often the leader sends heartbeats
    pub raft_heartbeat: Duration,
    /// the range a follower's election timeout is drawn from (min, max)
    pub raft_election_timeout: (Duration, Duration),
    /// the certificate and key the client ports serve TLS with; plaintext
    /// when `None`
    pub tls: Option<TlsFiles>,
    /// web origins allowed to call the API gateway from a browser, with
    /// credentials (`*`: any origin, without credentials); empty: none
    pub api_cors_origins: Vec<String>,
    /// how long an HTTP client may take to send a request head (API and
    /// dashboard)
    pub http_header_timeout: Duration,
}

impl ServerOptions {
    /// Options for a node in `data_dir` on the default ports.
    pub fn new(data_dir: PathBuf) -> ServerOptions {
        ServerOptions {
            data_dir,
            api_address: DEFAULT_API_ADDRESS.into(),
            proxy_address: DEFAULT_PROXY_ADDRESS.into(),
            web_address: DEFAULT_WEB_ADDRESS.into(),
            cluster_address: DEFAULT_CLUSTER_ADDRESS.into(),
            config_secret_key: None,
            runtime_target_dir: None,
            runtime_release: true,
            runtime_reschedule_after: DEFAULT_RESCHEDULE_AFTER,
            runtime_warm_up: true,
            auth_admin_password: None,
            auth_token_ttl: DEFAULT_AUTH_TOKEN_TTL,
            join: None,
            token: None,
            cluster_size: DEFAULT_CLUSTER_SIZE as usize,
            raft_snapshot_after: micro_raft::DEFAULT_SNAPSHOT_AFTER,
            raft_heartbeat: micro_raft::DEFAULT_HEARTBEAT,
            raft_election_timeout: micro_raft::DEFAULT_ELECTION_TIMEOUT,
            tls: None,
            api_cors_origins: Vec::new(),
            http_header_timeout: DEFAULT_HTTP_HEADER_TIMEOUT,
        }
    }
}

/// Why a node could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot use data directory {0}")]
    DataDir(#[from] FileError),
    #[error("cannot open the replicated state in {path}: {reason} (is another micro server using this data directory?)")]
    Open { path: String, reason: String },
    #[error("invalid {what} address '{addr}': expected HOST:PORT or :PORT")]
    Address { what: &'static str, addr: String },
    #[error("cannot listen on {addr} for the {what}: {source}")]
    Listen {
        what: &'static str,
        addr: String,
        source: std::io::Error,
    },
    #[error("the node did not become ready: {0}")]
    NotReady(micro_raft::Error),
    #[error("{what} stopped with an error: {reason}")]
    Serve { what: &'static str, reason: String },
    #[error("{0}")]
    Cluster(String),
    #[error("Refusing to listen on {addr} with the default admin password: set --auth-admin-password or MICRO_AUTH_ADMIN_PASSWORD (on an existing cluster, `micro user set password` first)")]
    DefaultPassword { addr: SocketAddr },
    #[error("{0}")]
    Tls(#[from] ClientTlsError),
    #[error("{0}")]
    Options(String),
}

/// Turns `:8080` into `0.0.0.0:8080` and checks the form of `HOST:PORT`.
pub fn listen_address(what: &'static str, addr: &str) -> Result<String, ServerError> {
    let bad = || ServerError::Address {
        what,
        addr: addr.to_string(),
    };
    let full = if addr.starts_with(':') {
        format!("0.0.0.0{addr}")
    } else {
        addr.to_string()
    };
    let (host, port) = full.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(bad());
    }
    Ok(full)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!(listen_address("api", ":8080").unwrap(), "0.0.0.0:8080");
        assert_eq!(listen_address("api", "127.0.0.1:0").unwrap(), "127.0.0.1:0");
        assert!(listen_address("api", "8080").is_err());
        assert!(listen_address("api", "host:port").is_err());
        assert!(listen_address("api", ":").is_err());
    }
}
