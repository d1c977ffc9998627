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
    Server(Box<ServerArgs>),
    /// List, add, choose and delete environments
    Env(EnvArgs),
    /// Read and write records in the store
    Store(StoreArgs),
    /// Get, set and delete configuration
    Config(ConfigArgs),
    /// List the services registered in the namespace
    Services,
    /// Create a new service project from the template
    New {
        /// The service's name: lowercase letters, digits and '_'
        name: String,
        /// Depend on the micro framework source at DIR by path (for working on
        /// the framework itself); by default the project depends on micro by
        /// version and the node builds it against the framework it embeds
        #[arg(long, env = "MICRO_FRAMEWORK_PATH", value_name = "DIR")]
        framework: Option<PathBuf>,
    },
    /// Build and run a service from a folder or a git URL (URL@ref)
    Run(RunArgs),
    /// Show the services the runtime runs
    Status,
    /// Show a service's logs
    Logs {
        name: String,
        /// How many of the last lines
        #[arg(short = 'n', long = "lines", default_value_t = 15)]
        lines: i64,
        /// Keep following the log
        #[arg(short = 'f', long)]
        follow: bool,
        /// Show the output of its builds instead
        #[arg(long)]
        build: bool,
    },
    /// Stop a service and remove it
    Kill { name: String },
    /// Rebuild a service from its folder or source, then swap it in (the
    /// running version serves until the new one runs)
    Update {
        /// The folder it was run from, or the name of a service run from git
        source: String,
        /// The service's name (default: the folder's name)
        #[arg(long)]
        name: Option<String>,
        /// SOURCE is an executable built elsewhere, run as it is
        #[arg(long)]
        binary: bool,
    },
    /// Call a service endpoint with a JSON request
    Call {
        /// The service, e.g. helloworld
        service: String,
        /// The endpoint, e.g. Helloworld.Call
        endpoint: String,
        /// The request as a JSON object (default {})
        request: Option<String>,
    },
    /// Log in to the current environment and namespace
    Login(LoginArgs),
    /// Log out of the current environment and namespace
    Logout,
    /// Show the logged-in account, its token and the namespace; change the password
    User(UserArgs),
    /// Manage accounts and the rules that decide who may call what
    Auth(AuthArgs),
    /// The cluster: join token, members, Raft status, removing a node
    Cluster(ClusterArgs),
    /// Replicated event streams: publish, consume (alone or in a group), read; topics and groups
    Events(EventsArgs),
    /// Fire-and-forget publish/subscribe: nothing is stored
    Broker(BrokerArgs),
    #[command(external_subcommand)]
    External(Vec<String>),
}

#[derive(Args, Debug)]
pub struct LoginArgs {
    /// The account's id or name (asked for when not given)
    #[arg(long, visible_alias = "email", value_name = "USERNAME")]
    pub username: Option<String>,
    /// The account's password (asked for, without echo, when not given)
    #[arg(long, value_name = "PASSWORD", allow_hyphen_values = true)]
    pub password: Option<String>,
}

#[derive(Args, Debug)]
pub struct UserArgs {
    #[command(subcommand)]
    pub command: Option<UserCommand>,
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Print a valid access token of the session (refreshed when about to expire)
    Token,
    /// Print the namespace commands act in, or set the environment's
    Namespace(NamespaceArgs),
    /// Change a setting of the logged-in account
    #[command(subcommand_required = true, arg_required_else_help = true)]
    Set {
        #[command(subcommand)]
        command: UserSetCommand,
    },
}

#[derive(Args, Debug)]
pub struct NamespaceArgs {
    #[command(subcommand)]
    pub command: Option<NamespaceCommand>,
}

#[derive(Subcommand, Debug)]
pub enum NamespaceCommand {
    /// Make NS the current environment's namespace
    Set { namespace: String },
}

#[derive(Subcommand, Debug)]
pub enum UserSetCommand {
    /// Change the account's password
    Password {
        /// The current password (asked for, without echo, when not given)
        #[arg(long, value_name = "PASSWORD", allow_hyphen_values = true)]
        old_password: Option<String>,
        /// The new password (asked for, without echo, when not given)
        #[arg(long, value_name = "PASSWORD", allow_hyphen_values = true)]
        new_password: Option<String>,
    },
}

#[derive(Args, Debug)]
#[command(subcommand_required = true, arg_required_else_help = true)]
pub struct ClusterArgs {
    #[command(subcommand)]
    pub command: ClusterCommand,
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Issue a token a new node joins with (global admins only)
    Token {
        /// How long the token works
        #[arg(long, value_parser = parse_duration, default_value = "24h", value_name = "DURATION")]
        ttl: Duration,
        /// Revoke every token issued so far, then issue a new one
        #[arg(long)]
        revoke_all: bool,
    },
    /// List the nodes: id, addresses, gossip state and Raft role
    Members,
    /// Show each node's Raft state: leader, term, log, commit and applied index
    Status,
    /// Take a node out of the cluster for good (admins only)
    Remove {
        /// The node's id (see `micro cluster members`)
        node: u64,
    },
}

#[derive(Args, Debug)]
#[command(subcommand_required = true, arg_required_else_help = true)]
pub struct AuthArgs {
    #[command(subcommand)]
    pub command: AuthCommand,
}

#[derive(Subcommand, Debug)]
pub enum AuthCommand {
    /// List accounts or rules
    #[command(subcommand_required = true, arg_required_else_help = true)]
    List {
        #[command(subcommand)]
        what: AuthListCommand,
    },
    /// Create an account or a rule
    #[command(subcommand_required = true, arg_required_else_help = true)]
    Create {
        #[command(subcommand)]
        what: AuthCreateCommand,
    },
    /// Delete an account or a rule
    #[command(
        subcommand_required = true,
        arg_required_else_help = true,
        alias = "del"
    )]
    Delete {
        #[command(subcommand)]
        what: AuthDeleteCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum AuthListCommand {
    /// List the namespace's accounts
    Accounts,
    /// List the namespace's rules
    Rules,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Access {
    Granted,
    Denied,
}

#[derive(Subcommand, Debug)]
pub enum AuthCreateCommand {
    /// Create an account
    ///
    /// The global --namespace flag names the namespace the account belongs
    /// to (default: the environment's); the command itself acts with the
    /// session of the environment's namespace.
    Account {
        id: String,
        /// Its password (generated and shown when not given)
        #[arg(long, value_name = "SECRET", allow_hyphen_values = true)]
        secret: Option<String>,
        /// Scopes it holds, comma separated
        #[arg(long, value_delimiter = ',', value_name = "SCOPES")]
        scopes: Vec<String>,
    },
    /// Create a rule granting or denying access to a resource
    Rule {
        id: String,
        /// The resource, TYPE:NAME:ENDPOINT ('*' matches any), e.g. service:helloworld:*
        #[arg(long, value_name = "T:N:E")]
        resource: String,
        /// The scope an account needs ("" = public, "*" = any account)
        #[arg(long, default_value = "", value_name = "SCOPE")]
        scope: String,
        /// Whether the rule grants or denies access
        #[arg(long, value_enum, default_value = "granted")]
        access: Access,
        /// Rules with a higher priority are checked first
        #[arg(
            long,
            default_value_t = 0,
            allow_negative_numbers = true,
            value_name = "N"
        )]
        priority: i32,
    },
}

#[derive(Subcommand, Debug)]
pub enum AuthDeleteCommand {
    /// Delete an account
    Account { id: String },
    /// Delete a rule
    Rule { id: String },
}

#[derive(Args, Debug)]
pub struct ServerArgs {
    /// Where the node keeps its state
    #[arg(long, env = "MICRO_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address of the HTTP API gateway (`:PORT` means every interface)
    #[arg(
        long,
        env = "MICRO_API_ADDRESS",
        default_value = micro_node::server::DEFAULT_API_ADDRESS,
        value_name = "ADDR"
    )]
    pub api_address: String,
    /// Address of the gRPC endpoint (what the CLI talks to)
    #[arg(
        long,
        env = "MICRO_PROXY_ADDRESS",
        default_value = micro_node::server::DEFAULT_PROXY_ADDRESS,
        value_name = "ADDR"
    )]
    pub proxy_address: String,
    /// Address of the web dashboard
    #[arg(
        long,
        env = "MICRO_WEB_ADDRESS",
        default_value = micro_node::server::DEFAULT_WEB_ADDRESS,
        value_name = "ADDR"
    )]
    pub web_address: String,
    /// Address other nodes reach this one at
    #[arg(
        long,
        env = "MICRO_CLUSTER_ADDRESS",
        default_value = micro_node::server::DEFAULT_CLUSTER_ADDRESS,
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
    /// Cargo target dir shared by the services this node builds (default: in the data dir)
    #[arg(long, env = "MICRO_RUNTIME_TARGET_DIR", value_name = "DIR")]
    pub runtime_target_dir: Option<PathBuf>,
    /// How services are built
    #[arg(
        long,
        env = "MICRO_RUNTIME_PROFILE",
        value_enum,
        default_value = "release"
    )]
    pub runtime_profile: Profile,
    /// The first admin's password, used when the cluster is created (default: micro).
    /// A flag shows in `ps`: prefer MICRO_AUTH_ADMIN_PASSWORD or --auth-admin-password-file
    #[arg(
        long,
        env = "MICRO_AUTH_ADMIN_PASSWORD",
        value_name = "PASSWORD",
        hide_env_values = true
    )]
    pub auth_admin_password: Option<String>,
    /// Read the first admin's password from FILE (a trailing newline is dropped);
    /// keeps it out of `ps`
    #[arg(
        long,
        env = "MICRO_AUTH_ADMIN_PASSWORD_FILE",
        value_name = "FILE",
        conflicts_with = "auth_admin_password"
    )]
    pub auth_admin_password_file: Option<PathBuf>,
    /// How long access tokens live, e.g. 10m
    #[arg(long, env = "MICRO_AUTH_TOKEN_TTL", value_parser = parse_span, default_value_t = Span(micro_node::server::DEFAULT_AUTH_TOKEN_TTL), value_name = "DURATION")]
    pub auth_token_ttl: Span,
    /// Join the cluster a node at this cluster address belongs to (with --token or --token-file)
    #[arg(
        long,
        env = "MICRO_JOIN",
        value_name = "HOST:PORT",
        requires = "join_token"
    )]
    pub join: Option<String>,
    /// The join token (`micro cluster token` on a member prints it).
    /// A flag shows in `ps`: prefer MICRO_TOKEN or --token-file
    #[arg(
        long,
        env = "MICRO_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true,
        allow_hyphen_values = true,
        group = "join_token"
    )]
    pub token: Option<String>,
    /// Read the join token from FILE (a trailing newline is dropped); keeps it out of `ps`
    #[arg(
        long,
        env = "MICRO_TOKEN_FILE",
        value_name = "FILE",
        group = "join_token"
    )]
    pub token_file: Option<PathBuf>,
    /// How many voters the cluster keeps; further nodes stay learners
    #[arg(long, env = "MICRO_CLUSTER_SIZE", default_value_t = micro_node::server::DEFAULT_CLUSTER_SIZE, value_parser = clap::value_parser!(u32).range(1..=9), value_name = "N")]
    pub cluster_size: u32,
    /// Compact the Raft log into a snapshot after this many entries
    #[arg(long, env = "MICRO_RAFT_SNAPSHOT_AFTER", default_value_t = micro_node::DEFAULT_RAFT_SNAPSHOT_AFTER, value_parser = clap::value_parser!(u64).range(10..), value_name = "N", hide = true)]
    pub raft_snapshot_after: u64,
    /// How often the Raft leader sends heartbeats; shorter than the election timeout
    #[arg(long, env = "MICRO_RAFT_HEARTBEAT", value_parser = parse_heartbeat, default_value_t = Span(micro_node::DEFAULT_RAFT_HEARTBEAT), value_name = "DURATION")]
    pub raft_heartbeat: Span,
    /// How long a follower waits without a heartbeat before it campaigns: a
    /// random time in MIN..MAX (the same on every node; MAX is also the leader's lease)
    #[arg(long, env = "MICRO_RAFT_ELECTION_TIMEOUT", value_parser = parse_election_timeout, default_value_t = ElectionTimeout(micro_node::DEFAULT_RAFT_ELECTION_TIMEOUT), value_name = "MIN..MAX")]
    pub raft_election_timeout: ElectionTimeout,
    /// Serve TLS to clients with this certificate (PEM, with any intermediates; needs --tls-key)
    #[arg(
        long,
        env = "MICRO_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM; keep it 0600)
    #[arg(
        long,
        env = "MICRO_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// Web origins allowed to call the API from a browser with the user's
    /// cookie, comma separated (e.g. https://app.example.com); `*` allows any
    /// origin without credentials. Default: none
    #[arg(
        long,
        env = "MICRO_API_CORS_ORIGINS",
        value_delimiter = ',',
        value_name = "ORIGINS"
    )]
    pub api_cors_origins: Vec<String>,
    /// Build the service framework's dependencies into the build cache when the
    /// node starts, so a first `micro run` compiles only its own crate
    #[arg(long, env = "MICRO_RUNTIME_WARM_UP", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub runtime_warm_up: bool,
    /// Services of a node gossip holds down this long are started on other nodes
    #[arg(long, env = "MICRO_RUNTIME_RESCHEDULE_AFTER", value_parser = parse_span, default_value_t = Span(micro_node::server::DEFAULT_RESCHEDULE_AFTER), value_name = "DURATION")]
    pub runtime_reschedule_after: Span,
    /// How long an HTTP client may take to send a request's headers
    #[arg(long, env = "MICRO_API_HEADER_TIMEOUT", value_parser = parse_span, default_value_t = Span(micro_node::server::DEFAULT_HTTP_HEADER_TIMEOUT), value_name = "DURATION", hide = true)]
    pub api_header_timeout: Span,
}

/// A duration a flag takes and shows (its default) as `250ms` or `2s`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span(pub Duration);

impl std::fmt::Display for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = self.0.as_millis();
        if ms > 0 && ms.is_multiple_of(60_000) {
            write!(f, "{}m", ms / 60_000)
        } else if ms > 0 && ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

/// An election timeout range, `MIN..MAX`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ElectionTimeout(pub (Duration, Duration));

impl std::fmt::Display for ElectionTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}..{}", Span(self.0 .0), Span(self.0 .1))
    }
}

/// A heartbeat interval: whole milliseconds, at least 1ms.
fn parse_span(s: &str) -> Result<Span, String> {
    parse_duration(s).map(Span)
}

fn parse_heartbeat(s: &str) -> Result<Span, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(1) {
        return Err("the heartbeat must be at least 1ms".into());
    }
    Ok(Span(d))
}

/// An election timeout range: `MIN..MAX`, like 1s..2s, MIN below MAX.
fn parse_election_timeout(s: &str) -> Result<ElectionTimeout, String> {
    let Some((min, max)) = s.split_once("..") else {
        return Err("give the range as MIN..MAX, like 1s..2s".into());
    };
    let (min, max) = (parse_duration(min)?, parse_duration(max)?);
    if min < Duration::from_millis(1) {
        return Err("the election timeout must be at least 1ms".into());
    }
    if min >= max {
        return Err(format!(
            "the minimum must be below the maximum, like {}",
            ElectionTimeout(micro_node::DEFAULT_RAFT_ELECTION_TIMEOUT)
        ));
    }
    Ok(ElectionTimeout((min, max)))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Profile {
    Release,
    Dev,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// A folder (., ./x, ../x) or a git URL with an optional @branch or @commit
    pub source: String,
    /// The service's name (default: the folder's or repository's name)
    #[arg(long)]
    pub name: Option<String>,
    /// Environment for the service, KEY=VALUE (repeatable; after `run`,
    /// `--env` means this too)
    #[arg(long = "env-var", value_name = "KEY=VALUE")]
    pub env_vars: Vec<String>,
    /// Run this command instead of building a Cargo project
    #[arg(long, conflicts_with = "binary")]
    pub command: Option<String>,
    /// SOURCE is an executable built elsewhere (for the nodes' architecture):
    /// it is uploaded and run as it is, with no build on the node
    #[arg(long)]
    pub binary: bool,
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
        /// HOST:PORT of a node's gRPC endpoint (the port defaults to 8081);
        /// https://HOST:PORT for a node serving TLS. Several nodes of one
        /// cluster, comma-separated, are tried in order (all https:// or none)
        address: String,
        /// A few words about it
        description: Option<String>,
        /// The CA certificate (PEM) that signed the server's certificate
        /// (default for https: the system's CAs); its PEM is kept in the CLI's config
        #[arg(long, value_name = "FILE")]
        ca: Option<PathBuf>,
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
        /// Print a table of key, value, expiry and version
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
        /// Write only if the key holds no record (prints Created)
        #[arg(long, conflicts_with = "if_version")]
        if_absent: bool,
        /// Write only if the record is at this version (see read -v)
        #[arg(long, value_name = "VERSION", value_parser = parse_version)]
        if_version: Option<u64>,
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
        /// Delete only if the record is at this version (see read -v)
        #[arg(long, value_name = "VERSION", value_parser = parse_version)]
        if_version: Option<u64>,
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

#[derive(Args, Debug)]
#[command(subcommand_required = true, arg_required_else_help = true)]
pub struct EventsArgs {
    #[command(subcommand)]
    pub command: EventsCommand,
}

#[derive(Subcommand, Debug)]
pub enum EventsCommand {
    /// Publish an event; prints its sequence once it is committed
    Publish {
        /// The topic (created by its first publish)
        topic: String,
        /// The payload: JSON, or any text
        #[arg(allow_hyphen_values = true)]
        payload: String,
        /// Metadata, KEY=VALUE (repeatable)
        #[arg(long = "metadata", value_name = "KEY=VALUE", value_parser = parse_pair)]
        metadata: Vec<(String, String)>,
        /// Message id: the same id again within 2 minutes stores nothing and
        /// prints the first event's sequence
        #[arg(long, value_name = "ID")]
        id: Option<String>,
    },
    /// Print a topic's events as they are published, one JSON line each
    ///
    /// Each line: {"id","topic","seq","timestamp","metadata","payload"}, and
    /// "deliveries" with --group. The timestamp is RFC 3339 in UTC with
    /// milliseconds; the payload is embedded as JSON when it is JSON, else it
    /// is a string.
    ///
    /// Where it starts: with none of --from, --since and --new, at the first
    /// stored event (nothing is skipped). A group that exists resumes from
    /// its ack floor.
    ///
    /// With --group, each event is acked once its line was written and
    /// flushed to stdout, never before. With --manual-ack nothing is acked:
    /// the events come back after the ack wait; it exists to watch a group.
    Consume(ConsumeArgs),
    /// Print stored events of a topic, one JSON line each (as consume)
    Read {
        topic: String,
        /// The most events printed (default 100, at most 1000)
        #[arg(long, value_name = "N")]
        limit: Option<u64>,
        /// The sequence to start at (default: the first event, or the last with --order desc)
        #[arg(long, value_name = "SEQ")]
        offset: Option<u64>,
        /// Oldest first (asc) or newest first (desc)
        #[arg(long, value_enum, default_value = "asc")]
        order: Order,
    },
    /// List the namespace's topics
    Topics,
    /// Show a topic's retention, size, sequences and groups with their progress
    Info { topic: String },
    /// Create a topic with retention limits, or change its limits
    ///
    /// A limit not given is none; beyond a limit the oldest events are
    /// discarded first. Durations: ms, s, m, h, d. Sizes: K, M, G (powers
    /// of 1024).
    Create {
        topic: String,
        /// Discard events older than this, e.g. 7d, 12h
        #[arg(long, value_parser = parse_positive_duration, value_name = "DURATION")]
        max_age: Option<Duration>,
        /// Keep at most this many events
        #[arg(long, value_parser = parse_count, value_name = "N")]
        max_count: Option<u64>,
        /// Keep at most this many bytes of payload and metadata, e.g. 512M, 1G
        #[arg(long, value_parser = parse_size, value_name = "SIZE")]
        max_bytes: Option<u64>,
    },
    /// Delete a topic with its events and groups, or only one of its groups
    Delete {
        topic: String,
        /// Delete only this consumer group
        #[arg(long, value_name = "GROUP")]
        group: Option<String>,
    },
}

#[derive(Args, Debug)]
pub struct ConsumeArgs {
    /// The topic
    pub topic: String,
    /// Consume as a member of this group: members share its events, and its
    /// progress is replicated
    #[arg(long, value_name = "GROUP")]
    pub group: Option<String>,
    /// Start at this sequence (from 1)
    #[arg(long = "from", value_name = "SEQ", value_parser = parse_count, group = "start")]
    pub from: Option<u64>,
    /// Start at the first event published at most this long ago, e.g. 10m, 2h, 7d
    #[arg(long, value_parser = parse_duration, value_name = "DURATION", group = "start")]
    pub since: Option<Duration>,
    /// Only events published after the consumer started
    #[arg(long, group = "start")]
    pub new: bool,
    /// Do not ack (needs --group): to watch a group; the events come back
    /// after the ack wait
    #[arg(long)]
    pub manual_ack: bool,
    /// For a new group: how long an event may stay unacked before it is
    /// delivered again (default 30s)
    #[arg(long, value_parser = parse_ack_wait, value_name = "DURATION")]
    pub ack_wait: Option<Duration>,
    /// For a new group: deliveries of an event before it goes to the
    /// dead-letter topic TOPIC.dead (default 10)
    #[arg(long, value_parser = parse_max_deliver, value_name = "N")]
    pub max_deliver: Option<u32>,
    /// Exit after this many events
    #[arg(long, value_parser = parse_count, value_name = "N")]
    pub count: Option<u64>,
}

#[derive(Args, Debug)]
#[command(subcommand_required = true, arg_required_else_help = true)]
pub struct BrokerArgs {
    #[command(subcommand)]
    pub command: BrokerCommand,
}

#[derive(Subcommand, Debug)]
pub enum BrokerCommand {
    /// Publish a message to the topic's subscribers connected now (nothing is stored)
    Publish {
        topic: String,
        /// The body: JSON, or any text
        #[arg(allow_hyphen_values = true)]
        body: String,
        /// A header, KEY=VALUE (repeatable)
        #[arg(long = "header", value_name = "KEY=VALUE", value_parser = parse_pair)]
        header: Vec<(String, String)>,
    },
    /// Print the messages published to a topic from now on, one JSON line
    /// each: {"topic","header","body"} (no ordering promise)
    Subscribe {
        topic: String,
        /// Share messages with the other subscribers of this queue: each goes to one of them
        #[arg(long, value_name = "QUEUE")]
        queue: Option<String>,
        /// Exit after this many messages
        #[arg(long, value_parser = parse_count, value_name = "N")]
        count: Option<u64>,
    },
}

/// `KEY=VALUE`, the key not empty.
pub fn parse_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("'{s}' is not KEY=VALUE")),
    }
}

/// A whole number from 1 up (counts, sequences, limits).
pub fn parse_count(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err("use a whole number from 1 up".into()),
    }
}

fn parse_max_deliver(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err("an event is delivered at least once: use a whole number from 1 up".into()),
    }
}

/// An ack wait: a duration of at least 1ms.
fn parse_ack_wait(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(1) {
        return Err("the ack wait must be at least 1ms".into());
    }
    Ok(d)
}

/// A retention age: a duration of at least 1ms.
fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(1) {
        return Err("use a duration of at least 1ms".into());
    }
    Ok(d)
}

/// A size in bytes: a whole number with an optional unit K, M, G or T
/// (powers of 1024; a trailing B or iB is allowed, any case); at least 1.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || format!("invalid size '{s}': use a number and a unit (K, M, G), like 512M or 1G");
    let upper = s.trim().to_ascii_uppercase();
    let digits = upper
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(upper.len());
    if digits == 0 {
        return Err(bad());
    }
    let n: u64 = upper[..digits].parse().map_err(|_| bad())?;
    let unit = upper[digits..].trim_end_matches("IB").trim_end_matches('B');
    let shift = match unit {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(bad()),
    };
    if n == 0 {
        return Err("a size must be at least 1 byte".into());
    }
    n.checked_mul(1u64 << shift).ok_or_else(bad)
}

/// Parses `10s`, `1m30s`, `500ms`, `2h`, `1d`; a bare number is seconds.
/// A record version for `--if-version`: a log index, so at least 1 (the
/// wire's 0 means "no condition", which the flag must never send).
pub fn parse_version(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(v) if v > 0 => Ok(v),
        _ => Err("a version is a whole number from 1 up, as micro store read KEY -v shows".into()),
    }
}

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

/// The command line as strings; an argument that is not UTF-8 is refused
/// with one line naming it (its bytes shown lossily).
pub fn utf8_args(
    args: impl Iterator<Item = std::ffi::OsString>,
) -> Result<Vec<String>, crate::errors::Failure> {
    args.map(|a| {
        a.into_string().map_err(|bad| {
            crate::errors::Failure::msg(format!(
                "Invalid argument '{}': not valid UTF-8",
                bad.to_string_lossy()
            ))
        })
    })
    .collect()
}

/// `micro run … --env K=V` sets the service's environment, while `-e/--env`
/// elsewhere picks the CLI's environment: after the word `run`, a long
/// `--env` becomes `--env-var` before parsing.
pub fn rewrite_run_env(argv: Vec<String>) -> Vec<String> {
    // The first word that is neither a global flag nor its value.
    let mut i = 1;
    while i < argv.len() {
        match argv[i].as_str() {
            "-e" | "--env" | "-c" | "--config" | "--namespace" => i += 2,
            a if a.starts_with('-') => i += 1,
            _ => break,
        }
    }
    let run_at = i;
    if argv.get(run_at).map(String::as_str) != Some("run") {
        return argv;
    }
    argv.into_iter()
        .enumerate()
        .map(|(i, a)| {
            if i <= run_at {
                a
            } else if a == "--env" {
                "--env-var".to_string()
            } else if let Some(v) = a.strip_prefix("--env=") {
                format!("--env-var={v}")
            } else {
                a
            }
        })
        .collect()
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
    fn run_env_flags_are_the_services() {
        let v = |a: &[&str]| rewrite_run_env(a.iter().map(|s| s.to_string()).collect());
        assert_eq!(
            v(&["micro", "run", ".", "--env", "A=1", "--env=B=2"]),
            ["micro", "run", ".", "--env-var", "A=1", "--env-var=B=2"]
        );
        assert_eq!(
            v(&["micro", "store", "read", "--env", "x"]),
            ["micro", "store", "read", "--env", "x"]
        );
        let parsed =
            Cli::try_parse_from(v(&["micro", "-e", "n2", "run", ".", "--env", "A=1"])).unwrap();
        assert_eq!(parsed.env.as_deref(), Some("n2"));
        match parsed.command {
            Some(Command::Run(r)) => assert_eq!(r.env_vars, ["A=1"]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn auth_commands_parse() {
        let p = |a: &[&str]| Cli::try_parse_from(a.iter().copied());
        match p(&["micro", "login", "--email", "a@b.c", "--password", "x"])
            .unwrap()
            .command
        {
            Some(Command::Login(l)) => {
                assert_eq!(l.username.as_deref(), Some("a@b.c"));
                assert_eq!(l.password.as_deref(), Some("x"));
            }
            other => panic!("{other:?}"),
        }
        // `--namespace` after `auth create account` is the global flag.
        let cli = p(&[
            "micro",
            "auth",
            "create",
            "account",
            "bob",
            "--scopes",
            "a,b",
            "--namespace",
            "foo",
        ])
        .unwrap();
        assert_eq!(cli.namespace.as_deref(), Some("foo"));
        match cli.command {
            Some(Command::Auth(AuthArgs {
                command:
                    AuthCommand::Create {
                        what: AuthCreateCommand::Account { id, secret, scopes },
                    },
            })) => {
                assert_eq!((id.as_str(), secret), ("bob", None));
                assert_eq!(scopes, ["a", "b"]);
            }
            other => panic!("{other:?}"),
        }
        match p(&[
            "micro",
            "auth",
            "create",
            "rule",
            "r",
            "--resource",
            "*:*:*",
            "--priority",
            "-5",
        ])
        .unwrap()
        .command
        {
            Some(Command::Auth(AuthArgs {
                command:
                    AuthCommand::Create {
                        what:
                            AuthCreateCommand::Rule {
                                scope,
                                access,
                                priority,
                                ..
                            },
                    },
            })) => assert_eq!(
                (scope.as_str(), access, priority),
                ("", Access::Granted, -5)
            ),
            other => panic!("{other:?}"),
        }
        assert!(p(&["micro", "user", "set", "password", "--old-password", "a"]).is_ok());
        assert!(p(&["micro", "user", "namespace", "set", "foo"]).is_ok());
        assert!(p(&["micro", "auth", "create", "rule", "r"]).is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10").unwrap(), 10);
        assert_eq!(parse_size("1K").unwrap(), 1024);
        assert_eq!(parse_size("512m").unwrap(), 512 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("1gb").unwrap(), 1 << 30);
        for bad in ["", "G", "1X", "1.5G", "-1", "0", "99999999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn events_commands_parse() {
        let p = |a: &[&str]| Cli::try_parse_from(a.iter().copied());
        match p(&[
            "micro",
            "events",
            "publish",
            "t",
            "-1",
            "--metadata",
            "a=b=c",
            "--id",
            "x",
        ])
        .unwrap()
        .command
        {
            Some(Command::Events(EventsArgs {
                command:
                    EventsCommand::Publish {
                        payload,
                        metadata,
                        id,
                        ..
                    },
            })) => {
                assert_eq!(payload, "-1");
                assert_eq!(metadata, [("a".to_string(), "b=c".to_string())]);
                assert_eq!(id.as_deref(), Some("x"));
            }
            other => panic!("{other:?}"),
        }
        match p(&[
            "micro", "events", "consume", "t", "--since", "10m", "--count", "2",
        ])
        .unwrap()
        .command
        {
            Some(Command::Events(EventsArgs {
                command: EventsCommand::Consume(c),
            })) => {
                assert_eq!(c.since, Some(Duration::from_secs(600)));
                assert_eq!((c.from, c.new, c.count), (None, false, Some(2)));
            }
            other => panic!("{other:?}"),
        }
        for bad in [
            &["micro", "events", "consume", "t", "--from", "1", "--new"][..],
            &[
                "micro", "events", "consume", "t", "--since", "1m", "--from", "2",
            ],
            &["micro", "events", "consume", "t", "--ack-wait", "0"],
            &["micro", "events", "consume", "t", "--ack-wait", "0ms"],
            &["micro", "events", "consume", "t", "--max-deliver", "0"],
            &["micro", "events", "consume", "t", "--since", "10x"],
            &["micro", "events", "consume", "t", "--count", "0"],
            &["micro", "events", "consume", "t", "--bogus"],
            &[
                "micro",
                "events",
                "publish",
                "t",
                "p",
                "--metadata",
                "novalue",
            ],
            &["micro", "events", "create", "t", "--max-bytes", "1Q"],
            &["micro", "events", "create", "t", "--max-age", "7y"],
        ] {
            assert!(p(bad).is_err(), "{bad:?}");
        }
        assert!(p(&["micro", "broker", "subscribe", "t", "--queue", "q"]).is_ok());
        assert!(p(&["micro", "broker", "publish", "t", "{}", "--header", "k=v"]).is_ok());
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
