//! The event loop never blocks on a stale socket readiness.
//!
//! Found by the guest `dma` suite (about one run in a hundred, and once in CI): an engine
//! queued a DMA message for an fd-less window (QEMU's BIOS ROM) at the moment the client's next
//! request arrived, so one `epoll_wait` reported both, the engine first. The engine's DMA wait
//! serves client requests and consumed that request; the session's readiness, handled next,
//! was stale, and a blocking read then waited for the client's next message. The guest driver
//! sent none (it waited for the engine, whose next DMA message waited for the loop) until its
//! 5 s timeout: "handling Some(Session) took 4999839 us".
//!
//! Here the test drives the event loop one `epoll_wait` at a time to build exactly that
//! batch, then checks that the iteration returns without another client message.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::rig::{sys, vram, Doorbell, Rig};
use common::{connect, dma_read_reply, region_read_msg, temp_dir, MIB};
use event_manager::{EventManager, SubscriberOps};
use vugpu_device::engine::desc::{flags, RawDescriptor};
use vugpu_device::engine::regs::offset;
use vugpu_device::event_loop::Server;
use vugpu_device::gpu::{Gpu, GpuConfig};
use vugpu_device::regs::spec::offset as reg;
use vugpu_protocol::wire::Command;
use vugpu_protocol::ServerConfig;

/// What the test asks of the event-loop thread.
enum Cmd {
    /// Run `epoll_wait` and dispatch once (timeout in ms); answer how long it took.
    Once(i32),
    Stop,
}

/// The event loop in a thread that either runs freely or, when paused, one iteration at a
/// time on request.
struct SteppedLoop {
    free: Arc<AtomicBool>,
    cmds: mpsc::Sender<Cmd>,
    done: mpsc::Receiver<Duration>,
    paused: mpsc::Receiver<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SteppedLoop {
    fn start(listener: UnixListener, cfg: GpuConfig) -> SteppedLoop {
        let free = Arc::new(AtomicBool::new(true));
        let (cmds, cmd_rx) = mpsc::channel();
        let (done_tx, done) = mpsc::channel();
        let (paused_tx, paused) = mpsc::channel();
        let f = free.clone();
        let thread = std::thread::spawn(move || {
            let gpu = Gpu::new(&cfg).unwrap();
            let server = Server::new(listener, gpu, ServerConfig::default(), None).unwrap();
            let mut em = EventManager::<Server>::new().unwrap();
            em.add_subscriber(server);
            let mut was_free = true;
            loop {
                if f.load(Ordering::Acquire) {
                    was_free = true;
                    em.run_with_timeout(1).unwrap();
                    continue;
                }
                if was_free {
                    was_free = false;
                    paused_tx.send(()).unwrap();
                }
                match cmd_rx.recv_timeout(Duration::from_millis(5)) {
                    Ok(Cmd::Once(ms)) => {
                        let t = Instant::now();
                        em.run_with_timeout(ms).unwrap();
                        done_tx.send(t.elapsed()).unwrap();
                    }
                    Ok(Cmd::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                }
            }
        });
        SteppedLoop {
            free,
            cmds,
            done,
            paused,
            thread: Some(thread),
        }
    }

    /// Stops free running; returns once the thread is outside `epoll_wait` and dispatch.
    fn pause(&self) {
        self.free.store(false, Ordering::Release);
        self.paused.recv_timeout(Duration::from_secs(10)).unwrap();
    }

    fn resume(&self) {
        self.free.store(true, Ordering::Release);
    }
}

impl Drop for SteppedLoop {
    fn drop(&mut self) {
        self.free.store(false, Ordering::Release);
        let _ = self.cmds.send(Cmd::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn a_request_consumed_by_a_dma_wait_does_not_block_the_loop() {
    let dir = temp_dir("stall");
    let socket = dir.join("gpu.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let lp = SteppedLoop::start(listener, GpuConfig::new(64 * MIB));
    let mut r = Rig::new(connect(&socket), 4 * MIB);
    // An fd-less, read-only window like QEMU's BIOS ROM: reached through DMA_READ messages.
    let rom = 0xfffc_0000u64;
    r.map_fd_less(rom, 0x4_0000, false);
    r.enable(0);
    // Idle iterations before the pause: an fd that epoll reported level-triggered stays on its
    // ready list until the next epoll_wait finds it not ready, and would keep its place ahead
    // of the engine's eventfd.
    std::thread::sleep(Duration::from_millis(50));
    lp.pause();
    // Descriptor 0 reads the window (one DMA message), descriptor 1 does not, and interrupts.
    r.submit(
        0,
        &[
            RawDescriptor::copy(sys(rom + 0x40), vram(0), 64),
            RawDescriptor::fill(vram(0x1000), 64, 0x5a5a_5a5a).with_flags(flags::IRQ),
        ],
        Doorbell::Mmap,
    );
    // The engine polls the doorbell page (at most 1 ms apart), fetches descriptor 0 and queues
    // its DMA message: the engine eventfd is ready first...
    std::thread::sleep(Duration::from_millis(200));
    // ...and then the session socket: a request, sent without waiting for its reply.
    let id = r.c.next_msg_id();
    r.c.send_raw(&region_read_msg(id, u64::from(reg::SCRATCH0)), &[])
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));

    // One epoll_wait returns both. The engine's DMA wait sends DMA_READ and serves the
    // REGION_READ meanwhile; the session readiness that follows is stale.
    lp.cmds.send(Cmd::Once(0)).unwrap();
    let dma = r.c.recv_raw().unwrap().unwrap();
    assert_eq!(dma.header.command, Command::DmaRead as u16);
    r.c.send_raw(&dma_read_reply(&dma, &[0xa5; 64]), &[])
        .unwrap();
    let reply = r.c.recv_raw().unwrap().unwrap();
    assert!(reply.header.is_reply() && reply.header.msg_id == id);

    // The client now sends nothing, as a driver waiting for its interrupt. The iteration must
    // end on its own; the old loop read the socket blocking and waited for the next message.
    let took = match lp.done.recv_timeout(Duration::from_secs(3)) {
        Ok(t) => t,
        Err(_) => {
            // Unblock the loop so the test can end, then fail.
            let id = r.c.next_msg_id();
            r.c.send_raw(&region_read_msg(id, u64::from(reg::SCRATCH0)), &[])
                .unwrap();
            let _ = lp.done.recv_timeout(Duration::from_secs(5));
            panic!("the event loop blocked on a stale session readiness until the next message");
        }
    };
    assert!(took < Duration::from_secs(3));

    // And the job completes: its interrupt arrives with the loop running again.
    lp.resume();
    assert_eq!(common::wait_event(&r.vectors[1], 5000), 1, "no completion");
    assert_eq!(r.vram_read(0, 64), vec![0xa5; 64]);
    assert_eq!(r.vram_read(0x1000, 64), vec![0x5a; 64]);
    assert_eq!(r.reg(0, offset::RING_HEAD), 2);
    drop(r);
    drop(lp);
    let _ = std::fs::remove_dir_all(&dir);
}
