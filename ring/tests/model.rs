//! The ring against a `VecDeque` model: random sequences of single, batch and in-place
//! sends and receives of random sizes, across many wraparounds (and across the 2^32
//! wrap of the free-running indices), deliver the same bytes in the same order,
//! nothing lost or duplicated.
#![cfg(not(loom))]

mod common;

use common::{payload, Mem, READ, WRITE};
use coresident_ring::{Consumer, Producer, RecvError, SendError};
use proptest::prelude::*;
use std::collections::VecDeque;

#[derive(Clone, Debug)]
enum Op {
    Send(usize),
    Write(usize),
    Publish,
    Batch(Vec<usize>),
    Reserve { cap: usize, len: usize },
    Recv,
    RecvSmall,
    RecvBatch(usize),
    PeekConsume,
    PeekDrop,
}

fn op(max: usize) -> impl Strategy<Value = Op> {
    let len = prop_oneof![0..=16usize, 0..=max, Just(max)];
    prop_oneof![
        4 => len.clone().prop_map(Op::Send),
        2 => len.clone().prop_map(Op::Write),
        1 => Just(Op::Publish),
        2 => prop::collection::vec(0..=max, 1..6).prop_map(Op::Batch),
        2 => (0..=max).prop_flat_map(|cap| (Just(cap), 0..=cap)).prop_map(|(cap, len)| Op::Reserve { cap, len }),
        4 => Just(Op::Recv),
        1 => Just(Op::RecvSmall),
        2 => (1..6usize).prop_map(Op::RecvBatch),
        2 => Just(Op::PeekConsume),
        1 => Just(Op::PeekDrop),
    ]
}

/// A ring of `data_size` whose indices start at `start`, and the memory behind it.
pub fn ring_at(data_size: u32, start: u32) -> (Mem, Producer, Consumer) {
    let mem = Mem::for_ring(data_size);
    let _ = Producer::init(mem.ring_memory(), data_size).unwrap();
    mem.poke(WRITE, start);
    mem.poke(READ, start);
    let p = Producer::attach(mem.ring_memory()).unwrap();
    let c = Consumer::attach(mem.ring_memory()).unwrap();
    (mem, p, c)
}

struct Model {
    published: VecDeque<(u8, Vec<u8>)>,
    pending: Vec<(u8, Vec<u8>)>,
    seq: u64,
}

impl Model {
    fn next(&mut self, len: usize) -> (u8, Vec<u8>) {
        self.seq += 1;
        ((self.seq % 0xFF) as u8, payload(self.seq, len))
    }
    fn publish(&mut self) {
        self.published.extend(self.pending.drain(..));
    }
    fn expect(&mut self, kind: u8, bytes: &[u8]) {
        let (k, b) = self
            .published
            .pop_front()
            .expect("received a message the model does not have");
        assert_eq!((kind, bytes), (k, &b[..]), "wrong message");
    }
    fn empty(&self) -> bool {
        self.published.is_empty()
    }
    fn idle(&self) -> bool {
        self.published.is_empty() && self.pending.is_empty()
    }
}

fn run(data_size: u32, start: u32, lazy: bool, ops: Vec<Op>) {
    let (_mem, mut p, mut c) = ring_at(data_size, start);
    // Lazy release changes when the space request is checked, never what is read.
    c.set_lazy_release(lazy);
    let max = p.max_message() as usize;
    let mut m = Model {
        published: VecDeque::new(),
        pending: Vec::new(),
        seq: 0,
    };
    let mut buf = vec![0u8; max];
    let full_ok = |r: Result<(), SendError>, idle: bool| match r {
        Ok(()) => true,
        Err(SendError::Full) => {
            assert!(
                !idle,
                "a message of at most max_message must fit an idle ring"
            );
            false
        }
        Err(e) => panic!("unexpected {e}"),
    };
    for op in ops {
        match op {
            Op::Send(len) | Op::Write(len) => {
                let (k, b) = m.next(len);
                if full_ok(p.write(k, &b), m.idle()) {
                    m.pending.push((k, b));
                }
                if matches!(op, Op::Send(_)) {
                    let _ = p.publish().unwrap();
                    m.publish();
                }
            }
            Op::Publish => {
                let _ = p.publish().unwrap();
                m.publish();
            }
            Op::Batch(lens) => {
                let msgs: Vec<_> = lens.iter().map(|&l| m.next(l)).collect();
                let bodies: Vec<&[u8]> = msgs.iter().map(|(_, b)| &b[..]).collect();
                let kind = msgs[0].0;
                match p.send_batch(kind, &bodies) {
                    Ok((n, _)) => {
                        m.pending
                            .extend(msgs.into_iter().take(n).map(|(_, b)| (kind, b)));
                        m.publish();
                    }
                    Err(SendError::Full) => assert!(!m.idle()),
                    Err(e) => panic!("{e}"),
                }
            }
            Op::Reserve { cap, len } => {
                let (k, b) = m.next(len);
                let idle = m.idle();
                match p.reserve(cap) {
                    Ok(mut r) => {
                        assert_eq!(r.capacity(), cap);
                        let half = len / 2;
                        r.write_at(half, &b[half..]).unwrap();
                        r.write_at(0, &b[..half]).unwrap();
                        assert!(r.write_at(cap, &[1]).is_err());
                        r.commit(k, len).unwrap();
                        m.pending.push((k, b));
                    }
                    Err(SendError::Full) => assert!(!idle),
                    Err(e) => panic!("{e}"),
                }
            }
            Op::Recv => match c.recv(&mut buf) {
                Ok(got) => m.expect(got.kind, &buf[..got.len]),
                Err(RecvError::Empty) => assert!(m.empty()),
                Err(e) => panic!("{e}"),
            },
            Op::RecvSmall => {
                let mut small = [0u8; 3];
                match c.recv(&mut small) {
                    Ok(got) => m.expect(got.kind, &small[..got.len]),
                    Err(RecvError::BufferTooSmall { needed }) => {
                        assert_eq!(needed, m.published.front().unwrap().1.len())
                    }
                    Err(RecvError::Empty) => assert!(m.empty()),
                    Err(e) => panic!("{e}"),
                }
            }
            Op::RecvBatch(max) => {
                let mut got = Vec::new();
                match c.recv_batch(max, |v| {
                    let mut b = vec![0; v.len()];
                    assert_eq!(v.copy_to(&mut b).unwrap(), v.len());
                    got.push((v.kind(), b));
                }) {
                    Ok((n, _)) => {
                        assert_eq!(n, got.len());
                        assert!(n <= max);
                        for (k, b) in got {
                            m.expect(k, &b);
                        }
                    }
                    Err(RecvError::Empty) => assert!(m.empty()),
                    Err(e) => panic!("{e}"),
                }
            }
            Op::PeekConsume | Op::PeekDrop => match c.peek() {
                Ok(f) => {
                    let mut b = vec![0; f.len()];
                    // Read in two pieces through the in-place view.
                    let half = f.len() / 2;
                    assert_eq!(f.read_at(0, &mut b[..half]), half);
                    assert_eq!(f.read_at(half, &mut b[half..]), f.len() - half);
                    assert_eq!(f.read_at(f.len() + 1, &mut [0; 4]), 0);
                    let k = f.kind();
                    if matches!(op, Op::PeekConsume) {
                        let _ = f.consume().unwrap();
                        m.expect(k, &b);
                    } else {
                        let front = m.published.front().unwrap();
                        assert_eq!((k, &b[..]), (front.0, &front.1[..]));
                    }
                }
                Err(RecvError::Empty) => assert!(m.empty()),
                Err(e) => panic!("{e}"),
            },
        }
    }
    // The producer's walk of unconsumed frames is exactly what the model still holds:
    // published but not received, then written but not published.
    let mut walked = Vec::new();
    let n = p
        .for_each_unconsumed(|v| {
            let mut b = vec![0; v.len()];
            v.copy_to(&mut b).unwrap();
            walked.push((v.kind(), b));
        })
        .unwrap();
    let expected: Vec<_> = m
        .published
        .iter()
        .chain(m.pending.iter())
        .cloned()
        .collect();
    assert_eq!(n, expected.len());
    assert_eq!(walked, expected);
    // Drain: everything published arrives, in order.
    let _ = p.publish().unwrap();
    m.publish();
    while let Ok(got) = c.recv(&mut buf) {
        m.expect(got.kind, &buf[..got.len]);
    }
    assert!(m.empty(), "{} messages lost", m.published.len());
}

/// Miri's isolation forbids the file access of proptest's failure persistence.
fn persistence() -> Option<Box<dyn proptest::test_runner::FailurePersistence>> {
    if cfg!(miri) {
        None
    } else {
        ProptestConfig::default().failure_persistence
    }
}

fn cases() -> u32 {
    if cfg!(miri) {
        4
    } else {
        256
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: persistence(), ..ProptestConfig::default() })]

    #[test]
    fn ring_matches_queue_model(
        shift in 6u32..=12,
        start in prop_oneof![Just(0u32), Just(u32::MAX - 127), any::<u32>()],
        ops in prop::collection::vec(op(2040), 1..if cfg!(miri) { 40 } else { 400 }),
        lazy in any::<bool>(),
    ) {
        let data_size = 1u32 << shift;
        let max = coresident_ring::max_message(data_size) as usize;
        let ops = ops.into_iter().map(|o| clamp(o, max)).collect();
        run(data_size, start & !7, lazy, ops);
    }
}

fn clamp(op: Op, max: usize) -> Op {
    match op {
        Op::Send(l) => Op::Send(l.min(max)),
        Op::Write(l) => Op::Write(l.min(max)),
        Op::Batch(v) => Op::Batch(v.into_iter().map(|l| l.min(max)).collect()),
        Op::Reserve { cap, len } => Op::Reserve {
            cap: cap.min(max),
            len: len.min(cap.min(max)),
        },
        o => o,
    }
}

#[test]
fn many_laps_across_the_index_wrap() {
    let (_mem, mut p, mut c) = ring_at(256, u32::MAX - 1023);
    let mut buf = [0u8; 256];
    let laps = if cfg!(miri) { 200 } else { 20_000 };
    for i in 0..laps {
        let len = (i * 7) % 121;
        let b = payload(i as u64, len);
        let _ = p.send(1, &b).unwrap();
        let got = c.recv(&mut buf).unwrap();
        assert_eq!(&buf[..got.len], &b[..]);
    }
    assert!(
        p.position() < u32::MAX / 2,
        "the write index wrapped past 2^32"
    );
}

#[test]
fn max_message_always_fits_an_empty_ring_at_any_offset() {
    for shift in 6..=10 {
        let size = 1u32 << shift;
        let max = coresident_ring::max_message(size) as usize;
        for offset in (0..size).step_by(8) {
            let (_mem, mut p, mut c) = ring_at(size, offset);
            let b = payload(offset as u64, max);
            let _ = p.send(2, &b).unwrap();
            let mut buf = vec![0; max];
            assert_eq!(c.recv(&mut buf).unwrap().len, max);
            assert_eq!(buf, b);
            assert!(matches!(
                p.send(2, &vec![0; max + 1]),
                Err(SendError::TooLarge { .. })
            ));
        }
    }
}

#[test]
fn unpublished_frames_are_invisible() {
    let (_mem, mut p, mut c) = ring_at(1024, 0);
    p.write(3, b"one").unwrap();
    p.write(3, b"two").unwrap();
    assert_eq!(c.recv(&mut [0; 8]), Err(RecvError::Empty));
    assert_eq!(p.pending_bytes(), 32);
    let _ = p.publish().unwrap();
    assert_eq!(c.recv(&mut [0; 8]).unwrap().len, 3);
    assert_eq!(c.recv(&mut [0; 8]).unwrap().len, 3);
}

#[test]
fn close_delivers_everything_then_closed() {
    let (_mem, mut p, mut c) = ring_at(1024, 0);
    let _ = p.send(1, b"last words").unwrap();
    p.write(1, b"and these").unwrap();
    let _ = p.close().unwrap();
    let mut buf = [0; 16];
    assert_eq!(c.recv(&mut buf).unwrap().len, 10);
    assert_eq!(c.recv(&mut buf).unwrap().len, 9);
    assert_eq!(c.recv(&mut buf), Err(RecvError::Closed));
}

#[test]
fn consumer_close_is_seen_by_the_producer() {
    let (_mem, mut p, c) = ring_at(1024, 0);
    c.close().unwrap();
    assert_eq!(p.send(1, b"x"), Err(SendError::Closed));
    assert_eq!(p.send(1, b"x"), Err(SendError::Closed));
}

#[test]
fn consumer_position_tracks_consumption() {
    let (_mem, mut p, mut c) = ring_at(1024, 0);
    let _ = p.send(1, &[0; 10]).unwrap();
    let _ = p.send(1, &[0; 10]).unwrap();
    assert_eq!(p.consumer_position().unwrap(), 0);
    c.recv(&mut [0; 16]).unwrap();
    assert_eq!(p.consumer_position().unwrap(), 24);
}
