//! The device's DMA address space, built from the client's DMA_MAP requests.
//!
//! A DMA_MAP exports a window `[iova, iova + size)` of the client's memory with read and/or write
//! permission. With a file descriptor the server maps `size` bytes of the file at `file_offset`
//! (`MAP_SHARED`, so the device and the guest see the same bytes; `PROT_*` from the permissions)
//! and the device can reach the window directly. Without a file descriptor the window is recorded
//! as message-only: it is part of the address space, but only DMA_READ/DMA_WRITE messages to the
//! client reach it, so [`DmaSpace::read`]/[`DmaSpace::write`] refuse it with
//! [`DmaError::MessageOnly`] and the device decides what to do.
//!
//! Invariants:
//! - Windows never overlap; a DMA_MAP that overlaps an existing window is refused
//!   ([`DmaError::Overlap`], EEXIST on the wire).
//! - DMA_UNMAP removes exactly one window with the same start and size; anything else is
//!   [`DmaError::NotFound`]. Dropping a window drops its mapping (munmap) and its fd.
//! - An access may span several windows only if they are contiguous, all fd-backed and all grant
//!   the access; every piece is checked before any byte is copied, so a refused write leaves
//!   memory untouched.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;

use std::sync::atomic::Ordering;
use vm_memory::mmap::MmapRegionError;

use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryError, GuestMemoryRegion, GuestRegionMmap,
    MemoryRegionAddress, MmapRegion, VolatileSlice,
};

use crate::addr::Iova;

/// Default limit on the number of windows (the `max_dma_maps` a server advertises).
pub const DEFAULT_MAX_WINDOWS: usize = 65535;

/// Alignment required of a mapped window's file offset (the host page size on x86_64/aarch64 4K
/// kernels; mmap itself rejects anything finer for hugetlbfs files).
const FILE_OFFSET_ALIGN: u64 = 4096;

/// Errors of the DMA address space.
#[derive(Debug, thiserror::Error)]
pub enum DmaError {
    /// The access failed inside vm-memory.
    #[error("DMA access failed: {0}")]
    Access(#[source] GuestMemoryError),
    /// The window's file could not be inspected.
    #[error("cannot inspect the DMA_MAP fd: {0}")]
    BadFd(#[source] io::Error),
    /// `file_offset + size` is past the end of the file.
    #[error("DMA window of {size:#x} bytes at file offset {file_offset:#x} exceeds the {file_len:#x}-byte file")]
    FileTooSmall {
        /// Offset in the file.
        file_offset: u64,
        /// Window size.
        size: u64,
        /// Length of the file.
        file_len: u64,
    },
    /// The fd is not a regular file (memfd, hugetlbfs or tmpfs file).
    #[error("the DMA_MAP fd is not a regular file")]
    NotAFile,
    /// The server could not map the window.
    #[error("cannot map DMA window at {iova}: {source}")]
    Map {
        /// Window start.
        iova: Iova,
        /// Why.
        #[source]
        source: MmapRegionError,
    },
    /// The window hits a DMA_MAP without an fd: only DMA messages reach it.
    #[error("{iova} is in a message-only DMA window")]
    MessageOnly {
        /// Address of the access piece that hit the window.
        iova: Iova,
    },
    /// The file offset is not page aligned.
    #[error("DMA window file offset {0:#x} is not page aligned")]
    MisalignedOffset(u64),
    /// The mapping grants neither read nor write.
    #[error("DMA window at {0} grants neither read nor write")]
    NoPermissions(Iova),
    /// No window with exactly this start and size.
    #[error("no DMA window at {iova} of size {size:#x}")]
    NotFound {
        /// Requested start.
        iova: Iova,
        /// Requested size.
        size: u64,
    },
    /// The window overlaps an existing one.
    #[error("DMA window {iova}+{size:#x} overlaps the window at {existing}")]
    Overlap {
        /// Requested start.
        iova: Iova,
        /// Requested size.
        size: u64,
        /// Start of the existing window.
        existing: Iova,
    },
    /// `iova + size` or `file_offset + size` overflows, or the size does not fit this host.
    #[error("DMA range {iova}+{size:#x} overflows")]
    Overflow {
        /// Start.
        iova: Iova,
        /// Size.
        size: u64,
    },
    /// The window does not grant this access.
    #[error("DMA {} at {iova} not permitted by the mapping", if *.write { "write" } else { "read" })]
    PermissionDenied {
        /// Address of the refused piece.
        iova: Iova,
        /// The refused access was a write.
        write: bool,
    },
    /// An access that must be naturally aligned is not.
    #[error("misaligned DMA access at {0}")]
    Misaligned(Iova),
    /// The limit on the number of windows is reached.
    #[error("too many DMA windows (limit {0})")]
    TooManyWindows(usize),
    /// The access touches an address no window covers.
    #[error("DMA access of {len} bytes touches unmapped memory at {iova}")]
    Unmapped {
        /// The first byte of the access that no window covers.
        iova: Iova,
        /// Length.
        len: usize,
    },
    /// A zero-sized window.
    #[error("zero-sized DMA window at {0}")]
    ZeroSize(Iova),
}

/// Access rights granted by the client for a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DmaPermissions {
    /// The device may read.
    pub read: bool,
    /// The device may write.
    pub write: bool,
}

impl DmaPermissions {
    /// Read and write.
    pub const READ_WRITE: DmaPermissions = DmaPermissions {
        read: true,
        write: true,
    };
    /// Read only.
    pub const READ_ONLY: DmaPermissions = DmaPermissions {
        read: true,
        write: false,
    };
}

/// How a window is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowBacking {
    /// The server mapped the client's file: direct access.
    Mapped,
    /// No fd: only DMA_READ/DMA_WRITE messages reach it.
    MessageOnly,
}

/// A description of one window (for introspection and message-based access).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaWindow {
    /// Start.
    pub iova: Iova,
    /// Size in bytes.
    pub size: u64,
    /// Offset of `iova` inside the client's file (0 for message-only windows).
    pub file_offset: u64,
    /// Permissions.
    pub perms: DmaPermissions,
    /// Mapped or message-only.
    pub backing: WindowBacking,
}

#[derive(Debug)]
struct Window {
    size: u64,
    file_offset: u64,
    perms: DmaPermissions,
    /// `None` for message-only windows.
    region: Option<GuestRegionMmap<()>>,
}

/// The DMA address space: non-overlapping windows keyed by start address.
#[derive(Debug)]
pub struct DmaSpace {
    windows: BTreeMap<u64, Window>,
    max_windows: usize,
}

impl Default for DmaSpace {
    fn default() -> Self {
        Self::new()
    }
}

/// One contiguous part of an access, inside one window (see [`DmaSpace::resolve`]).
#[derive(Debug)]
pub enum Segment<'a> {
    /// An fd-backed window: the bytes, directly.
    Mapped {
        /// Address of the first byte.
        iova: Iova,
        /// The bytes (bounds-checked volatile access).
        slice: VolatileSlice<'a, ()>,
    },
    /// A message-only window: reach it with DMA_READ/DMA_WRITE messages.
    Message {
        /// Address of the first byte.
        iova: Iova,
        /// Length in bytes.
        len: u64,
    },
}

impl Segment<'_> {
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Segment::Mapped { slice, .. } => slice.len() as u64,
            Segment::Message { len, .. } => *len,
        }
    }

    /// Zero-length (never produced by [`DmaSpace::resolve`]).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Address of the first byte.
    pub fn iova(&self) -> Iova {
        match self {
            Segment::Mapped { iova, .. } | Segment::Message { iova, .. } => *iova,
        }
    }
}

/// One contiguous piece of an access, inside one window.
struct Piece<'a> {
    region: &'a GuestRegionMmap<()>,
    window_offset: u64,
    buf_start: usize,
    len: usize,
}

impl DmaSpace {
    /// An empty space with the default window limit.
    pub fn new() -> Self {
        Self::with_limit(DEFAULT_MAX_WINDOWS)
    }

    /// An empty space holding at most `max_windows` windows.
    pub fn with_limit(max_windows: usize) -> Self {
        DmaSpace {
            windows: BTreeMap::new(),
            max_windows,
        }
    }

    /// Number of windows.
    pub fn len(&self) -> usize {
        self.windows.len()
    }

    /// No window at all.
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    /// Every window, in address order.
    pub fn windows(&self) -> impl Iterator<Item = DmaWindow> + '_ {
        self.windows.iter().map(|(&iova, w)| describe(iova, w))
    }

    /// The window containing `iova`, if any.
    pub fn find(&self, iova: Iova) -> Option<DmaWindow> {
        let (&start, w) = self.windows.range(..=iova.raw()).next_back()?;
        (iova.raw() - start < w.size).then(|| describe(start, w))
    }

    /// Adds the window `[iova, iova + size)`. With `fd`, maps `size` bytes of it at
    /// `file_offset`; without, records a message-only window.
    pub fn map(
        &mut self,
        iova: Iova,
        size: u64,
        file_offset: u64,
        perms: DmaPermissions,
        fd: Option<OwnedFd>,
    ) -> Result<(), DmaError> {
        if size == 0 {
            return Err(DmaError::ZeroSize(iova));
        }
        let end = iova
            .checked_add(size)
            .ok_or(DmaError::Overflow { iova, size })?;
        if !perms.read && !perms.write {
            return Err(DmaError::NoPermissions(iova));
        }
        if let Some(existing) = self.first_overlap(iova.raw(), end.raw()) {
            return Err(DmaError::Overlap {
                iova,
                size,
                existing: Iova(existing),
            });
        }
        if self.windows.len() >= self.max_windows {
            return Err(DmaError::TooManyWindows(self.max_windows));
        }
        let region = match fd {
            None => None,
            Some(fd) => Some(map_file(iova, size, file_offset, perms, fd)?),
        };
        self.windows.insert(
            iova.raw(),
            Window {
                size,
                file_offset: if region.is_some() { file_offset } else { 0 },
                perms,
                region,
            },
        );
        Ok(())
    }

    /// Removes exactly the window `[iova, iova + size)`.
    pub fn unmap(&mut self, iova: Iova, size: u64) -> Result<DmaWindow, DmaError> {
        match self.windows.get(&iova.raw()) {
            Some(w) if w.size == size => {}
            _ => return Err(DmaError::NotFound { iova, size }),
        }
        let w = self
            .windows
            .remove(&iova.raw())
            .ok_or(DmaError::NotFound { iova, size })?;
        Ok(describe(iova.raw(), &w))
    }

    /// Removes every window.
    pub fn unmap_all(&mut self) {
        self.windows.clear();
    }

    /// Reads `buf.len()` bytes at `iova`.
    pub fn read(&self, iova: Iova, buf: &mut [u8]) -> Result<(), DmaError> {
        let pieces = self.pieces(iova, buf.len(), false)?;
        for p in pieces {
            let dst = buf
                .get_mut(p.buf_start..p.buf_start + p.len)
                .ok_or(DmaError::Unmapped { iova, len: p.len })?;
            p.region
                .read_slice(dst, MemoryRegionAddress(p.window_offset))
                .map_err(DmaError::Access)?;
        }
        Ok(())
    }

    /// Writes `buf` at `iova`.
    pub fn write(&self, iova: Iova, buf: &[u8]) -> Result<(), DmaError> {
        let pieces = self.pieces(iova, buf.len(), true)?;
        for p in pieces {
            let src = buf
                .get(p.buf_start..p.buf_start + p.len)
                .ok_or(DmaError::Unmapped { iova, len: p.len })?;
            p.region
                .write_slice(src, MemoryRegionAddress(p.window_offset))
                .map_err(DmaError::Access)?;
        }
        Ok(())
    }

    /// Splits `[iova, iova + len)` into per-window [`Segment`]s for direct access (fd-backed
    /// windows) or message-based access (fd-less windows). Every piece is checked for coverage
    /// and for `write`/read permission before anything is returned, so a refused access touches
    /// nothing. Errors name the first offending byte. The slices borrow `self`: a caller that
    /// holds them keeps the windows alive (the device's DMA_UNMAP waits for it).
    ///
    /// Slices of a read resolution (`write == false`) may map `PROT_READ`-only memory: only
    /// resolve with `write == true` what will be written.
    pub fn resolve(&self, iova: Iova, len: u64, write: bool) -> Result<Vec<Segment<'_>>, DmaError> {
        let len_us = usize::try_from(len).map_err(|_| DmaError::Overflow { iova, size: len })?;
        let end = iova
            .checked_add(len)
            .ok_or(DmaError::Overflow { iova, size: len })?;
        let mut segments = Vec::new();
        let mut cur = iova.raw();
        while cur < end.raw() {
            let (&start, w) = self
                .windows
                .range(..=cur)
                .next_back()
                .filter(|(&s, w)| cur - s < w.size)
                .ok_or(DmaError::Unmapped {
                    iova: Iova(cur),
                    len: len_us,
                })?;
            let allowed = if write { w.perms.write } else { w.perms.read };
            if !allowed {
                return Err(DmaError::PermissionDenied {
                    iova: Iova(cur),
                    write,
                });
            }
            // `start + w.size` does not overflow: checked at map time.
            let piece_end = end.raw().min(start + w.size);
            let piece_len = piece_end - cur;
            match &w.region {
                None => segments.push(Segment::Message {
                    iova: Iova(cur),
                    len: piece_len,
                }),
                Some(region) => {
                    let count = usize::try_from(piece_len)
                        .map_err(|_| DmaError::Overflow { iova, size: len })?;
                    let slice = region
                        .get_slice(MemoryRegionAddress(cur - start), count)
                        .map_err(DmaError::Access)?;
                    segments.push(Segment::Mapped {
                        iova: Iova(cur),
                        slice,
                    });
                }
            }
            cur = piece_end;
        }
        Ok(segments)
    }

    /// Stores `value` little-endian at the 8-byte aligned `iova` with one atomic 8-byte store
    /// (release ordering), so an observer never sees it torn. The window must be fd-backed
    /// ([`DmaError::MessageOnly`] otherwise) and writable.
    pub fn store_u64(&self, iova: Iova, value: u64) -> Result<(), DmaError> {
        if !iova.raw().is_multiple_of(8) {
            return Err(DmaError::Misaligned(iova));
        }
        let segments = self.resolve(iova, 8, true)?;
        match segments.as_slice() {
            [Segment::Mapped { slice, .. }] => slice
                .store(value.to_le(), 0, Ordering::Release)
                .map_err(|e| DmaError::Access(e.into())),
            [Segment::Message { iova, .. }, ..] => Err(DmaError::MessageOnly { iova: *iova }),
            // Windows are page aligned, so an aligned 8-byte access lies in one window.
            _ => Err(DmaError::Misaligned(iova)),
        }
    }

    fn first_overlap(&self, start: u64, end: u64) -> Option<u64> {
        // The window starting at or before `start` may extend into it.
        if let Some((&s, w)) = self.windows.range(..=start).next_back() {
            if s + w.size > start {
                return Some(s);
            }
        }
        // Any window starting inside [start, end).
        self.windows.range(start..end).next().map(|(&s, _)| s)
    }

    /// Splits `[iova, iova + len)` into per-window pieces, checking coverage, backing and
    /// permissions of every piece first.
    fn pieces(&self, iova: Iova, len: usize, write: bool) -> Result<Vec<Piece<'_>>, DmaError> {
        let len64 = u64::try_from(len).map_err(|_| DmaError::Unmapped { iova, len })?;
        let end = iova
            .checked_add(len64)
            .ok_or(DmaError::Overflow { iova, size: len64 })?;
        let mut pieces = Vec::new();
        let mut cur = iova.raw();
        while cur < end.raw() {
            let (&start, w) = self
                .windows
                .range(..=cur)
                .next_back()
                .filter(|(&s, w)| cur - s < w.size)
                .ok_or(DmaError::Unmapped {
                    iova: Iova(cur),
                    len,
                })?;
            let allowed = if write { w.perms.write } else { w.perms.read };
            if !allowed {
                return Err(DmaError::PermissionDenied {
                    iova: Iova(cur),
                    write,
                });
            }
            let region = w
                .region
                .as_ref()
                .ok_or(DmaError::MessageOnly { iova: Iova(cur) })?;
            let window_offset = cur - start;
            let piece_end = end.raw().min(start + w.size);
            let piece_len =
                usize::try_from(piece_end - cur).map_err(|_| DmaError::Unmapped { iova, len })?;
            let buf_start =
                usize::try_from(cur - iova.raw()).map_err(|_| DmaError::Unmapped { iova, len })?;
            pieces.push(Piece {
                region,
                window_offset,
                buf_start,
                len: piece_len,
            });
            cur = piece_end;
        }
        Ok(pieces)
    }
}

fn describe(iova: u64, w: &Window) -> DmaWindow {
    DmaWindow {
        iova: Iova(iova),
        size: w.size,
        file_offset: w.file_offset,
        perms: w.perms,
        backing: if w.region.is_some() {
            WindowBacking::Mapped
        } else {
            WindowBacking::MessageOnly
        },
    }
}

fn map_file(
    iova: Iova,
    size: u64,
    file_offset: u64,
    perms: DmaPermissions,
    fd: OwnedFd,
) -> Result<GuestRegionMmap<()>, DmaError> {
    if file_offset & (FILE_OFFSET_ALIGN - 1) != 0 {
        return Err(DmaError::MisalignedOffset(file_offset));
    }
    let file = File::from(fd);
    let meta = file.metadata().map_err(DmaError::BadFd)?;
    if !meta.is_file() {
        return Err(DmaError::NotAFile);
    }
    let file_end = file_offset
        .checked_add(size)
        .ok_or(DmaError::Overflow { iova, size })?;
    if file_end > meta.len() {
        return Err(DmaError::FileTooSmall {
            file_offset,
            size,
            file_len: meta.len(),
        });
    }
    let map_len = usize::try_from(size).map_err(|_| DmaError::Overflow { iova, size })?;
    let mut prot = 0;
    if perms.read {
        prot |= libc::PROT_READ;
    }
    if perms.write {
        prot |= libc::PROT_WRITE;
    }
    let region = MmapRegion::<()>::build(
        Some(FileOffset::new(file, file_offset)),
        map_len,
        prot,
        libc::MAP_SHARED | libc::MAP_NORESERVE,
    )
    .map_err(|source| DmaError::Map { iova, source })?;
    GuestRegionMmap::new(region, GuestAddress(0)).ok_or(DmaError::Overflow { iova, size })
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Seek, SeekFrom, Write};
    use std::os::fd::{FromRawFd, OwnedFd};

    use super::*;

    const PAGE: u64 = 4096;

    fn memfd(len: u64) -> File {
        // SAFETY: valid C string literal; the result is checked.
        let raw = unsafe { libc::memfd_create(c"dma-test".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(raw >= 0);
        // SAFETY: fresh fd owned by nobody else.
        let f = File::from(unsafe { OwnedFd::from_raw_fd(raw) });
        f.set_len(len).unwrap();
        f
    }

    /// Maps `len` bytes of `f` (from file offset 0) at `iova`; the test fails if it is refused.
    fn map_fd(space: &mut DmaSpace, iova: Iova, len: u64, perms: DmaPermissions, f: &File) {
        space.map(iova, len, 0, perms, Some(fd_of(f))).unwrap();
    }

    fn fd_of(f: &File) -> OwnedFd {
        f.try_clone().unwrap().into()
    }

    #[test]
    fn map_read_write_shares_bytes_with_the_file() {
        let mut f = memfd(4 * PAGE);
        let mut space = DmaSpace::new();
        space
            .map(
                Iova(0x10_0000),
                2 * PAGE,
                PAGE,
                DmaPermissions::READ_WRITE,
                Some(fd_of(&f)),
            )
            .unwrap();
        // Device writes: visible in the file at file_offset + window offset.
        space.write(Iova(0x10_0010), b"abc").unwrap();
        let mut b = [0u8; 3];
        f.seek(SeekFrom::Start(PAGE + 0x10)).unwrap();
        f.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"abc");
        // Client writes: visible to the device.
        f.seek(SeekFrom::Start(2 * PAGE + 5)).unwrap();
        f.write_all(b"xyz").unwrap();
        let mut b = [0u8; 3];
        space.read(Iova(0x10_0000 + PAGE + 5), &mut b).unwrap();
        assert_eq!(&b, b"xyz");
        assert_eq!(space.len(), 1);
        let w = space.find(Iova(0x10_0000 + 2 * PAGE - 1)).unwrap();
        assert_eq!(w.backing, WindowBacking::Mapped);
        assert_eq!(w.file_offset, PAGE);
        assert!(space.find(Iova(0x10_0000 + 2 * PAGE)).is_none());
    }

    #[test]
    fn rejects_overlap() {
        let f = memfd(8 * PAGE);
        let mut space = DmaSpace::new();
        map_fd(
            &mut space,
            Iova(4 * PAGE),
            2 * PAGE,
            DmaPermissions::READ_WRITE,
            &f,
        );
        for (iova, size) in [
            (4 * PAGE, PAGE),     // same start
            (3 * PAGE, 2 * PAGE), // ends inside
            (5 * PAGE, 4 * PAGE), // starts inside
            (2 * PAGE, 8 * PAGE), // covers
        ] {
            assert!(
                matches!(
                    space.map(Iova(iova), size, 0, DmaPermissions::READ_WRITE, None),
                    Err(DmaError::Overlap { existing: Iova(e), .. }) if e == 4 * PAGE
                ),
                "{iova:#x}+{size:#x}"
            );
        }
        // Adjacent windows are fine.
        space
            .map(Iova(6 * PAGE), PAGE, 0, DmaPermissions::READ_WRITE, None)
            .unwrap();
        space
            .map(Iova(3 * PAGE), PAGE, 0, DmaPermissions::READ_WRITE, None)
            .unwrap();
        assert_eq!(space.len(), 3);
    }

    #[test]
    fn rejects_zero_size_overflow_and_no_permissions() {
        let mut space = DmaSpace::new();
        assert!(matches!(
            space.map(Iova(0), 0, 0, DmaPermissions::READ_WRITE, None),
            Err(DmaError::ZeroSize(_))
        ));
        assert!(matches!(
            space.map(
                Iova(u64::MAX - PAGE + 1),
                2 * PAGE,
                0,
                DmaPermissions::READ_WRITE,
                None
            ),
            Err(DmaError::Overflow { .. })
        ));
        assert!(matches!(
            space.map(Iova(0), PAGE, 0, DmaPermissions::default(), None),
            Err(DmaError::NoPermissions(_))
        ));
        assert!(space.is_empty());
    }

    #[test]
    fn rejects_window_past_end_of_file() {
        let f = memfd(2 * PAGE);
        let mut space = DmaSpace::new();
        assert!(matches!(
            space.map(
                Iova(0),
                2 * PAGE,
                PAGE,
                DmaPermissions::READ_WRITE,
                Some(fd_of(&f))
            ),
            Err(DmaError::FileTooSmall { .. })
        ));
        assert!(matches!(
            space.map(
                Iova(0),
                PAGE,
                u64::MAX - 10,
                DmaPermissions::READ_WRITE,
                Some(fd_of(&f))
            ),
            Err(DmaError::MisalignedOffset(_))
        ));
        assert!(matches!(
            space.map(
                Iova(0),
                PAGE,
                !(PAGE - 1),
                DmaPermissions::READ_WRITE,
                Some(fd_of(&f))
            ),
            Err(DmaError::Overflow { .. })
        ));
        assert!(matches!(
            space.map(
                Iova(0),
                PAGE,
                1,
                DmaPermissions::READ_WRITE,
                Some(fd_of(&f))
            ),
            Err(DmaError::MisalignedOffset(1))
        ));
        assert!(space.is_empty());
    }

    #[test]
    fn rejects_non_regular_fd() {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two fds pipe() writes.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: fresh fds owned by nobody else.
        let (r, _w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let mut space = DmaSpace::new();
        assert!(matches!(
            space.map(Iova(0), PAGE, 0, DmaPermissions::READ_WRITE, Some(r)),
            Err(DmaError::NotAFile)
        ));
    }

    #[test]
    fn rejects_write_to_read_only_window() {
        let f = memfd(PAGE);
        let mut space = DmaSpace::new();
        space
            .map(Iova(0), PAGE, 0, DmaPermissions::READ_ONLY, Some(fd_of(&f)))
            .unwrap();
        assert!(matches!(
            space.write(Iova(8), &[1, 2, 3]),
            Err(DmaError::PermissionDenied { write: true, .. })
        ));
        let mut b = [0xffu8; 4];
        space.read(Iova(8), &mut b).unwrap();
        assert_eq!(b, [0; 4]);
    }

    #[test]
    fn rejects_read_from_write_only_window() {
        let f = memfd(PAGE);
        let mut space = DmaSpace::new();
        let wo = DmaPermissions {
            read: false,
            write: true,
        };
        space.map(Iova(0), PAGE, 0, wo, Some(fd_of(&f))).unwrap();
        let mut b = [0u8; 4];
        assert!(matches!(
            space.read(Iova(0), &mut b),
            Err(DmaError::PermissionDenied { write: false, .. })
        ));
        space.write(Iova(0), &[9]).unwrap();
    }

    #[test]
    fn rejects_access_to_unmapped_and_message_only() {
        let f = memfd(PAGE);
        let mut space = DmaSpace::new();
        map_fd(&mut space, Iova(PAGE), PAGE, DmaPermissions::READ_WRITE, &f);
        space
            .map(Iova(4 * PAGE), PAGE, 0, DmaPermissions::READ_WRITE, None)
            .unwrap();
        let mut b = [0u8; 8];
        assert!(matches!(
            space.read(Iova(0), &mut b),
            Err(DmaError::Unmapped { .. })
        ));
        assert!(matches!(
            space.read(Iova(2 * PAGE - 4), &mut b),
            Err(DmaError::Unmapped { .. })
        ));
        assert!(matches!(
            space.write(Iova(4 * PAGE), &b),
            Err(DmaError::MessageOnly { .. })
        ));
        assert!(matches!(
            space.read(Iova(u64::MAX - 2), &mut b),
            Err(DmaError::Overflow { .. } | DmaError::Unmapped { .. })
        ));
        assert_eq!(
            space.find(Iova(4 * PAGE + 1)).unwrap().backing,
            WindowBacking::MessageOnly
        );
    }

    #[test]
    fn access_spanning_contiguous_windows() {
        let f1 = memfd(PAGE);
        let f2 = memfd(PAGE);
        let mut space = DmaSpace::new();
        map_fd(&mut space, Iova(0), PAGE, DmaPermissions::READ_WRITE, &f1);
        map_fd(
            &mut space,
            Iova(PAGE),
            PAGE,
            DmaPermissions::READ_WRITE,
            &f2,
        );
        space.write(Iova(PAGE - 2), &[1, 2, 3, 4]).unwrap();
        let mut b = [0u8; 4];
        space.read(Iova(PAGE - 2), &mut b).unwrap();
        assert_eq!(b, [1, 2, 3, 4]);
        let mut b2 = [0u8; 2];
        space.read(Iova(PAGE), &mut b2).unwrap();
        assert_eq!(b2, [3, 4]);
    }

    #[test]
    fn refused_spanning_write_leaves_memory_untouched() {
        let f1 = memfd(PAGE);
        let f2 = memfd(PAGE);
        let mut space = DmaSpace::new();
        map_fd(&mut space, Iova(0), PAGE, DmaPermissions::READ_WRITE, &f1);
        map_fd(&mut space, Iova(PAGE), PAGE, DmaPermissions::READ_ONLY, &f2);
        assert!(matches!(
            space.write(Iova(PAGE - 2), &[1, 2, 3, 4]),
            Err(DmaError::PermissionDenied { iova: Iova(i), write: true }) if i == PAGE
        ));
        let mut b = [0xffu8; 2];
        space.read(Iova(PAGE - 2), &mut b).unwrap();
        assert_eq!(b, [0, 0], "first piece must not have been written");
        // Spanning into a gap is refused too.
        space.unmap(Iova(PAGE), PAGE).unwrap();
        assert!(matches!(
            space.write(Iova(PAGE - 2), &[1, 2, 3, 4]),
            Err(DmaError::Unmapped { .. })
        ));
    }

    #[test]
    fn resolve_splits_mapped_and_message_windows() {
        let f = memfd(2 * PAGE);
        let mut space = DmaSpace::new();
        map_fd(&mut space, Iova(0), PAGE, DmaPermissions::READ_WRITE, &f);
        space
            .map(Iova(PAGE), PAGE, 0, DmaPermissions::READ_WRITE, None)
            .unwrap();
        space
            .map(
                Iova(2 * PAGE),
                PAGE,
                PAGE,
                DmaPermissions::READ_ONLY,
                Some(fd_of(&f)),
            )
            .unwrap();
        let segs = space.resolve(Iova(PAGE - 4), PAGE + 8, false).unwrap();
        assert_eq!(segs.len(), 3);
        assert!(
            matches!(&segs[0], Segment::Mapped { iova: Iova(i), slice } if *i == PAGE - 4 && slice.len() == 4)
        );
        assert!(
            matches!(segs[1], Segment::Message { iova: Iova(i), len } if i == PAGE && len == PAGE)
        );
        assert_eq!(segs[2].iova(), Iova(2 * PAGE));
        assert_eq!(segs.iter().map(Segment::len).sum::<u64>(), PAGE + 8);
        // The direct slices are the file's bytes (segs[0] is in the read-write window; segs[2]
        // maps PROT_READ memory and must never be written).
        if let Segment::Mapped { slice, .. } = &segs[0] {
            slice.write_obj(0xa5u8, 1).unwrap();
        }
        let mut b = [0u8; 1];
        space.read(Iova(PAGE - 3), &mut b).unwrap();
        assert_eq!(b[0], 0xa5);
        // Errors name the first offending byte; nothing is returned for a refused access.
        assert!(matches!(
            space.resolve(Iova(PAGE - 4), 2 * PAGE + 8, true),
            Err(DmaError::PermissionDenied { iova: Iova(i), write: true }) if i == 2 * PAGE
        ));
        assert!(matches!(
            space.resolve(Iova(2 * PAGE + 16), PAGE, false),
            Err(DmaError::Unmapped { iova: Iova(i), .. }) if i == 3 * PAGE
        ));
        assert!(matches!(
            space.resolve(Iova(u64::MAX - 1), 4, false),
            Err(DmaError::Overflow { .. })
        ));
        assert!(space.resolve(Iova(5), 0, false).unwrap().is_empty());
    }

    #[test]
    fn store_u64_is_aligned_atomic_and_checked() {
        let f = memfd(PAGE);
        let mut space = DmaSpace::new();
        map_fd(&mut space, Iova(0), PAGE, DmaPermissions::READ_WRITE, &f);
        space
            .map(Iova(PAGE), PAGE, 0, DmaPermissions::READ_WRITE, None)
            .unwrap();
        space.store_u64(Iova(8), 0x0102_0304_0506_0708).unwrap();
        let mut b = [0u8; 8];
        space.read(Iova(8), &mut b).unwrap();
        assert_eq!(u64::from_le_bytes(b), 0x0102_0304_0506_0708);
        assert!(matches!(
            space.store_u64(Iova(4), 1),
            Err(DmaError::Misaligned(_))
        ));
        assert!(matches!(
            space.store_u64(Iova(PAGE), 1),
            Err(DmaError::MessageOnly { .. })
        ));
        assert!(matches!(
            space.store_u64(Iova(2 * PAGE), 1),
            Err(DmaError::Unmapped { .. })
        ));
    }

    #[test]
    fn unmap_is_exact() {
        let mut space = DmaSpace::new();
        space
            .map(Iova(PAGE), 2 * PAGE, 0, DmaPermissions::READ_WRITE, None)
            .unwrap();
        assert!(matches!(
            space.unmap(Iova(PAGE), PAGE),
            Err(DmaError::NotFound { .. })
        ));
        assert!(matches!(
            space.unmap(Iova(2 * PAGE), PAGE),
            Err(DmaError::NotFound { .. })
        ));
        assert!(matches!(
            space.unmap(Iova(0), 2 * PAGE),
            Err(DmaError::NotFound { .. })
        ));
        let w = space.unmap(Iova(PAGE), 2 * PAGE).unwrap();
        assert_eq!(w.backing, WindowBacking::MessageOnly);
        assert!(space.is_empty());
        assert!(matches!(
            space.unmap(Iova(PAGE), 2 * PAGE),
            Err(DmaError::NotFound { .. })
        ));
    }

    #[test]
    fn unmap_all_and_reuse() {
        let f = memfd(PAGE);
        let mut space = DmaSpace::new();
        map_fd(&mut space, Iova(0), PAGE, DmaPermissions::READ_WRITE, &f);
        space
            .map(Iova(PAGE), PAGE, 0, DmaPermissions::READ_WRITE, None)
            .unwrap();
        space.unmap_all();
        assert!(space.is_empty());
        let mut b = [0u8; 1];
        assert!(matches!(
            space.read(Iova(0), &mut b),
            Err(DmaError::Unmapped { .. })
        ));
        map_fd(&mut space, Iova(0), PAGE, DmaPermissions::READ_WRITE, &f);
        assert_eq!(space.windows().count(), 1);
    }

    #[test]
    fn rejects_more_than_the_limit() {
        let mut space = DmaSpace::with_limit(2);
        space
            .map(Iova(0), PAGE, 0, DmaPermissions::READ_WRITE, None)
            .unwrap();
        space
            .map(Iova(PAGE), PAGE, 0, DmaPermissions::READ_WRITE, None)
            .unwrap();
        assert!(matches!(
            space.map(Iova(2 * PAGE), PAGE, 0, DmaPermissions::READ_WRITE, None),
            Err(DmaError::TooManyWindows(2))
        ));
    }

    #[test]
    fn rejects_mapping_a_read_only_fd_writable() {
        let path = std::env::temp_dir().join(format!("vugpu-dma-ro-{}", std::process::id()));
        std::fs::write(&path, vec![0u8; PAGE as usize]).unwrap();
        let ro = File::open(&path).unwrap();
        let mut space = DmaSpace::new();
        assert!(matches!(
            space.map(
                Iova(0),
                PAGE,
                0,
                DmaPermissions::READ_WRITE,
                Some(ro.into())
            ),
            Err(DmaError::Map { .. })
        ));
        let ro = File::open(&path).unwrap();
        space
            .map(Iova(0), PAGE, 0, DmaPermissions::READ_ONLY, Some(ro.into()))
            .unwrap();
        std::fs::remove_file(&path).unwrap();
    }
}
