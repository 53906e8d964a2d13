//! Server-initiated DMA that keeps serving the client while it waits.
//!
//! [`Session::dma_read`] / [`Session::dma_write`] queue client requests that arrive while they
//! wait for the DMA reply. Against QEMU that can stall: QEMU serves DMA_READ/DMA_WRITE on its
//! main loop with the BQL held, and a vCPU blocked in a trapped MMIO access (waiting for our
//! REGION_READ/WRITE reply) holds the BQL. The `_serving` variants handle such requests at once
//! (decode, dispatch to the backend, reply), so the vCPU gets its reply, releases the BQL, and
//! QEMU then answers the DMA message. Requests already queued are handled first, in order.
//!
//! The backend handed in is the same one the session normally dispatches to; it is called only
//! for client requests, never from inside another backend call.

use std::os::fd::AsFd;
use std::time::Instant;

use super::Session;
use crate::backend::DeviceBackend;
use crate::error::{ProtocolError, Result};
use crate::transport::{recv_message, RawMessage};
use crate::wire::{Command, DmaLayout, DmaRwHeader};

impl Session {
    /// Like [`Session::dma_read`], but client requests arriving while waiting are handled with
    /// `dev` at once instead of being queued.
    pub fn dma_read_serving<D: DeviceBackend + ?Sized>(
        &mut self,
        addr: u64,
        buf: &mut [u8],
        dev: &mut D,
    ) -> Result<()> {
        self.serve_queued(dev)?;
        let chunk = self.dma_chunk()?;
        addr.checked_add(buf.len() as u64)
            .ok_or_else(|| ProtocolError::invalid("DMA range overflows"))?;
        let mut a = addr;
        for part in buf.chunks_mut(chunk) {
            let want = DmaRwHeader {
                address: a,
                count: part.len() as u64,
            };
            let id = self.send_dma_request(Command::DmaRead, want, &[])?;
            let reply = self.await_reply_serving(id, Command::DmaRead, dev)?;
            let (got, rest) = self.dma_layout.decode(&reply.body)?;
            if got != want {
                return Err(ProtocolError::invalid(format!(
                    "DMA_READ reply for {:#x}+{:#x}, asked {:#x}+{:#x}",
                    got.address, got.count, want.address, want.count
                )));
            }
            let data = rest
                .get(..part.len())
                .ok_or_else(|| ProtocolError::invalid("DMA_READ reply shorter than its count"))?;
            if rest.len() > part.len() + self.dma_layout.trailer_len() {
                return Err(ProtocolError::invalid(
                    "DMA_READ reply longer than its count",
                ));
            }
            part.copy_from_slice(data);
            self.stats.dma_bytes += part.len() as u64;
            a += part.len() as u64;
        }
        Ok(())
    }

    /// Like [`Session::dma_write`], but client requests arriving while waiting are handled with
    /// `dev` at once instead of being queued.
    pub fn dma_write_serving<D: DeviceBackend + ?Sized>(
        &mut self,
        addr: u64,
        data: &[u8],
        dev: &mut D,
    ) -> Result<()> {
        self.serve_queued(dev)?;
        let chunk = self.dma_chunk()?;
        addr.checked_add(data.len() as u64)
            .ok_or_else(|| ProtocolError::invalid("DMA range overflows"))?;
        let mut a = addr;
        for part in data.chunks(chunk) {
            let want = DmaRwHeader {
                address: a,
                count: part.len() as u64,
            };
            let id = self.send_dma_request(Command::DmaWrite, want, part)?;
            let reply = self.await_reply_serving(id, Command::DmaWrite, dev)?;
            // QEMU answers header-only; a spec client echoes address and count.
            if !reply.body.is_empty() {
                let (got, _) = DmaLayout::Spec
                    .decode(&reply.body)
                    .or_else(|_| DmaLayout::Qemu.decode(&reply.body))?;
                if got != want {
                    return Err(ProtocolError::invalid(
                        "DMA_WRITE reply does not echo the request",
                    ));
                }
            }
            self.stats.dma_bytes += part.len() as u64;
            a += part.len() as u64;
        }
        Ok(())
    }

    /// Handles the requests queued by earlier non-serving DMA calls.
    fn serve_queued<D: DeviceBackend + ?Sized>(&mut self, dev: &mut D) -> Result<()> {
        while let Some(m) = self.pop_pending() {
            self.serve_request(m, dev)?;
        }
        Ok(())
    }

    fn serve_request<D: DeviceBackend + ?Sized>(
        &mut self,
        m: RawMessage,
        dev: &mut D,
    ) -> Result<()> {
        let r = self.process(m, dev);
        self.fatal_guard(r).map(|_| ())
    }

    /// Reads messages until the reply to (`id`, `cmd`) arrives; client requests are handled.
    fn await_reply_serving<D: DeviceBackend + ?Sized>(
        &mut self,
        id: u16,
        cmd: Command,
        dev: &mut D,
    ) -> Result<RawMessage> {
        let deadline = Instant::now() + self.dma_timeout;
        loop {
            if self.closed {
                return Err(ProtocolError::Disconnected);
            }
            let limits = self.recv_limits();
            let m = match recv_message(self.stream.as_fd(), &limits, Some(deadline)) {
                Ok(Some(m)) => m,
                Ok(None) => {
                    self.closed = true;
                    return Err(ProtocolError::Disconnected);
                }
                Err(e @ ProtocolError::WaitTimeout(_)) => return Err(e),
                Err(e) => return self.fatal_guard(Err(e)),
            };
            if m.header.is_reply() {
                if m.header.msg_id == id && m.header.command == cmd as u16 {
                    if !m.fds.is_empty() {
                        return Err(ProtocolError::invalid("fds on a DMA reply"));
                    }
                    if m.header.is_error() {
                        return Err(ProtocolError::Remote {
                            errno: i32::try_from(m.header.error).unwrap_or(libc::EIO),
                        });
                    }
                    return Ok(m);
                }
                self.stats.stray_replies += 1;
                continue;
            }
            self.serve_request(m, dev)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;
    use std::thread;

    use super::*;
    use crate::backend::{
        BackendError, BackendResult, DeviceInfo, DmaMapping, DmaUnmap, IrqInfo, IrqSet, RegionInfo,
    };
    use crate::client::Client;
    use crate::server::ServerConfig;
    use crate::wire::{flags, Header, RegionAccessWire, Writer};

    /// A device with one 4 KiB readable region 0 holding `0xab` bytes.
    struct Dev {
        reads: u32,
    }

    impl DeviceBackend for Dev {
        fn device_info(&self) -> DeviceInfo {
            DeviceInfo {
                reset: false,
                num_regions: 9,
                num_irqs: 5,
            }
        }
        fn region_info(&self, index: u32) -> BackendResult<RegionInfo<'_>> {
            Ok(RegionInfo {
                flags: if index == 0 {
                    crate::backend::region_flags::READ
                } else {
                    0
                },
                size: if index == 0 { 4096 } else { 0 },
                mmap: None,
            })
        }
        fn irq_info(&self, _index: u32) -> BackendResult<IrqInfo> {
            Ok(IrqInfo { flags: 0, count: 0 })
        }
        fn region_read(&mut self, _index: u32, _offset: u64, data: &mut [u8]) -> BackendResult<()> {
            self.reads += 1;
            data.fill(0xab);
            Ok(())
        }
        fn region_write(&mut self, _: u32, _: u64, _: &[u8]) -> BackendResult<()> {
            Err(BackendError::NotSupported("ro".into()))
        }
        fn dma_map(&mut self, _: DmaMapping) -> BackendResult<()> {
            Ok(())
        }
        fn dma_unmap(&mut self, _: DmaUnmap) -> BackendResult<()> {
            Ok(())
        }
        fn set_irqs(&mut self, _: IrqSet) -> BackendResult<()> {
            Ok(())
        }
        fn reset(&mut self) -> BackendResult<()> {
            Ok(())
        }
        fn client_disconnected(&mut self) {}
    }

    fn region_read_msg(id: u16) -> Vec<u8> {
        let mut w = Writer::with_capacity(32);
        w.put(&Header {
            msg_id: id,
            command: Command::RegionRead as u16,
            size: 32,
            flags: flags::TYPE_COMMAND,
            error: 0,
        });
        w.put(&RegionAccessWire {
            offset: 0,
            region: 0,
            count: 4,
        });
        w.into_vec()
    }

    fn reply_to(h: &Header, payload: &[u8]) -> Vec<u8> {
        let mut w = Writer::with_capacity(16 + payload.len());
        w.put(&Header {
            msg_id: h.msg_id,
            command: h.command,
            size: (16 + payload.len()) as u32,
            flags: flags::TYPE_REPLY,
            error: 0,
        });
        w.bytes(payload);
        w.into_vec()
    }

    /// The QEMU deadlock shape: the client has a REGION_READ outstanding and will not answer the
    /// DMA_READ until it gets the region reply. The serving variant answers the REGION_READ while
    /// it waits, so both complete.
    #[test]
    fn region_request_is_answered_while_waiting_for_dma() {
        let (a, b) = UnixStream::pair().unwrap();
        let client = thread::spawn(move || {
            let mut c = Client::from_stream(b);
            c.negotiate().unwrap();
            c.send_raw(&region_read_msg(0x4242), &[]).unwrap();
            // The server's DMA_READ arrives first (it was sent before our request was read).
            let dma = c.recv_raw().unwrap().unwrap();
            assert_eq!(dma.header.command, Command::DmaRead as u16);
            let (h, _) = DmaLayout::default().decode(&dma.body).unwrap();
            // Like QEMU's vCPU holding the BQL: nothing is served until the region reply comes.
            let region = c.recv_raw().unwrap().unwrap();
            assert!(region.header.is_reply());
            assert_eq!(region.header.msg_id, 0x4242);
            assert_eq!(&region.body[16..], &[0xab; 4]);
            let mut body = Writer::with_capacity(64);
            let data: Vec<u8> = (0..h.count as u8).collect();
            DmaLayout::default().encode(h, &data, &mut body).unwrap();
            c.send_raw(&reply_to(&dma.header, &body.into_vec()), &[])
                .unwrap();
        });
        let mut s = Session::new(a, ServerConfig::default());
        let mut dev = Dev { reads: 0 };
        assert_eq!(
            s.handle_message(&mut dev).unwrap(),
            super::super::Status::Continue
        );
        // Let the client's REGION_READ be in the socket before the DMA starts waiting.
        thread::sleep(std::time::Duration::from_millis(50));
        let mut buf = [0u8; 8];
        s.dma_read_serving(0x1000, &mut buf, &mut dev).unwrap();
        assert_eq!(buf, [0, 1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(dev.reads, 1);
        assert!(!s.has_pending());
        client.join().unwrap();
    }

    /// After a serving DMA wait consumed the request that made the socket readable, the
    /// event loop's readiness is stale: `handle_ready_message` says Idle at once instead of
    /// waiting for the client's next message; a message that has begun arriving is read whole.
    #[test]
    fn ready_message_never_waits_for_a_message_to_start() {
        use std::time::{Duration, Instant};
        let (a, b) = UnixStream::pair().unwrap();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let client = thread::spawn(move || {
            let mut c = Client::from_stream(b);
            c.negotiate().unwrap();
            go_rx.recv().unwrap();
            // Half a message, then the rest 100 ms later.
            let msg = region_read_msg(0x77);
            c.send_raw(&msg[..10], &[]).unwrap();
            thread::sleep(Duration::from_millis(100));
            c.send_raw(&msg[10..], &[]).unwrap();
            let reply = c.recv_raw().unwrap().unwrap();
            assert_eq!(reply.header.msg_id, 0x77);
            go_rx.recv().unwrap();
        });
        let mut s = Session::new(a, ServerConfig::default());
        let mut dev = Dev { reads: 0 };
        s.handle_message(&mut dev).unwrap();
        let t = Instant::now();
        assert_eq!(
            s.handle_ready_message(&mut dev).unwrap(),
            super::super::Status::Idle
        );
        assert!(t.elapsed() < Duration::from_secs(1));
        go_tx.send(()).unwrap();
        // Once the first byte is there the message is read in full.
        while s.handle_ready_message(&mut dev).unwrap() == super::super::Status::Idle {
            thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(dev.reads, 1);
        go_tx.send(()).unwrap();
        client.join().unwrap();
        // The client hung up: Closed, not Idle.
        assert_eq!(
            s.handle_ready_message(&mut dev).unwrap(),
            super::super::Status::Closed
        );
    }

    #[test]
    fn write_serving_through_the_clients_dma_handler() {
        use std::sync::{Arc, Mutex};
        struct Mem(Arc<Mutex<Vec<u8>>>);
        impl crate::client::DmaHandler for Mem {
            fn dma_read(&mut self, addr: u64, buf: &mut [u8]) -> std::result::Result<(), i32> {
                let m = self.0.lock().unwrap();
                let a = addr as usize;
                buf.copy_from_slice(m.get(a..a + buf.len()).ok_or(libc::EFAULT)?);
                Ok(())
            }
            fn dma_write(&mut self, addr: u64, data: &[u8]) -> std::result::Result<(), i32> {
                let mut m = self.0.lock().unwrap();
                let a = addr as usize;
                m.get_mut(a..a + data.len())
                    .ok_or(libc::EFAULT)?
                    .copy_from_slice(data);
                Ok(())
            }
        }
        let mem = Arc::new(Mutex::new(vec![0u8; 4096]));
        let (a, b) = UnixStream::pair().unwrap();
        let m2 = mem.clone();
        let client = thread::spawn(move || {
            let mut c = Client::from_stream(b);
            c.set_dma_handler(Box::new(Mem(m2)));
            c.negotiate().unwrap();
            // Serve DMA messages until the server hangs up.
            while c
                .serve_one(std::time::Duration::from_secs(5))
                .unwrap_or(false)
            {}
        });
        let mut s = Session::new(a, ServerConfig::default());
        let mut dev = Dev { reads: 0 };
        assert!(s.dma_message_size().is_err(), "not negotiated yet");
        s.handle_message(&mut dev).unwrap();
        assert_eq!(
            s.dma_message_size().unwrap(),
            crate::server::DMA_MESSAGE_MAX_DATA as usize
        );
        s.dma_write_serving(100, b"hello", &mut dev).unwrap();
        let mut back = [0u8; 5];
        s.dma_read_serving(100, &mut back, &mut dev).unwrap();
        assert_eq!(&back, b"hello");
        assert_eq!(&mem.lock().unwrap()[100..105], b"hello");
        // An error reply is reported as Remote.
        let mut far = [0u8; 4];
        assert!(matches!(
            s.dma_read_serving(1 << 20, &mut far, &mut dev),
            Err(ProtocolError::Remote { errno }) if errno == libc::EFAULT
        ));
        drop(s);
        client.join().unwrap();
    }
}
