//! The rendezvous: a Unix stream socket over which the offerer passes the region and the
//! doorbells with `SCM_RIGHTS` (the model of KVM's ivshmem server).
//!
//! See the crate docs for the message sequence and [`crate::wire`] for the bytes. The
//! acceptor trusts nothing it receives: every field and every descriptor is checked
//! (see [`accept_offer`]), every failure is a [`HandshakeError`], the offerer is told
//! why with a [`RejectReason`], and descriptors that fail validation are closed.
//!
//! After the ack the socket stays open for the life of the channel and carries no more
//! bytes: its hang-up is the peer-death signal.

use core::fmt;
use core::mem::MaybeUninit;
use core::time::Duration;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use rustix::io::Errno;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use zerocopy::little_endian::U32;
use zerocopy::{FromBytes, IntoBytes};

use crate::endpoint::{Endpoint, PeerInfo, PeerLink, Role};
use crate::error::SysError;
use crate::eventfd::{Doorbell, DoorbellError};
use crate::layout::{Layout, LayoutError};
use crate::memfd::{RegionError, SharedRegion, MAX_REGION_SIZE};
use crate::peer_id::{PeerId, PeerIdError};
use crate::wire::{
    decode_id, AckWire, HelloWire, ACK_MAGIC, HELLO_FDS, HELLO_LEN, HELLO_MAGIC, HELLO_PREFIX_LEN,
    PROTOCOL_VERSION,
};

/// How long a handshake may take by default before it fails with
/// [`HandshakeError::Timeout`].
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Room for one descriptor more than a hello carries, so that "one too many" is
/// counted; more than that sets `MSG_CTRUNC` (and the kernel drops the excess).
const FD_ROOM: usize = HELLO_FDS + 1;

/// Why an acceptor refused an offer: sent in the ack, so the offerer can say why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RejectReason {
    /// The offerer speaks another protocol version.
    Version,
    /// The hello was malformed (magic, length).
    Malformed,
    /// Wrong number or kind of descriptors.
    Descriptors,
    /// Ring sizes out of range, or a region too small or too large for them.
    Sizes,
    /// The region descriptor failed validation (not a sealed memfd of the stated size).
    Region,
    /// A peer id was malformed, or the hello names another acceptor.
    PeerId,
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
            Self::Other(c) => write!(f, "unknown reason code {c}"),
        }
    }
}

/// A rendezvous failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The peer closed the connection before sending a byte (a registry liveness probe
    /// looks like this).
    Closed,
    /// The peer closed the connection in the middle of a message.
    Truncated {
        /// Bytes received.
        received: usize,
        /// Bytes expected.
        expected: usize,
    },
    /// The peer sent nothing (more) within the handshake timeout.
    Timeout,
    /// The message does not start with the expected magic: not our protocol.
    BadMagic,
    /// The peer speaks another protocol version.
    VersionMismatch {
        /// Our version.
        ours: u32,
        /// The peer's version.
        theirs: u32,
    },
    /// The hello's length field is not the length of a hello of its version.
    BadLength {
        /// The length the peer claimed.
        claimed: u32,
    },
    /// The hello carried the wrong number of descriptors (`received` is at most
    /// [`HELLO_FDS`]` + 1`; [`TooManyFds`](Self::TooManyFds) beyond that).
    WrongFdCount {
        /// Descriptors received.
        received: usize,
    },
    /// The hello carried more descriptors than we had room for.
    TooManyFds,
    /// A message that must carry no descriptors carried some (they were closed).
    UnexpectedFds,
    /// The ring sizes are invalid.
    Layout(LayoutError),
    /// The region is smaller than the ring sizes need.
    RegionTooSmall {
        /// The region size the hello declared.
        region: u64,
        /// The size the rings need.
        needed: u64,
    },
    /// The region larger than we accept.
    RegionTooLarge {
        /// The region size the hello declared.
        region: u64,
        /// Our limit.
        max: u64,
    },
    /// The region descriptor failed validation (or could not be created or mapped).
    Region(RegionError),
    /// A doorbell descriptor failed validation (or could not be created).
    Doorbell(DoorbellError),
    /// A peer id in the hello is malformed.
    BadPeerId(PeerIdError),
    /// The hello is addressed to another acceptor than us.
    WrongPeer,
    /// The acceptor refused our offer.
    Rejected(RejectReason),
    /// A system call failed (connect, send, receive...).
    Sys(SysError),
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Closed => f.write_str("rendezvous: peer closed the connection before sending"),
            Self::Truncated { received, expected } => write!(
                f,
                "rendezvous: peer closed the connection after {received} of {expected} bytes"
            ),
            Self::Timeout => f.write_str("rendezvous: peer did not answer in time"),
            Self::BadMagic => f.write_str("rendezvous: bad magic (not a coresident peer)"),
            Self::VersionMismatch { ours, theirs } => write!(
                f,
                "rendezvous: peer speaks protocol version {theirs}, we speak {ours}"
            ),
            Self::BadLength { claimed } => write!(
                f,
                "rendezvous: hello claims {claimed} bytes, version {PROTOCOL_VERSION} has {HELLO_LEN}"
            ),
            Self::WrongFdCount { received } => write!(
                f,
                "rendezvous: hello carried {received} descriptors, expected {HELLO_FDS}"
            ),
            Self::TooManyFds => write!(
                f,
                "rendezvous: hello carried more than {FD_ROOM} descriptors, expected {HELLO_FDS}"
            ),
            Self::UnexpectedFds => f.write_str("rendezvous: ack carried descriptors"),
            Self::Layout(e) => write!(f, "rendezvous: {e}"),
            Self::RegionTooSmall { region, needed } => write!(
                f,
                "rendezvous: region of {region} bytes is smaller than the {needed} bytes the rings need"
            ),
            Self::RegionTooLarge { region, max } => write!(
                f,
                "rendezvous: region of {region} bytes exceeds our limit of {max} bytes"
            ),
            Self::Region(e) => write!(f, "rendezvous: {e}"),
            Self::Doorbell(e) => write!(f, "rendezvous: {e}"),
            Self::BadPeerId(e) => write!(f, "rendezvous: {e}"),
            Self::WrongPeer => f.write_str("rendezvous: hello is addressed to another peer"),
            Self::Rejected(r) => write!(f, "rendezvous: peer refused the offer: {r}"),
            Self::Sys(e) => write!(f, "rendezvous: {e}"),
        }
    }
}

impl std::error::Error for HandshakeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Layout(e) => Some(e),
            Self::Region(e) => Some(e),
            Self::Doorbell(e) => Some(e),
            Self::BadPeerId(e) => Some(e),
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

impl HandshakeError {
    /// The reason sent to the offerer when an acceptor fails with this error, if any
    /// (`None`: the connection is unusable, say nothing).
    fn reject_reason(&self) -> Option<RejectReason> {
        Some(match self {
            Self::BadMagic | Self::BadLength { .. } => RejectReason::Malformed,
            Self::VersionMismatch { .. } => RejectReason::Version,
            Self::WrongFdCount { .. } | Self::TooManyFds | Self::Doorbell(_) => {
                RejectReason::Descriptors
            }
            Self::Layout(_) | Self::RegionTooSmall { .. } | Self::RegionTooLarge { .. } => {
                RejectReason::Sizes
            }
            Self::Region(_) => RejectReason::Region,
            Self::BadPeerId(_) | Self::WrongPeer => RejectReason::PeerId,
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
    /// How long to wait for the hello.
    pub handshake_timeout: Duration,
}

impl Default for AcceptConfig {
    fn default() -> Self {
        Self {
            local_id: None,
            max_region_size: MAX_REGION_SIZE,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }
}

/// Maps a `std::io` error of a socket operation.
pub(crate) fn io_err(op: &'static str, e: &std::io::Error) -> HandshakeError {
    SysError::from_io(op, e).into()
}

/// Receives exactly `buf.len()` bytes, collecting any descriptors that come along.
///
/// `already` is the number of message bytes received before this call (for the
/// `Truncated` count); `expected` the whole message's length.
pub(crate) fn recv_exact(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
    fds_truncated: &mut bool,
    already: usize,
    expected: usize,
) -> Result<(), HandshakeError> {
    let mut got = 0;
    while got < buf.len() {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(FD_ROOM))];
        let mut cmsg = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [IoSliceMut::new(&mut buf[got..])];
        match rustix::net::recvmsg(sock, &mut iov, &mut cmsg, RecvFlags::CMSG_CLOEXEC) {
            Ok(msg) => {
                for m in cmsg.drain() {
                    if let RecvAncillaryMessage::ScmRights(received) = m {
                        fds.extend(received);
                    }
                }
                if msg.flags.contains(ReturnFlags::CTRUNC) {
                    *fds_truncated = true;
                }
                if msg.bytes == 0 {
                    let received = already + got;
                    return Err(if received == 0 {
                        HandshakeError::Closed
                    } else {
                        HandshakeError::Truncated { received, expected }
                    });
                }
                got += msg.bytes;
            }
            Err(Errno::INTR) => {}
            // SO_RCVTIMEO expired.
            Err(Errno::AGAIN) => return Err(HandshakeError::Timeout),
            Err(e) => return Err(SysError::new("recvmsg", e).into()),
        }
    }
    Ok(())
}

/// Sends all of `bytes`, with `fds` attached to the first chunk.
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
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut cmsg = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !cmsg.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(SysError::new("sendmsg", Errno::NOBUFS));
    }
    let mut sent = 0;
    let mut first = true;
    while sent < bytes.len() || first {
        let iov = [IoSlice::new(&bytes[sent..])];
        let res = if first {
            rustix::net::sendmsg(sock, &iov, &mut cmsg, SendFlags::NOSIGNAL)
        } else {
            rustix::net::sendmsg(
                sock,
                &iov,
                &mut SendAncillaryBuffer::default(),
                SendFlags::NOSIGNAL,
            )
        };
        match res {
            Ok(n) => {
                sent += n;
                first = false;
            }
            Err(Errno::INTR) => {}
            Err(e) => return Err(SysError::new("sendmsg", e)),
        }
    }
    Ok(())
}

/// Reads `SO_PEERCRED`: the peer's pid (0 if not visible in our pid namespace) and uid.
pub(crate) fn peer_cred(sock: BorrowedFd<'_>) -> Result<(i32, u32), SysError> {
    // `rustix::net::sockopt::socket_peercred` exists, but its `UCred::pid` is a
    // `NonZero` `Pid`: the kernel reports pid 0 for a peer in a pid namespace we cannot
    // see (a process on the host talking to us in a container), which would be an
    // invalid value there. So this one call goes through `libc`.
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = core::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY:
    // - `sock` is a valid, open descriptor for the duration of the call (borrowed).
    // - `cred` is a valid, writable `ucred`, and `len` holds its exact size, so the
    //   kernel writes at most that many bytes into it.
    // - `len` is a valid, writable `socklen_t`.
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(SysError::from_io(
            "getsockopt(SO_PEERCRED)",
            &std::io::Error::last_os_error(),
        ));
    }
    Ok((cred.pid, cred.uid))
}

/// Sends an ack with `status` (best effort for a rejection).
pub(crate) fn send_ack(sock: BorrowedFd<'_>, status: u32) -> Result<(), SysError> {
    let ack = AckWire {
        magic: ACK_MAGIC,
        version: U32::new(PROTOCOL_VERSION),
        status: U32::new(status),
    };
    send_with_fds(sock, ack.as_bytes(), &[])
}

/// Accepts an offer on a connected stream: receives the hello and its descriptors,
/// validates everything, and answers with an ack (or a rejection naming the reason).
///
/// Checked, in order: the magic, the version, the hello's length, the number of
/// descriptors (exactly 3), the peer ids (well-formed; ours if named), the ring sizes
/// (powers of two in range), the region size (within `cfg.max_region_size` and large
/// enough for the rings), the region descriptor ([`SharedRegion::attach`]: a sealed
/// memfd of exactly the declared size), and the two doorbells ([`Doorbell::from_fd`]:
/// eventfds). Descriptors are closed on any failure.
///
/// # Errors
///
/// One [`HandshakeError`] per failed check; transport errors otherwise.
pub fn accept_offer(stream: UnixStream, cfg: &AcceptConfig) -> Result<Endpoint, HandshakeError> {
    stream
        .set_read_timeout(Some(cfg.handshake_timeout.max(Duration::from_millis(1))))
        .map_err(|e| io_err("setsockopt(SO_RCVTIMEO)", &e))?;
    match accept_inner(&stream, cfg) {
        Ok((region, layout, local, remote, id)) => {
            let (pid, uid) = peer_cred(stream.as_fd())?;
            send_ack(stream.as_fd(), 0)?;
            stream
                .set_read_timeout(None)
                .map_err(|e| io_err("setsockopt(SO_RCVTIMEO)", &e))?;
            Ok(Endpoint {
                region,
                layout,
                role: Role::Acceptor,
                link: PeerLink::new(local, remote, stream),
                peer: PeerInfo { id, pid, uid },
            })
        }
        Err(e) => {
            if let Some(reason) = e.reject_reason() {
                // Best effort: the peer may already be gone; the error we report is
                // the validation failure either way.
                let _ = send_ack(stream.as_fd(), reason.code());
            }
            Err(e)
        }
    }
}

/// What a validated hello yields.
type Accepted = (SharedRegion, Layout, Doorbell, Doorbell, Option<PeerId>);

/// The checks of [`accept_offer`], without the answer.
fn accept_inner(stream: &UnixStream, cfg: &AcceptConfig) -> Result<Accepted, HandshakeError> {
    let sock = stream.as_fd();
    let mut buf = [0u8; HELLO_LEN];
    let mut fds = Vec::new();
    let mut fds_truncated = false;
    let (prefix, rest) = buf.split_at_mut(HELLO_PREFIX_LEN);
    recv_exact(sock, prefix, &mut fds, &mut fds_truncated, 0, HELLO_LEN)?;
    if prefix[..8] != HELLO_MAGIC {
        return Err(HandshakeError::BadMagic);
    }
    let version = u32::from_le_bytes([prefix[8], prefix[9], prefix[10], prefix[11]]);
    if version != PROTOCOL_VERSION {
        return Err(HandshakeError::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs: version,
        });
    }
    let claimed = u32::from_le_bytes([prefix[12], prefix[13], prefix[14], prefix[15]]);
    if usize::try_from(claimed).ok() != Some(HELLO_LEN) {
        return Err(HandshakeError::BadLength { claimed });
    }
    recv_exact(
        sock,
        rest,
        &mut fds,
        &mut fds_truncated,
        HELLO_PREFIX_LEN,
        HELLO_LEN,
    )?;
    // Infallible: the buffer has exactly the struct's size and any bytes are valid.
    let hello = HelloWire::read_from_bytes(&buf).map_err(|_| HandshakeError::BadMagic)?;

    if fds_truncated {
        return Err(HandshakeError::TooManyFds);
    }
    if fds.len() != HELLO_FDS {
        return Err(HandshakeError::WrongFdCount {
            received: fds.len(),
        });
    }

    let offerer = decode_id(&hello.offerer_id).map_err(HandshakeError::BadPeerId)?;
    let addressed = decode_id(&hello.acceptor_id).map_err(HandshakeError::BadPeerId)?;
    if offerer.is_none() {
        return Err(HandshakeError::BadPeerId(PeerIdError::Empty));
    }
    if let (Some(ours), Some(theirs)) = (&cfg.local_id, &addressed) {
        if ours != theirs {
            return Err(HandshakeError::WrongPeer);
        }
    }

    let layout = Layout::new(hello.to_acceptor_data.get(), hello.to_offerer_data.get())
        .map_err(HandshakeError::Layout)?;
    let region_size = hello.region_size.get();
    let max = cfg.max_region_size.min(MAX_REGION_SIZE) as u64;
    if region_size > max {
        return Err(HandshakeError::RegionTooLarge {
            region: region_size,
            max,
        });
    }
    let needed = layout.region_size() as u64;
    if region_size < needed {
        return Err(HandshakeError::RegionTooSmall {
            region: region_size,
            needed,
        });
    }

    // Order on the wire: [memfd, to_offerer, to_acceptor].
    let mut it = fds.into_iter();
    let (Some(memfd), Some(to_offerer), Some(to_acceptor)) = (it.next(), it.next(), it.next())
    else {
        return Err(HandshakeError::WrongFdCount { received: 0 });
    };
    let region = SharedRegion::attach(memfd, region_size).map_err(HandshakeError::Region)?;
    let remote = Doorbell::from_fd(to_offerer).map_err(HandshakeError::Doorbell)?;
    let local = Doorbell::from_fd(to_acceptor).map_err(HandshakeError::Doorbell)?;
    Ok((region, layout, local, remote, offerer))
}

/// A listening rendezvous socket at a path.
///
/// The socket file is removed on drop, if it is still ours (same inode).
#[derive(Debug)]
pub struct Listener {
    /// The listening socket.
    inner: UnixListener,
    /// Where it is bound.
    path: PathBuf,
    /// `(st_dev, st_ino)` of the socket file we created, to remove only our own.
    ident: (u64, u64),
}

impl Listener {
    /// Binds a listening socket at `path` (which must not exist).
    ///
    /// # Errors
    ///
    /// [`SysError`] from `bind` (`EADDRINUSE` if the path exists, `ENAMETOOLONG` if it
    /// does not fit a `sockaddr_un`, 107 bytes).
    pub fn bind(path: &Path) -> Result<Self, SysError> {
        if path.as_os_str().len() >= 108 {
            return Err(SysError::new("bind", Errno::NAMETOOLONG));
        }
        let inner = UnixListener::bind(path).map_err(|e| SysError::from_io("bind", &e))?;
        let meta = std::fs::symlink_metadata(path).map_err(|e| SysError::from_io("lstat", &e))?;
        Ok(Self {
            inner,
            path: path.to_owned(),
            ident: (meta.dev(), meta.ino()),
        })
    }

    /// The same listener after its socket file was renamed to `path` (used by the
    /// registry, which binds under a temporary name and renames it into place; a
    /// rename keeps the inode, so `ident` stays valid).
    pub(crate) fn rename_to(mut self, path: PathBuf) -> Self {
        self.path = path;
        self
    }

    /// Where the socket is bound.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts one connection, without a handshake.
    ///
    /// # Errors
    ///
    /// [`SysError`] from `accept`.
    pub fn accept_stream(&self) -> Result<UnixStream, SysError> {
        loop {
            match self.inner.accept() {
                Ok((s, _)) => return Ok(s),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(SysError::from_io("accept", &e)),
            }
        }
    }

    /// Accepts the next offer: accepts connections, skipping those that close without
    /// sending a byte (liveness probes from [`crate::Registry::scan`]), and runs
    /// [`accept_offer`] on the first real one.
    ///
    /// # Errors
    ///
    /// As [`accept_offer`] for the first connection that sent something. The caller
    /// may simply call `accept` again: a bad peer does not spoil the listener.
    pub fn accept(&self, cfg: &AcceptConfig) -> Result<Endpoint, HandshakeError> {
        loop {
            let stream = self.accept_stream()?;
            match accept_offer(stream, cfg) {
                Err(HandshakeError::Closed) => {}
                other => return other,
            }
        }
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.as_fd()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Ok(meta) = std::fs::symlink_metadata(&self.path) {
            if (meta.dev(), meta.ino()) == self.ident {
                // Best effort: someone may have removed it already.
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}
