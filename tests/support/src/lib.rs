pub mod certs; pub mod sink; pub mod dns; pub mod daemon;
pub mod https;
