//! The store in one call each, for services: `micro::store::read("key")`.
//! Uses the default client ([`crate::client::default`]); the database is
//! the namespace and the table `micro`, as for the CLI.

use std::time::Duration;

use micro_proto::store::{
    DeleteRequest, ListOptions, ListRequest, ReadRequest, Record, WriteOptions, WriteRequest,
};

use crate::client::{default, Error};

/// The value under `key`, or `None`.
pub async fn read(key: &str) -> Result<Option<Vec<u8>>, Error> {
    let req = ReadRequest {
        key: key.to_string(),
        options: None,
    };
    match default().await?.store().read(req).await {
        Ok(r) => Ok(r.into_inner().records.into_iter().next().map(|r| r.value)),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
        Err(s) => Err(s.into()),
    }
}

/// Writes `value` under `key`, expiring after `ttl` when given.
pub async fn write(
    key: &str,
    value: impl Into<Vec<u8>>,
    ttl: Option<Duration>,
) -> Result<(), Error> {
    let req = WriteRequest {
        record: Some(Record {
            key: key.to_string(),
            value: value.into(),
            ..Default::default()
        }),
        options: Some(WriteOptions {
            ttl: ttl.map(|t| t.as_millis().max(1) as i64).unwrap_or(0),
            ..Default::default()
        }),
    };
    default().await?.store().write(req).await?;
    Ok(())
}

/// Deletes `key`.
pub async fn delete(key: &str) -> Result<(), Error> {
    let req = DeleteRequest {
        key: key.to_string(),
        options: None,
    };
    default().await?.store().delete(req).await?;
    Ok(())
}

/// The keys starting with `prefix`, in order.
pub async fn list(prefix: &str) -> Result<Vec<String>, Error> {
    let req = ListRequest {
        options: Some(ListOptions {
            prefix: prefix.to_string(),
            ..Default::default()
        }),
    };
    Ok(default().await?.store().list(req).await?.into_inner().keys)
}
