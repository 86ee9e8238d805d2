//! DMARC (RFC 7489): the tag list ([`parse`]), where the record lives (`_dmarc.DOMAIN`, the
//! organizational domain, or wrongly at the apex), and the authorization of external report
//! destinations (§7.1).

use std::fmt;

use super::dns::{normalize, Dns};
use super::{dns_error, Area, Check, Status};
pub use crate::domain::{organizational_domain, AlignmentMode};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    None,
    Quarantine,
    Reject,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DmarcRecord {
    pub p: Option<Policy>,
    pub sp: Option<Policy>,
    pub pct: u8,
    pub adkim: AlignmentMode,
    pub aspf: AlignmentMode,
    /// `rua` URIs as written (size suffix included).
    pub rua: Vec<String>,
    pub ruf: Vec<String>,
    /// `np` (DMARCbis): the policy for non-existent subdomains.
    pub np: Option<Policy>,
    /// `t=y` (DMARCbis): testing, receivers apply one level below `p`.
    pub testing: bool,
    /// `psd=y` (RFC 9091, DMARCbis): the domain declares itself a public suffix domain.
    pub psd: Option<char>,
    /// Tags neither RFC 7489, RFC 9091 nor DMARCbis define; receivers ignore them (RFC 7489
    /// §6.3).
    pub unknown: Vec<String>,
}

/// A syntax error: the tag at fault (empty when the list itself is malformed) and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DmarcError {
    pub tag: String,
    pub reason: String,
}

impl fmt::Display for DmarcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.tag.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "tag {:?}: {}", self.tag, self.reason)
        }
    }
}

/// Whether a TXT record is DMARC (RFC 7489 §6.4, §6.6.3: starts with `v`, optional blanks,
/// `=`, optional blanks, then exactly `DMARC1`); receivers discard every other record.
pub fn is_dmarc(txt: &str) -> bool {
    let Some(rest) = txt.trim_start_matches([' ', '\t']).strip_prefix(['v', 'V']) else {
        return false;
    };
    let Some(rest) = rest.trim_start_matches([' ', '\t']).strip_prefix('=') else {
        return false;
    };
    let rest = rest.trim_start_matches([' ', '\t']);
    // A separator other than ';' after the version is a syntax error, reported as such.
    rest.strip_prefix("DMARC1")
        .is_some_and(|r| !r.starts_with(|c: char| c.is_ascii_alphanumeric()))
}

/// Whether a TXT record that is not DMARC was meant to be: a version tag in another case or
/// place, or a `p=` tag. Receivers discard it, so the domain has no policy.
pub fn looks_like_dmarc(txt: &str) -> bool {
    let lower = txt.to_ascii_lowercase();
    let squeezed: String = lower.chars().filter(|c| !c.is_whitespace()).collect();
    squeezed.contains("v=dmarc")
        || squeezed
            .split(';')
            .any(|t| t.starts_with("p=") || t.starts_with("rua="))
}

/// The record rewritten with `v=DMARC1` first and its other tags kept as written.
fn with_version_first(txt: &str) -> String {
    let tags: Vec<&str> = txt
        .split(';')
        .map(|t| t.trim_matches([' ', '\t']))
        .filter(|t| {
            !t.is_empty()
                && !t
                    .split_once('=')
                    .is_some_and(|(n, _)| n.trim().eq_ignore_ascii_case("v"))
        })
        .collect();
    let mut out = String::from("v=DMARC1");
    for t in tags {
        out.push_str("; ");
        out.push_str(t);
    }
    out
}

/// The policy an invalid `p` value most likely meant; the strictest when nothing is
/// recognisable, so a fix never weakens what was intended.
fn intended_policy(value: &str) -> &'static str {
    let v = value.to_ascii_lowercase();
    if v.starts_with('q') || v.contains("quar") {
        "quarantine"
    } else if v.starts_with("no") || v == "n" {
        "none"
    } else {
        "reject"
    }
}

/// Parses a DMARC record: `v=DMARC1` first, then `tag=value` pairs separated by `;`.
pub fn parse(record: &str) -> Result<DmarcRecord, DmarcError> {
    let err = |tag: &str, reason: String| DmarcError {
        tag: tag.to_string(),
        reason,
    };
    let mut rec = DmarcRecord {
        p: None,
        sp: None,
        pct: 100,
        adkim: AlignmentMode::Relaxed,
        aspf: AlignmentMode::Relaxed,
        rua: Vec::new(),
        ruf: Vec::new(),
        np: None,
        testing: false,
        psd: None,
        unknown: Vec::new(),
    };
    let mut seen: Vec<String> = Vec::new();
    let parts: Vec<&str> = record.split(';').collect();
    for (i, part) in parts.iter().enumerate() {
        let part = part.trim_matches([' ', '\t']);
        if part.is_empty() {
            if i > 0 {
                continue; // a trailing or doubled ';' is tolerated
            }
            return Err(err("", "empty record".into()));
        }
        let (tag, value) = part
            .split_once('=')
            .ok_or_else(|| err(part, "expected tag=value".into()))?;
        let (tag, value) = (
            tag.trim_matches([' ', '\t']),
            value.trim_matches([' ', '\t']),
        );
        if tag.is_empty() || !tag.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(err(tag, "not a tag name".into()));
        }
        if seen.iter().any(|s| s == tag) {
            return Err(err(tag, "appears more than once".into()));
        }
        seen.push(tag.to_string());
        let sep_hint = if value.contains([',', ' ', '=']) && !matches!(tag, "rua" | "ruf") {
            " (tags are separated by ';')"
        } else {
            ""
        };
        let bad = |what: &str| err(tag, format!("{value:?} is not {what}{sep_hint}"));
        if i == 0 {
            if !tag.eq_ignore_ascii_case("v") || value != "DMARC1" {
                return Err(err(
                    tag,
                    format!("the record must start with \"v=DMARC1\"{sep_hint}"),
                ));
            }
            continue;
        }
        match tag {
            "v" | "V" => return Err(err(tag, "v must be the first tag".into())),
            "p" => rec.p = Some(policy(value).ok_or_else(|| bad("none, quarantine or reject"))?),
            "sp" => rec.sp = Some(policy(value).ok_or_else(|| bad("none, quarantine or reject"))?),
            "np" => rec.np = Some(policy(value).ok_or_else(|| bad("none, quarantine or reject"))?),
            "t" => {
                rec.testing = match value {
                    "y" => true,
                    "n" => false,
                    _ => return Err(bad("y or n")),
                }
            }
            "psd" => {
                rec.psd = Some(match value {
                    "y" => 'y',
                    "n" => 'n',
                    "u" => 'u',
                    _ => return Err(bad("y, n or u")),
                })
            }
            "adkim" => rec.adkim = mode(value).ok_or_else(|| bad("r or s"))?,
            "aspf" => rec.aspf = mode(value).ok_or_else(|| bad("r or s"))?,
            "pct" => {
                rec.pct = value
                    .parse::<u8>()
                    .ok()
                    .filter(|&n| n <= 100 && !value.starts_with('+'))
                    .ok_or_else(|| bad("a number from 0 to 100"))?
            }
            "ri" => {
                value
                    .parse::<u32>()
                    .map_err(|_| bad("a number of seconds"))?;
            }
            "fo" => {
                if !value
                    .split(':')
                    .all(|o| matches!(o.trim(), "0" | "1" | "d" | "s"))
                {
                    return Err(bad("a ':'-separated list of 0, 1, d, s"));
                }
            }
            "rf" => {
                if !value
                    .split(':')
                    .all(|f| f.trim().eq_ignore_ascii_case("afrf"))
                {
                    return Err(bad("afrf"));
                }
            }
            "rua" | "ruf" => {
                let uris = uri_list(value).map_err(|r| err(tag, r))?;
                if tag == "rua" {
                    rec.rua = uris;
                } else {
                    rec.ruf = uris;
                }
            }
            _ => rec.unknown.push(tag.to_string()),
        }
    }
    Ok(rec)
}

fn policy(v: &str) -> Option<Policy> {
    match v.to_ascii_lowercase().as_str() {
        "none" => Some(Policy::None),
        "quarantine" => Some(Policy::Quarantine),
        "reject" => Some(Policy::Reject),
        _ => None,
    }
}

fn mode(v: &str) -> Option<AlignmentMode> {
    match v {
        "r" => Some(AlignmentMode::Relaxed),
        "s" => Some(AlignmentMode::Strict),
        _ => None,
    }
}

/// RFC 7489 §6.4 `dmarc-uri *(*WSP "," *WSP dmarc-uri)`, each a URI with an optional `!size`.
fn uri_list(value: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for uri in value.split(',') {
        let uri = uri.trim_matches([' ', '\t']);
        let (base, size) = match uri.rsplit_once('!') {
            Some((b, s)) => (b, Some(s)),
            None => (uri, None),
        };
        if let Some(s) = size {
            let digits = s.trim_end_matches(['k', 'm', 'g', 't']);
            if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
                return Err(format!("bad size limit in {uri:?}"));
            }
        }
        let scheme_end = base.find(':').map_or(0, |i| i + 1);
        let scheme = base[..scheme_end].to_ascii_lowercase();
        if let Some(addr) = (scheme == "mailto:").then(|| &base[scheme_end..]) {
            let domain = addr.rsplit_once('@');
            match domain {
                Some((local, d)) if !local.is_empty() && super::spf::is_domain_name(d) => {}
                _ => return Err(format!("{uri:?} is not a mailto: address")),
            }
        } else if let Some(rest) = (scheme == "https:")
            .then(|| base[scheme_end..].strip_prefix("//"))
            .flatten()
        {
            if rest.is_empty() || rest.contains(' ') {
                return Err(format!("{uri:?} is not an https: URI"));
            }
        } else {
            return Err(format!("{uri:?} is not a mailto: or https: URI"));
        }
        out.push(uri.to_string());
    }
    Ok(out)
}

/// The domain of a `mailto:` report URI.
fn mailto_domain(uri: &str) -> Option<String> {
    let addr = uri
        .get(..7)
        .filter(|s| s.eq_ignore_ascii_case("mailto:"))
        .map(|_| &uri[7..])?;
    let addr = addr.rsplit_once('!').map_or(addr, |(a, _)| a);
    addr.rsplit_once('@').map(|(_, d)| normalize(d))
}

pub(crate) struct Outcome {
    pub checks: Vec<Check>,
    pub aspf_strict: bool,
    pub adkim_strict: bool,
    /// The record's lookup failed: alignment modes are unknown.
    pub failed: bool,
}

pub(crate) async fn check(dns: &Dns, domain: &str, apex_txt: Option<&[String]>) -> Outcome {
    let area = Area::Dmarc;
    let mut out = Outcome {
        checks: Vec::new(),
        aspf_strict: false,
        adkim_strict: false,
        failed: false,
    };
    let org = organizational_domain(domain);
    let mut found = None;
    let mut invalid = None;
    let candidates = if org == domain {
        vec![org.clone()]
    } else {
        vec![domain.to_string(), org.clone()]
    };
    for at in candidates {
        let name = format!("_dmarc.{at}");
        match dns.txt(&name).await {
            Err(e) => {
                out.failed = true;
                out.checks.push(dns_error(area, "dmarc.dns-error", &e));
                out.checks.push(super::unknown(
                    area,
                    "dmarc.record",
                    format!("the DMARC record at {name} is unknown: its lookup failed"),
                ));
                return out;
            }
            Ok(txts) => {
                let txts = txts.unwrap_or_default();
                let recs: Vec<String> = txts.iter().filter(|t| is_dmarc(t)).cloned().collect();
                if !recs.is_empty() {
                    found = Some((at, name, recs));
                    break;
                }
                if invalid.is_none() {
                    if let Some(t) = txts.iter().find(|t| looks_like_dmarc(t)) {
                        invalid = Some((name, t.clone()));
                    }
                }
            }
        }
    }
    let Some((at, name, recs)) = found else {
        if let Some((name, text)) = invalid {
            // Present but not a DMARC record to receivers: the fix keeps every tag as written.
            out.checks.push(
                Check::new(
                    area,
                    "dmarc.record",
                    Status::Fail,
                    format!("{name} has \"{text}\", which is not a DMARC record: it must start with v=DMARC1 (exactly, as the first tag), so receivers discard it and no policy applies"),
                )
                .hint(format!("publish it as \"{}\" at {name}", with_version_first(&text))),
            );
        } else if apex_txt
            .unwrap_or_default()
            .iter()
            .any(|t| is_dmarc(t) || looks_like_dmarc(t) && !super::spf::is_spf(t))
        {
            out.checks.push(
                Check::new(
                    area,
                    "dmarc.location",
                    Status::Fail,
                    format!("a DMARC record is published at {domain} (the apex) instead of _dmarc.{domain}; receivers ignore it"),
                )
                .hint(format!("move the v=DMARC1 TXT record from {domain} to _dmarc.{domain}")),
            );
        } else {
            out.checks.push(
                Check::new(area, "dmarc.record", Status::Fail, format!("no DMARC record at _dmarc.{domain}"))
                    .hint(format!("publish a TXT record \"v=DMARC1; p=quarantine; rua=mailto:postmaster@{domain}\" at _dmarc.{domain}")),
            );
        }
        return out;
    };
    if recs.len() > 1 {
        out.checks.push(
            Check::new(
                area,
                "dmarc.record",
                Status::Fail,
                format!(
                    "{name} has {} DMARC records; receivers ignore them all",
                    recs.len()
                ),
            )
            .hint(format!("keep one v=DMARC1 record at {name}")),
        );
        return out;
    }
    let text = &recs[0];
    out.checks.push(if at == domain {
        Check::new(area, "dmarc.record", Status::Pass, format!("{name}: \"{text}\""))
    } else {
        Check::new(
            area,
            "dmarc.record",
            Status::Info,
            format!("no record at _dmarc.{domain}; the organizational domain's applies: {name}: \"{text}\""),
        )
    });
    let rec = match parse(text) {
        Err(e) => {
            let fix = if e.tag == "p" {
                let value = text
                    .split(';')
                    .filter_map(|t| t.split_once('='))
                    .find(|(n, _)| n.trim() == "p")
                    .map_or("", |(_, v)| v.trim());
                format!(
                    "set p={} in the DMARC record at {name}",
                    intended_policy(value)
                )
            } else {
                format!("fix the tag {:?} in the DMARC record at {name}", e.tag)
            };
            out.checks.push(
                Check::new(
                    area,
                    "dmarc.syntax",
                    Status::Fail,
                    format!("syntax error in {name}: {e}; receivers discard the record"),
                )
                .hint(fix.clone()),
            );
            if e.tag == "p" {
                out.checks.push(
                    Check::new(
                        area,
                        "dmarc.policy",
                        Status::Fail,
                        format!("invalid policy: {e}"),
                    )
                    .hint(fix),
                );
            }
            return out;
        }
        Ok(rec) => rec,
    };
    out.checks.push(if rec.unknown.is_empty() {
        Check::new(area, "dmarc.syntax", Status::Pass, "the record parses")
    } else {
        Check::new(
            area,
            "dmarc.syntax",
            Status::Pass,
            format!(
                "the record parses; receivers ignore the tags they do not know (RFC 7489 §6.3): {}",
                rec.unknown.join(", ")
            ),
        )
    });
    out.aspf_strict = rec.aspf == AlignmentMode::Strict;
    out.adkim_strict = rec.adkim == AlignmentMode::Strict;
    out.checks.push(match rec.p {
        None if !rec.rua.is_empty() => Check::new(
            area,
            "dmarc.policy",
            Status::Fail,
            "no p= tag: receivers act as if p=none (RFC 7489 §6.6.3)",
        )
        .hint(format!(
            "add p=quarantine or p=reject to the DMARC record at {name}"
        )),
        None => Check::new(
            area,
            "dmarc.policy",
            Status::Fail,
            "no p= tag and no rua: receivers apply no DMARC processing (RFC 7489 §6.6.3)",
        )
        .hint(format!(
            "add p=quarantine or p=reject to the DMARC record at {name}"
        )),
        Some(Policy::None) => Check::new(
            area,
            "dmarc.policy",
            Status::Warn,
            "p=none: failing mail is delivered as usual",
        )
        .hint(format!(
            "once reports show SPF/DKIM pass, set p=quarantine at {name}"
        )),
        Some(p) if rec.testing => Check::new(
            area,
            "dmarc.policy",
            Status::Warn,
            format!(
                "p={} with t=y: receivers apply the next weaker policy ({})",
                policy_name(p),
                if p == Policy::Reject {
                    "quarantine"
                } else {
                    "none"
                }
            ),
        )
        .hint(format!("remove t=y from the DMARC record at {name}")),
        Some(p) => Check::new(
            area,
            "dmarc.policy",
            Status::Pass,
            format!("p={}", policy_name(p)),
        ),
    });
    let stricter = |sub: Policy| rec.p.is_some_and(|p| p != Policy::None) && sub == Policy::None;
    if rec.sp.is_some() || rec.np.is_some() || rec.psd == Some('y') {
        let mut problems = Vec::new();
        let mut fixes = Vec::new();
        if rec.sp.is_some_and(stricter) {
            problems.push("sp=none: subdomains are unprotected".to_string());
            fixes.push("remove sp=none or set sp=quarantine");
        }
        if rec.np.is_some_and(stricter) {
            problems
                .push("np=none: mail from subdomains that do not exist is delivered".to_string());
            fixes.push("remove np=none or set np=reject");
        }
        if rec.psd == Some('y') && at == domain {
            problems.push(format!(
                "psd=y declares {at} a public suffix (RFC 9091): its subdomains become organizations of their own and no longer align with each other"
            ));
            fixes.push("remove psd=y");
        }
        out.checks.push(if problems.is_empty() {
            let mut tags = Vec::new();
            if let Some(sp) = rec.sp {
                tags.push(format!("sp={}", policy_name(sp)));
            }
            if let Some(np) = rec.np {
                tags.push(format!("np={}", policy_name(np)));
            }
            Check::new(
                area,
                "dmarc.subdomain-policy",
                Status::Pass,
                tags.join(", "),
            )
        } else {
            Check::new(
                area,
                "dmarc.subdomain-policy",
                Status::Warn,
                problems.join("; "),
            )
            .hint(format!("{} at {name}", fixes.join(", ")))
        });
    }
    out.checks.push(if rec.pct < 100 {
        Check::new(
            area,
            "dmarc.pct",
            Status::Warn,
            format!(
                "pct={}: the policy applies to {}% of failing mail",
                rec.pct, rec.pct
            ),
        )
        .hint(format!("remove pct (or set pct=100) at {name}"))
    } else {
        Check::new(
            area,
            "dmarc.pct",
            Status::Pass,
            "the policy applies to all failing mail",
        )
    });
    for (id, strict, tag) in [
        ("dmarc.aspf", out.aspf_strict, "aspf"),
        ("dmarc.adkim", out.adkim_strict, "adkim"),
    ] {
        out.checks.push(if strict {
            Check::new(area, id, Status::Pass, format!("{tag}=s: strict alignment"))
        } else {
            Check::new(
                area,
                id,
                Status::Info,
                format!("{tag}=r: relaxed alignment (organizational domains must match)"),
            )
        });
    }
    out.checks.push(if rec.rua.is_empty() {
        Check::new(
            area,
            "dmarc.rua",
            Status::Info,
            "no rua: no aggregate reports are requested",
        )
    } else {
        Check::new(
            area,
            "dmarc.rua",
            Status::Pass,
            format!("aggregate reports to {}", rec.rua.join(", ")),
        )
    });
    let mut unauthorized = Vec::new();
    let mut lookup_failed = false;
    let mut checked = 0;
    for uri in rec.rua.iter().chain(rec.ruf.iter()) {
        let Some(dest) = mailto_domain(uri) else {
            continue;
        };
        if organizational_domain(&dest) == organizational_domain(&at) {
            continue;
        }
        checked += 1;
        let auth_name = format!("{at}._report._dmarc.{dest}");
        match dns.txt(&auth_name).await {
            Err(e) => {
                lookup_failed = true;
                out.checks.push(dns_error(area, "dmarc.dns-error", &e));
            }
            Ok(Some(t)) if t.iter().any(|t| is_dmarc(t)) => {}
            Ok(_) => unauthorized.push(auth_name),
        }
    }
    if checked > 0 {
        out.checks.push(if !unauthorized.is_empty() {
            Check::new(
                area,
                "dmarc.report-auth",
                Status::Warn,
                format!(
                    "external report destinations have not authorized {at}: missing {}",
                    unauthorized.join(", ")
                ),
            )
            .hint(format!(
                "ask the destination to publish TXT \"v=DMARC1\" at {}",
                unauthorized.join(", ")
            ))
        } else if lookup_failed {
            super::unknown(
                area,
                "dmarc.report-auth",
                "whether the external report destinations authorize the domain is unknown: a lookup failed",
            )
        } else {
            Check::new(
                area,
                "dmarc.report-auth",
                Status::Pass,
                "every external report destination authorizes the domain",
            )
        });
    }
    out
}

fn policy_name(p: Policy) -> &'static str {
    match p {
        Policy::None => "none",
        Policy::Quarantine => "quarantine",
        Policy::Reject => "reject",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_record() {
        let r = parse("v=DMARC1; p=reject; sp=quarantine; pct=50; adkim=s; aspf=r; rua=mailto:a@ublog.tech,mailto:b@example.org!10m; ruf=mailto:f@ublog.tech; fo=1:d; ri=86400;").unwrap();
        assert_eq!(r.p, Some(Policy::Reject));
        assert_eq!(r.sp, Some(Policy::Quarantine));
        assert_eq!(r.pct, 50);
        assert_eq!(r.adkim, AlignmentMode::Strict);
        assert_eq!(
            r.rua,
            vec!["mailto:a@ublog.tech", "mailto:b@example.org!10m"]
        );
    }

    #[test]
    fn names_the_bad_tag() {
        assert_eq!(parse("v=DMARC1; p=block").unwrap_err().tag, "p");
        assert_eq!(parse("v=DMARC1; p=none; pct=101").unwrap_err().tag, "pct");
        assert_eq!(
            parse("v=DMARC1; p=none; rua=ftp://x").unwrap_err().tag,
            "rua"
        );
        assert_eq!(parse("v=DMARC1; p=none; p=reject").unwrap_err().tag, "p");
        assert_eq!(parse("p=none; v=DMARC1").unwrap_err().tag, "p");
        assert_eq!(parse("v=DMARC1; p=none; junk").unwrap_err().tag, "junk");
    }

    #[test]
    fn comma_separators_are_reported() {
        let e = parse("v=DMARC1, p=reject").unwrap_err();
        assert_eq!(e.tag, "v");
        assert!(e.reason.contains("separated by ';'"), "{e}");
    }

    #[test]
    fn unknown_tags_are_kept() {
        let r = parse("v=DMARC1;p=none;foo=bar").unwrap();
        assert_eq!(r.unknown, vec!["foo"]);
    }

    #[test]
    fn later_tags_are_known() {
        let r = parse("v=DMARC1; p=reject; np=reject; t=n; psd=n").unwrap();
        assert!(r.unknown.is_empty());
        assert_eq!(r.np, Some(Policy::Reject));
        assert_eq!(parse("v=DMARC1; p=reject; t=yes").unwrap_err().tag, "t");
    }

    #[test]
    fn version_tag_is_exact_but_blanks_are_allowed() {
        assert!(is_dmarc("v = DMARC1; p=reject"));
        assert!(is_dmarc("v=DMARC1"));
        assert!(!is_dmarc("v=dmarc1; p=reject"));
        assert!(!is_dmarc("v=DMARC10; p=reject"));
        assert!(looks_like_dmarc("v=dmarc1; p=reject"));
        assert!(looks_like_dmarc("p=reject; v=DMARC1"));
        assert!(!looks_like_dmarc("google-site-verification=abc"));
        assert_eq!(
            with_version_first("p=reject; v=DMARC1; rua=mailto:d@ublog.tech"),
            "v=DMARC1; p=reject; rua=mailto:d@ublog.tech"
        );
        assert_eq!(intended_policy("rejct"), "reject");
        assert_eq!(intended_policy("block"), "reject");
        assert_eq!(intended_policy("quarantaine"), "quarantine");
    }
}

#[cfg(test)]
mod fuzz_regressions {
    use super::*;

    #[test]
    fn empty_record_is_not_dmarc() {
        // Found by the dmarc fuzz target: "" parsed as a record with default tags.
        assert!(parse("").is_err());
        assert!(parse("  ").is_err());
        assert!(parse("v=DMARC1; p=none;").is_ok());
    }
}
