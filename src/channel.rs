//! A channel: one ring per direction in one shared region, plus a doorbell.

use crate::notify::{Batching, Clock, Doorbell, SpinPolicy, Wake};
use crate::stats::Stats;
#[cfg(not(loom))]
use crate::transport::ring_memory;
#[cfg(not(loom))]
use crate::transport::Link;
use crate::transport::{ChannelLayout, Role, SharedRegion};
use crate::{ChannelError, TransportError};
use core::time::Duration;
use coresident_ring::{
    Consumer, Corruption, Notify, Producer, Readiness, RecvError, Reservation, SendError, View,
};

/// The kind of every message the channel sends (kinds are the ring's; the channel uses
/// one).
const KIND_DATA: u8 = 0;

/// Sends (and empty receives) between two [`Doorbell::peer_alive`] probes on the fast
/// path, at most: a peer that dies while busy (so no doorbell is due) is reported by
/// `send` within this many calls, or at once when the ring fills. The probe is a
/// system call on some transports (a `poll` of the rendezvous socket); one every 1024
/// sends costs well under a nanosecond per send. [`Doorbell::peer_gone_hint`] is
/// asked on every send.
pub const PEER_PROBE_SENDS: u32 = 1024;

/// The slow paths (a full ring, a doorbell rung, [`Channel::poll`]) probe the peer when
/// this long has passed since the last probe, measured with the channel's [`Clock`].
/// So a sender that sends rarely, whose peer is asleep (every send rings), learns of a
/// dead peer at its next send after this interval; so does an idle sender that polls.
pub const PEER_PROBE_INTERVAL: Duration = Duration::from_millis(1);

/// The default cap of the spin budget, in microseconds ([`ChannelConfig::spin`]): a few
/// times a sleeping thread's wake-up latency on Linux, and longer than a batch's
/// default latency bound ([`Batching::STREAM`]'s 50 µs) is not useful.
pub const DEFAULT_SPIN_US: u32 = 50;

/// Index of the blocking receives' and the blocking sends' spinner.
const RECV: usize = 0;
const SEND: usize = 1;

/// Polls between two clock reads while spinning.
const SPIN_POLLS_PER_CLOCK: u32 = 16;

/// What one direction's blocking calls learnt about spinning ([`SpinPolicy::Adaptive`]).
#[derive(Clone, Copy, Debug)]
struct Spinner {
    /// The budget in nanoseconds: `0..=cap`.
    budget: u64,
    /// Waits left before a probe spin, while `budget` is 0.
    probe_in: u16,
    /// Waits between probe spins: 8 to 1024, doubling after each failed probe.
    probe_every: u16,
    /// Whether the spin in progress is a probe.
    probing: bool,
}

impl Spinner {
    const MIN_NS: u64 = 1_000;
    const PROBE_FIRST: u16 = 8;
    const PROBE_MAX: u16 = 1024;

    fn new(cap: u64) -> Self {
        Self {
            budget: cap,
            probe_in: Self::PROBE_FIRST,
            probe_every: Self::PROBE_FIRST,
            probing: false,
        }
    }

    /// The budget of the next wait, in nanoseconds.
    fn limit(&mut self, cap: u64, policy: SpinPolicy) -> u64 {
        if policy == SpinPolicy::Fixed || cap == 0 {
            return cap;
        }
        self.budget = self.budget.min(cap);
        if self.budget > 0 {
            return self.budget;
        }
        self.probe_in = self.probe_in.saturating_sub(1);
        if self.probe_in == 0 {
            self.probe_in = self.probe_every;
            self.probing = true;
            return cap;
        }
        0
    }

    /// The spin found what it waited for after at least `t` nanoseconds.
    fn won(&mut self, t: u64, cap: u64) {
        self.budget = self.budget.max(2 * t + Self::MIN_NS).min(cap);
        self.probe_every = Self::PROBE_FIRST;
        self.probing = false;
    }

    /// The spin ran out.
    fn expired(&mut self) {
        self.budget /= 2;
        if self.budget < Self::MIN_NS {
            self.budget = 0;
        }
        if self.probing {
            self.probe_every = self.probe_every.saturating_mul(2).min(Self::PROBE_MAX);
            self.probe_in = self.probe_every;
            self.probing = false;
        }
    }
}

/// Tuning that rarely changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelConfig {
    /// When to publish and ring.
    pub batching: Batching,
    /// The cap of a blocking call's spin budget, in **microseconds**: how long it may
    /// poll the ring before it sleeps on the doorbell. 0 never spins. Under the default
    /// [`SpinPolicy::Adaptive`] the budget itself is learnt below this cap, so the
    /// default is safe when both ends share one core (the budget falls to 0 after a
    /// few waits) and fast when they do not (it stays where spinning succeeds).
    ///
    /// A time, not a count of polls: 2000 polls were 2000 polls whatever the machine,
    /// and a cliff on a shared core. The clock is read once every 16 polls, never on
    /// a poll that finds its data. A spin never runs past the call's deadline.
    pub spin: u32,
    /// How the spin budget moves under the cap.
    pub spin_policy: SpinPolicy,
    /// The peer is declared gone when it has unconsumed messages and its read position
    /// has not moved for this long (the missed heartbeat). `None`: only transport
    /// signals count.
    pub liveness: Option<Duration>,
    /// The longest a sleeper waits before it re-checks the rings by itself: doorbells
    /// are hints and may be lost, so a lost one costs at most this much latency.
    /// `None`: trust the doorbell.
    pub recheck: Option<Duration>,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        Self {
            batching: Batching::EventIndex,
            spin: DEFAULT_SPIN_US,
            spin_policy: SpinPolicy::Adaptive,
            liveness: Some(Duration::from_secs(5)),
            recheck: Some(Duration::from_millis(100)),
        }
    }
}

/// Where a channel is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelState {
    /// Both sides attached; traffic flows.
    Connected,
    /// The peer is gone (transport signal, closed its ring, or missed the liveness
    /// bound). What it published can still be received; what it did not consume can be
    /// recovered with [`Channel::unconsumed`].
    PeerGone,
    /// The shared memory held an impossible value. What can be recovered can still be
    /// recovered; nothing else is done with the rings.
    Corrupted,
}

/// One ring per direction in one shared region, with a doorbell, batching and counters.
///
/// Single-threaded by design (`&mut self` everywhere): one owner sends and receives.
///
/// # Examples
///
/// See `examples/quickstart.rs` and the mock transport's tests.
#[derive(Debug)]
pub struct Channel<R: SharedRegion, D: Doorbell, C: Clock> {
    // Field order matters: the halves drop before the region they point into.
    tx: Producer,
    rx: Consumer,
    doorbell: D,
    clock: C,
    config: ChannelConfig,
    /// Messages written but not published, their payload bytes, and when the oldest
    /// was written.
    pending: (u32, u32, Duration),
    /// The consumer's last known position and when it was seen to move (liveness).
    progress: (u32, Duration),
    state: ChannelState,
    /// The evidence, once `state` is `Corrupted`: every later call reports it.
    corruption: Corruption,
    /// Fast-path calls left before the next `peer_alive` probe (counting down from
    /// [`PEER_PROBE_SENDS`]), and when the last probe was made.
    probe: (u32, Duration),
    /// The adaptive spin budgets of blocking receives and blocking sends.
    spinners: [Spinner; 2],
    stats: Stats,
    layout: ChannelLayout,
    role: Role,
    region: R,
}

impl<R: SharedRegion, D: Doorbell, C: Clock> Channel<R, D, C> {
    #[cfg(not(loom))]
    /// Attaches both rings of `link` (laid out by the offering transport).
    ///
    /// # Errors
    ///
    /// [`ChannelError::Attach`] when a ring's header or indices are refused.
    pub fn new(link: Link<R, D>, config: ChannelConfig, clock: C) -> Result<Self, ChannelError> {
        let ((tx_off, tx_size), (rx_off, rx_size)) = link.layout.rings(link.role);
        let tx_mem = ring_memory(&link.region, tx_off, tx_size).map_err(ChannelError::Attach)?;
        let rx_mem = ring_memory(&link.region, rx_off, rx_size).map_err(ChannelError::Attach)?;
        let tx = Producer::attach(tx_mem).map_err(ChannelError::Attach)?;
        let rx = Consumer::attach(rx_mem).map_err(ChannelError::Attach)?;
        if tx.data_size() != tx_size || rx.data_size() != rx_size {
            return Err(ChannelError::Attach(
                coresident_ring::AttachError::BadDataSize {
                    data_size: tx.data_size(),
                },
            ));
        }
        Ok(Self::from_halves(
            tx,
            rx,
            link.doorbell,
            link.region,
            link.layout,
            link.role,
            config,
            clock,
        ))
    }

    /// A channel from halves attached by the caller (a kernel that lays its rings out
    /// itself, a test under loom): `tx` sends to the peer, `rx` receives from it, and
    /// `region` is kept alive as long as they are (it is dropped last).
    #[allow(clippy::too_many_arguments)]
    pub fn from_halves(
        tx: Producer,
        rx: Consumer,
        doorbell: D,
        region: R,
        layout: ChannelLayout,
        role: Role,
        config: ChannelConfig,
        clock: C,
    ) -> Self {
        let now = clock.now();
        Self {
            progress: (tx.position(), now),
            tx,
            rx,
            doorbell,
            clock,
            config,
            pending: (0, 0, now),
            state: ChannelState::Connected,
            corruption: Corruption::OutOfBounds,
            probe: (PEER_PROBE_SENDS, now),
            spinners: [Spinner::new(u64::from(config.spin) * 1_000); 2],
            stats: Stats::default(),
            layout,
            role,
            region,
        }
    }

    /// The largest message this side can send.
    pub fn max_message(&self) -> usize {
        self.tx.max_message() as usize
    }

    /// The largest message the peer can send to this side (a receive buffer this large
    /// never sees `BufferTooSmall`).
    pub fn max_incoming(&self) -> usize {
        self.rx.max_message() as usize
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Where the channel is in its life.
    pub fn state(&self) -> ChannelState {
        self.state
    }

    /// The ring sizes and this side's role.
    pub fn layout(&self) -> (ChannelLayout, Role) {
        (self.layout, self.role)
    }

    /// The doorbell (for a transport-specific poll set, say).
    pub fn doorbell(&self) -> &D {
        &self.doorbell
    }

    /// How full the sending ring is, in per mille of its data area: the peer-load hint
    /// of the switching policy (a CPU-starved peer lets its ring fill).
    ///
    /// Uses the producer's cached view of the consumer, and re-reads the consumer's
    /// index (one shared cache line) only when the cache says more than half full, so
    /// a stale cache never makes a healthy peer look loaded.
    pub fn load(&mut self) -> u32 {
        let size = u64::from(self.tx.data_size());
        let permille = |tx: &Producer| {
            let used = tx.position().wrapping_sub(tx.cached_consumer_position());
            ((u64::from(used) * 1000) / size) as u32
        };
        let cached = permille(&self.tx);
        if cached <= 500 || self.tx.consumer_position().is_err() {
            return cached;
        }
        permille(&self.tx)
    }

    // ---------------------------------------------------------------- sending

    /// Sends one message without blocking; it becomes visible to the peer according to
    /// the batching policy (at once, except with [`Batching::Batch`]).
    ///
    /// A dead peer is reported within [`PEER_PROBE_SENDS`] calls whatever it did
    /// before dying, at the first send after [`PEER_PROBE_INTERVAL`] when the peer was
    /// asleep or the ring is full, and at once when the transport's
    /// [`peer_gone_hint`](Doorbell::peer_gone_hint) or doorbell says so.
    ///
    /// # Errors
    ///
    /// [`ChannelError::Full`] (nothing sent), `TooLarge`, `PeerGone`, `Corrupted`,
    /// `Transport`. `Full` and `TooLarge` mean nothing was written; the others may come
    /// after the message was written (the doorbell failed, the peer had closed): it is
    /// then in the ring, and [`unconsumed`](Self::unconsumed) hands it back with the
    /// rest for the network path.
    #[inline]
    pub fn send(&mut self, msg: &[u8]) -> Result<(), ChannelError> {
        self.usable()?;
        self.tick()?;
        match self.try_send(msg) {
            Err(ChannelError::Full) => self.full(),
            r => r,
        }
    }

    /// `send` without the peer probes (a blocking call checks the peer itself).
    #[inline(always)]
    fn try_send(&mut self, msg: &[u8]) -> Result<(), ChannelError> {
        match self.tx.write(KIND_DATA, msg) {
            Ok(()) => {}
            Err(SendError::Full) => {
                // Maybe only our unpublished batch holds the space: publish, retry once.
                self.flush()?;
                self.tx
                    .write(KIND_DATA, msg)
                    .map_err(|e| self.fail_send(e))?;
            }
            Err(e) => return Err(self.fail_send(e)),
        }
        self.wrote(msg.len())
    }

    /// The ring is full: a dead peer never frees it, so ask (rate-limited by time).
    #[cold]
    fn full(&mut self) -> Result<(), ChannelError> {
        self.probe_if_due()?;
        Err(ChannelError::Full)
    }

    /// Sends a message written in place: `fill` gets room for up to `max_len` bytes and
    /// returns how many it wrote. Zero-copy: `fill` may hand
    /// [`Reservation::as_mut_ptr`] to `read(2)` or a device.
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send); `TooLarge` if `fill` claims more than `max_len`.
    pub fn send_in_place(
        &mut self,
        max_len: usize,
        fill: impl FnOnce(&mut Reservation<'_>) -> usize,
    ) -> Result<(), ChannelError> {
        self.usable()?;
        self.tick()?;
        let mut r = match self.tx.reserve(max_len) {
            Ok(r) => r,
            Err(SendError::Full) => {
                // Maybe only our unpublished batch holds the space: publish, retry once.
                self.flush()?;
                match self.tx.reserve(max_len) {
                    Ok(r) => r,
                    Err(SendError::Full) => return self.full(),
                    Err(e) => return Err(self.fail_send(e)),
                }
            }
            Err(e) => return Err(self.fail_send(e)),
        };
        let len = fill(&mut r);
        if let Err(e) = r.commit(KIND_DATA, len) {
            return Err(self.fail_send(e));
        }
        self.wrote(len)
    }

    /// Sends as many of `msgs` as fit without blocking, published together; returns how
    /// many.
    ///
    /// # Errors
    ///
    /// Only when not even the first fits (`Full`) or the channel is unusable.
    pub fn send_batch<M: AsRef<[u8]>>(&mut self, msgs: &[M]) -> Result<usize, ChannelError> {
        self.usable()?;
        self.tick()?;
        let mut n = 0;
        for m in msgs {
            match self.tx.write(KIND_DATA, m.as_ref()) {
                Ok(()) => {
                    self.pending.0 += 1;
                    self.pending.1 = self.pending.1.saturating_add(m.as_ref().len() as u32);
                    self.stats.sent_messages += 1;
                    self.stats.sent_bytes += m.as_ref().len() as u64;
                    n += 1;
                }
                Err(SendError::Full) if n > 0 => break,
                Err(SendError::Full) => {
                    // Maybe only our unpublished batch holds the space.
                    self.flush()?;
                    match self.tx.write(KIND_DATA, m.as_ref()) {
                        Ok(()) => {
                            self.pending.0 += 1;
                            self.pending.1 = self.pending.1.saturating_add(m.as_ref().len() as u32);
                            self.stats.sent_messages += 1;
                            self.stats.sent_bytes += m.as_ref().len() as u64;
                            n += 1;
                        }
                        Err(SendError::Full) => return self.full().map(|()| n),
                        Err(e) => return Err(self.fail_send(e)),
                    }
                }
                Err(e) => return Err(self.fail_send(e)),
            }
        }
        self.flush()?;
        Ok(n)
    }

    /// Sends one message, waiting for space: spin, then sleep on the doorbell until the
    /// consumer has freed exactly the space this message needs.
    ///
    /// # Errors
    ///
    /// `TimedOut`, `TooLarge`, `PeerGone` (also when the liveness bound passes),
    /// `Corrupted`, `Transport`.
    pub fn send_blocking(
        &mut self,
        msg: &[u8],
        timeout: Option<Duration>,
    ) -> Result<(), ChannelError> {
        self.usable()?;
        let deadline = timeout.map(|t| self.clock.now() + t);
        loop {
            let spun = self.spin(SEND, deadline, |ch| match ch.try_send(msg) {
                Err(ChannelError::Full) => None,
                other => Some(other),
            });
            if let Some(r) = spun {
                return r;
            }
            // Every round, whatever the peer does: the deadline, the liveness bound
            // and the transport's word (issue 17: no peer can keep this call past its
            // timeout).
            let left = self.checkpoint(deadline)?;
            if self.state != ChannelState::Connected {
                return self.usable();
            }
            match self
                .tx
                .arm_space(self.space_wanted(msg.len()))
                .map_err(|e| self.fail_send(e))?
            {
                Readiness::Ready => continue,
                Readiness::Armed => {
                    self.sleep(left, None)?;
                }
            }
        }
    }

    /// Publishes what is pending and rings the doorbell if the peer waits for it (or
    /// always, under [`Batching::Always`]).
    ///
    /// # Errors
    ///
    /// `PeerGone`, `Corrupted`, `Transport`.
    pub fn flush(&mut self) -> Result<(), ChannelError> {
        if self.pending.0 == 0 {
            return Ok(());
        }
        let notify = self.tx.publish().map_err(|e| self.fail_send(e))?;
        self.pending.0 = 0;
        self.pending.1 = 0;
        self.stats.publishes += 1;
        let notify = if self.config.batching == Batching::Always {
            Notify::Required
        } else {
            notify
        };
        self.doorbell_for(notify)
    }

    /// The periodic duty of an idle sender: publishes a batch whose latency bound has
    /// passed, checks the peer's liveness bound, and asks the transport whether the
    /// peer is there (at most every [`PEER_PROBE_INTERVAL`]).
    ///
    /// # Errors
    ///
    /// `PeerGone` when the peer is found gone, `Corrupted`, `Transport`.
    pub fn poll(&mut self) -> Result<(), ChannelError> {
        self.usable()?;
        if self.doorbell.peer_gone_hint() {
            return Err(self.gone());
        }
        let now = self.clock.now();
        let age = now.saturating_sub(self.pending.2);
        if self
            .config
            .batching
            .due(self.pending.0, self.pending.1, age)
        {
            self.flush()?;
        }
        self.check_liveness(now)?;
        self.probe_if_due()
    }

    // -------------------------------------------------------------- receiving

    /// Receives one message into `buf` without blocking; returns its length.
    ///
    /// # Errors
    ///
    /// `Empty`, `BufferTooSmall` (the message stays), `PeerGone` once the peer is gone
    /// and everything it published was received, `Corrupted`.
    #[inline]
    pub fn recv(&mut self, buf: &mut [u8]) -> Result<usize, ChannelError> {
        match self.try_recv(buf) {
            Err(ChannelError::Empty) => self.recv_empty(buf),
            r => r,
        }
    }

    /// `recv` without the peer probes.
    #[inline(always)]
    fn try_recv(&mut self, buf: &mut [u8]) -> Result<usize, ChannelError> {
        match self.rx.recv(buf) {
            Ok(got) => {
                self.stats.received_messages += 1;
                self.stats.received_bytes += got.len as u64;
                // The message is the caller's now: a failed doorbell must not turn it
                // into an error (it would be lost). The failure has marked the channel;
                // the next call reports it.
                let _ = self.doorbell_for(got.notify);
                Ok(got.len)
            }
            Err(RecvError::Empty) => Err(ChannelError::Empty),
            Err(e) => Err(self.fail_recv(e)),
        }
    }

    /// Nothing to receive: `Empty`, or `PeerGone` once the peer is known gone (asked
    /// as `send` asks) and everything it published has been received. Out of line: a
    /// receiver that polls an empty ring is not in a hurry, and the hot `recv` stays
    /// small.
    #[cold]
    #[inline(never)]
    fn recv_empty(&mut self, buf: &mut [u8]) -> Result<usize, ChannelError> {
        match self.state {
            ChannelState::Connected => {
                if self.tick().is_ok() {
                    return Err(ChannelError::Empty);
                }
                // Gone just now. It published nothing after dying, and what it
                // published before is visible by now: one more look.
                match self.try_recv(buf) {
                    Err(ChannelError::Empty) => Err(ChannelError::PeerGone),
                    r => r,
                }
            }
            ChannelState::PeerGone => Err(ChannelError::PeerGone),
            ChannelState::Corrupted => Err(ChannelError::Empty),
        }
    }

    /// Receives up to `max` messages in place, handing each to `f`, and releases their
    /// space with one index store; returns how many.
    ///
    /// # Errors
    ///
    /// As [`recv`](Self::recv), when not even one message was there.
    pub fn recv_batch(
        &mut self,
        max: usize,
        mut f: impl FnMut(&View<'_>),
    ) -> Result<usize, ChannelError> {
        let mut bytes = 0u64;
        match self.rx.recv_batch(max, |v| {
            bytes += v.len() as u64;
            f(v)
        }) {
            Ok((n, notify)) => {
                self.stats.received_messages += n as u64;
                self.stats.received_bytes += bytes;
                // As in `recv`: the messages were handed over; report a doorbell failure
                // at the next call, not by losing them.
                let _ = self.doorbell_for(notify);
                Ok(n)
            }
            Err(RecvError::Empty) => match self.state {
                ChannelState::Connected => {
                    self.tick()?;
                    Err(ChannelError::Empty)
                }
                ChannelState::PeerGone => Err(ChannelError::PeerGone),
                ChannelState::Corrupted => Err(ChannelError::Empty),
            },
            Err(e) => Err(self.fail_recv(e)),
        }
    }

    /// Receives one message, waiting for it: spin, then sleep on the doorbell, woken
    /// exactly when the producer's publish crosses our request. Publishes our own
    /// pending batch first (the peer may be waiting for it to answer).
    ///
    /// # Errors
    ///
    /// `TimedOut`, `BufferTooSmall`, `PeerGone` (after receiving everything the peer
    /// published), `Corrupted`, `Transport`.
    pub fn recv_blocking(
        &mut self,
        buf: &mut [u8],
        timeout: Option<Duration>,
    ) -> Result<usize, ChannelError> {
        let deadline = timeout.map(|t| self.clock.now() + t);
        let mut woke = false;
        loop {
            if self.state == ChannelState::Connected {
                match self.flush() {
                    // Marked gone: what the peer published is still received first.
                    Ok(()) | Err(ChannelError::PeerGone) => {}
                    Err(e) => return Err(e),
                }
            }
            let spun = self.spin(RECV, deadline, |ch| match ch.try_recv(buf) {
                Err(ChannelError::Empty) => None,
                other => Some(other),
            });
            if let Some(r) = spun {
                return r;
            }
            match self.state {
                ChannelState::Connected => {}
                // Everything the peer published has been received.
                ChannelState::PeerGone => return Err(ChannelError::PeerGone),
                ChannelState::Corrupted => return Err(ChannelError::Corrupted(self.corruption)),
            }
            if woke {
                // Woken, yet nothing arrived: a duplicated or stale doorbell.
                self.stats.spurious_wakeups += 1;
                woke = false;
            }
            // Every round, whatever the peer does: the deadline, the liveness bound and
            // the transport's word (issue 17: no peer can keep this call past its
            // timeout). A peer found gone here gets one more look at the top.
            let left = match self.checkpoint(deadline) {
                Ok(left) => left,
                Err(ChannelError::PeerGone) => continue,
                Err(e) => return Err(e),
            };
            let (want, nap) = self.data_wanted();
            match self.rx.arm_data(want).map_err(|e| self.fail_recv(e))? {
                Readiness::Ready => {}
                Readiness::Armed => match self.sleep(left, nap) {
                    Ok(rung) => woke = rung,
                    Err(ChannelError::PeerGone) => {}
                    Err(e) => return Err(e),
                },
            }
        }
    }

    // -------------------------------------------------------------- lifecycle

    /// Hands every message sent but not consumed by the peer to `f`, oldest first, and
    /// returns how many: after the peer died, moved away or corrupted the ring, these
    /// are what must go out again over the network path. The ring itself is the
    /// retransmit buffer; a message the peer read but had not yet acknowledged may be
    /// among them, so the receiving side drops duplicates by sequence number.
    ///
    /// # Errors
    ///
    /// `Corrupted` at the first frame the peer made unreadable; the ones before it
    /// were handed out.
    pub fn unconsumed(&mut self, mut f: impl FnMut(&View<'_>)) -> Result<usize, ChannelError> {
        let n = self
            .tx
            .for_each_unconsumed(|v| f(v))
            .map_err(ChannelError::from)?;
        self.stats.resent_messages += n as u64;
        Ok(n)
    }

    /// Marks the peer gone (the control path learnt it migrated away, say) and counts a
    /// fallback. Receiving what it published still works.
    pub fn peer_left(&mut self) {
        if self.state == ChannelState::Connected {
            self.state = ChannelState::PeerGone;
            self.stats.fallbacks += 1;
        }
    }

    /// Publishes what is pending and closes both rings' halves; returns the region.
    pub fn close(mut self) -> R {
        let _ = self.flush();
        let Self {
            tx,
            rx,
            region,
            doorbell,
            ..
        } = self;
        if let Ok(n) = tx.close() {
            if n.is_required() {
                let _ = doorbell.ring();
            }
        }
        let _ = rx.close();
        region
    }

    // -------------------------------------------------------------- internals

    #[inline(always)]
    fn usable(&self) -> Result<(), ChannelError> {
        match self.state {
            ChannelState::Connected => Ok(()),
            ChannelState::PeerGone => Err(ChannelError::PeerGone),
            ChannelState::Corrupted => Err(ChannelError::Corrupted(self.corruption)),
        }
    }

    #[inline(always)]
    fn wrote(&mut self, len: usize) -> Result<(), ChannelError> {
        self.stats.sent_messages += 1;
        self.stats.sent_bytes += len as u64;
        self.pending.0 += 1;
        self.pending.1 = self.pending.1.saturating_add(len as u32);
        // The per-message policies publish at once and never read the clock; a batch
        // reads it once per message (its first message starts the latency bound).
        let due = match self.config.batching {
            Batching::Always | Batching::EventIndex => true,
            b => {
                let now = self.clock.now();
                if self.pending.0 == 1 {
                    self.pending.2 = now;
                }
                b.due(
                    self.pending.0,
                    self.pending.1,
                    now.saturating_sub(self.pending.2),
                )
            }
        };
        if due {
            self.flush()?;
        }
        Ok(())
    }

    #[inline(always)]
    fn doorbell_for(&mut self, notify: Notify) -> Result<(), ChannelError> {
        if notify.is_required() {
            self.stats.doorbells_rung += 1;
            self.doorbell.ring().map_err(|e| self.fail_transport(e))?;
            // A sleeping peer that died answers no doorbell: already a system call
            // here, so a clock read to rate-limit the probe is cheap.
            self.probe_if_due()
        } else {
            self.stats.doorbells_suppressed += 1;
            Ok(())
        }
    }

    /// The room a blocked sender waits for: the message itself, or under
    /// [`Batching::Batch`] the largest message (half the ring), so the consumer wakes
    /// it once per half ring instead of once per message (Hyper-V's `pending_send_sz`
    /// lesson, and what keeps doorbells rare on one shared core).
    fn space_wanted(&self, len: usize) -> usize {
        match self.config.batching {
            Batching::Batch { .. } => len.max(self.max_message()),
            _ => len,
        }
    }

    /// The bytes a blocked receiver waits for, and the longest nap: any frame under
    /// the per-message policies; under [`Batching::Batch`] a batch's bytes (at most half
    /// the ring), napping at most the batch's latency bound so a short last batch is
    /// still received within it.
    fn data_wanted(&self) -> (u32, Option<Duration>) {
        match self.config.batching {
            Batching::Batch {
                bytes, max_delay, ..
            } => (bytes.max(1).min(self.rx.data_size() / 2), Some(max_delay)),
            _ => (1, None),
        }
    }

    /// One look, then polls for up to the direction's spin budget (never past
    /// `deadline`): `Some` with `attempt`'s answer as soon as it has one. Learns from
    /// the outcome ([`SpinPolicy::Adaptive`]).
    #[inline(always)]
    fn spin<T>(
        &mut self,
        dir: usize,
        deadline: Option<Duration>,
        mut attempt: impl FnMut(&mut Self) -> Option<T>,
    ) -> Option<T> {
        if let Some(v) = attempt(self) {
            return Some(v);
        }
        let cap = u64::from(self.config.spin) * 1_000;
        let limit = self.spinners[dir].limit(cap, self.config.spin_policy);
        if limit == 0 {
            return None;
        }
        // Time runs from the first clock read, 16 polls in: a spin that wins sooner
        // reads no clock at all. `spent` is a lower bound of the time spun.
        let mut start = None;
        let mut spent = 0u64;
        loop {
            for _ in 0..SPIN_POLLS_PER_CLOCK {
                coresident_ring::sync::spin_loop();
                if let Some(v) = attempt(self) {
                    self.spinners[dir].won(spent, cap);
                    self.stats.spins_won += 1;
                    return Some(v);
                }
            }
            let now = self.clock.now();
            let t0 = *start.get_or_insert(now);
            spent = u64::try_from(now.saturating_sub(t0).as_nanos()).unwrap_or(u64::MAX);
            if spent >= limit || deadline.is_some_and(|d| now >= d) {
                self.spinners[dir].expired();
                self.stats.spins_expired += 1;
                return None;
            }
        }
    }

    /// The checks a blocking call makes on every round: `TimedOut` once the deadline
    /// has passed, `PeerGone` when the liveness bound passed or the transport says the
    /// peer is gone. Returns the time left (`None`: no deadline).
    fn checkpoint(&mut self, deadline: Option<Duration>) -> Result<Option<Duration>, ChannelError> {
        let now = self.clock.now();
        let left = match deadline {
            Some(d) if d <= now => return Err(ChannelError::TimedOut),
            Some(d) => Some(d - now),
            None => None,
        };
        self.check_liveness(now)?;
        if self.doorbell.peer_gone_hint() || !self.doorbell.peer_alive() {
            return Err(self.gone());
        }
        self.probe = (PEER_PROBE_SENDS, now);
        Ok(left)
    }

    /// Sleeps on the doorbell until it rings, `left` passes or the peer goes; true
    /// when the doorbell rang.
    fn sleep(
        &mut self,
        left: Option<Duration>,
        nap: Option<Duration>,
    ) -> Result<bool, ChannelError> {
        // Wake up in time to check liveness, and to re-check the rings in case a
        // doorbell was lost.
        let timeout = [left, nap, self.config.liveness, self.config.recheck]
            .into_iter()
            .flatten()
            .min();
        match self
            .doorbell
            .wait(timeout)
            .map_err(|e| self.fail_transport(e))?
        {
            Wake::Rung => {
                self.stats.wakeups += 1;
                Ok(true)
            }
            Wake::TimedOut => Ok(false),
            Wake::PeerGone => Err(self.gone()),
        }
    }

    /// Counts one fast-path call; every [`PEER_PROBE_SENDS`] calls, asks the transport.
    /// The hint is asked every time (a load or two by its contract).
    #[inline(always)]
    fn tick(&mut self) -> Result<(), ChannelError> {
        if self.doorbell.peer_gone_hint() {
            return Err(self.gone());
        }
        self.probe.0 = self.probe.0.wrapping_sub(1);
        if self.probe.0 == 0 {
            return self.probe_peer();
        }
        Ok(())
    }

    /// Asks the transport whether the peer is there, if [`PEER_PROBE_INTERVAL`] passed
    /// since the last time.
    #[cold]
    fn probe_if_due(&mut self) -> Result<(), ChannelError> {
        if self.state != ChannelState::Connected {
            return self.usable();
        }
        if self.clock.now().saturating_sub(self.probe.1) >= PEER_PROBE_INTERVAL {
            return self.probe_peer();
        }
        Ok(())
    }

    #[cold]
    #[inline(never)]
    fn probe_peer(&mut self) -> Result<(), ChannelError> {
        self.probe = (PEER_PROBE_SENDS, self.clock.now());
        if self.doorbell.peer_alive() {
            Ok(())
        } else {
            Err(self.gone())
        }
    }

    fn check_liveness(&mut self, now: Duration) -> Result<(), ChannelError> {
        let Some(bound) = self.config.liveness else {
            return Ok(());
        };
        if self.state != ChannelState::Connected {
            return Ok(());
        }
        let read = match self.tx.consumer_position() {
            Ok(r) => r,
            Err(e) => return Err(self.fail_send(e)),
        };
        if read != self.progress.0 || read == self.tx.position() {
            // The peer moved, or has nothing to do: it is alive as far as we can tell.
            self.progress = (read, now);
            return Ok(());
        }
        if now.saturating_sub(self.progress.1) >= bound {
            return Err(self.gone());
        }
        Ok(())
    }

    #[cold]
    fn gone(&mut self) -> ChannelError {
        self.peer_left();
        ChannelError::PeerGone
    }

    #[cold]
    fn fail_send(&mut self, e: SendError) -> ChannelError {
        match e {
            SendError::Corrupted(c) => self.corrupted(c),
            SendError::Closed => {
                self.gone();
            }
            _ => {}
        }
        ChannelError::from(e)
    }

    #[cold]
    fn fail_recv(&mut self, e: RecvError) -> ChannelError {
        match e {
            RecvError::Corrupted(c) => self.corrupted(c),
            RecvError::Closed => {
                self.gone();
            }
            _ => {}
        }
        ChannelError::from(e)
    }

    #[cold]
    fn fail_transport(&mut self, e: TransportError) -> ChannelError {
        if e == TransportError::PeerGone {
            self.gone();
        }
        ChannelError::from(e)
    }

    fn corrupted(&mut self, c: Corruption) {
        if self.state != ChannelState::Corrupted {
            if self.state == ChannelState::Connected {
                self.stats.fallbacks += 1;
            }
            self.state = ChannelState::Corrupted;
            self.corruption = c;
            self.stats.corruptions += 1;
        }
    }
}
