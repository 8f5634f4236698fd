//! The signalling half of a channel: doorbells and the peer's death, both on the
//! rendezvous socket.
//!
//! After the ack the rendezvous socket stays open for the life of the channel. Each
//! byte a side sends on it is one doorbell ring; the other side's wait polls the socket
//! and drains what arrived. The socket's hang-up (the peer exited, crashed, or dropped
//! its end) is the peer-death signal, seen by `poll` (`POLLHUP`/`POLLRDHUP`), by a read
//! (end of file) and by a ring (`EPIPE`), so a sender that never blocks learns of it at
//! its next ring or [`peer_alive`](coresident::Doorbell::peer_alive) check.
//!
//! Why not eventfds (protocol version 1): the two peers of an eventfd share its open
//! file description, so either can clear `O_NONBLOCK` on it with `fcntl(F_SETFL)`, and
//! then our `write(2)` blocks forever on a counter the peer filled, and our `read(2)`
//! blocks on a counter the peer drained. `preadv2(RWF_NOWAIT)` protects reads, but
//! eventfd refuses `pwritev2(RWF_NOWAIT)` (`EOPNOTSUPP` on Linux 6.18), so no write to a
//! shared eventfd can be made safe. The two ends of a connected Unix socket are two
//! files: the peer can change the flags of its own end only, and every call here passes
//! `MSG_DONTWAIT` anyway, so no flag of any file decides whether we block.
//!
//! A full socket buffer (a peer that never drains its doorbell) makes a ring return at
//! once: a wake-up is already pending, which is all a ring promises. A wait drains at
//! most [`DRAIN_PER_WAIT`] bytes per call, so a peer flooding doorbells costs us
//! bounded work per wait. Notifications are hints, never the source of truth: a
//! wake-up may stand for several rings, and the ring's indices alone say what is there.

use core::sync::atomic::{AtomicBool, Ordering};
use core::time::Duration;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use coresident::{TransportError, Wake};
use rustix::event::{PollFd, PollFlags};
use rustix::io::Errno;
use rustix::net::{RecvFlags, SendFlags};

use crate::endpoint::PeerInfo;

/// The most doorbell bytes one wait drains.
pub const DRAIN_PER_WAIT: usize = 256;

/// The signalling half of a channel (the core's `Doorbell` for this transport): rings
/// and waits on the rendezvous socket, reports the peer's death, and carries what is
/// known about the peer ([`PeerLink::peer`]: its id, its kernel-reported credentials and
/// the channel's application context).
///
/// It is pollable ([`AsFd`]): the socket is readable when the peer rang or hung up.
#[derive(Debug)]
pub struct PeerLink {
    /// Our end of the rendezvous socket (a connected `AF_UNIX` stream).
    socket: OwnedFd,
    /// Set once a call saw the peer hang up; never cleared.
    gone: AtomicBool,
    /// Who the peer is.
    peer: PeerInfo,
}

impl PeerLink {
    /// The link of a fresh channel.
    pub(crate) fn new(socket: OwnedFd, peer: PeerInfo) -> Self {
        Self {
            socket,
            gone: AtomicBool::new(false),
            peer,
        }
    }

    /// What is known about the peer: its id, its credentials (from the kernel, checked
    /// against the credential policy before any descriptor moved) and the application
    /// context of the hello.
    #[must_use]
    pub fn peer(&self) -> &PeerInfo {
        &self.peer
    }

    /// Whether a call has already seen the peer hang up. No system call.
    #[must_use]
    pub fn peer_known_gone(&self) -> bool {
        // Relaxed: a sticky flag with no data attached; a late view only delays the
        // answer to the next check by one system call.
        self.gone.load(Ordering::Relaxed)
    }

    /// Records the peer's death.
    fn mark_gone(&self) {
        // Relaxed: see `peer_known_gone`.
        self.gone.store(true, Ordering::Relaxed);
    }

    /// Drains pending doorbell bytes without blocking: `Ok(true)` if the peer had rung.
    ///
    /// # Errors
    ///
    /// [`TransportError::PeerGone`] if the peer hung up and nothing was pending;
    /// [`TransportError::Os`] if the read fails otherwise.
    pub fn try_consume(&self) -> Result<bool, TransportError> {
        match self.drain()? {
            Drained::Rung => Ok(true),
            Drained::Nothing => Ok(false),
            Drained::Gone => Err(TransportError::PeerGone),
        }
    }

    /// Reads up to [`DRAIN_PER_WAIT`] doorbell bytes, never blocking.
    fn drain(&self) -> Result<Drained, TransportError> {
        if self.peer_known_gone() {
            return Ok(Drained::Gone);
        }
        let mut buf = [0u8; DRAIN_PER_WAIT];
        loop {
            // No control buffer: descriptors a hostile peer attaches are released by
            // the kernel, never installed in our table.
            return match rustix::net::recv(&self.socket, &mut buf, RecvFlags::DONTWAIT) {
                Ok((0, _)) => {
                    self.mark_gone();
                    Ok(Drained::Gone)
                }
                Ok(_) => Ok(Drained::Rung),
                Err(Errno::AGAIN) => Ok(Drained::Nothing),
                Err(Errno::INTR) => continue,
                Err(Errno::CONNRESET | Errno::PIPE) => {
                    self.mark_gone();
                    Ok(Drained::Gone)
                }
                Err(e) => Err(TransportError::Os(e.raw_os_error())),
            };
        }
    }

    /// One `poll` of the socket with the given timeout (`None`: forever).
    fn poll(&self, timeout: Option<Duration>) -> Result<PollFlags, TransportError> {
        let ts = timeout.map(|d| rustix::event::Timespec {
            tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(d.subsec_nanos()),
        });
        let mut fds = [PollFd::new(&self.socket, PollFlags::IN | PollFlags::RDHUP)];
        loop {
            match rustix::event::poll(&mut fds, ts.as_ref()) {
                Ok(_) => return Ok(fds[0].revents()),
                Err(Errno::INTR) => {}
                Err(e) => return Err(TransportError::Os(e.raw_os_error())),
            }
        }
    }
}

/// What a drain found.
enum Drained {
    /// Doorbell bytes.
    Rung,
    /// Nothing pending.
    Nothing,
    /// End of file or reset: the peer is gone.
    Gone,
}

impl coresident::Doorbell for PeerLink {
    /// Sends one doorbell byte, never blocking: a full socket buffer means a wake-up
    /// is already pending.
    fn ring(&self) -> Result<(), TransportError> {
        if self.peer_known_gone() {
            return Err(TransportError::PeerGone);
        }
        loop {
            return match rustix::net::send(
                &self.socket,
                &[1],
                SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
            ) {
                Ok(_) | Err(Errno::AGAIN) => Ok(()),
                Err(Errno::INTR) => continue,
                Err(Errno::PIPE | Errno::CONNRESET | Errno::NOTCONN) => {
                    self.mark_gone();
                    Err(TransportError::PeerGone)
                }
                Err(e) => Err(TransportError::Os(e.raw_os_error())),
            };
        }
    }

    /// Waits until the peer rings, hangs up, or `timeout` passes. A pending ring is
    /// reported before a hang-up, so a caller that drains the ring after each wake-up
    /// sees everything the peer published before it died; the next wait then reports
    /// [`Wake::PeerGone`] at once.
    fn wait(&self, timeout: Option<Duration>) -> Result<Wake, TransportError> {
        if self.peer_known_gone() {
            return Ok(Wake::PeerGone);
        }
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        loop {
            // `None`: forever; zero once the deadline passed (one last look).
            let remaining = match (timeout, deadline) {
                (None, _) | (Some(_), None) => None,
                (Some(_), Some(d)) => Some(d.saturating_duration_since(Instant::now())),
            };
            // One `poll`, then one read if something is there: pending bytes are
            // reported as readable even after a hang-up, so they come first.
            let revents = self.poll(remaining)?;
            if revents.contains(PollFlags::NVAL) {
                return Err(TransportError::Os(Errno::BADF.raw_os_error()));
            }
            if revents.contains(PollFlags::IN) {
                match self.drain()? {
                    Drained::Rung => return Ok(Wake::Rung),
                    Drained::Gone => return Ok(Wake::PeerGone),
                    Drained::Nothing => {} // taken by another thread of ours
                }
            } else if revents.intersects(PollFlags::HUP | PollFlags::RDHUP | PollFlags::ERR) {
                self.mark_gone();
                return Ok(Wake::PeerGone);
            }
            if remaining.is_some_and(|r| r.is_zero()) {
                return Ok(Wake::TimedOut);
            }
        }
    }

    /// One non-blocking `poll` of the socket unless the death is already known (then
    /// no system call). A failing poll means the socket is broken: as good as gone.
    fn peer_alive(&self) -> bool {
        if self.peer_known_gone() {
            return false;
        }
        match self.poll(Some(Duration::ZERO)) {
            Ok(r) if r.intersects(PollFlags::HUP | PollFlags::RDHUP | PollFlags::ERR) => {
                self.mark_gone();
                false
            }
            Ok(r) => !r.contains(PollFlags::NVAL),
            Err(_) => false,
        }
    }
}

impl AsFd for PeerLink {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cred::PeerCred;
    use coresident::Doorbell;
    use std::os::unix::net::UnixStream;

    fn pair() -> (PeerLink, PeerLink) {
        let (a, b) = UnixStream::pair().unwrap();
        let info = || PeerInfo {
            id: None,
            cred: PeerCred {
                pid: 0,
                uid: 0,
                gid: 0,
            },
            context: Vec::new(),
        };
        (
            PeerLink::new(a.into(), info()),
            PeerLink::new(b.into(), info()),
        )
    }

    #[test]
    fn ring_wait_coalesce_and_time_out() {
        let (a, b) = pair();
        assert!(!b.try_consume().unwrap());
        assert_eq!(
            b.wait(Some(Duration::from_millis(1))).unwrap(),
            Wake::TimedOut
        );
        a.ring().unwrap();
        a.ring().unwrap();
        assert_eq!(b.wait(Some(Duration::from_secs(30))).unwrap(), Wake::Rung);
        // Both rings were drained by the one wake-up.
        assert!(!b.try_consume().unwrap());
        assert!(a.peer_alive() && b.peer_alive());
    }

    #[test]
    fn rings_never_block_on_a_peer_that_never_reads() {
        let (a, _b) = pair();
        for _ in 0..100_000 {
            a.ring().unwrap();
        }
    }

    #[test]
    fn hang_up_after_pending_rings() {
        let (a, b) = pair();
        a.ring().unwrap();
        drop(a);
        assert_eq!(b.wait(None).unwrap(), Wake::Rung);
        assert_eq!(b.wait(None).unwrap(), Wake::PeerGone);
        assert!(b.peer_known_gone());
        assert_eq!(b.ring(), Err(TransportError::PeerGone));
        assert!(!b.peer_alive());
    }

    #[test]
    fn ring_sees_the_hang_up() {
        let (a, b) = pair();
        drop(b);
        assert!(!a.peer_alive());
        assert_eq!(a.ring(), Err(TransportError::PeerGone));
    }
}
