//! The builtin commands.

pub mod call;
pub mod config;
pub mod env;
pub mod new;
pub mod runtime;
pub mod server;
pub mod services;
pub mod store;

use std::io::Write;

use crate::args::{Cli, Command};
use crate::errors::Failure;

/// What every client command needs: the config file, the chosen
/// environment and namespace.
pub struct Context {
    pub config: micro::env::Config,
    pub env: Option<String>,
    pub namespace: Option<String>,
}

impl Context {
    fn load(cli: &Cli) -> Result<Context, Failure> {
        let path = cli.config.clone().unwrap_or_else(micro::env::default_path);
        Ok(Context {
            config: micro::env::Config::load(&path)?,
            env: cli.env.clone().filter(|e| !e.is_empty()),
            namespace: cli.namespace.clone().filter(|n| !n.is_empty()),
        })
    }

    /// Connects to the current environment's node.
    pub async fn connect(&self) -> Result<micro::Client, Failure> {
        let name = self.env.as_deref().unwrap_or(self.config.current_name());
        let env = self.config.get(name)?;
        let ns = self
            .namespace
            .clone()
            .or_else(|| Some(env.namespace.clone()).filter(|n| !n.is_empty()))
            .unwrap_or_else(|| micro::DEFAULT_NAMESPACE.to_string());
        micro::Client::connect(&env.proxy_address, &ns)
            .await
            .map_err(|e| match e {
                micro::Error::Connect(a) => {
                    Failure::msg(format!("Failed to connect to micro server at {a}"))
                }
                other => other.into(),
            })
    }
}

/// Writes to stdout, treating a closed pipe as done rather than a crash.
pub fn out(bytes: &[u8]) -> Result<(), Failure> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|_| stdout.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Failure::msg(format!("cannot write output: {e}"))),
    }
}

/// Runs a client command.
pub async fn dispatch(cli: &Cli) -> Result<(), Failure> {
    let ctx = Context::load(cli)?;
    match &cli.command {
        Some(Command::Env(a)) => env::run(ctx, a),
        Some(Command::Store(a)) => store::run(ctx, a).await,
        Some(Command::Config(a)) => config::run(ctx, a).await,
        Some(Command::Services) => services::run(ctx).await,
        Some(Command::Call {
            service,
            endpoint,
            request,
        }) => call::run(ctx, service, endpoint, request.as_deref()).await,
        Some(Command::New { name, framework }) => new::run(name, framework.as_deref()),
        Some(Command::Run(a)) => runtime::run(ctx, a).await,
        Some(Command::Status) => runtime::status(ctx).await,
        Some(Command::Logs {
            name,
            lines,
            follow,
        }) => runtime::logs(ctx, name, *lines, *follow).await,
        Some(Command::Kill { name }) => runtime::kill(ctx, name).await,
        Some(Command::Update { source, name }) => {
            runtime::update(ctx, source, name.as_deref()).await
        }
        Some(Command::External(words)) => call::dynamic(ctx, words).await,
        Some(Command::Server(_)) | None => unreachable!("handled in main"),
    }
}

/// Aligns rows into columns separated by two spaces (the last column is not
/// padded).
pub fn columns(rows: &[Vec<String>]) -> String {
    let n = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0usize; n];
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 < row.len() {
                line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            } else {
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
