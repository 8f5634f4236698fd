//! One way to build a router (std): [`Router::builder`] takes a discovery source, a
//! policy and a network path, and returns a router that owns (or shares) its residency
//! table and keeps it in step with the source at every [`Router::poll`].
//!
//! ```text
//!   Router::builder()
//!       .discovery(HostDiscovery::new(registry, me, ..))   // who is co-resident
//!       .network(TcpPath::new(me, ..))                     // everyone else
//!       .policy(ThresholdPolicy::default())                // optional
//!       .build()?                                          // -> Router<'static, ..>
//! ```
//!
//! The table is `Arc`-shared: [`RouterBuilder::table`] takes one the caller keeps a
//! handle to, otherwise a fresh one is made with a [`random_seed`].

use crate::discovery::{Discovery, Residency};
use crate::net::NetworkPath;
use crate::policy::{Policy, ThresholdPolicy};
use crate::reassembly::ReassemblyLimits;
use crate::router::RouteError;
use crate::transport::Link;
use crate::{
    Channel, ChannelConfig, ChannelError, Clock, Doorbell, Router, SharedRegion, StdClock,
};
use core::fmt;
use core::marker::PhantomData;
use coresident_lookup::{Handle, Key, Seed, Table};
use std::boxed::Box;
use std::sync::Arc;
use std::vec::Vec;

/// A 256-bit table seed from the operating system's randomness (std's `RandomState`,
/// which the OS seeds): what a residency table that guests can see keys for needs, so
/// nobody can aim keys at one bucket.
pub fn random_seed() -> Seed {
    use core::hash::BuildHasher;
    use std::hash::RandomState;
    let s = RandomState::new();
    Seed::new(core::array::from_fn(|i| s.hash_one(i as u64 ^ 0x5EED)))
}

/// Why [`RouterBuilder::build`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BuildError {
    /// The table's single writer is held elsewhere; the router's discovery needs it.
    TableBusy,
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TableBusy => f.write_str(
                "the residency table's writer is held elsewhere: the router's discovery writes it",
            ),
        }
    }
}

impl core::error::Error for BuildError {}

/// A type that cannot exist: the builder's "not given yet".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unset {}

impl Key for Unset {
    const WORDS: usize = 1;
    fn encode(&self) -> [u64; 2] {
        match *self {}
    }
}

// SAFETY: `Unset` has no values, so no `&Unset` exists and these methods never run: the
// contract about the memory a value describes holds vacuously.
unsafe impl SharedRegion for Unset {
    fn as_ptr(&self) -> *mut u8 {
        match *self {}
    }
    fn len(&self) -> usize {
        match *self {}
    }
}

impl Doorbell for Unset {
    fn ring(&self) -> Result<(), crate::TransportError> {
        match *self {}
    }
    fn wait(&self, _: Option<core::time::Duration>) -> Result<crate::Wake, crate::TransportError> {
        match *self {}
    }
}

/// A discovery source with its error boxed, so the router can keep it as a trait
/// object.
pub(crate) trait DynDiscovery<K, R, D> {
    fn poll(
        &mut self,
        changes: &mut dyn FnMut(Residency<K, Link<R, D>>),
    ) -> Result<(), Box<dyn core::error::Error + Send + Sync>>;
    #[cfg(unix)]
    fn wait_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>>;
}

impl<K, T> DynDiscovery<K, T::Region, T::Doorbell> for T
where
    T: Discovery<K>,
    T::Error: core::error::Error + Send + Sync + 'static,
{
    fn poll(
        &mut self,
        changes: &mut dyn FnMut(Residency<K, Link<T::Region, T::Doorbell>>),
    ) -> Result<(), Box<dyn core::error::Error + Send + Sync>> {
        Discovery::poll(self, changes).map_err(|e| Box::new(e) as _)
    }
    #[cfg(unix)]
    fn wait_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        Discovery::wait_fd(self)
    }
}

type MakeChannel<R, D, C> =
    Box<dyn FnMut(Link<R, D>) -> Result<Channel<R, D, C>, ChannelError> + Send>;

/// What a built router has beyond the generic one: its discovery source, how it makes
/// channels of the links it reports, the keys each peer arrived with, the poll set.
pub(crate) struct Extras<K, R: SharedRegion, D: Doorbell, C: Clock> {
    pub(crate) discovery: Option<Box<dyn DynDiscovery<K, R, D> + Send>>,
    pub(crate) make_channel: Option<MakeChannel<R, D, C>>,
    /// Each discovered peer's name and its keys in the table.
    pub(crate) peers: Vec<(K, Vec<K>)>,
    /// How long a blocking receive spins before it sleeps (`None`: the default).
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub(crate) spin: Option<core::time::Duration>,
    #[cfg(target_os = "linux")]
    pub(crate) poller: Option<crate::wait::Poller>,
}

impl<K, R: SharedRegion, D: Doorbell, C: Clock> Default for Extras<K, R, D, C> {
    fn default() -> Self {
        Self {
            discovery: None,
            make_channel: None,
            peers: Vec::new(),
            spin: None,
            #[cfg(target_os = "linux")]
            poller: None,
        }
    }
}

/// Builds a [`Router`] over a discovery source (see [`Router::builder`]).
///
/// `S` is the discovery source, `N` the network path, `P` the policy, `B` the table's
/// buckets (64 unless [`table`](Self::table) or [`buckets`](Self::buckets) says
/// otherwise: 256 one-word keys).
#[must_use]
pub struct RouterBuilder<K: Key, S, N, P, const B: usize> {
    discovery: S,
    net: N,
    policy: P,
    limits: ReassemblyLimits,
    config: ChannelConfig,
    seed: Option<Seed>,
    table: Option<Arc<Table<K, B>>>,
    _key: PhantomData<fn() -> K>,
}

impl<K: Key, S, N, P: fmt::Debug, const B: usize> fmt::Debug for RouterBuilder<K, S, N, P, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouterBuilder")
            .field("policy", &self.policy)
            .field("limits", &self.limits)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Router<'static, Unset, Unset, Unset, StdClock, Unset, ThresholdPolicy, 1> {
    /// Starts building a router: give it a [`discovery`](RouterBuilder::discovery)
    /// source and a [`network`](RouterBuilder::network) path, then
    /// [`build`](RouterBuilder::build).
    ///
    /// # Examples
    ///
    /// See `examples/router.rs` (two processes, the host registry, `TcpPath`, a
    /// withdrawal mid-stream) and the crate docs.
    pub fn builder() -> RouterBuilder<Unset, NotGiven, NotGiven, ThresholdPolicy, 64> {
        RouterBuilder {
            discovery: NotGiven,
            net: NotGiven,
            policy: ThresholdPolicy::default(),
            limits: ReassemblyLimits::default(),
            config: ChannelConfig::default(),
            seed: None,
            table: None,
            _key: PhantomData,
        }
    }
}

/// The builder's placeholder for a part not given yet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NotGiven;

impl<K: Key, S, N, P, const B: usize> RouterBuilder<K, S, N, P, B> {
    /// The discovery source (its key type becomes the router's).
    pub fn discovery<K2: Key, S2: Discovery<K2>>(
        self,
        discovery: S2,
    ) -> RouterBuilder<K2, S2, N, P, B> {
        RouterBuilder {
            discovery,
            net: self.net,
            policy: self.policy,
            limits: self.limits,
            config: self.config,
            seed: self.seed,
            table: None,
            _key: PhantomData,
        }
    }

    /// The network path.
    pub fn network<N2>(self, net: N2) -> RouterBuilder<K, S, N2, P, B> {
        RouterBuilder {
            discovery: self.discovery,
            net,
            policy: self.policy,
            limits: self.limits,
            config: self.config,
            seed: self.seed,
            table: self.table,
            _key: PhantomData,
        }
    }

    /// The policy ([`ThresholdPolicy::default`] otherwise).
    pub fn policy<P2: Policy>(self, policy: P2) -> RouterBuilder<K, S, N, P2, B> {
        RouterBuilder {
            discovery: self.discovery,
            net: self.net,
            policy,
            limits: self.limits,
            config: self.config,
            seed: self.seed,
            table: self.table,
            _key: PhantomData,
        }
    }

    /// Reassembly bounds ([`ReassemblyLimits::default`] otherwise).
    pub fn limits(mut self, limits: ReassemblyLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The configuration of every channel discovery establishes
    /// ([`ChannelConfig::default`] otherwise).
    pub fn channel_config(mut self, config: ChannelConfig) -> Self {
        self.config = config;
        self
    }

    /// The seed of a fresh table ([`random_seed`] otherwise).
    pub fn seed(mut self, seed: Seed) -> Self {
        self.seed = Some(seed);
        self
    }

    /// A table of `B2` buckets (instead of 64) made fresh at `build`.
    pub fn buckets<const B2: usize>(self) -> RouterBuilder<K, S, N, P, B2> {
        RouterBuilder {
            discovery: self.discovery,
            net: self.net,
            policy: self.policy,
            limits: self.limits,
            config: self.config,
            seed: self.seed,
            table: None,
            _key: PhantomData,
        }
    }

    /// The residency table to share (the caller may keep a clone to read it; its
    /// writer must be free: discovery writes it).
    pub fn table<const B2: usize>(self, table: Arc<Table<K, B2>>) -> RouterBuilder<K, S, N, P, B2> {
        RouterBuilder {
            discovery: self.discovery,
            net: self.net,
            policy: self.policy,
            limits: self.limits,
            config: self.config,
            seed: self.seed,
            table: Some(table),
            _key: PhantomData,
        }
    }
}

impl<K, S, N, P, const B: usize> RouterBuilder<K, S, N, P, B>
where
    K: Key + fmt::Debug + 'static,
    S: Discovery<K> + Send + 'static,
    S::Error: core::error::Error + Send + Sync + 'static,
    N: NetworkPath<K>,
    P: Policy,
{
    /// The router.
    ///
    /// # Errors
    ///
    /// [`BuildError::TableBusy`] when a given table's writer is held elsewhere.
    #[allow(clippy::type_complexity)]
    pub fn build(
        self,
    ) -> Result<Router<'static, K, S::Region, S::Doorbell, StdClock, N, P, B>, BuildError> {
        let table = match self.table {
            Some(t) => t,
            None => Arc::new(Table::new(self.seed.unwrap_or_else(random_seed))),
        };
        // The writer is claimed at each change; check now that it can be.
        drop(table.writer().map_err(|_| BuildError::TableBusy)?);
        let mut r = Router::shared(table, self.policy, self.net, self.limits);
        let config = self.config;
        r.ext.discovery = Some(Box::new(self.discovery));
        r.ext.make_channel = Some(Box::new(move |link| {
            Channel::new(link, config, StdClock::default())
        }));
        Ok(r)
    }
}

impl<'t, K, R, D, C, N, P, const B: usize> Router<'t, K, R, D, C, N, P, B>
where
    K: Key + fmt::Debug,
    R: SharedRegion,
    D: Doorbell,
    C: Clock,
    N: NetworkPath<K>,
    P: Policy,
{
    /// Applies what the discovery source reports: arrivals are attached and their keys
    /// inserted; departures leave the table and fail over.
    pub(crate) fn poll_discovery(&mut self) -> Result<(), RouteError<N::Error>> {
        let Some(d) = self.ext.discovery.as_mut() else {
            return Ok(());
        };
        let mut changes = Vec::new();
        d.poll(&mut |c| changes.push(c))
            .map_err(RouteError::Discovery)?;
        for c in changes {
            match c {
                Residency::Arrived { keys, link } => self.arrived(keys, link)?,
                Residency::Departed { key } => self.departed(&key)?,
            }
        }
        Ok(())
    }

    fn arrived(&mut self, keys: Vec<K>, link: Link<R, D>) -> Result<(), RouteError<N::Error>> {
        let Some(&name) = keys.first() else {
            return Ok(());
        };
        // A second arrival without a departure: the old channel is stale.
        if self.ext.peers.iter().any(|(k, _)| *k == name) {
            self.departed(&name)?;
        }
        let Some(make) = self.ext.make_channel.as_mut() else {
            return Ok(());
        };
        let ch = match make(link) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(peer = ?name, error = %e, "router: discovered channel refused at attach");
                return Ok(());
            }
        };
        let h: Handle = self.attach(name, ch)?;
        let mut w = self.table().writer().map_err(|_| RouteError::TableBusy)?;
        for k in &keys {
            w.insert(*k, h).map_err(RouteError::Table)?;
        }
        drop(w);
        tracing::info!(peer = ?name, keys = keys.len(), "router: co-resident peer attached");
        self.ext.peers.push((name, keys));
        Ok(())
    }

    fn departed(&mut self, name: &K) -> Result<(), RouteError<N::Error>> {
        let keys = match self.ext.peers.iter().position(|(k, _)| k == name) {
            Some(i) => self.ext.peers.swap_remove(i).1,
            None => std::vec![*name],
        };
        {
            let mut w = self.table().writer().map_err(|_| RouteError::TableBusy)?;
            for k in &keys {
                w.remove(k);
            }
        }
        tracing::info!(peer = ?name, "router: peer no longer co-resident");
        if let Some(h) = self.handle_of(name) {
            // A refused resend waits in the backlog; it is not this call's failure.
            if let Err(RouteError::Network(e)) = self.peer_left(h) {
                tracing::debug!(peer = ?name, error = %e, "router: resend backlogged at departure");
            }
        }
        Ok(())
    }
}
