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

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use coresident_net::Stream;
use rustix::io::Errno;

use crate::conn::{Accelerated, ConnStats, Glance, Path, Readiness, Reason, Shutdown};
use crate::state::lock;

/// The most bytes `readiness` reads ahead.
pub(crate) const READ_AHEAD: usize = 256 * 1024;

/// Bytes read ahead, `buf[start..end]`, in a buffer allocated on first use.
#[derive(Debug, Default)]
struct Ahead {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Ahead {
    fn len(&self) -> usize {
        self.end - self.start
    }

    fn is_empty(&self) -> bool {
        self.start == self.end
    }

    fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    /// The free space after the bytes held (the buffer is allocated on first use, and
    /// rewound when empty).
    fn spare(&mut self) -> &mut [u8] {
        if self.buf.is_empty() {
            self.buf = vec![0u8; READ_AHEAD].into_boxed_slice();
        }
        if self.is_empty() {
            self.clear();
        }
        &mut self.buf[self.end..]
    }

    /// Copies into `bufs` (consuming unless `peek`); returns how many bytes.
    fn serve(&mut self, bufs: &mut [IoSliceMut<'_>], peek: bool) -> usize {
        let mut at = self.start;
        for b in bufs.iter_mut() {
            let take = b.len().min(self.end - at);
            b[..take].copy_from_slice(&self.buf[at..at + take]);
            at += take;
            if at == self.end {
                break;
            }
        }
        let n = at - self.start;
        if !peek {
            self.start = at;
        }
        n
    }
}

/// Bytes read ahead and the reading side's state.
#[derive(Debug, Default)]
struct Rx {
    /// Read ahead, not yet given to the application.
    buf: Ahead,
    /// The stream ended (after `buf`).
    eof: bool,
    /// `shutdown(SHUT_RD)`: reads give the end of the stream.
    shut: bool,
}

std::thread_local! {
    /// This thread's id, once asked (0: not yet). No destructor: readable at any time.
    static TID: core::cell::Cell<u64> = const { core::cell::Cell::new(0) };
}

/// The calling thread's id (`gettid`, asked once per thread).
fn tid() -> u64 {
    TID.with(|t| {
        if t.get() == 0 {
            t.set(u64::from(
                rustix::thread::gettid()
                    .as_raw_nonzero()
                    .get()
                    .unsigned_abs(),
            ));
        }
        t.get()
    })
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
    /// The stream's consumed doorbells when `full` was set (see `seen_at_arm`).
    full_seen: AtomicU64,
    /// `shutdown(SHUT_WR)` done.
    shut_wr: AtomicBool,
    /// The pending error (`SO_ERROR`), as an errno (0: none).
    error: AtomicU64,
    /// The connection failed for good: every call fails with this errno (0: it did not).
    dead: AtomicU64,
    /// Bytes received from the stream so far (edge-triggered epoll's `rx_seq`).
    received: AtomicU64,
    /// A read came back empty (the stream armed its data wake-up), and no write has
    /// run since (a write may consume the shared doorbell): until the descriptor fires,
    /// nothing new is there, and readiness need not read to know it.
    rx_armed: AtomicBool,
    /// When `rx_armed` was set, in µs of [`now_us`] (a lost doorbell must not hide
    /// bytes for longer than a recheck period).
    rx_armed_since: AtomicU64,
    /// The stream's count of doorbells it consumed, when `rx_armed` (or `full`) was
    /// set: if it moved, the stream took a ring that may have been for us (both
    /// directions share the doorbell), and the descriptor no longer says so.
    seen_at_arm: AtomicU64,
    /// The one thread that used the connection so far (0: none yet, `u64::MAX`: more
    /// than one). A connection used by one thread only may switch the stream to
    /// blocking mode for a blocking receive (the mode is the stream's, for all its
    /// threads).
    owner: AtomicU64,
    /// Whether spinning pays in blocking receives (`wait::Spinner`): when it does not,
    /// the stream's own blocking read (which always spins its fixed budget) is not
    /// used.
    spinner: Mutex<crate::wait::Spinner>,
}

use crate::wait::now_us;

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
            full_seen: AtomicU64::new(0),
            shut_wr: AtomicBool::new(false),
            error: AtomicU64::new(0),
            dead: AtomicU64::new(0),
            received: AtomicU64::new(0),
            rx_armed: AtomicBool::new(false),
            rx_armed_since: AtomicU64::new(0),
            seen_at_arm: AtomicU64::new(0),
            owner: AtomicU64::new(0),
            spinner: Mutex::new(crate::wait::Spinner::new()),
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

    /// Notes the calling thread; returns whether it is the only one so far.
    fn single_threaded(&self) -> bool {
        let me = tid();
        // Relaxed: a hint; every use re-checks, and a second thread makes it MAX for good.
        match self
            .owner
            .compare_exchange(0, me, Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => true,
            Err(o) if o == me => true,
            Err(u64::MAX) => false,
            Err(_) => {
                self.owner.store(u64::MAX, Ordering::Relaxed);
                false
            }
        }
    }

    /// The stream's count of consumed doorbells.
    fn doorbells_seen(&self) -> u64 {
        self.stream.stats().doorbells_seen
    }

    /// Records what a stream read said about arming.
    fn note_read(&self, empty: bool) {
        // Relaxed: a hint, see `rx_armed`.
        if empty {
            self.rx_armed_since.store(now_us(), Ordering::Relaxed);
            self.seen_at_arm
                .store(self.doorbells_seen(), Ordering::Relaxed);
        }
        self.rx_armed.store(empty, Ordering::Relaxed);
    }

    /// Whether a stream read can be skipped: armed, no doorbell consumed since, the
    /// descriptor has not fired (`fired`: the caller knows; `None`: ask), and not for
    /// longer than a recheck period.
    fn nothing_new(&self, fired: Option<bool>) -> bool {
        // Relaxed: a hint, see `rx_armed`.
        self.rx_armed.load(Ordering::Relaxed)
            && now_us().saturating_sub(self.rx_armed_since.load(Ordering::Relaxed))
                < crate::wait::RECHECK.as_micros() as u64
            && self.doorbells_seen() == self.seen_at_arm.load(Ordering::Relaxed)
            && !self.stream.ring_pending()
            && !fired.unwrap_or_else(|| self.fired())
    }

    /// Reads ahead into `rx` if it is empty (not at the end). Returns whether bytes or
    /// the end are there now.
    fn fill(&self, rx: &mut Rx, fired: Option<bool>) -> bool {
        if !rx.buf.is_empty() || rx.eof || rx.shut {
            return true;
        }
        if self.dead().is_some() {
            return true;
        }
        if self.nothing_new(fired) {
            return false;
        }
        loop {
            let spare = rx.buf.spare();
            match (&self.stream).read(spare) {
                Ok(0) => {
                    self.note_read(false);
                    rx.eof = true;
                    return true;
                }
                Ok(n) => {
                    self.note_read(false);
                    rx.buf.end += n;
                    // Relaxed: a counter.
                    self.received.fetch_add(n as u64, Ordering::Relaxed);
                    return true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.note_read(true);
                    return false;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.failed(errno_of(&e));
                    return true;
                }
            }
        }
    }

    /// Copies from the read-ahead buffer into `bufs` (consuming unless `peek`).
    fn serve(rx: &mut Rx, bufs: &mut [IoSliceMut<'_>], peek: bool) -> usize {
        rx.buf.serve(bufs, peek)
    }

    /// Whether the connection may have room again although the descriptor did not say
    /// so: "full" for longer than a recheck period, or a doorbell (maybe the one that
    /// said "room") consumed by the stream since.
    fn full_too_long(&self) -> bool {
        // Relaxed: a hint.
        let since = self.full_since.load(Ordering::Relaxed);
        now_us().saturating_sub(since) >= crate::wait::RECHECK.as_micros() as u64
            || self.doorbells_seen() != self.full_seen.load(Ordering::Relaxed)
    }

    /// The readiness now; `fired`: whether the descriptor is readable, if the caller
    /// knows.
    fn readiness_with(&self, fired: Option<bool>) -> Readiness {
        // Before the read-ahead below: a read lets the stream consume its doorbell,
        // which may be the one that says the peer made room (both directions share
        // it), and then the descriptor no longer says so.
        // Relaxed: a hint (see the module docs).
        if self.full.load(Ordering::Relaxed)
            && (fired.unwrap_or_else(|| self.fired()) || self.full_too_long())
        {
            self.full.store(false, Ordering::Relaxed);
        }
        let mut r = Readiness::NONE;
        {
            let mut rx = lock(&self.rx);
            if self.fill(&mut rx, fired) {
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
            self.fill(&mut rx, None);
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
        let _ = self.single_threaded();
        if self.nothing_new(None) {
            return Err(Errno::AGAIN);
        }
        loop {
            match (&self.stream).read(first) {
                Ok(0) => {
                    self.note_read(false);
                    rx.eof = true;
                    return Ok(0);
                }
                Ok(n) => {
                    self.note_read(false);
                    // Relaxed: a counter.
                    self.received.fetch_add(n as u64, Ordering::Relaxed);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.note_read(true);
                    return Err(Errno::AGAIN);
                }
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
        let _ = self.single_threaded();
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
                    self.full_seen
                        .store(self.doorbells_seen(), Ordering::Relaxed);
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
        self.readiness_with(None)
    }

    fn readiness_known(&self, fired: bool) -> Readiness {
        self.readiness_with(Some(fired))
    }

    fn glance(&self) -> Option<Glance> {
        if self.dead().is_some() {
            return Some(Glance {
                ready: Readiness::ERR | Readiness::HUP,
                fresh: false,
            });
        }
        let mut ready = Readiness::NONE;
        let mut fresh = false;
        {
            let rx = lock(&self.rx);
            if !rx.buf.is_empty() || rx.eof || rx.shut {
                ready = ready | Readiness::READ;
            } else if self.stream.ring_pending() {
                ready = ready | Readiness::READ;
                fresh = true;
            }
            if rx.eof {
                ready = ready | Readiness::RDHUP;
            }
            // Relaxed: our own flag.
            if rx.eof && self.shut_wr.load(Ordering::Relaxed) {
                ready = ready | Readiness::HUP;
            }
        }
        // Relaxed: hints (see the module docs).
        if !self.full.load(Ordering::Relaxed) || self.shut_wr.load(Ordering::Relaxed) {
            ready = ready | Readiness::WRITE;
        }
        Some(Glance { ready, fresh })
    }

    fn arm_known(&self, interest: Readiness, fired: bool) -> Readiness {
        if interest.contains(Readiness::WRITE)
            && self.full.load(Ordering::Relaxed)
            && (fired || self.full_too_long())
        {
            self.full.store(false, Ordering::Relaxed);
        }
        self.readiness_with(Some(fired))
    }

    fn arm(&self, interest: Readiness) -> Readiness {
        let fired = self.fired();
        self.arm_known(interest, fired)
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
        self.fill(&mut rx, None);
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

    fn recv_blocking(
        &self,
        bufs: &mut [IoSliceMut<'_>],
        timeout: Option<core::time::Duration>,
    ) -> Option<Result<usize, Errno>> {
        if !self.single_threaded() || timeout.is_some_and(|t| t.is_zero()) {
            return None;
        }
        let mut rx = lock(&self.rx);
        if !rx.buf.is_empty() {
            return Some(Ok(Self::serve(&mut rx, bufs, false)));
        }
        if rx.eof || rx.shut {
            return Some(Ok(0));
        }
        if let Some(e) = self.dead() {
            return Some(Err(e));
        }
        let first = bufs.iter_mut().find(|b| !b.is_empty())?;
        let budget = lock(&self.spinner).limit();
        if budget.is_zero() {
            // Spinning does not pay now: the generic loop sleeps at once.
            return None;
        }
        let started = std::time::Instant::now();
        // The stream's own blocking read: it spins on the ring (no system call) for the
        // spin budget, then sleeps on its descriptor. One thread only uses this
        // connection, so the stream's mode is ours to change for the call.
        if self.stream.set_read_timeout(timeout).is_err()
            || self.stream.set_nonblocking(false).is_err()
        {
            return None;
        }
        let r = match (&self.stream).read(first) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(Errno::INTR),
            other => other.map_err(|e| errno_of(&e)),
        };
        let _ = self.stream.set_nonblocking(true);
        let _ = self.stream.set_read_timeout(None);
        let took = started.elapsed();
        let in_time = r.is_ok() && took <= crate::state::config().spin;
        lock(&self.spinner).record(in_time.then_some(took), true);
        Some(match r {
            Ok(0) => {
                self.note_read(false);
                rx.eof = true;
                Ok(0)
            }
            Ok(n) => {
                self.note_read(false);
                // Relaxed: a counter.
                self.received.fetch_add(n as u64, Ordering::Relaxed);
                Ok(n)
            }
            Err(Errno::AGAIN | Errno::TIMEDOUT) => Err(Errno::AGAIN),
            Err(Errno::INTR) => Err(Errno::INTR),
            Err(e) => Err(self.failed(e)),
        })
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
