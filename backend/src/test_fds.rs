//! Client-side files for the unit tests: memfds with and without seals, regular files, fds of
//! them.
#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;

use crate::{DmaPermissions, DmaSpace, Iova};

/// A memfd of `len` bytes without seals (as a client that does not seal its memory).
pub fn memfd(len: u64) -> File {
    memfd_flags(len, 0)
}

/// A memfd of `len` bytes sealed against shrinking and growing (as QEMU's
/// `memory-backend-memfd`, which seals by default).
pub fn sealed_memfd(len: u64) -> File {
    let f = memfd_flags(len, libc::MFD_ALLOW_SEALING);
    add_seals(&f, libc::F_SEAL_SHRINK | libc::F_SEAL_GROW);
    f
}

/// A memfd of `len` bytes that can be sealed later.
pub fn sealable_memfd(len: u64) -> File {
    memfd_flags(len, libc::MFD_ALLOW_SEALING)
}

fn memfd_flags(len: u64, flags: libc::c_uint) -> File {
    // SAFETY: valid C string literal; the result is checked.
    let raw = unsafe { libc::memfd_create(c"dma-test".as_ptr(), libc::MFD_CLOEXEC | flags) };
    assert!(raw >= 0);
    // SAFETY: fresh fd owned by nobody else.
    let f = File::from(unsafe { OwnedFd::from_raw_fd(raw) });
    f.set_len(len).unwrap();
    f
}

/// Adds `seals` to a memfd created with `MFD_ALLOW_SEALING`.
pub fn add_seals(f: &File, seals: libc::c_int) {
    // SAFETY: F_ADD_SEALS takes an int and touches no memory of ours; `f` outlives the call.
    let rc = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_ADD_SEALS, seals) };
    assert_eq!(rc, 0, "F_ADD_SEALS: {}", std::io::Error::last_os_error());
}

/// Sets or clears `O_APPEND` on the file description `f` shares with every dup of it.
pub fn set_append(f: &File, on: bool) {
    // SAFETY: F_GETFL takes no argument and touches no memory of ours; `f` outlives the call.
    let fl = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFL) };
    assert!(fl >= 0);
    let fl = if on {
        fl | libc::O_APPEND
    } else {
        fl & !libc::O_APPEND
    };
    // SAFETY: F_SETFL takes an int and touches no memory of ours; `f` outlives the call.
    assert_eq!(unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFL, fl) }, 0);
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
