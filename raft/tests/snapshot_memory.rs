//! A measurement, not a check: the peak resident memory of building,
//! sending and installing a snapshot of about `MICRO_MEASURE_MIB` MiB
//! (default 1024) of `MICRO_MEASURE_VALUE_KIB` KiB values (default 128),
//! through openraft's storage API, phase
//! by phase (the peak is reset through `/proc/self/clear_refs` between
//! phases). Run by hand:
//! `cargo test -p micro-raft --test snapshot_memory -- --ignored --nocapture`.
//! It uses only what every version of the storage API offers, so the same
//! file measures the code before and after a change.

use std::time::Instant;

use micro_raft::{open_storage, Entry, Txn};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{CommittedLeaderId, EntryPayload, LogId};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// (VmHWM, VmRSS) of this process in MiB.
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb / 1024)
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

fn phase(name: &str, started: Instant) {
    let (hwm, rss) = memory();
    println!(
        "{name}: {:.1}s, peak RSS {hwm} MiB, RSS now {rss} MiB",
        started.elapsed().as_secs_f64()
    );
    // Resets VmHWM to the current RSS (Linux 4.0+).
    std::fs::write("/proc/self/clear_refs", "5").expect("reset the peak RSS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: writes ~3 GiB to disk; run by hand"]
async fn measure_memory_of_building_sending_and_installing_a_snapshot() {
    let mib: u64 = std::env::var("MICRO_MEASURE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let kib: u64 = std::env::var("MICRO_MEASURE_VALUE_KIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128);
    let per_mib = (1024 / kib).max(1);
    let a = tempfile::tempdir().unwrap();
    let (_la, mut leader) = open_storage(a.path()).unwrap();
    let started = Instant::now();
    let mut index = 0u64;
    for i in 0..mib {
        let mut entries: Vec<Entry> = Vec::new();
        for j in 0..per_mib {
            index += 1;
            let mut value = vec![0u8; (kib << 10) as usize];
            let mut x = index.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            for c in value.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
            }
            entries.push(Entry {
                log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
                payload: EntryPayload::Normal(micro_raft::Batch(vec![Txn::put(
                    format!("big/{i:05}/{j}"),
                    value,
                    None,
                )])),
            });
        }
        leader.apply(entries).await.unwrap();
    }
    phase(&format!("filled {mib} MiB"), started);

    let started = Instant::now();
    let snap = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    phase("leader: built the snapshot", started);

    let started = Instant::now();
    let b = tempfile::tempdir().unwrap();
    let (_lb, mut member) = open_storage(b.path()).unwrap();
    let meta = snap.meta.clone();
    let mut data = snap.snapshot;
    data.seek(std::io::SeekFrom::Start(0)).await.unwrap();
    let mut incoming = member.begin_receiving_snapshot().await.unwrap();
    // As openraft's chunked sender and receiver do: 3 MiB at a time.
    let mut chunk = vec![0u8; 3 << 20];
    let mut sent = 0u64;
    loop {
        let n = data.read(&mut chunk).await.unwrap();
        if n == 0 {
            break;
        }
        incoming.write_all(&chunk[..n]).await.unwrap();
        sent += n as u64;
    }
    incoming.flush().await.unwrap();
    drop(data);
    drop(chunk);
    phase(
        &format!("transfer of {} MiB (both ends)", sent >> 20),
        started,
    );

    let started = Instant::now();
    member.install_snapshot(&meta, incoming).await.unwrap();
    phase("member: installed the snapshot", started);
    let last = format!("big/{:05}/{}", mib - 1, per_mib - 1);
    assert!(member.reader().get(last.as_bytes(), 0).unwrap().is_some());
}
