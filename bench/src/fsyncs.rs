//! Counting a server's `fsync` and `fdatasync` calls during a phase: with
//! `perf stat` on the syscall tracepoints (needs tracefs; mounted here when
//! absent), or, only when perf cannot, with `strace -c` (which slows the
//! process, so its count comes from a separate short phase).
//!
//! Must never: leave perf or strace attached after a phase (they are
//! stopped with SIGINT, killed on drop), or fail a run: a counter that
//! cannot start or be read gives no figure, with the reason.

use std::path::{Path, PathBuf};
use std::time::Duration;

const EVENTS: &str =
    "syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync,syscalls:sys_enter_sync_file_range";

/// What a counter saw.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Counts {
    /// fsync plus fdatasync calls
    pub fsyncs: u64,
    /// sync_file_range calls (sled's own flush: they start write-back, but
    /// do not make the data durable)
    pub sync_file_range: u64,
}
const TRACEFS: &str = "/sys/kernel/tracing";

/// How fsyncs are counted in this run.
#[derive(Clone, Debug, PartialEq)]
pub enum Method {
    /// `perf stat` during the phase itself
    Perf,
    /// `strace -f -c` during a separate short phase
    Strace,
    /// not at all, and why
    None(String),
}

/// Picks the method and says what it did to get there (for example that it
/// mounted tracefs).
pub async fn method() -> (Method, Vec<String>) {
    let mut notes = Vec::new();
    let events = Path::new(TRACEFS).join("events/syscalls");
    if !events.exists() && Path::new(TRACEFS).exists() {
        let mounted = tokio::process::Command::new("mount")
            .args(["-t", "tracefs", "nodev", TRACEFS])
            .output()
            .await;
        match mounted {
            Ok(o) if o.status.success() => {
                notes.push(format!("tracefs was not mounted: mounted it at {TRACEFS}"))
            }
            Ok(o) => notes.push(format!(
                "tracefs is not mounted and `mount -t tracefs nodev {TRACEFS}` failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => notes.push(format!("tracefs is not mounted and mount cannot run: {e}")),
        }
    }
    // A trial on a short command tells whether the events can be counted.
    let trial = tokio::process::Command::new("perf")
        .args(["stat", "-x", ",", "-e", EVENTS, "--", "true"])
        .output()
        .await;
    let perf_why = match trial {
        Ok(o)
            if o.status.success() && parse_perf(&String::from_utf8_lossy(&o.stderr)).is_some() =>
        {
            return (Method::Perf, notes)
        }
        Ok(o) => format!(
            "perf cannot count {EVENTS}: {}",
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .next()
                .unwrap_or("no output")
        ),
        Err(e) => format!("perf cannot run ({e}; Debian: apt-get install linux-perf)"),
    };
    let strace = tokio::process::Command::new("strace")
        .arg("-V")
        .output()
        .await;
    if strace.is_ok_and(|o| o.status.success()) {
        notes.push(format!(
            "{perf_why}; counting with strace instead, in a separate short phase after each measured one (strace slows the process)"
        ));
        (Method::Strace, notes)
    } else {
        notes.push(format!("{perf_why}; strace is not installed either"));
        (Method::None(perf_why), notes)
    }
}

/// A counter attached to one process.
pub struct Counter {
    child: tokio::process::Child,
    out: PathBuf,
    _dir: tempfile::TempDir,
    method: Method,
}

impl Counter {
    /// Attaches to `pid` (and all its threads) with `method`.
    pub async fn start(method: &Method, pid: u32) -> Result<Counter, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("no temporary directory: {e}"))?;
        let out = dir.path().join("count");
        let mut cmd = match method {
            Method::Perf => {
                let mut c = tokio::process::Command::new("perf");
                c.args(["stat", "-x", ",", "-e", EVENTS, "-o"]).arg(&out);
                c
            }
            Method::Strace => {
                let mut c = tokio::process::Command::new("strace");
                c.args([
                    "-f",
                    "-c",
                    "-e",
                    "trace=fsync,fdatasync,sync_file_range",
                    "-o",
                ])
                .arg(&out);
                c
            }
            Method::None(why) => return Err(why.clone()),
        };
        cmd.args(["-p", &pid.to_string()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start the counter: {e}"))?;
        // Attaching to every thread takes a moment; what happens before is
        // not counted.
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(Counter {
            child,
            out,
            _dir: dir,
            method: method.clone(),
        })
    }

    /// Detaches and returns the calls counted.
    pub async fn stop(mut self) -> Result<Counts, String> {
        let Some(pid) = self.child.id() else {
            return Err("the counter exited early".into());
        };
        let _ = tokio::process::Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()
            .await;
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
            return Err("the counter did not stop within 10 s of SIGINT".into());
        }
        let text = std::fs::read_to_string(&self.out)
            .map_err(|e| format!("the counter wrote nothing: {e}"))?;
        match self.method {
            Method::Perf => parse_perf(&text),
            _ => Some(parse_strace(&text)),
        }
        .ok_or_else(|| format!("cannot read the counter's output: {}", text.trim()))
    }
}

/// The counts in `perf stat -x ,` output (one line per event, the count
/// first); `None` if an event was not counted.
pub fn parse_perf(text: &str) -> Option<Counts> {
    let mut counts = Counts::default();
    let mut seen = 0;
    for line in text.lines() {
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() < 3 || !fields[2].starts_with("syscalls:") {
            continue;
        }
        let n = fields[0].trim().parse::<u64>().ok()?;
        if fields[2].ends_with("sync_file_range") {
            counts.sync_file_range += n;
        } else {
            counts.fsyncs += n;
        }
        seen += 1;
    }
    (seen > 0).then_some(counts)
}

/// The calls in `strace -c` output (its table has the calls in the fourth
/// column and the syscall's name last); none listed means none made.
pub fn parse_strace(text: &str) -> Counts {
    let mut counts = Counts::default();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let calls = || f.get(3).and_then(|c| c.parse::<u64>().ok()).unwrap_or(0);
        match f.last() {
            Some(&"fsync") | Some(&"fdatasync") if f.len() >= 5 => counts.fsyncs += calls(),
            Some(&"sync_file_range") if f.len() >= 5 => counts.sync_file_range += calls(),
            _ => {}
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_csv_counts_are_summed_and_an_uncounted_event_gives_none() {
        let out = "# started on Wed Dec  2 05:40:00 2026\n\n\
                   120,,syscalls:sys_enter_fsync,5001234,100.00,,\n\
                   35,,syscalls:sys_enter_fdatasync,5001234,100.00,,\n\
                   7,,syscalls:sys_enter_sync_file_range,5001234,100.00,,\n";
        assert_eq!(
            parse_perf(out),
            Some(Counts {
                fsyncs: 155,
                sync_file_range: 7
            })
        );
        let uncounted = "<not counted>,,syscalls:sys_enter_fsync,0,0.00,,\n";
        assert_eq!(parse_perf(uncounted), None);
        assert_eq!(parse_perf("nothing here\n"), None);
    }

    #[test]
    fn strace_summary_counts_fsync_and_fdatasync() {
        let out = "% time     seconds  usecs/call     calls    errors syscall\n\
                   ------ ----------- ----------- --------- --------- ----------------\n\
                    80.00    0.400000         400      1000           fdatasync\n\
                    20.00    0.100000         500       200         1 fsync\n\
                    0.00    0.000000           0         9           sync_file_range\n\
                   ------ ----------- ----------- --------- --------- ----------------\n\
                   100.00    0.500000         416      1200         1 total\n";
        assert_eq!(
            parse_strace(out),
            Counts {
                fsyncs: 1200,
                sync_file_range: 9
            }
        );
        assert_eq!(parse_strace(""), Counts::default());
    }
}
