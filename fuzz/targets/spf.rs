//! The SPF record parser (RFC 7208 §4.5, §5, §6).
//!
//! Invariants: a parsed record is one `is_spf` recognises, with prefixes in range and at most
//! one redirect and one exp; every domain-spec expands (RFC 7208 §7) to a name of at most 253
//! octets or to nothing; written back in canonical form it parses to the same terms.

use mailer_core::check::spf::{
    expand_macros, is_spf, parse, Mechanism, Qualifier, SpfRecord, Term,
};

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
    // Macro expansion (RFC 7208 §7) of every domain-spec: bounded output, no panic.
    for term in &record.terms {
        let spec = match term {
            Term::Mechanism(_, Mechanism::Include(d) | Mechanism::Exists(d)) => Some(d),
            Term::Mechanism(_, Mechanism::A { domain, .. } | Mechanism::Mx { domain, .. }) => {
                domain.as_ref()
            }
            Term::Mechanism(_, Mechanism::Ptr(d)) => d.as_ref(),
            Term::Redirect(d) | Term::Exp(d) => Some(d),
            _ => None,
        };
        if let Some(spec) = spec {
            for ip in ["192.0.2.3", "2001:db8::cb01"] {
                let ip = ip.parse().expect("literal address");
                if let Some(name) = expand_macros(
                    spec,
                    ip,
                    "email.example.com",
                    "strong-bad@email.example.com",
                ) {
                    assert!(
                        name.len() <= 253,
                        "expansion of {spec:?} is {} octets",
                        name.len()
                    );
                }
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
