//! Loopback test fixtures for mailer: an upstream SMTP sink, a test certificate authority, an
//! authoritative DNS server, an HTTPS policy server, a launcher for the real daemon, the
//! builder of its configuration, a raw SMTP client, and the world of a relay test.

pub mod certs;
pub mod config;
pub mod daemon;
pub mod dns;
pub mod https;
pub mod message;
pub mod queue;
pub mod sink;
pub mod smtp;
pub mod world;
