//! The real ring (`coresident-ring`) across two grant-mapped views of the
//! same pages in dom0: the gntalloc view holds the producer (it lays the
//! ring out), the gntdev view the consumer; an event-channel pair is the
//! doorbell whenever `publish`/`release` say the peer must be notified.
//!
//! Needs Xen: `#[ignore]`d on the host; `.ci/xen` runs it as job
//! `dom0-ring`. `XEN_RING_MESSAGES` overrides the message count.
#![cfg(target_os = "linux")]

use std::time::{Duration, Instant};

use coresident_ring::{Consumer, Producer, Readiness, RecvError, RingMemory, SendError};
use coresident_xen::{Evtchn, Gntalloc, Gntdev, PAGE_SIZE};

const DATA_SIZE: u32 = 32 * 1024;
/// A doorbell that does not ring within this long is a lost wake-up.
const STALL: Duration = Duration::from_secs(30);
const KIND: u8 = 3;

/// xorshift64*: deterministic, so the consumer regenerates what was sent.
fn rng(seed: u64) -> impl FnMut() -> u64 {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    move || {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        s.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// FNV-1a, 32 bits.
fn fnv(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// Message `seq`: `[seq u64][fnv32 of the rest][rest]`, 12 bytes up to
/// `max`; mostly small, one in 64 anywhere up to `max`.
fn message(seq: u64, max: usize, out: &mut Vec<u8>) {
    let mut r = rng(seq);
    let len = if r() % 64 == 0 {
        12 + (r() as usize) % (max - 11)
    } else {
        12 + (r() as usize) % 256
    };
    out.clear();
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    while out.len() < len {
        let w = r().to_le_bytes();
        let n = (len - out.len()).min(8);
        out.extend_from_slice(&w[..n]);
    }
    let sum = fnv(&out[12..]);
    out[8..12].copy_from_slice(&sum.to_le_bytes());
}

#[test]
#[ignore = "needs a Xen dom0"]
fn ring_dom0_gntalloc_gntdev() {
    let count: u64 = std::env::var("XEN_RING_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let ga = Gntalloc::open().unwrap();
    let gd = Gntdev::open().unwrap();
    let len = coresident_ring::region_size(DATA_SIZE);
    let pages = len.div_ceil(PAGE_SIZE);
    let share = ga.share(0, pages).unwrap();
    let map = gd.map(0, share.refs()).unwrap();
    assert_ne!(share.as_ptr(), map.as_ptr(), "two distinct views");

    // Two descriptors, one per side, so each side reads only its own port.
    let ev_tx = Evtchn::open().unwrap();
    let ev_rx = Evtchn::open().unwrap();
    let p_tx = ev_tx.bind_unbound(0).unwrap();
    let p_rx = ev_rx.bind_interdomain(0, p_tx).unwrap();

    // SAFETY:
    // - `share` maps `pages * PAGE_SIZE >= len` bytes, valid for reads and
    //   writes, and outlives the scoped threads that use `mem_tx`.
    // - Nothing makes a reference into those pages: the ring uses atomics
    //   and volatile copies only.
    let mem_tx = unsafe { RingMemory::new(share.as_ptr(), len) }.unwrap();
    // SAFETY: as above, for the gntdev view `map`.
    let mem_rx = unsafe { RingMemory::new(map.as_ptr(), len) }.unwrap();
    let mut tx = Producer::init(mem_tx, DATA_SIZE).unwrap();
    let mut rx = Consumer::attach(mem_rx).unwrap();
    let max = tx.max_message() as usize;
    let start = Instant::now();

    let (sent_bells, (recv_bells, bytes)) = std::thread::scope(|s| {
        let producer = s.spawn(|| {
            let mut bells = 0u64;
            let mut msg = Vec::new();
            let ring = |bells: &mut u64| {
                ev_tx.notify(p_tx).unwrap();
                *bells += 1;
            };
            for seq in 0..count {
                message(seq, max, &mut msg);
                loop {
                    match tx.write(KIND, &msg) {
                        Ok(()) => break,
                        Err(SendError::Full) => {
                            // Publish what is written before sleeping on space.
                            if tx.publish().unwrap().is_required() {
                                ring(&mut bells);
                            }
                            if tx.arm_space(msg.len()).unwrap() == Readiness::Armed {
                                assert!(
                                    ev_tx.wait_for(p_tx, STALL).unwrap(),
                                    "producer stalled at message {seq}: lost wake-up"
                                );
                            }
                        }
                        Err(e) => panic!("send {seq}: {e:?}"),
                    }
                }
                if seq % 16 == 15 && tx.publish().unwrap().is_required() {
                    ring(&mut bells);
                }
            }
            if tx.close().unwrap().is_required() {
                ring(&mut bells);
            }
            bells
        });
        let consumer = s.spawn(|| {
            let mut bells = 0u64;
            let mut bytes = 0u64;
            let mut buf = vec![0u8; max];
            let mut want = Vec::new();
            let mut seq = 0u64;
            loop {
                match rx.recv(&mut buf) {
                    Ok(r) => {
                        message(seq, max, &mut want);
                        let got = &buf[..r.len];
                        assert_eq!(r.kind, KIND, "kind of message {seq}");
                        assert_eq!(r.len, want.len(), "length of message {seq}");
                        assert_eq!(got[..8], seq.to_le_bytes(), "sequence number");
                        let sum = u32::from_le_bytes(got[8..12].try_into().unwrap());
                        assert_eq!(sum, fnv(&got[12..]), "checksum of message {seq}");
                        assert!(got == want, "contents of message {seq}");
                        bytes += r.len as u64;
                        seq += 1;
                        if r.notify.is_required() {
                            ev_rx.notify(p_rx).unwrap();
                            bells += 1;
                        }
                    }
                    Err(RecvError::Empty) => {
                        if rx.arm_data(1).unwrap() == Readiness::Armed {
                            assert!(
                                ev_rx.wait_for(p_rx, STALL).unwrap(),
                                "consumer stalled at message {seq}: lost wake-up"
                            );
                        }
                    }
                    Err(RecvError::Closed) => break,
                    Err(e) => panic!("recv {seq}: {e:?}"),
                }
            }
            assert_eq!(seq, count, "messages received");
            (bells, bytes)
        });
        (producer.join().unwrap(), consumer.join().unwrap())
    });
    let secs = start.elapsed().as_secs_f64();
    println!(
        "ring: {count} messages, {bytes} bytes in {secs:.1} s ({:.0} msg/s, {:.1} MB/s); \
         doorbells: producer {sent_bells}, consumer {recv_bells}",
        count as f64 / secs,
        bytes as f64 / secs / 1e6,
    );
}
