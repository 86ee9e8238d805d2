//! The relay client's side of SMTP: replies and EHLO capabilities read with the same receiver
//! the client uses, and the client's dot-stuffing checked against our own DATA reader.
//!
//! Input: `split seed`, then bytes a server sends. Invariants: any split of the stream gives
//! the same replies; a reply's verbatim form is one line; its DSN status has the reply's
//! class; a reply is exactly one of positive, intermediate, transient or permanent failure.
//! Separately, the input taken as a message body, dot-stuffed for the wire, is read back by
//! the server's DATA reader to exactly the body, ending exactly at the end.

use mailer_core::intake::data::{BareNewlines, DataReader};
use mailer_core::smtp::protocol::{dot_stuff, Capabilities, Reply};
use smtp_proto::response::parser::ResponseReceiver;

use super::chunks;

/// Replies until the stream ends or is malformed.
fn replies(pieces: &[&[u8]]) -> Vec<Result<Reply, String>> {
    let mut receiver = ResponseReceiver::default();
    let mut out = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        let mut pos = 0;
        while pos < buf.len() {
            let mut bytes = buf[pos..].iter();
            let parsed = receiver.parse(&mut bytes);
            pos = buf.len() - bytes.len();
            match parsed {
                Ok(response) => {
                    receiver.reset();
                    out.push(Ok(Reply::from_proto(response)));
                }
                Err(smtp_proto::Error::NeedsMoreData { .. }) => break,
                Err(e) => {
                    out.push(Err(format!("{e:?}")));
                    return out;
                }
            }
        }
        buf.drain(..pos);
    }
    out
}

fn check_reply(reply: &Reply) {
    let verbatim = reply.verbatim();
    assert!(
        !verbatim.contains(['\r', '\n']),
        "verbatim {verbatim:?} spans lines"
    );
    let kinds = [
        reply.is_positive(),
        reply.is_intermediate(),
        (400..500).contains(&reply.code),
        reply.is_permanent_failure(),
    ];
    if (200..600).contains(&reply.code) {
        assert_eq!(
            kinds.iter().filter(|k| **k).count(),
            1,
            "code {}",
            reply.code
        );
    }
    if (400..600).contains(&reply.code) {
        let status = reply.dsn_status();
        assert_eq!(u16::from(status.0), reply.code / 100, "DSN status class");
        let failure = reply.failure("relay.example: RCPT TO:<a@b>");
        assert_eq!(failure.permanent, reply.code >= 500);
    }
    if reply.code == 250 {
        let caps = Capabilities::from_ehlo_text(&reply.text());
        if caps.auth_mechanism().is_some() {
            assert!(caps.auth_plain || caps.auth_login);
        }
    }
}

pub fn run(data: &[u8]) {
    let [seed, input @ ..] = data else {
        return;
    };
    let whole = replies(&[input]);
    let split = replies(&chunks(input, *seed));
    // A malformed stream may be noticed at a different reply when split; until then, equal.
    let agree = whole
        .iter()
        .zip(&split)
        .take_while(|(a, b)| a.is_ok() && b.is_ok());
    for (a, b) in agree {
        assert_eq!(a, b, "the split changed a reply");
    }
    if whole.iter().all(Result::is_ok) && split.iter().all(Result::is_ok) {
        assert_eq!(
            whole.len(),
            split.len(),
            "the split changed the number of replies"
        );
    }
    for reply in whole.iter().flatten() {
        check_reply(reply);
    }

    // The body as the queue holds it: CRLF line endings only.
    let body: Vec<u8> = input
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .map(|l| {
            l.iter()
                .copied()
                .filter(|&b| b != b'\r')
                .collect::<Vec<u8>>()
        })
        .collect::<Vec<_>>()
        .join(&b"\r\n"[..]);
    let wire: Vec<u8> = dot_stuff(&body);
    let mut reader = DataReader::new(usize::MAX / 2, usize::MAX / 2, BareNewlines::Reject);
    let mut got = Vec::new();
    let end = reader.feed(&wire, &mut got);
    assert_eq!(
        end,
        Some(wire.len()),
        "the data did not end exactly at the end"
    );
    assert_eq!(reader.finish(), Ok(()));
    let mut expected = body.clone();
    if !expected.is_empty() && !expected.ends_with(b"\r\n") {
        expected.extend_from_slice(b"\r\n");
    }
    assert_eq!(got, expected, "dot-stuffing does not round-trip");
}
