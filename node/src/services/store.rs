//! The Store service: records (key, value, expiry, metadata) in databases
//! and tables, isolated per namespace.
//!
//! Keys live at `store/<namespace>/<database>/<table>/<key>` in the
//! replicated key space. The database defaults to the namespace and the
//! table to `micro`. The value kept in Raft is the protobuf `Record` without
//! its key (value and metadata), with the expiry carried by the replicated
//! record itself, so expired records vanish from reads at once and are
//! purged by the leader.
//!
//! Compare-and-set: a write may be conditional on the key being absent
//! (`if_absent`) or on its live record being at a version (`if_version`),
//! and a delete on the version. The condition is judged inside the
//! replicated transaction, so it holds at the write's place in the log; a
//! failed condition changes nothing and is reported as `ABORTED` with the
//! record's current version. A record's version is the log index of its
//! last write.

use std::time::Duration;

use micro_proto::store::store_server::Store;
use micro_proto::store::*;
use micro_raft::{now_millis, Cond, Replica, Txn};
use prost::Message;
use tonic::{Request, Response, Status};

use crate::grpc::{barrier, check_name, namespace, status};

/// Largest value a record may hold.
pub const MAX_VALUE: usize = 4 * 1024 * 1024;
/// Largest key.
pub const MAX_KEY: usize = 4096;
/// Largest total of values one read may return.
const MAX_READ: usize = 6 * 1024 * 1024;
/// Default table name.
pub const DEFAULT_TABLE: &str = "micro";
/// How long a failed conditional write waits for this replica to catch up
/// with it before reading the version it reports.
const CONFLICT_READ_WAIT: Duration = Duration::from_secs(2);

/// The Store service over the replicated state.
pub struct StoreService {
    replica: Replica,
}

impl StoreService {
    pub fn new(replica: Replica) -> Self {
        StoreService { replica }
    }
}

/// `store/<ns>/<db>/<table>/`, with defaults applied and names checked.
fn table_prefix(ns: &str, database: &str, table: &str) -> Result<Vec<u8>, Status> {
    let db = if database.is_empty() { ns } else { database };
    let table = if table.is_empty() {
        DEFAULT_TABLE
    } else {
        table
    };
    check_name("database", db)?;
    check_name("table", table)?;
    Ok(crate::keys::store::table(ns, db, table))
}

fn check_key(key: &str) -> Result<(), Status> {
    if key.is_empty() {
        return Err(Status::invalid_argument("key must not be empty"));
    }
    if key.len() > MAX_KEY {
        return Err(Status::invalid_argument(format!(
            "key is {} bytes; the limit is {MAX_KEY}",
            key.len()
        )));
    }
    Ok(())
}

/// Seconds left until `expires_at`, rounded up; 0 when there is no expiry.
fn seconds_left(expires_at: Option<u64>, now: u64) -> i64 {
    match expires_at {
        Some(at) if at > now => (at - now).div_ceil(1000) as i64,
        Some(_) => 0,
        None => 0,
    }
}

fn decode(key: &[u8], rec: micro_raft::Record, now: u64) -> Result<Record, Status> {
    let stored = Record::decode(rec.value.as_slice())
        .map_err(|e| Status::internal(format!("corrupt record: {e}")))?;
    Ok(Record {
        key: String::from_utf8_lossy(key).into_owned(),
        value: stored.value,
        expiry: seconds_left(rec.expires_at, now),
        metadata: stored.metadata,
        version: rec.version,
    })
}

/// The condition a write's options ask for: none, absent, or a version.
fn write_condition(key: &[u8], opts: &WriteOptions) -> Result<Option<Cond>, Status> {
    match (opts.if_absent, opts.if_version) {
        (true, v) if v > 0 => Err(Status::invalid_argument(
            "if_absent and if_version cannot be combined; use one of them",
        )),
        (true, _) => Ok(Some(Cond::Absent(key.to_vec()))),
        (false, 0) => Ok(None),
        (false, v) => Ok(Some(Cond::VersionEq(key.to_vec(), v))),
    }
}

/// The sentence a caller sees when a condition failed: what was asked, and
/// the version the key is at now (`current`: `Ok(None)` when it does not
/// exist, `Err` when it could not be read).
fn conflict_message(key: &str, cond: &Cond, current: Result<Option<u64>, ()>) -> String {
    match (cond, current) {
        (Cond::Absent(_), Ok(Some(v))) => format!("Already exists: {key} is at version {v}"),
        (Cond::Absent(_), Ok(None)) => {
            format!("Already exists: {key} existed when the write was applied (it is gone now)")
        }
        (Cond::Absent(_), Err(())) => format!("Already exists: {key}"),
        (Cond::VersionEq(_, want), Ok(Some(v))) if v != *want => {
            format!("Version mismatch: {key} is at version {v}")
        }
        (Cond::VersionEq(..), Ok(None)) => format!("Version mismatch: {key} does not exist"),
        (Cond::VersionEq(_, want), _) => {
            format!("Version mismatch: {key} is not at version {want}")
        }
        // The store asks for no other condition.
        (_, _) => format!("Condition failed: {key} was not changed"),
    }
}

/// Filters shared by Read and List.
struct Selection<'a> {
    prefix: &'a str,
    suffix: &'a str,
    offset: u64,
    limit: u64,
    desc: bool,
}

fn order_is_desc(order: &str) -> Result<bool, Status> {
    match order {
        "" | "asc" => Ok(false),
        "desc" => Ok(true),
        other => Err(Status::invalid_argument(format!(
            "order must be asc or desc, not '{other}'"
        ))),
    }
}

impl StoreService {
    /// Replicates `txn`, guarded by `cond` when there is one, and returns
    /// its log index; a failed condition becomes `ABORTED`.
    async fn write_when(
        &self,
        key: &str,
        full: &[u8],
        txn: Txn,
        cond: Option<Cond>,
    ) -> Result<u64, Status> {
        let txn = match &cond {
            Some(c) => txn.when(c.clone()),
            None => txn,
        };
        let res = self.replica.write(txn).await.map_err(status)?;
        match cond {
            Some(cond) if !res.succeeded => Err(self.conflict(key, full, &cond, res.index).await),
            _ => Ok(res.index),
        }
    }

    /// The status for a condition that failed at log index `index`.
    ///
    /// Nothing changed: that much is certain. The version it reports is
    /// best effort: it waits (briefly) until this replica has applied
    /// `index` (a write from a follower was applied on the leader first),
    /// then reads the local replica, which is the state the condition was
    /// judged against unless another write came after it.
    async fn conflict(&self, key: &str, full: &[u8], cond: &Cond, index: u64) -> Status {
        let caught_up = self
            .replica
            .wait_applied(index, CONFLICT_READ_WAIT)
            .await
            .is_ok();
        let current = if caught_up {
            self.replica
                .reader()
                .get(full, now_millis())
                .map(|r| r.map(|r| r.version))
                .map_err(|_| ())
        } else {
            Err(())
        };
        Status::aborted(conflict_message(key, cond, current))
    }

    /// Visits the live records of a table that match `sel`, in order.
    fn select(
        &self,
        base: &[u8],
        sel: &Selection<'_>,
        mut visit: impl FnMut(&[u8], micro_raft::Record) -> Result<(), Status>,
    ) -> Result<(), Status> {
        let now = now_millis();
        let mut scan_prefix = base.to_vec();
        scan_prefix.extend_from_slice(sel.prefix.as_bytes());
        let mut skipped = 0u64;
        let mut taken = 0u64;
        for item in self.replica.reader().scan(&scan_prefix, now, sel.desc) {
            let (full, rec) = item.map_err(status)?;
            let key = &full[base.len()..];
            if !key.ends_with(sel.suffix.as_bytes()) {
                continue;
            }
            if skipped < sel.offset {
                skipped += 1;
                continue;
            }
            if sel.limit > 0 && taken >= sel.limit {
                break;
            }
            taken += 1;
            visit(key, rec)?;
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl Store for StoreService {
    async fn read(&self, req: Request<ReadRequest>) -> Result<Response<ReadResponse>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let opts = req.options.unwrap_or_default();
        let base = table_prefix(&ns, &opts.database, &opts.table)?;
        let desc = order_is_desc(&opts.order)?;
        barrier(&self.replica, opts.stale).await?;
        let now = now_millis();
        if !opts.prefix && !opts.suffix {
            check_key(&req.key)?;
            let mut full = base;
            full.extend_from_slice(req.key.as_bytes());
            let rec = self.replica.reader().get(&full, now).map_err(status)?;
            let rec = rec.ok_or_else(|| Status::not_found("not found"))?;
            return Ok(Response::new(ReadResponse {
                records: vec![decode(req.key.as_bytes(), rec, now)?],
            }));
        }
        let sel = Selection {
            prefix: if opts.prefix { &req.key } else { "" },
            suffix: if opts.suffix { &req.key } else { "" },
            offset: opts.offset,
            limit: opts.limit,
            desc,
        };
        let mut records = Vec::new();
        let mut size = 0usize;
        self.select(&base, &sel, |key, rec| {
            size += key.len() + rec.value.len();
            if size > MAX_READ {
                return Err(Status::resource_exhausted(
                    "the matching records exceed 6 MiB; read fewer with a limit and offset",
                ));
            }
            records.push(decode(key, rec, now)?);
            Ok(())
        })?;
        Ok(Response::new(ReadResponse { records }))
    }

    async fn write(&self, req: Request<WriteRequest>) -> Result<Response<WriteResponse>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let opts = req.options.unwrap_or_default();
        let record = req
            .record
            .ok_or_else(|| Status::invalid_argument("a record is required"))?;
        check_key(&record.key)?;
        if record.value.len() > MAX_VALUE {
            return Err(Status::invalid_argument(format!(
                "value is {} bytes; the limit is {MAX_VALUE} (4 MiB)",
                record.value.len()
            )));
        }
        if record.expiry < 0 || opts.ttl < 0 || opts.expiry < 0 {
            return Err(Status::invalid_argument("expiry must not be negative"));
        }
        let now = now_millis();
        // Precedence: an explicit TTL in ms, then an absolute time, then the
        // record's own expiry in seconds.
        let expires_at = if opts.ttl > 0 {
            Some(now.saturating_add(opts.ttl as u64))
        } else if opts.expiry > 0 {
            Some((opts.expiry as u64).saturating_mul(1000))
        } else if record.expiry > 0 {
            Some(now.saturating_add((record.expiry as u64).saturating_mul(1000)))
        } else {
            None
        };
        let mut key = table_prefix(&ns, &opts.database, &opts.table)?;
        key.extend_from_slice(record.key.as_bytes());
        let stored = Record {
            key: String::new(),
            value: record.value,
            expiry: 0,
            metadata: record.metadata,
            version: 0,
        };
        let cond = write_condition(&key, &opts)?;
        let mut txn = Txn::put(key.clone(), stored.encode_to_vec(), expires_at);
        txn.now = now;
        let version = self.write_when(&record.key, &key, txn, cond).await?;
        Ok(Response::new(WriteResponse { version }))
    }

    async fn delete(
        &self,
        req: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let opts = req.options.unwrap_or_default();
        check_key(&req.key)?;
        let mut key = table_prefix(&ns, &opts.database, &opts.table)?;
        key.extend_from_slice(req.key.as_bytes());
        let cond = (opts.if_version > 0).then(|| Cond::VersionEq(key.clone(), opts.if_version));
        self.write_when(&req.key, &key, Txn::delete(key.clone()), cond)
            .await?;
        Ok(Response::new(DeleteResponse {}))
    }

    async fn list(&self, req: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let ns = namespace(&req)?;
        let opts = req.into_inner().options.unwrap_or_default();
        let base = table_prefix(&ns, &opts.database, &opts.table)?;
        let sel = Selection {
            prefix: &opts.prefix,
            suffix: &opts.suffix,
            offset: opts.offset,
            limit: opts.limit,
            desc: order_is_desc(&opts.order)?,
        };
        barrier(&self.replica, opts.stale).await?;
        let mut keys = Vec::new();
        let mut size = 0usize;
        self.select(&base, &sel, |key, _| {
            size += key.len() + 8;
            if size > MAX_READ {
                return Err(Status::resource_exhausted(
                    "the matching keys exceed 6 MiB; list fewer with a limit and offset",
                ));
            }
            keys.push(String::from_utf8_lossy(key).into_owned());
            Ok(())
        })?;
        Ok(Response::new(ListResponse { keys }))
    }

    async fn databases(
        &self,
        req: Request<DatabasesRequest>,
    ) -> Result<Response<DatabasesResponse>, Status> {
        let ns = namespace(&req)?;
        barrier(&self.replica, false).await?;
        let prefix = crate::keys::store::namespace(&ns);
        let dbs = self
            .replica
            .reader()
            .children(&prefix, b'/', now_millis())
            .map_err(status)?;
        Ok(Response::new(DatabasesResponse {
            databases: dbs
                .into_iter()
                .map(|d| String::from_utf8_lossy(&d).into_owned())
                .collect(),
        }))
    }

    async fn tables(
        &self,
        req: Request<TablesRequest>,
    ) -> Result<Response<TablesResponse>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        let db = if req.database.is_empty() {
            ns.clone()
        } else {
            req.database
        };
        check_name("database", &db)?;
        barrier(&self.replica, false).await?;
        let prefix = crate::keys::store::database(&ns, &db);
        let tables = self
            .replica
            .reader()
            .children(&prefix, b'/', now_millis())
            .map_err(status)?;
        Ok(Response::new(TablesResponse {
            tables: tables
                .into_iter()
                .map(|t| String::from_utf8_lossy(&t).into_owned())
                .collect(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(if_absent: bool, if_version: u64) -> WriteOptions {
        WriteOptions {
            if_absent,
            if_version,
            ..Default::default()
        }
    }

    #[test]
    fn write_options_become_conditions() {
        assert_eq!(write_condition(b"k", &opts(false, 0)).unwrap(), None);
        assert_eq!(
            write_condition(b"k", &opts(true, 0)).unwrap(),
            Some(Cond::Absent(b"k".to_vec()))
        );
        assert_eq!(
            write_condition(b"k", &opts(false, 7)).unwrap(),
            Some(Cond::VersionEq(b"k".to_vec(), 7))
        );
        let both = write_condition(b"k", &opts(true, 7)).unwrap_err();
        assert_eq!(both.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn conflicts_name_the_current_version() {
        let absent = Cond::Absent(b"x".to_vec());
        let at = |v| Cond::VersionEq(b"x".to_vec(), v);
        assert_eq!(
            conflict_message("counter", &at(17), Ok(Some(18))),
            "Version mismatch: counter is at version 18"
        );
        assert_eq!(
            conflict_message("counter", &at(17), Ok(None)),
            "Version mismatch: counter does not exist"
        );
        assert_eq!(
            conflict_message("counter", &at(17), Ok(Some(17))),
            "Version mismatch: counter is not at version 17",
            "a replica that has not caught up must not claim the asked version"
        );
        assert_eq!(
            conflict_message("counter", &absent, Ok(Some(18))),
            "Already exists: counter is at version 18"
        );
        assert_eq!(
            conflict_message("counter", &absent, Err(())),
            "Already exists: counter"
        );
    }
}
