//! A simulated xenstored on the other side of a heap page (the
//! `start_info` ring of [`XsRing`]): it runs inside `Events::wait`,
//! consumes whole requests, answers from a map and can be told to
//! misbehave. Core-only (Miri runs it without `std`), so it does not yet
//! answer through the socket daemon's engine ([`super`]'s store). Shared
//! with the ring client's tests (`xenstore/tests_ring.rs`) and the
//! rendezvous over the ring (`rendezvous/tests_ring.rs`).
extern crate std;
use core::sync::atomic::{AtomicU32, Ordering};

use zerocopy::FromBytes;

use crate::protocol::xs_wire::HEADER_LEN;
use crate::xenstore::ring::{
    Events, XsRing, ERROR, FEATURES, REQ, REQ_CONS, REQ_PROD, RING_SIZE, RSP, RSP_CONS, RSP_PROD,
    SERVER_FEATURE_ERROR,
};
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
