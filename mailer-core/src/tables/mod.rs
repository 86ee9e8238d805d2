//! Lookup tables named in the configuration's `[tables]`: aliases(5) files and
//! OpenSMTPD-format secrets files.

pub mod aliases;
pub mod secrets;
pub mod users;
