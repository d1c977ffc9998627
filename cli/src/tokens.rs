//! The tokens file, `~/.micro/tokens` (beside the config file): the sessions
//! `micro login` opened, one line per environment and namespace:
//!
//! `env<TAB>namespace<TAB>account<TAB>access_token<TAB>refresh_token<TAB>created<TAB>expiry`
//!
//! with `created` and `expiry` in unix seconds. The file holds credentials,
//! so it is only ever written whole (temp file, then rename) with mode 0600.
//! A line that does not parse is skipped, not fatal: the worst it costs is
//! logging in again.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::errors::Failure;

/// The file's name, in the config file's directory.
const FILE_NAME: &str = "tokens";

/// One session: the tokens of `account` in `namespace` of environment `env`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub env: String,
    pub namespace: String,
    pub account: String,
    pub access_token: String,
    pub refresh_token: String,
    /// unix seconds
    pub created: i64,
    /// unix seconds
    pub expiry: i64,
}

impl Entry {
    /// Parses one line; `None` if it is not seven fields with numeric times
    /// and non-empty keys and tokens.
    fn parse(line: &str) -> Option<Entry> {
        let f: Vec<&str> = line.split('\t').collect();
        let [env, namespace, account, access, refresh, created, expiry] = f.as_slice() else {
            return None;
        };
        if env.is_empty() || namespace.is_empty() || access.is_empty() {
            return None;
        }
        Some(Entry {
            env: env.to_string(),
            namespace: namespace.to_string(),
            account: account.to_string(),
            access_token: access.to_string(),
            refresh_token: refresh.to_string(),
            created: created.trim().parse().ok()?,
            expiry: expiry.trim().parse().ok()?,
        })
    }

    fn line(&self) -> String {
        format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
            self.env,
            self.namespace,
            self.account,
            self.access_token,
            self.refresh_token,
            self.created,
            self.expiry
        )
    }

    /// Whether the access token expires within `margin` seconds of `now`.
    pub fn expires_within(&self, now: i64, margin: i64) -> bool {
        self.expiry.saturating_sub(now) < margin
    }
}

/// The tokens file's path for a config file: the same directory.
pub fn path_for(config_path: &Path) -> PathBuf {
    match config_path.parent() {
        Some(dir) => dir.join(FILE_NAME),
        None => PathBuf::from(FILE_NAME),
    }
}

/// The sessions in the tokens file.
#[derive(Debug)]
pub struct Tokens {
    path: PathBuf,
    entries: Vec<Entry>,
}

impl Tokens {
    /// Reads the file at `path`; a missing file has no sessions.
    pub fn load(path: &Path) -> Result<Tokens, Failure> {
        let text = match std::fs::read(path) {
            Ok(raw) => String::from_utf8_lossy(&raw).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(Failure::msg(format!("Cannot read {}: {e}", path.display()))),
        };
        let mut tokens = Tokens {
            path: path.to_path_buf(),
            entries: Vec::new(),
        };
        for line in text.lines() {
            if let Some(entry) = Entry::parse(line.trim_end_matches('\r')) {
                // A later line for the same key wins, as `set` would have it.
                tokens.remove(&entry.env, &entry.namespace);
                tokens.entries.push(entry);
            }
        }
        Ok(tokens)
    }

    /// The session of `namespace` in `env`.
    pub fn get(&self, env: &str, namespace: &str) -> Option<&Entry> {
        self.entries
            .iter()
            .find(|e| e.env == env && e.namespace == namespace)
    }

    /// Adds or replaces the session of the entry's env and namespace.
    pub fn set(&mut self, entry: Entry) -> Result<(), Failure> {
        let fields = [
            &entry.env,
            &entry.namespace,
            &entry.account,
            &entry.access_token,
            &entry.refresh_token,
        ];
        if entry.env.is_empty()
            || entry.namespace.is_empty()
            || entry.access_token.is_empty()
            || fields.iter().any(|f| f.chars().any(char::is_control))
        {
            return Err(Failure::msg(
                "Cannot save the session: the server sent an unusable token",
            ));
        }
        match self
            .entries
            .iter_mut()
            .find(|e| e.env == entry.env && e.namespace == entry.namespace)
        {
            Some(old) => *old = entry,
            None => self.entries.push(entry),
        }
        Ok(())
    }

    /// Removes the session of `namespace` in `env`, giving it back.
    pub fn remove(&mut self, env: &str, namespace: &str) -> Option<Entry> {
        let at = self
            .entries
            .iter()
            .position(|e| e.env == env && e.namespace == namespace)?;
        Some(self.entries.remove(at))
    }

    /// Writes the file whole: a 0600 temp file in the same directory,
    /// renamed over the old one.
    pub fn save(&self) -> Result<(), Failure> {
        let fail =
            |e: std::io::Error| Failure::msg(format!("Cannot write {}: {e}", self.path.display()));
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        create_private_dir(&dir).map_err(fail)?;
        let text: String = self.entries.iter().map(Entry::line).collect();
        let mut tmp = tempfile::Builder::new()
            .prefix(".tokens.")
            .tempfile_in(&dir)
            .map_err(fail)?;
        restrict(tmp.path()).map_err(fail)?;
        tmp.write_all(text.as_bytes()).map_err(fail)?;
        tmp.as_file().sync_all().map_err(fail)?;
        tmp.persist(&self.path).map_err(|e| fail(e.error))?;
        restrict(&self.path).map_err(fail)?;
        Ok(())
    }
}

/// Creates the directory (and its parents) if missing; a new one is private.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// Makes a file readable and writable by its owner only.
fn restrict(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(env: &str, ns: &str, access: &str) -> Entry {
        Entry {
            env: env.into(),
            namespace: ns.into(),
            account: "admin".into(),
            access_token: access.into(),
            refresh_token: "r1".into(),
            created: 100,
            expiry: 200,
        }
    }

    #[test]
    fn tokens_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_for(&dir.path().join("sub").join("config.json"));
        assert_eq!(path, dir.path().join("sub").join("tokens"));
        let mut t = Tokens::load(&path).unwrap();
        assert!(t.get("local", "micro").is_none());
        t.set(entry("local", "micro", "a1")).unwrap();
        t.set(entry("local", "foo", "a2")).unwrap();
        t.set(entry("dev", "micro", "a3")).unwrap();
        t.set(entry("local", "micro", "a4")).unwrap();
        t.save().unwrap();

        let mut again = Tokens::load(&path).unwrap();
        assert_eq!(
            again.get("local", "micro"),
            Some(&entry("local", "micro", "a4"))
        );
        assert_eq!(again.get("local", "foo").unwrap().access_token, "a2");
        assert_eq!(again.get("dev", "micro").unwrap().access_token, "a3");
        assert_eq!(again.entries.len(), 3);

        assert_eq!(again.remove("local", "foo").unwrap().access_token, "a2");
        assert!(again.remove("local", "foo").is_none());
        again.save().unwrap();
        let third = Tokens::load(&path).unwrap();
        assert!(third.get("local", "foo").is_none());
        assert_eq!(third.entries.len(), 2);
    }

    #[cfg(unix)]
    #[test]
    fn tokens_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        // An existing file with loose permissions is tightened on write.
        std::fs::write(&path, "").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut t = Tokens::load(&path).unwrap();
        t.set(entry("local", "micro", "a1")).unwrap();
        t.save().unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // No temp files left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["tokens"]);
    }

    #[test]
    fn malformed_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(
            &path,
            "garbage\n\
             local\tmicro\tadmin\ta1\tr1\tnot-a-number\t200\n\
             local\tmicro\n\
             \n\
             dev\tfoo\tbob\ta2\tr2\t100\t200\n\
             local\t\tadmin\ta3\tr3\t100\t200\n\
             x\ty\tz\ta\tb\t1\t2\textra\n",
        )
        .unwrap();
        let t = Tokens::load(&path).unwrap();
        assert_eq!(t.entries.len(), 1);
        let e = t.get("dev", "foo").unwrap();
        assert_eq!((e.account.as_str(), e.access_token.as_str()), ("bob", "a2"));
        assert_eq!((e.created, e.expiry), (100, 200));
    }

    #[test]
    fn fields_with_control_characters_are_refused() {
        let mut t = Tokens {
            path: PathBuf::from("unused"),
            entries: Vec::new(),
        };
        assert!(t.set(entry("local", "mi\tcro", "a1")).is_err());
        assert!(t.set(entry("local", "micro", "a\n1")).is_err());
        assert!(t.set(entry("local", "micro", "")).is_err());
        assert!(t.entries.is_empty());
    }

    #[test]
    fn expiry_margin() {
        let e = entry("local", "micro", "a1"); // expiry 200
        assert!(!e.expires_within(100, 60));
        assert!(e.expires_within(141, 60));
        assert!(e.expires_within(300, 60));
    }
}
