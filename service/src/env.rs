//! Environments: named node addresses the CLI talks to, kept with the
//! current choice in `~/.micro/config.json`. An `https://` environment is
//! reached over TLS and keeps the CA certificate it trusts (the PEM itself,
//! so the environment does not depend on where the file was). An
//! environment may name several nodes of one cluster: they are tried in
//! order, and the first that connects is used.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The built-in environment.
pub const LOCAL: &str = "local";

/// One environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Env {
    pub name: String,
    /// host:port of a node's gRPC endpoint: the first one tried
    pub proxy_address: String,
    /// host:port of other nodes of the same cluster, tried in this order
    /// when the ones before cannot be reached (absent from configs written
    /// before environments had several addresses)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub other_addresses: Vec<String>,
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
    /// The addresses as the user gave them (`https://host:port` over TLS),
    /// comma-separated in the order they are tried.
    pub fn address(&self) -> String {
        let shown: Vec<String> = self.targets().iter().map(|t| t.to_string()).collect();
        shown.join(",")
    }

    /// Every `host:port`, in the order they are tried.
    pub fn addresses(&self) -> Vec<&str> {
        std::iter::once(self.proxy_address.as_str())
            .chain(self.other_addresses.iter().map(String::as_str))
            .collect()
    }

    /// Where and how to connect to the first address.
    pub fn target(&self) -> crate::dial::Target {
        self.target_of(&self.proxy_address)
    }

    /// Where and how to connect, one target per address, in order.
    pub fn targets(&self) -> Vec<crate::dial::Target> {
        self.addresses()
            .into_iter()
            .map(|a| self.target_of(a))
            .collect()
    }

    fn target_of(&self, address: &str) -> crate::dial::Target {
        crate::dial::Target {
            address: address.to_string(),
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
    #[error("Invalid address list '{0}': an address in it is empty")]
    EmptyAddress(String),
    #[error("Address '{0}' is listed twice")]
    DuplicateAddress(String),
    #[error("Cannot mix https:// and plaintext addresses in one environment: use https:// for all of them or for none")]
    MixedTls,
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
        other_addresses: Vec::new(),
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

/// Parses `list`, one address or several separated by commas: each
/// normalized (default port added), `https://` for all or for none.
/// Returns whether they are TLS, and the `host:port`s in order.
pub fn parse_addresses(list: &str) -> Result<(bool, Vec<String>), EnvError> {
    let items: Vec<&str> = list.split(',').collect();
    let several = items.len() > 1;
    let mut tls = None;
    let mut out: Vec<String> = Vec::new();
    for item in items {
        let trimmed = item.trim();
        // One address is named in errors as given, as before lists.
        let shown = if several { trimmed } else { list };
        if trimmed.is_empty() && several {
            return Err(EnvError::EmptyAddress(list.to_string()));
        }
        let (secure, rest) = match trimmed.strip_prefix("https://") {
            Some(rest) => (true, rest.strip_suffix('/').unwrap_or(rest)),
            None => (false, trimmed),
        };
        let address =
            normalize_address(rest).map_err(|_| EnvError::BadAddress(shown.to_string()))?;
        if *tls.get_or_insert(secure) != secure {
            return Err(EnvError::MixedTls);
        }
        // Host names are case-insensitive: `Node` and `node` are one node.
        if out.iter().any(|a| a.eq_ignore_ascii_case(&address)) {
            let scheme = if secure { "https://" } else { "" };
            return Err(EnvError::DuplicateAddress(format!("{scheme}{address}")));
        }
        out.push(address);
    }
    Ok((tls.unwrap_or(false), out))
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

    /// Adds an environment of one address or several (comma-separated,
    /// nodes of one cluster, tried in order); `https://` addresses are
    /// reached over TLS, trusting `ca` (the CA certificate's PEM and the
    /// file it came from, for errors) or else the system's CAs.
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
        let (tls, addresses) = parse_addresses(address)?;
        let Some((first, others)) = addresses.split_first() else {
            return Err(EnvError::BadAddress(address.to_string()));
        };
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
                proxy_address: first.clone(),
                other_addresses: others.to_vec(),
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

    #[test]
    fn an_env_may_list_the_nodes_of_a_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let mut cfg = Config::load(&path).unwrap();
        cfg.add("prod", "10.0.0.1, 10.0.0.2:9000 ,10.0.0.3", "", None)
            .unwrap();
        let prod = cfg.get("prod").unwrap();
        assert_eq!(prod.proxy_address, "10.0.0.1:8081");
        assert_eq!(
            prod.addresses(),
            ["10.0.0.1:8081", "10.0.0.2:9000", "10.0.0.3:8081"]
        );
        assert_eq!(prod.address(), "10.0.0.1:8081,10.0.0.2:9000,10.0.0.3:8081");
        assert_eq!(prod.target(), prod.targets()[0]);
        assert_eq!(
            prod.targets()[2],
            crate::dial::Target::plain("10.0.0.3:8081")
        );
        cfg.add("sec", "https://a/,https://[::1]:7", "", None)
            .unwrap();
        let sec = cfg.get("sec").unwrap();
        assert_eq!(sec.address(), "https://a:8081,https://[::1]:7");
        assert!(sec
            .targets()
            .iter()
            .all(|t| t.tls == Some(crate::dial::Trust::System)));
        cfg.save().unwrap();
        assert_eq!(Config::load(&path).unwrap().get("prod").unwrap(), prod);
    }

    #[test]
    fn bad_address_lists_are_refused_and_change_nothing() {
        let mut cfg = Config::default();
        let before = cfg.envs.clone();
        let err = |list: &str| {
            let mut c = Config::default();
            c.add("x", list, "", None).unwrap_err().to_string()
        };
        assert_eq!(
            err("10.0.0.1,,10.0.0.2"),
            "Invalid address list '10.0.0.1,,10.0.0.2': an address in it is empty"
        );
        assert_eq!(
            err("10.0.0.1,"),
            "Invalid address list '10.0.0.1,': an address in it is empty"
        );
        assert_eq!(
            err("10.0.0.1,10.0.0.1:8081"),
            "Address '10.0.0.1:8081' is listed twice"
        );
        assert_eq!(
            err("https://Node,https://node:8081"),
            "Address 'https://node:8081' is listed twice"
        );
        assert_eq!(
            err("https://a,b"),
            "Cannot mix https:// and plaintext addresses in one environment: use https:// for all of them or for none"
        );
        assert_eq!(
            err("a, host:port"),
            "Invalid address 'host:port': expected HOST, HOST:PORT or https://HOST:PORT"
        );
        // One address is named as given, as before.
        assert_eq!(
            err(" host:port "),
            "Invalid address ' host:port ': expected HOST, HOST:PORT or https://HOST:PORT"
        );
        assert!(matches!(
            cfg.add("x", "a,b", "", Some(("pem", "ca.pem"))),
            Err(EnvError::CaWithoutTls)
        ));
        assert!(cfg.add("x", "a,,b", "", None).is_err());
        assert_eq!(cfg.envs, before);
    }

    #[test]
    fn a_config_written_before_address_lists_loads_as_before() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"env":"old","envs":{"old":{"name":"old","proxy_address":"10.9.9.9:8081","description":"d"}}}"#,
        )
        .unwrap();
        let cfg = Config::load(&path).unwrap();
        let old = cfg.get("old").unwrap();
        assert_eq!(old.addresses(), ["10.9.9.9:8081"]);
        assert_eq!(old.targets(), [crate::dial::Target::plain("10.9.9.9:8081")]);
        assert_eq!(old.address(), "10.9.9.9:8081");
        // Saved again, it has no list of other addresses: older CLIs read it.
        cfg.save().unwrap();
        let raw = std::fs::read_to_string(&path).unwrap();
        assert!(!raw.contains("other_addresses"), "{raw}");
        let mut cfg = cfg;
        cfg.add("new", "a,b", "", None).unwrap();
        cfg.save().unwrap();
        let raw = std::fs::read_to_string(&path).unwrap();
        assert!(raw.contains(r#""proxy_address": "a:8081""#), "{raw}");
        assert!(raw.contains(r#""other_addresses": ["#), "{raw}");
    }
}
