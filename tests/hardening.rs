//! End to end: hostile clients against the real daemon. Each test speaks raw SMTP over a
//! socket on 127.0.0.1 and checks the exact replies and what reached the queue.

use std::fs;
use std::io::Write;
use std::net::Shutdown;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mailer_testkit::config::TestConfig;
use mailer_testkit::daemon::{free_port, Daemon};
use mailer_testkit::smtp::Client;

const BIN: &str = env!("CARGO_BIN_EXE_mailer");

/// Relays everything to a port where nothing listens, so accepted mail stays queued.
fn config(port: u16, dir: &Path, limits: &str) -> TestConfig {
    TestConfig::new(dir, port)
        .limits("max_message_size = \"100K\"\nmax_recipients = 100")
        .limits(limits)
        .relay_without_auth(free_port())
        .retry("1h", "2h")
}

struct Server {
    _dir: tempfile::TempDir,
    queue: PathBuf,
    daemon: Daemon,
}

fn server(limits: &str) -> Server {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let daemon = config(port, dir.path(), limits).start(Path::new(BIN));
    Server {
        queue: dir.path().join("queue"),
        _dir: dir,
        daemon,
    }
}

impl Server {
    fn queued(&self) -> Vec<PathBuf> {
        self.daemon.queued_messages(&self.queue)
    }

    /// The stored message of queue id `id`.
    fn message(&self, id: &str) -> Vec<u8> {
        mailer_testkit::queue::message(&self.queue, id).expect("queued message file")
    }

    fn connect(&self) -> Client {
        Client::connect(self.daemon.addr()).expect("connect to the daemon")
    }
}

/// Greeting, EHLO, MAIL, one RCPT: ready for DATA.
fn open_transaction(c: &mut Client) {
    assert_eq!(c.code(), 220);
    assert_eq!(c.command("EHLO client.test"), 250);
    assert_eq!(c.command("MAIL FROM:<notifications@ublog.tech>"), 250);
    assert_eq!(c.command("RCPT TO:<alice@example.org>"), 250);
}

/// The queue id of a `250 2.0.0 Ok: queued as ID` reply.
fn queue_id(text: &str) -> String {
    text.strip_prefix("2.0.0 Ok: queued as ")
        .unwrap_or_else(|| panic!("not a queued reply: {text:?}"))
        .to_string()
}

/// The message as stored, without our Received header.
fn content_after_received(stored: &[u8]) -> &[u8] {
    let mut i = 0;
    while let Some(p) = stored[i..].windows(2).position(|w| w == b"\r\n") {
        i += p + 2;
        if stored.get(i) != Some(&b'\t') {
            return &stored[i..];
        }
    }
    panic!("no Received header");
}

#[test]
fn smuggling_end_of_data_variants_are_content_and_the_message_is_refused() {
    let s = server("");
    for seq in [
        &b"\n.\n"[..],
        b"\r.\r",
        b"\n.\r\n",
        b"\r\n.\n",
        b"\r\n.\r",
        b"\r.\r\n",
    ] {
        let mut c = s.connect();
        open_transaction(&mut c);
        assert_eq!(c.command("DATA"), 354);
        let mut data = b"Subject: one\r\n\r\nfirst".to_vec();
        data.extend_from_slice(seq);
        data.extend_from_slice(
            b"MAIL FROM:<admin@ublog.tech>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\n\
              From: admin@ublog.tech\r\n\r\nsmuggled\r\n.\r\n",
        );
        c.send(&data);
        let (code, text) = c.reply().expect("a verdict on the message");
        assert_eq!(
            (code, text.as_str()),
            (
                550,
                "5.6.0 Message contains bare CR or LF; lines must end with CRLF"
            ),
            "variant {seq:?}"
        );
        // The stream is still in step: the next command gets its own reply.
        assert_eq!(c.command("NOOP"), 250, "variant {seq:?}");
        assert_eq!(c.command("QUIT"), 221);
    }
    assert!(s.queued().is_empty(), "a smuggled message was queued");
}

#[test]
fn a_one_megabyte_line_is_refused_and_the_session_continues() {
    let s = server("");
    let mut c = s.connect();
    assert_eq!(c.code(), 220);
    let mut line = b"EHLO ".to_vec();
    line.resize(1 << 20, b'a');
    line.extend_from_slice(b"\r\n");
    c.send(&line);
    assert_eq!(
        c.reply().expect("a reply"),
        (500, "5.5.6 Command line too long".into())
    );
    assert_eq!(c.command("EHLO client.test"), 250);
    assert_eq!(c.command("MAIL FROM:<notifications@ublog.tech>"), 250);
    assert_eq!(c.command("RCPT TO:<alice@example.org>"), 250);
    assert_eq!(c.command("DATA"), 354);
    let mut body = b"Subject: long\r\n\r\n".to_vec();
    body.resize(1 << 20, b'x');
    body.extend_from_slice(b"\r\n.\r\n");
    c.send(&body);
    let (code, text) = c.reply().expect("a verdict on the message");
    assert_eq!(code, 552, "{text}");
    assert_eq!(c.command("NOOP"), 250);
    assert!(s.queued().is_empty());
}

#[test]
fn nul_bytes_and_undeclared_8bit_data_are_kept_byte_exact() {
    let s = server("");
    let mut c = s.connect();
    // No BODY=8BITMIME: the octets are accepted and stored unchanged, never altered.
    open_transaction(&mut c);
    assert_eq!(c.command("DATA"), 354);
    let content = b"Subject: caf\xc3\xa9\r\n\r\nNUL:\x00 high:\xff\xfe\x80 end\r\n\x00\r\n";
    c.send(content);
    c.send(b".\r\n");
    let (code, text) = c.reply().expect("a verdict");
    assert_eq!(code, 250, "{text}");
    let stored = s.message(&queue_id(&text));
    assert_eq!(content_after_received(&stored), content);
}

#[test]
fn ten_thousand_recipients_get_452_past_the_limit_with_bounded_memory() {
    let s = server("");
    let mut c = s.connect();
    assert_eq!(c.code(), 220);
    assert_eq!(c.command("EHLO client.test"), 250);
    assert_eq!(c.command("MAIL FROM:<notifications@ublog.tech>"), 250);
    let mut batch = Vec::new();
    for i in 0..10_000 {
        batch.extend_from_slice(format!("RCPT TO:<user{i}@example.org>\r\n").as_bytes());
    }
    // Replies are read while writing so neither side's buffers fill up.
    let writer = {
        let mut stream = c.stream().try_clone().expect("clone the socket");
        std::thread::spawn(move || stream.write_all(&batch).expect("write the recipients"))
    };
    let mut codes = Vec::with_capacity(10_000);
    for _ in 0..10_000 {
        codes.push(c.code());
    }
    writer.join().expect("the writer finished");
    assert!(
        codes[..100].iter().all(|&c| c == 250),
        "first 100 not all 250"
    );
    assert!(
        codes[100..].iter().all(|&c| c == 452),
        "past the limit not all 452"
    );
    let status =
        fs::read_to_string(format!("/proc/{}/status", s.daemon.pid())).expect("proc status");
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .expect("VmRSS in /proc status");
    assert!(rss_kb < 200 * 1024, "daemon uses {rss_kb} kB");
    assert_eq!(c.command("DATA"), 354);
    c.send(b"Subject: many\r\n\r\nx\r\n.\r\n");
    let (code, text) = c.reply().expect("a verdict");
    assert_eq!(code, 250, "{text}");
    let envelope: serde_json::Value = serde_json::from_slice(
        &mailer_testkit::queue::envelope_json(&s.queue, &queue_id(&text)).expect("envelope"),
    )
    .expect("envelope JSON");
    assert_eq!(envelope["recipients"].as_array().map(Vec::len), Some(100));
}

#[test]
fn a_client_sending_one_byte_per_second_is_closed_with_421() {
    let s = server("idle_timeout = \"2s\"\ndata_timeout = \"3s\"");
    let mut c = s.connect();
    assert_eq!(c.code(), 220);
    let start = Instant::now();
    // Each byte arrives within the idle timeout, the line never completes in time.
    let trickle = b"EHLO slow.client.test.example.org\r\n";
    let mut closed = false;
    for &b in trickle.iter().take(12) {
        if c.stream().write_all(&[b]).is_err() {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
        c.stream().set_nonblocking(true).expect("nonblocking");
        let mut peek = [0u8; 1];
        let ready = c.stream().peek(&mut peek).map(|n| n > 0).unwrap_or(false);
        c.stream().set_nonblocking(false).expect("blocking");
        if ready {
            closed = true;
            break;
        }
    }
    assert!(
        closed,
        "still open after {:?} of trickling",
        start.elapsed()
    );
    let (code, text) = c.reply().expect("a closing reply");
    assert_eq!(code, 421, "{text}");
    assert!(start.elapsed() < Duration::from_secs(10));
    c.expect_closed(Duration::from_secs(5));
}

#[test]
fn connections_beyond_max_connections_get_421_and_the_others_are_unaffected() {
    let s = server("max_connections = 2");
    // The launcher's readiness probes hold a slot until the daemon has seen them close:
    // wait for two greetings rather than assume the slots are free at once.
    let greeted = || {
        mailer_testkit::daemon::eventually(Duration::from_secs(5), || {
            let mut c = s.connect();
            (c.code() == 220).then_some(c)
        })
        .expect("a free slot")
    };
    let mut first = greeted();
    let mut second = greeted();
    let mut third = s.connect();
    let (code, text) = third.reply().expect("a refusal");
    assert_eq!(
        (code, text.as_str()),
        (421, "4.3.2 Too many connections, try again later")
    );
    third.expect_closed(Duration::from_secs(5));
    for c in [&mut first, &mut second] {
        assert_eq!(c.command("EHLO client.test"), 250);
        assert_eq!(c.command("MAIL FROM:<notifications@ublog.tech>"), 250);
        assert_eq!(c.command("RCPT TO:<alice@example.org>"), 250);
        assert_eq!(c.command("DATA"), 354);
        c.send(b"Subject: still served\r\n\r\nx\r\n.\r\n");
        assert_eq!(c.code(), 250);
    }
    assert_eq!(s.queued().len(), 2);
    // A slot is free again once a connection ends.
    assert_eq!(first.command("QUIT"), 221);
    first.expect_closed(Duration::from_secs(5));
    let fourth = mailer_testkit::daemon::eventually(Duration::from_secs(5), || {
        let mut c = s.connect();
        (c.code() == 220).then_some(c)
    });
    assert!(fourth.is_some(), "no slot after a connection closed");
}

#[test]
fn a_message_over_max_message_size_gets_552_and_nothing_is_queued() {
    let s = server("");
    let mut c = s.connect();
    open_transaction(&mut c);
    assert_eq!(c.command("DATA"), 354);
    let mut body = b"Subject: big\r\n\r\n".to_vec();
    for _ in 0..2000 {
        body.extend_from_slice(&[b'y'; 78]);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b".\r\n");
    c.send(&body);
    let (code, text) = c.reply().expect("a verdict");
    assert_eq!(
        (code, text.as_str()),
        (552, "5.3.4 Message size exceeds the limit of 102400 octets")
    );
    assert_eq!(c.command("QUIT"), 221);
    assert!(s.queued().is_empty());
}

#[test]
fn a_declared_size_over_the_limit_is_refused_at_mail_from() {
    let s = server("");
    let mut c = s.connect();
    assert_eq!(c.code(), 220);
    assert_eq!(c.command("EHLO client.test"), 250);
    let (code, text) = {
        c.send(b"MAIL FROM:<notifications@ublog.tech> SIZE=104857600\r\n");
        c.reply().expect("a reply")
    };
    assert_eq!(
        (code, text.as_str()),
        (552, "5.3.4 Message size exceeds the limit of 102400 octets")
    );
    // Refused at MAIL: no transaction, so RCPT is out of sequence.
    assert_eq!(c.command("RCPT TO:<alice@example.org>"), 503);
    assert_eq!(
        c.command("MAIL FROM:<notifications@ublog.tech> SIZE=1000"),
        250
    );
}

#[test]
fn a_connection_half_closed_mid_data_queues_nothing() {
    let s = server("");
    let mut c = s.connect();
    open_transaction(&mut c);
    assert_eq!(c.command("DATA"), 354);
    c.send(b"Subject: cut short\r\n\r\nThe end never comes\r\n");
    c.stream().shutdown(Shutdown::Write).expect("half-close");
    c.expect_closed(Duration::from_secs(10));
    // Give the daemon the chance to (wrongly) queue it.
    std::thread::sleep(Duration::from_millis(300));
    assert!(s.queued().is_empty());
    assert!(
        fs::read_dir(s.queue.join("q")).map_or(0, |d| d.count()) == 0,
        "files left in the queue"
    );
}

#[test]
fn ehlo_with_a_10kb_argument_is_refused_and_a_normal_ehlo_works() {
    let s = server("");
    let mut c = s.connect();
    assert_eq!(c.code(), 220);
    let line = format!("EHLO {}\r\n", "h".repeat(10 * 1024));
    c.send(line.as_bytes());
    assert_eq!(
        c.reply().expect("a reply"),
        (500, "5.5.6 Command line too long".into())
    );
    assert_eq!(c.command("EHLO client.test"), 250);
    assert_eq!(c.command("QUIT"), 221);
}

/// A client greeted with 220 within `within`, not refused for want of a slot.
fn greeted(s: &Server, within: Duration) -> Option<Client> {
    mailer_testkit::daemon::eventually(within, || {
        let mut c = s.connect();
        (c.code() == 220).then_some(c)
    })
}

#[test]
fn a_client_that_never_completes_the_tls_handshake_loses_its_slot() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = mailer_testkit::certs::TestCa::new();
    let (cert, key) = ca.issue(&["localhost"]).write_pem_files(dir.path());
    let port = free_port();
    let text = config(
        port,
        dir.path(),
        "idle_timeout = \"2s\"\nmax_connections = 1",
    )
    .render()
    .replace(
        &format!("address = \"127.0.0.1:{port}\""),
        &format!(
            "address = \"127.0.0.1:{port}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"",
            cert.display(),
            key.display()
        ),
    );
    let daemon = Daemon::start(Path::new(BIN), dir.path(), port, &text);
    let s = Server {
        queue: dir.path().join("queue"),
        _dir: dir,
        daemon,
    };
    let mut c = greeted(&s, Duration::from_secs(5)).expect("a first slot");
    assert_eq!(c.command("EHLO client.test"), 250);
    assert_eq!(c.command("STARTTLS"), 220);
    // ... and no ClientHello ever follows. The slot comes back after the idle timeout.
    let start = Instant::now();
    assert!(
        greeted(&s, Duration::from_secs(8)).is_some(),
        "the stalled handshake still holds the only slot"
    );
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    c.expect_closed(Duration::from_secs(5));
}

#[test]
fn a_client_that_stops_reading_its_replies_loses_its_slot() {
    let s = server("idle_timeout = \"2s\"\nmax_connections = 1");
    let c = greeted(&s, Duration::from_secs(5)).expect("a first slot");
    // Pipelined NOOPs whose replies are never read: the daemon's writes block once the
    // socket buffers are full. Bounded: at most 64 MiB of commands, or 10 s of trying.
    c.stream()
        .set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let batch = b"NOOP\r\n".repeat(10_000);
    let start = Instant::now();
    let mut sent = 0usize;
    while sent < 64 << 20 && start.elapsed() < Duration::from_secs(10) {
        match c.stream().write(&batch) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => break,
            Err(_) => break,
        }
    }
    assert!(
        greeted(&s, Duration::from_secs(10)).is_some(),
        "a client that does not read holds the only slot ({sent} octets sent)"
    );
}

#[test]
fn a_client_that_keeps_erring_is_closed_with_421_after_max_errors() {
    // The default limit, as Postfix's smtpd_hard_error_limit: 20.
    let s = server("");
    let mut c = s.connect();
    assert_eq!(c.code(), 220);
    for _ in 0..19 {
        assert_eq!(c.command("BOGUS"), 500);
    }
    c.send(b"BOGUS\r\n");
    assert_eq!(c.reply().map(|r| r.0), Some(500));
    let (code, text) = c.reply().expect("a closing reply");
    assert_eq!(
        (code, text.as_str()),
        (421, "4.7.0 Too many errors, closing connection")
    );
    c.expect_closed(Duration::from_secs(5));
}

#[test]
fn a_looping_message_is_refused_with_554_5_4_6() {
    // The default limit, as Postfix's hopcount_limit: 50 Received: fields, ours included.
    let s = server("");
    let mut c = s.connect();
    open_transaction(&mut c);
    assert_eq!(c.command("DATA"), 354);
    let mut message = String::new();
    for i in 0..50 {
        message.push_str(&format!(
            "Received: from relay{i}.example by relay{}.example; Mon, 1 Jan 2024 00:00:0{} +0000\r\n",
            i + 1,
            i % 10
        ));
    }
    message.push_str("Subject: around and around\r\n\r\nx\r\n.\r\n");
    c.send(message.as_bytes());
    let (code, text) = c.reply().expect("a verdict");
    assert_eq!(
        (code, text.as_str()),
        (
            554,
            "5.4.6 Too many hops (51 Received: header fields): mail loop"
        )
    );
    assert!(s.queued().is_empty());
}

/// BDAT content is held to the same line rules as DATA, whatever its first octet: content
/// starting with a TAB once passed for a continuation of our own Received header.
#[test]
fn bdat_content_starting_with_a_tab_is_refused_for_its_bare_newlines() {
    let s = server("");
    let mut c = s.connect();
    open_transaction(&mut c);
    c.send(b"BDAT 10 LAST\r\n\tA\nB\r.\rC\r\n");
    let (code, text) = c.reply().expect("a verdict");
    assert_eq!(
        (code, text.as_str()),
        (
            550,
            "5.6.0 Message contains bare CR or LF; lines must end with CRLF"
        )
    );
    assert!(
        s.queued().is_empty(),
        "nothing with a bare CR or LF is queued"
    );
}
