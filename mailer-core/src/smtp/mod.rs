//! SMTP without IO. [`reply`] is the one reply type of both sides; [`protocol`] holds the
//! client's vocabulary as pure functions (EHLO capabilities, commands, dot-stuffing, per-recipient outcomes) and [`client`]
//! the session that sequences them. The relay's connections and `mailer sendmail` drive the
//! same session; they only move bytes, run TLS handshakes and keep time.

pub mod client;
pub mod protocol;
pub mod reply;

pub use client::{Awaiting, ClientSession, Event, Interrupted, Replies, Settings, Tls};
pub use protocol::Capabilities;
pub use reply::Reply;
