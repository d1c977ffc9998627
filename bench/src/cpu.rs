//! CPU time of server processes, from `/proc/<pid>/stat` (user + system),
//! so that a phase can report CPU seconds per operation next to its
//! throughput.
//!
//! Must never: fail a run. A process it cannot read (gone, or no /proc)
//! counts as no figure, and the report says "-".

use std::sync::OnceLock;

/// Clock ticks per second of `/proc/<pid>/stat`'s times (`getconf
/// CLK_TCK`; 100 on every Linux this runs on when that cannot be asked).
fn ticks_per_second() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// User plus system CPU seconds of process `pid`, or `None` when it cannot
/// be read.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let (user, sys) = user_sys(pid)?;
    Some(user + sys)
}

/// User and system CPU seconds (apart) of process `pid`, or `None` when it
/// cannot be read.
pub fn user_sys(pid: u32) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (user, sys) = user_sys_ticks(&stat)?;
    let t = ticks_per_second();
    Some((user as f64 / t, sys as f64 / t))
}

/// utime + stime, in clock ticks, of one `/proc/<pid>/stat` line.
#[cfg(test)]
fn ticks(stat: &str) -> Option<u64> {
    let (user, sys) = user_sys_ticks(stat)?;
    Some(user + sys)
}

/// utime and stime, in clock ticks, of one `/proc/<pid>/stat` line.
fn user_sys_ticks(stat: &str) -> Option<(u64, u64)> {
    // The command name (field 2) is in parentheses and may hold spaces and
    // parentheses; the fields after the last ')' start at field 3 (state),
    // so utime (14) and stime (15) are the 12th and 13th.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime, stime))
}

/// The summed CPU seconds of `pids`, or `None` if any of them cannot be
/// read (a sum over fewer processes would understate the cost).
pub fn total(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|p| cpu_seconds(*p)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utime_and_stime_after_a_name_with_spaces_and_parentheses() {
        let line = "4242 (nats server) (x)) S 1 4242 4242 0 -1 4194560 1517 0 0 0 \
                    250 17 0 0 20 0 12 0 123456 1234567 890 18446744073709551615";
        assert_eq!(ticks(line), Some(267));
        assert_eq!(user_sys_ticks(line), Some((250, 17)));
        assert_eq!(ticks("4242 (cut short) S 1 2"), None);
    }

    #[test]
    fn a_process_that_cannot_be_read_gives_no_figure() {
        let me = std::process::id();
        assert!(total(&[me]).is_some());
        assert_eq!(total(&[me, u32::MAX]), None);
        assert_eq!(total(&[]), None);
    }
}
