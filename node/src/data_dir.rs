//! Every file a node keeps in its data directory: their names, how each is
//! read and written, and the durable 0600/0700 helpers they all go through.
//! Nothing else in the crate names a file of the data dir.
//!
//! Layout:
//! * `raft/`                  sled database: Raft log, vote, state machine,
//!   snapshot
//! * `node-id`                this node's Raft id
//! * `auth-signing.key`       the Ed25519 seed that signs access tokens
//!   (base64, shared by the cluster)
//! * `config-secret.key`      the key that seals config secrets when none is
//!   configured (base64, shared by the cluster)
//! * `cluster/ca.crt`, `cluster/ca.key`     the cluster CA
//! * `cluster/node.crt`, `cluster/node.key` this node's certificate and key
//! * `cluster/secrets.json`   the gossip key
//! * `cluster/joined`         present on nodes that joined the cluster
//! * `runtime/`               the runtime's sources, builds and logs
//! * `listen.json`            the addresses actually bound, written once the
//!   node serves (tools and tests read it; removed on clean shutdown)
//!
//! Must never: write a file with a mode wider than 0600 or a directory
//! wider than 0700, leave a half-written file after a crash, or accept a
//! key file that does not hold exactly 32 bytes.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rand::{Rng, RngCore};

/// A file of the data dir.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum File {
    NodeId,
    Listen,
    AuthSigningKey,
    ConfigSecretKey,
    CaCert,
    CaKey,
    NodeCert,
    NodeKey,
    ClusterSecrets,
    Joined,
}

impl File {
    /// The file's path relative to the data dir.
    pub fn name(self) -> &'static str {
        match self {
            File::NodeId => "node-id",
            File::Listen => "listen.json",
            File::AuthSigningKey => "auth-signing.key",
            File::ConfigSecretKey => "config-secret.key",
            File::CaCert => "cluster/ca.crt",
            File::CaKey => "cluster/ca.key",
            File::NodeCert => "cluster/node.crt",
            File::NodeKey => "cluster/node.key",
            File::ClusterSecrets => "cluster/secrets.json",
            File::Joined => "cluster/joined",
        }
    }
}

/// A file of the data dir could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct FileError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// A node's data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// The data dir at `root`, created (0700, with its parents) if missing.
    pub fn open(root: &Path) -> Result<DataDir, FileError> {
        create_private_dir(root).map_err(|source| FileError {
            path: root.to_path_buf(),
            source,
        })?;
        Ok(DataDir {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The Raft state's sled database.
    pub fn raft(&self) -> PathBuf {
        self.root.join("raft")
    }

    /// The runtime's folder.
    pub fn runtime(&self) -> PathBuf {
        self.root.join("runtime")
    }

    /// The folder of the cluster material.
    pub fn cluster(&self) -> PathBuf {
        self.root.join("cluster")
    }

    pub fn path(&self, file: File) -> PathBuf {
        self.root.join(file.name())
    }

    fn err(&self, file: File) -> impl Fn(std::io::Error) -> FileError + '_ {
        move |source| FileError {
            path: self.path(file),
            source,
        }
    }

    fn invalid(&self, file: File, what: &str) -> FileError {
        FileError {
            path: self.path(file),
            source: std::io::Error::other(what.to_string()),
        }
    }

    pub fn exists(&self, file: File) -> bool {
        self.path(file).exists()
    }

    /// The file's text, or `None` when it does not exist.
    pub fn read(&self, file: File) -> Result<Option<String>, FileError> {
        match std::fs::read_to_string(self.path(file)) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.err(file)(e)),
        }
    }

    /// The file's text; a missing file is an error.
    pub fn read_existing(&self, file: File) -> Result<String, FileError> {
        self.read(file)?
            .ok_or_else(|| self.err(file)(std::io::ErrorKind::NotFound.into()))
    }

    /// Writes the file whole, 0600, durably (see [`write_private`]),
    /// creating its folder when needed.
    pub fn write(&self, file: File, bytes: &[u8]) -> Result<(), FileError> {
        let path = self.path(file);
        if let Some(parent) = path.parent() {
            create_private_dir(parent).map_err(self.err(file))?;
        }
        write_private(&path, bytes).map_err(self.err(file))
    }

    pub fn remove(&self, file: File) {
        let _ = std::fs::remove_file(self.path(file));
    }

    /// This node's id: read, or drawn at random and kept the first time.
    pub fn node_id(&self) -> Result<u64, FileError> {
        match self.read(File::NodeId)? {
            Some(text) => text
                .trim()
                .parse()
                .map_err(|_| self.invalid(File::NodeId, "does not hold a node id")),
            None => {
                let id: u64 = rand::thread_rng().gen_range(1..u64::MAX);
                self.write(File::NodeId, id.to_string().as_bytes())?;
                Ok(id)
            }
        }
    }

    /// A 32-byte key kept as base64, or `None` when it is not there yet.
    pub fn key(&self, file: File) -> Result<Option<[u8; 32]>, FileError> {
        let Some(text) = self.read(file)? else {
            return Ok(None);
        };
        B64.decode(text.trim())
            .ok()
            .and_then(|k| k.try_into().ok())
            .map(Some)
            .ok_or_else(|| self.invalid(file, "does not hold a 32-byte base64 key"))
    }

    /// The key kept in `file`, made from 32 random bytes the first time.
    pub fn key_or_new(&self, file: File) -> Result<[u8; 32], FileError> {
        if let Some(key) = self.key(file)? {
            return Ok(key);
        }
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        self.set_key(file, &key)?;
        Ok(key)
    }

    /// Replaces the key kept in `file` (a joining node takes the cluster's).
    pub fn set_key(&self, file: File, key: &[u8]) -> Result<(), FileError> {
        if key.len() != 32 {
            return Err(self.invalid(file, "the key is not 32 bytes"));
        }
        self.write(file, B64.encode(key).as_bytes())
    }
}

/// Writes a file readable by its owner only (0600), durably and
/// atomically: a temporary file beside it, fsynced, renamed over `path`,
/// and the directory fsynced, so after a crash or a power cut `path` holds
/// either the old content or the new, whole. Every key, certificate, secret
/// and id the node keeps on disk is written this way (one helper, so none
/// forgets a step). Blocking: a few milliseconds for the two fsyncs.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(dir)
}

/// Creates `dir` and any missing parents, new ones 0700, and makes each
/// new entry durable (fsync of the directory that holds it): a file
/// written durably into a directory whose own entry was lost would be lost
/// with it.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let mut missing = Vec::new();
    let mut cur = Some(dir);
    while let Some(d) = cur.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        missing.push(d.to_path_buf());
        cur = d.parent();
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    for d in missing.iter().rev() {
        if let Some(parent) = d.parent() {
            sync_dir(if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            })?;
        }
    }
    Ok(())
}

/// fsyncs a directory, making the names created or renamed in it durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn keys_are_made_once_kept_private_and_checked() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(&tmp.path().join("data")).unwrap();
        assert_eq!(mode(dir.root()), 0o700);
        assert_eq!(dir.key(File::AuthSigningKey).unwrap(), None);
        let made = dir.key_or_new(File::AuthSigningKey).unwrap();
        assert_eq!(dir.key_or_new(File::AuthSigningKey).unwrap(), made);
        assert_eq!(mode(&dir.path(File::AuthSigningKey)), 0o600);
        assert!(dir.set_key(File::ConfigSecretKey, b"short").is_err());
        assert!(!dir.exists(File::ConfigSecretKey));
        std::fs::write(dir.path(File::ConfigSecretKey), "not a key").unwrap();
        let e = dir.key(File::ConfigSecretKey).unwrap_err().to_string();
        assert!(
            e.contains("config-secret.key") && e.contains("32-byte"),
            "{e}"
        );
    }

    #[test]
    fn the_node_id_is_drawn_once_and_a_bad_one_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(tmp.path()).unwrap();
        let id = dir.node_id().unwrap();
        assert_ne!(id, 0);
        assert_eq!(dir.node_id().unwrap(), id);
        std::fs::write(dir.path(File::NodeId), "seven").unwrap();
        assert!(dir.node_id().unwrap_err().to_string().contains("node-id"));
    }

    #[test]
    fn cluster_files_get_their_private_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(tmp.path()).unwrap();
        dir.write(File::NodeKey, b"pem").unwrap();
        assert_eq!(mode(&dir.cluster()), 0o700);
        assert_eq!(mode(&dir.path(File::NodeKey)), 0o600);
        assert_eq!(dir.read_existing(File::NodeKey).unwrap(), "pem");
        assert!(dir.read(File::CaKey).unwrap().is_none());
        assert!(dir.read_existing(File::CaKey).is_err());
    }

    #[test]
    fn private_files_are_replaced_whole_and_leave_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        write_private(&path, b"first").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        // Replacing an existing file: the same name, the new bytes, 0600
        // even if the old one was wider.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&path, b"second, longer").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second, longer");
        assert_eq!(mode(&path), 0o600);
        // A temp file left by a crash is replaced, and none remains after.
        std::fs::write(dir.path().join(".node.key.tmp"), b"stale").unwrap();
        write_private(&path, b"third").unwrap();
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["node.key".to_string()]);
        assert_eq!(std::fs::read(&path).unwrap(), b"third");
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.key");
        write_private(&path, b"old").unwrap();
        // The rename fails: the target became a non-empty directory.
        let blocked = dir.path().join("blocked");
        std::fs::create_dir(&blocked).unwrap();
        std::fs::write(blocked.join("x"), b"").unwrap();
        assert!(write_private(&blocked, b"new").is_err());
        assert!(!dir.path().join(".blocked.tmp").exists());
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
    }

    #[test]
    fn private_dirs_are_created_0700_with_their_parents() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b/c");
        create_private_dir(&deep).unwrap();
        for d in ["a", "a/b", "a/b/c"] {
            assert_eq!(mode(&dir.path().join(d)), 0o700, "{d}");
        }
        create_private_dir(&deep).unwrap();
    }
}
