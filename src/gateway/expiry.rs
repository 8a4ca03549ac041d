//! memcached expiry times as the gateway sends them to servers: absolute unix seconds.
//!
//! memcached reads an exptime of 0 as "never", up to 30 days as seconds from now, anything larger as
//! a unix time, and a negative one as "already expired". Servers only ever see the absolute form, so
//! every gateway of a cluster agrees on what a stored expiry means whatever its clock offset at the
//! time of the request.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::protocol::Exptime;

/// Largest relative exptime (30 days), as in memcached.
pub const MAX_RELATIVE: i64 = 60 * 60 * 24 * 30;

/// The absolute time servers store for an item that is already expired: any past instant will do;
/// 1 keeps 0 free for "never".
pub const EXPIRED: u32 = 1;

/// Seconds since the unix epoch.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Converts a client exptime to absolute unix seconds (0 = never) at time `now`.
pub fn absolute_exptime(exptime: Exptime, now: u64) -> u32 {
    if exptime == 0 {
        0
    } else if exptime < 0 {
        EXPIRED
    } else if exptime <= MAX_RELATIVE {
        clamp(now.saturating_add(exptime as u64))
    } else {
        clamp(exptime as u64)
    }
}

/// Seconds from `now` until the client's time (for `flush_all <delay>`), 0 when already past.
pub fn delay_seconds(exptime: Exptime, now: u64) -> u32 {
    match absolute_exptime(exptime, now) {
        0 => 0,
        at => clamp(u64::from(at).saturating_sub(now)),
    }
}

fn clamp(secs: u64) -> u32 {
    u32::try_from(secs).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn relative_absolute_never_and_expired() {
        assert_eq!(absolute_exptime(0, NOW), 0);
        assert_eq!(absolute_exptime(10, NOW), (NOW + 10) as u32);
        assert_eq!(
            absolute_exptime(MAX_RELATIVE, NOW),
            (NOW as i64 + MAX_RELATIVE) as u32
        );
        assert_eq!(
            absolute_exptime(MAX_RELATIVE + 1, NOW),
            (MAX_RELATIVE + 1) as u32
        );
        assert_eq!(absolute_exptime(NOW as i64 + 5, NOW), (NOW + 5) as u32);
        assert_eq!(absolute_exptime(-1, NOW), EXPIRED);
        assert_eq!(absolute_exptime(i64::MAX, NOW), u32::MAX);
    }

    #[test]
    fn flush_delays() {
        assert_eq!(delay_seconds(0, NOW), 0);
        assert_eq!(delay_seconds(7, NOW), 7);
        assert_eq!(delay_seconds(NOW as i64 + 3, NOW), 3);
        assert_eq!(delay_seconds(MAX_RELATIVE + 1, NOW), 0);
        assert_eq!(delay_seconds(-5, NOW), 0);
    }
}
