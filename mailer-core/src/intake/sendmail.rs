//! sendmail(8) submissions: the decisions behind `mailer sendmail`, without any IO.
//!
//! [`parse_args`] reads sendmail's own options; [`read_message`] finds where the message on
//! standard input ends; [`prepare`] completes its header (From, Date, Message-ID; Bcc removed
//! with `-t`) and gathers its envelope. The invoking user, host name, time and process id are
//! passed in as a [`Context`]. A [`Failure`] carries the sysexits(3) code the program exits
//! with, so callers know whether to retry.

use std::ffi::OsString;
use std::io::{self, BufRead};
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::address::Address;

// sysexits(3)
pub const EX_OK: u8 = 0;
pub const EX_USAGE: u8 = 64;
pub const EX_DATAERR: u8 = 65;
pub const EX_NOUSER: u8 = 67;
pub const EX_UNAVAILABLE: u8 = 69;
pub const EX_SOFTWARE: u8 = 70;
pub const EX_IOERR: u8 = 74;
pub const EX_TEMPFAIL: u8 = 75;
pub const EX_CONFIG: u8 = 78;

/// The synopsis shown after a usage error: the options [`parse_args`] understands.
pub const USAGE: &str =
    "usage: sendmail [-t] [-i|-oi] [-f sender] [-F name] [-bm|-bs] [-C config] [-oX...] \
     [--] [recipient ...]";

/// Why the submission did not (entirely) succeed: a sysexits code and what to tell the user.
#[derive(Debug, PartialEq, Eq)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn new(code: u8, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }
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
#[derive(Clone, Debug)]
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
        let date = crate::time::rfc5322(context.now);
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
    fn address_lists_yield_addr_specs_and_name_what_is_unterminated() {
        assert_eq!(
            parse_address_list("<@relay.test:u@x.test>, \"a, b\" <c@x.test>, d (e, f)").unwrap(),
            ["u@x.test", "c@x.test", "d"]
        );
        assert_eq!(parse_address_list(" ,; ").unwrap(), Vec::<String>::new());
        for (text, reason) in [
            ("\"open <a@x.test>", "unterminated quoted string"),
            ("a@x.test (open", "unterminated comment"),
            ("<a@x.test", "unterminated <address>"),
        ] {
            assert_eq!(parse_address_list(text).unwrap_err(), reason, "{text}");
        }
    }

    #[test]
    fn a_crlf_lone_dot_also_ends_the_message_and_a_dot_in_text_does_not() {
        let input = b"a\r\n.\r\nafter\r\n";
        assert_eq!(read_message(&input[..], false).unwrap(), b"a\r\n");
        let input = b"a\n..\n. \n.";
        assert_eq!(read_message(&input[..], false).unwrap(), input);
    }

    #[test]
    fn message_id_carries_time_to_the_nanosecond_pid_and_host() {
        let o = parse_args(&args(&["root"])).unwrap();
        let mut c = context();
        c.now += Duration::from_nanos(5);
        let text = String::from_utf8(prepare(b"x\n", &o, &c).unwrap().data).unwrap();
        assert!(
            text.contains("\r\nMessage-ID: <1700000000.000000005.42@box.test>\r\n"),
            "{text}"
        );
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
}
