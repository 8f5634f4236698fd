//! The descriptor table's life: `socket`, `accept`, `close`, `close_range`, `dup*`,
//! `fcntl`, `ioctl`, `getsockopt`/`setsockopt`, `shutdown`, fork and exec.
//!
//! Every call that makes a descriptor also clears whatever the table held under that
//! number: if the application closed it by a path the library does not see (a raw
//! `syscall`, `fclose` of an `fdopen`ed socket), the entry is stale, and the kernel just
//! told us the number is new.

use core::ffi::{c_int, c_void};
use core::net::SocketAddr;
use core::sync::atomic::Ordering;
use std::sync::Arc;

use crate::conn::{Reason, Shutdown};
use crate::guard::{fail, Verdict};
use crate::state::{conn_of, lock, Conn, Entry, Sock, FDS};

/// Whether `socket(domain, ty, proto)` made a TCP socket over IP.
pub(crate) fn is_tcp(domain: c_int, ty: c_int, proto: c_int) -> bool {
    matches!(domain, libc::AF_INET | libc::AF_INET6)
        && ty & 0xf == libc::SOCK_STREAM
        && matches!(proto, 0 | libc::IPPROTO_TCP)
}

/// After a successful `socket`: track TCP sockets, clear a stale entry otherwise.
pub(crate) fn on_socket(fd: c_int, domain: c_int, ty: c_int, proto: c_int) {
    if is_tcp(domain, ty, proto) {
        let sock = Sock::new(ty & libc::SOCK_NONBLOCK != 0, true);
        put(fd, Arc::new(Entry::Sock(sock)));
    } else {
        forget(fd);
    }
}

/// After a successful `accept`/`accept4` on `listener` returned `fd`.
pub(crate) fn on_accept(listener: c_int, fd: c_int, flags: c_int) {
    let Some(l) = FDS.get(listener).filter(|e| e.sock().is_some()) else {
        forget(fd);
        return;
    };
    let entry = Arc::new(Entry::Sock(Sock::new(
        flags & libc::SOCK_NONBLOCK != 0,
        false,
    )));
    put(fd, entry.clone());
    crate::accel::on_accept(&l, fd, &entry);
}

/// Puts `entry` under `fd`, closing whatever stale entry was there.
pub(crate) fn put(fd: c_int, entry: Arc<Entry>) {
    if let Some(s) = entry.sock() {
        // Relaxed: a count only the table's writers change, each under its own
        // descriptor's life (see `on_close`).
        s.fds.fetch_add(1, Ordering::Relaxed);
    }
    match FDS.insert(fd, entry) {
        Ok(Some(old)) => on_close(fd, &old),
        Ok(None) => {}
        Err(e) => {
            // Out of the table's range: never accelerated.
            if let Some(s) = e.sock() {
                s.fds.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

/// Clears `fd`'s entry (the number now names something the library does not track).
pub(crate) fn forget(fd: c_int) {
    if let Some(old) = FDS.remove(fd) {
        on_close(fd, &old);
    }
}

/// `fd`, which held `entry`, is closed (or now names something else).
pub(crate) fn on_close(fd: c_int, entry: &Arc<Entry>) {
    match &**entry {
        Entry::Sock(sock) => {
            crate::epoll::forget_fd(entry, fd);
            // Relaxed: see `put`.
            let left = sock.fds.fetch_sub(1, Ordering::Relaxed).saturating_sub(1);
            if left == 0 {
                // The last descriptor of the socket: the connection closes once the calls
                // still running on it (another thread's blocked read) return, as the
                // kernel's socket does.
                if let Some(conn) = sock.conn.swap(None) {
                    if fork::shared_with_child(fd, &conn) {
                        // A child we forked still holds the socket: the connection is
                        // its now. Closing ours must not end the stream (no FIN), so
                        // our copy is kept, idle, until the process exits.
                        tracing::info!(target: "coresident_preload", conn = conn.id, fd,
                            "closed here, a forked child still holds the socket: handed over");
                        crate::state::lock(&fork::HANDED_OVER).push(conn);
                    } else {
                        conn.imp.finish(FINISH_LIMIT);
                        log_closed(&conn, fd, "closed");
                    }
                }
                crate::accel::on_last_close(entry);
            }
        }
        Entry::Epoll(_) => {}
    }
}

/// How long closing an accelerated connection may take to hand its last bytes and the
/// end of the stream over (only bytes queued for TCP after a fallback can take time).
pub(crate) const FINISH_LIMIT: core::time::Duration = core::time::Duration::from_secs(2);

/// At `exit`: every accelerated connection hands its last bytes and the end of its
/// stream over, as the kernel does for a process's TCP sockets (registered with
/// `atexit` by the constructor).
pub(crate) extern "C" fn at_exit() {
    crate::guard::quietly(|| {
        for (fd, _, conn) in accelerated() {
            // A connection a child we forked still holds is the child's to finish.
            if !fork::shared_with_child(fd, &conn) {
                conn.imp.finish(FINISH_LIMIT);
                log_closed(&conn, fd, "closed at exit");
            }
        }
    });
}

/// The end of a connection in the log, with its bytes by path: what `coresident status`
/// showed while it lived, kept once the program is gone (a program that exits without
/// closing its socket ends it in [`at_exit`]).
///
/// A connection whose `stats` panics still closes: the panic is counted, as at every
/// barrier, and the event says the counts are unavailable.
fn log_closed(conn: &Conn, fd: c_int, how: &'static str) {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| conn.imp.stats())) {
        Ok(st) => tracing::info!(target: "coresident_preload", conn = conn.id, fd,
            ring_tx = st.ring_tx, ring_rx = st.ring_rx, tcp_tx = st.tcp_tx,
            tcp_rx = st.tcp_rx, switches = st.switches, "{how}"),
        Err(_) => {
            crate::guard::caught_panic();
            tracing::info!(target: "coresident_preload", conn = conn.id, fd,
                "{how} (byte counts unavailable)");
        }
    }
}

/// `close(fd)` (called before the kernel's close: the number is not reusable yet).
pub(crate) fn close(fd: c_int) {
    forget(fd);
}

/// `close_range(first, last, flags)` (before the kernel's).
pub(crate) fn close_range(first: u32, last: u32, flags: c_int) {
    if flags & (libc::CLOSE_RANGE_CLOEXEC as c_int) != 0 {
        return;
    }
    let mut closing = Vec::new();
    FDS.for_each_in(first, last, |fd, _| closing.push(fd));
    for fd in closing {
        forget(fd);
    }
}

/// After a successful `dup`-like call made `new` a copy of `old`.
pub(crate) fn on_dup(old: c_int, new: c_int) {
    if old == new {
        return;
    }
    match FDS.get(old) {
        Some(e) => put(new, e),
        _ => forget(new),
    }
}

/// `fcntl(fd, F_SETFL, flags)` succeeded: track `O_NONBLOCK`.
pub(crate) fn on_setfl(fd: c_int, flags: c_int) {
    if let Some(e) = FDS.get(fd) {
        if let Some(s) = e.sock() {
            // Relaxed: see `Sock::is_nonblocking`.
            s.nonblocking
                .store(flags & libc::O_NONBLOCK != 0, Ordering::Relaxed);
        }
    }
}

/// `ioctl(fd, FIONBIO, &on)` succeeded.
pub(crate) fn on_fionbio(fd: c_int, on: bool) {
    if let Some(e) = FDS.get(fd) {
        if let Some(s) = e.sock() {
            // Relaxed: see `Sock::is_nonblocking`.
            s.nonblocking.store(on, Ordering::Relaxed);
        }
    }
}

/// `ioctl(fd, FIONREAD, &n)` on an accelerated socket.
///
/// # Safety
///
/// `arg` is valid for writing a `c_int` (the C contract of `FIONREAD`).
pub(crate) unsafe fn fionread(fd: c_int, arg: *mut c_void) -> Verdict<c_int> {
    let Some((_, conn)) = conn_of(fd) else {
        return Verdict::Pass;
    };
    if arg.is_null() {
        return Verdict::Done(fail(libc::EFAULT));
    }
    let n = c_int::try_from(conn.imp.rx_pending()).unwrap_or(c_int::MAX);
    // SAFETY: `arg` is non-null and valid for a `c_int` (caller).
    unsafe { arg.cast::<c_int>().write_unaligned(n) };
    Verdict::Done(0)
}

/// `getsockopt` on an accelerated socket: `SO_ERROR` from the connection;
/// `TCP_ZEROCOPY_RECEIVE` hands the socket back to the kernel; the rest passes.
///
/// # Safety
///
/// `val` and `len` are valid as `getsockopt`'s contract says.
pub(crate) unsafe fn getsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *mut c_void,
    len: *mut libc::socklen_t,
) -> Verdict<c_int> {
    let Some((entry, conn)) = conn_of(fd) else {
        return Verdict::Pass;
    };
    if level == libc::SOL_SOCKET && name == libc::SO_ERROR {
        if val.is_null() || len.is_null() {
            return Verdict::Done(fail(libc::EFAULT));
        }
        // SAFETY: `len` is valid (caller).
        let room = unsafe { *len };
        if (room as usize) < core::mem::size_of::<c_int>() {
            return Verdict::Done(fail(libc::EINVAL));
        }
        let e = conn.imp.take_error().map_or(0, |e| e.raw_os_error());
        // SAFETY: `val` holds at least a `c_int` (checked) and `len` is valid.
        unsafe {
            val.cast::<c_int>().write_unaligned(e);
            *len = core::mem::size_of::<c_int>() as libc::socklen_t;
        }
        // The kernel's own pending error (from the idle TCP socket) is taken too.
        return Verdict::Pass.or_done_if(e != 0, 0);
    }
    /// `TCP_ZEROCOPY_RECEIVE` (linux/tcp.h): maps TCP's receive queue.
    const TCP_ZEROCOPY_RECEIVE: c_int = 35;
    if level == libc::IPPROTO_TCP && name == TCP_ZEROCOPY_RECEIVE {
        return match crate::io::decline(&entry, &conn, "TCP_ZEROCOPY_RECEIVE") {
            Ok(()) => Verdict::Pass,
            Err(()) => Verdict::Done(fail(libc::EINVAL)),
        };
    }
    Verdict::Pass
}

impl<T> Verdict<T> {
    /// `Done(v)` if `cond`, else `self`.
    fn or_done_if(self, cond: bool, v: T) -> Self {
        if cond {
            Self::Done(v)
        } else {
            self
        }
    }
}

/// `setsockopt` succeeded: track the timeouts.
///
/// # Safety
///
/// `val` is valid for `len` bytes (the C contract).
pub(crate) unsafe fn on_setsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *const c_void,
    len: libc::socklen_t,
) {
    /// `SO_RCVTIMEO_NEW`, `SO_SNDTIMEO_NEW` (asm-generic/socket.h), same `timeval` layout
    /// on 64-bit targets.
    const SO_RCVTIMEO_NEW: c_int = 66;
    const SO_SNDTIMEO_NEW: c_int = 67;
    if level != libc::SOL_SOCKET || val.is_null() {
        return;
    }
    let Some(e) = FDS.get(fd) else { return };
    let Some(sock) = e.sock() else { return };
    let slot = match name {
        libc::SO_RCVTIMEO | SO_RCVTIMEO_NEW => &sock.rcvtimeo_us,
        libc::SO_SNDTIMEO | SO_SNDTIMEO_NEW => &sock.sndtimeo_us,
        _ => return,
    };
    if (len as usize) < core::mem::size_of::<libc::timeval>() {
        return;
    }
    // SAFETY: `val` holds a `timeval` (length checked, caller's contract).
    let tv = unsafe { val.cast::<libc::timeval>().read_unaligned() };
    let us = u64::try_from(tv.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000)
        .saturating_add(u64::try_from(tv.tv_usec).unwrap_or(0));
    // Relaxed: see `Sock::is_nonblocking`.
    slot.store(us, Ordering::Relaxed);
}

/// `shutdown(fd, how)` on an accelerated socket.
pub(crate) fn shutdown(fd: c_int, how: c_int) -> Verdict<c_int> {
    let Some((_, conn)) = conn_of(fd) else {
        return Verdict::Pass;
    };
    let how = match how {
        libc::SHUT_RD => Shutdown::Read,
        libc::SHUT_WR => Shutdown::Write,
        libc::SHUT_RDWR => Shutdown::Both,
        _ => return Verdict::Done(fail(libc::EINVAL)),
    };
    match conn.imp.shutdown(how) {
        Ok(()) => Verdict::Done(0),
        Err(e) => Verdict::Done(fail(e.raw_os_error())),
    }
}

/// Makes the socket of `fd` accelerated by `conn` (its epoll registrations move into the
/// emulation). Returns `false` if `fd` is not a tracked socket.
pub(crate) fn install(fd: c_int, conn: Arc<Conn>) -> bool {
    let Some(entry) = FDS.get(fd) else {
        return false;
    };
    let Some(sock) = entry.sock() else {
        return false;
    };
    tracing::info!(target: "coresident_preload", conn = conn.id, fd,
        local = ?conn.local, peer = ?conn.peer, "accelerated");
    if let Some(old) = sock.conn.swap(Some(conn)) {
        tracing::warn!(target: "coresident_preload", conn = old.id, "replaced a connection");
    }
    crate::epoll::take_from_kernel(&entry);
    crate::control::ensure_started();
    true
}

/// Hands the socket of `entry` back to the kernel if `conn` can be released (on TCP,
/// nothing buffered): its emulated epoll registrations go back into the kernel's
/// interest lists, and every later call passes through. Returns whether it was.
pub(crate) fn release(entry: &Arc<Entry>, conn: &Arc<Conn>) -> bool {
    let Some(sock) = entry.sock() else {
        return false;
    };
    if !conn.imp.releasable() {
        return false;
    }
    let _rx = lock(&conn.rx);
    let _tx = lock(&conn.tx);
    if !conn.imp.releasable() || !sock.conn.replace_if(conn, None) {
        return false;
    }
    crate::epoll::return_to_kernel(entry);
    true
}

/// Every accelerated connection with one of its descriptors (each connection once).
pub(crate) fn accelerated() -> Vec<(c_int, Arc<Entry>, Arc<Conn>)> {
    let mut out: Vec<(c_int, Arc<Entry>, Arc<Conn>)> = Vec::new();
    FDS.for_each_in(0, u32::MAX, |fd, e| {
        if let Some(c) = e.sock().and_then(|s| s.conn.load()) {
            if !out.iter().any(|(_, _, o)| o.id == c.id) {
                out.push((fd, e, c));
            }
        }
    });
    out
}

/// Falls every accelerated connection back to TCP (and hands it back to the kernel if
/// possible): `coresident withdraw`, fork, exec. Returns how many were asked.
pub(crate) fn withdraw_all(why: Reason, only: impl Fn(c_int) -> bool) -> usize {
    let mut n = 0;
    for (fd, entry, conn) in accelerated() {
        if !only(fd) {
            continue;
        }
        n += 1;
        match conn.imp.downgrade(why) {
            Ok(()) => {
                tracing::info!(target: "coresident_preload", conn = conn.id, fd, reason = %why,
                    "fell back to TCP");
                let _ = release(&entry, &conn);
            }
            Err(e) => {
                tracing::warn!(target: "coresident_preload", conn = conn.id, fd, reason = %why,
                    error = %e, "fallback to TCP failed");
            }
        }
    }
    n
}

/// The fork handlers: before the fork every connection falls back to TCP and is handed
/// back to the kernel, so parent and child then share a plain TCP socket. A connection
/// that could not be handed back is marked broken in the child (its calls fail with
/// `EIO`): the child must never touch the rings the parent goes on using.
pub(crate) mod fork {
    use super::*;
    use core::sync::atomic::AtomicU64;
    use std::sync::Mutex;

    /// Forks so far (the prepare handler counts them); a connection made before the
    /// last fork may be held by a child.
    pub(crate) static FORKS: AtomicU64 = AtomicU64::new(0);
    /// Children forked through `fork` (pids), for [`shared_with_child`].
    pub(crate) static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());
    /// Connections closed here while a child still held their socket.
    pub(crate) static HANDED_OVER: Mutex<Vec<Arc<Conn>>> = Mutex::new(Vec::new());

    /// The number of forks so far.
    pub(crate) fn generation() -> u64 {
        // Relaxed: compared with a connection's own snapshot, taken in the same thread
        // order as the fork that bumps it.
        FORKS.load(Ordering::Relaxed)
    }

    /// A child was forked (the `fork` hook, in the parent).
    pub(crate) fn forked(pid: u32) {
        let mut c = crate::state::lock(&CHILDREN);
        c.retain(|&p| std::path::Path::new(&format!("/proc/{p}")).exists());
        c.push(pid);
    }

    /// Whether a live child we forked holds the socket `fd` (the same inode among its
    /// descriptors), for a connection made before a fork.
    pub(crate) fn shared_with_child(fd: c_int, conn: &Conn) -> bool {
        if conn.fork_gen == generation() {
            return false;
        }
        // SAFETY: `fd` is still open (the kernel's close comes after this hook).
        let b = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let Ok(st) = rustix::fs::fstat(b) else {
            return false;
        };
        let want = format!("socket:[{}]", st.st_ino);
        let children = crate::state::lock(&CHILDREN).clone();
        children.iter().any(|pid| {
            std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|dir| {
                dir.flatten().any(|e| {
                    std::fs::read_link(e.path()).is_ok_and(|l| l.as_os_str() == want.as_str())
                })
            })
        })
    }

    /// `pthread_atfork` prepare handler.
    pub(crate) extern "C" fn prepare() {
        crate::guard::quietly(|| {
            // Relaxed: see `generation`.
            FORKS.fetch_add(1, Ordering::Relaxed);
            let _ = withdraw_all(Reason::Fork, |_| true);
        });
    }

    /// `pthread_atfork` child handler: lock-free only (another thread of the parent may
    /// have held any lock at the fork).
    pub(crate) extern "C" fn child() {
        crate::guard::quietly(|| {
            FDS.for_each_in(0, u32::MAX, |_, e| {
                let Some(s) = e.sock() else { return };
                if let Some(c) = s.conn.load() {
                    if !c.imp.survives_fork() {
                        // Relaxed: a one-way flag, this process has one thread now.
                        c.broken.store(true, Ordering::Relaxed);
                    }
                }
                // A listening socket's registration is the parent's (its background
                // acceptor is there): the child never drops it, which would unregister
                // the parent's address and join a thread that is not in this process.
                if let Ok(mut l) = s.listener.try_lock() {
                    if let Some(l) = l.take() {
                        core::mem::forget(l);
                    }
                }
            });
            crate::accel::after_fork_child();
            crate::control::after_fork_child();
            // The parent's children and hand-overs are not ours.
            if let Ok(mut c) = CHILDREN.try_lock() {
                c.clear();
            }
        });
    }
}

/// Descriptors an exec would have inherited, swapped out by [`before_exec`]: the
/// descriptor number and a saved duplicate of the socket, to put back if the exec fails.
pub(crate) type Swapped = Vec<(c_int, std::os::fd::OwnedFd)>;

/// Before an exec. Connections whose descriptor survives the exec (no `FD_CLOEXEC`)
/// fall back to TCP and are handed back to the kernel if they can be, so the new image
/// reads a plain TCP socket. One that cannot (a `coresident_net` session: its TCP carries
/// offset-labelled segments) must not reach the new image, which would read those
/// segments as data: its descriptor number is given a socket whose peer is closed
/// instead (reads give the end of the stream, writes `EPIPE`), and the connection is
/// reset when the last process holding it lets go. Returns what to put back if the
/// exec fails.
pub(crate) fn before_exec() -> Swapped {
    let inherits = |fd: c_int| {
        rustix::io::fcntl_getfd(
            // SAFETY: `fd` is open (it is in the table); borrowed for this call only.
            unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
        )
        .is_ok_and(|f| !f.contains(rustix::io::FdFlags::CLOEXEC))
    };
    let _ = withdraw_all(Reason::Exec, inherits);
    let mut swapped = Vec::new();
    FDS.for_each_in(0, u32::MAX, |fd, e| {
        let Some(c) = e.sock().and_then(|s| s.conn.load()) else {
            return;
        };
        if !inherits(fd) {
            return;
        }
        // SAFETY: `fd` is open (it is in the table); borrowed for these calls only.
        let b = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let Ok(saved) = rustix::io::fcntl_dupfd_cloexec(b, 3) else {
            return;
        };
        let Ok((dead, gone)) = rustix::net::socketpair(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::STREAM,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        ) else {
            return;
        };
        drop(gone);
        // dup2 onto the application's number (the kernel's, not the hook: we are inside).
        // SAFETY: plain dup2 of descriptors this process owns.
        if unsafe { crate::real::dup2(std::os::fd::AsRawFd::as_raw_fd(&dead), fd) } < 0 {
            return;
        }
        tracing::warn!(target: "coresident_preload", conn = c.id, fd,
            "exec: an accelerated socket cannot cross into a new image; it gets a closed socket there");
        swapped.push((fd, saved));
    });
    swapped
}

/// After an exec that failed: the swapped sockets are put back.
pub(crate) fn exec_failed(swapped: Swapped) {
    for (fd, saved) in swapped {
        // SAFETY: plain dup2 of descriptors this process owns.
        unsafe { crate::real::dup2(std::os::fd::AsRawFd::as_raw_fd(&saved), fd) };
    }
}

/// The 4-tuple of a connected socket (our address, the peer's).
pub(crate) fn tuple(fd: c_int) -> (Option<SocketAddr>, Option<SocketAddr>) {
    // SAFETY: `fd` is open for the duration of this call (the caller holds it).
    let b = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let local = rustix::net::getsockname(b)
        .ok()
        .and_then(|a| SocketAddr::try_from(a).ok());
    let peer = rustix::net::getpeername(b)
        .ok()
        .flatten()
        .and_then(|a| SocketAddr::try_from(a).ok());
    (local, peer)
}
