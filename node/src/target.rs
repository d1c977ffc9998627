//! What a call carries and where it goes: the headers nodes and the router
//! set on calls, the size limit of a gRPC message, and the call's
//! [`Target`], resolved once where a call enters (the guard on the gRPC
//! endpoint, the gateway) and read by the router from the request's
//! extensions.
//!
//! Must never: import another module of the node but the name checks
//! (`grpc`): everything that routes or checks calls stands on this.

use http::HeaderMap;
use tonic::Status;

/// Largest gRPC message the node accepts or sends.
pub const MAX_MESSAGE: usize = micro::client::MAX_MESSAGE;

/// The header naming the service of a call whose path does not (a user
/// service's package may differ from its registered name).
pub const SERVICE_HEADER: &str = micro::SERVICE_HEADER;

/// The header a proxied service call names its local instance with.
pub const INSTANCE_HEADER: &str = "micro-instance";

/// Set on calls another node passed to this node's own stack: they are
/// served here and never passed on again.
pub const HOP_HEADER: &str = "micro-hop";

/// Set by a node on the answer to a proxied call it could not hand to the
/// named instance at all (the connection was refused): the caller may try
/// another instance.
pub const NOT_DELIVERED: &str = "micro-not-delivered";

/// Where a call goes, resolved once where it enters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub namespace: String,
    pub service: String,
    /// `Service.Method`
    pub endpoint: String,
}

impl Target {
    /// The target a request's metadata and path name: the service from
    /// `micro-service` metadata or the path's package, the endpoint
    /// `Service.Method` from the path.
    pub fn of(headers: &HeaderMap, path: &str) -> Result<Target, Status> {
        let (grpc_service, method) = split_path(path)?;
        Ok(Target {
            service: target_service(headers, path)?,
            namespace: crate::grpc::namespace_of(headers)?,
            endpoint: endpoint(grpc_service, method),
        })
    }

    /// The target as the rule check names it: as [`Target::of`], except
    /// that a call into a package of the node's own (core services,
    /// `cluster.*`) is named by its package alone, so metadata cannot make
    /// it look like a call to something else.
    pub fn checked(headers: &HeaderMap, path: &str) -> Result<Target, Status> {
        let (grpc_service, method) = split_path(path)?;
        let package = grpc_service.split('.').next().unwrap_or(grpc_service);
        if micro_proto::NODE_PACKAGES.contains(&package) {
            return Ok(Target {
                service: package.to_string(),
                namespace: crate::grpc::namespace_of(headers)?,
                endpoint: endpoint(grpc_service, method),
            });
        }
        Target::of(headers, path)
    }
}

/// `/package.Service/Method` as (`package.Service`, `Method`).
fn split_path(path: &str) -> Result<(&str, &str), Status> {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    match (parts.next(), parts.next()) {
        (Some(s), Some(m)) if !s.is_empty() && !m.is_empty() => Ok((s, m)),
        _ => Err(Status::unimplemented(format!("no service at {path}"))),
    }
}

/// `Service.Method`, the endpoint's name in rules and registrations.
fn endpoint(grpc_service: &str, method: &str) -> String {
    let short = grpc_service.rsplit('.').next().unwrap_or(grpc_service);
    format!("{short}.{method}")
}

/// The service a call is for: `micro-service` metadata, else the package of
/// the gRPC path.
pub(crate) fn target_service(headers: &HeaderMap, path: &str) -> Result<String, Status> {
    if let Some(v) = headers.get(SERVICE_HEADER).and_then(|v| v.to_str().ok()) {
        if !v.is_empty() {
            crate::grpc::check_name("service", v)?;
            return Ok(v.to_string());
        }
    }
    let grpc_service = path
        .strip_prefix('/')
        .and_then(|p| p.split('/').next())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Status::unimplemented(format!("no service at {path}")))?;
    let name = match grpc_service.rsplit_once('.') {
        Some((package, _)) => package.to_string(),
        None => grpc_service.to_ascii_lowercase(),
    };
    crate::grpc::check_name("service", &name)?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_comes_from_metadata_or_the_package() {
        let mut h = HeaderMap::new();
        assert_eq!(
            target_service(&h, "/greeter.Greeter/Call").unwrap(),
            "greeter"
        );
        assert_eq!(target_service(&h, "/Greeter/Call").unwrap(), "greeter");
        h.insert("micro-service", "other".parse().unwrap());
        assert_eq!(
            target_service(&h, "/greeter.Greeter/Call").unwrap(),
            "other"
        );
        assert!(target_service(&HeaderMap::new(), "/").is_err());
    }
}
