//! Hostile peers: a connecting side that speaks the session protocol by hand and lies
//! in it (a huge offset, an offset in the past, a gap, a FIN below what it sent, a bad
//! header), scribbles on the ring, or never answers the upgrade. Each ends in a clean
//! fallback with the stream intact or an error on that stream only: never wrong bytes,
//! never a hang, and another stream of the same listener carries on.

mod common;

use common::builder;
use coresident::ring::{Consumer, Producer};
use coresident_net::wire::{self, FourTuple, Hello, Segment};
use coresident_net::{
    Builder, Discovery, HostRegistry, Listener, OfferParams, Path, RingLink, Stream,
};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path as FsPath;
use std::time::Duration;

/// A connecting side played by hand.
struct Hostile {
    tcp: TcpStream,
    tx: Producer,
    _rx: Consumer,
    link: Option<Box<dyn RingLink>>,
}

struct Raw(*mut u8, usize);
// SAFETY:
// - the pointer and length come from a live `RingLink` (one mapping, 128-aligned),
//   which the test keeps alive longer than any ring half built on it;
// - the test touches the bytes only through the ring and volatile writes.
unsafe impl coresident::SharedRegion for Raw {
    fn as_ptr(&self) -> *mut u8 {
        self.0
    }
    fn len(&self) -> usize {
        self.1
    }
}

impl Hostile {
    fn connect(addr: SocketAddr, reg: &FsPath) -> Self {
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        let src = sock.local_addr().unwrap().as_socket().unwrap();
        let hello = Hello {
            mode: 0,
            epoch: 0,
            session: [0x42; 16],
            tuple: FourTuple { src, dst: addr },
        };
        let link = HostRegistry::at(reg)
            .offer(
                &hello,
                &OfferParams {
                    ring_size: 1 << 16,
                    timeout: Duration::from_secs(2),
                },
            )
            .unwrap();
        link.commit().unwrap();
        sock.connect(&addr.into()).unwrap();
        let (layout, role) = link.layout();
        let ((to, ts), (ro, rs)) = layout.rings(role);
        let (p, l) = link.region();
        let raw = Raw(p, l);
        let tx = Producer::attach(coresident::ring_memory(&raw, to, ts).unwrap()).unwrap();
        let rx = Consumer::attach(coresident::ring_memory(&raw, ro, rs).unwrap()).unwrap();
        Self {
            tcp: sock.into(),
            tx,
            _rx: rx,
            link: Some(link),
        }
    }

    fn seg(&mut self, kind: u8, offset: u64, payload: &[u8]) {
        let h = Segment {
            kind,
            len: payload.len() as u32,
            offset,
        }
        .encode();
        self.tcp.write_all(&h).unwrap();
        self.tcp.write_all(payload).unwrap();
    }

    fn data(&mut self, offset: u64, payload: &[u8]) {
        self.seg(wire::SEG_DATA, offset, payload);
    }

    fn fin(&mut self, offset: u64) {
        self.seg(wire::SEG_FIN, offset, &[]);
    }

    /// Closes the channel (the listener's side sees the hang-up).
    fn drop_channel(&mut self) {
        self.link = None;
    }
}

/// A listener, a hostile stream and an honest one accepted from it.
fn setup(
    name: &str,
) -> (
    Listener,
    Stream,
    Stream,
    Stream,
    Hostile,
    std::path::PathBuf,
) {
    let (b, dir) = builder(name);
    let b = b.gap_timeout(Duration::from_millis(500));
    let listener = b.bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let hostile = Hostile::connect(addr, &dir.join("reg"));
    let (victim, _) = listener.accept().unwrap();
    assert_eq!(victim.path(), Path::Ring, "the hostile side got a channel");
    let good_client = b.connect(addr).unwrap();
    let (good_server, _) = listener.accept().unwrap();
    assert_eq!(good_server.path(), Path::Ring);
    (listener, victim, good_client, good_server, hostile, dir)
}

/// The honest stream of the same listener still works.
fn honest_still_works(c: &Stream, s: &Stream) {
    (&*c).write_all(b"still fine").unwrap();
    let mut b = [0u8; 10];
    (&*s).read_exact(&mut b).unwrap();
    assert_eq!(&b, b"still fine");
}

fn read_all(s: Stream) -> std::io::Result<Vec<u8>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let r = (&s).read_to_end(&mut v).map(|_| v);
        let _ = tx.send(r);
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("watchdog: the victim hung")
}

#[test]
fn a_huge_offset_is_an_error_on_that_stream_only() {
    let (_l, victim, gc, gs, mut h, dir) = setup("huge");
    h.data(1 << 50, b"from far away");
    h.drop_channel();
    let e = read_all(victim).expect_err("a gap no path fills");
    eprintln!("huge offset: {e}");
    assert!(matches!(
        e.kind(),
        ErrorKind::InvalidData | ErrorKind::TimedOut
    ));
    honest_still_works(&gc, &gs);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn an_offset_in_the_past_is_dropped_and_the_stream_stays_whole() {
    let (_l, victim, gc, gs, mut h, dir) = setup("past");
    h.data(0, b"0123456789");
    h.data(3, b"XXXXX"); // a "resend" of bytes already delivered, with other bytes
    h.data(10, b"abcde");
    h.fin(15);
    let v = read_all(victim).unwrap();
    assert_eq!(
        v, b"0123456789abcde",
        "no duplicate, no gap, first bytes win"
    );
    honest_still_works(&gc, &gs);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_gap_no_path_fills_is_an_error_not_a_hang() {
    let (_l, victim, gc, gs, mut h, dir) = setup("gap");
    h.data(0, b"01234");
    h.data(6, b"6789"); // byte 5 never comes; the channel stays open and empty
    let e = read_all(victim).expect_err("the gap");
    eprintln!("gap: {e}");
    assert_eq!(e.kind(), ErrorKind::TimedOut);
    honest_still_works(&gc, &gs);
    drop(h);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_fin_below_what_was_sent_is_an_error() {
    let (_l, victim, gc, gs, mut h, dir) = setup("fin");
    h.data(0, b"0123456789");
    h.fin(5);
    let e = read_all(victim).expect_err("a FIN below bytes seen");
    assert_eq!(e.kind(), ErrorKind::InvalidData);
    honest_still_works(&gc, &gs);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_bad_segment_header_is_an_error() {
    let (_l, victim, gc, gs, mut h, dir) = setup("header");
    h.tcp.write_all(&[0xEE; 16]).unwrap();
    let e = read_all(victim).expect_err("garbage header");
    assert_eq!(e.kind(), ErrorKind::InvalidData);
    honest_still_works(&gc, &gs);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_scribbled_ring_falls_back_to_tcp_with_the_stream_intact() {
    let (_l, victim, gc, gs, mut h, dir) = setup("scribble");
    let data: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
    // Honest at first: the epoch frame, then 1000 bytes in one frame, published.
    h.tx.write(wire::FRAME_EPOCH, &wire::encode_epoch(0, 0))
        .unwrap();
    h.tx.write(wire::FRAME_DATA, &data[..1000]).unwrap();
    h.tx.write(wire::FRAME_DATA, &data[1000..2000]).unwrap();
    let _ = h.tx.publish().unwrap();
    // Then the third frame's header is garbage (as a buggy or hostile writer would
    // leave it): frames at 0 (8 + 16 bytes), 24 (8 + 1000), 1032.
    {
        let (layout, role) = h.link.as_ref().unwrap().layout();
        let ((to, _), _) = layout.rings(role);
        let (p, _) = h.link.as_ref().unwrap().region();
        let frame = to + coresident::ring::layout::DATA_OFFSET + 1032;
        for i in 0..8 {
            // SAFETY:
            // - `frame + i` lies inside the mapped region: the ring's data area is
            //   64 KiB and the frame is at 1032;
            // - a volatile write to shared memory that only the ring's atomics and
            //   volatile copies read; no reference to it exists.
            unsafe { p.add(frame + i).write_volatile(0xA5) };
        }
    }
    // Publish the (garbage) third frame's slot by hand: write another frame after it.
    let _ = h.tx.write(wire::FRAME_DATA, &data[2000..]);
    let _ = h.tx.publish();
    // The honest peer, seeing the channel close, resends over TCP from offset 1000
    // (what it believes unconsumed; the listener dedups what it got).
    let reader = std::thread::spawn(move || read_all(victim));
    std::thread::sleep(Duration::from_millis(300));
    h.data(1000, &data[1000..]);
    h.fin(3000);
    let v = reader.join().unwrap().unwrap();
    assert_eq!(v, data, "intact: ring prefix, then TCP, no byte twice");
    honest_still_works(&gc, &gs);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_registry_socket_that_never_answers_gives_plain_tcp_in_bounded_time() {
    let (b, dir) = builder("mute");
    let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = plain.local_addr().unwrap();
    // A squatter's socket under the listener's name that accepts and never answers.
    let sockdir = dir.join("reg").join("tcp");
    std::fs::create_dir_all(&sockdir).unwrap();
    for d in [dir.join("reg"), sockdir.clone()] {
        let mut p = std::fs::metadata(&d).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut p, 0o700);
        std::fs::set_permissions(&d, p).unwrap();
    }
    let _mute =
        std::os::unix::net::UnixListener::bind(sockdir.join(format!("127.0.0.1_{}", addr.port())))
            .unwrap();
    let b: Builder = b.handshake_timeout(Duration::from_millis(300));
    let t = std::thread::spawn(move || {
        let (mut s, _) = plain.accept().unwrap();
        let mut v = [0u8; 5];
        s.read_exact(&mut v).unwrap();
        v
    });
    let c = b.connect(addr).unwrap();
    assert_eq!(c.path(), Path::Plain);
    assert!(c.stats().refusals == 0 || c.stats().path == Path::Plain);
    (&c).write_all(b"plain").unwrap();
    assert_eq!(
        &t.join().unwrap(),
        b"plain",
        "raw bytes: no segment headers"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_stalled_handshake_does_not_hold_up_other_clients() {
    let (b, dir) = builder("stall");
    let listener = b.bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let path = dir
        .join("reg")
        .join("tcp")
        .join(format!("127.0.0.1_{}", addr.port()));
    // Half a hello, then silence.
    let mut stall = std::os::unix::net::UnixStream::connect(&path).unwrap();
    stall.write_all(&[b'C'; 10]).unwrap();
    let server = std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        s.path()
    });
    let c = b.connect(addr).unwrap();
    assert_eq!(c.path(), Path::Ring);
    assert_eq!(server.join().unwrap(), Path::Ring);
    drop(stall);
    let _ = std::fs::remove_dir_all(dir);
}
