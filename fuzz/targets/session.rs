//! The SMTP session fed an arbitrary byte stream split at arbitrary points (pipelining, DATA,
//! BDAT, STARTTLS), with the ublog.tech match rules deciding recipients.
//!
//! Input: `flags`, `split seed`, then the client's bytes. Invariants: every reply is a valid
//! SMTP reply whose code fits the state; no recipient is accepted that the match rules refuse
//! (and none outside the local domains from a remote client); a queued message has CRLF line
//! endings only, fits the size limit and has at most `max_recipients` distinct recipients;
//! memory held by the session stays bounded by the limits.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use mailer_core::config::Config;
use mailer_core::intake::{BareNewlines, Event, Peer, QueueRefused, Session, SessionConfig};
use mailer_core::policy::router::Router;
use mailer_core::queue::QueueId;

use super::{check_enhanced, chunks, has_bare_newline, memory, parse_replies, Rng};

/// Room our Received header may take beyond the message size limit.
const HEADER_ROOM: usize = 4096;

fn deployment() -> &'static (Config, Router) {
    static CELL: OnceLock<(Config, Router)> = OnceLock::new();
    CELL.get_or_init(|| {
        let config = Config::parse(
            include_str!("../../config/mailer.toml"),
            std::path::Path::new("config/mailer.toml"),
        )
        .expect("the shipped configuration parses");
        let router = Router::new(&config);
        (config, router)
    })
}

/// What the reply sequence has shown so far.
struct Replies {
    count: usize,
    last: Option<u16>,
    closed: bool,
}

impl Replies {
    fn check(&mut self, output: &[u8]) {
        for (code, lines) in parse_replies(output) {
            assert!(!self.closed, "reply {code} after the closing reply");
            for line in &lines {
                check_enhanced(code, line);
            }
            if self.count == 0 {
                assert_eq!(code, 220, "the greeting is not 220");
            } else {
                assert!(
                    matches!(
                        code,
                        211 | 214
                            | 221
                            | 250
                            | 252
                            | 354
                            | 421
                            | 451
                            | 452
                            | 500
                            | 501
                            | 502
                            | 503
                            | 550
                            | 552
                            | 553
                            | 554
                            | 555
                    ) || code == 220,
                    "unexpected reply code {code}: {lines:?}"
                );
            }
            if self.last == Some(354) {
                // After "354 go ahead" only the verdict on the message may come.
                assert!(
                    matches!(code, 250 | 421 | 451 | 452 | 550 | 552 | 554),
                    "reply {code} after 354 is not an end-of-data verdict"
                );
            }
            if code == 221 || code == 421 {
                self.closed = true;
            }
            self.last = Some(code);
            self.count += 1;
        }
    }
}

pub fn run(data: &[u8]) {
    let [flags, seed, input @ ..] = data else {
        return;
    };
    let (config, router) = deployment();
    let session_config = Arc::new(SessionConfig {
        hostname: config.hostname.clone(),
        max_message_size: if flags & 1 != 0 { 300 } else { 64 * 1024 },
        max_recipients: 1 + usize::from((flags >> 1) & 3) * 2,
        max_line_length: if flags & 8 != 0 { 78 } else { 1000 },
        bare_newlines: if flags & 16 != 0 {
            BareNewlines::Normalize
        } else {
            BareNewlines::Reject
        },
        starttls: flags & 32 != 0,
        // Small limits on some inputs, so the loop check and the error cut-off are reached;
        // generous ones on the rest, so long sessions are explored.
        max_hops: if flags & 8 != 0 { 3 } else { 50 },
        max_errors: if flags & 4 != 0 { 5 } else { 1000 },
        idle_timeout: Duration::from_secs(300),
        data_timeout: Duration::from_secs(600),
    });
    let peer_addr: SocketAddr = if flags & 64 != 0 {
        "192.0.2.7:40000".parse().expect("literal")
    } else {
        "127.0.0.1:40000".parse().expect("literal")
    };
    let peer = Peer {
        addr: Some(peer_addr),
        submitter: None,
    };
    let mut rng = Rng::new(u64::from(*seed) << 8 | u64::from(*flags));
    let mut now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);

    let pieces = chunks(input, *seed);
    let shutdown_at = (flags & 128 != 0).then(|| rng.next() as usize % (pieces.len() + 1));
    // Measured from here: only what the session allocates (and the little this loop keeps).
    let baseline = memory::live();
    let mut session = Session::new(
        session_config.clone(),
        Arc::new(router.clone()),
        peer.clone(),
        now,
    );
    let mut replies = Replies {
        count: 0,
        last: None,
        closed: false,
    };
    replies.check(&session.take_output());

    // The content handed out for the message being received, by its queue id.
    let mut content: Option<(QueueId, Vec<u8>)> = None;
    for (i, piece) in pieces.iter().enumerate() {
        if shutdown_at == Some(i) {
            session.begin_shutdown();
        }
        now += Duration::from_millis(10);
        session.receive(piece, now);
        loop {
            while let Some(event) = session.poll_event() {
                match event {
                    Event::Content { id, bytes } => {
                        if content.as_ref().is_none_or(|(of, _)| *of != id) {
                            content = Some((id, Vec::new()));
                        }
                        if let Some((_, c)) = content.as_mut() {
                            c.extend_from_slice(&bytes);
                        }
                    }
                    Event::Message(incoming) => {
                        let mut message = match content.take() {
                            Some((id, c)) if id == incoming.id => c,
                            _ => Vec::new(),
                        };
                        message.extend_from_slice(&incoming.rest);
                        assert_eq!(incoming.size, message.len() as u64, "size of the message");
                        assert!(message.starts_with(&incoming.head), "head is the start");
                        check_incoming(&incoming, &message, &session_config, config, router);
                        let id = QueueId::generate(now);
                        let answer = if rng.next().is_multiple_of(8) {
                            Err(if rng.next().is_multiple_of(2) {
                                QueueRefused::StorageFull
                            } else {
                                QueueRefused::Failed
                            })
                        } else {
                            Ok(id)
                        };
                        session.queued(answer, now);
                    }
                    Event::StartTls => {
                        replies.check(&session.take_output());
                        session.tls_established(now);
                    }
                    Event::Close | Event::Rejected(_) => {}
                }
            }
            let output = session.take_output();
            if output.is_empty() {
                break;
            }
            replies.check(&output);
        }
        // What this harness keeps of the content is not the session's.
        let kept = content.as_ref().map_or(0, |(_, c)| c.capacity()) as isize;
        let held = memory::live() - baseline - kept;
        let bound =
            3 * (session_config.max_message_size + HEADER_ROOM) + 3 * piece.len() + 64 * 1024;
        assert!(
            held <= bound as isize,
            "session holds {held} bytes, more than {bound}"
        );
        if session.is_closed() {
            break;
        }
    }
    if flags & 4 != 0 {
        // Past every deadline: the idle and the data timeout alike.
        session.handle_timeout(now + Duration::from_secs(3600));
    } else {
        session.end_of_input();
    }
    replies.check(&session.take_output());
    while let Some(event) = session.poll_event() {
        assert!(
            !matches!(event, Event::Message(_)),
            "a message was queued at the end of input"
        );
    }
}

fn check_incoming(
    incoming: &mailer_core::intake::Incoming,
    message: &[u8],
    limits: &SessionConfig,
    config: &Config,
    router: &Router,
) {
    assert!(
        !has_bare_newline(message),
        "queued message has a bare CR or LF: {:?}",
        String::from_utf8_lossy(message)
    );
    assert!(
        message.starts_with(b"Received: from "),
        "no Received header first"
    );
    let hops = message
        .split(|&b| b == b'\n')
        .take_while(|l| *l != b"\r" && !l.is_empty())
        .filter(|l| l.len() >= 9 && l[..9].eq_ignore_ascii_case(b"received:"))
        .count();
    assert!(
        hops <= limits.max_hops,
        "queued with {hops} Received: fields over the limit {}",
        limits.max_hops
    );
    assert!(
        message.len() <= limits.max_message_size + HEADER_ROOM,
        "queued message of {} octets over the limit {}",
        message.len(),
        limits.max_message_size
    );
    assert!(
        !incoming.recipients.is_empty(),
        "message without recipients"
    );
    assert!(
        incoming.recipients.len() <= limits.max_recipients,
        "{} recipients over the limit {}",
        incoming.recipients.len(),
        limits.max_recipients
    );
    for (i, r) in incoming.recipients.iter().enumerate() {
        assert!(
            !incoming.recipients[..i]
                .iter()
                .any(|o| o.address == r.address),
            "duplicate recipient {}",
            r.address
        );
        assert_eq!(
            router.action_for(incoming.peer.origin(), incoming.sender.as_ref(), &r.address),
            Some(r.action.as_str()),
            "recipient {} accepted against the match rules",
            r.address
        );
        if !incoming.peer.is_local() {
            assert!(
                config
                    .local_domains
                    .iter()
                    .any(|d| d.eq_ignore_ascii_case(r.address.domain())),
                "relayed {} for a remote client",
                r.address
            );
        }
        if !incoming.smtputf8 {
            assert!(!r.address.is_utf8(), "UTF-8 recipient without SMTPUTF8");
        }
    }
    if let Some(sender) = &incoming.sender {
        if !incoming.smtputf8 {
            assert!(!sender.is_utf8(), "UTF-8 sender without SMTPUTF8");
        }
    }
}
