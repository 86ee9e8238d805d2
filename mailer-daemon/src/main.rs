//! `mailer`: the daemon and its command-line tool.
//!
//! Every subcommand finds what it needs (listen address, queue directory, control socket)
//! through the one configuration: `--config FILE`, else `MAILER_CONFIG`, else
//! `/etc/mailer/mailer.toml`.

mod accept;
mod check_cmd;
mod control;
mod dkim_cmd;
mod engine;
mod import_cmd;
mod logging;
mod manuals;
mod metrics;
mod newaliases;
mod offline;
mod privileges;
mod queue_cmd;
mod sendmail;
mod serve;
mod smtp;
mod watch;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Parser, Subcommand};
use mailer_core::config::{Config, Diagnostic};

/// Where the configuration is looked for when neither --config nor MAILER_CONFIG is given.
pub const DEFAULT_CONFIG: &str = "/etc/mailer/mailer.toml";

#[derive(Parser)]
#[command(
    name = "mailer",
    version,
    about = "A small, durable outbound mail relay"
)]
struct Cli {
    /// Configuration file [default: /etc/mailer/mailer.toml].
    #[arg(long, global = true, env = "MAILER_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Use the built-in configuration (127.0.0.1:2525, state under ./mailer-state) instead of
    /// a file, as `mailer serve --embedded` does.
    #[arg(long, global = true)]
    embedded: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground.
    Serve(serve::Args),
    /// Inspect the configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Inspect and steer the queue.
    Queue(queue_cmd::Args),
    /// Ask the running daemon to reload its configuration, aliases and secrets.
    Reload,
    /// Check the sending domain's DNS (SPF, DMARC, DKIM, MTA-STS, TLS-RPT, MX) against the relay;
    /// --probe talks to every relay pool member, --mastodon-env judges Mastodon's settings.
    Check(check_cmd::Args),
    /// DKIM keys: generate, print the DNS record.
    Dkim(dkim_cmd::Args),
    /// Submit a message from standard input, as sendmail(8) does.
    Sendmail(sendmail::Args),
    /// List the queue as Postfix's mailq(1) prints it (also invoked as `mailq`).
    Mailq,
    /// Check the aliases files and have the daemon reload them (also invoked as `newaliases`).
    Newaliases,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate the configuration and the files it names; exit 0 if valid, 2 if not.
    Check,
    /// Print the built-in configuration.
    Embedded,
    /// Translate an OpenSMTPD smtpd.conf or a Postfix main.cf into a commented mailer.toml
    /// on standard output; exit 0 if complete, 1 if some lines are not translated, 2 if the
    /// file cannot be read.
    Import(import_cmd::Args),
}

fn main() -> ExitCode {
    // Invoked through a symlink: `sendmail` is sendmail(8) with its own arguments; `mailq`
    // lists the queue, as it does with sendmail and Postfix.
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let invoked_as = Path::new(&argv0).file_name().unwrap_or_default().to_owned();
    if invoked_as == "sendmail" {
        return sendmail::main_as_sendmail();
    }
    // The packaging helper stays out of the command line's definition, so that neither
    // completions nor manual pages offer it.
    if std::env::args_os().nth(1).is_some_and(|a| a == "generate") {
        return manuals::main(std::env::args_os().skip(1));
    }
    // `mailq` and `newaliases` take sendmail's options (e.g. `-v`), which mean nothing here.
    let cli = match invoked_as.to_str() {
        Some(name @ ("mailq" | "newaliases")) => Cli::parse_from(["mailer", name]),
        _ => Cli::parse(),
    };
    EMBEDDED.store(cli.embedded, Ordering::Relaxed);
    let config_path = cli.config.clone();
    match cli.command {
        Command::Serve(args) => serve::main(config_path.as_deref(), args),
        Command::Config {
            command: ConfigCommand::Check,
        } => config_check(config_path.as_deref()),
        Command::Config {
            command: ConfigCommand::Embedded,
        } => {
            print!("{}", Config::embedded_default_text());
            ExitCode::SUCCESS
        }
        Command::Config {
            command: ConfigCommand::Import(args),
        } => import_cmd::main(args),
        Command::Queue(args) => queue_cmd::main(config_path.as_deref(), args),
        Command::Reload => queue_cmd::reload(config_path.as_deref()),
        Command::Check(args) => check_cmd::main(config_path.as_deref(), args),
        Command::Dkim(args) => dkim_cmd::main(config_path.as_deref(), args),
        Command::Sendmail(args) => sendmail::main(config_path.as_deref(), args),
        Command::Mailq => queue_cmd::mailq(config_path.as_deref()),
        Command::Newaliases => newaliases::main(config_path.as_deref()),
    }
}

/// The clap definition of the command line, for manual pages and completions.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

/// Set once from `--embedded`, before any subcommand runs: every subcommand that reads the
/// configuration then takes the built-in one.
static EMBEDDED: AtomicBool = AtomicBool::new(false);

/// Whether `--embedded` was given.
pub fn embedded() -> bool {
    EMBEDDED.load(Ordering::Relaxed)
}

/// The configuration in effect: the built-in one with `--embedded`, else the file.
pub fn read_config(path: Option<&Path>) -> Result<Config, Vec<Diagnostic>> {
    if embedded() {
        Ok(Config::embedded_default())
    } else {
        Config::load(config_path(path))
    }
}

/// The configuration path in effect.
pub fn config_path(path: Option<&Path>) -> &Path {
    path.unwrap_or(Path::new(DEFAULT_CONFIG))
}

/// Loads the configuration, printing each problem as `FILE:LINE:COL: message`.
pub fn load_config(path: Option<&Path>) -> Result<Config, ExitCode> {
    read_config(path).map_err(|diagnostics| {
        for d in diagnostics {
            eprintln!("{d}");
        }
        ExitCode::from(2)
    })
}

fn config_check(path: Option<&Path>) -> ExitCode {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    for w in &config.warnings {
        eprintln!("{w} (warning)");
    }
    match mailer_core::delivery::preflight(&config) {
        Ok(tables) => {
            for w in mailer_core::delivery::alias_warnings(&config, &tables) {
                eprintln!("{w} (warning)");
            }
            println!("{}: ok", config.source.display());
            ExitCode::SUCCESS
        }
        Err(problems) => {
            for p in problems {
                eprintln!("{p}");
            }
            ExitCode::from(2)
        }
    }
}
