//! The rendezvous messages, byte for byte (protocol version 2), and their parsers.
//!
//! All integers are little-endian; the structs have no padding and alignment 1
//! (zerocopy's derives prove it), so two builds of this crate, or an implementation in
//! another language, agree on every byte.
//!
//! ```text
//! Hello (168 + C bytes), offerer -> acceptor, with SCM_RIGHTS [memfd]
//!   0  magic             [u8; 8]  "CRSDSHM\0"
//!   8  version           u32      PROTOCOL_VERSION (2)
//!  12  hello_len         u32      168 + C, where C (0..=256) is the context's length
//!  16  region_size       u64      size of the memfd in bytes
//!  24  to_acceptor_data  u32      data size of the ring the offerer produces into
//!  28  to_offerer_data   u32      data size of the ring the acceptor produces into
//!  32  ring_version      u32      coresident_ring::VERSION of the rings laid out
//!  36  reserved          u32      0
//!  40  offerer_id        [u8; 64] length byte (1..=63) + peer id text, zero-filled
//! 104  acceptor_id       [u8; 64] length byte (0 = unspecified) + peer id text
//! 168  context           [u8; C]  opaque application bytes (a session id, a TCP
//!                                 4-tuple...), delivered to the acceptor as is
//!
//! Ack (16 bytes), acceptor -> offerer, no descriptors
//!   0  magic             [u8; 8]  "CRSDACK\0"
//!   8  version           u32      PROTOCOL_VERSION
//!  12  status            u32      0 = accepted, else a RejectReason code
//! ```
//!
//! The first 16 bytes of a hello (magic, version, length) are read and checked on
//! their own before the rest ([`check_prefix`]), so a peer speaking another version
//! gets a clear "version mismatch", and the acceptor never reads more than the hello
//! (the socket then carries doorbell bytes, see [`crate::PeerLink`]).
//!
//! Version 1 carried three descriptors (the memfd and two eventfds) and no ring
//! version or context. Version 2 dropped the eventfds: an eventfd's `O_NONBLOCK` lives
//! on the open file description both peers share, so a peer could make our writes
//! block forever; the doorbells now travel on the rendezvous socket, whose two ends are
//! separate files.
//!
//! Every parser here takes bytes from a peer that may be hostile: each field is
//! checked, each failure is a [`HelloError`] or an [`AckError`], and nothing panics
//! (the `shm_hello` fuzz target holds that).

use core::fmt;

use coresident::ChannelLayout;
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::memfd::{MAX_REGION_SIZE, MIN_REGION_SIZE};
use crate::peer_id::{PeerId, PeerIdError, MAX_ID_LEN};
use crate::rendezvous::RejectReason;

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 2;

/// The magic that opens a hello.
pub const HELLO_MAGIC: [u8; 8] = *b"CRSDSHM\0";

/// The magic that opens an ack.
pub const ACK_MAGIC: [u8; 8] = *b"CRSDACK\0";

/// The size of a hello without its context, in bytes.
pub const HELLO_FIXED_LEN: usize = core::mem::size_of::<HelloWire>();

/// The longest application context a hello carries, in bytes.
pub const MAX_CONTEXT_LEN: usize = 256;

/// The longest hello, in bytes.
pub const HELLO_MAX_LEN: usize = HELLO_FIXED_LEN + MAX_CONTEXT_LEN;

/// The size of the part of a hello that every version shares (magic, version, length).
pub const HELLO_PREFIX_LEN: usize = 16;

/// The size of an ack in bytes.
pub const ACK_LEN: usize = core::mem::size_of::<AckWire>();

/// The number of descriptors a hello carries.
pub const HELLO_FDS: usize = 1;

/// The smallest data area of one ring, in bytes (the ring's own minimum).
pub const MIN_RING_DATA: u32 = coresident_ring::MIN_DATA_SIZE;

/// The largest data area of one ring this transport creates or accepts (256 MiB), so
/// that two rings always fit in a region of at most [`MAX_REGION_SIZE`].
pub const MAX_RING_DATA: u32 = 1 << 28;

/// The fixed part of a hello as it travels (see the module docs for the fields).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct HelloWire {
    /// [`HELLO_MAGIC`].
    pub magic: [u8; 8],
    /// The sender's protocol version.
    pub version: U32,
    /// The length of the whole hello in bytes, context included.
    pub hello_len: U32,
    /// The memfd's size in bytes.
    pub region_size: U64,
    /// Data size of the ring the offerer produces into.
    pub to_acceptor_data: U32,
    /// Data size of the ring the acceptor produces into.
    pub to_offerer_data: U32,
    /// The ring layout version of the rings laid out in the region.
    pub ring_version: U32,
    /// Zero.
    pub reserved: U32,
    /// The offerer's id: a length byte (1..=63) then the id's text, zero-filled.
    pub offerer_id: [u8; 64],
    /// The acceptor's id as the offerer knows it: length byte (0 = unspecified), text.
    pub acceptor_id: [u8; 64],
}

/// An ack as it travels.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct AckWire {
    /// [`ACK_MAGIC`].
    pub magic: [u8; 8],
    /// The acceptor's protocol version.
    pub version: U32,
    /// 0 if accepted, else a [`RejectReason`] code.
    pub status: U32,
}

const _: () = assert!(HELLO_FIXED_LEN == 168);
const _: () = assert!(ACK_LEN == 16);
const _: () = assert!(core::mem::offset_of!(HelloWire, region_size) == HELLO_PREFIX_LEN);
const _: () = assert!(core::mem::offset_of!(HelloWire, ring_version) == 32);
const _: () = assert!(core::mem::offset_of!(HelloWire, offerer_id) == 40);
const _: () = assert!(core::mem::offset_of!(HelloWire, acceptor_id) == 104);
const _: () = assert!(MAX_ID_LEN < 64);
// Two rings of the largest size fit the largest region.
const _: () = assert!(
    ChannelLayout::symmetric(MAX_RING_DATA)
        .region_len()
        .next_multiple_of(4096)
        <= MAX_REGION_SIZE
);

/// A ring data size is not one this transport uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RingSizeError {
    /// The size is not a power of two.
    NotPowerOfTwo {
        /// The size in bytes.
        size: u32,
    },
    /// The size is a power of two outside [`MIN_RING_DATA`]`..=`[`MAX_RING_DATA`].
    OutOfRange {
        /// The size in bytes.
        size: u32,
    },
}

impl fmt::Display for RingSizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotPowerOfTwo { size } => {
                write!(f, "ring data size {size} is not a power of two")
            }
            Self::OutOfRange { size } => write!(
                f,
                "ring data size {size} is outside {MIN_RING_DATA}..={MAX_RING_DATA} bytes"
            ),
        }
    }
}

impl std::error::Error for RingSizeError {}

/// Checks one ring data size.
///
/// # Errors
///
/// [`RingSizeError`] saying why `size` is refused.
pub fn check_ring_size(size: u32) -> Result<u32, RingSizeError> {
    if !size.is_power_of_two() {
        Err(RingSizeError::NotPowerOfTwo { size })
    } else if !(MIN_RING_DATA..=MAX_RING_DATA).contains(&size) {
        Err(RingSizeError::OutOfRange { size })
    } else {
        Ok(size)
    }
}

/// Checks both ring sizes of a layout.
///
/// # Errors
///
/// [`RingSizeError`] for the first size refused.
pub fn check_layout(layout: ChannelLayout) -> Result<ChannelLayout, RingSizeError> {
    check_ring_size(layout.to_acceptor)?;
    check_ring_size(layout.to_offerer)?;
    Ok(layout)
}

/// The size of the region an offerer creates for `layout`: what the rings need,
/// rounded up to whole pages, and at least [`MIN_REGION_SIZE`].
#[must_use]
pub const fn region_alloc_size(layout: ChannelLayout) -> usize {
    let len = layout.region_len().next_multiple_of(4096);
    if len < MIN_REGION_SIZE {
        MIN_REGION_SIZE
    } else {
        len
    }
}

/// A hello the peer sent is malformed or refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HelloError {
    /// The message does not start with the expected magic: not our protocol.
    BadMagic,
    /// The peer speaks another protocol version.
    VersionMismatch {
        /// Our version.
        ours: u32,
        /// The peer's version.
        theirs: u32,
    },
    /// The length field is not a hello length of this version
    /// ([`HELLO_FIXED_LEN`]`..=`[`HELLO_MAX_LEN`]), or the bytes are not that long.
    BadLength {
        /// The length the peer claimed.
        claimed: u32,
    },
    /// The rings were laid out by another ring layout version.
    RingVersion {
        /// Our ring layout version.
        ours: u32,
        /// The offerer's.
        theirs: u32,
    },
    /// The reserved field is not zero.
    Reserved {
        /// Its value.
        value: u32,
    },
    /// A ring size is refused.
    RingSize(RingSizeError),
    /// The region is smaller than the rings need.
    RegionTooSmall {
        /// The region size the hello declared.
        region: u64,
        /// The size the rings need.
        needed: u64,
    },
    /// The region is larger than we accept.
    RegionTooLarge {
        /// The region size the hello declared.
        region: u64,
        /// Our limit.
        max: u64,
    },
    /// A peer id is malformed (or the offerer's is missing: [`PeerIdError::Empty`]).
    BadPeerId(PeerIdError),
}

impl fmt::Display for HelloError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadMagic => f.write_str("hello: bad magic (not a coresident peer)"),
            Self::VersionMismatch { ours, theirs } => write!(
                f,
                "hello: peer speaks protocol version {theirs}, we speak {ours}"
            ),
            Self::BadLength { claimed } => write!(
                f,
                "hello: length {claimed} is not {HELLO_FIXED_LEN}..={HELLO_MAX_LEN} bytes \
                 (protocol version {PROTOCOL_VERSION})"
            ),
            Self::RingVersion { ours, theirs } => write!(
                f,
                "hello: the rings have layout version {theirs}, we read version {ours}"
            ),
            Self::Reserved { value } => {
                write!(f, "hello: reserved field is {value:#x}, not zero")
            }
            Self::RingSize(e) => write!(f, "hello: {e}"),
            Self::RegionTooSmall { region, needed } => write!(
                f,
                "hello: region of {region} bytes is smaller than the {needed} bytes the rings need"
            ),
            Self::RegionTooLarge { region, max } => write!(
                f,
                "hello: region of {region} bytes exceeds our limit of {max} bytes"
            ),
            Self::BadPeerId(e) => write!(f, "hello: {e}"),
        }
    }
}

impl std::error::Error for HelloError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::RingSize(e) => Some(e),
            Self::BadPeerId(e) => Some(e),
            _ => None,
        }
    }
}

impl HelloError {
    /// The reason an acceptor sends the offerer for this error.
    #[must_use]
    pub fn reject_reason(&self) -> RejectReason {
        match self {
            Self::BadMagic | Self::BadLength { .. } | Self::Reserved { .. } => {
                RejectReason::Malformed
            }
            Self::VersionMismatch { .. } => RejectReason::Version,
            Self::RingVersion { .. } => RejectReason::RingVersion,
            Self::RingSize(_) | Self::RegionTooSmall { .. } | Self::RegionTooLarge { .. } => {
                RejectReason::Sizes
            }
            Self::BadPeerId(_) => RejectReason::PeerId,
        }
    }
}

/// A hello, parsed and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The memfd's size in bytes: at least what the rings need, at most our limit.
    pub region_size: u64,
    /// The ring sizes (both checked with [`check_ring_size`]).
    pub layout: ChannelLayout,
    /// The offerer's id.
    pub offerer: PeerId,
    /// The acceptor the offerer meant, if it named one.
    pub acceptor: Option<PeerId>,
    /// The application context, at most [`MAX_CONTEXT_LEN`] bytes.
    pub context: Vec<u8>,
}

/// Encodes an optional id into its 64-byte field.
#[must_use]
pub fn encode_id(id: Option<&PeerId>) -> [u8; 64] {
    let mut out = [0u8; 64];
    if let Some(id) = id {
        let text = id.to_string();
        // A `PeerId` is at most MAX_ID_LEN (63) bytes, so this always fits; clamp anyway.
        let n = text.len().min(MAX_ID_LEN);
        out[0] = n as u8;
        out[1..=n].copy_from_slice(&text.as_bytes()[..n]);
    }
    out
}

/// Decodes a 64-byte id field: `Ok(None)` for length 0.
///
/// # Errors
///
/// [`PeerIdError::TooLong`] for a length byte above 63; another [`PeerIdError`] if the
/// text is not UTF-8 ([`PeerIdError::BadName`]) or not a canonical id.
pub fn decode_id(field: &[u8; 64]) -> Result<Option<PeerId>, PeerIdError> {
    let n = usize::from(field[0]);
    if n == 0 {
        return Ok(None);
    }
    let bytes = field.get(1..=n).ok_or(PeerIdError::TooLong)?;
    let text = core::str::from_utf8(bytes).map_err(|_| PeerIdError::BadName)?;
    text.parse().map(Some)
}

/// Checks the 16-byte prefix every version shares; returns the whole hello's length.
///
/// # Errors
///
/// [`HelloError::BadMagic`], [`HelloError::VersionMismatch`] or
/// [`HelloError::BadLength`].
pub fn check_prefix(prefix: &[u8; HELLO_PREFIX_LEN]) -> Result<usize, HelloError> {
    if prefix[..8] != HELLO_MAGIC {
        return Err(HelloError::BadMagic);
    }
    let version = u32::from_le_bytes([prefix[8], prefix[9], prefix[10], prefix[11]]);
    if version != PROTOCOL_VERSION {
        return Err(HelloError::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs: version,
        });
    }
    let claimed = u32::from_le_bytes([prefix[12], prefix[13], prefix[14], prefix[15]]);
    match usize::try_from(claimed) {
        Ok(len) if (HELLO_FIXED_LEN..=HELLO_MAX_LEN).contains(&len) => Ok(len),
        _ => Err(HelloError::BadLength { claimed }),
    }
}

/// Parses and checks a whole hello (`bytes` is exactly the message, context included)
/// for an acceptor that maps at most `max_region` bytes.
///
/// Checked, in order: the prefix ([`check_prefix`]) and that `bytes` has the claimed
/// length, the ring layout version, the reserved field, the peer ids (well-formed; the
/// offerer's present), the ring sizes, and the region size (within `max_region` and
/// [`MAX_REGION_SIZE`], large enough for the rings).
///
/// # Errors
///
/// One [`HelloError`] per failed check.
pub fn parse_hello(bytes: &[u8], max_region: u64) -> Result<Hello, HelloError> {
    let prefix: &[u8; HELLO_PREFIX_LEN] = bytes
        .get(..HELLO_PREFIX_LEN)
        .and_then(|p| p.try_into().ok())
        .ok_or(HelloError::BadLength {
            claimed: bytes.len().try_into().unwrap_or(u32::MAX),
        })?;
    let len = check_prefix(prefix)?;
    if bytes.len() != len {
        return Err(HelloError::BadLength {
            claimed: len as u32, // <= HELLO_MAX_LEN (checked)
        });
    }
    let (fixed, context) = bytes.split_at(HELLO_FIXED_LEN);
    // Infallible: `fixed` has exactly the struct's size and any bytes are valid.
    let wire = HelloWire::read_from_bytes(fixed).map_err(|_| HelloError::BadMagic)?;
    let ring = wire.ring_version.get();
    if ring != coresident_ring::VERSION {
        return Err(HelloError::RingVersion {
            ours: coresident_ring::VERSION,
            theirs: ring,
        });
    }
    if wire.reserved.get() != 0 {
        return Err(HelloError::Reserved {
            value: wire.reserved.get(),
        });
    }
    let offerer = decode_id(&wire.offerer_id)
        .map_err(HelloError::BadPeerId)?
        .ok_or(HelloError::BadPeerId(PeerIdError::Empty))?;
    let acceptor = decode_id(&wire.acceptor_id).map_err(HelloError::BadPeerId)?;
    let layout = check_layout(ChannelLayout {
        to_acceptor: wire.to_acceptor_data.get(),
        to_offerer: wire.to_offerer_data.get(),
    })
    .map_err(HelloError::RingSize)?;
    let region_size = wire.region_size.get();
    let max = max_region.min(MAX_REGION_SIZE as u64);
    if region_size > max {
        return Err(HelloError::RegionTooLarge {
            region: region_size,
            max,
        });
    }
    // No overflow: both sizes are at most 2^28 (checked), the headers small.
    let needed = layout.region_len() as u64;
    if region_size < needed {
        return Err(HelloError::RegionTooSmall {
            region: region_size,
            needed,
        });
    }
    Ok(Hello {
        region_size,
        layout,
        offerer,
        acceptor,
        context: context.to_vec(),
    })
}

/// Encodes a hello.
///
/// # Errors
///
/// [`HelloError::BadLength`] if the context is longer than [`MAX_CONTEXT_LEN`];
/// [`HelloError::RingSize`] for a refused ring size.
pub fn encode_hello(hello: &Hello) -> Result<Vec<u8>, HelloError> {
    if hello.context.len() > MAX_CONTEXT_LEN {
        return Err(HelloError::BadLength {
            claimed: (HELLO_FIXED_LEN + hello.context.len())
                .try_into()
                .unwrap_or(u32::MAX),
        });
    }
    check_layout(hello.layout).map_err(HelloError::RingSize)?;
    let wire = HelloWire {
        magic: HELLO_MAGIC,
        version: U32::new(PROTOCOL_VERSION),
        hello_len: U32::new((HELLO_FIXED_LEN + hello.context.len()) as u32),
        region_size: U64::new(hello.region_size),
        to_acceptor_data: U32::new(hello.layout.to_acceptor),
        to_offerer_data: U32::new(hello.layout.to_offerer),
        ring_version: U32::new(coresident_ring::VERSION),
        reserved: U32::new(0),
        offerer_id: encode_id(Some(&hello.offerer)),
        acceptor_id: encode_id(hello.acceptor.as_ref()),
    };
    let mut out = Vec::with_capacity(HELLO_FIXED_LEN + hello.context.len());
    out.extend_from_slice(wire.as_bytes());
    out.extend_from_slice(&hello.context);
    Ok(out)
}

/// An ack the acceptor sent is malformed, or a refusal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AckError {
    /// The ack does not start with [`ACK_MAGIC`].
    BadMagic,
    /// The acceptor refused, with this reason.
    Rejected(RejectReason),
    /// The acceptor accepted, but speaks another protocol version.
    VersionMismatch {
        /// Our version.
        ours: u32,
        /// The acceptor's.
        theirs: u32,
    },
}

impl fmt::Display for AckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadMagic => f.write_str("ack: bad magic (not a coresident peer)"),
            Self::Rejected(r) => write!(f, "the peer refused the offer: {r}"),
            Self::VersionMismatch { ours, theirs } => write!(
                f,
                "ack: peer speaks protocol version {theirs}, we speak {ours}"
            ),
        }
    }
}

impl std::error::Error for AckError {}

/// Encodes an ack with `status` (0: accepted).
#[must_use]
pub fn encode_ack(status: u32) -> [u8; ACK_LEN] {
    let ack = AckWire {
        magic: ACK_MAGIC,
        version: U32::new(PROTOCOL_VERSION),
        status: U32::new(status),
    };
    let mut out = [0u8; ACK_LEN];
    out.copy_from_slice(ack.as_bytes());
    out
}

/// Parses an ack: `Ok(())` if the acceptor accepted.
///
/// A refusal is reported whatever version the acceptor speaks (its reason is what the
/// offerer needs); an acceptance from another version is refused.
///
/// # Errors
///
/// An [`AckError`].
pub fn parse_ack(bytes: &[u8; ACK_LEN]) -> Result<(), AckError> {
    // Infallible: the buffer has exactly the struct's size and any bytes are valid.
    let ack = AckWire::read_from_bytes(bytes).map_err(|_| AckError::BadMagic)?;
    if ack.magic != ACK_MAGIC {
        return Err(AckError::BadMagic);
    }
    if let code @ 1.. = ack.status.get() {
        return Err(AckError::Rejected(RejectReason::from_code(code)));
    }
    if ack.version.get() != PROTOCOL_VERSION {
        return Err(AckError::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs: ack.version.get(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(context: &[u8]) -> Hello {
        let layout = ChannelLayout {
            to_acceptor: 4096,
            to_offerer: 8192,
        };
        Hello {
            region_size: region_alloc_size(layout) as u64,
            layout,
            offerer: "a".parse().unwrap(),
            acceptor: Some("fd00::1".parse().unwrap()),
            context: context.to_vec(),
        }
    }

    #[test]
    fn id_field_round_trip_and_garbage() {
        let id: PeerId = "fd00::1".parse().unwrap();
        assert_eq!(decode_id(&encode_id(Some(&id))), Ok(Some(id)));
        assert_eq!(decode_id(&encode_id(None)), Ok(None));
        let mut f = [0u8; 64];
        f[0] = 64;
        assert_eq!(decode_id(&f), Err(PeerIdError::TooLong));
        f[0] = 2;
        f[1] = 0xff;
        f[2] = b'a';
        assert_eq!(decode_id(&f), Err(PeerIdError::BadName));
    }

    #[test]
    fn hello_bytes_and_round_trip() {
        let h = hello(b"session 42");
        let b = encode_hello(&h).unwrap();
        assert_eq!(b.len(), 168 + 10);
        assert_eq!(&b[..8], b"CRSDSHM\0");
        assert_eq!(&b[8..12], &2u32.to_le_bytes());
        assert_eq!(&b[12..16], &178u32.to_le_bytes());
        assert_eq!(&b[24..28], &4096u32.to_le_bytes());
        assert_eq!(&b[32..36], &coresident_ring::VERSION.to_le_bytes());
        assert_eq!(&b[40..42], &[1, b'a']);
        assert_eq!(&b[168..], b"session 42");
        assert_eq!(parse_hello(&b, u64::MAX), Ok(h));
        let mut long = hello(&[7; 256]);
        assert!(parse_hello(&encode_hello(&long).unwrap(), u64::MAX).is_ok());
        long.context.push(0);
        assert!(matches!(
            encode_hello(&long),
            Err(HelloError::BadLength { claimed: 425 })
        ));
    }

    #[test]
    fn hello_refusals() {
        let good = encode_hello(&hello(b"")).unwrap();
        let with = |at: usize, v: &[u8]| {
            let mut b = good.clone();
            b[at..at + v.len()].copy_from_slice(v);
            parse_hello(&b, u64::MAX)
        };
        assert_eq!(with(0, b"GET / HT"), Err(HelloError::BadMagic));
        assert_eq!(
            with(8, &1u32.to_le_bytes()),
            Err(HelloError::VersionMismatch { ours: 2, theirs: 1 })
        );
        assert_eq!(
            with(12, &169u32.to_le_bytes()),
            Err(HelloError::BadLength { claimed: 169 })
        );
        assert_eq!(
            with(12, &10_000u32.to_le_bytes()),
            Err(HelloError::BadLength { claimed: 10_000 })
        );
        assert_eq!(
            with(32, &9u32.to_le_bytes()),
            Err(HelloError::RingVersion { ours: 1, theirs: 9 })
        );
        assert_eq!(
            with(36, &1u32.to_le_bytes()),
            Err(HelloError::Reserved { value: 1 })
        );
        assert_eq!(
            with(24, &5000u32.to_le_bytes()),
            Err(HelloError::RingSize(RingSizeError::NotPowerOfTwo {
                size: 5000
            }))
        );
        // 2^29 is a power of two: it is out of range, and says so.
        let e = with(24, &(1u32 << 29).to_le_bytes()).unwrap_err();
        assert_eq!(
            e,
            HelloError::RingSize(RingSizeError::OutOfRange { size: 1 << 29 })
        );
        assert!(e.to_string().contains("outside"), "{e}");
        assert!(matches!(
            with(16, &u64::MAX.to_le_bytes()),
            Err(HelloError::RegionTooLarge { .. })
        ));
        assert!(matches!(
            with(16, &4096u64.to_le_bytes()),
            Err(HelloError::RegionTooSmall { .. })
        ));
        assert_eq!(
            with(40, &[0]),
            Err(HelloError::BadPeerId(PeerIdError::Empty))
        );
        assert_eq!(
            parse_hello(&good[..100], u64::MAX),
            Err(HelloError::BadLength { claimed: 168 })
        );
        assert!(matches!(
            parse_hello(&good[..3], u64::MAX),
            Err(HelloError::BadLength { .. })
        ));
    }

    #[test]
    fn acks() {
        assert_eq!(parse_ack(&encode_ack(0)), Ok(()));
        assert_eq!(
            parse_ack(&encode_ack(RejectReason::Credentials.code())),
            Err(AckError::Rejected(RejectReason::Credentials))
        );
        let mut b = encode_ack(0);
        b[8] = 1;
        assert_eq!(
            parse_ack(&b),
            Err(AckError::VersionMismatch { ours: 2, theirs: 1 })
        );
        b[0] = 0;
        assert_eq!(parse_ack(&b), Err(AckError::BadMagic));
    }
}
