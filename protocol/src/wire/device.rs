//! DEVICE_GET_INFO payload.

use vfio_bindings::bindings::vfio as vfio_sys;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `struct vfio_device_info` as carried by DEVICE_GET_INFO.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct DeviceInfoWire {
    /// Size of the structure the client can receive (request) / the reply size (reply).
    pub argsz: u32,
    /// `RESET | PCI`.
    pub flags: u32,
    /// Number of regions.
    pub num_regions: u32,
    /// Number of IRQ indexes.
    pub num_irqs: u32,
}

const _: () = assert!(std::mem::size_of::<DeviceInfoWire>() == DeviceInfoWire::SIZE);

impl DeviceInfoWire {
    /// Encoded size.
    pub const SIZE: usize = 16;
    /// `VFIO_DEVICE_FLAGS_RESET`.
    pub const FLAG_RESET: u32 = vfio_sys::VFIO_DEVICE_FLAGS_RESET;
    /// `VFIO_DEVICE_FLAGS_PCI`.
    pub const FLAG_PCI: u32 = vfio_sys::VFIO_DEVICE_FLAGS_PCI;
}
