//! dom0 and a domU on the real hypervisor, through the library's XenStore
//! rendezvous ([`coresident_xen::rendezvous`]). Each job is a pair of
//! tests run in one boot: `*_host` in dom0 (`DOMU_ID` names the guest),
//! `*_guest` in the domU. `.ci/xen` runs them in this order, one boot:
//!
//! - `domu_channel`: the domU offers a 1 MiB-per-direction channel (514
//!   grant references over five XenStore keys), dom0 accepts; 100,000
//!   messages each way (`XEN_DOMU_MESSAGES`) of random sizes with
//!   checksums, at once, with blocking receives (event-channel wake-ups)
//!   on both sides; doorbells per message printed; the rendezvous keys
//!   removed; dom0's departure seen by the guest through unmap-notify.
//! - `domu_rendezvous` (issue 17, findings 9 and 10): 27 rendezvous (the
//!   domU offers, dom0 accepts), a refused one and one nobody answers,
//!   then each side counts its XenStore nodes: back to what it had before
//!   (the parents `channels/<peer>/<name>` used to stay, one node per
//!   rendezvous). Then dom0 offers and the domU maps, binds and dies
//!   before answering (its unmap-notify clears its live byte and fires
//!   dom0's port): dom0's `complete` reports `PeerGone` at once, not at its
//!   timeout.
//! - `domu_hostile`: the domU publishes garbage offers (dom0 refuses each
//!   with a typed error and the guest reads the refusal), then scribbles
//!   over its side of the rings of channels dom0 offered (indices jumping,
//!   lengths past the end, a length changing between reads): dom0 reports
//!   `Corrupted` and keeps going; a last, clean channel still works.
//! - `domu_destroy`: dom0 streams to the domU, which consumes 1,000
//!   messages, fills its own ring towards dom0 and stops; dom0 sends a few
//!   more, runs `xl destroy`, and its channel reports the peer gone by
//!   itself to a sender that never blocks (issue 17, finding 11: the
//!   channel probes the doorbell, which asks Xen through privcmd whether
//!   its event channel is still connected); dom0 also learns the
//!   death from XenStore, and gets back exactly the messages the domU had
//!   not consumed, in order. Dom0 first checks that privcmd's
//!   `EVTCHNOP_status` answers; the domU, that it answers exactly when the
//!   domU's `xen-privcmd` is unrestricted (`EPERM` otherwise).
//!
//! The tests print `XEN-CHECK NAME ok` lines that `.ci/xen` greps, and
//! `XEN-OUTCOME ...` lines for each hostile case.
#![cfg(target_os = "linux")]

use coresident_xen::xenstore::XsClient;
use std::time::{Duration, Instant};

use coresident::{
    Channel, ChannelConfig, ChannelError, ChannelLayout, ChannelState, Doorbell, Link, Role,
    SharedRegion, StdClock,
};
use coresident_xen::linux::privcmd::PortStatus;
use coresident_xen::protocol::crxg::CrxgError;
use coresident_xen::protocol::keys::{Key, KeyError};
use coresident_xen::protocol::xs_wire::XsErrno;
use coresident_xen::rendezvous::{self, ChannelKeys, Rendezvous};
use coresident_xen::{
    RendezvousError, XenDoorbell, XenRegion, XenStore, XenTransport, XenTransportError, XsError,
};

/// The rendezvous's failure over the Linux devices.
type XsRendezvousError = RendezvousError;

/// `offerer`'s offer directory of channel `name` to `acceptor`.
fn offer_path(offerer: u16, acceptor: u16, name: &str) -> String {
    let k = ChannelKeys::new(offerer, acceptor, name).unwrap();
    k.offer_dir().unwrap().as_str().to_owned()
}

/// `acceptor`'s answer directory of channel `name` from `offerer`.
fn answer_path(acceptor: u16, offerer: u16, name: &str) -> String {
    let k = ChannelKeys::new(acceptor, offerer, name).unwrap();
    k.answer_dir().unwrap().as_str().to_owned()
}

type XenChannel = Channel<XenRegion, XenDoorbell, StdClock>;

/// How long any one step may wait for the other domain (a watchdog: the
/// domU boots while dom0 already waits).
const PATIENCE: Duration = Duration::from_secs(180);
const STEP: Duration = Duration::from_secs(60);

fn domu_id() -> u16 {
    std::env::var("DOMU_ID")
        .expect("DOMU_ID")
        .parse()
        .expect("DOMU_ID")
}

fn config() -> ChannelConfig {
    // Peer death comes from the transport or XenStore, not a heartbeat.
    ChannelConfig {
        liveness: None,
        ..ChannelConfig::default()
    }
}

fn channel(link: Link<XenRegion, XenDoorbell>) -> XenChannel {
    Channel::new(link, config(), StdClock::default()).unwrap()
}

// ------------------------------------------------------------------ messages

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Message `seq` of stream `stream`: the sequence number, a body of a
/// random size (mostly under 600 bytes, one in 64 up to 32 KiB) and an
/// FNV-1a checksum of both. Both ends regenerate it from `seq`.
fn message(stream: u64, seq: u64, out: &mut Vec<u8>) {
    let mut x = (seq ^ (stream << 40)).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let r = xorshift(&mut x);
    let body = if r % 64 == 0 {
        (r >> 8) as usize % 32_768
    } else {
        (r >> 8) as usize % 600
    };
    out.clear();
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend((0..body).map(|_| xorshift(&mut x) as u8));
    let sum = fnv(out);
    out.extend_from_slice(&sum.to_le_bytes());
}

/// Checks a received message against `seq`: length, checksum, contents.
fn verify(stream: u64, seq: u64, got: &[u8], scratch: &mut Vec<u8>) -> Result<(), String> {
    if got.len() < 16 {
        return Err(format!("message {seq}: only {} bytes", got.len()));
    }
    let (head, sum) = got.split_at(got.len() - 8);
    if fnv(head).to_le_bytes() != sum {
        return Err(format!("message {seq}: bad checksum"));
    }
    let got_seq = u64::from_le_bytes(head[..8].try_into().unwrap());
    if got_seq != seq {
        return Err(format!("expected message {seq}, got {got_seq}"));
    }
    message(stream, seq, scratch);
    if got != scratch.as_slice() {
        return Err(format!("message {seq}: contents differ"));
    }
    Ok(())
}

/// Both directions at once, single-threaded: send what fits, receive what
/// is there, sleep on the doorbell when neither moved (a blocking receive
/// while messages are due, a blocking send once all are received).
fn exchange(ch: &mut XenChannel, tx_stream: u64, rx_stream: u64, n: u64) -> Result<(), String> {
    let (mut sent, mut received) = (0u64, 0u64);
    let (mut out, mut scratch) = (Vec::new(), Vec::new());
    let mut buf = vec![0u8; ch.max_incoming()];
    let mut next: Option<u64> = None;
    while sent < n || received < n {
        let mut progress = false;
        while sent < n {
            if next != Some(sent) {
                message(tx_stream, sent, &mut out);
                next = Some(sent);
            }
            match ch.send(&out) {
                Ok(()) => {
                    sent += 1;
                    progress = true;
                }
                Err(ChannelError::Full) => break,
                Err(e) => return Err(format!("send {sent}: {e}")),
            }
        }
        ch.flush().map_err(|e| format!("flush: {e}"))?;
        // Not past the last message: a peer that has everything it wants
        // closes, and a recv then would report it gone.
        while received < n {
            match ch.recv(&mut buf) {
                Ok(len) => {
                    verify(rx_stream, received, &buf[..len], &mut scratch)?;
                    received += 1;
                    progress = true;
                }
                Err(ChannelError::Empty) => break,
                Err(e) => return Err(format!("recv {received}: {e}")),
            }
        }
        if progress {
            continue;
        }
        if received < n {
            let len = ch
                .recv_blocking(&mut buf, Some(STEP))
                .map_err(|e| format!("recv_blocking {received}: {e}"))?;
            verify(rx_stream, received, &buf[..len], &mut scratch)?;
            received += 1;
        } else {
            ch.send_blocking(&out, Some(STEP))
                .map_err(|e| format!("send_blocking {sent}: {e}"))?;
            sent += 1;
        }
    }
    ch.flush().map_err(|e| format!("flush: {e}"))
}

fn report(who: &str, ch: &XenChannel, elapsed: Duration) {
    let s = ch.stats();
    println!(
        "{who}: sent {} msgs ({} bytes), received {} msgs ({} bytes) in {:.1} s; \
         doorbells rung {} ({:.4} per message sent), suppressed {}, wake-ups {} \
         (spurious {}) [TCG emulation: not a performance figure]",
        s.sent_messages,
        s.sent_bytes,
        s.received_messages,
        s.received_bytes,
        elapsed.as_secs_f64(),
        s.doorbells_rung,
        s.doorbells_rung as f64 / (s.sent_messages.max(1)) as f64,
        s.doorbells_suppressed,
        s.wakeups,
        s.spurious_wakeups,
    );
}

fn messages() -> u64 {
    std::env::var("XEN_DOMU_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

fn guest_xs() -> (XenStore, u16) {
    let mut xs = XenStore::open().unwrap();
    let own = rendezvous::own_domid(&mut xs).unwrap();
    (xs, own)
}

// ------------------------------------------------------------------ channel

const CHANNEL: &str = "channel";

#[test]
#[ignore = "needs a Xen domU with dom0 running domu_channel_host"]
fn domu_channel_guest() {
    let (mut xs, own) = guest_xs();
    let mut rdv = Rendezvous::new(own, 0, CHANNEL).unwrap();
    // 1 MiB per direction: libxenvchan's limit, 514 grant references.
    let layout = ChannelLayout::symmetric(1 << 20);
    let pending = rdv.offer(&mut xs, layout).unwrap();
    println!("domU (dom{own}): offered under {}", pending.offer_path());
    let link = pending.complete(&mut xs, Some(PATIENCE)).unwrap();
    // complete() withdrew the offer.
    let offer = offer_path(own, 0, CHANNEL);
    assert_eq!(xs.read(&format!("{offer}/state")), Err(XsError::NotFound));
    // dom0's answer is readable but not writable by us.
    let answer = answer_path(0, own, CHANNEL);
    assert_eq!(
        xs.write(&format!("{answer}/state"), b"refused"),
        Err(XsError::Daemon(XsErrno::EACCES)),
        "the guest could overwrite dom0's answer"
    );
    let mut ch = channel(link);
    println!("domU: dom0 accepted; exchanging");
    let n = messages();
    let t0 = Instant::now();
    exchange(&mut ch, 2, 1, n).unwrap();
    report("domU", &ch, t0.elapsed());
    // dom0 closes and unmaps: the ring says closed, unmap-notify clears
    // dom0's live byte in our pages and signals the port.
    let mut buf = vec![0u8; ch.max_incoming()];
    match ch.recv_blocking(&mut buf, Some(STEP)) {
        Err(ChannelError::PeerGone) => {}
        other => panic!("expected PeerGone after dom0 closed, got {other:?}"),
    }
    let deadline = Instant::now() + STEP;
    while ch.doorbell().peer_alive() {
        assert!(Instant::now() < deadline, "dom0's unmap-notify never came");
        let _ = ch.doorbell().wait(Some(STEP)).unwrap();
    }
    println!("domU: dom0's departure seen (ring closed, live byte cleared by unmap-notify)");
    println!("XEN-CHECK domu_channel_guest ok");
}

#[test]
#[ignore = "needs a Xen dom0 with a domU running domu_channel_guest"]
fn domu_channel_host() {
    let domu = domu_id();
    let mut xs = XenStore::open_socket().unwrap();
    let mut rdv = Rendezvous::new(0, domu, CHANNEL).unwrap();
    let link = rdv.accept(&mut xs, Some(PATIENCE)).unwrap();
    assert_eq!(link.role, Role::Acceptor);
    println!(
        "dom0: accepted dom{domu}'s offer: {:?}, {} bytes of region",
        link.layout,
        link.region.len()
    );
    // accept() returned once the guest took the answer (its complete()
    // removed its offer): our answer is gone too (issue 17, finding 9).
    let answer = answer_path(0, domu, CHANNEL);
    assert_eq!(xs.read(&format!("{answer}/state")), Err(XsError::NotFound));
    let mut ch = channel(link);
    let n = messages();
    let t0 = Instant::now();
    exchange(&mut ch, 1, 2, n).unwrap();
    report("dom0", &ch, t0.elapsed());
    // Teardown: our answer goes; the guest's offer went at its complete().
    rdv.withdraw(&mut xs).unwrap();
    assert_eq!(xs.read(&format!("{answer}/state")), Err(XsError::NotFound));
    let offer = offer_path(domu, 0, CHANNEL);
    assert_eq!(xs.read(&format!("{offer}/state")), Err(XsError::NotFound));
    println!("dom0: {n} messages each way verified; rendezvous keys removed; closing");
    drop(ch.close());
    println!("XEN-CHECK domu_channel_host ok");
}

// ------------------------------------------------------------ rendezvous

/// Rendezvous of the node count (the issue saw 27 nodes left after 27).
const RENDEZVOUS: u32 = 27;
/// Where the guest reports its counts and progress (excluded from them).
const RDV_REPORT: &str = "data/coresident-test";

/// Every node at or below `path` outside `skip` (absolute paths), counted
/// by walking `XS_DIRECTORY`.
fn count_nodes(xs: &mut XenStore, path: &str, skip: &str) -> usize {
    if path == skip {
        return 0;
    }
    let kids = match xs.children(path) {
        Ok(k) => k,
        Err(XsError::NotFound) => return 0,
        Err(e) => panic!("directory {path}: {e}"),
    };
    1 + kids
        .iter()
        .map(|k| count_nodes(xs, &format!("{path}/{k}"), skip))
        .sum::<usize>()
}

/// Waits until the guest's report key `key` exists; returns its value.
fn wait_key(xs: &mut XenStore, path: &str) -> String {
    let deadline = Instant::now() + PATIENCE;
    xs.watch(path, "wait-key").unwrap();
    let v = loop {
        match xs.read_string(path) {
            Ok(v) => break v,
            Err(XsError::NotFound | XsError::Daemon(XsErrno::EACCES)) => {}
            Err(e) => panic!("reading {path}: {e}"),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "{path} never appeared");
        let _ = xs.wait_watch(Some(left)).unwrap();
    };
    xs.unwatch(path, "wait-key").unwrap();
    v
}

#[test]
#[ignore = "needs a Xen domU with dom0 running domu_rendezvous_host"]
fn domu_rendezvous_guest() {
    let (mut xs, own) = guest_xs();
    let home = format!("/local/domain/{own}");
    let skip = format!("{home}/{RDV_REPORT}");
    let before = count_nodes(&mut xs, &home, &skip);
    let layout = ChannelLayout::symmetric(4096);
    for i in 0..RENDEZVOUS {
        let link = Rendezvous::new(own, 0, &format!("rdv-{i}"))
            .unwrap()
            .offer(&mut xs, layout)
            .unwrap()
            .complete(&mut xs, Some(PATIENCE))
            .unwrap();
        drop(link);
    }
    // A refusal: our offer spoiled (a ring size that is not a power of
    // two), dom0 refuses it, we read the refusal.
    let pending = Rendezvous::new(own, 0, "rdv-refused")
        .unwrap()
        .offer(&mut xs, layout)
        .unwrap();
    xs.write(&format!("{}/to-acceptor", pending.offer_path()), b"1000")
        .unwrap();
    assert_eq!(
        pending.complete(&mut xs, Some(PATIENCE)).map(drop),
        Err(XsRendezvousError::Refused)
    );
    // Nobody answers this one.
    let pending = Rendezvous::new(own, 0, "rdv-alone")
        .unwrap()
        .offer(&mut xs, layout)
        .unwrap();
    assert_eq!(
        pending
            .complete(&mut xs, Some(Duration::from_secs(1)))
            .map(drop),
        Err(XsRendezvousError::Timeout)
    );
    let after = count_nodes(&mut xs, &home, &skip);
    println!(
        "domU: {RENDEZVOUS} accepted, 1 refused, 1 unanswered rendezvous: {before} nodes in my          home before, {after} after"
    );
    assert_eq!(
        after, before,
        "XenStore nodes left behind in the domU's home"
    );
    xs.write(
        &format!("{RDV_REPORT}/rdv-count"),
        format!("{before} {after}").as_bytes(),
    )
    .unwrap();

    // Finding 10: we map dom0's offer, bind, set our live byte and ring,
    // then die before answering (our pages go: unmap-notify).
    let rdv = Rendezvous::new(own, 0, "rdv-dies").unwrap();
    xs.watch(&offer_path(0, own, "rdv-dies"), "dies").unwrap();
    let deadline = Instant::now() + PATIENCE;
    let mut refs = vec![0; coresident_xen::MAX_PAGES];
    loop {
        if rdv.read_offer(&mut xs, &mut refs).unwrap().is_some() {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no offer rdv-dies from dom0");
        let _ = xs.wait_watch(Some(left)).unwrap();
    }
    let offer = rdv.read_offer(&mut xs, &mut refs).unwrap().unwrap();
    let link = XenTransport::new(own, 0).accept_offer(&offer).unwrap();
    println!(
        "domU: mapped dom0's rdv-dies offer, bound port {}; dying",
        link.doorbell.port()
    );
    drop(link);
    println!("XEN-CHECK domu_rendezvous_guest ok");
}

#[test]
#[ignore = "needs a Xen dom0 with a domU running domu_rendezvous_guest"]
fn domu_rendezvous_host() {
    let domu = domu_id();
    let mut xs = XenStore::open_socket().unwrap();
    let (home0, homeu) = (
        "/local/domain/0".to_owned(),
        format!("/local/domain/{domu}"),
    );
    let skip = format!("{homeu}/{RDV_REPORT}");
    // The guest's home is counted by the guest; dom0 counts its own.
    let before = count_nodes(&mut xs, &home0, &skip);
    for i in 0..RENDEZVOUS {
        let link = Rendezvous::new(0, domu, &format!("rdv-{i}"))
            .unwrap()
            .accept(&mut xs, Some(PATIENCE))
            .unwrap();
        drop(link);
    }
    let e = Rendezvous::new(0, domu, "rdv-refused")
        .unwrap()
        .accept(&mut xs, Some(PATIENCE))
        .map(drop)
        .unwrap_err();
    assert_eq!(
        e,
        XsRendezvousError::Key(KeyError::BadOffer(CrxgError::BadLayout))
    );
    let guest = wait_key(&mut xs, &format!("{skip}/rdv-count"));
    let after = count_nodes(&mut xs, &home0, &skip);
    println!(
        "dom0: {RENDEZVOUS} accepted and 1 refused: {before} nodes in dom0's home before, {after}          after; the domU's home (before after): {guest}"
    );
    assert_eq!(after, before, "XenStore nodes left behind in dom0's home");
    let (b, a) = guest.split_once(' ').unwrap();
    assert_eq!(a, b, "XenStore nodes left behind in the domU's home");
    println!("XEN-CHECK domu_rendezvous node count back to baseline ({RENDEZVOUS} rendezvous)");

    // Finding 10: the guest maps, binds and dies before answering.
    let pending = Rendezvous::new(0, domu, "rdv-dies")
        .unwrap()
        .offer(&mut xs, ChannelLayout::symmetric(4096))
        .unwrap();
    let t0 = Instant::now();
    let r = pending.complete(&mut xs, Some(PATIENCE));
    let took = t0.elapsed();
    // Either the acceptor's death was seen before its live byte (its
    // unmap-notify cleared the byte and fired our port): PeerGone; or its
    // live byte was seen set first, an acceptance, and the channel says at
    // once that the peer is gone. Never the timeout.
    let outcome = match r {
        Err(XsRendezvousError::Transport(XenTransportError::PeerGone)) => "PeerGone".to_owned(),
        Ok(link) => {
            let mut ch = channel(link);
            let deadline = Instant::now() + STEP;
            let gone = loop {
                match ch.send(b"anyone?") {
                    Err(ChannelError::PeerGone) => break true,
                    _ if Instant::now() > deadline => break false,
                    _ => std::thread::sleep(Duration::from_millis(5)),
                }
            };
            assert!(gone, "an acceptor that died looks alive");
            "an acceptance, then PeerGone at the first send".to_owned()
        }
        Err(e) => panic!("complete after the acceptor died: {e:?} after {took:?}"),
    };
    println!(
        "dom0: the acceptor died before answering: {outcome}, after {took:?} (its timeout: \
         {PATIENCE:?}; TCG timing, not a claim)"
    );
    assert!(took < STEP, "the death was noticed only after {took:?}");
    xs.rm(&skip).unwrap();
    println!("XEN-CHECK domu_rendezvous_host ok");
}

// ------------------------------------------------------------------ hostile

/// The garbage offers the guest publishes: (name, key, value). Each starts
/// from a well-formed offer of one 4 KiB ring each way (4 refs).
const BAD_OFFERS: &[(&str, &str, &str)] = &[
    ("bad-missing-port", "port", ""),
    ("bad-port-text", "port", "abc"),
    ("bad-port-range", "port", "999999"),
    ("bad-version", "version", "2"),
    ("bad-size", "to-acceptor", "1000"),
    ("bad-count", "nrefs", "5"),
    ("bad-reserved-ref", "refs0", "7 9 10 11"),
    ("bad-huge", "refs0", "HUGE"),
    ("bad-state", "state", "offered-ish"),
    // Well-formed, but these references were never granted to dom0.
    ("bad-grants", "", ""),
];

fn publish_bad(xs: &mut XenStore, own: u16, name: &str, key: &str, value: &str) {
    let dir = offer_path(own, 0, name);
    let _ = xs.rm(&dir);
    let mut keys = vec![
        ("version", "1".to_owned()),
        ("port", "5".to_owned()),
        ("to-acceptor", "4096".to_owned()),
        ("to-offerer", "4096".to_owned()),
        ("nrefs", "4".to_owned()),
        ("refs0", "3000 3001 3002 3003".to_owned()),
    ];
    if !key.is_empty() {
        keys.retain(|(k, _)| *k != key);
        if !value.is_empty() {
            let v = if value == "HUGE" {
                "9".repeat(2000)
            } else {
                value.to_owned()
            };
            keys.push((key, v));
        }
    }
    let state = if key == "state" { value } else { "offered" };
    for (k, v) in keys {
        if k != "state" {
            xs.write(&format!("{dir}/{k}"), v.as_bytes()).unwrap();
        }
    }
    xs.write(&format!("{dir}/state"), state.as_bytes()).unwrap();
}

/// Ring offsets (see `coresident_ring`'s layout): producer index at 128,
/// consumer index at 384, data at 640.
const WRITE: usize = 128;
const READ: usize = 384;
const DATA: usize = 640;

fn poke(region: &XenRegion, off: usize, v: u32) {
    assert!(off + 4 <= region.len());
    // SAFETY: `off + 4 <= len` (checked), inside the mapped region, which
    // `region` keeps alive; 4-aligned (all ring fields are); a volatile
    // store to memory the peer also writes: no reference is made.
    unsafe { region.as_ptr().add(off).cast::<u32>().write_volatile(v) }
}

fn peek(region: &XenRegion, off: usize) -> u32 {
    assert!(off + 4 <= region.len());
    // SAFETY: as in `poke`, for a volatile load.
    unsafe { region.as_ptr().add(off).cast::<u32>().read_volatile() }
}

/// The ring scribbles, one channel each.
const RING_CASES: &[&str] = &[
    "ring-prod-jump",
    "ring-len-past-end",
    "ring-cons-jump",
    "ring-flip",
];
/// Frames the flipping guest publishes at most.
const FLIPS: u32 = 1500;

#[test]
#[ignore = "needs a Xen domU with dom0 running domu_hostile_host"]
fn domu_hostile_guest() {
    let (mut xs, own) = guest_xs();
    // 1. Garbage offers: all at once; dom0 refuses each, we read the refusal.
    for (name, key, value) in BAD_OFFERS {
        publish_bad(&mut xs, own, name, key, value);
    }
    for (name, _, _) in BAD_OFFERS {
        let answer = answer_path(0, own, name);
        xs.watch(&answer, name).unwrap();
        let deadline = Instant::now() + PATIENCE;
        loop {
            match xs.read(&format!("{answer}/state")) {
                Ok(v) => {
                    assert_eq!(v, b"refused", "{name}");
                    break;
                }
                Err(XsError::NotFound | XsError::Daemon(XsErrno::EACCES)) => {}
                Err(e) => panic!("{name}: {e}"),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "{name}: no refusal from dom0");
            let _ = xs.wait_watch(Some(left)).unwrap();
        }
        let why = xs.read_string(&format!("{answer}/error")).unwrap();
        println!("domU: {name} refused by dom0: {why}");
        xs.unwatch(&answer, name).unwrap();
        let _ = xs.rm(&offer_path(own, 0, name));
    }
    // 2. Ring scribbles on channels dom0 offers.
    for name in RING_CASES {
        let mut rdv = Rendezvous::new(own, 0, name).unwrap();
        let link = rdv.accept(&mut xs, Some(PATIENCE)).unwrap();
        rdv.withdraw(&mut xs).unwrap();
        let ((tx, tx_size), (rx, _)) = link.layout.rings(Role::Acceptor);
        let r = &link.region;
        match *name {
            // Our producer index leaps past a whole ring of data.
            "ring-prod-jump" => poke(r, tx + WRITE, tx_size + 64),
            // A frame whose length runs past the end of the data area,
            // stamped as published at position 0.
            "ring-len-past-end" => {
                poke(r, tx + DATA, tx_size);
                poke(r, tx + DATA + 4, 0);
                poke(r, tx + WRITE, 64);
            }
            // Our consumer index of dom0's ring leaps ahead of its writes.
            "ring-cons-jump" => poke(r, rx + READ, 0x7000_0000),
            // Frames of 16 bytes whose length flips to a huge value and back
            // while dom0 reads them.
            _ => {
                for k in 0..FLIPS {
                    let pos = k * 24;
                    poke(r, tx + DATA + pos as usize + 8, k);
                    poke(r, tx + DATA + pos as usize, 16);
                    poke(r, tx + DATA + pos as usize + 4, (pos >> 3) & 0x00FF_FFFF);
                    // As a faithful producer does: mark the next position
                    // "not yet published" (the stamp with its top bit
                    // flipped) before publishing this frame.
                    let next = pos + 24;
                    poke(
                        r,
                        tx + DATA + next as usize + 4,
                        ((next >> 3) & 0x00FF_FFFF) ^ 0x0080_0000,
                    );
                    poke(r, tx + WRITE, next);
                    let _ = link.doorbell.ring();
                    let deadline = Instant::now() + STEP;
                    let mut flip = 0u32;
                    // Flip until dom0 released the frame (or gave up on it).
                    while peek(r, tx + READ) != pos + 24 && Instant::now() < deadline {
                        flip ^= 1;
                        poke(
                            r,
                            tx + DATA + pos as usize,
                            if flip == 1 { 0xFFFF_FFF0 } else { 16 },
                        );
                        if !link.doorbell.peer_alive() {
                            break;
                        }
                    }
                    poke(r, tx + DATA + pos as usize, 16);
                    if peek(r, tx + READ) != pos + 24 {
                        println!("domU: ring-flip: dom0 stopped at frame {k}");
                        break;
                    }
                }
            }
        }
        let _ = link.doorbell.ring();
        // Wait for dom0 to give up on this channel (it drops the pages).
        let deadline = Instant::now() + PATIENCE;
        while link.doorbell.peer_alive() && Instant::now() < deadline {
            let _ = link.doorbell.wait(Some(STEP));
        }
        assert!(!link.doorbell.peer_alive(), "{name}: dom0 never let go");
        println!("domU: {name} done");
    }
    // 3. A clean channel: dom0 is still fine.
    let mut rdv = Rendezvous::new(own, 0, "after").unwrap();
    let mut ch = channel(rdv.accept(&mut xs, Some(PATIENCE)).unwrap());
    rdv.withdraw(&mut xs).unwrap();
    exchange(&mut ch, 4, 3, 1000).unwrap();
    drop(ch.close());
    println!("XEN-CHECK domu_hostile_guest ok");
}

#[test]
#[ignore = "needs a Xen dom0 with a domU running domu_hostile_guest"]
fn domu_hostile_host() {
    let domu = domu_id();
    let mut xs = XenStore::open_socket().unwrap();
    // 1. Every garbage offer is refused with a typed error.
    for (name, key, _) in BAD_OFFERS {
        let mut rdv = Rendezvous::new(0, domu, name).unwrap();
        let e = rdv.accept(&mut xs, Some(PATIENCE)).map(drop).unwrap_err();
        let ok = match *name {
            "bad-missing-port" => e == XsRendezvousError::Key(KeyError::Missing(Key::Port)),
            "bad-port-text" => matches!(e, XsRendezvousError::Key(KeyError::Value(Key::Port, _))),
            "bad-port-range" => e == XsRendezvousError::Key(KeyError::BadPort(999_999)),
            "bad-version" => e == XsRendezvousError::Key(KeyError::BadVersion(2)),
            "bad-size" => e == XsRendezvousError::Key(KeyError::BadOffer(CrxgError::BadLayout)),
            "bad-count" => e == XsRendezvousError::Key(KeyError::BadRefCount),
            "bad-reserved-ref" => e == XsRendezvousError::Key(KeyError::BadRef(7)),
            "bad-huge" => matches!(e, XsRendezvousError::Key(KeyError::Value(Key::Refs(0), _))),
            "bad-state" => matches!(e, XsRendezvousError::Key(KeyError::BadState(_))),
            _ => matches!(e, XsRendezvousError::Transport(_)),
        };
        println!("XEN-OUTCOME xenstore {name} ({key}): {e:?}: {e}");
        assert!(ok, "{name}: unexpected outcome {e:?}");
        // The refusal stays until the guest has read it (withdrawn below).
    }
    // 2. Ring scribbles: dom0's channel reports Corrupted, never a panic.
    for name in RING_CASES {
        let mut rdv = Rendezvous::new(0, domu, name).unwrap();
        let pending = rdv
            .offer(&mut xs, ChannelLayout::symmetric(64 * 1024))
            .unwrap();
        let mut ch = channel(pending.complete(&mut xs, Some(PATIENCE)).unwrap());
        let mut buf = vec![0u8; ch.max_incoming()];
        let outcome = match *name {
            "ring-cons-jump" => {
                let mut i = 0u64;
                let msg = [0x5Au8; 200];
                loop {
                    match ch.send(&msg) {
                        Ok(()) => i += 1,
                        Err(ChannelError::Full) => {
                            // Sleep until the (scribbling) consumer frees space.
                            match ch.send_blocking(&msg, Some(STEP)) {
                                Ok(()) => i += 1,
                                Err(e) => break format!("after {i} sends: {e:?}"),
                            }
                        }
                        Err(e) => break format!("after {i} sends: {e:?}"),
                    }
                }
            }
            "ring-flip" => {
                let mut got = 0u32;
                loop {
                    match ch.recv_blocking(&mut buf, Some(STEP)) {
                        Ok(len) => {
                            assert_eq!(len, 16, "a torn length reached the caller");
                            assert_eq!(buf[..4], got.to_le_bytes(), "frame {got}");
                            got += 1;
                            if got == FLIPS {
                                break format!("{got} frames of 16 bytes, every length read once");
                            }
                        }
                        Err(e) => break format!("after {got} good frames: {e:?}"),
                    }
                }
            }
            _ => match ch.recv_blocking(&mut buf, Some(STEP)) {
                Ok(len) => panic!("{name}: received {len} bytes from a scribbled ring"),
                Err(e) => format!("{e:?}"),
            },
        };
        println!("XEN-OUTCOME ring {name}: {outcome}");
        let corrupted = outcome.contains("Corrupted");
        assert!(
            corrupted || (*name == "ring-flip" && outcome.contains("every length read once")),
            "{name}: expected Corrupted, got {outcome}"
        );
        println!(
            "dom0: {name}: channel state {:?}, stats corruptions {}",
            ch.state(),
            ch.stats().corruptions
        );
        drop(ch.close());
    }
    // 3. Still running: a clean channel works.
    let mut rdv = Rendezvous::new(0, domu, "after").unwrap();
    let pending = rdv
        .offer(&mut xs, ChannelLayout::symmetric(64 * 1024))
        .unwrap();
    let mut ch = channel(pending.complete(&mut xs, Some(PATIENCE)).unwrap());
    exchange(&mut ch, 3, 4, 1000).unwrap();
    println!("dom0: after the hostile cases, 1000 messages each way verified");
    // The guest has read every refusal: remove them.
    for (name, _, _) in BAD_OFFERS {
        Rendezvous::new(0, domu, name)
            .unwrap()
            .withdraw(&mut xs)
            .unwrap();
    }
    let mut buf = vec![0u8; ch.max_incoming()];
    match ch.recv_blocking(&mut buf, Some(STEP)) {
        Err(ChannelError::PeerGone) => {}
        other => panic!("expected PeerGone after the domU closed, got {other:?}"),
    }
    println!("XEN-CHECK domu_hostile_host ok");
}

// ------------------------------------------------------------------ destroy

const DESTROY: &str = "destroy";
/// Messages the domU consumes before it stops.
const CONSUMED: u64 = 1000;
/// Where the domU reports (relative to its home) how far it got.
const PROGRESS: &str = "data/coresident/test/destroy";
/// init-dom0.sh expects no DOMU-RESULT once this file exists.
const DESTROYED_MARK: &str = "/run/xenqemu-domu-destroyed";

#[test]
#[ignore = "needs a Xen domU with dom0 running domu_destroy_host"]
fn domu_destroy_guest() {
    let (mut xs, own) = guest_xs();
    let mut rdv = Rendezvous::new(own, 0, DESTROY).unwrap();
    let mut ch = channel(rdv.accept(&mut xs, Some(PATIENCE)).unwrap());
    rdv.withdraw(&mut xs).unwrap();
    // Can a domU ask Xen about its own port (privcmd, EVTCHNOP_status,
    // DOMID_SELF)? Only if its xen-privcmd module is unrestricted: Linux
    // restricts privcmd in unprivileged domains since 2023 ("No target
    // domain found, blocking all hypercalls"; Debian 12's 6.1 has the fix,
    // the kit loads it without `unrestricted=1`). The doorbell uses Xen's
    // word exactly when Xen answers, and goes without otherwise.
    let port = ch.doorbell().port();
    let direct = coresident_xen::linux::privcmd::Privcmd::open()
        .unwrap()
        .evtchn_status(port);
    println!("domU: EVTCHNOP_status of port {port} through privcmd: {direct:?}");
    match direct {
        Ok(status) => {
            assert!(matches!(status, PortStatus::Interdomain { remote: 0, .. }));
            assert!(ch.doorbell().can_ask_xen());
            assert_eq!(ch.doorbell().port_connected(), Some(true));
            println!("domU: privcmd unrestricted: the doorbell asks Xen");
        }
        Err(e) => {
            assert_eq!(e, coresident_xen::linux::sys::Errno::PERM);
            assert!(!ch.doorbell().can_ask_xen());
            assert_eq!(ch.doorbell().port_connected(), None);
            println!("domU: privcmd restricted (EPERM): the doorbell goes without Xen's word");
        }
    }
    let (mut buf, mut scratch) = (vec![0u8; ch.max_incoming()], Vec::new());
    for seq in 0..CONSUMED {
        let len = ch.recv_blocking(&mut buf, Some(STEP)).unwrap();
        verify(5, seq, &buf[..len], &mut scratch).unwrap();
    }
    // Fill our ring towards dom0, which does not read it yet.
    let mut out = Vec::new();
    let mut sent = 0u64;
    loop {
        message(6, sent, &mut out);
        match ch.send(&out) {
            Ok(()) => sent += 1,
            Err(ChannelError::Full) => break,
            Err(e) => panic!("send {sent}: {e}"),
        }
    }
    ch.flush().unwrap();
    xs.write(PROGRESS, format!("{CONSUMED} {sent}").as_bytes())
        .unwrap();
    println!("domU: consumed {CONSUMED}, sent {sent}; now neither reading nor writing");
    println!("XEN-CHECK domu_destroy_guest waiting");
    // Keep the channel and wait to be destroyed.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

#[test]
#[ignore = "needs a Xen dom0 with a domU running domu_destroy_guest"]
fn domu_destroy_host() {
    let domu = domu_id();
    let mut xs = XenStore::open_socket().unwrap();
    let mut rdv = Rendezvous::new(0, domu, DESTROY).unwrap();
    let pending = rdv
        .offer(&mut xs, ChannelLayout::symmetric(64 * 1024))
        .unwrap();
    let mut ch = channel(pending.complete(&mut xs, Some(PATIENCE)).unwrap());
    // Dom0 asks Xen about its port (privcmd is unrestricted in dom0).
    let port = ch.doorbell().port();
    let status = coresident_xen::linux::privcmd::Privcmd::open()
        .unwrap()
        .evtchn_status(port)
        .unwrap();
    println!("dom0: EVTCHNOP_status of port {port}: {status:?}");
    assert!(matches!(status, PortStatus::Interdomain { remote, .. } if remote == domu));
    assert!(ch.doorbell().can_ask_xen());
    let mut out = Vec::new();
    for seq in 0..CONSUMED {
        message(5, seq, &mut out);
        ch.send_blocking(&out, Some(STEP)).unwrap();
    }
    ch.flush().unwrap();
    // Wait (watching) for the guest's report.
    let home = String::from_utf8(xs.get_domain_path(domu).unwrap().to_vec()).unwrap();
    let progress = format!("{home}/{PROGRESS}");
    xs.watch(&progress, "progress").unwrap();
    let deadline = Instant::now() + PATIENCE;
    let report = loop {
        match xs.read_string(&progress) {
            Ok(v) => break v,
            Err(XsError::NotFound) => {}
            Err(e) => panic!("reading {progress}: {e}"),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "the domU never reported");
        let _ = xs.wait_watch(Some(left)).unwrap();
    };
    xs.unwatch(&progress, "progress").unwrap();
    let (consumed, guest_sent) = report
        .split_once(' ')
        .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
        .expect("malformed report");
    assert_eq!(consumed, CONSUMED);
    // Messages the guest will never consume, far from a full ring.
    let mut total = CONSUMED;
    for _ in 0..16 {
        message(5, total, &mut out);
        ch.send(&out).unwrap();
        total += 1;
    }
    ch.flush().unwrap();
    println!(
        "dom0: sent {total}, the domU consumed {consumed} and published {guest_sent}; destroying it"
    );
    assert_eq!(ch.doorbell().port_connected(), Some(true));
    // Destroy the guest mid-stream.
    rdv.watch_peer(&mut xs).unwrap();
    std::fs::write(DESTROYED_MARK, b"1").unwrap();
    let st = std::process::Command::new("xl")
        .args(["destroy", &domu.to_string()])
        .status()
        .unwrap();
    assert!(st.success(), "xl destroy failed: {st}");
    // A sender that never blocks (issue 17, finding 11; it used to send
    // into the dead domain's ring until it was full, then get Full for
    // ever): every send returns at once, the channel probes the doorbell
    // (every 1024 sends, on its slow paths at most every millisecond), the
    // doorbell asks Xen (at most every 10 ms) and Xen says the dead
    // domain's end is closed. Messages sent before the verdict join the
    // unconsumed suffix.
    let t0 = Instant::now();
    let (mut after, mut fulls) = (0u64, 0u64);
    loop {
        assert!(
            t0.elapsed() < STEP,
            "no PeerGone: {after} sends and {fulls} Full after xl destroy"
        );
        message(5, total, &mut out);
        match ch.send(&out) {
            Ok(()) => {
                total += 1;
                after += 1;
            }
            Err(ChannelError::Full) => {
                // A non-blocking sender tries again later.
                fulls += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(ChannelError::PeerGone) => break,
            Err(e) => panic!("a send to the destroyed domain: {e:?}"),
        }
    }
    println!(
        "dom0: a sender that never blocks: {after} sends accepted and {fulls} Full after xl destroy          returned, then PeerGone after {:?} (TCG timing, not a claim)",
        t0.elapsed()
    );
    assert!(
        after <= u64::from(coresident::PEER_PROBE_SENDS),
        "{after} sends into a destroyed domain"
    );
    assert_eq!(ch.state(), ChannelState::PeerGone);
    assert_eq!(ch.doorbell().port_connected(), Some(false));
    println!(
        "dom0: the channel reported the peer gone by itself (EVTCHNOP_status: port {} no longer \
         connected)",
        ch.doorbell().port()
    );
    // XenStore says so too.
    assert!(
        rdv.wait_peer_gone(&mut xs, Some(STEP)).unwrap(),
        "no @releaseDomain / home removal seen"
    );
    println!("dom0: dom{domu} gone (@releaseDomain, home removed)");
    // Already gone: the XenStore path changes nothing (no second fallback).
    ch.peer_left();
    assert_eq!(ch.stats().fallbacks, 1);
    // What the domU had not consumed comes back, in order.
    let mut back = Vec::new();
    let mut bad = None;
    let n = ch
        .unconsumed(|v| {
            let mut m = vec![0u8; v.len()];
            v.read_at(0, &mut m);
            let seq = u64::from_le_bytes(m[..8].try_into().unwrap());
            let mut scratch = Vec::new();
            if let Err(e) = verify(5, seq, &m, &mut scratch) {
                bad.get_or_insert(e);
            }
            back.push(seq);
        })
        .unwrap();
    assert_eq!(bad, None);
    let want: Vec<u64> = (CONSUMED..total).collect();
    assert_eq!(n, want.len());
    assert!(
        back == want,
        "unconsumed: {} messages {:?}..{:?}, expected {CONSUMED}..{total}",
        back.len(),
        back.first(),
        back.last()
    );
    println!(
        "dom0: unconsumed = messages {CONSUMED}..{total} ({n}), in order, checksums good: \
         ready for the network path"
    );
    // What the domU published before dying can still be received, then PeerGone.
    let (mut buf, mut scratch) = (vec![0u8; ch.max_incoming()], Vec::new());
    let mut got = 0u64;
    loop {
        match ch.recv(&mut buf) {
            Ok(len) => {
                verify(6, got, &buf[..len], &mut scratch).unwrap();
                got += 1;
            }
            Err(ChannelError::PeerGone) => break,
            Err(e) => panic!("recv {got} after the death: {e}"),
        }
    }
    assert_eq!(got, guest_sent);
    println!(
        "dom0: received the {got} messages the domU published before its death, then PeerGone"
    );
    rdv.unwatch_peer(&mut xs).unwrap();
    drop(ch.close());
    println!("XEN-CHECK domu_destroy_host ok");
}
