//! Timed phases: N concurrent loops over one operation for a fixed time,
//! and their throughput and latency percentiles.
//!
//! Must never: assert on a figure (the benchmark reports, it does not judge).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Latencies of one phase, in microseconds.
pub struct Phase {
    pub name: &'static str,
    pub latencies: Vec<u32>,
    /// successful operations per client
    pub per_client: Vec<u64>,
    pub errors: u64,
    pub elapsed: Duration,
}

impl Phase {
    pub fn throughput(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    /// The median latency, in milliseconds.
    pub fn p50(&self) -> f64 {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        match sorted.len() {
            0 => f64::NAN,
            n => sorted[n.div_ceil(2) - 1] as f64 / 1000.0,
        }
    }

    pub fn report(mut self) {
        self.latencies.sort_unstable();
        let n = self.latencies.len();
        let pct = |p: f64| -> f64 {
            if n == 0 {
                return 0.0;
            }
            let i = ((n as f64 * p).ceil() as usize).clamp(1, n) - 1;
            self.latencies[i] as f64 / 1000.0
        };
        println!(
            "{:<6} ops {:>8}  throughput {:>9.0}/s  p50 {:>7.2}ms  p99 {:>7.2}ms  max {:>7.2}ms  errors {}",
            self.name,
            n,
            n as f64 / self.elapsed.as_secs_f64(),
            pct(0.50),
            pct(0.99),
            pct(1.0),
            self.errors
        );
    }
}

/// Runs one loop per connection for `seconds`, collecting latencies. `op`
/// gets the connection, the client's index and the iteration number.
pub async fn phase<C, F, Fut>(name: &'static str, conns: Vec<C>, seconds: u64, op: F) -> Phase
where
    C: Clone + Send + Sync + 'static,
    F: Fn(C, usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let op = Arc::new(op);
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (c, conn) in conns.into_iter().enumerate() {
        let (stop, op) = (stop.clone(), op.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(1 << 16);
            let mut errors = 0u64;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                if op(conn.clone(), c, i).await {
                    lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                } else {
                    errors += 1;
                }
                i += 1;
            }
            (lat, errors)
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut latencies, mut per_client, mut errors) = (Vec::new(), Vec::new(), 0);
    for t in tasks {
        if let Ok((l, e)) = t.await {
            per_client.push(l.len() as u64);
            latencies.extend(l);
            errors += e;
        }
    }
    Phase {
        name,
        latencies,
        per_client,
        errors,
        elapsed: start.elapsed(),
    }
}
