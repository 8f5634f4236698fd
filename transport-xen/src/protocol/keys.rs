//! The XenStore rendezvous's vocabulary, `core` only and without
//! allocation, so both of its sides speak it from one place: the `std`
//! client's `crate::rendezvous` (a daemon in any domain) and a PV
//! guest kernel's [`ring_rendezvous`](crate::ring_rendezvous) (over the
//! start_info XenStore ring).
//!
//! ```text
//!  offer:  /local/domain/O/data/coresident/channels/A/NAME/offer/
//!          version port to-acceptor to-offerer nrefs refs0.. state=offered
//!  answer: /local/domain/A/data/coresident/channels/O/NAME/answer/
//!          version offer-port port state=accepted   (or error, state=refused)
//! ```
//!
//! What lives here: the key names ([`Key`]) and directories
//! ([`write_offer_dir`], [`write_answer_dir`]), the limits, the order in
//! which the keys are written (`state` last: [`write_offer`],
//! [`write_answer`]), and the reading and checking of every value the peer
//! wrote ([`read_offer`], [`read_answer`]) through a [`Store`], the one
//! thing each side supplies. What stays with each side: the store's
//! connection, the node permissions it sets while writing, the watches,
//! and the checks that need its transport (the ring sizes against the
//! reference count, repeated references).

use core::fmt::{self, Write as _};

use coresident::ChannelLayout;

use crate::protocol::crxg::RENDEZVOUS_VERSION;
use crate::protocol::xs_wire::{self, Access, Perm, ValueError};
use crate::types::{DomId, EvtchnPort, GrantRef};

/// Where channels live in a domain's home.
pub const CHANNELS: &str = "data/coresident/channels";
/// References per `refsN` key: 128 × 11 bytes fit xenstored's default
/// 2048-byte quota on a guest's values.
pub const REFS_PER_KEY: usize = 128;
/// The longest channel name.
pub const MAX_NAME_LEN: usize = 64;
/// The first grant reference a domain can grant: Xen reserves 0..8
/// (`GNTTAB_NR_RESERVED_ENTRIES`, `public/grant_table.h`).
pub const FIRST_GRANT_REF: GrantRef = 8;
/// References at or above this are refused: 2^20 v1 entries are 2048
/// grant frames, 32 times Xen 4.17's default `max_grant_frames` (64).
pub const GRANT_REF_LIMIT: GrantRef = 1 << 20;
/// Ports at or above this are refused: the FIFO ABI's
/// `EVTCHN_FIFO_NR_CHANNELS` (`public/event_channel.h`); the 2-level ABI
/// has fewer. Port 0 is never allocated.
pub const PORT_LIMIT: EvtchnPort = 1 << 17;
/// The longest `error` text an acceptor writes (longer text is cut).
pub const ERROR_TEXT_MAX: usize = 256;
/// The offer's `state`.
pub const OFFERED: &[u8] = b"offered";
/// The answer's `state` when the acceptor took the offer.
pub const ACCEPTED: &[u8] = b"accepted";
/// The answer's `state` when the acceptor refused it.
pub const REFUSED: &[u8] = b"refused";

/// A rendezvous key.
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

/// Whether `name` is a channel name: `[A-Za-z0-9_-]{1,64}`.
pub fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The permissions of every node of an offer or answer: owned by its
/// writer, no access for other domains, read for the peer.
pub fn perms(owner: DomId, reader: DomId) -> [Perm; 2] {
    [
        Perm {
            domid: owner,
            access: Access::None,
        },
        Perm {
            domid: reader,
            access: Access::Read,
        },
    ]
}

/// Writes the offer's directory,
/// `/local/domain/OFFERER/data/coresident/channels/ACCEPTOR/NAME/offer`.
///
/// # Errors
///
/// `w`'s.
pub fn write_offer_dir(
    w: &mut dyn fmt::Write,
    offerer: DomId,
    acceptor: DomId,
    name: &str,
) -> fmt::Result {
    write!(
        w,
        "/local/domain/{offerer}/{CHANNELS}/{acceptor}/{name}/offer"
    )
}

/// Writes the answer's directory,
/// `/local/domain/ACCEPTOR/data/coresident/channels/OFFERER/NAME/answer`.
///
/// # Errors
///
/// `w`'s.
pub fn write_answer_dir(
    w: &mut dyn fmt::Write,
    acceptor: DomId,
    offerer: DomId,
    name: &str,
) -> fmt::Result {
    write!(
        w,
        "/local/domain/{acceptor}/{CHANNELS}/{offerer}/{name}/answer"
    )
}

/// A path or value did not fit its fixed buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooLong;

impl fmt::Display for TooLong {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("XenStore path too long")
    }
}

impl core::error::Error for TooLong {}

/// A XenStore path (or short text) built on the stack.
#[derive(Clone)]
pub struct Path {
    buf: [u8; 192],
    len: usize,
}

impl fmt::Debug for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Write for Path {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len.checked_add(s.len()).ok_or(fmt::Error)?;
        self.buf
            .get_mut(self.len..end)
            .ok_or(fmt::Error)?
            .copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

impl Path {
    /// An empty path.
    pub const fn empty() -> Self {
        Self {
            buf: [0; 192],
            len: 0,
        }
    }

    /// The path of `args`.
    ///
    /// # Errors
    ///
    /// [`TooLong`].
    pub fn new(args: fmt::Arguments<'_>) -> Result<Self, TooLong> {
        let mut p = Self::empty();
        p.write_fmt(args).map_err(|_| TooLong)?;
        Ok(p)
    }

    /// The path (UTF-8: only `str`s were written).
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(self.buf.get(..self.len).unwrap_or(&[])).unwrap_or("")
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

/// `v` in decimal, in `buf`.
fn dec(mut v: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        // `v % 10 < 10`: the cast keeps every bit.
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    &buf[i..]
}

/// Writes `key` = `value` under the directory being written.
pub type Put<'a, E> = dyn FnMut(&str, &[u8]) -> Result<(), E> + 'a;

/// Writes an offer's keys in the protocol's order through `put(key,
/// value)`, `state=offered` last: the acceptor reads nothing before it.
/// `refs` are the offer's `nrefs` grant references, in page order.
///
/// # Errors
///
/// `put`'s, or [`TooLong`] if `refs` holds more than `nrefs` references.
pub fn write_offer<E: From<TooLong>>(
    put: &mut Put<'_, E>,
    port: EvtchnPort,
    layout: ChannelLayout,
    nrefs: usize,
    refs: &mut dyn Iterator<Item = GrantRef>,
) -> Result<(), E> {
    let mut num = [0u8; 20];
    put("version", dec(RENDEZVOUS_VERSION.into(), &mut num))?;
    put("port", dec(port.into(), &mut num))?;
    put("to-acceptor", dec(layout.to_acceptor.into(), &mut num))?;
    put("to-offerer", dec(layout.to_offerer.into(), &mut num))?;
    put(
        "nrefs",
        dec(u64::try_from(nrefs).unwrap_or(u64::MAX), &mut num),
    )?;
    // REFS_PER_KEY references of at most 10 digits and a space each.
    let mut value = [0u8; REFS_PER_KEY * 11];
    let mut left = nrefs;
    let mut k = 0u16;
    while left > 0 {
        let mut len = 0;
        for r in (&mut *refs).take(REFS_PER_KEY.min(left)) {
            let digits = dec(r.into(), &mut num);
            let sep = usize::from(len > 0);
            let end = len + sep + digits.len();
            let slot = value.get_mut(len..end).ok_or(TooLong)?;
            slot[..sep].copy_from_slice(&b" "[..sep]);
            slot[sep..].copy_from_slice(digits);
            len = end;
            left -= 1;
        }
        if len == 0 {
            // Fewer references than `nrefs`: the count would lie.
            return Err(TooLong.into());
        }
        let key = Path::new(format_args!("{}", Key::Refs(k)))?;
        put(key.as_str(), value.get(..len).unwrap_or(&[]))?;
        k += 1;
    }
    if refs.next().is_some() {
        return Err(TooLong.into());
    }
    put("state", OFFERED)
}

/// Writes an answer's keys through `put(key, value)`: `accepted` with the
/// acceptor's port, or `refused` with the reason (cut at
/// [`ERROR_TEXT_MAX`] bytes); `offer-port` ties it to the offer of that
/// port; `state` last.
///
/// # Errors
///
/// `put`'s.
pub fn write_answer<E>(
    put: &mut Put<'_, E>,
    offer_port: EvtchnPort,
    outcome: Result<EvtchnPort, &dyn fmt::Display>,
) -> Result<(), E> {
    let mut num = [0u8; 20];
    put("version", dec(RENDEZVOUS_VERSION.into(), &mut num))?;
    put("offer-port", dec(offer_port.into(), &mut num))?;
    match outcome {
        Ok(port) => {
            put("port", dec(port.into(), &mut num))?;
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

/// Read access to XenStore, as each side has it.
pub trait Store {
    /// The store's failure.
    type Error;
    /// The value of the node at `path`.
    ///
    /// # Errors
    ///
    /// The store's, among them "absent" and "unreadable" (below).
    fn read(&mut self, path: &str) -> Result<&[u8], Self::Error>;
    /// Whether `e` says the node does not exist (`ENOENT`).
    fn is_absent(e: &Self::Error) -> bool;
    /// Whether `e` says we may not read it (`EACCES`): for `state`, a
    /// node whose permissions are not set yet.
    fn is_unreadable(e: &Self::Error) -> bool;
}

/// Why the peer's keys were refused, or could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadError<E> {
    /// The store failed.
    Store(E),
    /// A path did not fit its buffer (a channel name too long).
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
}

impl<E> From<TooLong> for ReadError<E> {
    fn from(_: TooLong) -> Self {
        Self::PathTooLong
    }
}

/// Reads `dir/key`, absent as [`ReadError::Missing`].
fn read_value<'s, S: Store>(
    s: &'s mut S,
    dir: &str,
    key: Key,
) -> Result<&'s [u8], ReadError<S::Error>> {
    let p = Path::new(format_args!("{dir}/{key}"))?;
    match s.read(p.as_str()) {
        Ok(v) => Ok(v),
        Err(e) if S::is_absent(&e) => Err(ReadError::Missing(key)),
        Err(e) => Err(ReadError::Store(e)),
    }
}

/// Reads the required decimal key `dir/key`.
///
/// # Errors
///
/// [`ReadError::Missing`], [`ReadError::Value`], the store's.
pub fn read_u32<S: Store>(s: &mut S, dir: &str, key: Key) -> Result<u32, ReadError<S::Error>> {
    xs_wire::parse_u32(read_value(s, dir, key)?).map_err(|e| ReadError::Value(key, e))
}

/// Reads `dir/state` as one of `states`' values (its index); `Ok(None)`
/// while it is absent or not yet readable by us.
fn read_state<S: Store>(
    s: &mut S,
    dir: &str,
    states: &[&[u8]],
) -> Result<Option<usize>, ReadError<S::Error>> {
    let p = Path::new(format_args!("{dir}/{}", Key::State))?;
    match s.read(p.as_str()) {
        Ok(v) => {
            let v = v.strip_suffix(&[0]).unwrap_or(v);
            match states.iter().position(|s| *s == v) {
                Some(i) => Ok(Some(i)),
                None => Err(ReadError::BadState(Key::State)),
            }
        }
        Err(e) if S::is_absent(&e) || S::is_unreadable(&e) => Ok(None),
        Err(e) => Err(ReadError::Store(e)),
    }
}

fn check_version<E>(version: u32) -> Result<(), ReadError<E>> {
    if version == u32::from(RENDEZVOUS_VERSION) {
        Ok(())
    } else {
        Err(ReadError::BadVersion(version))
    }
}

/// An offer's values but its references, as read by [`read_offer`].
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
/// # Errors
///
/// Every malformed value is a [`ReadError`]; `push`'s.
pub fn read_offer<S: Store>(
    s: &mut S,
    dir: &str,
    max_refs: usize,
    push: &mut dyn FnMut(GrantRef) -> Result<(), ReadError<S::Error>>,
) -> Result<Option<OfferKeys>, ReadError<S::Error>> {
    not_yet_if_unreadable::<S, _>(read_offer_keys(s, dir, max_refs, push))
}

/// `Ok(None)` for a key we may not read once `state` was readable: the
/// directory is being replaced.
fn not_yet_if_unreadable<S: Store, T>(
    r: Result<Option<T>, ReadError<S::Error>>,
) -> Result<Option<T>, ReadError<S::Error>> {
    match r {
        Err(ReadError::Store(e)) if S::is_unreadable(&e) => Ok(None),
        r => r,
    }
}

fn read_offer_keys<S: Store>(
    s: &mut S,
    dir: &str,
    max_refs: usize,
    push: &mut dyn FnMut(GrantRef) -> Result<(), ReadError<S::Error>>,
) -> Result<Option<OfferKeys>, ReadError<S::Error>> {
    if read_state(s, dir, &[OFFERED])?.is_none() {
        return Ok(None);
    }
    check_version(read_u32(s, dir, Key::Version)?)?;
    let port = read_u32(s, dir, Key::Port)?;
    if !(1..PORT_LIMIT).contains(&port) {
        return Err(ReadError::BadPort(port));
    }
    let layout = ChannelLayout {
        to_acceptor: read_u32(s, dir, Key::ToAcceptor)?,
        to_offerer: read_u32(s, dir, Key::ToOfferer)?,
    };
    let nrefs = read_u32(s, dir, Key::Nrefs)?;
    let nrefs = usize::try_from(nrefs).map_err(|_| ReadError::BadRefCount)?;
    if nrefs == 0 || nrefs > max_refs {
        return Err(ReadError::BadRefCount);
    }
    let keys = nrefs.div_ceil(REFS_PER_KEY);
    for (i, start) in (0..nrefs).step_by(REFS_PER_KEY).enumerate() {
        // A u16 holds every key index of a count below 2^23.
        let key = Key::Refs(u16::try_from(i).map_err(|_| ReadError::BadRefCount)?);
        let v = read_value(s, dir, key)?;
        let want = (nrefs - start).min(REFS_PER_KEY);
        let v = v.strip_suffix(&[0]).unwrap_or(v);
        let mut n = 0;
        for field in v.split(|&b| b == b' ') {
            let r = xs_wire::parse_u32(field).map_err(|e| ReadError::Value(key, e))?;
            n += 1;
            if n > want {
                return Err(ReadError::BadRefCount);
            }
            if !(FIRST_GRANT_REF..GRANT_REF_LIMIT).contains(&r) {
                return Err(ReadError::BadRef(r));
            }
            push(r)?;
        }
        if n != want {
            return Err(ReadError::BadRefCount);
        }
    }
    let extra = Key::Refs(u16::try_from(keys).map_err(|_| ReadError::BadRefCount)?);
    match read_value(s, dir, extra) {
        Err(ReadError::Missing(_)) => {}
        Ok(_) => return Err(ReadError::BadRefCount),
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
/// # Errors
///
/// [`ReadError::BadState`], [`ReadError::BadVersion`], a malformed
/// `offer-port` or `version`, the store's.
pub fn read_answer<S: Store>(
    s: &mut S,
    dir: &str,
    port: EvtchnPort,
) -> Result<Option<bool>, ReadError<S::Error>> {
    not_yet_if_unreadable::<S, _>(read_answer_keys(s, dir, port))
}

fn read_answer_keys<S: Store>(
    s: &mut S,
    dir: &str,
    port: EvtchnPort,
) -> Result<Option<bool>, ReadError<S::Error>> {
    // The state is judged once the answer is known to be about our offer.
    let state = match read_state(s, dir, &[ACCEPTED, REFUSED]) {
        Ok(None) => return Ok(None),
        Ok(Some(i)) => Ok(i == 0),
        Err(ReadError::BadState(k)) => Err(ReadError::BadState(k)),
        Err(e) => return Err(e),
    };
    match read_u32(s, dir, Key::OfferPort) {
        Ok(p) if p == port => {}
        Ok(_) | Err(ReadError::Missing(_)) => return Ok(None),
        Err(e) => return Err(e),
    }
    check_version(read_u32(s, dir, Key::Version)?)?;
    state.map(Some)
}

#[cfg(test)]
mod tests {
    //! The two sides' reading and checking are tested through them (the
    //! `std` rendezvous over a fake xenstored, the ring one over a
    //! simulated ring); here what is this module's alone.
    extern crate std;
    use super::*;
    use std::string::String;
    use std::vec::Vec;

    fn written(f: impl FnOnce(&mut dyn FnMut(&str, &[u8]) -> Result<(), TooLong>)) -> Vec<String> {
        let mut out = Vec::new();
        f(&mut |k, v| {
            out.push(std::format!("{k}={}", std::str::from_utf8(v).unwrap()));
            Ok(())
        });
        out
    }

    #[test]
    fn an_offer_is_written_in_order_state_last() {
        let layout = ChannelLayout::symmetric(4096);
        let refs: Vec<GrantRef> = (8..8 + 130).collect();
        let keys = written(|put| {
            write_offer(put, 17, layout, refs.len(), &mut refs.iter().copied()).unwrap()
        });
        let names: Vec<&str> = keys.iter().map(|k| k.split('=').next().unwrap()).collect();
        let order = [
            "version",
            "port",
            "to-acceptor",
            "to-offerer",
            "nrefs",
            "refs0",
            "refs1",
            "state",
        ];
        assert_eq!(names, order);
        assert_eq!(keys[1], "port=17");
        assert_eq!(keys[4], "nrefs=130");
        assert_eq!(keys[6], "refs1=136 137");
        assert_eq!(keys[7], "state=offered");
        // A count that lies about the references is not written.
        let mut n = 0;
        let mut count = |_: &str, _: &[u8]| -> Result<(), TooLong> {
            n += 1;
            Ok(())
        };
        let r = write_offer(&mut count, 17, layout, 3, &mut [8, 9].into_iter());
        assert_eq!(r, Err(TooLong));
        let r = write_offer(&mut count, 17, layout, 1, &mut [8, 9].into_iter());
        assert_eq!(r, Err(TooLong));
        assert_eq!(n, 12, "no state=offered after a lie");
    }

    #[test]
    fn an_answer_is_written_state_last_and_its_reason_cut() {
        let keys = written(|put| write_answer(put, 21, Ok(4)).unwrap());
        assert_eq!(
            keys,
            ["version=1", "offer-port=21", "port=4", "state=accepted"]
        );
        let long = "é".repeat(200);
        let keys = written(|put| write_answer(put, 21, Err(&long)).unwrap());
        assert_eq!(keys.len(), 4);
        let error = keys[2].strip_prefix("error=").unwrap();
        assert_eq!(error.len(), ERROR_TEXT_MAX);
        assert_eq!(keys[3], "state=refused");
    }

    #[test]
    fn names_keys_and_directories() {
        assert!(valid_name("a-Z_09"));
        assert!(!valid_name("") && !valid_name("a/b") && !valid_name(&"x".repeat(65)));
        assert_eq!(std::format!("{}", Key::Refs(3)), "refs3");
        assert_eq!(Key::Refs(3).name(), "refsN");
        let mut p = Path::empty();
        write_offer_dir(&mut p, 0, 5, "pv").unwrap();
        assert_eq!(
            p.as_str(),
            "/local/domain/0/data/coresident/channels/5/pv/offer"
        );
        let mut p = Path::empty();
        write_answer_dir(&mut p, 5, 0, "pv").unwrap();
        assert_eq!(
            p.as_str(),
            "/local/domain/5/data/coresident/channels/0/pv/answer"
        );
        assert_eq!(
            Path::new(format_args!("{}", "x".repeat(193))).unwrap_err(),
            TooLong
        );
        assert_eq!(dec(u64::MAX, &mut [0; 20]), b"18446744073709551615");
        assert_eq!(dec(0, &mut [0; 20]), b"0");
    }
}
