//! The builtin commands, and the `Context` they share: the config file, the
//! chosen environment and namespace, and a connection that carries the
//! session's access token.

pub mod auth;
pub mod broker;
pub mod call;
pub mod cluster;
pub mod config;
pub mod env;
pub mod events;
pub mod new;
pub mod runtime;
pub mod server;
pub mod services;
pub mod store;
pub mod user;

use std::io::Write;
use std::path::PathBuf;

use micro_proto::auth::TokenRequest;

use crate::args::{Cli, Command};
use crate::errors::Failure;
use crate::tokens::{self, Entry, Tokens};

/// An access token this close to its expiry (seconds) is refreshed before use.
const REFRESH_MARGIN: i64 = 60;

/// What every client command needs: the config file, the chosen
/// environment and namespace.
pub struct Context {
    pub config: micro::env::Config,
    /// Where `config` was loaded from; the tokens file sits beside it.
    pub config_path: PathBuf,
    pub env: Option<String>,
    pub namespace: Option<String>,
}

/// Seconds since the epoch.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Context {
    fn load(cli: &Cli) -> Result<Context, Failure> {
        let path = cli.config.clone().unwrap_or_else(micro::env::default_path);
        Ok(Context {
            config: micro::env::Config::load(&path)?,
            config_path: path,
            env: cli.env.clone().filter(|e| !e.is_empty()),
            namespace: cli.namespace.clone().filter(|n| !n.is_empty()),
        })
    }

    /// The name of the environment commands act in: `--env`, else the
    /// current one.
    pub fn env_name(&self) -> &str {
        self.env.as_deref().unwrap_or(self.config.current_name())
    }

    /// The environment's saved namespace, else the default one.
    pub fn env_namespace(&self) -> Result<String, Failure> {
        let env = self.config.get(self.env_name())?;
        Ok(Some(env.namespace)
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| micro::DEFAULT_NAMESPACE.to_string()))
    }

    /// The namespace commands act in: `--namespace`, else the environment's.
    pub fn current_namespace(&self) -> Result<String, Failure> {
        match &self.namespace {
            Some(ns) => Ok(ns.clone()),
            None => self.env_namespace(),
        }
    }

    /// Where the sessions are kept.
    pub fn tokens_path(&self) -> PathBuf {
        tokens::path_for(&self.config_path)
    }

    /// Connects to the current environment's node, acting in the current
    /// namespace with its session's token (if logged in).
    pub async fn connect(&self) -> Result<micro::Client, Failure> {
        self.connect_in(&self.current_namespace()?).await
    }

    /// Connects acting in `ns` with its session's token, refreshed first
    /// when it is about to expire. A session the server no longer accepts
    /// is dropped and the client acts anonymously.
    pub async fn connect_in(&self, ns: &str) -> Result<micro::Client, Failure> {
        let client = self.connect_anonymous(ns).await?;
        match self.session(ns, Some(&client)).await? {
            Session::Active(entry) => client.set_token(Some(&entry.access_token)),
            // The refresh could not reach the server: the token, while it
            // lasts, is still better than none.
            Session::Stale(entry, _) if entry.expiry > now_secs() => {
                client.set_token(Some(&entry.access_token))
            }
            Session::Stale(..) | Session::None => {}
        }
        Ok(client)
    }

    /// Connects acting in `ns` without any token, to the first of the
    /// environment's addresses that connects (tried in order, nothing
    /// remembered: the nodes of a cluster share sessions).
    pub async fn connect_anonymous(&self, ns: &str) -> Result<micro::Client, Failure> {
        let env = self.config.get(self.env_name())?;
        micro::Client::connect_any(&env.targets(), ns)
            .await
            .map_err(|e| match e {
                micro::Error::Connect(a) => {
                    Failure::msg(format!("Failed to connect to micro server at {a}"))
                }
                other => other.into(),
            })
    }

    /// The session of `ns` in the current environment, its access token
    /// refreshed (and saved) when it expires within a minute, through
    /// `client` or, when `None`, a new anonymous connection. A session the
    /// server refuses to refresh is forgotten. Errors: the tokens file
    /// cannot be used, or (with no `client`) the node cannot be reached.
    pub async fn session(
        &self,
        ns: &str,
        client: Option<&micro::Client>,
    ) -> Result<Session, Failure> {
        let path = self.tokens_path();
        let mut tokens = Tokens::load(&path)?;
        let env = self.env_name().to_string();
        let Some(entry) = tokens.get(&env, ns).cloned() else {
            return Ok(Session::None);
        };
        if !entry.expires_within(now_secs(), REFRESH_MARGIN) {
            return Ok(Session::Active(entry));
        }
        let own;
        let client = match client {
            Some(c) => c,
            None => {
                own = self.connect_anonymous(ns).await?;
                &own
            }
        };
        let req = TokenRequest {
            refresh_token: entry.refresh_token.clone(),
            ..Default::default()
        };
        match client.auth().token(req).await {
            Ok(resp) => match resp.into_inner().token {
                Some(t) if !t.access_token.is_empty() => {
                    let fresh = Entry {
                        account: user::subject(&t.access_token).unwrap_or(entry.account),
                        refresh_token: if t.refresh_token.is_empty() {
                            entry.refresh_token
                        } else {
                            t.refresh_token
                        },
                        access_token: t.access_token,
                        created: t.created,
                        expiry: t.expiry,
                        env,
                        namespace: ns.to_string(),
                    };
                    tokens.set(fresh.clone())?;
                    tokens.save()?;
                    Ok(Session::Active(fresh))
                }
                _ => forget(tokens, &env, ns),
            },
            Err(s) if unreached(&s) => Ok(Session::Stale(entry, s.into())),
            Err(_) => forget(tokens, &env, ns),
        }
    }
}

/// What the tokens file holds for a namespace, once a due refresh was tried.
pub enum Session {
    /// Not logged in (or the session was refused and forgotten).
    None,
    /// Logged in, with an access token good for at least a minute.
    Active(Entry),
    /// Logged in, but the token is due for a refresh that could not reach
    /// the server (the reason given); the session is kept.
    Stale(Entry, Failure),
}

/// Drops a session the server would not refresh.
fn forget(mut tokens: Tokens, env: &str, ns: &str) -> Result<Session, Failure> {
    tokens.remove(env, ns);
    tokens.save()?;
    Ok(Session::None)
}

/// Failures that say nothing about the token: the server was not reached.
fn unreached(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
    )
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
            build,
        }) => runtime::logs(ctx, name, *lines, *follow, *build).await,
        Some(Command::Kill { name }) => runtime::kill(ctx, name).await,
        Some(Command::Update {
            source,
            name,
            binary,
        }) => runtime::update(ctx, source, name.as_deref(), *binary).await,
        Some(Command::Login(a)) => auth::login(ctx, a).await,
        Some(Command::Logout) => auth::logout(ctx).await,
        Some(Command::User(a)) => user::run(ctx, a).await,
        Some(Command::Auth(a)) => auth::run(ctx, a).await,
        Some(Command::Cluster(a)) => cluster::run(ctx, a).await,
        Some(Command::Events(a)) => events::run(ctx, a).await,
        Some(Command::Broker(a)) => broker::run(ctx, a).await,
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
