//! `mailer queue …` and `mailer reload`: clients of the control socket.
//!
//! `list` and `show` read the queue directory when the daemon is not running; the commands
//! that change the queue need the daemon (it owns the queue while it runs) and say so.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use mailer_core::config::Config;
use mailer_core::queue::{Envelope, QueueId, RecipientState, Spool};
use mailer_core::time::{unix_seconds, Civil};
use serde_json::{json, Value};

use crate::control::{header_section, Request, Shown};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: QueueCommand,
}

#[derive(clap::Subcommand)]
enum QueueCommand {
    /// List queued messages with each recipient's state.
    List {
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one message: its envelope and headers.
    Show { id: String },
    /// Retry now: one message, or every message.
    Flush { id: Option<String> },
    /// Keep messages from being delivered until released.
    Hold {
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Every message in the queue.
        #[arg(long)]
        all: bool,
    },
    /// Let held messages be delivered again.
    Release {
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Every message in the queue.
        #[arg(long)]
        all: bool,
    },
    /// Delete a message without delivering it and without telling the sender.
    Remove { id: String },
    /// Fail a message now: its sender gets a delivery status notification.
    Bounce { id: String },
}

/// Exit status when the daemon cannot be reached or refuses.
const EXIT_FAILED: u8 = 1;

pub fn main(config_path: Option<&Path>, args: Args) -> ExitCode {
    let config = match crate::load_config(config_path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let request = match args.command {
        QueueCommand::List { json } => return list(&config, json),
        QueueCommand::Show { id } => return show(&config, &id),
        QueueCommand::Flush { id } => Request::Flush { id },
        QueueCommand::Hold { id, .. } => Request::Hold { id },
        QueueCommand::Release { id, .. } => Request::Release { id },
        QueueCommand::Remove { id } => Request::Remove { id },
        QueueCommand::Bounce { id } => Request::Bounce { id },
    };
    let verb = match &request {
        Request::Flush { .. } => "flushed",
        Request::Hold { .. } => "held",
        Request::Release { .. } => "released",
        Request::Remove { .. } => "removed",
        _ => "bounced",
    };
    match call(&config.control_socket, &request) {
        Ok(result) => {
            let n = result["messages"].as_u64().unwrap_or(0);
            println!("{verb}: {n} message{}", if n == 1 { "" } else { "s" });
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mailer queue: {e}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

pub fn reload(config_path: Option<&Path>) -> ExitCode {
    let config = match crate::load_config(config_path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match call(&config.control_socket, &Request::Reload) {
        Ok(summary) => {
            println!("reloaded: {}", summary.as_str().unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mailer reload: {e}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// Why a call failed.
pub enum CallError {
    /// Nothing answers on the socket.
    Down(String),
    /// The daemon answered with an error, or the exchange broke.
    Failed(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Down(e) | CallError::Failed(e) => f.write_str(e),
        }
    }
}

/// Answers within this time or the call fails (a reload reads files; a bounce writes one).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// One request, one response over the control socket.
pub fn call(socket: &Path, request: &Request) -> Result<Value, CallError> {
    let mut stream = UnixStream::connect(socket).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => CallError::Down(format!(
            "the daemon is not running (no answer on the control socket {}: {e})",
            socket.display()
        )),
        _ => CallError::Failed(format!(
            "cannot connect to the control socket {}: {e}",
            socket.display()
        )),
    })?;
    let broken =
        |e: io::Error| CallError::Failed(format!("control socket {}: {e}", socket.display()));
    stream
        .set_read_timeout(Some(CALL_TIMEOUT))
        .map_err(broken)?;
    let mut line = serde_json::to_vec(request).map_err(|e| CallError::Failed(e.to_string()))?;
    line.push(b'\n');
    // A refused peer is answered before it writes; its write may then fail: read anyway.
    let _ = stream.write_all(&line);
    let mut response = String::new();
    BufReader::new(&stream)
        .read_line(&mut response)
        .map_err(broken)?;
    let value: Value = serde_json::from_str(&response)
        .map_err(|e| CallError::Failed(format!("malformed answer from the daemon: {e}")))?;
    if value["ok"] == json!(true) {
        Ok(value["result"].clone())
    } else {
        Err(CallError::Failed(
            value["error"]
                .as_str()
                .unwrap_or("the daemon refused the request")
                .to_string(),
        ))
    }
}

/// Opens the queue directory for reading, without creating it.
fn spool(config: &Config) -> Result<Spool, String> {
    if !config.queue_dir.join("q").is_dir() {
        return Err(format!(
            "no queue at {} (never started?)",
            config.queue_dir.display()
        ));
    }
    Spool::open(&config.queue_dir)
        .map_err(|e| format!("cannot open the queue {}: {e}", config.queue_dir.display()))
}

/// The queued messages, from the daemon, or from the queue directory when it is down.
fn queued(config: &Config, command: &str) -> Result<Vec<Envelope>, ExitCode> {
    match call(&config.control_socket, &Request::List) {
        Ok(v) => serde_json::from_value(v).map_err(|e| {
            eprintln!("{command}: malformed answer from the daemon: {e}");
            ExitCode::from(EXIT_FAILED)
        }),
        Err(CallError::Down(why)) => {
            eprintln!("{command}: {why}; reading the queue directory");
            let report = spool(config)
                .and_then(|s| s.load(false).map_err(|e| e.to_string()))
                .map_err(|e| {
                    eprintln!("{command}: {e}");
                    ExitCode::from(EXIT_FAILED)
                })?;
            for (path, reason) in &report.corrupt {
                eprintln!("{}: {reason}", path.display());
            }
            Ok(report.envelopes)
        }
        Err(e) => {
            eprintln!("{command}: {e}");
            Err(ExitCode::from(EXIT_FAILED))
        }
    }
}

/// `mailq` (and `mailer mailq`): the queue as Postfix's mailq(1) prints it, for the scripts
/// and eyes that know that format.
pub fn mailq(config_path: Option<&Path>) -> ExitCode {
    let config = match crate::load_config(config_path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match queued(&config, "mailq") {
        Ok(envelopes) => {
            print!("{}", render_mailq(&envelopes, &LocalTime));
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn list(config: &Config, as_json: bool) -> ExitCode {
    let envelopes = match queued(config, "mailer queue list") {
        Ok(list) => list,
        Err(code) => return code,
    };
    let now = unix_seconds(SystemTime::now());
    // Files the daemon set aside: read from the directory, readable by whoever may use the
    // control socket (root and the daemon's user).
    let corrupt = Spool::corrupt_in(&config.queue_dir).unwrap_or_else(|e| {
        eprintln!(
            "mailer queue list: cannot read {}/corrupt: {e}",
            config.queue_dir.display()
        );
        Vec::new()
    });
    let waiting = offline_waiting(&config.queue_dir);
    if as_json {
        let array: Vec<Value> = envelopes.iter().map(entry_json).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&array).unwrap_or_else(|_| "[]".into())
        );
        if !corrupt.is_empty() {
            eprintln!(
                "{} corrupt queue file(s) in {}/corrupt: `mailer queue list` names them",
                corrupt.len(),
                config.queue_dir.display()
            );
        }
    } else {
        print!("{}", render_table(&envelopes, now));
        if !corrupt.is_empty() {
            println!(
                "\nSet aside as corrupt (nothing is delivered from these; repair or delete them):"
            );
            for c in &corrupt {
                println!("  {}: {}", c.path.display(), c.reason);
            }
        }
    }
    if waiting > 0 {
        // Not part of the JSON array: these are not in the queue yet.
        let line = format!(
            "{waiting} submission(s) kept by sendmail in {} wait for the daemon to pick them up",
            Spool::offline_dir_in(&config.queue_dir).display()
        );
        if as_json {
            eprintln!("{line}");
        } else {
            println!("\n{line}");
        }
    }
    ExitCode::SUCCESS
}

/// Complete files in `offline/`; none when it cannot be listed (only the daemon's user and
/// root may).
fn offline_waiting(queue_dir: &Path) -> usize {
    std::fs::read_dir(Spool::offline_dir_in(queue_dir)).map_or(0, |entries| {
        entries
            .filter_map(Result::ok)
            .filter(|e| {
                !mailer_core::intake::offline::is_temporary(&e.file_name().to_string_lossy())
            })
            .count()
    })
}

/// RFC 3339 UTC, e.g. `2025-01-31T12:00:05Z`.
fn rfc3339(secs: i64) -> String {
    let c = Civil::from_unix(secs);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        c.year, c.month, c.day, c.hour, c.minute, c.second
    )
}

/// The documented JSON form of one queued message.
fn entry_json(env: &Envelope) -> Value {
    json!({
        "id": env.id.to_string(),
        "arrived": rfc3339(env.arrived),
        "size": env.size,
        "sender": env.sender.as_ref().map_or_else(String::new, |a| a.to_string()),
        "held": env.held,
        "recipients": env.recipients.iter().map(|r| json!({
            "address": r.address.to_string(),
            "action": r.action,
            "state": state_name(r.state),
            "attempts": r.attempts,
            "next_attempt": (r.state == RecipientState::Pending).then(|| rfc3339(r.next_attempt)),
            "last_error": r.last_error,
        })).collect::<Vec<_>>(),
    })
}

fn state_name(state: RecipientState) -> &'static str {
    match state {
        RecipientState::Pending => "pending",
        RecipientState::Delivered => "delivered",
        RecipientState::Failed => "failed",
    }
}

/// A span of seconds as a short age: `45s`, `12m`, `3h`, `2d`.
fn short_duration(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

fn render_table(envelopes: &[Envelope], now: i64) -> String {
    let mut out = String::new();
    if envelopes.is_empty() {
        out.push_str("queue is empty\n");
        return out;
    }
    for env in envelopes {
        let sender = env
            .sender
            .as_ref()
            .map_or_else(|| "<>".into(), |a| a.to_string());
        out.push_str(&format!(
            "{}  {:>5}  {:>8}  {}{}\n",
            env.id,
            short_duration(now - env.arrived),
            env.size,
            sender,
            if env.held { "  (held)" } else { "" }
        ));
        for r in &env.recipients {
            let next = if r.state == RecipientState::Pending {
                let wait = r.next_attempt - now;
                if wait > 0 {
                    format!("  next in {}", short_duration(wait))
                } else {
                    "  next now".to_string()
                }
            } else {
                String::new()
            };
            out.push_str(&format!(
                "    {}  {}  {}  attempts {}{}\n",
                r.address,
                r.action,
                state_name(r.state),
                r.attempts,
                next
            ));
            if let Some(e) = &r.last_error {
                out.push_str(&format!("      last error: {e}\n"));
            }
        }
    }
    out.push_str(&format!(
        "{} message{}\n",
        envelopes.len(),
        if envelopes.len() == 1 { "" } else { "s" }
    ));
    out
}

/// Turns a Unix time into the `asctime(3)` form mailq prints, `Wed Dec  2 04:30:01`.
trait Clock {
    fn asctime(&self, secs: i64) -> String;
}

/// The local time zone, as Postfix's showq uses it.
struct LocalTime;

impl Clock for LocalTime {
    fn asctime(&self, secs: i64) -> String {
        // SAFETY: localtime_r only writes the `tm` it is given; a zeroed `tm` is valid.
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        let t = secs as libc::time_t;
        if unsafe { libc::localtime_r(&t, &mut tm) }.is_null() {
            return UtcTime.asctime(secs);
        }
        asctime_fields(
            tm.tm_wday as usize,
            tm.tm_mon as usize,
            tm.tm_mday as u32,
            tm.tm_hour as u32,
            tm.tm_min as u32,
            tm.tm_sec as u32,
        )
    }
}

/// UTC, when the local time cannot be had (and in tests, which need a fixed zone).
struct UtcTime;

impl Clock for UtcTime {
    fn asctime(&self, secs: i64) -> String {
        let c = Civil::from_unix(secs);
        // 1970-01-01 was a Thursday.
        let weekday = (secs.div_euclid(86_400) + 4).rem_euclid(7) as usize;
        asctime_fields(
            weekday,
            c.month as usize - 1,
            c.day,
            c.hour,
            c.minute,
            c.second,
        )
    }
}

fn asctime_fields(wday: usize, mon: usize, mday: u32, hour: u32, min: u32, sec: u32) -> String {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{} {} {mday:>2} {hour:02}:{min:02}:{sec:02}",
        DAYS.get(wday).unwrap_or(&"???"),
        MONTHS.get(mon).unwrap_or(&"???")
    )
}

/// Postfix's mailq layout (showq_compat, short queue ids): a header; per message the id
/// (with `!` when held), size, arrival time and sender, then each distinct reason in
/// parentheses above the recipients it holds back, recipients indented to the sender's column; a blank line between messages; then
/// `-- N Kbytes in M Requests.`, or `Mail queue is empty`. Delivered and failed recipients
/// are no longer queued and are not listed, as in Postfix.
fn render_mailq(envelopes: &[Envelope], clock: &dyn Clock) -> String {
    if envelopes.is_empty() {
        return "Mail queue is empty\n".to_string();
    }
    let mut out =
        String::from("-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------\n");
    let mut bytes: u64 = 0;
    for (n, env) in envelopes.iter().enumerate() {
        if n > 0 {
            out.push('\n');
        }
        bytes += env.size;
        let id = format!("{}{}", env.id, if env.held { "!" } else { "" });
        let sender = env
            .sender
            .as_ref()
            .map_or_else(|| "MAILER-DAEMON".to_string(), |a| a.to_string());
        // asctime's 24 characters cut to 20, the trailing space included, as showq's %20.20s.
        let arrived = format!("{:<20.20}", format!("{} ", clock.asctime(env.arrived)));
        out.push_str(&format!("{id:<11} {:>7} {arrived} {sender}\n", env.size));
        // As showq_compat: a reason line when it differs from the previous recipient's,
        // right-aligned to 78 columns; "reason unavailable" after a recipient that had one.
        let mut last_reason = String::new();
        for r in env
            .recipients
            .iter()
            .filter(|r| r.state == RecipientState::Pending)
        {
            let reason = r.last_error.as_deref().map(one_line).unwrap_or_default();
            if reason != last_reason {
                let shown = if reason.is_empty() {
                    "reason unavailable"
                } else {
                    reason.as_str()
                };
                let padding = 76usize.saturating_sub(shown.chars().count());
                out.push_str(&format!("{:padding$}({shown})\n", ""));
                last_reason = reason;
            }
            out.push_str(&format!("{:41}{}\n", "", r.address));
        }
    }
    let count = envelopes.len();
    out.push_str(&format!(
        "\n-- {} Kbytes in {count} Request{}.\n",
        bytes / 1024,
        if count == 1 { "" } else { "s" }
    ));
    out
}

/// A reason on one line: a multi-line upstream reply would break the block structure.
fn one_line(reason: &str) -> String {
    reason.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn show(config: &Config, id: &str) -> ExitCode {
    let shown = match call(
        &config.control_socket,
        &Request::Show { id: id.to_string() },
    ) {
        Ok(v) => match serde_json::from_value::<Shown>(v) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("mailer queue show: malformed answer from the daemon: {e}");
                return ExitCode::from(EXIT_FAILED);
            }
        },
        Err(CallError::Down(why)) => {
            eprintln!("mailer queue show: {why}; reading the queue directory");
            match show_offline(config, id) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("mailer queue show: {e}");
                    return ExitCode::from(EXIT_FAILED);
                }
            }
        }
        Err(e) => {
            eprintln!("mailer queue show: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let envelope = serde_json::to_string_pretty(&entry_json(&shown.envelope)).unwrap_or_default();
    println!("{envelope}\n");
    print!("{}", shown.headers.replace("\r\n", "\n"));
    ExitCode::SUCCESS
}

fn show_offline(config: &Config, id: &str) -> Result<Shown, String> {
    let qid = QueueId::parse(id).ok_or_else(|| format!("not a queue id: {id:?}"))?;
    let spool = spool(config)?;
    let envelope = spool
        .read_envelope(qid)
        .map_err(|e| format!("{id}: no such message ({e})"))?;
    let message = spool
        .read_message(qid)
        .map_err(|e| format!("{id}: cannot read the message: {e}"))?;
    Ok(Shown {
        envelope,
        headers: header_section(&message),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailer_core::address::Address;
    use mailer_core::queue::Recipient;

    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn asctime_is_the_mailq_arrival_form() {
        assert_eq!(UtcTime.asctime(1_700_000_000), "Tue Nov 14 22:13:20");
        assert_eq!(UtcTime.asctime(0), "Thu Jan  1 00:00:00");
    }

    #[test]
    fn mailq_of_an_empty_queue_says_so() {
        assert_eq!(render_mailq(&[], &UtcTime), "Mail queue is empty\n");
    }

    fn recipient(address: &str, state: RecipientState, error: Option<&str>) -> Recipient {
        Recipient {
            address: Address::parse(address).expect("a test address"),
            action: "outbound".into(),
            state,
            attempts: 1,
            next_attempt: 0,
            last_error: error.map(str::to_string),
            original: None,
        }
    }

    #[test]
    fn mailq_lists_pending_recipients_under_their_reasons_as_postfix_does() {
        let busy = "host mx.example.net said: 451 4.3.0 busy";
        let bounce = Envelope {
            version: 1,
            id: QueueId::parse("0000000000000000000A").expect("an id"),
            arrived: 1_700_000_000,
            sender: None,
            recipients: vec![
                recipient("a@example.net", RecipientState::Pending, Some(busy)),
                recipient("b@example.net", RecipientState::Pending, Some(busy)),
                recipient("c@example.net", RecipientState::Delivered, None),
                recipient("d@example.net", RecipientState::Pending, None),
            ],
            size: 2048,
            smtputf8: false,
            eightbit: false,
            helo: "localhost".into(),
            peer: "local".into(),
            held: true,
            warned: false,
            signatures: String::new(),
            eight_bit_content: None,
        };
        let mut other = bounce.clone();
        other.id = QueueId::parse("0000000000000000000B").expect("an id");
        other.sender = Some(Address::parse("alice@ublog.tech").expect("an address"));
        other.recipients = vec![recipient("e@example.org", RecipientState::Pending, None)];
        other.held = false;
        other.size = 100;
        let pad = |reason: &str| format!("{}({reason})", " ".repeat(76 - reason.len()));
        let indent = " ".repeat(41);
        let want = [
            "-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------".to_string(),
            "0000000000000000000A!    2048 Tue Nov 14 22:13:20  MAILER-DAEMON".to_string(),
            pad(busy),
            format!("{indent}a@example.net"),
            format!("{indent}b@example.net"),
            pad("reason unavailable"),
            format!("{indent}d@example.net"),
            String::new(),
            "0000000000000000000B     100 Tue Nov 14 22:13:20  alice@ublog.tech".to_string(),
            format!("{indent}e@example.org"),
            String::new(),
            "-- 2 Kbytes in 2 Requests.".to_string(),
        ];
        assert_eq!(
            render_mailq(&[bounce, other], &UtcTime),
            want.join("\n") + "\n"
        );
    }

    #[test]
    fn ages_are_short() {
        assert_eq!(short_duration(45), "45s");
        assert_eq!(short_duration(720), "12m");
        assert_eq!(short_duration(3 * 3600), "3h");
        assert_eq!(short_duration(5 * 86_400), "5d");
    }

    #[test]
    fn header_section_stops_at_the_empty_line() {
        assert_eq!(
            header_section(b"A: 1\r\nB: 2\r\n\r\nbody\r\n"),
            "A: 1\r\nB: 2\r\n"
        );
        assert_eq!(header_section(b"A: 1\r\n"), "A: 1\r\n");
    }
}
