//! Two real processes: this test binary re-runs itself as the child
//! (`std::env::current_exe()` with `CORESIDENT_SHM_CHILD` naming the role), the child
//! offers a channel, and the two exchange data through the memfd and the eventfds.
//!
//! The payload protocol here is a minimal mailbox, not the ring: one sequence word and
//! a payload in each direction's slot, a ping-pong with doorbells. It proves the shared
//! memory and the doorbells work across processes, and that a killed peer is reported.
#![cfg(target_os = "linux")]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use coresident_shm::{
    connect, AcceptConfig, Endpoint, Listener, OfferConfig, PeerId, WaitError, Wake,
};

/// Which role the child plays; unset in the parent.
const ROLE_ENV: &str = "CORESIDENT_SHM_CHILD";
/// The socket the child connects to.
const SOCK_ENV: &str = "CORESIDENT_SHM_SOCK";
/// Watchdog for every wait; never asserted as a runtime bound.
const WATCHDOG: Duration = Duration::from_secs(30);
/// Messages in the ping-pong.
const ROUNDS: u64 = 2000;
/// Payload bytes start here in a slot (after the sequence word's cache line).
const PAYLOAD: usize = 128;

fn sock_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("2p-{}-{name}", std::process::id()))
}

fn spawn_child(role: &str, sock: &Path) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(ROLE_ENV, role)
        .env(SOCK_ENV, sock)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

/// The sequence word at the start of a slot.
fn seq(ep: &Endpoint, tx: bool) -> &AtomicU64 {
    let slot = if tx { ep.tx_slot() } else { ep.rx_slot() };
    let p = ep.slot_ptr(slot).unwrap();
    // SAFETY:
    // - `p` is page-aligned (slots start on page boundaries), so 8-aligned;
    // - it is valid for the slot's length (> 8 bytes) as long as `ep` lives, which
    //   bounds the returned reference's lifetime;
    // - every access to these 8 bytes, in both processes, is atomic.
    unsafe { AtomicU64::from_ptr(p.cast()) }
}

/// Deterministic payload for message `i`: length and bytes derive from `i`.
fn payload(i: u64) -> Vec<u8> {
    let len = 1 + (i.wrapping_mul(2654435761) % 3000) as usize;
    (0..len)
        .map(|k| (i as u8).wrapping_mul(31).wrapping_add(k as u8))
        .collect()
}

/// Writes a message (length word + bytes) into our tx slot, then publishes `i`.
fn put(ep: &Endpoint, i: u64, bytes: &[u8]) {
    let base = ep.slot_ptr(ep.tx_slot()).unwrap();
    assert!(PAYLOAD + 8 + bytes.len() <= ep.tx_slot().len);
    // SAFETY:
    // - the range PAYLOAD .. PAYLOAD + 8 + len lies within the slot (asserted above);
    // - the peer reads it only after seeing `i` published below (Release/Acquire), and
    //   does not write it.
    unsafe {
        let p = base.add(PAYLOAD);
        core::ptr::write_unaligned(p.cast::<u64>(), bytes.len() as u64);
        core::ptr::copy_nonoverlapping(bytes.as_ptr(), p.add(8), bytes.len());
    }
    // SYNC: payload visible in `take` (pairs with its Acquire load).
    seq(ep, true).store(i, Ordering::Release);
    ep.notify_peer().unwrap();
}

/// Waits until the peer publishes `i`, then copies the message out.
fn take(ep: &Endpoint, i: u64) -> Result<Vec<u8>, WaitError> {
    let start = Instant::now();
    // SYNC: payload visible (pairs with the Release store in `put`).
    while seq(ep, false).load(Ordering::Acquire) != i {
        assert!(
            start.elapsed() < WATCHDOG,
            "watchdog: message {i} never came"
        );
        ep.wait(Some(Duration::from_secs(1)))?;
    }
    let base = ep.slot_ptr(ep.rx_slot()).unwrap();
    let slot_len = ep.rx_slot().len;
    // SAFETY:
    // - PAYLOAD + 8 lies within the slot;
    // - the peer wrote these bytes before publishing `i` and will not touch them until
    //   we answer; read unaligned because the peer chose the layout.
    let len = unsafe { core::ptr::read_unaligned(base.add(PAYLOAD).cast::<u64>()) } as usize;
    // The length is peer data: check it before use.
    assert!(
        len <= slot_len - PAYLOAD - 8,
        "peer sent a bad length {len}"
    );
    let mut out = vec![0u8; len];
    // SAFETY:
    // - the source range lies within the slot (checked above), the destination is
    //   `out`, `len` bytes, and they do not overlap.
    unsafe { core::ptr::copy_nonoverlapping(base.add(PAYLOAD + 8), out.as_mut_ptr(), len) };
    Ok(out)
}

/// The child: connects, then plays its role.
#[test]
fn child_entry() {
    let Ok(role) = std::env::var(ROLE_ENV) else {
        return; // Not a child: nothing to do in the normal test run.
    };
    let sock = PathBuf::from(std::env::var_os(SOCK_ENV).unwrap());
    let mut cfg = OfferConfig::new("child".parse().unwrap());
    cfg.tx_data_size = 1 << 14;
    cfg.rx_data_size = 1 << 12;
    let ep = connect(&sock, &cfg).unwrap();
    match role.as_str() {
        // Send message i, wait for the parent to echo its checksum as message i.
        "pingpong" => {
            for i in 1..=ROUNDS {
                let msg = payload(i);
                put(&ep, i, &msg);
                let echo = take(&ep, i).unwrap();
                assert_eq!(echo, checksum(&msg).to_le_bytes());
            }
        }
        // Stream forever (the parent kills us).
        "stream" => {
            for i in 1.. {
                put(&ep, i, &payload(i));
                // Let the parent keep up a little; ignore its pace otherwise.
                let _ = ep.wait(Some(Duration::from_millis(1)));
            }
        }
        other => panic!("unknown child role {other}"),
    }
    std::process::exit(0);
}

fn checksum(bytes: &[u8]) -> u64 {
    // FNV-1a.
    bytes.iter().fold(0xcbf29ce484222325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

fn accept(listener: &Listener) -> Endpoint {
    let cfg = AcceptConfig {
        handshake_timeout: WATCHDOG,
        ..AcceptConfig::default()
    };
    listener.accept(&cfg).unwrap()
}

#[test]
fn two_processes_exchange_data_through_memfd_and_eventfds() {
    let path = sock_path("pingpong");
    let listener = Listener::bind(&path).unwrap();
    let mut child = spawn_child("pingpong", &path);
    let ep = accept(&listener);
    assert_eq!(ep.peer().pid, child.id() as i32);
    assert_eq!(ep.peer().id, Some("child".parse::<PeerId>().unwrap()));
    for i in 1..=ROUNDS {
        let msg = take(&ep, i).unwrap();
        assert_eq!(msg, payload(i), "message {i} corrupted");
        put(&ep, i, &checksum(&msg).to_le_bytes());
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "child failed: {status}");
    // The child exited: its end of the socket is closed.
    let start = Instant::now();
    loop {
        match ep.wait(Some(Duration::from_secs(1))) {
            Err(WaitError::PeerGone) => break,
            Ok(_) => assert!(start.elapsed() < WATCHDOG, "watchdog: no hang-up"),
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn killed_peer_is_reported_gone() {
    let path = sock_path("stream");
    let listener = Listener::bind(&path).unwrap();
    let mut child = spawn_child("stream", &path);
    let ep = accept(&listener);
    // Receive a few messages mid-stream.
    let start = Instant::now();
    let mut seen = 0;
    while seen < 20 {
        assert!(start.elapsed() < WATCHDOG, "watchdog: child never streamed");
        match ep.wait(Some(Duration::from_secs(1))).unwrap() {
            Wake::Notified { .. } => seen += 1,
            Wake::TimedOut => {}
        }
    }
    child.kill().unwrap(); // SIGKILL: no destructor, no goodbye.
    child.wait().unwrap();
    // Notifications still pending may come first; then the hang-up, promptly.
    let start = Instant::now();
    let gone = loop {
        match ep.wait(Some(WATCHDOG)) {
            Err(WaitError::PeerGone) => break true,
            Ok(Wake::Notified { .. }) => {}
            Ok(Wake::TimedOut) => break false,
            Err(e) => panic!("{e}"),
        }
        if start.elapsed() > WATCHDOG {
            break false;
        }
    };
    assert!(gone, "watchdog: the parent never learned the child died");
    assert!(!ep.peer_alive().unwrap());
    // The memory stays mapped and readable after the peer's death.
    let _ = seq(&ep, false).load(Ordering::Acquire);
}
