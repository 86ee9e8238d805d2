//! `mailer sendmail`: the sendmail(8) entry point for cron and scripts.
//!
//! Reads a message on standard input, completes its header (Date, Message-ID, From), and
//! submits it over SMTP to the running daemon at the first `[[listen]]` address of the
//! configuration. Exit statuses follow sysexits(3), so callers know whether to retry.
//!
//! The arguments are sendmail's own (`-t`, `-oi`, `-f sender`, ...), which do not fit a
//! declarative parser: both entry points hand them to [`parse_args`].

use std::ffi::OsString;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mailer_core::address::Address;
use mailer_core::config::Config;

/// How long the daemon is looked for before giving up with [`EX_TEMPFAIL`].
const CONNECT_WITHIN: Duration = Duration::from_secs(10);
/// Pause between attempts to reach the daemon.
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// Wait for a reply to a command (RFC 5321 §4.5.3.2 suggests minutes).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);
/// Wait for the reply to the end of data (RFC 5321 §4.5.3.2.6: 10 minutes).
const DATA_END_TIMEOUT: Duration = Duration::from_secs(600);

// sysexits(3)
const EX_OK: u8 = 0;
const EX_USAGE: u8 = 64;
const EX_DATAERR: u8 = 65;
const EX_NOUSER: u8 = 67;
const EX_UNAVAILABLE: u8 = 69;
const EX_SOFTWARE: u8 = 70;
const EX_IOERR: u8 = 74;
const EX_TEMPFAIL: u8 = 75;
const EX_CONFIG: u8 = 78;

const USAGE: &str = "usage: sendmail [-t] [-i|-oi] [-f sender] [-F name] [-bm|-bs] [-C config] \
                     [-oX...] [--] [recipient ...]";

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

/// Why the submission did not (entirely) succeed: a sysexits code and what to tell the user.
#[derive(Debug, PartialEq, Eq)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    fn new(code: u8, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
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

/// What sendmail is asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `-bm` (the default): read a message and submit it.
    Deliver,
    /// `-bs`: speak SMTP on standard input and output, relayed to the daemon.
    SmtpOnStdio,
}

/// The sender given with `-f`/`-r`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SenderArg {
    /// `-f ''` or `-f '<>'`: the null reverse path, as bounce generators use.
    Null,
    Address(String),
}

/// sendmail's options as parsed from its arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// `-t`: recipients also from the To, Cc and Bcc fields; Bcc is removed.
    pub extract_recipients: bool,
    /// `-i` / `-oi`: a line holding a single dot does not end the message.
    pub ignore_dots: bool,
    /// `-f sender` / `-r sender`: the envelope sender.
    pub sender: Option<SenderArg>,
    /// `-F name`: the full name for a From field that is added.
    pub full_name: Option<String>,
    pub mode: Mode,
    /// `-C FILE` / `--config FILE`: the mailer configuration.
    pub config: Option<PathBuf>,
    /// Recipient arguments as given (each may be an address list).
    pub recipients: Vec<String>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            extract_recipients: false,
            ignore_dots: false,
            sender: None,
            full_name: None,
            mode: Mode::Deliver,
            config: None,
            recipients: Vec::new(),
        }
    }
}

/// Parses sendmail(8) arguments, getopt style: flags may be grouped (`-ti`), an option's
/// value may be attached (`-fuser`) or the next argument (`-f user`), options may follow
/// recipients, and `--` ends the options. Options that only tune the classic sendmail's
/// own queue (`-o...`, `-B`, `-N`, `-R`, `-V`, `-O`, `-L`, `-h`, `-X`, `-v`, `-m`, `-e...`)
/// are accepted and ignored.
pub fn parse_args(args: &[OsString]) -> Result<Options, Failure> {
    let usage = |m: String| Failure::new(EX_USAGE, m);
    let mut options = Options::default();
    let mut args = args.iter().map(|a| {
        a.to_str()
            .map(str::to_string)
            .ok_or_else(|| usage(format!("argument {a:?} is not valid UTF-8")))
    });
    let mut only_recipients = false;
    while let Some(arg) = args.next() {
        let arg = arg?;
        if only_recipients || !arg.starts_with('-') || arg == "-" {
            options.recipients.push(arg);
            continue;
        }
        if arg == "--" {
            only_recipients = true;
            continue;
        }
        if let Some(long) = arg.strip_prefix("--") {
            match long.split_once('=') {
                Some(("config", path)) => options.config = Some(PathBuf::from(path)),
                None if long == "config" => {
                    let path = args
                        .next()
                        .ok_or_else(|| usage("--config needs a file".into()))??;
                    options.config = Some(PathBuf::from(path));
                }
                _ => return Err(usage(format!("unknown option {arg}"))),
            }
            continue;
        }
        let flags = &arg[1..];
        for (i, flag) in flags.char_indices() {
            let attached = &flags[i + flag.len_utf8()..];
            match flag {
                't' => options.extract_recipients = true,
                'i' => options.ignore_dots = true,
                // Verbose, "me too", and the oldest error-mode flag: nothing to change here.
                'v' | 'm' => {}
                'f' | 'r' | 'F' | 'o' | 'b' | 'C' | 'B' | 'N' | 'R' | 'V' | 'O' | 'L' | 'h'
                | 'X' | 'e' => {
                    let value = if attached.is_empty() {
                        args.next()
                            .ok_or_else(|| usage(format!("option -{flag} needs a value")))??
                    } else {
                        attached.to_string()
                    };
                    apply_option(&mut options, flag, value)?;
                    break;
                }
                other => return Err(usage(format!("unknown option -{other}"))),
            }
        }
    }
    Ok(options)
}

fn apply_option(options: &mut Options, flag: char, value: String) -> Result<(), Failure> {
    match flag {
        'f' | 'r' => {
            let trimmed = value.trim();
            options.sender = Some(if trimmed.is_empty() || trimmed == "<>" {
                SenderArg::Null
            } else {
                SenderArg::Address(trimmed.to_string())
            });
        }
        'F' => options.full_name = Some(value),
        'C' => options.config = Some(PathBuf::from(value)),
        // -oi is the historical spelling of -i; every other -o option tunes sendmail's own
        // queue and delivery, which the daemon decides.
        'o' if value == "i" => options.ignore_dots = true,
        'b' => match value.as_str() {
            "m" => options.mode = Mode::Deliver,
            "s" => options.mode = Mode::SmtpOnStdio,
            other => {
                return Err(Failure::new(
                    EX_USAGE,
                    format!("mode -b{other} is not supported (only -bm and -bs)"),
                ))
            }
        },
        _ => {}
    }
    Ok(())
}

/// Reads the message. Without `ignore_dots`, a line holding a single `.` ends it, as in
/// classic sendmail; the rest of the input is left unread.
pub fn read_message(input: impl BufRead, ignore_dots: bool) -> io::Result<Vec<u8>> {
    let mut input = input;
    let mut message = Vec::new();
    if ignore_dots {
        input.read_to_end(&mut message)?;
        return Ok(message);
    }
    let mut line = Vec::new();
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            return Ok(message);
        }
        if line == b".\n" || line == b".\r\n" {
            return Ok(message);
        }
        message.extend_from_slice(&line);
    }
}

/// Facts about the invocation that go into the completed message.
pub struct Context {
    /// The configuration's host name: the domain of bare user names.
    pub hostname: String,
    /// The invoking user's login name.
    pub login: String,
    pub now: SystemTime,
    pub pid: u32,
}

/// A message ready to submit.
#[derive(Debug, PartialEq, Eq)]
pub struct Submission {
    /// `None` is the null reverse path.
    pub sender: Option<Address>,
    pub recipients: Vec<Address>,
    /// The message with CRLF line endings, its header completed; not dot-stuffed.
    pub data: Vec<u8>,
}

/// Completes the message (CRLF line endings, Date, Message-ID, From; Bcc removed with `-t`)
/// and gathers its envelope.
pub fn prepare(input: &[u8], options: &Options, context: &Context) -> Result<Submission, Failure> {
    let mut text = to_crlf(strip_unix_from(input));
    // A last line without its end would run into the fields added after it.
    if !text.is_empty() && !text.ends_with(b"\r\n") {
        text.extend_from_slice(b"\r\n");
    }
    let (fields, body) = split_header(&text);

    let sender = match &options.sender {
        Some(SenderArg::Null) => None,
        Some(SenderArg::Address(a)) => Some(
            complete_address(a, &context.hostname)
                .map_err(|e| Failure::new(EX_USAGE, format!("sender {a:?} given with -f: {e}")))?,
        ),
        None => Some(
            Address::from_parts(&context.login, &context.hostname).map_err(|e| {
                Failure::new(
                    EX_SOFTWARE,
                    format!(
                        "cannot make a sender of {}@{}: {e}; give one with -f",
                        context.login, context.hostname
                    ),
                )
            })?,
        ),
    };

    let mut recipients = Vec::new();
    for arg in &options.recipients {
        for a in parse_address_list(arg)
            .map_err(|e| Failure::new(EX_USAGE, format!("recipient {arg:?}: {e}")))?
        {
            let address = complete_address(&a, &context.hostname)
                .map_err(|e| Failure::new(EX_USAGE, format!("recipient {a:?}: {e}")))?;
            push_unique(&mut recipients, address);
        }
    }
    if options.extract_recipients {
        for field in &fields {
            let name = field.name();
            if !["to", "cc", "bcc"].contains(&name.to_ascii_lowercase().as_str()) {
                continue;
            }
            let value = field.unfolded_value();
            let list = parse_address_list(&value)
                .map_err(|e| Failure::new(EX_DATAERR, format!("{name} field: {e}")))?;
            for a in list {
                let address = complete_address(&a, &context.hostname).map_err(|e| {
                    Failure::new(EX_DATAERR, format!("{name} field: address {a:?}: {e}"))
                })?;
                push_unique(&mut recipients, address);
            }
        }
    }
    if recipients.is_empty() {
        return Err(if options.extract_recipients {
            Failure::new(
                EX_DATAERR,
                "no recipients: the message has no To, Cc or Bcc address and none was given",
            )
        } else {
            Failure::new(EX_USAGE, "no recipients given (or use -t)")
        });
    }

    let has = |wanted: &str| fields.iter().any(|f| f.name().eq_ignore_ascii_case(wanted));
    let mut data = Vec::with_capacity(text.len() + 256);
    for field in &fields {
        if options.extract_recipients && field.name().eq_ignore_ascii_case("bcc") {
            continue;
        }
        data.extend_from_slice(field.raw);
    }
    if !has("from") {
        let address = match &sender {
            Some(a) => a.to_string(),
            None => format!("{}@{}", context.login, context.hostname),
        };
        let from = match &options.full_name {
            Some(name) if !name.trim().is_empty() => {
                format!("{} <{address}>", display_name(name.trim()))
            }
            _ => address,
        };
        data.extend_from_slice(format!("From: {from}\r\n").as_bytes());
    }
    if !has("date") {
        let date = mailer_core::time::rfc5322(context.now);
        data.extend_from_slice(format!("Date: {date}\r\n").as_bytes());
    }
    if !has("message-id") {
        let since = context.now.duration_since(UNIX_EPOCH).unwrap_or_default();
        data.extend_from_slice(
            format!(
                "Message-ID: <{}.{:09}.{}@{}>\r\n",
                since.as_secs(),
                since.subsec_nanos(),
                context.pid,
                context.hostname
            )
            .as_bytes(),
        );
    }
    // Also separates a body that followed the header without an empty line.
    data.extend_from_slice(b"\r\n");
    data.extend_from_slice(body);
    Ok(Submission {
        sender,
        recipients,
        data,
    })
}

fn push_unique(list: &mut Vec<Address>, address: Address) {
    if !list.contains(&address) {
        list.push(address);
    }
}

/// A bare user name gets `@hostname`, as sendmail does; the result must be a valid address.
fn complete_address(text: &str, hostname: &str) -> Result<Address, String> {
    let text = text.trim();
    let text = text
        .strip_prefix('<')
        .and_then(|t| t.strip_suffix('>'))
        .unwrap_or(text);
    if text.contains('@') {
        Address::parse(text).map_err(|e| e.to_string())
    } else {
        Address::from_parts(text, hostname).map_err(|e| e.to_string())
    }
}

/// Drops a leading mbox separator (`From sender date`), which some programs write.
fn strip_unix_from(input: &[u8]) -> &[u8] {
    if !input.starts_with(b"From ") {
        return input;
    }
    match input.iter().position(|&b| b == b'\n') {
        Some(end) => &input[end + 1..],
        None => &[],
    }
}

/// Every line ending (LF, CRLF, or a lone CR) becomes CRLF: the daemon refuses bare ones.
pub fn to_crlf(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() + input.len() / 32 + 2);
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'\r' => {
                out.extend_from_slice(b"\r\n");
                if input.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            }
            b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// One header field as written, continuation lines and final CRLF included.
struct Field<'a> {
    raw: &'a [u8],
    /// Where its name ends.
    colon: usize,
}

impl Field<'_> {
    fn name(&self) -> &str {
        // Checked to be printable ASCII by `field_name_end`.
        std::str::from_utf8(&self.raw[..self.colon]).unwrap_or("")
    }

    /// The value with its line breaks removed (RFC 5322 §2.2.3 unfolding).
    fn unfolded_value(&self) -> String {
        let value: Vec<u8> = self.raw[self.colon + 1..]
            .iter()
            .copied()
            .filter(|&b| b != b'\r' && b != b'\n')
            .collect();
        String::from_utf8_lossy(&value).into_owned()
    }
}

/// Splits CRLF text into its header fields and body. The header ends at the first empty
/// line, or at the first line that is neither a field nor a continuation (then the whole
/// rest is body, as when a script pipes plain text).
fn split_header(text: &[u8]) -> (Vec<Field<'_>>, &[u8]) {
    // Byte ranges of the fields, grown by their continuation lines.
    let mut ranges: Vec<(usize, usize, usize)> = Vec::new();
    let mut pos = 0;
    let body_start = loop {
        if pos >= text.len() {
            break text.len();
        }
        let end = text[pos..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map_or(text.len(), |i| pos + i + 2);
        let line = &text[pos..end];
        if line == b"\r\n" {
            break end;
        }
        let continuation = matches!(line.first(), Some(b' ' | b'\t'));
        match (ranges.last_mut(), field_name_end(line)) {
            (Some(last), _) if continuation => last.1 = end,
            (_, Some(colon)) => ranges.push((pos, end, colon)),
            _ => break pos,
        }
        pos = end;
    };
    let fields = ranges
        .into_iter()
        .map(|(start, end, colon)| Field {
            raw: &text[start..end],
            colon,
        })
        .collect();
    (fields, &text[body_start..])
}

/// Where the name of a field starting on `line` ends: `name:` with a name of printable
/// ASCII other than the colon (RFC 5322 §2.2).
fn field_name_end(line: &[u8]) -> Option<usize> {
    let colon = line.iter().position(|&b| b == b':')?;
    let valid = colon > 0 && line[..colon].iter().all(|&b| (33..=126).contains(&b));
    valid.then_some(colon)
}

/// The addresses of an RFC 5322 address list: display names, comments, quoted strings and
/// groups (`team: a@x, b@y;`) are understood; each result is an addr-spec as written (a bare
/// user name is left for the caller to complete).
pub fn parse_address_list(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut plain = String::new(); // outside angle brackets, comments removed
    let mut angle: Option<String> = None;
    let mut in_angle = false;
    let mut in_quote = false;
    let mut comment_depth = 0usize;
    let mut escaped = false;

    fn finish(out: &mut Vec<String>, plain: &mut String, angle: &mut Option<String>) {
        let spec = match angle.take() {
            Some(a) => a,
            None => std::mem::take(plain),
        };
        plain.clear();
        // A source route (`<@relay:user@host>`) is obsolete; keep the mailbox.
        let spec = match spec.rfind(':') {
            Some(i) if spec.starts_with('@') => spec[i + 1..].to_string(),
            _ => spec,
        };
        let spec = spec.trim();
        if !spec.is_empty() {
            out.push(spec.to_string());
        }
    }

    for c in text.chars() {
        let buffer = if in_angle {
            angle.get_or_insert_with(String::new)
        } else {
            &mut plain
        };
        if escaped {
            if comment_depth == 0 {
                buffer.push(c);
            }
            escaped = false;
            continue;
        }
        if comment_depth > 0 {
            match c {
                '\\' => escaped = true,
                '(' => comment_depth += 1,
                ')' => comment_depth -= 1,
                _ => {}
            }
            continue;
        }
        if in_quote {
            buffer.push(c);
            match c {
                '\\' => escaped = true,
                '"' => in_quote = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                in_quote = true;
                buffer.push(c);
            }
            '(' => comment_depth = 1,
            '<' if !in_angle => {
                in_angle = true;
                angle = Some(String::new());
            }
            '>' if in_angle => in_angle = false,
            _ if in_angle && !c.is_whitespace() => buffer.push(c),
            _ if in_angle => {}
            // The display name of a group: its members follow.
            ':' => plain.clear(),
            ',' | ';' => finish(&mut out, &mut plain, &mut angle),
            // Kept, so that words without an <address> fail as an address rather than run
            // together; the words of a display name are dropped once an <address> is seen.
            c if c.is_whitespace() => plain.push(' '),
            _ => plain.push(c),
        }
    }
    if in_quote {
        return Err("unterminated quoted string".into());
    }
    if comment_depth > 0 {
        return Err("unterminated comment".into());
    }
    if in_angle {
        return Err("unterminated <address>".into());
    }
    finish(&mut out, &mut plain, &mut angle);
    Ok(out)
}

/// A display name as a phrase: as is when it is atoms, a quoted string when it has specials,
/// RFC 2047 encoded words when it is not ASCII.
fn display_name(name: &str) -> String {
    let atext = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~ ".contains(c);
    if name.chars().all(atext) {
        return name.to_string();
    }
    if name.chars().all(|c| c.is_ascii() && !c.is_ascii_control()) {
        let escaped = name.replace('\\', "\\\\").replace('"', "\\\"");
        return format!("\"{escaped}\"");
    }
    encoded_words(name)
}

/// RFC 2047 `Q` encoded words, each at most 75 characters and holding whole characters.
fn encoded_words(text: &str) -> String {
    const PREFIX: &str = "=?UTF-8?Q?";
    const SUFFIX: &str = "?=";
    let mut words = Vec::new();
    let mut word = String::new();
    for c in text.chars() {
        let mut encoded = String::new();
        if c == ' ' {
            encoded.push('_');
        } else if c.is_ascii_alphanumeric() || "!*+-/".contains(c) {
            encoded.push(c);
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                encoded.push_str(&format!("={b:02X}"));
            }
        }
        if PREFIX.len() + word.len() + encoded.len() + SUFFIX.len() > 75 && !word.is_empty() {
            words.push(format!("{PREFIX}{word}{SUFFIX}"));
            word.clear();
        }
        word.push_str(&encoded);
    }
    if !word.is_empty() {
        words.push(format!("{PREFIX}{word}{SUFFIX}"));
    }
    words.join(" ")
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

/// Where to reach a listener: a wildcard address is reached on the loopback of its family.
fn connect_address(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), listen.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), listen.port())
        }
        _ => listen,
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
    let sent = dot_stuff(&submission.data);
    conn.writer.write_all(&sent).map_err(lost)?;
    conn.writer.write_all(b".\r\n").map_err(lost)?;
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

/// RFC 5321 §4.5.2: a line starting with a dot gets one more. `data` ends with CRLF.
fn dot_stuff(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 64);
    let mut line_start = true;
    for &b in data {
        if line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        line_start = b == b'\n';
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    fn context() -> Context {
        Context {
            hostname: "box.test".into(),
            login: "cron".into(),
            now: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            pid: 42,
        }
    }

    #[test]
    fn parses_the_options_cron_and_scripts_use() {
        let o = parse_args(&args(&[
            "-t",
            "-oi",
            "-f",
            "root@box.test",
            "-FCron Daemon",
            "-oem",
            "-odb",
            "--",
            "-odd@example.org",
        ]))
        .unwrap();
        assert!(o.extract_recipients);
        assert!(o.ignore_dots);
        assert_eq!(o.sender, Some(SenderArg::Address("root@box.test".into())));
        assert_eq!(o.full_name.as_deref(), Some("Cron Daemon"));
        assert_eq!(o.recipients, vec!["-odd@example.org".to_string()]);
        assert_eq!(o.mode, Mode::Deliver);
    }

    #[test]
    fn grouped_flags_attached_values_and_options_after_recipients() {
        let o = parse_args(&args(&[
            "-ti",
            "a@x.test",
            "-fme",
            "-bs",
            "-C",
            "/etc/m.toml",
        ]))
        .unwrap();
        assert!(o.extract_recipients && o.ignore_dots);
        assert_eq!(o.sender, Some(SenderArg::Address("me".into())));
        assert_eq!(o.mode, Mode::SmtpOnStdio);
        assert_eq!(o.config, Some(PathBuf::from("/etc/m.toml")));
        assert_eq!(o.recipients, vec!["a@x.test".to_string()]);
        let o = parse_args(&args(&["--config=/x.toml", "-f", "<>", "b@x.test"])).unwrap();
        assert_eq!(o.config, Some(PathBuf::from("/x.toml")));
        assert_eq!(o.sender, Some(SenderArg::Null));
    }

    #[test]
    fn usage_errors_exit_64_naming_the_option() {
        for (list, reason) in [
            (&["-q"][..], "unknown option -q"),
            (&["-f"][..], "option -f needs a value"),
            (&["-bp"][..], "mode -bp is not supported"),
            (&["--bogus"][..], "unknown option --bogus"),
        ] {
            let e = parse_args(&args(list)).unwrap_err();
            assert_eq!(e.code, EX_USAGE, "{list:?}");
            assert!(e.message.starts_with(reason), "{list:?}: {}", e.message);
        }
    }

    #[test]
    fn a_lone_dot_ends_the_message_unless_ignored() {
        let input = b"Subject: x\n\nbody\n.\nafter\n";
        assert_eq!(
            read_message(&input[..], false).unwrap(),
            b"Subject: x\n\nbody\n"
        );
        assert_eq!(read_message(&input[..], true).unwrap(), input);
    }

    #[test]
    fn line_endings_become_crlf() {
        assert_eq!(to_crlf(b"a\nb\r\nc\rd"), b"a\r\nb\r\nc\r\nd");
    }

    #[test]
    fn completes_the_header_of_a_bare_message() {
        let o = parse_args(&args(&["root"])).unwrap();
        let s = prepare(
            b"Subject: disk full\n\n/var is at 99%\n.hidden\n",
            &o,
            &context(),
        )
        .unwrap();
        assert_eq!(s.sender.unwrap().to_string(), "cron@box.test");
        assert_eq!(s.recipients[0].to_string(), "root@box.test");
        assert_eq!(
            String::from_utf8(s.data).unwrap(),
            "Subject: disk full\r\n\
             From: cron@box.test\r\n\
             Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n\
             Message-ID: <1700000000.000000000.42@box.test>\r\n\
             \r\n\
             /var is at 99%\r\n\
             .hidden\r\n"
        );
    }

    #[test]
    fn body_without_header_gets_one() {
        let o = parse_args(&args(&["-F", "Backup Job", "-f", "backup", "root"])).unwrap();
        let s = prepare(b"hello: there was\nno header", &o, &context()).unwrap();
        let text = String::from_utf8(s.data).unwrap();
        // "hello: there was" looks like a field: it stays one; "no header" starts the body.
        assert!(
            text.starts_with("hello: there was\r\nFrom: Backup Job <backup@box.test>\r\n"),
            "{text}"
        );
        assert!(text.ends_with("\r\n\r\nno header\r\n"), "{text}");
        let s = prepare(b"just text\n", &o, &context()).unwrap();
        let text = String::from_utf8(s.data).unwrap();
        assert!(text.starts_with("From: "), "{text}");
        assert!(text.ends_with(">\r\n\r\njust text\r\n"), "{text}");
    }

    #[test]
    fn a_header_without_final_newline_is_completed_on_its_own_line() {
        let o = parse_args(&args(&["root"])).unwrap();
        let s = prepare(b"Subject: no newline", &o, &context()).unwrap();
        let text = String::from_utf8(s.data).unwrap();
        assert!(
            text.starts_with("Subject: no newline\r\nFrom: cron@box.test\r\n"),
            "{text}"
        );
        assert!(text.ends_with(">\r\n\r\n"), "{text}");
    }

    #[test]
    fn existing_fields_are_kept_and_not_added_twice() {
        let o = parse_args(&args(&["root"])).unwrap();
        let input = b"from: A <a@x.test>\ndate: Mon, 1 Jan 2024 00:00:00 +0000\n\
                      message-id: <m@x.test>\n\nbody\n";
        let s = prepare(input, &o, &context()).unwrap();
        assert_eq!(s.data, to_crlf(input));
    }

    #[test]
    fn t_takes_recipients_from_to_cc_bcc_and_removes_bcc() {
        let o = parse_args(&args(&["-t", "extra@y.test"])).unwrap();
        let input = b"To: \"Doe, John\" <john@x.test>, root\n\
                      Cc: team: a@x.test, (comment) b@x.test;\n\
                      Bcc: hidden@z.test,\n  also-hidden@z.test\n\
                      Subject: report\n\nbody\n";
        let s = prepare(input, &o, &context()).unwrap();
        let rcpts: Vec<String> = s.recipients.iter().map(|a| a.to_string()).collect();
        assert_eq!(
            rcpts,
            [
                "extra@y.test",
                "john@x.test",
                "root@box.test",
                "a@x.test",
                "b@x.test",
                "hidden@z.test",
                "also-hidden@z.test"
            ]
        );
        let text = String::from_utf8(s.data).unwrap();
        assert!(!text.to_ascii_lowercase().contains("bcc"), "{text}");
        assert!(!text.contains("hidden"), "{text}");
        assert!(
            text.contains("Subject: report\r\nFrom: cron@box.test\r\n"),
            "{text}"
        );
    }

    #[test]
    fn t_without_any_recipient_is_a_data_error() {
        let o = parse_args(&args(&["-t"])).unwrap();
        let e = prepare(b"Subject: x\n\nbody\n", &o, &context()).unwrap_err();
        assert_eq!(e.code, EX_DATAERR);
        let o = parse_args(&args(&[])).unwrap();
        assert_eq!(prepare(b"x\n", &o, &context()).unwrap_err().code, EX_USAGE);
        let o = parse_args(&args(&["-t"])).unwrap();
        let e = prepare(b"To: <broken@\n\nx\n", &o, &context()).unwrap_err();
        assert_eq!(e.code, EX_DATAERR);
        assert!(e.message.starts_with("To field: "), "{}", e.message);
    }

    #[test]
    fn null_sender_and_invalid_sender() {
        let o = parse_args(&args(&["-f", "", "root"])).unwrap();
        let s = prepare(b"x\n", &o, &context()).unwrap();
        assert_eq!(s.sender, None);
        assert!(String::from_utf8(s.data)
            .unwrap()
            .contains("From: cron@box.test\r\n"));
        let o = parse_args(&args(&["-f", "a@@b", "root"])).unwrap();
        assert_eq!(prepare(b"x\n", &o, &context()).unwrap_err().code, EX_USAGE);
    }

    #[test]
    fn display_names_are_quoted_or_encoded() {
        assert_eq!(display_name("Cron Daemon"), "Cron Daemon");
        assert_eq!(display_name("Doe, \"J\""), "\"Doe, \\\"J\\\"\"");
        assert_eq!(display_name("Zoë"), "=?UTF-8?Q?Zo=C3=AB?=");
        let long = "é".repeat(40);
        for word in encoded_words(&long).split(' ') {
            assert!(word.len() <= 75, "{word}");
            assert!(word.starts_with("=?UTF-8?Q?") && word.ends_with("?="));
        }
    }

    #[test]
    fn lines_starting_with_a_dot_are_stuffed() {
        assert_eq!(dot_stuff(b".a\r\nb.\r\n..\r\n"), b"..a\r\nb.\r\n...\r\n");
    }

    #[test]
    fn a_leading_mbox_separator_is_dropped() {
        let o = parse_args(&args(&["root"])).unwrap();
        let s = prepare(
            b"From cron Mon Jan  1 00:00:00 2024\nSubject: x\n\nb\n",
            &o,
            &context(),
        )
        .unwrap();
        assert!(s.data.starts_with(b"Subject: x\r\n"));
    }

    #[test]
    fn wildcard_listeners_are_reached_on_loopback() {
        assert_eq!(
            connect_address("0.0.0.0:25".parse().unwrap()),
            "127.0.0.1:25".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            connect_address("[::]:25".parse().unwrap()),
            "[::1]:25".parse::<SocketAddr>().unwrap()
        );
    }
}
