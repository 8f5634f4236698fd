//! One process, two threads: the stream upgrades at connect, carries bytes both ways,
//! downgrades and upgrades again mid-stream, and ends with EOF at the final offset.

mod common;

use common::{builder, Pattern};
use coresident_net::{NoDiscovery, Path};
use std::io::{Read, Write};
use std::net::Shutdown;

#[test]
fn upgrade_at_connect_then_switch_both_ways_and_eof() {
    let (b, dir) = builder("basic");
    let listener = b.bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        assert_eq!(
            s.path(),
            Path::Ring,
            "the accepted stream holds the channel"
        );
        let mut p = Pattern::new(1);
        let mut buf = vec![0u8; 10_000];
        let mut total = 0u64;
        loop {
            let n = (&s).read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            p.check(&buf[..n]).unwrap();
            total += n as u64;
        }
        (&s).write_all(b"bye").unwrap();
        (total, s.stats())
    });
    let c = b.connect(addr).unwrap();
    assert_eq!(c.path(), Path::Ring);
    let mut p = Pattern::new(1);
    let mut buf = vec![0u8; 7777];
    for round in 0..30 {
        p.fill(&mut buf);
        (&c).write_all(&buf).unwrap();
        match round % 10 {
            3 => c.downgrade(),
            6 => upgrade_until_ring(&c),
            _ => {}
        }
    }
    c.shutdown(Shutdown::Write).unwrap();
    let mut bye = Vec::new();
    (&c).read_to_end(&mut bye).unwrap();
    assert_eq!(bye, b"bye");
    let (total, sst) = server.join().unwrap();
    assert_eq!(total, 30 * 7777);
    let cst = c.stats();
    eprintln!("client {cst:?}\nserver {sst:?}");
    // 3 explicit, maybe a 4th when the server closes its end first.
    assert!(cst.downgrades >= 3, "{cst:?}");
    assert_eq!(cst.upgrades, 4);
    assert!(cst.ring_tx_bytes > 0 && cst.tcp_tx_bytes > 0, "{cst:?}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn no_discovery_is_plain_tcp_both_ways() {
    let (b, dir) = builder("plain");
    let listener = b.bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        assert_eq!(s.path(), Path::Plain);
        let mut v = Vec::new();
        s.read_to_end(&mut v).unwrap();
        v
    });
    let mut c = b.discovery(NoDiscovery).connect(addr).unwrap();
    assert_eq!(c.path(), Path::Plain);
    c.write_all(b"plain bytes").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    assert_eq!(server.join().unwrap(), b"plain bytes");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_plain_std_client_reaches_a_registered_listener_as_plain_tcp() {
    let (b, dir) = builder("stdclient");
    let listener = b.bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        assert_eq!(s.path(), Path::Plain);
        s.write_all(b"hello").unwrap();
    });
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    let mut v = Vec::new();
    c.read_to_end(&mut v).unwrap();
    assert_eq!(v, b"hello");
    server.join().unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn messages_keep_their_boundaries_across_switches() {
    let (b, dir) = builder("msgs");
    let listener = b.bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 70_000];
        for i in 0..300usize {
            let n = s.recv_msg(&mut buf).unwrap();
            assert_eq!(n, (i * 233) % 70_000, "message {i}");
            assert!(buf[..n].iter().all(|&x| x == i as u8), "message {i}");
            if i % 50 == 25 {
                s.downgrade();
            }
        }
    });
    let c = b.connect(addr).unwrap();
    for i in 0..300usize {
        c.send_msg(&vec![i as u8; (i * 233) % 70_000]).unwrap();
        if i % 50 == 40 {
            c.upgrade().unwrap();
        }
    }
    server.join().unwrap();
    assert!(c.stats().downgrades >= 1);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_stream_from_a_connection_made_by_the_caller_and_a_prepared_session() {
    // What the preload library does around a program's own connect().
    let (b, dir) = builder("prepared");
    let listener = b.bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(
        &"127.0.0.1:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    let src = sock.local_addr().unwrap().as_socket().unwrap();
    let prepared = b.offer_for(src, addr).expect("resident");
    assert_eq!(prepared.tuple().src, src);
    sock.connect(&addr.into()).unwrap();
    let c = coresident_net::Stream::from_session(sock.into(), prepared).unwrap();
    let (s, _) = listener.accept().unwrap();
    assert_eq!((c.path(), s.path()), (Path::Ring, Path::Ring));
    (&c).write_all(b"via a prepared session").unwrap();
    let mut v = [0u8; 22];
    (&s).read_exact(&mut v).unwrap();
    assert_eq!(&v, b"via a prepared session");

    // A prepared session does not fit another connection.
    let other = b.offer_for("127.0.0.1:1".parse().unwrap(), addr).unwrap();
    let tcp = std::net::TcpStream::connect(addr).unwrap();
    let e = coresident_net::Stream::from_session(tcp, other).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn withdraw_makes_new_connections_plain_and_readmit_brings_the_ring_back() {
    let (b, dir) = builder("withdraw");
    let listener = b.bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let c1 = b.connect(addr).unwrap();
    let (s1, _) = listener.accept().unwrap();
    assert_eq!(s1.path(), Path::Ring);
    listener.withdraw();
    // The accepted stream falls back at its next look; the new connection is plain.
    s1.poll_events().unwrap();
    assert_eq!(s1.path(), Path::Tcp);
    let c2 = b.connect(addr).unwrap();
    let (s2, _) = listener.accept().unwrap();
    assert_eq!((c2.path(), s2.path()), (Path::Plain, Path::Plain));
    listener.readmit();
    s1.poll_events().unwrap(); // sends UPGRADE to the connecting side
                               // The connecting side notices the withdrawal and the readmission at its next
                               // looks (its own operations, or `poll_events`), and offers a new channel.
    let t = std::time::Instant::now();
    c1.set_nonblocking(true).unwrap();
    while c1.stats().epoch < 1 || c1.path() != Path::Ring {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(10),
            "watchdog: {:?}",
            c1.stats()
        );
        c1.poll_events().unwrap();
        let _ = (&c1).read(&mut [0u8; 1]);
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    c1.set_nonblocking(false).unwrap();
    (&c1).write_all(b"back on the ring").unwrap();
    let mut v = [0u8; 16];
    s1.set_read_timeout(Some(std::time::Duration::from_secs(3)))
        .unwrap();
    if let Err(e) = (&s1).read_exact(&mut v) {
        panic!("{e}: s1 {:?}\nc1 {:?}", s1.stats(), c1.stats());
    }
    assert_eq!(&v, b"back on the ring");
    assert_eq!(s1.path(), Path::Ring);
    let c3 = b.connect(addr).unwrap();
    assert_eq!(c3.path(), Path::Ring, "registered again");
    let _ = std::fs::remove_dir_all(dir);
}

/// A connecting side may downgrade and offer the next epoch before the listener's
/// `accept` ran: the listener knows the session from its first handshake on, so the
/// re-upgrade is taken, not refused ("no such session", as it was).
#[test]
fn a_re_upgrade_before_the_listener_accepts_is_taken() {
    let (b, dir) = builder("early");
    let listener = b.bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let c = b.connect(addr).unwrap();
    assert_eq!(c.path(), Path::Ring);
    (&c).write_all(b"one ").unwrap();
    c.downgrade();
    (&c).write_all(b"two ").unwrap();
    c.upgrade().unwrap();
    (&c).write_all(b"three").unwrap();
    let cst = c.stats();
    assert_eq!((cst.upgrades, cst.refusals), (2, 0), "{cst:?}");
    c.shutdown(Shutdown::Write).unwrap();
    // Only now does the listener accept.
    let (mut s, _) = listener.accept().unwrap();
    let mut v = Vec::new();
    s.read_to_end(&mut v).unwrap();
    assert_eq!(v, b"one two three");
    let _ = std::fs::remove_dir_all(dir);
}

/// A host registry that keeps every stream's residency hook, as a backend with a
/// residency view does (the Xen backend): the test plays the view.
#[derive(Debug, Default)]
struct Hooked {
    inner: coresident_net::HostRegistry,
    subs: std::sync::Mutex<Vec<(std::net::IpAddr, coresident_net::Subscriber)>>,
}

impl coresident_net::Discovery for Hooked {
    fn name(&self) -> &'static str {
        "hooked"
    }
    fn register(
        &self,
        addr: std::net::SocketAddr,
        sink: std::sync::Arc<dyn coresident_net::HandshakeSink>,
    ) -> std::io::Result<Option<Box<dyn coresident_net::Registration>>> {
        self.inner.register(addr, sink)
    }
    fn offer(
        &self,
        hello: &coresident_net::wire::Hello,
        params: &coresident_net::OfferParams,
    ) -> Result<Box<dyn coresident_net::RingLink>, coresident_net::Refusal> {
        self.inner.offer(hello, params)
    }
    fn subscribe(&self, peer: std::net::IpAddr, sub: coresident_net::Subscriber) {
        self.subs.lock().unwrap().push((peer, sub));
    }
}

/// Residency per peer: a backend's `withdraw` on both sides' hooks moves the stream to
/// TCP with nothing lost, `readmit` brings the ring back (the connecting side offers
/// again by itself), and a closed stream's hook says so.
#[test]
fn a_backend_withdraws_and_readmits_one_peer_through_its_hooks() {
    let (_, dir) = builder("hooked");
    let hooked = std::sync::Arc::new(Hooked {
        inner: coresident_net::HostRegistry::at(dir.join("reg")),
        subs: Default::default(),
    });
    let b = coresident_net::Builder::new().discovery_arc(hooked.clone());
    let listener = b.bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let c = b.connect(addr).unwrap();
    let (s, _) = listener.accept().unwrap();
    assert_eq!((c.path(), s.path()), (Path::Ring, Path::Ring));
    {
        let subs = hooked.subs.lock().unwrap();
        assert_eq!(subs.len(), 2, "one hook per side");
        assert!(subs.iter().all(|(ip, _)| ip.is_loopback()));
        for (_, sub) in subs.iter() {
            assert!(sub.withdraw());
        }
    }
    // Each side falls back at its next look at its descriptors.
    c.poll_events().unwrap();
    s.poll_events().unwrap();
    assert_eq!((c.path(), s.path()), (Path::Tcp, Path::Tcp));
    let mut p = Pattern::new(7);
    let mut buf = vec![0u8; 4096];
    p.fill(&mut buf);
    (&c).write_all(&buf).unwrap();
    let mut got = vec![0u8; 4096];
    (&s).read_exact(&mut got).unwrap();
    let mut q = Pattern::new(7);
    q.check(&got).unwrap();
    assert_eq!(
        (c.path(), s.path()),
        (Path::Tcp, Path::Tcp),
        "withdrawn: no upgrade"
    );
    for (_, sub) in hooked.subs.lock().unwrap().iter() {
        assert!(sub.readmit());
    }
    let t = std::time::Instant::now();
    c.set_nonblocking(true).unwrap();
    s.set_nonblocking(true).unwrap();
    while c.path() != Path::Ring || s.path() != Path::Ring {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(10),
            "watchdog: {:?} {:?}",
            c.stats(),
            s.stats()
        );
        c.poll_events().unwrap();
        s.poll_events().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    c.set_nonblocking(false).unwrap();
    s.set_nonblocking(false).unwrap();
    p.fill(&mut buf);
    (&c).write_all(&buf).unwrap();
    (&s).read_exact(&mut got).unwrap();
    q.check(&got).unwrap();
    assert_eq!(c.stats().epoch, 1);
    drop((c, s));
    assert!(hooked
        .subs
        .lock()
        .unwrap()
        .iter()
        .all(|(_, sub)| !sub.is_alive() && !sub.withdraw()));
    let _ = std::fs::remove_dir_all(dir);
}

/// `upgrade` until the stream is on the ring. An upgrade right after a downgrade may be
/// refused while the peer is still finishing the switch (it stays on TCP, loses nothing, and
/// counts a refusal); this test is about switching both ways, so it asks again.
fn upgrade_until_ring(c: &coresident_net::Stream) {
    for _ in 0..500 {
        c.upgrade().unwrap();
        if c.path() == Path::Ring {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("never back on the ring: {:?}", c.stats());
}
