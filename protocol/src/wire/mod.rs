//! Plain wire structures of vfio-user and their byte encodings.
//!
//! Every structure is `#[repr(C)]` plain data with a compile-time size assertion that matches the
//! C layout in QEMU's `hw/vfio-user/protocol.h` / the spec. Encoding and decoding go field by
//! field through [`Reader`] and [`Writer`] in host byte order (the spec: "all data is in the
//! endianness of the host system"); there are no transmutes. Decoders only check *structure*
//! (lengths, reserved bits); limits and device-dependent checks live in
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

/// A cursor over received bytes; every read is bounds checked and returns `None` past the end.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Start reading `buf` at offset 0.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Take the next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let out = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(out)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.bytes(N)?.try_into().ok()
    }

    /// Next host-endian `u8`.
    pub fn u8(&mut self) -> Option<u8> {
        Some(self.array::<1>()?[0])
    }

    /// Next host-endian `u16`.
    pub fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_ne_bytes)
    }

    /// Next host-endian `u32`.
    pub fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_ne_bytes)
    }

    /// Next host-endian `u64`.
    pub fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_ne_bytes)
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// The unread tail.
    pub fn rest(&self) -> &'a [u8] {
        self.buf.get(self.pos..).unwrap_or(&[])
    }
}

/// Appends host-endian fields to a byte vector.
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

    /// Append a `u8`.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    /// Append a host-endian `u16`.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_ne_bytes());
        self
    }

    /// Append a host-endian `u32`.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_ne_bytes());
        self
    }

    /// Append a host-endian `u64`.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_ne_bytes());
        self
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
    fn reader_stops_at_end() {
        let mut r = Reader::new(&[1, 0, 0, 0, 2]);
        assert_eq!(r.u32(), Some(u32::from_ne_bytes([1, 0, 0, 0])));
        assert_eq!(r.u16(), None);
        assert_eq!(r.u8(), Some(2));
        assert_eq!(r.u8(), None);
        assert_eq!(r.bytes(usize::MAX), None);
    }

    #[test]
    fn writer_roundtrip() {
        let mut w = Writer::default();
        w.u16(7).u32(8).u64(9).bytes(&[1, 2]).zeros(2);
        let v = w.into_vec();
        assert_eq!(v.len(), 18);
        let mut r = Reader::new(&v);
        assert_eq!((r.u16(), r.u32(), r.u64()), (Some(7), Some(8), Some(9)));
        assert_eq!(r.rest(), &[1, 2, 0, 0]);
    }
}
