//! The rendezvous against good and hostile offerers, in one process (a socket pair and
//! a thread per side). Each bad input must give one clear, typed error on the acceptor,
//! and the offerer must be told why.
#![cfg(target_os = "linux")]

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::thread;
use std::time::Duration;

use coresident::{ChannelLayout, Doorbell, Role, Wake};
use coresident_shm::rendezvous::send_with_fds;
use coresident_shm::wire::{
    encode_hello, region_alloc_size, AckWire, Hello, HelloWire, RingSizeError, ACK_LEN,
    HELLO_FIXED_LEN,
};
use coresident_shm::{
    accept_offer, offer, AcceptConfig, HandshakeError, HelloError, MemfdRegion, OfferConfig,
    PeerId, RegionError, RejectReason,
};
use rustix::fs::{MemfdFlags, SealFlags};
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, IntoBytes};

const RING: u32 = 4096;

fn id(s: &str) -> PeerId {
    s.parse().unwrap()
}

fn layout() -> ChannelLayout {
    ChannelLayout::symmetric(RING)
}

/// The size of a region for two `RING` rings.
fn needed() -> u64 {
    region_alloc_size(layout()) as u64
}

/// A memfd holding two laid-out rings of `RING` bytes, `len` bytes long and sealed.
fn rings(len: u64) -> OwnedFd {
    let r = MemfdRegion::create("t", len as usize).unwrap();
    coresident::init_region(&r, layout()).unwrap();
    r.as_fd().try_clone_to_owned().unwrap()
}

fn good_hello(region_size: u64) -> HelloWire {
    let bytes = encode_hello(&Hello {
        region_size,
        layout: layout(),
        offerer: id("offerer"),
        acceptor: Some(id("acceptor")),
        context: Vec::new(),
    })
    .unwrap();
    HelloWire::read_from_bytes(&bytes).unwrap()
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
    cfg.layout = ChannelLayout {
        to_acceptor: 8192,
        to_offerer: 4096,
    };
    cfg.context = b"tcp 10.0.0.1:5000 -> 10.0.0.2:80, session 7".to_vec();
    let off = offer(a, &cfg).unwrap();
    let acc = acceptor.join().unwrap();
    assert_eq!(off.role(), Role::Offerer);
    assert_eq!(acc.role(), Role::Acceptor);
    assert_eq!(acc.peer().id, Some(id("offerer")));
    assert_eq!(acc.peer().cred.pid, std::process::id() as i32);
    assert_eq!(acc.peer().cred.uid, rustix::process::geteuid().as_raw());
    // The context arrives as sent, and the offerer keeps the same bytes.
    assert_eq!(acc.peer().context, cfg.context);
    assert_eq!(off.peer().context, cfg.context);
    assert_eq!(off.rings().0, acc.rings().1);
    assert_eq!(off.rings().0 .1, 8192);
    let p = off.region().as_ptr().wrapping_add(off.rings().0 .0);
    let q = acc.region().as_ptr().wrapping_add(acc.rings().1 .0);
    // SAFETY:
    // - both pointers are valid for the ring's length (> 4096 + 640 bytes), and offset
    //   4096 lies within it (in the data area, which nothing else uses here);
    // - nothing else accesses these bytes concurrently.
    unsafe {
        p.add(4096).write_volatile(42);
        assert_eq!(q.add(4096).read_volatile(), 42);
    }
    off.link().ring().unwrap();
    assert_eq!(
        acc.link().wait(Some(Duration::from_secs(30))).unwrap(),
        Wake::Rung
    );
    assert!(!off.link().try_consume().unwrap());
    acc.link().ring().unwrap();
    assert!(off.link().try_consume().unwrap());
    drop(acc);
    assert!(!off.link().peer_alive());
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
    assert_eq!(
        err,
        HandshakeError::Hello(HelloError::VersionMismatch { ours: 2, theirs: 7 })
    );
    assert_eq!(status, Some(RejectReason::Version.code()));
    assert!(err.to_string().contains("version 7"), "{err}");
}

/// Issue 14: the ring layout version is checked in the hello, with its own reason.
#[test]
fn ring_layout_version_is_refused_in_the_hello() {
    let mut h = good_hello(needed());
    h.ring_version = U32::new(coresident_ring::VERSION + 1);
    let m = rings(needed());
    let (err, status) = play(h.as_bytes(), &[m.as_fd()]);
    assert_eq!(
        err,
        HandshakeError::Hello(HelloError::RingVersion {
            ours: coresident_ring::VERSION,
            theirs: coresident_ring::VERSION + 1
        })
    );
    assert_eq!(status, Some(RejectReason::RingVersion.code()));
    assert!(err.to_string().contains("layout version"), "{err}");
}

/// Issue 16: rings that disagree with the hello are `Rings`, never `RegionTooSmall`.
#[test]
fn rings_that_disagree_with_the_hello_are_refused_as_such() {
    // Laid out for 4096-byte rings, offered as 8192-byte ones (the region is large
    // enough for either).
    let big = ChannelLayout::symmetric(8192);
    let len = region_alloc_size(big) as u64;
    let m = rings(len);
    let mut h = good_hello(len);
    h.to_acceptor_data = U32::new(8192);
    h.to_offerer_data = U32::new(8192);
    let (err, status) = play(h.as_bytes(), &[m.as_fd()]);
    assert!(matches!(err, HandshakeError::Rings(_)), "{err:?}");
    assert_eq!(status, Some(RejectReason::Rings.code()));
    // And a region nobody laid out at all.
    let (err, _) = play_fds(needed(), &[sealed(needed()).as_fd()]);
    assert!(
        matches!(
            err,
            HandshakeError::Rings(coresident_ring::AttachError::BadMagic { found: 0 })
        ),
        "{err:?}"
    );
}

#[test]
fn bad_magic() {
    let mut h = good_hello(needed());
    h.magic = *b"GET / HT";
    assert_eq!(
        play(h.as_bytes(), &[]).0,
        HandshakeError::Hello(HelloError::BadMagic)
    );
}

#[test]
fn bad_length_field() {
    let mut h = good_hello(needed());
    h.hello_len = U32::new(1000);
    assert_eq!(
        play(h.as_bytes(), &[]).0,
        HandshakeError::Hello(HelloError::BadLength { claimed: 1000 })
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
            expected: HELLO_FIXED_LEN
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
    let m = rings(needed());
    let m2 = sealed(needed());
    let (err, status) = play_fds(needed(), &[m.as_fd(), m2.as_fd()]);
    assert_eq!(err, HandshakeError::WrongFdCount { received: 2 });
    assert_eq!(status, Some(RejectReason::Descriptors.code()));
    assert_eq!(
        play_fds(needed(), &[]).0,
        HandshakeError::WrongFdCount { received: 0 }
    );
    let many: Vec<OwnedFd> = (0..8).map(|_| sealed(needed())).collect();
    let fds: Vec<BorrowedFd<'_>> = many.iter().map(AsFd::as_fd).collect();
    assert_eq!(play_fds(needed(), &fds).0, HandshakeError::TooManyFds);
}

#[test]
fn pipe_instead_of_memfd() {
    // Refused by the seal check, which comes before any fstat (issue 17 finding 5).
    let (r, _w) = rustix::pipe::pipe().unwrap();
    let (err, status) = play_fds(needed(), &[r.as_fd()]);
    assert_eq!(err, HandshakeError::Region(RegionError::NotMemfd));
    assert_eq!(status, Some(RejectReason::Region.code()));
}

#[test]
fn plain_file_instead_of_memfd() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let path = dir.join(format!("plain-file-{}", std::process::id()));
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(needed()).unwrap();
    std::fs::remove_file(&path).unwrap();
    let (err, status) = play_fds(needed(), &[f.as_fd()]);
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
fn socket_instead_of_memfd() {
    let (s1, _s2) = UnixStream::pair().unwrap();
    assert_eq!(
        play_fds(needed(), &[s1.as_fd()]).0,
        HandshakeError::Region(RegionError::NotMemfd)
    );
}

#[test]
fn unsealed_memfd() {
    let m = memfd(needed(), SealFlags::empty());
    assert_eq!(
        play_fds(needed(), &[m.as_fd()]).0,
        HandshakeError::Region(RegionError::NotSealed { seals: 0 })
    );
    // Grow-sealed only: still shrinkable under our mapping.
    let m = memfd(needed(), SealFlags::GROW);
    assert!(matches!(
        play_fds(needed(), &[m.as_fd()]).0,
        HandshakeError::Region(RegionError::NotSealed { .. })
    ));
}

#[test]
fn region_smaller_than_the_rings_need() {
    let small = ChannelLayout::symmetric(RING).region_len() as u64 - 8;
    let m = sealed(small);
    let (err, status) = play_fds(small, &[m.as_fd()]);
    assert_eq!(
        err,
        HandshakeError::Hello(HelloError::RegionTooSmall {
            region: small,
            needed: small + 8
        })
    );
    assert_eq!(status, Some(RejectReason::Sizes.code()));
}

#[test]
fn declared_size_differs_from_the_memfd() {
    // The hello claims more than the memfd holds: mapping it would SIGBUS.
    let m = rings(needed());
    assert_eq!(
        play_fds(needed() * 2, &[m.as_fd()]).0,
        HandshakeError::Region(RegionError::SizeMismatch {
            declared: needed() * 2,
            actual: needed()
        })
    );
}

#[test]
fn sizes_out_of_range() {
    let m = rings(needed());
    let mut h = good_hello(needed());
    h.to_offerer_data = 5000.into();
    assert_eq!(
        play(h.as_bytes(), &[m.as_fd()]).0,
        HandshakeError::Hello(HelloError::RingSize(RingSizeError::NotPowerOfTwo {
            size: 5000
        }))
    );
    // A power of two, out of range: said so (issue 14).
    let mut h = good_hello(needed());
    h.to_offerer_data = (1u32 << 29).into();
    let err = play(h.as_bytes(), &[m.as_fd()]).0;
    assert_eq!(
        err,
        HandshakeError::Hello(HelloError::RingSize(RingSizeError::OutOfRange {
            size: 1 << 29
        }))
    );
    assert!(!err.to_string().contains("not a power of two"), "{err}");
    let mut h = good_hello(needed());
    h.region_size = U64::new(u64::MAX);
    assert!(matches!(
        play(h.as_bytes(), &[m.as_fd()]).0,
        HandshakeError::Hello(HelloError::RegionTooLarge { .. })
    ));
}

#[test]
fn garbage_peer_ids() {
    let m = rings(needed());
    let mut h = good_hello(needed());
    h.offerer_id = [0xff; 64];
    assert!(matches!(
        play(h.as_bytes(), &[m.as_fd()]).0,
        HandshakeError::Hello(HelloError::BadPeerId(_))
    ));
    let mut h = good_hello(needed());
    h.offerer_id = [0; 64];
    assert!(matches!(
        play(h.as_bytes(), &[m.as_fd()]).0,
        HandshakeError::Hello(HelloError::BadPeerId(_))
    ));
}

#[test]
fn hostile_context_is_bounded_and_delivered_as_is() {
    // A context of every byte value at the limit is accepted as opaque bytes.
    let context: Vec<u8> = (0..=255u8).collect();
    let mut bytes = good_hello(needed()).as_bytes().to_vec();
    bytes[12..16].copy_from_slice(&((HELLO_FIXED_LEN + 256) as u32).to_le_bytes());
    bytes.extend_from_slice(&context);
    let (ours, theirs) = UnixStream::pair().unwrap();
    let acceptor = thread::spawn(move || accept_offer(theirs, &accept_cfg()));
    let m = rings(needed());
    send_with_fds(ours.as_fd(), &bytes, &[m.as_fd()]).unwrap();
    let ep = acceptor.join().unwrap().unwrap();
    assert_eq!(ep.peer().context, context);
    // One byte more is refused before it is read.
    let mut h = good_hello(needed());
    h.hello_len = U32::new((HELLO_FIXED_LEN + 257) as u32);
    assert_eq!(
        play(h.as_bytes(), &[]).0,
        HandshakeError::Hello(HelloError::BadLength {
            claimed: (HELLO_FIXED_LEN + 257) as u32
        })
    );
    // A context longer than the limit is refused on the offering side too.
    let mut cfg = OfferConfig::new(id("o"));
    cfg.context = vec![0; 257];
    let (a, _b) = UnixStream::pair().unwrap();
    assert_eq!(
        offer(a, &cfg).unwrap_err(),
        HandshakeError::ContextTooLong { len: 257 }
    );
}

#[test]
fn region_can_be_created_for_every_layout_size() {
    let l = ChannelLayout {
        to_acceptor: 1 << 16,
        to_offerer: 1 << 12,
    };
    let r = MemfdRegion::create("t", region_alloc_size(l)).unwrap();
    assert!(r.len() >= l.region_len());
    coresident::init_region(&r, l).unwrap();
}

#[test]
fn hello_in_pieces_with_the_fd_on_a_later_piece_is_accepted() {
    // A stream socket may deliver the hello in several reads; descriptors ride on
    // whichever piece they were sent with.
    let (ours, theirs) = UnixStream::pair().unwrap();
    let acceptor = thread::spawn(move || accept_offer(theirs, &accept_cfg()));
    let m = rings(needed());
    let h = good_hello(needed());
    let bytes = h.as_bytes();
    send_with_fds(ours.as_fd(), &bytes[..10], &[]).unwrap();
    thread::sleep(Duration::from_millis(5));
    send_with_fds(ours.as_fd(), &bytes[10..100], &[m.as_fd()]).unwrap();
    thread::sleep(Duration::from_millis(5));
    send_with_fds(ours.as_fd(), &bytes[100..], &[]).unwrap();
    let ep = acceptor.join().unwrap().unwrap();
    assert_eq!(ep.peer().id, Some(id("offerer")));
    // The ack, then a doorbell byte: both on our end of the socket.
    ep.link().ring().unwrap();
    let mut ack = [0u8; ACK_LEN + 1];
    std::io::Read::read_exact(&mut &ours, &mut ack).unwrap();
    assert_eq!(
        AckWire::read_from_bytes(&ack[..ACK_LEN])
            .unwrap()
            .status
            .get(),
        0
    );
    drop(ours);
    assert!(!ep.link().peer_known_gone());
    assert_eq!(
        ep.link().wait(Some(Duration::from_secs(30))).unwrap(),
        Wake::PeerGone
    );
    assert!(ep.link().peer_known_gone());
    assert!(!ep.link().peer_alive());
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
        (HandshakeError::Hello(HelloError::BadMagic), "bad magic"),
        (
            HandshakeError::WrongFdCount { received: 2 },
            "2 descriptors, expected 1",
        ),
        (
            HandshakeError::Region(RegionError::NotSealed { seals: 0 }),
            "lacks the shrink/grow seals",
        ),
        (
            HandshakeError::Rejected(RejectReason::Version),
            "refused the offer: protocol version mismatch",
        ),
        (HandshakeError::NotListening, "stale socket"),
        (HandshakeError::NoSuchSocket, "no socket at that path"),
        (
            HandshakeError::Rejected(RejectReason::Credentials),
            "credentials are not admitted",
        ),
    ];
    for (err, want) in cases {
        let text = err.to_string();
        assert!(text.contains(want), "{text:?} lacks {want:?}");
        let _: &dyn std::error::Error = &err;
    }
}
