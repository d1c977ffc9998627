//! Every builtin command and flag, defined once; `--help` comes from here.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "micro",
    version,
    about = "Micro: a platform for cloud-native services",
    disable_help_subcommand = true,
    allow_external_subcommands = true
)]
pub struct Cli {
    /// Environment to use (see `micro env`)
    #[arg(
        short = 'e',
        long = "env",
        env = "MICRO_ENV",
        global = true,
        value_name = "NAME"
    )]
    pub env: Option<String>,
    /// Path of the CLI's config file
    #[arg(
        short = 'c',
        long = "config",
        env = "MICRO_CONFIG_FILE",
        global = true,
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,
    /// Namespace to act in (default: the environment's, else "micro")
    #[arg(long, env = "MICRO_NAMESPACE", global = true, value_name = "NS")]
    pub namespace: Option<String>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a Micro node (one alone is a complete platform)
    Server(ServerArgs),
    /// List, add, choose and delete environments
    Env(EnvArgs),
    /// Read and write records in the store
    Store(StoreArgs),
    /// Get, set and delete configuration
    Config(ConfigArgs),
    /// List the services registered in the namespace
    Services,
    /// Call a service endpoint with a JSON request
    Call {
        /// The service, e.g. helloworld
        service: String,
        /// The endpoint, e.g. Helloworld.Call
        endpoint: String,
        /// The request as a JSON object (default {})
        request: Option<String>,
    },
    #[command(external_subcommand)]
    External(Vec<String>),
}

#[derive(Args, Debug)]
pub struct ServerArgs {
    /// Where the node keeps its state
    #[arg(long, env = "MICRO_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address of the HTTP API gateway
    #[arg(
        long,
        env = "MICRO_API_ADDRESS",
        default_value = ":8080",
        value_name = "ADDR"
    )]
    pub api_address: String,
    /// Address of the gRPC endpoint (what the CLI talks to)
    #[arg(
        long,
        env = "MICRO_PROXY_ADDRESS",
        default_value = ":8081",
        value_name = "ADDR"
    )]
    pub proxy_address: String,
    /// Address of the web dashboard
    #[arg(
        long,
        env = "MICRO_WEB_ADDRESS",
        default_value = ":8082",
        value_name = "ADDR"
    )]
    pub web_address: String,
    /// Address other nodes reach this one at
    #[arg(
        long,
        env = "MICRO_CLUSTER_ADDRESS",
        default_value = ":8083",
        value_name = "ADDR"
    )]
    pub cluster_address: String,
    /// Key that encrypts config secrets (generated and kept in the data dir if unset)
    #[arg(
        long,
        env = "MICRO_CONFIG_SECRET_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    pub config_secret_key: Option<String>,
}

#[derive(Args, Debug)]
pub struct EnvArgs {
    #[command(subcommand)]
    pub command: Option<EnvCommand>,
}

#[derive(Subcommand, Debug)]
pub enum EnvCommand {
    /// Print the current environment's name
    Get,
    /// Add an environment
    Add {
        name: String,
        /// HOST:PORT of a node's gRPC endpoint (the port defaults to 8081)
        address: String,
        /// A few words about it
        description: Option<String>,
    },
    /// Make an environment the current one
    Set { name: String },
    /// Delete an environment (not the current one)
    #[command(alias = "delete")]
    Del { name: String },
}

#[derive(Args, Debug)]
pub struct StoreArgs {
    #[command(subcommand)]
    pub command: Option<StoreCommand>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Order {
    Asc,
    Desc,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Args, Debug)]
pub struct Table {
    /// Database (default: the namespace)
    #[arg(long, value_name = "DB")]
    pub database: Option<String>,
    /// Table (default: micro)
    #[arg(long, value_name = "TABLE")]
    pub table: Option<String>,
}

#[derive(Args, Debug)]
pub struct Paging {
    /// Return at most this many
    #[arg(short = 'l', long, value_name = "N")]
    pub limit: Option<u64>,
    /// Skip this many first
    #[arg(short = 'o', long, value_name = "N")]
    pub offset: Option<u64>,
    /// Key order
    #[arg(long, value_enum, default_value = "asc")]
    pub order: Order,
    /// Output format
    #[arg(long, value_enum, default_value = "text")]
    pub output: Output,
}

#[derive(Subcommand, Debug)]
pub enum StoreCommand {
    /// Read a record, or every record whose key has a prefix or suffix
    Read {
        key: String,
        /// Treat KEY as a prefix
        #[arg(short = 'p', long)]
        prefix: bool,
        /// Treat KEY as a suffix
        #[arg(short = 's', long)]
        suffix: bool,
        /// Print a table of key, value and expiry
        #[arg(short = 'v', long)]
        verbose: bool,
        #[command(flatten)]
        paging: Paging,
        #[command(flatten)]
        table: Table,
    },
    /// Write a record
    Write {
        key: String,
        value: String,
        /// Time to live, e.g. 10s, 5m, 1h30m
        #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
        expiry: Option<Duration>,
        #[command(flatten)]
        table: Table,
    },
    /// List keys
    List {
        /// Only keys with this prefix
        #[arg(short = 'p', long, value_name = "PREFIX")]
        prefix: Option<String>,
        /// Only keys with this suffix
        #[arg(short = 's', long, value_name = "SUFFIX")]
        suffix: Option<String>,
        #[command(flatten)]
        paging: Paging,
        #[command(flatten)]
        table: Table,
    },
    /// Delete a record
    Delete {
        key: String,
        #[command(flatten)]
        table: Table,
    },
    /// List the databases of the namespace
    Databases,
    /// List the tables of a database
    Tables {
        /// Database (default: the namespace)
        #[arg(long, value_name = "DB")]
        database: Option<String>,
    },
}

#[derive(Args, Debug)]
pub struct ConfigArgs {
    #[command(subcommand)]
    pub command: Option<ConfigCommand>,
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Print the value at a dot path
    Get {
        path: String,
        /// Decrypt secrets instead of showing [secret]
        #[arg(long)]
        secret: bool,
    },
    /// Set the value at a dot path (JSON, or else a plain string)
    Set {
        path: String,
        value: String,
        /// Encrypt the value at rest
        #[arg(long)]
        secret: bool,
    },
    /// Delete the value or subtree at a dot path
    #[command(alias = "delete")]
    Del { path: String },
}

/// Parses `10s`, `1m30s`, `500ms`, `2h`, `1d`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "invalid duration '{s}': use a number and a unit (ms, s, m, h, d), like 10s or 1h30m"
        )
    };
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad());
        }
        let n: f64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        let part = n * unit;
        if !part.is_finite() || part > 1e10 {
            return Err(bad());
        }
        total += Duration::from_secs_f64(part);
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        for bad in ["", "abc", "10x", "s", "-1s", "1e400s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
