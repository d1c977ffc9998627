//! Snapshots of the state machine: building one from the applied state,
//! keeping the current one, and installing one sent by the leader — all
//! streaming, so no step holds the whole state in memory.
//!
//! A snapshot is a file in `<data dir>/snapshots/`, named by a 16-hex-digit
//! id this module draws ([`fresh_name`]; a name from disk or the network
//! never becomes a path without [`file_path`]'s check). `<id>.snap` is kept,
//! `<id>.part` is being received. Only the current `.snap` is kept (its
//! [`SnapshotMeta`] and id are in the `snapshot` sled tree, `meta` and
//! `file`) plus the `.part` files of streams still arriving; older ones go
//! when a newer one is kept, strays on open. openraft's chunked transport
//! sends and receives the file as it is (`SnapshotData` is a
//! `tokio::fs::File`).
//!
//! File format (little-endian): the magic `MICROSN1`; per pair
//! `u32 key length, u32 value length, key, value`; the end mark
//! `u32::MAX`, `u64` pair count, and the CRC-32 of every byte before it.
//! A file that is torn, truncated, corrupt or has bytes after its trailer is
//! refused with one sentence saying which, before anything is installed.
//!
//! Building does not block apply. Under the gate (so between two applied
//! entries) the builder takes the cut: the applied log id and membership,
//! and starts the [`Cut`]'s before-image map. It then releases the gate and
//! walks the `sm` tree on the blocking pool while apply goes on. Apply calls
//! [`Cut::record`] with the keys an entry writes, under the gate's write
//! lock and *before* the entry's batch is applied; for each key the walk has
//! not yet passed and that has no before-image yet, it stores the key's
//! value in the tree at that moment (or `None`). First write wins, so a
//! before-image is the key's value at the cut: any earlier write after the
//! cut would have recorded it first. The walk, for each key it yields,
//! under the same mutex marks the key passed and takes the before-image if
//! there is one (`None`: created after the cut, left out) or else the value
//! it read. Why that is the value at the cut: sled's iterator reads `k` at
//! some moment `t`; if a write to `k` was applied before `t`, its record
//! came before its batch, so before `t`, and the walk finds it; if none
//! was, the value read is still the cut's. Keys the walk never yields but
//! which have a before-image (`Some`) were deleted after the cut before the
//! walk got there: they are written after the walk. Keys at or before the
//! walk's position are not recorded: their bytes are already out. The map
//! holds only keys written during a build, with their old values (memory
//! grows with the writes made while a build runs, not with the state).
//! Metadata keys (`m…`) are not part of a snapshot and are never recorded.
//! One build runs at a time; an install waits for a running build.
//!
//! Installing: the received file is synced and checked whole (one read),
//! renamed to `.snap` and synced with its directory. Then, under the gate,
//! a durable `installing` marker naming the file and the meta is written,
//! the `sm` tree is cleared and loaded in bounded batches, and the last
//! batch writes the applied log id and membership; the marker goes with the
//! new current snapshot record, then one sync. A crash anywhere in between
//! leaves the marker, and opening the state machine redoes the install from
//! the kept file before Raft starts, so after a restart the state is never
//! a mix. While an install runs, local reads on *that* node may see a
//! partial state (it is catching up and serves nothing consistent anyway).
//!
//! All file I/O and tree walks run on the blocking pool, never on the
//! runtime; buffers are bounded (1 MiB of file buffer, sled batches of at
//! most [`BATCH_BYTES`] or [`BATCH_KEYS`]).
//!
//! Must never: tell openraft a snapshot is kept before its file and
//! directory are synced; install a file that fails its check; leave a
//! half-installed state that survives a restart; hold the state in memory;
//! block apply while a snapshot is built.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use openraft::{
    LogId, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership,
};
use serde::{Deserialize, Serialize};

use crate::durable::{sync_file_and_dir, Durable};
use crate::state_machine::{encode, Change, StateMachine, META_APPLIED, META_MEMBERSHIP};
use crate::{BasicNode, NodeId, TypeConfig};

type SErr = StorageError<NodeId>;

/// `snapshot` tree: the current snapshot's meta.
pub(crate) const SNAP_META: &[u8] = b"meta";
/// `snapshot` tree: the current snapshot's file id.
const SNAP_FILE: &[u8] = b"file";
/// `snapshot` tree: an install in progress ([`Installing`]).
const SNAP_INSTALLING: &[u8] = b"installing";
/// `snapshot` tree: the whole snapshot as one value, as builds before
/// snapshot files kept it; converted to a file on open.
const LEGACY_DATA: &[u8] = b"data";

const DIR: &str = "snapshots";
const MAGIC: &[u8; 8] = b"MICROSN1";
const END: u32 = u32::MAX;
/// Larger than any key or value a log entry can carry (the peer message
/// limit is 64 MiB): a bigger length is corruption, not data.
const MAX_FIELD: u32 = 64 << 20;
/// Bounds of one sled batch while installing.
pub(crate) const BATCH_BYTES: usize = 4 << 20;
pub(crate) const BATCH_KEYS: usize = 4096;
const IO_BUF: usize = 1 << 20;
/// `sm` tree keys starting with this are metadata, not snapshot data.
const META_PREFIX: u8 = b'm';

/// Called by a build with the number of keys walked so far (tests use it
/// to pause a build half-way).
pub type BuildHook = Arc<dyn Fn(u64) + Send + Sync>;

/// The durable record of an install in progress.
#[derive(Serialize, Deserialize)]
struct Installing {
    meta: SnapshotMeta<NodeId, BasicNode>,
    file: String,
}

#[derive(Deserialize)]
struct LegacyBody {
    pairs: Vec<(Vec<u8>, Vec<u8>)>,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// `<id>.snap`: complete, checked, synced.
    Kept,
    /// `<id>.part`: being received.
    Part,
}

impl Kind {
    fn ext(self) -> &'static str {
        match self {
            Kind::Kept => "snap",
            Kind::Part => "part",
        }
    }
}

/// A new file id: the time in nanoseconds, 16 hex digits, so ids sort by
/// age (a later `.part` is a later stream).
fn fresh_name() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    format!("{nanos:016x}")
}

fn valid_name(name: &str) -> bool {
    name.len() == 16
        && name
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The one place a snapshot file's path is made: only ids of our own form.
fn file_path(dir: &Path, name: &str, kind: Kind) -> io::Result<PathBuf> {
    if !valid_name(name) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{name:?} is not a snapshot file id"),
        ));
    }
    Ok(dir.join(format!("{name}.{}", kind.ext())))
}

/// Creates a new, empty snapshot file of `kind` under a fresh id.
fn create_new(dir: &Path, kind: Kind) -> io::Result<(String, File)> {
    loop {
        let name = fresh_name();
        let opened = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(file_path(dir, &name, kind)?);
        match opened {
            Ok(f) => return Ok((name, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// Writes the snapshot format, hashing as it goes.
struct SnapWriter {
    out: BufWriter<File>,
    crc: crc32fast::Hasher,
    count: u64,
}

impl SnapWriter {
    fn new(file: File) -> io::Result<SnapWriter> {
        let mut w = SnapWriter {
            out: BufWriter::with_capacity(IO_BUF, file),
            crc: crc32fast::Hasher::new(),
            count: 0,
        };
        w.write(MAGIC)?;
        Ok(w)
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.crc.update(bytes);
        self.out.write_all(bytes)
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        let len = |n: usize| -> io::Result<u32> {
            u32::try_from(n)
                .ok()
                .filter(|n| *n <= MAX_FIELD)
                .ok_or_else(|| invalid("a key or value is too large for a snapshot"))
        };
        let (kl, vl) = (len(key.len())?, len(value.len())?);
        self.write(&kl.to_le_bytes())?;
        self.write(&vl.to_le_bytes())?;
        self.write(key)?;
        self.write(value)?;
        self.count += 1;
        Ok(())
    }

    /// Writes the trailer and returns the file (flushed, not yet synced).
    fn finish(mut self) -> io::Result<File> {
        self.write(&END.to_le_bytes())?;
        let count = self.count.to_le_bytes();
        self.write(&count)?;
        let crc = self.crc.clone().finalize();
        self.out.write_all(&crc.to_le_bytes())?;
        self.out.into_inner().map_err(|e| e.into_error())
    }
}

/// Reads the snapshot format, checking it as it goes: the last pair comes
/// only after the trailer checked out.
struct SnapReader<R: Read> {
    inp: BufReader<R>,
    crc: crc32fast::Hasher,
    count: u64,
    /// The trailer was read and checked out.
    done: bool,
}

impl<R: Read> SnapReader<R> {
    fn new(inp: R) -> io::Result<SnapReader<R>> {
        let mut r = SnapReader {
            inp: BufReader::with_capacity(IO_BUF, inp),
            crc: crc32fast::Hasher::new(),
            count: 0,
            done: false,
        };
        let mut magic = [0u8; 8];
        r.exact(&mut magic)?;
        if &magic != MAGIC {
            return Err(invalid("this is not a Micro snapshot file"));
        }
        Ok(r)
    }

    fn exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.inp.read_exact(buf).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                invalid("the snapshot file is truncated")
            } else {
                e
            }
        })?;
        self.crc.update(buf);
        Ok(())
    }

    fn u32(&mut self) -> io::Result<u32> {
        let mut b = [0u8; 4];
        self.exact(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// The next pair, or `None` after a trailer that checked out. A corrupt
    /// file may yield pairs before its error: callers that must not act on
    /// a bad file read it whole first ([`verify`]).
    fn next(&mut self) -> io::Result<Option<(Vec<u8>, Vec<u8>)>> {
        if self.done {
            return Ok(None);
        }
        let kl = self.u32()?;
        if kl == END {
            let mut count = [0u8; 8];
            self.exact(&mut count)?;
            let want = self.crc.clone().finalize();
            let mut crc = [0u8; 4];
            self.inp.read_exact(&mut crc).map_err(|e| {
                if e.kind() == io::ErrorKind::UnexpectedEof {
                    invalid("the snapshot file is truncated")
                } else {
                    e
                }
            })?;
            if u32::from_le_bytes(crc) != want {
                return Err(invalid(
                    "the snapshot file is corrupt (its checksum does not match)",
                ));
            }
            if u64::from_le_bytes(count) != self.count {
                return Err(invalid("the snapshot file is corrupt (wrong pair count)"));
            }
            let mut extra = [0u8; 1];
            if self.inp.read(&mut extra)? != 0 {
                return Err(invalid("the snapshot file has bytes after its end"));
            }
            self.done = true;
            return Ok(None);
        }
        let vl = self.u32()?;
        if kl > MAX_FIELD || vl > MAX_FIELD {
            return Err(invalid(
                "the snapshot file is corrupt (a length is out of range)",
            ));
        }
        let mut key = vec![0u8; kl as usize];
        self.exact(&mut key)?;
        let mut value = vec![0u8; vl as usize];
        self.exact(&mut value)?;
        self.count += 1;
        Ok(Some((key, value)))
    }
}

/// Reads a snapshot file whole and checks it; returns its pair count.
fn verify(file: &File) -> io::Result<u64> {
    let mut r = SnapReader::new(file)?;
    while r.next()?.is_some() {}
    Ok(r.count)
}

/// The before-images of keys written while a build walks the tree (see
/// the module doc for why the walk's output is exactly the cut).
#[derive(Default)]
pub(crate) struct Cut {
    /// Whether a build is walking: apply's fast path when not.
    active: AtomicBool,
    state: Mutex<CutState>,
}

#[derive(Default)]
struct CutState {
    active: bool,
    /// The last key the walk yielded.
    passed: Option<Vec<u8>>,
    /// Key -> its value at the cut (`None`: absent at the cut).
    before: BTreeMap<Vec<u8>, Option<sled::IVec>>,
}

impl Cut {
    fn lock(&self) -> std::sync::MutexGuard<'_, CutState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Called by apply, under the gate's write lock, before the batch that
    /// writes `keys` is applied to `tree`.
    pub(crate) fn record<'a>(
        &self,
        tree: &sled::Tree,
        keys: impl Iterator<Item = &'a Vec<u8>>,
    ) -> sled::Result<()> {
        if !self.active.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut s = self.lock();
        if !s.active {
            return Ok(());
        }
        for k in keys {
            if k.first() == Some(&META_PREFIX)
                || s.passed.as_ref().is_some_and(|p| k <= p)
                || s.before.contains_key(k)
            {
                continue;
            }
            let old = tree.get(k)?;
            s.before.insert(k.clone(), old);
        }
        Ok(())
    }

    /// Starts a cut; call under the gate.
    fn begin(&self) {
        let mut s = self.lock();
        *s = CutState {
            active: true,
            ..Default::default()
        };
        self.active.store(true, Ordering::Release);
    }

    /// The walk yielded `key` with `value`: what the snapshot holds for it.
    fn at_cut(&self, key: &[u8], value: sled::IVec) -> Option<sled::IVec> {
        let mut s = self.lock();
        s.passed = Some(key.to_vec());
        match s.before.remove(key) {
            Some(before) => before,
            None => Some(value),
        }
    }

    /// Ends the cut: the keys present at the cut that the walk never
    /// yielded (deleted after the cut), with their values then.
    fn finish(&self) -> Vec<(Vec<u8>, sled::IVec)> {
        let mut s = self.lock();
        self.active.store(false, Ordering::Release);
        let before = std::mem::take(&mut s.before);
        *s = CutState::default();
        before
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect()
    }
}

fn sled_io(e: sled::Error) -> io::Error {
    io::Error::other(e.to_string())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io::Error::other(format!("a snapshot task failed: {e}")))?
}

/// Walks `tree` into a new `.snap` file in `dir`, emitting the cut's state;
/// returns its id once the file and directory are synced.
fn write_cut(
    tree: &sled::Tree,
    cut: &Cut,
    dir: &Path,
    hook: Option<BuildHook>,
) -> io::Result<String> {
    let (name, file) = create_new(dir, Kind::Kept)?;
    let written = (|| {
        let mut w = SnapWriter::new(file)?;
        let mut walked = 0u64;
        for item in tree.iter() {
            let (k, v) = item.map_err(sled_io)?;
            if k.first() == Some(&META_PREFIX) {
                continue;
            }
            if let Some(v) = cut.at_cut(&k, v) {
                w.put(&k, &v)?;
            }
            walked += 1;
            if let Some(hook) = &hook {
                hook(walked);
            }
        }
        for (k, v) in cut.finish() {
            w.put(&k, &v)?;
        }
        let file = w.finish()?;
        sync_file_and_dir(&file, dir)
    })();
    if let Err(e) = written {
        cut.finish();
        let _ = std::fs::remove_file(file_path(dir, &name, Kind::Kept)?);
        return Err(e);
    }
    Ok(name)
}

/// Takes a received snapshot file: finds it among our `.part` files (or
/// copies it into one when openraft hands over another file), checks it
/// whole, and renames it to `.snap`, synced. Returns its id.
fn accept(dir: &Path, mut file: File) -> io::Result<String> {
    let md = file.metadata()?;
    let (name, file) = match find_part(dir, md.dev(), md.ino())? {
        Some(name) => (name, file),
        None => {
            file.seek(SeekFrom::Start(0))?;
            let (name, copy) = create_new(dir, Kind::Part)?;
            let mut out = BufWriter::with_capacity(IO_BUF, copy);
            io::copy(&mut BufReader::with_capacity(IO_BUF, &file), &mut out)?;
            (name, out.into_inner().map_err(|e| e.into_error())?)
        }
    };
    let mut file = file;
    file.seek(SeekFrom::Start(0))?;
    if let Err(e) = verify(&file) {
        // Refused: the sender starts a new stream.
        remove(dir, &name, Kind::Part);
        return Err(e);
    }
    file.sync_all()?;
    std::fs::rename(
        file_path(dir, &name, Kind::Part)?,
        file_path(dir, &name, Kind::Kept)?,
    )?;
    sync_file_and_dir(&file, dir)?;
    // Streams begun before this one were abandoned: openraft installs in
    // order. Later ones may still be arriving.
    for (other, kind) in listing(dir)? {
        if kind == Kind::Part && other < name {
            remove(dir, &other, kind);
        }
    }
    Ok(name)
}

/// The id of the `.part` file in `dir` with this device and inode.
fn find_part(dir: &Path, dev: u64, ino: u64) -> io::Result<Option<String>> {
    for (name, kind) in listing(dir)? {
        if kind != Kind::Part {
            continue;
        }
        match std::fs::metadata(file_path(dir, &name, kind)?) {
            Ok(m) if m.dev() == dev && m.ino() == ino => return Ok(Some(name)),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// Snapshot files in `dir` (ids and kinds); other names are left out.
fn listing(dir: &Path) -> io::Result<Vec<(String, Kind)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let (id, kind) = match name.rsplit_once('.') {
            Some((id, "snap")) => (id, Kind::Kept),
            Some((id, "part")) => (id, Kind::Part),
            _ => continue,
        };
        if valid_name(id) {
            out.push((id.to_string(), kind));
        }
    }
    Ok(out)
}

fn remove(dir: &Path, name: &str, kind: Kind) {
    if let Ok(path) = file_path(dir, name, kind) {
        if let Err(e) = std::fs::remove_file(&path) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!("cannot remove old snapshot {}: {e}", path.display());
            }
        }
    }
}

/// Loads the kept snapshot `name` into `tree` in bounded batches, then
/// makes it the current snapshot and drops the install marker, synced.
fn load(
    tree: &sled::Tree,
    snap: &sled::Tree,
    durable: &Durable,
    dir: &Path,
    name: &str,
    meta: &SnapshotMeta<NodeId, BasicNode>,
) -> io::Result<()> {
    loop {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for k in tree.iter().keys().take(BATCH_KEYS) {
            batch.remove(k.map_err(sled_io)?);
            n += 1;
        }
        if n == 0 {
            break;
        }
        tree.apply_batch(batch).map_err(sled_io)?;
    }
    let mut r = SnapReader::new(File::open(file_path(dir, name, Kind::Kept)?)?)?;
    let mut batch = sled::Batch::default();
    let (mut bytes, mut keys) = (0, 0);
    while let Some((k, v)) = r.next()? {
        bytes += k.len() + v.len();
        keys += 1;
        batch.insert(k, v);
        if bytes >= BATCH_BYTES || keys >= BATCH_KEYS {
            tree.apply_batch(std::mem::take(&mut batch))
                .map_err(sled_io)?;
            (bytes, keys) = (0, 0);
        }
    }
    let enc = |e: bincode::Error| io::Error::other(e.to_string());
    batch.insert(META_APPLIED, encode(&meta.last_log_id).map_err(enc)?);
    batch.insert(META_MEMBERSHIP, encode(&meta.last_membership).map_err(enc)?);
    tree.apply_batch(batch).map_err(sled_io)?;
    let mut current = sled::Batch::default();
    current.insert(SNAP_META, encode(meta).map_err(enc)?);
    current.insert(SNAP_FILE, name.as_bytes());
    current.remove(SNAP_INSTALLING);
    snap.apply_batch(current).map_err(sled_io)?;
    durable.sync_blocking()
}

/// Opens the snapshot directory of the state machine: converts a snapshot
/// kept the old way (one sled value), finishes an install a crash
/// interrupted, and removes files that are not the current snapshot.
/// Blocking; runs before Raft starts.
pub(crate) fn open_dir(
    tree: &sled::Tree,
    snap: &sled::Tree,
    durable: &Durable,
) -> Result<PathBuf, crate::Error> {
    let dir = durable.dir().join(DIR);
    let fail = |e: io::Error| {
        crate::Error::Storage(format!(
            "cannot open the snapshots in {}: {e}",
            dir.display()
        ))
    };
    let open = || -> io::Result<()> {
        if !dir.is_dir() {
            std::fs::create_dir_all(&dir)?;
            sync_file_and_dir(&File::open(&dir)?, durable.dir())?;
        }
        convert_legacy(snap, durable, &dir)?;
        if let Some(raw) = snap.get(SNAP_INSTALLING).map_err(sled_io)? {
            let marker: Installing = bincode::deserialize(&raw)
                .map_err(|_| invalid("the record of an interrupted install is corrupt"))?;
            tracing::info!(
                "finishing the install of snapshot {} that was interrupted",
                marker.meta.snapshot_id
            );
            load(tree, snap, durable, &dir, &marker.file, &marker.meta)?;
        }
        let current = current_name(snap)?;
        for (name, kind) in listing(&dir)? {
            if kind == Kind::Part || current.as_deref() != Some(name.as_str()) {
                remove(&dir, &name, kind);
            }
        }
        Ok(())
    };
    open().map_err(fail)?;
    Ok(dir)
}

fn current_name(snap: &sled::Tree) -> io::Result<Option<String>> {
    match snap.get(SNAP_FILE).map_err(sled_io)? {
        Some(raw) => String::from_utf8(raw.to_vec())
            .map(Some)
            .map_err(|_| invalid("the current snapshot's file id is corrupt")),
        None => Ok(None),
    }
}

/// A snapshot kept as one sled value (before snapshot files) becomes a file.
/// Once, and the only place the whole state is in memory.
fn convert_legacy(snap: &sled::Tree, durable: &Durable, dir: &Path) -> io::Result<()> {
    let Some(data) = snap.get(LEGACY_DATA).map_err(sled_io)? else {
        return Ok(());
    };
    let mut batch = sled::Batch::default();
    if snap.get(SNAP_META).map_err(sled_io)?.is_some() && current_name(snap)?.is_none() {
        let body: LegacyBody = bincode::deserialize(&data)
            .map_err(|_| invalid("the snapshot kept in the old format is corrupt"))?;
        let (name, file) = create_new(dir, Kind::Kept)?;
        let mut w = SnapWriter::new(file)?;
        for (k, v) in &body.pairs {
            w.put(k, v)?;
        }
        sync_file_and_dir(&w.finish()?, dir)?;
        batch.insert(SNAP_FILE, name.as_bytes());
    }
    batch.remove(LEGACY_DATA);
    snap.apply_batch(batch).map_err(sled_io)?;
    durable.sync_blocking()
}

impl StateMachine {
    /// Sets (or clears) a hook a build calls after each key it walks.
    #[doc(hidden)]
    pub fn on_build_progress(&self, hook: Option<BuildHook>) {
        *self.build_hook.lock().unwrap_or_else(|p| p.into_inner()) = hook;
    }

    pub(crate) async fn begin_receiving(&mut self) -> Result<Box<tokio::fs::File>, SErr> {
        let dir = self.snap_dir.clone();
        let (_, file) = blocking(move || create_new(&dir, Kind::Part))
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        Ok(Box::new(tokio::fs::File::from_std(file)))
    }

    pub(crate) async fn install(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), SErr> {
        let sig = meta.signature();
        let err =
            |e: io::Error| -> SErr { StorageIOError::write_snapshot(Some(sig.clone()), &e).into() };
        let file = snapshot.into_std().await;
        let dir = self.snap_dir.clone();
        let name = blocking(move || accept(&dir, file)).await.map_err(err)?;
        let _one = self.builds.clone().lock_owned().await;
        let _gate = self.gate.write().await;
        let marker = encode(&Installing {
            meta: meta.clone(),
            file: name.clone(),
        })
        .map_err(|e| err(io::Error::other(e.to_string())))?;
        self.snap
            .insert(SNAP_INSTALLING, marker)
            .map_err(|e| err(sled_io(e)))?;
        self.durable.sync().await.map_err(err)?;
        let (tree, snap, durable, dir) = (
            self.tree.clone(),
            self.snap.clone(),
            self.durable.clone(),
            self.snap_dir.clone(),
        );
        let (m, n) = (meta.clone(), name.clone());
        blocking(move || load(&tree, &snap, &durable, &dir, &n, &m))
            .await
            .map_err(err)?;
        self.prune(&name).await;
        let _ = self.changes.send(Arc::new(vec![Change::Reset]));
        Ok(())
    }

    pub(crate) async fn current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SErr> {
        let read_err = |e: io::Error| -> SErr { StorageIOError::read_snapshot(None, &e).into() };
        // A build may replace the current file between reading its id and
        // opening it: then read the id again.
        for _ in 0..3 {
            let meta = self.snap.get(SNAP_META).map_err(|e| read_err(sled_io(e)))?;
            let name = current_name(&self.snap).map_err(read_err)?;
            let (Some(meta), Some(name)) = (meta, name) else {
                return Ok(None);
            };
            let meta: SnapshotMeta<NodeId, BasicNode> = bincode::deserialize(&meta)
                .map_err(|_| read_err(invalid("the current snapshot's meta is corrupt")))?;
            let path = file_path(&self.snap_dir, &name, Kind::Kept).map_err(read_err)?;
            match tokio::fs::File::open(&path).await {
                Ok(file) => {
                    return Ok(Some(Snapshot {
                        meta,
                        snapshot: Box::new(file),
                    }))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(read_err(e)),
            }
        }
        Err(read_err(invalid("the current snapshot file is missing")))
    }

    /// Makes the synced file `name` the current snapshot, durably.
    async fn keep(&self, meta: &SnapshotMeta<NodeId, BasicNode>, name: &str) -> Result<(), SErr> {
        let err = |e: io::Error| -> SErr {
            StorageIOError::write_snapshot(Some(meta.signature()), &e).into()
        };
        let mut batch = sled::Batch::default();
        batch.insert(
            SNAP_META,
            encode(meta).map_err(|e| err(io::Error::other(e.to_string())))?,
        );
        batch.insert(SNAP_FILE, name.as_bytes());
        self.snap.apply_batch(batch).map_err(|e| err(sled_io(e)))?;
        self.durable.sync().await.map_err(err)?;
        self.prune(name).await;
        Ok(())
    }

    /// Removes kept snapshots other than `current` (a reader that opened
    /// one keeps reading it: the file lives until it is closed).
    async fn prune(&self, current: &str) {
        let dir = self.snap_dir.clone();
        let current = current.to_string();
        let pruned = blocking(move || {
            for (name, kind) in listing(&dir)? {
                if kind == Kind::Kept && name != current {
                    remove(&dir, &name, kind);
                }
            }
            Ok(())
        })
        .await;
        if let Err(e) = pruned {
            tracing::warn!("cannot remove old snapshots: {e}");
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SErr> {
        let _one = self.builds.clone().lock_owned().await;
        let (last_applied, membership) = {
            let _gate = self.gate.read().await;
            let last_applied: Option<LogId<NodeId>> = self.meta(META_APPLIED)?;
            let membership: StoredMembership<NodeId, BasicNode> = self.meta(META_MEMBERSHIP)?;
            self.cut.begin();
            (last_applied, membership)
        };
        let (tree, cut, dir) = (self.tree.clone(), self.cut.clone(), self.snap_dir.clone());
        let hook = self
            .build_hook
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let built = blocking(move || write_cut(&tree, &cut, &dir, hook)).await;
        let name = match built {
            Ok(name) => name,
            Err(e) => {
                self.cut.finish();
                return Err(StorageIOError::write_snapshot(None, &e).into());
            }
        };
        let snapshot_id = match &last_applied {
            Some(id) => format!("{}-{}-{name}", id.leader_id.term, id.index),
            None => format!("0-0-{name}"),
        };
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: membership,
            snapshot_id,
        };
        self.keep(&meta, &name).await?;
        let path = file_path(&self.snap_dir, &name, Kind::Kept)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(file),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, pairs: &[(&[u8], &[u8])]) -> PathBuf {
        let (name, file) = create_new(dir, Kind::Kept).unwrap();
        let mut w = SnapWriter::new(file).unwrap();
        for (k, v) in pairs {
            w.put(k, v).unwrap();
        }
        w.finish().unwrap();
        file_path(dir, &name, Kind::Kept).unwrap()
    }

    #[test]
    fn a_file_reads_back_and_a_damaged_one_is_refused_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), &[(b"da", b"1"), (b"db", b"22")]);
        let mut r = SnapReader::new(File::open(&path).unwrap()).unwrap();
        assert_eq!(r.next().unwrap(), Some((b"da".to_vec(), b"1".to_vec())));
        assert_eq!(r.next().unwrap(), Some((b"db".to_vec(), b"22".to_vec())));
        assert_eq!(r.next().unwrap(), None);

        let good = std::fs::read(&path).unwrap();
        let check = |bytes: &[u8]| {
            std::fs::write(&path, bytes).unwrap();
            verify(&File::open(&path).unwrap()).unwrap_err().to_string()
        };
        assert!(check(&good[..good.len() - 3]).contains("truncated"));
        assert!(check(&good[..20]).contains("truncated"));
        let mut flipped = good.clone();
        flipped[17] ^= 1;
        assert!(check(&flipped).contains("corrupt"));
        let mut longer = good.clone();
        longer.push(0);
        assert!(check(&longer).contains("after its end"));
        assert!(check(b"not a snapshot").contains("not a Micro snapshot"));
    }

    #[tokio::test]
    async fn an_install_cut_short_by_a_crash_is_finished_on_open() {
        use openraft::storage::RaftStateMachine;
        use openraft::{CommittedLeaderId, EntryPayload};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let a = tempfile::tempdir().unwrap();
        let (_la, mut sma) = crate::open_storage(a.path()).unwrap();
        let entries: Vec<crate::Entry> = (1..=300u64)
            .map(|i| crate::Entry {
                log_id: LogId::new(CommittedLeaderId::new(1, 1), i),
                payload: EntryPayload::Normal(crate::Batch(vec![crate::Txn::put(
                    format!("k{i:03}"),
                    "v",
                    None,
                )])),
            })
            .collect();
        sma.apply(entries).await.unwrap();
        let snap = sma.build_snapshot().await.unwrap();
        let mut bytes = Vec::new();
        let mut file = snap.snapshot;
        file.read_to_end(&mut bytes).await.unwrap();

        let b = tempfile::tempdir().unwrap();
        let (lb, mut smb) = crate::open_storage(b.path()).unwrap();
        let mut incoming = smb.begin_receiving_snapshot().await.unwrap();
        incoming.write_all(&bytes).await.unwrap();
        smb.install_snapshot(&snap.meta, incoming).await.unwrap();
        // As if the node crashed half-way through the load: the marker is
        // there, half the keys and the applied log id are not.
        let name = current_name(&smb.snap).unwrap().unwrap();
        let marker = encode(&Installing {
            meta: snap.meta.clone(),
            file: name,
        })
        .unwrap();
        smb.snap.insert(SNAP_INSTALLING, marker).unwrap();
        let keys: Vec<sled::IVec> = smb
            .tree
            .iter()
            .keys()
            .step_by(2)
            .map(|k| k.unwrap())
            .collect();
        for k in keys {
            smb.tree.remove(k).unwrap();
        }
        smb.tree.remove(META_APPLIED).unwrap();
        smb.durable.sync().await.unwrap();
        assert!(smb.reader().get(b"k001", 0).unwrap().is_none());
        drop((lb, smb));

        // sled lets go of its lock from its own threads a moment later.
        let mut tries = 0;
        let (_lb, mut smb) = loop {
            match crate::open_storage(b.path()) {
                Ok(s) => break s,
                Err(_) if tries < 100 => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(e) => panic!("reopen: {e}"),
            }
        };
        for i in 1..=300u64 {
            let got = smb.reader().get(format!("k{i:03}").as_bytes(), 0).unwrap();
            assert_eq!(got.map(|r| r.value), Some(b"v".to_vec()), "k{i:03}");
        }
        let (applied, _) = smb.applied_state().await.unwrap();
        assert_eq!(applied, snap.meta.last_log_id);
        assert!(smb.snap.get(SNAP_INSTALLING).unwrap().is_none());
        assert!(smb.get_current_snapshot().await.unwrap().is_some());
    }

    #[test]
    fn ids_from_outside_never_become_paths() {
        let dir = Path::new("/d");
        assert!(file_path(dir, "../../etc/passwd", Kind::Kept).is_err());
        assert!(file_path(dir, "0123456789abcdeF", Kind::Kept).is_err());
        assert!(file_path(dir, "0123456789abcdef", Kind::Part).is_ok());
    }
}
