//! The production [`Accelerated`]: a `coresident_net::Stream` session over the
//! application's TCP connection (a duplicate of its descriptor), in non-blocking mode.
//!
//! The stream answers `read` and `write`; what the socket emulation needs beyond them
//! is built here:
//!
//! * **Readiness without consuming.** A stream reports progress through one descriptor
//!   for both directions, and whether a read would give bytes only by reading. So
//!   `readiness` reads ahead into a bounded buffer (at most [`READ_AHEAD`] bytes) that
//!   every later read serves first: `POLLIN` is exact, and `MSG_PEEK` and `FIONREAD`
//!   come from the same buffer. Reads and the read-ahead hold one lock, so the bytes stay
//!   in order.
//! * **Writability.** A write that would block marks the connection "full"; it is
//!   writable again once the stream's descriptor has fired since (something changed),
//!   or [`crate::wait::RECHECK`] later whatever happened (doorbells are hints: a lost
//!   one must not leave a writer asleep for ever). At worst a `POLLOUT` is followed by
//!   an `EAGAIN`, which non-blocking writers handle.
//! * **Errors.** A reset or protocol failure is kept as the pending `SO_ERROR`.

use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use coresident_net::Stream;
use rustix::io::Errno;

use crate::conn::{Accelerated, ConnStats, Path, Readiness, Reason, Shutdown};
use crate::state::lock;

/// The most bytes `readiness` reads ahead.
pub(crate) const READ_AHEAD: usize = 256 * 1024;

/// Bytes read ahead and the reading side's state.
#[derive(Debug, Default)]
struct Rx {
    /// Read ahead, not yet given to the application.
    buf: VecDeque<u8>,
    /// The stream ended (after `buf`).
    eof: bool,
    /// `shutdown(SHUT_RD)`: reads give the end of the stream.
    shut: bool,
}

/// A `coresident_net::Stream` as an accelerated connection (see the module docs).
#[derive(Debug)]
pub(crate) struct NetConn {
    stream: Stream,
    rx: Mutex<Rx>,
    /// The last write would have blocked, and the descriptor has not fired since.
    full: AtomicBool,
    /// When `full` was set, in µs of [`now_us`].
    full_since: AtomicU64,
    /// `shutdown(SHUT_WR)` done.
    shut_wr: AtomicBool,
    /// The pending error (`SO_ERROR`), as an errno (0: none).
    error: AtomicU64,
    /// The connection failed for good: every call fails with this errno (0: it did not).
    dead: AtomicU64,
    /// Bytes received from the stream so far (edge-triggered epoll's `rx_seq`).
    received: AtomicU64,
}

/// A monotonic clock in µs since the first call (for `full_since`; `epoch` in its
/// docs).
fn now_us() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(std::time::Instant::now);
    u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// The errno for a stream error.
fn errno_of(e: &io::Error) -> Errno {
    if let Some(raw) = e.raw_os_error() {
        return Errno::from_raw_os_error(raw);
    }
    match e.kind() {
        io::ErrorKind::WouldBlock => Errno::AGAIN,
        io::ErrorKind::BrokenPipe => Errno::PIPE,
        io::ErrorKind::TimedOut => Errno::TIMEDOUT,
        io::ErrorKind::Interrupted => Errno::INTR,
        io::ErrorKind::NotConnected => Errno::NOTCONN,
        // A reset, a peer that broke the protocol, a gap nobody filled: the connection
        // is gone, as TCP says after a reset.
        _ => Errno::CONNRESET,
    }
}

impl NetConn {
    /// Wraps a session stream (set to non-blocking here).
    ///
    /// # Errors
    ///
    /// If the stream cannot be made non-blocking.
    pub(crate) fn new(stream: Stream) -> io::Result<Self> {
        stream.set_nonblocking(true)?;
        Ok(Self {
            stream,
            rx: Mutex::new(Rx::default()),
            full: AtomicBool::new(false),
            full_since: AtomicU64::new(0),
            shut_wr: AtomicBool::new(false),
            error: AtomicU64::new(0),
            dead: AtomicU64::new(0),
            received: AtomicU64::new(0),
        })
    }

    /// Records a failure: pending error, and the connection is dead.
    fn failed(&self, e: Errno) -> Errno {
        let raw = u64::try_from(e.raw_os_error()).unwrap_or(0);
        // Relaxed: flags re-read by every call; no data is published with them.
        self.error.store(raw, Ordering::Relaxed);
        self.dead.store(raw, Ordering::Relaxed);
        e
    }

    fn dead(&self) -> Option<Errno> {
        // Relaxed: see `failed`.
        match self.dead.load(Ordering::Relaxed) {
            0 => None,
            raw => Some(Errno::from_raw_os_error(
                i32::try_from(raw).unwrap_or(libc::EIO),
            )),
        }
    }

    /// Reads ahead into `rx` if it is empty (not at the end). Returns whether bytes or
    /// the end are there now.
    fn fill(&self, rx: &mut Rx) -> bool {
        if !rx.buf.is_empty() || rx.eof || rx.shut {
            return true;
        }
        if self.dead().is_some() {
            return true;
        }
        let mut chunk = [0u8; 16 * 1024];
        let mut got_any = false;
        while rx.buf.len() < READ_AHEAD {
            match (&self.stream).read(&mut chunk) {
                Ok(0) => {
                    rx.eof = true;
                    return true;
                }
                Ok(n) => {
                    rx.buf.extend(&chunk[..n]);
                    // Relaxed: a counter.
                    self.received.fetch_add(n as u64, Ordering::Relaxed);
                    got_any = true;
                    if n < chunk.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.failed(errno_of(&e));
                    return true;
                }
            }
        }
        got_any
    }

    /// Copies from the read-ahead buffer into `bufs` (consuming unless `peek`).
    fn serve(rx: &mut Rx, bufs: &mut [IoSliceMut<'_>], peek: bool) -> usize {
        let mut n = 0;
        for b in bufs.iter_mut() {
            let take = b.len().min(rx.buf.len() - n);
            for (i, slot) in b[..take].iter_mut().enumerate() {
                *slot = rx.buf[n + i];
            }
            n += take;
            if n == rx.buf.len() {
                break;
            }
        }
        if !peek {
            rx.buf.drain(..n);
        }
        n
    }

    /// Whether the connection has been "full" for longer than a recheck period.
    fn full_too_long(&self) -> bool {
        // Relaxed: a hint.
        let since = self.full_since.load(Ordering::Relaxed);
        now_us().saturating_sub(since) >= crate::wait::RECHECK.as_micros() as u64
    }

    /// Whether the descriptor fired (something changed since the last `WouldBlock`).
    fn fired(&self) -> bool {
        let fd = self.wake_fd();
        let mut p = [rustix::event::PollFd::new(
            &fd,
            rustix::event::PollFlags::IN,
        )];
        let zero = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        rustix::event::poll(&mut p, Some(&zero)).is_ok_and(|n| n > 0)
    }
}

impl Accelerated for NetConn {
    fn try_recv(&self, bufs: &mut [IoSliceMut<'_>], peek: bool) -> Result<usize, Errno> {
        assert!(
            !crate::state::fault("read-panic"),
            "fault injected: read-panic"
        );
        let mut rx = lock(&self.rx);
        if !rx.buf.is_empty() {
            return Ok(Self::serve(&mut rx, bufs, peek));
        }
        if rx.eof || rx.shut {
            return Ok(0);
        }
        if let Some(e) = self.dead() {
            return Err(e);
        }
        if peek {
            self.fill(&mut rx);
            if !rx.buf.is_empty() {
                return Ok(Self::serve(&mut rx, bufs, true));
            }
            return match self.dead() {
                Some(e) => Err(e),
                None if rx.eof => Ok(0),
                None => Err(Errno::AGAIN),
            };
        }
        // Straight into the caller's first buffer: no copy through the read-ahead.
        let Some(first) = bufs.iter_mut().find(|b| !b.is_empty()) else {
            return Ok(0);
        };
        loop {
            match (&self.stream).read(first) {
                Ok(0) => {
                    rx.eof = true;
                    return Ok(0);
                }
                Ok(n) => {
                    // Relaxed: a counter.
                    self.received.fetch_add(n as u64, Ordering::Relaxed);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(Errno::AGAIN),
                Err(e) => return Err(self.failed(errno_of(&e))),
            }
        }
    }

    fn try_send(&self, bufs: &[IoSlice<'_>]) -> Result<usize, Errno> {
        if let Some(e) = self.dead() {
            return Err(e);
        }
        // Relaxed: our own flag.
        if self.shut_wr.load(Ordering::Relaxed) {
            return Err(Errno::PIPE);
        }
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total == 0 {
            return Ok(0);
        }
        // Small gathered writes (redis replies with writev) go out as one write, one
        // ring frame.
        let joined: Vec<u8>;
        let data: &[u8] = match bufs.iter().filter(|b| !b.is_empty()).count() {
            1 => bufs.iter().find(|b| !b.is_empty()).map_or(&[], |b| &b[..]),
            _ if total <= 64 * 1024 => {
                joined = bufs.iter().flat_map(|b| b.iter().copied()).collect();
                &joined
            }
            _ => bufs.iter().find(|b| !b.is_empty()).map_or(&[], |b| &b[..]),
        };
        loop {
            match (&self.stream).write(data) {
                Ok(n) => {
                    // Relaxed: a hint (see the module docs).
                    self.full.store(false, Ordering::Relaxed);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.full_since.store(now_us(), Ordering::Relaxed);
                    self.full.store(true, Ordering::Relaxed);
                    return Err(Errno::AGAIN);
                }
                Err(e) => {
                    let errno = errno_of(&e);
                    return Err(if errno == Errno::PIPE {
                        errno
                    } else {
                        self.failed(errno)
                    });
                }
            }
        }
    }

    fn readiness(&self) -> Readiness {
        // Before the read-ahead below: a read lets the stream consume its doorbell,
        // which may be the one that says the peer made room (both directions share
        // it), and then the descriptor no longer says so.
        // Relaxed: a hint (see the module docs).
        if self.full.load(Ordering::Relaxed) && (self.fired() || self.full_too_long()) {
            self.full.store(false, Ordering::Relaxed);
        }
        let mut r = Readiness::NONE;
        {
            let mut rx = lock(&self.rx);
            if self.fill(&mut rx) {
                r = r | Readiness::READ;
            }
            if rx.eof {
                r = r | Readiness::RDHUP;
            }
            // Relaxed: our own flag.
            if rx.eof && self.shut_wr.load(Ordering::Relaxed) {
                r = r | Readiness::HUP;
            }
        }
        if self.dead().is_some() {
            return r | Readiness::READ | Readiness::WRITE | Readiness::ERR | Readiness::HUP;
        }
        // Relaxed: a hint (see the module docs).
        if !self.full.load(Ordering::Relaxed) || self.shut_wr.load(Ordering::Relaxed) {
            r = r | Readiness::WRITE;
        }
        r
    }

    fn arm(&self, interest: Readiness) -> Readiness {
        // First, before anything that lets the stream handle (and so consume) its
        // events: has the descriptor fired since the write that would block? Then
        // maybe there is room.
        // Relaxed: a hint.
        if interest.contains(Readiness::WRITE)
            && self.full.load(Ordering::Relaxed)
            && (self.fired() || self.full_too_long())
        {
            self.full.store(false, Ordering::Relaxed);
        }
        // A read that would block (inside `readiness`) arms the stream's descriptor for
        // incoming bytes; a write that would block armed it for room.
        self.readiness()
    }

    fn wake_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the stream's descriptor lives as long as the stream, which `self`
        // owns; the borrow cannot outlive `self`.
        unsafe { BorrowedFd::borrow_raw(self.stream.as_raw_fd()) }
    }

    fn shutdown(&self, how: Shutdown) -> Result<(), Errno> {
        if matches!(how, Shutdown::Write | Shutdown::Both) {
            // Relaxed: our own flag.
            self.shut_wr.store(true, Ordering::Relaxed);
            match self.stream.shutdown(std::net::Shutdown::Write) {
                // The FIN is queued; the stream sends it as it can.
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(errno_of(&e)),
            }
        }
        if matches!(how, Shutdown::Read | Shutdown::Both) {
            let mut rx = lock(&self.rx);
            rx.shut = true;
            rx.buf.clear();
            let _ = self.stream.shutdown(std::net::Shutdown::Read);
        }
        Ok(())
    }

    fn rx_pending(&self) -> usize {
        let mut rx = lock(&self.rx);
        self.fill(&mut rx);
        rx.buf.len()
    }

    fn take_error(&self) -> Option<Errno> {
        // Relaxed: see `failed`.
        match self.error.swap(0, Ordering::Relaxed) {
            0 => None,
            raw => Some(Errno::from_raw_os_error(
                i32::try_from(raw).unwrap_or(libc::EIO),
            )),
        }
    }

    fn downgrade(&self, _why: Reason) -> Result<(), Errno> {
        self.stream.downgrade();
        Ok(())
    }

    fn releasable(&self) -> bool {
        // A session speaks offset-labelled segments on TCP for its whole life.
        false
    }

    fn stats(&self) -> ConnStats {
        let s = self.stream.stats();
        ConnStats {
            path: Some(match s.path {
                coresident_net::Path::Ring => Path::Ring,
                _ => Path::Tcp,
            }),
            ring_tx: s.ring_tx_bytes,
            ring_rx: s.ring_rx_bytes,
            tcp_tx: s.tcp_tx_bytes,
            tcp_rx: s.tcp_rx_bytes,
            switches: s.upgrades + s.downgrades,
        }
    }

    fn rx_seq(&self) -> u64 {
        // Relaxed: a counter.
        self.received.load(Ordering::Relaxed)
    }

    fn survives_fork(&self) -> bool {
        // A copy in a forked child lets go of the channel (the parent owns it) and goes
        // on over TCP (coresident_net's fork behaviour).
        true
    }

    fn finish(&self, limit: core::time::Duration) {
        // The stream's own drop finishes on a short-lived thread, which dies with the
        // process if it exits right after `close` (the common case): segments still
        // queued for TCP, or the FIN, would be lost. Flush here, without changing the
        // stream's blocking mode (another thread may still be reading).
        let deadline = crate::wait::Deadline::after(Some(limit));
        let flush_all = || loop {
            match (&self.stream).flush() {
                Ok(()) => return true,
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::Interrupted =>
                {
                    if deadline.passed() {
                        return false;
                    }
                    let _ = crate::wait::sleep_on(
                        &[self.wake_fd()],
                        Some(crate::wait::nap(deadline).min(core::time::Duration::from_millis(5))),
                    );
                }
                Err(_) => return false,
            }
        };
        if !flush_all() {
            return;
        }
        // Relaxed: our own flag.
        if !self.shut_wr.swap(true, Ordering::Relaxed) {
            match self.stream.shutdown(std::net::Shutdown::Write) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
            let _ = flush_all();
        }
    }
}
