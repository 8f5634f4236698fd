//! An in-process transport for coresident, with fault injection at any step.
//!
//! Both sides of a [`MockTransport`] live in one process: the region is an aligned heap
//! allocation both [`Link`]s point into, and the doorbells are a mutex and a condition
//! variable with counters. [`Faults`] breaks things on purpose:
//!
//! | fault | what the other side sees |
//! |---|---|
//! | [`Faults::kill`] | `Wake::PeerGone`, `peer_alive() == false`, `ring()` fails |
//! | [`Faults::migrate`] | the same, plus [`Faults::migrated`] for the control path |
//! | [`Faults::poke`] | any `u32` of the shared region rewritten |
//! | [`Faults::drop_doorbells`] | the next `n` rings vanish |
//! | [`Faults::duplicate_doorbells`] | every ring counts twice |
//! | [`Faults::delay_doorbells`] | rings are held until [`Faults::release_delayed`] |
//!
//! Used by the core's tests (proptest end to end, fault tests) and by the conformance
//! suite.
//!
//! Empty under `--cfg loom`: its region is raw memory, which loom cannot model (the
//! loom tests build their rings on loom memory directly).
#![cfg(not(loom))]

use coresident::{
    init_region, ChannelLayout, Doorbell, Link, PendingOffer, Role, SharedRegion, Transport,
    TransportError, Wake,
};
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::collections::HashMap;
use std::fmt;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// An aligned, zeroed heap allocation shared by both sides.
#[derive(Debug)]
struct Allocation {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: the allocation is only reached through raw pointers (atomics, volatile
// copies); sharing the pointer between threads is what it is for.
unsafe impl Send for Allocation {}
// SAFETY: as above.
unsafe impl Sync for Allocation {}

impl Allocation {
    fn new(len: usize) -> Self {
        let layout = Layout::from_size_align(len.max(1), 4096).expect("region size overflows");
        // SAFETY: `layout` has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        Self { ptr, layout }
    }
}

impl Drop for Allocation {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from `alloc_zeroed` with this `layout`, and is freed once.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// One side's view of the shared region.
#[derive(Debug, Clone)]
pub struct MockRegion {
    alloc: Arc<Allocation>,
    len: usize,
}

// SAFETY:
// - the allocation is `len` bytes (rounded up), page-aligned (so 128-aligned), valid
//   for reads and writes until the last `Arc` drops, which is after this value;
// - nothing here makes references to its bytes: the ring and `Faults::poke` use atomics
//   and volatile copies only.
unsafe impl SharedRegion for MockRegion {
    fn as_ptr(&self) -> *mut u8 {
        self.alloc.ptr.as_ptr()
    }
    fn len(&self) -> usize {
        self.len
    }
}

#[derive(Debug, Default)]
struct BellState {
    /// Rings waiting to be consumed, per side.
    pending: [u64; 2],
    /// Rings each side rang (delivered, dropped or not).
    rung: [u64; 2],
    /// Whether each side is alive.
    alive: [bool; 2],
    /// Whether each side migrated away.
    migrated: [bool; 2],
    /// Rings still to drop.
    drop_next: u64,
    /// Rings dropped.
    dropped: u64,
    /// Count each ring twice.
    duplicate: bool,
    /// Hold rings back.
    delay: bool,
    /// Held rings, per destination side.
    delayed: [u64; 2],
}

#[derive(Debug)]
struct Bells {
    state: Mutex<BellState>,
    cv: Condvar,
}

impl Bells {
    fn lock(&self) -> MutexGuard<'_, BellState> {
        // A poisoned lock means a test thread panicked; keep going for its report.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One side's doorbell.
#[derive(Debug, Clone)]
pub struct MockDoorbell {
    bells: Arc<Bells>,
    side: usize,
}

impl Doorbell for MockDoorbell {
    fn ring(&self) -> Result<(), TransportError> {
        let peer = 1 - self.side;
        let mut s = self.bells.lock();
        s.rung[self.side] += 1;
        if !s.alive[peer] || !s.alive[self.side] {
            return Err(TransportError::PeerGone);
        }
        if s.drop_next > 0 {
            s.drop_next -= 1;
            s.dropped += 1;
            return Ok(());
        }
        let n = if s.duplicate { 2 } else { 1 };
        if s.delay {
            s.delayed[peer] += n;
        } else {
            s.pending[peer] += n;
            self.bells.cv.notify_all();
        }
        Ok(())
    }

    fn wait(&self, timeout: Option<Duration>) -> Result<Wake, TransportError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let peer = 1 - self.side;
        let mut s = self.bells.lock();
        loop {
            if s.pending[self.side] > 0 {
                // Like an eventfd read without EFD_SEMAPHORE: one wake-up takes every
                // pending ring.
                s.pending[self.side] = 0;
                return Ok(Wake::Rung);
            }
            if !s.alive[peer] {
                return Ok(Wake::PeerGone);
            }
            s = match deadline {
                None => self.bells.cv.wait(s).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Ok(Wake::TimedOut);
                    }
                    self.bells
                        .cv
                        .wait_timeout(s, d - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
    }

    fn peer_alive(&self) -> bool {
        self.bells.lock().alive[1 - self.side]
    }
}

/// The fault-injection handle of one mock channel.
#[derive(Debug, Clone)]
pub struct Faults {
    bells: Arc<Bells>,
    region: MockRegion,
    layout: ChannelLayout,
}

/// Which side of a mock channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The side that offered.
    Offerer = 0,
    /// The side that accepted.
    Acceptor = 1,
}

impl Faults {
    /// Kills `side`: the other side's waits return `PeerGone`, rings fail.
    pub fn kill(&self, side: Side) {
        self.bells.lock().alive[side as usize] = false;
        self.bells.cv.notify_all();
    }

    /// `side` migrates to another host: as `kill`, and [`migrated`](Self::migrated)
    /// says so (the control path's residency update).
    pub fn migrate(&self, side: Side) {
        let mut s = self.bells.lock();
        s.alive[side as usize] = false;
        s.migrated[side as usize] = true;
        self.bells.cv.notify_all();
    }

    /// Whether `side` migrated away.
    pub fn migrated(&self, side: Side) -> bool {
        self.bells.lock().migrated[side as usize]
    }

    /// Writes `value` into the `u32` at byte `offset` of the shared region, as a
    /// hostile or broken peer would.
    ///
    /// # Panics
    ///
    /// If `offset` is not a 4-aligned offset inside the region (a test bug).
    pub fn poke(&self, offset: usize, value: u32) {
        assert!(
            offset % 4 == 0 && offset + 4 <= self.region.len,
            "poke outside the region"
        );
        // SAFETY: in bounds and 4-aligned (asserted, base page-aligned); the region is
        // alive (we hold an `Arc`) and only ever accessed atomically or volatilely.
        let a = unsafe { AtomicU32::from_ptr(self.region.as_ptr().add(offset).cast::<u32>()) };
        a.store(value, Ordering::SeqCst);
    }

    /// Offset of the ring `from` sends on, within the region.
    pub fn ring_offset(&self, from: Side) -> usize {
        match from {
            Side::Offerer => 0,
            Side::Acceptor => self.layout.second_ring_offset(),
        }
    }

    /// Drops the next `n` doorbells.
    pub fn drop_doorbells(&self, n: u64) {
        self.bells.lock().drop_next = n;
    }

    /// Counts every doorbell twice (or stops doing so).
    pub fn duplicate_doorbells(&self, on: bool) {
        self.bells.lock().duplicate = on;
    }

    /// Holds doorbells back (or stops doing so; held ones stay held until released).
    pub fn delay_doorbells(&self, on: bool) {
        self.bells.lock().delay = on;
    }

    /// Delivers the held doorbells.
    pub fn release_delayed(&self) {
        let mut s = self.bells.lock();
        for side in 0..2 {
            s.pending[side] += std::mem::take(&mut s.delayed[side]);
        }
        self.bells.cv.notify_all();
    }

    /// Doorbells `side` rang so far.
    pub fn rung(&self, side: Side) -> u64 {
        self.bells.lock().rung[side as usize]
    }

    /// Doorbells dropped so far.
    pub fn dropped(&self) -> u64 {
        self.bells.lock().dropped
    }
}

/// Builds a connected pair of links on one mock region: `(offerer, acceptor, faults)`.
///
/// # Panics
///
/// If `layout`'s sizes are not valid ring sizes (a test bug).
pub fn pair(
    layout: ChannelLayout,
) -> (
    Link<MockRegion, MockDoorbell>,
    Link<MockRegion, MockDoorbell>,
    Faults,
) {
    let len = layout.region_len();
    let region = MockRegion {
        alloc: Arc::new(Allocation::new(len)),
        len,
    };
    init_region(&region, layout).expect("invalid ring sizes");
    let bells = Arc::new(Bells {
        state: Mutex::new(BellState {
            alive: [true; 2],
            ..BellState::default()
        }),
        cv: Condvar::new(),
    });
    let link = |side: usize, role| Link {
        region: region.clone(),
        doorbell: MockDoorbell {
            bells: bells.clone(),
            side,
        },
        role,
        layout,
    };
    let (a, b) = (link(0, Role::Offerer), link(1, Role::Acceptor));
    (
        a,
        b,
        Faults {
            bells,
            region,
            layout,
        },
    )
}

/// Rendezvous bytes: magic, version, id.
const MAGIC: &[u8; 4] = b"MOCK";
const VERSION: u8 = 1;
const RENDEZVOUS_LEN: usize = 4 + 1 + 8;

/// Why a mock rendezvous failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MockError {
    /// The rendezvous buffer is too small for the 13 bytes.
    BufferTooSmall,
    /// The bytes are not a mock rendezvous (wrong length or magic).
    Malformed,
    /// Another protocol version.
    VersionMismatch(u8),
    /// No offer with this id (or already accepted).
    UnknownOffer(u64),
    /// The sizes are not valid ring sizes.
    BadLayout,
    /// Nobody accepted in time.
    TimedOut,
}

impl fmt::Display for MockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BufferTooSmall => f.write_str("rendezvous buffer too small"),
            Self::Malformed => f.write_str("not a mock rendezvous"),
            Self::VersionMismatch(v) => {
                write!(f, "mock rendezvous version {v}, expected {VERSION}")
            }
            Self::UnknownOffer(id) => write!(f, "no pending offer {id}"),
            Self::BadLayout => f.write_str("invalid ring sizes"),
            Self::TimedOut => f.write_str("nobody accepted the offer in time"),
        }
    }
}

impl std::error::Error for MockError {}

#[derive(Debug, Default)]
struct Registry {
    next: u64,
    /// Offered, not yet accepted: the acceptor's link and the faults handle.
    offers: HashMap<u64, (Link<MockRegion, MockDoorbell>, Faults)>,
    /// Accepted offers.
    accepted: HashMap<u64, Faults>,
}

/// An in-process transport: offers and accepts through a shared registry. Clones
/// share it, so one clone can offer and another accept, on any thread.
#[derive(Debug, Clone, Default)]
pub struct MockTransport {
    registry: Arc<(Mutex<Registry>, Condvar)>,
}

impl MockTransport {
    /// A new transport with an empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The faults handle of an accepted offer.
    pub fn faults(&self, id: u64) -> Option<Faults> {
        self.registry.0.lock().ok()?.accepted.get(&id).cloned()
    }
}

/// An offer waiting for [`MockTransport::accept`].
#[derive(Debug)]
pub struct MockPending {
    id: u64,
    link: Option<Link<MockRegion, MockDoorbell>>,
    registry: Arc<(Mutex<Registry>, Condvar)>,
}

impl MockPending {
    /// The offer's id (also in the rendezvous bytes).
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl PendingOffer for MockPending {
    type Region = MockRegion;
    type Doorbell = MockDoorbell;
    type Error = MockError;

    fn complete(
        mut self,
        timeout: Option<Duration>,
    ) -> Result<Link<MockRegion, MockDoorbell>, MockError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let (lock, cv) = &*self.registry;
        let mut r = lock.lock().unwrap_or_else(|p| p.into_inner());
        while !r.accepted.contains_key(&self.id) {
            r = match deadline {
                None => cv.wait(r).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Err(MockError::TimedOut);
                    }
                    cv.wait_timeout(r, d - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
        self.link.take().ok_or(MockError::UnknownOffer(self.id))
    }
}

impl Transport for MockTransport {
    type Region = MockRegion;
    type Doorbell = MockDoorbell;
    type Pending = MockPending;
    type Error = MockError;

    fn offer(
        &mut self,
        layout: ChannelLayout,
        out: &mut [u8],
    ) -> Result<(MockPending, usize), MockError> {
        let out = out
            .get_mut(..RENDEZVOUS_LEN)
            .ok_or(MockError::BufferTooSmall)?;
        let ok = |s: u32| {
            s.is_power_of_two() && (coresident::ring::MIN_DATA_SIZE..=1 << 26).contains(&s)
        };
        if !ok(layout.to_acceptor) || !ok(layout.to_offerer) {
            return Err(MockError::BadLayout);
        }
        let (offerer, acceptor, faults) = pair(layout);
        let mut r = self.registry.0.lock().unwrap_or_else(|p| p.into_inner());
        r.next += 1;
        let id = r.next;
        r.offers.insert(id, (acceptor, faults));
        out[..4].copy_from_slice(MAGIC);
        out[4] = VERSION;
        out[5..].copy_from_slice(&id.to_le_bytes());
        Ok((
            MockPending {
                id,
                link: Some(offerer),
                registry: self.registry.clone(),
            },
            RENDEZVOUS_LEN,
        ))
    }

    fn accept(&mut self, bytes: &[u8]) -> Result<Link<MockRegion, MockDoorbell>, MockError> {
        let b: &[u8; RENDEZVOUS_LEN] = bytes.try_into().map_err(|_| MockError::Malformed)?;
        if &b[..4] != MAGIC {
            return Err(MockError::Malformed);
        }
        if b[4] != VERSION {
            return Err(MockError::VersionMismatch(b[4]));
        }
        let mut id = [0u8; 8];
        id.copy_from_slice(&b[5..]);
        let id = u64::from_le_bytes(id);
        let (lock, cv) = &*self.registry;
        let mut r = lock.lock().unwrap_or_else(|p| p.into_inner());
        let (link, faults) = r.offers.remove(&id).ok_or(MockError::UnknownOffer(id))?;
        r.accepted.insert(id, faults);
        cv.notify_all();
        Ok(link)
    }
}
