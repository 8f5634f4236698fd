//! A hostile offerer, generated: random mutations of a good hello, random truncation,
//! and a random choice and order of descriptors (the right one, pipes, sockets,
//! unsealed or short memfds, a region without rings).
//! Whatever it sends, the acceptor returns (an endpoint or a typed error) and never
//! panics; and when it does accept, what it accepted is sound.
#![cfg(target_os = "linux")]

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use coresident::ChannelLayout;
use coresident_shm::rendezvous::send_with_fds;
use coresident_shm::wire::{encode_hello, region_alloc_size, Hello, HELLO_MAX_LEN};
use coresident_shm::{accept_offer, AcceptConfig, MemfdRegion};
use proptest::prelude::*;
use rustix::fs::{MemfdFlags, SealFlags};

fn memfd(len: u64, seals: SealFlags) -> OwnedFd {
    let fd =
        rustix::fs::memfd_create("t", MemfdFlags::ALLOW_SEALING | MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&fd, len).unwrap();
    if !seals.is_empty() {
        rustix::fs::fcntl_add_seals(&fd, seals).unwrap();
    }
    fd
}

const LAYOUT: ChannelLayout = ChannelLayout {
    to_acceptor: 4096,
    to_offerer: 8192,
};

/// The descriptors a hostile offerer may pick from; the first is the right one.
fn pool(region: u64) -> Vec<OwnedFd> {
    let (r, _w) = rustix::pipe::pipe().unwrap();
    let (s, _t) = std::os::unix::net::UnixStream::pair().unwrap();
    let good = MemfdRegion::create("t", region as usize).unwrap();
    coresident::init_region(&good, LAYOUT).unwrap();
    vec![
        good.as_fd().try_clone_to_owned().unwrap(),
        memfd(
            region,
            SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL,
        ),
        r,
        s.into(),
        memfd(region, SealFlags::empty()),
        memfd(region / 2, SealFlags::SHRINK | SealFlags::GROW),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn acceptor_never_panics(
        context in proptest::collection::vec(any::<u8>(), 0..300),
        mutations in proptest::collection::vec((0..HELLO_MAX_LEN, any::<u8>()), 0..6),
        cut in prop_oneof![Just(HELLO_MAX_LEN), 0..=HELLO_MAX_LEN],
        picks in proptest::collection::vec(0usize..6, 0..4),
    ) {
        let region = region_alloc_size(LAYOUT) as u64;
        let mut bytes = encode_hello(&Hello {
            region_size: region,
            layout: LAYOUT,
            offerer: "o".parse().unwrap(),
            acceptor: None,
            context: context.iter().copied().take(256).collect(),
        })
        .unwrap();
        // Context beyond the limit: appended raw (the length field no longer matches).
        bytes.extend(context.iter().skip(256));
        for (i, b) in &mutations {
            if let Some(x) = bytes.get_mut(*i) {
                *x = *b;
            }
        }
        bytes.truncate(cut);
        let pool = pool(region);
        let fds: Vec<BorrowedFd<'_>> = picks.iter().map(|&i| pool[i].as_fd()).collect();

        let (ours, theirs) = UnixStream::pair().unwrap();
        let acceptor = std::thread::spawn(move || {
            let cfg = AcceptConfig {
                local_id: Some("a".parse().unwrap()),
                handshake_timeout: Duration::from_secs(20),
                ..AcceptConfig::default()
            };
            accept_offer(theirs, &cfg).map(|ep| {
                // Whatever it accepted must be sound: the channel attaches.
                let len = ep.region().len();
                let ch = coresident::Channel::new(
                    ep.into_link(),
                    coresident::ChannelConfig::default(),
                    coresident::StdClock::default(),
                );
                assert!(ch.is_ok(), "accepted an endpoint the channel refuses");
                len
            })
        });
        if !bytes.is_empty() || !fds.is_empty() {
            // An empty message with descriptors still needs one byte to carry them.
            let payload: &[u8] = if bytes.is_empty() { &[0] } else { &bytes };
            let _ = send_with_fds(ours.as_fd(), payload, &fds);
        }
        drop(ours); // Never leave the acceptor waiting: EOF ends every read.
        let res = acceptor.join();
        prop_assert!(res.is_ok(), "the acceptor panicked");
        if let Ok(Ok(len)) = res.as_ref().map(Result::as_ref) {
            // Accepted: then the memfd was the right, sealed one.
            prop_assert!(*len as u64 >= region);
        }
    }
}
