//! Relay URLs: `smtp+tls://[label@]host[:port]` (STARTTLS required), `smtps://…` (implicit
//! TLS) and `smtp://…` (plaintext), as OpenSMTPD writes them.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// How the connection to a relay is secured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RelaySecurity {
    /// `smtp+tls://`: plain connect, then STARTTLS, which must succeed.
    StartTls,
    /// `smtps://`: TLS from the first byte (RFC 8314).
    Implicit,
    /// `smtp://`: no TLS at all.
    Plain,
}

impl RelaySecurity {
    pub fn scheme(self) -> &'static str {
        match self {
            RelaySecurity::StartTls => "smtp+tls",
            RelaySecurity::Implicit => "smtps",
            RelaySecurity::Plain => "smtp",
        }
    }

    /// Port used when the URL names none.
    pub fn default_port(self) -> u16 {
        match self {
            RelaySecurity::StartTls | RelaySecurity::Plain => 25,
            RelaySecurity::Implicit => 465,
        }
    }
}

/// One relay host.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RelayUrl {
    pub security: RelaySecurity,
    /// Key of the credentials in the action's secrets table.
    pub label: Option<String>,
    /// A lower-cased host name, an IPv4 address, or an IPv6 address without brackets.
    pub host: String,
    pub port: u16,
}

/// Why a string is not a relay URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayUrlError(String);

impl fmt::Display for RelayUrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RelayUrlError {}

fn error(text: &str, why: &str) -> RelayUrlError {
    RelayUrlError(format!("invalid relay URL `{text}`: {why}"))
}

impl FromStr for RelayUrl {
    type Err = RelayUrlError;

    fn from_str(text: &str) -> Result<RelayUrl, RelayUrlError> {
        let (scheme, rest) = text.split_once("://").ok_or_else(|| {
            error(
                text,
                "expected smtp+tls://[label@]host[:port], smtps://… or smtp://…",
            )
        })?;
        let security = match scheme.to_ascii_lowercase().as_str() {
            "smtp+tls" => RelaySecurity::StartTls,
            "smtps" => RelaySecurity::Implicit,
            "smtp" => RelaySecurity::Plain,
            _ => {
                return Err(error(
                    text,
                    &format!("unknown scheme `{scheme}` (use smtp+tls, smtps or smtp)"),
                ))
            }
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#']) {
            return Err(error(text, "a relay URL has no path, query or fragment"));
        }
        let (label, hostport) = match rest.rsplit_once('@') {
            Some((label, hostport)) => (Some(label), hostport),
            None => (None, rest),
        };
        if let Some(label) = label {
            if label.contains(':') {
                return Err(error(
                    text,
                    "passwords do not belong in the URL: put them in the secrets table",
                ));
            }
            if label.is_empty()
                || label
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || "@[]".contains(c))
            {
                return Err(error(text, "invalid label before `@`"));
            }
        }
        let (host, port) = split_host_port(text, hostport)?;
        let port = match port {
            None => security.default_port(),
            Some(p) => match p.parse::<u16>() {
                // `parse` accepts a leading `+`; a port is digits only.
                Ok(n) if n != 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err(error(text, &format!("invalid port `{p}`"))),
            },
        };
        Ok(RelayUrl {
            security,
            label: label.map(str::to_string),
            host,
            port,
        })
    }
}

/// Splits `host[:port]` or `[ipv6][:port]`; validates the host.
fn split_host_port<'a>(
    text: &str,
    hostport: &'a str,
) -> Result<(String, Option<&'a str>), RelayUrlError> {
    if let Some(bracketed) = hostport.strip_prefix('[') {
        let (literal, after) = bracketed
            .split_once(']')
            .ok_or_else(|| error(text, "missing `]` after the IPv6 address"))?;
        let address: Ipv6Addr = literal
            .parse()
            .map_err(|_| error(text, &format!("invalid IPv6 address `{literal}`")))?;
        let port = match after {
            "" => None,
            _ => Some(
                after
                    .strip_prefix(':')
                    .ok_or_else(|| error(text, "expected `:port` after `]`"))?,
            ),
        };
        return Ok((address.to_string(), port));
    }
    let (host, port) = match hostport.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (hostport, None),
    };
    if host.is_empty() {
        return Err(error(text, "no host"));
    }
    if host.parse::<Ipv4Addr>().is_ok() {
        return Ok((host.to_string(), port));
    }
    if !is_host_name(host) {
        return Err(error(
            text,
            &format!("invalid host `{host}` (IPv6 addresses go in brackets)"),
        ));
    }
    Ok((host.to_ascii_lowercase(), port))
}

/// A DNS host name: dot-separated labels of letters, digits and inner hyphens.
pub(crate) fn is_host_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    host.len() <= 253
        && !host.split('.').any(|label| {
            label.is_empty()
                || label.len() > 63
                || label.starts_with('-')
                || label.ends_with('-')
                || !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
        // An all-numeric name is a mistyped IPv4 address, not a host.
        && !host.split('.').all(|l| l.chars().all(|c| c.is_ascii_digit()))
}

impl fmt::Display for RelayUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.security.scheme())?;
        if let Some(label) = &self.label {
            write!(f, "{label}@")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]", self.host)?;
        } else {
            f.write_str(&self.host)?;
        }
        if self.port != self.security.default_port() {
            write!(f, ":{}", self.port)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> RelayUrl {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn the_ublog_relay() {
        assert_eq!(
            url("smtp+tls://papmx@smtp.paphosting.net"),
            RelayUrl {
                security: RelaySecurity::StartTls,
                label: Some("papmx".into()),
                host: "smtp.paphosting.net".into(),
                port: 25,
            }
        );
    }

    #[test]
    fn schemes_ports_and_hosts() {
        let u = url("smtps://mx.example.org");
        assert_eq!(
            (u.security, u.port, u.label),
            (RelaySecurity::Implicit, 465, None)
        );
        let u = url("smtp://192.0.2.7:2525");
        assert_eq!(
            (u.security, u.host.as_str(), u.port),
            (RelaySecurity::Plain, "192.0.2.7", 2525)
        );
        let u = url("smtp+tls://k@[2001:db8::1]:587");
        assert_eq!(
            (u.host.as_str(), u.port, u.label.as_deref()),
            ("2001:db8::1", 587, Some("k"))
        );
        let u = url("SMTPS://MX.Example.ORG/");
        assert_eq!(u.host, "mx.example.org");
        assert_eq!(url("smtp+tls://[::1]").host, "::1");
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "smtp+tls://papmx@smtp.paphosting.net",
            "smtps://mx.example.org",
            "smtps://mx.example.org:2465",
            "smtp://192.0.2.7:2525",
            "smtp+tls://k@[2001:db8::1]:587",
            "smtp+tls://[::1]",
            "smtp://relay.example.",
        ] {
            let u = url(s);
            assert_eq!(u.to_string(), s);
            assert_eq!(url(&u.to_string()), u);
        }
        // Default ports are left out, explicit ones are kept.
        assert_eq!(
            url("smtps://a.example:465").to_string(),
            "smtps://a.example"
        );
        assert_eq!(
            url("smtp+tls://a.example:465").to_string(),
            "smtp+tls://a.example:465"
        );
    }

    #[test]
    fn malformed_urls_say_what_is_wrong() {
        let cases = [
            ("smtp.example.org", "invalid relay URL `smtp.example.org`: expected smtp+tls://[label@]host[:port], smtps://… or smtp://…"),
            ("lmtp://x.example", "invalid relay URL `lmtp://x.example`: unknown scheme `lmtp` (use smtp+tls, smtps or smtp)"),
            ("smtp+tls://u:pw@x.example", "invalid relay URL `smtp+tls://u:pw@x.example`: passwords do not belong in the URL: put them in the secrets table"),
            ("smtp+tls://x.example:0", "invalid relay URL `smtp+tls://x.example:0`: invalid port `0`"),
            ("smtp+tls://x.example:65536", "invalid relay URL `smtp+tls://x.example:65536`: invalid port `65536`"),
            ("smtp+tls://x.example:", "invalid relay URL `smtp+tls://x.example:`: invalid port ``"),
            ("smtp+tls://x.example:+25", "invalid relay URL `smtp+tls://x.example:+25`: invalid port `+25`"),
            ("smtp+tls://2001:db8::1", "invalid relay URL `smtp+tls://2001:db8::1`: invalid host `2001` (IPv6 addresses go in brackets)"),
            ("smtp+tls://[2001:db8::1", "invalid relay URL `smtp+tls://[2001:db8::1`: missing `]` after the IPv6 address"),
            ("smtp+tls://[x]", "invalid relay URL `smtp+tls://[x]`: invalid IPv6 address `x`"),
            ("smtp+tls://", "invalid relay URL `smtp+tls://`: no host"),
            ("smtp+tls://@x.example", "invalid relay URL `smtp+tls://@x.example`: invalid label before `@`"),
            ("smtp+tls://bad_host.example", "invalid relay URL `smtp+tls://bad_host.example`: invalid host `bad_host.example` (IPv6 addresses go in brackets)"),
            ("smtp+tls://300.1.1.1", "invalid relay URL `smtp+tls://300.1.1.1`: invalid host `300.1.1.1` (IPv6 addresses go in brackets)"),
            ("smtp+tls://x.example/path", "invalid relay URL `smtp+tls://x.example/path`: a relay URL has no path, query or fragment"),
        ];
        for (input, message) in cases {
            assert_eq!(
                input.parse::<RelayUrl>().map_err(|e| e.to_string()),
                Err(message.to_string()),
                "{input}"
            );
        }
    }
}
