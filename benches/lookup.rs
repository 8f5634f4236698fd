//! The residency table's lookup against the peers the study measured and the best
//! general-purpose maps: hits and misses of random MAC addresses at 16, 256 and 4096
//! entries, and lookups while a writer thread churns entries.
//!
//! Contenders, in the same groups on the same keys:
//! - `coresident`: `coresident_lookup::Table`, 50% full (8, 128, 2048 buckets of 4),
//!   the load `hashbrown::HashMap::with_capacity` gives at these sizes (32, 512, 8192
//!   one-byte-tagged slots);
//! - `hashbrown_foldhash`: `hashbrown::HashMap` with `foldhash::fast::RandomState`;
//! - `std_hashmap`: `std::collections::HashMap` (SipHash-1-3);
//! - `chained_1` / `chained_10`: a XenLoop-style chained table (`vmid_mac_table`) of
//!   boxed nodes whose every chain is padded to exactly 1 or 10 nodes, the entry at the
//!   tail, so a lookup walks 1 or 10 nodes, hit or miss (the study's "1 lookup" and
//!   "10 lookups").
//!
//! Each iteration does `BATCH` independent lookups; criterion reports the time per
//! batch and the throughput in lookups per second.
//!
//! ```text
//! cargo bench --bench lookup -- --warm-up-time 1 --measurement-time 3
//! ```

// `criterion_group!` generates an undocumented `pub fn`.
#![allow(missing_docs)]

use std::collections::HashMap as StdHashMap;
use std::hash::BuildHasher;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};

use coresident_lookup::{Handle, Seed, Table};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

type Mac = [u8; 6];

/// Lookups per iteration.
const BATCH: usize = 1024;

/// Deterministic random MACs (xorshift64), all distinct.
fn macs(n: usize, salt: u64) -> Vec<Mac> {
    let mut seen = std::collections::HashSet::new();
    let mut x = 0x9E37_79B9_7F4A_7C15 ^ salt;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        let mac = [b[0] & 0xFE, b[1], b[2], b[3], b[4], b[5]];
        if seen.insert(mac) {
            out.push(mac);
        }
    }
    out
}

/// A XenLoop-style chained hash table whose chains all have exactly `depth` nodes.
struct Chained {
    buckets: Vec<Option<Box<Node>>>,
    hasher: foldhash::fast::FixedState,
}

struct Node {
    key: Mac,
    value: Handle,
    next: Option<Box<Node>>,
}

impl Chained {
    fn new(entries: &[(Mac, Handle)], depth: usize) -> Self {
        let n = (entries.len() * 4).next_power_of_two();
        let mut t = Self {
            buckets: (0..n).map(|_| None).collect(),
            hasher: Default::default(),
        };
        for &(key, value) in entries {
            let i = t.index(&key);
            let next = t.buckets[i].take();
            t.buckets[i] = Some(Box::new(Node { key, value, next }));
        }
        // Pad every chain at the head with non-matching nodes (multicast MACs, never a
        // real key) up to `depth`, so a hit is at the tail and a miss walks them all.
        for head in &mut t.buckets {
            let mut len = 0;
            let mut cur = head.as_deref();
            while let Some(node) = cur {
                len += 1;
                cur = node.next.as_deref();
            }
            for pad in len..depth {
                let next = head.take();
                *head = Some(Box::new(Node {
                    key: [1, 0, 0, 0, 0, pad as u8],
                    value: Handle::default(),
                    next,
                }));
            }
        }
        t
    }

    fn index(&self, key: &Mac) -> usize {
        (self.hasher.hash_one(key) as usize) & (self.buckets.len() - 1)
    }

    #[inline]
    fn get(&self, key: &Mac) -> Option<Handle> {
        let mut cur = self.buckets[self.index(key)].as_deref();
        while let Some(node) = cur {
            if node.key == *key {
                return Some(node.value);
            }
            cur = node.next.as_deref();
        }
        None
    }
}

fn run_batch(keys: &[Mac], get: impl Fn(&Mac) -> Option<Handle>) -> usize {
    keys.iter().filter(|k| get(black_box(k)).is_some()).count()
}

/// Benchmarks all contenders for one table size; `B` is the coresident table's bucket
/// count for `n` entries.
fn size<const B: usize>(c: &mut Criterion, n: usize) {
    let present = macs(n, 1);
    let absent = macs(BATCH, 2);
    let entries: Vec<(Mac, Handle)> = present
        .iter()
        .enumerate()
        .map(|(i, k)| (*k, Handle::new(i as u16, 1)))
        .collect();
    // Hit keys: BATCH random picks among the present ones.
    let hits: Vec<Mac> = macs(BATCH, 3)
        .iter()
        .map(|m| {
            present[(u64::from_le_bytes([m[0], m[1], m[2], m[3], m[4], m[5], 0, 0]) as usize) % n]
        })
        .collect();
    let absent: Vec<Mac> = absent
        .into_iter()
        .filter(|k| !present.contains(k))
        .collect();

    let table = Box::new(Table::<Mac, B>::new(Seed::from_bytes([0x5a; 32])));
    {
        let mut w = table.writer().unwrap();
        for &(k, h) in &entries {
            w.insert(k, h).unwrap();
        }
    }
    let mut brown: hashbrown::HashMap<Mac, Handle, foldhash::fast::RandomState> =
        hashbrown::HashMap::with_capacity_and_hasher(n, Default::default());
    let mut std_map = StdHashMap::with_capacity(n);
    for &(k, h) in &entries {
        brown.insert(k, h);
        std_map.insert(k, h);
    }
    let chained_1 = Chained::new(&entries, 1);
    let chained_10 = Chained::new(&entries, 10);

    for (kind, keys, expect) in [("hit", &hits, hits.len()), ("miss", &absent, 0)] {
        let mut g = c.benchmark_group(format!("lookup_{kind}"));
        g.throughput(Throughput::Elements(keys.len() as u64));
        let mut bench = |name: &str, get: &dyn Fn(&Mac) -> Option<Handle>| {
            assert_eq!(run_batch(keys, get), expect, "{name} {kind} {n}");
            g.bench_with_input(BenchmarkId::new(name, n), keys, |b, keys| {
                b.iter(|| run_batch(keys, get));
            });
        };
        bench("coresident", &|k| table.get(k));
        bench("hashbrown_foldhash", &|k| brown.get(k).copied());
        bench("std_hashmap", &|k| std_map.get(k).copied());
        bench("chained_1", &|k| chained_1.get(k));
        bench("chained_10", &|k| chained_10.get(k));
        g.finish();
    }

    // The same lookups on the coresident table while a writer thread churns 64 other
    // keys (remove, then insert again with a new generation) as fast as it can.
    let churn = macs(64, 4);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let mut w = table.writer().unwrap();
            let mut gen = 0u16;
            let mut ops = 0u64;
            while !stop.load(Ordering::Relaxed) {
                gen = gen.wrapping_add(1);
                for k in &churn {
                    w.remove(k);
                    // Full would be fine: churn keys that don't fit are skipped.
                    let _ = w.insert(*k, Handle::new(0, gen));
                    ops += 2;
                }
            }
            ops
        });
        for (kind, keys, expect) in [("hit", &hits, hits.len()), ("miss", &absent, 0)] {
            let mut g = c.benchmark_group(format!("lookup_{kind}_with_writer"));
            g.throughput(Throughput::Elements(keys.len() as u64));
            assert_eq!(run_batch(keys, |k| table.get(k)), expect);
            g.bench_with_input(BenchmarkId::new("coresident", n), keys, |b, keys| {
                b.iter(|| run_batch(keys, |k| table.get(k)));
            });
            g.finish();
        }
        stop.store(true, Ordering::Relaxed);
        let ops = writer.join().unwrap();
        eprintln!("writer: {ops} table operations during the {n}-entry concurrent runs");
    });
}

fn lookup(c: &mut Criterion) {
    size::<8>(c, 16);
    size::<128>(c, 256);
    size::<2048>(c, 4096);
}

criterion_group!(benches, lookup);
criterion_main!(benches);
