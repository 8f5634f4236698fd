//! The Xen backend (feature `xen`): co-resident guests by `coresident-xen`'s residency
//! view (the dom0 agent's lists), channels by its XenStore rendezvous over grant pages
//! and event channels.
//!
//! # The keys
//!
//! Listener L (the accepting domain), connecting domain C; every value is written by the
//! domain whose home holds it, so XenStore's ownership vouches for the writer (docs:
//! `docs/streams.md`, "The Xen backend"):
//!
//! | key | written by | permissions | value |
//! |---|---|---|---|
//! | `/local/domain/L/data/coresident/net-listen/ADDR` | L, while registered | `[r L]` (any domain reads) | `1` |
//! | `/local/domain/C/data/coresident/net-hello/L/NAME` | C, before its offer, removed after it | `[n C, r L]` | the [`Hello`], 144 hex digits |
//! | `/local/domain/C/data/coresident/net/L/NAME/offer/...` | C ([`Rendezvous`], context `net`) | `[n C, r L]` | the rendezvous's offer |
//! | `/local/domain/L/data/coresident/net/C/NAME/answer/...` | L ([`Rendezvous::accept`]) | `[n L, r C]` | its answer |
//! | `/local/domain/C/data/coresident/net-commit/L/NAME` | C, before its TCP connect, removed with the channel | `[n C, r L]` | `1` |
//!
//! `ADDR` is [`addr_key`]: `4-0a000001-7117` for 10.0.0.1:7117, `6-<32 hex digits>-PORT`
//! for IPv6, the unspecified address for a wildcard bind. `NAME` is [`channel_name`]:
//! `s` and the session id in hex, `-` and the epoch (one channel per epoch of a session).
//!
//! # What is checked
//!
//! - The destination's domain comes from the residency view alone (the agent's list,
//!   whose addresses it checked against the toolstack): an address no co-resident peer
//!   lists is [`Refusal::NotResident`] at once, without a XenStore round trip.
//! - The acceptor serves only domains its view lists, reads the hello only from the
//!   offering domain's own home, and refuses it unless it decodes, its name is the one
//!   the hello gives, its destination is the registered address and its source is one
//!   of the offering domain's listed addresses (no domain can claim another's
//!   connection).
//! - Residency changes reach each stream through [`Discovery::subscribe`]: a peer that
//!   leaves the view (withdrawn by the agent, migrated, destroyed) makes its streams
//!   fall back to TCP; its return makes them upgrade again.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use coresident::{ChannelLayout, Doorbell, Role, SharedRegion, Wake};
use coresident_xen::protocol::keys::{self, valid_name};
use coresident_xen::protocol::xs_wire::{Access, Perm};
use coresident_xen::rendezvous::{self, Listener as XsListener, XenLink};
use coresident_xen::residency::{Addr, Addresses, PeerChange, ResidencyView};
use coresident_xen::xenstore::XsClient;
use coresident_xen::{DomId, Rendezvous, XenStore, XsError};

use crate::discovery::{
    Discovery, HandshakeSink, OfferParams, Refusal, Registration, RingLink, Signal, Subscriber,
};
use crate::wire::{canonical, Hello, HELLO_LEN};

/// The rendezvous context of stream channels (`data/coresident/net/...`).
pub const CONTEXT: &str = "net";
/// Where a listener publishes its addresses, under its home.
pub const LISTEN_DIR: &str = "data/coresident/net-listen";
/// Where a connecting domain puts a channel's hello, under its home.
pub const HELLO_DIR: &str = "data/coresident/net-hello";
/// Where a connecting domain commits to a channel, under its home.
pub const COMMIT_DIR: &str = "data/coresident/net-commit";
/// The value of a listen and a commit key.
const MARK: &[u8] = b"1";
/// Handshakes one registration serves at once.
const MAX_CONCURRENT_HANDSHAKES: usize = 32;
/// How long an acceptor waits for an offer it saw to be complete.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a registration's server looks at the peer set when no watch fired.
const RESCAN: Duration = Duration::from_millis(200);

/// How a backend opens a XenStore connection (one per rendezvous: a rendezvous
/// consumes its connection's watch events).
pub type Connect = Arc<dyn Fn() -> Result<XenStore, XsError> + Send + Sync>;

/// `ADDR` of a listen key: `4-0a000001-7117`, `6-<32 hex>-7117` (the address
/// canonical: an IPv4-mapped IPv6 address is its IPv4 address).
pub fn addr_key(addr: SocketAddr) -> String {
    let addr = canonical(addr);
    match addr.ip() {
        IpAddr::V4(ip) => format!("4-{:08x}-{}", u32::from(ip), addr.port()),
        IpAddr::V6(ip) => format!("6-{:032x}-{}", u128::from(ip), addr.port()),
    }
}

/// The listen keys that may serve `dst`, most specific first: its own, then the
/// wildcard binds of its family (an IPv4 destination also `[::]`'s).
pub fn listen_candidates(dst: SocketAddr) -> Vec<String> {
    let dst = canonical(dst);
    let port = dst.port();
    let any4 = SocketAddr::from(([0u8; 4], port));
    let any6 = SocketAddr::from(([0u16; 8], port));
    let mut v = vec![addr_key(dst)];
    if dst.is_ipv4() {
        v.push(addr_key(any4));
    }
    v.push(addr_key(any6));
    v
}

/// The channel's rendezvous name: `s<session hex>-<epoch>` (44 characters at most, in
/// the rendezvous's alphabet).
pub fn channel_name(hello: &Hello) -> String {
    let mut s = String::with_capacity(44);
    s.push('s');
    for b in hello.session {
        s.push_str(&format!("{b:02x}"));
    }
    s.push_str(&format!("-{}", hello.epoch));
    s
}

/// A hello as its XenStore value: the wire encoding in lowercase hex.
pub fn encode_hello(hello: &Hello) -> String {
    hello.encode().iter().map(|b| format!("{b:02x}")).collect()
}

/// Why a hello value was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HelloError {
    /// Not `2 * HELLO_LEN` hex digits.
    Length(usize),
    /// A byte that is not a lowercase hex digit.
    NotHex,
    /// The bytes are no hello (magic, version, addresses).
    Wire,
    /// The hello names another channel than the key it was found under.
    OtherName,
    /// The hello's destination is not the registered address.
    OtherAddress,
    /// The hello's source is not an address of the offering domain.
    NotThePeers,
}

impl fmt::Display for HelloError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Length(n) => write!(f, "a hello of {n} bytes, not {}", 2 * HELLO_LEN),
            Self::NotHex => f.write_str("a hello that is not lowercase hex"),
            Self::Wire => f.write_str("a malformed hello"),
            Self::OtherName => f.write_str("a hello for another channel"),
            Self::OtherAddress => f.write_str("a hello for another address"),
            Self::NotThePeers => f.write_str("a hello from an address its domain does not own"),
        }
    }
}

impl std::error::Error for HelloError {}

/// Decodes a hello value (exactly `2 * HELLO_LEN` lowercase hex digits).
///
/// # Errors
///
/// [`HelloError::Length`], [`HelloError::NotHex`], [`HelloError::Wire`].
pub fn decode_hello(value: &[u8]) -> Result<Hello, HelloError> {
    if value.len() != 2 * HELLO_LEN {
        return Err(HelloError::Length(value.len()));
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut b = [0u8; HELLO_LEN];
    for (out, pair) in b.iter_mut().zip(value.chunks_exact(2)) {
        let (Some(hi), Some(lo)) = (
            pair.first().copied().and_then(digit),
            pair.get(1).copied().and_then(digit),
        ) else {
            return Err(HelloError::NotHex);
        };
        *out = hi << 4 | lo;
    }
    Hello::decode(&b).map_err(|_| HelloError::Wire)
}

/// The acceptor's checks of a hello found under `name` in `peer`'s home, for a
/// registration of `registered`, with the peer's listed addresses `peer_addrs`.
///
/// # Errors
///
/// Every [`HelloError`].
pub fn check_hello(
    value: &[u8],
    name: &str,
    registered: SocketAddr,
    peer_addrs: &Addresses,
) -> Result<Hello, HelloError> {
    let hello = decode_hello(value)?;
    if channel_name(&hello) != name {
        return Err(HelloError::OtherName);
    }
    let dst = hello.tuple.dst;
    let ours = canonical(registered);
    if dst.port() != ours.port() || (!ours.ip().is_unspecified() && dst.ip() != ours.ip()) {
        return Err(HelloError::OtherAddress);
    }
    if !owns(peer_addrs, hello.tuple.src.ip()) {
        return Err(HelloError::NotThePeers);
    }
    Ok(hello)
}

/// Whether `addrs` lists `ip` (an IPv4-mapped IPv6 address as its IPv4 address).
fn owns(addrs: &Addresses, ip: IpAddr) -> bool {
    let a = match ip {
        IpAddr::V4(v4) => Addr::Ipv4(v4),
        IpAddr::V6(v6) => Addr::Ipv6(v6),
    }
    .canonical();
    addrs.contains(&a)
}

/// The co-resident domain that lists `ip` among its addresses, if one does.
pub fn domain_of(peers: &BTreeMap<DomId, Addresses>, ip: IpAddr) -> Option<DomId> {
    peers.iter().find(|(_, a)| owns(a, ip)).map(|(d, _)| *d)
}

fn home_key(domid: DomId, dir: &str, rest: &str) -> String {
    format!("/local/domain/{domid}/{dir}/{rest}")
}

/// Writes `value` at `path` and gives it `perms` (XenStore has no atomic write with
/// permissions: until the second step only the owner reads it, which is safe).
fn write_with_perms(
    xs: &mut XenStore,
    path: &str,
    value: &[u8],
    perms: &[Perm],
) -> Result<(), XsError> {
    xs.write(path, value)?;
    xs.set_perms(path, perms)
}

fn xs_refusal(e: XsError) -> Refusal {
    tracing::warn!(error = %e, "XenStore failed");
    Refusal::Handshake("XenStore")
}

/// The state the backend's threads share.
struct Inner {
    own: AtomicU16,
    connect: Connect,
    peers: Mutex<BTreeMap<DomId, Addresses>>,
    subs: Mutex<Vec<(IpAddr, Subscriber)>>,
    stop: AtomicBool,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inner")
            .field("own", &self.own.load(Ordering::Relaxed))
            .field("peers", &self.peers.lock().map(|p| p.len()).ok())
            .finish_non_exhaustive()
    }
}

impl Inner {
    fn own(&self) -> DomId {
        self.own.load(Ordering::SeqCst)
    }

    fn peers(&self) -> BTreeMap<DomId, Addresses> {
        self.peers.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// Posts `Withdraw` (or `Readmit`) to every live subscriber whose peer address
    /// `addrs` lists, dropping the hooks of closed streams; returns how many it told.
    fn tell(&self, addrs: &Addresses, withdraw: bool) -> usize {
        let Ok(mut subs) = self.subs.lock() else {
            return 0;
        };
        subs.retain(|(_, s)| s.is_alive());
        let mut n = 0;
        for (ip, s) in subs.iter() {
            if owns(addrs, *ip) {
                let posted = if withdraw { s.withdraw() } else { s.readmit() };
                n += usize::from(posted);
            }
        }
        n
    }

    fn apply(&self, changes: &[PeerChange]) {
        for c in changes {
            match c {
                PeerChange::Arrived { domid, addrs } => {
                    if let Ok(mut p) = self.peers.lock() {
                        p.insert(*domid, addrs.clone());
                    }
                    let n = self.tell(addrs, false);
                    tracing::info!(
                        domid,
                        streams = n,
                        "xen: peer co-resident: streams readmitted"
                    );
                }
                PeerChange::Changed { domid, old, new } => {
                    if let Ok(mut p) = self.peers.lock() {
                        p.insert(*domid, new.clone());
                    }
                    let mut gone = old.clone();
                    for a in new.iter() {
                        gone.remove(&a);
                    }
                    let n = self.tell(&gone, true);
                    tracing::info!(domid, streams = n, "xen: peer's addresses changed");
                }
                PeerChange::Left { domid, addrs } => {
                    if let Ok(mut p) = self.peers.lock() {
                        p.remove(domid);
                    }
                    let n = self.tell(addrs, true);
                    tracing::info!(domid, streams = n, "xen: peer left: streams withdrawn");
                }
                PeerChange::Moved { from, to } => {
                    self.own.store(*to, Ordering::SeqCst);
                    tracing::info!(from, to, "xen: this domain runs under a new id");
                }
                other => tracing::warn!(change = %other, "xen: residency list refused in part"),
            }
        }
    }
}

/// The Xen backend: see the [module docs](self).
///
/// # Examples
///
/// ```no_run
/// use std::sync::Arc;
/// use coresident_net::{xen::XenDiscovery, Builder};
///
/// // In a guest (or dom0): XenStore, our domain id and the residency view.
/// let xen = Arc::new(XenDiscovery::new()?);
/// let b = Builder::new().discovery_arc(xen);
/// let stream = b.connect("10.0.0.1:7000")?;
/// println!("{:?}", stream.path());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct XenDiscovery {
    inner: Arc<Inner>,
    view: Option<JoinHandle<()>>,
}

impl fmt::Debug for XenDiscovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XenDiscovery")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl XenDiscovery {
    /// Opens XenStore (`/dev/xen/xenbus`, or xenstored's socket in dom0), reads this
    /// domain's id, and keeps a residency view in step from a background thread.
    ///
    /// # Errors
    ///
    /// XenStore could not be opened, the id read or the view's watch set.
    pub fn new() -> io::Result<Self> {
        Self::with_addresses(Addresses::default())
    }

    /// As [`new`](Self::new), with this domain's own addresses (a peer listing one of
    /// them is refused by the view).
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new).
    pub fn with_addresses(own: Addresses) -> io::Result<Self> {
        let connect: Connect = Arc::new(XenStore::open);
        let mut xs = connect().map_err(io::Error::other)?;
        let domid = rendezvous::own_domid(&mut xs).map_err(io::Error::other)?;
        let view = ResidencyView::new(xs, domid, own).map_err(io::Error::other)?;
        Ok(Self::with_view(view, connect))
    }

    /// The backend over a residency view the caller made, stepped from a background
    /// thread, and `connect` for the rendezvous's connections.
    ///
    /// The view's first read happens here, before this returns: a backend made just
    /// before a `connect` (the preload library makes it at a process's first socket
    /// call) already knows the peers listed at that moment.
    pub fn with_view(mut view: ResidencyView, connect: Connect) -> Self {
        let mut me = Self::manual(view.domid(), connect);
        match view.step(Some(Duration::ZERO)) {
            Ok(changes) => me.inner.apply(&changes),
            // The thread retries.
            Err(e) => tracing::warn!(error = %e, "xen: residency view's first read failed"),
        }
        let inner = Arc::clone(&me.inner);
        let thread = std::thread::Builder::new()
            .name("coresident-net-xen-view".into())
            .spawn(move || {
                while !inner.stop.load(Ordering::SeqCst) {
                    match view.step(Some(RESCAN)) {
                        Ok(changes) => inner.apply(&changes),
                        Err(e) => {
                            tracing::warn!(error = %e, "xen: residency view failed; retrying");
                            std::thread::sleep(Duration::from_secs(1));
                        }
                    }
                }
            });
        match thread {
            Ok(t) => me.view = Some(t),
            Err(e) => {
                tracing::error!(error = %e, "xen: no residency view thread: nothing is resident")
            }
        }
        me
    }

    /// The backend without a view of its own: the caller feeds it the view's changes
    /// with [`apply`](Self::apply) (tests, a daemon that steps its view itself).
    pub fn manual(own: DomId, connect: Connect) -> Self {
        Self {
            inner: Arc::new(Inner {
                own: AtomicU16::new(own),
                connect,
                peers: Mutex::new(BTreeMap::new()),
                subs: Mutex::new(Vec::new()),
                stop: AtomicBool::new(false),
            }),
            view: None,
        }
    }

    /// Applies residency changes: the peer set, and withdrawal or readmission of the
    /// streams with each peer that left or came back.
    pub fn apply(&self, changes: &[PeerChange]) {
        self.inner.apply(changes);
    }

    /// This domain's id.
    pub fn domid(&self) -> DomId {
        self.inner.own()
    }

    /// The co-resident peers now.
    pub fn peers(&self) -> BTreeMap<DomId, Addresses> {
        self.inner.peers()
    }

    /// The co-resident domain that lists `ip`, if any.
    pub fn domain_of(&self, ip: IpAddr) -> Option<DomId> {
        self.inner.peers.lock().ok().and_then(|p| domain_of(&p, ip))
    }
}

impl Drop for XenDiscovery {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.view.take() {
            let _ = t.join();
        }
    }
}

impl Discovery for XenDiscovery {
    fn name(&self) -> &'static str {
        "xen"
    }

    fn register(
        &self,
        addr: SocketAddr,
        sink: Arc<dyn HandshakeSink>,
    ) -> io::Result<Option<Box<dyn Registration>>> {
        let own = self.inner.own();
        let mut xs = (self.inner.connect)().map_err(io::Error::other)?;
        let key = home_key(own, LISTEN_DIR, &addr_key(addr));
        // Readable by any domain: a peer checks it before it offers.
        write_with_perms(
            &mut xs,
            &key,
            MARK,
            &[Perm {
                domid: own,
                access: Access::Read,
            }],
        )
        .map_err(io::Error::other)?;
        let stop = Arc::new(AtomicBool::new(false));
        let server = Server {
            inner: Arc::clone(&self.inner),
            addr,
            sink,
            stop: Arc::clone(&stop),
            in_flight: Arc::new(AtomicUsize::new(0)),
        };
        let thread = std::thread::Builder::new()
            .name("coresident-net-xen-acceptor".into())
            .spawn(move || server.run(xs));
        match thread {
            Ok(t) => Ok(Some(Box::new(XenRegistration {
                stop,
                thread: Some(t),
                key,
                connect: Arc::clone(&self.inner.connect),
            }))),
            Err(e) => {
                if let Ok(mut xs) = (self.inner.connect)() {
                    let _ = xs.rm(&key);
                }
                Err(e)
            }
        }
    }

    fn offer(&self, hello: &Hello, params: &OfferParams) -> Result<Box<dyn RingLink>, Refusal> {
        let deadline = Instant::now() + params.timeout;
        let peer = self
            .domain_of(hello.tuple.dst.ip())
            .ok_or(Refusal::NotResident)?;
        let own = self.inner.own();
        let mut xs = (self.inner.connect)().map_err(xs_refusal)?;
        // Does it listen with coresident there?
        let listening = listen_candidates(hello.tuple.dst)
            .into_iter()
            .any(|k| matches!(xs.read(&home_key(peer, LISTEN_DIR, &k)), Ok(v) if v == MARK));
        if !listening {
            return Err(Refusal::NotResident);
        }
        let name = channel_name(hello);
        let rest = format!("{peer}/{name}");
        let hello_key = home_key(own, HELLO_DIR, &rest);
        write_with_perms(
            &mut xs,
            &hello_key,
            encode_hello(hello).as_bytes(),
            &keys::perms(own, peer),
        )
        .map_err(xs_refusal)?;
        let res = (|| {
            let mut rdv = Rendezvous::new(own, peer, &name)
                .and_then(|r| r.in_context(CONTEXT))
                .map_err(|_| Refusal::Handshake("channel name"))?;
            let layout = ChannelLayout::symmetric(params.ring_size);
            let pending = rdv.offer(&mut xs, layout).map_err(|e| {
                tracing::warn!(error = %e, peer, "xen: could not offer a channel");
                Refusal::Handshake("xen offer")
            })?;
            let left = deadline.saturating_duration_since(Instant::now());
            pending
                .complete(&mut xs, Some(left.max(Duration::from_millis(1))))
                .map_err(|e| {
                    tracing::warn!(error = %e, peer, "xen: the rendezvous failed");
                    Refusal::Handshake("xen rendezvous")
                })
        })();
        let _ = xs.rm(&hello_key);
        let link = res?;
        Ok(Box::new(XenRingLink {
            link,
            xs: Mutex::new(Some(xs)),
            commit_key: home_key(own, COMMIT_DIR, &rest),
            commit_owner: own,
            commit_reader: peer,
            side: LinkSide::Connector,
        }))
    }

    fn subscribe(&self, peer: IpAddr, sub: Subscriber) {
        if let Ok(mut s) = self.inner.subs.lock() {
            s.retain(|(_, s)| s.is_alive());
            s.push((peer, sub));
        }
    }

    /// From the residency view alone (no XenStore traffic): whether a co-resident peer
    /// lists `dst`'s address. Whether it listens there is the offer's question.
    fn may_serve(&self, dst: SocketAddr) -> bool {
        self.domain_of(canonical(dst).ip()).is_some()
    }
}

/// A registration: the listen key and the serving thread.
struct XenRegistration {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    key: String,
    connect: Connect,
}

impl fmt::Debug for XenRegistration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XenRegistration")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Registration for XenRegistration {}

impl Drop for XenRegistration {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // The server removed it on its way out; again in case it could not.
        if let Ok(mut xs) = (self.connect)() {
            let _ = xs.rm(&self.key);
        }
    }
}

/// One registration's server: watches the offers of every co-resident peer.
struct Server {
    inner: Arc<Inner>,
    addr: SocketAddr,
    sink: Arc<dyn HandshakeSink>,
    stop: Arc<AtomicBool>,
    in_flight: Arc<AtomicUsize>,
}

impl Server {
    fn run(self, mut xs: XenStore) {
        let own = self.inner.own();
        let mut listening: BTreeMap<DomId, XsListener> = BTreeMap::new();
        // Names handed to a handshake, and when: an offer stays listed until its
        // offerer takes our answer; a name is served once.
        let mut served: HashMap<(DomId, String), Instant> = HashMap::new();
        while !self.stop.load(Ordering::SeqCst) {
            let peers = self.inner.peers();
            listening.retain(|d, l| {
                let keep = peers.contains_key(d);
                if !keep {
                    let _ = l.stop(&mut xs);
                }
                keep
            });
            for d in peers.keys() {
                if listening.contains_key(d) {
                    continue;
                }
                match XsListener::new(own, *d, CONTEXT) {
                    Ok(l) => match l.listen(&mut xs) {
                        Ok(()) => {
                            listening.insert(*d, l);
                        }
                        Err(e) => tracing::warn!(peer = d, error = %e, "xen: cannot watch offers"),
                    },
                    Err(e) => tracing::warn!(peer = d, error = %e, "xen: cannot watch offers"),
                }
            }
            served.retain(|_, t| t.elapsed() < ACCEPT_TIMEOUT * 2);
            for (d, l) in &listening {
                let mut names = Vec::new();
                if let Err(e) = l.offered(&mut xs, |n| names.push(n.as_str().to_owned())) {
                    tracing::warn!(peer = d, error = %e, "xen: cannot list offers");
                    continue;
                }
                for name in names {
                    if served.contains_key(&(*d, name.clone())) {
                        continue;
                    }
                    served.insert((*d, name.clone()), Instant::now());
                    if let Some(addrs) = peers.get(d) {
                        self.spawn(*d, addrs.clone(), name);
                    }
                }
            }
            match xs.wait_watch(Some(RESCAN)) {
                Ok(_) => while let Ok(Some(_)) = xs.wait_watch(Some(Duration::ZERO)) {},
                Err(e) => {
                    tracing::warn!(error = %e, "xen: XenStore failed; retrying");
                    std::thread::sleep(RESCAN);
                }
            }
        }
        for l in listening.values() {
            let _ = l.stop(&mut xs);
        }
        let _ = xs.rm(&home_key(own, LISTEN_DIR, &addr_key(self.addr)));
    }

    fn spawn(&self, peer: DomId, addrs: Addresses, name: String) {
        if self.in_flight.fetch_add(1, Ordering::SeqCst) >= MAX_CONCURRENT_HANDSHAKES {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!(peer, "xen: refused a handshake: too many in progress");
            return;
        }
        let (inner, sink, n, addr) = (
            Arc::clone(&self.inner),
            Arc::clone(&self.sink),
            Arc::clone(&self.in_flight),
            self.addr,
        );
        let spawned = std::thread::Builder::new()
            .name("coresident-net-xen-handshake".into())
            .spawn(move || {
                handshake(&inner, &*sink, addr, peer, &addrs, &name);
                n.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// One offer of `peer` named `name`: its hello checked, then the rendezvous.
fn handshake(
    inner: &Inner,
    sink: &dyn HandshakeSink,
    addr: SocketAddr,
    peer: DomId,
    peer_addrs: &Addresses,
    name: &str,
) {
    let own = inner.own();
    if !valid_name(name) {
        return;
    }
    let Ok(mut xs) = (inner.connect)() else {
        tracing::warn!(peer, "xen: refused a handshake: no XenStore connection");
        return;
    };
    let rest = format!("{own}/{name}");
    let hello = match xs.read(&home_key(peer, HELLO_DIR, &rest)) {
        Ok(v) => check_hello(v, name, addr, peer_addrs),
        Err(e) => {
            tracing::warn!(peer, name, error = %e, "xen: refused a handshake: no hello");
            return;
        }
    };
    let hello = match hello {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(peer, name, error = %e, "xen: refused a handshake: bad hello");
            return;
        }
    };
    if let Err(r) = sink.begin(&hello) {
        tracing::warn!(tuple = %hello.tuple, reason = %r, "xen: refused a handshake");
        sink.complete(&hello, Err(r));
        return;
    }
    let res = Rendezvous::new(own, peer, name)
        .and_then(|r| r.in_context(CONTEXT))
        .map_err(|_| Refusal::Handshake("channel name"))
        .and_then(|mut r| {
            r.accept(&mut xs, Some(ACCEPT_TIMEOUT)).map_err(|e| {
                tracing::warn!(tuple = %hello.tuple, error = %e, "xen: the rendezvous failed");
                Refusal::Handshake("xen rendezvous")
            })
        })
        .map(|link| {
            Box::new(XenRingLink {
                link,
                xs: Mutex::new(Some(xs)),
                commit_key: home_key(peer, COMMIT_DIR, &rest),
                commit_owner: peer,
                commit_reader: own,
                side: LinkSide::Acceptor,
            }) as Box<dyn RingLink>
        });
    sink.complete(&hello, res);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LinkSide {
    /// Offered the channel; writes the commit key, removes it with the link.
    Connector,
    /// Accepted it; reads the commit key once.
    Acceptor,
}

/// A Xen channel: grant pages, an event channel, and the commit key.
struct XenRingLink {
    link: XenLink<coresident_xen::linux::LinuxBackend>,
    /// The connection of the rendezvous, kept for the commit key (the acceptor's is
    /// dropped once it read it).
    xs: Mutex<Option<XenStore>>,
    commit_key: String,
    /// The commit key's owner (the connecting side, its writer).
    commit_owner: DomId,
    /// The domain allowed to read the commit key (the acceptor).
    commit_reader: DomId,
    side: LinkSide,
}

impl fmt::Debug for XenRingLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XenRingLink")
            .field("port", &self.link.doorbell.port())
            .field("commit_key", &self.commit_key)
            .field("side", &self.side)
            .finish_non_exhaustive()
    }
}

// SAFETY:
// - `region()` is the `XenRegion` of `coresident-xen`'s transport: grant pages (ours
//   through gntalloc, or the peer's through gntdev), one mapping, page-aligned (so
//   128-aligned), valid for reads and writes while `self.link` lives, and the transport
//   laid both rings out as `link.layout` places them (`offer_pages`, or checked field by
//   field in `accept_offer` before anything was mapped);
// - this crate touches it only through the ring's atomics and volatile copies, never
//   through a Rust reference (the peer writes these pages).
unsafe impl RingLink for XenRingLink {
    fn region(&self) -> (*mut u8, usize) {
        (self.link.region.as_ptr(), self.link.region.len())
    }

    fn layout(&self) -> (ChannelLayout, Role) {
        (self.link.layout, self.link.role)
    }

    fn notify_peer(&self) -> io::Result<()> {
        self.link
            .doorbell
            .ring()
            .map_err(|e| io::Error::other(e.to_string()))
    }

    fn consume_doorbell(&self) -> Signal {
        match self.link.doorbell.wait(Some(Duration::ZERO)) {
            Ok(Wake::Rung) => Signal::Rung,
            Ok(Wake::TimedOut) => Signal::Quiet,
            // The live byte clear, Xen's word that the port is closed, or a broken
            // event-channel device: as good as gone.
            Ok(Wake::PeerGone) | Err(_) => Signal::Gone,
        }
    }

    fn doorbell_fd(&self) -> BorrowedFd<'_> {
        self.link.doorbell.event_port().evtchn().as_fd()
    }

    fn peer_pid(&self) -> Option<i32> {
        None
    }

    fn commit(&self) -> io::Result<()> {
        let mut g = self.xs.lock().map_err(|_| io::Error::other("poisoned"))?;
        let xs = g.as_mut().ok_or(io::ErrorKind::NotConnected)?;
        // Acknowledged by xenstored before this returns, so before our TCP connect:
        // the acceptor, reading it after its `accept`, sees it.
        write_with_perms(
            xs,
            &self.commit_key,
            MARK,
            &keys::perms(self.commit_owner, self.commit_reader),
        )
        .map_err(io::Error::other)
    }

    fn committed(&self) -> bool {
        let Ok(mut g) = self.xs.lock() else {
            return false;
        };
        let Some(mut xs) = g.take() else {
            return false;
        };
        matches!(xs.read(&self.commit_key), Ok(v) if v == MARK)
    }
}

impl Drop for XenRingLink {
    fn drop(&mut self) {
        if self.side == LinkSide::Connector {
            if let Ok(mut g) = self.xs.lock() {
                if let Some(xs) = g.as_mut() {
                    let _ = xs.rm(&self.commit_key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
