//! Typed requests decoded from raw messages.
//!
//! [`Request::decode`] turns a header, body and received fds into a [`Request`] that owns its
//! fds, checking everything that can be checked without asking the device: exact payload
//! sizes, `argsz`, reserved and flag bits, fd counts, transfer sizes against the negotiated
//! limits. Fds on a message that takes none are closed (dropped) and the request fails EINVAL.

use std::os::fd::OwnedFd;

use zerocopy::{FromBytes, IntoBytes};

use crate::backend::{DmaMapping, DmaProt, DmaUnmap, IrqAction};
use crate::error::{ProtocolError, Result};
use crate::validate::Limits;
use crate::wire::{
    dma_map_flags, dma_unmap_flags, irq_set_flags, read_prefix, Capabilities, Command,
    DeviceInfoWire, DmaMapWire, DmaUnmapWire, Header, IrqInfoWire, IrqSetWire, RegionAccessWire,
    RegionInfoWire, RegionIoFdsWire, VersionWire, WriteMultiEntry, MAX_WRITE_MULTI,
    WRITE_MULTI_DATA,
};

/// The data of a SET_IRQS request before it is checked against the IRQ index.
#[derive(Debug)]
pub enum IrqSetData {
    /// `DATA_NONE`.
    None,
    /// `DATA_BOOL`, exactly `count` entries.
    Bool(Vec<bool>),
    /// `DATA_EVENTFD`: either exactly `count` fds, or none (= de-assign all).
    Eventfds(Vec<OwnedFd>),
}

/// A decoded DEVICE_SET_IRQS.
#[derive(Debug)]
pub struct IrqSetRequest {
    /// The fixed part as received.
    pub wire: IrqSetWire,
    /// Decoded action.
    pub action: IrqAction,
    /// Decoded data.
    pub data: IrqSetData,
}

/// A client-to-server request, structurally valid.
#[derive(Debug)]
pub enum Request {
    /// VERSION.
    Version {
        /// Proposed version.
        version: VersionWire,
        /// Client capabilities.
        caps: Capabilities,
    },
    /// DMA_MAP (fd owned).
    DmaMap(DmaMapping),
    /// DMA_UNMAP; `wire` is echoed in the reply.
    DmaUnmap {
        /// As received.
        wire: DmaUnmapWire,
        /// Decoded meaning.
        unmap: DmaUnmap,
    },
    /// DEVICE_GET_INFO.
    DeviceGetInfo {
        /// Client buffer size.
        argsz: u32,
    },
    /// DEVICE_GET_REGION_INFO.
    RegionInfo {
        /// Client buffer size (bounds the reply).
        argsz: u32,
        /// Region index.
        index: u32,
    },
    /// DEVICE_GET_REGION_IO_FDS.
    RegionIoFds {
        /// Client buffer size.
        argsz: u32,
        /// Region index.
        index: u32,
    },
    /// DEVICE_GET_IRQ_INFO.
    IrqInfo {
        /// Client buffer size.
        argsz: u32,
        /// IRQ index.
        index: u32,
    },
    /// DEVICE_SET_IRQS.
    SetIrqs(IrqSetRequest),
    /// REGION_READ.
    RegionRead(RegionAccessWire),
    /// REGION_WRITE.
    RegionWrite {
        /// Descriptor (echoed in the reply).
        access: RegionAccessWire,
        /// `access.count` bytes.
        data: Vec<u8>,
    },
    /// REGION_WRITE_MULTI, 1..=200 entries.
    RegionWriteMulti(Vec<WriteMultiEntry>),
    /// DEVICE_RESET.
    Reset,
}

fn no_fds(cmd: Command, fds: Vec<OwnedFd>) -> Result<()> {
    if !fds.is_empty() {
        let n = fds.len();
        drop(fds);
        return Err(ProtocolError::invalid(format!(
            "{cmd:?} takes no file descriptors, got {n}"
        )));
    }
    Ok(())
}

fn exact_len(cmd: Command, body: &[u8], want: usize) -> Result<()> {
    if body.len() != want {
        return Err(ProtocolError::invalid(format!(
            "{cmd:?} payload is {} bytes, expected {want}",
            body.len()
        )));
    }
    Ok(())
}

fn short(cmd: Command) -> ProtocolError {
    ProtocolError::invalid(format!("{cmd:?} payload too short"))
}

/// The fixed structure at the start of `body`, or EINVAL when the body is shorter.
fn fixed<T: FromBytes>(cmd: Command, body: &[u8]) -> Result<T> {
    read_prefix(body).map(|(t, _)| t).ok_or_else(|| short(cmd))
}

/// Decode the `argsz`-led fixed structure of GET_INFO / GET_IRQ_INFO requests.
fn argsz_index(cmd: Command, body: &[u8], min_argsz: usize) -> Result<(u32, u32)> {
    exact_len(cmd, body, 16)?;
    // `argsz; flags; index; count` (GET_INFO: `num_regions; num_irqs`, unused in a request).
    let [argsz, _flags, index, _] = fixed::<[u32; 4]>(cmd, body)?;
    if (argsz as usize) < min_argsz {
        return Err(ProtocolError::invalid(format!(
            "{cmd:?} argsz {argsz} < {min_argsz}"
        )));
    }
    Ok((argsz, index))
}

impl Request {
    /// Decode one command message. `header` must be a command (not a reply); the caller
    /// checked the type nibble. Errors are request errors (answered with their errno).
    pub fn decode(
        header: &Header,
        mut body: Vec<u8>,
        fds: Vec<OwnedFd>,
        limits: &Limits,
    ) -> Result<Request> {
        let cmd = Command::try_from(header.command)?;
        match cmd {
            Command::Version => {
                no_fds(cmd, fds)?;
                let (version, json) = VersionWire::decode(&body)?;
                let caps = match json {
                    Some(j) => Capabilities::parse_json(j)?,
                    None => Capabilities::default(),
                };
                Ok(Request::Version { version, caps })
            }
            Command::DmaMap => {
                if fds.len() > 1 {
                    return Err(ProtocolError::invalid(format!(
                        "DMA_MAP takes at most one fd, got {}",
                        fds.len()
                    )));
                }
                exact_len(cmd, &body, DmaMapWire::SIZE)?;
                let w = fixed::<DmaMapWire>(cmd, &body)?;
                if w.argsz as usize != DmaMapWire::SIZE {
                    return Err(ProtocolError::invalid(format!("DMA_MAP argsz {}", w.argsz)));
                }
                if w.flags & !dma_map_flags::KNOWN != 0 {
                    return Err(ProtocolError::invalid(format!(
                        "DMA_MAP flags {:#x}",
                        w.flags
                    )));
                }
                limits.check_dma_window(w.address, w.size)?;
                let fd = fds.into_iter().next();
                if fd.is_some() {
                    w.offset.checked_add(w.size).ok_or_else(|| {
                        ProtocolError::invalid("DMA_MAP file offset + size overflows")
                    })?;
                    if limits.pgsize > 1 && !w.offset.is_multiple_of(limits.pgsize) {
                        return Err(ProtocolError::invalid("DMA_MAP file offset not aligned"));
                    }
                }
                Ok(Request::DmaMap(DmaMapping {
                    iova: w.address,
                    size: w.size,
                    file_offset: w.offset,
                    prot: DmaProt {
                        read: w.flags & dma_map_flags::READ != 0,
                        write: w.flags & dma_map_flags::WRITE != 0,
                    },
                    fd,
                }))
            }
            Command::DmaUnmap => {
                no_fds(cmd, fds)?;
                let w = fixed::<DmaUnmapWire>(cmd, &body)?;
                if w.flags & !dma_unmap_flags::KNOWN != 0 {
                    return Err(ProtocolError::invalid(format!(
                        "DMA_UNMAP flags {:#x}",
                        w.flags
                    )));
                }
                if w.flags & dma_unmap_flags::GET_DIRTY_PAGE_INFO != 0 {
                    return Err(ProtocolError::NotSupported(
                        "DMA_UNMAP dirty page bitmap".into(),
                    ));
                }
                exact_len(cmd, &body, DmaUnmapWire::SIZE)?;
                if w.argsz as usize != DmaUnmapWire::SIZE {
                    return Err(ProtocolError::invalid(format!(
                        "DMA_UNMAP argsz {}",
                        w.argsz
                    )));
                }
                let unmap = if w.flags & dma_unmap_flags::ALL != 0 {
                    if w.address != 0 || w.size != 0 {
                        return Err(ProtocolError::invalid(
                            "DMA_UNMAP ALL needs address 0 and size 0",
                        ));
                    }
                    DmaUnmap::All
                } else {
                    if w.size == 0 {
                        return Err(ProtocolError::invalid("DMA_UNMAP of size 0"));
                    }
                    w.address
                        .checked_add(w.size)
                        .ok_or_else(|| ProtocolError::invalid("DMA_UNMAP range overflows"))?;
                    DmaUnmap::Range {
                        iova: w.address,
                        size: w.size,
                    }
                };
                Ok(Request::DmaUnmap { wire: w, unmap })
            }
            Command::DeviceGetInfo => {
                no_fds(cmd, fds)?;
                let (argsz, _) = argsz_index(cmd, &body, DeviceInfoWire::SIZE)?;
                Ok(Request::DeviceGetInfo { argsz })
            }
            Command::DeviceGetRegionInfo => {
                no_fds(cmd, fds)?;
                exact_len(cmd, &body, RegionInfoWire::SIZE)?;
                let w = fixed::<RegionInfoWire>(cmd, &body)?;
                if (w.argsz as usize) < RegionInfoWire::SIZE {
                    return Err(ProtocolError::invalid(format!(
                        "GET_REGION_INFO argsz {} < 32",
                        w.argsz
                    )));
                }
                Ok(Request::RegionInfo {
                    argsz: w.argsz,
                    index: w.index,
                })
            }
            Command::DeviceGetRegionIoFds => {
                no_fds(cmd, fds)?;
                exact_len(cmd, &body, RegionIoFdsWire::SIZE)?;
                let w = fixed::<RegionIoFdsWire>(cmd, &body)?;
                if (w.argsz as usize) < RegionIoFdsWire::SIZE {
                    return Err(ProtocolError::invalid(format!(
                        "GET_REGION_IO_FDS argsz {} < 16",
                        w.argsz
                    )));
                }
                if w.flags != 0 {
                    return Err(ProtocolError::invalid("GET_REGION_IO_FDS flags must be 0"));
                }
                Ok(Request::RegionIoFds {
                    argsz: w.argsz,
                    index: w.index,
                })
            }
            Command::DeviceGetIrqInfo => {
                no_fds(cmd, fds)?;
                let (argsz, index) = argsz_index(cmd, &body, IrqInfoWire::SIZE)?;
                Ok(Request::IrqInfo { argsz, index })
            }
            Command::DeviceSetIrqs => decode_set_irqs(&body, fds, limits).map(Request::SetIrqs),
            Command::RegionRead => {
                no_fds(cmd, fds)?;
                exact_len(cmd, &body, RegionAccessWire::SIZE)?;
                let a = fixed::<RegionAccessWire>(cmd, &body)?;
                limits.check_xfer(u64::from(a.count))?;
                Ok(Request::RegionRead(a))
            }
            Command::RegionWrite => {
                no_fds(cmd, fds)?;
                let a = fixed::<RegionAccessWire>(cmd, &body)?;
                limits.check_xfer(u64::from(a.count))?;
                let want = RegionAccessWire::SIZE + a.count as usize;
                exact_len(cmd, &body, want)?;
                body.drain(..RegionAccessWire::SIZE);
                Ok(Request::RegionWrite {
                    access: a,
                    data: body,
                })
            }
            Command::RegionWriteMulti => {
                no_fds(cmd, fds)?;
                let n = fixed::<u64>(cmd, &body)?;
                if n == 0 || n > MAX_WRITE_MULTI {
                    return Err(ProtocolError::invalid(format!(
                        "REGION_WRITE_MULTI wr_cnt {n} not in 1..={MAX_WRITE_MULTI}"
                    )));
                }
                // n <= 200, so this cannot overflow.
                exact_len(cmd, &body, 8 + n as usize * WriteMultiEntry::SIZE)?;
                let mut out = vec![WriteMultiEntry::default(); n as usize];
                let entries = body
                    .get(8..)
                    .filter(|b| b.len() == out.as_bytes().len())
                    .ok_or_else(|| short(cmd))?;
                out.as_mut_bytes().copy_from_slice(entries);
                if let Some(e) = out
                    .iter()
                    .find(|e| e.count == 0 || e.count as usize > WRITE_MULTI_DATA)
                {
                    return Err(ProtocolError::invalid(format!(
                        "REGION_WRITE_MULTI entry count {}",
                        e.count
                    )));
                }
                Ok(Request::RegionWriteMulti(out))
            }
            Command::DeviceReset => {
                no_fds(cmd, fds)?;
                exact_len(cmd, &body, 0)?;
                Ok(Request::Reset)
            }
            Command::DmaRead | Command::DmaWrite => {
                drop(fds);
                Err(ProtocolError::invalid(format!(
                    "{cmd:?} is a server-to-client command"
                )))
            }
            Command::DirtyPages
            | Command::DeviceFeature
            | Command::MigDataRead
            | Command::MigDataWrite => {
                drop(fds);
                Err(ProtocolError::NotSupported(format!(
                    "{cmd:?} (migration is not implemented)"
                )))
            }
        }
    }

    /// The command this request answers to.
    pub fn command(&self) -> Command {
        match self {
            Request::Version { .. } => Command::Version,
            Request::DmaMap(_) => Command::DmaMap,
            Request::DmaUnmap { .. } => Command::DmaUnmap,
            Request::DeviceGetInfo { .. } => Command::DeviceGetInfo,
            Request::RegionInfo { .. } => Command::DeviceGetRegionInfo,
            Request::RegionIoFds { .. } => Command::DeviceGetRegionIoFds,
            Request::IrqInfo { .. } => Command::DeviceGetIrqInfo,
            Request::SetIrqs(_) => Command::DeviceSetIrqs,
            Request::RegionRead(_) => Command::RegionRead,
            Request::RegionWrite { .. } => Command::RegionWrite,
            Request::RegionWriteMulti(_) => Command::RegionWriteMulti,
            Request::Reset => Command::DeviceReset,
        }
    }
}

fn decode_set_irqs(body: &[u8], fds: Vec<OwnedFd>, limits: &Limits) -> Result<IrqSetRequest> {
    use irq_set_flags as f;
    let cmd = Command::DeviceSetIrqs;
    let w = fixed::<IrqSetWire>(cmd, body)?;
    if w.argsz as usize != body.len() {
        return Err(ProtocolError::invalid(format!(
            "SET_IRQS argsz {} != payload size {}",
            w.argsz,
            body.len()
        )));
    }
    if w.flags & !(f::DATA_MASK | f::ACTION_MASK_BITS) != 0 {
        return Err(ProtocolError::invalid(format!(
            "SET_IRQS unknown flags {:#x}",
            w.flags
        )));
    }
    let data_bits = w.flags & f::DATA_MASK;
    let action_bits = w.flags & f::ACTION_MASK_BITS;
    if data_bits.count_ones() != 1 || action_bits.count_ones() != 1 {
        return Err(ProtocolError::invalid(format!(
            "SET_IRQS flags {:#x} need exactly one data type and one action",
            w.flags
        )));
    }
    let action = match action_bits {
        f::ACTION_MASK => IrqAction::Mask,
        f::ACTION_UNMASK => IrqAction::Unmask,
        _ => IrqAction::Trigger,
    };
    if w.count == 0 && (w.start != 0 || data_bits != f::DATA_NONE || action != IrqAction::Trigger) {
        return Err(ProtocolError::invalid(
            "SET_IRQS count 0 is only valid as the disable form (start 0, DATA_NONE|TRIGGER)",
        ));
    }
    let data = match data_bits {
        f::DATA_NONE => {
            no_fds(cmd, fds)?;
            exact_len(cmd, body, IrqSetWire::SIZE)?;
            IrqSetData::None
        }
        f::DATA_BOOL => {
            no_fds(cmd, fds)?;
            let want = IrqSetWire::SIZE
                .checked_add(w.count as usize)
                .ok_or_else(|| ProtocolError::invalid("SET_IRQS count overflows"))?;
            exact_len(cmd, body, want)?;
            IrqSetData::Bool(body[IrqSetWire::SIZE..].iter().map(|b| *b != 0).collect())
        }
        _ => {
            exact_len(cmd, body, IrqSetWire::SIZE)?;
            if !fds.is_empty() && fds.len() != w.count as usize {
                return Err(ProtocolError::invalid(format!(
                    "SET_IRQS with {} eventfds for count {}",
                    fds.len(),
                    w.count
                )));
            }
            if fds.len() > limits.max_msg_fds as usize {
                return Err(ProtocolError::invalid("SET_IRQS: too many eventfds"));
            }
            IrqSetData::Eventfds(fds)
        }
    };
    Ok(IrqSetRequest {
        wire: w,
        action,
        data,
    })
}
