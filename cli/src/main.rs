//! `micro`: the one binary. Parses the command line, runs a builtin command
//! (or the server), and turns every failure into one clear line on stderr and
//! a non-zero exit.
//!
//! Architecture invariant: only this crate knows about terminals, flags and
//! exit codes; it reaches nodes through the `micro` client library.

mod args;
mod commands;
mod dynamic;
mod errors;
mod tokens;

use std::process::ExitCode;

use clap::Parser;

use args::{Cli, Command};
use errors::Failure;

fn main() -> ExitCode {
    // `std::env::args` panics on an argument that is not UTF-8.
    let argv = match args::utf8_args(std::env::args_os()) {
        Ok(argv) => args::rewrite_run_env(argv),
        Err(f) => return f.exit(),
    };
    let cli = match Cli::try_parse_from(&argv) {
        Ok(cli) => cli,
        Err(e) => return errors::clap_exit(e, &argv),
    };
    let result = match cli.command {
        Some(Command::Server(ref a)) => commands::server::run(a),
        Some(_) => {
            // Client commands make a handful of calls: one thread is plenty
            // and starts fastest.
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(commands::dispatch(&cli)),
                Err(e) => Err(Failure::msg(format!("cannot start: {e}"))),
            }
        }
        None => Err(Failure::msg(
            "No command provided to micro. Please refer to 'micro --help'",
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => f.exit(),
    }
}
