//! The store in one call each, for services: `micro::store::read("key")`.
//! Uses the default client ([`crate::client::default`]); the database is
//! the namespace and the table `micro`, as for the CLI.
//!
//! Every write returns the record's new version (the log index of the
//! write), and reads return it. Compare-and-set: [`write_if_absent`],
//! [`write_if_version`] and [`delete_if_version`] change nothing when their
//! condition fails and return an error whose
//! [`is_conflict`](crate::Error::is_conflict) is true.

use std::time::Duration;

use micro_proto::store::{
    DeleteOptions, DeleteRequest, ListOptions, ListRequest, ReadRequest, Record as Wire,
    WriteOptions, WriteRequest,
};

use crate::client::{default, Error};

/// A record as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub key: String,
    pub value: Vec<u8>,
    /// The log index of the record's last write; pass it to
    /// [`write_if_version`] or [`delete_if_version`].
    pub version: u64,
    /// Time left until the record expires, when it does.
    pub expiry: Option<Duration>,
}

impl From<Wire> for Record {
    fn from(r: Wire) -> Record {
        Record {
            key: r.key,
            value: r.value,
            version: r.version,
            expiry: (r.expiry > 0).then(|| Duration::from_secs(r.expiry as u64)),
        }
    }
}

/// The record under `key`, or `None`.
pub async fn read(key: &str) -> Result<Option<Record>, Error> {
    let req = ReadRequest {
        key: key.to_string(),
        options: None,
    };
    match default().await?.store().read(req).await {
        Ok(r) => Ok(r.into_inner().records.into_iter().next().map(Record::from)),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
        Err(s) => Err(s.into()),
    }
}

/// What a write requires of the record it replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Condition {
    None,
    Absent,
    Version(u64),
}

fn write_request(
    key: &str,
    value: Vec<u8>,
    ttl: Option<Duration>,
    when: Condition,
) -> WriteRequest {
    let (if_absent, if_version) = match when {
        Condition::None => (false, 0),
        Condition::Absent => (true, 0),
        Condition::Version(v) => (false, v),
    };
    WriteRequest {
        record: Some(Wire {
            key: key.to_string(),
            value,
            ..Default::default()
        }),
        options: Some(WriteOptions {
            ttl: ttl.map(|t| t.as_millis().max(1) as i64).unwrap_or(0),
            if_absent,
            if_version,
            ..Default::default()
        }),
    }
}

async fn send(req: WriteRequest) -> Result<u64, Error> {
    let resp = default().await?.store().write(req).await?;
    Ok(resp.into_inner().version)
}

/// Writes `value` under `key`, expiring after `ttl` when given. Returns the
/// record's new version.
pub async fn write(
    key: &str,
    value: impl Into<Vec<u8>>,
    ttl: Option<Duration>,
) -> Result<u64, Error> {
    send(write_request(key, value.into(), ttl, Condition::None)).await
}

/// Writes `value` under `key` only if the key holds no record (a lock, a
/// first claim). Returns the new version; if the key exists, nothing
/// changes and the error is a conflict.
pub async fn write_if_absent(
    key: &str,
    value: impl Into<Vec<u8>>,
    ttl: Option<Duration>,
) -> Result<u64, Error> {
    send(write_request(key, value.into(), ttl, Condition::Absent)).await
}

/// Writes `value` under `key` only if the record is at `version` (as
/// [`read`] returned it). Returns the new version; if the record changed
/// meanwhile or is gone, nothing changes and the error is a conflict.
/// `version` 0 names no record and always conflicts.
pub async fn write_if_version(
    key: &str,
    value: impl Into<Vec<u8>>,
    version: u64,
    ttl: Option<Duration>,
) -> Result<u64, Error> {
    let when = Condition::Version(check_version(version)?);
    send(write_request(key, value.into(), ttl, when)).await
}

/// Version 0 means "no condition" on the wire; a caller who passes it
/// asked for a record no write ever produced, so it is refused here rather
/// than turned into an unconditional write.
fn check_version(version: u64) -> Result<u64, Error> {
    if version == 0 {
        return Err(Error::Status(tonic::Status::aborted(
            "Version mismatch: no record is at version 0",
        )));
    }
    Ok(version)
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

/// Deletes `key` only if its record is at `version`; otherwise nothing
/// changes and the error is a conflict.
pub async fn delete_if_version(key: &str, version: u64) -> Result<(), Error> {
    let if_version = check_version(version)?;
    let req = DeleteRequest {
        key: key.to_string(),
        options: Some(DeleteOptions {
            if_version,
            ..Default::default()
        }),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_reach_the_wire() {
        let opts = |c| write_request("k", b"v".to_vec(), None, c).options.unwrap();
        let plain = opts(Condition::None);
        assert!(!plain.if_absent && plain.if_version == 0);
        let absent = opts(Condition::Absent);
        assert!(absent.if_absent && absent.if_version == 0);
        let at = opts(Condition::Version(18));
        assert!(!at.if_absent && at.if_version == 18);
    }

    #[test]
    fn version_zero_is_a_conflict_not_an_unconditional_write() {
        let err = check_version(0).unwrap_err();
        assert!(err.is_conflict(), "{err}");
        assert_eq!(check_version(5).unwrap(), 5);
    }

    #[test]
    fn aborted_is_a_conflict_and_nothing_else_is() {
        let aborted = Error::Status(tonic::Status::aborted(
            "Version mismatch: k is at version 3",
        ));
        assert!(aborted.is_conflict());
        assert!(!Error::Status(tonic::Status::not_found("not found")).is_conflict());
        assert!(!Error::Connect("x".into()).is_conflict());
    }

    #[test]
    fn read_records_carry_version_and_expiry() {
        let r = Record::from(Wire {
            key: "k".into(),
            value: b"v".to_vec(),
            expiry: 60,
            version: 42,
            ..Default::default()
        });
        assert_eq!(r.version, 42);
        assert_eq!(r.expiry, Some(Duration::from_secs(60)));
        assert_eq!(Record::from(Wire::default()).expiry, None);
    }
}
