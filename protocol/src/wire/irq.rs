//! DEVICE_GET_IRQ_INFO and DEVICE_SET_IRQS payloads.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// DEVICE_SET_IRQS flag bits: Linux's `VFIO_IRQ_SET_*` (from `vfio-bindings`).
pub mod irq_set_flags {
    use vfio_bindings::bindings::vfio as vfio_sys;

    /// No data.
    pub const DATA_NONE: u32 = vfio_sys::VFIO_IRQ_SET_DATA_NONE;
    /// One bool byte per sub-index.
    pub const DATA_BOOL: u32 = vfio_sys::VFIO_IRQ_SET_DATA_BOOL;
    /// One eventfd per sub-index (SCM_RIGHTS).
    pub const DATA_EVENTFD: u32 = vfio_sys::VFIO_IRQ_SET_DATA_EVENTFD;
    /// Mask.
    pub const ACTION_MASK: u32 = vfio_sys::VFIO_IRQ_SET_ACTION_MASK;
    /// Unmask.
    pub const ACTION_UNMASK: u32 = vfio_sys::VFIO_IRQ_SET_ACTION_UNMASK;
    /// Trigger.
    pub const ACTION_TRIGGER: u32 = vfio_sys::VFIO_IRQ_SET_ACTION_TRIGGER;
    /// Data-type bits.
    pub const DATA_MASK: u32 = vfio_sys::VFIO_IRQ_SET_DATA_TYPE_MASK;
    /// Action bits.
    pub const ACTION_MASK_BITS: u32 = vfio_sys::VFIO_IRQ_SET_ACTION_TYPE_MASK;
}

/// `struct vfio_irq_info`.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
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
}

/// `struct vfio_irq_set` without its data array.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
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
}
