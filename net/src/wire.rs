//! What goes on the wires a session adds: the segment header on TCP, the frame kinds on
//! the ring, and the session hello on the rendezvous socket. Every field read from a
//! peer is validated here, before anything acts on it.
//!
//! ```text
//! TCP segment (in a session, both directions, every byte):
//!   0      1..4      4..8        8..16
//!   kind | 0 0 0 | len u32 LE | offset u64 LE | payload (len bytes, DATA only)
//!   kind 1 DATA    bytes [offset, offset + len) of this direction's stream
//!   kind 2 FIN     no payload; offset = the final length of this direction
//!   kind 3 UPGRADE no payload; "residency is back, offer a new channel" (to the
//!                  connecting side, which alone offers)
//!
//! ring frames (kind byte of the ring's frame header):
//!   kind 1 EPOCH   payload: epoch u32 LE | 0 u32 | start offset u64 LE; first frame
//!   kind 2 DATA    payload: the bytes that follow the previous frame's
//!
//! session hello (connecting side -> registry socket, before the host handshake):
//!   "CRNETS1\0" | version u16 | mode u8 | 0 u8 | epoch u32 | session id [16]
//!   | src ip [16] | src port u16 | dst ip [16] | dst port u16 | 0 [2]      (72 bytes)
//!   then, after the host transport's ack, epoch 0 only: one COMMIT byte (0xC0)
//! ```

use core::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// Bytes of a TCP segment header.
pub const SEG_HEADER: usize = 16;
/// The largest payload of one TCP segment (what a receiver ever holds back).
pub const MAX_SEGMENT: usize = 64 * 1024;
/// Segment kind: bytes of the stream.
pub const SEG_DATA: u8 = 1;
/// Segment kind: the final offset of this direction.
pub const SEG_FIN: u8 = 2;
/// Segment kind: the accepting side asks the connecting side for a new channel.
pub const SEG_UPGRADE: u8 = 3;

/// Ring frame kind: the first frame of a channel, naming where its bytes start.
pub const FRAME_EPOCH: u8 = 1;
/// Ring frame kind: stream bytes.
pub const FRAME_DATA: u8 = 2;
/// Bytes of an EPOCH frame's payload.
pub const EPOCH_LEN: usize = 16;

/// The magic that opens a session hello.
pub const HELLO_MAGIC: [u8; 8] = *b"CRNETS1\0";
/// The hello's version.
pub const HELLO_VERSION: u16 = 1;
/// Bytes of a session hello.
pub const HELLO_LEN: usize = 72;
/// The byte a connecting side writes on the rendezvous socket once it is committed to
/// the session (after the host transport's ack, before its TCP connect).
pub const COMMIT: u8 = 0xC0;

/// A TCP segment header, validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// [`SEG_DATA`], [`SEG_FIN`] or [`SEG_UPGRADE`].
    pub kind: u8,
    /// Payload length: `1..=MAX_SEGMENT` for DATA, 0 otherwise.
    pub len: u32,
    /// The stream offset of the first payload byte (DATA) or the final offset (FIN).
    pub offset: u64,
}

/// A peer's bytes that are not a valid header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WireError {
    /// A segment kind this version does not know.
    UnknownKind(u8),
    /// Reserved bytes are not zero.
    Reserved,
    /// A DATA segment of 0 or more than [`MAX_SEGMENT`] bytes, or a control segment
    /// with a payload.
    BadLength(u32),
    /// The offset plus the length overflows.
    Overflow,
    /// A hello with the wrong magic.
    Magic,
    /// A hello of another version.
    Version(u16),
    /// A hello with a mode this version does not know.
    Mode(u8),
    /// An EPOCH frame of the wrong size, or a first frame that is not one.
    Epoch,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownKind(k) => write!(f, "unknown segment kind {k}"),
            Self::Reserved => f.write_str("reserved header bytes are not zero"),
            Self::BadLength(l) => write!(f, "segment length {l} out of range"),
            Self::Overflow => f.write_str("segment offset plus length overflows"),
            Self::Magic => f.write_str("session hello with a wrong magic"),
            Self::Version(v) => write!(f, "session hello of version {v}"),
            Self::Mode(m) => write!(f, "session hello with unknown mode {m}"),
            Self::Epoch => f.write_str("ring channel without a valid epoch frame"),
        }
    }
}

impl std::error::Error for WireError {}

impl Segment {
    /// The header's bytes.
    pub fn encode(&self) -> [u8; SEG_HEADER] {
        let mut b = [0u8; SEG_HEADER];
        b[0] = self.kind;
        b[4..8].copy_from_slice(&self.len.to_le_bytes());
        b[8..16].copy_from_slice(&self.offset.to_le_bytes());
        b
    }

    /// Parses and validates a header.
    ///
    /// # Errors
    ///
    /// Unknown kind, reserved bytes set, a length out of range, an offset that
    /// overflows.
    pub fn decode(b: &[u8; SEG_HEADER]) -> Result<Self, WireError> {
        let kind = b[0];
        if b[1..4] != [0, 0, 0] {
            return Err(WireError::Reserved);
        }
        let len = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        let mut o = [0u8; 8];
        o.copy_from_slice(&b[8..16]);
        let offset = u64::from_le_bytes(o);
        match kind {
            SEG_DATA if len == 0 || len as usize > MAX_SEGMENT => {
                return Err(WireError::BadLength(len))
            }
            SEG_DATA => {}
            SEG_FIN | SEG_UPGRADE if len != 0 => return Err(WireError::BadLength(len)),
            SEG_FIN | SEG_UPGRADE => {}
            k => return Err(WireError::UnknownKind(k)),
        }
        if offset.checked_add(u64::from(len)).is_none() {
            return Err(WireError::Overflow);
        }
        Ok(Self { kind, len, offset })
    }
}

/// The payload of an EPOCH frame.
pub fn encode_epoch(epoch: u32, start: u64) -> [u8; EPOCH_LEN] {
    let mut b = [0u8; EPOCH_LEN];
    b[..4].copy_from_slice(&epoch.to_le_bytes());
    b[8..].copy_from_slice(&start.to_le_bytes());
    b
}

/// Parses an EPOCH frame's payload: `(epoch, start)`.
///
/// # Errors
///
/// [`WireError::Epoch`] for a payload of the wrong length or reserved bytes set.
pub fn decode_epoch(b: &[u8]) -> Result<(u32, u64), WireError> {
    if b.len() != EPOCH_LEN || b[4..8] != [0; 4] {
        return Err(WireError::Epoch);
    }
    let mut e = [0u8; 4];
    e.copy_from_slice(&b[..4]);
    let mut s = [0u8; 8];
    s.copy_from_slice(&b[8..]);
    Ok((u32::from_le_bytes(e), u64::from_le_bytes(s)))
}

/// What a connecting side tells the listener before the host handshake: which TCP
/// connection the channel belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Hello {
    /// 0: bytes. (Messages are framed in the byte stream, so both paths keep their
    /// boundaries; the mode is carried for a future ring-native message mode.)
    pub mode: u8,
    /// 0 at connect time; each later channel of the session has a higher one.
    pub epoch: u32,
    /// The session's random id.
    pub session: [u8; 16],
    /// The TCP connection, as the connecting side sees it.
    pub tuple: FourTuple,
}

/// A TCP connection's addresses, from the connecting side's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FourTuple {
    /// The connecting side's address.
    pub src: SocketAddr,
    /// The listening side's address.
    pub dst: SocketAddr,
}

impl fmt::Display for FourTuple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.src, self.dst)
    }
}

impl FourTuple {
    /// The same connection with IPv4-mapped IPv6 addresses turned into IPv4 (a dual-stack
    /// listener sees `::ffff:a.b.c.d` where the client used `a.b.c.d`).
    pub fn canonical(self) -> Self {
        Self {
            src: canonical(self.src),
            dst: canonical(self.dst),
        }
    }
}

/// `addr` with an IPv4-mapped IPv6 address turned into IPv4.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), addr.port()),
            None => addr,
        },
        IpAddr::V4(_) => addr,
    }
}

fn put_addr(b: &mut [u8], a: SocketAddr) {
    let v6 = match a.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    b[..16].copy_from_slice(&v6.octets());
    b[16..18].copy_from_slice(&a.port().to_le_bytes());
}

fn get_addr(b: &[u8]) -> SocketAddr {
    let mut o = [0u8; 16];
    o.copy_from_slice(&b[..16]);
    let port = u16::from_le_bytes([b[16], b[17]]);
    canonical(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(o)), port))
}

impl Hello {
    /// The hello's bytes.
    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let mut b = [0u8; HELLO_LEN];
        b[..8].copy_from_slice(&HELLO_MAGIC);
        b[8..10].copy_from_slice(&HELLO_VERSION.to_le_bytes());
        b[10] = self.mode;
        b[12..16].copy_from_slice(&self.epoch.to_le_bytes());
        b[16..32].copy_from_slice(&self.session);
        put_addr(&mut b[32..50], self.tuple.src);
        put_addr(&mut b[50..68], self.tuple.dst);
        b
    }

    /// Parses and validates a hello.
    ///
    /// # Errors
    ///
    /// Wrong magic or version, unknown mode, reserved bytes set.
    pub fn decode(b: &[u8; HELLO_LEN]) -> Result<Self, WireError> {
        if b[..8] != HELLO_MAGIC {
            return Err(WireError::Magic);
        }
        let version = u16::from_le_bytes([b[8], b[9]]);
        if version != HELLO_VERSION {
            return Err(WireError::Version(version));
        }
        if b[10] != 0 {
            return Err(WireError::Mode(b[10]));
        }
        if b[11] != 0 || b[68..] != [0; 4] {
            return Err(WireError::Reserved);
        }
        let mut session = [0u8; 16];
        session.copy_from_slice(&b[16..32]);
        Ok(Self {
            mode: 0,
            epoch: u32::from_le_bytes([b[12], b[13], b[14], b[15]]),
            session,
            tuple: FourTuple {
                src: get_addr(&b[32..50]),
                dst: get_addr(&b[50..68]),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_round_trip_and_refuse_garbage() {
        for s in [
            Segment {
                kind: SEG_DATA,
                len: 1,
                offset: 0,
            },
            Segment {
                kind: SEG_DATA,
                len: MAX_SEGMENT as u32,
                offset: 1 << 40,
            },
            Segment {
                kind: SEG_FIN,
                len: 0,
                offset: 77,
            },
            Segment {
                kind: SEG_UPGRADE,
                len: 0,
                offset: 0,
            },
        ] {
            assert_eq!(Segment::decode(&s.encode()), Ok(s));
        }
        let mut b = Segment {
            kind: SEG_DATA,
            len: 0,
            offset: 0,
        }
        .encode();
        assert_eq!(Segment::decode(&b), Err(WireError::BadLength(0)));
        b[4..8].copy_from_slice(&(MAX_SEGMENT as u32 + 1).to_le_bytes());
        assert!(Segment::decode(&b).is_err());
        b[0] = 9;
        assert_eq!(Segment::decode(&b), Err(WireError::UnknownKind(9)));
        let mut f = Segment {
            kind: SEG_FIN,
            len: 0,
            offset: 0,
        }
        .encode();
        f[2] = 1;
        assert_eq!(Segment::decode(&f), Err(WireError::Reserved));
        let o = Segment {
            kind: SEG_DATA,
            len: 10,
            offset: u64::MAX - 3,
        }
        .encode();
        assert_eq!(Segment::decode(&o), Err(WireError::Overflow));
    }

    #[test]
    fn hello_round_trips_and_refuses_garbage() {
        let h = Hello {
            mode: 0,
            epoch: 3,
            session: [7; 16],
            tuple: FourTuple {
                src: "127.0.0.1:4000".parse().unwrap(),
                dst: "[::1]:80".parse().unwrap(),
            },
        };
        assert_eq!(Hello::decode(&h.encode()), Ok(h));
        let mut b = h.encode();
        b[0] ^= 1;
        assert_eq!(Hello::decode(&b), Err(WireError::Magic));
        let mut b = h.encode();
        b[8] = 2;
        assert_eq!(Hello::decode(&b), Err(WireError::Version(2)));
        let mut b = h.encode();
        b[70] = 1;
        assert_eq!(Hello::decode(&b), Err(WireError::Reserved));
        assert_eq!(decode_epoch(&encode_epoch(5, 1 << 33)), Ok((5, 1 << 33)));
        assert_eq!(decode_epoch(&[0; 3]), Err(WireError::Epoch));
    }
}
