//! Runs the two fuzz harnesses (`fuzz/harness.rs`) over deterministic pseudo-random inputs so
//! plain `cargo test` on stable exercises them. Inputs are valid messages glued together and
//! then mutated (byte flips, interesting values, truncation, splices), which reaches far more
//! of the decoders than uniform noise.

#[path = "../fuzz/harness.rs"]
mod harness;

use vugpu_protocol::wire::{Command, Header, Writer};

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
}

fn msg(cmd: u16, flags: u32, payload: &[u8]) -> Vec<u8> {
    let mut w = Writer::default();
    w.put(&Header {
        msg_id: 7,
        command: cmd,
        size: (Header::SIZE + payload.len()) as u32,
        flags,
        error: 0,
    });
    w.bytes(payload);
    w.into_vec()
}

fn templates() -> Vec<Vec<u8>> {
    let mut t = Vec::new();
    let mut w = Writer::default();
    w.u16(0)
        .u16(0)
        .bytes(br#"{"capabilities":{"max_msg_fds":16}}"#)
        .u8(0);
    t.push(msg(Command::Version as u16, 0, &w.into_vec()));
    let mut w = Writer::default();
    w.u32(32).u32(3).u64(0).u64(0x1000).u64(0x2000);
    t.push(msg(Command::DmaMap as u16, 0, &w.into_vec()));
    let mut w = Writer::default();
    w.u32(24).u32(0).u64(0x1000).u64(0x2000);
    t.push(msg(Command::DmaUnmap as u16, 0, &w.into_vec()));
    let mut w = Writer::default();
    w.u32(24).u32(2).u64(0).u64(0);
    t.push(msg(Command::DmaUnmap as u16, 0, &w.into_vec()));
    let mut w = Writer::default();
    w.u32(16).u32(0).u32(0).u32(0);
    t.push(msg(Command::DeviceGetInfo as u16, 0, &w.into_vec()));
    for (argsz, idx) in [(32u32, 2u32), (96, 2), (32, 4), (32, 7)] {
        let mut w = Writer::default();
        w.u32(argsz).u32(0).u32(idx).u32(0).u64(0).u64(0);
        t.push(msg(Command::DeviceGetRegionInfo as u16, 0, &w.into_vec()));
    }
    let mut w = Writer::default();
    w.u32(16).u32(0).u32(0).u32(0);
    t.push(msg(Command::DeviceGetRegionIoFds as u16, 0, &w.into_vec()));
    let mut w = Writer::default();
    w.u32(16).u32(0).u32(2).u32(0);
    t.push(msg(Command::DeviceGetIrqInfo as u16, 0, &w.into_vec()));
    for (flags, idx, start, count, data) in [
        (4u32 | 32, 2u32, 0u32, 3u32, &[][..]),
        (1 | 32, 2, 0, 0, &[]),
        (2 | 32, 2, 1, 2, &[1, 0]),
        (1 | 8, 0, 0, 1, &[]),
    ] {
        let mut w = Writer::default();
        w.u32(20 + data.len() as u32)
            .u32(flags)
            .u32(idx)
            .u32(start)
            .u32(count)
            .bytes(data);
        t.push(msg(Command::DeviceSetIrqs as u16, 0, &w.into_vec()));
    }
    let mut w = Writer::default();
    w.u64(0x10).u32(7).u32(4);
    t.push(msg(Command::RegionRead as u16, 0, &w.into_vec()));
    let mut w = Writer::default();
    w.u64(0x20).u32(0).u32(4).bytes(&[1, 2, 3, 4]);
    t.push(msg(Command::RegionWrite as u16, 0x10, &w.into_vec()));
    let mut w = Writer::default();
    w.u64(2);
    for off in [0u64, 8] {
        w.u64(off).u32(0).u32(8).bytes(&[9; 8]);
    }
    t.push(msg(Command::RegionWriteMulti as u16, 0x10, &w.into_vec()));
    t.push(msg(Command::DeviceReset as u16, 0, &[]));
    t.push(msg(Command::DeviceFeature as u16, 0, &[0; 12]));
    // A DMA reply in each layout (useful when the harness issues DMA).
    let mut w = Writer::default();
    w.u64(0x1000).u32(100).bytes(&[0; 104]);
    t.push(msg(Command::DmaRead as u16, 1, &w.into_vec()));
    t
}

fn mutate(rng: &mut Rng, t: &[Vec<u8>]) -> Vec<u8> {
    let mut v = vec![rng.next() as u8];
    for _ in 0..1 + rng.below(5) {
        v.extend_from_slice(&t[rng.below(t.len())]);
    }
    for _ in 0..rng.below(6) {
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
            _ => rng.next() as u8,
        };
    }
    if rng.below(4) == 0 {
        let keep = rng.below(v.len()) + 1;
        v.truncate(keep);
    }
    if rng.below(8) == 0 {
        let n = rng.below(64);
        for _ in 0..n {
            v.push(rng.next() as u8);
        }
    }
    v
}

#[test]
fn decode_harness_over_pseudo_random_inputs() {
    let t = templates();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..20_000 {
        let input = mutate(&mut rng, &t);
        harness::decode(&input);
    }
    // Uniform noise too.
    for _ in 0..5_000 {
        let len = rng.below(200);
        let input: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        harness::decode(&input);
    }
}

#[test]
fn session_harness_over_pseudo_random_inputs() {
    let t = templates();
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    let (mut handled, mut errors, mut dma, mut commands) = (0, 0, 0, [0u64; 19]);
    for i in 0..8_000 {
        let mut input = mutate(&mut rng, &t);
        // Mostly start negotiated so the fuzzed bytes reach the command handlers.
        if i % 4 != 0 {
            input[0] |= 4;
        }
        let s = harness::session(&input);
        handled += s.total_messages();
        errors += s.error_replies + s.suppressed_errors;
        dma += s.dma_messages;
        for (c, n) in commands.iter_mut().zip(s.per_command.iter()) {
            *c += n;
        }
    }
    eprintln!("handled {handled} errors {errors} dma {dma} per command {commands:?}");
    // The inputs really exercise the server: many messages, both outcomes, every command
    // a client may send, and server-initiated DMA.
    assert!(handled > 12_000, "handled {handled}");
    assert!(
        errors > 2_000 && errors < handled,
        "errors {errors} of {handled}"
    );
    assert!(dma > 300, "dma {dma}");
    for c in [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 13, 15, 16] {
        assert!(commands[c] > 30, "command {c} seen {} times", commands[c]);
    }
}

/// Generated `session` seeds (`fuzz/seeds/session/gen-*`, beside the hand-encoded ones): a
/// negotiated client mapping guest RAM with its fd attached, region traffic with write-multiple
/// advertised, and a server DMA served while the client keeps sending. First byte: the harness's
/// control byte (fds, VERSION, DMA). `VUGPU_WRITE_SEEDS=1 cargo test -p vugpu-protocol --test
/// fuzz_harness seeds` rewrites them; otherwise the test fails if they are stale, and each must
/// reach the handlers it was made for.
fn session_seeds() -> Vec<(&'static str, Vec<u8>, Vec<usize>)> {
    let dma_map = |flags: u32, iova: u64| {
        let mut w = Writer::default();
        w.u32(32).u32(flags).u64(0).u64(iova).u64(0x4000);
        msg(Command::DmaMap as u16, 0, &w.into_vec())
    };
    let read = |off: u64, n: u32| {
        let mut w = Writer::default();
        w.u64(off).u32(0).u32(n);
        msg(Command::RegionRead as u16, 0, &w.into_vec())
    };
    let write = |off: u64, data: &[u8]| {
        let mut w = Writer::default();
        w.u64(off).u32(0).u32(data.len() as u32).bytes(data);
        msg(Command::RegionWrite as u16, 0, &w.into_vec())
    };
    let mut multi = Writer::default();
    multi.u64(3);
    for off in [0u64, 8, 0x100] {
        multi.u64(off).u32(0).u32(8).bytes(&[0x5a; 8]);
    }
    let multi = msg(Command::RegionWriteMulti as u16, 0x10, &multi.into_vec());
    let mut unmap = Writer::default();
    unmap.u32(24).u32(0).u64(0x10_0000).u64(0x4000);
    let unmap = msg(Command::DmaUnmap as u16, 0, &unmap.into_vec());
    // ctl 0x05: VERSION, then one fd attached to the first DMA_MAP.
    let mut map_fd = vec![0x05];
    map_fd.extend(dma_map(3, 0x10_0000));
    map_fd.extend(dma_map(1, 0x20_0000));
    map_fd.extend(unmap);
    // ctl 0x24: VERSION, write_multiple advertised.
    let mut region = vec![0x24];
    region.extend(write(0x10, &[1, 2, 3, 4]));
    region.extend(read(0x10, 4));
    region.extend(multi.clone());
    region.extend(read(0, 0x1000));
    // ctl 0x54: VERSION, a server DMA after the first message, served while waiting.
    let mut dma = vec![0x54];
    dma.extend(dma_map(3, 0));
    dma.extend(read(0x20, 8));
    dma.extend(write(0x20, &[7; 8]));
    vec![
        (
            "gen-dma-map-fd",
            map_fd,
            vec![Command::DmaMap as usize, Command::DmaUnmap as usize],
        ),
        (
            "gen-region-access",
            region,
            vec![
                Command::RegionRead as usize,
                Command::RegionWrite as usize,
                Command::RegionWriteMulti as usize,
            ],
        ),
        (
            "gen-dma-serving",
            dma,
            vec![Command::DmaMap as usize, Command::RegionRead as usize],
        ),
    ]
}

#[test]
fn session_seeds_are_current_and_reach_their_handlers() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/session");
    let write = std::env::var_os("VUGPU_WRITE_SEEDS").is_some();
    for (name, bytes, commands) in session_seeds() {
        let path = dir.join(name);
        if write {
            std::fs::write(&path, &bytes).unwrap();
        }
        let on_disk = std::fs::read(&path).unwrap_or_default();
        assert!(
            on_disk == bytes,
            "{} is stale: rerun with VUGPU_WRITE_SEEDS=1",
            path.display()
        );
        let s = harness::session(&bytes);
        for c in commands {
            assert!(
                s.per_command[c] > 0,
                "{name}: command {c} not handled: {s:?}"
            );
        }
        harness::decode(&bytes);
    }
}
