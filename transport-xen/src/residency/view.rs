//! The guest side: the list of co-resident peers the agent wrote for this
//! domain, read with a watch (the residency tables it keeps in step are in
//! `tables.rs`).

use core::fmt;
use core::time::Duration;
use std::collections::BTreeMap;

use super::addr::{Addr, Addresses, AdvertError};
use super::agent::parse_domid;
use super::{list_dir, TX_RETRIES};
use crate::protocol::xs_wire::{self, ValueError, XsErrno};
use crate::types::DomId;
use crate::xenstore::{XenStore, XsClient, XsError};

/// Most peers one list may hold. A plain `XS_DIRECTORY` reply holds about
/// 680 names of guest ids in its 4096 bytes; a list longer than this is
/// refused whole.
///
/// # Examples
///
/// ```
/// use coresident_xen::residency::{ListError, MAX_PEERS};
///
/// // A longer list is refused whole: every peer leaves.
/// let e = ListError::TooManyPeers(MAX_PEERS + 1);
/// assert_eq!(e.to_string(), "513 peers, more than 512");
/// ```
pub const MAX_PEERS: usize = 512;

/// The watch token of the view.
const TOKEN_LIST: &str = "coresident-view";
/// The watch token of this domain's own `domid` key (relative: after `xl
/// save` and `xl restore`, or a migration, the guest runs on as another
/// domain, and Linux sets its watches again, so this one fires).
const TOKEN_DOMID: &str = "coresident-view:domid";

/// What is wrong with the list or with one entry of it.
///
/// # Examples
///
/// ```
/// use coresident_xen::residency::{AdvertError, ListError, PeerChange};
///
/// // What a view reports for a peer entry `peers/7` holding `ipv4 nonsense`.
/// let refused = PeerChange::Refused {
///     entry: Some("7".into()),
///     error: ListError::Entry(AdvertError::BadIpv4(1)),
/// };
/// assert_eq!(refused.to_string(), "entry \"7\" refused: bad entry: line 1: not a usable IPv4 address");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ListError {
    /// The generation is not a number: the whole list is refused.
    Generation(ValueError),
    /// More than [`MAX_PEERS`] entries (how many): the whole list is
    /// refused.
    TooManyPeers(usize),
    /// An entry name that is not a guest domain id.
    BadName,
    /// An entry naming this domain itself.
    OwnDomain,
    /// An entry whose addresses do not parse.
    Entry(AdvertError),
    /// An address listed for two peers: dropped from both.
    Clash(Addr),
    /// An address of this domain's own, claimed by a peer: dropped.
    OwnAddress(Addr),
}

impl fmt::Display for ListError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Generation(e) => write!(f, "bad generation: {e}"),
            Self::TooManyPeers(n) => write!(f, "{n} peers, more than {MAX_PEERS}"),
            Self::BadName => f.write_str("entry name is not a guest domain id"),
            Self::OwnDomain => f.write_str("entry names this domain"),
            Self::Entry(e) => write!(f, "bad entry: {e}"),
            Self::Clash(a) => write!(f, "address {a} listed for two peers"),
            Self::OwnAddress(a) => write!(f, "address {a} is this domain's own"),
        }
    }
}

impl std::error::Error for ListError {}

/// A change of the peer set, as the view saw it.
///
/// # Examples
///
/// ```
/// use core::net::Ipv4Addr;
/// use coresident_xen::residency::{Addr, Addresses, PeerChange};
///
/// let addrs = Addresses::from_addrs([Addr::Ipv4(Ipv4Addr::new(10, 0, 0, 7))])?;
/// let change = PeerChange::Arrived { domid: 7, addrs };
/// assert_eq!(change.to_string(), "peer 7 arrived 10.0.0.7");
/// # Ok::<(), coresident_xen::residency::AdvertError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerChange {
    /// A peer is now co-resident.
    Arrived {
        /// Its domain id.
        domid: DomId,
        /// Its addresses.
        addrs: Addresses,
    },
    /// A peer's addresses changed.
    Changed {
        /// Its domain id.
        domid: DomId,
        /// The addresses before.
        old: Addresses,
        /// The addresses now.
        new: Addresses,
    },
    /// A peer is no longer co-resident (destroyed, migrated away, stopped
    /// advertising): its flows must fall back.
    Left {
        /// Its domain id.
        domid: DomId,
        /// The addresses it had.
        addrs: Addresses,
    },
    /// This domain runs on under another domain id (`xl save` then
    /// `xl restore`, or a migration in): its old list, channels and
    /// advertisement are gone with the old domain. Every peer is reported
    /// [`Left`](Self::Left) right after this change (their channels were
    /// to the old domain: fall back), the view now reads the new domain's
    /// list, and the daemon should advertise again under `to`
    /// ([`advertise`](super::advertise)): the agent then lists it again.
    Moved {
        /// The domain id before.
        from: DomId,
        /// The domain id now.
        to: DomId,
    },
    /// Part of the list (or all of it, `entry: None`) was refused.
    Refused {
        /// The entry's name (at most 16 bytes of it), or `None` for the
        /// whole list.
        entry: Option<String>,
        /// Why.
        error: ListError,
    },
}

impl fmt::Display for PeerChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addrs = |f: &mut fmt::Formatter<'_>, a: &Addresses| {
            a.iter().try_for_each(|a| write!(f, " {a}"))
        };
        match self {
            Self::Arrived { domid, addrs: a } => {
                write!(f, "peer {domid} arrived")?;
                addrs(f, a)
            }
            Self::Changed { domid, new, .. } => {
                write!(f, "peer {domid} changed:")?;
                addrs(f, new)
            }
            Self::Left { domid, .. } => write!(f, "peer {domid} left"),
            Self::Moved { from, to } => write!(f, "this domain is now domain {to} (was {from})"),
            Self::Refused {
                entry: Some(e),
                error,
            } => write!(f, "entry {e:?} refused: {error}"),
            Self::Refused { entry: None, error } => write!(f, "list refused: {error}"),
        }
    }
}

/// A failure of the view's XenStore connection.
///
/// # Examples
///
/// ```
/// use coresident_xen::residency::ViewError;
/// use coresident_xen::XsError;
///
/// let e = ViewError::from(XsError::NotFound);
/// assert_eq!(e.0, XsError::NotFound);
/// assert!(e.to_string().starts_with("residency view: "));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ViewError(pub XsError);

impl fmt::Display for ViewError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "residency view: {}", self.0)
    }
}

impl std::error::Error for ViewError {}

impl From<XsError> for ViewError {
    fn from(e: XsError) -> Self {
        Self(e)
    }
}

/// A list as read: the generation (`None`: no list) and the entries.
type RawList = (Option<Vec<u8>>, Vec<(String, Vec<u8>)>);

/// This domain's view of its co-resident peers: the list the agent writes
/// for it, re-read (in a transaction, so never half a list) whenever its
/// watch fires.
///
/// Everything in the list is parsed strictly: a bad entry is refused and
/// left out, a bad list as a whole empties the view (every peer leaves, and
/// the network carries their traffic: slower, never wrong).
///
/// # Examples
///
/// ```no_run
/// use coresident_xen::residency::{self, Addresses, ResidencyView};
/// use coresident_xen::XenStore;
///
/// let mut xs = XenStore::open()?;
/// let me = residency::own_domid(&mut xs)?;
/// let mut view = ResidencyView::new(xs, me, Addresses::new())?;
/// loop {
///     for change in view.step(None)? {
///         println!("{change}");
///     }
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct ResidencyView<X: XsClient = XenStore> {
    xs: X,
    domid: DomId,
    own: Addresses,
    dir: String,
    peers: BTreeMap<DomId, Addresses>,
    generation: Option<u64>,
    /// The list must be read (set at start and by watch events).
    stale: bool,
    /// The client's count of dropped watch events, as last seen.
    lost_seen: u64,
}

impl<X: XsClient> ResidencyView<X> {
    /// A view of `domid`'s list (the caller's own domain id, see
    /// [`own_domid`](super::own_domid)); addresses in `own` are refused
    /// when a peer claims them. Sets the watch; the first
    /// [`step`](Self::step) reads the list.
    ///
    /// # Errors
    ///
    /// The watch's XenStore errors.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use core::net::Ipv4Addr;
    /// use coresident_xen::residency::{self, Addr, Addresses, ResidencyView};
    /// use coresident_xen::XenStore;
    ///
    /// let mut xs = XenStore::open()?;
    /// let me = residency::own_domid(&mut xs)?;
    /// // A peer listed with 10.0.0.2 would have that address refused.
    /// let mine = Addresses::from_addrs([Addr::Ipv4(Ipv4Addr::new(10, 0, 0, 2))])?;
    /// // Sets the watch; the first `step` reads the list.
    /// let view = ResidencyView::new(xs, me, mine)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(mut xs: X, domid: DomId, own: Addresses) -> Result<Self, ViewError> {
        let dir = list_dir(domid);
        xs.watch(&dir, TOKEN_LIST)?;
        xs.watch("domid", TOKEN_DOMID)?;
        Ok(Self {
            xs,
            domid,
            own,
            dir,
            peers: BTreeMap::new(),
            generation: None,
            stale: true,
            lost_seen: 0,
        })
    }

    /// The current peers and their addresses.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::residency::{self, Addresses, ResidencyView};
    /// use coresident_xen::XenStore;
    ///
    /// let mut xs = XenStore::open()?;
    /// let me = residency::own_domid(&mut xs)?;
    /// let mut view = ResidencyView::new(xs, me, Addresses::new())?;
    /// view.refresh()?;
    /// for (domid, addrs) in view.peers() {
    ///     println!("domain {domid}: {}", addrs.encode().trim_end().replace('\n', ", "));
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn peers(&self) -> &BTreeMap<DomId, Addresses> {
        &self.peers
    }

    /// This domain's id, as the view last read it (it changes after `xl
    /// save` and `xl restore`: [`PeerChange::Moved`]).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::residency::{self, Addresses, PeerChange, ResidencyView};
    /// use coresident_xen::XenStore;
    ///
    /// let mut xs = XenStore::open()?;
    /// let me = residency::own_domid(&mut xs)?;
    /// let mut view = ResidencyView::new(xs, me, Addresses::new())?;
    /// for change in view.step(None)? {
    ///     if let PeerChange::Moved { from, .. } = change {
    ///         // After `xl save` and `xl restore`: the view reads the new list.
    ///         println!("domain {from} is now domain {}", view.domid());
    ///     }
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn domid(&self) -> DomId {
        self.domid
    }

    /// The generation of the list last read (`None`: no list).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::residency::{self, Addresses, ResidencyView};
    /// use coresident_xen::XenStore;
    ///
    /// let mut xs = XenStore::open()?;
    /// let me = residency::own_domid(&mut xs)?;
    /// let mut view = ResidencyView::new(xs, me, Addresses::new())?;
    /// view.refresh()?;
    /// if view.generation().is_none() {
    ///     println!("no agent has written a list for domain {me} yet");
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn generation(&self) -> Option<u64> {
        self.generation
    }

    /// The XenStore client (to advertise through the same connection).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::residency::{self, Addresses, PeerChange, ResidencyView};
    /// use coresident_xen::XenStore;
    ///
    /// let mut xs = XenStore::open()?;
    /// let me = residency::own_domid(&mut xs)?;
    /// let mine = Addresses::new();
    /// residency::advertise(&mut xs, me, &mine)?;
    /// let mut view = ResidencyView::new(xs, me, mine.clone())?;
    /// for change in view.step(None)? {
    ///     if let PeerChange::Moved { to, .. } = change {
    ///         // A new domain id: advertise again, through the view's connection.
    ///         residency::advertise(view.xenstore(), to, &mine)?;
    ///     }
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn xenstore(&mut self) -> &mut X {
        &mut self.xs
    }

    /// Waits up to `timeout` (`None`: forever) for the list to change,
    /// re-reads it and returns the changes (empty on a timeout, or when an
    /// event changed nothing).
    ///
    /// # Errors
    ///
    /// Connection errors.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use coresident_xen::residency::{self, Addresses, PeerChange, ResidencyView};
    /// use coresident_xen::XenStore;
    ///
    /// let mut xs = XenStore::open()?;
    /// let me = residency::own_domid(&mut xs)?;
    /// let mut view = ResidencyView::new(xs, me, Addresses::new())?;
    /// // Empty after a second without a change; the first step reads the list.
    /// for change in view.step(Some(Duration::from_secs(1)))? {
    ///     if let PeerChange::Left { domid, .. } = change {
    ///         println!("peer {domid} left: its flows fall back to the network");
    ///     }
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn step(&mut self, timeout: Option<Duration>) -> Result<Vec<PeerChange>, ViewError> {
        // Any event means "read the list": dropped ones (a full queue) too.
        if self.xs.lost_events() != self.lost_seen {
            self.lost_seen = self.xs.lost_events();
            self.stale = true;
        }
        if !self.stale {
            match self.xs.wait_watch(timeout)? {
                Some(_) => {}
                None => return Ok(Vec::new()),
            }
        }
        while self.xs.wait_watch(Some(Duration::ZERO))?.is_some() {}
        self.stale = false;
        self.refresh()
    }

    /// Reads this domain's id and the list now and returns the changes.
    ///
    /// # Errors
    ///
    /// Connection errors.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::residency::{self, Addresses, ResidencyView};
    /// use coresident_xen::XenStore;
    ///
    /// let mut xs = XenStore::open()?;
    /// let me = residency::own_domid(&mut xs)?;
    /// let mut view = ResidencyView::new(xs, me, Addresses::new())?;
    /// // Read now, without waiting for the watch (at start-up, say).
    /// let changes = view.refresh()?;
    /// println!("{} changes, {} peers", changes.len(), view.peers().len());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn refresh(&mut self) -> Result<Vec<PeerChange>, ViewError> {
        let mut out = Vec::new();
        self.check_domid(&mut out)?;
        let raw = self.read_raw()?;
        let (generation, peers) = self.parse(raw, &mut out);
        self.generation = generation;
        let old = core::mem::take(&mut self.peers);
        for (d, a) in &old {
            if !peers.contains_key(d) {
                out.push(PeerChange::Left {
                    domid: *d,
                    addrs: a.clone(),
                });
            }
        }
        for (d, a) in &peers {
            match old.get(d) {
                None => out.push(PeerChange::Arrived {
                    domid: *d,
                    addrs: a.clone(),
                }),
                Some(o) if o != a => out.push(PeerChange::Changed {
                    domid: *d,
                    old: o.clone(),
                    new: a.clone(),
                }),
                Some(_) => {}
            }
        }
        self.peers = peers;
        Ok(out)
    }

    /// Follows a change of this domain's id (`xl save` and `xl restore`):
    /// every peer leaves, the view turns to the new domain's list.
    fn check_domid(&mut self, out: &mut Vec<PeerChange>) -> Result<(), XsError> {
        let now = match self.xs.read("domid") {
            Ok(v) => match xs_wire::parse_u16(v) {
                Ok(d) => d,
                // Not ours to judge: the toolstack writes it.
                Err(_) => return Ok(()),
            },
            Err(XsError::NotFound | XsError::Daemon(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        if now == self.domid {
            return Ok(());
        }
        out.push(PeerChange::Moved {
            from: self.domid,
            to: now,
        });
        for (domid, addrs) in core::mem::take(&mut self.peers) {
            out.push(PeerChange::Left { domid, addrs });
        }
        self.generation = None;
        let _ = self.xs.unwatch(&self.dir, TOKEN_LIST);
        self.domid = now;
        self.dir = list_dir(now);
        self.xs.watch(&self.dir, TOKEN_LIST)?;
        Ok(())
    }

    /// Reads the generation and every entry in one transaction.
    fn read_raw(&mut self) -> Result<RawList, XsError> {
        let mut last = XsError::Daemon(XsErrno::EAGAIN);
        for _ in 0..TX_RETRIES {
            let mut tx = self.xs.transaction()?;
            let generation = match tx.read(&format!("{}/generation", self.dir)) {
                Ok(g) => Some(g.to_vec()),
                Err(XsError::NotFound) => None,
                Err(e) => return Err(e),
            };
            let mut entries = Vec::new();
            if generation.is_some() {
                let names = match tx.directory(&format!("{}/peers", self.dir)) {
                    Ok(n) => n.to_strings()?,
                    Err(XsError::NotFound) => Vec::new(),
                    Err(e) => return Err(e),
                };
                if names.len() > MAX_PEERS {
                    // Not read: the list is refused whole.
                    entries = names.into_iter().map(|n| (n, Vec::new())).collect();
                } else {
                    for n in names {
                        let v = match tx.read(&format!("{}/peers/{n}", self.dir)) {
                            Ok(v) => v,
                            Err(XsError::NotFound) => continue,
                            Err(e) => return Err(e),
                        };
                        entries.push((n, v.to_vec()));
                    }
                }
            }
            match tx.commit() {
                Ok(()) => return Ok((generation, entries)),
                Err(XsError::Daemon(XsErrno::EAGAIN)) => last = XsError::Daemon(XsErrno::EAGAIN),
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// Validates a list; refusals go to `out`.
    fn parse(
        &self,
        (generation, entries): RawList,
        out: &mut Vec<PeerChange>,
    ) -> (Option<u64>, BTreeMap<DomId, Addresses>) {
        let mut peers = BTreeMap::new();
        let Some(g) = generation else {
            return (None, peers);
        };
        let whole = |error| PeerChange::Refused { entry: None, error };
        let g = match xs_wire::parse_u64(&g) {
            Ok(g) => g,
            Err(e) => {
                out.push(whole(ListError::Generation(e)));
                return (None, peers);
            }
        };
        if entries.len() > MAX_PEERS {
            out.push(whole(ListError::TooManyPeers(entries.len())));
            return (Some(g), peers);
        }
        let refuse = |out: &mut Vec<PeerChange>, name: &str, error| {
            let mut entry = name.to_string();
            if entry.len() > 16 {
                let mut cut = 16;
                while !entry.is_char_boundary(cut) {
                    cut -= 1;
                }
                entry.truncate(cut);
            }
            out.push(PeerChange::Refused {
                entry: Some(entry),
                error,
            });
        };
        let mut claims: BTreeMap<Addr, usize> = BTreeMap::new();
        for (name, value) in entries {
            let Some(d) = parse_domid(&name) else {
                refuse(out, &name, ListError::BadName);
                continue;
            };
            if d == self.domid {
                refuse(out, &name, ListError::OwnDomain);
                continue;
            }
            match Addresses::parse(&value) {
                Ok(a) => {
                    for addr in a.iter() {
                        *claims.entry(addr).or_default() += 1;
                    }
                    peers.insert(d, a);
                }
                Err(e) => refuse(out, &name, ListError::Entry(e)),
            }
        }
        for (addr, n) in claims {
            let error = if self.own.contains(&addr) {
                ListError::OwnAddress(addr)
            } else if n > 1 {
                ListError::Clash(addr)
            } else {
                continue;
            };
            for (d, a) in &mut peers {
                if a.remove(&addr) {
                    refuse(out, &d.to_string(), error);
                }
            }
        }
        (Some(g), peers)
    }
}
