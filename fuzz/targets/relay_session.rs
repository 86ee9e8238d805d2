//! The SMTP client session fed arbitrary server replies, split at arbitrary points, through
//! one or two transactions as the relay drives it.
//!
//! Input: `flags`, `shape`, `split seed`, then the bytes the server sends. Flags: bits 0-1
//! pick the TLS mode (off, STARTTLS, implicit, off), bit 2 gives credentials, bit 3 holds the
//! message back on a deferred recipient, bit 4 marks the first session as reused, bit 5 asks
//! for a second transaction after RSET. Shape: bits 0-1 are the number of recipients less
//! one, bit 2 makes one recipient UTF-8, bit 3 the body 8-bit, bit 4 gives the body lines
//! that start with a dot, bit 5 the null sender.
//!
//! Invariants: nothing of AUTH (nor the password in any encoding) is written before TLS is
//! established; every message gets exactly one result, and a list of outcomes has one per
//! recipient; a recipient is delivered only when the server accepted MAIL, its RCPT, DATA and
//! the end of data; RCPT goes only after an accepted MAIL and DATA only after an accepted
//! RCPT unless pipelined; the body only after 354 to an envelope with an accepted recipient;
//! a lone `.` only to end a pipelined DATA that nobody should receive; nothing is written
//! after a 421; the output is well-formed command lines; and without STARTTLS, any split of
//! the server's bytes gives the same conversation.

use mailer_core::address::Address;
use mailer_core::delivery::{FailureKind, Outcome};
use mailer_core::smtp::client::{ClientSession, Event, Interrupted, Settings, Tls};
use mailer_core::smtp::protocol::{
    auth_login_line, auth_plain_command, dot_stuff, BodyFacts, Reply,
};
use mailer_core::tables::secrets::Credentials;
use smtp_proto::response::parser::ResponseReceiver;

use super::chunks;

const USER: &str = "alice";
const PASSWORD: &str = "correct horse battery staple";

/// One thing the client wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Written {
    Command(String),
    Body,
}

/// One message handed to the session.
#[derive(Debug)]
struct Sent {
    /// Index in [`Run::written`] where its commands start.
    start: usize,
    /// Whether the server offered PIPELINING (and the message is not held back on deferral),
    /// so MAIL, the RCPTs and DATA go in one batch.
    pipelined: bool,
    result: Option<Event>,
}

/// What one run of the session did.
#[derive(Debug)]
struct Run {
    written: Vec<Written>,
    events: Vec<Event>,
    messages: Vec<Sent>,
    starttls: bool,
}

struct Message {
    sender: Option<Address>,
    recipients: Vec<Address>,
    body: Vec<u8>,
}

fn message(shape: u8) -> Message {
    let names = [
        "ann@example.org",
        "bob@example.org",
        "cid@example.net",
        "dee@example.org",
    ];
    let count = 1 + usize::from(shape & 3);
    let mut recipients: Vec<Address> = names[..count]
        .iter()
        .map(|n| Address::parse(n).expect("literal"))
        .collect();
    if shape & 4 != 0 {
        recipients[count - 1] = Address::parse("jösé@exämple.org").expect("literal");
    }
    let mut body = b"Subject: fuzz\r\n\r\nhello\r\n".to_vec();
    if shape & 8 != 0 {
        body.extend_from_slice("naïve\r\n".as_bytes());
    }
    if shape & 16 != 0 {
        body.extend_from_slice(b".\r\n..two\r\n.");
    }
    let sender = (shape & 32 == 0).then(|| Address::parse("app@ublog.tech").expect("literal"));
    Message {
        sender,
        recipients,
        body,
    }
}

fn settings(flags: u8) -> Settings {
    Settings {
        server: "relay.test[192.0.2.1]:25".into(),
        helo_name: "client.test".into(),
        tls: match flags & 3 {
            1 => Tls::StartTls,
            2 => Tls::Implicit,
            _ => Tls::Off,
        },
        credentials: (flags & 4 != 0).then(|| Credentials {
            user: USER.into(),
            password: PASSWORD.into(),
        }),
        hold_on_deferral: flags & 8 != 0,
    }
}

/// Drives a session as the relay does, the server's bytes cut into `pieces`.
fn drive(flags: u8, message: &Message, pieces: &[&[u8]]) -> Run {
    let mut session = ClientSession::new(settings(flags));
    let mut tls = flags & 3 == 2;
    let mut run = Run {
        written: Vec::new(),
        events: Vec::new(),
        messages: Vec::new(),
        starttls: false,
    };
    let mut pieces = pieces.iter();
    let mut input_ended = false;
    let mut finished = false;
    let wanted = if flags & 32 != 0 { 2 } else { 1 };
    loop {
        let output = session.take_output();
        if !output.is_empty() {
            assert!(!finished, "output after the session ended: {output:?}");
            if !tls {
                check_plaintext(&output);
            }
            run.written
                .extend(command_lines(&output).into_iter().map(Written::Command));
        }
        if let Some(event) = session.poll_event() {
            assert!(!finished, "event {event:?} after the session ended");
            match &event {
                Event::StartTls => {
                    assert!(!tls, "STARTTLS inside TLS");
                    run.starttls = true;
                    tls = true;
                    session.tls_established();
                }
                Event::Ready => {
                    if run.messages.len() < wanted {
                        let reused = run.messages.len() == 1 || flags & 16 != 0;
                        run.messages.push(Sent {
                            start: run.written.len(),
                            pipelined: session.capabilities().pipelining && flags & 8 == 0,
                            result: None,
                        });
                        session.send_message(
                            message.sender.as_ref(),
                            &message.recipients,
                            BodyFacts::of(&message.body),
                            reused,
                        );
                    } else {
                        session.quit();
                    }
                }
                Event::SendBody => {
                    let pending = session.take_output();
                    assert!(pending.is_empty(), "commands after DATA: {pending:?}");
                    let body: Vec<u8> = dot_stuff(&message.body);
                    assert!(body.ends_with(b"\r\n.\r\n") || body == b".\r\n");
                    run.written.push(Written::Body);
                    session.body_sent();
                }
                Event::Outcomes { .. } | Event::Failed(_) => {
                    let Some(current) = run.messages.last_mut().filter(|m| m.result.is_none())
                    else {
                        if let Event::Failed(_) = &event {
                            // The server closed on us between transactions.
                            finished = true;
                            run.events.push(event);
                            continue;
                        }
                        panic!("a result with no message in flight: {event:?}");
                    };
                    current.result = Some(event.clone());
                    if matches!(event, Event::Failed(_)) {
                        finished = true;
                    } else if run.messages.len() < wanted && session.is_usable() {
                        session.reset();
                    } else {
                        session.quit();
                    }
                }
                Event::Closed => finished = true,
            }
            run.events.push(event);
            continue;
        }
        if finished {
            break;
        }
        if session.awaiting().is_none() {
            panic!("the session stalled: no event, no reply awaited");
        }
        match pieces.next() {
            Some(piece) => session.receive(piece),
            None if !input_ended => {
                input_ended = true;
                session.end_of_input();
            }
            None => panic!("the session ignored the end of input"),
        }
    }
    assert!(session.poll_event().is_none());
    assert!(session.take_output().is_empty());
    run
}

/// Nothing of AUTH before TLS: not the command, not the user and password in any encoding.
fn check_plaintext(output: &[u8]) {
    let text = String::from_utf8_lossy(output);
    let upper = text.to_ascii_uppercase();
    assert!(!upper.contains("AUTH"), "AUTH before TLS: {text:?}");
    for secret in [
        PASSWORD.to_string(),
        auth_plain_command(USER, PASSWORD),
        auth_login_line(USER),
        auth_login_line(PASSWORD),
    ] {
        let secret = secret.trim_end();
        assert!(!text.contains(secret), "credentials before TLS: {text:?}");
    }
}

/// The commands of one write; panics unless it is whole, well-formed command lines.
fn command_lines(output: &[u8]) -> Vec<String> {
    assert!(
        output.ends_with(b"\r\n"),
        "partial command line: {output:?}"
    );
    let text = std::str::from_utf8(output).expect("commands are UTF-8");
    let lines: Vec<String> = text
        .strip_suffix("\r\n")
        .expect("checked above")
        .split("\r\n")
        .map(str::to_string)
        .collect();
    for line in &lines {
        assert!(
            !line.chars().any(char::is_control),
            "control character in command {line:?}"
        );
        let known = ["EHLO ", "HELO ", "MAIL FROM:<", "RCPT TO:<", "AUTH PLAIN "]
            .iter()
            .any(|p| line.starts_with(p))
            || ["STARTTLS", "AUTH LOGIN", "DATA", "RSET", "QUIT", "."].contains(&line.as_str())
            || is_base64(line);
        assert!(known, "not a command: {line:?}");
        assert!(line.len() <= 510, "command line too long: {line:?}");
    }
    lines
}

fn is_base64(line: &str) -> bool {
    !line.is_empty()
        && line
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=')
}

/// The server's replies in order, up to the first that is malformed or out of 2xx-5xx.
fn replies(stream: &[u8]) -> Vec<Reply> {
    let mut receiver = ResponseReceiver::default();
    let mut out = Vec::new();
    let mut bytes = stream.iter();
    while bytes.len() > 0 {
        match receiver.parse(&mut bytes) {
            Ok(response) if (200..600).contains(&response.code) => {
                receiver.reset();
                out.push(Reply::from_proto(response));
            }
            _ => break,
        }
    }
    out
}

/// The reply to exchange `i` (0 is the greeting, then each command and body in order): once
/// the server said 421 it is closing, and that is every later answer.
fn answer(replies: &[Reply], i: usize) -> Option<&Reply> {
    replies
        .iter()
        .take(i + 1)
        .find(|r| r.code == 421)
        .or_else(|| replies.get(i))
}

/// Nothing is written once the server has said 421, except the rest of a pipelined batch
/// that was already on its way.
fn check_closing(run: &Run, message: &Message, replies: &[Reply]) {
    let Some(i) = replies.iter().position(|r| r.code == 421) else {
        return;
    };
    // replies[i] answers exchange i: the greeting for 0, else written[i - 1].
    let batch_end = i.checked_sub(1).and_then(|answered| {
        run.messages.iter().find_map(|m| {
            let end = m.start + message.recipients.len() + 2;
            (m.pipelined && (m.start..end).contains(&answered)).then_some(end)
        })
    });
    for (k, w) in run.written.iter().enumerate().skip(i) {
        assert!(
            batch_end.is_some_and(|end| k < end),
            "{w:?} written after the server closed with 421"
        );
    }
}

fn check_transactions(run: &Run, message: &Message, hold: bool, replies: &[Reply]) {
    let n = message.recipients.len();
    // Exchange i + 1 answers written[i]; the greeting is exchange 0.
    let reply_to = |i: usize| answer(replies, i + 1);
    let positive = |r: Option<&Reply>| r.is_some_and(Reply::is_positive);
    let command = |w: Option<&Written>| match w {
        Some(Written::Command(line)) => Some(line.clone()),
        _ => None,
    };

    for (m, sent) in run.messages.iter().enumerate() {
        let Some(result) = &sent.result else {
            panic!("a message got no result: {:?}", run.events);
        };
        let start = sent.start;
        let end = run
            .messages
            .get(m + 1)
            .map_or(run.written.len(), |next| next.start);
        let items = &run.written[start..end];
        let sent_mail = command(items.first()).is_some_and(|l| l.starts_with("MAIL FROM:"));
        let mut rcpt_replies: Vec<Option<&Reply>> = Vec::new();
        let mut body_at = None;
        if sent_mail {
            let mail = reply_to(start);
            let mut i = 1;
            while command(items.get(i)).is_some_and(|l| l.starts_with("RCPT TO:")) {
                assert!(
                    sent.pipelined || positive(mail),
                    "RCPT after a refused MAIL: {items:?}"
                );
                assert!(
                    !hold
                        || !rcpt_replies
                            .iter()
                            .any(|r| r.is_some_and(|r| r.code / 100 == 4)),
                    "RCPT after a deferred one though the message is held back"
                );
                rcpt_replies.push(reply_to(start + i));
                i += 1;
            }
            assert!(rcpt_replies.len() <= n, "more RCPTs than recipients");
            if sent.pipelined {
                assert_eq!(rcpt_replies.len(), n, "a pipelined batch has every RCPT");
            }
            let accepted = positive(mail) && rcpt_replies.iter().any(|r| positive(*r));
            if command(items.get(i)).as_deref() == Some("DATA") {
                assert!(
                    sent.pipelined || accepted,
                    "DATA after an envelope with no accepted recipient"
                );
                let data = reply_to(start + i);
                match items.get(i + 1) {
                    Some(Written::Body) => {
                        assert!(accepted, "body sent with no accepted recipient");
                        assert!(
                            data.is_some_and(Reply::is_intermediate),
                            "body sent without 354"
                        );
                        body_at = Some(i + 1);
                    }
                    Some(Written::Command(line)) if line == "." => {
                        assert!(sent.pipelined, "a lone dot without a pipelined DATA");
                        assert!(!accepted, "an accepted envelope ended empty");
                        assert!(data.is_some_and(Reply::is_intermediate));
                    }
                    _ => {}
                }
            } else {
                assert!(!sent.pipelined, "a pipelined batch without DATA");
            }
        }
        match result {
            Event::Outcomes { outcomes, replies } => {
                assert_eq!(outcomes.len(), n, "one outcome per recipient");
                if !sent_mail {
                    assert!(replies.mail.is_none());
                    for outcome in outcomes {
                        assert!(
                            matches!(outcome, Outcome::Failed(f) if f.kind == FailureKind::Capability),
                            "a message not offered gets {outcome:?}"
                        );
                    }
                    continue;
                }
                for (k, outcome) in outcomes.iter().enumerate() {
                    let Outcome::Delivered { reply } = outcome else {
                        continue;
                    };
                    let body_at = body_at.expect("delivered without the body");
                    let end = reply_to(start + body_at);
                    assert!(positive(reply_to(start)), "delivered after MAIL refused");
                    assert!(
                        positive(rcpt_replies.get(k).copied().flatten()),
                        "delivered after RCPT refused"
                    );
                    assert!(
                        positive(end),
                        "delivered though the end of data was refused"
                    );
                    assert_eq!(reply.as_deref(), end.map(Reply::verbatim).as_deref());
                }
            }
            Event::Failed(Interrupted { body_sent, .. }) => {
                assert_eq!(
                    *body_sent,
                    items.contains(&Written::Body),
                    "body_sent must say whether the body went"
                );
            }
            other => panic!("a message ended with {other:?}"),
        }
    }
}

pub fn run(data: &[u8]) {
    let [flags, shape, seed, stream @ ..] = data else {
        return;
    };
    let message = message(*shape);
    let hold = flags & 8 != 0;
    let replies = replies(stream);
    let split = drive(*flags, &message, &chunks(stream, *seed));
    check_closing(&split, &message, &replies);
    check_transactions(&split, &message, hold, &replies);
    let whole = drive(*flags, &message, &[stream]);
    check_closing(&whole, &message, &replies);
    check_transactions(&whole, &message, hold, &replies);
    if !split.starttls && !whole.starttls {
        assert_eq!(
            split.written, whole.written,
            "the split changed what was written"
        );
        assert_eq!(split.events, whole.events, "the split changed the events");
    }
}
