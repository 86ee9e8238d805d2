//! Submissions kept while the daemon is down: the files `mailer sendmail` leaves in
//! `<queue_dir>/offline/` and the daemon picks up, as Postfix's maildrop and OpenSMTPD's
//! offline queue.
//!
//! A file is a tiny versioned envelope, an empty line, then the message as [`prepare`]
//! completed it (CRLF line endings, not dot-stuffed):
//!
//! ```text
//! mailer-offline 1\n
//! from <cron@box.example>\n        `from <>` for the null sender
//! to <root@box.example>\n          one line per recipient, at least one
//! \n
//! Subject: ...\r\n ...
//! ```
//!
//! The directory is writable by everyone, so a file is untrusted input whoever wrote it:
//! [`parse`] takes any bytes without panicking, and [`receive`] runs the message through the
//! same [`Session`] as SMTP, submitted by the file's owner, so every rule of intake (routing,
//! recipients, size, line length, bare newlines, hops) applies unchanged, and the Received
//! header names the owner.
//!
//! [`prepare`]: super::sendmail::prepare

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::sendmail::{Failure, Submission, EX_DATAERR};
use super::session::{Event, Incoming, Peer, RecipientPolicy, Session, SessionConfig};
use crate::address::{Address, MAX_DOMAIN, MAX_LOCAL_PART};

/// The first word of every file.
pub const MAGIC: &str = "mailer-offline";
/// The format written; a file of another version is refused, never guessed at.
pub const VERSION: u32 = 1;
/// A temporary file (a write that never completed) older than this is removed.
pub const STALE_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Room for one envelope line: keyword, brackets and the longest address.
const LINE_ROOM: u64 = 16 + MAX_LOCAL_PART as u64 + 1 + MAX_DOMAIN as u64;

/// The envelope and message of a file.
#[derive(Debug, PartialEq, Eq)]
pub struct Dropped<'a> {
    /// `None` is the null reverse path.
    pub sender: Option<Address>,
    pub recipients: Vec<Address>,
    pub message: &'a [u8],
}

/// Why a file is not a submission.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FormatError {
    /// The first line is not `mailer-offline N`.
    NotOffline,
    UnsupportedVersion(String),
    /// The envelope does not end with an empty line.
    Truncated,
    /// Line `line` (from 1) is wrong.
    BadLine {
        line: usize,
        why: String,
    },
    NoSender,
    NoRecipients,
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FormatError::NotOffline => write!(f, "not a submission: no `{MAGIC} {VERSION}` line"),
            FormatError::UnsupportedVersion(v) => {
                write!(f, "submission format version {v:?} is not supported")
            }
            FormatError::Truncated => f.write_str("the envelope does not end with an empty line"),
            FormatError::BadLine { line, why } => write!(f, "envelope line {line}: {why}"),
            FormatError::NoSender => f.write_str("the envelope has no `from` line"),
            FormatError::NoRecipients => f.write_str("the envelope has no `to` line"),
        }
    }
}

impl std::error::Error for FormatError {}

/// The file for `submission`.
pub fn encode(submission: &Submission) -> Vec<u8> {
    let mut out = format!("{MAGIC} {VERSION}\n");
    match &submission.sender {
        Some(sender) => out.push_str(&format!("from <{sender}>\n")),
        None => out.push_str("from <>\n"),
    }
    for rcpt in &submission.recipients {
        out.push_str(&format!("to <{rcpt}>\n"));
    }
    out.push('\n');
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&submission.data);
    bytes
}

/// Reads a file written by [`encode`] (or by anyone else: any input is an answer).
pub fn parse(bytes: &[u8]) -> Result<Dropped<'_>, FormatError> {
    let (first, mut rest) = split_line(bytes).ok_or(FormatError::NotOffline)?;
    let version = std::str::from_utf8(first)
        .ok()
        .and_then(|l| l.strip_prefix(MAGIC))
        .and_then(|l| l.strip_prefix(' '))
        .ok_or(FormatError::NotOffline)?;
    if version != VERSION.to_string() {
        return Err(FormatError::UnsupportedVersion(
            version.chars().take(20).collect(),
        ));
    }
    let mut sender: Option<Option<Address>> = None;
    let mut recipients = Vec::new();
    let mut number = 1;
    loop {
        let (line, after) = split_line(rest).ok_or(FormatError::Truncated)?;
        rest = after;
        number += 1;
        if line.is_empty() {
            break;
        }
        let bad = |why: &str| FormatError::BadLine {
            line: number,
            why: why.to_string(),
        };
        let line = std::str::from_utf8(line).map_err(|_| bad("not UTF-8"))?;
        let (keyword, value) = line.split_once(' ').ok_or_else(|| bad("no value"))?;
        let path = value
            .strip_prefix('<')
            .and_then(|v| v.strip_suffix('>'))
            .ok_or_else(|| bad("the address is not within <>"))?;
        match keyword {
            "from" if sender.is_some() || !recipients.is_empty() => {
                return Err(bad("`from` must come once, before the recipients"));
            }
            "from" if path.is_empty() => sender = Some(None),
            "from" => {
                let address = Address::parse(path).map_err(|e| bad(&format!("sender: {e}")))?;
                sender = Some(Some(address));
            }
            "to" if sender.is_none() => return Err(FormatError::NoSender),
            "to" => {
                let address = Address::parse(path).map_err(|e| bad(&format!("recipient: {e}")))?;
                recipients.push(address);
            }
            _ => return Err(bad("unknown keyword")),
        }
    }
    let sender = sender.ok_or(FormatError::NoSender)?;
    if recipients.is_empty() {
        return Err(FormatError::NoRecipients);
    }
    Ok(Dropped {
        sender,
        recipients,
        message: rest,
    })
}

/// The line at the start of `bytes` without its LF, and what follows it.
fn split_line(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let lf = memchr::memchr(b'\n', bytes)?;
    Some((&bytes[..lf], &bytes[lf + 1..]))
}

/// Whether the message may be kept at all: a message the daemon would refuse for its size is
/// refused now, with the status the daemon's refusal would have given.
pub fn admissible(submission: &Submission, max_message_size: u64) -> Result<(), Failure> {
    if submission.data.len() as u64 > max_message_size {
        return Err(Failure::new(
            EX_DATAERR,
            format!(
                "the message is {} octets, more than the limit of {max_message_size}; \
                 the message was not sent",
                submission.data.len()
            ),
        ));
    }
    Ok(())
}

/// The name of a new file from 128 random bits: unguessable, so that nobody else can take or
/// aim at it in a directory they cannot list.
pub fn file_name(random: [u8; 16]) -> String {
    random.iter().map(|b| format!("{b:02x}")).collect()
}

/// The name a file is written under before it is complete; the daemon leaves such names be.
pub fn temporary_name(name: &str) -> String {
    format!(".{name}")
}

pub fn is_temporary(name: &str) -> bool {
    name.starts_with('.')
}

/// Whether a temporary file last written at `modified` is a write that will never complete.
pub fn is_stale(modified: SystemTime, now: SystemTime) -> bool {
    now.duration_since(modified)
        .is_ok_and(|age| age > STALE_AFTER)
}

/// What the daemon learns of a file from the descriptor it opened (never from the name,
/// which its owner may change under it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileFacts {
    pub regular: bool,
    /// Hard links: a file also linked elsewhere could be somebody else's.
    pub links: u64,
    pub size: u64,
}

/// The largest file worth reading: the message at its limit and an envelope of
/// `max_recipients` (more are refused by the session anyway).
pub fn max_file_size(max_message_size: u64, max_recipients: usize) -> u64 {
    let lines = max_recipients as u64 + 2;
    max_message_size
        .saturating_add(lines.saturating_mul(LINE_ROOM))
        .saturating_add(MAGIC.len() as u64 + 16)
}

/// Whether a file may be read as a submission; the reason when not.
pub fn check_file(facts: FileFacts, max_size: u64) -> Result<(), String> {
    if !facts.regular {
        return Err("not a regular file".into());
    }
    if facts.links != 1 {
        return Err(format!(
            "has {} hard links (a submission has one)",
            facts.links
        ));
    }
    if facts.size > max_size {
        return Err(format!(
            "{} octets, more than the {max_size} a submission may have",
            facts.size
        ));
    }
    Ok(())
}

/// What to do with a parsed file.
#[derive(Debug)]
pub enum Pickup {
    /// Queue the message. `refused` names the recipients intake turned away, with its reply
    /// to each: the file is kept aside for them once the message is queued.
    Queue {
        incoming: Box<Incoming>,
        refused: Vec<String>,
    },
    /// Intake refuses the whole message: why, in its replies.
    Refuse(String),
}

/// Runs the submission through an SMTP session, as if `peer` had sent it over the
/// submission socket: BDAT carries the message unstuffed, so the same checks see the same
/// octets.
pub fn receive(
    dropped: &Dropped<'_>,
    peer: Peer,
    config: Arc<SessionConfig>,
    policy: Arc<dyn RecipientPolicy>,
    now: SystemTime,
) -> Pickup {
    let hostname = config.hostname.clone();
    let mut session = Session::new(config, policy, peer, now);
    let _greeting = session.take_output();
    let ehlo = exchange(&mut session, format!("EHLO {hostname}\r\n").as_bytes(), now);
    if !ehlo.positive() {
        return Pickup::Refuse(format!("EHLO: {}", ehlo.text));
    }
    let utf8 = dropped.sender.as_ref().is_some_and(Address::is_utf8)
        || dropped.recipients.iter().any(Address::is_utf8);
    let mut mail = match &dropped.sender {
        Some(sender) => format!("MAIL FROM:<{sender}>"),
        None => "MAIL FROM:<>".to_string(),
    };
    if !dropped.message.is_ascii() {
        mail.push_str(" BODY=8BITMIME");
    }
    if utf8 {
        mail.push_str(" SMTPUTF8");
    }
    mail.push_str("\r\n");
    let reply = exchange(&mut session, mail.as_bytes(), now);
    if !reply.positive() {
        return Pickup::Refuse(format!("sender: {}", reply.text));
    }
    let mut accepted = 0;
    let mut refused = Vec::new();
    for rcpt in &dropped.recipients {
        let reply = exchange(
            &mut session,
            format!("RCPT TO:<{rcpt}>\r\n").as_bytes(),
            now,
        );
        if reply.positive() {
            accepted += 1;
        } else {
            refused.push(format!("<{rcpt}>: {}", reply.text));
        }
    }
    if accepted == 0 {
        return Pickup::Refuse(format!("no recipient accepted: {}", refused.join("; ")));
    }
    let mut bdat = format!("BDAT {} LAST\r\n", dropped.message.len()).into_bytes();
    bdat.extend_from_slice(dropped.message);
    session.receive(&bdat, now);
    // The file is in memory whole already: the content handed out goes back in one piece.
    let mut content = Vec::new();
    while let Some(event) = session.poll_event() {
        match event {
            Event::Content { bytes, .. } => content.extend_from_slice(&bytes),
            Event::Message(mut incoming) => {
                content.append(&mut incoming.rest);
                incoming.rest = content;
                return Pickup::Queue { incoming, refused };
            }
            _ => {}
        }
    }
    let reply = Answer::of(&session.take_output());
    Pickup::Refuse(format!("message: {}", reply.text))
}

/// The session's reply to one command, read back from its output.
struct Answer {
    code: u16,
    text: String,
}

impl Answer {
    fn of(output: &[u8]) -> Answer {
        let text = String::from_utf8_lossy(output);
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let code = lines
            .last()
            .and_then(|l| l.get(..3))
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let text = if lines.is_empty() {
            "no reply (the session ended)".to_string()
        } else {
            lines.join(" ")
        };
        Answer { code, text }
    }

    fn positive(&self) -> bool {
        (200..300).contains(&self.code)
    }
}

fn exchange(session: &mut Session, command: &[u8], now: SystemTime) -> Answer {
    session.receive(command, now);
    // Refusals are counted by the events; the reply says all the file's fate needs.
    while session.poll_event().is_some() {}
    Answer::of(&session.take_output())
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::intake::reply::replies;
    use crate::intake::session::Submitter;
    use crate::intake::{BareNewlines, Reply};

    fn submission(sender: Option<&str>, recipients: &[&str], data: &[u8]) -> Submission {
        Submission {
            sender: sender.map(|s| Address::parse(s).unwrap()),
            recipients: recipients
                .iter()
                .map(|r| Address::parse(r).unwrap())
                .collect(),
            data: data.to_vec(),
        }
    }

    #[test]
    fn a_file_reads_back_as_the_submission_it_was_written_from() {
        let s = submission(
            Some("cron@box.test"),
            &["root@box.test", "\"a b\"@x.test", "zoë@bücher.test"],
            b"Subject: x\r\n\r\nbody\r\n",
        );
        let bytes = encode(&s);
        assert!(bytes.starts_with(
            b"mailer-offline 1\nfrom <cron@box.test>\nto <root@box.test>\nto <\"a b\"@x.test>\n"
        ));
        let d = parse(&bytes).unwrap();
        assert_eq!(d.sender, s.sender);
        assert_eq!(d.recipients, s.recipients);
        assert_eq!(d.message, s.data);
        let bounce = submission(None, &["root@box.test"], b"");
        let bytes = encode(&bounce);
        let d = parse(&bytes).unwrap();
        assert_eq!((d.sender, d.message), (None, &b""[..]));
    }

    #[test]
    fn malformed_envelopes_name_what_is_wrong() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "not a submission"),
            (b"From: x\n\n", "not a submission"),
            (
                b"mailer-offline 2\nfrom <>\nto <a@b.test>\n\n",
                "version \"2\"",
            ),
            (b"mailer-offline 1\nfrom <>\nto <a@b.test>\n", "empty line"),
            (b"mailer-offline 1\nto <a@b.test>\n\n", "no `from`"),
            (b"mailer-offline 1\nfrom <>\n\nx", "no `to`"),
            (
                b"mailer-offline 1\nfrom <>\nto a@b.test\n\n",
                "line 3: the address",
            ),
            (
                b"mailer-offline 1\nfrom <>\nto <a@@b>\n\n",
                "line 3: recipient",
            ),
            (
                b"mailer-offline 1\nfrom <>\nbcc <a@b.test>\n\n",
                "unknown keyword",
            ),
            (b"mailer-offline 1\nfrom <>\nfrom <>\n\n", "once"),
            (b"mailer-offline 1\nfrom <>\nto <a@b.test>\r\n\n", "line 3"),
            (b"mailer-offline 1\nfrom <\xff>\n\n", "not UTF-8"),
        ];
        for (bytes, expected) in cases {
            let e = parse(bytes).unwrap_err().to_string();
            assert!(
                e.contains(expected),
                "{:?}: {e}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn names_are_hex_and_temporaries_hide_behind_a_dot() {
        let name = file_name([0xab; 16]);
        assert_eq!(name, "ab".repeat(16));
        assert!(is_temporary(&temporary_name(&name)));
        assert!(!is_temporary(&name));
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert!(!is_stale(t, t + Duration::from_secs(3600)));
        assert!(is_stale(t, t + Duration::from_secs(25 * 3600)));
        assert!(
            !is_stale(t + Duration::from_secs(60), t),
            "from the future: kept"
        );
    }

    #[test]
    fn only_a_single_regular_file_within_the_limit_is_read() {
        let max = max_file_size(1000, 3);
        assert!(max > 1000 + 5 * (MAX_LOCAL_PART + MAX_DOMAIN) as u64);
        let ok = FileFacts {
            regular: true,
            links: 1,
            size: max,
        };
        assert_eq!(check_file(ok, max), Ok(()));
        for (facts, reason) in [
            (
                FileFacts {
                    regular: false,
                    ..ok
                },
                "not a regular file",
            ),
            (FileFacts { links: 2, ..ok }, "2 hard links"),
            (
                FileFacts {
                    size: max + 1,
                    ..ok
                },
                "more than",
            ),
        ] {
            assert!(check_file(facts, max).unwrap_err().contains(reason));
        }
        let big = submission(None, &["a@b.test"], &[b'x'; 11]);
        assert_eq!(admissible(&big, 10).unwrap_err().code, EX_DATAERR);
        assert!(admissible(&big, 11).is_ok());
    }

    /// `nobody@` does not exist; `ublog.tech` is local; other domains are not routed.
    struct Policy;

    impl RecipientPolicy for Policy {
        fn route(&self, _: &Peer, _: Option<&Address>, rcpt: &Address) -> Result<String, Reply> {
            match (rcpt.local_part(), rcpt.domain()) {
                ("nobody", _) => Err(Reply::status(550, 1, 1, "No such user here")),
                (_, "ublog.tech") => Ok("local_mail".into()),
                _ => Err(replies::relay_denied()),
            }
        }
    }

    fn config(bare_newlines: BareNewlines) -> Arc<SessionConfig> {
        Arc::new(SessionConfig {
            hostname: "mx.ublog.tech".into(),
            max_message_size: 1000,
            max_recipients: 3,
            max_line_length: 100,
            bare_newlines,
            starttls: false,
            max_hops: 3,
            max_errors: 20,
            idle_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(600),
        })
    }

    fn alice() -> Peer {
        Peer {
            addr: None,
            submitter: Some(Submitter {
                uid: 1000,
                login: Some("alice".into()),
            }),
        }
    }

    fn pick_up(s: &Submission, mode: BareNewlines) -> Pickup {
        let bytes = encode(s);
        let dropped = parse(&bytes).unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        receive(&dropped, alice(), config(mode), Arc::new(Policy), now)
    }

    #[test]
    fn a_picked_up_message_is_received_from_its_owner_like_smtp() {
        let s = submission(
            Some("alice@ublog.tech"),
            &["root@ublog.tech"],
            b"Subject: hi\r\n\r\n.dot\r\n\xc3\xa9\r\n",
        );
        let Pickup::Queue { incoming, refused } = pick_up(&s, BareNewlines::Reject) else {
            panic!("refused")
        };
        assert!(refused.is_empty());
        assert_eq!(incoming.sender, s.sender);
        assert_eq!(incoming.recipients.len(), 1);
        assert_eq!(incoming.recipients[0].action, "local_mail");
        assert!(incoming.eightbit);
        assert_eq!(incoming.peer, alice());
        let text = String::from_utf8_lossy(&incoming.rest).into_owned();
        assert!(
            text.starts_with(
                "Received: from mx.ublog.tech (userid 1000 alice)\r\n\tby mx.ublog.tech (mailer) with ESMTP id "
            ),
            "{text}"
        );
        assert!(
            text.contains("\r\n\tfor <root@ublog.tech>; Tue, 14 Nov 2023"),
            "{text}"
        );
        assert!(incoming.rest.ends_with(&s.data), "byte for byte: {text}");
    }

    #[test]
    fn refused_recipients_are_named_and_the_others_get_the_message() {
        let s = submission(
            Some("alice@ublog.tech"),
            &["nobody@ublog.tech", "root@ublog.tech", "x@elsewhere.test"],
            b"Subject: hi\r\n\r\nbody\r\n",
        );
        let Pickup::Queue { incoming, refused } = pick_up(&s, BareNewlines::Reject) else {
            panic!("refused")
        };
        assert_eq!(incoming.recipients.len(), 1);
        assert_eq!(refused.len(), 2, "{refused:?}");
        assert!(
            refused[0].starts_with("<nobody@ublog.tech>: 550 5.1.1 "),
            "{refused:?}"
        );
        assert!(
            refused[1].starts_with("<x@elsewhere.test>: 550 "),
            "{refused:?}"
        );
        let s = submission(None, &["nobody@ublog.tech"], b"x\r\n");
        let Pickup::Refuse(why) = pick_up(&s, BareNewlines::Reject) else {
            panic!("queued")
        };
        assert!(
            why.starts_with("no recipient accepted: <nobody@ublog.tech>: 550"),
            "{why}"
        );
    }

    #[test]
    fn the_message_rules_of_intake_apply() {
        let rcpt = &["root@ublog.tech"][..];
        let bare = submission(None, rcpt, b"Subject: x\r\n\r\nbare\nLF\r\n");
        let Pickup::Refuse(why) = pick_up(&bare, BareNewlines::Reject) else {
            panic!("a bare LF is refused")
        };
        assert!(why.starts_with("message: 5"), "{why}");
        let Pickup::Queue { incoming, .. } = pick_up(&bare, BareNewlines::Normalize) else {
            panic!("a bare LF is normalized")
        };
        assert!(incoming.rest.ends_with(b"\r\nbare\r\nLF\r\n"));
        let long = [b'x'; 101];
        let mut text = b"Subject: x\r\n\r\n".to_vec();
        text.extend_from_slice(&long);
        for data in [
            text,
            vec![b'y'; 1001],
            b"Received: a\r\nReceived: b\r\nReceived: c\r\n\r\nloop\r\n".to_vec(),
        ] {
            let s = submission(None, rcpt, &data);
            assert!(matches!(
                pick_up(&s, BareNewlines::Normalize),
                Pickup::Refuse(_)
            ));
        }
        let many: Vec<String> = (0..5).map(|i| format!("u{i}@ublog.tech")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let s = submission(None, &many, b"x\r\n");
        let Pickup::Queue { incoming, refused } = pick_up(&s, BareNewlines::Reject) else {
            panic!("refused")
        };
        assert_eq!((incoming.recipients.len(), refused.len()), (3, 2));
        assert!(refused[0].contains(": 452 "), "{refused:?}");
    }
}
