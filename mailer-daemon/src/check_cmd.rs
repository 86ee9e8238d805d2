//! `mailer check`: the command-line front of `mailer_core::check`.
//!
//! The caller loads the configuration (the file named by `--config`, or the default one, whose
//! absence is not an error when DOMAIN and `--relay` are given) and passes what it found as
//! [`CheckDefaults`]; flags given here win over those defaults.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use mailer_core::check::dkim::ExpectedKey;
use mailer_core::check::{mastodon, run_checks, CheckInput, Report};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// Check that the sending domain's SPF, DMARC, DKIM, MTA-STS, TLS-RPT and MX let mail leaving
/// through the relay be delivered; with --mastodon-env, check Mastodon's mail settings against
/// the configuration instead; with --probe, talk to every relay pool member as far as MAIL FROM. Exit 0: no failure; 1: a check fails; 2: usage, configuration,
/// file or DNS error.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The sending domain [default: the rewrite domain of the configured relay action]
    pub domain: Option<String>,
    /// A relay host name (all its A/AAAA) or IP of the pool; repeatable [default: configured relay hosts]
    #[arg(long = "relay", value_name = "HOST_OR_IP")]
    pub relays: Vec<String>,
    /// DKIM selector; repeatable [default: the configured selector]
    #[arg(long = "dkim-selector", value_name = "SEL")]
    pub dkim_selectors: Vec<String>,
    /// Name server replacing the system resolvers for every lookup; repeatable [default: the
    /// configuration's `[check] nameservers`, else the system resolvers]
    #[arg(long = "nameserver", value_name = "IP[:PORT]")]
    pub nameservers: Vec<String>,
    /// PEM file of CA certificates trusted for the MTA-STS policy fetch, besides the public roots
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Bound of each DNS lookup and of the policy fetch, in seconds
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    pub timeout: u64,
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
    /// Mastodon's `.env.production`: judge its SMTP_* and BULK_SMTP_* settings against the
    /// configuration (listener, AUTH, STARTTLS, From alignment, sendmail). Only these checks
    /// run; no DNS is queried
    #[arg(long, value_name = "FILE", conflicts_with = "probe")]
    pub mastodon_env: Option<PathBuf>,
    /// Probe every address of every relay host live, as the relay would: connect, STARTTLS or
    /// TLS with the relay's verification, certificate expiry, AUTH with the configured
    /// credentials, SIZE, and MAIL FROM with the rewritten postmaster address, then RSET and
    /// QUIT. No recipient and no message is ever sent. Only these checks run; --timeout
    /// bounds each step
    #[arg(long)]
    pub probe: bool,
    /// Port of the MTA-STS policy host (443 by RFC 8461); for tests only
    #[arg(long, hide = true, default_value_t = 443)]
    pub mta_sts_port: u16,
}

/// `mailer check`: defaults from the configuration when there is one. A missing configuration
/// is an error only when DOMAIN or `--relay` would have come from it.
pub fn main(config_path: Option<&std::path::Path>, args: Args) -> ExitCode {
    if let Some(env_path) = &args.mastodon_env {
        return mastodon(config_path, env_path, args.json);
    }
    if args.probe {
        return probe(config_path, &args);
    }
    let explicit = config_path.is_some();
    let defaults = match crate::read_config(config_path) {
        Ok(config) => defaults_from(&config),
        Err(diagnostics) => {
            if explicit || args.domain.is_none() || args.relays.is_empty() {
                for d in diagnostics {
                    eprintln!("{d}");
                }
                return ExitCode::from(2);
            }
            CheckDefaults::default()
        }
    };
    let runtime = match runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    runtime.block_on(run(args, defaults))
}

/// `mailer check --mastodon-env FILE`: the Mastodon checks alone, against the configuration.
fn mastodon(
    config_path: Option<&std::path::Path>,
    env_path: &std::path::Path,
    json: bool,
) -> ExitCode {
    let config = match crate::read_config(config_path) {
        Ok(config) => config,
        Err(diagnostics) => {
            for d in diagnostics {
                eprintln!("{d}");
            }
            return ExitCode::from(2);
        }
    };
    let text = match std::fs::read_to_string(env_path) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("mailer check: {}: {e}", env_path.display());
            return ExitCode::from(2);
        }
    };
    let env = match mastodon::parse(&text) {
        Ok(env) => env,
        Err(errors) => {
            for e in errors {
                eprintln!("{}:{e}", env_path.display());
            }
            return ExitCode::from(2);
        }
    };
    let report = mastodon::judge(&env, &config, &FileSystem, &env_path.display().to_string());
    print_report(&report, json)
}

/// `mailer check --probe`: the relay pool probe alone, from the configuration.
fn probe(config_path: Option<&std::path::Path>, args: &Args) -> ExitCode {
    let config = match crate::load_config(config_path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let plans = match mailer_core::delivery::preflight(&config)
        .map_err(|problems| problems.join("\n"))
        .and_then(|tables| mailer_core::check::probe::plan(&config, &tables))
    {
        Ok(plans) => plans,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if plans.is_empty() {
        eprintln!(
            "mailer check: {}: no relay action to probe",
            config.source.display()
        );
        return ExitCode::from(2);
    }
    if args.timeout == 0 {
        eprintln!("mailer check: --timeout must be at least 1 second");
        return ExitCode::from(2);
    }
    let runtime = match runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    let report = runtime.block_on(async {
        let resolver = crate::watch::system_resolver();
        mailer_core::check::probe::run(
            &plans,
            &*resolver,
            Duration::from_secs(args.timeout),
            std::time::SystemTime::now(),
        )
        .await
    });
    print_report(&report, args.json)
}

/// The host's answers to the Mastodon checks: links resolved on this file system.
struct FileSystem;

impl mastodon::Host for FileSystem {
    fn canonical(&self, path: &std::path::Path) -> Option<PathBuf> {
        std::fs::canonicalize(path).ok()
    }

    fn current_exe(&self) -> Option<PathBuf> {
        std::env::current_exe().and_then(std::fs::canonicalize).ok()
    }
}

/// What `mailer check` prints: the DNS and Mastodon report, or the relay probe's.
trait Printed: serde::Serialize {
    fn render_text(&self) -> String;
    fn exit_code(&self) -> u8;
}

impl Printed for Report {
    fn render_text(&self) -> String {
        Report::render_text(self)
    }
    fn exit_code(&self) -> u8 {
        Report::exit_code(self)
    }
}

impl Printed for mailer_core::check::probe::ProbeReport {
    fn render_text(&self) -> String {
        Self::render_text(self)
    }
    fn exit_code(&self) -> u8 {
        Self::exit_code(self)
    }
}

/// The checks' lookups and connections run on one thread: they wait on the network.
fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("mailer check: {e}");
            ExitCode::from(2)
        })
}

/// Prints `report` as text or JSON and returns its exit code.
fn print_report(report: &impl Printed, json: bool) -> ExitCode {
    if json {
        match serde_json::to_string_pretty(report) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("mailer check: cannot encode the report: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        print!("{}", report.render_text());
    }
    ExitCode::from(report.exit_code())
}

/// The relay action's rewrite domain, hosts and DKIM selectors and keys.
fn defaults_from(config: &mailer_core::config::Config) -> CheckDefaults {
    match CheckInput::from_config(config) {
        Some(input) => CheckDefaults {
            domain: Some(input.domain),
            relays: input.relays,
            dkim_selectors: input.dkim_selectors,
            dkim_keys: input.dkim_keys,
            nameservers: input.nameservers,
        },
        None => CheckDefaults::default(),
    }
}

/// What the configuration says, filled in by the caller.
#[derive(Clone, Debug, Default)]
pub struct CheckDefaults {
    /// The rewrite domain of the relay action.
    pub domain: Option<String>,
    /// The relay hosts of the relay action.
    pub relays: Vec<String>,
    /// The DKIM selector, when DKIM signing is configured.
    pub dkim_selectors: Vec<String>,
    /// The configured DKIM keys, whose published records must match them.
    pub dkim_keys: Vec<ExpectedKey>,
    /// `[check] nameservers`.
    pub nameservers: Vec<SocketAddr>,
}

/// `IP` or `IP:PORT` (`[v6]:PORT` for IPv6 with a port); port 53 by default.
pub fn parse_nameserver(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let ip = s.trim_start_matches('[').trim_end_matches(']');
    ip.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| format!("--nameserver {s:?} is not IP or IP:PORT"))
}

fn input(args: Args, defaults: CheckDefaults) -> Result<(CheckInput, bool), String> {
    let domain = args
        .domain
        .or(defaults.domain)
        .ok_or("no DOMAIN given and no relay action with a rewrite domain in the configuration")?;
    let mut input = CheckInput::new(domain);
    input.relays = if args.relays.is_empty() {
        defaults.relays
    } else {
        args.relays
    };
    input.dkim_selectors = if args.dkim_selectors.is_empty() {
        defaults.dkim_selectors
    } else {
        args.dkim_selectors
    };
    input.dkim_keys = defaults.dkim_keys;
    input.nameservers = args
        .nameservers
        .iter()
        .map(|s| parse_nameserver(s))
        .collect::<Result<_, _>>()?;
    if input.nameservers.is_empty() {
        input.nameservers = defaults.nameservers;
    }
    if let Some(path) = &args.ca_file {
        input.extra_roots = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("--ca-file {}: {e}", path.display()))?;
        if input.extra_roots.is_empty() {
            return Err(format!(
                "--ca-file {}: no certificate in it",
                path.display()
            ));
        }
    }
    if args.timeout == 0 {
        return Err("--timeout must be at least 1 second".into());
    }
    input.timeout = Duration::from_secs(args.timeout);
    input.mta_sts_port = args.mta_sts_port;
    Ok((input, args.json))
}

/// Runs the checks, prints the report (text or `--json`) and returns the exit code.
pub async fn run(args: Args, defaults: CheckDefaults) -> ExitCode {
    let (input, json) = match input(args, defaults) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("mailer check: {e}");
            return ExitCode::from(2);
        }
    };
    match run_checks(&input).await {
        Err(e) => {
            eprintln!("mailer check: {e}");
            ExitCode::from(e.exit_code())
        }
        Ok(report) => print_report(&report, json),
    }
}
