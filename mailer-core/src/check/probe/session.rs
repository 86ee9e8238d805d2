//! The probe's SMTP dialogue as a state machine without IO: greeting, EHLO, STARTTLS and EHLO
//! again, AUTH, `MAIL FROM`, `RSET`, `QUIT`. It has no command that names a recipient or sends
//! data, so a probe can never deliver anything.
//!
//! The driver feeds what the server sent ([`ProbeSession::receive`], split anywhere), writes
//! what [`ProbeSession::take_output`] returns and acts on [`ProbeSession::poll_event`]: shake
//! hands and call [`ProbeSession::tls_established`] only once the certificate verified. Until
//! then the session holds back the credentials.

use crate::address::Address;
use crate::smtp::client::Tls;
use crate::smtp::protocol::{
    auth_login_line, auth_plain_command, mail_from_command, AuthMechanism, Capabilities,
    Requirements,
};
use crate::smtp::reply::ReplyReader;
use crate::smtp::Reply;
use crate::tables::secrets::Credentials;

/// A step of the dialogue, named as the command it sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Greeting,
    Ehlo,
    StartTls,
    Auth,
    Mail,
    Rset,
    Quit,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Greeting => "greeting",
            Step::Ehlo => "EHLO",
            Step::StartTls => "STARTTLS",
            Step::Auth => "AUTH",
            Step::Mail => "MAIL FROM",
            Step::Rset => "RSET",
            Step::Quit => "QUIT",
        }
    }
}

/// What became of the credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthResult {
    /// The member has no credentials.
    NotConfigured,
    /// The connection is not encrypted and verified: the credentials were not sent.
    NoTls,
    /// The server offers neither PLAIN nor LOGIN.
    NotOffered,
    Accepted {
        mechanism: &'static str,
        reply: Reply,
    },
    Refused {
        mechanism: &'static str,
        reply: Reply,
    },
}

/// Everything the server said, as far as the dialogue got.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dialogue {
    pub banner: Option<Reply>,
    /// The last EHLO reply (after TLS when TLS is used).
    pub ehlo: Option<Reply>,
    pub capabilities: Capabilities,
    /// The AUTH mechanisms of the last EHLO reply, upper case, as offered.
    pub auth_mechanisms: Vec<String>,
    /// TLS is up and verified (implicit, or after STARTTLS).
    pub tls: bool,
    /// `None` when the dialogue stopped before AUTH.
    pub auth: Option<AuthResult>,
    /// The reply to `MAIL FROM`, when it was sent.
    pub mail: Option<Reply>,
    /// Where the dialogue stopped early, and why.
    pub stopped: Option<(Step, String)>,
}

/// What the driver must do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeEvent {
    /// Write the pending output, shake hands (verifying as the relay does), then call
    /// [`ProbeSession::tls_established`], or [`ProbeSession::abort`] with the reason.
    StartTls,
    /// The dialogue is over: close the connection and read [`ProbeSession::dialogue`].
    Finished,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Greeting,
    Ehlo,
    StartTls,
    Handshake,
    AuthPlain,
    /// `AUTH LOGIN` and this many of user name and password were sent.
    AuthLogin {
        sent: usize,
    },
    Mail,
    Rset,
    Quit,
    Done,
}

/// One probe of one member address.
pub struct ProbeSession {
    helo_name: String,
    tls_mode: Tls,
    credentials: Option<Credentials>,
    sender: Address,
    state: State,
    replies: ReplyReader,
    output: Vec<u8>,
    event: Option<ProbeEvent>,
    dialogue: Dialogue,
}

impl ProbeSession {
    /// A session waiting for the greeting. With [`Tls::Implicit`] the driver has finished (and
    /// verified) the handshake before it feeds the first byte.
    pub fn new(
        helo_name: impl Into<String>,
        tls: Tls,
        credentials: Option<Credentials>,
        sender: Address,
    ) -> ProbeSession {
        ProbeSession {
            helo_name: helo_name.into(),
            tls_mode: tls,
            credentials,
            sender,
            state: State::Greeting,
            replies: ReplyReader::default(),
            output: Vec::new(),
            event: None,
            dialogue: Dialogue {
                tls: tls == Tls::Implicit,
                ..Dialogue::default()
            },
        }
    }

    /// Feeds bytes read from the server.
    pub fn receive(&mut self, bytes: &[u8]) {
        match self.state {
            State::Done => {}
            // Plaintext after the STARTTLS reply would be read as if it came over TLS.
            State::Handshake if !bytes.is_empty() => {
                self.abort("the server sent data before the TLS handshake")
            }
            _ => {
                self.replies.push(bytes);
                self.process();
            }
        }
    }

    /// The server closed the connection.
    pub fn end_of_input(&mut self) {
        self.abort("connection closed by the server");
    }

    /// The driver could not read, write or shake hands, or a reply did not come in time.
    pub fn abort(&mut self, reason: impl Into<String>) {
        match self.state {
            State::Done => {}
            // The answer to QUIT changes nothing.
            State::Quit => self.finish(),
            _ => {
                self.dialogue.stopped = Some((self.step(), reason.into()));
                self.finish();
            }
        }
    }

    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.output)
    }

    pub fn poll_event(&mut self) -> Option<ProbeEvent> {
        self.event.take()
    }

    /// The step whose reply is awaited; `None` during the handshake and once finished.
    pub fn awaiting(&self) -> Option<Step> {
        match self.state {
            State::Handshake | State::Done => None,
            _ => Some(self.step()),
        }
    }

    /// What was learned so far.
    pub fn dialogue(&self) -> &Dialogue {
        &self.dialogue
    }

    pub fn into_dialogue(self) -> Dialogue {
        self.dialogue
    }

    /// The handshake succeeded and the certificate verified: EHLO again (RFC 3207 §4.2).
    pub fn tls_established(&mut self) {
        if self.state != State::Handshake {
            return;
        }
        self.dialogue.tls = true;
        self.dialogue.capabilities = Capabilities::default();
        self.dialogue.auth_mechanisms.clear();
        self.replies.clear();
        self.ehlo();
    }

    fn step(&self) -> Step {
        match self.state {
            State::Greeting => Step::Greeting,
            State::Ehlo => Step::Ehlo,
            State::StartTls | State::Handshake => Step::StartTls,
            State::AuthPlain | State::AuthLogin { .. } => Step::Auth,
            State::Mail => Step::Mail,
            State::Rset => Step::Rset,
            State::Quit | State::Done => Step::Quit,
        }
    }

    fn finish(&mut self) {
        self.state = State::Done;
        self.replies.clear();
        self.event = Some(ProbeEvent::Finished);
    }

    fn send(&mut self, command: &str, state: State) {
        self.output.extend_from_slice(command.as_bytes());
        self.state = state;
    }

    fn ehlo(&mut self) {
        let command = format!("EHLO {}\r\n", self.helo_name);
        self.send(&command, State::Ehlo);
    }

    /// Stops at `step` because of `reason`, saying QUIT unless the server is closing.
    fn stop(&mut self, step: Step, reason: String, closing: bool) {
        self.dialogue.stopped = Some((step, reason));
        if closing {
            self.finish();
        } else {
            self.send("QUIT\r\n", State::Quit);
        }
    }

    fn process(&mut self) {
        while self.awaiting().is_some() {
            match self.replies.next_reply() {
                None => break,
                Some(Ok(reply)) => self.on_reply(reply),
                Some(Err(what)) => return self.abort(format!("malformed reply: {what}")),
            }
        }
    }

    fn on_reply(&mut self, reply: Reply) {
        let closing = reply.code == 421;
        match self.state {
            State::Greeting => {
                self.dialogue.banner = Some(reply.clone());
                if !reply.is_positive() {
                    return self.stop(Step::Greeting, reply.verbatim(), closing);
                }
                self.ehlo();
            }
            State::Ehlo => {
                if !reply.is_positive() {
                    self.dialogue.ehlo = Some(reply.clone());
                    return self.stop(Step::Ehlo, reply.verbatim(), closing);
                }
                self.dialogue.capabilities = Capabilities::from_ehlo_text(&reply.text());
                self.dialogue.auth_mechanisms = auth_mechanisms(&reply.text());
                self.dialogue.ehlo = Some(reply);
                if self.tls_mode == Tls::StartTls && !self.dialogue.tls {
                    if !self.dialogue.capabilities.starttls {
                        return self.stop(
                            Step::StartTls,
                            "not offered in the EHLO reply".into(),
                            false,
                        );
                    }
                    return self.send("STARTTLS\r\n", State::StartTls);
                }
                self.authenticate();
            }
            State::StartTls => {
                if reply.code != 220 {
                    return self.stop(Step::StartTls, reply.verbatim(), closing);
                }
                // Whatever follows the 220 in the same read is plaintext: not to be trusted.
                if self.replies.has_unread() {
                    return self.abort("the server sent data before the TLS handshake");
                }
                self.state = State::Handshake;
                self.event = Some(ProbeEvent::StartTls);
            }
            State::AuthPlain => self.auth_result("PLAIN", reply),
            State::AuthLogin { sent } => {
                if reply.code == 334 && sent < 2 {
                    let credentials = self
                        .credentials
                        .as_ref()
                        .expect("AUTH LOGIN is only started with credentials");
                    let line = if sent == 0 {
                        auth_login_line(&credentials.user)
                    } else {
                        auth_login_line(&credentials.password)
                    };
                    return self.send(&line, State::AuthLogin { sent: sent + 1 });
                }
                self.auth_result("LOGIN", reply);
            }
            State::Mail => {
                self.dialogue.mail = Some(reply);
                if closing {
                    return self.finish();
                }
                self.send("RSET\r\n", State::Rset);
            }
            State::Rset => {
                if closing {
                    return self.finish();
                }
                self.send("QUIT\r\n", State::Quit);
            }
            State::Quit => self.finish(),
            State::Handshake | State::Done => {}
        }
    }

    /// AUTH when there are credentials and TLS is verified, then MAIL FROM.
    fn authenticate(&mut self) {
        let Some(credentials) = &self.credentials else {
            self.dialogue.auth = Some(AuthResult::NotConfigured);
            return self.mail();
        };
        if !self.dialogue.tls {
            self.dialogue.auth = Some(AuthResult::NoTls);
            return self.mail();
        }
        match self.dialogue.capabilities.auth_mechanism() {
            Some(AuthMechanism::Plain) => {
                let command = auth_plain_command(&credentials.user, &credentials.password);
                self.send(&command, State::AuthPlain);
            }
            Some(AuthMechanism::Login) => self.send("AUTH LOGIN\r\n", State::AuthLogin { sent: 0 }),
            None => {
                self.dialogue.auth = Some(AuthResult::NotOffered);
                self.stop(
                    Step::Auth,
                    "the server offers neither AUTH PLAIN nor AUTH LOGIN".into(),
                    false,
                );
            }
        }
    }

    fn auth_result(&mut self, mechanism: &'static str, reply: Reply) {
        let closing = reply.code == 421;
        if reply.code == 235 {
            self.dialogue.auth = Some(AuthResult::Accepted { mechanism, reply });
            return self.mail();
        }
        let verbatim = reply.verbatim();
        self.dialogue.auth = Some(AuthResult::Refused { mechanism, reply });
        // A sender tried without the session the relay would have means nothing.
        self.stop(Step::Auth, verbatim, closing);
    }

    fn mail(&mut self) {
        let req = Requirements {
            smtputf8: self.sender.is_utf8(),
            eight_bit: false,
            size: 0,
        };
        let command = mail_from_command(Some(&self.sender), &req, &self.dialogue.capabilities);
        self.send(&command, State::Mail);
    }
}

/// The mechanisms after `AUTH` (or the old `AUTH=`) in an EHLO reply's text.
fn auth_mechanisms(ehlo_text: &str) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    for line in ehlo_text.lines().skip(1) {
        let upper = line.trim().to_ascii_uppercase();
        let rest = match upper.strip_prefix("AUTH") {
            Some(rest) if rest.starts_with([' ', '=']) => &rest[1..],
            _ => continue,
        };
        for mechanism in rest.split_ascii_whitespace() {
            if !found.iter().any(|m| m == mechanism) {
                found.push(mechanism.to_string());
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sender() -> Address {
        Address::parse("postmaster@ublog.test").unwrap()
    }

    fn credentials() -> Option<Credentials> {
        Some(Credentials {
            user: "relay-user".into(),
            password: "s3cret".into(),
        })
    }

    /// Feeds `replies` one at a time, collecting everything the session wrote.
    struct Run {
        session: ProbeSession,
        written: String,
    }

    impl Run {
        fn new(tls: Tls, credentials: Option<Credentials>) -> Run {
            Run {
                session: ProbeSession::new("mx.test", tls, credentials, sender()),
                written: String::new(),
            }
        }

        fn reply(&mut self, bytes: &str) -> Option<ProbeEvent> {
            self.session.receive(bytes.as_bytes());
            self.written
                .push_str(&String::from_utf8(self.session.take_output()).unwrap());
            self.session.poll_event()
        }

        fn commands(&self) -> Vec<&str> {
            self.written
                .lines()
                .map(|l| l.split([' ', ':']).next().unwrap())
                .collect()
        }
    }

    const EHLO_PLAIN: &str = "250-sink.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250 STARTTLS\r\n";
    const EHLO_TLS: &str = "250-sink.test\r\n250-SIZE 1000\r\n250 AUTH PLAIN LOGIN\r\n";

    #[test]
    fn a_healthy_member_goes_through_tls_auth_mail_rset_quit() {
        let mut run = Run::new(Tls::StartTls, credentials());
        assert_eq!(run.reply("220 sink.test ESMTP\r\n"), None);
        assert_eq!(run.reply(EHLO_PLAIN), None);
        assert_eq!(
            run.reply("220 2.0.0 go ahead\r\n"),
            Some(ProbeEvent::StartTls)
        );
        assert!(
            !run.written.contains("AUTH"),
            "no credentials before TLS: {}",
            run.written
        );
        run.session.tls_established();
        run.written
            .push_str(&String::from_utf8(run.session.take_output()).unwrap());
        assert_eq!(run.reply(EHLO_TLS), None);
        assert_eq!(run.reply("235 2.7.0 ok\r\n"), None);
        assert_eq!(run.reply("250 2.1.0 sender ok\r\n"), None);
        assert_eq!(run.reply("250 2.0.0 reset\r\n"), None);
        assert_eq!(run.reply("221 bye\r\n"), Some(ProbeEvent::Finished));
        assert_eq!(
            run.commands(),
            ["EHLO", "STARTTLS", "EHLO", "AUTH", "MAIL", "RSET", "QUIT"]
        );
        assert!(run
            .written
            .contains("MAIL FROM:<postmaster@ublog.test> SIZE=0\r\n"));
        let d = run.session.dialogue();
        assert!(d.tls);
        assert_eq!(d.capabilities.size, Some(1000));
        assert_eq!(d.auth_mechanisms, ["PLAIN", "LOGIN"]);
        assert!(matches!(
            d.auth,
            Some(AuthResult::Accepted {
                mechanism: "PLAIN",
                ..
            })
        ));
        assert_eq!(d.mail.as_ref().map(|r| r.code), Some(250));
        assert_eq!(d.stopped, None);
    }

    #[test]
    fn refused_credentials_stop_before_mail() {
        let mut run = Run::new(Tls::Implicit, credentials());
        run.reply("220 sink.test\r\n");
        run.reply(EHLO_TLS);
        assert_eq!(run.reply("535 5.7.8 bad credentials\r\n"), None);
        assert_eq!(run.reply("221 bye\r\n"), Some(ProbeEvent::Finished));
        assert_eq!(run.commands(), ["EHLO", "AUTH", "QUIT"]);
        let d = run.session.dialogue();
        assert!(matches!(&d.auth, Some(AuthResult::Refused { reply, .. }) if reply.code == 535));
        assert_eq!(
            d.stopped,
            Some((Step::Auth, "535 5.7.8 bad credentials".into()))
        );
    }

    #[test]
    fn auth_login_sends_user_then_password() {
        let mut run = Run::new(Tls::Implicit, credentials());
        run.reply("220 sink.test\r\n");
        run.reply("250-sink.test\r\n250 AUTH LOGIN\r\n");
        run.reply("334 VXNlcm5hbWU6\r\n");
        run.reply("334 UGFzc3dvcmQ6\r\n");
        run.reply("235 ok\r\n");
        assert_eq!(
            run.written,
            "EHLO mx.test\r\nAUTH LOGIN\r\ncmVsYXktdXNlcg==\r\nczNjcmV0\r\nMAIL FROM:<postmaster@ublog.test>\r\n"
        );
    }

    #[test]
    fn a_refused_sender_is_recorded_then_reset_and_quit() {
        let mut run = Run::new(Tls::Implicit, None);
        run.reply("220 sink.test\r\n");
        run.reply(EHLO_TLS);
        run.reply("550 5.7.1 sender not allowed\r\n");
        run.reply("250 ok\r\n");
        assert_eq!(run.reply("221 bye\r\n"), Some(ProbeEvent::Finished));
        assert_eq!(run.commands(), ["EHLO", "MAIL", "RSET", "QUIT"]);
        let d = run.session.dialogue();
        assert_eq!(d.auth, Some(AuthResult::NotConfigured));
        assert_eq!(d.mail.as_ref().map(|r| r.code), Some(550));
        assert_eq!(d.stopped, None);
    }

    #[test]
    fn no_starttls_offered_means_no_credentials_and_quit() {
        let mut run = Run::new(Tls::StartTls, credentials());
        run.reply("220 sink.test\r\n");
        run.reply("250-sink.test\r\n250 AUTH PLAIN\r\n");
        assert_eq!(run.commands(), ["EHLO", "QUIT"]);
        assert_eq!(
            run.session.dialogue().stopped,
            Some((Step::StartTls, "not offered in the EHLO reply".into()))
        );
    }

    #[test]
    fn a_failed_handshake_never_sends_credentials() {
        let mut run = Run::new(Tls::StartTls, credentials());
        run.reply("220 sink.test\r\n");
        run.reply(EHLO_PLAIN);
        assert_eq!(run.reply("220 go ahead\r\n"), Some(ProbeEvent::StartTls));
        run.session
            .abort("TLS certificate verification failed: certificate expired");
        assert_eq!(run.session.poll_event(), Some(ProbeEvent::Finished));
        assert_eq!(run.commands(), ["EHLO", "STARTTLS"]);
        assert_eq!(
            run.session.dialogue().stopped.as_ref().unwrap().0,
            Step::StartTls
        );
        assert!(!run.session.dialogue().tls);
    }

    #[test]
    fn plaintext_pipelined_after_the_starttls_reply_is_refused() {
        let mut run = Run::new(Tls::StartTls, credentials());
        run.reply("220 sink.test\r\n");
        run.reply(EHLO_PLAIN);
        let event = run.reply("220 go ahead\r\n250-injected\r\n250 AUTH PLAIN\r\n");
        assert_eq!(event, Some(ProbeEvent::Finished));
        assert!(!run.written.contains("AUTH"));
    }

    #[test]
    fn a_plain_member_never_gets_credentials() {
        let mut run = Run::new(Tls::Off, credentials());
        run.reply("220 sink.test\r\n");
        run.reply("250-sink.test\r\n250 AUTH PLAIN\r\n");
        assert_eq!(run.commands(), ["EHLO", "MAIL"]);
        assert_eq!(run.session.dialogue().auth, Some(AuthResult::NoTls));
    }

    #[test]
    fn a_closing_server_is_not_asked_anything_more() {
        let mut run = Run::new(Tls::Implicit, None);
        assert_eq!(run.reply("421 4.3.2 busy\r\n"), Some(ProbeEvent::Finished));
        assert_eq!(run.written, "");
        assert_eq!(
            run.session.dialogue().stopped,
            Some((Step::Greeting, "421 4.3.2 busy".into()))
        );
    }

    #[test]
    fn replies_split_anywhere_read_the_same() {
        let mut run = Run::new(Tls::Implicit, None);
        for chunk in [
            "22",
            "0 sink",
            ".test\r",
            "\n250-sink.test\r\n250 S",
            "IZE 5\r\n",
        ] {
            run.reply(chunk);
        }
        assert_eq!(run.commands(), ["EHLO", "MAIL"]);
        assert_eq!(run.session.dialogue().capabilities.size, Some(5));
    }

    #[test]
    fn a_connection_closed_midway_is_reported_at_its_step() {
        let mut run = Run::new(Tls::Implicit, None);
        run.reply("220 sink.test\r\n");
        run.session.end_of_input();
        assert_eq!(run.session.poll_event(), Some(ProbeEvent::Finished));
        assert_eq!(
            run.session.dialogue().stopped,
            Some((Step::Ehlo, "connection closed by the server".into()))
        );
    }

    #[test]
    fn whatever_the_server_says_no_recipient_or_data_is_sent() {
        // Every reply code at every step: the only commands are the probe's.
        for code in [220, 235, 250, 334, 354, 421, 450, 535, 550, 554] {
            let mut run = Run::new(Tls::StartTls, credentials());
            for _ in 0..12 {
                run.reply(&format!("{code}-x\r\n{code} AUTH PLAIN\r\n"));
                if run.session.awaiting().is_none() {
                    run.session.tls_established();
                }
            }
            assert!(
                !run.written.contains("RCPT") && !run.written.contains("DATA"),
                "{code}: {}",
                run.written
            );
        }
    }

    #[test]
    fn auth_mechanisms_are_read_from_both_forms() {
        assert_eq!(
            auth_mechanisms("x\nAUTH=LOGIN\nauth plain login cram-md5"),
            ["LOGIN", "PLAIN", "CRAM-MD5"]
        );
        assert!(auth_mechanisms("x\nAUTHX PLAIN").is_empty());
    }
}
