//! Errors: one small enum per boundary, each `Copy`.

use core::fmt;

/// What was impossible about the shared state: the evidence behind a `Corrupted`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Corruption {
    /// The consumer's `read` index moved backwards or past the producer's `write`.
    ReadIndex {
        /// The value read.
        read: u32,
    },
    /// The producer's `write` index is behind `read` or more than the data area ahead.
    WriteIndex {
        /// The value read.
        write: u32,
    },
    /// A frame tag is neither a published frame's nor the "nothing yet" mark.
    Tag {
        /// Position of the frame.
        pos: u32,
        /// The tag read.
        tag: u32,
    },
    /// A frame's length exceeds the maximum message size or runs past the data area.
    Length {
        /// Position of the frame.
        pos: u32,
        /// The length read.
        len: u32,
    },
    /// A padding frame that does not end exactly at the end of the data area.
    Padding {
        /// Position of the frame.
        pos: u32,
        /// The length read.
        len: u32,
    },
    /// An access computed from shared values fell outside the region (a second wall:
    /// validation should have caught the value first).
    OutOfBounds,
}

impl fmt::Display for Corruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::ReadIndex { read } => write!(f, "consumer index {read:#x} is out of range"),
            Self::WriteIndex { write } => write!(f, "producer index {write:#x} is out of range"),
            Self::Tag { pos, tag } => write!(f, "frame at {pos:#x} has impossible tag {tag:#x}"),
            Self::Length { pos, len } => write!(f, "frame at {pos:#x} has impossible length {len}"),
            Self::Padding { pos, len } => {
                write!(
                    f,
                    "padding frame at {pos:#x} with length {len} does not end the data area"
                )
            }
            Self::OutOfBounds => f.write_str("access outside the region"),
        }
    }
}

impl core::error::Error for Corruption {}

/// Why a ring could not be initialised or attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AttachError {
    /// The region pointer is null or not aligned to 128 bytes.
    Misaligned,
    /// The region is smaller than the layout needs.
    RegionTooSmall {
        /// Bytes the layout needs.
        needed: usize,
        /// Bytes the region has.
        len: usize,
    },
    /// The data size is not a power of two in `MIN_DATA_SIZE..=MAX_DATA_SIZE`.
    BadDataSize {
        /// The size given or found.
        data_size: u32,
    },
    /// The header does not start with [`MAGIC`](crate::MAGIC).
    BadMagic {
        /// The value found.
        found: u32,
    },
    /// The header has another layout version.
    VersionMismatch {
        /// The version found.
        found: u32,
        /// [`VERSION`](crate::VERSION).
        expected: u32,
    },
    /// The header puts the data area somewhere this version does not.
    BadDataOffset {
        /// The offset found.
        found: u32,
    },
    /// The shared indices are impossible already at attach.
    Corrupted(Corruption),
}

impl fmt::Display for AttachError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Misaligned => f.write_str("ring region is null or not 128-byte aligned"),
            Self::RegionTooSmall { needed, len } => {
                write!(f, "ring region has {len} bytes, the layout needs {needed}")
            }
            Self::BadDataSize { data_size } => write!(
                f,
                "ring data size {data_size} is not a power of two in {}..={}",
                crate::MIN_DATA_SIZE,
                crate::MAX_DATA_SIZE
            ),
            Self::BadMagic { found } => {
                write!(f, "ring header magic {found:#010x} is not coresident's")
            }
            Self::VersionMismatch { found, expected } => {
                write!(
                    f,
                    "ring layout version {found}, this build speaks {expected}"
                )
            }
            Self::BadDataOffset { found } => {
                write!(f, "ring data offset {found} is not {}", crate::DATA_OFFSET)
            }
            Self::Corrupted(c) => write!(f, "ring is corrupted: {c}"),
        }
    }
}

impl core::error::Error for AttachError {}

/// Why a message was not sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// Not enough free space now; the message was not written. Try again after the
    /// consumer releases space ([`Producer::arm_space`](crate::Producer::arm_space)
    /// asks to be told).
    Full,
    /// The message is larger than the ring's maximum message size.
    TooLarge {
        /// Length of the message.
        len: usize,
        /// [`Producer::max_message`](crate::Producer::max_message).
        max: u32,
    },
    /// The kind is [`KIND_PAD`](crate::KIND_PAD), reserved for padding frames.
    ReservedKind,
    /// The consumer closed its half: nothing sent will be read.
    Closed,
    /// The shared state is impossible; this half refuses further use.
    Corrupted(Corruption),
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Full => f.write_str("ring is full"),
            Self::TooLarge { len, max } => write!(
                f,
                "message of {len} bytes exceeds the ring's maximum of {max}"
            ),
            Self::ReservedKind => f.write_str("frame kind 0xFF is reserved for padding"),
            Self::Closed => f.write_str("the consumer closed the ring"),
            Self::Corrupted(c) => write!(f, "ring is corrupted: {c}"),
        }
    }
}

impl core::error::Error for SendError {}

/// Why no message was received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecvError {
    /// No published frame now.
    Empty,
    /// The caller's buffer is smaller than the next message; it stays in the ring.
    BufferTooSmall {
        /// Length of the next message.
        needed: usize,
    },
    /// The producer closed its half and every frame it published has been received.
    Closed,
    /// The shared state is impossible; this half refuses further use.
    Corrupted(Corruption),
}

impl fmt::Display for RecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Empty => f.write_str("ring is empty"),
            Self::BufferTooSmall { needed } => {
                write!(f, "buffer too small: the next message has {needed} bytes")
            }
            Self::Closed => f.write_str("the producer closed the ring"),
            Self::Corrupted(c) => write!(f, "ring is corrupted: {c}"),
        }
    }
}

impl core::error::Error for RecvError {}
