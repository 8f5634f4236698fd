//! The rendezvous messages, byte for byte (protocol version 1).
//!
//! All integers are little-endian; the structs have no padding and alignment 1
//! (zerocopy's derives prove it), so two builds of this crate, or an implementation in
//! another language, agree on every byte.
//!
//! ```text
//! Hello (168 bytes), offerer -> acceptor, with SCM_RIGHTS [memfd, to_offerer, to_acceptor]
//!   0  magic             [u8; 8]  "CRSDSHM\0"
//!   8  version           u32      PROTOCOL_VERSION
//!  12  hello_len         u32      168
//!  16  region_size       u64      size of the memfd in bytes
//!  24  to_acceptor_data  u64      data size of the ring the offerer produces into
//!  32  to_offerer_data   u64      data size of the ring the acceptor produces into
//!  40  offerer_id        [u8; 64] length byte (1..=63) + peer id text, zero-filled
//! 104  acceptor_id       [u8; 64] length byte (0 = unspecified) + peer id text
//!
//! Ack (16 bytes), acceptor -> offerer, no descriptors
//!   0  magic             [u8; 8]  "CRSDACK\0"
//!   8  version           u32      PROTOCOL_VERSION
//!  12  status            u32      0 = accepted, else a RejectReason code
//! ```
//!
//! The first 16 bytes of a hello (magic, version, length) are read and checked on
//! their own before the rest, so a peer speaking another version gets a clear
//! "version mismatch" rather than a time-out.

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::peer_id::{PeerId, PeerIdError, MAX_ID_LEN};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// The magic that opens a hello.
pub const HELLO_MAGIC: [u8; 8] = *b"CRSDSHM\0";

/// The magic that opens an ack.
pub const ACK_MAGIC: [u8; 8] = *b"CRSDACK\0";

/// The size of a version-1 hello in bytes.
pub const HELLO_LEN: usize = core::mem::size_of::<HelloWire>();

/// The size of the part of a hello that every version shares (magic, version, length).
pub const HELLO_PREFIX_LEN: usize = 16;

/// The size of an ack in bytes.
pub const ACK_LEN: usize = core::mem::size_of::<AckWire>();

/// The number of descriptors a hello carries.
pub const HELLO_FDS: usize = 3;

/// A hello as it travels (see the module docs for the field meanings).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct HelloWire {
    /// [`HELLO_MAGIC`].
    pub magic: [u8; 8],
    /// The sender's protocol version.
    pub version: U32,
    /// The length of the whole hello in bytes ([`HELLO_LEN`] in version 1).
    pub hello_len: U32,
    /// The memfd's size in bytes.
    pub region_size: U64,
    /// Data size of the ring the offerer produces into.
    pub to_acceptor_data: U64,
    /// Data size of the ring the acceptor produces into.
    pub to_offerer_data: U64,
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
    /// 0 if accepted, else a [`crate::RejectReason`] code.
    pub status: U32,
}

const _: () = assert!(HELLO_LEN == 168);
const _: () = assert!(ACK_LEN == 16);
const _: () = assert!(core::mem::offset_of!(HelloWire, region_size) == HELLO_PREFIX_LEN);
const _: () = assert!(core::mem::offset_of!(HelloWire, offerer_id) == 40);
const _: () = assert!(core::mem::offset_of!(HelloWire, acceptor_id) == 104);
const _: () = assert!(MAX_ID_LEN < 64);

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
/// text is not UTF-8 ([`PeerIdError::BadName`]) or not a valid id.
pub fn decode_id(field: &[u8; 64]) -> Result<Option<PeerId>, PeerIdError> {
    let n = usize::from(field[0]);
    if n == 0 {
        return Ok(None);
    }
    let bytes = field.get(1..=n).ok_or(PeerIdError::TooLong)?;
    let text = core::str::from_utf8(bytes).map_err(|_| PeerIdError::BadName)?;
    text.parse().map(Some)
}

impl HelloWire {
    /// A version-1 hello with the given fields.
    #[must_use]
    pub fn new(
        region_size: u64,
        to_acceptor_data: u64,
        to_offerer_data: u64,
        offerer: &PeerId,
        acceptor: Option<&PeerId>,
    ) -> Self {
        Self {
            magic: HELLO_MAGIC,
            version: U32::new(PROTOCOL_VERSION),
            hello_len: U32::new(HELLO_LEN as u32),
            region_size: U64::new(region_size),
            to_acceptor_data: U64::new(to_acceptor_data),
            to_offerer_data: U64::new(to_offerer_data),
            offerer_id: encode_id(Some(offerer)),
            acceptor_id: encode_id(acceptor),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn hello_bytes() {
        let h = HelloWire::new(1, 2, 3, &"a".parse().unwrap(), None);
        let b = h.as_bytes();
        assert_eq!(&b[..8], b"CRSDSHM\0");
        assert_eq!(&b[8..12], &1u32.to_le_bytes());
        assert_eq!(&b[12..16], &168u32.to_le_bytes());
        assert_eq!(&b[16..24], &1u64.to_le_bytes());
        assert_eq!(&b[40..42], &[1, b'a']);
        let back = HelloWire::read_from_bytes(b).unwrap();
        assert_eq!(back.to_offerer_data.get(), 3);
    }
}
