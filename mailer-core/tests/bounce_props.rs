//! Whatever the original message and the remote server send, building a report never panics
//! and the report is clean on the wire with exactly one status block per recipient.

use std::time::{Duration, UNIX_EPOCH};

use mail_parser::{MessageParser, MimeHeaders};
use mailer_core::address::Address;
use mailer_core::delivery::bounce::{build_dsn, DsnInput, DsnKind, DsnRecipient};
use mailer_core::delivery::EnhancedStatus;
use proptest::prelude::*;

/// Bytes biased towards what breaks mail: line ends, NUL, colons, white space, 8-bit.
fn hostile_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            4 => any::<u8>(),
            2 => Just(b'\r'),
            2 => Just(b'\n'),
            1 => Just(0u8),
            1 => Just(b':'),
            1 => Just(b' '),
            1 => Just(0xc3u8),
            2 => b'a'..=b'z',
        ],
        0..max,
    )
}

fn hostile_text(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            3 => any::<char>(),
            1 => Just('\r'),
            1 => Just('\n'),
            1 => Just('\0'),
            2 => Just(' '),
            3 => prop::char::range('A', 'z'),
        ],
        0..max,
    )
    .prop_map(|chars| chars.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn any_input_yields_a_clean_report_with_one_block_per_recipient(
        original in hostile_bytes(4096),
        reply in hostile_text(600),
        reason in hostile_text(200),
        host in hostile_text(80),
        queue_id in hostile_text(40),
        delayed in any::<bool>(),
    ) {
        let sender = Address::parse("alice@ublog.tech").expect("valid");
        let bob = Address::parse("bob@example.org").expect("valid");
        let carol = Address::parse("carol@example.net").expect("valid");
        let rcpts = [
            DsnRecipient {
                original: None,
                final_recipient: &bob,
                status: EnhancedStatus(5, 1, 1),
                remote_mta: Some(&host),
                diagnostic: Some(&reply),
                reason: &reason,
                last_attempt: Some(UNIX_EPOCH + Duration::from_secs(1_795_612_417)),
            },
            DsnRecipient {
                original: Some(&sender),
                final_recipient: &carol,
                status: EnhancedStatus(4, 4, 1),
                remote_mta: None,
                diagnostic: None,
                reason: &reply,
                last_attempt: None,
            },
        ];
        let kind = if delayed {
            DsnKind::Delay { until: UNIX_EPOCH + Duration::from_secs(1_796_000_000) }
        } else {
            DsnKind::Failure
        };
        let dsn = build_dsn(&DsnInput {
            reporting_mta: "mail.ublog.tech",
            postmaster: Address::parse("MAILER-DAEMON@mail.ublog.tech").expect("valid"),
            original_sender: &sender,
            queue_id: &queue_id,
            arrival: UNIX_EPOCH + Duration::from_secs(1_795_612_000),
            now: UNIX_EPOCH + Duration::from_secs(1_795_612_500),
            kind,
            recipients: &rcpts,
            original: &original,
            message_id_domain: "mail.ublog.tech",
        });

        for (i, &b) in dsn.iter().enumerate() {
            prop_assert_ne!(b, 0, "NUL at {}", i);
            prop_assert!(b.is_ascii(), "8-bit octet at {}", i);
            if b == b'\n' {
                prop_assert!(i > 0 && dsn[i - 1] == b'\r', "bare LF at {}", i);
            }
            if b == b'\r' {
                prop_assert_eq!(dsn.get(i + 1), Some(&b'\n'), "bare CR at {}", i);
            }
        }
        prop_assert!(dsn.split(|&b| b == b'\n').all(|l| l.len() <= 999));

        let msg = MessageParser::new().parse(&dsn).expect("report parses");
        let status = msg
            .parts
            .iter()
            .find(|p| p.content_type().is_some_and(|ct| ct.subtype() == Some("delivery-status")))
            .expect("report has a delivery-status part");
        let status = std::str::from_utf8(status.contents()).expect("delivery-status is ASCII");
        let actions = status.split("\r\n").filter(|l| l.starts_with("Action:")).count();
        let finals = status.split("\r\n").filter(|l| l.starts_with("Final-Recipient:")).count();
        prop_assert_eq!(actions, 2, "{}", status);
        prop_assert_eq!(finals, 2, "{}", status);
        prop_assert!(msg.header("Bcc").is_none());
    }
}
