//! Environments, help, HTTP endpoints and the one-line errors of bad input.

use crate::harness::{http_get, Home, Server};

#[test]
fn env_lists_adds_sets_and_deletes() {
    let home = Home::new();
    assert_eq!(
        home.micro(&["env"]).ok(),
        "* local  127.0.0.1:8081  Local running Micro Server\n"
    );
    assert_eq!(home.micro(&["env", "get"]).ok(), "local\n");
    assert_eq!(home.micro(&["env", "add", "dev", "10.0.0.9"]).ok(), "");
    assert_eq!(
        home.micro(&["env", "add", "prod", "10.0.0.1:9000", "the real one"])
            .ok(),
        ""
    );
    assert_eq!(
        home.micro(&["env"]).ok(),
        "  dev    10.0.0.9:8081\n* local  127.0.0.1:8081  Local running Micro Server\n  prod   10.0.0.1:9000   the real one\n"
    );
    home.micro(&["env", "set", "dev"]).ok();
    assert_eq!(home.micro(&["env", "get"]).ok(), "dev\n");
    home.micro(&["env", "set", "nope"])
        .fails_with("Environment 'nope' does not exist");
    home.micro(&["env", "del", "dev"]).fails_with(
        "Cannot delete the current environment 'dev'; switch with 'micro env set' first",
    );
    home.micro(&["env", "del", "prod"]).ok();
    assert!(!home.micro(&["env"]).ok().contains("prod"));
    home.micro(&["env", "add", "bad", "host:port"])
        .fails_with("Invalid address 'host:port': expected HOST, HOST:PORT or https://HOST:PORT");
    // -e picks an environment for one command
    home.micro(&["-e", "nope", "store", "read", "x"])
        .fails_with("Environment 'nope' does not exist");
}

#[test]
fn an_argument_that_is_not_utf8_is_one_clear_line() {
    use std::os::unix::ffi::OsStrExt;
    let home = Home::new();
    let out = std::process::Command::new(crate::harness::MICRO)
        .args(["store", "write"])
        .arg(std::ffi::OsStr::from_bytes(b"k\xff"))
        .arg("v")
        .env("HOME", home.path())
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "Invalid argument 'k\u{fffd}': not valid UTF-8\n"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn bad_command_lines_get_one_clear_line() {
    let home = Home::new();
    home.micro(&[])
        .fails_with("No command provided to micro. Please refer to 'micro --help'");
    // (`micro foo` asks a node whether foo is a service: see
    // an_unreachable_server_is_named and services.rs.)
    home.micro(&["config", "foo"]).fails_with(
        "Unrecognized subcommand for micro config: foo. Please refer to 'micro config --help'",
    );
    home.micro(&["store", "write", "--bogus", "k", "v"])
        .fails_with("Unknown flag: --bogus. Please refer to 'micro store write --help'");
    home.micro(&["store", "write", "k", "v", "--expiry", "soon"]).fails_with(
        "Invalid value 'soon' for '--expiry <DURATION>': invalid duration 'soon': use a number and a unit (ms, s, m, h, d), like 10s or 1h30m. Please refer to 'micro store write --help'",
    );
    home.micro(&["store", "write", "k"])
        .fails_with("Missing argument: <VALUE>. Please refer to 'micro store write --help'");
    home.micro(&["store", "read", "--order", "sideways", "k"]).fails_with(
        "Invalid value 'sideways' for '--order <ORDER>' [possible values: asc, desc]. Please refer to 'micro store read --help'",
    );
}

#[test]
fn every_command_has_help() {
    let home = Home::new();
    for args in [
        vec!["--help"],
        vec!["server", "--help"],
        vec!["env", "--help"],
        vec!["env", "add", "--help"],
        vec!["store", "--help"],
        vec!["store", "read", "--help"],
        vec!["store", "write", "--help"],
        vec!["store", "list", "--help"],
        vec!["config", "--help"],
        vec!["config", "set", "--help"],
        vec!["services", "--help"],
    ] {
        let run = home.micro(&args);
        assert!(run.ok().contains("Usage: micro"), "{args:?}: {run:?}");
    }
    let store = home.micro(&["store", "--help"]);
    for sub in ["read", "write", "list", "delete", "databases", "tables"] {
        assert!(
            store.stdout.contains(sub),
            "{sub} missing from store --help"
        );
    }
    let server = home.micro(&["server", "--help"]);
    for flag in [
        "--data-dir",
        "--api-address",
        "--proxy-address",
        "--web-address",
        "--cluster-address",
        "MICRO_DATA_DIR",
    ] {
        assert!(
            server.stdout.contains(flag),
            "{flag} missing from server --help"
        );
    }
}

#[test]
fn an_unreachable_server_is_named() {
    let home = Home::new();
    home.micro(&["env", "add", "dead", "127.0.0.1:1"]).ok();
    home.micro(&["-e", "dead", "store", "read", "k"])
        .fails_with("Failed to connect to micro server at 127.0.0.1:1");
    home.micro(&["-e", "dead", "services"])
        .fails_with("Failed to connect to micro server at 127.0.0.1:1");
    // A dynamic command cannot tell a service from a typo without a node:
    // it says that the node is down, not that the command is unknown.
    home.micro(&["-e", "dead", "greeter", "call"])
        .fails_with("Failed to connect to micro server at 127.0.0.1:1");
    home.micro(&["-e", "dead", "foo"])
        .fails_with("Failed to connect to micro server at 127.0.0.1:1");
    // An environment of several nodes names them all.
    home.micro(&["env", "add", "deads", "127.0.0.1:1,127.0.0.1:2"])
        .ok();
    home.micro(&["-e", "deads", "store", "read", "k"])
        .fails_with("Failed to connect to micro server at 127.0.0.1:1, 127.0.0.1:2");
    home.micro(&["-e", "deads", "greeter", "call"])
        .fails_with("Failed to connect to micro server at 127.0.0.1:1, 127.0.0.1:2");
}

#[test]
fn an_env_lists_every_node_of_a_cluster_and_refuses_bad_lists() {
    let home = Home::new();
    home.micro(&["env", "add", "prod", "10.0.0.1,10.0.0.2:9000, 10.0.0.3"])
        .ok();
    let listed = "* local  127.0.0.1:8081                             Local running Micro Server\n  prod   10.0.0.1:8081,10.0.0.2:9000,10.0.0.3:8081\n";
    assert_eq!(home.micro(&["env"]).ok(), listed);
    home.micro(&["env", "add", "p2", "10.0.0.1,,10.0.0.2"])
        .fails_with("Invalid address list '10.0.0.1,,10.0.0.2': an address in it is empty");
    home.micro(&["env", "add", "p2", "10.0.0.1,10.0.0.1:8081"])
        .fails_with("Address '10.0.0.1:8081' is listed twice");
    home.micro(&["env", "add", "p2", "https://10.0.0.1,10.0.0.2"]).fails_with(
        "Cannot mix https:// and plaintext addresses in one environment: use https:// for all of them or for none",
    );
    home.micro(&["env", "add", "p2", "10.0.0.1,host:port"])
        .fails_with("Invalid address 'host:port': expected HOST, HOST:PORT or https://HOST:PORT");
    home.micro(&[
        "env",
        "add",
        "p2",
        "10.0.0.1,10.0.0.2",
        "--ca",
        "/nonexistent.pem",
    ])
    .fails_with("Cannot read the CA file /nonexistent.pem: No such file or directory (os error 2)");
    // Nothing of the refused lists was kept.
    assert_eq!(home.micro(&["env"]).ok(), listed);
}

#[test]
fn an_env_pointed_at_an_http_port_says_so() {
    let server = Server::start();
    for (name, addr) in [("api", &server.api), ("web", &server.web)] {
        server.micro(&["env", "add", name, addr]).ok();
        let message = format!(
            "Failed to connect to micro server at {addr}: it answers HTTP/1.1, not gRPC (is this the HTTP API port? the gRPC endpoint is :8081 by default)"
        );
        for cmd in [
            &["store", "read", "k"][..],
            &["services"],
            &["greeter", "call"],
            &["login", "--username", "admin", "--password", "micro"],
        ] {
            let mut args = vec!["-e", name];
            args.extend_from_slice(cmd);
            server.micro(&args).fails_with(&message);
        }
    }
    // The gRPC endpoint of the same node works.
    server.micro(&["store", "write", "k", "v"]).ok();
}

#[test]
fn http_root_reports_the_version_and_dashboard_lists_services() {
    let server = Server::start();
    let (status, body) = http_get(&server.api, "/");
    assert_eq!(status, 200);
    assert_eq!(
        body,
        format!("{{\"version\":\"{}\"}}", env!("CARGO_PKG_VERSION"))
    );
    let (status, page) = http_get(&server.web, "/");
    assert_eq!(status, 200);
    for svc in ["config", "registry", "store"] {
        assert!(
            page.contains(&format!("<td>{svc}</td>")),
            "{svc} missing from dashboard: {page}"
        );
    }
}

#[test]
fn a_busy_port_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let home = Home::new();
    let data = home.path().join("d");
    let run = home.micro(&[
        "server",
        "--data-dir",
        data.to_str().unwrap(),
        "--proxy-address",
        &addr,
        "--api-address",
        "127.0.0.1:0",
        "--web-address",
        "127.0.0.1:0",
    ]);
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.ends_with(&format!(
            "micro server: cannot listen on {addr} for the gRPC endpoint: Address already in use (os error 98)\n"
        )),
        "{run:?}"
    );
}

#[test]
fn bad_raft_timing_flags_are_one_clear_error() {
    let home = Home::new();
    let data = home.path().join("d");
    let server = |flags: &[&str]| {
        let mut args = vec!["server", "--data-dir", data.to_str().unwrap()];
        args.extend_from_slice(flags);
        home.micro(&args)
    };
    let hint = "Please refer to 'micro server --help'";
    server(&["--raft-heartbeat", "soon"]).fails_with(&format!(
        "Invalid value 'soon' for '--raft-heartbeat <DURATION>': invalid duration 'soon': use a number and a unit (ms, s, m, h, d), like 10s or 1h30m. {hint}"
    ));
    server(&["--raft-heartbeat", "0"]).fails_with(&format!(
        "Invalid value '0' for '--raft-heartbeat <DURATION>': the heartbeat must be at least 1ms. {hint}"
    ));
    server(&["--raft-election-timeout", "1s"]).fails_with(&format!(
        "Invalid value '1s' for '--raft-election-timeout <MIN..MAX>': give the range as MIN..MAX, like 1s..2s. {hint}"
    ));
    server(&["--raft-election-timeout", "2s..1s"]).fails_with(&format!(
        "Invalid value '2s..1s' for '--raft-election-timeout <MIN..MAX>': the minimum must be below the maximum, like 200ms..400ms. {hint}"
    ));
    // Each value fine alone, not together: followers would campaign
    // against a live leader.
    server(&["--raft-heartbeat", "1s", "--raft-election-timeout", "500ms..1s"]).fails_with(
        "micro server: the Raft heartbeat (1000ms) must be shorter than the election timeout's minimum (500ms)",
    );
    server(&["--raft-heartbeat", "2s"]).fails_with(
        "micro server: the Raft heartbeat (2000ms) must be shorter than the election timeout's minimum (200ms)",
    );
    // The defaults show in the help, from the one place they are set.
    let help = home.micro(&["server", "--help"]).ok().to_string();
    assert!(help.contains("[default: 100ms]"), "{help}");
    assert!(help.contains("[default: 200ms..400ms]"), "{help}");
}
