//! `mailer check`: is the sending domain set up so that mail leaving through this relay is
//! delivered? SPF, DMARC, DKIM, alignment, MTA-STS, TLS-RPT and MX, each check with a stable id
//! (listed in docs/checks.md), a status and, when something is wrong, a one-line fix.
//!
//! The parsers of the records (SPF terms, DMARC tags, MTA-STS TXT and policy file, TLS-RPT,
//! DKIM key tags) are pure functions in the submodules; [`run_checks`] does the DNS and HTTPS
//! work through one hickory resolver, every query bounded by [`CheckInput::timeout`].
//! [`mastodon`] judges Mastodon's `.env.production` against the configuration, without DNS.
//! [`probe`] talks to every relay pool member, as far as `MAIL FROM`, and judges what it saw.

pub mod dkim;
pub mod dmarc;
mod dns;
pub mod mastodon;
pub mod mta_sts;
pub mod probe;
pub mod spf;
pub mod tags;
pub mod tlsrpt;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use serde::Serialize;

use dns::Dns;
pub use dns::DnsFailure;

/// What to check and how to reach DNS and HTTPS.
#[derive(Clone, Debug)]
pub struct CheckInput {
    /// The sending domain (MAIL FROM and header From after rewriting), e.g. `ublog.tech`.
    pub domain: String,
    /// The relay pool: host names (every A/AAAA counts) or IP literals.
    pub relays: Vec<String>,
    /// DKIM selectors that sign mail of `domain`.
    pub dkim_selectors: Vec<String>,
    /// The keys the relay signs with; a checked selector of `domain` found here must publish
    /// this key. Empty: published keys are judged on their own.
    pub dkim_keys: Vec<dkim::ExpectedKey>,
    /// Name servers replacing the system's for every lookup; empty means the system resolvers.
    pub nameservers: Vec<SocketAddr>,
    /// Roots trusted for the MTA-STS policy fetch in addition to webpki and system roots.
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// Bound of each DNS lookup and of the policy fetch.
    pub timeout: Duration,
    /// TCP port of the MTA-STS policy host. RFC 8461 fixes 443; other values serve tests, where
    /// the policy server listens on a random loopback port.
    pub mta_sts_port: u16,
}

impl CheckInput {
    /// Input for `domain` with no relays or selectors, system resolvers, a 5 s timeout, port 443.
    pub fn new(domain: impl Into<String>) -> CheckInput {
        CheckInput {
            domain: domain.into(),
            relays: Vec::new(),
            dkim_selectors: Vec::new(),
            dkim_keys: Vec::new(),
            nameservers: Vec::new(),
            extra_roots: Vec::new(),
            timeout: Duration::from_secs(5),
            mta_sts_port: 443,
        }
    }

    /// What the configuration says about the mail it relays: the rewrite domain of the first
    /// relay action that has one (`None` if none has), every relay host, the DKIM selectors
    /// and keys, and `[check] nameservers`.
    pub fn from_config(config: &crate::config::Config) -> Option<CheckInput> {
        use crate::config::{Action, MailFromRewrite};
        let relays = || {
            config.actions.values().filter_map(|a| match a {
                Action::Relay(r) => Some(r),
                Action::Local(_) => None,
            })
        };
        let domain = relays().find_map(|r| match &r.mail_from {
            Some(MailFromRewrite::Domain(d)) => Some(d.clone()),
            Some(MailFromRewrite::Address(a)) => Some(a.domain().to_string()),
            None => None,
        })?;
        let mut input = CheckInput::new(domain);
        input.nameservers = config.check.nameservers.clone();
        for relay in relays() {
            for url in &relay.relays {
                if !input.relays.contains(&url.host) {
                    input.relays.push(url.host.clone());
                }
            }
            for key in &relay.dkim {
                if !input.dkim_selectors.contains(&key.selector) {
                    input.dkim_selectors.push(key.selector.clone());
                }
                input.dkim_keys.push(dkim::ExpectedKey {
                    domain: key.domain.clone(),
                    selector: key.selector.clone(),
                    path: key.key.display().to_string(),
                    public_key: crate::delivery::dkim::read_key(&key.key)
                        .map(|k| k.public_key().to_vec())
                        .map_err(|e| e.reason),
                });
            }
        }
        Some(input)
    }
}

/// The outcome of one check. Ordered from best to worst; `Unknown` (a query it depends on
/// failed, so neither pass nor fail can be said) ranks above warn and below fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Info,
    Warn,
    Unknown,
    Fail,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Pass => "pass",
            Status::Info => "info",
            Status::Warn => "warn",
            Status::Unknown => "unknown",
            Status::Fail => "fail",
        })
    }
}

/// The group a check belongs to, in report order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Area {
    #[serde(rename = "spf")]
    Spf,
    #[serde(rename = "dmarc")]
    Dmarc,
    #[serde(rename = "dkim")]
    Dkim,
    #[serde(rename = "alignment")]
    Alignment,
    #[serde(rename = "mta-sts")]
    MtaSts,
    #[serde(rename = "tls-rpt")]
    TlsRpt,
    #[serde(rename = "mx")]
    Mx,
    /// Mastodon's mail settings (`.env.production`) against this relay's configuration.
    #[serde(rename = "mastodon")]
    Mastodon,
    /// The live probe of the relay pool (`mailer check --probe`).
    #[serde(rename = "relay")]
    Relay,
}

impl Area {
    pub const ALL: [Area; 9] = [
        Area::Spf,
        Area::Dmarc,
        Area::Dkim,
        Area::Alignment,
        Area::MtaSts,
        Area::TlsRpt,
        Area::Mx,
        Area::Mastodon,
        Area::Relay,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Area::Spf => "spf",
            Area::Dmarc => "dmarc",
            Area::Dkim => "dkim",
            Area::Alignment => "alignment",
            Area::MtaSts => "mta-sts",
            Area::TlsRpt => "tls-rpt",
            Area::Mx => "mx",
            Area::Mastodon => "mastodon",
            Area::Relay => "relay",
        }
    }
}

/// One check: a stable `id` (`area.name`), its status, what was found, and for warn/fail a fix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    pub area: Area,
    pub id: &'static str,
    pub status: Status,
    pub message: String,
    /// Empty for pass/info.
    pub hint: String,
}

impl Check {
    fn new(area: Area, id: &'static str, status: Status, message: impl Into<String>) -> Check {
        Check {
            area,
            id,
            status,
            message: message.into(),
            hint: String::new(),
        }
    }

    fn hint(mut self, hint: impl Into<String>) -> Check {
        self.hint = hint.into();
        self
    }
}

/// All checks of one domain.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub domain: String,
    /// The worst status among the checks, `info` counting as `pass`.
    pub status: Status,
    pub checks: Vec<Check>,
}

/// Id suffix of checks that report a failed DNS query (timeout, SERVFAIL, unreachable server).
pub const DNS_ERROR_SUFFIX: &str = ".dns-error";

impl Report {
    fn new(domain: &str, mut checks: Vec<Check>) -> Report {
        checks.sort_by_key(|c| c.area);
        let status = checks
            .iter()
            .map(|c| c.status)
            .max()
            .map_or(Status::Pass, |s| {
                if s == Status::Info {
                    Status::Pass
                } else {
                    s
                }
            });
        Report {
            domain: domain.to_string(),
            status,
            checks,
        }
    }

    /// The checks with `id`, in report order.
    pub fn find<'a>(&'a self, id: &'a str) -> impl Iterator<Item = &'a Check> + 'a {
        self.checks.iter().filter(move |c| c.id == id)
    }

    /// Whether some DNS query failed (so a verdict may rest on missing data).
    pub fn dns_failed(&self) -> bool {
        self.checks.iter().any(|c| c.id.ends_with(DNS_ERROR_SUFFIX))
    }

    /// The exit code of `mailer check`: 2 when DNS could not be queried (some checks are then
    /// `unknown`), 1 when a check fails, 0 otherwise (warnings allowed).
    pub fn exit_code(&self) -> u8 {
        if self.dns_failed() {
            2
        } else if self.status == Status::Fail {
            1
        } else {
            0
        }
    }

    /// The human report: checks grouped by area, a fix under each warn/fail, a summary line.
    pub fn render_text(&self) -> String {
        let mut out = format!("Deliverability of {}\n", self.domain);
        for area in Area::ALL {
            let checks: Vec<&Check> = self.checks.iter().filter(|c| c.area == area).collect();
            if checks.is_empty() {
                continue;
            }
            out.push_str(&format!("\n{}\n", area.as_str()));
            for c in checks {
                out.push_str(&format!("  [{}] {:<26} {}\n", c.status, c.id, c.message));
                if !c.hint.is_empty() {
                    out.push_str(&format!("         fix: {}\n", c.hint));
                }
            }
        }
        let count = |s: Status| self.checks.iter().filter(|c| c.status == s).count();
        let unknown = match count(Status::Unknown) {
            0 => String::new(),
            n => format!("{n} unknown, "),
        };
        out.push_str(&format!(
            "\n{}: {} — {} failed, {unknown}{} warnings, {} passed, {} info\n",
            self.domain,
            self.status,
            count(Status::Fail),
            count(Status::Warn),
            count(Status::Pass),
            count(Status::Info),
        ));
        out
    }
}

/// Why no report could be made.
#[derive(Debug)]
pub enum CheckError {
    /// The domain is not a valid host name.
    Domain(String),
    /// The resolver could not be built (bad system configuration).
    Resolver(String),
    /// DNS could not be queried at all (the first query timed out, was refused or SERVFAILed).
    Dns(DnsFailure),
    /// The HTTPS client could not be built.
    Https(String),
}

impl CheckError {
    /// Every error is a usage, configuration or DNS problem: exit code 2.
    pub fn exit_code(&self) -> u8 {
        2
    }
}

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckError::Domain(d) => write!(f, "invalid domain {d:?}"),
            CheckError::Resolver(e) => write!(f, "cannot set up the DNS resolver: {e}"),
            CheckError::Dns(e) => write!(f, "DNS cannot be queried: {e}"),
            CheckError::Https(e) => write!(f, "cannot set up the HTTPS client: {e}"),
        }
    }
}

impl std::error::Error for CheckError {}

/// Checks `input.domain` against the relay pool and returns every check's result.
pub async fn run_checks(input: &CheckInput) -> Result<Report, CheckError> {
    let domain = input.domain.trim_end_matches('.').to_ascii_lowercase();
    if !spf::is_domain_name(&domain) {
        return Err(CheckError::Domain(input.domain.clone()));
    }
    let dns = Dns::new(&input.nameservers, input.timeout)?;
    // A first query tells "DNS is unreachable" (no report possible) from "records are missing".
    let apex_txt = dns.txt(&domain).await.map_err(CheckError::Dns)?;

    let mut checks = Vec::new();
    let (pool, pool_complete) = resolve_pool(&dns, &input.relays, &mut checks).await;
    let spf = spf::check(
        &dns,
        &domain,
        apex_txt.as_deref(),
        &pool,
        pool_complete,
        input.timeout,
    )
    .await;
    checks.extend(spf.checks);
    let dmarc = dmarc::check(&dns, &domain, apex_txt.as_deref()).await;
    checks.extend(dmarc.checks.iter().cloned());
    let dkim = dkim::check(&dns, &domain, &input.dkim_selectors, &input.dkim_keys).await;
    checks.extend(dkim.checks.iter().cloned());
    checks.extend(
        alignment(
            &dns,
            &domain,
            &input.relays,
            &pool,
            &spf.pool,
            &dmarc,
            &dkim,
            input.timeout,
        )
        .await,
    );
    let mx = mx_checks(&dns, &domain).await;
    checks.extend(mx.checks);
    checks.extend(mta_sts::check(&dns, &domain, mx.hosts.as_deref(), input).await?);
    checks.extend(tlsrpt::check(&dns, &domain).await);
    Ok(Report::new(&domain, checks))
}

/// Addresses of the relay pool, and whether every relay name could be looked up; relays that
/// do not resolve are reported under `spf.pool`.
async fn resolve_pool(
    dns: &Dns,
    relays: &[String],
    checks: &mut Vec<Check>,
) -> (Vec<IpAddr>, bool) {
    let mut pool = Vec::new();
    let mut complete = true;
    for relay in relays {
        let relay = relay.trim();
        if let Ok(ip) = relay
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            pool.push(ip);
            continue;
        }
        match dns.ips(relay).await {
            Ok(Some(ips)) => pool.extend(ips),
            Ok(None) => checks.push(
                Check::new(
                    Area::Spf,
                    "spf.pool",
                    Status::Fail,
                    format!("relay host {relay} has no A or AAAA record"),
                )
                .hint(format!("fix the relay name {relay} or publish its address")),
            ),
            Err(e) => {
                complete = false;
                checks.push(dns_error(Area::Spf, "spf.dns-error", &e));
            }
        }
    }
    pool.sort();
    pool.dedup();
    (pool, complete)
}

/// A check whose input could not be fetched: neither pass nor fail.
pub(crate) fn unknown(area: Area, id: &'static str, why: impl Into<String>) -> Check {
    Check::new(area, id, Status::Unknown, why)
        .hint("check the name servers, then run the check again")
}

fn dns_error(area: Area, id: &'static str, failure: &DnsFailure) -> Check {
    Check::new(area, id, Status::Fail, failure.to_string()).hint(
        "check the name servers of the domain; the verdicts resting on this query are unknown",
    )
}

/// Whether DMARC can pass for mail of `domain` leaving through the pool (RFC 7489 §3.1).
/// The envelope and header domains are both `domain` after rewriting, so SPF aligns in either
/// mode when the pool passes SPF at `domain`; a pool authorized only at a relay subdomain aligns
/// under relaxed `aspf` alone. DKIM signed with `d=domain` aligns in either mode.
#[allow(clippy::too_many_arguments)]
async fn alignment(
    dns: &Dns,
    domain: &str,
    relays: &[String],
    pool: &[IpAddr],
    spf_pool: &spf::PoolResult,
    dmarc: &dmarc::Outcome,
    dkim: &dkim::Outcome,
    timeout: Duration,
) -> Vec<Check> {
    let area = Area::Alignment;
    let mut checks = Vec::new();
    if pool.is_empty() && dkim.usable_selectors.is_empty() {
        checks.push(Check::new(
            area,
            "alignment.dmarc",
            Status::Info,
            "no relay addresses and no DKIM selector given; alignment not checked",
        ));
        return checks;
    }
    let aspf_strict = dmarc.aspf_strict;
    let spf_aligned = !pool.is_empty()
        && spf_pool.unauthorized.is_empty()
        && spf_pool.errors == 0
        && !spf_pool.incomplete;
    // Only failed lookups stand between the pool and a verdict.
    let spf_unknown = (spf_pool.errors > 0 || spf_pool.incomplete)
        && spf_pool.unauthorized.len() == spf_pool.errors;
    let mut subdomain_pass = None;
    if !spf_aligned && !pool.is_empty() {
        // A relay host under the domain may carry its own SPF record for the pool.
        for relay in relays {
            let relay = relay.trim().trim_end_matches('.').to_ascii_lowercase();
            if relay != domain && relay.ends_with(&format!(".{domain}")) {
                let sender = format!("postmaster@{relay}");
                let r = spf::evaluate_pool(dns, &relay, &sender, pool, timeout).await;
                if r.unauthorized.is_empty() && r.errors == 0 {
                    subdomain_pass = Some(relay);
                    break;
                }
            }
        }
    }
    let spf_status = if spf_unknown && subdomain_pass.is_none() {
        unknown(
            area,
            "alignment.spf",
            format!(
                "whether the pool passes SPF for MAIL FROM @{domain} is unknown: a lookup failed"
            ),
        )
    } else if spf_aligned {
        Check::new(
            area,
            "alignment.spf",
            Status::Pass,
            format!("the pool passes SPF for MAIL FROM @{domain}, aligned with From @{domain}"),
        )
    } else if let Some(sub) = &subdomain_pass {
        if aspf_strict {
            Check::new(
                area,
                "alignment.spf",
                Status::Fail,
                format!("the pool passes SPF only at {sub}, which cannot align with From @{domain} under aspf=s"),
            )
            .hint(format!("authorize the pool in the SPF record of {domain}, or set aspf=r in the DMARC record of {domain}"))
        } else {
            Check::new(
                area,
                "alignment.spf",
                Status::Warn,
                format!("the pool passes SPF only at {sub}; that aligns (aspf=r) only if MAIL FROM uses {sub}"),
            )
            .hint(format!("authorize the pool in the SPF record of {domain}"))
        }
    } else {
        Check::new(
            area,
            "alignment.spf",
            Status::Warn,
            format!(
                "the pool does not pass SPF for MAIL FROM @{domain}: DMARC cannot pass via SPF"
            ),
        )
        .hint(format!("authorize the pool in the SPF record of {domain}"))
    };
    let spf_ok = spf_status.status == Status::Pass;
    let spf_unknown = spf_status.status == Status::Unknown;
    checks.push(spf_status);
    let dkim_ok = !dkim.usable_selectors.is_empty();
    let dkim_unknown = !dkim_ok && dkim.failed;
    checks.push(if dkim_unknown {
        unknown(
            area,
            "alignment.dkim",
            format!("whether a DKIM key for {domain} is published is unknown: a lookup failed"),
        )
    } else if dkim_ok {
        Check::new(
            area,
            "alignment.dkim",
            Status::Pass,
            format!(
                "DKIM signatures with d={domain} (selector {}) align with From @{domain} under adkim={}",
                dkim.usable_selectors.join(", "),
                if dmarc.adkim_strict { "s" } else { "r" }
            ),
        )
    } else {
        Check::new(
            area,
            "alignment.dkim",
            Status::Warn,
            format!("no usable DKIM key for {domain}: DMARC rests on SPF alone"),
        )
        .hint(format!("sign with d={domain} and publish the key (give its selector with --dkim-selector)"))
    });
    checks.push(if spf_ok || dkim_ok {
        Check::new(
            area,
            "alignment.dmarc",
            Status::Pass,
            format!(
                "DMARC can pass for From @{domain} via {}",
                match (spf_ok, dkim_ok) {
                    (true, true) => "SPF and DKIM",
                    (true, false) => "SPF",
                    _ => "DKIM",
                }
            ),
        )
    } else if spf_unknown || dkim_unknown {
        unknown(
            area,
            "alignment.dmarc",
            format!("whether DMARC can pass for From @{domain} is unknown: a lookup failed"),
        )
    } else {
        Check::new(
            area,
            "alignment.dmarc",
            Status::Fail,
            format!(
                "neither aligned SPF nor aligned DKIM is possible: DMARC fails for From @{domain}"
            ),
        )
        .hint(format!(
            "authorize the pool in the SPF record of {domain} or sign with DKIM d={domain}"
        ))
    });
    checks
}

struct MxOutcome {
    checks: Vec<Check>,
    /// MX host names (lowercase, no trailing dot); `None` when the lookup failed.
    hosts: Option<Vec<String>>,
}

async fn mx_checks(dns: &Dns, domain: &str) -> MxOutcome {
    let area = Area::Mx;
    let mut checks = Vec::new();
    let mxs = match dns.mx(domain).await {
        Ok(Some(mxs)) => mxs,
        Ok(None) => {
            checks.push(
                Check::new(
                    area,
                    "mx.record",
                    Status::Fail,
                    format!("{domain} has no MX record"),
                )
                .hint(format!(
                    "publish an MX record for {domain} so that bounces and replies reach it"
                )),
            );
            return MxOutcome {
                checks,
                hosts: Some(Vec::new()),
            };
        }
        Err(e) => {
            checks.push(dns_error(area, "mx.dns-error", &e));
            checks.push(unknown(
                area,
                "mx.record",
                format!("the MX records of {domain} are unknown: their lookup failed"),
            ));
            return MxOutcome {
                checks,
                hosts: None,
            };
        }
    };
    let hosts: Vec<String> = mxs.iter().map(|(_, h)| h.clone()).collect();
    if hosts.iter().all(|h| h.is_empty()) {
        checks.push(Check::new(
            area,
            "mx.record",
            Status::Warn,
            format!("{domain} publishes a null MX (RFC 7505): it receives no mail, bounces are lost"),
        ).hint(format!("publish a real MX for {domain}")));
        return MxOutcome {
            checks,
            hosts: Some(hosts),
        };
    }
    checks.push(Check::new(
        area,
        "mx.record",
        Status::Pass,
        format!(
            "MX: {}",
            mxs.iter()
                .map(|(p, h)| format!("{p} {h}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ));
    let mut missing = Vec::new();
    let mut failed = false;
    for host in &hosts {
        match dns.ips(host).await {
            Ok(Some(_)) => {}
            Ok(None) => missing.push(host.clone()),
            Err(e) => {
                failed = true;
                checks.push(dns_error(area, "mx.dns-error", &e));
            }
        }
    }
    checks.push(if missing.is_empty() && failed {
        unknown(
            area,
            "mx.address",
            "whether every MX host has an address is unknown: a lookup failed",
        )
    } else if missing.is_empty() {
        Check::new(
            area,
            "mx.address",
            Status::Pass,
            "every MX host resolves to an address",
        )
    } else {
        Check::new(
            area,
            "mx.address",
            Status::Fail,
            format!("MX host without address: {}", missing.join(", ")),
        )
        .hint(format!("publish A/AAAA records for {}", missing.join(", ")))
    });
    MxOutcome {
        checks,
        hosts: Some(hosts),
    }
}
