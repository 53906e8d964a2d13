//! Shared helpers of the integration tests: a `vugpu serve` child process, an in-process server
//! thread, and fd helpers.
#![allow(dead_code, clippy::unwrap_used)]

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestRegionMmap, MemoryRegionAddress, MmapRegion,
};
use vugpu_device::event_loop::{self, Server};
use vugpu_device::gpu::{Gpu, GpuConfig};
use vugpu_protocol::transport::RawMessage;
use vugpu_protocol::wire::{flags as wire_flags, Command as Cmd, Header, RegionAccessWire, Writer};
use vugpu_protocol::{Client, DmaLayout, ServerConfig};

pub mod rig;

pub const MIB: u64 = 1 << 20;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh private directory.
pub fn temp_dir(tag: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("vugpu-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Connects and negotiates. The server serves one client at a time and refuses a second one;
/// a client that was just dropped can stay alive for a moment when a concurrently running test
/// forks (the child holds a copy of the fd until it execs), so retry a refused connection.
pub fn connect(socket: &Path) -> Client {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let attempt = Client::connect(socket).and_then(|mut c| c.negotiate().map(|_| c));
        match attempt {
            Ok(c) => return c,
            Err(e) if Instant::now() > deadline => panic!("cannot connect to {socket:?}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// `vugpu serve` as a child process; SIGTERM on drop.
pub struct ServerProcess {
    pub child: Child,
    pub socket: PathBuf,
    pub dir: PathBuf,
}

impl ServerProcess {
    pub fn spawn(extra: &[&str]) -> ServerProcess {
        let dir = temp_dir("srv");
        let socket = dir.join("gpu.sock");
        let log = File::create(dir.join("stderr.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_vugpu"))
            .arg("serve")
            .arg("--socket")
            .arg(&socket)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        wait_for(&socket);
        ServerProcess { child, socket, dir }
    }

    pub fn client(&self) -> Client {
        connect(&self.socket)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    /// SIGTERM, wait, and return the exit status and the log.
    pub fn stop(mut self) -> (std::process::ExitStatus, String) {
        let status = self.terminate();
        (status, self.log())
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        terminate(&mut self.child)
    }
}

/// SIGTERM to a `vugpu serve` child, then its exit status (SIGKILL after 20 s).
pub fn terminate(child: &mut Child) -> std::process::ExitStatus {
    sigterm(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The `stats` reply of the control socket of the GPU served on `socket`.
pub fn ctl_stats(socket: &Path) -> serde_json::Value {
    let path = vugpu_device::ctl::ctl_path(socket);
    serde_json::from_str(&vugpu_device::ctl::request(&path, "stats").unwrap()).unwrap()
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.terminate();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The event loop in a thread of this process, stoppable, returning the device for inspection.
pub struct InProcServer {
    pub socket: PathBuf,
    stop: TestEventFd,
    thread: Option<JoinHandle<Server>>,
    dir: PathBuf,
}

impl InProcServer {
    pub fn start(cfg: GpuConfig) -> InProcServer {
        Self::start_with_layout(cfg, vugpu_protocol::DmaLayout::Spec)
    }

    /// With this DMA_READ/DMA_WRITE payload layout.
    pub fn start_with_layout(cfg: GpuConfig, layout: vugpu_protocol::DmaLayout) -> InProcServer {
        Self::start_built(move || Gpu::new(&cfg).unwrap(), layout)
    }

    /// Serves a device built by the caller (e.g. a member of a shared fabric).
    pub fn start_gpu(gpu: Gpu) -> InProcServer {
        Self::start_built(move || gpu, vugpu_protocol::DmaLayout::Spec)
    }

    fn start_built(
        build: impl FnOnce() -> Gpu + Send + 'static,
        layout: vugpu_protocol::DmaLayout,
    ) -> InProcServer {
        let dir = temp_dir("inproc");
        let socket = dir.join("gpu.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let stop = eventfd();
        let stop_fd = owned(&stop);
        let thread = std::thread::spawn(move || {
            let gpu = build();
            let mut server =
                Server::new(listener, gpu, ServerConfig::default(), Some(stop_fd)).unwrap();
            server.set_dma_layout(layout);
            event_loop::run(server).unwrap()
        });
        InProcServer {
            socket,
            stop,
            thread: Some(thread),
            dir,
        }
    }

    pub fn client(&self) -> Client {
        connect(&self.socket)
    }

    pub fn stop(mut self) -> Server {
        self.stop.write(1).unwrap();
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for InProcServer {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = self.stop.write(1);
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// SIGTERM to a child of this process.
pub fn sigterm(child: &Child) {
    let pid = rustix::process::Pid::from_child(child);
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
}

/// The test's end of a non-blocking eventfd (an interrupt or a stop fd).
#[derive(Debug)]
pub struct TestEventFd(OwnedFd);

impl TestEventFd {
    /// Reads and resets the counter; fails (EAGAIN) while it is 0.
    pub fn read(&self) -> std::io::Result<u64> {
        let mut b = [0u8; 8];
        rustix::io::read(&self.0, &mut b)?;
        Ok(u64::from_ne_bytes(b))
    }

    /// Adds `v` to the counter.
    pub fn write(&self, v: u64) -> std::io::Result<()> {
        rustix::io::write(&self.0, &v.to_ne_bytes())?;
        Ok(())
    }
}

impl AsFd for TestEventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl AsRawFd for TestEventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// An owned duplicate of an eventfd (to hand over with SET_IRQS / as a stop fd).
pub fn owned(e: &TestEventFd) -> OwnedFd {
    e.0.try_clone().unwrap()
}

/// A nonblocking eventfd.
pub fn eventfd() -> TestEventFd {
    TestEventFd(rustix::event::eventfd(0, rustix::event::EventfdFlags::NONBLOCK).unwrap())
}

/// Waits up to `ms` for the eventfd to be signalled; returns its counter (0 if it never was).
pub fn wait_event(e: &TestEventFd, ms: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_millis(ms);
    loop {
        if let Ok(v) = e.read() {
            return v;
        }
        if Instant::now() > deadline {
            return 0;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

pub fn memfd(len: u64) -> File {
    let flags = rustix::fs::MemfdFlags::CLOEXEC;
    let f = File::from(rustix::fs::memfd_create(c"vugpu-test", flags).unwrap());
    f.set_len(len).unwrap();
    f
}

/// A memfd sealed against shrinking and growing, as QEMU's `memory-backend-memfd` makes it.
pub fn sealed_memfd(len: u64) -> File {
    use rustix::fs::{MemfdFlags, SealFlags};
    let flags = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING;
    let f = File::from(rustix::fs::memfd_create(c"vugpu-sealed", flags).unwrap());
    f.set_len(len).unwrap();
    rustix::fs::fcntl_add_seals(&f, SealFlags::SHRINK | SealFlags::GROW).unwrap();
    f
}

/// Maps `len` bytes of `file` shared, as QEMU maps a BAR.
pub fn map_shared(file: File, len: u64) -> GuestRegionMmap<()> {
    let region = MmapRegion::<()>::from_file(FileOffset::new(file, 0), len as usize).unwrap();
    GuestRegionMmap::new(region, GuestAddress(0)).unwrap()
}

pub fn mmap_read_u32(m: &GuestRegionMmap<()>, off: u64) -> u32 {
    m.read_obj::<u32>(MemoryRegionAddress(off)).unwrap()
}

pub fn mmap_write(m: &GuestRegionMmap<()>, off: u64, data: &[u8]) {
    m.write_slice(data, MemoryRegionAddress(off)).unwrap();
}

pub fn rd32(c: &mut Client, region: u32, off: u64) -> u32 {
    let mut b = [0u8; 4];
    c.region_read(region, off, &mut b).unwrap();
    u32::from_le_bytes(b)
}

pub fn wr32(c: &mut Client, region: u32, off: u64, v: u32) {
    c.region_write(region, off, &v.to_le_bytes()).unwrap();
}

/// One framed message: header `id`, `command`, `flags` and `body`.
pub fn frame(id: u16, command: u16, flags: u32, body: &[u8]) -> Vec<u8> {
    let mut w = Writer::with_capacity(Header::SIZE + body.len());
    w.put(&Header {
        msg_id: id,
        command,
        size: (Header::SIZE + body.len()) as u32,
        flags,
        error: 0,
    });
    w.bytes(body);
    w.into_vec()
}

/// A REGION_READ of 4 bytes of BAR0 at `off`, encoded by hand so that it can be sent without
/// waiting for the reply (`Client::send_raw`).
pub fn region_read_msg(id: u16, off: u64) -> Vec<u8> {
    let mut body = Writer::with_capacity(RegionAccessWire::SIZE);
    body.put(&RegionAccessWire {
        offset: off,
        region: 0,
        count: 4,
    });
    frame(
        id,
        Cmd::RegionRead as u16,
        wire_flags::TYPE_COMMAND,
        &body.into_vec(),
    )
}

/// The reply to DMA_READ `req` (spec layout) with `data`.
pub fn dma_read_reply(req: &RawMessage, data: &[u8]) -> Vec<u8> {
    let (h, _) = DmaLayout::Spec.decode(&req.body).unwrap();
    assert_eq!(h.count as usize, data.len());
    let mut body = Writer::with_capacity(16 + data.len());
    DmaLayout::Spec.encode(h, data, &mut body).unwrap();
    frame(
        req.header.msg_id,
        req.header.command,
        wire_flags::TYPE_REPLY,
        &body.into_vec(),
    )
}
