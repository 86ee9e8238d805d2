//! Files in `<queue_dir>/offline/`: anyone on the host can write one, so the daemon reads
//! them as untrusted input, then receives the message through an SMTP session.
//!
//! Invariants: any input is parsed or refused without panicking; a parsed file written out
//! again reads back as the same envelope and message, and its message is the input's tail;
//! what the session queues from it starts with our Received header naming the submitter,
//! has CRLF line endings only, and goes only to recipients the file named (a quoted local
//! part may arrive unquoted, as it would over SMTP).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mailer_core::address::Address;
use mailer_core::intake::offline::{encode, parse, receive, Pickup};
use mailer_core::intake::sendmail::Submission;
use mailer_core::intake::{BareNewlines, Peer, RecipientPolicy, Reply, SessionConfig, Submitter};

use super::has_bare_newline;

/// Accepts every recipient but `nobody@…`, so that partial refusals are reached too.
struct AllButNobody;

impl RecipientPolicy for AllButNobody {
    fn route(&self, _: &Peer, _: Option<&Address>, rcpt: &Address) -> Result<String, Reply> {
        if rcpt.local_part() == "nobody" {
            return Err(Reply::status(550, 1, 1, "No such user here"));
        }
        Ok("local_mail".to_string())
    }
}

/// An address as the SMTP command parser hands it to the session: a quoted local part
/// without its quotes and escapes (`"a.b"@x` and `a.b@x` are one mailbox, RFC 5321 §4.1.2).
fn unquoted(address: &Address) -> String {
    let local = address.local_part();
    let Some(inner) = local.strip_prefix('"').and_then(|l| l.strip_suffix('"')) else {
        return address.to_string();
    };
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        out.push(if c == '\\' {
            chars.next().unwrap_or(c)
        } else {
            c
        });
    }
    format!("{out}@{}", address.domain())
}

pub fn run(data: &[u8]) {
    let Ok(dropped) = parse(data) else {
        return;
    };
    assert!(!dropped.recipients.is_empty());
    assert!(data.ends_with(dropped.message));
    let again = encode(&Submission {
        sender: dropped.sender.clone(),
        recipients: dropped.recipients.clone(),
        data: dropped.message.to_vec(),
    });
    assert_eq!(
        parse(&again).as_ref(),
        Ok(&dropped),
        "encode and parse disagree"
    );

    let config = Arc::new(SessionConfig {
        hostname: "mx.ublog.tech".into(),
        max_message_size: 4096,
        max_recipients: 8,
        max_line_length: 200,
        bare_newlines: if data.len().is_multiple_of(2) {
            BareNewlines::Normalize
        } else {
            BareNewlines::Reject
        },
        starttls: false,
        max_hops: 5,
        max_errors: 20,
        idle_timeout: Duration::from_secs(300),
        data_timeout: Duration::from_secs(600),
    });
    let peer = Peer {
        addr: None,
        submitter: Some(Submitter {
            uid: 1000,
            login: Some("alice".into()),
        }),
    };
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    match receive(&dropped, peer, config, Arc::new(AllButNobody), now) {
        Pickup::Queue { incoming, refused } => {
            assert!(incoming
                .rest
                .starts_with(b"Received: from mx.ublog.tech (userid 1000 alice)\r\n"));
            assert!(
                !has_bare_newline(&incoming.rest),
                "a bare newline was queued"
            );
            for r in &incoming.recipients {
                let named = dropped
                    .recipients
                    .iter()
                    .any(|n| *n == r.address || unquoted(n) == r.address.to_string());
                assert!(named, "{} was not named", r.address);
            }
            assert!(incoming.recipients.len() + refused.len() <= dropped.recipients.len());
        }
        Pickup::Refuse(why) => assert!(!why.is_empty()),
    }
}
