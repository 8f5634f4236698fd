//! Pieces of a PV guest kernel (`core` only, no allocation): the console
//! ring of its `start_info` ([`console`]). Its XenStore ring client is
//! [`crate::xenstore::ring`].

pub mod console;
