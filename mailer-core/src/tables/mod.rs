//! Lookup tables named in the configuration's `[tables]`: aliases(5) files and
//! OpenSMTPD-format secrets files, and address lists for match rules.

pub mod addresses;
pub mod aliases;
pub mod secrets;
pub mod users;
