//! End to end: two endpoints, the same flow ids each way (a flow is its sender's), several flows each way, random message sizes (0 bytes to
//! past the channel's maximum), random path switches and random faults. The model
//! checks that each flow's delivered messages equal its sent messages, in order, with
//! no duplicates, whichever path each message took.
#![cfg(not(loom))]

use coresident::lookup::{Seed, Table};
use coresident::{
    Channel, ChannelConfig, ChannelLayout, FlowHeader, NetworkPath, Router, StdClock,
    ThresholdPolicy,
};
use coresident_mock::{pair, MockDoorbell, MockRegion, Side};
use proptest::prelude::*;
use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;

const A: u64 = 1;
const B: u64 = 2;
const DATA: u32 = 4096;

/// Per destination: `(source, header, payload)` in order.
type Queues = BTreeMap<u64, VecDeque<(u64, FlowHeader, Vec<u8>)>>;

/// A reliable, ordered network: one queue per destination; messages carry their
/// source, as a network path names the sender.
#[derive(Clone)]
struct Net {
    me: u64,
    q: Rc<RefCell<Queues>>,
}

impl NetworkPath<u64> for Net {
    type Error = std::convert::Infallible;
    fn send(&mut self, peer: &u64, h: FlowHeader, payload: &[u8]) -> Result<(), Self::Error> {
        self.q
            .borrow_mut()
            .entry(*peer)
            .or_default()
            .push_back((self.me, h, payload.to_vec()));
        Ok(())
    }
}

/// What each receiver got, per (sender, flow).
type Got = BTreeMap<(u64, u32), Vec<Vec<u8>>>;

type R<'t> = Router<'t, u64, MockRegion, MockDoorbell, StdClock, Net, ThresholdPolicy, 16>;

#[derive(Clone, Debug)]
enum Op {
    Send {
        from_a: bool,
        flow: u32,
        len: usize,
    },
    RecvChannels {
        at_a: bool,
    },
    RecvNetwork {
        at_a: bool,
        max: usize,
    },
    Poll {
        at_a: bool,
    },
    Kill {
        a: bool,
    },
    Migrate,
    CorruptIndex {
        ring_a: bool,
        field: usize,
        value: u32,
    },
    DropDoorbells,
}

fn op() -> impl Strategy<Value = Op> {
    let max = coresident::ring::max_message(DATA) as usize;
    prop_oneof![
        12 => (any::<bool>(), 0..3u32, prop_oneof![0..64usize, 0..=max + 64]).prop_map(|(from_a, flow, len)| Op::Send { from_a, flow, len }),
        3 => any::<bool>().prop_map(|at_a| Op::RecvChannels { at_a }),
        3 => (any::<bool>(), 0..8usize).prop_map(|(at_a, max)| Op::RecvNetwork { at_a, max }),
        2 => any::<bool>().prop_map(|at_a| Op::Poll { at_a }),
        1 => any::<bool>().prop_map(|a| Op::Kill { a }),
        1 => Just(Op::Migrate),
        1 => (any::<bool>(), 0..6usize, any::<u32>()).prop_map(|(ring_a, field, value)| Op::CorruptIndex { ring_a, field, value }),
        1 => Just(Op::DropDoorbells),
    ]
}

fn payload(flow: u32, i: u64, len: usize) -> Vec<u8> {
    let mut p: Vec<u8> = (0..len)
        .map(|k| (k as u64 * 31 + i * 7 + u64::from(flow)) as u8)
        .collect();
    let tag = [flow.to_le_bytes().as_slice(), &i.to_le_bytes()].concat();
    let n = tag.len().min(len);
    p[..n].copy_from_slice(&tag[..n]);
    p
}

/// A delivery callback filling `got`, per (sender, flow).
fn into(got: &mut Got) -> impl FnMut(&u64, u32, &[u8]) + '_ {
    move |p, f, m| got.entry((*p, f)).or_default().push(m.to_vec())
}

fn run(ops: Vec<Op>) {
    let table_a: Table<u64, 16> = Table::new(Seed::new([1, 2, 3, 4]));
    let table_b: Table<u64, 16> = Table::new(Seed::new([5, 6, 7, 8]));
    let (la, lb, faults) = pair(ChannelLayout::symmetric(DATA));
    let config = ChannelConfig {
        spin: 0,
        liveness: None,
        ..ChannelConfig::default()
    };
    let ca = Channel::new(la, config, StdClock::default()).unwrap();
    let cb = Channel::new(lb, config, StdClock::default()).unwrap();
    let q: Rc<RefCell<Queues>> = Rc::default();
    // A soft size threshold with short hysteresis: flows switch paths back and forth.
    let policy = ThresholdPolicy {
        min_len: 24,
        max_load: 900,
        hysteresis: 2,
        ..ThresholdPolicy::default()
    };
    let mut ra: R = Router::new(
        &table_a,
        policy,
        Net {
            me: A,
            q: q.clone(),
        },
        1 << 20,
    );
    let mut rb: R = Router::new(
        &table_b,
        policy,
        Net {
            me: B,
            q: q.clone(),
        },
        1 << 20,
    );
    let ha = ra.attach(B, ca).unwrap();
    let hb = rb.attach(A, cb).unwrap();
    let mut wa = table_a.writer().unwrap();
    let mut wb = table_b.writer().unwrap();
    wa.insert(B, ha).unwrap();
    wb.insert(A, hb).unwrap();

    // Both directions use flows 0..3: a flow is (sender, id), so they never mix.
    let mut sent: Got = BTreeMap::new();
    let mut got_a: Got = BTreeMap::new();
    let mut got_b: Got = BTreeMap::new();

    let recv_net = |r: &mut R, me: u64, max: usize, got: &mut Got| {
        for _ in 0..max {
            let Some((src, h, p)) = q.borrow_mut().get_mut(&me).and_then(|q| q.pop_front()) else {
                break;
            };
            r.recv_network_from(&src, h, &p, into(got)).unwrap();
        }
    };

    let mut crashed = false;
    for op in ops {
        match op {
            Op::Send { from_a, flow, len } => {
                let (r, src, dst) = if from_a {
                    (&mut ra, A, B)
                } else {
                    (&mut rb, B, A)
                };
                let s = sent.entry((src, flow)).or_default();
                let p = payload(flow, s.len() as u64, len);
                r.send(&dst, flow, &p).unwrap();
                s.push(p);
            }
            Op::RecvChannels { at_a: true } => {
                ra.recv_channels_from(into(&mut got_a)).unwrap();
            }
            Op::RecvChannels { at_a: false } => {
                rb.recv_channels_from(into(&mut got_b)).unwrap();
            }
            Op::RecvNetwork { at_a: true, max } => recv_net(&mut ra, A, max, &mut got_a),
            Op::RecvNetwork { at_a: false, max } => recv_net(&mut rb, B, max, &mut got_b),
            Op::Poll { at_a: true } => ra.poll().unwrap(),
            Op::Poll { at_a: false } => rb.poll().unwrap(),
            // One crash per channel: when both ends crash before either noticed, what
            // each had accepted but not yet handed over is lost in any system (TCP too).
            Op::Kill { .. } if crashed => {}
            Op::Kill { a } => {
                crashed = true;
                // That side's channel dies with its mapping (it keeps running elsewhere
                // and stays reachable over the network); the survivor notices at poll.
                faults.kill(if a { Side::Offerer } else { Side::Acceptor });
                if a {
                    ra.abandon(ha);
                } else {
                    rb.abandon(hb);
                }
            }
            Op::Migrate => {
                // B moves to another host. Before its mappings go (a Xen guest unmaps
                // foreign grants before suspend), B fails over: resends what A never
                // read, drains what A published; then the mapping is gone. The control
                // path drops the peer from both residency tables and tells A's router.
                faults.migrate(Side::Acceptor);
                rb.peer_left(hb).unwrap();
                rb.recv_channels_from(into(&mut got_b)).unwrap();
                rb.abandon(hb);
                wa.remove(&B);
                wb.remove(&A);
                ra.peer_left(ha).unwrap();
            }
            Op::CorruptIndex {
                ring_a,
                field,
                value,
            } => {
                // Index, event and closed fields of either ring (a broken peer).
                let base = faults.ring_offset(if ring_a {
                    Side::Offerer
                } else {
                    Side::Acceptor
                });
                let off = [128, 256, 260, 384, 512, 516][field];
                faults.poke(base + off, value);
            }
            Op::DropDoorbells => faults.drop_doorbells(3),
        }
    }
    // Drain: both sides poll, receive, and take the network until nothing moves.
    for _ in 0..64 {
        ra.flush();
        rb.flush();
        ra.poll().unwrap();
        rb.poll().unwrap();
        ra.recv_channels_from(into(&mut got_a)).unwrap();
        rb.recv_channels_from(into(&mut got_b)).unwrap();
        recv_net(&mut ra, A, usize::MAX, &mut got_a);
        recv_net(&mut rb, B, usize::MAX, &mut got_b);
    }
    // Whatever is still in a healthy channel is not lost either: fail both over to see
    // it all arrive (a final migration).
    wa.remove(&B);
    wb.remove(&A);
    ra.peer_left(ha).unwrap();
    rb.peer_left(hb).unwrap();
    for _ in 0..4 {
        ra.recv_channels_from(into(&mut got_a)).unwrap();
        rb.recv_channels_from(into(&mut got_b)).unwrap();
        recv_net(&mut ra, A, usize::MAX, &mut got_a);
        recv_net(&mut rb, B, usize::MAX, &mut got_b);
    }
    for ((src, flow), msgs) in &sent {
        let got = if *src == B {
            got_a.get(&(B, *flow))
        } else {
            got_b.get(&(A, *flow))
        };
        let got = got.map(Vec::as_slice).unwrap_or(&[]);
        assert_eq!(
            got.len(),
            msgs.len(),
            "flow {flow} of {src}: delivered {} of {}",
            got.len(),
            msgs.len()
        );
        for (i, (g, s)) in got.iter().zip(msgs).enumerate() {
            assert_eq!(g, s, "flow {flow} of {src}: message {i} differs");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: if cfg!(debug_assertions) { 64 } else { 512 }, ..ProptestConfig::default() })]

    #[test]
    fn flows_survive_path_switches_and_faults(ops in prop::collection::vec(op(), 1..300)) {
        run(ops);
    }
}

#[test]
fn a_long_run_without_faults_uses_the_channel() {
    let ops: Vec<Op> = (0..2000)
        .map(|i| match i % 5 {
            0..=2 => Op::Send {
                from_a: i % 2 == 0,
                flow: (i % 3) as u32,
                len: 100 + i % 900,
            },
            3 => Op::RecvChannels { at_a: false },
            _ => Op::RecvChannels { at_a: true },
        })
        .collect();
    run(ops);
}
