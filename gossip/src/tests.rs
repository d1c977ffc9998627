//! End-to-end tests: real UDP sockets on loopback, real timers.
//!
//! Every wait polls with a deadline; nothing relies on a fixed sleep being
//! long enough.

use std::net::SocketAddr;
use std::time::Duration;

use rand::RngCore;
use tokio::time::Instant;

use crate::wire::Sealer;
use crate::{Config, Gossip, State};

const KEY: [u8; 32] = [0x42; 32];
const OTHER_KEY: [u8; 32] = [0x24; 32];
const POLL: Duration = Duration::from_millis(50);

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Logs to the test output when `RUST_LOG` is set (e.g. `micro_gossip=debug`).
fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

async fn start_at(node_id: u64, addr: SocketAddr, key: [u8; 32]) -> Gossip {
    init_tracing();
    Gossip::start(Config {
        node_id,
        bind: addr,
        advertise: addr,
        key,
    })
    .await
    .expect("start gossip")
}

/// Starts a node on a fixed address, retrying briefly in case the previous
/// owner of the port is still letting go of it.
async fn restart_at(node_id: u64, addr: SocketAddr, key: [u8; 32]) -> Gossip {
    init_tracing();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let cfg = Config {
            node_id,
            bind: addr,
            advertise: addr,
            key,
        };
        match Gossip::start(cfg).await {
            Ok(g) => return g,
            Err(err) if Instant::now() < deadline => {
                eprintln!("rebinding {addr}: {err}; retrying");
                tokio::time::sleep(POLL).await;
            }
            Err(err) => panic!("could not rebind {addr}: {err}"),
        }
    }
}

fn dump(nodes: &[&Gossip]) -> String {
    nodes
        .iter()
        .map(|g| format!("{:?} sees {:?}", g.local_addr(), g.members()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Polls `cond` until it holds, panicking with the nodes' views after
/// `limit`. Returns how long it took.
async fn wait_for(
    what: &str,
    limit: Duration,
    nodes: &[&Gossip],
    mut cond: impl FnMut() -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        if cond() {
            return started.elapsed();
        }
        if started.elapsed() > limit {
            panic!(
                "timed out after {limit:?} waiting for {what}\n{}",
                dump(nodes)
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// True when `g` lists exactly `ids`, all Alive.
fn sees_all_alive(g: &Gossip, ids: &[u64]) -> bool {
    let members = g.members();
    members.len() == ids.len()
        && ids.iter().all(|id| {
            members
                .iter()
                .any(|m| m.node_id == *id && m.state == State::Alive)
        })
}

async fn three_node_cluster() -> (Gossip, Gossip, Gossip) {
    let a = start_at(1, loopback(), KEY).await;
    let b = start_at(2, loopback(), KEY).await;
    let c = start_at(3, loopback(), KEY).await;
    b.announce(a.local_addr());
    c.announce(a.local_addr());
    let nodes = [&a, &b, &c];
    wait_for(
        "three nodes to converge",
        Duration::from_secs(10),
        &nodes,
        || nodes.iter().all(|g| sees_all_alive(g, &[1, 2, 3])),
    )
    .await;
    (a, b, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_see_each_other_alive() {
    let started = Instant::now();
    let (a, b, c) = three_node_cluster().await;
    eprintln!("converged in {:?}", started.elapsed());

    // Self is always reported, with its advertised address.
    let me = a
        .members()
        .into_iter()
        .find(|m| m.node_id == 1)
        .expect("self listed");
    assert_eq!(me.addr, a.local_addr());
    assert_eq!(a.state_of(1), Some(State::Alive));
    assert_eq!(a.state_of(77), None);
    assert_eq!(a.rejected_packets(), 0);

    // Re-announcing is harmless.
    b.announce(a.local_addr());
    b.announce(c.local_addr());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(sees_all_alive(&b, &[1, 2, 3]), "{}", dump(&[&b]));

    for g in [&a, &b, &c] {
        g.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_with_wrong_key_is_never_seen() {
    let a = start_at(1, loopback(), KEY).await;
    let b = start_at(2, loopback(), KEY).await;
    let intruder = start_at(99, loopback(), OTHER_KEY).await;

    b.announce(a.local_addr());
    intruder.announce(a.local_addr());
    intruder.announce(b.local_addr());

    wait_for(
        "A and B to converge",
        Duration::from_secs(10),
        &[&a, &b],
        || sees_all_alive(&a, &[1, 2]) && sees_all_alive(&b, &[1, 2]),
    )
    .await;
    wait_for(
        "A to reject the intruder",
        Duration::from_secs(5),
        &[&a],
        || a.rejected_packets() >= 1,
    )
    .await;

    // Keep knocking for a while; A must never list the intruder, nor the
    // intruder A.
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        intruder.announce(a.local_addr());
        assert_eq!(a.state_of(99), None, "{}", dump(&[&a]));
        assert_eq!(b.state_of(99), None, "{}", dump(&[&b]));
        assert!(sees_all_alive(&a, &[1, 2]), "{}", dump(&[&a]));
        assert_eq!(intruder.state_of(1), None);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        a.rejected_packets() >= 2,
        "rejected {}",
        a.rejected_packets()
    );
    let intruder_view = intruder.members();
    assert_eq!(intruder_view.len(), 1, "{intruder_view:?}");
    assert_eq!(intruder_view[0].node_id, 99);

    for g in [&a, &b, &intruder] {
        g.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_rejected_and_node_keeps_working() {
    let a = start_at(1, loopback(), KEY).await;
    let b = start_at(2, loopback(), KEY).await;
    b.announce(a.local_addr());
    wait_for(
        "A and B to converge",
        Duration::from_secs(10),
        &[&a, &b],
        || sees_all_alive(&a, &[1, 2]) && sees_all_alive(&b, &[1, 2]),
    )
    .await;
    let before = a.rejected_packets();

    let mut rng = rand::thread_rng();
    let mut junk: Vec<Vec<u8>> = Vec::new();
    for len in [0usize, 1, 23, 24, 39, 40, 41, 100, 1440, 1441, 9000, 60_000] {
        let mut bytes = vec![0u8; len];
        rng.fill_bytes(&mut bytes);
        junk.push(bytes);
    }
    // Sealed with the right key but carrying nonsense: authenticated, yet
    // foca cannot decode it.
    let sealer = Sealer::new(&KEY);
    junk.push(sealer.seal(&[0xff; 100]).expect("seal"));
    junk.push(sealer.seal(&[0x00]).expect("seal"));
    // A genuine-looking datagram with one byte flipped.
    let mut flipped = sealer.seal(&[1, 2, 3, 4, 5]).expect("seal");
    flipped[30] ^= 0x80;
    junk.push(flipped);
    // Sealed under the right key but too big for foca.
    junk.push(sealer.seal(&vec![7u8; 1500]).expect("seal"));

    let sender = tokio::net::UdpSocket::bind(loopback()).await.expect("bind");
    for datagram in &junk {
        sender
            .send_to(datagram, a.local_addr())
            .await
            .expect("send junk");
    }
    let expected = before + junk.len() as u64;
    wait_for("junk to be counted", Duration::from_secs(5), &[&a], || {
        a.rejected_packets() >= expected
    })
    .await;

    // A still works: it keeps B alive and can take in a newcomer.
    let c = start_at(3, loopback(), KEY).await;
    c.announce(a.local_addr());
    let nodes = [&a, &b, &c];
    wait_for(
        "newcomer to converge",
        Duration::from_secs(10),
        &nodes,
        || nodes.iter().all(|g| sees_all_alive(g, &[1, 2, 3])),
    )
    .await;
    assert_eq!(
        b.rejected_packets(),
        0,
        "B never received junk, and genuine traffic is never rejected"
    );

    for g in nodes {
        g.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_node_goes_suspect_then_down_and_comes_back() {
    let (a, b, c) = three_node_cluster().await;
    let c_addr = c.local_addr();

    // Vanish without a goodbye.
    c.crash().await;
    let crashed_at = Instant::now();

    // Watch both survivors until both report Down, remembering whether and
    // when each saw Suspect first.
    let mut suspect_at: [Option<Duration>; 2] = [None, None];
    let mut down_at: [Option<Duration>; 2] = [None, None];
    wait_for(
        "survivors to report the crashed node Down",
        Duration::from_secs(20),
        &[&a, &b],
        || {
            for (i, g) in [&a, &b].into_iter().enumerate() {
                match g.state_of(3) {
                    Some(State::Suspect) if suspect_at[i].is_none() => {
                        suspect_at[i] = Some(crashed_at.elapsed());
                    }
                    Some(State::Down) if down_at[i].is_none() => {
                        down_at[i] = Some(crashed_at.elapsed());
                    }
                    _ => {}
                }
            }
            down_at.iter().all(Option::is_some)
        },
    )
    .await;
    eprintln!("suspect after {suspect_at:?}, down after {down_at:?}");
    for i in 0..2 {
        let suspect = suspect_at[i].expect("survivor saw Suspect before Down");
        let down = down_at[i].expect("survivor saw Down");
        assert!(suspect <= down);
        assert!(down < Duration::from_secs(15), "Down took {down:?}");
    }
    // Still listed, once, as Down; the survivors still see each other.
    for g in [&a, &b] {
        let members = g.members();
        assert_eq!(members.len(), 3, "{members:?}");
        assert!(members
            .iter()
            .any(|m| m.node_id == 3 && m.state == State::Down && m.addr == c_addr));
        assert_eq!(g.state_of(1), Some(State::Alive));
        assert_eq!(g.state_of(2), Some(State::Alive));
    }

    // Same node id, same address, new process.
    let c2 = restart_at(3, c_addr, KEY).await;
    c2.announce(a.local_addr());
    let nodes = [&a, &b, &c2];
    let back = wait_for(
        "restarted node to be Alive everywhere",
        Duration::from_secs(10),
        &nodes,
        || nodes.iter().all(|g| sees_all_alive(g, &[1, 2, 3])),
    )
    .await;
    eprintln!("restarted node back in {back:?}");

    for g in nodes {
        g.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_leave_then_forget_then_return() {
    let a = start_at(1, loopback(), KEY).await;
    let b = start_at(2, loopback(), KEY).await;
    b.announce(a.local_addr());
    wait_for(
        "A and B to converge",
        Duration::from_secs(10),
        &[&a, &b],
        || sees_all_alive(&a, &[1, 2]) && sees_all_alive(&b, &[1, 2]),
    )
    .await;
    let b_addr = b.local_addr();

    // A leave is announced, so it shows up well before a probe would notice.
    b.shutdown().await;
    b.shutdown().await; // twice is harmless
    let took = wait_for("A to see B Down", Duration::from_secs(5), &[&a], || {
        a.state_of(2) == Some(State::Down)
    })
    .await;
    eprintln!("leave noticed in {took:?}");

    a.forget(2);
    assert_eq!(a.state_of(2), None);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(a.state_of(2), None, "{}", dump(&[&a]));
    assert_eq!(a.members().len(), 1);
    a.forget(1); // forgetting ourselves does nothing
    assert_eq!(a.state_of(1), Some(State::Alive));

    // The node comes back with a newer identity: listed again.
    let b2 = restart_at(2, b_addr, KEY).await;
    b2.announce(a.local_addr());
    wait_for("B to be back", Duration::from_secs(10), &[&a, &b2], || {
        sees_all_alive(&a, &[1, 2]) && sees_all_alive(&b2, &[1, 2])
    })
    .await;

    a.shutdown().await;
    b2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgotten_node_that_is_still_running_comes_back() {
    let a = start_at(1, loopback(), KEY).await;
    let b = start_at(2, loopback(), KEY).await;
    b.announce(a.local_addr());
    wait_for(
        "A and B to converge",
        Duration::from_secs(10),
        &[&a, &b],
        || sees_all_alive(&a, &[1, 2]) && sees_all_alive(&b, &[1, 2]),
    )
    .await;

    // A drops B although B is alive. B gets told it is down, renews its
    // identity and is listed again.
    a.forget(2);
    assert_eq!(a.state_of(2), None);
    wait_for(
        "B to reappear on A",
        Duration::from_secs(10),
        &[&a, &b],
        || a.state_of(2) == Some(State::Alive),
    )
    .await;
    wait_for(
        "both to agree again",
        Duration::from_secs(10),
        &[&a, &b],
        || sees_all_alive(&a, &[1, 2]) && sees_all_alive(&b, &[1, 2]),
    )
    .await;

    a.shutdown().await;
    b.shutdown().await;
}

#[test]
fn state_names() {
    assert_eq!(State::Alive.as_str(), "alive");
    assert_eq!(State::Suspect.as_str(), "suspect");
    assert_eq!(State::Down.as_str(), "down");
}

#[test]
fn advertise_is_completed_from_the_bound_address() {
    let bound: SocketAddr = "10.0.0.5:7946".parse().unwrap();
    let any: SocketAddr = "0.0.0.0:0".parse().unwrap();
    assert_eq!(crate::resolve_advertise(any, bound), bound);
    let explicit: SocketAddr = "192.168.1.9:9000".parse().unwrap();
    assert_eq!(crate::resolve_advertise(explicit, bound), explicit);
    let wildcard_bind: SocketAddr = "0.0.0.0:7946".parse().unwrap();
    assert_eq!(crate::resolve_advertise(any, wildcard_bind), wildcard_bind);
}

#[test]
fn a_suspicion_without_a_verdict_is_settled_after_the_limit() {
    use std::collections::HashMap;

    use crate::runner::stale_suspicions;

    let limit = Duration::from_secs(12);
    let t0 = Instant::now();
    let mut since = HashMap::new();
    // Node 2 (bump 0) becomes suspect at t0; nothing is stale yet.
    assert!(stale_suspicions(t0, [(2, 0)], &mut since, limit).is_empty());
    // Still suspect 11 s later: not yet.
    let t11 = t0 + Duration::from_secs(11);
    assert!(stale_suspicions(t11, [(2, 0), (3, 1)], &mut since, limit).is_empty());
    // At 12 s node 2 is stale; node 3, suspected since 11 s, is not.
    let t12 = t0 + Duration::from_secs(12);
    assert_eq!(
        stale_suspicions(t12, [(2, 0), (3, 1)], &mut since, limit),
        vec![(2, 0)]
    );
    // A suspicion that ends (the peer refuted, or went down) starts over
    // if it comes back.
    let t13 = t0 + Duration::from_secs(13);
    assert!(stale_suspicions(t13, [(3, 1)], &mut since, limit).is_empty());
    let t20 = t0 + Duration::from_secs(20);
    assert!(stale_suspicions(t20, [(2, 0), (3, 1)], &mut since, limit).is_empty());
    let t23 = t0 + Duration::from_secs(23);
    assert_eq!(
        stale_suspicions(t23, [(2, 0), (3, 1)], &mut since, limit),
        vec![(3, 1)]
    );
}
