//! The XenStore wire protocol, `xen/include/public/io/xs_wire.h` (Xen
//! 4.17): framing, message types, error names, permissions and value
//! parsing. `core` only (no allocation), so a `no_std` backend can share it.
//!
//! ```text
//! ┌──────────┬──────────┬──────────┬──────────┬─────────────────────────┐
//! │ type u32 │ req_id   │ tx_id    │ len      │ payload: len <= 4096    │
//! └──────────┴──────────┴──────────┴──────────┴─────────────────────────┘
//!   host byte order (struct xsd_sockmsg)        NUL-separated strings
//! ```
//!
//! Payloads by request: `READ`, `DIRECTORY`, `GET_PERMS`, `MKDIR`, `RM`:
//! `path\0`; `WRITE`: `path\0value` (value unterminated); `SET_PERMS`:
//! `path\0perm\0perm\0…`; `WATCH`/`UNWATCH`: `path\0token\0`;
//! `TRANSACTION_START`: `\0`; `TRANSACTION_END`: `T\0` or `F\0`;
//! `GET_DOMAIN_PATH`: `domid\0`. Replies: the value (`READ`), NUL-terminated
//! names (`DIRECTORY`), `OK\0`, or `XS_ERROR` with an errno name (`ENOENT\0`).
//! Watch events arrive unrequested, interleaved with replies: `XS_WATCH_EVENT`
//! with `path\0token\0`.
//!
//! Every byte here may come from a guest (values, directory names, paths in
//! watch events): the parsers take bytes and return typed errors.

use core::fmt;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `XENSTORE_PAYLOAD_MAX`: the largest payload either side may send.
///
/// # Examples
///
/// ```
/// use coresident_xen::protocol::xs_wire::{Payload, PAYLOAD_MAX};
///
/// let mut p = Payload::new();
/// assert!(p.raw(&[b'x'; PAYLOAD_MAX]).is_ok());
/// assert!(p.raw(b"x").is_err()); // one byte past the limit
/// ```
pub const PAYLOAD_MAX: usize = 4096;
/// `XENSTORE_ABS_PATH_MAX`.
///
/// # Examples
///
/// ```
/// use coresident_xen::protocol::xs_wire::{Payload, ABS_PATH_MAX};
///
/// let long = format!("/{}", "x".repeat(ABS_PATH_MAX - 1));
/// assert!(Payload::new().path(&long).is_ok());
/// assert!(Payload::new().path(&format!("{long}x")).is_err());
/// ```
pub const ABS_PATH_MAX: usize = 3072;
/// `XENSTORE_REL_PATH_MAX`.
///
/// # Examples
///
/// ```
/// use coresident_xen::protocol::xs_wire::{Payload, REL_PATH_MAX};
///
/// assert!(Payload::new().path(&"x".repeat(REL_PATH_MAX)).is_ok());
/// assert!(Payload::new().path(&"x".repeat(REL_PATH_MAX + 1)).is_err());
/// ```
pub const REL_PATH_MAX: usize = 2048;
/// Size of [`XsdSockmsg`].
///
/// # Examples
///
/// ```
/// use coresident_xen::protocol::xs_wire::{XsdSockmsg, HEADER_LEN};
///
/// assert_eq!(size_of::<XsdSockmsg>(), HEADER_LEN);
/// ```
pub const HEADER_LEN: usize = 16;

/// `xen/include/public/io/xs_wire.h`: `struct xsd_sockmsg`.
///
/// # Examples
///
/// ```
/// use coresident_xen::protocol::xs_wire::{XsdSockmsg, HEADER_LEN};
/// use zerocopy::{FromBytes, IntoBytes};
///
/// let m = XsdSockmsg { r#type: 2, req_id: 1, tx_id: 0, len: 6 };
/// assert_eq!(m.as_bytes().len(), HEADER_LEN);
/// assert_eq!(XsdSockmsg::read_from_bytes(m.as_bytes()), Ok(m));
/// ```
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct XsdSockmsg {
    /// `XS_*` ([`MsgType`]).
    pub r#type: u32,
    /// Request id, echoed in the reply.
    pub req_id: u32,
    /// Transaction id, 0 outside transactions.
    pub tx_id: u32,
    /// Payload length in bytes.
    pub len: u32,
}
const _: () = assert!(size_of::<XsdSockmsg>() == HEADER_LEN);

/// `enum xsd_sockmsg_type` (the values this crate sends or accepts).
///
/// # Examples
///
/// ```
/// use coresident_xen::protocol::xs_wire::MsgType;
///
/// assert_eq!(MsgType::Write as u32, 11);
/// assert_eq!(MsgType::from_u32(MsgType::WatchEvent as u32), Some(MsgType::WatchEvent));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[repr(u32)]
pub enum MsgType {
    /// `XS_DIRECTORY`.
    Directory = 1,
    /// `XS_READ`.
    Read = 2,
    /// `XS_GET_PERMS`.
    GetPerms = 3,
    /// `XS_WATCH`.
    Watch = 4,
    /// `XS_UNWATCH`.
    Unwatch = 5,
    /// `XS_TRANSACTION_START`.
    TransactionStart = 6,
    /// `XS_TRANSACTION_END`.
    TransactionEnd = 7,
    /// `XS_GET_DOMAIN_PATH`.
    GetDomainPath = 10,
    /// `XS_WRITE`.
    Write = 11,
    /// `XS_MKDIR`.
    Mkdir = 12,
    /// `XS_RM`.
    Rm = 13,
    /// `XS_SET_PERMS`.
    SetPerms = 14,
    /// `XS_WATCH_EVENT`.
    WatchEvent = 15,
    /// `XS_ERROR`.
    Error = 16,
}

impl MsgType {
    /// The type for a wire value, `None` if unknown here.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::protocol::xs_wire::MsgType;
    ///
    /// assert_eq!(MsgType::from_u32(2), Some(MsgType::Read));
    /// assert_eq!(MsgType::from_u32(8), None); // XS_INTRODUCE: never sent here
    /// ```
    pub const fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::Directory,
            2 => Self::Read,
            3 => Self::GetPerms,
            4 => Self::Watch,
            5 => Self::Unwatch,
            6 => Self::TransactionStart,
            7 => Self::TransactionEnd,
            10 => Self::GetDomainPath,
            11 => Self::Write,
            12 => Self::Mkdir,
            13 => Self::Rm,
            14 => Self::SetPerms,
            15 => Self::WatchEvent,
            16 => Self::Error,
            _ => return None,
        })
    }
}

/// A framing error: the bytes cannot be a valid message.
///
/// # Examples
///
/// ```
/// use coresident_xen::protocol::xs_wire::{Payload, WireError};
///
/// let e = Payload::new().path("").unwrap_err();
/// assert_eq!(e, WireError::BadPath);
/// assert_eq!(e.to_string(), "empty or over-long XenStore path");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WireError {
    /// A payload longer than [`PAYLOAD_MAX`] (the `len` field).
    TooLong(u32),
    /// An unknown message type.
    UnknownType(u32),
    /// A string that must not contain NUL does.
    InteriorNul,
    /// A path longer than [`ABS_PATH_MAX`]/[`REL_PATH_MAX`], or empty.
    BadPath,
    /// A payload without the NUL terminators its type requires.
    Malformed,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLong(n) => write!(f, "XenStore payload of {n} bytes exceeds {PAYLOAD_MAX}"),
            Self::UnknownType(t) => write!(f, "unknown XenStore message type {t}"),
            Self::InteriorNul => f.write_str("NUL byte inside a XenStore string"),
            Self::BadPath => f.write_str("empty or over-long XenStore path"),
            Self::Malformed => f.write_str("malformed XenStore payload"),
        }
    }
}

impl core::error::Error for WireError {}

/// A decoded, validated header.
///
/// # Examples
///
/// ```
/// use coresident_xen::protocol::xs_wire::{Header, MsgType, HEADER_LEN};
///
/// let reply = Header { ty: MsgType::Error, req_id: 3, tx_id: 0, len: 7 };
/// let bytes: [u8; HEADER_LEN] = reply.encode()?;
/// assert_eq!(Header::decode(&bytes)?.ty, MsgType::Error);
/// # Ok::<(), coresident_xen::protocol::xs_wire::WireError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The message type.
    pub ty: MsgType,
    /// Request id.
    pub req_id: u32,
    /// Transaction id.
    pub tx_id: u32,
    /// Payload length, `0 ..= PAYLOAD_MAX`.
    pub len: usize,
}

impl Header {
    /// Decodes and validates a received header.
    ///
    /// # Errors
    ///
    /// [`WireError::TooLong`], [`WireError::UnknownType`].
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::protocol::xs_wire::{Header, MsgType, WireError};
    ///
    /// let h = Header { ty: MsgType::Watch, req_id: 9, tx_id: 0, len: 20 };
    /// assert_eq!(Header::decode(&h.encode()?)?, h);
    /// let mut bad = h.encode()?;
    /// bad[0] = 99; // a type this crate does not know
    /// assert_eq!(Header::decode(&bad), Err(WireError::UnknownType(99)));
    /// # Ok::<(), WireError>(())
    /// ```
    pub fn decode(bytes: &[u8; HEADER_LEN]) -> Result<Self, WireError> {
        let raw = XsdSockmsg::read_from_bytes(bytes).map_err(|_| WireError::Malformed)?;
        let len = usize::try_from(raw.len).map_err(|_| WireError::TooLong(raw.len))?;
        if len > PAYLOAD_MAX {
            return Err(WireError::TooLong(raw.len));
        }
        let ty = MsgType::from_u32(raw.r#type).ok_or(WireError::UnknownType(raw.r#type))?;
        Ok(Self {
            ty,
            req_id: raw.req_id,
            tx_id: raw.tx_id,
            len,
        })
    }

    /// Encodes the header.
    ///
    /// # Errors
    ///
    /// [`WireError::TooLong`] if `len` exceeds [`PAYLOAD_MAX`].
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::protocol::xs_wire::{Header, MsgType, WireError};
    ///
    /// let h = Header { ty: MsgType::Read, req_id: 1, tx_id: 0, len: 6 };
    /// let bytes = h.encode()?;
    /// assert_eq!(bytes[..4], 2u32.to_le_bytes()); // XS_READ, in host order
    /// assert_eq!(Header { len: 5000, ..h }.encode(), Err(WireError::TooLong(5000)));
    /// # Ok::<(), WireError>(())
    /// ```
    pub fn encode(&self) -> Result<[u8; HEADER_LEN], WireError> {
        if self.len > PAYLOAD_MAX {
            return Err(WireError::TooLong(
                u32::try_from(self.len).unwrap_or(u32::MAX),
            ));
        }
        let raw = XsdSockmsg {
            r#type: self.ty as u32,
            req_id: self.req_id,
            tx_id: self.tx_id,
            len: u32::try_from(self.len).map_err(|_| WireError::TooLong(u32::MAX))?,
        };
        let mut out = [0u8; HEADER_LEN];
        out.copy_from_slice(raw.as_bytes());
        Ok(out)
    }
}

/// Builds a payload in a fixed [`PAYLOAD_MAX`] buffer.
///
/// # Examples
///
/// ```
/// use coresident_xen::protocol::xs_wire::{Payload, WireError};
///
/// let mut p = Payload::new();
/// p.path("data/app/state")?.raw(b"ready")?;
/// assert_eq!(p.as_bytes(), b"data/app/state\0ready");
/// # Ok::<(), WireError>(())
/// ```
#[derive(Clone)]
pub struct Payload {
    buf: [u8; PAYLOAD_MAX],
    /// Bytes used, `0 ..= PAYLOAD_MAX`.
    len: usize,
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Payload")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl Default for Payload {
    fn default() -> Self {
        Self::new()
    }
}

impl Payload {
    /// An empty payload.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::protocol::xs_wire::Payload;
    ///
    /// let mut p = Payload::new();
    /// p.path("domid")?; // a READ
    /// assert_eq!(p.as_bytes().len(), 6);
    /// # Ok::<(), coresident_xen::protocol::xs_wire::WireError>(())
    /// ```
    pub const fn new() -> Self {
        Self {
            buf: [0; PAYLOAD_MAX],
            len: 0,
        }
    }

    /// The bytes so far.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::protocol::xs_wire::Payload;
    ///
    /// assert_eq!(Payload::new().as_bytes(), b"");
    /// ```
    pub fn as_bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&[])
    }

    /// Appends raw bytes (a `WRITE` value).
    ///
    /// # Errors
    ///
    /// [`WireError::TooLong`] past [`PAYLOAD_MAX`].
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::protocol::xs_wire::{Payload, WireError, PAYLOAD_MAX};
    ///
    /// // A WRITE: the path, then the value's bytes, no terminator.
    /// let mut p = Payload::new();
    /// p.path("data/x")?.raw(b"1")?;
    /// assert_eq!(p.as_bytes(), b"data/x\x001");
    /// assert!(matches!(p.raw(&[0; PAYLOAD_MAX]), Err(WireError::TooLong(_))));
    /// # Ok::<(), WireError>(())
    /// ```
    pub fn raw(&mut self, bytes: &[u8]) -> Result<&mut Self, WireError> {
        let end = self
            .len
            .checked_add(bytes.len())
            .filter(|&e| e <= PAYLOAD_MAX);
        let end = end.ok_or(WireError::TooLong(
            u32::try_from(self.len + bytes.len()).unwrap_or(u32::MAX),
        ))?;
        self.buf
            .get_mut(self.len..end)
            .ok_or(WireError::TooLong(u32::MAX))?
            .copy_from_slice(bytes);
        self.len = end;
        Ok(self)
    }

    /// Appends a string and its NUL terminator.
    ///
    /// # Errors
    ///
    /// [`WireError::InteriorNul`], [`WireError::TooLong`].
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::protocol::xs_wire::{Payload, WireError};
    ///
    /// let mut p = Payload::new();
    /// p.string(b"@releaseDomain")?.string(b"token")?; // a WATCH payload
    /// assert_eq!(p.as_bytes(), b"@releaseDomain\0token\0");
    /// assert_eq!(Payload::new().string(b"a\0b").err(), Some(WireError::InteriorNul));
    /// # Ok::<(), WireError>(())
    /// ```
    pub fn string(&mut self, s: &[u8]) -> Result<&mut Self, WireError> {
        if s.contains(&0) {
            return Err(WireError::InteriorNul);
        }
        self.raw(s)?.raw(&[0])
    }

    /// Appends a path and its NUL terminator, checking the path limits.
    ///
    /// # Errors
    ///
    /// [`WireError::BadPath`], [`WireError::InteriorNul`],
    /// [`WireError::TooLong`].
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::protocol::xs_wire::{Payload, WireError, REL_PATH_MAX};
    ///
    /// let mut p = Payload::new();
    /// p.path("data/app")?;
    /// assert_eq!(p.as_bytes(), b"data/app\0");
    /// assert_eq!(Payload::new().path("").err(), Some(WireError::BadPath));
    /// assert_eq!(Payload::new().path(&"x".repeat(REL_PATH_MAX + 1)).err(), Some(WireError::BadPath));
    /// # Ok::<(), WireError>(())
    /// ```
    pub fn path(&mut self, path: &str) -> Result<&mut Self, WireError> {
        let max = if path.starts_with('/') {
            ABS_PATH_MAX
        } else {
            REL_PATH_MAX
        };
        if path.is_empty() || path.len() > max {
            return Err(WireError::BadPath);
        }
        self.string(path.as_bytes())
    }
}

/// Splits a payload of NUL-terminated strings (`DIRECTORY` replies, watch
/// events). A missing final terminator is tolerated; an empty payload
/// yields nothing.
///
/// # Examples
///
/// ```
/// use coresident_xen::protocol::xs_wire::split_strings;
///
/// assert_eq!(split_strings(b"a\0bc\0").collect::<Vec<_>>(), [&b"a"[..], b"bc"]);
/// assert_eq!(split_strings(b"a\0bc").count(), 2); // no final NUL: tolerated
/// assert_eq!(split_strings(b"").count(), 0);
/// ```
pub fn split_strings(payload: &[u8]) -> impl Iterator<Item = &[u8]> {
    let body = payload.strip_suffix(&[0]).unwrap_or(payload);
    let empty = payload.is_empty();
    body.split(|&b| b == 0).filter(move |_| !empty)
}

/// `v` in decimal, written at the end of `buf`: the digits.
///
/// # Examples
///
/// ```
/// use coresident_xen::protocol::xs_wire::decimal;
///
/// assert_eq!(decimal(4096, &mut [0; 20]), b"4096");
/// assert_eq!(decimal(0, &mut [0; 20]), b"0");
/// ```
pub fn decimal(mut v: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        // `v % 10 < 10`: the cast keeps every bit.
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    &buf[i..]
}

/// A watch event: `path\0token\0`.
///
/// # Errors
///
/// [`WireError::Malformed`] if either part is missing.
///
/// # Examples
///
/// ```
/// use coresident_xen::protocol::xs_wire::{parse_watch_event, WireError};
///
/// assert_eq!(parse_watch_event(b"/local/domain/5\0tok\0")?, (&b"/local/domain/5"[..], &b"tok"[..]));
/// assert_eq!(parse_watch_event(b"path-only\0"), Err(WireError::Malformed));
/// # Ok::<(), WireError>(())
/// ```
pub fn parse_watch_event(payload: &[u8]) -> Result<(&[u8], &[u8]), WireError> {
    let mut it = split_strings(payload);
    let path = it.next().ok_or(WireError::Malformed)?;
    let token = it.next().ok_or(WireError::Malformed)?;
    Ok((path, token))
}

/// The errno names of `xsd_errors[]`, as xenstored sends them in `XS_ERROR`.
///
/// # Examples
///
/// ```
/// use coresident_xen::protocol::xs_wire::XsErrno;
///
/// let e = XsErrno::parse(b"ENOSPC\0"); // a quota
/// assert_eq!((e, e.name()), (XsErrno::ENOSPC, "ENOSPC"));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[allow(missing_docs, clippy::upper_case_acronyms)]
pub enum XsErrno {
    EINVAL,
    EACCES,
    EEXIST,
    EISDIR,
    ENOENT,
    ENOMEM,
    ENOSPC,
    EIO,
    ENOTEMPTY,
    ENOSYS,
    EROFS,
    EBUSY,
    EAGAIN,
    EISCONN,
    E2BIG,
    EPERM,
    /// A name not in the table (xenstored's reply is still an error).
    Unknown,
}

impl XsErrno {
    /// Parses an `XS_ERROR` payload (`"ENOENT\0"`).
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::protocol::xs_wire::XsErrno;
    ///
    /// assert_eq!(XsErrno::parse(b"EACCES\0"), XsErrno::EACCES);
    /// assert_eq!(XsErrno::parse(b"EWHAT\0"), XsErrno::Unknown);
    /// ```
    pub fn parse(payload: &[u8]) -> Self {
        let name = payload.strip_suffix(&[0]).unwrap_or(payload);
        match name {
            b"EINVAL" => Self::EINVAL,
            b"EACCES" => Self::EACCES,
            b"EEXIST" => Self::EEXIST,
            b"EISDIR" => Self::EISDIR,
            b"ENOENT" => Self::ENOENT,
            b"ENOMEM" => Self::ENOMEM,
            b"ENOSPC" => Self::ENOSPC,
            b"EIO" => Self::EIO,
            b"ENOTEMPTY" => Self::ENOTEMPTY,
            b"ENOSYS" => Self::ENOSYS,
            b"EROFS" => Self::EROFS,
            b"EBUSY" => Self::EBUSY,
            b"EAGAIN" => Self::EAGAIN,
            b"EISCONN" => Self::EISCONN,
            b"E2BIG" => Self::E2BIG,
            b"EPERM" => Self::EPERM,
            _ => Self::Unknown,
        }
    }

    /// The name of a Linux errno (x86 and Arm numbering), [`Self::Unknown`]
    /// for one xenstored does not send: how `/dev/xen/xenbus` reports a
    /// request it refused (`write(2)` fails with the errno).
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::protocol::xs_wire::XsErrno;
    ///
    /// // `write(2)` on /dev/xen/xenbus failed with E2BIG (7): the watch quota.
    /// assert_eq!(XsErrno::from_errno(7), XsErrno::E2BIG);
    /// assert_eq!(XsErrno::from_errno(13), XsErrno::EACCES);
    /// ```
    pub const fn from_errno(errno: i32) -> Self {
        match errno {
            22 => Self::EINVAL,
            13 => Self::EACCES,
            17 => Self::EEXIST,
            21 => Self::EISDIR,
            2 => Self::ENOENT,
            12 => Self::ENOMEM,
            28 => Self::ENOSPC,
            5 => Self::EIO,
            39 => Self::ENOTEMPTY,
            38 => Self::ENOSYS,
            30 => Self::EROFS,
            16 => Self::EBUSY,
            11 => Self::EAGAIN,
            106 => Self::EISCONN,
            7 => Self::E2BIG,
            1 => Self::EPERM,
            _ => Self::Unknown,
        }
    }

    /// The wire name.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::protocol::xs_wire::XsErrno;
    ///
    /// assert_eq!(XsErrno::EAGAIN.name(), "EAGAIN");
    /// ```
    pub const fn name(self) -> &'static str {
        match self {
            Self::EINVAL => "EINVAL",
            Self::EACCES => "EACCES",
            Self::EEXIST => "EEXIST",
            Self::EISDIR => "EISDIR",
            Self::ENOENT => "ENOENT",
            Self::ENOMEM => "ENOMEM",
            Self::ENOSPC => "ENOSPC",
            Self::EIO => "EIO",
            Self::ENOTEMPTY => "ENOTEMPTY",
            Self::ENOSYS => "ENOSYS",
            Self::EROFS => "EROFS",
            Self::EBUSY => "EBUSY",
            Self::EAGAIN => "EAGAIN",
            Self::EISCONN => "EISCONN",
            Self::E2BIG => "E2BIG",
            Self::EPERM => "EPERM",
            Self::Unknown => "unknown error",
        }
    }
}

/// A value that is not what the reader expected.
///
/// # Examples
///
/// ```
/// use coresident_xen::protocol::xs_wire::{parse_u32, ValueError};
///
/// let e = parse_u32(b"0x10").unwrap_err();
/// assert_eq!(e, ValueError::NotANumber);
/// assert!(!e.to_string().is_empty());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ValueError {
    /// Empty.
    Empty,
    /// Not a plain decimal number (`[0-9]+`).
    NotANumber,
    /// A number too large for its type.
    OutOfRange,
    /// Not UTF-8.
    NotUtf8,
    /// A permission entry that is not `[nrwb]DOMID`.
    BadPermission,
}

impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Empty => "empty value",
            Self::NotANumber => "not a decimal number",
            Self::OutOfRange => "number out of range",
            Self::NotUtf8 => "not UTF-8",
            Self::BadPermission => "malformed permission",
        })
    }
}

impl core::error::Error for ValueError {}

/// Parses a plain decimal `u64` (`[0-9]+`, no sign, no spaces; a single
/// trailing NUL is tolerated), with overflow checks.
///
/// # Errors
///
/// [`ValueError::Empty`], [`ValueError::NotANumber`],
/// [`ValueError::OutOfRange`].
///
/// # Examples
///
/// ```
/// use coresident_xen::protocol::xs_wire::{parse_u64, ValueError};
///
/// assert_eq!(parse_u64(b"17\0"), Ok(17));
/// assert_eq!(parse_u64(b""), Err(ValueError::Empty));
/// assert_eq!(parse_u64(b"+17"), Err(ValueError::NotANumber)); // no sign, space or hex
/// assert_eq!(parse_u64(b"18446744073709551616"), Err(ValueError::OutOfRange));
/// ```
pub fn parse_u64(bytes: &[u8]) -> Result<u64, ValueError> {
    let digits = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    if digits.is_empty() {
        return Err(ValueError::Empty);
    }
    let mut v: u64 = 0;
    for &b in digits {
        let d = match b {
            b'0'..=b'9' => u64::from(b - b'0'),
            _ => return Err(ValueError::NotANumber),
        };
        v = v
            .checked_mul(10)
            .and_then(|v| v.checked_add(d))
            .ok_or(ValueError::OutOfRange)?;
    }
    Ok(v)
}

/// [`parse_u64`] narrowed to `u32`.
///
/// # Errors
///
/// As [`parse_u64`].
///
/// # Examples
///
/// ```
/// use coresident_xen::protocol::xs_wire::{parse_u32, ValueError};
///
/// assert_eq!(parse_u32(b"4096"), Ok(4096));
/// assert_eq!(parse_u32(b"4294967296"), Err(ValueError::OutOfRange));
/// ```
pub fn parse_u32(bytes: &[u8]) -> Result<u32, ValueError> {
    u32::try_from(parse_u64(bytes)?).map_err(|_| ValueError::OutOfRange)
}

/// [`parse_u64`] narrowed to `u16` (domain ids).
///
/// # Errors
///
/// As [`parse_u64`].
///
/// # Examples
///
/// ```
/// use coresident_xen::protocol::xs_wire::{parse_u16, ValueError};
///
/// assert_eq!(parse_u16(b"5\0"), Ok(5)); // a domain id as XenStore holds it
/// assert_eq!(parse_u16(b"65536"), Err(ValueError::OutOfRange));
/// ```
pub fn parse_u16(bytes: &[u8]) -> Result<u16, ValueError> {
    u16::try_from(parse_u64(bytes)?).map_err(|_| ValueError::OutOfRange)
}

/// What a domain may do with a node (`docs/misc/xenstore.txt`).
///
/// # Examples
///
/// ```
/// use coresident_xen::protocol::xs_wire::{Access, Perm};
///
/// assert_eq!(Perm::parse(b"w3")?.access, Access::Write);
/// # Ok::<(), coresident_xen::protocol::xs_wire::ValueError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// `n`: nothing.
    None,
    /// `r`: read.
    Read,
    /// `w`: write.
    Write,
    /// `b`: read and write.
    Both,
}

/// One permission entry. The first entry of a node's list names its owner
/// (who may do anything) and the access of every domain not listed after.
///
/// # Examples
///
/// ```
/// use coresident_xen::protocol::xs_wire::{Access, Perm};
///
/// // `[n5, r0]`: owned by domain 5, no access for others, dom0 may read.
/// let perms = [Perm { domid: 5, access: Access::None }, Perm { domid: 0, access: Access::Read }];
/// assert_eq!(perms.map(|p| p.encode(&mut [0; 6]).to_vec()), [b"n5".to_vec(), b"r0".to_vec()]);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Perm {
    /// The domain.
    pub domid: u16,
    /// Its access.
    pub access: Access,
}

impl Perm {
    /// Parses `[nrwb]DOMID`.
    ///
    /// # Errors
    ///
    /// [`ValueError::BadPermission`], [`ValueError::OutOfRange`].
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::protocol::xs_wire::{Access, Perm, ValueError};
    ///
    /// assert_eq!(Perm::parse(b"r0")?, Perm { domid: 0, access: Access::Read });
    /// assert_eq!(Perm::parse(b"x0"), Err(ValueError::BadPermission));
    /// assert_eq!(Perm::parse(b"n65536"), Err(ValueError::OutOfRange));
    /// # Ok::<(), ValueError>(())
    /// ```
    pub fn parse(bytes: &[u8]) -> Result<Self, ValueError> {
        let (&c, rest) = bytes.split_first().ok_or(ValueError::BadPermission)?;
        let access = match c {
            b'n' => Access::None,
            b'r' => Access::Read,
            b'w' => Access::Write,
            b'b' => Access::Both,
            _ => return Err(ValueError::BadPermission),
        };
        let domid = match parse_u16(rest) {
            Ok(d) => d,
            Err(ValueError::OutOfRange) => return Err(ValueError::OutOfRange),
            Err(_) => return Err(ValueError::BadPermission),
        };
        Ok(Self { domid, access })
    }

    /// Encodes as `[nrwb]DOMID` into `out`; returns the bytes used.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::protocol::xs_wire::{Access, Perm};
    ///
    /// let p = Perm { domid: 5, access: Access::Both };
    /// assert_eq!(p.encode(&mut [0; 6]), b"b5");
    /// assert_eq!(Perm::parse(p.encode(&mut [0; 6]))?, p);
    /// # Ok::<(), coresident_xen::protocol::xs_wire::ValueError>(())
    /// ```
    pub fn encode<'a>(&self, out: &'a mut [u8; 6]) -> &'a [u8] {
        out[0] = match self.access {
            Access::None => b'n',
            Access::Read => b'r',
            Access::Write => b'w',
            Access::Both => b'b',
        };
        let mut digits = [0u8; 5];
        let mut n = self.domid;
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        let k = digits.len() - i;
        out[1..=k].copy_from_slice(&digits[i..]);
        &out[..=k]
    }
}

#[cfg(test)]
#[path = "tests_xs_wire.rs"]
mod tests;
