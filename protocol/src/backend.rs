//! The seam between the protocol and a device model.
//!
//! The [`Server`](crate::server) decodes and validates every message, then calls one method of
//! [`DeviceBackend`] with typed, already-checked arguments. The backend never sees raw bytes,
//! never sees the socket, and reports failures as a [`BackendError`], which the server turns into
//! an errno in exactly one place (the reply path).
//!
//! Region and IRQ indexes follow Linux VFIO PCI numbering (`VFIO_PCI_*_REGION_INDEX`,
//! `VFIO_PCI_*_IRQ_INDEX`): 0-5 BARs, 6 ROM, 7 config space, 8 VGA; IRQs 0 INTx, 1 MSI, 2 MSI-X,
//! 3 ERR, 4 REQ.

use std::os::fd::{BorrowedFd, OwnedFd};

/// Region flags reported in DEVICE_GET_REGION_INFO (`VFIO_REGION_INFO_FLAG_*`, from
/// `vfio-bindings`).
pub mod region_flags {
    use vfio_bindings::bindings::vfio as vfio_sys;

    /// Region supports REGION_READ.
    pub const READ: u32 = vfio_sys::VFIO_REGION_INFO_FLAG_READ;
    /// Region supports REGION_WRITE.
    pub const WRITE: u32 = vfio_sys::VFIO_REGION_INFO_FLAG_WRITE;
    /// Region may be mmapped through the fd sent with the reply.
    pub const MMAP: u32 = vfio_sys::VFIO_REGION_INFO_FLAG_MMAP;
    /// Reply carries a capability chain (set by the server, never by the backend).
    pub const CAPS: u32 = vfio_sys::VFIO_REGION_INFO_FLAG_CAPS;
}

/// IRQ flags reported in DEVICE_GET_IRQ_INFO (`VFIO_IRQ_INFO_*`, from `vfio-bindings`).
pub mod irq_flags {
    use vfio_bindings::bindings::vfio as vfio_sys;

    /// Interrupts are signalled through eventfds.
    pub const EVENTFD: u32 = vfio_sys::VFIO_IRQ_INFO_EVENTFD;
    /// Sub-indexes can be masked.
    pub const MASKABLE: u32 = vfio_sys::VFIO_IRQ_INFO_MASKABLE;
    /// Triggering masks automatically (level-triggered INTx).
    pub const AUTOMASKED: u32 = vfio_sys::VFIO_IRQ_INFO_AUTOMASKED;
    /// The number of sub-indexes cannot be changed after setup.
    pub const NORESIZE: u32 = vfio_sys::VFIO_IRQ_INFO_NORESIZE;
}

/// DEVICE_GET_INFO answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Device supports DEVICE_RESET.
    pub reset: bool,
    /// Number of regions (>= 8 for a PCI device, <= 100 for QEMU).
    pub num_regions: u32,
    /// Number of IRQ indexes (>= 3 for a PCI device, <= 50 for QEMU).
    pub num_irqs: u32,
}

/// One mmappable window inside a region (sparse-mmap capability entry), relative to the region.
/// Also the entry's wire layout (`struct vfio_region_sparse_mmap_area`).
#[repr(C)]
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    zerocopy::FromBytes,
    zerocopy::IntoBytes,
    zerocopy::KnownLayout,
    zerocopy::Immutable,
)]
pub struct SparseArea {
    /// Offset from the start of the region.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
}

/// How a region can be mmapped by the client.
#[derive(Debug)]
pub struct RegionMmap<'a> {
    /// The file to mmap (sent with SCM_RIGHTS in the reply; the server duplicates it).
    pub fd: BorrowedFd<'a>,
    /// Offset of the region's byte 0 inside `fd`.
    pub file_offset: u64,
    /// Mmappable windows. Empty means the whole region is mmappable (no sparse capability sent).
    pub sparse_areas: Vec<SparseArea>,
}

/// DEVICE_GET_REGION_INFO answer for one region.
#[derive(Debug)]
pub struct RegionInfo<'a> {
    /// `region_flags::READ | WRITE | MMAP` (CAPS is added by the server when it sends caps).
    pub flags: u32,
    /// Region size in bytes (0 = region absent).
    pub size: u64,
    /// Present when `flags` contains MMAP.
    pub mmap: Option<RegionMmap<'a>>,
}

/// DEVICE_GET_IRQ_INFO answer for one IRQ index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IrqInfo {
    /// `irq_flags::*`.
    pub flags: u32,
    /// Number of sub-indexes (vectors); 0 = not supported.
    pub count: u32,
}

/// Access permissions of a DMA mapping, as granted by the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DmaProt {
    /// The device may read.
    pub read: bool,
    /// The device may write.
    pub write: bool,
}

/// A validated DMA_MAP request. `iova + size` does not overflow; `size > 0`; page aligned to the
/// negotiated page size.
#[derive(Debug)]
pub struct DmaMapping {
    /// Start of the window in the device's DMA address space (guest physical address under QEMU
    /// without a vIOMMU).
    pub iova: u64,
    /// Length in bytes.
    pub size: u64,
    /// Offset of `iova` inside `fd`.
    pub file_offset: u64,
    /// Permissions.
    pub prot: DmaProt,
    /// The memory; `None` means the window is reachable only with DMA_READ/DMA_WRITE messages.
    pub fd: Option<OwnedFd>,
}

/// What a DMA_UNMAP asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmaUnmap {
    /// Remove exactly the mapping `[iova, iova + size)`.
    Range {
        /// Start.
        iova: u64,
        /// Length.
        size: u64,
    },
    /// Remove every mapping (`VFIO_DMA_UNMAP_FLAG_ALL`).
    All,
}

/// The action of a DEVICE_SET_IRQS request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqAction {
    /// `VFIO_IRQ_SET_ACTION_MASK`.
    Mask,
    /// `VFIO_IRQ_SET_ACTION_UNMASK`.
    Unmask,
    /// `VFIO_IRQ_SET_ACTION_TRIGGER`.
    Trigger,
}

/// The data of a DEVICE_SET_IRQS request.
#[derive(Debug)]
pub enum IrqData {
    /// `VFIO_IRQ_SET_DATA_NONE`. With `Trigger` and `count == 0` it disables the whole index;
    /// otherwise it applies the action to every sub-index in the range (e.g. a software trigger).
    None,
    /// `VFIO_IRQ_SET_DATA_BOOL`: one flag per sub-index in `start..start + count`.
    Bool(Vec<bool>),
    /// `VFIO_IRQ_SET_DATA_EVENTFD`: one entry per sub-index in `start..start + count`; `None`
    /// de-assigns that sub-index (the message carried no fds, or the spec's -1).
    Eventfds(Vec<Option<OwnedFd>>),
}

/// A validated DEVICE_SET_IRQS request: `index < num_irqs`, `start + count <= IrqInfo::count`
/// (except the disable form `start == 0, count == 0`), data length equals `count`.
#[derive(Debug)]
pub struct IrqSet {
    /// IRQ index (0 INTx, 1 MSI, 2 MSI-X, 3 ERR, 4 REQ).
    pub index: u32,
    /// First sub-index.
    pub start: u32,
    /// Number of sub-indexes.
    pub count: u32,
    /// What to do.
    pub action: IrqAction,
    /// With what.
    pub data: IrqData,
}

/// Why a backend refused a request. Mapped to an errno by [`BackendError::errno`], the one place
/// the protocol crate turns a backend failure into a wire error.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum BackendError {
    /// The request is malformed for this device (bad index, offset, size, flags): `EINVAL`.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// The device does not implement this: `ENOTSUP`.
    #[error("not supported: {0}")]
    NotSupported(String),
    /// The range overlaps an existing mapping: `EEXIST`.
    #[error("already exists: {0}")]
    Exists(String),
    /// No such mapping or object: `ENOENT`.
    #[error("not found: {0}")]
    NotFound(String),
    /// An access outside what the device exposes: `EFAULT`.
    #[error("bad address: {0}")]
    Fault(String),
    /// The device is busy (e.g. DMA in flight): `EBUSY`.
    #[error("busy: {0}")]
    Busy(String),
    /// Out of resources (too many mappings, cannot mmap): `ENOMEM`.
    #[error("out of resources: {0}")]
    NoMemory(String),
    /// An I/O error in the device or its storage: `EIO`.
    #[error("I/O error: {0}")]
    Io(String),
    /// A configured limit on what one client may make the device hold is reached (DMA windows
    /// with fds, their bytes): `ENOSPC`, like `max_dma_maps`.
    #[error("limit reached: {0}")]
    NoSpace(String),
}

impl BackendError {
    /// The errno sent to the client for this error.
    pub fn errno(&self) -> i32 {
        match self {
            BackendError::Invalid(_) => libc::EINVAL,
            BackendError::NotSupported(_) => libc::ENOTSUP,
            BackendError::Exists(_) => libc::EEXIST,
            BackendError::NotFound(_) => libc::ENOENT,
            BackendError::Fault(_) => libc::EFAULT,
            BackendError::Busy(_) => libc::EBUSY,
            BackendError::NoMemory(_) => libc::ENOMEM,
            BackendError::Io(_) => libc::EIO,
            BackendError::NoSpace(_) => libc::ENOSPC,
        }
    }
}

/// Result type of backend calls.
pub type BackendResult<T> = Result<T, BackendError>;

/// A device model as the vfio-user server sees it.
///
/// All arguments are validated by the server against the protocol and against the answers of
/// `device_info`, `region_info` and `irq_info` before a method is called: region accesses lie
/// inside the region (`offset + len <= size`, `len <= max_data_xfer_size`), IRQ ranges inside the
/// index's count, DMA windows page aligned and non-overflowing. Backends still validate what
/// only they know (e.g. access width on a register).
pub trait DeviceBackend {
    /// DEVICE_GET_INFO.
    fn device_info(&self) -> DeviceInfo;
    /// DEVICE_GET_REGION_INFO for `index < num_regions`.
    fn region_info(&self, index: u32) -> BackendResult<RegionInfo<'_>>;
    /// The flags and size of region `index < num_regions`, as `region_info` reports them.
    ///
    /// The server calls this on every REGION_READ/WRITE to bound the access, so it is on the MMIO
    /// hot path; the default builds the whole [`RegionInfo`] (which may allocate its sparse
    /// areas), and backends should override it with a cheap answer.
    fn region_flags_size(&self, index: u32) -> BackendResult<(u32, u64)> {
        self.region_info(index).map(|ri| (ri.flags, ri.size))
    }
    /// DEVICE_GET_IRQ_INFO for `index < num_irqs`.
    fn irq_info(&self, index: u32) -> BackendResult<IrqInfo>;
    /// REGION_READ: fill `data` from `index` at `offset` (range already checked against the size).
    fn region_read(&mut self, index: u32, offset: u64, data: &mut [u8]) -> BackendResult<()>;
    /// REGION_WRITE (also each entry of REGION_WRITE_MULTI).
    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> BackendResult<()>;
    /// DMA_MAP.
    fn dma_map(&mut self, mapping: DmaMapping) -> BackendResult<()>;
    /// DMA_UNMAP. Must not return until the device holds no reference to the memory.
    fn dma_unmap(&mut self, unmap: DmaUnmap) -> BackendResult<()>;
    /// DEVICE_SET_IRQS.
    fn set_irqs(&mut self, irqs: IrqSet) -> BackendResult<()>;
    /// DEVICE_RESET.
    fn reset(&mut self) -> BackendResult<()>;
    /// The client went away (EOF, error or protocol violation): drop every DMA mapping and IRQ fd
    /// it handed over. Device state is kept (the spec's rule), so a re-plugged client finds it.
    fn client_disconnected(&mut self);
}
