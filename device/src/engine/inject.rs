//! Faults injected at run time through the control socket (`vugpu ctl SOCKET inject`,
//! hw-spec §10): what the engines and the device consult before they act.
//!
//! Everything here is atomics or short locks taken off the hot path's common case (one relaxed
//! load says "nothing injected"), so a server with no injection pays nothing measurable. MSI-X
//! drops live in [`crate::msix::Msix`] (the one place messages leave) and are only requested
//! here.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use serde::Serialize;

/// Most engines (hw-spec §6: `ENGINE_COUNT` <= 16).
const ENGINES: usize = 16;
/// Most poisoned VRAM ranges at once.
pub const MAX_POISON: usize = 16;

/// Injected faults of one GPU.
#[derive(Debug, Default)]
pub struct Injected {
    /// Per engine: descriptors still to fail with an injected DMA error.
    dma_error: [AtomicU32; ENGINES],
    /// Per engine: hung until the engine (or the device) is reset.
    hang: [AtomicBool; ENGINES],
    /// Poisoned VRAM ranges `[start, end)`.
    poison: Mutex<Vec<(u64, u64)>>,
    /// `poison` is not empty.
    poisoned: AtomicBool,
    /// The function was surprise-removed.
    removed: AtomicBool,
    /// Descriptors failed by `dma-error`.
    dma_errors: AtomicU64,
    /// Descriptors an engine hung on.
    hangs: AtomicU64,
    /// Engine reads that hit poisoned VRAM.
    poison_hits: AtomicU64,
}

/// What `stats` shows of the injections (hw-spec §10).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InjectReport {
    /// Per engine: descriptors still to fail.
    pub dma_error_pending: Vec<u32>,
    /// Engines armed or hung by `hang`.
    pub hang: Vec<usize>,
    /// Poisoned VRAM ranges: `[offset, length]`.
    pub poison: Vec<[u64; 2]>,
    /// MSI-X messages still to lose: `[vector, count]`.
    pub msix_drop_pending: Vec<[u64; 2]>,
    /// The function is surprise-removed.
    pub removed: bool,
    /// Descriptors failed by `dma-error`.
    pub dma_errors: u64,
    /// Descriptors engines hung on.
    pub hangs: u64,
    /// Engine reads failed by poisoned VRAM.
    pub poison_hits: u64,
    /// MSI-X messages lost by `msix-drop`.
    pub msix_dropped: u64,
}

fn any_overlap(ranges: &[(u64, u64)], start: u64, end: u64) -> Option<u64> {
    ranges
        .iter()
        .filter(|&&(s, e)| s < end && start < e)
        .map(|&(s, _)| s.max(start))
        .min()
}

impl Injected {
    /// Arms `count` DMA errors on `engine` (added to what is pending).
    pub fn arm_dma_error(&self, engine: usize, count: u32) {
        if let Some(a) = self.dma_error.get(engine) {
            let _ = a.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some(v.saturating_add(count))
            });
        }
    }

    /// Takes one pending DMA error of `engine`: the descriptor starting now fails.
    pub fn take_dma_error(&self, engine: usize) -> bool {
        let Some(a) = self.dma_error.get(engine) else {
            return false;
        };
        if a.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let took = a
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| v.checked_sub(1))
            .is_ok();
        if took {
            self.dma_errors.fetch_add(1, Ordering::Relaxed);
        }
        took
    }

    /// Arms a hang of `engine`: its next descriptor makes no progress until a reset.
    pub fn arm_hang(&self, engine: usize) {
        if let Some(h) = self.hang.get(engine) {
            h.store(true, Ordering::Release);
        }
    }

    /// `engine` is hung (armed): the thread must not start or continue a descriptor.
    pub fn hung(&self, engine: usize) -> bool {
        self.hang
            .get(engine)
            .is_some_and(|h| h.load(Ordering::Acquire))
    }

    /// Counts a descriptor the engine hung on.
    pub fn count_hang(&self) {
        self.hangs.fetch_add(1, Ordering::Relaxed);
    }

    /// An engine reset (or a device reset) ends the hang of `engine`.
    pub fn end_hang(&self, engine: usize) {
        if let Some(h) = self.hang.get(engine) {
            h.store(false, Ordering::Release);
        }
    }

    /// Poisons VRAM `[offset, offset + len)`; `false` if the table is full.
    pub fn poison(&self, offset: u64, len: u64) -> bool {
        let mut p = self.poison.lock().unwrap_or_else(PoisonError::into_inner);
        if p.len() >= MAX_POISON {
            return false;
        }
        p.push((offset, offset.saturating_add(len)));
        self.poisoned.store(true, Ordering::Release);
        true
    }

    /// The first poisoned byte of VRAM `[offset, offset + len)`, if any (counted as a hit).
    pub fn poisoned(&self, offset: u64, len: u64) -> Option<u64> {
        if !self.poisoned.load(Ordering::Acquire) {
            return None;
        }
        let p = self.poison.lock().unwrap_or_else(PoisonError::into_inner);
        let hit = any_overlap(&p, offset, offset.saturating_add(len));
        if hit.is_some() {
            self.poison_hits.fetch_add(1, Ordering::Relaxed);
        }
        hit
    }

    /// Surprise removal: from now on the function does not answer.
    pub fn remove(&self) {
        self.removed.store(true, Ordering::SeqCst);
    }

    /// The function was surprise-removed.
    pub fn removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }

    /// `clear`: forgets pending DMA errors, hangs and poison (not a removal).
    pub fn clear(&self) {
        for a in &self.dma_error {
            a.store(0, Ordering::Release);
        }
        for h in &self.hang {
            h.store(false, Ordering::Release);
        }
        self.poison
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        self.poisoned.store(false, Ordering::Release);
    }

    /// The injections of a GPU with `engines` engines (MSI-X drops: filled in by the caller,
    /// who holds the MSI-X state).
    pub fn report(&self, engines: usize) -> InjectReport {
        let n = engines.min(ENGINES);
        InjectReport {
            dma_error_pending: self.dma_error[..n]
                .iter()
                .map(|a| a.load(Ordering::Relaxed))
                .collect(),
            hang: (0..n).filter(|&i| self.hung(i)).collect(),
            poison: self
                .poison
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .map(|&(s, e)| [s, e - s])
                .collect(),
            removed: self.removed(),
            dma_errors: self.dma_errors.load(Ordering::Relaxed),
            hangs: self.hangs.load(Ordering::Relaxed),
            poison_hits: self.poison_hits.load(Ordering::Relaxed),
            msix_drop_pending: Vec::new(),
            msix_dropped: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dma_errors_are_taken_one_per_descriptor() {
        let i = Injected::default();
        assert!(!i.take_dma_error(1));
        i.arm_dma_error(1, 2);
        assert!(!i.take_dma_error(0));
        assert!(i.take_dma_error(1));
        assert!(i.take_dma_error(1));
        assert!(!i.take_dma_error(1));
        assert_eq!(i.report(2).dma_errors, 2);
        i.arm_dma_error(99, 1);
        assert!(!i.take_dma_error(99));
    }

    #[test]
    fn poison_reports_the_first_poisoned_byte() {
        let i = Injected::default();
        assert_eq!(i.poisoned(0, 1 << 20), None);
        assert!(i.poison(0x3000, 0x1000));
        assert!(i.poison(0x1800, 0x10));
        assert_eq!(i.poisoned(0, 0x1000), None);
        assert_eq!(i.poisoned(0x1000, 0x3000), Some(0x1800));
        assert_eq!(i.poisoned(0x3ff0, 0x100), Some(0x3ff0));
        assert_eq!(i.poisoned(0x4000, 0x100), None);
        assert_eq!(i.report(1).poison, vec![[0x3000, 0x1000], [0x1800, 0x10]]);
        assert_eq!(i.report(1).poison_hits, 2);
        i.clear();
        assert_eq!(i.poisoned(0x3000, 1), None);
        for _ in 0..MAX_POISON {
            assert!(i.poison(0, 1));
        }
        assert!(!i.poison(0, 1), "bounded");
    }

    #[test]
    fn hang_until_reset_and_removal_is_sticky() {
        let i = Injected::default();
        i.arm_hang(3);
        assert!(i.hung(3) && !i.hung(2));
        i.end_hang(3);
        assert!(!i.hung(3));
        i.remove();
        i.clear();
        assert!(i.removed());
    }
}
