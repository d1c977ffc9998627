//! TLS for clients: `micro server --tls-cert/--tls-key` serves the gRPC
//! endpoint over TLS, and `micro env add NAME https://… --ca FILE` reaches
//! it; plaintext and untrusted certificates fail with one clear line.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

use crate::harness::{Home, Server, MICRO};

/// A CA: its certificate (PEM) and what signs with it.
struct TestCa {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(name: &str) -> TestCa {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).unwrap();
    TestCa {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

/// A server certificate for 127.0.0.1 and localhost signed by `ca`, written
/// to `dir` as cert.pem and key.pem (0600).
fn server_cert(ca: &TestCa, dir: &Path) -> (PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    (cert_path, key_path)
}

/// `GET path` over HTTPS/1.1 to `addr`, trusting only `ca_pem`, as
/// `localhost`: the status line and body, or why the handshake failed.
fn https_get(addr: &str, ca_pem: &str, path: &str) -> Result<String, String> {
    use rustls_pki_types::pem::PemObject;
    use std::io::{Read, Write};
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(cfg), name).unwrap();
    let tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let request = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n");
    tls.write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut reply = Vec::new();
    match tls.read_to_end(&mut reply) {
        Ok(_) => {}
        // the server closed without close_notify after a complete reply
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !reply.is_empty() => {}
        Err(e) => return Err(e.to_string()),
    }
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

fn write(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn an_https_env_reaches_a_tls_node_and_nothing_else_does() {
    let pki = tempfile::tempdir().unwrap();
    let ours = ca("our CA");
    let theirs = ca("another CA");
    let (cert, key) = server_cert(&ours, pki.path());
    let ca_file = write(pki.path(), "ca.pem", &ours.pem);
    let other_ca = write(pki.path(), "other-ca.pem", &theirs.pem);
    let s = Server::start_node(
        "127.0.0.1",
        &[],
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    assert!(s.log().contains("(TLS)"), "{}", s.log());
    let https = format!("https://{}", s.proxy);

    s.micro(&["env", "add", "sec", &https, "--ca", &ca_file])
        .ok();
    let listing = s.micro(&["env"]).ok().to_string();
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("  sec ") && l.ends_with(&https)),
        "{listing}"
    );
    // The API and the dashboard serve TLS with the same certificate, and
    // nothing in plaintext.
    for port in [&s.api, &s.web] {
        let reply = https_get(port, &ours.pem, "/").unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        let wrong = https_get(port, &theirs.pem, "/").unwrap_err();
        assert!(wrong.contains("UnknownIssuer"), "{wrong}");
        let plain = {
            use std::io::{Read, Write};
            let mut tcp = std::net::TcpStream::connect(port.as_str()).unwrap();
            tcp.set_read_timeout(Some(std::time::Duration::from_secs(15)))
                .unwrap();
            tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
            let mut got = Vec::new();
            let _ = tcp.read_to_end(&mut got);
            String::from_utf8_lossy(&got).into_owned()
        };
        assert!(
            !plain.contains("version"),
            "plaintext HTTP on a TLS port: {plain}"
        );
    }
    assert!(https_get(&s.api, &ours.pem, "/")
        .unwrap()
        .contains(r#"{"version":"#));
    // The CA is kept in the config, not as a path: the file may go.
    std::fs::remove_file(&ca_file).unwrap();
    assert_eq!(
        s.micro(&[
            "-e",
            "sec",
            "login",
            "--username",
            "admin",
            "--password",
            "micro"
        ])
        .ok(),
        "Successfully logged in.\n"
    );
    s.micro(&["-e", "sec", "store", "write", "k", "v"]).ok();
    assert_eq!(s.micro(&["-e", "sec", "store", "read", "k"]).ok(), "v\n");
    // Dynamic calls go through the same connection.
    let reply = s
        .micro(&[
            "-e",
            "sec",
            "call",
            "registry",
            "Registry.GetService",
            r#"{"service":"store"}"#,
        ])
        .ok()
        .to_string();
    assert!(reply.contains("\"nodes\""), "{reply}");
    // By host name too: the certificate names localhost.
    let port = s.proxy.rsplit_once(':').unwrap().1;
    s.micro(&[
        "env",
        "add",
        "byname",
        &format!("https://localhost:{port}"),
        "--ca",
        &write(pki.path(), "ca-again.pem", &ours.pem),
    ])
    .ok();
    assert_eq!(s.micro(&["-e", "byname", "store", "read", "k"]).ok(), "v\n");

    // A server's own certificate given as the CA is trusted byte for byte.
    s.micro(&[
        "env",
        "add",
        "pinned",
        &https,
        "--ca",
        cert.to_str().unwrap(),
    ])
    .ok();
    assert_eq!(s.micro(&["-e", "pinned", "store", "read", "k"]).ok(), "v\n");
    // Services the node runs reach it over TLS, trusting its certificate.
    let work = tempfile::tempdir().unwrap();
    let svc = work.path().join("echoer");
    std::fs::create_dir_all(&svc).unwrap();
    std::fs::write(
        svc.join("micro.toml"),
        "run = \"echo proxy=$MICRO_PROXY_ADDRESS ca=$MICRO_PROXY_CA; exec sleep 600\"\n",
    )
    .unwrap();
    s.micro(&["-e", "sec", "run", svc.to_str().unwrap()]).ok();
    let expected = format!("proxy={https} ca={}", cert.display());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let logs = s.micro(&["-e", "sec", "logs", "echoer"]);
        if logs.stdout.contains(&expected) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{expected} never logged: {logs:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    s.micro(&["-e", "sec", "kill", "echoer"]).ok();

    // The harness's plaintext environment knocks on the TLS port.
    s.micro(&["-e", "test", "store", "read", "k"]).fails_with(
        "This micro server serves TLS on this port: use an https:// address (micro env add NAME https://HOST:PORT --ca FILE)",
    );
    // A CA that did not sign the server's certificate.
    s.micro(&["env", "add", "other", &https, "--ca", &other_ca])
        .ok();
    s.micro(&["-e", "other", "store", "read", "k"]).fails_with(&format!(
        "Failed to connect to micro server at {https}: the server's certificate is not trusted (it is not signed by a trusted CA)"
    ));
    // An https environment against a plaintext port.
    let plain = Server::start();
    s.micro(&[
        "env",
        "add",
        "notls",
        &format!("https://{}", plain.proxy),
        "--ca",
        &other_ca,
    ])
    .ok();
    let run = s.micro(&["-e", "notls", "store", "read", "k"]);
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.starts_with(&format!(
            "Failed to connect to micro server at https://{}: the TLS handshake failed",
            plain.proxy
        )) && run
            .stderr
            .ends_with("is the server serving TLS on this port?\n")
            && run.stderr.lines().count() == 1,
        "{run:?}"
    );
}

#[test]
fn env_add_checks_the_ca_and_the_scheme() {
    let home = Home::new();
    let dir = home.path().to_path_buf();
    let junk = write(&dir, "junk.pem", "not a certificate");
    home.micro(&["env", "add", "a", "https://10.0.0.1", "--ca", &junk])
        .fails_with(&format!(
            "The CA file {junk} holds no valid PEM certificate"
        ));
    let missing = dir.join("missing.pem");
    let run = home.micro(&[
        "env",
        "add",
        "a",
        "https://10.0.0.1",
        "--ca",
        missing.to_str().unwrap(),
    ]);
    assert_eq!(
        run.stderr,
        format!(
            "Cannot read the CA file {}: No such file or directory (os error 2)\n",
            missing.display()
        )
    );
    let good = write(&dir, "ca.pem", &ca("x").pem);
    home.micro(&["env", "add", "a", "10.0.0.1", "--ca", &good])
        .fails_with("A CA certificate needs an https:// address");
    home.micro(&["env", "add", "a", "https://10.0.0.1", "--ca", &good])
        .ok();
    assert!(home
        .micro(&["env"])
        .ok()
        .contains("  a      https://10.0.0.1:8081\n"));
}

/// `micro server` with TLS files, expected to stop at once with one line.
fn server_fails(home: &Home, tls: &[&str]) -> String {
    let data = home.path().join("data");
    let mut args = vec!["server", "--data-dir", data.to_str().unwrap()];
    for flag in [
        "--api-address",
        "--proxy-address",
        "--web-address",
        "--cluster-address",
    ] {
        args.extend([flag, "127.0.0.1:0"]);
    }
    args.extend(tls);
    let run = home.micro(&args);
    assert_ne!(run.code, 0, "{run:?}");
    run.stderr.lines().last().unwrap_or_default().to_string()
}

#[test]
fn a_server_refuses_bad_tls_files_with_one_line() {
    let home = Home::new();
    let dir = home.path().to_path_buf();
    let (cert, key) = server_cert(&ca("c"), &dir);
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let junk = write(&dir, "junk.pem", "nope");
    assert_eq!(
        server_fails(&home, &["--tls-cert", cert]),
        "Missing argument: --tls-key <FILE>. Please refer to 'micro server --help'"
    );
    assert_eq!(
        server_fails(&home, &["--tls-cert", &junk, "--tls-key", key]),
        format!("micro server: the TLS certificate {junk} holds no valid PEM certificate")
    );
    assert_eq!(
        server_fails(&home, &["--tls-cert", cert, "--tls-key", &junk]),
        format!("micro server: the TLS key {junk} holds no valid PEM private key")
    );
    let missing = dir.join("nokey.pem");
    assert_eq!(
        server_fails(
            &home,
            &["--tls-cert", cert, "--tls-key", missing.to_str().unwrap()]
        ),
        format!(
            "micro server: cannot read the TLS key {}: No such file or directory (os error 2)",
            missing.display()
        )
    );
    // MICRO_TLS_CERT / MICRO_TLS_KEY work like the flags.
    let mut cmd = std::process::Command::new(MICRO);
    cmd.args(["server", "--data-dir"])
        .arg(dir.join("data2"))
        .args([
            "--proxy-address",
            "127.0.0.1:0",
            "--api-address",
            "127.0.0.1:0",
        ])
        .args([
            "--web-address",
            "127.0.0.1:0",
            "--cluster-address",
            "127.0.0.1:0",
        ])
        .env("HOME", &dir)
        .env("MICRO_TLS_CERT", &junk)
        .env("MICRO_TLS_KEY", key);
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.ends_with(&format!(
            "micro server: the TLS certificate {junk} holds no valid PEM certificate\n"
        )),
        "{stderr}"
    );
}
