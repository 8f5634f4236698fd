//! Racing hostile peer: while our producer and our consumer work on a live ring, each
//! in its own thread, a third thread scribbles on the shared region: random words,
//! and plausible lies aimed at the frame being read, the indices and the wake-up
//! requests. Every call must return (a watchdog aborts the process if a worker makes
//! no progress for [`STALL`]), never panic, never touch memory outside the region
//! (run under AddressSanitizer by `.ci/run`), and every message handed out must be
//! within the ring's limits. Epochs without scribbling check that the honest data
//! path still delivers every byte in order under the same harness.
//!
//! Runtime: `HOSTILE_RACE_SECS` seconds (default 2). Not under Miri: the scribbler's
//! racing writes are the point, and Miri would rightly call them data races; Miri
//! runs the honest two-thread exchange below instead.
#![cfg(not(loom))]

mod common;

use common::*;
use coresident_ring::{Consumer, Producer, RecvError, SendError, KIND_PAD};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// The longest a worker may go without finishing an operation.
const STALL: Duration = Duration::from_secs(10);

/// A tiny deterministic generator (xorshift64*), one per thread.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn tag(kind: u8, pos: u32) -> u32 {
    (kind as u32) << 24 | ((pos >> 3) & 0xFF_FFFF)
}

/// Progress counters the watchdog reads: one per worker.
struct Progress {
    ops: [AtomicU64; 3],
}

/// The length of message `seq`: small, medium and up to the maximum.
fn len_of(seq: u64, max: usize) -> usize {
    let h = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 17;
    let len = match h % 4 {
        0 => (h >> 3) as usize % 9,
        1 => (h >> 3) as usize % 65,
        _ => (h >> 3) as usize % (max + 1),
    };
    len.min(max)
}

/// The producer's work: every sending call, in a random mix. Message `seq` is always
/// `payload(seq, len_of(seq))`, so an honest epoch's consumer can check every byte.
fn produce(p: &mut Producer, rng: &mut Rng, stop: &AtomicBool, ops: &AtomicU64) {
    let max = p.max_message() as usize;
    let mut seq = 0u64;
    while !stop.load(Relaxed) {
        let msg = payload(seq, len_of(seq, max));
        let r = match rng.below(9) {
            0 => {
                let next = payload(seq + 1, len_of(seq + 1, max));
                p.send_batch(1, &[&msg[..], &next[..]])
                    .map(|(n, _)| n as u64)
            }
            1 => match p.reserve(msg.len()) {
                Ok(mut r) => {
                    let _ = r.write_at(0, &msg);
                    r.commit(1, msg.len()).and_then(|()| p.publish()).map(|_| 1)
                }
                Err(e) => Err(e),
            },
            2 => p.arm_space(msg.len()).map(|_| 0),
            3 => p.consumer_position().map(|_| 0),
            4 => p
                .for_each_unconsumed(|v| {
                    assert!(v.len() <= max && v.kind() != KIND_PAD);
                    let _ = v.read_at(0, &mut [0u8; 16]);
                })
                .map(|_| 0),
            5 => match p.send(1, &vec![0; max + 1 + rng.below(3) as usize]) {
                Err(SendError::TooLarge { .. } | SendError::Corrupted(_) | SendError::Closed) => {
                    Ok(0)
                }
                other => panic!("an oversized message: {other:?}"),
            },
            _ => p.send(1, &msg).map(|_| 1),
        };
        match r {
            Ok(n) => seq += n,
            // Let the consumer run now and then, even on one loaded core.
            Err(SendError::Full) if rng.below(64) == 0 => std::thread::yield_now(),
            Err(SendError::Full) => {}
            // Poisoned or closed: the half stays so; it must keep answering.
            Err(SendError::Corrupted(_) | SendError::Closed) => std::thread::yield_now(),
            Err(e) => panic!("unexpected {e:?}"),
        }
        ops.fetch_add(1, Relaxed);
    }
}

/// The consumer's work: every receiving call, in a random mix. When `honest`, every
/// message must be the next one the producer sent, byte for byte; returns how many.
fn consume(
    c: &mut Consumer,
    rng: &mut Rng,
    stop: &AtomicBool,
    ops: &AtomicU64,
    honest: bool,
) -> u64 {
    let max = c.max_message() as usize;
    let mut next = 0u64;
    let mut buf = vec![0u8; max];
    let mut check = |kind: u8, bytes: &[u8]| {
        assert!(bytes.len() <= max && kind != KIND_PAD);
        if honest {
            assert_eq!(
                bytes,
                &payload(next, len_of(next, max))[..],
                "message {next}"
            );
        }
        next += 1;
    };
    while !stop.load(Relaxed) {
        let r = match rng.below(6) {
            0 => c
                .recv_batch(1 + rng.below(4) as usize, |v| {
                    let mut m = vec![0u8; v.len()];
                    assert_eq!(v.read_at(0, &mut m), v.len());
                    check(v.kind(), &m);
                })
                .map(|_| ()),
            1 => match c.peek() {
                Ok(f) => {
                    let n = f.copy_to(&mut buf).unwrap();
                    check(f.kind(), &buf[..n]);
                    f.consume().map(|_| ())
                }
                Err(e) => Err(e),
            },
            2 => c.arm_data(1 + rng.below(max as u64) as u32).map(|_| ()),
            3 => c.release().map(|_| ()),
            _ => match c.recv(&mut buf) {
                Ok(r) => {
                    check(r.kind, &buf[..r.len]);
                    Ok(())
                }
                Err(e) => Err(e),
            },
        };
        match r {
            Err(RecvError::Empty) if rng.below(64) == 0 => std::thread::yield_now(),
            Ok(()) | Err(RecvError::Empty) => {}
            Err(RecvError::BufferTooSmall { .. }) => panic!("max_message bytes were too small"),
            Err(RecvError::Corrupted(_) | RecvError::Closed) => {
                assert!(!honest, "an honest epoch saw {r:?}");
                std::thread::yield_now()
            }
            Err(e) => panic!("unexpected {e:?}"),
        }
        ops.fetch_add(1, Relaxed);
    }
    next
}

/// The hostile peer: stores into the live region until `stop`.
fn scribble(mem: &Mem, size: u32, rng: &mut Rng, stop: &AtomicBool, ops: &AtomicU64) {
    let words = mem.len() / 4;
    while !stop.load(Relaxed) {
        let read = mem.peek(READ);
        let write = mem.peek(WRITE);
        let slot = |pos: u32| DATA + (pos & (size - 1) & !7) as usize;
        match rng.below(10) {
            // Any word, any value.
            0 | 1 => mem.poke(4 * rng.below(words as u64) as usize, rng.next() as u32),
            // The frame being read: a tag that looks published, a length near a limit.
            2 => mem.poke(slot(read) + 4, tag(rng.below(256) as u8, read)),
            3 => mem.poke(
                slot(read),
                [0, 8, size / 2 - 8, size / 2, size - 8, u32::MAX][rng.below(6) as usize],
            ),
            // Indices that are nearly right, or lie by whole frames or areas.
            4 => mem.poke(
                WRITE,
                read.wrapping_add(8 * rng.below(u64::from(size) / 4) as u32),
            ),
            5 => mem.poke(READ, write.wrapping_sub(8 * rng.below(8) as u32)),
            6 => mem.poke(WRITE, write.wrapping_add(size)),
            // The wake-up requests and the closed flags.
            7 => mem.poke(
                [SPACE_EVENT, DATA_EVENT, PROD_CLOSED, CONS_CLOSED][rng.below(4) as usize],
                rng.next() as u32 & 0x3FF,
            ),
            // A padding frame where there should be a message.
            8 => {
                mem.poke(slot(read), size - (read & (size - 1)) - 8);
                mem.poke(slot(read) + 4, tag(KIND_PAD, read));
            }
            // A pause: let the halves make progress between lies.
            _ => std::thread::sleep(Duration::from_micros(rng.below(50))),
        }
        ops.fetch_add(1, Relaxed);
    }
}

/// Aborts the process (a hung worker cannot be joined) if a worker stalls.
fn watchdog(progress: &Progress, done: &AtomicBool, workers: usize) {
    let mut last = [0u64; 3];
    let mut since = [Instant::now(); 3];
    while !done.load(Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
        for i in 0..workers {
            let now = progress.ops[i].load(Relaxed);
            if now != last[i] {
                (last[i], since[i]) = (now, Instant::now());
            } else if since[i].elapsed() > STALL {
                eprintln!("worker {i} made no progress for {STALL:?}: a hang");
                std::process::abort();
            }
        }
    }
}

#[test]
#[cfg_attr(miri, ignore = "deliberate data races with a scribbler")]
fn our_halves_survive_a_racing_scribbler() {
    let secs: u64 = std::env::var("HOSTILE_RACE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let t0 = Instant::now();
    let (mut epochs, mut quiet, mut delivered, mut total) = (0u64, 0u64, 0u64, [0u64; 3]);
    while t0.elapsed() < Duration::from_secs(secs) {
        epochs += 1;
        let size = [64u32, 256, 4096][(epochs % 3) as usize];
        let hostile = epochs % 4 != 0;
        let mem = Mem::for_ring(size);
        // Start near the wrap of the free-running indices on some epochs.
        let start = if epochs % 2 == 0 {
            0
        } else {
            0u32.wrapping_sub(8 * 5)
        };
        mem.poke(READ, start);
        mem.poke(WRITE, start);
        let _ = Producer::init(mem.ring_memory(), size).unwrap();
        mem.poke(READ, start);
        mem.poke(WRITE, start);
        let mut p = Producer::attach(mem.ring_memory()).unwrap();
        let mut c = Consumer::attach(mem.ring_memory()).unwrap();
        let stop = AtomicBool::new(false);
        let done = AtomicBool::new(false);
        let progress = Progress {
            ops: [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)],
        };
        let seed = epochs.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let got = std::thread::scope(|s| {
            let prod = s.spawn(|| produce(&mut p, &mut Rng(seed), &stop, &progress.ops[0]));
            let cons = s.spawn(|| {
                consume(
                    &mut c,
                    &mut Rng(seed ^ 1),
                    &stop,
                    &progress.ops[1],
                    !hostile,
                )
            });
            if hostile {
                s.spawn(|| scribble(&mem, size, &mut Rng(seed ^ 2), &stop, &progress.ops[2]));
            }
            s.spawn(|| watchdog(&progress, &done, if hostile { 3 } else { 2 }));
            std::thread::sleep(Duration::from_millis(25));
            stop.store(true, Relaxed);
            prod.join().unwrap();
            let got = cons.join().unwrap();
            done.store(true, Relaxed);
            got
        });
        for (i, t) in total.iter_mut().enumerate() {
            *t += progress.ops[i].load(Relaxed);
        }
        if !hostile {
            quiet += 1;
            delivered += got;
        }
        // `p` and `c` were declared after `mem`: they drop first.
    }
    eprintln!(
        "{epochs} epochs ({quiet} quiet, {delivered} messages checked) in {:?}: {} producer, \
         {} consumer, {} scribbler operations",
        t0.elapsed(),
        total[0],
        total[1],
        total[2]
    );
    assert!(total[0] > 0 && total[1] > 0 && delivered > 0);
}

/// The honest exchange between two threads, every byte checked: under Miri (`.ci/run`)
/// its data-race detector checks that every volatile payload copy is ordered by the
/// frame tags' Release/Acquire pair (loom checks the same protocol exhaustively on a
/// tiny ring; this runs the real memory and copy code).
#[test]
fn two_threads_exchange_every_byte() {
    let n: u64 = if cfg!(miri) { 40 } else { 20_000 };
    let size = 256u32;
    let mem = Mem::for_ring(size);
    let mut p = Producer::init(mem.ring_memory(), size).unwrap();
    let mut c = Consumer::attach(mem.ring_memory()).unwrap();
    let max = p.max_message() as usize;
    std::thread::scope(|s| {
        s.spawn(|| {
            for seq in 0..n {
                let msg = payload(seq, len_of(seq, max));
                loop {
                    match p.send(1, &msg) {
                        Ok(_) => break,
                        Err(SendError::Full) => std::thread::yield_now(),
                        Err(e) => panic!("{e}"),
                    }
                }
            }
        });
        let mut buf = vec![0u8; max];
        for seq in 0..n {
            let got = loop {
                match c.recv(&mut buf) {
                    Ok(r) => break r,
                    Err(RecvError::Empty) => std::thread::yield_now(),
                    Err(e) => panic!("{e}"),
                }
            };
            assert_eq!(&buf[..got.len], &payload(seq, len_of(seq, max))[..]);
        }
    });
}
