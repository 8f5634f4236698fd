//! Linux userspace access to Xen (feature `std`): the devices under
//! `/dev/xen` through `rustix`, each with a `#[repr(C)]` mirror of its
//! uapi header, behind the [`sys::Sys`] trait so that unit tests swap in a
//! fake driver.

pub mod error;
pub mod evtchn;
pub mod gntalloc;
pub mod gntdev;
pub mod mapping;
pub mod privcmd;
pub mod sys;

#[cfg(test)]
pub(crate) mod fake;
