//! The receiver's reassembly against hostile peers. Peer 0 is honest: its flows 0..3
//! send sequence numbers 0.. with payloads that name them, arriving in any order,
//! repeated, by either path. Peers 1..=3 send anything: any flow (honest flow ids
//! too), any sequence number (far ahead, `u64::MAX`), any size, resumes, gap skips,
//! forgets. Small budgets make every eviction and refusal path run.
//!
//! Properties: no panic; the held bytes stay within the shared budget; what peer 0's
//! flows deliver is always a prefix `0, 1, 2, ..` of their own messages (nothing
//! forged, lost in order, or twice); and once every honest message is offered again in
//! order, every one has been delivered (another peer cost peer 0 nothing).
//!
//! ```text
//! cargo +nightly fuzz run reassembler_hostile_peer -- -max_total_time=60
//! ```
#![no_main]

use coresident::{FlowHeader, Path, Reassembler, ReassemblyLimits};
use libfuzzer_sys::fuzz_target;

const HONEST_FLOWS: u32 = 3;

struct Input<'a>(&'a [u8]);
impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u64(&mut self) -> Option<u64> {
        let mut w = [0u8; 8];
        for b in &mut w {
            *b = self.byte()?;
        }
        Some(u64::from_le_bytes(w))
    }
}

fn honest(flow: u32, seq: u64) -> Vec<u8> {
    let mut p = vec![0xA5; (seq % 97) as usize + 12];
    p[..4].copy_from_slice(&flow.to_le_bytes());
    p[4..12].copy_from_slice(&seq.to_le_bytes());
    p
}

fuzz_target!(|data: &[u8]| {
    let limits = ReassemblyLimits {
        window: 64,
        flows_per_peer: 8,
        peers: 4,
        held_bytes_per_flow: 2048,
        held_bytes_per_peer: 4096,
        held_per_peer: 32,
        held_bytes_total: 6144,
    };
    let mut r: Reassembler<u8> = Reassembler::new(limits);
    let mut got: [Vec<u64>; HONEST_FLOWS as usize] = Default::default();
    let mut top = [0u64; HONEST_FLOWS as usize];
    let check = |peer: &u8, flow: u32, m: &[u8], got: &mut [Vec<u64>; 3]| {
        if *peer != 0 {
            return;
        }
        assert!(flow < HONEST_FLOWS, "peer 0 never used flow {flow}");
        let seq = u64::from_le_bytes(m[4..12].try_into().unwrap());
        assert_eq!(m, &honest(flow, seq)[..], "a payload not peer 0's");
        let g = &mut got[flow as usize];
        assert_eq!(seq, g.len() as u64, "peer 0's flow {flow} out of order");
        g.push(seq);
    };
    let mut input = Input(data);
    while let Some(op) = input.byte() {
        let path = if op & 0x80 == 0 { Path::Channel } else { Path::Network };
        match op & 0x7F {
            // Peer 0: one of its messages, near its flow's front (early, late, again).
            0..=63 => {
                let flow = u32::from(op) % HONEST_FLOWS;
                let Some(d) = input.byte() else { break };
                let base = got[flow as usize].len() as u64;
                let seq = (base + u64::from(d % 48)).saturating_sub(8);
                top[flow as usize] = top[flow as usize].max(seq + 1);
                let h = FlowHeader { flow, seq };
                let _ = r.accept(&0, path, h, &honest(flow, seq), |p, f, m| check(p, f, m, &mut got));
            }
            // A hostile peer: anything.
            64..=111 => {
                let (Some(p), Some(f), Some(seq), Some(len)) =
                    (input.byte(), input.byte(), input.u64(), input.byte())
                else {
                    break;
                };
                let peer = 1 + p % 3;
                let flow = u32::from(f) % 16;
                let h = FlowHeader { flow, seq };
                let payload = vec![0x5A; usize::from(len) * 8];
                let _ = r.accept(&peer, path, h, &payload, |p, f, m| check(p, f, m, &mut got));
            }
            112..=117 => {
                let (Some(p), Some(f), Some(n)) = (input.byte(), input.byte(), input.u64()) else {
                    break;
                };
                let _ = r.resume(&(1 + p % 3), u32::from(f) % 16, n, |p, f, m| check(p, f, m, &mut got));
            }
            118..=121 => {
                let (Some(p), Some(f)) = (input.byte(), input.byte()) else { break };
                r.skip_gap(&(1 + p % 3), u32::from(f) % 16, |p, f, m| check(p, f, m, &mut got));
            }
            122..=123 => {
                let Some(p) = input.byte() else { break };
                r.forget_peer(&(1 + p % 3));
            }
            _ => r.take_progress(|_, _, _| {}),
        }
        assert!(r.held_bytes() <= limits.held_bytes_total, "over the shared budget");
    }
    // Peer 0 offers every message again, in order: each flow must deliver them all.
    for flow in 0..HONEST_FLOWS {
        for seq in got[flow as usize].len() as u64..top[flow as usize] {
            let h = FlowHeader { flow, seq };
            r.accept(&0, Path::Network, h, &honest(flow, seq), |p, f, m| check(p, f, m, &mut got))
                .expect("an in-order honest message is never refused");
        }
        assert_eq!(got[flow as usize].len() as u64, top[flow as usize], "flow {flow} lost messages");
    }
});
