//! loom models of the ring's protocols, with a 64-byte data area (room for one
//! maximum-size frame at a time, so the full and empty edges are hit at once).
//!
//! Run: `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test -p coresident-ring
//! --release --test loom_ring`. Budget: 3 preemptions; about a minute on 2 cores.
//!
//! Under loom the data area is loom atomics word by word, copied `Relaxed`: a missing
//! Release/Acquire shows up as a wrong payload byte, a lost wake-up as a deadlock
//! (the blocked side waits on a `loom::sync::Notify` that nobody signals).
#![cfg(loom)]

use coresident_ring::{
    region_size, Consumer, Producer, Readiness, RecvError, RingMemory, SendError,
};
use loom::sync::{Arc, Notify};
use loom::thread;

const SIZE: u32 = 64;

fn ring() -> (Producer, Consumer) {
    let mem = RingMemory::alloc(region_size(SIZE));
    let p = Producer::init(mem.clone(), SIZE).unwrap();
    let c = Consumer::attach(mem).unwrap();
    (p, c)
}

fn msg(i: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|k| i.wrapping_mul(31).wrapping_add(k as u8))
        .collect()
}

/// Frames published with one Release tag store arrive whole, in order, in every
/// interleaving; the producer reuses space only after the consumer released it.
#[test]
fn publish_and_consume() {
    loom::model(|| {
        let (mut p, mut c) = ring();
        let t = thread::spawn(move || {
            // 12- and 20-byte messages: frames of 24 and 32 bytes; the second send
            // must wait for the first frame's space (24 + 32 + 8 > 64).
            for (i, len) in [(1u8, 12usize), (2, 20)] {
                loop {
                    match p.send(i, &msg(i, len)) {
                        Ok(_) => break,
                        Err(SendError::Full) => thread::yield_now(),
                        Err(e) => panic!("{e}"),
                    }
                }
            }
        });
        let mut buf = [0u8; 32];
        for (i, len) in [(1u8, 12usize), (2, 20)] {
            loop {
                match c.recv(&mut buf) {
                    Ok(r) => {
                        assert_eq!((r.kind, &buf[..r.len]), (i, &msg(i, len)[..]));
                        break;
                    }
                    Err(RecvError::Empty) => thread::yield_now(),
                    Err(e) => panic!("{e}"),
                }
            }
        }
        t.join().unwrap();
    });
}

/// When the consumer decides to sleep, either it sees the new data or the producer is
/// told to notify. A lost wake-up would leave the consumer in `wait` forever.
#[test]
fn no_lost_wakeup_for_data() {
    loom::model(|| {
        let (mut p, mut c) = ring();
        let bell = Arc::new(Notify::new());
        let ring_it = bell.clone();
        let t = thread::spawn(move || {
            for i in 0..2u8 {
                if p.send(i, &[i; 4]).unwrap().is_required() {
                    ring_it.notify();
                }
            }
        });
        let mut buf = [0u8; 8];
        let mut got = 0u8;
        while got < 2 {
            match c.recv(&mut buf) {
                Ok(r) => {
                    assert_eq!((r.kind, buf[0]), (got, got));
                    got += 1;
                }
                Err(RecvError::Empty) => match c.arm_data(1).unwrap() {
                    Readiness::Ready => {}
                    Readiness::Armed => bell.wait(),
                },
                Err(e) => panic!("{e}"),
            }
        }
        t.join().unwrap();
    });
}

/// The symmetric property for space: when the producer decides to sleep on a full
/// ring, either it sees the released space or the consumer is told to notify. Both
/// sides block, so this also checks the two wake-up protocols together.
#[test]
fn no_lost_wakeup_for_space() {
    loom::model(|| {
        let (mut p, mut c) = ring();
        let data_bell = Arc::new(Notify::new());
        let space_bell = Arc::new(Notify::new());
        let (db, sb) = (data_bell.clone(), space_bell.clone());
        let t = thread::spawn(move || {
            // 24-byte messages: 32-byte frames, only one fits at a time.
            for i in 0..2u8 {
                loop {
                    match p.send(i, &[i; 24]) {
                        Ok(n) => {
                            if n.is_required() {
                                db.notify();
                            }
                            break;
                        }
                        Err(SendError::Full) => match p.arm_space(24).unwrap() {
                            Readiness::Ready => {}
                            Readiness::Armed => sb.wait(),
                        },
                        Err(e) => panic!("{e}"),
                    }
                }
            }
        });
        let mut buf = [0u8; 24];
        let mut got = 0u8;
        while got < 2 {
            match c.recv(&mut buf) {
                Ok(r) => {
                    assert_eq!((r.kind, buf[23]), (got, got));
                    if r.notify.is_required() {
                        space_bell.notify();
                    }
                    got += 1;
                }
                Err(RecvError::Empty) => match c.arm_data(1).unwrap() {
                    Readiness::Ready => {}
                    Readiness::Armed => data_bell.wait(),
                },
                Err(e) => panic!("{e}"),
            }
        }
        t.join().unwrap();
    });
}

/// Lazy release (`Consumer::set_lazy_release`): the receiving calls check the
/// producer's space request without the fence; the consumer calls `release` (fenced)
/// when a receive answers `Empty`, before it arms. Both sides block, as in
/// `no_lost_wakeup_for_space`: a wake-up the lazy checks miss must be caught by that
/// `release`, or the model deadlocks.
#[test]
fn no_lost_wakeup_for_space_with_lazy_release() {
    loom::model(|| {
        let (mut p, mut c) = ring();
        c.set_lazy_release(true);
        let data_bell = Arc::new(Notify::new());
        let space_bell = Arc::new(Notify::new());
        let (db, sb) = (data_bell.clone(), space_bell.clone());
        let t = thread::spawn(move || {
            for i in 0..2u8 {
                loop {
                    match p.send(i, &[i; 24]) {
                        Ok(n) => {
                            if n.is_required() {
                                db.notify();
                            }
                            break;
                        }
                        Err(SendError::Full) => match p.arm_space(24).unwrap() {
                            Readiness::Ready => {}
                            Readiness::Armed => sb.wait(),
                        },
                        Err(e) => panic!("{e}"),
                    }
                }
            }
        });
        let mut buf = [0u8; 24];
        let mut got = 0u8;
        while got < 2 {
            match c.recv(&mut buf) {
                Ok(r) => {
                    assert_eq!((r.kind, buf[23]), (got, got));
                    if r.notify.is_required() {
                        space_bell.notify();
                    }
                    got += 1;
                }
                Err(RecvError::Empty) => {
                    if c.release().unwrap().is_required() {
                        space_bell.notify();
                    }
                    match c.arm_data(1).unwrap() {
                        Readiness::Ready => {}
                        Readiness::Armed => data_bell.wait(),
                    }
                }
                Err(e) => panic!("{e}"),
            }
        }
        t.join().unwrap();
    });
}
