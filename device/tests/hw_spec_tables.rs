//! docs/hw-spec.md states the register map the model implements: this test parses the spec's
//! tables of offsets, bits and codes and checks each row against the model's constants (through
//! the generated C header's values, `vugpu_device::hw_header`, which come from them).
//!
//! Cross-checked tables: §1 PCI identity, §1.2 and §1.4 capability offsets, §2 BAR0 ranges,
//! §3 register file (offset, name, access, constant reset values, every model register listed,
//! the peer-window rows), §6.1 apertures, §6.3 engine registers and CONTROL bits, §6.4 doorbell
//! words, §6.6 error codes, §6.10 peer-window registers, §7 descriptor layout, §8.1 counters,
//! §9.1 MMU registers, §9.2 context entry and PTE bits, §9.4 fault record.
//! Not cross-checked (prose, not a map): §1.1 and §1.3 behaviour tables, §5 error-to-AER table,
//! §7 opcode rules, §8.2-§8.3 control socket and trace.

use vugpu_device::hw_header::{generate, HwHeader};
use vugpu_device::regs::spec::{Reset, REGISTERS};

const SPEC: &str = include_str!("../../docs/hw-spec.md");

/// One markdown table: the heading above it, its column names and rows.
#[derive(Debug)]
struct Table {
    heading: String,
    columns: Vec<String>,
    rows: Vec<Vec<String>>,
}

fn cells(line: &str) -> Vec<String> {
    let line = line.trim().trim_start_matches('|').trim_end_matches('|');
    line.replace("\\|", "\u{1}")
        .split('|')
        .map(|c| c.trim().replace('\u{1}', "|"))
        .collect()
}

fn tables() -> Vec<Table> {
    let mut out = Vec::new();
    let mut heading = String::new();
    let mut lines = SPEC.lines().peekable();
    while let Some(line) = lines.next() {
        if line.starts_with('#') {
            heading = line.trim_start_matches('#').trim().to_string();
            continue;
        }
        let is_sep = |l: &str| l.starts_with("|---") || l.starts_with("| ---");
        if line.starts_with('|') && lines.peek().is_some_and(|l| is_sep(l)) {
            lines.next();
            let columns = cells(line);
            let mut rows = Vec::new();
            while let Some(l) = lines.peek().filter(|l| l.starts_with('|')) {
                rows.push(cells(l));
                lines.next();
            }
            out.push(Table {
                heading: heading.clone(),
                columns,
                rows,
            });
        }
    }
    out
}

/// The table under the heading starting with `heading` whose first column is `first`.
fn table(all: &[Table], heading: &str, first: &str) -> Vec<Vec<String>> {
    let found: Vec<_> = all
        .iter()
        .filter(|t| t.heading.starts_with(heading) && t.columns[0] == first)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "docs/hw-spec.md: expected one table '{first}' under '{heading}'"
    );
    found[0].rows.clone()
}

/// A number as the spec writes it: `0x0010_0000`, `+0x08`, `16`, with or without backticks.
fn num(s: &str) -> Option<u64> {
    let s = s
        .trim()
        .trim_matches('`')
        .trim_start_matches('+')
        .replace('_', "");
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

/// The first backticked word of a cell (`` `ID` `` -> `ID`).
fn word(s: &str) -> &str {
    let s = s.trim();
    match s.strip_prefix('`') {
        Some(rest) => rest.split('`').next().unwrap_or(rest),
        None => s.split_whitespace().next().unwrap_or(s),
    }
}

struct Check {
    hdr: HwHeader,
    rows: usize,
}

impl Check {
    fn new() -> Self {
        Check {
            hdr: generate(),
            rows: 0,
        }
    }

    fn eq(&mut self, what: &str, doc: Option<u64>, name: &str) {
        let model = self
            .hdr
            .value(name)
            .unwrap_or_else(|| panic!("the register map has no {name}"));
        let said = doc.map_or("no number".to_string(), |d| format!("{d:#x}"));
        assert_eq!(
            doc,
            Some(model),
            "docs/hw-spec.md {what}: the spec says {said}, the model's {name} is {model:#x}"
        );
        self.rows += 1;
    }
}

#[test]
fn section_1_identity_and_capabilities() {
    let all = tables();
    let mut c = Check::new();
    for row in table(&all, "1. PCI identity", "field") {
        let name = match row[0].as_str() {
            "Vendor ID" => "VUGPU_PCI_VENDOR_ID",
            "Device ID" => "VUGPU_PCI_DEVICE_ID",
            "Revision" => "VUGPU_PCI_REVISION",
            "Class code" => "VUGPU_PCI_CLASS",
            "Subsystem vendor / ID" => {
                let (v, id) = row[1].split_once('/').expect("vendor / id");
                c.eq(
                    "§1 subsystem vendor",
                    num(word(v)),
                    "VUGPU_PCI_SUBSYS_VENDOR_ID",
                );
                c.eq("§1 subsystem id", num(word(id)), "VUGPU_PCI_SUBSYS_ID");
                continue;
            }
            _ => continue,
        };
        c.eq(&format!("§1 {}", row[0]), num(word(&row[1])), name);
    }
    for (heading, prefix) in [
        ("1.2 Capabilities", "VUGPU_CAP_"),
        ("1.4 Extended", "VUGPU_ECAP_"),
    ] {
        let rows = table(&all, heading, "offset");
        for (i, row) in rows.iter().enumerate() {
            let cap = match row[1].split_whitespace().next() {
                Some("Power") => "PM",
                Some("MSI-X") => "MSIX",
                Some("PCI") => "EXP",
                Some("Advanced") => "AER",
                Some("Resizable") => "REBAR",
                Some("Device") => "DSN",
                other => panic!("§{heading}: unknown capability {other:?}"),
            };
            c.eq(
                &format!("§{heading} {cap}"),
                num(&row[0]),
                &format!("{prefix}{cap}_OFFSET"),
            );
            // "next 0x50" names the following row (or 0 at the end of the chain).
            let next = row[1].split("next ").nth(1).and_then(|s| num(word(s)));
            let want = rows.get(i + 1).and_then(|r| num(&r[0])).unwrap_or(0);
            assert_eq!(next, Some(want), "§{heading} {cap}: next pointer");
        }
    }
    assert_eq!(c.rows, 12);
}

#[test]
fn section_2_bar0_ranges() {
    let all = tables();
    let mut c = Check::new();
    let range = |s: &str| {
        let s = s.trim_matches('`');
        let (a, b) = s.split_once('-').expect("a range");
        (num(a), num(b).map(|b| b + 1))
    };
    for row in table(&all, "2. BAR0", "range") {
        if row[0] == "rest" {
            continue;
        }
        let (start, end) = range(&row[0]);
        let (s, size) = match row[1].split_whitespace().next() {
            Some("device") => ("VUGPU_REGFILE_START", "VUGPU_DEVREGS_SIZE"),
            Some("DMA") => ("VUGPU_ENGINE_REGS_BASE", ""),
            Some("RsvdZ") => ("VUGPU_REGFILE_RSVD_START", ""),
            Some("MSI-X") if row[1].contains("table") => {
                ("VUGPU_MSIX_TABLE_OFFSET", "VUGPU_MSIX_TABLE_SIZE")
            }
            Some("MSI-X") => ("VUGPU_MSIX_PBA_OFFSET", "VUGPU_MSIX_PBA_SIZE"),
            Some("**doorbell") => ("VUGPU_DOORBELL_PAGE_OFFSET", "VUGPU_DOORBELL_PAGE_SIZE"),
            other => panic!("§2: unknown range {other:?}"),
        };
        c.eq(&format!("§2 {} start", row[0]), start, s);
        let end_name = match s {
            "VUGPU_ENGINE_REGS_BASE" => "VUGPU_REGFILE_RSVD_START",
            "VUGPU_REGFILE_RSVD_START" => "VUGPU_REGFILE_SIZE",
            _ => size,
        };
        let model_end = if size.is_empty() {
            c.hdr.value(end_name)
        } else {
            c.hdr.value(s).zip(c.hdr.value(size)).map(|(a, b)| a + b)
        };
        assert_eq!(end, model_end, "docs/hw-spec.md §2 {}: end", row[0]);
    }
    assert_eq!(c.rows, 6);
}

#[test]
fn section_3_register_file() {
    let all = tables();
    let mut c = Check::new();
    let rows = table(&all, "3. Register file", "offset");
    let mut listed = Vec::new();
    for row in &rows {
        let name = word(&row[1]);
        if let Some(rest) = row[0].strip_prefix("0x0200 + 0x20 * w + ") {
            c.eq(&format!("§3 {name}"), num(rest), &format!("VUGPU_{}", name));
            continue;
        }
        let Some(offset) = num(&row[0]) else {
            assert_eq!(row[0], "0x0300-0x03ff", "§3: a row without an offset");
            continue;
        };
        let reg = REGISTERS
            .iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| {
                panic!("docs/hw-spec.md §3 lists {name}, the model has no such register")
            });
        assert_eq!(
            Some(u64::from(reg.offset)),
            Some(offset),
            "docs/hw-spec.md §3 {name}: offset"
        );
        assert_eq!(reg.access, row[2], "docs/hw-spec.md §3 {name}: access");
        if let (Reset::Value(v), Some(doc)) = (reg.reset, num(&row[3])) {
            assert_eq!(u64::from(v), doc, "docs/hw-spec.md §3 {name}: reset value");
        }
        c.eq(
            &format!("§3 {name}"),
            Some(offset),
            &format!("VUGPU_REG_{name}"),
        );
        listed.push(name.to_string());
    }
    for r in REGISTERS {
        assert!(
            listed.iter().any(|n| n == r.name),
            "the model has register {} (0x{:04x}); docs/hw-spec.md §3 does not list it",
            r.name,
            r.offset
        );
    }
    // The peer-window block's base and stride, as the rows spell them.
    c.eq(
        "§3 peer window base",
        Some(0x200),
        "VUGPU_PEER_WIN_REGS_BASE",
    );
    c.eq(
        "§3 peer window stride",
        Some(0x20),
        "VUGPU_PEER_WIN_REGS_STRIDE",
    );
}

#[test]
fn section_6_engines() {
    let all = tables();
    let mut c = Check::new();
    for row in table(&all, "6.1 Address apertures", "value") {
        if let Some(v) = num(&row[0]) {
            let name = word(&row[1]);
            c.eq(
                &format!("§6.1 {name}"),
                Some(v),
                &format!("VUGPU_APERTURE_{name}"),
            );
        }
    }
    for row in table(&all, "6.3 Engine registers", "offset") {
        let name = word(&row[1]);
        if row[0] == "+0x40-+0xaf" {
            let (a, b) = row[0].split_once("-").expect("range");
            c.eq("§6.3 statistics start", num(a), "VUGPU_ENG_STATS_START");
            c.eq(
                "§6.3 statistics end",
                num(b).map(|b| b + 1),
                "VUGPU_ENG_STATS_END",
            );
            continue;
        }
        if row[0] == "other" {
            continue;
        }
        c.eq(
            &format!("§6.3 {name}"),
            num(&row[0]),
            &format!("VUGPU_ENG_{name}"),
        );
    }
    for row in table(&all, "6.3 Engine registers", "bit") {
        if row[1].is_empty() {
            continue;
        }
        let name = word(&row[1]);
        c.eq(
            &format!("§6.3 CONTROL.{name}"),
            num(&row[0]).map(|b| 1 << b),
            &format!("VUGPU_ENG_CONTROL_{name}"),
        );
    }
    for row in table(&all, "6.4 Doorbell page", "offset") {
        let name = word(&row[1]);
        if name == "reserved" {
            continue;
        }
        c.eq(
            &format!("§6.4 {name}"),
            num(&row[0]),
            &format!("VUGPU_DB_{name}"),
        );
    }
    for row in table(&all, "6.6 Engine errors", "`ERROR_CODE`") {
        let name = word(&row[1]);
        c.eq(
            &format!("§6.6 {name}"),
            num(&row[0]),
            &format!("VUGPU_ENG_ERR_{name}"),
        );
    }
    for row in table(&all, "6.10 Peer windows", "offset") {
        if row[1] == "RsvdZ" {
            continue;
        }
        let offsets: Vec<_> = row[0].split('/').map(num).collect();
        let names: Vec<_> = row[1].split('/').map(word).collect();
        assert_eq!(offsets.len(), names.len(), "§6.10 {}", row[0]);
        for (o, n) in offsets.into_iter().zip(names) {
            c.eq(&format!("§6.10 {n}"), o, &format!("VUGPU_PEER_WIN_{n}"));
        }
    }
    assert!(c.rows >= 4 + 16 + 4 + 2 + 10 + 5, "{} rows", c.rows);
}

#[test]
fn section_7_descriptor_layout() {
    let all = tables();
    let mut c = Check::new();
    let rows = table(&all, "7. Descriptors", "offset");
    let mut end = 0;
    for row in &rows {
        let off = num(&row[0]);
        let size = num(&row[1]).expect("a size");
        assert_eq!(
            off,
            Some(end),
            "docs/hw-spec.md §7 {}: fields are contiguous",
            row[2]
        );
        end += size;
        let field = word(&row[2]).to_uppercase();
        let name = match field.as_str() {
            "RESERVED" if off == Some(0x28) => "VUGPU_DESC_OFF_RSVD1".to_string(),
            "RESERVED" => "VUGPU_DESC_OFF_RSVD0".to_string(),
            f => format!("VUGPU_DESC_OFF_{f}"),
        };
        c.eq(&format!("§7 {field}"), off, &name);
    }
    c.eq("§7 size", Some(end), "VUGPU_DESC_SIZE");
    // The opcode and flags cells: "0 `NOP`, 1 `COPY`, ..." and "bit 0 `IRQ` ...".
    let opcodes = &rows[0][3];
    for part in opcodes.split(", ").take(8) {
        let mut it = part.split_whitespace();
        let (v, n) = (it.next().and_then(num), it.next().map(word));
        let n = n.expect("an opcode name");
        c.eq(&format!("§7 opcode {n}"), v, &format!("VUGPU_OP_{n}"));
    }
    for part in rows[1][3].split(", ").take(3) {
        let bit = part
            .strip_prefix("bit ")
            .and_then(|s| s.split_whitespace().next());
        let n = word(part.splitn(3, ' ').nth(2).unwrap_or(""));
        c.eq(
            &format!("§7 flag {n}"),
            bit.and_then(num).map(|b| 1 << b),
            &format!("VUGPU_DESC_F_{n}"),
        );
    }
}

#[test]
fn section_8_1_counters() {
    let all = tables();
    let mut c = Check::new();
    let rows = table(&all, "8.1 Per-engine counters", "offset");
    // The header abbreviates the COPY directions.
    let alias = |n: &str| match n {
        "BYTES_SYS_TO_VRAM" => "BYTES_S2V".to_string(),
        "BYTES_VRAM_TO_SYS" => "BYTES_V2S".to_string(),
        "BYTES_VRAM_TO_VRAM" => "BYTES_V2V".to_string(),
        "BYTES_SYS_TO_SYS" => "BYTES_S2S".to_string(),
        n => n.to_string(),
    };
    for row in &rows {
        let name = alias(word(&row[1]).trim_end_matches(':'));
        c.eq(
            &format!("§8.1 {name}"),
            num(&row[0]),
            &format!("VUGPU_ENG_STAT_{name}"),
        );
    }
    assert_eq!(c.rows, 14);
}

#[test]
fn section_9_mmu() {
    let all = tables();
    let mut c = Check::new();
    for row in table(&all, "9.1 Registers", "offset") {
        if row[1] == "statistics" {
            // "0x340 `FAULTS` (...), 0x348 `FAULTS_DROPPED` ...": every offset-name pair.
            let text = &row[4];
            let mut pairs = 0;
            for (i, _) in text.match_indices("0x3") {
                let rest = &text[i..];
                let off = num(rest.split_whitespace().next().unwrap_or(""));
                let name = rest.split('`').nth(1).unwrap_or("");
                c.eq(
                    &format!("§9.1 {name}"),
                    off,
                    &format!("VUGPU_REG_MMU_STAT_{name}"),
                );
                pairs += 1;
            }
            assert!(pairs > 0, "§9.1 statistics row without counters");
            continue;
        }
        if row[1] == "RsvdZ" {
            continue;
        }
        let name = word(&row[1]);
        c.eq(
            &format!("§9.1 {name}"),
            num(&row[0]),
            &format!("VUGPU_REG_{name}"),
        );
    }
    let bits_tables: Vec<_> = all
        .iter()
        .filter(|t| t.heading.starts_with("9.2") && t.columns[0] == "bits")
        .collect();
    assert_eq!(bits_tables.len(), 2);
    let (ctx, pte) = (&bits_tables[0].rows, &bits_tables[1].rows);
    let field = |rows: &[Vec<String>], bits: &str| -> String {
        rows.iter()
            .find(|r| r[0] == bits)
            .map(|r| r[1].clone())
            .unwrap_or_else(|| panic!("§9.2: no row for bits {bits}"))
    };
    assert!(field(ctx, "0").contains("VALID"));
    c.eq("§9.2 context VALID", Some(1), "VUGPU_CTX_VALID");
    assert!(field(ctx, "6:5").contains("aperture"));
    c.eq("§9.2 context aperture", Some(5), "VUGPU_CTX_APERTURE_SHIFT");
    for (bit, name) in [
        (0, "VALID"),
        (1, "LEAF"),
        (2, "READ"),
        (3, "WRITE"),
        (4, "ATOMIC"),
    ] {
        assert_eq!(
            word(&field(pte, &bit.to_string())),
            name,
            "§9.2 PTE bit {bit}"
        );
        c.eq(
            &format!("§9.2 PTE {name}"),
            Some(1 << bit),
            &format!("VUGPU_PTE_{name}"),
        );
    }
    assert!(field(pte, "6:5").contains("aperture"));
    c.eq("§9.2 PTE aperture", Some(5), "VUGPU_PTE_APERTURE_SHIFT");
    assert!(field(pte, "51:12").contains("address"));
    c.eq(
        "§9.2 PTE address",
        Some(0x000f_ffff_ffff_f000),
        "VUGPU_PT_ADDR_MASK",
    );
    assert!(field(pte, "63:56").contains("software"));
    c.eq("§9.2 PTE software bits", Some(56), "VUGPU_PTE_SW_SHIFT");

    let rows = table(&all, "9.4 Faults", "offset");
    let mut end = 0;
    for row in &rows {
        let off = num(&row[0]);
        assert_eq!(off, Some(end), "§9.4 record fields are contiguous");
        end += num(&row[1]).expect("a size");
        let name = word(&row[2]).trim_end_matches(':').to_uppercase();
        if name == "RESERVED," || name == "RESERVED" {
            continue;
        }
        c.eq(
            &format!("§9.4 {name}"),
            off,
            &format!("VUGPU_FAULT_OFF_{name}"),
        );
        if name == "REASON" {
            // "1 `NOT_PRESENT`, 2 `PROTECTION`, ...": the value precedes each backticked name.
            let list = row[2].split_once(": ").map_or("", |(_, l)| l);
            let mut reasons = 0;
            for part in list.split(", ").filter(|p| p.contains('`')) {
                reasons += 1;
                let mut quoted = part.split('`');
                let val = quoted
                    .next()
                    .and_then(|s| s.split_whitespace().last())
                    .and_then(num);
                let code = quoted.next().unwrap_or("");
                c.eq(
                    &format!("§9.4 reason {code}"),
                    val,
                    &format!("VUGPU_FAULT_{code}"),
                );
            }
            assert_eq!(reasons, 6, "§9.4 lists six fault reasons");
        }
        if name == "ACCESS" {
            for (v, n) in [(0, "READ"), (1, "WRITE"), (2, "ATOMIC")] {
                assert!(
                    row[2].contains(&format!("{v} {}", n.to_lowercase())),
                    "§9.4 access {n}"
                );
                c.eq(
                    &format!("§9.4 access {n}"),
                    Some(v),
                    &format!("VUGPU_FAULT_ACCESS_{n}"),
                );
            }
        }
    }
    c.eq("§9.4 record size", Some(end), "VUGPU_FAULT_REC_SIZE");
}
