//! Dynamic commands: every running service becomes a `micro` subcommand.
//!
//! `micro helloworld call --name Alice` picks the endpoint from the words
//! after the service name, turns the flags into a JSON request shaped by the
//! endpoint's request message, and (in the caller) sends it. This module is
//! the pure part of that: choosing the endpoint, splitting and converting
//! flags, and the `--help` texts. It does no I/O.

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value};

/// How deep `endpoint_help` flattens nested messages before it stops (guards
/// against recursive message types).
const MAX_HELP_DEPTH: usize = 5;

/// Which endpoint words name: `micro helloworld` -> "Helloworld.Call";
/// `micro helloworld call` -> "Helloworld.Call"; `micro registry getService`
/// -> "Registry.GetService"; `micro svc a b` -> "A.B" (both words
/// title-cased: first letter upper-cased, rest kept).
/// Any other number of words: Err("Incorrect number of arguments").
pub fn endpoint_name(service: &str, words: &[&str]) -> Result<String, String> {
    match words {
        [] => Ok(format!("{}.Call", title(service))),
        [endpoint] => Ok(format!("{}.{}", title(service), title(endpoint))),
        [svc, endpoint] => Ok(format!("{}.{}", title(svc), title(endpoint))),
        _ => Err("Incorrect number of arguments".to_string()),
    }
}

/// Splits the args after the service name into positional words and flags
/// (everything from the first arg starting with "--" on is flags; a
/// positional word after a flag is a flag's value).
pub fn split_args(args: &[String]) -> (Vec<String>, Vec<String>) {
    let at = args
        .iter()
        .position(|a| a.starts_with("--"))
        .unwrap_or(args.len());
    (args[..at].to_vec(), args[at..].to_vec())
}

/// Turns flags into the JSON request for `msg`.
///
/// `--name=Alice` or `--name Alice`; a bare `--flag` (no value, or followed
/// by another `--x`) is `true`. Nested fields join with `-` or `_`
/// (`--options-domain x` sets `{"options":{"domain":"x"}}`); a flag's
/// segments are matched against the snake_case field names at each level,
/// longest match first, and a field's json_name counts as one segment.
/// Values are coerced by the field's kind; repeated fields take a comma list
/// or a repeated flag, maps and messages take a JSON object. Keys in the
/// result are the proto field names.
pub fn flags_to_json(msg: &MessageDescriptor, flags: &[String]) -> Result<Value, String> {
    let mut root = Map::new();
    for (name, value) in parse_flags(flags)? {
        let segments: Vec<&str> = name.split(['-', '_']).collect();
        let path = resolve(msg, &segments).ok_or_else(|| format!("Unknown flag: {name}"))?;
        let value = value.unwrap_or_else(|| "true".to_string());
        apply(&mut root, &path, &name, &value)?;
    }
    Ok(Value::Object(root))
}

/// `micro <svc> --help`: NAME, VERSION, USAGE and COMMANDS (endpoints sorted,
/// each shown with the service prefix dropped and its first letter
/// lower-cased). The version shows as `latest` when the service has none.
pub fn service_help(svc: &micro_proto::registry::Service) -> String {
    let version = if svc.version.is_empty() {
        "latest"
    } else {
        svc.version.as_str()
    };
    let mut commands: Vec<String> = svc
        .endpoints
        .iter()
        .map(|e| command_word(&e.name))
        .filter(|w| !w.is_empty())
        .collect();
    commands.sort();
    commands.dedup();
    let mut out = format!(
        "NAME:\n  micro {name}\n\nVERSION:\n  {version}\n\nUSAGE:\n  micro {name} [command]\n\nCOMMANDS:\n",
        name = svc.name
    );
    for c in commands {
        out.push_str("  ");
        out.push_str(&c);
        out.push('\n');
    }
    out
}

/// `micro <svc> <endpoint> --help`: NAME, USAGE and FLAGS, one line per
/// request field (nested message fields flattened, joined with `-`), as
/// `  --name string`. The FLAGS section is left out when the request has no
/// fields.
pub fn endpoint_help(service: &str, word: &str, msg: &MessageDescriptor) -> String {
    let mut out =
        format!("NAME:\n  micro {service} {word}\n\nUSAGE:\n  micro {service} {word} [flags]\n");
    let mut lines = Vec::new();
    help_lines(msg, "", 0, &mut lines);
    if !lines.is_empty() {
        out.push_str("\nFLAGS:\n");
        for line in lines {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

/// First letter upper-cased, rest kept.
fn title(word: &str) -> String {
    let mut chars = word.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// "Helloworld.Call" -> "call", "Registry.GetService" -> "getService".
fn command_word(endpoint: &str) -> String {
    let method = endpoint.split_once('.').map_or(endpoint, |(_, m)| m);
    let mut chars = method.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Pairs each `--name` with its value (`--name=v`, `--name v`, or none).
fn parse_flags(flags: &[String]) -> Result<Vec<(String, Option<String>)>, String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < flags.len() {
        let arg = &flags[i];
        let Some(body) = arg.strip_prefix("--") else {
            return Err(format!("Unexpected argument: {arg}"));
        };
        let (name, value) = match body.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => match flags.get(i + 1) {
                Some(next) if !next.starts_with("--") => {
                    i += 1;
                    (body.to_string(), Some(next.clone()))
                }
                _ => (body.to_string(), None),
            },
        };
        if name.is_empty() {
            return Err(format!("Invalid flag: {arg}"));
        }
        out.push((name, value));
        i += 1;
    }
    Ok(out)
}

/// Finds the chain of fields a flag's segments name, preferring the longest
/// match at each level and backtracking when it leads nowhere.
fn resolve(msg: &MessageDescriptor, segments: &[&str]) -> Option<Vec<FieldDescriptor>> {
    if segments.is_empty() || segments.iter().any(|s| s.is_empty()) {
        return None;
    }
    let mut candidates: Vec<(usize, FieldDescriptor)> = Vec::new();
    for field in msg.fields() {
        let parts: Vec<&str> = field.name().split('_').collect();
        if segments.len() >= parts.len() && segments[..parts.len()] == parts[..] {
            candidates.push((parts.len(), field.clone()));
        }
        if segments[0] == field.json_name() && parts.len() != 1 {
            candidates.push((1, field));
        }
    }
    candidates.sort_by_key(|c| std::cmp::Reverse(c.0));
    for (used, field) in candidates {
        let rest = &segments[used..];
        if rest.is_empty() {
            return Some(vec![field]);
        }
        if let Some(inner) = nested_message(&field) {
            if let Some(mut tail) = resolve(&inner, rest) {
                tail.insert(0, field);
                return Some(tail);
            }
        }
    }
    None
}

/// The message type of a singular, non-well-known message field: one whose
/// fields can be set one by one.
fn nested_message(field: &FieldDescriptor) -> Option<MessageDescriptor> {
    match field.kind() {
        Kind::Message(m) if !field.is_list() && !field.is_map() && !is_well_known(&m) => Some(m),
        _ => None,
    }
}

/// google.protobuf types have their own JSON forms (a Timestamp is a string),
/// so they are set whole, never field by field.
fn is_well_known(m: &MessageDescriptor) -> bool {
    m.full_name().starts_with("google.protobuf.")
}

/// Sets the value of the field at the end of `path` in `root`.
fn apply(
    root: &mut Map<String, Value>,
    path: &[FieldDescriptor],
    flag: &str,
    raw: &str,
) -> Result<(), String> {
    let Some((leaf, parents)) = path.split_last() else {
        return Err(format!("Unknown flag: {flag}"));
    };
    let mut obj = root;
    for p in parents {
        let slot = obj
            .entry(p.name().to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if !slot.is_object() {
            *slot = Value::Object(Map::new());
        }
        obj = match slot {
            Value::Object(m) => m,
            _ => return Err(format!("Unknown flag: {flag}")),
        };
    }
    let key = leaf.name().to_string();
    let invalid = || {
        format!(
            "Invalid value for --{flag}: {raw} is not a {}",
            field_type(leaf)
        )
    };

    if leaf.is_map() {
        let Ok(Value::Object(entries)) = serde_json::from_str::<Value>(raw) else {
            return Err(invalid());
        };
        let slot = obj.entry(key).or_insert_with(|| Value::Object(Map::new()));
        match slot {
            Value::Object(existing) => existing.extend(entries),
            other => *other = Value::Object(entries),
        }
        return Ok(());
    }

    if leaf.is_list() {
        let kind = leaf.kind();
        let items: Vec<Value> = match &kind {
            Kind::Message(m) => match serde_json::from_str::<Value>(raw) {
                Ok(Value::Array(a)) if is_well_known(m) || a.iter().all(Value::is_object) => a,
                Ok(v @ Value::Object(_)) => vec![v],
                Ok(v) if is_well_known(m) => vec![v],
                _ if is_well_known(m) => vec![Value::String(raw.to_string())],
                _ => return Err(invalid()),
            },
            _ if raw.is_empty() => Vec::new(),
            _ => raw
                .split(',')
                .map(|item| coerce(&kind, item).ok_or_else(invalid))
                .collect::<Result<_, _>>()?,
        };
        let slot = obj.entry(key).or_insert_with(|| Value::Array(Vec::new()));
        match slot {
            Value::Array(existing) => existing.extend(items),
            other => *other = Value::Array(items),
        }
        return Ok(());
    }

    let value = coerce(&leaf.kind(), raw).ok_or_else(invalid)?;
    match (obj.get_mut(&key), value) {
        (Some(Value::Object(existing)), Value::Object(new)) => merge(existing, new),
        (_, value) => {
            obj.insert(key, value);
        }
    }
    Ok(())
}

/// Deep-merges `new` into `into`; `new` wins on conflicts.
fn merge(into: &mut Map<String, Value>, new: Map<String, Value>) {
    for (k, v) in new {
        match (into.get_mut(&k), v) {
            (Some(Value::Object(a)), Value::Object(b)) => merge(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

/// One value of a field of `kind` from its text, or None when it does not fit.
fn coerce(kind: &Kind, raw: &str) -> Option<Value> {
    match kind {
        Kind::Bool => match raw {
            "true" => Some(Value::Bool(true)),
            "false" => Some(Value::Bool(false)),
            _ => None,
        },
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => raw.parse::<i32>().ok().map(Value::from),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => raw.parse::<i64>().ok().map(Value::from),
        Kind::Uint32 | Kind::Fixed32 => raw.parse::<u32>().ok().map(Value::from),
        Kind::Uint64 | Kind::Fixed64 => raw.parse::<u64>().ok().map(Value::from),
        Kind::Float => {
            let f = raw.parse::<f32>().ok().filter(|f| f.is_finite())?;
            // The f64 reading of the text keeps "0.1" as 0.1, not 0.100000001.
            let d = raw.parse::<f64>().unwrap_or(f64::from(f));
            serde_json::Number::from_f64(d).map(Value::Number)
        }
        Kind::Double => raw
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number),
        Kind::String => Some(Value::String(raw.to_string())),
        // The text's bytes; the JSON form of protobuf bytes is base64.
        Kind::Bytes => {
            use base64::Engine;
            Some(Value::String(
                base64::engine::general_purpose::STANDARD.encode(raw),
            ))
        }
        Kind::Enum(e) => {
            if let Some(v) = e.get_value_by_name(raw) {
                return Some(Value::String(v.name().to_string()));
            }
            let n = raw.parse::<i32>().ok()?;
            e.get_value(n).map(|v| Value::String(v.name().to_string()))
        }
        Kind::Message(m) if is_well_known(m) => {
            Some(serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string())))
        }
        Kind::Message(_) => match serde_json::from_str::<Value>(raw) {
            Ok(v @ Value::Object(_)) => Some(v),
            _ => None,
        },
    }
}

/// The type name of one value of `kind`, as help and errors show it.
fn kind_name(kind: &Kind) -> String {
    match kind {
        Kind::Bool => "bool".into(),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => "int32".into(),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => "int64".into(),
        Kind::Uint32 | Kind::Fixed32 => "uint32".into(),
        Kind::Uint64 | Kind::Fixed64 => "uint64".into(),
        Kind::Float => "float".into(),
        Kind::Double => "double".into(),
        Kind::String => "string".into(),
        Kind::Bytes => "bytes".into(),
        Kind::Enum(e) => e.name().to_string(),
        Kind::Message(m) => m.name().to_string(),
    }
}

/// The type name of a field: `[]T` for repeated, `map[K]V` for maps.
fn field_type(field: &FieldDescriptor) -> String {
    if field.is_map() {
        if let Kind::Message(entry) = field.kind() {
            return format!(
                "map[{}]{}",
                kind_name(&entry.map_entry_key_field().kind()),
                kind_name(&entry.map_entry_value_field().kind())
            );
        }
    }
    let name = kind_name(&field.kind());
    if field.is_list() {
        format!("[]{name}")
    } else {
        name
    }
}

/// One `  --flag type` line per leaf field of `msg`, nested fields flattened.
fn help_lines(msg: &MessageDescriptor, prefix: &str, depth: usize, out: &mut Vec<String>) {
    for field in msg.fields() {
        let flag = format!("{prefix}{}", field.name());
        match nested_message(&field) {
            Some(inner) if depth + 1 < MAX_HELP_DEPTH => {
                help_lines(&inner, &format!("{flag}-"), depth + 1, out);
            }
            _ => out.push(format!("  --{flag} {}", field_type(&field))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use micro_proto::registry::{Endpoint, Service};
    use prost_reflect::prost_types::{
        field_descriptor_proto::{Label, Type},
        DescriptorProto, EnumDescriptorProto, EnumValueDescriptorProto, FieldDescriptorProto,
        FileDescriptorProto, MessageOptions,
    };
    use prost_reflect::{DescriptorPool, DynamicMessage};
    use serde_json::json;

    fn field(
        name: &str,
        number: i32,
        ty: Type,
        label: Label,
        type_name: &str,
    ) -> FieldDescriptorProto {
        FieldDescriptorProto {
            name: Some(name.into()),
            number: Some(number),
            r#type: Some(ty as i32),
            label: Some(label as i32),
            type_name: (!type_name.is_empty()).then(|| type_name.into()),
            json_name: Some(json_name(name)),
            ..Default::default()
        }
    }

    fn json_name(name: &str) -> String {
        let mut out = String::new();
        let mut upper = false;
        for c in name.chars() {
            if c == '_' {
                upper = true;
            } else if upper {
                out.extend(c.to_uppercase());
                upper = false;
            } else {
                out.push(c);
            }
        }
        out
    }

    fn opt(name: &str, number: i32, ty: Type) -> FieldDescriptorProto {
        field(name, number, ty, Label::Optional, "")
    }

    /// test.Request: name, flag, count, ratio, tags, labels, level, options
    /// {domain, page_size}, page_size, size (float), data (bytes), ids
    /// (repeated int32), node (recursive).
    fn request() -> MessageDescriptor {
        let labels_entry = DescriptorProto {
            name: Some("LabelsEntry".into()),
            field: vec![opt("key", 1, Type::String), opt("value", 2, Type::String)],
            options: Some(MessageOptions {
                map_entry: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        };
        let req = DescriptorProto {
            name: Some("Request".into()),
            field: vec![
                opt("name", 1, Type::String),
                opt("flag", 2, Type::Bool),
                opt("count", 3, Type::Int64),
                opt("ratio", 4, Type::Double),
                field("tags", 5, Type::String, Label::Repeated, ""),
                field(
                    "labels",
                    6,
                    Type::Message,
                    Label::Repeated,
                    ".test.Request.LabelsEntry",
                ),
                field("level", 7, Type::Enum, Label::Optional, ".test.Level"),
                field(
                    "options",
                    8,
                    Type::Message,
                    Label::Optional,
                    ".test.Options",
                ),
                opt("page_size", 9, Type::Int32),
                opt("size", 10, Type::Float),
                opt("data", 11, Type::Bytes),
                field("ids", 12, Type::Int32, Label::Repeated, ""),
                opt("total", 13, Type::Uint64),
            ],
            nested_type: vec![labels_entry],
            ..Default::default()
        };
        let options = DescriptorProto {
            name: Some("Options".into()),
            field: vec![
                opt("domain", 1, Type::String),
                opt("page_size", 2, Type::Int32),
            ],
            ..Default::default()
        };
        let node = DescriptorProto {
            name: Some("Node".into()),
            field: vec![
                opt("id", 1, Type::String),
                field("child", 2, Type::Message, Label::Optional, ".test.Node"),
            ],
            ..Default::default()
        };
        let level = EnumDescriptorProto {
            name: Some("Level".into()),
            value: ["LOW", "HIGH"]
                .iter()
                .enumerate()
                .map(|(i, n)| EnumValueDescriptorProto {
                    name: Some((*n).into()),
                    number: Some(i as i32),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let file = FileDescriptorProto {
            name: Some("test.proto".into()),
            package: Some("test".into()),
            syntax: Some("proto3".into()),
            message_type: vec![req, options, node],
            enum_type: vec![level],
            ..Default::default()
        };
        let mut pool = DescriptorPool::new();
        pool.add_file_descriptor_proto(file)
            .expect("valid test descriptor");
        pool.get_message_by_name("test.Request").expect("Request")
    }

    fn node() -> MessageDescriptor {
        request()
            .parent_pool()
            .get_message_by_name("test.Node")
            .expect("Node")
    }

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    fn to_json(a: &[&str]) -> Result<Value, String> {
        flags_to_json(&request(), &args(a))
    }

    /// The JSON the flags produce must be a valid request.
    fn decodes(v: &Value) {
        let text = v.to_string();
        let mut de = serde_json::Deserializer::from_str(&text);
        DynamicMessage::deserialize(request(), &mut de).expect("request decodes");
    }

    #[test]
    fn dynamic_endpoint_name_rules() {
        assert_eq!(endpoint_name("helloworld", &[]).unwrap(), "Helloworld.Call");
        assert_eq!(
            endpoint_name("helloworld", &["call"]).unwrap(),
            "Helloworld.Call"
        );
        assert_eq!(
            endpoint_name("registry", &["getService"]).unwrap(),
            "Registry.GetService"
        );
        assert_eq!(endpoint_name("svc", &["a", "b"]).unwrap(), "A.B");
        assert_eq!(
            endpoint_name("svc", &["a", "b", "c"]).unwrap_err(),
            "Incorrect number of arguments"
        );
    }

    #[test]
    fn dynamic_split_args_at_first_flag() {
        let (words, flags) = split_args(&args(&["call", "--name", "Alice", "--flag"]));
        assert_eq!(words, args(&["call"]));
        assert_eq!(flags, args(&["--name", "Alice", "--flag"]));
        let (words, flags) = split_args(&args(&["a", "b"]));
        assert_eq!(words, args(&["a", "b"]));
        assert!(flags.is_empty());
        let (words, flags) = split_args(&args(&["--name=x", "y"]));
        assert!(words.is_empty());
        assert_eq!(flags, args(&["--name=x", "y"]));
    }

    #[test]
    fn dynamic_flag_value_forms() {
        assert_eq!(
            to_json(&["--name=Alice"]).unwrap(),
            json!({"name": "Alice"})
        );
        assert_eq!(
            to_json(&["--name", "Alice"]).unwrap(),
            json!({"name": "Alice"})
        );
        assert_eq!(to_json(&["--name=a=b"]).unwrap(), json!({"name": "a=b"}));
        assert_eq!(to_json(&[]).unwrap(), json!({}));
    }

    #[test]
    fn dynamic_bare_flags_are_true() {
        assert_eq!(to_json(&["--flag"]).unwrap(), json!({"flag": true}));
        let v = to_json(&["--flag", "--name", "Bob"]).unwrap();
        assert_eq!(v, json!({"flag": true, "name": "Bob"}));
        assert_eq!(
            to_json(&["--flag", "false"]).unwrap(),
            json!({"flag": false})
        );
    }

    #[test]
    fn dynamic_nested_fields() {
        let want = json!({"options": {"domain": "x"}});
        assert_eq!(to_json(&["--options-domain", "x"]).unwrap(), want);
        assert_eq!(to_json(&["--options_domain", "x"]).unwrap(), want);
        assert_eq!(
            to_json(&["--page-size", "3"]).unwrap(),
            json!({"page_size": 3})
        );
        assert_eq!(
            to_json(&["--page_size=3"]).unwrap(),
            json!({"page_size": 3})
        );
        assert_eq!(to_json(&["--pageSize=3"]).unwrap(), json!({"page_size": 3}));
        let v = to_json(&["--options-page_size", "3", "--options-domain=x"]).unwrap();
        assert_eq!(v, json!({"options": {"page_size": 3, "domain": "x"}}));
        let v = to_json(&["--options-pageSize", "4"]).unwrap();
        assert_eq!(v, json!({"options": {"page_size": 4}}));
        decodes(&v);
    }

    #[test]
    fn dynamic_coerces_each_kind() {
        let v = to_json(&[
            "--name",
            "n",
            "--flag=true",
            "--count",
            "-9000000000",
            "--ratio",
            "0.5",
            "--size",
            "0.1",
            "--data",
            "raw",
            "--level",
            "HIGH",
            "--total",
            "18446744073709551615",
        ])
        .unwrap();
        assert_eq!(
            v,
            json!({"name": "n", "flag": true, "count": -9000000000i64, "ratio": 0.5,
                   "size": 0.1, "data": "cmF3", "level": "HIGH",
                   "total": 18446744073709551615u64})
        );
        assert_eq!(to_json(&["--level=1"]).unwrap(), json!({"level": "HIGH"}));
        let v = to_json(&["--options", r#"{"domain":"d"}"#, "--options-page-size=2"]).unwrap();
        assert_eq!(v, json!({"options": {"domain": "d", "page_size": 2}}));
        decodes(&v);
    }

    #[test]
    fn dynamic_repeated_fields() {
        let v = to_json(&["--tags", "a,b"]).unwrap();
        assert_eq!(v, json!({"tags": ["a", "b"]}));
        let v = to_json(&["--tags", "a", "--tags=b,c"]).unwrap();
        assert_eq!(v, json!({"tags": ["a", "b", "c"]}));
        let v = to_json(&["--ids", "1,2", "--ids", "3"]).unwrap();
        assert_eq!(v, json!({"ids": [1, 2, 3]}));
        decodes(&v);
        assert_eq!(
            to_json(&["--ids", "1,x"]).unwrap_err(),
            "Invalid value for --ids: 1,x is not a []int32"
        );
    }

    #[test]
    fn dynamic_map_from_json() {
        let v = to_json(&["--labels", r#"{"a":"1"}"#, "--labels={\"b\":\"2\"}"]).unwrap();
        assert_eq!(v, json!({"labels": {"a": "1", "b": "2"}}));
        decodes(&v);
        assert_eq!(
            to_json(&["--labels", "a=1"]).unwrap_err(),
            "Invalid value for --labels: a=1 is not a map[string]string"
        );
    }

    #[test]
    fn dynamic_errors() {
        assert_eq!(to_json(&["--nope", "1"]).unwrap_err(), "Unknown flag: nope");
        assert_eq!(
            to_json(&["--options-nope=1"]).unwrap_err(),
            "Unknown flag: options-nope"
        );
        assert_eq!(
            to_json(&["--name-x=1"]).unwrap_err(),
            "Unknown flag: name-x"
        );
        assert_eq!(
            to_json(&["--count", "abc"]).unwrap_err(),
            "Invalid value for --count: abc is not a int64"
        );
        assert_eq!(
            to_json(&["--options-page-size=1.5"]).unwrap_err(),
            "Invalid value for --options-page-size: 1.5 is not a int32"
        );
        assert_eq!(
            to_json(&["--count"]).unwrap_err(),
            "Invalid value for --count: true is not a int64"
        );
        assert_eq!(
            to_json(&["--flag", "yes"]).unwrap_err(),
            "Invalid value for --flag: yes is not a bool"
        );
        assert_eq!(
            to_json(&["--level", "MID"]).unwrap_err(),
            "Invalid value for --level: MID is not a Level"
        );
        assert_eq!(
            to_json(&["--ratio", "x"]).unwrap_err(),
            "Invalid value for --ratio: x is not a double"
        );
        assert_eq!(
            to_json(&["--options", "x"]).unwrap_err(),
            "Invalid value for --options: x is not a Options"
        );
        assert_eq!(
            to_json(&["--name=a", "stray"]).unwrap_err(),
            "Unexpected argument: stray"
        );
    }

    #[test]
    fn dynamic_service_help_text() {
        let ep = |n: &str| Endpoint {
            name: n.into(),
            ..Default::default()
        };
        let svc = Service {
            name: "helloworld".into(),
            endpoints: vec![ep("Helloworld.Stream"), ep("Helloworld.Call")],
            ..Default::default()
        };
        assert_eq!(
            service_help(&svc),
            "NAME:\n  micro helloworld\n\nVERSION:\n  latest\n\nUSAGE:\n  micro helloworld [command]\n\nCOMMANDS:\n  call\n  stream\n"
        );
        let svc = Service {
            name: "registry".into(),
            version: "v2".into(),
            endpoints: vec![ep("Registry.GetService")],
            ..Default::default()
        };
        assert_eq!(
            service_help(&svc),
            "NAME:\n  micro registry\n\nVERSION:\n  v2\n\nUSAGE:\n  micro registry [command]\n\nCOMMANDS:\n  getService\n"
        );
    }

    #[test]
    fn dynamic_endpoint_help_text() {
        let want = "\
NAME:
  micro helloworld call

USAGE:
  micro helloworld call [flags]

FLAGS:
  --name string
  --flag bool
  --count int64
  --ratio double
  --tags []string
  --labels map[string]string
  --level Level
  --options-domain string
  --options-page_size int32
  --page_size int32
  --size float
  --data bytes
  --ids []int32
  --total uint64
";
        assert_eq!(endpoint_help("helloworld", "call", &request()), want);
    }

    #[test]
    fn dynamic_endpoint_help_stops_on_recursion() {
        let want = "\
NAME:
  micro tree get

USAGE:
  micro tree get [flags]

FLAGS:
  --id string
  --child-id string
  --child-child-id string
  --child-child-child-id string
  --child-child-child-child-id string
  --child-child-child-child-child Node
";
        assert_eq!(endpoint_help("tree", "get", &node()), want);
    }
}
