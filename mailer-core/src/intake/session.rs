//! The ESMTP server session as a state machine without IO.
//!
//! The edge feeds received bytes with [`Session::receive`], writes out what
//! [`Session::take_output`] returns and acts on [`Session::poll_event`]: make a message durable
//! and report back with [`Session::queued`], upgrade to TLS and call
//! [`Session::tls_established`], or close. Time is passed in, and the session keeps its own
//! deadlines: the edge sleeps until [`Session::poll_timeout`] and then calls
//! [`Session::handle_timeout`]. While the session waits for the queue it consumes no further
//! input, so pipelined commands after the end of data are answered in order, after the
//! message is safe.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use smtp_proto::{Error as ProtoError, Request};

use super::data::{BareNewlines, DataError, DataReader};
use super::reply::{replies, Reply};
use crate::address::{Address, AddressError};
use crate::delivery::content::Head;
use crate::queue::spool::ENVELOPE_VERSION;
use crate::queue::{Envelope, QueueId, Recipient, RecipientState};
use crate::time::unix_seconds;

/// Longest command line accepted: 512 octets (RFC 5321 §4.5.3.1.4) plus room for the
/// parameters of the extensions we offer and UTF-8 addresses.
pub const MAX_COMMAND_LINE: usize = 2048;

/// What a session needs to know about the server.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Our name in the greeting, EHLO reply and Received header.
    pub hostname: String,
    pub max_message_size: usize,
    pub max_recipients: usize,
    /// Hard cap on a line of message content.
    pub max_line_length: usize,
    pub bare_newlines: BareNewlines,
    /// Offer STARTTLS (only when a certificate is configured).
    pub starttls: bool,
    /// A message with more `Received:` fields than this, ours included, is refused as a loop.
    pub max_hops: usize,
    /// Refused commands a client may send before the session ends with 421; a queued message
    /// starts the count again.
    pub max_errors: usize,
    /// Time allowed from a reply to the next command (RFC 5321 §4.5.3.2.7).
    pub idle_timeout: Duration,
    /// Time allowed for a whole DATA phase, or a BDAT chunk, from its start.
    pub data_timeout: Duration,
}

impl SessionConfig {
    /// The session settings of `config`'s `[limits]`, for a listener that offers STARTTLS
    /// or not.
    pub fn new(config: &crate::config::Config, starttls: bool) -> SessionConfig {
        let limits = &config.limits;
        SessionConfig {
            hostname: config.hostname.clone(),
            max_message_size: usize::try_from(limits.max_message_size).unwrap_or(usize::MAX),
            max_recipients: limits.max_recipients,
            max_line_length: limits.max_line_length,
            bare_newlines: limits.bare_newlines,
            starttls,
            max_hops: limits.max_hops,
            max_errors: limits.max_errors,
            idle_timeout: limits.idle_timeout,
            data_timeout: limits.data_timeout,
        }
    }
}

/// The connected client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// The client's address; `None` for a local submission that did not come over IP.
    pub addr: Option<SocketAddr>,
    /// Who submitted a local message, as the kernel vouches for it (the credentials of the
    /// submission socket's peer, or the owner of a file left in `offline/`).
    pub submitter: Option<Submitter>,
}

/// The local account behind a submission.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Submitter {
    pub uid: u32,
    /// The login name of `uid` in the password database, when it has one.
    pub login: Option<String>,
}

impl Submitter {
    /// `userid 1000 alice`, for the comment of our Received header: a login is shown only
    /// when it is a plain name, so that nothing it holds can end the comment early.
    fn describe(&self) -> String {
        let plain = |c: char| c.is_ascii_alphanumeric() || "._-$".contains(c);
        match self.login.as_deref() {
            Some(login) if !login.is_empty() && login.len() <= 64 && login.chars().all(plain) => {
                format!("userid {} {login}", self.uid)
            }
            _ => format!("userid {}", self.uid),
        }
    }
}

impl Peer {
    /// Whether the client is on this host: loopback (127.0.0.0/8, ::1, IPv4-mapped loopback)
    /// or a local submission. This is what `from = "local"` in a match rule means.
    pub fn is_local(&self) -> bool {
        self.origin().is_local()
    }

    /// Where the message comes from, for the match rules.
    pub fn origin(&self) -> crate::policy::router::Origin {
        use crate::policy::router::Origin;
        match self.addr {
            None => Origin::Socket,
            Some(a) => Origin::Ip(a.ip()),
        }
    }
}

/// Decides at RCPT time which action handles a recipient, or refuses it with a reply.
pub trait RecipientPolicy: Send + Sync {
    fn route(
        &self,
        peer: &Peer,
        sender: Option<&Address>,
        recipient: &Address,
    ) -> Result<String, Reply>;
}

/// The match rules decide at RCPT: no rule is `550 5.7.1` (the relay is closed to anyone not
/// on this host), a local recipient the action does not know is `550 5.1.1`.
impl RecipientPolicy for crate::policy::Router {
    fn route(
        &self,
        peer: &Peer,
        sender: Option<&Address>,
        rcpt: &Address,
    ) -> Result<String, Reply> {
        let action = self
            .action_for(peer.origin(), sender, rcpt)
            .ok_or_else(replies::relay_denied)?;
        if self.local_exists(action, rcpt) == Some(false) {
            return Err(Reply::status(
                550,
                1,
                1,
                format!("No such user here: {rcpt}"),
            ));
        }
        Ok(action.to_string())
    }
}

/// A recipient accepted at RCPT with the action that will handle it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcceptedRecipient {
    pub address: Address,
    pub action: String,
}

/// A complete message handed to the queue.
#[derive(Debug)]
pub struct Incoming {
    pub id: QueueId,
    /// `None` is the null reverse-path `<>` (bounces).
    pub sender: Option<Address>,
    pub recipients: Vec<AcceptedRecipient>,
    /// The end of the message, after what was handed out in [`Event::Content`] (for a message
    /// that fits in one chunk, all of it, our Received header first); CRLF line endings only.
    pub rest: Vec<u8>,
    /// Octets of the whole message.
    pub size: u64,
    /// The start of the message through the empty line after its header section, or
    /// [`crate::policy::align::MAX_HEADER_SECTION`] + 1 octets of it: what signing and checks
    /// read.
    pub head: Vec<u8>,
    /// Some octet of the message is above 127.
    pub eight_bit_content: bool,
    pub arrived: SystemTime,
    pub smtputf8: bool,
    /// Announced `BODY=8BITMIME`.
    pub eightbit: bool,
    pub helo: String,
    pub peer: Peer,
}

impl Incoming {
    /// The queue's envelope of this message: every recipient due at its arrival.
    pub fn envelope(&self) -> Envelope {
        let arrived = unix_seconds(self.arrived);
        Envelope {
            version: ENVELOPE_VERSION,
            id: self.id,
            arrived,
            sender: self.sender.clone(),
            recipients: self
                .recipients
                .iter()
                .map(|r| Recipient {
                    address: r.address.clone(),
                    action: r.action.clone(),
                    state: RecipientState::Pending,
                    attempts: 0,
                    next_attempt: arrived,
                    last_error: None,
                    original: None,
                })
                .collect(),
            size: self.size,
            smtputf8: self.smtputf8,
            eightbit: self.eightbit,
            helo: self.helo.clone(),
            peer: self
                .peer
                .addr
                .map_or_else(|| "local".to_string(), |a| a.ip().to_string()),
            held: false,
            warned: false,
            signatures: String::new(),
            eight_bit_content: Some(self.eight_bit_content),
        }
    }
}

/// Why the queue could not take a message; either way the client is told to try again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueRefused {
    /// The queue's file system is full (ENOSPC, EDQUOT): 452 4.3.1.
    StorageFull,
    /// Any other failure to make the message durable: 451 4.3.0.
    Failed,
}

impl QueueRefused {
    /// The class of a spool error, decided where the error is seen.
    pub fn of(error: &std::io::Error) -> QueueRefused {
        match error.kind() {
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
                QueueRefused::StorageFull
            }
            _ => QueueRefused::Failed,
        }
    }
}

/// What the edge must do next.
#[derive(Debug)]
pub enum Event {
    /// Octets of the message being received, in order: write them to its queue file. They
    /// are handed out as they arrive so that a session never holds a whole large message.
    Content { id: QueueId, bytes: Vec<u8> },
    /// The message is complete: write its [`Incoming::rest`] after its content, make it
    /// durable, then call [`Session::queued`]. A transaction that ends without this event
    /// (refused, reset, the client gone) leaves its content to be discarded.
    Message(Box<Incoming>),
    /// Write the pending output, start TLS as server, then call [`Session::tls_established`].
    StartTls,
    /// Write the pending output, then close the connection.
    Close,
    /// A command or message was refused (for metrics); nothing to do.
    Rejected(&'static str),
}

#[derive(Debug)]
struct Transaction {
    sender: Option<Address>,
    recipients: Vec<AcceptedRecipient>,
    smtputf8: bool,
    eightbit: bool,
    /// Message octets not yet handed out: our Received header, then content.
    message: Vec<u8>,
    /// Octets handed out in [`Event::Content`] so far.
    handed: u64,
    /// The start of the message (see [`Incoming::head`]).
    head: Head,
    /// Some octet so far is above 127.
    eight_bit: bool,
    /// BDAT content so far is read by this reader (it spans the chunks).
    chunks: Option<DataReader>,
    id: Option<QueueId>,
    /// BDAT chunks so far were refused: the rest is consumed and answered with an error.
    failed: Option<Reply>,
}

#[derive(Debug)]
enum Phase {
    /// Reading command lines.
    Command,
    /// Inside DATA.
    Data(DataReader),
    /// Inside a BDAT chunk: `remaining` octets still to read.
    Bdat {
        remaining: usize,
        last: bool,
    },
    /// A message is with the queue; input waits.
    Queueing,
    /// STARTTLS accepted; the edge upgrades the connection.
    StartingTls,
    Closed,
}

/// One SMTP server session.
pub struct Session {
    config: Arc<SessionConfig>,
    policy: Arc<dyn RecipientPolicy>,
    peer: Peer,
    phase: Phase,
    helo: Option<Helo>,
    tls: bool,
    tx: Option<Transaction>,
    input: Vec<u8>,
    /// An over-long command line is being skipped up to its end.
    skipping_line: bool,
    output: Vec<u8>,
    events: VecDeque<Event>,
    draining: bool,
    /// Refused commands since the session began or last queued a message.
    errors: usize,
    now: SystemTime,
    /// When the client's time is up: the idle or data timeout from the last reply, or from
    /// the start of the data. Reads do not extend it, so a client trickling one octet at a
    /// time cannot hold the session forever.
    deadline: SystemTime,
}

#[derive(Debug)]
struct Helo {
    name: String,
    extended: bool,
}

impl Session {
    /// Starts a session; the greeting is the first output.
    pub fn new(
        config: Arc<SessionConfig>,
        policy: Arc<dyn RecipientPolicy>,
        peer: Peer,
        now: SystemTime,
    ) -> Session {
        let mut s = Session {
            config,
            policy,
            peer,
            phase: Phase::Command,
            helo: None,
            tls: false,
            tx: None,
            input: Vec::new(),
            skipping_line: false,
            output: Vec::new(),
            events: VecDeque::new(),
            draining: false,
            errors: 0,
            now,
            deadline: now,
        };
        let greeting = Reply::new(220, None, format!("{} ESMTP mailer", s.config.hostname));
        s.reply(greeting);
        s
    }

    /// A session refused because the server is at its connection limit.
    pub fn refuse(reply: Reply) -> (Vec<u8>, Event) {
        (reply.to_bytes(), Event::Close)
    }

    /// Feeds bytes read from the client.
    pub fn receive(&mut self, bytes: &[u8], now: SystemTime) {
        self.now = now;
        if matches!(self.phase, Phase::Closed | Phase::StartingTls) {
            return;
        }
        self.input.extend_from_slice(bytes);
        self.process();
    }

    /// The client closed its side. Whatever was incomplete is dropped: nothing was accepted.
    pub fn end_of_input(&mut self) {
        if !matches!(self.phase, Phase::Closed) {
            self.tx = None;
            self.phase = Phase::Closed;
            self.events.push_back(Event::Close);
        }
    }

    /// Bytes to write to the client.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.output)
    }

    pub fn has_output(&self) -> bool {
        !self.output.is_empty()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Whether the session is inside a DATA or BDAT phase (the edge uses the data timeout).
    pub fn in_data(&self) -> bool {
        matches!(self.phase, Phase::Data(_) | Phase::Bdat { .. })
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    /// The queue's answer for the message of the last [`Event::Message`].
    pub fn queued(&mut self, result: Result<QueueId, QueueRefused>, now: SystemTime) {
        self.now = now;
        if !matches!(self.phase, Phase::Queueing) {
            return;
        }
        self.phase = Phase::Command;
        match result {
            Ok(id) => {
                self.errors = 0;
                self.reply(Reply::status(250, 0, 0, format!("Ok: queued as {id}")))
            }
            Err(refused) => {
                self.events.push_back(Event::Rejected("queue"));
                self.reply(match refused {
                    QueueRefused::StorageFull => replies::queue_full(),
                    QueueRefused::Failed => replies::queue_failed(),
                });
            }
        }
        self.process();
    }

    /// TLS is up: the SMTP state is reset (RFC 3207 §4.2) and the client must EHLO again.
    pub fn tls_established(&mut self, now: SystemTime) {
        self.now = now;
        if matches!(self.phase, Phase::StartingTls) {
            self.phase = Phase::Command;
            self.tls = true;
            self.helo = None;
            self.tx = None;
            self.arm();
        }
    }

    /// When [`Session::handle_timeout`] is due; `None` while nothing is expected of the
    /// client (the queue has the message, TLS is being set up) or once closed.
    pub fn poll_timeout(&self) -> Option<SystemTime> {
        match self.phase {
            Phase::Command | Phase::Data(_) | Phase::Bdat { .. } => Some(self.deadline),
            Phase::Queueing | Phase::StartingTls | Phase::Closed => None,
        }
    }

    /// Time has passed: past the deadline, the client was too slow and is closed with 421.
    pub fn handle_timeout(&mut self, now: SystemTime) {
        self.now = now;
        if self.poll_timeout().is_some_and(|deadline| now >= deadline) {
            self.close_with(replies::timeout());
        }
    }

    /// Starts the client's clock: the data timeout inside DATA/BDAT, else the idle timeout.
    fn arm(&mut self) {
        let limit = if self.in_data() {
            self.config.data_timeout
        } else {
            self.config.idle_timeout
        };
        self.deadline = self.now + limit;
    }

    /// The server is stopping: an idle session is closed with 421 now; one inside a
    /// transaction may finish it and is closed at its next command.
    /// [`Session::shutdown_now`] ends any session at once.
    pub fn begin_shutdown(&mut self) {
        self.draining = true;
        if self.tx.is_none() && matches!(self.phase, Phase::Command) && self.input.is_empty() {
            self.close_with(replies::shutting_down());
        }
    }

    pub fn shutdown_now(&mut self) {
        self.close_with(replies::shutting_down());
    }

    fn close_with(&mut self, reply: Reply) {
        if matches!(self.phase, Phase::Closed) {
            return;
        }
        self.reply(reply);
        self.tx = None;
        self.phase = Phase::Closed;
        self.events.push_back(Event::Close);
    }

    fn reply(&mut self, reply: Reply) {
        reply.write_to(&mut self.output);
        self.arm();
    }

    /// Refuses a command without holding it against the client: `452` for recipients past
    /// the limit is flow control (RFC 5321 §4.5.3.1.10), the client sends the rest later.
    fn decline(&mut self, reason: &'static str, reply: Reply) {
        self.events.push_back(Event::Rejected(reason));
        self.reply(reply);
    }

    /// Refuses a command. A client that keeps erring is cut off (Postfix's
    /// `smtpd_hard_error_limit`): a broken or hostile client must not hold a slot forever.
    fn reject(&mut self, reason: &'static str, reply: Reply) {
        self.decline(reason, reply);
        self.errors += 1;
        if self.errors >= self.config.max_errors.max(1) && !matches!(self.phase, Phase::Closed) {
            self.events.push_back(Event::Rejected("errors"));
            self.close_with(replies::too_many_errors());
        }
    }

    fn process(&mut self) {
        let mut pos = 0;
        while pos < self.input.len() {
            match &mut self.phase {
                Phase::Queueing | Phase::StartingTls | Phase::Closed => break,
                Phase::Data(reader) => {
                    let tx = self
                        .tx
                        .as_mut()
                        .expect("a DATA phase always has a transaction");
                    let end = reader.feed(&self.input[pos..], &mut tx.message);
                    tx.hand_out(&mut self.events, end.is_some());
                    match end {
                        Some(n) => {
                            pos += n;
                            let Phase::Data(reader) =
                                std::mem::replace(&mut self.phase, Phase::Command)
                            else {
                                unreachable!("matched above")
                            };
                            self.end_of_data(reader.finish());
                        }
                        None => pos = self.input.len(),
                    }
                }
                Phase::Bdat { remaining, last } => {
                    let take = (*remaining).min(self.input.len() - pos);
                    let last = *last;
                    *remaining -= take;
                    let done = *remaining == 0;
                    if let Some(tx) = self.tx.as_mut().filter(|tx| tx.failed.is_none()) {
                        if let Some(reader) = tx.chunks.as_mut() {
                            reader.feed(&self.input[pos..pos + take], &mut tx.message);
                            if reader.failed() == Some(DataError::TooBig) {
                                // Said at the end of this chunk (RFC 3030 §2): the rest of the
                                // message is not worth sending.
                                tx.failed =
                                    Some(replies::too_big(self.config.max_message_size as u64));
                            } else {
                                tx.hand_out(&mut self.events, false);
                            }
                        }
                    }
                    pos += take;
                    if done {
                        self.phase = Phase::Command;
                        self.end_of_chunk(last);
                    }
                }
                Phase::Command => {
                    let rest = &self.input[pos..];
                    let Some(lf) = rest.iter().position(|&b| b == b'\n') else {
                        if rest.len() > MAX_COMMAND_LINE {
                            self.skipping_line = true;
                            pos = self.input.len();
                        }
                        break;
                    };
                    let line = rest[..=lf].to_vec();
                    pos += lf + 1;
                    if std::mem::take(&mut self.skipping_line) || line.len() > MAX_COMMAND_LINE {
                        self.reject("line_too_long", replies::line_too_long());
                        continue;
                    }
                    let starttls = self.command(&line);
                    if starttls {
                        // Anything pipelined after STARTTLS was sent in plaintext and must not
                        // be acted on inside TLS (CVE-2011-0411).
                        pos = self.input.len();
                    }
                }
            }
        }
        self.input.drain(..pos);
    }

    /// Handles one command line; returns true when STARTTLS was accepted.
    fn command(&mut self, line: &[u8]) -> bool {
        if self.draining && self.tx.is_none() {
            self.close_with(replies::shutting_down());
            return false;
        }
        let request = match Request::parse(&mut line.iter()) {
            Ok(r) => r,
            Err(e) => {
                self.protocol_error(e, line);
                return false;
            }
        };
        match request {
            Request::Ehlo { host } => self.helo(&host, true),
            Request::Helo { host } => self.helo(&host, false),
            Request::Mail { from } => self.mail(from),
            Request::Rcpt { to } => self.rcpt(to, line),
            Request::Data => self.data(),
            Request::Bdat {
                chunk_size,
                is_last,
            } => self.bdat(chunk_size, is_last),
            Request::Rset => {
                self.tx = None;
                self.reply(replies::ok());
            }
            Request::Noop { .. } => self.reply(replies::ok()),
            Request::Quit => {
                self.reply(Reply::status(221, 0, 0, "Bye"));
                self.tx = None;
                self.phase = Phase::Closed;
                self.events.push_back(Event::Close);
            }
            Request::Vrfy { .. } => self.reply(Reply::status(
                252,
                5,
                2,
                "Cannot VRFY user, but will accept message and attempt delivery",
            )),
            Request::Help { .. } => self.reply(Reply::status(
                214,
                0,
                0,
                "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP",
            )),
            Request::StartTls => return self.starttls(),
            Request::Auth { .. } => {
                self.reject("auth", Reply::status(502, 5, 1, "AUTH not available"))
            }
            Request::Expn { .. }
            | Request::Etrn { .. }
            | Request::Atrn { .. }
            | Request::Burl { .. }
            | Request::Lhlo { .. } => self.reject(
                "command",
                Reply::status(502, 5, 1, "Command not implemented"),
            ),
        }
        false
    }

    fn protocol_error(&mut self, e: ProtoError, line: &[u8]) {
        let reply = match e {
            ProtoError::UnknownCommand => replies::unknown_command(),
            ProtoError::InvalidSenderAddress => replies::syntax("Invalid sender address"),
            ProtoError::InvalidRecipientAddress => replies::syntax("Invalid recipient address"),
            ProtoError::SyntaxError { syntax } => replies::syntax(&format!("Syntax: {syntax}")),
            ProtoError::InvalidParameter { param } => {
                replies::syntax(&format!("Invalid value for parameter {param}"))
            }
            ProtoError::UnsupportedParameter { param } => replies::unknown_parameter(&param),
            // A complete line was given, so "needs more data" means it was cut short.
            ProtoError::NeedsMoreData { .. }
            | ProtoError::ResponseTooLong
            | ProtoError::InvalidResponse { .. } => {
                if line.trim_ascii().is_empty() {
                    replies::unknown_command()
                } else {
                    replies::syntax("Syntax error")
                }
            }
        };
        self.reject("syntax", reply);
    }

    fn helo(&mut self, host: &str, extended: bool) {
        self.tx = None;
        self.helo = Some(Helo {
            name: host.to_string(),
            extended,
        });
        if !extended {
            self.reply(Reply::new(250, None, self.config.hostname.clone()));
            return;
        }
        let mut lines = vec![
            self.config.hostname.clone(),
            "PIPELINING".into(),
            format!("SIZE {}", self.config.max_message_size),
            "8BITMIME".into(),
            "SMTPUTF8".into(),
            "ENHANCEDSTATUSCODES".into(),
            "CHUNKING".into(),
        ];
        if self.config.starttls && !self.tls {
            lines.push("STARTTLS".into());
        }
        lines.push("HELP".into());
        self.reply(Reply {
            code: 250,
            status: None,
            lines,
        });
    }

    fn extended(&self) -> bool {
        self.helo.as_ref().is_some_and(|h| h.extended)
    }

    fn mail(&mut self, from: smtp_proto::MailFrom<std::borrow::Cow<'_, str>>) {
        if self.helo.is_none() {
            return self.reject("sequence", replies::bad_sequence("Send EHLO or HELO first"));
        }
        if self.tx.is_some() {
            return self.reject("sequence", replies::bad_sequence("Nested MAIL command"));
        }
        let supported =
            smtp_proto::MAIL_BODY_7BIT | smtp_proto::MAIL_BODY_8BITMIME | smtp_proto::MAIL_SMTPUTF8;
        if let Some(param) = unsupported_mail_parameter(&from, supported, self.extended()) {
            return self.reject("parameter", replies::unknown_parameter(param));
        }
        let smtputf8 = from.flags & smtp_proto::MAIL_SMTPUTF8 != 0;
        if from.size > self.config.max_message_size {
            return self.reject(
                "size",
                replies::too_big(self.config.max_message_size as u64),
            );
        }
        let sender = if from.address.is_empty() {
            None
        } else {
            match Address::parse_with(&from.address, smtputf8) {
                Ok(a) => Some(a),
                Err(e) => return self.reject("address", address_reply("sender", e)),
            }
        };
        self.tx = Some(Transaction {
            sender,
            recipients: Vec::new(),
            smtputf8,
            eightbit: from.flags & smtp_proto::MAIL_BODY_8BITMIME != 0,
            message: Vec::new(),
            handed: 0,
            head: Head::default(),
            eight_bit: false,
            chunks: None,
            id: None,
            failed: None,
        });
        self.reply(Reply::status(250, 1, 0, "Sender ok"));
    }

    fn rcpt(&mut self, to: smtp_proto::RcptTo<std::borrow::Cow<'_, str>>, line: &[u8]) {
        let Some(tx) = self.tx.as_ref() else {
            return self.reject("sequence", replies::bad_sequence("Need MAIL before RCPT"));
        };
        if to.flags != 0 || to.orcpt.is_some() || to.rrvs != 0 {
            return self.reject("parameter", replies::unknown_parameter("NOTIFY/ORCPT"));
        }
        if tx.recipients.len() >= self.config.max_recipients {
            return self.decline("recipients", replies::too_many_recipients());
        }
        let address = if to.address.is_empty() {
            // The parser maps the special `<Postmaster>` (RFC 5321 §4.1.1.3) to "" as it
            // does the invalid `<>`; only the former is a recipient.
            if contains_ignore_case(line, b"<postmaster>") {
                Address::from_parts("postmaster", &self.config.hostname)
            } else {
                Err(AddressError::Empty)
            }
        } else {
            Address::parse_with(&to.address, tx.smtputf8)
        };
        let address = match address {
            Ok(a) => a,
            Err(e) => return self.reject("address", address_reply("recipient", e)),
        };
        match self.policy.route(&self.peer, tx.sender.as_ref(), &address) {
            Ok(action) => {
                let tx = self.tx.as_mut().expect("checked above");
                if !tx.recipients.iter().any(|r| r.address == address) {
                    tx.recipients.push(AcceptedRecipient { address, action });
                }
                self.reply(Reply::status(250, 1, 5, "Recipient ok"));
            }
            Err(reply) => self.reject("recipient", reply),
        }
    }

    /// Checks common to DATA and the first BDAT; starts the message with our Received header.
    fn begin_message(&mut self) -> Result<(), Reply> {
        let extended = self.extended();
        let Some(tx) = self.tx.as_mut() else {
            return Err(replies::bad_sequence("Need MAIL before DATA"));
        };
        if tx.recipients.is_empty() {
            return Err(replies::bad_sequence("No valid recipients"));
        }
        let id = QueueId::generate(self.now);
        tx.id = Some(id);
        tx.message = received_header(
            &self.config.hostname,
            self.helo.as_ref().map_or("", |h| &h.name),
            &self.peer,
            protocol(extended, self.tls, tx.smtputf8),
            id,
            &tx.recipients,
            self.now,
        );
        Ok(())
    }

    fn data(&mut self) {
        if self.tx.as_ref().is_some_and(|tx| tx.id.is_some()) {
            return self.reject("sequence", replies::bad_sequence("DATA after BDAT"));
        }
        if let Err(reply) = self.begin_message() {
            return self.reject("sequence", reply);
        }
        let reader = DataReader::new(
            self.config.max_message_size,
            self.config.max_line_length,
            self.config.bare_newlines,
        );
        self.phase = Phase::Data(reader);
        self.reply(Reply::new(354, None, "End data with <CR><LF>.<CR><LF>"));
    }

    fn end_of_data(&mut self, verdict: Result<(), DataError>) {
        match verdict {
            Ok(()) => {
                let tx = self
                    .tx
                    .as_ref()
                    .expect("a complete message has a transaction");
                let hops = received_count(tx.head.as_bytes());
                if hops > self.config.max_hops {
                    self.tx = None;
                    return self.reject("loop", replies::too_many_hops(hops));
                }
                self.hand_to_queue()
            }
            Err(e) => {
                self.tx = None;
                let (reason, reply) = match e {
                    DataError::TooBig => (
                        "size",
                        replies::too_big(self.config.max_message_size as u64),
                    ),
                    DataError::LineTooLong => (
                        "line_too_long",
                        replies::message_line_too_long(self.config.max_line_length),
                    ),
                    DataError::BareNewline => ("bare_newline", replies::bare_newline()),
                };
                self.reject(reason, reply);
            }
        }
    }

    fn bdat(&mut self, size: usize, last: bool) {
        self.phase = Phase::Bdat {
            remaining: size,
            last,
        };
        self.arm();
        let starting = self.tx.as_ref().is_some_and(|tx| tx.id.is_none());
        if starting {
            let begun = self.begin_message();
            if let Some(tx) = self.tx.as_mut() {
                match begun {
                    Ok(()) => {
                        tx.chunks = Some(DataReader::chunked(
                            self.config.max_message_size,
                            self.config.max_line_length,
                            self.config.bare_newlines,
                        ))
                    }
                    Err(reply) => tx.failed = Some(reply),
                }
            }
        }
        if size == 0 && matches!(self.phase, Phase::Bdat { .. }) {
            self.phase = Phase::Command;
            self.end_of_chunk(last);
        }
    }

    /// A BDAT chunk has been read completely (RFC 3030: one reply per chunk).
    fn end_of_chunk(&mut self, last: bool) {
        let Some(tx) = self.tx.as_mut() else {
            return self.reject(
                "sequence",
                replies::bad_sequence("Need MAIL and RCPT before BDAT"),
            );
        };
        if let Some(reply) = tx.failed.take() {
            self.tx = None;
            let reason = if reply.code == 552 {
                "size"
            } else {
                "sequence"
            };
            return self.reject(reason, reply);
        }
        if !last {
            return self.reply(Reply::status(250, 0, 0, "Chunk received"));
        }
        let verdict = match tx.chunks.take() {
            Some(mut reader) => {
                reader.end_of_content(&mut tx.message);
                tx.hand_out(&mut self.events, true);
                reader.finish()
            }
            None => Err(DataError::TooBig),
        };
        self.end_of_data(verdict);
    }

    fn hand_to_queue(&mut self) {
        let tx = self
            .tx
            .take()
            .expect("a complete message has a transaction");
        let incoming = Incoming {
            id: tx.id.expect("a complete message has an id"),
            sender: tx.sender,
            recipients: tx.recipients,
            size: tx.handed + tx.message.len() as u64,
            rest: tx.message,
            head: tx.head.into_bytes(),
            eight_bit_content: tx.eight_bit,
            arrived: self.now,
            smtputf8: tx.smtputf8,
            eightbit: tx.eightbit,
            helo: self.helo.as_ref().map_or(String::new(), |h| h.name.clone()),
            peer: self.peer.clone(),
        };
        self.phase = Phase::Queueing;
        self.events.push_back(Event::Message(Box::new(incoming)));
    }

    fn starttls(&mut self) -> bool {
        if !self.config.starttls {
            self.reject(
                "command",
                Reply::status(502, 5, 1, "STARTTLS not available"),
            );
            return false;
        }
        if self.tls {
            self.reject("sequence", replies::bad_sequence("Already in TLS"));
            return false;
        }
        if self.tx.is_some() {
            self.reject(
                "sequence",
                replies::bad_sequence("STARTTLS inside a transaction"),
            );
            return false;
        }
        self.reply(Reply::status(220, 0, 0, "Ready to start TLS"));
        self.phase = Phase::StartingTls;
        self.events.push_back(Event::StartTls);
        true
    }
}

/// Message octets gathered before they are handed out in an [`Event::Content`]: small
/// messages are handed over whole with [`Event::Message`], in the queue's single write.
pub const CONTENT_CHUNK: usize = 64 * 1024;

impl Transaction {
    /// Hands out the octets gathered so far once they make a chunk. At the end of the data
    /// (`end`) nothing is handed out: the rest goes with the message, and only the head is
    /// brought up to date, for the checks made before it is queued.
    fn hand_out(&mut self, events: &mut VecDeque<Event>, end: bool) {
        if end {
            self.head.feed(&self.message);
            self.eight_bit |= !self.message.is_ascii();
            return;
        }
        if self.message.len() < CONTENT_CHUNK {
            return;
        }
        let bytes = std::mem::take(&mut self.message);
        self.head.feed(&bytes);
        self.eight_bit |= !bytes.is_ascii();
        self.handed += bytes.len() as u64;
        let id = self
            .id
            .expect("content is read only after the message got its id");
        events.push_back(Event::Content { id, bytes });
    }
}

fn unsupported_mail_parameter(
    from: &smtp_proto::MailFrom<std::borrow::Cow<'_, str>>,
    supported: u64,
    extended: bool,
) -> Option<&'static str> {
    let any_param = from.flags != 0 || from.size != 0;
    if any_param && !extended {
        // Parameters need EHLO (RFC 5321 §4.1.1.2).
        return Some("(MAIL parameters require EHLO)");
    }
    if from.flags & !supported != 0 {
        return Some(if from.flags & smtp_proto::MAIL_BODY_BINARYMIME != 0 {
            "BODY=BINARYMIME"
        } else if from.flags & (smtp_proto::MAIL_RET_FULL | smtp_proto::MAIL_RET_HDRS) != 0 {
            "RET"
        } else if from.flags & smtp_proto::MAIL_REQUIRETLS != 0 {
            "REQUIRETLS"
        } else {
            "(unsupported MAIL parameter)"
        });
    }
    if from.env_id.is_some() {
        return Some("ENVID");
    }
    if from.trans_id.is_some()
        || from.solicit.is_some()
        || from.mtrk.is_some()
        || from.auth.is_some()
        || from.by != 0
        || from.hold_for != 0
        || from.hold_until != 0
        || from.mt_priority != 0
    {
        return Some("(unsupported MAIL parameter)");
    }
    None
}

fn address_reply(which: &str, e: AddressError) -> Reply {
    match e {
        AddressError::Utf8NotAllowed => Reply::status(
            553,
            6,
            7,
            format!("Non-ASCII {which} address requires SMTPUTF8"),
        ),
        e => Reply::status(
            if which == "sender" { 553 } else { 501 },
            1,
            if which == "sender" { 7 } else { 3 },
            format!("Bad {which} address syntax: {e}"),
        ),
    }
}

fn contains_ignore_case(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// The `with` protocol name of the Received header (RFC 3848, RFC 6531).
fn protocol(extended: bool, tls: bool, utf8: bool) -> &'static str {
    match (extended, tls, utf8) {
        (false, false, _) => "SMTP",
        (false, true, _) => "SMTPS",
        (true, false, false) => "ESMTP",
        (true, true, false) => "ESMTPS",
        (true, false, true) => "UTF8SMTP",
        (true, true, true) => "UTF8SMTPS",
    }
}

/// Our trace header (RFC 5321 §4.4). No reverse lookup: the address literal is what we know.
fn received_header(
    hostname: &str,
    helo: &str,
    peer: &Peer,
    protocol: &str,
    id: QueueId,
    recipients: &[AcceptedRecipient],
    now: SystemTime,
) -> Vec<u8> {
    let helo: String = helo
        .chars()
        .take(255)
        .map(|c| {
            if c.is_control() || c == '(' || c == ')' {
                '?'
            } else {
                c
            }
        })
        .collect();
    // RFC 5321 §4.4 wants a domain after `from`: a local submitter is named in a comment,
    // which the CFWS before `by` allows (Postfix's `from userid N` is not a domain).
    let from = match (peer.addr, &peer.submitter) {
        (Some(a), _) => format!("{helo} ([{}])", a.ip()),
        (None, Some(submitter)) => format!("{helo} ({})", submitter.describe()),
        (None, None) => format!("{helo} (local)"),
    };
    let mut h =
        format!("Received: from {from}\r\n\tby {hostname} (mailer) with {protocol} id {id}");
    if let [only] = recipients {
        h.push_str(&format!("\r\n\tfor <{}>", only.address));
    }
    h.push_str(&format!("; {}\r\n", crate::time::rfc5322(now)));
    h.into_bytes()
}

/// `Received:` fields in the header section of a CRLF-only message (RFC 5321 §6.3: a count
/// past a threshold means the message is looping).
fn received_count(message: &[u8]) -> usize {
    let mut count = 0;
    let mut rest = message;
    while !rest.is_empty() && !rest.starts_with(b"\r\n") {
        let end = memchr::memmem::find(rest, b"\r\n").map_or(rest.len(), |i| i + 2);
        let line = &rest[..end];
        if line.len() >= 9 && line[..9].eq_ignore_ascii_case(b"received:") {
            count += 1;
        }
        rest = &rest[end..];
    }
    count
}
