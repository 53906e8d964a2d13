//! What logging costs (docs/benchmarks.md): a debug event filtered out at info (the hot paths'
//! case), an info line formatted and written (to a sink), and entering a client span, with the
//! subscriber `vugpu serve` installs (`vugpu_device::log::subscriber`).
#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use vugpu_device::log::{client_span, gpu_span, subscriber, Level};

static DROPPED: AtomicU64 = AtomicU64::new(0);

fn log(c: &mut Criterion) {
    // Rate limit 0: every enabled line is formatted and written (to io::sink).
    let s = subscriber(Level::Info, None, 0, 1, &DROPPED, std::io::sink).unwrap();
    tracing::subscriber::set_global_default(s).unwrap();
    let _gpu = gpu_span("gpu0").entered();
    let client = client_span(1);
    let mut g = c.benchmark_group("log");
    g.bench_function("nothing", |b| b.iter(|| black_box(1u64)));
    g.bench_function("debug_event_filtered_at_info", |b| {
        b.iter(|| tracing::debug!("engine DMA_READ {:#x}", black_box(0x1000u64)))
    });
    g.bench_function("client_span_enter_exit", |b| {
        b.iter(|| {
            let _c = black_box(&client).enter();
        })
    });
    g.bench_function("info_line_formatted_to_sink", |b| {
        let _c = client.enter();
        b.iter(|| tracing::info!("client {} connected (pid {})", black_box(1), 4242))
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
}

criterion_group! {
    name = benches;
    config = config();
    targets = log
}
criterion_main!(benches);
