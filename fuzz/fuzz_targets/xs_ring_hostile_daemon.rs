//! The fuzzer plays xenstored on the other side of a guest kernel's
//! XenStore ring page (`coresident_xen::xenstore::ring`): at every wait of the
//! client it writes arbitrary bytes into the reply ring and arbitrary
//! values into the indices and trailing words it owns, then signals. The
//! client runs a fixed script: reads, a write, a watch, a wait for a watch
//! event, and the kernel-side rendezvous (`ChannelKeys::read_offer`,
//! `wait_answer`). Properties: no panic, no out-of-bounds access (ASan),
//! no hang (the daemon gives up when the input runs out), and a broken
//! client stays broken.
#![no_main]

use coresident_xen::rendezvous::ChannelKeys;
use coresident_xen::xenstore::ring::{Events, XsRing};
use coresident_xen::xenstore::{XsClient, XsError};
use libfuzzer_sys::fuzz_target;
use std::sync::atomic::{AtomicU32, Ordering};

/// Offsets in `struct xenstore_domain_interface` (xen/io/xs_wire.h).
const RSP: usize = 1024;
const REQ_CONS: usize = 2048;
const RSP_PROD: usize = 2060;
const FEATURES: usize = 2064;
const ERROR: usize = 2072;

#[repr(C, align(4096))]
struct Page([u8; 4096]);

struct Daemon {
    page: *mut u8,
    input: Vec<u8>,
    at: usize,
}

impl Daemon {
    fn byte(&mut self) -> Option<u8> {
        let b = *self.input.get(self.at)?;
        self.at += 1;
        Some(b)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes([
            self.byte()?,
            self.byte()?,
            self.byte()?,
            self.byte()?,
        ]))
    }

    fn word(&self, off: usize) -> &AtomicU32 {
        // SAFETY: `page` is the fuzz target's 4096-byte, 4096-aligned page,
        // alive for the whole run; `off` is a word offset inside it.
        unsafe { AtomicU32::from_ptr(self.page.add(off).cast()) }
    }
}

impl Events for Daemon {
    fn notify(&mut self) {}

    fn wait(&mut self) -> bool {
        let Some(op) = self.byte() else {
            return false;
        };
        match op % 8 {
            // Mostly: append a run of reply bytes and publish them.
            0..=4 => {
                let n = usize::from(self.byte().unwrap_or(0));
                let mut prod = self.word(RSP_PROD).load(Ordering::Relaxed);
                for _ in 0..n {
                    let Some(b) = self.byte() else { break };
                    // SAFETY: inside the reply ring of the page.
                    unsafe { self.page.add(RSP + prod as usize % 1024).write_volatile(b) };
                    prod = prod.wrapping_add(1);
                }
                self.word(RSP_PROD).store(prod, Ordering::Release);
            }
            5 => {
                let v = self.u32().unwrap_or(0);
                self.word(RSP_PROD).store(v, Ordering::Release);
            }
            6 => {
                let v = self.u32().unwrap_or(0);
                self.word(REQ_CONS).store(v, Ordering::Release);
            }
            _ => {
                let (f, e) = (self.u32().unwrap_or(0), self.u32().unwrap_or(0));
                self.word(FEATURES).store(f, Ordering::Relaxed);
                self.word(ERROR).store(e, Ordering::Relaxed);
            }
        }
        // Requests are always "consumed", unless the daemon lied above.
        true
    }
}

fuzz_target!(|data: &[u8]| {
    let mut page = Box::new(Page([0; 4096]));
    let base = page.0.as_mut_ptr();
    let daemon = Daemon {
        page: base,
        input: data.to_vec(),
        at: 0,
    };
    // SAFETY: the box outlives the client (dropped after it, at the end of
    // this closure), and is only accessed through it and the daemon, both
    // with atomics and volatile accesses.
    let Ok(mut xs) = (unsafe { XsRing::new(base, daemon) }) else {
        return;
    };
    let mut broken = false;
    let mut step = |r: Result<(), XsError>| {
        if broken {
            assert_eq!(r, Err(XsError::Broken), "a broken client stays broken");
        }
        broken |= r == Err(XsError::Broken);
    };
    let r = xs.read("domid").map(|v| {
        let _ = coresident_xen::protocol::xs_wire::parse_u16(v);
    });
    step(r);
    step(xs.write("data/x", b"value"));
    step(xs.watch("data/x", "tok"));
    let r = xs.wait_watch(None).map(|e| {
        let _ = e.map(|e| (e.path.len(), e.token.len()));
    });
    step(r);
    // Domain 1's view of channel "c" with dom0: dom0's offer, then the
    // answer to an offer of port 17.
    if let Ok(keys) = ChannelKeys::new(1, 0, "c") {
        let mut refs = [0u32; 32];
        let _ = keys.read_offer(&mut xs, &mut refs);
        let _ = keys.wait_answer(&mut xs, 17);
    }
    drop(xs);
    drop(page);
});
