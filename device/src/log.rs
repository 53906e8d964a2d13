//! Minimal leveled logging to stderr (the server's only output channel besides the socket).

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
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

thread_local! {
    static GPU: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Names the GPU this thread works for (its event loop, engines, control socket): every line
/// the thread logs carries it, so the lines of several GPUs in one process can be told apart.
pub fn set_thread_gpu(name: &str) {
    GPU.with(|g| name.clone_into(&mut g.borrow_mut()));
}

/// The prefix naming this thread's GPU (`"gpu0: "`), empty if none was set.
pub fn gpu_prefix() -> String {
    GPU.with(|g| {
        let g = g.borrow();
        if g.is_empty() {
            String::new()
        } else {
            format!("{g}: ")
        }
    })
}

/// Default sustained rate of log lines per second (`--log-rate-limit`).
pub const DEFAULT_RATE: u32 = 20;
/// Default burst of log lines above the rate (`--log-burst`).
pub const DEFAULT_BURST: u32 = 200;

/// A token bucket: `rate` lines a second on average, at most `burst` at once; `rate` 0 lets
/// everything through. Lines it refuses are counted, and the next line it admits carries the
/// count, so the log says how much it lost.
#[derive(Debug)]
pub struct Bucket {
    rate: u32,
    burst: u32,
    tokens: f64,
    last: Option<Instant>,
    skipped: u64,
}

impl Bucket {
    /// A full bucket.
    pub const fn new(rate: u32, burst: u32) -> Bucket {
        Bucket {
            rate,
            burst,
            tokens: burst as f64,
            last: None,
            skipped: 0,
        }
    }

    /// One line at `now`: `None` if it is dropped, else the lines dropped since the last one
    /// admitted.
    pub fn admit(&mut self, now: Instant) -> Option<u64> {
        if self.rate == 0 {
            return Some(0);
        }
        if let Some(last) = self.last {
            let refill = now.saturating_duration_since(last).as_secs_f64() * f64::from(self.rate);
            self.tokens = (self.tokens + refill).min(f64::from(self.burst.max(1)));
        }
        self.last = Some(now);
        if self.tokens < 1.0 {
            self.skipped += 1;
            return None;
        }
        self.tokens -= 1.0;
        Some(std::mem::take(&mut self.skipped))
    }
}

static BUCKET: Mutex<Bucket> = Mutex::new(Bucket::new(DEFAULT_RATE, DEFAULT_BURST));
static SUPPRESSED: AtomicU64 = AtomicU64::new(0);

/// Sets the rate limit of the log: `rate` lines a second (0: no limit), bursts of `burst`.
pub fn set_rate_limit(rate: u32, burst: u32) {
    *BUCKET.lock().unwrap_or_else(PoisonError::into_inner) = Bucket::new(rate, burst);
}

/// Lines the rate limit dropped since the process started.
pub fn suppressed() -> u64 {
    SUPPRESSED.load(Ordering::Relaxed)
}

/// Asks the rate limit for one line: `None` if it must be dropped (it is counted), else the
/// number of lines dropped since the previous line printed.
pub fn admit() -> Option<u64> {
    let r = BUCKET
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .admit(Instant::now());
    if r.is_none() {
        SUPPRESSED.fetch_add(1, Ordering::Relaxed);
    }
    r
}

/// Prints one line at `level`, prefixed with the seconds since the server started and the name
/// of the thread's GPU ([`set_thread_gpu`]).
#[macro_export]
macro_rules! log {
    ($level:expr, $($arg:tt)*) => {
        if $crate::log::enabled($level) {
            if let Some(skipped) = $crate::log::admit() {
                if skipped > 0 {
                    eprintln!(
                        "vugpu {:>12.6} [Warn] {}{} log lines dropped by the rate limit \
                         (--log-rate-limit)",
                        $crate::log::elapsed(),
                        $crate::log::gpu_prefix(),
                        skipped
                    );
                }
                eprintln!(
                    "vugpu {:>12.6} [{:?}] {}{}",
                    $crate::log::elapsed(),
                    $level,
                    $crate::log::gpu_prefix(),
                    format_args!($($arg)*)
                );
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_admits_a_burst_then_the_rate_and_counts_the_rest() {
        let t0 = Instant::now();
        let mut b = Bucket::new(10, 3);
        for _ in 0..3 {
            assert_eq!(b.admit(t0), Some(0));
        }
        assert_eq!(b.admit(t0), None);
        assert_eq!(b.admit(t0), None);
        // 100 ms later one token is back; the line carries the two dropped before it.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(b.admit(t1), Some(2));
        assert_eq!(b.admit(t1), None);
        // A long pause refills at most the burst.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(b.admit(t2).is_some());
        }
        assert_eq!(b.admit(t2), None);
        // Rate 0: no limit.
        let mut free = Bucket::new(0, 0);
        for _ in 0..10_000 {
            assert_eq!(free.admit(t0), Some(0));
        }
    }
}
