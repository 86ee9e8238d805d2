//! `mailer sendmail`: the sendmail(8) entry point for cron and scripts.
//!
//! Reads a message on standard input, completes its header (Date, Message-ID, From), and
//! submits it over SMTP to the running daemon at the first `[[listen]]` address of the
//! configuration. Exit statuses follow sysexits(3), so callers know whether to retry.
//!
//! Only the IO is here: standard input, the configuration, the invoking user, the clock and
//! the SMTP connection. What the arguments mean and how the message is completed is decided
//! in [`mailer_core::intake::submission`]. The arguments are sendmail's own (`-t`, `-oi`,
//! `-f sender`, ...), which do not fit a declarative parser: both entry points hand them to
//! [`parse_args`].

use std::ffi::OsString;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use mailer_core::address::Address;
use mailer_core::config::Config;
use mailer_core::delivery::relay::protocol::dot_stuffed;
use mailer_core::intake::submission::{
    connect_address, parse_args, prepare, read_message, Context, Failure, Mode, Submission,
    EX_CONFIG, EX_DATAERR, EX_IOERR, EX_NOUSER, EX_OK, EX_TEMPFAIL, EX_UNAVAILABLE, EX_USAGE,
    USAGE,
};

/// How long the daemon is looked for before giving up with [`EX_TEMPFAIL`].
const CONNECT_WITHIN: Duration = Duration::from_secs(10);
/// Pause between attempts to reach the daemon.
const RETRY_PAUSE: Duration = Duration::from_millis(200);
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
    let config_path = options
        .config
        .clone()
        .or(config)
        .unwrap_or_else(|| PathBuf::from(crate::DEFAULT_CONFIG));
    let config = Config::load(&config_path).map_err(|diagnostics| {
        let lines: Vec<String> = diagnostics.iter().map(|d| d.to_string()).collect();
        Failure::new(
            EX_CONFIG,
            format!(
                "{}\ncannot find the mail daemon without its configuration; the message was not sent",
                lines.join("\n")
            ),
        )
    })?;
    let Some(listen) = config.listen.first() else {
        return Err(Failure::new(
            EX_CONFIG,
            format!("{}: no [[listen]] address", config_path.display()),
        ));
    };
    let daemon = connect_address(listen.address);
    if options.mode == Mode::SmtpOnStdio {
        return smtp_on_stdio(daemon);
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
    submit(daemon, &config.hostname, &submission)
}

/// The invoking user's login name, from the password database by real uid.
fn login_name() -> Result<String, Failure> {
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
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
            return Ok(name.to_string_lossy().into_owned());
        }
        return Err(Failure::new(
            EX_NOUSER,
            format!("user id {uid} has no entry in the password database; give a sender with -f"),
        ));
    }
}

/// An SMTP reply: its code and text lines.
#[derive(Debug)]
struct Reply {
    code: u16,
    lines: Vec<String>,
}

impl Reply {
    fn text(&self) -> String {
        format!("{} {}", self.code, self.lines.join(" / "))
    }

    fn class(&self) -> u16 {
        self.code / 100
    }
}

struct Connection {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Connection {
    fn command(&mut self, line: &str, timeout: Duration) -> io::Result<Reply> {
        self.writer.write_all(line.as_bytes())?;
        self.writer.write_all(b"\r\n")?;
        self.writer.flush()?;
        self.reply(timeout)
    }

    fn reply(&mut self, timeout: Duration) -> io::Result<Reply> {
        self.reader.get_ref().set_read_timeout(Some(timeout))?;
        let mut lines = Vec::new();
        let mut line = String::new();
        loop {
            line.clear();
            // A reply line is short; a flood without newline is a broken peer.
            let n = (&mut self.reader).take(4096).read_line(&mut line)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the daemon closed the connection",
                ));
            }
            let text = line.trim_end_matches(['\r', '\n']);
            let code = text
                .get(..3)
                .filter(|c| c.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|c| c.parse::<u16>().ok())
                .filter(|c| (200..600).contains(c))
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("malformed reply from the daemon: {text:?}"),
                    )
                })?;
            lines.push(text.get(4..).unwrap_or("").to_string());
            if text.as_bytes().get(3) != Some(&b'-') {
                return Ok(Reply { code, lines });
            }
        }
    }

    fn quit(mut self) {
        // The transaction is settled; a failing QUIT changes nothing.
        let _ = self.command("QUIT", Duration::from_secs(5));
    }
}

/// Connects and reads a 220 greeting, retrying refused connections and busy (4xx) greetings
/// until [`CONNECT_WITHIN`] has passed.
fn connect(daemon: SocketAddr) -> Result<(Connection, Reply), Failure> {
    let deadline = Instant::now() + CONNECT_WITHIN;
    let mut last_error;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let attempt = TcpStream::connect_timeout(&daemon, remaining.max(Duration::from_millis(1)))
            .and_then(|stream| {
                let writer = stream.try_clone()?;
                let mut connection = Connection {
                    reader: BufReader::new(stream),
                    writer,
                };
                let greeting = connection.reply(remaining.max(Duration::from_millis(1)))?;
                Ok((connection, greeting))
            });
        match attempt {
            Ok((connection, greeting)) if greeting.code == 220 => {
                return Ok((connection, greeting));
            }
            Ok((_, greeting)) if greeting.class() == 5 => {
                return Err(Failure::new(
                    EX_UNAVAILABLE,
                    format!(
                        "the mail daemon at {daemon} refuses service: {}; the message was not sent",
                        greeting.text()
                    ),
                ));
            }
            Ok((_, greeting)) => last_error = greeting.text(),
            Err(e) => last_error = e.to_string(),
        }
        if Instant::now() + RETRY_PAUSE >= deadline {
            return Err(Failure::new(
                EX_TEMPFAIL,
                format!(
                    "cannot reach the mail daemon at {daemon} within {} s ({last_error}); \
                     the message was NOT sent: try again later",
                    CONNECT_WITHIN.as_secs()
                ),
            ));
        }
        std::thread::sleep(RETRY_PAUSE);
    }
}

/// Submits over SMTP; each refusal becomes the sysexits code that tells the caller whether
/// to retry.
fn submit(daemon: SocketAddr, hostname: &str, submission: &Submission) -> Result<(), Failure> {
    let (mut conn, _) = connect(daemon)?;
    let lost = |e: io::Error| {
        Failure::new(
            EX_TEMPFAIL,
            format!(
                "connection to the mail daemon at {daemon} failed: {e}; the message was NOT sent"
            ),
        )
    };
    let ehlo = conn
        .command(&format!("EHLO {hostname}"), COMMAND_TIMEOUT)
        .map_err(lost)?;
    let capabilities: Vec<String> = if ehlo.code == 250 {
        ehlo.lines
            .iter()
            .skip(1)
            .map(|l| l.to_ascii_uppercase())
            .collect()
    } else {
        let helo = conn
            .command(&format!("HELO {hostname}"), COMMAND_TIMEOUT)
            .map_err(lost)?;
        if helo.code != 250 {
            return Err(refused("HELO", &helo, EX_UNAVAILABLE));
        }
        Vec::new()
    };
    let has = |cap: &str| {
        capabilities
            .iter()
            .any(|c| c.split_whitespace().next() == Some(cap))
    };

    let mut mail = format!(
        "MAIL FROM:<{}>",
        submission
            .sender
            .as_ref()
            .map(|a| a.to_string())
            .unwrap_or_default()
    );
    if has("8BITMIME") && !submission.data.is_ascii() {
        mail.push_str(" BODY=8BITMIME");
    }
    let utf8 = submission.sender.as_ref().is_some_and(Address::is_utf8)
        || submission.recipients.iter().any(Address::is_utf8);
    if has("SMTPUTF8") && utf8 {
        mail.push_str(" SMTPUTF8");
    }
    let reply = conn.command(&mail, COMMAND_TIMEOUT).map_err(lost)?;
    if reply.code != 250 {
        return Err(refused("the sender", &reply, EX_UNAVAILABLE));
    }

    let mut accepted = 0usize;
    let mut refused_permanently = Vec::new();
    for rcpt in &submission.recipients {
        let reply = conn
            .command(&format!("RCPT TO:<{rcpt}>"), COMMAND_TIMEOUT)
            .map_err(lost)?;
        match reply.class() {
            2 => accepted += 1,
            // Nothing is sent, so the caller can retry the whole message without duplicates.
            4 => {
                conn.quit();
                return Err(refused(&format!("recipient {rcpt}"), &reply, EX_TEMPFAIL));
            }
            _ => refused_permanently.push(format!("recipient {rcpt} refused: {}", reply.text())),
        }
    }
    if accepted == 0 {
        conn.quit();
        return Err(Failure::new(
            EX_NOUSER,
            format!(
                "{}\nno recipient was accepted; the message was not sent",
                refused_permanently.join("\n")
            ),
        ));
    }

    let reply = conn.command("DATA", COMMAND_TIMEOUT).map_err(lost)?;
    if reply.code != 354 {
        return Err(refused("DATA", &reply, EX_UNAVAILABLE));
    }
    // One write: stuffed, ended with `.\r\n`.
    let sent = dot_stuffed(&submission.data).concat();
    conn.writer.write_all(&sent).map_err(lost)?;
    conn.writer.flush().map_err(lost)?;
    let reply = conn.reply(DATA_END_TIMEOUT).map_err(|e| {
        Failure::new(
            EX_TEMPFAIL,
            format!(
                "no answer from the mail daemon at {daemon} after the message was sent ({e}); \
                 it may or may not have been accepted"
            ),
        )
    })?;
    conn.quit();
    match reply.class() {
        2 if refused_permanently.is_empty() => Ok(()),
        2 => Err(Failure::new(
            EX_NOUSER,
            format!(
                "{}\nthe message was sent to the other recipients",
                refused_permanently.join("\n")
            ),
        )),
        4 => Err(refused("the message", &reply, EX_TEMPFAIL)),
        _ => Err(refused("the message", &reply, EX_DATAERR)),
    }
}

/// A refusal by the daemon: temporary ones always become [`EX_TEMPFAIL`].
fn refused(what: &str, reply: &Reply, permanent: u8) -> Failure {
    let (code, outcome) = if reply.class() == 4 {
        (EX_TEMPFAIL, "the message was NOT sent: try again later")
    } else {
        (permanent, "the message was not sent")
    };
    Failure::new(
        code,
        format!(
            "the mail daemon refused {what}: {}; {outcome}",
            reply.text()
        ),
    )
}

/// `-bs`: the caller speaks SMTP itself; bytes are relayed both ways until the daemon
/// closes the session.
fn smtp_on_stdio(daemon: SocketAddr) -> Result<(), Failure> {
    let (conn, greeting) = connect(daemon)?;
    let mut stdout = io::stdout().lock();
    let io_error =
        |e: io::Error| Failure::new(EX_IOERR, format!("relaying the SMTP session failed: {e}"));
    for (i, line) in greeting.lines.iter().enumerate() {
        let sep = if i + 1 == greeting.lines.len() {
            ' '
        } else {
            '-'
        };
        write!(stdout, "{}{sep}{line}\r\n", greeting.code).map_err(io_error)?;
    }
    stdout.flush().map_err(io_error)?;
    let Connection { mut reader, writer } = conn;
    reader.get_ref().set_read_timeout(None).map_err(io_error)?;
    let mut to_daemon = writer;
    // Standard input to the daemon; when the caller stops writing, half-close so the daemon
    // sees the end of the session.
    std::thread::spawn(move || {
        let _ = io::copy(&mut io::stdin().lock(), &mut to_daemon);
        let _ = to_daemon.shutdown(std::net::Shutdown::Write);
    });
    io::copy(&mut reader, &mut stdout).map_err(io_error)?;
    stdout.flush().map_err(io_error)?;
    Ok(())
}
