//! `mailer queue …` and `mailer reload`: clients of the control socket.

use std::path::Path;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {}

pub fn main(_config: Option<&Path>, _args: Args) -> ExitCode {
    eprintln!("mailer queue: not available yet");
    ExitCode::from(2)
}

pub fn reload(_config: Option<&Path>) -> ExitCode {
    eprintln!("mailer reload: not available yet");
    ExitCode::from(2)
}
