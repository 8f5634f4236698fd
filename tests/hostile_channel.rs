//! Issue 17 at the channel level: a peer that lies in shared memory, or dies without a
//! word, must never keep a call past its timeout, and must be reported. Every test
//! runs the call under test on a thread and watches it with a watchdog (a bound on no
//! progress, never on runtime): a hang fails the test instead of hanging it.
#![cfg(not(loom))]

use coresident::ring::Corruption;
use coresident::{
    Batching, Channel, ChannelConfig, ChannelError, ChannelLayout, ChannelState, StdClock,
};
use coresident_mock::{pair, Faults, MockDoorbell, MockRegion, Side};
use std::sync::mpsc;
use std::time::Duration;

type Ch = Channel<MockRegion, MockDoorbell, StdClock>;

/// Offsets inside one ring (the layout in `coresident_ring::layout`).
const WRITE: usize = 128;
const DATA: usize = 640;

/// How long a call may show no sign of returning before the test calls it a hang.
const WATCHDOG: Duration = Duration::from_secs(20);

fn channels(data: u32, config: ChannelConfig) -> (Ch, Ch, Faults) {
    let (a, b, faults) = pair(ChannelLayout::symmetric(data));
    let a = Channel::new(a, config, StdClock::default()).unwrap();
    let b = Channel::new(b, config, StdClock::default()).unwrap();
    (a, b, faults)
}

/// Runs `f` on a thread; panics if it has not returned within the watchdog.
fn watched<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(WATCHDOG) {
        Ok(v) => v,
        Err(_) => panic!("{what}: no return within {WATCHDOG:?} (a hang)"),
    }
}

/// Finding 1: the peer stores `write = read + 8` and publishes nothing. The old
/// `recv_blocking` spun between `arm_data` (ready, by `write`) and `recv` (empty, by
/// the tag) forever, at 100% CPU, past its 200 ms timeout.
#[test]
fn recv_blocking_returns_against_a_lying_write_index() {
    for (batching, bad) in [
        (Batching::EventIndex, 8u32),
        (Batching::EventIndex, 4000),
        // STREAM waits for many bytes: only `write` could say they are there.
        (Batching::STREAM, 4096),
        (Batching::STREAM, 2048),
    ] {
        let config = ChannelConfig {
            batching,
            liveness: None,
            ..ChannelConfig::default()
        };
        let (_a, mut b, faults) = channels(4096, config);
        faults.poke(faults.ring_offset(Side::Offerer) + WRITE, bad);
        let r = watched("recv_blocking", move || {
            let mut buf = [0u8; 64];
            let r = b.recv_blocking(&mut buf, Some(Duration::from_millis(200)));
            (r, b.state())
        });
        assert_eq!(
            r,
            (
                Err(ChannelError::Corrupted(Corruption::WriteIndex {
                    write: bad
                })),
                ChannelState::Corrupted
            ),
            "{batching:?}, write = {bad}"
        );
    }
}

/// Issue 16: a poisoned channel answered every later call with `OutOfBounds`, whatever
/// the evidence was.
#[test]
fn a_corrupted_channel_keeps_reporting_the_real_corruption() {
    let config = ChannelConfig {
        liveness: None,
        ..ChannelConfig::default()
    };
    let (mut a, mut b, faults) = channels(4096, config);
    a.send(b"hello").unwrap();
    faults.poke(faults.ring_offset(Side::Offerer) + DATA + 4, 0x00AB_CDEF);
    let first = b.recv(&mut [0u8; 64]).unwrap_err();
    assert!(
        matches!(first, ChannelError::Corrupted(Corruption::Tag { .. })),
        "{first:?}"
    );
    assert_eq!(b.send(b"x"), Err(first), "send");
    assert_eq!(b.poll(), Err(first), "poll");
    assert_eq!(b.flush(), Ok(()), "nothing pending: nothing to refuse");
    assert_eq!(
        b.send_blocking(b"x", Some(Duration::from_millis(10))),
        Err(first)
    );
}

/// Finding 11 and issue 14: a peer that dies while it is busy (never asleep, so no
/// doorbell is due) was invisible to a sender that never blocks: `send` kept saying
/// `Ok` until the ring filled, then `Full` forever. The channel now asks the transport
/// every `PEER_PROBE_SENDS` sends at most, and at once when the ring is full.
#[test]
fn send_reports_a_dead_peer_within_a_bounded_number_of_messages() {
    let config = ChannelConfig {
        liveness: None,
        ..ChannelConfig::default()
    };
    // 1 MiB: about 43,000 small frames, far more than the probe interval.
    let (mut a, _b, faults) = channels(1 << 20, config);
    for _ in 0..100 {
        a.send(&[1u8; 16]).unwrap();
    }
    faults.kill(Side::Acceptor);
    let mut oks = 0u32;
    let err = loop {
        match a.send(&[2u8; 16]) {
            Ok(()) => oks += 1,
            Err(e) => break e,
        }
        assert!(oks < 1_000_000, "send never reported the dead peer");
    };
    assert_eq!(err, ChannelError::PeerGone, "after {oks} Ok");
    assert!(
        oks <= coresident::PEER_PROBE_SENDS,
        "{oks} sends said Ok after the peer died"
    );
    assert_eq!(a.state(), ChannelState::PeerGone);
    // Nothing is lost: every message written is still there to resend.
    let mut n = 0;
    a.unconsumed(|_| n += 1).unwrap();
    assert_eq!(n, 100 + oks as usize);
}

/// A full ring to a dead peer: `Full` forever before, `PeerGone` now.
#[test]
fn a_full_ring_to_a_dead_peer_is_peer_gone() {
    let config = ChannelConfig {
        liveness: None,
        ..ChannelConfig::default()
    };
    let (mut a, _b, faults) = channels(4096, config);
    while a.send(&[3u8; 200]).is_ok() {}
    faults.kill(Side::Acceptor);
    let err = watched("send to a full ring", move || loop {
        match a.send(&[3u8; 200]) {
            Err(ChannelError::Full) => std::thread::sleep(Duration::from_millis(1)),
            other => return other,
        }
    });
    assert_eq!(err, Err(ChannelError::PeerGone));
}

/// With `liveness: None` the old `poll` never asked the transport: `Ok` forever.
#[test]
fn poll_reports_a_dead_peer_without_a_liveness_bound() {
    let config = ChannelConfig {
        liveness: None,
        ..ChannelConfig::default()
    };
    let (mut a, _b, faults) = channels(4096, config);
    a.send(b"unread").unwrap();
    faults.kill(Side::Acceptor);
    let err = watched("poll", move || loop {
        match a.poll() {
            Ok(()) => std::thread::sleep(Duration::from_millis(1)),
            Err(e) => return (e, a.state()),
        }
    });
    assert_eq!(err, (ChannelError::PeerGone, ChannelState::PeerGone));
}

/// A receiver that only polls `recv` learns it too, once it has everything the dead
/// peer published.
#[test]
fn recv_reports_a_dead_peer_after_draining_it() {
    let config = ChannelConfig {
        liveness: None,
        ..ChannelConfig::default()
    };
    let (mut a, mut b, faults) = channels(4096, config);
    for i in 0..3u8 {
        a.send(&[i; 10]).unwrap();
    }
    faults.kill(Side::Offerer);
    let (got, err) = watched("recv", move || {
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            match b.recv(&mut buf) {
                Ok(n) => got.push(buf[..n].to_vec()),
                Err(ChannelError::Empty) => std::thread::yield_now(),
                Err(e) => return (got, e),
            }
        }
    });
    assert_eq!(got, (0..3u8).map(|i| vec![i; 10]).collect::<Vec<_>>());
    assert_eq!(err, ChannelError::PeerGone);
}

/// Finding 1's family, raced: a thread scribbles on both rings (plausible indices,
/// tags and lengths, and garbage) while both channels make blocking and non-blocking
/// calls with short timeouts. Every call must return: a worker without progress for
/// the watchdog's bound aborts the process. Runtime: `HOSTILE_RACE_SECS` (default 1).
#[test]
fn blocking_calls_return_while_a_peer_scribbles() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
    use std::time::Instant;
    let secs: u64 = std::env::var("HOSTILE_RACE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let t0 = Instant::now();
    let mut epochs = 0u64;
    let mut calls = [0u64; 2];
    while t0.elapsed() < Duration::from_secs(secs) {
        epochs += 1;
        let batching =
            [Batching::EventIndex, Batching::STREAM, Batching::Always][epochs as usize % 3];
        let config = ChannelConfig {
            batching,
            liveness: Some(Duration::from_millis(30)),
            recheck: Some(Duration::from_millis(5)),
            ..ChannelConfig::default()
        };
        let (a, b, faults) = channels(4096, config);
        let stop = AtomicBool::new(false);
        let ops = [AtomicU64::new(0), AtomicU64::new(0)];
        let finished = [AtomicBool::new(false), AtomicBool::new(false)];
        let len = faults.ring_offset(Side::Acceptor) + 640 + 4096;
        let work = |mut ch: Ch, i: usize| {
            let mut buf = vec![0u8; ch.max_incoming()];
            let mut k = 0u64;
            while !stop.load(Relaxed) {
                k += 1;
                let t = Some(Duration::from_millis(1 + k % 20));
                let _ = match k % 5 {
                    0 => ch.send_blocking(&[k as u8; 100], t).map(|_| 0),
                    1 => ch.recv(&mut buf),
                    2 => ch.send(&[k as u8; 8]).map(|_| 0),
                    3 => ch.poll().map(|_| 0),
                    _ => ch.recv_blocking(&mut buf, t),
                };
                ops[i].fetch_add(1, Relaxed);
            }
            finished[i].store(true, Relaxed);
        };
        std::thread::scope(|s| {
            s.spawn(|| work(a, 0));
            s.spawn(|| work(b, 1));
            s.spawn(|| {
                let mut x = epochs.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                while !stop.load(Relaxed) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let ring = [0, faults.ring_offset(Side::Acceptor)][(x & 1) as usize];
                    let small = (x >> 8) as u32 & 0xFFF8;
                    match (x >> 4) % 6 {
                        0 => faults.poke(ring + WRITE, small),
                        1 => faults.poke(ring + WRITE, small.wrapping_add(4096)),
                        2 => faults.poke(
                            ring + DATA + (small as usize & 4095) + 4,
                            (x >> 32) as u32 & 0x00FF_FFFF,
                        ),
                        3 => faults.poke(
                            ring + DATA + (small as usize & 4095),
                            (x >> 40) as u32 & 0x1FFF,
                        ),
                        4 => faults.poke(4 * ((x >> 20) as usize % (len / 4)), (x >> 32) as u32),
                        _ => std::thread::sleep(Duration::from_micros(x % 200)),
                    }
                }
            });
            // The watchdog: every worker must finish calls, whatever the scribbler does.
            let mut last = [0u64; 2];
            let mut since = [Instant::now(); 2];
            let end = Instant::now() + Duration::from_millis(100);
            while Instant::now() < end {
                std::thread::sleep(Duration::from_millis(5));
                for i in 0..2 {
                    let n = ops[i].load(Relaxed);
                    if n != last[i] {
                        (last[i], since[i]) = (n, Instant::now());
                    } else if since[i].elapsed() > WATCHDOG {
                        eprintln!("channel {i}: no call returned for {WATCHDOG:?}: a hang");
                        std::process::abort();
                    }
                }
            }
            stop.store(true, Relaxed);
            // The last calls must return too (the scope joins them).
            let t_stop = Instant::now();
            while !finished.iter().all(|f| f.load(Relaxed)) {
                if t_stop.elapsed() > WATCHDOG {
                    eprintln!("a channel's last call never returned: a hang");
                    std::process::abort();
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        for i in 0..2 {
            calls[i] += ops[i].load(Relaxed);
        }
    }
    eprintln!("{epochs} epochs, {calls:?} calls returned");
    assert!(calls.iter().all(|&c| c > 0));
}
