//! Relaying to a smarthost pool: an SMTP client (RFC 5321 with STARTTLS 3207, AUTH 4954,
//! PIPELINING 2920, 8BITMIME 6152, SMTPUTF8 6531) and a pool that spreads messages over the
//! members' addresses, fails over at once, and keeps authenticated connections for reuse.
//!
//! Every protocol decision is the SMTP client session's ([`crate::smtp`]); [`client`] drives
//! it over a socket (connect, TLS handshakes, timeouts); [`tls`] builds the verifier and words
//! its errors; [`pool`] chooses addresses; [`action`] rewrites and checks alignment first.

pub mod action;
pub mod client;
pub mod pool;
pub mod tls;

use std::time::Duration;

use rustls_pki_types::CertificateDer;

pub use action::{RelayDelivery, RelayResult};
pub use pool::{MemberFault, MemberStatus, Pool, PoolResult, Resolve, StaticResolver};

/// How the connection to a member is secured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Security {
    /// Plain TCP, then STARTTLS, which is required: no STARTTLS offered means failure.
    StartTls,
    /// TLS from the first byte (RFC 8314, usually port 465).
    Implicit,
    /// No TLS at all; AUTH is never sent on such a connection.
    Plain,
}

/// One smarthost of the pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The name used for SNI and certificate verification, or an IP address (no SNI; the
    /// certificate must carry the IP as a subject alternative name).
    pub host: String,
    pub port: u16,
    pub security: Security,
    /// What this member is given at AUTH, from its own URL's label: a pool never hands one
    /// host's password to another.
    pub credentials: Option<Credentials>,
}

/// AUTH credentials, as the secrets table holds them. `Debug` hides the password.
pub use crate::tables::secrets::Credentials;

/// Everything the relay needs, filled from the configuration.
#[derive(Clone, Debug)]
pub struct RelaySettings {
    /// Our name in EHLO/HELO.
    pub helo_name: String,
    pub members: Vec<Member>,
    /// Trust anchors added to the web PKI roots (the `ca_file`).
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// TCP connect plus the greeting.
    pub connect_timeout: Duration,
    /// Each reply, except the one to the end of data.
    pub command_timeout: Duration,
    /// The reply to the end of data.
    pub data_end_timeout: Duration,
    /// Open connections to one member address (active and idle).
    pub max_connections_per_member: usize,
    /// Open connections to all members together.
    pub max_connections_total: usize,
    /// How long an address that failed to connect, greet or handshake is skipped.
    pub breaker_backoff: Duration,
}

impl RelaySettings {
    /// Settings with the RFC 5321 §4.5.3.2 timeouts (5 minutes per reply, 10 for the end of
    /// data), 2 minutes to connect and greet, 4 connections per address, 16 in total and a
    /// 60 second breaker.
    pub fn new(helo_name: impl Into<String>, members: Vec<Member>) -> RelaySettings {
        RelaySettings {
            helo_name: helo_name.into(),
            members,
            extra_roots: Vec::new(),
            connect_timeout: Duration::from_secs(120),
            command_timeout: Duration::from_secs(300),
            data_end_timeout: Duration::from_secs(600),
            max_connections_per_member: 4,
            max_connections_total: 16,
            breaker_backoff: Duration::from_secs(60),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_debug_hides_the_password() {
        let c = Credentials {
            user: "alice".into(),
            password: "s3cret".into(),
        };
        let shown = format!("{c:?}");
        assert!(shown.contains("alice"));
        assert!(!shown.contains("s3cret"));
    }
}
