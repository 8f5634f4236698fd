//! The residency tables of one domain kept in step with its residency view:
//! each peer's domain id and addresses map to its channel's handle.

use core::fmt;
use core::net::{Ipv4Addr, Ipv6Addr};
use std::collections::BTreeMap;

use coresident::lookup::{ClaimError, DomainId, DomainTable, Handle, InsertError, Table, Writer};

use super::addr::{Addr, Addresses};
use super::view::PeerChange;
use crate::types::DomId;

/// What [`ResidencyTables`] did.
///
/// # Examples
///
/// ```
/// use coresident::lookup::Handle;
/// use coresident_xen::residency::{Addresses, PeerChange, ResidencyTables, TableUpdate};
///
/// # use core::net::{Ipv4Addr, Ipv6Addr};
/// # use coresident::lookup::{DomainTable, Seed, Table};
/// # let domains: DomainTable<64> = DomainTable::new();
/// # let macs: Table<[u8; 6], 64> = Table::new(Seed::new([1; 4]));
/// # let v4: Table<Ipv4Addr, 64> = Table::new(Seed::new([2; 4]));
/// # let v6: Table<Ipv6Addr, 64> = Table::new(Seed::new([3; 4]));
/// let mut tables = ResidencyTables::new(&domains, &macs, &v4, &v6)?;
/// let h = Handle::new(0, 1);
/// tables.insert(7, &Addresses::new(), h);
/// let left = [PeerChange::Left { domid: 7, addrs: Addresses::new() }];
/// // The handle to give `Router::peer_left`.
/// assert_eq!(tables.apply(&left, |_, _| None), [TableUpdate::Removed { domid: 7, handle: h }]);
/// # Ok::<(), coresident::lookup::ClaimError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TableUpdate {
    /// The peer's keys now map to `handle`: domain id and addresses.
    Inserted {
        /// The peer.
        domid: DomId,
        /// Its channel's handle.
        handle: Handle,
        /// Keys inserted (the domain id and each address).
        keys: usize,
    },
    /// The peer's keys are gone: lookups miss from now on. Call
    /// `Router::peer_left(handle)` so its flows fall back.
    Removed {
        /// The peer.
        domid: DomId,
        /// The handle its keys mapped to.
        handle: Handle,
    },
    /// A key could not be inserted (table full, or a domain id beyond the
    /// direct table): traffic to it takes the network.
    Failed {
        /// The peer.
        domid: DomId,
        /// The address, or `None` for the domain id.
        addr: Option<Addr>,
        /// Why.
        error: InsertError,
    },
}

/// The residency tables of one domain kept in step with its
/// [`ResidencyView`](super::ResidencyView): domain ids in the direct [`DomainTable`], MAC and IP
/// addresses in the hashed [`Table`]s. Holds the hashed tables' writers.
///
/// # Examples
///
/// ```
/// use core::net::{Ipv4Addr, Ipv6Addr};
/// use coresident::lookup::{DomainId, DomainTable, Handle, Seed, Table};
/// use coresident_xen::residency::{Addr, Addresses, PeerChange, ResidencyTables};
///
/// let domains: DomainTable<64> = DomainTable::new();
/// let macs: Table<[u8; 6], 64> = Table::new(Seed::new([1; 4]));
/// let v4: Table<Ipv4Addr, 64> = Table::new(Seed::new([2; 4]));
/// let v6: Table<Ipv6Addr, 64> = Table::new(Seed::new([3; 4]));
/// let mut tables = ResidencyTables::new(&domains, &macs, &v4, &v6).unwrap();
/// let ip = Ipv4Addr::new(10, 0, 0, 7);
/// let addrs = Addresses::from_addrs([Addr::Ipv4(ip)]).unwrap();
/// // A channel to the peer would be attached here; its handle goes in.
/// tables.apply(&[PeerChange::Arrived { domid: 7, addrs }], |_, _| Some(Handle::new(0, 1)));
/// assert_eq!(v4.get(&ip), Some(Handle::new(0, 1)));
/// assert_eq!(domains.get(DomainId(7)), Some(Handle::new(0, 1)));
/// ```
pub struct ResidencyTables<'t, const D: usize, const B: usize> {
    domains: &'t DomainTable<D>,
    macs: Writer<'t, [u8; 6], B>,
    ipv4: Writer<'t, Ipv4Addr, B>,
    ipv6: Writer<'t, Ipv6Addr, B>,
    /// The peers in the tables: handle and the addresses inserted.
    entries: BTreeMap<DomId, (Handle, Addresses)>,
}

impl<const D: usize, const B: usize> fmt::Debug for ResidencyTables<'_, D, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResidencyTables")
            .field("peers", &self.entries.len())
            .finish_non_exhaustive()
    }
}

impl<'t, const D: usize, const B: usize> ResidencyTables<'t, D, B> {
    /// Takes the writers of the three hashed tables.
    ///
    /// # Errors
    ///
    /// [`ClaimError::Busy`] if one of them already has a writer.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::residency::ResidencyTables;
    ///
    /// # use core::net::{Ipv4Addr, Ipv6Addr};
    /// # use coresident::lookup::{DomainTable, Seed, Table};
    /// # let domains: DomainTable<64> = DomainTable::new();
    /// # let macs: Table<[u8; 6], 64> = Table::new(Seed::new([1; 4]));
    /// # let v4: Table<Ipv4Addr, 64> = Table::new(Seed::new([2; 4]));
    /// # let v6: Table<Ipv6Addr, 64> = Table::new(Seed::new([3; 4]));
    /// let mut tables = ResidencyTables::new(&domains, &macs, &v4, &v6)?;
    /// // One writer per table: a second set of tables over them is refused.
    /// assert!(ResidencyTables::new(&domains, &macs, &v4, &v6).is_err());
    /// # drop(tables);
    /// # Ok::<(), coresident::lookup::ClaimError>(())
    /// ```
    pub fn new(
        domains: &'t DomainTable<D>,
        macs: &'t Table<[u8; 6], B>,
        ipv4: &'t Table<Ipv4Addr, B>,
        ipv6: &'t Table<Ipv6Addr, B>,
    ) -> Result<Self, ClaimError> {
        Ok(Self {
            domains,
            macs: macs.writer()?,
            ipv4: ipv4.writer()?,
            ipv6: ipv6.writer()?,
            entries: BTreeMap::new(),
        })
    }

    /// The handle `domid`'s keys map to, if it is in the tables.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident::lookup::Handle;
    /// use coresident_xen::residency::{Addresses, ResidencyTables};
    ///
    /// # use core::net::{Ipv4Addr, Ipv6Addr};
    /// # use coresident::lookup::{DomainTable, Seed, Table};
    /// # let domains: DomainTable<64> = DomainTable::new();
    /// # let macs: Table<[u8; 6], 64> = Table::new(Seed::new([1; 4]));
    /// # let v4: Table<Ipv4Addr, 64> = Table::new(Seed::new([2; 4]));
    /// # let v6: Table<Ipv6Addr, 64> = Table::new(Seed::new([3; 4]));
    /// let mut tables = ResidencyTables::new(&domains, &macs, &v4, &v6)?;
    /// tables.insert(7, &Addresses::new(), Handle::new(3, 1));
    /// assert_eq!(tables.handle_of(7), Some(Handle::new(3, 1)));
    /// assert_eq!(tables.handle_of(8), None);
    /// # Ok::<(), coresident::lookup::ClaimError>(())
    /// ```
    pub fn handle_of(&self, domid: DomId) -> Option<Handle> {
        self.entries.get(&domid).map(|e| e.0)
    }

    /// Applies a view's changes: an arriving peer gets the handle `attach`
    /// returns (`None`: not now, say because no channel could be set up;
    /// [`insert`](Self::insert) it later); a leaving peer's keys are
    /// removed and its handle reported, for `Router::peer_left`.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident::lookup::{DomainId, Handle};
    /// use coresident_xen::residency::{Addresses, PeerChange, ResidencyTables, TableUpdate};
    ///
    /// # use core::net::{Ipv4Addr, Ipv6Addr};
    /// # use coresident::lookup::{DomainTable, Seed, Table};
    /// # let domains: DomainTable<64> = DomainTable::new();
    /// # let macs: Table<[u8; 6], 64> = Table::new(Seed::new([1; 4]));
    /// # let v4: Table<Ipv4Addr, 64> = Table::new(Seed::new([2; 4]));
    /// # let v6: Table<Ipv6Addr, 64> = Table::new(Seed::new([3; 4]));
    /// let mut tables = ResidencyTables::new(&domains, &macs, &v4, &v6)?;
    /// let arrived = [PeerChange::Arrived { domid: 7, addrs: Addresses::new() }];
    /// // No channel to domain 7 yet: `None`, and nothing is inserted.
    /// assert!(tables.apply(&arrived, |_, _| None).is_empty());
    /// let updates = tables.apply(&arrived, |_, _| Some(Handle::new(3, 1)));
    /// assert!(matches!(updates[..], [TableUpdate::Inserted { domid: 7, keys: 1, .. }]));
    /// assert_eq!(domains.get(DomainId(7)), Some(Handle::new(3, 1)));
    /// # Ok::<(), coresident::lookup::ClaimError>(())
    /// ```
    pub fn apply(
        &mut self,
        changes: &[PeerChange],
        mut attach: impl FnMut(DomId, &Addresses) -> Option<Handle>,
    ) -> Vec<TableUpdate> {
        let mut out = Vec::new();
        for c in changes {
            match c {
                PeerChange::Arrived { domid, addrs } => {
                    if let Some(h) = attach(*domid, addrs) {
                        out.extend(self.insert(*domid, addrs, h));
                    }
                }
                PeerChange::Changed { domid, new, .. } => {
                    if let Some(h) = self.handle_of(*domid) {
                        out.extend(self.insert(*domid, new, h));
                    }
                }
                PeerChange::Left { domid, .. } => {
                    if let Some(handle) = self.remove(*domid) {
                        out.push(TableUpdate::Removed {
                            domid: *domid,
                            handle,
                        });
                    }
                }
                PeerChange::Refused { .. } | PeerChange::Moved { .. } => {}
            }
        }
        out
    }

    /// Maps `domid` and `addrs` to `handle` (replacing what `domid` had:
    /// addresses no longer listed are removed).
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident::lookup::Handle;
    /// use coresident_xen::residency::{Addr, Addresses, ResidencyTables};
    ///
    /// # use core::net::{Ipv4Addr, Ipv6Addr};
    /// # use coresident::lookup::{DomainTable, Seed, Table};
    /// # let domains: DomainTable<64> = DomainTable::new();
    /// # let macs: Table<[u8; 6], 64> = Table::new(Seed::new([1; 4]));
    /// # let v4: Table<Ipv4Addr, 64> = Table::new(Seed::new([2; 4]));
    /// # let v6: Table<Ipv6Addr, 64> = Table::new(Seed::new([3; 4]));
    /// let mut tables = ResidencyTables::new(&domains, &macs, &v4, &v6)?;
    /// let (a, b) = (Ipv4Addr::new(10, 0, 0, 7), Ipv4Addr::new(10, 0, 0, 8));
    /// let h = Handle::new(3, 1);
    /// tables.insert(7, &Addresses::from_addrs([Addr::Ipv4(a)])?, h);
    /// // Domain 7 now has 10.0.0.8 instead: 10.0.0.7 leaves the table.
    /// tables.insert(7, &Addresses::from_addrs([Addr::Ipv4(b)])?, h);
    /// assert_eq!((v4.get(&a), v4.get(&b)), (None, Some(h)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn insert(&mut self, domid: DomId, addrs: &Addresses, handle: Handle) -> Vec<TableUpdate> {
        let mut out = Vec::new();
        if let Some((old_handle, old)) = self.entries.get(&domid).cloned() {
            for a in old.iter().filter(|a| !addrs.contains(a)) {
                self.remove_key(&a, old_handle);
            }
        }
        let mut keys = 0;
        let mut kept = Addresses::new();
        match self.domains.insert(DomainId(domid), handle) {
            Ok(_) => keys += 1,
            Err(error) => out.push(TableUpdate::Failed {
                domid,
                addr: None,
                error,
            }),
        }
        for a in addrs.iter() {
            let r = match a {
                Addr::Mac(m) => self.macs.insert(m, handle),
                Addr::Ipv4(ip) => self.ipv4.insert(ip, handle),
                Addr::Ipv6(ip) => self.ipv6.insert(ip, handle),
            };
            match r {
                Ok(_) => {
                    keys += 1;
                    // Within the limits: `addrs` holds no more.
                    let _ = kept.push(a);
                }
                Err(error) => out.push(TableUpdate::Failed {
                    domid,
                    addr: Some(a),
                    error,
                }),
            }
        }
        self.entries.insert(domid, (handle, kept));
        out.insert(
            0,
            TableUpdate::Inserted {
                domid,
                handle,
                keys,
            },
        );
        out
    }

    /// Removes `domid` and its addresses; returns the handle they mapped to.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident::lookup::{DomainId, Handle};
    /// use coresident_xen::residency::{Addresses, ResidencyTables};
    ///
    /// # use core::net::{Ipv4Addr, Ipv6Addr};
    /// # use coresident::lookup::{DomainTable, Seed, Table};
    /// # let domains: DomainTable<64> = DomainTable::new();
    /// # let macs: Table<[u8; 6], 64> = Table::new(Seed::new([1; 4]));
    /// # let v4: Table<Ipv4Addr, 64> = Table::new(Seed::new([2; 4]));
    /// # let v6: Table<Ipv6Addr, 64> = Table::new(Seed::new([3; 4]));
    /// let mut tables = ResidencyTables::new(&domains, &macs, &v4, &v6)?;
    /// tables.insert(7, &Addresses::new(), Handle::new(3, 1));
    /// assert_eq!(tables.remove(7), Some(Handle::new(3, 1)));
    /// assert_eq!(domains.get(DomainId(7)), None);
    /// assert_eq!(tables.remove(7), None);
    /// # Ok::<(), coresident::lookup::ClaimError>(())
    /// ```
    pub fn remove(&mut self, domid: DomId) -> Option<Handle> {
        let (handle, addrs) = self.entries.remove(&domid)?;
        for a in addrs.iter() {
            self.remove_key(&a, handle);
        }
        self.domains.remove(DomainId(domid));
        Some(handle)
    }

    /// Removes an address if it still maps to `handle` (another peer may
    /// have taken it over in the same list change).
    fn remove_key(&mut self, a: &Addr, handle: Handle) {
        match a {
            Addr::Mac(m) if self.macs.table().get(m) == Some(handle) => {
                self.macs.remove(m);
            }
            Addr::Ipv4(ip) if self.ipv4.table().get(ip) == Some(handle) => {
                self.ipv4.remove(ip);
            }
            Addr::Ipv6(ip) if self.ipv6.table().get(ip) == Some(handle) => {
                self.ipv6.remove(ip);
            }
            _ => {}
        }
    }
}
