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
