//! Checks of peer-controlled sizes, counts, indexes and ranges.
//!
//! Structural checks against negotiated limits run while decoding (see
//! [`Request::decode`](crate::message::Request::decode)), before anything is allocated from a
//! peer-supplied count. Device-dependent checks (index < number of regions, access inside the
//! region, IRQ range inside the index) run here against the backend's own answers, just before
//! the backend is called. All arithmetic is checked.

use crate::backend::{region_flags, DeviceInfo, IrqInfo};
use crate::error::{ProtocolError, Result};

/// Limits a server enforces on incoming requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest REGION_READ/WRITE data transfer we accept.
    pub max_data_xfer_size: u32,
    /// Most fds we accept on one message.
    pub max_msg_fds: u32,
    /// DMA page size: DMA_MAP iova/size (and fd offset) must be multiples of it.
    pub pgsize: u64,
}

impl Limits {
    /// Largest acceptable message: header + access descriptor + data + slack for the largest
    /// fixed-size request (REGION_WRITE_MULTI with 200 entries is 4824 bytes).
    pub fn max_message_size(&self) -> u32 {
        (self.max_data_xfer_size)
            .saturating_add(16 + 16)
            .saturating_add(8192)
    }

    /// E2BIG unless `count <= max_data_xfer_size`.
    pub fn check_xfer(&self, count: u64) -> Result<()> {
        if count > u64::from(self.max_data_xfer_size) {
            return Err(ProtocolError::TooBig {
                size: count,
                max: u64::from(self.max_data_xfer_size),
            });
        }
        Ok(())
    }

    /// DMA window check: non-empty, no overflow, aligned to `pgsize`.
    pub fn check_dma_window(&self, iova: u64, size: u64) -> Result<()> {
        if size == 0 {
            return Err(ProtocolError::invalid("DMA window of size 0"));
        }
        iova.checked_add(size)
            .ok_or_else(|| ProtocolError::invalid("DMA window overflows the address space"))?;
        if self.pgsize > 1
            && (!iova.is_multiple_of(self.pgsize) || !size.is_multiple_of(self.pgsize))
        {
            return Err(ProtocolError::invalid(format!(
                "DMA window {iova:#x}+{size:#x} not aligned to {:#x}",
                self.pgsize
            )));
        }
        Ok(())
    }
}

/// EINVAL unless `index < info.num_regions`.
pub fn check_region_index(info: &DeviceInfo, index: u32) -> Result<()> {
    if index >= info.num_regions {
        return Err(ProtocolError::invalid(format!(
            "region {index} >= num_regions {}",
            info.num_regions
        )));
    }
    Ok(())
}

/// EINVAL unless `index < info.num_irqs`.
pub fn check_irq_index(info: &DeviceInfo, index: u32) -> Result<()> {
    if index >= info.num_irqs {
        return Err(ProtocolError::invalid(format!(
            "irq index {index} >= num_irqs {}",
            info.num_irqs
        )));
    }
    Ok(())
}

/// EINVAL unless `[offset, offset + count)` lies inside a region of `size` bytes with the
/// needed access flag.
pub fn check_region_range(
    region: u32,
    flags: u32,
    size: u64,
    offset: u64,
    count: u64,
    write: bool,
) -> Result<()> {
    let need = if write {
        region_flags::WRITE
    } else {
        region_flags::READ
    };
    if flags & need == 0 {
        return Err(ProtocolError::invalid(format!(
            "region {region} is not {}",
            if write { "writable" } else { "readable" }
        )));
    }
    let end = offset
        .checked_add(count)
        .ok_or_else(|| ProtocolError::invalid("region access overflows"))?;
    if end > size {
        return Err(ProtocolError::invalid(format!(
            "access {offset:#x}+{count:#x} beyond region {region} of size {size:#x}"
        )));
    }
    Ok(())
}

/// EINVAL unless `start..start + count` fits in the index (`count == 0` is the disable form
/// and must have `start == 0`, which the decoder already enforced).
pub fn check_irq_range(index: u32, info: &IrqInfo, start: u32, count: u32) -> Result<()> {
    if count == 0 {
        return Ok(());
    }
    let end = start
        .checked_add(count)
        .ok_or_else(|| ProtocolError::invalid("irq range overflows"))?;
    if end > info.count {
        return Err(ProtocolError::invalid(format!(
            "irqs {start}..{end} beyond index {index} with {} vectors",
            info.count
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits {
        max_data_xfer_size: 1 << 20,
        max_msg_fds: 16,
        pgsize: 4096,
    };

    #[test]
    fn rejects_overflowing_region_access() {
        let rw = region_flags::READ | region_flags::WRITE;
        assert!(check_region_range(0, rw, 4096, 4092, 4, false).is_ok());
        assert!(check_region_range(0, rw, 4096, 4093, 4, false).is_err());
        assert!(check_region_range(0, rw, u64::MAX, u64::MAX, 1, true).is_err());
        assert!(check_region_range(0, region_flags::READ, 4096, 0, 4, true).is_err());
        assert!(check_region_range(0, region_flags::WRITE, 4096, 0, 4, false).is_err());
    }

    #[test]
    fn rejects_bad_dma_windows() {
        assert!(L.check_dma_window(0, 4096).is_ok());
        assert!(L.check_dma_window(0, 0).is_err());
        assert!(L.check_dma_window(4096, 100).is_err());
        assert!(L.check_dma_window(u64::MAX - 4095, 8192).is_err());
    }

    #[test]
    fn xfer_limit_is_e2big() {
        assert!(L.check_xfer(1 << 20).is_ok());
        assert_eq!(
            L.check_xfer((1 << 20) + 1).map_err(|e| e.errno()),
            Err(libc::E2BIG)
        );
    }

    #[test]
    fn irq_ranges() {
        let i = IrqInfo { flags: 0, count: 4 };
        assert!(check_irq_range(2, &i, 0, 4).is_ok());
        assert!(check_irq_range(2, &i, 3, 2).is_err());
        assert!(check_irq_range(2, &i, u32::MAX, 2).is_err());
        assert!(check_irq_range(2, &i, 0, 0).is_ok());
    }

    #[test]
    fn indexes() {
        let d = DeviceInfo {
            reset: true,
            num_regions: 9,
            num_irqs: 5,
        };
        assert!(check_region_index(&d, 8).is_ok());
        assert!(check_region_index(&d, 9).is_err());
        assert!(check_irq_index(&d, 5).is_err());
    }
}
