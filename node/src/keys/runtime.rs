//! The runtime, values JSON: `runtime/<ns>/<name>/spec` (what should run:
//! owning node, source, build, the account that ran it) and
//! `runtime/<ns>/<name>/status` (the state its node reports), and
//! `runtime-source/<ns>/<name>` (the upload, bytes as sent: outside the
//! `runtime/` prefix, so that scans of specs never read uploads).

/// `runtime/`: every service of every namespace.
pub const ALL: &[u8] = b"runtime/";

/// `runtime/<ns>/`: every service the runtime runs in a namespace.
pub fn namespace(ns: &str) -> Vec<u8> {
    format!("runtime/{ns}/").into_bytes()
}

/// `runtime/<ns>/<name>/`: both records of a service.
pub fn service(ns: &str, name: &str) -> Vec<u8> {
    format!("runtime/{ns}/{name}/").into_bytes()
}

pub fn spec(ns: &str, name: &str) -> Vec<u8> {
    format!("runtime/{ns}/{name}/spec").into_bytes()
}

pub fn status(ns: &str, name: &str) -> Vec<u8> {
    format!("runtime/{ns}/{name}/status").into_bytes()
}

/// The uploaded source (gzipped tar) of the spec's build, so that any
/// node can build it.
pub fn source(ns: &str, name: &str) -> Vec<u8> {
    format!("runtime-source/{ns}/{name}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_prefix_holds_its_records_only() {
        assert!(spec("ns", "a").starts_with(&service("ns", "a")));
        assert!(status("ns", "a").starts_with(&service("ns", "a")));
        assert!(
            !source("ns", "a").starts_with(ALL),
            "scans of specs never read uploads"
        );
        assert_ne!(source("ns", "a"), source("ns", "ab"));
        assert!(!spec("ns", "ab").starts_with(&service("ns", "a")));
        assert!(service("ns", "a").starts_with(&namespace("ns")));
        assert!(!service("ns2", "a").starts_with(&namespace("ns")));
    }
}
