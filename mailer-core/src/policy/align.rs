//! DMARC identifier alignment (RFC 7489 §3.1): does the domain of the header `From:` match
//! the domain of the (rewritten) envelope sender, the identity SPF authenticates?
//!
//! A relay that rewrites the envelope sender to its own domain keeps SPF passing, but DMARC
//! only counts that pass when the header From aligns with it. This module tells the operator
//! before the receiving side does.

use std::borrow::Cow;
use std::fmt;

use mail_parser::{HeaderName, HeaderValue, MessageParser};

use crate::address::Address;
use crate::domain::normalize;
pub use crate::domain::organizational_domain;

/// Most of a message scanned for its header section. Headers that do not end within it are
/// reported as [`FromError::HeaderSectionTooLarge`] rather than parsed.
pub const MAX_HEADER_SECTION: usize = 1024 * 1024;

pub use crate::domain::{aligned, AlignmentMode};

/// Why the author domain of a message cannot be determined. RFC 7489 §6.6.1 treats all of
/// these as a message DMARC cannot evaluate, so none is guessed around.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FromError {
    /// No empty line ends the header section within [`MAX_HEADER_SECTION`] octets.
    HeaderSectionTooLarge,
    /// The header section has no `From:` field.
    Missing,
    /// More than one `From:` field (the count).
    MultipleFields(usize),
    /// One `From:` field naming more than one mailbox (the count).
    MultipleAddresses(usize),
    /// `From:` uses group syntax, which RFC 5322 §3.6.2 does not allow there.
    Group,
    /// `From:` holds no mailbox that could be parsed.
    NoAddress,
    /// The mailbox in `From:` (as given) is not `local@domain`: no `@`, or an unquoted `@`
    /// in the local part that leaves the domain ambiguous.
    InvalidAddress(String),
    /// The domain in `From:` (as given) is not a host name.
    InvalidDomain(String),
}

impl fmt::Display for FromError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FromError::HeaderSectionTooLarge => write!(
                f,
                "header section does not end within {MAX_HEADER_SECTION} octets"
            ),
            FromError::Missing => f.write_str("no From: header field"),
            FromError::MultipleFields(n) => write!(f, "{n} From: header fields (one allowed)"),
            FromError::MultipleAddresses(n) => {
                write!(f, "From: names {n} mailboxes (one allowed)")
            }
            FromError::Group => f.write_str("From: uses group syntax"),
            FromError::NoAddress => f.write_str("From: holds no parsable mailbox"),
            FromError::InvalidAddress(a) => {
                write!(f, "From: address {a:?} is not local@domain")
            }
            FromError::InvalidDomain(d) => write!(f, "From: domain {d:?} is not a host name"),
        }
    }
}

impl std::error::Error for FromError {}

/// The outcome of [`check_alignment`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Alignment {
    Aligned,
    Misaligned {
        header_domain: String,
        envelope_domain: String,
    },
    /// A bounce: the null reverse-path has no domain to align with.
    NullSender,
    NoHeaderFrom(FromError),
}

/// The lower-cased domain of the single mailbox in the single `From:` field of `message`.
/// Only the header section is read (up to the first empty line), never more than
/// [`MAX_HEADER_SECTION`] octets of it.
pub fn header_from_domain(message: &[u8]) -> Result<String, FromError> {
    let headers = header_section(message)?;
    // The parser needs the last field terminated, which a headers-only message may not be.
    let headers: Cow<[u8]> = if headers.ends_with(b"\n") {
        Cow::Borrowed(headers)
    } else {
        Cow::Owned([headers, b"\r\n"].concat())
    };
    let parsed = MessageParser::new()
        .parse_headers(headers.as_ref())
        .ok_or(FromError::Missing)?;

    let mut from_fields = parsed
        .headers()
        .iter()
        .filter(|h| h.name == HeaderName::From);
    let field = from_fields.next().ok_or(FromError::Missing)?;
    let extra = from_fields.count();
    if extra > 0 {
        return Err(FromError::MultipleFields(extra + 1));
    }

    let mailbox = match &field.value {
        HeaderValue::Address(mail_parser::Address::List(list)) => match list.as_slice() {
            [one] => one,
            [] => return Err(FromError::NoAddress),
            many => return Err(FromError::MultipleAddresses(many.len())),
        },
        HeaderValue::Address(mail_parser::Address::Group(_)) => return Err(FromError::Group),
        _ => return Err(FromError::NoAddress),
    };
    let address = mailbox
        .address
        .as_deref()
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .ok_or(FromError::NoAddress)?;
    let (local, domain) = address
        .rsplit_once('@')
        .ok_or_else(|| FromError::InvalidAddress(address.to_string()))?;
    if local.is_empty() || (!local.starts_with('"') && local.contains('@')) {
        return Err(FromError::InvalidAddress(address.to_string()));
    }
    let domain = normalize(domain);
    if !is_host_name(&domain) {
        return Err(FromError::InvalidDomain(domain));
    }
    Ok(domain)
}

/// Checks the header From of `message` against the envelope sender it will be relayed with.
pub fn check_alignment(
    message: &[u8],
    envelope_sender: Option<&Address>,
    mode: AlignmentMode,
) -> Alignment {
    let Some(sender) = envelope_sender else {
        return Alignment::NullSender;
    };
    let header_domain = match header_from_domain(message) {
        Ok(domain) => domain,
        Err(e) => return Alignment::NoHeaderFrom(e),
    };
    let envelope_domain = normalize(sender.domain());
    if aligned(&header_domain, &envelope_domain, mode) {
        Alignment::Aligned
    } else {
        Alignment::Misaligned {
            header_domain,
            envelope_domain,
        }
    }
}

/// The header section of `message` including the line break that ends its last field.
fn header_section(message: &[u8]) -> Result<&[u8], FromError> {
    let scanned = &message[..message.len().min(MAX_HEADER_SECTION)];
    let mut line_start = 0;
    for (i, &b) in scanned.iter().enumerate() {
        if b == b'\n' {
            let line = &scanned[line_start..i];
            if line.is_empty() || line == b"\r" {
                return Ok(&scanned[..line_start]);
            }
            line_start = i + 1;
        }
    }
    if message.len() > MAX_HEADER_SECTION {
        Err(FromError::HeaderSectionTooLarge)
    } else {
        // A message of headers only.
        Ok(message)
    }
}

/// Dot-separated labels of letters, digits, hyphens or non-ASCII (an IDN as given), within
/// the DNS length limits. Domain literals are not host names and cannot carry a DMARC policy.
fn is_host_name(domain: &str) -> bool {
    !domain.is_empty()
        && domain.len() <= crate::address::MAX_DOMAIN
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| {
                    c.is_ascii_alphanumeric()
                        || c == '-'
                        || (!c.is_ascii() && !c.is_whitespace() && !c.is_control())
                })
        })
}
