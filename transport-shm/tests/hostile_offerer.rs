//! A hostile offerer, generated: random mutations of a good hello, random truncation,
//! and a random choice and order of descriptors (right ones, pipes, unsealed memfds).
//! Whatever it sends, the acceptor returns (an endpoint or a typed error) and never
//! panics; and when it does accept, what it accepted is sound.
#![cfg(target_os = "linux")]

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use coresident_shm::rendezvous::send_with_fds;
use coresident_shm::wire::{HelloWire, HELLO_LEN};
use coresident_shm::{accept_offer, AcceptConfig, Doorbell, Layout};
use proptest::prelude::*;
use rustix::fs::{MemfdFlags, SealFlags};
use zerocopy::IntoBytes;

fn memfd(len: u64, seals: SealFlags) -> OwnedFd {
    let fd =
        rustix::fs::memfd_create("t", MemfdFlags::ALLOW_SEALING | MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&fd, len).unwrap();
    if !seals.is_empty() {
        rustix::fs::fcntl_add_seals(&fd, seals).unwrap();
    }
    fd
}

/// The descriptors a hostile offerer may pick from.
fn pool(region: u64) -> Vec<OwnedFd> {
    let (r, _w) = rustix::pipe::pipe().unwrap();
    vec![
        memfd(
            region,
            SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL,
        ),
        Doorbell::new()
            .unwrap()
            .as_fd()
            .try_clone_to_owned()
            .unwrap(),
        Doorbell::new()
            .unwrap()
            .as_fd()
            .try_clone_to_owned()
            .unwrap(),
        r,
        memfd(region, SealFlags::empty()),
        memfd(region / 2, SealFlags::SHRINK | SealFlags::GROW),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn acceptor_never_panics(
        mutations in proptest::collection::vec((0..HELLO_LEN, any::<u8>()), 0..6),
        cut in prop_oneof![Just(HELLO_LEN), 0..=HELLO_LEN],
        picks in proptest::collection::vec(0usize..6, 0..6),
    ) {
        let layout = Layout::new(4096, 8192).unwrap();
        let region = layout.region_size() as u64;
        let hello = HelloWire::new(region, 4096, 8192, &"o".parse().unwrap(), None);
        let mut bytes = hello.as_bytes().to_vec();
        for (i, b) in &mutations {
            bytes[*i] = *b;
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
                // Whatever it accepted must be sound: both slots inside the mapping.
                assert!(ep.slot_ptr(ep.tx_slot()).is_some());
                assert!(ep.slot_ptr(ep.rx_slot()).is_some());
                ep.region().len()
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
