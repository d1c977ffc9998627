//! A connection to a node's gRPC endpoint, with typed clients for the core
//! services. Every request carries the chosen namespace as metadata.

use std::time::Duration;

use micro_proto::{
    config::config_client::ConfigClient, registry::registry_client::RegistryClient,
    store::store_client::StoreClient,
};
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// Largest message a client sends or accepts (store values are limited to
/// 4 MiB; the rest is headroom for keys and metadata).
pub const MAX_MESSAGE: usize = 8 * 1024 * 1024;

/// What can go wrong talking to a node.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Failed to connect to micro server at {0}")]
    Connect(String),
    #[error("Invalid namespace '{0}'")]
    Namespace(String),
    #[error("{}", .0.message())]
    Status(#[from] tonic::Status),
}

/// Adds the namespace to every request.
#[derive(Clone)]
pub struct Namespace(MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Namespace {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut()
            .insert(crate::NAMESPACE_HEADER, self.0.clone());
        Ok(req)
    }
}

/// A channel through which calls reach a node.
pub type Conn = InterceptedService<Channel, Namespace>;

/// A connection to one node.
#[derive(Clone)]
pub struct Client {
    channel: Channel,
    namespace: Namespace,
    address: String,
}

impl Client {
    /// Connects to `address` (host:port), acting in `namespace`.
    pub async fn connect(address: &str, namespace: &str) -> Result<Client, Error> {
        let ns = MetadataValue::try_from(namespace)
            .map_err(|_| Error::Namespace(namespace.to_string()))?;
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|_| Error::Connect(address.to_string()))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        let channel = endpoint
            .connect()
            .await
            .map_err(|_| Error::Connect(address.to_string()))?;
        Ok(Client {
            channel,
            namespace: Namespace(ns),
            address: address.to_string(),
        })
    }

    /// The address this client talks to.
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

    /// The Registry service.
    pub fn registry(&self) -> RegistryClient<Conn> {
        RegistryClient::new(self.conn()).max_decoding_message_size(MAX_MESSAGE)
    }
}

static DEFAULT: tokio::sync::OnceCell<Client> = tokio::sync::OnceCell::const_new();

/// The client a service uses: connected once to `MICRO_PROXY_ADDRESS` in
/// `MICRO_NAMESPACE`.
pub async fn default() -> Result<&'static Client, Error> {
    DEFAULT
        .get_or_try_init(|| async {
            Client::connect(
                &crate::env_vars::proxy_address(),
                &crate::env_vars::namespace(),
            )
            .await
        })
        .await
}
