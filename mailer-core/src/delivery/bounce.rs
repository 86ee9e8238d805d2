//! Delivery status notifications (bounces and delay warnings), RFC 3464 inside an RFC 6522
//! `multipart/report`.
//!
//! The report goes back to the original envelope sender with a null reverse-path (the queue's
//! business) and `Auto-Submitted: auto-replied` (RFC 3834), so a bounce never bounces. Anything
//! that comes from outside — the remote server's reply, the original headers — is sanitised
//! here: the output has CRLF line endings only, no NUL, and no field can grow a second line
//! that a reader would take for a header of its own.

use std::time::SystemTime;

use mail_builder::headers::address::Address as HeaderAddress;
use mail_builder::headers::content_type::ContentType;
use mail_builder::headers::message_id::MessageId;
use mail_builder::headers::raw::Raw;
use mail_builder::headers::text::Text;
use mail_builder::mime::{BodyPart, MimePart};
use mail_builder::MessageBuilder;

use crate::address::Address;
use crate::delivery::EnhancedStatus;
use crate::time::{rfc5322, unix_seconds};

/// Most of the original header section quoted in the `text/rfc822-headers` part.
pub const MAX_QUOTED_HEADERS: usize = 64 * 1024;

/// Longest value written into a delivery-status field, so a folded line never comes near the
/// 998-octet limit of RFC 5322 §2.1.1 even when a value has no space to fold at.
const MAX_FIELD_VALUE: usize = 900;

/// Line length the delivery-status fields are folded to (RFC 5322 §2.1.1 "SHOULD").
const FOLD_AT: usize = 78;

/// The display name of the `From:` of every report.
const FROM_NAME: &str = "Mail Delivery System";

/// Everything a report says; the caller (the queue) supplies the facts, nothing is read here.
#[derive(Clone, Debug)]
pub struct DsnInput<'a> {
    /// Our host name: `Reporting-MTA: dns; <it>`.
    pub reporting_mta: &'a str,
    /// The report's author, normally `MAILER-DAEMON@<hostname>`.
    pub postmaster: Address,
    /// The envelope sender as the client gave it (before any rewriting): the report's `To:`.
    pub original_sender: &'a Address,
    /// Our queue ID of the message, named in the text and as `X-Mailer-Queue-ID`. It is not an
    /// `Original-Envelope-Id`: that field carries only the client's ENVID (RFC 3464 §2.2.1).
    pub queue_id: &'a str,
    /// When we accepted the message: `Arrival-Date`.
    pub arrival: SystemTime,
    /// When the report is made: `Date:`.
    pub now: SystemTime,
    pub kind: DsnKind,
    pub recipients: &'a [DsnRecipient<'a>],
    /// The original message, or its start through the end of its header section: only the
    /// header section is quoted.
    pub original: &'a [u8],
    /// Right-hand side of the report's `Message-ID`.
    pub message_id_domain: &'a str,
}

/// What the report announces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DsnKind {
    /// Delivery failed for good (`Action: failed`).
    Failure,
    /// Delivery is late and will be retried until `until` (`Action: delayed`).
    Delay { until: SystemTime },
}

/// One recipient the report is about.
#[derive(Clone, Debug)]
pub struct DsnRecipient<'a> {
    /// The address the client gave, when an alias rewrote it (`Original-Recipient`).
    pub original: Option<&'a Address>,
    /// The address delivery was attempted to (`Final-Recipient`).
    pub final_recipient: &'a Address,
    pub status: EnhancedStatus,
    /// The host that gave the reply (`Remote-MTA: dns; <it>`).
    pub remote_mta: Option<&'a str>,
    /// The remote server's reply (`Diagnostic-Code: smtp; <it>`).
    pub diagnostic: Option<&'a str>,
    /// Our own one-line account of the failure, for the human-readable part (and the
    /// `Diagnostic-Code` when there is no remote reply).
    pub reason: &'a str,
    pub last_attempt: Option<SystemTime>,
}

/// Builds the complete report: RFC 5322 headers and a `multipart/report` body, CRLF line
/// endings, ready to be queued with a null reverse-path.
pub fn build_dsn(input: &DsnInput) -> Vec<u8> {
    let quoted = quoted_headers(input.original);
    let original = OriginalSummary::parse(&quoted);

    let report = MimePart::new(
        ContentType::new("multipart/report").attribute("report-type", "delivery-status"),
        BodyPart::Multipart(vec![
            MimePart::new("text/plain", human_text(input, &original)),
            // Written verbatim: RFC 3464 §2.1 registers the type with 7bit encoding so it stays
            // readable without a MIME reader; the fields are 7-bit by construction.
            MimePart {
                headers: vec![
                    (
                        "Content-Type".into(),
                        ContentType::new("message/delivery-status").into(),
                    ),
                    ("Content-Transfer-Encoding".into(), Raw::new("7bit").into()),
                ],
                contents: BodyPart::Binary(delivery_status(input).into_bytes().into()),
            },
            // mail-builder picks 7bit, quoted-printable or base64 for this part, so 8-bit
            // bytes and over-long lines of the original never reach the wire raw.
            MimePart::new(
                ContentType::new("text/rfc822-headers").attribute("charset", "utf-8"),
                quoted,
            ),
        ]),
    );

    let subject = match input.kind {
        DsnKind::Failure => "Undelivered Mail Returned to Sender",
        DsnKind::Delay { .. } => "Delayed Mail (still being retried)",
    };

    MessageBuilder::new()
        .from(HeaderAddress::new_address(
            Some(FROM_NAME),
            input.postmaster.to_string(),
        ))
        .to(HeaderAddress::new_address(
            None::<&str>,
            input.original_sender.to_string(),
        ))
        .subject(Text::new(subject))
        .header("Date", Raw::new(rfc5322(input.now)))
        .message_id(MessageId::new(message_id(input)))
        .header("MIME-Version", Raw::new("1.0"))
        .header("Auto-Submitted", Raw::new("auto-replied"))
        .header("X-Mailer-Queue-ID", Raw::new(field_ascii(input.queue_id)))
        .body(report)
        .write_to_vec()
        .expect("writing into a Vec<u8> cannot fail")
}

/// What the human-readable text names of the original message.
struct OriginalSummary {
    subject: Option<String>,
    message_id: Option<String>,
}

impl OriginalSummary {
    fn parse(headers: &str) -> OriginalSummary {
        let parsed = mail_parser::MessageParser::new().parse_headers(headers.as_bytes());
        let clean = |s: &str| field_text(s, 200);
        OriginalSummary {
            subject: parsed
                .as_ref()
                .and_then(|m| m.subject())
                .map(clean)
                .filter(|s| !s.is_empty()),
            message_id: parsed
                .as_ref()
                .and_then(|m| m.message_id())
                .map(clean)
                .filter(|s| !s.is_empty()),
        }
    }
}

fn human_text(input: &DsnInput, original: &OriginalSummary) -> String {
    let mut text = String::new();
    text.push_str(&format!(
        "This is the mail system at {}.\r\n\r\n",
        host_name(input.reporting_mta)
    ));
    match input.kind {
        DsnKind::Failure => text.push_str(
            "Your message could not be delivered to one or more recipients.\r\n\
             It will not be retried. The delivery report and the headers of your\r\n\
             message are attached.\r\n",
        ),
        DsnKind::Delay { until } => text.push_str(&format!(
            "Your message has not yet been delivered to one or more recipients.\r\n\
             The mail system is still trying and will keep trying until\r\n\
             {}; you do not need to send it again. If it cannot be\r\n\
             delivered by then, you will get another notice.\r\n",
            rfc5322(until)
        )),
    }
    text.push_str("\r\n");
    text.push_str(&format!(
        "Queue ID: {}\r\n",
        field_text(input.queue_id, 200)
    ));
    text.push_str(&format!("Arrived:  {}\r\n", rfc5322(input.arrival)));
    if let Some(subject) = &original.subject {
        text.push_str(&format!("Subject:  {subject}\r\n"));
    }
    if let Some(id) = &original.message_id {
        text.push_str(&format!("Message-ID: <{id}>\r\n"));
    }
    for rcpt in input.recipients {
        text.push_str("\r\n");
        let mut who = format!("<{}>", rcpt.final_recipient);
        if let Some(orig) = rcpt.original {
            who.push_str(&format!(" (originally addressed to <{orig}>)"));
        }
        who.push(':');
        push_wrapped(&mut text, "", &who);
        push_wrapped(&mut text, "    ", &field_text(rcpt.reason, MAX_FIELD_VALUE));
        if let Some(reply) = rcpt.diagnostic {
            let host = rcpt
                .remote_mta
                .map(|h| format!(" {}", host_name(h)))
                .unwrap_or_default();
            push_wrapped(
                &mut text,
                "    ",
                &format!(
                    "The remote server{host} said: {}",
                    field_text(reply, MAX_FIELD_VALUE)
                ),
            );
        }
    }
    text
}

/// Appends `paragraph` wrapped at spaces to [`FOLD_AT`] columns, every line after `indent`, so
/// a reader sees whole words and no wrapped line of a remote reply starts at column 0.
fn push_wrapped(text: &mut String, indent: &str, paragraph: &str) {
    let mut line_len = 0;
    for word in paragraph.split(' ').filter(|w| !w.is_empty()) {
        if line_len > 0 && line_len + 1 + word.len() > FOLD_AT {
            text.push_str("\r\n");
            line_len = 0;
        }
        if line_len == 0 {
            text.push_str(indent);
            line_len = indent.len();
        } else {
            text.push(' ');
            line_len += 1;
        }
        text.push_str(word);
        line_len += word.len();
    }
    if line_len > 0 {
        text.push_str("\r\n");
    }
}

/// The `message/delivery-status` body (RFC 3464 §2.1): the per-message fields, then one block
/// per recipient, each preceded by a blank line. Pure 7-bit ASCII with CRLF endings.
fn delivery_status(input: &DsnInput) -> String {
    let mut out = String::new();
    push_field(
        &mut out,
        "Reporting-MTA",
        &format!("dns; {}", host_name(input.reporting_mta)),
    );
    push_field(&mut out, "X-Mailer-Queue-ID", &field_ascii(input.queue_id));
    push_field(&mut out, "Arrival-Date", &rfc5322(input.arrival));
    let (action, retry_until) = match input.kind {
        DsnKind::Failure => ("failed", None),
        DsnKind::Delay { until } => ("delayed", Some(until)),
    };
    for rcpt in input.recipients {
        out.push_str("\r\n");
        if let Some(orig) = rcpt.original {
            push_field(&mut out, "Original-Recipient", &typed_address(orig));
        }
        push_field(
            &mut out,
            "Final-Recipient",
            &typed_address(rcpt.final_recipient),
        );
        push_field(&mut out, "Action", action);
        push_field(&mut out, "Status", &rcpt.status.to_string());
        if let Some(host) = rcpt.remote_mta {
            push_field(&mut out, "Remote-MTA", &format!("dns; {}", host_name(host)));
        }
        let diagnostic = match rcpt.diagnostic {
            Some(reply) => format!("smtp; {}", field_ascii(reply)),
            // A local or transport failure has no SMTP reply; say what happened under our own
            // diagnostic type, as Postfix does with `X-Postfix`.
            None => format!("X-Mailer; {}", field_ascii(rcpt.reason)),
        };
        push_field(&mut out, "Diagnostic-Code", &diagnostic);
        if let Some(at) = rcpt.last_attempt {
            push_field(&mut out, "Last-Attempt-Date", &rfc5322(at));
        }
        if let Some(until) = retry_until {
            push_field(&mut out, "Will-Retry-Until", &rfc5322(until));
        }
    }
    out
}

/// `rfc822; local@domain`, or for an internationalised address the RFC 6533 `utf-8` type in
/// its 7-bit xtext form, which `message/delivery-status` requires.
fn typed_address(address: &Address) -> String {
    let text = address.to_string();
    if !address.is_utf8() {
        return format!("rfc822; {text}");
    }
    let mut out = String::from("utf-8; ");
    for c in text.chars() {
        match c {
            // QCHAR of RFC 6533 §3: printable ASCII except SP, '+', '=' and '\'.
            '!'..='~' if !matches!(c, '+' | '=' | '\\') => out.push(c),
            _ => out.push_str(&format!("\\x{{{:02X}}}", u32::from(c))),
        }
    }
    out
}

/// Appends `Name: value` folded at spaces to [`FOLD_AT`] columns where possible.
fn push_field(out: &mut String, name: &str, value: &str) {
    let mut line_len = name.len() + 1;
    out.push_str(name);
    out.push(':');
    for word in value.split(' ').filter(|w| !w.is_empty()) {
        if line_len + 1 + word.len() > FOLD_AT && line_len > name.len() + 1 {
            out.push_str("\r\n");
            line_len = 0;
        }
        out.push(' ');
        out.push_str(word);
        line_len += 1 + word.len();
    }
    out.push_str("\r\n");
}

/// One line of printable text: controls (CR, LF, NUL, TAB …) become spaces, runs of white
/// space collapse, and the result is cut to `max` characters.
fn field_text(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max));
    let mut chars = 0;
    let mut pending_space = false;
    for c in s.chars() {
        if c.is_control() || c.is_whitespace() {
            pending_space = !out.is_empty();
            continue;
        }
        if chars + usize::from(pending_space) + 1 > max {
            break;
        }
        if pending_space {
            out.push(' ');
            chars += 1;
            pending_space = false;
        }
        out.push(c);
        chars += 1;
    }
    out
}

/// A host name or address literal for a `dns;` field: the first word, printable ASCII only,
/// so a reply smuggled into the name cannot extend the field.
fn host_name(s: &str) -> String {
    s.trim()
        .chars()
        .take_while(|c| c.is_ascii_graphic())
        .take(255)
        .collect()
}

/// [`field_text`] restricted to ASCII, for the 7-bit delivery-status part: other characters
/// become `?`.
fn field_ascii(s: &str) -> String {
    field_text(s, MAX_FIELD_VALUE)
        .chars()
        .map(|c| if c.is_ascii() { c } else { '?' })
        .collect()
}

/// The original header section, cut at the first empty line and at [`MAX_QUOTED_HEADERS`],
/// made safe to quote: every line ends in CRLF, NUL and other controls except TAB are
/// dropped, and bytes that are not UTF-8 become U+FFFD.
fn quoted_headers(original: &[u8]) -> String {
    let section = &original[..header_section_len(original).min(MAX_QUOTED_HEADERS)];
    let text = String::from_utf8_lossy(section);
    let mut out = String::with_capacity(text.len() + 2);
    for line in text.split('\n') {
        let line: String = line
            .chars()
            .filter(|&c| c == '\t' || !c.is_control())
            .collect();
        // A line that sanitising emptied would end the header section early for a reader.
        if line.trim().is_empty() {
            continue;
        }
        out.push_str(&line);
        out.push_str("\r\n");
    }
    out
}

/// Length of the header section: up to and including the line break before the first empty
/// line (LF or CRLF), or the whole input when there is none.
fn header_section_len(message: &[u8]) -> usize {
    let mut line_start = 0;
    for (i, &b) in message.iter().enumerate() {
        if b == b'\n' {
            let line = &message[line_start..i];
            if line.is_empty() || line == b"\r" {
                return line_start;
            }
            line_start = i + 1;
        }
    }
    message.len()
}

/// A Message-ID unique per report: the queue ID names the message, the kind and time tell a
/// delay warning from the final bounce, and random bits separate reports made in one second.
fn message_id(input: &DsnInput) -> String {
    let queue_id: String = input
        .queue_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(64)
        .collect();
    let kind = match input.kind {
        DsnKind::Failure => "bounce",
        DsnKind::Delay { .. } => "delay",
    };
    let domain: String = input
        .message_id_domain
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
        .take(255)
        .collect();
    let domain = if domain.is_empty() {
        "localhost".to_string()
    } else {
        domain
    };
    format!(
        "{kind}.{}.{}.{:016x}@{domain}",
        queue_id.trim_matches('.'),
        unix_seconds(input.now),
        fastrand::u64(..)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_section_ends_at_first_empty_line() {
        assert_eq!(header_section_len(b"A: 1\r\nB: 2\r\n\r\nbody"), 12);
        assert_eq!(header_section_len(b"A: 1\nB: 2\n\nbody"), 10);
        assert_eq!(header_section_len(b"A: 1\r\nB: 2"), 10);
        assert_eq!(header_section_len(b"\r\nbody"), 0);
    }

    #[test]
    fn fields_fold_at_spaces_and_never_carry_controls() {
        let mut out = String::new();
        let value = field_ascii(&format!("550 5.1.1 {}\r\nBcc: x", "word ".repeat(30)));
        push_field(&mut out, "Diagnostic-Code", &value);
        assert!(out.lines().all(|l| l.len() <= FOLD_AT));
        assert!(out
            .split("\r\n")
            .skip(1)
            .all(|l| l.is_empty() || l.starts_with(' ')));
        assert!(!out.contains("\r\nBcc"));
    }

    #[test]
    fn utf8_addresses_use_the_xtext_form() {
        let a = Address::parse("jösé+x@exämple.org").unwrap();
        assert_eq!(
            typed_address(&a),
            "utf-8; j\\x{F6}s\\x{E9}\\x{2B}x@ex\\x{E4}mple.org"
        );
        let b = Address::parse("\"john doe\"@example.org").unwrap();
        assert_eq!(typed_address(&b), "rfc822; \"john doe\"@example.org");
    }
}
