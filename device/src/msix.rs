//! MSI-X delivery state: vector notifiers, the device's copy of the table, and the PBA
//! (hw-spec §3.1).
//!
//! The client assigns one notifier (eventfd) per vector with DEVICE_SET_IRQS index 2. Signalling
//! vector `n` writes its notifier, unless delivery is held: no notifier assigned, Function Mask
//! set or Bus Master Enable clear (config space: a message is a memory write), or the vector
//! masked in the device's copy of the table. A held message sets the PBA bit and is sent when the
//! hold goes away (notifier assigned, unmask, Bus Master Enable set). A vector disabled by fault
//! injection is never signalled.
//!
//! The table copy: QEMU emulates the MSI-X table itself and never forwards table accesses, so a
//! table copy that was never written is inert (its reset Mask bits would otherwise block QEMU's
//! vectors forever). Once a client writes the table, the copy's Mask bits are honoured.

use crate::irq::Notifier;
use crate::pci::msix_cap::MsixControl;

/// Bytes per table entry.
pub const ENTRY_SIZE: usize = 16;
/// Vector Control: Mask bit.
pub const VECTOR_MASKED: u32 = 1;

/// What happened to a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The notifier was written.
    Sent,
    /// Held: the PBA bit is set.
    Pending,
    /// Dropped by fault injection (`--inject msix-dead=N`).
    Suppressed,
    /// The notifier failed; the PBA bit is set and the error counted.
    Failed,
    /// No such vector.
    Invalid,
}

/// Counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MsixStats {
    /// Messages sent since reset (IRQ_COUNT).
    pub sent: u64,
    /// Signals that were held.
    pub pended: u64,
    /// Signals dropped by fault injection.
    pub suppressed: u64,
    /// Messages lost by `inject msix-drop` (hw-spec §10).
    pub dropped: u64,
    /// Notifier write failures.
    pub notify_errors: u64,
}

/// MSI-X vectors of the function.
#[derive(Debug)]
pub struct Msix {
    table: Vec<[u32; 4]>,
    pending: Vec<bool>,
    notifiers: Vec<Option<Box<dyn Notifier>>>,
    dead: Vec<bool>,
    /// `inject msix-drop`: messages of each vector still to lose.
    drop_next: Vec<u32>,
    table_written: bool,
    stats: MsixStats,
}

const RESET_ENTRY: [u32; 4] = [0, 0, 0, VECTOR_MASKED];

impl Msix {
    /// `count` vectors; the vectors in `dead` are never signalled (out-of-range ones are ignored).
    pub fn new(count: u16, dead: &[u16]) -> Self {
        let n = usize::from(count);
        let mut dead_map = vec![false; n];
        for &d in dead {
            if let Some(slot) = dead_map.get_mut(usize::from(d)) {
                *slot = true;
            }
        }
        Msix {
            table: vec![RESET_ENTRY; n],
            pending: vec![false; n],
            notifiers: (0..n).map(|_| None).collect(),
            dead: dead_map,
            drop_next: vec![0; n],
            table_written: false,
            stats: MsixStats::default(),
        }
    }

    /// Number of vectors.
    pub fn count(&self) -> usize {
        self.table.len()
    }

    /// Counters.
    pub fn stats(&self) -> MsixStats {
        self.stats
    }

    /// Is a notifier assigned to `vector`.
    pub fn has_notifier(&self, vector: usize) -> bool {
        self.notifiers.get(vector).is_some_and(Option::is_some)
    }

    /// Is the PBA bit of `vector` set.
    pub fn is_pending(&self, vector: usize) -> bool {
        self.pending.get(vector).copied().unwrap_or(false)
    }

    /// Is delivery of `vector` held (masked, or no memory writes allowed).
    fn masked(&self, vector: usize, ctl: MsixControl) -> bool {
        !ctl.bus_master
            || ctl.function_mask
            || (self.table_written
                && self
                    .table
                    .get(vector)
                    .is_some_and(|e| e[3] & VECTOR_MASKED != 0))
    }

    /// Signals `vector`.
    pub fn signal(&mut self, vector: usize, ctl: MsixControl) -> Delivery {
        if vector >= self.count() {
            return Delivery::Invalid;
        }
        if self.dead.get(vector).copied().unwrap_or(false) {
            self.stats.suppressed += 1;
            return Delivery::Suppressed;
        }
        if self.masked(vector, ctl) || !self.has_notifier(vector) {
            // In bounds: vector < count() = pending.len() (checked above).
            self.pending[vector] = true;
            self.stats.pended += 1;
            return Delivery::Pending;
        }
        self.send(vector)
    }

    /// Loses the next `count` messages of `vector` (added to what is pending; hw-spec §10):
    /// a lost message is neither sent nor held, and not counted in `sent` (`IRQ_COUNT`).
    pub fn drop_next(&mut self, vector: usize, count: u32) {
        if let Some(d) = self.drop_next.get_mut(vector) {
            *d = d.saturating_add(count);
        }
    }

    /// Messages still to lose per vector (only vectors with some).
    pub fn drops_pending(&self) -> Vec<(usize, u32)> {
        self.drop_next
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(v, &n)| (v, n))
            .collect()
    }

    /// Forgets the messages still to lose (`inject clear`).
    pub fn clear_drops(&mut self) {
        self.drop_next.iter_mut().for_each(|d| *d = 0);
    }

    fn send(&mut self, vector: usize) -> Delivery {
        if let Some(d) = self.drop_next.get_mut(vector).filter(|d| **d > 0) {
            *d -= 1;
            self.stats.dropped += 1;
            if let Some(p) = self.pending.get_mut(vector) {
                *p = false;
            }
            return Delivery::Suppressed;
        }
        let Some(Some(n)) = self.notifiers.get(vector) else {
            return Delivery::Invalid;
        };
        // `pending` has one entry per notifier slot: `vector` is in bounds (get above).
        match n.notify() {
            Ok(()) => {
                self.stats.sent += 1;
                self.pending[vector] = false;
                Delivery::Sent
            }
            Err(_) => {
                self.stats.notify_errors += 1;
                self.pending[vector] = true;
                Delivery::Failed
            }
        }
    }

    fn deliver_pending(&mut self, vector: usize, ctl: MsixControl) {
        if self.is_pending(vector) && !self.masked(vector, ctl) && self.has_notifier(vector) {
            self.send(vector);
        }
    }

    /// Assigns (or with `None` de-assigns) the notifier of `vector`; a pending message is sent.
    /// Returns false for a vector out of range.
    pub fn set_notifier(
        &mut self,
        vector: usize,
        notifier: Option<Box<dyn Notifier>>,
        ctl: MsixControl,
    ) -> bool {
        let Some(slot) = self.notifiers.get_mut(vector) else {
            return false;
        };
        *slot = notifier;
        self.deliver_pending(vector, ctl);
        true
    }

    /// Drops every notifier (client disable or disconnect).
    pub fn clear_notifiers(&mut self) {
        self.notifiers.iter_mut().for_each(|n| *n = None);
    }

    /// Enable / Function Mask / Bus Master Enable changed: send what is no longer held.
    pub fn control_changed(&mut self, ctl: MsixControl) {
        for v in 0..self.count() {
            self.deliver_pending(v, ctl);
        }
    }

    /// Reads the table copy at `offset` (from the table start); bytes past the last entry read 0.
    pub fn table_read(&self, offset: usize, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let pos = offset.saturating_add(i);
            *b = self
                .table
                .get(pos / ENTRY_SIZE)
                .map_or(0, |e| (e[(pos % ENTRY_SIZE) / 4] >> (8 * (pos % 4))) as u8);
        }
    }

    /// Writes the table copy (clients that do not emulate the table). Only the Mask bit of
    /// Vector Control is writable; bytes past the last entry are ignored.
    pub fn table_write(&mut self, offset: usize, data: &[u8], ctl: MsixControl) {
        self.table_written = true;
        let mut touched = Vec::new();
        for (i, &b) in data.iter().enumerate() {
            let pos = offset.saturating_add(i);
            let vector = pos / ENTRY_SIZE;
            let Some(entry) = self.table.get_mut(vector) else {
                continue;
            };
            let field = (pos % ENTRY_SIZE) / 4;
            let shift = 8 * (pos % 4);
            let mask = if field == 3 { VECTOR_MASKED } else { u32::MAX };
            let bits = (u32::from(b) << shift) & mask;
            entry[field] = (entry[field] & !((0xff << shift) & mask)) | bits;
            if touched.last() != Some(&vector) {
                touched.push(vector);
            }
        }
        for v in touched {
            self.deliver_pending(v, ctl);
        }
    }

    /// Reads the PBA at `offset` (from the PBA start); bits past the last vector read 0.
    pub fn pba_read(&self, offset: usize, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let first = offset.saturating_add(i).saturating_mul(8);
            *b = (0..8).fold(0u8, |acc, bit| {
                acc | (u8::from(self.is_pending(first.saturating_add(bit))) << bit)
            });
        }
    }

    /// Function reset: table and PBA cleared, IRQ_COUNT 0; notifiers belong to the client and
    /// are kept.
    pub fn reset(&mut self) {
        self.table.iter_mut().for_each(|e| *e = RESET_ENTRY);
        self.table_written = false;
        self.soft_reset();
    }

    /// SOFT_RESET: PBA cleared and IRQ_COUNT 0; the table is kept.
    pub fn soft_reset(&mut self) {
        self.pending.iter_mut().for_each(|p| *p = false);
        self.stats = MsixStats::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::irq::fake::Recorder;

    const ON: MsixControl = MsixControl {
        enabled: true,
        function_mask: false,
        bus_master: true,
    };
    const MASKED: MsixControl = MsixControl {
        enabled: true,
        function_mask: true,
        bus_master: true,
    };
    const NO_MASTER: MsixControl = MsixControl {
        enabled: true,
        function_mask: false,
        bus_master: false,
    };

    #[test]
    fn signal_goes_to_the_assigned_notifier() {
        let rec = Recorder::default();
        let mut m = Msix::new(4, &[]);
        m.set_notifier(1, Some(rec.notifier(1)), ON);
        m.set_notifier(2, Some(rec.notifier(2)), ON);
        assert_eq!(m.signal(2, ON), Delivery::Sent);
        assert_eq!(m.signal(1, ON), Delivery::Sent);
        assert_eq!(rec.take(), vec![2, 1]);
        assert_eq!(m.stats().sent, 2);
        assert_eq!(m.signal(4, ON), Delivery::Invalid);
    }

    #[test]
    fn no_notifier_sets_pba_and_assignment_delivers() {
        let rec = Recorder::default();
        let mut m = Msix::new(16, &[]);
        assert_eq!(m.signal(9, ON), Delivery::Pending);
        let mut pba = [0u8; 2];
        m.pba_read(0, &mut pba);
        assert_eq!(pba, [0x00, 0x02]);
        m.set_notifier(9, Some(rec.notifier(9)), ON);
        assert_eq!(rec.take(), vec![9]);
        m.pba_read(0, &mut pba);
        assert_eq!(pba, [0, 0]);
    }

    #[test]
    fn function_mask_holds_and_unmask_delivers() {
        let rec = Recorder::default();
        let mut m = Msix::new(4, &[]);
        m.set_notifier(0, Some(rec.notifier(0)), MASKED);
        assert_eq!(m.signal(0, MASKED), Delivery::Pending);
        assert!(rec.take().is_empty());
        assert!(m.is_pending(0));
        m.control_changed(ON);
        assert_eq!(rec.take(), vec![0]);
        assert!(!m.is_pending(0));
    }

    #[test]
    fn bus_master_clear_holds_and_setting_it_delivers() {
        let rec = Recorder::default();
        let mut m = Msix::new(4, &[]);
        m.set_notifier(2, Some(rec.notifier(2)), NO_MASTER);
        assert_eq!(m.signal(2, NO_MASTER), Delivery::Pending);
        assert_eq!(m.signal(2, NO_MASTER), Delivery::Pending);
        assert!(
            rec.take().is_empty(),
            "no memory write without Bus Master Enable"
        );
        assert!(m.is_pending(2));
        assert_eq!(m.stats().sent, 0, "held signals are not counted as sent");
        m.control_changed(NO_MASTER);
        assert!(rec.take().is_empty());
        m.control_changed(ON);
        assert_eq!(rec.take(), vec![2], "two held signals, one message");
        assert!(!m.is_pending(2));
        assert_eq!(m.stats().sent, 1);
        // A vector masked in the table stays held when Bus Master Enable comes back.
        m.table_write(12, &1u32.to_le_bytes(), NO_MASTER);
        m.set_notifier(0, Some(rec.notifier(0)), NO_MASTER);
        assert_eq!(m.signal(0, NO_MASTER), Delivery::Pending);
        m.control_changed(ON);
        assert!(rec.take().is_empty(), "still masked in the table");
        m.table_write(12, &0u32.to_le_bytes(), ON);
        assert_eq!(rec.take(), vec![0]);
    }

    #[test]
    fn unwritten_table_copy_does_not_mask() {
        let rec = Recorder::default();
        let mut m = Msix::new(2, &[]);
        let mut b = [0u8; 4];
        m.table_read(12, &mut b);
        assert_eq!(u32::from_le_bytes(b), 1, "reset Vector Control: masked");
        m.set_notifier(0, Some(rec.notifier(0)), ON);
        assert_eq!(
            m.signal(0, ON),
            Delivery::Sent,
            "inert until the client writes it"
        );
    }

    #[test]
    fn written_table_mask_holds_and_unmask_delivers() {
        let rec = Recorder::default();
        let mut m = Msix::new(2, &[]);
        m.set_notifier(1, Some(rec.notifier(1)), ON);
        // Program entry 1: address, data, keep masked.
        let mut entry = [0u8; 16];
        entry[0..4].copy_from_slice(&0xfee0_0000u32.to_le_bytes());
        entry[8..12].copy_from_slice(&0x4021u32.to_le_bytes());
        entry[12..16].copy_from_slice(&0xffff_ffffu32.to_le_bytes());
        m.table_write(16, &entry, ON);
        let mut back = [0u8; 16];
        m.table_read(16, &mut back);
        assert_eq!(&back[0..12], &entry[0..12]);
        assert_eq!(
            u32::from_le_bytes(back[12..16].try_into().unwrap()),
            1,
            "only Mask writable"
        );
        assert_eq!(m.signal(1, ON), Delivery::Pending);
        m.table_write(28, &[0, 0, 0, 0], ON);
        assert_eq!(rec.take(), vec![1]);
        // Bytes past the table read 0 and writes there are ignored.
        m.table_write(64, &[0xff; 8], ON);
        let mut b = [0xaa; 8];
        m.table_read(60, &mut b);
        assert_eq!(&b[4..], &[0; 4]);
    }

    #[test]
    fn dead_vector_is_never_signalled() {
        let rec = Recorder::default();
        let mut m = Msix::new(4, &[3, 1]);
        m.set_notifier(3, Some(rec.notifier(3)), ON);
        m.set_notifier(2, Some(rec.notifier(2)), ON);
        m.set_notifier(1, Some(rec.notifier(1)), ON);
        assert_eq!(m.signal(3, ON), Delivery::Suppressed);
        assert_eq!(m.signal(1, ON), Delivery::Suppressed);
        assert_eq!(m.signal(2, ON), Delivery::Sent);
        assert_eq!(rec.take(), vec![2]);
        assert!(!m.is_pending(3));
        assert_eq!(m.stats().suppressed, 2);
    }

    #[test]
    fn de_assign_and_clear() {
        let rec = Recorder::default();
        let mut m = Msix::new(4, &[]);
        m.set_notifier(0, Some(rec.notifier(0)), ON);
        m.set_notifier(0, None, ON);
        assert_eq!(m.signal(0, ON), Delivery::Pending);
        m.set_notifier(1, Some(rec.notifier(1)), ON);
        m.clear_notifiers();
        assert!(!m.has_notifier(1));
        assert!(!m.set_notifier(4, None, ON));
        assert!(rec.take().is_empty());
    }

    #[test]
    fn pba_read_bounds_and_many_vectors() {
        let mut m = Msix::new(2048, &[]);
        m.signal(2047, ON);
        m.signal(0, ON);
        let mut pba = vec![0u8; 256];
        m.pba_read(0, &mut pba);
        assert_eq!(pba[0], 1);
        assert_eq!(pba[255], 0x80);
        let mut past = [0xffu8; 8];
        m.pba_read(4000, &mut past);
        assert_eq!(past, [0; 8]);
        m.pba_read(usize::MAX - 2, &mut past);
        assert_eq!(past, [0; 8]);
    }

    #[test]
    fn resets() {
        let rec = Recorder::default();
        let mut m = Msix::new(4, &[]);
        m.set_notifier(0, Some(rec.notifier(0)), ON);
        m.signal(0, ON);
        m.signal(1, ON);
        m.table_write(0, &[0x11; 4], ON);
        m.soft_reset();
        assert!(!m.is_pending(1));
        assert_eq!(m.stats().sent, 0);
        let mut b = [0u8; 1];
        m.table_read(0, &mut b);
        assert_eq!(b[0], 0x11, "soft reset keeps the table");
        m.reset();
        m.table_read(0, &mut b);
        assert_eq!(b[0], 0);
        assert!(m.has_notifier(0), "notifiers belong to the client");
    }
}
