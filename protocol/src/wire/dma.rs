//! DMA_MAP / DMA_UNMAP payloads and the DMA_READ / DMA_WRITE layouts.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{read_prefix, Writer};
use crate::error::{ProtocolError, Result};

/// DMA_MAP flag bits: the spec's `readable`/`writeable` are Linux's `VFIO_DMA_MAP_FLAG_*` bits.
pub mod dma_map_flags {
    use vfio_bindings::bindings::vfio as vfio_sys;

    /// The device may read the mapping.
    pub const READ: u32 = vfio_sys::VFIO_DMA_MAP_FLAG_READ;
    /// The device may write the mapping.
    pub const WRITE: u32 = vfio_sys::VFIO_DMA_MAP_FLAG_WRITE;
    /// All bits this implementation accepts.
    pub const KNOWN: u32 = READ | WRITE;
}

/// DMA_UNMAP flag bits (spec / Linux `VFIO_DMA_UNMAP_FLAG_*`, from `vfio-bindings`).
pub mod dma_unmap_flags {
    use vfio_bindings::bindings::vfio as vfio_sys;

    /// Return a dirty bitmap of the range (migration v1): not supported.
    pub const GET_DIRTY_PAGE_INFO: u32 = vfio_sys::VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP;
    /// Unmap every mapping; address and size must be 0.
    pub const ALL: u32 = vfio_sys::VFIO_DMA_UNMAP_FLAG_ALL;
    /// All bits defined.
    pub const KNOWN: u32 = GET_DIRTY_PAGE_INFO | ALL;
}

/// `struct vfio_user_dma_map` payload.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct DmaMapWire {
    /// Size of this structure (32).
    pub argsz: u32,
    /// `dma_map_flags::*`.
    pub flags: u32,
    /// Offset into the passed fd (0 without fd).
    pub offset: u64,
    /// IOVA of the window.
    pub address: u64,
    /// Length of the window.
    pub size: u64,
}

const _: () = assert!(std::mem::size_of::<DmaMapWire>() == DmaMapWire::SIZE);

impl DmaMapWire {
    /// Encoded size.
    pub const SIZE: usize = 32;
}

/// `struct vfio_user_dma_unmap` payload (without the dirty bitmap, which we do not support).
#[repr(C)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct DmaUnmapWire {
    /// Size of this structure (24).
    pub argsz: u32,
    /// `dma_unmap_flags::*`.
    pub flags: u32,
    /// IOVA of the window.
    pub address: u64,
    /// Length of the window.
    pub size: u64,
}

const _: () = assert!(std::mem::size_of::<DmaUnmapWire>() == DmaUnmapWire::SIZE);

impl DmaUnmapWire {
    /// Encoded size.
    pub const SIZE: usize = 24;
}

/// Payload layout of DMA_READ / DMA_WRITE messages.
///
/// The spec puts `u64 address; u64 count` before the data (data at payload offset 16).
/// QEMU 10.2's source declares `VFIOUserDMARW { hdr; u64 offset; u32 count; char data[]; }`
/// whose `sizeof` is 32 but whose data starts at offset 28: data at payload offset 12, only 32
/// bits of count, 4 bytes of trailing padding, and a header-only DMA_WRITE reply.
///
/// Verified against Debian's QEMU 11.1.3 (1:11.1.3+ds-1~bpo13+1) with a guest driving a copy
/// engine over the fd-less BIOS ROM window: its DMA_READ reply carries the data at payload
/// offset 16 (a 64-bit count), i.e. the spec layout, which is therefore the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DmaLayout {
    /// `docs/interop/vfio-user.rst` layout, spoken by QEMU 11.1.3.
    #[default]
    Spec,
    /// The layout of QEMU 10.2's `VFIOUserDMARW` struct (data at payload offset 12).
    Qemu,
}

/// The address/count prefix of a DMA_READ / DMA_WRITE payload; its bytes are the spec layout's
/// prefix (`u64 address; u64 count`).
#[repr(C)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct DmaRwHeader {
    /// Address in the client's DMA address space.
    pub address: u64,
    /// Byte count.
    pub count: u64,
}

const _: () = assert!(std::mem::size_of::<DmaRwHeader>() == 16);

/// The prefix in QEMU 10.2's layout: `u64 offset; u32 count` with the data right after it
/// (packed: no padding between the count and the data).
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
struct DmaRwQemuPrefix {
    address: u64,
    count: u32,
}

const _: () = assert!(std::mem::size_of::<DmaRwQemuPrefix>() == 12);

impl DmaLayout {
    /// Bytes before the data.
    pub fn prefix_len(self) -> usize {
        match self {
            DmaLayout::Spec => 16,
            DmaLayout::Qemu => 12,
        }
    }

    /// Padding bytes after the data (QEMU's struct tail padding).
    pub fn trailer_len(self) -> usize {
        match self {
            DmaLayout::Spec => 0,
            DmaLayout::Qemu => 4,
        }
    }

    /// Largest count the layout can express.
    pub fn max_count(self) -> u64 {
        match self {
            DmaLayout::Spec => u64::MAX,
            DmaLayout::Qemu => u64::from(u32::MAX),
        }
    }

    /// Encode prefix + `data` + trailer. Used for DMA_READ requests (empty data, count =
    /// bytes wanted), DMA_WRITE requests and DMA_READ replies. Fails if `count` does not fit.
    pub fn encode(self, h: DmaRwHeader, data: &[u8], w: &mut Writer) -> Result<()> {
        match self {
            DmaLayout::Spec => w.put(&h),
            DmaLayout::Qemu => {
                let count = u32::try_from(h.count)
                    .map_err(|_| ProtocolError::invalid("DMA count exceeds 32 bits"))?;
                w.put(&DmaRwQemuPrefix {
                    address: h.address,
                    count,
                })
            }
        };
        w.bytes(data).zeros(self.trailer_len());
        Ok(())
    }

    /// Decode the prefix; returns it and the bytes after it (data plus any trailer).
    pub fn decode(self, body: &[u8]) -> Result<(DmaRwHeader, &[u8])> {
        let decoded = match self {
            DmaLayout::Spec => read_prefix::<DmaRwHeader>(body),
            DmaLayout::Qemu => read_prefix::<DmaRwQemuPrefix>(body).map(|(p, rest)| {
                let h = DmaRwHeader {
                    address: p.address,
                    count: u64::from(p.count),
                };
                (h, rest)
            }),
        };
        decoded.ok_or_else(|| ProtocolError::invalid("DMA_READ/DMA_WRITE payload too short"))
    }

    /// The DMA_WRITE reply payload in this layout (QEMU: empty).
    pub fn encode_write_reply(self, h: DmaRwHeader, w: &mut Writer) {
        if self == DmaLayout::Spec {
            w.put(&h);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_layout_matches_vfiouserdmarw() {
        // hdr(16) + offset(8) + count(4) + data + pad(4): QEMU requires size >= 32 and
        // count <= size - 32, and copies data from byte 28.
        let mut w = Writer::default();
        DmaLayout::Qemu
            .encode(
                DmaRwHeader {
                    address: 0x1000,
                    count: 3,
                },
                &[1, 2, 3],
                &mut w,
            )
            .expect("fits");
        let v = w.into_vec();
        assert_eq!(v.len(), 12 + 3 + 4);
        assert_eq!(&v[12..15], &[1, 2, 3]);
        assert!(16 + v.len() >= 32 && 3 <= 16 + v.len() - 32);
        let (h, rest) = DmaLayout::Qemu.decode(&v).expect("decodes");
        assert_eq!((h.address, h.count), (0x1000, 3));
        assert_eq!(&rest[..3], &[1, 2, 3]);
        // DMA_READ request: exactly 32 bytes with the header.
        let mut w = Writer::default();
        DmaLayout::Qemu
            .encode(
                DmaRwHeader {
                    address: 0,
                    count: 9,
                },
                &[],
                &mut w,
            )
            .expect("fits");
        assert_eq!(w.len(), 16);
        let mut w = Writer::default();
        assert!(DmaLayout::Qemu
            .encode(
                DmaRwHeader {
                    address: 0,
                    count: 1 << 32
                },
                &[],
                &mut w
            )
            .is_err());
    }

    #[test]
    fn spec_layout_data_at_16() {
        let mut w = Writer::default();
        DmaLayout::Spec
            .encode(
                DmaRwHeader {
                    address: 7,
                    count: 2,
                },
                &[9, 9],
                &mut w,
            )
            .expect("fits");
        let v = w.into_vec();
        assert_eq!(v.len(), 18);
        assert_eq!(&v[16..], &[9, 9]);
        assert!(DmaLayout::Spec.decode(&v[..15]).is_err());
    }
}
