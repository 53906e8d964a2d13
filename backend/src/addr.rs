//! Typed addresses: an [`Iova`] is in the device's DMA address space, a [`VramOffset`] is a byte
//! offset into VRAM. They never mix: a function that takes one cannot be handed the other.

use std::fmt;

/// An address in the device's DMA address space (a guest physical address under QEMU without a
/// vIOMMU).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Iova(pub u64);

impl Iova {
    /// The raw value.
    pub fn raw(self) -> u64 {
        self.0
    }

    /// `self + len`, or `None` on overflow.
    pub fn checked_add(self, len: u64) -> Option<Iova> {
        self.0.checked_add(len).map(Iova)
    }
}

impl fmt::Display for Iova {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "iova {:#x}", self.0)
    }
}

/// A byte offset into VRAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct VramOffset(pub u64);

impl VramOffset {
    /// The raw value.
    pub fn raw(self) -> u64 {
        self.0
    }

    /// `self + len`, or `None` on overflow.
    pub fn checked_add(self, len: u64) -> Option<VramOffset> {
        self.0.checked_add(len).map(VramOffset)
    }
}

impl fmt::Display for VramOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "vram offset {:#x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_add_rejects_overflow() {
        assert_eq!(Iova(u64::MAX).checked_add(1), None);
        assert_eq!(Iova(1).checked_add(2), Some(Iova(3)));
        assert_eq!(VramOffset(u64::MAX - 1).checked_add(2), None);
        assert_eq!(VramOffset(4).checked_add(4), Some(VramOffset(8)));
        assert_eq!(Iova(0x1000).to_string(), "iova 0x1000");
    }
}
