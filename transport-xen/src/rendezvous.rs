//! The rendezvous through XenStore: the offering domain publishes its
//! [`XenTransport`] offer as XenStore keys under its own home, readable by
//! the peer domain alone; the accepting domain reads and validates them,
//! maps, binds and answers under *its* own home, readable by the offerer
//! alone. Both sides wait on XenStore watches, never by polling.
//!
//! ```text
//!  offerer O                                         acceptor A
//!  ─────────                                         ──────────
//!  XenTransport::offer (gntalloc, unbound port)
//!  rm + mkdir …/O/…/channels/A/NAME/offer
//!  set_perms [n O, r A] on it and on each key
//!  write version, port, to-acceptor, to-offerer,
//!        nrefs, refs0 … refsK, then state=offered ─▶ watch fires; read state,
//!                                                    every key, validate
//!                                                    XenTransport::accept (gntdev
//!                                                    map, bind, live byte, ring)
//!  watch on …/A/…/channels/O/NAME/answer fires ◀──── write version, offer-port,
//!  read state (=accepted, offer-port = ours),        port, then state=accepted
//!  or A's live byte already set → Link               (or state=refused, error)
//!  rm …/offer (teardown)                             rm …/answer: Rendezvous::withdraw
//! ```
//!
//! # The keys
//!
//! The offer lives under
//! `/local/domain/O/data/coresident/channels/A/NAME/offer/` ([`offer_path`]),
//! the answer under `/local/domain/A/data/coresident/channels/O/NAME/answer/`
//! ([`answer_path`]): each side writes only below its own `data/`, the part
//! of its home a guest may write after `xl create`. `NAME` tells apart
//! several channels between the same two domains (`[A-Za-z0-9_-]{1,64}`).
//! The residency agent's keys live elsewhere under `data/coresident/`.
//!
//! | key (offer) | value |
//! |---|---|
//! | `version` | [`RENDEZVOUS_VERSION`] (of these keys and of the live page) |
//! | `port` | the offerer's unbound event-channel port for A, `1..2^17` |
//! | `to-acceptor`, `to-offerer` | ring data sizes: powers of two in the ring's range |
//! | `nrefs` | grant references: the region's pages plus the live page |
//! | `refs0` … `refsK` | the references in order, [`REFS_PER_KEY`] per key, space-separated |
//! | `state` | `offered`, written last: the acceptor reads nothing before it |
//!
//! | key (answer) | value |
//! |---|---|
//! | `version` | [`RENDEZVOUS_VERSION`] |
//! | `offer-port` | the offer's `port`: ties the answer to this offer, not a stale one |
//! | `port` | the acceptor's local port of the channel (for diagnostics) |
//! | `error` | why the acceptor refused (text for humans, never parsed) |
//! | `state` | `accepted` or `refused`, written last |
//!
//! The values are the fields of the transport's 32-byte rendezvous header
//! ([`RendezvousHeader`]) in decimal; the offering domain is the one whose
//! home holds the offer, never a value. The acceptor rebuilds the header
//! from the keys and hands it to [`XenTransport::accept`], so the bytes stay
//! the transport's one validated encoding and every control path (XenStore,
//! a socket, a file) carries the same thing.
//!
//! Why split the references over keys rather than list them in the first
//! granted page: a value is at most 4096 bytes (`XENSTORE_PAYLOAD_MAX`), and
//! xenstored limits a guest's values to 2048 bytes by default (its
//! `quota-max-entry-size`); 128 references of at most 10 digits fit in
//! 1,408 bytes. A ring of 1 MiB per direction (libxenvchan's limit) needs
//! 514 references: five keys. Everything stays in XenStore, checked before
//! anything is mapped; a list in a granted page would need a first mapping
//! of a peer-chosen page before any check.
//!
//! # Permissions
//!
//! Every node of the offer (the directory and each key) gets
//! `[n O, r A]`: owned by the offerer, no access for any other domain, read
//! for the acceptor. The answer gets `[n A, r O]`. A domain that is neither
//! cannot read them (dom0 can read everything, as it can map everything).
//! Watch events reach a domain only for nodes it may read (xenstored's
//! XSA-115 rule).
//!
//! # Hostile values
//!
//! A guest writes its own subtree freely. Every value is parsed strictly
//! (plain decimal, in range), missing keys, a version mismatch, ports and
//! references out of range, a count of references that does not match the
//! ring sizes, and sizes that are not powers of two are each a typed
//! [`XsRendezvousError`]: never a panic. The acceptor answers `refused`
//! so the offerer learns it at once instead of at its timeout.
//!
//! # Teardown and peer death
//!
//! The offerer removes its offer when [`XsPending::complete`] returns,
//! whatever the outcome. The acceptor removes its answer with
//! [`Rendezvous::withdraw`], at once if it likes: the offerer also takes
//! the acceptor's live byte (set before the answer is written) as the
//! acceptance. A refusal should stay until the offerer has read it.
//!
//! Once the channel runs, a peer process that exits or unmaps is seen
//! through unmap-notify (the doorbell's `Wake::PeerGone`). A peer
//! *domain* that is destroyed runs no unmap-notify and Xen closes its event
//! channels without a signal, so the survivor watches XenStore instead:
//! [`Rendezvous::watch_peer`] and [`Rendezvous::wait_peer_gone`]
//! (`@releaseDomain`, and the toolstack removing the peer's home).
//!
//! # Watches
//!
//! [`Rendezvous::accept`] and [`XsPending::complete`] wait on a watch of
//! the other side's directory and re-read the keys at every event (events
//! are hints). They take the connection's watch events as they come:
//! events of the caller's other watches that arrive meanwhile are consumed,
//! so give the rendezvous a connection of its own (one more socket or
//! xenbus descriptor).

use core::fmt;
use core::time::Duration;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::time::Instant;

use coresident::{ChannelLayout, Link, Transport};
use zerocopy::little_endian::{U16, U32};
use zerocopy::IntoBytes;

use crate::linux::sys::{Linux, Sys};
use crate::protocol::keys::{self as keys, perms, ReadError, Store, TooLong};
use crate::protocol::xs_wire::{self, Perm, ValueError, XsErrno};
use crate::transport::{
    RendezvousError, RendezvousHeader, XenPending, RENDEZVOUS_MAGIC, RENDEZVOUS_VERSION,
};
use crate::transport::{XenDoorbell, XenRegion, XenTransport, XenTransportError};
use crate::types::{DomId, EvtchnPort, GrantRef, MAX_PAGES};
use crate::xenstore::XenStore;
use crate::xenstore::XsError;

pub use crate::protocol::keys::{
    Key, CHANNELS, FIRST_GRANT_REF, GRANT_REF_LIMIT, MAX_NAME_LEN, PORT_LIMIT, REFS_PER_KEY,
};

/// xenstored's special node fired whenever a domain is released.
pub const RELEASE_DOMAIN: &str = "@releaseDomain";

/// A failure of the XenStore rendezvous.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum XsRendezvousError {
    /// A channel name outside `[A-Za-z0-9_-]{1,64}`.
    BadName,
    /// XenStore failed (connection, permissions, quota).
    Xs(XsError),
    /// A key is missing (after `state` said the keys were all written).
    Missing(Key),
    /// A value that does not parse.
    Value(Key, ValueError),
    /// Another version of these keys.
    BadVersion(u32),
    /// A `state` value this version does not know.
    BadState(Key),
    /// A port outside `1..PORT_LIMIT`.
    BadPort(u32),
    /// A grant reference outside `FIRST_GRANT_REF..GRANT_REF_LIMIT`, or
    /// listed twice.
    BadRef(GrantRef),
    /// `nrefs` is 0 or above [`MAX_PAGES`], or the `refsN` keys hold
    /// another number of references.
    BadRefCount,
    /// The rebuilt rendezvous was refused by the transport (sizes that are
    /// not powers of two in range, a count that does not match them).
    Offer(RendezvousError),
    /// The transport failed (grant map, event channel, timeout waiting for
    /// the live byte, peer gone).
    Transport(XenTransportError),
    /// The acceptor refused the offer (its `error` key says why).
    Refused,
    /// Nothing (usable) appeared before the timeout.
    Timeout,
}

impl fmt::Display for XsRendezvousError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadName => f.write_str("channel name outside [A-Za-z0-9_-]{1,64}"),
            Self::Xs(e) => write!(f, "{e}"),
            Self::Missing(k) => write!(f, "rendezvous key {k} is missing"),
            Self::Value(k, e) => write!(f, "rendezvous key {k}: {e}"),
            Self::BadVersion(v) => write!(
                f,
                "rendezvous version {v}, this side speaks {RENDEZVOUS_VERSION}"
            ),
            Self::BadState(k) => write!(f, "rendezvous key {k} holds an unknown state"),
            Self::BadPort(p) => write!(f, "event-channel port {p} out of range"),
            Self::BadRef(r) => write!(f, "grant reference {r} out of range or repeated"),
            Self::BadRefCount => f.write_str("wrong number of grant references"),
            Self::Offer(e) => write!(f, "rendezvous refused: {e:?}"),
            Self::Transport(e) => write!(f, "{e}"),
            Self::Refused => f.write_str("the acceptor refused the offer"),
            Self::Timeout => f.write_str("the peer did not answer in time"),
        }
    }
}

impl std::error::Error for XsRendezvousError {}

impl From<XsError> for XsRendezvousError {
    fn from(e: XsError) -> Self {
        Self::Xs(e)
    }
}

impl From<ReadError<XsError>> for XsRendezvousError {
    fn from(e: ReadError<XsError>) -> Self {
        match e {
            ReadError::Store(e) => Self::Xs(e),
            // Paths fit their buffer for every valid name.
            ReadError::PathTooLong => Self::BadName,
            ReadError::Missing(k) => Self::Missing(k),
            ReadError::Value(k, e) => Self::Value(k, e),
            ReadError::BadVersion(v) => Self::BadVersion(v),
            ReadError::BadState(k) => Self::BadState(k),
            ReadError::BadPort(p) => Self::BadPort(p),
            ReadError::BadRef(r) => Self::BadRef(r),
            ReadError::BadRefCount => Self::BadRefCount,
        }
    }
}

impl From<TooLong> for XsRendezvousError {
    /// Only a channel name makes a path or value too long.
    fn from(_: TooLong) -> Self {
        Self::BadName
    }
}

/// [`Store`] over the client: each read's value is kept until the next.
struct Reader<'a, C: Read + Write + AsFd> {
    xs: &'a mut XenStore<C>,
    value: Vec<u8>,
}

impl<'a, C: Read + Write + AsFd> Reader<'a, C> {
    fn new(xs: &'a mut XenStore<C>) -> Self {
        Self {
            xs,
            value: Vec::new(),
        }
    }
}

impl<C: Read + Write + AsFd> Store for Reader<'_, C> {
    type Error = XsError;

    fn read(&mut self, path: &str) -> Result<&[u8], XsError> {
        self.value = self.xs.read(path)?;
        Ok(&self.value)
    }

    fn is_absent(e: &XsError) -> bool {
        matches!(e, XsError::NotFound)
    }

    fn is_unreadable(e: &XsError) -> bool {
        matches!(e, XsError::Daemon(XsErrno::EACCES))
    }
}

impl From<RendezvousError> for XsRendezvousError {
    fn from(e: RendezvousError) -> Self {
        Self::Offer(e)
    }
}

impl From<XenTransportError> for XsRendezvousError {
    fn from(e: XenTransportError) -> Self {
        match e {
            XenTransportError::Rendezvous(r) => Self::Offer(r),
            e => Self::Transport(e),
        }
    }
}

/// The offer's directory: `/local/domain/OFFERER/data/coresident/channels/ACCEPTOR/NAME/offer`.
pub fn offer_path(offerer: DomId, acceptor: DomId, name: &str) -> String {
    let mut p = String::new();
    // Writing to a `String` does not fail.
    let _ = keys::write_offer_dir(&mut p, offerer, acceptor, name);
    p
}

/// The answer's directory: `/local/domain/ACCEPTOR/data/coresident/channels/OFFERER/NAME/answer`.
pub fn answer_path(acceptor: DomId, offerer: DomId, name: &str) -> String {
    let mut p = String::new();
    // Writing to a `String` does not fail.
    let _ = keys::write_answer_dir(&mut p, acceptor, offerer, name);
    p
}

/// This domain's id, from its relative XenStore key `domid` (dom0 has one
/// too, written by `xen-init-dom0`).
///
/// # Errors
///
/// [`XsRendezvousError::Xs`].
pub fn own_domid<C: Read + Write + AsFd>(xs: &mut XenStore<C>) -> Result<DomId, XsRendezvousError> {
    let v = xs.read("domid")?;
    xs_wire::parse_u16(&v).map_err(|e| XsRendezvousError::Xs(XsError::Value(e)))
}

/// A validated offer, as read from XenStore.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offer {
    /// The offering domain (whose home holds the offer).
    pub offerer: DomId,
    /// The offerer's port.
    pub port: EvtchnPort,
    /// The ring sizes.
    pub layout: ChannelLayout,
    /// The grant references, region pages then the live page.
    pub refs: Vec<GrantRef>,
}

impl Offer {
    /// The transport's rendezvous bytes for this offer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let h = RendezvousHeader {
            magic: RENDEZVOUS_MAGIC,
            version: U16::new(RENDEZVOUS_VERSION),
            offerer: U16::new(self.offerer),
            port: U32::new(self.port),
            to_acceptor: U32::new(self.layout.to_acceptor),
            to_offerer: U32::new(self.layout.to_offerer),
            // `refs.len() <= MAX_PAGES` for offers built by `read_offer`;
            // a larger count saturates and the transport refuses it.
            nrefs: U32::new(u32::try_from(self.refs.len()).unwrap_or(u32::MAX)),
            reserved: [0; 8],
        };
        let mut v = h.as_bytes().to_vec();
        for r in &self.refs {
            v.extend_from_slice(&r.to_le_bytes());
        }
        v
    }
}

/// A Xen link: the region and the doorbell.
type XenLink<S> = Link<XenRegion<S>, XenDoorbell<S>>;

/// Either side's view of one named channel between two domains.
#[derive(Debug)]
pub struct Rendezvous<S: Sys = Linux> {
    own: DomId,
    peer: DomId,
    name: String,
    transport: XenTransport<S>,
}

/// An offer published in XenStore, waiting for the answer.
#[derive(Debug)]
#[must_use = "an offer is withdrawn only by complete or withdraw"]
pub struct XsPending<S: Sys = Linux> {
    pending: XenPending<S>,
    port: EvtchnPort,
    /// This domain (whose home holds the offer).
    own: DomId,
    /// The acceptor's domain.
    peer: DomId,
    offer: String,
    answer: String,
    token: String,
}

impl Rendezvous<Linux> {
    /// The channel `name` between this domain, `own`, and domain `peer`.
    ///
    /// # Errors
    ///
    /// [`XsRendezvousError::BadName`].
    pub fn new(own: DomId, peer: DomId, name: &str) -> Result<Self, XsRendezvousError> {
        Self::with_sys(Linux, own, peer, name)
    }
}

impl<S: Sys> Rendezvous<S> {
    /// As [`Rendezvous::new`], with the system calls of `sys`.
    ///
    /// # Errors
    ///
    /// [`XsRendezvousError::BadName`].
    pub fn with_sys(
        sys: S,
        own: DomId,
        peer: DomId,
        name: &str,
    ) -> Result<Self, XsRendezvousError> {
        if !keys::valid_name(name) {
            return Err(XsRendezvousError::BadName);
        }
        Ok(Self {
            own,
            peer,
            name: name.to_owned(),
            transport: XenTransport::with_sys(sys, own, peer),
        })
    }

    /// This domain.
    pub fn own(&self) -> DomId {
        self.own
    }

    /// The peer domain.
    pub fn peer(&self) -> DomId {
        self.peer
    }

    /// The channel's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Shares a region for `layout` with the peer and publishes the offer
    /// (keys, permissions, `state=offered` last). Finish with
    /// [`XsPending::complete`].
    ///
    /// # Errors
    ///
    /// [`XsRendezvousError::Transport`] (grants, event channel),
    /// [`XsRendezvousError::Offer`] (a layout the ring refuses),
    /// [`XsRendezvousError::Xs`] (the offer could not be written; what
    /// was written is removed).
    pub fn offer<C: Read + Write + AsFd>(
        &mut self,
        xs: &mut XenStore<C>,
        layout: ChannelLayout,
    ) -> Result<XsPending<S>, XsRendezvousError> {
        let mut buf = vec![0u8; size_of::<RendezvousHeader>() + 4 * MAX_PAGES];
        let (pending, n) = self.transport.offer(layout, &mut buf)?;
        // Our own bytes: parsing them back cannot fail unless the transport
        // changed its encoding, which is then an error, not a panic.
        let (h, _, refs) = XenTransport::parse_rendezvous(self.own, buf.get(..n).unwrap_or(&[]))?;
        let offer = offer_path(self.own, self.peer, &self.name);
        let answer = answer_path(self.peer, self.own, &self.name);
        let port = h.port.get();
        let r = publish_offer(xs, &offer, perms(self.own, self.peer), port, layout, &refs);
        if let Err(e) = r {
            remove_dir(xs, self.own, &offer);
            return Err(e);
        }
        Ok(XsPending {
            pending,
            port,
            own: self.own,
            peer: self.peer,
            offer,
            answer,
            token: format!("coresident/{}/{}/answer", self.peer, self.name),
        })
    }

    /// Reads and validates the peer's offer to us. `Ok(None)` while its
    /// `state` is absent (not written yet, or not yet readable by us).
    ///
    /// # Errors
    ///
    /// Every malformed key is a typed error (see [`XsRendezvousError`]).
    pub fn read_offer<C: Read + Write + AsFd>(
        &self,
        xs: &mut XenStore<C>,
    ) -> Result<Option<Offer>, XsRendezvousError> {
        read_offer(xs, self.peer, self.own, &self.name)
    }

    /// Waits (watching) for the peer's offer, validates it, maps the region,
    /// binds the event channel and answers `accepted`; a bad offer is
    /// answered `refused` with the reason. Then it waits until the offerer
    /// has taken the answer (it removes its offer) or [`ANSWER_LINGER`]
    /// has passed, and removes the answer and every node it left empty
    /// (issue 17, finding 9): nothing of the rendezvous stays in XenStore,
    /// whatever the outcome.
    ///
    /// # Errors
    ///
    /// [`XsRendezvousError::Timeout`] when no offer appeared in time; the
    /// validation errors of [`Rendezvous::read_offer`]; the transport's.
    pub fn accept<C: Read + Write + AsFd>(
        &mut self,
        xs: &mut XenStore<C>,
        timeout: Option<Duration>,
    ) -> Result<Link<XenRegion<S>, XenDoorbell<S>>, XsRendezvousError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let offer_dir = offer_path(self.peer, self.own, &self.name);
        let token = format!("coresident/{}/{}/offer", self.peer, self.name);
        xs.watch(&offer_dir, &token)?;
        let r = self.accept_watched(xs, deadline);
        let answer = answer_path(self.own, self.peer, &self.name);
        let r = match r {
            Ok((link, offer_port)) => {
                let port = link.doorbell.port();
                write_answer(
                    xs,
                    &answer,
                    perms(self.own, self.peer),
                    offer_port,
                    Ok(port),
                )
                .map(|()| (link, Some(offer_port)))
            }
            Err(e) => {
                let mut answered = None;
                if e != XsRendezvousError::Timeout && !matches!(e, XsRendezvousError::Xs(_)) {
                    // Echo the offer's port if it is readable, so the offerer
                    // knows the refusal is about this offer.
                    let port =
                        keys::read_u32(&mut Reader::new(xs), &offer_dir, Key::Port).unwrap_or(0);
                    if write_answer(xs, &answer, perms(self.own, self.peer), port, Err(e)).is_ok() {
                        answered = Some(port);
                    }
                }
                linger(xs, &offer_dir, answered, deadline);
                let _ = xs.unwatch(&offer_dir, &token);
                remove_dir(xs, self.own, &answer);
                return Err(e);
            }
        };
        if let Ok((_, port)) = &r {
            linger(xs, &offer_dir, *port, deadline);
        }
        let _ = xs.unwatch(&offer_dir, &token);
        remove_dir(xs, self.own, &answer);
        r.map(|(link, _)| link)
    }

    fn accept_watched<C: Read + Write + AsFd>(
        &mut self,
        xs: &mut XenStore<C>,
        deadline: Option<Instant>,
    ) -> Result<(XenLink<S>, EvtchnPort), XsRendezvousError> {
        let offer = loop {
            if let Some(offer) = read_offer(xs, self.peer, self.own, &self.name)? {
                break offer;
            }
            wait_event(xs, deadline)?;
        };
        let link = self.transport.accept(&offer.to_bytes())?;
        Ok((link, offer.port))
    }

    /// Removes this side's keys of the channel (our offer and our answer),
    /// if any, and the nodes above them left empty. [`Rendezvous::accept`]
    /// and [`XsPending::complete`] already do; this is for a side that
    /// gives up another way. `xl destroy` removes a dead guest's whole home.
    ///
    /// # Errors
    ///
    /// [`XsRendezvousError::Xs`] (a missing key is not an error).
    pub fn withdraw<C: Read + Write + AsFd>(
        &self,
        xs: &mut XenStore<C>,
    ) -> Result<(), XsRendezvousError> {
        for dir in [
            offer_path(self.own, self.peer, &self.name),
            answer_path(self.own, self.peer, &self.name),
        ] {
            match xs.rm(&dir) {
                Ok(()) | Err(XsError::NotFound) => {}
                Err(e) => return Err(e.into()),
            }
            prune(xs, self.own, &dir)?;
        }
        Ok(())
    }
}

impl<S: Sys> Rendezvous<S> {
    /// Watches for the peer domain's death: xenstored fires
    /// [`RELEASE_DOMAIN`] when any domain is released, and the toolstack
    /// removes the domain's home when it destroys it. A destroyed domain
    /// runs no unmap-notify (its kernel is gone, and Xen closes its event
    /// channels without signalling the other end), so this is how a
    /// survivor learns of `xl destroy`; then call
    /// `Channel::peer_left` and take back what the peer had not consumed.
    ///
    /// # Errors
    ///
    /// [`XsRendezvousError::Xs`] (a guest may not be allowed the special
    /// watch).
    pub fn watch_peer<C: Read + Write + AsFd>(
        &self,
        xs: &mut XenStore<C>,
    ) -> Result<(), XsRendezvousError> {
        Ok(xs.watch(RELEASE_DOMAIN, &self.release_token())?)
    }

    /// Stops [`Rendezvous::watch_peer`]'s watch.
    ///
    /// # Errors
    ///
    /// [`XsRendezvousError::Xs`].
    pub fn unwatch_peer<C: Read + Write + AsFd>(
        &self,
        xs: &mut XenStore<C>,
    ) -> Result<(), XsRendezvousError> {
        Ok(xs.unwatch(RELEASE_DOMAIN, &self.release_token())?)
    }

    fn release_token(&self) -> String {
        format!("coresident/release/{}/{}", self.peer, self.name)
    }

    /// Whether the peer's home (`/local/domain/PEER`) still exists.
    ///
    /// # Errors
    ///
    /// [`XsRendezvousError::Xs`] for anything but "not found" and "not
    /// yours to read" (which means it exists).
    pub fn peer_present<C: Read + Write + AsFd>(
        &self,
        xs: &mut XenStore<C>,
    ) -> Result<bool, XsRendezvousError> {
        home_exists(xs, self.peer)
    }

    /// Waits, on the watch set by [`Rendezvous::watch_peer`], until the
    /// peer's home is gone: `Ok(true)`, or `Ok(false)` at the timeout.
    ///
    /// # Errors
    ///
    /// [`XsRendezvousError::Xs`].
    pub fn wait_peer_gone<C: Read + Write + AsFd>(
        &self,
        xs: &mut XenStore<C>,
        timeout: Option<Duration>,
    ) -> Result<bool, XsRendezvousError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if !self.peer_present(xs)? {
                return Ok(true);
            }
            match wait_event(xs, deadline) {
                Ok(()) => {}
                Err(XsRendezvousError::Timeout) => return Ok(false),
                Err(e) => return Err(e),
            }
        }
    }
}

/// Writes an offer's keys under `dir` (removing a stale one first), each
/// with `perms`; `state=offered` last.
fn publish_offer<C: Read + Write + AsFd>(
    xs: &mut XenStore<C>,
    dir: &str,
    perms: [Perm; 2],
    port: EvtchnPort,
    layout: ChannelLayout,
    refs: &[GrantRef],
) -> Result<(), XsRendezvousError> {
    let mut put = fresh_dir(xs, dir, perms)?;
    keys::write_offer(
        &mut put,
        port,
        layout,
        refs.len(),
        &mut refs.iter().copied(),
    )
}

/// Writes the answer under `dir`: `accepted` with our port, or `refused`
/// with the reason; `state` last.
fn write_answer<C: Read + Write + AsFd>(
    xs: &mut XenStore<C>,
    dir: &str,
    perms: [Perm; 2],
    offer_port: EvtchnPort,
    outcome: Result<EvtchnPort, XsRendezvousError>,
) -> Result<(), XsRendezvousError> {
    let mut put = fresh_dir(xs, dir, perms)?;
    let outcome = match &outcome {
        Ok(port) => Ok(*port),
        Err(e) => Err(e as &dyn fmt::Display),
    };
    keys::write_answer(&mut put, offer_port, outcome)
}

/// Replaces `dir` by an empty directory with `perms`; returns a writer of
/// keys below it, each with `perms` too.
fn fresh_dir<'a, C: Read + Write + AsFd>(
    xs: &'a mut XenStore<C>,
    dir: &'a str,
    perms: [Perm; 2],
) -> Result<impl FnMut(&str, &[u8]) -> Result<(), XsRendezvousError> + 'a, XsRendezvousError> {
    match xs.rm(dir) {
        Ok(()) | Err(XsError::NotFound) => {}
        Err(e) => return Err(e.into()),
    }
    xs.mkdir(dir)?;
    xs.set_perms(dir, &perms)?;
    Ok(move |key: &str, value: &[u8]| {
        let path = format!("{dir}/{key}");
        xs.write(&path, value)?;
        // New nodes inherit their parent's permissions in xenstored; set
        // them anyway, so no other store can differ.
        xs.set_perms(&path, &perms)?;
        Ok(())
    })
}

/// Waits (the caller watches `dir`) for an answer to the offer whose port
/// is `port`: `Ok` for `accepted` (the tests' view of
/// [`XsPending::complete`]'s answer handling).
#[cfg(test)]
fn wait_answer<C: Read + Write + AsFd>(
    xs: &mut XenStore<C>,
    dir: &str,
    port: EvtchnPort,
    deadline: Option<Instant>,
    live: &dyn Fn() -> bool,
) -> Result<(), XsRendezvousError> {
    loop {
        // The acceptor sets its live byte before it answers, and may
        // withdraw its answer as soon as it wrote it: a set live byte is
        // an acceptance whether or not we saw the answer.
        if live() {
            return Ok(());
        }
        match keys::read_answer(&mut Reader::new(xs), dir, port)? {
            Some(true) => return Ok(()),
            Some(false) => return Err(XsRendezvousError::Refused),
            None => {}
        }
        wait_event(xs, deadline)?;
    }
}

/// How long [`Rendezvous::accept`] waits, after it answered, for the
/// offerer to take the answer (it removes its offer) before removing it.
pub const ANSWER_LINGER: Duration = Duration::from_secs(5);

/// After an answer to the offer of `port` (`None`: no answer was written),
/// waits (the caller watches `offer_dir`) until that offer is gone or
/// replaced, at most [`ANSWER_LINGER`] and never past `deadline`.
fn linger<C: Read + Write + AsFd>(
    xs: &mut XenStore<C>,
    offer_dir: &str,
    port: Option<EvtchnPort>,
    deadline: Option<Instant>,
) {
    let Some(port) = port else { return };
    let end = Instant::now() + ANSWER_LINGER;
    let end = deadline.map_or(end, |d| d.min(end));
    loop {
        // Gone (no `state`), or another offer (another port) in its place.
        // An offer whose port cannot be read is still the one we answered.
        match xs.read(&format!("{offer_dir}/{}", Key::State)) {
            Ok(_) | Err(XsError::Daemon(XsErrno::EACCES)) => {}
            Err(_) => return,
        }
        match keys::read_u32(&mut Reader::new(xs), offer_dir, Key::Port) {
            Ok(p) if p != port => return,
            _ => {}
        }
        if wait_event(xs, Some(end)).is_err() {
            return;
        }
    }
}

/// Removes our `dir` (a missing one is fine) and the nodes above it left
/// empty; best effort (teardown: the outcome the caller gets is already
/// decided).
fn remove_dir<C: Read + Write + AsFd>(xs: &mut XenStore<C>, own: DomId, dir: &str) {
    match xs.rm(dir) {
        Ok(()) | Err(XsError::NotFound) => {
            let _ = prune(xs, own, dir);
        }
        Err(_) => {}
    }
}

/// Removes the ancestors of `dir` that are left empty (no children, no
/// value), from its parent up to our `data/coresident` (never `data`,
/// the toolstack's): `channels/<peer>/<name>`, `channels/<peer>`,
/// `channels`, `data/coresident`. Each in a transaction, so a sibling
/// another of our processes creates meanwhile is never removed (the
/// commit fails and the check is redone).
///
/// # Errors
///
/// [`XsRendezvousError::Xs`].
fn prune<C: Read + Write + AsFd>(
    xs: &mut XenStore<C>,
    own: DomId,
    dir: &str,
) -> Result<(), XsRendezvousError> {
    let top = format!("/local/domain/{own}/data/coresident");
    let mut p = dir;
    while let Some(i) = p.rfind('/') {
        p = p.get(..i).unwrap_or("");
        if !p.starts_with(&top) {
            break;
        }
        if !remove_if_empty(xs, p)? {
            break;
        }
    }
    Ok(())
}

/// Removes `p` if it has no children and no value: whether it is gone.
fn remove_if_empty<C: Read + Write + AsFd>(
    xs: &mut XenStore<C>,
    p: &str,
) -> Result<bool, XsRendezvousError> {
    for _ in 0..16 {
        let mut tx = xs.transaction()?;
        match tx.directory(p) {
            Ok(kids) if kids.is_empty() => {}
            Ok(_) => return Ok(false),
            Err(XsError::NotFound) => return Ok(true),
            Err(e) => return Err(e.into()),
        }
        match tx.read(p) {
            Ok(v) if v.is_empty() => {}
            Ok(_) => return Ok(false),
            Err(XsError::NotFound) => return Ok(true),
            Err(e) => return Err(e.into()),
        }
        tx.rm(p)?;
        match tx.commit() {
            Ok(()) => return Ok(true),
            Err(XsError::Daemon(XsErrno::EAGAIN)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(false)
}

/// Whether `/local/domain/D` exists (`EACCES`: it exists, not ours to
/// read).
fn home_exists<C: Read + Write + AsFd>(
    xs: &mut XenStore<C>,
    d: DomId,
) -> Result<bool, XsRendezvousError> {
    match xs.read(&format!("/local/domain/{d}")) {
        Ok(_) | Err(XsError::Daemon(XsErrno::EACCES)) => Ok(true),
        Err(XsError::NotFound) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Waits for the next watch event before `deadline`.
fn wait_event<C: Read + Write + AsFd>(
    xs: &mut XenStore<C>,
    deadline: Option<Instant>,
) -> Result<(), XsRendezvousError> {
    let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
    if left.is_some_and(|l| l.is_zero()) {
        return Err(XsRendezvousError::Timeout);
    }
    match xs.wait_watch(left)? {
        Some(_) => Ok(()),
        None => Err(XsRendezvousError::Timeout),
    }
}

/// Reads and validates the offer of channel `name` from `offerer` to
/// `acceptor` (see [`Rendezvous::read_offer`]).
///
/// # Errors
///
/// As [`Rendezvous::read_offer`].
pub fn read_offer<C: Read + Write + AsFd>(
    xs: &mut XenStore<C>,
    offerer: DomId,
    acceptor: DomId,
    name: &str,
) -> Result<Option<Offer>, XsRendezvousError> {
    if !keys::valid_name(name) {
        return Err(XsRendezvousError::BadName);
    }
    let dir = offer_path(offerer, acceptor, name);
    let mut refs = Vec::new();
    let mut push = |r| {
        refs.push(r);
        Ok(())
    };
    let Some(k) = keys::read_offer(&mut Reader::new(xs), &dir, MAX_PAGES, &mut push)? else {
        return Ok(None);
    };
    let mut sorted = refs.clone();
    sorted.sort_unstable();
    if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
        return Err(XsRendezvousError::BadRef(w[0]));
    }
    let offer = Offer {
        offerer,
        port: k.port,
        layout: k.layout,
        refs,
    };
    // The transport's own checks: sizes, and the count for those sizes.
    XenTransport::parse_rendezvous(offerer, &offer.to_bytes())?;
    Ok(Some(offer))
}

impl<S: Sys> XsPending<S> {
    /// The offer's directory in XenStore.
    pub fn offer_path(&self) -> &str {
        &self.offer
    }

    /// Waits for the acceptor: `accepted` for this offer (or its live
    /// byte), then removes the offer and every node it left empty from
    /// XenStore, whatever the outcome. Besides the answer's watch it waits
    /// on the offer's event channel and on `@releaseDomain` (issue 17,
    /// finding 10): an acceptor that mapped and bound and then died before
    /// it answered (its unmap-notify clears its live byte and fires our
    /// port), or whose domain was destroyed (its home goes), is
    /// [`XenTransportError::PeerGone`] at once, not at the timeout.
    ///
    /// # Errors
    ///
    /// [`XsRendezvousError::Timeout`], [`XsRendezvousError::Refused`], a
    /// malformed answer, [`XsRendezvousError::Transport`] (`PeerGone`; the
    /// live byte never came).
    pub fn complete<C: Read + Write + AsFd>(
        self,
        xs: &mut XenStore<C>,
        timeout: Option<Duration>,
    ) -> Result<Link<XenRegion<S>, XenDoorbell<S>>, XsRendezvousError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let release = format!("{}/release", self.token);
        let r = xs
            .watch(&self.answer, &self.token)
            .map_err(XsRendezvousError::from)
            .and_then(|()| {
                // Best effort: a guest may not be allowed the special watch
                // (then the answer's watch, which fires when the acceptor's
                // home is removed, and the event channel remain).
                let released = xs.watch(RELEASE_DOMAIN, &release).is_ok();
                let r = self.wait_accepted(xs, deadline);
                let _ = xs.unwatch(&self.answer, &self.token);
                if released {
                    let _ = xs.unwatch(RELEASE_DOMAIN, &release);
                }
                r
            });
        remove_dir(xs, self.own, &self.offer);
        r?;
        // Accepted: the acceptor set its live byte before it answered. If
        // the byte is clear now, it has come and gone already (or lied):
        // the channel says so at once, and what it sent can be received.
        Ok(self.pending.into_link())
    }

    /// The watched wait of [`complete`](Self::complete).
    fn wait_accepted<C: Read + Write + AsFd>(
        &self,
        xs: &mut XenStore<C>,
        deadline: Option<Instant>,
    ) -> Result<(), XsRendezvousError> {
        let gone = XsRendezvousError::Transport(XenTransportError::PeerGone);
        loop {
            // The acceptor sets its live byte before it answers, and may
            // withdraw its answer as soon as it wrote it: a set live byte is
            // an acceptance whether or not we saw the answer.
            if self.pending.peer_alive() {
                return Ok(());
            }
            match keys::read_answer(&mut Reader::new(xs), &self.answer, self.port)? {
                Some(true) => return Ok(()),
                Some(false) => return Err(XsRendezvousError::Refused),
                None => {}
            }
            if !home_exists(xs, self.peer)? {
                return Err(gone);
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|l| l.is_zero()) {
                return Err(XsRendezvousError::Timeout);
            }
            let (store, port) = if xs.has_queued_event() {
                (true, false)
            } else {
                crate::linux::sys::poll_two(xs.fd(), self.pending.event_fd(), left)
                    .map_err(|e| XsRendezvousError::Xs(XsError::Io(e)))?
            };
            if port && self.pending.take_events()? && !self.pending.peer_alive() {
                return Err(gone);
            }
            if store {
                // Take every queued event; the loop re-reads what they name.
                while xs.wait_watch(Some(Duration::ZERO))?.is_some() {}
            }
        }
    }

    /// Withdraws the offer without waiting (its grants are released when
    /// `self` drops).
    ///
    /// # Errors
    ///
    /// [`XsRendezvousError::Xs`].
    pub fn withdraw<C: Read + Write + AsFd>(
        self,
        xs: &mut XenStore<C>,
    ) -> Result<(), XsRendezvousError> {
        match xs.rm(&self.offer) {
            Ok(()) | Err(XsError::NotFound) => {}
            Err(e) => return Err(e.into()),
        }
        prune(xs, self.own, &self.offer)
    }
}

#[cfg(test)]
mod tests_teardown;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xenstore::socket_tests::client;
    use std::os::unix::net::UnixStream;

    const O: DomId = 0;
    const A: DomId = 3;
    const NAME: &str = "chan-1";

    fn layout() -> ChannelLayout {
        // 1 MiB per direction: libxenvchan's limit, five `refsN` keys.
        ChannelLayout::symmetric(1 << 20)
    }

    /// The transport's count: the region's pages plus the live page.
    fn pages_for(layout: ChannelLayout) -> usize {
        layout.region_len().div_ceil(4096) + 1
    }

    fn refs(layout: ChannelLayout) -> Vec<GrantRef> {
        (0..pages_for(layout) as u32).map(|i| 100 + 3 * i).collect()
    }

    fn publish(xs: &mut XenStore<UnixStream>) -> String {
        let dir = offer_path(O, A, NAME);
        publish_offer(xs, &dir, perms(O, A), 9, layout(), &refs(layout())).unwrap();
        dir
    }

    fn read(xs: &mut XenStore<UnixStream>) -> Result<Option<Offer>, XsRendezvousError> {
        read_offer(xs, O, A, NAME)
    }

    #[test]
    fn offer_round_trip_over_five_refs_keys() {
        let (mut xs, _t) = client();
        assert_eq!(read(&mut xs), Ok(None), "nothing published yet");
        let dir = publish(&mut xs);
        assert_eq!(
            dir,
            "/local/domain/0/data/coresident/channels/3/chan-1/offer"
        );
        let offer = read(&mut xs).unwrap().unwrap();
        assert_eq!(offer.offerer, O);
        assert_eq!(offer.port, 9);
        assert_eq!(offer.layout, layout());
        assert_eq!(offer.refs, refs(layout()));
        assert_eq!(offer.refs.len(), 514);
        let mut keys = xs.directory(&dir).unwrap();
        keys.sort();
        assert_eq!(
            keys,
            [
                "nrefs",
                "port",
                "refs0",
                "refs1",
                "refs2",
                "refs3",
                "refs4",
                "state",
                "to-acceptor",
                "to-offerer",
                "version"
            ]
        );
        for k in keys {
            let v = xs.read(&format!("{dir}/{k}")).unwrap();
            assert!(
                v.len() <= 2048,
                "{k}: {} bytes over the guest quota",
                v.len()
            );
            assert_eq!(xs.get_perms(&format!("{dir}/{k}")).unwrap(), perms(O, A));
        }
        assert_eq!(xs.get_perms(&dir).unwrap(), perms(O, A));
        // The transport takes the rebuilt bytes.
        let (h, l, r) = XenTransport::parse_rendezvous(O, &offer.to_bytes()).unwrap();
        assert_eq!((h.port.get(), l, r), (9, layout(), refs(layout())));
        // Publishing again replaces the offer, leaving no stale key.
        publish_offer(
            &mut xs,
            &dir,
            perms(O, A),
            11,
            ChannelLayout::symmetric(4096),
            &refs(ChannelLayout::symmetric(4096)),
        )
        .unwrap();
        assert_eq!(read(&mut xs).unwrap().unwrap().port, 11);
        assert_eq!(xs.read(&format!("{dir}/refs1")), Err(XsError::NotFound));
    }

    /// Publishes a good offer, applies `f` to it, and reads it back.
    fn hostile(
        f: impl FnOnce(&mut XenStore<UnixStream>, &str),
    ) -> Result<Option<Offer>, XsRendezvousError> {
        let (mut xs, _t) = client();
        let dir = publish(&mut xs);
        f(&mut xs, &dir);
        read(&mut xs)
    }

    fn set(
        value: &'static [u8],
        key: &'static str,
    ) -> impl FnOnce(&mut XenStore<UnixStream>, &str) {
        move |xs, dir| xs.write(&format!("{dir}/{key}"), value).unwrap()
    }

    #[test]
    fn every_missing_key_is_named() {
        for (key, k) in [
            ("version", Key::Version),
            ("port", Key::Port),
            ("to-acceptor", Key::ToAcceptor),
            ("to-offerer", Key::ToOfferer),
            ("nrefs", Key::Nrefs),
            ("refs0", Key::Refs(0)),
            ("refs4", Key::Refs(4)),
        ] {
            let r = hostile(|xs, dir| xs.rm(&format!("{dir}/{key}")).unwrap());
            assert_eq!(r, Err(XsRendezvousError::Missing(k)), "{key}");
        }
        // Without `state` the offer is simply not there yet.
        assert_eq!(
            hostile(|xs, dir| xs.rm(&format!("{dir}/state")).unwrap()),
            Ok(None)
        );
    }

    #[test]
    fn garbage_values_are_typed_errors() {
        let huge: &'static [u8] = Box::leak(vec![b'9'; 4000].into_boxed_slice());
        let garbage: [(&[u8], ValueError); 7] = [
            (b"", ValueError::Empty),
            (b"abc", ValueError::NotANumber),
            (b"-1", ValueError::NotANumber),
            (b" 9", ValueError::NotANumber),
            (b"0x10", ValueError::NotANumber),
            (b"4294967296", ValueError::OutOfRange),
            (huge, ValueError::OutOfRange),
        ];
        for (key, k) in [
            ("version", Key::Version),
            ("port", Key::Port),
            ("to-acceptor", Key::ToAcceptor),
            ("to-offerer", Key::ToOfferer),
            ("nrefs", Key::Nrefs),
            ("refs2", Key::Refs(2)),
        ] {
            for (v, mut e) in garbage {
                if key == "refs2" && v == b" 9" {
                    // A list: the leading space leaves an empty first entry.
                    e = ValueError::Empty;
                }
                let r = hostile(set(v, key));
                assert_eq!(r, Err(XsRendezvousError::Value(k, e)), "{key} = {v:?}");
            }
        }
        assert_eq!(
            hostile(set(b"offered?", "state")),
            Err(XsRendezvousError::BadState(Key::State))
        );
        assert_eq!(
            hostile(set(b"\xff\x00", "state")),
            Err(XsRendezvousError::BadState(Key::State))
        );
    }

    #[test]
    fn out_of_range_values_are_refused() {
        assert_eq!(
            hostile(set(b"2", "version")),
            Err(XsRendezvousError::BadVersion(2))
        );
        for (v, p) in [
            (&b"0"[..], 0),
            (b"131072", 1 << 17),
            (b"4294967295", u32::MAX),
        ] {
            assert_eq!(hostile(set(v, "port")), Err(XsRendezvousError::BadPort(p)));
        }
        for v in [&b"0"[..], b"32", b"1000", b"2147483648"] {
            assert_eq!(
                hostile(set(v, "to-acceptor")),
                Err(XsRendezvousError::Offer(RendezvousError::BadLayout)),
                "{v:?}"
            );
        }
        for v in [&b"0"[..], b"4097", b"4294967295"] {
            assert_eq!(
                hostile(set(v, "nrefs")),
                Err(XsRendezvousError::BadRefCount),
                "{v:?}"
            );
        }
        // One reference fewer: the last key holds one too many.
        assert_eq!(
            hostile(set(b"513", "nrefs")),
            Err(XsRendezvousError::BadRefCount)
        );
        // Consistent keys, but not the count these ring sizes need.
        assert_eq!(
            hostile(|xs, dir| {
                xs.write(&format!("{dir}/nrefs"), b"3").unwrap();
                xs.write(&format!("{dir}/refs0"), b"8 9 10").unwrap();
                for k in 1..5 {
                    xs.rm(&format!("{dir}/refs{k}")).unwrap();
                }
            }),
            Err(XsRendezvousError::Offer(RendezvousError::BadPageCount))
        );
        // A key beyond the count.
        assert_eq!(
            hostile(set(b"8", "refs5")),
            Err(XsRendezvousError::BadRefCount)
        );
    }

    #[test]
    fn hostile_reference_lists() {
        // 128 refs per key: build variants of refs0.
        let good: Vec<String> = refs(layout())[..REFS_PER_KEY]
            .iter()
            .map(u32::to_string)
            .collect();
        let with = |i: usize, v: &str| {
            let mut l = good.clone();
            l[i] = v.to_owned();
            l.join(" ").into_bytes()
        };
        let cases: Vec<(Vec<u8>, XsRendezvousError)> = vec![
            (with(5, "7"), XsRendezvousError::BadRef(7)),
            (with(0, "0"), XsRendezvousError::BadRef(0)),
            (with(9, "1048576"), XsRendezvousError::BadRef(1 << 20)),
            (with(3, "100"), XsRendezvousError::BadRef(100)),
            (
                with(3, "x"),
                XsRendezvousError::Value(Key::Refs(0), ValueError::NotANumber),
            ),
            (
                with(3, ""),
                XsRendezvousError::Value(Key::Refs(0), ValueError::Empty),
            ),
            (
                with(127, "99999999999"),
                XsRendezvousError::Value(Key::Refs(0), ValueError::OutOfRange),
            ),
            (
                [good.join(" ").as_bytes(), b" "].concat(),
                XsRendezvousError::Value(Key::Refs(0), ValueError::Empty),
            ),
            (
                [good.join(" ").as_bytes(), b" 5000"].concat(),
                XsRendezvousError::BadRefCount,
            ),
            (
                good[..127].join(" ").into_bytes(),
                XsRendezvousError::BadRefCount,
            ),
            (
                good.join(",").into_bytes(),
                XsRendezvousError::Value(Key::Refs(0), ValueError::NotANumber),
            ),
        ];
        for (v, e) in cases {
            let r = hostile(|xs, dir| xs.write(&format!("{dir}/refs0"), &v).unwrap());
            assert_eq!(r, Err(e), "{}", String::from_utf8_lossy(&v));
        }
    }

    #[test]
    fn answers_name_their_offer() {
        let (mut xs, _t) = client();
        let dir = answer_path(A, O, NAME);
        assert_eq!(
            dir,
            "/local/domain/3/data/coresident/channels/0/chan-1/answer"
        );
        let soon = || Some(Instant::now() + Duration::from_millis(50));
        assert_eq!(
            wait_answer(&mut xs, &dir, 9, soon(), &|| false),
            Err(XsRendezvousError::Timeout)
        );
        // An acceptor that withdrew its answer at once: its live byte says it.
        assert_eq!(wait_answer(&mut xs, &dir, 9, soon(), &|| true), Ok(()));
        write_answer(&mut xs, &dir, perms(A, O), 9, Ok(21)).unwrap();
        assert_eq!(wait_answer(&mut xs, &dir, 9, soon(), &|| false), Ok(()));
        assert_eq!(xs.get_perms(&format!("{dir}/state")).unwrap(), perms(A, O));
        // A stale answer, to another offer, is not ours: keep waiting.
        assert_eq!(
            wait_answer(&mut xs, &dir, 10, soon(), &|| false),
            Err(XsRendezvousError::Timeout)
        );
        write_answer(
            &mut xs,
            &dir,
            perms(A, O),
            9,
            Err(XsRendezvousError::BadPort(0)),
        )
        .unwrap();
        assert_eq!(
            wait_answer(&mut xs, &dir, 9, soon(), &|| false),
            Err(XsRendezvousError::Refused)
        );
        assert_eq!(xs.read(&format!("{dir}/port")), Err(XsError::NotFound));
        assert!(xs
            .read_string(&format!("{dir}/error"))
            .unwrap()
            .contains("port 0"));
        for (key, v, e) in [
            (
                "state",
                &b"maybe"[..],
                XsRendezvousError::BadState(Key::State),
            ),
            ("version", b"7", XsRendezvousError::BadVersion(7)),
            (
                "version",
                b"x",
                XsRendezvousError::Value(Key::Version, ValueError::NotANumber),
            ),
            (
                "offer-port",
                b"-9",
                XsRendezvousError::Value(Key::OfferPort, ValueError::NotANumber),
            ),
        ] {
            write_answer(&mut xs, &dir, perms(A, O), 9, Ok(21)).unwrap();
            xs.write(&format!("{dir}/{key}"), v).unwrap();
            assert_eq!(
                wait_answer(&mut xs, &dir, 9, soon(), &|| false),
                Err(e),
                "{key}"
            );
        }
    }

    #[test]
    fn peer_death_is_the_peer_home_going_away() {
        let (mut xs, _t) = client();
        let rdv = Rendezvous::new(0, 5, NAME).unwrap();
        xs.mkdir("/local/domain/5").unwrap();
        rdv.watch_peer(&mut xs).unwrap();
        assert_eq!(rdv.peer_present(&mut xs), Ok(true));
        assert_eq!(
            rdv.wait_peer_gone(&mut xs, Some(Duration::from_millis(50))),
            Ok(false)
        );
        xs.rm("/local/domain/5").unwrap();
        assert_eq!(rdv.peer_present(&mut xs), Ok(false));
        assert_eq!(
            rdv.wait_peer_gone(&mut xs, Some(Duration::from_millis(50))),
            Ok(true)
        );
        rdv.unwatch_peer(&mut xs).unwrap();
    }

    #[test]
    fn names_are_checked() {
        for bad in ["", "a/b", "..", "a b", "é", &"x".repeat(65), "a\0b"] {
            assert_eq!(
                Rendezvous::new(0, 1, bad).map(drop),
                Err(XsRendezvousError::BadName),
                "{bad:?}"
            );
        }
        let r = Rendezvous::new(0, 1, &"x".repeat(64)).unwrap();
        assert_eq!((r.own(), r.peer(), r.name().len()), (0, 1, 64));
        let (mut xs, _t) = client();
        assert_eq!(
            read_offer(&mut xs, 0, 1, "../x"),
            Err(XsRendezvousError::BadName)
        );
    }
}
