//! The C header of the hardware contract, `guest-tests/kmod/vugpu_hw.h`, generated from the
//! constants the model itself uses (hw-spec §1-§3, §5-§9).
//!
//! Every `#define` below takes its value from the Rust constant (or enum, or register table)
//! that the device model decodes or encodes with, so the driver's header cannot say something
//! the model does not do: `vugpu hw-header > guest-tests/kmod/vugpu_hw.h` regenerates it, and
//! the test `checked_in_header_is_generated` fails (with a diff and that command) when the
//! checked-in file differs by a byte. A few values the model has no constant for are defined
//! here, once: `VUGPU_DB_TAIL` and `VUGPU_REGFILE_START` (0: the first word of a doorbell area,
//! the start of BAR0), `VUGPU_ENG_ERR_NONE` (0), `VUGPU_ENG_STATUS_STATE_MASK` (bits 3:0) and
//! `VUGPU_CAPS_KNOWN` (the union of the `CAPS` bits). The function-like macros and the
//! `_Static_assert`s are C text; the assertions are checked by every compile of the driver.
//!
//! [`HwHeader::values`] gives the same values by name, for the test that cross-checks the
//! tables of docs/hw-spec.md (`device/tests/hw_spec_tables.rs`).

use std::fmt::Write as _;

use crate::engine::desc::{self, field as dfield, flags, opcode};
use crate::engine::peer_window as pw;
use crate::engine::regs::{self as eregs, control, info, ErrorCode, State};
use crate::engine::stats::{self, Counter as EngCounter};
use crate::gpu::{self, cap_offset, region};
use crate::mmu::fault_ring::{self, field as ffield};
use crate::mmu::regs as mregs;
use crate::mmu::walk::{self, ctx, pte, Access, Reason};
use crate::mmu::Counter as MmuCounter;
use crate::pci::{aer, config_space, function, msix_cap, pcie, pm, rebar};
use crate::regs::spec::{self, Kind, REGISTERS};
use crate::regs::REGISTER_FILE_SIZE;

/// Path of the generated header, relative to the workspace root.
pub const HEADER_PATH: &str = "guest-tests/kmod/vugpu_hw.h";
/// The command that regenerates it (from the workspace root).
pub const REGENERATE: &str =
    "cargo run -q -p vugpu-device --bin vugpu -- hw-header > guest-tests/kmod/vugpu_hw.h";

/// The generated header and its object-like macros' values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HwHeader {
    /// The header text.
    pub text: String,
    /// `(name, value)` of every object-like `#define` with a number, in header order.
    pub values: Vec<(String, u64)>,
}

impl HwHeader {
    /// The value of `name` (e.g. `VUGPU_REG_CAPS`).
    pub fn value(&self, name: &str) -> Option<u64> {
        self.values.iter().find(|(n, _)| n == name).map(|&(_, v)| v)
    }
}

/// How a value is spelled in C.
#[derive(Debug, Clone, Copy)]
enum Val {
    /// `0x%0Nx` with a suffix.
    Hex(u64, usize, &'static str),
    /// Decimal with a suffix.
    Dec(u64, &'static str),
    /// `(1<suffix> << n)` for a single-bit mask.
    Bit(u64, &'static str),
}

const U: &str = "U";
const ULL: &str = "ULL";

fn hex(v: impl Into<u64>, digits: usize) -> Val {
    Val::Hex(v.into(), digits, "")
}

fn dec(v: impl Into<u64>) -> Val {
    Val::Dec(v.into(), "")
}

fn bit(v: impl Into<u64>) -> Val {
    Val::Bit(v.into(), U)
}

fn bit64(v: u64) -> Val {
    Val::Bit(v, ULL)
}

#[derive(Default)]
struct Builder {
    text: String,
    values: Vec<(String, u64)>,
}

/// Column of the value (tabs of 8).
const VALUE_COLUMN: usize = 40;

impl Builder {
    fn raw(&mut self, s: &str) {
        self.text.push_str(s);
        self.text.push('\n');
    }

    fn def(&mut self, name: &str, val: Val, comment: &str) {
        let (v, spelled) = match val {
            Val::Hex(v, digits, sfx) => (v, format!("0x{v:0digits$x}{sfx}")),
            Val::Dec(v, sfx) => (v, format!("{v}{sfx}")),
            Val::Bit(v, sfx) if v.is_power_of_two() => {
                (v, format!("(1{sfx} << {})", v.trailing_zeros()))
            }
            Val::Bit(v, sfx) => (v, format!("0x{v:x}{sfx}")),
        };
        self.values.push((name.to_string(), v));
        self.macro_line(name, &spelled, comment);
    }

    /// A function-like or derived macro: C text, not a value of the table.
    fn expr(&mut self, name: &str, body: &str, comment: &str) {
        self.macro_line(name, body, comment);
    }

    fn macro_line(&mut self, name: &str, body: &str, comment: &str) {
        let mut line = format!("#define {name}");
        let mut column = line.len();
        if column >= VALUE_COLUMN {
            line.push(' ');
        }
        while column < VALUE_COLUMN {
            line.push('\t');
            column = (column / 8 + 1) * 8;
        }
        let _ = write!(self.text, "{line}{body}");
        if !comment.is_empty() {
            let _ = write!(self.text, "\t/* {comment} */");
        }
        self.text.push('\n');
    }
}

/// Generates the header.
pub fn generate() -> HwHeader {
    let mut h = Builder::default();
    prologue(&mut h);
    pci(&mut h);
    bar0(&mut h);
    register_file(&mut h);
    engines(&mut h);
    descriptors(&mut h);
    mmu(&mut h);
    engine_stats(&mut h);
    errors(&mut h);
    layout_checks(&mut h);
    h.raw("");
    h.raw("#endif /* VUGPU_HW_H */");
    HwHeader {
        text: h.text,
        values: h.values,
    }
}

fn prologue(h: &mut Builder) {
    h.raw("/* SPDX-License-Identifier: GPL-2.0 */");
    h.raw("/*");
    h.raw(" * GENERATED by `vugpu hw-header` from the device model's constants");
    h.raw(" * (device/src/hw_header.rs); do not edit. Regenerate from the workspace root:");
    h.raw(&format!(" *   {REGENERATE}"));
    h.raw(" * `cargo test -p vugpu-device` fails while this file differs from the output.");
    h.raw(" *");
    h.raw(&format!(
        " * vugpu hardware definitions (docs/hw-spec.md version {}.{}: §1-§3, §5 error",
        spec::VERSION_VALUE >> 16,
        spec::VERSION_VALUE & 0xffff
    ));
    h.raw(" * reporting, §6 engine registers and doorbell words, §7 descriptors, §8.1");
    h.raw(" * statistics counters and §9 the device MMU). It describes the device, not the");
    h.raw(" * driver, and is shared by the kernel module and the userspace tests, so it uses");
    h.raw(" * only preprocessor constants; the _Static_asserts check that the map is");
    h.raw(" * self-consistent.");
    h.raw(" */");
    h.raw("#ifndef VUGPU_HW_H");
    h.raw("#define VUGPU_HW_H");
}

fn pci(h: &mut Builder) {
    h.raw("");
    h.raw("/* §1 PCI identity (defaults; the server can override vendor/device IDs). */");
    h.def("VUGPU_PCI_VENDOR_ID", hex(gpu::DEFAULT_VENDOR_ID, 4), "");
    h.def("VUGPU_PCI_DEVICE_ID", hex(gpu::DEFAULT_DEVICE_ID, 4), "");
    h.def("VUGPU_PCI_REVISION", hex(gpu::REVISION, 2), "");
    h.def(
        "VUGPU_PCI_CLASS",
        hex(gpu::CLASS_CODE, 6),
        "3D controller, prog-if 0",
    );
    h.def(
        "VUGPU_PCI_SUBSYS_VENDOR_ID",
        hex(gpu::DEFAULT_SUBSYSTEM_VENDOR_ID, 4),
        "",
    );
    h.def("VUGPU_PCI_SUBSYS_ID", hex(gpu::DEFAULT_SUBSYSTEM_ID, 4), "");
    h.def(
        "VUGPU_CONFIG_SPACE_SIZE",
        dec(config_space::CONFIG_SPACE_SIZE as u64),
        "",
    );
    h.raw("");
    h.raw("/* §1.1 BAR numbers and sizes. */");
    h.def(
        "VUGPU_BAR_REGS",
        dec(region::BAR0),
        "32-bit, non-prefetchable",
    );
    h.def("VUGPU_BAR_VRAM", dec(region::BAR2), "64-bit, prefetchable");
    h.def("VUGPU_BAR0_SIZE", hex(gpu::BAR0_SIZE, 8), "16 MiB");
    h.def(
        "VUGPU_VRAM_BAR_MIN_SIZE",
        hex(crate::config::MIN_VRAM_SIZE, 8),
        "1 MiB",
    );
    h.raw("");
    h.raw("/* §1.2 standard capabilities: fixed offsets. */");
    h.def("VUGPU_CAP_PM_OFFSET", hex(cap_offset::PM, 2), "");
    h.def("VUGPU_CAP_MSIX_OFFSET", hex(cap_offset::MSIX, 2), "");
    h.def("VUGPU_CAP_EXP_OFFSET", hex(cap_offset::PCIE, 2), "");
    h.def("VUGPU_MSIX_MAX_VECTORS", dec(msix_cap::MAX_VECTORS), "");
    h.def(
        "VUGPU_MSIX_DEFAULT_VECTORS",
        dec(gpu::DEFAULT_MSIX_VECTORS),
        "",
    );
    h.raw("");
    h.raw("/* §1.4 extended capabilities: fixed offsets. */");
    h.def("VUGPU_ECAP_AER_OFFSET", hex(cap_offset::AER, 3), "");
    h.def("VUGPU_ECAP_REBAR_OFFSET", hex(cap_offset::REBAR, 3), "");
    h.def("VUGPU_ECAP_DSN_OFFSET", hex(cap_offset::DSN, 3), "");
    h.raw("");
    h.raw("/*");
    h.raw(" * Writable bits of the config registers the guest OS owns (§1.1-§1.4); the");
    h.raw(" * other bits of each are RO or RsvdZ.  The OS may write these registers at");
    h.raw(" * any time (Linux 7.3's AER driver clears the Correctable Mask at boot), so");
    h.raw(" * guest tests check them by write / read back / restore and never assert");
    h.raw(" * their values; the reset values are host unit tests of the model");
    h.raw(" * (guest-tests/README.md, \"What guest tests may assert\").");
    h.raw(" */");
    h.def(
        "VUGPU_PCI_COMMAND_RW",
        hex(function::COMMAND_RW, 4),
        "Memory, Bus Master, PER, SERR#, INTx Dis.",
    );
    h.def(
        "VUGPU_PCI_CACHE_LINE_RW",
        hex(function::CACHE_LINE_SIZE_RW, 2),
        "",
    );
    h.def(
        "VUGPU_PMCSR_POWER_STATE",
        hex(pm::PMCSR_POWER_STATE, 4),
        "RW D0/D3hot; D1/D2 writes ignored",
    );
    h.def(
        "VUGPU_PMCSR_NO_SOFT_RESET",
        hex(pm::PMCSR_NO_SOFT_RESET, 4),
        "RO 1",
    );
    h.def(
        "VUGPU_MSIX_CTRL_RW",
        hex(msix_cap::ENABLE | msix_cap::FUNCTION_MASK, 4),
        "Enable, Function Mask",
    );
    h.def(
        "VUGPU_DEVCTL_RW",
        hex(pcie::DEV_CTL_RW, 4),
        "bit 15: write 1 = FLR",
    );
    h.def("VUGPU_DEVCTL_FLR", hex(pcie::DEV_CTL_INITIATE_FLR, 4), "");
    h.def("VUGPU_LNKCTL_RW", hex(pcie::LINK_CTL_RW, 4), "");
    h.def("VUGPU_DEVCTL2_RW", hex(pcie::DEV_CTL2_RW, 4), "");
    h.def(
        "VUGPU_LNKCTL2_RW",
        hex(pcie::LINK_CTL2_RW, 4),
        "Target Link Speed",
    );
    h.def(
        "VUGPU_AER_UNCOR_BITS",
        hex(aer::UNCOR_BITS, 8),
        "Mask, Severity RW; Status W1C",
    );
    h.def(
        "VUGPU_AER_COR_BITS",
        hex(aer::COR_BITS, 8),
        "Mask RW; Status W1C",
    );
    h.def("VUGPU_REBAR_CTRL_SIZE", hex(rebar::REBAR_CTL_SIZE, 8), "");
}

fn bar0(h: &mut Builder) {
    let pba_size = gpu::MSIX_PBA_END - u64::from(msix_cap::MSIX_PBA_OFFSET);
    h.raw("");
    h.raw("/* §2 BAR0 layout. */");
    h.def("VUGPU_REGFILE_START", hex(0u64, 6), "");
    h.def(
        "VUGPU_REGFILE_SIZE",
        hex(REGISTER_FILE_SIZE, 6),
        "§3 register file incl. RsvdZ",
    );
    h.def(
        "VUGPU_DEVREGS_SIZE",
        hex(eregs::ENGINE_BASE, 6),
        "device registers (§3 table)",
    );
    h.def(
        "VUGPU_ENGINE_REGS_BASE",
        hex(eregs::ENGINE_BASE, 6),
        "engine i at base + stride * i",
    );
    h.def("VUGPU_ENGINE_REGS_STRIDE", hex(eregs::ENGINE_STRIDE, 6), "");
    h.def("VUGPU_ENGINE_MAX", dec(eregs::MAX_ENGINES as u64), "");
    h.def(
        "VUGPU_REGFILE_RSVD_START",
        hex(eregs::ENGINE_END, 6),
        "engine blocks' end to the register file's end: RsvdZ",
    );
    h.def(
        "VUGPU_MSIX_TABLE_OFFSET",
        hex(msix_cap::MSIX_TABLE_OFFSET, 6),
        "",
    );
    h.def(
        "VUGPU_MSIX_TABLE_SIZE",
        hex(
            u64::from(msix_cap::MAX_VECTORS) * crate::msix::ENTRY_SIZE as u64,
            6,
        ),
        "16 bytes x 2048 vectors",
    );
    h.def(
        "VUGPU_MSIX_PBA_OFFSET",
        hex(msix_cap::MSIX_PBA_OFFSET, 6),
        "",
    );
    h.def("VUGPU_MSIX_PBA_SIZE", hex(pba_size, 6), "");
    h.def(
        "VUGPU_MSIX_ENTRY_SIZE",
        dec(crate::msix::ENTRY_SIZE as u64),
        "",
    );
    h.def(
        "VUGPU_DOORBELL_PAGE_OFFSET",
        hex(eregs::DOORBELL_OFFSET, 6),
        "§6.4, mmappable",
    );
    h.def("VUGPU_DOORBELL_PAGE_SIZE", hex(eregs::DOORBELL_SIZE, 6), "");
    h.raw(
        "/* §6.4 words of engine i's doorbell area (page offset DOORBELL_STRIDE * i + below). */",
    );
    h.def("VUGPU_DB_TAIL", hex(0u64, 1), "driver-written ring tail");
    h.def(
        "VUGPU_DB_SLEEPING",
        hex(eregs::SLEEP_HINT, 1),
        "device-written sleep hint: read only",
    );
    h.def(
        "VUGPU_REG_WIDTH",
        dec(crate::regs::REGISTER_WIDTH as u64),
        "every register is 32 bits",
    );
    h.raw("/* A register read that the device rejects (bad size/alignment). */");
    h.def(
        "VUGPU_REG_BAD_READ",
        Val::Hex(crate::regs::BAD_READ.into(), 8, U),
        "",
    );
}

fn register_file(h: &mut Builder) {
    h.raw("");
    h.raw("/* §3 register file (the model's table, device/src/regs/spec.rs). */");
    for r in REGISTERS {
        let note = match r.kind {
            Kind::VramData => format!("{}, auto-increments VRAM_INDEX", r.access),
            Kind::ClockLo => format!("{}, latches CLOCK_HI", r.access),
            _ => r.access.to_string(),
        };
        h.def(&format!("VUGPU_REG_{}", r.name), hex(r.offset, 4), &note);
    }
    h.raw("/* §6.10 peer windows: window i's block at VUGPU_PEER_WIN_REGS(i) + below. */");
    h.def("VUGPU_PEER_WIN_COUNT", dec(pw::WINDOWS as u64), "");
    h.def("VUGPU_PEER_WIN_REGS_BASE", hex(pw::REGS_BASE, 4), "");
    h.def("VUGPU_PEER_WIN_REGS_STRIDE", hex(pw::REGS_STRIDE, 2), "");
    h.expr(
        "VUGPU_PEER_WIN_REGS(i)",
        "(VUGPU_PEER_WIN_REGS_BASE + (i) * VUGPU_PEER_WIN_REGS_STRIDE)",
        "",
    );
    h.def(
        "VUGPU_PEER_WIN_BASE_LO",
        hex(pw::BASE_LO, 2),
        "RW, bits 11:0 RO 0; locked while enabled",
    );
    h.def(
        "VUGPU_PEER_WIN_BASE_HI",
        hex(pw::BASE_HI, 2),
        "RW; locked while enabled",
    );
    h.def(
        "VUGPU_PEER_WIN_SIZE_LO",
        hex(pw::SIZE_LO, 2),
        "RW, bits 11:0 RO 0; locked while enabled",
    );
    h.def(
        "VUGPU_PEER_WIN_SIZE_HI",
        hex(pw::SIZE_HI, 2),
        "RW; locked while enabled",
    );
    h.def(
        "VUGPU_PEER_WIN_CONTROL",
        hex(pw::CONTROL, 2),
        "RW bits 2:0, RO bit 31",
    );
    h.def("VUGPU_PEER_WIN_ENABLE", bit(pw::CONTROL_ENABLE), "");
    h.def("VUGPU_PEER_WIN_READ", bit(pw::CONTROL_READ), "");
    h.def("VUGPU_PEER_WIN_WRITE", bit(pw::CONTROL_WRITE), "");
    h.def(
        "VUGPU_PEER_WIN_REFUSED",
        bit(pw::CONTROL_REFUSED),
        "RO: last enable refused",
    );
    h.def("VUGPU_PEER_WIN_ALIGN", Val::Hex(pw::PAGE, 4, ULL), "");
    let scratch = REGISTERS
        .iter()
        .filter(|r| r.name.starts_with("SCRATCH"))
        .count();
    h.def("VUGPU_NUM_SCRATCH", dec(scratch as u64), "");
    h.expr(
        "VUGPU_REG_SCRATCH(n)",
        "(VUGPU_REG_SCRATCH0 + (n) * VUGPU_REG_WIDTH)",
        "",
    );
    h.raw("");
    h.raw("/* Reset values and field definitions. */");
    h.def(
        "VUGPU_ID_VALUE",
        Val::Hex(spec::ID_VALUE.into(), 8, U),
        "\"UPGV\" little-endian",
    );
    h.def(
        "VUGPU_VERSION_VALUE",
        Val::Hex(spec::VERSION_VALUE.into(), 8, U),
        "this document's version",
    );
    h.expr("VUGPU_VERSION_MAJOR(v)", "((v) >> 16)", "");
    h.expr("VUGPU_VERSION_MINOR(v)", "((v) & 0xffff)", "");
    h.def(
        "VUGPU_VERSION_ENGINES",
        Val::Hex(spec::VERSION_ENGINES.into(), 8, U),
        "first version with §3's engine registers",
    );
    h.def("VUGPU_CAPS_MSIX", bit(spec::CAPS_MSIX), "");
    h.def("VUGPU_CAPS_VRAM_MMAP", bit(spec::CAPS_VRAM_MMAP), "");
    h.def(
        "VUGPU_CAPS_ENGINES",
        bit(spec::CAPS_DMA_ENGINES),
        "ENGINE_COUNT > 0",
    );
    h.def(
        "VUGPU_CAPS_DOORBELL_MMAP",
        bit(spec::CAPS_DOORBELL_MMAP),
        "",
    );
    h.def(
        "VUGPU_CAPS_PEER_WINDOWS",
        bit(spec::CAPS_PEER_WINDOWS),
        "§6.10, with the engines",
    );
    h.def(
        "VUGPU_CAPS_MMU",
        bit(spec::CAPS_MMU),
        "§9 device MMU (spec 0.4)",
    );
    let known = spec::CAPS_MSIX
        | spec::CAPS_VRAM_MMAP
        | spec::CAPS_DMA_ENGINES
        | spec::CAPS_DOORBELL_MMAP
        | spec::CAPS_PEER_WINDOWS
        | spec::CAPS_MMU;
    h.def("VUGPU_CAPS_KNOWN", Val::Hex(known.into(), 2, U), "");
    h.def(
        "VUGPU_VERSION_MMU",
        Val::Hex(spec::VERSION_MMU.into(), 8, U),
        "first version with §9",
    );
    h.def(
        "VUGPU_DOORBELL_STRIDE_VALUE",
        Val::Hex(eregs::DOORBELL_STRIDE, 2, U),
        "",
    );
    h.def(
        "VUGPU_ENGINE_VECTOR_BASE_VALUE",
        Val::Dec(eregs::ENGINE_VECTOR_BASE.into(), U),
        "vector 0: device/error vector",
    );
    h.def("VUGPU_STATUS_READY", bit(spec::STATUS_READY), "RO");
    h.def(
        "VUGPU_STATUS_VRAM_INDEX_ERR",
        bit(spec::STATUS_VRAM_INDEX_ERR),
        "W1C",
    );
    let status_reset = match spec::lookup(spec::offset::STATUS).map(|(_, r)| r.reset) {
        Some(spec::Reset::Value(v)) => v,
        _ => 0,
    };
    h.def(
        "VUGPU_STATUS_RESET",
        Val::Hex(status_reset.into(), 1, U),
        "READY",
    );
    let index_rw = spec::lookup(spec::offset::VRAM_INDEX_LO).map_or(0, |(_, r)| r.rw);
    h.def(
        "VUGPU_VRAM_INDEX_IGNORED_BITS",
        Val::Hex((!index_rw).into(), 1, U),
        "VRAM_INDEX_LO bits 1:0: RO 0",
    );
    h.def(
        "VUGPU_VRAM_DATA_BAD",
        Val::Hex(crate::regs::VRAM_DATA_BAD.into(), 8, U),
        "out-of-range VRAM_DATA read",
    );
    h.def(
        "VUGPU_SOFT_RESET_MAGIC",
        Val::Hex(spec::SOFT_RESET_MAGIC.into(), 8, U),
        "\"!TSR\" little-endian",
    );
    h.def(
        "VUGPU_IRQ_STATUS_VECTORS",
        dec(spec::IRQ_STATUS_VECTORS),
        "IRQ_STATUS covers vectors 0-31",
    );
}

fn engines(h: &mut Builder) {
    use eregs::offset as o;
    h.raw("");
    h.raw("/* §6.3 engine register block (BAR0 VUGPU_ENGINE_REGS(i) + offset). */");
    h.expr(
        "VUGPU_ENGINE_REGS(i)",
        "(VUGPU_ENGINE_REGS_BASE + (i) * VUGPU_ENGINE_REGS_STRIDE)",
        "",
    );
    for (name, off, note) in [
        ("RING_BASE_LO", o::RING_BASE_LO, "RW, bits 5:0 must be 0"),
        ("RING_BASE_HI", o::RING_BASE_HI, "RW"),
        ("RING_SIZE", o::RING_SIZE, "RW, power of two 1-65536"),
        ("RING_APERTURE", o::RING_APERTURE, "RW, bits 1:0"),
        ("RING_HEAD", o::RING_HEAD, "RO"),
        ("RING_TAIL", o::RING_TAIL, "RW, the doorbell word"),
        ("CONTROL", o::CONTROL, "RW"),
        ("STATUS", o::STATUS, "RO"),
        ("ERROR_CODE", o::ERROR_CODE, "RO"),
        ("ERROR_ADDR_LO", o::ERROR_ADDR_LO, "RO"),
        ("ERROR_ADDR_HI", o::ERROR_ADDR_HI, "RO"),
        ("ERROR_INFO", o::ERROR_INFO, "RO"),
        ("LAST_FENCE_LO", o::LAST_FENCE_LO, "RO"),
        ("LAST_FENCE_HI", o::LAST_FENCE_HI, "RO"),
    ] {
        h.def(&format!("VUGPU_ENG_{name}"), hex(off, 2), note);
    }
    h.def(
        "VUGPU_ENG_STATS_START",
        hex(stats::STATS_BASE, 2),
        "RO 64-bit counters (§8.1)",
    );
    h.def("VUGPU_ENG_STATS_END", hex(stats::STATS_END, 2), "");
    h.def("VUGPU_ENG_CONTROL_ENABLE", bit(control::ENABLE), "");
    h.def("VUGPU_ENG_CONTROL_HALT", bit(control::HALT), "");
    h.def("VUGPU_ENG_CONTROL_IRQ_ENABLE", bit(control::IRQ_ENABLE), "");
    h.def("VUGPU_ENG_CONTROL_RESET", bit(control::RESET), "WO");
    h.def("VUGPU_ENG_STATUS_STATE_MASK", Val::Hex(0xf, 1, U), "");
    for s in [
        State::Disabled,
        State::Idle,
        State::Running,
        State::Halted,
        State::Error,
    ] {
        h.def(&format!("VUGPU_ENG_STATE_{}", s.name()), dec(s as u32), "");
    }
    h.def("VUGPU_APERTURE_SYS", dec(desc::Aperture::Sys.raw()), "");
    h.def("VUGPU_APERTURE_VRAM", dec(desc::Aperture::Vram.raw()), "");
    h.def(
        "VUGPU_APERTURE_PEER",
        dec(desc::APERTURE_PEER),
        "reserved: BAD_DESCRIPTOR",
    );
    h.def(
        "VUGPU_APERTURE_VIRT",
        dec(desc::APERTURE_VIRT),
        "§9.5: device-virtual, context in desc 0x04",
    );
    h.def(
        "VUGPU_ENG_INFO_APERTURE_MASK",
        Val::Hex(info::APERTURE_MASK.into(), 1, U),
        "",
    );
    h.def("VUGPU_ENG_INFO_WRITE", bit(info::WRITE), "");
    h.def("VUGPU_ENG_INFO_FETCH", bit(info::FETCH), "");
    h.def("VUGPU_ENG_INFO_SLOT_SHIFT", dec(info::SLOT_SHIFT), "");
    h.raw("/* §6.6 ERROR_CODE values */");
    h.def("VUGPU_ENG_ERR_NONE", dec(0u64), "");
    for e in [
        ErrorCode::RingConfig,
        ErrorCode::RingOverflow,
        ErrorCode::BadOpcode,
        ErrorCode::BadDescriptor,
        ErrorCode::SysUnmapped,
        ErrorCode::SysPermission,
        ErrorCode::VramRange,
        ErrorCode::MsgDmaFailed,
        ErrorCode::Translation,
        ErrorCode::Poisoned,
    ] {
        let note = match e {
            ErrorCode::Translation => "§9.4: a cancelled fault; ERROR_ADDR virtual",
            ErrorCode::Poisoned => "§10: an engine read poisoned VRAM",
            _ => "",
        };
        h.def(&format!("VUGPU_ENG_ERR_{}", e.name()), dec(e as u32), note);
    }
    h.raw("");
    h.raw("/* §6.2 / §6.3 ring limits */");
    h.def("VUGPU_RING_SLOTS_MAX", dec(eregs::MAX_RING_SIZE), "");
    h.def("VUGPU_RING_ALIGN", dec(eregs::RING_ALIGN), "");
}

fn descriptors(h: &mut Builder) {
    h.raw("");
    h.raw("/* §7 descriptors: 64 bytes, little-endian. */");
    h.def("VUGPU_DESC_SIZE", dec(desc::DESC_SIZE as u64), "");
    for (name, off, note) in [
        ("OPCODE", dfield::OPCODE, ""),
        ("FLAGS", dfield::FLAGS, ""),
        ("SRC_APERTURE", dfield::SRC_APERTURE, ""),
        ("DST_APERTURE", dfield::DST_APERTURE, ""),
        (
            "CONTEXT",
            dfield::CONTEXT,
            "u16: context of a VIRT aperture",
        ),
        ("RSVD0", dfield::RSVD0, "2 bytes, must be 0"),
        ("SRC", dfield::SRC, ""),
        ("DST", dfield::DST, ""),
        ("LENGTH", dfield::LENGTH, ""),
        ("VALUE", dfield::VALUE, ""),
        ("RSVD1", dfield::RSVD1, "to the end, must be 0"),
    ] {
        h.def(&format!("VUGPU_DESC_OFF_{name}"), hex(off as u64, 2), note);
    }
    for (name, op, note) in [
        ("NOP", opcode::NOP, ""),
        ("COPY", opcode::COPY, ""),
        ("FILL", opcode::FILL, ""),
        ("FENCE", opcode::FENCE, ""),
        ("TIMESTAMP", opcode::TIMESTAMP, ""),
        (
            "ATOMIC",
            opcode::ATOMIC,
            "§9.5: 64-bit fetch-and-add at dst, old value to src",
        ),
        (
            "TLB_INVALIDATE",
            opcode::TLB_INVALIDATE,
            "§9.5: context, dst = VA, length (0 = all)",
        ),
        (
            "FAULT_REPLAY",
            opcode::FAULT_REPLAY,
            "§9.5: context, value bit 0: 0 replay, 1 cancel",
        ),
    ] {
        h.def(&format!("VUGPU_OP_{name}"), dec(op), note);
    }
    h.def(
        "VUGPU_DESC_CONTEXT_ALL",
        Val::Hex(desc::CONTEXT_ALL.into(), 4, U),
        "TLB_INVALIDATE / FAULT_REPLAY: every context",
    );
    h.def(
        "VUGPU_REPLAY_CANCEL",
        Val::Dec(desc::REPLAY_CANCEL, ULL),
        "FAULT_REPLAY value bit 0",
    );
    h.def("VUGPU_ATOMIC_LENGTH", dec(desc::ATOMIC_LENGTH), "");
    h.def("VUGPU_DESC_F_IRQ", bit(flags::IRQ), "");
    h.def("VUGPU_DESC_F_NO_SNOOP", bit(flags::NO_SNOOP), "");
    h.def(
        "VUGPU_DESC_F_RELAXED_ORDERING",
        bit(flags::RELAXED_ORDERING),
        "",
    );
    h.def(
        "VUGPU_DESC_F_RSVD_MASK",
        Val::Hex((!flags::ALL).into(), 2, U),
        "",
    );
    h.def(
        "VUGPU_DESC_MAX_LENGTH",
        Val::Hex(desc::MAX_LENGTH, 8, ULL),
        "COPY / FILL: 1 GiB",
    );
    h.def("VUGPU_FILL_ALIGN", dec(desc::FILL_ALIGN), "");
    h.def("VUGPU_FENCE_ALIGN", dec(desc::FENCE_ALIGN), "");
}

fn mmu(h: &mut Builder) {
    use mregs::offset as o;
    let reg = |off: u32| hex(mregs::BASE + u64::from(off), 4);
    h.raw("");
    h.raw(&format!(
        "/* §9.1 device MMU registers (BAR0 0x{:04x}-0x{:04x}), present with CAPS bit {}. */",
        mregs::BASE,
        mregs::END - 1,
        spec::CAPS_MMU.trailing_zeros()
    ));
    for (name, off, note) in [
        ("MMU_CONTROL", o::CONTROL, "RW"),
        ("MMU_STATUS", o::STATUS, "RO / W1C"),
        (
            "MMU_CTX_BASE_LO",
            o::CTX_BASE_LO,
            "RW, bits 3:0 RO 0; latched at ENABLE",
        ),
        ("MMU_CTX_BASE_HI", o::CTX_BASE_HI, ""),
        ("MMU_CTX_COUNT", o::CTX_COUNT, "RW, 1-4096"),
        ("MMU_CTX_APERTURE", o::CTX_APERTURE, "RW, 0 SYS / 1 VRAM"),
        ("FAULT_RING_BASE_LO", o::RING_BASE_LO, "RW, bits 4:0 RO 0"),
        ("FAULT_RING_BASE_HI", o::RING_BASE_HI, ""),
        (
            "FAULT_RING_SIZE",
            o::RING_SIZE,
            "RW, records, power of two 1-65536",
        ),
        ("FAULT_RING_APERTURE", o::RING_APERTURE, "RW"),
        ("FAULT_PUT", o::FAULT_PUT, "RO (doorbell page 0x800)"),
        ("FAULT_GET", o::FAULT_GET, "RW (doorbell page 0x804)"),
        ("FAULT_VECTOR", o::FAULT_VECTOR, "RO, 1 + ENGINE_COUNT"),
    ] {
        h.def(&format!("VUGPU_REG_{name}"), reg(off), note);
    }
    for (name, c) in [
        ("FAULTS", MmuCounter::Faults),
        ("FAULTS_DROPPED", MmuCounter::FaultsDropped),
        ("REPLAYS", MmuCounter::Replays),
        ("CANCELS", MmuCounter::Cancels),
        ("TLB_HITS", MmuCounter::TlbHits),
        ("TLB_MISSES", MmuCounter::TlbMisses),
        ("INVALIDATIONS", MmuCounter::Invalidations),
    ] {
        let note = if c == MmuCounter::Faults {
            "64-bit counters, _LO latches _HI"
        } else {
            ""
        };
        h.def(
            &format!("VUGPU_REG_MMU_STAT_{name}"),
            reg(o::STATS + spec::COUNTER_SIZE * c as u32),
            note,
        );
    }
    h.def("VUGPU_MMU_NUM_STATS", dec(crate::mmu::COUNTERS as u64), "");
    h.def("VUGPU_MMU_CONTROL_ENABLE", bit(mregs::control::ENABLE), "");
    h.def(
        "VUGPU_MMU_CONTROL_FAULT_IRQ",
        bit(mregs::control::FAULT_IRQ),
        "",
    );
    h.def("VUGPU_MMU_STATUS_ENABLED", bit(mregs::status::ENABLED), "");
    h.def(
        "VUGPU_MMU_STATUS_CONFIG_ERROR",
        bit(mregs::status::CONFIG_ERROR),
        "",
    );
    h.def(
        "VUGPU_MMU_STATUS_FAULT_OVERFLOW",
        bit(mregs::status::FAULT_OVERFLOW),
        "W1C",
    );
    h.def("VUGPU_MMU_STATUS_WAITING", bit(mregs::status::WAITING), "");
    h.def("VUGPU_MMU_CTX_MAX", dec(mregs::MAX_CONTEXTS), "");
    h.def("VUGPU_FAULT_RING_MAX", dec(fault_ring::MAX_RING_SIZE), "");
    h.raw("/* §9.4 doorbell page words of the fault ring. */");
    h.def(
        "VUGPU_DB_FAULT_PUT",
        hex(fault_ring::DB_FAULT_PUT, 3),
        "device-written",
    );
    h.def(
        "VUGPU_DB_FAULT_GET",
        hex(fault_ring::DB_FAULT_GET, 3),
        "driver-written",
    );
    h.raw("");
    h.raw("/* §9.2 context table entry (16 bytes) and page-table entries (8 bytes). */");
    h.def("VUGPU_CTX_ENTRY_SIZE", dec(walk::CTX_ENTRY_SIZE), "");
    h.def("VUGPU_CTX_VALID", bit64(ctx::VALID), "");
    h.def(
        "VUGPU_CTX_APERTURE_SHIFT",
        dec(pte::APERTURE_SHIFT),
        "bits 6:5: root table aperture",
    );
    h.def(
        "VUGPU_PT_ADDR_MASK",
        Val::Hex(pte::ADDR_MASK, 16, ULL),
        "bits 51:12",
    );
    h.def("VUGPU_PTE_VALID", bit64(pte::VALID), "");
    h.def("VUGPU_PTE_LEAF", bit64(pte::LEAF), "");
    h.def("VUGPU_PTE_READ", bit64(pte::READ), "");
    h.def("VUGPU_PTE_WRITE", bit64(pte::WRITE), "");
    h.def("VUGPU_PTE_ATOMIC", bit64(pte::ATOMIC), "");
    h.def(
        "VUGPU_PTE_APERTURE_SHIFT",
        dec(pte::APERTURE_SHIFT),
        "bits 6:5",
    );
    h.def(
        "VUGPU_PTE_APERTURE_MASK",
        Val::Hex(pte::APERTURE_MASK << pte::APERTURE_SHIFT, 2, ULL),
        "",
    );
    h.def(
        "VUGPU_PTE_SW_SHIFT",
        dec(pte::SOFTWARE.trailing_zeros()),
        "bits 63:56: ignored by the device",
    );
    h.def("VUGPU_PT_LEVELS", dec(walk::LEVELS), "level 3 = root");
    h.def("VUGPU_PT_ENTRIES", dec(walk::TABLE_ENTRIES), "");
    h.def("VUGPU_PT_SIZE", dec(walk::TABLE_SIZE), "");
    h.def("VUGPU_VA_BITS", dec(walk::VA_BITS), "");
    h.def(
        "VUGPU_PAGE_SHIFT_4K",
        dec(walk::PAGE_4K.trailing_zeros()),
        "",
    );
    h.def(
        "VUGPU_PAGE_SHIFT_2M",
        dec(walk::PAGE_2M.trailing_zeros()),
        "",
    );
    h.expr(
        "VUGPU_PT_LEVEL_SHIFT(l)",
        &format!(
            "({} + {} * (l))",
            walk::PAGE_4K.trailing_zeros(),
            walk::TABLE_ENTRIES.trailing_zeros()
        ),
        "VA bits of level l: shift .. shift + 8",
    );
    h.raw("");
    h.raw(&format!(
        "/* §9.4 fault record ({} bytes). */",
        fault_ring::RECORD_SIZE
    ));
    h.def("VUGPU_FAULT_REC_SIZE", dec(fault_ring::RECORD_SIZE), "");
    for (name, off, note) in [
        ("ADDR", ffield::ADDR, "u64"),
        ("CONTEXT", ffield::CONTEXT, "u16"),
        ("ENGINE", ffield::ENGINE, "u8"),
        ("ACCESS", ffield::ACCESS, "u8"),
        ("REASON", ffield::REASON, "u8"),
        ("LEVEL", ffield::LEVEL, "u8"),
        ("TIMESTAMP", ffield::TIMESTAMP, "u64"),
        ("SEQ", ffield::SEQ, "u32"),
    ] {
        h.def(&format!("VUGPU_FAULT_OFF_{name}"), hex(off as u64, 2), note);
    }
    for a in [Access::Read, Access::Write, Access::Atomic] {
        h.def(
            &format!("VUGPU_FAULT_ACCESS_{}", a.name().to_uppercase()),
            dec(a as u64),
            "",
        );
    }
    for r in [
        Reason::NotPresent,
        Reason::Protection,
        Reason::BadPte,
        Reason::WalkError,
        Reason::BadContext,
        Reason::VaRange,
    ] {
        h.def(&format!("VUGPU_FAULT_{}", r.name()), dec(r as u64), "");
    }
}

fn engine_stats(h: &mut Builder) {
    h.raw("");
    h.raw("/* §8.1 per-engine 64-bit statistics counters (engine block offsets). */");
    h.def(
        "VUGPU_COUNTER_SIZE",
        dec(spec::COUNTER_SIZE),
        "64-bit counters (§8.1, §9.1): _LO latches _HI",
    );
    h.def(
        "VUGPU_COUNTER_HI",
        dec(spec::COUNTER_HI),
        "_HI dword of a counter",
    );
    for (name, c) in [
        ("JOBS", EngCounter::Jobs),
        ("BYTES_S2V", EngCounter::SysToVram),
        ("BYTES_V2S", EngCounter::VramToSys),
        ("BYTES_V2V", EngCounter::VramToVram),
        ("BYTES_S2S", EngCounter::SysToSys),
        ("BYTES_FILL", EngCounter::Fill),
        ("NS_REQUESTED", EngCounter::NsRequested),
        ("NS_USED", EngCounter::NsUsed),
        ("RO_REQUESTED", EngCounter::RoRequested),
        ("RO_USED", EngCounter::RoUsed),
        ("BYTES_NS", EngCounter::BytesNs),
        ("BYTES_RO", EngCounter::BytesRo),
        ("ERRORS", EngCounter::Errors),
        ("IRQS", EngCounter::Irqs),
    ] {
        h.def(
            &format!("VUGPU_ENG_STAT_{name}"),
            hex(stats::STATS_BASE + spec::COUNTER_SIZE * c as u32, 2),
            "",
        );
    }
    h.expr(
        "VUGPU_ENG_NUM_STATS",
        "((VUGPU_ENG_STATS_END - VUGPU_ENG_STATS_START) / VUGPU_COUNTER_SIZE)",
        "",
    );
}

fn errors(h: &mut Builder) {
    h.raw("");
    h.raw("/* §1.3 PCIe Device Control bits the engines honour (§7.1). */");
    h.def(
        "VUGPU_DEVCTL_RELAX_EN",
        hex(pcie::DEV_CTL_RELAXED_ORDERING, 4),
        "bit 4 Enable Relaxed Ordering",
    );
    h.def(
        "VUGPU_DEVCTL_NOSNOOP_EN",
        hex(pcie::DEV_CTL_NO_SNOOP, 4),
        "bit 11 Enable No Snoop",
    );
    h.raw("");
    h.raw("/* §1.1 Command bit 2: gates every memory request (engine DMA §6.7, MSI-X §3.1). */");
    h.def(
        "VUGPU_PCI_COMMAND_MASTER",
        hex(function::COMMAND_BUS_MASTER, 4),
        "",
    );
    h.raw("");
    h.raw("/* §5 error reporting: config-space bits the device sets on engine errors. */");
    h.def(
        "VUGPU_AER_UNCOR_CA",
        bit(aer::UNCOR_COMPLETER_ABORT),
        "Completer Abort",
    );
    h.def(
        "VUGPU_AER_UNCOR_UR",
        bit(aer::UNCOR_UNSUPPORTED_REQUEST),
        "Unsupported Request",
    );
    h.def(
        "VUGPU_AER_UNCOR_UIE",
        bit(aer::UNCOR_INTERNAL),
        "Uncorrectable Internal Error",
    );
    h.def("VUGPU_DEVSTA_CED", hex(pcie::DEV_STA_CED, 4), "");
    h.def("VUGPU_DEVSTA_NFED", hex(pcie::DEV_STA_NFED, 4), "");
    h.def("VUGPU_DEVSTA_FED", hex(pcie::DEV_STA_FED, 4), "");
    h.def("VUGPU_DEVSTA_URD", hex(pcie::DEV_STA_URD, 4), "");
    h.def(
        "VUGPU_PCI_STATUS_REC_TARGET_ABORT",
        hex(function::STATUS_RECEIVED_TARGET_ABORT, 4),
        "bit 12",
    );
    h.def(
        "VUGPU_PCI_STATUS_REC_MASTER_ABORT",
        hex(function::STATUS_RECEIVED_MASTER_ABORT, 4),
        "bit 13",
    );
    h.def(
        "VUGPU_PCI_STATUS_SIG_SYSTEM_ERROR",
        hex(function::STATUS_SIGNALED_SYSTEM_ERROR, 4),
        "bit 14",
    );
}

fn layout_checks(h: &mut Builder) {
    h.raw(LAYOUT_CHECKS);
}

/// C text: relations between the values above that every compile of the driver checks.
const LAYOUT_CHECKS: &str = r#"
/* Layout checks: the map in §2 must be self-consistent. */
_Static_assert(VUGPU_REGFILE_START + VUGPU_REGFILE_SIZE <= VUGPU_MSIX_TABLE_OFFSET,
	       "register file overlaps the MSI-X table");
_Static_assert(VUGPU_MSIX_MAX_VECTORS * VUGPU_MSIX_ENTRY_SIZE == VUGPU_MSIX_TABLE_SIZE,
	       "MSI-X table size does not hold the maximum vector count");
_Static_assert(VUGPU_MSIX_TABLE_OFFSET + VUGPU_MSIX_TABLE_SIZE <= VUGPU_MSIX_PBA_OFFSET,
	       "MSI-X table overlaps the PBA");
_Static_assert(VUGPU_MSIX_MAX_VECTORS / 8 <= VUGPU_MSIX_PBA_SIZE,
	       "MSI-X PBA too small for the maximum vector count");
_Static_assert(VUGPU_MSIX_PBA_OFFSET + VUGPU_MSIX_PBA_SIZE <= VUGPU_BAR0_SIZE,
	       "MSI-X PBA outside BAR0");
_Static_assert((VUGPU_MSIX_TABLE_OFFSET & 7) == 0 && (VUGPU_MSIX_PBA_OFFSET & 7) == 0,
	       "MSI-X table/PBA offsets must be QWORD aligned (low 3 bits hold the BIR)");
_Static_assert(VUGPU_REG_IRQ_COUNT < VUGPU_REGFILE_SIZE, "register outside the register file");
_Static_assert(VUGPU_REG_SCRATCH(VUGPU_NUM_SCRATCH - 1) == VUGPU_REG_SCRATCH3,
	       "scratch registers are not contiguous");
_Static_assert((VUGPU_BAR0_SIZE & (VUGPU_BAR0_SIZE - 1)) == 0, "BAR0 size must be a power of two");
_Static_assert(VUGPU_REG_CLOCK_HI < VUGPU_DEVREGS_SIZE, "device register outside its block");
_Static_assert(VUGPU_ENGINE_REGS(VUGPU_ENGINE_MAX) == VUGPU_REGFILE_RSVD_START,
	       "engine blocks do not end where the RsvdZ range starts");
_Static_assert(VUGPU_ENG_STATS_END <= VUGPU_ENGINE_REGS_STRIDE, "engine block overflows its stride");
_Static_assert(VUGPU_DOORBELL_STRIDE_VALUE * VUGPU_ENGINE_MAX <= VUGPU_DOORBELL_PAGE_SIZE,
	       "doorbell words do not fit the doorbell page");
_Static_assert(VUGPU_MSIX_PBA_OFFSET + VUGPU_MSIX_PBA_SIZE <= VUGPU_DOORBELL_PAGE_OFFSET,
	       "doorbell page overlaps the MSI-X PBA");
_Static_assert(VUGPU_DOORBELL_PAGE_OFFSET + VUGPU_DOORBELL_PAGE_SIZE <= VUGPU_BAR0_SIZE,
	       "doorbell page outside BAR0");
_Static_assert(VUGPU_DESC_OFF_RSVD1 + 24 == VUGPU_DESC_SIZE,
	       "descriptor fields do not add up to 64 bytes");
_Static_assert(VUGPU_ENG_STAT_IRQS + 8 == VUGPU_ENG_STATS_END,
	       "statistics counters do not fill +0x40-+0xaf");
_Static_assert(VUGPU_ENG_NUM_STATS == 14, "§8.1 lists 14 counters");
_Static_assert(VUGPU_REG_MMU_STAT_INVALIDATIONS + 8 == VUGPU_REG_MMU_STAT_FAULTS + 8 * VUGPU_MMU_NUM_STATS,
	       "§9.1 counters are 0x340-0x377");
_Static_assert(VUGPU_DB_FAULT_GET + 4 <= VUGPU_DOORBELL_PAGE_SIZE &&
	       VUGPU_DOORBELL_STRIDE_VALUE * VUGPU_ENGINE_MAX <= VUGPU_DB_FAULT_PUT,
	       "fault ring words overlap the engines' doorbell words");
_Static_assert(VUGPU_PT_LEVEL_SHIFT(VUGPU_PT_LEVELS - 1) + 9 == VUGPU_VA_BITS,
	       "four levels of 512 entries translate 48 bits");"#;

#[cfg(test)]
mod tests {
    use super::*;

    /// The first line where `a` and `b` differ, for the failure message.
    fn first_difference(a: &str, b: &str) -> String {
        let (al, bl): (Vec<_>, Vec<_>) = (a.lines().collect(), b.lines().collect());
        for i in 0..al.len().max(bl.len()) {
            let (x, y) = (al.get(i), bl.get(i));
            if x != y {
                return format!(
                    "line {}:\n  checked in: {}\n  generated:  {}",
                    i + 1,
                    x.map_or("<end of file>", |s| s),
                    y.map_or("<end of file>", |s| s)
                );
            }
        }
        "trailing bytes differ".to_string()
    }

    #[test]
    fn checked_in_header_is_generated() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(HEADER_PATH);
        let on_disk = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let generated = generate().text;
        assert!(
            on_disk == generated,
            "{HEADER_PATH} is not the header the register map generates (the driver would \
             disagree with the model); first difference at {}\nregenerate it from the \
             workspace root with:\n  {REGENERATE}",
            first_difference(&on_disk, &generated)
        );
    }

    #[test]
    fn names_are_unique_and_aligned() {
        let hdr = generate();
        let mut names: Vec<_> = hdr.values.iter().map(|(n, _)| n.as_str()).collect();
        names.sort_unstable();
        let len = names.len();
        names.dedup();
        assert_eq!(names.len(), len, "a #define appears twice");
        assert_eq!(hdr.value("VUGPU_REG_CAPS"), Some(0x8));
        assert_eq!(hdr.value("VUGPU_PTE_SW_SHIFT"), Some(56));
    }

    #[test]
    fn pte_fields_partition_the_entry() {
        let fields = [
            pte::VALID | pte::LEAF,
            pte::PERMS,
            pte::APERTURE_MASK << pte::APERTURE_SHIFT,
            pte::ADDR_MASK,
            pte::RESERVED,
            pte::SOFTWARE,
        ];
        let mut all = 0u64;
        for f in fields {
            assert_eq!(all & f, 0, "{f:#x} overlaps");
            all |= f;
        }
        assert_eq!(all, u64::MAX);
    }
}
