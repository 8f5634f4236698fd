//! The channel core: throughput and doorbells per message for each batching policy, and
//! the router's per-message overhead on a residency miss and a hit.
//!
//! **Throughput** (`channel-{cross-core,one-core}/{policy}/{len}`): a sender thread and a
//! receiver thread over a mock channel ([`coresident_mock::pair`], 1 MiB ring each way;
//! its doorbells are a mutex and a condition variable, a futex-backed eventfd in cost),
//! pinned to cores 0 and 1 or both to core 0, with the default configuration in both
//! (an adaptive spin budget, capped at 50 µs, which falls to nothing on one core). The
//! sender calls `Channel::send_blocking` for each
//! message and `flush` after the last of a sample; the receiver drains with `recv_batch`
//! (up to 64, each payload copied out) and falls back to `recv_blocking` when the ring
//! is empty. Every message carries its sequence number, checked on receipt. The pair of
//! threads lives as long as one benchmark; a sample starts both at a barrier and times
//! from the sender's start to the receiver's last message.
//!
//! Criterion cannot record doorbells, so the bench sums every sample's `Stats` deltas
//! (warm-up included: the policy is the same) and prints, at the end, a table of
//! doorbells per message (`doorbells_rung` of both sides over messages), wake-ups per
//! message and messages per publish, per policy, size and placement: the study's
//! lesson 3 metric. Target: at most 0.01 doorbells per message with batching.
//!
//! **Router** (`router-miss`, `router-hit`, `router-parts`): `Router::send` of a 64-byte
//! payload to a MAC that is not in the residency table, with a `NetworkPath` that only
//! folds its arguments into a `black_box`ed counter, beside that network path called
//! directly: the difference is lookup, policy and flow bookkeeping (target: under 5 ns).
//! With one flow and with 1024 flows (the flow id cycles). The hit path (the peer
//! resident, a connected mock channel) beside a bare `Channel::send` of the same 80
//! bytes (header and payload) and beside `send_in_place`, the call the router makes;
//! every 256 messages the peer drains the ring and the sender polls, in all three.
//! `router-parts` times the pieces alone: the table lookup (miss), a `BTreeMap` flow
//! entry like the router's, and the replacements worth considering.
//!
//! The router groups take 100 samples of linearly growing length, the shortest a
//! fraction of a millisecond: on a shared machine the fastest sample per iteration
//! (criterion's `sample.json`) estimates the uncontended cost beside criterion's
//! estimate.
//!
//! **Round trip** (`channel-rtt/{cross-core,one-core}/{spin}`): 8 bytes each way,
//! `send_blocking` then `recv_blocking` on both sides, one round trip per iteration,
//! with spinning off, fixed at 50 µs (the old fixed count's behaviour, in time) and
//! adaptive under a 50 µs cap (the default). Issue 12's cliff: on one shared core a
//! fixed spin costs a whole budget per wait; the adaptive one must come close to
//! spinning off there, and close to the fixed one across cores.
//!
//! `cargo bench --bench channel` takes about three minutes; a filter narrows it, e.g.
//! `cargo bench --bench channel -- router`.

use core_affinity::CoreId;
use coresident::lookup::{Seed, Table};
use coresident::{
    Batching, Channel, ChannelConfig, ChannelError, ChannelLayout, Decision, FlowHeader,
    NetworkPath, Path, PeerState, Policy, Router, SpinPolicy, Stats, StdClock, ThresholdPolicy,
    FLOW_HEADER_LEN,
};
use coresident_mock::{MockDoorbell, MockRegion};
use criterion::{black_box, BenchmarkGroup, Criterion, Throughput};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{mpsc, Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

type MockChannel = Channel<MockRegion, MockDoorbell, StdClock>;

/// Data area of each ring.
const DATA: u32 = 1 << 20;
const SIZES: [usize; 6] = [64, 256, 1024, 4096, 16384, 65536];

// ------------------------------------------------------------------ throughput set-up

/// How a benchmark's two threads are placed.
struct Place {
    name: &'static str,
    cores: [Option<CoreId>; 2],
}

fn placements() -> Vec<Place> {
    let ids = core_affinity::get_core_ids().unwrap_or_default();
    let mut v = Vec::new();
    if ids.len() >= 2 {
        v.push(Place {
            name: "cross-core",
            cores: [Some(ids[0]), Some(ids[1])],
        });
    }
    v.push(Place {
        name: "one-core",
        cores: [ids.first().copied(), ids.first().copied()],
    });
    v
}

fn policies() -> [(&'static str, Batching); 4] {
    [
        ("always", Batching::Always),
        ("event-index", Batching::EventIndex),
        ("stream", Batching::STREAM),
        (
            "batch-256",
            Batching::Batch {
                frames: 256,
                bytes: 256 * 1024,
                max_delay: Duration::from_micros(200),
            },
        ),
    ]
}

fn channels(batching: Batching, spin: (u32, SpinPolicy), data: u32) -> (MockChannel, MockChannel) {
    let (a, b, _faults) = coresident_mock::pair(ChannelLayout::symmetric(data));
    let config = ChannelConfig {
        batching,
        spin: spin.0,
        spin_policy: spin.1,
        liveness: None,
        // The default re-check bound: a lost doorbell would show up as a 100 ms stall
        // in the timings, not as a hung bench. The mock loses none.
        recheck: Some(Duration::from_millis(100)),
    };
    (
        Channel::new(a, config, StdClock::default()).unwrap(),
        Channel::new(b, config, StdClock::default()).unwrap(),
    )
}

/// `now - before`, field by field, for the counters this bench reports.
fn delta(now: &Stats, before: &Stats) -> Stats {
    Stats {
        sent_messages: now.sent_messages - before.sent_messages,
        received_messages: now.received_messages - before.received_messages,
        publishes: now.publishes - before.publishes,
        doorbells_rung: now.doorbells_rung - before.doorbells_rung,
        doorbells_suppressed: now.doorbells_suppressed - before.doorbells_suppressed,
        wakeups: now.wakeups - before.wakeups,
        spurious_wakeups: now.spurious_wakeups - before.spurious_wakeups,
        spins_won: now.spins_won - before.spins_won,
        spins_expired: now.spins_expired - before.spins_expired,
        ..Stats::default()
    }
}

fn add(sum: &mut Stats, d: &Stats) {
    sum.sent_messages += d.sent_messages;
    sum.received_messages += d.received_messages;
    sum.publishes += d.publishes;
    sum.doorbells_rung += d.doorbells_rung;
    sum.doorbells_suppressed += d.doorbells_suppressed;
    sum.wakeups += d.wakeups;
    sum.spurious_wakeups += d.spurious_wakeups;
    sum.spins_won += d.spins_won;
    sum.spins_expired += d.spins_expired;
}

/// One line of the doorbell summary: both sides' counters over all samples.
struct Row {
    place: &'static str,
    policy: &'static str,
    len: usize,
    tx: Stats,
    rx: Stats,
    /// Messages and seconds over all samples (for a throughput beside criterion's).
    msgs: u64,
    secs: f64,
}

static ROWS: Mutex<Vec<Row>> = Mutex::new(Vec::new());

fn pin(core: Option<CoreId>) {
    if let Some(c) = core {
        core_affinity::set_for_current(c);
    }
}

/// The sender's side of one benchmark: for each command `n`, sends `n` messages of
/// `len` bytes (sequence number in the first 8), then flushes.
fn sender(
    mut ch: MockChannel,
    len: usize,
    core: Option<CoreId>,
    cmds: mpsc::Receiver<u64>,
    gate: Arc<Barrier>,
    done: mpsc::Sender<(Instant, Stats)>,
) {
    pin(core);
    let mut msg = vec![0xA5u8; len];
    let mut seq = 0u64;
    while let Ok(n) = cmds.recv() {
        let before = *ch.stats();
        gate.wait();
        let t0 = Instant::now();
        for _ in 0..n {
            msg[..8].copy_from_slice(&seq.to_le_bytes());
            seq += 1;
            ch.send_blocking(&msg, None).expect("send_blocking");
        }
        // The last batch: without it a batching sender leaves up to a batch unseen.
        ch.flush().expect("flush");
        if done.send((t0, delta(ch.stats(), &before))).is_err() {
            break;
        }
    }
}

/// The receiver's side: for each command `n`, receives `n` messages, checking each
/// sequence number, and reports when the last arrived.
fn receiver(
    mut ch: MockChannel,
    len: usize,
    core: Option<CoreId>,
    cmds: mpsc::Receiver<u64>,
    gate: Arc<Barrier>,
    done: mpsc::Sender<(Instant, Stats)>,
) {
    pin(core);
    let mut buf = vec![0u8; len];
    let mut expect = 0u64;
    let seq_of = |b: &[u8]| u64::from_le_bytes(b[..8].try_into().unwrap());
    while let Ok(n) = cmds.recv() {
        let before = *ch.stats();
        gate.wait();
        let mut got = 0u64;
        while got < n {
            let max = (n - got).min(64) as usize;
            let mut ok = true;
            let r = ch.recv_batch(max, |v| {
                ok &= v.read_at(0, &mut buf) == len && seq_of(&buf) == expect;
                expect += 1;
            });
            match r {
                Ok(k) => got += k as u64,
                Err(ChannelError::Empty) => {
                    let k = ch.recv_blocking(&mut buf, None).expect("recv_blocking");
                    ok &= k == len && seq_of(&buf) == expect;
                    expect += 1;
                    got += 1;
                }
                Err(e) => panic!("recv_batch: {e}"),
            }
            assert!(ok, "message {} lost, reordered or damaged", expect - 1);
        }
        if done
            .send((Instant::now(), delta(ch.stats(), &before)))
            .is_err()
        {
            break;
        }
    }
}

fn throughput_one(
    g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    place: &Place,
    policy: (&'static str, Batching),
    len: usize,
) {
    let d = ChannelConfig::default();
    let (tx_ch, rx_ch) = channels(policy.1, (d.spin, d.spin_policy), DATA);
    let gate = Arc::new(Barrier::new(2));
    let (tx_cmd, tx_cmds) = mpsc::channel();
    let (rx_cmd, rx_cmds) = mpsc::channel();
    let (tx_done, tx_dones) = mpsc::channel();
    let (rx_done, rx_dones) = mpsc::channel();
    let mut row = Row {
        place: place.name,
        policy: policy.0,
        len,
        tx: Stats::default(),
        rx: Stats::default(),
        msgs: 0,
        secs: 0.0,
    };
    thread::scope(|s| {
        let (c0, c1) = (place.cores[0], place.cores[1]);
        let g0 = gate.clone();
        s.spawn(move || sender(tx_ch, len, c0, tx_cmds, g0, tx_done));
        let g1 = gate.clone();
        s.spawn(move || receiver(rx_ch, len, c1, rx_cmds, g1, rx_done));
        g.bench_function(format!("{}/{len}", policy.0), |b| {
            b.iter_custom(|n| {
                tx_cmd.send(n).unwrap();
                rx_cmd.send(n).unwrap();
                let (t0, tx) = tx_dones.recv().unwrap();
                let (t1, rx) = rx_dones.recv().unwrap();
                add(&mut row.tx, &tx);
                add(&mut row.rx, &rx);
                let d = t1.saturating_duration_since(t0);
                row.msgs += n;
                row.secs += d.as_secs_f64();
                d
            });
        });
        // Hang up: both threads leave their loops.
        drop(tx_cmd);
        drop(rx_cmd);
    });
    if row.msgs > 0 {
        ROWS.lock().unwrap().push(row);
    }
}

fn throughput(c: &mut Criterion) {
    for place in placements() {
        let mut g = c.benchmark_group(format!("channel-{}", place.name));
        g.sample_size(10)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_millis(1_500));
        for policy in policies() {
            for len in SIZES {
                g.throughput(Throughput::Bytes(len as u64));
                throughput_one(&mut g, &place, policy, len);
            }
        }
        g.finish();
    }
}

/// 8-byte round trips, one per iteration, with an echo thread on the other core (or
/// the same one); the spin policies side by side.
fn round_trip(c: &mut Criterion) {
    for place in placements() {
        let mut g = c.benchmark_group(format!("channel-rtt/{}", place.name));
        g.sample_size(20)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(2))
            .throughput(Throughput::Elements(1));
        let spins = [
            ("spin-off", (0, SpinPolicy::Fixed)),
            ("spin-fixed-50us", (50, SpinPolicy::Fixed)),
            ("spin-adaptive-50us", (50, SpinPolicy::Adaptive)),
        ];
        for (name, spin) in spins {
            let (mut a, mut b) = channels(Batching::EventIndex, spin, 1 << 16);
            let (c0, c1) = (place.cores[0], place.cores[1]);
            let mut expired = 0u64;
            thread::scope(|s| {
                s.spawn(move || {
                    pin(c1);
                    let mut buf = [0u8; 8];
                    // A 1-byte message ends the echo.
                    while let Ok(8) = b.recv_blocking(&mut buf, None) {
                        b.send_blocking(&buf, None).expect("echo");
                    }
                });
                pin(c0);
                let mut buf = [0u8; 8];
                let mut i = 0u64;
                let before = *a.stats();
                g.bench_function(name, |bch| {
                    bch.iter_custom(|n| {
                        let t0 = Instant::now();
                        for _ in 0..n {
                            i += 1;
                            a.send_blocking(&i.to_le_bytes(), None).expect("ping");
                            let k = a.recv_blocking(&mut buf, None).expect("pong");
                            assert_eq!((k, u64::from_le_bytes(buf)), (8, i));
                        }
                        t0.elapsed()
                    });
                });
                expired = a.stats().spins_expired - before.spins_expired;
                a.send_blocking(&[0], None).expect("stop");
            });
            eprintln!(
                "channel-rtt/{}/{name}: the pinging side's spin budgets ran out {expired} times",
                place.name
            );
        }
        g.finish();
    }
}

fn print_summary() {
    let rows = ROWS.lock().unwrap();
    if rows.is_empty() {
        return;
    }
    eprintln!();
    eprintln!("doorbells per message (both sides' doorbells_rung / messages), all samples:");
    eprintln!(
        "{:<10} {:<11} {:>6} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8}",
        "place",
        "policy",
        "len",
        "messages",
        "MB/s",
        "Mmsg/s",
        "bell/msg",
        "tx/msg",
        "rx/msg",
        "wake/msg",
        "spur/msg",
        "msg/pub"
    );
    for r in rows.iter() {
        let m = r.msgs as f64;
        let secs = r.secs.max(1e-12);
        eprintln!(
            "{:<10} {:<11} {:>6} {:>10} {:>9.0} {:>9.3} {:>9.5} {:>9.5} {:>9.5} {:>9.5} {:>9.5} {:>8.1}",
            r.place,
            r.policy,
            r.len,
            r.msgs,
            m * r.len as f64 / secs / 1e6,
            m / secs / 1e6,
            (r.tx.doorbells_rung + r.rx.doorbells_rung) as f64 / m,
            r.tx.doorbells_rung as f64 / m,
            r.rx.doorbells_rung as f64 / m,
            (r.tx.wakeups + r.rx.wakeups) as f64 / m,
            (r.tx.spurious_wakeups + r.rx.spurious_wakeups) as f64 / m,
            m / (r.tx.publishes.max(1)) as f64,
        );
    }
    eprintln!(
        "(tx: the sender's doorbells (data), rx: the receiver's (space); wake: sleeps ended \
         by a doorbell; spur: wake-ups that found nothing to do)"
    );
}

// ---------------------------------------------------------------------------- router

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
    for flows in [1u32, 1024] {
        let mut r: MockRouter<'_> =
            Router::new(&t, ThresholdPolicy::default(), NullNet::default(), 64);
        let mut i = 0u32;
        g.bench_function(format!("router-{flows}-flows"), |b| {
            b.iter(|| {
                i = i.wrapping_add(1);
                let p = r
                    .send(black_box(&dst), i % flows, black_box(&payload))
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

/// The floor that ring size puts under doorbells per message when both sides must sleep
/// (one core, large messages): a cycle of "sender fills the ring, sleeps; receiver
/// drains it, sleeps" costs at least two doorbells, and carries at most
/// `data / (len + 8)` messages. Runs `msgs` 64 KiB messages on one core with
/// `Batching::STREAM` for several ring sizes and prints doorbells per message.
fn ring_size_check() {
    let len = 65536;
    let msgs = 20_000u64;
    let core = core_affinity::get_core_ids()
        .unwrap_or_default()
        .first()
        .copied();
    for data in [1u32 << 20, 4 << 20, 16 << 20, 64 << 20] {
        let (tx_ch, rx_ch) = channels(Batching::STREAM, (0, SpinPolicy::Fixed), data);
        let gate = Arc::new(Barrier::new(2));
        let (tx_cmd, tx_cmds) = mpsc::channel();
        let (rx_cmd, rx_cmds) = mpsc::channel();
        let (tx_done, tx_dones) = mpsc::channel();
        let (rx_done, rx_dones) = mpsc::channel();
        thread::scope(|s| {
            let g0 = gate.clone();
            s.spawn(move || sender(tx_ch, len, core, tx_cmds, g0, tx_done));
            let g1 = gate.clone();
            s.spawn(move || receiver(rx_ch, len, core, rx_cmds, g1, rx_done));
            tx_cmd.send(msgs).unwrap();
            rx_cmd.send(msgs).unwrap();
            let (t0, tx) = tx_dones.recv().unwrap();
            let (t1, rx) = rx_dones.recv().unwrap();
            drop((tx_cmd, rx_cmd));
            let secs = t1.saturating_duration_since(t0).as_secs_f64();
            eprintln!(
                "ring-size check: one-core stream {len} B, ring {:>2} MiB: {:.4} doorbells/msg \
                 (floor 2/{} = {:.4}), {:.0} MB/s",
                data >> 20,
                (tx.doorbells_rung + rx.doorbells_rung) as f64 / msgs as f64,
                data as usize / (len + 8),
                2.0 / (data as usize / (len + 8)) as f64,
                (msgs as usize * len) as f64 / secs / 1e6,
            );
        });
    }
}

/// The router's flow state, as `router.rs` keeps it (`FlowTx`: 16 bytes).
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

    for flows in [1u32, 1024] {
        let mut m: BTreeMap<u32, FlowTx> = BTreeMap::new();
        let mut i = 0u32;
        g.bench_function(format!("btreemap-entry-{flows}-flows"), |b| {
            b.iter(|| {
                i = i.wrapping_add(1);
                let f = m.entry(black_box(i % flows)).or_insert_with(new_flow);
                f.next_seq += 1;
                f.next_seq + u64::from(f.policy.streak)
            });
        });

        let mut h: hashbrown::HashMap<u32, FlowTx, foldhash::fast::FixedState> =
            hashbrown::HashMap::with_hasher(foldhash::fast::FixedState::with_seed(7));
        let mut i = 0u32;
        g.bench_function(format!("hashbrown-foldhash-entry-{flows}-flows"), |b| {
            b.iter(|| {
                i = i.wrapping_add(1);
                let f = h.entry(black_box(i % flows)).or_insert_with(new_flow);
                f.next_seq += 1;
                f.next_seq + u64::from(f.policy.streak)
            });
        });

        // A one-entry cache in front of the map: the last flow's key and its state
        // (in the router, an index into a `Vec<FlowTx>` the map points to).
        let mut m: BTreeMap<u32, usize> = BTreeMap::new();
        let mut v: Vec<FlowTx> = Vec::new();
        let mut last: Option<(u32, usize)> = None;
        let mut i = 0u32;
        g.bench_function(format!("cached-btreemap-entry-{flows}-flows"), |b| {
            b.iter(|| {
                i = i.wrapping_add(1);
                let flow = black_box(i % flows);
                let k = match last {
                    Some((f, k)) if f == flow => k,
                    _ => {
                        let k = *m.entry(flow).or_insert_with(|| {
                            v.push(new_flow());
                            v.len() - 1
                        });
                        last = Some((flow, k));
                        k
                    }
                };
                let f = &mut v[k];
                f.next_seq += 1;
                f.next_seq + u64::from(f.policy.streak)
            });
        });
    }
    g.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    router_miss(&mut c);
    router_hit(&mut c);
    router_parts(&mut c);
    throughput(&mut c);
    round_trip(&mut c);
    c.final_summary();
    print_summary();
    if std::env::args().any(|a| a == "--bench")
        && std::env::args().filter(|a| !a.starts_with('-')).count() == 1
    {
        // Only in an unfiltered run: a few seconds of one-off checks.
        ring_size_check();
    }
    router_load_check();
}
