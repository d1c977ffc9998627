//! The runtime: `micro run`, `status`, `logs`, `kill`, `update`, `new`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::harness::{http_get, services_target_dir, Server};

const REFUSED_NAME: &str = "is not allowed: use letters, digits, '-', '_' and '.' (at most 128)";

/// A node whose Cargo builds share one target dir across tests (and CI
/// runs), in the debug profile to keep builds short; the CLI is logged in
/// as the admin (running code needs an account with the right).
fn runtime_server() -> Server {
    runtime_server_with(&[], "micro")
}

/// The same with extra environment for the node, whose admin password is
/// `password`.
fn runtime_server_with(env: &[(&str, &str)], password: &str) -> Server {
    let shared = services_target_dir();
    let mut all = vec![
        ("MICRO_RUNTIME_TARGET_DIR", shared.to_str().unwrap()),
        ("MICRO_RUNTIME_PROFILE", "dev"),
    ];
    all.extend_from_slice(env);
    let s = Server::start_with(&all);
    s.login("admin", password);
    s
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
    // `micro run` shows the build as it happens, and fails with it.
    let run = s.micro(&["run", dir.to_str().unwrap()]);
    run.fails_ending_with("Build failed: see `micro logs broken --build`");
    assert!(run.stderr.contains("expected one of"), "{run:?}");
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

/// `micro update` builds and starts the new version beside the old one:
/// a build that fails, or a new version that exits as it starts, leaves
/// the old process serving and says so; a good one replaces it.
#[test]
fn an_update_swaps_only_a_version_that_builds_and_runs() {
    let s = runtime_server();
    let work = tempfile::tempdir().unwrap();
    let dir = command_service(
        work.path(),
        "swapper",
        None,
        "echo serving one; exec sleep 600",
    );
    let d = dir.to_str().unwrap();
    s.micro(&["run", d]).ok();
    s.wait_status("swapper", 30, |l| l.contains(" running "));
    wait_logs(&s, "swapper", "serving one");
    let before = processes_of("swapper");
    assert_eq!(before.len(), 1, "{before:?}");
    // NAME VERSION SOURCE STATUS NODE BUILD …
    let build = |line: &str| {
        line.split_whitespace()
            .nth(5)
            .unwrap_or_default()
            .to_string()
    };
    let first = build(&s.wait_status("swapper", 5, |l| l.contains(" running ")));
    assert_eq!(first.len(), 8, "a build id is shown");

    // A build that fails.
    let bad_build = command_service(
        work.path(),
        "swapper",
        Some("echo the compiler says no; exit 2"),
        "echo serving two; exec sleep 600",
    );
    let update = s.micro(&["update", bad_build.to_str().unwrap()]);
    update.fails_ending_with(&format!(
        "Update failed: build error (see `micro logs swapper --build`); swapper {first} is still running"
    ));
    assert!(
        update.stderr.contains("the compiler says no"),
        "the build is shown as it happens: {update:?}"
    );
    assert_eq!(processes_of("swapper"), before, "the old process serves on");
    let line = s.wait_status("swapper", 5, |l| l.contains(" running "));
    assert_eq!(
        build(&line),
        first,
        "the old version is the one shown: {line}"
    );
    let build_log = s.micro(&["logs", "swapper", "--build"]);
    assert!(
        build_log.ok().contains("the compiler says no"),
        "{build_log:?}"
    );
    assert!(
        !build_log.stdout.contains("serving one"),
        "the build log holds builds only: {build_log:?}"
    );

    // A new version that exits as it starts.
    let dies = command_service(work.path(), "swapper", None, "echo dying; exit 7");
    s.micro(&["update", dies.to_str().unwrap()]).fails_ending_with(&format!(
        "Update failed: the new version exited with status 7 as it started; swapper {first} is still running"
    ));
    assert_eq!(processes_of("swapper"), before, "the old process serves on");

    // A good one replaces it, and only then is the old one stopped.
    let good = command_service(
        work.path(),
        "swapper",
        None,
        "echo serving three; exec sleep 600",
    );
    assert_eq!(s.micro(&["update", good.to_str().unwrap()]).ok(), "");
    wait_logs(&s, "swapper", "serving three");
    let after = processes_of("swapper");
    assert_eq!(after.len(), 1, "one process runs: {after:?}");
    assert_ne!(after, before, "the new version runs");
    let line = s.wait_status("swapper", 5, |l| l.contains(" running "));
    assert_ne!(build(&line), first, "{line}");
    // Only the running version's source is kept on the node.
    let versions = s.data.join("runtime/versions/micro/swapper");
    let kept = std::fs::read_dir(&versions).unwrap().count();
    assert_eq!(kept, 1, "old and failed versions are removed");
}

/// A node killed during an update, while the new version runs beside the
/// old one and before the swap, stops both when it starts again and runs
/// the version its spec names: one copy, the old one.
#[test]
fn a_node_killed_during_an_update_runs_one_copy_after_it_restarts() {
    let mut s = runtime_server();
    let work = tempfile::tempdir().unwrap();
    let bin = crate::harness::helloworld_bin();
    let dir = command_service(
        work.path(),
        "hwswap",
        None,
        &format!("exec {}", bin.display()),
    );
    s.micro(&["run", dir.to_str().unwrap()]).ok();
    crate::harness::wait_for_nodes(&s, "hwswap", 1);
    // The new version runs but never registers: the update waits for it.
    let next = work.path().join("next");
    std::fs::create_dir_all(&next).unwrap();
    let next = command_service(&next, "hwswap", None, "exec sleep 600");
    let update = std::process::Command::new(crate::harness::MICRO)
        .args(["update", next.to_str().unwrap()])
        .env("HOME", s.home.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let noted = s.data.join("runtime/pids-next/micro/hwswap");
    let deadline = Instant::now() + Duration::from_secs(60);
    while processes_of("hwswap").len() < 2 || !noted.exists() {
        assert!(Instant::now() < deadline, "the new version never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    s.kill9();
    s.restart();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let running = processes_of("hwswap");
        let status = s.micro(&["status"]).stdout;
        if running.len() == 1 && status.contains(" running ") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not one copy: {running:?}\n{status}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut update = update;
    let _ = update.wait();
    // The old version serves (the killed copy's registration may linger
    // until its TTL; calls to it fail over).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let call = s.micro(&["call", "hwswap", "Helloworld.Call", r#"{"name":"Al"}"#]);
        if call.code == 0 && call.stdout.contains("Hello Al") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the old version never served: {call:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// `micro run --binary`: an executable built elsewhere is uploaded and run
/// as it is, with no build on the node; `update --binary` swaps it.
#[test]
fn a_binary_runs_as_it_is_and_updates() {
    use std::os::unix::fs::PermissionsExt;
    let s = runtime_server();
    let work = tempfile::tempdir().unwrap();
    let bin = work.path().join("artefact");
    let write = |word: &str| {
        std::fs::write(
            &bin,
            format!("#!/bin/sh\necho artefact {word} $MICRO_SERVICE_NAME\nexec sleep 600\n"),
        )
        .unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    write("one");
    let b = bin.to_str().unwrap();
    let run = s.micro(&["run", "--binary", b]);
    assert_eq!(run.ok(), "");
    assert!(!run.stderr.contains("building"), "no build: {run:?}");
    let line = s.wait_status("artefact", 30, |l| l.contains(" running "));
    assert!(line.contains(b), "the artefact is the source shown: {line}");
    wait_logs(&s, "artefact", "artefact one artefact");
    write("two");
    assert_eq!(s.micro(&["update", "--binary", b]).ok(), "");
    wait_logs(&s, "artefact", "artefact two artefact");

    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o644)).unwrap();
    s.micro(&["run", "--binary", b, "--name", "other"])
        .fails_with(&format!("Not an executable file: {b}"));
    s.micro(&["run", "--binary", work.path().to_str().unwrap()])
        .fails_with(&format!(
            "Not an executable file: {}",
            work.path().display()
        ));
    assert!(!s.micro(&["status"]).ok().contains("other"));
}

/// A node that starts warms its build cache: the `micro new` template is
/// built against the embedded framework into the shared target dir.
#[test]
fn a_starting_node_warms_its_build_cache() {
    let s = runtime_server_with(&[("MICRO_RUNTIME_WARM_UP", "true")], "micro");
    let log = s.data.join("runtime/logs/warm-up.log");
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("[micro] build finished") {
            let unpacked = std::fs::read_dir(services_target_dir().join("micro-framework"))
                .unwrap()
                .flatten()
                .any(|d| d.path().join("service/Cargo.toml").is_file());
            assert!(
                unpacked,
                "built against the embedded framework, unpacked beside the cache"
            );
            break;
        }
        assert!(!text.contains("build failed"), "{text}");
        assert!(
            Instant::now() < deadline,
            "the warm-up never finished:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
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

    // The project names no path of this machine: it depends on micro by
    // version and ships the lock the framework is tested with; the node
    // builds it against the framework it embeds.
    let manifest = std::fs::read_to_string(work.path().join("greeter/Cargo.toml")).unwrap();
    assert!(!manifest.contains("path"), "{manifest}");
    assert!(work.path().join("greeter/Cargo.lock").exists());
    let run = s.micro_in(work.path(), &["run", "./greeter"]);
    assert_eq!(run.ok(), "");
    assert!(
        run.stderr.contains("[micro] building: cargo build")
            && run.stderr.contains("greeter is running"),
        "the build is shown as it happens, then the state: {run:?}"
    );
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
    let build_log = s.micro(&["logs", "greeter", "--build", "-n", "500"]);
    assert!(
        build_log.ok().contains("cargo build") && build_log.stdout.contains("build finished"),
        "{build_log:?}"
    );
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
        .ends_with("COMMANDS:\n  call\n  chat\n  stream\n"));
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
    // An update that does not compile leaves the working version answering.
    let good = s.wait_status("greeter", 5, |l| l.contains(" running "));
    // NAME VERSION SOURCE STATUS NODE BUILD …
    let build = good.split_whitespace().nth(5).unwrap().to_string();
    let code = std::fs::read_to_string(&main).unwrap();
    std::fs::write(&main, format!("{code}\nfn broken() -> u32 {{ \"no\" }}\n")).unwrap();
    s.micro_in(work.path(), &["update", "./greeter"])
        .fails_ending_with(&format!(
            "Update failed: build error (see `micro logs greeter --build`); greeter {build} is still running"
        ));
    assert_eq!(call().ok(), "{\n  \"msg\": \"Howdy Alice\"\n}\n");
    let build_log = s.micro(&["logs", "greeter", "--build", "-n", "100"]);
    assert!(build_log.ok().contains("mismatched types"), "{build_log:?}");
    std::fs::write(&main, code).unwrap();
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
pub(crate) fn processes_of(name: &str) -> Vec<u32> {
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

/// Names that would climb out of the runtime's folders are refused before
/// anything touches the disk, even for an admin, and the node keeps its
/// data and serves on.
#[test]
fn traversal_names_are_refused_and_the_data_dir_is_untouched() {
    let s = runtime_server();
    let work = tempfile::tempdir().unwrap();
    let dir = command_service(work.path(), "climber", None, "exec sleep 600");
    // What an attacker's upload would put in place of the data dir.
    std::fs::write(dir.join("auth-signing.key"), "not the node's key").unwrap();
    let dir = dir.to_str().unwrap();
    let before = std::fs::read(s.data.join("auth-signing.key")).unwrap();
    s.micro(&["--namespace", "..", "run", dir, "--name", ".."])
        .fails_with(&format!("Namespace '..' {REFUSED_NAME}"));
    s.micro(&["run", dir, "--name", ".."])
        .fails_with(&format!("Service name '..' {REFUSED_NAME}"));
    s.micro(&["run", dir, "--name", "."])
        .fails_with(&format!("Service name '.' {REFUSED_NAME}"));
    s.micro(&["run", dir, "--name", "../x"])
        .fails_with(&format!("Service name '../x' {REFUSED_NAME}"));
    s.micro(&["--namespace", "a/..", "run", dir])
        .fails_with(&format!("Namespace 'a/..' {REFUSED_NAME}"));
    s.micro(&["logs", ".."])
        .fails_with(&format!("Service name '..' {REFUSED_NAME}"));
    s.micro(&["kill", ".."])
        .fails_with(&format!("Service name '..' {REFUSED_NAME}"));
    for kept in ["raft", "cluster", "auth-signing.key", "config-secret.key"] {
        assert!(
            s.data.join(kept).exists(),
            "{kept} is gone from the data dir"
        );
    }
    assert_eq!(
        std::fs::read(s.data.join("auth-signing.key")).unwrap(),
        before
    );
    assert!(
        !s.data.join("micro.toml").exists(),
        "the upload landed in the data dir"
    );
    assert_eq!(s.micro(&["status"]).ok(), "", "nothing runs");
    s.micro(&["store", "write", "still", "here"]).ok();
    assert_eq!(s.micro(&["store", "read", "still"]).ok(), "here\n");
}

/// Under the bootstrap rules (everything public), running code still needs
/// an account.
#[test]
fn anonymous_callers_cannot_run_kill_update_or_read_logs() {
    let s = runtime_server();
    let work = tempfile::tempdir().unwrap();
    let dir = command_service(work.path(), "held", None, "echo held up; exec sleep 600");
    let dir = dir.to_str().unwrap();
    let other = command_service(work.path(), "sneaky", None, "exec sleep 600");
    s.micro(&["run", dir]).ok();
    s.wait_status("held", 30, |l| l.contains(" running "));
    wait_logs(&s, "held", "held up");
    assert_eq!(s.micro(&["logout"]).ok(), "");

    const REFUSED: &str = "Not authorized to perform this request";
    s.micro(&["run", other.to_str().unwrap()])
        .fails_with(REFUSED);
    s.micro(&["run", other.to_str().unwrap(), "--command", "id"])
        .fails_with(REFUSED);
    s.micro(&["kill", "held"]).fails_with(REFUSED);
    s.micro(&["logs", "held"]).fails_with(REFUSED);
    s.micro(&["update", dir]).fails_with(REFUSED);
    let status = s.micro(&["status"]);
    let names: Vec<&str> = status
        .ok()
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(names, ["held"], "nothing else started, held still runs");
    assert!(status.stdout.contains(" running "), "{status:?}");
}

/// Inside a namespace, running code is a right of its own, and a service
/// is managed by the account that ran it or an admin.
#[test]
fn only_the_owner_or_an_admin_manages_a_service() {
    let s = runtime_server();
    for (id, scopes) in [("alice", "runtime"), ("bob", "runtime"), ("carol", "")] {
        let mut args = vec!["auth", "create", "account", "--secret", "Passw0rd-x"];
        let scopes = format!("--scopes={scopes}");
        if id != "carol" {
            args.push(&scopes);
        }
        args.push(id);
        s.micro(&args).ok();
    }
    let work = tempfile::tempdir().unwrap();
    let dir = command_service(
        work.path(),
        "alicesvc",
        None,
        "echo alice was here; exec sleep 600",
    );
    let dir = dir.to_str().unwrap();

    s.login("carol", "Passw0rd-x");
    s.micro(&["run", dir]).fails_with(
        "Account carol may not run services in namespace micro: that needs the runtime scope or an admin",
    );
    assert_eq!(s.micro(&["status"]).ok(), "", "nothing started");

    s.login("alice", "Passw0rd-x");
    s.micro(&["run", dir]).ok();
    let line = s.wait_status("alicesvc", 30, |l| l.contains(" running "));
    assert!(line.contains("owner=alice, group=micro"), "{line}");
    wait_logs(&s, "alicesvc", "alice was here");

    s.login("bob", "Passw0rd-x");
    let not_bobs =
        "Service alicesvc belongs to account alice: only it or an admin of namespace micro may do this";
    s.micro(&["logs", "alicesvc"]).fails_with(not_bobs);
    s.micro(&["kill", "alicesvc"]).fails_with(not_bobs);
    s.micro(&["update", dir]).fails_with(not_bobs);
    s.wait_status("alicesvc", 5, |l| l.contains(" running "));

    // A service name alice registered is hers in the runtime too.
    s.login("alice", "Passw0rd-x");
    s.micro(&[
        "call",
        "registry",
        "Registry.Register",
        r#"{"name":"taken","version":"1","nodes":[{"id":"taken-1","address":"127.0.0.1:1"}]}"#,
    ])
    .ok();
    s.login("bob", "Passw0rd-x");
    s.micro(&["run", dir, "--name", "taken"]).fails_with(
        "Service name taken is registered by account alice: run it under another --name",
    );

    s.login("admin", "micro");
    wait_logs(&s, "alicesvc", "alice was here");
    assert_eq!(s.micro(&["kill", "alicesvc"]).ok(), "");
    assert_eq!(s.micro(&["status"]).ok(), "");
}

/// A service (and its build) starts from a clean environment: the node's
/// secrets never reach it, the variables the runtime means to give do.
#[test]
fn services_get_no_node_secret_in_their_environment() {
    const KEY: &str = "Sup3rSecretConfigKey-0123456789";
    const PASSWORD: &str = "Adm1n-Env-Passw0rd";
    let s = runtime_server_with(
        &[
            ("MICRO_CONFIG_SECRET_KEY", KEY),
            ("MICRO_AUTH_ADMIN_PASSWORD", PASSWORD),
            ("MICRO_TOKEN", "node-token-value"),
            ("SOME_NODE_SETTING", "node-only"),
        ],
        PASSWORD,
    );
    let work = tempfile::tempdir().unwrap();
    let dir = command_service(
        work.path(),
        "envsvc",
        Some("echo BUILD-ENV; env"),
        "echo RUN-ENV; env; echo END-ENV; exec sleep 600",
    );
    s.micro(&["run", dir.to_str().unwrap(), "--env-var", "GREETING=hi"])
        .ok();
    s.wait_status("envsvc", 30, |l| l.contains(" running "));
    let logs = wait_logs(&s, "envsvc", "END-ENV");
    for secret in [KEY, PASSWORD, "node-token-value", "node-only"] {
        assert!(
            !logs.contains(secret),
            "{secret} reached the service:\n{logs}"
        );
    }
    let run = logs
        .split("RUN-ENV\n")
        .nth(1)
        .and_then(|r| r.split("END-ENV").next())
        .unwrap_or_default();
    let vars: std::collections::BTreeMap<&str, &str> =
        run.lines().filter_map(|l| l.split_once('=')).collect();
    let micro: Vec<&str> = vars
        .keys()
        .copied()
        .filter(|k| k.starts_with("MICRO_"))
        .collect();
    assert_eq!(
        micro,
        [
            "MICRO_AUTH_ID",
            "MICRO_AUTH_SECRET",
            "MICRO_NAMESPACE",
            "MICRO_PROXY_ADDRESS",
            "MICRO_SERVICE_NAME",
            "MICRO_SERVICE_VERSION"
        ],
        "{run}"
    );
    assert_eq!(vars["MICRO_SERVICE_NAME"], "envsvc");
    assert_eq!(vars["MICRO_NAMESPACE"], "micro");
    assert_eq!(vars["MICRO_PROXY_ADDRESS"], s.proxy);
    assert_eq!(vars["GREETING"], "hi");
    assert!(
        vars.contains_key("PATH") && vars.contains_key("HOME"),
        "{run}"
    );
    // What the shell itself sets aside, nothing but the allowed names.
    let allowed = [
        "PATH", "HOME", "LANG", "TZ", "GREETING", "PWD", "OLDPWD", "SHLVL", "_",
    ];
    for k in vars.keys() {
        assert!(
            k.starts_with("MICRO_") || allowed.contains(k),
            "{k} reached the service: {run}"
        );
    }
}
