//! `vugpu probe`: connect as a vfio-user client and print what a client (QEMU) would see.

use std::fmt::Write as _;
use std::path::Path;

use vugpu_protocol::Client;

use crate::pci::capability::{walk_extended, walk_standard, CapId};

fn u16_at(cfg: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([
        cfg.get(off).copied().unwrap_or(0),
        cfg.get(off + 1).copied().unwrap_or(0),
    ])
}

fn u32_at(cfg: &[u8], off: usize) -> u32 {
    u32::from(u16_at(cfg, off)) | (u32::from(u16_at(cfg, off + 2)) << 16)
}

fn std_cap_name(id: u8) -> &'static str {
    match id {
        0x01 => "Power Management",
        0x05 => "MSI",
        0x10 => "PCI Express",
        0x11 => "MSI-X",
        0x09 => "Vendor Specific",
        _ => "unknown",
    }
}

fn ext_cap_name(id: u16) -> &'static str {
    match id {
        0x0001 => "Advanced Error Reporting",
        0x0003 => "Device Serial Number",
        0x000d => "Access Control Services",
        0x000f => "Address Translation Services",
        0x0015 => "Resizable BAR",
        0x001b => "PASID",
        _ => "unknown",
    }
}

/// Decodes a config-space image into readable lines. `bar_sizes` (region sizes of BAR0-5, when
/// known) tells an unimplemented BAR from one whose address and type bits are all zero.
pub fn decode_config(cfg: &[u8], bar_sizes: Option<[u64; 6]>) -> String {
    let mut s = String::new();
    let class = u32_at(cfg, 8) >> 8;
    let _ = writeln!(
        s,
        "  ID {:04x}:{:04x} rev {:02x} class {:06x} subsystem {:04x}:{:04x}",
        u16_at(cfg, 0),
        u16_at(cfg, 2),
        cfg.get(8).copied().unwrap_or(0),
        class,
        u16_at(cfg, 0x2c),
        u16_at(cfg, 0x2e)
    );
    let _ = writeln!(
        s,
        "  command {:04x} status {:04x} header type {:02x} interrupt pin {}",
        u16_at(cfg, 4),
        u16_at(cfg, 6),
        cfg.get(0x0e).copied().unwrap_or(0),
        cfg.get(0x3d).copied().unwrap_or(0)
    );
    let mut bar = 0usize;
    while bar < 6 {
        let v = u32_at(cfg, 0x10 + 4 * bar);
        let is64 = v & 0x7 == 0x4;
        let size = bar_sizes.map(|b| b[bar]);
        let (text, step) = if size == Some(0) || (size.is_none() && v == 0) {
            ("unimplemented".to_string(), 1)
        } else if v & 1 == 1 {
            ("I/O".to_string(), 1)
        } else if is64 {
            let hi = u32_at(cfg, 0x14 + 4 * bar);
            let addr = (u64::from(hi) << 32) | u64::from(v & !0xf);
            (
                format!(
                    "memory 64-bit {}prefetchable at {addr:#x}",
                    if v & 8 != 0 { "" } else { "non-" }
                ),
                2,
            )
        } else {
            (
                format!(
                    "memory 32-bit {}prefetchable at {:#x}",
                    if v & 8 != 0 { "" } else { "non-" },
                    v & !0xf
                ),
                1,
            )
        };
        match size {
            Some(sz) if sz != 0 => {
                let _ = writeln!(s, "  BAR{bar}: {text}, size {sz:#x} (raw {v:#010x})");
            }
            _ => {
                let _ = writeln!(s, "  BAR{bar}: {text} (raw {v:#010x})");
            }
        }
        bar += step;
    }
    for c in walk_standard(cfg) {
        if let CapId::Standard(id) = c.id {
            let _ = writeln!(
                s,
                "  cap {:#05x}: {:#04x} {}",
                c.offset,
                id,
                std_cap_name(id)
            );
            decode_std_cap(&mut s, cfg, usize::from(c.offset), id);
        }
    }
    for c in walk_extended(cfg) {
        if let CapId::Extended { id, version } = c.id {
            let _ = writeln!(
                s,
                "  ext cap {:#05x}: {:#06x} v{} {}",
                c.offset,
                id,
                version,
                ext_cap_name(id)
            );
            decode_ext_cap(&mut s, cfg, usize::from(c.offset), id);
        }
    }
    s
}

fn decode_std_cap(s: &mut String, cfg: &[u8], o: usize, id: u8) {
    match id {
        0x01 => {
            let _ = writeln!(
                s,
                "      PMC {:04x} PMCSR {:04x}",
                u16_at(cfg, o + 2),
                u16_at(cfg, o + 4)
            );
        }
        0x11 => {
            let ctl = u16_at(cfg, o + 2);
            let t = u32_at(cfg, o + 4);
            let p = u32_at(cfg, o + 8);
            let _ = writeln!(
                s,
                "      {} vectors, enable {}, function mask {}, table BIR {} +{:#x}, PBA BIR {} +{:#x}",
                (ctl & 0x7ff) + 1,
                ctl >> 15,
                (ctl >> 14) & 1,
                t & 7,
                t & !7,
                p & 7,
                p & !7
            );
        }
        0x10 => {
            let caps = u16_at(cfg, o + 2);
            let lcap = u32_at(cfg, o + 0x0c);
            let lsta = u16_at(cfg, o + 0x12);
            let _ = writeln!(
                s,
                "      version {} type {} devcap {:08x} devctl {:04x} devsta {:04x}",
                caps & 0xf,
                (caps >> 4) & 0xf,
                u32_at(cfg, o + 4),
                u16_at(cfg, o + 8),
                u16_at(cfg, o + 0x0a)
            );
            let _ = writeln!(
                s,
                "      link cap speed {} width x{}; status speed {} width x{}; devcap2 {:08x} devctl2 {:04x}",
                lcap & 0xf,
                (lcap >> 4) & 0x3f,
                lsta & 0xf,
                (lsta >> 4) & 0x3f,
                u32_at(cfg, o + 0x24),
                u16_at(cfg, o + 0x28)
            );
        }
        _ => {}
    }
}

fn decode_ext_cap(s: &mut String, cfg: &[u8], o: usize, id: u16) {
    match id {
        0x0001 => {
            let _ = writeln!(
                s,
                "      uncor status {:08x} mask {:08x} severity {:08x}; cor status {:08x} mask {:08x}",
                u32_at(cfg, o + 4),
                u32_at(cfg, o + 8),
                u32_at(cfg, o + 0xc),
                u32_at(cfg, o + 0x10),
                u32_at(cfg, o + 0x14)
            );
        }
        0x0015 => {
            let cap = u32_at(cfg, o + 4);
            let ctl = u32_at(cfg, o + 8);
            let sizes: Vec<String> = (0..28)
                .filter(|n| cap & (1 << (n + 4)) != 0)
                .map(|n| format!("{}M", 1u64 << n))
                .collect();
            let _ = writeln!(
                s,
                "      BAR{} sizes [{}], current {}M",
                ctl & 7,
                sizes.join(" "),
                1u64 << ((ctl >> 8) & 0x3f)
            );
        }
        0x0003 => {
            let _ = writeln!(
                s,
                "      serial {:08x}{:08x}",
                u32_at(cfg, o + 8),
                u32_at(cfg, o + 4)
            );
        }
        _ => {}
    }
}

/// Connects to `socket`, enumerates the device and returns the report.
pub fn probe(socket: &Path) -> Result<String, vugpu_protocol::ProtocolError> {
    let mut c = Client::connect(socket)?;
    let caps = c.negotiate()?;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "vfio-user {}.{}: max_msg_fds {} max_data_xfer_size {} pgsizes {:#x} max_dma_maps {} write_multiple {} (reply {} bytes)",
        caps.major,
        caps.minor,
        caps.max_msg_fds,
        caps.max_data_xfer_size,
        caps.pgsizes,
        caps.max_dma_maps,
        caps.write_multiple,
        caps.reply_size
    );
    let info = c.device_info()?;
    let _ = writeln!(
        s,
        "device: flags {:#x} ({}{}), {} regions, {} irq indexes",
        info.flags,
        if info.flags & 1 != 0 { "RESET " } else { "" },
        if info.flags & 2 != 0 { "PCI" } else { "" },
        info.num_regions,
        info.num_irqs
    );
    let mut bar_sizes = [0u64; 6];
    for i in 0..info.num_regions.min(100) {
        let r = c.region_info(i)?;
        if let Some(b) = bar_sizes.get_mut(i as usize) {
            *b = r.info.size;
        }
        let f = r.info.flags;
        let _ = writeln!(
            s,
            "region {i}: size {:#x} flags {:#x} [{}{}{}] mmap fd {} sparse {:?}",
            r.info.size,
            f,
            if f & 1 != 0 { "R" } else { "-" },
            if f & 2 != 0 { "W" } else { "-" },
            if f & 4 != 0 { "M" } else { "-" },
            if r.fd.is_some() { "yes" } else { "no" },
            r.sparse_areas
                .iter()
                .map(|a| (a.offset, a.size))
                .collect::<Vec<_>>()
        );
    }
    for i in 0..info.num_irqs.min(50) {
        match c.irq_info(i) {
            Ok(q) => {
                let _ = writeln!(s, "irq {i}: count {} flags {:#x}", q.count, q.flags);
            }
            Err(e) => {
                let _ = writeln!(s, "irq {i}: error {e}");
            }
        }
    }
    let size = c.region_info(7)?.info.size.min(4096) as usize;
    let mut cfg = vec![0u8; size];
    c.region_read(7, 0, &mut cfg)?;
    let _ = writeln!(s, "config space ({size} bytes):");
    s.push_str(&decode_config(&cfg, Some(bar_sizes)));
    Ok(s)
}
