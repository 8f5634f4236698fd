//! Doorbells, clocks, and the batching policies that decide when to publish and ring.
//!
//! A doorbell is a hint, never the source of truth: it may be lost, duplicated or
//! spurious, and the ring's indices alone decide what is there. What makes doorbells
//! rare is the ring's event-index protocol (Xen `io/ring.h`, virtio
//! `VIRTIO_RING_F_EVENT_IDX`): a side rings only when its publish or release crosses the
//! point the sleeping peer recorded, so a busy peer costs no doorbells at all. The
//! batching policies below add the other half of the study's lesson 3: publishing less
//! often, so even a peer that sleeps between batches is woken once per batch.

use crate::TransportError;
use core::time::Duration;

/// How a wait on the doorbell ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    /// The doorbell rang (or may have: treat it as a hint and re-check).
    Rung,
    /// The timeout passed.
    TimedOut,
    /// The transport saw the peer go away.
    PeerGone,
}

/// One side's doorbell: an event channel, an eventfd pair, a flag in a mock.
pub trait Doorbell {
    /// Rings the peer's doorbell. May coalesce with an earlier ring not yet consumed.
    ///
    /// # Errors
    ///
    /// [`TransportError::PeerGone`] when the transport knows the peer is gone; other
    /// errors when the doorbell is broken.
    fn ring(&self) -> Result<(), TransportError>;

    /// Blocks until this side's doorbell rings, `timeout` passes (`None`: forever), or
    /// the peer goes away. Consumes the ring.
    ///
    /// # Errors
    ///
    /// When the doorbell is broken.
    fn wait(&self, timeout: Option<Duration>) -> Result<Wake, TransportError>;

    /// Whether the transport still believes the peer is there: the authoritative check
    /// (a `poll` of a socket, Xen's event-channel status). It may make a system call;
    /// the channel asks it at a bounded rate: before every sleep, every
    /// [`PEER_PROBE_SENDS`](crate::PEER_PROBE_SENDS) fast-path calls, and on the slow
    /// paths (a full ring, a doorbell rung, [`Channel::poll`](crate::Channel::poll)) at
    /// most every [`PEER_PROBE_INTERVAL`](crate::PEER_PROBE_INTERVAL).
    fn peer_alive(&self) -> bool {
        true
    }

    /// Whether the transport already knows, without asking anyone, that the peer is
    /// gone: a flag an earlier wait or probe set, or a live byte in shared memory that
    /// the peer's death clears (Xen's unmap-notify). The channel asks it on **every**
    /// send, so it must cost a load or two: no system call, no lock, no hypercall.
    ///
    /// `false` means "not known gone", never "alive": [`peer_alive`](Self::peer_alive)
    /// stays the authoritative check. The default knows nothing and costs nothing.
    #[inline(always)]
    fn peer_gone_hint(&self) -> bool {
        false
    }
}

/// A monotonic clock for latency bounds and liveness, so the core stays `no_std`.
pub trait Clock {
    /// Time since an arbitrary fixed origin.
    fn now(&self) -> Duration;
}

/// The standard library's monotonic clock.
#[cfg(feature = "std")]
#[derive(Clone, Copy, Debug)]
pub struct StdClock {
    origin: std::time::Instant,
}

#[cfg(feature = "std")]
impl Default for StdClock {
    fn default() -> Self {
        Self {
            origin: std::time::Instant::now(),
        }
    }
}

#[cfg(feature = "std")]
impl Clock for StdClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// When the producer publishes what it wrote, and when it rings the doorbell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Batching {
    /// Publish every message and ring for every message, whether or not the peer waits:
    /// XenLoop's behaviour, the baseline the study measured.
    Always,
    /// Publish every message; ring only when the peer asked (event index).
    EventIndex,
    /// Publish when `frames` messages or `bytes` payload bytes are pending, or when the
    /// oldest pending message is `max_delay` old (checked at each send and by
    /// [`Channel::poll`](crate::Channel::poll)); ring only when the peer asked. A
    /// blocking receive or a full ring also publishes.
    Batch {
        /// Pending messages that force a publish (at least 1).
        frames: u32,
        /// Pending payload bytes that force a publish.
        bytes: u32,
        /// The latency bound of a pending message.
        max_delay: Duration,
    },
}

impl Batching {
    /// A batching policy that suits streaming: 32 messages, 64 KiB, 50 µs.
    pub const STREAM: Self = Self::Batch {
        frames: 32,
        bytes: 64 * 1024,
        max_delay: Duration::from_micros(50),
    };

    /// Whether pending work must be published now.
    pub(crate) fn due(&self, frames: u32, bytes: u32, age: Duration) -> bool {
        match *self {
            Self::Always | Self::EventIndex => frames > 0,
            Self::Batch {
                frames: f,
                bytes: b,
                max_delay,
            } => frames > 0 && (frames >= f.max(1) || bytes >= b || age >= max_delay),
        }
    }
}

/// How a blocking call's spin budget moves under its cap
/// ([`ChannelConfig::spin`](crate::ChannelConfig::spin)).
///
/// A blocking call first polls the ring for up to its budget, then sleeps on the
/// doorbell. Spinning pays when the peer runs on another core and answers within the
/// budget: no doorbell, no sleep, no wake-up. It costs when both ends share one core:
/// the peer cannot run while we spin, so every spin runs out, and it runs out *before*
/// the peer can even start (the newcomer of issue 12 measured a 125 µs round trip
/// this way, against 8.5 µs without spinning and 14 µs over TCP).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum SpinPolicy {
    /// Learn the budget from what spinning achieved, separately for receiving and for
    /// sending, between 0 and the cap. After the shape of glibc's adaptive mutexes
    /// (`PTHREAD_MUTEX_ADAPTIVE_NP`: spin up to twice what recently sufficed), with
    /// failure pulling the other way, because here a failed spin means the peer could
    /// not run:
    /// - a spin that ends with data (or space) after `t` raises the budget to at least
    ///   `2t + 1 µs` (capped);
    /// - a spin that runs out halves the budget; below 1 µs it is 0 (sleep at once);
    /// - at 0, one wait in `k` still spins the whole cap, to notice that the peer has
    ///   moved to another core; `k` starts at 8 and doubles after each probe that
    ///   fails, up to 1024, so one shared core pays about `cap / 1024` per wait.
    ///
    /// It starts at the cap: two cores spin from the first message; one shared core
    /// loses about twice the cap in all over its first few waits, then almost nothing.
    #[default]
    Adaptive,
    /// Always spin up to the whole cap (the behaviour of a plain spin count, in time).
    Fixed,
}
