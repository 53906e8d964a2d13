//! Minimal leveled logging to stderr (the server's only output channel besides the socket).

use std::cell::RefCell;
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

/// Prints one line at `level`, prefixed with the seconds since the server started and the name
/// of the thread's GPU ([`set_thread_gpu`]).
#[macro_export]
macro_rules! log {
    ($level:expr, $($arg:tt)*) => {
        if $crate::log::enabled($level) {
            eprintln!(
                "vugpu {:>12.6} [{:?}] {}{}",
                $crate::log::elapsed(),
                $level,
                $crate::log::gpu_prefix(),
                format_args!($($arg)*)
            );
        }
    };
}
