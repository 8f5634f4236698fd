//! The dom0 agent: which live domains advertise, and the list of
//! co-resident peers written to each of them.

use core::time::Duration;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use super::addr::{Addr, Addresses};
use super::change::{AgentError, Change, Status};
use super::policy::Policy;
use super::vetting::{local, read_advert, vif_path, VIF_BACKENDS};
use super::{advert_path, home_path, list_dir, list_perms, perms_ok, TX_RETRIES};
use crate::protocol::xs_wire::{self, XsErrno};
use crate::types::DomId;
use crate::xenstore::{XenStore, XsClient, XsError};
use coresident::lookup::DomainId;

/// The watch token of `@introduceDomain` and `@releaseDomain`.
const TOKEN_DOMAINS: &str = "coresident-agent:domains";
/// The watch token of every domain's advertisement.
const TOKEN_ADVERT: &str = "coresident-agent:advert";
/// The watch token of every domain's vif backends in dom0.
const TOKEN_VIF: &str = "coresident-agent:vif";
/// A watch event's bytes as text (a path or token that is not UTF-8 names
/// nothing we watch: the caller reads everything again).
fn owned(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The residency agent (dom0).
///
/// It watches `@introduceDomain`, `@releaseDomain` and each live domain's
/// advertisement (no polling), keeps the set of advertising domains, and
/// writes to each of them the list of its co-resident peers: every other
/// advertising domain with its addresses. Each list is written in one
/// XenStore transaction, so a reader in a transaction never sees half of
/// one. See the [module docs](super) for the keys.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use coresident_xen::residency::Agent;
/// use coresident_xen::XenStore;
///
/// let mut agent = Agent::new(XenStore::open()?)?;
/// loop {
///     for change in agent.step(Some(Duration::from_secs(1)))? {
///         println!("{change}");
///     }
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Agent<X: XsClient = XenStore> {
    xs: X,
    /// Live domains (under `/local/domain`) and what they advertise.
    domains: BTreeMap<DomId, Status>,
    /// Domains taken out of every list by [`Agent::withdraw`].
    withdrawn: BTreeSet<DomId>,
    /// What each domain's list holds, as last written.
    written: BTreeMap<DomId, BTreeMap<DomId, Addresses>>,
    /// Domains with a list this agent did not write (an earlier agent's):
    /// rewritten at the next reconciliation, even if empty.
    inherited: BTreeSet<DomId>,
    /// Addresses claimed by more than one domain, as last reported.
    conflicts: BTreeMap<Addr, Vec<DomId>>,
    /// The generation of the last list written.
    generation: u64,
    /// `/local/domain` must be listed again.
    relist: bool,
    /// Domains whose advertisement must be read again.
    dirty: BTreeSet<DomId>,
    /// What a domain may claim, and the debounce period.
    policy: Policy,
    /// When each domain's last change was applied (for the debounce).
    applied: BTreeMap<DomId, Instant>,
    /// Domains with an event held back by the debounce, and when they are
    /// due to be read again.
    deferred: BTreeMap<DomId, Instant>,
    /// The client's count of dropped watch events, as last seen.
    lost_seen: u64,
}

impl<X: XsClient> Agent<X> {
    /// Starts watching, with the default [`Policy`]: no address beyond the
    /// vifs', a one-second debounce. Nothing is read or written before the
    /// first [`step`](Self::step).
    ///
    /// # Errors
    ///
    /// The watches' XenStore errors.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::residency::Agent;
    /// use coresident_xen::XenStore;
    ///
    /// // In dom0: xenstored's socket. Sets the watches; reads nothing yet.
    /// let mut agent = Agent::new(XenStore::open()?)?;
    /// let changes = agent.run_once()?; // the first step reads everything
    /// # drop(changes);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(xs: X) -> Result<Self, AgentError> {
        Self::with_policy(xs, Policy::default())
    }

    /// As [`Agent::new`], with `policy`.
    ///
    /// # Errors
    ///
    /// The watches' XenStore errors.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use core::net::Ipv4Addr;
    /// use std::time::Duration;
    /// use coresident_xen::residency::{Addr, Addresses, Agent, Policy};
    /// use coresident_xen::XenStore;
    ///
    /// // The domain named "router" may claim 10.0.0.1 besides its vifs' addresses.
    /// let router = Addresses::from_addrs([Addr::Ipv4(Ipv4Addr::new(10, 0, 0, 1))])?;
    /// let policy = Policy::default().allow("router", router).debounce(Duration::from_millis(200));
    /// let agent = Agent::with_policy(XenStore::open()?, policy)?;
    /// # drop(agent);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_policy(mut xs: X, policy: Policy) -> Result<Self, AgentError> {
        xs.watch("@introduceDomain", TOKEN_DOMAINS)?;
        xs.watch("@releaseDomain", TOKEN_DOMAINS)?;
        Ok(Self {
            xs,
            domains: BTreeMap::new(),
            withdrawn: BTreeSet::new(),
            written: BTreeMap::new(),
            inherited: BTreeSet::new(),
            conflicts: BTreeMap::new(),
            generation: 0,
            relist: true,
            dirty: BTreeSet::new(),
            lost_seen: 0,
            policy,
            applied: BTreeMap::new(),
            deferred: BTreeMap::new(),
        })
    }

    /// The live domains and what they advertise.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::residency::{Agent, Status};
    /// use coresident_xen::XenStore;
    ///
    /// let mut agent = Agent::new(XenStore::open()?)?;
    /// agent.run_once()?;
    /// let advertising = agent
    ///     .domains()
    ///     .values()
    ///     .filter(|s| matches!(s, Status::Advertising(_)))
    ///     .count();
    /// println!("{advertising} of {} live domains advertise", agent.domains().len());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn domains(&self) -> &BTreeMap<DomId, Status> {
        &self.domains
    }

    /// The peers in `domid`'s list as last written.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::residency::Agent;
    /// use coresident_xen::XenStore;
    ///
    /// let mut agent = Agent::new(XenStore::open()?)?;
    /// agent.run_once()?;
    /// // The peers the agent last wrote to domain 5's list.
    /// for (peer, addrs) in agent.list_of(5).into_iter().flatten() {
    ///     println!("domain 5 sees {peer}: {} addresses", addrs.len());
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn list_of(&self, domid: DomId) -> Option<&BTreeMap<DomId, Addresses>> {
        self.written.get(&domid)
    }

    /// The domains whose latest change is held back by the debounce
    /// ([`Policy::debounce`]): it is applied when their period ends.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::residency::Agent;
    /// use coresident_xen::XenStore;
    ///
    /// let mut agent = Agent::new(XenStore::open()?)?;
    /// agent.run_once()?;
    /// for domid in agent.deferred() {
    ///     println!("domain {domid} changes too often: its last change waits");
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn deferred(&self) -> impl Iterator<Item = DomId> + '_ {
        self.deferred.keys().copied()
    }

    /// The XenStore client (for the daemon's own reads).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::residency::Agent;
    /// use coresident_xen::xenstore::XsClient;
    /// use coresident_xen::XenStore;
    ///
    /// let mut agent = Agent::new(XenStore::open()?)?;
    /// // The daemon's own reads go through the agent's connection.
    /// let name = agent.xenstore().read_string("/local/domain/5/name")?;
    /// println!("domain 5 is {name}");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn xenstore(&mut self) -> &mut X {
        &mut self.xs
    }

    /// Waits up to `timeout` (`None`: forever) for a watch event, takes
    /// every event already queued, re-reads what they name and rewrites the
    /// lists that changed. Returns what changed (empty on a timeout).
    ///
    /// The first call reads everything (the watches fire once when set).
    ///
    /// # Errors
    ///
    /// Connection errors; errors about one domain are [`Change`]s.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use coresident_xen::residency::{Agent, Change};
    /// use coresident_xen::XenStore;
    ///
    /// let mut agent = Agent::new(XenStore::open()?)?;
    /// loop {
    ///     for change in agent.step(Some(Duration::from_secs(1)))? {
    ///         if let Change::ListFailed { .. } | Change::Rejected { .. } = change {
    ///             eprintln!("{change}");
    ///         }
    ///     }
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn step(&mut self, timeout: Option<Duration>) -> Result<Vec<Change>, AgentError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            self.promote_due(Instant::now());
            if self.relist || !self.dirty.is_empty() {
                break;
            }
            // Wait for an event, or until a deferred domain is due.
            let now = Instant::now();
            let left = deadline.map(|d| d.saturating_duration_since(now));
            let due = self
                .deferred
                .values()
                .min()
                .map(|d| d.saturating_duration_since(now));
            let wait = match (left, due) {
                (Some(l), Some(d)) => Some(l.min(d)),
                (l, d) => l.or(d),
            };
            match self.xs.wait_watch(wait)? {
                Some(ev) => {
                    let (path, token) = (owned(ev.path), owned(ev.token));
                    self.note(&path, &token);
                    break;
                }
                None if deadline.is_some_and(|d| Instant::now() >= d)
                    && self.deferred.values().all(|&d| d > Instant::now()) =>
                {
                    return Ok(Vec::new());
                }
                None => {}
            }
        }
        while let Some(ev) = self.xs.wait_watch(Some(Duration::ZERO))? {
            let (path, token) = (owned(ev.path), owned(ev.token));
            self.note(&path, &token);
        }
        // Events dropped by a full queue: what they named is unknown, so
        // read everything again.
        if self.xs.lost_events() != self.lost_seen {
            self.lost_seen = self.xs.lost_events();
            self.relist = true;
            self.dirty.extend(self.domains.keys().copied());
        }
        self.reconcile()
    }

    /// [`step`](Self::step) without waiting: handles what is queued.
    ///
    /// # Errors
    ///
    /// As [`step`](Self::step).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::residency::Agent;
    /// use coresident_xen::XenStore;
    ///
    /// let mut agent = Agent::new(XenStore::open()?)?;
    /// // Beside other work, in an event loop: handle what is queued, never block.
    /// for change in agent.run_once()? {
    ///     println!("{change}");
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn run_once(&mut self) -> Result<Vec<Change>, AgentError> {
        self.step(Some(Duration::ZERO))
    }

    /// Takes `domid` out of every list (and empties its own) as if it had
    /// left this host, until [`readmit`](Self::readmit). What a migration
    /// away looks like to the peers.
    ///
    /// # Errors
    ///
    /// As [`step`](Self::step).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::residency::Agent;
    /// use coresident_xen::XenStore;
    ///
    /// let mut agent = Agent::new(XenStore::open()?)?;
    /// agent.run_once()?;
    /// // Before migrating domain 5 away: its peers fall back to the network.
    /// agent.withdraw(5)?;
    /// // ... the migration failed, domain 5 stays: back in every list.
    /// agent.readmit(5)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn withdraw(&mut self, domid: DomId) -> Result<Vec<Change>, AgentError> {
        let mut out = Vec::new();
        if self.withdrawn.insert(domid) {
            out.push(Change::Withdrawn(domid));
        }
        out.extend(self.reconcile()?);
        Ok(out)
    }

    /// Undoes [`withdraw`](Self::withdraw).
    ///
    /// # Errors
    ///
    /// As [`step`](Self::step).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::residency::{Agent, Change};
    /// use coresident_xen::XenStore;
    ///
    /// let mut agent = Agent::new(XenStore::open()?)?;
    /// agent.withdraw(5)?;
    /// let changes = agent.readmit(5)?;
    /// if changes.contains(&Change::Readmitted(5)) {
    ///     println!("domain 5 is listed again");
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn readmit(&mut self, domid: DomId) -> Result<Vec<Change>, AgentError> {
        let mut out = Vec::new();
        if self.withdrawn.remove(&domid) {
            out.push(Change::Readmitted(domid));
        }
        out.extend(self.reconcile()?);
        Ok(out)
    }

    /// Moves the deferred domains due by `now` back to `dirty`.
    fn promote_due(&mut self, now: Instant) {
        let due: Vec<DomId> = self
            .deferred
            .iter()
            .filter(|(_, &t)| t <= now)
            .map(|(&d, _)| d)
            .collect();
        for d in due {
            self.deferred.remove(&d);
            self.dirty.insert(d);
        }
    }

    /// Records what a watch event asks for.
    fn note(&mut self, path: &str, token: &str) {
        match token {
            TOKEN_DOMAINS => self.relist = true,
            TOKEN_ADVERT => match domid_of(path) {
                Some(d) => {
                    self.dirty.insert(d);
                }
                // Not a path we watch: read everything again.
                None => self.relist = true,
            },
            TOKEN_VIF => match path
                .strip_prefix(VIF_BACKENDS)
                .and_then(|p| parse_domid(p.split('/').next()?))
            {
                Some(d) => {
                    self.dirty.insert(d);
                }
                None => self.relist = true,
            },
            _ => {}
        }
    }

    /// Brings the domain set, the advertisements and the lists up to date.
    fn reconcile(&mut self) -> Result<Vec<Change>, AgentError> {
        let mut out = Vec::new();
        if core::mem::take(&mut self.relist) {
            self.relist_domains(&mut out)?;
        }
        let dirty = core::mem::take(&mut self.dirty);
        let now = Instant::now();
        let period = self.policy.debounce_period();
        for d in dirty {
            if !self.domains.contains_key(&d) {
                continue;
            }
            // Finding 7: at most one applied change per domain and period;
            // what arrives meanwhile waits (and is read once) until then.
            if let Some(&last) = self.applied.get(&d) {
                if let Some(due) = last.checked_add(period).filter(|&due| due > now) {
                    self.deferred.entry(d).or_insert(due);
                    continue;
                }
            }
            let status = read_advert(&mut self.xs, &self.policy, d)?;
            // A vanished advertisement may mean a vanished domain: the
            // toolstack removes the home, and @releaseDomain may come
            // before or after.
            if status == Status::Silent && !self.home_exists(d)? {
                self.forget(d, &mut out)?;
                continue;
            }
            let old = self.domains.insert(d, status.clone());
            if old.as_ref() == Some(&status) {
                continue;
            }
            self.applied.insert(d, now);
            out.push(match status {
                Status::Silent => Change::Silenced(d),
                Status::Advertising(addrs) => Change::Advertised { domid: d, addrs },
                Status::Rejected(error) => Change::Rejected { domid: d, error },
            });
        }
        self.write_lists(&mut out)?;
        Ok(out)
    }

    /// Lists `/local/domain`: new domains are watched, departed ones dropped.
    fn relist_domains(&mut self, out: &mut Vec<Change>) -> Result<(), AgentError> {
        let names = match self.xs.children("/local/domain") {
            Ok(n) => n,
            Err(XsError::NotFound) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        // Names are written by the toolstack (dom0), but parse them strictly
        // all the same: anything but a guest domain id is skipped.
        let live: BTreeSet<DomId> = names.iter().filter_map(|n| parse_domid(n)).collect();
        let gone: Vec<DomId> = self
            .domains
            .keys()
            .copied()
            .filter(|d| !live.contains(d))
            .collect();
        for d in gone {
            self.forget(d, out)?;
        }
        for d in live {
            if self.domains.contains_key(&d) {
                continue;
            }
            self.domains.insert(d, Status::Silent);
            out.push(Change::Appeared(d));
            // A list left by an earlier agent may name peers long gone.
            match self.xs.read(&list_dir(d)) {
                Ok(_) => {
                    self.inherited.insert(d);
                }
                Err(e) if local(e) => {}
                Err(e) => return Err(e.into()),
            }
            // The watches fire once at once, which marks the domain dirty.
            for (path, token) in [(advert_path(d), TOKEN_ADVERT), (vif_path(d), TOKEN_VIF)] {
                match self.xs.watch(&path, token) {
                    Ok(()) => {}
                    Err(e) if local(e) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            self.dirty.insert(d);
        }
        Ok(())
    }

    /// Whether `/local/domain/N` exists.
    fn home_exists(&mut self, d: DomId) -> Result<bool, AgentError> {
        match self.xs.read(&home_path(d)) {
            Ok(_) => Ok(true),
            Err(XsError::NotFound) => Ok(false),
            // EACCES cannot happen to dom0; treat as present.
            Err(e) if local(e) => Ok(true),
            Err(e) => Err(e.into()),
        }
    }

    /// Drops a domain that is gone.
    fn forget(&mut self, d: DomId, out: &mut Vec<Change>) -> Result<(), AgentError> {
        if self.domains.remove(&d).is_none() {
            return Ok(());
        }
        self.withdrawn.remove(&d);
        self.applied.remove(&d);
        self.deferred.remove(&d);
        self.written.remove(&d);
        self.inherited.remove(&d);
        self.dirty.remove(&d);
        for (path, token) in [(advert_path(d), TOKEN_ADVERT), (vif_path(d), TOKEN_VIF)] {
            match self.xs.unwatch(&path, token) {
                Ok(()) => {}
                Err(e) if local(e) => {}
                Err(e) => return Err(e.into()),
            }
        }
        out.push(Change::Gone(d));
        Ok(())
    }

    /// Computes every list and writes those that changed.
    fn write_lists(&mut self, out: &mut Vec<Change>) -> Result<(), AgentError> {
        let members: BTreeMap<DomId, &Addresses> = self
            .domains
            .iter()
            .filter(|(d, _)| !self.withdrawn.contains(d))
            .filter_map(|(&d, s)| match s {
                Status::Advertising(a) => Some((d, a)),
                _ => None,
            })
            .collect();
        // An address claimed twice is published for nobody.
        let mut claims: BTreeMap<Addr, Vec<DomId>> = BTreeMap::new();
        for (&d, a) in &members {
            for addr in a.iter() {
                claims.entry(addr).or_default().push(d);
            }
        }
        claims.retain(|_, ds| ds.len() > 1);
        if claims != self.conflicts {
            for (addr, domains) in &claims {
                if self.conflicts.get(addr) != Some(domains) {
                    out.push(Change::Conflict {
                        addr: *addr,
                        domains: domains.clone(),
                    });
                }
            }
            self.conflicts = claims;
        }
        let published: BTreeMap<DomId, Addresses> = members
            .iter()
            .map(|(&d, a)| {
                let mut a = (*a).clone();
                for addr in self.conflicts.keys() {
                    a.remove(addr);
                }
                (d, a)
            })
            .collect();
        let targets: Vec<DomId> = self.domains.keys().copied().collect();
        for d in targets {
            let want: BTreeMap<DomId, Addresses> = if published.contains_key(&d) {
                published
                    .iter()
                    .filter(|(&p, _)| p != d)
                    .map(|(&p, a)| (p, a.clone()))
                    .collect()
            } else {
                BTreeMap::new()
            };
            match self.written.get(&d) {
                Some(w) if *w == want => continue,
                // Never written and nothing to say: leave the domain alone.
                None if want.is_empty() && !self.inherited.contains(&d) => continue,
                _ => {}
            }
            match self.write_list(d, &want) {
                Ok(generation) => {
                    out.push(Change::ListWritten {
                        domid: d,
                        generation,
                        peers: want.keys().copied().collect(),
                    });
                    self.written.insert(d, want);
                    self.inherited.remove(&d);
                }
                Err(e) if local(e) => {
                    // Retried at the next change of anything.
                    self.written.remove(&d);
                    out.push(Change::ListFailed { domid: d, error: e });
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Writes `d`'s list in one transaction; returns its generation.
    fn write_list(&mut self, d: DomId, peers: &BTreeMap<DomId, Addresses>) -> Result<u64, XsError> {
        self.generation += 1;
        let generation = self.generation;
        let dir = list_dir(d);
        let mut last = XsError::Daemon(XsErrno::EAGAIN);
        for _ in 0..TX_RETRIES {
            let mut tx = self.xs.transaction()?;
            // Inside the transaction, so a domain destroyed meanwhile is not
            // given a home again by the writes below (the commit fails).
            tx.read(&home_path(d))?;
            match tx.rm(&format!("{dir}/peers")) {
                Ok(()) | Err(XsError::NotFound) => {}
                Err(e) => return Err(e),
            }
            // New nodes inherit the permissions of `/local/domain/N` (owner
            // dom0, read for N); checked after the commit.
            tx.mkdir(&format!("{dir}/peers"))?;
            for (p, a) in peers {
                tx.write(&format!("{dir}/peers/{p}"), a.encode().as_bytes())?;
            }
            tx.write(
                &format!("{dir}/generation"),
                generation.to_string().as_bytes(),
            )?;
            match tx.commit() {
                Ok(()) => {
                    self.check_perms(d, peers)?;
                    return Ok(generation);
                }
                Err(XsError::Daemon(XsErrno::EAGAIN)) => last = XsError::Daemon(XsErrno::EAGAIN),
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// Makes `d`'s list nodes owned by dom0 and readable (not writable) by
    /// `d`, should they have inherited anything else.
    fn check_perms(&mut self, d: DomId, peers: &BTreeMap<DomId, Addresses>) -> Result<(), XsError> {
        let dir = list_dir(d);
        if perms_ok(&self.xs.perms(&dir)?, d) {
            return Ok(());
        }
        let want = list_perms(d);
        self.xs.set_perms(&dir, &want)?;
        self.xs.set_perms(&format!("{dir}/generation"), &want)?;
        self.xs.set_perms(&format!("{dir}/peers"), &want)?;
        for p in peers.keys() {
            self.xs.set_perms(&format!("{dir}/peers/{p}"), &want)?;
        }
        Ok(())
    }
}

/// A guest domain id in its canonical spelling (`"007"` does not pass for
/// domain 7), below `DOMID_FIRST_RESERVED`.
pub(super) fn parse_domid(n: &str) -> Option<DomId> {
    let d = xs_wire::parse_u16(n.as_bytes()).ok()?;
    (d < DomainId::FIRST_RESERVED && d.to_string() == n).then_some(d)
}

/// The domain id of a `/local/domain/N/...` path.
fn domid_of(path: &str) -> Option<DomId> {
    parse_domid(path.strip_prefix("/local/domain/")?.split('/').next()?)
}
