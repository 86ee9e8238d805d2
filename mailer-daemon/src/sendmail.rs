//! `mailer sendmail`: the sendmail(8) entry point for cron and scripts.
//!
//! Reads a message on standard input, completes its header (Date, Message-ID, From), and
//! submits it over SMTP to the running daemon on its submission socket,
//! `<queue_dir>/submit.sock`, where the daemon learns the submitter's uid from the kernel.
//! When the daemon does not answer (stopped, starting, upgrading), the message is kept in
//! `<queue_dir>/offline/` for the daemon to pick up when it runs, and the caller is told so:
//! cron's mail is not lost to a reboot. Exit statuses follow sysexits(3), so callers know
//! whether to retry.
//!
//! Only the IO is here: standard input, the configuration, the invoking user, the clock, the
//! socket and the offline file. What the arguments mean, how the message is completed and
//! how an offline file is written is decided in [`mailer_core::intake::sendmail`] and
//! [`mailer_core::intake::offline`]; the SMTP conversation is the relay's own session,
//! [`mailer_core::smtp::client`], told to hold the whole message back when a recipient is
//! deferred. The arguments are sendmail's own (`-t`, `-oi`,
//! `-f sender`, ...), which do not fit a declarative parser: both entry points hand them to
//! [`parse_args`].

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use mailer_core::address::Address;
use mailer_core::config::Config;
use mailer_core::delivery::{FailureKind, Outcome};
use mailer_core::intake::offline;
use mailer_core::intake::sendmail::{
    parse_args, prepare, read_message, Context, Failure, Mode, Submission, EX_CONFIG, EX_DATAERR,
    EX_IOERR, EX_NOUSER, EX_OK, EX_SOFTWARE, EX_TEMPFAIL, EX_UNAVAILABLE, EX_USAGE, USAGE,
};
use mailer_core::queue::Spool;
use mailer_core::smtp::client::{
    Awaiting, ClientSession, Event, Interrupted, Replies, Settings, Tls, NETWORK,
};
use mailer_core::smtp::protocol::{dot_stuff, BodyFacts, Reply};

/// A daemon that does not greet within this time is taken for absent: the message is kept
/// offline rather than left waiting on a daemon that may be stuck.
const GREETING_WITHIN: Duration = Duration::from_secs(5);
/// Wait for a reply to a command (RFC 5321 §4.5.3.2 suggests minutes).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);
/// Wait for the reply to the end of data (RFC 5321 §4.5.3.2.6: 10 minutes).
const DATA_END_TIMEOUT: Duration = Duration::from_secs(600);

/// `mailer sendmail`'s arguments, taken raw: sendmail's syntax is parsed by [`parse_args`].
#[derive(clap::Args)]
#[command(disable_help_flag = true)]
pub struct Args {
    /// sendmail(8) options and recipients: -t, -i/-oi, -f sender, -F name, -bs, -oX, --.
    #[arg(
        num_args = 0..,
        allow_hyphen_values = true,
        trailing_var_arg = true,
        value_name = "ARGS"
    )]
    args: Vec<OsString>,
}

/// `mailer [--config FILE] sendmail ARGS`.
pub fn main(config: Option<&Path>, args: Args) -> ExitCode {
    run("mailer sendmail", config.map(Path::to_path_buf), &args.args)
}

/// The program invoked as `sendmail` (a symlink to `mailer`); the configuration comes from
/// `-C`/`--config`, else `MAILER_CONFIG`, else the default path.
pub fn main_as_sendmail() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let config = std::env::var_os("MAILER_CONFIG")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    run("sendmail", config, &args)
}

fn run(program: &str, config: Option<PathBuf>, args: &[OsString]) -> ExitCode {
    match submit_from_stdin(config, args) {
        Ok(()) => ExitCode::from(EX_OK),
        Err(failure) => {
            for line in failure.message.lines() {
                eprintln!("{program}: {line}");
            }
            if failure.code == EX_USAGE {
                eprintln!("{USAGE}");
            }
            ExitCode::from(failure.code)
        }
    }
}

fn submit_from_stdin(config: Option<PathBuf>, args: &[OsString]) -> Result<(), Failure> {
    let options = parse_args(args)?;
    // `-C FILE` names a file: it wins over `mailer --embedded sendmail`.
    let loaded = match &options.config {
        Some(path) => Config::load(path),
        None => crate::read_config(config.as_deref()),
    };
    let config = loaded.map_err(|diagnostics| {
        let lines: Vec<String> = diagnostics.iter().map(|d| d.to_string()).collect();
        Failure::new(
            EX_CONFIG,
            format!(
                "{}\ncannot find the mail daemon without its configuration; the message was not sent",
                lines.join("\n")
            ),
        )
    })?;
    let socket = Spool::submit_socket_in(&config.queue_dir);
    if options.mode == Mode::SmtpOnStdio {
        return smtp_on_stdio(&socket, &config.hostname);
    }
    let input = read_message(io::stdin().lock(), options.ignore_dots)
        .map_err(|e| Failure::new(EX_IOERR, format!("cannot read the message: {e}")))?;
    let context = Context {
        hostname: config.hostname.clone(),
        login: login_name()?,
        now: SystemTime::now(),
        pid: std::process::id(),
    };
    let submission = prepare(&input, &options, &context)?;
    let unanswered =
        match connect(&socket, &config.hostname).and_then(|link| submit(link, &submission)) {
            Ok(()) => return Ok(()),
            Err(Unsent::Refused(failure)) => return Err(failure),
            Err(Unsent::Unanswered(why)) => why,
        };
    keep_offline(&config, &submission, &unanswered)
}

/// Why a message was not handed to the daemon.
enum Unsent {
    /// Nobody took it, and nothing of it was accepted: it may be kept offline.
    Unanswered(Unanswered),
    /// The daemon answered; the caller hears its verdict.
    Refused(Failure),
}

impl From<Failure> for Unsent {
    fn from(failure: Failure) -> Unsent {
        Unsent::Refused(failure)
    }
}

enum Unanswered {
    /// No socket, or nobody listening on it.
    NotRunning,
    /// Connected, but the daemon did not take the message: why.
    Silent(String),
}

/// The invoking user's login name, from the password database by real uid.
fn login_name() -> Result<String, Failure> {
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    login_of(uid).ok_or_else(|| {
        Failure::new(
            EX_NOUSER,
            format!("user id {uid} has no entry in the password database; give a sender with -f"),
        )
    })
}

/// The login name of `uid` in the password database; `None` when it has none or cannot be
/// asked. Blocks (the database may be a network service).
pub fn login_of(uid: u32) -> Option<String> {
    let mut size = 1024usize;
    loop {
        let mut buf = vec![0 as libc::c_char; size];
        // SAFETY: zeroed passwd is a valid value for an out-parameter of plain C fields.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer refers to a live local of the stated size.
        let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), size, &mut result) };
        if rc == libc::ERANGE && size < 1 << 20 {
            size *= 2;
            continue;
        }
        if rc == 0 && !result.is_null() && !pwd.pw_name.is_null() {
            // SAFETY: on success pw_name points into `buf`, alive and NUL-terminated.
            let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
            return Some(name.to_string_lossy().into_owned());
        }
        return None;
    }
}

/// A connection to the daemon, driving the same SMTP client session as the relay.
struct Link {
    stream: UnixStream,
    session: ClientSession,
}

impl Link {
    /// Writes what the session has to say and reads until it has something for us. Each
    /// reply may take `timeout` (the end of data [`DATA_END_TIMEOUT`]).
    fn next_event(&mut self, timeout: Duration) -> Event {
        let mut buf = [0u8; 4096];
        loop {
            let output = self.session.take_output();
            if !output.is_empty() {
                if let Err(e) = self.stream.write_all(&output) {
                    self.session
                        .abort(network(&self.session, format_args!("write failed: {e}")));
                }
            }
            if let Some(event) = self.session.poll_event() {
                return event;
            }
            let Some(awaiting) = self.session.awaiting() else {
                let failure = network(&self.session, "the session stalled");
                return Event::Failed(Interrupted {
                    failure,
                    body_sent: false,
                });
            };
            let limit = match awaiting {
                Awaiting::EndOfData => DATA_END_TIMEOUT,
                _ => timeout,
            };
            if let Err(e) = self
                .stream
                .set_read_timeout(Some(limit.max(Duration::from_millis(1))))
            {
                self.session
                    .abort(network(&self.session, format_args!("read failed: {e}")));
                continue;
            }
            match self.stream.read(&mut buf) {
                Ok(0) => self.session.end_of_input(),
                Ok(n) => self.session.receive(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    let what = match awaiting {
                        Awaiting::Greeting => "the greeting",
                        Awaiting::Command(command) => command,
                        Awaiting::EndOfData => "the end of data",
                    };
                    let failure = network(
                        &self.session,
                        format_args!("no reply to {what} within {} s", limit.as_secs()),
                    );
                    self.session.abort(failure);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => self
                    .session
                    .abort(network(&self.session, format_args!("read failed: {e}"))),
            }
        }
    }

    fn quit(mut self) {
        // The transaction is settled; a failing QUIT changes nothing.
        if self.session.is_usable() {
            self.session.quit();
            let _ = self.next_event(Duration::from_secs(5));
        }
    }
}

/// A failure of the connection to the daemon (never of the message).
fn network(
    session: &ClientSession,
    what: impl std::fmt::Display,
) -> mailer_core::delivery::Failure {
    mailer_core::delivery::Failure::temporary(
        FailureKind::Connect,
        NETWORK,
        format!("{}: {what}", session.server()),
    )
}

/// Connects and reads a 220 greeting.
fn connect(socket: &Path, hostname: &str) -> Result<Link, Unsent> {
    let stream = UnixStream::connect(socket).map_err(|e| {
        Unsent::Unanswered(match e.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => Unanswered::NotRunning,
            _ => Unanswered::Silent(format!("cannot connect to {}: {e}", socket.display())),
        })
    })?;
    let mut link = Link {
        stream,
        session: ClientSession::new(Settings {
            server: socket.display().to_string(),
            helo_name: hostname.to_string(),
            tls: Tls::Off,
            credentials: None,
            hold_on_deferral: true,
        }),
    };
    match greet(&mut link, GREETING_WITHIN) {
        Ok(()) => Ok(link),
        Err(failure) => match failure.kind {
            FailureKind::Reply(code) if code >= 500 => Err(Unsent::Refused(Failure::new(
                EX_UNAVAILABLE,
                format!(
                    "the mail daemon refuses service: {}; the message was not sent",
                    failure.remote_reply.unwrap_or(failure.reason)
                ),
            ))),
            _ => Err(Unsent::Unanswered(Unanswered::Silent(
                failure.remote_reply.unwrap_or(failure.reason),
            ))),
        },
    }
}

/// Reads until the session has taken the greeting (its EHLO is then pending, not written).
fn greet(link: &mut Link, within: Duration) -> Result<(), mailer_core::delivery::Failure> {
    let mut buf = [0u8; 4096];
    link.stream
        .set_read_timeout(Some(within))
        .map_err(|e| network(&link.session, format_args!("read failed: {e}")))?;
    while link.session.awaiting() == Some(Awaiting::Greeting) {
        match link.stream.read(&mut buf) {
            Ok(0) => link.session.end_of_input(),
            Ok(n) => link.session.receive(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                let what = format_args!("no greeting within {} s", within.as_secs());
                link.session.abort(network(&link.session, what));
            }
            Err(e) => link.session.abort(network(&link.session, e)),
        }
    }
    match link.session.poll_event() {
        Some(Event::Failed(interrupted)) => Err(interrupted.failure),
        _ => Ok(()),
    }
}

/// Submits over SMTP; each refusal becomes the sysexits code that tells the caller whether
/// to retry.
fn submit(mut link: Link, submission: &Submission) -> Result<(), Unsent> {
    match link.next_event(COMMAND_TIMEOUT) {
        Event::Ready => {}
        Event::Failed(interrupted) => return Err(interrupted_before(&interrupted.failure)),
        other => return Err(unexpected(&other).into()),
    }
    let recipients = &submission.recipients;
    link.session.send_message(
        submission.sender.as_ref(),
        recipients,
        BodyFacts::of(&submission.data),
        false,
    );
    let (outcomes, replies) = loop {
        match link.next_event(COMMAND_TIMEOUT) {
            Event::SendBody => {
                // One write: stuffed, ended with `.\r\n`.
                let sent = dot_stuff(&submission.data);
                match link
                    .stream
                    .write_all(&sent)
                    .and_then(|()| link.stream.flush())
                {
                    Ok(()) => link.session.body_sent(),
                    Err(e) => {
                        let failure = network(&link.session, format_args!("write failed: {e}"));
                        link.session.abort(failure);
                    }
                }
            }
            Event::Outcomes { outcomes, replies } => break (outcomes, replies),
            Event::Failed(interrupted) if interrupted.body_sent => {
                return Err(Unsent::Refused(Failure::new(
                    EX_TEMPFAIL,
                    format!(
                        "no answer from the mail daemon after the message was sent ({}); \
                         it may or may not have been accepted",
                        interrupted.failure.reason
                    ),
                )))
            }
            Event::Failed(interrupted) => return Err(interrupted_before(&interrupted.failure)),
            other => return Err(unexpected(&other).into()),
        }
    };
    link.quit();
    Ok(verdict(recipients, &outcomes, &replies)?)
}

/// What the daemon's replies to one transaction mean for the caller.
fn verdict(recipients: &[Address], outcomes: &[Outcome], replies: &Replies) -> Result<(), Failure> {
    let Some(mail) = &replies.mail else {
        // MAIL was not sent: the daemon lacks an extension the message needs, or it is too big.
        let reason = outcomes.iter().find_map(|o| match o {
            Outcome::Failed(f) => Some(f.reason.as_str()),
            Outcome::Delivered { .. } => None,
        });
        return Err(Failure::new(
            EX_DATAERR,
            format!(
                "the mail daemon cannot take the message: {}; the message was not sent",
                reason.unwrap_or("no recipient")
            ),
        ));
    };
    if !mail.is_positive() {
        return Err(refused("the sender", mail, EX_UNAVAILABLE));
    }
    let mut accepted = 0usize;
    let mut refused_permanently = Vec::new();
    for (rcpt, reply) in recipients.iter().zip(&replies.rcpts) {
        match reply.code / 100 {
            2 => accepted += 1,
            // Nothing is sent, so the caller can retry the whole message without duplicates.
            4 => return Err(refused(&format!("recipient {rcpt}"), reply, EX_TEMPFAIL)),
            _ => {
                refused_permanently.push(format!("recipient {rcpt} refused: {}", reply.verbatim()))
            }
        }
    }
    if accepted == 0 {
        return Err(Failure::new(
            EX_NOUSER,
            format!(
                "{}\nno recipient was accepted; the message was not sent",
                refused_permanently.join("\n")
            ),
        ));
    }
    if let Some(data) = replies.data.as_ref().filter(|r| !r.is_intermediate()) {
        return Err(refused("DATA", data, EX_UNAVAILABLE));
    }
    let Some(end) = &replies.end_of_data else {
        return Err(Failure::new(EX_SOFTWARE, "the message was not sent"));
    };
    match end.code / 100 {
        2 if refused_permanently.is_empty() => Ok(()),
        2 => Err(Failure::new(
            EX_NOUSER,
            format!(
                "{}\nthe message was sent to the other recipients",
                refused_permanently.join("\n")
            ),
        )),
        4 => Err(refused("the message", end, EX_TEMPFAIL)),
        _ => Err(refused("the message", end, EX_DATAERR)),
    }
}

/// The session stopped before the message was sent: a refused EHLO/HELO, or a broken
/// connection. Nothing was accepted, so unless the refusal is for good the message can still
/// be kept offline.
fn interrupted_before(failure: &mailer_core::delivery::Failure) -> Unsent {
    match (failure.kind, &failure.remote_reply) {
        (FailureKind::Reply(code), Some(reply)) if code / 100 == 5 => {
            Unsent::Refused(Failure::new(
                EX_UNAVAILABLE,
                format!("the mail daemon refused the session: {reply}; the message was not sent"),
            ))
        }
        (_, Some(reply)) => Unsent::Unanswered(Unanswered::Silent(reply.clone())),
        (_, None) => Unsent::Unanswered(Unanswered::Silent(failure.reason.clone())),
    }
}

fn unexpected(event: &Event) -> Failure {
    Failure::new(
        EX_SOFTWARE,
        format!("unexpected SMTP session event {event:?}; the message was not sent"),
    )
}

/// A refusal by the daemon: temporary ones always become [`EX_TEMPFAIL`].
fn refused(what: &str, reply: &Reply, permanent: u8) -> Failure {
    let (code, outcome) = if reply.code / 100 == 4 {
        (EX_TEMPFAIL, "the message was NOT sent: try again later")
    } else {
        (permanent, "the message was not sent")
    };
    Failure::new(
        code,
        format!(
            "the mail daemon refused {what}: {}; {outcome}",
            reply.verbatim()
        ),
    )
}

/// `-bs`: the caller speaks SMTP itself; bytes are relayed both ways until the daemon
/// closes the session. Without a daemon there is nobody to speak SMTP with: the caller hears
/// `421` and the status says to retry.
fn smtp_on_stdio(socket: &Path, hostname: &str) -> Result<(), Failure> {
    let mut stdout = io::stdout().lock();
    let io_error =
        |e: io::Error| Failure::new(EX_IOERR, format!("relaying the SMTP session failed: {e}"));
    let link = match connect(socket, hostname) {
        Ok(link) => link,
        Err(Unsent::Refused(failure)) => return Err(failure),
        Err(Unsent::Unanswered(why)) => {
            let state = daemon_state(&why);
            let reply = Reply::status(421, 3, 2, format!("{hostname} the mail daemon {state}"));
            stdout.write_all(&reply.to_bytes()).map_err(io_error)?;
            stdout.flush().map_err(io_error)?;
            return Err(Failure::new(
                EX_TEMPFAIL,
                format!("the mail daemon {state}; the session was NOT relayed: try again later"),
            ));
        }
    };
    // The caller gets the greeting as it came; the session's own EHLO is never written.
    if let Some(greeting) = link.session.greeting() {
        stdout.write_all(&greeting.to_bytes()).map_err(io_error)?;
    }
    stdout.flush().map_err(io_error)?;
    let mut from_daemon = link.stream;
    from_daemon.set_read_timeout(None).map_err(io_error)?;
    let mut to_daemon = from_daemon.try_clone().map_err(io_error)?;
    // Standard input to the daemon; when the caller stops writing, half-close so the daemon
    // sees the end of the session.
    std::thread::spawn(move || {
        let _ = io::copy(&mut io::stdin().lock(), &mut to_daemon);
        let _ = to_daemon.shutdown(std::net::Shutdown::Write);
    });
    io::copy(&mut from_daemon, &mut stdout).map_err(io_error)?;
    stdout.flush().map_err(io_error)?;
    Ok(())
}

/// `is not running`, or why it did not take the message.
fn daemon_state(why: &Unanswered) -> String {
    match why {
        Unanswered::NotRunning => "is not running".to_string(),
        Unanswered::Silent(reason) => format!("did not take the message ({reason})"),
    }
}

/// Keeps the message in `offline/` for the daemon, and tells the caller where. Only when
/// that fails too is the message not sent, with the status that says to retry.
fn keep_offline(config: &Config, submission: &Submission, why: &Unanswered) -> Result<(), Failure> {
    offline::admissible(submission, config.limits.max_message_size)?;
    let dir = Spool::offline_dir_in(&config.queue_dir);
    let state = daemon_state(why);
    match write_offline(&dir, &offline::encode(submission)) {
        Ok(path) => {
            let when = match why {
                Unanswered::NotRunning => "when it starts",
                Unanswered::Silent(_) => "when it picks it up",
            };
            eprintln!(
                "mailer: the mail daemon {state}; message kept in {} for delivery {when}",
                path.display()
            );
            Ok(())
        }
        Err(e) => Err(Failure::new(
            EX_TEMPFAIL,
            format!(
                "the mail daemon {state}, and the message cannot be kept in {}: {e}; \
                 the message was NOT sent: try again later",
                dir.display()
            ),
        )),
    }
}

/// Writes `bytes` to a new file in `dir`: under a temporary name first, so the daemon never
/// reads half a message; then fsynced, renamed and the rename made durable. Returns the path.
fn write_offline(dir: &Path, bytes: &[u8]) -> io::Result<PathBuf> {
    let name = offline::file_name(random_128()?);
    let tmp = dir.join(offline::temporary_name(&name));
    let path = dir.join(&name);
    // O_EXCL and O_NOFOLLOW: in a directory everyone can write, the name must be ours.
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)?;
    let written = (|| {
        // Readable by the daemon, which may run as its own user, whatever the umask.
        file.set_permissions(fs::Permissions::from_mode(0o644))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, &path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    // The message is in place and will be delivered: a failure now only weakens the promise
    // across a crash, which is no reason to have the caller send it twice.
    if let Err(e) = sync_dir(dir, &file) {
        eprintln!(
            "mailer: warning: {} could not be synced ({e}); a crash now could lose the message",
            dir.display()
        );
    }
    Ok(path)
}

/// Makes a rename in `dir` durable. Only the directory's owner may open it (others cannot
/// read it), so anyone else flushes the file system with syncfs(2) instead: costly, but this
/// path is only taken while the daemon is down.
fn sync_dir(dir: &Path, file: &File) -> io::Result<()> {
    match File::open(dir) {
        Ok(d) => d.sync_all(),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            // SAFETY: syncfs on a descriptor we own, open for the call.
            if unsafe { libc::syncfs(file.as_raw_fd()) } == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        }
        Err(e) => Err(e),
    }
}

/// 128 bits from the kernel's generator, for a name others cannot guess.
fn random_128() -> io::Result<[u8; 16]> {
    let mut buf = [0u8; 16];
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: the kernel writes at most `rest.len()` octets into `rest`.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    Ok(buf)
}
