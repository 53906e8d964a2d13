//! The 16-byte message header and the command numbers (spec "Header", "Commands").

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::read_prefix;
use crate::error::{ProtocolError, Result};

/// Header flag bits.
pub mod flags {
    /// Mask of the message-type nibble.
    pub const TYPE_MASK: u32 = 0xf;
    /// Type: command.
    pub const TYPE_COMMAND: u32 = 0;
    /// Type: reply.
    pub const TYPE_REPLY: u32 = 1;
    /// The sender does not want a reply.
    pub const NO_REPLY: u32 = 1 << 4;
    /// The reply is an error; the `error` field holds an errno.
    pub const ERROR: u32 = 1 << 5;
    /// All bits defined by the spec.
    pub const KNOWN: u32 = TYPE_MASK | NO_REPLY | ERROR;
}

/// `struct vfio_user_header`.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct Header {
    /// Message id, chosen by the sender of a command and echoed in the reply.
    pub msg_id: u16,
    /// Command number (also set in replies).
    pub command: u16,
    /// Size of the whole message, header included.
    pub size: u32,
    /// `flags::*`.
    pub flags: u32,
    /// errno of an error reply.
    pub error: u32,
}

const _: () = assert!(std::mem::size_of::<Header>() == Header::SIZE);

impl Header {
    /// Encoded size.
    pub const SIZE: usize = 16;

    /// Decode the first 16 bytes of `buf`. Does not validate the size or flags.
    pub fn decode(buf: &[u8]) -> Result<Header> {
        read_prefix(buf).map(|(h, _)| h).ok_or_else(|| {
            ProtocolError::Violation(format!("header needs 16 bytes, got {}", buf.len()))
        })
    }

    /// The message-type nibble.
    pub fn msg_type(&self) -> u32 {
        self.flags & flags::TYPE_MASK
    }

    /// True for a command (request).
    pub fn is_command(&self) -> bool {
        self.msg_type() == flags::TYPE_COMMAND
    }

    /// True for a reply.
    pub fn is_reply(&self) -> bool {
        self.msg_type() == flags::TYPE_REPLY
    }

    /// True when the sender asked for no reply.
    pub fn no_reply(&self) -> bool {
        self.flags & flags::NO_REPLY != 0
    }

    /// True for an error reply.
    pub fn is_error(&self) -> bool {
        self.flags & flags::ERROR != 0
    }

    /// Body length (`size - 16`), or `None` when `size < 16`.
    pub fn body_len(&self) -> Option<usize> {
        (self.size as usize).checked_sub(Self::SIZE)
    }
}

/// vfio-user command numbers (spec table "Commands"; 14 from QEMU's `protocol.h`).
#[repr(u16)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// `VFIO_USER_VERSION`.
    Version = 1,
    /// `VFIO_USER_DMA_MAP`.
    DmaMap = 2,
    /// `VFIO_USER_DMA_UNMAP`.
    DmaUnmap = 3,
    /// `VFIO_USER_DEVICE_GET_INFO`.
    DeviceGetInfo = 4,
    /// `VFIO_USER_DEVICE_GET_REGION_INFO`.
    DeviceGetRegionInfo = 5,
    /// `VFIO_USER_DEVICE_GET_REGION_IO_FDS`.
    DeviceGetRegionIoFds = 6,
    /// `VFIO_USER_DEVICE_GET_IRQ_INFO`.
    DeviceGetIrqInfo = 7,
    /// `VFIO_USER_DEVICE_SET_IRQS`.
    DeviceSetIrqs = 8,
    /// `VFIO_USER_REGION_READ`.
    RegionRead = 9,
    /// `VFIO_USER_REGION_WRITE`.
    RegionWrite = 10,
    /// `VFIO_USER_DMA_READ` (server to client).
    DmaRead = 11,
    /// `VFIO_USER_DMA_WRITE` (server to client).
    DmaWrite = 12,
    /// `VFIO_USER_DEVICE_RESET`.
    DeviceReset = 13,
    /// `VFIO_USER_DIRTY_PAGES` (old migration v1).
    DirtyPages = 14,
    /// `VFIO_USER_REGION_WRITE_MULTI`.
    RegionWriteMulti = 15,
    /// `VFIO_USER_DEVICE_FEATURE` (migration v2).
    DeviceFeature = 16,
    /// `VFIO_USER_MIG_DATA_READ`.
    MigDataRead = 17,
    /// `VFIO_USER_MIG_DATA_WRITE`.
    MigDataWrite = 18,
}

impl Command {
    /// Highest defined command number.
    pub const MAX: u16 = 18;

    /// Every command, in numeric order.
    pub const ALL: [Command; 18] = [
        Command::Version,
        Command::DmaMap,
        Command::DmaUnmap,
        Command::DeviceGetInfo,
        Command::DeviceGetRegionInfo,
        Command::DeviceGetRegionIoFds,
        Command::DeviceGetIrqInfo,
        Command::DeviceSetIrqs,
        Command::RegionRead,
        Command::RegionWrite,
        Command::DmaRead,
        Command::DmaWrite,
        Command::DeviceReset,
        Command::DirtyPages,
        Command::RegionWriteMulti,
        Command::DeviceFeature,
        Command::MigDataRead,
        Command::MigDataWrite,
    ];
}

impl TryFrom<u16> for Command {
    type Error = ProtocolError;

    fn try_from(v: u16) -> Result<Command> {
        Command::ALL
            .iter()
            .copied()
            .find(|c| *c as u16 == v)
            .ok_or(ProtocolError::UnknownCommand(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_roundtrip() {
        let h = Header {
            msg_id: 0xbeef,
            command: 9,
            size: 48,
            flags: flags::NO_REPLY,
            error: 0,
        };
        let v = h.as_bytes();
        assert_eq!(v.len(), Header::SIZE);
        assert_eq!(
            v[..4],
            [0xbeef_u16.to_ne_bytes(), 9u16.to_ne_bytes()].concat()
        );
        assert_eq!(Header::decode(v).ok(), Some(h));
        assert!(h.is_command() && h.no_reply() && !h.is_error());
        assert_eq!(h.body_len(), Some(32));
    }

    #[test]
    fn header_rejects_short_buffer() {
        assert!(Header::decode(&[0; 15]).is_err());
    }

    #[test]
    fn command_numbers_match_spec() {
        for (i, c) in Command::ALL.iter().enumerate() {
            assert_eq!(*c as u16 as usize, i + 1);
            assert_eq!(Command::try_from(*c as u16).ok(), Some(*c));
        }
        assert!(matches!(
            Command::try_from(0),
            Err(ProtocolError::UnknownCommand(0))
        ));
        assert!(Command::try_from(19).is_err());
    }
}
