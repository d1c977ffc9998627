//! The caller's access token in HTTP/2 or HTTP/1 headers, read the same way
//! by the gateway and the node's gRPC endpoint.

use tonic::codegen::http::{header, HeaderMap};

/// `Authorization: Bearer …`, or else the `micro-token` cookie (browsers).
pub fn from_headers(headers: &HeaderMap) -> Option<&str> {
    if let Some(t) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        return Some(t.trim());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix("micro-token="))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_the_header_or_the_cookie() {
        let mut h = HeaderMap::new();
        assert_eq!(from_headers(&h), None);
        h.insert(header::COOKIE, "a=b; micro-token=xyz".parse().unwrap());
        assert_eq!(from_headers(&h), Some("xyz"));
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(from_headers(&h), Some("abc"));
    }
}
