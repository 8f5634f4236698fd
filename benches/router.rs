//! The router's per-message overhead (issue 15: at most +5 ns over a bare
//! `NetworkPath::send` on a residency miss, at every flow count).
//!
//! **`router-miss`**: `Router::send` of a 64-byte payload to a MAC that is not in the
//! residency table, with a `NetworkPath` that only folds its arguments into a
//! `black_box`ed counter, beside that network path called directly
//! (`network-direct`): the difference is the flow's state, its cached lookup (one load
//! of the table's generation while the table is unchanged), the policy and the
//! counters. With 1, 16, 256 and 1024 flows (the flow id cycles).
//!
//! **`router-hit`**: the peer resident, a connected mock channel, beside a bare
//! `Channel::send` of the same 80 bytes (header and payload) and beside `send_in_place`,
//! the call the router makes; every 256 messages the peer drains the ring and the
//! sender polls, in all three.
//!
//! **`router-parts`**: the pieces alone: the table lookup (miss) the cache saves, the
//! generation load that replaces it, the policy, a hashbrown flow entry.
//!
//! The groups take 100 samples of linearly growing length, the shortest a fraction of
//! a millisecond: on a shared machine the fastest sample per iteration (criterion's
//! `sample.json`) estimates the uncontended cost beside criterion's estimate.
//!
//! `cargo bench --bench router` takes about a minute. Instruction counts, whatever the
//! load (callgrind): `ROUTER_COUNT=1000000 cargo bench --bench router` runs each miss
//! case that many times outside criterion, in functions callgrind can single out:
//!
//! ```text
//! cargo bench --bench router --no-run
//! ROUTER_COUNT=1000000 valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out \
//!     --toggle-collect='*count_network_direct*' --toggle-collect='*count_router_miss*' \
//!     target/release/deps/router-* --bench
//! callgrind_annotate --inclusive=yes /tmp/cg.out | grep count_
//! ```

use coresident::lookup::{Seed, Table};
use coresident::{
    Batching, Channel, ChannelConfig, ChannelLayout, Decision, FlowHeader, NetworkPath, Path,
    PeerState, Policy, Router, StdClock, ThresholdPolicy, FLOW_HEADER_LEN,
};
use coresident_mock::{MockDoorbell, MockRegion};
use criterion::{black_box, Criterion, Throughput};
use std::convert::Infallible;
use std::time::Duration;

type MockChannel = Channel<MockRegion, MockDoorbell, StdClock>;

/// Data area of each ring.
const DATA: u32 = 1 << 20;
/// Flow counts of the miss benches.
const FLOWS: [u32; 4] = [1, 16, 256, 1024];

type Mac = [u8; 6];
const BUCKETS: usize = 1024;
type MacTable = Table<Mac, BUCKETS>;
type MockRouter<'t> =
    Router<'t, Mac, MockRegion, MockDoorbell, StdClock, NullNet, ThresholdPolicy, BUCKETS>;

/// A network path that does nothing but fold its arguments into a counter.
#[derive(Debug, Default)]
struct NullNet {
    sum: u64,
}

impl NetworkPath<Mac> for NullNet {
    type Error = Infallible;

    #[inline]
    fn send(&mut self, peer: &Mac, header: FlowHeader, payload: &[u8]) -> Result<(), Infallible> {
        let (peer, header, payload) = black_box((peer, header, payload));
        self.sum = self.sum.wrapping_add(
            header.seq ^ u64::from(header.flow) ^ u64::from(peer[5]) ^ payload.len() as u64,
        );
        Ok(())
    }
}

fn mac(i: u32) -> Mac {
    let b = i.to_le_bytes();
    [2, 0, b[3], b[2], b[1], b[0]]
}

/// A residency table (1024 buckets, 5120 slots) holding 64 co-resident peers (MACs
/// 1..=64); the hit benches add theirs.
fn table() -> Box<MacTable> {
    let t = Box::new(MacTable::new(Seed::from_bytes([42; 32])));
    {
        let mut w = t.writer().unwrap();
        for i in 1..=64 {
            w.insert(mac(i), coresident::lookup::Handle::new(1000 + i as u16, 1))
                .unwrap();
        }
    }
    t
}

/// The MAC of a peer on another host: never in the table.
const REMOTE: u32 = 0x00AB_CDEF;
/// The resident peer of the hit benches.
const RESIDENT: u32 = 0x0012_3456;
const PAYLOAD: usize = 64;
/// Messages between two drains of the receiving ring in the hit benches.
const DRAIN_EVERY: u64 = 256;

fn hit_channels(liveness: Option<Duration>) -> (MockChannel, MockChannel) {
    let (a, b, _faults) = coresident_mock::pair(ChannelLayout::symmetric(DATA));
    let config = ChannelConfig {
        batching: Batching::EventIndex,
        spin: 0,
        liveness,
        recheck: None,
        ..ChannelConfig::default()
    };
    (
        Channel::new(a, config, StdClock::default()).unwrap(),
        Channel::new(b, config, StdClock::default()).unwrap(),
    )
}

fn drain(rx: &mut MockChannel) {
    while let Ok(n) = rx.recv_batch(usize::MAX, |v| {
        black_box(v.len());
    }) {
        black_box(n);
    }
}

fn router_miss(c: &mut Criterion) {
    let mut g = c.benchmark_group("router-miss");
    g.sample_size(100)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .throughput(Throughput::Elements(1));
    let payload = [0x5Au8; PAYLOAD];
    let dst = mac(REMOTE);

    let mut net = NullNet::default();
    let mut seq = 0u64;
    g.bench_function("network-direct", |b| {
        b.iter(|| {
            seq += 1;
            let h = FlowHeader { flow: 7, seq };
            net.send(black_box(&dst), h, black_box(&payload)).unwrap();
        });
    });
    black_box(net.sum);

    let t = table();
    for flows in FLOWS {
        let mut r: MockRouter<'_> =
            Router::new(&t, ThresholdPolicy::default(), NullNet::default(), 64);
        // The flow id cycles by a compare, not `%`: a division would cost the loop more
        // than the router's lookup.
        let mut i = 0u32;
        g.bench_function(format!("router-{flows}-flows"), |b| {
            b.iter(|| {
                i += 1;
                if i == flows {
                    i = 0;
                }
                let p = r
                    .send(black_box(&dst), black_box(i), black_box(&payload))
                    .unwrap();
                debug_assert_eq!(p, Path::Network);
                p
            });
        });
        assert_eq!(r.stats().via_channel, 0);
        black_box(r.network().sum);
    }
    g.finish();
}

fn router_hit(c: &mut Criterion) {
    let mut g = c.benchmark_group("router-hit");
    g.sample_size(100)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .throughput(Throughput::Elements(1));
    let payload = [0x5Au8; PAYLOAD];
    let mut framed = [0x5Au8; FLOW_HEADER_LEN + PAYLOAD];

    // A bare channel: the same 80 bytes a routed message takes.
    let (mut tx, mut rx) = hit_channels(Some(Duration::from_secs(60)));
    let mut n = 0u64;
    g.bench_function("channel-send", |b| {
        b.iter(|| {
            n += 1;
            framed[8..16].copy_from_slice(&n.to_le_bytes());
            tx.send(black_box(&framed)).unwrap();
            if n % DRAIN_EVERY == 0 {
                drain(&mut rx);
                tx.poll().unwrap();
            }
        });
    });
    // The router's way of writing: in place, header then payload.
    g.bench_function("channel-send-in-place", |b| {
        b.iter(|| {
            n += 1;
            let h = FlowHeader { flow: 7, seq: n }.encode();
            let p = black_box(&payload);
            tx.send_in_place(FLOW_HEADER_LEN + p.len(), |r| {
                let ok = r.write_at(0, &h).is_ok() && r.write_at(FLOW_HEADER_LEN, p).is_ok();
                if ok {
                    FLOW_HEADER_LEN + p.len()
                } else {
                    0
                }
            })
            .unwrap();
            if n % DRAIN_EVERY == 0 {
                drain(&mut rx);
                tx.poll().unwrap();
            }
        });
    });
    drop((tx, rx));

    let t = table();
    let dst = mac(RESIDENT);
    let (ch, mut rx) = hit_channels(Some(Duration::from_secs(60)));
    let mut r: MockRouter<'_> = Router::new(&t, ThresholdPolicy::default(), NullNet::default(), 64);
    let h = r.attach(dst, ch).unwrap();
    t.writer().unwrap().insert(dst, h).unwrap();
    let mut n = 0u64;
    g.bench_function("router-send", |b| {
        b.iter(|| {
            n += 1;
            let p = r.send(black_box(&dst), 7, black_box(&payload)).unwrap();
            if n % DRAIN_EVERY == 0 {
                drain(&mut rx);
                r.poll().unwrap();
            }
            p
        });
    });
    let s = *r.stats();
    if s.via_channel + s.via_network > 0 {
        eprintln!(
            "router-hit/router-send: {} via channel, {} via network",
            s.via_channel, s.via_network
        );
    }
    g.finish();
}

/// The load estimate the policy reads with `liveness: None`: sends 64-byte messages to
/// a resident peer that drains after every 256 (and the router polls), and reports how
/// many went by network. With an accurate load, none should.
fn router_load_check() {
    let t = table();
    let dst = mac(RESIDENT);
    let (ch, mut rx) = hit_channels(None);
    let mut r: MockRouter<'_> = Router::new(&t, ThresholdPolicy::default(), NullNet::default(), 64);
    let h = r.attach(dst, ch).unwrap();
    t.writer().unwrap().insert(dst, h).unwrap();
    let payload = [0u8; PAYLOAD];
    let mut first_network = None;
    let total = 100_000u64;
    for n in 1..=total {
        if r.send(&dst, 7, &payload).unwrap() == Path::Network && first_network.is_none() {
            first_network = Some(n);
        }
        if n % DRAIN_EVERY == 0 {
            drain(&mut rx);
            r.poll().unwrap();
        }
    }
    let s = *r.stats();
    eprintln!(
        "load check (liveness: None, receiver drains every {DRAIN_EVERY}, router polls): \
         {total} sends to a resident peer, {} via channel, {} via network, first network \
         send at message {first_network:?}",
        s.via_channel, s.via_network
    );
}

/// The router's flow state, about as `router.rs` keeps it.
#[derive(Debug)]
struct FlowTx {
    next_seq: u64,
    policy: PeerState,
}

fn new_flow() -> FlowTx {
    FlowTx {
        next_seq: 0,
        policy: PeerState {
            path: Path::Channel,
            streak: 0,
        },
    }
}

fn router_parts(c: &mut Criterion) {
    let mut g = c.benchmark_group("router-parts");
    g.sample_size(100)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .throughput(Throughput::Elements(1));
    let t = table();
    let dst = mac(REMOTE);
    g.bench_function("table-get-miss", |b| {
        b.iter(|| t.get(black_box(&dst)));
    });
    g.bench_function("table-generation", |b| {
        b.iter(|| black_box(&*t).generation());
    });

    let mut policy = ThresholdPolicy::default();
    let mut st = PeerState {
        path: Path::Channel,
        streak: 0,
    };
    let d = Decision {
        len: PAYLOAD,
        resident: false,
        max_len: 0,
        peer_load: 0,
    };
    g.bench_function("policy-choose-miss", |b| {
        b.iter(|| policy.choose(black_box(&mut st), black_box(&d)));
    });

    for flows in FLOWS {
        let mut h: hashbrown::HashMap<(Mac, u32), FlowTx, foldhash::fast::FixedState> =
            hashbrown::HashMap::with_hasher(foldhash::fast::FixedState::with_seed(7));
        let mut i = 0u32;
        g.bench_function(format!("hashbrown-foldhash-entry-{flows}-flows"), |b| {
            b.iter(|| {
                i = i.wrapping_add(1);
                let f = h
                    .entry((dst, black_box(i % flows)))
                    .or_insert_with(new_flow);
                f.next_seq += 1;
                f.next_seq + u64::from(f.policy.streak)
            });
        });
    }
    g.finish();
}

/// `n` sends straight to the network path (for callgrind: see the module docs).
#[inline(never)]
fn count_network_direct(net: &mut NullNet, dst: &Mac, payload: &[u8], n: u64) {
    for seq in 0..n {
        let h = FlowHeader { flow: 7, seq };
        net.send(black_box(dst), h, black_box(payload)).unwrap();
    }
}

/// `n` routed sends on a miss, cycling over `flows` flows (by a compare: see
/// `router_miss`).
#[inline(always)]
fn routed_misses(r: &mut MockRouter<'_>, dst: &Mac, payload: &[u8], flows: u32, n: u64) {
    let mut f = 0u32;
    for _ in 0..n {
        f += 1;
        if f == flows {
            f = 0;
        }
        let p = r
            .send(black_box(dst), black_box(f), black_box(payload))
            .unwrap();
        black_box(p);
    }
}

/// One function per flow count, so callgrind counts each apart.
macro_rules! count_miss {
    ($name:ident, $flows:expr) => {
        #[inline(never)]
        fn $name(r: &mut MockRouter<'_>, dst: &Mac, payload: &[u8], n: u64) {
            routed_misses(r, dst, payload, black_box($flows), n)
        }
    };
}
count_miss!(count_router_miss_1, 1);
count_miss!(count_router_miss_16, 16);
count_miss!(count_router_miss_256, 256);
count_miss!(count_router_miss_1024, 1024);

type Counter = fn(&mut MockRouter<'_>, &Mac, &[u8], u64);

/// The callgrind mode: each miss case `n` times, no criterion.
fn count(n: u64) {
    let payload = [0x5Au8; PAYLOAD];
    let dst = mac(REMOTE);
    let mut net = NullNet::default();
    count_network_direct(&mut net, &dst, &payload, n);
    black_box(net.sum);
    let t = table();
    let cases: [(u32, Counter); 4] = [
        (1, count_router_miss_1),
        (16, count_router_miss_16),
        (256, count_router_miss_256),
        (1024, count_router_miss_1024),
    ];
    for (flows, f) in cases {
        let mut r: MockRouter<'_> =
            Router::new(&t, ThresholdPolicy::default(), NullNet::default(), 64);
        // Warm, outside the counted function: every flow exists, its lookup cached.
        routed_misses(&mut r, &dst, &payload, flows, u64::from(flows));
        f(&mut r, &dst, &payload, n);
        black_box(r.network().sum);
        eprintln!("counted {n} routed misses over {flows} flows");
    }
}

fn main() {
    if let Some(n) = std::env::var("ROUTER_COUNT")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        count(n);
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    router_miss(&mut c);
    router_hit(&mut c);
    router_parts(&mut c);
    c.final_summary();
    router_load_check();
}
