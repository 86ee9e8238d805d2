use std::time::{Duration, UNIX_EPOCH};

use mailer_core::address::Address;
use mailer_core::delivery::bounce::{build_dsn, DsnInput, DsnKind, DsnRecipient};
use mailer_core::delivery::EnhancedStatus;

#[test]
fn dump() {
    let sender = Address::parse("alice@ublog.tech").unwrap();
    let rcpt = Address::parse("bob@example.org").unwrap();
    let orig = Address::parse("bobby@ublog.tech").unwrap();
    let recipients = [DsnRecipient {
        original: Some(&orig),
        final_recipient: &rcpt,
        status: EnhancedStatus(5, 1, 1),
        remote_mta: Some("mx.example.org"),
        diagnostic: Some("550 5.1.1 <bob@example.org>: Recipient address rejected: User unknown in virtual mailbox table\r\nBcc: x"),
        reason: "mx.example.org[192.0.2.1] said: 550 5.1.1 user unknown (in reply to RCPT TO)",
        last_attempt: Some(UNIX_EPOCH + Duration::from_secs(1_795_612_417)),
    }];
    let input = DsnInput {
        reporting_mta: "mail.ublog.tech",
        postmaster: Address::parse("MAILER-DAEMON@mail.ublog.tech").unwrap(),
        original_sender: &sender,
        queue_id: "01HXYZ",
        arrival: UNIX_EPOCH + Duration::from_secs(1_795_612_000),
        now: UNIX_EPOCH + Duration::from_secs(1_795_612_500),
        kind: DsnKind::Failure,
        recipients: &recipients,
        original: b"From: Alice <alice@ublog.tech>\r\nTo: bob@example.org\r\nSubject: Hello \xc3\xa9\r\n\r\nSecret body\r\n",
        message_id_domain: "mail.ublog.tech",
    };
    println!("{}", String::from_utf8_lossy(&build_dsn(&input)));
}
