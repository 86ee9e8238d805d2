//! `mailer dkim …`: DKIM key generation and DNS records.

use std::path::Path;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {}

pub fn main(_config: Option<&Path>, _args: Args) -> ExitCode {
    eprintln!("mailer dkim: not available yet");
    ExitCode::from(2)
}
