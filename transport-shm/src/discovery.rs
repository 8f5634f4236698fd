//! The host registry as a router's discovery source: [`HostDiscovery`] implements the
//! core's `Discovery`, so `Router::builder().discovery(..)` keeps a router's residency
//! table in step with who is registered on this host, with a channel to each.
//!
//! ```text
//!   HostDiscovery::new(registry, config)
//!     registers `me` (a listening socket in the registry directory), served by an
//!     Acceptor (handshakes on its own threads, each with one deadline)
//!     thread "watch":  Registry::watch; for each peer P that joins:
//!                        me < P (by id): offer: Registry::connect(P)
//!                        me > P:         wait: P offers to us (the tie-break)
//!                      P leaves (socket gone, stale, or taken by another process)
//!                        -> Departed; a Joined never departs (a restart reads Left first)
//!     thread "accept": takes the Acceptor's endpoints; the offerer's claimed id must
//!                      be a registered peer below us, and the process listening on
//!                      that peer's socket must be the one offering (SO_PEERCRED
//!                      pid and uid of both sockets); else refused
//!     each channel -> Arrived{[key_of(P)], link} -> the router attaches it, inserts
//!                      the key, and on Departed removes it and fails over
//!   Discovery::poll drains what the threads found (never blocks); wait_fd is an
//!   eventfd they ring.
//! ```
//!
//! The offerer is always the peer with the smaller id (`PeerId`'s order), so two peers
//! that see each other at once set up one channel, not two.
//!
//! The registry directory is the access control: whoever can create a socket there
//! is a peer. Within it, a peer cannot claim another's id: an offer naming peer P is
//! accepted only from the process that holds P's registered socket.
//!
//! [`PeerLink`] is also the core's `Waitable` here: its eventfd and its rendezvous
//! socket (its doorbell, and its hang-up) joins the router's pollable descriptor.

use core::fmt;
use core::time::Duration;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use coresident::{ChannelLayout, Discovery, Link, Residency};

use crate::acceptor::{AcceptError, Acceptor};
use crate::cred::PeerCred;
use crate::endpoint::Endpoint;
use crate::listener::Listener;
use crate::memfd::MemfdRegion;
use crate::offer::OfferConfig;
use crate::peer_id::PeerId;
use crate::peer_link::PeerLink;
use crate::registry::{Registry, RegistryError, RegistryEvent};
use crate::rendezvous::AcceptConfig;
use crate::wire::{check_ring_size, RingSizeError};

impl coresident::Waitable for PeerLink {
    fn wait_fds(&self, add: &mut dyn FnMut(BorrowedFd<'_>)) {
        // The rendezvous socket carries the doorbell's bytes and the hang-up.
        add(self.as_fd());
    }

    fn drain(&self) {
        let _ = self.try_consume();
    }
}

/// A doorbell for the discovery threads to ring the router's poll set with: one end of
/// a socket pair (a byte means "poll me").
#[derive(Debug)]
struct Wake {
    rx: UnixStream,
    tx: UnixStream,
}

impl Wake {
    fn new() -> std::io::Result<Self> {
        let (rx, tx) = UnixStream::pair()?;
        rx.set_nonblocking(true)?;
        tx.set_nonblocking(true)?;
        Ok(Self { rx, tx })
    }

    fn notify(&self) {
        use std::io::Write;
        // A full buffer already says "poll me".
        let _ = (&self.tx).write(&[1]);
    }

    fn consume(&self) {
        use std::io::Read;
        let mut buf = [0u8; 64];
        while matches!((&self.rx).read(&mut buf), Ok(n) if n > 0) {}
    }
}

/// Maps a registry id to the router's key (`None`: not a peer this router routes to).
pub type KeyOf<K> = Arc<dyn Fn(&PeerId) -> Option<K> + Send + Sync>;

/// How a [`HostDiscovery`] sets channels up.
#[derive(Clone)]
pub struct HostConfig<K> {
    /// Our id in the registry.
    pub me: PeerId,
    /// The router's key of each peer id.
    pub key_of: KeyOf<K>,
    /// Data size of each ring (both directions), checked by [`HostDiscovery::new`].
    pub ring: u32,
    /// The longest time before a peer that died without removing its socket is seen
    /// to be gone (the registry's rescan interval).
    pub rescan: Duration,
    /// How long one rendezvous may take.
    pub handshake_timeout: Duration,
}

impl<K> fmt::Debug for HostConfig<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostConfig")
            .field("me", &self.me)
            .field("ring", &self.ring)
            .field("rescan", &self.rescan)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

impl<K> HostConfig<K> {
    /// `me`, with `key_of`, 1 MiB rings, a 200 ms rescan and a 5 s handshake bound.
    pub fn new(me: PeerId, key_of: impl Fn(&PeerId) -> Option<K> + Send + Sync + 'static) -> Self {
        Self {
            me,
            key_of: Arc::new(key_of),
            ring: 1 << 20,
            rescan: Duration::from_millis(200),
            handshake_timeout: Duration::from_secs(5),
        }
    }
}

impl HostConfig<std::net::Ipv4Addr> {
    /// For routers keyed by IPv4 address: peers registered under an IPv4 id.
    pub fn ipv4(me: PeerId) -> Self {
        Self::new(me, |id| match id {
            PeerId::Ipv4(ip) => Some(*ip),
            _ => None,
        })
    }
}

/// Why a [`HostDiscovery`] could not start or stopped working.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// Registering ourselves or watching the registry failed.
    Registry(RegistryError),
    /// The ring size is refused (worded: not a power of two, or out of range).
    RingSize(RingSizeError),
    /// A discovery thread could not be started (`errno`).
    Spawn(i32),
    /// The discovery threads stopped (the registry directory failed).
    Stopped,
}

impl fmt::Display for DiscoveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Registry(e) => write!(f, "host discovery: {e}"),
            Self::RingSize(e) => write!(f, "host discovery: {e}"),
            Self::Spawn(e) => write!(f, "host discovery: cannot start a thread (errno {e})"),
            Self::Stopped => f.write_str("host discovery: the registry watcher stopped"),
        }
    }
}

impl std::error::Error for DiscoveryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Registry(e) => Some(e),
            Self::RingSize(e) => Some(e),
            _ => None,
        }
    }
}

impl From<RegistryError> for DiscoveryError {
    fn from(e: RegistryError) -> Self {
        Self::Registry(e)
    }
}

type Change<K> = Residency<K, Link<MemfdRegion, PeerLink>>;

/// What the threads share.
struct Shared<K> {
    registry: Registry,
    config: HostConfig<K>,
    tx: mpsc::Sender<Change<K>>,
    wake: Wake,
    stop: AtomicBool,
    failed: AtomicBool,
    /// We leave the registry (this peer is moving away): no more channels.
    withdrawn: AtomicBool,
    /// The peers reported arrived and not yet departed, each with the credentials of
    /// the process at the other end of its channel.
    live: Mutex<Vec<(PeerId, PeerCred)>>,
}

impl<K> Shared<K> {
    fn new(
        registry: Registry,
        config: HostConfig<K>,
    ) -> Result<(Arc<Self>, mpsc::Receiver<Change<K>>), DiscoveryError> {
        let (tx, rx) = mpsc::channel();
        let wake = Wake::new().map_err(|e| DiscoveryError::Spawn(e.raw_os_error().unwrap_or(0)))?;
        let shared = Arc::new(Self {
            registry,
            config,
            tx,
            wake,
            stop: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            withdrawn: AtomicBool::new(false),
            live: Mutex::new(Vec::new()),
        });
        Ok((shared, rx))
    }

    fn report(&self, c: Change<K>) {
        if self.tx.send(c).is_ok() {
            self.wake.notify();
        }
    }

    /// Reports `id` arrived over `ep`, unless we withdrew meanwhile.
    fn arrived(&self, id: &PeerId, key: K, ep: Endpoint) {
        let mut live = self
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Relaxed: see `stopped`; checked under the lock `withdraw` takes too.
        if self.withdrawn.load(Ordering::Relaxed) {
            return;
        }
        let cred = ep.peer().cred;
        match live.iter_mut().find(|(p, _)| p == id) {
            Some(entry) => entry.1 = cred,
            None => live.push((id.clone(), cred)),
        }
        self.report(Residency::Arrived {
            keys: vec![key],
            link: ep.into_link(),
        });
    }

    /// Reports `id` departed, if it had arrived.
    fn departed(&self, id: &PeerId) {
        let mut live = self
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(i) = live.iter().position(|(p, _)| p == id) {
            live.swap_remove(i);
            if let Some(key) = (self.config.key_of)(id) {
                self.report(Residency::Departed { key });
            }
        }
    }

    /// The watcher saw `id`'s registration leave. The channel goes too, unless it was
    /// set up with the process that holds `id`'s socket now: then the registration
    /// that left is an older one (the peer restarted and offered to us before our
    /// rescan), and the channel is the new one's.
    fn left(&self, id: &PeerId) {
        let channel = self
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .find(|(p, _)| p == id)
            .map(|(_, c)| *c);
        if let (Some(c), Some(o)) = (channel, owner_of(&self.registry, id)) {
            // pid 0: another pid namespace, where two processes cannot be told apart.
            if c.pid != 0 && (o.pid, o.uid) == (c.pid, c.uid) {
                tracing::debug!(peer = %id, pid = c.pid, "host discovery: an older registration left; the channel is to the current one");
                return;
            }
        }
        tracing::info!(peer = %id, "host discovery: peer left");
        self.departed(id);
    }

    fn stopped(&self) -> bool {
        // Relaxed: a flag with no data attached; a late view costs one more round.
        self.stop.load(Ordering::Relaxed)
    }
}

/// The host registry as a discovery source (see the [module docs](self)).
///
/// # Examples
///
/// ```no_run
/// use coresident::{path::TcpPath, Router};
/// use coresident_shm::{HostConfig, HostDiscovery, Registry};
/// let registry = Registry::open_default()?;
/// let me = "10.0.0.1".parse()?;
/// let discovery = HostDiscovery::new(registry, HostConfig::ipv4(me))?;
/// let net = TcpPath::new(std::net::Ipv4Addr::new(10, 0, 0, 1), |ip| Some((*ip, 7000).into()));
/// let mut router = Router::builder().discovery(discovery).network(net).build()?;
/// router.poll()?; // attaches a channel to every co-resident peer
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct HostDiscovery<K> {
    shared: Arc<Shared<K>>,
    rx: mpsc::Receiver<Change<K>>,
    threads: Vec<JoinHandle<()>>,
}

impl<K> fmt::Debug for HostDiscovery<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostDiscovery")
            .field("registry", &self.shared.registry)
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl<K: Send + 'static> HostDiscovery<K> {
    /// Registers `config.me` in `registry` and starts watching it.
    ///
    /// # Errors
    ///
    /// [`DiscoveryError::RingSize`], [`DiscoveryError::Registry`] (already registered,
    /// the directory), [`DiscoveryError::Spawn`].
    pub fn new(registry: Registry, config: HostConfig<K>) -> Result<Self, DiscoveryError> {
        check_ring_size(config.ring).map_err(DiscoveryError::RingSize)?;
        let listener = registry.register(&config.me)?;
        let watcher = registry.watch()?;
        let (shared, rx) = Shared::new(registry, config)?;
        let mut threads = Vec::new();
        let s = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name("coresident-discovery-accept".into())
                .spawn(move || accept_loop(&s, listener))
                .map_err(|e| DiscoveryError::Spawn(e.raw_os_error().unwrap_or(0)))?,
        );
        let s = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name("coresident-discovery-watch".into())
                .spawn(move || watch_loop(&s, watcher))
                .map_err(|e| DiscoveryError::Spawn(e.raw_os_error().unwrap_or(0)))?,
        );
        Ok(Self {
            shared,
            rx,
            threads,
        })
    }
}

/// Withdraws a [`HostDiscovery`]'s peer from the registry, from anywhere (the
/// discovery itself belongs to the router).
pub struct Withdraw<K>(Arc<Shared<K>>);

impl<K> fmt::Debug for Withdraw<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Withdraw").field(&self.0.config.me).finish()
    }
}

impl<K> Withdraw<K> {
    /// Leaves the registry (this peer is about to move away, say): our socket goes, so
    /// the other peers see us depart and fail their channels to us over; and every peer
    /// we had a channel to is reported departed to our own router, which fails its
    /// channels over too. No channel is set up after this.
    pub fn withdraw(&self) {
        let s = &self.0;
        let peers = {
            let mut live = s
                .live
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // Relaxed: read under the same lock by `arrived`.
            s.withdrawn.store(true, Ordering::Relaxed);
            core::mem::take(&mut *live)
        };
        for (id, _) in peers {
            if let Some(key) = (s.config.key_of)(&id) {
                s.report(Residency::Departed { key });
            }
        }
        tracing::info!(me = %s.config.me, "host discovery: withdrawn from the registry");
    }
}

impl<K> HostDiscovery<K> {
    /// A handle that withdraws this peer from the registry (see [`Withdraw`]).
    #[must_use]
    pub fn withdrawer(&self) -> Withdraw<K> {
        Withdraw(self.shared.clone())
    }
}

impl<K> Drop for HostDiscovery<K> {
    fn drop(&mut self) {
        // Relaxed: see `Shared::stopped`; the threads notice within one poll round.
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl<K> Discovery<K> for HostDiscovery<K> {
    type Region = MemfdRegion;
    type Doorbell = PeerLink;
    type Error = DiscoveryError;

    fn poll(&mut self, changes: &mut dyn FnMut(Change<K>)) -> Result<(), DiscoveryError> {
        self.shared.wake.consume();
        while let Ok(c) = self.rx.try_recv() {
            changes(c);
        }
        // Relaxed: see `Shared::stopped`.
        if self.shared.failed.load(Ordering::Relaxed) {
            return Err(DiscoveryError::Stopped);
        }
        Ok(())
    }

    fn wait_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.shared.wake.rx.as_fd())
    }
}

/// The pid and uid of the process listening on `id`'s registry socket (a probe
/// connection, which the listener skips).
fn owner_of(registry: &Registry, id: &PeerId) -> Option<PeerCred> {
    let s = UnixStream::connect(registry.path_of(id)).ok()?;
    PeerCred::of(s.as_fd()).ok()
}

/// Takes the offers the acceptor validated on our registry socket.
fn accept_loop<K>(s: &Shared<K>, listener: Listener) {
    let cfg = AcceptConfig {
        local_id: Some(s.config.me.clone()),
        handshake_timeout: s.config.handshake_timeout,
        ..AcceptConfig::default()
    };
    let acceptor = match Acceptor::spawn(listener, cfg) {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "host discovery: cannot serve our registry socket");
            s.failed.store(true, Ordering::Relaxed);
            s.wake.notify();
            return;
        }
    };
    while !s.stopped() {
        // Relaxed: see `Shared::stopped`.
        if s.withdrawn.load(Ordering::Relaxed) {
            // Dropping the acceptor removes our socket: the others see us leave.
            drop(acceptor);
            while !s.stopped() {
                std::thread::sleep(Duration::from_millis(20));
            }
            return;
        }
        match acceptor.accept(Some(Duration::from_millis(50))) {
            Ok(ep) => admit(s, ep),
            Err(AcceptError::TimedOut) => {}
            Err(e) => {
                tracing::warn!(error = %e, "host discovery: our registry socket failed");
                s.failed.store(true, Ordering::Relaxed);
                s.wake.notify();
                return;
            }
        }
    }
}

/// Checks an accepted offer: the claimed offerer must be a registered peer that sorts
/// below us and must be the process holding that peer's socket; then reports it.
fn admit<K>(s: &Shared<K>, ep: Endpoint) {
    let info = ep.peer().clone();
    let Some(id) = info.id.clone() else {
        tracing::warn!(offerer = ?info.cred, "host discovery: an offer names no peer: refused");
        return;
    };
    if id >= s.config.me {
        tracing::warn!(peer = %id, "host discovery: an offer from a peer that should accept: refused");
        return;
    }
    let c = info.cred;
    match owner_of(&s.registry, &id) {
        Some(o) if o.uid == c.uid && (o.pid == c.pid || o.pid == 0 || c.pid == 0) => {}
        owner => {
            tracing::warn!(peer = %id, offerer = ?c, owner = ?owner, "host discovery: an offer under another peer's id: refused");
            return;
        }
    }
    let Some(key) = (s.config.key_of)(&id) else {
        tracing::debug!(peer = %id, "host discovery: a peer this router has no key for");
        return;
    };
    tracing::info!(peer = %id, "host discovery: channel accepted");
    s.arrived(&id, key, ep);
}

/// Watches the registry: offers to the peers above us, reports departures.
fn watch_loop<K>(s: &Shared<K>, mut watcher: crate::registry::Watcher) {
    watcher.set_rescan_interval(s.config.rescan);
    let me = s.config.me.clone();
    let initial: Vec<PeerId> = watcher.peers().cloned().collect();
    for id in initial {
        joined(s, &id);
    }
    while !s.stopped() {
        let events = match watcher.next_events(Some(Duration::from_millis(50))) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "host discovery: the registry watcher failed");
                s.failed.store(true, Ordering::Relaxed);
                s.wake.notify();
                return;
            }
        };
        for e in events {
            on_event(s, &me, e);
        }
    }
}

/// One change the watcher saw. A restart under the same name reads `Left` then
/// `Joined`, so `Joined` never tears a channel down: the peer may have offered to us
/// (accepted on the other thread) before the watcher's scan saw it join.
fn on_event<K>(s: &Shared<K>, me: &PeerId, e: RegistryEvent) {
    match e {
        RegistryEvent::Joined(id) if id != *me => joined(s, &id),
        RegistryEvent::Left(id) if id != *me => s.left(&id),
        _ => {}
    }
}

/// A peer joined: offer it a channel if we sort below it (it offers to us otherwise).
fn joined<K>(s: &Shared<K>, id: &PeerId) {
    // Relaxed: see `Shared::stopped`.
    if *id <= s.config.me || s.withdrawn.load(Ordering::Relaxed) {
        return;
    }
    let Some(key) = (s.config.key_of)(id) else {
        return;
    };
    let cfg = OfferConfig {
        peer_id: Some(id.clone()),
        layout: ChannelLayout::symmetric(s.config.ring),
        handshake_timeout: s.config.handshake_timeout,
        ..OfferConfig::new(s.config.me.clone())
    };
    match s.registry.connect(id, &cfg) {
        Ok(ep) => {
            tracing::info!(peer = %id, "host discovery: channel offered and accepted");
            s.arrived(id, key, ep);
        }
        Err(e) => {
            tracing::warn!(peer = %id, error = %e, "host discovery: offering a channel failed")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn registry(name: &str) -> Registry {
        let dir = std::env::temp_dir().join(format!(
            "coresident-discovery-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        Registry::open(&dir).unwrap()
    }

    /// B's side of a channel that A (below B) offered: what B's accept thread admits.
    fn offered_by(registry: &Registry, a: &PeerId, b: &PeerId) -> Endpoint {
        let listener = registry.register(b).unwrap();
        let acceptor = std::thread::spawn(move || {
            let ep = listener.accept(&AcceptConfig::default()).unwrap();
            (ep, listener)
        });
        let _a_end = registry.connect(b, &OfferConfig::new(a.clone())).unwrap();
        acceptor.join().unwrap().0
    }

    fn departures(rx: &mpsc::Receiver<Change<Ipv4Addr>>) -> Vec<Ipv4Addr> {
        rx.try_iter()
            .filter_map(|c| match c {
                Residency::Departed { key } => Some(key),
                Residency::Arrived { .. } => None,
            })
            .collect()
    }

    /// The race a loaded machine ran into: A registers and offers to B at once; B's
    /// accept thread admits the channel before B's watcher scans and sees A join. That
    /// late `Joined` is no restart and must not tear the fresh channel down.
    #[test]
    fn a_late_joined_for_a_peer_that_already_offered_keeps_its_channel() {
        let registry = registry("late-joined");
        let (a, b): (PeerId, PeerId) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let a_socket = registry.register(&a).unwrap();
        let (s, rx) = Shared::new(registry.clone(), HostConfig::ipv4(b.clone())).unwrap();
        s.arrived(
            &a,
            Ipv4Addr::new(10, 0, 0, 1),
            offered_by(&registry, &a, &b),
        );
        assert!(matches!(rx.try_recv(), Ok(Residency::Arrived { .. })));

        on_event(&s, &b, RegistryEvent::Joined(a.clone()));
        assert!(
            departures(&rx).is_empty(),
            "a late Joined tore the channel down"
        );

        // A `Left` while the channel's process still holds A's socket: an older
        // registration left (A restarted and offered before our scan). Keep it.
        on_event(&s, &b, RegistryEvent::Left(a.clone()));
        assert!(departures(&rx).is_empty());

        // A's socket goes: A has left.
        drop(a_socket);
        on_event(&s, &b, RegistryEvent::Left(a.clone()));
        assert_eq!(departures(&rx), [Ipv4Addr::new(10, 0, 0, 1)]);
        let _ = std::fs::remove_dir_all(registry.dir());
    }

    /// A `Left` for a peer whose socket another process holds now (a restart under the
    /// same name) fails the old channel over.
    #[test]
    fn a_left_for_a_peer_whose_socket_changed_hands_fails_the_channel_over() {
        let registry = registry("changed-hands");
        let (a, b): (PeerId, PeerId) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let _a_socket = registry.register(&a).unwrap();
        let (s, rx) = Shared::new(registry.clone(), HostConfig::ipv4(b.clone())).unwrap();
        s.arrived(
            &a,
            Ipv4Addr::new(10, 0, 0, 1),
            offered_by(&registry, &a, &b),
        );
        let _ = rx.try_recv();
        // As if another process (the one before a restart) had offered the channel.
        s.live.lock().unwrap()[0].1.pid = 1;
        on_event(&s, &b, RegistryEvent::Left(a.clone()));
        assert_eq!(departures(&rx), [Ipv4Addr::new(10, 0, 0, 1)]);
        let _ = std::fs::remove_dir_all(registry.dir());
    }
}
