//! coresident's host transport: a sealed memfd region, eventfd doorbells, and a
//! Unix-socket rendezvous that passes the descriptors (the model of KVM's ivshmem).
#![cfg(target_os = "linux")]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs, missing_debug_implementations)]

pub mod error;
pub mod memfd;

pub use error::SysError;
pub use memfd::{RegionError, SharedRegion, MAX_REGION_SIZE, MIN_REGION_SIZE};
pub mod eventfd;
pub use eventfd::{peer_alive, Doorbell, DoorbellError, WaitError, Wake};
