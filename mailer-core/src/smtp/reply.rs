//! SMTP replies (RFC 5321 §4.2) with enhanced status codes (RFC 2034, RFC 3463): the one
//! type both sides use. The server builds and writes them; the client reads them and turns
//! a refusal into a [`Failure`].

use std::fmt::Write as _;

use crate::outcome::{EnhancedStatus, Failure, FailureKind};

/// Reads replies out of the bytes a server sent, as they arrive in any split: what both
/// client sessions (the relay's and the probe's) read with.
#[derive(Default)]
pub struct ReplyReader {
    receiver: smtp_proto::response::parser::ResponseReceiver,
    input: Vec<u8>,
}

impl ReplyReader {
    /// Bytes from the server.
    pub fn push(&mut self, bytes: &[u8]) {
        self.input.extend_from_slice(bytes);
    }

    /// The next complete reply; `None` when more bytes are needed; an error (what is wrong)
    /// for bytes that are no reply, or a code outside 200–599.
    pub fn next_reply(&mut self) -> Option<Result<Reply, String>> {
        let mut bytes = self.input.iter();
        let parsed = self.receiver.parse(&mut bytes);
        let used = self.input.len() - bytes.len();
        self.input.drain(..used);
        match parsed {
            Ok(response) => {
                self.receiver.reset();
                if !(200..600).contains(&response.code) {
                    return Some(Err(format!("code {}", response.code)));
                }
                Some(Ok(Reply::from_proto(response)))
            }
            Err(smtp_proto::Error::NeedsMoreData { .. }) => None,
            Err(e) => Some(Err(format!("{e:?}"))),
        }
    }

    /// Whether bytes wait that no reply has used yet (after a STARTTLS reply, plaintext that
    /// must not be trusted once TLS is up).
    pub fn has_unread(&self) -> bool {
        !self.input.is_empty()
    }

    /// Forgets everything: what was read before a TLS handshake counts for nothing after it.
    pub fn clear(&mut self) {
        *self = ReplyReader::default();
    }
}

/// One reply: a three-digit code, an optional enhanced status and one or more text lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// The enhanced status code, when there is one (RFC 2034).
    pub status: Option<EnhancedStatus>,
    /// The text after code and enhanced status, one entry per line of a multi-line reply.
    pub lines: Vec<String>,
}

impl Reply {
    pub fn new(code: u16, status: Option<EnhancedStatus>, text: impl Into<String>) -> Reply {
        Reply {
            code,
            status,
            lines: vec![text.into()],
        }
    }

    /// A reply with an enhanced status `class.subject.detail`; the class is the code's first digit.
    pub fn status(code: u16, subject: u16, detail: u16, text: impl Into<String>) -> Reply {
        let class = (code / 100) as u8;
        Reply::new(code, Some(EnhancedStatus(class, subject, detail)), text)
    }

    /// Builds a reply from what `smtp_proto::response::parser::ResponseReceiver` produced.
    pub fn from_proto(response: smtp_proto::Response<String>) -> Reply {
        let [class, subject, detail] = response.esc;
        let status = match class {
            2 | 4 | 5 => Some(EnhancedStatus(class, subject.into(), detail.into())),
            _ => None,
        };
        Reply {
            code: response.code,
            status,
            lines: response.message.split('\n').map(str::to_string).collect(),
        }
    }

    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    pub fn is_intermediate(&self) -> bool {
        (300..400).contains(&self.code)
    }

    pub fn is_permanent_failure(&self) -> bool {
        self.code >= 500
    }

    /// The text lines joined by `\n`, as a multi-line reply's keywords are read (EHLO).
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }

    /// Appends the wire form: `code-` continuation lines, `code ` on the last, CRLF each.
    /// Text is sanitised so a reply is always one well-formed reply whatever it quotes.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let mut s = String::new();
        let last = self.lines.len().saturating_sub(1);
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            let _ = write!(s, "{}{}", self.code, sep);
            if let Some(st) = self.status {
                let _ = write!(s, "{st} ");
            }
            s.extend(line.chars().map(|c| if c.is_control() { ' ' } else { c }));
            s.push_str("\r\n");
        }
        if self.lines.is_empty() {
            let _ = write!(s, "{} \r\n", self.code);
        }
        out.extend_from_slice(s.as_bytes());
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.write_to(&mut v);
        v
    }

    /// The reply as the server sent it, lines joined by a space: `550 5.1.1 no such user`.
    pub fn verbatim(&self) -> String {
        let mut out = self.code.to_string();
        if let Some(status) = self.status {
            out.push(' ');
            out.push_str(&status.to_string());
        }
        for line in self.lines.iter().flat_map(|l| l.lines()) {
            out.push(' ');
            // A bare CR inside a line would survive into logs and DSNs.
            out.extend(
                line.trim_end()
                    .chars()
                    .map(|c| if c.is_control() { ' ' } else { c }),
            );
        }
        out
    }

    /// The status for a DSN: the server's enhanced code when its class agrees with the basic
    /// code, else one derived from the basic code (RFC 3463 §3).
    pub fn dsn_status(&self) -> EnhancedStatus {
        let class = (self.code / 100) as u8;
        if let Some(status) = self.status.filter(|s| s.0 == class) {
            return status;
        }
        match self.code {
            421 => EnhancedStatus(4, 4, 2),
            450 => EnhancedStatus(4, 2, 1),
            451 => EnhancedStatus(4, 3, 0),
            452 => EnhancedStatus(4, 3, 1),
            535 => EnhancedStatus(5, 7, 8),
            550 => EnhancedStatus(5, 1, 1),
            551 => EnhancedStatus(5, 1, 6),
            552 => EnhancedStatus(5, 3, 4),
            553 => EnhancedStatus(5, 1, 3),
            _ if class == 4 => EnhancedStatus(4, 0, 0),
            _ => EnhancedStatus(5, 0, 0),
        }
    }

    /// The failure this negative reply means; `context` names the server and the command,
    /// e.g. `smtp.example.net[192.0.2.1]: RCPT TO:<a@b>`.
    pub fn failure(&self, context: &str) -> Failure {
        let verbatim = self.verbatim();
        Failure {
            kind: FailureKind::Reply(self.code),
            permanent: self.is_permanent_failure(),
            status: self.dsn_status(),
            reason: format!("{context} rejected: {verbatim}"),
            remote_reply: Some(verbatim),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiline_reply_uses_dash_then_space() {
        let r = Reply {
            code: 250,
            status: None,
            lines: vec!["mx.example".into(), "PIPELINING".into(), "SIZE 10".into()],
        };
        assert_eq!(
            r.to_bytes(),
            b"250-mx.example\r\n250-PIPELINING\r\n250 SIZE 10\r\n"
        );
    }

    #[test]
    fn control_characters_cannot_break_a_reply() {
        let r = Reply::new(250, None, "a\r\n250 injected");
        assert_eq!(r.to_bytes(), b"250 a  250 injected\r\n");
    }

    #[test]
    fn what_is_written_reads_back_the_same() {
        let r = Reply {
            code: 550,
            status: Some(EnhancedStatus(5, 1, 1)),
            lines: vec!["no such user".into(), "see the docs".into()],
        };
        let bytes = r.to_bytes();
        let mut receiver = smtp_proto::response::parser::ResponseReceiver::default();
        let mut iter = bytes.iter();
        let parsed = receiver.parse(&mut iter).expect("a whole reply");
        assert_eq!(Reply::from_proto(parsed), r);
        assert_eq!(r.verbatim(), "550 5.1.1 no such user see the docs");
    }

    #[test]
    fn the_reader_gives_the_same_replies_for_any_split_and_keeps_what_follows() {
        let wire = b"250-mx.example\r\n250-PIPELINING\r\n250 SIZE 1000\r\n220 2.0.0 go\r\nLEFT";
        for cut in 0..wire.len() {
            let mut r = ReplyReader::default();
            let mut got = Vec::new();
            for part in [&wire[..cut], &wire[cut..]] {
                r.push(part);
                // Two replies are awaited; what follows the second is not read as one.
                while got.len() < 2 {
                    let Some(reply) = r.next_reply() else { break };
                    got.push(reply.expect("well formed"));
                }
            }
            assert_eq!(got.len(), 2, "cut at {cut}");
            assert_eq!(got[0].lines, ["mx.example", "PIPELINING", "SIZE 1000"]);
            assert_eq!(
                (got[1].code, got[1].status),
                (220, Some(EnhancedStatus(2, 0, 0)))
            );
            assert!(
                r.has_unread(),
                "plaintext after the 220 is kept to be noticed"
            );
            r.clear();
            assert!(!r.has_unread());
        }
    }

    #[test]
    fn the_reader_refuses_a_code_outside_the_reply_range() {
        let mut r = ReplyReader::default();
        r.push(b"199 too low\r\n");
        assert!(matches!(r.next_reply(), Some(Err(e)) if e.contains("199")));
    }
}
