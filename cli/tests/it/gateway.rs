//! The HTTP ports as an attacker meets them: bounded requests, errors with
//! the JSON body, slow clients dropped, CORS closed unless configured, and
//! config paths bounded.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::harness::{http_get, http_send, Server};

/// Sends `raw` and reads the whole answer (until the server closes or
/// `wait` passes), returning it and how long that took.
fn raw_http(addr: &str, raw: &[u8], wait: Duration) -> (String, Duration) {
    let mut s = TcpStream::connect(addr).expect("connect http");
    s.set_read_timeout(Some(wait)).unwrap();
    let start = Instant::now();
    s.write_all(raw).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    (String::from_utf8_lossy(&out).into_owned(), start.elapsed())
}

/// The head (lowercased) and body of an answer.
fn split(answer: &str) -> (String, String) {
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((answer, ""));
    (head.to_ascii_lowercase(), body.to_string())
}

/// Asserts `body` is the micro error JSON with `code`.
fn micro_error(body: &str, code: u16) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    assert_eq!(v["code"], code, "{body}");
    assert!(v["id"].is_string() && v["status"].is_string(), "{body}");
    assert!(
        v["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{body}"
    );
    v
}

#[test]
fn a_deep_dotted_query_is_a_400_and_the_node_lives() {
    let s = Server::start();
    // The query that killed a node: 28 KB of dotted keys.
    let query = format!("{}=1", vec!["a"; 14_000].join("."));
    assert!(query.len() > 28_000);
    let (status, body) = http_get(&s.api, &format!("/store/read?{query}"));
    assert_eq!(status, 400, "{body}");
    let v = micro_error(&body, 400);
    assert!(
        v["detail"].as_str().unwrap().contains("the limit is 32"),
        "{body}"
    );
    // And form bodies the same way.
    let (status, body) = http_send(
        &s.api,
        "POST",
        "/store/read",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        query.as_bytes(),
    );
    assert_eq!(status, 400, "{body}");
    // The node still answers.
    let (status, body) = http_get(&s.api, "/");
    assert_eq!(status, 200, "{body}");
    s.micro(&["store", "write", "k", "v"]).ok();
}

#[test]
fn a_deep_json_body_is_a_400() {
    let s = Server::start();
    let deep = format!("{}1{}", "{\"options\":".repeat(100), "}".repeat(100));
    let (status, body) = http_send(
        &s.api,
        "POST",
        "/store/read",
        &[("Content-Type", "application/json")],
        deep.as_bytes(),
    );
    assert_eq!(status, 400, "{body}");
    let v = micro_error(&body, 400);
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains("nests 100 levels deep; the limit is 32"),
        "{body}"
    );
    // past serde_json's own limit too
    let deeper = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let wrapped = format!("{{\"a\":{deeper}}}");
    let (status, body) = http_send(&s.api, "POST", "/store/read", &[], wrapped.as_bytes());
    assert_eq!(status, 400, "{body}");
    assert_eq!(http_get(&s.api, "/").0, 200);
}

#[test]
fn oversized_headers_and_malformed_requests_get_json_errors() {
    let s = Server::start();
    let big = "v".repeat(100 * 1024);
    let (status, body) = http_send(&s.api, "GET", "/store/read", &[("X-Big", &big)], b"");
    assert_eq!(status, 431, "{body}");
    micro_error(&body, 431);

    // Under the head limit but more than a service may be sent as metadata.
    let medium = "v".repeat(20 * 1024);
    let (status, body) = http_send(&s.api, "GET", "/store/read", &[("X-Big", &medium)], b"");
    assert_eq!(status, 431, "{body}");
    micro_error(&body, 431);

    let (answer, _) = raw_http(&s.api, b"BROKEN\r\n\r\n", Duration::from_secs(10));
    let (head, body) = split(&answer);
    assert!(head.starts_with("http/1.1 400"), "{answer}");
    assert!(head.contains("content-type: application/json"), "{answer}");
    micro_error(&body, 400);

    let long = format!("/store/read?key={}", "k".repeat(40 * 1024));
    let (status, body) = http_get(&s.api, &long);
    assert_eq!(status, 414, "{body}");
    micro_error(&body, 414);

    let (status, body) = http_send(&s.api, "PUT", "/", &[], b"");
    assert_eq!(status, 405, "{body}");
    micro_error(&body, 405);
    let (status, body) = http_get(&s.web, "/nope");
    assert_eq!(status, 404, "{body}");
    micro_error(&body, 404);
    assert_eq!(http_get(&s.api, "/").0, 200);
}

#[test]
fn a_client_that_never_finishes_its_request_is_disconnected() {
    let s = Server::start_with(&[("MICRO_API_HEADER_TIMEOUT", "1s")]);
    for addr in [&s.api, &s.web] {
        let (answer, took) = raw_http(
            addr,
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ",
            Duration::from_secs(10),
        );
        assert!(!answer.contains("200 OK"), "{answer}");
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(5),
            "disconnected after {took:?}"
        );
    }
    assert_eq!(http_get(&s.api, "/").0, 200);
}

#[test]
fn cors_is_closed_unless_the_origin_is_named() {
    let s = Server::start();
    let get = |srv: &Server, origin: &str| {
        let raw =
            format!("GET / HTTP/1.1\r\nHost: x\r\nOrigin: {origin}\r\nConnection: close\r\n\r\n");
        split(&raw_http(&srv.api, raw.as_bytes(), Duration::from_secs(10)).0).0
    };
    let preflight = |srv: &Server, origin: &str| {
        let raw = format!(
            "OPTIONS /store/read HTTP/1.1\r\nHost: x\r\nOrigin: {origin}\r\nAccess-Control-Request-Method: POST\r\nConnection: close\r\n\r\n"
        );
        split(&raw_http(&srv.api, raw.as_bytes(), Duration::from_secs(10)).0).0
    };
    for head in [
        get(&s, "https://evil.example"),
        preflight(&s, "https://evil.example"),
    ] {
        assert!(!head.contains("access-control-allow-origin"), "{head}");
        assert!(!head.contains("access-control-allow-credentials"), "{head}");
    }

    let s = Server::start_node(
        "127.0.0.1",
        &[],
        &[
            "--api-cors-origins",
            "https://app.example,http://localhost:3000",
        ],
    );
    for head in [
        get(&s, "https://app.example"),
        preflight(&s, "https://app.example"),
    ] {
        assert!(
            head.contains("access-control-allow-origin: https://app.example"),
            "{head}"
        );
        assert!(
            head.contains("access-control-allow-credentials: true"),
            "{head}"
        );
    }
    for head in [
        get(&s, "https://evil.example"),
        preflight(&s, "https://evil.example"),
    ] {
        assert!(!head.contains("access-control-allow-origin"), "{head}");
    }
}

#[test]
fn cors_refuses_a_bad_origin_at_start() {
    let home = crate::harness::Home::new();
    let data = home.path().join("data");
    let run = home.micro(&[
        "server",
        "--data-dir",
        data.to_str().unwrap(),
        "--api-address",
        "127.0.0.1:0",
        "--proxy-address",
        "127.0.0.1:0",
        "--web-address",
        "127.0.0.1:0",
        "--cluster-address",
        "127.0.0.1:0",
        "--api-cors-origins",
        "app.example/path",
    ]);
    run.fails_with(
        "micro server: --api-cors-origins: invalid CORS origin 'app.example/path': expected * or scheme://host[:port], e.g. https://app.example.com",
    );
}

#[test]
fn a_config_path_of_500_segments_is_refused_and_the_config_stays_readable() {
    let s = Server::start();
    s.micro(&["config", "set", "hw.greeting", "hello"]).ok();
    let long = vec!["a"; 500].join(".");
    s.micro(&["config", "set", &long, "1"])
        .fails_with("Invalid path: it has 500 segments; the limit is 32");
    let bytes = format!("a.{}", "b".repeat(1100));
    s.micro(&["config", "set", &bytes, "1"])
        .fails_with("Invalid path: it is 1102 bytes long; the limit is 1024");
    // A value that would nest too deep under its path is refused as well.
    let deep = format!("{}1{}", "{\"x\":".repeat(60), "}".repeat(60));
    s.micro(&["config", "set", &["a"; 10].join("."), &deep])
        .fails_with("The value would nest 70 levels deep in the config; the limit is 64");
    assert_eq!(s.micro(&["config", "get", "hw.greeting"]).ok(), "hello\n");
    s.micro(&["config", "get", "a"]).fails_with("Not found");
}
