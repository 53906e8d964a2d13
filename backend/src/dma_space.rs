//! The device's DMA address space, built from the client's DMA_MAP requests.
//!
//! A DMA_MAP exports a window `[iova, iova + size)` of the client's memory with read and/or write
//! permission. How the device reaches it depends on the file descriptor that comes with it:
//!
//! - **Mapped**: an fd sealed against shrinking (`F_SEAL_SHRINK`; QEMU's `memory-backend-memfd`
//!   seals by default, and vugpu's own VRAM and doorbell memfds are sealed). The server maps
//!   `size` bytes of the file at `file_offset` (`MAP_SHARED`, so the device and the guest see the
//!   same bytes; `PROT_*` from the permissions) and the device reaches the window directly,
//!   through vm-memory's bounds-checked volatile slices. The window lies inside the file at
//!   DMA_MAP and the seal keeps it there, so no access can raise SIGBUS.
//! - **File**: any other fd (an unsealed memfd, a tmpfs or disk file). The client could shrink
//!   the file under a mapping and make the server's next access raise SIGBUS, so the window is
//!   never mapped: it is read and written with `pread`/`pwrite` ([`FileSlice`], module
//!   `dma_file`), and an access past the file's current end fails with [`DmaError::Truncated`],
//!   which the device reports like an access to unmapped memory.
//! - **Message-only**: no fd. The window is part of the address space, but only
//!   DMA_READ/DMA_WRITE messages to the client reach it, so [`DmaSpace::read`]/[`DmaSpace::write`]
//!   refuse it with [`DmaError::MessageOnly`] and the device decides what to do.
//!
//! Invariants:
//! - Windows never overlap; a DMA_MAP that overlaps an existing window is refused
//!   ([`DmaError::Overlap`], EEXIST on the wire).
//! - An fd-backed window lies inside its file when it is mapped (`file_offset + size` at most the
//!   file's length, [`DmaError::FileTooSmall`] otherwise), whatever the access method.
//! - DMA_UNMAP removes exactly one window with the same start and size; anything else is
//!   [`DmaError::NotFound`]. Dropping a window drops its mapping (munmap) and its fd.
//! - An access may span several windows only if they are contiguous, all fd-backed and all grant
//!   the access; coverage and permissions of every piece are checked before any byte is copied,
//!   so a refused access leaves memory untouched. (A file-accessed piece can still fail while it
//!   is copied, if the client shrank the file: the pieces before it are then written.)

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
use crate::dma_file::{self, Access, FileSlice};

/// Default limit on the number of windows (the `max_dma_maps` a server advertises).
pub const DEFAULT_MAX_WINDOWS: usize = 65535;
/// Default limit on the windows that hold a client fd (mapped or file-accessed): each keeps one
/// open file in the server process, whose fd table every GPU and client of it shares.
pub const DEFAULT_MAX_FD_WINDOWS: usize = 1024;
/// Default limit on the bytes of all fd-backed windows together (4 TiB): mapped windows take
/// server address space (128 TiB on x86_64, shared by every GPU of the process).
pub const DEFAULT_MAX_FD_BYTES: u64 = 4 << 40;

/// Limits on what one client's DMA_MAPs make the server hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaLimits {
    /// Windows of any kind.
    pub max_windows: usize,
    /// Windows with an fd (each holds one open file).
    pub max_fd_windows: usize,
    /// Bytes of all windows with an fd together.
    pub max_fd_bytes: u64,
}

impl Default for DmaLimits {
    fn default() -> Self {
        DmaLimits {
            max_windows: DEFAULT_MAX_WINDOWS,
            max_fd_windows: DEFAULT_MAX_FD_WINDOWS,
            max_fd_bytes: DEFAULT_MAX_FD_BYTES,
        }
    }
}

/// Alignment required of a mapped window's file offset (the host page size on x86_64/aarch64 4K
/// kernels; mmap itself rejects anything finer for hugetlbfs files).
const FILE_OFFSET_ALIGN: u64 = 4096;

/// Errors of the DMA address space.
#[derive(Debug, thiserror::Error)]
pub enum DmaError {
    /// The access failed inside vm-memory.
    #[error("DMA access failed: {0}")]
    Access(#[source] GuestMemoryError),
    /// The fd of a file-accessed window is in append mode, where `pwrite` ignores the offset.
    #[error("DMA window at {0}: the client's fd is in append mode (O_APPEND)")]
    Append(Iova),
    /// The window's file could not be inspected.
    #[error("cannot inspect the DMA_MAP fd: {0}")]
    BadFd(#[source] io::Error),
    /// The fd of a file-accessed window cannot be read or written as the permissions require
    /// (opened without that access, or a file system without `pread`/`pwrite`, e.g. hugetlbfs).
    #[error("DMA window at {iova}: the fd cannot be {}: {source}", if *.write { "written" } else { "read" })]
    FileAccess {
        /// Window start.
        iova: Iova,
        /// Writing was refused (reading otherwise).
        write: bool,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// `pread`/`pwrite` on a file-accessed window failed.
    #[error("DMA {} at {iova} failed: {source}", if *.write { "write" } else { "read" })]
    FileIo {
        /// Address of the piece that failed.
        iova: Iova,
        /// The failed access was a write.
        write: bool,
        /// Why.
        #[source]
        source: io::Error,
    },
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
    /// The limit on windows holding an fd is reached.
    #[error("too many DMA windows with an fd (limit {0})")]
    TooManyFdWindows(usize),
    /// The window would take the fd-backed windows past their byte limit.
    #[error(
        "DMA windows with an fd would exceed {max:#x} bytes ({held:#x} held, {size:#x} asked)"
    )]
    TooManyBytes {
        /// The limit.
        max: u64,
        /// Bytes held before this window.
        held: u64,
        /// Size of the refused window.
        size: u64,
    },
    /// A file-accessed window's file no longer covers the access: the client shrank it.
    #[error("DMA access at {iova} is past the end of the window's file (shrunk by the client)")]
    Truncated {
        /// The first byte past the end of the file.
        iova: Iova,
    },
    /// The access touches an address no window covers.
    #[error("DMA access of {len} bytes touches unmapped memory at {iova}")]
    Unmapped {
        /// The first byte of the access that no window covers.
        iova: Iova,
        /// Length.
        len: usize,
    },
    /// A writable window whose file is sealed against writes.
    #[error("DMA window at {0} is writable but its file is sealed against writes")]
    WriteSealed(Iova),
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
    /// The server mapped the client's file (sealed against shrinking): direct access.
    Mapped,
    /// The server reads and writes the client's file with `pread`/`pwrite` (an fd not sealed
    /// against shrinking).
    File,
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
    /// Mapped, file-accessed or message-only.
    pub backing: WindowBacking,
}

/// What holds a window's bytes.
#[derive(Debug)]
enum Store {
    /// The client's file, mapped.
    Mapped(GuestRegionMmap<()>),
    /// The client's file, for `pread`/`pwrite`.
    File(File),
    /// No fd.
    Message,
}

#[derive(Debug)]
struct Window {
    size: u64,
    file_offset: u64,
    perms: DmaPermissions,
    store: Store,
}

/// The DMA address space: non-overlapping windows keyed by start address.
#[derive(Debug)]
pub struct DmaSpace {
    windows: BTreeMap<u64, Window>,
    limits: DmaLimits,
    fd_windows: usize,
    fd_bytes: u64,
}

impl Default for DmaSpace {
    fn default() -> Self {
        Self::new()
    }
}

/// One contiguous part of an access, inside one window (see [`DmaSpace::resolve`]).
#[derive(Debug)]
pub enum Segment<'a> {
    /// A mapped window: the bytes, directly.
    Mapped {
        /// Address of the first byte.
        iova: Iova,
        /// The bytes (bounds-checked volatile access).
        slice: VolatileSlice<'a, ()>,
    },
    /// A file-accessed window: the bytes, through `pread`/`pwrite` (which fail, rather than
    /// raise SIGBUS, if the client shrank the file).
    File {
        /// Address of the first byte.
        iova: Iova,
        /// The part of the client's file.
        slice: FileSlice<'a>,
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
            Segment::File { slice, .. } => slice.len(),
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
            Segment::Mapped { iova, .. }
            | Segment::File { iova, .. }
            | Segment::Message { iova, .. } => *iova,
        }
    }
}

impl DmaSpace {
    /// An empty space with the default window limit.
    pub fn new() -> Self {
        Self::with_limit(DEFAULT_MAX_WINDOWS)
    }

    /// An empty space holding at most `max_windows` windows (other limits: defaults).
    pub fn with_limit(max_windows: usize) -> Self {
        Self::with_limits(DmaLimits {
            max_windows,
            ..DmaLimits::default()
        })
    }

    /// An empty space with these limits.
    pub fn with_limits(limits: DmaLimits) -> Self {
        DmaSpace {
            windows: BTreeMap::new(),
            limits,
            fd_windows: 0,
            fd_bytes: 0,
        }
    }

    /// The limits.
    pub fn limits(&self) -> DmaLimits {
        self.limits
    }

    /// Changes the limits; windows already held stay (the limits apply to the next DMA_MAP).
    pub fn set_limits(&mut self, limits: DmaLimits) {
        self.limits = limits;
    }

    /// Windows holding a client fd (mapped or file-accessed).
    pub fn fd_windows(&self) -> usize {
        self.fd_windows
    }

    /// Bytes of all windows holding a client fd.
    pub fn fd_bytes(&self) -> u64 {
        self.fd_bytes
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

    /// Adds the window `[iova, iova + size)`. With `fd`, the window is `size` bytes of the file
    /// at `file_offset`, mapped if the file is sealed against shrinking and file-accessed
    /// otherwise; without, the window is message-only.
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
        if self.windows.len() >= self.limits.max_windows {
            return Err(DmaError::TooManyWindows(self.limits.max_windows));
        }
        if fd.is_some() {
            if self.fd_windows >= self.limits.max_fd_windows {
                return Err(DmaError::TooManyFdWindows(self.limits.max_fd_windows));
            }
            let total = self.fd_bytes.checked_add(size);
            if total.is_none_or(|t| t > self.limits.max_fd_bytes) {
                return Err(DmaError::TooManyBytes {
                    max: self.limits.max_fd_bytes,
                    held: self.fd_bytes,
                    size,
                });
            }
        }
        let store = match fd {
            None => Store::Message,
            Some(fd) => open_window(iova, size, file_offset, perms, fd)?,
        };
        if !matches!(store, Store::Message) {
            self.fd_windows += 1;
            self.fd_bytes += size;
        }
        let window = Window {
            size,
            file_offset: if matches!(store, Store::Message) {
                0
            } else {
                file_offset
            },
            perms,
            store,
        };
        tracing::debug!(
            "DMA_MAP {:#x}+{size:#x} {}{}: {}",
            iova.raw(),
            if perms.read { "r" } else { "-" },
            if perms.write { "w" } else { "-" },
            match window.store {
                Store::Mapped(_) => "mapped",
                Store::File(_) => "file-accessed (pread/pwrite: fd not sealed)",
                Store::Message => "message-only (no fd)",
            }
        );
        self.windows.insert(iova.raw(), window);
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
        if !matches!(w.store, Store::Message) {
            self.fd_windows -= 1;
            self.fd_bytes -= w.size;
        }
        tracing::debug!("DMA_UNMAP {:#x}+{size:#x}", iova.raw());
        Ok(describe(iova.raw(), &w))
    }

    /// Removes every window.
    pub fn unmap_all(&mut self) {
        self.windows.clear();
        self.fd_windows = 0;
        self.fd_bytes = 0;
    }

    /// Reads `buf.len()` bytes at `iova` (fd-backed windows only).
    pub fn read(&self, iova: Iova, buf: &mut [u8]) -> Result<(), DmaError> {
        for (s, at) in self.direct_pieces(iova, buf.len(), false)? {
            let dst = buf.get_mut(at).ok_or(DmaError::Unmapped {
                iova: s.iova(),
                len: s.len() as usize,
            })?;
            match &s {
                Segment::Mapped { slice, .. } => {
                    slice.copy_to(dst);
                }
                Segment::File { slice, .. } => slice.read(0, dst)?,
                Segment::Message { iova, .. } => return Err(DmaError::MessageOnly { iova: *iova }),
            }
        }
        Ok(())
    }

    /// Writes `buf` at `iova` (fd-backed windows only).
    pub fn write(&self, iova: Iova, buf: &[u8]) -> Result<(), DmaError> {
        for (s, at) in self.direct_pieces(iova, buf.len(), true)? {
            let src = buf.get(at).ok_or(DmaError::Unmapped {
                iova: s.iova(),
                len: s.len() as usize,
            })?;
            match &s {
                Segment::Mapped { slice, .. } => slice.copy_from(src),
                Segment::File { slice, .. } => slice.write(0, src)?,
                Segment::Message { iova, .. } => return Err(DmaError::MessageOnly { iova: *iova }),
            }
        }
        Ok(())
    }

    /// The segments of `[iova, iova + len)` (see [`resolve_direct`](Self::resolve_direct)),
    /// each with the range of the caller's buffer it covers.
    fn direct_pieces(
        &self,
        iova: Iova,
        len: usize,
        write: bool,
    ) -> Result<Vec<(Segment<'_>, std::ops::Range<usize>)>, DmaError> {
        let mut off = 0usize;
        self.resolve_direct(iova, len, write)?
            .into_iter()
            .map(|s| {
                let n = usize::try_from(s.len()).map_err(|_| DmaError::Unmapped { iova, len })?;
                let at = off..off + n;
                off += n;
                Ok((s, at))
            })
            .collect()
    }

    /// [`resolve`](Self::resolve), refusing message-only pieces ([`DmaError::MessageOnly`] at
    /// the first one) before anything is accessed.
    fn resolve_direct(
        &self,
        iova: Iova,
        len: usize,
        write: bool,
    ) -> Result<Vec<Segment<'_>>, DmaError> {
        let segments = self.resolve(iova, len as u64, write)?;
        if let Some(Segment::Message { iova, .. }) = segments
            .iter()
            .find(|s| matches!(s, Segment::Message { .. }))
        {
            return Err(DmaError::MessageOnly { iova: *iova });
        }
        Ok(segments)
    }

    /// Splits `[iova, iova + len)` into per-window [`Segment`]s: direct slices (mapped windows),
    /// file slices (file-accessed windows) or message-only ranges (fd-less windows). Every piece
    /// is checked for coverage and for `write`/read permission before anything is returned, so a
    /// refused access touches nothing. Errors name the first offending byte. The segments borrow
    /// `self`: a caller that holds them keeps the windows alive (the device's DMA_UNMAP waits for
    /// it).
    ///
    /// Slices of a read resolution (`write == false`) may map `PROT_READ`-only memory: only
    /// resolve with `write == true` what will be written.
    pub fn resolve(&self, iova: Iova, len: u64, write: bool) -> Result<Vec<Segment<'_>>, DmaError> {
        let mut segments = Vec::new();
        self.resolve_each(iova, len, write, |s| segments.push(s))?;
        Ok(segments)
    }

    /// [`resolve`](Self::resolve), handing each segment to `each` as it is found instead of
    /// collecting them (a caller that builds its own list saves an allocation). On an error,
    /// segments already handed out must be discarded: nothing may be accessed through them.
    pub fn resolve_each<'a>(
        &'a self,
        iova: Iova,
        len: u64,
        write: bool,
        mut each: impl FnMut(Segment<'a>),
    ) -> Result<(), DmaError> {
        let len_us = usize::try_from(len).map_err(|_| DmaError::Overflow { iova, size: len })?;
        let end = iova
            .checked_add(len)
            .ok_or(DmaError::Overflow { iova, size: len })?;
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
            // `start + w.size` and `w.file_offset + w.size` do not overflow: checked at map time.
            let piece_end = end.raw().min(start + w.size);
            let piece_len = piece_end - cur;
            let segment = match &w.store {
                Store::Message => Segment::Message {
                    iova: Iova(cur),
                    len: piece_len,
                },
                Store::Mapped(region) => {
                    let count = usize::try_from(piece_len)
                        .map_err(|_| DmaError::Overflow { iova, size: len })?;
                    let slice = region
                        .get_slice(MemoryRegionAddress(cur - start), count)
                        .map_err(DmaError::Access)?;
                    Segment::Mapped {
                        iova: Iova(cur),
                        slice,
                    }
                }
                Store::File(file) => Segment::File {
                    iova: Iova(cur),
                    slice: FileSlice::new(
                        file,
                        Iova(cur),
                        w.file_offset + (cur - start),
                        piece_len,
                    ),
                },
            };
            each(segment);
            cur = piece_end;
        }
        Ok(())
    }

    /// Stores `value` little-endian at the 8-byte aligned `iova`. The window must be fd-backed
    /// ([`DmaError::MessageOnly`] otherwise) and writable. In a mapped window this is one atomic
    /// 8-byte store (release ordering), so an observer never sees it torn; in a file-accessed
    /// window it is one 8-byte `pwrite`, which an observer mapping the file may see torn.
    pub fn store_u64(&self, iova: Iova, value: u64) -> Result<(), DmaError> {
        if !iova.raw().is_multiple_of(8) {
            return Err(DmaError::Misaligned(iova));
        }
        let segments = self.resolve(iova, 8, true)?;
        match segments.as_slice() {
            [Segment::Mapped { slice, .. }] => slice
                .store(value.to_le(), 0, Ordering::Release)
                .map_err(|e| DmaError::Access(e.into())),
            [Segment::File { slice, .. }] => slice.write(0, &value.to_le_bytes()),
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
}

fn describe(iova: u64, w: &Window) -> DmaWindow {
    DmaWindow {
        iova: Iova(iova),
        size: w.size,
        file_offset: w.file_offset,
        perms: w.perms,
        backing: match w.store {
            Store::Mapped(_) => WindowBacking::Mapped,
            Store::File(_) => WindowBacking::File,
            Store::Message => WindowBacking::MessageOnly,
        },
    }
}

/// Checks the client's file for the window and decides how it is reached (module docs).
fn open_window(
    iova: Iova,
    size: u64,
    file_offset: u64,
    perms: DmaPermissions,
    fd: OwnedFd,
) -> Result<Store, DmaError> {
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
    match dma_file::inspect(&file, iova, file_offset, perms)? {
        Access::Map => map_file(iova, size, file_offset, perms, file).map(Store::Mapped),
        Access::File => Ok(Store::File(file)),
    }
}

/// Maps a window of a file sealed against shrinking (checked to lie inside the file).
fn map_file(
    iova: Iova,
    size: u64,
    file_offset: u64,
    perms: DmaPermissions,
    file: File,
) -> Result<GuestRegionMmap<()>, DmaError> {
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
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;

    use super::*;
    use crate::test_fds::{fd_of, map_fd, memfd, sealed_memfd, TempFile};

    const PAGE: u64 = 4096;

    /// Both kinds of client memory: (file, how the server must reach it).
    fn both_kinds(len: u64) -> [(File, WindowBacking); 2] {
        [
            (sealed_memfd(len), WindowBacking::Mapped),
            (memfd(len), WindowBacking::File),
        ]
    }

    #[test]
    fn map_read_write_shares_bytes_with_the_file() {
        for (f, backing) in both_kinds(4 * PAGE) {
            shares_bytes_with_the_file(f, backing);
        }
    }

    fn shares_bytes_with_the_file(mut f: File, backing: WindowBacking) {
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
        assert_eq!(w.backing, backing);
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
        for (f, _) in both_kinds(2 * PAGE) {
            rejects_window_past_end_of(&f);
        }
    }

    fn rejects_window_past_end_of(f: &File) {
        let mut space = DmaSpace::new();
        assert!(matches!(
            space.map(Iova(0), 3 * PAGE, 0, DmaPermissions::READ_ONLY, Some(fd_of(f))),
            Err(DmaError::FileTooSmall { file_offset: 0, size, file_len })
                if size == 3 * PAGE && file_len == 2 * PAGE
        ));
        assert!(matches!(
            space.map(
                Iova(0),
                2 * PAGE,
                PAGE,
                DmaPermissions::READ_WRITE,
                Some(fd_of(f))
            ),
            Err(DmaError::FileTooSmall { .. })
        ));
        assert!(matches!(
            space.map(
                Iova(0),
                PAGE,
                u64::MAX - 10,
                DmaPermissions::READ_WRITE,
                Some(fd_of(f))
            ),
            Err(DmaError::MisalignedOffset(_))
        ));
        assert!(matches!(
            space.map(
                Iova(0),
                PAGE,
                !(PAGE - 1),
                DmaPermissions::READ_WRITE,
                Some(fd_of(f))
            ),
            Err(DmaError::Overflow { .. })
        ));
        assert!(matches!(
            space.map(Iova(0), PAGE, 1, DmaPermissions::READ_WRITE, Some(fd_of(f))),
            Err(DmaError::MisalignedOffset(1))
        ));
        assert!(space.is_empty());
    }

    #[test]
    fn rejects_non_regular_fd() {
        let (r, _w) = rustix::pipe::pipe().unwrap();
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
        let f = sealed_memfd(2 * PAGE);
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
        for (f, _) in both_kinds(PAGE) {
            store_u64_checks(&f);
        }
    }

    fn store_u64_checks(f: &File) {
        let mut space = DmaSpace::new();
        map_fd(&mut space, Iova(0), PAGE, DmaPermissions::READ_WRITE, f);
        space
            .map(Iova(PAGE), PAGE, 0, DmaPermissions::READ_WRITE, None)
            .unwrap();
        space.store_u64(Iova(8), 0x0102_0304_0506_0708).unwrap();
        let mut b = [0u8; 8];
        f.read_exact_at(&mut b, 8).unwrap();
        assert_eq!(u64::from_le_bytes(b), 0x0102_0304_0506_0708, "in the file");
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
    fn fd_windows_and_bytes_are_limited_and_given_back() {
        let mut space = DmaSpace::with_limits(DmaLimits {
            max_windows: 8,
            max_fd_windows: 2,
            max_fd_bytes: 3 * PAGE,
        });
        for (f, _) in both_kinds(4 * PAGE) {
            space.unmap_all();
            let rw = DmaPermissions::READ_WRITE;
            space.map(Iova(0), PAGE, 0, rw, Some(fd_of(&f))).unwrap();
            // 3 pages in all: one more page would be 4.
            assert!(matches!(
                space.map(Iova(PAGE), 3 * PAGE, 0, rw, Some(fd_of(&f))),
                Err(DmaError::TooManyBytes { max, held, size })
                    if max == 3 * PAGE && held == PAGE && size == 3 * PAGE
            ));
            space
                .map(Iova(PAGE), 2 * PAGE, 0, rw, Some(fd_of(&f)))
                .unwrap();
            assert_eq!((space.fd_windows(), space.fd_bytes()), (2, 3 * PAGE));
            // A third fd is refused even if it is small; fd-less windows cost no fd.
            space.unmap(Iova(0), PAGE).unwrap();
            space.map(Iova(0), PAGE, 0, rw, Some(fd_of(&f))).unwrap();
            assert!(matches!(
                space.map(Iova(8 * PAGE), PAGE, 0, rw, Some(fd_of(&f))),
                Err(DmaError::TooManyFdWindows(2))
            ));
            space.map(Iova(8 * PAGE), 64 * PAGE, 0, rw, None).unwrap();
            assert_eq!((space.fd_windows(), space.fd_bytes()), (2, 3 * PAGE));
            // Unmapping gives the budget back.
            space.unmap(Iova(PAGE), 2 * PAGE).unwrap();
            assert_eq!((space.fd_windows(), space.fd_bytes()), (1, PAGE));
            space
                .map(Iova(PAGE), 2 * PAGE, 0, rw, Some(fd_of(&f)))
                .unwrap();
            space.unmap_all();
            assert_eq!((space.fd_windows(), space.fd_bytes()), (0, 0));
        }
    }

    #[test]
    fn rejects_mapping_a_read_only_fd_writable() {
        // A regular file (file-accessed): the zero-length pwrite probe fails with EBADF.
        let tmp = TempFile::new("ro", PAGE);
        let ro = File::open(&tmp.0).unwrap();
        let mut space = DmaSpace::new();
        assert!(matches!(
            space.map(Iova(0), PAGE, 0, DmaPermissions::READ_WRITE, Some(ro.into())),
            Err(DmaError::FileAccess { write: true, source, .. })
                if source.raw_os_error() == Some(libc::EBADF)
        ));
        let ro = File::open(&tmp.0).unwrap();
        space
            .map(Iova(0), PAGE, 0, DmaPermissions::READ_ONLY, Some(ro.into()))
            .unwrap();
        assert_eq!(space.find(Iova(0)).unwrap().backing, WindowBacking::File);
        let mut b = [0xffu8; 4];
        space.read(Iova(0), &mut b).unwrap();
        assert_eq!(b, [0; 4]);
        // A sealed memfd (mapped): mmap(PROT_WRITE) of a read-only fd fails.
        let f = sealed_memfd(PAGE);
        let ro = File::open(format!("/proc/self/fd/{}", f.as_raw_fd())).unwrap();
        assert!(matches!(
            space.map(
                Iova(PAGE),
                PAGE,
                0,
                DmaPermissions::READ_WRITE,
                Some(ro.into())
            ),
            Err(DmaError::Map { .. })
        ));
        let ro = File::open(format!("/proc/self/fd/{}", f.as_raw_fd())).unwrap();
        space
            .map(
                Iova(PAGE),
                PAGE,
                0,
                DmaPermissions::READ_ONLY,
                Some(ro.into()),
            )
            .unwrap();
        assert_eq!(
            space.find(Iova(PAGE)).unwrap().backing,
            WindowBacking::Mapped
        );
    }
}
