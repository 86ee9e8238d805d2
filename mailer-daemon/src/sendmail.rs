//! `mailer sendmail`: the sendmail(8) entry point for cron and scripts.

use std::path::Path;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {}

pub fn main(_config: Option<&Path>, _args: Args) -> ExitCode {
    eprintln!("mailer sendmail: not available yet");
    ExitCode::from(64)
}

pub fn main_as_sendmail() -> ExitCode {
    eprintln!("sendmail: not available yet");
    ExitCode::from(64)
}
