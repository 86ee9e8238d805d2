//! The client side of SMTP is shared with `mailer sendmail` and lives in [`crate::smtp`]; the
//! relay's modules keep reaching it by this name.

pub use crate::smtp::protocol::*;
