//! `micro-bench disk`: does a node's disk use and memory stop growing
//! under steady overwrites? It starts `--nodes` `micro server` processes,
//! writes a fixed key set once, measures the highest write rate over it
//! (64 connections, 10 s), then overwrites the same keys at about half
//! that rate for `--minutes`, through the leader's HTTP gateway (the
//! client of `compare`). Every 30 s it prints the elapsed time, each
//! node's data directory size (disk blocks, as `du`) and RSS, and the
//! writes done; at the end a verdict: flattened, or still growing, judged
//! by the growth in the last third of the run against the first third.
//!
//! Must never: grow the key set (every write overwrites one of the
//! `--keys`), or leave a server running.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::cluster::Cluster;
use crate::http::{Api, Conn, Target};
use crate::procstat::{disk_usage, mib, rss};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections of the paced overwrite load.
const WORKERS: usize = 16;
/// Connections and seconds of the max-rate measurement.
const MAX_CONNS: usize = 64;
const MAX_SECONDS: u64 = 10;
/// Seconds between rows.
const ROW_EVERY: Duration = Duration::from_secs(30);

pub struct Opts {
    pub minutes: u64,
    pub nodes: usize,
    pub keys: u64,
    pub value_size: usize,
    pub micro: Option<PathBuf>,
}

pub async fn disk(opts: Opts) -> Result<(), String> {
    if !(1..=9).contains(&opts.nodes) {
        return Err("--nodes must be between 1 and 9".into());
    }
    if opts.keys == 0 || opts.minutes == 0 {
        return Err("--keys and --minutes must be above 0".into());
    }
    Cluster::session(opts.micro.clone(), async |c| run(c, &opts).await).await
}

async fn run(c: &mut Cluster, opts: &Opts) -> Result<(), String> {
    println!(
        "micro-bench disk: {} node(s), {} keys of {} bytes overwritten for {} min at half the measured max write rate; micro {}",
        opts.nodes,
        opts.keys,
        opts.value_size,
        opts.minutes,
        c.micro().display()
    );
    c.form(opts.nodes).await?;
    let leader = c.leader().await?;
    let token = Arc::new(RwLock::new(c.token(0).await?));
    let target = Target {
        api: Api::Micro {
            token: token.clone(),
        },
        base: format!("http://{}", c.api(leader)),
    };
    let value = Arc::new(vec![b'x'; opts.value_size]);

    // Every key once.
    let t = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..MAX_CONNS {
        let (next, target, value, keys) = (next.clone(), target.clone(), value.clone(), opts.keys);
        tasks.push(tokio::spawn(async move {
            let conn = Conn::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= keys {
                    return Ok::<(), String>(());
                }
                let req = target.write(&format!("disk/{n:06}"), &value);
                target.call(&conn, req, REQUEST_TIMEOUT).await?;
            }
        }));
    }
    for task in tasks {
        task.await
            .map_err(|e| format!("a writer failed: {e}"))?
            .map_err(|e| format!("writing the key set: {e}"))?;
    }
    println!(
        "wrote the {} keys in {:.1} s",
        opts.keys,
        t.elapsed().as_secs_f64()
    );

    // The max rate, overwriting.
    let conns: Vec<(Conn, Target)> = (0..MAX_CONNS)
        .map(|_| (Conn::new(), target.clone()))
        .collect();
    let per = opts.keys / MAX_CONNS as u64 + 1;
    let (v, keys) = (value.clone(), opts.keys);
    let p = crate::phase::phase("max", conns, MAX_SECONDS, move |(conn, target), c, i| {
        let req = target.write(&format!("disk/{:06}", (c as u64 * per + i) % keys), &v);
        async move { target.call(&conn, req, REQUEST_TIMEOUT).await.is_ok() }
    })
    .await;
    let max = p.throughput();
    if max < 1.0 {
        return Err(format!(
            "the max-rate phase got no write through ({} failed)",
            p.errors
        ));
    }
    let rate = max / 2.0;
    println!(
        "max write rate {max:.0}/s at {MAX_CONNS} connections ({} errors); overwriting at {rate:.0}/s with {WORKERS} connections",
        p.errors
    );

    // The paced load.
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let counter = Arc::new(AtomicU64::new(0));
    let period = Duration::from_secs_f64(WORKERS as f64 / rate);
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let (done, errors, stop, counter) =
            (done.clone(), errors.clone(), stop.clone(), counter.clone());
        let (target, value, keys) = (target.clone(), value.clone(), opts.keys);
        workers.push(tokio::spawn(async move {
            let conn = Conn::new();
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let req = target.write(&format!("disk/{:06}", n % keys), &value);
                match target.call(&conn, req, REQUEST_TIMEOUT).await {
                    Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                    Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }

    let nodes = c.len();
    let mut head = format!("{:>7}", "elapsed");
    for i in 0..nodes {
        head.push_str(&format!(
            "  {:>12}  {:>12}",
            format!("data{} MiB", i + 1),
            format!("rss{} MiB", i + 1)
        ));
    }
    head.push_str(&format!(
        "  {:>10}  {:>8}  {:>7}",
        "writes", "errors", "rate/s"
    ));
    println!("{head}");
    let started = Instant::now();
    let total = Duration::from_secs(opts.minutes * 60);
    let mut data_series = Vec::new();
    let mut rss_series = Vec::new();
    let mut last = (Duration::ZERO, 0u64);
    loop {
        let elapsed = started.elapsed();
        let writes = done.load(Ordering::Relaxed);
        let (mut data_sum, mut rss_sum) = (0u64, 0u64);
        let mut row = format!("{:>6.0}s", elapsed.as_secs_f64());
        for i in 0..nodes {
            let d = disk_usage(&c.data_dir(i));
            let r = c.pid(i).and_then(rss);
            data_sum += d;
            rss_sum += r.unwrap_or(0);
            row.push_str(&format!(
                "  {:>12}  {:>12}",
                mib(d),
                r.map(mib).unwrap_or_else(|| "-".into())
            ));
        }
        let dt = (elapsed - last.0).as_secs_f64();
        let recent = if dt > 0.0 {
            (writes - last.1) as f64 / dt
        } else {
            0.0
        };
        last = (elapsed, writes);
        row.push_str(&format!(
            "  {:>10}  {:>8}  {:>7.0}",
            writes,
            errors.load(Ordering::Relaxed),
            recent
        ));
        println!("{row}");
        data_series.push((elapsed.as_secs_f64(), data_sum as f64));
        rss_series.push((elapsed.as_secs_f64(), rss_sum as f64));
        if elapsed >= total {
            break;
        }
        tokio::time::sleep(ROW_EVERY.min(total - elapsed)).await;
        // Tokens live 10 minutes: a fresh one for the writers each row.
        if let Ok(fresh) = c.token(0).await {
            if let Ok(mut t) = token.write() {
                *t = fresh;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    println!(
        "{} writes ({} failed) in {:.0} s: {:.0}/s",
        done.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64(),
        done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
    );
    println!(
        "verdict: data dir {}; RSS {}",
        verdict(&data_series),
        verdict(&rss_series)
    );
    Ok(())
}

/// The value at the row nearest `t`.
fn at(series: &[(f64, f64)], t: f64) -> f64 {
    series
        .iter()
        .min_by(|a, b| (a.0 - t).abs().total_cmp(&(b.0 - t).abs()))
        .map_or(0.0, |p| p.1)
}

/// Whether `series` (seconds, bytes) flattened: its growth over the last
/// third of the run is at most a quarter of the first third's, or under 5 %
/// of where it stood at two thirds. Says so with both growths in MiB.
pub fn verdict(series: &[(f64, f64)]) -> String {
    if series.len() < 4 {
        return "not judged (fewer than 4 rows)".into();
    }
    let end = series[series.len() - 1].0;
    let (v0, v1, v2, v3) = (
        at(series, 0.0),
        at(series, end / 3.0),
        at(series, 2.0 * end / 3.0),
        series[series.len() - 1].1,
    );
    let (first, last) = (v1 - v0, v3 - v2);
    let flat = last <= first.max(0.0) / 4.0 || last <= 0.05 * v2;
    let m = |x: f64| x / (1024.0 * 1024.0);
    format!(
        "{} (first third {:+.1} MiB, last third {:+.1} MiB, now {:.1} MiB)",
        if flat { "flattened" } else { "still growing" },
        m(first),
        m(last),
        m(v3)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: f64 = 1024.0 * 1024.0;

    #[test]
    fn a_curve_that_levels_off_is_flat_and_a_line_is_not() {
        let level: Vec<(f64, f64)> = (0..=20)
            .map(|i| {
                (
                    i as f64 * 30.0,
                    (100.0 - 80.0 * (-(i as f64) / 3.0).exp()) * MB,
                )
            })
            .collect();
        assert!(
            verdict(&level).starts_with("flattened"),
            "{}",
            verdict(&level)
        );
        let line: Vec<(f64, f64)> = (0..=20)
            .map(|i| (i as f64 * 30.0, (20.0 + 10.0 * i as f64) * MB))
            .collect();
        let v = verdict(&line);
        assert!(v.starts_with("still growing"), "{v}");
        assert!(
            v.contains("first third +70.0 MiB") && v.contains("now 220.0 MiB"),
            "{v}"
        );
        assert!(verdict(&line[..3]).starts_with("not judged"));
    }

    #[test]
    fn a_flat_or_shrinking_curve_is_flat() {
        let flat: Vec<(f64, f64)> = (0..10).map(|i| (i as f64 * 30.0, 50.0 * MB)).collect();
        assert!(verdict(&flat).starts_with("flattened"));
        let saw: Vec<(f64, f64)> = (0..10)
            .map(|i| {
                (
                    i as f64 * 30.0,
                    (50.0 + if i % 2 == 0 { 1.0 } else { -1.0 }) * MB,
                )
            })
            .collect();
        assert!(verdict(&saw).starts_with("flattened"), "{}", verdict(&saw));
    }
}
