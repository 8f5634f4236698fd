//! Every fault the mock can inject, with the outcome the core defines for it.
#![cfg(not(loom))]

use coresident::{
    Batching, Channel, ChannelConfig, ChannelError, ChannelLayout, ChannelState, StdClock,
};
use coresident_mock::{pair, Faults, MockDoorbell, MockRegion, Side};
use std::time::{Duration, Instant};

type Ch = Channel<MockRegion, MockDoorbell, StdClock>;

fn channels(config: ChannelConfig) -> (Ch, Ch, Faults) {
    let (a, b, faults) = pair(ChannelLayout::symmetric(4096));
    let a = Channel::new(a, config, StdClock::default()).unwrap();
    let b = Channel::new(b, config, StdClock::default()).unwrap();
    (a, b, faults)
}

fn quiet() -> ChannelConfig {
    ChannelConfig {
        spin: 0,
        liveness: None,
        ..ChannelConfig::default()
    }
}

fn msg(i: u32) -> Vec<u8> {
    let mut m = i.to_le_bytes().to_vec();
    m.resize(20 + (i as usize % 50), i as u8);
    m
}

#[test]
fn a_killed_sender_is_drained_then_reported_gone() {
    let (mut a, mut b, faults) = channels(quiet());
    for i in 0..3 {
        a.send(&msg(i)).unwrap();
    }
    faults.kill(Side::Offerer);
    let mut buf = [0u8; 128];
    for i in 0..3 {
        let n = b
            .recv_blocking(&mut buf, Some(Duration::from_secs(10)))
            .unwrap();
        assert_eq!(
            &buf[..n],
            &msg(i)[..],
            "what the dead peer published is still delivered"
        );
    }
    assert_eq!(
        b.recv_blocking(&mut buf, Some(Duration::from_secs(10))),
        Err(ChannelError::PeerGone)
    );
    assert_eq!(b.state(), ChannelState::PeerGone);
    assert_eq!(b.stats().fallbacks, 1);
}

#[test]
fn a_killed_receiver_leaves_its_unconsumed_messages_to_recover_in_order() {
    let (mut a, mut b, faults) = channels(quiet());
    for i in 0..6 {
        a.send(&msg(i)).unwrap();
    }
    let mut buf = [0u8; 128];
    b.recv(&mut buf).unwrap();
    b.recv(&mut buf).unwrap();
    faults.kill(Side::Acceptor);
    // The sender learns it when it next needs the peer: a blocking call.
    let big = vec![0u8; a.max_message()];
    let err = loop {
        match a.send_blocking(&big, Some(Duration::from_secs(10))) {
            Ok(()) => continue,
            Err(e) => break e,
        }
    };
    assert_eq!(err, ChannelError::PeerGone);
    let mut recovered = Vec::new();
    a.unconsumed(|v| {
        let mut m = vec![0; v.len()];
        v.copy_to(&mut m).unwrap();
        recovered.push(m);
    })
    .unwrap();
    let expected: Vec<Vec<u8>> = (2..6).map(msg).collect();
    assert_eq!(
        &recovered[..4],
        &expected[..],
        "unconsumed come back oldest first"
    );
    assert!(
        recovered[4..].iter().all(|m| m.len() == big.len()),
        "then the big ones that were still written"
    );
    assert_eq!(a.stats().fallbacks, 1);
}

#[test]
fn migration_is_peer_left_with_nothing_lost() {
    let (mut a, _b, faults) = channels(quiet());
    for i in 0..4 {
        a.send(&msg(i)).unwrap();
    }
    faults.migrate(Side::Acceptor);
    assert!(faults.migrated(Side::Acceptor));
    a.peer_left(); // the control path's residency update
    assert_eq!(a.send(&msg(9)), Err(ChannelError::PeerGone));
    let mut n = 0;
    a.unconsumed(|_| n += 1).unwrap();
    assert_eq!(n, 4);
}

#[test]
fn a_corrupted_index_is_reported_counted_and_recoverable() {
    let (mut a, _b, faults) = channels(quiet());
    for i in 0..3 {
        a.send(&msg(i)).unwrap();
    }
    // The consumer index of a's ring jumps past everything a wrote.
    faults.poke(faults.ring_offset(Side::Offerer) + 384, 0x0100_0000);
    let big = vec![7u8; a.max_message()];
    let err = loop {
        match a.send(&big) {
            Ok(()) => continue,
            Err(e) => break e,
        }
    };
    assert!(matches!(err, ChannelError::Corrupted(_)), "{err:?}");
    assert_eq!(a.state(), ChannelState::Corrupted);
    assert_eq!((a.stats().corruptions, a.stats().fallbacks), (1, 1));
    assert!(
        matches!(a.send(b"x"), Err(ChannelError::Corrupted(_))),
        "a poisoned channel refuses"
    );
    // Recovery walks from the last valid consumer position: nothing is lost.
    let mut n = 0;
    a.unconsumed(|_| n += 1).unwrap();
    assert!(n >= 3);
}

#[test]
fn a_corrupted_frame_is_reported_to_the_receiver() {
    let (mut a, mut b, faults) = channels(quiet());
    a.send(&msg(0)).unwrap();
    faults.poke(faults.ring_offset(Side::Offerer) + 640, 1 << 30); // the frame's length
    let mut buf = [0u8; 128];
    assert!(matches!(b.recv(&mut buf), Err(ChannelError::Corrupted(_))));
    assert_eq!(b.stats().corruptions, 1);
}

#[test]
fn lost_doorbells_cost_latency_not_messages() {
    let config = ChannelConfig {
        spin: 0,
        liveness: None,
        recheck: Some(Duration::from_millis(10)),
        ..ChannelConfig::default()
    };
    let (mut a, mut b, faults) = channels(config);
    faults.drop_doorbells(u64::MAX);
    let t = std::thread::spawn(move || {
        for i in 0..200 {
            a.send_blocking(&msg(i), Some(Duration::from_secs(30)))
                .unwrap();
            if i % 20 == 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        a
    });
    let mut buf = [0u8; 128];
    for i in 0..200 {
        let n = b
            .recv_blocking(&mut buf, Some(Duration::from_secs(30)))
            .unwrap();
        assert_eq!(&buf[..n], &msg(i)[..]);
    }
    t.join().unwrap();
    assert!(
        faults.dropped() > 0,
        "the test must actually lose doorbells"
    );
}

#[test]
fn duplicated_doorbells_are_only_spurious_wakeups() {
    let (mut a, mut b, faults) = channels(quiet());
    faults.duplicate_doorbells(true);
    let t = std::thread::spawn(move || {
        for i in 0..100 {
            a.send(&msg(i)).unwrap();
            std::thread::sleep(Duration::from_micros(200));
        }
        a
    });
    let mut buf = [0u8; 128];
    for i in 0..100 {
        let n = b
            .recv_blocking(&mut buf, Some(Duration::from_secs(30)))
            .unwrap();
        assert_eq!(&buf[..n], &msg(i)[..]);
    }
    t.join().unwrap();
    // Each duplicate leaves a pending ring that wakes the next wait for nothing (or
    // ahead of its data): visible in the counters, harmless to the data.
    assert!(b.stats().wakeups > 0);
}

#[test]
fn delayed_doorbells_hold_the_sleeper_until_released_or_rechecked() {
    let config = ChannelConfig {
        spin: 0,
        liveness: None,
        recheck: None,
        ..ChannelConfig::default()
    };
    let (mut a, mut b, faults) = channels(config);
    faults.delay_doorbells(true);
    let mut buf = [0u8; 128];
    // b sleeps; a's doorbell is held back: b times out although the data is there...
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        a.send(&msg(1)).unwrap();
        a
    });
    let r = b.recv_blocking(&mut buf, Some(Duration::from_millis(300)));
    let _a = t.join().unwrap();
    // ...unless its final re-check after the timeout found it, which is also correct.
    match r {
        Err(ChannelError::TimedOut) => {
            faults.release_delayed();
            assert_eq!(
                b.recv_blocking(&mut buf, Some(Duration::from_secs(10)))
                    .unwrap(),
                msg(1).len()
            );
        }
        Ok(n) => assert_eq!(n, msg(1).len()),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn a_silent_peer_misses_the_liveness_bound() {
    let config = ChannelConfig {
        spin: 0,
        liveness: Some(Duration::from_millis(50)),
        ..ChannelConfig::default()
    };
    let (mut a, _b, _faults) = channels(config);
    a.send(&msg(0)).unwrap(); // b never reads it
    let t0 = Instant::now();
    let err = loop {
        match a.poll() {
            Ok(()) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => break e,
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "watchdog");
    };
    assert_eq!(err, ChannelError::PeerGone);
    assert_eq!(a.state(), ChannelState::PeerGone);
}

#[test]
fn batching_publishes_on_count_and_on_the_latency_bound() {
    let batching = Batching::Batch {
        frames: 4,
        bytes: 1 << 20,
        max_delay: Duration::from_millis(20),
    };
    let (mut a, mut b, _faults) = channels(ChannelConfig {
        batching,
        ..quiet()
    });
    let mut buf = [0u8; 128];
    for i in 0..3 {
        a.send(&msg(i)).unwrap();
    }
    assert_eq!(
        b.recv(&mut buf),
        Err(ChannelError::Empty),
        "three of four: not yet published"
    );
    a.send(&msg(3)).unwrap();
    for _ in 0..4 {
        b.recv(&mut buf).unwrap();
    }
    a.send(&msg(4)).unwrap();
    assert_eq!(b.recv(&mut buf), Err(ChannelError::Empty));
    std::thread::sleep(Duration::from_millis(25));
    a.poll().unwrap();
    assert_eq!(
        b.recv(&mut buf).unwrap(),
        msg(4).len(),
        "the latency bound published it"
    );
    assert_eq!(a.stats().publishes, 2);
}

#[test]
fn batching_at_saturation_rings_rarely() {
    for batching in [Batching::Always, Batching::EventIndex, Batching::STREAM] {
        let (mut a, mut b, _faults) = channels(ChannelConfig {
            batching,
            spin: 100,
            ..quiet()
        });
        let n = 20_000u32;
        let t = std::thread::spawn(move || {
            for i in 0..n {
                a.send_blocking(&msg(i), Some(Duration::from_secs(30)))
                    .unwrap();
            }
            a.flush().unwrap();
            *a.stats()
        });
        let mut buf = [0u8; 128];
        for i in 0..n {
            let len = b
                .recv_blocking(&mut buf, Some(Duration::from_secs(30)))
                .unwrap();
            assert_eq!(&buf[..len], &msg(i)[..]);
        }
        let sa = t.join().unwrap();
        let per_msg = sa.doorbells_rung as f64 / f64::from(n);
        eprintln!(
            "{batching:?}: {per_msg:.4} sender doorbells per message, {} publishes",
            sa.publishes
        );
        if batching == Batching::Always {
            assert_eq!(
                sa.doorbells_rung,
                u64::from(n),
                "the baseline rings for every message"
            );
        } else {
            assert!(
                sa.doorbells_rung < u64::from(n),
                "suppression must suppress something"
            );
        }
    }
}

#[test]
fn a_failed_doorbell_never_costs_the_message_just_received() {
    let (mut a, mut b, faults) = channels(quiet());
    // a fills the ring, then sleeps for space: its request is armed in shared memory.
    let big = vec![9u8; a.max_message()];
    while a.send(&big).is_ok() {}
    assert_eq!(
        a.send_blocking(&big, Some(Duration::from_millis(20))),
        Err(ChannelError::TimedOut)
    );
    faults.kill(Side::Offerer);
    // b's release crosses a's request, so b must ring a dead peer: that fails, and the
    // message b received is still b's.
    let mut buf = vec![0u8; b.max_incoming()];
    assert_eq!(b.recv(&mut buf), Ok(big.len()));
    assert_eq!(&buf[..big.len()], &big[..]);
    assert_eq!(b.state(), ChannelState::PeerGone);
    // What the dead peer published is still delivered, then PeerGone.
    while let Ok(n) = b.recv(&mut buf) {
        assert_eq!(n, big.len());
    }
    assert_eq!(b.recv(&mut buf), Err(ChannelError::PeerGone));
}
