//! The offering side of the rendezvous.
//!
//! An offer is made in two steps so that the offerer can lay the rings out in the fresh
//! region *before* the peer sees it ([`PendingOffer`]): once the acceptor has the
//! region it may attach to the rings at once, and must find them initialised.

use core::time::Duration;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;

use zerocopy::{FromBytes, IntoBytes};

use crate::endpoint::{Endpoint, PeerInfo, PeerLink, Role};
use crate::eventfd::Doorbell;
use crate::layout::{Layout, RingSlot};
use crate::memfd::SharedRegion;
use crate::peer_id::PeerId;
use crate::rendezvous::{
    io_err, peer_cred, recv_exact, send_with_fds, HandshakeError, RejectReason,
    DEFAULT_HANDSHAKE_TIMEOUT,
};
use crate::wire::{AckWire, HelloWire, ACK_LEN, ACK_MAGIC, PROTOCOL_VERSION};

/// What the offering side proposes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfferConfig {
    /// Our id, sent in the hello.
    pub local_id: PeerId,
    /// The id of the peer we expect to reach (checked by the acceptor), if known.
    pub peer_id: Option<PeerId>,
    /// Data size of the ring we produce into (a power of two, see [`crate::layout`]).
    pub tx_data_size: usize,
    /// Data size of the ring the peer produces into.
    pub rx_data_size: usize,
    /// How long to wait for the ack.
    pub handshake_timeout: Duration,
}

impl OfferConfig {
    /// An offer from `local_id` with two 64 KiB rings and the default timeout.
    #[must_use]
    pub fn new(local_id: PeerId) -> Self {
        Self {
            local_id,
            peer_id: None,
            tx_data_size: 1 << 16,
            rx_data_size: 1 << 16,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }
}

/// A region and doorbells made for an offer, not yet sent: lay the rings out in
/// [`region`](Self::region), then [`offer`](Self::offer) or [`connect`](Self::connect).
#[derive(Debug)]
pub struct PendingOffer {
    /// The fresh, zero-filled region, sized for `layout`.
    region: SharedRegion,
    /// Where the two rings go.
    layout: Layout,
    /// The doorbell the acceptor rings for us.
    to_offerer: Doorbell,
    /// The doorbell we ring for the acceptor.
    to_acceptor: Doorbell,
    /// The configuration.
    cfg: OfferConfig,
}

impl PendingOffer {
    /// Creates the region (sealed memfd, zero-filled) and the two doorbells.
    ///
    /// # Errors
    ///
    /// [`HandshakeError::Layout`] for bad ring sizes in `cfg`;
    /// [`HandshakeError::Region`] or [`HandshakeError::Doorbell`] if a system call fails.
    pub fn new(cfg: &OfferConfig) -> Result<Self, HandshakeError> {
        let layout = Layout::new(cfg.tx_data_size as u64, cfg.rx_data_size as u64)
            .map_err(HandshakeError::Layout)?;
        let region = SharedRegion::create("coresident", layout.region_alloc_size())
            .map_err(HandshakeError::Region)?;
        Ok(Self {
            region,
            layout,
            to_offerer: Doorbell::new().map_err(HandshakeError::Doorbell)?,
            to_acceptor: Doorbell::new().map_err(HandshakeError::Doorbell)?,
            cfg: cfg.clone(),
        })
    }

    /// The region, to lay the rings out before offering.
    #[must_use]
    pub fn region(&self) -> &SharedRegion {
        &self.region
    }

    /// The ring layout.
    #[must_use]
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The slot of the ring we will produce into (`layout().to_acceptor`).
    #[must_use]
    pub fn tx_slot(&self) -> RingSlot {
        self.layout.to_acceptor
    }

    /// The slot of the ring we will consume from (`layout().to_offerer`).
    #[must_use]
    pub fn rx_slot(&self) -> RingSlot {
        self.layout.to_offerer
    }

    /// Connects to the listener at `path` and offers.
    ///
    /// # Errors
    ///
    /// [`HandshakeError::Sys`] if the connection fails (`ECONNREFUSED`: nobody listens;
    /// `ENOENT`: no such socket); otherwise as [`offer`](Self::offer).
    pub fn connect(self, path: &Path) -> Result<Endpoint, HandshakeError> {
        let stream = UnixStream::connect(path).map_err(|e| io_err("connect", &e))?;
        self.offer(stream)
    }

    /// Sends the hello with the three descriptors over a connected stream and waits for
    /// the ack.
    ///
    /// # Errors
    ///
    /// [`HandshakeError::Rejected`] if the acceptor refused (with its reason);
    /// [`HandshakeError::Timeout`] if it did not answer in time; transport errors
    /// otherwise.
    pub fn offer(self, stream: UnixStream) -> Result<Endpoint, HandshakeError> {
        let Self {
            region,
            layout,
            to_offerer,
            to_acceptor,
            cfg,
        } = self;
        stream
            .set_read_timeout(Some(cfg.handshake_timeout.max(Duration::from_millis(1))))
            .map_err(|e| io_err("setsockopt(SO_RCVTIMEO)", &e))?;
        let hello = HelloWire::new(
            region.len() as u64,
            layout.to_acceptor.data_size as u64,
            layout.to_offerer.data_size as u64,
            &cfg.local_id,
            cfg.peer_id.as_ref(),
        );
        send_with_fds(
            stream.as_fd(),
            hello.as_bytes(),
            &[region.as_fd(), to_offerer.as_fd(), to_acceptor.as_fd()],
        )?;

        let mut buf = [0u8; ACK_LEN];
        let mut fds = Vec::new();
        let mut truncated = false;
        recv_exact(
            stream.as_fd(),
            &mut buf,
            &mut fds,
            &mut truncated,
            0,
            ACK_LEN,
        )?;
        if !fds.is_empty() || truncated {
            return Err(HandshakeError::UnexpectedFds);
        }
        // Infallible: the buffer has exactly the struct's size and any bytes are valid.
        let ack = AckWire::read_from_bytes(&buf).map_err(|_| HandshakeError::BadMagic)?;
        if ack.magic != ACK_MAGIC {
            return Err(HandshakeError::BadMagic);
        }
        if let code @ 1.. = ack.status.get() {
            return Err(HandshakeError::Rejected(RejectReason::from_code(code)));
        }
        if ack.version.get() != PROTOCOL_VERSION {
            return Err(HandshakeError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: ack.version.get(),
            });
        }
        let (pid, uid) = peer_cred(stream.as_fd())?;
        stream
            .set_read_timeout(None)
            .map_err(|e| io_err("setsockopt(SO_RCVTIMEO)", &e))?;
        Ok(Endpoint {
            region,
            layout,
            role: Role::Offerer,
            link: PeerLink::new(to_offerer, to_acceptor, stream),
            peer: PeerInfo {
                id: cfg.peer_id,
                pid,
                uid,
            },
        })
    }
}

/// Offers a channel over a connected stream, with the region left zero-filled:
/// `PendingOffer::new(cfg)?.offer(stream)`.
///
/// # Errors
///
/// As [`PendingOffer::new`] and [`PendingOffer::offer`].
pub fn offer(stream: UnixStream, cfg: &OfferConfig) -> Result<Endpoint, HandshakeError> {
    PendingOffer::new(cfg)?.offer(stream)
}

/// Connects to the listener at `path` and offers a channel, with the region left
/// zero-filled: `PendingOffer::new(cfg)?.connect(path)`.
///
/// # Errors
///
/// As [`PendingOffer::new`] and [`PendingOffer::connect`].
pub fn connect(path: &Path, cfg: &OfferConfig) -> Result<Endpoint, HandshakeError> {
    PendingOffer::new(cfg)?.connect(path)
}
