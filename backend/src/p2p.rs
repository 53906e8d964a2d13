//! Peer-to-peer routing: the GPUs of one process, their VRAM, and where each one's VRAM BAR
//! currently decodes on the bus.
//!
//! A [`Fabric`] is shared (`Arc`) by every GPU served in a process. Each GPU joins it with its
//! VRAM (shared, `Arc<Vram>`) and gets a [`PeerId`]. The device tells the fabric where its VRAM
//! BAR decodes ([`Fabric::set_bar`]) after every config-space write and reset: a [`BarDecode`]
//! while Memory Space Enable is set and the BAR is assigned, `None` otherwise. A device access to
//! a bus address asks the fabric first ([`FabricView::route`]): inside a decoding BAR, the bytes
//! are the owner's VRAM at `address - base`, reached directly (no message to the client). So the
//! fabric answers "whose VRAM is this bus address in"; windows the client DMA_MAP'd are the
//! `DmaSpace`'s business, and a BAR of a GPU in this fabric wins over any such window (the
//! client announces peer BARs as fd-less windows, which only messages would reach).
//!
//! Invariants:
//! - A [`BarDecode`] is a size-aligned power-of-two range that does not wrap: `base + size` fits
//!   in 64 bits (a BAR whose last byte is the last byte of the address space does not decode),
//!   and `base != 0` (an unassigned BAR never decodes).
//! - Routing connects only members served to the **same client** (the same QEMU process, told by
//!   the device with [`Fabric::set_client`]): GPUs of one server attached to different VMs live in
//!   different guest-physical address spaces, so one VM's bus address must never reach another
//!   VM's VRAM. A member without a client is reachable by nobody and reaches nobody.
//! - Decoding BARs of different members may overlap only if the guest programs them so; routing
//!   then picks the member with the lowest [`PeerId`] (a misprogrammed bus is the guest's bug, the
//!   server stays in bounds either way).
//! - Routing hands out VRAM slices that borrow a [`FabricView`] (the member table read-locked):
//!   [`Fabric::set_bar`] takes it for writing, so a BAR move or a Memory Space Enable change
//!   returns only once no access still uses the old decode (as DMA_UNMAP waits for the windows).
//! - A member's VRAM lives as long as the fabric, whatever happens to its device.
//! - Traffic counters: bytes each member's engines read from and wrote into each member's VRAM
//!   through the fabric, 64-bit, never reset (monotonic, like a link counter).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};

use vm_memory::VolatileSlice;

use crate::addr::VramOffset;
use crate::vram::{Vram, VramError};

/// A member of a [`Fabric`] (its index, in join order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerId(pub usize);

/// Where a BAR decodes: `[base, base + size)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarDecode {
    base: u64,
    size: u64,
}

impl BarDecode {
    /// The range `[base, base + size)`, or `None` if it cannot decode: `size` not a power of
    /// two, `base` not a multiple of it, `base` zero (unassigned), or `base + size` past the end
    /// of the 64-bit space.
    pub fn new(base: u64, size: u64) -> Option<BarDecode> {
        if !size.is_power_of_two() || base == 0 || base & (size - 1) != 0 {
            return None;
        }
        base.checked_add(size)?;
        Some(BarDecode { base, size })
    }

    /// First bus address.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// One past the last bus address (does not overflow, see [`BarDecode::new`]).
    pub fn end(&self) -> u64 {
        self.base + self.size
    }

    fn contains(&self, addr: u64) -> bool {
        addr >= self.base && addr - self.base < self.size
    }
}

/// Errors of the fabric.
#[derive(Debug, thiserror::Error)]
pub enum FabricError {
    /// The fabric was built for fewer members.
    #[error("the fabric holds at most {0} GPUs")]
    Full(usize),
    /// A BAR larger than the member's VRAM.
    #[error("a {size:#x}-byte BAR cannot map a {vram:#x}-byte VRAM")]
    BarTooLarge {
        /// BAR size.
        size: u64,
        /// VRAM size.
        vram: u64,
    },
    /// No such member.
    #[error("no fabric member {0:?}")]
    NoMember(PeerId),
}

#[derive(Debug)]
struct Member {
    name: String,
    vram: Arc<Vram>,
    bar: Option<BarDecode>,
    client: Option<ClientId>,
}

/// Who a member is served to (e.g. the client process's pid): members route to each other only
/// when it is the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientId(pub u64);

/// Bytes one member moved through the fabric to or from one member's VRAM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerTraffic {
    /// The member whose VRAM was accessed.
    pub peer: String,
    /// Bytes read from its VRAM.
    pub read: u64,
    /// Bytes written into its VRAM.
    pub written: u64,
}

/// The GPUs of one process and their VRAM BARs (module documentation).
#[derive(Debug)]
pub struct Fabric {
    members: RwLock<Vec<Member>>,
    /// Some member's BAR decodes for a client (updated under the write lock): lets the hot
    /// path skip the member table while no GPU BAR decodes.
    routing: AtomicBool,
    capacity: usize,
    /// `[(from * capacity + to) * 2 + write]`: bytes `from` read from / wrote into `to`'s VRAM.
    traffic: Vec<AtomicU64>,
}

/// A member lookup that resolved a bus address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Inside `peer`'s BAR: VRAM `offset`, and `avail` bytes to the end of the BAR.
    Peer {
        /// The owner of the BAR.
        peer: PeerId,
        /// Offset into its VRAM.
        offset: VramOffset,
        /// Bytes from the address to the end of the BAR (at least 1).
        avail: u64,
    },
    /// In no member's BAR; `next` is the start of the nearest decoding BAR above the address.
    Miss {
        /// Start of the next BAR, if any.
        next: Option<u64>,
    },
}

impl Fabric {
    /// An empty fabric for at most `capacity` GPUs.
    pub fn new(capacity: usize) -> Arc<Fabric> {
        Arc::new(Fabric {
            members: RwLock::new(Vec::with_capacity(capacity)),
            routing: AtomicBool::new(false),
            capacity,
            traffic: (0..capacity * capacity * 2)
                .map(|_| AtomicU64::new(0))
                .collect(),
        })
    }

    /// Adds a GPU named `name` with its VRAM; its BAR does not decode until [`Fabric::set_bar`].
    pub fn join(&self, name: &str, vram: Arc<Vram>) -> Result<PeerId, FabricError> {
        let mut m = self.members.write().unwrap_or_else(PoisonError::into_inner);
        if m.len() >= self.capacity {
            return Err(FabricError::Full(self.capacity));
        }
        m.push(Member {
            name: name.to_string(),
            vram,
            bar: None,
            client: None,
        });
        Ok(PeerId(m.len() - 1))
    }

    /// Sets where `peer`'s VRAM BAR decodes (`None`: nowhere). Waits for accesses that use the
    /// old decode (module documentation). The BAR maps VRAM from offset 0, so it must not be
    /// larger than the VRAM.
    pub fn set_bar(&self, peer: PeerId, bar: Option<BarDecode>) -> Result<(), FabricError> {
        {
            // Cheap check first: config writes that do not move the BAR take no write lock.
            let m = self.view();
            if m.members.get(peer.0).map(|x| x.bar) == Some(bar) {
                return Ok(());
            }
        }
        let mut m = self.members.write().unwrap_or_else(PoisonError::into_inner);
        let member = m.get_mut(peer.0).ok_or(FabricError::NoMember(peer))?;
        let too_large = bar.filter(|b| b.size > member.vram.size());
        // A refused decode leaves the BAR decoding nothing, never its previous range.
        member.bar = if too_large.is_some() { None } else { bar };
        if let Some(b) = too_large {
            let vram = member.vram.size();
            self.update_routing(&m);
            return Err(FabricError::BarTooLarge { size: b.size, vram });
        }
        self.update_routing(&m);
        Ok(())
    }

    fn update_routing(&self, m: &[Member]) {
        let on = m.iter().any(|x| x.bar.is_some() && x.client.is_some());
        self.routing.store(on, Ordering::Release);
    }

    /// Some member's BAR may decode (cheap, no lock). An access that sees `false` may skip
    /// [`Fabric::view`]: it is ordered before any config write that makes a BAR decode.
    pub fn routing(&self) -> bool {
        self.routing.load(Ordering::Acquire)
    }

    /// Sets the client `peer` is served to (`None`: no client). Waits for accesses in progress
    /// (module documentation).
    pub fn set_client(&self, peer: PeerId, client: Option<ClientId>) -> Result<(), FabricError> {
        let mut m = self.members.write().unwrap_or_else(PoisonError::into_inner);
        m.get_mut(peer.0).ok_or(FabricError::NoMember(peer))?.client = client;
        self.update_routing(&m);
        Ok(())
    }

    /// The member table, read-locked, for routing.
    pub fn view(&self) -> FabricView<'_> {
        FabricView {
            members: self.members.read().unwrap_or_else(PoisonError::into_inner),
        }
    }

    /// Name of a member (empty if there is none).
    pub fn name(&self, peer: PeerId) -> String {
        self.view()
            .members
            .get(peer.0)
            .map(|m| m.name.clone())
            .unwrap_or_default()
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.view().members.len()
    }

    /// No member yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn counter(&self, from: PeerId, to: PeerId, write: bool) -> Option<&AtomicU64> {
        if from.0 >= self.capacity || to.0 >= self.capacity {
            return None;
        }
        self.traffic
            .get((from.0 * self.capacity + to.0) * 2 + usize::from(write))
    }

    /// Counts `bytes` that `from`'s engines read from (`write == false`) or wrote into `to`'s
    /// VRAM.
    pub fn record(&self, from: PeerId, to: PeerId, write: bool, bytes: u64) {
        if let Some(c) = self.counter(from, to, write) {
            c.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// What `from` moved to and from each member's VRAM (every member, in join order).
    pub fn traffic_from(&self, from: PeerId) -> Vec<PeerTraffic> {
        self.traffic_matrix(|to| (from, to))
    }

    /// What each member moved to and from `to`'s VRAM (every member, in join order; `peer` names
    /// the initiator).
    pub fn traffic_to(&self, to: PeerId) -> Vec<PeerTraffic> {
        self.traffic_matrix(|from| (from, to))
    }

    fn traffic_matrix(&self, pair: impl Fn(PeerId) -> (PeerId, PeerId)) -> Vec<PeerTraffic> {
        let names: Vec<String> = self.view().members.iter().map(|m| m.name.clone()).collect();
        names
            .into_iter()
            .enumerate()
            .map(|(i, peer)| {
                let (from, to) = pair(PeerId(i));
                let get = |w| {
                    self.counter(from, to, w)
                        .map_or(0, |c| c.load(Ordering::Relaxed))
                };
                PeerTraffic {
                    peer,
                    read: get(false),
                    written: get(true),
                }
            })
            .collect()
    }
}

/// The member table, read-locked (see [`Fabric::view`]); slices handed out borrow it.
#[derive(Debug)]
pub struct FabricView<'a> {
    members: RwLockReadGuard<'a, Vec<Member>>,
}

impl FabricView<'_> {
    /// Whose BAR holds bus address `addr`, for an access issued by member `from`: only members
    /// served to the same client count.
    pub fn route(&self, from: PeerId, addr: u64) -> Route {
        let mut next: Option<u64> = None;
        let client = self.members.get(from.0).and_then(|m| m.client);
        if client.is_none() {
            return Route::Miss { next: None };
        }
        for (i, m) in self.members.iter().enumerate() {
            let Some(bar) = m.bar.filter(|_| m.client == client) else {
                continue;
            };
            if bar.contains(addr) {
                // `addr - base < size <= VRAM size`: the offset is inside VRAM.
                return Route::Peer {
                    peer: PeerId(i),
                    offset: VramOffset(addr - bar.base),
                    avail: bar.end() - addr,
                };
            }
            if bar.base > addr {
                next = Some(next.map_or(bar.base, |n| n.min(bar.base)));
            }
        }
        Route::Miss { next }
    }

    /// `len` bytes of `peer`'s VRAM at `offset` (bounds-checked against the VRAM).
    pub fn slice(
        &self,
        peer: PeerId,
        offset: VramOffset,
        len: usize,
    ) -> Result<VolatileSlice<'_, ()>, VramError> {
        let m = self.members.get(peer.0).ok_or(VramError::OutOfRange {
            offset,
            len,
            size: 0,
        })?;
        m.vram.slice(offset, len)
    }

    /// Any member's BAR decodes (a fast path can skip routing otherwise).
    pub fn any_decoding(&self) -> bool {
        self.members
            .iter()
            .any(|m| m.bar.is_some() && m.client.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vram::VramOptions;

    const MIB: u64 = 1 << 20;

    fn two() -> (Arc<Fabric>, Arc<Vram>, Arc<Vram>) {
        let f = Fabric::new(2);
        let a = Arc::new(Vram::new(&VramOptions::memfd(2 * MIB)).unwrap());
        let b = Arc::new(Vram::new(&VramOptions::memfd(4 * MIB)).unwrap());
        assert_eq!(f.join("gpu0", a.clone()).unwrap(), PeerId(0));
        assert_eq!(f.join("gpu1", b.clone()).unwrap(), PeerId(1));
        f.set_client(PeerId(0), Some(ClientId(7))).unwrap();
        f.set_client(PeerId(1), Some(ClientId(7))).unwrap();
        (f, a, b)
    }

    #[test]
    fn bar_decode_rejects_unassigned_misaligned_and_wrapping() {
        assert!(BarDecode::new(0, MIB).is_none(), "unassigned");
        assert!(BarDecode::new(0x1000, MIB).is_none(), "misaligned");
        assert!(BarDecode::new(MIB, 3 * MIB).is_none(), "not a power of two");
        assert!(BarDecode::new(MIB, 0).is_none());
        assert!(
            BarDecode::new(0u64.wrapping_sub(MIB), MIB).is_none(),
            "last byte at 2^64 - 1"
        );
        let top = BarDecode::new(0u64.wrapping_sub(2 * MIB), MIB).unwrap();
        assert_eq!(top.end(), u64::MAX - MIB + 1);
        assert!(BarDecode::new(1 << 63, 1 << 63).is_none());
    }

    #[test]
    fn routes_inside_decoding_bars_only() {
        let (f, _, b) = two();
        assert_eq!(
            f.view().route(PeerId(0), 0x1_0000_0000),
            Route::Miss { next: None }
        );
        f.set_bar(PeerId(1), BarDecode::new(0x2000_0000, 4 * MIB))
            .unwrap();
        f.set_bar(PeerId(0), BarDecode::new(0x1000_0000, 2 * MIB))
            .unwrap();
        let v = f.view();
        assert!(v.any_decoding() && f.routing());
        assert_eq!(
            v.route(PeerId(0), 0x2000_0010),
            Route::Peer {
                peer: PeerId(1),
                offset: VramOffset(0x10),
                avail: 4 * MIB - 0x10
            }
        );
        assert_eq!(
            v.route(PeerId(0), 0x0fff_ffff),
            Route::Miss {
                next: Some(0x1000_0000)
            }
        );
        assert_eq!(
            v.route(PeerId(0), 0x1020_0000),
            Route::Miss {
                next: Some(0x2000_0000)
            }
        );
        assert_eq!(v.route(PeerId(0), 0x2040_0000), Route::Miss { next: None });
        v.slice(PeerId(1), VramOffset(0x10), 4)
            .unwrap()
            .copy_from(&[1u8, 2, 3, 4]);
        drop(v);
        assert_eq!(b.read_u32(VramOffset(0x10)).unwrap(), 0x0403_0201);
        assert!(f
            .view()
            .slice(PeerId(1), VramOffset(4 * MIB - 2), 4)
            .is_err());
        assert!(f.view().slice(PeerId(7), VramOffset(0), 4).is_err());
        // Memory Space off: nothing decodes.
        f.set_bar(PeerId(1), None).unwrap();
        assert_eq!(
            f.view().route(PeerId(0), 0x2000_0010),
            Route::Miss { next: None }
        );
    }

    #[test]
    fn routes_only_between_members_of_the_same_client() {
        let (f, _, _) = two();
        f.set_bar(PeerId(1), BarDecode::new(0x2000_0000, 4 * MIB))
            .unwrap();
        let hit = |from| f.view().route(from, 0x2000_0000);
        assert!(matches!(hit(PeerId(0)), Route::Peer { .. }));
        // gpu1 now serves another VM: its BAR address means nothing to gpu0's client.
        f.set_client(PeerId(1), Some(ClientId(8))).unwrap();
        assert_eq!(hit(PeerId(0)), Route::Miss { next: None });
        assert!(
            matches!(hit(PeerId(1)), Route::Peer { .. }),
            "its own client"
        );
        // No client: neither reachable nor reaching.
        f.set_client(PeerId(1), None).unwrap();
        assert!(!f.view().any_decoding());
        assert!(!f.routing());
        assert_eq!(hit(PeerId(1)), Route::Miss { next: None });
        assert!(matches!(
            f.set_client(PeerId(3), None),
            Err(FabricError::NoMember(_))
        ));
    }

    #[test]
    fn refuses_bars_larger_than_vram_and_extra_members() {
        let (f, _, _) = two();
        f.set_bar(PeerId(0), BarDecode::new(0x1000_0000, 2 * MIB))
            .unwrap();
        assert!(matches!(
            f.set_bar(PeerId(0), BarDecode::new(0x1000_0000, 4 * MIB)),
            Err(FabricError::BarTooLarge { .. })
        ));
        assert_eq!(
            f.view().route(PeerId(1), 0x1000_0000),
            Route::Miss { next: None },
            "the old decode is gone too"
        );
        assert!(matches!(
            f.set_bar(PeerId(5), None),
            Err(FabricError::NoMember(_))
        ));
        let c = Arc::new(Vram::new(&VramOptions::memfd(MIB)).unwrap());
        assert!(matches!(f.join("gpu2", c), Err(FabricError::Full(2))));
    }

    #[test]
    fn counts_traffic_per_pair_and_direction() {
        let (f, _, _) = two();
        f.record(PeerId(0), PeerId(1), true, 100);
        f.record(PeerId(0), PeerId(1), false, 7);
        f.record(PeerId(1), PeerId(1), true, 1);
        f.record(PeerId(9), PeerId(1), true, 1);
        let from0 = f.traffic_from(PeerId(0));
        assert_eq!(from0.len(), 2);
        assert_eq!(
            from0[1],
            PeerTraffic {
                peer: "gpu1".into(),
                read: 7,
                written: 100
            }
        );
        assert_eq!(from0[0].written, 0);
        let to1 = f.traffic_to(PeerId(1));
        assert_eq!((to1[0].written, to1[1].written), (100, 1));
        assert_eq!(f.name(PeerId(1)), "gpu1");
        assert_eq!(f.len(), 2);
    }
}
