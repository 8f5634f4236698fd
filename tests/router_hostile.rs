//! The receiving router against a hostile peer, and the sending router against a
//! failing network path (issue 14): each test is an attack or a fault as it was
//! reproduced, and the outcome the router must give.
#![cfg(not(loom))]

use coresident::lookup::{Seed, Table};
use coresident::{
    Channel, ChannelConfig, ChannelLayout, Delivery, FlowHeader, NetworkPath, Path, Reassembler,
    ReassemblyError, ReassemblyLimits, RouteError, Router, RouterStats, StdClock, ThresholdPolicy,
};
use coresident_mock::{pair, MockDoorbell, MockRegion};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;

// ------------------------------------------------------------ a per-thread allocation count

/// Counts the bytes live on the calling thread, so tests running in parallel do not
/// disturb each other's measurement.
struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the
// counter is a thread-local `Cell` with a const initialiser (no allocation, no lock).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let _ = LIVE.try_with(|c| c.set(c.get() + l.size() as isize));
        // SAFETY: the caller's `l` is forwarded unchanged.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        let _ = LIVE.try_with(|c| c.set(c.get() - l.size() as isize));
        // SAFETY: `p` came from `System.alloc` with this `l` (forwarded above).
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let _ = LIVE.try_with(|c| c.set(c.get() + new as isize - l.size() as isize));
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> isize {
    LIVE.with(Cell::get)
}

const MIB: isize = 1 << 20;

// ------------------------------------------------------------ fixtures

const DATA: u32 = 1 << 16;
type Ch = Channel<MockRegion, MockDoorbell, StdClock>;

fn config() -> ChannelConfig {
    ChannelConfig {
        spin: 0,
        liveness: None,
        ..ChannelConfig::default()
    }
}

fn channels(data: u32) -> (Ch, Ch) {
    let (a, b, _faults) = pair(ChannelLayout::symmetric(data));
    (
        Channel::new(a, config(), StdClock::default()).unwrap(),
        Channel::new(b, config(), StdClock::default()).unwrap(),
    )
}

type Queue = Rc<RefCell<VecDeque<(FlowHeader, Vec<u8>)>>>;

/// A reliable, ordered network: a queue. `fail` makes the next sends fail.
#[derive(Clone, Default)]
struct Net {
    q: Queue,
    fail: Rc<Cell<u32>>,
}

impl NetworkPath<u64> for Net {
    type Error = &'static str;
    fn send(&mut self, _: &u64, h: FlowHeader, p: &[u8]) -> Result<(), &'static str> {
        if self.fail.get() > 0 {
            self.fail.set(self.fail.get() - 1);
            return Err("the network is down");
        }
        self.q.borrow_mut().push_back((h, p.to_vec()));
        Ok(())
    }
}

type R<'t> = Router<'t, u64, MockRegion, MockDoorbell, StdClock, Net, ThresholdPolicy, 16>;

fn table() -> Table<u64, 16> {
    Table::new(Seed::new([3, 1, 4, 1]))
}

const H: u64 = 1;
const X: u64 = 2;
const ME: u64 = 3;

/// A frame as a router writes it: the flow header, then the payload.
fn frame(flow: u32, seq: u64, payload: &[u8]) -> Vec<u8> {
    [&FlowHeader { flow, seq }.encode()[..], payload].concat()
}

// ------------------------------------------------------------ reassembly keyed by peer

/// H sends flow 7's message 0; X, on its own channel, sends `FlowHeader { flow: 7,
/// seq: 1 }` and 2..=40 with its own payloads; H sends 1..=5. The application must get
/// H's six messages as H's flow 7, and nothing of X's in their place.
#[test]
fn a_peer_cannot_forge_another_peers_flow() {
    let t_me = table();
    let mut me: R = Router::new(&t_me, ThresholdPolicy::default(), Net::default(), 1 << 16);
    let (h_tx, h_rx) = channels(DATA);
    let (mut x_tx, x_rx) = channels(DATA);
    me.attach(H, h_rx).unwrap();
    me.attach(X, x_rx).unwrap();

    let t_h = table();
    let mut h: R = Router::new(&t_h, ThresholdPolicy::default(), Net::default(), 64);
    let hh = h.attach(ME, h_tx).unwrap();
    t_h.writer().unwrap().insert(ME, hh).unwrap();

    let mut got: Vec<(u64, u32, Vec<u8>)> = Vec::new();
    let mut deliver = |p: &u64, f: u32, m: &[u8]| got.push((*p, f, m.to_vec()));
    h.send(&ME, 7, b"H0").unwrap();
    me.recv_channels_from(&mut deliver).unwrap();
    for seq in 1..=40 {
        x_tx.send(&frame(7, seq, format!("X{seq}").as_bytes()))
            .unwrap();
    }
    me.recv_channels_from(&mut deliver).unwrap();
    for i in 1..=5 {
        h.send(&ME, 7, format!("H{i}").as_bytes()).unwrap();
    }
    me.recv_channels_from(&mut deliver).unwrap();

    let of = |peer: u64| -> Vec<Vec<u8>> {
        got.iter()
            .filter(|(p, f, _)| *p == peer && *f == 7)
            .map(|(_, _, m)| m.clone())
            .collect()
    };
    let expected: Vec<Vec<u8>> = (0..=5).map(|i| format!("H{i}").into_bytes()).collect();
    assert_eq!(of(H), expected, "H's flow 7, exactly");
    assert!(
        of(H).iter().all(|m| !m.starts_with(b"X")),
        "X's forged messages were delivered in H's flow: {got:?}"
    );
    // X's own flow 7 starts at 1: it waits for X's message 0, in X's budget only.
    assert!(of(X).is_empty());
    assert_eq!(me.stats().rx.held, 40);
}

// ------------------------------------------------------------ bounded state

/// One million fresh flow ids at seq 0 from one peer: the receiver's state must stay
/// bounded (it grew by 67 MiB, ~70 bytes per id).
#[test]
fn a_million_fresh_flow_ids_do_not_grow_memory_without_bound() {
    let mut r: Reassembler<u64> = Reassembler::new(ReassemblyLimits::default());
    let mut got = Vec::new();
    // H's flow 7 is half-way through a gap when X starts.
    for seq in [0, 2] {
        r.accept(
            &H,
            Path::Network,
            FlowHeader { flow: 7, seq },
            &[seq as u8],
            |_, _, m| got.push(m[0]),
        )
        .unwrap();
    }
    let before = live();
    let mut peak = 0;
    for flow in 0..1_000_000u32 {
        let _ = r.accept(
            &X,
            Path::Network,
            FlowHeader { flow, seq: 0 },
            b"x",
            |_, _, _| {},
        );
        if flow % 1024 == 0 {
            peak = peak.max(live() - before);
        }
    }
    peak = peak.max(live() - before);
    assert!(
        peak < 8 * MIB,
        "the receiver grew by {} KiB for one million flow ids",
        peak >> 10
    );
    assert!(r.flows(&X) <= ReassemblyLimits::default().flows_per_peer);
    assert!(r.stats().flows_evicted >= 1_000_000 - 1024);
    // X's flood forgot only X's flows: H's flow and its held message are intact.
    r.accept(
        &H,
        Path::Channel,
        FlowHeader { flow: 7, seq: 1 },
        &[1],
        |_, _, m| got.push(m[0]),
    )
    .unwrap();
    assert_eq!(got, [0, 1, 2]);
}

/// 64 early messages of 4 MiB held 256 MiB: held state is bounded in bytes per peer.
#[test]
fn held_bytes_are_bounded_not_only_counted() {
    let limits = ReassemblyLimits::default();
    let mut r: Reassembler<u64> = Reassembler::new(limits);
    let big = vec![0xA5u8; 4 << 20];
    let before = live();
    let mut refused = 0;
    for seq in 1..=64 {
        match r.accept(
            &X,
            Path::Network,
            FlowHeader { flow: 1, seq },
            &big,
            |_, _, _| {},
        ) {
            Ok(Delivery::Held) => {}
            Err(
                ReassemblyError::PeerOverBudget { .. } | ReassemblyError::FlowOverBudget { .. },
            ) => refused += 1,
            other => panic!("{other:?}"),
        }
    }
    let grown = live() - before;
    assert!(
        grown <= 72 * MIB,
        "64 early messages of 4 MiB hold {} MiB",
        grown >> 20
    );
    assert!(r.held_bytes() <= limits.held_bytes_per_peer);
    assert_eq!(refused, 64 - r.held() as u64);
    assert_eq!(r.stats().over_budget, refused);
}

// ------------------------------------------------------------ no global hold budget

/// X parks 4096 far-ahead messages (`seq = u64::MAX - i`); then H's flow overflows its
/// ring to the network, so its network messages arrive before the ones in the ring.
/// Every one of H's messages must be delivered, in order.
#[test]
fn a_hostile_peers_parked_messages_cost_an_honest_flow_nothing() {
    let t_me = table();
    let mut me: R = Router::new(&t_me, ThresholdPolicy::default(), Net::default(), 4096);
    let (h_tx, h_rx) = channels(4096); // a small ring: H overflows to the network
    let (mut x_tx, x_rx) = channels(DATA);
    me.attach(H, h_rx).unwrap();
    me.attach(X, x_rx).unwrap();
    for i in 0..4096u64 {
        x_tx.send(&frame(9, u64::MAX - i, b"parked")).unwrap_or(());
        if i % 256 == 255 {
            let _ = me.recv_channels(|_, _| {});
        }
    }
    let _ = me.recv_channels(|_, _| {});

    let net = Net::default();
    let t_h = table();
    let mut h: R = Router::new(&t_h, ThresholdPolicy::default(), net.clone(), 64);
    let hh = h.attach(ME, h_tx).unwrap();
    t_h.writer().unwrap().insert(ME, hh).unwrap();
    let msg = |i: u64| {
        let mut m = i.to_le_bytes().to_vec();
        m.resize(200, i as u8);
        m
    };
    for i in 0..100 {
        h.send(&ME, 7, &msg(i)).unwrap();
    }
    assert!(
        !net.q.borrow().is_empty(),
        "the test needs H's ring to overflow to the network"
    );
    let mut got = Vec::new();
    let mut deliver = |p: &u64, f: u32, m: &[u8]| {
        if *p == H && f == 7 {
            got.push(m.to_vec());
        }
    };
    // The network first (its messages are early), then the ring, then whatever is left.
    while let Some((hd, p)) = net.q.borrow_mut().pop_front() {
        me.recv_network_from(&H, hd, &p, &mut deliver).unwrap();
    }
    for _ in 0..4 {
        me.recv_channels_from(&mut deliver).unwrap();
    }
    let expected: Vec<Vec<u8>> = (0..100).map(msg).collect();
    assert_eq!(got.len(), 100, "H's flow lost {} of 100", 100 - got.len());
    assert_eq!(got, expected);
    // X's parked messages lay beyond the window: refused, never held.
    let s: RouterStats = *me.stats();
    assert_eq!(s.rx.beyond_window, 4096);
    assert_eq!(s.channel_refused, 4096);
}

// ------------------------------------------------------------ resume

/// `resume(flow, n)` while `n` is held: the run from `n` must be released, not stalled
/// behind a "duplicate" `n`.
#[test]
fn resume_at_a_held_sequence_number_releases_the_run() {
    let mut r: Reassembler<u64> = Reassembler::new(ReassemblyLimits::default());
    let mut out = Vec::new();
    let h = |seq| FlowHeader { flow: 7, seq };
    for seq in [5, 6] {
        r.accept(&H, Path::Network, h(seq), &[seq as u8], |_, _, m| {
            out.push(m[0])
        })
        .unwrap();
    }
    assert_eq!(r.resume(&H, 7, 5, |_, _, m| out.push(m[0])), Ok(2));
    // A resend of 5 (it was already delivered) and the next message.
    assert_eq!(
        r.accept(&H, Path::Network, h(5), &[5], |_, _, m| out.push(m[0])),
        Ok(Delivery::Duplicate)
    );
    r.accept(&H, Path::Network, h(7), &[7], |_, _, m| out.push(m[0]))
        .unwrap();
    assert_eq!(out, [5, 6, 7]);
    assert_eq!(r.held(), 0);
}

// ------------------------------------------------------------ burnt sequence numbers

/// The network path fails for message 1 and recovers: what the caller was told went
/// out must be delivered, in order, and nothing may wait forever behind a gap.
#[test]
fn a_failed_network_send_burns_no_sequence_number() {
    let net = Net::default();
    let t = table();
    let mut s: R = Router::new(&t, ThresholdPolicy::default(), net.clone(), 64);
    let t2 = table();
    let mut me: R = Router::new(&t2, ThresholdPolicy::default(), Net::default(), 64);
    let mut sent = Vec::new();
    for i in 0..4u8 {
        if i == 1 {
            net.fail.set(1);
        }
        if s.send(&ME, 3, &[i]).is_ok() {
            sent.push(i);
        }
    }
    let mut got = Vec::new();
    while let Some((h, p)) = net.q.borrow_mut().pop_front() {
        me.recv_network_from(&H, h, &p, |_, _, m| got.push(m[0]))
            .unwrap();
    }
    assert_eq!(got, sent, "the messages reported sent, in order");
    assert_eq!(sent, [0, 2, 3]);
    assert_eq!(s.stats().network_refused, 1);
}

/// A fail-over whose resend fails half-way: the frames not yet resent must not be
/// lost; they go out, in order, once the network is back.
#[test]
fn a_failed_resend_during_fail_over_loses_nothing() {
    let net = Net::default();
    let t = table();
    let mut s: R = Router::new(&t, ThresholdPolicy::default(), net.clone(), 64);
    let (tx, _rx) = channels(DATA);
    let hd = s.attach(ME, tx).unwrap();
    t.writer().unwrap().insert(ME, hd).unwrap();
    for i in 0..10u8 {
        s.send(&ME, 3, &[i]).unwrap();
    }
    t.writer().unwrap().remove(&ME);
    net.fail.set(1);
    // The first resend fails: the caller is told, and the rest waits in order.
    assert!(matches!(s.peer_left(hd), Err(RouteError::Network(_))));
    assert_eq!(s.backlog(), 10);
    for i in 10..12u8 {
        while s.send(&ME, 3, &[i]).is_err() {}
    }
    assert_eq!(s.backlog(), 0);
    let t2 = table();
    let mut me: R = Router::new(&t2, ThresholdPolicy::default(), Net::default(), 64);
    let mut got = Vec::new();
    while let Some((h, p)) = net.q.borrow_mut().pop_front() {
        me.recv_network_from(&H, h, &p, |_, _, m| got.push(m[0]))
            .unwrap();
    }
    assert_eq!(got, (0..12).collect::<Vec<u8>>());
}
