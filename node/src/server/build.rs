//! Building a node, before it serves anything: the listeners bound, the
//! data dir read, the cluster material made or fetched, the replica opened,
//! gossip started, and the building blocks and the gRPC stack assembled.
//!
//! Every error a user can fix (a port in use, bad certificate files, a data
//! dir of another cluster) is found here, before any client port answers.
//!
//! Must never: serve a client port, or touch the replicated state before
//! the data dir has been checked against the cluster material.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use micro_proto::auth::{
    accounts_server::AccountsServer, auth_server::AuthServer, rules_server::RulesServer,
};
use micro_proto::broker::broker_server::BrokerServer;
use micro_proto::cluster::cluster_server::ClusterServer;
use micro_proto::config::config_server::ConfigServer;
use micro_proto::events::events_server::EventsServer;
use micro_proto::registry::registry_server::RegistryServer;
use micro_proto::runtime::runtime_server::RuntimeServer;
use micro_proto::store::store_server::StoreServer;
use micro_raft::{Options as RaftOptions, Replica};
use tokio::net::TcpListener;
use tonic::service::Routes;

use super::options::{listen_address, ServerError, ServerOptions};
use crate::auth::{grpc_guard, Authority, Keys};
use crate::client_tls::ClientTls;
use crate::cluster::admin::ClusterService;
use crate::cluster::material::Material;
use crate::cluster::state::{Cluster, NodeInfo};
use crate::cluster::tls;
use crate::cluster::transport::{Forwarder, Peers, RaftNet};
use crate::cluster::trust::Trust;
use crate::data_dir::{DataDir, File};
use crate::reflection::Reflection;
use crate::router::Router;
use crate::secrets::SecretBox;
use crate::services::auth::{AccountsService, AuthService, AuthStore, RulesService};
use crate::services::broker::{Broker, BrokerService};
use crate::services::events::{Events, EventsService};
use crate::services::runtime::{Manager, RuntimeOptions, RuntimeService};
use crate::services::{config::ConfigService, registry, store::StoreService};
use crate::target::MAX_MESSAGE;

/// The addresses the four ports are bound to.
#[derive(Debug, Clone, Copy)]
pub(super) struct Addrs {
    pub proxy: SocketAddr,
    pub api: SocketAddr,
    pub web: SocketAddr,
    pub cluster: SocketAddr,
}

impl Addrs {
    /// A client port reachable from beyond this host, if any.
    pub fn client_port_beyond_loopback(&self) -> Option<SocketAddr> {
        [self.api, self.proxy, self.web]
            .into_iter()
            .find(|a| !a.ip().is_loopback())
    }
}

/// The four ports, bound.
pub(super) struct Listeners {
    pub proxy: TcpListener,
    pub api: TcpListener,
    pub web: TcpListener,
    pub cluster: TcpListener,
    pub addrs: Addrs,
}

async fn bind(what: &'static str, addr: &str) -> Result<TcpListener, ServerError> {
    let addr = listen_address(what, addr)?;
    TcpListener::bind(&addr)
        .await
        .map_err(|source| ServerError::Listen { what, addr, source })
}

impl Listeners {
    /// Binds every port first, so a port in use is reported before
    /// anything else happens.
    async fn bind(opts: &ServerOptions) -> Result<Listeners, ServerError> {
        let proxy = bind("gRPC endpoint", &opts.proxy_address).await?;
        let api = bind("API gateway", &opts.api_address).await?;
        let web = bind("dashboard", &opts.web_address).await?;
        let cluster = bind("cluster port", &opts.cluster_address).await?;
        let local = |what: &'static str, addr: &str, l: &TcpListener| {
            l.local_addr().map_err(|source| ServerError::Listen {
                what,
                addr: addr.to_string(),
                source,
            })
        };
        let addrs = Addrs {
            proxy: local("gRPC endpoint", &opts.proxy_address, &proxy)?,
            api: local("API gateway", &opts.api_address, &api)?,
            web: local("dashboard", &opts.web_address, &web)?,
            cluster: local("cluster port", &opts.cluster_address, &cluster)?,
        };
        Ok(Listeners {
            proxy,
            api,
            web,
            cluster,
            addrs,
        })
    }
}

/// The address peers and services should use to reach a listener: an
/// unspecified bind address is reached on loopback from this host.
pub(super) fn reachable(addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        format!("127.0.0.1:{}", addr.port())
    } else {
        addr.to_string()
    }
}

/// `path` made absolute against the working directory, for processes that
/// run elsewhere.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// A node built and not yet serving.
pub(super) struct Built {
    pub opts: ServerOptions,
    pub data: DataDir,
    pub id: u64,
    pub addrs: Addrs,
    /// The cluster address peers reach this node at.
    pub advertised: String,
    pub client_tls: Option<ClientTls>,
    /// The cluster port's TLS (members by certificate, joiners without).
    pub server_tls: Arc<rustls::ServerConfig>,
    /// Set when this node joins a cluster for the first time: the member
    /// it joined through.
    pub joining: Option<String>,
    /// How long a stopping leader tries to hand over.
    pub hand_over_within: Duration,
    pub cors: micro_api::Cors,
    pub replica: Replica,
    pub cluster: Arc<Cluster>,
    pub gossip: micro_gossip::Gossip,
    pub trust_watch: tokio::task::JoinHandle<()>,
    pub authority: Arc<Authority>,
    pub auth_store: AuthStore,
    pub router: Arc<Router>,
    pub runtime: Arc<Manager>,
    pub events: Arc<Events>,
    pub broker: Arc<Broker>,
    /// Every gRPC service of the node behind the rule check, with the
    /// router as the fallback: what the gRPC endpoint serves.
    pub local_stack: axum::Router,
}

impl Built {
    /// Builds a node from its options; the ports are bound, not served.
    pub async fn build(opts: ServerOptions) -> Result<(Built, Listeners), ServerError> {
        let data = DataDir::open(&opts.data_dir)?;
        data.remove(File::Listen);
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

        let listeners = Listeners::bind(&opts).await?;
        // Bad certificate files are the next error, before any state is
        // touched.
        let client_tls = opts.tls.as_ref().map(crate::client_tls::load).transpose()?;
        let addrs = listeners.addrs;
        let advertised = reachable(addrs.cluster);

        let id = data.node_id()?;
        Material::check_raft_state(&data).map_err(ServerError::Cluster)?;
        let fresh = !data.raft().exists();
        let material = membership(&opts, &data, id, fresh).await?;
        let joining = opts.join.clone().filter(|_| fresh);

        let secrets = Arc::new(SecretBox::load(&data, opts.config_secret_key.as_deref())?);
        let keys = Keys::load(&data)?;
        let tls_err = |e: tls::TlsError| ServerError::Cluster(e.to_string());
        let trust = Trust::new();
        let peers =
            Peers::new(tls::client_config(&material.identity, trust.clone()).map_err(tls_err)?);
        let server_tls = tls::server_config(&material.identity, trust.clone()).map_err(tls_err)?;
        let gossip_key = material.gossip_key;
        let cluster = Cluster::new(
            id,
            material,
            peers.clone(),
            opts.cluster_size.max(1),
            NodeInfo {
                address: advertised.clone(),
                api: reachable(addrs.api),
                grpc: reachable(addrs.proxy),
            },
            (keys.seed(), secrets.key()),
            trust.clone(),
        );
        let replica = Replica::open_with(
            &data.raft(),
            id,
            raft_options,
            Arc::new(RaftNet {
                peers: peers.clone(),
            }),
            Arc::new(Forwarder { peers }),
        )
        .await
        .map_err(|e| ServerError::Open {
            path: data.raft().display().to_string(),
            reason: e.to_string(),
        })?;
        cluster.set_replica(replica.clone());
        if let Err(e) = cluster.check_own_state(&data) {
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
            bind: addrs.cluster,
            advertise: gossip_at,
            key: gossip_key,
        })
        .await
        .map_err(|source| ServerError::Listen {
            what: "cluster gossip (UDP)",
            addr: addrs.cluster.to_string(),
            source,
        })?;
        cluster.set_gossip(gossip.clone());

        let authority = Authority::new(replica.clone(), keys, opts.auth_token_ttl);
        let auth_store = AuthStore::new(replica.clone(), authority.clone());
        let table = crate::routing::RoutingTable::start(replica.clone(), id);
        table.follow_gossip(gossip.clone());
        let router = Router::new(table, cluster.clone());
        // Services this node runs reach it as any client does: over TLS
        // when it serves TLS, trusting exactly its certificate.
        let service_proxy = match &opts.tls {
            Some(_) => format!("https://{}", reachable(addrs.proxy)),
            None => reachable(addrs.proxy),
        };
        let runtime = Manager::new(
            replica.clone(),
            id,
            service_proxy,
            data.runtime(),
            auth_store.clone(),
            RuntimeOptions {
                target_dir: opts
                    .runtime_target_dir
                    .clone()
                    .unwrap_or_else(|| data.runtime().join("target")),
                release: opts.runtime_release,
                reschedule_after: opts.runtime_reschedule_after,
                warm_up: opts.runtime_warm_up,
                proxy_cert: opts.tls.as_ref().map(|t| absolute(&t.cert)),
            },
        );
        let events = Events::start(replica.clone(), id);
        let broker = Broker::start(cluster.clone());
        let mut built = Built {
            opts,
            data,
            id,
            addrs,
            advertised,
            client_tls,
            server_tls,
            joining,
            hand_over_within,
            cors,
            replica,
            cluster,
            gossip,
            trust_watch,
            authority,
            auth_store,
            router,
            runtime,
            events,
            broker,
            local_stack: axum::Router::new(),
        };
        built.local_stack = built.grpc_stack(secrets).await?;
        built.router.set_local(built.local_stack.clone());
        Ok((built, listeners))
    }

    /// Every gRPC service of the node by its path, everything else to the
    /// router, and every call, to a core service or routed, through the
    /// rule check first.
    async fn grpc_stack(&self, secrets: Arc<SecretBox>) -> Result<axum::Router, ServerError> {
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<StoreServer<StoreService>>().await;
        health.set_serving::<ConfigServer<ConfigService>>().await;
        health
            .set_serving::<RegistryServer<registry::RegistryService>>()
            .await;
        // Core services for anyone, user services for callers that may
        // list the registry; never the node-to-node services.
        let reflection = Reflection::new(self.router.table().clone(), self.authority.clone())
            .map_err(|reason| ServerError::Serve {
                what: "gRPC reflection",
                reason,
            })?;
        let a = &self.addrs;
        let routes = Routes::new(health_service)
            .add_service(reflection.v1())
            .add_service(reflection.v1alpha())
            .add_service(
                StoreServer::new(StoreService::new(self.replica.clone()))
                    .max_decoding_message_size(MAX_MESSAGE)
                    .max_encoding_message_size(MAX_MESSAGE),
            )
            .add_service(
                ConfigServer::new(ConfigService::new(self.replica.clone(), secrets))
                    .max_decoding_message_size(MAX_MESSAGE)
                    .max_encoding_message_size(MAX_MESSAGE),
            )
            .add_service(
                RegistryServer::new(registry::RegistryService::new(
                    self.replica.clone(),
                    self.id,
                    vec![a.proxy, a.api, a.web, a.cluster],
                    crate::services::runtime::runner_of,
                ))
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
            )
            .add_service(
                RuntimeServer::new(RuntimeService::new(
                    self.runtime.clone(),
                    self.cluster.clone(),
                ))
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
            )
            .add_service(
                EventsServer::new(EventsService::new(self.events.clone()))
                    .max_decoding_message_size(MAX_MESSAGE)
                    .max_encoding_message_size(MAX_MESSAGE),
            )
            .add_service(
                BrokerServer::new(BrokerService::new(self.broker.clone()))
                    .max_decoding_message_size(MAX_MESSAGE)
                    .max_encoding_message_size(MAX_MESSAGE),
            )
            .add_service(AuthServer::new(AuthService::new(self.auth_store.clone())))
            .add_service(AccountsServer::new(AccountsService::new(
                self.auth_store.clone(),
            )))
            .add_service(RulesServer::new(RulesService::new(self.auth_store.clone())))
            .add_service(ClusterServer::new(ClusterService::new(
                self.cluster.clone(),
            )));
        let fallback = {
            let router = self.router.clone();
            move |req: http::Request<axum::body::Body>| {
                let router = router.clone();
                async move { router.forward(req).await }
            }
        };
        Ok(routes.into_axum_router().fallback(fallback).layer(
            axum::middleware::from_fn_with_state(self.authority.clone(), grpc_guard),
        ))
    }
}

/// This node's cluster material: kept from before, fetched from a member
/// when joining, or made new by a founder.
async fn membership(
    opts: &ServerOptions,
    data: &DataDir,
    id: u64,
    fresh: bool,
) -> Result<Material, ServerError> {
    if Material::exists(data) {
        if opts.join.is_some() {
            tracing::info!("this node already belongs to a cluster; --join is ignored");
        }
        return Material::load(data).map_err(ServerError::Cluster);
    }
    let Some(seed) = &opts.join else {
        return Material::bootstrap(data, id).map_err(ServerError::Cluster);
    };
    if !fresh {
        return Err(ServerError::Cluster(format!(
            "{} already holds a cluster's data; a joining node needs a fresh --data-dir",
            data.root().display()
        )));
    }
    let token = opts.token.as_deref().unwrap_or_default();
    tracing::info!("joining the cluster through {seed}");
    Material::join(data, id, seed, token)
        .await
        .map_err(ServerError::Cluster)
}
