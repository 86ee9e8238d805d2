//! The SMTP client session, driven by scripted server replies; every test asserts the exact
//! bytes the client writes.

use mailer_core::address::Address;
use mailer_core::delivery::{EnhancedStatus, Failure, FailureKind, Outcome};
use mailer_core::smtp::client::{
    Awaiting, ClientSession, Event, Interrupted, Replies, Settings, Tls,
};
use mailer_core::smtp::protocol::{dot_stuff, BodyFacts};
use mailer_core::tables::secrets::Credentials;

const SERVER: &str = "relay.test[192.0.2.1]:587";
const GREETING: &str = "220 relay.test ESMTP\r\n";
/// EHLO reply with PIPELINING, 8BITMIME, SMTPUTF8 and a SIZE limit; no STARTTLS, no AUTH.
const EHLO_FULL: &str =
    "250-relay.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE 1000\r\n";
/// EHLO reply with nothing.
const EHLO_BARE: &str = "250 relay.test\r\n";
const PASSWORD: &str = "correct horse";

fn addr(s: &str) -> Address {
    Address::parse(s).expect("test address")
}

fn settings(tls: Tls) -> Settings {
    Settings {
        server: SERVER.into(),
        helo_name: "client.test".into(),
        tls,
        credentials: None,
        hold_on_deferral: false,
    }
}

fn with_credentials(tls: Tls) -> Settings {
    Settings {
        credentials: Some(Credentials {
            user: "alice".into(),
            password: PASSWORD.into(),
        }),
        ..settings(tls)
    }
}

/// A driver that writes the body when asked and keeps every other event.
struct Client {
    session: ClientSession,
    body: Vec<u8>,
    events: Vec<Event>,
}

impl Client {
    fn new(settings: Settings) -> Client {
        Client {
            session: ClientSession::new(settings),
            body: Vec::new(),
            events: Vec::new(),
        }
    }

    /// Greeted and past EHLO on a plain connection with `ehlo` as the server's reply.
    fn ready(ehlo: &str) -> Client {
        let mut c = Client::new(settings(Tls::Off));
        assert_eq!(c.hears(GREETING), "EHLO client.test\r\n");
        assert_eq!(c.hears(ehlo), "");
        assert_eq!(c.events(), [Event::Ready]);
        c
    }

    /// Feeds what the server says; returns what the client writes in answer.
    fn hears(&mut self, server: &str) -> String {
        self.session.receive(server.as_bytes());
        self.drain()
    }

    fn drain(&mut self) -> String {
        let mut out = self.session.take_output();
        while let Some(event) = self.session.poll_event() {
            out.extend(self.session.take_output());
            match event {
                Event::SendBody => {
                    out.extend(dot_stuff(&self.body));
                    self.session.body_sent();
                }
                other => self.events.push(other),
            }
            out.extend(self.session.take_output());
        }
        String::from_utf8(out).expect("commands are UTF-8")
    }

    fn send(&mut self, sender: Option<&str>, recipients: &[&str], body: &str) -> String {
        self.send_as(sender, recipients, body, false)
    }

    fn send_as(
        &mut self,
        sender: Option<&str>,
        recipients: &[&str],
        body: &str,
        reused: bool,
    ) -> String {
        let sender = sender.map(addr);
        let recipients: Vec<Address> = recipients.iter().map(|r| addr(r)).collect();
        self.body = body.as_bytes().to_vec();
        self.session.send_message(
            sender.as_ref(),
            &recipients,
            BodyFacts::of(body.as_bytes()),
            reused,
        );
        self.drain()
    }

    fn tls_up(&mut self) -> String {
        self.session.tls_established();
        self.drain()
    }

    /// The events so far; the client must have nothing left to write.
    fn events(&mut self) -> Vec<Event> {
        assert_eq!(self.drain(), "", "unexpected output");
        std::mem::take(&mut self.events)
    }

    /// The one event so far, which must be the outcomes of a transaction.
    fn outcomes(&mut self) -> (Vec<Outcome>, Replies) {
        match &mut self.events()[..] {
            [Event::Outcomes { outcomes, replies }] => {
                (std::mem::take(outcomes), std::mem::take(replies))
            }
            other => panic!("expected the outcomes alone, got {other:?}"),
        }
    }

    /// The one event so far, which must be a failure.
    fn failed(&mut self) -> Interrupted {
        match &self.events()[..] {
            [Event::Failed(interrupted)] => interrupted.clone(),
            other => panic!("expected a failure alone, got {other:?}"),
        }
    }
}

fn delivered(reply: &str) -> Outcome {
    Outcome::Delivered {
        reply: Some(reply.into()),
    }
}

fn failure(outcome: &Outcome) -> &Failure {
    match outcome {
        Outcome::Failed(f) => f,
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[test]
fn pipelined_batch_sends_mail_rcpts_and_data_in_one_write_then_the_body() {
    let mut c = Client::ready(EHLO_FULL);
    assert_eq!(
        c.send(
            Some("app@ublog.tech"),
            &["ann@example.org", "bob@example.org"],
            "Subject: x\r\n\r\n.dot\r\n"
        ),
        "MAIL FROM:<app@ublog.tech> SIZE=20\r\nRCPT TO:<ann@example.org>\r\n\
         RCPT TO:<bob@example.org>\r\nDATA\r\n"
    );
    assert_eq!(c.session.awaiting(), Some(Awaiting::Command("MAIL FROM")));
    assert_eq!(
        c.hears("250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.1.5 ok\r\n354 go ahead\r\n"),
        "Subject: x\r\n\r\n..dot\r\n.\r\n"
    );
    assert_eq!(c.session.awaiting(), Some(Awaiting::EndOfData));
    assert_eq!(c.hears("250 2.0.0 queued as 1\r\n"), "");
    let (outcomes, replies) = c.outcomes();
    assert_eq!(outcomes, vec![delivered("250 2.0.0 queued as 1"); 2]);
    assert_eq!(replies.rcpts.len(), 2);
    assert_eq!(replies.end_of_data.map(|r| r.code), Some(250));
    assert!(c.session.is_usable());
    assert_eq!(c.session.awaiting(), None);
}

#[test]
fn without_pipelining_commands_go_one_at_a_time() {
    let mut c = Client::ready(EHLO_BARE);
    assert_eq!(
        c.send(None, &["ann@example.org", "bob@example.org"], "hi"),
        "MAIL FROM:<>\r\n"
    );
    assert_eq!(c.hears("250 ok\r\n"), "RCPT TO:<ann@example.org>\r\n");
    assert_eq!(c.hears("250 ok\r\n"), "RCPT TO:<bob@example.org>\r\n");
    assert_eq!(c.hears("250 ok\r\n"), "DATA\r\n");
    assert_eq!(c.hears("354 go ahead\r\n"), "hi\r\n.\r\n");
    assert_eq!(c.hears("250 queued\r\n"), "");
    let (outcomes, _) = c.outcomes();
    assert_eq!(outcomes, vec![delivered("250 queued"); 2]);
}

#[test]
fn one_refused_recipient_fails_alone_and_the_others_are_delivered() {
    for ehlo in [EHLO_FULL, EHLO_BARE] {
        let mut c = Client::ready(ehlo);
        let mut wire = c.send(
            None,
            &["ann@example.org", "bob@example.org", "cid@example.org"],
            "x\r\n",
        );
        for reply in [
            "250 ok\r\n",
            "250 ok\r\n",
            "550 5.1.1 <bob@example.org>: no such user\r\n",
            "250 ok\r\n",
            "354 go\r\n",
            "250 2.0.0 queued\r\n",
        ] {
            wire.push_str(&c.hears(reply));
        }
        assert!(wire.ends_with("DATA\r\nx\r\n.\r\n"), "{wire}");
        let (outcomes, _) = c.outcomes();
        assert_eq!(outcomes[0], delivered("250 2.0.0 queued"));
        assert_eq!(outcomes[2], outcomes[0]);
        let bob = failure(&outcomes[1]);
        assert!(bob.permanent);
        assert_eq!(bob.kind, FailureKind::Reply(550));
        assert_eq!(bob.status, EnhancedStatus(5, 1, 1));
        assert_eq!(
            bob.reason,
            format!(
                "{SERVER}: RCPT TO:<bob@example.org> rejected: 550 5.1.1 <bob@example.org>: no such user"
            )
        );
    }
}

#[test]
fn all_recipients_refused_without_pipelining_sends_no_data() {
    let mut c = Client::ready(EHLO_BARE);
    c.send(None, &["bob@example.org"], "never sent\r\n");
    assert_eq!(c.hears("250 ok\r\n"), "RCPT TO:<bob@example.org>\r\n");
    assert_eq!(c.hears("550 5.1.1 no such user\r\n"), "", "no DATA");
    let (outcomes, replies) = c.outcomes();
    assert!(failure(&outcomes[0]).permanent);
    assert_eq!(replies.data, None);
    // The session is still good for the next message.
    assert!(c.session.is_usable());
    assert_eq!(c.send(None, &["ann@example.org"], "x"), "MAIL FROM:<>\r\n");
}

#[test]
fn all_recipients_refused_when_pipelining_ends_an_accepted_data_empty() {
    let mut c = Client::ready(EHLO_FULL);
    c.send(None, &["bob@example.org"], "never sent\r\n");
    // RFC 2920 §3.1: a server may accept the pipelined DATA though no recipient was; the
    // client ends it at once with nothing in it.
    assert_eq!(
        c.hears("250 ok\r\n550 5.1.1 no such user\r\n354 go\r\n"),
        ".\r\n"
    );
    assert_eq!(c.session.awaiting(), Some(Awaiting::Command("end of data")));
    assert_eq!(c.hears("554 5.5.1 no valid recipients\r\n"), "");
    let (outcomes, _) = c.outcomes();
    let f = failure(&outcomes[0]);
    assert_eq!(f.remote_reply.as_deref(), Some("550 5.1.1 no such user"));
}

#[test]
fn all_recipients_refused_when_pipelining_and_data_refused_sends_nothing_more() {
    let mut c = Client::ready(EHLO_FULL);
    c.send(None, &["bob@example.org"], "never sent\r\n");
    assert_eq!(
        c.hears("250 ok\r\n550 5.1.1 no such user\r\n503 5.5.1 no valid recipients\r\n"),
        ""
    );
    let (outcomes, _) = c.outcomes();
    assert_eq!(failure(&outcomes[0]).kind, FailureKind::Reply(550));
}

#[test]
fn refused_data_fails_every_accepted_recipient() {
    let mut c = Client::ready(EHLO_FULL);
    c.send(None, &["ann@example.org", "bob@example.org"], "x");
    assert_eq!(
        c.hears("250 ok\r\n250 ok\r\n250 ok\r\n451 4.3.0 try later\r\n"),
        ""
    );
    let (outcomes, _) = c.outcomes();
    for outcome in &outcomes {
        let f = failure(outcome);
        assert!(!f.permanent);
        assert_eq!(
            f.reason,
            format!("{SERVER}: DATA rejected: 451 4.3.0 try later")
        );
    }
}

#[test]
fn refusal_at_end_of_data_fails_every_accepted_recipient() {
    let mut c = Client::ready(EHLO_FULL);
    c.send(None, &["ann@example.org", "bob@example.org"], "x");
    c.hears("250 ok\r\n250 ok\r\n550 no\r\n354 go\r\n");
    c.hears("554 5.7.1 spam\r\n");
    let (outcomes, _) = c.outcomes();
    assert_eq!(
        failure(&outcomes[0]).reason,
        format!("{SERVER}: end of data rejected: 554 5.7.1 spam")
    );
    assert_eq!(
        failure(&outcomes[1]).reason,
        format!("{SERVER}: RCPT TO:<bob@example.org> rejected: 550 no")
    );
}

#[test]
fn reply_421_answers_every_later_command_and_the_session_is_spent() {
    let mut c = Client::ready(EHLO_BARE);
    c.send(None, &["ann@example.org", "bob@example.org"], "x");
    assert_eq!(c.hears("250 ok\r\n"), "RCPT TO:<ann@example.org>\r\n");
    // After 421 the server is gone: nothing more is written, and the 421 is every answer.
    assert_eq!(c.hears("421 4.3.2 shutting down\r\n"), "");
    let (outcomes, replies) = c.outcomes();
    assert_eq!(replies.rcpts.len(), 2);
    for (outcome, rcpt) in outcomes.iter().zip(["ann", "bob"]) {
        let f = failure(outcome);
        assert!(!f.permanent);
        assert_eq!(f.kind, FailureKind::Reply(421));
        assert_eq!(
            f.reason,
            format!("{SERVER}: RCPT TO:<{rcpt}@example.org> rejected: 421 4.3.2 shutting down")
        );
    }
    assert!(!c.session.is_usable());
    c.session.quit();
    assert_eq!(c.drain(), "", "no QUIT to a server that is closing");
    assert_eq!(c.events(), [Event::Closed]);
}

#[test]
fn reply_421_to_mail_on_a_fresh_session_fails_every_recipient() {
    let mut c = Client::ready(EHLO_FULL);
    c.send(None, &["ann@example.org", "bob@example.org"], "x");
    assert_eq!(c.hears("421 4.3.2 busy\r\n"), "");
    let (outcomes, _) = c.outcomes();
    assert_eq!(
        failure(&outcomes[1]).reason,
        format!("{SERVER}: MAIL FROM rejected: 421 4.3.2 busy")
    );
}

#[test]
fn reply_421_to_mail_on_a_reused_session_is_an_interruption_before_the_body() {
    for ehlo in [EHLO_FULL, EHLO_BARE] {
        let mut c = Client::ready(ehlo);
        c.send_as(None, &["ann@example.org"], "x", true);
        assert_eq!(c.hears("421 4.4.2 relay.test timeout exceeded\r\n"), "");
        let interrupted = c.failed();
        assert!(!interrupted.body_sent);
        assert_eq!(
            interrupted.failure.reason,
            format!(
                "{SERVER}: idle session closed rejected: 421 4.4.2 relay.test timeout exceeded"
            )
        );
        assert!(!c.session.is_usable());
    }
}

#[test]
fn starttls_required_but_not_offered_fails_before_anything_else_is_sent() {
    let mut c = Client::new(with_credentials(Tls::StartTls));
    assert_eq!(c.hears(GREETING), "EHLO client.test\r\n");
    assert_eq!(c.hears("250-relay.test\r\n250 AUTH PLAIN\r\n"), "");
    let interrupted = c.failed();
    assert_eq!(interrupted.failure.kind, FailureKind::Tls);
    assert_eq!(
        interrupted.failure.reason,
        format!("{SERVER}: STARTTLS is required but the server does not offer it")
    );
}

#[test]
fn starttls_refused_is_a_temporary_failure_of_the_server() {
    let mut c = Client::new(settings(Tls::StartTls));
    c.hears(GREETING);
    assert_eq!(
        c.hears("250-relay.test\r\n250 STARTTLS\r\n"),
        "STARTTLS\r\n"
    );
    c.hears("554 5.7.0 no TLS for you\r\n");
    let f = c.failed().failure;
    assert!(!f.permanent);
    assert_eq!(f.status, EnhancedStatus(4, 7, 0));
    assert_eq!(f.kind, FailureKind::Reply(554));
}

#[test]
fn bytes_after_the_starttls_reply_fail_the_session() {
    let mut c = Client::new(with_credentials(Tls::StartTls));
    c.hears(GREETING);
    c.hears("250-relay.test\r\n250 STARTTLS\r\n");
    // CVE-2011-0411: a reply injected in plaintext would be read as the first inside TLS.
    assert_eq!(
        c.hears("220 go ahead\r\n250-evil\r\n250 AUTH PLAIN\r\n"),
        ""
    );
    let f = c.failed().failure;
    assert_eq!(f.kind, FailureKind::Protocol);
    assert_eq!(
        f.reason,
        format!("{SERVER}: server sent data after its STARTTLS reply")
    );
    assert!(!c.session.is_tls());
}

#[test]
fn bytes_while_tls_is_being_set_up_fail_the_session() {
    let mut c = Client::new(settings(Tls::StartTls));
    c.hears(GREETING);
    c.hears("250-relay.test\r\n250 STARTTLS\r\n");
    c.hears("220 go ahead\r\n");
    assert_eq!(c.events(), [Event::StartTls]);
    assert_eq!(c.hears("250 injected\r\n"), "");
    assert_eq!(c.failed().failure.kind, FailureKind::Protocol);
}

#[test]
fn starttls_forgets_what_came_before_and_says_ehlo_again() {
    let mut c = Client::new(settings(Tls::StartTls));
    c.hears(GREETING);
    c.hears("250-relay.test\r\n250-PIPELINING\r\n250 STARTTLS\r\n");
    assert!(c.session.capabilities().pipelining);
    c.hears("220 go ahead\r\n");
    assert_eq!(c.events(), [Event::StartTls]);
    assert_eq!(c.session.awaiting(), None, "the driver shakes hands");
    assert_eq!(c.tls_up(), "EHLO client.test\r\n");
    assert!(!c.session.capabilities().pipelining, "RFC 3207 §4.2");
    assert_eq!(c.hears(EHLO_BARE), "");
    assert_eq!(c.events(), [Event::Ready]);
    assert!(c.session.is_tls());
    assert!(!c.session.is_authenticated());
}

#[test]
fn auth_plain_is_sent_after_tls_in_one_line() {
    let mut c = Client::new(with_credentials(Tls::Implicit));
    assert_eq!(c.hears(GREETING), "EHLO client.test\r\n");
    assert_eq!(
        c.hears("250-relay.test\r\n250 AUTH LOGIN PLAIN\r\n"),
        "AUTH PLAIN AGFsaWNlAGNvcnJlY3QgaG9yc2U=\r\n"
    );
    assert_eq!(c.session.awaiting(), Some(Awaiting::Command("AUTH PLAIN")));
    assert_eq!(c.hears("235 2.7.0 ok\r\n"), "");
    assert_eq!(c.events(), [Event::Ready]);
    assert!(c.session.is_authenticated());
}

#[test]
fn auth_login_sends_user_and_password_one_at_a_time() {
    let mut c = Client::new(with_credentials(Tls::Implicit));
    c.hears(GREETING);
    assert_eq!(
        c.hears("250-relay.test\r\n250 AUTH LOGIN\r\n"),
        "AUTH LOGIN\r\n"
    );
    assert_eq!(c.hears("334 VXNlcm5hbWU6\r\n"), "YWxpY2U=\r\n");
    assert_eq!(c.hears("334 UGFzc3dvcmQ6\r\n"), "Y29ycmVjdCBob3JzZQ==\r\n");
    assert_eq!(c.hears("235 ok\r\n"), "");
    assert_eq!(c.events(), [Event::Ready]);
    assert!(c.session.is_authenticated());
}

#[test]
fn refused_credentials_are_a_temporary_auth_failure_that_hides_the_password() {
    let mut c = Client::new(with_credentials(Tls::Implicit));
    c.hears(GREETING);
    c.hears("250-relay.test\r\n250 AUTH PLAIN\r\n");
    c.hears("535 5.7.8 authentication failed\r\n");
    let interrupted = c.failed();
    let f = interrupted.failure;
    assert!(!f.permanent);
    assert!(!interrupted.body_sent);
    assert_eq!(f.kind, FailureKind::Auth);
    assert_eq!(f.status, EnhancedStatus(4, 7, 8));
    assert_eq!(
        f.reason,
        format!(
            "{SERVER}: AUTH rejected: 535 5.7.8 authentication failed \
             (authentication failures are retried: check the relay credentials)"
        )
    );
    assert!(!f.reason.contains(PASSWORD));
}

#[test]
fn credentials_are_never_written_before_tls_is_established() {
    let mut c = Client::new(with_credentials(Tls::StartTls));
    let mut plaintext = c.hears(GREETING);
    plaintext.push_str(&c.hears("250-relay.test\r\n250-AUTH PLAIN LOGIN\r\n250 STARTTLS\r\n"));
    plaintext.push_str(&c.hears("220 ready\r\n"));
    assert_eq!(plaintext, "EHLO client.test\r\nSTARTTLS\r\n");
    assert_eq!(c.events(), [Event::StartTls]);
    // AUTH offered before TLS is forgotten: only what the server says inside TLS counts.
    assert_eq!(c.tls_up(), "EHLO client.test\r\n");
    assert_eq!(
        c.hears("250-relay.test\r\n250 AUTH PLAIN\r\n"),
        "AUTH PLAIN AGFsaWNlAGNvcnJlY3QgaG9yc2U=\r\n"
    );
}

#[test]
fn credentials_on_a_plain_connection_are_never_sent() {
    let mut c = Client::new(with_credentials(Tls::Off));
    c.hears(GREETING);
    assert_eq!(c.hears("250-relay.test\r\n250 AUTH PLAIN\r\n"), "");
    let f = c.failed().failure;
    assert_eq!(f.kind, FailureKind::Auth);
    assert_eq!(
        f.reason,
        format!("{SERVER}: credentials are set but the connection is not encrypted; AUTH not sent")
    );
}

#[test]
fn credentials_without_a_mechanism_we_know_fail_with_kind_auth() {
    let mut c = Client::new(with_credentials(Tls::Implicit));
    c.hears(GREETING);
    assert_eq!(c.hears("250-relay.test\r\n250 AUTH CRAM-MD5\r\n"), "");
    assert_eq!(c.failed().failure.kind, FailureKind::Auth);
}

#[test]
fn helo_fallback_only_on_a_plain_connection_without_credentials() {
    let mut c = Client::new(settings(Tls::Off));
    c.hears(GREETING);
    assert_eq!(
        c.hears("502 5.5.2 command not recognized\r\n"),
        "HELO client.test\r\n"
    );
    assert_eq!(c.hears("250 relay.test\r\n"), "");
    assert_eq!(c.events(), [Event::Ready]);
    assert_eq!(c.send(None, &["ann@example.org"], "x"), "MAIL FROM:<>\r\n");

    // A temporary refusal is not "EHLO unknown".
    let mut c = Client::new(settings(Tls::Off));
    c.hears(GREETING);
    assert_eq!(c.hears("451 4.3.0 later\r\n"), "");
    assert_eq!(c.failed().failure.kind, FailureKind::Reply(451));

    // HELO cannot offer STARTTLS or AUTH.
    for settings in [settings(Tls::StartTls), with_credentials(Tls::Implicit)] {
        let mut c = Client::new(settings);
        c.hears(GREETING);
        assert_eq!(c.hears("502 5.5.2 command not recognized\r\n"), "");
        let f = c.failed().failure;
        assert!(!f.permanent, "a fault of the server, retried");
        assert_eq!(
            f.reason,
            format!("{SERVER}: EHLO rejected: 502 5.5.2 command not recognized")
        );
    }
}

#[test]
fn refused_greeting_is_a_temporary_failure_and_nothing_is_written() {
    let mut c = Client::new(settings(Tls::Off));
    assert_eq!(c.session.awaiting(), Some(Awaiting::Greeting));
    assert_eq!(c.hears("554 5.3.2 go away\r\n"), "");
    let f = c.failed().failure;
    assert!(!f.permanent);
    assert_eq!(f.status, EnhancedStatus(4, 3, 2));
    assert_eq!(
        f.reason,
        format!("{SERVER}: greeting rejected: 554 5.3.2 go away")
    );
    assert_eq!(c.session.greeting().map(|g| g.code), Some(554));
}

fn capability_failure(ehlo: &str, recipients: &[&str], body: &str) -> Failure {
    let mut c = Client::ready(ehlo);
    assert_eq!(c.send(None, recipients, body), "", "nothing is sent");
    let (outcomes, replies) = c.outcomes();
    assert_eq!(outcomes.len(), recipients.len());
    assert_eq!(replies, Replies::default());
    assert!(
        c.session.is_usable(),
        "the session can take another message"
    );
    let f = failure(&outcomes[0]).clone();
    assert!(f.permanent);
    assert_eq!(f.kind, FailureKind::Capability);
    f
}

#[test]
fn a_utf8_address_needs_smtputf8() {
    let f = capability_failure(EHLO_BARE, &["jösé@example.org", "ann@example.org"], "x");
    assert_eq!(f.status, EnhancedStatus(5, 6, 7));
}

#[test]
fn an_8bit_body_needs_8bitmime() {
    let f = capability_failure(EHLO_BARE, &["ann@example.org"], "naïve");
    assert_eq!(f.status, EnhancedStatus(5, 6, 3));
}

#[test]
fn a_body_over_the_size_limit_is_not_sent() {
    let f = capability_failure(EHLO_FULL, &["ann@example.org"], &"x".repeat(1001));
    assert_eq!(f.status, EnhancedStatus(5, 3, 4));
    assert_eq!(
        f.reason,
        format!("{SERVER}: message of 1001 octets exceeds the server's SIZE limit of 1000")
    );
}

#[test]
fn mail_from_carries_the_parameters_the_message_needs() {
    let mut c = Client::ready(EHLO_FULL);
    assert!(c
        .send(Some("jösé@example.org"), &["ann@example.org"], "naïve")
        .starts_with("MAIL FROM:<jösé@example.org> BODY=8BITMIME SMTPUTF8 SIZE=6\r\n"));
}

#[test]
fn a_deferred_recipient_holds_back_the_whole_message_when_asked() {
    let mut c = Client::new(Settings {
        hold_on_deferral: true,
        ..settings(Tls::Off)
    });
    c.hears(GREETING);
    c.hears(EHLO_FULL);
    assert_eq!(c.events(), [Event::Ready]);
    assert_eq!(
        c.send(
            None,
            &["ann@example.org", "bob@example.org", "cid@example.org"],
            "x"
        ),
        "MAIL FROM:<> SIZE=1\r\n",
        "lock-step even though the server offers PIPELINING"
    );
    assert_eq!(c.hears("250 ok\r\n"), "RCPT TO:<ann@example.org>\r\n");
    assert_eq!(c.hears("250 ok\r\n"), "RCPT TO:<bob@example.org>\r\n");
    assert_eq!(c.hears("451 4.3.0 later\r\n"), "", "neither cid nor DATA");
    let (outcomes, replies) = c.outcomes();
    assert_eq!(replies.rcpts.len(), 2);
    for outcome in &outcomes {
        let f = failure(outcome);
        assert!(!f.permanent);
        assert_eq!(f.kind, FailureKind::Reply(451));
    }
    assert_eq!(
        failure(&outcomes[0]).reason,
        format!("{SERVER}: message held back: RCPT TO:<bob@example.org> rejected: 451 4.3.0 later")
    );
}

#[test]
fn rset_readies_the_session_for_the_next_message_and_quit_closes_it() {
    let mut c = Client::ready(EHLO_BARE);
    c.session.reset();
    assert_eq!(c.drain(), "RSET\r\n");
    assert_eq!(c.hears("250 ok\r\n"), "");
    assert_eq!(c.events(), [Event::Ready]);
    c.session.quit();
    assert_eq!(c.drain(), "QUIT\r\n");
    assert_eq!(c.hears("221 bye\r\n"), "");
    assert_eq!(c.events(), [Event::Closed]);
    assert!(!c.session.is_usable());
}

#[test]
fn refused_rset_ends_the_session() {
    let mut c = Client::ready(EHLO_BARE);
    c.session.reset();
    c.drain();
    c.hears("500 what\r\n");
    let f = c.failed().failure;
    assert!(!f.permanent);
    assert!(!c.session.is_usable());
}

#[test]
fn a_malformed_reply_is_a_protocol_failure() {
    for garbage in ["hello\r\n", "199 informational\r\n", "600 nonsense\r\n"] {
        let mut c = Client::ready(EHLO_BARE);
        c.send(None, &["ann@example.org"], "x");
        assert_eq!(c.hears(garbage), "");
        let interrupted = c.failed();
        assert!(!interrupted.body_sent);
        assert_eq!(interrupted.failure.kind, FailureKind::Protocol);
        assert!(
            interrupted
                .failure
                .reason
                .starts_with(&format!("{SERVER}: malformed reply: ")),
            "{}",
            interrupted.failure.reason
        );
    }
}

#[test]
fn a_connection_lost_after_the_body_says_the_server_may_have_the_message() {
    let mut c = Client::ready(EHLO_FULL);
    c.send(None, &["ann@example.org"], "x");
    c.hears("250 ok\r\n250 ok\r\n354 go\r\n");
    assert_eq!(c.session.awaiting(), Some(Awaiting::EndOfData));
    c.session.end_of_input();
    let interrupted = c.failed();
    assert!(interrupted.body_sent);
    assert_eq!(interrupted.failure.kind, FailureKind::Connect);
    assert_eq!(
        interrupted.failure.reason,
        format!(
            "{SERVER}: connection closed by the server \
             (after the end of data: the server may have taken the message)"
        )
    );

    // Before the body, nothing was delivered.
    let mut c = Client::ready(EHLO_FULL);
    c.send(None, &["ann@example.org"], "x");
    c.hears("250 ok\r\n");
    c.session.end_of_input();
    let interrupted = c.failed();
    assert!(!interrupted.body_sent);
    assert_eq!(
        interrupted.failure.reason,
        format!("{SERVER}: connection closed by the server")
    );
}

#[test]
fn a_body_that_could_not_be_written_counts_as_sent() {
    let mut c = Client::ready(EHLO_FULL);
    c.session
        .send_message(None, &[addr("ann@example.org")], BodyFacts::of(b"x"), false);
    c.session.take_output();
    c.session.receive(b"250 ok\r\n250 ok\r\n354 go\r\n");
    assert_eq!(c.session.poll_event(), Some(Event::SendBody));
    assert_eq!(c.session.awaiting(), None, "the driver writes the body");
    let lost = Failure::temporary(FailureKind::Connect, EnhancedStatus(4, 4, 2), "lost");
    c.session.abort(lost.clone());
    assert_eq!(
        c.session.poll_event(),
        Some(Event::Failed(Interrupted {
            failure: lost,
            body_sent: true
        }))
    );
}

#[test]
fn an_empty_recipient_list_is_settled_without_a_word() {
    let mut c = Client::ready(EHLO_FULL);
    assert_eq!(c.send(None, &[], "x"), "");
    let (outcomes, _) = c.outcomes();
    assert!(outcomes.is_empty());
}

/// One whole session as a driver runs it: a message once ready, RSET after its outcomes,
/// QUIT at the end of the script.
fn scripted_session(pieces: &[&[u8]]) -> (String, Vec<Event>) {
    let mut c = Client::new(settings(Tls::Off));
    let mut wire = String::new();
    let mut seen = Vec::new();
    let mut sent = false;
    for piece in pieces {
        c.session.receive(piece);
        wire.push_str(&c.drain());
        loop {
            let events = c.events();
            if events.is_empty() {
                break;
            }
            for event in events {
                match event {
                    Event::Ready if !sent => {
                        sent = true;
                        wire.push_str(&c.send(None, &["ann@example.org", "bob@example.org"], ".x"));
                    }
                    Event::Outcomes { .. } => {
                        c.session.reset();
                        wire.push_str(&c.drain());
                    }
                    _ => {}
                }
                seen.push(event);
            }
        }
    }
    c.session.quit();
    wire.push_str(&c.drain());
    (wire, seen)
}

#[test]
fn any_split_of_the_server_bytes_gives_the_same_result() {
    let server = "220 relay.test ESMTP\r\n\
                  250-relay.test\r\n250-PIPELINING\r\n250 SIZE 100\r\n\
                  250 ok\r\n250 ok\r\n550 5.1.1 no bob\r\n354 go\r\n250 2.0.0 queued\r\n\
                  250 reset\r\n";
    let bytes = server.as_bytes();
    let (whole, events) = scripted_session(&[bytes]);
    assert_eq!(
        whole,
        "EHLO client.test\r\n\
         MAIL FROM:<> SIZE=2\r\nRCPT TO:<ann@example.org>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n\
         ..x\r\n.\r\n\
         RSET\r\n\
         QUIT\r\n"
    );
    assert!(
        matches!(&events[..], [Event::Ready, Event::Outcomes { outcomes, .. }, Event::Ready]
            if matches!(outcomes[..], [Outcome::Delivered { .. }, Outcome::Failed(_)])),
        "{events:?}"
    );
    for i in 0..=bytes.len() {
        let (head, tail) = bytes.split_at(i);
        assert_eq!(
            scripted_session(&[head, tail]),
            (whole.clone(), events.clone()),
            "split at {i}"
        );
    }
    let singles: Vec<&[u8]> = bytes.chunks(1).collect();
    assert_eq!(scripted_session(&singles), (whole, events));
}

#[test]
fn a_reply_of_the_wrong_class_is_a_protocol_failure_not_a_delivery() {
    // 250 to DATA: taken at its word, the message would count as delivered unsent.
    let mut c = Client::ready(EHLO_FULL);
    c.send(None, &["ann@example.org"], "x");
    assert_eq!(c.hears("250 ok\r\n250 ok\r\n250 sure\r\n"), "");
    let interrupted = c.failed();
    assert!(!interrupted.body_sent);
    assert_eq!(interrupted.failure.kind, FailureKind::Protocol);
    assert_eq!(
        interrupted.failure.reason,
        format!("{SERVER}: unexpected reply to DATA: 250 sure")
    );

    // 354 to RCPT.
    let mut c = Client::ready(EHLO_BARE);
    c.send(None, &["ann@example.org"], "x");
    c.hears("250 ok\r\n");
    assert_eq!(c.hears("354 go\r\n"), "");
    assert_eq!(
        c.failed().failure.reason,
        format!("{SERVER}: unexpected reply to RCPT TO: 354 go")
    );
}

#[test]
fn whatever_answers_quit_closes_the_session() {
    for answer in ["221 bye\r\n", "354 what\r\n", "garbage\r\n"] {
        let mut c = Client::ready(EHLO_BARE);
        c.session.quit();
        assert_eq!(c.drain(), "QUIT\r\n");
        assert_eq!(c.hears(answer), "");
        assert_eq!(c.events(), [Event::Closed], "{answer:?}");
    }
}
