//! The `MICRO_*` variables the runtime hands a service, with their defaults.

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The node's gRPC endpoint (`MICRO_PROXY_ADDRESS`, default `127.0.0.1:8081`).
pub fn proxy_address() -> String {
    var("MICRO_PROXY_ADDRESS").unwrap_or_else(|| format!("127.0.0.1:{}", crate::DEFAULT_PROXY_PORT))
}

/// The CA certificate (PEM) to verify an `https://` `MICRO_PROXY_ADDRESS`
/// with, read from the file `MICRO_PROXY_CA`; `None` when unset.
pub fn proxy_ca() -> Result<Option<String>, String> {
    let Some(path) = var("MICRO_PROXY_CA") else {
        return Ok(None);
    };
    std::fs::read_to_string(&path)
        .map(Some)
        .map_err(|e| format!("cannot read MICRO_PROXY_CA {path}: {e}"))
}

/// The namespace to act in (`MICRO_NAMESPACE`, default `micro`).
pub fn namespace() -> String {
    var("MICRO_NAMESPACE").unwrap_or_else(|| crate::DEFAULT_NAMESPACE.to_string())
}

/// The name the runtime gave the service (`MICRO_SERVICE_NAME`).
pub fn service_name() -> Option<String> {
    var("MICRO_SERVICE_NAME")
}

/// The version the runtime gave the service (`MICRO_SERVICE_VERSION`).
pub fn service_version() -> Option<String> {
    var("MICRO_SERVICE_VERSION")
}

/// Where the service listens (`MICRO_SERVICE_ADDRESS`, default `127.0.0.1:0`).
pub fn service_address() -> String {
    var("MICRO_SERVICE_ADDRESS").unwrap_or_else(|| "127.0.0.1:0".to_string())
}

/// The service's account id and secret (`MICRO_AUTH_ID`,
/// `MICRO_AUTH_SECRET`), when the runtime gave it one.
pub fn credentials() -> Option<(String, String)> {
    Some((var("MICRO_AUTH_ID")?, var("MICRO_AUTH_SECRET")?))
}
