//! The core's `Transport` trait for this transport (feature `core`).
//!
//! The core passes rendezvous information as bytes over any control path; descriptors
//! cannot travel as bytes, so the bytes name a one-shot Unix socket instead:
//!
//! ```text
//!  offerer: Transport::offer(layout, buf)            acceptor: Transport::accept(bytes)
//!    PendingOffer::new (memfd + eventfds)
//!    init_region (core's ring layout)
//!    Listener::bind(dir/.offer-<pid>-<n>)
//!    buf <- "CRSDRV1\0" | len: u8 | socket path
//!    a thread serves the socket:    <------------------  connect(path)
//!      accept, send hello + 3 fds   ------------------>  accept_offer: validate all
//!      wait for the ack             <------------------  ack
//!    complete(timeout) joins it; the socket file is removed
//! ```
//!
//! The serving thread is what lets the acceptor's `accept` finish before the
//! offerer's `complete` is called (or on another thread, or in another process). The
//! socket lives in the directory given to [`ShmTransport::new`]: whoever can connect
//! to it receives the region, so the directory's permissions are the access control
//! (a registry directory is created 0700).

use core::fmt;
use core::sync::atomic::{AtomicU32, Ordering};
use core::time::Duration;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use coresident::{ChannelLayout, Link, TransportError};
use coresident_ring::AttachError;

use crate::endpoint::{Endpoint, PeerLink};
use crate::error::SysError;
use crate::eventfd::{WaitError, Wake};
use crate::memfd::SharedRegion;
use crate::offer::{OfferConfig, PendingOffer};
use crate::peer_id::PeerId;
use crate::rendezvous::{accept_offer, AcceptConfig, HandshakeError, Listener};

/// The magic that opens this transport's rendezvous bytes.
pub const RENDEZVOUS_MAGIC: [u8; 8] = *b"CRSDRV1\0";

/// The longest socket path a rendezvous can name (a `sockaddr_un` path, less its NUL).
const MAX_PATH: usize = 107;

// SAFETY:
// - `as_ptr()..as_ptr() + len()` is one `mmap` mapping, valid for reads and writes
//   until the `SharedRegion` is dropped, and page-aligned (so 128-byte aligned);
// - this crate never makes a Rust reference to the mapped bytes, only raw pointers.
unsafe impl coresident::SharedRegion for SharedRegion {
    fn as_ptr(&self) -> *mut u8 {
        SharedRegion::as_ptr(self)
    }

    fn len(&self) -> usize {
        SharedRegion::len(self)
    }
}

impl coresident::Doorbell for PeerLink {
    fn ring(&self) -> Result<(), TransportError> {
        if self.peer_known_gone() {
            return Err(TransportError::PeerGone);
        }
        self.notify_peer().map_err(|e| match e {
            crate::DoorbellError::Sys(s) => TransportError::Os(s.errno),
            _ => TransportError::Protocol("doorbell is not an eventfd"),
        })
    }

    fn wait(&self, timeout: Option<Duration>) -> Result<coresident::Wake, TransportError> {
        match PeerLink::wait(self, timeout) {
            Ok(Wake::Notified { .. }) => Ok(coresident::Wake::Rung),
            Ok(Wake::TimedOut) => Ok(coresident::Wake::TimedOut),
            Err(WaitError::PeerGone) => Ok(coresident::Wake::PeerGone),
            Err(WaitError::Sys(s)) => Err(TransportError::Os(s.errno)),
        }
    }

    fn peer_alive(&self) -> bool {
        // One `poll` of the socket unless the death is already known; a failing poll
        // means the socket is broken, which is as good as gone.
        PeerLink::peer_alive(self).unwrap_or(false)
    }
}

/// Setting up a channel through [`ShmTransport`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ShmError {
    /// The rendezvous handshake failed (see [`HandshakeError`]).
    Handshake(HandshakeError),
    /// Laying the rings out failed (sizes the ring refuses).
    Ring(AttachError),
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
}

impl fmt::Display for ShmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Handshake(e) => write!(f, "{e}"),
            Self::Ring(e) => write!(f, "laying the rings out: {e}"),
            Self::BadRendezvous => f.write_str("malformed host-transport rendezvous bytes"),
            Self::RendezvousTooSmall { needed } => {
                write!(f, "rendezvous buffer too small: {needed} bytes needed")
            }
            Self::PathTooLong => f.write_str("socket directory path too long for a socket"),
            Self::Timeout => f.write_str("nobody accepted the offer in time"),
        }
    }
}

impl std::error::Error for ShmError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Handshake(e) => Some(e),
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

/// The host transport, as the core's `Transport`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShmTransport {
    /// Our id, sent in hellos.
    local_id: PeerId,
    /// Where one-shot offer sockets are created.
    socket_dir: PathBuf,
    /// Handshake timeout for both roles.
    handshake_timeout: Duration,
}

impl ShmTransport {
    /// A transport for `local_id` that creates its one-shot offer sockets in
    /// `socket_dir` (for instance a [`crate::Registry`]'s directory; it must exist).
    #[must_use]
    pub fn new(local_id: PeerId, socket_dir: impl Into<PathBuf>) -> Self {
        Self {
            local_id,
            socket_dir: socket_dir.into(),
            handshake_timeout: crate::rendezvous::DEFAULT_HANDSHAKE_TIMEOUT,
        }
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
    type Region = SharedRegion;
    type Doorbell = PeerLink;
    type Pending = ShmPending;
    type Error = ShmError;

    fn offer(
        &mut self,
        layout: ChannelLayout,
        rendezvous: &mut [u8],
    ) -> Result<(ShmPending, usize), ShmError> {
        let cfg = OfferConfig {
            local_id: self.local_id.clone(),
            peer_id: None,
            tx_data_size: layout.to_acceptor as usize,
            rx_data_size: layout.to_offerer as usize,
            handshake_timeout: self.handshake_timeout,
        };
        let pending = PendingOffer::new(&cfg)?;
        // Our layout and the core's must agree on where the second ring starts.
        if pending.layout().to_offerer.offset != layout.second_ring_offset() {
            return Err(ShmError::Ring(AttachError::RegionTooSmall {
                needed: layout.region_len(),
                len: pending.region().len(),
            }));
        }
        coresident::init_region(pending.region(), layout).map_err(ShmError::Ring)?;

        static COUNTER: AtomicU32 = AtomicU32::new(0);
        // Relaxed: the counter only makes socket names unique within this process.
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = self
            .socket_dir
            .join(format!(".offer-{}-{n}", std::process::id()));
        let len = encode(&path, rendezvous)?;
        let _ = std::fs::remove_file(&path); // a leftover of a dead process with our pid
        let listener = Listener::bind(&path)?;
        let (tx, rx) = mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("coresident-shm-offer".into())
            .spawn(move || {
                let res = listener
                    .accept_stream()
                    .map_err(HandshakeError::Sys)
                    .and_then(|stream| pending.offer(stream));
                // Dropping the listener removes the socket file: the offer is one-shot.
                drop(listener);
                let _ = tx.send(res);
            })
            .map_err(|e| SysError::from_io("spawn", &e))?;
        Ok((ShmPending { rx: Some(rx), path }, len))
    }

    fn accept(&mut self, rendezvous: &[u8]) -> Result<Link<SharedRegion, PeerLink>, ShmError> {
        let path = decode(rendezvous)?;
        let stream = UnixStream::connect(path)
            .map_err(|e| HandshakeError::Sys(SysError::from_io("connect", &e)))?;
        let cfg = AcceptConfig {
            local_id: Some(self.local_id.clone()),
            handshake_timeout: self.handshake_timeout,
            ..AcceptConfig::default()
        };
        Ok(accept_offer(stream, &cfg)?.into_link())
    }
}

impl Endpoint {
    /// This endpoint as the core's [`Link`], for `Channel::new`. On the offering side
    /// the rings must have been laid out before the handshake ([`ready_offer`]).
    pub fn into_link(self) -> Link<SharedRegion, PeerLink> {
        let l = self.layout();
        // Both sizes passed `Layout::new`: powers of two at most 2^28, so they fit.
        let layout = ChannelLayout {
            to_acceptor: l.to_acceptor.data_size as u32,
            to_offerer: l.to_offerer.data_size as u32,
        };
        let role = match self.role() {
            crate::endpoint::Role::Offerer => coresident::Role::Offerer,
            crate::endpoint::Role::Acceptor => coresident::Role::Acceptor,
        };
        let (region, doorbell) = self.into_parts();
        Link {
            region,
            doorbell,
            role,
            layout,
        }
    }
}

/// An offer whose region already holds both rings, laid out as the core's
/// [`ChannelLayout`] places them: `connect` it to a peer's registry socket, then
/// [`Endpoint::into_link`]. This is the control path's half of residency detection:
/// on [`RegistryEvent::Joined`](crate::RegistryEvent::Joined), `ready_offer` and
/// connect, attach the channel to the router and insert its handle into the residency
/// table; on `Left`, remove the key and fail the router's channel over.
///
/// # Errors
///
/// Sizes out of range, or the region could not be created.
pub fn ready_offer(cfg: &OfferConfig) -> Result<PendingOffer, ShmError> {
    let pending = PendingOffer::new(cfg)?;
    let l = pending.layout();
    let layout = ChannelLayout {
        to_acceptor: l.to_acceptor.data_size as u32,
        to_offerer: l.to_offerer.data_size as u32,
    };
    if l.to_offerer.offset != layout.second_ring_offset() {
        return Err(ShmError::Ring(AttachError::RegionTooSmall {
            needed: layout.region_len(),
            len: pending.region().len(),
        }));
    }
    coresident::init_region(pending.region(), layout).map_err(ShmError::Ring)?;
    Ok(pending)
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
}

impl ShmPending {
    /// The socket path the rendezvous bytes name.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Wakes a serving thread still blocked in `accept`, so it exits.
    fn withdraw(&self) {
        // A connection that closes at once makes the thread's `offer` fail; if the
        // socket is already gone, the thread has finished.
        let _ = UnixStream::connect(&self.path);
    }
}

impl coresident::PendingOffer for ShmPending {
    type Region = SharedRegion;
    type Doorbell = PeerLink;
    type Error = ShmError;

    fn complete(
        mut self,
        timeout: Option<Duration>,
    ) -> Result<Link<SharedRegion, PeerLink>, ShmError> {
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
        let ep = match res {
            Ok(r) => r?,
            Err(e) => {
                self.withdraw();
                return Err(e);
            }
        };
        // The endpoint's layout is our own offer's, read back from the region we made.
        Ok(ep.into_link())
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
