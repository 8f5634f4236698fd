//! A single-producer single-consumer message ring over a caller-provided memory region,
//! built to be shared with a peer that is not trusted: another VM, another process.
//!
//! ```text
//!  region (caller's memory: granted pages, a memfd mapping, a heap buffer)
//!  +--------+---------+---------+---------+---------+------------------------------+
//!  | header | write   | space   | read    | data    | data area (2^k bytes)        |
//!  | magic  | (prod)  | event   | (cons)  | event   |  [hdr|payload..][hdr|..][pad]|
//!  | ver... |         | +closed |         | +closed |                              |
//!  +--------+---------+---------+---------+---------+------------------------------+
//!   0        128       256       384       512       640
//!
//!  producer: writes frames, then publishes a batch with one Release store of the
//!            first frame's 8-byte header (length and tag) and one store of `write`;
//!  consumer: polls the header of the frame at `read` (one cache line, one 8-byte
//!            load), copies out, then releases space with one store of `read`.
//! ```
//!
//! - **Frames.** A message is an 8-byte header (length; kind and a position stamp)
//!   and its payload, padded to 8 bytes. Frames never wrap: a padding frame fills the
//!   tail of the data area. Payloads are 0 to [`max_message`] bytes (half the data
//!   area less one header). See [`layout`].
//! - **Indices.** `write` and `read` are free-running `u32` byte counters, each written
//!   by one side only. The producer caches `read` and re-reads it only when its cache
//!   says the ring is full. The consumer does not read `write` at all on its fast path:
//!   it polls the stamp in the next frame's header (the FastForward queue, Giacomoni et
//!   al., PPoPP 2008), so a small message costs one cache-line transfer, like a bare
//!   ping-pong.
//! - **Notifications** follow the event-index scheme of Xen's `io/ring.h` and virtio's
//!   `VIRTIO_RING_F_EVENT_IDX`, both ways. A consumer about to sleep records in
//!   `data event` how far `write` must advance ([`Consumer::arm_data`]); a producer
//!   waiting for space records in `space event` how far `read` must advance
//!   ([`Producer::arm_space`], stating the bytes it waits for, unlike Hyper-V's VMBus
//!   writers that wake on any progress). [`Producer::publish`] and [`Consumer::release`]
//!   report whether the crossing happened: ringing the doorbell is the caller's job.
//!   The arm/re-check and publish/check pairs are Dekker-style: each side does a
//!   store, a `SeqCst` fence, then a load, so at least one side sees the other (the
//!   missing fence of SPDK issue 3178 is the bug this rules out; `tests/loom_ring.rs`
//!   checks it). A consumer may release lazily ([`Consumer::set_lazy_release`]): its
//!   receives then check the producer's request without the fence, and
//!   [`Consumer::release`] settles every position since with it, at the first empty
//!   poll; the producer keeps one fence per publish.
//! - **Copies** are volatile (or an opaque `rep movsb`), each shared byte touched once,
//!   in the widest aligned words the target offers: see `volatile.rs` for the copies
//!   and their soundness argument.
//! - **The peer is hostile.** Shared bytes are read only through atomics and volatile
//!   copies, never through `&`/`&mut` (see [`RingMemory`]); each shared value is read
//!   once into a local and validated before use; an impossible value poisons the half,
//!   which then answers `Corrupted` to every call. No panic, no out-of-bounds access, no
//!   unbounded loop, whatever the peer writes (`tests/hostile_peer.rs`, and the fuzz
//!   target `ring_hostile_peer`).
//!
//! # Progress
//!
//! Every operation is wait-free: it finishes in a bounded number of its own steps
//! whatever the peer does (no retry loop depends on the peer). Blocking is the caller's
//! choice, through `arm_*` and a doorbell.
//!
//! # Examples
//!
//! ```
//! use coresident_ring::{Consumer, Producer, RingMemory, region_size};
//!
//! #[repr(C, align(128))]
//! struct Page([u8; 4096]);
//! let mut page = Box::new(Page([0; 4096]));
//! let len = region_size(2048);
//! // `RingMemory::new`'s contract: the page outlives both halves, and nothing
//! // but the ring touches its bytes.
//! let mem = unsafe { RingMemory::new(page.0.as_mut_ptr(), len) }.unwrap();
//!
//! let mut tx = Producer::init(mem, 2048).unwrap(); // this side lays the ring out
//! let mut rx = Consumer::attach(mem).unwrap();     // the peer validates and attaches
//!
//! tx.send(7, b"hello").unwrap();
//! let mut buf = [0u8; 64];
//! let got = rx.recv(&mut buf).unwrap();
//! assert_eq!((got.kind, &buf[..got.len]), (7, &b"hello"[..]));
//! ```
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs, missing_debug_implementations)]
#![warn(clippy::std_instead_of_core, clippy::alloc_instead_of_core)]

mod consumer;
mod error;
mod index;
pub mod layout;
mod producer;
mod region;
#[cfg(not(loom))]
mod volatile;

pub use consumer::{Consumer, Frame, Received, View};
pub use coresident_sync as sync;
pub use error::{AttachError, Corruption, RecvError, SendError};
pub use layout::{
    max_message, region_size, DATA_OFFSET, KIND_PAD, MAGIC, MAX_DATA_SIZE, MIN_DATA_SIZE,
    REGION_ALIGN, VERSION,
};
pub use producer::{Producer, Reservation};
pub use region::RingMemory;

use layout::{off, RingHeader};
use region::OutOfBounds;
use sync::atomic::Ordering;
use zerocopy::{FromBytes, IntoBytes};

/// Whether the peer must be told: the answer of [`Producer::publish`] and
/// [`Consumer::release`].
#[must_use = "when the answer is `Required`, ring the peer's doorbell"]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notify {
    /// The peer asked to be woken at a point this call crossed: ring its doorbell.
    Required,
    /// The peer is not waiting for this: no doorbell.
    Suppressed,
}

impl Notify {
    /// Whether the peer must be notified.
    pub fn is_required(self) -> bool {
        self == Self::Required
    }

    /// `Required` if either is.
    pub fn or(self, other: Self) -> Self {
        if self.is_required() {
            self
        } else {
            other
        }
    }
}

/// The answer of [`Consumer::arm_data`] and [`Producer::arm_space`].
#[must_use = "sleep only on `Armed`"]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// What the caller waits for is already there: do not sleep.
    Ready,
    /// The request is recorded and what the caller waits for is not there yet: it may
    /// sleep until its doorbell rings (and must then check again: doorbells are hints).
    Armed,
}

/// The ring's dimensions, validated once and then kept privately by each half.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Geometry {
    /// Data area size: a power of two in `MIN_DATA_SIZE..=MAX_DATA_SIZE`.
    pub size: u32,
    /// `size - 1`.
    pub mask: u32,
    /// [`max_message`]`(size)`.
    pub max: u32,
    /// `(size - 1) & !7`: masks a position to its 8-aligned frame slot.
    pub mask8: u32,
}

impl Geometry {
    fn new(data_size: u32) -> Result<Self, AttachError> {
        if !data_size.is_power_of_two() || !(MIN_DATA_SIZE..=MAX_DATA_SIZE).contains(&data_size) {
            return Err(AttachError::BadDataSize { data_size });
        }
        Ok(Self {
            size: data_size,
            mask: data_size - 1,
            max: max_message(data_size),
            mask8: (data_size - 1) & !7,
        })
    }

    /// Region offset of the frame slot at free-running position `pos`.
    #[inline(always)]
    pub fn slot(&self, pos: u32) -> usize {
        DATA_OFFSET + (pos & self.mask) as usize
    }

    /// Region offset of the frame header at `pos`: in `DATA_OFFSET..=DATA_OFFSET +
    /// size - 8` and 8-aligned whatever `pos` is, so an 8-byte access there stays
    /// inside any region that holds this geometry's ring (checked at attach: the
    /// hot paths rely on it instead of checking every header access).
    #[inline(always)]
    pub fn hdr(&self, pos: u32) -> usize {
        DATA_OFFSET + (pos & self.mask8) as usize
    }
}

fn check_len(mem: &RingMemory, data_size: u32) -> Result<(), AttachError> {
    let needed = region_size(data_size);
    if mem.len() < needed {
        return Err(AttachError::RegionTooSmall {
            needed,
            len: mem.len(),
        });
    }
    Ok(())
}

/// Lays a fresh ring with a `data_size`-byte data area out in `mem`, without taking
/// either half: header, zeroed indices and requests, the "nothing yet" mark at position
/// 0. The side that creates a shared region does this once, before it hands the region
/// to the peer; then each side [`attach`](Producer::attach)es its half.
///
/// # Errors
///
/// [`AttachError::BadDataSize`] or [`AttachError::RegionTooSmall`].
pub fn init(mem: &RingMemory, data_size: u32) -> Result<(), AttachError> {
    lay_out(mem, data_size).map(|_| ())
}

/// [`init`], returning the validated geometry.
pub(crate) fn lay_out(mem: &RingMemory, data_size: u32) -> Result<Geometry, AttachError> {
    let geo = Geometry::new(data_size)?;
    check_len(mem, data_size)?;
    let header = RingHeader {
        magic: MAGIC,
        version: VERSION,
        data_offset: DATA_OFFSET as u32,
        data_size,
        reserved: [0; 28],
    };
    let oob = |_: OutOfBounds| AttachError::Corrupted(Corruption::OutOfBounds);
    // The control lines' other words are reserved: nobody reads them.
    let fields = [
        off::WRITE,
        off::SPACE_EVENT,
        off::PROD_CLOSED,
        off::READ,
        off::DATA_EVENT,
        off::CONS_CLOSED,
    ];
    region::zero(mem, &fields).map_err(oob)?;
    // Relaxed: the region is not shared yet; handing it to the peer orders this.
    // SAFETY: `check_len` proved the region holds `geo`'s ring, so the header at
    // `hdr(0)` is inside it and 8-aligned (see `Geometry::hdr`).
    unsafe {
        mem.store64(
            geo.hdr(0),
            layout::header(0, layout::invalid_tag(0)),
            Ordering::Relaxed,
        )
    };
    mem.write_bytes(off::HEADER, header.as_bytes())
        .map_err(oob)?;
    Ok(geo)
}

/// Copies the header out (volatile) and validates it.
pub(crate) fn attach(mem: &RingMemory) -> Result<Geometry, AttachError> {
    let mut raw = [0u8; core::mem::size_of::<RingHeader>()];
    if mem.len() < raw.len() {
        return Err(AttachError::RegionTooSmall {
            needed: DATA_OFFSET,
            len: mem.len(),
        });
    }
    mem.read_bytes(off::HEADER, &mut raw)
        .map_err(|_| AttachError::Corrupted(Corruption::OutOfBounds))?;
    let h = RingHeader::read_from_bytes(&raw)
        .map_err(|_| AttachError::Corrupted(Corruption::OutOfBounds))?;
    if h.magic != MAGIC {
        return Err(AttachError::BadMagic { found: h.magic });
    }
    if h.version != VERSION {
        return Err(AttachError::VersionMismatch {
            found: h.version,
            expected: VERSION,
        });
    }
    if h.data_offset != DATA_OFFSET as u32 {
        return Err(AttachError::BadDataOffset {
            found: h.data_offset,
        });
    }
    let geo = Geometry::new(h.data_size)?;
    check_len(mem, h.data_size)?;
    Ok(geo)
}

/// What a half is still willing to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    Open,
    /// The peer closed its half.
    PeerClosed,
    /// Poisoned: every call answers `Corrupted` with this evidence.
    Corrupted(Corruption),
}
