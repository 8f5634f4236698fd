//! The rendezvous against good and hostile offerers, in one process (a socket pair and
//! a thread per side). Each bad input must give one clear, typed error on the acceptor,
//! and the offerer must be told why.
#![cfg(target_os = "linux")]

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::thread;
use std::time::Duration;

use coresident_shm::rendezvous::send_with_fds;
use coresident_shm::wire::{AckWire, HelloWire, ACK_LEN};
use coresident_shm::{
    accept_offer, offer, AcceptConfig, Doorbell, DoorbellError, HandshakeError, Layout,
    LayoutError, OfferConfig, PeerId, RegionError, RejectReason, Role, SharedRegion, Wake,
};
use rustix::fs::{MemfdFlags, SealFlags};
use zerocopy::little_endian::U32;
use zerocopy::{FromBytes, IntoBytes};

const RING: u64 = 4096;

fn id(s: &str) -> PeerId {
    s.parse().unwrap()
}

fn needed() -> u64 {
    Layout::new(RING, RING).unwrap().region_size() as u64
}

fn good_hello(region_size: u64) -> HelloWire {
    HelloWire::new(
        region_size,
        RING,
        RING,
        &id("offerer"),
        Some(&id("acceptor")),
    )
}

fn accept_cfg() -> AcceptConfig {
    AcceptConfig {
        local_id: Some(id("acceptor")),
        // Generous: only `timeout_when_silent` relies on the timeout firing.
        handshake_timeout: Duration::from_secs(20),
        ..AcceptConfig::default()
    }
}

/// A memfd of `len` bytes with `seals`.
fn memfd(len: u64, seals: SealFlags) -> OwnedFd {
    let fd =
        rustix::fs::memfd_create("t", MemfdFlags::ALLOW_SEALING | MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&fd, len).unwrap();
    if !seals.is_empty() {
        rustix::fs::fcntl_add_seals(&fd, seals).unwrap();
    }
    fd
}

fn sealed(len: u64) -> OwnedFd {
    memfd(len, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
}

fn eventfd() -> Doorbell {
    Doorbell::new().unwrap()
}

/// Plays a hostile offerer: sends `bytes` with `fds`, then reads the acceptor's answer.
/// Returns the acceptor's result and the ack status it sent, if any.
fn play(bytes: &[u8], fds: &[BorrowedFd<'_>]) -> (HandshakeError, Option<u32>) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let acceptor = thread::spawn(move || accept_offer(theirs, &accept_cfg()).map(|_| ()));
    send_with_fds(ours.as_fd(), bytes, fds).unwrap();
    let err = acceptor.join().unwrap().unwrap_err();
    let mut buf = [0u8; ACK_LEN];
    let status = match std::io::Read::read_exact(&mut &ours, &mut buf) {
        Ok(()) => Some(AckWire::read_from_bytes(&buf).unwrap().status.get()),
        Err(_) => None,
    };
    (err, status)
}

/// Sends a well-formed hello for `region_size` with the given descriptors.
fn play_fds(region_size: u64, fds: &[BorrowedFd<'_>]) -> (HandshakeError, Option<u32>) {
    play(good_hello(region_size).as_bytes(), fds)
}

#[test]
fn good_offer_is_accepted_and_memory_and_doorbells_are_shared() {
    let (a, b) = UnixStream::pair().unwrap();
    let acceptor = thread::spawn(move || accept_offer(b, &accept_cfg()).unwrap());
    let mut cfg = OfferConfig::new(id("offerer"));
    cfg.peer_id = Some(id("acceptor"));
    cfg.tx_data_size = 8192;
    cfg.rx_data_size = 4096;
    let off = offer(a, &cfg).unwrap();
    let acc = acceptor.join().unwrap();
    assert_eq!(off.role(), Role::Offerer);
    assert_eq!(acc.role(), Role::Acceptor);
    assert_eq!(acc.peer().id, Some(id("offerer")));
    assert_eq!(acc.peer().pid, std::process::id() as i32);
    assert_eq!(off.tx_slot(), acc.rx_slot());
    assert_eq!(off.tx_slot().data_size, 8192);
    let p = off.slot_ptr(off.tx_slot()).unwrap();
    let q = acc.slot_ptr(acc.rx_slot()).unwrap();
    // SAFETY:
    // - both pointers are valid for the slot's length (>= 4096 bytes), and offset 4096
    //   lies within it;
    // - nothing else accesses these bytes concurrently.
    unsafe {
        p.add(4096).write_volatile(42);
        assert_eq!(q.add(4096).read_volatile(), 42);
    }
    off.notify_peer().unwrap();
    assert_eq!(
        acc.wait(Some(Duration::from_secs(30))).unwrap(),
        Wake::Notified { count: 1 }
    );
    assert_eq!(off.try_consume().unwrap(), None);
    acc.notify_peer().unwrap();
    assert_eq!(off.try_consume().unwrap(), Some(1));
    drop(acc);
    assert!(!off.peer_alive().unwrap());
}

#[test]
fn acceptor_refusal_reaches_the_offerer() {
    let (a, b) = UnixStream::pair().unwrap();
    let acceptor = thread::spawn(move || accept_offer(b, &accept_cfg()).map(|_| ()));
    let mut cfg = OfferConfig::new(id("offerer"));
    cfg.peer_id = Some(id("somebody-else"));
    assert_eq!(
        offer(a, &cfg).unwrap_err(),
        HandshakeError::Rejected(RejectReason::PeerId)
    );
    assert_eq!(
        acceptor.join().unwrap().unwrap_err(),
        HandshakeError::WrongPeer
    );
}

#[test]
fn version_mismatch() {
    let mut h = good_hello(needed());
    h.version = U32::new(7);
    let (err, status) = play(h.as_bytes(), &[]);
    assert_eq!(err, HandshakeError::VersionMismatch { ours: 1, theirs: 7 });
    assert_eq!(status, Some(RejectReason::Version.code()));
    assert!(err.to_string().contains("version 7"), "{err}");
}

#[test]
fn bad_magic() {
    let mut h = good_hello(needed());
    h.magic = *b"GET / HT";
    assert_eq!(play(h.as_bytes(), &[]).0, HandshakeError::BadMagic);
}

#[test]
fn bad_length_field() {
    let mut h = good_hello(needed());
    h.hello_len = U32::new(1000);
    assert_eq!(
        play(h.as_bytes(), &[]).0,
        HandshakeError::BadLength { claimed: 1000 }
    );
}

#[test]
fn truncated_hello() {
    let h = good_hello(needed());
    let (ours, theirs) = UnixStream::pair().unwrap();
    let acceptor = thread::spawn(move || accept_offer(theirs, &accept_cfg()).map(|_| ()));
    send_with_fds(ours.as_fd(), &h.as_bytes()[..50], &[]).unwrap();
    drop(ours);
    assert_eq!(
        acceptor.join().unwrap().unwrap_err(),
        HandshakeError::Truncated {
            received: 50,
            expected: 168
        }
    );
}

#[test]
fn closed_before_a_byte_is_a_probe() {
    let (ours, theirs) = UnixStream::pair().unwrap();
    drop(ours);
    assert_eq!(
        accept_offer(theirs, &accept_cfg()).unwrap_err(),
        HandshakeError::Closed
    );
}

#[test]
fn timeout_when_silent() {
    let (_ours, theirs) = UnixStream::pair().unwrap();
    let cfg = AcceptConfig {
        handshake_timeout: Duration::from_millis(20),
        ..accept_cfg()
    };
    assert_eq!(
        accept_offer(theirs, &cfg).unwrap_err(),
        HandshakeError::Timeout
    );
}

#[test]
fn wrong_number_of_fds() {
    let m = sealed(needed());
    let e = eventfd();
    let (err, status) = play_fds(needed(), &[m.as_fd(), e.as_fd()]);
    assert_eq!(err, HandshakeError::WrongFdCount { received: 2 });
    assert_eq!(status, Some(RejectReason::Descriptors.code()));
    assert_eq!(
        play_fds(needed(), &[]).0,
        HandshakeError::WrongFdCount { received: 0 }
    );
    let many: Vec<Doorbell> = (0..8).map(|_| eventfd()).collect();
    let fds: Vec<BorrowedFd<'_>> = many.iter().map(AsFd::as_fd).collect();
    assert_eq!(play_fds(needed(), &fds).0, HandshakeError::TooManyFds);
}

#[test]
fn pipe_instead_of_eventfd() {
    let m = sealed(needed());
    let e = eventfd();
    let (r, _w) = rustix::pipe::pipe().unwrap();
    let (err, status) = play_fds(needed(), &[m.as_fd(), e.as_fd(), r.as_fd()]);
    assert_eq!(err, HandshakeError::Doorbell(DoorbellError::NotEventfd));
    assert_eq!(status, Some(RejectReason::Descriptors.code()));
}

#[test]
fn plain_file_instead_of_memfd() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let path = dir.join(format!("plain-file-{}", std::process::id()));
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(needed()).unwrap();
    std::fs::remove_file(&path).unwrap();
    let (e1, e2) = (eventfd(), eventfd());
    let (err, status) = play_fds(needed(), &[f.as_fd(), e1.as_fd(), e2.as_fd()]);
    // On a disk filesystem: no seal support at all. On tmpfs: seals supported, but a
    // file opened by path is born with F_SEAL_SEAL and can never be shrink/grow-sealed.
    assert!(
        matches!(
            err,
            HandshakeError::Region(RegionError::NotMemfd | RegionError::NotSealed { .. })
        ),
        "{err:?}"
    );
    assert_eq!(status, Some(RejectReason::Region.code()));
}

#[test]
fn eventfd_instead_of_memfd() {
    let (e0, e1, e2) = (eventfd(), eventfd(), eventfd());
    assert_eq!(
        play_fds(needed(), &[e0.as_fd(), e1.as_fd(), e2.as_fd()]).0,
        HandshakeError::Region(RegionError::NotRegularFile)
    );
}

#[test]
fn unsealed_memfd() {
    let m = memfd(needed(), SealFlags::empty());
    let (e1, e2) = (eventfd(), eventfd());
    assert_eq!(
        play_fds(needed(), &[m.as_fd(), e1.as_fd(), e2.as_fd()]).0,
        HandshakeError::Region(RegionError::NotSealed { seals: 0 })
    );
    // Grow-sealed only: still shrinkable under our mapping.
    let m = memfd(needed(), SealFlags::GROW);
    assert!(matches!(
        play_fds(needed(), &[m.as_fd(), e1.as_fd(), e2.as_fd()]).0,
        HandshakeError::Region(RegionError::NotSealed { .. })
    ));
}

#[test]
fn region_smaller_than_the_rings_need() {
    let small = needed() - 4096;
    let m = sealed(small);
    let (e1, e2) = (eventfd(), eventfd());
    let (err, status) = play_fds(small, &[m.as_fd(), e1.as_fd(), e2.as_fd()]);
    assert_eq!(
        err,
        HandshakeError::RegionTooSmall {
            region: small,
            needed: needed()
        }
    );
    assert_eq!(status, Some(RejectReason::Sizes.code()));
}

#[test]
fn declared_size_differs_from_the_memfd() {
    // The hello claims more than the memfd holds: mapping it would SIGBUS.
    let m = sealed(needed());
    let (e1, e2) = (eventfd(), eventfd());
    assert_eq!(
        play_fds(needed() * 2, &[m.as_fd(), e1.as_fd(), e2.as_fd()]).0,
        HandshakeError::Region(RegionError::SizeMismatch {
            declared: needed() * 2,
            actual: needed()
        })
    );
}

#[test]
fn sizes_out_of_range() {
    let mut h = good_hello(needed());
    h.to_offerer_data = 5000.into();
    assert_eq!(
        play(
            h.as_bytes(),
            &[
                sealed(needed()).as_fd(),
                eventfd().as_fd(),
                eventfd().as_fd()
            ]
        )
        .0,
        HandshakeError::Layout(LayoutError::BadRingSize { size: 5000 })
    );
    let h = good_hello(u64::MAX);
    assert!(matches!(
        play(
            h.as_bytes(),
            &[
                sealed(needed()).as_fd(),
                eventfd().as_fd(),
                eventfd().as_fd()
            ]
        )
        .0,
        HandshakeError::RegionTooLarge { .. }
    ));
}

#[test]
fn garbage_peer_ids() {
    let mut h = good_hello(needed());
    h.offerer_id = [0xff; 64];
    assert!(matches!(
        play(
            h.as_bytes(),
            &[
                sealed(needed()).as_fd(),
                eventfd().as_fd(),
                eventfd().as_fd()
            ]
        )
        .0,
        HandshakeError::BadPeerId(_)
    ));
    let mut h = good_hello(needed());
    h.offerer_id = [0; 64];
    assert!(matches!(
        play(
            h.as_bytes(),
            &[
                sealed(needed()).as_fd(),
                eventfd().as_fd(),
                eventfd().as_fd()
            ]
        )
        .0,
        HandshakeError::BadPeerId(_)
    ));
}

#[test]
fn region_can_be_created_for_every_layout_size() {
    let l = Layout::new(1 << 16, 1 << 12).unwrap();
    let r = SharedRegion::create("t", l.region_size()).unwrap();
    assert_eq!(r.len(), l.region_size());
}

#[test]
fn hello_in_pieces_with_fds_on_a_later_piece_is_accepted() {
    // A stream socket may deliver the hello in several reads; descriptors ride on
    // whichever piece they were sent with.
    let (ours, theirs) = UnixStream::pair().unwrap();
    let acceptor = thread::spawn(move || accept_offer(theirs, &accept_cfg()));
    let m = sealed(needed());
    let (e1, e2) = (eventfd(), eventfd());
    let h = good_hello(needed());
    let bytes = h.as_bytes();
    send_with_fds(ours.as_fd(), &bytes[..10], &[]).unwrap();
    thread::sleep(Duration::from_millis(5));
    send_with_fds(
        ours.as_fd(),
        &bytes[10..100],
        &[m.as_fd(), e1.as_fd(), e2.as_fd()],
    )
    .unwrap();
    thread::sleep(Duration::from_millis(5));
    send_with_fds(ours.as_fd(), &bytes[100..], &[]).unwrap();
    let ep = acceptor.join().unwrap().unwrap();
    assert_eq!(ep.peer().id, Some(id("offerer")));
    // The acceptor's doorbell for us is `e1` ("to offerer").
    ep.notify_peer().unwrap();
    assert_eq!(e1.try_consume().unwrap(), Some(1));
    drop(ours);
    assert!(!ep.peer_known_gone());
    assert_eq!(
        ep.wait(Some(Duration::from_secs(30))),
        Err(coresident_shm::WaitError::PeerGone)
    );
    assert!(ep.peer_known_gone());
    assert!(!ep.peer_alive().unwrap());
}

#[test]
fn listener_removes_only_its_own_socket() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let path = dir.join(format!("own-sock-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let l = coresident_shm::Listener::bind(&path).unwrap();
    assert_eq!(l.path(), path);
    // Someone replaces the socket file (e.g. a new registration after ours looked dead).
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, b"someone else's").unwrap();
    drop(l);
    assert!(
        path.exists(),
        "dropped listener removed a file that was not its own"
    );
    std::fs::remove_file(&path).unwrap();
    // The normal case: its own socket goes away with it.
    let l = coresident_shm::Listener::bind(&path).unwrap();
    drop(l);
    assert!(!path.exists());
}

#[test]
fn errors_display_clearly() {
    let cases = [
        (HandshakeError::BadMagic, "bad magic"),
        (
            HandshakeError::WrongFdCount { received: 2 },
            "2 descriptors, expected 3",
        ),
        (
            HandshakeError::Region(RegionError::NotSealed { seals: 0 }),
            "lacks the shrink/grow seals",
        ),
        (
            HandshakeError::Doorbell(DoorbellError::NotEventfd),
            "not an eventfd",
        ),
        (
            HandshakeError::Rejected(RejectReason::Version),
            "refused the offer: protocol version mismatch",
        ),
    ];
    for (err, want) in cases {
        let text = err.to_string();
        assert!(text.contains(want), "{text:?} lacks {want:?}");
        let _: &dyn std::error::Error = &err;
    }
}
