//! The residency-aware router: for each outgoing message, look the destination up,
//! ask the policy, take the channel or the network path; on the receiving side,
//! reassemble each (peer, flow) in order; and the lifecycle that moves a peer's flows
//! to the network when its channel fails.
//!
//! ```text
//!            attach(peer, channel)        peer_left / transport signal /
//!   (none) ----------------------> Connected -- liveness / Corrupted --> Draining
//!                                      |                                    |
//!                                      |  close(handle)       received all  |
//!                                      +------------------> Closed <--------+
//! ```
//!
//! On the way to `Draining`, every message the peer did not consume is sent again on
//! the network path, in order, before the router returns; `Draining` keeps receiving
//! what the peer published until its ring is empty. A resend the network path does not
//! take waits in the router's backlog: the flow's newer messages are not taken until
//! it has gone out, so no sequence number is ever skipped.

use crate::flow::{FlowHeader, FLOW_HEADER_LEN};
use crate::net::{Inbox, NetworkPath, Offered};
use crate::policy::{Decision, Overflow, Path, PeerState, Policy};
use crate::reassembly::{
    Delivery, Reassembler, ReassemblyError, ReassemblyLimits, ReassemblyStats,
};
use crate::{Channel, ChannelError, ChannelState, Clock, Doorbell, SharedRegion};
use alloc::collections::VecDeque;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::hash::{Hash, Hasher};
use core::ops::Deref;
use core::time::Duration;
use coresident_lookup::{Handle, Key, Table};

/// Why a message was not routed, or a receive failed. A send that returns an error
/// did **not** take its message: nothing of it will arrive, and its sequence number is
/// still free (the next message of the flow gets it).
#[derive(Debug)]
#[non_exhaustive]
pub enum RouteError<E> {
    /// The network path did not take the message (or a resend waiting before it).
    Network(E),
    /// The message exceeds what the flow header's framing takes (`usize::MAX - 16`).
    TooLarge,
    /// A message received from the network path could not be reassembled.
    Reassembly(ReassemblyError),
    /// No free channel slot (65,535 in use).
    NoSlot,
    /// The policy says [`Overflow::Wait`] and the ring is full (a non-blocking send).
    Full,
    /// A blocking call's timeout passed.
    TimedOut,
    /// The flow is going back to its channel, and the network path has not yet
    /// delivered what it carried of the flow (a message by the channel would overtake
    /// them: [`NetworkPath::in_flight`]). Not taken: poll and retry, or use
    /// [`Router::send_blocking`], which waits.
    Switching,
    /// [`Router::recv_network`] without a peer, on a router that has channels to
    /// several peers (or none): the source of the message is unknown, and a message
    /// of unknown source cannot be placed in any peer's flow. Use
    /// [`Router::recv_network_from`].
    UnknownSource,
    /// The residency table refused an insert from discovery.
    Table(coresident_lookup::InsertError),
    /// The residency table's writer is held elsewhere (discovery needs it).
    TableBusy,
    /// The discovery source failed.
    #[cfg(feature = "std")]
    Discovery(std::boxed::Box<dyn core::error::Error + Send + Sync>),
    /// Waiting failed (the router's poll set).
    #[cfg(feature = "std")]
    Wait(std::io::Error),
}

impl<E: fmt::Display> fmt::Display for RouteError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Network(e) => write!(f, "the network path did not take the message: {e}"),
            Self::TooLarge => f.write_str("message too large for a flow header's framing"),
            Self::Reassembly(e) => write!(f, "{e}"),
            Self::NoSlot => f.write_str("no free channel slot (65,535 channels attached)"),
            Self::Full => f.write_str(
                "the peer's ring is full and the policy waits rather than spills: not sent",
            ),
            Self::TimedOut => f.write_str("timed out"),
            Self::Switching => f.write_str(
                "the flow returns to its channel once the network path delivered its earlier \
                 messages: not sent yet",
            ),
            Self::UnknownSource => f.write_str(
                "a network message without its sender, on a router with channels to several \
                 peers (or none): use recv_network_from",
            ),
            Self::Table(e) => write!(f, "residency table: {e}"),
            Self::TableBusy => f.write_str("the residency table's writer is held elsewhere"),
            #[cfg(feature = "std")]
            Self::Discovery(e) => write!(f, "discovery: {e}"),
            #[cfg(feature = "std")]
            Self::Wait(e) => write!(f, "waiting for the router's descriptors: {e}"),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> core::error::Error for RouteError<E> {}

/// The router's counters: every path taken, every drop, refusal, hold and eviction.
/// Each drop, refusal and eviction is also a `tracing` event carrying the peer and the
/// flow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouterStats {
    /// Messages sent through a channel.
    pub via_channel: u64,
    /// Messages sent through the network path (not counting resends).
    pub via_network: u64,
    /// Lookups that found a resident peer.
    pub hits: u64,
    /// Lookups that did not.
    pub misses: u64,
    /// Of `via_network`: messages the policy gave the channel whose ring was full.
    pub spilled: u64,
    /// Sends refused because the ring was full and the policy waits ([`RouteError::Full`]).
    pub full: u64,
    /// Sends the network path did not take ([`RouteError::Network`]; nothing was lost).
    pub network_refused: u64,
    /// Sends refused with [`RouteError::Switching`]: the flow returns to its channel
    /// once the network path has delivered what it carried of it.
    pub switching: u64,
    /// Channels given up.
    pub fallbacks: u64,
    /// Unconsumed messages sent again over the network (backlogged ones included once
    /// they went).
    pub resent: u64,
    /// Resends the network path did not take at once, kept in order in the backlog.
    pub backlogged: u64,
    /// Frames in a ring without a readable flow header (a peer rewrote them): dropped.
    pub unreadable: u64,
    /// Messages received from a channel that reassembly refused (dropped: a ring cannot
    /// take a message back).
    pub channel_refused: u64,
    /// Times a channel was left unread because its peer's early channel messages
    /// reached the back-pressure mark (the gap in front of them is on the network).
    pub channel_paused: u64,
    /// Network messages without a known sender (dropped).
    pub unknown_source: u64,
    /// The receiving side's reassembly.
    pub rx: ReassemblyStats,
}

/// A residency key as a hash-map key (hashed through its table encoding).
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(transparent)]
pub(crate) struct PeerKey<K>(pub(crate) K);

impl<K: Key> Hash for PeerKey<K> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let [a, b] = self.0.encode();
        state.write_u64(a);
        state.write_u64(b);
    }
}

impl<K: fmt::Debug> fmt::Debug for PeerKey<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The table a router reads: borrowed (the generic, `no_std` form) or shared.
enum TableRef<'t, K: Key, const B: usize> {
    Borrowed(&'t Table<K, B>),
    Shared(Arc<Table<K, B>>),
}

impl<K: Key, const B: usize> Deref for TableRef<'_, K, B> {
    type Target = Table<K, B>;
    #[inline(always)]
    fn deref(&self) -> &Table<K, B> {
        match self {
            Self::Borrowed(t) => t,
            Self::Shared(t) => t,
        }
    }
}

#[derive(Debug)]
pub(crate) struct Slot<K, R: SharedRegion, D: Doorbell, C: Clock> {
    pub(crate) generation: u16,
    pub(crate) peer: Option<K>,
    pub(crate) channel: Option<Channel<R, D, C>>,
    /// Failed over: receive what is left, send nothing.
    pub(crate) draining: bool,
    /// Registered in the router's poll set (std).
    #[cfg_attr(
        not(all(feature = "std", target_os = "linux", not(loom))),
        allow(dead_code)
    )]
    pub(crate) polled: bool,
}

/// A flow's sender state.
#[derive(Debug)]
struct FlowTx<K> {
    /// `dst`'s table encoding, compared on lookup.
    words: [u64; 2],
    flow: u32,
    dst: K,
    next_seq: u64,
    policy: PeerState,
    /// The validated slot of `dst`'s channel, as of `valid`.
    slot: Option<u16>,
    /// The table generation and router epoch at which `slot` was looked up (`u64::MAX`:
    /// never; the generation only counts up from 0).
    valid_gen: u64,
    valid_epoch: u64,
    /// The network path may still carry undelivered messages of this flow (it took
    /// one, or the flow's channel changed): ask it before taking the channel again.
    net_pending: bool,
}

/// A resend the network path did not take: it goes before anything newer of its flow.
#[derive(Debug)]
struct Backlogged<K> {
    dst: K,
    header: FlowHeader,
    payload: Vec<u8>,
}

/// The one peer of a single-peer router, for [`Router::recv_network`].
#[derive(Clone, Copy, Debug)]
enum SolePeer<K> {
    None,
    One(K),
    Several,
}

/// The flows' index: open addressing with linear probing over `u32` slots (`0`:
/// empty, else the flow's index + 1), at most half full, so a lookup is one hash, one
/// or two slot loads and one key compare. Flows are never removed, so there are no
/// tombstones; the probe sequence visits every slot (step 1 over a power-of-two
/// table), and one empty slot always exists (load <= 1/2), so a probe ends.
#[derive(Debug, Default)]
struct FlowIndex {
    slots: Vec<u32>,
    len: usize,
}

impl FlowIndex {
    #[inline(always)]
    fn find(&self, hash: u64, eq: impl Fn(usize) -> bool) -> Option<usize> {
        let mask = self.slots.len().wrapping_sub(1);
        let mut i = hash as usize & mask;
        loop {
            let s = *self.slots.get(i)?;
            if s == 0 {
                return None;
            }
            let idx = s as usize - 1;
            if eq(idx) {
                return Some(idx);
            }
            i = (i + 1) & mask;
        }
    }

    fn insert(&mut self, hash: u64, idx: usize, rehash: impl Fn(usize) -> u64) {
        if (self.len + 1) * 2 > self.slots.len() {
            let cap = (self.slots.len() * 2).max(16);
            let old = core::mem::replace(&mut self.slots, alloc::vec![0; cap]);
            for s in old.into_iter().filter(|&s| s != 0) {
                self.place(rehash(s as usize - 1), s);
            }
        }
        self.place(hash, idx as u32 + 1);
        self.len += 1;
    }

    fn place(&mut self, hash: u64, s: u32) {
        let mask = self.slots.len() - 1;
        let mut i = hash as usize & mask;
        while self.slots[i] != 0 {
            i = (i + 1) & mask;
        }
        self.slots[i] = s;
    }
}

/// A keyed multiply-fold of a flow's key (`fold(a, b) = lo(a * b) ^ hi(a * b)`, as
/// foldhash). Flow ids are the sender's own choice, not a peer's; the seed only keeps
/// one router's layout unlike another's.
#[inline(always)]
fn flow_hash(seed: [u64; 2], words: [u64; 2], flow: u32) -> u64 {
    let a = words[0] ^ seed[0];
    let b = words[1] ^ seed[1] ^ (u64::from(flow) << 32 | u64::from(flow));
    let m = u128::from(a).wrapping_mul(u128::from(b | 1));
    (m as u64) ^ ((m >> 64) as u64)
}

/// Bytes of early channel messages per peer beyond which the router stops reading
/// that peer's channel (the gap in front of them is on the network: reading on would
/// only hold more). A quarter of the per-peer budget.
fn pause_mark(l: &ReassemblyLimits) -> usize {
    l.held_bytes_per_peer / 4
}

/// Routes flows to co-resident peers through channels and to the rest through the
/// network, moves flows to the network when a channel fails, and reassembles what
/// arrives, per (peer, flow).
///
/// Most users build one with [`Router::builder`] (std): a discovery source fills the
/// residency table and attaches channels, the router owns its table. The generic form
/// here (`Router::new` over a borrowed table) is for `no_std` and kernel users, whose
/// control path writes the table through its single `Writer`: it registers a channel
/// with [`attach`](Self::attach), inserts the returned handle under the peer's key,
/// and on departure removes the key and calls [`peer_left`](Self::peer_left).
///
/// # When to use a `Router`, and when a byte stream
///
/// A `Router` moves *messages* of numbered flows, any number of peers per router, with
/// the path chosen per message: a daemon's or a kernel module's message router. For one
/// ordered byte stream to one peer, as a socket would give it, use the byte streams of
/// `coresident_net::Stream`, built on the same channels.
pub struct Router<'t, K: Key, R: SharedRegion, D: Doorbell, C: Clock, N, P, const B: usize> {
    table: TableRef<'t, K, B>,
    pub(crate) slots: Vec<Slot<K, R, D, C>>,
    /// Bumped whenever a slot starts or stops being usable for sending: every flow's
    /// cached lookup is then stale.
    epoch: u64,
    /// Flow state, found through `flow_index`.
    flows: Vec<FlowTx<K>>,
    flow_index: FlowIndex,
    flow_seed: [u64; 2],
    policy: P,
    pub(crate) net: N,
    reasm: Reassembler<PeerKey<K>>,
    stats: RouterStats,
    /// Resends waiting for the network path, oldest first.
    backlog: VecDeque<Backlogged<K>>,
    /// One received message, copied out of the ring (reused: no allocation per
    /// message).
    pub(crate) rx_buf: Vec<u8>,
    /// One framed message for a blocking channel send.
    tx_buf: Vec<u8>,
    sole: SolePeer<K>,
    #[cfg(all(feature = "std", not(loom)))]
    pub(crate) ext: crate::builder::Extras<K, R, D, C>,
}

impl<K: Key + fmt::Debug, R: SharedRegion, D: Doorbell, C: Clock, N, P, const B: usize> fmt::Debug
    for Router<'_, K, R, D, C, N, P, B>
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field("slots", &self.slots.len())
            .field("flows", &self.flows.len())
            .field("backlog", &self.backlog.len())
            .field("stats", &self.stats)
            .finish()
    }
}

/// The router's side of [`Inbox`]: a network path's messages into reassembly.
struct RouterInbox<'a, K: Key, F> {
    reasm: &'a mut Reassembler<PeerKey<K>>,
    deliver: &'a mut F,
}

impl<K: Key + fmt::Debug, F: FnMut(&K, u32, &[u8])> Inbox<K> for RouterInbox<'_, K, F> {
    fn offer(&mut self, peer: &K, header: FlowHeader, payload: &[u8]) -> Offered {
        let deliver = &mut *self.deliver;
        match self.reasm.accept(
            &PeerKey(*peer),
            Path::Network,
            header,
            payload,
            |p, f, m| deliver(&p.0, f, m),
        ) {
            Ok(_) => Offered::Taken,
            Err(e) if e.is_retryable() => Offered::Later,
            Err(_) => Offered::Refused,
        }
    }

    fn expected(&self, peer: &K, flow: u32) -> u64 {
        self.reasm.expected(&PeerKey(*peer), flow)
    }

    fn for_each_flow(&self, peer: &K, f: &mut dyn FnMut(u32, u64)) {
        self.reasm.for_each_flow(&PeerKey(*peer), f);
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
    /// A router reading `table`, choosing with `policy`, falling back to `net`; each
    /// peer holds at most `max_held` early messages on the receiving side (the other
    /// budgets are [`ReassemblyLimits::default`]).
    pub fn new(table: &'t Table<K, B>, policy: P, net: N, max_held: usize) -> Self {
        let limits = ReassemblyLimits {
            held_per_peer: max_held,
            ..ReassemblyLimits::default()
        };
        Self::with_limits(table, policy, net, limits)
    }

    /// A router reading `table`, with explicit reassembly `limits`.
    pub fn with_limits(
        table: &'t Table<K, B>,
        policy: P,
        net: N,
        limits: ReassemblyLimits,
    ) -> Self {
        Self::make(TableRef::Borrowed(table), policy, net, limits)
    }

    /// A router sharing `table` (the control path keeps another `Arc` to write it).
    pub fn shared(table: Arc<Table<K, B>>, policy: P, net: N, limits: ReassemblyLimits) -> Self {
        Self::make(TableRef::Shared(table), policy, net, limits)
    }

    fn make(table: TableRef<'t, K, B>, policy: P, net: N, limits: ReassemblyLimits) -> Self {
        // A per-router secret for the flow hash, from the table's address and a
        // counter: flow ids are the sender's own, so this only spreads them.
        let addr = &*table as *const Table<K, B> as usize as u64;
        Self {
            table,
            slots: Vec::new(),
            epoch: 0,
            flows: Vec::new(),
            flow_index: FlowIndex::default(),
            flow_seed: [
                addr ^ 0x9E37_79B9_7F4A_7C15,
                addr.rotate_left(29) ^ 0xD1B5_4A32_D192_ED03,
            ],
            policy,
            net,
            reasm: Reassembler::new(limits),
            stats: RouterStats::default(),
            backlog: VecDeque::new(),
            rx_buf: Vec::new(),
            tx_buf: Vec::new(),
            sole: SolePeer::None,
            #[cfg(all(feature = "std", not(loom)))]
            ext: crate::builder::Extras::default(),
        }
    }

    /// The counters.
    pub fn stats(&self) -> &RouterStats {
        &self.stats
    }

    /// The residency table.
    pub fn table(&self) -> &Table<K, B> {
        &self.table
    }

    /// The network path (to receive from it yourself, say).
    pub fn network(&mut self) -> &mut N {
        &mut self.net
    }

    /// The network path, to look at (its counters, say).
    pub fn network_ref(&self) -> &N {
        &self.net
    }

    /// The policy.
    pub fn policy(&mut self) -> &mut P {
        &mut self.policy
    }

    /// The channel behind `handle`, if it is current.
    pub fn channel(&mut self, handle: Handle) -> Option<&mut Channel<R, D, C>> {
        let s = self.slots.get_mut(handle.slot() as usize)?;
        if s.generation != handle.generation() {
            return None;
        }
        s.channel.as_mut()
    }

    /// The current handle of the channel to `peer`, if one is attached and not failed
    /// over.
    pub fn handle_of(&self, peer: &K) -> Option<Handle> {
        self.slots.iter().enumerate().find_map(|(i, s)| {
            (s.peer.as_ref() == Some(peer) && s.channel.is_some() && !s.draining)
                .then(|| Handle::new(i as u16, s.generation))
        })
    }

    /// Registers a connected channel to `peer`; returns the handle the control path
    /// inserts into the residency table. Messages received on it belong to `peer`'s
    /// flows: `peer` must be the key the peer's network messages come from too.
    ///
    /// # Errors
    ///
    /// [`RouteError::NoSlot`].
    pub fn attach(
        &mut self,
        peer: K,
        channel: Channel<R, D, C>,
    ) -> Result<Handle, RouteError<N::Error>> {
        let free = self.slots.iter().position(|s| s.channel.is_none());
        let i = match free {
            Some(i) => i,
            None if self.slots.len() < usize::from(u16::MAX) => {
                self.slots.push(Slot {
                    generation: 0,
                    peer: None,
                    channel: None,
                    draining: false,
                    polled: false,
                });
                self.slots.len() - 1
            }
            None => return Err(RouteError::NoSlot),
        };
        self.sole = match self.sole {
            SolePeer::None => SolePeer::One(peer),
            SolePeer::One(p) if p == peer => SolePeer::One(p),
            _ => SolePeer::Several,
        };
        let s = &mut self.slots[i];
        s.generation = s.generation.wrapping_add(1);
        s.peer = Some(peer);
        s.channel = Some(channel);
        s.draining = false;
        s.polled = false;
        self.epoch += 1;
        tracing::debug!(peer = ?peer, slot = i, "router: channel attached");
        Ok(Handle::new(i as u16, s.generation))
    }

    // ------------------------------------------------------------------ sending

    /// Routes one message of `flow` to `dst` without blocking; returns the path it
    /// took.
    ///
    /// # Errors
    ///
    /// The message was **not** taken: [`RouteError::Network`] (the network path refused
    /// it, or a resend of this flow waits before it), [`RouteError::Full`] (the policy
    /// waits rather than spills), [`RouteError::TooLarge`].
    #[inline]
    pub fn send(
        &mut self,
        dst: &K,
        flow: u32,
        payload: &[u8],
    ) -> Result<Path, RouteError<N::Error>> {
        self.route::<false>(dst, flow, payload, None)
    }

    /// Routes one message, waiting up to `timeout` (`None`: no bound) rather than
    /// failing: for ring space when the policy says [`Overflow::Wait`] (back-pressure
    /// from the peer's consumption: a blocked sender sleeps on the doorbell), and for
    /// the network path's room ([`NetworkPath::send_blocking`]).
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send), and [`RouteError::TimedOut`]; the message was not taken.
    pub fn send_blocking(
        &mut self,
        dst: &K,
        flow: u32,
        payload: &[u8],
        timeout: Option<Duration>,
    ) -> Result<Path, RouteError<N::Error>> {
        self.route::<true>(dst, flow, payload, timeout)
    }

    #[inline(always)]
    fn route<const BLOCK: bool>(
        &mut self,
        dst: &K,
        flow: u32,
        payload: &[u8],
        timeout: Option<Duration>,
    ) -> Result<Path, RouteError<N::Error>> {
        if !self.backlog.is_empty() {
            self.flush_backlog_for(Some((dst, flow)))?;
        }
        let fi = self.flow_index(dst, flow);
        // The miss path, written out over the router's fields (one bounds check, the
        // flow's cached lookup, the policy, the network path): issue 15's +5 ns.
        let Self {
            flows,
            table,
            slots,
            epoch,
            policy,
            net,
            stats,
            ..
        } = self;
        let f = &mut flows[fi];
        let gen = table.generation();
        let slot = if f.valid_gen == gen && f.valid_epoch == *epoch {
            f.slot
        } else {
            revalidate(table, slots, f, gen, *epoch)
        };
        if let Some(i) = slot {
            return self.route_hit::<BLOCK>(fi, usize::from(i), dst, flow, payload, timeout);
        }
        stats.misses += 1;
        let d = Decision {
            len: payload.len(),
            resident: false,
            max_len: 0,
            peer_load: 0,
        };
        let _ = policy.choose(&mut f.policy, &d);
        let header = FlowHeader {
            flow,
            seq: f.next_seq,
        };
        let r = if BLOCK {
            net.send_blocking(dst, header, payload, timeout)
        } else {
            net.send(dst, header, payload)
        };
        match r {
            Ok(()) => {
                f.next_seq += 1;
                f.net_pending = true;
                stats.via_network += 1;
                Ok(Path::Network)
            }
            Err(e) => Err(self.network_refused(dst, header, e)),
        }
    }

    /// The resident case of [`route`](Self::route): flow `fi`, usable slot `i`.
    #[inline(never)]
    fn route_hit<const BLOCK: bool>(
        &mut self,
        fi: usize,
        i: usize,
        dst: &K,
        flow: u32,
        payload: &[u8],
        timeout: Option<Duration>,
    ) -> Result<Path, RouteError<N::Error>> {
        if payload.len() > usize::MAX - FLOW_HEADER_LEN {
            return Err(RouteError::TooLarge);
        }
        self.stats.hits += 1;
        let Some(c) = self.slots[i].channel.as_mut() else {
            return self.send_network::<BLOCK>(fi, dst, payload, timeout);
        };
        let d = Decision {
            len: payload.len(),
            resident: true,
            max_len: c.max_message().saturating_sub(FLOW_HEADER_LEN),
            peer_load: c.load(),
        };
        let f = &mut self.flows[fi];
        let channel = self.policy.choose(&mut f.policy, &d) == Path::Channel;
        if channel && f.net_pending {
            // In order: a message by the channel must not overtake messages of its flow
            // still undelivered on the network path (see `NetworkPath::in_flight`).
            if self.net.in_flight(dst, flow) {
                if !BLOCK {
                    self.stats.switching += 1;
                    return Err(RouteError::Switching);
                }
                self.wait_delivered(dst, flow, timeout)?;
            }
            self.flows[fi].net_pending = false;
        }
        let Some(c) = self.slots[i].channel.as_mut() else {
            return self.send_network::<BLOCK>(fi, dst, payload, timeout);
        };
        let f = &mut self.flows[fi];
        if channel {
            let header = FlowHeader {
                flow,
                seq: f.next_seq,
            };
            match write_frame(c, header, payload) {
                Ok(()) => {
                    f.next_seq += 1;
                    self.stats.via_channel += 1;
                    return Ok(Path::Channel);
                }
                Err(ChannelError::Full) => match self.policy.overflow() {
                    Overflow::Spill => {
                        self.stats.spilled += 1;
                        tracing::trace!(peer = ?dst, flow, seq = header.seq, "router: ring full, spilled to the network");
                    }
                    Overflow::Wait if BLOCK => {
                        return self.wait_channel(i, fi, header, payload, timeout)
                    }
                    Overflow::Wait => {
                        self.stats.full += 1;
                        return Err(RouteError::Full);
                    }
                },
                Err(e) => {
                    tracing::info!(peer = ?dst, flow, error = %e, "router: channel failed on send");
                    self.fail_over(i)?;
                }
            }
        }
        self.send_network::<BLOCK>(fi, dst, payload, timeout)
    }

    /// Sends on the network path with the flow's next sequence number, which is used up
    /// only if the path took the message.
    #[inline(always)]
    fn send_network<const BLOCK: bool>(
        &mut self,
        fi: usize,
        dst: &K,
        payload: &[u8],
        timeout: Option<Duration>,
    ) -> Result<Path, RouteError<N::Error>> {
        let f = &mut self.flows[fi];
        let header = FlowHeader {
            flow: f.flow,
            seq: f.next_seq,
        };
        let r = if BLOCK {
            self.net.send_blocking(dst, header, payload, timeout)
        } else {
            self.net.send(dst, header, payload)
        };
        match r {
            Ok(()) => {
                f.next_seq += 1;
                f.net_pending = true;
                self.stats.via_network += 1;
                Ok(Path::Network)
            }
            Err(e) => Err(self.network_refused(dst, header, e)),
        }
    }

    #[cold]
    fn network_refused(&mut self, dst: &K, h: FlowHeader, e: N::Error) -> RouteError<N::Error> {
        self.stats.network_refused += 1;
        tracing::debug!(peer = ?dst, flow = h.flow, seq = h.seq, error = %e, "router: the network path did not take a message");
        RouteError::Network(e)
    }

    /// Waits until the network path has delivered what it carried of `flow` to `dst`.
    #[cold]
    fn wait_delivered(
        &mut self,
        dst: &K,
        flow: u32,
        timeout: Option<Duration>,
    ) -> Result<(), RouteError<N::Error>> {
        let mut left = timeout;
        let step = Duration::from_micros(100);
        while self.net.in_flight(dst, flow) {
            if left.is_some_and(|l| l.is_zero()) {
                return Err(RouteError::TimedOut);
            }
            self.net.poll().map_err(RouteError::Network)?;
            if !self.net.in_flight(dst, flow) {
                break;
            }
            self.net.wait(step);
            left = left.map(|l| l.saturating_sub(step));
        }
        Ok(())
    }

    /// The ring is full and the policy waits: a blocking channel send.
    #[cold]
    fn wait_channel(
        &mut self,
        i: usize,
        fi: usize,
        header: FlowHeader,
        payload: &[u8],
        timeout: Option<Duration>,
    ) -> Result<Path, RouteError<N::Error>> {
        self.tx_buf.clear();
        self.tx_buf.extend_from_slice(&header.encode());
        self.tx_buf.extend_from_slice(payload);
        let dst = self.flows[fi].dst;
        let Some(c) = self.slots[i].channel.as_mut() else {
            return self.send_network::<true>(fi, &dst, payload, timeout);
        };
        match c.send_blocking(&self.tx_buf, timeout) {
            Ok(()) => {
                self.flows[fi].next_seq += 1;
                self.stats.via_channel += 1;
                Ok(Path::Channel)
            }
            Err(ChannelError::TimedOut) => {
                self.stats.full += 1;
                Err(RouteError::TimedOut)
            }
            Err(e) => {
                tracing::info!(peer = ?dst, flow = header.flow, error = %e, "router: channel failed while waiting for space");
                self.fail_over(i)?;
                self.send_network::<true>(fi, &dst, payload, timeout)
            }
        }
    }

    /// The index of `(dst, flow)`'s sender state, made on first use.
    #[inline(always)]
    fn flow_index(&mut self, dst: &K, flow: u32) -> usize {
        let words = dst.encode();
        let hash = flow_hash(self.flow_seed, words, flow);
        let flows = &self.flows;
        match self
            .flow_index
            .find(hash, |i| flows[i].flow == flow && flows[i].words == words)
        {
            Some(i) => i,
            None => self.new_flow(dst, flow, hash),
        }
    }

    #[cold]
    #[inline(never)]
    fn new_flow(&mut self, dst: &K, flow: u32, hash: u64) -> usize {
        let i = self.flows.len();
        self.flows.push(FlowTx {
            words: dst.encode(),
            flow,
            dst: *dst,
            next_seq: 0,
            policy: PeerState {
                path: Path::Channel,
                streak: 0,
            },
            slot: None,
            valid_gen: u64::MAX,
            valid_epoch: u64::MAX,
            net_pending: false,
        });
        let (seed, flows) = (self.flow_seed, &self.flows);
        self.flow_index
            .insert(hash, i, |j| flow_hash(seed, flows[j].words, flows[j].flow));
        i
    }

    /// Sends backlogged resends, oldest first, until the network path refuses one. With
    /// `for_flow`, fails if one of that flow's stays behind.
    #[cold]
    fn flush_backlog_for(
        &mut self,
        for_flow: Option<(&K, u32)>,
    ) -> Result<(), RouteError<N::Error>> {
        let mut failed = None;
        while let Some(b) = self.backlog.front() {
            match self.net.resend(&b.dst, b.header, &b.payload) {
                Ok(()) => {
                    self.backlog.pop_front();
                    self.stats.resent += 1;
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let Some(e) = failed else {
            return Ok(());
        };
        match for_flow {
            Some((dst, flow))
                if !self
                    .backlog
                    .iter()
                    .any(|b| b.header.flow == flow && b.dst == *dst) =>
            {
                Ok(())
            }
            _ => {
                self.stats.network_refused += 1;
                Err(RouteError::Network(e))
            }
        }
    }

    /// The control path saw `handle`'s peer leave this host (migration, destruction):
    /// its flows move to the network, unconsumed messages first.
    ///
    /// # Errors
    ///
    /// The network path's, during the resend: what it did not take waits in the
    /// backlog and goes out, in order, at the next [`poll`](Self::poll) or send.
    pub fn peer_left(&mut self, handle: Handle) -> Result<(), RouteError<N::Error>> {
        match self.slots.get(handle.slot() as usize) {
            Some(s) if s.generation == handle.generation() && s.channel.is_some() => {
                self.fail_over(handle.slot() as usize)
            }
            _ => Ok(()),
        }
    }

    /// This side lost its mapping of `handle`'s region without warning (it crashed and
    /// restarted, say): the channel is dropped at once, without receiving or resending
    /// anything, because its memory is gone. Nothing is lost: the peer drains what this
    /// side published and resends what this side never read, when it fails over.
    ///
    /// A side that knows it is about to lose its mappings (this VM is about to migrate)
    /// calls [`peer_left`](Self::peer_left) and [`recv_channels`](Self::recv_channels)
    /// first: then its own unconsumed messages go out over the network too.
    pub fn abandon(&mut self, handle: Handle) {
        if let Some(s) = self.slots.get_mut(handle.slot() as usize) {
            if s.generation == handle.generation() && s.channel.is_some() {
                s.channel = None;
                s.peer = None;
                s.draining = false;
                self.stats.fallbacks += 1;
                self.epoch += 1;
            }
        }
    }

    /// Gives channel `i` up: everything its peer did not consume goes out on the network
    /// path, oldest first; the channel keeps only receiving what the peer published.
    fn fail_over(&mut self, i: usize) -> Result<(), RouteError<N::Error>> {
        let s = &mut self.slots[i];
        if s.draining {
            return Ok(());
        }
        s.draining = true;
        self.epoch += 1;
        self.stats.fallbacks += 1;
        let (Some(c), Some(peer)) = (s.channel.as_mut(), s.peer) else {
            return Ok(());
        };
        c.peer_left();
        // Copy the unconsumed frames out first (the walk borrows the channel), then send.
        let mut frames: Vec<(FlowHeader, Vec<u8>)> = Vec::new();
        let mut unreadable = 0;
        let _ = c.unconsumed(|v| {
            let mut h = [0u8; FLOW_HEADER_LEN];
            match (v.read_at(0, &mut h) == FLOW_HEADER_LEN)
                .then(|| FlowHeader::decode(&h))
                .flatten()
            {
                Some(header) => {
                    let mut p = alloc::vec![0u8; v.len() - FLOW_HEADER_LEN];
                    let n = v.read_at(FLOW_HEADER_LEN, &mut p);
                    p.truncate(n);
                    frames.push((header, p));
                }
                None => unreadable += 1,
            }
        });
        if unreadable > 0 {
            self.stats.unreadable += unreadable;
            tracing::warn!(peer = ?peer, frames = unreadable, "router: unreadable frames in a failed ring, dropped");
        }
        tracing::info!(peer = ?peer, slot = i, unconsumed = frames.len(), "router: channel failed over to the network");
        let mut frames = frames.into_iter();
        if self.backlog.is_empty() {
            for (h, p) in frames.by_ref() {
                match self.net.resend(&peer, h, &p) {
                    Ok(()) => self.stats.resent += 1,
                    Err(e) => {
                        let n = self.backlog_rest(peer, core::iter::once((h, p)).chain(frames));
                        tracing::warn!(peer = ?peer, waiting = n, error = %e, "router: resend refused by the network path, backlogged");
                        self.stats.network_refused += 1;
                        return Err(RouteError::Network(e));
                    }
                }
            }
            Ok(())
        } else {
            // Behind an older backlog: keep the order.
            self.backlog_rest(peer, frames);
            self.flush_backlog_for(None)
        }
    }

    fn backlog_rest(&mut self, dst: K, rest: impl Iterator<Item = (FlowHeader, Vec<u8>)>) -> usize {
        let before = self.backlog.len();
        self.backlog
            .extend(rest.map(|(header, payload)| Backlogged {
                dst,
                header,
                payload,
            }));
        let n = self.backlog.len() - before;
        self.stats.backlogged += n as u64;
        n
    }

    /// Resends waiting in the backlog (the network path refused them; they go before
    /// their flows' newer messages).
    pub fn backlog(&self) -> usize {
        self.backlog.len()
    }

    /// Periodic duty: the network path's own (reconnects, acknowledgements), the
    /// discovery source's changes (a built router), the backlog, overdue batches,
    /// every channel's peer; fails over the channels whose peer is gone or whose memory
    /// is corrupted. A failed-over channel is closed, and its slot freed, by the next
    /// receive that finds it drained ([`recv`](Self::recv),
    /// [`recv_channels_from`](Self::recv_channels_from)): a router that only sends
    /// calls one of them now and then all the same.
    ///
    /// # Errors
    ///
    /// The network path's.
    pub fn poll(&mut self) -> Result<(), RouteError<N::Error>> {
        self.net.poll().map_err(RouteError::Network)?;
        #[cfg(all(feature = "std", not(loom)))]
        self.poll_discovery()?;
        if !self.backlog.is_empty() {
            let _ = self.flush_backlog_for(None);
        }
        for i in 0..self.slots.len() {
            let draining = self.slots[i].draining;
            let failed = match self.slots[i].channel.as_mut() {
                Some(c) if !draining => {
                    c.poll().is_err()
                        || c.state() != ChannelState::Connected
                        || !c.doorbell().peer_alive()
                }
                _ => false,
            };
            if failed {
                // A refused resend is backlogged; the next poll sends it.
                if let Err(RouteError::Network(e)) = self.fail_over(i) {
                    tracing::debug!(error = %e, "router: resend backlogged at poll");
                }
            }
        }
        Ok(())
    }

    // ---------------------------------------------------------------- receiving

    /// Receives everything waiting in every channel and from the network path, and
    /// hands each message, in flow order, to `deliver(peer, flow, payload)`; closes
    /// drained channels of departed peers; acknowledges deliveries to the network path.
    /// Returns how many messages were received (duplicates and held ones included).
    ///
    /// # Errors
    ///
    /// The network path's.
    pub fn recv(
        &mut self,
        mut deliver: impl FnMut(&K, u32, &[u8]),
    ) -> Result<usize, RouteError<N::Error>> {
        let mut n = self.recv_channels_from(&mut deliver)?;
        let mut inbox = RouterInbox {
            reasm: &mut self.reasm,
            deliver: &mut deliver,
        };
        let r = self.net.recv(&mut inbox);
        n += r.map_err(RouteError::Network)?;
        self.report_progress();
        Ok(n)
    }

    /// Hands reassembly progress (acknowledgements) and evictions (resend requests) to
    /// the network path.
    fn report_progress(&mut self) {
        self.stats.rx = *self.reasm.stats();
        if self.net.wants_progress() {
            let net = &mut self.net;
            let mut any = false;
            self.reasm.take_progress(|p, f, next| {
                any = true;
                net.delivered(&p.0, f, next);
            });
            self.reasm.take_lost(|p, f, seq| {
                any = true;
                net.resend_from(&p.0, f, seq);
            });
            if any {
                net.flush_progress();
            }
        } else if self.reasm.has_progress() {
            self.reasm.take_progress(|_, _, _| {});
            self.reasm.take_lost(|_, _, _| {});
        }
    }

    /// Receives everything waiting in every channel and hands each message, in flow
    /// order, to `deliver(peer, flow, payload)`; closes drained channels of departed
    /// peers. Returns how many messages were received (duplicates and held ones
    /// included). A peer's channel is left unread while too many of its messages wait
    /// for a gap that only the network can fill (back-pressure on the ring).
    ///
    /// # Errors
    ///
    /// The network path's, during a resend of a failed channel.
    pub fn recv_channels_from(
        &mut self,
        mut deliver: impl FnMut(&K, u32, &[u8]),
    ) -> Result<usize, RouteError<N::Error>> {
        let mut total = 0;
        let mark = pause_mark(self.reasm.limits());
        for i in 0..self.slots.len() {
            let Some(peer) = self.slots[i].peer else {
                continue;
            };
            let key = PeerKey(peer);
            // Bounded: a live peer that keeps publishing cannot hold us here; what it
            // publishes after this pass waits for the next call.
            for _ in 0..1024 {
                if self.reasm.channel_held_bytes(&key) > mark {
                    self.stats.channel_paused += 1;
                    break;
                }
                let Some(c) = self.slots[i].channel.as_mut() else {
                    break;
                };
                let reasm = &mut self.reasm;
                let buf = &mut self.rx_buf;
                let (mut unreadable, mut refused) = (0u64, 0u64);
                // Each message reaches `deliver` inside the batch, before the batch's
                // space is released to the peer: a receiver that dies mid-batch has
                // released nothing it did not hand over, so the peer resends the rest
                // (and a restarted receiver drops what it already had: `resume_flow`).
                let r = c.recv_batch(64, |v| {
                    let mut h = [0u8; FLOW_HEADER_LEN];
                    let header = (v.read_at(0, &mut h) == FLOW_HEADER_LEN)
                        .then(|| FlowHeader::decode(&h))
                        .flatten();
                    let Some(header) = header else {
                        unreadable += 1;
                        return;
                    };
                    buf.resize(v.len() - FLOW_HEADER_LEN, 0);
                    let n = v.read_at(FLOW_HEADER_LEN, buf);
                    match reasm.accept(&key, Path::Channel, header, &buf[..n], |p, f, m| {
                        deliver(&p.0, f, m)
                    }) {
                        Ok(Delivery::Delivered { .. } | Delivery::Held | Delivery::Duplicate) => {}
                        Err(_) => refused += 1,
                    }
                });
                if unreadable + refused > 0 {
                    self.stats.unreadable += unreadable;
                    self.stats.channel_refused += refused;
                    tracing::warn!(peer = ?peer, unreadable, refused, "router: channel messages dropped");
                }
                match r {
                    Ok(n) => total += n,
                    Err(ChannelError::Empty) if !self.slots[i].draining => break,
                    Err(_) => {
                        // Failed over and drained, gone, or corrupted: fail over (if not
                        // yet) and close, so a peer still writing learns it at its next
                        // publish and fails over too, resending what we never read.
                        let r = self.fail_over(i);
                        self.remove(i);
                        r?;
                        break;
                    }
                }
            }
        }
        self.report_progress();
        Ok(total)
    }

    /// As [`recv_channels_from`](Self::recv_channels_from), without the peer: for a
    /// router with channels to one peer. With several, messages of different peers'
    /// flows of the same id reach `deliver` interleaved (each in order within its own
    /// peer's flow): use `recv_channels_from` to tell them apart.
    ///
    /// # Errors
    ///
    /// As `recv_channels_from`.
    pub fn recv_channels(
        &mut self,
        mut deliver: impl FnMut(u32, &[u8]),
    ) -> Result<usize, RouteError<N::Error>> {
        self.recv_channels_from(|_, f, m| deliver(f, m))
    }

    /// Takes one message that arrived on a network path the caller drives itself, from
    /// `peer` (the sender's residency key, as its channel is attached under), and
    /// delivers what is now in order.
    ///
    /// # Errors
    ///
    /// [`RouteError::Reassembly`]: the message was not taken;
    /// [`ReassemblyError::is_retryable`] says whether it may be offered again.
    pub fn recv_network_from(
        &mut self,
        peer: &K,
        header: FlowHeader,
        payload: &[u8],
        mut deliver: impl FnMut(&K, u32, &[u8]),
    ) -> Result<Delivery, RouteError<N::Error>> {
        let r = self
            .reasm
            .accept(
                &PeerKey(*peer),
                Path::Network,
                header,
                payload,
                |p, f, m| deliver(&p.0, f, m),
            )
            .map_err(RouteError::Reassembly);
        self.report_progress();
        r
    }

    /// As [`recv_network_from`](Self::recv_network_from), for a router whose channels
    /// all go to one peer: the message is that peer's.
    ///
    /// # Errors
    ///
    /// [`RouteError::UnknownSource`] when the router has channels to several peers or
    /// to none (the sender is unknown: use `recv_network_from`); as
    /// `recv_network_from` otherwise.
    pub fn recv_network(
        &mut self,
        header: FlowHeader,
        payload: &[u8],
        mut deliver: impl FnMut(u32, &[u8]),
    ) -> Result<(), RouteError<N::Error>> {
        let SolePeer::One(peer) = self.sole else {
            self.stats.unknown_source += 1;
            tracing::warn!(
                flow = header.flow,
                seq = header.seq,
                "router: network message of unknown source, dropped"
            );
            return Err(RouteError::UnknownSource);
        };
        self.recv_network_from(&peer, header, payload, |_, f, m| deliver(f, m))
            .map(|_| ())
    }

    /// Reassembles one message received outside a batch from channel `i`.
    #[cfg(all(feature = "std", target_os = "linux", not(loom)))]
    pub(crate) fn accept_channel_message(
        &mut self,
        i: usize,
        frame: &[u8],
        deliver: &mut impl FnMut(&K, u32, &[u8]),
    ) {
        let Some(peer) = self.slots[i].peer else {
            return;
        };
        match FlowHeader::decode(frame) {
            Some(h) => {
                if self
                    .reasm
                    .accept(
                        &PeerKey(peer),
                        Path::Channel,
                        h,
                        &frame[FLOW_HEADER_LEN..],
                        |p, f, m| deliver(&p.0, f, m),
                    )
                    .is_err()
                {
                    self.stats.channel_refused += 1;
                    tracing::warn!(peer = ?peer, flow = h.flow, seq = h.seq, "router: channel message refused");
                }
            }
            None => {
                self.stats.unreadable += 1;
                tracing::warn!(peer = ?peer, "router: unreadable channel frame dropped");
            }
        }
    }

    /// Closes and forgets channel `i`.
    fn remove(&mut self, i: usize) {
        let s = &mut self.slots[i];
        s.peer = None;
        s.draining = false;
        if let Some(c) = s.channel.take() {
            drop(c.close());
        }
        self.epoch += 1;
    }

    /// Tells the receiving side that `flow` of `peer` continues at `next_seq`: what a
    /// restarted receiver that recorded its deliveries durably calls before receiving
    /// again, so resends of messages it already handed over are dropped as duplicates.
    /// Held messages from `next_seq` on are delivered at once; returns how many.
    ///
    /// # Errors
    ///
    /// [`RouteError::Reassembly`] when the flow cannot be tracked (limits).
    pub fn resume_flow(
        &mut self,
        peer: &K,
        flow: u32,
        next_seq: u64,
        mut deliver: impl FnMut(&K, u32, &[u8]),
    ) -> Result<usize, RouteError<N::Error>> {
        let r = self
            .reasm
            .resume(&PeerKey(*peer), flow, next_seq, |p, f, m| {
                deliver(&p.0, f, m)
            })
            .map_err(RouteError::Reassembly);
        self.report_progress();
        r
    }

    /// Gives up the gap in front of `flow` of `peer` (a datagram path lost a message):
    /// the flow continues at its first held message. Returns how many were delivered.
    pub fn skip_gap(
        &mut self,
        peer: &K,
        flow: u32,
        mut deliver: impl FnMut(&K, u32, &[u8]),
    ) -> usize {
        let n = self
            .reasm
            .skip_gap(&PeerKey(*peer), flow, |p, f, m| deliver(&p.0, f, m));
        self.report_progress();
        n
    }

    /// Forgets `peer`'s receiving state (a peer gone for good, to make room).
    pub fn forget_peer(&mut self, peer: &K) {
        self.reasm.forget_peer(&PeerKey(*peer));
    }

    /// The next sequence number `flow` of `peer` is expected to deliver.
    pub fn expected(&self, peer: &K, flow: u32) -> u64 {
        self.reasm.expected(&PeerKey(*peer), flow)
    }

    /// The next sequence number this side will give `flow` to `dst`.
    pub fn next_seq(&self, dst: &K, flow: u32) -> u64 {
        self.flows
            .iter()
            .find(|f| f.flow == flow && f.words == dst.encode())
            .map_or(0, |f| f.next_seq)
    }

    /// Bytes of early messages held on the receiving side now, all peers together
    /// (payloads plus [`HELD_OVERHEAD`](crate::HELD_OVERHEAD) each).
    pub fn held_bytes(&self) -> usize {
        self.reasm.held_bytes()
    }

    /// Early messages held on the receiving side now, all peers together.
    pub fn held(&self) -> usize {
        self.reasm.held()
    }

    /// Flows of `peer` the receiving side tracks now.
    pub fn flows_of(&self, peer: &K) -> usize {
        self.reasm.flows(&PeerKey(*peer))
    }

    /// Peers the receiving side tracks now.
    pub fn peers(&self) -> usize {
        self.reasm.peers()
    }

    /// Duplicates the reassembler dropped (resends of messages the peer had read).
    pub fn duplicates(&self) -> u64 {
        self.reasm.duplicates()
    }

    /// Publishes every channel's pending batch.
    pub fn flush(&mut self) {
        for s in &mut self.slots {
            if let Some(c) = s.channel.as_mut() {
                let _ = c.flush();
            }
        }
    }
}

/// Looks flow `f`'s destination up again (the table or the slots changed since its
/// cached answer): its usable slot, if any, cached at `(gen, epoch)`.
#[inline(never)]
fn revalidate<K: Key, R: SharedRegion, D: Doorbell, C: Clock, const B: usize>(
    table: &Table<K, B>,
    slots: &[Slot<K, R, D, C>],
    f: &mut FlowTx<K>,
    gen: u64,
    epoch: u64,
) -> Option<u16> {
    let slot = table
        .get(&f.dst)
        .and_then(|h| match slots.get(h.slot() as usize) {
            Some(s) if s.generation == h.generation() && !s.draining && s.channel.is_some() => {
                Some(h.slot())
            }
            _ => None,
        });
    f.slot = slot;
    f.valid_gen = gen;
    f.valid_epoch = epoch;
    // A fail-over may have resent this flow's messages on the network.
    f.net_pending = true;
    slot
}

/// Writes `header` and `payload` as one message, in place.
#[inline(always)]
fn write_frame<R: SharedRegion, D: Doorbell, C: Clock>(
    c: &mut Channel<R, D, C>,
    header: FlowHeader,
    payload: &[u8],
) -> Result<(), ChannelError> {
    let h = header.encode();
    c.send_in_place(FLOW_HEADER_LEN + payload.len(), |r| {
        // The reservation holds exactly this many bytes: these writes cannot fail.
        let ok = r.write_at(0, &h).is_ok() && r.write_at(FLOW_HEADER_LEN, payload).is_ok();
        if ok {
            FLOW_HEADER_LEN + payload.len()
        } else {
            0
        }
    })
}
