//! The SMTP client session as a state machine without IO.
//!
//! The driver feeds what the server sent with [`ClientSession::receive`] (split anywhere),
//! writes out what [`ClientSession::take_output`] returns and acts on
//! [`ClientSession::poll_event`]: start TLS and call [`ClientSession::tls_established`], write
//! the message body and call [`ClientSession::body_sent`], or take the outcome of a setup or a
//! transaction. Timeouts stay with the driver: [`ClientSession::awaiting`] says which reply is
//! outstanding, so it can pick the limit and name the command in its failure.
//!
//! Every decision the client makes is here: the greeting, EHLO with the HELO fallback,
//! STARTTLS (required, refused, or followed by pipelined bytes), AUTH never before TLS, the
//! extensions a message needs, PIPELINING batches or lock-step commands, per-recipient results,
//! the server closing with 421, RSET and QUIT.

use std::collections::VecDeque;

use super::protocol::{
    auth_login_line, auth_plain_command, mail_from_command, pipelined_batch, rcpt_to_command,
    transaction_outcomes, AuthMechanism, BodyFacts, Capabilities, Final, Reply, Requirements,
};
use super::reply::ReplyReader;
use crate::address::Address;
use crate::outcome::{EnhancedStatus, Failure, FailureKind, Outcome};
use crate::tables::secrets::Credentials;

/// Network trouble: the server may be fine a moment later.
pub const NETWORK: EnhancedStatus = EnhancedStatus(4, 4, 2);
/// TLS could not be established or verified (RFC 3463 X.7.5 cryptographic failure).
pub const TLS_FAILED: EnhancedStatus = EnhancedStatus(4, 7, 5);
/// Security or authentication refused.
pub const SECURITY: EnhancedStatus = EnhancedStatus(4, 7, 0);

/// The window where a retry may deliver twice (RFC 1047), said in every failure inside it.
const AFTER_END_OF_DATA: &str = " (after the end of data: the server may have taken the message)";

/// How the connection is secured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tls {
    /// Plain text throughout; AUTH is never sent.
    Off,
    /// STARTTLS, which is required: a server that does not offer it fails the session.
    StartTls,
    /// TLS from the first byte (RFC 8314): the driver shakes hands before the greeting.
    Implicit,
}

/// What a session needs to know.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Names the server in every failure, e.g. `smtp.example.net[192.0.2.1]:587`.
    pub server: String,
    /// Our name in EHLO/HELO.
    pub helo_name: String,
    pub tls: Tls,
    pub credentials: Option<Credentials>,
    /// A recipient refused temporarily holds back the whole message, so the sender retries it
    /// entire without duplicates (what sendmail's callers expect). Commands then go lock-step:
    /// once a pipelined DATA is accepted, only closing the connection could take it back.
    pub hold_on_deferral: bool,
}

/// The reply the session waits for, so the driver can choose the timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Awaiting {
    /// The greeting, under the connect timeout.
    Greeting,
    /// The reply to this command, e.g. `MAIL FROM`, `RCPT TO`, `AUTH LOGIN`.
    Command(&'static str),
    /// The verdict on a message that was sent.
    EndOfData,
}

/// A session or transaction that stopped before it finished.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interrupted {
    pub failure: Failure,
    /// Whether the end of data was sent: if not, nothing was delivered and the message may
    /// go to another connection at once; if so, the server may have taken it.
    pub body_sent: bool,
}

/// The replies of one transaction, for a caller that words its own report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Replies {
    /// To MAIL FROM; `None` when it was not sent (the server lacks what the message needs).
    pub mail: Option<Reply>,
    /// To each RCPT TO in order; shorter than the recipients when the rest were held back.
    pub rcpts: Vec<Reply>,
    /// To DATA, when it was sent.
    pub data: Option<Reply>,
    /// To the end of data, when the message was sent.
    pub end_of_data: Option<Reply>,
}

/// What the driver must do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Write the pending output, start TLS, then call [`ClientSession::tls_established`].
    StartTls,
    /// Greeted, TLS and AUTH done as required, or reset: ready for a message.
    Ready,
    /// Write the pending output, then the message body as [`super::protocol::DotStuffer`]
    /// gives it (it ends with `.\r\n`), then call [`ClientSession::body_sent`].
    SendBody,
    /// The transaction is over: one outcome per recipient, in order.
    Outcomes {
        outcomes: Vec<Outcome>,
        replies: Replies,
    },
    /// The session cannot go on; drop the connection.
    Failed(Interrupted),
    /// QUIT is answered or the server is gone: close the connection.
    Closed,
}

#[derive(Debug)]
struct Transaction {
    recipients: Vec<Address>,
    /// The session sat idle before this message: a 421 to MAIL is the server's idle timeout.
    reused: bool,
    pipelined: bool,
    replies: Replies,
}

impl Transaction {
    fn any_accepted(&self) -> bool {
        self.replies.mail.as_ref().is_some_and(Reply::is_positive)
            && self.replies.rcpts.iter().any(Reply::is_positive)
    }
}

#[derive(Debug)]
enum State {
    Greeting,
    Ehlo {
        helo_fallback: bool,
    },
    Helo,
    StartTls,
    /// STARTTLS accepted: the driver shakes hands.
    Handshake,
    AuthPlain,
    /// `AUTH LOGIN` and this many of user name and password were sent.
    AuthLogin {
        sent: usize,
    },
    Idle,
    /// Waiting for the replies to MAIL, the RCPTs and DATA.
    Envelope(Box<Transaction>),
    /// The driver writes the body.
    Body(Box<Transaction>),
    EndOfData(Box<Transaction>),
    /// DATA was accepted with no recipient; its empty end is answered (RFC 2920 §3.1).
    EmptyData(Box<Transaction>),
    Rset,
    Quit,
    Closed,
}

/// One SMTP client session.
pub struct ClientSession {
    settings: Settings,
    state: State,
    replies: ReplyReader,
    output: Vec<u8>,
    events: VecDeque<Event>,
    caps: Capabilities,
    tls: bool,
    authenticated: bool,
    /// A 421 was received: the server is closing, and every later reply is this one.
    closing: Option<Reply>,
    greeting: Option<Reply>,
    replies_received: u64,
}

impl ClientSession {
    /// A session waiting for the greeting. With [`Tls::Implicit`] the driver has finished the
    /// handshake before it feeds the first byte.
    pub fn new(settings: Settings) -> ClientSession {
        let tls = settings.tls == Tls::Implicit;
        ClientSession {
            settings,
            state: State::Greeting,
            replies: ReplyReader::default(),
            output: Vec::new(),
            events: VecDeque::new(),
            caps: Capabilities::default(),
            tls,
            authenticated: false,
            closing: None,
            greeting: None,
            replies_received: 0,
        }
    }

    /// Feeds bytes read from the server.
    pub fn receive(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        match self.state {
            State::Closed => {}
            // Plaintext that arrives while TLS is being set up would be trusted after it.
            State::Handshake => self.interrupt(data_after_starttls(&self.settings.server)),
            _ => {
                self.replies.push(bytes);
                self.process();
            }
        }
    }

    /// The server closed the connection.
    pub fn end_of_input(&mut self) {
        let failure = Failure::temporary(
            FailureKind::Connect,
            NETWORK,
            format!("{}: connection closed by the server", self.settings.server),
        );
        self.abort(failure);
    }

    /// The driver failed to read, write or shake hands, or a reply did not come in time.
    /// After the end of data the failure says the server may have taken the message.
    pub fn abort(&mut self, failure: Failure) {
        match self.state {
            State::Closed => {}
            State::Quit => self.close(),
            _ => self.interrupt(failure),
        }
    }

    /// Bytes to write to the server.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.output)
    }

    pub fn has_output(&self) -> bool {
        !self.output.is_empty()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The reply the session waits for; `None` while it waits for the driver (TLS, the body,
    /// the next message) or is closed.
    pub fn awaiting(&self) -> Option<Awaiting> {
        Some(match &self.state {
            State::Greeting => Awaiting::Greeting,
            State::Ehlo { .. } => Awaiting::Command("EHLO"),
            State::Helo => Awaiting::Command("HELO"),
            State::StartTls => Awaiting::Command("STARTTLS"),
            State::AuthPlain => Awaiting::Command("AUTH PLAIN"),
            State::AuthLogin { .. } => Awaiting::Command("AUTH LOGIN"),
            State::Envelope(tx) if tx.replies.mail.is_none() => Awaiting::Command("MAIL FROM"),
            State::Envelope(tx) if tx.replies.rcpts.len() < tx.recipients.len() => {
                Awaiting::Command("RCPT TO")
            }
            State::Envelope(_) => Awaiting::Command("DATA"),
            State::EndOfData(_) => Awaiting::EndOfData,
            State::EmptyData(_) => Awaiting::Command("end of data"),
            State::Rset => Awaiting::Command("RSET"),
            State::Quit => Awaiting::Command("QUIT"),
            State::Handshake | State::Idle | State::Body(_) | State::Closed => return None,
        })
    }

    /// Complete replies read so far: a driver restarts its reply timer when this changes.
    pub fn replies_received(&self) -> u64 {
        self.replies_received
    }

    /// The server's greeting, once it came.
    pub fn greeting(&self) -> Option<&Reply> {
        self.greeting.as_ref()
    }

    /// What the server announced in its last EHLO reply.
    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    pub fn is_tls(&self) -> bool {
        self.tls
    }

    pub fn is_authenticated(&self) -> bool {
        self.authenticated
    }

    /// Whether the session can take a message, now or after RSET: no 421 seen, not closed.
    pub fn is_usable(&self) -> bool {
        self.closing.is_none() && !matches!(self.state, State::Closed | State::Quit)
    }

    /// `host[ip]:port` as given in the settings.
    pub fn server(&self) -> &str {
        &self.settings.server
    }

    /// TLS is up: everything learned before it is forgotten and EHLO is sent again
    /// (RFC 3207 §4.2).
    pub fn tls_established(&mut self) {
        if !matches!(self.state, State::Handshake) {
            return;
        }
        self.tls = true;
        self.caps = Capabilities::default();
        self.replies.clear();
        self.ehlo(false);
    }

    /// Starts a transaction; `body` says what the message needs of the server (its size and
    /// 8-bit octets), the driver writes it when asked with [`Event::SendBody`]. `reused` says the
    /// session sat idle before: a 421 to MAIL is then the server's idle timeout (Postfix says
    /// `421 4.4.2 … timeout exceeded`), not a verdict on this message.
    pub fn send_message(
        &mut self,
        sender: Option<&Address>,
        recipients: &[Address],
        body: BodyFacts,
        reused: bool,
    ) {
        if recipients.is_empty() {
            return self.events.push_back(Event::Outcomes {
                outcomes: Vec::new(),
                replies: Replies::default(),
            });
        }
        if !matches!(self.state, State::Idle) || self.closing.is_some() {
            return self.not_ready();
        }
        let req = Requirements::of(sender, recipients, body);
        if let Err(failure) = req.check(&self.caps, &self.settings.server) {
            return self.events.push_back(Event::Outcomes {
                outcomes: Outcome::all_failed(recipients.len(), &failure),
                replies: Replies::default(),
            });
        }
        let mail_from = mail_from_command(sender, &req, &self.caps);
        let pipelined = self.caps.pipelining && !self.settings.hold_on_deferral;
        if pipelined {
            self.output
                .extend_from_slice(&pipelined_batch(&mail_from, recipients));
        } else {
            self.write(&mail_from);
        }
        self.state = State::Envelope(Box::new(Transaction {
            recipients: recipients.to_vec(),
            reused,
            pipelined,
            replies: Replies::default(),
        }));
        self.process();
    }

    /// The body and its terminating `.\r\n` are written.
    pub fn body_sent(&mut self) {
        if !matches!(self.state, State::Body(_)) {
            return;
        }
        if let State::Body(tx) = std::mem::replace(&mut self.state, State::Closed) {
            self.state = State::EndOfData(tx);
            self.process();
        }
    }

    /// RSET, so the session is clean for the next message; [`Event::Ready`] when accepted.
    pub fn reset(&mut self) {
        if !matches!(self.state, State::Idle) || self.closing.is_some() {
            return self.not_ready();
        }
        self.write("RSET\r\n");
        self.state = State::Rset;
        self.process();
    }

    /// QUIT; [`Event::Closed`] when answered. A server that is closing is not asked.
    pub fn quit(&mut self) {
        if self.closing.is_some() || matches!(self.state, State::Closed) {
            return self.close();
        }
        self.write("QUIT\r\n");
        self.state = State::Quit;
        self.process();
    }

    fn write(&mut self, command: &str) {
        // After a 421 nothing more is said; the awaited replies are that 421.
        if self.closing.is_none() {
            self.output.extend_from_slice(command.as_bytes());
        }
    }

    fn not_ready(&mut self) {
        let server = &self.settings.server;
        let failure = match &self.closing {
            Some(reply) => reply.failure(&format!("{server}: server closing")),
            None => Failure::temporary(
                FailureKind::Connect,
                NETWORK,
                format!("{server}: the session is not ready for a command"),
            ),
        };
        self.events.push_back(Event::Failed(Interrupted {
            failure,
            body_sent: false,
        }));
    }

    fn close(&mut self) {
        self.state = State::Closed;
        self.events.push_back(Event::Closed);
    }

    fn interrupt(&mut self, mut failure: Failure) {
        let body_sent = match self.state {
            State::Body(_) => true,
            State::EndOfData(_) => {
                failure.reason.push_str(AFTER_END_OF_DATA);
                true
            }
            _ => false,
        };
        self.state = State::Closed;
        self.replies.clear();
        self.events
            .push_back(Event::Failed(Interrupted { failure, body_sent }));
    }

    /// Reads replies while one is awaited and complete.
    fn process(&mut self) {
        while self.awaiting().is_some() {
            if let Some(reply) = self.closing.clone() {
                self.on_reply(reply);
                continue;
            }
            match self.replies.next_reply() {
                None => break,
                Some(Err(what)) => return self.malformed(format_args!("{what}")),
                Some(Ok(reply)) => {
                    self.replies_received += 1;
                    if let Some(awaiting) = self.awaiting().filter(|a| !fits(*a, &reply)) {
                        return self.unexpected(awaiting, &reply);
                    }
                    if reply.code == 421 {
                        self.closing = Some(reply.clone());
                    }
                    self.on_reply(reply);
                }
            }
        }
    }

    fn malformed(&mut self, what: std::fmt::Arguments<'_>) {
        let failure = Failure::temporary(
            FailureKind::Protocol,
            NETWORK,
            format!("{}: malformed reply: {what}", self.settings.server),
        );
        self.abort(failure);
    }

    /// A reply of a class the command cannot have, e.g. 250 to DATA: taking it at its word
    /// would count a message as delivered that was never sent.
    fn unexpected(&mut self, awaiting: Awaiting, reply: &Reply) {
        let what = match awaiting {
            Awaiting::Greeting => "the greeting",
            Awaiting::Command(command) => command,
            Awaiting::EndOfData => "end of data",
        };
        let failure = Failure::temporary(
            FailureKind::Protocol,
            NETWORK,
            format!(
                "{}: unexpected reply to {what}: {}",
                self.settings.server,
                reply.verbatim()
            ),
        );
        self.abort(failure);
    }

    fn on_reply(&mut self, reply: Reply) {
        match std::mem::replace(&mut self.state, State::Closed) {
            State::Greeting => {
                self.greeting = Some(reply.clone());
                if !reply.is_positive() {
                    return self.setup_refused(&reply, "greeting");
                }
                let fallback = self.settings.tls == Tls::Off && self.settings.credentials.is_none();
                self.ehlo(fallback);
            }
            State::Ehlo { helo_fallback } => {
                if reply.is_positive() {
                    self.caps = Capabilities::from_ehlo_text(&reply.text());
                    return self.after_hello();
                }
                // Only a server that does not know EHLO gets HELO (RFC 5321 §3.2); never where
                // STARTTLS or AUTH is wanted, which HELO cannot offer.
                if !(helo_fallback && reply.is_permanent_failure()) {
                    return self.setup_refused(&reply, "EHLO");
                }
                let helo = format!("HELO {}\r\n", self.settings.helo_name);
                self.write(&helo);
                self.state = State::Helo;
            }
            State::Helo => {
                if !reply.is_positive() {
                    return self.setup_refused(&reply, "HELO");
                }
                self.caps = Capabilities::default();
                self.after_hello();
            }
            State::StartTls => {
                if reply.code != 220 {
                    return self.setup_refused(&reply, "STARTTLS");
                }
                if self.replies.has_unread() {
                    // Bytes sent before the handshake would be trusted after it (CVE-2011-0411).
                    return self.interrupt(data_after_starttls(&self.settings.server));
                }
                self.state = State::Handshake;
                self.events.push_back(Event::StartTls);
            }
            State::AuthPlain => self.auth_result(&reply),
            State::AuthLogin { sent } if reply.code == 334 && sent < 2 => {
                let credentials = self
                    .settings
                    .credentials
                    .as_ref()
                    .expect("AUTH is only started with credentials");
                let secret = if sent == 0 {
                    &credentials.user
                } else {
                    &credentials.password
                };
                let line = auth_login_line(secret);
                self.write(&line);
                self.state = State::AuthLogin { sent: sent + 1 };
            }
            State::AuthLogin { .. } => self.auth_result(&reply),
            State::Envelope(tx) => self.envelope_reply(tx, reply),
            State::EndOfData(mut tx) => {
                tx.replies.end_of_data = Some(reply);
                let end = tx.replies.end_of_data.as_ref().expect("set above");
                let outcomes = self.outcomes(&tx, Some(Final::EndOfData(end)));
                self.finish(tx.replies, outcomes);
            }
            State::EmptyData(tx) => {
                let outcomes = self.outcomes(&tx, None);
                self.finish(tx.replies, outcomes);
            }
            State::Rset => {
                if !reply.is_positive() {
                    return self.setup_refused(&reply, "RSET");
                }
                self.state = State::Idle;
                self.events.push_back(Event::Ready);
            }
            State::Quit => self.close(),
            state @ (State::Handshake | State::Idle | State::Body(_) | State::Closed) => {
                self.state = state;
            }
        }
    }

    fn ehlo(&mut self, helo_fallback: bool) {
        let ehlo = format!("EHLO {}\r\n", self.settings.helo_name);
        self.write(&ehlo);
        self.state = State::Ehlo { helo_fallback };
    }

    /// After EHLO or HELO: STARTTLS when it is still due, then AUTH, then ready.
    fn after_hello(&mut self) {
        let server = &self.settings.server;
        if self.settings.tls == Tls::StartTls && !self.tls {
            if !self.caps.starttls {
                let failure = Failure::temporary(
                    FailureKind::Tls,
                    SECURITY,
                    format!("{server}: STARTTLS is required but the server does not offer it"),
                );
                return self.interrupt(failure);
            }
            self.write("STARTTLS\r\n");
            self.state = State::StartTls;
            return;
        }
        let Some(credentials) = &self.settings.credentials else {
            return self.ready();
        };
        if !self.tls {
            let failure = Failure::temporary(
                FailureKind::Auth,
                SECURITY,
                format!(
                    "{server}: credentials are set but the connection is not encrypted; AUTH not sent"
                ),
            );
            return self.interrupt(failure);
        }
        match self.caps.auth_mechanism() {
            None => {
                let failure = Failure::temporary(
                    FailureKind::Auth,
                    SECURITY,
                    format!("{server}: credentials are set but the server offers neither AUTH PLAIN nor AUTH LOGIN"),
                );
                self.interrupt(failure)
            }
            Some(AuthMechanism::Plain) => {
                let command = auth_plain_command(&credentials.user, &credentials.password);
                self.write(&command);
                self.state = State::AuthPlain;
            }
            Some(AuthMechanism::Login) => {
                self.write("AUTH LOGIN\r\n");
                self.state = State::AuthLogin { sent: 0 };
            }
        }
    }

    fn auth_result(&mut self, reply: &Reply) {
        if reply.code != 235 {
            // Kept temporary: the administrator can fix the secret before the mail expires.
            let mut failure = reply
                .failure(&format!("{}: AUTH", self.settings.server))
                .made_temporary();
            failure.kind = FailureKind::Auth;
            failure
                .reason
                .push_str(" (authentication failures are retried: check the relay credentials)");
            return self.interrupt(failure);
        }
        self.authenticated = true;
        self.ready();
    }

    fn ready(&mut self) {
        self.state = State::Idle;
        self.events.push_back(Event::Ready);
    }

    /// A negative reply outside a transaction: a failure of this server, never of a message.
    fn setup_refused(&mut self, reply: &Reply, what: &str) {
        let failure = reply
            .failure(&format!("{}: {what}", self.settings.server))
            .made_temporary();
        self.interrupt(failure);
    }

    fn envelope_reply(&mut self, mut tx: Box<Transaction>, reply: Reply) {
        if tx.replies.mail.is_none() {
            tx.replies.mail = Some(reply);
            if !tx.pipelined {
                return self.after_mail(tx);
            }
        } else if tx.replies.rcpts.len() < tx.recipients.len() {
            tx.replies.rcpts.push(reply);
            if !tx.pipelined {
                return self.after_rcpt(tx);
            }
        } else {
            tx.replies.data = Some(reply);
            return self.after_data(tx);
        }
        self.state = State::Envelope(tx);
    }

    /// Lock-step: RCPT after an accepted MAIL.
    fn after_mail(&mut self, tx: Box<Transaction>) {
        let mail = tx.replies.mail.as_ref().expect("MAIL was answered");
        if tx.reused && mail.code == 421 {
            return self.idle_session_closed(mail.clone());
        }
        if !mail.is_positive() {
            let outcomes = self.outcomes(&tx, None);
            return self.finish(tx.replies, outcomes);
        }
        let rcpt = rcpt_to_command(&tx.recipients[0]);
        self.write(&rcpt);
        self.state = State::Envelope(tx);
    }

    /// Lock-step: the next RCPT, DATA once some recipient is accepted, or the end.
    fn after_rcpt(&mut self, tx: Box<Transaction>) {
        let answered = tx.replies.rcpts.len();
        let last = &tx.replies.rcpts[answered - 1];
        if self.settings.hold_on_deferral && (400..500).contains(&last.code) {
            let outcomes = self.held_back(&tx);
            return self.finish(tx.replies, outcomes);
        }
        if answered < tx.recipients.len() {
            let rcpt = rcpt_to_command(&tx.recipients[answered]);
            self.write(&rcpt);
        } else if tx.any_accepted() {
            self.write("DATA\r\n");
        } else {
            let outcomes = self.outcomes(&tx, None);
            return self.finish(tx.replies, outcomes);
        }
        self.state = State::Envelope(tx);
    }

    fn after_data(&mut self, tx: Box<Transaction>) {
        let mail = tx.replies.mail.as_ref().expect("MAIL was answered");
        if tx.reused && mail.code == 421 {
            return self.idle_session_closed(mail.clone());
        }
        let data = tx.replies.data.as_ref().expect("DATA was answered");
        match (tx.any_accepted(), data.is_intermediate()) {
            (true, true) => {
                self.state = State::Body(tx);
                self.events.push_back(Event::SendBody);
            }
            (true, false) => {
                let outcomes = self.outcomes(&tx, Some(Final::Data(data)));
                self.finish(tx.replies, outcomes);
            }
            (false, true) => {
                // RFC 2920 §3.1: DATA was accepted with no recipient; end it empty.
                self.write(".\r\n");
                self.state = State::EmptyData(tx);
            }
            (false, false) => {
                let outcomes = self.outcomes(&tx, None);
                self.finish(tx.replies, outcomes);
            }
        }
    }

    /// A reused session whose MAIL got 421: the server closed it while it sat idle. Nothing
    /// was sent, so the message may go to another connection at once.
    fn idle_session_closed(&mut self, reply: Reply) {
        let failure = reply.failure(&format!("{}: idle session closed", self.settings.server));
        self.interrupt(failure);
    }

    fn outcomes(&self, tx: &Transaction, last: Option<Final<'_>>) -> Vec<Outcome> {
        let mail = tx.replies.mail.as_ref().expect("MAIL was answered");
        transaction_outcomes(
            &self.settings.server,
            &tx.recipients,
            mail,
            &tx.replies.rcpts,
            last,
        )
    }

    /// Outcomes when a temporary RCPT refusal held the message back: every recipient fails,
    /// the refused ones with their own reply, the rest temporarily with the deferral.
    fn held_back(&self, tx: &Transaction) -> Vec<Outcome> {
        let server = &self.settings.server;
        let deferred = tx.replies.rcpts.last().expect("a RCPT was deferred");
        let deferred_rcpt = &tx.recipients[tx.replies.rcpts.len() - 1];
        let held = deferred.failure(&format!(
            "{server}: message held back: RCPT TO:<{deferred_rcpt}>"
        ));
        tx.recipients
            .iter()
            .enumerate()
            .map(|(i, rcpt)| match tx.replies.rcpts.get(i) {
                Some(reply) if !reply.is_positive() => {
                    Outcome::Failed(reply.failure(&format!("{server}: RCPT TO:<{rcpt}>")))
                }
                _ => Outcome::Failed(held.clone()),
            })
            .collect()
    }

    fn finish(&mut self, replies: Replies, outcomes: Vec<Outcome>) {
        self.state = State::Idle;
        self.events.push_back(Event::Outcomes { outcomes, replies });
    }
}

/// Whether a reply's class is one the awaited command can get: only DATA and AUTH go on
/// with 3xx, and DATA never succeeds at once.
fn fits(awaiting: Awaiting, reply: &Reply) -> bool {
    match awaiting {
        Awaiting::Command("DATA") => !reply.is_positive(),
        Awaiting::Command("AUTH PLAIN" | "AUTH LOGIN") => true,
        _ => !reply.is_intermediate(),
    }
}

fn data_after_starttls(server: &str) -> Failure {
    Failure::temporary(
        FailureKind::Protocol,
        TLS_FAILED,
        format!("{server}: server sent data after its STARTTLS reply"),
    )
}
