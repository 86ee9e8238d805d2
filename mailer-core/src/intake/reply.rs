//! SMTP replies (RFC 5321 §4.2) with enhanced status codes (RFC 2034, RFC 3463).

use std::fmt::Write as _;

use crate::outcome::EnhancedStatus;

/// One reply: a three-digit code, an optional enhanced status and one or more text lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub status: Option<EnhancedStatus>,
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

    pub fn is_positive(&self) -> bool {
        self.code < 400
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
}

/// Replies the session gives, in one place so codes stay consistent.
pub mod replies {
    use super::Reply;

    pub fn ok() -> Reply {
        Reply::status(250, 0, 0, "Ok")
    }
    pub fn syntax(text: &str) -> Reply {
        Reply::status(501, 5, 4, text)
    }
    pub fn unknown_command() -> Reply {
        Reply::status(500, 5, 2, "Command unrecognized")
    }
    pub fn line_too_long() -> Reply {
        Reply::status(500, 5, 6, "Command line too long")
    }
    pub fn bad_sequence(text: &str) -> Reply {
        Reply::status(503, 5, 1, text)
    }
    pub fn unknown_parameter(param: &str) -> Reply {
        Reply::status(555, 5, 4, format!("Unsupported parameter {param}"))
    }
    pub fn too_big(limit: u64) -> Reply {
        Reply::status(
            552,
            3,
            4,
            format!("Message size exceeds the limit of {limit} octets"),
        )
    }
    pub fn too_many_recipients() -> Reply {
        Reply::status(452, 5, 3, "Too many recipients")
    }
    pub fn relay_denied() -> Reply {
        Reply::status(550, 7, 1, "Relaying denied")
    }
    pub fn shutting_down() -> Reply {
        Reply::status(421, 3, 2, "Service shutting down, closing connection")
    }
    pub fn timeout() -> Reply {
        Reply::status(421, 4, 2, "Idle timeout, closing connection")
    }
    pub fn too_many_connections() -> Reply {
        Reply::status(421, 3, 2, "Too many connections, try again later")
    }
    pub fn bare_newline() -> Reply {
        Reply::status(
            550,
            6,
            0,
            "Message contains bare CR or LF; lines must end with CRLF",
        )
    }
    pub fn message_line_too_long(limit: usize) -> Reply {
        Reply::status(
            554,
            6,
            0,
            format!("Message has a line longer than {limit} octets"),
        )
    }
    pub fn queue_failed() -> Reply {
        Reply::status(451, 3, 0, "Local error in processing, try again later")
    }
    pub fn queue_full() -> Reply {
        Reply::status(452, 3, 1, "Insufficient system storage, try again later")
    }
    pub fn too_many_hops(received: usize) -> Reply {
        Reply::status(
            554,
            4,
            6,
            format!("Too many hops ({received} Received: header fields): mail loop"),
        )
    }
    pub fn too_many_errors() -> Reply {
        Reply::status(421, 7, 0, "Too many errors, closing connection")
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
    fn enhanced_status_follows_code() {
        assert_eq!(
            replies::relay_denied().to_bytes(),
            b"550 5.7.1 Relaying denied\r\n"
        );
    }

    #[test]
    fn control_characters_cannot_break_a_reply() {
        let r = Reply::new(250, None, "a\r\n250 injected");
        assert_eq!(r.to_bytes(), b"250 a  250 injected\r\n");
    }
}
