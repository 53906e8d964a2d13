//! Message framing over a UNIX stream socket with SCM_RIGHTS fd passing.
//!
//! The system calls (`poll`, `recvmsg` with `MSG_CMSG_CLOEXEC`, `sendmsg` with SCM_RIGHTS) go
//! through `rustix`, which builds and parses the control messages and hands received descriptors
//! over as [`OwnedFd`]s (any left unread in the control buffer are closed when it drops): this
//! module, like the rest of the crate, has no `unsafe` code.
//!
//! Rules enforced here:
//! - received fds are always owned (`OwnedFd`) and opened with `MSG_CMSG_CLOEXEC`;
//! - once the first byte of a message has arrived, the rest must arrive within a bounded time,
//!   or the read fails with [`ProtocolError::Timeout`];
//! - the header's size is checked against the limit *before* the body is allocated;
//! - more fds than allowed on one message is a fatal [`ProtocolError::TooManyFds`] (the fds
//!   are closed);
//! - sends never raise SIGPIPE and never block longer than their timeout.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

use crate::error::{ProtocolError, Result};
use crate::wire::{Header, Writer};

/// Kernel limit of fds in one SCM_RIGHTS message (`SCM_MAX_FD`).
pub const SCM_MAX_FD: usize = 253;

/// Control buffer large enough for SCM_MAX_FD fds (so the kernel never has to truncate and we
/// can report the exact count), plus slack for aligning it.
const CMSG_BUF: usize = rustix::cmsg_space!(ScmRights(SCM_MAX_FD));

/// One framed message: header, body (`header.size - 16` bytes) and the fds that came with it.
#[derive(Debug)]
pub struct RawMessage {
    /// Decoded header.
    pub header: Header,
    /// Payload after the header.
    pub body: Vec<u8>,
    /// Descriptors received with the message.
    pub fds: Vec<OwnedFd>,
}

impl RawMessage {
    /// Encoded bytes (header + body), as they were on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(Header::SIZE + self.body.len());
        w.put(&self.header);
        w.bytes(&self.body);
        w.into_vec()
    }
}

/// Limits applied while receiving one message.
#[derive(Debug, Clone, Copy)]
pub struct RecvLimits {
    /// Largest acceptable `header.size`.
    pub max_size: u32,
    /// Most fds acceptable on one message.
    pub max_fds: usize,
    /// Time allowed for the rest of a message once its first byte has arrived.
    pub body_timeout: Duration,
}

fn poll_timeout(deadline: Option<Instant>) -> Option<Option<Timespec>> {
    match deadline {
        None => Some(None),
        Some(d) => {
            let left = d.checked_duration_since(Instant::now())?;
            if left.is_zero() {
                return None;
            }
            // Round up to whole milliseconds (as before with poll(2)'s int timeout) so we never
            // spin with a zero timeout before the deadline.
            let ms = left.as_millis().saturating_add(1);
            let ms = i64::try_from(ms).unwrap_or(i64::MAX);
            Some(Some(Timespec {
                tv_sec: ms / 1000,
                tv_nsec: (ms % 1000) * 1_000_000,
            }))
        }
    }
}

/// Wait until `fd` has `events` or the deadline passes. Returns false on timeout.
fn wait_for(fd: BorrowedFd<'_>, events: PollFlags, deadline: Option<Instant>) -> Result<bool> {
    loop {
        let Some(timeout) = poll_timeout(deadline) else {
            return Ok(false);
        };
        let mut pfd = [PollFd::from_borrowed_fd(fd, events)];
        match rustix::event::poll(&mut pfd, timeout.as_ref()) {
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(io::Error::from(e).into()),
            // POLLHUP/POLLERR also count as ready: the next recv/send reports what happened.
            Ok(n) if n > 0 => return Ok(true),
            Ok(_) => {}
        }
    }
}

/// One non-blocking `recvmsg`. Returns bytes read (0 = EOF); fds are appended to `fds`.
fn recv_chunk(fd: BorrowedFd<'_>, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    let mut space = [MaybeUninit::<u8>::uninit(); CMSG_BUF];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = rustix::net::recvmsg(
        fd,
        &mut [IoSliceMut::new(buf)],
        &mut control,
        RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC,
    )?;
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = m {
            fds.extend(received);
        }
    }
    if msg.flags.contains(ReturnFlags::CTRUNC) {
        // Cannot happen with a SCM_MAX_FD-sized buffer; treat as a violation upstream.
        return Err(io::Error::other("control message truncated"));
    }
    Ok(msg.bytes)
}

/// Fill `buf` completely. Returns false if EOF came before the first byte (only allowed when
/// `eof_ok`). `first_deadline` bounds the wait for the first byte; after it, `rest_timeout`.
fn recv_exact(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
    first_deadline: Option<Instant>,
    rest_timeout: Duration,
    eof_ok: bool,
    what: &'static str,
) -> Result<bool> {
    let mut got = 0usize;
    let mut deadline = first_deadline;
    while got < buf.len() {
        // Try first, poll only when nothing is there: one syscall per read in the common case.
        match recv_chunk(fd, &mut buf[got..], fds) {
            Ok(0) => {
                if got == 0 && eof_ok {
                    return Ok(false);
                }
                return Err(ProtocolError::Disconnected);
            }
            Ok(n) => {
                if got == 0 {
                    // The message has started: the rest gets a bounded time of its own.
                    deadline = Some(Instant::now() + rest_timeout);
                }
                got += n;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if !wait_for(fd, PollFlags::IN, deadline)? {
                    if got == 0 && eof_ok {
                        // Nothing of the message was consumed: the stream is intact.
                        return Err(ProtocolError::WaitTimeout(what));
                    }
                    return Err(ProtocolError::Timeout(what));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                return Err(ProtocolError::Disconnected)
            }
            Err(e) if e.kind() == io::ErrorKind::Other => {
                return Err(ProtocolError::Violation(e.to_string()))
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

/// Receive one whole message.
///
/// Waits for the first byte until `first_deadline` (`None` = forever): if none arrives, fails
/// with the non-fatal [`ProtocolError::WaitTimeout`] (nothing consumed). From the first byte on,
/// the whole message must arrive within `limits.body_timeout` or the read fails with the fatal
/// [`ProtocolError::Timeout`]. Returns `Ok(None)` on a clean EOF at a message boundary.
pub fn recv_message(
    fd: BorrowedFd<'_>,
    limits: &RecvLimits,
    first_deadline: Option<Instant>,
) -> Result<Option<RawMessage>> {
    let mut fds = Vec::new();
    let mut hbuf = [0u8; Header::SIZE];
    let start_deadline = first_deadline;
    if !recv_exact(
        fd,
        &mut hbuf,
        &mut fds,
        start_deadline,
        limits.body_timeout,
        true,
        "waiting for a message",
    )? {
        return Ok(None);
    }
    let header = Header::decode(&hbuf)?;
    let body_len = header
        .body_len()
        .ok_or_else(|| ProtocolError::Violation(format!("header size {} < 16", header.size)))?;
    if header.size > limits.max_size {
        return Err(ProtocolError::MessageTooLarge {
            size: header.size,
            max: limits.max_size,
        });
    }
    check_fds(&fds, limits.max_fds)?;
    let mut body = vec![0u8; body_len];
    let body_deadline = Some(Instant::now() + limits.body_timeout);
    recv_exact(
        fd,
        &mut body,
        &mut fds,
        body_deadline,
        limits.body_timeout,
        false,
        "waiting for a message body",
    )?;
    check_fds(&fds, limits.max_fds)?;
    Ok(Some(RawMessage { header, body, fds }))
}

fn check_fds(fds: &[OwnedFd], max: usize) -> Result<()> {
    if fds.len() > max {
        return Err(ProtocolError::TooManyFds {
            got: fds.len(),
            max,
        });
    }
    Ok(())
}

/// One non-blocking `sendmsg`, with `fds` attached when non-empty.
fn send_chunk(fd: BorrowedFd<'_>, buf: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
    let iov = [IoSlice::new(buf)];
    let flags = SendFlags::DONTWAIT | SendFlags::NOSIGNAL;
    if fds.is_empty() {
        return Ok(rustix::net::sendmsg(
            fd,
            &iov,
            &mut SendAncillaryBuffer::default(),
            flags,
        )?);
    }
    let mut space = [MaybeUninit::<u8>::uninit(); CMSG_BUF];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(fds)) {
        // Unreachable: send_message refuses more than SCM_MAX_FD fds first.
        return Err(io::Error::other("too many fds for one control message"));
    }
    Ok(rustix::net::sendmsg(fd, &iov, &mut control, flags)?)
}

/// Send `bytes` with `fds` attached to the first byte; fails with a timeout if the peer does
/// not drain its socket within `timeout`.
pub fn send_message(
    fd: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
    timeout: Duration,
) -> Result<()> {
    if fds.len() > SCM_MAX_FD {
        return Err(ProtocolError::TooManyFds {
            got: fds.len(),
            max: SCM_MAX_FD,
        });
    }
    let deadline = Some(Instant::now() + timeout);
    let mut sent = 0usize;
    let mut fds_pending = !fds.is_empty();
    while sent < bytes.len() || fds_pending {
        let attach: &[BorrowedFd<'_>] = if fds_pending { fds } else { &[] };
        match send_chunk(fd, &bytes[sent..], attach) {
            Ok(n) => {
                sent += n;
                fds_pending = false;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if !wait_for(fd, PollFlags::OUT, deadline)? {
                    return Err(ProtocolError::Timeout("waiting to send"));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                ) =>
            {
                return Err(ProtocolError::Disconnected)
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    use super::*;

    fn limits() -> RecvLimits {
        RecvLimits {
            max_size: 4096,
            max_fds: 4,
            body_timeout: Duration::from_millis(200),
        }
    }

    fn msg(size: u32, body: &[u8]) -> Vec<u8> {
        let mut w = Writer::default();
        w.put(&Header {
            msg_id: 1,
            command: 4,
            size,
            flags: 0,
            error: 0,
        });
        w.bytes(body);
        w.into_vec()
    }

    #[test]
    fn roundtrip_with_fds() {
        let (a, b) = UnixStream::pair().expect("pair");
        let (x, _y) = UnixStream::pair().expect("pair");
        send_message(
            a.as_fd(),
            &msg(20, &[1, 2, 3, 4]),
            &[x.as_fd(), x.as_fd()],
            Duration::from_secs(1),
        )
        .expect("send");
        let m = recv_message(b.as_fd(), &limits(), None)
            .expect("recv")
            .expect("message");
        assert_eq!(m.body, vec![1, 2, 3, 4]);
        assert_eq!(m.fds.len(), 2);
        // CLOEXEC was requested.
        for f in &m.fds {
            let fl = rustix::io::fcntl_getfd(f).expect("F_GETFD");
            assert!(fl.contains(rustix::io::FdFlags::CLOEXEC));
        }
    }

    #[test]
    fn eof_at_boundary_is_none_and_mid_message_is_error() {
        let (a, b) = UnixStream::pair().expect("pair");
        drop(a);
        assert!(recv_message(b.as_fd(), &limits(), None)
            .expect("ok")
            .is_none());
        let (a, b) = UnixStream::pair().expect("pair");
        send_message(a.as_fd(), &msg(20, &[1]), &[], Duration::from_secs(1)).expect("send");
        drop(a);
        assert!(matches!(
            recv_message(b.as_fd(), &limits(), None),
            Err(ProtocolError::Disconnected)
        ));
    }

    #[test]
    fn truncated_body_times_out() {
        let (a, b) = UnixStream::pair().expect("pair");
        send_message(a.as_fd(), &msg(20, &[1]), &[], Duration::from_secs(1)).expect("send");
        let t = Instant::now();
        assert!(matches!(
            recv_message(b.as_fd(), &limits(), None),
            Err(ProtocolError::Timeout(_))
        ));
        assert!(t.elapsed() >= Duration::from_millis(150));
        drop(a);
    }

    #[test]
    fn oversize_and_undersize_headers_are_rejected() {
        let (a, b) = UnixStream::pair().expect("pair");
        send_message(a.as_fd(), &msg(5000, &[]), &[], Duration::from_secs(1)).expect("send");
        assert!(matches!(
            recv_message(b.as_fd(), &limits(), None),
            Err(ProtocolError::MessageTooLarge { size: 5000, .. })
        ));
        let (a, b) = UnixStream::pair().expect("pair");
        send_message(a.as_fd(), &msg(15, &[]), &[], Duration::from_secs(1)).expect("send");
        assert!(matches!(
            recv_message(b.as_fd(), &limits(), None),
            Err(ProtocolError::Violation(_))
        ));
    }

    #[test]
    fn too_many_fds_is_fatal() {
        let (a, b) = UnixStream::pair().expect("pair");
        let (x, _y) = UnixStream::pair().expect("pair");
        let many: Vec<BorrowedFd<'_>> = (0..5).map(|_| x.as_fd()).collect();
        send_message(a.as_fd(), &msg(16, &[]), &many, Duration::from_secs(1)).expect("send");
        assert!(matches!(
            recv_message(b.as_fd(), &limits(), None),
            Err(ProtocolError::TooManyFds { got: 5, max: 4 })
        ));
    }

    #[test]
    fn first_byte_deadline() {
        let (_a, b) = UnixStream::pair().expect("pair");
        let d = Some(Instant::now() + Duration::from_millis(50));
        assert!(matches!(
            recv_message(b.as_fd(), &limits(), d),
            Err(ProtocolError::WaitTimeout(_))
        ));
    }
}
