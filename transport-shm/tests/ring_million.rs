//! The real ring over this transport, across two processes: the child (this test
//! binary re-run with `CORESIDENT_SHM_CHILD=ring`) offers a channel, lays the rings out,
//! and streams 1,000,000 messages of random sizes, each with its sequence number and a
//! checksum; the parent checks every one, then sends back the count and a digest over
//! the other ring, which the child compares with its own. Blocking uses the ring's
//! event indices (`arm_data`, `arm_space`) and this crate's doorbells (bytes on the
//! rendezvous socket).
#![cfg(target_os = "linux")]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use coresident::{ChannelLayout, Doorbell, TransportError};
use coresident_ring::{Consumer, Producer, Readiness, RecvError, RingMemory, SendError};
use coresident_shm::{AcceptConfig, Endpoint, Listener, OfferConfig, PreparedOffer};

const ROLE_ENV: &str = "CORESIDENT_SHM_CHILD";
const SOCK_ENV: &str = "CORESIDENT_SHM_SOCK";
/// Messages streamed child -> parent.
const MESSAGES: u64 = 1_000_000;
/// Watchdog: the longest a side may make no progress at all; never asserted as a
/// runtime bound (the whole exchange may take as long as the machine needs).
const WATCHDOG: Duration = Duration::from_secs(30);
/// Payload kind of a data message, and of the parent's summary.
const DATA: u8 = 1;
const SUMMARY: u8 = 2;
/// Random payload bytes per message: 0 ..= RANDOM_MAX (plus 16 bytes of framing).
const RANDOM_MAX: u64 = 120;

/// An endpoint with its two ring halves. Field order matters: the halves use the
/// endpoint's mapping, so they are dropped first.
struct Chan {
    tx: Producer,
    rx: Consumer,
    ep: Endpoint,
    /// Doorbells rung, for the record.
    notifies: u64,
    /// When this side last sent or received something (for the watchdog).
    progress: Instant,
}

/// The ring memory of the ring at `(offset, size)` in `ep`'s region (the core's checked
/// accessor).
fn ring_memory(ep: &Endpoint, (offset, size): (usize, u32)) -> RingMemory {
    coresident::ring_memory(ep.region(), offset, size).unwrap()
}

impl Chan {
    /// Attaches both halves to the rings already laid out in `ep`'s region.
    fn attach(ep: Endpoint) -> Self {
        // The halves are stored next to `ep` in `Chan` and dropped before it.
        let (ours, theirs) = ep.rings();
        let tx = Producer::attach(ring_memory(&ep, ours)).unwrap();
        let rx = Consumer::attach(ring_memory(&ep, theirs)).unwrap();
        Self {
            tx,
            rx,
            ep,
            notifies: 0,
            progress: Instant::now(),
        }
    }

    fn notify(&mut self) {
        self.ep.link().ring().unwrap();
        self.notifies += 1;
    }

    /// Sleeps until the doorbell rings (or a second passes); fails on the watchdog.
    fn sleep(&self, what: &str) -> Result<(), TransportError> {
        assert!(
            self.progress.elapsed() < WATCHDOG,
            "watchdog: no progress for {WATCHDOG:?} {what}"
        );
        match self.ep.link().wait(Some(Duration::from_secs(1)))? {
            coresident::Wake::PeerGone => Err(TransportError::PeerGone),
            _ => Ok(()),
        }
    }

    /// Sends one message, blocking (on the doorbell) while the ring is full.
    fn send(&mut self, kind: u8, msg: &[u8]) {
        loop {
            match self.tx.write(kind, msg) {
                Ok(()) => {
                    self.progress = Instant::now();
                    return;
                }
                Err(SendError::Full) => {
                    // Publish what is pending first, or the consumer never frees space.
                    if self.tx.publish().unwrap().is_required() {
                        self.notify();
                    }
                    if self.tx.arm_space(msg.len()).unwrap() == Readiness::Armed {
                        self.sleep("waiting for space").unwrap();
                    }
                }
                Err(e) => panic!("send: {e}"),
            }
        }
    }

    fn publish(&mut self) {
        if self.tx.publish().unwrap().is_required() {
            self.notify();
        }
    }
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// FNV-1a over 8-byte words (the last one zero-padded), with the length mixed in:
/// cheap enough for a debug build, and any flipped, lost or moved byte changes it.
fn fnv(bytes: &[u8]) -> u64 {
    let words = bytes.chunks_exact(8);
    let mut last = [0u8; 8];
    last[..words.remainder().len()].copy_from_slice(words.remainder());
    let h = words
        .map(|w| u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]))
        .chain([u64::from_le_bytes(last)])
        .fold(0xcbf29ce484222325u64, |h, w| {
            (h ^ w).wrapping_mul(0x100000001b3)
        });
    (h ^ bytes.len() as u64).wrapping_mul(0x100000001b3)
}

/// Message `i`: `[i: u64][random bytes][fnv of the preceding bytes: u64]`.
fn build(i: u64, rng: &mut u64, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&i.to_le_bytes());
    let n = (xorshift(rng) % (RANDOM_MAX + 1)) as usize;
    while out.len() < 8 + n {
        let word = xorshift(rng).to_le_bytes();
        let take = (8 + n - out.len()).min(8);
        out.extend_from_slice(&word[..take]);
    }
    let sum = fnv(out);
    out.extend_from_slice(&sum.to_le_bytes());
}

#[test]
fn child_entry() {
    let Ok(role) = std::env::var(ROLE_ENV) else {
        return; // Not a child: nothing to do in the normal test run.
    };
    assert_eq!(role, "ring");
    let sock = PathBuf::from(std::env::var_os(SOCK_ENV).unwrap());
    let mut cfg = OfferConfig::new("ring-child".parse().unwrap());
    cfg.layout = ChannelLayout {
        to_acceptor: 1 << 16,
        to_offerer: 1 << 12,
    };
    // Both rings are laid out by `PreparedOffer::new`, before the peer sees the region.
    let pending = PreparedOffer::new(&cfg).unwrap();
    let mut chan = Chan::attach(pending.connect(&sock).unwrap());

    let mut rng = 0x9e3779b97f4a7c15u64;
    let mut msg = Vec::with_capacity(RANDOM_MAX as usize + 16);
    let mut digest = 0u64;
    for i in 0..MESSAGES {
        build(i, &mut rng, &mut msg);
        digest = digest.wrapping_add(fnv(&msg));
        chan.send(DATA, &msg);
        if i % 32 == 31 {
            chan.publish();
        }
    }
    chan.publish();

    // The parent's summary: count and digest.
    let mut buf = [0u8; 64];
    let got = loop {
        match chan.rx.recv(&mut buf) {
            Ok(r) => break r,
            Err(RecvError::Empty) => {
                if chan.rx.arm_data(1).unwrap() == Readiness::Armed {
                    chan.sleep("waiting for the summary").unwrap();
                }
            }
            Err(e) => panic!("recv summary: {e}"),
        }
    };
    assert_eq!(got.kind, SUMMARY);
    assert_eq!(&buf[..8], &MESSAGES.to_le_bytes());
    assert_eq!(&buf[8..16], &digest.to_le_bytes(), "digest differs");
    eprintln!(
        "child: {MESSAGES} messages, {} doorbells rung",
        chan.notifies
    );
    std::process::exit(0);
}

#[test]
fn a_million_messages_through_the_ring_between_two_processes() {
    let path =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("ring-{}", std::process::id()));
    let listener = Listener::bind(&path).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(ROLE_ENV, "ring")
        .env(SOCK_ENV, &path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let cfg = AcceptConfig {
        handshake_timeout: WATCHDOG,
        ..AcceptConfig::default()
    };
    let mut chan = Chan::attach(listener.accept(&cfg).unwrap());

    let mut next = 0u64;
    let mut digest = 0u64;
    let mut bad: Option<String> = None;
    let mut buf = vec![0u8; 4096];
    while next < MESSAGES {
        let res = chan.rx.recv_batch(256, |view| {
            if bad.is_some() {
                return;
            }
            let len = match view.copy_to(&mut buf) {
                Ok(len) => len,
                Err(e) => return bad = Some(format!("message {next}: {e}")),
            };
            let m = &buf[..len];
            if view.kind() != DATA || len < 16 {
                return bad = Some(format!("message {next}: kind {} len {len}", view.kind()));
            }
            let (body, sum) = m.split_at(len - 8);
            if u64::from_le_bytes(body[..8].try_into().unwrap()) != next {
                return bad = Some(format!("message {next}: out of order"));
            }
            if fnv(body).to_le_bytes() != sum {
                return bad = Some(format!("message {next}: bad checksum"));
            }
            digest = digest.wrapping_add(fnv(m));
            next += 1;
        });
        if let Some(b) = &bad {
            panic!("{b}");
        }
        match res {
            Ok((_, notify)) => {
                chan.progress = Instant::now();
                if notify.is_required() {
                    chan.notify();
                }
            }
            Err(RecvError::Empty) => {
                if chan.rx.arm_data(1).unwrap() == Readiness::Armed {
                    match chan.sleep("waiting for data") {
                        Ok(()) => {}
                        Err(e) => panic!("after {next} messages: {e}"),
                    }
                }
            }
            Err(e) => panic!("after {next} messages: {e}"),
        }
    }

    let mut summary = MESSAGES.to_le_bytes().to_vec();
    summary.extend_from_slice(&digest.to_le_bytes());
    chan.send(SUMMARY, &summary);
    chan.publish();
    let status = child.wait().unwrap();
    assert!(status.success(), "child failed: {status}");
    eprintln!(
        "parent: {next} messages checked, {} doorbells rung",
        chan.notifies
    );
}
