//! Peer ids and their text encoding.
//!
//! A peer id names an endpoint: a MAC address, an IPv4 or IPv6 address, or a plain
//! name. Its text form is used both as the registry's socket file name and inside the
//! rendezvous hello, so it is one canonical string per id:
//!
//! | kind | encoding | example |
//! |---|---|---|
//! | MAC | six lowercase hex pairs joined by `-` | `02-00-00-00-00-01` |
//! | IPv4 | dotted decimal | `10.0.0.1` |
//! | IPv6 | RFC 5952 (Rust's `Display`), lowercase | `fd00::1` |
//! | name | 1 to [`MAX_ID_LEN`] bytes of `[A-Za-z0-9_.-]`, not starting with `.`, not parseable as one of the above | `db-primary` |
//!
//! Parsing accepts any form the address parsers accept (e.g. uppercase hex);
//! [`fmt::Display`] always gives the canonical form, and the registry only lists files
//! whose name is canonical. An IPv4-mapped IPv6 address (`::ffff:10.0.0.2`) is the
//! IPv4 address it maps: one peer, one spelling.
//!
//! # Keying the residency table
//!
//! The core's residency table (`coresident::lookup::Table<K, B>`) takes a fixed-size
//! `Copy` key, and a deployment uses one kind of id for its peers. [`PeerKey`] converts
//! between a `PeerId` and such a key, for the three kinds the table already supports:
//! [`Ipv4Addr`], [`Ipv6Addr`] and a MAC address (`[u8; 6]`). A name has no fixed-size
//! injective encoding, so it cannot be a key: map names to addresses first.

use core::fmt;
use core::str::FromStr;
use std::net::{Ipv4Addr, Ipv6Addr};

/// The longest text form of a peer id, in bytes.
pub const MAX_ID_LEN: usize = 63;

/// The id of a peer.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum PeerId {
    /// A MAC address.
    Mac([u8; 6]),
    /// An IPv4 address.
    Ipv4(Ipv4Addr),
    /// An IPv6 address.
    Ipv6(Ipv6Addr),
    /// A plain name (validated: see the module docs).
    Name(String),
}

/// A string is not a valid peer id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerIdError {
    /// The string is empty.
    Empty,
    /// The string is longer than [`MAX_ID_LEN`] bytes.
    TooLong,
    /// A name contains a byte outside `[A-Za-z0-9_.-]`, or starts with `.`.
    BadName,
}

impl fmt::Display for PeerIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("peer id is empty"),
            Self::TooLong => write!(f, "peer id is longer than {MAX_ID_LEN} bytes"),
            Self::BadName => {
                f.write_str("peer name may only contain [A-Za-z0-9_.-] and must not start with '.'")
            }
        }
    }
}

impl std::error::Error for PeerIdError {}

/// Parses `aa-bb-cc-dd-ee-ff` (hex, either case).
fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split('-');
    for byte in &mut out {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

impl FromStr for PeerId {
    type Err = PeerIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(PeerIdError::Empty);
        }
        if s.len() > MAX_ID_LEN {
            return Err(PeerIdError::TooLong);
        }
        if let Some(mac) = parse_mac(s) {
            return Ok(Self::Mac(mac));
        }
        if let Ok(ip) = s.parse::<Ipv4Addr>() {
            return Ok(Self::Ipv4(ip));
        }
        if let Ok(ip) = s.parse::<Ipv6Addr>() {
            return Ok(Self::from(ip));
        }
        let ok = !s.starts_with('.')
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if ok {
            Ok(Self::Name(s.to_owned()))
        } else {
            Err(PeerIdError::BadName)
        }
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Mac(m) => write!(
                f,
                "{:02x}-{:02x}-{:02x}-{:02x}-{:02x}-{:02x}",
                m[0], m[1], m[2], m[3], m[4], m[5]
            ),
            Self::Ipv4(ip) => write!(f, "{ip}"),
            Self::Ipv6(ip) => write!(f, "{ip}"),
            Self::Name(n) => f.write_str(n),
        }
    }
}

impl From<Ipv4Addr> for PeerId {
    fn from(ip: Ipv4Addr) -> Self {
        Self::Ipv4(ip)
    }
}

impl From<Ipv6Addr> for PeerId {
    /// An IPv4-mapped address becomes the IPv4 address it maps.
    fn from(ip: Ipv6Addr) -> Self {
        match ip.to_ipv4_mapped() {
            Some(v4) => Self::Ipv4(v4),
            None => Self::Ipv6(ip),
        }
    }
}

impl From<[u8; 6]> for PeerId {
    fn from(mac: [u8; 6]) -> Self {
        Self::Mac(mac)
    }
}

/// A residency-table key that a [`PeerId`] of one kind converts to and from.
///
/// # Examples
///
/// ```
/// use std::net::Ipv4Addr;
/// use coresident_shm::{PeerId, PeerKey};
///
/// let id: PeerId = "10.0.0.2".parse()?;
/// assert_eq!(Ipv4Addr::from_peer_id(&id), Some(Ipv4Addr::new(10, 0, 0, 2)));
/// assert_eq!(Ipv4Addr::new(10, 0, 0, 2).peer_id(), id);
/// // Another kind of id is not this kind of key.
/// assert_eq!(Ipv4Addr::from_peer_id(&"db-primary".parse()?), None);
/// # Ok::<(), coresident_shm::PeerIdError>(())
/// ```
pub trait PeerKey: coresident::lookup::Key {
    /// The key of `id`, if `id` is of this kind.
    fn from_peer_id(id: &PeerId) -> Option<Self>;
    /// The id of this key.
    fn peer_id(&self) -> PeerId;
}

impl PeerKey for Ipv4Addr {
    fn from_peer_id(id: &PeerId) -> Option<Self> {
        match id {
            PeerId::Ipv4(ip) => Some(*ip),
            _ => None,
        }
    }
    fn peer_id(&self) -> PeerId {
        PeerId::Ipv4(*self)
    }
}

impl PeerKey for Ipv6Addr {
    fn from_peer_id(id: &PeerId) -> Option<Self> {
        match id {
            PeerId::Ipv6(ip) => Some(*ip),
            _ => None,
        }
    }
    fn peer_id(&self) -> PeerId {
        PeerId::from(*self)
    }
}

impl PeerKey for [u8; 6] {
    fn from_peer_id(id: &PeerId) -> Option<Self> {
        match id {
            PeerId::Mac(m) => Some(*m),
            _ => None,
        }
    }
    fn peer_id(&self) -> PeerId {
        PeerId::Mac(*self)
    }
}

impl PeerId {
    /// This id as a residency-table key of kind `K`, if it is of that kind
    /// ([`PeerKey::from_peer_id`]).
    #[must_use]
    pub fn key<K: PeerKey>(&self) -> Option<K> {
        K::from_peer_id(self)
    }

    /// Builds a name id, checking it (it must not parse as an address).
    ///
    /// # Errors
    ///
    /// A [`PeerIdError`] if `name` is not a valid name, or if it parses as an address
    /// ([`PeerIdError::BadName`]).
    pub fn name(name: &str) -> Result<Self, PeerIdError> {
        match name.parse()? {
            id @ Self::Name(_) => Ok(id),
            _ => Err(PeerIdError::BadName),
        }
    }

    /// Parses `s` and checks that it is in canonical form (as the registry's file names
    /// must be): `Some(id)` iff `id.to_string() == s`.
    #[must_use]
    pub fn parse_canonical(s: &str) -> Option<Self> {
        let id: Self = s.parse().ok()?;
        (id.to_string() == s).then_some(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for s in [
            "02-00-00-00-00-01",
            "10.0.0.1",
            "fd00::1",
            "db-primary",
            "a.b_c",
        ] {
            let id: PeerId = s.parse().unwrap();
            assert_eq!(id.to_string(), s);
            assert_eq!(PeerId::parse_canonical(s), Some(id));
        }
        assert!(matches!("02-00-00-00-00-01".parse(), Ok(PeerId::Mac(_))));
        assert!(matches!("10.0.0.1".parse(), Ok(PeerId::Ipv4(_))));
        assert!(matches!("db".parse(), Ok(PeerId::Name(_))));
    }

    #[test]
    fn rejects() {
        assert_eq!("".parse::<PeerId>(), Err(PeerIdError::Empty));
        assert_eq!("a/b".parse::<PeerId>(), Err(PeerIdError::BadName));
        assert_eq!("..".parse::<PeerId>(), Err(PeerIdError::BadName));
        assert_eq!(".hidden".parse::<PeerId>(), Err(PeerIdError::BadName));
        assert_eq!("x".repeat(64).parse::<PeerId>(), Err(PeerIdError::TooLong));
        assert_eq!(PeerId::name("10.0.0.1"), Err(PeerIdError::BadName));
        assert_eq!(PeerId::parse_canonical("FD00::1"), None);
    }

    #[test]
    fn mapped_addresses_have_one_spelling_and_keys_convert() {
        let mapped: PeerId = "::ffff:10.0.0.2".parse().unwrap();
        assert_eq!(mapped, "10.0.0.2".parse().unwrap());
        assert_eq!(PeerId::parse_canonical("::ffff:10.0.0.2"), None);
        let v6: PeerId = "fd00::1".parse().unwrap();
        assert_eq!(v6.key::<Ipv6Addr>(), Some("fd00::1".parse().unwrap()));
        assert_eq!(v6.key::<Ipv4Addr>(), None);
        let mac: PeerId = "02-00-00-00-00-01".parse().unwrap();
        assert_eq!(mac.key::<[u8; 6]>(), Some([2, 0, 0, 0, 0, 1]));
        assert_eq!([2, 0, 0, 0, 0, 1].peer_id(), mac);
        // The key encodes injectively, as the table requires.
        use coresident::lookup::Key;
        assert_ne!(
            Ipv4Addr::new(10, 0, 0, 1).encode(),
            Ipv4Addr::new(10, 0, 0, 2).encode()
        );
    }
}
