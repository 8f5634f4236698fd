//! How the shared region is cut into the two rings.
//!
//! ```text
//! offset 0                                   H + A                               H + A + H + B
//! | ring "to acceptor": header | data (A)    | ring "to offerer": header | data (B) | (slack)
//!   H = RING_HEADER_RESERVE     A, B: powers of two in MIN_RING_DATA..=MAX_RING_DATA
//! ```
//!
//! The offerer produces into the "to acceptor" ring and consumes from the "to offerer"
//! ring; the acceptor does the opposite. Each slot starts on a page boundary (`H` and
//! the data sizes are multiples of 4096), and the ring's own header (the ring crate's
//! `DATA_OFFSET`, 640 bytes in ring layout version 1) fits in `H`. A region may be
//! larger than the layout needs (the slack is unused), never smaller.

use core::fmt;

/// Bytes reserved at the start of each ring slot for the ring's header (one page).
pub const RING_HEADER_RESERVE: usize = 4096;

/// The smallest data area of one ring, in bytes.
pub const MIN_RING_DATA: usize = 4096;

/// The largest data area of one ring, in bytes (256 MiB).
pub const MAX_RING_DATA: usize = 1 << 28;

/// One ring's part of the region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingSlot {
    /// Offset of the slot from the start of the region; a multiple of 4096.
    pub offset: usize,
    /// Length of the slot: `RING_HEADER_RESERVE + data_size`.
    pub len: usize,
    /// Size of the ring's data area: a power of two in
    /// `MIN_RING_DATA..=MAX_RING_DATA`.
    pub data_size: usize,
}

/// The two ring slots of a region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The ring the offerer produces into and the acceptor consumes from.
    pub to_acceptor: RingSlot,
    /// The ring the acceptor produces into and the offerer consumes from.
    pub to_offerer: RingSlot,
}

/// Ring sizes that do not make a valid layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LayoutError {
    /// A ring data size is not a power of two or lies outside
    /// `MIN_RING_DATA..=MAX_RING_DATA`.
    BadRingSize {
        /// The offending size in bytes.
        size: u64,
    },
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadRingSize { size } => write!(
                f,
                "ring data size {size} is not a power of two in \
                 {MIN_RING_DATA}..={MAX_RING_DATA} bytes"
            ),
        }
    }
}

impl std::error::Error for LayoutError {}

/// Checks one ring data size.
fn check_ring(size: u64) -> Result<usize, LayoutError> {
    match usize::try_from(size) {
        Ok(s) if s.is_power_of_two() && (MIN_RING_DATA..=MAX_RING_DATA).contains(&s) => Ok(s),
        _ => Err(LayoutError::BadRingSize { size }),
    }
}

impl Layout {
    /// The layout for two rings of the given data sizes.
    ///
    /// # Errors
    ///
    /// [`LayoutError::BadRingSize`] if a size is not a power of two in range.
    pub fn new(to_acceptor_data: u64, to_offerer_data: u64) -> Result<Self, LayoutError> {
        let a = check_ring(to_acceptor_data)?;
        let b = check_ring(to_offerer_data)?;
        // No overflow: each slot is at most 4096 + 2^28 bytes.
        let to_acceptor = RingSlot {
            offset: 0,
            len: RING_HEADER_RESERVE + a,
            data_size: a,
        };
        let to_offerer = RingSlot {
            offset: to_acceptor.len,
            len: RING_HEADER_RESERVE + b,
            data_size: b,
        };
        Ok(Self {
            to_acceptor,
            to_offerer,
        })
    }

    /// The smallest region that holds this layout, in bytes (at most about 512 MiB,
    /// within `MAX_REGION_SIZE`).
    #[must_use]
    pub fn region_size(&self) -> usize {
        self.to_offerer.offset + self.to_offerer.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memfd::MAX_REGION_SIZE;

    #[test]
    fn sizes() {
        let l = Layout::new(4096, 65536).unwrap();
        assert_eq!(l.to_offerer.offset, 8192);
        assert_eq!(l.region_size(), 8192 + 4096 + 65536);
        let max = MAX_RING_DATA as u64;
        assert!(Layout::new(max, max).unwrap().region_size() <= MAX_REGION_SIZE);
        assert_eq!(
            Layout::new(5000, 4096),
            Err(LayoutError::BadRingSize { size: 5000 })
        );
        assert!(Layout::new(4096, 2048).is_err());
        assert!(Layout::new(4096, u64::MAX).is_err());
    }
}
