//! The wire codec's cost (docs/benchmarks.md, "vfio-user codec"): decoding requests the way the
//! server does (`Request::decode` on a received header + body), framing a message
//! (`RawMessage::to_bytes`), the DMA_READ/DMA_WRITE prefix both ways, and the hot paths end to
//! end over a socketpair (REGION_READ/REGION_WRITE from a client to a `Session` on another
//! thread; server-initiated DMA_READ/DMA_WRITE answered by a client's `DmaHandler`).
//!
//! The message bytes are built by hand (`to_ne_bytes`), independent of the codec under test, so
//! the same source measures any codec implementation.
#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use vugpu_protocol::backend::{
    region_flags, BackendError, BackendResult, DeviceBackend, DeviceInfo, DmaMapping, DmaUnmap,
    IrqInfo, IrqSet, RegionInfo,
};
use vugpu_protocol::message::Request;
use vugpu_protocol::transport::RawMessage;
use vugpu_protocol::validate::Limits;
use vugpu_protocol::wire::{DmaRwHeader, Header, Writer};
use vugpu_protocol::{Client, DmaHandler, DmaLayout, ServerConfig, Session};

const LIMITS: Limits = Limits {
    max_data_xfer_size: 1 << 20,
    max_msg_fds: 16,
    pgsize: 4096,
};

fn header(command: u16, body_len: usize) -> Header {
    Header {
        msg_id: 7,
        command,
        size: u32::try_from(16 + body_len).unwrap(),
        flags: 0,
        error: 0,
    }
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn region_access(offset: u64, region: u32, count: u32, data: &[u8]) -> Vec<u8> {
    cat(&[
        &offset.to_ne_bytes(),
        &region.to_ne_bytes(),
        &count.to_ne_bytes(),
        data,
    ])
}

/// Decode one request as the server does: the header was already read, the body is owned.
fn bench_request(c: &mut Criterion, name: &str, command: u16, body: Vec<u8>) {
    let h = header(command, body.len());
    c.bench_function(name, |b| {
        b.iter_batched(
            || body.clone(),
            |body| {
                let r = Request::decode(black_box(&h), body, Vec::<OwnedFd>::new(), &LIMITS);
                black_box(r.is_ok())
            },
            BatchSize::SmallInput,
        )
    });
}

fn decode(c: &mut Criterion) {
    let hbytes = cat(&[
        &7u16.to_ne_bytes(),
        &9u16.to_ne_bytes(),
        &32u32.to_ne_bytes(),
        &0u32.to_ne_bytes(),
        &0u32.to_ne_bytes(),
    ]);
    c.bench_function("decode/header", |b| {
        b.iter(|| Header::decode(black_box(&hbytes)).unwrap())
    });
    bench_request(c, "decode/region_read", 9, region_access(0x1000, 0, 4, &[]));
    bench_request(
        c,
        "decode/region_write_4B",
        10,
        region_access(0x1000, 0, 4, &[1, 2, 3, 4]),
    );
    bench_request(
        c,
        "decode/region_write_4KiB",
        10,
        region_access(0x1000, 2, 4096, &[0x5a; 4096]),
    );
    bench_request(
        c,
        "decode/dma_map",
        2,
        cat(&[
            &32u32.to_ne_bytes(),
            &3u32.to_ne_bytes(),
            &0u64.to_ne_bytes(),
            &0x10_0000u64.to_ne_bytes(),
            &0x10_0000u64.to_ne_bytes(),
        ]),
    );
    bench_request(
        c,
        "decode/set_irqs_bool_4",
        8,
        cat(&[
            &24u32.to_ne_bytes(),
            &((1u32 << 1) | (1 << 5)).to_ne_bytes(),
            &2u32.to_ne_bytes(),
            &0u32.to_ne_bytes(),
            &4u32.to_ne_bytes(),
            &[1, 0, 1, 0],
        ]),
    );
    let mut multi = 200u64.to_ne_bytes().to_vec();
    for i in 0..200u64 {
        multi.extend_from_slice(&region_access(i * 4, 0, 4, &[7; 8]));
    }
    bench_request(c, "decode/region_write_multi_200", 15, multi);

    let mut rw = 0x2000u64.to_ne_bytes().to_vec();
    rw.extend_from_slice(&4096u64.to_ne_bytes());
    rw.extend_from_slice(&[0xa5; 4096]);
    c.bench_function("decode/dma_rw_prefix_4KiB", |b| {
        b.iter(|| {
            let (h, rest) = DmaLayout::Spec.decode(black_box(&rw)).unwrap();
            black_box((h.count, rest.len()))
        })
    });
}

fn encode(c: &mut Criterion) {
    let data = vec![0x3cu8; 4096];
    let mut g = c.benchmark_group("encode");
    for (name, n) in [("4B", 4usize), ("4KiB", 4096)] {
        let msg = RawMessage {
            header: header(10, 16 + n),
            body: region_access(0x1000, 0, n as u32, &data[..n]),
            fds: Vec::new(),
        };
        g.bench_function(format!("region_write_message_{name}"), |b| {
            b.iter(|| black_box(&msg).to_bytes())
        });
        g.bench_function(format!("dma_write_body_{name}"), |b| {
            b.iter(|| {
                let mut w = Writer::with_capacity(16 + n);
                DmaLayout::Spec
                    .encode(
                        DmaRwHeader {
                            address: 0x2000,
                            count: n as u64,
                        },
                        black_box(&data[..n]),
                        &mut w,
                    )
                    .unwrap();
                w.into_vec()
            })
        });
    }
    g.finish();
}

/// A device with one 64 KiB BAR of plain memory (region 0).
struct MemDevice(Vec<u8>);

impl DeviceBackend for MemDevice {
    fn device_info(&self) -> DeviceInfo {
        DeviceInfo {
            reset: false,
            num_regions: 1,
            num_irqs: 0,
        }
    }
    fn region_info(&self, index: u32) -> BackendResult<RegionInfo<'_>> {
        match index {
            0 => Ok(RegionInfo {
                flags: region_flags::READ | region_flags::WRITE,
                size: self.0.len() as u64,
                mmap: None,
            }),
            _ => Err(BackendError::NotFound(format!("region {index}"))),
        }
    }
    fn irq_info(&self, index: u32) -> BackendResult<IrqInfo> {
        Err(BackendError::NotFound(format!("irq {index}")))
    }
    fn region_read(&mut self, _index: u32, offset: u64, data: &mut [u8]) -> BackendResult<()> {
        let o = offset as usize;
        data.copy_from_slice(&self.0[o..o + data.len()]);
        Ok(())
    }
    fn region_write(&mut self, _index: u32, offset: u64, data: &[u8]) -> BackendResult<()> {
        let o = offset as usize;
        self.0[o..o + data.len()].copy_from_slice(data);
        Ok(())
    }
    fn dma_map(&mut self, _mapping: DmaMapping) -> BackendResult<()> {
        Ok(())
    }
    fn dma_unmap(&mut self, _unmap: DmaUnmap) -> BackendResult<()> {
        Ok(())
    }
    fn set_irqs(&mut self, _irqs: IrqSet) -> BackendResult<()> {
        Ok(())
    }
    fn reset(&mut self) -> BackendResult<()> {
        Ok(())
    }
    fn client_disconnected(&mut self) {}
}

fn region_roundtrip(c: &mut Criterion) {
    let (cs, ss) = UnixStream::pair().unwrap();
    let server = std::thread::spawn(move || {
        let mut dev = MemDevice(vec![0; 64 * 1024]);
        let mut session = Session::new(ss, ServerConfig::default());
        session.run(&mut dev).unwrap();
    });
    let mut client = Client::from_stream(cs);
    client.negotiate().unwrap();
    let mut g = c.benchmark_group("roundtrip");
    for n in [4usize, 4096] {
        let data = vec![0x11u8; n];
        let mut buf = vec![0u8; n];
        g.throughput(Throughput::Bytes(n as u64));
        g.bench_function(format!("region_read_{n}B"), |b| {
            b.iter(|| client.region_read(0, 0x100, &mut buf).unwrap())
        });
        g.bench_function(format!("region_write_{n}B"), |b| {
            b.iter(|| client.region_write(0, 0x100, black_box(&data)).unwrap())
        });
    }
    g.finish();
    drop(client);
    server.join().unwrap();
}

struct Mem(Vec<u8>);

impl DmaHandler for Mem {
    fn dma_read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), i32> {
        let a = addr as usize;
        buf.copy_from_slice(self.0.get(a..a + buf.len()).ok_or(libc::EFAULT)?);
        Ok(())
    }
    fn dma_write(&mut self, addr: u64, data: &[u8]) -> Result<(), i32> {
        let a = addr as usize;
        self.0
            .get_mut(a..a + data.len())
            .ok_or(libc::EFAULT)?
            .copy_from_slice(data);
        Ok(())
    }
}

fn dma_roundtrip(c: &mut Criterion) {
    let (cs, ss) = UnixStream::pair().unwrap();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let client = std::thread::spawn(move || {
        let mut client = Client::from_stream(cs);
        client.set_dma_handler(Box::new(Mem(vec![0; 1 << 20])));
        client.negotiate().unwrap();
        while stop_rx.try_recv().is_err() {
            // Serve DMA messages until told to stop (a timeout just loops).
            let _ = client.serve_one(Duration::from_millis(50));
        }
    });
    let mut session = Session::new(ss, ServerConfig::default());
    let mut dev = MemDevice(vec![0; 4096]);
    session.handle_message(&mut dev).unwrap();
    let mut g = c.benchmark_group("roundtrip");
    for n in [4usize, 4096, 65536] {
        let data = vec![0x22u8; n];
        let mut buf = vec![0u8; n];
        g.throughput(Throughput::Bytes(n as u64));
        g.bench_function(format!("dma_read_{n}B"), |b| {
            b.iter(|| session.dma_read(0x1000, &mut buf).unwrap())
        });
        g.bench_function(format!("dma_write_{n}B"), |b| {
            b.iter(|| session.dma_write(0x1000, black_box(&data)).unwrap())
        });
    }
    g.finish();
    stop_tx.send(()).unwrap();
    client.join().unwrap();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = decode, encode, region_roundtrip, dma_roundtrip
}
criterion_main!(benches);
