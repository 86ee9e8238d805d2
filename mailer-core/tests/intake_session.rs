//! The SMTP session, driven by scripted transcripts exactly as a client would send them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mailer_core::address::Address;
use mailer_core::intake::{
    BareNewlines, Event, Incoming, Peer, QueueRefused, RecipientPolicy, Reply, Session,
    SessionConfig,
};
use mailer_core::queue::QueueId;

/// Local clients may send anywhere; others only to `ublog.tech`. Recipients named
/// `nobody@…` do not exist.
struct TestPolicy;

impl RecipientPolicy for TestPolicy {
    fn route(&self, peer: &Peer, _: Option<&Address>, rcpt: &Address) -> Result<String, Reply> {
        if rcpt.local_part() == "nobody" {
            return Err(Reply::status(550, 1, 1, "No such user"));
        }
        match (peer.is_local(), rcpt.domain()) {
            (_, "ublog.tech") => Ok("local_mail".into()),
            (true, _) => Ok("outbound".into()),
            (false, _) => Err(mailer_core::intake::reply::replies::relay_denied()),
        }
    }
}

fn config() -> SessionConfig {
    SessionConfig {
        hostname: "mx.ublog.tech".into(),
        max_message_size: 10_000,
        max_recipients: 3,
        max_line_length: 1000,
        bare_newlines: BareNewlines::Reject,
        starttls: false,
        max_hops: 50,
        max_errors: 20,
        idle_timeout: Duration::from_secs(300),
        data_timeout: Duration::from_secs(600),
    }
}

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_795_612_417)
}

struct Client {
    session: Session,
    queued: Vec<Incoming>,
    closed: bool,
    starttls: bool,
    refuse_queue: Option<QueueRefused>,
    /// Content handed out for the message being received, and the size of each hand-out.
    content: Vec<u8>,
    chunks: Vec<usize>,
}

impl Client {
    fn with(config: SessionConfig, peer: &str) -> Client {
        let peer = Peer {
            addr: Some(peer.parse::<SocketAddr>().unwrap()),
            submitter: None,
        };
        let session = Session::new(Arc::new(config), Arc::new(TestPolicy), peer, now());
        let mut c = Client {
            session,
            queued: Vec::new(),
            closed: false,
            starttls: false,
            refuse_queue: None,
            content: Vec::new(),
            chunks: Vec::new(),
        };
        assert_eq!(c.drain(), "220 mx.ublog.tech ESMTP mailer\r\n");
        c
    }

    fn local() -> Client {
        Client::with(config(), "127.0.0.1:40000")
    }

    /// Sends bytes; returns every reply they caused, acting as the daemon would on events.
    fn send(&mut self, bytes: &[u8]) -> String {
        self.session.receive(bytes, now());
        self.drain()
    }

    fn drain(&mut self) -> String {
        let mut out = String::from_utf8(self.session.take_output()).unwrap();
        while let Some(event) = self.session.poll_event() {
            match event {
                Event::Content { bytes, .. } => {
                    self.chunks.push(bytes.len());
                    self.content.extend_from_slice(&bytes);
                }
                Event::Message(mut m) => {
                    let id = m.id;
                    // The whole message, as the queue file holds it once the rest is written.
                    let mut whole = std::mem::take(&mut self.content);
                    whole.append(&mut m.rest);
                    assert_eq!(m.size, whole.len() as u64);
                    assert!(whole.starts_with(&m.head));
                    m.rest = whole;
                    self.queued.push(*m);
                    let result = match self.refuse_queue {
                        Some(refused) => Err(refused),
                        None => Ok(id),
                    };
                    self.session.queued(result, now());
                }
                Event::Close => self.closed = true,
                Event::StartTls => self.starttls = true,
                Event::Rejected(_) => {}
            }
            out.push_str(&String::from_utf8(self.session.take_output()).unwrap());
        }
        out
    }

    fn ehlo(&mut self) {
        assert!(self.send(b"EHLO client.example\r\n").starts_with("250-"));
    }

    /// MAIL, RCPT and `content` as one `BDAT n LAST` chunk, after EHLO; every reply.
    fn bdat_message(&mut self, content: &[u8]) -> String {
        self.ehlo();
        let head = format!(
            "MAIL FROM:<a@b.org>\r\nRCPT TO:<x@example.org>\r\nBDAT {} LAST\r\n",
            content.len()
        );
        self.send(&[head.as_bytes(), content].concat())
    }

    fn transaction(&mut self) {
        self.ehlo();
        assert_eq!(
            self.send(b"MAIL FROM:<app@ublog.tech>\r\nRCPT TO:<pim@example.org>\r\nDATA\r\n"),
            "250 2.1.0 Sender ok\r\n250 2.1.5 Recipient ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
        );
    }
}

fn body_of(m: &Incoming) -> &[u8] {
    // Our Received header is three folded lines; the client's message follows it.
    let text = &m.rest;
    let end = text.windows(2).position(|w| w == b"\r\n").unwrap();
    let mut i = end + 2;
    while text[i] == b'\t' {
        i += text[i..].windows(2).position(|w| w == b"\r\n").unwrap() + 2;
    }
    &text[i..]
}

#[test]
fn ehlo_advertises_the_extensions_and_no_starttls_without_a_certificate() {
    let mut c = Client::local();
    assert_eq!(
        c.send(b"EHLO client.example\r\n"),
        "250-mx.ublog.tech\r\n250-PIPELINING\r\n250-SIZE 10000\r\n250-8BITMIME\r\n\
         250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n250 HELP\r\n"
    );
    assert_eq!(
        c.send(b"STARTTLS\r\n"),
        "502 5.5.1 STARTTLS not available\r\n"
    );
}

#[test]
fn happy_path_queues_the_message_byte_exact_after_a_received_header() {
    let mut c = Client::local();
    c.transaction();
    let body = b"From: app@ublog.tech\r\nSubject: hi\r\n\r\nHello\r\n..dot\r\n";
    let mut wire = body.to_vec();
    wire.extend_from_slice(b".\r\n");
    let reply = c.send(&wire);
    let m = &c.queued[0];
    assert_eq!(reply, format!("250 2.0.0 Ok: queued as {}\r\n", m.id));
    assert_eq!(
        body_of(m),
        b"From: app@ublog.tech\r\nSubject: hi\r\n\r\nHello\r\n.dot\r\n"
    );
    let received = String::from_utf8_lossy(&m.rest[..m.rest.len() - body.len() + 1]);
    assert!(received.starts_with(&format!(
        "Received: from client.example ([127.0.0.1])\r\n\tby mx.ublog.tech (mailer) with ESMTP id {}\r\n\tfor <pim@example.org>; Wed, 25 Nov 2026 13:13:37 +0000\r\n",
        m.id
    )), "{received}");
    assert_eq!(m.sender, Some(Address::parse("app@ublog.tech").unwrap()));
    assert_eq!(m.recipients[0].action, "outbound");
    assert_eq!(c.send(b"QUIT\r\n"), "221 2.0.0 Bye\r\n");
    assert!(c.closed);
}

#[test]
fn pipelined_commands_in_one_packet_are_answered_in_order() {
    let mut c = Client::local();
    let out = c.send(
        b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<a@ublog.tech>\r\nRCPT TO:<b@example.org>\r\nDATA\r\nSubject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n",
    );
    let codes: Vec<&str> = out.lines().map(|l| &l[..4]).collect();
    assert_eq!(
        codes,
        [
            "250-", "250-", "250-", "250-", "250-", "250-", "250-", "250 ", "250 ", "250 ", "250 ",
            "354 ", "250 ", "221 "
        ]
    );
    assert_eq!(c.queued.len(), 1);
    assert_eq!(c.queued[0].sender, None);
    assert_eq!(c.queued[0].recipients.len(), 2);
    assert!(c.closed);
}

#[test]
fn sequence_errors_get_503() {
    let mut c = Client::local();
    assert_eq!(
        c.send(b"MAIL FROM:<a@b.org>\r\n"),
        "503 5.5.1 Send EHLO or HELO first\r\n"
    );
    c.ehlo();
    assert_eq!(
        c.send(b"RCPT TO:<a@b.org>\r\n"),
        "503 5.5.1 Need MAIL before RCPT\r\n"
    );
    assert_eq!(c.send(b"DATA\r\n"), "503 5.5.1 Need MAIL before DATA\r\n");
    c.send(b"MAIL FROM:<a@b.org>\r\n");
    assert_eq!(
        c.send(b"MAIL FROM:<a@b.org>\r\n"),
        "503 5.5.1 Nested MAIL command\r\n"
    );
    assert_eq!(c.send(b"DATA\r\n"), "503 5.5.1 No valid recipients\r\n");
}

#[test]
fn syntax_errors_get_500_and_501() {
    let mut c = Client::local();
    c.ehlo();
    assert_eq!(c.send(b"FOO bar\r\n"), "500 5.5.2 Command unrecognized\r\n");
    assert_eq!(
        c.send(b"MAIL FROM:a@b.org\r\n"),
        "501 5.5.4 Syntax: MAIL FROM:<reverse-path> [parameters]\r\n"
    );
    assert!(c
        .send(b"MAIL FROM:<a..b@x.org>\r\n")
        .starts_with("501 5.5.4"));
    c.send(b"MAIL FROM:<a@b.org>\r\n");
    assert!(c.send(b"RCPT TO:<no-domain>\r\n").starts_with("501 "));
    assert_eq!(c.send(b"EHLO\r\n"), "501 5.5.4 Syntax: EHLO domain\r\n");
}

#[test]
fn unknown_mail_parameters_get_555() {
    let mut c = Client::local();
    c.ehlo();
    assert_eq!(
        c.send(b"MAIL FROM:<a@b.org> RET=FULL\r\n"),
        "555 5.5.4 Unsupported parameter RET\r\n"
    );
    assert!(c
        .send(b"MAIL FROM:<a@b.org> FOO=BAR\r\n")
        .starts_with("555 5.5.4"));
    assert!(c
        .send(b"MAIL FROM:<a@b.org> BODY=8BITMIME SMTPUTF8\r\n")
        .starts_with("250 "));
}

#[test]
fn declared_size_over_the_limit_gets_552_at_mail() {
    let mut c = Client::local();
    c.ehlo();
    assert_eq!(
        c.send(b"MAIL FROM:<a@b.org> SIZE=10001\r\n"),
        "552 5.3.4 Message size exceeds the limit of 10000 octets\r\n"
    );
    assert!(c
        .send(b"MAIL FROM:<a@b.org> SIZE=10000\r\n")
        .starts_with("250 "));
}

#[test]
fn message_over_the_limit_gets_552_and_is_not_queued() {
    let mut c = Client::local();
    c.transaction();
    let mut big = vec![b'x'; 900];
    big.extend_from_slice(b"\r\n");
    let mut wire = big.repeat(12);
    wire.extend_from_slice(b".\r\n");
    assert_eq!(
        c.send(&wire),
        "552 5.3.4 Message size exceeds the limit of 10000 octets\r\n"
    );
    assert!(c.queued.is_empty());
    // The session is usable again.
    assert!(c.send(b"MAIL FROM:<a@b.org>\r\n").starts_with("250 "));
}

#[test]
fn recipients_beyond_the_limit_get_452() {
    let mut c = Client::local();
    c.ehlo();
    c.send(b"MAIL FROM:<a@b.org>\r\n");
    for i in 0..3 {
        assert!(c
            .send(format!("RCPT TO:<r{i}@x.org>\r\n").as_bytes())
            .starts_with("250 "));
    }
    assert_eq!(
        c.send(b"RCPT TO:<r4@x.org>\r\n"),
        "452 4.5.3 Too many recipients\r\n"
    );
}

#[test]
fn non_local_clients_cannot_relay() {
    let mut c = Client::with(config(), "192.0.2.7:40000");
    c.ehlo();
    c.send(b"MAIL FROM:<a@b.org>\r\n");
    assert_eq!(
        c.send(b"RCPT TO:<pim@example.org>\r\n"),
        "550 5.7.1 Relaying denied\r\n"
    );
    assert!(c.send(b"RCPT TO:<root@ublog.tech>\r\n").starts_with("250 "));
}

#[test]
fn unknown_local_user_is_refused_at_rcpt() {
    let mut c = Client::local();
    c.ehlo();
    c.send(b"MAIL FROM:<a@b.org>\r\n");
    assert_eq!(
        c.send(b"RCPT TO:<nobody@ublog.tech>\r\n"),
        "550 5.1.1 No such user\r\n"
    );
}

#[test]
fn postmaster_without_domain_is_accepted() {
    let mut c = Client::local();
    c.ehlo();
    c.send(b"MAIL FROM:<a@b.org>\r\n");
    assert!(c.send(b"RCPT TO:<Postmaster>\r\n").starts_with("250 "));
    assert!(c.send(b"RCPT TO:<>\r\n").starts_with("501 "));
}

#[test]
fn shutdown_closes_an_idle_session_with_421() {
    let mut c = Client::local();
    c.ehlo();
    c.session.begin_shutdown();
    assert_eq!(
        c.drain(),
        "421 4.3.2 Service shutting down, closing connection\r\n"
    );
    assert!(c.closed);
}

#[test]
fn shutdown_lets_a_transaction_in_flight_finish() {
    let mut c = Client::local();
    c.transaction();
    c.session.begin_shutdown();
    assert!(c
        .send(b"hi\r\n.\r\n")
        .starts_with("250 2.0.0 Ok: queued as"));
    assert!(c.send(b"MAIL FROM:<a@b.org>\r\n").starts_with("421 4.3.2"));
}

#[test]
fn idle_timeout_gets_421() {
    let mut c = Client::local();
    let at = now() + Duration::from_secs(300);
    assert_eq!(c.session.poll_timeout(), Some(at));
    c.session.handle_timeout(at - Duration::from_secs(1));
    assert_eq!(c.drain(), "", "not yet");
    c.session.handle_timeout(at);
    assert_eq!(c.drain(), "421 4.4.2 Idle timeout, closing connection\r\n");
    assert!(c.closed);
    assert_eq!(c.session.poll_timeout(), None);
}

#[test]
fn the_idle_clock_runs_from_the_last_reply_not_the_last_read() {
    let mut c = Client::local();
    let later = now() + Duration::from_secs(200);
    // A command line trickled in, never finished: the deadline stays where the greeting put it.
    c.session.receive(b"EHLO slo", later);
    assert_eq!(
        c.session.poll_timeout(),
        Some(now() + Duration::from_secs(300))
    );
    c.session.receive(b"w.example\r\n", later);
    assert!(c.drain().starts_with("250-"));
    assert_eq!(
        c.session.poll_timeout(),
        Some(later + Duration::from_secs(300))
    );
}

#[test]
fn the_data_timeout_runs_from_the_start_of_the_data() {
    let mut c = Client::local();
    c.transaction();
    let data_from = now();
    // Content keeps arriving, but the data phase as a whole has its limit.
    for minute in 1..10 {
        c.session.receive(
            b"more content\r\n",
            data_from + Duration::from_secs(60 * minute),
        );
    }
    assert_eq!(
        c.session.poll_timeout(),
        Some(data_from + Duration::from_secs(600))
    );
    c.session
        .handle_timeout(data_from + Duration::from_secs(600));
    assert_eq!(c.drain(), "421 4.4.2 Idle timeout, closing connection\r\n");
    assert!(c.queued.is_empty(), "nothing of it is queued");
}

#[test]
fn no_deadline_runs_while_the_queue_has_the_message() {
    let mut c = Client::local();
    c.transaction();
    // Answered by the queue only later: the client is waiting on us, not the reverse.
    c.session.receive(b"x\r\n.\r\n", now());
    let Some(Event::Message(m)) = c.session.poll_event() else {
        panic!("the message goes to the queue")
    };
    assert_eq!(c.session.poll_timeout(), None);
    c.session.handle_timeout(now() + Duration::from_secs(3600));
    assert!(!c.session.is_closed());
    c.session
        .queued(Ok(m.id), now() + Duration::from_secs(3600));
    assert!(c.drain().starts_with("250 2.0.0 Ok: queued as "));
    assert_eq!(
        c.session.poll_timeout(),
        Some(now() + Duration::from_secs(3600 + 300))
    );
}

#[test]
fn over_long_command_line_gets_500_and_the_session_stays_in_sync() {
    let mut c = Client::local();
    let mut line = b"EHLO ".to_vec();
    line.extend(std::iter::repeat_n(b'a', 5000));
    assert_eq!(c.send(&line), "");
    assert_eq!(
        c.send(b"\r\nNOOP\r\n"),
        "500 5.5.6 Command line too long\r\n250 2.0.0 Ok\r\n"
    );
}

#[test]
fn every_smuggling_variant_is_rejected_and_never_splits_the_message() {
    for seq in [&b"\n.\n"[..], b"\r.\r", b"\n.\r\n", b"\r\n.\n", b"\r\n.\r"] {
        let mut c = Client::local();
        c.transaction();
        let mut wire = b"Subject: x\r\n\r\nfirst".to_vec();
        wire.extend_from_slice(seq);
        wire.extend_from_slice(
            b"MAIL FROM:<evil@x.org>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\nsmuggled\r\n.\r\n",
        );
        let out = c.send(&wire);
        assert_eq!(
            out, "550 5.6.0 Message contains bare CR or LF; lines must end with CRLF\r\n",
            "variant {seq:?}"
        );
        assert!(c.queued.is_empty(), "variant {seq:?}");
    }
}

#[test]
fn bare_lf_and_bare_cr_in_the_body_are_rejected() {
    for body in [&b"a\nb\r\n.\r\n"[..], b"a\rb\r\n.\r\n"] {
        let mut c = Client::local();
        c.transaction();
        assert!(c.send(body).starts_with("550 5.6.0"));
        assert!(c.queued.is_empty());
    }
}

#[test]
fn normalize_mode_stores_crlf_only() {
    let mut cfg = config();
    cfg.bare_newlines = BareNewlines::Normalize;
    let mut c = Client::with(cfg, "127.0.0.1:1");
    c.transaction();
    assert!(c.send(b"a\nb\rc\n.\nd\r\n.\r\n").starts_with("250 "));
    assert_eq!(body_of(&c.queued[0]), b"a\r\nb\r\nc\r\n.\r\nd\r\n");
}

#[test]
fn bdat_chunks_make_one_message() {
    let mut c = Client::local();
    c.ehlo();
    let out = c.send(
        b"MAIL FROM:<a@b.org>\r\nRCPT TO:<x@example.org>\r\nBDAT 12\r\nSubject: x\r\nBDAT 9 LAST\r\n\r\n.body\r\n",
    );
    assert_eq!(
        out,
        format!(
            "250 2.1.0 Sender ok\r\n250 2.1.5 Recipient ok\r\n250 2.0.0 Chunk received\r\n250 2.0.0 Ok: queued as {}\r\n",
            c.queued[0].id
        )
    );
    assert_eq!(body_of(&c.queued[0]), b"Subject: x\r\n\r\n.body\r\n");
}

#[test]
fn bdat_without_a_transaction_consumes_the_chunk_and_gets_503() {
    let mut c = Client::local();
    c.ehlo();
    assert_eq!(
        c.send(b"BDAT 6 LAST\r\nQUIT\r\nNOOP\r\n"),
        "503 5.5.1 Need MAIL and RCPT before BDAT\r\n250 2.0.0 Ok\r\n"
    );
    assert!(!c.closed, "the chunk's bytes must not be read as commands");
}

#[test]
fn bdat_with_bare_lf_is_rejected() {
    let mut c = Client::local();
    c.ehlo();
    let out = c.send(b"MAIL FROM:<a@b.org>\r\nRCPT TO:<x@example.org>\r\nBDAT 4 LAST\r\na\nb\n");
    assert!(out.ends_with("550 5.6.0 Message contains bare CR or LF; lines must end with CRLF\r\n"));
    assert!(c.queued.is_empty());
}

#[test]
fn queue_failure_gets_451_and_the_client_may_retry() {
    let mut c = Client::local();
    c.refuse_queue = Some(QueueRefused::Failed);
    c.transaction();
    assert_eq!(
        c.send(b"x\r\n.\r\n"),
        "451 4.3.0 Local error in processing, try again later\r\n"
    );
}

#[test]
fn a_full_queue_disk_gets_452_4_3_1_and_the_client_may_retry() {
    let mut c = Client::local();
    c.refuse_queue = Some(QueueRefused::StorageFull);
    c.transaction();
    assert_eq!(
        c.send(b"x\r\n.\r\n"),
        "452 4.3.1 Insufficient system storage, try again later\r\n"
    );
    assert!(!c.closed);
    c.refuse_queue = None;
    assert_eq!(
        c.send(b"MAIL FROM:<app@ublog.tech>\r\n"),
        "250 2.1.0 Sender ok\r\n"
    );
}

#[test]
fn bdat_content_starting_with_a_tab_is_still_checked_for_bare_newlines() {
    // The content must not be taken for a continuation of our Received header.
    for content in [&b"\tA\nB\r.\rC"[..], b"\t\r", b" x\ny"] {
        let mut c = Client::local();
        let out = c.bdat_message(content);
        assert!(
            out.ends_with("550 5.6.0 Message contains bare CR or LF; lines must end with CRLF\r\n"),
            "{content:?}: {out}"
        );
        assert!(c.queued.is_empty(), "{content:?} was queued");
    }
}

#[test]
fn bdat_content_starting_with_a_tab_keeps_the_line_length_limit() {
    let mut c = Client::local();
    let out = c.bdat_message(format!("\t{}\r\n", "x".repeat(1200)).as_bytes());
    assert!(
        out.ends_with("554 5.6.0 Message has a line longer than 1000 octets\r\n"),
        "{out}"
    );
    assert!(c.queued.is_empty());
}

#[test]
fn a_message_past_the_hop_limit_is_refused_as_a_mail_loop() {
    let mut cfg = config();
    cfg.max_hops = 5;
    let hops = |n: usize| {
        let mut m = String::new();
        for i in 0..n {
            m.push_str(&format!(
                "Received: from h{i} by h{}; Mon, 1 Jan 2024 00:00:00 +0000\r\n",
                i + 1
            ));
        }
        m + "Subject: loop\r\n\r\nbody\r\n.\r\n"
    };
    // Ours makes five: accepted.
    let mut c = Client::with(cfg.clone(), "127.0.0.1:40000");
    c.transaction();
    assert!(c
        .send(hops(4).as_bytes())
        .starts_with("250 2.0.0 Ok: queued as "));
    // Six: a loop, refused for good and never queued.
    let mut c = Client::with(cfg.clone(), "127.0.0.1:40000");
    c.transaction();
    assert_eq!(
        c.send(hops(5).as_bytes()),
        "554 5.4.6 Too many hops (6 Received: header fields): mail loop\r\n"
    );
    assert!(c.queued.is_empty());
    // A `Received:` in the body is not a hop.
    let mut c = Client::with(cfg.clone(), "127.0.0.1:40000");
    c.transaction();
    let body = format!(
        "Subject: x\r\n\r\n{}.\r\n",
        "Received: quoted\r\n".repeat(9)
    );
    assert!(c.send(body.as_bytes()).starts_with("250 "));
    // BDAT is held to the same limit.
    let mut c = Client::with(cfg, "127.0.0.1:40000");
    let out = c.bdat_message(hops(5).replace("\r\n.\r\n", "\r\n").as_bytes());
    assert!(
        out.ends_with("554 5.4.6 Too many hops (6 Received: header fields): mail loop\r\n"),
        "{out}"
    );
    assert!(c.queued.is_empty());
}

#[test]
fn a_client_that_keeps_erring_is_cut_off_with_421() {
    let mut cfg = config();
    cfg.max_errors = 3;
    let mut c = Client::with(cfg, "127.0.0.1:40000");
    assert_eq!(c.send(b"BOGUS\r\n"), "500 5.5.2 Command unrecognized\r\n");
    assert_eq!(
        c.send(b"RCPT TO:<x@example.org>\r\n"),
        "503 5.5.1 Need MAIL before RCPT\r\n"
    );
    assert!(!c.closed);
    assert_eq!(
        c.send(b"BOGUS\r\nNOOP\r\n"),
        "500 5.5.2 Command unrecognized\r\n421 4.7.0 Too many errors, closing connection\r\n"
    );
    assert!(c.closed);
}

#[test]
fn a_queued_message_starts_the_error_count_again() {
    let mut cfg = config();
    cfg.max_errors = 2;
    let mut c = Client::with(cfg, "127.0.0.1:40000");
    assert!(c.send(b"BOGUS\r\n").starts_with("500 "));
    c.transaction();
    assert!(c.send(b"x\r\n.\r\n").starts_with("250 "));
    assert!(c.send(b"BOGUS\r\n").starts_with("500 "));
    assert!(!c.closed);
}

#[test]
fn starttls_discards_input_pipelined_after_it() {
    let mut cfg = config();
    cfg.starttls = true;
    let mut c = Client::with(cfg, "127.0.0.1:1");
    assert!(c.send(b"EHLO c\r\n").contains("250-STARTTLS\r\n"));
    assert_eq!(
        c.send(b"STARTTLS\r\nMAIL FROM:<a@b.org>\r\n"),
        "220 2.0.0 Ready to start TLS\r\n"
    );
    assert!(c.starttls);
    c.session.tls_established(now());
    // The pipelined MAIL was dropped and the client must EHLO again.
    assert_eq!(
        c.send(b"MAIL FROM:<a@b.org>\r\n"),
        "503 5.5.1 Send EHLO or HELO first\r\n"
    );
    assert!(!c.send(b"EHLO c\r\n").contains("STARTTLS"));
}

#[test]
fn utf8_addresses_need_smtputf8() {
    let mut c = Client::local();
    c.ehlo();
    assert_eq!(
        c.send("MAIL FROM:<jösé@example.org>\r\n".as_bytes()),
        "553 5.6.7 Non-ASCII sender address requires SMTPUTF8\r\n"
    );
    assert!(c
        .send("MAIL FROM:<jösé@example.org> SMTPUTF8\r\n".as_bytes())
        .starts_with("250 "));
    assert!(c
        .send("RCPT TO:<ünï@example.org>\r\n".as_bytes())
        .starts_with("250 "));
}

#[test]
fn vrfy_help_noop_rset() {
    let mut c = Client::local();
    assert!(c.send(b"VRFY root\r\n").starts_with("252 2.5.2"));
    assert!(c.send(b"HELP\r\n").starts_with("214 "));
    assert_eq!(c.send(b"NOOP\r\n"), "250 2.0.0 Ok\r\n");
    assert_eq!(c.send(b"RSET\r\n"), "250 2.0.0 Ok\r\n");
    assert!(c.send(b"AUTH PLAIN\r\n").starts_with("502 5.5.1"));
}

#[test]
fn any_split_of_a_transcript_gives_the_same_replies() {
    let transcript: &[u8] = b"EHLO c\r\nMAIL FROM:<a@b.org>\r\nRCPT TO:<x@example.org>\r\nDATA\r\nSubject: y\r\n\r\n..z\r\n.\r\nMAIL FROM:<a@b.org>\r\nRCPT TO:<x@example.org>\r\nBDAT 4 LAST\r\nab\r\nQUIT\r\n";
    let mut whole = Client::local();
    let expected = whole.send(transcript);
    for cut in 1..transcript.len() {
        let mut c = Client::local();
        let mut out = c.send(&transcript[..cut]);
        out.push_str(&c.send(&transcript[cut..]));
        // Queue ids differ per run; compare the replies without them.
        let strip = |s: &str| {
            s.lines()
                .map(|l| l.split(" as ").next().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(strip(&out), strip(&expected), "cut at {cut}");
        assert_eq!(c.queued.len(), 2);
    }
    let _ = QueueId::parse("00000000000000000000");
}

/// A large message leaves the session in chunks as it arrives: the session never holds it
/// whole, and the chunks with the rest are the message, byte for byte.
#[test]
fn a_large_message_is_handed_out_in_chunks_as_it_arrives() {
    let mut config = config();
    config.max_message_size = 4 << 20;
    let mut c = Client::with(config, "127.0.0.1:40000");
    c.transaction();
    let mut body = b"Subject: big\r\n\r\n".to_vec();
    for i in 0..20_000 {
        body.extend_from_slice(format!("line {i:05} of a large message ..........\r\n").as_bytes());
    }
    let mut handed_before_end = 0;
    for piece in body.chunks(16 * 1024) {
        c.send(piece);
        handed_before_end = c.chunks.len();
    }
    assert!(
        handed_before_end >= 10,
        "only {handed_before_end} chunks before the end"
    );
    assert!(c
        .chunks
        .iter()
        .all(|&n| n < 2 * mailer_core::intake::CONTENT_CHUNK));
    assert!(c.send(b".\r\n").starts_with("250 "));
    let m = &c.queued[0];
    assert_eq!(body_of(m), &body[..]);
    assert_eq!(
        m.head.len(),
        m.rest.len() - body.len() + b"Subject: big\r\n\r\n".len()
    );
}

/// BDAT content split anywhere, a CR ending one chunk and its LF starting the next
/// included, is the same message as sent whole.
#[test]
fn bdat_chunks_split_anywhere_make_the_same_message() {
    let mut body = b"Subject: x\r\n\r\n".to_vec();
    for _ in 0..1000 {
        body.extend(std::iter::repeat_n(b'a', 68));
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b".dot\r\nend\r\n");
    let mut config = config();
    config.max_message_size = 1 << 20;
    // 83: the first chunk ends with the CR of a line, the next starts with its LF.
    for cut in [1, 15, 16, 83, 84, 70_016, 70_017, body.len() - 1] {
        let mut c = Client::with(config.clone(), "127.0.0.1:40000");
        c.ehlo();
        let (a, b) = body.split_at(cut);
        let first = format!(
            "MAIL FROM:<a@b.org>\r\nRCPT TO:<x@example.org>\r\nBDAT {}\r\n",
            a.len()
        );
        assert!(c
            .send(&[first.as_bytes(), a].concat())
            .ends_with("250 2.0.0 Chunk received\r\n"));
        let last = format!("BDAT {} LAST\r\n", b.len());
        let reply = c.send(&[last.as_bytes(), b].concat());
        assert!(reply.starts_with("250 "), "cut at {cut}: {reply}");
        assert_eq!(body_of(&c.queued[0]), &body[..], "cut at {cut}");
    }
}
