//! Minimal leveled logging to stderr (the server's only output channel besides the socket).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// Log levels, most severe first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Level {
    /// Errors only.
    Error = 0,
    /// Errors and warnings.
    Warn = 1,
    /// Connections, resets, configuration.
    Info = 2,
    /// Every message handled.
    Debug = 3,
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);

/// Sets the maximum level printed.
pub fn set_level(level: Level) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

/// Would a message at `level` be printed.
pub fn enabled(level: Level) -> bool {
    level as u8 <= LEVEL.load(Ordering::Relaxed)
}

static START: OnceLock<Instant> = OnceLock::new();

/// Starts the log clock (the first call wins; logging starts it otherwise).
pub fn start_clock() {
    START.get_or_init(Instant::now);
}

/// Seconds since [`start_clock`], the timestamp of every line.
pub fn elapsed() -> f64 {
    START.get_or_init(Instant::now).elapsed().as_secs_f64()
}

/// Prints one line at `level`, prefixed with the seconds since the server started.
#[macro_export]
macro_rules! log {
    ($level:expr, $($arg:tt)*) => {
        if $crate::log::enabled($level) {
            eprintln!(
                "vugpu {:>12.6} [{:?}] {}",
                $crate::log::elapsed(),
                $level,
                format_args!($($arg)*)
            );
        }
    };
}
