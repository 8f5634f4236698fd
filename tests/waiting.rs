//! Issues 12 and 14, "waiting": spinning is a time budget that adapts, so that the
//! default is safe when both ends share one core. Proved by counting, never by timing:
//! both ends pinned to one CPU play ping-pong, and the channel's counters say how
//! many spin budgets ran out (each one a pure loss there: the peer could not run while
//! we spun) against how many messages went round.
#![cfg(not(loom))]

use coresident::{Channel, ChannelConfig, ChannelLayout, SpinPolicy, Stats, StdClock};
use coresident_mock::pair;
use std::time::Duration;

const ROUNDS: u32 = 2_000;

/// Pins the calling thread to CPU `cpu`; false where that is not possible.
fn pin(cpu: usize) -> bool {
    core_affinity::set_for_current(core_affinity::CoreId { id: cpu })
}

/// `ROUNDS` round trips of 8 bytes, both ends pinned to CPU 0; both sides' counters.
fn ping_pong_on_one_cpu(config: ChannelConfig) -> Option<(Stats, Stats)> {
    let (la, lb, _faults) = pair(ChannelLayout::symmetric(4096));
    let mut a = Channel::new(la, config, StdClock::default()).unwrap();
    let mut b = Channel::new(lb, config, StdClock::default()).unwrap();
    let t = Some(Duration::from_secs(30));
    let echo = std::thread::spawn(move || {
        if !pin(0) {
            return None;
        }
        let mut buf = [0u8; 8];
        for _ in 0..ROUNDS {
            let n = b.recv_blocking(&mut buf, t).unwrap();
            b.send_blocking(&buf[..n], t).unwrap();
        }
        Some(*b.stats())
    });
    if !pin(0) {
        return None;
    }
    let mut buf = [0u8; 8];
    for i in 0..ROUNDS {
        a.send_blocking(&u64::from(i).to_le_bytes(), t).unwrap();
        assert_eq!(a.recv_blocking(&mut buf, t).unwrap(), 8);
        assert_eq!(u64::from_le_bytes(buf), u64::from(i));
    }
    let sb = echo.join().unwrap()?;
    Some((*a.stats(), sb))
}

fn report(what: &str, (a, b): (Stats, Stats)) -> u64 {
    let expired = a.spins_expired + b.spins_expired;
    eprintln!(
        "{what}: {ROUNDS} round trips on one CPU: {expired} spin budgets ran out, {} spins \
         won, {} wake-ups",
        a.spins_won + b.spins_won,
        a.wakeups + b.wakeups
    );
    expired
}

/// The default: the cliff is gone. Each round trip has two blocking receives (one
/// per side); with the old fixed spin nearly every one of them spun its whole budget
/// in vain before sleeping. The adaptive budget gives up after a handful and then
/// probes one wait in up to 1024.
#[test]
fn the_default_spin_is_safe_on_one_shared_cpu() {
    let config = ChannelConfig {
        liveness: None,
        ..ChannelConfig::default()
    };
    assert_eq!(config.spin_policy, SpinPolicy::Adaptive);
    let Some(stats) = ping_pong_on_one_cpu(config) else {
        eprintln!("cannot pin to CPU 0 here: skipped");
        return;
    };
    let expired = report("adaptive (default)", stats);
    assert!(
        expired <= u64::from(ROUNDS) / 20,
        "{expired} of about {} waits spun their whole budget in vain",
        2 * ROUNDS
    );
}

/// The same with the budget fixed at the default cap: the cliff the adaptive policy
/// removes, shown by the same counters (and proof that the test above can fail).
#[test]
fn a_fixed_spin_is_the_cliff_on_one_shared_cpu() {
    let config = ChannelConfig {
        liveness: None,
        spin_policy: SpinPolicy::Fixed,
        ..ChannelConfig::default()
    };
    let Some(stats) = ping_pong_on_one_cpu(config) else {
        eprintln!("cannot pin to CPU 0 here: skipped");
        return;
    };
    let expired = report("fixed", stats);
    assert!(
        expired > u64::from(ROUNDS) / 2,
        "only {expired} fixed spins ran out: the scheduler let the peer run anyway"
    );
}
