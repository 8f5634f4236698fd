//! What the agent lets a guest claim, and how often a guest may make it
//! rewrite the lists (issue 17, findings 6 and 7).
//!
//! A guest's advertisement is its own word; the addresses in it are
//! listed to every other co-resident domain, whose routers then send
//! traffic for them into the claimant's channel. So the agent publishes
//! only what a source the guest cannot write vouches for:
//! - MACs: the MACs of the domain's vifs whose backend is in dom0
//!   (`/local/domain/0/backend/vif/N/DEVID/mac`, written by the toolstack);
//! - IPs: the `ip` of those vifs (libxl's `vif = [ 'ip=A B' ]`: a space-
//!   separated list of addresses or networks `A/LEN`), or dom0's allow-list
//!   ([`Policy::allow`]) by the domain's name (`/local/domain/N/name`,
//!   written by the toolstack; names survive `xl save`/`restore`, domain
//!   ids do not).
//!
//! dom0's own advertisement is trusted (the agent runs there). Backends in
//! a driver domain other than dom0 are not consulted: such a domain's
//! MACs and IPs need the allow-list.

use core::net::{Ipv4Addr, Ipv6Addr};
use core::time::Duration;
use std::collections::BTreeMap;

use super::addr::{Addr, Addresses};

/// How long, by default, a domain's next change waits after its last one
/// was applied ([`Policy::debounce`]).
///
/// # Examples
///
/// ```
/// use coresident_xen::residency::{Policy, DEFAULT_DEBOUNCE};
///
/// assert_eq!(Policy::default().debounce_period(), DEFAULT_DEBOUNCE);
/// ```
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_secs(1);

/// The agent's rules: what a domain may claim beyond its vifs, and how
/// often one domain's changes are applied.
///
/// # Examples
///
/// ```
/// use core::net::Ipv4Addr;
/// use std::time::Duration;
/// use coresident_xen::residency::{Addr, Addresses, Policy};
///
/// let web = Addresses::from_addrs([Addr::Ipv4(Ipv4Addr::new(10, 0, 0, 7))])?;
/// let policy = Policy::default()
///     .allow("web", web)
///     .debounce(Duration::from_millis(500));
/// assert_eq!(policy.debounce_period(), Duration::from_millis(500));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    debounce: Duration,
    allowed: BTreeMap<String, Addresses>,
}

impl Default for Policy {
    /// Nothing allowed beyond the vifs, [`DEFAULT_DEBOUNCE`].
    fn default() -> Self {
        Self {
            debounce: DEFAULT_DEBOUNCE,
            allowed: BTreeMap::new(),
        }
    }
}

impl Policy {
    /// Lets the domain named `name` (the toolstack's
    /// `/local/domain/N/name`) claim `addrs` as well as its vifs'
    /// addresses; adds to what was allowed before.
    ///
    /// # Examples
    ///
    /// ```
    /// use core::net::Ipv4Addr;
    /// use coresident_xen::residency::{Addr, Addresses, Policy};
    ///
    /// let one = |d| Addresses::from_addrs([Addr::Ipv4(Ipv4Addr::new(10, 0, 0, d))]);
    /// let policy = Policy::default().allow("web", one(7)?).allow("web", one(8)?);
    /// assert_eq!(policy.allowed("web").map(|a| a.len()), Some(2));
    /// # Ok::<(), coresident_xen::residency::AdvertError>(())
    /// ```
    #[must_use]
    pub fn allow(mut self, name: &str, addrs: Addresses) -> Self {
        let entry = self.allowed.entry(name.to_owned()).or_default();
        for a in addrs.iter() {
            // More than a kind's maximum cannot be claimed anyway.
            let _ = entry.push(a);
        }
        self
    }

    /// After a change of one domain's advertisement (or vifs) is applied,
    /// its next change waits until `period` has passed, so that a guest
    /// toggling its advertisement makes the agent rewrite the lists at most
    /// once a period; the first change of a quiet domain is applied at
    /// once, and the last state it leaves is applied when the period ends.
    /// `Duration::ZERO` turns this off.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use coresident_xen::residency::Policy;
    ///
    /// // Every change applied at once (tests, say).
    /// let policy = Policy::default().debounce(Duration::ZERO);
    /// assert_eq!(policy.debounce_period(), Duration::ZERO);
    /// ```
    #[must_use]
    pub fn debounce(mut self, period: Duration) -> Self {
        self.debounce = period;
        self
    }

    /// The debounce period.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use coresident_xen::residency::Policy;
    ///
    /// assert_eq!(Policy::default().debounce_period(), Duration::from_secs(1));
    /// ```
    pub fn debounce_period(&self) -> Duration {
        self.debounce
    }

    /// What the domain named `name` is allowed, if anything.
    ///
    /// # Examples
    ///
    /// ```
    /// use core::net::Ipv4Addr;
    /// use coresident_xen::residency::{Addr, Addresses, Policy};
    ///
    /// let web = Addresses::from_addrs([Addr::Ipv4(Ipv4Addr::new(10, 0, 0, 7))])?;
    /// let policy = Policy::default().allow("web", web.clone());
    /// assert_eq!(policy.allowed("web"), Some(&web));
    /// assert_eq!(policy.allowed("db"), None);
    /// # Ok::<(), coresident_xen::residency::AdvertError>(())
    /// ```
    pub fn allowed(&self, name: &str) -> Option<&Addresses> {
        self.allowed.get(name)
    }

    /// Whether the policy names any domain (the agent then reads names).
    pub(super) fn has_names(&self) -> bool {
        !self.allowed.is_empty()
    }
}

/// An address or network from a vif's `ip` (`10.0.0.2`, `10.0.0.0/24`,
/// `fd00::/64`), canonical: a mapped IPv6 network is an IPv4 one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum IpNet {
    V4(Ipv4Addr, u8),
    V6(Ipv6Addr, u8),
}

impl IpNet {
    /// Parses one entry; `None` for anything malformed (skipped: the
    /// toolstack wrote it, but it is not trusted to be well-formed).
    pub(super) fn parse(s: &str) -> Option<Self> {
        let (a, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l.parse::<u8>().ok()?)),
            None => (s, None),
        };
        if let Ok(v4) = a.parse::<Ipv4Addr>() {
            let len = len.unwrap_or(32);
            return (len <= 32).then_some(Self::V4(v4, len));
        }
        let v6 = a.parse::<Ipv6Addr>().ok()?;
        let len = len.unwrap_or(128);
        if len > 128 {
            return None;
        }
        match v6.to_ipv4_mapped() {
            Some(v4) if len >= 96 => Some(Self::V4(v4, len - 96)),
            _ => Some(Self::V6(v6, len)),
        }
    }

    /// Whether `addr` (canonical) lies in the network.
    pub(super) fn contains(&self, addr: &Addr) -> bool {
        match (*self, addr.canonical()) {
            (Self::V4(net, len), Addr::Ipv4(a)) => {
                prefix_eq(&net.octets(), &a.octets(), usize::from(len))
            }
            (Self::V6(net, len), Addr::Ipv6(a)) => {
                prefix_eq(&net.octets(), &a.octets(), usize::from(len))
            }
            _ => false,
        }
    }
}

/// Whether the first `bits` bits of `a` and `b` agree (`bits` at most
/// their length in bits).
fn prefix_eq(a: &[u8], b: &[u8], bits: usize) -> bool {
    let whole = bits / 8;
    if a.get(..whole) != b.get(..whole) {
        return false;
    }
    let rest = bits % 8;
    if rest == 0 {
        return true;
    }
    let mask = 0xFFu8 << (8 - rest);
    match (a.get(whole), b.get(whole)) {
        (Some(x), Some(y)) => x & mask == y & mask,
        _ => false,
    }
}

/// What the toolstack and the policy vouch for, for one domain.
#[derive(Clone, Debug, Default)]
pub(super) struct Grants {
    /// Its vifs' MACs.
    pub(super) macs: Vec<[u8; 6]>,
    /// Its vifs' `ip` entries.
    pub(super) nets: Vec<IpNet>,
    /// What the policy allows its name.
    pub(super) allowed: Addresses,
}

impl Grants {
    /// The first claimed address nothing vouches for, if any.
    pub(super) fn first_unowned(&self, claim: &Addresses) -> Option<Addr> {
        claim.iter().find(|a| !self.owns(a))
    }

    fn owns(&self, a: &Addr) -> bool {
        if self.allowed.contains(a) {
            return true;
        }
        match a {
            Addr::Mac(m) => self.macs.contains(m),
            ip => self.nets.iter().any(|n| n.contains(ip)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vif_ip_entries() {
        let v4 = |s: &str| Addr::Ipv4(s.parse().unwrap());
        let v6 = |s: &str| Addr::Ipv6(s.parse().unwrap());
        let n = IpNet::parse("10.0.0.2").unwrap();
        assert!(n.contains(&v4("10.0.0.2")) && !n.contains(&v4("10.0.0.3")));
        let n = IpNet::parse("10.0.0.0/25").unwrap();
        assert!(n.contains(&v4("10.0.0.127")) && !n.contains(&v4("10.0.0.128")));
        assert!(IpNet::parse("0.0.0.0/0").unwrap().contains(&v4("8.8.8.8")));
        let n = IpNet::parse("fd00::/64").unwrap();
        assert!(n.contains(&v6("fd00::9")) && !n.contains(&v6("fd01::9")));
        assert!(!n.contains(&v4("10.0.0.2")));
        // A mapped network is the IPv4 one.
        let n = IpNet::parse("::ffff:10.0.0.0/120").unwrap();
        assert_eq!(n, IpNet::V4("10.0.0.0".parse().unwrap(), 24));
        assert!(n.contains(&v6("::ffff:10.0.0.9")));
        for bad in [
            "",
            "10.0.0.2/33",
            "fd00::/129",
            "x",
            "10.0.0.2/",
            "/8",
            "10.0.0.2/-1",
        ] {
            assert_eq!(IpNet::parse(bad), None, "{bad:?}");
        }
    }
}
