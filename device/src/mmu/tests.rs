//! Unit tests of [`Mmu`]: registers, translation through the TLB, the fault ring and the
//! fault wait, with fake memory and a fake device (no engines, no sockets).
#![allow(clippy::unwrap_used)]

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use vugpu_backend::SharedPage;

use super::walk::tests::{four_levels, leaf_entry, sys, vram, Mem};
use super::walk::{self, pte, PAGE_4K};
use super::*;

const BASE: u64 = 0x20_0000;

fn page() -> SharedPage {
    SharedPage::new(BASE + 0x1000, BASE).unwrap()
}

/// A device with a record memory and an MSI-X log.
struct Fake {
    db: SharedPage,
    records: Mutex<Vec<(Addr, Vec<u8>)>>,
    signals: Mutex<Vec<usize>>,
    unwritable: bool,
}

impl Fake {
    fn new() -> Arc<Fake> {
        Arc::new(Fake {
            db: page(),
            records: Mutex::new(Vec::new()),
            signals: Mutex::new(Vec::new()),
            unwritable: false,
        })
    }
}

impl FaultSink for Fake {
    fn write_record(&self, at: Addr, bytes: &[u8]) -> Result<(), bool> {
        if self.unwritable {
            return Err(false);
        }
        self.records.lock().unwrap().push((at, bytes.to_vec()));
        Ok(())
    }
    fn signal(&self, vector: usize) {
        self.signals.lock().unwrap().push(vector);
    }
    fn clock_ns(&self) -> u64 {
        0x1234
    }
    fn shutting_down(&self) -> bool {
        false
    }
    fn doorbell(&self) -> &SharedPage {
        &self.db
    }
    fn trace_fault(&self, _engine: usize, _rec: &Record, _written: bool) {}
}

fn st(m: &Mmu, db: &SharedPage) -> u32 {
    m.read(offset::STATUS, db)
}

/// Programs a context table of 8 entries in VRAM at 0x10_0000 and a ring of `ring` records in
/// SYS at 0x8000, then enables (with FAULT_IRQ).
fn enable(m: &Mmu, db: &SharedPage, ring: u32) {
    for (r, v) in [
        (offset::CTX_BASE_LO, 0x10_0000),
        (offset::CTX_COUNT, 8),
        (offset::CTX_APERTURE, 1),
        (offset::RING_BASE_LO, 0x8000),
        (offset::RING_SIZE, ring),
        (offset::RING_APERTURE, 0),
        (offset::CONTROL, control::ENABLE | control::FAULT_IRQ),
    ] {
        m.write(r, v, db);
    }
    assert_eq!(st(m, db) & status::ENABLED, status::ENABLED);
}

/// Context 2's root at SYS 0x1000 (the tables of [`four_levels`]).
fn with_context(mem: &mut Mem) {
    mem.set(vram(0x10_0000 + 2 * 16), 1 | 0x1000);
    mem.set(vram(0x10_0000 + 2 * 16 + 8), 0);
}

const VA: u64 = 0x7f00_0000_0000;

#[test]
fn registers_latch_validate_and_lock() {
    let m = Mmu::new(true, 5, MmuInject::default());
    let db = page();
    assert_eq!(m.read(offset::FAULT_VECTOR, &db), 5);
    // Enabling with nothing programmed is refused.
    m.write(offset::CONTROL, control::ENABLE | control::FAULT_IRQ, &db);
    assert_eq!(st(&m, &db), status::CONFIG_ERROR);
    assert_eq!(
        m.read(offset::CONTROL, &db),
        control::FAULT_IRQ,
        "ENABLE reads 0"
    );
    assert!(!m.enabled());
    db.store_u32(DB_FAULT_GET, 9);
    enable(&m, &db, 4);
    assert_eq!(st(&m, &db), status::ENABLED, "CONFIG_ERROR cleared");
    assert_eq!(m.read(offset::FAULT_GET, &db), 0, "ENABLE zeroes FAULT_GET");
    assert!(!m.write(offset::CTX_COUNT, 1, &db), "latched while enabled");
    assert_eq!(m.read(offset::CTX_COUNT, &db), 8);
    m.write(offset::FAULT_GET, 3, &db);
    assert_eq!(db.load_u32(DB_FAULT_GET), Some(3), "the doorbell word");
    m.write(offset::CONTROL, 0, &db);
    assert_eq!(st(&m, &db), 0);
    assert!(m.write(offset::CTX_COUNT, 1, &db));
    // RsvdZ offsets and an absent MMU.
    assert_eq!(m.read(0x34, &db), 0);
    let none = Mmu::new(false, 5, MmuInject::default());
    none.write(offset::CTX_COUNT, 3, &db);
    assert_eq!(none.read(offset::CTX_COUNT, &db), 0);
    assert_eq!(none.read(offset::FAULT_VECTOR, &db), 0);
}

#[test]
fn translation_uses_the_tlb_and_counts() {
    let m = Mmu::new(true, 5, MmuInject::default());
    let db = page();
    let mut mem = Mem::default();
    with_context(&mut mem);
    four_levels(&mut mem, VA, leaf_entry(sys(0x5_0000), pte::READ));
    // The next page's entry (same tables) is not present.
    mem.set(vram(0x4000 + (walk::index(VA, 0) + 1) * 8), 0);
    let mut r = mem.reader();
    assert_eq!(
        m.translate(2, VA, 8, Access::Read, &mut r),
        Err(XlateError::Disabled)
    );
    enable(&m, &db, 4);
    // Two pages: the second is not mapped (NOT_PRESENT at level 0, its first byte).
    assert_eq!(
        m.translate(2, VA + 0xff0, 0x20, Access::Read, &mut r),
        Err(XlateError::Fault {
            va: VA + 0x1000,
            fault: WalkFault {
                reason: Reason::NotPresent,
                level: 0
            }
        })
    );
    let segs = m.translate(2, VA + 8, 16, Access::Read, &mut r).unwrap();
    assert_eq!(segs, vec![(sys(0x5_0008), 16)]);
    assert_eq!(
        m.counter(Counter::TlbMisses),
        2,
        "one walk per page of the first access"
    );
    assert_eq!(
        m.counter(Counter::TlbHits),
        1,
        "cached by the failed access's first page"
    );
    drop(r);
    let reads = mem.reads.len();
    let mut r = mem.reader();
    m.translate(2, VA, 8, Access::Read, &mut r).unwrap();
    drop(r);
    assert_eq!(mem.reads.len(), reads, "a hit reads no table");
    // A write is not granted: PROTECTION at the leaf's level; a faulting lookup is not cached.
    let mut r = mem.reader();
    assert_eq!(
        m.translate(2, VA, 8, Access::Write, &mut r),
        Err(XlateError::Fault {
            va: VA,
            fault: WalkFault {
                reason: Reason::Protection,
                level: 0
            }
        })
    );
    drop(r);
    // The driver upgrades the entry without invalidating: the write walks again and works.
    four_levels(
        &mut mem,
        VA,
        leaf_entry(sys(0x5_0000), pte::READ | pte::WRITE),
    );
    let mut r = mem.reader();
    assert!(m.translate(2, VA, 8, Access::Write, &mut r).is_ok());
    drop(r);
    // A downgrade needs an invalidation: until then the TLB still translates.
    four_levels(&mut mem, VA, 0);
    let mut r = mem.reader();
    assert!(m.translate(2, VA, 8, Access::Read, &mut r).is_ok());
    let no = AtomicBool::new(false);
    assert!(m.invalidate(
        Scope {
            ctx: Some(2),
            range: Some((VA, VA + PAGE_4K))
        },
        &no
    ));
    assert!(matches!(
        m.translate(2, VA, 8, Access::Read, &mut r),
        Err(XlateError::Fault { .. })
    ));
    assert_eq!(m.counter(Counter::Invalidations), 1);
    // Context out of range and a bad address.
    assert_eq!(
        m.translate(8, VA, 8, Access::Read, &mut r),
        Err(XlateError::Fault {
            va: VA,
            fault: WalkFault {
                reason: Reason::BadContext,
                level: 4
            }
        })
    );
    assert_eq!(
        m.translate(2, 1 << 48, 8, Access::Read, &mut r),
        Err(XlateError::Fault {
            va: 1 << 48,
            fault: WalkFault {
                reason: Reason::VaRange,
                level: 4
            }
        })
    );
}

#[test]
fn stale_tlb_injection_drops_nothing() {
    let m = Mmu::new(
        true,
        5,
        MmuInject {
            stale_tlb: true,
            ..MmuInject::default()
        },
    );
    let db = page();
    enable(&m, &db, 4);
    let mut mem = Mem::default();
    with_context(&mut mem);
    four_levels(&mut mem, VA, leaf_entry(sys(0x5_0000), pte::READ));
    let mut r = mem.reader();
    m.translate(2, VA, 8, Access::Read, &mut r).unwrap();
    drop(r);
    four_levels(&mut mem, VA, 0);
    assert!(m.invalidate(Scope::ALL, &AtomicBool::new(false)));
    let mut r = mem.reader();
    assert!(
        m.translate(2, VA, 8, Access::Read, &mut r).is_ok(),
        "the stale entry is still used"
    );
}

fn raise_in_thread(
    m: &Arc<Mmu>,
    fake: &Arc<Fake>,
    engine: usize,
    ctx: u16,
    abort: &Arc<AtomicBool>,
) -> std::thread::JoinHandle<Resume> {
    let (m, fake, abort) = (m.clone(), fake.clone(), abort.clone());
    std::thread::spawn(move || {
        let f = PendingFault {
            engine,
            ctx,
            va: VA + 0x18,
            access: Access::Atomic,
            fault: WalkFault {
                reason: Reason::NotPresent,
                level: 1,
            },
        };
        m.raise(&*fake, &f, &abort)
    })
}

/// Waits (polling a condition, not sleeping for a guessed time) until `n` engines wait.
fn until_waiting(m: &Mmu, n: usize) {
    while m
        .lock()
        .waiters
        .iter()
        .filter(|w| w.resume.is_none())
        .count()
        != n
    {
        std::thread::yield_now();
    }
}

#[test]
fn a_fault_writes_its_record_signals_and_waits_for_replay() {
    let m = Arc::new(Mmu::new(true, 5, MmuInject::default()));
    let fake = Fake::new();
    enable(&m, &fake.db, 4);
    let no = Arc::new(AtomicBool::new(false));
    let t = raise_in_thread(&m, &fake, 3, 2, &no);
    until_waiting(&m, 1);
    assert_eq!(st(&m, &fake.db), status::ENABLED | status::WAITING);
    let recs = fake.records.lock().unwrap().clone();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].0, sys(0x8000), "slot 0");
    let want = Record {
        addr: VA + 0x18,
        context: 2,
        engine: 3,
        access: Access::Atomic,
        reason: Reason::NotPresent,
        level: 1,
        timestamp: 0x1234,
        seq: 0,
    };
    assert_eq!(recs[0].1, want.to_bytes().to_vec());
    assert_eq!(fake.db.load_u32(DB_FAULT_PUT), Some(1));
    assert_eq!(m.read(offset::FAULT_PUT, &fake.db), 1);
    assert_eq!(*fake.signals.lock().unwrap(), vec![5], "the fault vector");
    // A replay of another context leaves it waiting; its own context resumes it.
    assert_eq!(m.replay(Some(1), false), 0);
    assert_eq!(m.replay(Some(2), false), 1);
    assert_eq!(t.join().unwrap(), Resume::Replay);
    assert_eq!(st(&m, &fake.db), status::ENABLED);
    assert_eq!(m.counter(Counter::Replays), 1);
    // A second fault: the next slot, seq 1; cancelled through "all contexts".
    let t = raise_in_thread(&m, &fake, 0, 7, &no);
    until_waiting(&m, 1);
    assert_eq!(fake.records.lock().unwrap()[1].0, sys(0x8020));
    assert_eq!(fake.records.lock().unwrap()[1].1[0x18], 1, "seq");
    assert_eq!(m.replay(None, true), 1);
    assert_eq!(t.join().unwrap(), Resume::Cancel);
    assert_eq!(m.counter(Counter::Cancels), 1);
    assert_eq!(m.counter(Counter::Faults), 2);
    // The statistics registers: one latch like the engines'.
    assert_eq!(m.read(offset::STATS, &fake.db), 2, "FAULTS_LO");
    assert_eq!(m.read(offset::STATS + 4, &fake.db), 0, "FAULTS_HI");
}

#[test]
fn a_full_ring_drops_the_record_sets_overflow_and_still_waits() {
    let m = Arc::new(Mmu::new(true, 5, MmuInject::default()));
    let fake = Fake::new();
    enable(&m, &fake.db, 1);
    let no = Arc::new(AtomicBool::new(false));
    let a = raise_in_thread(&m, &fake, 0, 2, &no);
    until_waiting(&m, 1);
    let b = raise_in_thread(&m, &fake, 1, 3, &no);
    until_waiting(&m, 2);
    assert_eq!(
        fake.records.lock().unwrap().len(),
        1,
        "the second was dropped"
    );
    assert_eq!(m.read(offset::FAULT_PUT, &fake.db), 1);
    assert_eq!(
        st(&m, &fake.db),
        status::ENABLED | status::WAITING | status::FAULT_OVERFLOW
    );
    assert_eq!(m.counter(Counter::FaultsDropped), 1);
    assert_eq!(fake.signals.lock().unwrap().len(), 2, "signalled for both");
    m.write(offset::STATUS, status::FAULT_OVERFLOW, &fake.db);
    assert_eq!(st(&m, &fake.db), status::ENABLED | status::WAITING, "W1C");
    // The driver lost a record: it replays all contexts.
    assert_eq!(m.replay(None, false), 2);
    assert_eq!(a.join().unwrap(), Resume::Replay);
    assert_eq!(b.join().unwrap(), Resume::Replay);
}

#[test]
fn an_unwritable_ring_drops_like_a_full_one() {
    let m = Arc::new(Mmu::new(true, 5, MmuInject::default()));
    let fake = Arc::new(Fake {
        unwritable: true,
        db: page(),
        records: Mutex::new(Vec::new()),
        signals: Mutex::new(Vec::new()),
    });
    enable(&m, &fake.db, 4);
    let no = Arc::new(AtomicBool::new(false));
    let t = raise_in_thread(&m, &fake, 0, 2, &no);
    until_waiting(&m, 1);
    assert_eq!(m.read(offset::FAULT_PUT, &fake.db), 0);
    assert_ne!(st(&m, &fake.db) & status::FAULT_OVERFLOW, 0);
    m.replay(None, false);
    assert_eq!(t.join().unwrap(), Resume::Replay);
}

#[test]
fn disable_cancels_and_reset_or_abort_abandon_the_wait() {
    let m = Arc::new(Mmu::new(true, 5, MmuInject::default()));
    let fake = Fake::new();
    enable(&m, &fake.db, 4);
    let no = Arc::new(AtomicBool::new(false));
    let t = raise_in_thread(&m, &fake, 0, 2, &no);
    until_waiting(&m, 1);
    m.write(offset::CONTROL, control::FAULT_IRQ, &fake.db);
    assert_eq!(t.join().unwrap(), Resume::Cancel, "ENABLE 1->0 cancels");
    assert_eq!(m.counter(Counter::Cancels), 1);
    // Disabled: a new fault is cancelled at once (no record).
    let before = fake.records.lock().unwrap().len();
    assert_eq!(
        raise_in_thread(&m, &fake, 0, 2, &no).join().unwrap(),
        Resume::Cancel
    );
    assert_eq!(fake.records.lock().unwrap().len(), before);
    // A reset abandons.
    enable(&m, &fake.db, 4);
    let t = raise_in_thread(&m, &fake, 0, 2, &no);
    until_waiting(&m, 1);
    m.reset();
    assert_eq!(t.join().unwrap(), Resume::Aborted);
    assert_eq!(st(&m, &fake.db), 0, "registers reset");
    assert_eq!(m.read(offset::CTX_COUNT, &fake.db), 0);
    assert_eq!(m.counter(Counter::Faults), 2, "statistics kept");
    // An engine reset: its abort flag and a wake-up.
    enable(&m, &fake.db, 4);
    let abort = Arc::new(AtomicBool::new(false));
    let t = raise_in_thread(&m, &fake, 0, 2, &abort);
    until_waiting(&m, 1);
    abort.store(true, std::sync::atomic::Ordering::Release);
    m.wake_waiters();
    assert_eq!(t.join().unwrap(), Resume::Aborted);
    assert_eq!(st(&m, &fake.db), status::ENABLED, "not waiting any more");
}

#[test]
fn no_fault_irq_injection_writes_records_without_signalling() {
    let m = Arc::new(Mmu::new(
        true,
        5,
        MmuInject {
            no_fault_irq: true,
            ..MmuInject::default()
        },
    ));
    let fake = Fake::new();
    enable(&m, &fake.db, 4);
    let no = Arc::new(AtomicBool::new(false));
    let t = raise_in_thread(&m, &fake, 0, 2, &no);
    until_waiting(&m, 1);
    assert_eq!(fake.records.lock().unwrap().len(), 1);
    assert!(fake.signals.lock().unwrap().is_empty());
    m.replay(None, false);
    t.join().unwrap();
    // Without the injection, FAULT_IRQ = 0 also keeps the vector quiet.
    let m = Arc::new(Mmu::new(true, 5, MmuInject::default()));
    let fake = Fake::new();
    enable(&m, &fake.db, 4);
    m.write(offset::CONTROL, control::ENABLE, &fake.db);
    let t = raise_in_thread(&m, &fake, 0, 2, &no);
    until_waiting(&m, 1);
    assert!(fake.signals.lock().unwrap().is_empty());
    m.replay(None, false);
    t.join().unwrap();
}
