//! Runs the device fuzz harnesses (`fuzz/harness.rs`) over deterministic pseudo-random inputs
//! so plain `cargo test` on stable exercises them. `gpu_regions` inputs are hand-encoded
//! operation sequences (engine rings in VRAM and in guest RAM, descriptors of every opcode,
//! doorbells, waits) glued with noise and then mutated (byte flips, interesting values,
//! truncation, splices), which reaches far more of the device than uniform noise; uniform noise
//! runs too. A panic in any thread (an engine thread included) aborts the test binary.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

#[path = "../fuzz/harness/mod.rs"]
mod harness;

use std::sync::Once;

/// xorshift64*: tiny, deterministic, good enough to spread mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

/// Engine threads are not joined with a result: make their panics (and any other) fatal.
fn abort_on_panic() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            default(info);
            std::process::abort();
        }));
    });
}

// Operation encoders matching `harness::World::step` (see the decoder for the meaning of each
// selector byte).

/// Ring setup for engine `e`: VRAM page `page` (aperture 1) or guest RAM A (aperture 0),
/// `1 << log2` slots, ENABLE | IRQ_ENABLE.
fn ring(e: u8, sys: bool, page: u8, log2: u8) -> Vec<u8> {
    vec![3, e, u8::from(sys), page, 1, log2, 3]
}

/// A settle of `ms` milliseconds.
fn settle(ms: u8) -> Vec<u8> {
    vec![11, ms]
}

/// Address selectors of `pick_addr`: anchor byte, then `near` selector 2 (+ u8 * 8).
fn addr(anchor: u8, eighths: u8) -> [u8; 3] {
    [anchor, 2, eighths]
}

const VRAM0: u8 = 9;
const SYS_A: u8 = 0;
const SYS_B: u8 = 4;
const SYS_C: u8 = 5;
const SYS_D: u8 = 6;

/// One descriptor in the encoding of `harness::World::descriptor`.
fn desc(rng: &mut Rng) -> Vec<u8> {
    let sources = [VRAM0, VRAM0, SYS_A, SYS_A, SYS_B, SYS_C, SYS_D, 12];
    // Mostly writable destinations, so that most jobs complete.
    let dests = [
        VRAM0, VRAM0, SYS_A, SYS_A, SYS_C, VRAM0, SYS_A, SYS_B, SYS_D, 12,
    ];
    let mut v = Vec::new();
    // mode: `mode % 8` selects the opcode (NOP, COPY, FILL, FENCE, TIMESTAMP); valid flags,
    // a 32-bit value, no reserved-byte flip (and not `mode % 32 == 0`, raw bytes).
    v.push([8u8, 1, 1, 3, 3, 5, 6][rng.below(7)]);
    v.push(rng.byte() & 7);
    // Source in the first 2 KiB of its anchor, destination 32-48 KiB in: no overlap.
    v.extend(addr(sources[rng.below(sources.len())], rng.byte()));
    v.extend([
        dests[rng.below(dests.len())],
        3,
        rng.byte() & 0xf8,
        0x80 | (rng.byte() & 0x3f),
    ]);
    // Length: 4 * (x + 1).
    v.extend([5, rng.byte()]);
    v.extend(rng.next().to_le_bytes()[..4].iter());
    // The context (used with VIRT addresses).
    v.push(rng.byte() % 4);
    v
}

/// The device MMU set up (`harness::World::mmu_op`): 16 pages at the harness's VIRT region
/// mapped to guest RAM A, VRAM, message-only C and the guard page before A, with random
/// permissions; the fault ring in A or VRAM; FAULT_IRQ random.
fn mmu_setup(rng: &mut Rng) -> Vec<u8> {
    let mut v = vec![13, 12, 0];
    for _ in 0..16 {
        let target = [0u8, 0, 4, 6, 6, 2][rng.below(6)];
        v.push(target);
        if target != 2 {
            v.push(rng.byte() % 16);
        }
        v.push(rng.byte() | 0x0c);
    }
    v.extend([rng.byte(), rng.byte(), rng.byte(), rng.byte()]);
    v
}

/// A descriptor with VIRT addresses: a FENCE, FILL or COPY into the MMU's region, or a
/// FAULT_REPLAY (replay or cancel, all contexts) to end waits.
fn virt_desc(rng: &mut Rng) -> Vec<u8> {
    const VIRT: u8 = 0x1f;
    if rng.below(3) == 0 {
        // mode 7 -> selector 2 (FAULT_REPLAY), flags, two addresses, length, value, context,
        // value bit 0, "all contexts".
        let mut v = vec![7, 2, 0];
        v.extend(addr(VRAM0, 0));
        v.extend(addr(VRAM0, 0));
        v.extend([5, 0, 0, 0, 0, 0, 0, rng.byte() & 1, 0]);
        return v;
    }
    let mode = [1u8, 3, 5][rng.below(3)];
    let mut v = vec![mode, rng.byte() & 1];
    let src = if rng.below(2) == 0 { VIRT } else { VRAM0 };
    v.extend(addr(src, rng.byte()));
    v.extend([VIRT, 3, rng.byte() & 0xf8, rng.byte() & 0x3f]);
    v.extend([5, rng.byte()]);
    v.extend(rng.next().to_le_bytes()[..4].iter());
    v.push(rng.byte() % 4);
    v
}

/// Submit `n` (1..=4) descriptors to engine `e`, tail + n, through doorbell method `how`.
fn submit(rng: &mut Rng, e: u8, n: u8) -> Vec<u8> {
    let mut v = vec![4, e, n - 1];
    for _ in 0..n {
        v.extend(desc(rng));
    }
    v.extend([2, rng.byte()]);
    v
}

/// SET_IRQS: an eventfd for every MSI-X vector (`vectors` of them).
fn eventfds(vectors: u8) -> Vec<u8> {
    let mut v = vec![7, 0, 1, 2, 2];
    v.extend(std::iter::repeat_n(2, usize::from(vectors)));
    v
}

/// Engine `e`'s CONTROL.RESET (clears an error), then a new ring.
fn engine_reset(rng: &mut Rng, e: u8) -> Vec<u8> {
    let mut v = vec![10, 3 | (e << 3)];
    v.extend(ring(
        e,
        rng.below(2) == 0,
        rng.byte() % 16,
        1 + rng.byte() % 6,
    ));
    v
}

fn template(rng: &mut Rng) -> Vec<u8> {
    let ctl = rng.byte();
    let mut v = vec![ctl];
    v.extend(eventfds(5 + ((ctl >> 1) & 7)));
    for e in 0..4 {
        v.extend(ring(
            e,
            rng.below(2) == 0,
            rng.byte() % 16,
            1 + rng.byte() % 6,
        ));
    }
    let mmu = rng.below(2) == 0;
    if mmu {
        v.extend(mmu_setup(rng));
    }
    for _ in 0..1 + rng.below(10) {
        let e = rng.byte() % 4;
        if mmu && rng.below(2) == 0 {
            let n = 1 + rng.below(3) as u8;
            let mut s = vec![4, e, n - 1];
            for _ in 0..n {
                s.extend(virt_desc(rng));
            }
            s.extend([2, rng.byte()]);
            v.extend(s);
            continue;
        }
        if rng.below(3) == 0 {
            v.extend(engine_reset(rng, e));
        }
        let n = 1 + rng.byte() % 4;
        v.extend(submit(rng, e, n));
        if rng.below(2) == 0 {
            v.extend(settle(rng.byte() % 3));
        }
        if rng.below(4) == 0 {
            // Any other operation with random arguments.
            v.push(rng.byte());
            for _ in 0..rng.below(16) {
                v.push(rng.byte());
            }
        }
    }
    v.extend(settle(2));
    v
}

fn mutate(rng: &mut Rng, mut v: Vec<u8>) -> Vec<u8> {
    for _ in 0..rng.below(8) {
        if v.len() < 2 {
            break;
        }
        let i = 1 + rng.below(v.len() - 1);
        v[i] = match rng.below(6) {
            0 => 0,
            1 => 0xff,
            2 => 0x80,
            3 => v[i] ^ (1 << rng.below(8)),
            4 => v[i].wrapping_add(1),
            _ => rng.byte(),
        };
    }
    if rng.below(6) == 0 {
        let keep = rng.below(v.len()) + 1;
        v.truncate(keep);
    }
    if rng.below(4) == 0 {
        let at = rng.below(v.len() + 1);
        let noise: Vec<u8> = (0..rng.below(48)).map(|_| rng.byte()).collect();
        v.splice(at..at, noise);
    }
    v
}

#[test]
fn gpu_regions_harness_over_pseudo_random_inputs() {
    abort_on_panic();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut total = harness::RegionStats::default();
    let mut add = |s: harness::RegionStats| {
        for (t, n) in total.ops.iter_mut().zip(s.ops) {
            *t += n;
        }
        total.refused += s.refused;
        total.jobs += s.jobs;
        total.engine_errors += s.engine_errors;
        total.messages += s.messages;
        total.irqs += s.irqs;
        total.maps += s.maps;
        total.translations += s.translations;
        total.mmu_faults += s.mmu_faults;
    };
    for _ in 0..600 {
        let t = template(&mut rng);
        add(harness::gpu_regions(&mutate(&mut rng, t)));
    }
    for _ in 0..300 {
        let len = rng.below(600);
        let input: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
        add(harness::gpu_regions(&input));
    }
    eprintln!("gpu_regions totals: {total:?}");
    // The inputs really reach the device: every kind of operation, engines completing and
    // failing descriptors, DMA messages, interrupts, refusals.
    assert!(
        total.ops.iter().all(|&n| n > 100),
        "ops per kind {:?}",
        total.ops
    );
    // Engine counts depend on scheduling (bounded waits); the margins are wide (a run on an
    // idle 2-core host sees about 3x these).
    assert!(total.jobs > 400, "jobs {}", total.jobs);
    assert!(
        total.engine_errors > 300,
        "engine errors {}",
        total.engine_errors
    );
    assert!(total.messages > 50, "DMA messages {}", total.messages);
    assert!(total.irqs > 100, "interrupts {}", total.irqs);
    assert!(total.refused > 500, "refused {}", total.refused);
    assert!(total.maps > 3000, "maps {}", total.maps);
    // The device MMU translates and faults (hw-spec §9).
    // (About 2.5x these here: most engines stop early on fuzzed rings.)
    assert!(
        total.translations > 60,
        "translations {}",
        total.translations
    );
    assert!(total.mmu_faults > 8, "MMU faults {}", total.mmu_faults);
}

#[test]
fn config_space_harness_over_pseudo_random_inputs() {
    abort_on_panic();
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    let mut total = harness::ConfigStats::default();
    for _ in 0..3000 {
        let len = rng.below(400);
        let input: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
        let s = harness::config_space(&input);
        total.writes += s.writes;
        total.refused += s.refused;
        total.reads += s.reads;
        total.flrs += s.flrs;
        total.resizes += s.resizes;
        total.sizings += s.sizings;
    }
    eprintln!("config_space totals: {total:?}");
    assert!(total.writes > 20_000, "writes {}", total.writes);
    assert!(total.refused > 1_000, "refused {}", total.refused);
    assert!(total.reads > 3_000, "reads {}", total.reads);
    assert!(total.flrs > 50, "FLRs {}", total.flrs);
    assert!(total.resizes > 1_000, "resizes {}", total.resizes);
    assert!(total.sizings > 3_000, "sizings {}", total.sizings);
}

/// An `mmu_walk` input with a chain of tables: page i's entry at index k points at page i + 1
/// (so walks reach level 0 and leaves), a valid context, then translations through them.
fn mmu_template(rng: &mut Rng) -> Vec<u8> {
    let pages = 4 + rng.below(6) as u8;
    let mut v = vec![rng.byte(), pages - 1];
    for _ in 0..pages {
        v.extend([rng.byte(), rng.byte() % 3]);
    }
    let idx = rng.next() as u16 % 512;
    let entries = 6 + rng.below(20) as u8;
    v.push(entries);
    for e in 0..entries {
        // Pages 1-2: level 3 and 2 tables (VALID only); page 3: level 1 (a table, or a 2 MiB
        // leaf: LEAF, permissions, 2 MiB-aligned frame); the rest: level-0 leaves. Sometimes
        // a random flag byte.
        let p = 1 + e % (pages - 1);
        let perms = rng.byte() & 0x1c;
        let (kind, flags) = match p {
            1 | 2 => (1, 1),
            3 if rng.below(2) == 0 => (0x81, 0x40 | 0x02 | 1 | perms),
            3 => (1, 1),
            _ => (1, 0x02 | 1 | perms),
        };
        let flags = if rng.below(8) == 0 { rng.byte() } else { flags };
        v.extend([p]);
        v.extend(idx.to_le_bytes());
        v.extend([kind, (p + 1) % pages, flags]);
    }
    // Context entries: context 1 -> page 1.
    v.extend([0, 1, 1, 1]);
    v.push(1); // count: 1 + below(8)
    v.push(7);
    for _ in 0..8 + rng.below(24) {
        match rng.below(10) {
            0 => v.extend([0, rng.byte() % pages, 0, 0, 1, rng.byte(), rng.byte()]),
            1 => v.extend([1, rng.byte(), rng.byte(), rng.byte()]),
            _ => {
                v.extend([2, 1, 1, 1]);
                for _ in 0..4 {
                    v.extend([rng.byte() % pages, rng.byte()]);
                }
                v.extend([rng.byte(), rng.byte(), rng.byte(), rng.byte(), rng.byte()]);
            }
        }
    }
    v
}

#[test]
fn mmu_walk_harness_over_pseudo_random_inputs() {
    abort_on_panic();
    let mut rng = Rng(0x5bd1_e995_1234_5678);
    let mut total = harness::MmuStats::default();
    for i in 0..6000 {
        let input = if i % 3 == 0 {
            let len = rng.below(500);
            (0..len).map(|_| rng.byte()).collect()
        } else {
            let t = mmu_template(&mut rng);
            mutate(&mut rng, t)
        };
        let s = harness::mmu_walk(&input);
        total.ok += s.ok;
        total.huge += s.huge;
        total.invalidations += s.invalidations;
        for (t, n) in total.faults.iter_mut().zip(s.faults) {
            *t += n;
        }
    }
    eprintln!("mmu_walk totals: {total:?}");
    // Every fault reason, successful 4 KiB and 2 MiB translations, invalidations.
    assert!(
        total.faults[1..].iter().all(|&n| n > 20),
        "faults per reason {:?}",
        total.faults
    );
    assert!(total.ok > 100, "translations {}", total.ok);
    assert!(total.huge > 5, "2 MiB translations {}", total.huge);
    assert!(
        total.invalidations > 500,
        "invalidations {}",
        total.invalidations
    );
}

/// Named `desc_decode` seeds: descriptor rings as the guest driver and the engine tests build
/// them (every opcode valid, with flags and VIRT sides, plus one refusal of each kind), each
/// descriptor through the `RawDescriptor` builders. `device/fuzz/seeds/desc_decode/` holds them
/// (and the minimised corpus of the recorded long run beside them);
/// `VUGPU_WRITE_SEEDS=1 cargo test -p vugpu-device --test fuzz_harness desc` rewrites them.
fn desc_seeds() -> Vec<(&'static str, Vec<u8>)> {
    use vugpu_device::engine::desc::{flags, Addr, Aperture, RawDescriptor, CONTEXT_ALL};
    let at = |aperture, addr| Addr { aperture, addr };
    let (sys, vram, virt) = (Aperture::Sys, Aperture::Vram, Aperture::Virt(3));
    let ring = |ds: &[RawDescriptor]| -> Vec<u8> { ds.iter().flat_map(|d| d.to_bytes()).collect() };
    let upload = [
        RawDescriptor::copy(at(sys, 0x1_0000), at(vram, 0), 0x1000),
        RawDescriptor::fill(at(vram, 0x1000), 0x100, 0xdead_beef),
        RawDescriptor::copy(at(vram, 0), at(vram, 0x2000), 0x1000),
        RawDescriptor::copy(at(vram, 0x2000), at(sys, 0x2_0000), 0x1000),
        RawDescriptor::fence(at(sys, 0x3_0000), 1).with_flags(flags::IRQ),
        RawDescriptor::timestamp(at(sys, 0x3_0008)),
        RawDescriptor::default().with_flags(flags::IRQ),
    ];
    let mmu = [
        RawDescriptor::copy(at(virt, 0x40_0000), at(vram, 0), 0x2000),
        RawDescriptor::fill(at(virt, 0x40_2000), 0x1000, 7),
        RawDescriptor::atomic(at(virt, 0x40_3000), at(sys, 0x3_0010), 1),
        RawDescriptor::fence(at(virt, 0x40_3008), 2),
        RawDescriptor::tlb_invalidate(3, 0x40_0000, 0x4000),
        RawDescriptor::tlb_invalidate(CONTEXT_ALL, 0, 0),
        RawDescriptor::fault_replay(3, false),
        RawDescriptor::fault_replay(CONTEXT_ALL, true),
    ];
    let attrs = [RawDescriptor::copy(at(sys, 0), at(vram, 0), 64)
        .with_flags(flags::NO_SNOOP | flags::RELAXED_ORDERING | flags::IRQ)];
    // One refusal of each kind: reserved flag, reserved byte, unknown opcode, PEER aperture,
    // zero length, misaligned FILL, overflow, overlap, FILL high bits, stray context,
    // non-zero FAULT_REPLAY field.
    let mut bad = vec![
        RawDescriptor::default().with_flags(0x80).to_bytes(),
        {
            let mut b = RawDescriptor::default().to_bytes();
            b[0x30] = 1;
            b
        },
        RawDescriptor {
            opcode: 8,
            ..RawDescriptor::default()
        }
        .to_bytes(),
    ];
    let mut peer = RawDescriptor::copy(at(sys, 0), at(vram, 0), 8);
    peer.src_aperture = 2;
    let mut high = RawDescriptor::fill(at(sys, 0), 4, 0);
    high.value = 1 << 32;
    let mut stray = RawDescriptor::fence(at(sys, 0), 0);
    stray.context = 1;
    let mut replay = RawDescriptor::fault_replay(1, false);
    replay.length = 1;
    for d in [
        peer,
        RawDescriptor::copy(at(sys, 0), at(vram, 0), 0),
        RawDescriptor::fill(at(vram, 2), 4, 0),
        RawDescriptor::copy(at(sys, u64::MAX - 2), at(vram, 0), 4),
        RawDescriptor::copy(at(vram, 0x100), at(vram, 0x1ff), 0x100),
        high,
        stray,
        replay,
    ] {
        bad.push(d.to_bytes());
    }
    vec![
        ("ring-upload", ring(&upload)),
        ("ring-mmu", ring(&mmu)),
        ("attributes", ring(&attrs)),
        ("refusals", bad.concat()),
    ]
}

#[test]
fn desc_decode_harness_seeds_and_pseudo_random_rings() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/desc_decode");
    let seeds = desc_seeds();
    let write = std::env::var_os("VUGPU_WRITE_SEEDS").is_some();
    let mut total = harness::DescStats::default();
    let add = |total: &mut harness::DescStats, s: harness::DescStats| {
        for (t, n) in total.accepted.iter_mut().zip(s.accepted) {
            *t += n;
        }
        total.reserved += s.reserved;
        total.bad_opcode += s.bad_opcode;
        total.rules += s.rules;
    };
    for (name, bytes) in &seeds {
        let path = dir.join(name);
        if write {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, bytes).unwrap();
        }
        let on_disk = std::fs::read(&path).unwrap_or_default();
        assert!(
            on_disk == *bytes,
            "{} is stale: rerun with VUGPU_WRITE_SEEDS=1",
            path.display()
        );
        add(&mut total, harness::desc_decode(bytes));
    }
    // The seeds alone: every opcode accepted, and each refusal (11) refused.
    assert!(total.accepted.iter().all(|&n| n > 0), "{total:?}");
    assert_eq!(
        total.reserved + total.bad_opcode + total.rules,
        11,
        "{total:?}"
    );
    // Mutated seed rings and noise.
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for i in 0..20_000 {
        let input = if i % 4 == 0 {
            (0..64 * (1 + rng.below(4))).map(|_| rng.byte()).collect()
        } else {
            let t = seeds[rng.below(seeds.len())].1.clone();
            mutate(&mut rng, t)
        };
        add(&mut total, harness::desc_decode(&input));
    }
    eprintln!("desc_decode totals: {total:?}");
    assert!(total.accepted.iter().all(|&n| n > 100), "{total:?}");
    assert!(total.reserved > 1_000 && total.bad_opcode > 100 && total.rules > 1_000);
}
