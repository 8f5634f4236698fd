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
use core::sync::atomic::{AtomicU32, Ordering};
use core::time::Duration;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{RingIndex, TxId, WatchEvent, XsClient, XsError};
use crate::protocol::xs_wire::{
    self, Header, MsgType, Payload, WireError, HEADER_LEN, PAYLOAD_MAX,
};

/// `XENSTORE_RING_SIZE`: bytes in each direction.
pub const RING_SIZE: usize = 1024;
/// `XENSTORE_SERVER_FEATURE_ERROR`: the server reports errors in `error`.
pub const SERVER_FEATURE_ERROR: u32 = 2;

/// `xen/include/public/io/xs_wire.h`: `struct xenstore_domain_interface`.
/// Only its layout is used (offsets); the live page is never behind a
/// reference of this type.
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

const REQ: usize = offset_of!(XenstoreDomainInterface, req);
const RSP: usize = offset_of!(XenstoreDomainInterface, rsp);
const REQ_CONS: usize = offset_of!(XenstoreDomainInterface, req_cons);
const REQ_PROD: usize = offset_of!(XenstoreDomainInterface, req_prod);
const RSP_CONS: usize = offset_of!(XenstoreDomainInterface, rsp_cons);
const RSP_PROD: usize = offset_of!(XenstoreDomainInterface, rsp_prod);
const FEATURES: usize = offset_of!(XenstoreDomainInterface, server_features);
const ERROR: usize = offset_of!(XenstoreDomainInterface, error);
const _: () = assert!(REQ == 0 && RSP == 1024 && REQ_CONS == 2048 && RSP_PROD == 2060);
const _: () = assert!(ERROR == 2072 && REQ_CONS % 4 == 0 && FEATURES % 4 == 0);

/// The event channel of a shared ring, supplied by the kernel.
pub trait Events {
    /// Signals the peer (`EVTCHNOP_send` on the ring's port).
    fn notify(&mut self);

    /// Returns when the peer may have signalled (or after a while: a wait is
    /// a hint, the caller re-checks the ring). `false` means "give up": the
    /// operation in progress fails with a timeout error.
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
pub struct XsRing<E: Events> {
    /// The page: 4-aligned, at least `size_of::<XenstoreDomainInterface>()`
    /// bytes, valid while `self` lives (`new`).
    page: *mut u8,
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
    pub unsafe fn new(page: *mut u8, events: E) -> Result<Self, XsError> {
        if page.is_null() || (page as usize) % 4 != 0 {
            return Err(XsError::BadPage);
        }
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
        ring.req_prod = ring.load(REQ_PROD, Ordering::Relaxed);
        ring.rsp_cons = ring.load(RSP_CONS, Ordering::Relaxed);
        ring.req_space()?;
        ring.rsp_avail()?;
        Ok(ring)
    }

    /// The kernel's event-channel half.
    pub fn events_mut(&mut self) -> &mut E {
        &mut self.events
    }

    /// Watch events dropped because one was already held.
    pub fn lost_events(&self) -> u64 {
        self.lost
    }

    /// Atomically loads the word at `off` (one of the index or trailing
    /// word offsets above, all 4-aligned and inside the interface).
    fn load(&self, off: usize, order: Ordering) -> u32 {
        // SAFETY:
        // - `off` is one of the constant word offsets of
        //   `XenstoreDomainInterface` (4-aligned, below its size), `page` is
        //   4-aligned and valid for the whole interface (`new`), so the
        //   pointer is non-null, aligned and in bounds;
        // - nothing in this domain accesses these bytes non-atomically
        //   (`new`); the peer is, to the abstract machine, another atomic
        //   writer.
        let a = unsafe { AtomicU32::from_ptr(self.page.wrapping_add(off).cast::<u32>()) };
        // Constant orderings only: no ordering-panic path in the kernel.
        if order == Ordering::Acquire {
            a.load(Ordering::Acquire)
        } else {
            a.load(Ordering::Relaxed)
        }
    }

    /// Atomically stores our index `v` at `off` with `Release`.
    fn store_release(&self, off: usize, v: u32) {
        // SAFETY: as in `load`.
        let a = unsafe { AtomicU32::from_ptr(self.page.wrapping_add(off).cast::<u32>()) };
        a.store(v, Ordering::Release);
    }

    /// Free bytes in the request ring, checking the peer's `req_cons`.
    fn req_space(&self) -> Result<usize, XsError> {
        // SYNC POINT: the daemon has copied the request bytes before
        // `req_cons` (its Release); we may overwrite them after this Acquire.
        let cons = self.load(REQ_CONS, Ordering::Acquire);
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
        // SYNC POINT: the daemon wrote the reply bytes before `rsp_prod`
        // (its Release); we read them after this Acquire.
        let prod = self.load(RSP_PROD, Ordering::Acquire);
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
        if self.load(FEATURES, Ordering::Relaxed) & SERVER_FEATURE_ERROR != 0 {
            let e = self.load(ERROR, Ordering::Relaxed);
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
            let dst = self.page.wrapping_add(REQ + slot);
            for (i, &b) in now.iter().enumerate() {
                // SAFETY:
                // - `slot + i < slot + n <= RING_SIZE`: inside `req`, inside
                //   the page (valid for writes, `new`);
                // - a volatile byte write: the daemon reads these bytes only
                //   after our Release of `req_prod` below, and never through a
                //   Rust reference of ours.
                unsafe { dst.wrapping_add(i).write_volatile(b) };
            }
            self.req_prod = self.req_prod.wrapping_add(n as u32);
            // SYNC POINT: the request bytes above are visible to the daemon
            // once it Acquires this `req_prod`.
            self.store_release(REQ_PROD, self.req_prod);
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
            let src = self.page.wrapping_add(RSP + slot);
            for (i, b) in rest.iter_mut().take(n).enumerate() {
                // SAFETY:
                // - `slot + i < slot + n <= RING_SIZE`: inside `rsp`, inside
                //   the page (valid for reads, `new`);
                // - a volatile byte read: the daemon may write the ring at any
                //   time; a byte it changes is a wrong byte, caught by the
                //   checks on what we decode, never undefined behaviour.
                *b = unsafe { src.wrapping_add(i).read_volatile() };
            }
            filled += n;
            self.rsp_cons = self.rsp_cons.wrapping_add(n as u32);
            // SYNC POINT: our reads above are done before the daemon, after
            // Acquiring this `rsp_cons`, reuses the bytes.
            self.store_release(RSP_CONS, self.rsp_cons);
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

#[cfg(test)]
pub(crate) mod fake {
    //! A simulated xenstored on the other side of a heap page: it runs
    //! inside `Events::wait`, consumes whole requests, answers from a map
    //! and can be told to misbehave. Shared with the tests of
    //! the rendezvous over the ring (`rendezvous/tests_ring.rs`).
    extern crate std;
    use super::*;
    use std::boxed::Box;
    use std::collections::{BTreeMap, VecDeque};
    use std::vec::Vec;
    use zerocopy::IntoBytes;

    use crate::protocol::xs_wire::XsdSockmsg;

    /// The page, as the peer sees it: raw pointer accesses only.
    #[derive(Clone, Copy)]
    pub(crate) struct Page(pub(crate) *mut u8);

    impl Page {
        pub(crate) fn word(self, off: usize) -> &'static AtomicU32 {
            // SAFETY: the tests' page is a 4-aligned 4096-byte allocation
            // alive until the test thread ends (`new_page`), and `off` a
            // 4-aligned word offset inside it.
            unsafe { AtomicU32::from_ptr(self.0.add(off).cast()) }
        }
        pub(crate) fn get(self, off: usize) -> u32 {
            self.word(off).load(Ordering::Acquire)
        }
        pub(crate) fn set(self, off: usize, v: u32) {
            self.word(off).store(v, Ordering::Release)
        }
        pub(crate) fn byte(self, off: usize) -> u8 {
            // SAFETY: as in `word`, any offset below 4096.
            unsafe { self.0.add(off).read_volatile() }
        }
        pub(crate) fn put_byte(self, off: usize, v: u8) {
            // SAFETY: as in `byte`.
            unsafe { self.0.add(off).write_volatile(v) }
        }
    }

    /// The test thread's pages, freed when it ends (after its clients).
    struct Pages(core::cell::RefCell<Vec<*mut [u32; 1024]>>);

    impl Drop for Pages {
        fn drop(&mut self) {
            for p in self.0.get_mut().drain(..) {
                // SAFETY: from `Box::into_raw` in `new_page`, freed once,
                // after the test that used it has returned.
                drop(unsafe { Box::from_raw(p) });
            }
        }
    }

    std::thread_local! {
        static PAGES: Pages = const { Pages(core::cell::RefCell::new(Vec::new())) };
    }

    /// A zeroed, 4-aligned page that lives until the test thread ends.
    pub(crate) fn new_page() -> Page {
        let p = Box::into_raw(Box::new([0u32; 1024]));
        PAGES.with(|pages| pages.0.borrow_mut().push(p));
        Page(p.cast())
    }

    /// What the simulated daemon does with the next request.
    #[derive(Clone, Copy, Debug, PartialEq)]
    pub(crate) enum Mischief {
        None,
        /// Sets `rsp_prod` this far past `rsp_cons`.
        RspProdJump(u32),
        /// Answers, then sets `req_cons` this far past `req_prod`.
        ReqConsAhead(u32),
        /// Answers with this header length.
        HugeLen(u32),
        /// Answers with an unknown type.
        BadType,
        /// Answers with another request id.
        WrongId,
        /// Answers with another type (a `DIRECTORY` reply).
        WrongType,
        /// Never answers.
        Silent,
        /// Sends a watch event before the reply.
        EventFirst,
        /// Sets the error word.
        ErrorWord,
    }

    pub(crate) struct Daemon {
        pub(crate) page: Page,
        pub(crate) req_cons: u32,
        pub(crate) rsp_prod: u32,
        pub(crate) inbox: Vec<u8>,
        pub(crate) outbox: VecDeque<u8>,
        pub(crate) store: BTreeMap<Vec<u8>, Vec<u8>>,
        pub(crate) watches: Vec<(Vec<u8>, Vec<u8>)>,
        pub(crate) mischief: Mischief,
        /// An index was set by mischief: the daemon stops moving them.
        pub(crate) frozen: bool,
        /// Moves `req_cons` this far past `req_prod` after the next step.
        pub(crate) req_jump: Option<u32>,
        /// `req_cons` was moved: no more requests are consumed.
        pub(crate) req_frozen: bool,
        pub(crate) waits_left: u32,
        pub(crate) notifies: u32,
        pub(crate) requests: u32,
        /// Paths whose reads get `EACCES`.
        pub(crate) denied: Vec<Vec<u8>>,
    }

    impl Daemon {
        pub(crate) fn new(page: Page) -> Self {
            Self {
                page,
                req_cons: page.get(REQ_CONS),
                rsp_prod: page.get(RSP_PROD),
                inbox: Vec::new(),
                outbox: VecDeque::new(),
                store: BTreeMap::new(),
                watches: Vec::new(),
                mischief: Mischief::None,
                frozen: false,
                req_jump: None,
                req_frozen: false,
                waits_left: 1000,
                notifies: 0,
                requests: 0,
                denied: Vec::new(),
            }
        }

        pub(crate) fn reply(&mut self, ty: u32, req_id: u32, body: &[u8]) {
            let h = XsdSockmsg {
                r#type: ty,
                req_id,
                tx_id: 0,
                len: body.len() as u32,
            };
            self.outbox.extend(h.as_bytes());
            self.outbox.extend(body);
        }

        /// Creates the missing ancestors of `path`, as xenstored does.
        fn parents(&mut self, path: &[u8]) {
            let mut end = path.len();
            while let Some(i) = path[..end].iter().rposition(|&b| b == b'/') {
                if i == 0 {
                    break;
                }
                self.store.entry(path[..i].to_vec()).or_default();
                end = i;
            }
        }

        pub(crate) fn fire(&mut self, path: &[u8]) {
            let hits: Vec<Vec<u8>> = self
                .watches
                .iter()
                .filter(|(w, _)| path.starts_with(w))
                .map(|(_, t)| t.clone())
                .collect();
            for t in hits {
                let body = [path, b"\0", &t, b"\0"].concat();
                self.reply(15, 0, &body);
            }
        }

        pub(crate) fn handle(&mut self, ty: u32, req_id: u32, body: &[u8]) {
            self.requests += 1;
            let m = std::mem::replace(&mut self.mischief, Mischief::None);
            let mut parts = body.split(|&b| b == 0);
            let path = parts.next().unwrap_or(b"").to_vec();
            match m {
                Mischief::Silent => return,
                Mischief::HugeLen(len) => {
                    let h = XsdSockmsg {
                        r#type: ty,
                        req_id,
                        tx_id: 0,
                        len,
                    };
                    self.outbox.extend(h.as_bytes());
                    return;
                }
                Mischief::BadType => return self.reply(99, req_id, b"OK\0"),
                Mischief::WrongId => return self.reply(ty, req_id + 1, b"OK\0"),
                Mischief::WrongType => return self.reply(1, req_id, b"OK\0"),
                Mischief::EventFirst => self.reply(15, 0, b"/early\0tok\0"),
                Mischief::ErrorWord => {
                    self.page.set(FEATURES, SERVER_FEATURE_ERROR);
                    self.page.set(ERROR, 3);
                    return;
                }
                Mischief::RspProdJump(d) => {
                    self.frozen = true;
                    self.page
                        .set(RSP_PROD, self.page.get(RSP_CONS).wrapping_add(d));
                    return;
                }
                // Answers, then moves req_cons past req_prod (`step`).
                Mischief::ReqConsAhead(d) => self.req_jump = Some(d),
                Mischief::None => {}
            }
            match ty {
                2 if self.denied.contains(&path) => self.reply(16, req_id, b"EACCES\0"),
                2 => match self.store.get(&path).cloned() {
                    Some(v) => self.reply(2, req_id, &v),
                    None => self.reply(16, req_id, b"ENOENT\0"),
                },
                11 => {
                    let value = &body[path.len() + 1..];
                    self.parents(&path);
                    self.store.insert(path.clone(), value.to_vec());
                    self.reply(11, req_id, b"OK\0");
                    self.fire(&path);
                }
                12 => {
                    self.parents(&path);
                    self.store.entry(path).or_default();
                    self.reply(12, req_id, b"OK\0");
                }
                14 => {
                    // Keep the perms as the node's value, to check the encoding.
                    let perms = body[path.len() + 1..].to_vec();
                    self.store.insert([b"perms:", &path[..]].concat(), perms);
                    self.reply(14, req_id, b"OK\0");
                }
                4 => {
                    let token = parts.next().unwrap_or(b"").to_vec();
                    self.watches.push((path.clone(), token));
                    self.reply(4, req_id, b"OK\0");
                    self.fire(&path);
                }
                5 => {
                    let token = parts.next().unwrap_or(b"").to_vec();
                    self.watches.retain(|w| *w != (path.clone(), token.clone()));
                    self.reply(5, req_id, b"OK\0");
                }
                13 => {
                    let under = [&path[..], b"/"].concat();
                    let before = self.store.len();
                    self.store
                        .retain(|k, _| *k != path && !k.starts_with(&under));
                    if self.store.len() == before {
                        self.reply(16, req_id, b"ENOENT\0");
                    } else {
                        self.reply(13, req_id, b"OK\0");
                    }
                }
                1 if !self.store.contains_key(&path) => self.reply(16, req_id, b"ENOENT\0"),
                1 => {
                    let under = [&path[..], b"/"].concat();
                    let mut names = Vec::new();
                    for k in self.store.keys() {
                        if let Some(rest) = k.strip_prefix(&under[..]) {
                            if !rest.is_empty() && !rest.contains(&b'/') {
                                names.extend_from_slice(rest);
                                names.push(0);
                            }
                        }
                    }
                    self.reply(1, req_id, &names);
                }
                // Transactions: one at a time, no isolation (the tests'
                // writers never race).
                6 => self.reply(6, req_id, b"1\0"),
                7 => self.reply(7, req_id, b"OK\0"),
                _ => self.reply(16, req_id, b"ENOSYS\0"),
            }
        }

        /// Moves bytes both ways and answers complete requests.
        pub(crate) fn step(&mut self) {
            if self.frozen {
                return;
            }
            let prod = if self.req_frozen {
                self.req_cons
            } else {
                self.page.get(REQ_PROD)
            };
            while self.req_cons != prod {
                let b = self.page.byte(REQ + self.req_cons as usize % RING_SIZE);
                self.inbox.push(b);
                self.req_cons = self.req_cons.wrapping_add(1);
            }
            self.page.set(REQ_CONS, self.req_cons);
            while self.inbox.len() >= HEADER_LEN {
                let h = XsdSockmsg::read_from_bytes(&self.inbox[..HEADER_LEN]).unwrap();
                let end = HEADER_LEN + h.len as usize;
                if self.inbox.len() < end {
                    break;
                }
                let body = self.inbox[HEADER_LEN..end].to_vec();
                self.inbox.drain(..end);
                self.handle(h.r#type, h.req_id, &body);
            }
            if let Some(d) = self.req_jump.take() {
                self.req_frozen = true;
                self.page
                    .set(REQ_CONS, self.page.get(REQ_PROD).wrapping_add(d));
            }
            let cons = self.page.get(RSP_CONS);
            while self.rsp_prod.wrapping_sub(cons) < RING_SIZE as u32 {
                let Some(b) = self.outbox.pop_front() else {
                    break;
                };
                self.page
                    .put_byte(RSP + self.rsp_prod as usize % RING_SIZE, b);
                self.rsp_prod = self.rsp_prod.wrapping_add(1);
            }
            if !self.frozen {
                self.page.set(RSP_PROD, self.rsp_prod);
            }
        }
    }

    impl Events for Daemon {
        fn notify(&mut self) {
            self.notifies += 1;
        }
        fn wait(&mut self) -> bool {
            if self.waits_left == 0 {
                // One timeout; later requests get a fresh budget, as each
                // real wait has its own deadline.
                self.waits_left = 1000;
                return false;
            }
            self.waits_left -= 1;
            self.step();
            true
        }
    }

    pub(crate) fn client() -> XsRing<Daemon> {
        let page = new_page();
        // SAFETY: a 4096-byte page alive until the test thread ends,
        // accessed only through atomics and volatile accesses by the client
        // and the simulated daemon.
        unsafe { XsRing::new(page.0, Daemon::new(page)) }.unwrap()
    }

    /// A client whose indices start near `u32::MAX`, so they wrap.
    pub(crate) fn client_at(start: u32) -> XsRing<Daemon> {
        let page = new_page();
        for off in [REQ_CONS, REQ_PROD, RSP_CONS, RSP_PROD] {
            page.set(off, start);
        }
        // SAFETY: as in `client`.
        unsafe { XsRing::new(page.0, Daemon::new(page)) }.unwrap()
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::fake::*;
    use super::*;
    use std::vec::Vec;

    use crate::protocol::xs_wire::{Access, Perm, XsErrno};

    #[test]
    fn layout_matches_xs_wire_h() {
        assert_eq!(size_of::<XenstoreDomainInterface>(), 2 * RING_SIZE + 7 * 4);
        assert_eq!((REQ_PROD, RSP_CONS), (2052, 2056));
    }

    #[test]
    fn read_write_mkdir_perms() {
        let mut xs = client();
        xs.write("data/a", b"42").unwrap();
        assert_eq!(xs.read("data/a").unwrap(), b"42");
        assert_eq!(xs_wire::parse_u32(xs.read("data/a").unwrap()).unwrap(), 42);
        assert_eq!(xs.read("data/missing").unwrap_err(), XsError::NotFound);
        xs.mkdir("data/dir").unwrap();
        assert_eq!(xs.read("data/dir").unwrap(), b"");
        let perms = [
            Perm {
                domid: 7,
                access: Access::None,
            },
            Perm {
                domid: 0,
                access: Access::Read,
            },
        ];
        xs.set_perms("data/a", &perms).unwrap();
        assert_eq!(xs.read("perms:data/a").unwrap(), b"n7\0r0\0");
        xs.rm("data/a").unwrap();
        assert_eq!(xs.read("data/a").unwrap_err(), XsError::NotFound);
        assert_eq!(xs.rm("data/a").unwrap_err(), XsError::NotFound);
        xs.events_mut().denied.push(b"data/dir".to_vec());
        assert_eq!(
            xs.read("data/dir").unwrap_err(),
            XsError::Daemon(XsErrno::EACCES)
        );
        xs.unwatch("data/dir", "t").unwrap();
        assert_eq!(xs.events_mut().requests, 13);
        assert!(xs.events_mut().notifies >= 8);
    }

    #[test]
    fn values_longer_than_the_ring_wrap_both_ways() {
        for start in [0, u32::MAX - 700] {
            let mut xs = client_at(start);
            for len in [0usize, 1, 1000, 1023, 1024, 1025, 3000, PAYLOAD_MAX - 7] {
                let v: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
                xs.write("big", &v).unwrap();
                assert_eq!(xs.read("big").unwrap(), v.as_slice(), "len {len}");
            }
            assert_eq!(
                xs.write("big", &[0; PAYLOAD_MAX - 3]).unwrap_err(),
                XsError::Wire(WireError::TooLong(PAYLOAD_MAX as u32 + 1))
            );
        }
    }

    #[test]
    fn watch_events_initial_and_on_write() {
        let mut xs = client();
        xs.watch("data/key", "tok").unwrap();
        let ev = xs.wait_watch(None).unwrap().unwrap();
        assert_eq!((ev.path, ev.token), (&b"data/key"[..], &b"tok"[..]));
        // An event that arrives during a request is kept for wait_watch.
        xs.write("data/key", b"v").unwrap();
        let ev = xs.wait_watch(None).unwrap().unwrap();
        assert_eq!(ev.path, b"data/key");
        assert_eq!(xs.lost_events(), 0);
        // xenstored answers a write before it fires the watch, so the next
        // request reads the event first: one is held, a second is lost.
        xs.write("data/key", b"w").unwrap();
        xs.write("data/key/sub", b"x").unwrap();
        assert_eq!(xs.lost_events(), 0);
        xs.write("data/other", b"y").unwrap();
        assert_eq!(xs.lost_events(), 1);
        assert_eq!(xs.wait_watch(None).unwrap().unwrap().path, b"data/key");
        // Nothing more: the daemon stays quiet until wait gives up.
        xs.events_mut().waits_left = 3;
        assert_eq!(xs.wait_watch(None).unwrap_err(), XsError::Timeout);
    }

    #[test]
    fn event_before_reply_is_held() {
        let mut xs = client();
        xs.write("k", b"1").unwrap();
        xs.events_mut().mischief = Mischief::EventFirst;
        assert_eq!(xs.read("k").unwrap(), b"1");
        let ev = xs.wait_watch(None).unwrap().unwrap();
        assert_eq!((ev.path, ev.token), (&b"/early"[..], &b"tok"[..]));
    }

    #[test]
    fn silent_daemon_times_out() {
        let mut xs = client();
        xs.events_mut().mischief = Mischief::Silent;
        xs.events_mut().waits_left = 5;
        assert_eq!(xs.read("k").unwrap_err(), XsError::Timeout);
        // A late reply would answer the next request: no next request.
        assert_eq!(xs.read("k").unwrap_err(), XsError::Broken);
        // A quiet wait for a watch event is not a broken stream.
        let mut xs = client();
        xs.events_mut().waits_left = 2;
        assert_eq!(xs.wait_watch(None).unwrap_err(), XsError::Timeout);
        xs.write("k", b"still fine").unwrap();
    }

    fn hostile(m: Mischief) -> XsError {
        let mut xs = client();
        xs.write("k", b"1").unwrap();
        xs.events_mut().mischief = m;
        let e = xs.read("k").unwrap_err();
        // Whatever the daemon does next, the stream is not trusted again.
        assert_eq!(xs.read("k").unwrap_err(), XsError::Broken, "{m:?}");
        assert_eq!(xs.wait_watch(None).unwrap_err(), XsError::Broken, "{m:?}");
        e
    }

    #[test]
    fn hostile_daemon_gets_typed_errors() {
        assert!(matches!(
            hostile(Mischief::RspProdJump(RING_SIZE as u32 + 1)),
            XsError::BadIndex {
                which: RingIndex::RspProd,
                ..
            }
        ));
        assert!(matches!(
            hostile(Mischief::RspProdJump(u32::MAX)),
            XsError::BadIndex { .. }
        ));
        assert_eq!(
            hostile(Mischief::HugeLen(PAYLOAD_MAX as u32 + 1)),
            XsError::Wire(WireError::TooLong(PAYLOAD_MAX as u32 + 1))
        );
        assert_eq!(
            hostile(Mischief::HugeLen(u32::MAX)),
            XsError::Wire(WireError::TooLong(u32::MAX))
        );
        assert_eq!(
            hostile(Mischief::BadType),
            XsError::Wire(WireError::UnknownType(99))
        );
        assert!(matches!(
            hostile(Mischief::WrongId),
            XsError::UnexpectedReply(_)
        ));
        assert_eq!(
            hostile(Mischief::WrongType),
            XsError::UnexpectedReply(Some(MsgType::Directory))
        );
        assert_eq!(hostile(Mischief::ErrorWord), XsError::Server(3));
    }

    #[test]
    fn req_cons_ahead_of_our_prod_is_refused() {
        let mut xs = client();
        // The daemon answers a request, then moves req_cons past our
        // req_prod; the next request sees the bad index.
        xs.events_mut().mischief = Mischief::ReqConsAhead(1);
        xs.write("k", b"1").unwrap();
        assert!(matches!(
            xs.write("k", b"1").unwrap_err(),
            XsError::BadIndex {
                which: RingIndex::ReqCons,
                ..
            }
        ));
        assert_eq!(xs.read("k").unwrap_err(), XsError::Broken);
        // Inconsistent indices found at start are refused too.
        let page = new_page();
        page.set(REQ_CONS, 5);
        // SAFETY: as in `client`.
        let e = unsafe { XsRing::new(page.0, Daemon::new(page)) }.unwrap_err();
        assert!(matches!(
            e,
            XsError::BadIndex {
                which: RingIndex::ReqCons,
                ..
            }
        ));
    }

    #[test]
    fn a_reply_nobody_asked_for_is_refused() {
        let mut xs = client();
        xs.events_mut().reply(2, 77, b"stray");
        assert_eq!(
            xs.wait_watch(None).unwrap_err(),
            XsError::UnexpectedReply(Some(MsgType::Read))
        );
    }

    #[test]
    fn malformed_watch_event_is_an_error_not_a_panic() {
        let mut xs = client();
        xs.events_mut().reply(15, 0, b"only-a-path");
        assert_eq!(
            xs.wait_watch(None).unwrap_err(),
            XsError::Wire(WireError::Malformed)
        );
    }

    #[test]
    fn bad_pages_are_refused() {
        let page = new_page();
        // SAFETY: never dereferenced (refused first).
        let e = unsafe { XsRing::new(core::ptr::null_mut(), Daemon::new(page)) }.unwrap_err();
        assert_eq!(e, XsError::BadPage);
        // SAFETY: never dereferenced (refused first).
        let e = unsafe { XsRing::new(page.0.add(1), Daemon::new(page)) }.unwrap_err();
        assert_eq!(e, XsError::BadPage);
    }
}
