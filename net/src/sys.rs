//! The operating-system layer: the stream's epoll set, pidfds, the fork generation, peer
//! credentials.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;
use std::time::Duration;

use rustix::event::epoll;

/// What an epoll registration stands for (the event's user data).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub(crate) enum Source {
    /// The TCP socket.
    Tcp = 1,
    /// The channel's doorbell socket (the peer published or released; or, readable for
    /// ever, it closed the channel or died).
    Doorbell = 2,
    /// The stream's own wake-up eventfd (a ring passed on to another thread of ours).
    Wake = 3,
    /// A pidfd of the peer process (it exited, whoever else holds its sockets).
    PeerProcess = 4,
    /// The listener's mailbox (a new channel for this session, withdraw, readmit).
    Mailbox = 5,
}

impl Source {
    fn from_u64(v: u64) -> Option<Self> {
        Some(match v {
            1 => Self::Tcp,
            2 => Self::Doorbell,
            3 => Self::Wake,
            4 => Self::PeerProcess,
            5 => Self::Mailbox,
            _ => return None,
        })
    }
}

/// One readiness event.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ready {
    pub source: Source,
    pub readable: bool,
    pub hangup: bool,
}

/// An epoll instance: the stream's one pollable descriptor.
#[derive(Debug)]
pub(crate) struct Poller {
    fd: std::sync::Arc<OwnedFd>,
}

/// Level-triggered interest flags.
pub(crate) fn interest(read: bool, write: bool) -> epoll::EventFlags {
    let mut f = epoll::EventFlags::empty();
    if read {
        f |= epoll::EventFlags::IN;
    }
    if write {
        f |= epoll::EventFlags::OUT;
    }
    f
}

impl Poller {
    pub(crate) fn new() -> io::Result<Self> {
        Ok(Self {
            fd: std::sync::Arc::new(epoll::create(epoll::CreateFlags::CLOEXEC)?),
        })
    }

    pub(crate) fn add(
        &self,
        fd: BorrowedFd<'_>,
        source: Source,
        flags: epoll::EventFlags,
    ) -> io::Result<()> {
        epoll::add(
            &*self.fd,
            fd,
            epoll::EventData::new_u64(source as u64),
            flags,
        )?;
        Ok(())
    }

    /// The epoll descriptor, for a waiter that must not hold the stream's lock.
    pub(crate) fn shared_fd(&self) -> std::sync::Arc<OwnedFd> {
        std::sync::Arc::clone(&self.fd)
    }

    pub(crate) fn modify(
        &self,
        fd: BorrowedFd<'_>,
        source: Source,
        flags: epoll::EventFlags,
    ) -> io::Result<()> {
        epoll::modify(
            &*self.fd,
            fd,
            epoll::EventData::new_u64(source as u64),
            flags,
        )?;
        Ok(())
    }

    pub(crate) fn delete(&self, fd: BorrowedFd<'_>) {
        // Best effort: the descriptor may already be closed (which removes it).
        let _ = epoll::delete(&*self.fd, fd);
    }

    /// Waits up to `timeout` (zero: just look) and returns the events.
    pub(crate) fn wait(&self, timeout: Duration, out: &mut Vec<Ready>) -> io::Result<()> {
        out.clear();
        let ts = rustix::event::Timespec {
            tv_sec: i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        let mut events: Vec<epoll::Event> = Vec::with_capacity(8);
        match epoll::wait(
            &*self.fd,
            rustix::buffer::spare_capacity(&mut events),
            Some(&ts),
        ) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        for e in &events {
            let flags = e.flags;
            let Some(source) = Source::from_u64(e.data.u64()) else {
                continue;
            };
            out.push(Ready {
                source,
                readable: flags.contains(epoll::EventFlags::IN),
                hangup: flags.intersects(
                    epoll::EventFlags::HUP | epoll::EventFlags::ERR | epoll::EventFlags::RDHUP,
                ),
            });
        }
        Ok(())
    }
}

impl AsFd for Poller {
    fn as_fd(&self) -> BorrowedFd<'_> {
        (*self.fd).as_fd()
    }
}

/// Waits until `fd` (an epoll instance) is readable or `timeout` passes.
pub(crate) fn wait_readable(fd: BorrowedFd<'_>, timeout: Duration) -> io::Result<()> {
    let ts = rustix::event::Timespec {
        tv_sec: i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(timeout.subsec_nanos()),
    };
    let mut fds = [rustix::event::PollFd::new(
        &fd,
        rustix::event::PollFlags::IN,
    )];
    match rustix::event::poll(&mut fds, Some(&ts)) {
        Ok(_) | Err(rustix::io::Errno::INTR) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// 16 random bytes (a session id).
pub(crate) fn random_id() -> [u8; 16] {
    let mut b = [0u8; 16];
    let mut have = 0;
    while have < b.len() {
        match rustix::rand::getrandom(&mut b[have..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => have += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => {
                // No getrandom: time and pid still make ids unique on one host.
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos());
                b.copy_from_slice(&(t ^ (u128::from(std::process::id()) << 64)).to_le_bytes());
                break;
            }
        }
    }
    b
}

/// A pidfd for `pid` (readable once the process exits), or `None` where pidfds are
/// unavailable or the pid is unknown (0: the peer is in a pid namespace we cannot see).
pub(crate) fn pidfd(pid: i32) -> Option<OwnedFd> {
    let pid = rustix::process::Pid::from_raw(pid)?;
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
}

/// Bumped in every forked child (by a `pthread_atfork` handler): a stream that finds a
/// generation other than its own is a copy in a child process.
static FORK_GENERATION: AtomicU64 = AtomicU64::new(0);
static ATFORK: Once = Once::new();

extern "C" fn in_child() {
    // Relaxed: the child has one thread right after fork; the store is seen by it.
    FORK_GENERATION.fetch_add(1, Ordering::Relaxed);
}

/// The current fork generation (installing the handler on first use).
pub(crate) fn fork_generation() -> u64 {
    ATFORK.call_once(|| {
        // SAFETY:
        // - `in_child` is an `extern "C" fn()` that lives for the whole program and is
        //   async-signal-safe (one atomic add), as a child handler must be;
        // - null prepare and parent handlers are allowed.
        let rc = unsafe { libc::pthread_atfork(None, None, Some(in_child)) };
        if rc != 0 {
            tracing::warn!(
                rc,
                "pthread_atfork failed: streams cannot notice a fork (do not share one across fork)"
            );
        }
    });
    // Relaxed: see `in_child`.
    FORK_GENERATION.load(Ordering::Relaxed)
}

/// `(pid, uid)` of the peer of a Unix socket (`SO_PEERCRED`); pid 0 when the peer
/// lives in a pid namespace we cannot see.
pub(crate) fn peer_cred(sock: BorrowedFd<'_>) -> io::Result<(i32, u32)> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = core::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY:
    // - `sock` is a valid open descriptor for the duration of the call (borrowed);
    // - `cred` is a writable `ucred` and `len` holds its exact size, as SO_PEERCRED
    //   requires; the kernel writes at most `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((cred.pid, cred.uid))
}

/// Our effective uid.
pub(crate) fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}
