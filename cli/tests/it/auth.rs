//! Auth end to end: the lockdown scenario, tokens (expiry, refresh,
//! tampering, another cluster's, revocation), namespaces, password change,
//! service identities, and no secret in clear on disk.

use std::time::Duration;

use micro_proto::store::{ReadRequest, Record, WriteRequest};

use crate::harness::{http_get, http_send, wait_for_nodes, Instance, Server};

#[test]
fn the_lockdown_scenario() {
    let s = Server::start();
    let _hw = Instance::start(&s, "a");
    wait_for_nodes(&s, "helloworld", 1);
    s.login("admin", "micro");
    assert_eq!(s.micro(&["user"]).ok(), "admin\n");
    let token = s.micro(&["user", "token"]).ok().trim().to_string();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    assert_eq!(
        s.micro(&["auth", "list", "accounts"]).ok(),
        "ID     Name   Scopes  Metadata\nadmin  admin  admin   n/a\n"
    );
    assert_eq!(
        s.micro(&["auth", "list", "rules"]).ok(),
        "ID       Scope     Access   Resource  Priority\ndefault  <public>  GRANTED  *:*:*     0\n"
    );
    let created = s.micro(&["auth", "create", "account", "--scopes=admin", "jane"]);
    let json = created
        .ok()
        .strip_prefix("Account created: ")
        .expect("Account created: {json}")
        .trim();
    let jane: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(jane["id"], "jane");
    assert_eq!(jane["issuer"], "micro");
    assert_eq!(jane["scopes"], serde_json::json!(["admin"]));
    let secret = jane["secret"].as_str().unwrap().to_string();
    assert!(
        secret.len() >= 16 && secret.chars().all(|c| c.is_ascii_alphanumeric()),
        "a generated secret a shell takes as a value: {secret}"
    );

    // Before the lockdown anyone may call; after it, only accounts.
    assert_eq!(http_get(&s.api, "/helloworld/Call?name=Alice").0, 200);
    s.lock_down();
    assert_eq!(
        s.micro(&["auth", "list", "rules"]).ok(),
        "ID            Scope     Access   Resource        Priority\nauth-public   <public>  GRANTED  service:auth:*  0\nonlyloggedin  *         GRANTED  *:*:*           0\n"
    );
    let (status, body) = http_get(&s.api, "/helloworld/Call?name=Alice");
    assert_eq!(status, 401);
    assert_eq!(
        body,
        r#"{"id":"helloworld","code":401,"detail":"Unauthorized call made to helloworld:Helloworld.Call","status":"Unauthorized"}"#
    );
    let token = s.micro(&["user", "token"]).ok().trim().to_string();
    let bearer = format!("Bearer {token}");
    let (status, body) = http_send(
        &s.api,
        "GET",
        "/helloworld/Call?name=Alice",
        &[("Authorization", &bearer)],
        b"",
    );
    assert_eq!((status, body.as_str()), (200, r#"{"msg":"Hello Alice"}"#));
    let cookie = format!("micro-token={token}");
    let (status, _) = http_send(
        &s.api,
        "GET",
        "/helloworld/Call?name=Alice",
        &[("Cookie", &cookie)],
        b"",
    );
    assert_eq!(status, 200, "the micro-token cookie authenticates too");
    assert_eq!(
        s.micro(&["helloworld", "call", "--name=Bob"]).ok(),
        "{\n  \"msg\": \"Hello Bob\"\n}\n"
    );

    assert_eq!(s.micro(&["logout"]).ok(), "");
    s.micro(&["auth", "list", "rules"])
        .fails_with("Not authorized to perform this request");
    s.micro(&["store", "list"])
        .fails_with("Not authorized to perform this request");
    // Logged out, the registry shows no service: a service's name reads
    // as a typo would, with the hint to log in.
    s.micro(&["helloworld", "call", "--name=Bob"])
        .fails_with("Unrecognized micro command: helloworld. Please refer to 'micro --help' (not logged in: services show after micro login)");
    s.micro(&["user"]).fails_with("You are not logged in");

    s.login("jane", &secret);
    assert_eq!(s.micro(&["user"]).ok(), "jane\n");
    assert!(s
        .micro(&["auth", "list", "rules"])
        .ok()
        .contains("onlyloggedin"));
    s.micro(&["login", "--username", "jane", "--password", "wrong"])
        .fails_with("Login failed: invalid username or password");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_expire_refresh_and_cannot_be_forged() {
    let s = Server::start_with(&[("MICRO_AUTH_TOKEN_TTL", "2s")]);
    s.login("admin", "micro");
    s.lock_down();
    let token = s.micro(&["user", "token"]).ok().trim().to_string();
    let client = s.client("micro").await;
    client.set_token(Some(&token));
    let read = || ReadRequest {
        key: "k".into(),
        options: None,
    };
    let write = WriteRequest {
        record: Some(Record {
            key: "k".into(),
            value: b"v".to_vec(),
            ..Default::default()
        }),
        options: None,
    };
    client
        .store()
        .write(write)
        .await
        .expect("a fresh token works");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let err = client.store().read(read()).await.unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::Unauthenticated,
        "an expired token is refused"
    );
    // The CLI refreshes a token that is about to expire.
    assert_eq!(s.micro(&["store", "read", "k"]).ok(), "v\n");

    // A tampered token: flip a character of the signature.
    let fresh = s.micro(&["user", "token"]).ok().trim().to_string();
    let mut forged: Vec<char> = fresh.chars().collect();
    let last = forged.len() - 2;
    forged[last] = if forged[last] == 'A' { 'B' } else { 'A' };
    let forged: String = forged.into_iter().collect();
    let (status, _) = http_send(
        &s.api,
        "POST",
        "/store/Store/Read",
        &[("Authorization", &format!("Bearer {forged}"))],
        br#"{"key":"k"}"#,
    );
    assert_eq!(status, 401);

    // A token signed by another cluster.
    let other = Server::start();
    other.login("admin", "micro");
    let foreign = other.micro(&["user", "token"]).ok().trim().to_string();
    let (status, _) = http_send(
        &s.api,
        "POST",
        "/store/Store/Read",
        &[("Authorization", &format!("Bearer {foreign}"))],
        br#"{"key":"k"}"#,
    );
    assert_eq!(status, 401);
    // (A token of its own is good; taken now, as they live 2 s here.)
    let fresh = s.micro(&["user", "token"]).ok().trim().to_string();
    let (status, body) = http_send(
        &s.api,
        "POST",
        "/store/Store/Read",
        &[("Authorization", &format!("Bearer {fresh}"))],
        br#"{"key":"k"}"#,
    );
    assert_eq!(status, 200, "{body}");

    // A revoked refresh token is refused.
    let tokens = std::fs::read_to_string(s.home.path().join(".micro/tokens")).unwrap();
    let refresh = tokens
        .lines()
        .next()
        .unwrap()
        .split('\t')
        .nth(4)
        .unwrap()
        .to_string();
    assert_eq!(s.micro(&["logout"]).ok(), "");
    let anon = s.client("micro").await;
    let err = anon
        .auth()
        .token(micro_proto::auth::TokenRequest {
            refresh_token: refresh,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_act_only_in_their_namespace() {
    let s = Server::start();
    s.login("admin", "micro");
    let created = s.micro(&[
        "--namespace",
        "team",
        "auth",
        "create",
        "account",
        "bob",
        "--secret",
        "bobpass",
    ]);
    assert!(created.ok().contains(r#""issuer":"team""#), "{created:?}");
    s.micro(&["store", "write", "k", "admin-value"]).ok();
    s.micro(&["config", "set", "app.colour", "blue"]).ok();

    assert_eq!(
        s.micro(&[
            "--namespace",
            "team",
            "login",
            "--username",
            "bob",
            "--password",
            "bobpass"
        ])
        .ok(),
        "Successfully logged in.\n"
    );
    assert_eq!(s.micro(&["--namespace", "team", "user"]).ok(), "bob\n");
    s.micro(&["--namespace", "team", "store", "write", "k", "bob-value"])
        .ok();
    assert_eq!(
        s.micro(&["--namespace", "team", "store", "read", "k"]).ok(),
        "bob-value\n"
    );
    s.micro(&["--namespace", "team", "config", "get", "app.colour"])
        .fails_with("Not found");
    assert_eq!(
        s.micro(&["store", "read", "k"]).ok(),
        "admin-value\n",
        "each namespace its own data"
    );

    // bob's token in the micro namespace is refused, for store, config and registry.
    let bob = s
        .micro(&["--namespace", "team", "user", "token"])
        .ok()
        .trim()
        .to_string();
    let client = s.client("micro").await;
    client.set_token(Some(&bob));
    let err = client
        .store()
        .read(ReadRequest {
            key: "k".into(),
            options: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        err.message().contains("cannot act in namespace micro"),
        "{}",
        err.message()
    );
    let err = client
        .config()
        .get(micro_proto::config::GetRequest {
            path: "app".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    let err = client
        .registry()
        .list_services(micro_proto::registry::ListRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    let (status, body) = http_send(
        &s.api,
        "POST",
        "/store/Store/Read",
        &[
            ("Authorization", &format!("Bearer {bob}")),
            ("Micro-Namespace", "micro"),
        ],
        br#"{"key":"k"}"#,
    );
    assert_eq!(status, 403, "{body}");
    // bob is no admin: no managing accounts
    s.micro(&["--namespace", "team", "auth", "list", "accounts"])
        .fails_with("Account bob is not an admin of namespace team");
}

#[test]
fn a_changed_password_replaces_the_old_one() {
    let s = Server::start();
    s.login("admin", "micro");
    assert_eq!(
        s.micro(&[
            "user",
            "set",
            "password",
            "--old-password",
            "micro",
            "--new-password",
            "-n3w-pass"
        ])
        .ok(),
        ""
    );
    s.micro(&["logout"]).ok();
    s.micro(&["login", "--username", "admin", "--password", "micro"])
        .fails_with("Login failed: invalid username or password");
    // A password may start with a dash: it is a value, not a flag.
    s.login("admin", "-n3w-pass");
    s.micro(&[
        "user",
        "set",
        "password",
        "--old-password",
        "wrong",
        "--new-password",
        "x",
    ])
    .fails_with("The old secret is wrong");
}

#[test]
fn the_first_admin_password_can_be_set_and_the_default_warns() {
    let s = Server::start_with(&[("MICRO_AUTH_ADMIN_PASSWORD", "s3t-at-start")]);
    s.micro(&["login", "--username", "admin", "--password", "micro"])
        .fails_with("Login failed: invalid username or password");
    s.login("admin", "s3t-at-start");
    let d = Server::start();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !d.log().contains("default password") {
        assert!(
            std::time::Instant::now() < deadline,
            "no warning: {}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !s.log().contains("default password"),
        "no warning with a chosen password"
    );
}

#[test]
fn the_first_admin_password_can_come_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("admin-password");
    // Editors and `echo` leave a newline: it is not part of the password.
    std::fs::write(&file, "fr0m-a-file\n").unwrap();
    let s = Server::start_node(
        "127.0.0.1",
        &[],
        &["--auth-admin-password-file", file.to_str().unwrap()],
    );
    s.micro(&["login", "--username", "admin", "--password", "micro"])
        .fails_with("Login failed: invalid username or password");
    s.micro(&[
        "login",
        "--username",
        "admin",
        "--password",
        "fr0m-a-file\n",
    ])
    .fails_with("Login failed: invalid username or password");
    s.login("admin", "fr0m-a-file");
    // The password is nowhere on the node's command line.
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let home = crate::harness::Home::new();
    let run = home.micro(&[
        "server",
        "--auth-admin-password-file",
        empty.to_str().unwrap(),
    ]);
    assert_eq!(
        run.stderr,
        format!(
            "micro server: the admin password file {} is empty\n",
            empty.display()
        )
    );
    let run = home.micro(&[
        "server",
        "--auth-admin-password",
        "x",
        "--auth-admin-password-file",
        empty.to_str().unwrap(),
    ]);
    assert_ne!(run.code, 0);
    assert!(
        run.stderr
            .starts_with("The argument '--auth-admin-password"),
        "{run:?}"
    );
}

#[test]
fn no_secret_is_stored_in_clear() {
    use std::os::unix::fs::PermissionsExt;
    let s = Server::start_with(&[("MICRO_AUTH_ADMIN_PASSWORD", "Adm1nPassw0rd")]);
    s.login("admin", "Adm1nPassw0rd");
    s.micro(&[
        "auth",
        "create",
        "account",
        "carol",
        "--secret",
        "Car0lSecretPw",
    ])
    .ok();
    s.micro(&["config", "set", "--secret", "db.password", "C0nfigS3cret"])
        .ok();
    let tokens = std::fs::read_to_string(s.home.path().join(".micro/tokens")).unwrap();
    let mode = std::fs::metadata(s.home.path().join(".micro/tokens"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the tokens file is private");
    let refresh = tokens
        .lines()
        .next()
        .unwrap()
        .split('\t')
        .nth(4)
        .unwrap()
        .to_string();
    let refresh_secret = refresh.split('.').nth(1).unwrap().to_string();
    for key in ["auth-signing.key", "config-secret.key", "node-id"] {
        let mode = std::fs::metadata(s.data.join(key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
    let needles = [
        "Adm1nPassw0rd",
        "Car0lSecretPw",
        "C0nfigS3cret",
        refresh_secret.as_str(),
    ];
    let mut found = Vec::new();
    crate::config::visit(&s.data, &mut |path, bytes| {
        for n in needles {
            if bytes.windows(n.len()).any(|w| w == n.as_bytes()) {
                found.push(format!("{n} in {}", path.display()));
            }
        }
    });
    assert!(found.is_empty(), "secrets in clear: {found:?}");
}

#[test]
fn services_the_runtime_starts_have_accounts_of_their_own() {
    let s = Server::start_with(&[
        (
            "MICRO_RUNTIME_TARGET_DIR",
            crate::harness::services_target_dir().to_str().unwrap(),
        ),
        ("MICRO_RUNTIME_PROFILE", "dev"),
    ]);
    s.login("admin", "micro");
    s.lock_down();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("idsvc");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("micro.toml"),
        "run = \"echo id=$MICRO_AUTH_ID secret-given=${MICRO_AUTH_SECRET:+yes}; exec sleep 600\"\n",
    )
    .unwrap();
    s.micro(&["run", dir.to_str().unwrap()]).ok();
    let line = s.wait_status("idsvc", 30, |l| l.contains(" running "));
    assert!(
        line.contains("owner=admin, group=micro"),
        "the owner is the account that ran it: {line}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let logs = s.micro(&["logs", "idsvc"]).stdout;
        if logs.contains("id=idsvc secret-given=yes") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{logs}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let accounts = s.micro(&["auth", "list", "accounts"]);
    assert!(
        accounts.ok().contains("idsvc  idsvc  service"),
        "{accounts:?}"
    );
    s.micro(&["kill", "idsvc"]).ok();
    assert!(
        !s.micro(&["auth", "list", "accounts"])
            .ok()
            .contains("idsvc"),
        "its account goes with it"
    );

    // A Rust service logs in with its account and registers despite the lockdown.
    let created = s.micro_in(work.path(), &["new", "greeter"]);
    created.ok();
    s.micro_in(work.path(), &["run", "./greeter"]).ok();
    let line = s.wait_status("greeter", 900, |l| {
        l.contains(" running ") || l.contains(" error ")
    });
    assert!(line.contains(" running "), "{line}");
    wait_for_nodes(&s, "greeter", 1);
    assert_eq!(
        s.micro(&["greeter", "call", "--name=Zed"]).ok(),
        "{\n  \"msg\": \"Hello Zed\"\n}\n"
    );
}
