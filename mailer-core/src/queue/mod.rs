//! The queue: the durable spool of accepted messages and the state of each recipient.

pub mod admit;
pub mod id;
pub mod spool;

pub use id::QueueId;
pub mod scheduler;
pub use spool::{Corrupt, Envelope, LoadReport, Recipient, RecipientState, Spool};
