//! What the library knows about the application's descriptors.
//!
//! ```text
//!   FDS: FdTable<Entry>          one slot per descriptor number (lock-free lookups)
//!    fd 7 ──► Entry::Sock ◄── fd 9 (a dup shares the entry: one open file description)
//!               ├ nonblocking, SO_RCVTIMEO, SO_SNDTIMEO (the description's flags)
//!               ├ conn: ArcSlot<Conn> ──► Conn { imp: Box<dyn Accelerated>, locks, 4-tuple }
//!               └ regs: the epoll sets this socket is registered in
//!    fd 5 ──► Entry::Epoll (an epoll instance holding emulated registrations)
//! ```
//!
//! A descriptor with no entry is none of the library's business: every call on it is
//! passed through. TCP sockets get an entry when they are created (`socket`, `accept`),
//! so that a socket registered in epoll before it connects can later be moved into the
//! emulation; only an entry whose `conn` is set is accelerated.

use core::net::SocketAddr;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use core::time::Duration;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::SystemTime;

use crate::conn::Accelerated;
use crate::epoll::EpollSet;
use crate::slot::{ArcSlot, FdTable};

/// The descriptors the library tracks.
pub(crate) static FDS: FdTable<Entry> = FdTable::new();

/// What a tracked descriptor is.
#[derive(Debug)]
pub(crate) enum Entry {
    /// A TCP socket (accelerated or not).
    Sock(Sock),
    /// An epoll instance with emulated registrations.
    Epoll(EpollSet),
}

impl Entry {
    /// The socket, if this is one.
    pub(crate) fn sock(&self) -> Option<&Sock> {
        match self {
            Self::Sock(s) => Some(s),
            Self::Epoll(_) => None,
        }
    }

    /// The epoll set, if this is one.
    pub(crate) fn epoll(&self) -> Option<&EpollSet> {
        match self {
            Self::Epoll(e) => Some(e),
            Self::Sock(_) => None,
        }
    }
}

/// Locks a mutex, ignoring poisoning (a panic elsewhere was caught at the barrier; the
/// data under these locks stays consistent at every await point).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A kernel epoll registration of a plain socket, kept so it can move into the
/// emulation when the socket is accelerated (and back when it is released).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct KernelReg {
    /// The epoll descriptor the application used.
    pub(crate) epfd: i32,
    /// The socket's descriptor number in that registration.
    pub(crate) fd: i32,
    /// The registered events.
    pub(crate) events: u32,
    /// The registered data.
    pub(crate) data: u64,
}

/// A TCP socket: one per open file description (dups share it).
#[derive(Debug)]
pub(crate) struct Sock {
    /// `O_NONBLOCK` of the open file description.
    pub(crate) nonblocking: AtomicBool,
    /// `SO_RCVTIMEO` in microseconds (0: none).
    pub(crate) rcvtimeo_us: AtomicU64,
    /// `SO_SNDTIMEO` in microseconds (0: none).
    pub(crate) sndtimeo_us: AtomicU64,
    /// The accelerated connection, if any.
    pub(crate) conn: ArcSlot<Conn>,
    /// Kernel epoll registrations while the socket is plain.
    pub(crate) kernel_regs: Mutex<Vec<KernelReg>>,
    /// The epoll sets holding an emulated registration of this socket.
    pub(crate) emulated_in: Mutex<Vec<Weak<Entry>>>,
    /// Set when the socket was made by `socket` (an outgoing connection), clear when by
    /// `accept`.
    pub(crate) outgoing: bool,
    /// How many descriptors of the table name this socket (the last `close` closes it).
    pub(crate) fds: AtomicUsize,
    /// A proposal to accelerate, waiting for the connection (see [`crate::accel`]).
    pub(crate) proposal: ArcSlot<crate::accel::Proposal>,
    /// A listening socket's registration and background acceptor.
    pub(crate) listener: Mutex<Option<Arc<coresident_net::Listener>>>,
}

impl Sock {
    /// A plain TCP socket.
    pub(crate) fn new(nonblocking: bool, outgoing: bool) -> Self {
        Self {
            nonblocking: AtomicBool::new(nonblocking),
            rcvtimeo_us: AtomicU64::new(0),
            sndtimeo_us: AtomicU64::new(0),
            conn: ArcSlot::new(),
            kernel_regs: Mutex::new(Vec::new()),
            emulated_in: Mutex::new(Vec::new()),
            outgoing,
            fds: AtomicUsize::new(0),
            proposal: ArcSlot::new(),
            listener: Mutex::new(None),
        }
    }

    /// Whether calls on the description do not block.
    pub(crate) fn is_nonblocking(&self) -> bool {
        // Relaxed: the flag is set by `fcntl` in program order of the thread that then
        // reads or writes, or by another thread with its own synchronisation (as the
        // kernel's flag, it has no ordering of its own).
        self.nonblocking.load(Ordering::Relaxed)
    }

    /// The receive timeout, if any.
    pub(crate) fn rcvtimeo(&self) -> Option<Duration> {
        // Relaxed: as `nonblocking`.
        match self.rcvtimeo_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    /// The send timeout, if any.
    pub(crate) fn sndtimeo(&self) -> Option<Duration> {
        // Relaxed: as `nonblocking`.
        match self.sndtimeo_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }
}

/// An accelerated connection and what the hooks keep beside it.
#[derive(Debug)]
pub(crate) struct Conn {
    /// What carries the bytes.
    pub(crate) imp: Box<dyn Accelerated>,
    /// Serialises readers (one reader at a time, as the ring's consumer is one).
    pub(crate) rx: Mutex<()>,
    /// Serialises writers: one `write` call's bytes are never interleaved with
    /// another's.
    pub(crate) tx: Mutex<()>,
    /// Bumped whenever a hook saw `EAGAIN` (edge-triggered epoll re-arms on it).
    pub(crate) kicks: AtomicU64,
    /// A caught panic broke this connection: calls fail with `EIO`.
    pub(crate) broken: AtomicBool,
    /// Our address and the peer's (the TCP connection's 4-tuple).
    pub(crate) local: Option<SocketAddr>,
    /// The peer's address.
    pub(crate) peer: Option<SocketAddr>,
    /// The peer's pid, when the rendezvous told it.
    pub(crate) peer_pid: Option<u32>,
    /// When the connection was accelerated.
    pub(crate) since: SystemTime,
    /// A unique number, for `coresident status` and the log.
    pub(crate) id: u64,
    /// The fork count when the connection was made (see `fdops::fork`).
    pub(crate) fork_gen: u64,
    /// What spinning achieved in this connection's blocking calls (`wait::Spinner`).
    pub(crate) spinner: Mutex<crate::wait::Spinner>,
}

impl Conn {
    /// Wraps an accelerated connection.
    pub(crate) fn new(
        imp: Box<dyn Accelerated>,
        local: Option<SocketAddr>,
        peer: Option<SocketAddr>,
        peer_pid: Option<u32>,
    ) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Self {
            imp,
            rx: Mutex::new(()),
            tx: Mutex::new(()),
            kicks: AtomicU64::new(0),
            broken: AtomicBool::new(false),
            local,
            peer,
            peer_pid,
            since: SystemTime::now(),
            // Relaxed: a unique number only.
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            fork_gen: crate::fdops::fork::generation(),
            spinner: Mutex::new(crate::wait::Spinner::new()),
        }
    }

    /// Notes an `EAGAIN` seen by the application.
    pub(crate) fn kick(&self) {
        // Relaxed: read by epoll's edge detection under the set's lock, which orders it
        // well enough: a missed kick only means one more spurious edge is not reported,
        // and the readiness bits themselves are re-read.
        self.kicks.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether a caught panic broke this connection.
    pub(crate) fn is_broken(&self) -> bool {
        // Relaxed: a one-way flag.
        self.broken.load(Ordering::Relaxed)
    }
}

/// The socket entry of `fd`, if `fd` is a tracked TCP socket.
#[inline]
pub(crate) fn sock_entry(fd: i32) -> Option<Arc<Entry>> {
    FDS.get(fd).filter(|e| e.sock().is_some())
}

/// The accelerated connection behind `fd`, with its socket entry.
#[inline]
pub(crate) fn conn_of(fd: i32) -> Option<(Arc<Entry>, Arc<Conn>)> {
    let e = FDS.get(fd)?;
    let s = e.sock()?;
    if !s.proposal.is_empty() {
        // A connection whose acceleration is still being agreed: settle it first.
        crate::accel::settle(&e, fd);
    }
    let c = s.conn.load()?;
    Some((e, c))
}

/// The library's settings, read once from the environment.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    /// How long a blocked call spins before it sleeps (`CORESIDENT_SPIN_US`).
    pub(crate) spin: Duration,
    /// `CORESIDENT_DISABLE=1`: pass everything through (for comparisons).
    pub(crate) disabled: bool,
    /// The registry directory (`CORESIDENT_REGISTRY`), if set.
    pub(crate) registry: Option<std::path::PathBuf>,
}

/// The default spin budget when more than one CPU may run this process: long enough to
/// catch a reply that is a few microseconds away, short enough not to matter when the
/// peer shares the core (the spin yields the CPU as it goes).
pub(crate) const DEFAULT_SPIN: Duration = Duration::from_micros(20);

/// The settings.
pub(crate) fn config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let spin = match std::env::var("CORESIDENT_SPIN_US")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            Some(us) => Duration::from_micros(us.min(1_000_000)),
            None if cpus() <= 1 => Duration::ZERO,
            None => DEFAULT_SPIN,
        };
        Config {
            spin,
            disabled: std::env::var_os("CORESIDENT_DISABLE").is_some_and(|v| v == "1"),
            registry: std::env::var_os("CORESIDENT_REGISTRY")
                .filter(|v| !v.is_empty())
                .map(Into::into),
        }
    })
}

/// How many CPUs this process may run on.
fn cpus() -> usize {
    rustix::thread::sched_getaffinity(None).map_or(1, |set| set.count() as usize)
}

/// Fault injection for the tests (`CORESIDENT_FAULT=name,name`): each name makes one
/// internal step fail as it could in production, to prove the failure is handled
/// (plain TCP or a proper errno, never a crash):
///
/// | name | the step that fails |
/// |---|---|
/// | `offer` | the channel offer at `connect` (the connection stays plain) |
/// | `session` | making the connecting side's stream after a committed offer (reset) |
/// | `adopt` | making the accepting side's stream (reset) |
/// | `read-panic` | a panic inside an accelerated read (`EIO`) |
/// | `control` | starting the control socket (the process is not listed) |
pub(crate) fn fault(name: &str) -> bool {
    static FAULTS: OnceLock<Vec<String>> = OnceLock::new();
    FAULTS
        .get_or_init(|| {
            std::env::var("CORESIDENT_FAULT")
                .unwrap_or_default()
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .iter()
        .any(|f| f == name)
}
