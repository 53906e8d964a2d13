//! The vugpu GPU model.
//!
//! A PCI Express function ([`pci`]) with a register BAR ([`regs`], MSI-X table/PBA in [`msix`])
//! and a VRAM BAR (memfd from `vugpu-backend`), composed in [`gpu::Gpu`], which implements the
//! protocol crate's `DeviceBackend`. The model is pure: interrupts leave through
//! [`irq::Notifier`], memory through `vugpu-backend`. [`event_loop`] is the only code that waits
//! on fds.

pub mod config;
pub mod config_file;
pub mod ctl;
pub mod engine;
pub mod event_loop;
pub mod gpu;
pub mod hw_header;
pub mod irq;
pub mod log;
pub mod mmu;
pub mod msix;
pub mod pci;
pub mod probe;
pub mod qemu_args;
pub mod regs;
pub mod serve;
pub mod topology;
