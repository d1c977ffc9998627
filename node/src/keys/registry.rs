//! The registry:
//!
//! * `registry/<ns>/<service>/<version>/<node id>` one instance's
//!   registration (protobuf, see `services::registry::Stored`), expiring
//!   with its TTL
//! * `registry-owners/<ns>/<service>` the account that owns the name (JSON)
//! * `registry-schemas/<ns>/<sha256 hex>` endpoints or a descriptor, stored
//!   once per content (protobuf `Service` holding only them)

/// `registry/`: every registration.
pub const RECORDS: &[u8] = b"registry/";

/// `registry/<ns>/`: the registrations of a namespace.
pub fn namespace(ns: &str) -> Vec<u8> {
    format!("registry/{ns}/").into_bytes()
}

/// `registry/<ns>/<service>/`: every instance of a service.
pub fn service(ns: &str, name: &str) -> Vec<u8> {
    format!("registry/{ns}/{name}/").into_bytes()
}

/// `registry/<ns>/<service>/<version>/`: every instance of one version.
pub fn version(ns: &str, name: &str, version: &str) -> Vec<u8> {
    format!("registry/{ns}/{name}/{version}/").into_bytes()
}

/// One instance's registration.
pub fn record(ns: &str, name: &str, version: &str, node: &str) -> Vec<u8> {
    format!("registry/{ns}/{name}/{version}/{node}").into_bytes()
}

/// The parts of a registration's key.
#[derive(Debug, PartialEq, Eq)]
pub struct RecordKey<'a> {
    pub namespace: &'a str,
    pub service: &'a str,
    pub version: &'a str,
    pub node: &'a str,
}

/// Parses a registration's key (`None` for any other key).
pub fn parse(key: &[u8]) -> Option<RecordKey<'_>> {
    let text = std::str::from_utf8(key.strip_prefix(RECORDS)?).ok()?;
    let mut parts = text.splitn(4, '/');
    Some(RecordKey {
        namespace: parts.next()?,
        service: parts.next()?,
        version: parts.next()?,
        node: parts.next()?,
    })
}

/// Who owns the name `name` in `ns`.
pub fn owner(ns: &str, name: &str) -> Vec<u8> {
    format!("registry-owners/{ns}/{name}").into_bytes()
}

/// The stored schema whose SHA-256 is `hash`.
pub fn schema(ns: &str, hash: &[u8]) -> Vec<u8> {
    let mut key = format!("registry-schemas/{ns}/").into_bytes();
    for b in hash {
        key.extend_from_slice(format!("{b:02x}").as_bytes());
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse_back_and_prefixes_hold_only_their_own() {
        let key = record("team", "greeter", "1.0", "g-1");
        assert_eq!(
            parse(&key),
            Some(RecordKey {
                namespace: "team",
                service: "greeter",
                version: "1.0",
                node: "g-1"
            })
        );
        assert!(key.starts_with(&version("team", "greeter", "1.0")));
        assert!(key.starts_with(&service("team", "greeter")));
        assert!(key.starts_with(&namespace("team")));
        assert!(!record("team", "greeter2", "1", "n").starts_with(&service("team", "greeter")));
        assert!(!record("team2", "greeter", "1", "n").starts_with(&namespace("team")));
        assert_eq!(parse(&owner("team", "greeter")), None);
        assert_eq!(parse(&schema("team", &[0xab])), None);
        assert_eq!(schema("ns", &[0x0f, 0xa0]), b"registry-schemas/ns/0fa0");
    }
}
