//! Plain wire structures of vfio-user and their byte views.
//!
//! Every fixed-size structure is `#[repr(C)]` plain data deriving zerocopy's `FromBytes`,
//! `IntoBytes`, `KnownLayout` and `Immutable`: its bytes are its fields in the C layout of QEMU's
//! `hw/vfio-user/protocol.h` / the spec, and the derives prove at compile time that it has no
//! padding and that every bit pattern is a valid value. Next to each structure a `const`
//! assertion pins its size to the spec's (`SIZE`). Fields are plain integers in host byte order:
//! the spec says "all data is in the endianness of the host system" (QEMU does not swap either).
//!
//! Decoding copies a structure out of the front of a received body ([`read_prefix`], no
//! alignment needed); encoding appends its bytes ([`Writer::put`]). Decoders only check
//! *structure* (lengths, reserved bits); limits and device-dependent checks live in
//! [`validate`](crate::validate).

mod device;
mod dma;
mod header;
mod irq;
mod region;
mod version;

pub use device::DeviceInfoWire;
pub use dma::{dma_map_flags, dma_unmap_flags, DmaLayout, DmaMapWire, DmaRwHeader, DmaUnmapWire};
pub use header::{flags, Command, Header};
pub use irq::{irq_set_flags, IrqInfoWire, IrqSetWire};
pub use region::{
    CapHeader, RegionAccessWire, RegionInfoWire, RegionIoFdsWire, SparseMmapHeader,
    WriteMultiEntry, CAP_ID_SPARSE_MMAP, MAX_WRITE_MULTI, WRITE_MULTI_DATA,
};
pub use version::{Capabilities, VersionWire, DEFAULT_MAX_DATA_XFER_SIZE, DEFAULT_MAX_MSG_FDS};

use zerocopy::{FromBytes, Immutable, IntoBytes};

/// Copy a `T` out of the first `size_of::<T>()` bytes of `buf`; returns it and the bytes after
/// it, or `None` when `buf` is shorter.
pub fn read_prefix<T: FromBytes>(buf: &[u8]) -> Option<(T, &[u8])> {
    T::read_from_prefix(buf).ok()
}

/// Builds a message body by appending the bytes of wire structures and integers.
#[derive(Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// An empty writer with room for `cap` bytes.
    pub fn with_capacity(cap: usize) -> Self {
        Writer {
            buf: Vec::with_capacity(cap),
        }
    }

    /// Append the bytes of a wire structure (or integer, or slice of either).
    pub fn put<T: IntoBytes + Immutable + ?Sized>(&mut self, v: &T) -> &mut Self {
        self.buf.extend_from_slice(v.as_bytes());
        self
    }

    /// Append a `u8`.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.put(&v)
    }

    /// Append a host-endian `u16`.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.put(&v)
    }

    /// Append a host-endian `u32`.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.put(&v)
    }

    /// Append a host-endian `u64`.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.put(&v)
    }

    /// Append raw bytes.
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(v);
        self
    }

    /// Append `n` zero bytes.
    pub fn zeros(&mut self, n: usize) -> &mut Self {
        self.buf.resize(self.buf.len().saturating_add(n), 0);
        self
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True if nothing was written.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The encoded bytes.
    pub fn into_vec(self) -> Vec<u8> {
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_prefix_stops_at_end() {
        let b = [1u8, 0, 0, 0, 2];
        let (v, rest) = read_prefix::<u32>(&b).expect("4 bytes");
        assert_eq!(v, u32::from_ne_bytes([1, 0, 0, 0]));
        assert_eq!(rest, &[2]);
        assert_eq!(read_prefix::<u16>(rest), None);
        assert_eq!(read_prefix::<[u8; 6]>(&b), None);
    }

    #[test]
    fn writer_roundtrip() {
        let mut w = Writer::default();
        w.u16(7).u32(8).u64(9).bytes(&[1, 2]).zeros(2);
        let v = w.into_vec();
        assert_eq!(v.len(), 18);
        let (a, r) = read_prefix::<u16>(&v).expect("u16");
        let (b, r) = read_prefix::<u32>(r).expect("u32");
        let (c, r) = read_prefix::<u64>(r).expect("u64");
        assert_eq!((a, b, c), (7, 8, 9));
        assert_eq!(r, &[1, 2, 0, 0]);
    }
}
