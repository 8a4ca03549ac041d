//! The hybrid logical clock (HLC) that gives every write its version, which is also the memcached CAS
//! token and the newest-wins order of replication.
//!
//! # Version layout (u64)
//!
//! ```text
//!  63                                16 15              0
//! +------------------------------------+-----------------+
//! |  physical time, unix milliseconds  | logical counter |
//! |             (48 bits)              |    (16 bits)    |
//! +------------------------------------+-----------------+
//! ```
//!
//! Versions compare as plain integers. 48 bits of milliseconds last until the year 10889. The counter
//! orders versions made within one millisecond (or while the wall clock is behind the newest version
//! seen); when it passes 0xffff it carries into the physical part, which is just `+ 1` on the u64,
//! so versions stay strictly increasing and the physical part runs at most slightly ahead.
//!
//! Unlike kumofs's ClockTime (seconds plus a Lamport counter, compared with a 5-second margin), the order
//! here is total and needs no agreement window: a node whose wall clock lags simply keeps counting
//! from the newest version it observed.
//!
//! The state machine reads no clock: callers pass `phys_ms` (see [`wall_ms`]).

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

/// Bits of the logical counter.
pub const LOGICAL_BITS: u32 = 16;

/// Largest physical part (ms) accepted from a peer or the wall clock: 2^47 ms, around the year 6429.
/// Versions beyond it are refused so a corrupt or hostile peer cannot push the clock to `u64::MAX`,
/// after which no strictly larger version would exist.
pub const MAX_PHYSICAL_MS: u64 = 1 << 47;

/// The physical part of a version, in unix milliseconds.
#[inline]
pub fn physical_ms(version: u64) -> u64 {
    version >> LOGICAL_BITS
}

/// The logical counter of a version.
#[inline]
pub fn logical(version: u64) -> u16 {
    (version & 0xffff) as u16
}

/// The smallest version of millisecond `phys_ms`.
#[inline]
pub fn version_at(phys_ms: u64) -> u64 {
    phys_ms.min(MAX_PHYSICAL_MS) << LOGICAL_BITS
}

/// The wall clock in unix milliseconds (0 if it is set before 1970). Kept outside [`Hlc`].
///
/// Read from the coarse clock (updated every scheduler tick, 1-4 ms) where there is one: a server
/// reads it for every version it stamps or observes, several times per write, and the precise
/// clock's cost showed in profiles. The clock only needs to follow real time roughly: within a
/// tick the logical counter orders versions, and nothing reads a version's time finer than that.
pub fn wall_ms() -> u64 {
    #[cfg(target_os = "linux")]
    {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `now` is a valid, writable timespec; the call writes only into it.
        if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut now) } == 0 {
            return u64::try_from(now.tv_sec).map_or(0, |secs| {
                secs * 1000 + u64::try_from(now.tv_nsec).unwrap_or(0) / 1_000_000
            });
        }
    }
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Whether `version` is one a correct clock can make (its physical part at most
/// [`MAX_PHYSICAL_MS`]): what [`Hlc::observe`] accepts.
#[inline]
pub fn plausible(version: u64) -> bool {
    physical_ms(version) <= MAX_PHYSICAL_MS
}

/// A version from a peer that no correct clock could have made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImplausibleVersion(pub u64);

impl fmt::Display for ImplausibleVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "version {:#x} is beyond the year 6429; ignored", self.0)
    }
}

impl std::error::Error for ImplausibleVersion {}

/// A hybrid logical clock: the last version it issued or observed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hlc {
    last: u64,
}

impl Hlc {
    /// A clock that has seen nothing yet.
    pub fn new() -> Self {
        Hlc { last: 0 }
    }

    /// The newest version issued or observed.
    pub fn last(&self) -> u64 {
        self.last
    }

    /// A new version, strictly greater than every version this clock issued or observed before.
    /// It is the wall time when that is ahead, else the last version plus one.
    pub fn now(&mut self, phys_ms: u64) -> u64 {
        let wall = version_at(phys_ms);
        self.last = if wall > self.last {
            wall
        } else {
            self.last.saturating_add(1)
        };
        self.last
    }

    /// Takes in a version seen on a message from a peer, so the next [`Hlc::now`] is newer than it.
    /// `phys_ms` lets the clock move to the wall time too if that is ahead of both.
    pub fn observe(&mut self, remote: u64, phys_ms: u64) -> Result<(), ImplausibleVersion> {
        if !plausible(remote) {
            return Err(ImplausibleVersion(remote));
        }
        self.last = self.last.max(remote).max(version_at(phys_ms));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T0: u64 = 1_764_000_000_000; // 2025-11, in ms

    #[test]
    fn layout_round_trips() {
        let v = (T0 << 16) | 7;
        assert_eq!(physical_ms(v), T0);
        assert_eq!(logical(v), 7);
        assert_eq!(version_at(T0), T0 << 16);
    }

    #[test]
    fn follows_the_wall_clock_and_counts_within_a_millisecond() {
        let mut c = Hlc::new();
        assert_eq!(c.now(T0), T0 << 16);
        assert_eq!(c.now(T0), (T0 << 16) | 1);
        assert_eq!(c.now(T0), (T0 << 16) | 2);
        assert_eq!(c.now(T0 + 1), (T0 + 1) << 16);
    }

    #[test]
    fn a_wall_clock_going_back_does_not_go_back() {
        let mut c = Hlc::new();
        let a = c.now(T0 + 1000);
        let b = c.now(T0);
        assert!(b > a);
        assert_eq!(physical_ms(b), T0 + 1000);
    }

    #[test]
    fn remote_far_ahead_still_gives_strictly_increasing_versions() {
        let mut c = Hlc::new();
        let before = c.now(T0);
        let remote = version_at(T0 + 86_400_000) | 5; // one day ahead
        c.observe(remote, T0).unwrap();
        let mut prev = before;
        for i in 0..1000 {
            let v = c.now(T0 + i / 10);
            assert!(v > prev && v > remote);
            prev = v;
        }
        assert_eq!(physical_ms(prev), T0 + 86_400_000);
    }

    #[test]
    fn logical_overflow_carries_into_the_physical_part() {
        let mut c = Hlc::new();
        c.observe(version_at(T0) | 0xfffe, T0).unwrap();
        assert_eq!(c.now(T0), version_at(T0) | 0xffff);
        let carried = c.now(T0);
        assert_eq!(carried, version_at(T0 + 1));
        assert_eq!(logical(carried), 0);
        assert!(c.now(T0 + 1) > carried);
    }

    #[test]
    fn implausible_remote_versions_are_refused() {
        let mut c = Hlc::new();
        c.now(T0);
        let before = c.last();
        assert_eq!(c.observe(u64::MAX, T0), Err(ImplausibleVersion(u64::MAX)));
        assert_eq!(c.last(), before);
        assert!(c.observe(version_at(MAX_PHYSICAL_MS), T0).is_ok());
        assert!(c.now(u64::MAX) > version_at(MAX_PHYSICAL_MS));
    }

    #[test]
    fn the_coarse_wall_clock_keeps_up_with_the_precise_one() {
        for _ in 0..100 {
            let precise = || {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0)
            };
            let before = precise();
            let coarse = wall_ms();
            let after = precise();
            assert!(
                coarse + 50 >= before && coarse <= after,
                "{before} <= {coarse} <= {after}"
            );
        }
    }

    #[test]
    fn wall_ms_is_after_2020() {
        assert!(wall_ms() > 1_577_836_800_000);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn versions_are_strictly_increasing_under_any_interleaving(
            steps in proptest::collection::vec((any::<bool>(), 0u64..5000, 0u64..(1 << 40)), 1..200)
        ) {
            let mut c = Hlc::new();
            let mut prev = 0u64;
            let mut seen_max = 0u64;
            for (is_observe, wall_offset, remote) in steps {
                let wall = T0 + wall_offset;
                if is_observe {
                    let r = version_at(T0) + remote;
                    c.observe(r, wall).unwrap();
                    seen_max = seen_max.max(r);
                } else {
                    let v = c.now(wall);
                    prop_assert!(v > prev && v > seen_max);
                    prop_assert!(physical_ms(v) >= wall);
                    prev = v;
                }
            }
        }
    }
}
