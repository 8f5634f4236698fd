//! An in-process [`Accelerated`] connection: two bounded byte queues and a real eventfd
//! per side. The socket emulation's tests (blocking, flags, poll/select/epoll readiness,
//! level- and edge-triggered) run against it, so they exercise real descriptors and real
//! sleeps without depending on any transport.
//!
//! It behaves like a TCP connection whose peer is in the same process: `shutdown(Write)`
//! makes the peer read the end of the stream after the bytes already sent; dropping one
//! side (close) makes the other read the end of the stream and get `EPIPE` on write;
//! [`MemConn::reset`] makes both sides fail with `ECONNRESET`.

use std::collections::VecDeque;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rustix::event::{eventfd, EventfdFlags};
use rustix::io::Errno;

use crate::conn::{Accelerated, ConnStats, Path, Readiness, Reason, Shutdown};

/// One direction: bytes in flight and its end-of-stream flags.
#[derive(Debug)]
struct Pipe {
    /// The bytes written and not yet read.
    buf: Mutex<VecDeque<u8>>,
    /// The most `buf` may hold.
    cap: usize,
    /// The writer shut this direction down (or closed).
    write_closed: AtomicBool,
    /// The reader shut this direction down (or closed).
    read_closed: AtomicBool,
    /// Bytes ever written into this direction.
    written: AtomicU64,
}

impl Pipe {
    fn new(cap: usize) -> Self {
        Self {
            buf: Mutex::new(VecDeque::with_capacity(cap.min(1 << 16))),
            cap,
            write_closed: AtomicBool::new(false),
            read_closed: AtomicBool::new(false),
            written: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<u8>> {
        self.buf.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// State shared by both sides.
#[derive(Debug)]
struct Shared {
    /// Side A writes, side B reads.
    a_to_b: Pipe,
    /// Side B writes, side A reads.
    b_to_a: Pipe,
    /// The connection was reset.
    reset: AtomicBool,
    /// Side A's and side B's wake-up eventfds.
    wake: [OwnedFd; 2],
}

/// One side of an in-process connection (see the module docs).
#[derive(Debug)]
pub struct MemConn {
    shared: Arc<Shared>,
    /// 0 for side A, 1 for side B.
    side: usize,
    /// The error `take_error` reports next (set by a reset).
    error_taken: AtomicBool,
    /// Bytes sent and received, for `stats`.
    sent: AtomicU64,
    received: AtomicU64,
    /// Set by `downgrade`: reported as the TCP path (the bytes still flow in memory).
    downgraded: AtomicBool,
}

impl MemConn {
    /// Two connected sides, each direction holding at most `cap` bytes.
    ///
    /// # Errors
    ///
    /// If an eventfd cannot be created.
    pub fn pair(cap: usize) -> Result<(Self, Self), Errno> {
        let flags = EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK;
        let shared = Arc::new(Shared {
            a_to_b: Pipe::new(cap.max(1)),
            b_to_a: Pipe::new(cap.max(1)),
            reset: AtomicBool::new(false),
            wake: [eventfd(0, flags)?, eventfd(0, flags)?],
        });
        let side = |side| Self {
            shared: shared.clone(),
            side,
            error_taken: AtomicBool::new(false),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            downgraded: AtomicBool::new(false),
        };
        Ok((side(0), side(1)))
    }

    /// Resets the connection: both sides fail with `ECONNRESET` from now on.
    pub fn reset(&self) {
        // Relaxed: the flag is re-read after the wake-up, whose eventfd write orders it.
        self.shared.reset.store(true, Ordering::SeqCst);
        self.notify(0);
        self.notify(1);
    }

    fn tx(&self) -> &Pipe {
        if self.side == 0 {
            &self.shared.a_to_b
        } else {
            &self.shared.b_to_a
        }
    }

    fn rx(&self) -> &Pipe {
        if self.side == 0 {
            &self.shared.b_to_a
        } else {
            &self.shared.a_to_b
        }
    }

    /// Rings side `side`'s eventfd.
    fn notify(&self, side: usize) {
        let _ = rustix::io::write(&self.shared.wake[side], &1u64.to_ne_bytes());
    }

    fn notify_peer(&self) {
        self.notify(1 - self.side);
    }

    fn is_reset(&self) -> bool {
        self.shared.reset.load(Ordering::SeqCst)
    }
}

impl Drop for MemConn {
    fn drop(&mut self) {
        // Closing: the peer reads the end of the stream, and its writes fail.
        self.tx().write_closed.store(true, Ordering::SeqCst);
        self.rx().read_closed.store(true, Ordering::SeqCst);
        self.notify_peer();
    }
}

impl Accelerated for MemConn {
    fn try_recv(&self, bufs: &mut [IoSliceMut<'_>], peek: bool) -> Result<usize, Errno> {
        if self.is_reset() {
            return Err(Errno::CONNRESET);
        }
        let rx = self.rx();
        if rx.read_closed.load(Ordering::SeqCst) {
            return Ok(0);
        }
        let mut q = rx.lock();
        if q.is_empty() {
            return if rx.write_closed.load(Ordering::SeqCst) {
                Ok(0)
            } else {
                Err(Errno::AGAIN)
            };
        }
        let mut n = 0;
        for b in bufs.iter_mut() {
            let (front, back) = q.as_slices();
            let avail = front.len() + back.len() - n;
            let take = b.len().min(avail);
            for (i, slot) in b[..take].iter_mut().enumerate() {
                *slot = q[n + i];
            }
            n += take;
            if take < b.len() {
                break;
            }
        }
        if !peek {
            q.drain(..n);
            drop(q);
            self.received.fetch_add(n as u64, Ordering::Relaxed);
            self.notify_peer();
        }
        Ok(n)
    }

    fn try_send(&self, bufs: &[IoSlice<'_>]) -> Result<usize, Errno> {
        if self.is_reset() {
            return Err(Errno::CONNRESET);
        }
        let tx = self.tx();
        if tx.write_closed.load(Ordering::SeqCst) || tx.read_closed.load(Ordering::SeqCst) {
            return Err(Errno::PIPE);
        }
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total == 0 {
            return Ok(0);
        }
        let mut q = tx.lock();
        let room = tx.cap - q.len();
        if room == 0 {
            return Err(Errno::AGAIN);
        }
        let mut n = 0;
        for b in bufs {
            let take = b.len().min(room - n);
            q.extend(&b[..take]);
            n += take;
            if n == room {
                break;
            }
        }
        drop(q);
        tx.written.fetch_add(n as u64, Ordering::SeqCst);
        self.sent.fetch_add(n as u64, Ordering::Relaxed);
        self.notify_peer();
        Ok(n)
    }

    fn readiness(&self) -> Readiness {
        if self.is_reset() {
            return Readiness::READ | Readiness::WRITE | Readiness::ERR | Readiness::HUP;
        }
        let mut r = Readiness::NONE;
        let rx = self.rx();
        let rx_eof = rx.write_closed.load(Ordering::SeqCst);
        let rx_shut = rx.read_closed.load(Ordering::SeqCst);
        if rx_eof || rx_shut || !rx.lock().is_empty() {
            r = r | Readiness::READ;
        }
        if rx_eof {
            r = r | Readiness::RDHUP;
        }
        let tx = self.tx();
        let tx_shut = tx.write_closed.load(Ordering::SeqCst);
        let peer_gone = tx.read_closed.load(Ordering::SeqCst);
        if tx_shut || peer_gone || tx.lock().len() < tx.cap {
            r = r | Readiness::WRITE;
        }
        if peer_gone && !tx_shut {
            // Writing to a closed peer fails: TCP reports the reset as an error.
            r = r | Readiness::ERR;
        }
        if (rx_eof || rx_shut) && tx_shut {
            r = r | Readiness::HUP;
        }
        r
    }

    fn arm(&self, _interest: Readiness) -> Readiness {
        // Every state change rings the eventfd, so arming is only draining it.
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(&self.shared.wake[self.side], &mut buf);
        self.readiness()
    }

    fn wake_fd(&self) -> BorrowedFd<'_> {
        self.shared.wake[self.side].as_fd()
    }

    fn shutdown(&self, how: Shutdown) -> Result<(), Errno> {
        if matches!(how, Shutdown::Write | Shutdown::Both) {
            self.tx().write_closed.store(true, Ordering::SeqCst);
        }
        if matches!(how, Shutdown::Read | Shutdown::Both) {
            self.rx().read_closed.store(true, Ordering::SeqCst);
        }
        self.notify_peer();
        self.notify(self.side);
        Ok(())
    }

    fn rx_pending(&self) -> usize {
        self.rx().lock().len()
    }

    fn take_error(&self) -> Option<Errno> {
        (self.is_reset() && !self.error_taken.swap(true, Ordering::SeqCst))
            .then_some(Errno::CONNRESET)
    }

    fn downgrade(&self, _why: Reason) -> Result<(), Errno> {
        self.downgraded.store(true, Ordering::SeqCst);
        Ok(())
    }

    fn releasable(&self) -> bool {
        false
    }

    fn rx_seq(&self) -> u64 {
        self.rx().written.load(Ordering::SeqCst)
    }

    fn stats(&self) -> ConnStats {
        let tcp = self.downgraded.load(Ordering::SeqCst);
        ConnStats {
            path: Some(if tcp { Path::Tcp } else { Path::Ring }),
            ring_tx: self.sent.load(Ordering::Relaxed),
            ring_rx: self.received.load(Ordering::Relaxed),
            tcp_tx: 0,
            tcp_rx: 0,
            switches: u64::from(tcp),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_flow_and_end_of_stream() {
        let (a, b) = MemConn::pair(8).unwrap();
        assert_eq!(
            b.try_recv(&mut [IoSliceMut::new(&mut [0; 4])], false),
            Err(Errno::AGAIN)
        );
        assert_eq!(a.try_send(&[IoSlice::new(b"hello world")]), Ok(8));
        assert_eq!(a.try_send(&[IoSlice::new(b"x")]), Err(Errno::AGAIN));
        assert!(b.readiness().contains(Readiness::READ));
        assert!(!a.readiness().contains(Readiness::WRITE));
        let mut buf = [0u8; 5];
        assert_eq!(b.try_recv(&mut [IoSliceMut::new(&mut buf)], true), Ok(5));
        assert_eq!(&buf, b"hello");
        assert_eq!(b.rx_pending(), 8);
        let mut x = [0u8; 3];
        let mut y = [0u8; 10];
        assert_eq!(
            b.try_recv(
                &mut [IoSliceMut::new(&mut x), IoSliceMut::new(&mut y)],
                false
            ),
            Ok(8)
        );
        assert_eq!(&x, b"hel");
        assert_eq!(&y[..5], b"lo wo");
        a.shutdown(Shutdown::Write).unwrap();
        assert_eq!(b.try_recv(&mut [IoSliceMut::new(&mut buf)], false), Ok(0));
        assert!(b.readiness().contains(Readiness::READ | Readiness::RDHUP));
        assert_eq!(a.try_send(&[IoSlice::new(b"x")]), Err(Errno::PIPE));
        drop(b);
        assert!(a.readiness().contains(Readiness::HUP) || a.readiness().contains(Readiness::WRITE));
    }

    #[test]
    fn reset_is_reported_once_as_so_error() {
        let (a, b) = MemConn::pair(8).unwrap();
        a.reset();
        assert_eq!(b.try_send(&[IoSlice::new(b"x")]), Err(Errno::CONNRESET));
        assert_eq!(b.take_error(), Some(Errno::CONNRESET));
        assert_eq!(b.take_error(), None);
        assert!(a.readiness().contains(Readiness::ERR | Readiness::HUP));
    }
}
