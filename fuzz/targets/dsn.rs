//! The DSN builder fed arbitrary original headers (RFC 3464, RFC 6522).
//!
//! Invariants: the report is 7-bit, CRLF only, with no line over 998 octets; its own header
//! fields (From, To, Subject) cannot be overridden or duplicated by the quoted original; it
//! parses as a `multipart/report` with the three parts.

use std::time::{Duration, SystemTime};

use mailer_core::address::Address;
use mailer_core::delivery::bounce::{build_dsn, DsnInput, DsnKind, DsnRecipient};
use mailer_core::delivery::EnhancedStatus;

use super::has_bare_newline;

pub fn run(data: &[u8]) {
    let postmaster = Address::parse("MAILER-DAEMON@ublog.tech").expect("literal address");
    let sender = Address::parse("notifications@ublog.tech").expect("literal address");
    let rcpt = Address::parse("alice@example.org").expect("literal address");
    let arrival = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let recipients = [DsnRecipient {
        original: None,
        final_recipient: &rcpt,
        status: EnhancedStatus(5, 1, 1),
        remote_mta: Some("mx.example.org"),
        diagnostic: Some("550 5.1.1 no such user"),
        reason: "the recipient's server refused it",
        last_attempt: Some(arrival),
    }];
    let input = DsnInput {
        reporting_mta: "ublog.tech",
        postmaster,
        original_sender: &sender,
        queue_id: "01HQ4ZK1XKD4ZCVFS2G0000000",
        arrival,
        now: arrival + Duration::from_secs(60),
        kind: DsnKind::Failure,
        recipients: &recipients,
        original: data,
        message_id_domain: "ublog.tech",
    };
    let report = build_dsn(&input);
    assert!(report.is_ascii(), "the report is not 7-bit");
    assert!(!has_bare_newline(&report), "the report has a bare CR or LF");
    for line in report.split(|&b| b == b'\n') {
        assert!(line.len() <= 999, "a line of {} octets", line.len());
    }

    let header_end = report
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("the report has a header section");
    let parsed = mail_parser::MessageParser::new()
        .parse(&report)
        .expect("the report parses");
    let top = String::from_utf8_lossy(&report[..header_end]).to_ascii_lowercase();
    for field in ["\nfrom:", "\nto:", "\nsubject:"] {
        let n = format!("\n{top}").matches(field).count();
        assert_eq!(n, 1, "{n} {field:?} fields in the report's header");
    }
    assert_eq!(
        parsed.subject(),
        Some("Undelivered Mail Returned to Sender")
    );
    assert_eq!(
        parsed
            .to()
            .and_then(|t| t.first())
            .and_then(|a| a.address()),
        Some("notifications@ublog.tech")
    );
    let parts = parsed.parts.len();
    assert!(
        parts >= 4,
        "multipart/report with {parts} parts (root + 3 expected)"
    );
}
