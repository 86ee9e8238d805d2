pub mod certs;
pub mod daemon;
pub mod dns;
pub mod sink;
