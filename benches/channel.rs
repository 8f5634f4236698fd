//! The channel core: throughput and doorbells per message for each batching policy, and
//! the round trip. (The router's groups are in `benches/router.rs`.)
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
//! **Round trip** (`channel-rtt/{cross-core,one-core}/{spin}`): 8 bytes each way,
//! `send_blocking` then `recv_blocking` on both sides, one round trip per iteration,
//! with spinning off, fixed at 50 µs (the old fixed count's behaviour, in time) and
//! adaptive under a 50 µs cap (the default). Issue 12's cliff: on one shared core a
//! fixed spin costs a whole budget per wait; the adaptive one must come close to
//! spinning off there, and close to the fixed one across cores.
//!
//! `cargo bench --bench channel` takes about three minutes; a filter narrows it, e.g.
//! `cargo bench --bench channel -- channel-rtt`.

use core_affinity::CoreId;
use coresident::{
    Batching, Channel, ChannelConfig, ChannelError, ChannelLayout, SpinPolicy, Stats, StdClock,
};
use coresident_mock::{MockDoorbell, MockRegion};
use criterion::{BenchmarkGroup, Criterion, Throughput};
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

fn main() {
    let mut c = Criterion::default().configure_from_args();
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
}
