//! Random operation sequences against the residency table, checked against a
//! `HashMap` model: inserts (new keys, updates, relocations, `Full`), removes and
//! lookups on small tables that fill up, with one- and two-word keys.
//!
//! ```text
//! cargo +nightly fuzz run table_ops -- -max_total_time=60
//! ```
#![no_main]

use std::collections::HashMap;
use std::net::Ipv6Addr;

use coresident_lookup::{Handle, InsertError, Key, Seed, Table};
use libfuzzer_sys::fuzz_target;

/// Replays `data` (3 bytes per operation) on a table of `B` buckets and on the model.
fn run<K, const B: usize>(seed: [u64; 4], data: &[u8], key: impl Fn(u8) -> K)
where
    K: Key + std::hash::Hash + std::fmt::Debug,
{
    let table = Box::new(Table::<K, B>::new(Seed::new(seed)));
    let mut w = table.writer().expect("fresh table has no writer");
    let mut model: HashMap<K, Handle> = HashMap::new();
    for op in data.chunks_exact(3) {
        let (k, h) = (key(op[1]), Handle::new(u16::from(op[2]), u16::from(op[0])));
        match op[0] % 4 {
            0 | 1 => match w.insert(k, h) {
                Ok(old) => assert_eq!(old, model.insert(k, h), "insert {k:?}"),
                Err(InsertError::Full) => {
                    assert!(!model.contains_key(&k), "Full for present key {k:?}");
                    assert!(
                        model.len() >= 2 * Table::<K, B>::SLOTS / B,
                        "Full too early"
                    );
                }
                Err(e) => panic!("unexpected error {e}"),
            },
            2 => assert_eq!(w.remove(&k), model.remove(&k), "remove {k:?}"),
            _ => assert_eq!(table.get(&k), model.get(&k).copied(), "get {k:?}"),
        }
        assert_eq!(table.len(), model.len());
        for (k, h) in &model {
            assert_eq!(table.get(k), Some(*h), "lost {k:?}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((head, ops)) = data.split_first_chunk::<9>() else {
        return;
    };
    let mut seed = [0u64; 4];
    for (i, b) in head[1..].iter().enumerate() {
        seed[i % 4] |= u64::from(*b) << (8 * (i / 4));
    }
    match head[0] % 3 {
        // 8 buckets of 5 slots over 256 keys: fills, relocates, hits `Full`.
        0 => run::<u64, 8>(seed, ops, u64::from),
        // 4 buckets of 3 slots, two-word keys.
        1 => run::<Ipv6Addr, 4>(seed, ops, |b| Ipv6Addr::from_bits(u128::from(b) << 100 | 1)),
        // MAC addresses differing in one byte, as a guest that picks them would.
        _ => run::<[u8; 6], 16>(seed, ops, |b| [0x02, 0, 0, 0, 0, b]),
    }
});
