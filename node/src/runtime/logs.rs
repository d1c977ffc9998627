//! A service's log file: the bounded writer the supervisor appends to, and
//! [`tail`] / [`follow`] for whoever shows the log.
//!
//! The log is plain text, one line per line the build or the process wrote
//! (stdout and stderr interleaved as they arrive), plus a few lines from the
//! supervisor itself prefixed with `[micro] `. When the file would grow past
//! [`MAX_LOG_BYTES`] it is renamed to `<file>.1` (replacing the previous
//! old file) and a fresh file is started, so a service never uses more than
//! about twice that on disk.
//!
//! Must never: block the async runtime on file I/O (every read and write
//! here goes through `tokio::fs` or `spawn_blocking`), or keep more than
//! one old file.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::{mpsc, oneshot};

/// A log file is rotated before it would grow past this many bytes.
pub const MAX_LOG_BYTES: u64 = 1024 * 1024;

/// Longest line kept whole; longer ones are split, so one line without a
/// newline cannot make a reader or the writer buffer without bound.
pub(crate) const MAX_LINE: usize = 64 * 1024;

/// How often [`follow`] looks for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// How many lines may wait for the writer before producers wait: the
/// backpressure reaches the service through its pipe, which is what we want
/// rather than unbounded memory.
const SINK_QUEUE: usize = 1024;

/// The writer writes at most this many bytes per trip to the blocking pool.
const BATCH_BYTES: usize = 256 * 1024;

/// The file the previous contents of `file` are rotated to: `<file>.1`.
pub fn rotated_path(file: &Path) -> PathBuf {
    let mut name = OsString::from(file.as_os_str());
    name.push(".1");
    PathBuf::from(name)
}

/// The last `n` lines of the service's log (reading `<file>.1` too when the
/// current file has fewer than n lines).
///
/// A log that does not exist yet has no lines (an empty vector, not an
/// error). A rotation that happens while this reads may make the result
/// skip or repeat a few lines; it is a view for people, not a cursor.
pub async fn tail(file: &Path, n: usize) -> io::Result<Vec<String>> {
    Ok(tail_with_end(file, n).await?.0)
}

/// [`tail`], and how far the current file had been written when it was
/// read: where [`follow_from`] takes over, so that no line falls between.
pub async fn tail_with_end(file: &Path, n: usize) -> io::Result<(Vec<String>, u64)> {
    let file = file.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let (mut lines, end) = last_lines(&file, n)?;
        if lines.len() < n {
            let (mut older, _) = last_lines(&rotated_path(&file), n - lines.len())?;
            older.append(&mut lines);
            lines = older;
        }
        Ok((lines, end))
    })
    .await
    .map_err(io::Error::other)?
}

/// The last `n` lines of one file, reading backwards from its end so a large
/// file costs only what is shown. Blocking.
fn last_lines(path: &Path, n: usize) -> io::Result<(Vec<String>, u64)> {
    const CHUNK: u64 = 64 * 1024;
    let mut file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    if n == 0 {
        return Ok((Vec::new(), len));
    }
    // Chunks read so far, last chunk first.
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    let mut pos = len;
    let mut newlines = 0usize;
    let mut ends_with_newline = None;
    // Enough is read once the bytes hold n newlines besides a final one: then
    // the last n lines are all complete in them.
    while pos > 0 {
        let size = CHUNK.min(pos);
        pos -= size;
        let mut chunk = vec![0u8; size as usize];
        file.seek(SeekFrom::Start(pos))?;
        file.read_exact(&mut chunk)?;
        let ends = *ends_with_newline.get_or_insert(chunk.last() == Some(&b'\n'));
        newlines += chunk.iter().filter(|&&b| b == b'\n').count();
        chunks.push(chunk);
        if newlines.saturating_sub(usize::from(ends)) >= n {
            break;
        }
    }
    let mut bytes = Vec::with_capacity(chunks.iter().map(Vec::len).sum());
    for chunk in chunks.iter().rev() {
        bytes.extend_from_slice(chunk);
    }
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
    }
    if bytes.is_empty() && len == 0 {
        return Ok((Vec::new(), 0));
    }
    let pieces: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    let skip = pieces.len().saturating_sub(n);
    let lines = pieces[skip..]
        .iter()
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect();
    Ok((lines, len))
}

/// Lines appended to the file from now on (follows rotation: when the file is
/// replaced/truncated, start reading the new one from its beginning). Ends
/// when the receiver is dropped.
///
/// "Now" is when the background task first opens the file, which it does at
/// once; a file that does not exist yet is read from its beginning once it
/// appears. Polls every 200 ms. A line still without its newline is held
/// back until the newline arrives (or the file is rotated away).
pub fn follow(file: PathBuf) -> mpsc::Receiver<String> {
    follow_at(file, None)
}

/// [`follow`], from byte `pos` of the current file (as [`tail_with_end`]
/// reported it) rather than from its end: the lines written since are not
/// lost. A file shorter than `pos` (rotated or truncated meanwhile) is read
/// from its beginning.
pub fn follow_from(file: PathBuf, pos: u64) -> mpsc::Receiver<String> {
    follow_at(file, Some(pos))
}

fn follow_at(file: PathBuf, from: Option<u64>) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(SINK_QUEUE);
    tokio::spawn(async move {
        if let Err(e) = follow_file(&file, from, &tx).await {
            tracing::debug!(file = %file.display(), error = %e, "stopped following a log");
        }
    });
    rx
}

/// An open log being followed.
struct Cursor {
    file: tokio::fs::File,
    /// Device and inode: a different pair at the path means it was replaced.
    id: (u64, u64),
    pos: u64,
    partial: Vec<u8>,
}

impl Cursor {
    /// Opens the log at its end (`None`), or at byte `Some(pos)` when the
    /// file is that long (else at its beginning).
    async fn open(path: &Path, at: Option<u64>) -> io::Result<Cursor> {
        let mut file = tokio::fs::File::open(path).await?;
        let meta = file.metadata().await?;
        let pos = match at {
            None => file.seek(SeekFrom::End(0)).await?,
            Some(p) if p <= meta.len() => file.seek(SeekFrom::Start(p)).await?,
            Some(_) => 0,
        };
        Ok(Cursor {
            file,
            id: (meta.dev(), meta.ino()),
            pos,
            partial: Vec::new(),
        })
    }

    /// Sends every complete line appended since the last call. `Err` once
    /// the receiver is gone.
    async fn read_new(&mut self, tx: &mpsc::Sender<String>) -> Result<(), Closed> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match self.file.read(&mut buf).await {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) => {
                    // Try again at the next poll rather than give up on the log.
                    tracing::debug!(error = %e, "reading a followed log");
                    return Ok(());
                }
            };
            self.pos += n as u64;
            for piece in buf[..n].split_inclusive(|&b| b == b'\n') {
                self.partial.extend_from_slice(piece);
                if piece.last() == Some(&b'\n') || self.partial.len() >= MAX_LINE {
                    self.send_partial(tx).await?;
                }
            }
        }
    }

    /// Sends what is buffered as one line, without its newline.
    async fn send_partial(&mut self, tx: &mpsc::Sender<String>) -> Result<(), Closed> {
        let mut line = std::mem::take(&mut self.partial);
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        tx.send(String::from_utf8_lossy(&line).into_owned())
            .await
            .map_err(|_| Closed)
    }
}

/// The receiver of a follow was dropped.
struct Closed;

async fn follow_file(path: &Path, from: Option<u64>, tx: &mpsc::Sender<String>) -> io::Result<()> {
    let mut cursor = match Cursor::open(path, from).await {
        Ok(c) => Some(c),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    loop {
        if let Some(c) = cursor.as_mut() {
            if c.read_new(tx).await.is_err() {
                return Ok(());
            }
        }
        match tokio::fs::metadata(path).await {
            Ok(meta) => {
                let replaced = cursor
                    .as_ref()
                    .is_none_or(|c| c.id != (meta.dev(), meta.ino()));
                if replaced {
                    // Our handle still reads the old file: finish it first so
                    // the lines written just before the rotation are not lost.
                    if let Some(mut old) = cursor.take() {
                        if old.read_new(tx).await.is_err() {
                            return Ok(());
                        }
                        if !old.partial.is_empty() && old.send_partial(tx).await.is_err() {
                            return Ok(());
                        }
                    }
                    match Cursor::open(path, Some(0)).await {
                        Ok(c) => {
                            cursor = Some(c);
                            // Read the new file now, not a poll later.
                            continue;
                        }
                        // Replaced again, or removed, meanwhile: the next poll sees.
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e),
                    }
                } else if let Some(c) = cursor.as_mut() {
                    if meta.len() < c.pos {
                        // Truncated in place: what is there now is new.
                        c.file.seek(SeekFrom::Start(0)).await?;
                        c.pos = 0;
                        c.partial.clear();
                        continue;
                    }
                }
            }
            // Rotated away and not recreated yet: keep the old handle; the
            // new file is picked up when it appears.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        tokio::select! {
            _ = tx.closed() => return Ok(()),
            _ = tokio::time::sleep(FOLLOW_POLL) => {}
        }
    }
}

/// The log file as the writer sees it. Blocking; used only on the blocking
/// pool (see [`LogSink`]).
struct LogFile {
    path: PathBuf,
    /// `None` after a failed open; the next append tries again.
    file: Option<fs::File>,
    size: u64,
}

impl LogFile {
    fn open(path: PathBuf) -> io::Result<LogFile> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent)?;
        }
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        let size = file.metadata()?.len();
        Ok(LogFile {
            path,
            file: Some(file),
            size,
        })
    }

    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.size > 0 && self.size + bytes.len() as u64 > MAX_LOG_BYTES {
            self.rotate()?;
        }
        let file = match &mut self.file {
            Some(f) => f,
            None => {
                let reopened = LogFile::open(self.path.clone())?;
                self.size = reopened.size;
                self.file.insert(
                    reopened
                        .file
                        .ok_or_else(|| io::Error::other("log file not open"))?,
                )
            }
        };
        file.write_all(bytes)?;
        self.size += bytes.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        // rename(2) replaces the previous old file atomically; our handle
        // keeps pointing at the renamed file until it is replaced below.
        fs::rename(&self.path, rotated_path(&self.path))?;
        self.file = None;
        let fresh = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = fresh.metadata()?.len();
        self.file = Some(fresh);
        Ok(())
    }
}

enum LogMsg {
    Line(Vec<u8>),
    /// Answered once every line sent before it has been written.
    Flush(oneshot::Sender<()>),
}

/// The supervisor's handle on a log file: lines go through a channel to one
/// writer task, which writes them in batches on the blocking pool. Cloning
/// shares the writer; it ends when the last clone is dropped.
#[derive(Clone)]
pub(crate) struct LogSink {
    tx: mpsc::Sender<LogMsg>,
}

impl LogSink {
    /// Opens (creating it and its folder if needed) the log at `path`, for
    /// appending.
    pub(crate) async fn open(path: PathBuf) -> io::Result<LogSink> {
        let log = tokio::task::spawn_blocking(move || LogFile::open(path))
            .await
            .map_err(io::Error::other)??;
        let (tx, rx) = mpsc::channel(SINK_QUEUE);
        tokio::spawn(write_lines(log, rx));
        Ok(LogSink { tx })
    }

    /// Appends `line`, which should end with a newline.
    pub(crate) async fn write(&self, line: Vec<u8>) {
        // The writer only goes away with the runtime; nothing to do then.
        let _ = self.tx.send(LogMsg::Line(line)).await;
    }

    /// Appends a line from the supervisor itself.
    pub(crate) async fn note(&self, text: &str) {
        self.write(format!("[micro] {text}\n").into_bytes()).await;
    }

    /// Resolves once everything written before is in the file.
    pub(crate) async fn flush(&self) {
        let (ack, done) = oneshot::channel();
        if self.tx.send(LogMsg::Flush(ack)).await.is_ok() {
            let _ = done.await;
        }
    }
}

async fn write_lines(mut log: LogFile, mut rx: mpsc::Receiver<LogMsg>) {
    let mut failing = false;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let mut bytes = 0;
        while bytes < BATCH_BYTES {
            match rx.try_recv() {
                Ok(msg) => {
                    if let LogMsg::Line(l) = &msg {
                        bytes += l.len();
                    }
                    batch.push(msg);
                }
                Err(_) => break,
            }
        }
        let written = tokio::task::spawn_blocking(move || {
            for msg in batch {
                match msg {
                    LogMsg::Line(line) => match log.append(&line) {
                        Ok(()) if failing => {
                            failing = false;
                            tracing::info!(file = %log.path.display(), "writing the service log again");
                        }
                        Ok(()) => {}
                        // Once per failing stretch: a full disk must not also
                        // flood the node's own log.
                        Err(e) if !failing => {
                            failing = true;
                            tracing::warn!(file = %log.path.display(), error = %e, "cannot write the service log; dropping lines");
                        }
                        Err(_) => {}
                    },
                    LogMsg::Flush(ack) => {
                        let _ = ack.send(());
                    }
                }
            }
            (log, failing)
        })
        .await;
        match written {
            Ok((l, f)) => {
                log = l;
                failing = f;
            }
            Err(e) => {
                tracing::warn!(error = %e, "service log writer stopped");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open");
        f.write_all(text.as_bytes()).expect("write");
    }

    #[tokio::test]
    async fn tail_reads_the_end_and_the_old_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("svc.log");
        assert!(
            tail(&file, 5).await.expect("tail").is_empty(),
            "a missing log has no lines"
        );

        write(&rotated_path(&file), "1\n2\n3\n");
        write(&file, "4\n5");
        assert_eq!(tail(&file, 1).await.expect("tail"), ["5"]);
        assert_eq!(tail(&file, 2).await.expect("tail"), ["4", "5"]);
        assert_eq!(tail(&file, 3).await.expect("tail"), ["3", "4", "5"]);
        assert_eq!(
            tail(&file, 10).await.expect("tail"),
            ["1", "2", "3", "4", "5"]
        );
        assert!(tail(&file, 0).await.expect("tail").is_empty());

        // Lines across the 64 KiB read chunks come back whole.
        let big = dir.path().join("big.log");
        let text: String = (0..20_000)
            .map(|i| format!("line {i:06} {}\n", "x".repeat(i % 13)))
            .collect();
        write(&big, &text);
        let got = tail(&big, 5000).await.expect("tail");
        let want: Vec<String> = text.lines().skip(15_000).map(str::to_string).collect();
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn rotation_keeps_one_old_file_and_tail_spans_both() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("logs").join("svc.log");
        let sink = LogSink::open(file.clone()).await.expect("open sink");
        // About 2.6 MiB: two rotations, so the first file must be gone.
        let total = 27_000;
        for i in 0..total {
            sink.write(format!("{i:08} {}\n", "y".repeat(90)).into_bytes())
                .await;
        }
        sink.flush().await;

        let old = rotated_path(&file);
        let cur_len = fs::metadata(&file).expect("current log").len();
        let old_len = fs::metadata(&old).expect("rotated log").len();
        assert!(
            cur_len <= MAX_LOG_BYTES && old_len <= MAX_LOG_BYTES,
            "{cur_len} {old_len}"
        );
        assert!(
            old_len > MAX_LOG_BYTES - 200,
            "the old file was full: {old_len}"
        );
        let mut names: Vec<_> = fs::read_dir(file.parent().expect("parent"))
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["svc.log", "svc.log.1"]);
        let old_text = fs::read_to_string(&old).expect("read old");
        assert!(
            !old_text.starts_with("00000000 "),
            "the first file was replaced, not kept"
        );

        let cur_lines = fs::read_to_string(&file).expect("read").lines().count();
        let got = tail(&file, cur_lines + 3).await.expect("tail");
        assert_eq!(got.len(), cur_lines + 3);
        let numbers: Vec<u64> = got
            .iter()
            .map(|l| l[..8].parse().expect("number"))
            .collect();
        let first = total - (cur_lines as u64 + 3);
        assert_eq!(
            numbers,
            (first..total).collect::<Vec<_>>(),
            "consecutive across the rotation"
        );
    }

    #[tokio::test]
    async fn no_line_falls_between_the_tail_and_the_follow() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("svc.log");
        write(&file, "1\n2\n");
        let (lines, end) = tail_with_end(&file, 1).await.expect("tail");
        assert_eq!((lines, end), (vec!["2".to_string()], 4));
        // written after the tail, before the follower opens the file
        write(&file, "3\n");
        let mut rx = follow_from(file.clone(), end);
        let got = tokio::time::timeout(Duration::from_secs(3), rx.recv()).await;
        assert_eq!(got.expect("a line").as_deref(), Some("3"));
    }

    #[tokio::test]
    async fn follow_yields_new_lines_across_rotation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("svc.log");
        write(&file, "old\n");
        let mut rx = follow(file.clone());
        // Let the follower open the file: what is there by then is history.
        tokio::time::sleep(Duration::from_millis(300)).await;

        write(&file, "one\ntwo\n");
        tokio::time::sleep(Duration::from_millis(300)).await;
        write(&file, "three\n");
        fs::rename(&file, rotated_path(&file)).expect("rotate");
        write(&file, "fo");
        tokio::time::sleep(Duration::from_millis(300)).await;
        write(&file, "ur\n");

        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while got.len() < 4 {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(line)) => got.push(line),
                Ok(None) => panic!("follow ended early; got {got:?}"),
                Err(_) => panic!("timed out; got {got:?}"),
            }
        }
        assert_eq!(got, ["one", "two", "three", "four"]);
    }
}
