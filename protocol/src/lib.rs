//! vfio-user wire protocol: messages, framing, server and client ends.
//!
//! Implements the protocol of QEMU's `docs/interop/vfio-user.rst` (version 0.1) as spoken by
//! QEMU's `vfio-user-pci` client. No device knowledge: a device plugs in through
//! [`backend::DeviceBackend`].

pub mod backend;
