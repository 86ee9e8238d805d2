//! Intake: the ESMTP server session that receives mail from local clients.
//!
//! [`session::Session`] is the protocol as a state machine fed bytes; [`data`] reads the
//! dot-stuffed DATA stream; [`reply`] renders replies. The daemon drives a session over a
//! socket; the tests and fuzzers drive the same code directly.
//! [`sendmail`] decides sendmail(8) submissions: options, message preparation, sysexits;
//! [`offline`] is the format of the submissions it keeps while the daemon is down, and how
//! the daemon receives them.

pub mod data;
pub mod offline;
pub mod reply;
pub mod sendmail;
pub mod session;

pub use data::BareNewlines;
pub use reply::Reply;
pub use session::{
    AcceptedRecipient, Event, Incoming, Peer, QueueRefused, RecipientPolicy, Session,
    SessionConfig, Submitter, CONTENT_CHUNK,
};
