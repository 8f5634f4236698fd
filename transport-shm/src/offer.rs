//! The offering side of the rendezvous.
//!
//! [`PreparedOffer::new`] creates the sealed region and lays both rings out in it,
//! exactly as the core's [`ChannelLayout`] places them, before any peer can see it: an
//! acceptor may attach to the rings the moment it has the region, and every endpoint
//! this crate hands out is ready for `Channel::new`.

use core::time::Duration;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;

use coresident::{ChannelLayout, Role};

use crate::cred::{CredPolicy, PeerCred};
use crate::endpoint::{Endpoint, PeerInfo};
use crate::memfd::{close_untrusted, MemfdRegion};
use crate::peer_id::PeerId;
use crate::peer_link::PeerLink;
use crate::rendezvous::{
    connect_path, recv_exact, send_all, Deadline, HandshakeError, DEFAULT_HANDSHAKE_TIMEOUT,
};
use crate::wire::{
    check_layout, encode_hello, parse_ack, region_alloc_size, AckError, Hello, ACK_LEN,
    MAX_CONTEXT_LEN,
};

/// What the offering side proposes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfferConfig {
    /// Our id, sent in the hello.
    pub local_id: PeerId,
    /// The id of the peer we expect to reach (checked by the acceptor), if known.
    pub peer_id: Option<PeerId>,
    /// The ring sizes: `to_acceptor` is the ring we produce into. Powers of two in
    /// [`MIN_RING_DATA`](crate::wire::MIN_RING_DATA)`..=`[`MAX_RING_DATA`](crate::wire::MAX_RING_DATA).
    pub layout: ChannelLayout,
    /// How long the whole handshake may take, from `connect` to the ack.
    pub handshake_timeout: Duration,
    /// Whom we offer to: the listener's credentials are checked against it before the
    /// region is sent.
    pub policy: CredPolicy,
    /// Opaque application bytes for the acceptor (at most
    /// [`MAX_CONTEXT_LEN`]): a session id, the TCP
    /// 4-tuple a stream binds this channel to... The acceptor finds them in
    /// [`PeerInfo::context`].
    pub context: Vec<u8>,
}

impl OfferConfig {
    /// An offer from `local_id` with two 64 KiB rings, the default timeout and policy,
    /// and no context.
    #[must_use]
    pub fn new(local_id: PeerId) -> Self {
        Self {
            local_id,
            peer_id: None,
            layout: ChannelLayout::symmetric(1 << 16),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            policy: CredPolicy::default(),
            context: Vec::new(),
        }
    }
}

/// A region made for an offer, rings laid out, not yet sent: [`offer`](Self::offer) it
/// over a connected stream or [`connect`](Self::connect) it to a listener.
#[derive(Debug)]
pub struct PreparedOffer {
    /// The fresh region, both rings initialised.
    region: MemfdRegion,
    /// The configuration (its layout checked).
    cfg: OfferConfig,
}

impl PreparedOffer {
    /// Creates the region (sealed memfd) and lays both rings out in it.
    ///
    /// # Errors
    ///
    /// [`HandshakeError::RingSize`] for ring sizes this transport refuses,
    /// [`HandshakeError::ContextTooLong`] for a context over
    /// [`MAX_CONTEXT_LEN`]; [`HandshakeError::Region`] or
    /// [`HandshakeError::Rings`] if creating or laying out the region fails.
    pub fn new(cfg: &OfferConfig) -> Result<Self, HandshakeError> {
        let layout = check_layout(cfg.layout).map_err(HandshakeError::RingSize)?;
        if cfg.context.len() > MAX_CONTEXT_LEN {
            return Err(HandshakeError::ContextTooLong {
                len: cfg.context.len(),
            });
        }
        let region = MemfdRegion::create("coresident", region_alloc_size(layout))
            .map_err(HandshakeError::Region)?;
        coresident::init_region(&region, layout).map_err(HandshakeError::Rings)?;
        Ok(Self {
            region,
            cfg: cfg.clone(),
        })
    }

    /// The ring sizes.
    #[must_use]
    pub fn layout(&self) -> ChannelLayout {
        self.cfg.layout
    }

    /// Connects to the listener at `path` and offers.
    ///
    /// # Errors
    ///
    /// [`HandshakeError::NoSuchSocket`] (nobody registered there),
    /// [`HandshakeError::NotListening`] (a stale socket), [`HandshakeError::Timeout`]
    /// (a backlog that stayed full); otherwise as [`offer`](Self::offer).
    pub fn connect(self, path: &Path) -> Result<Endpoint, HandshakeError> {
        let deadline = Deadline::after(self.cfg.handshake_timeout);
        let stream = connect_path(path, deadline)?;
        self.offer_until(stream, deadline)
    }

    /// Offers over a connected stream: checks who listens, sends the hello with the
    /// region, and waits for the ack, all within the handshake timeout.
    ///
    /// # Errors
    ///
    /// [`HandshakeError::PeerRefused`] if the policy does not admit the peer (nothing
    /// was sent); [`HandshakeError::Rejected`] if the acceptor refused (with its
    /// reason); [`HandshakeError::Timeout`] if it did not answer in time; transport
    /// errors otherwise.
    pub fn offer(self, stream: UnixStream) -> Result<Endpoint, HandshakeError> {
        let deadline = Deadline::after(self.cfg.handshake_timeout);
        self.offer_until(stream, deadline)
    }

    /// [`offer`](Self::offer) with a deadline already running.
    pub(crate) fn offer_until(
        self,
        stream: UnixStream,
        deadline: Deadline,
    ) -> Result<Endpoint, HandshakeError> {
        let Self { region, cfg } = self;
        let sock = stream.as_fd();
        // Who listens, before anything moves: the kernel's word, fixed at its listen().
        let cred = PeerCred::of(sock)?;
        if !cfg.policy.allows(&cred) {
            tracing::info!(
                pid = cred.pid,
                uid = cred.uid,
                "coresident-shm: not offering to a listener the policy does not admit"
            );
            return Err(HandshakeError::PeerRefused(cred));
        }
        let hello = encode_hello(&Hello {
            region_size: region.len() as u64,
            layout: cfg.layout,
            offerer: cfg.local_id.clone(),
            acceptor: cfg.peer_id.clone(),
            context: cfg.context.clone(),
        })?;
        if let Err(e) = send_all(sock, &hello, &[region.as_fd()], deadline) {
            // An acceptor that refused before reading (credentials, busy) closed the
            // connection; its reason may be waiting for us.
            let mut ack = [0u8; ACK_LEN];
            let mut fds = Vec::new();
            let answer = recv_exact(sock, &mut ack, &mut fds, deadline);
            fds.into_iter().for_each(close_untrusted);
            if answer.is_ok() {
                if let Err(refusal @ AckError::Rejected(_)) = parse_ack(&ack) {
                    return Err(refusal.into());
                }
            }
            return Err(e);
        }

        let mut ack = [0u8; ACK_LEN];
        let mut fds = Vec::new();
        let got = recv_exact(sock, &mut ack, &mut fds, deadline);
        if !fds.is_empty() {
            fds.into_iter().for_each(close_untrusted);
            return Err(HandshakeError::UnexpectedFds);
        }
        got?;
        parse_ack(&ack)?;
        Ok(Endpoint {
            region,
            layout: cfg.layout,
            role: Role::Offerer,
            link: PeerLink::new(
                stream.into(),
                PeerInfo {
                    id: cfg.peer_id,
                    cred,
                    context: cfg.context,
                },
            ),
        })
    }
}

/// Offers a channel over a connected stream: `PreparedOffer::new(cfg)?.offer(stream)`.
///
/// # Errors
///
/// As [`PreparedOffer::new`] and [`PreparedOffer::offer`].
pub fn offer(stream: UnixStream, cfg: &OfferConfig) -> Result<Endpoint, HandshakeError> {
    PreparedOffer::new(cfg)?.offer(stream)
}

/// Connects to the listener at `path` and offers a channel:
/// `PreparedOffer::new(cfg)?.connect(path)`.
///
/// # Errors
///
/// As [`PreparedOffer::new`] and [`PreparedOffer::connect`].
pub fn connect(path: &Path, cfg: &OfferConfig) -> Result<Endpoint, HandshakeError> {
    PreparedOffer::new(cfg)?.connect(path)
}
