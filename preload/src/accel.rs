//! Deciding which connections are accelerated, and agreeing on it with the peer before
//! either side moves a byte.
//!
//! # The agreement
//!
//! A TCP connection is always made as usual. The connecting side decides to propose
//! acceleration *before* its `connect` (the destination is a listener that runs the
//! library), binds its socket so the 4-tuple is known, and commits to the proposal:
//!
//! ```text
//!   client                                   server
//!   bind (if unbound): the 4-tuple is known
//!   propose(4-tuple) and commit
//!   connect ───────────── TCP handshake ───► accept: finds the proposal by 4-tuple:
//!                                            accelerated; none: plain TCP
//!   the connection exists: accelerated
//! ```
//!
//! The proposal exists before the connection can be accepted, so the server's verdict
//! needs no round trip and no wait, and no byte moves before both sides know the path.
//! This is the order `coresident_net` uses across processes (its connecting side
//! handshakes the channel and commits before its TCP connect).
//!
//! # Backends
//!
//! * In-process (`CORESIDENT_INPROC=1`): a connection between two sockets of one
//!   process is carried by [`crate::mem::MemConn`]. This exercises every hook of the
//!   library end to end in a real program, and is what the C tests run in one process.
//!   (A proposal whose connection is accepted by another process, a forked child
//!   sharing the listener, is never taken: that connection would stall. A test aid.)
//! * Across processes: the host registry and `coresident_net::Stream` (see
//!   `docs/preload.md`).

use core::net::{IpAddr, SocketAddr};
use core::time::Duration;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use crate::conn::Accelerated;
use crate::state::{lock, Conn, Entry};

/// A proposal to accelerate one connection (see the module docs).
#[derive(Debug)]
pub(crate) struct Proposal {
    /// The client's side of the connection, installed on `TAKEN`.
    client: Mutex<Option<Box<dyn Accelerated>>>,
    /// The server's side, taken by `accept`.
    server: Mutex<Option<Box<dyn Accelerated>>>,
    /// The client's address (the key the server finds it by).
    local: SocketAddr,
    /// The server's address.
    peer: SocketAddr,
    /// When the proposal was made.
    made: Instant,
}

/// Whether in-process acceleration is on.
fn inproc() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("CORESIDENT_INPROC").is_some_and(|v| v == "1"))
}

/// Whether new connections may be accelerated at all.
fn enabled() -> bool {
    !crate::state::config().disabled && !crate::guard::poisoned()
}

/// Addresses this process listens on (in-process backend).
static LISTENING: Mutex<Vec<SocketAddr>> = Mutex::new(Vec::new());
/// Proposals waiting for an `accept`, by the client's address (in-process backend).
static PROPOSALS: Mutex<Option<HashMap<SocketAddr, Arc<Proposal>>>> = Mutex::new(None);

/// Whether `to` is one of our listening addresses.
fn listens_on(to: SocketAddr) -> bool {
    lock(&LISTENING)
        .iter()
        .any(|l| l.port() == to.port() && (l.ip() == to.ip() || l.ip().is_unspecified()))
}

/// After a successful `listen(fd)`.
pub(crate) fn on_listen(fd: i32) {
    if !enabled() || !inproc() {
        return;
    }
    if let (Some(addr), _) = crate::fdops::tuple(fd) {
        let mut l = lock(&LISTENING);
        if !l.contains(&addr) {
            l.push(addr);
        }
    }
}

/// Before `connect(fd, to)` on a tracked TCP socket: propose acceleration if the
/// destination may take it.
pub(crate) fn before_connect(entry: &Arc<Entry>, fd: i32, to: SocketAddr) {
    let Some(sock) = entry.sock() else { return };
    if !enabled() || !sock.outgoing || !sock.conn.is_empty() || !sock.proposal.is_empty() {
        return;
    }
    if inproc() && listens_on(to) {
        let Some(local) = bound_address(fd, to) else {
            return;
        };
        let Ok((a, b)) = crate::mem::MemConn::pair(1 << 16) else {
            return;
        };
        let p = Arc::new(Proposal {
            client: Mutex::new(Some(Box::new(a))),
            server: Mutex::new(Some(Box::new(b))),
            local,
            peer: to,
            made: Instant::now(),
        });
        lock(&PROPOSALS)
            .get_or_insert_with(HashMap::new)
            .insert(local, p.clone());
        sock.proposal.swap(Some(p));
        tracing::debug!(target: "coresident_preload", fd, %local, %to, "proposed (in-process)");
    }
}

/// Our address on `fd`, binding it to an ephemeral port first if it has none (so the
/// 4-tuple is known before the connection exists).
fn bound_address(fd: i32, to: SocketAddr) -> Option<SocketAddr> {
    // SAFETY: `fd` is the application's open socket for the duration of this call.
    let b = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    if let (Some(local), _) = crate::fdops::tuple(fd) {
        if local.port() != 0 {
            return Some(fixup_unspecified(local, to));
        }
    }
    let any: SocketAddr = match to.ip() {
        IpAddr::V4(_) => (IpAddr::from([0u8; 4]), 0).into(),
        IpAddr::V6(_) => (IpAddr::from([0u16; 8]), 0).into(),
    };
    rustix::net::bind(b, &any).ok()?;
    let (local, _) = crate::fdops::tuple(fd);
    local.map(|l| fixup_unspecified(l, to))
}

/// A socket bound to the unspecified address gets the address its route uses; for a
/// destination on this host that is the destination's own address (loopback or local).
fn fixup_unspecified(local: SocketAddr, to: SocketAddr) -> SocketAddr {
    if local.ip().is_unspecified() {
        SocketAddr::new(to.ip(), local.port())
    } else {
        local
    }
}

/// After `connect` returned `ret` (`errno` in `err`).
pub(crate) fn after_connect(entry: &Arc<Entry>, fd: i32, ret: i32, err: i32) {
    let Some(sock) = entry.sock() else { return };
    if sock.proposal.is_empty() {
        return;
    }
    if ret == 0 {
        settle(entry, fd);
    } else if err != libc::EINPROGRESS && err != libc::EINTR && err != libc::EALREADY {
        cancel(entry);
    }
}

/// Withdraws the proposal of `entry` (its connect failed, or it was closed).
fn cancel(entry: &Arc<Entry>) {
    let Some(sock) = entry.sock() else { return };
    if let Some(p) = sock.proposal.swap(None) {
        if let Some(m) = lock(&PROPOSALS).as_mut() {
            m.remove(&p.local);
        }
    }
}

/// Accelerates the connecting side of `entry` once its connection exists (a
/// non-blocking connect in progress waits for the next call on the socket).
pub(crate) fn settle(entry: &Arc<Entry>, fd: i32) {
    let Some(sock) = entry.sock() else { return };
    let Some(p) = sock.proposal.load() else {
        return;
    };
    let (_, peer) = crate::fdops::tuple(fd);
    if peer.is_none() {
        // Not connected yet; a connect that failed for good is forgotten with the
        // socket or the next connect.
        if p.made.elapsed() > Duration::from_secs(120) {
            cancel(entry);
        }
        return;
    }
    if !sock.proposal.replace_if(&p, None) {
        return;
    }
    let imp = lock(&p.client).take();
    if let Some(imp) = imp {
        let conn = Arc::new(Conn::new(
            imp,
            Some(p.local),
            Some(p.peer),
            Some(std::process::id()),
        ));
        crate::fdops::install(fd, conn);
    }
}

/// After `accept` on `listener` returned `fd` (a tracked socket in `entry`).
pub(crate) fn on_accept(_listener: i32, fd: i32, _entry: &Arc<Entry>) {
    if !inproc() {
        return;
    }
    let (local, peer) = crate::fdops::tuple(fd);
    let Some(peer) = peer else { return };
    let Some(p) = lock(&PROPOSALS).as_mut().and_then(|m| m.remove(&peer)) else {
        return;
    };
    let imp = lock(&p.server).take();
    if let Some(imp) = imp {
        let conn = Arc::new(Conn::new(imp, local, Some(peer), Some(std::process::id())));
        crate::fdops::install(fd, conn);
    }
}

/// The last descriptor of a socket was closed.
pub(crate) fn on_last_close(entry: &Arc<Entry>) {
    cancel(entry);
}

/// In a forked child: the parent's proposals and listeners are not ours.
pub(crate) fn after_fork_child() {
    // Lock-free only here: `try_lock`, and leave the state if another thread held it.
    if let Ok(mut p) = PROPOSALS.try_lock() {
        *p = None;
    }
}
