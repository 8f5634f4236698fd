//! The residency-aware router: for each outgoing message, look the destination up,
//! ask the policy, take the channel or the network path; and the lifecycle that moves a
//! peer's flows to the network when its channel fails.
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
//! what the peer published until its ring is empty.

use crate::flow::{FlowHeader, Reassembler, ReassemblyError, FLOW_HEADER_LEN};
use crate::{Channel, ChannelError, ChannelState, Clock, Doorbell, SharedRegion};
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use coresident_lookup::{Handle, Key, Table};

/// Which way a message goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// Through the shared-memory channel.
    Channel,
    /// Through the network.
    Network,
}

/// What the policy is told about one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Payload length.
    pub len: usize,
    /// Whether the destination is co-resident with a connected channel.
    pub resident: bool,
    /// The channel's largest payload (0 when not resident).
    pub max_len: usize,
    /// How full the channel's sending ring looked, per mille: high when the peer is
    /// starved of CPU.
    pub peer_load: u32,
}

/// Per-flow state of the policy's hysteresis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerState {
    /// The path the flow is on.
    pub path: Path,
    /// Consecutive decisions that preferred the other path.
    pub streak: u32,
}

/// Chooses the path of each message (the study's lesson 6: switching must pay).
pub trait Policy {
    /// The path for a message described by `d`, given the flow's `state`, which the
    /// policy updates.
    fn choose(&mut self, state: &mut PeerState, d: &Decision) -> Path;
}

/// Threshold policy with hysteresis.
///
/// A message takes the channel when its destination is resident, it fits, it is at
/// least `min_len` bytes, and the peer's ring is at most `max_load` per mille full.
/// Not resident or too large forces the network at once; the soft reasons (size below
/// `min_len`, load) move a flow only after `hysteresis` consecutive decisions agree,
/// so a flow does not flap between paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThresholdPolicy {
    /// Smaller messages prefer the network (0: never).
    pub min_len: usize,
    /// Fuller rings prefer the network (1000: never).
    pub max_load: u32,
    /// Consecutive agreeing decisions before a soft switch.
    pub hysteresis: u32,
}

impl Default for ThresholdPolicy {
    fn default() -> Self {
        Self {
            min_len: 0,
            max_load: 900,
            hysteresis: 8,
        }
    }
}

impl Policy for ThresholdPolicy {
    fn choose(&mut self, s: &mut PeerState, d: &Decision) -> Path {
        if !d.resident || d.len > d.max_len {
            s.streak = 0;
            s.path = Path::Network;
            return Path::Network;
        }
        let prefer = if d.len >= self.min_len && d.peer_load <= self.max_load {
            Path::Channel
        } else {
            Path::Network
        };
        if prefer == s.path {
            s.streak = 0;
        } else {
            s.streak += 1;
            if s.streak >= self.hysteresis {
                s.path = prefer;
                s.streak = 0;
            }
        }
        s.path
    }
}

/// The network path, supplied by the user: a UDP or TCP socket in a daemon, the
/// netfilter continuation in a kernel module.
pub trait NetworkPath<K> {
    /// Its failures.
    type Error: fmt::Debug + fmt::Display;

    /// Sends one message of a flow to `peer`. The header must reach the peer's
    /// [`Reassembler`] with the payload.
    ///
    /// # Errors
    ///
    /// The path's own.
    fn send(&mut self, peer: &K, header: FlowHeader, payload: &[u8]) -> Result<(), Self::Error>;
}

/// Why a message was not routed.
#[derive(Debug)]
#[non_exhaustive]
pub enum RouteError<E> {
    /// The network path failed.
    Network(E),
    /// The message exceeds what the network path takes (`usize::MAX - 16`).
    TooLarge,
    /// Received data could not be reassembled.
    Reassembly(ReassemblyError),
    /// No free channel slot (65,536 in use).
    NoSlot,
}

impl<E: fmt::Display> fmt::Display for RouteError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Network(e) => write!(f, "network path: {e}"),
            Self::TooLarge => f.write_str("message too large"),
            Self::Reassembly(e) => write!(f, "{e}"),
            Self::NoSlot => f.write_str("no free channel slot"),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> core::error::Error for RouteError<E> {}

/// The router's counters.
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
    /// Channels given up.
    pub fallbacks: u64,
    /// Unconsumed messages sent again over the network.
    pub resent: u64,
    /// Frames in a failed ring without a readable flow header (a peer rewrote them).
    pub unreadable: u64,
}

#[derive(Debug)]
struct Slot<K, R: SharedRegion, D: Doorbell, C: Clock> {
    generation: u16,
    peer: Option<K>,
    channel: Option<Channel<R, D, C>>,
    /// Failed over: receive what is left, send nothing.
    draining: bool,
}

#[derive(Debug)]
struct FlowTx {
    next_seq: u64,
    policy: PeerState,
}

/// Routes flows to co-resident peers through channels and to the rest through the
/// network, and moves flows to the network when a channel fails.
///
/// The residency table is written by the control path (a VM arrives, leaves,
/// migrates) through its single `Writer`; the router only reads it. The control path
/// registers a channel with [`attach`](Self::attach), inserts the returned handle under
/// the peer's key, and on departure removes the key and calls
/// [`peer_left`](Self::peer_left).
pub struct Router<'t, K: Key, R: SharedRegion, D: Doorbell, C: Clock, N, P, const B: usize> {
    table: &'t Table<K, B>,
    slots: Vec<Slot<K, R, D, C>>,
    /// Per-flow sender state, looked up on every message: a hash map (a `BTreeMap`
    /// walk cost up to 55% of a miss's instructions at 1024 flows).
    flows: hashbrown::HashMap<u32, FlowTx>,
    policy: P,
    net: N,
    reasm: Reassembler,
    stats: RouterStats,
}

impl<K: Key + fmt::Debug, R: SharedRegion, D: Doorbell, C: Clock, N, P, const B: usize> fmt::Debug
    for Router<'_, K, R, D, C, N, P, B>
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field("slots", &self.slots.len())
            .field("stats", &self.stats)
            .finish()
    }
}

impl<'t, K, R, D, C, N, P, const B: usize> Router<'t, K, R, D, C, N, P, B>
where
    K: Key,
    R: SharedRegion,
    D: Doorbell,
    C: Clock,
    N: NetworkPath<K>,
    P: Policy,
{
    /// A router reading `table`, choosing with `policy`, falling back to `net`; at
    /// most `max_held` early messages wait for a gap on the receiving side.
    pub fn new(table: &'t Table<K, B>, policy: P, net: N, max_held: usize) -> Self {
        Self {
            table,
            slots: Vec::new(),
            flows: hashbrown::HashMap::new(),
            policy,
            net,
            reasm: Reassembler::new(max_held),
            stats: RouterStats::default(),
        }
    }

    /// The counters.
    pub fn stats(&self) -> &RouterStats {
        &self.stats
    }

    /// The network path (to receive from it, say).
    pub fn network(&mut self) -> &mut N {
        &mut self.net
    }

    /// The channel behind `handle`, if it is current.
    pub fn channel(&mut self, handle: Handle) -> Option<&mut Channel<R, D, C>> {
        let s = self.slots.get_mut(handle.slot() as usize)?;
        if s.generation != handle.generation() {
            return None;
        }
        s.channel.as_mut()
    }

    /// Registers a connected channel to `peer`; returns the handle the control path
    /// inserts into the residency table.
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
                });
                self.slots.len() - 1
            }
            None => return Err(RouteError::NoSlot),
        };
        let s = &mut self.slots[i];
        s.generation = s.generation.wrapping_add(1);
        s.peer = Some(peer);
        s.channel = Some(channel);
        s.draining = false;
        Ok(Handle::new(i as u16, s.generation))
    }

    /// Routes one message of `flow` to `dst`; returns the path it took.
    ///
    /// # Errors
    ///
    /// The network path's, when it was needed and failed (for this message or a resend).
    pub fn send(
        &mut self,
        dst: &K,
        flow: u32,
        payload: &[u8],
    ) -> Result<Path, RouteError<N::Error>> {
        let handle = self.table.get(dst);
        let f = self.flows.entry(flow).or_insert(FlowTx {
            next_seq: 0,
            policy: PeerState {
                path: Path::Channel,
                streak: 0,
            },
        });
        let header = FlowHeader {
            flow,
            seq: f.next_seq,
        };
        let slot = handle.and_then(|h| {
            let i = h.slot() as usize;
            match self.slots.get(i) {
                Some(s) if s.generation == h.generation() && !s.draining && s.channel.is_some() => {
                    Some(i)
                }
                _ => None,
            }
        });
        let (resident, max_len, peer_load) = match slot.and_then(|i| self.slots[i].channel.as_mut())
        {
            Some(c) => (
                true,
                c.max_message().saturating_sub(FLOW_HEADER_LEN),
                c.load(),
            ),
            None => (false, 0, 0),
        };
        if resident {
            self.stats.hits += 1;
        } else {
            self.stats.misses += 1;
        }
        let d = Decision {
            len: payload.len(),
            resident,
            max_len,
            peer_load,
        };
        let path = self.policy.choose(&mut f.policy, &d);
        f.next_seq += 1;
        if let (Path::Channel, Some(i)) = (path, slot) {
            match self.send_on_channel(i, header, payload) {
                Ok(()) => {
                    self.stats.via_channel += 1;
                    return Ok(Path::Channel);
                }
                Err(ChannelError::Full) => {} // the peer is slow: this one goes by network
                Err(_) => self.fail_over(i)?,
            }
        }
        self.net
            .send(dst, header, payload)
            .map_err(RouteError::Network)?;
        self.stats.via_network += 1;
        Ok(Path::Network)
    }

    fn send_on_channel(
        &mut self,
        i: usize,
        header: FlowHeader,
        payload: &[u8],
    ) -> Result<(), ChannelError> {
        let Some(c) = self.slots[i].channel.as_mut() else {
            return Err(ChannelError::PeerGone);
        };
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

    /// The control path saw `handle`'s peer leave this host (migration, destruction):
    /// its flows move to the network, unconsumed messages first.
    ///
    /// # Errors
    ///
    /// The network path's, during the resend.
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
            if s.generation == handle.generation() {
                s.channel = None;
                s.peer = None;
                s.draining = false;
                self.stats.fallbacks += 1;
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
        self.stats.fallbacks += 1;
        let (Some(c), Some(peer)) = (s.channel.as_mut(), s.peer) else {
            return Ok(());
        };
        c.peer_left();
        // Copy the unconsumed frames out first (the walk borrows the channel), then send.
        let mut frames: Vec<Vec<u8>> = Vec::new();
        let _ = c.unconsumed(|v| {
            let mut b = vec![0u8; v.len()];
            let n = v.read_at(0, &mut b);
            b.truncate(n);
            frames.push(b);
        });
        for f in frames {
            match FlowHeader::decode(&f) {
                Some(h) => {
                    self.net
                        .send(&peer, h, &f[FLOW_HEADER_LEN..])
                        .map_err(RouteError::Network)?;
                    self.stats.resent += 1;
                }
                None => self.stats.unreadable += 1,
            }
        }
        Ok(())
    }

    /// Periodic duty: publishes overdue batches, checks every channel's peer, and fails
    /// over the channels whose peer is gone or whose memory is corrupted.
    ///
    /// # Errors
    ///
    /// The network path's, during a resend.
    pub fn poll(&mut self) -> Result<(), RouteError<N::Error>> {
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
                self.fail_over(i)?;
            }
        }
        Ok(())
    }

    /// Receives everything waiting in every channel and hands each message, in flow
    /// order, to `deliver(flow, payload)`; closes drained channels of departed peers.
    /// Returns how many messages were received (duplicates and held ones included).
    ///
    /// # Errors
    ///
    /// [`RouteError::Reassembly`] when too many messages wait for a gap (those that
    /// could not be held in the batch are dropped and counted as lost in the error's
    /// wake: the bound is the reassembler's `max_held`).
    pub fn recv_channels(
        &mut self,
        mut deliver: impl FnMut(u32, &[u8]),
    ) -> Result<usize, RouteError<N::Error>> {
        let mut total = 0;
        for i in 0..self.slots.len() {
            // Bounded: a live peer that keeps publishing cannot hold us here; what it
            // publishes after this pass waits for the next call.
            for _ in 0..1024 {
                let Some(c) = self.slots[i].channel.as_mut() else {
                    break;
                };
                let reasm = &mut self.reasm;
                let mut unreadable = 0;
                let mut failed = None;
                // Each message reaches `deliver` inside the batch, before the batch's
                // space is released to the peer: a receiver that dies mid-batch has
                // released nothing it did not hand over, so the peer resends the rest
                // (and a restarted receiver drops what it already had: `resume_flow`).
                let r = c.recv_batch(64, |v| {
                    let mut b = vec![0u8; v.len()];
                    let n = v.read_at(0, &mut b);
                    match FlowHeader::decode(&b[..n]) {
                        Some(h) => {
                            if let Err(e) = reasm.accept(h, &b[FLOW_HEADER_LEN..n], &mut deliver) {
                                failed.get_or_insert(e);
                            }
                        }
                        None => unreadable += 1,
                    }
                });
                self.stats.unreadable += unreadable;
                if let Some(e) = failed {
                    return Err(RouteError::Reassembly(e));
                }
                match r {
                    Ok(n) => total += n,
                    Err(ChannelError::Empty) if !self.slots[i].draining => break,
                    Err(_) => {
                        // Failed over and drained, gone, or corrupted: fail over (if not
                        // yet) and close, so a peer still writing learns it at its next
                        // publish and fails over too, resending what we never read.
                        self.fail_over(i)?;
                        self.remove(i);
                        break;
                    }
                }
            }
        }
        Ok(total)
    }

    /// Takes one message that arrived on the network path (header and payload as the
    /// peer's router sent them) and delivers what is now in order.
    ///
    /// # Errors
    ///
    /// [`RouteError::Reassembly`] when too many messages wait for a gap.
    pub fn recv_network(
        &mut self,
        header: FlowHeader,
        payload: &[u8],
        deliver: impl FnMut(u32, &[u8]),
    ) -> Result<(), RouteError<N::Error>> {
        self.reasm
            .accept(header, payload, deliver)
            .map(|_| ())
            .map_err(RouteError::Reassembly)
    }

    /// Closes and forgets channel `i`.
    fn remove(&mut self, i: usize) {
        let s = &mut self.slots[i];
        s.peer = None;
        s.draining = false;
        if let Some(c) = s.channel.take() {
            drop(c.close());
        }
    }

    /// Tells the receiving side that `flow` continues at `next_seq`: what a restarted
    /// receiver that recorded its deliveries durably calls before receiving again, so
    /// resends of messages it already handed over are dropped as duplicates.
    pub fn resume_flow(&mut self, flow: u32, next_seq: u64) {
        self.reasm.resume(flow, next_seq);
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
