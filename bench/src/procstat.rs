//! What `/proc` and the file system say about a server process beyond its
//! CPU time (that is `cpu.rs`): context switches of all its threads, its
//! resident memory, and the disk use of its data directory.
//!
//! Must never: fail a run. Whatever cannot be read is `None` (the report
//! then says "-").

use std::path::Path;

/// Voluntary plus involuntary context switches of one `/proc/.../status`.
pub fn switches_of(status: &str) -> Option<u64> {
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim_start_matches(':').trim().parse().ok())
    };
    Some(field("voluntary_ctxt_switches")? + field("nonvoluntary_ctxt_switches")?)
}

/// Resident set size in bytes (`VmRSS`, in kB) of one `/proc/<pid>/status`.
pub fn rss_of(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().next()?.parse().ok()?;
    Some(kb * 1024)
}

/// Context switches of every thread process `pid` has now, summed over
/// `/proc/<pid>/task/*/status` (threads that already exited are not
/// counted: a delta over a phase misses those that ended during it).
pub fn context_switches(pid: u32) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut sum = 0u64;
    let mut any = false;
    for task in tasks.flatten() {
        // A thread may end between the listing and the read: skip it.
        if let Ok(status) = std::fs::read_to_string(task.path().join("status")) {
            if let Some(n) = switches_of(&status) {
                sum += n;
                any = true;
            }
        }
    }
    any.then_some(sum)
}

/// Resident memory of process `pid`, in bytes.
pub fn rss(pid: u32) -> Option<u64> {
    rss_of(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// Disk blocks (as `du` counts them, in bytes) of everything under `dir`;
/// entries that vanish while it walks are skipped.
pub fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0u64;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(meta) = e.metadata() else { continue };
            total += meta.blocks() * 512;
            if meta.is_dir() {
                todo.push(e.path());
            }
        }
    }
    total
}

/// `bytes` as MiB with one decimal.
pub fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tmicro\nState:\tS (sleeping)\nVmRSS:\t   51200 kB\n\
                          Threads:\t12\nvoluntary_ctxt_switches:\t1500\n\
                          nonvoluntary_ctxt_switches:\t42\n";

    #[test]
    fn switches_and_rss_from_a_status_file() {
        assert_eq!(switches_of(STATUS), Some(1542));
        assert_eq!(rss_of(STATUS), Some(51200 * 1024));
        assert_eq!(switches_of("Name:\tx\nvoluntary_ctxt_switches:\t3\n"), None);
        assert_eq!(rss_of("Name:\tkthread\n"), None);
    }

    #[test]
    fn this_process_has_threads_switches_and_memory() {
        let me = std::process::id();
        assert!(context_switches(me).is_some());
        assert!(rss(me).is_some_and(|r| r > 0));
        assert_eq!(context_switches(u32::MAX), None);
    }

    #[test]
    fn disk_usage_counts_files_in_subdirectories() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/f"), vec![7u8; 100_000]).unwrap();
        assert!(disk_usage(dir.path()) >= 100_000);
        assert_eq!(disk_usage(&dir.path().join("missing")), 0);
    }
}
