//! The fuzzer plays the peer of a ring: between the operations of our producer and
//! consumer it writes arbitrary values into any word of the shared region (indices,
//! events, flags, header, frame headers, payload). Properties: no panic, no
//! out-of-bounds access (ASan), no hang; and while the peer has written nothing, every
//! message arrives intact and in order (a model queue).
#![no_main]

use coresident_ring::{region_size, Consumer, Producer, RecvError, RingMemory};
use libfuzzer_sys::fuzz_target;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};

const SIZE: u32 = 256;

#[repr(C, align(128))]
struct Region([u8; region_size(SIZE)]);

struct Input<'a>(&'a [u8]);
impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes([self.byte()?, self.byte()?, self.byte()?, self.byte()?]))
    }
}

fuzz_target!(|data: &[u8]| {
    let mut region = Box::new(Region([0; region_size(SIZE)]));
    let base = region.0.as_mut_ptr();
    // SAFETY: the box outlives both halves (dropped at the end of this closure, after
    // them) and is only accessed through them and the atomic pokes below.
    let mem = unsafe { RingMemory::new(base, region_size(SIZE)) }.unwrap();
    let mut tx = Producer::init(mem, SIZE).unwrap();
    let mut rx = Consumer::attach(mem).unwrap();
    let mut input = Input(data);
    let mut model: VecDeque<(u8, Vec<u8>)> = VecDeque::new();
    let mut pending: Vec<(u8, Vec<u8>)> = Vec::new();
    let mut tampered = false;
    let mut buf = vec![0u8; SIZE as usize];
    let mut seq = 0u8;
    while let Some(op) = input.byte() {
        match op % 9 {
            0 | 1 => {
                let len = input.byte().unwrap_or(0) as usize % 130;
                seq = seq.wrapping_add(1) % 0xFF;
                let msg = vec![seq; len];
                if tx.write(seq, &msg).is_ok() {
                    pending.push((seq, msg));
                }
                if op % 9 == 0 && tx.publish().is_ok() {
                    model.extend(pending.drain(..));
                }
            }
            2 => match rx.recv(&mut buf) {
                Ok(r) if !tampered => {
                    let (k, m) = model.pop_front().expect("message out of nowhere");
                    assert_eq!((r.kind, &buf[..r.len]), (k, &m[..]));
                }
                Err(RecvError::Empty) if !tampered => assert!(model.is_empty()),
                Err(RecvError::Corrupted(_)) if !tampered => panic!("corruption without a peer"),
                _ => {}
            },
            3 => {
                let max = input.byte().unwrap_or(1) as usize % 5;
                let _ = rx.recv_batch(max, |v| {
                    let mut b = [0u8; 64];
                    let _ = v.read_at(v.len() / 2, &mut b);
                    if !tampered {
                        let (k, m) = model.pop_front().expect("message out of nowhere");
                        assert_eq!((v.kind(), v.len()), (k, m.len()));
                    }
                });
            }
            4 => {
                if let Ok(f) = rx.peek() {
                    let _ = f.copy_to(&mut buf);
                    let _ = f.read_at(input.byte().unwrap_or(0) as usize, &mut [0; 16]);
                    if input.byte().unwrap_or(0) % 2 == 0 {
                        if !tampered {
                            model.pop_front();
                        }
                        let _ = f.consume();
                    }
                }
            }
            5 => {
                let _ = rx.arm_data(input.byte().unwrap_or(1) as u32);
                let _ = tx.arm_space(input.byte().unwrap_or(0) as usize);
            }
            6 => {
                let cap = input.byte().unwrap_or(0) as usize % 130;
                if let Ok(mut r) = tx.reserve(cap) {
                    let _ = r.write_at(0, &vec![7; cap]);
                    let _ = r.commit(7, cap);
                    pending.push((7, vec![7; cap]));
                }
            }
            _ => {
                // The peer writes one word anywhere in the region.
                let (Some(at), Some(v)) = (input.byte(), input.u32()) else { break };
                let word = at as usize % (region_size(SIZE) / 4);
                // SAFETY: `word * 4 + 4 <= region_size`, 4-aligned in a 128-aligned box;
                // every access to the region is atomic or volatile.
                let a = unsafe { AtomicU32::from_ptr(base.add(word * 4).cast::<u32>()) };
                a.store(v, Ordering::Relaxed);
                tampered = true;
            }
        }
    }
    drop((tx, rx));
    drop(region);
});
