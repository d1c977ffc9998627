//! The registry in one call each, for services.

use micro_proto::registry::{GetRequest, ListRequest, Service};

use crate::client::{default, Error};

/// The registrations of `name` (one per version, nodes merged).
pub async fn get(name: &str) -> Result<Vec<Service>, Error> {
    let req = GetRequest {
        service: name.to_string(),
        options: None,
    };
    match default().await?.registry().get_service(req).await {
        Ok(r) => Ok(r.into_inner().services),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(Vec::new()),
        Err(s) => Err(s.into()),
    }
}

/// Every service of the namespace (without descriptors).
pub async fn list() -> Result<Vec<Service>, Error> {
    Ok(default()
        .await?
        .registry()
        .list_services(ListRequest::default())
        .await?
        .into_inner()
        .services)
}
