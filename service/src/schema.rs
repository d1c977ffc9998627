//! Endpoint schemas for the registry, derived from protobuf descriptors: a
//! service's methods become endpoints named `Service.Method`, with request
//! and response types as trees of `{name, type, values}`.

use std::collections::HashSet;

use micro_proto::registry::{Endpoint, Value};
use prost_reflect::{DescriptorPool, FieldDescriptor, Kind, MessageDescriptor};

/// How deep nested messages are expanded; deeper (or recursive) fields keep
/// their type name and no sub-fields.
const MAX_DEPTH: usize = 8;

/// The endpoints of the gRPC service `full_name` (e.g. `store.Store`) found
/// in `pool`, or `None` if the pool does not define it.
pub fn endpoints(pool: &DescriptorPool, full_name: &str) -> Option<Vec<Endpoint>> {
    let service = pool.get_service_by_name(full_name)?;
    let short = service.name().to_string();
    Some(
        service
            .methods()
            .map(|m| {
                let mut metadata = std::collections::HashMap::new();
                if m.is_server_streaming() {
                    metadata.insert("stream".to_string(), "true".to_string());
                }
                if m.is_client_streaming() {
                    metadata.insert("client_stream".to_string(), "true".to_string());
                }
                Endpoint {
                    name: format!("{short}.{}", m.name()),
                    request: Some(message_value(
                        m.input().name(),
                        &m.input(),
                        &mut HashSet::new(),
                        0,
                    )),
                    response: Some(message_value(
                        m.output().name(),
                        &m.output(),
                        &mut HashSet::new(),
                        0,
                    )),
                    metadata,
                }
            })
            .collect(),
    )
}

fn message_value(
    name: &str,
    msg: &MessageDescriptor,
    seen: &mut HashSet<String>,
    depth: usize,
) -> Value {
    let mut value = Value {
        name: name.to_string(),
        r#type: msg.name().to_string(),
        values: Vec::new(),
    };
    if depth >= MAX_DEPTH || !seen.insert(msg.full_name().to_string()) {
        return value;
    }
    value.values = msg
        .fields()
        .map(|f| field_value(&f, seen, depth + 1))
        .collect();
    seen.remove(msg.full_name());
    value
}

fn kind_name(kind: &Kind) -> String {
    match kind {
        Kind::Double => "double".into(),
        Kind::Float => "float".into(),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => "int32".into(),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => "int64".into(),
        Kind::Uint32 | Kind::Fixed32 => "uint32".into(),
        Kind::Uint64 | Kind::Fixed64 => "uint64".into(),
        Kind::Bool => "bool".into(),
        Kind::String => "string".into(),
        Kind::Bytes => "bytes".into(),
        Kind::Message(m) => m.name().into(),
        Kind::Enum(e) => e.name().into(),
    }
}

fn field_value(f: &FieldDescriptor, seen: &mut HashSet<String>, depth: usize) -> Value {
    if f.is_map() {
        if let Kind::Message(entry) = f.kind() {
            let key = entry.map_entry_key_field().kind();
            let val = entry.map_entry_value_field();
            let mut v = Value {
                name: f.name().to_string(),
                r#type: format!("map[{}]{}", kind_name(&key), kind_name(&val.kind())),
                values: Vec::new(),
            };
            if let Kind::Message(m) = val.kind() {
                v.values = message_value(f.name(), &m, seen, depth).values;
            }
            return v;
        }
    }
    let base = kind_name(&f.kind());
    let ty = if f.is_list() {
        format!("[]{base}")
    } else {
        base
    };
    match f.kind() {
        Kind::Message(m) => {
            let mut v = message_value(f.name(), &m, seen, depth);
            v.r#type = ty;
            v
        }
        _ => Value {
            name: f.name().to_string(),
            r#type: ty,
            values: Vec::new(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_endpoints_have_named_typed_fields() {
        let pool = DescriptorPool::decode(micro_proto::FILE_DESCRIPTOR_SET).unwrap();
        let eps = endpoints(&pool, "store.Store").unwrap();
        let read = eps
            .iter()
            .find(|e| e.name == "Store.Read")
            .expect("Store.Read");
        let req = read.request.as_ref().unwrap();
        assert_eq!(req.r#type, "ReadRequest");
        let key = req.values.iter().find(|v| v.name == "key").unwrap();
        assert_eq!(key.r#type, "string");
        let opts = req.values.iter().find(|v| v.name == "options").unwrap();
        assert!(opts
            .values
            .iter()
            .any(|v| v.name == "prefix" && v.r#type == "bool"));
        let resp = read.response.as_ref().unwrap();
        let records = resp.values.iter().find(|v| v.name == "records").unwrap();
        assert_eq!(records.r#type, "[]Record");
        let meta = records
            .values
            .iter()
            .find(|v| v.name == "metadata")
            .unwrap();
        assert_eq!(meta.r#type, "map[string]Field");
        assert!(endpoints(&pool, "nope.Nope").is_none());
    }

    #[test]
    fn streaming_endpoints_are_marked() {
        let pool = DescriptorPool::decode(micro_proto::FILE_DESCRIPTOR_SET).unwrap();
        let eps = endpoints(&pool, "registry.Registry").unwrap();
        let watch = eps.iter().find(|e| e.name == "Registry.Watch").unwrap();
        assert_eq!(
            watch.metadata.get("stream").map(String::as_str),
            Some("true")
        );
        let get = eps
            .iter()
            .find(|e| e.name == "Registry.GetService")
            .unwrap();
        assert!(!get.metadata.contains_key("stream"));
    }
}
