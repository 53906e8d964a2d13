//! DEVICE_GET_INFO payload.

use super::{Reader, Writer};

/// `struct vfio_device_info` as carried by DEVICE_GET_INFO.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
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
    pub const FLAG_RESET: u32 = 1 << 0;
    /// `VFIO_DEVICE_FLAGS_PCI`.
    pub const FLAG_PCI: u32 = 1 << 1;

    /// Decode from a reader.
    pub fn decode(r: &mut Reader<'_>) -> Option<Self> {
        Some(DeviceInfoWire {
            argsz: r.u32()?,
            flags: r.u32()?,
            num_regions: r.u32()?,
            num_irqs: r.u32()?,
        })
    }

    /// Encode.
    pub fn encode(&self, w: &mut Writer) {
        w.u32(self.argsz)
            .u32(self.flags)
            .u32(self.num_regions)
            .u32(self.num_irqs);
    }
}
