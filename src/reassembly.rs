//! The receiver's reassembly (see [`Reassembler`]).

use crate::flow::FlowHeader;
use crate::policy::Path;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;
use core::fmt;
use core::hash::Hash;
use hashbrown::HashMap;

/// Bytes charged for each held message on top of its payload: the map node and the
/// allocation's own overhead, so that empty messages are not free to hold.
pub const HELD_OVERHEAD: usize = 64;

/// The bounds of a [`Reassembler`].
///
/// Memory held is at most about `held_bytes_total` for messages, plus
/// `peers * flows_per_peer` flow entries (~100 bytes each).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReassemblyLimits {
    /// A message more than this many sequence numbers ahead of its flow's next one is
    /// refused without being held ([`ReassemblyError::BeyondWindow`]).
    pub window: u64,
    /// Flows tracked per peer. A new flow beyond it replaces the least recently used
    /// flow of the same peer that holds nothing; a replaced flow starts again from
    /// sequence number 0 if it comes back, so size this above the number of flows an
    /// honest peer keeps open.
    pub flows_per_peer: usize,
    /// Peers tracked. A new peer beyond it is refused ([`ReassemblyError::TooManyPeers`])
    /// until [`Reassembler::forget_peer`] makes room: forgetting a peer silently would
    /// deliver its resends twice.
    pub peers: usize,
    /// Bytes (payload plus [`HELD_OVERHEAD`]) one flow may hold.
    pub held_bytes_per_flow: usize,
    /// Bytes one peer may hold, all its flows together.
    pub held_bytes_per_peer: usize,
    /// Messages one peer may hold, all its flows together.
    pub held_per_peer: usize,
    /// Bytes all peers together may hold. When it is reached, the peer holding the most
    /// loses its farthest-ahead message; a peer already holding more than its fair share
    /// (`held_bytes_total / peers holding`) is refused instead.
    pub held_bytes_total: usize,
}

impl Default for ReassemblyLimits {
    fn default() -> Self {
        Self {
            window: 1 << 20,
            flows_per_peer: 1024,
            peers: 1024,
            held_bytes_per_flow: 64 << 20,
            held_bytes_per_peer: 64 << 20,
            held_per_peer: 1 << 18,
            held_bytes_total: 256 << 20,
        }
    }
}

/// What [`Reassembler::accept`] did with a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Delivered, with this many held messages that it released (0 or more).
    Delivered {
        /// Held messages delivered after it.
        released: usize,
    },
    /// Arrived ahead of a gap: held until the gap fills.
    Held,
    /// Already delivered or already held (a resend after a fallback): dropped.
    Duplicate,
}

/// Why a message was not taken. Each says whether it may be offered again: a
/// *retryable* refusal means "not now" (keep it, offer it after the gap fills); the
/// others mean "never" (a hostile or broken peer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReassemblyError {
    /// The message lies more than the window ahead of its flow's next sequence number:
    /// refused and not held. Not retryable.
    BeyondWindow {
        /// The flow.
        flow: u32,
        /// The message's sequence number.
        seq: u64,
        /// The flow's next sequence number.
        next: u64,
        /// The window.
        window: u64,
    },
    /// Holding it would exceed its flow's byte budget, and nothing the flow holds lies
    /// farther ahead. Retryable once the gap fills.
    FlowOverBudget {
        /// The flow.
        flow: u32,
        /// The budget in bytes.
        limit: usize,
    },
    /// Holding it would exceed its peer's budget (bytes or messages), or its fair share
    /// of the shared one, and nothing of the peer lies farther ahead. Retryable once the
    /// gap fills.
    PeerOverBudget {
        /// The flow.
        flow: u32,
        /// The peer's byte budget.
        limit: usize,
    },
    /// The peer has as many flows as allowed and every one of them holds messages.
    /// Retryable.
    TooManyFlows {
        /// The flow that could not be tracked.
        flow: u32,
        /// Flows per peer.
        limit: usize,
    },
    /// As many peers are tracked as allowed. Retryable after
    /// [`Reassembler::forget_peer`].
    TooManyPeers {
        /// Peers tracked.
        limit: usize,
    },
}

impl ReassemblyError {
    /// Whether the same message may be offered again later (a budget, not a breach).
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Self::BeyondWindow { .. })
    }
}

impl fmt::Display for ReassemblyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::BeyondWindow {
                flow,
                seq,
                next,
                window,
            } => write!(
                f,
                "flow {flow}: sequence number {seq} lies more than {window} ahead of the \
                 next one ({next}): refused"
            ),
            Self::FlowOverBudget { flow, limit } => write!(
                f,
                "flow {flow}: holding this message would exceed the flow's {limit} bytes \
                 of early messages"
            ),
            Self::PeerOverBudget { flow, limit } => write!(
                f,
                "flow {flow}: holding this message would exceed its peer's budget of early \
                 messages ({limit} bytes, or its share of the shared budget)"
            ),
            Self::TooManyFlows { flow, limit } => write!(
                f,
                "flow {flow}: the peer already has {limit} flows, all waiting for a gap"
            ),
            Self::TooManyPeers { limit } => {
                write!(f, "{limit} peers are tracked already: a new one is refused")
            }
        }
    }
}

impl core::error::Error for ReassemblyError {}

/// What a [`Reassembler`] did, since it was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReassemblyStats {
    /// Messages delivered (released ones included).
    pub delivered: u64,
    /// Duplicates dropped (resends of what was delivered or held).
    pub duplicates: u64,
    /// Messages held for a gap.
    pub held: u64,
    /// Held messages delivered once their gap filled.
    pub released: u64,
    /// Messages refused for lying beyond the window.
    pub beyond_window: u64,
    /// Messages refused for a full budget (flow, peer or shared).
    pub over_budget: u64,
    /// Held messages evicted to make room for a nearer one (lost unless resent).
    pub evicted: u64,
    /// Idle flows forgotten to make room for a new flow of the same peer.
    pub flows_evicted: u64,
    /// Messages refused because their peer's flow table was full of holding flows.
    pub too_many_flows: u64,
    /// Messages refused because the peer table was full.
    pub too_many_peers: u64,
    /// Sequence numbers skipped over by [`Reassembler::skip_gap`].
    pub skipped: u64,
}

#[derive(Debug)]
struct Held {
    payload: Vec<u8>,
    path: Path,
}

#[derive(Debug, Default)]
struct FlowRx {
    /// The next sequence number to deliver.
    next: u64,
    /// Messages that arrived ahead of `next`: keys in `next + 1 ..= next + window`.
    held: BTreeMap<u64, Held>,
    /// Bytes charged for `held` (payloads plus [`HELD_OVERHEAD`] each).
    held_bytes: usize,
    /// Used since the LRU clock last passed it.
    touched: bool,
    /// `next` moved since [`Reassembler::take_progress`] last reported it.
    dirty: bool,
}

/// What one peer holds, all its flows together.
#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    bytes: usize,
    msgs: usize,
    /// Of `bytes`, what came by a channel (the router stops reading a peer's channel
    /// while this is high: the gap is on the network).
    channel_bytes: usize,
}

#[derive(Debug, Default)]
struct PeerRx {
    flows: HashMap<u32, FlowRx>,
    /// Every flow id of `flows`, once, in the order the LRU clock visits them.
    clock: VecDeque<u32>,
    totals: Totals,
}

/// Everything shared by all peers.
#[derive(Debug)]
struct Acct<P> {
    /// Bytes held, all peers together.
    held_total: usize,
    stats: ReassemblyStats,
    /// Flows whose `next` moved since the last [`Reassembler::take_progress`].
    dirty: Vec<(P, u32)>,
    /// Network-carried held messages that were evicted: `(peer, flow, lowest seq)`, for
    /// the network path to resend.
    lost: Vec<(P, u32, u64)>,
    /// Entries of `dirty` whose flow was forgotten since the last compaction.
    stale: usize,
}

/// The receiver's reassembly: each sequence number of a flow delivered once and in
/// order, whichever path carried it, keyed by **(peer, flow)**, in bounded memory.
///
/// ```text
///   accept(peer, path, {flow, seq}, payload)
///     peer   : known, or a new entry (at most `peers`)
///     flow   : known, or a new entry (at most `flows_per_peer` per peer; the least
///              recently used idle flow of the same peer makes room)
///     seq <  next, or held already  -> Duplicate (dropped)
///     seq == next                   -> delivered, then every held seq after it
///     seq >  next + window          -> BeyondWindow (refused, never held)
///     seq >  next                   -> held, within three budgets:
///        the flow's bytes, the peer's bytes and messages, everyone's bytes (with a
///        fair share per holding peer); a budget that is full evicts the farthest-ahead
///        message first if it lies farther ahead than this one, else refuses this one
/// ```
///
/// # Why per peer
///
/// A flow id names a stream of *one* sender. Were flows keyed by id alone, any peer
/// could send `{flow: 7, seq: next}` on its own channel and have its payload delivered
/// as another peer's message (and the real one dropped as a duplicate). Here a peer can
/// only ever fill gaps in its own flows, hold its own bytes and exhaust its own
/// budgets; another peer's in-window messages are never refused or evicted because of
/// it: the shared budget (`held_bytes_total`) evicts from the peer holding the most,
/// and refuses only a peer that holds more than its fair share.
///
/// # Budgets an honest sender stays within
///
/// Early arrivals are normal: a full ring sends by network, so network messages
/// overtake the ring's. What an honest peer holds is bounded by what it has in flight
/// on the slower path: the messages in its ring, plus the network messages it has sent
/// and that were not delivered (a [`TcpPath`](crate::path::TcpPath)'s replay buffer
/// bounds those). Give `held_bytes_per_peer` at least the sum, and `window` at least
/// the number of messages it can hold in flight; the router also stops reading a
/// peer's channel while too much of that peer's channel traffic waits for a gap.
///
/// # Examples
///
/// ```
/// use coresident::{FlowHeader, Path, Reassembler, ReassemblyLimits};
/// let mut r: Reassembler<u64> = Reassembler::new(ReassemblyLimits::default());
/// let mut out = Vec::new();
/// let h = |seq| FlowHeader { flow: 1, seq };
/// let mut deliver = |peer: &u64, flow: u32, m: &[u8]| out.push((*peer, flow, m.to_vec()));
/// r.accept(&9, Path::Network, h(1), b"b", &mut deliver).unwrap(); // early: held
/// r.accept(&9, Path::Channel, h(0), b"a", &mut deliver).unwrap(); // fills the gap
/// r.accept(&9, Path::Network, h(0), b"a", &mut deliver).unwrap(); // a resend: dropped
/// r.accept(&5, Path::Channel, h(1), b"x", &mut deliver).unwrap(); // peer 5's own flow 1
/// assert_eq!(out, [(9, 1, b"a".to_vec()), (9, 1, b"b".to_vec())]);
/// ```
///
/// `P` is the peer's key: the channel's residency key, or the network source as the
/// network path names it; both paths must name a peer the same way.
#[derive(Debug)]
pub struct Reassembler<P> {
    peers: HashMap<P, PeerRx>,
    limits: ReassemblyLimits,
    acct: Acct<P>,
}

fn cost(payload: &[u8]) -> usize {
    payload.len().saturating_add(HELD_OVERHEAD)
}

impl<P: Copy + Eq + Hash + fmt::Debug> Acct<P> {
    fn dirty(&mut self, f: &mut FlowRx, peer: &P, flow: u32) {
        if !f.dirty {
            f.dirty = true;
            self.dirty.push((*peer, flow));
        }
    }

    fn unhold(&mut self, t: &mut Totals, c: usize, path: Path) {
        t.bytes -= c;
        t.msgs -= 1;
        if path == Path::Channel {
            t.channel_bytes -= c;
        }
        self.held_total -= c;
    }

    /// Delivers the run of held messages from `f.next` on; returns how many.
    fn release(
        &mut self,
        f: &mut FlowRx,
        t: &mut Totals,
        peer: &P,
        flow: u32,
        deliver: &mut impl FnMut(&P, u32, &[u8]),
    ) -> usize {
        let mut n = 0;
        while let Some(h) = f.held.remove(&f.next) {
            let c = cost(&h.payload);
            f.held_bytes -= c;
            self.unhold(t, c, h.path);
            deliver(peer, flow, &h.payload);
            f.next += 1;
            n += 1;
        }
        self.stats.released += n as u64;
        self.stats.delivered += n as u64;
        if n > 0 {
            self.dirty(f, peer, flow);
        }
        n as usize
    }
}

/// Forgets the least recently used flow of `p` that holds nothing (second-chance
/// clock: amortised O(1)); false if every flow holds something.
fn evict_idle_flow(p: &mut PeerRx, stats: &mut ReassemblyStats, stale: &mut usize) -> bool {
    // Two turns of the clock: the first clears every "touched" mark it passes.
    for _ in 0..2 * p.clock.len() {
        let Some(id) = p.clock.pop_front() else {
            return false;
        };
        let Some(f) = p.flows.get_mut(&id) else {
            continue;
        };
        if f.touched || !f.held.is_empty() {
            f.touched = false;
            p.clock.push_back(id);
            continue;
        }
        if f.dirty {
            *stale += 1;
        }
        p.flows.remove(&id);
        stats.flows_evicted += 1;
        return true;
    }
    false
}

/// The flow of `p` whose last held message lies farthest ahead of its next sequence
/// number: `(flow, seq, distance)`.
fn farthest(p: &PeerRx) -> Option<(u32, u64, u64)> {
    p.flows
        .iter()
        .filter_map(|(&id, f)| f.held.last_key_value().map(|(&s, _)| (id, s, s - f.next)))
        .max_by_key(|&(_, _, d)| d)
}

/// Makes sure `peer` and its `flow` have entries in `peers` (within `limits`); returns
/// the peer's.
fn entry<'a, P: Copy + Eq + Hash + fmt::Debug>(
    peers: &'a mut HashMap<P, PeerRx>,
    limits: &ReassemblyLimits,
    stats: &mut ReassemblyStats,
    stale: &mut usize,
    peer: &P,
    flow: u32,
) -> Result<&'a mut PeerRx, ReassemblyError> {
    if !peers.contains_key(peer) {
        if peers.len() >= limits.peers {
            stats.too_many_peers += 1;
            tracing::warn!(peer = ?peer, flow, "reassembly: peer table full, refused");
            return Err(ReassemblyError::TooManyPeers {
                limit: limits.peers,
            });
        }
        peers.insert(*peer, PeerRx::default());
    }
    let limit = limits.flows_per_peer.max(1);
    let Some(p) = peers.get_mut(peer) else {
        return Err(ReassemblyError::TooManyPeers {
            limit: limits.peers,
        });
    };
    if !p.flows.contains_key(&flow) {
        if p.flows.len() >= limit && !evict_idle_flow(p, stats, stale) {
            stats.too_many_flows += 1;
            tracing::warn!(peer = ?peer, flow, "reassembly: every flow of the peer holds messages, refused");
            return Err(ReassemblyError::TooManyFlows { flow, limit });
        }
        p.flows.insert(flow, FlowRx::default());
        p.clock.push_back(flow);
    }
    Ok(p)
}

impl<P: Copy + Eq + Hash + fmt::Debug> Reassembler<P> {
    /// A reassembler within `limits`.
    pub fn new(limits: ReassemblyLimits) -> Self {
        Self {
            peers: HashMap::new(),
            limits,
            acct: Acct {
                held_total: 0,
                stats: ReassemblyStats::default(),
                dirty: Vec::new(),
                lost: Vec::new(),
                stale: 0,
            },
        }
    }

    /// Drops the entries of forgotten flows from the progress list once they are half
    /// of it (amortised O(1)): the list stays within twice the flows tracked.
    fn compact_progress(&mut self) {
        let a = &mut self.acct;
        if a.stale > 64 && a.stale * 2 > a.dirty.len() {
            let peers = &self.peers;
            a.dirty.retain(|(p, f)| {
                peers
                    .get(p)
                    .and_then(|p| p.flows.get(f))
                    .is_some_and(|f| f.dirty)
            });
            a.stale = 0;
        }
    }

    /// The bounds.
    pub fn limits(&self) -> &ReassemblyLimits {
        &self.limits
    }

    /// The counters.
    pub fn stats(&self) -> &ReassemblyStats {
        &self.acct.stats
    }

    /// Duplicates dropped so far.
    pub fn duplicates(&self) -> u64 {
        self.acct.stats.duplicates
    }

    /// Early messages held now, all peers together.
    pub fn held(&self) -> usize {
        self.peers.values().map(|p| p.totals.msgs).sum()
    }

    /// Bytes charged for held messages now, all peers together.
    pub fn held_bytes(&self) -> usize {
        self.acct.held_total
    }

    /// Bytes `peer` holds now that came by a channel.
    pub fn channel_held_bytes(&self, peer: &P) -> usize {
        self.peers.get(peer).map_or(0, |p| p.totals.channel_bytes)
    }

    /// Peers tracked now.
    pub fn peers(&self) -> usize {
        self.peers.len()
    }

    /// Flows of `peer` tracked now.
    pub fn flows(&self, peer: &P) -> usize {
        self.peers.get(peer).map_or(0, |p| p.flows.len())
    }

    /// The next sequence number `flow` of `peer` expects.
    pub fn expected(&self, peer: &P, flow: u32) -> u64 {
        self.peers
            .get(peer)
            .and_then(|p| p.flows.get(&flow))
            .map_or(0, |f| f.next)
    }

    /// Each tracked flow of `peer` with the next sequence number it expects: what a
    /// network path tells a reconnecting sender, so it resends from there.
    pub fn for_each_flow(&self, peer: &P, mut f: impl FnMut(u32, u64)) {
        if let Some(p) = self.peers.get(peer) {
            for (&flow, rx) in &p.flows {
                f(flow, rx.next);
            }
        }
    }

    /// Hands over, and forgets, each `(peer, flow, next)` whose next sequence number
    /// moved since the last call: the acknowledgements a network path sends back.
    pub fn take_progress(&mut self, mut f: impl FnMut(&P, u32, u64)) {
        for (peer, flow) in core::mem::take(&mut self.acct.dirty) {
            if let Some(rx) = self
                .peers
                .get_mut(&peer)
                .and_then(|p| p.flows.get_mut(&flow))
            {
                if rx.dirty {
                    rx.dirty = false;
                    f(&peer, flow, rx.next);
                }
            }
        }
    }

    /// Whether [`take_progress`](Self::take_progress) has anything to hand over.
    pub fn has_progress(&self) -> bool {
        !self.acct.dirty.is_empty()
    }

    /// Hands over, and forgets, each `(peer, flow, seq)` from which network-carried
    /// held messages were evicted: a network path that keeps a replay buffer resends
    /// them.
    pub fn take_lost(&mut self, mut f: impl FnMut(&P, u32, u64)) {
        for (peer, flow, seq) in self.acct.lost.drain(..) {
            f(&peer, flow, seq);
        }
    }

    /// Forgets everything about `peer` (a peer gone for good): its held messages are
    /// dropped and its flows restart at 0 if it ever comes back.
    pub fn forget_peer(&mut self, peer: &P) {
        if let Some(p) = self.peers.remove(peer) {
            self.acct.held_total -= p.totals.bytes;
        }
    }

    /// Continues `flow` of `peer` at `next`: what a restarted receiver that recorded
    /// its deliveries durably calls before receiving again, so resends of what it
    /// already handed over are dropped as duplicates. Held messages below `next` are
    /// dropped; the run of held messages from `next` on is delivered at once. Returns
    /// how many were delivered.
    ///
    /// # Errors
    ///
    /// [`ReassemblyError::TooManyPeers`] or [`ReassemblyError::TooManyFlows`] when the
    /// flow cannot be tracked.
    pub fn resume(
        &mut self,
        peer: &P,
        flow: u32,
        next: u64,
        mut deliver: impl FnMut(&P, u32, &[u8]),
    ) -> Result<usize, ReassemblyError> {
        let PeerRx { flows, totals, .. } = entry(
            &mut self.peers,
            &self.limits,
            &mut self.acct.stats,
            &mut self.acct.stale,
            peer,
            flow,
        )?;
        let Some(f) = flows.get_mut(&flow) else {
            return Ok(0);
        };
        let acct = &mut self.acct;
        if f.next != next {
            f.next = next;
            acct.dirty(f, peer, flow);
        }
        while let Some(e) = f.held.first_entry() {
            if *e.key() >= next {
                break;
            }
            let h = e.remove();
            let c = cost(&h.payload);
            f.held_bytes -= c;
            acct.unhold(totals, c, h.path);
            acct.stats.duplicates += 1;
        }
        Ok(acct.release(f, totals, peer, flow, &mut deliver))
    }

    /// Gives up on the gap in front of `flow` of `peer`: the flow jumps to its first
    /// held message and delivers the run from there. For paths that may lose messages
    /// (datagrams): a lost message would otherwise hold its flow up for good. Returns
    /// how many messages were delivered.
    pub fn skip_gap(
        &mut self,
        peer: &P,
        flow: u32,
        mut deliver: impl FnMut(&P, u32, &[u8]),
    ) -> usize {
        let Some(PeerRx { flows, totals, .. }) = self.peers.get_mut(peer) else {
            return 0;
        };
        let Some(f) = flows.get_mut(&flow) else {
            return 0;
        };
        let Some((&first, _)) = f.held.first_key_value() else {
            return 0;
        };
        self.acct.stats.skipped = self.acct.stats.skipped.saturating_add(first - f.next);
        tracing::warn!(peer = ?peer, flow, from = f.next, to = first, "reassembly: gap skipped");
        f.next = first;
        self.acct.release(f, totals, peer, flow, &mut deliver)
    }

    /// Takes one message of `flow` from `peer`, carried by `path`; `deliver` gets every
    /// message that is now in order (this one and any it releases), as `(peer, flow,
    /// payload)`.
    ///
    /// # Errors
    ///
    /// A [`ReassemblyError`]: the message is not taken. [`is_retryable`] says whether it
    /// may be offered again later.
    ///
    /// [`is_retryable`]: ReassemblyError::is_retryable
    pub fn accept(
        &mut self,
        peer: &P,
        path: Path,
        header: FlowHeader,
        payload: &[u8],
        mut deliver: impl FnMut(&P, u32, &[u8]),
    ) -> Result<Delivery, ReassemblyError> {
        let (flow, seq) = (header.flow, header.seq);
        let window = self.limits.window;
        self.compact_progress();
        let PeerRx { flows, totals, .. } = entry(
            &mut self.peers,
            &self.limits,
            &mut self.acct.stats,
            &mut self.acct.stale,
            peer,
            flow,
        )?;
        let Some(f) = flows.get_mut(&flow) else {
            return Err(ReassemblyError::TooManyFlows {
                flow,
                limit: self.limits.flows_per_peer,
            });
        };
        let acct = &mut self.acct;
        f.touched = true;
        if seq < f.next || f.held.contains_key(&seq) {
            acct.stats.duplicates += 1;
            tracing::trace!(peer = ?peer, flow, seq, "reassembly: duplicate dropped");
            return Ok(Delivery::Duplicate);
        }
        if seq == f.next && seq != u64::MAX {
            deliver(peer, flow, payload);
            acct.stats.delivered += 1;
            f.next += 1;
            acct.dirty(f, peer, flow);
            let released = acct.release(f, totals, peer, flow, &mut deliver);
            return Ok(Delivery::Delivered { released });
        }
        let next = f.next;
        // `u64::MAX` is never a sequence number (no sender gets there; taking it would
        // leave `next` nowhere to go).
        if seq - next > window || seq == u64::MAX {
            acct.stats.beyond_window += 1;
            tracing::warn!(peer = ?peer, flow, seq, next, "reassembly: beyond the window, refused");
            return Err(ReassemblyError::BeyondWindow {
                flow,
                seq,
                next,
                window,
            });
        }
        let c = cost(payload);
        if let Err(e) = self.make_room(peer, flow, seq, c) {
            self.acct.stats.over_budget += 1;
            tracing::warn!(peer = ?peer, flow, seq, next, "reassembly: no room to hold, refused");
            return Err(e);
        }
        let Some(PeerRx { flows, totals, .. }) = self.peers.get_mut(peer) else {
            return Err(ReassemblyError::TooManyPeers {
                limit: self.limits.peers,
            });
        };
        let Some(f) = flows.get_mut(&flow) else {
            return Err(ReassemblyError::TooManyFlows {
                flow,
                limit: self.limits.flows_per_peer,
            });
        };
        f.held.insert(
            seq,
            Held {
                payload: payload.to_vec(),
                path,
            },
        );
        f.held_bytes += c;
        totals.bytes += c;
        totals.msgs += 1;
        if path == Path::Channel {
            totals.channel_bytes += c;
        }
        self.acct.held_total += c;
        self.acct.stats.held += 1;
        tracing::debug!(peer = ?peer, flow, seq, next, "reassembly: held for a gap");
        Ok(Delivery::Held)
    }

    /// Drops held message `seq` of `flow` of `peer` to make room.
    fn evict(&mut self, peer: &P, flow: u32, seq: u64) {
        let Some(PeerRx { flows, totals, .. }) = self.peers.get_mut(peer) else {
            return;
        };
        let Some(f) = flows.get_mut(&flow) else {
            return;
        };
        let Some(h) = f.held.remove(&seq) else {
            return;
        };
        let c = cost(&h.payload);
        f.held_bytes -= c;
        self.acct.unhold(totals, c, h.path);
        self.acct.stats.evicted += 1;
        tracing::warn!(peer = ?peer, flow, seq, path = ?h.path, "reassembly: farthest-ahead message evicted");
        if h.path == Path::Network {
            match self
                .acct
                .lost
                .iter_mut()
                .find(|(p, f, _)| p == peer && *f == flow)
            {
                Some(e) => e.2 = e.2.min(seq),
                None => self.acct.lost.push((*peer, flow, seq)),
            }
        }
    }

    /// Makes room for `c` more bytes held by `flow` of `peer` at `seq`, evicting
    /// farther-ahead messages; the budgets in order: the flow's, the peer's, the shared
    /// one.
    fn make_room(
        &mut self,
        peer: &P,
        flow: u32,
        seq: u64,
        c: usize,
    ) -> Result<(), ReassemblyError> {
        let l = self.limits;
        let over_flow = ReassemblyError::FlowOverBudget {
            flow,
            limit: l.held_bytes_per_flow,
        };
        let over_peer = ReassemblyError::PeerOverBudget {
            flow,
            limit: l.held_bytes_per_peer,
        };
        if c > l.held_bytes_per_flow {
            return Err(over_flow);
        }
        if c > l.held_bytes_per_peer || c > l.held_bytes_total || l.held_per_peer == 0 {
            return Err(over_peer);
        }
        loop {
            let p = self.peers.get(peer).ok_or(over_peer)?;
            let f = p.flows.get(&flow).ok_or(over_flow)?;
            if f.held_bytes + c <= l.held_bytes_per_flow {
                break;
            }
            match f.held.last_key_value() {
                Some((&s, _)) if s > seq => self.evict(peer, flow, s),
                _ => return Err(over_flow),
            }
        }
        loop {
            let p = self.peers.get(peer).ok_or(over_peer)?;
            if p.totals.bytes + c <= l.held_bytes_per_peer && p.totals.msgs < l.held_per_peer {
                break;
            }
            let ahead = seq - p.flows.get(&flow).map_or(0, |f| f.next);
            match farthest(p) {
                Some((fl, s, d)) if d > ahead => self.evict(peer, fl, s),
                _ => return Err(over_peer),
            }
        }
        while self.acct.held_total + c > l.held_bytes_total {
            let mine = self.peers.get(peer).map_or(0, |p| p.totals.bytes);
            let holding =
                self.peers.values().filter(|p| p.totals.msgs > 0).count() + usize::from(mine == 0);
            let share = l.held_bytes_total / holding.max(1);
            if mine + c > share {
                return Err(over_peer);
            }
            let victim = self
                .peers
                .iter()
                .filter(|(k, p)| *k != peer && p.totals.msgs > 0)
                .max_by_key(|(_, p)| p.totals.bytes)
                .and_then(|(k, p)| farthest(p).map(|(fl, s, _)| (*k, fl, s)));
            match victim {
                Some((k, fl, s)) => self.evict(&k, fl, s),
                None => return Err(over_peer),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    fn h(flow: u32, seq: u64) -> FlowHeader {
        FlowHeader { flow, seq }
    }

    fn small() -> ReassemblyLimits {
        ReassemblyLimits {
            window: 100,
            flows_per_peer: 4,
            peers: 8,
            held_bytes_per_flow: 10 * (HELD_OVERHEAD + 10),
            held_bytes_per_peer: 10 * (HELD_OVERHEAD + 10),
            held_per_peer: 1000,
            held_bytes_total: 15 * (HELD_OVERHEAD + 10),
        }
    }

    #[test]
    fn beyond_the_window_is_refused_and_not_held() {
        let mut r: Reassembler<u8> = Reassembler::new(small());
        assert_eq!(
            r.accept(&1, Path::Network, h(1, 101), b"x", |_, _, _| {}),
            Err(ReassemblyError::BeyondWindow {
                flow: 1,
                seq: 101,
                next: 0,
                window: 100
            })
        );
        assert_eq!(
            r.accept(&1, Path::Network, h(1, 100), b"x", |_, _, _| {}),
            Ok(Delivery::Held)
        );
        assert_eq!((r.held(), r.stats().beyond_window), (1, 1));
        assert!(!ReassemblyError::BeyondWindow {
            flow: 0,
            seq: 0,
            next: 0,
            window: 0
        }
        .is_retryable());
    }

    #[test]
    fn the_last_sequence_number_is_never_taken() {
        let mut r: Reassembler<u8> = Reassembler::new(small());
        r.resume(&1, 1, u64::MAX, |_, _, _| {}).unwrap();
        let mut out = 0;
        assert!(r
            .accept(&1, Path::Channel, h(1, u64::MAX), b"x", |_, _, _| out += 1)
            .is_err());
        assert_eq!(
            r.accept(&1, Path::Channel, h(1, 5), b"x", |_, _, _| out += 1),
            Ok(Delivery::Duplicate)
        );
        assert_eq!(out, 0);
    }

    #[test]
    fn a_full_budget_evicts_the_farthest_ahead_first() {
        let mut r: Reassembler<u8> = Reassembler::new(small());
        let p = [0u8; 10];
        for seq in 11..=20 {
            assert_eq!(
                r.accept(&1, Path::Network, h(1, seq), &p, |_, _, _| {}),
                Ok(Delivery::Held)
            );
        }
        // Full: a nearer one evicts the farthest (20); a farther one is refused.
        assert_eq!(
            r.accept(&1, Path::Network, h(1, 5), &p, |_, _, _| {}),
            Ok(Delivery::Held)
        );
        assert_eq!(r.stats().evicted, 1);
        assert_eq!(
            r.accept(&1, Path::Network, h(1, 30), &p, |_, _, _| {}),
            Err(ReassemblyError::FlowOverBudget {
                flow: 1,
                limit: 740
            })
        );
        // The evicted network message is reported for a resend.
        let mut lost = Vec::new();
        r.take_lost(|peer, flow, seq| lost.push((*peer, flow, seq)));
        assert_eq!(lost, [(1, 1, 20)]);
    }

    #[test]
    fn the_shared_budget_takes_from_the_largest_holder_never_from_a_peer_under_its_share() {
        let mut r: Reassembler<u8> = Reassembler::new(small());
        let p = [0u8; 10];
        // X (peer 9) holds its whole per-peer budget, in window, over two flows.
        for seq in 1..=5 {
            r.accept(&9, Path::Network, h(1, seq), &p, |_, _, _| {})
                .unwrap();
            r.accept(&9, Path::Network, h(2, seq + 50), &p, |_, _, _| {})
                .unwrap();
        }
        // H (peer 1): 7 early messages. The shared budget (15) is full after 5 of them;
        // H is under its fair share (7 of 15), so X loses its farthest-ahead ones.
        for seq in 1..=7 {
            assert_eq!(
                r.accept(&1, Path::Network, h(7, seq), &p, |_, _, _| {}),
                Ok(Delivery::Held)
            );
        }
        assert!(r.held_bytes() <= small().held_bytes_total);
        assert_eq!(r.stats().evicted, 2);
        let mut x_left = Vec::new();
        r.take_lost(|peer, flow, seq| x_left.push((*peer, flow, seq)));
        assert_eq!(
            x_left,
            [(9, 2, 54)],
            "flow 2's farthest first (55, then 54)"
        );
        // H's gap fills: all seven and the filler are delivered.
        let mut out = Vec::new();
        r.accept(&1, Path::Channel, h(7, 0), &p, |_, _, _| out.push(()))
            .unwrap();
        assert_eq!(out.len(), 8);
        // X over its share is refused, not H.
        for seq in 1..=7 {
            r.accept(&1, Path::Network, h(8, seq), &p, |_, _, _| {})
                .unwrap();
        }
        assert!(matches!(
            r.accept(&9, Path::Network, h(1, 6), &p, |_, _, _| {}),
            Err(ReassemblyError::PeerOverBudget { .. })
        ));
    }

    #[test]
    fn skip_gap_gives_up_the_gap_and_progress_is_reported_once() {
        let mut r: Reassembler<u8> = Reassembler::new(small());
        let mut out = Vec::new();
        for seq in [0, 3, 4] {
            r.accept(&1, Path::Network, h(1, seq), &[seq as u8], |_, _, m| {
                out.push(m[0])
            })
            .unwrap();
        }
        let mut progress = Vec::new();
        r.take_progress(|p, f, n| progress.push((*p, f, n)));
        assert_eq!(progress, [(1, 1, 1)]);
        assert_eq!(r.skip_gap(&1, 1, |_, _, m| out.push(m[0])), 2);
        assert_eq!(out, [0, 3, 4]);
        assert_eq!(r.stats().skipped, 2);
        progress.clear();
        r.take_progress(|p, f, n| progress.push((*p, f, n)));
        assert_eq!(progress, [(1, 1, 5)]);
        r.take_progress(|_, _, _| panic!("reported twice"));
    }

    #[test]
    fn resume_drops_what_lies_below_and_releases_the_run() {
        let mut r: Reassembler<u8> = Reassembler::new(small());
        for seq in [2, 3, 6, 7] {
            r.accept(&1, Path::Network, h(1, seq), &[seq as u8], |_, _, _| {})
                .unwrap();
        }
        let mut out = Vec::new();
        assert_eq!(r.resume(&1, 1, 6, |_, _, m| out.push(m[0])), Ok(2));
        assert_eq!(out, [6, 7]);
        assert_eq!((r.held(), r.held_bytes(), r.expected(&1, 1)), (0, 0, 8));
    }

    #[test]
    fn the_peer_table_is_bounded_and_forget_makes_room() {
        let mut r: Reassembler<u8> = Reassembler::new(ReassemblyLimits {
            peers: 2,
            ..small()
        });
        r.accept(&1, Path::Network, h(1, 0), b"", |_, _, _| {})
            .unwrap();
        r.accept(&2, Path::Network, h(1, 0), b"", |_, _, _| {})
            .unwrap();
        assert_eq!(
            r.accept(&3, Path::Network, h(1, 0), b"", |_, _, _| {}),
            Err(ReassemblyError::TooManyPeers { limit: 2 })
        );
        r.forget_peer(&2);
        assert!(r
            .accept(&3, Path::Network, h(1, 0), b"", |_, _, _| {})
            .is_ok());
        assert_eq!(r.stats().too_many_peers, 1);
    }
}
