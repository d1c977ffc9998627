//! A power-loss filesystem of the harness's own, in the spirit of LazyFS:
//! a FUSE filesystem whose whole tree lives in this process's memory, where
//! every write is visible to reads at once (like the page cache) but only
//! what was fsynced survives [`Mount::power_cut`].
//!
//! The rules (what a real disk without a volatile cache would keep):
//!
//! * **File data, size and mode** become durable when that file is fsynced
//!   (`fsync` or `fdatasync`). Closing it, `flush` and `sync_file_range`
//!   make nothing durable (the last sends nothing to a FUSE filesystem
//!   without a writeback cache, which this one never asks for).
//! * **Names** (create, mkdir, rename, unlink, rmdir) are kept as in a
//!   journal: any fsync, of a file or a directory (`fsyncdir`), commits
//!   every name change made so far in the whole filesystem, as ext4's one
//!   journal does. Until some fsync, a power cut puts the old names back and
//!   new files vanish; a file whose name was committed but whose data never
//!   was comes back empty. (Stricter POSIX rules — a name durable only when
//!   its directory is fsynced — were tried first: sled 0.34 never fsyncs a
//!   directory, renames each new snapshot into place and then reuses log
//!   segments, and could not open its database after any power cut, which
//!   ext4 would not have done to it.)
//! * [`Mount::power_cut`] drops everything else: files go back to their
//!   last synced contents, sizes and modes, directories to their last
//!   durable entries, never-durable inodes vanish.
//!
//! The model ([`Model`]) is plain data behind one mutex, tested without
//! FUSE; [`LazyFs`] answers the kernel from it. Data is kept twice per file
//! (the live bytes and the durable bytes) with a set of dirty ranges, so a
//! write costs the bytes written and an fsync the bytes dirtied since the
//! last one; only a power cut copies whole files.
//!
//! Every open is `direct_io` and every attribute and entry is returned with
//! a zero TTL, so the kernel caches nothing that a power cut could make
//! stale. It must never be used for data anyone wants to keep: everything
//! lives in memory and is gone when the harness exits.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, INodeNo, LockOwner, MountOption,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

/// An inode number.
pub type Ino = u64;
/// The root directory's inode.
pub const ROOT: Ino = 1;

/// What the kernel may cache: nothing.
const TTL: Duration = Duration::ZERO;
/// The largest file this filesystem accepts (it is all in memory).
const MAX_FILE: u64 = 1 << 34;

/// A set of disjoint, non-adjacent byte ranges `[start, end)`.
#[derive(Default, Debug, Clone)]
struct Ranges(BTreeMap<u64, u64>);

impl Ranges {
    fn add(&mut self, mut start: u64, mut end: u64) {
        if start >= end {
            return;
        }
        let mut gone = Vec::new();
        if let Some((&s, &e)) = self.0.range(..=start).next_back() {
            if e >= start {
                start = s;
                end = end.max(e);
                gone.push(s);
            }
        }
        for (&s, &e) in self.0.range(start..=end) {
            gone.push(s);
            end = end.max(e);
        }
        for s in gone {
            self.0.remove(&s);
        }
        self.0.insert(start, end);
    }

    /// Forgets everything at or past `len`.
    fn clip(&mut self, len: u64) {
        let past: Vec<u64> = self.0.range(len..).map(|(&s, _)| s).collect();
        for s in past {
            self.0.remove(&s);
        }
        if let Some((_, e)) = self.0.range_mut(..len).next_back() {
            *e = (*e).min(len);
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
}

#[derive(Debug)]
struct Inode {
    kind: Kind,
    perm: u32,
    uid: u32,
    gid: u32,
    atime: SystemTime,
    mtime: SystemTime,
    ctime: SystemTime,
    /// the live name (parent, name); `None` for the root and unlinked inodes
    at: Option<(Ino, OsString)>,
    /// the durable name: in `durable_entries` of that parent
    durable_at: Option<(Ino, OsString)>,
    durable_perm: u32,
    /// files: live bytes, durable bytes, what differs
    data: Vec<u8>,
    durable: Vec<u8>,
    dirty: Ranges,
    /// directories: live and durable entries
    entries: BTreeMap<OsString, Ino>,
    durable_entries: BTreeMap<OsString, Ino>,
    /// open file handles
    open: u32,
}

impl Inode {
    fn new(kind: Kind, perm: u32, uid: u32, gid: u32) -> Inode {
        let now = SystemTime::now();
        Inode {
            kind,
            perm,
            uid,
            gid,
            atime: now,
            mtime: now,
            ctime: now,
            at: None,
            durable_at: None,
            durable_perm: perm,
            data: Vec::new(),
            durable: Vec::new(),
            dirty: Ranges::default(),
            entries: BTreeMap::new(),
            durable_entries: BTreeMap::new(),
            open: 0,
        }
    }

    fn size(&self) -> u64 {
        match self.kind {
            Kind::File => self.data.len() as u64,
            Kind::Dir => 4096,
        }
    }
}

/// What a power cut did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CutStats {
    /// inodes that vanished (never durable, or durably unlinked)
    pub vanished: usize,
    /// files whose contents or size went back to the last sync
    pub reverted: usize,
    /// bytes of unsynced writes dropped
    pub dropped_bytes: u64,
}

/// The filesystem's state: every inode, live and durable.
#[derive(Debug)]
pub struct Model {
    inodes: HashMap<Ino, Inode>,
    next_ino: Ino,
    /// open file handles: handle → inode
    handles: HashMap<u64, Ino>,
    next_fh: u64,
    /// power cuts so far
    pub cuts: u32,
}

type Res<T> = Result<T, Errno>;

impl Model {
    /// An empty filesystem: a durable root directory with mode `root_perm`.
    pub fn new(root_perm: u32, uid: u32, gid: u32) -> Model {
        let mut inodes = HashMap::new();
        inodes.insert(ROOT, Inode::new(Kind::Dir, root_perm, uid, gid));
        Model {
            inodes,
            next_ino: ROOT + 1,
            handles: HashMap::new(),
            next_fh: 1,
            cuts: 0,
        }
    }

    fn get(&self, ino: Ino) -> Res<&Inode> {
        self.inodes.get(&ino).ok_or(Errno::ENOENT)
    }

    fn get_mut(&mut self, ino: Ino) -> Res<&mut Inode> {
        self.inodes.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    fn dir(&self, ino: Ino) -> Res<&Inode> {
        let i = self.get(ino)?;
        if i.kind != Kind::Dir {
            return Err(Errno::ENOTDIR);
        }
        Ok(i)
    }

    fn file_mut(&mut self, ino: Ino) -> Res<&mut Inode> {
        let i = self.get_mut(ino)?;
        if i.kind != Kind::File {
            return Err(Errno::EISDIR);
        }
        Ok(i)
    }

    pub fn lookup(&self, parent: Ino, name: &OsStr) -> Res<Ino> {
        self.dir(parent)?
            .entries
            .get(name)
            .copied()
            .ok_or(Errno::ENOENT)
    }

    /// The inode's kind, mode and size.
    pub fn stat(&self, ino: Ino) -> Res<(Kind, u32, u64)> {
        let i = self.get(ino)?;
        Ok((i.kind, i.perm, i.size()))
    }

    pub fn attr(&self, ino: Ino) -> Res<FileAttr> {
        let i = self.get(ino)?;
        let size = i.size();
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: i.atime,
            mtime: i.mtime,
            ctime: i.ctime,
            crtime: i.ctime,
            kind: match i.kind {
                Kind::File => FileType::RegularFile,
                Kind::Dir => FileType::Directory,
            },
            perm: (i.perm & 0o7777) as u16,
            nlink: match (i.kind, i.at.is_some() || ino == ROOT) {
                (_, false) => 0,
                (Kind::File, true) => 1,
                (Kind::Dir, true) => 2,
            },
            uid: i.uid,
            gid: i.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    /// Creates a file or directory `name` in `parent`.
    pub fn create(
        &mut self,
        parent: Ino,
        name: &OsStr,
        kind: Kind,
        perm: u32,
        uid: u32,
        gid: u32,
    ) -> Res<Ino> {
        if name.len() > 255 {
            return Err(Errno::ENAMETOOLONG);
        }
        if self.dir(parent)?.entries.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let mut node = Inode::new(kind, perm & 0o7777, uid, gid);
        node.at = Some((parent, name.to_os_string()));
        self.inodes.insert(ino, node);
        let p = self.get_mut(parent)?;
        p.entries.insert(name.to_os_string(), ino);
        let now = SystemTime::now();
        (p.mtime, p.ctime) = (now, now);
        Ok(ino)
    }

    pub fn open(&mut self, ino: Ino) -> Res<u64> {
        self.get_mut(ino)?.open += 1;
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(fh, ino);
        Ok(fh)
    }

    /// Closes a handle (unknown ones, say from before a power cut, are
    /// ignored).
    pub fn release(&mut self, fh: u64) {
        if let Some(ino) = self.handles.remove(&fh) {
            if let Some(i) = self.inodes.get_mut(&ino) {
                i.open = i.open.saturating_sub(1);
            }
            self.maybe_free(ino);
        }
    }

    pub fn read(&self, ino: Ino, offset: u64, size: u32) -> Res<&[u8]> {
        let i = self.get(ino)?;
        if i.kind != Kind::File {
            return Err(Errno::EISDIR);
        }
        let len = i.data.len() as u64;
        let start = offset.min(len) as usize;
        let end = offset.saturating_add(size as u64).min(len) as usize;
        Ok(&i.data[start..end])
    }

    pub fn write(&mut self, ino: Ino, offset: u64, bytes: &[u8]) -> Res<usize> {
        let end = offset
            .checked_add(bytes.len() as u64)
            .filter(|&e| e <= MAX_FILE)
            .ok_or(Errno::EFBIG)?;
        let i = self.file_mut(ino)?;
        let old = i.data.len() as u64;
        if end > old {
            i.data.resize(end as usize, 0);
        }
        i.data[offset as usize..end as usize].copy_from_slice(bytes);
        // a gap between the old end and the write reads as zeros: dirty too
        i.dirty.add(offset.min(old), end);
        let now = SystemTime::now();
        (i.mtime, i.ctime) = (now, now);
        Ok(bytes.len())
    }

    pub fn set_size(&mut self, ino: Ino, size: u64) -> Res<()> {
        if size > MAX_FILE {
            return Err(Errno::EFBIG);
        }
        let i = self.file_mut(ino)?;
        let old = i.data.len() as u64;
        i.data.resize(size as usize, 0);
        if size > old {
            i.dirty.add(old, size);
        } else {
            i.dirty.clip(size);
        }
        let now = SystemTime::now();
        (i.mtime, i.ctime) = (now, now);
        Ok(())
    }

    pub fn set_perm(&mut self, ino: Ino, mode: u32) -> Res<()> {
        let i = self.get_mut(ino)?;
        i.perm = mode & 0o7777;
        i.ctime = SystemTime::now();
        Ok(())
    }

    pub fn set_owner(&mut self, ino: Ino, uid: Option<u32>, gid: Option<u32>) -> Res<()> {
        let i = self.get_mut(ino)?;
        i.uid = uid.unwrap_or(i.uid);
        i.gid = gid.unwrap_or(i.gid);
        i.ctime = SystemTime::now();
        Ok(())
    }

    pub fn set_times(
        &mut self,
        ino: Ino,
        atime: Option<SystemTime>,
        mtime: Option<SystemTime>,
    ) -> Res<()> {
        let i = self.get_mut(ino)?;
        i.atime = atime.unwrap_or(i.atime);
        i.mtime = mtime.unwrap_or(i.mtime);
        Ok(())
    }

    /// Removes `name` (a file, or with `dir` an empty directory) from
    /// `parent`.
    pub fn remove(&mut self, parent: Ino, name: &OsStr, dir: bool) -> Res<()> {
        let ino = self.lookup(parent, name)?;
        let target = self.get(ino)?;
        match (dir, target.kind) {
            (true, Kind::File) => return Err(Errno::ENOTDIR),
            (false, Kind::Dir) => return Err(Errno::EISDIR),
            (true, Kind::Dir) if !target.entries.is_empty() => return Err(Errno::ENOTEMPTY),
            _ => {}
        }
        self.unlink_entry(parent, name)?;
        Ok(())
    }

    /// Drops the live entry `parent/name`; frees its inode if nothing holds
    /// it any more.
    fn unlink_entry(&mut self, parent: Ino, name: &OsStr) -> Res<Ino> {
        let p = self.get_mut(parent)?;
        let ino = p.entries.remove(name).ok_or(Errno::ENOENT)?;
        let now = SystemTime::now();
        (p.mtime, p.ctime) = (now, now);
        let i = self.get_mut(ino)?;
        i.at = None;
        i.ctime = now;
        self.maybe_free(ino);
        Ok(ino)
    }

    pub fn rename(
        &mut self,
        parent: Ino,
        name: &OsStr,
        newparent: Ino,
        newname: &OsStr,
        noreplace: bool,
    ) -> Res<()> {
        if newname.len() > 255 {
            return Err(Errno::ENAMETOOLONG);
        }
        let ino = self.lookup(parent, name)?;
        self.dir(newparent)?;
        let kind = self.get(ino)?.kind;
        if kind == Kind::Dir {
            // not into itself or below itself
            let mut up = Some(newparent);
            while let Some(d) = up {
                if d == ino {
                    return Err(Errno::EINVAL);
                }
                up = self.get(d)?.at.as_ref().map(|(p, _)| *p);
            }
        }
        if let Ok(existing) = self.lookup(newparent, newname) {
            if existing == ino {
                return Ok(());
            }
            if noreplace {
                return Err(Errno::EEXIST);
            }
            let e = self.get(existing)?;
            match (kind, e.kind) {
                (Kind::File, Kind::Dir) => return Err(Errno::EISDIR),
                (Kind::Dir, Kind::File) => return Err(Errno::ENOTDIR),
                (Kind::Dir, Kind::Dir) if !e.entries.is_empty() => return Err(Errno::ENOTEMPTY),
                _ => {}
            }
            self.unlink_entry(newparent, newname)?;
        }
        let now = SystemTime::now();
        let p = self.get_mut(parent)?;
        p.entries.remove(name);
        (p.mtime, p.ctime) = (now, now);
        let np = self.get_mut(newparent)?;
        np.entries.insert(newname.to_os_string(), ino);
        (np.mtime, np.ctime) = (now, now);
        let i = self.get_mut(ino)?;
        i.at = Some((newparent, newname.to_os_string()));
        i.ctime = now;
        Ok(())
    }

    /// `.`, `..` and the live entries.
    pub fn list(&self, ino: Ino) -> Res<Vec<(Ino, Kind, OsString)>> {
        let d = self.dir(ino)?;
        let up = d.at.as_ref().map(|(p, _)| *p).unwrap_or(ROOT);
        let mut out = vec![
            (ino, Kind::Dir, OsString::from(".")),
            (up, Kind::Dir, OsString::from("..")),
        ];
        for (name, &child) in &d.entries {
            let kind = self.get(child).map(|c| c.kind).unwrap_or(Kind::File);
            out.push((child, kind, name.clone()));
        }
        Ok(out)
    }

    /// `fsync`/`fdatasync`: the inode's data, size and mode, and its name
    /// (and its directories' names up to the root), become durable.
    pub fn fsync(&mut self, ino: Ino) -> Res<()> {
        let i = self.get_mut(ino)?;
        if i.kind == Kind::File {
            let len = i.data.len();
            i.durable.resize(len, 0);
            for (&s, &e) in &i.dirty.0 {
                let (s, e) = (s as usize, (e as usize).min(len));
                if s < e {
                    i.durable[s..e].copy_from_slice(&i.data[s..e]);
                }
            }
            i.dirty = Ranges::default();
        }
        i.durable_perm = i.perm;
        self.commit_names();
        Ok(())
    }

    /// `fsyncdir`: the directory's mode becomes durable, and every name
    /// (see [`Model::commit_names`]).
    pub fn fsyncdir(&mut self, dir: Ino) -> Res<()> {
        let d = self.get_mut(dir)?;
        if d.kind != Kind::Dir {
            return Err(Errno::ENOTDIR);
        }
        d.durable_perm = d.perm;
        self.commit_names();
        Ok(())
    }

    /// A journal commit: the whole tree of names as it is now (every
    /// create, mkdir, rename, unlink and rmdir so far) becomes durable.
    /// What any fsync does on ext4, whose one journal holds every
    /// directory change; sled 0.34 relies on it (it renames a new snapshot
    /// into place and never fsyncs the directory, then reuses log segments
    /// the old snapshot needed). File data is not part of it.
    fn commit_names(&mut self) {
        let mut unlinked = Vec::new();
        for (&ino, i) in self.inodes.iter_mut() {
            if i.kind == Kind::Dir {
                i.durable_entries.clone_from(&i.entries);
            }
            if i.at.is_none() && i.durable_at.is_some() {
                unlinked.push(ino);
            }
            i.durable_at.clone_from(&i.at);
        }
        for ino in unlinked {
            self.maybe_free(ino);
        }
    }

    /// Frees an inode nothing refers to: no live name, no durable name, no
    /// open handle. A freed directory's durable children lose their durable
    /// name with it.
    fn maybe_free(&mut self, ino: Ino) {
        let mut todo = vec![ino];
        while let Some(ino) = todo.pop() {
            let free = ino != ROOT
                && self
                    .inodes
                    .get(&ino)
                    .is_some_and(|i| i.at.is_none() && i.durable_at.is_none() && i.open == 0);
            if !free {
                continue;
            }
            let Some(gone) = self.inodes.remove(&ino) else {
                continue;
            };
            for (name, child) in gone.durable_entries {
                if let Some(c) = self.inodes.get_mut(&child) {
                    if c.durable_at.as_ref() == Some(&(ino, name)) {
                        c.durable_at = None;
                        todo.push(child);
                    }
                }
            }
        }
    }

    /// The power goes: everything not durable is dropped. Open handles are
    /// forgotten (the processes holding them are gone).
    pub fn power_cut(&mut self) -> CutStats {
        let mut stats = CutStats::default();
        let mut reachable = std::collections::HashSet::new();
        let mut stack = vec![ROOT];
        while let Some(ino) = stack.pop() {
            if !reachable.insert(ino) {
                continue;
            }
            if let Some(i) = self.inodes.get(&ino) {
                stack.extend(i.durable_entries.values().copied());
            }
        }
        let before = self.inodes.len();
        self.inodes.retain(|ino, _| reachable.contains(ino));
        stats.vanished = before - self.inodes.len();
        let mut names = Vec::new();
        for (&ino, i) in self.inodes.iter_mut() {
            match i.kind {
                Kind::File => {
                    let dropped: u64 = i.dirty.0.iter().map(|(s, e)| e - s).sum();
                    if dropped > 0 || i.data.len() != i.durable.len() {
                        stats.reverted += 1;
                        stats.dropped_bytes += dropped;
                        i.data.clone_from(&i.durable);
                    }
                    i.dirty = Ranges::default();
                }
                Kind::Dir => {
                    i.entries.clone_from(&i.durable_entries);
                    for (name, &child) in &i.entries {
                        names.push((child, ino, name.clone()));
                    }
                }
            }
            i.perm = i.durable_perm;
            i.open = 0;
        }
        for (child, parent, name) in names {
            if let Some(c) = self.inodes.get_mut(&child) {
                c.at = Some((parent, name.clone()));
                c.durable_at = Some((parent, name));
            }
        }
        self.handles.clear();
        self.cuts += 1;
        stats
    }

    /// Bytes held in memory (live and durable file contents).
    pub fn bytes(&self) -> u64 {
        self.inodes
            .values()
            .map(|i| (i.data.len() + i.durable.len()) as u64)
            .sum()
    }
}

/// The FUSE face of a shared [`Model`].
pub struct LazyFs {
    model: Arc<Mutex<Model>>,
}

fn lock(m: &Mutex<Model>) -> MutexGuard<'_, Model> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn to_time(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

impl Filesystem for LazyFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let m = lock(&self.model);
        match m.lookup(parent.0, name).and_then(|ino| m.attr(ino)) {
            Ok(attr) => reply.entry(&TTL, &attr, fuser::Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match lock(&self.model).attr(ino.0) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut m = lock(&self.model);
        let ino = ino.0;
        let done = (|| {
            if let Some(size) = size {
                m.set_size(ino, size)?;
            }
            if let Some(mode) = mode {
                m.set_perm(ino, mode)?;
            }
            if uid.is_some() || gid.is_some() {
                m.set_owner(ino, uid, gid)?;
            }
            if atime.is_some() || mtime.is_some() {
                m.set_times(ino, atime.map(to_time), mtime.map(to_time))?;
            }
            m.attr(ino)
        })();
        match done {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let mut m = lock(&self.model);
        let made = m
            .create(
                parent.0,
                name,
                Kind::Dir,
                mode & !umask,
                req.uid(),
                req.gid(),
            )
            .and_then(|ino| m.attr(ino));
        match made {
            Ok(attr) => reply.entry(&TTL, &attr, fuser::Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match lock(&self.model).remove(parent.0, name, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match lock(&self.model).remove(parent.0, name, true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.intersects(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_WHITEOUT) {
            reply.error(Errno::EINVAL);
            return;
        }
        let noreplace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        match lock(&self.model).rename(parent.0, name, newparent.0, newname, noreplace) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mut m = lock(&self.model);
        let opened = (|| {
            let (kind, _, _) = m.stat(ino.0)?;
            if kind == Kind::Dir {
                return Err(Errno::EISDIR);
            }
            if flags.0 & libc::O_TRUNC != 0 && flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
                m.set_size(ino.0, 0)?;
            }
            m.open(ino.0)
        })();
        match opened {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let mut m = lock(&self.model);
        let made = (|| {
            let ino = m.create(
                parent.0,
                name,
                Kind::File,
                mode & !umask,
                req.uid(),
                req.gid(),
            )?;
            let fh = m.open(ino)?;
            Ok((m.attr(ino)?, fh))
        })();
        match made {
            Ok((attr, fh)) => reply.created(
                &TTL,
                &attr,
                fuser::Generation(0),
                FileHandle(fh),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match lock(&self.model).read(ino.0, offset, size) {
            Ok(bytes) => reply.data(bytes),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match lock(&self.model).write(ino.0, offset, data) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(e),
        }
    }

    /// `close`: makes nothing durable.
    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        lock(&self.model).release(fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match lock(&self.model).fsync(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match lock(&self.model).stat(ino.0) {
            Ok((Kind::Dir, _, _)) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Ok(_) => reply.error(Errno::ENOTDIR),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let entries = match lock(&self.model).list(ino.0) {
            Ok(e) => e,
            Err(e) => {
                reply.error(e);
                return;
            }
        };
        for (i, (child, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            let kind = match kind {
                Kind::File => FileType::RegularFile,
                Kind::Dir => FileType::Directory,
            };
            if reply.add(INodeNo(child), (i + 1) as u64, kind, &name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match lock(&self.model).fsyncdir(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let m = lock(&self.model);
        // a 64 GiB disk in 4 KiB blocks, less what is held
        let total: u64 = 16 << 20;
        let used = m.bytes().div_ceil(4096).min(total);
        let files = m.inodes.len() as u64;
        reply.statfs(
            total,
            total - used,
            total - used,
            1 << 20,
            (1 << 20) - files.min(1 << 20),
            4096,
            255,
            4096,
        );
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        match lock(&self.model).stat(ino.0) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    /// Only plain allocation (mode 0): it extends the file like writing
    /// zeros would.
    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if mode != 0 {
            reply.error(Errno::EOPNOTSUPP);
            return;
        }
        let mut m = lock(&self.model);
        let done = (|| {
            let (_, _, size) = m.stat(ino.0)?;
            let end = offset.checked_add(length).ok_or(Errno::EFBIG)?;
            if end > size {
                m.set_size(ino.0, end)?;
            }
            Ok(())
        })();
        match done {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}

/// A mounted lazy filesystem; unmounted when dropped.
pub struct Mount {
    path: PathBuf,
    model: Arc<Mutex<Model>>,
    session: Option<fuser::BackgroundSession>,
}

/// Why lazy filesystems cannot be mounted here, if they cannot: not root,
/// or no `/dev/fuse`.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("power faults need root (to mount a FUSE filesystem per node)".into());
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("power faults need /dev/fuse (FUSE), which this machine lacks".into());
    }
    None
}

impl Mount {
    /// Mounts an empty lazy filesystem on `path` (an existing, empty
    /// directory), served by a background thread of this process.
    pub fn new(path: &Path) -> anyhow::Result<Mount> {
        use anyhow::Context;
        let (perm, uid, gid) = {
            use std::os::unix::fs::MetadataExt;
            let meta = std::fs::metadata(path)
                .with_context(|| format!("cannot mount on {}", path.display()))?;
            (meta.mode() & 0o7777, meta.uid(), meta.gid())
        };
        let model = Arc::new(Mutex::new(Model::new(perm, uid, gid)));
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            MountOption::FSName("micro-jepsen-lazyfs".into()),
            MountOption::Subtype("lazyfs".into()),
            MountOption::NoDev,
            MountOption::NoSuid,
            MountOption::NoAtime,
        ];
        // (no AutoUnmount: with it, fuser's unmount waited forever on the
        // fusermount3 helper; Drop, the interrupt handler and `unmount_all`
        // unmount instead)
        config.acl = fuser::SessionACL::All;
        config.n_threads = Some(2);
        let fs = LazyFs {
            model: model.clone(),
        };
        let session = fuser::spawn_mount(fs, path, &config).with_context(|| {
            format!(
                "cannot mount the power-loss filesystem on {} (is fusermount3 installed?)",
                path.display()
            )
        })?;
        registry().push(path.to_path_buf());
        Ok(Mount {
            path: path.to_path_buf(),
            model,
            session: Some(session),
        })
    }

    /// Drops everything not durable (the processes using the filesystem
    /// must be dead: a write still in flight would land after the cut).
    pub fn power_cut(&self) -> CutStats {
        lock(&self.model).power_cut()
    }

    /// Unmounts (lazily, so a process still inside cannot keep it) and
    /// stops the serving thread.
    pub fn unmount(&mut self) -> anyhow::Result<()> {
        if let Some(session) = self.session.take() {
            registry().retain(|p| p != &self.path);
            if let Err(e) = session.umount_and_join() {
                // busy: detach it, so nothing is left mounted
                lazy_unmount(&self.path);
                return Err(anyhow::anyhow!(
                    "unmounting {} failed ({e}); detached it instead",
                    self.path.display()
                ));
            }
        }
        Ok(())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Err(e) = self.unmount() {
            eprintln!("micro-jepsen: {e:#}");
        }
    }
}

/// The paths mounted now, for [`unmount_all`].
fn registry() -> MutexGuard<'static, Vec<PathBuf>> {
    static MOUNTED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    MOUNTED.lock().unwrap_or_else(|e| e.into_inner())
}

/// Detaches every lazy filesystem still mounted: for the interrupt handler,
/// which exits without running destructors.
pub fn unmount_all() {
    for path in registry().drain(..) {
        lazy_unmount(&path);
    }
}

/// `umount -l` of `path` (for the interrupt handler and failed unmounts);
/// errors are ignored: there may be nothing mounted.
pub fn lazy_unmount(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: umount2(2) with a valid NUL-terminated path.
    unsafe {
        libc::umount2(c.as_ptr(), libc::MNT_DETACH);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> Model {
        Model::new(0o755, 0, 0)
    }

    fn file(m: &mut Model, parent: Ino, name: &str) -> Ino {
        m.create(parent, OsStr::new(name), Kind::File, 0o644, 0, 0)
            .expect("create")
    }

    fn content(m: &Model, ino: Ino) -> Vec<u8> {
        m.read(ino, 0, u32::MAX).expect("read").to_vec()
    }

    fn find(m: &Model, path: &[&str]) -> Option<Ino> {
        let mut at = ROOT;
        for p in path {
            at = m.lookup(at, OsStr::new(p)).ok()?;
        }
        Some(at)
    }

    #[test]
    fn writes_are_read_back_at_once_and_fsync_keeps_them() {
        let mut m = model();
        let f = file(&mut m, ROOT, "log");
        m.write(f, 0, b"hello").unwrap();
        m.write(f, 10, b"world").unwrap();
        assert_eq!(content(&m, f), b"hello\0\0\0\0\0world");
        m.fsync(f).unwrap();
        m.write(f, 0, b"HELLO").unwrap();
        m.write(f, 15, b"!!").unwrap();
        assert_eq!(content(&m, f), b"HELLO\0\0\0\0\0world!!");
        let cut = m.power_cut();
        let f = find(&m, &["log"]).expect("a synced file survives");
        assert_eq!(
            content(&m, f),
            b"hello\0\0\0\0\0world",
            "unsynced writes dropped"
        );
        assert_eq!(cut.reverted, 1);
        assert_eq!(cut.dropped_bytes, 7);
    }

    #[test]
    fn closing_is_not_syncing_and_unsynced_files_vanish() {
        let mut m = model();
        let f = file(&mut m, ROOT, "never-synced");
        let fh = m.open(f).unwrap();
        m.write(f, 0, b"gone").unwrap();
        m.release(fh);
        let d = m
            .create(ROOT, OsStr::new("dir"), Kind::Dir, 0o700, 0, 0)
            .unwrap();
        file(&mut m, d, "inner");
        assert_eq!(m.power_cut().vanished, 3);
        assert!(find(&m, &["never-synced"]).is_none());
        assert!(find(&m, &["dir"]).is_none());
        assert!(m.list(ROOT).unwrap().len() == 2, "only . and ..");
    }

    #[test]
    fn an_fsync_commits_names_made_before_it() {
        let mut m = model();
        let d = m
            .create(ROOT, OsStr::new("db"), Kind::Dir, 0o700, 0, 0)
            .unwrap();
        let f = file(&mut m, d, "conf");
        m.write(f, 0, b"x").unwrap();
        m.fsync(f).unwrap();
        let other = file(&mut m, d, "other");
        m.power_cut();
        let f = find(&m, &["db", "conf"]).expect("fsynced file and its directory survive");
        assert_eq!(content(&m, f), b"x");
        assert!(
            find(&m, &["db", "other"]).is_none(),
            "a sibling never synced"
        );
        assert!(m.get(other).is_err());
    }

    #[test]
    fn any_fsync_commits_every_name_like_a_journal() {
        let mut m = model();
        let a = m
            .create(ROOT, OsStr::new("a"), Kind::Dir, 0o755, 0, 0)
            .unwrap();
        let x = file(&mut m, a, "x");
        m.write(x, 0, b"unsynced").unwrap();
        let old = file(&mut m, ROOT, "old");
        m.fsync(old).unwrap();
        m.rename(ROOT, OsStr::new("old"), a, OsStr::new("new"), false)
            .unwrap();
        let other = file(&mut m, ROOT, "other");
        m.fsync(other).unwrap();
        m.power_cut();
        let x = find(&m, &["a", "x"]).expect("committed by the fsync of another file");
        assert_eq!(content(&m, x), b"", "but not its data");
        assert!(
            find(&m, &["a", "new"]).is_some(),
            "the rename was committed"
        );
        assert!(find(&m, &["old"]).is_none());
    }

    #[test]
    fn fsyncdir_makes_entries_durable_but_not_their_data() {
        let mut m = model();
        let f = file(&mut m, ROOT, "empty-after-cut");
        m.write(f, 0, b"data").unwrap();
        m.fsyncdir(ROOT).unwrap();
        m.power_cut();
        let f = find(&m, &["empty-after-cut"]).expect("entry durable");
        assert_eq!(content(&m, f), b"", "data was never fsynced");
    }

    #[test]
    fn renames_and_unlinks_are_durable_only_once_synced() {
        let mut m = model();
        let tmp = file(&mut m, ROOT, "snap.tmp");
        m.write(tmp, 0, b"new").unwrap();
        m.fsync(tmp).unwrap();
        let old = file(&mut m, ROOT, "snap");
        m.write(old, 0, b"old").unwrap();
        m.fsync(old).unwrap();
        // rename over the old one, not synced: the cut brings both back
        m.rename(
            ROOT,
            OsStr::new("snap.tmp"),
            ROOT,
            OsStr::new("snap"),
            false,
        )
        .unwrap();
        assert_eq!(content(&m, find(&m, &["snap"]).unwrap()), b"new");
        assert!(find(&m, &["snap.tmp"]).is_none());
        m.power_cut();
        assert_eq!(content(&m, find(&m, &["snap"]).unwrap()), b"old");
        assert_eq!(content(&m, find(&m, &["snap.tmp"]).unwrap()), b"new");
        // again, then fsync the directory: the rename sticks
        m.rename(
            ROOT,
            OsStr::new("snap.tmp"),
            ROOT,
            OsStr::new("snap"),
            false,
        )
        .unwrap();
        m.fsyncdir(ROOT).unwrap();
        m.power_cut();
        assert_eq!(content(&m, find(&m, &["snap"]).unwrap()), b"new");
        assert!(find(&m, &["snap.tmp"]).is_none());
        assert!(m.get(old).is_err(), "the replaced file is freed");
        // an unlink not synced comes back
        m.remove(ROOT, OsStr::new("snap"), false).unwrap();
        m.power_cut();
        assert!(find(&m, &["snap"]).is_some());
        m.remove(ROOT, OsStr::new("snap"), false).unwrap();
        m.fsyncdir(ROOT).unwrap();
        m.power_cut();
        assert!(find(&m, &["snap"]).is_none());
        assert_eq!(m.inodes.len(), 1, "only the root is left");
    }

    #[test]
    fn a_rename_is_durable_when_the_renamed_file_is_fsynced() {
        let mut m = model();
        let a = m
            .create(ROOT, OsStr::new("a"), Kind::Dir, 0o755, 0, 0)
            .unwrap();
        let f = file(&mut m, a, "x");
        m.fsync(f).unwrap();
        let b = m
            .create(ROOT, OsStr::new("b"), Kind::Dir, 0o755, 0, 0)
            .unwrap();
        m.rename(a, OsStr::new("x"), b, OsStr::new("y"), false)
            .unwrap();
        m.fsync(f).unwrap();
        m.power_cut();
        assert!(find(&m, &["b", "y"]).is_some());
        assert!(find(&m, &["a", "x"]).is_none(), "one name per inode");
        assert!(find(&m, &["a"]).is_some());
    }

    #[test]
    fn truncation_and_mode_revert_to_the_last_sync() {
        let mut m = model();
        let f = file(&mut m, ROOT, "key");
        m.write(f, 0, b"0123456789").unwrap();
        m.set_perm(f, 0o600).unwrap();
        m.fsync(f).unwrap();
        m.set_size(f, 4).unwrap();
        m.set_size(f, 8).unwrap();
        m.set_perm(f, 0o644).unwrap();
        assert_eq!(content(&m, f), b"0123\0\0\0\0");
        m.power_cut();
        assert_eq!(content(&m, f), b"0123456789");
        assert_eq!(m.stat(f).unwrap().1, 0o600);
        // shrink, regrow by a write past the end, sync: the gap is zeros
        m.set_size(f, 2).unwrap();
        m.write(f, 6, b"ab").unwrap();
        m.fsync(f).unwrap();
        m.power_cut();
        assert_eq!(content(&m, f), b"01\0\0\0\0ab");
    }

    #[test]
    fn open_files_outlive_their_name_until_released() {
        let mut m = model();
        let f = file(&mut m, ROOT, "f");
        let fh = m.open(f).unwrap();
        m.remove(ROOT, OsStr::new("f"), false).unwrap();
        m.write(f, 0, b"still").unwrap();
        assert_eq!(content(&m, f), b"still");
        m.release(fh);
        assert!(m.get(f).is_err());
        m.release(fh); // twice, or from before a cut: ignored
    }

    #[test]
    fn directory_rules() {
        let mut m = model();
        let d = m
            .create(ROOT, OsStr::new("d"), Kind::Dir, 0o755, 0, 0)
            .unwrap();
        file(&mut m, d, "f");
        assert_eq!(m.remove(ROOT, OsStr::new("d"), true), Err(Errno::ENOTEMPTY));
        assert_eq!(m.remove(ROOT, OsStr::new("d"), false), Err(Errno::EISDIR));
        assert_eq!(
            m.rename(ROOT, OsStr::new("d"), d, OsStr::new("inside"), false),
            Err(Errno::EINVAL)
        );
        assert_eq!(
            m.create(ROOT, OsStr::new("d"), Kind::File, 0o644, 0, 0),
            Err(Errno::EEXIST)
        );
        let names: Vec<OsString> = m.list(d).unwrap().into_iter().map(|e| e.2).collect();
        assert_eq!(names, [".", "..", "f"]);
    }

    #[test]
    fn ranges_merge_and_clip() {
        let mut r = Ranges::default();
        r.add(10, 20);
        r.add(30, 40);
        r.add(20, 30);
        assert_eq!(r.0.iter().collect::<Vec<_>>(), [(&10, &40)]);
        r.add(0, 5);
        r.add(3, 12);
        assert_eq!(r.0.iter().collect::<Vec<_>>(), [(&0, &40)]);
        r.add(50, 60);
        r.clip(55);
        assert_eq!(r.0.iter().collect::<Vec<_>>(), [(&0, &40), (&50, &55)]);
        r.clip(20);
        assert_eq!(r.0.iter().collect::<Vec<_>>(), [(&0, &20)]);
    }

    /// Mounts it for real, works through std::fs, cuts the power.
    #[test]
    fn mounted_power_cut_keeps_only_what_was_fsynced() {
        if let Some(why) = unavailable() {
            println!("skipped: {why}");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).expect("mkdir");
        let mut mount = match Mount::new(&mnt) {
            Ok(m) => m,
            Err(e) => panic!("mount failed: {e:#}"),
        };
        {
            use std::io::Write;
            use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
            let mut kept = std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o600)
                .open(mnt.join("kept"))
                .unwrap();
            kept.write_all(b"synced").unwrap();
            kept.sync_all().unwrap();
            kept.write_all(b" and more").unwrap();
            drop(kept);
            assert_eq!(std::fs::read(mnt.join("kept")).unwrap(), b"synced and more");
            std::fs::create_dir(mnt.join("sub")).unwrap();
            let data = std::fs::File::create(mnt.join("sub/data")).unwrap();
            data.sync_data().unwrap();
            std::fs::write(mnt.join("sub/data"), b"after sync").unwrap();
            std::fs::write(mnt.join("sub/lost"), b"never synced").unwrap();
            let meta = std::fs::metadata(mnt.join("kept")).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o600);
            std::fs::rename(mnt.join("kept"), mnt.join("renamed")).unwrap();
            assert!(!mnt.join("kept").exists());
        }
        let cut = mount.power_cut();
        assert_eq!(cut.vanished, 1, "sub/lost");
        assert_eq!(std::fs::read(mnt.join("kept")).unwrap(), b"synced");
        assert!(!mnt.join("renamed").exists(), "the rename was never synced");
        {
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(mnt.join("kept")).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        }
        assert!(mnt.join("sub").is_dir());
        assert!(!mnt.join("sub/lost").exists());
        assert_eq!(std::fs::read(mnt.join("sub/data")).unwrap(), b"");
        mount.unmount().expect("unmount");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while mnt.join("sub").exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!mnt.join("sub").exists(), "unmounted");
    }
}
