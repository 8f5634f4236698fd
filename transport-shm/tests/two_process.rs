//! Two real processes: this test binary re-runs itself as the child
//! (`std::env::current_exe()` with `CORESIDENT_SHM_CHILD` naming the role), the child
//! offers a channel, and the two exchange data through the core's `Channel` over the
//! memfd and the socket doorbells. A killed peer is reported gone.
#![cfg(target_os = "linux")]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use coresident::{Channel, ChannelConfig, ChannelError, Doorbell, StdClock};
use coresident_shm::{
    connect, AcceptConfig, Endpoint, Listener, MemfdRegion, OfferConfig, PeerId, PeerLink,
};

/// Which role the child plays; unset in the parent.
const ROLE_ENV: &str = "CORESIDENT_SHM_CHILD";
/// The socket the child connects to.
const SOCK_ENV: &str = "CORESIDENT_SHM_SOCK";
/// Watchdog for every wait; never asserted as a runtime bound.
const WATCHDOG: Duration = Duration::from_secs(30);
/// Messages in the ping-pong.
const ROUNDS: u64 = 2000;

type Chan = Channel<MemfdRegion, PeerLink, StdClock>;

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

fn channel(ep: Endpoint) -> Chan {
    let cfg = ChannelConfig {
        liveness: None,
        ..ChannelConfig::default()
    };
    Channel::new(ep.into_link(), cfg, StdClock::default()).unwrap()
}

/// Deterministic payload for message `i`: length and bytes derive from `i`.
fn payload(i: u64) -> Vec<u8> {
    let len = 1 + (i.wrapping_mul(2654435761) % 3000) as usize;
    (0..len)
        .map(|k| (i as u8).wrapping_mul(31).wrapping_add(k as u8))
        .collect()
}

fn checksum(bytes: &[u8]) -> u64 {
    // FNV-1a.
    bytes.iter().fold(0xcbf29ce484222325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

/// The child: connects, then plays its role.
#[test]
fn child_entry() {
    let Ok(role) = std::env::var(ROLE_ENV) else {
        return; // Not a child: nothing to do in the normal test run.
    };
    let sock = PathBuf::from(std::env::var_os(SOCK_ENV).unwrap());
    let mut cfg = OfferConfig::new("child".parse().unwrap());
    cfg.layout = coresident::ChannelLayout {
        to_acceptor: 1 << 14,
        to_offerer: 1 << 12,
    };
    let mut ch = channel(connect(&sock, &cfg).unwrap());
    let mut buf = vec![0u8; ch.max_incoming()];
    match role.as_str() {
        // Send message i, wait for the parent to echo its checksum.
        "pingpong" => {
            for i in 1..=ROUNDS {
                let msg = payload(i);
                ch.send_blocking(&msg, Some(WATCHDOG)).unwrap();
                let n = ch.recv_blocking(&mut buf, Some(WATCHDOG)).unwrap();
                assert_eq!(&buf[..n], checksum(&msg).to_le_bytes());
            }
        }
        // Stream forever (the parent kills us).
        "stream" => {
            for i in 1.. {
                let _ = ch.send_blocking(&payload(i % 100), Some(Duration::from_millis(10)));
            }
        }
        other => panic!("unknown child role {other}"),
    }
    std::process::exit(0);
}

fn accept(listener: &Listener) -> Endpoint {
    let cfg = AcceptConfig {
        handshake_timeout: WATCHDOG,
        ..AcceptConfig::default()
    };
    listener.accept(&cfg).unwrap()
}

#[test]
fn two_processes_exchange_data_through_the_memfd_and_socket_doorbells() {
    let path = sock_path("pingpong");
    let listener = Listener::bind(&path).unwrap();
    let mut child = spawn_child("pingpong", &path);
    let ep = accept(&listener);
    assert_eq!(ep.peer().cred.pid, child.id() as i32);
    assert_eq!(ep.peer().id, Some("child".parse::<PeerId>().unwrap()));
    let mut ch = channel(ep);
    let mut buf = vec![0u8; ch.max_incoming()];
    for i in 1..=ROUNDS {
        let n = ch.recv_blocking(&mut buf, Some(WATCHDOG)).unwrap();
        assert_eq!(&buf[..n], &payload(i)[..], "message {i} corrupted");
        ch.send_blocking(&checksum(&buf[..n]).to_le_bytes(), Some(WATCHDOG))
            .unwrap();
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "child failed: {status}");
    // The child exited: its end of the socket is closed.
    assert_eq!(
        ch.recv_blocking(&mut buf, Some(WATCHDOG)),
        Err(ChannelError::PeerGone)
    );
}

#[test]
fn killed_peer_is_reported_gone() {
    let path = sock_path("stream");
    let listener = Listener::bind(&path).unwrap();
    let mut child = spawn_child("stream", &path);
    let mut ch = channel(accept(&listener));
    let mut buf = vec![0u8; ch.max_incoming()];
    // Receive a few messages mid-stream.
    for _ in 0..20 {
        ch.recv_blocking(&mut buf, Some(WATCHDOG)).unwrap();
    }
    child.kill().unwrap(); // SIGKILL: no destructor, no goodbye.
    child.wait().unwrap();
    // What the child published before it died may come first; then the hang-up,
    // promptly (each call is bounded by the watchdog, the loop by the ring's size).
    let start = Instant::now();
    loop {
        match ch.recv_blocking(&mut buf, Some(WATCHDOG)) {
            Ok(_) => assert!(start.elapsed() < WATCHDOG, "watchdog: no hang-up"),
            Err(ChannelError::PeerGone) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(!ch.doorbell().peer_alive());
    assert_eq!(
        ch.doorbell().ring(),
        Err(coresident::TransportError::PeerGone)
    );
}
