//! `domu-stream` (`.ci/xen`): a `coresident_net` stream between dom0 and a domU through
//! the Xen backend ([`XenDiscovery`]). The domU connects to dom0's [`Listener`]
//! (10.0.0.1, across the vif); the stream upgrades to a Xen channel (the domU's grant
//! pages, the XenStore rendezvous in context `net`). Both directions carry
//! `XEN_STREAM_BYTES` (default 100 MiB) of pseudo-random bytes in writes and reads of
//! random sizes, each side checking every byte it receives against the sender's
//! generator (a lost, duplicated or reordered byte is a mismatch at its offset). A third
//! of the way through dom0's sending, dom0's residency [`Agent`] withdraws the domU
//! (what a migration away looks like): both views see the peer leave, the backend
//! withdraws both streams, and the rest goes over TCP on the vif. Each side prints its
//! bytes per path from `stats()`.
//!
//! Then residency returns: once dom0 has sent its `XEN_STREAM_BYTES`, the agent
//! readmits the domU, both views list the peer again, the backend readmits both
//! streams, and the domU offers a new channel (epoch 1); dom0 waits until its stream is
//! back on the ring and sends a tail of `TAIL` bytes more, which the domU must receive
//! over the ring. (The domU's own tail is not gated: it may take either path.)
//!
//! `stream_host` runs in dom0 (`DOMU_ID` names the guest), `stream_guest` in the domU.
#![cfg(all(target_os = "linux", feature = "xen"))]

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coresident_net::xen::{addr_key, XenDiscovery, LISTEN_DIR};
use coresident_net::{Builder, Path, Stream, StreamStats};
use coresident_xen::residency::{self, Addr, Addresses, Agent};
use coresident_xen::xenstore::XsClient;
use coresident_xen::XenStore;

const DOM0_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const DOMU_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const PORT: u16 = 7227;
/// dom0 → domU.
const SEED_DOWN: u64 = 0xd0d0_0001;
/// domU → dom0.
const SEED_UP: u64 = 0xd0d0_0002;
/// What each side sends after the first `total()` bytes (dom0's over the re-upgraded
/// ring).
const TAIL: u64 = 4 << 20;
/// The largest write and read (dom0's write that crosses `total()` may still go over
/// TCP: the rest of the tail waits for the new channel).
const MAX_IO: u64 = 256 << 10;
/// A bound on every wait (TCG is slow and shared).
const WATCHDOG: Duration = Duration::from_secs(240);

fn total() -> u64 {
    std::env::var("XEN_STREAM_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100 << 20)
}

/// xorshift64*: both ends make the same bytes from a seed.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// The byte stream of a seed: byte `i` is a function of the seed and `i` only.
struct Pattern {
    g: Gen,
    word: [u8; 8],
    used: usize,
    offset: u64,
}

impl Pattern {
    fn new(seed: u64) -> Self {
        Self {
            g: Gen(seed | 1),
            word: [0; 8],
            used: 8,
            offset: 0,
        }
    }

    fn byte(&mut self) -> u8 {
        if self.used == 8 {
            self.word = self.g.next().to_le_bytes();
            self.used = 0;
        }
        let b = self.word[self.used];
        self.used += 1;
        self.offset += 1;
        b
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = self.byte();
        }
    }

    /// Checks `buf` as the next bytes: `Err(offset)` of the first wrong one.
    fn check(&mut self, buf: &[u8]) -> Result<(), u64> {
        for &b in buf {
            let at = self.offset;
            if self.byte() != b {
                return Err(at);
            }
        }
        Ok(())
    }
}

#[test]
fn the_pattern_catches_a_lost_a_duplicated_and_a_flipped_byte() {
    let mut a = Pattern::new(SEED_DOWN);
    let mut buf = vec![0u8; 1000];
    a.fill(&mut buf);
    assert_eq!(Pattern::new(SEED_DOWN).check(&buf), Ok(()));
    let mut lost = buf.clone();
    lost.remove(500);
    assert!(Pattern::new(SEED_DOWN).check(&lost).is_err());
    let mut dup = buf.clone();
    dup.insert(500, buf[499]);
    assert!(Pattern::new(SEED_DOWN).check(&dup).is_err());
    let mut flip = buf.clone();
    flip[999] ^= 1;
    assert_eq!(Pattern::new(SEED_DOWN).check(&flip), Err(999));
    assert!(Pattern::new(SEED_UP).check(&buf).is_err());
}

/// Writes `n` bytes of `seed`'s pattern in writes of 1 B to 256 KiB; calls `at(sent)`
/// after each write (and before the first); then shuts the writing half down.
fn send(s: &Stream, seed: u64, n: u64, mut at: impl FnMut(u64)) {
    let mut p = Pattern::new(seed);
    let mut sizes = Gen(seed ^ 0x5151);
    let mut buf = vec![0u8; MAX_IO as usize];
    let mut sent = 0u64;
    at(0);
    while sent < n {
        let len = (1 + sizes.next() % MAX_IO).min(n - sent) as usize;
        p.fill(&mut buf[..len]);
        (&*s).write_all(&buf[..len]).expect("write");
        sent += len as u64;
        at(sent);
    }
    (&*s).flush().expect("flush");
    s.shutdown(Shutdown::Write).expect("shutdown");
}

/// Reads to EOF, checking every byte against `seed`'s pattern; returns the count and
/// the stream's stats when `mark` bytes had arrived.
fn receive(side: &str, s: &Stream, seed: u64, mark: u64) -> (u64, Option<StreamStats>) {
    let mut p = Pattern::new(seed);
    let mut sizes = Gen(seed ^ 0xa5a5);
    let mut buf = vec![0u8; MAX_IO as usize];
    let mut got = 0u64;
    let mut at_mark = None;
    loop {
        // Never past the mark in one read, so the stats there are exact.
        let mut len = 1 + (sizes.next() % MAX_IO) as usize;
        if got < mark {
            len = len.min((mark - got) as usize);
        }
        let n = (&*s).read(&mut buf[..len]).expect("read");
        if n == 0 {
            return (got, at_mark);
        }
        if let Err(at) = p.check(&buf[..n]) {
            panic!("{side}: byte {at} of the stream is wrong (lost, duplicated or reordered)");
        }
        got += n as u64;
        if got == mark {
            at_mark = Some(s.stats());
        }
    }
}

fn report(side: &str, st: &StreamStats, secs: f64) {
    println!(
        "{side}: stream stats: sent ring {} B, tcp {} B; received ring {} B, tcp {} B; \
         upgrades {}, downgrades {}, resent {} B, refusals {}, path now {:?} ({secs:.1} s)",
        st.ring_tx_bytes,
        st.tcp_tx_bytes,
        st.ring_rx_bytes,
        st.tcp_rx_bytes,
        st.upgrades,
        st.downgrades,
        st.resent_bytes,
        st.refusals,
        st.path
    );
}

/// Both directions at once on `s`: sends `n` of `out_seed`, receives `in_seed`'s
/// (with the stats when `mark` bytes had arrived); `at(sent)` after each write.
fn exchange(
    side: &'static str,
    s: &Stream,
    (out_seed, in_seed): (u64, u64),
    (n, mark): (u64, u64),
    at: impl FnMut(u64) + Send,
) -> (u64, Option<StreamStats>) {
    std::thread::scope(|sc| {
        let r = sc.spawn(|| receive(side, s, in_seed, mark));
        send(s, out_seed, n, at);
        r.join().expect("the receiver panicked")
    })
}

fn check_paths(side: &str, st: &StreamStats, n: u64, got: u64) {
    assert_eq!(got, n, "{side}: received {got} bytes of {n}");
    assert_eq!(st.ring_rx_bytes + st.tcp_rx_bytes, n, "{side}: {st:?}");
    assert!(st.ring_tx_bytes + st.tcp_tx_bytes >= n, "{side}: {st:?}");
    assert!(st.upgrades >= 2, "{side}: never upgraded again: {st:?}");
    assert!(st.downgrades >= 1, "{side}: never fell back: {st:?}");
    assert!(
        st.ring_rx_bytes > 0,
        "{side}: nothing came over the ring: {st:?}"
    );
    assert!(st.tcp_rx_bytes > 0, "{side}: nothing came over TCP: {st:?}");
}

fn wait_until(side: &str, what: &str, mut pred: impl FnMut() -> bool) {
    let t = Instant::now();
    while !pred() {
        assert!(t.elapsed() < WATCHDOG, "{side}: never saw {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
#[ignore = "needs a Xen dom0 (run.sh -n) with a domU running stream_guest"]
fn stream_host() {
    let n = total();
    let domu: u16 = std::env::var("DOMU_ID")
        .expect("DOMU_ID")
        .parse()
        .expect("DOMU_ID");
    // Residency: dom0 advertises and runs the agent (a thread, which withdraws the domU
    // when told).
    let me = Addresses::from_addrs([Addr::Ipv4(DOM0_IP)]).unwrap();
    let mut xs = XenStore::open_socket().unwrap();
    residency::advertise(&mut xs, 0, &me).unwrap();
    let withdraw = Arc::new(AtomicBool::new(false));
    let readmit = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let agent = {
        let (withdraw, readmit, stop) = (
            Arc::clone(&withdraw),
            Arc::clone(&readmit),
            Arc::clone(&stop),
        );
        std::thread::spawn(move || {
            let mut agent = Agent::new(XenStore::open_socket().unwrap()).unwrap();
            let (mut withdrawn, mut readmitted) = (false, false);
            while !stop.load(Ordering::SeqCst) {
                for c in agent.step(Some(Duration::from_millis(50))).unwrap() {
                    println!("dom0: agent: {c}");
                }
                if !withdrawn && withdraw.load(Ordering::SeqCst) {
                    withdrawn = true;
                    for c in agent.withdraw(domu).unwrap() {
                        println!("dom0: agent: {c}");
                    }
                    println!("XEN-CHECK stream: the agent withdrew dom{domu} mid-stream");
                }
                if withdrawn && !readmitted && readmit.load(Ordering::SeqCst) {
                    readmitted = true;
                    for c in agent.readmit(domu).unwrap() {
                        println!("dom0: agent: {c}");
                    }
                }
            }
        })
    };
    let xen = Arc::new(XenDiscovery::with_addresses(me).unwrap());
    let b = Builder::new()
        .discovery_arc(xen.clone())
        .handshake_timeout(Duration::from_secs(60));
    let listener = b.bind(SocketAddr::from((DOM0_IP, PORT))).unwrap();
    println!("dom0: listening on {DOM0_IP}:{PORT} with the Xen backend");
    wait_until("dom0", "the domU listed", || {
        xen.domain_of(IpAddr::V4(DOMU_IP)) == Some(domu)
    });
    println!("dom0: dom{domu} ({DOMU_IP}) is co-resident");
    let (s, from) = listener.accept().unwrap();
    println!("dom0: accepted {from}, path {:?}", s.path());
    assert_eq!(s.path(), Path::Ring, "dom0: the stream did not upgrade");
    let t = Instant::now();
    let (got, _) = exchange("dom0", &s, (SEED_DOWN, SEED_UP), (n + TAIL, n), |sent| {
        if sent >= n / 3 && !withdraw.swap(true, Ordering::SeqCst) {
            println!("dom0: {sent} of {n} bytes sent: withdrawing dom{domu}");
        }
        if sent >= n && !readmit.swap(true, Ordering::SeqCst) {
            let st = s.stats();
            report("dom0 (first bytes sent)", &st, t.elapsed().as_secs_f64());
            assert_eq!(st.path, Path::Tcp, "dom0: not on TCP after the withdrawal");
            println!("dom0: {sent} bytes sent, the rest of them over TCP: readmitting dom{domu}");
            // The tail waits for the new channel (the domU offers it once both views
            // list the peer again).
            wait_until("dom0", "the stream back on the ring", || {
                s.poll_events().unwrap();
                s.path() == Path::Ring
            });
            println!(
                "XEN-CHECK stream: readmitted, upgraded again (epoch {})",
                s.stats().epoch
            );
        }
    });
    let secs = t.elapsed().as_secs_f64();
    let st = s.stats();
    report("dom0", &st, secs);
    check_paths("dom0", &st, n + TAIL, got);
    println!(
        "dom0: {} bytes each way checked, {:.1} MB/s each way (TCG: not a claim)",
        n + TAIL,
        (n + TAIL) as f64 / secs / 1e6
    );
    stop.store(true, Ordering::SeqCst);
    agent.join().unwrap();
    residency::unadvertise(&mut xs, 0).unwrap();
    println!("XEN-CHECK stream_host ok");
}

#[test]
#[ignore = "needs a Xen domU (run.sh -n) with dom0 running stream_host"]
fn stream_guest() {
    let n = total();
    let mut xs = XenStore::open().unwrap();
    let own = residency::own_domid(&mut xs).unwrap();
    let mac = residency::mac_of("eth0").expect("eth0's MAC address");
    let me = Addresses::from_addrs([Addr::Mac(mac), Addr::Ipv4(DOMU_IP)]).unwrap();
    residency::advertise(&mut xs, own, &me).unwrap();
    let xen = Arc::new(XenDiscovery::with_addresses(me).unwrap());
    let dom0 = SocketAddr::from((DOM0_IP, PORT));
    wait_until("domU", "dom0 listed", || {
        xen.domain_of(IpAddr::V4(DOM0_IP)) == Some(0)
    });
    let key = format!("/local/domain/0/{LISTEN_DIR}/{}", addr_key(dom0));
    wait_until("domU", "dom0's listen key", || xs.read(&key).is_ok());
    println!("domU (dom{own}): dom0 is co-resident and listens at {key}");
    let b = Builder::new()
        .discovery_arc(xen.clone())
        .handshake_timeout(Duration::from_secs(60));
    let s = b.connect(dom0).unwrap();
    println!("domU: connected to {dom0}, path {:?}", s.path());
    assert_eq!(s.path(), Path::Ring, "domU: the stream did not upgrade");
    println!("XEN-CHECK stream: upgraded over the Xen channel");
    let t = Instant::now();
    let (got, mark) = exchange("domU", &s, (SEED_UP, SEED_DOWN), (n + TAIL, n), |_| {});
    let secs = t.elapsed().as_secs_f64();
    let st = s.stats();
    let mark = mark.expect("domU: the stats at the mark");
    report("domU (first bytes received)", &mark, secs);
    report("domU", &st, secs);
    check_paths("domU", &st, n + TAIL, got);
    assert!(
        mark.tcp_rx_bytes > 0,
        "domU: nothing over TCP before the readmission: {mark:?}"
    );
    assert!(
        st.ring_rx_bytes - mark.ring_rx_bytes >= TAIL - MAX_IO,
        "domU: dom0's tail did not come over the new channel: {mark:?} then {st:?}"
    );
    assert_eq!(
        xen.domain_of(IpAddr::V4(DOM0_IP)),
        Some(0),
        "dom0 not listed again"
    );
    residency::unadvertise(&mut xs, own).unwrap();
    println!("XEN-CHECK stream_guest ok");
}
