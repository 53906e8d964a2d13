//! Region payloads: GET_REGION_INFO (+ sparse-mmap capability), GET_REGION_IO_FDS,
//! REGION_READ / REGION_WRITE and REGION_WRITE_MULTI.

use super::{Reader, Writer};
use crate::backend::SparseArea;

/// `VFIO_REGION_INFO_CAP_SPARSE_MMAP`.
pub const CAP_ID_SPARSE_MMAP: u16 = 1;
/// Most entries in one REGION_WRITE_MULTI (QEMU's `VFIO_USER_MULTI_MAX`).
pub const MAX_WRITE_MULTI: u64 = 200;
/// Data bytes per REGION_WRITE_MULTI entry (`VFIO_USER_MULTI_DATA`).
pub const WRITE_MULTI_DATA: usize = 8;

/// `struct vfio_region_info`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RegionInfoWire {
    /// Request: buffer size of the client. Reply: size needed for the full answer.
    pub argsz: u32,
    /// `backend::region_flags::*`.
    pub flags: u32,
    /// Region index.
    pub index: u32,
    /// Offset of the first capability from the start of this structure (0 = none).
    pub cap_offset: u32,
    /// Region size.
    pub size: u64,
    /// mmap offset in the fd sent with the reply.
    pub offset: u64,
}

const _: () = assert!(std::mem::size_of::<RegionInfoWire>() == RegionInfoWire::SIZE);

impl RegionInfoWire {
    /// Encoded size.
    pub const SIZE: usize = 32;

    /// Decode from a reader.
    pub fn decode(r: &mut Reader<'_>) -> Option<Self> {
        Some(RegionInfoWire {
            argsz: r.u32()?,
            flags: r.u32()?,
            index: r.u32()?,
            cap_offset: r.u32()?,
            size: r.u64()?,
            offset: r.u64()?,
        })
    }

    /// Encode.
    pub fn encode(&self, w: &mut Writer) {
        w.u32(self.argsz)
            .u32(self.flags)
            .u32(self.index)
            .u32(self.cap_offset)
            .u64(self.size)
            .u64(self.offset);
    }
}

/// `struct vfio_info_cap_header`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CapHeader {
    /// Capability id.
    pub id: u16,
    /// Capability version.
    pub version: u16,
    /// Offset of the next capability from the start of the info structure (0 = last).
    pub next: u32,
}

const _: () = assert!(std::mem::size_of::<CapHeader>() == CapHeader::SIZE);

impl CapHeader {
    /// Encoded size.
    pub const SIZE: usize = 8;

    /// Decode from a reader.
    pub fn decode(r: &mut Reader<'_>) -> Option<Self> {
        Some(CapHeader {
            id: r.u16()?,
            version: r.u16()?,
            next: r.u32()?,
        })
    }

    /// Encode.
    pub fn encode(&self, w: &mut Writer) {
        w.u16(self.id).u16(self.version).u32(self.next);
    }
}

/// Fixed part of `struct vfio_region_info_cap_sparse_mmap` after the cap header.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SparseMmapHeader {
    /// Number of areas that follow.
    pub nr_areas: u32,
    /// Reserved (0).
    pub reserved: u32,
}

const _: () = assert!(std::mem::size_of::<SparseMmapHeader>() == SparseMmapHeader::SIZE);
const _: () = assert!(std::mem::size_of::<SparseArea>() == SparseMmapHeader::AREA_SIZE);

impl SparseMmapHeader {
    /// Encoded size.
    pub const SIZE: usize = 8;
    /// Encoded size of one area (`u64 offset; u64 size`).
    pub const AREA_SIZE: usize = 16;

    /// Bytes of a whole sparse-mmap capability (cap header included) with `n` areas.
    pub fn cap_len(n: usize) -> Option<usize> {
        n.checked_mul(Self::AREA_SIZE)?
            .checked_add(CapHeader::SIZE + Self::SIZE)
    }

    /// Encode the complete capability (header with `next`, count and areas).
    pub fn encode_cap(areas: &[SparseArea], next: u32, w: &mut Writer) {
        CapHeader {
            id: CAP_ID_SPARSE_MMAP,
            version: 1,
            next,
        }
        .encode(w);
        w.u32(u32::try_from(areas.len()).unwrap_or(u32::MAX)).u32(0);
        for a in areas {
            w.u64(a.offset).u64(a.size);
        }
    }

    /// Decode the count/reserved part and then the areas (bounded by the bytes present).
    pub fn decode_areas(r: &mut Reader<'_>) -> Option<Vec<SparseArea>> {
        let h = SparseMmapHeader {
            nr_areas: r.u32()?,
            reserved: r.u32()?,
        };
        let n = h.nr_areas as usize;
        if n.checked_mul(Self::AREA_SIZE)? > r.remaining() {
            return None;
        }
        (0..n)
            .map(|_| {
                Some(SparseArea {
                    offset: r.u64()?,
                    size: r.u64()?,
                })
            })
            .collect()
    }
}

/// `struct vfio_user_region_access` without data (REGION_READ / REGION_WRITE).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RegionAccessWire {
    /// Offset into the region.
    pub offset: u64,
    /// Region index.
    pub region: u32,
    /// Byte count.
    pub count: u32,
}

const _: () = assert!(std::mem::size_of::<RegionAccessWire>() == RegionAccessWire::SIZE);

impl RegionAccessWire {
    /// Encoded size.
    pub const SIZE: usize = 16;

    /// Decode from a reader.
    pub fn decode(r: &mut Reader<'_>) -> Option<Self> {
        Some(RegionAccessWire {
            offset: r.u64()?,
            region: r.u32()?,
            count: r.u32()?,
        })
    }

    /// Encode.
    pub fn encode(&self, w: &mut Writer) {
        w.u64(self.offset).u32(self.region).u32(self.count);
    }
}

/// One REGION_WRITE_MULTI entry (`VFIOUserWROne`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriteMultiEntry {
    /// Offset into the region.
    pub offset: u64,
    /// Region index.
    pub region: u32,
    /// Bytes of `data` used (1..=8).
    pub count: u32,
    /// Data, left aligned.
    pub data: [u8; WRITE_MULTI_DATA],
}

const _: () = assert!(std::mem::size_of::<WriteMultiEntry>() == WriteMultiEntry::SIZE);

impl WriteMultiEntry {
    /// Encoded size.
    pub const SIZE: usize = 24;

    /// Decode from a reader.
    pub fn decode(r: &mut Reader<'_>) -> Option<Self> {
        Some(WriteMultiEntry {
            offset: r.u64()?,
            region: r.u32()?,
            count: r.u32()?,
            data: r.bytes(WRITE_MULTI_DATA)?.try_into().ok()?,
        })
    }

    /// Encode.
    pub fn encode(&self, w: &mut Writer) {
        w.u64(self.offset)
            .u32(self.region)
            .u32(self.count)
            .bytes(&self.data);
    }
}

/// Fixed part of `struct vfio_user_region_io_fds_request` / reply.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RegionIoFdsWire {
    /// Request: client buffer size. Reply: size of the full answer.
    pub argsz: u32,
    /// Must be 0.
    pub flags: u32,
    /// Region index.
    pub index: u32,
    /// Number of sub-regions that follow (reply).
    pub count: u32,
}

const _: () = assert!(std::mem::size_of::<RegionIoFdsWire>() == RegionIoFdsWire::SIZE);

impl RegionIoFdsWire {
    /// Encoded size.
    pub const SIZE: usize = 16;
    /// Encoded size of one sub-region descriptor.
    pub const SUB_REGION_SIZE: usize = 40;

    /// Decode from a reader.
    pub fn decode(r: &mut Reader<'_>) -> Option<Self> {
        Some(RegionIoFdsWire {
            argsz: r.u32()?,
            flags: r.u32()?,
            index: r.u32()?,
            count: r.u32()?,
        })
    }

    /// Encode.
    pub fn encode(&self, w: &mut Writer) {
        w.u32(self.argsz)
            .u32(self.flags)
            .u32(self.index)
            .u32(self.count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_cap_roundtrip() {
        let areas = [
            SparseArea {
                offset: 0,
                size: 4096,
            },
            SparseArea {
                offset: 8192,
                size: 4096,
            },
        ];
        let mut w = Writer::default();
        SparseMmapHeader::encode_cap(&areas, 0, &mut w);
        let v = w.into_vec();
        assert_eq!(Some(v.len()), SparseMmapHeader::cap_len(2));
        let mut r = Reader::new(&v);
        let h = CapHeader::decode(&mut r).expect("cap header");
        assert_eq!((h.id, h.version, h.next), (CAP_ID_SPARSE_MMAP, 1, 0));
        assert_eq!(SparseMmapHeader::decode_areas(&mut r), Some(areas.to_vec()));
    }

    #[test]
    fn sparse_cap_count_larger_than_data_is_rejected() {
        let mut w = Writer::default();
        w.u32(u32::MAX).u32(0);
        let v = w.into_vec();
        assert_eq!(SparseMmapHeader::decode_areas(&mut Reader::new(&v)), None);
    }

    #[test]
    fn write_multi_entry_is_24_bytes() {
        let e = WriteMultiEntry {
            offset: 1,
            region: 2,
            count: 3,
            data: [4; 8],
        };
        let mut w = Writer::default();
        e.encode(&mut w);
        let v = w.into_vec();
        assert_eq!(v.len(), 24);
        assert_eq!(WriteMultiEntry::decode(&mut Reader::new(&v)), Some(e));
    }
}
