//! Per-engine statistics (hw-spec §8.1): lock-free counters updated by the engine thread, read by
//! the register file and the control socket.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Counter indexes, in register order (engine block `+0x40 + 8 * index`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Counter {
    /// Descriptors completed.
    Jobs = 0,
    /// Bytes copied SYS→VRAM.
    SysToVram,
    /// Bytes copied VRAM→SYS.
    VramToSys,
    /// Bytes copied VRAM→VRAM.
    VramToVram,
    /// Bytes copied SYS→SYS.
    SysToSys,
    /// Bytes filled.
    Fill,
    /// Descriptors requesting No Snoop.
    NsRequested,
    /// Descriptors using No Snoop.
    NsUsed,
    /// Descriptors requesting Relaxed Ordering.
    RoRequested,
    /// Descriptors using Relaxed Ordering.
    RoUsed,
    /// SYS bytes moved with No Snoop.
    BytesNs,
    /// SYS bytes moved with Relaxed Ordering.
    BytesRo,
    /// Errors.
    Errors,
    /// Completion interrupts.
    Irqs,
}

/// Number of counters (one past the last `Counter`, so `counters[c as usize]` is in bounds).
pub const COUNTERS: usize = Counter::Irqs as usize + 1;
/// Offset of the first counter in the engine block.
pub const STATS_BASE: u32 = 0x40;
/// End of the counters in the engine block.
pub const STATS_END: u32 = STATS_BASE + crate::regs::spec::COUNTER_SIZE * COUNTERS as u32;

/// The counters of one engine.
#[derive(Debug, Default)]
pub struct EngineStats {
    counters: [AtomicU64; COUNTERS],
}

impl EngineStats {
    /// Adds `n` to a counter.
    pub fn add(&self, c: Counter, n: u64) {
        if n != 0 {
            self.counters[c as usize].fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Reads a counter by index (`None` past the end).
    pub fn get(&self, index: usize) -> Option<u64> {
        self.counters.get(index).map(|c| c.load(Ordering::Relaxed))
    }

    /// Reads a counter.
    pub fn value(&self, c: Counter) -> u64 {
        self.counters[c as usize].load(Ordering::Relaxed)
    }

    /// Every counter to 0.
    pub fn clear(&self) {
        for c in &self.counters {
            c.store(0, Ordering::Relaxed);
        }
    }

    /// A consistent-enough copy for reporting.
    pub fn snapshot(&self) -> StatsSnapshot {
        let v = |c| self.value(c);
        StatsSnapshot {
            jobs: v(Counter::Jobs),
            bytes: DirectionBytes {
                sys_to_vram: v(Counter::SysToVram),
                vram_to_sys: v(Counter::VramToSys),
                vram_to_vram: v(Counter::VramToVram),
                sys_to_sys: v(Counter::SysToSys),
                fill: v(Counter::Fill),
            },
            no_snoop: AttrCounts {
                requested: v(Counter::NsRequested),
                used: v(Counter::NsUsed),
                bytes: v(Counter::BytesNs),
            },
            relaxed_ordering: AttrCounts {
                requested: v(Counter::RoRequested),
                used: v(Counter::RoUsed),
                bytes: v(Counter::BytesRo),
            },
            errors: v(Counter::Errors),
            irqs: v(Counter::Irqs),
        }
    }
}

/// Bytes by direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DirectionBytes {
    /// SYS→VRAM.
    pub sys_to_vram: u64,
    /// VRAM→SYS.
    pub vram_to_sys: u64,
    /// VRAM→VRAM.
    pub vram_to_vram: u64,
    /// SYS→SYS.
    pub sys_to_sys: u64,
    /// FILL.
    pub fill: u64,
}

/// Requested / used counts of one attribute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct AttrCounts {
    /// Descriptors that requested it.
    pub requested: u64,
    /// Descriptors that used it.
    pub used: u64,
    /// SYS bytes moved with it.
    pub bytes: u64,
}

/// A copy of an engine's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StatsSnapshot {
    /// Descriptors completed.
    pub jobs: u64,
    /// Bytes by direction.
    pub bytes: DirectionBytes,
    /// No Snoop.
    pub no_snoop: AttrCounts,
    /// Relaxed Ordering.
    pub relaxed_ordering: AttrCounts,
    /// Errors.
    pub errors: u64,
    /// Completion interrupts.
    pub irqs: u64,
}

/// What one completed descriptor adds to the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobCounts {
    /// Direction counter and bytes, if the job moved data.
    pub bytes: Option<(Counter, u64)>,
    /// No Snoop requested / used.
    pub ns: (bool, bool),
    /// Relaxed Ordering requested / used.
    pub ro: (bool, bool),
    /// SYS bytes moved (read + write).
    pub sys_bytes: u64,
}

impl EngineStats {
    /// Records a completed descriptor.
    pub fn record_job(&self, j: &JobCounts) {
        self.add(Counter::Jobs, 1);
        if let Some((c, n)) = j.bytes {
            self.add(c, n);
        }
        self.add(Counter::NsRequested, u64::from(j.ns.0));
        self.add(Counter::NsUsed, u64::from(j.ns.1));
        self.add(Counter::RoRequested, u64::from(j.ro.0));
        self.add(Counter::RoUsed, u64::from(j.ro.1));
        if j.ns.1 {
            self.add(Counter::BytesNs, j.sys_bytes);
        }
        if j.ro.1 {
            self.add(Counter::BytesRo, j.sys_bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_and_snapshot() {
        let s = EngineStats::default();
        s.record_job(&JobCounts {
            bytes: Some((Counter::SysToVram, 4096)),
            ns: (true, true),
            ro: (true, false),
            sys_bytes: 4096,
        });
        s.record_job(&JobCounts::default());
        s.add(Counter::Errors, 1);
        let snap = s.snapshot();
        assert_eq!(snap.jobs, 2);
        assert_eq!(snap.bytes.sys_to_vram, 4096);
        assert_eq!(
            snap.no_snoop,
            AttrCounts {
                requested: 1,
                used: 1,
                bytes: 4096
            }
        );
        assert_eq!(
            snap.relaxed_ordering,
            AttrCounts {
                requested: 1,
                used: 0,
                bytes: 0
            }
        );
        assert_eq!(snap.errors, 1);
        assert_eq!(s.get(Counter::Jobs as usize), Some(2));
        assert_eq!(s.get(COUNTERS), None);
        assert_eq!(STATS_END, 0xb0);
        s.clear();
        assert_eq!(s.snapshot(), StatsSnapshot::default());
    }
}
