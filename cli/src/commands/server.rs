//! `micro server`: runs a node until SIGINT or SIGTERM.

use std::path::PathBuf;

use micro_node::ServerOptions;

use crate::args::ServerArgs;
use crate::errors::Failure;

fn default_data_dir() -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".micro").join("server")
}

pub fn run(args: &ServerArgs) -> Result<(), Failure> {
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
        auth_admin_password: args.auth_admin_password.clone(),
        auth_token_ttl: args.auth_token_ttl,
        join: args.join.clone(),
        token: args.token.clone(),
        cluster_size: args.cluster_size as usize,
        raft_snapshot_after: args.raft_snapshot_after,
        api_cors_origins: args.api_cors_origins.clone(),
        http_header_timeout: args.api_header_timeout,
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
