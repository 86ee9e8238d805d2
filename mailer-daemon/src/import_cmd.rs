//! `mailer config import FILE`: prints the mailer.toml translation of an smtpd.conf or a
//! Postfix main.cf. Exit 0: complete; 1: written, but some lines are not translated (named in
//! the output and on standard error); 2: the file cannot be read or is neither format.

use std::path::PathBuf;
use std::process::ExitCode;

use mailer_core::config::import::{self, Format, Options};

#[derive(clap::Args)]
pub struct Args {
    /// The smtpd.conf or main.cf to translate.
    file: PathBuf,
    /// The format; detected from the content when not given.
    #[arg(long, value_enum)]
    from: Option<From>,
    /// The host's mail name, when the file does not say [default: /etc/mailname if present].
    #[arg(long, value_name = "NAME")]
    hostname: Option<String>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum From {
    Smtpd,
    Postfix,
}

pub fn main(args: Args) -> ExitCode {
    let text = match std::fs::read(&args.file) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(t) => t,
            Err(_) => {
                eprintln!("{}: not UTF-8 text", args.file.display());
                return ExitCode::from(2);
            }
        },
        Err(e) => {
            eprintln!("{}: cannot read: {e}", args.file.display());
            return ExitCode::from(2);
        }
    };
    let hostname = args.hostname.or_else(|| {
        let name = std::fs::read_to_string("/etc/mailname").ok()?;
        let name = name.trim();
        (!name.is_empty()).then(|| name.to_string())
    });
    let read = |p: &std::path::Path| std::fs::read_to_string(p).ok();
    let options = Options {
        format: args.from.map(|f| match f {
            From::Smtpd => Format::Smtpd,
            From::Postfix => Format::Postfix,
        }),
        hostname,
        read: &read,
    };
    match import::import(&text, &options) {
        Ok(t) => {
            print!("{}", t.toml);
            for u in &t.unsupported {
                if u.line == 0 {
                    eprintln!("{}: {}: {}", args.file.display(), u.text, u.why);
                } else {
                    eprintln!(
                        "{}:{}: not translated: {}",
                        args.file.display(),
                        u.line,
                        u.why
                    );
                }
            }
            if t.complete() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("{}: {e}", args.file.display());
            ExitCode::from(2)
        }
    }
}
