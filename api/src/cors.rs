//! Which web pages may call the gateway from a browser (CORS).
//!
//! By default none: no CORS headers at all, so a page on another origin
//! cannot read answers or send the developer's cookie to a local node.
//! Origins named in `--api-cors-origins` are echoed with credentials
//! allowed; `*` lets any other origin call without credentials.
//!
//! Must never: send `Access-Control-Allow-Credentials: true` to an origin
//! that was not named exactly.

use std::sync::Arc;

use axum::http::HeaderValue;
use tower_http::cors::{AllowCredentials, AllowHeaders, AllowMethods, AllowOrigin, CorsLayer};

/// The origins allowed to call the gateway from a browser.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cors {
    /// exact origins (`https://app.example.com`), allowed with credentials
    origins: Vec<String>,
    /// `*` was named: any origin, without credentials
    any: bool,
}

impl Cors {
    /// Checks a list of origins: each `*` or `scheme://host[:port]`.
    pub fn new<S: AsRef<str>>(list: &[S]) -> Result<Cors, String> {
        let mut cors = Cors::default();
        for entry in list {
            let origin = entry.as_ref().trim();
            if origin.is_empty() {
                continue;
            }
            if origin == "*" {
                cors.any = true;
                continue;
            }
            if !is_origin(origin) {
                return Err(format!(
                    "invalid CORS origin '{origin}': expected * or scheme://host[:port], e.g. https://app.example.com"
                ));
            }
            cors.origins.push(origin.to_ascii_lowercase());
        }
        Ok(cors)
    }

    /// No origin is allowed (the default).
    pub fn is_closed(&self) -> bool {
        !self.any && self.origins.is_empty()
    }

    /// The layer that answers preflights and adds the headers, or `None`
    /// when no origin is allowed.
    pub fn layer(&self) -> Option<CorsLayer> {
        if self.is_closed() {
            return None;
        }
        let named: Arc<Vec<String>> = Arc::new(self.origins.clone());
        let any = self.any;
        let is_named = |named: &[String], origin: &HeaderValue| {
            origin
                .to_str()
                .is_ok_and(|o| named.iter().any(|n| n.eq_ignore_ascii_case(o)))
        };
        let for_origin = named.clone();
        let for_credentials = named;
        Some(
            CorsLayer::new()
                .allow_origin(AllowOrigin::predicate(move |origin, _| {
                    any || is_named(&for_origin, origin)
                }))
                .allow_credentials(AllowCredentials::predicate(move |origin, _| {
                    is_named(&for_credentials, origin)
                }))
                .allow_methods(AllowMethods::mirror_request())
                .allow_headers(AllowHeaders::mirror_request()),
        )
    }
}

/// `scheme://host[:port]` with nothing after it.
fn is_origin(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once("://") else {
        return false;
    };
    let scheme_ok = !scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    let (host, port) = match rest.strip_prefix('[') {
        // an IPv6 literal
        Some(v6) => match v6.split_once(']') {
            Some((addr, tail)) => (addr, tail),
            None => return false,
        },
        None => match rest.split_once(':') {
            Some((h, p)) => (h, &rest[h.len()..][..p.len() + 1]),
            None => (rest, ""),
        },
    };
    let port_ok = port.is_empty()
        || port
            .strip_prefix(':')
            .is_some_and(|p| p.parse::<u16>().is_ok());
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-.:".contains(c));
    scheme_ok && port_ok && host_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_checked() {
        assert!(Cors::new::<&str>(&[]).unwrap().is_closed());
        assert!(Cors::new(&[""]).unwrap().is_closed());
        let c = Cors::new(&["https://App.example.com", "http://localhost:3000", "*"]).unwrap();
        assert_eq!(
            c.origins,
            vec!["https://app.example.com", "http://localhost:3000"]
        );
        assert!(c.any);
        assert!(Cors::new(&["http://[::1]:8080"]).is_ok());
        for bad in [
            "example.com",
            "https://",
            "https://a.example/path",
            "https://a.example:port",
            "https://a.example:99999",
            "*.example.com",
        ] {
            assert!(Cors::new(&[bad]).is_err(), "{bad}");
        }
    }
}
