//! Queue ids: unique, and sortable by arrival so a directory listing is the arrival order.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// 14 hex digits of microseconds since the epoch, then 6 of a per-process sequence: 20 octets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId(u128);

const SEQ_BITS: u32 = 24;

fn sequence() -> u32 {
    static SEQ: OnceLock<AtomicU32> = OnceLock::new();
    // A random start keeps ids of two processes started in the same microsecond apart.
    SEQ.get_or_init(|| AtomicU32::new(fastrand::u32(..)))
        .fetch_add(1, Ordering::Relaxed)
        & ((1 << SEQ_BITS) - 1)
}

impl QueueId {
    pub fn generate(now: SystemTime) -> QueueId {
        let micros = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0)
            & ((1 << 56) - 1);
        QueueId((micros << SEQ_BITS) | u128::from(sequence()))
    }

    pub fn parse(s: &str) -> Option<QueueId> {
        if s.len() != 20 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u128::from_str_radix(s, 16).ok().map(QueueId)
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:020X}", self.0)
    }
}

impl serde::Serialize for QueueId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for QueueId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        QueueId::parse(&s).ok_or_else(|| serde::de::Error::custom("invalid queue id"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn ids_are_unique_and_sort_by_time() {
        let t = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let a = QueueId::generate(t);
        let b = QueueId::generate(t);
        let c = QueueId::generate(t + Duration::from_micros(1));
        assert_ne!(a, b);
        assert!(a.to_string() < c.to_string() && b.to_string() < c.to_string());
        assert_eq!(QueueId::parse(&a.to_string()), Some(a));
        assert_eq!(a.to_string().len(), 20);
        assert_eq!(QueueId::parse("xyz"), None);
    }
}
