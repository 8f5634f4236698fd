//! Discovery backends: who listens on a TCP address on this host, and how to hand it a
//! ring channel bound to one TCP connection.
//!
//! A backend does three things (the [`Discovery`] trait):
//! - **register** a listening address and serve handshakes for it from a background
//!   thread, handing each one to the listener's [`HandshakeSink`];
//! - **offer** a channel to whoever registered a destination, carrying a [`Hello`] (the
//!   4-tuple, the session id, the epoch) ahead of the transport's own handshake;
//! - say nothing at all for an unknown destination, at the cost of a failed `connect`
//!   on a Unix socket path (no network round trip);
//! - and answer "may you serve this destination?" from what it knows locally
//!   ([`Discovery::may_serve`]), so a caller can skip preparing an offer.
//!
//! Backends: [`HostRegistry`] (processes and containers on one host, `coresident-shm`),
//! [`NoDiscovery`] (plain TCP), and with the feature `xen`, `xen::XenDiscovery` (guests
//! and dom0 of one Xen host: `coresident-xen`'s residency view and XenStore
//! rendezvous). A backend that learns of residency per peer withdraws and readmits
//! that peer's streams through [`Discovery::subscribe`].
//!
//! The core's `Discovery` trait of the router (peer ids to channels) serves a different
//! need: channels here belong to one TCP connection each, named by its 4-tuple.

use core::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use coresident::{ChannelLayout, Doorbell, Role};
use coresident_shm::{AcceptConfig, CredPolicy, Endpoint, OfferConfig, PeerId, PreparedOffer};

use crate::core::{Mail, Mailbox};
use crate::sys;
use crate::wire::{Hello, COMMIT, HELLO_LEN};

/// Why a channel was not set up (the stream then is, or stays, plain TCP).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// Nobody registered the destination (or the backend is "none").
    NotResident,
    /// The registry socket belongs to another user (the credential policy).
    Credentials {
        /// The owner's uid.
        uid: u32,
    },
    /// The hello or the handshake failed; the text says where.
    Handshake(&'static str),
    /// The listener has too many handshakes in progress or waiting for their TCP
    /// connection.
    Busy,
    /// The listener knows no such session (a re-upgrade for a closed stream).
    UnknownSession,
    /// A system call failed with this errno.
    Os(i32),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotResident => f.write_str("the destination is not registered on this host"),
            Self::Credentials { uid } => {
                write!(f, "the registry socket belongs to uid {uid}, not ours")
            }
            Self::Handshake(why) => write!(f, "handshake failed: {why}"),
            Self::Busy => f.write_str("the listener is busy"),
            Self::UnknownSession => f.write_str("the listener knows no such session"),
            Self::Os(e) => write!(f, "system call failed with errno {e}"),
        }
    }
}

impl std::error::Error for Refusal {}

impl From<io::Error> for Refusal {
    fn from(e: io::Error) -> Self {
        Self::Os(e.raw_os_error().unwrap_or(0))
    }
}

/// One ring channel's shared memory and signals, as a backend set it up.
///
/// # Safety
///
/// Implementors guarantee that `region()` is one mapping, valid for reads and writes
/// and aligned to 128 bytes, for as long as the value lives, holding both rings as
/// `layout()` places them, and that nothing in this process accesses it through Rust
/// references.
pub unsafe trait RingLink: Send + fmt::Debug {
    /// The shared region.
    fn region(&self) -> (*mut u8, usize);
    /// The ring sizes and this side's role.
    fn layout(&self) -> (ChannelLayout, Role);
    /// Rings the peer's doorbell.
    ///
    /// # Errors
    ///
    /// The doorbell's system call failed, or the peer is gone.
    fn notify_peer(&self) -> io::Result<()>;
    /// Consumes pending rings of our doorbell, without blocking.
    fn consume_doorbell(&self) -> Signal;
    /// Readable when the peer rang, and for ever once it closed this channel or died.
    fn doorbell_fd(&self) -> BorrowedFd<'_>;
    /// The peer process, when known.
    fn peer_pid(&self) -> Option<i32>;
    /// Connecting side: says "committed to the session" (before the TCP connect).
    ///
    /// # Errors
    ///
    /// The peer is gone.
    fn commit(&self) -> io::Result<()>;
    /// Accepting side: whether the connecting side committed (consumes its word).
    fn committed(&self) -> bool;
}

/// What a look at a channel's doorbell found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// The peer rang.
    Rung,
    /// Nothing pending.
    Quiet,
    /// The peer closed the channel or died; rings it made before are reported first.
    Gone,
}

impl Signal {
    /// Whether this is [`Signal::Rung`].
    pub fn is_rung(self) -> bool {
        self == Self::Rung
    }
}

/// Where a listener's background acceptor hands its handshakes.
pub trait HandshakeSink: Send + Sync {
    /// A hello arrived and passed the backend's checks; called before the transport
    /// acknowledges the channel, so that the TCP connection (which the peer makes only
    /// after the ack) always finds at least a placeholder.
    ///
    /// # Errors
    ///
    /// The refusal, which ends this handshake.
    fn begin(&self, hello: &Hello) -> Result<(), Refusal>;
    /// The transport's handshake for `hello` ended.
    fn complete(&self, hello: &Hello, link: Result<Box<dyn RingLink>, Refusal>);
}

/// A registration: dropping it unregisters the address.
pub trait Registration: Send + fmt::Debug {}

/// What an offer asks for.
#[derive(Clone, Copy, Debug)]
pub struct OfferParams {
    /// Data area of each ring (a power of two).
    pub ring_size: u32,
    /// The whole handshake's deadline.
    pub timeout: Duration,
}

/// A discovery backend.
pub trait Discovery: Send + Sync + fmt::Debug {
    /// The backend's name, for events and status.
    fn name(&self) -> &'static str;

    /// Registers `addr` (the listener's bound address, maybe a wildcard) and serves
    /// handshakes for it from a background thread until the registration is dropped.
    /// `Ok(None)`: this backend never upgrades.
    ///
    /// # Errors
    ///
    /// The registration could not be made (the listener then stays plain TCP).
    fn register(
        &self,
        addr: SocketAddr,
        sink: Arc<dyn HandshakeSink>,
    ) -> io::Result<Option<Box<dyn Registration>>>;

    /// Offers a channel for `hello` to whoever registered `hello.tuple.dst`.
    ///
    /// # Errors
    ///
    /// [`Refusal::NotResident`] for an unknown destination; any other refusal.
    fn offer(&self, hello: &Hello, params: &OfferParams) -> Result<Box<dyn RingLink>, Refusal>;

    /// Called once for every session stream, on both sides, with the address of its
    /// peer (the connecting side's destination, the accepting side's source). A backend
    /// that learns of residency per peer (the Xen backend's residency view) keeps `sub`
    /// and calls [`Subscriber::withdraw`] when that peer stops being co-resident and
    /// [`Subscriber::readmit`] when it returns; the stream then falls back to TCP, and
    /// upgrades again. The default ignores it (the host registry has no such news).
    fn subscribe(&self, peer: IpAddr, sub: Subscriber) {
        let _ = (peer, sub);
    }

    /// Whether this backend may serve `dst` at all: a cheap local look (no network, no
    /// XenStore, no handshake) for a caller that pays for preparing an offer (the
    /// preload library binds the application's socket before its `connect`). `false`
    /// only when [`offer`](Self::offer) would surely be [`Refusal::NotResident`];
    /// `true` means "ask `offer`", which may still refuse. The default is `true` (the
    /// conservative answer for a backend with no cheaper look than the offer itself).
    fn may_serve(&self, dst: SocketAddr) -> bool {
        let _ = dst;
        true
    }
}

/// One session stream's residency hook, handed to its backend by
/// [`Discovery::subscribe`]: a weak reference, so a backend holding it never keeps a
/// closed stream alive.
#[derive(Clone, Debug)]
pub struct Subscriber {
    mailbox: Weak<Mailbox>,
}

impl Subscriber {
    pub(crate) fn new(mailbox: &Arc<Mailbox>) -> Self {
        Self {
            mailbox: Arc::downgrade(mailbox),
        }
    }

    /// The peer is no longer co-resident: the stream gives its channel up for TCP at
    /// an agreed offset and refuses new ones until [`readmit`](Self::readmit).
    /// `false`: the stream is gone (drop this subscriber).
    pub fn withdraw(&self) -> bool {
        self.post(|| Mail::Withdraw)
    }

    /// The peer is co-resident again: the stream upgrades (the connecting side offers
    /// a channel, the accepting side asks it to). `false`: the stream is gone.
    pub fn readmit(&self) -> bool {
        self.post(|| Mail::Readmit)
    }

    /// Whether the stream still exists.
    pub fn is_alive(&self) -> bool {
        self.mailbox.strong_count() > 0
    }

    fn post(&self, m: impl FnOnce() -> Mail) -> bool {
        match self.mailbox.upgrade() {
            Some(mb) => {
                mb.post(m());
                true
            }
            None => false,
        }
    }
}

/// "none": every stream is plain TCP.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoDiscovery;

impl Discovery for NoDiscovery {
    fn name(&self) -> &'static str {
        "none"
    }

    fn register(
        &self,
        _: SocketAddr,
        _: Arc<dyn HandshakeSink>,
    ) -> io::Result<Option<Box<dyn Registration>>> {
        Ok(None)
    }

    fn offer(&self, _: &Hello, _: &OfferParams) -> Result<Box<dyn RingLink>, Refusal> {
        Err(Refusal::NotResident)
    }

    fn may_serve(&self, _: SocketAddr) -> bool {
        false
    }
}

/// Who may take part in a channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CredentialPolicy {
    /// The peer's uid must be ours (default).
    SameUid,
    /// Any uid that can reach the registry directory (containers that map users
    /// differently, sharing a bind-mounted directory whose permissions are the policy).
    AnyUid,
}

/// The host registry: a directory with one listening Unix socket per registered TCP
/// address, `tcp/<ip>_<port>` (`0.0.0.0_<port>` and `[::]_<port>` for wildcard binds),
/// served by `coresident-shm`'s handshake.
///
/// The directory is `$XDG_RUNTIME_DIR/coresident`, or `/run/coresident` as root, or
/// `/tmp/coresident-<uid>`; it is created 0700 and refused unless it is ours and
/// closed to others.
#[derive(Clone, Debug)]
pub struct HostRegistry {
    dir: PathBuf,
    policy: CredentialPolicy,
}

/// Handshakes one registration serves at once (a stalled client costs one slot for at
/// most the handshake deadline).
const MAX_CONCURRENT_HANDSHAKES: usize = 32;

impl HostRegistry {
    /// The default location (see the type's docs).
    pub fn default_dir() -> PathBuf {
        if let Some(d) = std::env::var_os("CORESIDENT_REGISTRY") {
            return PathBuf::from(d);
        }
        if sys::euid() == 0 {
            return PathBuf::from("/run/coresident");
        }
        match std::env::var_os("XDG_RUNTIME_DIR") {
            Some(x) if !x.is_empty() => PathBuf::from(x).join("coresident"),
            _ => PathBuf::from(format!("/tmp/coresident-{}", sys::euid())),
        }
    }

    /// The registry in [`default_dir`](Self::default_dir) (or `$CORESIDENT_REGISTRY`).
    pub fn new() -> Self {
        Self::at(Self::default_dir())
    }

    /// The registry in `dir` (created on first use).
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            policy: CredentialPolicy::SameUid,
        }
    }

    /// Sets the credential policy.
    #[must_use]
    pub fn with_policy(mut self, policy: CredentialPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The registry's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The sockets' directory, created and verified.
    fn socket_dir(&self) -> io::Result<PathBuf> {
        let sub = self.dir.join("tcp");
        for d in [&self.dir, &sub] {
            match std::fs::DirBuilder::new().mode(0o700).create(d) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
            let meta = std::fs::symlink_metadata(d)?;
            let mode = meta.permissions().mode();
            let closed = meta.is_dir() && meta.uid() == sys::euid() && mode & 0o077 == 0;
            if !meta.is_dir() || (!closed && self.policy == CredentialPolicy::SameUid) {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "registry directory is not ours, or is open to others",
                ));
            }
        }
        Ok(sub)
    }

    fn name_of(addr: SocketAddr) -> String {
        let addr = crate::wire::canonical(addr);
        match addr {
            SocketAddr::V4(a) => format!("{}_{}", a.ip(), a.port()),
            SocketAddr::V6(a) => format!("[{}]_{}", a.ip(), a.port()),
        }
    }

    /// The socket paths that may serve `dst`, most specific first.
    fn candidates(dir: &Path, dst: SocketAddr) -> Vec<PathBuf> {
        let dst = crate::wire::canonical(dst);
        let port = dst.port();
        let mut v = vec![dir.join(Self::name_of(dst))];
        match dst {
            SocketAddr::V4(_) => {
                v.push(dir.join(format!("0.0.0.0_{port}")));
                v.push(dir.join(format!("[::]_{port}")));
            }
            SocketAddr::V6(_) => v.push(dir.join(format!("[::]_{port}"))),
        }
        v
    }

    /// The credential policy in `coresident-shm`'s terms (its handshake checks it too).
    fn shm_policy(&self) -> CredPolicy {
        match self.policy {
            CredentialPolicy::SameUid => CredPolicy::same_user(),
            CredentialPolicy::AnyUid => CredPolicy::anyone(),
        }
    }

    fn check_peer(&self, sock: BorrowedFd<'_>) -> Result<i32, Refusal> {
        let (pid, uid) = sys::peer_cred(sock)?;
        if self.policy == CredentialPolicy::SameUid && uid != sys::euid() {
            return Err(Refusal::Credentials { uid });
        }
        Ok(pid)
    }
}

impl Default for HostRegistry {
    fn default() -> Self {
        Self::new()
    }
}

/// A host registration: the listening socket and its serving thread.
#[derive(Debug)]
struct HostRegistration {
    stop: Arc<AtomicBool>,
    path: PathBuf,
    /// The listening socket (a second descriptor): shutting it down wakes the acceptor
    /// even if the socket file is gone.
    wake: Option<std::os::fd::OwnedFd>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Registration for HostRegistration {}

impl Drop for HostRegistration {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the acceptor: `accept` on a shut-down listening socket fails at once.
        match &self.wake {
            Some(fd) => {
                let _ = rustix::net::shutdown(fd, rustix::net::Shutdown::Both);
            }
            None => {
                let _ = UnixStream::connect(&self.path);
            }
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Discovery for HostRegistry {
    fn name(&self) -> &'static str {
        "host"
    }

    fn register(
        &self,
        addr: SocketAddr,
        sink: Arc<dyn HandshakeSink>,
    ) -> io::Result<Option<Box<dyn Registration>>> {
        let dir = self.socket_dir()?;
        let path = dir.join(Self::name_of(addr));
        let listener = match coresident_shm::Listener::bind(&path) {
            Ok(l) => l,
            Err(_) => {
                // A socket nobody serves (its owner died) is stale: replace it. A live
                // one belongs to another listener of this address: leave it.
                match UnixStream::connect(&path) {
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                        let _ = std::fs::remove_file(&path);
                        coresident_shm::Listener::bind(&path).map_err(io::Error::other)?
                    }
                    _ => {
                        return Err(io::Error::new(
                            io::ErrorKind::AddrInUse,
                            "another listener registered this address",
                        ))
                    }
                }
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let wake = listener.as_fd().try_clone_to_owned().ok();
        let me = self.clone();
        let thread = std::thread::Builder::new()
            .name("coresident-net-acceptor".into())
            .spawn(move || me.serve(&listener, addr, &sink, &stop2))?;
        Ok(Some(Box::new(HostRegistration {
            stop,
            path,
            wake,
            thread: Some(thread),
        })))
    }

    fn offer(&self, hello: &Hello, params: &OfferParams) -> Result<Box<dyn RingLink>, Refusal> {
        let deadline = Instant::now() + params.timeout;
        let dir = self.dir.join("tcp");
        let mut stream = None;
        for p in Self::candidates(&dir, hello.tuple.dst) {
            if let Ok(s) = UnixStream::connect(&p) {
                stream = Some(s);
                break;
            }
        }
        let mut stream = stream.ok_or(Refusal::NotResident)?;
        // The credential policy before anything of ours moves.
        let pid = self.check_peer(stream.as_fd())?;
        stream.set_write_timeout(Some(params.timeout))?;
        stream.write_all(&hello.encode())?;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Refusal::Handshake("deadline passed"));
        }
        let cfg = OfferConfig {
            layout: ChannelLayout::symmetric(params.ring_size),
            handshake_timeout: left,
            policy: self.shm_policy(),
            ..OfferConfig::new(local_id())
        };
        let prepared = PreparedOffer::new(&cfg).map_err(|e| {
            tracing::warn!(error = %e, "could not prepare a channel");
            Refusal::Handshake("region")
        })?;
        let ep = prepared.offer(stream).map_err(|e| {
            tracing::warn!(error = %e, "the host transport's handshake failed");
            Refusal::Handshake("host transport")
        })?;
        Ok(Box::new(HostLink::new(ep, pid)))
    }

    /// A `stat` per candidate name (`tcp/<ip>_<port>`, then the wildcards): a socket
    /// there may serve `dst` (a stale one is found out by the offer's `connect`).
    fn may_serve(&self, dst: SocketAddr) -> bool {
        Self::candidates(&self.dir.join("tcp"), dst)
            .iter()
            .any(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket()))
    }
}

fn local_id() -> PeerId {
    // A valid name by construction ([A-Za-z0-9-]).
    PeerId::name(&format!("net-{}", std::process::id()))
        .unwrap_or(PeerId::Ipv4(std::net::Ipv4Addr::LOCALHOST))
}

impl HostRegistry {
    fn serve(
        &self,
        listener: &coresident_shm::Listener,
        addr: SocketAddr,
        sink: &Arc<dyn HandshakeSink>,
        stop: &Arc<AtomicBool>,
    ) {
        let in_flight = Arc::new(AtomicUsize::new(0));
        loop {
            let stream = listener.accept_stream();
            if stop.load(Ordering::SeqCst) {
                return;
            }
            let Ok(stream) = stream else {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            };
            if in_flight.fetch_add(1, Ordering::SeqCst) >= MAX_CONCURRENT_HANDSHAKES {
                in_flight.fetch_sub(1, Ordering::SeqCst);
                tracing::warn!(%addr, "refused a handshake: too many in progress");
                continue;
            }
            let (me, sink, n) = (self.clone(), Arc::clone(sink), Arc::clone(&in_flight));
            let spawned = std::thread::Builder::new()
                .name("coresident-net-handshake".into())
                .spawn(move || {
                    me.handshake(stream, addr, &*sink);
                    n.fetch_sub(1, Ordering::SeqCst);
                });
            if spawned.is_err() {
                in_flight.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    /// One handshake, bounded by its deadline as a whole.
    fn handshake(&self, mut stream: UnixStream, addr: SocketAddr, sink: &dyn HandshakeSink) {
        let timeout = coresident_shm::rendezvous::DEFAULT_HANDSHAKE_TIMEOUT;
        let deadline = Instant::now() + timeout;
        // `accept_stream` hands the stream out non-blocking; our hello is read with a
        // timeout. The file is ours alone (the peer holds the other end), and every call
        // of `coresident-shm` on it passes `MSG_DONTWAIT` whatever its flags.
        if stream.set_nonblocking(false).is_err() {
            return;
        }
        let pid = match self.check_peer(stream.as_fd()) {
            Ok(pid) => pid,
            Err(r) => {
                tracing::warn!(%addr, reason = %r, "refused a handshake");
                return;
            }
        };
        let mut b = [0u8; HELLO_LEN];
        let mut have = 0;
        while have < HELLO_LEN {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
                tracing::warn!(%addr, "refused a handshake: no hello in time");
                return;
            }
            match stream.read(&mut b[have..]) {
                // A liveness probe, or a client that gave up.
                Ok(0) => return,
                Ok(n) => have += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    tracing::warn!(%addr, "refused a handshake: no hello in time");
                    return;
                }
            }
        }
        let hello = match Hello::decode(&b) {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(%addr, error = %e, "refused a handshake: bad hello");
                return;
            }
        };
        let dst = hello.tuple.dst;
        let ours = crate::wire::canonical(addr);
        if dst.port() != ours.port() || (!ours.ip().is_unspecified() && dst.ip() != ours.ip()) {
            tracing::warn!(%addr, %dst, "refused a handshake: hello names another address");
            return;
        }
        if let Err(r) = sink.begin(&hello) {
            tracing::warn!(tuple = %hello.tuple, reason = %r, "refused a handshake");
            sink.complete(&hello, Err(r));
            return;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let cfg = AcceptConfig {
            handshake_timeout: left.max(Duration::from_millis(1)),
            // Two rings of at most 16 MiB each, and their headers.
            max_region_size: 64 << 20,
            policy: self.shm_policy(),
            ..AcceptConfig::default()
        };
        let res = match coresident_shm::accept_offer(stream, &cfg) {
            Ok(ep) => Ok(Box::new(HostLink::new(ep, pid)) as Box<dyn RingLink>),
            Err(e) => {
                tracing::warn!(tuple = %hello.tuple, error = %e, "handshake failed");
                Err(Refusal::Handshake("host transport"))
            }
        };
        sink.complete(&hello, res);
    }
}

/// A host channel: `coresident-shm`'s sealed memfd region, and its rendezvous socket,
/// which carries the doorbell bytes both ways, the COMMIT byte first, and the peer's
/// death (its hang-up).
#[derive(Debug)]
pub struct HostLink {
    region: coresident_shm::MemfdRegion,
    link: coresident_shm::PeerLink,
    layout: ChannelLayout,
    role: Role,
    pid: i32,
}

impl HostLink {
    fn new(ep: Endpoint, pid: i32) -> Self {
        let l = ep.into_link();
        Self {
            region: l.region,
            link: l.doorbell,
            layout: l.layout,
            role: l.role,
            pid,
        }
    }
}

// SAFETY:
// - the region is `coresident-shm`'s mmap of the sealed memfd, page-aligned, valid for
//   reads and writes until `self.region` drops, and the host transport laid both rings
//   out as `ChannelLayout` places them (`PreparedOffer::new`, checked again at attach);
// - this crate accesses it only through the ring's atomics and volatile copies.
unsafe impl RingLink for HostLink {
    fn region(&self) -> (*mut u8, usize) {
        (self.region.as_ptr(), self.region.len())
    }

    fn layout(&self) -> (ChannelLayout, Role) {
        (self.layout, self.role)
    }

    fn notify_peer(&self) -> io::Result<()> {
        self.link
            .ring()
            .map_err(|e| io::Error::other(e.to_string()))
    }

    fn consume_doorbell(&self) -> Signal {
        match self.link.try_consume() {
            Ok(true) => Signal::Rung,
            Ok(false) => Signal::Quiet,
            // A read that fails otherwise: the socket is broken, as good as gone.
            Err(_) => Signal::Gone,
        }
    }

    fn doorbell_fd(&self) -> BorrowedFd<'_> {
        self.link.as_fd()
    }

    fn peer_pid(&self) -> Option<i32> {
        (self.pid > 0).then_some(self.pid)
    }

    fn commit(&self) -> io::Result<()> {
        // The first byte on the socket after the ack, before any doorbell byte: no ring
        // is rung before the session is committed.
        let n = rustix::net::send(
            self.link.as_fd(),
            &[COMMIT],
            rustix::net::SendFlags::NOSIGNAL | rustix::net::SendFlags::DONTWAIT,
        )?;
        if n == 1 {
            Ok(())
        } else {
            Err(io::ErrorKind::WriteZero.into())
        }
    }

    fn committed(&self) -> bool {
        let mut b = [0u8; 1];
        matches!(
            rustix::net::recv(self.link.as_fd(), &mut b, rustix::net::RecvFlags::DONTWAIT),
            Ok((1, _)) if b[0] == COMMIT
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "coresident-net-may-serve-{tag}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    /// The host registry's look is a `stat` of the candidate names: only a socket there
    /// counts (a file or a directory of that name is not a listener), and the wildcards
    /// of the destination's family serve it.
    #[test]
    fn host_registry_may_serve_only_registered_sockets() {
        let dir = tmp_dir("host");
        let r = HostRegistry::at(&dir);
        let a: SocketAddr = "10.1.2.3:7000".parse().unwrap();
        assert!(!r.may_serve(a), "no registry directory yet");
        let tcp = r.socket_dir().unwrap();
        assert!(!r.may_serve(a));
        // Not sockets: refused.
        std::fs::write(tcp.join("10.1.2.3_7000"), b"").unwrap();
        std::fs::create_dir(tcp.join("0.0.0.0_7000")).unwrap();
        assert!(!r.may_serve(a));
        // The specific name, then a wildcard of each family.
        let _s1 = std::os::unix::net::UnixListener::bind(tcp.join("10.1.2.3_7001")).unwrap();
        assert!(r.may_serve("10.1.2.3:7001".parse().unwrap()));
        assert!(r.may_serve("[::ffff:10.1.2.3]:7001".parse().unwrap()));
        assert!(!r.may_serve("10.1.2.4:7001".parse().unwrap()));
        let _s2 = std::os::unix::net::UnixListener::bind(tcp.join("0.0.0.0_7002")).unwrap();
        assert!(r.may_serve("10.9.9.9:7002".parse().unwrap()));
        assert!(
            !r.may_serve("[fd00::9]:7002".parse().unwrap()),
            "v4 wildcard, v6 dst"
        );
        let _s3 = std::os::unix::net::UnixListener::bind(tcp.join("[::]_7003")).unwrap();
        assert!(r.may_serve("10.9.9.9:7003".parse().unwrap()));
        assert!(r.may_serve("[fd00::9]:7003".parse().unwrap()));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn no_discovery_never_serves() {
        assert!(!NoDiscovery.may_serve("127.0.0.1:80".parse().unwrap()));
    }
}
