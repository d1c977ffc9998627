//! Config through the CLI: merging, paths, secrets, namespaces.

use crate::harness::Server;

#[test]
fn set_merges_and_get_prints_by_type() {
    let s = Server::start();
    assert_eq!(
        s.micro(&["config", "set", "helloworld", r#"{"a":1}"#]).ok(),
        ""
    );
    s.micro(&["config", "set", "helloworld.b", "2"]).ok();
    assert_eq!(
        s.micro(&["config", "get", "helloworld"]).ok(),
        "{\"a\":1,\"b\":2}\n"
    );
    s.micro(&["config", "set", "helloworld", r#"{"c":{"d":true}}"#])
        .ok();
    assert_eq!(
        s.micro(&["config", "get", "helloworld"]).ok(),
        "{\"a\":1,\"b\":2,\"c\":{\"d\":true}}\n"
    );
    s.micro(&["config", "set", "helloworld.name", "plain text"])
        .ok();
    assert_eq!(
        s.micro(&["config", "get", "helloworld.name"]).ok(),
        "plain text\n",
        "strings print bare"
    );
    assert_eq!(s.micro(&["config", "get", "helloworld.c.d"]).ok(), "true\n");
    s.micro(&["config", "get", "helloworld.nope"])
        .fails_with("Not found");
    s.micro(&["config", "get", "nothing"])
        .fails_with("Not found");
    assert_eq!(s.micro(&["config", "del", "helloworld.c"]).ok(), "");
    assert_eq!(
        s.micro(&["config", "get", "helloworld"]).ok(),
        "{\"a\":1,\"b\":2,\"name\":\"plain text\"}\n"
    );
    s.micro(&["config", "del", "helloworld"]).ok();
    s.micro(&["config", "get", "helloworld"])
        .fails_with("Not found");
    s.micro(&["config", "set", "a..b", "1"])
        .fails_with("Invalid path 'a..b': empty segment");
}

#[test]
fn secrets_are_masked_decrypted_and_never_stored_in_clear() {
    let s = Server::start();
    s.login_admin(); // decrypted secrets are for accounts
    s.micro(&["config", "set", "helloworld", r#"{"a":1}"#]).ok();
    s.micro(&["config", "set", "--secret", "helloworld.key", "s3cretvalue"])
        .ok();
    s.micro(&["config", "set", "--secret", "helloworld.port", "8443"])
        .ok();
    s.micro(&[
        "config",
        "set",
        "--secret",
        "helloworld.nested",
        r#"{"flag":true}"#,
    ])
    .ok();
    assert_eq!(
        s.micro(&["config", "get", "helloworld.key"]).ok(),
        "[secret]\n"
    );
    assert_eq!(
        s.micro(&["config", "get", "--secret", "helloworld.key"])
            .ok(),
        "s3cretvalue\n"
    );
    assert_eq!(
        s.micro(&["config", "get", "--secret", "helloworld.port"])
            .ok(),
        "8443\n"
    );
    assert_eq!(
        s.micro(&["config", "get", "helloworld"]).ok(),
        "{\"a\":1,\"key\":\"[secret]\",\"nested\":{\"flag\":\"[secret]\"},\"port\":\"[secret]\"}\n"
    );
    assert_eq!(
        s.micro(&["config", "get", "--secret", "helloworld"]).ok(),
        "{\"a\":1,\"key\":\"s3cretvalue\",\"nested\":{\"flag\":true},\"port\":8443}\n",
        "decrypted secrets keep their JSON type"
    );
    assert_eq!(
        s.micro(&["config", "get", "--secret", "helloworld.nested.flag"])
            .ok(),
        "true\n"
    );
    // Nothing on disk holds the secret in clear.
    let mut found = Vec::new();
    visit(&s.data, &mut |path, bytes| {
        if bytes
            .windows(b"s3cretvalue".len())
            .any(|w| w == b"s3cretvalue")
        {
            found.push(path.to_path_buf());
        }
    });
    assert!(found.is_empty(), "secret in clear in {found:?}");
}

pub fn visit(dir: &std::path::Path, f: &mut dyn FnMut(&std::path::Path, &[u8])) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            visit(&path, f);
        } else if let Ok(bytes) = std::fs::read(&path) {
            f(&path, &bytes);
        }
    }
}

#[test]
fn a_configured_secret_key_survives_restarts_and_the_default_key_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let mut s = Server::start_with(&[("MICRO_CONFIG_SECRET_KEY", "correct horse battery staple")]);
    s.login_admin();
    s.micro(&["config", "set", "--secret", "db.password", "hunter2"])
        .ok();
    s.terminate();
    s.restart();
    assert_eq!(
        s.micro(&["config", "get", "--secret", "db.password"]).ok(),
        "hunter2\n"
    );
    assert!(
        !s.data.join("config-secret.key").exists(),
        "a configured key is not written to disk"
    );

    let d = Server::start();
    d.micro(&["config", "set", "--secret", "x", "y"]).ok();
    let mode = std::fs::metadata(d.data.join("config-secret.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn config_is_per_namespace() {
    let s = Server::start();
    s.micro(&["config", "set", "k", "one"]).ok();
    s.micro(&["--namespace", "two", "config", "set", "k", "two"])
        .ok();
    assert_eq!(s.micro(&["config", "get", "k"]).ok(), "one\n");
    assert_eq!(
        s.micro(&["--namespace", "two", "config", "get", "k"]).ok(),
        "two\n"
    );
}
