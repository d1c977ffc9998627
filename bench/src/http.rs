//! The one HTTP/JSON client `compare` and `disk` drive both Micro and etcd
//! with: hyper over HTTP/1.1, one keep-alive connection per simulated
//! client, JSON bodies, base64 where the API wants bytes. Micro is called
//! through its gateway (`POST /store/write`, `/store/read`, with the CLI
//! login's bearer token), etcd through its v3 JSON gateway (`POST
//! /v3/kv/put`, `/v3/kv/range`, linearizable by default).
//!
//! Must never: give one system a cheaper request path than the other (same
//! client, same connection handling, same success check: a 200 answer read
//! to its end), or hold a lock across an await.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;

/// One client connection (it opens one, and reopens it if the server
/// closes it).
#[derive(Clone)]
pub struct Conn {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Conn {
    pub fn new() -> Conn {
        let client = Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_max_idle_per_host(1)
            .build_http();
        Conn { client }
    }

    /// POSTs `body` (JSON) to `url`; the status and the whole answer body.
    pub async fn post(
        &self,
        url: &str,
        bearer: Option<&str>,
        body: String,
        timeout: Duration,
    ) -> Result<(u16, Bytes), String> {
        let mut req = hyper::Request::post(url).header("content-type", "application/json");
        if let Some(token) = bearer {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("bad request to {url}: {e}"))?;
        let call = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| format!("{url}: {e}"))?;
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("{url}: reading the answer: {e}"))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| format!("{url}: no answer within {} s", timeout.as_secs()))?
    }
}

/// Which API a target speaks.
#[derive(Clone)]
pub enum Api {
    /// Micro's gateway, with a bearer token that may be refreshed while
    /// the run goes on
    Micro { token: Arc<RwLock<String>> },
    /// etcd's v3 JSON gateway
    Etcd,
}

/// One node's HTTP endpoint and the API it speaks.
#[derive(Clone)]
pub struct Target {
    pub api: Api,
    /// `http://host:port`
    pub base: String,
}

/// A request: the URL and its JSON body.
pub struct Req {
    pub url: String,
    pub body: String,
    /// an etcd range: its 200 answer must hold the key (Micro answers a
    /// missing key with 404)
    pub must_find: bool,
}

impl Target {
    pub fn write(&self, key: &str, value: &[u8]) -> Req {
        match self.api {
            Api::Micro { .. } => Req {
                url: format!("{}/store/write", self.base),
                body: serde_json::json!({"record": {"key": key, "value": b64(value)}}).to_string(),
                must_find: false,
            },
            Api::Etcd => Req {
                url: format!("{}/v3/kv/put", self.base),
                body: serde_json::json!({"key": b64(key.as_bytes()), "value": b64(value)})
                    .to_string(),
                must_find: false,
            },
        }
    }

    pub fn read(&self, key: &str) -> Req {
        match self.api {
            Api::Micro { .. } => Req {
                url: format!("{}/store/read", self.base),
                body: serde_json::json!({ "key": key }).to_string(),
                must_find: false,
            },
            Api::Etcd => Req {
                url: format!("{}/v3/kv/range", self.base),
                body: serde_json::json!({ "key": b64(key.as_bytes()) }).to_string(),
                must_find: true,
            },
        }
    }

    /// Sends `req`; `Ok` when the answer is a 200, else why not.
    pub async fn call(&self, conn: &Conn, req: Req, timeout: Duration) -> Result<(), String> {
        let token = match &self.api {
            // Cloned out: the lock is never held across the call.
            Api::Micro { token } => Some(token.read().map(|t| t.clone()).unwrap_or_default()),
            Api::Etcd => None,
        };
        let req_must_find = req.must_find;
        let (status, body) = conn
            .post(&req.url, token.as_deref(), req.body, timeout)
            .await?;
        if status == 200 && req_must_find && !contains(&body, b"\"kvs\"") {
            Err("200 without the key".into())
        } else if status == 200 {
            Ok(())
        } else {
            let text = String::from_utf8_lossy(&body);
            Err(format!("{status} {}", text.trim()))
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Standard base64 with padding (what proto3 JSON and etcd's gateway take
/// for bytes).
pub fn b64(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(ABC[((n >> shift) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_as_rfc_4648_gives_it() {
        assert_eq!(b64(b""), "");
        assert_eq!(b64(b"f"), "Zg==");
        assert_eq!(b64(b"fo"), "Zm8=");
        assert_eq!(b64(b"foo"), "Zm9v");
        assert_eq!(b64(b"foobar"), "Zm9vYmFy");
        assert_eq!(b64(&[0xfb, 0xff]), "+/8=");
    }

    #[test]
    fn both_apis_get_the_same_key_and_value_in_their_own_shape() {
        let micro = Target {
            api: Api::Micro {
                token: Arc::new(RwLock::new("t".into())),
            },
            base: "http://127.0.0.1:1".into(),
        };
        let etcd = Target {
            api: Api::Etcd,
            base: "http://127.0.0.2:2".into(),
        };
        let w = micro.write("k/1", b"1");
        assert_eq!(w.url, "http://127.0.0.1:1/store/write");
        assert_eq!(w.body, r#"{"record":{"key":"k/1","value":"MQ=="}}"#);
        let w = etcd.write("k/1", b"1");
        assert_eq!(w.url, "http://127.0.0.2:2/v3/kv/put");
        assert_eq!(w.body, r#"{"key":"ay8x","value":"MQ=="}"#);
        assert_eq!(micro.read("k/1").body, r#"{"key":"k/1"}"#);
        assert_eq!(etcd.read("k/1").url, "http://127.0.0.2:2/v3/kv/range");
        assert_eq!(etcd.read("k/1").body, r#"{"key":"ay8x"}"#);
    }
}
