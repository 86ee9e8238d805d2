//! The replies the intake session gives, in one place so codes stay consistent; the type is
//! the one [`crate::smtp::Reply`] both sides use.

pub use crate::smtp::Reply;

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
    fn enhanced_status_follows_code() {
        assert_eq!(
            replies::relay_denied().to_bytes(),
            b"550 5.7.1 Relaying denied\r\n"
        );
    }
}
