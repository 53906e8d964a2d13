//! Region payloads: GET_REGION_INFO (+ sparse-mmap capability), GET_REGION_IO_FDS,
//! REGION_READ / REGION_WRITE and REGION_WRITE_MULTI.

use vfio_bindings::bindings::vfio as vfio_sys;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{read_prefix, Writer};
use crate::backend::SparseArea;

/// `VFIO_REGION_INFO_CAP_SPARSE_MMAP` (the capability id field is 16 bits).
pub const CAP_ID_SPARSE_MMAP: u16 = vfio_sys::VFIO_REGION_INFO_CAP_SPARSE_MMAP as u16;
/// Most entries in one REGION_WRITE_MULTI (QEMU's `VFIO_USER_MULTI_MAX`).
pub const MAX_WRITE_MULTI: u64 = 200;
/// Data bytes per REGION_WRITE_MULTI entry (`VFIO_USER_MULTI_DATA`).
pub const WRITE_MULTI_DATA: usize = 8;

/// `struct vfio_region_info`.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
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
}

/// `struct vfio_info_cap_header`.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
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
}

/// Fixed part of `struct vfio_region_info_cap_sparse_mmap` after the cap header.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
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
        w.put(&CapHeader {
            id: CAP_ID_SPARSE_MMAP,
            version: 1,
            next,
        })
        .put(&SparseMmapHeader {
            nr_areas: u32::try_from(areas.len()).unwrap_or(u32::MAX),
            reserved: 0,
        })
        .put(areas);
    }

    /// Decode the count/reserved part at the start of `buf` and then the areas (bounded by the
    /// bytes present; bytes after the last area are ignored).
    pub fn decode_areas(buf: &[u8]) -> Option<Vec<SparseArea>> {
        let (h, rest) = read_prefix::<SparseMmapHeader>(buf)?;
        let n = h.nr_areas as usize;
        let bytes = rest.get(..n.checked_mul(Self::AREA_SIZE)?)?;
        let mut areas = vec![SparseArea { offset: 0, size: 0 }; n];
        areas.as_mut_bytes().copy_from_slice(bytes);
        Some(areas)
    }
}

/// `struct vfio_user_region_access` without data (REGION_READ / REGION_WRITE).
#[repr(C)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
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
}

/// One REGION_WRITE_MULTI entry (`VFIOUserWROne`).
#[repr(C)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
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
}

/// Fixed part of `struct vfio_user_region_io_fds_request` / reply.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
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
        let (h, rest) = read_prefix::<CapHeader>(&v).expect("cap header");
        assert_eq!((h.id, h.version, h.next), (CAP_ID_SPARSE_MMAP, 1, 0));
        assert_eq!(SparseMmapHeader::decode_areas(rest), Some(areas.to_vec()));
        // One byte short of the last area.
        assert_eq!(
            SparseMmapHeader::decode_areas(&rest[..rest.len() - 1]),
            None
        );
    }

    #[test]
    fn sparse_cap_count_larger_than_data_is_rejected() {
        let mut w = Writer::default();
        w.u32(u32::MAX).u32(0);
        let v = w.into_vec();
        assert_eq!(SparseMmapHeader::decode_areas(&v), None);
    }

    #[test]
    fn write_multi_entry_is_24_bytes() {
        let e = WriteMultiEntry {
            offset: 1,
            region: 2,
            count: 3,
            data: [4; 8],
        };
        let v = e.as_bytes();
        assert_eq!(v.len(), 24);
        assert_eq!(v[8..12], 2u32.to_ne_bytes());
        assert_eq!(&v[16..], &[4; 8]);
        assert_eq!(read_prefix::<WriteMultiEntry>(v), Some((e, &[][..])));
    }
}
