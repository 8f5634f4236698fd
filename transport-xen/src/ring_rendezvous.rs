//! The accepting side of the XenStore rendezvous for a `no_std` kernel
//! (the `std` one is `crate::rendezvous`, feature `std`): the same keys,
//! read and written over the start_info XenStore ring ([`XsRing`]), the
//! same checks on every value the offering domain wrote (both sides speak
//! [`rendezvous_keys`](crate::protocol::keys)), then the transport's own
//! check of the rebuilt "CRXG" bytes ([`crxg::parse`], inside the kernel
//! transport's `accept`). `core` only, no allocation.
//!
//! ```text
//!  offer:  /local/domain/O/data/coresident/channels/A/NAME/offer/
//!          version port to-acceptor to-offerer nrefs refs0.. state=offered
//!  answer: /local/domain/A/data/coresident/channels/O/NAME/answer/
//!          version offer-port port state=accepted   (or error, state=refused)
//!          every node [n A, r O]: ours, readable by the offerer alone
//! ```
//!
//! Without allocation, an offer holds at most [`MAX_REFS`] grant
//! references (rings of up to 60 KiB each way); a larger one is refused
//! like any other bad value.
//!
//! Both sides: [`wait_offer`] + [`answer`] accept a daemon's (or another
//! kernel's) offer; [`publish_offer`] + [`wait_answer`] offer the kernel
//! transport's pages to a daemon, which accepts with the `std`
//! rendezvous.

use core::fmt;

use coresident::ChannelLayout;

use crate::protocol::crxg;
use crate::protocol::keys::{self as keys, ReadError, Store, TooLong};
use crate::protocol::xs_wire::{Perm, ValueError, XsErrno};
use crate::types::{DomId, EvtchnPort, GrantRef};
use crate::xenstore::ring::{Events, XsRing, XsRingError};

pub use crate::protocol::keys::{Path, CHANNELS, REFS_PER_KEY};

/// The most grant references this kernel accepts in one offer.
pub const MAX_REFS: usize = 32;

/// Why the rendezvous failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RdvError {
    /// The XenStore ring failed, or xenstored refused a request.
    Xs(XsRingError),
    /// A required key is missing.
    Missing(&'static str),
    /// A value that does not parse.
    Value(&'static str, ValueError),
    /// Another version of the keys.
    BadVersion(u32),
    /// A `state` other than `offered`.
    BadState,
    /// A port outside `1..2^17`.
    BadPort(u32),
    /// A reference out of range or repeated.
    BadRef(u32),
    /// `nrefs` is 0, above [`MAX_REFS`], or the `refsN` keys disagree.
    BadRefCount,
    /// The ring sizes or their page count were refused.
    BadLayout,
    /// A path did not fit its buffer.
    PathTooLong,
    /// Our own rendezvous bytes did not parse (a transport bug).
    OwnOffer,
    /// The acceptor refused our offer (its `error` key says why).
    Refused,
}

impl fmt::Display for RdvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Xs(e) => write!(f, "XenStore: {e}"),
            Self::Missing(k) => write!(f, "rendezvous key {k} is missing"),
            Self::Value(k, e) => write!(f, "rendezvous key {k}: {e}"),
            Self::BadVersion(v) => write!(f, "rendezvous version {v}"),
            Self::BadState => f.write_str("rendezvous state is not `offered`"),
            Self::BadPort(p) => write!(f, "event-channel port {p} out of range"),
            Self::BadRef(r) => write!(f, "grant reference {r} out of range or repeated"),
            Self::BadRefCount => f.write_str("bad grant reference count"),
            Self::BadLayout => f.write_str("ring sizes refused"),
            Self::PathTooLong => f.write_str("XenStore path too long"),
            Self::OwnOffer => f.write_str("our own rendezvous bytes did not parse"),
            Self::Refused => f.write_str("the acceptor refused the offer"),
        }
    }
}

impl core::error::Error for RdvError {}

impl RdvError {
    /// Whether this is about what the peer wrote (a malformed offer or
    /// answer), rather than XenStore or this side failing.
    pub fn is_malformed(&self) -> bool {
        !matches!(
            self,
            Self::Xs(_) | Self::PathTooLong | Self::OwnOffer | Self::Refused
        )
    }
}

impl From<XsRingError> for RdvError {
    fn from(e: XsRingError) -> Self {
        Self::Xs(e)
    }
}

impl From<TooLong> for RdvError {
    fn from(_: TooLong) -> Self {
        Self::PathTooLong
    }
}

impl From<ReadError<XsRingError>> for RdvError {
    fn from(e: ReadError<XsRingError>) -> Self {
        match e {
            ReadError::Store(e) => Self::Xs(e),
            ReadError::PathTooLong => Self::PathTooLong,
            ReadError::Missing(k) => Self::Missing(k.name()),
            ReadError::Value(k, e) => Self::Value(k.name(), e),
            ReadError::BadVersion(v) => Self::BadVersion(v),
            ReadError::BadState(_) => Self::BadState,
            ReadError::BadPort(p) => Self::BadPort(p),
            ReadError::BadRef(r) => Self::BadRef(r),
            ReadError::BadRefCount => Self::BadRefCount,
        }
    }
}

impl<E: Events> Store for XsRing<E> {
    type Error = XsRingError;

    fn read(&mut self, path: &str) -> Result<&[u8], XsRingError> {
        XsRing::read(self, path)
    }

    fn is_absent(e: &XsRingError) -> bool {
        matches!(e, XsRingError::Daemon(XsErrno::ENOENT))
    }

    fn is_unreadable(e: &XsRingError) -> bool {
        matches!(e, XsRingError::Daemon(XsErrno::EACCES))
    }
}

/// A validated offer.
#[derive(Clone, Copy, Debug)]
pub struct Offer {
    /// The offering domain.
    pub offerer: DomId,
    /// Its unbound port for us.
    pub port: EvtchnPort,
    /// The ring sizes.
    pub layout: ChannelLayout,
    refs: [GrantRef; MAX_REFS],
    nrefs: usize,
}

impl Offer {
    /// The grant references, region pages then the live page.
    pub fn refs(&self) -> &[GrantRef] {
        self.refs.get(..self.nrefs).unwrap_or(&[])
    }

    /// The transport's rendezvous bytes for this offer; returns their length.
    ///
    /// # Errors
    ///
    /// [`RdvError::BadLayout`]: sizes the ring refuses, or a reference
    /// count that does not match them.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, RdvError> {
        let refs = self.refs().iter().copied();
        crxg::encode(self.offerer, self.port, self.layout, refs, out)
            .map_err(|_| RdvError::BadLayout)
    }
}

/// The offer's directory.
///
/// # Errors
///
/// [`RdvError::PathTooLong`].
pub fn offer_dir(offerer: DomId, acceptor: DomId, name: &str) -> Result<Path, RdvError> {
    let mut p = Path::empty();
    keys::write_offer_dir(&mut p, offerer, acceptor, name).map_err(|_| RdvError::PathTooLong)?;
    Ok(p)
}

/// The answer's directory.
///
/// # Errors
///
/// [`RdvError::PathTooLong`].
pub fn answer_dir(acceptor: DomId, offerer: DomId, name: &str) -> Result<Path, RdvError> {
    let mut p = Path::empty();
    keys::write_answer_dir(&mut p, acceptor, offerer, name).map_err(|_| RdvError::PathTooLong)?;
    Ok(p)
}

/// Reads and validates the offer under `dir`; `Ok(None)` while its `state`
/// is absent or not yet readable by us.
///
/// # Errors
///
/// Every malformed value is an [`RdvError`].
pub fn read_offer<E: Events>(
    xs: &mut XsRing<E>,
    offerer: DomId,
    dir: &str,
) -> Result<Option<Offer>, RdvError> {
    let mut refs = [0; MAX_REFS];
    let mut nrefs = 0;
    let mut push = |r: GrantRef| {
        if refs.get(..nrefs).unwrap_or(&[]).contains(&r) {
            return Err(ReadError::BadRef(r));
        }
        *refs.get_mut(nrefs).ok_or(ReadError::BadRefCount)? = r;
        nrefs += 1;
        Ok(())
    };
    let Some(k) = keys::read_offer(xs, dir, MAX_REFS, &mut push)? else {
        return Ok(None);
    };
    if !crxg::valid_layout(k.layout) || crxg::pages_for(k.layout) != k.nrefs {
        return Err(RdvError::BadLayout);
    }
    Ok(Some(Offer {
        offerer,
        port: k.port,
        layout: k.layout,
        refs,
        nrefs,
    }))
}

/// Waits, on a watch of the offer's directory, for a valid offer from
/// `offerer` to us (`own`) of channel `name`. Watch events are hints: the
/// keys are re-read after each.
///
/// # Errors
///
/// [`RdvError`] for a malformed offer; `RdvError::Xs(TimedOut)` when the
/// ring's events give up.
pub fn wait_offer<E: Events>(
    xs: &mut XsRing<E>,
    own: DomId,
    offerer: DomId,
    name: &str,
) -> Result<Offer, RdvError> {
    watch_offer(xs, own, offerer, name, None)
}

/// Like [`wait_offer`], but a malformed offer is answered `refused` with
/// the reason (and its `port` when that parses, else 0, as the `std`
/// acceptor does) and waited past: the keys are read again at the next
/// watch event, so the offerer can replace it. `refused` sees each reason.
///
/// # Errors
///
/// [`RdvError::Xs`] (`TimedOut` when the ring's events give up),
/// [`RdvError::PathTooLong`].
pub fn wait_valid_offer<E: Events>(
    xs: &mut XsRing<E>,
    own: DomId,
    offerer: DomId,
    name: &str,
    refused: &mut dyn FnMut(&RdvError),
) -> Result<Offer, RdvError> {
    watch_offer(xs, own, offerer, name, Some(refused))
}

/// [`wait_offer`], or with `refused` [`wait_valid_offer`].
fn watch_offer<E: Events>(
    xs: &mut XsRing<E>,
    own: DomId,
    offerer: DomId,
    name: &str,
    mut refused: Option<&mut dyn FnMut(&RdvError)>,
) -> Result<Offer, RdvError> {
    let dir = offer_dir(offerer, own, name)?;
    let token = "coresident-offer";
    xs.watch(dir.as_str(), token)?;
    // The last refusal: the same offer read again (a watch event about
    // something else) is not answered again.
    let mut last = None;
    let r = loop {
        match read_offer(xs, offerer, dir.as_str()) {
            Ok(Some(offer)) => break Ok(offer),
            Ok(None) => {}
            Err(e) if e.is_malformed() && refused.is_some() => {
                let port = keys::read_u32(xs, dir.as_str(), keys::Key::Port).unwrap_or(0);
                if last != Some((e, port)) {
                    if let Err(e) = write_answer(xs, own, offerer, name, port, Err(&e)) {
                        break Err(e);
                    }
                    last = Some((e, port));
                    if let Some(f) = refused.as_mut() {
                        f(&e);
                    }
                }
            }
            Err(e) => break Err(e),
        }
        if let Err(e) = xs.wait_watch() {
            break Err(e.into());
        }
    };
    let _ = xs.unwatch(dir.as_str(), token);
    r
}

/// Writes the answer (our port, or why we refused) under our home, each
/// node `[n own, r offerer]`, `state` last.
///
/// # Errors
///
/// [`RdvError::Xs`].
pub fn answer<E: Events>(
    xs: &mut XsRing<E>,
    own: DomId,
    offer: &Offer,
    name: &str,
    outcome: Result<EvtchnPort, &dyn fmt::Display>,
) -> Result<(), RdvError> {
    write_answer(xs, own, offer.offerer, name, offer.port, outcome)
}

fn write_answer<E: Events>(
    xs: &mut XsRing<E>,
    own: DomId,
    offerer: DomId,
    name: &str,
    offer_port: EvtchnPort,
    outcome: Result<EvtchnPort, &dyn fmt::Display>,
) -> Result<(), RdvError> {
    let dir = answer_dir(own, offerer, name)?;
    let perms = keys::perms(own, offerer);
    fresh_dir(xs, dir.as_str(), &perms)?;
    let mut put = |k: &str, v: &[u8]| put(xs, dir.as_str(), k, v, &perms);
    keys::write_answer(&mut put, offer_port, outcome)
}

/// Replaces `dir` by an empty directory with `perms`.
fn fresh_dir<E: Events>(xs: &mut XsRing<E>, dir: &str, perms: &[Perm]) -> Result<(), RdvError> {
    match xs.rm(dir) {
        Ok(()) | Err(XsRingError::Daemon(XsErrno::ENOENT)) => {}
        Err(e) => return Err(e.into()),
    }
    xs.mkdir(dir)?;
    xs.set_perms(dir, perms)?;
    Ok(())
}

/// Writes `dir/key` = `value` with `perms`.
fn put<E: Events>(
    xs: &mut XsRing<E>,
    dir: &str,
    key: &str,
    value: &[u8],
    perms: &[Perm],
) -> Result<(), RdvError> {
    let p = Path::new(format_args!("{dir}/{key}"))?;
    xs.write(p.as_str(), value)?;
    // New nodes inherit their parent's permissions; set them anyway, as
    // the std rendezvous does.
    xs.set_perms(p.as_str(), perms)?;
    Ok(())
}

/// Publishes the kernel transport's offer (its rendezvous `bytes`, from
/// `Transport::offer`) to `acceptor` under our home: every node
/// `[n own, r acceptor]`, `state=offered` last. Returns the offer's port,
/// which the answer must echo.
///
/// # Errors
///
/// [`RdvError::OwnOffer`] if the bytes are not a valid offer from `own`;
/// [`RdvError::Xs`] (what was written is removed).
pub fn publish_offer<E: Events>(
    xs: &mut XsRing<E>,
    own: DomId,
    acceptor: DomId,
    name: &str,
    bytes: &[u8],
) -> Result<EvtchnPort, RdvError> {
    let offer = crxg::parse(own, bytes).map_err(|_| RdvError::OwnOffer)?;
    let dir = offer_dir(own, acceptor, name)?;
    let d = dir.as_str();
    let perms = keys::perms(own, acceptor);
    let r = fresh_dir(xs, d, &perms).and_then(|()| {
        let mut put = |k: &str, v: &[u8]| put(xs, d, k, v, &perms);
        let mut refs = offer.refs();
        keys::write_offer(
            &mut put,
            offer.port(),
            offer.layout,
            offer.nrefs(),
            &mut refs,
        )
    });
    if r.is_err() && xs.rm(d).is_ok() {
        let _ = prune(xs, own, d);
    }
    r.map(|()| offer.port())
}

/// Waits, on a watch of the answer's directory, for `acceptor`'s answer
/// to our offer of `port`; removes the offer whatever the outcome (as the
/// `std` rendezvous's `complete`). An answer naming another port is a
/// stale one, to an earlier offer: it is waited past.
///
/// # Errors
///
/// [`RdvError::Refused`]; a malformed answer; `RdvError::Xs(TimedOut)`
/// when the ring's events give up.
pub fn wait_answer<E: Events>(
    xs: &mut XsRing<E>,
    own: DomId,
    acceptor: DomId,
    name: &str,
    port: EvtchnPort,
) -> Result<(), RdvError> {
    let dir = answer_dir(acceptor, own, name)?;
    let d = dir.as_str();
    let token = "coresident-answer";
    let r = xs.watch(d, token).map_err(RdvError::from).and_then(|()| {
        let r = loop {
            match keys::read_answer(xs, d, port) {
                Ok(Some(true)) => break Ok(()),
                Ok(Some(false)) => break Err(RdvError::Refused),
                Ok(None) => {}
                Err(e) => break Err(e.into()),
            }
            if let Err(e) = xs.wait_watch() {
                break Err(e.into());
            }
        };
        let _ = xs.unwatch(d, token);
        r
    });
    if let Ok(offer) = offer_dir(own, acceptor, name) {
        if xs.rm(offer.as_str()).is_ok() {
            let _ = prune(xs, own, offer.as_str());
        }
    }
    r
}

/// Removes the ancestors of `dir` left empty (no children, no value),
/// from its parent up to our `data/coresident`: the channel's
/// `channels/<peer>/<name>`, then `channels/<peer>`, `channels` and
/// `data/coresident` (issue 17, finding 9). Without transactions on the
/// ring, a sibling made between the check and the removal would go too;
/// the kernel is the only writer of its `data/coresident`.
///
/// # Errors
///
/// [`RdvError::Xs`].
fn prune<E: Events>(xs: &mut XsRing<E>, own: DomId, dir: &str) -> Result<(), RdvError> {
    let top = Path::new(format_args!("/local/domain/{own}/data/coresident"))?;
    let mut p = dir;
    while let Some(i) = p.rfind('/') {
        p = p.get(..i).unwrap_or("");
        if !p.starts_with(top.as_str()) {
            break;
        }
        match xs.directory(p) {
            Ok([]) => {}
            Ok(_) => break,
            Err(XsRingError::Daemon(XsErrno::ENOENT)) => continue,
            Err(e) => return Err(e.into()),
        }
        match xs.read(p) {
            Ok([]) => {}
            Ok(_) => break,
            Err(XsRingError::Daemon(XsErrno::ENOENT)) => continue,
            Err(e) => return Err(e.into()),
        }
        match xs.rm(p) {
            Ok(()) | Err(XsRingError::Daemon(XsErrno::ENOENT)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Removes our answer (teardown) and the nodes above it left empty.
///
/// # Errors
///
/// [`RdvError::Xs`] for anything but a missing node.
pub fn withdraw<E: Events>(
    xs: &mut XsRing<E>,
    own: DomId,
    offerer: DomId,
    name: &str,
) -> Result<(), RdvError> {
    let dir = answer_dir(own, offerer, name)?;
    match xs.rm(dir.as_str()) {
        Ok(()) | Err(XsRingError::Daemon(XsErrno::ENOENT)) => prune(xs, own, dir.as_str()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    //! Against the simulated xenstored of `xs_ring`'s tests: the offer is
    //! written into its store as dom0's rendezvous writes it, then spoiled
    //! key by key.
    extern crate std;
    use super::*;
    use crate::xenstore::ring::fake::{client, Daemon};
    use std::string::{String, ToString};
    use std::vec::Vec;

    const OWN: DomId = 5;
    const DIR: &str = "/local/domain/0/data/coresident/channels/5/pv/offer";

    /// A 16 KiB + 16 KiB offer: 9 region pages + the live page.
    fn offer_keys() -> Vec<(&'static str, String)> {
        let layout = ChannelLayout::symmetric(16 * 1024);
        let n = crxg::pages_for(layout);
        let refs: Vec<String> = (0..n).map(|i| (100 + i).to_string()).collect();
        std::vec![
            ("version", "1".into()),
            ("port", "17".into()),
            ("to-acceptor", "16384".into()),
            ("to-offerer", "16384".into()),
            ("nrefs", n.to_string()),
            ("refs0", refs.join(" ")),
            ("state", "offered".into()),
        ]
    }

    fn ring_with(keys: &[(&str, String)]) -> XsRing<Daemon> {
        let mut xs = client();
        for (k, v) in keys {
            let path = std::format!("{DIR}/{k}");
            xs.events_mut()
                .store
                .insert(path.into_bytes(), v.clone().into_bytes());
        }
        xs
    }

    fn read_with(change: &str, value: Option<&str>) -> Result<Option<Offer>, RdvError> {
        let mut keys: Vec<(&str, String)> = offer_keys();
        keys.retain(|(k, _)| *k != change);
        if let Some(v) = value {
            keys.push((change, v.into()));
        }
        read_offer(&mut ring_with(&keys), 0, DIR)
    }

    #[test]
    fn a_good_offer_becomes_the_transports_bytes() {
        let mut xs = ring_with(&offer_keys());
        let offer = wait_offer(&mut xs, OWN, 0, "pv").unwrap();
        assert_eq!((offer.offerer, offer.port), (0, 17));
        assert_eq!(offer.layout, ChannelLayout::symmetric(16 * 1024));
        assert_eq!(offer.refs(), (100..110).collect::<Vec<u32>>().as_slice());
        let mut buf = [0u8; 256];
        let n = offer.encode(&mut buf).unwrap();
        let parsed = crxg::parse(0, &buf[..n]).unwrap();
        assert_eq!(parsed.port(), 17);
        assert_eq!(parsed.refs().collect::<Vec<_>>(), offer.refs());
        // The watch was removed again.
        assert!(xs.events_mut().watches.is_empty());
    }

    #[test]
    fn an_absent_or_unreadable_offer_is_not_yet_there() {
        assert!(matches!(read_with("state", None), Ok(None)));
        let mut xs = ring_with(&offer_keys());
        xs.events_mut()
            .denied
            .push(std::format!("{DIR}/state").into_bytes());
        assert!(matches!(read_offer(&mut xs, 0, DIR), Ok(None)));
        // wait_offer keeps waiting on the watch until the ring gives up.
        xs.events_mut().waits_left = 5;
        assert_eq!(
            wait_offer(&mut xs, OWN, 0, "pv").unwrap_err(),
            RdvError::Xs(XsRingError::TimedOut)
        );
    }

    #[test]
    fn an_offer_being_replaced_is_not_yet_there() {
        // `state` readable, a later key not: the offerer removed the
        // directory and made it again, its permissions not set yet.
        for key in ["version", "refs0", "refs1"] {
            let mut xs = ring_with(&offer_keys());
            xs.events_mut()
                .denied
                .push(std::format!("{DIR}/{key}").into_bytes());
            assert!(matches!(read_offer(&mut xs, 0, DIR), Ok(None)), "{key}");
        }
        // The same for an answer: waited past, not an error.
        let mut xs = client();
        publish_offer(&mut xs, OWN, 0, "k", &kernel_offer(21)).unwrap();
        let dir = answer_dir(0, OWN, "k").unwrap();
        for (k, v) in [
            ("state", "accepted"),
            ("offer-port", "21"),
            ("version", "1"),
        ] {
            let path = std::format!("{}/{k}", dir.as_str());
            xs.events_mut()
                .store
                .insert(path.into_bytes(), v.as_bytes().to_vec());
        }
        let denied = std::format!("{}/version", dir.as_str()).into_bytes();
        xs.events_mut().denied.push(denied);
        xs.events_mut().waits_left = 20;
        assert_eq!(
            wait_answer(&mut xs, OWN, 0, "k", 21),
            Err(RdvError::Xs(XsRingError::TimedOut))
        );
    }

    #[test]
    fn every_hostile_value_is_a_typed_error() {
        use RdvError as E;
        let cases: &[(&str, Option<&str>, RdvError)] = &[
            ("state", Some("accepted"), E::BadState),
            ("version", Some("2"), E::BadVersion(2)),
            ("version", None, E::Missing("version")),
            (
                "version",
                Some("1x"),
                E::Value("version", ValueError::NotANumber),
            ),
            ("port", Some("0"), E::BadPort(0)),
            ("port", Some("131072"), E::BadPort(1 << 17)),
            (
                "port",
                Some("99999999999"),
                E::Value("port", ValueError::OutOfRange),
            ),
            ("to-acceptor", Some("1000"), E::BadLayout),
            (
                "to-offerer",
                Some(""),
                E::Value("to-offerer", ValueError::Empty),
            ),
            ("nrefs", Some("0"), E::BadRefCount),
            ("nrefs", Some("33"), E::BadRefCount),
            ("nrefs", Some("9"), E::BadRefCount),
            ("nrefs", Some("11"), E::BadRefCount),
            ("refs0", None, E::Missing("refsN")),
            ("refs0", Some("100 101"), E::BadRefCount),
            (
                "refs0",
                Some("100 101 102 103 104 105 106 107 108 7"),
                E::BadRef(7),
            ),
            (
                "refs0",
                Some("100 101 102 103 104 105 106 107 108 100"),
                E::BadRef(100),
            ),
            (
                "refs0",
                Some("100 101 102 103 104 105 106 107 108 1048576"),
                E::BadRef(1 << 20),
            ),
            (
                "refs0",
                Some("100 101 102 103 104 105 106 107 108  109"),
                E::Value("refsN", ValueError::Empty),
            ),
            ("refs1", Some("200"), E::BadRefCount),
        ];
        for (key, value, want) in cases {
            assert_eq!(
                read_with(key, *value).map(|_| ()),
                Err(*want),
                "{key} = {value:?}"
            );
        }
        // A count that agrees with the keys but not with the ring sizes.
        let mut keys = offer_keys();
        keys.retain(|(k, _)| !matches!(*k, "nrefs" | "refs0"));
        keys.push(("nrefs", "3".into()));
        keys.push(("refs0", "100 101 102".into()));
        assert_eq!(
            read_offer(&mut ring_with(&keys), 0, DIR).map(|_| ()),
            Err(E::BadLayout)
        );
    }

    #[test]
    fn a_malformed_offer_is_refused_and_waited_past() {
        let mut keys = offer_keys();
        keys.retain(|(k, _)| *k != "refs0");
        keys.push(("refs0", "1 101 102 103 104 105 106 107 108 109".into()));
        let mut xs = ring_with(&keys);
        xs.events_mut().waits_left = 60;
        let mut seen = Vec::new();
        let r = wait_valid_offer(&mut xs, OWN, 0, "pv", &mut |e| seen.push(*e));
        // Nobody replaced it: the ring gave up, after one refusal.
        assert_eq!(r.map(|_| ()), Err(RdvError::Xs(XsRingError::TimedOut)));
        assert_eq!(seen, [RdvError::BadRef(1)]);
        let dir = "/local/domain/5/data/coresident/channels/0/pv/answer";
        let store = &xs.events_mut().store;
        let get = |k: &str| store.get(std::format!("{dir}/{k}").as_bytes()).cloned();
        assert_eq!(get("state").as_deref(), Some(&b"refused"[..]));
        assert_eq!(get("offer-port").as_deref(), Some(&b"17"[..]));
        let error = String::from_utf8(get("error").unwrap()).unwrap();
        assert!(error.contains("grant reference 1"), "{error}");
        // A good offer is taken at once, as by wait_offer.
        let mut xs = ring_with(&offer_keys());
        let offer = wait_valid_offer(&mut xs, OWN, 0, "pv", &mut |e| panic!("{e}")).unwrap();
        assert_eq!(offer.port, 17);
        assert!(RdvError::BadPort(0).is_malformed());
        assert!(!RdvError::Xs(XsRingError::TimedOut).is_malformed());
    }

    #[test]
    fn answers_are_ours_and_readable_by_the_offerer_alone() {
        let mut xs = ring_with(&offer_keys());
        let offer = wait_offer(&mut xs, OWN, 0, "pv").unwrap();
        answer(&mut xs, OWN, &offer, "pv", Ok(3)).unwrap();
        let dir = "/local/domain/5/data/coresident/channels/0/pv/answer";
        let store = &xs.events_mut().store;
        let get = |k: &str| store.get(std::format!("{dir}/{k}").as_bytes()).cloned();
        assert_eq!(get("state").as_deref(), Some(&b"accepted"[..]));
        assert_eq!(get("port").as_deref(), Some(&b"3"[..]));
        assert_eq!(get("offer-port").as_deref(), Some(&b"17"[..]));
        assert_eq!(get("version").as_deref(), Some(&b"1"[..]));
        for k in ["", "/state", "/port"] {
            let perms = store.get(std::format!("perms:{dir}{k}").as_bytes());
            assert_eq!(perms.map(Vec::as_slice), Some(&b"n5\0r0\0"[..]), "{k}");
        }
        // A refusal replaces the answer, with the reason.
        answer(&mut xs, OWN, &offer, "pv", Err(&"no room")).unwrap();
        let store = &xs.events_mut().store;
        let get = |k: &str| store.get(std::format!("{dir}/{k}").as_bytes()).cloned();
        assert_eq!(get("state").as_deref(), Some(&b"refused"[..]));
        assert_eq!(get("error").as_deref(), Some(&b"no room"[..]));
        assert_eq!(get("port"), None);
        withdraw(&mut xs, OWN, 0, "pv").unwrap();
        withdraw(&mut xs, OWN, 0, "pv").unwrap();
        let store = &xs.events_mut().store;
        assert!(!store.keys().any(|k| k.starts_with(dir.as_bytes())));
    }

    /// Our nodes: the simulated store's keys under our home.
    fn ours(xs: &mut XsRing<Daemon>) -> Vec<String> {
        let home = std::format!("/local/domain/{OWN}");
        xs.events_mut()
            .store
            .keys()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .filter(|k| k.starts_with(&home))
            .collect()
    }

    /// Issue 17, finding 9, on the kernel's side: an answer withdrawn and
    /// an offer answered leave none of their nodes, parents included.
    #[test]
    fn no_node_outlives_a_kernel_rendezvous() {
        let mut xs = ring_with(&offer_keys());
        // What the toolstack made: the home, `data`, `domid`.
        for (k, v) in [("", ""), ("/data", ""), ("/domid", "5")] {
            let path = std::format!("/local/domain/{OWN}{k}");
            xs.events_mut()
                .store
                .insert(path.into_bytes(), v.as_bytes().to_vec());
        }
        let base = ours(&mut xs);
        let offer = wait_offer(&mut xs, OWN, 0, "pv").unwrap();
        answer(&mut xs, OWN, &offer, "pv", Ok(3)).unwrap();
        assert_ne!(ours(&mut xs), base);
        withdraw(&mut xs, OWN, 0, "pv").unwrap();
        assert_eq!(ours(&mut xs), base, "after the answer's withdrawal");
        publish_offer(&mut xs, OWN, 0, "k", &kernel_offer(21)).unwrap();
        let dir = answer_dir(0, OWN, "k").unwrap();
        for (k, v) in [
            ("version", "1"),
            ("offer-port", "21"),
            ("port", "4"),
            ("state", "accepted"),
        ] {
            let path = std::format!("{}/{k}", dir.as_str());
            xs.events_mut()
                .store
                .insert(path.into_bytes(), v.as_bytes().to_vec());
        }
        wait_answer(&mut xs, OWN, 0, "k", 21).unwrap();
        assert_eq!(ours(&mut xs), base, "after the offer was answered");
        // A sibling stays, and its parents with it.
        xs.write(
            &std::format!("/local/domain/{OWN}/data/coresident/advertise"),
            b"x",
        )
        .unwrap();
        let kept = ours(&mut xs);
        answer(&mut xs, OWN, &offer, "pv", Ok(3)).unwrap();
        withdraw(&mut xs, OWN, 0, "pv").unwrap();
        assert_eq!(ours(&mut xs), kept);
    }

    /// Rendezvous bytes of a kernel offer: 16 KiB each way from dom5.
    fn kernel_offer(port: u32) -> Vec<u8> {
        let layout = ChannelLayout::symmetric(16 * 1024);
        let n = crxg::pages_for(layout);
        let mut buf = std::vec![0u8; crxg::encoded_len(layout)];
        let refs = (0..n as u32).map(|i| 1000 + i);
        let len = crxg::encode(OWN, port, layout, refs, &mut buf).unwrap();
        buf.truncate(len);
        buf
    }

    #[test]
    fn a_published_offer_reads_back_as_the_same_offer() {
        let bytes = kernel_offer(21);
        let mut xs = client();
        assert_eq!(publish_offer(&mut xs, OWN, 0, "k", &bytes), Ok(21));
        let dir = offer_dir(OWN, 0, "k").unwrap();
        let store = &xs.events_mut().store;
        let perms = store.get(std::format!("perms:{}/refs0", dir.as_str()).as_bytes());
        assert_eq!(perms.map(Vec::as_slice), Some(&b"n5\0r0\0"[..]));
        // The acceptor's reader (the same checks as the std one) agrees.
        let offer = read_offer(&mut xs, OWN, dir.as_str()).unwrap().unwrap();
        let mut buf = [0u8; 256];
        let n = offer.encode(&mut buf).unwrap();
        assert_eq!(&buf[..n], bytes.as_slice());
        // Bytes that are not our own offer are refused before any write.
        let mut xs = client();
        assert_eq!(
            publish_offer(&mut xs, OWN + 1, 0, "k", &bytes),
            Err(RdvError::OwnOffer)
        );
        assert_eq!(
            publish_offer(&mut xs, OWN, 0, "k", &bytes[..40]),
            Err(RdvError::OwnOffer)
        );
        assert_eq!(xs.events_mut().requests, 0);
    }

    #[test]
    fn answers_are_waited_for_and_checked() {
        let answer_at = |entries: &[(&str, &str)]| {
            let mut xs = client();
            let bytes = kernel_offer(21);
            publish_offer(&mut xs, OWN, 0, "k", &bytes).unwrap();
            let dir = answer_dir(0, OWN, "k").unwrap();
            for (k, v) in entries {
                let path = std::format!("{}/{k}", dir.as_str());
                xs.events_mut()
                    .store
                    .insert(path.into_bytes(), v.as_bytes().to_vec());
            }
            // Enough for the requests, too few for a stale answer to
            // outlast; the timeout leaves the ring usable for the rm.
            xs.events_mut().waits_left = 40;
            let r = wait_answer(&mut xs, OWN, 0, "k", 21);
            // The offer is gone whatever the outcome.
            let offer = offer_dir(OWN, 0, "k").unwrap();
            let left = xs
                .events_mut()
                .store
                .keys()
                .any(|k| k.starts_with(offer.as_str().as_bytes()));
            assert!(!left, "{entries:?}: {r:?}");
            r
        };
        let ok = [
            ("version", "1"),
            ("offer-port", "21"),
            ("port", "4"),
            ("state", "accepted"),
        ];
        assert_eq!(answer_at(&ok), Ok(()));
        let refused = [("version", "1"), ("offer-port", "21"), ("state", "refused")];
        assert_eq!(answer_at(&refused), Err(RdvError::Refused));
        let stale = [
            ("version", "1"),
            ("offer-port", "20"),
            ("state", "accepted"),
        ];
        assert_eq!(answer_at(&stale), Err(RdvError::Xs(XsRingError::TimedOut)));
        assert_eq!(answer_at(&[]), Err(RdvError::Xs(XsRingError::TimedOut)));
        let odd = [("version", "1"), ("offer-port", "21"), ("state", "maybe")];
        assert_eq!(answer_at(&odd), Err(RdvError::BadState));
        let newer = [
            ("version", "2"),
            ("offer-port", "21"),
            ("state", "accepted"),
        ];
        assert_eq!(answer_at(&newer), Err(RdvError::BadVersion(2)));
        let junk = [("version", "1"), ("offer-port", "x"), ("state", "accepted")];
        assert_eq!(
            answer_at(&junk),
            Err(RdvError::Value("offer-port", ValueError::NotANumber))
        );
    }

    #[test]
    fn paths_that_do_not_fit_are_refused() {
        let long = "x".repeat(200);
        assert_eq!(offer_dir(0, OWN, &long).unwrap_err(), RdvError::PathTooLong);
        assert_eq!(offer_dir(0, OWN, "pv").unwrap().as_str(), DIR);
    }
}
