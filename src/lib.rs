//! coresident: residency-aware communication between co-resident VMs (work in progress).
#![no_std]

pub use coresident_lookup as lookup;
pub use coresident_ring as ring;
