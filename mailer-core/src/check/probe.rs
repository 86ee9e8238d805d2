//! `mailer check --probe`: a live, read-only look at every address of every relay host of
//! every relay action, as the relay itself would see it. Per address: the TCP connect time,
//! the greeting and EHLO, STARTTLS or implicit TLS verified with the relay's own roots and
//! verifier, the certificate's expiry, the TLS version, AUTH with the configured credentials,
//! SIZE against `max_message_size`, and `MAIL FROM` with the rewritten sender of a local user,
//! then `RSET` and `QUIT`. No recipient and no data is ever sent.
//!
//! [`session`] is the dialogue without IO; `drive` runs it over a socket with the relay's TLS
//! handshake; [`judge`] turns what was seen into checks with stable ids (`relay.*`, listed in
//! docs/checks.md), each warn or fail with a one-line fix.

mod drive;
pub mod session;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::{Area, Check, Status};
use crate::address::Address;
use crate::config::{Action, Config, MailFromRewrite};
use crate::delivery::relay::{Member, RelaySettings, Resolve, Security};
use crate::delivery::Tables;
use crate::policy::rewrite::rewrite_sender;
pub use session::{AuthResult, Dialogue, ProbeEvent, ProbeSession, Step};

/// A certificate expiring in fewer days than this warns.
pub const CERT_WARN_DAYS: i64 = 21;
/// A certificate expiring in fewer days than this fails.
pub const CERT_FAIL_DAYS: i64 = 7;

/// Every check id of the probe, in report order.
pub const IDS: [&str; 6] = [
    "relay.connect",
    "relay.tls",
    "relay.cert-expiry",
    "relay.auth",
    "relay.size",
    "relay.sender",
];

/// The local part whose rewritten address the probe gives in `MAIL FROM`: every mail system
/// has it (RFC 5321 §4.5.1).
pub const PROBE_LOCAL_PART: &str = "postmaster";

/// One certificate of the chain a server presented.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CertSummary {
    pub subject: String,
    pub issuer: String,
    /// Subject alternative names (DNS names and IP addresses).
    pub names: Vec<String>,
    /// End of validity, seconds since the Unix epoch.
    pub not_after: i64,
    /// End of validity as a date, `2027-03-01`.
    pub not_after_date: String,
}

impl CertSummary {
    /// What a DER certificate says about itself; a certificate that does not parse is named
    /// as such (verification has said, or will say, the rest).
    pub fn of(der: &[u8]) -> CertSummary {
        use x509_parser::extensions::GeneralName;
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
            return CertSummary {
                subject: "(unparsable certificate)".into(),
                ..CertSummary::default()
            };
        };
        let mut names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(n) => names.push(n.to_string()),
                    GeneralName::IPAddress(b) => match b.len() {
                        4 => names.push(
                            IpAddr::from(<[u8; 4]>::try_from(*b).unwrap_or_default()).to_string(),
                        ),
                        16 => names.push(
                            IpAddr::from(<[u8; 16]>::try_from(*b).unwrap_or_default()).to_string(),
                        ),
                        _ => {}
                    },
                    _ => {}
                }
            }
        }
        let not_after = cert.validity().not_after;
        CertSummary {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            names,
            not_after: not_after.timestamp(),
            not_after_date: not_after.to_datetime().date().to_string(),
        }
    }
}

/// What the TLS handshake showed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsSeen {
    /// `TLS 1.3`, when the handshake succeeded.
    pub version: Option<String>,
    /// The name the certificate was verified against: the relay host (an IP literal is
    /// checked against the certificate's IP addresses).
    pub verified_name: String,
    /// The presented chain, leaf first (also when verification failed).
    pub chain: Vec<CertSummary>,
    /// Why the handshake or the verification failed.
    pub error: Option<String>,
}

/// Everything one probe of one address saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// The time to connect, or why there is no connection.
    pub connect: Result<Duration, String>,
    /// `None` when TLS was not attempted.
    pub tls: Option<TlsSeen>,
    /// `None` when the SMTP dialogue did not start.
    pub dialogue: Option<Dialogue>,
}

impl Default for Observed {
    fn default() -> Observed {
        Observed {
            connect: Err("not tried".into()),
            tls: None,
            dialogue: None,
        }
    }
}

/// One relay action to probe: its members as the relay sees them, and the sender to try.
#[derive(Clone, Debug)]
pub struct ActionPlan {
    pub action: String,
    pub settings: RelaySettings,
    /// Per member, the label its credentials are looked up by.
    pub labels: Vec<Option<String>>,
    /// The secrets table of the action.
    pub table: Option<String>,
    /// `MAIL FROM`: the probe's local user after the action's rewrite.
    pub sender: Address,
    /// Where the sender comes from, for the report.
    pub sender_origin: String,
    pub max_message_size: u64,
}

/// Every relay action of `config` with the relay's own settings (members, credentials by
/// label, `ca_file`, timeouts) and the rewritten address of `postmaster@hostname`.
pub fn plan(config: &Config, tables: &Tables) -> Result<Vec<ActionPlan>, String> {
    let local =
        Address::parse(&format!("{PROBE_LOCAL_PART}@{}", config.hostname)).map_err(|e| {
            format!(
                "hostname {:?} makes no sender address: {e}",
                config.hostname
            )
        })?;
    let mut plans = Vec::new();
    for (name, action) in &config.actions {
        let Action::Relay(relay) = action else {
            continue;
        };
        let secrets = relay.auth.as_deref().and_then(|t| tables.secrets(t));
        let settings = crate::delivery::relay::action::settings(config, relay, secrets)
            .map_err(|e| format!("action {name}: {e}"))?;
        let sender = rewrite_sender(Some(&local), relay.mail_from.as_ref())
            .expect("a sender that is not null stays not null");
        let sender_origin = match &relay.mail_from {
            None => format!("{local}, not rewritten: action {name} has no mail_from"),
            Some(MailFromRewrite::Domain(d)) => {
                format!("{local} rewritten by mail_from = \"@{d}\" of action {name}")
            }
            Some(MailFromRewrite::Address(a)) => {
                format!("{local} rewritten by mail_from = \"{a}\" of action {name}")
            }
        };
        plans.push(ActionPlan {
            action: name.clone(),
            settings,
            labels: relay.relays.iter().map(|u| u.label.clone()).collect(),
            table: relay.auth.clone(),
            sender,
            sender_origin,
            max_message_size: config.limits.max_message_size,
        });
    }
    Ok(plans)
}

/// One member address, judged.
#[derive(Clone, Debug, Serialize)]
pub struct MemberReport {
    pub action: String,
    /// The relay as configured, `host:port`.
    pub relay: String,
    /// The address probed, `ip:port`; `None` when the host did not resolve.
    pub address: Option<String>,
    /// The worst status of its checks, `info` counting as `pass`.
    pub status: Status,
    /// Seconds until the leaf certificate expires (negative: expired), when one was seen.
    pub cert_expiry_seconds: Option<i64>,
    /// The checks the probe reached; a step after a failure is not reached and not listed.
    pub checks: Vec<Check>,
}

impl MemberReport {
    /// `relay [address]`, how the report names a member.
    pub fn name(&self) -> String {
        match &self.address {
            Some(a) if *a != self.relay => format!("{} [{a}]", self.relay),
            _ => self.relay.clone(),
        }
    }

    pub fn check(&self, id: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.id == id)
    }
}

/// The probe of the whole pool.
#[derive(Clone, Debug, Serialize)]
pub struct ProbeReport {
    pub status: Status,
    /// Per action: the `MAIL FROM` tried and where it comes from.
    pub senders: Vec<String>,
    pub members: Vec<MemberReport>,
    /// Where members of one action disagree, one line each.
    pub differences: Vec<String>,
}

impl ProbeReport {
    pub fn new(senders: Vec<String>, members: Vec<MemberReport>) -> ProbeReport {
        let status = worst(members.iter().map(|m| m.status));
        let differences = differences(&members);
        ProbeReport {
            status,
            senders,
            members,
            differences,
        }
    }

    /// As for the DNS checks: 1 when a check fails, 0 otherwise (warnings allowed).
    pub fn exit_code(&self) -> u8 {
        u8::from(self.status == Status::Fail)
    }

    pub fn render_text(&self) -> String {
        let mut out = String::from("Relay pool probe\n");
        for s in &self.senders {
            out.push_str(&format!("  sender: {s}\n"));
        }
        for m in &self.members {
            out.push_str(&format!("\n{} {}: {}\n", m.action, m.name(), m.status));
            for c in &m.checks {
                out.push_str(&format!("  [{}] {:<18} {}\n", c.status, c.id, c.message));
                if !c.hint.is_empty() {
                    out.push_str(&format!("         fix: {}\n", c.hint));
                }
            }
        }
        if !self.differences.is_empty() {
            out.push_str("\nmembers differ\n");
            for d in &self.differences {
                out.push_str(&format!("  {d}\n"));
            }
        }
        let count = |s: Status| self.members.iter().filter(|m| m.status == s).count();
        out.push_str(&format!(
            "\nrelay pool: {} — {} of {} addresses fail, {} warn, {} pass\n",
            self.status,
            count(Status::Fail),
            self.members.len(),
            count(Status::Warn),
            count(Status::Pass),
        ));
        out
    }
}

fn worst(statuses: impl Iterator<Item = Status>) -> Status {
    match statuses.max() {
        None | Some(Status::Info) => Status::Pass,
        Some(s) => s,
    }
}

/// For each action with more than one address: the ids whose status is not the same
/// everywhere, and the TLS version, SIZE and AUTH offers where they differ.
fn differences(members: &[MemberReport]) -> Vec<String> {
    let mut by_action: BTreeMap<&str, Vec<&MemberReport>> = BTreeMap::new();
    for m in members {
        by_action.entry(&m.action).or_default().push(m);
    }
    let several_actions = by_action.len() > 1;
    let mut out = Vec::new();
    for (action, members) in by_action {
        if members.len() < 2 {
            continue;
        }
        let prefix = if several_actions {
            format!("{action}: ")
        } else {
            String::new()
        };
        for id in IDS {
            let values: Vec<(String, String)> = members
                .iter()
                .map(|m| {
                    let v = m
                        .check(id)
                        .map_or("not reached".to_string(), |c| c.status.to_string());
                    (m.name(), v)
                })
                .collect();
            if let Some(line) = describe_split(&values) {
                out.push(format!("{prefix}{id}: {line}"));
            }
        }
    }
    out
}

/// `fail at a, b; pass at c` when the values are not all the same. The most common value
/// comes last, as "the other N" when more than two members share it and no other value is
/// as common.
fn describe_split(values: &[(String, String)]) -> Option<String> {
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for (member, value) in values {
        match groups.iter_mut().find(|(v, _)| v == value) {
            Some((_, ms)) => ms.push(member.clone()),
            None => groups.push((value.clone(), vec![member.clone()])),
        }
    }
    if groups.len() < 2 {
        return None;
    }
    groups.sort_by_key(|(_, ms)| ms.len());
    let last = groups.len() - 1;
    let parts: Vec<String> = groups
        .iter()
        .enumerate()
        .map(|(i, (v, ms))| {
            let largest = groups[..last]
                .iter()
                .all(|(_, others)| others.len() < ms.len());
            if i == last && ms.len() > 2 && largest {
                format!("{v} at the other {}", ms.len())
            } else {
                format!("{v} at {}", ms.join(", "))
            }
        })
        .collect();
    Some(parts.join("; "))
}

/// What judging one address needs besides what was seen.
#[derive(Clone, Debug)]
pub struct Context<'a> {
    pub member: &'a Member,
    /// `host:port` as configured.
    pub relay: &'a str,
    pub address: SocketAddr,
    pub label: Option<&'a str>,
    pub table: Option<&'a str>,
    pub action: &'a str,
    pub sender: &'a Address,
    pub sender_origin: &'a str,
    pub max_message_size: u64,
    /// Seconds since the Unix epoch.
    pub now: i64,
}

/// The checks of one address and the seconds until its certificate expires.
pub fn judge(seen: &Observed, cx: &Context<'_>) -> (Vec<Check>, Option<i64>) {
    let area = Area::Relay;
    let host = &cx.member.host;
    let mut checks = Vec::new();
    let dialogue = seen.dialogue.as_ref();
    let stopped = dialogue.and_then(|d| d.stopped.as_ref());

    // relay.connect: TCP, greeting and EHLO.
    let connect = match &seen.connect {
        Err(e) => Check::new(
            area,
            "relay.connect",
            Status::Fail,
            format!("{}: {e}", cx.address),
        )
        .hint(format!(
            "start the server at {} or let this host reach it (firewall, port, address)",
            cx.address
        )),
        Ok(took) => {
            let ms = took.as_millis();
            match (dialogue, stopped) {
                (Some(_), Some((step @ (Step::Greeting | Step::Ehlo), why))) => Check::new(
                    area,
                    "relay.connect",
                    Status::Fail,
                    format!(
                        "connected in {ms} ms, then the {} failed: {why}",
                        step.as_str()
                    ),
                )
                .hint(format!(
                    "the server does not talk to this host: ask the operator of {host} to allow it"
                )),
                (Some(d), _) => {
                    let banner = d.banner.as_ref().map_or(String::new(), |r| r.verbatim());
                    let ehlo = d.ehlo.as_ref().map_or(String::new(), |r| {
                        let first = r.lines.first().cloned().unwrap_or_default();
                        format!("{} {}", r.code, first.trim())
                    });
                    Check::new(
                        area,
                        "relay.connect",
                        Status::Pass,
                        format!("connected in {ms} ms; greeting {banner}; EHLO {ehlo}"),
                    )
                }
                // Implicit TLS failed before the greeting.
                (None, _) => Check::new(
                    area,
                    "relay.connect",
                    Status::Pass,
                    format!("connected in {ms} ms"),
                ),
            }
        }
    };
    checks.push(connect);

    // relay.tls and relay.cert-expiry.
    let mut expiry = None;
    match (cx.member.security, &seen.tls) {
        (Security::Plain, _) if seen.connect.is_ok() => checks.push(
            Check::new(
                area,
                "relay.tls",
                Status::Warn,
                "smtp:// (plaintext): mail and envelope cross the network unencrypted",
            )
            .hint(format!("use smtp+tls:// or smtps:// for {}", cx.relay)),
        ),
        (_, Some(tls)) => {
            let how = if cx.member.security == Security::Implicit {
                "implicit TLS"
            } else {
                "STARTTLS"
            };
            let leaf = tls.chain.first();
            let cert = leaf.map_or("no certificate".to_string(), |c| {
                format!("certificate {} issued by {}", c.subject, c.issuer)
            });
            checks.push(match &tls.error {
                Some(error) => Check::new(
                    area,
                    "relay.tls",
                    Status::Fail,
                    format!(
                        "{how}: {error}; verified against {}; {cert}",
                        tls.verified_name
                    ),
                )
                .hint(tls_fix(error, host)),
                None => Check::new(
                    area,
                    "relay.tls",
                    Status::Pass,
                    format!(
                        "{} by {how}; {cert}, verified for {}; chain of {}",
                        tls.version.as_deref().unwrap_or("TLS"),
                        tls.verified_name,
                        tls.chain.len()
                    ),
                ),
            });
            if let Some(leaf) = leaf {
                let seconds = leaf.not_after - cx.now;
                expiry = Some(seconds);
                checks.push(expiry_check(seconds, leaf, host));
            }
        }
        (_, None) => {
            if let Some((Step::StartTls, why)) = stopped {
                checks.push(
                    Check::new(area, "relay.tls", Status::Fail, format!("STARTTLS: {why}")).hint(
                        format!(
                            "enable STARTTLS on {host}, or use smtps:// if it speaks TLS from the first byte"
                        ),
                    ),
                );
            }
        }
    }

    let Some(d) = dialogue else {
        return (checks, expiry);
    };

    // relay.auth
    let offered = if d.auth_mechanisms.is_empty() {
        "none".to_string()
    } else {
        d.auth_mechanisms.join(" ")
    };
    let who = match (cx.label, cx.table) {
        (Some(l), Some(t)) => format!("label {l} of table {t}"),
        (Some(l), None) => format!("label {l}"),
        _ => "no label".to_string(),
    };
    let user = cx
        .member
        .credentials
        .as_ref()
        .map_or(String::new(), |c| c.user.clone());
    match &d.auth {
        None => {}
        Some(AuthResult::NotConfigured) => checks.push(Check::new(
            area,
            "relay.auth",
            Status::Info,
            format!("no credentials configured for this member; AUTH offered: {offered}"),
        )),
        Some(AuthResult::NoTls) => checks.push(
            Check::new(
                area,
                "relay.auth",
                Status::Warn,
                format!("credentials ({who}) not sent: the connection is not encrypted"),
            )
            .hint(format!("use smtp+tls:// or smtps:// for {}", cx.relay)),
        ),
        Some(AuthResult::NotOffered) => checks.push(
            Check::new(
                area,
                "relay.auth",
                Status::Fail,
                format!("the server offers no AUTH PLAIN or LOGIN after TLS (offered: {offered})"),
            )
            .hint(format!(
                "enable AUTH PLAIN or LOGIN on {host}, or drop the label of {} if it needs none",
                cx.relay
            )),
        ),
        Some(AuthResult::Accepted { mechanism, reply }) => checks.push(Check::new(
            area,
            "relay.auth",
            Status::Pass,
            format!(
                "AUTH {mechanism} as {user} ({who}): {}; offered: {offered}",
                reply.verbatim()
            ),
        )),
        Some(AuthResult::Refused { mechanism, reply }) => checks.push(
            Check::new(
                area,
                "relay.auth",
                Status::Fail,
                format!(
                    "AUTH {mechanism} as {user} ({who}) refused: {}",
                    reply.verbatim()
                ),
            )
            .hint(format!(
                "fix the user or password of {who}, or the account on {host}"
            )),
        ),
    }

    // relay.size: known once EHLO was answered on the connection the relay would use.
    if d.auth.is_some() {
        let max = cx.max_message_size;
        checks.push(match d.capabilities.size {
            None => Check::new(
                area,
                "relay.size",
                Status::Info,
                format!("no SIZE announced: the server's limit is unknown (max_message_size is {max})"),
            ),
            Some(0) => Check::new(
                area,
                "relay.size",
                Status::Pass,
                format!("SIZE with no fixed limit (max_message_size is {max})"),
            ),
            Some(n) if n >= max => Check::new(
                area,
                "relay.size",
                Status::Pass,
                format!("SIZE {n} is at least max_message_size {max}"),
            ),
            Some(n) => Check::new(
                area,
                "relay.size",
                Status::Warn,
                format!("SIZE {n} is below max_message_size {max}: messages of {n} to {max} octets are accepted, then refused here"),
            )
            .hint(format!("set max_message_size = {n} or less, or ask the operator of {host} for a higher limit")),
        });
    }

    // relay.sender
    let sender = cx.sender;
    match (&d.mail, stopped) {
        (Some(reply), _) if reply.is_positive() => checks.push(Check::new(
            area,
            "relay.sender",
            Status::Pass,
            format!(
                "MAIL FROM:<{sender}> accepted: {} ({}); then RSET",
                reply.verbatim(),
                cx.sender_origin
            ),
        )),
        (Some(reply), _) => {
            let status = if reply.is_permanent_failure() {
                Status::Fail
            } else {
                Status::Warn
            };
            checks.push(
                Check::new(
                    area,
                    "relay.sender",
                    status,
                    format!(
                        "MAIL FROM:<{sender}> refused: {} ({})",
                        reply.verbatim(),
                        cx.sender_origin
                    ),
                )
                .hint(format!(
                    "let this account send as @{} on {host}, or set mail_from of action {} to an address it may use",
                    sender.domain(),
                    cx.action
                )),
            );
        }
        (None, Some((Step::Mail, why))) => checks.push(
            Check::new(
                area,
                "relay.sender",
                Status::Fail,
                format!("MAIL FROM:<{sender}>: {why}"),
            )
            .hint(format!(
                "find out why {host} drops the session at MAIL FROM"
            )),
        ),
        (None, _) => {}
    }
    (checks, expiry)
}

fn expiry_check(seconds: i64, leaf: &CertSummary, host: &str) -> Check {
    let area = Area::Relay;
    let id = "relay.cert-expiry";
    let date = &leaf.not_after_date;
    if seconds < 0 {
        let days = (-seconds) / 86400;
        let ago = match days {
            0 => "today".to_string(),
            n => format!("{} ago", count_days(n)),
        };
        return Check::new(
            area,
            id,
            Status::Fail,
            format!("the certificate expired {ago} (not after {date})"),
        )
        .hint(format!("renew the certificate of {host} now"));
    }
    let days = seconds / 86400;
    if days < CERT_FAIL_DAYS {
        Check::new(
            area,
            id,
            Status::Fail,
            format!(
                "the certificate expires {} (not after {date})",
                in_days(days)
            ),
        )
        .hint(format!(
            "renew the certificate of {host} {}",
            match days {
                0 => "today".to_string(),
                n => format!("within {}", count_days(n)),
            }
        ))
    } else if days < CERT_WARN_DAYS {
        Check::new(
            area,
            id,
            Status::Warn,
            format!(
                "the certificate expires {} (not after {date})",
                in_days(days)
            ),
        )
        .hint(format!(
            "renew the certificate of {host}, or check that its automatic renewal works"
        ))
    } else {
        Check::new(
            area,
            id,
            Status::Pass,
            format!(
                "the certificate expires {} (not after {date})",
                in_days(days)
            ),
        )
    }
}

/// "in 3 days", "in 1 day", "today": the expiry as the admin would say it.
fn in_days(days: i64) -> String {
    match days {
        0 => "today".to_string(),
        n => format!("in {}", count_days(n)),
    }
}

fn count_days(n: i64) -> String {
    if n == 1 {
        "1 day".to_string()
    } else {
        format!("{n} days")
    }
}

/// The fix for a failed handshake, by what failed.
fn tls_fix(error: &str, host: &str) -> String {
    if error.contains("expired") {
        format!("renew the certificate of {host}")
    } else if error.contains("unknown issuer") {
        "set ca_file of the action to the CA that issued it, or give the server a publicly trusted certificate".into()
    } else if error.contains("name mismatch") {
        format!("use a relay host name the certificate is for, or get a certificate for {host}")
    } else {
        format!("fix TLS on {host}: the relay cannot deliver through it")
    }
}

fn relay_label(member: &Member) -> String {
    if member.host.contains(':') {
        format!("[{}]:{}", member.host, member.port)
    } else {
        format!("{}:{}", member.host, member.port)
    }
}

/// Probes every address of every member of `plans`, all at once, each step bounded by
/// `timeout` (or the action's own shorter timeouts). Host names are resolved with `resolver`,
/// as the relay does; IP literals are used as they are.
pub async fn run(
    plans: &[ActionPlan],
    resolver: &dyn Resolve,
    timeout: Duration,
    now: SystemTime,
) -> ProbeReport {
    let now = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let mut senders = Vec::new();
    // (plan, member index, address or resolution error)
    let mut work: Vec<(usize, usize, Result<SocketAddr, String>)> = Vec::new();
    for (p, plan) in plans.iter().enumerate() {
        senders.push(format!(
            "{}: MAIL FROM:<{}> ({})",
            plan.action, plan.sender, plan.sender_origin
        ));
        for (m, member) in plan.settings.members.iter().enumerate() {
            if let Ok(ip) = member.host.parse::<IpAddr>() {
                work.push((p, m, Ok(SocketAddr::new(ip, member.port))));
                continue;
            }
            match tokio::time::timeout(timeout, resolver.lookup(&member.host)).await {
                Ok(Ok(ips)) if !ips.is_empty() => {
                    for ip in ips {
                        work.push((p, m, Ok(SocketAddr::new(ip, member.port))));
                    }
                }
                Ok(Ok(_)) => work.push((p, m, Err("the host has no address".into()))),
                Ok(Err(e)) => work.push((p, m, Err(format!("the host does not resolve: {e}")))),
                Err(_) => work.push((p, m, Err("resolving the host timed out".into()))),
            }
        }
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (p, m, addr)) in work.iter().enumerate() {
        let Ok(addr) = addr else { continue };
        let plan = &plans[*p];
        let target = drive::Target {
            member: plan.settings.members[*m].clone(),
            addr: *addr,
            helo_name: plan.settings.helo_name.clone(),
            sender: plan.sender.clone(),
            extra_roots: plan.settings.extra_roots.clone(),
            timeout: timeout
                .min(plan.settings.connect_timeout)
                .min(plan.settings.command_timeout),
        };
        tasks.spawn(async move { (i, drive::probe(&target).await) });
    }
    let mut seen: BTreeMap<usize, Observed> = BTreeMap::new();
    while let Some(done) = tasks.join_next().await {
        if let Ok((i, observed)) = done {
            seen.insert(i, observed);
        }
    }
    let mut members = Vec::new();
    for (i, (p, m, addr)) in work.iter().enumerate() {
        let plan = &plans[*p];
        let member = &plan.settings.members[*m];
        let relay = relay_label(member);
        let (checks, expiry, address) = match addr {
            Err(why) => (
                vec![Check::new(
                    Area::Relay,
                    "relay.connect",
                    Status::Fail,
                    format!("{}: {why}", member.host),
                )
                .hint(format!(
                    "fix the relay host name {} or publish its address",
                    member.host
                ))],
                None,
                None,
            ),
            Ok(addr) => {
                let observed = seen.remove(&i).unwrap_or_else(|| Observed {
                    connect: Err("the probe did not finish".into()),
                    ..Observed::default()
                });
                let cx = Context {
                    member,
                    relay: &relay,
                    address: *addr,
                    label: plan.labels.get(*m).and_then(|l| l.as_deref()),
                    table: plan.table.as_deref(),
                    action: &plan.action,
                    sender: &plan.sender,
                    sender_origin: &plan.sender_origin,
                    max_message_size: plan.max_message_size,
                    now,
                };
                let (checks, expiry) = judge(&observed, &cx);
                (checks, expiry, Some(addr.to_string()))
            }
        };
        members.push(MemberReport {
            action: plan.action.clone(),
            relay,
            address,
            status: worst(checks.iter().map(|c| c.status)),
            cert_expiry_seconds: expiry,
            checks,
        });
    }
    ProbeReport::new(senders, members)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::protocol::Capabilities;
    use crate::smtp::Reply;
    use crate::tables::secrets::Credentials;

    const NOW: i64 = 1_800_000_000;
    const DAY: i64 = 86400;

    fn member() -> Member {
        Member {
            host: "smtp.example.net".into(),
            port: 587,
            security: Security::StartTls,
            credentials: Some(Credentials {
                user: "relay-user".into(),
                password: "s3cret".into(),
            }),
        }
    }

    fn judged(seen: &Observed) -> (Vec<Check>, Option<i64>) {
        let member = member();
        let sender = Address::parse("postmaster@ublog.test").unwrap();
        let cx = Context {
            member: &member,
            relay: "smtp.example.net:587",
            address: "192.0.2.1:587".parse().unwrap(),
            label: Some("pool"),
            table: Some("secrets"),
            action: "outbound",
            sender: &sender,
            sender_origin: "postmaster@mx.test rewritten by mail_from = \"@ublog.test\"",
            max_message_size: 10_000_000,
            now: NOW,
        };
        judge(seen, &cx)
    }

    fn status(checks: &[Check], id: &str) -> Option<Status> {
        checks.iter().find(|c| c.id == id).map(|c| c.status)
    }

    fn leaf(expires_in: i64) -> CertSummary {
        CertSummary {
            subject: "CN=smtp.example.net".into(),
            issuer: "CN=Test CA".into(),
            names: vec!["smtp.example.net".into()],
            not_after: NOW + expires_in,
            not_after_date: "2027-01-15".into(),
        }
    }

    fn healthy() -> Observed {
        Observed {
            connect: Ok(Duration::from_millis(3)),
            tls: Some(TlsSeen {
                version: Some("TLS 1.3".into()),
                verified_name: "smtp.example.net".into(),
                chain: vec![leaf(90 * DAY)],
                error: None,
            }),
            dialogue: Some(Dialogue {
                banner: Some(Reply::new(220, None, "smtp.example.net ESMTP")),
                ehlo: Some(Reply::new(250, None, "smtp.example.net")),
                capabilities: Capabilities {
                    size: Some(50_000_000),
                    ..Capabilities::default()
                },
                auth_mechanisms: vec!["PLAIN".into(), "LOGIN".into()],
                tls: true,
                auth: Some(AuthResult::Accepted {
                    mechanism: "PLAIN",
                    reply: Reply::new(235, None, "ok"),
                }),
                mail: Some(Reply::status(250, 1, 0, "sender ok")),
                stopped: None,
            }),
        }
    }

    #[test]
    fn a_healthy_member_passes_all_six_checks() {
        let (checks, expiry) = judged(&healthy());
        let ids: Vec<&str> = checks.iter().map(|c| c.id).collect();
        assert_eq!(ids, IDS);
        assert!(
            checks.iter().all(|c| c.status == Status::Pass),
            "{checks:#?}"
        );
        assert_eq!(expiry, Some(90 * DAY));
        let tls = &checks[1].message;
        assert!(tls.contains("TLS 1.3") && tls.contains("verified for smtp.example.net"));
        assert!(checks[5]
            .message
            .contains("MAIL FROM:<postmaster@ublog.test> accepted"));
    }

    #[test]
    fn certificate_expiry_warns_under_21_days_and_fails_under_7() {
        for (days, expected) in [
            (30, Status::Pass),
            (21, Status::Pass),
            (20, Status::Warn),
            (7, Status::Warn),
            (6, Status::Fail),
            (-1, Status::Fail),
        ] {
            let mut seen = healthy();
            seen.tls.as_mut().unwrap().chain = vec![leaf(days * DAY + 60)];
            let (checks, expiry) = judged(&seen);
            assert_eq!(
                status(&checks, "relay.cert-expiry"),
                Some(expected),
                "{days} days"
            );
            assert_eq!(expiry, Some(days * DAY + 60));
        }
    }

    #[test]
    fn a_certificate_that_does_not_verify_fails_tls_and_stops_before_auth() {
        let mut seen = healthy();
        let tls = seen.tls.as_mut().unwrap();
        tls.error = Some("TLS certificate verification failed: certificate expired".into());
        tls.version = None;
        tls.chain = vec![leaf(-2 * DAY)];
        seen.dialogue = Some(Dialogue {
            banner: Some(Reply::new(220, None, "x")),
            ehlo: Some(Reply::new(250, None, "x")),
            auth: None,
            mail: None,
            stopped: Some((Step::StartTls, tls.error.clone().unwrap())),
            ..Dialogue::default()
        });
        let (checks, _) = judged(&seen);
        assert_eq!(status(&checks, "relay.tls"), Some(Status::Fail));
        let tls_check = checks.iter().find(|c| c.id == "relay.tls").unwrap();
        assert!(tls_check
            .message
            .contains("verified against smtp.example.net"));
        assert_eq!(tls_check.hint, "renew the certificate of smtp.example.net");
        let expiry = checks.iter().find(|c| c.id == "relay.cert-expiry").unwrap();
        assert_eq!(expiry.status, Status::Fail);
        assert!(
            expiry.message.contains("expired 2 days ago"),
            "{}",
            expiry.message
        );
        assert_eq!(status(&checks, "relay.auth"), None, "not reached");
        assert_eq!(status(&checks, "relay.sender"), None, "not reached");
    }

    #[test]
    fn refused_credentials_name_the_label_and_the_reply() {
        let mut seen = healthy();
        let d = seen.dialogue.as_mut().unwrap();
        d.auth = Some(AuthResult::Refused {
            mechanism: "PLAIN",
            reply: Reply::status(535, 7, 8, "authentication credentials invalid"),
        });
        d.mail = None;
        d.stopped = Some((
            Step::Auth,
            "535 5.7.8 authentication credentials invalid".into(),
        ));
        let (checks, _) = judged(&seen);
        let auth = checks.iter().find(|c| c.id == "relay.auth").unwrap();
        assert_eq!(auth.status, Status::Fail);
        assert_eq!(
            auth.message,
            "AUTH PLAIN as relay-user (label pool of table secrets) refused: 535 5.7.8 authentication credentials invalid"
        );
        assert!(auth.hint.contains("label pool of table secrets"));
        assert_eq!(status(&checks, "relay.sender"), None);
        assert_eq!(status(&checks, "relay.size"), Some(Status::Pass));
    }

    #[test]
    fn a_refused_sender_fails_and_a_deferred_one_warns() {
        for (code, expected) in [(550, Status::Fail), (451, Status::Warn)] {
            let mut seen = healthy();
            seen.dialogue.as_mut().unwrap().mail =
                Some(Reply::new(code, None, "sender not allowed"));
            let (checks, _) = judged(&seen);
            let sender = checks.iter().find(|c| c.id == "relay.sender").unwrap();
            assert_eq!(sender.status, expected);
            assert!(sender
                .message
                .contains(&format!("refused: {code} sender not allowed")));
            assert!(sender.message.contains("rewritten by mail_from"));
            assert!(sender.hint.contains("@ublog.test"));
        }
    }

    #[test]
    fn a_down_member_fails_connect_and_nothing_else_is_judged() {
        let seen = Observed {
            connect: Err("connect failed: Connection refused (os error 111)".into()),
            ..Observed::default()
        };
        let (checks, expiry) = judged(&seen);
        assert_eq!(checks.len(), 1);
        assert_eq!(checks[0].id, "relay.connect");
        assert_eq!(checks[0].status, Status::Fail);
        assert!(checks[0].message.contains("Connection refused"));
        assert_eq!(expiry, None);
    }

    #[test]
    fn a_size_below_max_message_size_warns() {
        let mut seen = healthy();
        seen.dialogue.as_mut().unwrap().capabilities.size = Some(5_000_000);
        let (checks, _) = judged(&seen);
        let size = checks.iter().find(|c| c.id == "relay.size").unwrap();
        assert_eq!(size.status, Status::Warn);
        assert!(size.hint.contains("max_message_size = 5000000"));
        seen.dialogue.as_mut().unwrap().capabilities.size = None;
        assert_eq!(status(&judged(&seen).0, "relay.size"), Some(Status::Info));
    }

    #[test]
    fn the_report_names_the_members_that_differ() {
        let member = |relay: &str, tls: Status| MemberReport {
            action: "outbound".into(),
            relay: relay.into(),
            address: Some(relay.into()),
            status: tls,
            cert_expiry_seconds: None,
            checks: vec![
                Check::new(Area::Relay, "relay.connect", Status::Pass, ""),
                Check::new(Area::Relay, "relay.tls", tls, ""),
            ],
        };
        let report = ProbeReport::new(
            vec![],
            vec![
                member("a:25", Status::Pass),
                member("b:25", Status::Fail),
                member("c:25", Status::Pass),
                member("d:25", Status::Pass),
            ],
        );
        assert_eq!(report.status, Status::Fail);
        assert_eq!(report.exit_code(), 1);
        assert!(report
            .differences
            .contains(&"relay.tls: fail at b:25; pass at the other 3".to_string()));

        assert!(!report
            .differences
            .iter()
            .any(|d| d.starts_with("relay.connect")));
        assert!(report.render_text().contains("members differ"));
    }

    #[test]
    fn a_certificate_is_summarized_with_its_names_and_end() {
        let ca = mailer_testkit::certs::TestCa::new();
        let leaf = ca.issue_expiring_in(
            &["smtp.example.net", "192.0.2.1"],
            Duration::from_secs(30 * 86400),
        );
        let summary = CertSummary::of(&leaf.chain[0]);
        assert_eq!(summary.subject, "CN=smtp.example.net");
        assert!(summary.issuer.starts_with("CN=mailer test CA"));
        assert_eq!(summary.names, ["smtp.example.net", "192.0.2.1"]);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!((summary.not_after - now - 30 * 86400).abs() < 60);
        assert_eq!(summary.not_after_date.len(), 10);
    }

    #[test]
    fn garbage_instead_of_a_certificate_is_named_as_such() {
        let summary = CertSummary::of(&[0x30, 0x03, 0x02, 0x01]);
        assert_eq!(summary.subject, "(unparsable certificate)");
    }
}
