//! The Config service: one JSON document per namespace, read and changed by
//! dot paths (`helloworld.somekey`).
//!
//! The document lives at `config/<namespace>`. Changes are read-modify-write
//! guarded by the record's version, retried on conflict, so concurrent sets
//! from any node merge rather than overwrite each other. Secret values are
//! sealed leaf by leaf ([`crate::secrets`]) as `{"__micro_secret__": "…"}`;
//! reads show them as `[secret]` unless the caller asks to decrypt.

use std::sync::Arc;

use micro_proto::config::config_server::Config;
use micro_proto::config::*;
use micro_raft::{Cond, Replica, Txn};
use serde_json::{Map, Value as Json};
use tonic::{Request, Response, Status};

use crate::auth::{caller, require_account};
use crate::grpc::{barrier, check_name, namespace, status};
use crate::secrets::SecretBox;

/// The largest a namespace's document may grow.
pub const MAX_DOCUMENT: usize = 4 * 1024 * 1024;
const SECRET_KEY: &str = "__micro_secret__";
const MASK: &str = "[secret]";
const CAS_ATTEMPTS: usize = 32;
/// The most segments a dot path may have.
pub const MAX_PATH_SEGMENTS: usize = 32;
/// The longest a dot path may be, in bytes.
pub const MAX_PATH_BYTES: usize = 1024;
/// How deep a document may nest (path and value together). serde_json
/// reads at most 128 levels back, so a deeper document could be stored but
/// never read again.
pub const MAX_DEPTH: usize = 64;

/// The Config service over the replicated state.
pub struct ConfigService {
    replica: Replica,
    secrets: Arc<SecretBox>,
}

impl ConfigService {
    pub fn new(replica: Replica, secrets: Arc<SecretBox>) -> Self {
        ConfigService { replica, secrets }
    }
}

fn doc_key(ns: &str) -> Vec<u8> {
    crate::keys::config::document(ns)
}

/// Splits a dot path; the empty path is the whole document. At most
/// [`MAX_PATH_BYTES`] bytes and [`MAX_PATH_SEGMENTS`] segments, none empty.
pub fn split_path(path: &str) -> Result<Vec<&str>, Status> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(Status::invalid_argument(format!(
            "invalid path: it is {} bytes long; the limit is {MAX_PATH_BYTES}",
            path.len()
        )));
    }
    let parts: Vec<&str> = path.split('.').collect();
    if parts.len() > MAX_PATH_SEGMENTS {
        return Err(Status::invalid_argument(format!(
            "invalid path: it has {} segments; the limit is {MAX_PATH_SEGMENTS}",
            parts.len()
        )));
    }
    if parts.iter().any(|p| p.is_empty()) {
        return Err(Status::invalid_argument(format!(
            "invalid path '{path}': empty segment"
        )));
    }
    Ok(parts)
}

fn is_secret(v: &Json) -> bool {
    matches!(v, Json::Object(m) if m.len() == 1 && m.get(SECRET_KEY).is_some_and(Json::is_string))
}

/// Merges `from` into `into`: maps merge key by key, anything else replaces.
fn deep_merge(into: &mut Map<String, Json>, from: Map<String, Json>) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(Json::Object(a)), Json::Object(b))
                if !is_secret(&Json::Object(a.clone())) && !is_secret(&Json::Object(b.clone())) =>
            {
                deep_merge(a, b)
            }
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

/// Sets `value` at `path` in `doc`, creating maps on the way and turning a
/// scalar in the way into a map. Refuses (changing nothing) a value that
/// would nest deeper than [`MAX_DEPTH`] there.
pub fn set_at(doc: &mut Json, path: &[&str], value: Json) -> Result<(), Status> {
    let depth = path.len() + micro::dynamic::json_depth(&value);
    if depth > MAX_DEPTH {
        return Err(Status::invalid_argument(format!(
            "the value would nest {depth} levels deep in the config; the limit is {MAX_DEPTH}"
        )));
    }
    let Some((last, parents)) = path.split_last() else {
        return match (doc, value) {
            (Json::Object(a), Json::Object(b)) => {
                deep_merge(a, b);
                Ok(())
            }
            _ => Err(Status::invalid_argument(
                "only a map can be set at the root of the config",
            )),
        };
    };
    let mut cur = doc;
    for seg in parents {
        if !cur.is_object() || is_secret(cur) {
            *cur = Json::Object(Map::new());
        }
        cur = cur
            .as_object_mut()
            .expect("made an object above")
            .entry(seg.to_string())
            .or_insert_with(|| Json::Object(Map::new()));
    }
    if !cur.is_object() || is_secret(cur) {
        *cur = Json::Object(Map::new());
    }
    let map = cur.as_object_mut().expect("made an object above");
    match (map.get_mut(*last), value) {
        (Some(existing @ Json::Object(_)), Json::Object(b))
            if !is_secret(existing) && !is_secret(&Json::Object(b.clone())) =>
        {
            if let Json::Object(a) = existing {
                deep_merge(a, b);
            }
        }
        (_, v) => {
            map.insert(last.to_string(), v);
        }
    }
    Ok(())
}

/// The value at `path` in `doc`, unless a secret or a non-map is in the way.
pub fn get_at<'a>(doc: &'a Json, path: &[&str]) -> Option<&'a Json> {
    let mut cur = doc;
    for seg in path {
        if is_secret(cur) {
            return None;
        }
        cur = cur.as_object()?.get(*seg)?;
    }
    Some(cur)
}

/// Removes the value at `path`; reports whether anything was there.
pub fn delete_at(doc: &mut Json, path: &[&str]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        let had = doc.as_object().is_some_and(|m| !m.is_empty());
        *doc = Json::Object(Map::new());
        return had;
    };
    let mut cur = doc;
    for seg in parents {
        match cur.as_object_mut().and_then(|m| m.get_mut(*seg)) {
            Some(next) => cur = next,
            None => return false,
        }
    }
    cur.as_object_mut()
        .is_some_and(|m| m.remove(*last).is_some())
}

impl ConfigService {
    /// Replaces every leaf of `v` by its sealed form.
    fn seal_leaves(&self, v: Json) -> Result<Json, Status> {
        match v {
            Json::Object(m) => {
                let mut out = Map::with_capacity(m.len());
                for (k, v) in m {
                    out.insert(k, self.seal_leaves(v)?);
                }
                Ok(Json::Object(out))
            }
            leaf => {
                let plain =
                    serde_json::to_vec(&leaf).map_err(|e| Status::internal(e.to_string()))?;
                let mut m = Map::new();
                m.insert(SECRET_KEY.into(), Json::String(self.secrets.seal(&plain)));
                Ok(Json::Object(m))
            }
        }
    }

    /// Shows secrets as `[secret]`, or decrypted to their original JSON.
    fn reveal(&self, v: &Json, decrypt: bool) -> Result<Json, Status> {
        if is_secret(v) {
            if !decrypt {
                return Ok(Json::String(MASK.into()));
            }
            let sealed = v[SECRET_KEY].as_str().unwrap_or_default();
            let plain = self
                .secrets
                .open(sealed)
                .map_err(|e| Status::failed_precondition(e.to_string()))?;
            return serde_json::from_slice(&plain)
                .map_err(|e| Status::internal(format!("corrupt secret: {e}")));
        }
        match v {
            Json::Object(m) => {
                let mut out = Map::with_capacity(m.len());
                for (k, v) in m {
                    out.insert(k.clone(), self.reveal(v, decrypt)?);
                }
                Ok(Json::Object(out))
            }
            other => Ok(other.clone()),
        }
    }

    /// The namespace's document and its version (0 when it has none).
    fn load(&self, ns: &str) -> Result<(Json, u64), Status> {
        match self
            .replica
            .reader()
            .get(&doc_key(ns), micro_raft::now_millis())
            .map_err(status)?
        {
            Some(rec) => {
                let doc = serde_json::from_slice(&rec.value)
                    .map_err(|e| Status::internal(format!("corrupt config: {e}")))?;
                Ok((doc, rec.version))
            }
            None => Ok((Json::Object(Map::new()), 0)),
        }
    }

    /// Applies `change` to the document and writes it back if nobody else
    /// changed it meanwhile; retries otherwise.
    async fn update(
        &self,
        ns: &str,
        change: impl Fn(&mut Json) -> Result<bool, Status>,
    ) -> Result<(), Status> {
        for _ in 0..CAS_ATTEMPTS {
            let (mut doc, version) = self.load(ns)?;
            if !change(&mut doc)? {
                return Ok(());
            }
            let raw = serde_json::to_vec(&doc).map_err(|e| Status::internal(e.to_string()))?;
            if raw.len() > MAX_DOCUMENT {
                return Err(Status::invalid_argument(format!(
                    "the config of namespace {ns} would be {} bytes; the limit is {MAX_DOCUMENT} (4 MiB)",
                    raw.len()
                )));
            }
            let key = doc_key(ns);
            let cond = if version == 0 {
                Cond::Absent(key.clone())
            } else {
                Cond::VersionEq(key.clone(), version)
            };
            let res = self
                .replica
                .write(Txn::put(key, raw, None).when(cond))
                .await
                .map_err(status)?;
            if res.succeeded {
                return Ok(());
            }
        }
        Err(Status::aborted(
            "the config changed concurrently too often; try again",
        ))
    }
}

/// The namespace named in the request, else the one of the call's
/// metadata. The guard authorized the metadata's namespace; a different
/// one named in the body must pass the same test, or a tenant could read
/// another namespace's config by naming it.
fn pick_namespace<T>(req: &Request<T>, named: &str) -> Result<String, Status> {
    let authorized = namespace(req)?;
    if named.is_empty() || named == authorized {
        return Ok(authorized);
    }
    check_name("namespace", named)?;
    if let Some(c) = caller(req) {
        if !c.may_act_in(named) {
            return Err(Status::permission_denied(format!(
                "account {} cannot act in namespace {named}",
                c.sub
            )));
        }
    }
    Ok(named.to_string())
}

/// Decrypted secrets are for logged-in accounts of the namespace only,
/// whatever the public rules grant.
fn may_decrypt<T>(req: &Request<T>, ns: &str, decrypt: bool) -> Result<(), Status> {
    if decrypt {
        require_account(&caller(req), ns)
            .map_err(|s| Status::new(s.code(), format!("reading secrets: {}", s.message())))?;
    }
    Ok(())
}

/// Parses a value as JSON, falling back to a plain string.
pub fn parse_value(data: &str) -> Json {
    serde_json::from_str(data).unwrap_or_else(|_| Json::String(data.to_string()))
}

#[tonic::async_trait]
impl Config for ConfigService {
    async fn get(&self, req: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let ns = pick_namespace(&req, &req.get_ref().namespace)?;
        let decrypt = req.get_ref().options.as_ref().is_some_and(|o| o.secret);
        may_decrypt(&req, &ns, decrypt)?;
        let req = req.into_inner();
        let path = split_path(&req.path)?;
        barrier(&self.replica, false).await?;
        let (doc, _) = self.load(&ns)?;
        let v = get_at(&doc, &path).ok_or_else(|| Status::not_found("not found"))?;
        let shown = self.reveal(v, decrypt)?;
        Ok(Response::new(GetResponse {
            value: Some(Value {
                data: shown.to_string(),
            }),
        }))
    }

    async fn set(&self, req: Request<SetRequest>) -> Result<Response<SetResponse>, Status> {
        let ns = pick_namespace(&req, &req.get_ref().namespace)?;
        let req = req.into_inner();
        let path = split_path(&req.path)?;
        let data = req.value.map(|v| v.data).unwrap_or_default();
        if data.len() > MAX_DOCUMENT {
            return Err(Status::invalid_argument(format!(
                "value is {} bytes; the limit is {MAX_DOCUMENT} (4 MiB)",
                data.len()
            )));
        }
        let mut value = parse_value(&data);
        if req.options.unwrap_or_default().secret {
            value = self.seal_leaves(value)?;
        }
        self.update(&ns, |doc| {
            set_at(doc, &path, value.clone())?;
            Ok(true)
        })
        .await?;
        Ok(Response::new(SetResponse {}))
    }

    async fn delete(
        &self,
        req: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let ns = pick_namespace(&req, &req.get_ref().namespace)?;
        let path = split_path(&req.get_ref().path)?;
        self.update(&ns, |doc| Ok(delete_at(doc, &path))).await?;
        Ok(Response::new(DeleteResponse {}))
    }

    async fn read(&self, req: Request<ReadRequest>) -> Result<Response<ReadResponse>, Status> {
        let ns = pick_namespace(&req, &req.get_ref().namespace)?;
        let decrypt = req.get_ref().options.as_ref().is_some_and(|o| o.secret);
        may_decrypt(&req, &ns, decrypt)?;
        barrier(&self.replica, false).await?;
        let (doc, _) = self.load(&ns)?;
        let shown = self.reveal(&doc, decrypt)?;
        Ok(Response::new(ReadResponse {
            value: Some(Value {
                data: shown.to_string(),
            }),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn set(doc: &mut Json, path: &str, v: Json) {
        set_at(doc, &split_path(path).unwrap(), v).unwrap();
    }

    #[test]
    fn maps_merge_deeply_and_scalars_replace() {
        let mut doc = json!({});
        set(&mut doc, "hw", json!({"a": 1}));
        set(&mut doc, "hw.b", json!(2));
        assert_eq!(doc, json!({"hw": {"a": 1, "b": 2}}));
        set(&mut doc, "hw", json!({"c": {"d": 1}}));
        set(&mut doc, "hw", json!({"c": {"e": 2}}));
        assert_eq!(doc, json!({"hw": {"a": 1, "b": 2, "c": {"d": 1, "e": 2}}}));
        set(&mut doc, "hw.a", json!({"x": true}));
        assert_eq!(
            doc["hw"]["a"],
            json!({"x": true}),
            "a scalar replaced by a map becomes the map"
        );
        set(&mut doc, "hw.b", json!("s"));
        assert_eq!(doc["hw"]["b"], json!("s"));
        set(&mut doc, "hw.b.deep.er", json!(1));
        assert_eq!(
            doc["hw"]["b"],
            json!({"deep": {"er": 1}}),
            "a scalar in the way becomes a map"
        );
    }

    #[test]
    fn delete_removes_leaves_and_subtrees() {
        let mut doc = json!({"a": {"b": 1, "c": {"d": 2}}});
        assert!(delete_at(&mut doc, &["a", "b"]));
        assert!(!delete_at(&mut doc, &["a", "zz"]));
        assert!(delete_at(&mut doc, &["a", "c"]));
        assert_eq!(doc, json!({"a": {}}));
    }

    #[test]
    fn paths_reject_empty_segments() {
        assert!(split_path("a..b").is_err());
        assert!(split_path(".a").is_err());
        assert_eq!(split_path("").unwrap(), Vec::<&str>::new());
    }

    #[test]
    fn paths_and_values_are_bounded() {
        let long = vec!["a"; 500].join(".");
        let e = split_path(&long).unwrap_err();
        assert!(e.message().contains("500 segments; the limit is 32"), "{e}");
        let e = split_path(&"a".repeat(MAX_PATH_BYTES + 1)).unwrap_err();
        assert!(e.message().contains("the limit is 1024"), "{e}");
        assert_eq!(split_path(&vec!["a"; 32].join(".")).unwrap().len(), 32);

        let mut doc = json!({"keep": 1});
        let mut deep = json!(1);
        for _ in 0..40 {
            deep = json!({ "x": deep });
        }
        let thirty = vec!["a"; 30].join(".");
        let path = split_path(&thirty).unwrap();
        let e = set_at(&mut doc, &path, deep.clone()).unwrap_err();
        assert!(e.message().contains("70 levels deep"), "{e}");
        assert!(set_at(&mut doc, &[], json!({ "r": deep.clone() })).is_ok());
        assert_eq!(doc["keep"], 1, "nothing else changed");
        // whatever is stored can be read back
        let raw = serde_json::to_vec(&doc).unwrap();
        assert!(serde_json::from_slice::<Json>(&raw).is_ok());
    }

    #[test]
    fn plain_text_values_fall_back_to_strings() {
        assert_eq!(parse_value("hello world"), json!("hello world"));
        assert_eq!(parse_value("12"), json!(12));
        assert_eq!(parse_value(r#"{"a":1}"#), json!({"a": 1}));
    }
}
