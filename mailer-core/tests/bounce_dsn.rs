//! Delivery status notifications as a receiving mail client sees them: each report is parsed
//! back with mail-parser and checked field by field.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mail_parser::{HeaderName, Message, MessageParser, MessagePart, MimeHeaders};
use mailer_core::address::Address;
use mailer_core::delivery::bounce::{
    build_dsn, DsnInput, DsnKind, DsnRecipient, MAX_QUOTED_HEADERS,
};
use mailer_core::delivery::EnhancedStatus;
use mailer_core::time::rfc5322;

const ORIGINAL: &[u8] = b"Received: from localhost by mail.ublog.tech\r\n\
From: Alice <alice@ublog.tech>\r\n\
To: Bob <bob@example.org>, carol@ublog.tech\r\n\
Subject: Lunch on Friday?\r\n\
Message-ID: <lunch-1@ublog.tech>\r\n\
\r\n\
Secret body: the door code is 4711.\r\n";

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn addr(s: &str) -> Address {
    Address::parse(s).expect("test address is valid")
}

fn input<'a>(
    sender: &'a Address,
    kind: DsnKind,
    recipients: &'a [DsnRecipient<'a>],
    original: &'a [u8],
) -> DsnInput<'a> {
    DsnInput {
        reporting_mta: "mail.ublog.tech",
        postmaster: addr("MAILER-DAEMON@mail.ublog.tech"),
        original_sender: sender,
        queue_id: "01J9Z3K7QX",
        arrival: at(1_795_612_000),
        now: at(1_795_612_500),
        kind,
        recipients,
        original,
        message_id_domain: "mail.ublog.tech",
    }
}

/// Checks what every report must be on the wire: CRLF only, no NUL, lines within 998 octets,
/// and 7-bit (the tests use ASCII addresses, so any 8-bit octet would be a leak).
fn assert_wire_clean(dsn: &[u8]) {
    for (i, &b) in dsn.iter().enumerate() {
        assert_ne!(b, 0, "NUL at {i}");
        assert!(b.is_ascii(), "8-bit octet {b:#x} at {i}");
        if b == b'\n' {
            assert!(i > 0 && dsn[i - 1] == b'\r', "bare LF at {i}");
        }
        if b == b'\r' {
            assert_eq!(dsn.get(i + 1), Some(&b'\n'), "bare CR at {i}");
        }
    }
    for line in dsn.split(|&b| b == b'\n') {
        assert!(line.len() <= 999, "line of {} octets", line.len());
    }
    assert!(dsn.ends_with(b"\r\n"));
}

fn parse(dsn: &[u8]) -> Message<'_> {
    MessageParser::new()
        .parse(dsn)
        .expect("the report parses as a message")
}

/// The leaf part whose content type is `ctype/subtype`.
fn part<'a>(msg: &'a Message<'a>, ctype: &str, subtype: &str) -> &'a MessagePart<'a> {
    msg.parts
        .iter()
        .find(|p| {
            p.content_type()
                .is_some_and(|ct| ct.ctype() == ctype && ct.subtype() == Some(subtype))
        })
        .unwrap_or_else(|| panic!("no {ctype}/{subtype} part"))
}

/// The `message/delivery-status` body as RFC 3464 groups it: the per-message block, then one
/// block per recipient, each a list of unfolded `(field name, value)`.
fn status_blocks(msg: &Message) -> Vec<Vec<(String, String)>> {
    let body = part(msg, "message", "delivery-status").contents();
    let text = std::str::from_utf8(body).expect("delivery-status is ASCII");
    assert!(
        !text.contains('\n') || text.split('\n').all(|l| l.is_empty() || l.ends_with('\r')),
        "delivery-status lines end in CRLF"
    );
    text.split("\r\n\r\n")
        .filter(|b| !b.trim().is_empty())
        .map(|block| {
            let unfolded = block.replace("\r\n ", " ").replace("\r\n\t", " ");
            unfolded
                .split("\r\n")
                .filter(|l| !l.is_empty())
                .map(|l| {
                    let (name, value) = l.split_once(':').expect("field has a colon");
                    (name.to_string(), value.trim().to_string())
                })
                .collect()
        })
        .collect()
}

fn field<'a>(block: &'a [(String, String)], name: &str) -> Option<&'a str> {
    block
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn header_text<'a>(msg: &'a Message, name: &'a str) -> Option<&'a str> {
    msg.header_raw(name).map(str::trim)
}

#[test]
fn failure_report_is_a_delivery_status_report_to_the_original_sender() {
    let sender = addr("alice@ublog.tech");
    let bob = addr("bob@example.org");
    let rcpts = [DsnRecipient {
        original: None,
        final_recipient: &bob,
        status: EnhancedStatus(5, 1, 1),
        remote_mta: Some("mx.example.org"),
        diagnostic: Some("550 5.1.1 <bob@example.org>: user unknown"),
        reason: "mx.example.org[192.0.2.1] rejected the recipient",
        last_attempt: Some(at(1_795_612_417)),
    }];
    let dsn = build_dsn(&input(&sender, DsnKind::Failure, &rcpts, ORIGINAL));
    assert_wire_clean(&dsn);
    let msg = parse(&dsn);

    let ct = msg.content_type().expect("report has a content type");
    assert_eq!(ct.ctype(), "multipart");
    assert_eq!(ct.subtype(), Some("report"));
    assert_eq!(ct.attribute("report-type"), Some("delivery-status"));

    let to = msg.to().and_then(|a| a.first()).expect("report has a To");
    assert_eq!(to.address(), Some("alice@ublog.tech"));
    let from = msg
        .from()
        .and_then(|a| a.first())
        .expect("report has a From");
    assert_eq!(from.address(), Some("MAILER-DAEMON@mail.ublog.tech"));
    assert_eq!(from.name(), Some("Mail Delivery System"));
    assert_eq!(msg.subject(), Some("Undelivered Mail Returned to Sender"));
    assert_eq!(header_text(&msg, "Auto-Submitted"), Some("auto-replied"));
    assert_eq!(header_text(&msg, "MIME-Version"), Some("1.0"));
    assert_eq!(
        header_text(&msg, "Date"),
        Some("Wed, 25 Nov 2026 13:15:00 +0000")
    );
    let id = msg.message_id().expect("report has a Message-ID");
    assert!(id.ends_with("@mail.ublog.tech"), "{id}");
    assert!(id.contains("01J9Z3K7QX"), "{id}");

    // Three parts in RFC 6522 order: human text, delivery-status, original headers.
    let root = msg.root_part().sub_parts().expect("report is multipart");
    let types: Vec<String> = root
        .iter()
        .map(|&i| {
            let ct = msg.parts[i as usize]
                .content_type()
                .expect("part has a type");
            format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or(""))
        })
        .collect();
    assert_eq!(
        types,
        [
            "text/plain",
            "message/delivery-status",
            "text/rfc822-headers"
        ]
    );
}

#[test]
fn failure_report_lists_each_recipient_with_action_status_and_remote_reply() {
    let sender = addr("alice@ublog.tech");
    let bob = addr("bob@example.org");
    let carol = addr("carol@example.net");
    let carol_alias = addr("carol@ublog.tech");
    let rcpts = [
        DsnRecipient {
            original: None,
            final_recipient: &bob,
            status: EnhancedStatus(5, 1, 1),
            remote_mta: Some("mx.example.org"),
            diagnostic: Some("550 5.1.1 <bob@example.org>: Recipient address rejected: User unknown in virtual mailbox table"),
            reason: "mx.example.org[192.0.2.1] rejected the recipient",
            last_attempt: Some(at(1_795_612_417)),
        },
        DsnRecipient {
            original: Some(&carol_alias),
            final_recipient: &carol,
            status: EnhancedStatus(5, 4, 7),
            remote_mta: None,
            diagnostic: None,
            reason: "message expired after 4 days: connection refused by smtp.example.net",
            last_attempt: None,
        },
    ];
    let dsn = build_dsn(&input(&sender, DsnKind::Failure, &rcpts, ORIGINAL));
    assert_wire_clean(&dsn);
    let msg = parse(&dsn);
    let blocks = status_blocks(&msg);
    assert_eq!(blocks.len(), 3, "{blocks:?}");

    let per_message = &blocks[0];
    assert_eq!(
        field(per_message, "Reporting-MTA"),
        Some("dns; mail.ublog.tech")
    );
    assert_eq!(
        field(per_message, "Arrival-Date"),
        Some("Wed, 25 Nov 2026 13:06:40 +0000")
    );
    // Our queue ID is not the client's ENVID and must not pose as one.
    assert_eq!(field(per_message, "Original-Envelope-Id"), None);

    let bob_block = &blocks[1];
    assert_eq!(
        field(bob_block, "Final-Recipient"),
        Some("rfc822; bob@example.org")
    );
    assert_eq!(field(bob_block, "Original-Recipient"), None);
    assert_eq!(field(bob_block, "Action"), Some("failed"));
    assert_eq!(field(bob_block, "Status"), Some("5.1.1"));
    assert_eq!(field(bob_block, "Remote-MTA"), Some("dns; mx.example.org"));
    assert_eq!(
        field(bob_block, "Diagnostic-Code"),
        Some("smtp; 550 5.1.1 <bob@example.org>: Recipient address rejected: User unknown in virtual mailbox table")
    );
    assert_eq!(
        field(bob_block, "Last-Attempt-Date"),
        Some("Wed, 25 Nov 2026 13:13:37 +0000")
    );
    assert_eq!(field(bob_block, "Will-Retry-Until"), None);

    let carol_block = &blocks[2];
    assert_eq!(
        field(carol_block, "Original-Recipient"),
        Some("rfc822; carol@ublog.tech")
    );
    assert_eq!(
        field(carol_block, "Final-Recipient"),
        Some("rfc822; carol@example.net")
    );
    assert_eq!(field(carol_block, "Action"), Some("failed"));
    assert_eq!(field(carol_block, "Status"), Some("5.4.7"));
    assert_eq!(field(carol_block, "Remote-MTA"), None);
    assert_eq!(
        field(carol_block, "Diagnostic-Code"),
        Some("X-Mailer; message expired after 4 days: connection refused by smtp.example.net")
    );
    assert_eq!(field(carol_block, "Last-Attempt-Date"), None);

    // The text is wrapped for reading; compare it with runs of white space collapsed.
    let text = msg.body_text(0).expect("report has a text part");
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(text.contains("<bob@example.org>"), "{text}");
    assert!(
        text.contains("550 5.1.1 <bob@example.org>: Recipient address rejected"),
        "{text}"
    );
    assert!(
        text.contains("<carol@example.net> (originally addressed to <carol@ublog.tech>)"),
        "{text}"
    );
    assert!(text.contains("message expired after 4 days"), "{text}");
    assert!(text.contains("01J9Z3K7QX"), "{text}");
    assert!(text.contains("Lunch on Friday?"), "{text}");
}

#[test]
fn quoted_part_holds_the_original_headers_but_not_the_body() {
    let sender = addr("alice@ublog.tech");
    let bob = addr("bob@example.org");
    let rcpts = [DsnRecipient {
        original: None,
        final_recipient: &bob,
        status: EnhancedStatus(5, 7, 1),
        remote_mta: Some("mx.example.org"),
        diagnostic: Some("554 5.7.1 rejected"),
        reason: "rejected",
        last_attempt: None,
    }];
    let dsn = build_dsn(&input(&sender, DsnKind::Failure, &rcpts, ORIGINAL));
    let msg = parse(&dsn);
    let quoted = part(&msg, "text", "rfc822-headers");
    let quoted = std::str::from_utf8(quoted.contents()).expect("quoted headers are UTF-8");
    let original = std::str::from_utf8(ORIGINAL).expect("test message is ASCII");
    let (header_section, _) = original.split_once("\r\n\r\n").expect("has a body");
    assert_eq!(quoted, format!("{header_section}\r\n"));
    assert!(!String::from_utf8_lossy(&dsn).contains("door code"));
}

#[test]
fn delay_report_says_delayed_and_until_when_it_is_retried() {
    let sender = addr("alice@ublog.tech");
    let bob = addr("bob@example.org");
    let rcpts = [DsnRecipient {
        original: None,
        final_recipient: &bob,
        status: EnhancedStatus(4, 4, 1),
        remote_mta: Some("mx.example.org"),
        diagnostic: Some("421 4.4.1 mx.example.org: try again later"),
        reason: "mx.example.org[192.0.2.1] is busy",
        last_attempt: Some(at(1_795_612_417)),
    }];
    let until = at(1_795_612_000 + 4 * 86_400);
    let dsn = build_dsn(&input(&sender, DsnKind::Delay { until }, &rcpts, ORIGINAL));
    assert_wire_clean(&dsn);
    let msg = parse(&dsn);
    assert_eq!(msg.subject(), Some("Delayed Mail (still being retried)"));
    assert_eq!(header_text(&msg, "Auto-Submitted"), Some("auto-replied"));
    let blocks = status_blocks(&msg);
    assert_eq!(blocks.len(), 2);
    assert_eq!(field(&blocks[1], "Action"), Some("delayed"));
    assert_eq!(field(&blocks[1], "Status"), Some("4.4.1"));
    assert_eq!(
        field(&blocks[1], "Will-Retry-Until"),
        Some("Sun, 29 Nov 2026 13:06:40 +0000")
    );
    assert_eq!(rfc5322(until), "Sun, 29 Nov 2026 13:06:40 +0000");
    let text = msg.body_text(0).expect("report has a text part");
    assert!(text.contains("Sun, 29 Nov 2026 13:06:40 +0000"), "{text}");
    assert!(text.contains("still trying"), "{text}");
}

#[test]
fn remote_reply_with_crlf_cannot_inject_a_header_or_field() {
    let sender = addr("alice@ublog.tech");
    let bob = addr("bob@example.org");
    let rcpts = [DsnRecipient {
        original: None,
        final_recipient: &bob,
        status: EnhancedStatus(5, 0, 0),
        remote_mta: Some("mx.example.org\r\nBcc: victim@evil.example"),
        diagnostic: Some("550 no\r\nBcc: victim@evil.example\r\n\r\nAction: delivered\n\0"),
        reason: "rejected\r\nBcc: victim@evil.example",
        last_attempt: None,
    }];
    let dsn = build_dsn(&input(&sender, DsnKind::Failure, &rcpts, ORIGINAL));
    assert_wire_clean(&dsn);
    let text = String::from_utf8(dsn.clone()).expect("report is ASCII");
    for line in text.split("\r\n") {
        assert!(
            !line.to_ascii_lowercase().starts_with("bcc"),
            "{line:?} in {text}"
        );
        assert!(!line.starts_with("Action: delivered"), "{line:?}");
    }
    let msg = parse(&dsn);
    assert!(msg.header(HeaderName::Bcc).is_none());
    let blocks = status_blocks(&msg);
    assert_eq!(blocks.len(), 2, "no extra recipient block: {blocks:?}");
    assert_eq!(field(&blocks[1], "Action"), Some("failed"));
    assert_eq!(field(&blocks[1], "Bcc"), None);
    assert_eq!(
        field(&blocks[1], "Diagnostic-Code"),
        Some("smtp; 550 no Bcc: victim@evil.example Action: delivered")
    );
    assert_eq!(field(&blocks[1], "Remote-MTA"), Some("dns; mx.example.org"));
}

#[test]
fn hostile_original_headers_yield_a_well_formed_capped_report() {
    let mut original = Vec::new();
    original.extend_from_slice(b"From: alice@ublog.tech\nTo: bob@example.org\r\n");
    original.extend_from_slice(b"Subject: nul\0byte and bare\rCR\r\n");
    original.extend_from_slice(b"X-Latin1: caf\xe9 \xff\xfe\r\n");
    original.extend_from_slice(b"X-Utf8: gr\xc3\xbc\xc3\x9fe\r\n");
    original.extend_from_slice(b"X-Huge: ");
    original.extend(std::iter::repeat_n(b'a', 1024 * 1024));
    original.extend_from_slice(b"\r\n\r\nbody-marker\r\n");

    let sender = addr("alice@ublog.tech");
    let bob = addr("bob@example.org");
    let rcpts = [DsnRecipient {
        original: None,
        final_recipient: &bob,
        status: EnhancedStatus(5, 3, 4),
        remote_mta: Some("mx.example.org"),
        diagnostic: Some("552 5.3.4 header too long"),
        reason: "rejected",
        last_attempt: None,
    }];
    let dsn = build_dsn(&input(&sender, DsnKind::Failure, &rcpts, &original));
    assert_wire_clean(&dsn);
    assert!(
        dsn.len() < 3 * MAX_QUOTED_HEADERS,
        "report is {} octets",
        dsn.len()
    );
    assert!(!String::from_utf8_lossy(&dsn).contains("body-marker"));

    let msg = parse(&dsn);
    let quoted = part(&msg, "text", "rfc822-headers");
    let quoted = std::str::from_utf8(quoted.contents()).expect("quoted headers are UTF-8");
    assert!(
        quoted.len() <= MAX_QUOTED_HEADERS + 1024,
        "{}",
        quoted.len()
    );
    assert!(quoted.starts_with("From: alice@ublog.tech\r\nTo: bob@example.org\r\n"));
    assert!(
        quoted.contains("Subject: nulbyte and bareCR\r\n"),
        "{quoted:.200}"
    );
    assert!(quoted.contains("X-Latin1: caf\u{fffd} \u{fffd}\u{fffd}\r\n"));
    assert!(quoted.contains("X-Utf8: grüße\r\n"));
    assert!(quoted.contains("X-Huge: aaaa"));
    assert!(!quoted.contains('\0'));
}

#[test]
fn internationalized_recipient_is_reported_in_rfc6533_xtext() {
    let sender = addr("alice@ublog.tech");
    let jose = addr("josé@example.org");
    let rcpts = [DsnRecipient {
        original: None,
        final_recipient: &jose,
        status: EnhancedStatus(5, 6, 7),
        remote_mta: Some("mx.example.org"),
        diagnostic: Some("553 5.6.7 SMTPUTF8 not supported"),
        reason: "the next hop does not support SMTPUTF8",
        last_attempt: None,
    }];
    let dsn = build_dsn(&input(&sender, DsnKind::Failure, &rcpts, ORIGINAL));
    assert_wire_clean(&dsn);
    let msg = parse(&dsn);
    let blocks = status_blocks(&msg);
    assert_eq!(
        field(&blocks[1], "Final-Recipient"),
        Some("utf-8; jos\\x{E9}@example.org")
    );
    let text = msg.body_text(0).expect("report has a text part");
    assert!(text.contains("<josé@example.org>"), "{text}");
}

#[test]
fn reports_of_one_message_get_distinct_message_ids() {
    let sender = addr("alice@ublog.tech");
    let bob = addr("bob@example.org");
    let rcpts = [DsnRecipient {
        original: None,
        final_recipient: &bob,
        status: EnhancedStatus(4, 4, 1),
        remote_mta: None,
        diagnostic: None,
        reason: "connection timed out",
        last_attempt: None,
    }];
    let until = at(1_795_612_000 + 86_400);
    let a = build_dsn(&input(&sender, DsnKind::Delay { until }, &rcpts, ORIGINAL));
    let b = build_dsn(&input(&sender, DsnKind::Delay { until }, &rcpts, ORIGINAL));
    let c = build_dsn(&input(&sender, DsnKind::Failure, &rcpts, ORIGINAL));
    let ids: Vec<String> = [&a, &b, &c]
        .iter()
        .map(|d| parse(d).message_id().expect("Message-ID").to_string())
        .collect();
    assert_ne!(ids[0], ids[1]);
    assert_ne!(ids[0], ids[2]);
    assert_ne!(ids[1], ids[2]);
}
