//! Message framing over a UNIX stream socket with SCM_RIGHTS fd passing.
//!
//! This module holds the crate's only `unsafe` code: the `poll`, `recvmsg` and `sendmsg`
//! system calls and adopting received descriptors as [`OwnedFd`]. Control messages are built
//! and parsed as plain bytes in `u64`-aligned buffers, so no `CMSG_*` pointer walking is needed.
//!
//! Rules enforced here:
//! - received fds are always owned (`OwnedFd`) and opened with `MSG_CMSG_CLOEXEC`;
//! - once the first byte of a message has arrived, the rest must arrive within a bounded time,
//!   or the read fails with [`ProtocolError::Timeout`];
//! - the header's size is checked against the limit *before* the body is allocated;
//! - more fds than allowed on one message is a fatal [`ProtocolError::TooManyFds`] (the fds
//!   are closed);
//! - sends never raise SIGPIPE and never block longer than their timeout.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use crate::error::{ProtocolError, Result};
use crate::wire::{Header, Writer};

/// Kernel limit of fds in one SCM_RIGHTS message (`SCM_MAX_FD`).
pub const SCM_MAX_FD: usize = 253;

const WORD: usize = std::mem::size_of::<usize>();
const CMSG_HDR: usize = std::mem::size_of::<libc::cmsghdr>();

const fn cmsg_align(n: usize) -> usize {
    (n + WORD - 1) & !(WORD - 1)
}

const fn cmsg_space(n: usize) -> usize {
    cmsg_align(n) + cmsg_align(CMSG_HDR)
}

const fn cmsg_len(n: usize) -> usize {
    cmsg_align(CMSG_HDR) + n
}

const FD_SIZE: usize = std::mem::size_of::<RawFd>();
/// Control buffer in u64 words, large enough for SCM_MAX_FD fds (so the kernel never has to
/// truncate and we can report the exact count).
const RECV_CMSG_WORDS: usize = cmsg_space(SCM_MAX_FD * FD_SIZE).div_ceil(8) + 1;

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

fn poll_timeout_ms(deadline: Option<Instant>) -> Option<libc::c_int> {
    match deadline {
        None => Some(-1),
        Some(d) => {
            let left = d.checked_duration_since(Instant::now())?;
            if left.is_zero() {
                return None;
            }
            // Round up so we never spin with a 0 ms timeout before the deadline.
            let ms = left.as_millis().saturating_add(1);
            Some(libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX))
        }
    }
}

/// Wait until `fd` has `events` or the deadline passes. Returns false on timeout.
fn wait_for(fd: BorrowedFd<'_>, events: libc::c_short, deadline: Option<Instant>) -> Result<bool> {
    loop {
        let Some(timeout) = poll_timeout_ms(deadline) else {
            return Ok(false);
        };
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events,
            revents: 0,
        };
        // SAFETY: `pfd` is a valid, exclusively borrowed pollfd array of length 1 for the
        // duration of the call; the fd is kept open by the BorrowedFd.
        let r = unsafe { libc::poll(&mut pfd, 1, timeout) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e.into());
        }
        if r > 0 {
            // POLLHUP/POLLERR also count as ready: the next recv/send reports what happened.
            return Ok(true);
        }
    }
}

/// Parse SCM_RIGHTS fds out of a received control buffer, adopting each one.
fn parse_cmsgs(control: &[u8], fds: &mut Vec<OwnedFd>) {
    let mut pos = 0usize;
    while let Some(hdr) = pos
        .checked_add(CMSG_HDR)
        .and_then(|end| control.get(pos..end))
    {
        let mut len_bytes = [0u8; WORD];
        len_bytes.copy_from_slice(&hdr[..WORD]);
        let len = usize::from_ne_bytes(len_bytes);
        let level = i32::from_ne_bytes([hdr[WORD], hdr[WORD + 1], hdr[WORD + 2], hdr[WORD + 3]]);
        let kind = i32::from_ne_bytes([hdr[WORD + 4], hdr[WORD + 5], hdr[WORD + 6], hdr[WORD + 7]]);
        if len < cmsg_len(0) {
            break;
        }
        let data_start = pos + cmsg_align(CMSG_HDR);
        let data_end = pos.saturating_add(len).min(control.len());
        if level == libc::SOL_SOCKET && kind == libc::SCM_RIGHTS && data_start <= data_end {
            for chunk in control[data_start..data_end].chunks_exact(FD_SIZE) {
                let mut b = [0u8; FD_SIZE];
                b.copy_from_slice(chunk);
                let raw = RawFd::from_ne_bytes(b);
                if raw >= 0 {
                    // SAFETY: the kernel just installed `raw` in our fd table for this
                    // SCM_RIGHTS message; nothing else owns it, so adopting it is sound.
                    fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
                }
            }
        }
        match pos.checked_add(cmsg_align(len)) {
            Some(next) if next > pos => pos = next,
            _ => break,
        }
    }
}

/// One non-blocking `recvmsg`. Returns bytes read (0 = EOF); fds are appended to `fds`.
fn recv_chunk(fd: BorrowedFd<'_>, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    let mut control = [0u64; RECV_CMSG_WORDS];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is a valid "empty" value for this plain C struct.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: `msg` points at `iov` (covering `buf`, exclusively borrowed) and at `control`
    // (exclusively borrowed, u64-aligned); both outlive the call. The kernel writes at most
    // `iov_len` and `msg_controllen` bytes into them.
    let n = unsafe {
        libc::recvmsg(
            fd.as_raw_fd(),
            &mut msg,
            libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let clen = (msg.msg_controllen as usize).min(std::mem::size_of_val(&control));
    if clen > 0 {
        let bytes: Vec<u8> = control.iter().flat_map(|w| w.to_ne_bytes()).collect();
        parse_cmsgs(&bytes[..clen], fds);
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        // Cannot happen with a SCM_MAX_FD-sized buffer; treat as a violation upstream.
        return Err(io::Error::other("control message truncated"));
    }
    usize::try_from(n).map_err(|_| io::Error::other("negative recvmsg result"))
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
                if !wait_for(fd, libc::POLLIN, deadline)? {
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

/// Build an SCM_RIGHTS control buffer (u64-aligned) for `fds`.
fn build_rights(fds: &[BorrowedFd<'_>]) -> Vec<u64> {
    let data_len = fds.len() * FD_SIZE;
    let mut bytes = Vec::with_capacity(cmsg_space(data_len));
    bytes.extend_from_slice(&cmsg_len(data_len).to_ne_bytes());
    bytes.extend_from_slice(&libc::SOL_SOCKET.to_ne_bytes());
    bytes.extend_from_slice(&libc::SCM_RIGHTS.to_ne_bytes());
    bytes.resize(cmsg_align(CMSG_HDR), 0);
    for f in fds {
        bytes.extend_from_slice(&f.as_raw_fd().to_ne_bytes());
    }
    bytes.resize(cmsg_space(data_len).next_multiple_of(8), 0);
    bytes
        .chunks_exact(8)
        .map(|c| {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            u64::from_ne_bytes(w)
        })
        .collect()
}

/// One non-blocking `sendmsg`, with `fds` attached when non-empty.
fn send_chunk(fd: BorrowedFd<'_>, buf: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
    let mut control = if fds.is_empty() {
        Vec::new()
    } else {
        build_rights(fds)
    };
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is a valid "empty" value for this plain C struct.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !control.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = cmsg_space(fds.len() * FD_SIZE) as _;
    }
    // SAFETY: `msg` points at `iov` (covering `buf`, which the kernel only reads) and at
    // `control` (u64-aligned, at least msg_controllen bytes); both outlive the call. The fds
    // in the control buffer are kept open by the BorrowedFds for the duration of the call.
    let n = unsafe {
        libc::sendmsg(
            fd.as_raw_fd(),
            &msg,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    usize::try_from(n).map_err(|_| io::Error::other("negative sendmsg result"))
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
                if !wait_for(fd, libc::POLLOUT, deadline)? {
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
            // SAFETY: fcntl F_GETFD on a valid owned fd has no memory effects.
            let fl = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFD) };
            assert_eq!(fl & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
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
