//! The one error of every XenStore client (`core` only).

use core::fmt;

use crate::protocol::xs_wire::{MsgType, ValueError, WireError, XsErrno};

/// Which index of a shared ring the peer moved too far ([`XsError::BadIndex`]).
///
/// # Examples
///
/// ```
/// use coresident_xen::xenstore::{RingIndex, XsError};
///
/// let e = XsError::BadIndex { which: RingIndex::RspProd, peer: 5000, ours: 0 };
/// assert!(!e.is_request_error()); // the ring is broken, not one request
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingIndex {
    /// `req_cons` ahead of our `req_prod`, or more than a ring behind it.
    ReqCons,
    /// `rsp_prod` more than a ring ahead of our `rsp_cons`, or behind it.
    RspProd,
}

/// A failure of a XenStore client ([`super::XsClient`]), whichever the
/// connection. A request the daemon refuses is that request's error
/// ([`XsError::NotFound`], [`XsError::Daemon`]); a framing error leaves the
/// byte stream out of step and breaks the connection for good
/// ([`XsError::Broken`] from then on).
///
/// # Examples
///
/// ```
/// use coresident_xen::xenstore::XsError;
/// use coresident_xen::protocol::xs_wire::XsErrno;
///
/// let e = XsError::Daemon(XsErrno::EACCES);
/// assert!(e.is_request_error());
/// assert_eq!(e.to_string(), "XenStore refused: EACCES");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum XsError {
    /// Neither the socket nor `/dev/xen/xenbus` could be opened (the errno).
    Open(i32),
    /// Reading or writing the connection failed (the errno).
    Io(i32),
    /// The daemon closed the connection.
    Closed,
    /// No reply in time (the socket's reply timeout, or the ring's events
    /// gave up); the reply may still come, so the connection is broken.
    Timeout,
    /// The key does not exist (`ENOENT`).
    NotFound,
    /// Another error reply from xenstored (over `/dev/xen/xenbus`, also a
    /// refusal the kernel reports as the `write(2)` error).
    Daemon(XsErrno),
    /// A request that cannot be encoded, or a reply that cannot be decoded.
    Wire(WireError),
    /// A reply to another request, or of the wrong type (its type, if known).
    UnexpectedReply(Option<MsgType>),
    /// An earlier framing error left the connection out of step.
    Broken,
    /// A value that is not what the caller asked for.
    Value(ValueError),
    /// The ring page pointer is null or misaligned.
    BadPage,
    /// The ring's peer moved an index to more than one ring from ours.
    BadIndex {
        /// The index.
        which: RingIndex,
        /// Its value.
        peer: u32,
        /// Our index it was checked against.
        ours: u32,
    },
    /// The ring's server set the page's `error` word (`XENSTORE_ERROR_*`).
    Server(u32),
}

impl XsError {
    /// Whether this is about one request only (the connection goes on):
    /// the daemon's refusal or a value that did not parse.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::xenstore::XsError;
    ///
    /// assert!(XsError::NotFound.is_request_error());
    /// assert!(!XsError::Closed.is_request_error());
    /// ```
    pub const fn is_request_error(&self) -> bool {
        matches!(self, Self::NotFound | Self::Daemon(_) | Self::Value(_))
    }

    /// Whether the daemon said we may not read or write the node (`EACCES`).
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::protocol::xs_wire::XsErrno;
    /// use coresident_xen::xenstore::XsError;
    ///
    /// // A node that exists but is not ours to read.
    /// assert!(XsError::Daemon(XsErrno::EACCES).is_denied());
    /// assert!(!XsError::NotFound.is_denied());
    /// ```
    pub const fn is_denied(&self) -> bool {
        matches!(self, Self::Daemon(XsErrno::EACCES))
    }

    /// The error of an `XS_ERROR` reply's payload (`ENOENT` is
    /// [`XsError::NotFound`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::protocol::xs_wire::XsErrno;
    /// use coresident_xen::xenstore::XsError;
    ///
    /// assert_eq!(XsError::from_reply(b"ENOENT\0"), XsError::NotFound);
    /// assert_eq!(XsError::from_reply(b"EACCES\0"), XsError::Daemon(XsErrno::EACCES));
    /// ```
    pub fn from_reply(payload: &[u8]) -> Self {
        Self::from_errno_name(XsErrno::parse(payload))
    }

    /// The error for an errno name (`ENOENT` is [`XsError::NotFound`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::protocol::xs_wire::XsErrno;
    /// use coresident_xen::xenstore::XsError;
    ///
    /// assert_eq!(XsError::from_errno_name(XsErrno::ENOENT), XsError::NotFound);
    /// assert_eq!(XsError::from_errno_name(XsErrno::EAGAIN), XsError::Daemon(XsErrno::EAGAIN));
    /// ```
    pub const fn from_errno_name(e: XsErrno) -> Self {
        match e {
            XsErrno::ENOENT => Self::NotFound,
            e => Self::Daemon(e),
        }
    }
}

impl fmt::Display for XsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Open(e) => write!(f, "cannot connect to XenStore: errno {e}"),
            Self::Io(e) => write!(f, "XenStore connection failed: errno {e}"),
            Self::Closed => f.write_str("XenStore closed the connection"),
            Self::Timeout => f.write_str("XenStore did not reply in time"),
            Self::NotFound => f.write_str("no such XenStore key (ENOENT)"),
            Self::Daemon(e) => write!(f, "XenStore refused: {}", e.name()),
            Self::Wire(e) => write!(f, "XenStore protocol error: {e}"),
            Self::UnexpectedReply(ty) => {
                write!(f, "XenStore reply does not match the request ({ty:?})")
            }
            Self::Broken => f.write_str("XenStore connection is out of step after an error"),
            Self::Value(e) => write!(f, "bad XenStore value: {e}"),
            Self::BadPage => f.write_str("XenStore ring page is null or misaligned"),
            Self::BadIndex { which, peer, ours } => write!(
                f,
                "XenStore ring index {which:?}={peer} is not within one ring of {ours}"
            ),
            Self::Server(e) => write!(f, "xenstored reports ring error {e}"),
        }
    }
}

impl core::error::Error for XsError {}

impl From<WireError> for XsError {
    fn from(e: WireError) -> Self {
        Self::Wire(e)
    }
}

impl From<ValueError> for XsError {
    fn from(e: ValueError) -> Self {
        Self::Value(e)
    }
}
