//! The `pv-kernel` job's kernel: boots as Xen's PV dom0 and runs the real
//! ring across a grant-mapped second view of its own pages, through
//! coresident-xen's kernel transport and the core's `Channel`:
//!
//! - `offer` grants the pages to domain 0 (itself) and allocates an unbound
//!   port; `accept` maps the grants into windows and binds the port: two
//!   views of one region, two event channels' ends;
//! - a producer (boot stack) sends `MESSAGES` messages of random sizes, each
//!   verifiable from its sequence number, with blocking sends; a consumer (a
//!   coroutine on a second stack) receives them with blocking receives and
//!   checks every byte and a running FNV-1a checksum;
//! - a blocking call that must wait arms the ring's event index and waits on
//!   the doorbell; a wait that finds its port not pending switches to the
//!   other side. So the ring's publish/release → `Notify` decides each
//!   `EVTCHNOP_send`, Xen's pending bit carries it, and a lost wake-up
//!   shows as both sides waiting with nothing pending: FAIL.
//!
//! Ends with `CORESIDENT-PV-KERNEL: PASS` or `... FAIL <why>` and
//! `SCHEDOP_shutdown(reboot)` (QEMU's `-no-reboot` exits).
#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]

use core::cell::Cell;
use core::time::Duration;

use coresident::{Channel, ChannelConfig, ChannelError, ChannelLayout, PendingOffer, Transport};
use coresident::{Doorbell, Wake};
use coresident_pv_kernel::coro::{Pair, Stack};
use coresident_pv_kernel::{pv_entry, say, Boot, PvKernel, SHUTDOWN_REBOOT};
use coresident_xen::kernel::hypercall::xen_version;
use coresident_xen::kernel::{
    event_channel, Hypercall, KernelDoorbell, KernelError, KernelRegion, KernelTransport,
    KernelTransportError, Xen, XenClock,
};
use coresident_xen::protocol::crxg;

pv_entry!(main);

/// Messages from producer to consumer (the command line's `messages=N`
/// overrides).
const MESSAGES: u64 = 100_000;
/// Data area of each ring.
const RING: u32 = 64 * 1024;
/// Idle switches in a row without progress that mean a lost wake-up.
const STUCK: u32 = 8;

type Chan<'x> = Channel<KernelRegion<'x, PvKernel>, KernelDoorbell<'x, PvKernel>, XenClock<'x>>;

static PAIR: Pair = Pair::new();
static CONSUMER_STACK: Stack = Stack::new();

/// Progress of both sides (messages moved), and the idle streak.
struct Watch {
    progress: Cell<u64>,
    seen: Cell<u64>,
    streak: Cell<u32>,
    stuck: Cell<bool>,
    idles: Cell<u64>,
}

// SAFETY: one vCPU; the coroutines never run at the same time.
unsafe impl Sync for Watch {}

static WATCH: Watch = Watch {
    progress: Cell::new(0),
    seen: Cell::new(0),
    streak: Cell::new(0),
    stuck: Cell::new(false),
    idles: Cell::new(0),
};

/// The kernel's idle hook: a waiting side yields to the other one. When
/// both keep waiting with nothing moving, a wake-up was lost.
fn yield_to_other(_port: u32) {
    WATCH.idles.set(WATCH.idles.get() + 1);
    if WATCH.progress.get() == WATCH.seen.get() {
        WATCH.streak.set(WATCH.streak.get() + 1);
        if WATCH.streak.get() > STUCK {
            WATCH.stuck.set(true);
            fail("lost wake-up: both sides wait and no event is pending");
        }
    } else {
        WATCH.seen.set(WATCH.progress.get());
        WATCH.streak.set(0);
    }
    PAIR.switch();
}

fn fail(why: &str) -> ! {
    say!("CORESIDENT-PV-KERNEL: FAIL {}", why);
    coresident_pv_kernel::halt(SHUTDOWN_REBOOT)
}

/// xorshift64*.
fn rng(x: &mut u64) -> u64 {
    *x ^= *x >> 12;
    *x ^= *x << 25;
    *x ^= *x >> 27;
    x.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

/// Size of message `seq`: mostly up to 512 bytes, one in 64 up to `max`.
fn size_of_msg(sizes: &mut u64, max: usize) -> usize {
    let r = rng(sizes) as usize;
    if r % 64 == 0 {
        (r >> 8) % (max + 1)
    } else {
        (r >> 8) % 513
    }
}

/// Byte `i` of message `seq`.
fn byte(seq: u64, i: usize) -> u8 {
    (seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8 ^ (i as u8).wrapping_mul(31)
}

fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    h
}

const SEED: u64 = 0x5EED_C0DE_1234_5678;

/// What the consumer found, read by main once `done` is set.
struct Results {
    received: Cell<u64>,
    bytes: Cell<u64>,
    checksum: Cell<u64>,
    error: Cell<Option<&'static str>>,
    done: Cell<bool>,
    stats: Cell<Option<coresident::Stats>>,
}

// SAFETY: one vCPU; the coroutines never run at the same time.
unsafe impl Sync for Results {}

static RESULTS: Results = Results {
    received: Cell::new(0),
    bytes: Cell::new(0),
    checksum: Cell::new(0),
    error: Cell::new(None),
    done: Cell::new(false),
    stats: Cell::new(None),
};

/// The consumer's start: main's `(channel, messages)` slot.
type Start = Option<(Chan<'static>, u64)>;

extern "C" fn consumer_entry(arg: *mut u8) -> ! {
    // SAFETY: `main` passes a pointer to its `Start` slot, which it does not
    // touch again; this takes the channel out of it at once. The lifetime
    // is `Xen`'s on main's stack, which outlives this coroutine (main never
    // returns, and waits for `done`).
    let start = unsafe { (*arg.cast::<Start>()).take() };
    match start {
        Some((chan, messages)) => consume(chan, messages),
        None => RESULTS.error.set(Some("no channel")),
    }
    RESULTS.done.set(true);
    loop {
        PAIR.switch();
    }
}

fn consume(mut chan: Chan<'_>, messages: u64) {
    let mut buf = [0u8; RING as usize / 2];
    let mut sizes = SEED;
    let max = chan.max_incoming().min(buf.len());
    let mut checksum = 0xcbf2_9ce4_8422_2325u64;
    let (mut received, mut bytes) = (0u64, 0u64);
    for seq in 0..messages {
        let want = size_of_msg(&mut sizes, max);
        let Ok(n) = chan.recv_blocking(&mut buf, None) else {
            RESULTS.error.set(Some("recv_blocking failed"));
            return;
        };
        if n != want {
            RESULTS.error.set(Some("wrong message length"));
            return;
        }
        if buf[..n].iter().enumerate().any(|(i, &b)| b != byte(seq, i)) {
            RESULTS.error.set(Some("wrong message content"));
            return;
        }
        checksum = fnv(checksum, &buf[..n]);
        received += 1;
        bytes += n as u64;
        WATCH.progress.set(WATCH.progress.get() + 1);
    }
    RESULTS.received.set(received);
    RESULTS.bytes.set(bytes);
    RESULTS.checksum.set(checksum);
    RESULTS.stats.set(Some(*chan.stats()));
    // The acceptor's side closes first (its grants unmapped), so the
    // offerer can end every grant's access afterwards.
    drop(chan);
}

/// Xen's own answers on the paths the fake hypervisor of the host tests
/// only imitates: a forged grant reference is refused and what was mapped
/// undone; a page the peer maps cannot have its access ended; a peer port
/// that Xen closes (as it does for a destroyed domain) shows as `PeerGone`;
/// and nothing leaks.
fn xen_semantics(xen: &Xen<PvKernel>) -> Result<(), &'static str> {
    let k = xen.kernel();
    let (pages0, windows0) = (k.pages_in_use(), k.windows_in_use());
    let layout = ChannelLayout::symmetric(4096);
    let mut off = KernelTransport::new(xen, 0);
    let mut acc = KernelTransport::new(xen, 0);
    let mut buf = [0u8; 128];
    let (pending, n) = off.offer(layout, &mut buf).map_err(|_| "offer")?;
    let mut forged = buf;
    forged[36..40].copy_from_slice(&2000u32.to_le_bytes());
    let status = match acc.accept(&forged[..n]) {
        Err(KernelTransportError::Backend(KernelError::Grant { status, .. })) => status,
        _ => return Err("Xen did not refuse a forged grant reference"),
    };
    if k.windows_in_use() != windows0 {
        return Err("windows left behind by a refused map");
    }
    let b = acc.accept(&buf[..n]).map_err(|_| "accept")?;
    let a = pending
        .complete(Some(Duration::from_secs(1)))
        .map_err(|_| "complete")?;
    let mut refs = [0; 8];
    let first = *crxg::parse(0, &buf[..n], &mut refs)
        .map_err(|_| "own rendezvous")?
        .refs
        .first()
        .ok_or("no refs")?;
    if xen.grants().end_access(first) != Err(KernelError::GrantInUse(first)) {
        return Err("end_access of a page the peer maps was not refused");
    }
    let wait = Some(Duration::from_millis(100));
    if a.doorbell.wait(wait) != Ok(Wake::Rung) || b.doorbell.wait(wait) != Ok(Wake::Rung) {
        return Err("the set-up events did not arrive");
    }
    event_channel::close(k, a.doorbell.port()).map_err(|_| "close")?;
    if b.doorbell.wait(wait) != Ok(Wake::PeerGone) {
        return Err("a closed peer port did not show as PeerGone");
    }
    drop(b);
    drop(a);
    if xen.leaked_pages() != 0 || k.pages_in_use() != pages0 || k.windows_in_use() != windows0 {
        return Err("pages or windows leaked");
    }
    say!(
        "pv-kernel: Xen refused a forged grant reference (status {}) and an end_access of a mapped page; a closed peer port showed as PeerGone; nothing leaked",
        status
    );
    Ok(())
}

/// The five-argument hypercall on the real hypervisor: `hypfs_op` takes its
/// fourth argument (a buffer size) in `r10` and its fifth in `r8`.
/// `XEN_HYPFS_OP_get_version` must refuse a non-zero fifth argument, and a
/// read of `/buildinfo/version/major` must fail with `ENOBUFS` for a
/// buffer one byte short and give Xen's major version with the exact size:
/// with the fifth argument anywhere else (xen-sys passes it in `r9`) these
/// cannot all hold.
fn five_argument_hypercall(xen: &Xen<PvKernel>, major: u16) -> Result<(), &'static str> {
    const HYPFS_OP: u32 = 42; // __HYPERVISOR_hypfs_op, xen/xen.h
    const GET_VERSION: u64 = 0; // XEN_HYPFS_OP_get_version, xen/hypfs.h
    const READ: u64 = 1; // XEN_HYPFS_OP_read
    const ENOBUFS: i64 = -105;
    const EINVAL: i64 = -22;
    let k = xen.kernel();
    // SAFETY: get_version reads no memory (all pointer arguments null).
    let v = unsafe { k.hypercall(HYPFS_OP, [GET_VERSION, 0, 0, 0, 0]) };
    // SAFETY: as above; the fifth argument is a size, not a pointer.
    let bad = unsafe { k.hypercall(HYPFS_OP, [GET_VERSION, 0, 0, 0, 1]) };
    if v <= 0 || bad != EINVAL {
        say!(
            "pv-kernel: hypfs get_version {} / with a fifth argument {}",
            v,
            bad
        );
        return Err("hypfs_op(get_version): the fifth argument did not arrive in r8");
    }
    let path = b"/buildinfo/version/major\0";
    // struct xen_hypfs_direntry (12 bytes: type, encoding, pad,
    // content_len, max_write_len), then the content.
    const DIRENTRY: usize = 12;
    let mut buf = [0u8; 64];
    let read = |buf: &mut [u8; 64], len: usize| {
        // SAFETY: Xen reads `path.len()` bytes of `path` and writes at most
        // `len <= 64` bytes of `buf`, both live for the call.
        unsafe {
            k.hypercall(
                HYPFS_OP,
                [
                    READ,
                    path.as_ptr() as u64,
                    path.len() as u64,
                    buf.as_mut_ptr() as u64,
                    len as u64,
                ],
            )
        }
    };
    // Shorter than a direntry: EINVAL; a direntry but not the content:
    // ENOBUFS, with content_len filled in; the exact size: the content.
    let tiny = read(&mut buf, DIRENTRY - 1);
    let header_only = read(&mut buf, DIRENTRY);
    let need = DIRENTRY + u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
    if !(DIRENTRY + 1..=64).contains(&need) {
        return Err("hypfs_op(read): no content length");
    }
    let one_short = read(&mut buf, need - 1);
    buf = [0; 64];
    let exact = read(&mut buf, need);
    let content = &buf[DIRENTRY..need];
    let got = match (buf[0], content.len()) {
        // XEN_HYPFS_TYPE_UINT, little-endian
        (3, 4) => u32::from_le_bytes([content[0], content[1], content[2], content[3]]),
        _ => u32::MAX,
    };
    say!(
        "pv-kernel: hypfs_op, 5 arguments: get_version {} (with r8=1: {}); read /buildinfo/version/major with {} bytes: {}, {}: {}, {}: {}, {}: {} -> {}",
        v,
        bad,
        DIRENTRY - 1,
        tiny,
        DIRENTRY,
        header_only,
        need - 1,
        one_short,
        need,
        exact,
        got
    );
    if tiny != EINVAL
        || header_only != ENOBUFS
        || one_short != ENOBUFS
        || exact != 0
        || got != u32::from(major)
    {
        return Err("hypfs_op(read): the buffer size did not arrive in r8");
    }
    Ok(())
}

/// A 1 MiB ring each way (514 grants: 33 batches to map and to unmap):
/// messages of up to 256 KiB written through the offerer's view are read
/// back through the acceptor's, so every page of both mappings carries
/// data; one thread, non-blocking calls. Nothing may leak afterwards.
fn big_ring(xen: &Xen<PvKernel>) -> Result<(), &'static str> {
    const BIG: u32 = 1 << 20;
    const MSGS: u64 = 64;
    static mut BUF: [u8; 256 * 1024] = [0; 256 * 1024];
    let k = xen.kernel();
    let (pages0, windows0) = (k.pages_in_use(), k.windows_in_use());
    let layout = ChannelLayout::symmetric(BIG);
    let mut off = KernelTransport::new(xen, 0);
    let mut acc = KernelTransport::new(xen, 0);
    let mut rdv = [0u8; 32 + 4 * 600];
    let (pending, n) = off.offer(layout, &mut rdv).map_err(|_| "offer (1 MiB)")?;
    let b = acc.accept(&rdv[..n]).map_err(|_| "accept (1 MiB)")?;
    let a = pending.complete(None).map_err(|_| "complete (1 MiB)")?;
    let config = ChannelConfig {
        spin: 0,
        liveness: None,
        recheck: None,
        ..ChannelConfig::default()
    };
    let mut tx = Channel::new(a, config, xen.clock()).map_err(|_| "channel (1 MiB)")?;
    let mut rx = Channel::new(b, config, xen.clock()).map_err(|_| "channel (1 MiB)")?;
    // SAFETY: one vCPU, and this function is the buffer's only user: it
    // runs once, before the coroutines start.
    let buf = unsafe { &mut *core::ptr::addr_of_mut!(BUF) };
    let max = tx.max_message().min(buf.len());
    let (mut sent, mut got, mut bytes) = (0u64, 0u64, 0u64);
    let mut sizes = SEED ^ 1;
    let mut rsizes = SEED ^ 1;
    // The size of message `sent`, drawn once even when it waits for room.
    let mut next: Option<usize> = None;
    while got < MSGS {
        while sent < MSGS {
            let len = *next.get_or_insert_with(|| (rng(&mut sizes) as usize) % (max + 1));
            for (i, b) in buf[..len].iter_mut().enumerate() {
                *b = byte(sent, i);
            }
            match tx.send(&buf[..len]) {
                Ok(()) => {
                    sent += 1;
                    next = None;
                }
                Err(ChannelError::Full) => break,
                Err(_) => return Err("send (1 MiB)"),
            }
        }
        loop {
            match rx.recv(buf) {
                Ok(len) => {
                    let want = (rng(&mut rsizes) as usize) % (max + 1);
                    if len != want
                        || buf[..len]
                            .iter()
                            .enumerate()
                            .any(|(i, &b)| b != byte(got, i))
                    {
                        return Err("a message through the 1 MiB ring differs");
                    }
                    got += 1;
                    bytes += len as u64;
                }
                Err(ChannelError::Empty) => break,
                Err(_) => return Err("recv (1 MiB)"),
            }
        }
    }
    drop(rx);
    drop(tx);
    if xen.leaked_pages() != 0 || k.pages_in_use() != pages0 || k.windows_in_use() != windows0 {
        return Err("pages or windows leaked (1 MiB)");
    }
    say!(
        "pv-kernel: 1 MiB rings: {} grant refs mapped and unmapped, {} messages ({} bytes) through them, nothing leaked",
        (n - 32) / 4,
        got,
        bytes
    );
    Ok(())
}

fn messages_from_cmdline(boot: &Boot) -> u64 {
    let cl = &boot.start_info().cmd_line;
    let len = cl.iter().position(|&b| b == 0).unwrap_or(cl.len());
    let s = core::str::from_utf8(&cl[..len]).unwrap_or("");
    s.split(' ')
        .find_map(|w| w.strip_prefix("messages="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(MESSAGES)
}

fn main(boot: Boot) -> ! {
    let si = boot.start_info();
    let (maj, min) = xen_version(&boot.hypercalls());
    say!(
        "pv-kernel: Xen {}.{}, dom0={} nr_pages={}",
        maj,
        min,
        boot.is_dom0(),
        si.nr_pages
    );
    let messages = messages_from_cmdline(&boot);
    let kernel = PvKernel::new(boot, 0);
    let xen = match Xen::new(kernel, si.shared_info >> 12) {
        Ok(x) => x,
        Err(_) => fail("shared_info or grant table setup"),
    };
    if let Err(why) = five_argument_hypercall(&xen, maj) {
        fail(why);
    }
    if let Err(why) = xen_semantics(&xen) {
        fail(why);
    }
    if let Err(why) = big_ring(&xen) {
        fail(why);
    }
    let layout = ChannelLayout::symmetric(RING);
    let mut offerer = KernelTransport::new(&xen, 0);
    let mut acceptor = KernelTransport::new(&xen, 0);
    let mut rendezvous = [0u8; 512];
    let (pending, n) = match offerer.offer(layout, &mut rendezvous) {
        Ok(x) => x,
        Err(e) => {
            say!("offer: {}", e);
            fail("offer")
        }
    };
    let b = match acceptor.accept(&rendezvous[..n]) {
        Ok(l) => l,
        Err(e) => {
            say!("accept: {}", e);
            fail("accept")
        }
    };
    let a = match pending.complete(Some(Duration::from_secs(5))) {
        Ok(l) => l,
        Err(e) => {
            say!("complete: {}", e);
            fail("complete")
        }
    };
    say!(
        "pv-kernel: offered {} rendezvous bytes ({} grant refs), ports {} -> {}; data area {} B each way",
        n,
        (n - 32) / 4,
        a.doorbell.port(),
        b.doorbell.port(),
        RING
    );
    // One vCPU, two coroutines: never spin, trust the doorbell (a lost one
    // must show, not be papered over by a re-check timer).
    let config = ChannelConfig {
        spin: 0,
        liveness: None,
        recheck: None,
        ..ChannelConfig::default()
    };
    let mut tx = match Channel::new(a, config, xen.clock()) {
        Ok(c) => c,
        Err(_) => fail("offerer's channel"),
    };
    let rx = match Channel::new(b, config, xen.clock()) {
        Ok(c) => c,
        Err(_) => fail("acceptor's channel"),
    };
    // SAFETY (lifetime): the channel borrows `xen`, which lives on this
    // stack until the shutdown; the consumer coroutine ends before that.
    let rx: Chan<'static> = unsafe { core::mem::transmute::<Chan<'_>, Chan<'static>>(rx) };
    let mut start: Start = Some((rx, messages));
    xen.kernel().set_idle_hook(Some(yield_to_other));
    // SAFETY: the consumer stack is used by this one coroutine; its entry
    // never returns; `start` outlives it and is not touched here again.
    unsafe {
        PAIR.start(
            &CONSUMER_STACK,
            consumer_entry,
            core::ptr::addr_of_mut!(start).cast(),
        )
    };

    let t0 = xen.shared_info().system_time_ns();
    let mut sizes = SEED;
    let max = tx.max_message().min(RING as usize / 2);
    let mut msg = [0u8; RING as usize / 2];
    let mut checksum = 0xcbf2_9ce4_8422_2325u64;
    let mut bytes = 0u64;
    for seq in 0..messages {
        let len = size_of_msg(&mut sizes, max);
        for (i, b) in msg[..len].iter_mut().enumerate() {
            *b = byte(seq, i);
        }
        checksum = fnv(checksum, &msg[..len]);
        bytes += len as u64;
        match tx.send_blocking(&msg[..len], None) {
            Ok(()) => {}
            Err(ChannelError::PeerGone) => fail("consumer gone"),
            Err(_) => fail("send_blocking failed"),
        }
        WATCH.progress.set(WATCH.progress.get() + 1);
    }
    if tx.flush().is_err() {
        fail("flush");
    }
    while !RESULTS.done.get() {
        PAIR.switch();
    }
    let elapsed = xen.shared_info().system_time_ns().saturating_sub(t0);
    xen.kernel().set_idle_hook(None);
    if let Some(e) = RESULTS.error.get() {
        fail(e);
    }
    let (ts, rs) = (*tx.stats(), RESULTS.stats.get().unwrap_or_default());
    let (received, rbytes, rsum) = (
        RESULTS.received.get(),
        RESULTS.bytes.get(),
        RESULTS.checksum.get(),
    );
    say!(
        "pv-kernel: {} messages, {} bytes in {} ms; checksum {:#018x} sent, {:#018x} received",
        received,
        rbytes,
        elapsed / 1_000_000,
        checksum,
        rsum
    );
    say!(
        "pv-kernel: events sent {} (producer {}, consumer {}), suppressed {}, wake-ups {} (spurious {}), idle switches {}",
        ts.doorbells_rung + rs.doorbells_rung,
        ts.doorbells_rung,
        rs.doorbells_rung,
        ts.doorbells_suppressed + rs.doorbells_suppressed,
        ts.wakeups + rs.wakeups,
        ts.spurious_wakeups + rs.spurious_wakeups,
        WATCH.idles.get()
    );
    let per_msg = (ts.doorbells_rung + rs.doorbells_rung) as f64 / messages.max(1) as f64;
    say!("pv-kernel: events per message {:.4}", per_msg);
    if received != messages || rbytes != bytes || rsum != checksum {
        fail("count, bytes or checksum differ");
    }
    if ts.doorbells_rung + rs.doorbells_rung == 0 {
        fail("no event was ever sent: the waits were not exercised");
    }
    // Teardown: the acceptor has unmapped (the consumer dropped its
    // channel), so the offerer can end every grant's access and take its
    // pages back.
    drop(tx);
    if xen.leaked_pages() != 0 {
        say!("pv-kernel: {} pages still granted", xen.leaked_pages());
        fail("grants still in use after both sides closed");
    }
    say!("CORESIDENT-PV-KERNEL: PASS");
    coresident_pv_kernel::halt(SHUTDOWN_REBOOT)
}
