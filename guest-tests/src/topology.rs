//! PCIe topology: the builder lives in `vugpu_device::topology`, shared with `vugpu qemu-args`,
//! so the runner's QEMU command line and the one `vugpu qemu-args` prints cannot drift apart.

pub use vugpu_device::topology::*;
