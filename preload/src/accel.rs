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
//! * Across processes: `coresident_net`, with the discovery backend that
//!   `CORESIDENT_DISCOVERY` chose ([`crate::backend`]: the host registry by default,
//!   or the Xen backend between dom0 and guests). `listen`
//!   registers the bound address with a `coresident_net::Listener` whose background
//!   acceptor serves the channel handshakes; `connect` to a registered destination
//!   binds the socket to the route's source address, offers and commits a channel
//!   (`Builder::offer_for`) before the application's own `connect`; the connecting
//!   side's stream is `Stream::from_session` over a duplicate of the application's
//!   descriptor, the accepting side's `Listener::adopt`. See `docs/preload.md`.
//!
//! A destination the backend cannot serve costs its local look
//! (`Discovery::may_serve`: a stat per candidate name of the host registry,
//! `tcp/<ip>_<port>` then the wildcards; a look at the Xen residency view): no socket is
//! bound, nothing is sent, the connection is plain TCP exactly as without the library.

use core::net::{IpAddr, SocketAddr};
use core::time::Duration;
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use coresident_net::{
    Builder, Discovery, HandshakeSink, OfferParams, Prepared, Refusal, Registration, RingLink,
};

use crate::conn::Accelerated;
use crate::state::{lock, Conn, Entry};

/// What a proposal carries.
#[derive(Debug)]
enum Carrier {
    /// In-process: both sides of the connection.
    Mem {
        client: Mutex<Option<Box<dyn Accelerated>>>,
        server: Mutex<Option<Box<dyn Accelerated>>>,
    },
    /// Across processes: the channel handshaken and committed for this 4-tuple.
    Net(Mutex<Option<Prepared>>),
}

/// A proposal to accelerate one connection (see the module docs).
#[derive(Debug)]
pub(crate) struct Proposal {
    carrier: Carrier,
    /// The client's address (the key the in-process server finds it by).
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

/// The data area of each ring of a connection: 1 MiB each way (shared memory is
/// touched as used), so that a bulk sender's usual 128 KiB writes do not wait for the
/// reader after every other one.
const RING_SIZE: u32 = 1 << 20;

/// The streams' settings: this process's discovery backend ([`crate::backend`]:
/// `CORESIDENT_DISCOVERY`, the host registry by default); the spin budget of the
/// library (`CORESIDENT_SPIN_US`), which the stream uses in its own blocking receive
/// (`NetConn::recv_blocking`); [`RING_SIZE`]; the handshake deadline
/// (`CORESIDENT_HANDSHAKE_MS`).
fn builder() -> &'static Builder {
    static B: OnceLock<Builder> = OnceLock::new();
    B.get_or_init(|| {
        Builder::new()
            .discovery_arc(Arc::clone(crate::backend::discovery()))
            .spin(crate::state::config().spin)
            .ring_size(RING_SIZE)
            .handshake_timeout(crate::backend::timeout())
    })
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

/// This process's discovery backend, registering the application's address (not the
/// one the `Listener` bound for itself: the application's socket is already bound
/// there). Everything else is the backend's own, residency news included.
#[derive(Debug)]
struct AtAddress {
    inner: Arc<dyn Discovery>,
    addr: SocketAddr,
}

impl Discovery for AtAddress {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn register(
        &self,
        _own: SocketAddr,
        sink: Arc<dyn HandshakeSink>,
    ) -> std::io::Result<Option<Box<dyn Registration>>> {
        self.inner.register(self.addr, sink)
    }

    fn offer(
        &self,
        hello: &coresident_net::wire::Hello,
        params: &OfferParams,
    ) -> Result<Box<dyn RingLink>, Refusal> {
        self.inner.offer(hello, params)
    }

    fn subscribe(&self, peer: IpAddr, sub: coresident_net::Subscriber) {
        self.inner.subscribe(peer, sub);
    }

    fn may_serve(&self, dst: SocketAddr) -> bool {
        self.inner.may_serve(dst)
    }
}

/// After a successful `listen(fd)` on a tracked TCP socket.
pub(crate) fn on_listen(entry: &Arc<Entry>, fd: i32) {
    if !enabled() {
        return;
    }
    let Some(sock) = entry.sock() else { return };
    let (Some(addr), _) = crate::fdops::tuple(fd) else {
        return;
    };
    if inproc() {
        let mut l = lock(&LISTENING);
        if !l.contains(&addr) {
            l.push(addr);
        }
        return;
    }
    // A `Listener` of our own on a loopback port nobody knows; its registration and
    // background acceptor serve the application's address.
    let own: SocketAddr = if addr.is_ipv4() {
        (IpAddr::from([127, 0, 0, 1]), 0).into()
    } else {
        (IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]), 0).into()
    };
    let b = Builder::new()
        .discovery(AtAddress {
            inner: Arc::clone(crate::backend::discovery()),
            addr,
        })
        .spin(crate::state::config().spin)
        .handshake_timeout(crate::backend::timeout());
    match b.bind(own) {
        Ok(l) => {
            tracing::info!(target: "coresident_preload", fd, %addr, "listening socket registered");
            *lock(&sock.listener) = Some(Arc::new(l));
        }
        Err(e) => {
            tracing::warn!(target: "coresident_preload", fd, %addr, error = %e,
                "registration failed: this listener accepts plain TCP only");
        }
    }
}

/// The source address a connection to `dst` would leave from (a UDP `connect` sends
/// nothing).
fn route_source(dst: SocketAddr) -> Option<IpAddr> {
    let family = if dst.is_ipv4() {
        rustix::net::AddressFamily::INET
    } else {
        rustix::net::AddressFamily::INET6
    };
    let u = rustix::net::socket_with(
        family,
        rustix::net::SocketType::DGRAM,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .ok()?;
    rustix::net::connect(&u, &dst).ok()?;
    let local = rustix::net::getsockname(&u).ok()?;
    SocketAddr::try_from(local).ok().map(|a| a.ip())
}

/// Before `connect(fd, to)` on a tracked TCP socket: propose acceleration if the
/// destination may take it.
pub(crate) fn before_connect(entry: &Arc<Entry>, fd: i32, to: SocketAddr) {
    let Some(sock) = entry.sock() else { return };
    if !enabled() || !sock.outgoing || !sock.conn.is_empty() || !sock.proposal.is_empty() {
        return;
    }
    if inproc() {
        if !listens_on(to) {
            return;
        }
        let Some(local) = bound_address(fd, to) else {
            return;
        };
        let Ok((a, b)) = crate::mem::MemConn::pair(1 << 16) else {
            return;
        };
        let p = Arc::new(Proposal {
            carrier: Carrier::Mem {
                client: Mutex::new(Some(Box::new(a))),
                server: Mutex::new(Some(Box::new(b))),
            },
            local,
            peer: to,
            made: Instant::now(),
        });
        lock(&PROPOSALS)
            .get_or_insert_with(HashMap::new)
            .insert(local, p.clone());
        sock.proposal.swap(Some(p));
        tracing::debug!(target: "coresident_preload", fd, %local, %to, "proposed (in-process)");
        return;
    }
    // The backend's local look (a stat per registry name, or the Xen residency view):
    // a destination it cannot serve costs nothing more, the socket is left as it is.
    if !builder().may_serve(to) {
        return;
    }
    if crate::state::fault("offer") {
        tracing::warn!(target: "coresident_preload", fd, %to, "fault injected: offer fails; plain TCP");
        return;
    }
    let Some(local) = bound_address(fd, to) else {
        return;
    };
    let Some(prepared) = builder().offer_for(local, to) else {
        return;
    };
    tracing::debug!(target: "coresident_preload", fd, %local, %to, "channel offered and committed");
    sock.proposal.swap(Some(Arc::new(Proposal {
        carrier: Carrier::Net(Mutex::new(Some(prepared))),
        local,
        peer: to,
        made: Instant::now(),
    })));
}

/// Our address on `fd`, binding it first to the route's source address and an
/// ephemeral port if it has no port (so the 4-tuple is known before the connection
/// exists).
fn bound_address(fd: i32, to: SocketAddr) -> Option<SocketAddr> {
    // SAFETY: `fd` is the application's open socket for the duration of this call.
    let b = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let (bound, _) = crate::fdops::tuple(fd);
    if let Some(local) = bound {
        if local.port() != 0 && !local.ip().is_unspecified() {
            return Some(local);
        }
        if local.port() != 0 {
            // Bound to a wildcard address with a port: the route picks the source.
            return route_source(to).map(|ip| SocketAddr::new(ip, local.port()));
        }
    }
    let ip = match bound {
        Some(l) if !l.ip().is_unspecified() => l.ip(),
        _ => route_source(to)?,
    };
    rustix::net::bind(b, &SocketAddr::new(ip, 0)).ok()?;
    crate::fdops::tuple(fd).0
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

/// A duplicate of the application's descriptor, for the stream to own.
fn dup_of(fd: i32) -> Option<std::net::TcpStream> {
    // SAFETY: `fd` is the application's open socket for the duration of this call.
    let b = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let d: OwnedFd = rustix::io::fcntl_dupfd_cloexec(b, 3).ok()?;
    Some(std::net::TcpStream::from(d))
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
    let imp: Option<Box<dyn Accelerated>> = match &p.carrier {
        Carrier::Mem { client, .. } => lock(client).take(),
        Carrier::Net(prepared) => {
            let prepared = lock(prepared).take();
            match (prepared, dup_of(fd)) {
                (Some(prepared), Some(tcp)) => {
                    let made = if crate::state::fault("session") {
                        Err(std::io::Error::other("fault injected: session"))
                    } else {
                        coresident_net::Stream::from_session(tcp, prepared)
                    };
                    match made.and_then(crate::netconn::NetConn::new) {
                        Ok(c) => Some(Box::new(c)),
                        Err(e) => {
                            // The peer expects a session: the connection cannot be plain.
                            tracing::warn!(target: "coresident_preload", fd, error = %e,
                            "the committed session could not be made: the connection is reset");
                            Some(Box::new(crate::conn::Dead(rustix::io::Errno::CONNRESET)))
                        }
                    }
                }
                _ => None,
            }
        }
    };
    if let Some(imp) = imp {
        let pid = match &p.carrier {
            Carrier::Mem { .. } => Some(std::process::id()),
            Carrier::Net(_) => None,
        };
        let conn = Arc::new(Conn::new(imp, Some(p.local), Some(p.peer), pid));
        crate::fdops::install(fd, conn);
    }
}

/// After `accept` on `listener` returned `fd` (a tracked socket in `entry`).
pub(crate) fn on_accept(listener: &Arc<Entry>, fd: i32, _entry: &Arc<Entry>) {
    if !enabled() {
        return;
    }
    let (local, peer) = crate::fdops::tuple(fd);
    let Some(peer) = peer else { return };
    if inproc() {
        let Some(p) = lock(&PROPOSALS).as_mut().and_then(|m| m.remove(&peer)) else {
            return;
        };
        let imp = match &p.carrier {
            Carrier::Mem { server, .. } => lock(server).take(),
            Carrier::Net(_) => None,
        };
        if let Some(imp) = imp {
            let conn = Arc::new(Conn::new(imp, local, Some(peer), Some(std::process::id())));
            crate::fdops::install(fd, conn);
        }
        return;
    }
    let Some(l) = listener.sock().and_then(|s| lock(&s.listener).clone()) else {
        return;
    };
    let Some(tcp) = dup_of(fd) else { return };
    // The stream makes its socket non-blocking and sets TCP_NODELAY: both belong to the
    // open file description the application shares. Put them back if the connection
    // stays plain (an accelerated one's flags are the emulation's, see `fdops`).
    // SAFETY: `fd` is the application's open socket for the duration of this call.
    let app = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let flags = rustix::fs::fcntl_getfl(app).ok();
    let nodelay = rustix::net::sockopt::tcp_nodelay(app).ok();
    let restore = || {
        if let Some(f) = flags {
            let _ = rustix::fs::fcntl_setfl(app, f);
        }
        if let Some(n) = nodelay {
            let _ = rustix::net::sockopt::set_tcp_nodelay(app, n);
        }
    };
    let adopted = if crate::state::fault("adopt") {
        Err(std::io::Error::other("fault injected: adopt"))
    } else {
        l.adopt(tcp)
    };
    match adopted {
        Ok(stream) if stream.path() != coresident_net::Path::Plain => {
            match crate::netconn::NetConn::new(stream) {
                Ok(c) => {
                    let conn = Arc::new(Conn::new(Box::new(c), local, Some(peer), None));
                    crate::fdops::install(fd, conn);
                }
                Err(e) => {
                    tracing::warn!(target: "coresident_preload", fd, error = %e, "accepted session unusable: reset");
                    let conn = Arc::new(Conn::new(
                        Box::new(crate::conn::Dead(rustix::io::Errno::CONNRESET)),
                        local,
                        Some(peer),
                        None,
                    ));
                    crate::fdops::install(fd, conn);
                }
            }
        }
        // Plain TCP: dropping the plain stream closes only our duplicate.
        Ok(plain) => {
            drop(plain);
            restore();
        }
        Err(e) => {
            // The client may have committed to a session: raw bytes could be read as
            // segments (or the other way round), so the connection is reset rather
            // than left plain.
            tracing::warn!(target: "coresident_preload", fd, error = %e, "adopt failed: the connection is reset");
            let conn = Arc::new(Conn::new(
                Box::new(crate::conn::Dead(rustix::io::Errno::CONNRESET)),
                local,
                Some(peer),
                None,
            ));
            crate::fdops::install(fd, conn);
        }
    }
}

/// The last descriptor of a socket was closed.
pub(crate) fn on_last_close(entry: &Arc<Entry>) {
    cancel(entry);
    if let Some(s) = entry.sock() {
        // A listening socket's registration goes with it.
        if let Ok(mut l) = s.listener.try_lock() {
            *l = None;
        }
    }
}

/// In a forked child: the parent's proposals are not ours, nor its registrations (the
/// parent's background acceptor serves them).
pub(crate) fn after_fork_child() {
    // Lock-free only here: `try_lock`, and leave the state if another thread held it.
    if let Ok(mut p) = PROPOSALS.try_lock() {
        *p = None;
    }
}
