//! The offerer's half of a rendezvous once its offer is published: waiting
//! for the acceptor's answer (or its death), then removing the offer.

use core::time::Duration;

use super::channel_keys::{home_exists, prune, remove_dir};
use super::{Deadline, RendezvousError, RELEASE_DOMAIN};
use crate::backend::{EventPort, XenBackend};
use crate::protocol::keys::{self, KeyError, Path};
use crate::transport::{XenLink, XenPending, XenTransportError};
use crate::types::{DomId, EvtchnPort};
use crate::xenstore::{XsClient, XsError};

/// An offer published in XenStore, waiting for the answer.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use coresident::ChannelLayout;
/// use coresident_xen::{Rendezvous, XenStore};
///
/// let mut xs = XenStore::open()?;
/// let mut rdv = Rendezvous::new(5, 0, "logs")?;
/// let pending = rdv.offer(&mut xs, ChannelLayout::symmetric(4096))?;
/// // Either `complete` (wait for the answer) or `withdraw` (give up).
/// let link = pending.complete(&mut xs, Some(Duration::from_secs(30)))?;
/// # drop(link);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
#[must_use = "an offer is withdrawn only by complete or withdraw"]
pub struct XsPending<B: XenBackend> {
    pub(super) pending: XenPending<B>,
    pub(super) own: DomId,
    pub(super) peer: DomId,
    pub(super) port: EvtchnPort,
    pub(super) offer: Path,
    pub(super) answer: Path,
    pub(super) token: Path,
}

impl<B: XenBackend> XsPending<B> {
    /// The offer's directory in XenStore.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident::ChannelLayout;
    /// use coresident_xen::{Rendezvous, XenStore};
    ///
    /// let mut xs = XenStore::open()?;
    /// let pending = Rendezvous::new(5, 0, "logs")?.offer(&mut xs, ChannelLayout::symmetric(4096))?;
    /// // "/local/domain/5/data/coresident/channels/0/logs/offer"
    /// println!("offered at {}", pending.offer_path());
    /// pending.withdraw(&mut xs)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn offer_path(&self) -> &str {
        self.offer.as_str()
    }

    /// Waits for the acceptor: `accepted` for this offer (or its live
    /// byte), then removes the offer and every node it left empty, whatever
    /// the outcome. Besides the answer's watch it waits on the offer's
    /// event channel and on `@releaseDomain`: an acceptor that mapped and
    /// bound and then died before it answered (its release signal clears
    /// its live byte and fires our port), or whose domain was destroyed
    /// (its home goes), is [`XenTransportError::PeerGone`] at once, not at
    /// the timeout. (Over a client without a descriptor to wait on beside
    /// the port, a PV kernel's ring, the port is looked at after each
    /// XenStore event.)
    ///
    /// # Errors
    ///
    /// [`RendezvousError::Timeout`], [`RendezvousError::Refused`], a
    /// malformed answer, [`RendezvousError::Transport`] (`PeerGone`).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use coresident::ChannelLayout;
    /// use coresident_xen::{Rendezvous, RendezvousError, XenStore};
    ///
    /// let mut xs = XenStore::open()?;
    /// let pending = Rendezvous::new(5, 0, "logs")?.offer(&mut xs, ChannelLayout::symmetric(4096))?;
    /// match pending.complete(&mut xs, Some(Duration::from_secs(30))) {
    ///     Ok(link) => println!("accepted: {link:?}"),
    ///     Err(RendezvousError::Refused) => println!("dom0 refused the offer"),
    ///     Err(e) => return Err(e.into()),
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn complete<X: XsClient>(
        self,
        xs: &mut X,
        timeout: Option<Duration>,
    ) -> Result<XenLink<B>, RendezvousError<B::Error>> {
        let deadline = Deadline::after(self.pending.event_port().now_ns(), timeout);
        let release = Path::new(format_args!("{}/release", self.token.as_str()))?;
        let r = xs
            .watch(self.answer.as_str(), self.token.as_str())
            .map_err(RendezvousError::from)
            .and_then(|()| {
                // Best effort: a guest may not be allowed the special watch
                // (then the answer's watch, which fires when the acceptor's
                // home is removed, and the event channel remain).
                let released = xs.watch(RELEASE_DOMAIN, release.as_str()).is_ok();
                let r = self.wait_accepted(xs, deadline);
                let _ = xs.unwatch(self.answer.as_str(), self.token.as_str());
                if released {
                    let _ = xs.unwatch(RELEASE_DOMAIN, release.as_str());
                }
                r
            });
        remove_dir(xs, self.own, self.offer.as_str());
        r?;
        // Accepted: the acceptor set its live byte before it answered. If
        // the byte is clear now, it has come and gone already (or lied):
        // the channel says so at once, and what it sent can be received.
        Ok(self.pending.into_link())
    }

    /// The watched wait of [`complete`](Self::complete).
    fn wait_accepted<X: XsClient>(
        &self,
        xs: &mut X,
        deadline: Deadline,
    ) -> Result<(), RendezvousError<B::Error>> {
        let gone = RendezvousError::Transport(XenTransportError::PeerGone);
        let port = self.pending.event_port();
        loop {
            // The acceptor sets its live byte before it answers, and may
            // withdraw its answer as soon as it wrote it: a set live byte is
            // an acceptance whether or not we saw the answer.
            if self.pending.peer_alive() {
                return Ok(());
            }
            match keys::read_answer(xs, self.answer.as_str(), self.port)? {
                Some(true) => return Ok(()),
                Some(false) => return Err(RendezvousError::Refused),
                None => {}
            }
            if !home_exists(xs, self.peer)? {
                return Err(gone);
            }
            let left = deadline.left(port.now_ns());
            if left.is_some_and(|l| l.is_zero()) {
                return Err(RendezvousError::Timeout);
            }
            let store = wait_store_or_port(xs, port, left)?;
            // Whether *our* port fired (a descriptor may be readable for
            // another; over a client without one, looked at after each
            // XenStore event): it fires only from the acceptor's side, its
            // ring after it set its live byte or its release signal after
            // the byte was cleared.
            let fired = port
                .wait(Some(Duration::ZERO))
                .map_err(|e| RendezvousError::Transport(XenTransportError::Backend(e)))?;
            if fired && !self.pending.peer_alive() {
                return Err(gone);
            }
            if store {
                // Take every queued event; the loop re-reads what they name.
                while xs.wait_watch(Some(Duration::ZERO))?.is_some() {}
            }
        }
    }

    /// Withdraws the offer without waiting (its grants are released when
    /// `self` drops), and the nodes above it left empty.
    ///
    /// # Errors
    ///
    /// [`KeyError::Store`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident::ChannelLayout;
    /// use coresident_xen::{Rendezvous, XenStore};
    ///
    /// let mut xs = XenStore::open()?;
    /// let pending = Rendezvous::new(5, 0, "logs")?.offer(&mut xs, ChannelLayout::symmetric(4096))?;
    /// // Shutting down before dom0 answered: the offer's keys go, the pages too.
    /// pending.withdraw(&mut xs)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn withdraw<X: XsClient>(self, xs: &mut X) -> Result<(), KeyError> {
        match xs.rm(self.offer.as_str()) {
            Ok(()) | Err(XsError::NotFound) => {}
            Err(e) => return Err(e.into()),
        }
        prune(xs, self.own, self.offer.as_str())
    }
}

/// Waits until XenStore has an event or the port may have fired, or
/// `left` passed: whether XenStore has one.
fn wait_store_or_port<X: XsClient, P: EventPort>(
    xs: &mut X,
    port: &P,
    left: Option<Duration>,
) -> Result<bool, XsError> {
    if xs.has_queued_event() {
        return Ok(true);
    }
    #[cfg(all(feature = "std", target_os = "linux"))]
    if let (Some(a), Some(b)) = (xs.poll_fd(), port.poll_fd()) {
        let (store, _) = crate::linux::sys::poll_two_raw(a, b, left)
            .map_err(|e| XsError::Io(e.raw_os_error()))?;
        return Ok(store);
    }
    let _ = port;
    // A client without a descriptor: wait on XenStore alone.
    Ok(xs.wait_watch(left)?.is_some())
}
