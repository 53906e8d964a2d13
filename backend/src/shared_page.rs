//! A page of memory shared with the client through an mmappable region (e.g. a doorbell page in
//! a register BAR).
//!
//! The page lives at `page_offset` inside a sealed memfd of `file_len` bytes (sparse: only the
//! page ever holds memory), so it can sit at the same offset in the fd as in the region the client
//! mmaps (the client maps `region offset + area offset`). The server maps only the page. The
//! client's stores arrive without any message; the device polls the page with atomic loads.
//! Seals (`F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`) keep a client from truncating the file under
//! the server's mapping.

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestRegionMmap, MemoryRegionAddress, MmapRegion,
};

use crate::vram::{create_sealed_memfd, VramError};

/// Size of the shared page.
pub const PAGE_SIZE: u64 = 4096;

/// A 4 KiB page shared with the client. Offsets are relative to the page.
#[derive(Debug)]
pub struct SharedPage {
    file: Arc<std::fs::File>,
    region: GuestRegionMmap<()>,
    page_offset: u64,
}

impl SharedPage {
    /// Creates a memfd of `file_len` bytes and maps the page at `page_offset` (page aligned,
    /// `page_offset + 4096 <= file_len`).
    pub fn new(file_len: u64, page_offset: u64) -> Result<Self, VramError> {
        let end = page_offset.checked_add(PAGE_SIZE);
        if !page_offset.is_multiple_of(PAGE_SIZE) || end.is_none_or(|e| e > file_len) {
            return Err(VramError::InvalidSize(file_len));
        }
        let file = Arc::new(create_sealed_memfd(c"vugpu-doorbell", file_len)?);
        let mapping = MmapRegion::<()>::build(
            Some(FileOffset::from_arc(file.clone(), page_offset)),
            PAGE_SIZE as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
        )
        .map_err(VramError::Map)?;
        let region = GuestRegionMmap::new(mapping, GuestAddress(0))
            .ok_or(VramError::InvalidSize(file_len))?;
        Ok(SharedPage {
            file,
            region,
            page_offset,
        })
    }

    /// The file to hand to the client (the page is at [`SharedPage::page_offset`] in it).
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Offset of the page in the file.
    pub fn page_offset(&self) -> u64 {
        self.page_offset
    }

    /// Atomic (acquire) load of the little-endian dword at the 4-byte aligned `offset`; `None`
    /// outside the page or misaligned.
    pub fn load_u32(&self, offset: u64) -> Option<u32> {
        if !offset.is_multiple_of(4) {
            return None;
        }
        self.region
            .load::<u32>(MemoryRegionAddress(offset), Ordering::Acquire)
            .ok()
            .map(u32::from_le)
    }

    /// Atomic (release) store of a little-endian dword; false outside the page or misaligned.
    pub fn store_u32(&self, offset: u64, value: u32) -> bool {
        offset.is_multiple_of(4)
            && self
                .region
                .store(
                    value.to_le(),
                    MemoryRegionAddress(offset),
                    Ordering::Release,
                )
                .is_ok()
    }

    /// Zeroes the page.
    pub fn clear(&self) {
        for off in (0..PAGE_SIZE).step_by(8) {
            let _ = self
                .region
                .store(0u64, MemoryRegionAddress(off), Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;

    use super::*;

    #[test]
    fn client_mapping_of_the_fd_shares_the_page() {
        let page = SharedPage::new(0x20_1000, 0x20_0000).unwrap();
        // The client maps the fd at page_offset, as QEMU maps a sparse area.
        let dup = File::from(page.as_fd().try_clone_to_owned().unwrap());
        let client = MmapRegion::<()>::from_file(FileOffset::new(dup, 0x20_0000), 4096).unwrap();
        let client = GuestRegionMmap::new(client, GuestAddress(0)).unwrap();
        client
            .write_obj(0x1234_5678u32, MemoryRegionAddress(0x40))
            .unwrap();
        assert_eq!(page.load_u32(0x40), Some(0x1234_5678));
        assert!(page.store_u32(0x80, 7));
        assert_eq!(
            client.read_obj::<u32>(MemoryRegionAddress(0x80)).unwrap(),
            7
        );
        page.clear();
        assert_eq!(page.load_u32(0x40), Some(0));
        assert_eq!(page.load_u32(0x41), None);
        assert_eq!(page.load_u32(4096), None);
        assert!(!page.store_u32(4094, 1));
        assert_eq!(page.page_offset(), 0x20_0000);
    }

    #[test]
    fn rejects_bad_layout_and_truncation() {
        assert!(SharedPage::new(0x1000, 0x1000).is_err());
        assert!(SharedPage::new(0x3000, 0x800).is_err());
        assert!(SharedPage::new(0x2000, u64::MAX - 0xfff).is_err());
        let page = SharedPage::new(0x2000, 0x1000).unwrap();
        assert_eq!(
            rustix::fs::ftruncate(page.as_fd(), 0),
            Err(rustix::io::Errno::PERM),
            "sealed against shrinking"
        );
        assert_eq!(page.load_u32(0), Some(0));
    }
}
