//! Nothing here: the package exists for `benches/ipc.rs` (see there), so that its
//! heavy dev-dependencies (iceoryx2) stay out of every other crate's build.
#![no_std]
