//! XenStore clients: [`socket`] (xenstored's socket in dom0, or
//! `/dev/xen/xenbus` in any domain; feature `std`) and [`ring`] (the ring
//! page of a PV guest kernel's `start_info`, `core` only).

pub mod ring;
#[cfg(all(feature = "std", target_os = "linux"))]
pub mod socket;

#[cfg(all(test, feature = "std", target_os = "linux"))]
pub(crate) mod socket_tests;

#[cfg(all(feature = "std", target_os = "linux"))]
pub use socket::{
    Conn, Transaction, WatchEvent, XenStore, XsError, EVENT_QUEUE_MAX, SOCKET_PATH, XENBUS_PATH,
};
