//! DEVICE_GET_IRQ_INFO and DEVICE_SET_IRQS payloads.

use super::{Reader, Writer};

/// DEVICE_SET_IRQS flag bits (`VFIO_IRQ_SET_*`).
pub mod irq_set_flags {
    /// No data.
    pub const DATA_NONE: u32 = 1 << 0;
    /// One bool byte per sub-index.
    pub const DATA_BOOL: u32 = 1 << 1;
    /// One eventfd per sub-index (SCM_RIGHTS).
    pub const DATA_EVENTFD: u32 = 1 << 2;
    /// Mask.
    pub const ACTION_MASK: u32 = 1 << 3;
    /// Unmask.
    pub const ACTION_UNMASK: u32 = 1 << 4;
    /// Trigger.
    pub const ACTION_TRIGGER: u32 = 1 << 5;
    /// Data-type bits.
    pub const DATA_MASK: u32 = DATA_NONE | DATA_BOOL | DATA_EVENTFD;
    /// Action bits.
    pub const ACTION_MASK_BITS: u32 = ACTION_MASK | ACTION_UNMASK | ACTION_TRIGGER;
}

/// `struct vfio_irq_info`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IrqInfoWire {
    /// Structure size.
    pub argsz: u32,
    /// `backend::irq_flags::*`.
    pub flags: u32,
    /// IRQ index.
    pub index: u32,
    /// Number of sub-indexes.
    pub count: u32,
}

const _: () = assert!(std::mem::size_of::<IrqInfoWire>() == IrqInfoWire::SIZE);

impl IrqInfoWire {
    /// Encoded size.
    pub const SIZE: usize = 16;

    /// Decode from a reader.
    pub fn decode(r: &mut Reader<'_>) -> Option<Self> {
        Some(IrqInfoWire {
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

/// `struct vfio_irq_set` without its data array.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IrqSetWire {
    /// Size of the structure plus data.
    pub argsz: u32,
    /// `irq_set_flags::*`.
    pub flags: u32,
    /// IRQ index.
    pub index: u32,
    /// First sub-index.
    pub start: u32,
    /// Number of sub-indexes.
    pub count: u32,
}

const _: () = assert!(std::mem::size_of::<IrqSetWire>() == IrqSetWire::SIZE);

impl IrqSetWire {
    /// Encoded size.
    pub const SIZE: usize = 20;

    /// Decode from a reader.
    pub fn decode(r: &mut Reader<'_>) -> Option<Self> {
        Some(IrqSetWire {
            argsz: r.u32()?,
            flags: r.u32()?,
            index: r.u32()?,
            start: r.u32()?,
            count: r.u32()?,
        })
    }

    /// Encode.
    pub fn encode(&self, w: &mut Writer) {
        w.u32(self.argsz)
            .u32(self.flags)
            .u32(self.index)
            .u32(self.start)
            .u32(self.count);
    }
}
