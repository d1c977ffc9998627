//! Making sled's writes durable: a real `fdatasync` after sled's flush.
//!
//! sled 0.34's `flush`/`flush_async` end, on Linux, in
//! `sync_file_range(WAIT_BEFORE | WRITE | WAIT_AFTER)` on its log file
//! (`src/pagecache/iobuf.rs`), not in `fsync`. `sync_file_range` starts and
//! waits for the writeback of the dirty pages only: it writes no file
//! metadata (the log file's new size when it grew) and does not flush the
//! device's volatile write cache, so after a power cut the data it "synced"
//! may be gone. Only sled's background flusher calls `sync_all`, about every
//! 500 ms. Values over sled's blob threshold (~128 KiB: snapshots, large
//! writes) are written to files in `blobs/` that sled never syncs at all.
//!
//! So every point where openraft is told something is on disk ends with
//! [`Durable::sync`]: sled's flush (which orders and writes the pages), then
//! `fdatasync` of new blob files, of the `db` file (kept open: no open per
//! flush) and, when files appeared or were renamed in them, of the data
//! directory and `blobs/` (sled renames its `snap.*` files into place and
//! never syncs the directory). sled's log is one ordered file and recovery
//! stops at the first torn write, so one sync makes everything written
//! before it durable too (state machine batches included).
//!
//! One flusher: every sync of a database goes through one thread (its
//! flusher), never the runtime. Callers queue a request and wait; the
//! flusher takes every request queued so far, runs one sled flush and one
//! round of `fdatasync` for all of them, and answers them all. A request
//! queued before a sync starts was made after its caller's writes, so that
//! sync covers them; requests that arrive during a sync wait for the next.
//! So concurrent appends, votes and snapshot saves share fsyncs, and sled's
//! flush is never called concurrently (sled 0.34's concurrent
//! `flush_async` is known to deadlock).
//!
//! Feature `no-fsync` (off by default, never for a real build) turns
//! [`Durable::sync`] into a no-op and turns sled's background flusher off
//! ([`configure`]): nothing reaches the disk until the OS writes it back. It
//! exists only so the power-loss harness can prove it catches a missing
//! fsync (its self-test must then fail with lost writes).
//!
//! Must never: report success before the `fdatasync` returned, or block a
//! runtime thread on the disk.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

/// Applies the build's flush policy to a sled config: with `no-fsync`,
/// sled's background flusher (which calls `sync_all`) is turned off.
pub(crate) fn configure(config: sled::Config) -> sled::Config {
    if cfg!(feature = "no-fsync") {
        config.flush_every_ms(None)
    } else {
        config
    }
}

/// Syncs one sled database's files. Cheap to clone.
#[derive(Clone)]
pub struct Durable {
    inner: Arc<Inner>,
    /// The flusher's queue; the flusher stops when the last handle goes.
    flush: Arc<mpsc::Sender<Waiter>>,
}

type Waiter = tokio::sync::oneshot::Sender<std::io::Result<()>>;

struct Inner {
    db: sled::Db,
    /// sled's log file, `<dir>/db`, open for the life of the database.
    log: File,
    dir: PathBuf,
    /// Names seen (and synced) in the data dir and in `blobs/`, to notice
    /// files that appeared since the last sync.
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    dir: HashSet<OsString>,
    /// Each blob file with the length it had when it was last synced: a
    /// blob can be listed while sled is still writing it, so a name seen
    /// before is synced again whenever its length changed.
    blobs: HashMap<OsString, u64>,
}

impl Durable {
    /// Opens the database's files and makes what sled created on open
    /// (`db`, `conf`, `blobs/`, the directory itself) durable. Blocking:
    /// call it where opening sled is allowed to block.
    pub(crate) fn open(db: sled::Db, dir: &Path) -> std::io::Result<Durable> {
        let log = File::open(dir.join("db"))?;
        let inner = Arc::new(Inner {
            db,
            log,
            dir: dir.to_path_buf(),
            seen: Mutex::new(Seen::default()),
        });
        let (tx, rx) = mpsc::channel();
        // The flusher holds the database only during a round, so it closes
        // when the last handle goes (a reopen finds it unlocked).
        let flusher = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("micro-raft-flush".into())
            .spawn(move || serve(&flusher, rx))?;
        let d = Durable {
            inner,
            flush: Arc::new(tx),
        };
        if !cfg!(feature = "no-fsync") {
            if let Ok(conf) = File::open(dir.join("conf")) {
                conf.sync_all()?;
            }
            d.inner.sync_blocking(true)?;
            // The data dir itself may be new: its entry in the parent too.
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                File::open(parent)?.sync_all()?;
            }
        }
        Ok(d)
    }

    /// Flushes sled and fsyncs what holds it; returns once everything
    /// written before the call is on disk (sharing the flusher's next round
    /// with every other caller queued by then).
    pub async fn sync(&self) -> std::io::Result<()> {
        if cfg!(feature = "no-fsync") {
            return Ok(());
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let stopped = || std::io::Error::other("the disk flusher has stopped");
        self.flush.send(tx).map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
}

/// The flusher thread: one round per batch of queued requests.
fn serve(inner: &std::sync::Weak<Inner>, rx: mpsc::Receiver<Waiter>) {
    while let Ok(first) = rx.recv() {
        let mut waiters = vec![first];
        waiters.extend(rx.try_iter());
        let outcome = match inner.upgrade() {
            Some(inner) => inner.sync_blocking(false),
            None => Err(std::io::Error::other("the database is closed")),
        };
        for w in waiters {
            let _ = w.send(match &outcome {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
            });
        }
    }
}

impl Inner {
    fn sync_blocking(&self, force_dirs: bool) -> std::io::Result<()> {
        self.db
            .flush()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let blobs_dir = self.dir.join("blobs");
        let new_blobs = changed_blobs(&blobs_dir, &mut seen.blobs)?;
        for name in &new_blobs {
            match File::open(blobs_dir.join(name)) {
                Ok(f) => f.sync_data()?,
                // Removed again already (sled rewrote or dropped it).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        if force_dirs || !new_blobs.is_empty() {
            sync_dir(&blobs_dir)?;
        }
        let new_files = new_names(&self.dir, &mut seen.dir)?;
        self.log.sync_data()?;
        if force_dirs || !new_files.is_empty() {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

/// Names in `dir` not in `seen`; `seen` becomes the current listing.
fn new_names(dir: &Path, seen: &mut HashSet<OsString>) -> std::io::Result<Vec<OsString>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut now = HashSet::new();
    for entry in entries {
        now.insert(entry?.file_name());
    }
    let fresh = now.difference(seen).cloned().collect();
    *seen = now;
    Ok(fresh)
}

/// Blob files in `dir` that are new or whose length changed since `seen`
/// (which becomes the current listing with the lengths read now; a write
/// after that read is either covered by the sync that follows or changes
/// the length again).
fn changed_blobs(dir: &Path, seen: &mut HashMap<OsString, u64>) -> std::io::Result<Vec<OsString>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut now = HashMap::new();
    for entry in entries {
        let entry = entry?;
        let len = match entry.metadata() {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        now.insert(entry.file_name(), len);
    }
    let changed = now
        .iter()
        .filter(|(name, len)| seen.get(*name) != Some(len))
        .map(|(name, _)| name.clone())
        .collect();
    *seen = now;
    Ok(changed)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    match File::open(dir) {
        Ok(d) => d.sync_all(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

// Helpers for the snapshot files, which live next to sled's files but are
// not sled's: the snapshot module writes them and makes them durable itself.
impl Durable {
    /// The data directory sled was opened in.
    pub(crate) fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// [`Durable::sync`] for callers already on the blocking pool (or
    /// opening, where blocking is allowed).
    pub(crate) fn sync_blocking(&self) -> std::io::Result<()> {
        if cfg!(feature = "no-fsync") {
            return Ok(());
        }
        self.inner.sync_blocking(false)
    }
}

/// Makes `file`'s contents and its entry in `dir` durable (`fsync` of the
/// file, then of the directory). Blocking.
pub(crate) fn sync_file_and_dir(file: &File, dir: &Path) -> std::io::Result<()> {
    if cfg!(feature = "no-fsync") {
        return Ok(());
    }
    file.sync_all()?;
    sync_dir(dir)
}
