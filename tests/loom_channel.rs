//! loom: the channel's batching notifier with event-index suppression, against a
//! blocking receiver. Properties: no lost wake-up (a receiver asleep while a message is
//! published would deadlock the model), and no wake-up storm (never more doorbells than
//! publishes).
//!
//! Run: `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test -p coresident
//! --release --test loom_channel`; a few seconds on 2 cores.
#![cfg(loom)]

use coresident::ring::{region_size, Consumer, Producer, RingMemory};
use coresident::{
    Batching, Channel, ChannelConfig, ChannelLayout, Clock, Doorbell, Role, SharedRegion,
    TransportError, Wake,
};
use loom::sync::{Arc, Notify};
use std::time::Duration;

const SIZE: u32 = 64;

/// A doorbell on a loom `Notify` (a permit: a ring before the wait is not lost).
struct Bell {
    mine: Arc<Notify>,
    peer: Arc<Notify>,
}

impl Doorbell for Bell {
    fn ring(&self) -> Result<(), TransportError> {
        self.peer.notify();
        Ok(())
    }
    fn wait(&self, _timeout: Option<Duration>) -> Result<Wake, TransportError> {
        // Every timeout is infinite here (the model has no time): a lost wake-up must
        // show as a deadlock, never be rescued by a nap or a re-check.
        self.mine.wait();
        Ok(Wake::Rung)
    }
}

/// The rings live in loom memory, not in a region: an empty one keeps the type happy.
struct NoRegion;
// SAFETY: zero bytes: nothing to read, write or alias.
unsafe impl SharedRegion for NoRegion {
    fn as_ptr(&self) -> *mut u8 {
        core::ptr::NonNull::dangling().as_ptr()
    }
    fn len(&self) -> usize {
        0
    }
}

struct Zero;
impl Clock for Zero {
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

type Ch = Channel<NoRegion, Bell, Zero>;

fn pair(batching: Batching) -> (Ch, Ch) {
    let (ab, ba) = (
        RingMemory::alloc(region_size(SIZE)),
        RingMemory::alloc(region_size(SIZE)),
    );
    let (bell_a, bell_b) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let config = ChannelConfig {
        batching,
        spin: 0,
        liveness: None,
        recheck: None,
        ..ChannelConfig::default()
    };
    let layout = ChannelLayout::symmetric(SIZE);
    let a = Channel::from_halves(
        Producer::init(ab.clone(), SIZE).unwrap(),
        Consumer::init(ba.clone(), SIZE).unwrap(),
        Bell {
            mine: bell_a.clone(),
            peer: bell_b.clone(),
        },
        NoRegion,
        layout,
        Role::Offerer,
        config,
        Zero,
    );
    let b = Channel::from_halves(
        Producer::attach(ba).unwrap(),
        Consumer::attach(ab).unwrap(),
        Bell {
            mine: bell_b,
            peer: bell_a,
        },
        NoRegion,
        layout,
        Role::Acceptor,
        config,
        Zero,
    );
    (a, b)
}

fn model(batching: Batching) {
    loom::model(move || {
        let (mut a, mut b) = pair(batching);
        let t = loom::thread::spawn(move || {
            for i in 0..2u8 {
                a.send(&[i; 4]).unwrap();
            }
            a.flush().unwrap();
            let s = *a.stats();
            assert!(s.doorbells_rung <= s.publishes, "a wake-up storm: {s:?}");
            a
        });
        let mut buf = [0u8; 8];
        for i in 0..2u8 {
            assert_eq!(b.recv_blocking(&mut buf, None).unwrap(), 4);
            assert_eq!(buf[0], i);
        }
        let _a = t.join().unwrap();
    });
}

#[test]
fn event_index_wakes_a_blocked_receiver() {
    model(Batching::EventIndex);
}

#[test]
fn batched_publish_wakes_a_blocked_receiver() {
    model(Batching::Batch {
        frames: 2,
        bytes: 1 << 20,
        max_delay: Duration::from_secs(3600),
    });
}
