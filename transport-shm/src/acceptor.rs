//! A background acceptor: a thread serving a [`Listener`]'s handshakes concurrently,
//! handing validated endpoints out through a bounded queue.
//!
//! ```text
//!  offerers --> listening socket --> acceptor thread: Engine (policy, deadlines,
//!                                      max_handshakes) --> queue (queue_len) --> accept()
//!                                    queue full: stops taking new connections (the
//!                                      backlog holds them) until accept() makes room
//! ```
//!
//! Memory is bounded whatever offerers do: at most `max_handshakes` hellos of at most
//! 424 bytes in progress, `queue_len` endpoints queued, and as many finished while the
//! queue was full (at most `max_handshakes`). The acceptor is pollable ([`AsFd`]): its
//! descriptor is readable while an endpoint is queued, for epoll, mio or tokio users.

use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use core::time::Duration;
use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::mpsc::{
    sync_channel, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError,
};
use std::sync::{Arc, PoisonError};
use std::thread::JoinHandle;

use rustix::event::EventfdFlags;

use crate::endpoint::Endpoint;
use crate::error::{SysContext, SysError};
use crate::listener::Listener;
use crate::rendezvous::{AcceptConfig, HandshakeError};

/// Endpoints an [`Acceptor`] queues by default.
pub const DEFAULT_QUEUE_LEN: usize = 16;

/// Waiting on an [`Acceptor`] ended without an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AcceptError {
    /// The timeout passed.
    TimedOut,
    /// The acceptor's thread stopped (a system call on the listening socket failed;
    /// the error was logged and counted).
    Stopped,
}

impl fmt::Display for AcceptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TimedOut => f.write_str("no offer was accepted in time"),
            Self::Stopped => f.write_str("the acceptor's thread stopped"),
        }
    }
}

impl std::error::Error for AcceptError {}

/// What an [`Acceptor`] has done so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AcceptorStats {
    /// Handshakes that produced an endpoint.
    pub accepted: u64,
    /// Connections refused by the credential policy.
    pub refused_credentials: u64,
    /// Connections refused because `max_handshakes` were in progress.
    pub busy: u64,
    /// Handshakes that ran out of time.
    pub timed_out: u64,
    /// Handshakes that failed otherwise (a malformed hello, a bad descriptor...).
    pub failed: u64,
}

/// The counters, shared with the thread.
#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    refused_credentials: AtomicU64,
    busy: AtomicU64,
    timed_out: AtomicU64,
    failed: AtomicU64,
}

/// What the thread and the handle share.
#[derive(Debug)]
struct Shared {
    /// Set to stop the thread.
    stop: AtomicBool,
    /// Written to wake the thread (stop, or room in the queue). Ours alone: never
    /// given to a peer, so its flags are ours to trust.
    wake: OwnedFd,
    /// Readable while endpoints are queued (a semaphore eventfd: one count each).
    ready: OwnedFd,
    /// The counters.
    counters: Counters,
}

impl Shared {
    /// Adds 1 to an eventfd of ours.
    fn post(fd: &OwnedFd) {
        // Cannot block or fail short of 2^64 - 2 unread posts.
        let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
    }

    /// Takes one count (semaphore) or all (plain) from an eventfd of ours, if any.
    fn take(fd: &OwnedFd) {
        let mut b = [0u8; 8];
        let _ = rustix::io::read(fd, &mut b);
    }
}

/// A thread serving a listener's handshakes (see the module docs).
///
/// Dropping it stops the thread, closes the listening socket (removing its file) and
/// drops the endpoints still queued (their peers see a hang-up).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use coresident_shm::{AcceptConfig, Acceptor, OfferConfig, Registry};
///
/// let dir = std::env::temp_dir().join(format!("acceptor-doc-{}", std::process::id()));
/// let registry = Registry::open(&dir)?;
/// let acceptor = Acceptor::spawn(registry.register(&"server".parse()?)?, AcceptConfig::default())?;
/// let client = registry.connect(&"server".parse()?, &OfferConfig::new("client".parse()?))?;
/// let server = acceptor.accept(Some(Duration::from_secs(30)))?;
/// assert_eq!(server.peer().id, Some("client".parse()?));
/// # drop((client, server, acceptor));
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Acceptor {
    /// Validated endpoints.
    rx: Receiver<Endpoint>,
    /// Shared with the thread.
    shared: Arc<Shared>,
    /// The thread.
    thread: Option<JoinHandle<()>>,
    /// The listener's path.
    path: PathBuf,
}

impl Acceptor {
    /// Starts a thread serving `listener` with `cfg`, queueing up to
    /// [`DEFAULT_QUEUE_LEN`] endpoints.
    ///
    /// # Errors
    ///
    /// [`SysError`] if the eventfds or the thread cannot be created.
    pub fn spawn(listener: Listener, cfg: AcceptConfig) -> Result<Self, SysError> {
        Self::with_queue(listener, cfg, DEFAULT_QUEUE_LEN)
    }

    /// As [`spawn`](Self::spawn), queueing up to `queue_len` endpoints (at least 1).
    ///
    /// # Errors
    ///
    /// [`SysError`] if the eventfds or the thread cannot be created.
    pub fn with_queue(
        listener: Listener,
        cfg: AcceptConfig,
        queue_len: usize,
    ) -> Result<Self, SysError> {
        let flags = EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC;
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            wake: rustix::event::eventfd(0, flags).sys("eventfd")?,
            ready: rustix::event::eventfd(0, flags | EventfdFlags::SEMAPHORE).sys("eventfd")?,
            counters: Counters::default(),
        });
        let (tx, rx) = sync_channel(queue_len.max(1));
        let path = listener.path();
        let shared2 = shared.clone();
        let thread = std::thread::Builder::new()
            .name("coresident-shm-acceptor".into())
            .spawn(move || serve(&listener, &cfg, &tx, &shared2))
            .map_err(|e| SysError::from_io("spawn", &e))?;
        Ok(Self {
            rx,
            shared,
            thread: Some(thread),
            path,
        })
    }

    /// Waits up to `timeout` (`None`: forever) for the next validated endpoint.
    ///
    /// # Errors
    ///
    /// [`AcceptError::TimedOut`], or [`AcceptError::Stopped`] if the thread stopped.
    pub fn accept(&self, timeout: Option<Duration>) -> Result<Endpoint, AcceptError> {
        let ep = match timeout {
            Some(t) => self.rx.recv_timeout(t).map_err(|e| match e {
                RecvTimeoutError::Timeout => AcceptError::TimedOut,
                RecvTimeoutError::Disconnected => AcceptError::Stopped,
            })?,
            None => self.rx.recv().map_err(|_| AcceptError::Stopped)?,
        };
        self.taken();
        Ok(ep)
    }

    /// The next validated endpoint, if one is queued.
    ///
    /// # Errors
    ///
    /// [`AcceptError::Stopped`] if the thread stopped and nothing is queued.
    pub fn try_accept(&self) -> Result<Option<Endpoint>, AcceptError> {
        match self.rx.try_recv() {
            Ok(ep) => {
                self.taken();
                Ok(Some(ep))
            }
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => Err(AcceptError::Stopped),
        }
    }

    /// Bookkeeping after taking an endpoint: one readiness count less, and a wake-up
    /// for a thread waiting for room in the queue.
    fn taken(&self) {
        Shared::take(&self.shared.ready);
        Shared::post(&self.shared.wake);
    }

    /// The counters so far.
    #[must_use]
    pub fn stats(&self) -> AcceptorStats {
        let c = &self.shared.counters;
        // Relaxed: statistics counters.
        AcceptorStats {
            accepted: c.accepted.load(Ordering::Relaxed),
            refused_credentials: c.refused_credentials.load(Ordering::Relaxed),
            busy: c.busy.load(Ordering::Relaxed),
            timed_out: c.timed_out.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
        }
    }

    /// The listening socket's path.
    #[must_use]
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl AsFd for Acceptor {
    /// Readable while an endpoint is queued.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.shared.ready.as_fd()
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        // Relaxed: the wake-up below is a system call the thread's poll returns from,
        // and the thread reads the flag after it; the flag carries no data.
        self.shared.stop.store(true, Ordering::Relaxed);
        Shared::post(&self.shared.wake);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The thread: serve, queue, count, until stopped.
fn serve(listener: &Listener, cfg: &AcceptConfig, tx: &SyncSender<Endpoint>, shared: &Shared) {
    let (sock, engine) = listener.parts();
    let mut engine = engine.lock().unwrap_or_else(PoisonError::into_inner);
    let mut held: VecDeque<Endpoint> = VecDeque::new();
    let c = &shared.counters;
    // Relaxed (all counters): statistics.
    let count = |n: &AtomicU64| n.fetch_add(1, Ordering::Relaxed);
    // Relaxed: see `Drop`.
    while !shared.stop.load(Ordering::Relaxed) {
        while let Some(ep) = held.pop_front() {
            match tx.try_send(ep) {
                Ok(()) => Shared::post(&shared.ready),
                Err(TrySendError::Full(ep)) => {
                    held.push_front(ep);
                    break;
                }
                Err(TrySendError::Disconnected(_)) => return,
            }
        }
        if let Err(e) = engine.run(sock, cfg, held.is_empty(), Some(shared.wake.as_fd()), None) {
            tracing::error!(error = %e, "coresident-shm: acceptor stops");
            return;
        }
        Shared::take(&shared.wake);
        while let Some(done) = engine.pop() {
            match done {
                Ok(ep) => {
                    count(&c.accepted);
                    held.push_back(ep);
                }
                Err(HandshakeError::PeerRefused(_)) => {
                    count(&c.refused_credentials);
                }
                Err(HandshakeError::Busy) => {
                    count(&c.busy);
                }
                Err(HandshakeError::Timeout) => {
                    count(&c.timed_out);
                }
                Err(_) => {
                    count(&c.failed);
                }
            }
        }
    }
}
