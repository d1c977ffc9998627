//! How failures reach the user: one line on stderr, a non-zero exit code.

use std::process::ExitCode;

use clap::error::{ContextKind, ContextValue, ErrorKind};

/// A failure to report: a message and an exit code.
#[derive(Debug)]
pub struct Failure {
    message: String,
    code: u8,
}

impl Failure {
    /// A failure with exit code 1.
    pub fn msg(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            code: 1,
        }
    }

    /// Prints the message and gives the exit code.
    pub fn exit(self) -> ExitCode {
        if !self.message.is_empty() {
            eprintln!("{}", self.message);
        }
        ExitCode::from(self.code)
    }
}

impl From<micro::Error> for Failure {
    fn from(e: micro::Error) -> Self {
        match e {
            micro::Error::Status(s) => Failure::from(s),
            other => Failure::msg(other.to_string()),
        }
    }
}

impl From<micro::env::EnvError> for Failure {
    fn from(e: micro::env::EnvError) -> Self {
        Failure::msg(e.to_string())
    }
}

/// Messages the server sends with `unavailable` that are its own words, not
/// a broken connection.
const SERVER_UNAVAILABLE: &[&str] = &[
    "no leader",
    "this node is not the leader",
    "the node is shutting down",
    "the leader",
    "the connection to the leader",
    "leadership is changing",
    "the service runs on node",
    "the service moved",
    "every instance of",
];

/// Messages the server sends with `deadline exceeded` that say why.
const SERVER_TIMEOUTS: &[&str] = &["the write was not committed", "no quorum"];

impl From<tonic::Status> for Failure {
    fn from(s: tonic::Status) -> Self {
        use tonic::Code;
        let message = s.message();
        match s.code() {
            Code::Unauthenticated => Failure::msg("Not authorized to perform this request"),
            Code::DeadlineExceeded if SERVER_TIMEOUTS.iter().any(|p| message.starts_with(p)) => {
                Failure::msg(capitalize(message))
            }
            Code::DeadlineExceeded => Failure::msg("Request timed out"),
            Code::NotFound => Failure::msg("Not found"),
            // The client's own words on a node it reached but cannot use
            // (an HTTP port answering instead of gRPC) say which and why.
            Code::Unavailable if message.starts_with("Failed to connect to micro server at ") => {
                Failure::msg(message)
            }
            Code::Unavailable if !SERVER_UNAVAILABLE.iter().any(|p| message.starts_with(p)) => {
                Failure::msg("Failed to connect to micro server")
            }
            _ => Failure::msg(capitalize(message)),
        }
    }
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(first) => first.to_uppercase().collect::<String>() + c.as_str(),
        None => "Request failed".into(),
    }
}

/// The command path the user typed, as far as it names subcommands:
/// `micro store write --bogus k` gives `micro store write`.
fn command_path(argv: &[String]) -> String {
    use clap::CommandFactory;
    let mut cmd = crate::args::Cli::command();
    let mut path = vec!["micro".to_string()];
    for word in argv.iter().skip(1) {
        if word.starts_with('-') {
            continue;
        }
        let found = cmd
            .get_subcommands()
            .find(|c| c.get_name() == word || c.get_all_aliases().any(|a| a == word))
            .cloned();
        match found {
            Some(sub) => {
                path.push(sub.get_name().to_string());
                cmd = sub;
            }
            None => break,
        }
    }
    path.join(" ")
}

fn context_string(e: &clap::Error, kind: ContextKind) -> Option<String> {
    match e.get(kind)? {
        ContextValue::String(s) => Some(s.clone()),
        ContextValue::Strings(v) => Some(v.join(", ")),
        ContextValue::StyledStr(s) => Some(s.to_string()),
        ContextValue::StyledStrs(v) => Some(
            v.iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        ),
        _ => None,
    }
}

/// Renders a clap parse error as one line and exits; help and version print
/// in full and exit 0.
pub fn clap_exit(e: clap::Error, argv: &[String]) -> ExitCode {
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            return ExitCode::from(1);
        }
        _ => {}
    }
    let path = command_path(argv);
    let hint = format!("Please refer to '{path} --help'");
    let message = match e.kind() {
        ErrorKind::InvalidSubcommand => {
            let bad = context_string(&e, ContextKind::InvalidSubcommand).unwrap_or_default();
            format!("Unrecognized subcommand for {path}: {bad}. {hint}")
        }
        ErrorKind::UnknownArgument => {
            let bad = context_string(&e, ContextKind::InvalidArg).unwrap_or_default();
            if bad.starts_with('-') {
                format!("Unknown flag: {bad}. {hint}")
            } else {
                format!("Unexpected argument: {bad}. {hint}")
            }
        }
        ErrorKind::MissingRequiredArgument => {
            let missing = context_string(&e, ContextKind::InvalidArg).unwrap_or_default();
            format!("Missing argument: {missing}. {hint}")
        }
        ErrorKind::InvalidValue => {
            let value = context_string(&e, ContextKind::InvalidValue).unwrap_or_default();
            let arg = context_string(&e, ContextKind::InvalidArg).unwrap_or_default();
            match context_string(&e, ContextKind::ValidValue) {
                Some(valid) => format!(
                    "Invalid value '{value}' for '{arg}' [possible values: {valid}]. {hint}"
                ),
                None => format!("Invalid value '{value}' for '{arg}'. {hint}"),
            }
        }
        _ => {
            // clap's own first line, without its "error: " prefix.
            let rendered = e.render().to_string();
            let first = rendered.lines().next().unwrap_or("invalid arguments");
            let first = first.trim_start_matches("error: ");
            format!("{}. {hint}", capitalize(first).trim_end_matches('.'))
        }
    };
    eprintln!("{message}");
    ExitCode::from(1)
}
