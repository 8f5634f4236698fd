//! Quickstart: a second of 64-byte messages, then a second of 64 KiB messages, through a
//! `coresident-ring` from a thread on one core to a thread on another; prints messages/s
//! and GB/s. Each message carries its sequence number, checked on arrival.
//!
//! `cargo run --release --example quickstart`

use coresident_ring::{region_size, Consumer, Producer, RecvError, RingMemory, SendError};
use std::time::{Duration, Instant};

const DATA: u32 = 1 << 20; // 1 MiB data area

/// The ring's memory must be 128-byte aligned.
#[repr(C, align(128))]
#[derive(Clone, Copy)]
struct Line([u8; 128]);

fn main() {
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    // On one core, pin nothing and yield instead of spinning.
    let pin = (cores.len() >= 2).then(|| (cores[0], cores[1]));
    let wait = || match pin {
        Some(_) => std::hint::spin_loop(),
        None => std::thread::yield_now(),
    };
    for len in [64, 64 << 10] {
        let lines = region_size(DATA).div_ceil(128);
        let mut mem = vec![Line([0; 128]); lines].into_boxed_slice();
        // SAFETY: `mem` is one allocation of `lines * 128` bytes that outlives both
        // halves (they end with the scope below), and nothing touches it but the ring.
        let ring = unsafe { RingMemory::new(mem.as_mut_ptr().cast(), lines * 128) }.unwrap();
        let mut tx = Producer::init(ring, DATA).unwrap(); // lays the ring out
        let mut rx = Consumer::attach(ring).unwrap();
        let start = Instant::now();
        let (count, elapsed) = std::thread::scope(|s| {
            s.spawn(move || {
                if let Some((c, _)) = pin {
                    core_affinity::set_for_current(c);
                }
                let mut msg = vec![0u8; len];
                for seq in 1u64.. {
                    msg[..8].copy_from_slice(&seq.to_le_bytes());
                    msg[len - 1] = seq as u8;
                    while let Err(e) = tx.send(0, &msg) {
                        assert_eq!(e, SendError::Full);
                        wait();
                    }
                    if seq % 256 == 0 && start.elapsed() > Duration::from_secs(1) {
                        break;
                    }
                }
                let _ = tx.close().unwrap(); // the consumer reads the rest, then `Closed`
            });
            let rx = s.spawn(move || {
                if let Some((_, c)) = pin {
                    core_affinity::set_for_current(c);
                }
                let (mut buf, mut count) = (vec![0u8; len], 0u64);
                loop {
                    match rx.recv(&mut buf) {
                        Ok(_) => {
                            count += 1;
                            assert_eq!(buf[..8], count.to_le_bytes());
                            assert_eq!(buf[len - 1], count as u8);
                        }
                        Err(RecvError::Empty) => wait(),
                        Err(RecvError::Closed) => return (count, start.elapsed()),
                        Err(e) => panic!("{e}"),
                    }
                }
            });
            rx.join().unwrap()
        });
        let secs = elapsed.as_secs_f64();
        println!(
            "{len:>6} B: {:>7.2} M messages/s  {:>6.2} GB/s  ({count} messages in {secs:.2} s)",
            count as f64 / secs / 1e6,
            (count * len as u64) as f64 / secs / 1e9,
        );
        drop(mem); // only now: both halves are gone
    }
}
