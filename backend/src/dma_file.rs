//! File-accessed DMA windows: the client's file, read and written with `pread`/`pwrite`, never
//! mapped.
//!
//! Why: a DMA_MAP hands the server a file descriptor that the client keeps. A client may shrink
//! that file (`ftruncate`) whenever it likes, and a load or store through a server mapping of a
//! page past the new end of the file raises SIGBUS, which kills the whole server. Only a file
//! sealed against shrinking (`F_SEAL_SHRINK`; QEMU's `memory-backend-memfd` seals its memfds by
//! default) is safe to map. Every other file (an unsealed memfd, a tmpfs or disk file) is reached
//! through a [`FileSlice`], whose accesses are system calls: a vanished page is a short read or a
//! failed length check, i.e. an error ([`DmaError::Truncated`]), never a signal.
//!
//! What is checked:
//! - at DMA_MAP ([`inspect`]): the fd's seals decide the access method; a file-accessed window
//!   must be readable and writable with `pread`/`pwrite` as its permissions require (probed with
//!   zero-length calls, which fail on an fd opened without that access and on file systems that
//!   do not implement it, e.g. `write` on hugetlbfs), and the fd must not be in append mode (on
//!   Linux, `pwrite` on an `O_APPEND` description ignores the offset);
//! - at every read: a read that ends early (end of file) fails at the first missing byte;
//! - at every write: the file's current length (a `pwrite` past the end would silently grow the
//!   file back instead of failing) and the append flag (the client shares the file description
//!   and can set `O_APPEND` at any time).
//!
//! What is not prevented: a client that shrinks the file or sets `O_APPEND` between that check
//! and the `pwrite` (a race it has to win on every write) makes one write grow its own file, by at
//! most the size of that write. The server stays unaffected.
//!
//! A file-accessed window is not atomic at the granularity of a store: an 8-byte write is one
//! 8-byte `pwrite`, which an observer mapping the file may see torn.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use rustix::fs::{OFlags, SealFlags};

use crate::addr::Iova;
use crate::dma_space::{DmaError, DmaPermissions};

/// How the server reaches a window with an fd (decided once, at DMA_MAP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// The file is sealed against shrinking: map it.
    Map,
    /// Anything else: `pread`/`pwrite`.
    File,
}

/// The file's seals; none for a file that does not support sealing (`F_GET_SEALS` fails with
/// EINVAL there), which is what it is: not sealed.
fn seals(file: &File) -> SealFlags {
    rustix::fs::fcntl_get_seals(file).unwrap_or(SealFlags::empty())
}

fn appending(file: &File) -> io::Result<bool> {
    Ok(rustix::fs::fcntl_getfl(file)?.contains(OFlags::APPEND))
}

/// Decides how the window `[iova, iova + size)` at `file_offset` of `file` is reached and checks
/// that it can be, with `perms`. The caller has checked that the window lies inside the file.
pub(crate) fn inspect(
    file: &File,
    iova: Iova,
    file_offset: u64,
    perms: DmaPermissions,
) -> Result<Access, DmaError> {
    let seals = seals(file);
    if perms.write && seals.intersects(SealFlags::WRITE | SealFlags::FUTURE_WRITE) {
        return Err(DmaError::WriteSealed(iova));
    }
    if seals.contains(SealFlags::SHRINK) {
        return Ok(Access::Map);
    }
    if appending(file).map_err(DmaError::BadFd)? {
        return Err(DmaError::Append(iova));
    }
    // Zero-length calls check the access mode (EBADF) and that the file system implements the
    // call (EINVAL), and move no byte.
    if perms.read {
        file.read_at(&mut [], file_offset)
            .map_err(|source| DmaError::FileAccess {
                iova,
                write: false,
                source,
            })?;
    }
    if perms.write {
        file.write_at(&[], file_offset)
            .map_err(|source| DmaError::FileAccess {
                iova,
                write: true,
                source,
            })?;
    }
    Ok(Access::File)
}

/// A contiguous part of a file-accessed window: `len` bytes at `file_offset` of the client's
/// file, starting at `iova`. Reads and writes are system calls on the file; when the client has
/// shrunk the file they fail with [`DmaError::Truncated`] (see the module documentation).
#[derive(Debug, Clone, Copy)]
pub struct FileSlice<'a> {
    file: &'a File,
    iova: Iova,
    file_offset: u64,
    len: u64,
}

impl<'a> FileSlice<'a> {
    /// `len` bytes of `file` at `file_offset`, seen at `iova`. The caller guarantees that
    /// `iova + len` and `file_offset + len` do not overflow (true inside a window).
    pub(crate) fn new(file: &'a File, iova: Iova, file_offset: u64, len: u64) -> Self {
        FileSlice {
            file,
            iova,
            file_offset,
            len,
        }
    }

    /// Address of the first byte.
    pub fn iova(&self) -> Iova {
        self.iova
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Zero-length (never produced by [`DmaSpace::resolve`](crate::DmaSpace::resolve)).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Address of byte `offset` of the slice (`offset <= len`).
    fn at(&self, offset: u64) -> Iova {
        Iova(self.iova.raw() + offset)
    }

    /// The file position of `[offset, offset + n)`, which must lie inside the slice.
    fn position(&self, offset: u64, n: usize) -> Result<u64, DmaError> {
        let end = offset.checked_add(n as u64);
        if end.is_none_or(|e| e > self.len) {
            return Err(DmaError::Unmapped {
                iova: self.at(offset.min(self.len)),
                len: n,
            });
        }
        Ok(self.file_offset + offset)
    }

    /// Reads `buf.len()` bytes at byte `offset` of the slice. Fails with
    /// [`DmaError::Truncated`] at the first byte past the end of the file.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        let pos = self.position(offset, buf.len())?;
        let mut done = 0usize;
        while let Some(rest) = buf.get_mut(done..).filter(|r| !r.is_empty()) {
            match self.file.read_at(rest, pos + done as u64) {
                Ok(0) => {
                    return Err(DmaError::Truncated {
                        iova: self.at(offset + done as u64),
                    })
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(DmaError::FileIo {
                        iova: self.at(offset + done as u64),
                        write: false,
                        source,
                    })
                }
            }
        }
        Ok(())
    }

    /// Writes `data` at byte `offset` of the slice. Nothing is written if the file no longer
    /// covers all of it ([`DmaError::Truncated`] at the first byte past its end) or if the
    /// client put the fd in append mode ([`DmaError::Append`]).
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), DmaError> {
        let pos = self.position(offset, data.len())?;
        let io_err = |source| DmaError::FileIo {
            iova: self.at(offset),
            write: true,
            source,
        };
        let file_len = self.file.metadata().map_err(io_err)?.len();
        if pos + data.len() as u64 > file_len {
            return Err(DmaError::Truncated {
                iova: self.at(offset + file_len.saturating_sub(pos)),
            });
        }
        if appending(self.file).map_err(io_err)? {
            return Err(DmaError::Append(self.at(offset)));
        }
        self.file.write_all_at(data, pos).map_err(io_err)
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::os::fd::OwnedFd;

    use rustix::fs::MemfdFlags;

    use super::*;
    use crate::test_fds::{
        add_seals, fd_of, map_fd, memfd, sealable_memfd, sealed_memfd, set_append, TempFile,
    };
    use crate::{DmaSpace, Segment, WindowBacking};

    const PAGE: u64 = 4096;

    #[test]
    fn rejects_reading_through_a_write_only_fd() {
        let tmp = TempFile::new("wo", PAGE);
        let wo = || -> OwnedFd {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&tmp.0)
                .unwrap()
                .into()
        };
        let mut space = DmaSpace::new();
        assert!(matches!(
            space.map(Iova(0), PAGE, 0, DmaPermissions::READ_WRITE, Some(wo())),
            Err(DmaError::FileAccess { write: false, source, .. })
                if source.raw_os_error() == Some(libc::EBADF)
        ));
        let write_only = DmaPermissions {
            read: false,
            write: true,
        };
        space.map(Iova(0), PAGE, 0, write_only, Some(wo())).unwrap();
        space.write(Iova(16), b"wo").unwrap();
        assert_eq!(&std::fs::read(&tmp.0).unwrap()[16..18], b"wo");
    }

    /// The access method follows the seals: only a file sealed against shrinking is mapped.
    #[test]
    fn maps_only_files_sealed_against_shrinking() {
        let mut space = DmaSpace::new();
        let sealed = sealed_memfd(PAGE);
        map_fd(
            &mut space,
            Iova(0),
            PAGE,
            DmaPermissions::READ_WRITE,
            &sealed,
        );
        // F_SEAL_GROW alone does not keep the file from shrinking.
        let grow_only = sealable_memfd(PAGE);
        add_seals(&grow_only, SealFlags::GROW | SealFlags::SEAL);
        map_fd(
            &mut space,
            Iova(PAGE),
            PAGE,
            DmaPermissions::READ_WRITE,
            &grow_only,
        );
        // A memfd created without MFD_ALLOW_SEALING (F_SEAL_SEAL only).
        let unsealed = memfd(PAGE);
        map_fd(
            &mut space,
            Iova(2 * PAGE),
            PAGE,
            DmaPermissions::READ_WRITE,
            &unsealed,
        );
        // A regular file (no seals at all).
        let tmp = TempFile::new("reg", PAGE);
        let reg = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&tmp.0)
            .unwrap();
        map_fd(
            &mut space,
            Iova(3 * PAGE),
            PAGE,
            DmaPermissions::READ_WRITE,
            &reg,
        );
        let backings: Vec<_> = space.windows().map(|w| w.backing).collect();
        assert_eq!(
            backings,
            [
                WindowBacking::Mapped,
                WindowBacking::File,
                WindowBacking::File,
                WindowBacking::File
            ]
        );
        let segs = space.resolve(Iova(PAGE - 8), 3 * PAGE, true).unwrap();
        assert_eq!(segs.len(), 4);
        assert!(
            matches!(&segs[0], Segment::Mapped { iova: Iova(i), slice } if *i == PAGE - 8 && slice.len() == 8)
        );
        for (k, s) in segs[1..].iter().enumerate() {
            let start = (k as u64 + 1) * PAGE;
            assert!(
                matches!(s, Segment::File { iova: Iova(i), slice } if *i == start && slice.iova() == Iova(start)),
                "{s:?}"
            );
        }
        assert_eq!(segs[3].len(), PAGE - 8);
        // The same bytes, whichever way they are reached: one write across all four windows.
        let data: Vec<u8> = (0..4 * PAGE).map(|i| (i * 7) as u8).collect();
        space.write(Iova(0), &data).unwrap();
        let mut back = vec![0u8; data.len()];
        space.read(Iova(0), &mut back).unwrap();
        assert_eq!(back, data);
        for (k, f) in [&sealed, &grow_only, &unsealed, &reg]
            .into_iter()
            .enumerate()
        {
            let mut b = vec![0u8; PAGE as usize];
            f.read_exact_at(&mut b, 0).unwrap();
            let at = k * PAGE as usize;
            assert_eq!(b, &data[at..at + PAGE as usize], "file {k}");
        }
    }

    /// The hole this design closes: a client that shrinks an unsealed file under the server
    /// would make a mapped access raise SIGBUS (killing the test process); file-accessed windows
    /// fail with `Truncated` at the first byte past the new end of the file.
    #[test]
    fn shrunk_unsealed_file_fails_cleanly() {
        let f = memfd(2 * PAGE);
        let mut space = DmaSpace::new();
        let base = 0x10_0000;
        space
            .map(
                Iova(base),
                2 * PAGE,
                0,
                DmaPermissions::READ_WRITE,
                Some(fd_of(&f)),
            )
            .unwrap();
        space.write(Iova(base + PAGE - 2), &[1, 2, 3, 4]).unwrap();
        // The sealed kind really is protected: shrinking it is refused.
        let sealed = sealed_memfd(PAGE);
        assert!(sealed.set_len(0).is_err(), "F_SEAL_SHRINK");

        // Shrink to the middle of the second page.
        f.set_len(PAGE + 0x10).unwrap();
        let mut b = [0u8; 4];
        space.read(Iova(base + PAGE - 2), &mut b).unwrap();
        assert_eq!(b, [1, 2, 3, 4], "still inside the file");
        let mut b = [0u8; 0x20];
        assert!(matches!(
            space.read(Iova(base + PAGE), &mut b),
            Err(DmaError::Truncated { iova: Iova(i) }) if i == base + PAGE + 0x10
        ));
        assert!(matches!(
            space.write(Iova(base + PAGE + 8), &[0xaa; 16]),
            Err(DmaError::Truncated { iova: Iova(i) }) if i == base + PAGE + 0x10
        ));
        assert_eq!(
            f.metadata().unwrap().len(),
            PAGE + 0x10,
            "no write past the end"
        );
        let mut b = [0u8; 8];
        f.read_exact_at(&mut b, PAGE + 8).unwrap();
        assert_eq!(b, [0; 8], "a refused write leaves the file untouched");

        // Shrink to nothing: every access fails, nothing grows the file back.
        f.set_len(0).unwrap();
        let mut b = [0u8; 8];
        assert!(matches!(
            space.read(Iova(base), &mut b),
            Err(DmaError::Truncated { iova: Iova(i) }) if i == base
        ));
        assert!(matches!(
            space.write(Iova(base + 0x40), &b),
            Err(DmaError::Truncated { iova: Iova(i) }) if i == base + 0x40
        ));
        assert!(matches!(
            space.store_u64(Iova(base + PAGE), 7),
            Err(DmaError::Truncated { iova: Iova(i) }) if i == base + PAGE
        ));
        let segs = space.resolve(Iova(base), 16, false).unwrap();
        let Segment::File { slice, .. } = &segs[0] else {
            panic!("{segs:?}")
        };
        assert!(matches!(
            slice.read(8, &mut b),
            Err(DmaError::Truncated { iova: Iova(i) }) if i == base + 8
        ));
        assert!(
            matches!(slice.read(9, &mut b), Err(DmaError::Unmapped { .. })),
            "past the slice"
        );
        assert_eq!(f.metadata().unwrap().len(), 0);

        // The client grows the file again: the window works again (zeros, as fresh memory).
        f.set_len(2 * PAGE).unwrap();
        space.store_u64(Iova(base + PAGE), 7).unwrap();
        let mut b = [0xffu8; 16];
        space.read(Iova(base + PAGE - 8), &mut b).unwrap();
        assert_eq!(b, [0, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn file_window_refuses_append_mode() {
        let f = memfd(PAGE);
        let mut space = DmaSpace::new();
        set_append(&f, true);
        assert!(matches!(
            space.map(
                Iova(0),
                PAGE,
                0,
                DmaPermissions::READ_WRITE,
                Some(fd_of(&f))
            ),
            Err(DmaError::Append(Iova(0)))
        ));
        set_append(&f, false);
        map_fd(&mut space, Iova(0), PAGE, DmaPermissions::READ_WRITE, &f);
        // The client shares the file description with the server: O_APPEND set after DMA_MAP
        // would send every pwrite to the end of the file.
        set_append(&f, true);
        assert!(matches!(
            space.write(Iova(0x10), b"abc"),
            Err(DmaError::Append(Iova(0x10)))
        ));
        assert_eq!(f.metadata().unwrap().len(), PAGE, "nothing appended");
        let mut b = [0xffu8; 3];
        space.read(Iova(0x10), &mut b).unwrap();
        assert_eq!(b, [0; 3]);
        set_append(&f, false);
        space.write(Iova(0x10), b"abc").unwrap();
        f.read_exact_at(&mut b, 0x10).unwrap();
        assert_eq!(&b, b"abc");
        // A mapped window does not care.
        let sealed = sealed_memfd(PAGE);
        set_append(&sealed, true);
        map_fd(
            &mut space,
            Iova(PAGE),
            PAGE,
            DmaPermissions::READ_WRITE,
            &sealed,
        );
        space.write(Iova(PAGE), b"x").unwrap();
    }

    /// hugetlbfs has no `write`: an unsealed hugetlbfs file can only be a read-only window (a
    /// writable one would fail every device write). Skipped, saying so, on a kernel without
    /// hugetlbfs; no huge page is needed (nothing is allocated).
    #[test]
    fn rejects_writable_window_of_unsealed_hugetlbfs_file() {
        let flags = MemfdFlags::CLOEXEC | MemfdFlags::HUGETLB;
        let f = match rustix::fs::memfd_create(c"dma-huge", flags) {
            Ok(fd) => File::from(fd),
            Err(e) => {
                eprintln!("SKIP: no hugetlbfs memfd: {}", io::Error::from(e));
                return;
            }
        };
        f.set_len(2 << 20).unwrap();
        let mut space = DmaSpace::new();
        assert!(matches!(
            space.map(Iova(0), PAGE, 0, DmaPermissions::READ_WRITE, Some(fd_of(&f))),
            Err(DmaError::FileAccess { write: true, source, .. })
                if source.raw_os_error() == Some(libc::EINVAL)
        ));
        map_fd(&mut space, Iova(0), PAGE, DmaPermissions::READ_ONLY, &f);
        assert_eq!(space.find(Iova(0)).unwrap().backing, WindowBacking::File);
    }

    #[test]
    fn rejects_writable_window_of_write_sealed_file() {
        for extra in [SealFlags::empty(), SealFlags::SHRINK] {
            let f = sealable_memfd(PAGE);
            f.write_all_at(b"ro", 0).unwrap();
            add_seals(&f, SealFlags::WRITE | extra);
            let mut space = DmaSpace::new();
            assert!(matches!(
                space.map(
                    Iova(0),
                    PAGE,
                    0,
                    DmaPermissions::READ_WRITE,
                    Some(fd_of(&f))
                ),
                Err(DmaError::WriteSealed(Iova(0)))
            ));
            map_fd(&mut space, Iova(0), PAGE, DmaPermissions::READ_ONLY, &f);
            let mut b = [0u8; 2];
            space.read(Iova(0), &mut b).unwrap();
            assert_eq!(&b, b"ro");
            let want = if extra.is_empty() {
                WindowBacking::File
            } else {
                WindowBacking::Mapped
            };
            assert_eq!(space.find(Iova(0)).unwrap().backing, want);
        }
    }
}
