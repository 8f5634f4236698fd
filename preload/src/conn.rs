//! An accelerated connection as the hooks see it: a small trait, so that the socket
//! emulation (blocking, flags, readiness for poll/select/epoll) is written once, against
//! whatever carries the bytes.
//!
//! The production implementation is `coresident_net::Stream` (the TCP + ring session that
//! switches paths mid-stream); [`crate::mem::MemConn`] is an in-process implementation
//! (two bounded byte queues and real eventfds) that the emulation's tests run against.
//!
//! Every operation of the trait is non-blocking. Blocking calls, timeouts, spinning and
//! `MSG_WAITALL` are built on top by the hooks (module `wait`): try the operation; if it would block,
//! [`Accelerated::arm`] the wake-ups for what is awaited and sleep on
//! [`Accelerated::wake_fd`] (after a short spin).

use core::fmt;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::BorrowedFd;

use rustix::io::Errno;

/// Readiness bits, in the kernel's poll encoding (`POLLIN` = 1, `POLLOUT` = 4,
/// `POLLERR` = 8, `POLLHUP` = 16, `POLLRDHUP` = 0x2000), which epoll shares.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Readiness(pub u32);

impl Readiness {
    /// Nothing ready.
    pub const NONE: Self = Self(0);
    /// Bytes to read, or the end of the stream (a read will not block).
    pub const READ: Self = Self(libc::POLLIN as u32);
    /// Room to write (a write will not block).
    pub const WRITE: Self = Self(libc::POLLOUT as u32);
    /// An error is pending (`SO_ERROR`), e.g. the connection was reset.
    pub const ERR: Self = Self(libc::POLLERR as u32);
    /// Both directions are shut down, or the connection was reset.
    pub const HUP: Self = Self(libc::POLLHUP as u32);
    /// The peer shut its writing side down (it sent its end of stream).
    pub const RDHUP: Self = Self(libc::POLLRDHUP as u32);

    /// Whether every bit of `other` is set.
    #[must_use]
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether any bit of `other` is set.
    #[must_use]
    pub const fn intersects(self, other: Self) -> bool {
        self.0 & other.0 != 0
    }

    /// The bits of both.
    #[must_use]
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// The bits of `self` that are also in `other`.
    #[must_use]
    pub const fn and(self, other: Self) -> Self {
        Self(self.0 & other.0)
    }

    /// Whether no bit is set.
    #[must_use]
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl core::ops::BitOr for Readiness {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        self.union(rhs)
    }
}

impl fmt::Debug for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (bit, name) in [
            (Self::READ, "READ"),
            (Self::WRITE, "WRITE"),
            (Self::ERR, "ERR"),
            (Self::HUP, "HUP"),
            (Self::RDHUP, "RDHUP"),
        ] {
            if self.contains(bit) {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        if first {
            f.write_str("NONE")?;
        }
        Ok(())
    }
}

/// Which direction a `shutdown` closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shutdown {
    /// `SHUT_RD`.
    Read,
    /// `SHUT_WR`: the peer reads the end of the stream after the bytes already sent.
    Write,
    /// `SHUT_RDWR`.
    Both,
}

/// The path carrying a connection's bytes now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// The shared-memory ring.
    Ring,
    /// The TCP connection (never accelerated, or fallen back).
    Tcp,
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ring => "ring",
            Self::Tcp => "tcp",
        })
    }
}

/// Why the library asks a connection to fall back to TCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    /// `coresident withdraw`, or another operator request.
    Operator,
    /// The process forks: both copies then hold the plain TCP connection.
    Fork,
    /// The process execs a new image that inherits the socket.
    Exec,
    /// A call the ring cannot serve (`sendfile`, `splice`, `MSG_OOB`, zero-copy...).
    Declined(&'static str),
    /// An internal failure (a caught panic on this connection, say).
    Internal,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Operator => f.write_str("operator request"),
            Self::Fork => f.write_str("fork"),
            Self::Exec => f.write_str("exec"),
            Self::Declined(call) => write!(f, "{call} is served by TCP"),
            Self::Internal => f.write_str("internal error"),
        }
    }
}

/// Byte counters of one connection, for `coresident status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnStats {
    /// The path carrying the bytes now.
    pub path: Option<Path>,
    /// Bytes sent over the ring.
    pub ring_tx: u64,
    /// Bytes received over the ring.
    pub ring_rx: u64,
    /// Bytes sent over TCP.
    pub tcp_tx: u64,
    /// Bytes received over TCP.
    pub tcp_rx: u64,
    /// Path switches so far.
    pub switches: u64,
}

/// What [`Accelerated::glance`] saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Glance {
    /// The readiness seen.
    pub ready: Readiness,
    /// Bytes are waiting that the connection has not taken in yet: a read takes them,
    /// which is an edge for edge-triggered waiters even if `READ` was reported before.
    pub fresh: bool,
}

impl Glance {
    /// Whether this look is worth the full one for a waiter on `interest` (level
    /// readiness, plus fresh bytes for readers).
    pub fn shows(&self, interest: Readiness) -> bool {
        self.ready.intersects(interest.union(crate::wait::ALWAYS))
            || (self.fresh && interest.contains(Readiness::READ))
    }
}

/// An accelerated connection: what carries the bytes of a socket the application holds
/// (see the module docs). Every method is non-blocking and may be called from any
/// thread; one reader and one writer at a time at least must work concurrently (the
/// hooks serialise readers among themselves and writers among themselves).
pub trait Accelerated: Send + Sync + fmt::Debug {
    /// Receives into `bufs` without blocking: `Ok(0)` at the end of the stream,
    /// `Err(Errno::AGAIN)` if nothing is there yet. With `peek`, the bytes stay.
    ///
    /// # Errors
    ///
    /// `AGAIN` (nothing yet), `CONNRESET` (reset), or another errno the application
    /// should see.
    fn try_recv(&self, bufs: &mut [IoSliceMut<'_>], peek: bool) -> Result<usize, Errno>;

    /// Sends from `bufs` without blocking; returns how many bytes were taken.
    ///
    /// # Errors
    ///
    /// `AGAIN` (no room), `PIPE` (the peer or our `shutdown` closed the direction; the
    /// hooks raise `SIGPIPE` unless `MSG_NOSIGNAL`), `CONNRESET`, or another errno.
    fn try_send(&self, bufs: &[IoSlice<'_>]) -> Result<usize, Errno>;

    /// The readiness now, without arming any wake-up (cheap: the spin loop calls it).
    fn readiness(&self) -> Readiness;

    /// Arms the wake-ups for `interest` (drains [`Self::wake_fd`] first), then returns the
    /// readiness. If none of `interest` is ready, `wake_fd` becomes readable when that may
    /// have changed: arm, check, sleep loses no wake-up.
    fn arm(&self, interest: Readiness) -> Readiness;

    /// [`Self::readiness`] when the caller already knows whether [`Self::wake_fd`] is
    /// readable (an epoll of many connections asks the kernel once for all of them):
    /// an implementation may then skip its own check.
    fn readiness_known(&self, _fired: bool) -> Readiness {
        self.readiness()
    }

    /// [`Self::arm`] when the caller knows whether [`Self::wake_fd`] is readable.
    fn arm_known(&self, interest: Readiness, _fired: bool) -> Readiness {
        self.arm(interest)
    }

    /// The readiness by a look that makes no system call, for spinners: they ask it on
    /// every turn, and [`Self::readiness`] (which may ask the kernel) only when it shows
    /// something, or now and then. It may miss what only the kernel sees (a TCP path,
    /// a hang-up). `None` (the default): no such look, spinners take the full one on
    /// every turn.
    fn glance(&self) -> Option<Glance> {
        None
    }

    /// The descriptor that becomes readable when an armed interest may be ready
    /// (spurious wake-ups allowed). Owned by the connection.
    fn wake_fd(&self) -> BorrowedFd<'_>;

    /// Shuts one or both directions down.
    ///
    /// # Errors
    ///
    /// An errno for the application (`NOTCONN`...).
    fn shutdown(&self, how: Shutdown) -> Result<(), Errno>;

    /// Bytes that can be read without blocking (`FIONREAD`).
    fn rx_pending(&self) -> usize;

    /// Takes the pending error (`getsockopt(SO_ERROR)`), if any.
    fn take_error(&self) -> Option<Errno>;

    /// Falls back to TCP mid-stream now (idempotent).
    ///
    /// # Errors
    ///
    /// An errno if the connection cannot continue (it is then reset).
    fn downgrade(&self, why: Reason) -> Result<(), Errno>;

    /// Whether the connection can be handed back to the application as a plain TCP
    /// socket: it is on TCP and no byte is buffered by the library. After that the hooks
    /// forget the connection and pass every call through.
    fn releasable(&self) -> bool;

    /// Counters for `coresident status`.
    fn stats(&self) -> ConnStats;

    /// A number that grows whenever bytes arrive (bytes received so far, say);
    /// edge-triggered epoll reports an edge when it changed. The default (constant)
    /// reports edges only on readiness changes and after `EAGAIN`.
    fn rx_seq(&self) -> u64 {
        0
    }

    /// A blocking receive, if the implementation has a faster one than the generic loop
    /// (try, arm, sleep on [`Self::wake_fd`]): waits until bytes, the end of the stream
    /// or an error, or `timeout` (`None`: for ever; then `AGAIN`). `None`: not offered
    /// now, use the generic loop.
    fn recv_blocking(
        &self,
        _bufs: &mut [IoSliceMut<'_>],
        _timeout: Option<core::time::Duration>,
    ) -> Option<Result<usize, Errno>> {
        None
    }

    /// The application closed its last descriptor of the socket (or the process exits):
    /// hand every byte written and the end of the stream to the peer's path within
    /// `limit` (a closed TCP socket's bytes go out after `close` returns, from the
    /// kernel's buffer; bytes queued in user space must be handed over before).
    fn finish(&self, _limit: core::time::Duration) {}

    /// Whether a copy of the connection in a forked child may be used there (the child
    /// then speaks TCP only, the parent keeps the channel). If not, the child's copy
    /// fails every call with `EIO`.
    fn survives_fork(&self) -> bool {
        false
    }
}

/// A connection that failed for good: every call fails with its errno. Installed when a
/// session the peer committed to cannot be made here (so the socket must not carry raw
/// bytes either).
#[derive(Debug)]
pub struct Dead(pub Errno);

impl Accelerated for Dead {
    fn try_recv(&self, _: &mut [IoSliceMut<'_>], _: bool) -> Result<usize, Errno> {
        Err(self.0)
    }
    fn try_send(&self, _: &[IoSlice<'_>]) -> Result<usize, Errno> {
        Err(self.0)
    }
    fn readiness(&self) -> Readiness {
        Readiness::READ | Readiness::WRITE | Readiness::ERR | Readiness::HUP
    }
    fn arm(&self, _: Readiness) -> Readiness {
        self.readiness()
    }
    fn wake_fd(&self) -> BorrowedFd<'_> {
        // Never slept on: readiness is always set.
        rustix::stdio::stdin()
    }
    fn shutdown(&self, _: Shutdown) -> Result<(), Errno> {
        Ok(())
    }
    fn rx_pending(&self) -> usize {
        0
    }
    fn take_error(&self) -> Option<Errno> {
        Some(self.0)
    }
    fn downgrade(&self, _: Reason) -> Result<(), Errno> {
        Ok(())
    }
    fn releasable(&self) -> bool {
        false
    }
    fn stats(&self) -> ConnStats {
        ConnStats::default()
    }
}

impl<T: Accelerated + ?Sized> Accelerated for std::sync::Arc<T> {
    fn try_recv(&self, bufs: &mut [IoSliceMut<'_>], peek: bool) -> Result<usize, Errno> {
        (**self).try_recv(bufs, peek)
    }
    fn try_send(&self, bufs: &[IoSlice<'_>]) -> Result<usize, Errno> {
        (**self).try_send(bufs)
    }
    fn readiness(&self) -> Readiness {
        (**self).readiness()
    }
    fn arm(&self, interest: Readiness) -> Readiness {
        (**self).arm(interest)
    }
    fn wake_fd(&self) -> BorrowedFd<'_> {
        (**self).wake_fd()
    }
    fn readiness_known(&self, fired: bool) -> Readiness {
        (**self).readiness_known(fired)
    }
    fn arm_known(&self, interest: Readiness, fired: bool) -> Readiness {
        (**self).arm_known(interest, fired)
    }
    fn glance(&self) -> Option<Glance> {
        (**self).glance()
    }
    fn shutdown(&self, how: Shutdown) -> Result<(), Errno> {
        (**self).shutdown(how)
    }
    fn rx_pending(&self) -> usize {
        (**self).rx_pending()
    }
    fn take_error(&self) -> Option<Errno> {
        (**self).take_error()
    }
    fn downgrade(&self, why: Reason) -> Result<(), Errno> {
        (**self).downgrade(why)
    }
    fn releasable(&self) -> bool {
        (**self).releasable()
    }
    fn stats(&self) -> ConnStats {
        (**self).stats()
    }
    fn rx_seq(&self) -> u64 {
        (**self).rx_seq()
    }
    fn survives_fork(&self) -> bool {
        (**self).survives_fork()
    }
    fn finish(&self, limit: core::time::Duration) {
        (**self).finish(limit);
    }
    fn recv_blocking(
        &self,
        bufs: &mut [IoSliceMut<'_>],
        timeout: Option<core::time::Duration>,
    ) -> Option<Result<usize, Errno>> {
        (**self).recv_blocking(bufs, timeout)
    }
}
