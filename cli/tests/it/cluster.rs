//! Clusters of real nodes on 127.0.0.x addresses: joining, replication,
//! any node serving everything, failover, a frozen majority, strangers
//! kept out, and catching up from a snapshot.

use std::time::{Duration, Instant};

use micro_node::cluster::pki::JoinToken;
use micro_node::cluster::tls;
use micro_node::cluster::trust::Trust;
use micro_proto::cluster::peer_client::PeerClient;
use micro_proto::cluster::{AdmitRequest, ProposeRequest, RaftRequest, StatusRequest};
use micro_proto::store::{ReadRequest, Record, WriteRequest};

use crate::harness::{http_get, wait_for_nodes, Instance, Run, Server};

/// Polls `f` until it returns `Some`, for up to `secs`.
fn eventually<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The `micro cluster members` table as (id, gossip, role) rows.
fn members(s: &Server) -> Vec<(u64, String, String)> {
    let run = s.micro(&["cluster", "members"]);
    if run.code != 0 {
        return Vec::new();
    }
    run.stdout
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let n = f.len();
            Some((f.first()?.parse().ok()?, f[n - 2].into(), f[n - 1].into()))
        })
        .collect()
}

/// Starts a founder on 127.0.0.1 and `more` nodes joining it on 127.0.0.2,
/// .3, …; waits until all are voters, every node sees every other alive,
/// and each CLI is logged in.
pub(crate) fn cluster(more: usize, env: &[(&str, &str)]) -> Vec<Server> {
    let first = Server::start_node("127.0.0.1", env, &[]);
    first.login_admin();
    let token = first.micro(&["cluster", "token"]).ok().trim().to_string();
    assert!(token.starts_with("MICRO2."), "a join token: {token}");
    let mut nodes = vec![first];
    for i in 0..more {
        let ip = format!("127.0.0.{}", i + 2);
        let join = nodes[0].cluster.clone();
        let n = Server::start_node(&ip, env, &["--join", &join, "--token", &token]);
        n.login_admin();
        nodes.push(n);
    }
    let ids: Vec<u64> = nodes.iter().map(|n| n.node_id).collect();
    for n in &nodes {
        eventually(60, "every node a voter and alive", || {
            let m = members(n);
            let ok = m.len() == ids.len()
                && m.iter().all(|(id, gossip, role)| {
                    ids.contains(id) && gossip == "alive" && role != "learner"
                });
            ok.then_some(())
        });
    }
    nodes
}

/// The id of the node every member names as leader.
pub(crate) fn leader(s: &Server) -> u64 {
    eventually(30, "a leader", || {
        members(s)
            .into_iter()
            .find(|(_, _, role)| role == "leader")
            .map(|(id, _, _)| id)
    })
}

fn read(s: &Server, key: &str) -> Run {
    s.micro(&["store", "read", key])
}

/// Node `id`'s (state, term, leader) from `micro cluster status` through `s`.
fn raft_row(s: &Server, id: u64) -> Option<(String, u64, u64)> {
    let run = s.micro(&["cluster", "status"]);
    run.stdout.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.first()?.parse::<u64>().ok()? != id {
            return None;
        }
        Some((
            f.get(2)?.to_string(),
            f.get(3)?.parse().ok()?,
            f.get(4)?.parse().ok()?,
        ))
    })
}

/// A leader stopped with SIGTERM hands over: by the time it has exited the
/// others follow its successor (without a hand-over they would still
/// follow the node that exited, and wait out an election timeout), elected
/// in one clean election (the term goes up by exactly one), and writes
/// through the others go on.
#[test]
fn a_leader_stopped_with_sigterm_hands_over_in_one_election() {
    let mut nodes = cluster(2, &[]);
    let lead = leader(&nodes[0]);
    let li = nodes.iter().position(|n| n.node_id == lead).unwrap();
    let mut old = nodes.remove(li);
    let (writer, third) = (&nodes[0], &nodes[1]);
    writer.micro(&["store", "write", "before", "1"]).ok();
    // A leader's vote is honoured once its own lease (the longest election
    // timeout, 2 s) has run since it was elected, as on any node that has
    // led for a while.
    std::thread::sleep(Duration::from_secs(3));
    let (state, term, _) = raft_row(&old, lead).expect("the leader's status");
    assert_eq!(state, "leader");

    // Writes through another node all along, from SIGTERM until a few
    // after the old leader has exited: the longest wait between two
    // acknowledged writes is how long the cluster could not write.
    let stopped = Instant::now();
    old.signal("TERM");
    let exited = std::sync::atomic::AtomicBool::new(false);
    let (code, followed, acks) = std::thread::scope(|scope| {
        let acks = scope.spawn(|| {
            let mut acks = vec![Duration::ZERO];
            let (mut after_exit, mut i) = (0, 0);
            while after_exit < 3 && stopped.elapsed() < Duration::from_secs(60) {
                i += 1;
                let done = exited.load(std::sync::atomic::Ordering::SeqCst);
                if writer
                    .micro(&["store", "write", "after", &i.to_string()])
                    .code
                    == 0
                {
                    acks.push(stopped.elapsed());
                    after_exit += done as usize;
                }
            }
            acks
        });
        let code = old.wait_exit();
        exited.store(true, std::sync::atomic::Ordering::SeqCst);
        // Asked at once (well within an election timeout of the exit).
        let followed = raft_row(third, third.node_id).map(|r| r.2);
        (code, followed, acks.join().unwrap())
    });
    assert_eq!(code, Some(0), "{}", old.log());
    let gap = acks
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    eprintln!(
        "leader SIGTERM: {} writes acknowledged through another node in {:?}; longest wait between two: {gap:?}",
        acks.len() - 1,
        acks.last().copied().unwrap_or_default()
    );
    if let Some(dir) = std::env::var_os("MICRO_TEST_SHOW_LOG") {
        let dir = std::path::Path::new(&dir);
        std::fs::write(dir.join("old.log"), old.log()).ok();
        std::fs::write(dir.join("writer.log"), writer.log()).ok();
        std::fs::write(dir.join("third.log"), third.log()).ok();
    }
    assert!(acks.len() > 3, "writes went on through the others");
    // Without a hand-over the others would still follow the node that just
    // exited, and wait out an election timeout before electing another.
    assert!(
        followed.is_some_and(|l| l != lead && l != 0),
        "when the old leader exited, the others already followed its successor: {followed:?}"
    );
    assert!(
        old.log().contains("handed leadership over"),
        "{}",
        old.log()
    );
    let (_, new_term, new_leader) = eventually(30, "a new leader", || {
        raft_row(writer, writer.node_id).filter(|r| r.2 != 0 && r.2 != lead)
    });
    assert_ne!(new_leader, lead);
    assert_eq!(new_term, term + 1, "one clean election");
    let last = read(writer, "after").ok().to_string();
    eventually(30, "the third node reads the last write", || {
        (read(third, "after").stdout == last).then_some(())
    });
}

#[test]
fn three_nodes_serve_everything_fail_over_and_converge() {
    let mut nodes = cluster(2, &[]);

    // Writes through any node, reads from every node.
    nodes[1].micro(&["store", "write", "k", "v"]).ok();
    for n in &nodes {
        assert_eq!(read(n, "k").ok(), "v\n");
    }
    nodes[2]
        .micro(&["config", "set", "app.colour", "blue"])
        .ok();
    assert_eq!(
        nodes[0].micro(&["config", "get", "app"]).ok(),
        "{\"colour\":\"blue\"}\n"
    );
    // Secrets sealed on one node open on another: the key is the cluster's.
    nodes[0]
        .micro(&["config", "set", "--secret", "app.key", "s3cret"])
        .ok();
    assert_eq!(
        nodes[2]
            .micro(&["config", "get", "--secret", "app.key"])
            .ok(),
        "s3cret\n"
    );
    // A token node 1 issued is good on node 2: one signing key.
    let token = nodes[0].micro(&["user", "token"]).ok().trim().to_string();
    let list = |auth: &[(&str, &str)]| {
        crate::harness::http_send(&nodes[1].api, "POST", "/auth/Accounts/List", auth, b"{}")
    };
    let (code, body) = list(&[("Authorization", &format!("Bearer {token}"))]);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"admin\""), "{body}");
    let (code, body) = list(&[]);
    assert_eq!(code, 401, "{body}");
    let (code, body) = list(&[("Authorization", "Bearer not.a.token")]);
    assert_eq!(code, 401, "a bad token is refused: {body}");
    assert!(body.contains("the token is malformed"), "{body}");

    // The status table has a row per node, all in one term with one leader.
    let status = nodes[0].micro(&["cluster", "status"]).ok().to_string();
    assert_eq!(status.lines().count(), 4, "{status}");
    assert_eq!(status.matches(" leader ").count(), 1, "{status}");

    // A service on node 1, called through node 3's gateway and node 2's
    // gRPC endpoint.
    let _hello = Instance::start(&nodes[0], "n1");
    wait_for_nodes(&nodes[2], "helloworld", 1);
    let (code, body) = http_get(&nodes[2].api, "/helloworld/Call?name=A");
    assert_eq!((code, body.as_str()), (200, "{\"msg\":\"Hello A\"}"));
    let reply = nodes[1]
        .micro(&["call", "helloworld", "Helloworld.Call", "{\"name\":\"B\"}"])
        .ok()
        .to_string();
    assert!(reply.contains("Hello B"), "{reply}");

    // kill -9 the leader: writes resume through the others.
    let lead = leader(&nodes[0]);
    let li = nodes.iter().position(|n| n.node_id == lead).unwrap();
    nodes[li].kill9();
    let (a, b) = match li {
        0 => (1, 2),
        1 => (0, 2),
        _ => (0, 1),
    };
    eventually(30, "a write after the leader died", || {
        (nodes[a]
            .micro(&["store", "write", "after", "failover"])
            .code
            == 0)
            .then_some(())
    });
    assert_eq!(read(&nodes[b], "after").ok(), "failover\n");
    assert_ne!(leader(&nodes[a]), lead, "a new leader");

    // The old leader comes back, catches up and serves the new value.
    nodes[li].restart();
    eventually(30, "the restarted node catches up", || {
        (read(&nodes[li], "after").stdout == "failover\n").then_some(())
    });

    // Freeze two nodes: the one left is a minority and refuses writes with
    // a clear error rather than acknowledge what it cannot keep.
    let alone = a;
    for (i, n) in nodes.iter().enumerate() {
        if i != alone {
            n.signal("STOP");
        }
    }
    let refused = nodes[alone].micro(&["store", "write", "minority", "x"]);
    for (i, n) in nodes.iter().enumerate() {
        if i != alone {
            n.signal("CONT");
        }
    }
    assert_ne!(
        refused.code, 0,
        "a minority must not acknowledge: {refused:?}"
    );
    assert_eq!(refused.stderr.lines().count(), 1, "{refused:?}");
    assert!(
        refused.stderr.contains("quorum") || refused.stderr.contains("leader"),
        "{refused:?}"
    );
    // Healed: writes go through again, and every node agrees.
    eventually(30, "a write after healing", || {
        (nodes[alone]
            .micro(&["store", "write", "healed", "yes"])
            .code
            == 0)
            .then_some(())
    });
    for n in &nodes {
        eventually(30, "every node reads the write made after healing", || {
            (read(n, "healed").stdout == "yes\n").then_some(())
        });
        assert_eq!(read(n, "k").ok(), "v\n");
    }

    // Node 1, where helloworld registered, dies: once gossip holds it down,
    // calls are not sent there (the registration itself lives on until its
    // TTL) and the caller hears why.
    nodes[0].kill9();
    eventually(30, "gossip holds node 1 down", || {
        members(&nodes[1])
            .iter()
            .any(|(id, gossip, _)| *id == nodes[0].node_id && gossip == "down")
            .then_some(())
    });
    let (code, body) = http_get(&nodes[2].api, "/helloworld/Call?name=A");
    assert_ne!(code, 200, "{body}");
    assert!(
        body.contains("every instance of helloworld runs on a node that is down"),
        "{body}"
    );
}

/// Runs `micro server --join` on 127.0.0.5 with a fresh data dir `name`;
/// returns once it exits (a refused joiner stops).
fn try_join(home: &crate::harness::Home, name: &str, cluster: &str, token: &str) -> Run {
    let data = home.path().join(name);
    serve_once(home, &data, &["--join", cluster, "--token", token])
}

/// Runs `micro server` on 127.0.0.5 with data dir `data` until it exits
/// (for nodes that must refuse to start); one still running after 60 s is
/// killed and reported with code -1.
fn serve_once(home: &crate::harness::Home, data: &std::path::Path, extra: &[&str]) -> Run {
    let mut cmd = std::process::Command::new(crate::harness::MICRO);
    cmd.env("MICRO_RUNTIME_WARM_UP", "false");
    cmd.args(["server", "--data-dir", data.to_str().unwrap()]);
    for flag in [
        "--api-address",
        "--proxy-address",
        "--web-address",
        "--cluster-address",
    ] {
        cmd.args([flag, "127.0.0.5:0"]);
    }
    let log = home.path().join("serve-once.log");
    cmd.args(extra)
        .env("HOME", home.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    for (k, _) in std::env::vars() {
        if k.starts_with("MICRO_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd.spawn().expect("start micro server");
    let deadline = Instant::now() + Duration::from_secs(60);
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code().unwrap_or(-1);
        }
        if Instant::now() > deadline {
            child.kill().ok();
            child.wait().ok();
            break -1;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Run {
        stdout: String::new(),
        stderr: std::fs::read_to_string(&log).unwrap_or_default(),
        code,
        server_log: None,
    }
}

/// The last line of a run's stderr (a server logs before it fails).
fn last_line(run: &Run) -> &str {
    run.stderr.lines().last().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_cannot_join_or_talk_to_the_cluster_port() {
    let node = Server::start_node("127.0.0.1", &[], &[]);
    node.login_admin();
    let token = node.micro(&["cluster", "token"]).ok().trim().to_string();
    let good = JoinToken::parse(&token).unwrap();
    // Only admins see the token.
    let outsider = crate::harness::Home::new();
    outsider.micro(&["env", "add", "c", &node.proxy]).ok();
    outsider
        .micro(&["-e", "c", "cluster", "token"])
        .fails_with("Not authorized to perform this request");

    // A wrong secret: refused, and the joiner stops with one clear line.
    let wrong = JoinToken {
        secret: "x".repeat(32),
        ..good.clone()
    }
    .to_string();
    let home = crate::harness::Home::new();
    let run = try_join(&home, "data", &node.cluster, &wrong);
    assert_ne!(run.code, 0);
    assert!(
        run.stderr
            .contains("the join token is not valid for this cluster"),
        "{run:?}"
    );
    // A token of another cluster (another CA): the joiner does not trust
    // the node, so it sends nothing.
    let other = JoinToken {
        ca_fingerprint: "ab".repeat(32),
        ..good.clone()
    }
    .to_string();
    let run = try_join(&home, "data2", &node.cluster, &other);
    assert_ne!(run.code, 0);
    assert!(
        run.stderr
            .contains("its certificate is not from the CA the token names"),
        "{run:?}"
    );
    assert_eq!(members(&node).len(), 1, "nobody joined");

    // A TLS client that trusts the cluster but has no certificate: every
    // call but Join is refused.
    let cfg = tls::join_client_config(&good.ca_fingerprint).unwrap();
    let mut peer = PeerClient::new(tls::channel(&node.cluster, cfg).unwrap());
    let err = peer.status(StatusRequest {}).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    let err = peer
        .propose(ProposeRequest { txn: vec![1, 2, 3] })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    // Nor can it reach the node's services through the cluster port.
    let mut store = micro_proto::store::store_client::StoreClient::new(
        tls::channel(
            &node.cluster,
            tls::join_client_config(&good.ca_fingerprint).unwrap(),
        )
        .unwrap(),
    );
    let err = store
        .write(WriteRequest {
            record: Some(Record {
                key: "sneaky".into(),
                value: b"x".to_vec(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    // Plain TCP without TLS gets nowhere either.
    let plain = micro::Client::connect(&node.cluster, "micro").await;
    if let Ok(c) = plain {
        assert!(c
            .store()
            .read(ReadRequest {
                key: "sneaky".into(),
                ..Default::default()
            })
            .await
            .is_err());
    }

    // Gossip from a node without the key is ignored: it never shows up.
    let rogue = micro_gossip::Gossip::start(micro_gossip::Config {
        node_id: 42,
        bind: "127.0.0.6:0".parse().unwrap(),
        advertise: "127.0.0.6:0".parse().unwrap(),
        key: [7u8; 32],
    })
    .await
    .unwrap();
    rogue.announce(node.cluster.parse().unwrap());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        rogue.members().iter().all(|m| m.node_id == 42),
        "the rogue saw nobody"
    );
    let listed = node.micro(&["cluster", "members"]).ok().to_string();
    assert!(!listed.contains("127.0.0.6"), "{listed}");
    rogue.shutdown().await;
    assert_eq!(read(&node, "sneaky").code, 1, "nothing was written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_missed_compacted_entries_catches_up_from_a_snapshot() {
    let env = [("MICRO_RAFT_SNAPSHOT_AFTER", "50")];
    let mut nodes = cluster(2, &env);
    let before = nodes[2].micro(&["cluster", "status"]).ok().to_string();
    nodes[2].kill9();

    let client = nodes[0].client("micro").await;
    for i in 0..400 {
        client
            .store()
            .write(WriteRequest {
                record: Some(Record {
                    key: format!("bulk/{i:04}"),
                    value: format!("value {i}").into_bytes(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    // The leader compacted its log past where the stopped node was.
    let lead_status = nodes[0].micro(&["cluster", "status"]).ok().to_string();
    let snapshot_of = |table: &str, id: u64| -> u64 {
        table
            .lines()
            .find(|l| l.starts_with(&id.to_string()))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let last_log_of = |table: &str, id: u64| -> u64 {
        table
            .lines()
            .find(|l| l.starts_with(&id.to_string()))
            .and_then(|l| l.split_whitespace().nth(5))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let stopped_at = last_log_of(&before, nodes[2].node_id);
    let leader_snapshot = snapshot_of(&lead_status, nodes[0].node_id)
        .max(snapshot_of(&lead_status, nodes[1].node_id));
    assert!(
        leader_snapshot > stopped_at + 100,
        "the log was compacted past the stopped node ({stopped_at}):\n{lead_status}"
    );

    nodes[2].restart();
    let n3 = &nodes[2];
    eventually(60, "the node caught up", || {
        (read(n3, "bulk/0399").stdout == "value 399\n").then_some(())
    });
    assert_eq!(read(n3, "bulk/0000").ok(), "value 0\n");
    let listed = n3
        .micro(&["store", "list", "--prefix", "bulk/"])
        .ok()
        .lines()
        .count();
    assert_eq!(listed, 400);
    let status = n3.micro(&["cluster", "status"]).ok().to_string();
    assert!(
        snapshot_of(&status, n3.node_id) > stopped_at,
        "it holds a snapshot past where it stopped:\n{status}"
    );
}

#[test]
fn services_run_on_one_node_are_managed_from_any_other() {
    let mut nodes = cluster(2, &[]);
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("pinger");
    std::fs::create_dir_all(&dir).unwrap();
    let toml = |word: &str| format!("run = \"echo {word}; exec sleep 600\"\n");
    std::fs::write(dir.join("micro.toml"), toml("first")).unwrap();
    assert_eq!(nodes[0].micro(&["run", dir.to_str().unwrap()]).ok(), "");

    // Status from another node: the same replicated view.
    let line = nodes[1].wait_status("pinger", 30, |l| l.contains(" running "));
    assert!(line.starts_with("pinger  latest  "), "{line}");
    // NAME VERSION SOURCE STATUS NODE …: where it runs.
    let node_of = |line: &str| {
        line.split_whitespace()
            .nth(4)
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(node_of(&line), nodes[0].node_id.to_string(), "{line}");
    // Logs live on node 1; node 2 streams them from there.
    let logs_have = |n: &Server, word: &str| {
        eventually(30, "the service's output in its logs", || {
            let run = n.micro(&["logs", "pinger", "-n", "50"]);
            run.stdout.contains(word).then_some(())
        })
    };
    logs_have(&nodes[1], "first");
    // An update through node 3 rebuilds and restarts it on node 1.
    std::fs::write(dir.join("micro.toml"), toml("second")).unwrap();
    assert_eq!(nodes[2].micro(&["update", dir.to_str().unwrap()]).ok(), "");
    logs_have(&nodes[2], "second");
    nodes[0].wait_status("pinger", 30, |l| l.contains(" running "));
    // Killed through node 2: gone everywhere.
    assert_eq!(nodes[1].micro(&["kill", "pinger"]).ok(), "");
    for n in &nodes {
        assert_eq!(n.micro(&["status"]).ok(), "", "nothing runs");
    }

    // A service whose node dies shows as down, with what it last reported.
    // (It outlives its node; a short sleep keeps it from lingering.)
    std::fs::write(
        dir.join("micro.toml"),
        "run = \"echo third; exec sleep 60\"\n",
    )
    .unwrap();
    assert_eq!(nodes[2].micro(&["run", dir.to_str().unwrap()]).ok(), "");
    nodes[0].wait_status("pinger", 30, |l| l.contains(" running "));
    nodes[2].kill9();
    let line = nodes[0].wait_status("pinger", 90, |l| l.contains(" down "));
    assert_eq!(node_of(&line), nodes[2].node_id.to_string(), "{line}");
    assert!(line.contains("last reported=running"), "{line}");

    // Node 3 is taken out (through node 2): two members are left, and they
    // still take writes.
    let gone = nodes[2].node_id.to_string();
    assert_eq!(
        nodes[1].micro(&["cluster", "remove", &gone]).ok(),
        format!("Node {gone} removed\n")
    );
    eventually(30, "two members left", || {
        let m = members(&nodes[0]);
        (m.len() == 2 && m.iter().all(|(id, _, _)| id.to_string() != gone)).then_some(())
    });
    nodes[0]
        .micro(&["store", "write", "after-remove", "ok"])
        .ok();
    assert_eq!(read(&nodes[1], "after-remove").ok(), "ok\n");
    nodes[1]
        .micro(&["cluster", "remove", &gone])
        .fails_with("Not found");
}

#[test]
fn nodes_beyond_the_cluster_size_stay_learners_and_still_serve() {
    let env = [("MICRO_CLUSTER_SIZE", "1")];
    let first = Server::start_node("127.0.0.1", &env, &[]);
    first.login_admin();
    let token = first.micro(&["cluster", "token"]).ok().to_string();
    // The token from a file (with its newline), out of `ps`.
    let token_file = first.home.path().join("join-token");
    std::fs::write(&token_file, &token).unwrap();
    let second = Server::start_node(
        "127.0.0.2",
        &env,
        &[
            "--join",
            &first.cluster,
            "--token-file",
            token_file.to_str().unwrap(),
        ],
    );
    eventually(60, "a leader and a learner", || {
        let mut roles: Vec<String> = members(&first).into_iter().map(|(_, _, r)| r).collect();
        roles.sort();
        (roles == ["leader", "learner"]).then_some(())
    });
    // A learner forwards writes and serves linearizable reads.
    second.micro(&["store", "write", "from", "learner"]).ok();
    assert_eq!(read(&first, "from").ok(), "learner\n");
    assert_eq!(read(&second, "from").ok(), "learner\n");
}

#[test]
fn join_tokens_expire_and_can_all_be_revoked() {
    let first = Server::start_node("127.0.0.1", &[], &[]);
    first.login_admin();
    let home = crate::harness::Home::new();

    // A token that works for 2 s no longer works after 3 s.
    let short = first
        .micro(&["cluster", "token", "--ttl", "2s"])
        .ok()
        .trim()
        .to_string();
    std::thread::sleep(Duration::from_secs(3));
    let run = try_join(&home, "late", &first.cluster, &short);
    assert_ne!(run.code, 0, "{run:?}");
    assert_eq!(
        last_line(&run),
        format!(
            "micro server: cannot join through {}: the join token has expired",
            first.cluster
        ),
        "{run:?}"
    );

    // --revoke-all: a token from before is refused, the new one works.
    let old = first.micro(&["cluster", "token"]).ok().trim().to_string();
    let new = first
        .micro(&["cluster", "token", "--revoke-all"])
        .ok()
        .trim()
        .to_string();
    assert_ne!(old, new);
    let run = try_join(&home, "old", &first.cluster, &old);
    assert_ne!(run.code, 0, "{run:?}");
    assert_eq!(
        last_line(&run),
        format!(
            "micro server: cannot join through {}: the join token is not valid for this cluster",
            first.cluster
        ),
        "{run:?}"
    );
    assert_eq!(members(&first).len(), 1, "nobody joined");
    let second = Server::start_node(
        "127.0.0.2",
        &[],
        &["--join", &first.cluster, "--token", &new],
    );
    // Any member checks a token, not only the one that minted it.
    let _third = Server::start_node(
        "127.0.0.3",
        &[],
        &["--join", &second.cluster, "--token", &new],
    );
    eventually(60, "three members", || {
        (members(&first).len() == 3).then_some(())
    });
}

/// Whether a call failed in the TLS handshake (the server refused the
/// client's certificate), not with an answer from the server. In TLS 1.3
/// the client learns it on its first read: the alert, or, when the
/// connection closes first, only that.
fn refused_in_handshake(s: &tonic::Status) -> bool {
    let why = micro_node::cluster::transport::describe(s);
    why.contains("CertificateRevoked")
        || (matches!(
            s.code(),
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
        ) && (why.contains("connection closed") || why.contains("transport error")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_node_is_refused_on_every_cluster_call_and_cannot_rejoin() {
    let mut nodes = cluster(2, &[]);
    let gone = nodes[2].node_id;
    let material = nodes[2].data.join("cluster");
    let file = |f: &str| std::fs::read_to_string(material.join(f)).unwrap();
    let identity = tls::Identity {
        ca_pem: file("ca.crt"),
        cert_pem: file("node.crt"),
        key_pem: file("node.key"),
    };
    let cfg = || tls::client_config(&identity, Trust::new()).unwrap();
    // A connection made while it is a member.
    let mut open = PeerClient::new(tls::channel(&nodes[0].cluster, cfg()).unwrap());
    open.status(StatusRequest {}).await.unwrap();

    nodes[0]
        .micro(&["cluster", "remove", &gone.to_string()])
        .ok();

    // Every member refuses its certificate in the handshake, whatever the
    // call (the trust set follows the replicated state within moments).
    for n in &nodes[..2] {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut peer = PeerClient::new(tls::channel(&n.cluster, cfg()).unwrap());
            match peer.status(StatusRequest {}).await {
                Err(e) if refused_in_handshake(&e) => break,
                other => {
                    assert!(Instant::now() < deadline, "still served: {other:?}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        let mut peer = PeerClient::new(tls::channel(&n.cluster, cfg()).unwrap());
        let err = peer
            .admit(AdmitRequest {
                node_id: gone,
                address: "127.0.0.9:1".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(refused_in_handshake(&err), "{err:?}");
        let mut peer = PeerClient::new(tls::channel(&n.cluster, cfg()).unwrap());
        let err = peer
            .raft(RaftRequest {
                kind: 1,
                body: vec![],
            })
            .await
            .unwrap_err();
        assert!(refused_in_handshake(&err), "{err:?}");
        let mut store = micro_proto::store::store_client::StoreClient::new(
            tls::channel(&n.cluster, cfg()).unwrap(),
        );
        let err = store
            .read(ReadRequest {
                key: "k".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(refused_in_handshake(&err), "{err:?}");
    }
    // The connection it had open is refused call by call.
    let err = open.status(StatusRequest {}).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("was removed from this cluster"),
        "{err:?}"
    );

    // Restarted on its old material, it does not get back in.
    let data = nodes[2].data.clone();
    nodes[2].terminate();
    let home = crate::harness::Home::new();
    let run = serve_once(&home, &data, &[]);
    if run.code != -1 {
        assert_ne!(run.code, 0, "{run:?}");
        assert!(
            last_line(&run).contains(&format!("node {gone} was removed from this cluster")),
            "{run:?}"
        );
    }
    let left = members(&nodes[0]);
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.iter().all(|(id, _, _)| *id != gone), "{left:?}");

    // Nor can anyone join under its id, or under a member's id (which
    // would hand out a second certificate for it), with a valid token.
    let token = nodes[0]
        .micro(&["cluster", "token"])
        .ok()
        .trim()
        .to_string();
    for (id, why) in [
        (gone, format!("node {gone} was removed from this cluster")),
        (
            nodes[1].node_id,
            format!(
                "node id {} is or was a member of this cluster",
                nodes[1].node_id
            ),
        ),
    ] {
        let dir = home.path().join(format!("again-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("node-id"), id.to_string()).unwrap();
        let run = serve_once(
            &home,
            &dir,
            &["--join", &nodes[0].cluster, "--token", &token],
        );
        assert_ne!(run.code, 0, "{run:?}");
        assert!(last_line(&run).contains(&why), "{run:?}");
    }
    assert_eq!(members(&nodes[0]).len(), 2);
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn a_node_whose_raft_state_is_lost_or_foreign_refuses_to_start() {
    let mut a = Server::start_node("127.0.0.1", &[], &[]);
    let mut b = Server::start_node("127.0.0.2", &[], &[]);
    a.login_admin();
    a.micro(&["store", "write", "k", "kept"]).ok();
    assert_eq!(a.terminate(), Some(0));
    assert_eq!(b.terminate(), Some(0));
    let raft = a.data.join("raft");
    let mine = a.data.join("raft.mine");
    std::fs::rename(&raft, &mine).unwrap();

    // raft/ is gone: a founder would found a second cluster. It refuses.
    let run = serve_once(&a.home, &a.data, &[]);
    let refusal = format!(
        "micro server: {} holds this node's cluster material but its Raft state ({}) is missing or empty, so starting would found a second cluster: restore raft/ from a backup, or move the data directory aside and join the cluster again with a fresh --data-dir and a new token (then `micro cluster remove` the old node id)",
        a.data.display(),
        raft.display()
    );
    assert_ne!(run.code, 0, "{run:?}");
    assert_eq!(last_line(&run), refusal, "{run:?}");
    assert!(!raft.exists(), "nothing was made in its place");
    // An empty raft/ is no better.
    std::fs::create_dir(&raft).unwrap();
    let run = serve_once(&a.home, &a.data, &[]);
    assert_ne!(run.code, 0, "{run:?}");
    assert_eq!(last_line(&run), refusal, "{run:?}");
    std::fs::remove_dir(&raft).unwrap();

    // Another cluster's raft/: refused too.
    copy_dir(&b.data.join("raft"), &raft);
    let run = serve_once(&a.home, &a.data, &[]);
    assert_ne!(run.code, 0, "{run:?}");
    assert!(
        last_line(&run).contains("belongs to another cluster"),
        "{run:?}"
    );

    // Its own raft/ restored: it starts and has its data.
    std::fs::remove_dir_all(&raft).unwrap();
    std::fs::rename(&mine, &raft).unwrap();
    a.restart();
    a.login_admin();
    assert_eq!(read(&a, "k").ok(), "kept\n");
}

/// When the node running a service dies, the leader starts the service on
/// another node (from the replicated upload) and calls through the others
/// succeed again; when the dead node comes back, it stops its stale copy,
/// so one copy runs.
#[test]
fn a_service_moves_when_its_node_dies_and_runs_once_when_it_returns() {
    let env = [("MICRO_RUNTIME_RESCHEDULE_AFTER", "3s")];
    let mut nodes = cluster(2, &env);
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("hwmover");
    std::fs::create_dir_all(&dir).unwrap();
    let bin = crate::harness::helloworld_bin();
    std::fs::write(
        dir.join("micro.toml"),
        format!("run = {:?}\n", format!("exec {}", bin.display())),
    )
    .unwrap();
    assert_eq!(nodes[1].micro(&["run", dir.to_str().unwrap()]).ok(), "");
    let line = nodes[0].wait_status("hwmover", 60, |l| l.contains(" running "));
    let node_of = |line: &str| {
        line.split_whitespace()
            .nth(4)
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(node_of(&line), nodes[1].node_id.to_string(), "{line}");
    let call = |n: &Server| n.micro(&["call", "hwmover", "Helloworld.Call", r#"{"name":"Ann"}"#]);
    let answered = |run: &Run| run.code == 0 && run.stdout.contains("Hello Ann");
    eventually(60, "a call through node 3", || {
        answered(&call(&nodes[2])).then_some(())
    });

    let dead = nodes[1].node_id.to_string();
    let killed = Instant::now();
    nodes[1].kill9();
    let line = nodes[0].wait_status("hwmover", 120, |l| {
        l.contains(" running ") && node_of(l) != dead
    });
    eventually(60, "calls through node 1 and node 3 again", || {
        (answered(&call(&nodes[0])) && answered(&call(&nodes[2]))).then_some(())
    });
    eprintln!(
        "hwmover answered again {:.1} s after its node was killed: {line}",
        killed.elapsed().as_secs_f64()
    );

    // The old node comes back: its leftover process is stopped, the
    // service keeps running where it moved, once.
    nodes[1].restart();
    eventually(60, "node 2 back and alive", || {
        members(&nodes[0])
            .iter()
            .any(|(id, gossip, _)| id.to_string() == dead && gossip == "alive")
            .then_some(())
    });
    eventually(30, "one copy of hwmover", || {
        (crate::runtime::processes_of("hwmover").len() == 1).then_some(())
    });
    let again = nodes[1].wait_status("hwmover", 5, |l| l.contains(" running "));
    assert_eq!(node_of(&again), node_of(&line), "it stays where it moved");
    assert!(answered(&call(&nodes[1])), "and answers through node 2 too");
}

/// One environment names the three nodes; one `micro login` serves them
/// all (they share the token-signing key). With the first node killed,
/// the same commands go through the next address, with the same login.
#[test]
fn one_env_for_a_cluster_fails_over_to_the_next_address_with_one_login() {
    let mut nodes = cluster(2, &[]);
    let home = crate::harness::Home::new();
    let list: Vec<&str> = nodes.iter().map(|n| n.proxy.as_str()).collect();
    let list = list.join(",");
    home.micro(&["env", "add", "prod", &list]).ok();
    home.micro(&["env", "set", "prod"]).ok();
    let listed = home.micro(&["env"]).ok().to_string();
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("* prod") && l.contains(&list)),
        "{listed}"
    );
    home.micro(&["auth", "list", "accounts"])
        .fails_with("Not authorized to perform this request");
    assert_eq!(
        home.micro(&["login", "--username", "admin", "--password", "micro"])
            .ok(),
        "Successfully logged in.\n"
    );
    let session = || std::fs::read_to_string(home.path().join(".micro/tokens")).unwrap();
    let before = session();
    let accounts = home.micro(&["auth", "list", "accounts"]).ok().to_string();
    assert!(accounts.contains("admin"), "{accounts}");
    home.micro(&["store", "write", "fo", "before"]).ok();

    nodes[0].kill9();
    // The next address answers at once; the cluster may still be electing
    // a leader (the first node may have led), but the node is reached and
    // takes the login.
    let after = eventually(30, "auth list accounts through the next node", || {
        let run = home.micro(&["auth", "list", "accounts"]);
        assert!(
            !run.stderr.starts_with("Failed to connect") && !run.stderr.contains("Not authorized"),
            "failed over with the same login: {run:?}"
        );
        (run.code == 0).then_some(run.stdout)
    });
    assert_eq!(after, accounts);
    eventually(30, "a write through the next node", || {
        (home.micro(&["store", "write", "fo", "after"]).code == 0).then_some(())
    });
    assert_eq!(home.micro(&["store", "read", "fo"]).ok(), "after\n");
    assert_eq!(home.micro(&["user"]).ok(), "admin\n");
    // No new login, no refresh: the session is the one from before.
    assert_eq!(session(), before);
}
