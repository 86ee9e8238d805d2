//! mailer-core: everything in the mailer relay that decides or parses.
//!
//! The modules follow the path a message takes:
//!
//! * [`intake`]: the sans-IO ESMTP server session (bytes in, replies and events out);
//! * [`policy`]: match rules (which action handles a recipient), envelope rewriting, alignment;
//! * [`queue`]: the durable spool and the retry schedule;
//! * [`delivery`]: the relay client, local mailboxes and bounces.
//!
//! Beside the path: [`smtp`] (the sans-IO SMTP client session that the relay and `mailer
//! sendmail` drive), [`config`] (the TOML configuration), [`tables`] (aliases and secrets),
//! [`check`] (deliverability of the sending domain), and the shared value types
//! [`address`] and [`time`].

pub mod address;
pub mod check;
pub mod config;
pub mod delivery;
pub mod diagnostic;
pub mod domain;
pub mod intake;
pub mod outcome;
pub mod policy;
pub mod queue;
pub mod smtp;
pub mod tables;
pub mod time;
