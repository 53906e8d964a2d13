//! Interrupt delivery seam.
//!
//! The model signals an interrupt through a [`Notifier`]; in the server that is the eventfd the
//! client handed over with DEVICE_SET_IRQS ([`EventFdNotifier`]), in unit tests a recording fake.
//! Nothing else in the model touches fds.

use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};

use rustix::event::{PollFd, PollFlags, Timespec};

/// Something that delivers one interrupt message.
pub trait Notifier: Send + fmt::Debug {
    /// Signal once.
    fn notify(&self) -> io::Result<()>;
}

/// Errors accepting an interrupt fd from the client.
#[derive(Debug, thiserror::Error)]
pub enum IrqError {
    /// The fd is not an eventfd.
    #[error("the interrupt fd is not an eventfd")]
    NotEventFd,
    /// The fd could not be inspected.
    #[error("cannot inspect the interrupt fd: {0}")]
    Inspect(#[source] io::Error),
}

/// An eventfd received from the client.
#[derive(Debug)]
pub struct EventFdNotifier {
    file: File,
}

impl EventFdNotifier {
    /// Accepts `fd` if it is an eventfd (anything else could block or have side effects).
    pub fn new(fd: OwnedFd) -> Result<Self, IrqError> {
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .map_err(IrqError::Inspect)?;
        if link.as_os_str() != "anon_inode:[eventfd]" {
            return Err(IrqError::NotEventFd);
        }
        Ok(EventFdNotifier {
            file: File::from(fd),
        })
    }
}

impl Notifier for EventFdNotifier {
    fn notify(&self) -> io::Result<()> {
        // A write of 1 blocks only if the counter is at its maximum (a client that never reads);
        // check writability first so a hostile client cannot stall the server.
        let mut pfd = [PollFd::new(&self.file, PollFlags::OUT)];
        let rc = rustix::event::poll(&mut pfd, Some(&Timespec::default()))?;
        if rc == 0 || !pfd[0].revents().contains(PollFlags::OUT) {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "eventfd counter is full",
            ));
        }
        (&self.file).write_all(&1u64.to_ne_bytes())
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! A recording notifier for unit tests.
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Records every notification as its tag.
    #[derive(Debug, Clone, Default)]
    pub struct Recorder(pub Arc<Mutex<Vec<u32>>>);

    impl Recorder {
        pub fn notifier(&self, tag: u32) -> Box<dyn Notifier> {
            Box::new(FakeNotifier {
                tag,
                log: self.0.clone(),
            })
        }
        pub fn take(&self) -> Vec<u32> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    #[derive(Debug)]
    struct FakeNotifier {
        tag: u32,
        log: Arc<Mutex<Vec<u32>>>,
    }

    impl Notifier for FakeNotifier {
        fn notify(&self) -> io::Result<()> {
            self.log.lock().unwrap().push(self.tag);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use rustix::event::EventfdFlags;

    use super::*;

    fn eventfd(initval: u32) -> OwnedFd {
        rustix::event::eventfd(initval, EventfdFlags::NONBLOCK).unwrap()
    }

    #[test]
    fn eventfd_notifier_signals() {
        let efd = eventfd(0);
        let n = EventFdNotifier::new(efd.try_clone().unwrap()).unwrap();
        n.notify().unwrap();
        n.notify().unwrap();
        let mut counter = [0u8; 8];
        assert_eq!(rustix::io::read(&efd, &mut counter), Ok(8));
        assert_eq!(u64::from_ne_bytes(counter), 2);
    }

    #[test]
    fn rejects_non_eventfd() {
        let f = File::open("/dev/null").unwrap();
        assert!(matches!(
            EventFdNotifier::new(f.into()),
            Err(IrqError::NotEventFd)
        ));
    }

    #[test]
    fn full_eventfd_does_not_block() {
        let efd = eventfd(0);
        let full = (u64::MAX - 1).to_ne_bytes();
        assert_eq!(rustix::io::write(&efd, &full), Ok(8));
        let n = EventFdNotifier::new(efd.try_clone().unwrap()).unwrap();
        assert_eq!(n.notify().unwrap_err().kind(), io::ErrorKind::WouldBlock);
    }
}
