//! The domU flavour of the PV kernel (`pv-domu` job): booted by `xl create`
//! next to the Linux dom0 of `.ci/xen`, it speaks through its PV console
//! ring, reaches XenStore through the ring page and event channel of its
//! `start_info`, and meets the userspace transport in dom0
//! (`tests/xen_pv_domu.rs`) through the XenStore rendezvous twice: it
//! accepts dom0's offer (mapping dom0's grants), then offers its own pages
//! (dom0 maps the kernel's grants). On each channel the two exchange
//! checksummed messages both ways through the same `Channel`, and the
//! kernel sees dom0 leave through the live byte: a kernel and a daemon, two
//! real domains, one protocol.
//!
//! The image is the crate's one (its ELF notes declare `dom0` as a
//! supported feature, which libxc's domU builder ignores); `console_io` is
//! dom0's only, so this flavour logs to its PV console ring.
//!
//! Its console lines reach dom0's `/var/log/xen/guest-pv-domu.log`
//! (xenconsoled); the last one is `PV-DOMU-RESULT: PASS` or
//! `PV-DOMU-RESULT: FAIL <why>`. The ring writer is also the library's
//! console hook, so a panic's message reaches that log too; with
//! `panic-at-exit` on the command line, the kernel ends with a deliberate
//! panic after its result, to show that it does.
#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs, missing_debug_implementations)]

#[path = "../../../tests/common/pv_domu_msgs.rs"]
#[allow(dead_code)]
mod msgs;

use core::cell::{Cell, UnsafeCell};
use core::fmt::{self, Write as _};
use core::ptr::NonNull;
use core::time::Duration;

use coresident::{
    Channel, ChannelConfig, ChannelError, ChannelLayout, Doorbell, Link, PendingOffer, SharedRegion,
};
use coresident_pv_kernel::{halt, hypercalls, pv_entry, Boot, PvKernel, SHUTDOWN_POWEROFF};
use coresident_xen::guest::console::ConsoleRing;
use coresident_xen::kernel::hypercall::{poll, update_va_mapping};
use coresident_xen::kernel::{event_channel, KernelTransport, SharedInfo, Xen};
use coresident_xen::protocol::keys::KeyError;
use coresident_xen::protocol::xs_wire;
use coresident_xen::rendezvous::ChannelKeys;
use coresident_xen::xenstore::ring::{Events, XsRing};
use coresident_xen::xenstore::XsClient;
use coresident_xen::{DomId, EvtchnPort, GrantRef};

pv_entry!(main);

/// How long one wait for XenStore or the console may block (Xen time).
const RING_WAIT: Duration = Duration::from_secs(120);
/// The most grant references an offer holds here (rings of up to 60 KiB
/// each way), without allocation; a larger offer is refused.
const MAX_REFS: usize = 32;
/// How long the channel waits for dom0.
const CHANNEL_WAIT: Option<Duration> = Some(Duration::from_secs(120));

/// A page of the image where a frame is mapped (the kernel's own pages
/// there are given up).
#[repr(C, align(4096))]
struct Window(UnsafeCell<[u8; 4096]>);

// SAFETY: only ever used through raw pointers, by the one vCPU.
unsafe impl Sync for Window {}

static SHARED_INFO: Window = Window(UnsafeCell::new([0; 4096]));
static CONSOLE_PAGE: Window = Window(UnsafeCell::new([0; 4096]));
static STORE_PAGE: Window = Window(UnsafeCell::new([0; 4096]));

/// Maps machine frame `mfn` over `w`.
fn map(w: &'static Window, mfn: u64) -> Result<NonNull<u8>, coresident_xen::kernel::KernelError> {
    let va = w.0.get().cast::<u8>();
    // SAFETY: `w` is a page-aligned page of the image (mapped down to L1
    // by the domain builder) that nothing accesses through a reference:
    // its own frame is given up; `mfn` is a frame of this domain
    // (start_info's shared_info, console or store page).
    unsafe { update_va_mapping(&hypercalls(), va as u64, mfn)? };
    NonNull::new(va).ok_or(coresident_xen::kernel::KernelError::NoMemory)
}

/// An event channel of a start_info ring: send, and wait by polling the
/// port (`SCHEDOP_poll`) until its pending bit is set, then clear it.
struct Port {
    shared: SharedInfo,
    port: EvtchnPort,
}

impl Events for Port {
    fn notify(&mut self) {
        let _ = event_channel::send(&hypercalls(), self.port);
    }

    fn wait(&mut self) -> bool {
        let until = self.shared.system_time_ns() + RING_WAIT.as_nanos() as u64;
        loop {
            if self.shared.test_and_clear_pending(self.port) {
                return true;
            }
            if self.shared.system_time_ns() >= until {
                return false;
            }
            let _ = poll(&hypercalls(), &[self.port], until);
        }
    }
}

/// The console ring, once mapped, and whether a write is under way; one
/// vCPU, no interrupts: only a panic inside a write can come back to it.
struct ConsoleCell {
    ring: UnsafeCell<Option<ConsoleRing<Port>>>,
    busy: Cell<bool>,
}
// SAFETY: one vCPU and no interrupt handlers: never accessed concurrently;
// `busy` keeps a write re-entered by a panic off the ring.
unsafe impl Sync for ConsoleCell {}
static CONSOLE: ConsoleCell = ConsoleCell {
    ring: UnsafeCell::new(None),
    busy: Cell::new(false),
};

/// Writes to the PV console ring (dropped before it is set up).
struct Con;

impl fmt::Write for Con {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        console_ring_write(s)
    }
}

/// The library's console hook: `s` to the PV console ring. Refused while
/// a write is under way (a panic inside it) or before the ring is set up.
fn console_ring_write(s: &str) -> fmt::Result {
    if CONSOLE.busy.replace(true) {
        return Err(fmt::Error);
    }
    // SAFETY: see `ConsoleCell`: `busy` makes this the only reference to
    // the ring until it is cleared below.
    let r = match unsafe { (*CONSOLE.ring.get()).as_mut() } {
        Some(c) => c.write(s.as_bytes()).map_err(|_| fmt::Error),
        None => Err(fmt::Error),
    };
    CONSOLE.busy.set(false);
    r
}

macro_rules! log {
    ($($t:tt)*) => {{
        let _ = writeln!(Con, $($t)*);
    }};
}

/// A view of shared_info, mapped over [`SHARED_INFO`] by `main`.
fn shared_info() -> SharedInfo {
    let base = NonNull::new(SHARED_INFO.0.get().cast::<u8>()).unwrap_or(NonNull::dangling());
    // SAFETY: `main` mapped this domain's shared_info there before any call,
    // for the kernel's whole life (the window is never reused); every view
    // uses atomics only.
    unsafe { SharedInfo::new(base) }
}

/// Whether `word` is a word of the kernel's command line (xl's `cmdline`).
fn cmdline_has(boot: &Boot, word: &str) -> bool {
    let cl = &boot.start_info().cmd_line;
    let len = cl.iter().position(|&b| b == 0).unwrap_or(cl.len());
    let line = core::str::from_utf8(cl.get(..len).unwrap_or(&[])).unwrap_or("");
    line.split(' ').any(|w| w == word)
}

fn fail(why: fmt::Arguments<'_>) -> ! {
    log!("PV-DOMU-RESULT: FAIL {why}");
    halt(SHUTDOWN_POWEROFF)
}

fn main(boot: Boot) -> ! {
    let si = boot.start_info();
    if boot.is_dom0() {
        // No console ring for dom0: say so on Xen's console.
        coresident_pv_kernel::say!("pv-domu: this flavour runs as a domU (xl create)");
        halt(SHUTDOWN_POWEROFF);
    }
    // The console first, so everything after is seen in dom0's log.
    if map(&SHARED_INFO, si.shared_info >> 12).is_err() {
        halt(coresident_pv_kernel::SHUTDOWN_CRASH)
    }
    let [cons_mfn, cons_port] = si.console;
    let Ok(cons) = map(&CONSOLE_PAGE, cons_mfn) else {
        halt(coresident_pv_kernel::SHUTDOWN_CRASH)
    };
    let events = Port {
        shared: shared_info(),
        port: cons_port as EvtchnPort,
    };
    // SAFETY: `cons` maps the console page for the kernel's whole life,
    // touched only by this ring (atomics, volatile) and xenconsoled.
    match unsafe { ConsoleRing::new(cons.as_ptr(), events) } {
        // SAFETY: see `ConsoleCell`; set once, before any reader.
        Ok(c) => unsafe { *CONSOLE.ring.get() = Some(c) },
        Err(_) => halt(coresident_pv_kernel::SHUTDOWN_CRASH),
    }
    // From here on `say!` and the panic handler write to the ring too.
    coresident_pv_kernel::console::set_console(console_ring_write);
    let magic = core::str::from_utf8(&si.magic)
        .unwrap_or("?")
        .trim_end_matches('\0');
    log!(
        "pv-domu: {magic}, {} pages; console ring port {cons_port}, XenStore ring frame {:#x} port {}",
        si.nr_pages,
        si.store_mfn,
        si.store_evtchn
    );

    let store = match map(&STORE_PAGE, si.store_mfn) {
        Ok(p) => p,
        Err(e) => fail(format_args!("mapping the XenStore page: {e}")),
    };
    let events = Port {
        shared: shared_info(),
        port: si.store_evtchn,
    };
    // SAFETY: `store` maps the XenStore page for the kernel's whole life,
    // touched only by this client (atomics, volatile) and xenstored.
    let mut xs = match unsafe { XsRing::new(store.as_ptr(), events) } {
        Ok(xs) => xs,
        Err(e) => fail(format_args!("XenStore ring: {e}")),
    };
    let own: DomId = match xs.read("domid").map(xs_wire::parse_u16) {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => fail(format_args!("domid: {e}")),
        Err(e) => fail(format_args!("reading domid: {e}")),
    };
    log!("pv-domu: I am domain {own} (XenStore over the start_info ring)");

    let kernel = PvKernel::new(boot, own);
    let xen = match Xen::new(kernel, si.shared_info >> 12) {
        Ok(x) => x,
        Err(e) => fail(format_args!("grant table / shared_info: {e}")),
    };
    let r = accept_from_dom0(&xen, &mut xs, own).and_then(|t1| {
        if let Ok(keys) = ChannelKeys::new(own, 0, msgs::CHANNEL) {
            let _ = keys.withdraw(&mut xs);
        }
        offer_to_dom0(&xen, &mut xs, own).map(|t2| (t1, t2))
    });
    match r {
        Ok((t1, t2)) => {
            for (name, t) in [(msgs::CHANNEL, t1), (msgs::CHANNEL_BACK, t2)] {
                log!(
                    "pv-domu: channel {name}: sent {} and received {} messages; sent hash {:016x}, received hash {:016x}; dom0's summary matches",
                    t.sent, t.received, t.sent_hash, t.received_hash
                );
            }
            // dom0's unmap-notify clears its live byte just before gntdev
            // unmaps: the channel's drop waited for the unmap (up to the
            // release timeout) before ending the grants.
            log!(
                "pv-domu: granted pages dom0 still mapped after the release timeout: {}",
                xen.leaked_pages()
            );
            if xen.leaked_pages() != 0 {
                fail(format_args!("granted pages leaked at teardown"));
            }
            log!("PV-DOMU-RESULT: PASS");
            if cmdline_has(&boot, "panic-at-exit") {
                panic!("deliberate, at exit (panic-at-exit): a panic reaches dom0's log");
            }
            halt(SHUTDOWN_POWEROFF)
        }
        Err(why) => fail(format_args!("{why}")),
    }
}

/// Why the exchange failed.
enum Failure {
    Rendezvous(KeyError),
    Refused,
    Transport(coresident_xen::kernel::KernelTransportError),
    Channel(coresident::ChannelError),
    Message(u32, msgs::Bad),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rendezvous(e) => write!(f, "rendezvous: {e}"),
            Self::Refused => f.write_str("rendezvous: dom0 refused the offer"),
            Self::Transport(e) => write!(f, "transport: {e}"),
            Self::Channel(e) => write!(f, "channel: {e:?}"),
            Self::Message(i, e) => write!(f, "message {i} from dom0: {e:?}"),
        }
    }
}

/// Accepts dom0's offer of channel [`msgs::CHANNEL`] (dom0's pages, mapped
/// here), then [`answer_stream`].
fn accept_from_dom0<E: Events>(
    xen: &Xen<PvKernel>,
    xs: &mut XsRing<E>,
    own: DomId,
) -> Result<msgs::Totals, Failure> {
    // dom0 offers garbage first: refused with the reason, then waited past.
    let keys = ChannelKeys::new(own, 0, msgs::CHANNEL).map_err(Failure::Rendezvous)?;
    let mut refused = |e: &KeyError| log!("pv-domu: refused dom0's offer: {e}");
    let mut refs: [GrantRef; MAX_REFS] = [0; MAX_REFS];
    let offer = keys
        .wait_valid_offer(xs, &mut refs, &mut refused)
        .map_err(Failure::Rendezvous)?;
    log!(
        "pv-domu: dom0 offers {} + {} bytes of rings in {} grants, port {}",
        offer.layout.to_acceptor,
        offer.layout.to_offerer,
        offer.refs.len(),
        offer.port
    );
    let link = match KernelTransport::new(xen, 0).accept_offer(&offer) {
        Ok(link) => link,
        Err(e) => {
            let _ = keys.answer(xs, offer.port, Err(&e));
            return Err(Failure::Transport(e));
        }
    };
    keys.answer(xs, offer.port, Ok(link.doorbell.port()))
        .map_err(Failure::Rendezvous)?;
    log!(
        "pv-domu: accepted: dom0's grants mapped, port {} bound, answer written",
        link.doorbell.port()
    );
    answer_stream(xen, link, 0x5eed_0d0d_0000_0002)
}

/// Offers dom0 channel [`msgs::CHANNEL_BACK`] of this kernel's own pages
/// (granted to dom0), waits for dom0's answer and live byte, then
/// [`answer_stream`].
fn offer_to_dom0<E: Events>(
    xen: &Xen<PvKernel>,
    xs: &mut XsRing<E>,
    own: DomId,
) -> Result<msgs::Totals, Failure> {
    let layout = ChannelLayout::symmetric(16 * 1024);
    let keys = ChannelKeys::new(own, 0, msgs::CHANNEL_BACK).map_err(Failure::Rendezvous)?;
    let pending = KernelTransport::new(xen, 0)
        .offer_pages(layout)
        .map_err(Failure::Transport)?;
    let mut refs: [GrantRef; MAX_REFS] = [0; MAX_REFS];
    let offer = pending
        .offer(&mut refs)
        .map_err(|e| Failure::Transport(e.into()))?;
    keys.publish_offer(xs, &offer)
        .map_err(Failure::Rendezvous)?;
    log!(
        "pv-domu: offered dom0 {} grants of my own pages, port {}",
        offer.refs.len(),
        offer.port
    );
    if !keys
        .wait_answer(xs, offer.port)
        .map_err(Failure::Rendezvous)?
    {
        return Err(Failure::Refused);
    }
    let link = pending.complete(CHANNEL_WAIT).map_err(Failure::Transport)?;
    log!("pv-domu: dom0 accepted: it maps my grants, its live byte is set");
    answer_stream(xen, link, 0x5eed_0d0d_0000_0003)
}

/// Answers every message of dom0 with one of its own (random sizes and
/// bytes from `seed`) until dom0's summary, which must match; sends ours,
/// then waits until dom0 leaves (its live byte cleared by unmap-notify).
fn answer_stream<R: SharedRegion, D: Doorbell>(
    xen: &Xen<PvKernel>,
    link: Link<R, D>,
    seed: u64,
) -> Result<msgs::Totals, Failure> {
    let config = ChannelConfig {
        liveness: None,
        ..ChannelConfig::default()
    };
    let mut ch = Channel::new(link, config, xen.clock()).map_err(Failure::Channel)?;
    let mut rng = msgs::Rng(seed);
    let mut t = msgs::Totals::new();
    let mut got = [0u8; msgs::MAX_MESSAGE];
    let mut out = [0u8; msgs::MAX_MESSAGE];
    loop {
        let len = ch
            .recv_blocking(&mut got, CHANNEL_WAIT)
            .map_err(Failure::Channel)?;
        match msgs::check(&mut t, got.get(..len).unwrap_or(&[])) {
            Ok(msgs::Got::Data) => {
                let len = msgs::next_message(&mut rng, &mut t, &mut out);
                ch.send_blocking(out.get(..len).unwrap_or(&[]), CHANNEL_WAIT)
                    .map_err(Failure::Channel)?;
                if t.sent % 5000 == 0 {
                    log!("pv-domu: {} messages each way", t.sent);
                }
            }
            Ok(msgs::Got::End) => break,
            Err(e) => return Err(Failure::Message(t.received, e)),
        }
    }
    let len = msgs::end_message(&t, &mut out);
    ch.send_blocking(out.get(..len).unwrap_or(&[]), CHANNEL_WAIT)
        .map_err(Failure::Channel)?;
    ch.flush().map_err(Failure::Channel)?;
    log!("pv-domu: channel stats {:?}", ch.stats());
    match ch.recv_blocking(&mut got, CHANNEL_WAIT) {
        Err(ChannelError::PeerGone) => log!("pv-domu: dom0 left (its live byte is clear)"),
        Err(e) => return Err(Failure::Channel(e)),
        Ok(len) => return Err(Failure::Message(t.received, msgs::Bad::Length(len))),
    }
    Ok(t)
}
