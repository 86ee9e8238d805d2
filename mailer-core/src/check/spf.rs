//! SPF (RFC 7208): the record's terms ([`parse`]), a walk through include/redirect that counts
//! DNS-lookup terms and void lookups, and the pool's authorization via mail-auth's `check_host()`.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::pin::Pin;
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

/// The text of a term as an admin would write it (`+` left out).
pub fn term_text(term: &Term) -> String {
    match term {
        Term::Mechanism(q, m) => {
            let q = match q {
                Qualifier::Pass => "",
                Qualifier::Fail => "-",
                Qualifier::SoftFail => "~",
                Qualifier::Neutral => "?",
            };
            format!("{q}{}", mechanism_label(m))
        }
        Term::Redirect(d) => format!("redirect={d}"),
        Term::Exp(d) => format!("exp={d}"),
        Term::Unknown { name, value } => format!("{name}={value}"),
    }
}

fn mechanism_label(m: &Mechanism) -> String {
    let cidr = |c4: &Option<u8>, c6: &Option<u8>| {
        let mut s = String::new();
        if let Some(c) = c4 {
            s.push_str(&format!("/{c}"));
        }
        if let Some(c) = c6 {
            s.push_str(&format!("//{c}"));
        }
        s
    };
    let named = |kind: &str, d: &Option<String>| match d {
        Some(d) => format!("{kind}:{d}"),
        None => kind.to_string(),
    };
    match m {
        Mechanism::All => "all".into(),
        Mechanism::Include(d) => format!("include:{d}"),
        Mechanism::A {
            domain,
            cidr4,
            cidr6,
        } => format!("{}{}", named("a", domain), cidr(cidr4, cidr6)),
        Mechanism::Mx {
            domain,
            cidr4,
            cidr6,
        } => format!("{}{}", named("mx", domain), cidr(cidr4, cidr6)),
        Mechanism::Ptr(d) => named("ptr", d),
        Mechanism::Ip4 { addr, prefix: 32 } => format!("ip4:{addr}"),
        Mechanism::Ip4 { addr, prefix } => format!("ip4:{addr}/{prefix}"),
        Mechanism::Ip6 { addr, prefix: 128 } => format!("ip6:{addr}"),
        Mechanism::Ip6 { addr, prefix } => format!("ip6:{addr}/{prefix}"),
        Mechanism::Exists(d) => format!("exists:{d}"),
    }
}

/// The result of `check_host()` (RFC 7208 §2.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail,
    SoftFail,
    Neutral,
    None,
    PermError,
    TempError,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::SoftFail => "softfail",
            Verdict::Neutral => "neutral",
            Verdict::None => "none",
            Verdict::PermError => "permerror",
            Verdict::TempError => "temperror",
        }
    }

    fn of(q: Qualifier) -> Verdict {
        match q {
            Qualifier::Pass => Verdict::Pass,
            Qualifier::Fail => Verdict::Fail,
            Qualifier::SoftFail => Verdict::SoftFail,
            Qualifier::Neutral => Verdict::Neutral,
        }
    }
}

/// Why an evaluation ended in permerror or temperror.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// An include/redirect chain comes back to a record already being evaluated; receivers
    /// recurse until the lookup limit. The path ends with the term that closes the loop.
    Loop(Vec<String>),
    /// The 11th DNS-lookup term (RFC 7208 §4.6.4), with the path to it.
    LookupLimit(Vec<String>),
    /// The third lookup without an answer (RFC 7208 §4.6.4), with every void name so far.
    VoidLimit(Vec<String>),
    /// An `mx` term whose domain has more than 10 MX hosts (RFC 7208 §4.6.4).
    MxLimit {
        domain: String,
        term: String,
        hosts: usize,
    },
    /// An include or redirect target without exactly one valid SPF record.
    Target {
        domain: String,
        term: String,
        why: String,
    },
    /// A query failed: the result is temperror.
    Dns(DnsFailure),
}

/// Where the evaluation of one address ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stop {
    /// A mechanism matched: the record holding it, the term, the include/redirect path to it.
    Matched {
        domain: String,
        term: String,
        path: Vec<String>,
    },
    /// No mechanism matched and no redirect applied: neutral (RFC 7208 §4.7).
    NoMatch {
        domain: String,
    },
    Problem(Problem),
}

/// What a receiver's evaluation did for one address.
#[derive(Clone, Debug)]
pub struct Evaluation {
    pub verdict: Verdict,
    pub stop: Stop,
    /// DNS-lookup terms evaluated (RFC 7208 §4.6.4), the ones past the limit included when
    /// measuring.
    pub lookups: usize,
    pub voids: Vec<String>,
}

/// Everything the measuring walk met on its way, besides the result.
#[derive(Debug, Default)]
struct Findings {
    over_limit: Option<Vec<String>>,
    loops: Vec<Vec<String>>,
    targets: Vec<(String, String, String)>,
    mx_limit: Vec<(String, String, usize)>,
    dns: Vec<DnsFailure>,
    /// Per record: the domain, the terms never reached, and the `all` term that hides them.
    dead: Vec<(String, Vec<String>, String)>,
    ptr_in: Vec<String>,
    records: usize,
}

/// Records (and their walks) beyond this are not followed, bounding a hostile tree.
const MAX_WALKED_RECORDS: usize = 40;
/// Lookup terms beyond this are not evaluated even when measuring.
const MAX_MEASURED_LOOKUPS: usize = 60;

/// A DNS answer: records, none, or a failed query.
type Answer<T> = Result<Option<Vec<T>>, DnsFailure>;

/// DNS answers already fetched during one `mailer check` run.
#[derive(Default)]
pub(crate) struct Cache {
    txt: HashMap<String, Answer<String>>,
    addrs: HashMap<(String, bool), Answer<IpAddr>>,
    mx: HashMap<String, Answer<(u16, String)>>,
    ptr: HashMap<IpAddr, Answer<String>>,
}

impl Cache {
    async fn txt(&mut self, dns: &Dns, name: &str) -> Result<Option<Vec<String>>, DnsFailure> {
        if let Some(r) = self.txt.get(name) {
            return r.clone();
        }
        let r = dns.txt(name).await;
        self.txt.insert(name.to_string(), r.clone());
        r
    }

    async fn addrs(
        &mut self,
        dns: &Dns,
        name: &str,
        v6: bool,
    ) -> Result<Option<Vec<IpAddr>>, DnsFailure> {
        let key = (name.to_string(), v6);
        if let Some(r) = self.addrs.get(&key) {
            return r.clone();
        }
        let r = dns.addrs(name, v6).await;
        self.addrs.insert(key, r.clone());
        r
    }

    async fn mx(
        &mut self,
        dns: &Dns,
        name: &str,
    ) -> Result<Option<Vec<(u16, String)>>, DnsFailure> {
        if let Some(r) = self.mx.get(name) {
            return r.clone();
        }
        let r = dns.mx(name).await;
        self.mx.insert(name.to_string(), r.clone());
        r
    }

    async fn ptr(&mut self, dns: &Dns, ip: IpAddr) -> Result<Option<Vec<String>>, DnsFailure> {
        if let Some(r) = self.ptr.get(&ip) {
            return r.clone();
        }
        let r = dns.ptr(ip).await;
        self.ptr.insert(ip, r.clone());
        r
    }
}

/// The one SPF record of `domain`, or why there is none usable.
enum Fetched {
    Record(SpfRecord),
    Unusable(String),
    Failed(DnsFailure),
}

async fn fetch_record(dns: &Dns, cache: &mut Cache, domain: &str) -> Fetched {
    match cache.txt(dns, domain).await {
        Err(e) => Fetched::Failed(e),
        Ok(txts) => {
            let spfs: Vec<String> = txts
                .unwrap_or_default()
                .into_iter()
                .filter(|t| is_spf(t))
                .collect();
            match spfs.as_slice() {
                [] => Fetched::Unusable(format!("{domain} has no SPF record")),
                [one] => match parse(one) {
                    Ok(r) => Fetched::Record(r),
                    Err(e) => Fetched::Unusable(format!("the SPF record of {domain}: {e}")),
                },
                many => Fetched::Unusable(format!("{domain} has {} SPF records", many.len())),
            }
        }
    }
}

/// The inputs of `check_host()` macros (RFC 7208 §7.2) for one evaluation.
struct MacroVars {
    ip: IpAddr,
    sender: String,
    helo: String,
}

impl MacroVars {
    /// Expands a domain-spec with `domain` as `%{d}`; `None` when the expansion is not a name.
    fn expand(&self, spec: &str, domain: &str) -> Option<String> {
        let mut out = String::new();
        let b = spec.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] != b'%' {
                out.push(b[i] as char);
                i += 1;
                continue;
            }
            match b.get(i + 1)? {
                b'%' => out.push('%'),
                b'_' => out.push(' '),
                b'-' => out.push_str("%20"),
                b'{' => {
                    let end = spec[i..].find('}')? + i;
                    out.push_str(&self.macro_value(&spec[i + 2..end], domain)?);
                    i = end + 1;
                    continue;
                }
                _ => return None,
            }
            i += 2;
        }
        let out = out.trim_end_matches('.').to_ascii_lowercase();
        // RFC 7208 §7.3: an expansion over 253 octets loses its leftmost labels.
        let mut name = out.as_str();
        while name.len() > 253 {
            name = name.split_once('.').map(|(_, rest)| rest)?;
        }
        (!name.is_empty()).then(|| name.to_string())
    }

    fn macro_value(&self, body: &str, domain: &str) -> Option<String> {
        let mut chars = body.chars();
        let letter = chars.next()?.to_ascii_lowercase();
        let rest: String = chars.collect();
        let (local, sender_domain) = self.sender.rsplit_once('@').unwrap_or(("postmaster", ""));
        let value = match letter {
            's' => self.sender.clone(),
            'l' => local.to_string(),
            'o' => sender_domain.to_string(),
            'd' => domain.to_string(),
            'i' => match self.ip {
                IpAddr::V4(v4) => v4.to_string(),
                IpAddr::V6(v6) => v6
                    .octets()
                    .iter()
                    .flat_map(|b| [b >> 4, b & 0xf])
                    .map(|n| format!("{n:x}"))
                    .collect::<Vec<_>>()
                    .join("."),
            },
            'p' => "unknown".into(),
            'v' => match self.ip {
                IpAddr::V4(_) => "in-addr".into(),
                IpAddr::V6(_) => "ip6".into(),
            },
            'h' => self.helo.clone(),
            'c' => self.ip.to_string(),
            'r' => "unknown".into(),
            't' => "0".into(),
            _ => return None,
        };
        let digits_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let keep: Option<usize> = rest[..digits_end].parse().ok();
        let after = &rest[digits_end..];
        let reverse = after.starts_with(['r', 'R']);
        let delims: Vec<char> = after.trim_start_matches(['r', 'R']).chars().collect();
        let delims = if delims.is_empty() { vec!['.'] } else { delims };
        let mut parts: Vec<&str> = value.split(|c| delims.contains(&c)).collect();
        if reverse {
            parts.reverse();
        }
        if let Some(n) = keep {
            if n == 0 {
                return None;
            }
            let skip = parts.len().saturating_sub(n);
            parts.drain(..skip);
        }
        Some(parts.join("."))
    }
}

/// Expands a domain-spec as `check_host(ip, domain, sender)` does (RFC 7208 §7), the HELO
/// name taken to be `domain`; `None` when the expansion is not a name.
pub fn expand_macros(spec: &str, ip: IpAddr, domain: &str, sender: &str) -> Option<String> {
    MacroVars {
        ip,
        sender: sender.to_string(),
        helo: domain.to_string(),
    }
    .expand(spec, domain)
}

fn prefix_matches(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

fn cidr_matches(ip: IpAddr, addrs: &[IpAddr], cidr4: Option<u8>, cidr6: Option<u8>) -> bool {
    addrs.iter().any(|&a| {
        let prefix = if a.is_ipv4() {
            cidr4.unwrap_or(32)
        } else {
            cidr6.unwrap_or(128)
        };
        prefix_matches(ip, a, prefix)
    })
}

/// How the walk treats a limit or a broken target: a receiver stops there (per address), the
/// measuring walk notes it and goes on, so that every term an unlisted sender costs is counted.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Receiver,
    Measure,
}

/// `check_host()` (RFC 7208 §4) for one address, keeping the path to every term.
struct Evaluator<'a> {
    dns: &'a Dns,
    cache: &'a mut Cache,
    vars: MacroVars,
    mode: Mode,
    lookups: usize,
    voids: Vec<String>,
    found: Findings,
}

type Step = Result<Option<(Verdict, Stop)>, Problem>;
type Evaluated = Result<(Verdict, Stop), Problem>;

impl<'a> Evaluator<'a> {
    fn new(dns: &'a Dns, cache: &'a mut Cache, ip: IpAddr, domain: &str, mode: Mode) -> Self {
        Evaluator {
            dns,
            cache,
            vars: MacroVars {
                ip,
                sender: format!("postmaster@{domain}"),
                helo: domain.to_string(),
            },
            mode,
            lookups: 0,
            voids: Vec::new(),
            found: Findings::default(),
        }
    }

    /// Counts a DNS-lookup term; past the limit a receiver stops with permerror.
    fn count_lookup(&mut self, path: &[String], label: &str) -> Result<bool, Problem> {
        self.lookups += 1;
        if self.lookups > MAX_LOOKUPS {
            let mut p = path.to_vec();
            p.push(label.to_string());
            if self.mode == Mode::Receiver {
                return Err(Problem::LookupLimit(p));
            }
            if self.found.over_limit.is_none() {
                self.found.over_limit = Some(p);
            }
        }
        Ok(self.lookups <= MAX_MEASURED_LOOKUPS)
    }

    /// The A or AAAA records of `name` for `a` and `exists`: a failed query is a problem and
    /// an empty answer a void lookup (RFC 7208 §4.6.4), both counted before `None` is given.
    async fn addresses_of(
        &mut self,
        name: String,
        v6: bool,
    ) -> Result<Option<Vec<IpAddr>>, Problem> {
        match self.cache.addrs(self.dns, &name, v6).await {
            Ok(Some(addrs)) => Ok(Some(addrs)),
            Ok(None) => self.void(name).map(|()| None),
            Err(e) => self.problem(Problem::Dns(e)).map(|()| None),
        }
    }

    fn void(&mut self, name: String) -> Result<(), Problem> {
        self.voids.push(name);
        if self.voids.len() > MAX_VOID_LOOKUPS && self.mode == Mode::Receiver {
            return Err(Problem::VoidLimit(self.voids.clone()));
        }
        Ok(())
    }

    /// A problem that ends a receiver's evaluation; the measuring walk records it and treats
    /// the term as not matching.
    fn problem(&mut self, p: Problem) -> Result<(), Problem> {
        if self.mode == Mode::Receiver {
            return Err(p);
        }
        match p {
            Problem::Loop(path) => self.found.loops.push(path),
            Problem::Target { domain, term, why } => self.found.targets.push((domain, term, why)),
            Problem::MxLimit {
                domain,
                term,
                hosts,
            } => self.found.mx_limit.push((domain, term, hosts)),
            Problem::Dns(e) => self.found.dns.push(e),
            Problem::LookupLimit(_) | Problem::VoidLimit(_) => {}
        }
        Ok(())
    }

    async fn run(mut self, domain: &str, record: &SpfRecord) -> (Evaluation, Findings) {
        let path = vec![domain.to_string()];
        let (verdict, stop) = match self.record(domain, record, path).await {
            Ok(v) => v,
            Err(Problem::Dns(e)) => (Verdict::TempError, Stop::Problem(Problem::Dns(e))),
            Err(p) => (Verdict::PermError, Stop::Problem(p)),
        };
        let eval = Evaluation {
            verdict,
            stop,
            lookups: self.lookups,
            voids: self.voids.clone(),
        };
        (eval, self.found)
    }

    /// Evaluates `record` of `domain`; `path` leads to it (`domain`, then the include and
    /// redirect terms followed).
    fn record<'b>(
        &'b mut self,
        domain: &'b str,
        record: &'b SpfRecord,
        path: Vec<String>,
    ) -> Pin<Box<dyn Future<Output = Evaluated> + Send + 'b>> {
        Box::pin(async move {
            self.found.records += 1;
            if self.mode == Mode::Measure {
                self.note_record(domain, record);
            }
            for term in &record.terms {
                let Term::Mechanism(q, m) = term else {
                    continue;
                };
                if let Some(done) = self.mechanism(domain, *q, m, &path).await? {
                    return Ok(done);
                }
            }
            // RFC 7208 §6.1: redirect applies only when no mechanism matched (so never
            // alongside `all`).
            if let Some(target) = record.redirect() {
                let label = format!("redirect={target}");
                if !self.count_lookup(&path, &label)? {
                    return Ok((
                        Verdict::Neutral,
                        Stop::NoMatch {
                            domain: domain.into(),
                        },
                    ));
                }
                let Some(name) = self.vars.expand(target, domain) else {
                    return Err(Problem::Target {
                        domain: domain.into(),
                        term: label,
                        why: format!("{target} does not expand to a domain"),
                    });
                };
                return match self.follow(domain, &name, &label, &path).await? {
                    Some(v) => Ok(v),
                    None => Ok((Verdict::None, Stop::NoMatch { domain: name })),
                };
            }
            Ok((
                Verdict::Neutral,
                Stop::NoMatch {
                    domain: domain.into(),
                },
            ))
        })
    }

    fn note_record(&mut self, domain: &str, record: &SpfRecord) {
        let mut all = None;
        let mut dead = Vec::new();
        for term in &record.terms {
            match term {
                Term::Mechanism(_, Mechanism::All) if all.is_none() => {
                    all = Some(term_text(term));
                }
                Term::Mechanism(..) if all.is_some() => dead.push(term_text(term)),
                Term::Mechanism(_, Mechanism::Ptr(_))
                    if !self.found.ptr_in.iter().any(|d| d == domain) =>
                {
                    self.found.ptr_in.push(domain.to_string());
                }
                _ => {}
            }
        }
        if let (Some(_), Some(target)) = (&all, record.redirect()) {
            dead.push(format!("redirect={target}"));
        }
        if let Some(all) = all {
            if !dead.is_empty() {
                self.found.dead.push((domain.to_string(), dead, all));
            }
        }
    }

    /// Follows an include or redirect to `name`: `None` when the target is unusable and the
    /// measuring walk goes on.
    async fn follow(
        &mut self,
        domain: &str,
        name: &str,
        label: &str,
        path: &[String],
    ) -> Result<Option<(Verdict, Stop)>, Problem> {
        let mut next = path.to_vec();
        next.push(label.to_string());
        let on_path = path.iter().enumerate().any(|(i, p)| {
            let d = if i == 0 { p.as_str() } else { target_of(p) };
            d.eq_ignore_ascii_case(name)
        });
        if on_path {
            self.problem(Problem::Loop(next))?;
            return Ok(None);
        }
        if self.found.records >= MAX_WALKED_RECORDS {
            return Ok(None);
        }
        match fetch_record(self.dns, self.cache, name).await {
            Fetched::Failed(e) => {
                self.problem(Problem::Dns(e))?;
                Ok(None)
            }
            Fetched::Unusable(why) => {
                if why.ends_with("has no SPF record") {
                    // The query found nothing: a void lookup as well as a permerror.
                    let _ = self.void(name.to_string());
                }
                self.problem(Problem::Target {
                    domain: domain.into(),
                    term: label.into(),
                    why,
                })?;
                Ok(None)
            }
            Fetched::Record(rec) => Ok(Some(self.record(name, &rec, next).await?)),
        }
    }

    async fn mechanism(
        &mut self,
        domain: &str,
        q: Qualifier,
        m: &Mechanism,
        path: &[String],
    ) -> Step {
        let ip = self.vars.ip;
        let v6 = ip.is_ipv6();
        let label = term_text(&Term::Mechanism(q, m.clone()));
        let matched = || {
            Some((
                Verdict::of(q),
                Stop::Matched {
                    domain: domain.to_string(),
                    term: label.clone(),
                    path: path.to_vec(),
                },
            ))
        };
        if m.is_lookup() && !self.count_lookup(path, &label)? {
            return Ok(None);
        }
        let target = |this: &Self, spec: &Option<String>| match spec {
            Some(s) => this.vars.expand(s, domain),
            None => Some(domain.to_string()),
        };
        let hit = match m {
            Mechanism::All => true,
            Mechanism::Ip4 { addr, prefix } => prefix_matches(ip, IpAddr::V4(*addr), *prefix),
            Mechanism::Ip6 { addr, prefix } => prefix_matches(ip, IpAddr::V6(*addr), *prefix),
            Mechanism::A {
                domain: spec,
                cidr4,
                cidr6,
            } => {
                let Some(name) = target(self, spec) else {
                    return Ok(None);
                };
                self.addresses_of(name, v6)
                    .await?
                    .is_some_and(|addrs| cidr_matches(ip, &addrs, *cidr4, *cidr6))
            }
            Mechanism::Mx {
                domain: spec,
                cidr4,
                cidr6,
            } => {
                let Some(name) = target(self, spec) else {
                    return Ok(None);
                };
                match self.cache.mx(self.dns, &name).await {
                    Err(e) => {
                        self.problem(Problem::Dns(e))?;
                        false
                    }
                    Ok(None) => {
                        self.void(name)?;
                        false
                    }
                    Ok(Some(mxs)) => {
                        let hosts: Vec<String> = mxs
                            .into_iter()
                            .map(|(_, h)| h)
                            .filter(|h| !h.is_empty())
                            .collect();
                        if hosts.len() > 10 {
                            self.problem(Problem::MxLimit {
                                domain: domain.to_string(),
                                term: label.clone(),
                                hosts: hosts.len(),
                            })?;
                            false
                        } else {
                            let mut hit = false;
                            for host in hosts {
                                match self.cache.addrs(self.dns, &host, v6).await {
                                    Err(e) => self.problem(Problem::Dns(e))?,
                                    Ok(Some(addrs)) if cidr_matches(ip, &addrs, *cidr4, *cidr6) => {
                                        hit = true;
                                        break;
                                    }
                                    Ok(_) => {}
                                }
                            }
                            hit
                        }
                    }
                }
            }
            Mechanism::Ptr(spec) => {
                let Some(name) = target(self, spec) else {
                    return Ok(None);
                };
                self.ptr_matches(&name).await?
            }
            Mechanism::Exists(spec) => {
                let Some(name) = self.vars.expand(spec, domain) else {
                    return Ok(None);
                };
                self.addresses_of(name, false).await?.is_some()
            }
            Mechanism::Include(spec) => {
                let Some(name) = self.vars.expand(spec, domain) else {
                    return Ok(None);
                };
                match self.follow(domain, &name, &label, path).await? {
                    // RFC 7208 §5.2: only the target's pass makes the include match; its
                    // errors are the including record's errors.
                    Some((Verdict::Pass, stop)) => return Ok(Some((Verdict::of(q), stop))),
                    Some((Verdict::TempError, stop)) => {
                        return Ok(Some((Verdict::TempError, stop)))
                    }
                    Some((Verdict::PermError | Verdict::None, stop)) => {
                        return Ok(Some((Verdict::PermError, stop)))
                    }
                    _ => false,
                }
            }
        };
        Ok(if hit { matched() } else { None })
    }

    /// RFC 7208 §5.5: the validated PTR names of the address (at most 10 are tried) at or
    /// under `target`.
    async fn ptr_matches(&mut self, target: &str) -> Result<bool, Problem> {
        let ip = self.vars.ip;
        let names = match self.cache.ptr(self.dns, ip).await {
            Err(_) | Ok(None) => return Ok(false),
            Ok(Some(names)) => names,
        };
        for name in names.into_iter().take(10) {
            let under = name == target || name.ends_with(&format!(".{target}"));
            if !under {
                continue;
            }
            if let Ok(Some(addrs)) = self.cache.addrs(self.dns, &name, ip.is_ipv6()).await {
                if addrs.contains(&ip) {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }
}

/// The domain an `include:` or `redirect=` path element leads to.
fn target_of(label: &str) -> &str {
    label
        .split_once(':')
        .or_else(|| label.split_once('='))
        .map_or(label, |(_, d)| d)
}

/// An address no sender list includes (0.0.0.0/8 never sends mail; the documentation ranges
/// are avoided because zones use them for real senders): the measuring walk takes the path of
/// an unlisted sender, which evaluates every term before `all`.
const UNLISTED: IpAddr = IpAddr::V4(Ipv4Addr::new(0, 0, 0, 1));

/// The pool's SPF results at the domain.
#[derive(Debug, Default, Clone)]
pub struct PoolResult {
    /// Addresses that do not get `pass`, with their result.
    pub unauthorized: Vec<(IpAddr, String)>,
    /// Evaluations that hit a DNS error (temperror) or the time bound.
    pub errors: usize,
    /// Some relay name could not be looked up: the pool may have more addresses.
    pub incomplete: bool,
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
        let v = receiver_verdict(dns, domain, sender, ip, timeout).await;
        match v {
            Verdict::Pass => {}
            Verdict::TempError => {
                r.errors += 1;
                r.unauthorized.push((ip, "temperror".into()));
            }
            other => r.unauthorized.push((ip, other.as_str().into())),
        }
    }
    r
}

/// mail-auth's `check_host()` result for one address; a timeout is a temperror.
async fn receiver_verdict(
    dns: &Dns,
    domain: &str,
    sender: &str,
    ip: IpAddr,
    timeout: Duration,
) -> Verdict {
    let params = SpfParameters::verify_mail_from(ip, domain, domain, sender);
    // One evaluation makes up to 10 lookups plus their address lookups, each bounded.
    let bound = timeout * 4;
    match tokio::time::timeout(bound, dns.authenticator().verify_spf(params)).await {
        Err(_) => Verdict::TempError,
        Ok(out) => match out.result() {
            SpfResult::Pass => Verdict::Pass,
            SpfResult::Fail => Verdict::Fail,
            SpfResult::SoftFail => Verdict::SoftFail,
            SpfResult::Neutral => Verdict::Neutral,
            SpfResult::TempError => Verdict::TempError,
            SpfResult::PermError => Verdict::PermError,
            SpfResult::None => Verdict::None,
        },
    }
}

pub(crate) struct Outcome {
    pub checks: Vec<Check>,
    pub pool: PoolResult,
}

/// The `spf.*` checks of `domain`, whose TXT records were already fetched (`apex_txt`).
/// `pool_complete` is false when some relay name could not be resolved.
pub(crate) async fn check(
    dns: &Dns,
    domain: &str,
    apex_txt: Option<&[String]>,
    pool: &[IpAddr],
    pool_complete: bool,
    timeout: Duration,
) -> Outcome {
    let area = Area::Spf;
    let mut checks = Vec::new();
    let mut cache = Cache::default();
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
    let mut parsed = None;
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
                checks.extend(record_checks(dns, &mut cache, domain, text, &rec).await);
                parsed = Some(rec);
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
        // A record receivers cannot use gives every address permerror: its repair comes first.
        let broken = match (records.len(), &parsed) {
            (0, _) | (1, Some(_)) => None,
            (1, None) => Some(format!(
                "fix the syntax error of the SPF record of {domain} (see spf.syntax): receivers return permerror for every address"
            )),
            _ => Some(format!(
                "merge the SPF records of {domain} into one: receivers return permerror for every address"
            )),
        };
        let (check, result) = pool_check(
            dns,
            &mut cache,
            domain,
            parsed.as_ref(),
            broken,
            pool,
            pool_complete,
            timeout,
        )
        .await;
        checks.extend(check);
        result
    };
    Outcome {
        checks,
        pool: pool_result,
    }
}

/// The checks that come from walking the record as a receiver does for an unlisted sender.
async fn record_checks(
    dns: &Dns,
    cache: &mut Cache,
    domain: &str,
    text: &str,
    rec: &SpfRecord,
) -> Vec<Check> {
    let area = Area::Spf;
    let mut checks = Vec::new();
    let (eval, found) = Evaluator::new(dns, cache, UNLISTED, domain, Mode::Measure)
        .run(domain, rec)
        .await;
    for f in &found.dns {
        checks.push(dns_error(area, "spf.dns-error", f));
    }
    checks.push(all_check(domain, &eval));
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
    checks.push(if let Some(path) = found.loops.first() {
        Check::new(
            area,
            "spf.lookups",
            Status::Fail,
            format!(
                "unbounded: the include loop {} makes receivers evaluate lookups until the limit of {MAX_LOOKUPS} (permerror)",
                path.join(" → ")
            ),
        )
        .hint(loop_hint(domain, path))
    } else if let Some(path) = &found.over_limit {
        Check::new(
            area,
            "spf.lookups",
            Status::Fail,
            format!(
                "{} DNS-lookup terms (limit {MAX_LOOKUPS}) for an unlisted sender; the 11th is reached via {}: receivers return permerror there",
                eval.lookups,
                path.join(" → ")
            ),
        )
        .hint(lookup_hint(domain, rec, path))
    } else {
        Check::new(
            area,
            "spf.lookups",
            Status::Pass,
            format!("{} of {MAX_LOOKUPS} DNS-lookup terms", eval.lookups),
        )
    });
    checks.push(if eval.voids.len() > MAX_VOID_LOOKUPS {
        Check::new(
            area,
            "spf.void-lookups",
            Status::Fail,
            format!(
                "{} void lookups (limit {MAX_VOID_LOOKUPS}, RFC 7208 §4.6.4): {}; receivers return permerror at the third",
                eval.voids.len(),
                eval.voids.join(", ")
            ),
        )
        .hint(format!(
            "remove the terms naming {} from the SPF record of {domain}, or publish those names",
            eval.voids.join(", ")
        ))
    } else {
        Check::new(
            area,
            "spf.void-lookups",
            Status::Pass,
            format!("{} void lookups", eval.voids.len()),
        )
    });
    checks.push(if found.targets.is_empty() {
        Check::new(
            area,
            "spf.includes",
            Status::Pass,
            "every include/redirect target has one valid SPF record",
        )
    } else {
        let whys: Vec<String> = found.targets.iter().map(|(_, _, w)| w.clone()).collect();
        let (holder, term, _) = &found.targets[0];
        Check::new(
            area,
            "spf.includes",
            Status::Fail,
            format!(
                "include/redirect targets are broken (permerror): {}",
                whys.join("; ")
            ),
        )
        .hint(format!(
            "fix the target of {term} or remove {term} from the SPF record of {holder}"
        ))
    });
    checks.push(match found.loops.first() {
        None => Check::new(area, "spf.loop", Status::Pass, "no include/redirect loop"),
        Some(path) => Check::new(
            area,
            "spf.loop",
            Status::Fail,
            format!(
                "include/redirect loop: {} leads back to a record being evaluated",
                path.join(" → ")
            ),
        )
        .hint(loop_hint(domain, path)),
    });
    checks.push(match found.dead.first() {
        None => Check::new(
            area,
            "spf.dead-terms",
            Status::Pass,
            "every term is reachable",
        ),
        Some(_) => {
            let parts: Vec<String> = found
                .dead
                .iter()
                .map(|(d, terms, all)| {
                    format!("in the record of {d}, {} after \"{all}\"", terms.join(" "))
                })
                .collect();
            let (d, terms, all) = &found.dead[0];
            Check::new(
                area,
                "spf.dead-terms",
                Status::Warn,
                format!(
                    "terms never evaluated ({}): evaluation ends at \"all\" and redirect is ignored beside it (RFC 7208 §5.1, §6.1)",
                    parts.join("; ")
                ),
            )
            .hint(format!(
                "move {} before \"{all}\" in the SPF record of {d}, or remove {}",
                terms.join(" "),
                if terms.len() == 1 { "it" } else { "them" }
            ))
        }
    });
    checks.push(match found.mx_limit.first() {
        None => Check::new(
            area,
            "spf.mx-limit",
            Status::Pass,
            "no mx term names more than 10 MX hosts",
        ),
        Some((d, term, hosts)) => Check::new(
            area,
            "spf.mx-limit",
            Status::Fail,
            format!(
                "\"{term}\" in the record of {d} names {hosts} MX hosts (limit 10 per mx term, RFC 7208 §4.6.4): permerror"
            ),
        )
        .hint(format!(
            "replace \"{term}\" in the SPF record of {d} by ip4/ip6 ranges or a: terms of the hosts that send"
        )),
    });
    checks.push(if found.ptr_in.is_empty() {
        Check::new(area, "spf.ptr", Status::Pass, "no ptr mechanism")
    } else {
        Check::new(
            area,
            "spf.ptr",
            Status::Warn,
            format!(
                "ptr is used (in the record of {}); it is slow and many receivers skip it",
                found.ptr_in.join(", ")
            ),
        )
        .hint(format!(
            "replace ptr with ip4/ip6 or a terms in the SPF record of {}",
            found.ptr_in[0]
        ))
    });
    if !found.dns.is_empty() {
        // The walk could not see every record: what it did not find may still be there.
        for c in checks.iter_mut() {
            if c.status == Status::Pass && c.id != "spf.length" {
                c.status = Status::Unknown;
                c.message = format!("{} so far; a lookup failed, the rest is unknown", c.message);
            }
        }
    }
    checks
}

/// The result an unlisted sender gets: `+all` anywhere on its path lets everyone pass.
fn all_check(domain: &str, eval: &Evaluation) -> Check {
    let area = Area::Spf;
    match (&eval.verdict, &eval.stop) {
        (Verdict::Pass, Stop::Matched { domain: d, term, path }) => {
            let via = if path.len() > 1 {
                format!(" (reached via {})", path.join(" → "))
            } else {
                String::new()
            };
            let hint = match path.get(1) {
                _ if !term.ends_with("all") => format!(
                    "narrow \"{term}\" in the SPF record of {d} to the addresses that send"
                ),
                Some(first) if first.starts_with("include:") => format!(
                    "remove {first} from the SPF record of {domain}: its evaluation ends in \"{term}\" at {d}, which authorizes every sender"
                ),
                Some(first) => format!(
                    "replace \"{term}\" with -all (or ~all) in the SPF record of {d}, or point {first} elsewhere"
                ),
                None => format!("replace {term} with -all (or ~all) in the SPF record of {domain}"),
            };
            Check::new(
                area,
                "spf.all",
                Status::Fail,
                format!("\"{term}\" in the record of {d}{via} lets anyone pass SPF for the domain"),
            )
            .hint(hint)
        }
        (Verdict::Neutral, Stop::Matched { domain: d, term, .. }) => Check::new(
            area,
            "spf.all",
            Status::Warn,
            format!("\"{term}\" in the record of {d} gives unlisted senders a neutral result"),
        )
        .hint(format!("end the SPF record of {d} with -all or ~all")),
        (_, Stop::NoMatch { domain: d }) => Check::new(
            area,
            "spf.all",
            Status::Warn,
            if d == domain {
                "no \"all\" mechanism: unlisted senders get neutral".to_string()
            } else {
                format!("no \"all\" in the record of {d}, where the redirect leads: unlisted senders get neutral")
            },
        )
        .hint(format!("end the SPF record of {d} with -all or ~all")),
        (v, Stop::Matched { domain: d, term, .. }) => {
            let what = if *v == Verdict::Fail { "fail" } else { "softfail" };
            let at = if d == domain {
                String::new()
            } else {
                format!(" (in the record of {d})")
            };
            Check::new(
                area,
                "spf.all",
                Status::Pass,
                format!("\"{term}\"{at}: unlisted senders {what}"),
            )
        }
        (v, Stop::Problem(_)) => Check::new(
            area,
            "spf.all",
            Status::Info,
            format!("unlisted senders get {}", v.as_str()),
        ),
    }
}

/// Where the term closing a loop sits, and the fix: remove it there.
fn loop_hint(domain: &str, path: &[String]) -> String {
    let last = path.last().map(String::as_str).unwrap_or("");
    let holder = match path.len() {
        0..=2 => domain,
        n => target_of(&path[n - 2]),
    };
    format!("break the loop: remove {last} from the SPF record of {holder}")
}

/// The fix for too many lookups: the top-level term through which the 11th is reached costs
/// the most; flattening it into ip4/ip6 ranges cuts its lookups.
fn lookup_hint(domain: &str, rec: &SpfRecord, path: &[String]) -> String {
    let first = path.get(1).cloned().unwrap_or_default();
    let lookups = rec
        .terms
        .iter()
        .filter(|t| matches!(t, Term::Mechanism(_, m) if m.is_lookup()))
        .count();
    if first.starts_with("include:") || first.starts_with("redirect=") {
        format!(
            "replace {first} in the SPF record of {domain} by the ip4/ip6 ranges it stands for, so that at most {MAX_LOOKUPS} lookups remain"
        )
    } else {
        format!(
            "cut the {lookups} DNS-lookup terms of the SPF record of {domain} (a, mx, include, exists, ptr) to at most {MAX_LOOKUPS}, e.g. by ip4/ip6 ranges"
        )
    }
}

/// `spf.pool`: the receiver's verdict (mail-auth) for every pool address, and for each that
/// does not pass, where evaluation stopped and the fix of that cause.
#[allow(clippy::too_many_arguments)]
async fn pool_check(
    dns: &Dns,
    cache: &mut Cache,
    domain: &str,
    rec: Option<&SpfRecord>,
    broken: Option<String>,
    pool: &[IpAddr],
    pool_complete: bool,
    timeout: Duration,
) -> (Vec<Check>, PoolResult) {
    let area = Area::Spf;
    let sender = format!("postmaster@{domain}");
    let mut checks = Vec::new();
    let mut result = PoolResult {
        incomplete: !pool_complete,
        ..PoolResult::default()
    };
    let mut failed = Vec::new();
    let mut passed = Vec::new();
    let mut unknown = Vec::new();
    let mut add = Vec::new();
    let mut hints: Vec<String> = Vec::new();
    for &ip in pool {
        let receiver = receiver_verdict(dns, domain, &sender, ip, timeout).await;
        let eval = match rec {
            Some(rec) => Some(
                Evaluator::new(dns, cache, ip, domain, Mode::Receiver)
                    .run(domain, rec)
                    .await
                    .0,
            ),
            None => None,
        };
        // mail-auth does not apply the void-lookup limit; a receiver that does says permerror.
        // mail-auth applies neither the void-lookup limit nor the MX limit before a match;
        // receivers that do (RFC 7208 §4.6.4) say permerror.
        let verdict = match &eval {
            Some(e)
                if matches!(
                    e.stop,
                    Stop::Problem(Problem::VoidLimit(_) | Problem::MxLimit { .. })
                ) =>
            {
                e.verdict
            }
            // RFC 7208 §4.6: a record that does not parse is permerror, even where mail-auth
            // reads past the bad term.
            _ if broken.is_some() && receiver != Verdict::TempError => Verdict::PermError,
            _ => receiver,
        };
        if verdict == Verdict::Pass {
            passed.push(match eval.as_ref().map(|e| &e.stop) {
                Some(Stop::Matched {
                    domain: d, term, ..
                }) => {
                    format!("{ip} (\"{term}\" of {d})")
                }
                _ => ip.to_string(),
            });
            continue;
        }
        if verdict == Verdict::TempError
            || eval
                .as_ref()
                .is_some_and(|e| e.verdict == Verdict::TempError)
        {
            result.errors += 1;
            result.unauthorized.push((ip, "temperror".into()));
            let why = match eval.as_ref().map(|e| &e.stop) {
                Some(Stop::Problem(Problem::Dns(f))) => f.to_string(),
                _ => "a DNS query failed or timed out".to_string(),
            };
            unknown.push(format!("{ip} (temperror: {why})"));
            continue;
        }
        result.unauthorized.push((ip, verdict.as_str().into()));
        let (place, fix) = match (&eval, rec, &broken) {
            (Some(e), Some(rec), _) => diagnose(dns, cache, domain, rec, ip, e, timeout).await,
            (_, _, Some(h)) => (String::new(), Fix::Other(h.clone())),
            _ => (String::new(), Fix::Add),
        };
        failed.push(format!("{ip} ({}){place}", verdict.as_str()));
        match fix {
            Fix::Add => add.push(ip),
            Fix::Other(h) => {
                if !hints.contains(&h) {
                    hints.push(h);
                }
            }
        }
    }
    if !add.is_empty() {
        hints.insert(
            0,
            format!("add {} to the SPF record of {domain}", pool_terms(&add)),
        );
    }
    if !unknown.is_empty() {
        checks.push(
            Check::new(
                area,
                "spf.dns-error",
                Status::Fail,
                format!(
                    "SPF evaluation for {domain} hit DNS errors (temperror) for {} address(es)",
                    unknown.len()
                ),
            )
            .hint("check the name servers of the domain and of its includes"),
        );
    }
    checks.push(if !failed.is_empty() {
        let which = if failed.len() == pool.len() {
            "no pool address passes"
        } else {
            "pool addresses not authorized"
        };
        Check::new(
            area,
            "spf.pool",
            Status::Fail,
            format!("{which} SPF for {sender}: {}", failed.join("; ")),
        )
        .hint(hints.join("; "))
    } else if !unknown.is_empty() || !pool_complete {
        let mut what = unknown.clone();
        if !pool_complete {
            what.push("some relay names could not be resolved".into());
        }
        Check::new(
            area,
            "spf.pool",
            Status::Unknown,
            format!("SPF for {sender} is unknown: {}", what.join("; ")),
        )
        .hint("check the name servers, then run the check again")
    } else {
        Check::new(
            area,
            "spf.pool",
            Status::Pass,
            format!(
                "every pool address passes SPF for {sender}: {}",
                passed.join(", ")
            ),
        )
    });
    (checks, result)
}

enum Fix {
    /// Nothing in the tree authorizes the address: list it.
    Add,
    Other(String),
}

/// Where the evaluation of `ip` stopped (a message fragment) and the fix of that cause.
async fn diagnose(
    dns: &Dns,
    cache: &mut Cache,
    domain: &str,
    rec: &SpfRecord,
    ip: IpAddr,
    eval: &Evaluation,
    timeout: Duration,
) -> (String, Fix) {
    match &eval.stop {
        Stop::Problem(p) => match p {
            Problem::Loop(path) => (
                format!(": include loop {}", path.join(" → ")),
                Fix::Other(loop_hint(domain, path)),
            ),
            Problem::LookupLimit(path) => {
                let place = format!(": the 11th DNS lookup is {}", path.join(" → "));
                // An address listed by ip4/ip6 after the lookups passes once it comes first.
                let first_lookup = rec
                    .terms
                    .iter()
                    .position(|t| matches!(t, Term::Mechanism(_, m) if m.is_lookup()));
                let listed = rec.terms.iter().enumerate().find(|(_, t)| {
                    matches!(t, Term::Mechanism(Qualifier::Pass, m) if static_match(m, ip))
                });
                match (first_lookup, listed) {
                    (Some(f), Some((i, t))) if i > f => (
                        place,
                        Fix::Other(format!(
                            "move {} before {} in the SPF record of {domain}",
                            term_text(t),
                            term_text(&rec.terms[f])
                        )),
                    ),
                    _ => (place, Fix::Other(lookup_hint(domain, rec, path))),
                }
            }
            Problem::VoidLimit(names) => (
                format!(": a third void lookup ({})", names.join(", ")),
                Fix::Other(format!(
                    "remove the terms naming {} from the SPF record of {domain}, or publish those names",
                    names.join(", ")
                )),
            ),
            Problem::MxLimit { domain: d, term, hosts } => (
                format!(": \"{term}\" in the record of {d} names {hosts} MX hosts (limit 10)"),
                Fix::Other(format!(
                    "replace \"{term}\" in the SPF record of {d} by ip4/ip6 ranges or a: terms of the hosts that send"
                )),
            ),
            Problem::Target { domain: d, term, why } => (
                format!(": {term} in the record of {d}: {why}"),
                Fix::Other(format!(
                    "fix the target of {term} or remove {term} from the SPF record of {d}"
                )),
            ),
            Problem::Dns(f) => (format!(": {f}"), Fix::Add),
        },
        Stop::NoMatch { domain: d } => (
            format!(": no term matches in the record of {d}"),
            Fix::Add,
        ),
        Stop::Matched { domain: d, term, .. } => {
            let place = format!(": evaluation stops at \"{term}\" in the record of {d}");
            let record = if d == domain {
                Some(rec.clone())
            } else {
                match fetch_record(dns, cache, d).await {
                    Fetched::Record(r) => Some(r),
                    _ => None,
                }
            };
            let Some(record) = record else {
                return (place, Fix::Add);
            };
            let at = record.terms.iter().position(|t| term_text(t) == *term);
            // A term after the stop that would have authorized the address: move it up.
            if let Some(at) = at {
                for later in &record.terms[at + 1..] {
                    let Term::Mechanism(Qualifier::Pass, m) = later else {
                        continue;
                    };
                    if mechanism_matches(dns, cache, d, m, ip).await {
                        let tail = if matches!(record.terms[at], Term::Mechanism(_, Mechanism::All)) {
                            " (terms after \"all\" are never evaluated)"
                        } else {
                            ""
                        };
                        return (
                            place,
                            Fix::Other(format!(
                                "move {} before \"{term}\" in the SPF record of {d}{tail}",
                                term_text(later)
                            )),
                        );
                    }
                }
            }
            // A redirect beside `all` is ignored; if its target authorizes the address, the
            // `all` is what stands in the way.
            if let (Some(target), true) = (record.redirect(), record.all().is_some()) {
                let target = normalize(target);
                if let Fetched::Record(t) = fetch_record(dns, cache, &target).await {
                    let passes = tokio::time::timeout(
                        timeout * 4,
                        Evaluator::new(dns, cache, ip, domain, Mode::Receiver).run(&target, &t),
                    )
                    .await
                    .is_ok_and(|(e, _)| e.verdict == Verdict::Pass);
                    if passes {
                        return (
                            place,
                            Fix::Other(format!(
                                "remove \"{term}\" from the SPF record of {d}: redirect={target} is ignored while the record has \"all\""
                            )),
                        );
                    }
                }
            }
            (place, Fix::Add)
        }
    }
}

/// Whether an ip4/ip6 term covers `ip` (no DNS).
fn static_match(m: &Mechanism, ip: IpAddr) -> bool {
    match m {
        Mechanism::Ip4 { addr, prefix } => prefix_matches(ip, IpAddr::V4(*addr), *prefix),
        Mechanism::Ip6 { addr, prefix } => prefix_matches(ip, IpAddr::V6(*addr), *prefix),
        _ => false,
    }
}

/// Whether a mechanism that was never evaluated would match `ip` (for the hint only; its
/// lookups are not counted).
async fn mechanism_matches(
    dns: &Dns,
    cache: &mut Cache,
    domain: &str,
    m: &Mechanism,
    ip: IpAddr,
) -> bool {
    let v6 = ip.is_ipv6();
    match m {
        Mechanism::Ip4 { .. } | Mechanism::Ip6 { .. } => static_match(m, ip),
        Mechanism::A {
            domain: d,
            cidr4,
            cidr6,
        } => {
            let name = d.as_deref().map_or(domain.to_string(), normalize);
            matches!(cache.addrs(dns, &name, v6).await, Ok(Some(a)) if cidr_matches(ip, &a, *cidr4, *cidr6))
        }
        Mechanism::Mx {
            domain: d,
            cidr4,
            cidr6,
        } => {
            let name = d.as_deref().map_or(domain.to_string(), normalize);
            let Ok(Some(mxs)) = cache.mx(dns, &name).await else {
                return false;
            };
            for (_, host) in mxs.into_iter().take(10) {
                if matches!(cache.addrs(dns, &host, v6).await, Ok(Some(a)) if cidr_matches(ip, &a, *cidr4, *cidr6))
                {
                    return true;
                }
            }
            false
        }
        Mechanism::Include(d) if !d.contains('%') => {
            let target = normalize(d);
            match fetch_record(dns, cache, &target).await {
                Fetched::Record(r) => {
                    Box::pin(
                        Evaluator::new(dns, cache, ip, domain, Mode::Receiver).run(&target, &r),
                    )
                    .await
                    .0
                    .verdict
                        == Verdict::Pass
                }
                _ => false,
            }
        }
        _ => false,
    }
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
    fn macros_expand_as_rfc_7208_section_7_4_shows() {
        let ip: IpAddr = "192.0.2.3".parse().unwrap();
        let s = "strong-bad@email.example.com";
        let d = "email.example.com";
        let x = |spec: &str| expand_macros(spec, ip, d, s);
        assert_eq!(x("%{s}").as_deref(), Some("strong-bad@email.example.com"));
        assert_eq!(x("%{o}").as_deref(), Some("email.example.com"));
        assert_eq!(x("%{d4}").as_deref(), Some("email.example.com"));
        assert_eq!(x("%{d2}").as_deref(), Some("example.com"));
        assert_eq!(x("%{d1}").as_deref(), Some("com"));
        assert_eq!(x("%{dr}").as_deref(), Some("com.example.email"));
        assert_eq!(x("%{d2r}").as_deref(), Some("example.email"));
        assert_eq!(x("%{l}").as_deref(), Some("strong-bad"));
        assert_eq!(x("%{l-}").as_deref(), Some("strong.bad"));
        assert_eq!(x("%{lr-}").as_deref(), Some("bad.strong"));
        assert_eq!(x("%{l1r-}").as_deref(), Some("strong"));
        assert_eq!(
            x("%{ir}.%{v}._spf.%{d2}").as_deref(),
            Some("3.2.0.192.in-addr._spf.example.com")
        );
        let v6: IpAddr = "2001:db8::cb01".parse().unwrap();
        assert_eq!(
            expand_macros("%{ir}.%{v}._spf.%{d2}", v6, d, s).as_deref(),
            Some("1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.example.com")
        );
    }

    #[test]
    fn version_must_be_a_whole_word() {
        assert!(!is_spf("v=spf10 -all"));
        assert!(is_spf("v=spf1"));
        assert!(is_spf("V=SPF1 -all"));
        assert!(parse("v=spf2 -all").is_err());
    }
}
