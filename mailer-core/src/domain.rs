//! Domain names as mail policy compares them: one normal form, one organizational domain and
//! one alignment rule, so the relay's alignment check and `mailer check` can never judge the
//! same names apart.

/// DMARC `aspf` / `adkim` alignment mode (RFC 7489 §3.1.1, §6.3).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum AlignmentMode {
    /// The two domains are equal (ignoring case).
    Strict,
    /// The two domains share an organizational domain; DMARC's default.
    #[default]
    Relaxed,
}

/// Whether two domains align under `mode` (RFC 7489 §3.1). Case and one trailing dot are
/// ignored; an empty domain aligns with nothing.
pub fn aligned(a: &str, b: &str, mode: AlignmentMode) -> bool {
    let (a, b) = (normalize(a), normalize(b));
    if a.is_empty() || b.is_empty() {
        return false;
    }
    match mode {
        AlignmentMode::Strict => a == b,
        AlignmentMode::Relaxed => a == b || organizational_domain(&a) == organizational_domain(&b),
    }
}

/// Trimmed, lower-cased, without the trailing dot of an absolute name.
pub fn normalize(domain: &str) -> String {
    let domain = domain.trim();
    domain.trim_end_matches('.').to_lowercase()
}

/// The organizational domain (RFC 7489 §3.2): the public suffix plus one label, from the
/// Public Suffix List. A name that is itself a public suffix is its own organizational domain.
pub fn organizational_domain(domain: &str) -> String {
    let domain = normalize(domain);
    match psl::domain_str(&domain) {
        Some(org) => org.to_string(),
        None => domain,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_differ_only_in_form_are_one_organization() {
        for name in ["Mail.Ublog.TECH.", " ublog.tech", "a.b.ublog.tech"] {
            assert_eq!(organizational_domain(name), "ublog.tech", "{name:?}");
        }
        assert_eq!(organizational_domain("co.uk"), "co.uk");
        assert_eq!(normalize("Example.ORG."), "example.org");
    }
}
