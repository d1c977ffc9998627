//! The composition root of a node: data directory, replicated state,
//! listeners, self-registration, and orderly shutdown.
//!
//! Data directory layout:
//! * `raft/`             sled database: Raft log, vote, state machine, snapshot
//! * `node-id`           this node's Raft id
//! * `config-secret.key` the config-secret key when none is configured (0600)
//! * `auth-signing.key`  the Ed25519 key that signs access tokens (0600)
//! * `listen.json`       the addresses actually bound, written once the node
//!   serves (tools and tests read it; removed on clean shutdown)

use std::collections::HashMap;
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use micro_proto::config::config_server::ConfigServer;
use micro_proto::registry::registry_server::RegistryServer;
use micro_proto::registry::{Node, Options as RegOptions, Service};
use micro_proto::runtime::runtime_server::RuntimeServer;
use micro_proto::store::store_server::StoreServer;
use micro_raft::{Options as RaftOptions, Replica};
use rand::Rng;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::auth::{grpc_guard, Authority, Keys};
use crate::backend::NodeBackend;
use crate::router::Router;
use crate::secrets::SecretBox;
use crate::services::auth::{
    AccountsService, AuthService, AuthStore, RulesService, DEFAULT_ADMIN_PASSWORD,
};
use crate::services::runtime::{Manager, RuntimeOptions, RuntimeService};
use crate::services::{config::ConfigService, registry, store::StoreService};
use micro_proto::auth::{
    accounts_server::AccountsServer, auth_server::AuthServer, rules_server::RulesServer,
};
use tonic::service::Routes;

/// Largest gRPC message the node accepts or sends.
pub const MAX_MESSAGE: usize = micro::client::MAX_MESSAGE;
/// How often the node renews its own services' registrations.
const HEARTBEAT: Duration = Duration::from_secs(30);

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
    /// the first admin's password (default `micro`, with a warning)
    pub auth_admin_password: Option<String>,
    /// how long access tokens live
    pub auth_token_ttl: Duration,
}

/// Why a node could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot use data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
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

async fn bind(what: &'static str, addr: &str) -> Result<TcpListener, ServerError> {
    let addr = listen_address(what, addr)?;
    TcpListener::bind(&addr)
        .await
        .map_err(|source| ServerError::Listen { what, addr, source })
}

fn data_err(path: &Path) -> impl Fn(std::io::Error) -> ServerError + '_ {
    move |source| ServerError::DataDir {
        path: path.display().to_string(),
        source,
    }
}

/// This node's id: read from the data dir, or drawn at random the first time.
fn node_id(dir: &Path) -> Result<u64, ServerError> {
    let path = dir.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse().map_err(|_| ServerError::DataDir {
            path: path.display().to_string(),
            source: std::io::Error::other("does not hold a node id"),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id: u64 = rand::thread_rng().gen_range(1..u64::MAX);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(data_err(&path))?;
            f.write_all(id.to_string().as_bytes())
                .map_err(data_err(&path))?;
            f.sync_all().map_err(data_err(&path))?;
            Ok(id)
        }
        Err(e) => Err(data_err(&path)(e)),
    }
}

/// The address peers and services should use to reach a listener: an
/// unspecified bind address is reached on loopback from this host.
fn reachable(addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        format!("127.0.0.1:{}", addr.port())
    } else {
        addr.to_string()
    }
}

/// The registrations of this node's own services: one per service name,
/// with the endpoints of every gRPC service of that name (auth has three).
fn core_services(node_id: u64, proxy: &str) -> Vec<Service> {
    let pool = prost_reflect::DescriptorPool::decode(micro_proto::FILE_DESCRIPTOR_SET)
        .expect("the built-in descriptor set is valid");
    let mut names: Vec<&str> = micro_proto::CORE_SERVICES.iter().map(|(n, _)| *n).collect();
    names.dedup();
    names
        .into_iter()
        .map(|name| Service {
            name: name.to_string(),
            version: crate::VERSION.to_string(),
            metadata: HashMap::new(),
            endpoints: micro_proto::CORE_SERVICES
                .iter()
                .filter(|(n, _)| *n == name)
                .flat_map(|(_, full)| micro::schema::endpoints(&pool, full).unwrap_or_default())
                .collect(),
            nodes: vec![Node {
                id: format!("{name}-{node_id}"),
                address: proxy.to_string(),
                metadata: HashMap::from([("node".to_string(), node_id.to_string())]),
            }],
            options: Some(RegOptions {
                ttl: registry::DEFAULT_TTL.as_secs() as i64,
                domain: String::new(),
            }),
            descriptor: micro_proto::FILE_DESCRIPTOR_SET.to_vec(),
        })
        .collect()
}

async fn register_core(replica: &Replica, services: &[Service]) {
    for svc in services {
        if let Err(e) = registry::register(replica, micro::DEFAULT_NAMESPACE, svc.clone()).await {
            tracing::warn!("cannot register {}: {}", svc.name, e.message());
        }
    }
}

/// Replies go out at once (no Nagle delay on small responses).
fn no_delay(tcp: &mut tokio::net::TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!("cannot set TCP_NODELAY: {e}");
    }
}

/// Runs a node until `shutdown` resolves, then stops it in order: deregister
/// its services, stop the listeners, stop Raft.
pub async fn run(
    opts: ServerOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let dir = opts.data_dir.clone();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(data_err(&dir))?;
    let listen_file = dir.join("listen.json");
    let _ = std::fs::remove_file(&listen_file);

    // Bind first, so a port in use is reported before anything else happens.
    let proxy_l = bind("gRPC endpoint", &opts.proxy_address).await?;
    let api_l = bind("API gateway", &opts.api_address).await?;
    let web_l = bind("dashboard", &opts.web_address).await?;
    let cluster = listen_address("cluster", &opts.cluster_address)?;
    let local = |l: &TcpListener| l.local_addr().map_err(data_err(&dir));
    let (proxy_addr, api_addr, web_addr) = (local(&proxy_l)?, local(&api_l)?, local(&web_l)?);

    let id = node_id(&dir)?;
    let secrets =
        Arc::new(SecretBox::load(&dir, opts.config_secret_key.as_deref()).map_err(data_err(&dir))?);
    let replica = Replica::open(&dir.join("raft"), id, RaftOptions::default())
        .await
        .map_err(|e| ServerError::Open {
            path: dir.join("raft").display().to_string(),
            reason: e.to_string(),
        })?;
    replica
        .bootstrap_alone(cluster.clone())
        .await
        .map_err(ServerError::NotReady)?;
    replica.linearize().await.map_err(ServerError::NotReady)?;
    let sweeper = replica.spawn_expiry_sweeper(Duration::from_secs(1));

    let keys = Keys::load(&dir).map_err(data_err(&dir))?;
    let authority = Authority::new(replica.clone(), keys, opts.auth_token_ttl);
    let rule_watch = authority.spawn_rule_watch();
    let auth_store = AuthStore::new(replica.clone(), authority.clone());
    let admin_password = opts
        .auth_admin_password
        .clone()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| DEFAULT_ADMIN_PASSWORD.to_string());
    auth_store
        .bootstrap(&admin_password)
        .await
        .map_err(|s| ServerError::Serve {
            what: "auth bootstrap",
            reason: s.message().to_string(),
        })?;
    authority.reload_rules();
    {
        let store = auth_store.clone();
        tokio::spawn(async move {
            if store.admin_has_default_password().await {
                tracing::warn!(
                    "the admin account still has the default password 'micro': change it with `micro user set password`"
                );
            }
        });
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<StoreServer<StoreService>>().await;
    health.set_serving::<ConfigServer<ConfigService>>().await;
    health
        .set_serving::<RegistryServer<registry::RegistryService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(micro_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServerError::Serve {
            what: "gRPC reflection",
            reason: e.to_string(),
        })?;
    let router = Router::new(replica.clone());
    let runtime = Manager::new(
        replica.clone(),
        id,
        reachable(proxy_addr),
        &dir,
        auth_store.clone(),
        RuntimeOptions {
            target_dir: opts
                .runtime_target_dir
                .clone()
                .unwrap_or_else(|| dir.join("runtime").join("target")),
            release: opts.runtime_release,
        },
    );
    // Core services by their paths; everything else goes to the router.
    let routes = Routes::new(health_service)
        .add_service(reflection)
        .add_service(
            StoreServer::new(StoreService::new(replica.clone()))
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            ConfigServer::new(ConfigService::new(replica.clone(), secrets))
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            RegistryServer::new(registry::RegistryService::new(replica.clone()))
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            RuntimeServer::new(RuntimeService::new(runtime.clone()))
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(AuthServer::new(AuthService::new(auth_store.clone())))
        .add_service(AccountsServer::new(AccountsService::new(
            auth_store.clone(),
        )))
        .add_service(RulesServer::new(RulesService::new(auth_store.clone())));
    let fallback = {
        let router = router.clone();
        move |req: http::Request<axum::body::Body>| {
            let router = router.clone();
            async move { router.forward(req).await }
        }
    };
    // Every call, to a core service or routed, passes the rule check first.
    let routes = Routes::from(routes.into_axum_router().fallback(fallback).layer(
        axum::middleware::from_fn_with_state(authority.clone(), grpc_guard),
    ));
    let grpc = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_routes(routes)
        .serve_with_incoming_shutdown(
            // Small gRPC frames must go out at once: Nagle's algorithm with
            // delayed ACKs would add ~40 ms to some calls.
            tonic::transport::server::TcpIncoming::from(proxy_l).with_nodelay(Some(true)),
            stopped(),
        );
    let grpc = tokio::spawn(grpc);

    let backend = Arc::new(NodeBackend::new(replica.clone(), router, authority.clone()));
    let api = axum::serve(api_l.tap_io(no_delay), micro_api::gateway(backend.clone()))
        .with_graceful_shutdown(stopped());
    let api = tokio::spawn(async move { api.await });
    let web = axum::serve(web_l.tap_io(no_delay), micro_api::dashboard(backend))
        .with_graceful_shutdown(stopped());
    let web = tokio::spawn(async move { web.await });

    let core = core_services(id, &reachable(proxy_addr));
    register_core(&replica, &core).await;
    {
        // Services this node ran before it stopped start again; their
        // builds must not hold up the node.
        let runtime = runtime.clone();
        tokio::spawn(async move { runtime.restore().await });
    }
    let heartbeat = {
        let (replica, core) = (replica.clone(), core.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT);
            tick.tick().await;
            loop {
                tick.tick().await;
                register_core(&replica, &core).await;
            }
        })
    };

    let listen = serde_json::json!({
        "node_id": id,
        "api": reachable(api_addr),
        "proxy": reachable(proxy_addr),
        "web": reachable(web_addr),
        "cluster": cluster,
    });
    std::fs::write(&listen_file, listen.to_string()).map_err(data_err(&listen_file))?;
    tracing::info!(
        node = id,
        "micro server {} ready: gRPC {proxy_addr}, API {api_addr}, dashboard {web_addr}, data {}",
        crate::VERSION,
        dir.display()
    );

    shutdown.await;
    tracing::info!("shutting down");
    heartbeat.abort();
    // Services stop first: they deregister through this node on the way out.
    runtime.shutdown().await;
    for svc in &core {
        let _ = registry::deregister(&replica, micro::DEFAULT_NAMESPACE, svc).await;
    }
    let _ = stop_tx.send(true);
    let grpc_result = grpc.await;
    let _ = api.await;
    let _ = web.await;
    sweeper.abort();
    rule_watch.abort();
    replica.shutdown().await;
    let _ = std::fs::remove_file(&listen_file);
    match grpc_result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(ServerError::Serve {
            what: "the gRPC endpoint",
            reason: e.to_string(),
        }),
        Err(e) => Err(ServerError::Serve {
            what: "the gRPC endpoint",
            reason: e.to_string(),
        }),
    }
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
