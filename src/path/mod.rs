//! Network paths (std): [`TcpPath`], reliable (acknowledged, replayed after a
//! reconnect), and [`UdpPath`], a datagram path that promises less.

use core::net::{Ipv4Addr, Ipv6Addr};
use coresident_lookup::{DomainId, Key};

/// A residency key that can travel in a network path's hello: decodes its own table
/// encoding ([`Key::encode`]) back.
pub trait WireKey: Key {
    /// The key whose [`Key::encode`] is `words`, or `None` if no key encodes so (a
    /// peer's bytes: never trusted).
    fn from_words(words: [u64; 2]) -> Option<Self>;
}

impl WireKey for u64 {
    fn from_words(w: [u64; 2]) -> Option<Self> {
        (w[1] == 0).then_some(w[0])
    }
}

impl WireKey for [u8; 6] {
    fn from_words(w: [u64; 2]) -> Option<Self> {
        let b = w[0].to_le_bytes();
        (w[1] == 0 && b[6] == 0 && b[7] == 0).then(|| [b[0], b[1], b[2], b[3], b[4], b[5]])
    }
}

impl WireKey for Ipv4Addr {
    fn from_words(w: [u64; 2]) -> Option<Self> {
        let v = u32::try_from(w[0]).ok()?;
        (w[1] == 0).then(|| Ipv4Addr::from_bits(v))
    }
}

impl WireKey for Ipv6Addr {
    fn from_words(w: [u64; 2]) -> Option<Self> {
        Some(Ipv6Addr::from_bits(
            u128::from(w[1]) << 64 | u128::from(w[0]),
        ))
    }
}

impl WireKey for DomainId {
    fn from_words(w: [u64; 2]) -> Option<Self> {
        let v = u16::try_from(w[0]).ok()?;
        (w[1] == 0).then_some(DomainId(v))
    }
}

pub mod tcp;
pub mod udp;

pub use tcp::{TcpConfig, TcpError, TcpPath};
pub use udp::{UdpError, UdpPath, MAX_UDP_PAYLOAD};
