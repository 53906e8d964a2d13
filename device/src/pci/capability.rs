//! PCI capabilities: each one owns its registers and may add behaviour to writes.
//!
//! A capability declares its body registers (offsets relative to its start, header excluded) and
//! may wrap the masked write to add side effects (FLR, BAR resize, MSI-X control changes). The
//! header (ID and next pointer, or the extended header dword) is written by [`install_chain`],
//! which links the standard list (from offset 0x34) and the extended list (from 0x100) in the
//! order given. [`walk_standard`] and [`walk_extended`] parse the chains back from raw bytes, for
//! tests and for `vugpu probe`.

use std::fmt;

use super::config_space::{ConfigSpace, ConfigSpaceError, Register};

/// First byte of extended configuration space.
pub const EXTENDED_START: u16 = 0x100;
/// Capabilities pointer in the type 0 header.
pub const CAP_POINTER: u16 = 0x34;

/// A capability's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapId {
    /// A capability in the first 256 bytes (8-bit ID, 8-bit next pointer).
    Standard(u8),
    /// An extended capability (16-bit ID, 4-bit version, 12-bit next pointer).
    Extended {
        /// Capability ID.
        id: u16,
        /// Capability version.
        version: u8,
    },
}

/// What a client write to a capability asks of the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CapWrite {
    /// Initiate Function Level Reset.
    pub flr: bool,
    /// The decoded size of BAR `.0` became `.1` bytes.
    pub bar_resize: Option<(u8, u64)>,
    /// MSI-X Enable or Function Mask may have changed.
    pub msix_control: bool,
}

impl CapWrite {
    /// Combines two outcomes.
    pub fn merge(self, other: CapWrite) -> CapWrite {
        CapWrite {
            flr: self.flr || other.flr,
            bar_resize: other.bar_resize.or(self.bar_resize),
            msix_control: self.msix_control || other.msix_control,
        }
    }
}

/// One capability.
pub trait Capability: Send + fmt::Debug {
    /// Name for diagnostics.
    fn name(&self) -> &'static str;
    /// ID (and version).
    fn id(&self) -> CapId;
    /// Size in bytes, header included.
    fn size(&self) -> u16;
    /// Body registers, offsets relative to the capability start (past the header).
    fn registers(&self) -> Vec<Register>;
    /// A client write of `data` at absolute `offset`, entirely inside this capability placed at
    /// `base`. The default is the plain masked write.
    fn write(
        &self,
        cs: &mut ConfigSpace,
        base: u16,
        offset: u16,
        data: &[u8],
    ) -> Result<CapWrite, ConfigSpaceError> {
        let _ = base;
        cs.write(u64::from(offset), data)?;
        Ok(CapWrite::default())
    }
}

/// A capability at its place in config space.
#[derive(Debug)]
pub struct PlacedCap {
    /// Offset of the header.
    pub offset: u16,
    /// The capability.
    pub cap: Box<dyn Capability>,
}

impl PlacedCap {
    /// Does `[offset, offset + len)` intersect this capability.
    pub fn contains(&self, offset: u16) -> bool {
        offset >= self.offset && offset < self.offset + self.cap.size()
    }

    /// One past the last byte.
    pub fn end(&self) -> u16 {
        self.offset + self.cap.size()
    }
}

/// Errors of chain construction (layout bugs).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum CapError {
    /// A standard capability outside 0x40..0x100 or misaligned, or an extended one outside
    /// 0x100..0x1000 or misaligned, or the first extended one not at 0x100.
    #[error("capability {name} cannot be placed at {offset:#x}")]
    BadPlacement {
        /// Capability name.
        name: &'static str,
        /// Offset.
        offset: u16,
    },
    /// Register declaration failed.
    #[error(transparent)]
    Config(#[from] ConfigSpaceError),
}

/// Installs the capabilities (header + body registers), linking the standard and extended
/// chains in the given order. Returns the placed list and the standard chain head (0 if none).
pub fn install_chain(
    cs: &mut ConfigSpace,
    caps: Vec<(u16, Box<dyn Capability>)>,
) -> Result<(Vec<PlacedCap>, u8), CapError> {
    let std_offsets: Vec<u16> = caps
        .iter()
        .filter(|(_, c)| matches!(c.id(), CapId::Standard(_)))
        .map(|(o, _)| *o)
        .collect();
    let ext_offsets: Vec<u16> = caps
        .iter()
        .filter(|(_, c)| matches!(c.id(), CapId::Extended { .. }))
        .map(|(o, _)| *o)
        .collect();
    let mut placed = Vec::with_capacity(caps.len());
    let (mut si, mut ei) = (0, 0);
    for (offset, cap) in caps {
        let end = u32::from(offset) + u32::from(cap.size());
        match cap.id() {
            CapId::Standard(id) => {
                if offset < 0x40 || offset % 4 != 0 || end > u32::from(EXTENDED_START) {
                    return Err(CapError::BadPlacement {
                        name: cap.name(),
                        offset,
                    });
                }
                si += 1;
                let next = std_offsets.get(si).copied().unwrap_or(0);
                let header = u32::from(id) | (u32::from(next) << 8);
                cs.define(&Register::ro(cap.name(), offset, 2, header))?;
            }
            CapId::Extended { id, version } => {
                let first_ok = ei != 0 || offset == EXTENDED_START;
                if offset < EXTENDED_START || offset % 4 != 0 || end > 0x1000 || !first_ok {
                    return Err(CapError::BadPlacement {
                        name: cap.name(),
                        offset,
                    });
                }
                ei += 1;
                let next = ext_offsets.get(ei).copied().unwrap_or(0);
                let header =
                    u32::from(id) | (u32::from(version & 0xf) << 16) | (u32::from(next) << 20);
                cs.define(&Register::ro(cap.name(), offset, 4, header))?;
            }
        }
        for reg in cap.registers() {
            let hdr = match cap.id() {
                CapId::Standard(_) => 2,
                CapId::Extended { .. } => 4,
            };
            if reg.offset < hdr
                || u32::from(reg.offset) + u32::from(reg.width) > u32::from(cap.size())
            {
                return Err(CapError::BadPlacement {
                    name: reg.name,
                    offset: offset + reg.offset,
                });
            }
            cs.define(&reg.at(offset))?;
        }
        placed.push(PlacedCap { offset, cap });
    }
    let head = std_offsets.first().copied().unwrap_or(0) as u8;
    Ok((placed, head))
}

/// A capability found while walking raw config-space bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FoundCap {
    /// Offset of its header.
    pub offset: u16,
    /// ID and version.
    pub id: CapId,
}

fn byte(cfg: &[u8], off: usize) -> u8 {
    cfg.get(off).copied().unwrap_or(0)
}

fn dword(cfg: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([
        byte(cfg, off),
        byte(cfg, off + 1),
        byte(cfg, off + 2),
        byte(cfg, off + 3),
    ])
}

/// Walks the standard capability list of raw config bytes (stops on loops, bad pointers).
pub fn walk_standard(cfg: &[u8]) -> Vec<FoundCap> {
    let mut out = Vec::new();
    // Status bit 4: capabilities list present.
    if byte(cfg, 6) & 0x10 == 0 {
        return out;
    }
    let mut ptr = usize::from(byte(cfg, usize::from(CAP_POINTER)) & 0xfc);
    while ptr >= 0x40 && out.len() < 48 {
        out.push(FoundCap {
            offset: ptr as u16,
            id: CapId::Standard(byte(cfg, ptr)),
        });
        ptr = usize::from(byte(cfg, ptr + 1) & 0xfc);
    }
    out
}

/// Walks the extended capability list (from 0x100) of raw config bytes.
pub fn walk_extended(cfg: &[u8]) -> Vec<FoundCap> {
    let mut out = Vec::new();
    let mut ptr = usize::from(EXTENDED_START);
    while ptr >= usize::from(EXTENDED_START) && ptr + 4 <= cfg.len() && out.len() < 960 {
        let hdr = dword(cfg, ptr);
        if hdr == 0 || hdr == 0xffff_ffff {
            break;
        }
        out.push(FoundCap {
            offset: ptr as u16,
            id: CapId::Extended {
                id: (hdr & 0xffff) as u16,
                version: ((hdr >> 16) & 0xf) as u8,
            },
        });
        ptr = ((hdr >> 20) & 0xffc) as usize;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Dummy(CapId, u16);
    impl Capability for Dummy {
        fn name(&self) -> &'static str {
            "dummy"
        }
        fn id(&self) -> CapId {
            self.0
        }
        fn size(&self) -> u16 {
            self.1
        }
        fn registers(&self) -> Vec<Register> {
            vec![Register::rw("body", 4, 4, 0x55, 0xff)]
        }
    }

    fn boxed(id: CapId, size: u16) -> Box<dyn Capability> {
        Box::new(Dummy(id, size))
    }

    #[test]
    fn chains_link_and_walk() {
        let mut cs = ConfigSpace::new();
        let caps = vec![
            (0x40, boxed(CapId::Standard(1), 8)),
            (0x50, boxed(CapId::Standard(0x11), 12)),
            (0x100, boxed(CapId::Extended { id: 1, version: 2 }, 0x48)),
            (
                0x148,
                boxed(
                    CapId::Extended {
                        id: 0x15,
                        version: 1,
                    },
                    12,
                ),
            ),
        ];
        let (placed, head) = install_chain(&mut cs, caps).unwrap();
        assert_eq!(head, 0x40);
        assert_eq!(placed.len(), 4);
        cs.set(CAP_POINTER, 1, u32::from(head));
        cs.set(6, 2, 0x10);
        let std = walk_standard(cs.as_bytes());
        assert_eq!(
            std,
            vec![
                FoundCap {
                    offset: 0x40,
                    id: CapId::Standard(1)
                },
                FoundCap {
                    offset: 0x50,
                    id: CapId::Standard(0x11)
                },
            ]
        );
        let ext = walk_extended(cs.as_bytes());
        assert_eq!(ext.len(), 2);
        assert_eq!(
            ext[1].id,
            CapId::Extended {
                id: 0x15,
                version: 1
            }
        );
        assert_eq!(cs.get_u32(0x100), 0x1482_0001);
        assert_eq!(
            cs.get_u32(0x44),
            0x55,
            "body registers placed relative to the cap"
        );
        assert!(placed[1].contains(0x5b) && !placed[1].contains(0x5c));
    }

    #[test]
    fn rejects_bad_placement() {
        let mut cs = ConfigSpace::new();
        assert!(install_chain(&mut cs, vec![(0x3c, boxed(CapId::Standard(1), 8))]).is_err());
        let mut cs = ConfigSpace::new();
        assert!(install_chain(&mut cs, vec![(0x42, boxed(CapId::Standard(1), 8))]).is_err());
        let mut cs = ConfigSpace::new();
        assert!(install_chain(&mut cs, vec![(0xfc, boxed(CapId::Standard(1), 8))]).is_err());
        let mut cs = ConfigSpace::new();
        let ext = CapId::Extended { id: 1, version: 1 };
        assert!(install_chain(&mut cs, vec![(0x148, boxed(ext, 8))]).is_err());
        let mut cs = ConfigSpace::new();
        assert!(install_chain(&mut cs, vec![(0x100, boxed(ext, 0x1000))]).is_err());
        let mut cs = ConfigSpace::new();
        // Body register past the declared size.
        assert!(install_chain(&mut cs, vec![(0x40, boxed(CapId::Standard(1), 6))]).is_err());
    }

    #[test]
    fn walkers_survive_loops_and_garbage() {
        let mut cfg = vec![0u8; 4096];
        cfg[6] = 0x10;
        cfg[0x34] = 0x40;
        cfg[0x40] = 1;
        cfg[0x41] = 0x40; // points to itself
        assert_eq!(walk_standard(&cfg).len(), 48);
        cfg[0x100..0x104].copy_from_slice(&0x1000_0001u32.to_le_bytes()); // next = 0x100
        assert_eq!(walk_extended(&cfg).len(), 960);
        assert!(walk_standard(&[]).is_empty());
        assert!(walk_extended(&[0xff; 16]).is_empty());
    }
}
