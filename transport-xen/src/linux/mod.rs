//! Linux userspace access to Xen (feature `std`): the devices under
//! `/dev/xen` through `rustix`, each with a `#[repr(C)]` mirror of its
//! uapi header, behind the [`sys::Sys`] trait so that unit tests swap in a
//! fake driver.
//!
//! # Examples
//!
//! ```
//! use coresident_xen::{Evtchn, Gntalloc, Gntdev};
//!
//! // Each device opens on its own; off Xen (or without the modules) each
//! // says which one is missing.
//! for (name, r) in [
//!     ("evtchn", Evtchn::open().map(drop).map_err(|e| e.to_string())),
//!     ("gntalloc", Gntalloc::open().map(drop).map_err(|e| e.to_string())),
//!     ("gntdev", Gntdev::open().map(drop).map_err(|e| e.to_string())),
//! ] {
//!     println!("{name}: {r:?}");
//! }
//! ```

pub mod backend;
pub mod error;
pub mod evtchn;
pub mod gntalloc;
pub mod gntdev;
pub mod mapping;
pub mod privcmd;
pub mod sys;

#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
mod tests_devices;

pub use backend::{LinuxBackend, LinuxError, LinuxPages, LinuxPort};

/// The transport over the Linux devices.
///
/// # Examples
///
/// ```
/// use coresident::ChannelLayout;
/// use coresident_xen::XenTransport;
///
/// let mut t: XenTransport = XenTransport::new(5, 0);
/// // A layout the ring refuses is caught before any device is opened.
/// assert!(t.offer_pages(ChannelLayout::symmetric(3000)).is_err());
/// ```
pub type XenTransport<S = sys::Linux> = crate::transport::XenTransport<LinuxBackend<S>>;
/// Its region.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use coresident::SharedRegion;
/// use coresident_xen::{Rendezvous, XenRegion, XenStore};
///
/// let mut xs = XenStore::open()?;
/// let link = Rendezvous::new(0, 5, "logs")?.accept(&mut xs, Some(Duration::from_secs(30)))?;
/// let region: &XenRegion = &link.region;
/// println!("{} bytes of rings", region.len());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub type XenRegion<S = sys::Linux> = crate::transport::XenRegion<LinuxBackend<S>>;
/// Its doorbell.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use coresident_xen::{Rendezvous, XenDoorbell, XenStore};
///
/// let mut xs = XenStore::open()?;
/// let link = Rendezvous::new(0, 5, "logs")?.accept(&mut xs, Some(Duration::from_secs(30)))?;
/// let doorbell: &XenDoorbell = &link.doorbell;
/// println!("port {}, can ask Xen: {}", doorbell.port(), doorbell.can_ask_xen());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub type XenDoorbell<S = sys::Linux> = crate::transport::XenDoorbell<LinuxBackend<S>>;
/// Its pending offer.
///
/// # Examples
///
/// ```no_run
/// use coresident::ChannelLayout;
/// use coresident_xen::{XenPending, XenTransport};
///
/// let mut t = XenTransport::new(5, 0);
/// let pending: XenPending = t.offer_pages(ChannelLayout::symmetric(4096))?;
/// println!("acceptor bound yet: {}", pending.peer_alive());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub type XenPending<S = sys::Linux> = crate::transport::XenPending<LinuxBackend<S>>;
/// Its failure.
///
/// # Examples
///
/// ```
/// use coresident_xen::XenTransportError;
///
/// let e: XenTransportError = XenTransportError::Timeout;
/// assert_eq!(e.to_string(), "the peer did not accept in time");
/// ```
pub type XenTransportError = crate::transport::XenTransportError<LinuxError>;
/// The XenStore rendezvous over the Linux devices.
///
/// # Examples
///
/// ```
/// use coresident_xen::Rendezvous;
///
/// // Domain 5's channel "logs" to dom0, over the /dev/xen devices.
/// let rdv: Rendezvous = Rendezvous::new(5, 0, "logs")?;
/// assert_eq!(rdv.keys().offer_dir()?.as_str(), "/local/domain/5/data/coresident/channels/0/logs/offer");
/// # Ok::<(), coresident_xen::protocol::keys::KeyError>(())
/// ```
pub type Rendezvous<S = sys::Linux> = crate::rendezvous::Rendezvous<LinuxBackend<S>>;
/// Its published offer.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use coresident::ChannelLayout;
/// use coresident_xen::{Rendezvous, XenStore, XsPending};
///
/// let mut xs = XenStore::open()?;
/// let pending: XsPending = Rendezvous::new(5, 0, "logs")?.offer(&mut xs, ChannelLayout::symmetric(4096))?;
/// let link = pending.complete(&mut xs, Some(Duration::from_secs(30)))?;
/// # drop(link);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub type XsPending<S = sys::Linux> = crate::rendezvous::XsPending<LinuxBackend<S>>;
/// Its failure.
///
/// # Examples
///
/// ```
/// use coresident_xen::RendezvousError;
///
/// let e: RendezvousError = RendezvousError::Refused;
/// assert_eq!(e.to_string(), "the acceptor refused the offer");
/// ```
pub type RendezvousError = crate::rendezvous::RendezvousError<LinuxError>;
