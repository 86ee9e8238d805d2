//! The one vocabulary of delivery results, a leaf every layer may use: an [`Outcome`] per
//! recipient, a [`Failure`] that says at once whether to retry and what went wrong
//! ([`FailureKind`]), and the RFC 3463 status for the DSN.

use std::fmt;

/// An RFC 3463 enhanced status code `class.subject.detail`, e.g. `5.1.1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct EnhancedStatus(pub u8, pub u16, pub u16);

impl EnhancedStatus {
    /// Parses `x.y.z` (RFC 3463 §2): class 2, 4 or 5; subject and detail up to three digits.
    pub fn parse(s: &str) -> Option<EnhancedStatus> {
        let mut it = s.splitn(3, '.');
        let class: u8 = it.next()?.parse().ok()?;
        let subject = it.next()?;
        let detail = it.next()?;
        let digits =
            |p: &str| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit());
        if !matches!(class, 2 | 4 | 5) || !digits(subject) || !digits(detail) {
            return None;
        }
        Some(EnhancedStatus(
            class,
            subject.parse().ok()?,
            detail.parse().ok()?,
        ))
    }

    pub fn is_permanent(&self) -> bool {
        self.0 == 5
    }
}

impl fmt::Display for EnhancedStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// The result of one delivery attempt for one recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted by the next hop or written to the mailbox; `reply` is the next hop's reply
    /// (for logs), if there was one.
    Delivered {
        reply: Option<String>,
    },
    Failed(Failure),
}

impl Outcome {
    /// The same failure for each of `n` recipients.
    pub fn all_failed(n: usize, failure: &Failure) -> Vec<Outcome> {
        vec![Outcome::Failed(failure.clone()); n]
    }
}

/// What went wrong, decided where it happened: metrics and logs read this, nothing parses
/// the reason text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// A relay host's name did not resolve.
    Dns,
    /// No connection, a broken one, or no answer in time.
    Connect,
    /// TLS could not be set up or verified, or STARTTLS was not offered.
    Tls,
    /// Our credentials were refused, or could not be offered safely.
    Auth,
    /// The next hop refused, with this reply code.
    Reply(u16),
    /// The next hop broke the protocol (a malformed reply, data pipelined past STARTTLS).
    Protocol,
    /// The message needs an extension the next hop lacks (SMTPUTF8, 8BITMIME, SIZE).
    Capability,
    /// Local delivery: the user, the mailbox, the alias table.
    Local,
    /// The header From does not align with the envelope sender and the action rejects that.
    Misaligned,
    /// The queue lifetime ended.
    Expired,
    /// Aliases loop or nest too deep.
    Loop,
    /// No match rule routes the recipient, or its action is not configured.
    Unrouted,
    /// Returned to the sender by the administrator.
    Administrative,
    /// Not a failure yet: still undelivered when the delay notice is due.
    Delayed,
}

impl FailureKind {
    /// The metrics label: `4xx` and `5xx` for refusals, else the kind's name.
    pub fn label(self) -> &'static str {
        match self {
            FailureKind::Dns => "dns",
            FailureKind::Connect => "connect",
            FailureKind::Tls => "tls",
            FailureKind::Auth => "auth",
            FailureKind::Reply(code) if code >= 500 => "5xx",
            FailureKind::Reply(_) => "4xx",
            FailureKind::Protocol => "protocol",
            FailureKind::Capability => "capability",
            FailureKind::Local => "local",
            FailureKind::Misaligned => "misaligned",
            FailureKind::Expired => "expired",
            FailureKind::Loop => "loop",
            FailureKind::Unrouted => "unrouted",
            FailureKind::Administrative => "administrative",
            FailureKind::Delayed => "delayed",
        }
    }

    /// Whether the relay's next hop is at fault (what `mailer_relay_failures_total` counts),
    /// rather than the message or this host.
    pub fn is_next_hop(self) -> bool {
        matches!(
            self,
            FailureKind::Dns
                | FailureKind::Connect
                | FailureKind::Tls
                | FailureKind::Auth
                | FailureKind::Reply(_)
                | FailureKind::Protocol
                | FailureKind::Capability
        )
    }
}

/// Why a delivery did not happen, classified once where the fact is known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    /// Permanent failures bounce now; temporary ones are retried until the queue lifetime ends.
    pub permanent: bool,
    /// The status for the DSN (`Status:` field).
    pub status: EnhancedStatus,
    /// The remote server's reply, verbatim (code and text, lines joined by a space), for the
    /// DSN's `Diagnostic-Code: smtp; …`. `None` when the failure was local or in transport.
    pub remote_reply: Option<String>,
    /// One line for logs and the queue's `last_error`, e.g.
    /// `smtp.example.net[192.0.2.1]: TLS certificate verification failed: name mismatch`.
    pub reason: String,
}

impl Failure {
    pub fn temporary(
        kind: FailureKind,
        status: EnhancedStatus,
        reason: impl Into<String>,
    ) -> Failure {
        Failure {
            kind,
            permanent: false,
            status,
            remote_reply: None,
            reason: reason.into(),
        }
    }

    pub fn permanent(
        kind: FailureKind,
        status: EnhancedStatus,
        reason: impl Into<String>,
    ) -> Failure {
        Failure {
            kind,
            permanent: true,
            status,
            remote_reply: None,
            reason: reason.into(),
        }
    }

    /// The same failure, but to be retried (with a 4.x.x status): a fault of the next hop's
    /// session, not a verdict on the message.
    pub fn made_temporary(mut self) -> Failure {
        self.permanent = false;
        self.status = EnhancedStatus(4, self.status.1, self.status.2);
        self
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}
