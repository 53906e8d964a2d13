//! VRAM storage: one shared file mapped into the server and handed to the client for the BAR.
//!
//! Invariants:
//! - The file is exactly `size` bytes long for the life of the [`Vram`]. For the default anonymous
//!   memfd this is enforced by seals (`F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`), so a client
//!   holding the fd cannot truncate it under the server's mapping (which would turn device-side
//!   accesses into SIGBUS). A user-supplied file (`--vram-file`) cannot be sealed; its owner must
//!   not truncate it while the server runs.
//! - The server's mapping is `MAP_SHARED`: bytes written by the guest through its BAR mapping of
//!   the same file are what [`Vram::read`] returns, and vice versa.
//! - The file is sized with `ftruncate`, never written at creation: an untouched VRAM of any size
//!   costs no memory (pages are allocated on first write).

use std::ffi::CStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::sync::atomic::Ordering;

use rustix::fs::{MemfdFlags, SealFlags};
use vm_memory::mmap::MmapRegionError;

use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryError, GuestMemoryRegion, GuestRegionMmap,
    MemoryRegionAddress, MmapRegion, VolatileSlice,
};

use crate::addr::VramOffset;

/// Smallest VRAM size accepted (1 MiB, the smallest Resizable BAR size).
pub const MIN_VRAM_SIZE: u64 = 1 << 20;

/// Errors of VRAM creation and access.
#[derive(Debug, thiserror::Error)]
pub enum VramError {
    /// An access outside `[0, size)`.
    #[error("VRAM access of {len} bytes at {offset} is outside the {size:#x}-byte VRAM")]
    OutOfRange {
        /// Start of the access.
        offset: VramOffset,
        /// Length of the access.
        len: usize,
        /// VRAM size.
        size: u64,
    },
    /// The access failed inside vm-memory.
    #[error("VRAM access failed: {0}")]
    Access(#[source] GuestMemoryError),
    /// `memfd_create` failed.
    #[error("cannot create the VRAM memfd: {0}")]
    Create(#[source] io::Error),
    /// The backing file could not be opened.
    #[error("cannot open VRAM file {path}: {source}")]
    Open {
        /// The path given.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The backing file could not be sized.
    #[error("cannot size the VRAM file to {size:#x} bytes: {source}")]
    Resize {
        /// Requested size.
        size: u64,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Sealing the memfd failed.
    #[error("cannot seal the VRAM memfd: {0}")]
    Seal(#[source] io::Error),
    /// The server-side mapping failed.
    #[error("cannot map VRAM: {0}")]
    Map(#[source] MmapRegionError),
    /// An access that must be naturally aligned is not.
    #[error("misaligned VRAM access at {0}")]
    Misaligned(VramOffset),
    /// Size zero, below 1 MiB, not a power of two, or too large for this host.
    #[error("invalid VRAM size {0:#x}: must be a power of two >= 1 MiB")]
    InvalidSize(u64),
}

/// How to create a [`Vram`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VramOptions {
    /// Size in bytes: a power of two, at least [`MIN_VRAM_SIZE`].
    pub size: u64,
    /// Back VRAM with this file (created if missing, e.g. on hugetlbfs) instead of a memfd.
    pub file: Option<PathBuf>,
}

impl VramOptions {
    /// A memfd-backed VRAM of `size` bytes.
    pub fn memfd(size: u64) -> Self {
        VramOptions { size, file: None }
    }
}

/// The GPU's local memory. See the module documentation for the invariants.
#[derive(Debug)]
pub struct Vram {
    file: Arc<File>,
    region: GuestRegionMmap<()>,
    size: u64,
    path: Option<PathBuf>,
}

impl Vram {
    /// Creates VRAM as described by `options`.
    pub fn new(options: &VramOptions) -> Result<Self, VramError> {
        let size = options.size;
        if size < MIN_VRAM_SIZE || !size.is_power_of_two() {
            return Err(VramError::InvalidSize(size));
        }
        let map_len = usize::try_from(size).map_err(|_| VramError::InvalidSize(size))?;
        let file = match &options.file {
            None => create_sealed_memfd(c"vugpu-vram", size)?,
            Some(path) => open_sized_file(path, size)?,
        };
        let file = Arc::new(file);
        let mapping = MmapRegion::<()>::build(
            Some(FileOffset::from_arc(file.clone(), 0)),
            map_len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_NORESERVE,
        )
        .map_err(VramError::Map)?;
        let region = GuestRegionMmap::new(mapping, GuestAddress(0)).ok_or(
            // Only fails when base + size overflows, which `size <= usize::MAX` excludes.
            VramError::InvalidSize(size),
        )?;
        Ok(Vram {
            file,
            region,
            size,
            path: options.file.clone(),
        })
    }

    /// VRAM size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The backing file, for the client's BAR mmap (offset 0 of the file is VRAM offset 0).
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// The backing file path, when VRAM is file-backed.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Bytes of the backing file that occupy memory (allocated blocks), which stays near zero for
    /// untouched VRAM.
    pub fn allocated_bytes(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.blocks().saturating_mul(512))
    }

    fn check(&self, offset: VramOffset, len: usize) -> Result<MemoryRegionAddress, VramError> {
        let end = u64::try_from(len)
            .ok()
            .and_then(|l| offset.checked_add(l))
            .ok_or_else(|| out_of_range(offset, len, self.size))?;
        if end.raw() > self.size {
            return Err(out_of_range(offset, len, self.size));
        }
        Ok(MemoryRegionAddress(offset.raw()))
    }

    /// Reads `buf.len()` bytes at `offset` (the device's view of VRAM).
    pub fn read(&self, offset: VramOffset, buf: &mut [u8]) -> Result<(), VramError> {
        let addr = self.check(offset, buf.len())?;
        self.region.read_slice(buf, addr).map_err(VramError::Access)
    }

    /// Writes `buf` at `offset` (the device's view of VRAM).
    pub fn write(&self, offset: VramOffset, buf: &[u8]) -> Result<(), VramError> {
        let addr = self.check(offset, buf.len())?;
        self.region
            .write_slice(buf, addr)
            .map_err(VramError::Access)
    }

    /// The bytes `[offset, offset + len)` for direct (volatile, bounds-checked) access, e.g. a
    /// copy between VRAM and a DMA window without a bounce buffer.
    pub fn slice(
        &self,
        offset: VramOffset,
        len: usize,
    ) -> Result<VolatileSlice<'_, ()>, VramError> {
        let addr = self.check(offset, len)?;
        self.region.get_slice(addr, len).map_err(VramError::Access)
    }

    /// Stores `value` little-endian at the 8-byte aligned `offset` with one atomic 8-byte store
    /// (release ordering): a guest reading through the BAR never sees it torn.
    pub fn store_u64(&self, offset: VramOffset, value: u64) -> Result<(), VramError> {
        if !offset.raw().is_multiple_of(8) {
            return Err(VramError::Misaligned(offset));
        }
        let addr = self.check(offset, 8)?;
        self.region
            .store(value.to_le(), addr, Ordering::Release)
            .map_err(VramError::Access)
    }

    /// Reads a little-endian dword at `offset`.
    pub fn read_u32(&self, offset: VramOffset) -> Result<u32, VramError> {
        let mut b = [0u8; 4];
        self.read(offset, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Writes a little-endian dword at `offset`.
    pub fn write_u32(&self, offset: VramOffset, value: u32) -> Result<(), VramError> {
        self.write(offset, &value.to_le_bytes())
    }
}

fn out_of_range(offset: VramOffset, len: usize, size: u64) -> VramError {
    VramError::OutOfRange { offset, len, size }
}

pub(crate) fn create_sealed_memfd(name: &CStr, size: u64) -> Result<File, VramError> {
    let flags = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING;
    let file =
        File::from(rustix::fs::memfd_create(name, flags).map_err(|e| VramError::Create(e.into()))?);
    file.set_len(size)
        .map_err(|source| VramError::Resize { size, source })?;
    rustix::fs::fcntl_add_seals(&file, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
        .map_err(|e| VramError::Seal(e.into()))?;
    Ok(file)
}

fn open_sized_file(path: &Path, size: u64) -> Result<File, VramError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|source| VramError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    let meta = file.metadata().map_err(|source| VramError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.is_file() {
        return Err(VramError::Open {
            path: path.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"),
        });
    }
    if meta.len() != size {
        file.set_len(size)
            .map_err(|source| VramError::Resize { size, source })?;
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    const MIB: u64 = 1 << 20;

    fn rss_bytes() -> u64 {
        let mut s = String::new();
        File::open("/proc/self/statm")
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        let pages: u64 = s.split_whitespace().nth(1).unwrap().parse().unwrap();
        pages * 4096
    }

    #[test]
    fn slice_and_store_u64() {
        let vram = Vram::new(&VramOptions::memfd(MIN_VRAM_SIZE)).unwrap();
        let s = vram.slice(VramOffset(16), 8).unwrap();
        s.write_obj(0x55aa_u16, 2).unwrap();
        assert_eq!(vram.read_u32(VramOffset(16)).unwrap(), 0x55aa_0000);
        assert!(matches!(
            vram.slice(VramOffset(MIN_VRAM_SIZE - 4), 8),
            Err(VramError::OutOfRange { .. })
        ));
        vram.store_u64(VramOffset(MIN_VRAM_SIZE - 8), u64::MAX - 1)
            .unwrap();
        let mut b = [0u8; 8];
        vram.read(VramOffset(MIN_VRAM_SIZE - 8), &mut b).unwrap();
        assert_eq!(u64::from_le_bytes(b), u64::MAX - 1);
        assert!(matches!(
            vram.store_u64(VramOffset(4), 1),
            Err(VramError::Misaligned(_))
        ));
        assert!(matches!(
            vram.store_u64(VramOffset(MIN_VRAM_SIZE), 1),
            Err(VramError::OutOfRange { .. })
        ));
    }

    #[test]
    fn rejects_bad_sizes() {
        for size in [0, 4096, MIB - 1, 3 * MIB, MIB + 4096] {
            assert!(
                matches!(
                    Vram::new(&VramOptions::memfd(size)),
                    Err(VramError::InvalidSize(s)) if s == size
                ),
                "size {size:#x}"
            );
        }
    }

    #[test]
    fn read_write_round_trip_and_bounds() {
        let vram = Vram::new(&VramOptions::memfd(MIB)).unwrap();
        assert_eq!(vram.size(), MIB);
        vram.write(VramOffset(0x1000), b"hello").unwrap();
        let mut buf = [0u8; 5];
        vram.read(VramOffset(0x1000), &mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        vram.write_u32(VramOffset(MIB - 4), 0xdead_beef).unwrap();
        assert_eq!(vram.read_u32(VramOffset(MIB - 4)).unwrap(), 0xdead_beef);
    }

    #[test]
    fn rejects_access_past_end() {
        let vram = Vram::new(&VramOptions::memfd(MIB)).unwrap();
        let mut buf = [0u8; 8];
        assert!(matches!(
            vram.read(VramOffset(MIB - 4), &mut buf),
            Err(VramError::OutOfRange { .. })
        ));
        assert!(matches!(
            vram.write(VramOffset(MIB), &[1]),
            Err(VramError::OutOfRange { .. })
        ));
        assert!(matches!(
            vram.write(VramOffset(u64::MAX), &[1, 2]),
            Err(VramError::OutOfRange { .. })
        ));
        assert!(matches!(
            vram.read_u32(VramOffset(u64::MAX - 1)),
            Err(VramError::OutOfRange { .. })
        ));
        // Zero-length access at the end is fine; one byte past is not.
        vram.read(VramOffset(MIB), &mut []).unwrap();
    }

    #[test]
    fn client_mapping_shares_bytes() {
        let vram = Vram::new(&VramOptions::memfd(MIB)).unwrap();
        // Map the fd as a client would for the BAR, independently of the server mapping.
        let dup = vram.as_fd().try_clone_to_owned().unwrap();
        let client =
            MmapRegion::<()>::from_file(FileOffset::new(File::from(dup), 0), MIB as usize).unwrap();
        let client = GuestRegionMmap::new(client, GuestAddress(0)).unwrap();
        client
            .write_slice(&[1, 2, 3, 4], MemoryRegionAddress(0x2000))
            .unwrap();
        assert_eq!(vram.read_u32(VramOffset(0x2000)).unwrap(), 0x0403_0201);
        vram.write_u32(VramOffset(0x3000), 0x1122_3344).unwrap();
        let mut b = [0u8; 4];
        client
            .read_slice(&mut b, MemoryRegionAddress(0x3000))
            .unwrap();
        assert_eq!(u32::from_le_bytes(b), 0x1122_3344);
    }

    #[test]
    fn memfd_is_sealed_against_resize() {
        let vram = Vram::new(&VramOptions::memfd(MIB)).unwrap();
        assert_eq!(
            rustix::fs::ftruncate(vram.as_fd(), 4096),
            Err(rustix::io::Errno::PERM),
            "shrinking the sealed memfd must fail"
        );
        assert_eq!(
            rustix::fs::ftruncate(vram.as_fd(), 2 * MIB),
            Err(rustix::io::Errno::PERM),
            "growing the sealed memfd must fail"
        );
        assert_eq!(vram.read_u32(VramOffset(MIB - 4)).unwrap(), 0);
    }

    #[test]
    fn untouched_16g_vram_costs_no_memory() {
        let before = rss_bytes();
        let vram = Vram::new(&VramOptions::memfd(16 << 30)).unwrap();
        assert_eq!(vram.size(), 16 << 30);
        // Touch two pages far apart: only those are allocated.
        vram.write_u32(VramOffset(0), 1).unwrap();
        vram.write_u32(VramOffset((16 << 30) - 4), 2).unwrap();
        let allocated = vram.allocated_bytes().unwrap();
        assert!(allocated <= 64 << 10, "memfd allocated {allocated} bytes");
        let after = rss_bytes();
        // Other tests run concurrently in this process; allow generous slack, still far below
        // what a populated 16 GiB (or even 1 GiB) would cost.
        assert!(
            after.saturating_sub(before) < 64 << 20,
            "RSS grew by {} bytes",
            after.saturating_sub(before)
        );
        assert_eq!(vram.read_u32(VramOffset((16 << 30) - 4)).unwrap(), 2);
    }

    #[test]
    fn file_backed_vram() {
        let dir = std::env::temp_dir().join(format!("vugpu-vram-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vram");
        let opts = VramOptions {
            size: MIB,
            file: Some(path.clone()),
        };
        {
            let vram = Vram::new(&opts).unwrap();
            assert_eq!(vram.path(), Some(path.as_path()));
            vram.write_u32(VramOffset(8), 0xabcd).unwrap();
        }
        assert_eq!(std::fs::metadata(&path).unwrap().len(), MIB);
        // Contents persist in the file.
        let vram = Vram::new(&opts).unwrap();
        assert_eq!(vram.read_u32(VramOffset(8)).unwrap(), 0xabcd);
        drop(vram);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn file_backed_rejects_missing_dir_and_directories() {
        let opts = VramOptions {
            size: MIB,
            file: Some(PathBuf::from("/nonexistent-vugpu-dir/vram")),
        };
        assert!(matches!(Vram::new(&opts), Err(VramError::Open { .. })));
        let opts = VramOptions {
            size: MIB,
            file: Some(std::env::temp_dir()),
        };
        assert!(matches!(Vram::new(&opts), Err(VramError::Open { .. })));
    }
}
