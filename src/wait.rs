//! Waiting (std, Linux): the router's pollable descriptor and its blocking receive.
//!
//! ```text
//!   Router::wait_fd()  = one epoll instance, level-triggered, over
//!     each channel's doorbell descriptors (Waitable: an eventfd, the rendezvous socket)
//!     the network path's one descriptor (NetworkPath::wait_fd: its own epoll)
//!     the discovery source's one descriptor (Discovery::wait_fd)
//!
//!   event loop (epoll, mio, tokio's AsyncFd):
//!     loop {
//!         router.recv(deliver)?;                 // everything that is there
//!         if router.prepare_wait(deliver)? {     // arms every ring's wake-up request
//!             continue;                          // something came in meanwhile
//!         }
//!         wait until router.wait_fd() is readable (or a timer: router.poll())
//!         router.after_wait();                   // consumes the doorbells' counts
//!     }
//! ```
//!
//! A doorbell rings only for a sleeper that asked (the ring's event index), so
//! `prepare_wait` must come right before the wait, after the last receive; it arms each
//! ring for one more frame and receives what raced in. [`Router::recv_blocking`] is
//! that loop, with a spin first: a time budget (the configured `spin`, 0 by default on
//! one CPU, where spinning only delays the peer).

use crate::net::NetworkPath;
use crate::policy::Policy;
use crate::router::RouteError;
use crate::{ChannelError, Clock, Doorbell, Router, SharedRegion};
use core::fmt;
use core::time::Duration;
use coresident_lookup::Key;
use rustix::event::epoll;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Instant;

/// A doorbell whose readiness the operating system can report: the descriptors that
/// become readable when the peer rings (or hangs up).
pub trait Waitable {
    /// Calls `add` for each descriptor; the same ones for the doorbell's life.
    fn wait_fds(&self, add: &mut dyn FnMut(BorrowedFd<'_>));

    /// Consumes the rings counted in the descriptors (an eventfd's counter), so a
    /// level-triggered wait does not report them again.
    fn drain(&self) {}
}

/// How long arming one channel may wait on it (see `prepare_wait`).
const ARM_BOUND: Duration = Duration::from_micros(200);
/// The longest sleep on the poll set: a ring whose arming was missed is looked at again
/// this soon.
const ARM_MISS_NAP: Duration = Duration::from_millis(10);

const NET: u64 = u64::MAX;
const DISCOVERY: u64 = u64::MAX - 1;

/// The epoll instance of a router.
#[derive(Debug)]
pub(crate) struct Poller {
    epoll: OwnedFd,
    net: bool,
    discovery: bool,
}

impl Poller {
    fn new() -> std::io::Result<Self> {
        Ok(Self {
            epoll: epoll::create(epoll::CreateFlags::CLOEXEC)?,
            net: false,
            discovery: false,
        })
    }

    fn add(&self, fd: BorrowedFd<'_>, data: u64) -> std::io::Result<()> {
        match epoll::add(
            &self.epoll,
            fd,
            epoll::EventData::new_u64(data),
            epoll::EventFlags::IN | epoll::EventFlags::RDHUP,
        ) {
            // A descriptor shared by two sources (or registered before): fine.
            Ok(()) | Err(rustix::io::Errno::EXIST) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// The default spin before a blocking receive sleeps: none on one CPU (spinning there
/// only delays the peer the spinner waits for), 20 µs with more.
pub(crate) fn default_spin() -> Duration {
    match std::thread::available_parallelism() {
        Ok(n) if n.get() > 1 => Duration::from_micros(20),
        _ => Duration::ZERO,
    }
}

impl<K, R, D, C, N, P, const B: usize> Router<'_, K, R, D, C, N, P, B>
where
    K: Key + fmt::Debug,
    R: SharedRegion,
    D: Doorbell + Waitable,
    C: Clock,
    N: NetworkPath<K>,
    P: Policy,
{
    /// One descriptor for the whole router, readable when a channel, the network path
    /// or the discovery source may have work: register it with epoll, mio or tokio's
    /// `AsyncFd`. Level-triggered; see the [module docs](crate::wait) for the loop
    /// around it ([`prepare_wait`](Self::prepare_wait) before each wait,
    /// [`after_wait`](Self::after_wait) after).
    ///
    /// # Errors
    ///
    /// [`RouteError::Wait`] when the epoll instance cannot be made.
    pub fn wait_fd(&mut self) -> Result<BorrowedFd<'_>, RouteError<N::Error>> {
        self.sync_poller()?;
        match &self.ext.poller {
            Some(p) => Ok(p.epoll.as_fd()),
            None => Err(RouteError::Wait(std::io::Error::other("no poller"))),
        }
    }

    /// Makes sure the poll set has every channel, the network path and discovery.
    fn sync_poller(&mut self) -> Result<(), RouteError<N::Error>> {
        if self.ext.poller.is_none() {
            self.ext.poller = Some(Poller::new().map_err(RouteError::Wait)?);
        }
        let Some(p) = self.ext.poller.as_mut() else {
            return Ok(());
        };
        if !p.net {
            if let Some(fd) = self.net.wait_fd() {
                p.add(fd, NET).map_err(RouteError::Wait)?;
            }
            p.net = true;
        }
        if !p.discovery {
            if let Some(fd) = self.ext.discovery.as_ref().and_then(|d| d.wait_fd()) {
                p.add(fd, DISCOVERY).map_err(RouteError::Wait)?;
            }
            p.discovery = true;
        }
        for (i, s) in self.slots.iter_mut().enumerate() {
            if s.polled {
                continue;
            }
            let Some(c) = s.channel.as_ref() else {
                continue;
            };
            let mut err = None;
            c.doorbell().wait_fds(&mut |fd| {
                if let Err(e) = p.add(fd, i as u64) {
                    err.get_or_insert(e);
                }
            });
            if let Some(e) = err {
                return Err(RouteError::Wait(e));
            }
            s.polled = true;
        }
        Ok(())
    }

    /// Gets ready to sleep on [`wait_fd`](Self::wait_fd): registers new channels, and
    /// asks every ring's peer to ring when its next frame is published. Messages that
    /// arrived meanwhile are delivered; returns true if there were any (receive again
    /// instead of sleeping).
    ///
    /// # Errors
    ///
    /// [`RouteError::Wait`]; the network path's during a fail-over.
    pub fn prepare_wait(
        &mut self,
        mut deliver: impl FnMut(&K, u32, &[u8]),
    ) -> Result<bool, RouteError<N::Error>> {
        self.sync_poller()?;
        let mut got = false;
        for i in 0..self.slots.len() {
            // `Channel` has no non-blocking "arm" yet: a blocking receive with a short
            // bound spins (within its own budget), arms the ring's data request and
            // sleeps the rest of the bound; `TimedOut` when armed and still empty, else
            // the message that came in. Should the spin use up the bound, the ring is
            // not armed this round, and the router's wait is bounded by `ARM_MISS_NAP`.
            let s = &self.slots[i];
            let max = match s.channel.as_ref() {
                Some(c) if !s.draining => c.max_incoming(),
                _ => continue,
            };
            let mut buf = core::mem::take(&mut self.rx_buf);
            buf.resize(max, 0);
            let r = match self.slots[i].channel.as_mut() {
                Some(c) => c.recv_blocking(&mut buf, Some(ARM_BOUND)),
                None => Err(ChannelError::Empty),
            };
            match r {
                Ok(n) => {
                    got = true;
                    self.accept_channel_message(i, &buf[..n], &mut deliver);
                }
                Err(ChannelError::TimedOut | ChannelError::Empty) => {}
                Err(_) => got = true, // gone or corrupted: the next receive fails it over
            }
            self.rx_buf = buf;
        }
        Ok(got)
    }

    /// After a wait on [`wait_fd`](Self::wait_fd) returned: consumes the doorbells'
    /// counts, so the level-triggered descriptor quiets until the next ring.
    pub fn after_wait(&mut self) {
        for s in self.slots.iter() {
            if let Some(c) = s.channel.as_ref() {
                c.doorbell().drain();
            }
        }
    }

    /// Receives from every channel and the network path, waiting up to `timeout`
    /// (`None`: no bound) for at least one message: spins for the configured budget
    /// first, then sleeps on the router's descriptor. Returns how many messages were
    /// received (duplicates and held ones included).
    ///
    /// # Errors
    ///
    /// [`RouteError::TimedOut`]; the network path's; [`RouteError::Wait`].
    pub fn recv_blocking(
        &mut self,
        timeout: Option<Duration>,
        mut deliver: impl FnMut(&K, u32, &[u8]),
    ) -> Result<usize, RouteError<N::Error>> {
        let start = Instant::now();
        let deadline = timeout.and_then(|t| start.checked_add(t));
        let spin = self.ext.spin.unwrap_or_else(default_spin);
        loop {
            let n = self.recv(&mut deliver)?;
            if n > 0 {
                return Ok(n);
            }
            if start.elapsed() < spin {
                core::hint::spin_loop();
                continue;
            }
            if self.prepare_wait(&mut deliver)? {
                continue;
            }
            let now = Instant::now();
            let left = match deadline {
                Some(d) if d <= now => return Err(RouteError::TimedOut),
                Some(d) => Some(d - now),
                None => None,
            };
            // Doorbells are hints (and an arming may have been missed): wake at least
            // every `ARM_MISS_NAP` to look again.
            let nap = left.map_or(ARM_MISS_NAP, |l| l.min(ARM_MISS_NAP));
            let hung_up = self.wait_once(nap)?;
            self.after_wait();
            if hung_up {
                self.poll()?;
            }
        }
    }

    /// One `epoll_wait`; true if a channel's descriptor reported a hang-up.
    fn wait_once(&mut self, nap: Duration) -> Result<bool, RouteError<N::Error>> {
        let Some(p) = self.ext.poller.as_mut() else {
            return Ok(false);
        };
        let ts = rustix::event::Timespec {
            tv_sec: nap.as_secs() as i64,
            tv_nsec: i64::from(nap.subsec_nanos()),
        };
        let mut events = [epoll::Event {
            flags: epoll::EventFlags::empty(),
            data: epoll::EventData::new_u64(0),
        }; 64];
        let n = match epoll::wait(&p.epoll, &mut events[..], Some(&ts)) {
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) => 0,
            Err(e) => return Err(RouteError::Wait(e.into())),
        };
        let mut hung_up = false;
        for ev in &events[..n] {
            let (data, flags) = (ev.data.u64(), ev.flags);
            if data != NET
                && data != DISCOVERY
                && flags.intersects(
                    epoll::EventFlags::HUP | epoll::EventFlags::RDHUP | epoll::EventFlags::ERR,
                )
            {
                hung_up = true;
            }
            if data == DISCOVERY {
                hung_up = true; // poll() applies discovery's changes
            }
        }
        Ok(hung_up)
    }
}
