//! `mailer`: the daemon and its command-line tool.

mod engine;
mod logging;
mod metrics;
mod serve;
mod smtp;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mailer_core::config::Config;

/// Where the configuration is looked for when neither --config nor MAILER_CONFIG is given.
pub const DEFAULT_CONFIG: &str = "/etc/mailer/mailer.toml";

#[derive(Parser)]
#[command(name = "mailer", version, about = "A small, durable outbound mail relay")]
struct Cli {
    /// Configuration file.
    #[arg(long, global = true, env = "MAILER_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground.
    Serve {
        /// Use the built-in configuration (127.0.0.1:2525, state under ./mailer-state).
        #[arg(long, conflicts_with = "config")]
        embedded: bool,
        /// Log format.
        #[arg(long, value_enum, default_value = "text")]
        log_format: logging::Format,
    },
    /// Inspect the configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate the configuration and the files it names; exit 0 if valid, 2 if not.
    Check,
    /// Print the built-in configuration.
    Embedded,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            embedded,
            log_format,
        } => {
            let config = if embedded {
                Ok(Config::embedded_default())
            } else {
                load(cli.config.as_deref())
            };
            match config {
                Ok(config) => serve::run(config, log_format),
                Err(code) => code,
            }
        }
        Command::Config {
            command: ConfigCommand::Check,
        } => config_check(cli.config.as_deref()),
        Command::Config {
            command: ConfigCommand::Embedded,
        } => {
            print!("{}", Config::embedded_default_text());
            ExitCode::SUCCESS
        }
    }
}

/// Loads the configuration, printing each problem as `FILE:LINE:COL: message`.
fn load(path: Option<&Path>) -> Result<Config, ExitCode> {
    let path = path.unwrap_or(Path::new(DEFAULT_CONFIG));
    Config::load(path).map_err(|diagnostics| {
        for d in diagnostics {
            eprintln!("{d}");
        }
        ExitCode::from(2)
    })
}

fn config_check(path: Option<&Path>) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let problems = engine::check_files(&config);
    if problems.is_empty() {
        println!("{}: ok", config.source.display());
        ExitCode::SUCCESS
    } else {
        for p in problems {
            eprintln!("{p}");
        }
        ExitCode::from(2)
    }
}
