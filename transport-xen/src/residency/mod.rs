//! Residency detection: which domains share this host, kept in every
//! domain's residency table. XenLoop's idea (a dom0 agent and XenStore)
//! without its flaws: no unauthenticated discovery frames, the only domain
//! id trusted is the one XenStore's permissions vouch for, everything a
//! guest wrote is parsed strictly, and lists are replaced atomically.
//!
//! ```text
//!   domain N (any, dom0 too)               dom0: Agent                      domain M
//!   ─────────────────────────              ───────────────────────────      ─────────────
//!   advertise(): writes                    watches @introduceDomain,
//!   /local/domain/N/data/coresident/  ───▶ @releaseDomain and every
//!     advertise  (owner N, as XenStore     advertise node; checks owner
//!     records for what N created)          == N, parses strictly
//!                                          writes, per advertising domain,
//!                                          in one transaction:
//!                                          /local/domain/M/coresident/ ───▶ ResidencyView
//!                                            generation   (a counter)       (watch, reads in
//!                                            peers/N      (N's addresses)    a transaction)
//!                                          owner dom0, read-only for M        │
//!                                                                             ▼
//!                                                                  ResidencyTables: domain ids
//!                                                                  in the DomainTable, MAC/IP
//!                                                                  in the hashed Tables
//! ```
//!
//! # The keys
//!
//! | key | written by | permissions | value |
//! |---|---|---|---|
//! | `/local/domain/N/data/coresident/advertise` | N ([`advertise`]) | N's own (`data/` belongs to N) | `coresident 1` then address lines |
//! | `/local/domain/M/coresident/generation` | the agent | owner dom0, read for M | decimal; changes with every write of the list |
//! | `/local/domain/M/coresident/peers/N` | the agent | owner dom0, read for M | N's address lines |
//!
//! Address lines are `mac 00:16:3e:5a:01:02`, `ipv4 10.0.0.2`,
//! `ipv6 fd00::2`, one per line (at most 8 MACs, 16 IPv4 and 16 IPv6
//! addresses, [`MAX_VALUE_LEN`] bytes); see [`Addresses`].
//!
//! # Who is trusted with what
//!
//! - The agent takes a domain's id from the path of its advertisement and
//!   accepts the node only if XenStore says domain N owns it: xenstored
//!   makes an unprivileged domain the owner of every node it creates, so
//!   no domain can advertise for another. An id written inside a value is
//!   never used.
//! - A malformed advertisement is refused with an [`AdvertError`] and
//!   leaves that domain out of every list; the agent goes on.
//! - Addresses are checked against what the toolstack wrote, never the
//!   guest's word alone ([`Policy`] has the details): a guest may advertise
//!   the MACs of its vifs (backends in dom0,
//!   `/local/domain/0/backend/vif/N/*/mac`, watched), and no MAC without a
//!   vif ([`AdvertError::MacNotOwned`]); and the IPs of their `ip` entries
//!   (addresses or networks) or those dom0's [`Policy::allow`] gives its
//!   name ([`AdvertError::IpNotOwned`]): a guest claiming 8.8.8.8 would
//!   otherwise draw every co-resident router's traffic for it. An
//!   IPv4-mapped IPv6 address is its IPv4 address ([`Addr::canonical`]).
//!   (Backends in a driver domain other than dom0 are not consulted.)
//! - A guest toggling its advertisement makes the agent rewrite the lists
//!   at most once per [`Policy::debounce`] period (issue 17, finding 7).
//! - An address claimed by two domains (a guest claiming dom0's address,
//!   say) is published for neither ([`Change::Conflict`]): traffic to it
//!   takes the network, which is always correct.
//! - A domain leaves every list when it is destroyed (`@releaseDomain`, its
//!   home removed), stops advertising, or is withdrawn by the agent
//!   ([`Agent::withdraw`]: what a migration away looks like). Peers see it
//!   leave ([`PeerChange::Left`]), remove its keys from their tables and
//!   call `Router::peer_left`, so its flows fall back with nothing lost.
//! - The list lives in dom0's part of the domain's home
//!   (`/local/domain/M`, owned by dom0 and readable by M), so M can read it
//!   but not write it; the agent checks the permissions after each write.
//!   The view still parses it strictly ([`ListError`]).
//!
//! # A daemon in a guest
//!
//! ```no_run
//! use core::net::{Ipv4Addr, Ipv6Addr};
//! use coresident::lookup::{DomainTable, Handle, Seed, Table};
//! use coresident_xen::residency::{self, Addr, Addresses, ResidencyTables, ResidencyView, TableUpdate};
//! use coresident_xen::XenStore;
//!
//! let mut xs = XenStore::open()?;
//! let me = residency::own_domid(&mut xs)?;
//! let mine = Addresses::from_addrs([Addr::Ipv4(Ipv4Addr::new(10, 0, 0, 2))])?;
//! residency::advertise(&mut xs, me, &mine)?;
//! let domains: DomainTable<1024> = DomainTable::new();
//! let macs: Table<[u8; 6], 256> = Table::new(Seed::new([1, 2, 3, 4]));
//! let v4: Table<Ipv4Addr, 256> = Table::new(Seed::new([5, 6, 7, 8]));
//! let v6: Table<Ipv6Addr, 256> = Table::new(Seed::new([9, 10, 11, 12]));
//! let mut tables = ResidencyTables::new(&domains, &macs, &v4, &v6)?;
//! let mut view = ResidencyView::new(xs, me, mine)?;
//! loop {
//!     let changes = view.step(None)?;
//!     // Set up a channel to each arriving peer (rendezvous), attach it to
//!     // the router and hand its handle over; here, a placeholder.
//!     for u in tables.apply(&changes, |domid, _| Some(Handle::new(domid, 1))) {
//!         if let TableUpdate::Removed { handle, .. } = u {
//!             // router.peer_left(handle)?;
//!             let _ = handle;
//!         }
//!     }
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::protocol::xs_wire::{Access, Perm};
use crate::types::DomId;
use crate::xenstore::{XsClient, XsError};

mod addr;
mod agent;
mod change;
mod policy;
mod tables;
mod vetting;
mod view;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_claims;
#[cfg(test)]
mod tests_view;

pub use addr::{
    mac_of, Addr, AddrKind, Addresses, AdvertError, MAX_IPV4, MAX_IPV6, MAX_LINE_LEN, MAX_MACS,
    MAX_VALUE_LEN, VERSION,
};
pub use agent::Agent;
pub use change::{AgentError, Change, Status};
pub use policy::{Policy, DEFAULT_DEBOUNCE};
pub use tables::{ResidencyTables, TableUpdate};
pub use view::{ListError, PeerChange, ResidencyView, ViewError, MAX_PEERS};

/// How often a transaction that met a conflicting change (`EAGAIN`) is
/// redone before giving up.
const TX_RETRIES: usize = 16;

/// `/local/domain/N`.
///
/// # Examples
///
/// ```
/// assert_eq!(coresident_xen::residency::home_path(5), "/local/domain/5");
/// ```
pub fn home_path(domid: DomId) -> String {
    format!("/local/domain/{domid}")
}

/// Where domain `domid` advertises: `/local/domain/N/data/coresident/advertise`.
///
/// # Examples
///
/// ```
/// use coresident_xen::residency::advert_path;
///
/// assert_eq!(advert_path(5), "/local/domain/5/data/coresident/advertise");
/// ```
pub fn advert_path(domid: DomId) -> String {
    format!("/local/domain/{domid}/data/coresident/advertise")
}

/// Where the agent writes `domid`'s list: `/local/domain/N/coresident`
/// (children `generation` and `peers/M`).
///
/// # Examples
///
/// ```
/// use coresident_xen::residency::list_dir;
///
/// // The agent writes `generation` and `peers/M` under it; domain 5 reads them.
/// assert_eq!(list_dir(5), "/local/domain/5/coresident");
/// assert_eq!(format!("{}/peers/7", list_dir(5)), "/local/domain/5/coresident/peers/7");
/// ```
pub fn list_dir(domid: DomId) -> String {
    format!("/local/domain/{domid}/coresident")
}

/// The permissions of a list's nodes: owner dom0, read for the domain.
fn list_perms(domid: DomId) -> Vec<Perm> {
    let owner = Perm {
        domid: 0,
        access: Access::None,
    };
    if domid == 0 {
        vec![owner]
    } else {
        vec![
            owner,
            Perm {
                domid,
                access: Access::Read,
            },
        ]
    }
}

/// Whether `perms` make a node dom0's, readable but not writable by `domid`.
fn perms_ok(perms: &[Perm], domid: DomId) -> bool {
    let Some(owner) = perms.first() else {
        return false;
    };
    if owner.domid != 0 {
        return false;
    }
    if domid == 0 {
        return true;
    }
    let a = perms
        .iter()
        .skip(1)
        .find(|p| p.domid == domid)
        .unwrap_or(owner)
        .access;
    a == Access::Read
}

/// Advertises `domid` (the caller's own domain: only its own path is
/// writable to it) with `addrs`, in one write.
///
/// # Errors
///
/// XenStore errors (`EACCES` when writing another domain's path).
///
/// # Examples
///
/// ```no_run
/// use core::net::Ipv4Addr;
/// use coresident_xen::residency::{self, Addr, Addresses};
/// use coresident_xen::XenStore;
///
/// let mut xs = XenStore::open()?;
/// let me = residency::own_domid(&mut xs)?;
/// let mine = Addresses::from_addrs([Addr::Ipv4(Ipv4Addr::new(10, 0, 0, 2))])?;
/// // Writes `coresident 1\nipv4 10.0.0.2\n` to `advert_path(me)`.
/// residency::advertise(&mut xs, me, &mine)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn advertise<X: XsClient>(xs: &mut X, domid: DomId, addrs: &Addresses) -> Result<(), XsError> {
    xs.write(&advert_path(domid), addrs.encode_advert().as_bytes())
}

/// Removes `domid`'s advertisement: it leaves every list.
///
/// # Errors
///
/// XenStore errors; a missing advertisement is not one.
///
/// # Examples
///
/// ```no_run
/// use coresident_xen::residency;
/// use coresident_xen::XenStore;
///
/// let mut xs = XenStore::open()?;
/// let me = residency::own_domid(&mut xs)?;
/// // Leaving every peer's list before shutting down; twice is no error.
/// residency::unadvertise(&mut xs, me)?;
/// residency::unadvertise(&mut xs, me)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn unadvertise<X: XsClient>(xs: &mut X, domid: DomId) -> Result<(), XsError> {
    match xs.rm(&advert_path(domid)) {
        Ok(()) | Err(XsError::NotFound) => Ok(()),
        Err(e) => Err(e),
    }
}

/// This domain's id (the rendezvous's [`crate::rendezvous::own_domid`]).
pub use crate::rendezvous::own_domid;
