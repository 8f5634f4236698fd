//! The XenStore side of one channel's rendezvous, without a transport:
//! [`ChannelKeys`] publishes an offer's fields ([`crxg::Offer`]), reads and
//! checks the peer's, answers, waits for the answer, and tears every node
//! down again (issue 17, findings 9 and 10). [`Rendezvous`](super::Rendezvous)
//! drives it for [`XenTransport`](crate::transport::XenTransport); a PV
//! kernel whose transport is not one yet (`pv-domu`) drives it by hand.
//! Generic over the XenStore client ([`XsClient`]), `core` only, no
//! allocation.

use core::fmt;

use crate::protocol::crxg::Offer;
use crate::protocol::keys::{self, Key, KeyError, Name, Path, CHANNELS, TOP};
use crate::protocol::xs_wire::{Perm, WireError, XsErrno};
use crate::types::{DomId, EvtchnPort, GrantRef};
use crate::xenstore::{XsClient, XsError, TX_RETRIES};

/// The keys of the channel `name` between this domain (`own`) and `peer`,
/// in a context (`data/coresident/CONTEXT/...`; [`CHANNELS`] by default).
///
/// # Examples
///
/// ```
/// use coresident_xen::rendezvous::ChannelKeys;
///
/// let k = ChannelKeys::new(5, 0, "pv")?;
/// assert_eq!(k.offer_dir()?.as_str(), "/local/domain/5/data/coresident/channels/0/pv/offer");
/// assert_eq!(k.peer_answer_dir()?.as_str(), "/local/domain/0/data/coresident/channels/5/pv/answer");
/// # Ok::<(), coresident_xen::protocol::keys::KeyError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelKeys {
    own: DomId,
    peer: DomId,
    context: Name,
    name: Name,
}

impl ChannelKeys {
    /// The channel `name` between `own` and `peer`, in the context
    /// [`CHANNELS`].
    ///
    /// # Errors
    ///
    /// [`KeyError::BadName`].
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::protocol::keys::KeyError;
    /// use coresident_xen::rendezvous::ChannelKeys;
    ///
    /// let k = ChannelKeys::new(5, 0, "pv")?;
    /// assert_eq!((k.own(), k.peer(), k.name().as_str()), (5, 0, "pv"));
    /// assert_eq!(ChannelKeys::new(5, 0, "a b"), Err(KeyError::BadName));
    /// # Ok::<(), KeyError>(())
    /// ```
    pub fn new(own: DomId, peer: DomId, name: &str) -> Result<Self, KeyError> {
        Ok(Self {
            own,
            peer,
            context: Name::new(CHANNELS)?,
            name: Name::new(name)?,
        })
    }

    /// The same channel in another context.
    ///
    /// # Errors
    ///
    /// [`KeyError::BadName`].
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::rendezvous::ChannelKeys;
    ///
    /// let k = ChannelKeys::new(5, 0, "pv")?.in_context("boot")?;
    /// assert_eq!(k.context().as_str(), "boot");
    /// assert_eq!(k.offer_dir()?.as_str(), "/local/domain/5/data/coresident/boot/0/pv/offer");
    /// # Ok::<(), coresident_xen::protocol::keys::KeyError>(())
    /// ```
    pub fn in_context(mut self, context: &str) -> Result<Self, KeyError> {
        self.context = Name::new(context)?;
        Ok(self)
    }

    /// This domain.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::rendezvous::ChannelKeys;
    ///
    /// assert_eq!(ChannelKeys::new(5, 0, "pv")?.own(), 5);
    /// # Ok::<(), coresident_xen::protocol::keys::KeyError>(())
    /// ```
    pub fn own(&self) -> DomId {
        self.own
    }

    /// The peer domain.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::rendezvous::ChannelKeys;
    ///
    /// assert_eq!(ChannelKeys::new(5, 0, "pv")?.peer(), 0);
    /// # Ok::<(), coresident_xen::protocol::keys::KeyError>(())
    /// ```
    pub fn peer(&self) -> DomId {
        self.peer
    }

    /// The channel's name.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::rendezvous::ChannelKeys;
    ///
    /// assert_eq!(ChannelKeys::new(5, 0, "pv")?.name().as_str(), "pv");
    /// # Ok::<(), coresident_xen::protocol::keys::KeyError>(())
    /// ```
    pub fn name(&self) -> &Name {
        &self.name
    }

    /// The channel's context.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::protocol::keys::CHANNELS;
    /// use coresident_xen::rendezvous::ChannelKeys;
    ///
    /// assert_eq!(ChannelKeys::new(5, 0, "pv")?.context().as_str(), CHANNELS);
    /// # Ok::<(), coresident_xen::protocol::keys::KeyError>(())
    /// ```
    pub fn context(&self) -> &Name {
        &self.context
    }

    /// Our offer's directory (under our home).
    ///
    /// # Errors
    ///
    /// [`KeyError::PathTooLong`] (never, for names within their limit).
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::rendezvous::ChannelKeys;
    ///
    /// let dir = ChannelKeys::new(5, 0, "pv")?.offer_dir()?;
    /// assert_eq!(dir.as_str(), "/local/domain/5/data/coresident/channels/0/pv/offer");
    /// # Ok::<(), coresident_xen::protocol::keys::KeyError>(())
    /// ```
    pub fn offer_dir(&self) -> Result<Path, KeyError> {
        keys::offer_dir(self.own, self.peer, &self.context, &self.name)
    }

    /// Our answer's directory (under our home).
    ///
    /// # Errors
    ///
    /// As [`ChannelKeys::offer_dir`].
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::rendezvous::ChannelKeys;
    ///
    /// // Dom0 answers domain 5's offer under its own home.
    /// let dir = ChannelKeys::new(0, 5, "pv")?.answer_dir()?;
    /// assert_eq!(dir.as_str(), "/local/domain/0/data/coresident/channels/5/pv/answer");
    /// # Ok::<(), coresident_xen::protocol::keys::KeyError>(())
    /// ```
    pub fn answer_dir(&self) -> Result<Path, KeyError> {
        keys::answer_dir(self.own, self.peer, &self.context, &self.name)
    }

    /// The peer's offer's directory (under its home).
    ///
    /// # Errors
    ///
    /// As [`ChannelKeys::offer_dir`].
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::rendezvous::ChannelKeys;
    ///
    /// // Each side's view of the same node: dom0's peer offer is domain 5's offer.
    /// let (guest, dom0) = (ChannelKeys::new(5, 0, "pv")?, ChannelKeys::new(0, 5, "pv")?);
    /// assert_eq!(dom0.peer_offer_dir()?.as_str(), guest.offer_dir()?.as_str());
    /// # Ok::<(), coresident_xen::protocol::keys::KeyError>(())
    /// ```
    pub fn peer_offer_dir(&self) -> Result<Path, KeyError> {
        keys::offer_dir(self.peer, self.own, &self.context, &self.name)
    }

    /// The peer's answer's directory (under its home).
    ///
    /// # Errors
    ///
    /// As [`ChannelKeys::offer_dir`].
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::rendezvous::ChannelKeys;
    ///
    /// let (guest, dom0) = (ChannelKeys::new(5, 0, "pv")?, ChannelKeys::new(0, 5, "pv")?);
    /// assert_eq!(guest.peer_answer_dir()?.as_str(), dom0.answer_dir()?.as_str());
    /// # Ok::<(), coresident_xen::protocol::keys::KeyError>(())
    /// ```
    pub fn peer_answer_dir(&self) -> Result<Path, KeyError> {
        keys::answer_dir(self.peer, self.own, &self.context, &self.name)
    }

    /// A watch token naming this channel and `what`.
    pub(super) fn token(&self, what: &str) -> Result<Path, KeyError> {
        Path::new(format_args!(
            "coresident/{}/{}/{}/{what}",
            self.peer, self.context, self.name
        ))
    }

    /// Publishes `offer` (ours, to the peer) under our home: every node
    /// `[n own, r peer]`, `state=offered` last. What was written is removed
    /// on failure.
    ///
    /// # Errors
    ///
    /// [`KeyError::BadOffer`] for an offer that fails [`Offer::check`]
    /// (before anything is written); [`KeyError::Store`].
    ///
    /// # Examples
    ///
    /// The offerer's side over any client (a PV kernel drives it over its
    /// ring); `refs` and `port` come from its grant table and event channels:
    ///
    /// ```
    /// use coresident::ChannelLayout;
    /// use coresident_xen::protocol::{crxg::Offer, keys::KeyError};
    /// use coresident_xen::rendezvous::ChannelKeys;
    /// use coresident_xen::xenstore::XsClient;
    ///
    /// fn offer_to_dom0(xs: &mut impl XsClient, refs: &[u32], port: u32) -> Result<bool, KeyError> {
    ///     let keys = ChannelKeys::new(5, 0, "pv")?;
    ///     let layout = ChannelLayout::symmetric(4096);
    ///     keys.publish_offer(xs, &Offer { offerer: 5, port, layout, refs })?;
    ///     keys.wait_answer(xs, port) // true: accepted; the offer is removed
    /// }
    /// ```
    pub fn publish_offer<X: XsClient>(
        &self,
        xs: &mut X,
        offer: &Offer<&[GrantRef]>,
    ) -> Result<(), KeyError> {
        // Nothing is written for an offer the peer would refuse.
        offer.check().map_err(KeyError::BadOffer)?;
        let dir = self.offer_dir()?;
        let r = publish(xs, dir.as_str(), &perms(self.own, self.peer), |put| {
            keys::write_offer(
                put,
                offer.port,
                offer.layout,
                offer.refs.len(),
                &mut offer.refs.iter().copied(),
            )
        });
        if r.is_err() {
            remove_dir(xs, self.own, dir.as_str());
        }
        r
    }

    /// Reads the peer's offer to us, its references into `refs` (room for
    /// as many as this side takes): `Ok(None)` while its `state` is absent
    /// (not written yet, or not yet readable by us). Every key is checked,
    /// then the offer they make ([`Offer::check`]: the transport takes
    /// nothing else), and no reference may be listed twice.
    ///
    /// # Errors
    ///
    /// Every malformed key is a [`KeyError`].
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::protocol::keys::KeyError;
    /// use coresident_xen::rendezvous::ChannelKeys;
    /// use coresident_xen::xenstore::XsClient;
    ///
    /// /// Dom0's look at domain 5's offer, if there is one yet.
    /// fn pages_offered(xs: &mut impl XsClient) -> Result<Option<usize>, KeyError> {
    ///     let mut refs = [0u32; 64];
    ///     let offer = ChannelKeys::new(0, 5, "pv")?.read_offer(xs, &mut refs)?;
    ///     Ok(offer.map(|o| o.refs.len()))
    /// }
    /// ```
    pub fn read_offer<'r, X: XsClient>(
        &self,
        xs: &mut X,
        refs: &'r mut [GrantRef],
    ) -> Result<Option<Offer<&'r [GrantRef]>>, KeyError> {
        let dir = self.peer_offer_dir()?;
        read_offer_at(xs, self.peer, dir.as_str(), refs)
    }

    /// Waits, on a watch of the peer's offer, for an offer to us that
    /// passes every check ([`ChannelKeys::read_offer`]'s); a malformed
    /// one is answered `refused` with the reason (and its `port` when that
    /// parses, else 0) and waited past, so the offerer can replace it;
    /// `refused` sees each reason once. Watch events are hints: the keys
    /// are re-read after each. For a side that waits for as long as its
    /// client does (a PV kernel's ring gives up at its own timeout).
    ///
    /// # Errors
    ///
    /// [`KeyError::Store`] (`XsError::Timeout` when the client gives up).
    ///
    /// # Examples
    ///
    /// The acceptor's side over any client: wait for a usable offer, map and
    /// bind it (not shown), answer.
    ///
    /// ```
    /// use coresident_xen::protocol::keys::KeyError;
    /// use coresident_xen::rendezvous::ChannelKeys;
    /// use coresident_xen::xenstore::XsClient;
    ///
    /// fn accept_from_5(xs: &mut impl XsClient, my_port: u32) -> Result<(), KeyError> {
    ///     let keys = ChannelKeys::new(0, 5, "pv")?;
    ///     let mut refs = [0u32; 64];
    ///     let offer = keys.wait_valid_offer(xs, &mut refs, &mut |e| eprintln!("refused: {e}"))?;
    ///     // ... map `offer.refs`, bind `offer.port` to `my_port` ...
    ///     keys.answer(xs, offer.port, Ok(my_port))
    /// }
    /// ```
    pub fn wait_valid_offer<'r, X: XsClient>(
        &self,
        xs: &mut X,
        refs: &'r mut [GrantRef],
        refused: &mut dyn FnMut(&KeyError),
    ) -> Result<Offer<&'r [GrantRef]>, KeyError> {
        let dir = self.peer_offer_dir()?;
        let token = self.token("offer")?;
        xs.watch(dir.as_str(), token.as_str())?;
        let r = self.wait_valid_watched(xs, dir.as_str(), refs, refused);
        let _ = xs.unwatch(dir.as_str(), token.as_str());
        let (n, port, layout) = r?;
        Ok(Offer {
            offerer: self.peer,
            port,
            layout,
            refs: refs.get(..n).unwrap_or(&[]),
        })
    }

    /// The loop of [`ChannelKeys::wait_valid_offer`]: the offer's count of
    /// references, port and layout (its references are in `refs`).
    fn wait_valid_watched<X: XsClient>(
        &self,
        xs: &mut X,
        dir: &str,
        refs: &mut [GrantRef],
        refused: &mut dyn FnMut(&KeyError),
    ) -> Result<(usize, EvtchnPort, coresident::ChannelLayout), KeyError> {
        // The last refusal: the same offer read again (a watch event about
        // something else) is not answered again.
        let mut last = None;
        loop {
            match read_offer_at(xs, self.peer, dir, refs) {
                Ok(Some(offer)) => return Ok((offer.refs.len(), offer.port, offer.layout)),
                Ok(None) => {}
                Err(e) if e.is_malformed() => {
                    let port = keys::read_u32(xs, dir, Key::Port).unwrap_or(0);
                    if last != Some((e, port)) {
                        self.answer(xs, port, Err(&e))?;
                        last = Some((e, port));
                        refused(&e);
                    }
                }
                Err(e) => return Err(e),
            }
            if xs.wait_watch(None)?.is_none() {
                return Err(KeyError::Store(XsError::Timeout));
            }
        }
    }

    /// Writes our answer to the peer's offer of `offer_port` (our port, or
    /// why we refused) under our home, each node `[n own, r peer]`,
    /// `state` last.
    ///
    /// # Errors
    ///
    /// [`KeyError::Store`].
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::protocol::keys::KeyError;
    /// use coresident_xen::rendezvous::ChannelKeys;
    /// use coresident_xen::xenstore::XsClient;
    ///
    /// /// Refuses domain 5's offer of `port`: its `error` key says why.
    /// fn refuse(xs: &mut impl XsClient, port: u32) -> Result<(), KeyError> {
    ///     ChannelKeys::new(0, 5, "pv")?.answer(xs, port, Err(&"no room for another channel"))
    /// }
    /// ```
    pub fn answer<X: XsClient>(
        &self,
        xs: &mut X,
        offer_port: EvtchnPort,
        outcome: Result<EvtchnPort, &dyn fmt::Display>,
    ) -> Result<(), KeyError> {
        let dir = self.answer_dir()?;
        publish(xs, dir.as_str(), &perms(self.own, self.peer), |put| {
            keys::write_answer(put, offer_port, outcome)
        })
    }

    /// Waits, on a watch of the peer's answer, for its answer to our offer
    /// of `port`: `Ok(true)` accepted, `Ok(false)` refused (its `error` key
    /// says why). An answer naming another port is a stale one, to an
    /// earlier offer: it is waited past. Then removes our offer, whatever
    /// the outcome. For a side that waits as long as its client does.
    ///
    /// # Errors
    ///
    /// A malformed answer; [`KeyError::Store`] (`XsError::Timeout` when
    /// the client gives up).
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::protocol::keys::KeyError;
    /// use coresident_xen::rendezvous::ChannelKeys;
    /// use coresident_xen::xenstore::XsClient;
    ///
    /// /// After publishing an offer of `port`: whether dom0 took it.
    /// fn accepted(xs: &mut impl XsClient, port: u32) -> Result<bool, KeyError> {
    ///     ChannelKeys::new(5, 0, "pv")?.wait_answer(xs, port)
    /// }
    /// ```
    pub fn wait_answer<X: XsClient>(&self, xs: &mut X, port: EvtchnPort) -> Result<bool, KeyError> {
        let dir = self.peer_answer_dir()?;
        let token = self.token("answer")?;
        let r = xs
            .watch(dir.as_str(), token.as_str())
            .map_err(KeyError::from)
            .and_then(|()| {
                let r = loop {
                    match keys::read_answer(xs, dir.as_str(), port) {
                        Ok(Some(accepted)) => break Ok(accepted),
                        Ok(None) => {}
                        Err(e) => break Err(e),
                    }
                    match xs.wait_watch(None) {
                        Ok(Some(_)) => {}
                        Ok(None) => break Err(KeyError::Store(XsError::Timeout)),
                        Err(e) => break Err(e.into()),
                    }
                };
                let _ = xs.unwatch(dir.as_str(), token.as_str());
                r
            });
        if let Ok(offer) = self.offer_dir() {
            remove_dir(xs, self.own, offer.as_str());
        }
        r
    }

    /// Removes this side's keys of the channel (our offer and our answer),
    /// if any, and the nodes above them left empty.
    ///
    /// # Errors
    ///
    /// [`KeyError::Store`] (a missing key is not an error).
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::protocol::keys::KeyError;
    /// use coresident_xen::rendezvous::ChannelKeys;
    /// use coresident_xen::xenstore::XsClient;
    ///
    /// /// At boot, before offering: nothing of an earlier run stays.
    /// fn clean(xs: &mut impl XsClient) -> Result<(), KeyError> {
    ///     ChannelKeys::new(5, 0, "pv")?.withdraw(xs)
    /// }
    /// ```
    pub fn withdraw<X: XsClient>(&self, xs: &mut X) -> Result<(), KeyError> {
        for dir in [self.offer_dir()?, self.answer_dir()?] {
            match xs.rm(dir.as_str()) {
                Ok(()) | Err(XsError::NotFound) => {}
                Err(e) => return Err(e.into()),
            }
            prune(xs, self.own, dir.as_str())?;
        }
        Ok(())
    }
}

/// The permissions of every node of an offer or answer: owned by its
/// writer, no access for other domains, read for the peer.
pub(super) fn perms(owner: DomId, reader: DomId) -> [Perm; 2] {
    keys::perms(owner, reader)
}

/// Replaces `dir` by an empty directory with `perms`, then writes the keys
/// `write` gives through `put`, each with `perms` too.
pub(super) fn publish<X: XsClient>(
    xs: &mut X,
    dir: &str,
    perms: &[Perm],
    write: impl FnOnce(&mut keys::Put<'_, KeyError>) -> Result<(), KeyError>,
) -> Result<(), KeyError> {
    match xs.rm(dir) {
        Ok(()) | Err(XsError::NotFound) => {}
        Err(e) => return Err(e.into()),
    }
    xs.mkdir(dir)?;
    xs.set_perms(dir, perms)?;
    let mut put = |key: &str, value: &[u8]| -> Result<(), KeyError> {
        let p = Path::new(format_args!("{dir}/{key}"))?;
        xs.write(p.as_str(), value)?;
        // New nodes inherit their parent's permissions in xenstored; set
        // them anyway, so no other store can differ.
        xs.set_perms(p.as_str(), perms)?;
        Ok(())
    };
    write(&mut put)
}

/// Removes our `dir` (a missing one is fine) and the nodes above it left
/// empty; best effort (teardown: the outcome the caller gets is decided).
pub(super) fn remove_dir<X: XsClient>(xs: &mut X, own: DomId, dir: &str) {
    match xs.rm(dir) {
        Ok(()) | Err(XsError::NotFound) => {
            let _ = prune(xs, own, dir);
        }
        Err(_) => {}
    }
}

/// Removes the ancestors of `dir` that are left empty (no children, no
/// value), from its parent up to our `data/coresident` (never `data`, the
/// toolstack's): `CTX/<peer>/<name>`, `CTX/<peer>`, `CTX`,
/// `data/coresident`. Each in a transaction, so a sibling another of our
/// processes creates meanwhile is never removed (the commit fails and the
/// check is redone).
///
/// # Errors
///
/// [`KeyError::Store`].
pub(super) fn prune<X: XsClient>(xs: &mut X, own: DomId, dir: &str) -> Result<(), KeyError> {
    let top = Path::new(format_args!("/local/domain/{own}/{TOP}"))?;
    let mut p = dir;
    while let Some(i) = p.rfind('/') {
        p = p.get(..i).unwrap_or("");
        if !p.starts_with(top.as_str()) || !remove_if_empty(xs, p)? {
            break;
        }
    }
    Ok(())
}

/// Removes `p` if it has no children and no value: whether it is gone.
fn remove_if_empty<X: XsClient>(xs: &mut X, p: &str) -> Result<bool, KeyError> {
    for _ in 0..TX_RETRIES {
        let mut tx = xs.transaction()?;
        match tx.directory(p) {
            Ok(kids) if kids.is_empty() => {}
            Ok(_) => return Ok(false),
            Err(XsError::NotFound) => return Ok(true),
            Err(e) => return Err(e.into()),
        }
        match tx.read(p) {
            Ok([]) => {}
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

/// Whether `/local/domain/D` exists (`EACCES`: it does, not ours to read).
pub(super) fn home_exists<X: XsClient>(xs: &mut X, d: DomId) -> Result<bool, XsError> {
    // A domain id's path always fits.
    let p = Path::new(format_args!("/local/domain/{d}"))
        .map_err(|_| XsError::Wire(WireError::BadPath))?;
    match xs.read(p.as_str()) {
        Ok(_) => Ok(true),
        Err(e) if e.is_denied() => Ok(true),
        Err(XsError::NotFound) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Reads and checks the offer under `dir` from `offerer`, its references
/// into `refs`: `Ok(None)` while its `state` is absent or not yet readable
/// (or it is being replaced).
pub(super) fn read_offer_at<'r, X: XsClient>(
    xs: &mut X,
    offerer: DomId,
    dir: &str,
    refs: &'r mut [GrantRef],
) -> Result<Option<Offer<&'r [GrantRef]>>, KeyError> {
    let mut n = 0;
    let max = refs.len();
    let mut push = |r: GrantRef| {
        let slot = refs.get_mut(n).ok_or(KeyError::BadRefCount)?;
        *slot = r;
        n += 1;
        Ok(())
    };
    let Some(k) = keys::read_offer(xs, dir, max, &mut push)? else {
        return Ok(None);
    };
    let refs = refs.get(..n).ok_or(KeyError::BadRefCount)?;
    if let Some(r) = first_repeat(refs) {
        return Err(KeyError::BadRef(r));
    }
    let offer = Offer {
        offerer,
        port: k.port,
        layout: k.layout,
        refs,
    };
    // The transport's own checks too: the sizes, and the count for them.
    offer.check().map_err(KeyError::BadOffer)?;
    Ok(Some(offer))
}

/// A reference listed twice, if any (sorted copy for long lists, pairs for
/// short ones: a kernel holds few).
fn first_repeat(refs: &[GrantRef]) -> Option<GrantRef> {
    #[cfg(feature = "std")]
    if refs.len() > 64 {
        let mut sorted = refs.to_vec();
        sorted.sort_unstable();
        return sorted.windows(2).find(|w| w[0] == w[1]).map(|w| w[0]);
    }
    refs.iter()
        .enumerate()
        .find(|(i, r)| refs.get(i + 1..).unwrap_or(&[]).contains(r))
        .map(|(_, r)| *r)
}
