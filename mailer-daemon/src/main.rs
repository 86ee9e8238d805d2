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
mod logging;
mod metrics;
mod offline;
mod privileges;
mod queue_cmd;
mod sendmail;
mod serve;
mod smtp;
mod watch;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mailer_core::config::Config;

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
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate the configuration and the files it names; exit 0 if valid, 2 if not.
    Check,
    /// Print the built-in configuration.
    Embedded,
}

fn main() -> ExitCode {
    // Invoked through a symlink: `sendmail` is sendmail(8) with its own arguments; `mailq`
    // lists the queue, as it does with sendmail and Postfix.
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let invoked_as = Path::new(&argv0).file_name().unwrap_or_default().to_owned();
    if invoked_as == "sendmail" {
        return sendmail::main_as_sendmail();
    }
    let cli = if invoked_as == "mailq" {
        let list = ["mailer", "queue", "list"].map(std::ffi::OsString::from);
        Cli::parse_from(list.into_iter().chain(std::env::args_os().skip(1)))
    } else {
        Cli::parse()
    };
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
        Command::Queue(args) => queue_cmd::main(config_path.as_deref(), args),
        Command::Reload => queue_cmd::reload(config_path.as_deref()),
        Command::Check(args) => check_cmd::main(config_path.as_deref(), args),
        Command::Dkim(args) => dkim_cmd::main(config_path.as_deref(), args),
        Command::Sendmail(args) => sendmail::main(config_path.as_deref(), args),
    }
}

/// The configuration path in effect.
pub fn config_path(path: Option<&Path>) -> &Path {
    path.unwrap_or(Path::new(DEFAULT_CONFIG))
}

/// Loads the configuration, printing each problem as `FILE:LINE:COL: message`.
pub fn load_config(path: Option<&Path>) -> Result<Config, ExitCode> {
    Config::load(config_path(path)).map_err(|diagnostics| {
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
