//! Serving a built node, and stopping it in order.
//!
//! The cluster port serves first (a joiner must answer the leader before it
//! is admitted, a restarted node its peers); the client ports only once the
//! replica serves linearizable reads and the first admin exists. On the way
//! out a leader hands over, services deregister, streams end, the ports
//! close, and Raft stops last.
//!
//! Must never: serve a client port beyond loopback while the admin account
//! has the default password, or announce `listen.json` before every port
//! serves.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use micro_proto::registry::{Node, Options as RegOptions, Service};
use micro_raft::Replica;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::service::Routes;

use super::build::{reachable, Built, Listeners};
use super::options::ServerError;
use crate::backend::NodeBackend;
use crate::cluster::tls;
use crate::data_dir::File;
use crate::services::auth::DEFAULT_ADMIN_PASSWORD;
use crate::services::registry;

/// How often the node renews its own services' registrations.
const HEARTBEAT: Duration = Duration::from_secs(30);

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

/// A gRPC server's task.
type Serving = JoinHandle<Result<(), tonic::transport::Error>>;

/// The tasks a serving node runs, to be stopped in order.
struct Tasks {
    stop: watch::Sender<bool>,
    cluster_server: Serving,
    join_server: Serving,
    keeper: JoinHandle<()>,
    sweeper: JoinHandle<()>,
    rule_watch: JoinHandle<()>,
    grpc: Serving,
    api: JoinHandle<std::io::Result<()>>,
    web: JoinHandle<std::io::Result<()>>,
    heartbeat: JoinHandle<()>,
    core: Vec<Service>,
}

/// A future that resolves once the node is told to stop: every server's
/// graceful-shutdown signal.
fn stop_signal(rx: &watch::Receiver<bool>) -> impl Future<Output = ()> + Send + 'static {
    let mut rx = rx.clone();
    async move {
        let _ = rx.wait_for(|s| *s).await;
    }
}

/// Serves `node` on `ports` until `shutdown` resolves, then stops it in
/// order.
pub(super) async fn serve(
    node: Built,
    ports: Listeners,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let (stop, stopped) = watch::channel(false);
    let (cluster_server, join_server) = serve_cluster_port(&node, ports.cluster, &stopped);
    if !node.cluster.material.joined {
        // The founding node makes a one-voter cluster the first time, and
        // as a lone voter restarting elects itself at once.
        node.replica
            .bootstrap_alone(node.advertised.clone())
            .await
            .map_err(ServerError::NotReady)?;
    }
    let keeper = node
        .cluster
        .spawn_keeper(node.joining.clone().into_iter().collect());
    wait_until_ready(&node.replica).await?;
    let sweeper = node.replica.spawn_expiry_sweeper(Duration::from_secs(1));
    if let Err(s) = node.cluster.record_self().await {
        tracing::warn!("cannot record this node's addresses: {}", s.message());
    }
    let rule_watch = node.authority.spawn_rule_watch();
    bootstrap_auth(&node).await?;

    let grpc = serve_grpc(&node, ports.proxy, &stopped);
    let (api, web) = serve_http(&node, ports.api, ports.web, &stopped);

    let core = core_services(node.id, &reachable(node.addrs.proxy));
    register_core(&node.replica, &core).await;
    {
        // Services this node ran before it stopped start again, those
        // moved here start, those moved away stop; their builds must not
        // hold up the node.
        node.runtime.spawn_scheduler(node.cluster.clone());
    }
    // The warm-up build lives until the node stops (dropping it ends it).
    let warm_up = node.runtime.warm_up().await;
    let heartbeat = {
        let (replica, core) = (node.replica.clone(), core.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT);
            tick.tick().await;
            loop {
                tick.tick().await;
                register_core(&replica, &core).await;
            }
        })
    };
    announce(&node)?;

    shutdown.await;
    drop(warm_up);
    stop_in_order(
        node,
        Tasks {
            stop,
            cluster_server,
            join_server,
            keeper,
            sweeper,
            rule_watch,
            grpc,
            api,
            web,
            heartbeat,
            core,
        },
    )
    .await
}

/// The cluster port: members (with a verified certificate) get the peer
/// services, joiners and strangers only Join.
fn serve_cluster_port(
    node: &Built,
    listener: tokio::net::TcpListener,
    stopped: &watch::Receiver<bool>,
) -> (Serving, Serving) {
    let (member_conns, joiner_conns) =
        tls::split_by_certificate(tls::incoming(listener, node.server_tls.clone()));
    let cluster_server = tonic::transport::Server::builder()
        // Raft calls to a frozen peer time out and are cancelled by the
        // dozen; h2's reset-flood guard would take that for abuse and drop
        // the connection when the peer comes back. Only members get this
        // server.
        .http2_max_pending_accept_reset_streams(Some(10_000))
        .add_routes(Routes::from(crate::cluster::peer::routes(
            node.cluster.clone(),
            node.local_stack.clone(),
            node.router.clone(),
            node.broker.clone(),
        )))
        .serve_with_incoming_shutdown(member_conns, stop_signal(stopped));
    // Joiners and strangers: h2's default guards.
    let join_server = tonic::transport::Server::builder()
        .add_routes(Routes::from(crate::cluster::peer::join_routes(
            node.cluster.clone(),
        )))
        .serve_with_incoming_shutdown(joiner_conns, stop_signal(stopped));
    (tokio::spawn(cluster_server), tokio::spawn(join_server))
}

/// Makes the first admin (once per cluster) and loads the rules. Nothing
/// is served on the client ports yet: a node that anyone beyond this host
/// could reach stops here while `admin`/`micro` would let them in.
async fn bootstrap_auth(node: &Built) -> Result<(), ServerError> {
    let admin_password = node
        .opts
        .auth_admin_password
        .clone()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| DEFAULT_ADMIN_PASSWORD.to_string());
    node.auth_store
        .bootstrap(&admin_password)
        .await
        .map_err(|s| ServerError::Serve {
            what: "auth bootstrap",
            reason: s.message().to_string(),
        })?;
    node.authority.reload_rules();
    if node.auth_store.admin_has_default_password().await {
        if let Some(addr) = node.addrs.client_port_beyond_loopback() {
            return Err(ServerError::DefaultPassword { addr });
        }
        tracing::warn!(
            "the admin account still has the default password 'micro': change it with `micro user set password`"
        );
    }
    Ok(())
}

/// The gRPC endpoint: the node's whole stack, over TLS when configured.
fn serve_grpc(
    node: &Built,
    listener: tokio::net::TcpListener,
    stopped: &watch::Receiver<bool>,
) -> Serving {
    let grpc = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_routes(Routes::from(node.local_stack.clone()));
    // Small gRPC frames must go out at once: Nagle's algorithm with delayed
    // ACKs would add ~40 ms to some calls (both incomings set TCP_NODELAY).
    match &node.client_tls {
        Some(tls) => tokio::spawn(grpc.serve_with_incoming_shutdown(
            crate::client_tls::incoming(listener, tls.grpc.clone()),
            stop_signal(stopped),
        )),
        None => tokio::spawn(grpc.serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            stop_signal(stopped),
        )),
    }
}

/// The API gateway and the dashboard, over TLS like the gRPC endpoint when
/// configured. The HTTP ports bound what a client may send and how slowly
/// (header timeout, head size, idle connections); TCP_NODELAY is set there.
fn serve_http(
    node: &Built,
    api: tokio::net::TcpListener,
    web: tokio::net::TcpListener,
    stopped: &watch::Receiver<bool>,
) -> (
    JoinHandle<std::io::Result<()>>,
    JoinHandle<std::io::Result<()>>,
) {
    let http_tls: Option<Arc<rustls::ServerConfig>> =
        node.client_tls.as_ref().map(|t| t.http.clone());
    let backend = Arc::new(NodeBackend::new(
        node.replica.clone(),
        node.router.clone(),
        node.authority.clone(),
    ));
    let http_limits = micro_api::Limits {
        header_read_timeout: node.opts.http_header_timeout,
        ..micro_api::Limits::default()
    };
    let api = micro_api::serve_with(
        api,
        micro_api::gateway(backend.clone(), &node.cors),
        http_tls.clone(),
        http_limits.clone(),
        stop_signal(stopped),
    );
    let web = micro_api::serve_with(
        web,
        micro_api::dashboard(backend),
        http_tls,
        http_limits,
        stop_signal(stopped),
    );
    (tokio::spawn(api), tokio::spawn(web))
}

/// Says the node is ready, in the log and in `listen.json` (written whole
/// or not at all: tools poll for it).
fn announce(node: &Built) -> Result<(), ServerError> {
    let a = node.addrs;
    let listen = serde_json::json!({
        "node_id": node.id,
        "api": reachable(a.api),
        "proxy": reachable(a.proxy),
        "web": reachable(a.web),
        "cluster": node.advertised,
    });
    let reach = if a.client_port_beyond_loopback().is_none() {
        " (loopback only: use --api-address, --proxy-address and --web-address to listen beyond this host)"
    } else {
        ""
    };
    tracing::info!(
        node = node.id,
        "micro server {} ready: gRPC {}{}, API {}, dashboard {}{reach}, data {}",
        crate::VERSION,
        a.proxy,
        if node.client_tls.is_some() {
            " (TLS)"
        } else {
            ""
        },
        a.api,
        a.web,
        node.data.root().display()
    );
    node.data
        .write(File::Listen, listen.to_string().as_bytes())?;
    Ok(())
}

/// Stops a serving node: a leader hands over first, while the cluster port
/// still answers the successor's vote request, so the cluster does not
/// wait an election timeout; this node then drains as a follower (its
/// writes forwarded).
async fn stop_in_order(node: Built, tasks: Tasks) -> Result<(), ServerError> {
    tracing::info!("shutting down");
    let handing = std::time::Instant::now();
    match node.replica.hand_over(node.hand_over_within).await {
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
    tasks.heartbeat.abort();
    // Services stop first: they deregister through this node on the way out.
    node.runtime.shutdown().await;
    // Without a quorum these writes cannot commit; the registrations then
    // expire by their TTL instead of holding up the shutdown.
    let deregister = async {
        for svc in &tasks.core {
            let _ = registry::deregister(&node.replica, micro::DEFAULT_NAMESPACE, svc).await;
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
    node.events.groups.stop();
    // Open subscriptions would hold the gRPC server's drain up.
    node.broker.close();
    let _ = tasks.stop.send(true);
    let grpc_result = tasks.grpc.await;
    let _ = tasks.api.await;
    let _ = tasks.web.await;
    tasks.sweeper.abort();
    tasks.rule_watch.abort();
    tasks.keeper.abort();
    node.gossip.shutdown().await;
    let _ = tasks.cluster_server.await;
    let _ = tasks.join_server.await;
    node.trust_watch.abort();
    node.replica.shutdown().await;
    node.data.remove(File::Listen);
    let failed = |reason: String| ServerError::Serve {
        what: "the gRPC endpoint",
        reason,
    };
    match grpc_result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(failed(e.to_string())),
        Err(e) => Err(failed(e.to_string())),
    }
}
