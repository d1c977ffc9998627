//! The `Service` builder: serve tonic handlers on loopback, register them
//! with the node, keep the registration alive, leave cleanly.
//!
//! ```ignore
//! micro::Service::new("helloworld")
//!     .descriptor(micro::include_descriptor!())
//!     .handle(HelloworldServer::new(Greeter))
//!     .run()
//!     .await
//! ```

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use micro_proto::registry::{Node, Options, Service as Registration};
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::service::Routes;

use crate::env_vars;

/// How long a registration lives without a heartbeat.
pub const TTL: Duration = Duration::from_secs(90);
/// How often a service renews its registration.
pub const HEARTBEAT: Duration = Duration::from_secs(30);

/// Why a service could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("service {0}: a service needs at least one handler")]
    NoHandlers(String),
    #[error("service {name}: cannot listen on {address}: {source}")]
    Listen {
        name: String,
        address: String,
        source: std::io::Error,
    },
    #[error("service {name}: the descriptor set is invalid: {reason}")]
    Descriptor { name: String, reason: String },
    #[error("service {name}: {source}")]
    Serve {
        name: String,
        source: tonic::transport::Error,
    },
}

/// A service under construction.
pub struct Service {
    name: String,
    version: String,
    metadata: HashMap<String, String>,
    address: String,
    descriptor: Vec<u8>,
    routes: Option<Routes>,
    grpc_names: Vec<&'static str>,
}

impl Service {
    /// A service named `name` (the runtime's `MICRO_SERVICE_NAME` wins, so
    /// `micro run --name` can rename it).
    pub fn new(name: &str) -> Service {
        Service {
            name: env_vars::service_name().unwrap_or_else(|| name.to_string()),
            version: env_vars::service_version().unwrap_or_else(|| "latest".to_string()),
            metadata: HashMap::new(),
            address: env_vars::service_address(),
            descriptor: Vec::new(),
            routes: None,
            grpc_names: Vec::new(),
        }
    }

    /// The version registered (default `latest`).
    pub fn version(mut self, v: &str) -> Self {
        self.version = v.to_string();
        self
    }

    /// Adds a metadata entry to the registration.
    pub fn metadata(mut self, key: &str, value: &str) -> Self {
        self.metadata.insert(key.to_string(), value.to_string());
        self
    }

    /// The address to serve on (default `127.0.0.1:0`, a random port).
    pub fn address(mut self, addr: &str) -> Self {
        self.address = addr.to_string();
        self
    }

    /// The protobuf descriptor set of the handlers (see
    /// [`crate::include_descriptor!`]); it gives the registry the endpoints'
    /// schemas and lets the gateway and CLI call them with JSON.
    pub fn descriptor(mut self, fds: &[u8]) -> Self {
        self.descriptor = fds.to_vec();
        self
    }

    /// Adds a tonic-generated server as a handler.
    pub fn handle<S>(mut self, svc: S) -> Self
    where
        S: tonic::codegen::Service<
                tonic::codegen::http::Request<Body>,
                Response = tonic::codegen::http::Response<Body>,
                Error = Infallible,
            > + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.grpc_names.push(S::NAME);
        self.routes = Some(match self.routes.take() {
            Some(r) => r.add_service(svc),
            None => Routes::new(svc),
        });
        self
    }

    /// The registration this service sends, for `address`.
    fn registration(
        &self,
        node_id: &str,
        address: SocketAddr,
    ) -> Result<Registration, ServiceError> {
        let mut endpoints = Vec::new();
        if !self.descriptor.is_empty() {
            let pool =
                prost_reflect::DescriptorPool::decode(self.descriptor.as_slice()).map_err(|e| {
                    ServiceError::Descriptor {
                        name: self.name.clone(),
                        reason: e.to_string(),
                    }
                })?;
            for full in &self.grpc_names {
                endpoints.extend(crate::schema::endpoints(&pool, full).unwrap_or_default());
            }
        }
        Ok(Registration {
            name: self.name.clone(),
            version: self.version.clone(),
            metadata: self.metadata.clone(),
            endpoints,
            nodes: vec![Node {
                id: node_id.to_string(),
                address: address.to_string(),
                metadata: HashMap::new(),
            }],
            options: Some(Options {
                ttl: TTL.as_secs() as i64,
                domain: String::new(),
            }),
            descriptor: self.descriptor.clone(),
        })
    }

    /// Serves until SIGINT or SIGTERM, registered with the node at
    /// `MICRO_PROXY_ADDRESS` (default `127.0.0.1:8081`) in `MICRO_NAMESPACE`.
    pub async fn run(self) -> Result<(), ServiceError> {
        self.run_until(crate::signal::terminated()).await
    }

    /// Serves until `shutdown` resolves.
    pub async fn run_until(
        mut self,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), ServiceError> {
        let routes = self
            .routes
            .take()
            .ok_or_else(|| ServiceError::NoHandlers(self.name.clone()))?;
        let listener = tokio::net::TcpListener::bind(&self.address)
            .await
            .map_err(|source| ServiceError::Listen {
                name: self.name.clone(),
                address: self.address.clone(),
                source,
            })?;
        let local = listener
            .local_addr()
            .map_err(|source| ServiceError::Listen {
                name: self.name.clone(),
                address: self.address.clone(),
                source,
            })?;
        let node_id = format!("{}-{:016x}", self.name, rand_u64());
        let registration = self.registration(&node_id, local)?;
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        let server = tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                async move {
                    let _ = stop_rx.wait_for(|s| *s).await;
                },
            );
        let server = tokio::spawn(server);
        crate::log::info(&format!("service {} listening on {local}", self.name));

        let proxy = env_vars::proxy_address();
        let heartbeat = {
            let reg = registration.clone();
            let proxy = proxy.clone();
            tokio::spawn(async move {
                let mut first = true;
                loop {
                    match register(reg.clone()).await {
                        Ok(()) if first => {
                            crate::log::info(&format!(
                                "registered {} with the node at {proxy}",
                                reg.name
                            ));
                            first = false;
                        }
                        Ok(()) => {}
                        Err(e) => crate::log::warn(&format!(
                            "cannot register {} with the node at {proxy}: {e}",
                            reg.name
                        )),
                    }
                    tokio::time::sleep(if first {
                        Duration::from_secs(1)
                    } else {
                        HEARTBEAT
                    })
                    .await;
                }
            })
        };
        shutdown.await;
        heartbeat.abort();
        if let Ok(client) = crate::client::default().await {
            let _ = client.registry().deregister(registration).await;
        }
        let _ = stop_tx.send(true);
        match server.await {
            Ok(Ok(())) | Err(_) => Ok(()),
            Ok(Err(source)) => Err(ServiceError::Serve {
                name: self.name,
                source,
            }),
        }
    }
}

async fn register(reg: Registration) -> Result<(), crate::Error> {
    crate::client::default()
        .await?
        .registry()
        .register(reg)
        .await?;
    Ok(())
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS per process; good enough for an
    // instance id that only has to differ between instances.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish()
}
