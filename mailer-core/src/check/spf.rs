//! SPF (RFC 7208): the record's terms ([`parse`]), a walk through include/redirect that counts
//! DNS-lookup terms and void lookups, and the pool's authorization via mail-auth's `check_host()`.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use mail_auth::spf::verify::SpfParameters;
use mail_auth::SpfResult;

use super::dns::{normalize, Dns, DnsFailure};
use super::{dns_error, Area, Check, Status};

/// RFC 7208 §4.6.4: at most 10 terms causing DNS lookups.
pub const MAX_LOOKUPS: usize = 10;
/// RFC 7208 §4.6.4: at most 2 lookups returning no answer.
pub const MAX_VOID_LOOKUPS: usize = 2;
/// RFC 7208 §3.4: records above 450 octets risk exceeding a 512-octet UDP answer.
pub const MAX_RECORD_LEN: usize = 450;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Qualifier {
    Pass,
    Fail,
    SoftFail,
    Neutral,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mechanism {
    All,
    Include(String),
    A {
        domain: Option<String>,
        cidr4: Option<u8>,
        cidr6: Option<u8>,
    },
    Mx {
        domain: Option<String>,
        cidr4: Option<u8>,
        cidr6: Option<u8>,
    },
    Ptr(Option<String>),
    Ip4 {
        addr: Ipv4Addr,
        prefix: u8,
    },
    Ip6 {
        addr: Ipv6Addr,
        prefix: u8,
    },
    Exists(String),
}

impl Mechanism {
    /// Whether evaluating this mechanism costs a DNS lookup (RFC 7208 §4.6.4).
    pub fn is_lookup(&self) -> bool {
        matches!(
            self,
            Mechanism::Include(_)
                | Mechanism::A { .. }
                | Mechanism::Mx { .. }
                | Mechanism::Ptr(_)
                | Mechanism::Exists(_)
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Term {
    Mechanism(Qualifier, Mechanism),
    Redirect(String),
    Exp(String),
    /// An unknown modifier, ignored by evaluation (RFC 7208 §6).
    Unknown {
        name: String,
        value: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpfRecord {
    pub terms: Vec<Term>,
}

impl SpfRecord {
    pub fn redirect(&self) -> Option<&str> {
        self.terms.iter().find_map(|t| match t {
            Term::Redirect(d) => Some(d.as_str()),
            _ => None,
        })
    }

    /// The qualifier of the `all` mechanism, if any.
    pub fn all(&self) -> Option<Qualifier> {
        self.terms.iter().find_map(|t| match t {
            Term::Mechanism(q, Mechanism::All) => Some(*q),
            _ => None,
        })
    }
}

/// A syntax error: the term at fault and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpfError {
    pub term: String,
    pub reason: String,
}

impl fmt::Display for SpfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "term {:?}: {}", self.term, self.reason)
    }
}

/// Whether a TXT record is an SPF record (RFC 7208 §4.5: `v=spf1` then a space or the end).
pub fn is_spf(txt: &str) -> bool {
    let t = txt.as_bytes();
    t.len() >= 6 && t[..6].eq_ignore_ascii_case(b"v=spf1") && (t.len() == 6 || t[6] == b' ')
}

/// Parses an SPF record (`v=spf1 ...`) into its terms.
pub fn parse(record: &str) -> Result<SpfRecord, SpfError> {
    if !is_spf(record) {
        return Err(SpfError {
            term: record.split(' ').next().unwrap_or("").to_string(),
            reason: "the record must start with \"v=spf1\"".into(),
        });
    }
    let mut terms = Vec::new();
    let (mut redirects, mut exps) = (0, 0);
    for raw in record[6..].split(' ').filter(|t| !t.is_empty()) {
        let err = |reason: &str| SpfError {
            term: raw.to_string(),
            reason: reason.to_string(),
        };
        if let Some((name, value)) = modifier(raw) {
            match name.to_ascii_lowercase().as_str() {
                "redirect" => {
                    redirects += 1;
                    domain_spec(value).map_err(|r| err(&r))?;
                    terms.push(Term::Redirect(value.to_string()));
                }
                "exp" => {
                    exps += 1;
                    domain_spec(value).map_err(|r| err(&r))?;
                    terms.push(Term::Exp(value.to_string()));
                }
                _ => {
                    macro_string(value).map_err(|r| err(&r))?;
                    terms.push(Term::Unknown {
                        name: name.to_string(),
                        value: value.to_string(),
                    });
                }
            }
            if redirects > 1 || exps > 1 {
                return Err(err("the modifier appears more than once"));
            }
            continue;
        }
        let (qualifier, rest) = match raw.as_bytes()[0] {
            b'+' => (Qualifier::Pass, &raw[1..]),
            b'-' => (Qualifier::Fail, &raw[1..]),
            b'~' => (Qualifier::SoftFail, &raw[1..]),
            b'?' => (Qualifier::Neutral, &raw[1..]),
            _ => (Qualifier::Pass, raw),
        };
        let (name, arg) = match rest.find([':', '/']) {
            Some(i) => (&rest[..i], Some(&rest[i..])),
            None => (rest, None),
        };
        let domain_arg = |required: bool| -> Result<Option<String>, SpfError> {
            match arg {
                Some(a) if a.starts_with(':') => {
                    domain_spec(&a[1..]).map_err(|r| err(&r))?;
                    Ok(Some(a[1..].to_string()))
                }
                None if !required => Ok(None),
                _ => Err(err("a domain is required after ':'")),
            }
        };
        let mechanism = match name.to_ascii_lowercase().as_str() {
            "all" if arg.is_none() => Mechanism::All,
            "all" => return Err(err("\"all\" takes no argument")),
            "include" => Mechanism::Include(domain_arg(true)?.unwrap_or_default()),
            "exists" => Mechanism::Exists(domain_arg(true)?.unwrap_or_default()),
            "ptr" => Mechanism::Ptr(domain_arg(false)?),
            "a" | "mx" => {
                let (domain, cidr4, cidr6) = domain_and_cidr(arg).map_err(|r| err(&r))?;
                if name.eq_ignore_ascii_case("a") {
                    Mechanism::A {
                        domain,
                        cidr4,
                        cidr6,
                    }
                } else {
                    Mechanism::Mx {
                        domain,
                        cidr4,
                        cidr6,
                    }
                }
            }
            "ip4" => {
                let value = arg
                    .and_then(|a| a.strip_prefix(':'))
                    .ok_or_else(|| err("ip4 needs \":address\""))?;
                let (addr, prefix) = split_prefix(value, 32).map_err(|r| err(&r))?;
                let addr = addr
                    .parse::<Ipv4Addr>()
                    .map_err(|_| err("not an IPv4 address"))?;
                Mechanism::Ip4 { addr, prefix }
            }
            "ip6" => {
                let value = arg
                    .and_then(|a| a.strip_prefix(':'))
                    .ok_or_else(|| err("ip6 needs \":address\""))?;
                let (addr, prefix) = split_prefix(value, 128).map_err(|r| err(&r))?;
                let addr = addr
                    .parse::<Ipv6Addr>()
                    .map_err(|_| err("not an IPv6 address"))?;
                Mechanism::Ip6 { addr, prefix }
            }
            _ => return Err(err("unknown mechanism")),
        };
        terms.push(Term::Mechanism(qualifier, mechanism));
    }
    Ok(SpfRecord { terms })
}

/// `name=value` when the term is a modifier (name = ALPHA *( ALPHA / DIGIT / "-" / "_" / "." )).
fn modifier(term: &str) -> Option<(&str, &str)> {
    let (name, value) = term.split_once('=')?;
    let mut chars = name.chars();
    let first = chars.next()?;
    (first.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    .then_some((name, value))
}

fn split_prefix(value: &str, max: u8) -> Result<(&str, u8), String> {
    match value.split_once('/') {
        None => Ok((value, max)),
        Some((addr, len)) => Ok((addr, cidr(len, max)?)),
    }
}

fn cidr(len: &str, max: u8) -> Result<u8, String> {
    // RFC 7208 §5.6: no leading zeros, at most `max`.
    if len.is_empty() || len.len() > 3 || (len.len() > 1 && len.starts_with('0')) {
        return Err(format!("bad prefix length {len:?}"));
    }
    match len.parse::<u8>() {
        Ok(n) if n <= max => Ok(n),
        _ => Err(format!("prefix length {len} is above {max}")),
    }
}

type DomainCidr = (Option<String>, Option<u8>, Option<u8>);

fn domain_and_cidr(arg: Option<&str>) -> Result<DomainCidr, String> {
    let Some(arg) = arg else {
        return Ok((None, None, None));
    };
    let (domain, cidrs) = match arg.strip_prefix(':') {
        Some(rest) => match rest.find('/') {
            Some(i) => (Some(&rest[..i]), &rest[i..]),
            None => (Some(rest), ""),
        },
        None => (None, arg),
    };
    if let Some(d) = domain {
        domain_spec(d)?;
    }
    let (mut c4, mut c6) = (None, None);
    if !cidrs.is_empty() {
        let rest = cidrs.strip_prefix('/').ok_or("expected '/'")?;
        if let Some(v6) = rest.strip_prefix('/') {
            c6 = Some(cidr(v6, 128)?);
        } else if let Some((v4, v6)) = rest.split_once("//") {
            c4 = Some(cidr(v4, 32)?);
            c6 = Some(cidr(v6, 128)?);
        } else {
            c4 = Some(cidr(rest, 32)?);
        }
    }
    Ok((domain.map(str::to_string), c4, c6))
}

/// RFC 7208 §7.1 macro-string: visible characters and well-formed `%{...}` / `%%` / `%_` / `%-`.
fn macro_string(s: &str) -> Result<(), String> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => match b.get(i + 1) {
                Some(b'%' | b'_' | b'-') => i += 2,
                Some(b'{') => {
                    let end = s[i..]
                        .find('}')
                        .ok_or_else(|| "unterminated macro \"%{\"".to_string())?;
                    let body = &s[i + 2..i + end];
                    let mut chars = body.chars();
                    match chars.next() {
                        Some(c) if "slodiphcrtvSLODIPHCRTV".contains(c) => {}
                        _ => return Err(format!("bad macro letter in %{{{body}}}")),
                    }
                    let rest: String = chars.collect();
                    let digits_end = rest
                        .find(|c: char| !c.is_ascii_digit())
                        .unwrap_or(rest.len());
                    let after = rest[digits_end..].trim_start_matches(['r', 'R']);
                    if !after.chars().all(|c| ".-+,/_=".contains(c)) {
                        return Err(format!("bad macro transformer in %{{{body}}}"));
                    }
                    i += end + 1;
                }
                _ => return Err("'%' must start %{..}, %%, %_ or %-".into()),
            },
            0x21..=0x7e => i += 1,
            _ => return Err("non-visible character".into()),
        }
    }
    Ok(())
}

/// RFC 7208 §7.1 domain-spec: a macro-string ending in a top label or a macro.
fn domain_spec(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("empty domain".into());
    }
    macro_string(s)?;
    if s.ends_with('}') {
        return Ok(());
    }
    let name = s.trim_end_matches('.');
    if name.contains('%') {
        return Ok(());
    }
    if is_domain_name(name) {
        Ok(())
    } else {
        Err(format!("{s:?} is not a domain name"))
    }
}

/// A host name with at least two labels, each 1–63 of letters, digits, '-' and '_', and a
/// top label that is not all digits.
pub fn is_domain_name(name: &str) -> bool {
    let labels: Vec<&str> = name.split('.').collect();
    name.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
        && labels
            .last()
            .is_some_and(|t| !t.chars().all(|c| c.is_ascii_digit()))
}

/// What the walk through a record and its includes found.
#[derive(Debug, Default)]
struct Walk {
    lookups: usize,
    /// The include/redirect chain at the term that went over the limit.
    over_limit_path: Option<Vec<String>>,
    void: Vec<String>,
    include_without_spf: Vec<String>,
    /// Syntax or multiple-record errors in included records.
    include_errors: Vec<String>,
    ptr_in: Vec<String>,
    dns_failures: Vec<DnsFailure>,
}

const MAX_WALKED_RECORDS: usize = 30;

/// Counts lookup terms of `record` (found at `domain`) through includes and redirect.
async fn walk(dns: &Dns, domain: &str, record: &SpfRecord) -> Walk {
    let mut w = Walk::default();
    let mut visited = HashSet::from([domain.to_string()]);
    // Depth-first, as evaluation proceeds; each entry is (record, path to it).
    let mut stack = vec![(record.clone(), vec![domain.to_string()])];
    while let Some((rec, path)) = stack.pop() {
        let mut children = Vec::new();
        let mut targets: Vec<(String, String)> = Vec::new();
        for term in &rec.terms {
            let (lookup, label) = match term {
                Term::Mechanism(_, m) if m.is_lookup() => (true, mechanism_label(m)),
                Term::Redirect(d) if rec.all().is_none() => (true, format!("redirect={d}")),
                _ => (false, String::new()),
            };
            if !lookup {
                continue;
            }
            w.lookups += 1;
            if w.lookups > MAX_LOOKUPS && w.over_limit_path.is_none() {
                let mut p = path.clone();
                p.push(label.clone());
                w.over_limit_path = Some(p);
            }
            match term {
                Term::Mechanism(_, Mechanism::Include(d)) | Term::Redirect(d) => {
                    targets.push((d.clone(), label))
                }
                Term::Mechanism(_, Mechanism::A { domain: d, .. }) => {
                    let host = d.clone().unwrap_or_else(|| path_domain(&path));
                    if !host.contains('%') {
                        match dns.ips(&host).await {
                            Ok(Some(_)) => {}
                            Ok(None) => w.void.push(format!("a:{host}")),
                            Err(e) => w.dns_failures.push(e),
                        }
                    }
                }
                Term::Mechanism(_, Mechanism::Mx { domain: d, .. }) => {
                    let host = d.clone().unwrap_or_else(|| path_domain(&path));
                    if !host.contains('%') {
                        match dns.mx(&host).await {
                            Ok(Some(_)) => {}
                            Ok(None) => w.void.push(format!("mx:{host}")),
                            Err(e) => w.dns_failures.push(e),
                        }
                    }
                }
                Term::Mechanism(_, Mechanism::Ptr(_)) => w.ptr_in.push(path_domain(&path)),
                _ => {}
            }
        }
        for (target, label) in targets {
            if target.contains('%') {
                continue;
            }
            let target = normalize(&target);
            if !visited.insert(target.clone()) || visited.len() > MAX_WALKED_RECORDS {
                continue;
            }
            let mut child_path = path.clone();
            child_path.push(label);
            match dns.txt(&target).await {
                Err(e) => w.dns_failures.push(e),
                Ok(txts) => {
                    let spfs: Vec<String> = txts
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|t| is_spf(t))
                        .collect();
                    match spfs.as_slice() {
                        [] => {
                            w.void.push(target.clone());
                            w.include_without_spf.push(target.clone());
                        }
                        [one] => match parse(one) {
                            Ok(r) => children.push((r, child_path.clone())),
                            Err(e) => w.include_errors.push(format!("{target}: {e}")),
                        },
                        _ => w
                            .include_errors
                            .push(format!("{target}: {} SPF records", spfs.len())),
                    }
                }
            }
        }
        // Reverse so the first include is walked first.
        stack.extend(children.into_iter().rev());
    }
    w
}

/// The domain whose record is being walked: the last path element's target.
fn path_domain(path: &[String]) -> String {
    let last = path.last().map(String::as_str).unwrap_or("");
    last.rsplit([':', '=']).next().unwrap_or(last).to_string()
}

fn mechanism_label(m: &Mechanism) -> String {
    match m {
        Mechanism::Include(d) => format!("include:{d}"),
        Mechanism::A { domain, .. } => domain.as_ref().map_or("a".into(), |d| format!("a:{d}")),
        Mechanism::Mx { domain, .. } => domain.as_ref().map_or("mx".into(), |d| format!("mx:{d}")),
        Mechanism::Ptr(d) => d.as_ref().map_or("ptr".into(), |d| format!("ptr:{d}")),
        Mechanism::Exists(d) => format!("exists:{d}"),
        other => format!("{other:?}"),
    }
}

/// `check_host()` results for the pool.
#[derive(Debug, Default, Clone)]
pub struct PoolResult {
    /// Addresses that do not get `pass`, with their result.
    pub unauthorized: Vec<(IpAddr, String)>,
    /// Evaluations that hit a DNS error (temperror) or the time bound.
    pub errors: usize,
}

/// Evaluates `check_host()` (mail-auth) for each pool address with MAIL FROM `sender`.
pub(crate) async fn evaluate_pool(
    dns: &Dns,
    domain: &str,
    sender: &str,
    pool: &[IpAddr],
    timeout: Duration,
) -> PoolResult {
    let mut r = PoolResult::default();
    for &ip in pool {
        let params = SpfParameters::verify_mail_from(ip, domain, domain, sender);
        // One evaluation makes up to 10 lookups plus their address lookups, each bounded.
        let bound = timeout * 4;
        match tokio::time::timeout(bound, dns.authenticator().verify_spf(params)).await {
            Err(_) => {
                r.errors += 1;
                r.unauthorized.push((ip, "timeout".into()));
            }
            Ok(out) => match out.result() {
                SpfResult::Pass => {}
                SpfResult::TempError => {
                    r.errors += 1;
                    r.unauthorized.push((ip, "temperror".into()));
                }
                other => r.unauthorized.push((ip, result_name(other).into())),
            },
        }
    }
    r
}

fn result_name(r: SpfResult) -> &'static str {
    match r {
        SpfResult::Pass => "pass",
        SpfResult::Fail => "fail",
        SpfResult::SoftFail => "softfail",
        SpfResult::Neutral => "neutral",
        SpfResult::TempError => "temperror",
        SpfResult::PermError => "permerror",
        SpfResult::None => "none",
    }
}

pub(crate) struct Outcome {
    pub checks: Vec<Check>,
    pub pool: PoolResult,
}

/// The `spf.*` checks of `domain`, whose TXT records were already fetched (`apex_txt`).
pub(crate) async fn check(
    dns: &Dns,
    domain: &str,
    apex_txt: Option<&[String]>,
    pool: &[IpAddr],
    timeout: Duration,
) -> Outcome {
    let area = Area::Spf;
    let mut checks = Vec::new();
    let records: Vec<&String> = apex_txt
        .unwrap_or_default()
        .iter()
        .filter(|t| is_spf(t))
        .collect();
    let record = match records.as_slice() {
        [] => {
            checks.push(
                Check::new(
                    area,
                    "spf.record",
                    Status::Fail,
                    format!("{domain} has no SPF (v=spf1) record"),
                )
                .hint(format!(
                    "publish a TXT record \"v=spf1 {} -all\" at {domain}",
                    pool_terms(pool)
                )),
            );
            None
        }
        [one] => {
            checks.push(Check::new(
                area,
                "spf.record",
                Status::Pass,
                format!("\"{one}\""),
            ));
            Some(*one)
        }
        many => {
            checks.push(
                Check::new(
                    area,
                    "spf.record",
                    Status::Fail,
                    format!(
                        "{domain} has {} SPF records; receivers treat that as permerror",
                        many.len()
                    ),
                )
                .hint(format!("merge the SPF records of {domain} into one")),
            );
            None
        }
    };
    if let Some(text) = record {
        match parse(text) {
            Err(e) => checks.push(
                Check::new(
                    area,
                    "spf.syntax",
                    Status::Fail,
                    format!("syntax error: {e}"),
                )
                .hint(format!(
                    "fix the term {:?} in the SPF record of {domain}",
                    e.term
                )),
            ),
            Ok(rec) => {
                checks.push(Check::new(
                    area,
                    "spf.syntax",
                    Status::Pass,
                    "the record parses",
                ));
                checks.extend(record_checks(dns, domain, text, &rec).await);
            }
        }
    }
    let pool_result = if pool.is_empty() {
        checks.push(Check::new(
            area,
            "spf.pool",
            Status::Info,
            "no relay addresses given; pool authorization not checked",
        ));
        PoolResult::default()
    } else {
        let sender = format!("postmaster@{domain}");
        let r = evaluate_pool(dns, domain, &sender, pool, timeout).await;
        if r.errors > 0 {
            checks.push(
                Check::new(
                    area,
                    "spf.dns-error",
                    Status::Fail,
                    format!(
                        "SPF evaluation for {domain} hit DNS errors (temperror) for {} address(es)",
                        r.errors
                    ),
                )
                .hint("check the name servers of the domain and of its includes"),
            );
        }
        if r.unauthorized.is_empty() {
            checks.push(Check::new(
                area,
                "spf.pool",
                Status::Pass,
                format!(
                    "every pool address passes SPF for postmaster@{domain}: {}",
                    list_ips(pool)
                ),
            ));
        } else {
            let named: Vec<String> = r
                .unauthorized
                .iter()
                .map(|(ip, res)| format!("{ip} ({res})"))
                .collect();
            let missing: Vec<IpAddr> = r.unauthorized.iter().map(|(ip, _)| *ip).collect();
            let which = if missing.len() == pool.len() {
                "no pool address passes"
            } else {
                "pool addresses not authorized"
            };
            checks.push(
                Check::new(
                    area,
                    "spf.pool",
                    Status::Fail,
                    format!("{which} SPF for postmaster@{domain}: {}", named.join(", ")),
                )
                .hint(format!(
                    "add {} to the SPF record of {domain}",
                    pool_terms(&missing)
                )),
            );
        }
        r
    };
    Outcome {
        checks,
        pool: pool_result,
    }
}

async fn record_checks(dns: &Dns, domain: &str, text: &str, rec: &SpfRecord) -> Vec<Check> {
    let area = Area::Spf;
    let mut checks = Vec::new();
    checks.push(match rec.all() {
        Some(Qualifier::Pass) => Check::new(
            area,
            "spf.all",
            Status::Fail,
            "\"+all\" lets anyone pass SPF for the domain",
        )
        .hint(format!(
            "replace +all with -all (or ~all) in the SPF record of {domain}"
        )),
        Some(Qualifier::Neutral) => Check::new(
            area,
            "spf.all",
            Status::Warn,
            "\"?all\" gives unlisted senders a neutral result",
        )
        .hint(format!("end the SPF record of {domain} with -all or ~all")),
        None if rec.redirect().is_none() => Check::new(
            area,
            "spf.all",
            Status::Warn,
            "no \"all\" mechanism: unlisted senders get neutral",
        )
        .hint(format!("end the SPF record of {domain} with -all or ~all")),
        None => Check::new(
            area,
            "spf.all",
            Status::Info,
            "no \"all\": the redirect target decides",
        ),
        Some(Qualifier::SoftFail) => Check::new(
            area,
            "spf.all",
            Status::Pass,
            "\"~all\": unlisted senders softfail",
        ),
        Some(Qualifier::Fail) => Check::new(
            area,
            "spf.all",
            Status::Pass,
            "\"-all\": unlisted senders fail",
        ),
    });
    checks.push(if text.len() > MAX_RECORD_LEN {
        Check::new(
            area,
            "spf.length",
            Status::Warn,
            format!(
                "the record is {} octets (above {MAX_RECORD_LEN}, RFC 7208 §3.4)",
                text.len()
            ),
        )
        .hint(format!(
            "shorten the SPF record of {domain}, e.g. with ip4/ip6 ranges"
        ))
    } else {
        Check::new(
            area,
            "spf.length",
            Status::Pass,
            format!("{} octets", text.len()),
        )
    });
    let w = walk(dns, domain, rec).await;
    for f in &w.dns_failures {
        checks.push(dns_error(area, "spf.dns-error", f));
    }
    checks.push(match &w.over_limit_path {
        Some(path) => Check::new(
            area,
            "spf.lookups",
            Status::Fail,
            format!(
                "{} DNS-lookup terms (limit {MAX_LOOKUPS}); the 11th is reached via {}",
                w.lookups,
                path.join(" → ")
            ),
        )
        .hint(format!(
            "flatten includes into ip4/ip6 terms in the SPF record of {domain}"
        )),
        None => Check::new(
            area,
            "spf.lookups",
            Status::Pass,
            format!("{} of {MAX_LOOKUPS} DNS-lookup terms", w.lookups),
        ),
    });
    checks.push(if w.void.len() > MAX_VOID_LOOKUPS {
        Check::new(
            area,
            "spf.void-lookups",
            Status::Fail,
            format!(
                "{} void lookups (limit {MAX_VOID_LOOKUPS}): {}",
                w.void.len(),
                w.void.join(", ")
            ),
        )
        .hint(format!(
            "remove the terms naming {} from the SPF record of {domain}",
            w.void.join(", ")
        ))
    } else {
        Check::new(
            area,
            "spf.void-lookups",
            Status::Pass,
            format!("{} void lookups", w.void.len()),
        )
    });
    let mut include_problems: Vec<String> = w
        .include_without_spf
        .iter()
        .map(|d| format!("{d} has no SPF record"))
        .collect();
    include_problems.extend(w.include_errors.iter().cloned());
    checks.push(if include_problems.is_empty() {
        Check::new(
            area,
            "spf.includes",
            Status::Pass,
            "every include target has one valid SPF record",
        )
    } else {
        Check::new(
            area,
            "spf.includes",
            Status::Fail,
            format!(
                "include/redirect targets are broken (permerror): {}",
                include_problems.join("; ")
            ),
        )
        .hint(format!(
            "remove or fix the include of {} in the SPF record of {domain}",
            w.include_without_spf
                .first()
                .cloned()
                .unwrap_or_else(|| "the broken target".into())
        ))
    });
    checks.push(if w.ptr_in.is_empty() {
        Check::new(area, "spf.ptr", Status::Pass, "no ptr mechanism")
    } else {
        Check::new(
            area,
            "spf.ptr",
            Status::Warn,
            format!(
                "ptr is used (in the record of {}); it is slow and many receivers skip it",
                w.ptr_in.join(", ")
            ),
        )
        .hint(format!(
            "replace ptr with ip4/ip6 or a terms in the SPF record of {}",
            w.ptr_in[0]
        ))
    });
    checks
}

fn list_ips(pool: &[IpAddr]) -> String {
    pool.iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn pool_terms(pool: &[IpAddr]) -> String {
    pool.iter()
        .map(|ip| match ip {
            IpAddr::V4(v4) => format!("ip4:{v4}"),
            IpAddr::V6(v6) => format!("ip6:{v6}"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_record() {
        let r = parse("v=spf1 ip4:194.1.163.0/24 ip6:2001:db8::/32 a mx:mail.example.org/24//64 include:_spf.example.net ~all").unwrap();
        assert_eq!(r.terms.len(), 6);
        assert_eq!(
            r.terms[0],
            Term::Mechanism(
                Qualifier::Pass,
                Mechanism::Ip4 {
                    addr: Ipv4Addr::new(194, 1, 163, 0),
                    prefix: 24
                }
            )
        );
        assert_eq!(
            r.terms[3],
            Term::Mechanism(
                Qualifier::Pass,
                Mechanism::Mx {
                    domain: Some("mail.example.org".into()),
                    cidr4: Some(24),
                    cidr6: Some(64)
                }
            )
        );
        assert_eq!(r.all(), Some(Qualifier::SoftFail));
    }

    #[test]
    fn names_the_bad_term() {
        let e = parse("v=spf1 ip4:300.1.1.1 -all").unwrap_err();
        assert_eq!(e.term, "ip4:300.1.1.1");
        let e = parse("v=spf1 include: -all").unwrap_err();
        assert_eq!(e.term, "include:");
        let e = parse("v=spf1 foo -all").unwrap_err();
        assert_eq!(e.term, "foo");
        let e = parse("v=spf1 ip4:1.2.3.0/33").unwrap_err();
        assert_eq!(e.term, "ip4:1.2.3.0/33");
        let e = parse("v=spf1 redirect=a.example redirect=b.example").unwrap_err();
        assert_eq!(e.term, "redirect=b.example");
        let e = parse("v=spf1 exists:%{z}.example").unwrap_err();
        assert_eq!(e.term, "exists:%{z}.example");
    }

    #[test]
    fn accepts_macros_and_unknown_modifiers() {
        let r = parse("v=spf1 exists:%{ir}.%{l1r+-}._spf.%{d} foo=bar -all").unwrap();
        assert_eq!(r.terms.len(), 3);
    }

    #[test]
    fn version_must_be_a_whole_word() {
        assert!(!is_spf("v=spf10 -all"));
        assert!(is_spf("v=spf1"));
        assert!(is_spf("V=SPF1 -all"));
        assert!(parse("v=spf2 -all").is_err());
    }
}
