//! The client side of SMTP, without IO: [`protocol`] holds the vocabulary as pure functions
//! (replies, EHLO capabilities, commands, dot-stuffing, per-recipient outcomes) and [`client`]
//! the session that sequences them. The relay's connections and `mailer sendmail` drive the
//! same session; they only move bytes, run TLS handshakes and keep time.

pub mod client;
pub mod protocol;

pub use client::{Awaiting, ClientSession, Event, Interrupted, Replies, Settings, Tls};
pub use protocol::{Capabilities, Reply};
