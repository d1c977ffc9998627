//! `micro server`: runs a node until SIGINT or SIGTERM.

use std::path::{Path, PathBuf};

use micro_node::{ServerOptions, TlsFiles};

use crate::args::ServerArgs;
use crate::errors::Failure;

fn default_data_dir() -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".micro").join("server")
}

/// A secret given as a file (`--token-file`, `--auth-admin-password-file`),
/// so that it never shows in `ps`: the file's text without its trailing
/// newline.
fn read_secret(what: &str, path: &Path) -> Result<String, Failure> {
    let raw = std::fs::read(path).map_err(|e| {
        Failure::msg(format!(
            "micro server: cannot read the {what} file {}: {e}",
            path.display()
        ))
    })?;
    let text = String::from_utf8(raw).map_err(|_| {
        Failure::msg(format!(
            "micro server: the {what} file {} is not valid UTF-8",
            path.display()
        ))
    })?;
    let secret = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text);
    if secret.is_empty() {
        return Err(Failure::msg(format!(
            "micro server: the {what} file {} is empty",
            path.display()
        )));
    }
    Ok(secret.to_string())
}

/// The flag's value, else the file's.
fn secret(
    value: &Option<String>,
    file: &Option<PathBuf>,
    what: &str,
) -> Result<Option<String>, Failure> {
    match (value, file) {
        (Some(v), _) => Ok(Some(v.clone())),
        (None, Some(path)) => read_secret(what, path).map(Some),
        (None, None) => Ok(None),
    }
}

pub fn run(args: &ServerArgs) -> Result<(), Failure> {
    let auth_admin_password = secret(
        &args.auth_admin_password,
        &args.auth_admin_password_file,
        "admin password",
    )?;
    let token = secret(&args.token, &args.token_file, "join token")?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        }),
        (None, None) => None,
        // clap requires both; this is for the environment variables' sake.
        _ => {
            return Err(Failure::msg(
                "micro server: --tls-cert and --tls-key go together: give both or neither",
            ))
        }
    };
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("MICRO_LOG_LEVEL").unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new("info,openraft=error,sled=warn,h2=warn,tower=warn")
        });
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let opts = ServerOptions {
        data_dir: args.data_dir.clone().unwrap_or_else(default_data_dir),
        api_address: args.api_address.clone(),
        proxy_address: args.proxy_address.clone(),
        web_address: args.web_address.clone(),
        cluster_address: args.cluster_address.clone(),
        config_secret_key: args.config_secret_key.clone(),
        runtime_target_dir: args.runtime_target_dir.clone(),
        runtime_release: args.runtime_profile == crate::args::Profile::Release,
        runtime_reschedule_after: args.runtime_reschedule_after.0,
        runtime_warm_up: args.runtime_warm_up,
        auth_admin_password,
        auth_token_ttl: args.auth_token_ttl.0,
        join: args.join.clone(),
        token,
        cluster_size: args.cluster_size as usize,
        raft_snapshot_after: args.raft_snapshot_after,
        raft_heartbeat: args.raft_heartbeat.0,
        raft_election_timeout: args.raft_election_timeout.0,
        tls,
        api_cors_origins: args.api_cors_origins.clone(),
        http_header_timeout: args.api_header_timeout.0,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::msg(format!("cannot start the runtime: {e}")))?;
    rt.block_on(async move {
        let shutdown = async {
            micro::signal::terminated().await;
            // A second signal while shutting down stops at once.
            tokio::spawn(async {
                micro::signal::terminated().await;
                std::process::exit(130);
            });
        };
        micro_node::run(opts, shutdown).await
    })
    .map_err(|e| Failure::msg(format!("micro server: {e}")))
}
