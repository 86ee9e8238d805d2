//! A message sent with BDAT (RFC 3030) in chunks whose contents and boundaries come from the
//! input, over a transport that splits reads anywhere.
//!
//! Input: `flags`, `split seed`, then chunks as `length` octet + that many octets (the last
//! one is `BDAT n LAST`, or all are followed by `BDAT 0 LAST`). Flags: bit 0 normalizes bare
//! newlines (else rejects them), bits 1-3 pick a small line length limit, bit 4 a small size
//! limit, bit 5 ends with a separate `BDAT 0 LAST`.
//!
//! Invariants: a queued message is our Received header followed by the client's content,
//! byte for byte apart from line endings; it has CRLF line endings only and no content line
//! over the limit; content with a bare CR or LF is refused with 5xx when rejecting; clean
//! content that fits the limits is queued; every reply is a valid SMTP reply, one per command.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mailer_core::address::Address;
use mailer_core::intake::{
    BareNewlines, Event, Peer, RecipientPolicy, Reply, Session, SessionConfig,
};
use mailer_core::queue::QueueId;

use super::{chunks, has_bare_newline, parse_replies};

const LINE_LIMITS: [usize; 8] = [8, 12, 16, 24, 32, 48, 64, 78];
/// Enough to reach the limits with libFuzzer's default input size, few enough that the
/// refusals after a failed chunk stay under the error limit.
const MAX_CHUNKS: usize = 64;

/// Accepts every recipient: routing is the session target's concern, content is this one's.
struct Everyone;

impl RecipientPolicy for Everyone {
    fn route(&self, _: &Peer, _: Option<&Address>, _: &Address) -> Result<String, Reply> {
        Ok("relay".to_string())
    }
}

/// What a session made of one conversation.
struct Outcome {
    /// Reply codes in order, greeting first.
    codes: Vec<u16>,
    messages: Vec<Vec<u8>>,
}

/// Runs EHLO, MAIL, RCPT, the BDAT chunks and QUIT through a session, `split` deciding how
/// the transport cuts the stream.
fn converse(config: &Arc<SessionConfig>, bdats: &[(&[u8], bool)], split: u8) -> Outcome {
    let mut stream = b"EHLO client.example\r\n\
        MAIL FROM:<sender@example.org>\r\n\
        RCPT TO:<alice@ublog.tech>\r\n"
        .to_vec();
    for (chunk, last) in bdats {
        let last = if *last { " LAST" } else { "" };
        stream.extend_from_slice(format!("BDAT {}{last}\r\n", chunk.len()).as_bytes());
        stream.extend_from_slice(chunk);
    }
    stream.extend_from_slice(b"QUIT\r\n");

    // One instant throughout, so every run of a configuration writes the same header.
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let peer = Peer {
        addr: Some("127.0.0.1:40000".parse().expect("literal")),
        submitter: None,
    };
    let mut session = Session::new(config.clone(), Arc::new(Everyone), peer, now);
    let mut outcome = Outcome {
        codes: Vec::new(),
        messages: Vec::new(),
    };
    let collect = |session: &mut Session, outcome: &mut Outcome| {
        let output = session.take_output();
        outcome
            .codes
            .extend(parse_replies(&output).into_iter().map(|(code, _)| code));
    };
    collect(&mut session, &mut outcome);
    let mut content = Vec::new();
    for piece in chunks(&stream, split) {
        session.receive(piece, now);
        loop {
            while let Some(event) = session.poll_event() {
                match event {
                    Event::Content { bytes, .. } => content.extend_from_slice(&bytes),
                    Event::Message(incoming) => {
                        let mut message = std::mem::take(&mut content);
                        message.extend_from_slice(&incoming.rest);
                        outcome.messages.push(message);
                        session.queued(Ok(QueueId::generate(now)), now);
                    }
                    _ => {}
                }
            }
            if !session.has_output() {
                break;
            }
            collect(&mut session, &mut outcome);
        }
    }
    session.end_of_input();
    collect(&mut session, &mut outcome);
    while let Some(event) = session.poll_event() {
        assert!(
            !matches!(event, Event::Message(_)),
            "a message was queued at the end of input"
        );
    }
    outcome
}

/// The chunks the input describes: `(content, is LAST)`.
fn plan(mut rest: &[u8], separate_last: bool) -> Vec<(&[u8], bool)> {
    let mut out: Vec<(&[u8], bool)> = Vec::new();
    while let [len, tail @ ..] = rest {
        if out.len() == MAX_CHUNKS {
            break;
        }
        let (chunk, tail) = tail.split_at(usize::from(*len).min(tail.len()));
        out.push((chunk, false));
        rest = tail;
    }
    match out.last_mut() {
        Some(last) if !separate_last => last.1 = true,
        _ => out.push((b"", true)),
    }
    out
}

/// Lines of `bytes` as separated by CR or LF, each line without its line ending.
fn segments(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    bytes.split(|&b| b == b'\r' || b == b'\n')
}

fn without_newlines(bytes: &[u8]) -> Vec<u8> {
    bytes
        .iter()
        .copied()
        .filter(|&b| b != b'\r' && b != b'\n')
        .collect()
}

fn contains_ignore_case(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

pub fn run(data: &[u8]) {
    let [flags, split, rest @ ..] = data else {
        return;
    };
    let mode = if flags & 1 != 0 {
        BareNewlines::Normalize
    } else {
        BareNewlines::Reject
    };
    let max_line = LINE_LIMITS[usize::from((flags >> 1) & 7)];
    let max_size = if flags & 16 != 0 { 64 } else { 64 * 1024 };
    let config = Arc::new(SessionConfig {
        hostname: "mx.ublog.tech".to_string(),
        max_message_size: max_size,
        max_recipients: 10,
        max_line_length: max_line,
        bare_newlines: mode,
        starttls: false,
        max_hops: 50,
        max_errors: 4 * MAX_CHUNKS,
        idle_timeout: Duration::from_secs(300),
        data_timeout: Duration::from_secs(600),
    });

    // Our header for this configuration: the same conversation with a trivial message.
    let reference = converse(&config, &[(b"x\r\n", true)], 0);
    let [reference] = &reference.messages[..] else {
        panic!("a one-line message is not queued: {:?}", reference.codes);
    };
    let header = reference
        .strip_suffix(b"x\r\n")
        .expect("the trivial message ends with its content");
    assert!(
        header.starts_with(b"Received: "),
        "no Received header first"
    );
    assert!(header.ends_with(b"\r\n"), "our header does not end a line");

    let plan = plan(rest, flags & 32 != 0);
    let content: Vec<u8> = plan.iter().flat_map(|(c, _)| c.iter().copied()).collect();
    let outcome = converse(&config, &plan, *split);
    let codes = &outcome.codes;

    // Greeting, EHLO, MAIL, RCPT, one reply per BDAT, QUIT.
    assert_eq!(
        codes.len(),
        5 + plan.len(),
        "not one reply per command: {codes:?}"
    );
    assert_eq!(&codes[..4], [220, 250, 250, 250], "{codes:?}");
    assert_eq!(codes[codes.len() - 1], 221, "{codes:?}");
    let chunk_codes = &codes[4..codes.len() - 1];
    for code in chunk_codes {
        assert!(
            *code == 250 || (500..600).contains(code),
            "BDAT answered {code}: {codes:?}"
        );
    }
    let last = chunk_codes[chunk_codes.len() - 1];

    let bare = has_bare_newline(&content);
    let message = match &outcome.messages[..] {
        [] => {
            assert!(
                (500..600).contains(&last),
                "no message, yet the last chunk got {last}"
            );
            let fits = segments(&content).all(|l| l.len() <= max_line)
                && content.len() * 2 <= max_size
                && !contains_ignore_case(&content, b"received:");
            assert!(
                !fits || (bare && mode == BareNewlines::Reject),
                "acceptable content refused with {codes:?}: {:?}",
                String::from_utf8_lossy(&content)
            );
            return;
        }
        [message] => message,
        _ => panic!("one transaction queued {} messages", outcome.messages.len()),
    };
    assert_eq!(last, 250, "a queued message answered {last}");
    assert!(
        chunk_codes.iter().all(|&c| c == 250),
        "a queued message had a refused chunk: {codes:?}"
    );
    assert!(
        !(bare && mode == BareNewlines::Reject),
        "content with a bare CR or LF queued while rejecting them: {:?}",
        String::from_utf8_lossy(message)
    );
    assert!(
        message.starts_with(b"Received: "),
        "no Received header first"
    );
    assert!(
        !has_bare_newline(message),
        "queued message has a bare CR or LF: {:?}",
        String::from_utf8_lossy(message)
    );

    // The first `header.len()` octets are our header (the queue id aside); the rest is the
    // client's content.
    assert!(
        message.len() >= header.len(),
        "message shorter than our header"
    );
    let (ours, theirs) = message.split_at(header.len());
    let same_but_id = ours
        .iter()
        .zip(header)
        .all(|(a, b)| a == b || (a.is_ascii_hexdigit() && b.is_ascii_hexdigit()));
    assert!(
        same_but_id,
        "header {:?} differs from {:?}",
        String::from_utf8_lossy(ours),
        String::from_utf8_lossy(header)
    );
    for line in theirs.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        assert!(
            line.len() <= max_line,
            "content line of {} octets over the limit {max_line}: {:?}",
            line.len(),
            String::from_utf8_lossy(line)
        );
    }
    if bare {
        assert_eq!(
            without_newlines(theirs),
            without_newlines(&content),
            "content changed beyond its line endings"
        );
    } else {
        assert!(theirs == content, "clean content changed");
    }
    assert!(
        theirs.len() <= max_size,
        "{} octets queued over the limit {max_size}",
        theirs.len()
    );
}
