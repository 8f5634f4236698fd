//! A simulated xenstored on the other side of a heap page (the
//! `start_info` ring of [`XsRing`]): it runs inside `Events::wait`,
//! consumes whole requests and forwards each to the socket daemon's
//! [`Engine`] as domain [`GUEST`] (introduced, so its home exists and
//! relative paths resolve against it), so the ring client meets the same
//! permissions, watches and transactions; or misbehaves, as ordered.
//! Core-only (Miri runs it without `std`). Shared with the ring client's
//! tests (`xenstore/tests_ring.rs`) and the rendezvous over the ring
//! (`rendezvous/tests_ring.rs`).
extern crate std;
use core::sync::atomic::{AtomicU32, Ordering};

use zerocopy::FromBytes;

use crate::protocol::xs_wire::HEADER_LEN;
use crate::xenstore::ring::{
    Events, XsRing, ERROR, FEATURES, REQ, REQ_CONS, REQ_PROD, RING_SIZE, RSP, RSP_CONS, RSP_PROD,
    SERVER_FEATURE_ERROR,
};
use std::boxed::Box;
use std::collections::VecDeque;
use std::format;
use std::string::String;
use std::vec::Vec;
use zerocopy::IntoBytes;

use super::engine::{resolve, Engine, Out};
use crate::protocol::xs_wire::{MsgType, XsdSockmsg};
use crate::types::DomId;

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

/// The guest domain the ring's client is (a PV kernel's, as `pv-domu`'s).
pub(crate) const GUEST: DomId = 5;

pub(crate) struct Daemon {
    pub(crate) page: Page,
    pub(crate) req_cons: u32,
    pub(crate) rsp_prod: u32,
    pub(crate) inbox: Vec<u8>,
    pub(crate) outbox: VecDeque<u8>,
    /// The daemon itself: the socket fake's engine, which enforces
    /// permissions and transactions.
    engine: Engine,
    /// The ring's connection in `engine`, as domain [`GUEST`].
    guest: usize,
    /// dom0's connection in `engine`: what the tests write as the
    /// toolstack or as dom0's rendezvous.
    dom0: usize,
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
    /// dom0 writes this node (path, value; see [`Daemon::dom0_write`])
    /// right after the next request is answered: a conflicting writer.
    pub(crate) dom0_writes_next: Option<(String, Vec<u8>)>,
}

impl Daemon {
    /// The daemon with domain [`GUEST`] introduced (its home, `domid`,
    /// `name`, `data`, as the toolstack makes them) and connected.
    pub(crate) fn new(page: Page) -> Self {
        let mut engine = Engine::new();
        // Nobody is connected yet: no events.
        let _ = engine.introduce(GUEST);
        let guest = engine.connect(GUEST);
        let dom0 = engine.connect(0);
        Self {
            page,
            req_cons: page.get(REQ_CONS),
            rsp_prod: page.get(RSP_PROD),
            inbox: Vec::new(),
            outbox: VecDeque::new(),
            engine,
            guest,
            dom0,
            mischief: Mischief::None,
            frozen: false,
            req_jump: None,
            req_frozen: false,
            waits_left: 1000,
            notifies: 0,
            requests: 0,
            dom0_writes_next: None,
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

    /// Queues on the ring what the engine sends to the guest; what it
    /// sends dom0 (its replies) is returned.
    fn deliver(&mut self, out: Vec<Out>) -> Vec<(XsdSockmsg, Vec<u8>)> {
        let mut to_dom0 = Vec::new();
        for (conn, h, body) in out {
            if conn == self.guest {
                self.outbox.extend(h.as_bytes());
                self.outbox.extend(&body);
            } else {
                to_dom0.push((h, body));
            }
        }
        to_dom0
    }

    /// A request of dom0's (strings `parts`, each NUL-terminated but a
    /// write's value); panics unless it succeeds.
    fn as_dom0(&mut self, ty: MsgType, parts: &[&[u8]]) {
        let body: Vec<u8> = parts.concat();
        let h = XsdSockmsg {
            r#type: ty as u32,
            req_id: 0,
            tx_id: 0,
            len: body.len() as u32,
        };
        let out = self.engine.request(self.dom0, &h, &body);
        for (h, body) in self.deliver(out) {
            assert_ne!(h.r#type, MsgType::Error as u32, "{ty:?}: {body:?}");
        }
    }

    /// `path` resolved against the guest's home, as the engine does.
    fn abs(path: &str) -> String {
        resolve(GUEST, path)
    }

    /// dom0 writes `path` (absolute) and lets the guest read it, as dom0's
    /// rendezvous writes an offer or an answer.
    pub(crate) fn dom0_write(&mut self, path: &str, value: &[u8]) {
        let p = [path.as_bytes(), b"\0"].concat();
        self.as_dom0(MsgType::Write, &[&p, value]);
        let r = format!("r{GUEST}\0");
        self.as_dom0(MsgType::SetPerms, &[&p, b"n0\0", r.as_bytes()]);
    }

    /// dom0 takes node `path` (relative to the guest's home, or absolute)
    /// for itself, making it first if it is missing (as an offerer that
    /// made a node and has not opened it yet): the guest's reads of it
    /// get `EACCES`.
    pub(crate) fn deny(&mut self, path: &str) {
        let p = [Self::abs(path).as_bytes(), b"\0"].concat();
        self.as_dom0(MsgType::Mkdir, &[&p]);
        self.as_dom0(MsgType::SetPerms, &[&p, b"n0\0"]);
    }

    /// The live store's value of `path` (relative or absolute).
    pub(crate) fn value(&self, path: &str) -> Option<Vec<u8>> {
        self.engine
            .nodes()
            .get(&Self::abs(path))
            .map(|n| n.0.clone())
    }

    /// The perms of `path` as the wire encodes them (`n5\0r0\0`).
    pub(crate) fn perms(&self, path: &str) -> Option<Vec<u8>> {
        let (_, perms) = self.engine.nodes().get(&Self::abs(path))?;
        let mut enc = Vec::new();
        let mut buf = [0u8; 6];
        for p in perms {
            enc.extend_from_slice(p.encode(&mut buf));
            enc.push(0);
        }
        Some(enc)
    }

    /// Every node's path, sorted.
    pub(crate) fn paths(&self) -> Vec<String> {
        self.engine.nodes().keys().cloned().collect()
    }

    /// How many watches the guest has set.
    pub(crate) fn watches(&self) -> usize {
        self.engine.watches(self.guest)
    }

    /// One whole request of the guest's: the mischief ordered, if any,
    /// else the engine's answer (watch events of the change, then the
    /// reply).
    pub(crate) fn handle(&mut self, h: &XsdSockmsg, body: &[u8]) {
        self.requests += 1;
        let (ty, req_id) = (h.r#type, h.req_id);
        let m = core::mem::replace(&mut self.mischief, Mischief::None);
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
        let out = self.engine.request(self.guest, h, body);
        self.deliver(out);
        if let Some((path, value)) = self.dom0_writes_next.take() {
            self.dom0_write(&path, &value);
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
            self.handle(&h, &body);
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
