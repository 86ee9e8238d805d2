//! End to end: an administrator steering the running daemon — queue commands over the
//! control socket, Prometheus metrics over HTTP, reload on SIGHUP, shutdown on SIGTERM,
//! sd_notify and socket activation, and the systemd unit.
//!
//! The upstream is the test kit's sink: STARTTLS with a certificate from a test CA and AUTH,
//! as the real smarthost. It can be switched to answer `451` to every message.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lettre::address::Envelope;
use lettre::{SmtpTransport, Transport};
use mailer_testkit::certs::TestCa;
use mailer_testkit::config::{write_secrets, For, TestConfig};
use mailer_testkit::daemon::{eventually, free_port, Daemon};
use mailer_testkit::sink::{Received, Sink, SinkOptions};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_mailer");
const WAIT: Duration = Duration::from_secs(20);

/// The relay's settings, the rest of a daemon configuration around them.
struct Setup {
    dir: tempfile::TempDir,
    port: u16,
    metrics_port: u16,
    sink: Sink,
    /// While true the sink answers `451` at the end of every message.
    down: Arc<AtomicBool>,
}

impl Setup {
    async fn new(options: SinkOptions) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new();
        ca.write_pem_file(dir.path());
        write_secrets(&dir.path().join("secrets"), "relay", "mailer", "s3cret");
        let down = Arc::new(AtomicBool::new(false));
        let flag = down.clone();
        let sink = Sink::start(SinkOptions {
            tls: Some(ca.issue(&["127.0.0.1"])),
            require_tls: true,
            auth: Some(("mailer".into(), "s3cret".into())),
            data_reply: Some(Arc::new(move |_: &Received| {
                flag.load(Ordering::SeqCst)
                    .then(|| (451, "4.3.0 upstream busy, try later".to_string()))
            })),
            ..options
        })
        .await;
        Setup {
            dir,
            port: free_port(),
            metrics_port: free_port(),
            sink,
            down,
        }
    }

    /// Relays everything through the sink, retrying after `retry_min`, with metrics.
    fn config(&self, retry_min: &str) -> TestConfig {
        let dir = self.dir.path();
        TestConfig::new(dir, self.port)
            .relay_to(
                "relay",
                &[self.sink.port()],
                &dir.join("secrets"),
                &dir.join("ca.pem"),
            )
            .retry(retry_min, "1h")
            .metrics(self.metrics_port)
    }

    fn start(&self, retry_min: &str) -> Daemon {
        self.config(retry_min).start(Path::new(BIN))
    }

    fn queue_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("queue")
    }
}

/// Sends one message and returns its queue id.
fn send(port: u16, from: &str, to: &str, subject: &str) -> String {
    let client = SmtpTransport::builder_dangerous("127.0.0.1")
        .port(port)
        .timeout(Some(Duration::from_secs(10)))
        .build();
    let envelope = Envelope::new(Some(from.parse().unwrap()), vec![to.parse().unwrap()]).unwrap();
    let message = format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: {subject}\r\nMessage-ID: <{subject}@ublog.tech>\r\n\r\nBody of {subject}.\r\n"
    );
    let response = client
        .send_raw(&envelope, message.as_bytes())
        .expect("the daemon accepts the message");
    let text = response.message().collect::<Vec<_>>().join(" ");
    text.strip_prefix("2.0.0 Ok: queued as ")
        .unwrap_or_else(|| panic!("unexpected reply {text:?}"))
        .to_string()
}

/// `mailer queue list --json`, parsed.
fn queue_json(daemon: &Daemon) -> Vec<Value> {
    let out = daemon.cli(&["queue", "list", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Vec<Value>>(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// Waits until the message's first recipient was tried and deferred; returns its entry.
fn wait_deferred(daemon: &Daemon, id: &str) -> Value {
    eventually(WAIT, || {
        queue_json(daemon).into_iter().find(|m| {
            m["id"] == id
                && m["recipients"][0]["attempts"].as_u64() >= Some(1)
                && m["recipients"][0]["last_error"].is_string()
        })
    })
    .unwrap_or_else(|| panic!("{id} was not deferred:\n{}", daemon.log()))
}

fn cli_ok(daemon: &Daemon, args: &[&str]) -> String {
    let out = daemon.cli(args);
    assert!(
        out.status.success(),
        "mailer {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        daemon.log()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_message_is_listed_with_its_error_and_flush_delivers_it_once_upstream_is_back() {
    let setup = Setup::new(SinkOptions::default()).await;
    setup.down.store(true, Ordering::SeqCst);
    let daemon = setup.start("1h");
    let id = send(
        setup.port,
        "notifications@ublog.tech",
        "pim@example.org",
        "deferred",
    );

    let entry = wait_deferred(&daemon, &id);
    assert_eq!(entry["sender"], "notifications@ublog.tech");
    assert_eq!(entry["held"], false);
    let rcpt = &entry["recipients"][0];
    assert_eq!(rcpt["address"], "pim@example.org");
    assert_eq!(rcpt["action"], "outbound");
    assert_eq!(rcpt["state"], "pending");
    assert!(
        rcpt["last_error"].as_str().unwrap().contains("451"),
        "{rcpt}"
    );
    assert!(rcpt["next_attempt"].as_str().unwrap().ends_with('Z'));
    let table = cli_ok(&daemon, &["queue", "list"]);
    assert!(
        table.contains(&id) && table.contains("last error:"),
        "{table}"
    );

    setup.down.store(false, Ordering::SeqCst);
    assert_eq!(
        cli_ok(&daemon, &["queue", "flush", &id]),
        "flushed: 1 message\n"
    );
    let got = setup.sink.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1, "{}", daemon.log());
    assert_eq!(got[0].rcpt_to, vec!["pim@example.org"]);
    assert!(got[0].tls && got[0].auth_user.as_deref() == Some("mailer"));
    eventually(WAIT, || queue_json(&daemon).is_empty().then_some(()))
        .expect("the delivered message leaves the queue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_message_is_not_delivered_until_released() {
    let setup = Setup::new(SinkOptions::default()).await;
    setup.down.store(true, Ordering::SeqCst);
    let daemon = setup.start("1h");
    let id = send(setup.port, "a@ublog.tech", "b@example.org", "held");
    wait_deferred(&daemon, &id);

    assert_eq!(
        cli_ok(&daemon, &["queue", "hold", &id]),
        "held: 1 message\n"
    );
    setup.down.store(false, Ordering::SeqCst);
    cli_ok(&daemon, &["queue", "flush"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        setup.sink.messages().is_empty(),
        "a held message was delivered"
    );
    assert_eq!(queue_json(&daemon)[0]["held"], true);
    let env: Value = serde_json::from_slice(
        &mailer_testkit::queue::envelope_json(&setup.queue_dir(), &id).unwrap(),
    )
    .unwrap();
    assert_eq!(env["held"], true, "the hold is durable");

    assert_eq!(
        cli_ok(&daemon, &["queue", "release", "--all"]),
        "released: 1 message\n"
    );
    // The flush while held made it due: released, it goes at once.
    assert_eq!(setup.sink.wait_for(1, WAIT).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_message_is_deleted_and_never_delivered() {
    let setup = Setup::new(SinkOptions::default()).await;
    setup.down.store(true, Ordering::SeqCst);
    let daemon = setup.start("1s");
    let id = send(setup.port, "a@ublog.tech", "b@example.org", "removed");
    wait_deferred(&daemon, &id);
    // Retries come every second or so; one may be under way: try again briefly.
    eventually(WAIT, || {
        daemon
            .cli(&["queue", "remove", &id])
            .status
            .success()
            .then_some(())
    })
    .expect("remove succeeds");
    setup.down.store(false, Ordering::SeqCst);
    assert!(queue_json(&daemon).is_empty());
    assert!(daemon.queued_messages(&setup.queue_dir()).is_empty());
    assert!(!setup.queue_dir().join(format!("q/{id}.msg")).exists());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(setup.sink.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounce_fails_the_message_now_with_a_dsn_to_its_sender() {
    let setup = Setup::new(SinkOptions::default()).await;
    setup.down.store(true, Ordering::SeqCst);
    let daemon = setup.start("1h");
    let id = send(setup.port, "alice@ublog.tech", "b@example.org", "bounced");
    wait_deferred(&daemon, &id);
    setup.down.store(false, Ordering::SeqCst);

    assert_eq!(
        cli_ok(&daemon, &["queue", "bounce", &id]),
        "bounced: 1 message\n"
    );
    let got = setup.sink.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1, "{}", daemon.log());
    let dsn = &got[0];
    assert_eq!(dsn.mail_from, "", "a DSN has the null sender");
    assert_eq!(dsn.rcpt_to, vec!["alice@ublog.tech"]);
    let text = String::from_utf8_lossy(&dsn.data);
    assert!(text.contains("multipart/report"), "{text}");
    assert!(
        text.contains("Final-Recipient: rfc822; b@example.org"),
        "{text}"
    );
    assert!(text.contains("Action: failed"), "{text}");
    assert!(text.contains("Status: 5.0.0"), "{text}");
    assert!(
        text.contains("Subject: bounced"),
        "the DSN returns the headers: {text}"
    );
    eventually(WAIT, || queue_json(&daemon).is_empty().then_some(()))
        .expect("the bounced message and its DSN leave the queue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_list_and_show_read_the_queue_directory_when_the_daemon_is_down() {
    let setup = Setup::new(SinkOptions::default()).await;
    setup.down.store(true, Ordering::SeqCst);
    let mut daemon = setup.start("1h");
    let id = send(setup.port, "a@ublog.tech", "b@example.org", "offline");
    wait_deferred(&daemon, &id);
    daemon.terminate(WAIT);

    let list = queue_json(&daemon);
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], id.as_str());
    let out = daemon.cli(&["queue", "show", &id]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Subject: offline"), "{stdout}");
    assert!(stdout.contains("\"last_error\""), "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("the daemon is not running"));

    let out = daemon.cli(&["queue", "flush"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("the daemon is not running"), "{stderr}");
}

/// Postfix's `corrupt` queue: a file the daemon cannot use at start is set aside with its
/// reason, named by `mailer queue list` and counted; the rest of the queue is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_queue_file_is_set_aside_listed_and_counted_and_the_daemon_starts() {
    let setup = Setup::new(SinkOptions::default()).await;
    setup.down.store(true, Ordering::SeqCst);
    let mut daemon = setup.start("1s");
    let broken = send(setup.port, "a@ublog.tech", "b@example.org", "broken");
    let intact = send(setup.port, "a@ublog.tech", "b@example.org", "intact");
    wait_deferred(&daemon, &broken);
    wait_deferred(&daemon, &intact);
    daemon.terminate(WAIT);

    let queue = setup.queue_dir();
    fs::write(queue.join(format!("q/{broken}.env")), b"{ truncated").unwrap();
    // A leftover that cannot be unlinked (a directory), which used to stop the start.
    fs::create_dir_all(queue.join("tmp/stray/x")).unwrap();
    setup.down.store(false, Ordering::SeqCst);
    daemon.restart();

    assert!(
        setup.sink.wait_for_count(1, WAIT).await == 1,
        "the intact message is delivered:\n{}",
        daemon.log()
    );
    let table = cli_ok(&daemon, &["queue", "list"]);
    assert!(table.contains("Set aside as corrupt"), "{table}");
    assert!(
        table.contains(&format!("corrupt/{broken}.env: unreadable envelope: ")),
        "{table}"
    );
    assert!(
        table.contains(&format!("corrupt/{broken}.msg: ")),
        "{table}"
    );
    assert!(
        table.contains("corrupt/stray: leftover temporary file cannot be removed"),
        "{table}"
    );
    let metrics = scrape(setup.metrics_port);
    assert_eq!(
        sample(&metrics, "mailer_queue_corrupt_files"),
        Some(3.0),
        "{metrics}"
    );
    let log = daemon.log();
    assert!(log.contains("queue file set aside"), "{log}");
    assert!(
        fs::read_to_string(queue.join(format!("corrupt/{broken}.msg")))
            .unwrap()
            .contains("Subject: broken"),
        "the message itself is kept for the admin"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_uid_not_permitted_is_refused_on_the_control_socket() {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        eprintln!("skipped: needs root to run the client under another uid");
        return;
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("skipped: setpriv (util-linux) is not installed");
        return;
    }
    let setup = Setup::new(SinkOptions::default()).await;
    let daemon = setup.start("1h");
    // Let the other uid reach the socket file, so the daemon's own check is what refuses.
    fs::set_permissions(setup.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&daemon.config, fs::Permissions::from_mode(0o644)).unwrap();
    let socket = setup.dir.path().join("control.sock");
    assert_eq!(
        fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o660
    );
    fs::set_permissions(&socket, fs::Permissions::from_mode(0o666)).unwrap();

    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            BIN,
            "--config",
        ])
        .arg(&daemon.config)
        .args(["queue", "flush"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("permission denied: uid 65534 may not use the control socket"),
        "{stderr}"
    );
    assert!(daemon
        .log()
        .contains("refused a client of a uid not permitted"));
    // Root is served.
    cli_ok(&daemon, &["queue", "flush"]);
}

/// `GET /metrics` over plain HTTP/1.1.
fn scrape(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("metrics endpoint listens");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    response
}

/// The value of one sample line, e.g. `mailer_messages_accepted_total`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_scripted_run() {
    let tried_flaky = Arc::new(AtomicUsize::new(0));
    let counter = tried_flaky.clone();
    let setup = Setup::new(SinkOptions {
        rcpt_reply: Some(Arc::new(move |to: &str| {
            if to.starts_with("flaky@") && counter.fetch_add(1, Ordering::SeqCst) == 0 {
                return Some((451, "4.2.0 mailbox busy".into()));
            }
            to.starts_with("nobody@")
                .then(|| (550, "5.1.1 no such user".to_string()))
        })),
        ..SinkOptions::default()
    })
    .await;
    let daemon = setup.start("1s");
    send(setup.port, "news@ublog.tech", "ok@example.org", "one");
    send(setup.port, "news@ublog.tech", "flaky@example.org", "two");
    send(setup.port, "news@ublog.tech", "nobody@example.org", "three");

    // ok, flaky on its retry, and the DSN about nobody back to news@.
    let got = setup.sink.wait_for(3, WAIT).await;
    assert_eq!(got.len(), 3, "{}", daemon.log());
    let expected = [
        ("mailer_messages_accepted_total", 3.0),
        (
            "mailer_deliveries_total{action=\"outbound\",outcome=\"delivered\"}",
            3.0,
        ),
        (
            "mailer_deliveries_total{action=\"outbound\",outcome=\"deferred\"}",
            1.0,
        ),
        (
            "mailer_deliveries_total{action=\"outbound\",outcome=\"bounced\"}",
            1.0,
        ),
        (
            "mailer_relay_failures_total{host=\"127.0.0.1\",kind=\"4xx\"}",
            1.0,
        ),
        (
            "mailer_relay_failures_total{host=\"127.0.0.1\",kind=\"5xx\"}",
            1.0,
        ),
        ("mailer_queue_messages", 0.0),
        ("mailer_queue_oldest_age_seconds", 0.0),
        ("mailer_delivery_duration_seconds_count", 3.0),
        ("mailer_build_info{version=\"0.1.0\"}", 1.0),
    ];
    let text = eventually(WAIT, || {
        let text = scrape(setup.metrics_port);
        expected
            .iter()
            .all(|(series, v)| sample(&text, series) == Some(*v))
            .then_some(text)
    })
    .unwrap_or_else(|| {
        let text = scrape(setup.metrics_port);
        let wrong: Vec<String> = expected
            .iter()
            .filter(|(s, v)| sample(&text, s) != Some(*v))
            .map(|(s, v)| format!("{s}: want {v}, got {:?}", sample(&text, s)))
            .collect();
        panic!("{}\n{text}", wrong.join("\n"))
    });
    assert!(sample(&text, "mailer_sessions_total").unwrap() >= 1.0);
    assert!(sample(&text, "mailer_bytes_in_total").unwrap() > 100.0);
    assert!(sample(&text, "mailer_bytes_out_total").unwrap() > 100.0);
    assert!(
        text.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_refuses_a_broken_config_and_applies_a_valid_one() {
    let setup = Setup::new(SinkOptions::default()).await;
    let daemon = setup.start("1h");
    let good = setup.config("1h").render();

    daemon.write_config(&format!("{good}\nbogus_key = 1\n"));
    daemon.signal(libc::SIGHUP);
    eventually(WAIT, || {
        daemon
            .log()
            .contains("reload refused, running configuration kept")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("{}", daemon.log()));
    // Still serving with the old configuration.
    send(setup.port, "a@ublog.tech", "b@example.org", "after-broken");
    assert_eq!(setup.sink.wait_for(1, WAIT).await.len(), 1);

    // A valid one: a second listener, and mail for example.org refused from now on.
    let second = free_port();
    let changed = setup
        .config("1h")
        .listen_also(second)
        .route(For::domains(&["example.net"]), "outbound");
    daemon.write_config(&changed.render());
    daemon.signal(libc::SIGHUP);
    // The log line comes once every part is applied (the port may open a moment earlier).
    eventually(WAIT, || {
        daemon
            .log()
            .contains("configuration reloaded")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("the valid configuration was not applied:\n{}", daemon.log()));
    TcpStream::connect(("127.0.0.1", second)).expect("the new listener is open");
    send(second, "a@ublog.tech", "c@example.net", "new-listener");
    let client = SmtpTransport::builder_dangerous("127.0.0.1")
        .port(setup.port)
        .build();
    let refused = client.send_raw(
        &Envelope::new(
            Some("a@ublog.tech".parse().unwrap()),
            vec!["b@example.org".parse().unwrap()],
        )
        .unwrap(),
        b"Subject: x\r\n\r\nx\r\n",
    );
    assert!(
        refused.unwrap_err().to_string().contains("5.7.1"),
        "the old listener follows the new rules"
    );

    // `mailer reload` removes it again and reports.
    daemon.write_config(&good);
    let out = cli_ok(&daemon, &["reload"]);
    assert!(out.starts_with("reloaded: 1 listener(s)"), "{out}");
    eventually(WAIT, || TcpStream::connect(("127.0.0.1", second)).err())
        .expect("the removed listener closes");
    // A broken file over the socket: refused with the reason, exit 1.
    daemon.write_config("queue_dir = 5\n");
    let out = daemon.cli(&["reload"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "the client itself cannot read it"
    );
    assert!(
        scrape(setup.metrics_port).contains("mailer_config_reloads_total{outcome=\"refused\"} 1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_delivery_loses_nothing_and_new_sessions_hear_421() {
    let setup = Setup::new(SinkOptions {
        greeting_delay: Some(Duration::from_secs(2)),
        ..SinkOptions::default()
    })
    .await;
    let mut daemon = setup.start("1h");
    let id = send(setup.port, "a@ublog.tech", "b@example.org", "in-flight");
    eventually(WAIT, || (setup.sink.connections() >= 1).then_some(()))
        .expect("the delivery started");

    daemon.signal(libc::SIGTERM);
    // During the drain the port still answers, with 421.
    let mut greeting = String::new();
    let answered = eventually(Duration::from_secs(2), || {
        let mut s = TcpStream::connect(daemon.addr()).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        greeting.clear();
        s.read_to_string(&mut greeting).ok()?;
        greeting.starts_with("421").then_some(())
    });
    assert!(answered.is_some(), "got {greeting:?}");
    assert!(greeting.starts_with("421 4.3.2 "), "{greeting}");

    let status = daemon.terminate(WAIT);
    assert!(status.success(), "{status}\n{}", daemon.log());
    let delivered = setup.sink.messages().len();
    let queued = daemon.queued_messages(&setup.queue_dir()).len();
    assert_eq!(
        (delivered, queued),
        (1, 0),
        "the delivery in flight finished before exit:\n{}",
        daemon.log()
    );
    assert!(daemon.log().contains(&format!("queue_id={id}")));
}

/// Receives sd_notify datagrams until one contains `want`.
fn expect_notify(socket: &UnixDatagram, want: &str, seen: &mut Vec<String>) {
    let mut buf = [0u8; 4096];
    for _ in 0..20 {
        match socket.recv(&mut buf) {
            Ok(n) => {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                seen.push(msg.clone());
                if msg.lines().any(|l| l == want) {
                    return;
                }
            }
            Err(e) => panic!("no {want} (got {seen:?}): {e}"),
        }
    }
    panic!("no {want} in {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sd_notify_reports_ready_reloading_and_stopping() {
    let setup = Setup::new(SinkOptions::default()).await;
    let config = setup.dir.path().join("mailer.toml");
    fs::write(&config, setup.config("1h").render()).unwrap();
    let notify_path = setup.dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let log = fs::File::create(setup.dir.path().join("daemon.log")).unwrap();
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .env("NOTIFY_SOCKET", &notify_path)
        .stdin(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let mut seen = Vec::new();
    expect_notify(&notify, "READY=1", &mut seen);
    assert!(
        seen.last().unwrap().contains(&format!(
            "STATUS=accepting mail on 127.0.0.1:{}",
            setup.port
        )),
        "{seen:?}"
    );
    // SAFETY: pid is our child, still running.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    expect_notify(&notify, "RELOADING=1", &mut seen);
    assert!(seen.last().unwrap().contains("MONOTONIC_USEC="));
    expect_notify(&notify, "READY=1", &mut seen);
    unsafe { libc::kill(pid, libc::SIGTERM) };
    expect_notify(&notify, "STOPPING=1", &mut seen);
    let status = eventually(WAIT, || child.try_wait().ok().flatten()).expect("exits");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_activation_serves_on_the_socket_systemd_passed() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let setup = Setup::new(SinkOptions::default()).await;
    let config = setup.dir.path().join("mailer.toml");
    fs::write(&config, setup.config("1h").render()).unwrap();
    // Held open here: the daemon could not bind this address itself.
    let listener = std::net::TcpListener::bind(("127.0.0.1", setup.port)).unwrap();
    let fd = listener.as_raw_fd();
    let log_path = setup.dir.path().join("daemon.log");
    let log = fs::File::create(&log_path).unwrap();
    let mut cmd = Command::new("/bin/sh");
    // LISTEN_PID must be the daemon's pid: the shell's, which exec keeps.
    cmd.arg("-c")
        .arg(format!(
            "LISTEN_PID=$$ LISTEN_FDS=1 exec {BIN} --config {} serve",
            config.display()
        ))
        .stdin(Stdio::null())
        .stderr(log);
    // SAFETY: only async-signal-safe dup2 runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let result = eventually(WAIT, || {
        if child.try_wait().ok().flatten().is_some() {
            return Some(false);
        }
        fs::read_to_string(&log_path)
            .ok()?
            .contains("listening socket passed by systemd")
            .then_some(true)
    });
    drop(listener);
    let id = send(setup.port, "a@ublog.tech", "b@example.org", "activated");
    assert_eq!(
        result,
        Some(true),
        "{}",
        fs::read_to_string(&log_path).unwrap()
    );
    assert_eq!(setup.sink.wait_for(1, WAIT).await.len(), 1, "{id}");
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let status = eventually(WAIT, || child.try_wait().ok().flatten()).expect("exits");
    assert!(status.success());
}

#[test]
fn the_unit_file_passes_systemd_analyze_verify() {
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    };
    assert!(out.status.success());
    let dir = tempfile::tempdir().unwrap();
    let unit = fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/mailer.service"
    ))
    .unwrap();
    // verify checks that ExecStart exists: point it at the binary under test.
    let unit = unit.replace("/usr/sbin/mailer", BIN);
    let path = dir.path().join("mailer.service");
    fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");
}

#[test]
fn an_edited_alias_file_applies_without_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let aliases = dir.path().join("aliases");
    fs::write(&aliases, "postmaster: root\n").unwrap();
    let daemon = TestConfig::new(dir.path(), port)
        .aliases(&aliases)
        .local_mail(&dir.path().join("mail"))
        .start(Path::new(BIN));
    let client = SmtpTransport::builder_dangerous("127.0.0.1")
        .port(port)
        .timeout(Some(Duration::from_secs(10)))
        .build();
    let to_team = Envelope::new(
        Some("a@localhost".parse().unwrap()),
        vec!["team@localhost".parse().unwrap()],
    )
    .unwrap();
    let err = client
        .send_raw(&to_team, b"Subject: before\r\n\r\nx\r\n")
        .unwrap_err();
    assert!(err.to_string().contains("550"), "{err}");

    fs::write(&aliases, "postmaster: root\nteam: root\n").unwrap();
    // A later modification time than the first write, whatever the file system's granularity.
    let later = std::time::SystemTime::now() + Duration::from_secs(5);
    fs::File::options()
        .write(true)
        .open(&aliases)
        .unwrap()
        .set_modified(later)
        .unwrap();
    eventually(WAIT, || {
        client
            .send_raw(&to_team, b"Subject: after\r\n\r\nx\r\n")
            .ok()
    })
    .unwrap_or_else(|| panic!("the new alias never applied:\n{}", daemon.log()));
    let mbox = dir.path().join("mail/root");
    let text = eventually(WAIT, || fs::read_to_string(&mbox).ok())
        .unwrap_or_else(|| panic!("nothing delivered:\n{}", daemon.log()));
    assert!(text.contains("Subject: after"), "{text}");
    assert!(daemon.log().contains("aliases reloaded"));
}

#[test]
fn a_reload_applies_the_new_log_level() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = TestConfig::new(dir.path(), port)
        .local_domains(&["localhost"])
        .local_mail(&dir.path().join("mail"))
        .route(For::Local, "local_mail");
    let quiet = config.clone().log_level("warn").render();
    let daemon = Daemon::start_logging(Path::new(BIN), dir.path(), port, &quiet, false);
    let first = send(port, "root@localhost", "root@localhost", "quiet");
    // Delivered before the reload, or its delivery line would be logged at the new level.
    let mbox = dir.path().join("mail/root");
    assert!(
        eventually(WAIT, || fs::read_to_string(&mbox)
            .ok()
            .filter(|t| t.contains("Subject: quiet"))
            .map(drop))
        .is_some(),
        "{}",
        daemon.log()
    );
    daemon.write_config(&config.log_level("info").render());
    daemon.signal(libc::SIGHUP);
    assert!(
        eventually(WAIT, || daemon
            .log()
            .contains("configuration reloaded")
            .then_some(()))
        .is_some(),
        "{}",
        daemon.log()
    );
    let second = send(port, "root@localhost", "root@localhost", "loud");
    let log = eventually(WAIT, || {
        let log = daemon.log();
        log.contains(&format!("delivered queue_id={second}"))
            .then_some(log)
    })
    .unwrap_or_else(|| panic!("{}", daemon.log()));
    assert!(
        !log.contains(&first),
        "at warn level nothing was logged for {first}:\n{log}"
    );
    assert!(
        log.contains(&format!("received queue_id={second}")),
        "{log}"
    );
}
