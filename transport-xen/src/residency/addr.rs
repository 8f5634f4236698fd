//! The addresses a domain advertises, their text encoding, and the strict
//! parser that turns whatever a guest wrote into [`Addresses`] or a typed
//! [`AdvertError`].
//!
//! The encoding is one `KEY VALUE` pair per line, lines ended by `\n`:
//!
//! ```text
//! mac 00:16:3e:5a:01:02        a unicast MAC, two hex digits per octet
//! ipv4 10.0.0.2                a dotted quad (no leading zeros)
//! ipv6 fd00::2                 any textual IPv6 form
//! ```
//!
//! One address has one spelling: an IPv4-mapped IPv6 address
//! (`::ffff:10.0.0.2`, RFC 4291 2.5.5.2) is its IPv4 address, everywhere an
//! [`Addr`] is made ([`Addr::canonical`]: the parser, [`Addresses::push`]),
//! so it meets the conflict rule and the ownership check as that address;
//! the deprecated IPv4-compatible form (`::10.0.0.2`) is refused.
//!
//! An advertisement starts with the line `coresident 1` (the protocol
//! version); a peer entry in a list is the address lines alone.

use core::fmt;
use core::net::{Ipv4Addr, Ipv6Addr};
use std::collections::BTreeSet;

/// The residency protocol version written in the first line of an
/// advertisement (`coresident 1`).
///
/// # Examples
///
/// ```
/// use coresident_xen::residency::{Addresses, VERSION};
///
/// assert_eq!(Addresses::new().encode_advert(), format!("coresident {VERSION}\n"));
/// ```
pub const VERSION: u32 = 1;
/// Most MAC addresses one domain may advertise.
///
/// # Examples
///
/// ```
/// use coresident_xen::residency::{Addr, AddrKind, AdvertError, Addresses, MAX_MACS};
///
/// let macs = (0..=MAX_MACS as u8).map(|i| Addr::Mac([0x00, 0x16, 0x3e, 0, 0, i + 1]));
/// assert_eq!(Addresses::from_addrs(macs), Err(AdvertError::TooMany(AddrKind::Mac)));
/// ```
pub const MAX_MACS: usize = 8;
/// Most IPv4 addresses one domain may advertise.
///
/// # Examples
///
/// ```
/// use coresident_xen::residency::{AddrKind, MAX_IPV4};
///
/// assert_eq!(AddrKind::Ipv4.limit(), MAX_IPV4);
/// ```
pub const MAX_IPV4: usize = 16;
/// Most IPv6 addresses one domain may advertise.
///
/// # Examples
///
/// ```
/// use coresident_xen::residency::{AddrKind, MAX_IPV6};
///
/// assert_eq!(AddrKind::Ipv6.limit(), MAX_IPV6);
/// ```
pub const MAX_IPV6: usize = 16;
/// Longest advertisement or peer entry accepted, in bytes (the encoding of
/// the maximum counts fits with room to spare).
///
/// # Examples
///
/// ```
/// use coresident_xen::residency::{AdvertError, Addresses, MAX_VALUE_LEN};
///
/// let huge = vec![b'a'; MAX_VALUE_LEN + 1];
/// assert_eq!(Addresses::parse(&huge), Err(AdvertError::TooLong(MAX_VALUE_LEN + 1)));
/// ```
pub const MAX_VALUE_LEN: usize = 2048;
/// Longest line accepted, in bytes (`ipv6 ` and the longest IPv6 text, 45).
///
/// # Examples
///
/// ```
/// use coresident_xen::residency::{AdvertError, Addresses, MAX_LINE_LEN};
///
/// let line = format!("ipv4 {}", "1".repeat(MAX_LINE_LEN));
/// assert_eq!(Addresses::parse(line.as_bytes()), Err(AdvertError::BadLine(1)));
/// ```
pub const MAX_LINE_LEN: usize = 64;

/// Which kind of address a count or an error is about.
///
/// # Examples
///
/// ```
/// use coresident_xen::residency::{AddrKind, AdvertError, Addresses};
///
/// let err = Addresses::parse(b"mac 00:16:3e:00:00:01\nmac 00:16:3e:00:00:01\n").unwrap_err();
/// assert_eq!(err, AdvertError::Duplicate(2));
/// assert_eq!(AddrKind::Ipv6.key(), "ipv6");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AddrKind {
    /// A MAC address.
    Mac,
    /// An IPv4 address.
    Ipv4,
    /// An IPv6 address.
    Ipv6,
}

impl AddrKind {
    /// The key of its lines (`mac`, `ipv4`, `ipv6`).
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::residency::AddrKind;
    ///
    /// assert_eq!(AddrKind::Mac.key(), "mac");
    /// assert_eq!(AddrKind::Ipv4.key(), "ipv4");
    /// ```
    pub const fn key(self) -> &'static str {
        match self {
            Self::Mac => "mac",
            Self::Ipv4 => "ipv4",
            Self::Ipv6 => "ipv6",
        }
    }

    /// The most addresses of this kind one domain may have.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::residency::{AddrKind, MAX_MACS};
    ///
    /// assert_eq!(AddrKind::Mac.limit(), MAX_MACS);
    /// assert_eq!(AddrKind::Ipv4.limit(), 16);
    /// ```
    pub const fn limit(self) -> usize {
        match self {
            Self::Mac => MAX_MACS,
            Self::Ipv4 => MAX_IPV4,
            Self::Ipv6 => MAX_IPV6,
        }
    }
}

/// One address of any kind.
///
/// # Examples
///
/// ```
/// use core::net::Ipv4Addr;
/// use coresident_xen::residency::Addr;
///
/// let mac = Addr::Mac([0x00, 0x16, 0x3e, 0x5a, 0x01, 0x02]);
/// assert_eq!(mac.to_string(), "00:16:3e:5a:01:02");
/// assert_eq!(Addr::Ipv4(Ipv4Addr::new(10, 0, 0, 2)).to_string(), "10.0.0.2");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Addr {
    /// A MAC address.
    Mac([u8; 6]),
    /// An IPv4 address.
    Ipv4(Ipv4Addr),
    /// An IPv6 address.
    Ipv6(Ipv6Addr),
}

impl Addr {
    /// The address in its one spelling: an IPv4-mapped IPv6 address
    /// (`::ffff:a.b.c.d`) becomes the IPv4 address; anything else is
    /// itself.
    ///
    /// # Examples
    ///
    /// ```
    /// use core::net::Ipv4Addr;
    /// use coresident_xen::residency::Addr;
    ///
    /// let v4 = Ipv4Addr::new(10, 0, 0, 2);
    /// assert_eq!(Addr::Ipv6(v4.to_ipv6_mapped()).canonical(), Addr::Ipv4(v4));
    /// assert_eq!(Addr::Ipv4(v4).canonical(), Addr::Ipv4(v4));
    /// ```
    pub fn canonical(self) -> Self {
        match self {
            Self::Ipv6(a) => a.to_ipv4_mapped().map_or(self, Self::Ipv4),
            a => a,
        }
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Mac(m) => write!(
                f,
                "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                m[0], m[1], m[2], m[3], m[4], m[5]
            ),
            Self::Ipv4(a) => a.fmt(f),
            Self::Ipv6(a) => a.fmt(f),
        }
    }
}

/// Why an advertisement or a peer entry was refused. Small and `Copy`; line
/// numbers count from 1.
///
/// # Examples
///
/// ```
/// use coresident_xen::residency::{AdvertError, Addresses};
///
/// assert_eq!(Addresses::parse_advert(b"coresident 2\n"), Err(AdvertError::Version(2)));
/// let err = Addresses::parse(b"ipv4 127.0.0.1\n").unwrap_err();
/// assert_eq!(err, AdvertError::BadIpv4(1));
/// assert_eq!(err.to_string(), "line 1: not a usable IPv4 address");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AdvertError {
    /// The value is longer than [`MAX_VALUE_LEN`] (its length).
    TooLong(usize),
    /// A byte outside printable ASCII (and `\n`).
    NotAscii,
    /// A line longer than [`MAX_LINE_LEN`], empty, or not `KEY VALUE`
    /// with one space.
    BadLine(u16),
    /// A key this version does not know.
    UnknownKey(u16),
    /// A MAC that is malformed, multicast or all zeros.
    BadMac(u16),
    /// An IPv4 address that is malformed, or unspecified, loopback,
    /// broadcast or multicast.
    BadIpv4(u16),
    /// An IPv6 address that is malformed, or unspecified, loopback or
    /// multicast.
    BadIpv6(u16),
    /// The same address twice.
    Duplicate(u16),
    /// More addresses of one kind than its maximum.
    TooMany(AddrKind),
    /// The first line is not `coresident VERSION`.
    MissingVersion,
    /// A version this build does not speak.
    Version(u32),
    /// The advertisement node is not owned by the domain whose path holds
    /// it (another domain, `.0`, wrote it): refused, since only the domain
    /// id XenStore gives is trusted.
    Owner(u16),
    /// A MAC address that is not one of the domain's virtual interfaces
    /// (the toolstack's `backend/vif/N/*/mac` in dom0, which the guest
    /// cannot write). A domain without vif backends in dom0 may claim no
    /// MAC at all.
    MacNotOwned([u8; 6]),
    /// An IP address the toolstack did not give the domain (its vifs'
    /// `ip` in `/local/domain/0/backend/vif/N/*/ip`, an address or a
    /// network) and dom0's [`Policy`](super::Policy) does not allow it: a
    /// guest claiming another host's address (8.8.8.8, say) would have
    /// every co-resident router send that traffic into its channel.
    IpNotOwned(Addr),
    /// Reading the advertisement failed (`EACCES`, say).
    Unreadable,
}

impl fmt::Display for AdvertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLong(n) => write!(f, "{n} bytes, more than {MAX_VALUE_LEN}"),
            Self::NotAscii => f.write_str("a byte that is not printable ASCII"),
            Self::BadLine(l) => write!(f, "line {l} is not `KEY VALUE`"),
            Self::UnknownKey(l) => write!(f, "line {l} has an unknown key"),
            Self::BadMac(l) => write!(f, "line {l}: not a unicast MAC address"),
            Self::BadIpv4(l) => write!(f, "line {l}: not a usable IPv4 address"),
            Self::BadIpv6(l) => write!(f, "line {l}: not a usable IPv6 address"),
            Self::Duplicate(l) => write!(f, "line {l} repeats an address"),
            Self::TooMany(k) => write!(f, "more than {} {} addresses", k.limit(), k.key()),
            Self::MissingVersion => f.write_str("the first line is not `coresident VERSION`"),
            Self::Version(v) => write!(f, "protocol version {v}, this build speaks {VERSION}"),
            Self::Owner(d) => write!(f, "written by domain {d}, not by the domain it names"),
            Self::MacNotOwned(m) => {
                write!(f, "MAC {} is not one of the domain's vifs", Addr::Mac(*m))
            }
            Self::IpNotOwned(a) => write!(
                f,
                "IP {a} is neither on the domain's vifs (the toolstack's `ip`) nor allowed by dom0"
            ),
            Self::Unreadable => f.write_str("the advertisement cannot be read"),
        }
    }
}

impl std::error::Error for AdvertError {}

/// A domain's addresses: zero or more of each kind, each kind sorted and
/// without duplicates, counts within [`AddrKind::limit`].
///
/// # Examples
///
/// ```
/// use core::net::Ipv4Addr;
/// use coresident_xen::residency::{Addr, Addresses};
///
/// let mut a = Addresses::new();
/// a.push(Addr::Ipv4(Ipv4Addr::new(10, 0, 0, 2)))?;
/// a.push(Addr::Mac([0x00, 0x16, 0x3e, 0x5a, 0x01, 0x02]))?;
/// assert_eq!(a.encode(), "mac 00:16:3e:5a:01:02\nipv4 10.0.0.2\n");
/// assert_eq!(Addresses::parse(a.encode().as_bytes())?, a);
/// # Ok::<(), coresident_xen::residency::AdvertError>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Addresses {
    macs: Vec<[u8; 6]>,
    ipv4: Vec<Ipv4Addr>,
    ipv6: Vec<Ipv6Addr>,
}

impl Addresses {
    /// No addresses (a domain known by its id alone).
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::residency::Addresses;
    ///
    /// let none = Addresses::new();
    /// assert!(none.is_empty());
    /// assert_eq!(none.encode_advert(), "coresident 1\n");
    /// ```
    pub const fn new() -> Self {
        Self {
            macs: Vec::new(),
            ipv4: Vec::new(),
            ipv6: Vec::new(),
        }
    }

    /// Adds an address (a no-op if present), in its
    /// [canonical](Addr::canonical) spelling.
    ///
    /// # Errors
    ///
    /// [`AdvertError::TooMany`] past the kind's maximum; the set is
    /// unchanged.
    ///
    /// # Examples
    ///
    /// ```
    /// use core::net::Ipv4Addr;
    /// use coresident_xen::residency::{Addr, Addresses};
    ///
    /// let ip = Ipv4Addr::new(10, 0, 0, 2);
    /// let mut a = Addresses::new();
    /// assert!(a.push(Addr::Ipv4(ip))?);
    /// // The same address again, here in its IPv4-mapped IPv6 spelling: no-op.
    /// assert!(!a.push(Addr::Ipv6(ip.to_ipv6_mapped()))?);
    /// assert_eq!(a.len(), 1);
    /// # Ok::<(), coresident_xen::residency::AdvertError>(())
    /// ```
    pub fn push(&mut self, addr: Addr) -> Result<bool, AdvertError> {
        fn add<T: Ord>(v: &mut Vec<T>, a: T, kind: AddrKind) -> Result<bool, AdvertError> {
            match v.binary_search(&a) {
                Ok(_) => Ok(false),
                Err(_) if v.len() >= kind.limit() => Err(AdvertError::TooMany(kind)),
                Err(i) => {
                    v.insert(i, a);
                    Ok(true)
                }
            }
        }
        match addr.canonical() {
            Addr::Mac(m) => add(&mut self.macs, m, AddrKind::Mac),
            Addr::Ipv4(a) => add(&mut self.ipv4, a, AddrKind::Ipv4),
            Addr::Ipv6(a) => add(&mut self.ipv6, a, AddrKind::Ipv6),
        }
    }

    /// Builds a set from addresses.
    ///
    /// # Errors
    ///
    /// [`AdvertError::TooMany`].
    ///
    /// # Examples
    ///
    /// ```
    /// use core::net::Ipv4Addr;
    /// use coresident_xen::residency::{Addr, AddrKind, AdvertError, Addresses};
    ///
    /// let two = Addresses::from_addrs([Addr::Ipv4(Ipv4Addr::new(10, 0, 0, 2)), Addr::Ipv4(Ipv4Addr::new(10, 0, 0, 1))])?;
    /// assert_eq!(two.ipv4(), [Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)]);
    /// let many = (1..=17).map(|i| Addr::Ipv4(Ipv4Addr::new(10, 0, 0, i)));
    /// assert_eq!(Addresses::from_addrs(many), Err(AdvertError::TooMany(AddrKind::Ipv4)));
    /// # Ok::<(), AdvertError>(())
    /// ```
    pub fn from_addrs(addrs: impl IntoIterator<Item = Addr>) -> Result<Self, AdvertError> {
        let mut s = Self::new();
        for a in addrs {
            s.push(a)?;
        }
        Ok(s)
    }

    /// Whether `addr` (in any spelling) is in the set.
    ///
    /// # Examples
    ///
    /// ```
    /// use core::net::Ipv4Addr;
    /// use coresident_xen::residency::{Addr, Addresses};
    ///
    /// let ip = Ipv4Addr::new(10, 0, 0, 2);
    /// let a = Addresses::from_addrs([Addr::Ipv4(ip)])?;
    /// assert!(a.contains(&Addr::Ipv4(ip)));
    /// assert!(a.contains(&Addr::Ipv6(ip.to_ipv6_mapped())));
    /// assert!(!a.contains(&Addr::Ipv4(Ipv4Addr::new(10, 0, 0, 3))));
    /// # Ok::<(), coresident_xen::residency::AdvertError>(())
    /// ```
    pub fn contains(&self, addr: &Addr) -> bool {
        match &addr.canonical() {
            Addr::Mac(m) => self.macs.binary_search(m).is_ok(),
            Addr::Ipv4(a) => self.ipv4.binary_search(a).is_ok(),
            Addr::Ipv6(a) => self.ipv6.binary_search(a).is_ok(),
        }
    }

    /// Removes `addr` (in any spelling); whether it was there.
    ///
    /// # Examples
    ///
    /// ```
    /// use core::net::Ipv4Addr;
    /// use coresident_xen::residency::{Addr, Addresses};
    ///
    /// let ip = Addr::Ipv4(Ipv4Addr::new(10, 0, 0, 2));
    /// let mut a = Addresses::from_addrs([ip])?;
    /// assert!(a.remove(&ip));
    /// assert!(!a.remove(&ip));
    /// assert!(a.is_empty());
    /// # Ok::<(), coresident_xen::residency::AdvertError>(())
    /// ```
    pub fn remove(&mut self, addr: &Addr) -> bool {
        fn rm<T: Ord>(v: &mut Vec<T>, a: &T) -> bool {
            match v.binary_search(a) {
                Ok(i) => {
                    v.remove(i);
                    true
                }
                Err(_) => false,
            }
        }
        match &addr.canonical() {
            Addr::Mac(m) => rm(&mut self.macs, m),
            Addr::Ipv4(a) => rm(&mut self.ipv4, a),
            Addr::Ipv6(a) => rm(&mut self.ipv6, a),
        }
    }

    /// The MAC addresses, sorted.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::residency::Addresses;
    ///
    /// let a = Addresses::parse(b"mac 00:16:3e:00:00:02\nmac 00:16:3e:00:00:01\n")?;
    /// assert_eq!(a.macs(), [[0x00, 0x16, 0x3e, 0, 0, 1], [0x00, 0x16, 0x3e, 0, 0, 2]]);
    /// # Ok::<(), coresident_xen::residency::AdvertError>(())
    /// ```
    pub fn macs(&self) -> &[[u8; 6]] {
        &self.macs
    }

    /// The IPv4 addresses, sorted.
    ///
    /// # Examples
    ///
    /// ```
    /// use core::net::Ipv4Addr;
    /// use coresident_xen::residency::Addresses;
    ///
    /// let a = Addresses::parse(b"ipv4 10.0.0.2\nipv6 fd00::2\n")?;
    /// assert_eq!(a.ipv4(), [Ipv4Addr::new(10, 0, 0, 2)]);
    /// # Ok::<(), coresident_xen::residency::AdvertError>(())
    /// ```
    pub fn ipv4(&self) -> &[Ipv4Addr] {
        &self.ipv4
    }

    /// The IPv6 addresses, sorted.
    ///
    /// # Examples
    ///
    /// ```
    /// use core::net::Ipv6Addr;
    /// use coresident_xen::residency::Addresses;
    ///
    /// let a = Addresses::parse(b"ipv4 10.0.0.2\nipv6 fd00::2\n")?;
    /// assert_eq!(a.ipv6(), ["fd00::2".parse::<Ipv6Addr>()?]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn ipv6(&self) -> &[Ipv6Addr] {
        &self.ipv6
    }

    /// Every address: MACs, then IPv4, then IPv6.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::residency::Addresses;
    ///
    /// let a = Addresses::parse(b"ipv6 fd00::2\nipv4 10.0.0.2\nmac 00:16:3e:00:00:01\n")?;
    /// let text: Vec<String> = a.iter().map(|x| x.to_string()).collect();
    /// assert_eq!(text, ["00:16:3e:00:00:01", "10.0.0.2", "fd00::2"]);
    /// # Ok::<(), coresident_xen::residency::AdvertError>(())
    /// ```
    pub fn iter(&self) -> impl Iterator<Item = Addr> + '_ {
        self.macs
            .iter()
            .map(|&m| Addr::Mac(m))
            .chain(self.ipv4.iter().map(|&a| Addr::Ipv4(a)))
            .chain(self.ipv6.iter().map(|&a| Addr::Ipv6(a)))
    }

    /// How many addresses in all.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::residency::Addresses;
    ///
    /// let a = Addresses::parse(b"ipv4 10.0.0.2\nipv6 fd00::2\n")?;
    /// assert_eq!(a.len(), 2);
    /// # Ok::<(), coresident_xen::residency::AdvertError>(())
    /// ```
    pub fn len(&self) -> usize {
        self.macs.len() + self.ipv4.len() + self.ipv6.len()
    }

    /// Whether there are none.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::residency::Addresses;
    ///
    /// // A peer known by its domain id alone has an empty entry.
    /// assert!(Addresses::parse(b"")?.is_empty());
    /// # Ok::<(), coresident_xen::residency::AdvertError>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The address lines (the body of a peer entry), one `KEY VALUE\n`
    /// per address. At most [`MAX_VALUE_LEN`] bytes by construction.
    ///
    /// # Examples
    ///
    /// ```
    /// use core::net::Ipv4Addr;
    /// use coresident_xen::residency::{Addr, Addresses};
    ///
    /// let a = Addresses::from_addrs([Addr::Ipv4(Ipv4Addr::new(10, 0, 0, 2))])?;
    /// assert_eq!(a.encode(), "ipv4 10.0.0.2\n");
    /// # Ok::<(), coresident_xen::residency::AdvertError>(())
    /// ```
    pub fn encode(&self) -> String {
        let mut s = String::new();
        for a in self.iter() {
            let key = match a {
                Addr::Mac(_) => AddrKind::Mac,
                Addr::Ipv4(_) => AddrKind::Ipv4,
                Addr::Ipv6(_) => AddrKind::Ipv6,
            }
            .key();
            s.push_str(key);
            s.push(' ');
            s.push_str(&a.to_string());
            s.push('\n');
        }
        s
    }

    /// An advertisement: `coresident 1` and the address lines.
    ///
    /// # Examples
    ///
    /// ```
    /// use core::net::Ipv4Addr;
    /// use coresident_xen::residency::{Addr, Addresses};
    ///
    /// let a = Addresses::from_addrs([Addr::Ipv4(Ipv4Addr::new(10, 0, 0, 2))])?;
    /// assert_eq!(a.encode_advert(), "coresident 1\nipv4 10.0.0.2\n");
    /// assert_eq!(Addresses::parse_advert(a.encode_advert().as_bytes())?, a);
    /// # Ok::<(), coresident_xen::residency::AdvertError>(())
    /// ```
    pub fn encode_advert(&self) -> String {
        format!("coresident {VERSION}\n{}", self.encode())
    }

    /// Parses address lines (a peer entry), strictly.
    ///
    /// # Errors
    ///
    /// Every [`AdvertError`] about the value's form and its addresses.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::residency::{AdvertError, Addresses};
    ///
    /// let a = Addresses::parse(b"mac 00:16:3E:5A:01:02\nipv4 10.0.0.2")?;
    /// assert_eq!(a.len(), 2);
    /// // Strict: one space, known keys, usable addresses.
    /// assert_eq!(Addresses::parse(b"ipv4  10.0.0.2"), Err(AdvertError::BadLine(1)));
    /// assert_eq!(Addresses::parse(b"ip 10.0.0.2"), Err(AdvertError::UnknownKey(1)));
    /// assert_eq!(Addresses::parse(b"mac 01:00:5e:00:00:01"), Err(AdvertError::BadMac(1)));
    /// # Ok::<(), AdvertError>(())
    /// ```
    pub fn parse(value: &[u8]) -> Result<Self, AdvertError> {
        Self::parse_lines(value, false)
    }

    /// Parses an advertisement: `coresident VERSION` then address lines.
    ///
    /// # Errors
    ///
    /// [`AdvertError::MissingVersion`], [`AdvertError::Version`], and as
    /// [`Addresses::parse`].
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::residency::{AdvertError, Addresses};
    ///
    /// let a = Addresses::parse_advert(b"coresident 1\nipv4 10.0.0.2\n")?;
    /// assert_eq!(a.len(), 1);
    /// assert_eq!(Addresses::parse_advert(b"ipv4 10.0.0.2\n"), Err(AdvertError::MissingVersion));
    /// # Ok::<(), AdvertError>(())
    /// ```
    pub fn parse_advert(value: &[u8]) -> Result<Self, AdvertError> {
        Self::parse_lines(value, true)
    }

    fn parse_lines(value: &[u8], advert: bool) -> Result<Self, AdvertError> {
        if value.len() > MAX_VALUE_LEN {
            return Err(AdvertError::TooLong(value.len()));
        }
        if !value
            .iter()
            .all(|&b| b == b'\n' || (b' '..=b'~').contains(&b))
        {
            return Err(AdvertError::NotAscii);
        }
        // Printable ASCII and '\n' only: valid UTF-8.
        let text = core::str::from_utf8(value).map_err(|_| AdvertError::NotAscii)?;
        // One optional final newline; no empty lines anywhere else.
        let text = text.strip_suffix('\n').unwrap_or(text);
        let mut out = Self::new();
        let mut seen = BTreeSet::new();
        let mut lines = text.split('\n').enumerate().peekable();
        if advert {
            let (_, first) = lines.next().ok_or(AdvertError::MissingVersion)?;
            let v = first
                .strip_prefix("coresident ")
                .ok_or(AdvertError::MissingVersion)?;
            let v = crate::protocol::xs_wire::parse_u32(v.as_bytes())
                .map_err(|_| AdvertError::MissingVersion)?;
            if v != VERSION {
                return Err(AdvertError::Version(v));
            }
        }
        if text.is_empty() {
            return Ok(out);
        }
        for (i, line) in lines {
            let n = u16::try_from(i + 1).unwrap_or(u16::MAX);
            if line.is_empty() || line.len() > MAX_LINE_LEN {
                return Err(AdvertError::BadLine(n));
            }
            let (key, val) = line.split_once(' ').ok_or(AdvertError::BadLine(n))?;
            if val.is_empty() || val.contains(' ') {
                return Err(AdvertError::BadLine(n));
            }
            let addr = match key {
                "mac" => Addr::Mac(parse_mac(val).ok_or(AdvertError::BadMac(n))?),
                "ipv4" => Addr::Ipv4(
                    val.parse::<Ipv4Addr>()
                        .ok()
                        .filter(|a| usable_v4(*a))
                        .ok_or(AdvertError::BadIpv4(n))?,
                ),
                "ipv6" => val
                    .parse::<Ipv6Addr>()
                    .ok()
                    .filter(|a| usable_v6(*a))
                    .map(|a| Addr::Ipv6(a).canonical())
                    .ok_or(AdvertError::BadIpv6(n))?,
                _ => return Err(AdvertError::UnknownKey(n)),
            };
            if !seen.insert(addr) {
                return Err(AdvertError::Duplicate(n));
            }
            out.push(addr)?;
        }
        Ok(out)
    }
}

/// The MAC address of network interface `iface` as the kernel reports it
/// (`/sys/class/net/IFACE/address`): a guest's vif, which the toolstack
/// gave it and the agent therefore accepts in its advertisement. `None` for
/// a name that is not one path component, a missing interface, or an
/// address that is not a unicast MAC.
///
/// # Examples
///
/// ```
/// use coresident_xen::residency::mac_of;
/// assert_eq!(mac_of("../lo"), None); // never a path outside /sys/class/net
/// assert_eq!(mac_of("lo"), None); // the loopback's is all zeros
/// ```
#[must_use]
pub fn mac_of(iface: &str) -> Option<[u8; 6]> {
    if iface.is_empty() || iface.contains('/') || iface.starts_with('.') {
        return None;
    }
    let s = std::fs::read_to_string(format!("/sys/class/net/{iface}/address")).ok()?;
    parse_mac(s.trim())
}

/// `xx:xx:xx:xx:xx:xx`, hex of either case; unicast and not all zeros.
fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let b = s.as_bytes();
    if b.len() != 17 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (i, octet) in mac.iter_mut().enumerate() {
        let at = i * 3;
        if i > 0 && b.get(at - 1) != Some(&b':') {
            return None;
        }
        let hi = char::from(*b.get(at)?).to_digit(16)?;
        let lo = char::from(*b.get(at + 1)?).to_digit(16)?;
        *octet = u8::try_from(hi * 16 + lo).ok()?;
    }
    let multicast = mac[0] & 1 != 0;
    (!multicast && mac != [0; 6]).then_some(mac)
}

fn usable_v4(a: Ipv4Addr) -> bool {
    !(a.is_unspecified() || a.is_loopback() || a.is_broadcast() || a.is_multicast())
}

/// Not unspecified, loopback or multicast; an IPv4-mapped address only if
/// its IPv4 address is usable; never IPv4-compatible (`::a.b.c.d`,
/// deprecated by RFC 4291 2.5.5.1: a second spelling of an IPv4 address).
fn usable_v6(a: Ipv6Addr) -> bool {
    if let Some(v4) = a.to_ipv4_mapped() {
        return usable_v4(v4);
    }
    let compatible = a.segments()[..6] == [0; 6];
    !(a.is_unspecified() || a.is_loopback() || a.is_multicast() || compatible)
}

#[cfg(test)]
#[path = "tests_addr.rs"]
mod tests;
