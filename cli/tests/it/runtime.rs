//! The runtime: `micro run`, `status`, `logs`, `kill`, `update`, `new`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::harness::{http_get, services_target_dir, Server};

/// A node whose Cargo builds share one target dir across tests (and CI
/// runs), in the debug profile to keep builds short.
fn runtime_server() -> Server {
    let shared = services_target_dir();
    Server::start_with(&[
        ("MICRO_RUNTIME_TARGET_DIR", shared.to_str().unwrap()),
        ("MICRO_RUNTIME_PROFILE", "dev"),
    ])
}

/// A folder with a `micro.toml` that runs `run` (and builds with `build`).
fn command_service(parent: &Path, name: &str, build: Option<&str>, run: &str) -> PathBuf {
    let dir = parent.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let mut toml = format!("run = {run:?}\n");
    if let Some(b) = build {
        toml.push_str(&format!("build = {b:?}\n"));
    }
    std::fs::write(dir.join("micro.toml"), toml).unwrap();
    dir
}

/// The service's own output (the runtime's `[micro] …` lines left out),
/// once it contains `needle`.
fn wait_logs(s: &Server, name: &str, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let run = s.micro(&["logs", name, "-n", "200"]);
        let own: String = run
            .stdout
            .lines()
            .filter(|l| !l.starts_with("[micro] "))
            .map(|l| format!("{l}\n"))
            .collect();
        if own.contains(needle) {
            return own;
        }
        assert!(
            Instant::now() < deadline,
            "{needle:?} never appeared in the logs of {name}: {run:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_command_service_runs_shows_logs_and_is_killed() {
    let s = runtime_server();
    let work = tempfile::tempdir().unwrap();
    let dir = command_service(
        work.path(),
        "sleeper",
        None,
        "echo started as $MICRO_SERVICE_NAME with $GREETING; exec sleep 600",
    );
    assert_eq!(
        s.micro(&["run", dir.to_str().unwrap(), "--env", "GREETING=hi"])
            .ok(),
        ""
    );
    let line = s.wait_status("sleeper", 30, |l| l.contains(" running "));
    assert!(line.starts_with("sleeper  latest  "), "{line}");
    assert!(line.contains("group=micro"), "{line}");
    assert_eq!(
        wait_logs(&s, "sleeper", "started"),
        "started as sleeper with hi\n"
    );
    s.micro(&["run", dir.to_str().unwrap()])
        .fails_with("Service sleeper is already running; use micro update");
    assert_eq!(s.micro(&["kill", "sleeper"]).ok(), "");
    assert_eq!(s.micro(&["status"]).ok(), "", "nothing runs");
    s.micro(&["logs", "sleeper"])
        .fails_with("Service not found");
    s.micro(&["kill", "sleeper"])
        .fails_with("Service not found");
}

#[test]
fn a_crashing_service_is_restarted_and_says_why() {
    let s = runtime_server();
    let work = tempfile::tempdir().unwrap();
    let dir = command_service(work.path(), "crasher", None, "echo boom; exit 3");
    s.micro(&["run", dir.to_str().unwrap()]).ok();
    let line = s.wait_status("crasher", 30, |l| l.contains("restarts="));
    assert!(line.contains("exited with status 3"), "{line}");
    let logs = wait_logs(&s, "crasher", "boom\nboom");
    assert!(logs.lines().all(|l| l == "boom"), "{logs}");
}

#[test]
fn a_build_error_shows_in_status_and_logs() {
    let s = runtime_server();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("broken");
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        "[package]\nname = \"broken\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[workspace]\n",
    )
    .unwrap();
    std::fs::write(dir.join("src/main.rs"), "fn main() { this is not rust }\n").unwrap();
    s.micro(&["run", dir.to_str().unwrap()]).ok();
    let line = s.wait_status("broken", 120, |l| l.contains(" error "));
    assert!(line.contains("error=build failed"), "{line}");
    let logs = wait_logs(&s, "broken", "error");
    assert!(
        logs.contains("expected one of"),
        "the compiler's message is in the logs: {logs}"
    );
    s.micro(&["run", work.path().join("nope").to_str().unwrap()])
        .fails_with(&format!(
            "No such folder or git URL: {}",
            work.path().join("nope").display()
        ));
}

#[test]
fn services_start_again_when_the_node_restarts() {
    let mut s = runtime_server();
    let work = tempfile::tempdir().unwrap();
    let dir = command_service(work.path(), "stayer", None, "echo up; exec sleep 600");
    s.micro(&["run", dir.to_str().unwrap()]).ok();
    s.wait_status("stayer", 30, |l| l.contains(" running "));
    assert_eq!(s.terminate(), Some(0));
    s.restart();
    s.wait_status("stayer", 30, |l| l.contains(" running "));
    wait_logs(&s, "stayer", "up\nup\n");
}

#[test]
fn a_git_source_runs_and_updates_from_its_branch() {
    let s = runtime_server();
    let work = tempfile::tempdir().unwrap();
    let repo = command_service(
        work.path(),
        "gitsvc",
        None,
        "echo version one; exec sleep 600",
    );
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(&repo)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@t")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@t")
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {out:?}");
    };
    git(&["init", "-q", "-b", "main"]);
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "one"]);
    git(&["checkout", "-q", "-b", "dev"]);
    let url = format!("file://{}@dev", repo.display());
    s.micro(&["run", &url]).ok();
    let line = s.wait_status("gitsvc", 30, |l| l.contains(" running "));
    assert!(line.contains(&url), "the source is shown: {line}");
    wait_logs(&s, "gitsvc", "version one");
    std::fs::write(
        repo.join("micro.toml"),
        "run = \"echo version two; exec sleep 600\"\n",
    )
    .unwrap();
    git(&["commit", "-q", "-am", "two"]);
    assert_eq!(s.micro(&["update", "gitsvc"]).ok(), "");
    wait_logs(&s, "gitsvc", "version two");
}

/// `micro new`, then the whole life of a Rust service: run (a real cargo
/// build), call through the CLI and HTTP, logs, update with changed code,
/// kill.
#[test]
fn new_run_call_update_kill() {
    let s = runtime_server();
    let work = tempfile::tempdir().unwrap();
    let created = s.micro_in(work.path(), &["new", "greeter"]);
    assert!(
        created
            .ok()
            .starts_with("Created service greeter in ./greeter\n"),
        "{created:?}"
    );
    for f in [
        "Cargo.toml",
        "build.rs",
        "proto/greeter.proto",
        "src/main.rs",
        "README.md",
    ] {
        assert!(work.path().join("greeter").join(f).exists(), "{f} missing");
    }
    s.micro_in(work.path(), &["new", "greeter"])
        .fails_with("greeter already exists");
    s.micro_in(work.path(), &["new", "Bad-Name"])
        .fails_with("Invalid service name 'Bad-Name': use lowercase letters, digits and '_', starting with a letter");

    assert_eq!(s.micro_in(work.path(), &["run", "./greeter"]).ok(), "");
    let line = s.wait_status("greeter", 900, |l| {
        l.contains(" running ") || l.contains(" error ")
    });
    assert!(
        line.contains(" running "),
        "{line}\n{}",
        s.micro(&["logs", "greeter", "-n", "50"]).stdout
    );
    let services = s.micro(&["services"]);
    assert!(services.ok().contains("greeter\n"), "{services:?}");
    let call = || s.micro(&["greeter", "call", "--name=Alice"]);
    assert_eq!(call().ok(), "{\n  \"msg\": \"Hello Alice\"\n}\n");
    assert_eq!(
        s.micro(&["call", "greeter", "Greeter.Call", r#"{"name":"Bob"}"#])
            .ok(),
        "{\n  \"msg\": \"Hello Bob\"\n}\n"
    );
    assert!(s
        .micro(&["greeter", "--help"])
        .ok()
        .ends_with("COMMANDS:\n  call\n  stream\n"));
    assert_eq!(
        s.micro(&["greeter", "call", "--help"]).ok().lines().last(),
        Some("  --name string")
    );
    let line = s.wait_status("greeter", 5, |l| l.contains(" running "));
    assert!(
        line.contains("owner=") && line.contains("group=micro"),
        "{line}"
    );
    let (status, body) = http_get(&s.api, "/greeter/Call?name=Alice");
    assert_eq!((status, body.as_str()), (200, r#"{"msg":"Hello Alice"}"#));
    wait_logs(&s, "greeter", "Received Greeter.Call request");

    let main = work.path().join("greeter/src/main.rs");
    let code = std::fs::read_to_string(&main).unwrap();
    std::fs::write(
        &main,
        code.replace(
            "const GREETING: &str = \"Hello\";",
            "const GREETING: &str = \"Howdy\";",
        ),
    )
    .unwrap();
    assert_eq!(s.micro_in(work.path(), &["update", "./greeter"]).ok(), "");
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let run = call();
        if run.stdout.contains("Howdy Alice") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the update never served the new greeting: {run:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(s.micro(&["kill", "greeter"]).ok(), "");
    assert_eq!(s.micro(&["status"]).ok(), "");
    let deadline = Instant::now() + Duration::from_secs(20);
    while s.micro(&["services"]).stdout.contains("greeter") {
        assert!(
            Instant::now() < deadline,
            "greeter stayed in services after kill"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn logs_follow_streams_new_lines() {
    use std::io::BufRead;
    let s = runtime_server();
    let work = tempfile::tempdir().unwrap();
    let dir = command_service(
        work.path(),
        "ticker",
        None,
        "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.2; done",
    );
    s.micro(&["run", dir.to_str().unwrap()]).ok();
    s.wait_status("ticker", 30, |l| l.contains(" running "));
    let mut follow = std::process::Command::new(crate::harness::MICRO)
        .args(["logs", "-f", "-n", "1", "ticker"])
        .env("HOME", s.home.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut ticks = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while ticks.len() < 5 {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).expect("logs -f kept streaming");
        if let Some(n) = line.strip_prefix("tick ") {
            ticks.push(n.parse::<u32>().unwrap());
        }
    }
    follow.kill().ok();
    follow.wait().ok();
    assert!(
        ticks.windows(2).all(|w| w[1] == w[0] + 1),
        "new lines arrive in order: {ticks:?}"
    );
}

/// The processes whose environment names the service `name`.
fn processes_of(name: &str) -> Vec<u32> {
    let marker = format!("MICRO_SERVICE_NAME={name}");
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(env) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let zombie = stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z'));
        if !zombie && env.split(|b| *b == 0).any(|v| v == marker.as_bytes()) {
            pids.push(pid);
        }
    }
    pids
}

#[test]
fn a_node_killed_outright_leaves_no_duplicate_services() {
    let mut s = runtime_server();
    let work = tempfile::tempdir().unwrap();
    let name = format!("orphan{}", std::process::id());
    let dir = command_service(work.path(), &name, None, "echo up; exec sleep 600");
    s.micro(&["run", dir.to_str().unwrap()]).ok();
    s.wait_status(&name, 30, |l| l.contains(" running "));
    assert_eq!(processes_of(&name).len(), 1);
    s.kill9();
    assert_eq!(
        processes_of(&name).len(),
        1,
        "the service outlives a kill -9 of its node"
    );
    s.restart();
    s.wait_status(&name, 30, |l| l.contains(" running "));
    let deadline = Instant::now() + Duration::from_secs(10);
    while processes_of(&name).len() != 1 {
        assert!(
            Instant::now() < deadline,
            "processes of {name}: {:?}",
            processes_of(&name)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    s.micro(&["kill", &name]).ok();
    assert!(processes_of(&name).is_empty(), "kill stops it");
}
