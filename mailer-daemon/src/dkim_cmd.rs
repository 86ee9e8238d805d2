//! `mailer dkim …`: DKIM key generation and DNS records.
//!
//! Rotation: `keygen` a key under a new selector, publish its record, wait for the old
//! record's TTL, switch the relay action's `selector` and `key`, `mailer reload`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use mailer_core::config::Action;
use mailer_core::delivery::dkim::{
    check_key_mode, generate_key, read_key, write_key_file, DkimRecord, KeyAlgorithm,
};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: DkimCommand,
}

#[derive(clap::Subcommand)]
enum DkimCommand {
    /// Generate a private key (mode 0600) and print the TXT record that publishes it.
    Keygen {
        /// The selector the key is published under (`SEL._domainkey.DOMAIN`)
        #[arg(long)]
        selector: String,
        /// The signing domain (`d=`), e.g. the header From domain
        #[arg(long)]
        domain: String,
        /// Key algorithm
        #[arg(long, value_enum, default_value = "rsa2048")]
        algorithm: AlgorithmArg,
        /// Where to write the key; an existing file is never replaced [default: SELECTOR.key]
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Print the TXT record of an existing private key.
    Record {
        /// The private key (PEM)
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// The selector [default: the one the configuration gives this key]
        #[arg(long)]
        selector: Option<String>,
        /// The signing domain [default: the one the configuration gives this key]
        #[arg(long)]
        domain: Option<String>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum AlgorithmArg {
    Rsa2048,
    Ed25519,
}

pub fn main(config: Option<&Path>, args: Args) -> ExitCode {
    let result = match args.command {
        DkimCommand::Keygen {
            selector,
            domain,
            algorithm,
            out,
        } => keygen(&selector, &domain, algorithm, out),
        DkimCommand::Record {
            key,
            selector,
            domain,
        } => record(config, &key, selector, domain),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mailer dkim: {e}");
            ExitCode::from(2)
        }
    }
}

fn keygen(
    selector: &str,
    domain: &str,
    algorithm: AlgorithmArg,
    out: Option<PathBuf>,
) -> Result<(), String> {
    let (selector, domain) = names(selector, domain)?;
    let out = out.unwrap_or_else(|| PathBuf::from(format!("{selector}.key")));
    let algorithm = match algorithm {
        AlgorithmArg::Rsa2048 => KeyAlgorithm::Rsa2048,
        AlgorithmArg::Ed25519 => KeyAlgorithm::Ed25519,
    };
    let (pem, key) = generate_key(algorithm)?;
    write_key_file(&out, &pem).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    let out = std::fs::canonicalize(&out).unwrap_or(out);
    eprintln!(
        "wrote {} (mode 0600); publish this record, wait for it to be visible, then configure \
         dkim = {{ domain = \"{domain}\", selector = \"{selector}\", key = \"{}\" }} and reload",
        out.display(),
        out.display()
    );
    println!("{}", DkimRecord::new(&selector, &domain, &key).zone_line());
    Ok(())
}

fn record(
    config: Option<&Path>,
    path: &Path,
    selector: Option<String>,
    domain: Option<String>,
) -> Result<(), String> {
    let key = read_key(path).map_err(|e| e.to_string())?;
    if let Err(e) = check_key_mode(path) {
        eprintln!("mailer dkim: warning: {e}");
    }
    let (selector, domain) = match (selector, domain) {
        (Some(s), Some(d)) => (s, d),
        (s, d) => {
            let configured = configured_names(config, path);
            match (s.or(configured.0), d.or(configured.1)) {
                (Some(s), Some(d)) => (s, d),
                _ => {
                    return Err(format!(
                        "the configuration names no selector and domain for {}; give --selector and --domain",
                        path.display()
                    ))
                }
            }
        }
    };
    let (selector, domain) = names(&selector, &domain)?;
    println!("{}", DkimRecord::new(&selector, &domain, &key).zone_line());
    Ok(())
}

/// The selector and domain a relay action gives the key at `path`, if the configuration loads.
fn configured_names(config: Option<&Path>, path: &Path) -> (Option<String>, Option<String>) {
    let Ok(config) = crate::read_config(config) else {
        return (None, None);
    };
    let wanted = std::fs::canonicalize(path).ok();
    for action in config.actions.values() {
        let Action::Relay(relay) = action else {
            continue;
        };
        for key in &relay.dkim {
            if key.key == path || std::fs::canonicalize(&key.key).ok() == wanted {
                return (Some(key.selector.clone()), Some(key.domain.clone()));
            }
        }
    }
    (None, None)
}

/// Checks a selector and domain are DNS names and lower-cases the domain.
fn names(selector: &str, domain: &str) -> Result<(String, String), String> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if !selector.split('.').all(label_ok) {
        return Err(format!("--selector {selector:?} is not a DNS name"));
    }
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    if !domain.contains('.') || !domain.split('.').all(label_ok) || domain.contains('_') {
        return Err(format!("--domain {domain:?} is not a domain name"));
    }
    Ok((selector.to_string(), domain))
}
