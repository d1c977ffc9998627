//! Environments: named node addresses the CLI talks to, kept with the
//! current choice in `~/.micro/config.json`. An `https://` environment is
//! reached over TLS and keeps the CA certificate it trusts (the PEM itself,
//! so the environment does not depend on where the file was).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The built-in environment.
pub const LOCAL: &str = "local";

/// One environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Env {
    pub name: String,
    /// host:port of a node's gRPC endpoint
    pub proxy_address: String,
    /// reached over TLS (`https://` when added)
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tls: bool,
    /// the CA certificate (PEM) a TLS environment trusts; empty: the
    /// system's CAs
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ca: String,
    #[serde(default)]
    pub description: String,
    /// the namespace chosen for this environment; empty for the default
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
}

impl Env {
    /// The address as the user gave it: `https://host:port` over TLS.
    pub fn address(&self) -> String {
        self.target().to_string()
    }

    /// Where and how to connect.
    pub fn target(&self) -> crate::dial::Target {
        crate::dial::Target {
            address: self.proxy_address.clone(),
            tls: self.tls.then(|| {
                if self.ca.is_empty() {
                    crate::dial::Trust::System
                } else {
                    crate::dial::Trust::Ca(self.ca.clone())
                }
            }),
        }
    }
}

/// The user's CLI state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Config {
    /// the current environment's name; empty means `local`
    #[serde(default)]
    pub env: String,
    #[serde(default)]
    pub envs: BTreeMap<String, Env>,
    #[serde(skip)]
    path: PathBuf,
}

/// What can go wrong with environments.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("Environment '{0}' does not exist")]
    Unknown(String),
    #[error("Environment '{0}' already exists")]
    Exists(String),
    #[error("Cannot delete the current environment '{0}'; switch with 'micro env set' first")]
    DeleteCurrent(String),
    #[error("Cannot delete the built-in environment 'local'")]
    DeleteLocal,
    #[error("Invalid environment name '{0}': use letters, digits, '-' and '_'")]
    BadName(String),
    #[error("Invalid address '{0}': expected HOST, HOST:PORT or https://HOST:PORT")]
    BadAddress(String),
    #[error("A CA certificate needs an https:// address")]
    CaWithoutTls,
    #[error("The CA file {0} holds no valid PEM certificate")]
    BadCa(String),
    #[error("Cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("Cannot write {path}: {reason}")]
    Write { path: String, reason: String },
}

fn local_env() -> Env {
    Env {
        name: LOCAL.into(),
        proxy_address: format!("127.0.0.1:{}", crate::DEFAULT_PROXY_PORT),
        description: "Local running Micro Server".into(),
        namespace: String::new(),
        tls: false,
        ca: String::new(),
    }
}

/// The default location of the config file: `$HOME/.micro/config.json`.
pub fn default_path() -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".micro").join("config.json")
}

/// Adds the default port to an address that has none; rejects empty or
/// malformed ones.
pub fn normalize_address(addr: &str) -> Result<String, EnvError> {
    let addr = addr.trim();
    let bad = || EnvError::BadAddress(addr.to_string());
    if addr.is_empty() || addr.contains('/') || addr.contains(char::is_whitespace) {
        return Err(bad());
    }
    // [v6]:port, host:port, or a bare host / bare [v6]
    if let Some(rest) = addr.strip_prefix('[') {
        let (_, after) = rest.split_once(']').ok_or_else(bad)?;
        return match after.strip_prefix(':') {
            Some(port) => port
                .parse::<u16>()
                .map(|_| addr.to_string())
                .map_err(|_| bad()),
            None if after.is_empty() => Ok(format!("{addr}:{}", crate::DEFAULT_PROXY_PORT)),
            None => Err(bad()),
        };
    }
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && !host.contains(':') => {
            port.parse::<u16>().map_err(|_| bad())?;
            Ok(addr.to_string())
        }
        Some(_) => Err(bad()),
        None => Ok(format!("{addr}:{}", crate::DEFAULT_PROXY_PORT)),
    }
}

impl Config {
    /// Loads the config at `path`; a missing file is an empty config.
    pub fn load(path: &Path) -> Result<Config, EnvError> {
        let mut cfg = match std::fs::read(path) {
            Ok(raw) => serde_json::from_slice::<Config>(&raw).map_err(|e| EnvError::Read {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Config::default(),
            Err(e) => {
                return Err(EnvError::Read {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })
            }
        };
        cfg.path = path.to_path_buf();
        Ok(cfg)
    }

    /// Writes the config back atomically (temp file, then rename).
    pub fn save(&self) -> Result<(), EnvError> {
        let werr = |e: std::io::Error| EnvError::Write {
            path: self.path.display().to_string(),
            reason: e.to_string(),
        };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(werr)?;
        }
        let raw = serde_json::to_vec_pretty(self).map_err(|e| werr(std::io::Error::other(e)))?;
        let tmp = self.path.with_extension("json.tmp");
        std::fs::write(&tmp, raw).map_err(werr)?;
        std::fs::rename(&tmp, &self.path).map_err(werr)?;
        Ok(())
    }

    /// Every environment, `local` included, by name.
    pub fn all(&self) -> BTreeMap<String, Env> {
        let mut all = self.envs.clone();
        all.entry(LOCAL.into()).or_insert_with(local_env);
        all
    }

    /// The current environment's name.
    pub fn current_name(&self) -> &str {
        if self.env.is_empty() {
            LOCAL
        } else {
            &self.env
        }
    }

    /// Looks an environment up by name.
    pub fn get(&self, name: &str) -> Result<Env, EnvError> {
        self.all()
            .remove(name)
            .ok_or_else(|| EnvError::Unknown(name.to_string()))
    }

    /// Adds an environment; an `https://` address is reached over TLS,
    /// trusting `ca` (the CA certificate's PEM and the file it came from,
    /// for errors) or else the system's CAs.
    pub fn add(
        &mut self,
        name: &str,
        address: &str,
        description: &str,
        ca: Option<(&str, &str)>,
    ) -> Result<(), EnvError> {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(EnvError::BadName(name.to_string()));
        }
        if self.all().contains_key(name) {
            return Err(EnvError::Exists(name.to_string()));
        }
        let trimmed = address.trim();
        let (tls, rest) = match trimmed.strip_prefix("https://") {
            Some(rest) => (true, rest.strip_suffix('/').unwrap_or(rest)),
            None => (false, trimmed),
        };
        let proxy_address =
            normalize_address(rest).map_err(|_| EnvError::BadAddress(address.to_string()))?;
        let ca = match ca {
            None => String::new(),
            Some(_) if !tls => return Err(EnvError::CaWithoutTls),
            Some((pem, file)) => {
                crate::dial::check_ca(pem).map_err(|_| EnvError::BadCa(file.to_string()))?;
                pem.to_string()
            }
        };
        self.envs.insert(
            name.to_string(),
            Env {
                name: name.to_string(),
                proxy_address,
                description: description.to_string(),
                namespace: String::new(),
                tls,
                ca,
            },
        );
        Ok(())
    }

    /// Makes `name` the current environment.
    pub fn set_current(&mut self, name: &str) -> Result<(), EnvError> {
        self.get(name)?;
        self.env = name.to_string();
        Ok(())
    }

    /// Deletes an environment other than the current one and `local`.
    pub fn delete(&mut self, name: &str) -> Result<(), EnvError> {
        if name == LOCAL {
            return Err(EnvError::DeleteLocal);
        }
        self.get(name)?;
        if name == self.current_name() {
            return Err(EnvError::DeleteCurrent(name.to_string()));
        }
        self.envs.remove(name);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_get_the_default_port() {
        assert_eq!(normalize_address("10.0.0.1").unwrap(), "10.0.0.1:8081");
        assert_eq!(normalize_address("node:9000").unwrap(), "node:9000");
        assert_eq!(normalize_address("[::1]").unwrap(), "[::1]:8081");
        assert_eq!(normalize_address("[::1]:7").unwrap(), "[::1]:7");
        assert!(normalize_address("host:notaport").is_err());
        assert!(normalize_address("").is_err());
        assert!(normalize_address("http://x").is_err());
    }

    #[test]
    fn envs_round_trip_and_guard_the_current_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let mut cfg = Config::load(&path).unwrap();
        assert_eq!(cfg.current_name(), "local");
        cfg.add("dev", "10.1.1.1", "", None).unwrap();
        assert!(matches!(
            cfg.add("dev", "x", "", None),
            Err(EnvError::Exists(_))
        ));
        cfg.add("sec", "https://node.example/", "", None).unwrap();
        assert!(matches!(
            cfg.add("bad", "10.1.1.1", "", Some(("pem", "ca.pem"))),
            Err(EnvError::CaWithoutTls)
        ));
        assert!(matches!(
            cfg.add("bad", "https://10.1.1.1", "", Some(("pem", "ca.pem"))),
            Err(EnvError::BadCa(_))
        ));
        assert!(matches!(
            cfg.add("bad", "http://10.1.1.1", "", None),
            Err(EnvError::BadAddress(_))
        ));
        cfg.set_current("dev").unwrap();
        assert!(matches!(cfg.delete("dev"), Err(EnvError::DeleteCurrent(_))));
        assert!(matches!(cfg.set_current("nope"), Err(EnvError::Unknown(_))));
        cfg.save().unwrap();
        let again = Config::load(&path).unwrap();
        assert_eq!(again.current_name(), "dev");
        assert_eq!(again.get("dev").unwrap().proxy_address, "10.1.1.1:8081");
        assert_eq!(again.get("local").unwrap().proxy_address, "127.0.0.1:8081");
        let sec = again.get("sec").unwrap();
        assert_eq!(sec.address(), "https://node.example:8081");
        assert_eq!(sec.target().tls, Some(crate::dial::Trust::System));
        assert_eq!(again.get("dev").unwrap().address(), "10.1.1.1:8081");
    }
}
