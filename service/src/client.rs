//! A connection to a node's gRPC endpoint (plaintext or TLS, see
//! [`crate::dial`]), with typed clients for the core services. Every request
//! carries the chosen namespace as metadata.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use micro_proto::{
    config::config_client::ConfigClient, registry::registry_client::RegistryClient,
    store::store_client::StoreClient,
};
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::dial::{DialError, Dialer, Target};

/// Largest message a client sends or accepts (store values are limited to
/// 4 MiB; the rest is headroom for keys and metadata).
pub const MAX_MESSAGE: usize = 8 * 1024 * 1024;

/// What can go wrong talking to a node.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The node could not be reached (refused, unresolvable, timed out).
    #[error("Failed to connect to micro server at {0}")]
    Connect(String),
    /// The node was reached but the connection could not be set up (TLS
    /// refused, certificate not trusted, wrong protocol), or the target is
    /// unusable; `reason` says which.
    #[error("Failed to connect to micro server at {address}: {reason}")]
    Setup { address: String, reason: String },
    #[error("Invalid namespace '{0}'")]
    Namespace(String),
    #[error("{}", .0.message())]
    Status(#[from] tonic::Status),
    #[error("Service \"{0}\" not found")]
    NoService(String),
    #[error("{0}")]
    Dynamic(#[from] crate::dynamic::Error),
    #[error("Service \"{0}\" registered no usable descriptor; it cannot be called with JSON")]
    NoDescriptor(String),
    /// A value could not be encoded as JSON, or a payload did not decode
    /// as the type asked for (events, broker).
    #[error("invalid JSON payload: {0}")]
    Json(#[from] serde_json::Error),
    /// A request the client refuses to send: it names what is wrong
    /// (an ack wait of 0, two start positions, ...). Nothing was sent.
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// Whether a compare-and-set condition failed (gRPC `ABORTED`): the
    /// record was not at the version asked for, or already existed, and
    /// nothing changed. Read it again and retry, or give up.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Status(s) if s.code() == tonic::Code::Aborted)
    }
}

type Bearer = Arc<RwLock<Option<MetadataValue<tonic::metadata::Ascii>>>>;

/// Adds the namespace, and the access token when there is one, to every
/// request.
#[derive(Clone)]
pub struct Namespace {
    namespace: MetadataValue<tonic::metadata::Ascii>,
    bearer: Bearer,
}

impl tonic::service::Interceptor for Namespace {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut()
            .insert(crate::NAMESPACE_HEADER, self.namespace.clone());
        if let Some(b) = self
            .bearer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            req.metadata_mut().insert("authorization", b.clone());
        }
        Ok(req)
    }
}

/// A channel through which calls reach a node.
pub type Conn = InterceptedService<Checked, Namespace>;

/// The channel to a node; for a plaintext target it checks that replies
/// are gRPC. The HTTP API port speaks HTTP/2 as well, so a connection to
/// it starts, and without this check its replies fail to decode with a
/// protocol error instead of saying what is wrong.
#[derive(Clone)]
pub struct Checked {
    channel: Channel,
    /// the plaintext `host:port` to name in the error; `None`: no check
    plain: Option<Arc<str>>,
}

type Reply = tonic::codegen::http::Response<tonic::body::Body>;

impl tonic::codegen::Service<tonic::codegen::http::Request<tonic::body::Body>> for Checked {
    type Response = Reply;
    type Error = tonic::transport::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Reply, tonic::transport::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        tonic::codegen::Service::poll_ready(&mut self.channel, cx)
    }

    fn call(&mut self, req: tonic::codegen::http::Request<tonic::body::Body>) -> Self::Future {
        let reply = tonic::codegen::Service::call(&mut self.channel, req);
        let plain = self.plain.clone();
        Box::pin(async move {
            let Some(address) = plain else {
                return reply.await;
            };
            let failed = match reply.await {
                Ok(reply) if is_grpc(&reply) => return Ok(reply),
                // An HTTP/2 server, but not gRPC (the HTTP API port).
                Ok(_) => None,
                // An HTTP/1-only server fails the HTTP/2 call.
                Err(e) => Some(e),
            };
            // The HTTP/1 probe names the version curl would see.
            match (crate::dial::http1_version(&address).await, failed) {
                (Some(version), _) => Ok(not_grpc_reply(&address, &version)),
                (None, None) => Ok(not_grpc_reply(&address, "HTTP/2")),
                (None, Some(e)) => Err(e),
            }
        })
    }
}

/// Whether a reply is gRPC (a gRPC server sends this content type even
/// with an error status).
fn is_grpc(reply: &Reply) -> bool {
    reply
        .headers()
        .get(tonic::codegen::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// The gRPC error a call to a port that answers HTTP `version` ends with.
fn not_grpc_reply(address: &str, version: &str) -> Reply {
    let message = format!(
        "Failed to connect to micro server at {address}: {}",
        crate::dial::not_grpc(version)
    );
    tonic::Status::unavailable(message).into_http()
}

/// A connection to one node.
#[derive(Clone)]
pub struct Client {
    channel: Checked,
    namespace: Namespace,
    address: String,
}

impl Client {
    /// Connects to `address` (`host:port` in plaintext, or
    /// `https://host:port` over TLS trusting the system's CAs), acting in
    /// `namespace`.
    pub async fn connect(address: &str, namespace: &str) -> Result<Client, Error> {
        let target = Target::parse(address, None).map_err(|e| Error::Setup {
            address: address.to_string(),
            reason: e.to_string(),
        })?;
        Client::connect_to(&target, namespace).await
    }

    /// Connects to `target`, acting in `namespace`.
    pub async fn connect_to(target: &Target, namespace: &str) -> Result<Client, Error> {
        let ns = MetadataValue::try_from(namespace)
            .map_err(|_| Error::Namespace(namespace.to_string()))?;
        let shown = target.to_string();
        let setup = |e: DialError| Error::Setup {
            address: shown.clone(),
            reason: e.to_string(),
        };
        let dialer = Dialer::new(target).map_err(setup)?;
        // The dialer applies the connect and handshake timeouts itself, so
        // that its errors say which step failed.
        let endpoint = Endpoint::from_shared(format!("http://{}", target.address))
            .map_err(|_| Error::Connect(shown.clone()))?;
        let channel = match endpoint.connect_with_connector(dialer).await {
            Ok(channel) => channel,
            Err(e) => {
                // A plaintext port that took the TCP connection but not
                // HTTP/2 may be an HTTP/1 server: ask it, to say so.
                let http1 = match target.tls {
                    None if crate::dial::after_dial(&e) => {
                        crate::dial::http1_version(&target.address).await
                    }
                    _ => None,
                };
                let reason = match http1 {
                    Some(version) => Some(crate::dial::not_grpc(&version)),
                    None => crate::dial::explain(target, &e),
                };
                return Err(match reason {
                    None => Error::Connect(shown),
                    Some(reason) => Error::Setup {
                        address: shown,
                        reason,
                    },
                });
            }
        };
        Ok(Client {
            channel: Checked {
                channel,
                plain: target
                    .tls
                    .is_none()
                    .then(|| Arc::from(target.address.as_str())),
            },
            namespace: Namespace {
                namespace: ns,
                bearer: Arc::default(),
            },
            address: shown,
        })
    }

    /// Connects to the first of `targets` (nodes of one cluster) that
    /// connects, tried in order, acting in `namespace`. When none does:
    /// the first setup error (a certificate not trusted, not a gRPC
    /// endpoint) if there was one, else [`Error::Connect`] naming them all.
    pub async fn connect_any(targets: &[Target], namespace: &str) -> Result<Client, Error> {
        let mut unreached = Vec::new();
        let mut setup = None;
        for target in targets {
            match Client::connect_to(target, namespace).await {
                Ok(client) => return Ok(client),
                Err(Error::Connect(address)) => unreached.push(address),
                Err(e @ Error::Setup { .. }) => {
                    unreached.push(target.to_string());
                    setup.get_or_insert(e);
                }
                // Not about the address (a bad namespace): the same for all.
                Err(e) => return Err(e),
            }
        }
        Err(setup.unwrap_or_else(|| Error::Connect(unreached.join(", "))))
    }

    /// Sends `token` as the bearer of every later call (of this client and
    /// its clones); `None` calls anonymously.
    pub fn set_token(&self, token: Option<&str>) {
        let value = token.and_then(|t| MetadataValue::try_from(format!("Bearer {t}")).ok());
        *self
            .namespace
            .bearer
            .write()
            .unwrap_or_else(|e| e.into_inner()) = value;
    }

    /// The address this client talks to (`https://` first when over TLS).
    pub fn address(&self) -> &str {
        &self.address
    }

    /// A channel for typed clients of any service: calls go through the
    /// node, which routes them by the gRPC package name (or the
    /// `micro-service` metadata) to an instance of the service.
    pub fn channel(&self) -> Conn {
        self.conn()
    }

    fn conn(&self) -> Conn {
        InterceptedService::new(self.channel.clone(), self.namespace.clone())
    }

    /// The Store service.
    pub fn store(&self) -> StoreClient<Conn> {
        StoreClient::new(self.conn())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    /// The Config service.
    pub fn config(&self) -> ConfigClient<Conn> {
        ConfigClient::new(self.conn())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    /// A service's registration and its parsed descriptor set.
    pub async fn describe(
        &self,
        service: &str,
    ) -> Result<
        (
            micro_proto::registry::Service,
            prost_reflect::DescriptorPool,
        ),
        Error,
    > {
        let req = micro_proto::registry::GetRequest {
            service: service.to_string(),
            options: None,
        };
        let reg = match self.registry().get_service(req).await {
            Ok(r) => r.into_inner().services.into_iter().next(),
            Err(s) if s.code() == tonic::Code::NotFound => None,
            Err(s) => return Err(s.into()),
        }
        .ok_or_else(|| Error::NoService(service.to_string()))?;
        if reg.descriptor.is_empty() {
            return Err(Error::NoDescriptor(service.to_string()));
        }
        let pool = prost_reflect::DescriptorPool::decode(reg.descriptor.as_slice())
            .map_err(|_| Error::NoDescriptor(service.to_string()))?;
        Ok((reg, pool))
    }

    /// A ready gRPC client for `method`, its path, and `body` as a request
    /// naming `service`.
    async fn raw<T>(
        &self,
        service: &str,
        method: &prost_reflect::MethodDescriptor,
        body: T,
    ) -> Result<
        (
            tonic::client::Grpc<Conn>,
            tonic::codegen::http::uri::PathAndQuery,
            tonic::Request<T>,
        ),
        Error,
    > {
        use std::str::FromStr;
        let path = tonic::codegen::http::uri::PathAndQuery::from_str(&crate::dynamic::path(method))
            .map_err(|e| crate::dynamic::Error::BadRequest(e.to_string()))?;
        let mut grpc = tonic::client::Grpc::new(self.channel());
        grpc.ready()
            .await
            .map_err(|_| Error::Connect(self.address.clone()))?;
        let mut req = tonic::Request::new(body);
        if let Ok(v) = service.parse() {
            req.metadata_mut().insert(crate::SERVICE_HEADER, v);
        }
        Ok((grpc, path, req))
    }

    /// Sends one encoded request for `method` of `service` through the node;
    /// returns the encoded replies (one for unary methods).
    pub async fn call_raw(
        &self,
        service: &str,
        method: &prost_reflect::MethodDescriptor,
        message: bytes::Bytes,
    ) -> Result<tonic::Streaming<bytes::Bytes>, Error> {
        let (mut grpc, path, req) = self.raw(service, method, message).await?;
        // Every call is made as server-streaming: a unary reply is a stream
        // of one, and one code path serves both.
        let resp = grpc
            .server_streaming(req, path, crate::dynamic::RawCodec)
            .await?;
        Ok(resp.into_inner())
    }

    /// Opens a streaming call of `method` of `service` (client-streaming
    /// or bidirectional): each encoded request is sent as `requests`
    /// yields it, and replies arrive on the returned stream as the
    /// service sends them.
    pub async fn call_streaming(
        &self,
        service: &str,
        method: &prost_reflect::MethodDescriptor,
        requests: impl tokio_stream::Stream<Item = bytes::Bytes> + Send + 'static,
    ) -> Result<tonic::Streaming<bytes::Bytes>, Error> {
        let (mut grpc, path, req) = self.raw(service, method, requests).await?;
        let resp = grpc.streaming(req, path, crate::dynamic::RawCodec).await?;
        Ok(resp.into_inner())
    }

    /// Calls `endpoint` (`Service.Method`) of `service` with a JSON request
    /// and returns the JSON reply (an array of replies for streaming
    /// endpoints).
    pub async fn call(
        &self,
        service: &str,
        endpoint: &str,
        request: &serde_json::Value,
    ) -> Result<serde_json::Value, Error> {
        let (_, pool) = self.describe(service).await?;
        let method = crate::dynamic::method(&pool, service, endpoint)?;
        let message = crate::dynamic::encode_request(&method, request)?;
        let mut stream = self.call_raw(service, &method, message).await?;
        let mut replies = Vec::new();
        while let Some(msg) = stream.message().await? {
            replies.push(crate::dynamic::decode_reply(&method, &msg)?);
        }
        if method.is_server_streaming() {
            return Ok(serde_json::Value::Array(replies));
        }
        replies
            .into_iter()
            .next()
            .ok_or_else(|| tonic::Status::internal("the service sent no reply").into())
    }

    /// The Runtime service.
    pub fn runtime(&self) -> micro_proto::runtime::runtime_client::RuntimeClient<Conn> {
        micro_proto::runtime::runtime_client::RuntimeClient::new(self.conn())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    /// The Auth service (tokens).
    pub fn auth(&self) -> micro_proto::auth::auth_client::AuthClient<Conn> {
        micro_proto::auth::auth_client::AuthClient::new(self.conn())
    }

    /// The Accounts service.
    pub fn accounts(&self) -> micro_proto::auth::accounts_client::AccountsClient<Conn> {
        micro_proto::auth::accounts_client::AccountsClient::new(self.conn())
    }

    /// The Rules service.
    pub fn rules(&self) -> micro_proto::auth::rules_client::RulesClient<Conn> {
        micro_proto::auth::rules_client::RulesClient::new(self.conn())
    }

    /// The Cluster admin service.
    pub fn cluster(&self) -> micro_proto::cluster::cluster_client::ClusterClient<Conn> {
        micro_proto::cluster::cluster_client::ClusterClient::new(self.conn())
    }

    /// The Registry service.
    pub fn registry(&self) -> RegistryClient<Conn> {
        RegistryClient::new(self.conn()).max_decoding_message_size(MAX_MESSAGE)
    }

    /// The Events service (replicated streams).
    pub fn events(&self) -> micro_proto::events::events_client::EventsClient<Conn> {
        micro_proto::events::events_client::EventsClient::new(self.conn())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    /// The Broker service (fire-and-forget publish/subscribe).
    pub fn broker(&self) -> micro_proto::broker::broker_client::BrokerClient<Conn> {
        micro_proto::broker::broker_client::BrokerClient::new(self.conn())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }
}

static DEFAULT: tokio::sync::OnceCell<Client> = tokio::sync::OnceCell::const_new();

/// The client a service uses: connected once to `MICRO_PROXY_ADDRESS` (over
/// TLS when it starts with `https://`, trusting the CA in the file
/// `MICRO_PROXY_CA` or else the system's) in `MICRO_NAMESPACE`, and logged
/// in with the service's own account (`MICRO_AUTH_ID`, `MICRO_AUTH_SECRET`,
/// set by the runtime) when it has one, so every call carries the service's
/// identity.
pub async fn default() -> Result<&'static Client, Error> {
    DEFAULT
        .get_or_try_init(|| async {
            let address = crate::env_vars::proxy_address();
            let setup = |reason: String| Error::Setup {
                address: address.clone(),
                reason,
            };
            let ca = crate::env_vars::proxy_ca().map_err(setup)?;
            let target = Target::parse(&address, ca).map_err(|e| setup(e.to_string()))?;
            let client = Client::connect_to(&target, &crate::env_vars::namespace()).await?;
            if let Some((id, secret)) = crate::env_vars::credentials() {
                client.login(&id, &secret).await?;
            }
            Ok(client)
        })
        .await
}

impl Client {
    /// Logs in with an account's id and secret, and keeps the access token
    /// fresh in the background (refreshing a minute before it expires, and
    /// logging in again if the refresh token stops working).
    pub async fn login(&self, id: &str, secret: &str) -> Result<(), Error> {
        let token = self.get_token(id, secret).await?;
        self.set_token(Some(&token.access_token));
        let (me, id, secret) = (self.clone(), id.to_string(), secret.to_string());
        tokio::spawn(async move {
            let mut token = token;
            loop {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0);
                let wait = (token.expiry - now - 60).max(5) as u64;
                tokio::time::sleep(Duration::from_secs(wait)).await;
                let req = micro_proto::auth::TokenRequest {
                    refresh_token: token.refresh_token.clone(),
                    ..Default::default()
                };
                let fresh = match me.auth().token(req).await {
                    Ok(r) => r.into_inner().token,
                    Err(_) => me.get_token(&id, &secret).await.ok(),
                };
                match fresh {
                    Some(t) => {
                        me.set_token(Some(&t.access_token));
                        token = t;
                    }
                    None => crate::log::warn(&format!(
                        "cannot refresh the access token of {id}; retrying"
                    )),
                }
            }
        });
        Ok(())
    }

    async fn get_token(&self, id: &str, secret: &str) -> Result<micro_proto::auth::Token, Error> {
        let req = micro_proto::auth::TokenRequest {
            id: id.to_string(),
            secret: secret.to_string(),
            ..Default::default()
        };
        self.auth()
            .token(req)
            .await?
            .into_inner()
            .token
            .ok_or_else(|| tonic::Status::internal("the node sent no token").into())
    }
}
