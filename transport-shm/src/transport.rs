//! The core's `Transport` trait for this transport.
//!
//! The core passes rendezvous information as bytes over any control path; descriptors
//! cannot travel as bytes, so the bytes name a one-shot Unix socket instead:
//!
//! ```text
//!  offerer: Transport::offer(layout, buf)            acceptor: Transport::accept(bytes)
//!    SecureDir::create(socket_dir): 0700, verified
//!    PreparedOffer::new (memfd, rings laid out)
//!    Listener::bind_in(dir, ".offer-<16 random hex>"), mode 0600
//!    buf <- "CRSDRV2\0" | len: u8 | socket path
//!    a thread serves the socket:    <------------------  connect(path)
//!      SO_PEERCRED -> policy                              SO_PEERCRED -> policy
//!        (refused: next connection)
//!      hello + memfd               ------------------>  accept_offer: validate all
//!      wait for the ack             <------------------  ack
//!    complete(timeout) joins it; the socket file is removed
//! ```
//!
//! The serving thread is what lets the acceptor's `accept` finish before the
//! offerer's `complete` is called (or on another thread, or in another process). The
//! socket lives in the directory given to [`ShmTransport::new`], verified at each offer
//! (see [`SecureDir`]: a world-writable `/tmp` is refused), under a name nobody can
//! guess, and both ends check each other's credentials before the region moves. A
//! connection the policy refuses does not use the offer up.

use core::fmt;
use core::sync::atomic::{AtomicBool, Ordering};
use core::time::Duration;
use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};

use coresident::{ChannelLayout, Link};

use crate::cred::{CredPolicy, PeerCred};
use crate::dir::{random_name, DirError, SecureDir};
use crate::endpoint::Endpoint;
use crate::error::SysError;
use crate::listener::Listener;
use crate::memfd::MemfdRegion;
use crate::offer::{OfferConfig, PreparedOffer};
use crate::peer_id::PeerId;
use crate::peer_link::PeerLink;
use crate::rendezvous::{
    accept_offer, connect_path, AcceptConfig, Deadline, HandshakeError, DEFAULT_HANDSHAKE_TIMEOUT,
};

/// The magic that opens this transport's rendezvous bytes (version 2: the protocol
/// behind the socket is [`crate::wire`]'s version 2).
pub const RENDEZVOUS_MAGIC: [u8; 8] = *b"CRSDRV2\0";

/// The longest socket path a rendezvous can name (a `sockaddr_un` path, less its NUL).
const MAX_PATH: usize = 107;

/// Setting up a channel through [`ShmTransport`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ShmError {
    /// The rendezvous handshake failed (see [`HandshakeError`]).
    Handshake(HandshakeError),
    /// The socket directory failed its checks (see [`SecureDir`]).
    Dir(DirError),
    /// The rendezvous bytes are malformed (wrong magic, length or path).
    BadRendezvous,
    /// The caller's rendezvous buffer is too small.
    RendezvousTooSmall {
        /// Bytes needed.
        needed: usize,
    },
    /// The socket directory's path is too long for a socket address.
    PathTooLong,
    /// Nobody accepted the offer in time.
    Timeout,
    /// The offer was already taken by another acceptor, or withdrawn: its socket is
    /// gone, refuses connections, or closed before the hello.
    OfferTaken,
}

impl fmt::Display for ShmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Handshake(e) => write!(f, "{e}"),
            Self::Dir(e) => write!(f, "host transport: {e}"),
            Self::BadRendezvous => f.write_str("malformed host-transport rendezvous bytes"),
            Self::RendezvousTooSmall { needed } => {
                write!(f, "rendezvous buffer too small: {needed} bytes needed")
            }
            Self::PathTooLong => f.write_str("socket directory path too long for a socket"),
            Self::Timeout => f.write_str("nobody accepted the offer in time"),
            Self::OfferTaken => {
                f.write_str("the offer was already taken by another acceptor, or withdrawn")
            }
        }
    }
}

impl std::error::Error for ShmError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Handshake(e) => Some(e),
            Self::Dir(e) => Some(e),
            _ => None,
        }
    }
}

impl From<HandshakeError> for ShmError {
    fn from(e: HandshakeError) -> Self {
        Self::Handshake(e)
    }
}

impl From<SysError> for ShmError {
    fn from(e: SysError) -> Self {
        Self::Handshake(HandshakeError::Sys(e))
    }
}

impl From<DirError> for ShmError {
    fn from(e: DirError) -> Self {
        Self::Dir(e)
    }
}

/// The host transport, as the core's `Transport`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShmTransport {
    /// Our id, sent in hellos.
    local_id: PeerId,
    /// Where one-shot offer sockets are created.
    socket_dir: PathBuf,
    /// Handshake timeout for both roles.
    handshake_timeout: Duration,
    /// Whom we offer to and accept from.
    policy: CredPolicy,
}

impl ShmTransport {
    /// A transport for `local_id` that creates its one-shot offer sockets in
    /// `socket_dir`: created `0700` if missing, verified at each offer (a directory
    /// others may enter, such as `/tmp`, is refused). Only offers use it.
    #[must_use]
    pub fn new(local_id: PeerId, socket_dir: impl Into<PathBuf>) -> Self {
        Self {
            local_id,
            socket_dir: socket_dir.into(),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            policy: CredPolicy::default(),
        }
    }

    /// A transport whose offers live in the registry's default directory
    /// ([`crate::default_dir`]: `/run/coresident` as root,
    /// `$XDG_RUNTIME_DIR/coresident` for a user).
    #[must_use]
    pub fn in_default_dir(local_id: PeerId) -> Self {
        Self::new(local_id, crate::registry::default_dir())
    }

    /// Replaces the credential policy (default: the same user).
    #[must_use]
    pub fn with_policy(mut self, policy: CredPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Replaces the handshake timeout (default
    /// [`DEFAULT_HANDSHAKE_TIMEOUT`]).
    #[must_use]
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }
}

/// Encodes the rendezvous bytes for `path` into `out`; returns the length.
fn encode(path: &Path, out: &mut [u8]) -> Result<usize, ShmError> {
    let p = path.as_os_str().as_bytes();
    if p.len() > MAX_PATH {
        return Err(ShmError::PathTooLong);
    }
    let needed = RENDEZVOUS_MAGIC.len() + 1 + p.len();
    let Some(out) = out.get_mut(..needed) else {
        return Err(ShmError::RendezvousTooSmall { needed });
    };
    out[..8].copy_from_slice(&RENDEZVOUS_MAGIC);
    out[8] = p.len() as u8; // <= MAX_PATH (107), checked above
    out[9..].copy_from_slice(p);
    Ok(needed)
}

/// Decodes rendezvous bytes into the socket path they name.
fn decode(bytes: &[u8]) -> Result<&Path, ShmError> {
    let (magic, rest) = bytes.split_at_checked(8).ok_or(ShmError::BadRendezvous)?;
    if magic != RENDEZVOUS_MAGIC {
        return Err(ShmError::BadRendezvous);
    }
    let (&len, path) = rest.split_first().ok_or(ShmError::BadRendezvous)?;
    let len = usize::from(len);
    if len == 0 || len > MAX_PATH || path.len() != len || path.contains(&0) {
        return Err(ShmError::BadRendezvous);
    }
    Ok(Path::new(OsStr::from_bytes(path)))
}

impl coresident::Transport for ShmTransport {
    type Region = MemfdRegion;
    type Doorbell = PeerLink;
    type Pending = ShmPending;
    type Error = ShmError;

    fn offer(
        &mut self,
        layout: ChannelLayout,
        rendezvous: &mut [u8],
    ) -> Result<(ShmPending, usize), ShmError> {
        let dir = Arc::new(SecureDir::create(&self.socket_dir, &self.policy)?);
        let cfg = OfferConfig {
            local_id: self.local_id.clone(),
            peer_id: None,
            layout,
            handshake_timeout: self.handshake_timeout,
            policy: self.policy.clone(),
            context: Vec::new(),
        };
        let pending = PreparedOffer::new(&cfg)?;
        let name = random_name(".offer-")?;
        // The path another process connects to: the directory's own path.
        let path = dir.display_path(&name);
        let len = encode(&path, rendezvous)?;
        let listener = Listener::bind_in(&dir, &name)?;
        let (tx, rx) = mpsc::sync_channel(1);
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let policy = self.policy.clone();
        let timeout = self.handshake_timeout;
        std::thread::Builder::new()
            .name("coresident-shm-offer".into())
            .spawn(move || {
                let res = serve_offer(&listener, pending, &policy, timeout, &stop2);
                // Dropping the listener removes the socket file: the offer is one-shot.
                drop(listener);
                let _ = tx.send(res);
            })
            .map_err(|e| SysError::from_io("spawn", &e))?;
        Ok((
            ShmPending {
                rx: Some(rx),
                path,
                stop,
            },
            len,
        ))
    }

    fn accept(&mut self, rendezvous: &[u8]) -> Result<Link<MemfdRegion, PeerLink>, ShmError> {
        let path = decode(rendezvous)?;
        let deadline = Deadline::after(self.handshake_timeout);
        let taken = |e: HandshakeError| match e {
            HandshakeError::NoSuchSocket
            | HandshakeError::NotListening
            | HandshakeError::Closed => ShmError::OfferTaken,
            HandshakeError::Sys(s) if s.errno == rustix::io::Errno::CONNRESET.raw_os_error() => {
                ShmError::OfferTaken
            }
            e => ShmError::Handshake(e),
        };
        let stream = connect_path(path, deadline).map_err(taken)?;
        let cfg = AcceptConfig {
            local_id: Some(self.local_id.clone()),
            handshake_timeout: self.handshake_timeout,
            policy: self.policy.clone(),
            ..AcceptConfig::default()
        };
        Ok(accept_offer(stream, &cfg).map_err(taken)?.into_link())
    }
}

/// The serving thread: waits for a connection the policy admits, then offers on it.
fn serve_offer(
    listener: &Listener,
    pending: PreparedOffer,
    policy: &CredPolicy,
    timeout: Duration,
    stop: &AtomicBool,
) -> Result<Endpoint, HandshakeError> {
    loop {
        let stream: UnixStream = listener.accept_stream()?;
        // Relaxed: `withdraw` stores it before the connection that woke us; the flag
        // carries no data.
        if stop.load(Ordering::Relaxed) {
            return Err(HandshakeError::Closed);
        }
        let cred = PeerCred::of(stream.as_fd())?;
        if !policy.allows(&cred) {
            // Not for them, and not used up by them either.
            tracing::info!(
                pid = cred.pid,
                uid = cred.uid,
                "coresident-shm: a connection to a one-shot offer was refused"
            );
            continue;
        }
        return pending.offer_until(stream, Deadline::after(timeout));
    }
}

/// An offer whose socket is being served by a thread, waiting for the acceptor.
///
/// Dropping it (or a [`complete`](coresident::PendingOffer::complete) that times out)
/// withdraws the offer: the serving thread is woken and exits, and the socket file is
/// removed.
#[derive(Debug)]
pub struct ShmPending {
    /// The serving thread's result; `None` once taken.
    rx: Option<mpsc::Receiver<Result<Endpoint, HandshakeError>>>,
    /// The one-shot socket.
    path: PathBuf,
    /// Tells the serving thread to stop.
    stop: Arc<AtomicBool>,
}

impl ShmPending {
    /// The socket path the rendezvous bytes name.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Wakes a serving thread still blocked in `accept`, so it exits.
    fn withdraw(&self) {
        // Relaxed: see `serve_offer`.
        self.stop.store(true, Ordering::Relaxed);
        // If the socket is already gone, the thread has finished.
        let _ = UnixStream::connect(&self.path);
    }
}

impl coresident::PendingOffer for ShmPending {
    type Region = MemfdRegion;
    type Doorbell = PeerLink;
    type Error = ShmError;

    fn complete(
        mut self,
        timeout: Option<Duration>,
    ) -> Result<Link<MemfdRegion, PeerLink>, ShmError> {
        let Some(rx) = self.rx.take() else {
            return Err(ShmError::Timeout);
        };
        let res = match timeout {
            Some(t) => rx.recv_timeout(t).map_err(|e| match e {
                mpsc::RecvTimeoutError::Timeout => ShmError::Timeout,
                mpsc::RecvTimeoutError::Disconnected => ShmError::Handshake(HandshakeError::Closed),
            }),
            None => rx
                .recv()
                .map_err(|_| ShmError::Handshake(HandshakeError::Closed)),
        };
        match res {
            Ok(r) => Ok(r?.into_link()),
            Err(e) => {
                self.withdraw();
                Err(e)
            }
        }
    }
}

impl Drop for ShmPending {
    fn drop(&mut self) {
        if self.rx.is_some() {
            self.withdraw();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_bytes_round_trip_and_garbage() {
        let mut buf = [0u8; 128];
        let n = encode(Path::new("/run/x/.offer-1-0"), &mut buf).unwrap();
        assert_eq!(decode(&buf[..n]).unwrap(), Path::new("/run/x/.offer-1-0"));
        assert_eq!(
            encode(Path::new("/a"), &mut [0u8; 5]),
            Err(ShmError::RendezvousTooSmall { needed: 11 })
        );
        assert_eq!(decode(&buf[..n - 1]), Err(ShmError::BadRendezvous));
        assert_eq!(decode(&buf[..8]), Err(ShmError::BadRendezvous));
        assert_eq!(decode(&[]), Err(ShmError::BadRendezvous));
        let mut bad = buf;
        bad[10] = 0;
        assert_eq!(decode(&bad[..n]), Err(ShmError::BadRendezvous));
    }
}
