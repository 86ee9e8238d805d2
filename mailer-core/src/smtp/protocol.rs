//! The client side of SMTP as pure functions: reply classification, EHLO capabilities, the
//! pipelined transaction batch, dot-stuffing and AUTH encoding. No sockets, no clocks.

use base64::Engine;

use crate::address::Address;
use crate::outcome::{EnhancedStatus, Failure, FailureKind, Outcome};

pub use super::reply::Reply;

/// What the server announced in its EHLO reply (RFC 5321 §4.1.1.1 and the extension RFCs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub pipelining: bool,
    pub starttls: bool,
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    pub enhanced_status_codes: bool,
    /// `SIZE` was announced; `Some(0)` means no fixed limit (RFC 1870 §4).
    pub size: Option<u64>,
    pub auth_plain: bool,
    pub auth_login: bool,
}

impl Capabilities {
    /// Parses the text of a 250 EHLO reply: the first line is the greeting, each further
    /// line one keyword with its parameters. Unknown keywords are ignored.
    pub fn from_ehlo_text(text: &str) -> Capabilities {
        let mut caps = Capabilities::default();
        for line in text.lines().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            match keyword.to_ascii_uppercase().as_str() {
                "PIPELINING" => caps.pipelining = true,
                "STARTTLS" => caps.starttls = true,
                "8BITMIME" => caps.eight_bit_mime = true,
                "SMTPUTF8" => caps.smtputf8 = true,
                "ENHANCEDSTATUSCODES" => caps.enhanced_status_codes = true,
                "SIZE" => caps.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                "AUTH" => {
                    for mechanism in words {
                        match mechanism.to_ascii_uppercase().as_str() {
                            "PLAIN" => caps.auth_plain = true,
                            "LOGIN" => caps.auth_login = true,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        caps
    }

    /// PLAIN when offered (one round trip), else LOGIN.
    pub fn auth_mechanism(&self) -> Option<AuthMechanism> {
        if self.auth_plain {
            Some(AuthMechanism::Plain)
        } else if self.auth_login {
            Some(AuthMechanism::Login)
        } else {
            None
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMechanism {
    Plain,
    Login,
}

/// `AUTH PLAIN <base64(\0user\0password)>` with CRLF (RFC 4616, initial response per RFC 4954).
pub fn auth_plain_command(user: &str, password: &str) -> String {
    let mut raw = Vec::with_capacity(user.len() + password.len() + 2);
    raw.push(0);
    raw.extend_from_slice(user.as_bytes());
    raw.push(0);
    raw.extend_from_slice(password.as_bytes());
    format!(
        "AUTH PLAIN {}\r\n",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// One line of the LOGIN exchange: the base64 of a user name or password, with CRLF.
pub fn auth_login_line(value: &str) -> String {
    format!(
        "{}\r\n",
        base64::engine::general_purpose::STANDARD.encode(value.as_bytes())
    )
}

/// What the extensions a message needs depend on in its body, known without holding it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyFacts {
    /// Octets, as `SIZE=` declares them (before dot-stuffing).
    pub size: u64,
    /// An octet is above 127.
    pub eight_bit: bool,
}

impl BodyFacts {
    /// The facts of a body held in memory.
    pub fn of(body: &[u8]) -> BodyFacts {
        BodyFacts {
            size: body.len() as u64,
            eight_bit: !body.is_ascii(),
        }
    }
}

/// What a message needs from the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Requirements {
    /// An address is non-ASCII: SMTPUTF8 (RFC 6531).
    pub smtputf8: bool,
    /// The body has octets above 127: 8BITMIME (RFC 6152).
    pub eight_bit: bool,
    pub size: u64,
}

impl Requirements {
    pub fn of(sender: Option<&Address>, recipients: &[Address], body: BodyFacts) -> Requirements {
        Requirements {
            smtputf8: sender.is_some_and(Address::is_utf8)
                || recipients.iter().any(Address::is_utf8),
            eight_bit: body.eight_bit,
            size: body.size,
        }
    }

    /// Whether this server can take the message; the failure is permanent because another
    /// attempt at the same server cannot succeed.
    pub fn check(&self, caps: &Capabilities, server: &str) -> Result<(), Failure> {
        if self.smtputf8 && !caps.smtputf8 {
            return Err(Failure::permanent(
                FailureKind::Capability,
                EnhancedStatus(5, 6, 7),
                format!("{server}: message has non-ASCII addresses but the server does not offer SMTPUTF8"),
            ));
        }
        if self.eight_bit && !caps.eight_bit_mime {
            return Err(Failure::permanent(
                FailureKind::Capability,
                EnhancedStatus(5, 6, 3),
                format!(
                    "{server}: message has 8-bit content but the server does not offer 8BITMIME"
                ),
            ));
        }
        if let Some(limit) = caps.size.filter(|&l| l > 0) {
            if self.size > limit {
                return Err(Failure::permanent(
                    FailureKind::Capability,
                    EnhancedStatus(5, 3, 4),
                    format!(
                        "{server}: message of {} octets exceeds the server's SIZE limit of {limit}",
                        self.size
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// `MAIL FROM:<sender>` with the parameters the message needs and the server offers.
pub fn mail_from_command(
    sender: Option<&Address>,
    req: &Requirements,
    caps: &Capabilities,
) -> String {
    let mut cmd = match sender {
        Some(sender) => format!("MAIL FROM:<{sender}>"),
        None => "MAIL FROM:<>".to_string(),
    };
    if req.eight_bit && caps.eight_bit_mime {
        cmd.push_str(" BODY=8BITMIME");
    }
    if req.smtputf8 && caps.smtputf8 {
        cmd.push_str(" SMTPUTF8");
    }
    if caps.size.is_some() {
        cmd.push_str(&format!(" SIZE={}", req.size));
    }
    cmd.push_str("\r\n");
    cmd
}

pub fn rcpt_to_command(recipient: &Address) -> String {
    format!("RCPT TO:<{recipient}>\r\n")
}

/// MAIL, every RCPT and DATA in one buffer, for a single write to a PIPELINING server
/// (RFC 2920 §3.1: DATA is the last command of a group).
pub fn pipelined_batch(mail_from: &str, recipients: &[Address]) -> Vec<u8> {
    let mut batch = Vec::with_capacity(mail_from.len() + recipients.len() * 64 + 6);
    batch.extend_from_slice(mail_from.as_bytes());
    for rcpt in recipients {
        batch.extend_from_slice(rcpt_to_command(rcpt).as_bytes());
    }
    batch.extend_from_slice(b"DATA\r\n");
    batch
}

/// Dot-stuffing of a body fed a chunk at a time (RFC 5321 §4.5.2): a `.` goes before every
/// line that starts with `.`, also when the line starts a chunk, and [`DotStuffer::finish`]
/// ends the data with `.\r\n`, after a CRLF when the body does not end with one. A line
/// starts after every LF, bare or not, as the receiving side may count them.
#[derive(Clone, Debug)]
pub struct DotStuffer {
    /// The next octet starts a line.
    line_start: bool,
    /// What was fed so far ends with CRLF.
    ends_crlf: bool,
    /// The last octet fed was CR (a CRLF may straddle two chunks).
    last_cr: bool,
    empty: bool,
}

impl Default for DotStuffer {
    fn default() -> Self {
        DotStuffer::new()
    }
}

impl DotStuffer {
    pub fn new() -> DotStuffer {
        DotStuffer {
            line_start: true,
            ends_crlf: false,
            last_cr: false,
            empty: true,
        }
    }

    /// Appends the wire form of the next `chunk` to `out`: at most half as long again as the
    /// chunk (a dot per line of at least two octets).
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        let Some(&last) = chunk.last() else {
            return;
        };
        if self.line_start && chunk[0] == b'.' {
            out.push(b'.');
        }
        // Only lines that start with a dot need work: jump from one to the next.
        let mut start = 0;
        for lf in memchr::memmem::find_iter(chunk, b"\n.") {
            out.extend_from_slice(&chunk[start..=lf]);
            out.push(b'.');
            start = lf + 1;
        }
        out.extend_from_slice(&chunk[start..]);
        let cr_before_last = match chunk.len() {
            1 => self.last_cr,
            n => chunk[n - 2] == b'\r',
        };
        self.ends_crlf = last == b'\n' && cr_before_last;
        self.last_cr = last == b'\r';
        self.line_start = last == b'\n';
        self.empty = false;
    }

    /// What ends the data, after everything pushed.
    pub fn finish(&self) -> &'static [u8] {
        if self.empty || self.ends_crlf {
            b".\r\n"
        } else {
            b"\r\n.\r\n"
        }
    }
}

/// The whole wire form of a body already in memory: stuffed and ended with `.\r\n`.
pub fn dot_stuff(body: &[u8]) -> Vec<u8> {
    let mut stuffer = DotStuffer::new();
    let mut wire = Vec::with_capacity(body.len() + body.len() / 2 + 5);
    stuffer.push(body, &mut wire);
    wire.extend_from_slice(stuffer.finish());
    wire
}

/// The reply that ends a transaction whose recipients were accepted.
#[derive(Clone, Copy, Debug)]
pub enum Final<'a> {
    /// DATA itself was refused: nothing was sent.
    Data(&'a Reply),
    /// The reply to the end of data: the server's verdict on the message.
    EndOfData(&'a Reply),
}

/// The outcome for each recipient from the replies of one transaction: `mail` to MAIL FROM,
/// `rcpts` to each RCPT TO (in order), and `last` (`None` when no recipient was accepted, so
/// no data was sent).
pub fn transaction_outcomes(
    server: &str,
    recipients: &[Address],
    mail: &Reply,
    rcpts: &[Reply],
    last: Option<Final<'_>>,
) -> Vec<Outcome> {
    if !mail.is_positive() {
        let failure = mail.failure(&format!("{server}: MAIL FROM"));
        return Outcome::all_failed(recipients.len(), &failure);
    }
    let data_failure = last.and_then(|last| {
        let (what, reply) = match last {
            Final::Data(r) => ("DATA", r),
            Final::EndOfData(r) => ("end of data", r),
        };
        (!reply.is_positive()).then(|| reply.failure(&format!("{server}: {what}")))
    });
    let last = last.map(|f| match f {
        Final::Data(r) | Final::EndOfData(r) => r,
    });
    recipients
        .iter()
        .zip(rcpts)
        .map(|(rcpt, reply)| {
            if !reply.is_positive() {
                Outcome::Failed(reply.failure(&format!("{server}: RCPT TO:<{rcpt}>")))
            } else if let Some(failure) = &data_failure {
                Outcome::Failed(failure.clone())
            } else {
                Outcome::Delivered {
                    reply: last.map(Reply::verbatim),
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: u16, status: Option<(u8, u16, u16)>, text: &str) -> Reply {
        Reply {
            code,
            status: status.map(|(a, b, c)| EnhancedStatus(a, b, c)),
            lines: text.split('\n').map(str::to_string).collect(),
        }
    }

    fn addr(s: &str) -> Address {
        Address::parse(s).expect("test address")
    }

    fn wire(body: &[u8]) -> Vec<u8> {
        dot_stuff(body)
    }

    #[test]
    fn ehlo_capabilities_are_parsed_case_insensitively() {
        let caps = Capabilities::from_ehlo_text(
            "relay.example greets you\nPIPELINING\nsize 1000\n8BITMIME\nSMTPUTF8\nAUTH LOGIN plain\nSTARTTLS\nENHANCEDSTATUSCODES",
        );
        assert!(caps.pipelining && caps.eight_bit_mime && caps.smtputf8 && caps.starttls);
        assert!(caps.enhanced_status_codes);
        assert_eq!(caps.size, Some(1000));
        assert_eq!(caps.auth_mechanism(), Some(AuthMechanism::Plain));
        let login_only = Capabilities::from_ehlo_text("x\nAUTH LOGIN CRAM-MD5");
        assert_eq!(login_only.auth_mechanism(), Some(AuthMechanism::Login));
        assert_eq!(Capabilities::from_ehlo_text("x\nSIZE").size, Some(0));
        assert_eq!(Capabilities::from_ehlo_text("x").auth_mechanism(), None);
    }

    #[test]
    fn greeting_line_is_not_a_capability() {
        assert!(!Capabilities::from_ehlo_text("STARTTLS").starttls);
    }

    #[test]
    fn auth_plain_encodes_nul_separated_credentials() {
        assert_eq!(
            auth_plain_command("user", "pass"),
            "AUTH PLAIN AHVzZXIAcGFzcw==\r\n"
        );
        assert_eq!(auth_login_line("user"), "dXNlcg==\r\n");
    }

    #[test]
    fn dot_stuffing_doubles_leading_dots_and_terminates() {
        assert_eq!(wire(b"a\r\n.b\r\n..c\r\n"), b"a\r\n..b\r\n...c\r\n.\r\n");
        assert_eq!(wire(b".\r\n"), b"..\r\n.\r\n");
        assert_eq!(wire(b"no newline"), b"no newline\r\n.\r\n");
        assert_eq!(wire(b""), b".\r\n");
        assert_eq!(wire(b"a.b\r\n"), b"a.b\r\n.\r\n");
        assert_eq!(wire(b"x\r\n."), b"x\r\n..\r\n.\r\n");
    }

    #[test]
    fn dot_stuffing_fed_in_pieces_gives_the_same_wire_wherever_they_are_cut() {
        let bodies: [&[u8]; 6] = [
            b"a\r\n.b\r\n..c\r\n.\r\n",
            b".\r\n.",
            b"x\r\n.",
            b"bare\n.lf\r\r\n.\n\r\n",
            b"no newline",
            b"\r\n\r\n..\r",
        ];
        for body in bodies {
            let whole = wire(body);
            for i in 0..=body.len() {
                for j in i..=body.len() {
                    let mut stuffer = DotStuffer::new();
                    let mut got = Vec::new();
                    for piece in [&body[..i], &body[i..j], &body[j..]] {
                        stuffer.push(piece, &mut got);
                    }
                    got.extend_from_slice(stuffer.finish());
                    assert_eq!(got, whole, "{body:?} cut at {i} and {j}");
                }
            }
        }
    }

    #[test]
    fn mail_from_carries_needed_parameters() {
        let caps = Capabilities::from_ehlo_text("x\n8BITMIME\nSMTPUTF8\nSIZE 100000");
        let sender = addr("jösé@example.org");
        let req = Requirements::of(Some(&sender), &[], BodyFacts::of("é".as_bytes()));
        assert_eq!(
            mail_from_command(Some(&sender), &req, &caps),
            "MAIL FROM:<jösé@example.org> BODY=8BITMIME SMTPUTF8 SIZE=2\r\n"
        );
        let plain = Requirements::of(None, &[], BodyFacts::of(b"x"));
        assert_eq!(
            mail_from_command(None, &plain, &Capabilities::default()),
            "MAIL FROM:<>\r\n"
        );
    }

    #[test]
    fn missing_extensions_fail_permanently() {
        let req = Requirements::of(None, &[addr("ü@example.org")], BodyFacts::of(b"x"));
        let err = req.check(&Capabilities::default(), "s").unwrap_err();
        assert!(err.permanent);
        assert_eq!(err.status, EnhancedStatus(5, 6, 7));
        let req = Requirements::of(None, &[addr("u@example.org")], BodyFacts::of(&[0xC3, 0xA9]));
        assert_eq!(
            req.check(&Capabilities::default(), "s").unwrap_err().status,
            EnhancedStatus(5, 6, 3)
        );
        let caps = Capabilities::from_ehlo_text("x\nSIZE 10");
        let req = Requirements::of(None, &[], BodyFacts::of(&[b'a'; 11]));
        assert_eq!(
            req.check(&caps, "s").unwrap_err().status,
            EnhancedStatus(5, 3, 4)
        );
    }

    #[test]
    fn reply_status_comes_from_enhanced_code_or_basic_code() {
        let r = reply(550, Some((5, 7, 1)), "relaying denied");
        assert_eq!(r.dsn_status(), EnhancedStatus(5, 7, 1));
        assert_eq!(r.verbatim(), "550 5.7.1 relaying denied");
        assert_eq!(
            reply(451, None, "later").dsn_status(),
            EnhancedStatus(4, 3, 0)
        );
        // A class that contradicts the basic code is ignored.
        assert_eq!(
            reply(450, Some((5, 1, 1)), "x").dsn_status(),
            EnhancedStatus(4, 2, 1)
        );
        assert_eq!(reply(250, None, "a\nb").verbatim(), "250 a b");
    }

    #[test]
    fn outcomes_are_per_recipient() {
        let rcpts = [addr("a@x.org"), addr("b@x.org"), addr("c@x.org")];
        let ok = reply(250, Some((2, 1, 5)), "ok");
        let bad = reply(550, Some((5, 1, 1)), "no such user");
        let end = reply(250, Some((2, 0, 0)), "queued");
        let out = transaction_outcomes(
            "s",
            &rcpts,
            &ok,
            &[ok.clone(), bad.clone(), ok.clone()],
            Some(Final::EndOfData(&end)),
        );
        assert_eq!(
            out[0],
            Outcome::Delivered {
                reply: Some("250 2.0.0 queued".into())
            }
        );
        assert_eq!(out[2], out[0]);
        let Outcome::Failed(f) = &out[1] else {
            panic!("b must fail")
        };
        assert!(f.permanent);
        assert_eq!(f.remote_reply.as_deref(), Some("550 5.1.1 no such user"));
        assert_eq!(
            f.reason,
            "s: RCPT TO:<b@x.org> rejected: 550 5.1.1 no such user"
        );
    }

    #[test]
    fn mail_or_data_rejection_applies_to_accepted_recipients() {
        let rcpts = [addr("a@x.org"), addr("b@x.org")];
        let ok = reply(250, None, "ok");
        let busy = reply(421, Some((4, 3, 2)), "shutting down");
        for out in [
            transaction_outcomes("s", &rcpts, &busy, &[], None),
            transaction_outcomes(
                "s",
                &rcpts,
                &ok,
                &[ok.clone(), ok.clone()],
                Some(Final::Data(&busy)),
            ),
        ] {
            assert_eq!(out.len(), 2);
            for o in out {
                let Outcome::Failed(f) = o else {
                    panic!("must fail")
                };
                assert!(!f.permanent);
                assert_eq!(f.status, EnhancedStatus(4, 3, 2));
            }
        }
    }
}

#[cfg(test)]
mod fuzz_regressions {
    use super::*;

    #[test]
    fn verbatim_reply_never_holds_a_bare_cr() {
        // Found by the relay_reply fuzz target: `221 8\r-8BITMIME` kept its CR.
        let reply = Reply {
            code: 221,
            status: None,
            lines: vec!["8\r-8BITMIME".into(), "next".into()],
        };
        assert_eq!(reply.verbatim(), "221 8 -8BITMIME next");
    }
}
