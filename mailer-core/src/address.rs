//! Mail addresses as SMTP carries them (RFC 5321 §4.1.2, RFC 6531 for UTF-8).
//!
//! One address type for the whole crate: the envelope, match rules, aliases and the relay all
//! speak [`Address`]. The domain is kept lower-cased (domains are case-insensitive); the local
//! part is kept exactly as given, because only the final host may interpret its case.

use std::fmt;

/// Longest local part (RFC 5321 §4.5.3.1.1).
pub const MAX_LOCAL_PART: usize = 64;
/// Longest domain (RFC 5321 §4.5.3.1.2).
pub const MAX_DOMAIN: usize = 255;

/// A mailbox `local@domain`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address {
    local: String,
    domain: String,
}

/// Why a string is not an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AddressError {
    Empty,
    MissingAt,
    LocalPartEmpty,
    LocalPartTooLong,
    LocalPartInvalid,
    DomainEmpty,
    DomainTooLong,
    DomainInvalid,
    /// Non-ASCII where the client did not announce SMTPUTF8.
    Utf8NotAllowed,
}

impl fmt::Display for AddressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AddressError::Empty => "empty address",
            AddressError::MissingAt => "address has no @domain",
            AddressError::LocalPartEmpty => "empty local part",
            AddressError::LocalPartTooLong => "local part longer than 64 octets",
            AddressError::LocalPartInvalid => "invalid local part",
            AddressError::DomainEmpty => "empty domain",
            AddressError::DomainTooLong => "domain longer than 255 octets",
            AddressError::DomainInvalid => "invalid domain",
            AddressError::Utf8NotAllowed => "non-ASCII address without SMTPUTF8",
        })
    }
}

impl std::error::Error for AddressError {}

impl Address {
    /// Parses `local@domain`, accepting UTF-8 (RFC 6531). Use [`Address::parse_ascii`] where
    /// SMTPUTF8 was not negotiated.
    pub fn parse(s: &str) -> Result<Address, AddressError> {
        Self::parse_with(s, true)
    }

    /// Parses `local@domain`, refusing non-ASCII octets.
    pub fn parse_ascii(s: &str) -> Result<Address, AddressError> {
        Self::parse_with(s, false)
    }

    /// Parses `local@domain`; `utf8` says whether non-ASCII is allowed.
    pub fn parse_with(s: &str, utf8: bool) -> Result<Address, AddressError> {
        if s.is_empty() {
            return Err(AddressError::Empty);
        }
        if !utf8 && !s.is_ascii() {
            return Err(AddressError::Utf8NotAllowed);
        }
        let at = split_at_domain(s).ok_or(AddressError::MissingAt)?;
        let (local, domain) = (&s[..at], &s[at + 1..]);
        validate_local(local)?;
        validate_domain(domain)?;
        Ok(Address {
            local: local.to_string(),
            domain: domain.to_ascii_lowercase(),
        })
    }

    /// Builds an address from parts already known to be valid (e.g. a rewrite of a parsed one).
    pub fn from_parts(local: &str, domain: &str) -> Result<Address, AddressError> {
        validate_local(local)?;
        validate_domain(domain)?;
        Ok(Address {
            local: local.to_string(),
            domain: domain.to_ascii_lowercase(),
        })
    }

    pub fn local_part(&self) -> &str {
        &self.local
    }

    /// The domain, lower-cased.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The local part without a `+detail` suffix, lower-cased: the key for user and alias
    /// lookups, which are case-insensitive.
    pub fn user(&self) -> String {
        let base = self.local.split('+').next().unwrap_or(&self.local);
        base.to_lowercase()
    }

    /// Whether the address needs SMTPUTF8 to be transmitted.
    pub fn is_utf8(&self) -> bool {
        !self.local.is_ascii() || !self.domain.is_ascii()
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

impl std::str::FromStr for Address {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Address::parse(s)
    }
}

impl serde::Serialize for Address {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Address {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Address::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Position of the `@` that separates local part and domain: the last one outside a quoted
/// string (a quoted local part may itself contain `@`).
fn split_at_domain(s: &str) -> Option<usize> {
    let mut in_quotes = false;
    let mut escaped = false;
    let mut at = None;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            '@' if !in_quotes => at = Some(i),
            _ => {}
        }
    }
    at
}

fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

fn validate_local(local: &str) -> Result<(), AddressError> {
    if local.is_empty() {
        return Err(AddressError::LocalPartEmpty);
    }
    if local.len() > MAX_LOCAL_PART {
        return Err(AddressError::LocalPartTooLong);
    }
    if let Some(inner) = local.strip_prefix('"') {
        // Quoted-string: qtextSMTP or quoted-pairSMTP up to the closing quote, nothing after.
        let inner = inner
            .strip_suffix('"')
            .ok_or(AddressError::LocalPartInvalid)?;
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some(' '..='~') => {}
                    _ => return Err(AddressError::LocalPartInvalid),
                },
                '"' => return Err(AddressError::LocalPartInvalid),
                ' '..='~' => {}
                c if !c.is_ascii() => {}
                _ => return Err(AddressError::LocalPartInvalid),
            }
        }
        return Ok(());
    }
    // Dot-string: atoms separated by single dots.
    if local
        .split('.')
        .any(|atom| atom.is_empty() || !atom.chars().all(is_atext))
    {
        return Err(AddressError::LocalPartInvalid);
    }
    Ok(())
}

fn validate_domain(domain: &str) -> Result<(), AddressError> {
    if domain.is_empty() {
        return Err(AddressError::DomainEmpty);
    }
    if domain.len() > MAX_DOMAIN {
        return Err(AddressError::DomainTooLong);
    }
    if let Some(literal) = domain.strip_prefix('[') {
        let literal = literal
            .strip_suffix(']')
            .ok_or(AddressError::DomainInvalid)?;
        let ok = match literal.get(..5) {
            Some(tag) if tag.eq_ignore_ascii_case("IPv6:") => {
                literal[5..].parse::<std::net::Ipv6Addr>().is_ok()
            }
            _ => literal.parse::<std::net::Ipv4Addr>().is_ok(),
        };
        return if ok {
            Ok(())
        } else {
            Err(AddressError::DomainInvalid)
        };
    }
    for label in domain.split('.') {
        let valid = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || !c.is_ascii());
        if !valid {
            return Err(AddressError::DomainInvalid);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_is_lowercased_local_part_kept() {
        let a = Address::parse("John.Doe@Example.ORG").unwrap();
        assert_eq!(a.local_part(), "John.Doe");
        assert_eq!(a.domain(), "example.org");
        assert_eq!(a.to_string(), "John.Doe@example.org");
        assert_eq!(a.user(), "john.doe");
    }

    #[test]
    fn detail_is_dropped_from_user() {
        assert_eq!(Address::parse("root+cron@x.org").unwrap().user(), "root");
    }

    #[test]
    fn quoted_local_parts_and_literals() {
        assert!(Address::parse("\"john doe\"@example.org").is_ok());
        assert!(Address::parse("\"a@b\"@example.org").is_ok());
        assert_eq!(
            Address::parse("\"a@b\"@example.org").unwrap().domain(),
            "example.org"
        );
        assert!(Address::parse("postmaster@[127.0.0.1]").is_ok());
        assert!(Address::parse("postmaster@[IPv6:::1]").is_ok());
        assert_eq!(
            Address::parse("x@[300.1.1.1]"),
            Err(AddressError::DomainInvalid)
        );
    }

    #[test]
    fn invalid_addresses_say_why() {
        assert_eq!(Address::parse(""), Err(AddressError::Empty));
        assert_eq!(Address::parse("root"), Err(AddressError::MissingAt));
        assert_eq!(Address::parse("@x.org"), Err(AddressError::LocalPartEmpty));
        assert_eq!(
            Address::parse("a..b@x.org"),
            Err(AddressError::LocalPartInvalid)
        );
        assert_eq!(
            Address::parse("a b@x.org"),
            Err(AddressError::LocalPartInvalid)
        );
        assert_eq!(Address::parse("a@-x.org"), Err(AddressError::DomainInvalid));
        assert_eq!(Address::parse("a@x..org"), Err(AddressError::DomainInvalid));
        let long = format!("{}@x.org", "a".repeat(65));
        assert_eq!(Address::parse(&long), Err(AddressError::LocalPartTooLong));
    }

    #[test]
    fn utf8_needs_smtputf8() {
        assert!(Address::parse("jösé@exämple.org").is_ok());
        assert_eq!(
            Address::parse_ascii("jösé@example.org"),
            Err(AddressError::Utf8NotAllowed)
        );
        assert!(Address::parse("jösé@example.org").unwrap().is_utf8());
    }
}
