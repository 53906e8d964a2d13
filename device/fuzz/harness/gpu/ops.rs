//! The operations of [`super::gpu_regions`], decoded from the input.

use super::*;

impl World {
    // --- Interrupts --------------------------------------------------------------------------

    fn set_irqs(&mut self, inp: &mut Input<'_>) {
        let index = match inp.u8() % 16 {
            0..=8 => irq_index::MSIX,
            9..=11 => irq_index::ERR,
            12 => inp.below(5).into(),
            _ => inp.value32(),
        };
        let nv = u32::from(self.num_vectors);
        let (start, count) = match inp.u8() % 8 {
            0 => (0, 0),
            1 => (0, nv),
            2 => (inp.value32(), inp.value32()),
            _ => {
                let s = u32::from(inp.u8()) % (nv + 2);
                (s, u32::from(inp.u8()) % (nv + 2 - s.min(nv)))
            }
        };
        let action = match inp.u8() % 8 {
            0 => IrqAction::Mask,
            1 => IrqAction::Unmask,
            _ => IrqAction::Trigger,
        };
        // One entry per sub-index, as the protocol server guarantees.
        let n = count as usize;
        let mut new_fds: Vec<Option<EventFd>> = Vec::new();
        let data = match inp.u8() % 4 {
            _ if n > 4096 => IrqData::None,
            0 => IrqData::None,
            1 => IrqData::Bool((0..n).map(|_| inp.u8() & 1 != 0).collect()),
            _ if n > 64 => IrqData::Bool(vec![true; n]),
            _ => {
                let mut fds = Vec::with_capacity(n);
                for _ in 0..n {
                    match inp.u8() % 8 {
                        0 => {
                            fds.push(None);
                            new_fds.push(None);
                        }
                        1 => {
                            fds.push(File::open("/dev/null").ok().map(OwnedFd::from));
                            new_fds.push(None);
                        }
                        _ => {
                            let e = EventFd::new(rustix::event::EventfdFlags::NONBLOCK).ok();
                            fds.push(e.as_ref().and_then(owned_dup));
                            new_fds.push(e);
                        }
                    }
                }
                IrqData::Eventfds(fds)
            }
        };
        let is_eventfds = matches!(data, IrqData::Eventfds(_));
        let is_none = matches!(data, IrqData::None);
        let r = self.timed("set_irqs", |g| {
            g.set_irqs(IrqSet {
                index,
                start,
                count,
                action,
                data,
            })
        });
        let vectors = match index {
            irq_index::MSIX => Some(nv),
            irq_index::ERR => Some(1),
            irq_index::INTX | irq_index::MSI | irq_index::REQ => Some(0),
            _ => None,
        };
        let disable = start == 0 && count == 0;
        let in_range =
            vectors.is_some_and(|v| start.checked_add(count).is_some_and(|e| e <= v) || disable);
        let ok = r.is_ok();
        if ok {
            assert!(
                action == IrqAction::Trigger && in_range,
                "SET_IRQS index {index} {start}+{count} {action:?} accepted"
            );
        } else {
            self.stats.refused += 1;
        }
        if !ok || !is_eventfds {
            // A refused request installs nothing: its fds must never fire.
            self.dead_fds.extend(new_fds.into_iter().flatten());
            if ok && disable && is_none {
                if index == irq_index::MSIX {
                    for v in 0..self.vectors.len() {
                        self.revoke_vector(v);
                    }
                } else if index == irq_index::ERR {
                    self.revoke_err();
                }
            }
            return;
        }
        if index == irq_index::MSIX {
            for (i, e) in new_fds.into_iter().enumerate() {
                let v = start as usize + i;
                self.revoke_vector(v);
                if let Some(slot) = self.vectors.get_mut(v) {
                    *slot = e;
                }
            }
        } else if index == irq_index::ERR {
            self.revoke_err();
            self.err_fd = new_fds.into_iter().last().flatten();
        }
    }

    // --- Engines -----------------------------------------------------------------------------

    /// An address in one of the apertures: (aperture byte, address).
    fn pick_addr(&self, inp: &mut Input<'_>) -> (u8, u64) {
        let k = inp.u8();
        let (ap, base) = match k % 16 {
            0..=2 => (0, A_IOVA),
            3 => (0, A_IOVA + A_SIZE - 64),
            4 => (0, B_IOVA),
            5 => (0, C_IOVA),
            6 => (0, D_IOVA),
            7 => (0, F_IOVA),
            8 => (0, 0),
            9..=11 => (1, 0),
            12 => (1, self.vram_size - 64),
            13 => (1, self.vram_size),
            14 => (inp.u8(), inp.value64()),
            // The device MMU's region (hw-spec §9, `mmu_op`), or a VRAM chunk.
            _ if k & 0x10 != 0 => (3, MMU_VA),
            _ => (1, CHUNK),
        };
        (ap, inp.near(base))
    }

    fn pick_len(&self, inp: &mut Input<'_>) -> u64 {
        match inp.u8() % 16 {
            0..=4 => u64::from(inp.u8() % 64) + 1,
            5 | 6 => 4 * (u64::from(inp.u8()) + 1),
            7 => PAGE,
            8 => A_SIZE,
            9 => A_SIZE + B_LEN + 8,
            10 => CHUNK + 4,
            11 => self.vram_size,
            12 => MAX_LENGTH,
            13 => 0,
            14 => u64::from(inp.u16()) & !3,
            _ => inp.value64(),
        }
    }

    fn descriptor(&self, inp: &mut Input<'_>) -> [u8; DESC_SIZE] {
        let mut b = [0u8; DESC_SIZE];
        let mode = inp.u8();
        if mode.is_multiple_of(32) {
            b.iter_mut().for_each(|x| *x = inp.u8());
            return b;
        }
        b[0] = match mode % 8 {
            0 => opcode::NOP,
            1 | 2 => opcode::COPY,
            3 | 4 => opcode::FILL,
            5 => opcode::FENCE,
            6 => opcode::TIMESTAMP,
            _ => match inp.u8() % 4 {
                0 => opcode::ATOMIC,
                1 => opcode::TLB_INVALIDATE,
                2 => opcode::FAULT_REPLAY,
                _ => inp.u8(),
            },
        };
        b[1] = if mode & 0x80 != 0 {
            inp.u8()
        } else {
            inp.u8() & dflags::ALL
        };
        let (sa, src) = self.pick_addr(inp);
        let (da, dst) = self.pick_addr(inp);
        b[2] = sa;
        b[3] = da;
        let len = self.pick_len(inp);
        let value = if mode & 0x40 != 0 {
            inp.value64()
        } else {
            u64::from(inp.u32())
        };
        b[0x08..0x10].copy_from_slice(&src.to_le_bytes());
        b[0x10..0x18].copy_from_slice(&dst.to_le_bytes());
        b[0x18..0x20].copy_from_slice(&len.to_le_bytes());
        b[0x20..0x28].copy_from_slice(&value.to_le_bytes());
        // The MMU opcodes (hw-spec §9.5), mostly well-formed; a context for VIRT addresses.
        let ctx = u16::from(inp.u8() % 4);
        match b[0] {
            opcode::ATOMIC if mode & 0x10 == 0 => {
                b[0x08..0x10].copy_from_slice(&(src & !7).to_le_bytes());
                b[0x10..0x18].copy_from_slice(&(dst & !7).to_le_bytes());
                b[0x18..0x20].copy_from_slice(&8u64.to_le_bytes());
            }
            opcode::TLB_INVALIDATE if mode & 0x10 == 0 => {
                b[2] = 0;
                b[3] = 0;
                b[0x10..0x18].copy_from_slice(&(dst & !0xfff).to_le_bytes());
                b[0x18..0x20].copy_from_slice(&(len & !0xfff & 0xff_ffff).to_le_bytes());
                let c = if inp.u8() & 1 == 0 { 0xffff } else { ctx };
                b[4..6].copy_from_slice(&c.to_le_bytes());
            }
            opcode::FAULT_REPLAY if mode & 0x10 == 0 => {
                b[2..4].fill(0);
                b[0x08..0x28].fill(0);
                b[0x20] = inp.u8() & 1;
                let c = if inp.u8() & 1 == 0 { 0xffff } else { ctx };
                b[4..6].copy_from_slice(&c.to_le_bytes());
            }
            _ if b[2] == 3 || b[3] == 3 => b[4..6].copy_from_slice(&ctx.to_le_bytes()),
            _ => {}
        }
        if mode & 0x20 != 0 && inp.u8().is_multiple_of(4) {
            let i = 4 + usize::from(inp.u8()) % (DESC_SIZE - 4);
            b[i] ^= 1;
        }
        b
    }

    /// The device MMU (hw-spec §9): tables in VRAM mapping `MMU_PAGES` pages at `MMU_VA` of
    /// contexts 0-3 to fuzzed targets (guest RAM windows, their guard pages, read-only and
    /// message-only windows, VRAM, garbage), the fault ring in guest RAM A or VRAM; register
    /// accesses of the block; rewritten entries. Whatever the tables say, the device may only
    /// touch what the windows allow (the world's invariants).
    fn mmu_op(&mut self, inp: &mut Input<'_>) {
        const CTX_TABLE: u64 = 0xc_0000;
        const L3: u64 = CTX_TABLE + PAGE;
        const L2: u64 = L3 + PAGE;
        const L1: u64 = L2 + PAGE;
        const L0: u64 = L1 + PAGE;
        const MMU_REGS: u64 = 0x300;
        let pte = |inp: &mut Input<'_>, vram_size: u64| -> u64 {
            let (ap, addr) = match inp.u8() % 10 {
                0 | 1 => (0, A_IOVA + PAGE * u64::from(inp.u8() % 16)),
                2 => (0, A_IOVA - PAGE),
                3 => (0, B_IOVA),
                4 => (0, C_IOVA + PAGE * u64::from(inp.u8() % 16)),
                5 => (0, D_IOVA),
                6 | 7 => (1, PAGE * u64::from(inp.u8())),
                8 => (1, vram_size - PAGE),
                _ => return inp.value64(),
            };
            let perms = u64::from(inp.u8() & 0x1c);
            1 | 2 | perms | (ap << 5) | addr
        };
        match inp.u8() % 4 {
            0 => {
                let mut w = |at: u64, v: u64| {
                    self.guest_write(1, at, &v.to_le_bytes());
                };
                for c in 0..4u64 {
                    w(CTX_TABLE + 16 * c, 1 | (1 << 5) | L3);
                    w(CTX_TABLE + 16 * c + 8, 0);
                }
                let idx = |va: u64, l: u32| (va >> (12 + 9 * l)) & 0x1ff;
                w(L3 + idx(MMU_VA, 3) * 8, 1 | (1 << 5) | L2);
                w(L2 + idx(MMU_VA, 2) * 8, 1 | (1 << 5) | L1);
                w(L1 + idx(MMU_VA, 1) * 8, 1 | (1 << 5) | L0);
                for p in 0..MMU_PAGES {
                    let e = pte(inp, self.vram_size);
                    self.guest_write(1, L0 + (idx(MMU_VA, 0) + p) * 8, &e.to_le_bytes());
                }
                let (ring_ap, ring) = if inp.u8() & 1 == 0 {
                    (0u32, A_IOVA + A_SIZE - 0x400)
                } else {
                    (1, CTX_TABLE + 8 * PAGE)
                };
                for (off, v) in [
                    (0x00, 0),
                    (0x08, CTX_TABLE as u32),
                    (0x0c, 0),
                    (0x10, 1 + u32::from(inp.u8() % 8)),
                    (0x14, 1),
                    (0x18, ring as u32),
                    (0x1c, (ring >> 32) as u32),
                    (0x20, 1 << (inp.u8() % 6)),
                    (0x24, ring_ap),
                    (0x00, 1 | (u32::from(inp.u8() & 1) << 1)),
                ] {
                    self.wr32(region::BAR0, MMU_REGS + off, v);
                }
            }
            1 => {
                let off = MMU_REGS + 4 * u64::from(inp.u8() % 64);
                if inp.u8() & 1 == 0 {
                    let v = inp.value32();
                    self.wr32(region::BAR0, off, v);
                } else {
                    let _ = self.rd32(region::BAR0, off);
                }
            }
            _ => {
                let at = L0 + 8 * ((MMU_VA >> 12) % 512 + u64::from(inp.u8()) % MMU_PAGES);
                let e = pte(inp, self.vram_size);
                self.guest_write(1, at, &e.to_le_bytes());
            }
        }
    }

    fn ring_setup(&mut self, inp: &mut Input<'_>) {
        let e = usize::from(inp.u8()) % (ENGINES + 1);
        let (ap, base) = match inp.u8() % 4 {
            0 => (1, 0x1000 * u64::from(inp.u8() % 16)),
            1 => (0, A_IOVA + 0x1000 * u64::from(inp.u8() % 16)),
            2 => self.pick_addr(inp),
            _ => (0, C_IOVA + 0x1000 * u64::from(inp.u8() % 16)),
        };
        let size = match inp.u8() % 8 {
            0 => inp.value32(),
            _ => 1 << (inp.u8() % 17),
        };
        let ctl = match inp.u8() % 8 {
            0 => inp.value32(),
            1 => control::ENABLE,
            2 => control::ENABLE | control::HALT,
            _ => control::ENABLE | control::IRQ_ENABLE,
        };
        self.wr32(region::BAR0, ereg(e, eoff::CONTROL), 0);
        self.wr32(region::BAR0, ereg(e, eoff::RING_BASE_LO), base as u32);
        self.wr32(
            region::BAR0,
            ereg(e, eoff::RING_BASE_HI),
            (base >> 32) as u32,
        );
        self.wr32(region::BAR0, ereg(e, eoff::RING_SIZE), size);
        self.wr32(region::BAR0, ereg(e, eoff::RING_APERTURE), u32::from(ap));
        self.wr32(region::BAR0, ereg(e, eoff::CONTROL), ctl);
        if e < ENGINES {
            let valid =
                size.is_power_of_two() && size <= 65536 && base.is_multiple_of(64) && ap < 2;
            self.rings[e] = valid.then_some((ap, base, size));
        }
    }

    /// Writes `n` descriptors at the engine's tail and rings its doorbell.
    fn submit(&mut self, inp: &mut Input<'_>) {
        let e = usize::from(inp.u8()) % ENGINES;
        let n = 1 + u32::from(inp.u8() % 4);
        let tail = self
            .rd32(region::BAR0, ereg(e, eoff::RING_TAIL))
            .unwrap_or(0);
        if let Some((ap, base, size)) = self.rings[e] {
            for k in 0..n {
                let desc = self.descriptor(inp);
                let slot = u64::from(tail.wrapping_add(k) & (size - 1));
                let at = base.wrapping_add(slot * DESC_SIZE as u64);
                self.guest_write(ap, at, &desc);
            }
        }
        let value = match inp.u8() % 16 {
            0 => inp.value32(),
            1 => tail.wrapping_sub(1),
            _ => tail.wrapping_add(n),
        };
        self.doorbell(e, value, inp.u8());
    }

    fn doorbell(&mut self, e: usize, value: u32, how: u8) {
        let word = DOORBELL_STRIDE * e as u64;
        match how % 4 {
            0 => {
                self.wr32(region::BAR0, ereg(e, eoff::RING_TAIL), value);
            }
            1 => {
                self.wr32(region::BAR0, DOORBELL_OFFSET + word, value);
            }
            _ => {
                let Some(db) = &self.doorbell else {
                    return;
                };
                let _ = db.store(value, MemoryRegionAddress(word), Ordering::Release);
                std::sync::atomic::fence(Ordering::SeqCst);
                let hint =
                    db.load::<u32>(MemoryRegionAddress(word + SLEEP_HINT), Ordering::Acquire);
                if how % 4 == 3 && hint.ok() != Some(0) {
                    self.wr32(region::BAR0, ereg(e, eoff::RING_TAIL), value);
                }
            }
        }
    }

    // --- Region accesses ---------------------------------------------------------------------

    fn pick_region_access(&self, inp: &mut Input<'_>) -> (u32, u64, usize) {
        let sel = inp.u8();
        let index = match sel % 16 {
            0..=6 => region::BAR0,
            7..=9 => region::BAR2,
            10..=12 => region::CONFIG,
            13 => u32::from(inp.below(10)),
            14 => inp.value32(),
            _ => region::BAR0,
        };
        let len = match inp.u8() % 8 {
            0..=3 => 4,
            4 => 1 << (inp.u8() % 4),
            5 => usize::from(inp.u8()),
            6 => usize::from(inp.u16() % 8193),
            _ => 8,
        };
        let size = match index {
            region::BAR0 => BAR0_SIZE,
            region::BAR2 => self.gpu.pci().bar_size(2),
            region::CONFIG => CONFIG_SIZE,
            _ => 0,
        };
        let base = match inp.u8() % 16 {
            0 => 0,
            1 => ENGINE_BASE + ENGINE_STRIDE * u64::from(inp.u8() % 17),
            2 => u64::from(MSIX_TABLE_OFFSET),
            3 => u64::from(MSIX_PBA_OFFSET),
            4 => MSIX_PBA_END,
            5 => DOORBELL_OFFSET,
            6 => DOORBELL_OFFSET + DOORBELL_SIZE,
            7 => size.wrapping_sub(len as u64),
            8 => inp.value64(),
            9 => u64::from(cap_offset::PCIE),
            10 => u64::from(cap_offset::AER),
            11 => 0x10_0000 - 4,
            _ => u64::from(inp.u16()),
        };
        let mut offset = inp.near(base);
        // Mostly inside the region, as the protocol server guarantees; sometimes not, which
        // the device must refuse or absorb on its own.
        if sel & 0x80 == 0 && size > 0 {
            let span = size.saturating_sub(len as u64).saturating_add(1);
            offset %= span;
        }
        if sel & 0x40 == 0 {
            offset &= !3;
        }
        (index, offset, len)
    }

    fn region_op(&mut self, inp: &mut Input<'_>, write: bool) {
        let (index, offset, len) = self.pick_region_access(inp);
        if write {
            let data = match inp.u8() % 4 {
                0 => inp.bytes(len),
                1 => vec![0xff; len],
                2 => vec![0; len],
                _ => {
                    let v = inp.value32().to_le_bytes();
                    (0..len).map(|i| v[i % 4]).collect()
                }
            };
            self.write(index, offset, &data);
        } else if let Some(b) = self.read(index, offset, len) {
            assert_eq!(b.len(), len);
        }
    }

    fn engine_reg_op(&mut self, inp: &mut Input<'_>) {
        let e = usize::from(inp.u8()) % (ENGINES + 2);
        let off = match inp.u8() % 4 {
            0 => u32::from(inp.u8()),
            _ => u32::from(inp.u8() % 0x2c) * 4,
        };
        if inp.u8() & 1 == 0 {
            let v = inp.value32();
            self.wr32(region::BAR0, ereg(e, off), v);
        } else {
            let _ = self.rd32(region::BAR0, ereg(e, off));
        }
    }

    fn register_op(&mut self, inp: &mut Input<'_>) {
        let sel = inp.u8();
        if sel % 16 >= 12 {
            self.mmu_op(inp);
            return;
        }
        let off = match sel % 10 {
            0 => reg::SCRATCH0,
            1 => reg::VRAM_INDEX_LO,
            2 => reg::VRAM_INDEX_HI,
            3 => reg::VRAM_DATA,
            4 => reg::IRQ_TRIGGER,
            5 => reg::IRQ_STATUS,
            6 => reg::STATUS,
            7 => reg::CLOCK_LO,
            8 => reg::ERR_CAUSE,
            _ => u32::from(inp.u8()) * 4,
        };
        if inp.u8() & 1 == 0 {
            let v = if off == reg::IRQ_TRIGGER {
                u32::from(inp.u8() % 24)
            } else {
                inp.value32()
            };
            self.wr32(region::BAR0, u64::from(off), v);
        } else {
            let _ = self.rd32(region::BAR0, u64::from(off));
        }
    }

    fn dma_map_op(&mut self, inp: &mut Input<'_>) {
        let kind = inp.u8();
        if kind.is_multiple_of(4) {
            self.map_canonical(inp.u8() % 4);
            return;
        }
        let iova = match inp.u8() % 8 {
            0 => inp.value64() & !(PAGE - 1),
            1 => A_IOVA + PAGE * u64::from(inp.u8() % 32),
            2 => D_IOVA + PAGE * u64::from(inp.u8() % 64),
            3 => (u64::MAX - PAGE * u64::from(inp.u8() % 4)) & !(PAGE - 1),
            _ => F_IOVA + PAGE * u64::from(inp.u8() % 32),
        };
        let size = match inp.u8() % 8 {
            0 => inp.value64() & !(PAGE - 1),
            1 => 1 << (12 + inp.u8() % 40),
            _ => PAGE * (1 + u64::from(inp.u8() % 16)),
        };
        // The protocol server validates these; keep to its contract.
        if size == 0 || iova.checked_add(size).is_none() {
            return;
        }
        let file_offset = match inp.u8() % 8 {
            0 => inp.value64(),
            1 => PAGE * u64::from(inp.u8() % 64) + u64::from(inp.u8() % 2) * 0x800,
            _ => PAGE * u64::from(inp.u8() % 48),
        };
        let p = inp.u8();
        let prot = DmaProt {
            read: p & 1 != 0 || p & 6 == 0,
            write: p & 2 != 0,
        };
        let prot = if p & 0xf0 == 0xf0 {
            DmaProt::default()
        } else {
            prot
        };
        let (file, weird) = match kind % 4 {
            1 => (Some(usize::from(inp.u8() % 3)), 0),
            2 => (None, 0),
            _ => (None, 1 + inp.u8() % 3),
        };
        self.map(iova, size, file_offset, prot, file, weird);
    }

    fn dma_unmap_op(&mut self, inp: &mut Input<'_>) {
        let k = inp.u8();
        let unmap = match k % 8 {
            0 => DmaUnmap::All,
            1 => DmaUnmap::Range {
                iova: inp.value64() & !(PAGE - 1),
                size: PAGE * (1 + u64::from(inp.u8() % 8)),
            },
            _ if !self.windows.is_empty() => {
                let w = self.windows[usize::from(inp.u8()) % self.windows.len()];
                // Sometimes the right start with the wrong size: must be refused.
                let size = if k & 0x80 != 0 { w.size + PAGE } else { w.size };
                DmaUnmap::Range { iova: w.iova, size }
            }
            _ => return,
        };
        if let DmaUnmap::Range { iova, size } = unmap {
            if size == 0 || iova.checked_add(size).is_none() {
                return;
            }
        }
        self.unmap(unmap);
    }

    fn config_op(&mut self, inp: &mut Input<'_>) {
        let off = match inp.u8() % 8 {
            0 => 0x04,
            1 => u64::from(cap_offset::PCIE) + 8,
            2 => u64::from(cap_offset::MSIX) + 2,
            3 => u64::from(cap_offset::AER) + 4,
            4 => u64::from(cap_offset::REBAR) + 8,
            5 => u64::from(cap_offset::PM) + 4,
            6 => 0x10 + 4 * u64::from(inp.u8() % 7),
            _ => u64::from(inp.u16() % 4096),
        };
        let len = [1usize, 2, 4, 4, 8, 3, 16, 64][usize::from(inp.u8() % 8)];
        let data = match inp.u8() % 3 {
            0 => vec![0xff; len],
            _ => inp.bytes(len),
        };
        let flr = (off..off + len as u64).contains(&(u64::from(cap_offset::PCIE) + 9))
            && off + len as u64 <= CONFIG_SIZE
            && data[(u64::from(cap_offset::PCIE) + 9 - off) as usize] & 0x80 != 0;
        if flr {
            self.count_jobs();
        }
        self.write(region::CONFIG, off, &data);
        if flr {
            self.check_power_on("FLR (fuzzed config write)");
        }
    }

    pub(super) fn step(&mut self, inp: &mut Input<'_>) {
        let op = usize::from(inp.u8()) % OP_KINDS;
        self.stats.ops[op] += 1;
        match op {
            0 => self.region_op(inp, false),
            1 => self.region_op(inp, true),
            2 => self.engine_reg_op(inp),
            3 => self.ring_setup(inp),
            4 | 5 => self.submit(inp),
            6 => {
                let e = usize::from(inp.u8()) % ENGINES;
                let (v, how) = (inp.value32(), inp.u8());
                self.doorbell(e, v, how);
            }
            7 => self.set_irqs(inp),
            8 => self.dma_map_op(inp),
            9 => self.dma_unmap_op(inp),
            10 => {
                let k = inp.u8();
                self.reset(k);
            }
            11 => {
                let ms = u64::from(inp.u8() % 4);
                self.settle(Duration::from_millis(ms));
            }
            12 => self.config_op(inp),
            13 => self.register_op(inp),
            14 => {
                // Guest writes descriptors (or anything) straight into its memory.
                let (ap, addr) = self.pick_addr(inp);
                let d = self.descriptor(inp);
                self.guest_write(ap, addr, &d);
            }
            _ => self.pump(),
        }
    }
}
