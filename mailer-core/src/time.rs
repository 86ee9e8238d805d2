//! Time formats mail needs, in UTC: RFC 5322 dates (Received, Date, DSN Arrival-Date) and the
//! asctime form of mbox `From ` lines. Time is always passed in, never read here; [`Clock`]
//! is how a driver that must read it lets a test hold the hands instead.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A monotonic time source: the system's, or a test's that it steps by hand.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Instant;
}

/// The system's monotonic clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// A broken-down UTC time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Civil {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    /// 0 = Thursday (1970-01-01 was one); index into [`DAYS`].
    weekday: usize,
}

impl Civil {
    pub fn from_system(t: SystemTime) -> Civil {
        Self::from_unix(unix_seconds(t))
    }

    pub fn from_unix(secs: i64) -> Civil {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        // Howard Hinnant's days-to-civil algorithm.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        Civil {
            year,
            month,
            day,
            hour: (rem / 3600) as u32,
            minute: (rem % 3600 / 60) as u32,
            second: (rem % 60) as u32,
            weekday: days.rem_euclid(7) as usize,
        }
    }

    fn weekday_name(&self) -> &'static str {
        DAYS[self.weekday]
    }

    fn month_name(&self) -> &'static str {
        MONTHS[(self.month - 1) as usize]
    }
}

/// Seconds since the Unix epoch (negative before it).
pub fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

/// The inverse of [`unix_seconds`].
pub fn from_unix_seconds(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// RFC 5322 §3.3 date-time, e.g. `Wed, 25 Nov 2026 13:13:37 +0000`.
pub fn rfc5322(t: SystemTime) -> String {
    let c = Civil::from_system(t);
    format!(
        "{}, {} {} {} {:02}:{:02}:{:02} +0000",
        c.weekday_name(),
        c.day,
        c.month_name(),
        c.year,
        c.hour,
        c.minute,
        c.second
    )
}

/// asctime(3) form used on mbox `From ` lines, e.g. `Wed Nov 25 13:13:37 2026`.
pub fn asctime(t: SystemTime) -> String {
    let c = Civil::from_system(t);
    format!(
        "{} {} {:2} {:02}:{:02}:{:02} {}",
        c.weekday_name(),
        c.month_name(),
        c.day,
        c.hour,
        c.minute,
        c.second,
        c.year
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        let t = from_unix_seconds(1_795_612_417); // 2026-11-25 13:13:37 UTC
        assert_eq!(rfc5322(t), "Wed, 25 Nov 2026 13:13:37 +0000");
        assert_eq!(asctime(t), "Wed Nov 25 13:13:37 2026");
        assert_eq!(rfc5322(UNIX_EPOCH), "Thu, 1 Jan 1970 00:00:00 +0000");
        assert_eq!(
            asctime(from_unix_seconds(951_782_400)),
            "Tue Feb 29 00:00:00 2000"
        );
    }
}
