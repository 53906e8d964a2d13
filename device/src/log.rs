//! The server's log: `tracing` events, written to stderr by a `tracing-subscriber` fmt layer.
//!
//! Every crate of the workspace logs with the `tracing` macros (`tracing::info!`, ...); only the
//! `vugpu` binary installs a subscriber ([`init`]). A line looks like
//!
//! ```text
//! vugpu     12.345678 [Info] gpu{name=gpu1}:client{id=2}: client 2 disconnected (closed); 812 messages handled
//! ```
//!
//! seconds since the server started, the level (`[Error]`, `[Warn]`, `[Info]`, `[Debug]`:
//! scripts grep them), then the spans the event happened in, outermost first, and the message
//! with any fields. Each GPU's threads (event loop, engines, control socket) run inside a
//! [`gpu_span`], and the event loop enters the client's [`client_span`] while it handles that
//! client's messages, so one process serving several GPUs says which GPU, and which session,
//! speaks. The spans are at ERROR level so that any level that lets a line through keeps them.
//!
//! What is printed: `--log-level` (default `info`), or the `RUST_LOG` environment variable when
//! it is set (the `EnvFilter` syntax: `RUST_LOG=info,vugpu_protocol=debug`, or
//! `RUST_LOG='info,[gpu{name=gpu1}]=debug'` for one GPU's debug lines; keep a global level in
//! it, or the lines of the other crates lose their GPU span). A filtered-out event costs a
//! load and a compare at its call site, nothing more.
//!
//! Lines are rate limited ([`RateLimit`], `--log-rate-limit`, `--log-burst`): a client that makes
//! the server warn in a loop cannot flood the disk. Dropped lines are counted ([`suppressed`],
//! `vugpu stats`: `log_lines_dropped`) and the next line printed is preceded by one saying how
//! many were lost.
//!
//! The engines' transaction trace (`--trace`) is not a log: it is a per-GPU file of one
//! structured line per memory transaction, with its own byte limit and counter
//! (`EngineEnv::trace_line`), and does not go through here.

use std::cell::Cell;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Instant;

use tracing::{Event, Subscriber};
use tracing_subscriber::filter::{EnvFilter, LevelFilter};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// `--log-level` values, most severe first.
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

impl From<Level> for LevelFilter {
    fn from(l: Level) -> LevelFilter {
        match l {
            Level::Error => LevelFilter::ERROR,
            Level::Warn => LevelFilter::WARN,
            Level::Info => LevelFilter::INFO,
            Level::Debug => LevelFilter::DEBUG,
        }
    }
}

/// Why the log could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// `RUST_LOG` is not a valid filter.
    #[error("RUST_LOG={value:?} is not a valid log filter: {reason}")]
    Filter {
        /// The variable's value.
        value: String,
        /// The parser's complaint.
        reason: String,
    },
    /// A subscriber was installed already.
    #[error("the log was set up twice")]
    AlreadySet,
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

/// The span of one GPU: its event loop, engine and control-socket threads enter it for their
/// whole life, so every line they log names the GPU (`gpu{name=gpu0}`).
pub fn gpu_span(name: &str) -> tracing::Span {
    tracing::error_span!("gpu", name = %name)
}

/// The span of one client session of a GPU (`client{id=N}`, N counting the GPU's sessions
/// from 1, as "client N connected" does); the event loop enters it while it serves the client.
pub fn client_span(id: u64) -> tracing::Span {
    tracing::error_span!("client", id)
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

/// Lines the rate limit of the installed log dropped.
static SUPPRESSED: AtomicU64 = AtomicU64::new(0);

/// Lines the rate limit dropped since the process started.
pub fn suppressed() -> u64 {
    SUPPRESSED.load(Ordering::Relaxed)
}

thread_local! {
    /// Lines dropped before the event this thread is about to print: set by
    /// [`RateLimit::event_enabled`], taken by [`LineFormat`] for the same event.
    static DROPPED_BEFORE: Cell<u64> = const { Cell::new(0) };
}

/// The rate limit as a layer: vetoes events above the rate (`event_enabled`), counts them, and
/// hands the count of the next admitted event to [`LineFormat`]. It sees only events the level
/// filter let through (that filter decides first, per call site).
#[derive(Debug)]
pub struct RateLimit {
    bucket: Mutex<Bucket>,
    dropped: &'static AtomicU64,
}

impl RateLimit {
    /// `rate` lines a second (0: no limit), bursts of `burst`; dropped lines are added to
    /// `dropped`.
    pub fn new(rate: u32, burst: u32, dropped: &'static AtomicU64) -> RateLimit {
        RateLimit {
            bucket: Mutex::new(Bucket::new(rate, burst)),
            dropped,
        }
    }
}

impl<S: Subscriber> Layer<S> for RateLimit {
    fn event_enabled(&self, _event: &Event<'_>, _ctx: Context<'_, S>) -> bool {
        let admitted = self
            .bucket
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .admit(Instant::now());
        match admitted {
            None => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
            Some(skipped) => {
                DROPPED_BEFORE.with(|d| d.set(skipped));
                true
            }
        }
    }
}

/// The line format: `vugpu <seconds> [<Level>] <span>{<fields>}:...: <message> <fields>`.
#[derive(Debug, Default, Clone, Copy)]
pub struct LineFormat;

fn level_name(l: &tracing::Level) -> &'static str {
    match *l {
        tracing::Level::ERROR => "Error",
        tracing::Level::WARN => "Warn",
        tracing::Level::INFO => "Info",
        tracing::Level::DEBUG => "Debug",
        tracing::Level::TRACE => "Trace",
    }
}

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let t = elapsed();
        let mut scope = String::new();
        if let Some(spans) = ctx.event_scope() {
            for span in spans.from_root() {
                scope.push_str(span.name());
                let ext = span.extensions();
                if let Some(fields) = ext.get::<FormattedFields<N>>() {
                    if !fields.is_empty() {
                        write!(scope, "{{{fields}}}")?;
                    }
                }
                scope.push(':');
            }
            if !scope.is_empty() {
                scope.push(' ');
            }
        }
        let dropped = DROPPED_BEFORE.with(|d| d.replace(0));
        if dropped > 0 {
            writeln!(
                w,
                "vugpu {t:>12.6} [Warn] {scope}{dropped} log lines dropped by the rate limit \
                 (--log-rate-limit)"
            )?;
        }
        write!(
            w,
            "vugpu {t:>12.6} [{}] {scope}",
            level_name(event.metadata().level())
        )?;
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

/// The filter: `RUST_LOG` when set (and not empty), else `level`.
fn filter(level: Level, rust_log: Option<&str>) -> Result<EnvFilter, LogError> {
    let builder = EnvFilter::builder().with_default_directive(LevelFilter::from(level).into());
    match rust_log.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(builder.parse_lossy("")),
        Some(v) => builder.parse(v).map_err(|e| LogError::Filter {
            value: v.to_string(),
            reason: e.to_string(),
        }),
    }
}

/// The subscriber [`init`] installs, writing to `writer` and counting dropped lines in
/// `dropped` (separate for tests).
pub fn subscriber<W>(
    level: Level,
    rust_log: Option<&str>,
    rate: u32,
    burst: u32,
    dropped: &'static AtomicU64,
    writer: W,
) -> Result<impl Subscriber + Send + Sync, LogError>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .event_format(LineFormat)
        .with_writer(writer);
    Ok(tracing_subscriber::registry()
        .with(filter(level, rust_log)?)
        .with(RateLimit::new(rate, burst, dropped))
        .with(fmt))
}

/// Sets up the process's log (once, in the binary): stderr, `--log-level` or `RUST_LOG`, the
/// rate limit, the clock.
pub fn init(level: Level, rate: u32, burst: u32) -> Result<(), LogError> {
    start_clock();
    let rust_log = std::env::var("RUST_LOG").ok();
    let s = subscriber(
        level,
        rust_log.as_deref(),
        rate,
        burst,
        &SUPPRESSED,
        std::io::stderr,
    )?;
    tracing::subscriber::set_global_default(s).map_err(|_| LogError::AlreadySet)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
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

    /// A writer into a shared buffer.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Buf {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    fn with_log(
        level: Level,
        rust_log: Option<&str>,
        rate: u32,
        burst: u32,
        dropped: &'static AtomicU64,
        f: impl FnOnce(),
    ) -> String {
        let buf = Buf::default();
        let w = buf.clone();
        let s = subscriber(level, rust_log, rate, burst, dropped, move || w.clone()).unwrap();
        tracing::subscriber::with_default(s, f);
        buf.text()
    }

    /// The shape scripts and the runner rely on: `vugpu <seconds> [Level] `, the GPU and client
    /// spans, the message; levels above the filter print nothing.
    #[test]
    fn lines_name_their_gpu_and_client_and_keep_the_old_shape() {
        static DROPPED: AtomicU64 = AtomicU64::new(0);
        let text = with_log(Level::Info, None, 0, 1, &DROPPED, || {
            tracing::warn!("before any span");
            let _g = gpu_span("gpu1").entered();
            tracing::info!("serving");
            let _c = client_span(3).entered();
            tracing::warn!(bytes = 4096, "engine DMA_READ slow");
            tracing::debug!("not printed at info");
        });
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        let rest = |l: &str| {
            let l = l.strip_prefix("vugpu ").unwrap();
            let (secs, rest) = l.trim_start().split_once(' ').unwrap();
            assert!(secs.parse::<f64>().unwrap() >= 0.0, "{l}");
            assert_eq!(secs.split_once('.').unwrap().1.len(), 6, "{l}");
            rest.to_string()
        };
        assert_eq!(rest(lines[0]), "[Warn] before any span");
        assert_eq!(rest(lines[1]), "[Info] gpu{name=gpu1}: serving");
        assert_eq!(
            rest(lines[2]),
            "[Warn] gpu{name=gpu1}:client{id=3}: engine DMA_READ slow bytes=4096"
        );
    }

    /// The spans survive a filter that prints warnings only, and debug lines appear at debug.
    #[test]
    fn spans_survive_a_strict_level_and_debug_prints_at_debug() {
        static DROPPED: AtomicU64 = AtomicU64::new(0);
        let text = with_log(Level::Warn, None, 0, 1, &DROPPED, || {
            let _g = gpu_span("gpu0").entered();
            tracing::info!("hidden");
            tracing::warn!("shown");
        });
        assert!(text.ends_with("[Warn] gpu{name=gpu0}: shown\n"), "{text}");
        assert_eq!(text.lines().count(), 1, "{text}");
        let text = with_log(Level::Debug, None, 0, 1, &DROPPED, || {
            tracing::debug!("a debug line");
        });
        assert!(text.contains("[Debug] a debug line"), "{text}");
    }

    /// RUST_LOG replaces --log-level (per-crate and per-GPU directives work); a bad one is an
    /// error naming the variable.
    #[test]
    fn rust_log_overrides_the_level_and_a_bad_value_is_an_error() {
        static DROPPED: AtomicU64 = AtomicU64::new(0);
        let text = with_log(
            Level::Error,
            Some("info,[gpu{name=gpu1}]=debug"),
            0,
            1,
            &DROPPED,
            || {
                tracing::info!("info everywhere");
                gpu_span("gpu0").in_scope(|| tracing::debug!("gpu0 debug"));
                gpu_span("gpu1").in_scope(|| tracing::debug!("gpu1 debug"));
            },
        );
        assert!(text.contains("[Info] info everywhere"), "{text}");
        assert!(!text.contains("gpu0 debug"), "{text}");
        assert!(
            text.contains("[Debug] gpu{name=gpu1}: gpu1 debug"),
            "{text}"
        );
        let e = subscriber(
            Level::Info,
            Some("info,vugpu=loud"),
            0,
            1,
            &DROPPED,
            std::io::sink,
        )
        .err()
        .unwrap();
        assert!(
            e.to_string().starts_with("RUST_LOG=\"info,vugpu=loud\""),
            "{e}"
        );
        // Empty: the level.
        let text = with_log(Level::Warn, Some(" "), 0, 1, &DROPPED, || {
            tracing::info!("hidden");
        });
        assert!(text.is_empty(), "{text}");
    }

    /// The rate limit drops lines above the burst, counts them, and the next line printed is
    /// preceded by the count; filtered-out levels consume no tokens.
    #[test]
    fn rate_limit_drops_counts_and_reports() {
        static DROPPED: AtomicU64 = AtomicU64::new(0);
        let text = with_log(Level::Info, None, 1000, 3, &DROPPED, || {
            let _g = gpu_span("gpu0").entered();
            for i in 0..100 {
                tracing::debug!("debug {i} is filtered before the bucket");
            }
            for i in 0..10 {
                tracing::warn!("flood {i}");
            }
            std::thread::sleep(Duration::from_millis(20));
            tracing::info!("after the pause");
        });
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        for (i, l) in lines[..3].iter().enumerate() {
            assert!(
                l.ends_with(&format!("[Warn] gpu{{name=gpu0}}: flood {i}")),
                "{l}"
            );
        }
        assert!(
            lines[3].ends_with(
                "[Warn] gpu{name=gpu0}: 7 log lines dropped by the rate limit (--log-rate-limit)"
            ),
            "{}",
            lines[3]
        );
        assert!(lines[4].ends_with("[Info] gpu{name=gpu0}: after the pause"));
        assert_eq!(DROPPED.load(Ordering::Relaxed), 7);
    }
}
