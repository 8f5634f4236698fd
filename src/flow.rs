//! The per-message flow header and the receiver's reassembly: each sequence number of
//! a flow delivered once, in order, whichever path carried it.

/// Bytes of [`FlowHeader`] on the wire.
pub const FLOW_HEADER_LEN: usize = 16;

/// What every routed message carries in front of its payload, on both paths:
/// little-endian `flow: u32`, `flags: u32` (zero), `seq: u64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowHeader {
    /// The flow: one sender, one destination, one ordered stream.
    pub flow: u32,
    /// The message's place in its flow, from 0.
    pub seq: u64,
}

impl FlowHeader {
    /// The wire form.
    pub fn encode(&self) -> [u8; FLOW_HEADER_LEN] {
        let mut b = [0u8; FLOW_HEADER_LEN];
        b[..4].copy_from_slice(&self.flow.to_le_bytes());
        b[8..].copy_from_slice(&self.seq.to_le_bytes());
        b
    }

    /// Parses the wire form at the start of `bytes`; `None` if too short or the flags
    /// are not zero (a peer's bytes: never trusted).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let b: &[u8; FLOW_HEADER_LEN] = bytes.get(..FLOW_HEADER_LEN)?.try_into().ok()?;
        let [f0, f1, f2, f3, g0, g1, g2, g3, s @ ..] = *b;
        if [g0, g1, g2, g3] != [0; 4] {
            return None;
        }
        Some(Self {
            flow: u32::from_le_bytes([f0, f1, f2, f3]),
            seq: u64::from_le_bytes(s),
        })
    }
}

#[cfg(feature = "alloc")]
pub use reassembly::{Delivery, Reassembler, ReassemblyError};

#[cfg(feature = "alloc")]
mod reassembly {
    use super::FlowHeader;
    use alloc::collections::BTreeMap;
    use alloc::vec::Vec;
    use core::fmt;

    /// What [`Reassembler::accept`] did with a message.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Delivery {
        /// Delivered, with this many held messages that it released (0 or more).
        Delivered {
            /// Held messages delivered after it.
            released: usize,
        },
        /// Arrived ahead of a gap: held until the gap fills.
        Held,
        /// Already delivered (a resend after a fallback): dropped.
        Duplicate,
    }

    /// Why a message could not be taken.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    #[non_exhaustive]
    pub enum ReassemblyError {
        /// Holding it would exceed the bound on held messages: the path that should
        /// fill the gap is not delivering.
        TooManyHeld {
            /// The flow.
            flow: u32,
            /// The bound.
            limit: usize,
        },
    }

    impl fmt::Display for ReassemblyError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self {
                Self::TooManyHeld { flow, limit } => {
                    write!(
                        f,
                        "flow {flow}: more than {limit} messages wait for a gap to fill"
                    )
                }
            }
        }
    }

    impl core::error::Error for ReassemblyError {}

    #[derive(Debug, Default)]
    struct FlowRx {
        /// The next sequence number to deliver.
        next: u64,
        /// Messages that arrived ahead of `next`.
        held: BTreeMap<u64, Vec<u8>>,
    }

    /// Per-flow in-order, exactly-once delivery over two paths.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident::{FlowHeader, Reassembler};
    /// let mut r = Reassembler::new(64);
    /// let mut out = Vec::new();
    /// let h = |seq| FlowHeader { flow: 1, seq };
    /// r.accept(h(1), b"b", |_, m| out.push(m.to_vec())).unwrap(); // early: held
    /// r.accept(h(0), b"a", |_, m| out.push(m.to_vec())).unwrap(); // fills the gap
    /// r.accept(h(0), b"a", |_, m| out.push(m.to_vec())).unwrap(); // a resend: dropped
    /// assert_eq!(out, [b"a".to_vec(), b"b".to_vec()]);
    /// ```
    #[derive(Debug)]
    pub struct Reassembler {
        flows: BTreeMap<u32, FlowRx>,
        limit: usize,
        held: usize,
        duplicates: u64,
    }

    impl Reassembler {
        /// A reassembler holding at most `limit` early messages in all.
        pub fn new(limit: usize) -> Self {
            Self {
                flows: BTreeMap::new(),
                limit,
                held: 0,
                duplicates: 0,
            }
        }

        /// Duplicates dropped so far.
        pub fn duplicates(&self) -> u64 {
            self.duplicates
        }

        /// Early messages held now.
        pub fn held(&self) -> usize {
            self.held
        }

        /// The next sequence number `flow` expects.
        pub fn expected(&self, flow: u32) -> u64 {
            self.flows.get(&flow).map_or(0, |f| f.next)
        }

        /// Continues `flow` at `next`: later messages of it below `next` are duplicates.
        /// Held messages below `next` are dropped.
        pub fn resume(&mut self, flow: u32, next: u64) {
            let f = self.flows.entry(flow).or_default();
            f.next = next;
            let before = f.held.len();
            f.held.retain(|&seq, _| seq >= next);
            self.held -= before - f.held.len();
            // Held messages that `next` now reaches wait for the next `accept`: they
            // were early, and the one at `next` itself is still to come or held.
        }

        /// Takes one message from either path; `deliver` gets every message that is now
        /// in order (this one and any it releases), as `(flow, payload)`.
        ///
        /// # Errors
        ///
        /// [`ReassemblyError::TooManyHeld`]; the message is not taken.
        pub fn accept(
            &mut self,
            header: FlowHeader,
            payload: &[u8],
            mut deliver: impl FnMut(u32, &[u8]),
        ) -> Result<Delivery, ReassemblyError> {
            let f = self.flows.entry(header.flow).or_default();
            if header.seq < f.next || f.held.contains_key(&header.seq) {
                self.duplicates += 1;
                return Ok(Delivery::Duplicate);
            }
            if header.seq > f.next {
                if self.held >= self.limit {
                    return Err(ReassemblyError::TooManyHeld {
                        flow: header.flow,
                        limit: self.limit,
                    });
                }
                f.held.insert(header.seq, payload.to_vec());
                self.held += 1;
                return Ok(Delivery::Held);
            }
            deliver(header.flow, payload);
            f.next += 1;
            let mut released = 0;
            while let Some(m) = f.held.remove(&f.next) {
                deliver(header.flow, &m);
                f.next += 1;
                released += 1;
            }
            self.held -= released;
            Ok(Delivery::Delivered { released })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_rejects_garbage() {
        let h = FlowHeader {
            flow: 0xDEAD_BEEF,
            seq: u64::MAX - 3,
        };
        assert_eq!(FlowHeader::decode(&h.encode()), Some(h));
        assert_eq!(FlowHeader::decode(&h.encode()[..15]), None);
        let mut bad = h.encode();
        bad[5] = 1;
        assert_eq!(FlowHeader::decode(&bad), None);
    }
}

#[cfg(all(test, feature = "alloc"))]
mod reassembly_tests {
    use super::*;
    use alloc::vec::Vec;

    #[test]
    fn resume_makes_earlier_sequence_numbers_duplicates() {
        let mut r = Reassembler::new(8);
        let mut out = Vec::new();
        let h = |seq| FlowHeader { flow: 7, seq };
        // Held ahead of a gap, then a restart says the flow continues at 5.
        assert_eq!(
            r.accept(h(3), b"3", |_, m| out.push(m.to_vec())),
            Ok(Delivery::Held)
        );
        r.resume(7, 5);
        assert_eq!(
            r.held(),
            0,
            "held messages below the resume point are dropped"
        );
        assert_eq!(
            r.accept(h(4), b"4", |_, m| out.push(m.to_vec())),
            Ok(Delivery::Duplicate)
        );
        assert_eq!(
            r.accept(h(5), b"5", |_, m| out.push(m.to_vec())),
            Ok(Delivery::Delivered { released: 0 })
        );
        assert_eq!(out, [b"5".to_vec()]);
        assert_eq!(r.expected(7), 6);
    }

    #[test]
    fn the_hold_bound_is_an_error_not_growth() {
        let mut r = Reassembler::new(2);
        let h = |seq| FlowHeader { flow: 1, seq };
        r.accept(h(2), b"", |_, _| {}).unwrap();
        r.accept(h(3), b"", |_, _| {}).unwrap();
        assert_eq!(
            r.accept(h(4), b"", |_, _| {}),
            Err(ReassemblyError::TooManyHeld { flow: 1, limit: 2 })
        );
        assert_eq!(
            r.accept(h(0), b"", |_, _| {}),
            Ok(Delivery::Delivered { released: 0 })
        );
        assert_eq!(
            r.accept(h(1), b"", |_, _| {}),
            Ok(Delivery::Delivered { released: 2 })
        );
    }
}
