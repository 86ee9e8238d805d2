//! Loopback test fixtures for mailer: an upstream SMTP sink, a test certificate authority, an
//! authoritative DNS server, an HTTPS policy server and a launcher for the real daemon.

pub mod certs;
pub mod daemon;
pub mod dns;
pub mod https;
pub mod sink;
