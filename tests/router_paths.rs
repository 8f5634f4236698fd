//! The router's network paths, its builder with the host registry, waiting, and its
//! events (issue 14): `TcpPath` across a receiver restart and against hostile
//! connections, `UdpPath` and a lost datagram, back-pressure instead of spilling,
//! `recv_blocking` on the router's descriptor, and a `tracing` event with the peer and
//! the flow for every refusal.
#![cfg(target_os = "linux")]

use coresident::lookup::{Seed, Table};
use coresident::path::{TcpConfig, TcpPath, UdpPath};
use coresident::{
    Channel, ChannelConfig, ChannelLayout, FlowHeader, NetworkPath, Overflow, Path, PendingOffer,
    RouteError, Router, StdClock, ThresholdPolicy, Transport,
};
use coresident_mock::{pair, MockDoorbell, MockRegion};
use coresident_shm::{
    HostConfig, HostDiscovery, MemfdRegion, PeerId, PeerLink, Registry, ShmTransport,
};
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The longest anything may make no progress; never a bound on a test's runtime.
const WATCHDOG: Duration = Duration::from_secs(30);

fn table() -> &'static Table<u64, 4> {
    Box::leak(Box::new(Table::new(Seed::new([2, 7, 1, 8]))))
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

type TcpRouter =
    Router<'static, u64, MockRegion, MockDoorbell, StdClock, TcpPath<u64>, ThresholdPolicy, 4>;

const S: u64 = 1;
const R: u64 = 2;

/// Receives until `deliver` has seen `until` messages of flow 9, polling both routers.
fn pump(tx: &mut TcpRouter, rx: &mut TcpRouter, got: &mut Vec<u64>, until: usize) {
    let start = Instant::now();
    while got.len() < until {
        assert!(
            start.elapsed() < WATCHDOG,
            "watchdog: {} of {until}",
            got.len()
        );
        tx.poll().unwrap();
        rx.recv(|p, f, m| {
            assert_eq!((*p, f), (S, 9));
            got.push(u64::from_le_bytes(m[..8].try_into().unwrap()));
        })
        .unwrap();
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// A receiver dies after delivering part of a flow, with more of it in flight; a new
/// one on the same port resumes from what the first delivered: the sender's replay
/// buffer resends the rest, and nothing is lost or delivered twice.
#[test]
fn tcp_path_resumes_from_the_receivers_next_after_a_restart() {
    let rx_net = TcpPath::bind(R, local(0), |_| None).unwrap();
    let port = rx_net.local_addr().unwrap().port();
    let mut rx: TcpRouter = Router::new(table(), ThresholdPolicy::default(), rx_net, 1 << 16);
    let tx_net = TcpPath::new(S, move |k| (*k == R).then_some(local(port)));
    let mut tx: TcpRouter = Router::new(table(), ThresholdPolicy::default(), tx_net, 64);
    let mut got = Vec::new();
    for i in 0..100u64 {
        tx.send(&R, 9, &i.to_le_bytes()).unwrap();
    }
    pump(&mut tx, &mut rx, &mut got, 60);
    // More in flight, then the receiver dies: whatever it had not acknowledged stays
    // in the sender's replay buffer.
    for i in 100..150u64 {
        tx.send(&R, 9, &i.to_le_bytes()).unwrap();
    }
    let delivered = got.len() as u64;
    drop(rx);
    let rx_net = TcpPath::bind(R, local(port), |_| None).unwrap();
    let mut rx: TcpRouter = Router::new(table(), ThresholdPolicy::default(), rx_net, 1 << 16);
    rx.resume_flow(&S, 9, delivered, |_, _, _| {}).unwrap();
    for i in 150..200u64 {
        tx.send(&R, 9, &i.to_le_bytes()).unwrap();
    }
    pump(&mut tx, &mut rx, &mut got, 200);
    assert_eq!(got, (0..200).collect::<Vec<u64>>(), "once each, in order");
    let s = *tx.network_ref().stats();
    assert!(
        s.disconnected >= 1 && s.connected >= 2 && s.replayed > 0,
        "{s:?}"
    );
    // Everything delivered was acknowledged: the replay buffer empties.
    let start = Instant::now();
    while tx.network_ref().unacknowledged(&R) > 0 {
        assert!(start.elapsed() < WATCHDOG, "watchdog: acknowledgements");
        tx.poll().unwrap();
        rx.recv(|_, _, _| {}).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Garbage, a frame longer than any message, a hello of another version and a hello
/// claiming a key it may not: each connection is dropped, counted, and the honest
/// sender is served.
#[test]
fn tcp_path_drops_hostile_connections_and_serves_the_honest_one() {
    let config = TcpConfig {
        authorize: Some(Arc::new(|_, k: &u64| *k != 666)),
        ..TcpConfig::default()
    };
    let rx_net = TcpPath::bind(R, local(0), |_| None)
        .unwrap()
        .with_config(config);
    let port = rx_net.local_addr().unwrap().port();
    let mut rx: TcpRouter = Router::new(table(), ThresholdPolicy::default(), rx_net, 1 << 16);
    let hello = |version: u32, key: u64| {
        let mut b = Vec::new();
        b.extend_from_slice(&(1u32 + 28).to_le_bytes());
        b.push(1);
        b.extend_from_slice(b"CRTCP\0\0\x01");
        b.extend_from_slice(&version.to_le_bytes());
        b.extend_from_slice(&key.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        b
    };
    let attacks: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        [&u32::MAX.to_le_bytes()[..], &[3u8]].concat(),
        hello(2, S),
        hello(1, 666),
        [hello(1, 7), vec![5, 0, 0, 0, 9, 1, 2, 3, 4]].concat(), // an unknown frame kind
    ];
    let mut socks: Vec<TcpStream> = attacks
        .iter()
        .map(|a| {
            let mut s = TcpStream::connect(local(port)).unwrap();
            s.write_all(a).unwrap();
            s
        })
        .collect();
    let tx_net = TcpPath::new(S, move |k| (*k == R).then_some(local(port)));
    let mut tx: TcpRouter = Router::new(table(), ThresholdPolicy::default(), tx_net, 64);
    for i in 0..10u64 {
        tx.send(&R, 9, &i.to_le_bytes()).unwrap();
    }
    let mut got = Vec::new();
    pump(&mut tx, &mut rx, &mut got, 10);
    assert_eq!(got, (0..10).collect::<Vec<u64>>());
    let start = Instant::now();
    while rx.network_ref().stats().refused < attacks.len() as u64 {
        assert!(start.elapsed() < WATCHDOG, "{:?}", rx.network_ref().stats());
        rx.recv(|_, _, _| {}).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    socks.clear();
}

/// A lost datagram holds its flow up until `skip_gap` gives it up; nothing else is
/// lost, duplicates are dropped.
#[test]
fn udp_path_holds_behind_a_lost_datagram_until_the_gap_is_given_up() {
    type UdpRouter =
        Router<'static, u64, MockRegion, MockDoorbell, StdClock, UdpPath<u64>, ThresholdPolicy, 4>;
    let raw = UdpSocket::bind(local(0)).unwrap();
    let from = raw.local_addr().unwrap();
    let path = UdpPath::bind(local(0), |_| None, move |a| (a == from).then_some(S)).unwrap();
    let to = path.local_addr().unwrap();
    let mut rx: UdpRouter = Router::new(table(), ThresholdPolicy::default(), path, 1 << 16);
    // Datagram 1 is "lost"; 3 arrives twice.
    for seq in [0u64, 2, 3, 3, 4] {
        let d = [
            &FlowHeader { flow: 9, seq }.encode()[..],
            &seq.to_le_bytes(),
        ]
        .concat();
        raw.send_to(&d, to).unwrap();
    }
    let mut got = Vec::new();
    let start = Instant::now();
    while rx.held() < 3 {
        assert!(start.elapsed() < WATCHDOG, "watchdog: datagrams");
        rx.recv(|_, _, m| got.push(m[0])).unwrap();
    }
    assert_eq!(got, [0]);
    assert_eq!(rx.skip_gap(&S, 9, |_, _, m| got.push(m[0])), 3);
    assert_eq!(got, [0, 2, 3, 4]);
    assert_eq!(rx.stats().rx.skipped, 1);
    assert_eq!(rx.stats().rx.duplicates, 1);
}

// ------------------------------------------------------------------ back-pressure

type MockRouter<'t> =
    Router<'t, u64, MockRegion, MockDoorbell, StdClock, Refuse, ThresholdPolicy, 4>;

/// A network path that takes nothing: everything must go by the channel.
struct Refuse;

impl NetworkPath<u64> for Refuse {
    type Error = &'static str;
    fn send(&mut self, _: &u64, _: FlowHeader, _: &[u8]) -> Result<(), &'static str> {
        Err("this test allows no network")
    }
}

/// With `Overflow::Wait`, a full ring is back-pressure: `send` refuses (not taken),
/// `send_blocking` sleeps until the peer consumed, and nothing goes by network.
#[test]
fn a_waiting_policy_applies_back_pressure_instead_of_spilling() {
    let (a, b, _faults) = pair(ChannelLayout::symmetric(4096));
    let cfg = ChannelConfig {
        liveness: None,
        ..ChannelConfig::default()
    };
    let a = Channel::new(a, cfg, StdClock::default()).unwrap();
    let mut b = Channel::new(b, cfg, StdClock::default()).unwrap();
    let t = table();
    let policy = ThresholdPolicy {
        overflow: Overflow::Wait,
        max_load: 1000,
        ..ThresholdPolicy::default()
    };
    let mut r: MockRouter<'_> = Router::new(t, policy, Refuse, 64);
    let h = r.attach(R, a).unwrap();
    t.writer().unwrap().insert(R, h).unwrap();
    let msg = [7u8; 300];
    let mut taken = 0u64;
    loop {
        match r.send(&R, 1, &msg) {
            Ok(Path::Channel) => taken += 1,
            Err(RouteError::Full) => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        r.next_seq(&R, 1),
        taken,
        "a refused send takes no sequence number"
    );
    let total = taken + 200;
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; b.max_incoming()];
        for i in 0..total {
            let n = b.recv_blocking(&mut buf, Some(WATCHDOG)).unwrap();
            let h = FlowHeader::decode(&buf[..n]).unwrap();
            assert_eq!(h.seq, i);
            std::thread::sleep(Duration::from_micros(50)); // a slow consumer
        }
    });
    for _ in taken..total {
        assert_eq!(
            r.send_blocking(&R, 1, &msg, Some(WATCHDOG)).unwrap(),
            Path::Channel
        );
    }
    reader.join().unwrap();
    assert_eq!((r.stats().via_network, r.stats().spilled), (0, 0));
    assert!(r.stats().full >= 1);
}

// ------------------------------------------------------------------ waiting

/// A directory only we may use (the host transport refuses a world-writable one).
fn private_dir(name: &str) -> std::path::PathBuf {
    use std::os::unix::fs::DirBuilderExt;
    let d = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{name}-{}", std::process::id()));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&d)
        .unwrap();
    d
}

type ShmRouter =
    Router<'static, u64, MemfdRegion, PeerLink, StdClock, TcpPath<u64>, ThresholdPolicy, 4>;

fn shm_pair() -> (
    Channel<MemfdRegion, PeerLink, StdClock>,
    Channel<MemfdRegion, PeerLink, StdClock>,
) {
    let dir = private_dir("wait");
    let mut a = ShmTransport::new("wait-a".parse().unwrap(), &dir);
    let mut b = ShmTransport::new("wait-b".parse().unwrap(), &dir);
    let mut buf = [0u8; 256];
    let (pending, n) = a
        .offer(ChannelLayout::symmetric(1 << 16), &mut buf)
        .unwrap();
    let lb = b.accept(&buf[..n]).unwrap();
    let la = pending.complete(Some(WATCHDOG)).unwrap();
    let cfg = ChannelConfig::default();
    (
        Channel::new(la, cfg, StdClock::default()).unwrap(),
        Channel::new(lb, cfg, StdClock::default()).unwrap(),
    )
}

/// `recv_blocking` sleeps on the router's one descriptor and wakes for a channel
/// message and for a network message; `wait_fd` is a real, pollable descriptor.
#[test]
fn recv_blocking_wakes_for_the_channel_and_for_the_network() {
    let (ca, cb) = shm_pair();
    let rx_net = TcpPath::bind(R, local(0), |_| None).unwrap();
    let port = rx_net.local_addr().unwrap().port();
    let mut rx: ShmRouter = Router::new(table(), ThresholdPolicy::default(), rx_net, 1 << 16);
    rx.attach(S, cb).unwrap();
    {
        use std::os::fd::AsRawFd;
        assert!(rx.wait_fd().unwrap().as_raw_fd() >= 0);
    }
    let sender = std::thread::spawn(move || {
        let t = table();
        let net = TcpPath::new(S, move |k| (*k == R).then_some(local(port)));
        let mut tx: ShmRouter = Router::new(t, ThresholdPolicy::default(), net, 64);
        let h = tx.attach(R, ca).unwrap();
        t.writer().unwrap().insert(R, h).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(tx.send(&R, 1, b"by the ring").unwrap(), Path::Channel);
        std::thread::sleep(Duration::from_millis(50));
        t.writer().unwrap().remove(&R);
        assert_eq!(tx.send(&R, 2, b"by tcp").unwrap(), Path::Network);
        let start = Instant::now();
        while tx.network_ref().unacknowledged(&R) > 0 {
            assert!(
                start.elapsed() < WATCHDOG,
                "watchdog: ack; {:?} {:?}",
                tx.network_ref().stats(),
                tx.stats()
            );
            tx.poll().unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
        tx
    });
    let mut got = Vec::new();
    let start = Instant::now();
    while got.len() < 2 {
        assert!(start.elapsed() < WATCHDOG, "watchdog: {got:?}");
        match rx.recv_blocking(Some(Duration::from_secs(5)), |p, f, m| {
            got.push((*p, f, m.to_vec()))
        }) {
            Ok(_) | Err(RouteError::TimedOut) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(
        got,
        [(S, 1, b"by the ring".to_vec()), (S, 2, b"by tcp".to_vec())]
    );
    drop(sender.join().unwrap());
}

// ------------------------------------------------------------------ the builder

/// Two routers built from the host registry: each attaches a channel to the other by
/// itself; A's flow to B takes the ring; B withdraws from the registry mid-stream; A
/// fails over to TCP; B gets every message once, in order.
#[test]
fn the_builder_follows_the_registry_through_a_withdrawal() {
    if std::env::var_os("ROUTER_TEST_EVENTS").is_some() {
        let _ = tracing::subscriber::set_global_default(Capture {
            print: true,
            ..Capture::default()
        });
    }
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("router-builder-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    const N: u64 = 20_000;
    let (a_ip, b_ip) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2));
    let b_net = TcpPath::bind(b_ip, local(0), |_| None).unwrap();
    let b_port = b_net.local_addr().unwrap().port();
    let make = |me: Ipv4Addr| {
        let id: PeerId = me.to_string().parse().unwrap();
        HostDiscovery::new(Registry::open(&dir).unwrap(), HostConfig::ipv4(id)).unwrap()
    };
    let b_disc = make(b_ip);
    let withdraw = b_disc.withdrawer();
    let withdrawn = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let withdrawn_b = withdrawn.clone();
    let mut b = Router::builder()
        .discovery(b_disc)
        .network(b_net)
        .build()
        .unwrap();
    let receiver = std::thread::spawn(move || {
        let mut next = 0u64;
        let start = Instant::now();
        let mut withdrew = false;
        while next < N {
            assert!(start.elapsed() < WATCHDOG * 2, "watchdog: {next} of {N}");
            if next >= N / 4 && !withdrew {
                withdraw.withdraw();
                withdrew = true;
                withdrawn_b.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            b.poll().unwrap();
            match b.recv_blocking(Some(Duration::from_millis(50)), |p, f, m| {
                assert_eq!((*p, f), (a_ip, 1));
                assert_eq!(
                    u64::from_le_bytes(m[..8].try_into().unwrap()),
                    next,
                    "order"
                );
                next += 1;
            }) {
                Ok(_) | Err(RouteError::TimedOut) => {}
                Err(e) => panic!("{e}"),
            }
        }
        (b.stats().rx, b.stats().fallbacks)
    });
    let a_net = TcpPath::new(a_ip, move |ip| (*ip == b_ip).then_some(local(b_port)));
    let mut a = Router::builder()
        .discovery(make(a_ip))
        .network(a_net)
        .build()
        .unwrap();
    let start = Instant::now();
    while a.handle_of(&b_ip).is_none() {
        assert!(
            start.elapsed() < WATCHDOG,
            "watchdog: discovery never attached B"
        );
        a.poll().unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut msg = [0u8; 64];
    let (mut via_channel, mut i) = (0, 0u64);
    let start = Instant::now();
    while i < N {
        assert!(start.elapsed() < WATCHDOG * 2, "watchdog: sending {i}");
        msg[..8].copy_from_slice(&i.to_le_bytes());
        match a.send_blocking(&b_ip, 1, &msg, Some(WATCHDOG)) {
            Ok(p) => {
                via_channel += u64::from(p == Path::Channel);
                i += 1;
            }
            Err(e) => panic!("send {i}: {e}"),
        }
        if i % 256 == 0 {
            a.poll().unwrap();
            a.recv(|_, _, _| {}).unwrap();
            std::thread::sleep(Duration::from_micros(100));
        }
        // Half-way: B withdraws (once it has a quarter); A sees it leave, then goes on.
        if i == N / 2 {
            let start = Instant::now();
            while !withdrawn.load(std::sync::atomic::Ordering::SeqCst)
                || a.handle_of(&b_ip).is_some()
            {
                assert!(start.elapsed() < WATCHDOG, "watchdog: B's departure");
                a.poll().unwrap();
                a.recv(|_, _, _| {}).unwrap();
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
    let start = Instant::now();
    while !receiver.is_finished() {
        assert!(start.elapsed() < WATCHDOG * 2, "watchdog: the receiver");
        a.poll().unwrap();
        a.recv(|_, _, _| {}).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    let (rx, b_fallbacks) = receiver.join().unwrap();
    let s = *a.stats();
    eprintln!("A: {s:?}\nB: {rx:?}, {b_fallbacks} fallbacks");
    assert!(
        via_channel > 0,
        "the co-resident peer's traffic took the ring"
    );
    assert!(s.via_network > 0, "after the withdrawal it took TCP");
    assert!(s.fallbacks >= 1);
    assert!(a.handle_of(&b_ip).is_none());
    let _ = std::fs::remove_dir_all(&dir);
}

// ------------------------------------------------------------------ events

/// Records every event's fields as text.
#[derive(Clone, Default)]
struct Capture {
    events: Arc<Mutex<Vec<String>>>,
    /// Also print them (debugging: `ROUTER_TEST_EVENTS=1`).
    print: bool,
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, e: &tracing::Event<'_>) {
        struct V(String);
        impl tracing::field::Visit for V {
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                self.0.push_str(&format!("{}={v:?} ", f.name()));
            }
        }
        let mut v = V(String::new());
        e.record(&mut v);
        if self.print {
            eprintln!("event: {}", v.0);
        }
        self.events.lock().unwrap().push(v.0);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// A refusal, a hold and a duplicate each leave an event naming the peer and the flow.
#[test]
fn every_refusal_is_an_event_with_the_peer_and_the_flow() {
    let cap = Capture::default();
    let mut rx: TcpRouter = Router::new(
        table(),
        ThresholdPolicy::default(),
        TcpPath::new(R, |_| None),
        1 << 16,
    );
    tracing::subscriber::with_default(cap.clone(), || {
        let h = |seq| FlowHeader { flow: 33, seq };
        let _ = rx.recv_network_from(&77, h(u64::MAX), b"far", |_, _, _| {});
        let _ = rx.recv_network_from(&77, h(3), b"early", |_, _, _| {});
        let _ = rx.recv_network_from(&77, h(3), b"again", |_, _, _| {});
    });
    let events = cap.events.lock().unwrap().clone();
    for want in ["beyond the window", "held for a gap", "duplicate"] {
        let e = events
            .iter()
            .find(|e| e.contains(want))
            .unwrap_or_else(|| panic!("no event for {want:?} in {events:?}"));
        assert!(e.contains("peer=77") && e.contains("flow=33"), "{e}");
    }
    let s = rx.stats().rx;
    assert_eq!((s.beyond_window, s.held, s.duplicates), (1, 1, 1));
}
