//! The conformance suite every [`Transport`] passes: the mock, the host transport and
//! Xen run these same functions (feature `conformance`).
//!
//! - [`rendezvous_refuses_garbage`]: malformed rendezvous bytes are errors, not panics.
//! - [`exchange`]: offer, accept, then both sides send `messages` messages of random
//!   sizes (0 to the maximum) with checksums to each other at once, with blocking
//!   receives and sends, so doorbells and wake-ups are exercised both ways; then one
//!   side closes and the other sees `PeerGone` after receiving everything.

use crate::{
    Channel, ChannelConfig, ChannelError, ChannelLayout, PendingOffer, StdClock, Transport,
};
use core::time::Duration;
use std::format;
use std::string::String;
use std::time::Instant;
use std::vec;
use std::vec::Vec;

/// What [`exchange`] measured.
#[derive(Clone, Copy, Debug, Default)]
pub struct Report {
    /// Messages each side sent (and the other received and verified).
    pub messages: u64,
    /// Payload bytes each side sent.
    pub bytes: u64,
    /// Doorbells rung by both sides together, per message (both directions).
    pub doorbells_per_message: f64,
    /// Wake-ups from sleeping on the doorbell, both sides.
    pub wakeups: u64,
    /// Wall time of the exchange.
    pub elapsed: Duration,
}

/// Malformed rendezvous bytes give an error from `accept`, never a panic.
///
/// # Errors
///
/// A description of the first garbage input that was accepted.
pub fn rendezvous_refuses_garbage<T: Transport>(t: &mut T) -> Result<(), String> {
    let mut inputs: Vec<Vec<u8>> = vec![
        Vec::new(),
        vec![0],
        vec![0xFF; 7],
        vec![0; 64],
        vec![0xA5; 4096],
    ];
    let mut x = 0x1234_5678_9ABC_DEF0u64;
    for len in [1usize, 13, 16, 31, 100, 512] {
        inputs.push((0..len).map(|_| rng(&mut x) as u8).collect());
    }
    for input in inputs {
        if t.accept(&input).is_ok() {
            return Err(format!("accept took {} garbage bytes", input.len()));
        }
    }
    Ok(())
}

/// Runs the two-way exchange between an offering and an accepting transport.
///
/// # Errors
///
/// A description of the first failure: a set-up error, a wrong or missing message, a
/// channel error, or a side that made no progress for 30 s (a watchdog, not a timing
/// assertion).
pub fn exchange<T>(
    mut offerer: T,
    mut acceptor: T,
    layout: ChannelLayout,
    messages: u64,
) -> Result<Report, String>
where
    T: Transport + Send,
    T::Region: Send,
    T::Doorbell: Send,
    T::Pending: Send,
{
    let mut bytes = [0u8; 1024];
    let (pending, n) = offerer
        .offer(layout, &mut bytes)
        .map_err(|e| format!("offer: {e}"))?;
    let rendezvous = bytes[..n].to_vec();
    let t0 = Instant::now();
    let config = ChannelConfig {
        liveness: None,
        ..ChannelConfig::default()
    };
    let (a, b) = std::thread::scope(|s| {
        let acc = s.spawn(move || {
            let link = acceptor
                .accept(&rendezvous)
                .map_err(|e| format!("accept: {e}"))?;
            let ch = Channel::new(link, config, StdClock::default())
                .map_err(|e| format!("acceptor attach: {e}"))?;
            run_side(ch, messages, 2)
        });
        let off = (|| {
            let link = pending
                .complete(Some(Duration::from_secs(30)))
                .map_err(|e| format!("complete: {e}"))?;
            let ch = Channel::new(link, config, StdClock::default())
                .map_err(|e| format!("offerer attach: {e}"))?;
            run_side(ch, messages, 1)
        })();
        let acc = acc
            .join()
            .map_err(|_| String::from("acceptor thread panicked"))?;
        Ok::<_, String>((off?, acc?))
    })?;
    let total_msgs = (a.0.sent_messages + b.0.sent_messages) as f64;
    Ok(Report {
        messages,
        bytes: a.0.sent_bytes,
        doorbells_per_message: (a.0.doorbells_rung + b.0.doorbells_rung) as f64
            / total_msgs.max(1.0),
        wakeups: a.0.wakeups + b.0.wakeups,
        elapsed: t0.elapsed(),
    })
}

/// One side: send `n` messages and receive `n`, verifying each; then the side with
/// `seed == 1` closes and the other waits to see the peer gone.
fn run_side<R, D>(
    mut ch: Channel<R, D, StdClock>,
    n: u64,
    seed: u64,
) -> Result<(crate::Stats, ()), String>
where
    R: crate::SharedRegion,
    D: crate::Doorbell,
{
    let max = ch.max_message();
    let max_in = ch.max_incoming();
    let mut tx_rng = seed;
    let mut rx_rng = 3 - seed;
    let (mut sent, mut received) = (0u64, 0u64);
    let mut out = vec![0u8; max];
    let mut buf = vec![0u8; max_in];
    let mut last_progress = Instant::now();
    let mut next: Option<usize> = None;
    while sent < n || received < n {
        let mut progress = false;
        if sent < n {
            let len = *next.get_or_insert_with(|| message(&mut tx_rng, &mut out, max));
            match ch.send(&out[..len]) {
                Ok(()) => {
                    sent += 1;
                    next = None;
                    progress = true;
                }
                Err(ChannelError::Full) => {}
                Err(e) => return Err(format!("send {sent}: {e}")),
            }
        }
        loop {
            match ch.recv(&mut buf) {
                Ok(len) => {
                    check(&mut rx_rng, &buf[..len], max_in, received)?;
                    received += 1;
                    progress = true;
                }
                Err(ChannelError::Empty) => break,
                // The peer finished and closed after we received everything it sent.
                Err(ChannelError::PeerGone) if received == n => break,
                Err(e) => return Err(format!("recv {received}: {e}")),
            }
        }
        if progress {
            last_progress = Instant::now();
            continue;
        }
        if last_progress.elapsed() > Duration::from_secs(30) {
            return Err(format!(
                "no progress for 30 s: sent {sent}, received {received} of {n}"
            ));
        }
        // Nothing moved: sleep on the doorbell for whichever we wait for.
        if received < n {
            match ch.recv_blocking(&mut buf, Some(Duration::from_millis(20))) {
                Ok(len) => {
                    check(&mut rx_rng, &buf[..len], max_in, received)?;
                    received += 1;
                    last_progress = Instant::now();
                }
                Err(ChannelError::TimedOut) => {}
                Err(e) => return Err(format!("recv_blocking {received}: {e}")),
            }
        } else if let Some(len) = next {
            match ch.send_blocking(&out[..len], Some(Duration::from_millis(20))) {
                Ok(()) => {
                    sent += 1;
                    next = None;
                    last_progress = Instant::now();
                }
                Err(ChannelError::TimedOut) => {}
                Err(e) => return Err(format!("send_blocking {sent}: {e}")),
            }
        }
    }
    let stats = *ch.stats();
    if seed == 1 {
        // Give the peer time to finish receiving before the region may go away.
        ch.flush().map_err(|e| format!("flush: {e}"))?;
        let _region = ch.close();
    } else {
        match ch.recv_blocking(&mut buf, Some(Duration::from_secs(30))) {
            Err(ChannelError::PeerGone) => {}
            other => {
                return Err(format!(
                    "after the peer closed, expected PeerGone, got {other:?}"
                ))
            }
        }
    }
    Ok((stats, ()))
}

fn rng(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// Fills `out` with the next message: a random length (biased to small, sometimes the
/// maximum), random bytes, and an 8-byte checksum at the end when it fits.
fn message(x: &mut u64, out: &mut [u8], max: usize) -> usize {
    let r = rng(x);
    let len = match r % 16 {
        0 => max,
        1 => 0,
        2..=5 => (r >> 8) as usize % (max + 1),
        _ => (r >> 8) as usize % 257.min(max + 1),
    };
    let body = len.saturating_sub(8);
    let mut sum = 0u64;
    for b in &mut out[..body] {
        *b = rng(x) as u8;
        sum = sum.wrapping_mul(31).wrapping_add(u64::from(*b));
    }
    if len >= 8 {
        out[body..len].copy_from_slice(&sum.to_le_bytes());
    } else {
        out[..len].fill(len as u8);
    }
    len
}

fn check(x: &mut u64, got: &[u8], max: usize, i: u64) -> Result<(), String> {
    let mut expect = vec![0u8; max];
    let len = message(x, &mut expect, max);
    if got.len() != len || got != &expect[..len] {
        return Err(format!(
            "message {i}: {} bytes differ from the {len} sent",
            got.len()
        ));
    }
    Ok(())
}
