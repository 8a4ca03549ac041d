//! Logging for the daemons: lines on stderr with a UTC timestamp and a level. `-v` turns on the
//! informational lines; warnings and errors are always printed. Deliberately tiny: a daemon logs
//! membership changes and failures, never per-request events.

use std::sync::atomic::{AtomicBool, Ordering};

static VERBOSE: AtomicBool = AtomicBool::new(false);

/// Turns informational lines on or off (`-v`).
pub fn set_verbose(on: bool) {
    VERBOSE.store(on, Ordering::Relaxed);
}

pub fn verbose() -> bool {
    VERBOSE.load(Ordering::Relaxed)
}

/// Writes one line: `2026-11-25 04:13:29.123 LEVEL message`.
pub fn write(level: &str, message: std::fmt::Arguments<'_>) {
    let ms = crate::cluster::clock::wall_ms();
    let secs = ms / 1000;
    let (h, m, s) = (secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    eprintln!("{h:02}:{m:02}:{s:02}.{:03} {level} {message}", ms % 1000);
}

/// An informational line, printed with `-v`.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => {
        if $crate::cli::log::verbose() {
            $crate::cli::log::write("INFO", format_args!($($arg)*));
        }
    };
}

/// A warning, always printed.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => {
        $crate::cli::log::write("WARN", format_args!($($arg)*));
    };
}
