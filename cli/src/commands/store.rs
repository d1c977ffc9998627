//! `micro store`: read, write, list and delete records; databases, tables.

use micro_proto::store::{
    DatabasesRequest, DeleteOptions, DeleteRequest, ListOptions, ListRequest, ReadOptions,
    ReadRequest, Record, TablesRequest, WriteOptions, WriteRequest,
};

use super::{columns, out, Context};
use crate::args::{Order, Output, Paging, StoreArgs, StoreCommand, Table};
use crate::errors::Failure;

fn order(p: &Paging) -> String {
    match p.order {
        Order::Asc => "asc".into(),
        Order::Desc => "desc".into(),
    }
}

fn db(t: &Table) -> (String, String) {
    (
        t.database.clone().unwrap_or_default(),
        t.table.clone().unwrap_or_default(),
    )
}

/// Seconds as a short duration: `1h2m3s`.
fn human(secs: i64) -> String {
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    }
}

fn record_json(r: &Record) -> serde_json::Value {
    let metadata: serde_json::Map<String, serde_json::Value> = r
        .metadata
        .iter()
        .map(|(k, f)| (k.clone(), serde_json::Value::String(f.value.clone())))
        .collect();
    serde_json::json!({
        "key": r.key,
        "value": String::from_utf8_lossy(&r.value),
        "expiry": r.expiry,
        "metadata": metadata,
        "version": r.version,
    })
}

pub async fn run(ctx: Context, args: &StoreArgs) -> Result<(), Failure> {
    let Some(cmd) = &args.command else {
        return Err(Failure::msg(
            "No command provided to micro store. Please refer to 'micro store --help'",
        ));
    };
    let client = ctx.connect().await?;
    let mut store = client.store();
    match cmd {
        StoreCommand::Read {
            key,
            prefix,
            suffix,
            verbose,
            paging,
            table,
        } => {
            let (database, table) = db(table);
            let resp = store
                .read(ReadRequest {
                    key: key.clone(),
                    options: Some(ReadOptions {
                        database,
                        table,
                        prefix: *prefix,
                        suffix: *suffix,
                        limit: paging.limit.unwrap_or(0),
                        offset: paging.offset.unwrap_or(0),
                        order: order(paging),
                        stale: false,
                    }),
                })
                .await?
                .into_inner();
            if resp.records.is_empty() {
                return Err(Failure::msg("Not found"));
            }
            if paging.output == Output::Json {
                let list: Vec<serde_json::Value> = resp.records.iter().map(record_json).collect();
                return out(format!("{}\n", serde_json::Value::Array(list)).as_bytes());
            }
            if *verbose {
                let mut rows = vec![vec![
                    "KEY".to_string(),
                    "VALUE".into(),
                    "EXPIRY".into(),
                    "VERSION".into(),
                ]];
                for r in &resp.records {
                    let expiry = if r.expiry > 0 {
                        human(r.expiry)
                    } else {
                        "None".into()
                    };
                    rows.push(vec![
                        r.key.clone(),
                        String::from_utf8_lossy(&r.value).into_owned(),
                        expiry,
                        r.version.to_string(),
                    ]);
                }
                return out(columns(&rows).as_bytes());
            }
            let mut buf = Vec::new();
            for r in &resp.records {
                buf.extend_from_slice(&r.value);
                buf.push(b'\n');
            }
            out(&buf)
        }
        StoreCommand::Write {
            key,
            value,
            expiry,
            if_absent,
            if_version,
            table,
        } => {
            let (database, table) = db(table);
            let ttl = expiry
                .map(|d| d.as_millis().min(i64::MAX as u128) as i64)
                .unwrap_or(0);
            if expiry.is_some() && ttl == 0 {
                return Err(Failure::msg("Expiry must be at least 1ms"));
            }
            store
                .write(WriteRequest {
                    record: Some(Record {
                        key: key.clone(),
                        value: value.clone().into_bytes(),
                        ..Default::default()
                    }),
                    options: Some(WriteOptions {
                        database,
                        table,
                        ttl,
                        if_absent: *if_absent,
                        if_version: if_version.unwrap_or(0),
                        ..Default::default()
                    }),
                })
                .await?;
            if *if_absent {
                return out(b"Created\n");
            }
            Ok(())
        }
        StoreCommand::List {
            prefix,
            suffix,
            paging,
            table,
        } => {
            let (database, table) = db(table);
            let resp = store
                .list(ListRequest {
                    options: Some(ListOptions {
                        database,
                        table,
                        prefix: prefix.clone().unwrap_or_default(),
                        suffix: suffix.clone().unwrap_or_default(),
                        limit: paging.limit.unwrap_or(0),
                        offset: paging.offset.unwrap_or(0),
                        order: order(paging),
                        stale: false,
                    }),
                })
                .await?
                .into_inner();
            if paging.output == Output::Json {
                return out(format!("{}\n", serde_json::json!(resp.keys)).as_bytes());
            }
            out(lines(&resp.keys).as_bytes())
        }
        StoreCommand::Delete {
            key,
            if_version,
            table,
        } => {
            let (database, table) = db(table);
            store
                .delete(DeleteRequest {
                    key: key.clone(),
                    options: Some(DeleteOptions {
                        database,
                        table,
                        if_version: if_version.unwrap_or(0),
                    }),
                })
                .await?;
            Ok(())
        }
        StoreCommand::Databases => {
            let resp = store.databases(DatabasesRequest {}).await?.into_inner();
            out(lines(&resp.databases).as_bytes())
        }
        StoreCommand::Tables { database } => {
            let resp = store
                .tables(TablesRequest {
                    database: database.clone().unwrap_or_default(),
                })
                .await?
                .into_inner();
            out(lines(&resp.tables).as_bytes())
        }
    }
}

fn lines(items: &[String]) -> String {
    let mut s = String::with_capacity(items.iter().map(|i| i.len() + 1).sum());
    for i in items {
        s.push_str(i);
        s.push('\n');
    }
    s
}
