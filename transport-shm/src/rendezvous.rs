//! The rendezvous: a Unix stream socket over which the offerer passes the region with
//! `SCM_RIGHTS` (the model of KVM's ivshmem server), and the acceptor's side of it.
//!
//! ```text
//!  offerer (connects)                                acceptor (listens)
//!  connect(path): non-blocking, retried on a full
//!    backlog until the deadline
//!  SO_PEERCRED -> policy (the listener's uid)         accept: SO_PEERCRED -> policy
//!    refused: close, nothing sent                       refused: ack "credentials",
//!                                                        close; nothing was read, the
//!                                                        queued descriptors die unread
//!  hello + SCM_RIGHTS [memfd] -------------------->  read 16-byte prefix, then the rest
//!                                                    (at most 424 bytes, 2 descriptors;
//!                                                     one deadline for the whole hello)
//!                                                    parse_hello; exactly 1 descriptor;
//!                                                    memfd: F_GET_SEALS first, sealed,
//!                                                     size == declared; mmap; both
//!                                                     ring headers match the hello
//!  ack <-------------------------------------------  ack {status 0, or a RejectReason}
//!  ===== channel: the socket carries doorbell bytes both ways; its hang-up = death =====
//! ```
//!
//! Every wait is bounded by one deadline for the whole handshake
//! ([`AcceptConfig::handshake_timeout`], [`OfferConfig::handshake_timeout`]): a peer
//! that sends one byte just before each read's timeout used to hold an acceptor
//! indefinitely. Every socket call passes `MSG_DONTWAIT` and waits in `poll` with the
//! time that remains, so no flag of any file decides whether we block.
//!
//! [`accept_offer`] serves one connection. [`Listener::accept`](crate::Listener::accept)
//! and [`Acceptor`](crate::Acceptor) serve many at once (up to
//! [`AcceptConfig::max_handshakes`]), so a slow or silent peer holds one slot for at
//! most its deadline and never delays another.
//!
//! [`OfferConfig::handshake_timeout`]: crate::OfferConfig::handshake_timeout

use core::fmt;
use core::mem::MaybeUninit;
use core::time::Duration;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Instant;

use coresident::{ChannelLayout, Role};
use coresident_ring::{AttachError, Consumer};
use rustix::event::{PollFd, PollFlags};
use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};

use crate::cred::{CredPolicy, PeerCred};
use crate::dir::DirError;
use crate::endpoint::{Endpoint, PeerInfo};
use crate::error::{SysContext, SysError};
use crate::memfd::{close_untrusted, MemfdRegion, RegionError, MAX_REGION_SIZE};
use crate::peer_id::PeerId;
use crate::peer_link::PeerLink;
use crate::wire::{
    check_prefix, encode_ack, parse_hello, AckError, Hello, HelloError, RingSizeError, ACK_LEN,
    HELLO_FDS, HELLO_MAX_LEN, HELLO_PREFIX_LEN,
};

/// How long a handshake may take by default, as a whole, before it fails with
/// [`HandshakeError::Timeout`].
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// How many handshakes a listener serves at once by default.
pub const DEFAULT_MAX_HANDSHAKES: usize = 64;

/// Room for one descriptor more than a hello carries, so that "one too many" is
/// counted; more than that sets `MSG_CTRUNC` (and the kernel drops the excess unread).
pub(crate) const FD_ROOM: usize = HELLO_FDS + 1;

/// Why an acceptor refused an offer: sent in the ack, so the offerer can say why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RejectReason {
    /// The offerer speaks another protocol version.
    Version,
    /// The hello was malformed (magic, length, a reserved field).
    Malformed,
    /// Wrong number or kind of descriptors.
    Descriptors,
    /// Ring sizes out of range, or a region too small or too large for them.
    Sizes,
    /// The region descriptor failed validation (not a sealed memfd of the stated size).
    Region,
    /// A peer id was malformed, or the hello names another acceptor.
    PeerId,
    /// The offerer's credentials are not admitted by the acceptor's policy.
    Credentials,
    /// The acceptor was serving as many handshakes as it allows; try again.
    Busy,
    /// The rings were laid out by another ring layout version.
    RingVersion,
    /// The ring headers in the region disagree with the hello (or are not laid out).
    Rings,
    /// A code this version does not know.
    Other(u32),
}

impl RejectReason {
    /// The code sent in the ack's status field.
    #[must_use]
    pub fn code(self) -> u32 {
        match self {
            Self::Version => 1,
            Self::Malformed => 2,
            Self::Descriptors => 3,
            Self::Sizes => 4,
            Self::Region => 5,
            Self::PeerId => 6,
            Self::Credentials => 7,
            Self::Busy => 8,
            Self::RingVersion => 9,
            Self::Rings => 10,
            Self::Other(c) => c,
        }
    }

    /// The reason for a status code (not 0, which means accepted).
    #[must_use]
    pub fn from_code(code: u32) -> Self {
        match code {
            1 => Self::Version,
            2 => Self::Malformed,
            3 => Self::Descriptors,
            4 => Self::Sizes,
            5 => Self::Region,
            6 => Self::PeerId,
            7 => Self::Credentials,
            8 => Self::Busy,
            9 => Self::RingVersion,
            10 => Self::Rings,
            c => Self::Other(c),
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Version => f.write_str("protocol version mismatch"),
            Self::Malformed => f.write_str("malformed hello"),
            Self::Descriptors => f.write_str("wrong number or kind of descriptors"),
            Self::Sizes => f.write_str("sizes out of range"),
            Self::Region => f.write_str("shared region failed validation"),
            Self::PeerId => f.write_str("bad or unexpected peer id"),
            Self::Credentials => f.write_str("our credentials are not admitted"),
            Self::Busy => f.write_str("too many handshakes in progress; try again"),
            Self::RingVersion => f.write_str("ring layout version mismatch"),
            Self::Rings => f.write_str("the ring headers disagree with the hello"),
            Self::Other(c) => write!(f, "unknown reason code {c}"),
        }
    }
}

/// A rendezvous failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The peer closed the connection before sending a byte (a registry liveness probe
    /// looks like this; so does a one-shot offer already taken by someone else).
    Closed,
    /// The peer closed the connection in the middle of a message.
    Truncated {
        /// Bytes received.
        received: usize,
        /// Bytes expected (for a hello whose length is not known yet, the prefix).
        expected: usize,
    },
    /// The handshake did not complete within its deadline.
    Timeout,
    /// No socket at the path (no such peer, or an offer already withdrawn).
    NoSuchSocket,
    /// A socket file nobody listens on (its owner died without removing it: stale).
    NotListening,
    /// The peer's credentials are not admitted by our [`CredPolicy`]; nothing was
    /// sent to it and nothing it sent was read.
    PeerRefused(PeerCred),
    /// The hello is malformed or refused.
    Hello(HelloError),
    /// The ack is malformed.
    Ack(AckError),
    /// The acceptor refused our offer.
    Rejected(RejectReason),
    /// The hello carried the wrong number of descriptors (not 1; `received` is at
    /// most 2, [`TooManyFds`](Self::TooManyFds) beyond that).
    WrongFdCount {
        /// Descriptors received.
        received: usize,
    },
    /// The hello carried more descriptors than we had room for.
    TooManyFds,
    /// A message that must carry no descriptors carried some (they were closed).
    UnexpectedFds,
    /// The region descriptor failed validation (or could not be created or mapped).
    Region(RegionError),
    /// The ring headers in the region disagree with the hello, or are not laid out.
    Rings(AttachError),
    /// The hello is addressed to another acceptor than us.
    WrongPeer,
    /// We were serving as many handshakes as we allow
    /// ([`AcceptConfig::max_handshakes`]); the offerer was told to try again.
    Busy,
    /// Our own configuration has a ring size this transport refuses.
    RingSize(RingSizeError),
    /// Our own configuration has a context longer than
    /// [`MAX_CONTEXT_LEN`](crate::wire::MAX_CONTEXT_LEN).
    ContextTooLong {
        /// Its length.
        len: usize,
    },
    /// The socket directory failed its checks (see [`SecureDir`](crate::SecureDir)).
    Dir(DirError),
    /// A system call failed (connect, send, receive...).
    Sys(SysError),
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Closed => f.write_str(
                "rendezvous: peer closed the connection before sending (a probe, or the offer \
                 was taken by someone else)",
            ),
            Self::Truncated { received, expected } => write!(
                f,
                "rendezvous: peer closed the connection after {received} of {expected} bytes"
            ),
            Self::Timeout => f.write_str("rendezvous: the handshake did not complete in time"),
            Self::NoSuchSocket => {
                f.write_str("rendezvous: no socket at that path (no such peer, or withdrawn)")
            }
            Self::NotListening => f.write_str(
                "rendezvous: stale socket: nobody listens on it (its owner died without removing it)",
            ),
            Self::PeerRefused(c) => write!(
                f,
                "rendezvous: the credential policy does not admit the peer ({c}); nothing was exchanged"
            ),
            Self::Hello(e) => write!(f, "rendezvous: {e}"),
            Self::Ack(e) => write!(f, "rendezvous: {e}"),
            Self::Rejected(r) => write!(f, "rendezvous: peer refused the offer: {r}"),
            Self::WrongFdCount { received } => write!(
                f,
                "rendezvous: hello carried {received} descriptors, expected {HELLO_FDS}"
            ),
            Self::TooManyFds => write!(
                f,
                "rendezvous: hello carried more than {FD_ROOM} descriptors, expected {HELLO_FDS}"
            ),
            Self::UnexpectedFds => f.write_str("rendezvous: ack carried descriptors"),
            Self::Region(e) => write!(f, "rendezvous: {e}"),
            Self::Rings(e) => write!(f, "rendezvous: the region's rings: {e}"),
            Self::WrongPeer => f.write_str("rendezvous: hello is addressed to another peer"),
            Self::Busy => f.write_str("rendezvous: too many handshakes in progress; refused one"),
            Self::RingSize(e) => write!(f, "rendezvous: our configuration: {e}"),
            Self::ContextTooLong { len } => write!(
                f,
                "rendezvous: our context of {len} bytes exceeds {} bytes",
                crate::wire::MAX_CONTEXT_LEN
            ),
            Self::Dir(e) => write!(f, "rendezvous: {e}"),
            Self::Sys(e) => write!(f, "rendezvous: {e}"),
        }
    }
}

impl std::error::Error for HandshakeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Hello(e) => Some(e),
            Self::Ack(e) => Some(e),
            Self::Region(e) => Some(e),
            Self::Rings(e) => Some(e),
            Self::RingSize(e) => Some(e),
            Self::Dir(e) => Some(e),
            Self::Sys(e) => Some(e),
            _ => None,
        }
    }
}

impl From<SysError> for HandshakeError {
    fn from(e: SysError) -> Self {
        Self::Sys(e)
    }
}

impl From<HelloError> for HandshakeError {
    fn from(e: HelloError) -> Self {
        Self::Hello(e)
    }
}

impl From<AckError> for HandshakeError {
    fn from(e: AckError) -> Self {
        match e {
            AckError::Rejected(r) => Self::Rejected(r),
            e => Self::Ack(e),
        }
    }
}

impl HandshakeError {
    /// The reason sent to the offerer when an acceptor fails with this error, if any
    /// (`None`: the connection is unusable, say nothing).
    #[must_use]
    pub fn reject_reason(&self) -> Option<RejectReason> {
        Some(match self {
            Self::Hello(e) => e.reject_reason(),
            Self::WrongFdCount { .. } | Self::TooManyFds => RejectReason::Descriptors,
            Self::Region(_) => RejectReason::Region,
            Self::Rings(_) => RejectReason::Rings,
            Self::WrongPeer => RejectReason::PeerId,
            Self::PeerRefused(_) => RejectReason::Credentials,
            Self::Busy => RejectReason::Busy,
            _ => return None,
        })
    }
}

/// What the accepting side accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcceptConfig {
    /// Our id: if set, a hello naming another acceptor is refused
    /// ([`HandshakeError::WrongPeer`]); a hello naming none is accepted.
    pub local_id: Option<PeerId>,
    /// The largest region we agree to map (at most [`MAX_REGION_SIZE`]).
    pub max_region_size: usize,
    /// How long one whole handshake may take, from the connection to the ack.
    pub handshake_timeout: Duration,
    /// Whom we accept offers from (checked before the hello is read).
    pub policy: CredPolicy,
    /// How many handshakes a [`Listener`](crate::Listener) or
    /// [`Acceptor`](crate::Acceptor) serves at once; one more is refused with
    /// [`RejectReason::Busy`].
    pub max_handshakes: usize,
}

impl Default for AcceptConfig {
    fn default() -> Self {
        Self {
            local_id: None,
            max_region_size: MAX_REGION_SIZE,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            policy: CredPolicy::default(),
            max_handshakes: DEFAULT_MAX_HANDSHAKES,
        }
    }
}

/// One deadline for a whole handshake.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Deadline(Option<Instant>);

impl Deadline {
    /// `timeout` from now (`None` if it overflows the clock: no deadline).
    pub(crate) fn after(timeout: Duration) -> Self {
        Self(Instant::now().checked_add(timeout))
    }

    /// The time left, or [`HandshakeError::Timeout`] once it passed.
    pub(crate) fn remaining(self) -> Result<Option<Duration>, HandshakeError> {
        match self.0 {
            None => Ok(None),
            Some(d) => {
                let r = d.saturating_duration_since(Instant::now());
                if r.is_zero() {
                    Err(HandshakeError::Timeout)
                } else {
                    Ok(Some(r))
                }
            }
        }
    }
}

/// Polls `fd` for `events` until it is ready (or in error: the next call says how), or
/// the deadline passes.
pub(crate) fn wait_ready(
    fd: BorrowedFd<'_>,
    events: PollFlags,
    deadline: Deadline,
) -> Result<(), HandshakeError> {
    loop {
        let remaining = deadline.remaining()?;
        let ts = remaining.map(timespec);
        let mut fds = [PollFd::new(&fd, events)];
        match rustix::event::poll(&mut fds, ts.as_ref()) {
            Ok(0) | Err(Errno::INTR) => {}
            Ok(_) => return Ok(()),
            Err(e) => return Err(SysError::new("poll", e).into()),
        }
    }
}

/// A `Duration` as a `poll` timeout.
pub(crate) fn timespec(d: Duration) -> rustix::event::Timespec {
    rustix::event::Timespec {
        tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(d.subsec_nanos()),
    }
}

/// Connects a stream socket to `path` without ever blocking in `connect(2)`: a full
/// backlog (`EAGAIN`) is retried until the deadline.
pub(crate) fn connect_path(path: &Path, deadline: Deadline) -> Result<UnixStream, HandshakeError> {
    let addr = SocketAddrUnix::new(path).sys("sockaddr_un")?;
    let mut pause = Duration::from_micros(200);
    loop {
        let fd = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )
        .sys("socket")?;
        match rustix::net::connect(&fd, &addr) {
            Ok(()) => return Ok(UnixStream::from(fd)),
            Err(Errno::AGAIN) => {
                let left = deadline.remaining()?;
                std::thread::sleep(left.map_or(pause, |l| l.min(pause)));
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            Err(Errno::INTR) => {}
            Err(Errno::NOENT) => return Err(HandshakeError::NoSuchSocket),
            Err(Errno::CONNREFUSED) => return Err(HandshakeError::NotListening),
            Err(e) => return Err(SysError::new("connect", e).into()),
        }
    }
}

/// Sends all of `bytes`, with `fds` attached to the first piece, within the deadline.
pub(crate) fn send_all(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
    deadline: Deadline,
) -> Result<(), HandshakeError> {
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut sent = 0;
    let mut first = true;
    while sent < bytes.len() {
        let iov = [IoSlice::new(&bytes[sent..])];
        let mut cmsg = SendAncillaryBuffer::new(&mut space);
        if first && !fds.is_empty() && !cmsg.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(SysError::new("sendmsg", Errno::NOBUFS).into());
        }
        let mut empty = SendAncillaryBuffer::default();
        let control = if first { &mut cmsg } else { &mut empty };
        match rustix::net::sendmsg(
            sock,
            &iov,
            control,
            SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
        ) {
            Ok(n) => {
                sent += n;
                first = false;
            }
            Err(Errno::AGAIN) => wait_ready(sock, PollFlags::OUT, deadline)?,
            Err(Errno::INTR) => {}
            Err(e) => return Err(SysError::new("sendmsg", e).into()),
        }
    }
    Ok(())
}

/// Sends all of `bytes`, with `fds` attached, blocking as long as it takes.
///
/// This is the raw protocol layer, public so that tests and other implementations can
/// play a misbehaving peer.
///
/// # Errors
///
/// [`SysError`] if `sendmsg` fails (`EPIPE` if the peer is gone; no `SIGPIPE` is
/// raised).
pub fn send_with_fds(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> Result<(), SysError> {
    let payload: &[u8] = if bytes.is_empty() && !fds.is_empty() {
        &[0]
    } else {
        bytes
    };
    match send_all(sock, payload, fds, Deadline(None)) {
        Ok(()) => Ok(()),
        Err(HandshakeError::Sys(e)) => Err(e),
        Err(_) => Err(SysError::new("sendmsg", Errno::IO)),
    }
}

/// Receives exactly `buf.len()` bytes within the deadline; descriptors that come along
/// are collected (at most [`FD_ROOM`]; more is [`HandshakeError::TooManyFds`]).
pub(crate) fn recv_exact(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
    deadline: Deadline,
) -> Result<(), HandshakeError> {
    let mut got = 0;
    while got < buf.len() {
        match recv_some(sock, &mut buf[got..], fds)? {
            Some(0) => {
                return Err(if got == 0 {
                    HandshakeError::Closed
                } else {
                    HandshakeError::Truncated {
                        received: got,
                        expected: buf.len(),
                    }
                })
            }
            Some(n) => got += n,
            None => wait_ready(sock, PollFlags::IN, deadline)?,
        }
    }
    Ok(())
}

/// One non-blocking `recvmsg` into `buf`: `Some(n)` bytes (0: end of file), `None`
/// if nothing is there now. Descriptors are collected into `fds`.
fn recv_some(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> Result<Option<usize>, HandshakeError> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(FD_ROOM))];
    loop {
        let mut cmsg = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [IoSliceMut::new(buf)];
        match rustix::net::recvmsg(
            sock,
            &mut iov,
            &mut cmsg,
            RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT,
        ) {
            Ok(msg) => {
                for m in cmsg.drain() {
                    if let RecvAncillaryMessage::ScmRights(received) = m {
                        fds.extend(received);
                    }
                }
                if msg.flags.contains(ReturnFlags::CTRUNC) || fds.len() > FD_ROOM {
                    return Err(HandshakeError::TooManyFds);
                }
                return Ok(Some(msg.bytes));
            }
            Err(Errno::AGAIN) => return Ok(None),
            Err(Errno::INTR) => {}
            Err(e) => return Err(SysError::new("recvmsg", e).into()),
        }
    }
}

/// Sends an ack with `status` without blocking: the first bytes we ever send on this
/// socket, so its empty send buffer always takes them.
pub(crate) fn send_ack(sock: BorrowedFd<'_>, status: u32) -> Result<(), HandshakeError> {
    let ack = encode_ack(status);
    match rustix::net::send(sock, &ack, SendFlags::DONTWAIT | SendFlags::NOSIGNAL) {
        Ok(n) if n == ACK_LEN => Ok(()),
        Ok(_) => Err(SysError::new("send(ack)", Errno::AGAIN).into()),
        Err(e) => Err(SysError::new("send(ack)", e).into()),
    }
}

/// A hello being received, a piece at a time, without blocking: the prefix first
/// (never more than a hello, so doorbell bytes that follow stay in the socket), then
/// the rest. Descriptors still held when it is dropped go to
/// [`close_untrusted`].
#[derive(Debug)]
pub(crate) struct HelloReader {
    /// The bytes so far.
    buf: [u8; HELLO_MAX_LEN],
    /// How many of `buf` are filled.
    got: usize,
    /// How many are wanted: the prefix, then the hello's declared length.
    want: usize,
    /// Descriptors received so far (at most [`FD_ROOM`]).
    fds: Vec<OwnedFd>,
}

impl HelloReader {
    /// A reader waiting for the first byte.
    pub(crate) fn new() -> Self {
        Self {
            buf: [0; HELLO_MAX_LEN],
            got: 0,
            want: HELLO_PREFIX_LEN,
            fds: Vec::new(),
        }
    }

    /// Reads what is there: `Ok(true)` once the whole hello is in.
    pub(crate) fn read_some(&mut self, sock: BorrowedFd<'_>) -> Result<bool, HandshakeError> {
        loop {
            if self.got == self.want {
                if self.want != HELLO_PREFIX_LEN {
                    return Ok(true);
                }
                let mut prefix = [0u8; HELLO_PREFIX_LEN];
                prefix.copy_from_slice(&self.buf[..HELLO_PREFIX_LEN]);
                self.want = check_prefix(&prefix)?;
                if self.want == HELLO_PREFIX_LEN {
                    return Ok(true); // unreachable: a hello is longer than its prefix
                }
                continue;
            }
            let (got, want) = (self.got, self.want);
            match recv_some(sock, &mut self.buf[got..want], &mut self.fds)? {
                Some(0) => {
                    return Err(if got == 0 {
                        HandshakeError::Closed
                    } else {
                        HandshakeError::Truncated {
                            received: got,
                            expected: want,
                        }
                    })
                }
                Some(n) => self.got += n,
                None => return Ok(false),
            }
        }
    }

    /// Validates the complete hello and its descriptors, then answers: see
    /// [`accept_offer`] for the checks. On success the ack is sent.
    pub(crate) fn finish(
        mut self,
        stream: UnixStream,
        cred: PeerCred,
        cfg: &AcceptConfig,
    ) -> Result<Endpoint, HandshakeError> {
        let fds = core::mem::take(&mut self.fds);
        match validate(&self.buf[..self.got], fds, cfg) {
            Ok((region, hello)) => {
                send_ack(stream.as_fd(), 0)?;
                tracing::debug!(
                    peer = %hello.offerer, pid = cred.pid, uid = cred.uid,
                    region = region.len(), "coresident-shm: accepted an offer"
                );
                Ok(Endpoint {
                    region,
                    layout: hello.layout,
                    role: Role::Acceptor,
                    link: PeerLink::new(
                        stream.into(),
                        PeerInfo {
                            id: Some(hello.offerer),
                            cred,
                            context: hello.context,
                        },
                    ),
                })
            }
            Err(e) => {
                refuse(stream.as_fd(), &e, cred);
                Err(e)
            }
        }
    }
}

impl Drop for HelloReader {
    fn drop(&mut self) {
        for fd in self.fds.drain(..) {
            close_untrusted(fd);
        }
    }
}

/// Tells the offerer why (best effort: it may be gone; the error we report is ours
/// either way), and records it.
pub(crate) fn refuse(sock: BorrowedFd<'_>, e: &HandshakeError, cred: PeerCred) {
    if let Some(reason) = e.reject_reason() {
        let _ = send_ack(sock, reason.code());
    }
    if *e != HandshakeError::Closed {
        tracing::info!(
            pid = cred.pid, uid = cred.uid, error = %e,
            "coresident-shm: refused an offer"
        );
    }
}

/// Checks a complete hello and its descriptors; maps the region.
fn validate(
    bytes: &[u8],
    fds: Vec<OwnedFd>,
    cfg: &AcceptConfig,
) -> Result<(MemfdRegion, Hello), HandshakeError> {
    let discard = |fds: Vec<OwnedFd>| fds.into_iter().for_each(close_untrusted);
    let hello = match parse_hello(bytes, cfg.max_region_size as u64) {
        Ok(h) => h,
        Err(e) => {
            discard(fds);
            return Err(e.into());
        }
    };
    if fds.len() != HELLO_FDS {
        let received = fds.len();
        discard(fds);
        return Err(HandshakeError::WrongFdCount { received });
    }
    if let (Some(ours), Some(theirs)) = (&cfg.local_id, &hello.acceptor) {
        if ours != theirs {
            discard(fds);
            return Err(HandshakeError::WrongPeer);
        }
    }
    let Some(memfd) = fds.into_iter().next() else {
        return Err(HandshakeError::WrongFdCount { received: 0 });
    };
    let region = MemfdRegion::attach(memfd, hello.region_size).map_err(HandshakeError::Region)?;
    check_rings(&region, hello.layout).map_err(HandshakeError::Rings)?;
    Ok((region, hello))
}

/// Checks that both rings are laid out in `region` with the sizes of `layout`, so that
/// a channel attaches: the offerer lays them out before it offers. A peer may still
/// scribble on them later; `Channel::new` checks again, and the ring checks every
/// shared word it reads.
pub(crate) fn check_rings(region: &MemfdRegion, layout: ChannelLayout) -> Result<(), AttachError> {
    let (a, b) = layout.rings(Role::Offerer);
    for (offset, size) in [a, b] {
        let mem = coresident::ring_memory(region, offset, size)?;
        // Reading only: a consumer's attach checks the header and the read index and
        // writes nothing; it is dropped at once.
        let found = Consumer::attach(mem)?.data_size();
        if found != size {
            return Err(AttachError::BadDataSize { data_size: found });
        }
    }
    Ok(())
}

/// Accepts an offer on a connected stream: checks the peer's credentials, receives the
/// hello and its descriptor, validates everything, and answers with an ack (or a
/// refusal naming the reason), all within `cfg.handshake_timeout`.
///
/// Checked, in order: the peer's credentials (`SO_PEERCRED` against `cfg.policy`,
/// before a byte is read), the magic, the version, the hello's length, the ring layout
/// version, the reserved field, the peer ids (well-formed; ours if named), the ring
/// sizes, the region size (within `cfg.max_region_size`, large enough for the rings),
/// the number of descriptors (exactly 1), the region descriptor
/// ([`MemfdRegion::attach`]: a sealed memfd of exactly the declared size, checked
/// seals first), and both ring headers. Descriptors that fail are closed without
/// blocking ([`close_untrusted`]).
///
/// # Errors
///
/// One [`HandshakeError`] per failed check; transport errors otherwise.
pub fn accept_offer(stream: UnixStream, cfg: &AcceptConfig) -> Result<Endpoint, HandshakeError> {
    let deadline = Deadline::after(cfg.handshake_timeout);
    let cred = PeerCred::of(stream.as_fd())?;
    if !cfg.policy.allows(&cred) {
        let e = HandshakeError::PeerRefused(cred);
        refuse(stream.as_fd(), &e, cred);
        return Err(e);
    }
    let mut reader = HelloReader::new();
    loop {
        let step = match reader.read_some(stream.as_fd()) {
            Ok(true) => break,
            Ok(false) => wait_ready(stream.as_fd(), PollFlags::IN, deadline),
            Err(e) => Err(e),
        };
        if let Err(e) = step {
            refuse(stream.as_fd(), &e, cred);
            return Err(e);
        }
    }
    reader.finish(stream, cred, cfg)
}
