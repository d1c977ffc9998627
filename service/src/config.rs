//! Config in one call each, for services: `micro::config::get("svc.key")`.
//! Values are JSON; secrets come back decrypted (a service reads its own
//! configuration).

use micro_proto::config::{GetRequest, Options, SetRequest, Value};

use crate::client::{default, Error};

/// The value at the dot `path`, or `None`.
pub async fn get(path: &str) -> Result<Option<serde_json::Value>, Error> {
    let req = GetRequest {
        namespace: String::new(),
        path: path.to_string(),
        options: Some(Options { secret: true }),
    };
    match default().await?.config().get(req).await {
        Ok(r) => {
            let data = r.into_inner().value.map(|v| v.data).unwrap_or_default();
            Ok(serde_json::from_str(&data).ok())
        }
        Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
        Err(s) => Err(s.into()),
    }
}

/// Sets the value at the dot `path` (maps merge into what is there).
pub async fn set(path: &str, value: &serde_json::Value) -> Result<(), Error> {
    let req = SetRequest {
        namespace: String::new(),
        path: path.to_string(),
        value: Some(Value {
            data: value.to_string(),
        }),
        options: None,
    };
    default().await?.config().set(req).await?;
    Ok(())
}
