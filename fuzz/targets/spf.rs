//! The SPF record parser (RFC 7208 §4.5, §5, §6).
//!
//! Invariants: a parsed record is one `is_spf` recognises, with prefixes in range and at most
//! one redirect and one exp; written back in canonical form it parses to the same terms.

use mailer_core::check::spf::{is_spf, parse, Mechanism, Qualifier, SpfRecord, Term};

fn write_domain_cidr(out: &mut String, d: &Option<String>, c4: Option<u8>, c6: Option<u8>) {
    if let Some(d) = d {
        out.push(':');
        out.push_str(d);
    }
    if let Some(c) = c4 {
        out.push_str(&format!("/{c}"));
    }
    if let Some(c) = c6 {
        out.push_str(&format!("//{c}"));
    }
}

/// The record in canonical form: explicit qualifiers, one space between terms.
fn write(record: &SpfRecord) -> String {
    let mut out = String::from("v=spf1");
    for term in &record.terms {
        out.push(' ');
        match term {
            Term::Mechanism(q, m) => {
                out.push(match q {
                    Qualifier::Pass => '+',
                    Qualifier::Fail => '-',
                    Qualifier::SoftFail => '~',
                    Qualifier::Neutral => '?',
                });
                match m {
                    Mechanism::All => out.push_str("all"),
                    Mechanism::Include(d) => out.push_str(&format!("include:{d}")),
                    Mechanism::Exists(d) => out.push_str(&format!("exists:{d}")),
                    Mechanism::Ptr(d) => {
                        out.push_str("ptr");
                        if let Some(d) = d {
                            out.push_str(&format!(":{d}"));
                        }
                    }
                    Mechanism::A {
                        domain,
                        cidr4,
                        cidr6,
                    } => {
                        out.push('a');
                        write_domain_cidr(&mut out, domain, *cidr4, *cidr6);
                    }
                    Mechanism::Mx {
                        domain,
                        cidr4,
                        cidr6,
                    } => {
                        out.push_str("mx");
                        write_domain_cidr(&mut out, domain, *cidr4, *cidr6);
                    }
                    Mechanism::Ip4 { addr, prefix } => {
                        out.push_str(&format!("ip4:{addr}/{prefix}"))
                    }
                    Mechanism::Ip6 { addr, prefix } => {
                        out.push_str(&format!("ip6:{addr}/{prefix}"))
                    }
                }
            }
            Term::Redirect(d) => out.push_str(&format!("redirect={d}")),
            Term::Exp(d) => out.push_str(&format!("exp={d}")),
            Term::Unknown { name, value } => out.push_str(&format!("{name}={value}")),
        }
    }
    out
}

pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(record) = parse(text) else {
        return;
    };
    assert!(is_spf(text));
    let count = |f: fn(&Term) -> bool| record.terms.iter().filter(|t| f(t)).count();
    assert!(
        count(|t| matches!(t, Term::Redirect(_))) <= 1,
        "two redirects"
    );
    assert!(count(|t| matches!(t, Term::Exp(_))) <= 1, "two exp");
    for term in &record.terms {
        if let Term::Mechanism(_, m) = term {
            match m {
                Mechanism::Ip4 { prefix, .. } => assert!(*prefix <= 32),
                Mechanism::Ip6 { prefix, .. } => assert!(*prefix <= 128),
                Mechanism::A { cidr4, cidr6, .. } | Mechanism::Mx { cidr4, cidr6, .. } => {
                    assert!(cidr4.is_none_or(|c| c <= 32));
                    assert!(cidr6.is_none_or(|c| c <= 128));
                }
                _ => {}
            }
        }
    }
    let written = write(&record);
    assert_eq!(
        parse(&written),
        Ok(record),
        "canonical form {written:?} parses differently"
    );
}
