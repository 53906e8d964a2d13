//! The crate's error type and its one errno mapping point.
//!
//! Errors split into two classes:
//! - *request errors* (bad arguments, unsupported command, device refusal): the server answers
//!   the request with an error reply carrying [`ProtocolError::errno`] and the session goes on;
//! - *fatal errors* ([`ProtocolError::is_fatal`]): the byte stream can no longer be trusted
//!   (oversize or truncated message, too many fds, timeout, I/O error) and the session ends.

use crate::backend::BackendError;

/// Everything that can go wrong while speaking vfio-user.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// Malformed or out-of-range request: `EINVAL`.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// A transfer larger than the negotiated `max_data_xfer_size`: `E2BIG`.
    #[error("transfer of {size} bytes exceeds max_data_xfer_size {max}")]
    TooBig {
        /// Requested bytes.
        size: u64,
        /// Negotiated limit.
        max: u64,
    },
    /// A known command this implementation does not offer (migration, dirty pages): `ENOTSUP`.
    #[error("not supported: {0}")]
    NotSupported(String),
    /// A command number that vfio-user does not define: `ENOSYS`.
    #[error("unknown command {0}")]
    UnknownCommand(u16),
    /// More DMA mappings than `max_dma_maps`: `ENOSPC`.
    #[error("too many DMA mappings (max {0})")]
    TooManyMappings(u32),
    /// The device refused the request.
    #[error("device: {0}")]
    Backend(#[from] BackendError),
    /// The peer answered our request with an error reply.
    #[error("peer replied with errno {errno}")]
    Remote {
        /// The errno from the reply header.
        errno: i32,
    },
    /// A command other than VERSION arrived before VERSION (fatal; answered `EINVAL` first).
    #[error("command {0} before version negotiation")]
    NotNegotiated(u16),
    /// A message larger than the negotiated maximum (fatal: its body cannot be drained safely).
    #[error("message of {size} bytes exceeds the limit of {max}")]
    MessageTooLarge {
        /// The header's size field.
        size: u32,
        /// The limit.
        max: u32,
    },
    /// More fds than `max_msg_fds` on one message (fatal).
    #[error("{got} file descriptors on one message, limit {max}")]
    TooManyFds {
        /// Received.
        got: usize,
        /// Limit.
        max: usize,
    },
    /// The stream is not a well-formed vfio-user stream (fatal).
    #[error("protocol violation: {0}")]
    Violation(String),
    /// The peer stopped in the middle of a message, or did not drain its socket (fatal).
    #[error("timed out {0}")]
    Timeout(&'static str),
    /// No message arrived within the wait (e.g. a DMA or request reply); nothing was consumed,
    /// the stream is intact, and a late reply will be dropped as stray.
    #[error("timed out {0}")]
    WaitTimeout(&'static str),
    /// The peer closed the connection in the middle of a message or while we awaited a reply.
    #[error("peer disconnected")]
    Disconnected,
    /// Socket error (fatal).
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
}

impl ProtocolError {
    /// The errno sent in an error reply for this error: the crate's single mapping point.
    pub fn errno(&self) -> i32 {
        match self {
            ProtocolError::Invalid(_) | ProtocolError::NotNegotiated(_) => libc::EINVAL,
            ProtocolError::TooBig { .. } | ProtocolError::MessageTooLarge { .. } => libc::E2BIG,
            ProtocolError::NotSupported(_) => libc::ENOTSUP,
            ProtocolError::UnknownCommand(_) => libc::ENOSYS,
            ProtocolError::TooManyMappings(_) => libc::ENOSPC,
            ProtocolError::Backend(e) => e.errno(),
            ProtocolError::Remote { errno } => *errno,
            ProtocolError::TooManyFds { .. } | ProtocolError::Violation(_) => libc::EPROTO,
            ProtocolError::Timeout(_) | ProtocolError::WaitTimeout(_) => libc::ETIMEDOUT,
            ProtocolError::Disconnected => libc::ECONNRESET,
            ProtocolError::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
        }
    }

    /// True when the session cannot continue after this error.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            ProtocolError::NotNegotiated(_)
                | ProtocolError::MessageTooLarge { .. }
                | ProtocolError::TooManyFds { .. }
                | ProtocolError::Violation(_)
                | ProtocolError::Timeout(_)
                | ProtocolError::Disconnected
                | ProtocolError::Io(_)
        )
    }

    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        ProtocolError::Invalid(msg.into())
    }
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, ProtocolError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_mapping_is_exact() {
        assert_eq!(ProtocolError::invalid("x").errno(), libc::EINVAL);
        assert_eq!(ProtocolError::UnknownCommand(99).errno(), libc::ENOSYS);
        assert_eq!(
            ProtocolError::NotSupported("m".into()).errno(),
            libc::ENOTSUP
        );
        assert_eq!(
            ProtocolError::TooBig { size: 2, max: 1 }.errno(),
            libc::E2BIG
        );
        assert_eq!(
            ProtocolError::Backend(BackendError::Exists("a".into())).errno(),
            libc::EEXIST
        );
        assert!(!ProtocolError::invalid("x").is_fatal());
        assert!(ProtocolError::Disconnected.is_fatal());
    }
}
