//! Calls described at run time: JSON in, JSON out, using a service's
//! protobuf descriptor (prost-reflect). Used by the gateway and the CLI's
//! dynamic commands.
//!
//! Must never: recurse into a JSON request deeper than [`MAX_DEPTH`]
//! (requests come from anyone who reaches the gateway; a deep one must be
//! a 400, not a stack overflow).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MethodDescriptor, SerializeOptions};

/// A request or reply that did not fit the schema.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Endpoint {endpoint} not found for service {service}")]
    NoEndpoint { service: String, endpoint: String },
    #[error("{0}")]
    BadRequest(String),
    #[error("cannot decode the reply: {0}")]
    BadReply(String),
}

/// How deep a JSON request may nest (objects and arrays).
pub const MAX_DEPTH: usize = 32;

/// How deep `v` nests: a scalar is 0, `{"a": 1}` is 1, `{"a": [{}]}` is 3.
/// Counted without recursion, so any value can be measured.
pub fn json_depth(v: &serde_json::Value) -> usize {
    use serde_json::Value;
    let mut deepest = 0;
    let mut todo: Vec<(&Value, usize)> = vec![(v, 0)];
    while let Some((v, depth)) = todo.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Object(m) => Box::new(m.values()),
            Value::Array(a) => Box::new(a.iter()),
            _ => continue,
        };
        deepest = deepest.max(depth + 1);
        todo.extend(children.map(|c| (c, depth + 1)));
    }
    deepest
}

/// Refuses a request that nests deeper than [`MAX_DEPTH`].
pub fn check_depth(v: &serde_json::Value) -> Result<(), Error> {
    let depth = json_depth(v);
    if depth > MAX_DEPTH {
        return Err(Error::BadRequest(format!(
            "the request nests {depth} levels deep; the limit is {MAX_DEPTH}"
        )));
    }
    Ok(())
}

/// Finds the method an endpoint name (`Helloworld.Call`) names: the method
/// `Call` of a service whose short name is `Helloworld` in `pool`.
pub fn method(
    pool: &DescriptorPool,
    service: &str,
    endpoint: &str,
) -> Result<MethodDescriptor, Error> {
    let missing = || Error::NoEndpoint {
        service: service.to_string(),
        endpoint: endpoint.to_string(),
    };
    let (svc, m) = endpoint.split_once('.').ok_or_else(missing)?;
    pool.services()
        .filter(|s| s.name() == svc)
        .find_map(|s| s.methods().find(|x| x.name() == m))
        .ok_or_else(missing)
}

/// The gRPC path of a method: `/package.Service/Method`.
pub fn path(m: &MethodDescriptor) -> String {
    format!("/{}/{}", m.parent_service().full_name(), m.name())
}

/// Turns string values into the numbers or booleans their fields want
/// (query strings and form bodies carry only text). Other values are left
/// alone, so a mismatch is still reported by [`encode_request`].
pub fn coerce_strings(json: &mut serde_json::Value, msg: &prost_reflect::MessageDescriptor) {
    coerce_within(json, msg, 0)
}

fn coerce_within(
    json: &mut serde_json::Value,
    msg: &prost_reflect::MessageDescriptor,
    depth: usize,
) {
    use prost_reflect::Kind;
    let serde_json::Value::Object(map) = json else {
        return;
    };
    if depth >= MAX_DEPTH {
        return; // deeper than any request may be: encode_request refuses it
    }
    for (key, value) in map.iter_mut() {
        let Some(field) = msg
            .get_field_by_name(key)
            .or_else(|| msg.get_field_by_json_name(key))
        else {
            continue;
        };
        let kind = field.kind();
        if let (Kind::Message(inner), false) = (&kind, field.is_map()) {
            if field.is_list() {
                if let serde_json::Value::Array(items) = value {
                    items
                        .iter_mut()
                        .for_each(|i| coerce_within(i, inner, depth + 1));
                }
            } else {
                coerce_within(value, inner, depth + 1);
            }
            continue;
        }
        let convert = |s: &str| -> Option<serde_json::Value> {
            match kind {
                Kind::Bool => s.parse::<bool>().ok().map(serde_json::Value::Bool),
                Kind::Int32
                | Kind::Sint32
                | Kind::Sfixed32
                | Kind::Int64
                | Kind::Sint64
                | Kind::Sfixed64 => s.parse::<i64>().ok().map(serde_json::Value::from),
                Kind::Uint32 | Kind::Fixed32 | Kind::Uint64 | Kind::Fixed64 => {
                    s.parse::<u64>().ok().map(serde_json::Value::from)
                }
                Kind::Float | Kind::Double => s
                    .parse::<f64>()
                    .ok()
                    .and_then(serde_json::Number::from_f64)
                    .map(serde_json::Value::Number),
                _ => None,
            }
        };
        match value {
            serde_json::Value::String(s) if field.is_list() => {
                // a comma list for a repeated field
                let items: Vec<serde_json::Value> = s
                    .split(',')
                    .map(|p| {
                        convert(p.trim())
                            .unwrap_or_else(|| serde_json::Value::String(p.trim().to_string()))
                    })
                    .collect();
                *value = serde_json::Value::Array(items);
            }
            serde_json::Value::String(s) => {
                if let Some(v) = convert(s) {
                    *value = v;
                }
            }
            _ => {}
        }
    }
}

/// Encodes a JSON request as the method's input message (refusing one
/// deeper than [`MAX_DEPTH`]).
pub fn encode_request(m: &MethodDescriptor, json: &serde_json::Value) -> Result<Bytes, Error> {
    check_depth(json)?;
    let msg = DynamicMessage::deserialize(m.input(), json)
        .map_err(|e| Error::BadRequest(e.to_string()))?;
    Ok(msg.encode_to_vec().into())
}

/// Decodes one reply message as JSON (field names in proto form, defaults
/// included so users see every field).
pub fn decode_reply(m: &MethodDescriptor, bytes: &[u8]) -> Result<serde_json::Value, Error> {
    let msg =
        DynamicMessage::decode(m.output(), bytes).map_err(|e| Error::BadReply(e.to_string()))?;
    let opts = SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(false);
    msg.serialize_with_options(serde_json::value::Serializer, &opts)
        .map_err(|e| Error::BadReply(e.to_string()))
}

/// Wraps one message in gRPC's length-prefixed framing.
pub fn frame(msg: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + msg.len());
    b.put_u8(0);
    b.put_u32(msg.len() as u32);
    b.put_slice(msg);
    b.freeze()
}

/// Splits a gRPC body into its (uncompressed) messages.
pub fn unframe(mut body: Bytes) -> Result<Vec<Bytes>, Error> {
    let mut out = Vec::new();
    while body.has_remaining() {
        if body.len() < 5 {
            return Err(Error::BadReply("truncated gRPC frame".into()));
        }
        let compressed = body.get_u8();
        let len = body.get_u32() as usize;
        if compressed != 0 {
            return Err(Error::BadReply(
                "compressed replies are not supported".into(),
            ));
        }
        if body.len() < len {
            return Err(Error::BadReply("truncated gRPC message".into()));
        }
        out.push(body.split_to(len));
    }
    Ok(out)
}

/// A tonic codec that passes message bytes through untouched, for calls
/// whose types are only known at run time.
#[derive(Debug, Clone, Default)]
pub struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), Self::Error> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Bytes>, Self::Error> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trips_through_a_core_method() {
        let pool = DescriptorPool::decode(micro_proto::FILE_DESCRIPTOR_SET).unwrap();
        let m = method(&pool, "store", "Store.Read").unwrap();
        assert_eq!(path(&m), "/store.Store/Read");
        let req = encode_request(
            &m,
            &serde_json::json!({"key": "k", "options": {"prefix": true}}),
        )
        .unwrap();
        let decoded = micro_proto::store::ReadRequest::decode(req).unwrap();
        assert_eq!(decoded.key, "k");
        assert!(decoded.options.unwrap().prefix);
        let reply = micro_proto::store::ReadResponse {
            records: vec![micro_proto::store::Record {
                key: "k".into(),
                ..Default::default()
            }],
        };
        let json = decode_reply(&m, &reply.encode_to_vec()).unwrap();
        assert_eq!(json["records"][0]["key"], "k");
        assert!(matches!(
            method(&pool, "store", "Store.Nope"),
            Err(Error::NoEndpoint { .. })
        ));
        let bad = encode_request(&m, &serde_json::json!({"key": 5}));
        assert!(matches!(bad, Err(Error::BadRequest(_))));
    }

    #[test]
    fn deep_requests_are_refused_before_transcoding() {
        let pool = DescriptorPool::decode(micro_proto::FILE_DESCRIPTOR_SET).unwrap();
        let m = method(&pool, "store", "Store.Read").unwrap();
        let mut deep = serde_json::json!("x");
        for _ in 0..MAX_DEPTH + 1 {
            deep = serde_json::json!({ "options": deep });
        }
        assert_eq!(json_depth(&deep), MAX_DEPTH + 1);
        coerce_strings(&mut deep, &m.input());
        match encode_request(&m, &deep) {
            Err(Error::BadRequest(e)) => assert!(e.contains("limit is 32"), "{e}"),
            other => panic!("expected a bad request, got {other:?}"),
        }
        assert_eq!(json_depth(&serde_json::json!(1)), 0);
        assert_eq!(json_depth(&serde_json::json!({"a": [{}]})), 3);
    }

    #[test]
    fn framing_round_trips() {
        let body = [frame(b"abc"), frame(b""), frame(b"de")].concat();
        let msgs = unframe(Bytes::from(body)).unwrap();
        assert_eq!(
            msgs,
            vec![Bytes::from("abc"), Bytes::new(), Bytes::from("de")]
        );
        assert!(unframe(Bytes::from_static(&[0, 0, 0, 0, 9, 1])).is_err());
    }
}
