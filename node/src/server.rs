//! The composition root of a node: data directory, replicated state,
//! listeners, self-registration, and orderly shutdown (a leader hands
//! leadership over first).
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
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

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
use crate::client_tls::{ClientTlsError, TlsFiles};
use crate::cluster::admin::ClusterService;
use crate::cluster::material::Material;
use crate::cluster::state::{Cluster, NodeInfo};
use crate::cluster::tls;
use crate::cluster::transport::{Forwarder, Peers, RaftNet};
use crate::cluster::trust::Trust;
use crate::router::Router;
use crate::secrets::SecretBox;
use crate::services::auth::{
    AccountsService, AuthService, AuthStore, RulesService, DEFAULT_ADMIN_PASSWORD,
};
use crate::services::broker::{Broker, BrokerService};
use crate::services::events::{Events, EventsService};
use crate::services::runtime::{Manager, RuntimeOptions, RuntimeService};
use crate::services::{config::ConfigService, registry, store::StoreService};
use crate::target::MAX_MESSAGE;
use micro_proto::auth::{
    accounts_server::AccountsServer, auth_server::AuthServer, rules_server::RulesServer,
};
use micro_proto::broker::broker_server::BrokerServer;
use micro_proto::cluster::cluster_server::ClusterServer;
use micro_proto::events::events_server::EventsServer;
use tonic::service::Routes;

/// How often the node renews its own services' registrations.
const HEARTBEAT: Duration = Duration::from_secs(30);

/// Where a node listens unless told otherwise: loopback only. Reaching a
/// node from elsewhere is a choice the operator makes with an address flag.
pub const DEFAULT_API_ADDRESS: &str = "127.0.0.1:8080";
pub const DEFAULT_PROXY_ADDRESS: &str = "127.0.0.1:8081";
pub const DEFAULT_WEB_ADDRESS: &str = "127.0.0.1:8082";
pub const DEFAULT_CLUSTER_ADDRESS: &str = "127.0.0.1:8083";

/// How long access tokens live unless told otherwise.
pub const DEFAULT_AUTH_TOKEN_TTL: Duration = Duration::from_secs(600);
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
            crate::secrets::write_private(&path, id.to_string().as_bytes())
                .map_err(data_err(&path))?;
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

/// Waits until this replica can serve linearizable reads: at once for a
/// lone node; for a cluster member, once it reaches a leader and a quorum
/// (a node restarting ahead of its peers waits for them).
async fn wait_until_ready(replica: &Replica) -> Result<(), ServerError> {
    let mut tries = 0u32;
    loop {
        match replica.linearize().await {
            Ok(()) => return Ok(()),
            Err(e @ micro_raft::Error::Stopped) => return Err(ServerError::NotReady(e)),
            Err(e) => {
                tries += 1;
                if tries % 5 == 1 {
                    tracing::info!("waiting for the cluster: {e}");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// `path` made absolute against the working directory, for processes that
/// run elsewhere.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Runs a node until `shutdown` resolves, then stops it in order: deregister
/// its services, stop the listeners, stop Raft.
pub async fn run(
    opts: ServerOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let dir = opts.data_dir.clone();
    crate::secrets::create_private_dir(&dir).map_err(data_err(&dir))?;
    let listen_file = dir.join("listen.json");
    let _ = std::fs::remove_file(&listen_file);
    let cors = micro_api::Cors::new(&opts.api_cors_origins)
        .map_err(|e| ServerError::Options(format!("--api-cors-origins: {e}")))?;
    let raft_options = RaftOptions {
        heartbeat: opts.raft_heartbeat,
        election_timeout: opts.raft_election_timeout,
        snapshot_after: opts.raft_snapshot_after,
        keep_after_snapshot: (opts.raft_snapshot_after / 2).min(1000),
        ..RaftOptions::default()
    };
    raft_options.check_timing().map_err(ServerError::Options)?;
    // Past the lease a hand-over is no faster than an ordinary election.
    let hand_over_within = raft_options.election_timeout.1;

    // Bind first, so a port in use is reported before anything else happens.
    let proxy_l = bind("gRPC endpoint", &opts.proxy_address).await?;
    let api_l = bind("API gateway", &opts.api_address).await?;
    let web_l = bind("dashboard", &opts.web_address).await?;
    let cluster_l = bind("cluster port", &opts.cluster_address).await?;
    let local = |l: &TcpListener| l.local_addr().map_err(data_err(&dir));
    let (proxy_addr, api_addr, web_addr) = (local(&proxy_l)?, local(&api_l)?, local(&web_l)?);
    let cluster_addr = local(&cluster_l)?;
    // Bad certificate files are the next error, before any state is touched.
    let client_tls = opts.tls.as_ref().map(crate::client_tls::load).transpose()?;
    let advertised = reachable(cluster_addr);

    let id = node_id(&dir)?;
    Material::check_raft_state(&dir).map_err(ServerError::Cluster)?;
    let fresh = !dir.join("raft").exists();
    let material = if Material::exists(&dir) {
        if opts.join.is_some() {
            tracing::info!("this node already belongs to a cluster; --join is ignored");
        }
        Material::load(&dir).map_err(ServerError::Cluster)?
    } else if let Some(seed) = &opts.join {
        if !fresh {
            return Err(ServerError::Cluster(format!(
                "{} already holds a cluster's data; a joining node needs a fresh --data-dir",
                dir.display()
            )));
        }
        let token = opts.token.as_deref().unwrap_or_default();
        tracing::info!("joining the cluster through {seed}");
        Material::join(&dir, id, seed, token)
            .await
            .map_err(ServerError::Cluster)?
    } else {
        Material::bootstrap(&dir, id).map_err(ServerError::Cluster)?
    };
    let joining = opts.join.clone().filter(|_| fresh);

    let secrets =
        Arc::new(SecretBox::load(&dir, opts.config_secret_key.as_deref()).map_err(data_err(&dir))?);
    let keys = Keys::load(&dir).map_err(data_err(&dir))?;
    let tls_err = |e: crate::cluster::tls::TlsError| ServerError::Cluster(e.to_string());
    let trust = Trust::new();
    let peers = Peers::new(tls::client_config(&material.identity, trust.clone()).map_err(tls_err)?);
    let server_tls = tls::server_config(&material.identity, trust.clone()).map_err(tls_err)?;
    let gossip_key = material.gossip_key;
    let cluster = Cluster::new(
        id,
        material,
        peers.clone(),
        opts.cluster_size.max(1),
        NodeInfo {
            address: advertised.clone(),
            api: reachable(api_addr),
            grpc: reachable(proxy_addr),
        },
        (keys.seed(), secrets.key()),
        trust.clone(),
    );
    let replica = Replica::open_with(
        &dir.join("raft"),
        id,
        raft_options,
        Arc::new(RaftNet {
            peers: peers.clone(),
        }),
        Arc::new(Forwarder {
            peers: peers.clone(),
        }),
    )
    .await
    .map_err(|e| ServerError::Open {
        path: dir.join("raft").display().to_string(),
        reason: e.to_string(),
    })?;
    cluster.set_replica(replica.clone());
    if let Err(e) = cluster.check_own_state(&dir) {
        replica.shutdown().await;
        return Err(ServerError::Cluster(e));
    }
    let trust_watch = trust.spawn_watch(&replica);
    let gossip_at: SocketAddr = advertised.parse().map_err(|_| ServerError::Address {
        what: "cluster",
        addr: advertised.clone(),
    })?;
    let gossip = micro_gossip::Gossip::start(micro_gossip::Config {
        node_id: id,
        bind: cluster_addr,
        advertise: gossip_at,
        key: gossip_key,
    })
    .await
    .map_err(|source| ServerError::Listen {
        what: "cluster gossip (UDP)",
        addr: cluster_addr.to_string(),
        source,
    })?;
    cluster.set_gossip(gossip.clone());

    let authority = Authority::new(replica.clone(), keys, opts.auth_token_ttl);
    let auth_store = AuthStore::new(replica.clone(), authority.clone());
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
    let table = crate::routing::RoutingTable::start(replica.clone(), id);
    table.follow_gossip(gossip.clone());
    let router = Router::new(table, cluster.clone());
    // Services this node runs reach it as any client does: over TLS when it
    // serves TLS, trusting exactly its certificate.
    let service_proxy = match &opts.tls {
        Some(_) => format!("https://{}", reachable(proxy_addr)),
        None => reachable(proxy_addr),
    };
    let runtime = Manager::new(
        replica.clone(),
        id,
        service_proxy,
        &dir,
        auth_store.clone(),
        RuntimeOptions {
            target_dir: opts
                .runtime_target_dir
                .clone()
                .unwrap_or_else(|| dir.join("runtime").join("target")),
            release: opts.runtime_release,
            proxy_cert: opts.tls.as_ref().map(|t| absolute(&t.cert)),
        },
    );
    let events = Events::start(replica.clone(), id);
    let broker = Broker::start(cluster.clone());
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
            RegistryServer::new(registry::RegistryService::new(
                replica.clone(),
                id,
                vec![proxy_addr, api_addr, web_addr, cluster_addr],
                crate::services::runtime::runner_of,
            ))
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            RuntimeServer::new(RuntimeService::new(runtime.clone(), cluster.clone()))
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            EventsServer::new(EventsService::new(events.clone()))
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            BrokerServer::new(BrokerService::new(broker.clone()))
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(AuthServer::new(AuthService::new(auth_store.clone())))
        .add_service(AccountsServer::new(AccountsService::new(
            auth_store.clone(),
        )))
        .add_service(RulesServer::new(RulesService::new(auth_store.clone())))
        .add_service(ClusterServer::new(ClusterService::new(cluster.clone())));
    let fallback = {
        let router = router.clone();
        move |req: http::Request<axum::body::Body>| {
            let router = router.clone();
            async move { router.forward(req).await }
        }
    };
    // Every call, to a core service or routed, passes the rule check first.
    let local_stack =
        routes
            .into_axum_router()
            .fallback(fallback)
            .layer(axum::middleware::from_fn_with_state(
                authority.clone(),
                grpc_guard,
            ));
    router.set_local(local_stack.clone());

    // The cluster port serves first: a joiner must answer the leader
    // before it can be admitted, and a restarted node its peers.
    let (member_conns, joiner_conns) =
        tls::split_by_certificate(tls::incoming(cluster_l, server_tls));
    let cluster_server = tonic::transport::Server::builder()
        // Raft calls to a frozen peer time out and are cancelled by the
        // dozen; h2's reset-flood guard would take that for abuse and drop
        // the connection when the peer comes back. Only members (with a
        // verified certificate) get this server.
        .http2_max_pending_accept_reset_streams(Some(10_000))
        .add_routes(Routes::from(crate::cluster::peer::routes(
            cluster.clone(),
            local_stack.clone(),
            router.clone(),
            broker.clone(),
        )))
        .serve_with_incoming_shutdown(member_conns, stopped());
    let cluster_server = tokio::spawn(cluster_server);
    // Joiners and strangers: h2's default guards, and only Join.
    let join_server = tonic::transport::Server::builder()
        .add_routes(Routes::from(crate::cluster::peer::join_routes(
            cluster.clone(),
        )))
        .serve_with_incoming_shutdown(joiner_conns, stopped());
    let join_server = tokio::spawn(join_server);
    if !cluster.material.joined {
        // The founding node makes a one-voter cluster the first time, and
        // as a lone voter restarting elects itself at once.
        replica
            .bootstrap_alone(advertised.clone())
            .await
            .map_err(ServerError::NotReady)?;
    }
    let keeper = cluster.spawn_keeper(joining.into_iter().collect());
    wait_until_ready(&replica).await?;
    let sweeper = replica.spawn_expiry_sweeper(Duration::from_secs(1));
    if let Err(s) = cluster.record_self().await {
        tracing::warn!("cannot record this node's addresses: {}", s.message());
    }
    let rule_watch = authority.spawn_rule_watch();
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
    // Nothing is served on the client ports yet: a node that anyone
    // beyond this host could reach stops here while `admin`/`micro` would
    // let them in.
    if auth_store.admin_has_default_password().await {
        if let Some(addr) = [api_addr, proxy_addr, web_addr]
            .into_iter()
            .find(|a| !a.ip().is_loopback())
        {
            return Err(ServerError::DefaultPassword { addr });
        }
        tracing::warn!(
            "the admin account still has the default password 'micro': change it with `micro user set password`"
        );
    }

    let routes = Routes::from(local_stack);
    let grpc = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_routes(routes);
    // Small gRPC frames must go out at once: Nagle's algorithm with delayed
    // ACKs would add ~40 ms to some calls (both incomings set TCP_NODELAY).
    let grpc = match &client_tls {
        Some(tls) => tokio::spawn(grpc.serve_with_incoming_shutdown(
            crate::client_tls::incoming(proxy_l, tls.grpc.clone()),
            stopped(),
        )),
        None => tokio::spawn(grpc.serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(proxy_l).with_nodelay(Some(true)),
            stopped(),
        )),
    };

    // With --tls-cert/--tls-key the HTTP ports serve TLS like the gRPC one.
    let http_tls: Option<Arc<rustls::ServerConfig>> = client_tls.as_ref().map(|t| t.http.clone());
    let backend = Arc::new(NodeBackend::new(replica.clone(), router, authority.clone()));
    // The HTTP ports bound what a client may send and how slowly (header
    // timeout, head size, idle connections); TCP_NODELAY is set there.
    let http_limits = micro_api::Limits {
        header_read_timeout: opts.http_header_timeout,
        ..micro_api::Limits::default()
    };
    let api = micro_api::serve_with(
        api_l,
        micro_api::gateway(backend.clone(), &cors),
        http_tls.clone(),
        http_limits.clone(),
        stopped(),
    );
    let api = tokio::spawn(api);
    let web = micro_api::serve_with(
        web_l,
        micro_api::dashboard(backend),
        http_tls,
        http_limits,
        stopped(),
    );
    let web = tokio::spawn(web);

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
        "cluster": advertised,
    });
    let reach = if [api_addr, proxy_addr, web_addr]
        .iter()
        .all(|a| a.ip().is_loopback())
    {
        " (loopback only: use --api-address, --proxy-address and --web-address to listen beyond this host)"
    } else {
        ""
    };
    tracing::info!(
        node = id,
        "micro server {} ready: gRPC {proxy_addr}{}, API {api_addr}, dashboard {web_addr}{reach}, data {}",
        crate::VERSION,
        if client_tls.is_some() { " (TLS)" } else { "" },
        dir.display()
    );
    // Written whole or not at all: tools poll for it.
    crate::secrets::write_private(&listen_file, listen.to_string().as_bytes())
        .map_err(data_err(&listen_file))?;

    shutdown.await;
    tracing::info!("shutting down");
    // A leader hands over first, while the cluster port still answers the
    // successor's vote request, so the cluster does not wait an election
    // timeout; this node then drains as a follower (its writes forwarded).
    let handing = std::time::Instant::now();
    match replica.hand_over(hand_over_within).await {
        Ok(Some(next)) => tracing::info!(
            node = next,
            "handed leadership over in {} ms",
            handing.elapsed().as_millis()
        ),
        Ok(None) => {}
        Err(e) => tracing::warn!(
            "could not hand leadership over ({e}); the other nodes will elect a leader"
        ),
    }
    heartbeat.abort();
    // Services stop first: they deregister through this node on the way out.
    runtime.shutdown().await;
    // Without a quorum these writes cannot commit; the registrations then
    // expire by their TTL instead of holding up the shutdown.
    let deregister = async {
        for svc in &core {
            let _ = registry::deregister(&replica, micro::DEFAULT_NAMESPACE, svc).await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(3), deregister)
        .await
        .is_err()
    {
        tracing::info!("could not deregister this node's services (no quorum); they will expire");
    }
    // Consumer streams end first, so the gRPC server's graceful shutdown
    // does not wait on them.
    events.groups.stop();
    // Open subscriptions would hold the gRPC server's drain up.
    broker.close();
    let _ = stop_tx.send(true);
    let grpc_result = grpc.await;
    let _ = api.await;
    let _ = web.await;
    sweeper.abort();
    rule_watch.abort();
    keeper.abort();
    gossip.shutdown().await;
    let _ = cluster_server.await;
    let _ = join_server.await;
    trust_watch.abort();
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
