//! Test memory: an owned, 128-byte aligned buffer reached only through raw pointers,
//! plus the peer's view of it (`poke`/`peek` at layout offsets).
#![allow(dead_code)]

use coresident_ring::{region_size, RingMemory};
use std::sync::atomic::{AtomicU32, Ordering};

#[repr(C, align(128))]
#[derive(Clone, Copy)]
struct Line([u8; 128]);

/// Owns the memory; halves built on it must be dropped first.
#[derive(Debug)]
pub struct Mem {
    ptr: *mut Line,
    lines: usize,
}

// SAFETY: the buffer is only reached through raw pointers, atomics and volatile copies.
unsafe impl Send for Mem {}
// SAFETY: as above.
unsafe impl Sync for Mem {}

impl Mem {
    pub fn new(len: usize) -> Self {
        let lines = len.div_ceil(128).max(1);
        let b: Box<[Line]> = vec![Line([0; 128]); lines].into_boxed_slice();
        Self {
            ptr: Box::into_raw(b).cast::<Line>(),
            lines,
        }
    }

    pub fn for_ring(data_size: u32) -> Self {
        Self::new(region_size(data_size))
    }

    pub fn len(&self) -> usize {
        self.lines * 128
    }

    pub fn ring_memory(&self) -> RingMemory {
        // SAFETY: the buffer is valid for `len` bytes until `self` drops, which tests do
        // after the halves; it is only accessed through raw pointers.
        unsafe { RingMemory::new(self.ptr.cast::<u8>(), self.len()) }.unwrap()
    }

    pub fn base(&self) -> *mut u8 {
        self.ptr.cast::<u8>()
    }

    pub fn ring_memory_len(&self, len: usize) -> RingMemory {
        assert!(len <= self.len());
        // SAFETY: as in `ring_memory`, for a prefix.
        unsafe { RingMemory::new(self.ptr.cast::<u8>(), len) }.unwrap()
    }

    fn word(&self, off: usize) -> &AtomicU32 {
        assert!(off + 4 <= self.len() && off % 4 == 0);
        // SAFETY: in bounds and aligned (asserted); the buffer lives as long as `self`,
        // and is otherwise accessed only atomically or volatilely.
        unsafe { AtomicU32::from_ptr(self.ptr.cast::<u8>().add(off).cast::<u32>()) }
    }

    /// The peer writes `v` at `off`.
    pub fn poke(&self, off: usize, v: u32) {
        self.word(off).store(v, Ordering::SeqCst);
    }

    /// Reads the `u32` at `off`.
    pub fn peek(&self, off: usize) -> u32 {
        self.word(off).load(Ordering::SeqCst)
    }
}

impl Drop for Mem {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`lines` came from `Box::into_raw` of a `Box<[Line]>` of that length.
        drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(self.ptr, self.lines)) });
    }
}

/// Shared-field offsets (the layout documented in `coresident_ring::layout`).
pub const WRITE: usize = 128;
pub const SPACE_EVENT: usize = 256;
pub const PROD_CLOSED: usize = 260;
pub const READ: usize = 384;
pub const DATA_EVENT: usize = 512;
pub const CONS_CLOSED: usize = 516;
pub const DATA: usize = 640;

/// A deterministic payload for message number `seq` of `len` bytes.
pub fn payload(seq: u64, len: usize) -> Vec<u8> {
    let mut x = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
