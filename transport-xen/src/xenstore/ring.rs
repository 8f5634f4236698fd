//! A XenStore client over the shared ring page a guest kernel gets from
//! its `start_info` (`store_mfn`, `store_evtchn`): `struct
//! xenstore_domain_interface` of `xen/include/public/io/xs_wire.h` (Xen
//! 4.17). `core` only, no allocation: a `no_std` kernel uses it directly;
//! Linux userspace uses [`xenstore`] (the kernel relays the same
//! messages).
//!
//! ```text
//!  0            1024          2048     2052     2056     2060     2064..2076
//!  ┌────────────┬────────────┬────────┬────────┬────────┬────────┬─────────┐
//!  │ req[1024]  │ rsp[1024]  │req_cons│req_prod│rsp_cons│rsp_prod│features,│
//!  │ guest→xsd  │ xsd→guest  │  xsd   │ guest  │ guest  │  xsd   │conn, err│
//!  └────────────┴────────────┴────────┴────────┴────────┴────────┴─────────┘
//! ```
//!
//! Both rings are byte streams of [`crate::protocol::xs_wire`] messages (a 16-byte
//! header, then up to 4096 bytes of payload), so one message may take
//! several turns of a 1024-byte ring. Indices are free-running `u32`s; a
//! byte's slot is `idx % 1024` (`MASK_XENSTORE_IDX`).
//!
//! # The peer is not trusted
//!
//! xenstored (or whatever sits on the other end) writes `req_cons`,
//! `rsp_prod`, the `rsp` bytes and the trailing words at any time. The
//! client keeps its own copies of the indices it owns (`req_prod`,
//! `rsp_cons`) and never reads them back; the peer's indices must stay
//! within one ring of ours ([`XsError::BadIndex`]); every header is
//! decoded with [`Header::decode`] (length, type) and every reply must
//! answer the request in flight. A framing error leaves the byte stream out
//! of step, so it breaks the client for good ([`XsError::Broken`]).
//! No access to the page is a Rust reference: the indices are atomics, the
//! bytes are copied with volatile reads and writes.
//!
//! # Events
//!
//! The event channel (`store_evtchn`) is the kernel's business: it supplies
//! [`Events`], whose `notify` signals the port and whose `wait` returns
//! when the port may have fired. Events are hints; the client re-checks the
//! indices after every wait, so a spurious or coalesced event is harmless.
//! The host tests plug in a simulated xenstored that runs inside `wait`.
//!
//! Memory ordering follows Linux's `xenbus_comms.c`: the peer's index is
//! loaded with `Acquire` before the bytes it covers are touched, and our
//! index is stored with `Release` after our bytes are written (or read),
//! then the port is notified.
//!
#![cfg_attr(
    all(feature = "std", target_os = "linux"),
    doc = "[`xenstore`]: crate::xenstore"
)]
// Without `std` there is no xenstore module: the link goes to the crate's features.
#![cfg_attr(
    not(all(feature = "std", target_os = "linux")),
    doc = "[`xenstore`]: crate#features"
)]

use core::fmt;
use core::mem::offset_of;
use core::sync::atomic::Ordering;
use core::time::Duration;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{RingIndex, TxId, WatchEvent, XsClient, XsError};
use crate::protocol::xs_wire::{
    self, Header, MsgType, Payload, WireError, HEADER_LEN, PAYLOAD_MAX,
};
use crate::shared::SharedMem;

/// `XENSTORE_RING_SIZE`: bytes in each direction.
///
/// # Examples
///
/// ```
/// use coresident_xen::xenstore::ring::{XenstoreDomainInterface, RING_SIZE};
///
/// assert_eq!(RING_SIZE, 1024);
/// assert_eq!(size_of::<XenstoreDomainInterface>(), 2 * RING_SIZE + 7 * 4);
/// ```
pub const RING_SIZE: usize = 1024;
/// `XENSTORE_SERVER_FEATURE_ERROR`: the server reports errors in `error`.
///
/// # Examples
///
/// ```
/// use coresident_xen::xenstore::ring::SERVER_FEATURE_ERROR;
///
/// let server_features = 0b10; // as read from the page
/// assert!(server_features & SERVER_FEATURE_ERROR != 0);
/// ```
pub const SERVER_FEATURE_ERROR: u32 = 2;

/// `xen/include/public/io/xs_wire.h`: `struct xenstore_domain_interface`.
/// Only its layout is used (offsets); the live page is never behind a
/// reference of this type.
///
/// # Examples
///
/// ```
/// use core::mem::offset_of;
/// use coresident_xen::xenstore::ring::XenstoreDomainInterface as Xdi;
///
/// // The offsets the client reads and writes the page at.
/// assert_eq!(offset_of!(Xdi, rsp), 1024);
/// assert_eq!((offset_of!(Xdi, req_cons), offset_of!(Xdi, rsp_prod)), (2048, 2060));
/// ```
#[repr(C)]
#[derive(Clone, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct XenstoreDomainInterface {
    /// Requests to the xenstore daemon.
    pub req: [u8; RING_SIZE],
    /// Replies and asynchronous watch events.
    pub rsp: [u8; RING_SIZE],
    /// Written by the daemon: request bytes consumed.
    pub req_cons: u32,
    /// Written by the guest: request bytes produced.
    pub req_prod: u32,
    /// Written by the guest: reply bytes consumed.
    pub rsp_cons: u32,
    /// Written by the daemon: reply bytes produced.
    pub rsp_prod: u32,
    /// Bitmap of `XENSTORE_SERVER_FEATURE_*`.
    pub server_features: u32,
    /// `XENSTORE_CONNECTED` (0) or `XENSTORE_RECONNECT` (1).
    pub connection: u32,
    /// `XENSTORE_ERROR_*`, when the server has [`SERVER_FEATURE_ERROR`].
    pub error: u32,
}
const _: () = assert!(size_of::<XenstoreDomainInterface>() == 2076);

pub(crate) const REQ: usize = offset_of!(XenstoreDomainInterface, req);
pub(crate) const RSP: usize = offset_of!(XenstoreDomainInterface, rsp);
pub(crate) const REQ_CONS: usize = offset_of!(XenstoreDomainInterface, req_cons);
pub(crate) const REQ_PROD: usize = offset_of!(XenstoreDomainInterface, req_prod);
pub(crate) const RSP_CONS: usize = offset_of!(XenstoreDomainInterface, rsp_cons);
pub(crate) const RSP_PROD: usize = offset_of!(XenstoreDomainInterface, rsp_prod);
pub(crate) const FEATURES: usize = offset_of!(XenstoreDomainInterface, server_features);
pub(crate) const ERROR: usize = offset_of!(XenstoreDomainInterface, error);
const _: () = assert!(REQ == 0 && RSP == 1024 && REQ_CONS == 2048 && RSP_PROD == 2060);
const _: () = assert!(ERROR == 2072 && REQ_CONS % 4 == 0 && FEATURES % 4 == 0);

/// The event channel of a shared ring, supplied by the kernel.
///
/// # Examples
///
/// A PV kernel's half: the ring's event channel. Here one that never
/// waits, so a request with no daemon behind the page times out:
///
/// ```
/// use coresident_xen::xenstore::ring::{Events, XsRing};
/// use coresident_xen::xenstore::{XsClient, XsError};
///
/// struct GiveUp;
/// impl Events for GiveUp {
///     fn notify(&mut self) {} // EVTCHNOP_send on the store port
///     fn wait(&mut self) -> bool { false } // block on the port; false: give up
/// }
/// let mut page = Box::new([0u32; 1024]); // 4-aligned and zeroed: a fresh ring
/// // SAFETY: the page outlives the client and is touched by nothing else.
/// let mut xs = unsafe { XsRing::new(page.as_mut_ptr().cast(), GiveUp) }?;
/// assert_eq!(xs.read("domid").err(), Some(XsError::Timeout));
/// # Ok::<(), XsError>(())
/// ```
pub trait Events {
    /// Signals the peer (`EVTCHNOP_send` on the ring's port).
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::xenstore::ring::Events;
    ///
    /// /// Counts what a kernel would send as `EVTCHNOP_send` on the store port.
    /// struct Count(u32);
    /// impl Events for Count {
    ///     fn notify(&mut self) { self.0 += 1 }
    ///     fn wait(&mut self) -> bool { false }
    /// }
    /// let mut e = Count(0);
    /// e.notify();
    /// assert_eq!(e.0, 1);
    /// ```
    fn notify(&mut self);

    /// Returns when the peer may have signalled (or after a while: a wait is
    /// a hint, the caller re-checks the ring). `false` means "give up": the
    /// operation in progress fails with a timeout error.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::xenstore::ring::Events;
    ///
    /// /// Gives up after `n` waits: a request to a ring nobody serves fails
    /// /// with `XsError::Timeout` then.
    /// struct Patience(u32);
    /// impl Events for Patience {
    ///     fn notify(&mut self) {}
    ///     fn wait(&mut self) -> bool {
    ///         // A kernel blocks on the store port here (SCHEDOP_poll).
    ///         self.0 = self.0.saturating_sub(1);
    ///         self.0 > 0
    ///     }
    /// }
    /// let mut e = Patience(2);
    /// assert!(e.wait());
    /// assert!(!e.wait());
    /// ```
    fn wait(&mut self) -> bool;
}

/// A message buffer: payload bytes and their count.
struct Buf {
    bytes: [u8; PAYLOAD_MAX],
    /// `0 ..= PAYLOAD_MAX`.
    len: usize,
}

impl Buf {
    const fn new() -> Self {
        Self {
            bytes: [0; PAYLOAD_MAX],
            len: 0,
        }
    }

    fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or(&[])
    }
}

/// A XenStore client over a shared ring page. One request is in flight at
/// a time; watch events that arrive while a reply is awaited are kept (one;
/// more are counted in [`XsRing::lost_events`]: re-read the keys after any
/// event, as the events are hints).
///
/// # Examples
///
/// ```
/// use coresident_xen::xenstore::{XsClient, XsError};
/// # use coresident_xen::xenstore::ring::{Events, XsRing};
/// # struct GiveUp(u32);
/// # impl Events for GiveUp { fn notify(&mut self) { self.0 += 1 } fn wait(&mut self) -> bool { false } }
/// # let mut page = Box::new([0u32; 1024]);
/// # // SAFETY: the page outlives the client and is touched by nothing else.
/// # let mut xs = unsafe { XsRing::new(page.as_mut_ptr().cast(), GiveUp(0)) }?;
/// // The request went onto the page and the port was signalled; no daemon
/// // answers here (see [`Events`]).
/// assert_eq!(xs.write("data/x", b"1").err(), Some(XsError::Timeout));
/// assert_eq!(xs.events_mut().0, 1);
/// # Ok::<(), XsError>(())
/// ```
pub struct XsRing<E: Events> {
    /// The page's interface: 4-aligned,
    /// `size_of::<XenstoreDomainInterface>()` bytes, valid while `self`
    /// lives (`new`); every access checked, atomic or volatile.
    page: SharedMem,
    events: E,
    /// Our copy of `req_prod`, the only one we trust.
    req_prod: u32,
    /// Our copy of `rsp_cons`, the only one we trust.
    rsp_cons: u32,
    next_req_id: u32,
    /// The last reply's payload.
    reply: Buf,
    /// A watch event that arrived while a reply was awaited.
    event: Buf,
    event_held: bool,
    lost: u64,
    broken: bool,
}

impl<E: Events> fmt::Debug for XsRing<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XsRing")
            .field("page", &self.page)
            .field("req_prod", &self.req_prod)
            .field("rsp_cons", &self.rsp_cons)
            .field("next_req_id", &self.next_req_id)
            .field("event_held", &self.event_held)
            .field("lost", &self.lost)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl<E: Events> XsRing<E> {
    /// A client over the ring page at `page`, signalled through `events`.
    /// It starts from the indices it finds (a kernel that has just booted
    /// finds zeroes), and refuses indices that are not within one ring of
    /// each other.
    ///
    /// # Errors
    ///
    /// [`XsError::BadPage`] for a null or misaligned pointer;
    /// [`XsError::BadIndex`] for inconsistent indices.
    ///
    /// # Safety
    ///
    /// - `page` is valid for reads and writes of
    ///   `size_of::<XenstoreDomainInterface>()` bytes for as long as the
    ///   client lives (a mapped page: the store page of `start_info`);
    /// - nothing in this domain accesses those bytes while the client lives,
    ///   except through atomics or volatile accesses (the peer, outside the
    ///   domain, may write them at any time).
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::xenstore::ring::{Events, XsRing};
    /// use coresident_xen::xenstore::XsError;
    /// # struct NoPort;
    /// # impl Events for NoPort { fn notify(&mut self) {} fn wait(&mut self) -> bool { false } }
    ///
    /// // SAFETY: a null page is refused before it is touched.
    /// let null = unsafe { XsRing::new(core::ptr::null_mut(), NoPort) };
    /// assert_eq!(null.err(), Some(XsError::BadPage));
    /// ```
    pub unsafe fn new(page: *mut u8, events: E) -> Result<Self, XsError> {
        if page.is_null() || (page as usize) % 4 != 0 {
            return Err(XsError::BadPage);
        }
        // SAFETY: `page` is valid for the interface's bytes while the
        // client lives, and touched only through atomics and volatile
        // accesses here (this function's contract).
        let page = unsafe { SharedMem::new(page, size_of::<XenstoreDomainInterface>()) };
        let mut ring = Self {
            page,
            events,
            req_prod: 0,
            rsp_cons: 0,
            next_req_id: 1,
            reply: Buf::new(),
            event: Buf::new(),
            event_held: false,
            lost: 0,
            broken: false,
        };
        // Our own indices, read once: afterwards only our copies count.
        ring.req_prod = ring.load(REQ_PROD, Ordering::Relaxed)?;
        ring.rsp_cons = ring.load(RSP_CONS, Ordering::Relaxed)?;
        ring.req_space()?;
        ring.rsp_avail()?;
        Ok(ring)
    }

    /// The kernel's event-channel half.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::xenstore::{XsClient, XsError};
    /// # use coresident_xen::xenstore::ring::{Events, XsRing};
    /// # struct GiveUp(u32);
    /// # impl Events for GiveUp { fn notify(&mut self) { self.0 += 1 } fn wait(&mut self) -> bool { false } }
    /// # let mut page = Box::new([0u32; 1024]);
    /// # // SAFETY: the page outlives the client and is touched by nothing else.
    /// # let mut xs = unsafe { XsRing::new(page.as_mut_ptr().cast(), GiveUp(0)) }?;
    /// let _ = xs.read("domid");
    /// assert_eq!(xs.events_mut().0, 1); // one notify: the request
    /// # Ok::<(), XsError>(())
    /// ```
    pub fn events_mut(&mut self) -> &mut E {
        &mut self.events
    }

    /// Watch events dropped because one was already held.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::xenstore::XsError;
    /// # use coresident_xen::xenstore::ring::{Events, XsRing};
    /// # struct GiveUp(u32);
    /// # impl Events for GiveUp { fn notify(&mut self) { self.0 += 1 } fn wait(&mut self) -> bool { false } }
    /// # let mut page = Box::new([0u32; 1024]);
    /// # // SAFETY: the page outlives the client and is touched by nothing else.
    /// # let mut xs = unsafe { XsRing::new(page.as_mut_ptr().cast(), GiveUp(0)) }?;
    /// assert_eq!(xs.lost_events(), 0);
    /// # Ok::<(), XsError>(())
    /// ```
    pub fn lost_events(&self) -> u64 {
        self.lost
    }

    /// Atomically loads the word at `off` (one of the index or trailing
    /// word offsets above, all 4-aligned and inside the interface: never
    /// [`XsError::BadPage`] for them).
    fn load(&self, off: usize, order: Ordering) -> Result<u32, XsError> {
        self.page.load_u32(off, order).map_err(|_| XsError::BadPage)
    }

    /// Atomically stores our index `v` at `off` with `Release`.
    fn store_release(&self, off: usize, v: u32) -> Result<(), XsError> {
        self.page
            .store_u32(off, v, Ordering::Release)
            .map_err(|_| XsError::BadPage)
    }

    /// Free bytes in the request ring, checking the peer's `req_cons`.
    fn req_space(&self) -> Result<usize, XsError> {
        // SYNC: req-cons. The daemon has copied the request bytes before
        // `req_cons` (its Release); we may overwrite them after this Acquire.
        let cons = self.load(REQ_CONS, Ordering::Acquire)?;
        let used = self.req_prod.wrapping_sub(cons) as usize;
        if used > RING_SIZE {
            return Err(XsError::BadIndex {
                which: RingIndex::ReqCons,
                peer: cons,
                ours: self.req_prod,
            });
        }
        Ok(RING_SIZE - used)
    }

    /// Reply bytes available, checking the peer's `rsp_prod`.
    fn rsp_avail(&self) -> Result<usize, XsError> {
        // SYNC: rsp-prod. The daemon wrote the reply bytes before `rsp_prod`
        // (its Release); we read them after this Acquire.
        let prod = self.load(RSP_PROD, Ordering::Acquire)?;
        let avail = prod.wrapping_sub(self.rsp_cons) as usize;
        if avail > RING_SIZE {
            return Err(XsError::BadIndex {
                which: RingIndex::RspProd,
                peer: prod,
                ours: self.rsp_cons,
            });
        }
        Ok(avail)
    }

    /// Waits for an event, after checking the server's error word.
    fn wait(&mut self) -> Result<(), XsError> {
        if self.load(FEATURES, Ordering::Relaxed)? & SERVER_FEATURE_ERROR != 0 {
            let e = self.load(ERROR, Ordering::Relaxed)?;
            if e != 0 {
                return Err(XsError::Server(e));
            }
        }
        if self.events.wait() {
            Ok(())
        } else {
            Err(XsError::Timeout)
        }
    }

    /// Appends `bytes` to the request ring, waiting for space as needed.
    fn put(&mut self, mut bytes: &[u8]) -> Result<(), XsError> {
        while !bytes.is_empty() {
            let free = self.req_space()?;
            if free == 0 {
                // The daemon may not have seen what we wrote so far.
                self.events.notify();
                self.wait()?;
                continue;
            }
            let slot = self.req_prod as usize % RING_SIZE;
            let n = free.min(bytes.len()).min(RING_SIZE - slot);
            let (now, rest) = bytes.split_at(n);
            // `slot + n <= RING_SIZE`: inside `req`. The daemon reads these
            // bytes only after our Release of `req_prod` below.
            self.page
                .write_bytes(REQ + slot, now)
                .map_err(|_| XsError::BadPage)?;
            self.req_prod = self.req_prod.wrapping_add(n as u32);
            // SYNC: req-prod. The request bytes above are visible to the daemon
            // once it Acquires this `req_prod`.
            self.store_release(REQ_PROD, self.req_prod)?;
            bytes = rest;
        }
        Ok(())
    }

    /// Fills `out` from the reply ring, waiting for bytes as needed. A
    /// timeout after part of `out` was read leaves the stream mid-message:
    /// the client is then broken.
    fn get(&mut self, out: &mut [u8]) -> Result<(), XsError> {
        let mut filled = 0;
        while filled < out.len() {
            let avail = self.rsp_avail()?;
            if avail == 0 {
                if let Err(e) = self.wait() {
                    self.broken |= filled > 0;
                    return Err(e);
                }
                continue;
            }
            let slot = self.rsp_cons as usize % RING_SIZE;
            let rest = out.get_mut(filled..).unwrap_or(&mut []);
            let n = avail.min(rest.len()).min(RING_SIZE - slot);
            // `slot + n <= RING_SIZE`: inside `rsp`. The daemon may write the
            // ring at any time: a byte it changes is a wrong byte, caught by
            // the checks on what we decode.
            let dst = rest.get_mut(..n).unwrap_or(&mut []);
            self.page
                .read_bytes(RSP + slot, dst)
                .map_err(|_| XsError::BadPage)?;
            filled += n;
            self.rsp_cons = self.rsp_cons.wrapping_add(n as u32);
            // SYNC: rsp-cons. Our reads above are done before the daemon, after
            // Acquiring this `rsp_cons`, reuses the bytes.
            self.store_release(RSP_CONS, self.rsp_cons)?;
            // The daemon may be waiting for space (a long reply).
            self.events.notify();
        }
        Ok(())
    }

    /// Reads one message: the header, then its payload into `reply` or, for
    /// a watch event, into `event`.
    fn next_message(&mut self) -> Result<Header, XsError> {
        let mut head = [0u8; HEADER_LEN];
        self.get(&mut head)?;
        let h = Header::decode(&head)?;
        let mut tmp = [0u8; PAYLOAD_MAX];
        let body = tmp.get_mut(..h.len).ok_or(WireError::TooLong(u32::MAX))?;
        if let Err(e) = self.get(body) {
            // The header is consumed: the stream is mid-message.
            self.broken = true;
            return Err(e);
        }
        let dst = if h.ty == MsgType::WatchEvent {
            if self.event_held {
                self.lost += 1;
                return Ok(h);
            }
            self.event_held = true;
            &mut self.event
        } else {
            &mut self.reply
        };
        if let Some(d) = dst.bytes.get_mut(..h.len) {
            d.copy_from_slice(body);
        }
        dst.len = h.len;
        Ok(h)
    }

    fn guard<T>(&mut self, r: Result<T, XsError>) -> Result<T, XsError> {
        if let Err(
            XsError::BadIndex { .. }
            | XsError::Wire(_)
            | XsError::UnexpectedReply(_)
            | XsError::Server(_),
        ) = r
        {
            self.broken = true;
        }
        r
    }

    /// Sends one request and waits for its reply (into `reply`).
    fn send_request(&mut self, tx: TxId, ty: MsgType, payload: &Payload) -> Result<&[u8], XsError> {
        if self.broken {
            return Err(XsError::Broken);
        }
        let r = self.request_inner(tx, ty, payload);
        if r == Err(XsError::Timeout) {
            // The reply may still come, and would answer the next request.
            self.broken = true;
        }
        self.guard(r)?;
        Ok(self.reply.as_bytes())
    }

    fn request_inner(&mut self, tx: TxId, ty: MsgType, payload: &Payload) -> Result<(), XsError> {
        let req_id = self.next_req_id;
        self.next_req_id = self.next_req_id.wrapping_add(1);
        let body = payload.as_bytes();
        let head = Header {
            ty,
            req_id,
            tx_id: tx,
            len: body.len(),
        }
        .encode()?;
        self.put(&head)?;
        self.put(body)?;
        self.events.notify();
        loop {
            let h = self.next_message()?;
            match h.ty {
                MsgType::WatchEvent => continue,
                t if h.req_id != req_id || (t != ty && t != MsgType::Error) => {
                    return Err(XsError::UnexpectedReply(Some(t)))
                }
                MsgType::Error => return Err(XsError::from_reply(self.reply.as_bytes())),
                _ => return Ok(()),
            }
        }
    }
}

impl<E: Events> XsClient for XsRing<E> {
    fn request(&mut self, tx: TxId, ty: MsgType, payload: &Payload) -> Result<&[u8], XsError> {
        self.send_request(tx, ty, payload)
    }

    /// The next watch event (one that arrived during a request first).
    /// The ring waits as its [`Events`] decide: `timeout` is honoured only
    /// as `Some(Duration::ZERO)` (look, do not wait).
    ///
    /// # Errors
    ///
    /// [`XsError::Timeout`] when [`Events::wait`] gives up (the client
    /// stays usable: no message was cut); a reply nobody asked for is
    /// [`XsError::UnexpectedReply`]; a malformed event is
    /// [`WireError::Malformed`]; ring errors.
    fn wait_watch(&mut self, timeout: Option<Duration>) -> Result<Option<WatchEvent<'_>>, XsError> {
        if self.broken {
            return Err(XsError::Broken);
        }
        if !self.event_held {
            if timeout == Some(Duration::ZERO) && self.rsp_avail()? == 0 {
                return Ok(None);
            }
            let r = self.next_message().and_then(|h| match h.ty {
                MsgType::WatchEvent => Ok(()),
                ty => Err(XsError::UnexpectedReply(Some(ty))),
            });
            self.guard(r)?;
        }
        self.event_held = false;
        let (path, token) = xs_wire::parse_watch_event(self.event.as_bytes())?;
        Ok(Some(WatchEvent { path, token }))
    }

    fn lost_events(&self) -> u64 {
        self.lost
    }
}
