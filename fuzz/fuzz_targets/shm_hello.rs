//! The host transport's rendezvous against a hostile peer (`coresident_shm`), over a
//! real socket pair in one thread:
//!
//! - as a hostile offerer: arbitrary hello bytes, cut into arbitrary pieces, with a
//!   chosen descriptor (a good sealed memfd with rings, one without rings, a pipe, an
//!   unsealed memfd, a socket, none, two) attached to a chosen piece, then end of
//!   file; `accept_offer` must return an endpoint or a typed error, never panic, never
//!   wait (everything is buffered before it runs), and what it accepts must be sound;
//! - as a hostile acceptor: arbitrary ack bytes (possibly with a descriptor) answer a
//!   real offer; `PreparedOffer::offer` must return an endpoint only for a real ack.
//!
//! The pure parsers (`parse_hello`, `check_prefix`, `parse_ack`) see every input too.
//! The first byte picks the role and a "repair" mode that writes a valid prefix and
//! sizes over the input, so the fuzzer also reaches the checks behind them.
#![no_main]

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::OnceLock;
use std::time::Duration;

use coresident::ChannelLayout;
use coresident_shm::rendezvous::send_with_fds;
use coresident_shm::wire::{
    check_prefix, parse_ack, parse_hello, region_alloc_size, ACK_LEN, HELLO_FIXED_LEN,
    HELLO_MAX_LEN, HELLO_PREFIX_LEN, PROTOCOL_VERSION,
};
use coresident_shm::{
    accept_offer, AcceptConfig, CredPolicy, HandshakeError, MemfdRegion, OfferConfig,
    PreparedOffer,
};
use libfuzzer_sys::fuzz_target;

const LAYOUT: ChannelLayout = ChannelLayout {
    to_acceptor: 4096,
    to_offerer: 8192,
};

/// Descriptors made once: a region with rings, one without, an unsealed memfd, a pipe.
struct Pool {
    good: MemfdRegion,
    bare: MemfdRegion,
    unsealed: OwnedFd,
    pipe: (OwnedFd, OwnedFd),
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let len = region_alloc_size(LAYOUT);
        let good = MemfdRegion::create("fuzz", len).unwrap();
        coresident::init_region(&good, LAYOUT).unwrap();
        let bare = MemfdRegion::create("fuzz-bare", len).unwrap();
        let unsealed = rustix::fs::memfd_create("u", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&unsealed, len as u64).unwrap();
        Pool {
            good,
            bare,
            unsealed,
            pipe: rustix::pipe::pipe().unwrap(),
        }
    })
}

fn accept_cfg() -> AcceptConfig {
    AcceptConfig {
        local_id: Some("acceptor".parse().unwrap()),
        // Everything is buffered before the acceptor runs: it never needs to wait.
        handshake_timeout: Duration::from_secs(5),
        ..AcceptConfig::default()
    }
}

/// The descriptors for choice `c`.
fn fds(c: u8, socket: &UnixStream) -> Vec<BorrowedFd<'_>> {
    let p = pool();
    match c % 8 {
        0 => vec![],
        1 | 2 => vec![p.good.as_fd()],
        3 => vec![p.bare.as_fd()],
        4 => vec![p.pipe.0.as_fd()],
        5 => vec![p.unsealed.as_fd()],
        6 => vec![socket.as_fd()],
        _ => vec![p.good.as_fd(), p.bare.as_fd()],
    }
}

/// Plays a hostile offerer with `hello`, cut at `cuts`, descriptors on piece `on`.
fn hostile_offerer(hello: &[u8], fd_choice: u8, cuts: &[u8], on: u8) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let (spare, _spare2) = UnixStream::pair().unwrap();
    let fds = fds(fd_choice, &spare);
    let mut pieces = Vec::new();
    let mut at = 0;
    for &c in cuts {
        let end = (at + usize::from(c)).min(hello.len());
        if end > at {
            pieces.push(&hello[at..end]);
            at = end;
        }
    }
    if at < hello.len() {
        pieces.push(&hello[at..]);
    }
    let on = if pieces.is_empty() {
        0
    } else {
        usize::from(on) % pieces.len()
    };
    if pieces.is_empty() && !fds.is_empty() {
        let _ = send_with_fds(ours.as_fd(), &[0], &fds);
    }
    for (i, piece) in pieces.iter().enumerate() {
        let with: &[BorrowedFd<'_>] = if i == on { &fds } else { &[] };
        if send_with_fds(ours.as_fd(), piece, with).is_err() {
            break;
        }
    }
    // End of file after the input: the acceptor never waits for more.
    let _ = rustix::net::shutdown(&ours, rustix::net::Shutdown::Write);
    match accept_offer(theirs, &accept_cfg()) {
        Ok(ep) => {
            // Accepted: then it was the good region, with rings of the declared sizes.
            assert!(ep.region().len() >= ep.layout().region_len());
            assert!(ep.peer().context.len() <= 256);
            assert!(ep.peer().id.is_some());
            let ((a, sa), (b, sb)) = ep.rings();
            assert!(a + coresident::ring::region_size(sa) <= ep.region().len());
            assert!(b + coresident::ring::region_size(sb) <= ep.region().len());
        }
        Err(e) => {
            // Every refusal is worded.
            let _ = e.to_string();
            if let Some(r) = e.reject_reason() {
                let _ = r.to_string();
            }
        }
    }
}

/// Plays a hostile acceptor answering a real offer with `ack`.
fn hostile_acceptor(ack: &[u8], with_fd: bool) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let p = pool();
    let fds: Vec<BorrowedFd<'_>> = if with_fd {
        vec![p.pipe.1.as_fd()]
    } else {
        vec![]
    };
    if !ack.is_empty() || !fds.is_empty() {
        let _ = send_with_fds(theirs.as_fd(), if ack.is_empty() { &[0] } else { ack }, &fds);
    }
    let _ = rustix::net::shutdown(&theirs, rustix::net::Shutdown::Write);
    let mut cfg = OfferConfig::new("offerer".parse().unwrap());
    cfg.layout = ChannelLayout::symmetric(64);
    cfg.policy = CredPolicy::default();
    cfg.handshake_timeout = Duration::from_secs(5);
    let offer = PreparedOffer::new(&cfg).unwrap();
    match offer.offer(ours) {
        Ok(_) => {
            // Only a real acceptance gets here: exactly a good ack first.
            let mut want = [0u8; ACK_LEN];
            want[..8].copy_from_slice(b"CRSDACK\0");
            want[8..12].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
            assert!(ack.len() >= ACK_LEN && ack[..ACK_LEN] == want && !with_fd);
        }
        Err(HandshakeError::Timeout) => panic!("the offerer waited on buffered input"),
        Err(e) => {
            let _ = e.to_string();
        }
    }
    drop(theirs);
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    // The pure parsers see everything.
    let _ = parse_hello(rest, u64::MAX);
    if let Some(p) = rest.get(..HELLO_PREFIX_LEN) {
        let _ = check_prefix(p.try_into().unwrap());
    }
    if let Some(a) = rest.get(..ACK_LEN) {
        let _ = parse_ack(a.try_into().unwrap());
    }

    if mode & 1 == 1 {
        hostile_acceptor(&rest[..rest.len().min(64)], mode & 2 != 0);
        return;
    }
    // Hostile offerer: [fd choice, piece on, 4 cut lengths, hello...]
    let Some((head, hello)) = rest.split_at_checked(6) else {
        return;
    };
    let mut hello = hello[..hello.len().min(HELLO_MAX_LEN + 64)].to_vec();
    if mode & 2 != 0 && hello.len() >= HELLO_FIXED_LEN {
        // Repair: a valid prefix, length, ring version and (if asked) sizes, so the
        // deeper checks (ids, sizes, descriptors, rings) see the rest of the input.
        let len = hello.len().min(HELLO_MAX_LEN);
        hello.truncate(len);
        hello[..8].copy_from_slice(b"CRSDSHM\0");
        hello[8..12].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        hello[12..16].copy_from_slice(&(len as u32).to_le_bytes());
        hello[32..36].copy_from_slice(&coresident::ring::VERSION.to_le_bytes());
        if mode & 4 != 0 {
            hello[16..24].copy_from_slice(&(region_alloc_size(LAYOUT) as u64).to_le_bytes());
            hello[24..28].copy_from_slice(&LAYOUT.to_acceptor.to_le_bytes());
            hello[28..32].copy_from_slice(&LAYOUT.to_offerer.to_le_bytes());
            hello[36..40].copy_from_slice(&[0; 4]);
        }
        if mode & 8 != 0 {
            // A well-formed offerer id, so the descriptor checks are reached.
            let mut id = [0u8; 64];
            id[0] = 1;
            id[1] = b'o';
            hello[40..104].copy_from_slice(&id);
        }
    }
    hostile_offerer(&hello, head[0], &head[2..6], head[1]);
});
