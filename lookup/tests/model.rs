//! The table against a `HashMap` model: random operation sequences (proptest), full
//! tables, adversarial keys, the two-cache-line bound, and a writer racing readers.

use std::collections::HashMap;
use std::net::Ipv6Addr;
use std::sync::atomic::{AtomicBool, Ordering};

use coresident_lookup::{ClaimError, DomainId, DomainTable, Handle, InsertError, Key, Seed, Table};
use proptest::prelude::*;

/// Proptest cases per property: small under Miri, which runs every test ~1000x slower.
const CASES: u32 = if cfg!(miri) { 4 } else { 128 };
/// Operations per case.
const OPS: usize = if cfg!(miri) { 40 } else { 200 };

/// `CASES` cases; under Miri without the failure file (Miri isolates the file system).
fn config() -> ProptestConfig {
    let mut config = ProptestConfig::with_cases(CASES);
    if cfg!(miri) {
        config.failure_persistence = None;
    }
    config
}

#[derive(Debug, Clone)]
enum Op<K> {
    Insert(K, u32),
    Remove(K),
    Get(K),
}

fn ops<K: std::fmt::Debug + Clone>(
    keys: impl Strategy<Value = K> + Clone,
) -> impl Strategy<Value = Vec<Op<K>>> {
    let op = prop_oneof![
        3 => (keys.clone(), any::<u32>()).prop_map(|(k, h)| Op::Insert(k, h)),
        1 => keys.clone().prop_map(Op::Remove),
        2 => keys.prop_map(Op::Get),
    ];
    proptest::collection::vec(op, 1..OPS)
}

/// Runs `ops` on a fresh table and on the model, checking every answer and, after each
/// step, every key the model holds. `Full` must leave the table unchanged and may only
/// happen once the table is at least half full (`random_keys`) or at all (adversarial).
fn check<K, const B: usize>(seed: [u64; 4], ops: &[Op<K>], random_keys: bool)
where
    K: Key + std::hash::Hash + std::fmt::Debug,
{
    let table = Box::new(Table::<K, B>::new(Seed::new(seed)));
    let mut w = table.writer().unwrap();
    let mut model: HashMap<K, Handle> = HashMap::new();
    // Changes so far: what `Table::generation` must read.
    let mut changes = 0u64;
    for op in ops {
        match *op {
            Op::Insert(k, h) => {
                let h = Handle::from_bits(h);
                match w.insert(k, h) {
                    Ok(old) => {
                        assert_eq!(old, model.insert(k, h), "insert {k:?}");
                        changes += 1;
                    }
                    Err(InsertError::Full) => {
                        assert!(!model.contains_key(&k), "Full for a present key");
                        if random_keys {
                            assert!(
                                model.len() * 2 >= Table::<K, B>::SLOTS,
                                "Full at {}",
                                model.len()
                            );
                        }
                    }
                    Err(e) => panic!("unexpected {e}"),
                }
            }
            Op::Remove(k) => {
                let removed = w.remove(&k);
                assert_eq!(removed, model.remove(&k), "remove {k:?}");
                changes += u64::from(removed.is_some());
            }
            Op::Get(k) => assert_eq!(table.get(&k), model.get(&k).copied(), "get {k:?}"),
        }
        assert_eq!(table.generation(), changes, "one generation per change");
        assert_eq!(table.len(), model.len());
        for (k, h) in &model {
            assert_eq!(table.get(k), Some(*h), "lost {k:?}");
        }
    }
}

/// Keys of a table with `B` buckets and `seed` that all hash to buckets {0, 1}: a
/// guest that could steer its MACs would produce these. With `same_tag`, they also share
/// one tag, so every lookup among them compares keys.
fn colliding<const B: usize>(seed: [u64; 4], n: usize, same_tag: bool) -> Vec<u64> {
    let table = Table::<u64, B>::new(Seed::new(seed));
    let tag = table.tag_of(&0);
    (0u64..)
        .filter(|k| matches!(table.buckets_of(k), (0, 1) | (1, 0)))
        .filter(|k| !same_tag || table.tag_of(k) == tag)
        .take(n)
        .collect()
}

proptest! {
    #![proptest_config(config())]

    /// A tiny table (16 slots) over 40 keys: fills up, relocates, empties.
    #[test]
    fn small_u64_table(seed: [u64; 4], ops in ops(0u64..40)) {
        check::<u64, 4>(seed, &ops, true);
    }

    /// Two-word keys (3 slots a bucket), 12 slots over 24 addresses.
    #[test]
    fn small_ipv6_table(seed: [u64; 4], ops in ops((0u128..24).prop_map(|b| Ipv6Addr::from_bits(b << 64 | 0xfe80)))) {
        check::<Ipv6Addr, 4>(seed, &ops, true);
    }

    /// MACs that a guest picks sequentially under one OUI, in a 64-bucket table.
    #[test]
    fn sequential_macs(seed: [u64; 4], ops in ops((0u16..400).prop_map(|i| {
        let [hi, lo] = i.to_be_bytes();
        [0x02, 0x16, 0x3e, 0, hi, lo]
    }))) {
        check::<[u8; 6], 64>(seed, &ops, true);
    }

    /// Keys that all share one bucket pair (and, half the time, one tag): at most 8
    /// fit, the rest get `Full`, and nothing else breaks.
    #[test]
    fn adversarial_keys(seed: [u64; 4], same_tag: bool, picks in proptest::collection::vec((0usize..16, 0u8..6, any::<u32>()), 1..OPS)) {
        let keys = colliding::<8>(seed, 16, same_tag);
        let ops: Vec<Op<u64>> = picks.iter().map(|&(i, kind, h)| {
            let k = keys[i];
            match kind { 0..=2 => Op::Insert(k, h), 3 => Op::Remove(k), _ => Op::Get(k) }
        }).collect();
        check::<u64, 8>(seed, &ops, false);
    }

    /// The Xen flat table against the same model.
    #[test]
    fn domain_table(ops in ops(0u16..80)) {
        let table = DomainTable::<64>::new();
        let mut model = HashMap::new();
        for op in ops {
            match op {
                Op::Insert(k, h) => {
                    let h = Handle::from_bits(h);
                    let r = table.insert(DomainId(k), h);
                    if k < 64 { prop_assert_eq!(r, Ok(model.insert(k, h))); }
                    else { prop_assert_eq!(r, Err(InsertError::OutOfRange)); }
                }
                Op::Remove(k) => prop_assert_eq!(table.remove(DomainId(k)), model.remove(&k)),
                Op::Get(k) => prop_assert_eq!(table.get(DomainId(k)), model.get(&k).copied()),
            }
        }
    }
}

/// Inserts random keys until `Full`; returns how many fit.
fn fill<K: Key, const B: usize>(seed: u64, key: impl Fn(u64) -> K) -> usize {
    let table = Box::new(Table::<K, B>::new(Seed::new([
        seed,
        seed ^ 1,
        seed ^ 2,
        seed ^ 3,
    ])));
    let mut w = table.writer().unwrap();
    let mut x = seed | 1;
    for n in 0.. {
        // xorshift64: random keys without a dependency.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        match w.insert(key(x), Handle::from_bits(n as u32)) {
            Ok(None) => {}
            Ok(Some(_)) => panic!("duplicate random key"),
            Err(InsertError::Full) => return n,
            Err(e) => panic!("{e}"),
        }
    }
    unreachable!()
}

#[cfg(not(miri))]
const FILL_BUCKETS: usize = 1024;
#[cfg(miri)]
const FILL_BUCKETS: usize = 16;

/// MACs fill past 90% load: 2048 buckets of 4 hold at least 7373, so 4096 MACs fit
/// with room to spare.
#[test]
fn fills_past_90_percent() {
    for seed in [1, 2, 3] {
        let slots = Table::<[u8; 6], { FILL_BUCKETS * 2 }>::SLOTS;
        let n = fill::<[u8; 6], { FILL_BUCKETS * 2 }>(seed, |x| {
            let b = x.to_le_bytes();
            [b[0], b[1], b[2], b[3], b[4], b[5]]
        });
        assert!(n * 10 >= slots * 9, "MAC table full at {n} of {slots}");
        let slots = Table::<Ipv6Addr, { FILL_BUCKETS * 2 }>::SLOTS;
        let n = fill::<Ipv6Addr, { FILL_BUCKETS * 2 }>(seed, |x| {
            Ipv6Addr::from_bits(u128::from(x) << 64 | u128::from(x.rotate_left(7)))
        });
        assert!(n * 10 >= slots * 9, "IPv6 table full at {n} of {slots}");
    }
}

/// The bound: a lookup, hit or miss, reads at most two 64-byte lines, in a full table.
#[test]
fn lookup_touches_at_most_two_lines() {
    let table = Box::new(Table::<u64, 16>::new(Seed::new([7, 8, 9, 10])));
    let mut w = table.writer().unwrap();
    let (inserts, lookups) = if cfg!(miri) { (120, 160) } else { (1000, 2000) };
    let mut present = Vec::new();
    for k in 0u64..inserts {
        if w.insert(k, Handle::new(k as u16, 0)).is_ok() {
            present.push(k);
        }
    }
    assert!(
        present.len() >= Table::<u64, 16>::SLOTS * 9 / 10,
        "only {} fit",
        present.len()
    );
    let mut misses = 0;
    for k in 0u64..lookups {
        let mut lines = Vec::new();
        let got = table.get_traced(&k, |addr| lines.push(addr));
        assert_eq!(got.is_some(), present.contains(&k));
        misses += usize::from(got.is_none());
        // No writer runs, so no retry: one probe per bucket.
        assert!(
            (1..=2).contains(&lines.len()),
            "{k}: {} probes",
            lines.len()
        );
        assert!(lines.iter().all(|a| a % 64 == 0), "bucket not line-aligned");
        lines.dedup();
        let (b1, b2) = table.buckets_of(&k);
        assert!(lines.len() <= 2 && b1 != b2);
    }
    assert!(misses > lookups as usize / 4);
    // Emptied again, no key counts as overflowed: every miss reads one line.
    for k in &present {
        assert!(w.remove(k).is_some());
    }
    for k in 0u64..lookups {
        let mut lines = Vec::new();
        assert_eq!(table.get_traced(&k, |addr| lines.push(addr)), None);
        assert_eq!(lines.len(), 1, "{k}: an overflow count stayed above 0");
    }
}

#[test]
fn one_writer_at_a_time() {
    let table = Table::<u64, 2>::new(Seed::new([0; 4]));
    let w = table.writer().unwrap();
    assert_eq!(table.writer().err(), Some(ClaimError::Busy));
    drop(w);
    let mut w = table.writer().unwrap();
    assert_eq!(w.insert(1, Handle::new(1, 1)), Ok(None));
    assert!(format!("{w:?}").contains("len: 1"));
}

/// A writer churning entries (inserts, updates, removes, relocations) while readers
/// look up: stable keys are always found with their handle; churned keys come back
/// absent or with a handle that was stored for them.
#[test]
fn readers_race_writer() {
    const STABLE: u64 = 200;
    let rounds = if cfg!(miri) { 20 } else { 20_000 };
    let table = Box::new(Table::<u64, 64>::new(Seed::new([3, 1, 4, 1])));
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let mut w = table.writer().unwrap();
        for k in 0..STABLE {
            w.insert(k, Handle::new(k as u16, 7)).unwrap();
        }
        for _ in 0..2 {
            s.spawn(|| {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let k = i % STABLE;
                    assert_eq!(table.get(&k), Some(Handle::new(k as u16, 7)));
                    let c = 1000 + i % 150;
                    if let Some(h) = table.get(&c) {
                        assert_eq!(u64::from(h.slot()), c, "torn entry for {c}");
                    }
                    i += 1;
                }
            });
        }
        for r in 0..rounds {
            let c = 1000 + (r * 7) % 150;
            if r % 3 == 2 {
                w.remove(&c);
            } else {
                // May be Full: the churn keys fill the table past what fits.
                let _ = w.insert(c, Handle::new(c as u16, r as u16));
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
}
