//! Client-side files for the unit tests: memfds with and without seals, regular files, fds of
//! them.
#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use rustix::fs::{MemfdFlags, OFlags, SealFlags};

use crate::{DmaPermissions, DmaSpace, Iova};

/// A memfd of `len` bytes without seals (as a client that does not seal its memory).
pub fn memfd(len: u64) -> File {
    memfd_flags(len, MemfdFlags::empty())
}

/// A memfd of `len` bytes sealed against shrinking and growing (as QEMU's
/// `memory-backend-memfd`, which seals by default).
pub fn sealed_memfd(len: u64) -> File {
    let f = memfd_flags(len, MemfdFlags::ALLOW_SEALING);
    add_seals(&f, SealFlags::SHRINK | SealFlags::GROW);
    f
}

/// A memfd of `len` bytes that can be sealed later.
pub fn sealable_memfd(len: u64) -> File {
    memfd_flags(len, MemfdFlags::ALLOW_SEALING)
}

fn memfd_flags(len: u64, flags: MemfdFlags) -> File {
    let f = File::from(rustix::fs::memfd_create(c"dma-test", MemfdFlags::CLOEXEC | flags).unwrap());
    f.set_len(len).unwrap();
    f
}

/// Adds `seals` to a memfd created with `MFD_ALLOW_SEALING`.
pub fn add_seals(f: &File, seals: SealFlags) {
    rustix::fs::fcntl_add_seals(f, seals).expect("F_ADD_SEALS");
}

/// Sets or clears `O_APPEND` on the file description `f` shares with every dup of it.
pub fn set_append(f: &File, on: bool) {
    let mut fl = rustix::fs::fcntl_getfl(f).unwrap();
    fl.set(OFlags::APPEND, on);
    rustix::fs::fcntl_setfl(f, fl).unwrap();
}

/// An owned dup of `f`, to hand to `DmaSpace::map` (the client keeps `f`).
pub fn fd_of(f: &File) -> OwnedFd {
    f.try_clone().unwrap().into()
}

/// Maps `len` bytes of `f` (from file offset 0) at `iova`; the test fails if it is refused.
pub fn map_fd(space: &mut DmaSpace, iova: Iova, len: u64, perms: DmaPermissions, f: &File) {
    space.map(iova, len, 0, perms, Some(fd_of(f))).unwrap();
}

/// A regular file of `len` zero bytes in the temporary directory (removed on drop).
pub struct TempFile(pub PathBuf);

impl TempFile {
    pub fn new(tag: &str, len: u64) -> TempFile {
        let path = std::env::temp_dir().join(format!(
            "vugpu-dma-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&path, vec![0u8; len as usize]).unwrap();
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
