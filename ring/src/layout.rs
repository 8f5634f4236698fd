//! The shared layout: every byte both sides must agree on.
//!
//! ```text
//! offset  size  line             written by    read by
//! ------  ----  ---------------  ------------  -------------------------------
//!      0   128  RingHeader       initialiser   attacher, once, at attach
//!    128   128  producer index   producer      consumer, only before sleeping
//!    256   128  producer event   producer      consumer, at every release
//!    384   128  consumer index   consumer      producer, only when it looks full
//!    512   128  consumer event   consumer      producer, at every publish
//!    640  2^k   data area        producer      consumer (frames, see below)
//! ```
//!
//! The lines are fixed 128-byte slots in the layout itself (not `CachePadded`, whose
//! alignment depends on the target): two builds in two domains agree on every offset.
//! Each index sits apart from its side's wake-up request, so reading the peer's
//! request at every publish or release never pulls the peer's busy index line across.
//!
//! A frame in the data area is an 8-byte [`FrameHeader`] followed by the payload, padded
//! to a multiple of 8. Frames never wrap: when a frame does not fit before the end of the
//! data area, a padding frame ([`KIND_PAD`]) fills the tail and the frame starts at 0.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `b"CRRG"` read as a little-endian `u32`: "coresident ring".
pub const MAGIC: u32 = u32::from_le_bytes(*b"CRRG");
/// Version of this layout. Bumped on any change to the bytes described here.
pub const VERSION: u32 = 1;
/// Size of one line of the control block, in bytes.
pub const LINE: usize = 128;
/// Offset of the data area from the start of the region.
pub const DATA_OFFSET: usize = 5 * LINE;
/// Alignment the region must have (one line).
pub const REGION_ALIGN: usize = LINE;
/// Size of a frame header, and the alignment of every frame.
pub const FRAME_ALIGN: usize = 8;
/// The smallest data area: 64 bytes.
pub const MIN_DATA_SIZE: u32 = 64;
/// The largest data area: 1 GiB. Frame stamps (24 bits of 8-byte units) tell apart
/// positions up to 128 MiB apart; larger areas work but lose that extra check.
pub const MAX_DATA_SIZE: u32 = 1 << 30;
/// The reserved kind of a padding frame. User frames have kinds `0..=0xFE`.
pub const KIND_PAD: u8 = 0xFF;

/// Byte offsets of the shared fields.
pub(crate) mod off {
    use super::LINE;
    /// `RingHeader`.
    pub const HEADER: usize = 0;
    /// Producer's free-running write index (`u32`, bytes).
    pub const WRITE: usize = LINE;
    /// Producer's space request: "notify me when `read` passes this" (`u32`).
    pub const SPACE_EVENT: usize = 2 * LINE;
    /// Producer's closed flag (`u32`, 0 or 1), on the producer's event line.
    pub const PROD_CLOSED: usize = 2 * LINE + 4;
    /// Consumer's free-running read index (`u32`, bytes).
    pub const READ: usize = 3 * LINE;
    /// Consumer's data request: "notify me when `write` passes this" (`u32`).
    pub const DATA_EVENT: usize = 4 * LINE;
    /// Consumer's closed flag (`u32`, 0 or 1), on the consumer's event line.
    pub const CONS_CLOSED: usize = 4 * LINE + 4;
}

/// The first line of a ring region, written once by the side that initialises it.
///
/// The attaching side copies it out with volatile reads, then parses the copy: it is
/// never read in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct RingHeader {
    /// Always [`MAGIC`].
    pub magic: u32,
    /// Always [`VERSION`].
    pub version: u32,
    /// Always [`DATA_OFFSET`] (as `u32`): lets a future version move the data area.
    pub data_offset: u32,
    /// Size of the data area in bytes: a power of two in
    /// `MIN_DATA_SIZE..=MAX_DATA_SIZE`.
    pub data_size: u32,
    /// Zero.
    pub reserved: [u32; 28],
}

/// One 128-byte line holding a side's `u32` fields at its start.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct ControlLine {
    /// The line's fields: `[index]` or `[event, closed]`; the rest is zero.
    pub words: [u32; 32],
}

/// The control block in front of the data area.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct ControlBlock {
    /// Written once by the initialiser.
    pub header: RingHeader,
    /// `write`: the producer's free-running index, in bytes, of the end of the last
    /// published frame. Any `u32`; wraps.
    pub producer_index: ControlLine,
    /// `space_event` (word 0) and `prod_closed` (word 1).
    pub producer_event: ControlLine,
    /// `read`: the consumer's free-running index, in bytes, of the end of the last
    /// released frame. `write - read` (wrapping) is in `0..=data_size`, a multiple of 8.
    pub consumer_index: ControlLine,
    /// `data_event` (word 0) and `cons_closed` (word 1).
    pub consumer_event: ControlLine,
}

/// The header of each frame in the data area.
///
/// `tag` packs the kind and a stamp: `kind << 24 | stamp(pos)`, where `pos` is the
/// frame's free-running position and `stamp(pos) = (pos / 8) mod 2^24`. The consumer
/// polls the tag of the frame at its read position (FastForward, Giacomoni et al.,
/// PPoPP 2008): a matching stamp says the frame is published, without reading the
/// producer's index line. Before each publish the producer writes
/// `invalid_tag(end)` at the position after its last frame, so stale bytes from an
/// earlier lap can never look like a published frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct FrameHeader {
    /// Payload length in bytes: at most the ring's maximum message size.
    pub len: u32,
    /// `kind << 24 | stamp(pos)`.
    pub tag: u32,
}

/// Offset of `len` inside a frame header.
pub(crate) const FRAME_LEN: usize = 0;
/// Offset of `tag` inside a frame header.
pub(crate) const FRAME_TAG: usize = 4;

/// The stamp bits of a tag.
pub(crate) const STAMP_MASK: u32 = 0x00FF_FFFF;

/// The stamp of a frame at free-running position `pos`.
#[inline(always)]
pub(crate) const fn stamp(pos: u32) -> u32 {
    (pos >> 3) & STAMP_MASK
}

/// The tag of a published frame of `kind` at `pos`.
#[inline(always)]
pub(crate) const fn tag(kind: u8, pos: u32) -> u32 {
    ((kind as u32) << 24) | stamp(pos)
}

/// The tag the producer leaves at `pos` to say "nothing published here yet": the stamp
/// with its top bit flipped, so it never matches `stamp(pos)`.
#[inline(always)]
pub(crate) const fn invalid_tag(pos: u32) -> u32 {
    stamp(pos) ^ 0x0080_0000
}

/// A frame header as the one `u64` both sides read and write whole: `len` in the
/// first four bytes, `tag` in the next four, whatever the target's byte order.
#[inline(always)]
pub(crate) const fn header(len: u32, tag: u32) -> u64 {
    if cfg!(target_endian = "little") {
        (len as u64) | ((tag as u64) << 32)
    } else {
        ((len as u64) << 32) | (tag as u64)
    }
}

/// `(len, tag)` of a header read whole.
#[inline(always)]
pub(crate) const fn split(h: u64) -> (u32, u32) {
    if cfg!(target_endian = "little") {
        (h as u32, (h >> 32) as u32)
    } else {
        ((h >> 32) as u32, h as u32)
    }
}

/// The bytes of a frame with a payload of `len <= MAX_DATA_SIZE / 2` bytes (a length
/// already checked against the maximum message size, so no overflow).
#[inline(always)]
pub(crate) const fn frame_len(len: u32) -> u32 {
    (len + FRAME_ALIGN as u32 + 7) & !7
}

/// Rounds a payload length up to the frame alignment; `None` on overflow.
#[inline(always)]
pub(crate) const fn frame_size(len: u32) -> Option<u32> {
    match len.checked_add(FRAME_ALIGN as u32 + 7) {
        Some(v) => Some(v & !7),
        None => None,
    }
}

/// The bytes of region a ring with a `data_size`-byte data area needs.
///
/// # Examples
///
/// ```
/// assert_eq!(coresident_ring::region_size(4096), 640 + 4096);
/// ```
pub const fn region_size(data_size: u32) -> usize {
    DATA_OFFSET + data_size as usize
}

/// The largest payload a ring with a `data_size`-byte data area accepts:
/// `data_size / 2 - 8`.
///
/// This is the largest size that always fits once the ring is empty, wherever its
/// indices stand: a frame (8-byte header plus payload) of `data_size / 2` bytes fits
/// either before the end of the data area or, after a padding frame, at its start, with
/// the 8 bytes of slack the producer keeps for its "nothing here yet" mark.
pub const fn max_message(data_size: u32) -> u32 {
    data_size / 2 - FRAME_ALIGN as u32
}

const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<RingHeader>() == LINE);
    assert!(size_of::<ControlLine>() == LINE);
    assert!(size_of::<ControlBlock>() == DATA_OFFSET);
    assert!(size_of::<FrameHeader>() == FRAME_ALIGN);
    assert!(offset_of!(ControlBlock, header) == off::HEADER);
    assert!(offset_of!(ControlBlock, producer_index) == off::WRITE);
    assert!(offset_of!(ControlBlock, producer_event) == off::SPACE_EVENT);
    assert!(offset_of!(ControlBlock, consumer_index) == off::READ);
    assert!(offset_of!(ControlBlock, consumer_event) == off::DATA_EVENT);
    assert!(offset_of!(FrameHeader, len) == FRAME_LEN);
    assert!(offset_of!(FrameHeader, tag) == FRAME_TAG);
    assert!(DATA_OFFSET % REGION_ALIGN == 0);
    assert!(MAX_DATA_SIZE.is_power_of_two() && MIN_DATA_SIZE.is_power_of_two());
    // Every position is a multiple of 8, so its stamp changes at every frame slot.
    assert!(stamp(8) != stamp(0));
    assert!(invalid_tag(0) != tag(0, 0));
    assert!(split(header(0x1234, 0xABCD_EF01)).0 == 0x1234);
    assert!(split(header(0x1234, 0xABCD_EF01)).1 == 0xABCD_EF01);
};
