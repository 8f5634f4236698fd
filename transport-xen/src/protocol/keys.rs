//! The XenStore keys of the rendezvous, `core` only and without
//! allocation: every side (a daemon over xenstored's socket or
//! `/dev/xen/xenbus`, a PV kernel over its `start_info` ring) speaks them
//! from here, through any [`XsClient`].
//!
//! ```text
//!  offer:  /local/domain/O/data/coresident/CONTEXT/A/NAME/offer/
//!          version port to-acceptor to-offerer nrefs refs0.. state=offered
//!  answer: /local/domain/A/data/coresident/CONTEXT/O/NAME/answer/
//!          version offer-port port state=accepted   (or error, state=refused)
//! ```
//!
//! `CONTEXT` is [`CHANNELS`] unless the caller chooses another (a router's
//! discovery, say); `NAME` tells apart several channels between the same
//! two domains. Both are [`Name`]s, `[A-Za-z0-9_-]{1,64}`. What lives here:
//! the names and directories, the limits, the order in which the keys are
//! written (`state` last: [`write_offer`], [`write_answer`]), and the
//! reading and checking of every value the peer wrote ([`read_offer`],
//! [`read_answer`]), each failure one [`KeyError`].

use core::fmt::{self, Write as _};

use coresident::ChannelLayout;

use crate::protocol::crxg::{
    CrxgError, FIRST_GRANT_REF, GRANT_REF_LIMIT, PORT_LIMIT, RENDEZVOUS_VERSION,
};
use crate::protocol::xs_wire::{self, Access, Perm, ValueError};
use crate::types::{DomId, EvtchnPort, GrantRef};
use crate::xenstore::{XsClient, XsError};

mod paths;

pub use paths::{answer_dir, offer_dir, offers_from, perms, valid_name, Name, Path, PATH_MAX};

/// Where every rendezvous context lives in a domain's home.
///
/// # Examples
///
/// ```
/// use coresident_xen::protocol::keys::{offers_from, Name, CHANNELS, TOP};
///
/// let dir = offers_from(5, 0, &Name::new(CHANNELS)?)?;
/// assert_eq!(dir.as_str(), format!("/local/domain/5/{TOP}/channels/0"));
/// assert_eq!(TOP, "data/coresident");
/// # Ok::<(), coresident_xen::protocol::keys::KeyError>(())
/// ```
pub const TOP: &str = "data/coresident";
/// The context of channels (`data/coresident/channels`).
///
/// # Examples
///
/// ```
/// use coresident_xen::protocol::keys::{valid_name, CHANNELS};
///
/// assert_eq!(CHANNELS, "channels");
/// assert!(valid_name(CHANNELS));
/// ```
pub const CHANNELS: &str = "channels";
/// References per `refsN` key: 128 × 11 bytes fit xenstored's default
/// 2048-byte quota on a guest's values.
///
/// # Examples
///
/// ```
/// use coresident::ChannelLayout;
/// use coresident_xen::protocol::keys::{write_offer, KeyError, REFS_PER_KEY};
///
/// // 130 references take two `refsN` keys: 128, then 2.
/// let mut keys = Vec::new();
/// let mut put = |k: &str, _: &[u8]| Ok::<(), KeyError>(keys.push(k.to_owned()));
/// write_offer(&mut put, 17, ChannelLayout::symmetric(4096), 130, &mut (8..138))?;
/// assert!(keys.contains(&"refs1".to_owned()) && !keys.contains(&"refs2".to_owned()));
/// assert_eq!(REFS_PER_KEY, 128);
/// # Ok::<(), KeyError>(())
/// ```
pub const REFS_PER_KEY: usize = 128;
/// The longest channel name or context.
///
/// # Examples
///
/// ```
/// use coresident_xen::protocol::keys::{valid_name, MAX_NAME_LEN};
///
/// assert!(valid_name(&"a".repeat(MAX_NAME_LEN)));
/// assert!(!valid_name(&"a".repeat(MAX_NAME_LEN + 1)));
/// ```
pub const MAX_NAME_LEN: usize = 64;
/// The longest `error` text an acceptor writes (longer text is cut).
///
/// # Examples
///
/// ```
/// use coresident_xen::protocol::keys::{write_answer, ERROR_TEXT_MAX};
///
/// let mut error = Vec::new();
/// let mut put = |k: &str, v: &[u8]| {
///     if k == "error" { error = v.to_vec() }
///     Ok::<(), ()>(())
/// };
/// write_answer(&mut put, 17, Err(&"x".repeat(1000))).unwrap();
/// assert_eq!(error.len(), ERROR_TEXT_MAX); // cut
/// ```
pub const ERROR_TEXT_MAX: usize = 256;
/// The offer's `state`.
///
/// # Examples
///
/// ```
/// use coresident::ChannelLayout;
/// use coresident_xen::protocol::keys::{write_offer, KeyError, OFFERED};
///
/// let mut last = (String::new(), Vec::new());
/// let mut put = |k: &str, v: &[u8]| Ok::<(), KeyError>(last = (k.to_owned(), v.to_vec()));
/// write_offer(&mut put, 17, ChannelLayout::symmetric(4096), 4, &mut (8..12))?;
/// assert_eq!(last, ("state".to_owned(), OFFERED.to_vec())); // written last
/// # Ok::<(), KeyError>(())
/// ```
pub const OFFERED: &[u8] = b"offered";
/// The answer's `state` when the acceptor took the offer.
///
/// # Examples
///
/// ```
/// use coresident_xen::protocol::keys::{write_answer, ACCEPTED};
///
/// let mut state = Vec::new();
/// write_answer(&mut |k: &str, v: &[u8]| Ok::<(), ()>(if k == "state" { state = v.to_vec() }), 17, Ok(40)).unwrap();
/// assert_eq!(state, ACCEPTED);
/// ```
pub const ACCEPTED: &[u8] = b"accepted";
/// The answer's `state` when the acceptor refused it.
///
/// # Examples
///
/// ```
/// use coresident_xen::protocol::keys::{write_answer, REFUSED};
///
/// let mut state = Vec::new();
/// write_answer(&mut |k: &str, v: &[u8]| Ok::<(), ()>(if k == "state" { state = v.to_vec() }), 17, Err(&"full")).unwrap();
/// assert_eq!(state, REFUSED);
/// ```
pub const REFUSED: &[u8] = b"refused";

/// A rendezvous key.
///
/// # Examples
///
/// ```
/// use coresident_xen::protocol::keys::Key;
///
/// assert_eq!(Key::ToAcceptor.to_string(), "to-acceptor");
/// assert_eq!(Key::Refs(3).to_string(), "refs3");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Key {
    /// `version`.
    Version,
    /// `state`.
    State,
    /// `port`.
    Port,
    /// `to-acceptor`.
    ToAcceptor,
    /// `to-offerer`.
    ToOfferer,
    /// `nrefs`.
    Nrefs,
    /// `refsN`.
    Refs(u16),
    /// `offer-port`.
    OfferPort,
    /// `error` (the answer's reason for a refusal).
    Error,
}

impl Key {
    /// The key's name, `refsN` for every `refs` key (the key itself is
    /// written by [`Display`](fmt::Display)).
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::protocol::keys::Key;
    ///
    /// assert_eq!(Key::OfferPort.name(), "offer-port");
    /// assert_eq!(Key::Refs(3).name(), "refsN"); // Display writes "refs3"
    /// ```
    pub const fn name(self) -> &'static str {
        match self {
            Self::Version => "version",
            Self::State => "state",
            Self::Port => "port",
            Self::ToAcceptor => "to-acceptor",
            Self::ToOfferer => "to-offerer",
            Self::Nrefs => "nrefs",
            Self::Refs(_) => "refsN",
            Self::OfferPort => "offer-port",
            Self::Error => "error",
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Refs(i) => write!(f, "refs{i}"),
            k => f.write_str(k.name()),
        }
    }
}

/// Text cut at [`ERROR_TEXT_MAX`] bytes (on a character boundary): what
/// is written as a refusal's `error`, for humans, never parsed.
struct Text {
    buf: [u8; ERROR_TEXT_MAX],
    len: usize,
}

impl fmt::Write for Text {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = ERROR_TEXT_MAX.saturating_sub(self.len);
        let mut take = s.len().min(room);
        while !s.is_char_boundary(take) {
            take -= 1;
        }
        let src = s.as_bytes().get(..take).unwrap_or(&[]);
        if let Some(dst) = self.buf.get_mut(self.len..self.len + take) {
            dst.copy_from_slice(src);
            self.len += take;
        }
        Ok(())
    }
}

/// Writes `key` = `value` under the directory being written.
///
/// # Examples
///
/// ```
/// use coresident_xen::protocol::keys::{write_answer, Put};
///
/// let mut keys = Vec::new();
/// let put: &mut Put<'_, ()> = &mut |k, v| Ok(keys.push(format!("{k}={}", String::from_utf8_lossy(v))));
/// write_answer(put, 17, Ok(40))?;
/// assert_eq!(keys, ["version=1", "offer-port=17", "port=40", "state=accepted"]);
/// # Ok::<(), ()>(())
/// ```
pub type Put<'a, E> = dyn FnMut(&str, &[u8]) -> Result<(), E> + 'a;

/// Writes an offer's keys in the protocol's order through `put(key,
/// value)`, `state=offered` last: the acceptor reads nothing before it.
/// `refs` are the offer's `nrefs` grant references, in page order.
///
/// Who calls it: [`ChannelKeys`](crate::rendezvous::ChannelKeys), which a
/// daemon or kernel uses instead; it is public for the fuzz target
/// `fuzz/fuzz_targets/xs_rendezvous_keys.rs`, which checks that what this
/// module writes reads back the same and that any peer-written keys are
/// refused, never a panic.
///
/// # Errors
///
/// `put`'s, or [`KeyError::BadRefCount`] if `refs` does not hold exactly
/// `nrefs` references.
///
/// # Examples
///
/// ```
/// use coresident::ChannelLayout;
/// use coresident_xen::protocol::keys::{write_offer, KeyError};
///
/// let mut keys = Vec::new();
/// let layout = ChannelLayout::symmetric(4096);
/// let mut put = |k: &str, v: &[u8]| {
///     Ok::<(), KeyError>(keys.push(format!("{k}={}", String::from_utf8_lossy(v))))
/// };
/// write_offer(&mut put, 17, layout, 4, &mut (8..12))?;
/// assert_eq!(keys, [
///     "version=1", "port=17", "to-acceptor=4096", "to-offerer=4096", "nrefs=4",
///     "refs0=8 9 10 11", "state=offered",
/// ]);
/// // `nrefs` and the references must agree.
/// let mut ignore = |_: &str, _: &[u8]| Ok(());
/// assert_eq!(write_offer(&mut ignore, 17, layout, 4, &mut (8..10)), Err(KeyError::BadRefCount));
/// # Ok::<(), KeyError>(())
/// ```
pub fn write_offer<E: From<KeyError>>(
    put: &mut Put<'_, E>,
    port: EvtchnPort,
    layout: ChannelLayout,
    nrefs: usize,
    refs: &mut dyn Iterator<Item = GrantRef>,
) -> Result<(), E> {
    let mut num = [0u8; 20];
    put(
        "version",
        xs_wire::decimal(RENDEZVOUS_VERSION.into(), &mut num),
    )?;
    put("port", xs_wire::decimal(port.into(), &mut num))?;
    put(
        "to-acceptor",
        xs_wire::decimal(layout.to_acceptor.into(), &mut num),
    )?;
    put(
        "to-offerer",
        xs_wire::decimal(layout.to_offerer.into(), &mut num),
    )?;
    put(
        "nrefs",
        xs_wire::decimal(u64::try_from(nrefs).unwrap_or(u64::MAX), &mut num),
    )?;
    // REFS_PER_KEY references of at most 10 digits and a space each.
    let mut value = [0u8; REFS_PER_KEY * 11];
    let mut left = nrefs;
    let mut k = 0u16;
    while left > 0 {
        let mut len = 0;
        for r in (&mut *refs).take(REFS_PER_KEY.min(left)) {
            let digits = xs_wire::decimal(r.into(), &mut num);
            let sep = usize::from(len > 0);
            let end = len + sep + digits.len();
            let slot = value.get_mut(len..end).ok_or(KeyError::BadRefCount)?;
            slot[..sep].copy_from_slice(&b" "[..sep]);
            slot[sep..].copy_from_slice(digits);
            len = end;
            left -= 1;
        }
        if len == 0 {
            // Fewer references than `nrefs`: the count would lie.
            return Err(KeyError::BadRefCount.into());
        }
        let key = Path::new(format_args!("{}", Key::Refs(k)))?;
        put(key.as_str(), value.get(..len).unwrap_or(&[]))?;
        k += 1;
    }
    if refs.next().is_some() {
        return Err(KeyError::BadRefCount.into());
    }
    put("state", OFFERED)
}

/// Writes an answer's keys through `put(key, value)`: `accepted` with the
/// acceptor's port, or `refused` with the reason (cut at
/// [`ERROR_TEXT_MAX`] bytes); `offer-port` ties it to the offer of that
/// port; `state` last.
///
/// Who calls it: [`ChannelKeys`](crate::rendezvous::ChannelKeys) only (the
/// fuzz target reads answers, it does not write them); it stays public
/// beside [`write_offer`] and [`read_answer`] so that the answer's keys are
/// spelled out where the offer's are.
///
/// # Errors
///
/// `put`'s.
///
/// # Examples
///
/// ```
/// use coresident_xen::protocol::keys::write_answer;
///
/// let mut keys = Vec::new();
/// let mut put = |k: &str, v: &[u8]| Ok::<(), ()>(keys.push(format!("{k}={}", String::from_utf8_lossy(v))));
/// write_answer(&mut put, 17, Err(&"no room"))?;
/// assert_eq!(keys, ["version=1", "offer-port=17", "error=no room", "state=refused"]);
/// # Ok::<(), ()>(())
/// ```
pub fn write_answer<E>(
    put: &mut Put<'_, E>,
    offer_port: EvtchnPort,
    outcome: Result<EvtchnPort, &dyn fmt::Display>,
) -> Result<(), E> {
    let mut num = [0u8; 20];
    put(
        "version",
        xs_wire::decimal(RENDEZVOUS_VERSION.into(), &mut num),
    )?;
    put("offer-port", xs_wire::decimal(offer_port.into(), &mut num))?;
    match outcome {
        Ok(port) => {
            put("port", xs_wire::decimal(port.into(), &mut num))?;
            put("state", ACCEPTED)
        }
        Err(why) => {
            let mut text = Text {
                buf: [0; ERROR_TEXT_MAX],
                len: 0,
            };
            // `Text` never fails; a `Display` that does leaves its prefix.
            let _ = write!(text, "{why}");
            put("error", text.buf.get(..text.len).unwrap_or(&[]))?;
            put("state", REFUSED)
        }
    }
}

/// Why the peer's keys were refused, or could not be read: one error for
/// every key of the rendezvous, whichever side reads them.
///
/// # Examples
///
/// ```
/// use coresident_xen::protocol::keys::{Key, KeyError};
/// use coresident_xen::protocol::xs_wire::ValueError;
///
/// let e = KeyError::Value(Key::Port, ValueError::NotANumber);
/// assert!(e.is_malformed());
/// assert!(e.to_string().starts_with("rendezvous key port: "));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyError {
    /// XenStore failed (connection, permissions, quota).
    Store(XsError),
    /// A channel name or context outside `[A-Za-z0-9_-]{1,64}`.
    BadName,
    /// A path did not fit its buffer.
    PathTooLong,
    /// A required key is missing.
    Missing(Key),
    /// A value that does not parse.
    Value(Key, ValueError),
    /// Another version of the keys.
    BadVersion(u32),
    /// A `state` value this version does not know.
    BadState(Key),
    /// A port outside `1..PORT_LIMIT`.
    BadPort(u32),
    /// A grant reference outside `FIRST_GRANT_REF..GRANT_REF_LIMIT` (or,
    /// from the side's own check, listed twice).
    BadRef(GrantRef),
    /// `nrefs` is 0 or above the side's limit, or the `refsN` keys hold
    /// another number of references.
    BadRefCount,
    /// Each key parses, but together they are not an offer the transport
    /// takes ([`crxg::Offer::check`](crate::protocol::crxg::Offer::check):
    /// ring sizes, or a count of references that does not match them).
    BadOffer(CrxgError),
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Store(e) => write!(f, "{e}"),
            Self::BadName => f.write_str("channel name outside [A-Za-z0-9_-]{1,64}"),
            Self::PathTooLong => f.write_str("XenStore path too long"),
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
            Self::BadOffer(e) => write!(f, "rendezvous offer refused: {e}"),
        }
    }
}

impl core::error::Error for KeyError {}

impl From<XsError> for KeyError {
    fn from(e: XsError) -> Self {
        Self::Store(e)
    }
}

impl KeyError {
    /// Whether this is about what the peer wrote (a malformed offer or
    /// answer), rather than XenStore or this side failing: what an
    /// acceptor answers `refused`.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::protocol::keys::{Key, KeyError};
    /// use coresident_xen::XsError;
    ///
    /// assert!(KeyError::Missing(Key::Nrefs).is_malformed()); // the peer's fault
    /// assert!(!KeyError::Store(XsError::Closed).is_malformed()); // ours
    /// ```
    pub fn is_malformed(&self) -> bool {
        !matches!(self, Self::Store(_) | Self::BadName | Self::PathTooLong)
    }
}

/// Reads `dir/key`, absent as [`KeyError::Missing`].
fn read_value<'s, X: XsClient>(s: &'s mut X, dir: &str, key: Key) -> Result<&'s [u8], KeyError> {
    let p = Path::new(format_args!("{dir}/{key}"))?;
    match s.read(p.as_str()) {
        Ok(v) => Ok(v),
        Err(XsError::NotFound) => Err(KeyError::Missing(key)),
        Err(e) => Err(KeyError::Store(e)),
    }
}

/// Reads the required decimal key `dir/key`.
///
/// # Errors
///
/// [`KeyError::Missing`], [`KeyError::Value`], the store's.
///
/// # Examples
///
/// ```
/// use coresident_xen::protocol::keys::{read_u32, Key, KeyError};
/// # use std::collections::BTreeMap;
/// # use coresident_xen::protocol::xs_wire::{MsgType, Payload};
/// # use coresident_xen::xenstore::{TxId, WatchEvent, XsClient, XsError};
/// # #[derive(Default)] struct Store(BTreeMap<String, Vec<u8>>); // answers reads
/// # impl XsClient for Store { fn lost_events(&self) -> u64 { 0 }
/// #   fn request(&mut self, _: TxId, _: MsgType, p: &Payload) -> Result<&[u8], XsError> {
/// #     let path = core::str::from_utf8(&p.as_bytes()[..p.as_bytes().len() - 1]).unwrap();
/// #     self.0.get(path).map(|v| &v[..]).ok_or(XsError::NotFound) }
/// #   fn wait_watch(&mut self, _: Option<core::time::Duration>) -> Result<Option<WatchEvent<'_>>, XsError> { Ok(None) } }
/// let mut xs = Store::default();
/// xs.0.insert("o/port".into(), b"17".to_vec());
/// assert_eq!(read_u32(&mut xs, "o", Key::Port)?, 17);
/// assert_eq!(read_u32(&mut xs, "o", Key::Nrefs), Err(KeyError::Missing(Key::Nrefs)));
/// # Ok::<(), KeyError>(())
/// ```
pub fn read_u32<X: XsClient>(s: &mut X, dir: &str, key: Key) -> Result<u32, KeyError> {
    xs_wire::parse_u32(read_value(s, dir, key)?).map_err(|e| KeyError::Value(key, e))
}

/// Reads `dir/state` as one of `states`' values (its index); `Ok(None)`
/// while it is absent or not yet readable by us.
fn read_state<X: XsClient>(
    s: &mut X,
    dir: &str,
    states: &[&[u8]],
) -> Result<Option<usize>, KeyError> {
    let p = Path::new(format_args!("{dir}/{}", Key::State))?;
    match s.read(p.as_str()) {
        Ok(v) => {
            let v = v.strip_suffix(&[0]).unwrap_or(v);
            match states.iter().position(|s| *s == v) {
                Some(i) => Ok(Some(i)),
                None => Err(KeyError::BadState(Key::State)),
            }
        }
        Err(e) if matches!(e, XsError::NotFound) || e.is_denied() => Ok(None),
        Err(e) => Err(KeyError::Store(e)),
    }
}

fn check_version(version: u32) -> Result<(), KeyError> {
    if version == u32::from(RENDEZVOUS_VERSION) {
        Ok(())
    } else {
        Err(KeyError::BadVersion(version))
    }
}

/// An offer's values but its references, as read by [`read_offer`].
///
/// # Examples
///
/// ```
/// use coresident::ChannelLayout;
/// use coresident_xen::protocol::keys::{read_offer, write_offer, KeyError, OfferKeys};
/// # use std::collections::BTreeMap;
/// # use coresident_xen::protocol::xs_wire::{MsgType, Payload};
/// # use coresident_xen::xenstore::{TxId, WatchEvent, XsClient, XsError};
/// # #[derive(Default)] struct Store(BTreeMap<String, Vec<u8>>); // answers reads
/// # impl XsClient for Store { fn lost_events(&self) -> u64 { 0 }
/// #   fn request(&mut self, _: TxId, _: MsgType, p: &Payload) -> Result<&[u8], XsError> {
/// #     let path = core::str::from_utf8(&p.as_bytes()[..p.as_bytes().len() - 1]).unwrap();
/// #     self.0.get(path).map(|v| &v[..]).ok_or(XsError::NotFound) }
/// #   fn wait_watch(&mut self, _: Option<core::time::Duration>) -> Result<Option<WatchEvent<'_>>, XsError> { Ok(None) } }
/// let mut xs = Store::default();
/// let layout = ChannelLayout::symmetric(4096);
/// let mut put = |k: &str, v: &[u8]| Ok::<(), KeyError>(drop(xs.0.insert(format!("o/{k}"), v.to_vec())));
/// write_offer(&mut put, 17, layout, 4, &mut (8..12))?;
/// let keys = read_offer(&mut xs, "o", 16, &mut |_| Ok(()))?;
/// assert_eq!(keys, Some(OfferKeys { port: 17, layout, nrefs: 4 }));
/// # Ok::<(), KeyError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OfferKeys {
    /// The offerer's unbound port for the acceptor, in `1..PORT_LIMIT`.
    pub port: EvtchnPort,
    /// The ring sizes, unchecked: the side's transport checks them against
    /// `nrefs`.
    pub layout: ChannelLayout,
    /// How many references were handed out.
    pub nrefs: usize,
}

/// Reads and checks the offer under `dir`: `Ok(None)` while its `state`
/// is absent or not yet readable by us, or while a later key is not
/// readable (the offerer is replacing the offer: it removed the directory
/// and made it again, and has not set its permissions yet; the watch fires
/// again when it does); otherwise every key, in order,
/// each value strictly parsed and in range. The references, at most
/// `max_refs`, go to `push` one by one in page order, each in
/// `FIRST_GRANT_REF..GRANT_REF_LIMIT` (`push` may refuse one); one `refs`
/// key past the count must not exist (extra keys lie about the count).
///
/// Who calls it: [`ChannelKeys`](crate::rendezvous::ChannelKeys), which a
/// daemon or kernel uses instead; it is public for the fuzz target
/// `fuzz/fuzz_targets/xs_rendezvous_keys.rs`, which checks that what this
/// module writes reads back the same and that any peer-written keys are
/// refused, never a panic.
///
/// # Errors
///
/// Every malformed value is a [`KeyError`]; `push`'s.
///
/// # Examples
///
/// ```
/// use coresident::ChannelLayout;
/// use coresident_xen::protocol::keys::{read_offer, write_offer, KeyError};
/// # use std::collections::BTreeMap;
/// # use coresident_xen::protocol::xs_wire::{MsgType, Payload};
/// # use coresident_xen::xenstore::{TxId, WatchEvent, XsClient, XsError};
/// # #[derive(Default)] struct Store(BTreeMap<String, Vec<u8>>); // answers reads
/// # impl XsClient for Store { fn lost_events(&self) -> u64 { 0 }
/// #   fn request(&mut self, _: TxId, _: MsgType, p: &Payload) -> Result<&[u8], XsError> {
/// #     let path = core::str::from_utf8(&p.as_bytes()[..p.as_bytes().len() - 1]).unwrap();
/// #     self.0.get(path).map(|v| &v[..]).ok_or(XsError::NotFound) }
/// #   fn wait_watch(&mut self, _: Option<core::time::Duration>) -> Result<Option<WatchEvent<'_>>, XsError> { Ok(None) } }
/// let mut xs = Store::default();
/// assert_eq!(read_offer(&mut xs, "o", 16, &mut |_| Ok(()))?, None); // no state yet
/// let mut put = |k: &str, v: &[u8]| Ok::<(), KeyError>(drop(xs.0.insert(format!("o/{k}"), v.to_vec())));
/// write_offer(&mut put, 17, ChannelLayout::symmetric(4096), 4, &mut (8..12))?;
/// let mut refs = Vec::new();
/// read_offer(&mut xs, "o", 16, &mut |r| Ok(refs.push(r)))?;
/// assert_eq!(refs, [8, 9, 10, 11]);
/// # Ok::<(), KeyError>(())
/// ```
pub fn read_offer<X: XsClient>(
    s: &mut X,
    dir: &str,
    max_refs: usize,
    push: &mut dyn FnMut(GrantRef) -> Result<(), KeyError>,
) -> Result<Option<OfferKeys>, KeyError> {
    not_yet_if_unreadable(read_offer_keys(s, dir, max_refs, push))
}

/// `Ok(None)` for a key we may not read once `state` was readable: the
/// directory is being replaced.
fn not_yet_if_unreadable<T>(r: Result<Option<T>, KeyError>) -> Result<Option<T>, KeyError> {
    match r {
        Err(KeyError::Store(e)) if e.is_denied() => Ok(None),
        r => r,
    }
}

fn read_offer_keys<X: XsClient>(
    s: &mut X,
    dir: &str,
    max_refs: usize,
    push: &mut dyn FnMut(GrantRef) -> Result<(), KeyError>,
) -> Result<Option<OfferKeys>, KeyError> {
    if read_state(s, dir, &[OFFERED])?.is_none() {
        return Ok(None);
    }
    check_version(read_u32(s, dir, Key::Version)?)?;
    let port = read_u32(s, dir, Key::Port)?;
    if !(1..PORT_LIMIT).contains(&port) {
        return Err(KeyError::BadPort(port));
    }
    let layout = ChannelLayout {
        to_acceptor: read_u32(s, dir, Key::ToAcceptor)?,
        to_offerer: read_u32(s, dir, Key::ToOfferer)?,
    };
    let nrefs = read_u32(s, dir, Key::Nrefs)?;
    let nrefs = usize::try_from(nrefs).map_err(|_| KeyError::BadRefCount)?;
    if nrefs == 0 || nrefs > max_refs {
        return Err(KeyError::BadRefCount);
    }
    let keys = nrefs.div_ceil(REFS_PER_KEY);
    for (i, start) in (0..nrefs).step_by(REFS_PER_KEY).enumerate() {
        // A u16 holds every key index of a count below 2^23.
        let key = Key::Refs(u16::try_from(i).map_err(|_| KeyError::BadRefCount)?);
        let v = read_value(s, dir, key)?;
        let want = (nrefs - start).min(REFS_PER_KEY);
        let v = v.strip_suffix(&[0]).unwrap_or(v);
        let mut n = 0;
        for field in v.split(|&b| b == b' ') {
            let r = xs_wire::parse_u32(field).map_err(|e| KeyError::Value(key, e))?;
            n += 1;
            if n > want {
                return Err(KeyError::BadRefCount);
            }
            if !(FIRST_GRANT_REF..GRANT_REF_LIMIT).contains(&r) {
                return Err(KeyError::BadRef(r));
            }
            push(r)?;
        }
        if n != want {
            return Err(KeyError::BadRefCount);
        }
    }
    let extra = Key::Refs(u16::try_from(keys).map_err(|_| KeyError::BadRefCount)?);
    match read_value(s, dir, extra) {
        Err(KeyError::Missing(_)) => {}
        Ok(_) => return Err(KeyError::BadRefCount),
        Err(e) => return Err(e),
    }
    Ok(Some(OfferKeys {
        port,
        layout,
        nrefs,
    }))
}

/// Reads the answer under `dir` to the offer of `port`: `Some(true)` for
/// `accepted`, `Some(false)` for `refused`, `None` while it is absent,
/// unreadable (any of its keys: it is being replaced), or about another
/// offer (a stale answer names another `offer-port`).
///
/// Who calls it: [`ChannelKeys`](crate::rendezvous::ChannelKeys), which a
/// daemon or kernel uses instead; it is public for the fuzz target
/// `fuzz/fuzz_targets/xs_rendezvous_keys.rs`, which checks that what this
/// module writes reads back the same and that any peer-written keys are
/// refused, never a panic.
///
/// # Errors
///
/// [`KeyError::BadState`], [`KeyError::BadVersion`], a malformed
/// `offer-port` or `version`, the store's.
///
/// # Examples
///
/// ```
/// use coresident_xen::protocol::keys::{read_answer, write_answer, KeyError};
/// # use std::collections::BTreeMap;
/// # use coresident_xen::protocol::xs_wire::{MsgType, Payload};
/// # use coresident_xen::xenstore::{TxId, WatchEvent, XsClient, XsError};
/// # #[derive(Default)] struct Store(BTreeMap<String, Vec<u8>>); // answers reads
/// # impl XsClient for Store { fn lost_events(&self) -> u64 { 0 }
/// #   fn request(&mut self, _: TxId, _: MsgType, p: &Payload) -> Result<&[u8], XsError> {
/// #     let path = core::str::from_utf8(&p.as_bytes()[..p.as_bytes().len() - 1]).unwrap();
/// #     self.0.get(path).map(|v| &v[..]).ok_or(XsError::NotFound) }
/// #   fn wait_watch(&mut self, _: Option<core::time::Duration>) -> Result<Option<WatchEvent<'_>>, XsError> { Ok(None) } }
/// let mut xs = Store::default();
/// let mut put = |k: &str, v: &[u8]| Ok::<(), KeyError>(drop(xs.0.insert(format!("a/{k}"), v.to_vec())));
/// write_answer(&mut put, 17, Ok(40))?;
/// assert_eq!(read_answer(&mut xs, "a", 17)?, Some(true)); // accepted
/// assert_eq!(read_answer(&mut xs, "a", 18)?, None); // about another offer
/// # Ok::<(), KeyError>(())
/// ```
pub fn read_answer<X: XsClient>(
    s: &mut X,
    dir: &str,
    port: EvtchnPort,
) -> Result<Option<bool>, KeyError> {
    not_yet_if_unreadable(read_answer_keys(s, dir, port))
}

fn read_answer_keys<X: XsClient>(
    s: &mut X,
    dir: &str,
    port: EvtchnPort,
) -> Result<Option<bool>, KeyError> {
    // The state is judged once the answer is known to be about our offer.
    let state = match read_state(s, dir, &[ACCEPTED, REFUSED]) {
        Ok(None) => return Ok(None),
        Ok(Some(i)) => Ok(i == 0),
        Err(KeyError::BadState(k)) => Err(KeyError::BadState(k)),
        Err(e) => return Err(e),
    };
    match read_u32(s, dir, Key::OfferPort) {
        Ok(p) if p == port => {}
        Ok(_) | Err(KeyError::Missing(_)) => return Ok(None),
        Err(e) => return Err(e),
    }
    check_version(read_u32(s, dir, Key::Version)?)?;
    state.map(Some)
}

#[cfg(test)]
#[path = "tests_keys.rs"]
mod tests;
