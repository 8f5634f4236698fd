//! Linux userspace access to Xen (feature `std`): the devices under
//! `/dev/xen` through `rustix`, each with a `#[repr(C)]` mirror of its
//! uapi header, behind the [`sys::Sys`] trait so that unit tests swap in a
//! fake driver.

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
pub type XenTransport<S = sys::Linux> = crate::transport::XenTransport<LinuxBackend<S>>;
/// Its region.
pub type XenRegion<S = sys::Linux> = crate::transport::XenRegion<LinuxBackend<S>>;
/// Its doorbell.
pub type XenDoorbell<S = sys::Linux> = crate::transport::XenDoorbell<LinuxBackend<S>>;
/// Its pending offer.
pub type XenPending<S = sys::Linux> = crate::transport::XenPending<LinuxBackend<S>>;
/// Its failure.
pub type XenTransportError = crate::transport::XenTransportError<LinuxError>;
/// The XenStore rendezvous over the Linux devices.
pub type Rendezvous<S = sys::Linux> = crate::rendezvous::Rendezvous<LinuxBackend<S>>;
/// Its published offer.
pub type XsPending<S = sys::Linux> = crate::rendezvous::XsPending<LinuxBackend<S>>;
/// Its failure.
pub type RendezvousError = crate::rendezvous::RendezvousError<LinuxError>;
