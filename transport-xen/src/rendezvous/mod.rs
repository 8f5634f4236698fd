//! The rendezvous through XenStore, once, for every side: the offering
//! domain publishes its offer ([`Offer`]'s fields) as keys under its
//! own home, readable by the peer domain alone; the accepting domain reads
//! and checks them, maps, binds and answers under *its* own home, readable
//! by the offerer alone. Both wait on XenStore watches, never by polling.
//! [`Rendezvous`] is generic over the XenStore client ([`XsClient`]: a
//! daemon's socket or xenbus, a PV kernel's ring) and the transport's
//! backend ([`XenBackend`]).
//!
//! ```text
//!  offerer O                                         acceptor A
//!  ─────────                                         ──────────
//!  offer_pages (grants, unbound port, live byte)
//!  rm + mkdir …/O/data/coresident/CTX/A/NAME/offer
//!  [n O, r A] on it and on each key
//!  version port to-acceptor to-offerer nrefs
//!  refs0 … refsK, then state=offered ───────────▶ watch fires; read state,
//!                                                 every key, check (KeyError)
//!                                                 accept_offer (map, bind,
//!                                                 live byte, ring)
//!  watch on …/A/…/CTX/O/NAME/answer fires ◀────── version offer-port port
//!  (or A's live byte, or our port fired)          state=accepted (or refused)
//!  rm …/offer and its emptied parents  ─────────▶ offer gone: rm …/answer and
//!                                                 its emptied parents
//! ```
//!
//! The keys and their checks are [`crate::protocol::keys`]'; the bytes
//! are [`crxg`](crate::protocol::crxg)'s; this module is the procedure:
//! the order of the writes, the permissions, the watches, the waits, and
//! the teardown (issue 17, findings 9 and 10):
//! - nothing of a rendezvous stays in XenStore, whatever its outcome: the
//!   acceptor waits (at most [`ANSWER_LINGER`]) until the offerer has taken
//!   its answer (it removes its offer), then removes the answer; each side
//!   removes the nodes above its keys that it left empty, in a
//!   transaction, so a sibling channel's nodes stay;
//! - an acceptor that dies before it answers is seen at once: besides the
//!   answer's watch, the offerer waits on its port (the acceptor's release
//!   signal fires it, with the acceptor's live byte cleared) and on
//!   `@releaseDomain` (a destroyed domain's home goes).
//!
//! Names and contexts are the caller's ([`Name`](keys::Name)); [`Listener`] sees any
//! offer a peer makes in a context, under any name.
//!
//! A destroyed peer domain runs no release signal and Xen closes its event
//! channels silently; the doorbell asks Xen, and XenStore says so too:
//! [`Rendezvous::watch_peer`], [`Rendezvous::wait_peer_gone`].

use core::fmt;
use core::time::Duration;

use coresident::ChannelLayout;

use crate::backend::XenBackend;
use crate::protocol::crxg::Offer;
use crate::protocol::keys::{self, KeyError, Path};
use crate::transport::{XenTransport, XenTransportError};
use crate::types::{DomId, EvtchnPort, GrantRef};
use crate::xenstore::{XsClient, XsError};

mod channel_keys;
mod listener;
mod pending;

pub use channel_keys::ChannelKeys;
use channel_keys::{home_exists, read_offer_at, remove_dir};
pub use listener::Listener;
pub use pending::XsPending;

/// This domain's id, from its relative XenStore key `domid` (dom0 has one
/// too, written by `xen-init-dom0`).
///
/// # Errors
///
/// [`XsError`]; [`XsError::Value`] for a malformed id.
///
/// # Examples
///
/// ```no_run
/// use coresident_xen::rendezvous::{own_domid, Rendezvous};
/// use coresident_xen::XenStore;
///
/// let mut xs = XenStore::open()?;
/// let me = own_domid(&mut xs)?;
/// let rdv = Rendezvous::new(me, 0, "logs")?;
/// # drop(rdv);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn own_domid<X: XsClient>(xs: &mut X) -> Result<DomId, XsError> {
    Ok(crate::protocol::xs_wire::parse_u16(xs.read("domid")?)?)
}

/// xenstored's special node fired whenever a domain is released.
///
/// # Examples
///
/// ```
/// use coresident_xen::rendezvous::RELEASE_DOMAIN;
///
/// assert_eq!(RELEASE_DOMAIN, "@releaseDomain");
/// ```
pub const RELEASE_DOMAIN: &str = "@releaseDomain";

/// How long [`Rendezvous::accept`] waits, after it answered, for the
/// offerer to take the answer (it removes its offer) before removing it.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use coresident_xen::rendezvous::ANSWER_LINGER;
///
/// assert_eq!(ANSWER_LINGER, Duration::from_secs(5));
/// ```
pub const ANSWER_LINGER: Duration = Duration::from_secs(5);

pub use crate::transport::XenLink;

/// A failure of the rendezvous over a backend whose failure is `E`.
///
/// # Examples
///
/// ```
/// use coresident_xen::protocol::keys::{Key, KeyError};
/// use coresident_xen::RendezvousError;
///
/// let e = RendezvousError::from(KeyError::Missing(Key::Port));
/// assert_eq!(e, RendezvousError::Key(KeyError::Missing(Key::Port)));
/// assert_eq!(e.to_string(), "rendezvous key port is missing");
/// assert_eq!(RendezvousError::Timeout.to_string(), "the peer did not answer in time");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RendezvousError<E> {
    /// A key could not be read or written, or the peer's keys are
    /// malformed (XenStore's own failures are [`KeyError::Store`]).
    Key(KeyError),
    /// The transport failed or refused the offer (its fields:
    /// [`XenTransportError::Offer`]; the peer left:
    /// [`XenTransportError::PeerGone`]).
    Transport(XenTransportError<E>),
    /// The acceptor refused the offer (its `error` key says why).
    Refused,
    /// Nothing (usable) appeared before the timeout.
    Timeout,
}

impl<E: fmt::Display> fmt::Display for RendezvousError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Key(e) => write!(f, "{e}"),
            Self::Transport(e) => write!(f, "{e}"),
            Self::Refused => f.write_str("the acceptor refused the offer"),
            Self::Timeout => f.write_str("the peer did not answer in time"),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> core::error::Error for RendezvousError<E> {}

impl<E> From<KeyError> for RendezvousError<E> {
    fn from(e: KeyError) -> Self {
        Self::Key(e)
    }
}

impl<E> From<XsError> for RendezvousError<E> {
    fn from(e: XsError) -> Self {
        Self::Key(KeyError::Store(e))
    }
}

impl<E> From<XenTransportError<E>> for RendezvousError<E> {
    fn from(e: XenTransportError<E>) -> Self {
        Self::Transport(e)
    }
}

impl<E> RendezvousError<E> {
    /// Whether the peer's offer was at fault (malformed keys, an offer the
    /// transport refused): what an acceptor answers `refused`.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::protocol::keys::{Key, KeyError};
    /// use coresident_xen::RendezvousError;
    ///
    /// // A malformed offer is the peer's fault (answer `refused`); a timeout is not.
    /// assert!(RendezvousError::Key(KeyError::Missing(Key::Port)).is_peer_fault());
    /// assert!(!RendezvousError::Timeout.is_peer_fault());
    /// ```
    pub fn is_peer_fault(&self) -> bool {
        match self {
            Self::Key(k) => k.is_malformed(),
            Self::Transport(_) => true,
            Self::Refused | Self::Timeout => false,
        }
    }
}

/// A deadline on a backend's monotonic clock (`None`: none).
#[derive(Clone, Copy, Debug)]
struct Deadline(Option<u64>);

impl Deadline {
    fn after(now: u64, timeout: Option<Duration>) -> Self {
        Self(timeout.map(|d| now.saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))))
    }

    /// What is left at `now` (`None`: no deadline).
    fn left(self, now: u64) -> Option<Duration> {
        self.0
            .map(|end| Duration::from_nanos(end.saturating_sub(now)))
    }

    fn min(self, other: Self) -> Self {
        match (self.0, other.0) {
            (Some(a), Some(b)) => Self(Some(a.min(b))),
            (a, b) => Self(a.or(b)),
        }
    }
}

/// Waits for the next watch event before the deadline (`now` gives the
/// clock): `Err(Timeout)` once it has passed.
fn wait_event<X: XsClient, E>(
    xs: &mut X,
    deadline: Deadline,
    now: u64,
) -> Result<(), RendezvousError<E>> {
    let left = deadline.left(now);
    if left.is_some_and(|l| l.is_zero()) {
        return Err(RendezvousError::Timeout);
    }
    match xs.wait_watch(left)? {
        Some(_) => Ok(()),
        None => Err(RendezvousError::Timeout),
    }
}

/// Either side's view of one named channel between two domains, over the
/// backend `B` (see the [module docs](self)).
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use coresident::{Channel, ChannelConfig, ChannelLayout, StdClock};
/// use coresident_xen::xenstore::XsClient;
/// use coresident_xen::{Rendezvous, XenStore};
///
/// let mut xs = XenStore::open()?;
/// let own = u16::try_from(xs.read_u32("domid")?)?;
/// // Offer channel "logs" to dom0, which runs
/// // `Rendezvous::new(0, guest, "logs")?.accept(&mut xs, timeout)`.
/// let mut rdv = Rendezvous::new(own, 0, "logs")?;
/// let pending = rdv.offer(&mut xs, ChannelLayout::symmetric(64 * 1024))?;
/// let link = pending.complete(&mut xs, Some(Duration::from_secs(30)))?;
/// let mut ch = Channel::new(link, ChannelConfig::default(), StdClock::default())?;
/// ch.send(b"hello")?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Rendezvous<B: XenBackend> {
    transport: XenTransport<B>,
    /// Between `transport`'s domain and its peer.
    keys: ChannelKeys,
}

impl<B: XenBackend> Rendezvous<B> {
    /// The channel `name` between `transport`'s domain and its peer, in the
    /// context [`CHANNELS`](keys::CHANNELS).
    ///
    /// # Errors
    ///
    /// [`KeyError::BadName`].
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::{Rendezvous, XenTransport};
    ///
    /// // No device is opened before the offer or the answer.
    /// let rdv = Rendezvous::with_transport(XenTransport::new(5, 0), "logs")?;
    /// assert_eq!((rdv.own(), rdv.peer(), rdv.name()), (5, 0, "logs"));
    /// assert!(Rendezvous::with_transport(XenTransport::new(5, 0), "no/slash").is_err());
    /// # Ok::<(), coresident_xen::protocol::keys::KeyError>(())
    /// ```
    pub fn with_transport(transport: XenTransport<B>, name: &str) -> Result<Self, KeyError> {
        let keys = ChannelKeys::new(transport.domid(), transport.peer(), name)?;
        Ok(Self { transport, keys })
    }

    /// The same channel in another context (`data/coresident/CONTEXT/...`,
    /// a caller's own namespace).
    ///
    /// # Errors
    ///
    /// [`KeyError::BadName`].
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::Rendezvous;
    ///
    /// let rdv = Rendezvous::new(5, 0, "logs")?.in_context("myapp")?;
    /// assert_eq!(rdv.context(), "myapp");
    /// let offer = rdv.keys().offer_dir()?;
    /// assert_eq!(offer.as_str(), "/local/domain/5/data/coresident/myapp/0/logs/offer");
    /// # Ok::<(), coresident_xen::protocol::keys::KeyError>(())
    /// ```
    pub fn in_context(mut self, context: &str) -> Result<Self, KeyError> {
        self.keys = self.keys.in_context(context)?;
        Ok(self)
    }

    /// This domain.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::Rendezvous;
    ///
    /// assert_eq!(Rendezvous::new(5, 0, "logs")?.own(), 5);
    /// # Ok::<(), coresident_xen::protocol::keys::KeyError>(())
    /// ```
    pub fn own(&self) -> DomId {
        self.transport.domid()
    }

    /// The peer domain.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::Rendezvous;
    ///
    /// assert_eq!(Rendezvous::new(5, 0, "logs")?.peer(), 0);
    /// # Ok::<(), coresident_xen::protocol::keys::KeyError>(())
    /// ```
    pub fn peer(&self) -> DomId {
        self.transport.peer()
    }

    /// The channel's name.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::Rendezvous;
    ///
    /// assert_eq!(Rendezvous::new(5, 0, "logs")?.name(), "logs");
    /// # Ok::<(), coresident_xen::protocol::keys::KeyError>(())
    /// ```
    pub fn name(&self) -> &str {
        self.keys.name().as_str()
    }

    /// The channel's context.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::protocol::keys::CHANNELS;
    /// use coresident_xen::Rendezvous;
    ///
    /// assert_eq!(Rendezvous::new(5, 0, "logs")?.context(), CHANNELS);
    /// assert_eq!(CHANNELS, "channels");
    /// # Ok::<(), coresident_xen::protocol::keys::KeyError>(())
    /// ```
    pub fn context(&self) -> &str {
        self.keys.context().as_str()
    }

    /// The channel's keys (for a caller that drives a step by hand).
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::Rendezvous;
    ///
    /// let rdv = Rendezvous::new(0, 5, "logs")?;
    /// // Where dom0, accepting, watches for domain 5's offer.
    /// let dir = rdv.keys().peer_offer_dir()?;
    /// assert_eq!(dir.as_str(), "/local/domain/5/data/coresident/channels/0/logs/offer");
    /// # Ok::<(), coresident_xen::protocol::keys::KeyError>(())
    /// ```
    pub fn keys(&self) -> &ChannelKeys {
        &self.keys
    }

    /// Shares a region for `layout` with the peer and publishes the offer
    /// (keys, permissions, `state=offered` last). Finish with
    /// [`XsPending::complete`].
    ///
    /// # Errors
    ///
    /// [`RendezvousError::Transport`] (grants, port, a layout the ring
    /// refuses), [`RendezvousError::Key`] (the offer could not be written;
    /// what was written is removed).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use coresident::ChannelLayout;
    /// use coresident_xen::rendezvous::own_domid;
    /// use coresident_xen::{Rendezvous, XenStore};
    ///
    /// let mut xs = XenStore::open()?;
    /// let mut rdv = Rendezvous::new(own_domid(&mut xs)?, 0, "logs")?;
    /// let pending = rdv.offer(&mut xs, ChannelLayout::symmetric(64 * 1024))?;
    /// // Dom0 accepts; `complete` waits for its answer and removes the offer.
    /// let link = pending.complete(&mut xs, Some(Duration::from_secs(30)))?;
    /// # drop(link);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn offer<X: XsClient>(
        &mut self,
        xs: &mut X,
        layout: ChannelLayout,
    ) -> Result<XsPending<B>, RendezvousError<B::Error>> {
        let (own, peer) = (self.own(), self.peer());
        let pending = self.transport.offer_pages(layout)?;
        let mut buf = self.transport.ref_buf();
        let offer = pending
            .offer(buf.as_mut())
            .map_err(XenTransportError::Offer)?;
        self.keys.publish_offer(xs, &offer)?;
        Ok(XsPending {
            port: offer.port,
            pending,
            own,
            peer,
            answer: self.keys.peer_answer_dir()?,
            token: self.keys.token("answer")?,
            offer: self.keys.offer_dir()?,
        })
    }

    /// Reads and checks the peer's offer to us, its references into `refs`
    /// (room for as many as this side takes): `Ok(None)` while its `state`
    /// is absent (not written yet, or not yet readable by us).
    ///
    /// # Errors
    ///
    /// Every malformed key is a [`KeyError`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::{Rendezvous, XenStore};
    ///
    /// let mut xs = XenStore::open()?;
    /// let rdv = Rendezvous::new(0, 5, "logs")?;
    /// // Look without waiting or answering (`accept` does both).
    /// let mut refs = [0u32; 64];
    /// match rdv.read_offer(&mut xs, &mut refs)? {
    ///     Some(offer) => println!("domain 5 offers {} pages, port {}", offer.refs.len(), offer.port),
    ///     None => println!("no offer yet"),
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn read_offer<'r, X: XsClient>(
        &self,
        xs: &mut X,
        refs: &'r mut [GrantRef],
    ) -> Result<Option<Offer<&'r [GrantRef]>>, KeyError> {
        self.keys.read_offer(xs, refs)
    }

    /// Waits (watching) for the peer's offer, checks it, maps the region,
    /// binds the event channel and answers `accepted`; a bad offer is
    /// answered `refused` with the reason. Then it waits until the offerer
    /// has taken the answer (it removes its offer) or [`ANSWER_LINGER`]
    /// has passed, and removes the answer and every node it left empty:
    /// nothing of the rendezvous stays in XenStore, whatever the outcome.
    ///
    /// # Errors
    ///
    /// [`RendezvousError::Timeout`] when no offer appeared in time; the
    /// offer's [`KeyError`]s; the transport's.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use coresident::{Channel, ChannelConfig, StdClock};
    /// use coresident_xen::{Rendezvous, XenStore};
    ///
    /// // In dom0: take domain 5's offer of channel "logs".
    /// let mut xs = XenStore::open()?;
    /// let link = Rendezvous::new(0, 5, "logs")?.accept(&mut xs, Some(Duration::from_secs(30)))?;
    /// let mut ch = Channel::new(link, ChannelConfig::default(), StdClock::default())?;
    /// ch.send(b"hello, domain 5")?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn accept<X: XsClient>(
        &mut self,
        xs: &mut X,
        timeout: Option<Duration>,
    ) -> Result<XenLink<B>, RendezvousError<B::Error>> {
        let deadline = Deadline::after(self.transport.now_ns(), timeout);
        let offer_dir = self.keys.peer_offer_dir()?;
        let token = self.keys.token("offer")?;
        xs.watch(offer_dir.as_str(), token.as_str())?;
        let r = self.accept_watched(xs, offer_dir.as_str(), deadline);
        let answer = self.keys.answer_dir()?;
        let (r, answered) = match r {
            Ok((link, offer_port)) => {
                let port = link.doorbell.port();
                match self.keys.answer(xs, offer_port, Ok(port)) {
                    Ok(()) => (Ok(link), Some(offer_port)),
                    Err(e) => (Err(e.into()), None),
                }
            }
            Err(e) if e.is_peer_fault() => {
                // Echo the offer's port if it is readable, so the offerer
                // knows the refusal is about this offer.
                let port = keys::read_u32(xs, offer_dir.as_str(), keys::Key::Port).unwrap_or(0);
                let w = self.keys.answer(xs, port, Err(&e));
                (Err(e), w.ok().map(|()| port))
            }
            Err(e) => (Err(e), None),
        };
        if let Some(port) = answered {
            let linger = Deadline::after(self.transport.now_ns(), Some(ANSWER_LINGER));
            self.linger(xs, offer_dir.as_str(), port, deadline.min(linger));
        }
        let _ = xs.unwatch(offer_dir.as_str(), token.as_str());
        remove_dir(xs, self.own(), answer.as_str());
        r
    }

    fn accept_watched<X: XsClient>(
        &mut self,
        xs: &mut X,
        offer_dir: &str,
        deadline: Deadline,
    ) -> Result<(XenLink<B>, EvtchnPort), RendezvousError<B::Error>> {
        let mut refs = self.transport.ref_buf();
        let offer = loop {
            if let Some(offer) = read_offer_at(xs, self.peer(), offer_dir, refs.as_mut())? {
                break offer;
            }
            wait_event(xs, deadline, self.transport.now_ns())?;
        };
        let link = self.transport.accept_offer(&offer)?;
        Ok((link, offer.port))
    }

    /// After an answer to the offer of `port`, waits (the caller watches
    /// `offer_dir`) until that offer is gone or replaced by another (another
    /// port), or `until`. An offer whose port cannot be read is still the
    /// one we answered.
    fn linger<X: XsClient>(&self, xs: &mut X, offer_dir: &str, port: EvtchnPort, until: Deadline) {
        loop {
            let Ok(state) = Path::new(format_args!("{offer_dir}/{}", keys::Key::State)) else {
                return;
            };
            match xs.read(state.as_str()) {
                Ok(_) => {}
                Err(e) if e.is_denied() => {}
                Err(_) => return,
            }
            match keys::read_u32(xs, offer_dir, keys::Key::Port) {
                Ok(p) if p != port => return,
                _ => {}
            }
            if wait_event::<X, B::Error>(xs, until, self.transport.now_ns()).is_err() {
                return;
            }
        }
    }

    /// Removes this side's keys of the channel (our offer and our answer),
    /// if any, and the nodes above them left empty. [`Rendezvous::accept`]
    /// and [`XsPending::complete`] already do; this is for a side that
    /// gives up another way. `xl destroy` removes a dead guest's whole home.
    ///
    /// # Errors
    ///
    /// [`KeyError::Store`] (a missing key is not an error).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::{Rendezvous, XenStore};
    ///
    /// let mut xs = XenStore::open()?;
    /// // A daemon restarting after a crash clears what its last run left.
    /// Rendezvous::new(5, 0, "logs")?.withdraw(&mut xs)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn withdraw<X: XsClient>(&self, xs: &mut X) -> Result<(), KeyError> {
        self.keys.withdraw(xs)
    }

    fn release_token(&self) -> Result<Path, KeyError> {
        let k = &self.keys;
        Path::new(format_args!(
            "coresident/release/{}/{}/{}",
            k.peer(),
            k.context(),
            k.name()
        ))
    }

    /// Watches for the peer domain's death: xenstored fires
    /// [`RELEASE_DOMAIN`] when any domain is released, and the toolstack
    /// removes the domain's home when it destroys it. A destroyed domain
    /// runs no release signal, so this is how a survivor without Xen's word
    /// on its port learns of `xl destroy`; then call `Channel::peer_left`.
    ///
    /// # Errors
    ///
    /// [`KeyError::Store`] (a guest may not be allowed the special watch).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use coresident_xen::{Rendezvous, XenStore};
    ///
    /// let mut xs = XenStore::open()?;
    /// let rdv = Rendezvous::new(0, 5, "logs")?;
    /// rdv.watch_peer(&mut xs)?;
    /// if rdv.wait_peer_gone(&mut xs, Some(Duration::from_secs(60)))? {
    ///     println!("domain 5 was destroyed: ch.peer_left()");
    /// }
    /// rdv.unwatch_peer(&mut xs)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn watch_peer<X: XsClient>(&self, xs: &mut X) -> Result<(), KeyError> {
        Ok(xs.watch(RELEASE_DOMAIN, self.release_token()?.as_str())?)
    }

    /// Stops [`Rendezvous::watch_peer`]'s watch.
    ///
    /// # Errors
    ///
    /// [`KeyError::Store`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::{Rendezvous, XenStore};
    ///
    /// let mut xs = XenStore::open()?;
    /// let rdv = Rendezvous::new(0, 5, "logs")?;
    /// rdv.watch_peer(&mut xs)?;
    /// // ... the channel closed normally: no need to watch any longer.
    /// rdv.unwatch_peer(&mut xs)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn unwatch_peer<X: XsClient>(&self, xs: &mut X) -> Result<(), KeyError> {
        Ok(xs.unwatch(RELEASE_DOMAIN, self.release_token()?.as_str())?)
    }

    /// Whether the peer's home (`/local/domain/PEER`) still exists.
    ///
    /// # Errors
    ///
    /// [`XsError`] for anything but "not found" and "not yours to read".
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::{Rendezvous, XenStore};
    ///
    /// let mut xs = XenStore::open()?;
    /// if !Rendezvous::new(0, 5, "logs")?.peer_present(&mut xs)? {
    ///     println!("domain 5 does not exist (any more)");
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn peer_present<X: XsClient>(&self, xs: &mut X) -> Result<bool, XsError> {
        home_exists(xs, self.peer())
    }

    /// Waits, on the watch set by [`Rendezvous::watch_peer`], until the
    /// peer's home is gone: `Ok(true)`, or `Ok(false)` at the timeout.
    ///
    /// # Errors
    ///
    /// [`XsError`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use coresident_xen::{Rendezvous, XenStore};
    ///
    /// let mut xs = XenStore::open()?;
    /// let rdv = Rendezvous::new(0, 5, "logs")?;
    /// rdv.watch_peer(&mut xs)?;
    /// let gone = rdv.wait_peer_gone(&mut xs, Some(Duration::from_secs(10)))?;
    /// println!("domain 5 {}", if gone { "is gone" } else { "still runs" });
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn wait_peer_gone<X: XsClient>(
        &self,
        xs: &mut X,
        timeout: Option<Duration>,
    ) -> Result<bool, XsError> {
        let deadline = Deadline::after(self.transport.now_ns(), timeout);
        loop {
            if !self.peer_present(xs)? {
                return Ok(true);
            }
            match wait_event::<X, B::Error>(xs, deadline, self.transport.now_ns()) {
                Ok(()) => {}
                Err(RendezvousError::Key(KeyError::Store(e))) => return Err(e),
                Err(_) => return Ok(false),
            }
        }
    }
}

#[cfg(all(test, feature = "std", target_os = "linux"))]
mod tests;
#[cfg(all(test, feature = "std"))]
mod tests_ring;
#[cfg(all(test, feature = "std", target_os = "linux"))]
mod tests_teardown;
