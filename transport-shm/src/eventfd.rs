//! Doorbells: eventfds, non-blocking and close-on-exec.
//!
//! One doorbell per direction. The side that publishes into a ring [`notify`]s the
//! doorbell of its peer; the peer [`wait`]s on it. A wait polls the eventfd *and* the
//! rendezvous socket together, so a peer that dies (its socket end is closed by the
//! kernel, `POLLHUP`/`POLLRDHUP` or end-of-file) wakes the waiter, which reports
//! [`WaitError::PeerGone`].
//!
//! Notifications are hints, never the source of truth (see the design's ring section):
//! a wake-up may be spurious (the counter was already consumed, [`Wake::Notified`] with
//! a count of 0) or stand for several coalesced notifications; the ring's indices alone
//! say what is there to read.
//!
//! [`notify`]: Doorbell::notify
//! [`wait`]: Doorbell::wait

use core::fmt;
use core::time::Duration;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use rustix::event::{EventfdFlags, PollFd, PollFlags};
use rustix::fs::{FileType, OFlags};
use rustix::io::Errno;

use crate::error::{SysContext, SysError};

/// A doorbell operation failed, or a received descriptor is not a usable doorbell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DoorbellError {
    /// The descriptor is not an eventfd (a pipe, a file, a socket...).
    NotEventfd,
    /// A system call failed.
    Sys(SysError),
}

impl fmt::Display for DoorbellError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotEventfd => f.write_str("doorbell descriptor is not an eventfd"),
            Self::Sys(e) => write!(f, "doorbell: {e}"),
        }
    }
}

impl std::error::Error for DoorbellError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Sys(e) => Some(e),
            Self::NotEventfd => None,
        }
    }
}

impl From<SysError> for DoorbellError {
    fn from(e: SysError) -> Self {
        Self::Sys(e)
    }
}

/// Waiting on a doorbell failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WaitError {
    /// The peer hung up its end of the rendezvous socket: it exited, crashed or closed
    /// the channel. Data it published before that may still be in the ring.
    PeerGone,
    /// A system call failed.
    Sys(SysError),
}

impl fmt::Display for WaitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PeerGone => f.write_str("the peer hung up (exited, crashed or closed)"),
            Self::Sys(e) => write!(f, "doorbell wait: {e}"),
        }
    }
}

impl std::error::Error for WaitError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Sys(e) => Some(e),
            Self::PeerGone => None,
        }
    }
}

impl From<SysError> for WaitError {
    fn from(e: SysError) -> Self {
        Self::Sys(e)
    }
}

/// What ended a [`Doorbell::wait`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    /// The doorbell rang. `count` is the number of notifications consumed (coalesced);
    /// 0 means the wake-up was spurious (someone else consumed them first).
    Notified {
        /// Notifications consumed by this wake-up, possibly 0.
        count: u64,
    },
    /// The timeout passed with no notification.
    TimedOut,
}

/// An eventfd used as a doorbell. Non-blocking, close-on-exec.
#[derive(Debug)]
pub struct Doorbell {
    /// The eventfd; `O_NONBLOCK` is set on its open file description.
    fd: OwnedFd,
}

impl Doorbell {
    /// Creates a new doorbell (counter 0).
    ///
    /// # Errors
    ///
    /// [`DoorbellError::Sys`] if `eventfd` fails.
    pub fn new() -> Result<Self, DoorbellError> {
        let fd = rustix::event::eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC)
            .sys("eventfd")?;
        Ok(Self { fd })
    }

    /// Takes a descriptor received from a peer, after checking that it is an eventfd.
    /// Sets `O_NONBLOCK` on it (the flag lives on the shared open file description, so
    /// the peer sees it too; its own doorbell code sets it anyway).
    ///
    /// The check reads the `/proc/self/fd/N` link (`anon_inode:[eventfd]`). Where
    /// `/proc` is not mounted, it falls back to `fstat`: an anonymous inode has no file
    /// type bits, which rules out pipes, sockets, files and devices but not other
    /// anonymous-inode descriptors (a timerfd would then fail at the first `notify`).
    ///
    /// On error the descriptor is closed.
    ///
    /// # Errors
    ///
    /// [`DoorbellError::NotEventfd`] if it is something else; [`DoorbellError::Sys`] if
    /// a check cannot be made.
    pub fn from_fd(fd: OwnedFd) -> Result<Self, DoorbellError> {
        check_eventfd(fd.as_fd())?;
        let flags = rustix::fs::fcntl_getfl(&fd).sys("fcntl(F_GETFL)")?;
        if !flags.contains(OFlags::NONBLOCK) {
            rustix::fs::fcntl_setfl(&fd, flags | OFlags::NONBLOCK).sys("fcntl(F_SETFL)")?;
        }
        Ok(Self { fd })
    }

    /// Rings the doorbell: adds 1 to the counter, waking a waiter.
    ///
    /// A full counter (`EAGAIN`, after 2^64 - 2 unconsumed notifications) is not an
    /// error: a notification is already pending.
    ///
    /// # Errors
    ///
    /// [`DoorbellError::Sys`] if the write fails otherwise.
    pub fn notify(&self) -> Result<(), DoorbellError> {
        loop {
            match rustix::io::write(&self.fd, &1u64.to_ne_bytes()) {
                Ok(_) | Err(Errno::AGAIN) => return Ok(()),
                Err(Errno::INTR) => {}
                Err(e) => return Err(SysError::new("write(eventfd)", e).into()),
            }
        }
    }

    /// Consumes pending notifications without blocking: `Some(count)` if the doorbell
    /// had rung (`count` coalesced notifications), `None` if not.
    ///
    /// # Errors
    ///
    /// [`DoorbellError::Sys`] if the read fails.
    pub fn try_consume(&self) -> Result<Option<u64>, DoorbellError> {
        let mut buf = [0u8; 8];
        loop {
            return match rustix::io::read(&self.fd, &mut buf) {
                Ok(8) => Ok(Some(u64::from_ne_bytes(buf))),
                // An eventfd read is all 8 bytes or an error; anything else is a kernel
                // contract violation, reported rather than trusted.
                Ok(_) => Err(SysError::new("read(eventfd)", Errno::IO).into()),
                Err(Errno::AGAIN) => Ok(None),
                Err(Errno::INTR) => continue,
                Err(e) => Err(SysError::new("read(eventfd)", e).into()),
            };
        }
    }

    /// Waits until the doorbell rings, `peer` hangs up, or `timeout` passes (`None`:
    /// no timeout), then consumes the pending notifications.
    ///
    /// `peer` is the rendezvous socket; pass `None` to wait on the doorbell alone. A
    /// pending notification is reported before a hang-up, so a caller draining the ring
    /// after each wake-up sees everything the peer published before it died; the next
    /// wait then reports [`WaitError::PeerGone`] at once.
    ///
    /// # Errors
    ///
    /// [`WaitError::PeerGone`] if the peer hung up; [`WaitError::Sys`] if `poll` or the
    /// read fails.
    pub fn wait(
        &self,
        peer: Option<BorrowedFd<'_>>,
        timeout: Option<Duration>,
    ) -> Result<Wake, WaitError> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        loop {
            let remaining = match (timeout, deadline) {
                (None, _) => None,
                (Some(_), Some(d)) => Some(d.saturating_duration_since(Instant::now())),
                // A timeout so large that the deadline overflows: wait forever.
                (Some(_), None) => None,
            };
            let ts = remaining.map(|d| rustix::event::Timespec {
                tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                tv_nsec: i64::from(d.subsec_nanos()),
            });
            let peer_fd = peer.unwrap_or(self.fd.as_fd());
            let mut fds = [
                PollFd::new(&self.fd, PollFlags::IN),
                PollFd::new(&peer_fd, PollFlags::IN | PollFlags::RDHUP),
            ];
            let nfds = if peer.is_some() { 2 } else { 1 };
            match rustix::event::poll(&mut fds[..nfds], ts.as_ref()) {
                Ok(_) => {}
                Err(Errno::INTR) => continue,
                Err(e) => return Err(SysError::new("poll", e).into()),
            }
            let bell = fds[0].revents();
            if bell.intersects(PollFlags::NVAL | PollFlags::ERR) {
                return Err(SysError::new("poll(eventfd)", Errno::BADF).into());
            }
            if bell.contains(PollFlags::IN) {
                let count = self.try_consume().map_err(|e| match e {
                    DoorbellError::Sys(s) => WaitError::Sys(s),
                    DoorbellError::NotEventfd => WaitError::Sys(SysError::new("read", Errno::IO)),
                })?;
                return Ok(Wake::Notified {
                    count: count.unwrap_or(0),
                });
            }
            if peer.is_some() && peer_hung_up(fds[1].revents())? {
                return Err(WaitError::PeerGone);
            }
            if remaining.is_some_and(|r| r.is_zero()) {
                return Ok(Wake::TimedOut);
            }
            if let Some(d) = deadline {
                if Instant::now() >= d {
                    return Ok(Wake::TimedOut);
                }
            }
        }
    }
}

impl AsFd for Doorbell {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Interprets the poll result of the rendezvous socket: `true` if the peer is gone.
///
/// After the handshake the peer sends nothing more in protocol version 1, so readable
/// data is treated like a hang-up (a later version may send an orderly "goodbye").
/// Without this rule readable bytes would make every poll return at once: a busy loop.
fn peer_hung_up(revents: PollFlags) -> Result<bool, WaitError> {
    if revents.intersects(PollFlags::HUP | PollFlags::RDHUP | PollFlags::ERR) {
        return Ok(true);
    }
    if revents.contains(PollFlags::NVAL) {
        return Err(SysError::new("poll(socket)", Errno::BADF).into());
    }
    Ok(revents.contains(PollFlags::IN))
}

/// Checks, without blocking, whether the peer at the other end of the rendezvous socket
/// is still there (`false` once it hung up).
///
/// # Errors
///
/// [`WaitError::Sys`] if `poll` fails.
pub fn peer_alive(sock: BorrowedFd<'_>) -> Result<bool, WaitError> {
    let mut fds = [PollFd::new(&sock, PollFlags::IN | PollFlags::RDHUP)];
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    loop {
        match rustix::event::poll(&mut fds, Some(&zero)) {
            Ok(_) => return Ok(!peer_hung_up(fds[0].revents())?),
            Err(Errno::INTR) => {}
            Err(e) => return Err(SysError::new("poll", e).into()),
        }
    }
}

/// Checks that `fd` is an eventfd (see [`Doorbell::from_fd`]).
fn check_eventfd(fd: BorrowedFd<'_>) -> Result<(), DoorbellError> {
    let link = format!("/proc/self/fd/{}", fd.as_raw_fd());
    match rustix::fs::readlink(link.as_str(), Vec::new()) {
        Ok(target) if target.as_bytes() == b"anon_inode:[eventfd]" => Ok(()),
        Ok(_) => Err(DoorbellError::NotEventfd),
        Err(_) => {
            // No /proc (or it is not ours): fall back to the file type.
            let stat = rustix::fs::fstat(fd).sys("fstat")?;
            match FileType::from_raw_mode(stat.st_mode) {
                FileType::Unknown => Ok(()),
                _ => Err(DoorbellError::NotEventfd),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_then_consume_coalesces() {
        let d = Doorbell::new().unwrap();
        assert_eq!(d.try_consume().unwrap(), None);
        d.notify().unwrap();
        d.notify().unwrap();
        assert_eq!(d.try_consume().unwrap(), Some(2));
        assert_eq!(d.try_consume().unwrap(), None);
    }

    #[test]
    fn wait_times_out_and_wakes() {
        let d = Doorbell::new().unwrap();
        assert_eq!(
            d.wait(None, Some(Duration::from_millis(1))).unwrap(),
            Wake::TimedOut
        );
        d.notify().unwrap();
        assert_eq!(
            d.wait(None, Some(Duration::from_secs(30))).unwrap(),
            Wake::Notified { count: 1 }
        );
    }

    #[test]
    fn hang_up_is_peer_gone() {
        let d = Doorbell::new().unwrap();
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(peer_alive(a.as_fd()).unwrap());
        assert_eq!(
            d.wait(Some(a.as_fd()), Some(Duration::ZERO)).unwrap(),
            Wake::TimedOut
        );
        drop(b);
        assert!(!peer_alive(a.as_fd()).unwrap());
        assert_eq!(
            d.wait(Some(a.as_fd()), Some(Duration::from_secs(30))),
            Err(WaitError::PeerGone)
        );
    }

    #[test]
    fn received_eventfd_is_accepted_pipe_is_not() {
        let d = Doorbell::new().unwrap();
        let dup = d.fd.try_clone().unwrap();
        let d2 = Doorbell::from_fd(dup).unwrap();
        d2.notify().unwrap();
        assert_eq!(d.try_consume().unwrap(), Some(1));
        let (r, _w) = rustix::pipe::pipe().unwrap();
        assert_eq!(Doorbell::from_fd(r).unwrap_err(), DoorbellError::NotEventfd);
        let f = rustix::fs::memfd_create("x", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        assert_eq!(Doorbell::from_fd(f).unwrap_err(), DoorbellError::NotEventfd);
    }
}
