//! Policy: which action handles a recipient (match rules), how the envelope is rewritten for
//! relaying, and whether the header From aligns with the rewritten envelope (DMARC).

pub mod align;
pub mod rewrite;
pub mod router;

pub use router::Router;
