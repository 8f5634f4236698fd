//! The residency table's lookup against the peers the study measured and the best
//! general-purpose maps: hits and misses of random MAC addresses at 16, 256 and 4096
//! entries, the same at 90% load, and lookups while a writer thread inserts and
//! removes entries, beside the concurrent maps.
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
//! `lookup_{hit,miss}_90`: `coresident` at 90% of its slots (29, 231 and 3687 MACs in
//! 8, 64 and 1024 buckets) beside `hashbrown_foldhash` holding the same MACs at the
//! load it chooses itself (hashbrown cannot be filled past 87.5%).
//!
//! `lookup_{hit,miss}_with_writer`: the same lookups (50% load) while another thread
//! removes and re-inserts one of 64 other keys (8 at 16 entries) 10,000 times a second
//! (`PACED_RATE`, a rate every contender's writer sustains), each change visible when
//! it returns; `..._with_busy_writer`, the same with the writer changing back to back
//! as fast as it can (a writer that is slow to change then hurts its readers less).
//! Contenders, the maps that allow a concurrent writer: `coresident` (its `Writer`),
//! `papaya` (`pin()` per lookup), `dashmap` (sharded `RwLock`s), `arcswap_hashbrown`
//! (`ArcSwap<hashbrown::HashMap>`, a `load()` per lookup; the writer clones the map,
//! changes it and stores it, RCU style) and `left_right` (a `ReadHandle::enter()` per
//! lookup; the writer appends the remove and the insert and publishes). Every map
//! hashes with foldhash. Issue 15's target: `coresident` at least 2x faster than each.
//! The writer's changes are counted and printed (`writer: ...`): a writer starved by
//! the reader would flatter the reader.
//!
//! Each iteration does `BATCH` independent lookups; criterion reports the time per
//! batch and the throughput in lookups per second.
//!
//! ```text
//! cargo bench --bench lookup -- --warm-up-time 1 --measurement-time 3
//! cargo bench --bench lookup -- _writer         # only the concurrent groups
//! ```

// `criterion_group!` generates an undocumented `pub fn`.
#![allow(missing_docs)]

use std::collections::HashMap as StdHashMap;
use std::hash::BuildHasher;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use coresident_lookup::{Handle, Seed, Table};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

type Mac = [u8; 6];

/// hashbrown with foldhash, as every hashed contender uses.
type Brown = hashbrown::HashMap<Mac, Handle, foldhash::fast::RandomState>;

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

/// The keys of one size: `(entries, hits, absent)`. Hits are `BATCH` random picks
/// among the present keys, absent keys are never present.
fn keys(n: usize) -> (Vec<(Mac, Handle)>, Vec<Mac>, Vec<Mac>) {
    let present = macs(n, 1);
    let entries = present
        .iter()
        .enumerate()
        .map(|(i, k)| (*k, Handle::new(i as u16, 1)))
        .collect();
    let hits = macs(BATCH, 3)
        .iter()
        .map(|m| {
            present[(u64::from_le_bytes([m[0], m[1], m[2], m[3], m[4], m[5], 0, 0]) as usize) % n]
        })
        .collect();
    let absent = macs(BATCH, 2)
        .into_iter()
        .filter(|k| !present.contains(k))
        .collect();
    (entries, hits, absent)
}

/// A coresident table holding `entries`.
fn table<const B: usize>(entries: &[(Mac, Handle)]) -> Box<Table<Mac, B>> {
    let table = Box::new(Table::<Mac, B>::new(Seed::from_bytes([0x5a; 32])));
    {
        let mut w = table.writer().unwrap();
        for &(k, h) in entries {
            w.insert(k, h).unwrap();
        }
    }
    table
}

fn brown(entries: &[(Mac, Handle)]) -> Brown {
    let mut m = Brown::with_capacity_and_hasher(entries.len(), Default::default());
    m.extend(entries.iter().copied());
    m
}

/// Benchmarks all contenders for one table size; `B` is the coresident table's bucket
/// count for `n` entries at 50% load.
fn size<const B: usize>(c: &mut Criterion, n: usize) {
    let (entries, hits, absent) = keys(n);
    let table = table::<B>(&entries);
    let brown = brown(&entries);
    let mut std_map = StdHashMap::with_capacity(n);
    std_map.extend(entries.iter().copied());
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
}

/// coresident at 90% of its `B * 4` slots (`n` entries) beside hashbrown with the same
/// entries.
fn dense<const B: usize>(c: &mut Criterion, n: usize) {
    assert!(
        n * 10 >= B * 4 * 9 && n <= B * 4,
        "{n} entries in {B} buckets"
    );
    let (entries, hits, absent) = keys(n);
    let table = table::<B>(&entries);
    let brown = brown(&entries);
    for (kind, keys, expect) in [("hit", &hits, hits.len()), ("miss", &absent, 0)] {
        let mut g = c.benchmark_group(format!("lookup_{kind}_90"));
        g.throughput(Throughput::Elements(keys.len() as u64));
        let mut bench = |name: &str, get: &dyn Fn(&Mac) -> Option<Handle>| {
            assert_eq!(run_batch(keys, get), expect, "{name} {kind} {n}");
            g.bench_with_input(BenchmarkId::new(name, n), keys, |b, keys| {
                b.iter(|| run_batch(keys, get));
            });
        };
        bench("coresident", &|k| table.get(k));
        bench("hashbrown_foldhash", &|k| brown.get(k).copied());
        g.finish();
    }
}

/// The operations the left-right writer appends.
enum LrOp {
    Insert(Mac, Handle),
    Remove(Mac),
}

/// A hashbrown map that left-right keeps two copies of.
#[derive(Clone)]
struct LrMap(Brown);

impl left_right::Absorb<LrOp> for LrMap {
    fn absorb_first(&mut self, op: &mut LrOp, _: &Self) {
        match *op {
            LrOp::Insert(k, h) => {
                self.0.insert(k, h);
            }
            LrOp::Remove(k) => {
                self.0.remove(&k);
            }
        }
    }

    fn sync_with(&mut self, first: &Self) {
        self.0.clone_from(&first.0);
    }
}

/// Changes per second of the paced writer: a peer arriving or leaving every 100 µs, a
/// very busy control plane, and a rate every contender's writer sustains (arc-swap's
/// clones a 4096-entry map per change: about 12,000 a second on the loaded 2-vCPU
/// development machine).
const PACED_RATE: u64 = 10_000;

/// Runs `bench` while a writer thread calls `change(i)` (the remove and re-insert of
/// one churned key, visible to readers when it returns; `i` counts the changes) until
/// `bench` returns: `PACED_RATE` times a second with `paced`, else back to back.
/// Returns the changes made.
fn with_writer(paced: bool, change: &mut (dyn FnMut(u64) + Send), bench: impl FnOnce()) -> u64 {
    let stop = AtomicBool::new(false);
    let changes = AtomicU64::new(0);
    std::thread::scope(|s| {
        s.spawn(|| {
            let start = std::time::Instant::now();
            let mut i = 0u64;
            // Relaxed: a stop request; nothing else is read through it.
            while !stop.load(Ordering::Relaxed) {
                if paced {
                    let due = std::time::Duration::from_nanos(i * 1_000_000_000 / PACED_RATE);
                    if start.elapsed() < due {
                        std::hint::spin_loop();
                        continue;
                    }
                }
                change(i);
                i += 1;
                // Relaxed: a statistic, read after the join.
                changes.fetch_add(1, Ordering::Relaxed);
            }
        });
        bench();
        stop.store(true, Ordering::Relaxed);
    });
    changes.load(Ordering::Relaxed)
}

/// The lookups of one size, each contender with its writer running.
fn concurrent<const B: usize>(c: &mut Criterion, n: usize) {
    let (entries, hits, absent) = keys(n);
    // The writer removes and re-inserts these: present or absent during a lookup, they
    // are never looked up, so every contender's hits and misses are known.
    // 64 of them, or n / 2 for the smallest table (still at most 75% full).
    let churn: Vec<Mac> = macs(64, 4)
        .into_iter()
        .filter(|k| !entries.iter().any(|(e, _)| e == k) && !absent.contains(k))
        .take(n / 2)
        .collect();
    let fill: Vec<(Mac, Handle)> = entries
        .iter()
        .copied()
        .chain(churn.iter().map(|k| (*k, Handle::new(0, 0))))
        .collect();
    let t = table::<B>(&fill);
    let papaya = papaya::HashMap::builder()
        .capacity(fill.len())
        .hasher(foldhash::fast::RandomState::default())
        .build();
    for &(k, h) in &fill {
        papaya.pin().insert(k, h);
    }
    let dash = dashmap::DashMap::with_capacity_and_hasher(
        fill.len(),
        foldhash::fast::RandomState::default(),
    );
    for &(k, h) in &fill {
        dash.insert(k, h);
    }
    let swap = arc_swap::ArcSwap::from_pointee(brown(&fill));
    let (mut lw, lr) = left_right::new_from_empty::<LrMap, LrOp>(LrMap(brown(&fill)));
    lw.publish();

    for (paced, suffix) in [(true, "with_writer"), (false, "with_busy_writer")] {
        for (kind, keys, expect) in [("hit", &hits, hits.len()), ("miss", &absent, 0)] {
            let mut g = c.benchmark_group(format!("lookup_{kind}_{suffix}"));
            g.throughput(Throughput::Elements(keys.len() as u64));
            let mut run = |name: &str,
                           get: &dyn Fn(&Mac) -> Option<Handle>,
                           change: &mut (dyn FnMut(u64) + Send)| {
                let t0 = std::time::Instant::now();
                let changes = with_writer(paced, change, || {
                    assert_eq!(run_batch(keys, get), expect, "{name} {kind} {n}");
                    g.bench_with_input(BenchmarkId::new(name, n), keys, |b, keys| {
                        b.iter(|| run_batch(keys, get));
                    });
                });
                // A benchmark filtered out returns at once: nothing to report.
                if t0.elapsed() > std::time::Duration::from_millis(100) {
                    eprintln!(
                        "writer: {changes} changes ({:.0}/s) during {name}'s {n}-entry {kind} \
                         run ({suffix})",
                        changes as f64 / t0.elapsed().as_secs_f64()
                    );
                }
            };
            let key = |i: u64| churn[i as usize % churn.len()];
            let gen = |i: u64| (i / churn.len() as u64) as u16;

            // coresident: the table's single writer.
            let mut w = t.writer().unwrap();
            run("coresident", &|k| t.get(k), &mut |i| {
                w.remove(&key(i));
                // Full cannot happen at 50% load; if it did, the key would stay out.
                let _ = w.insert(key(i), Handle::new(0, gen(i)));
            });
            drop(w);

            // papaya: lock-free, a guard per lookup.
            run("papaya", &|k| papaya.pin().get(k).copied(), &mut |i| {
                let m = papaya.pin();
                m.remove(&key(i));
                m.insert(key(i), Handle::new(0, gen(i)));
            });

            // dashmap: sharded reader-writer locks.
            run("dashmap", &|k| dash.get(k).map(|r| *r), &mut |i| {
                dash.remove(&key(i));
                dash.insert(key(i), Handle::new(0, gen(i)));
            });

            // arc-swap over hashbrown: readers load the current map, the writer
            // replaces it (one clone per change).
            run(
                "arcswap_hashbrown",
                &|k| swap.load().get(k).copied(),
                &mut |i| {
                    let mut next = Brown::clone(&swap.load());
                    next.remove(&key(i));
                    next.insert(key(i), Handle::new(0, gen(i)));
                    swap.store(Arc::new(next));
                },
            );

            // left-right: two copies, readers on one while the writer changes the
            // other. The read handle stays on the benchmark thread (it is not `Sync`).
            run(
                "left_right",
                &|k| lr.enter().and_then(|m| m.0.get(k).copied()),
                &mut |i| {
                    lw.append(LrOp::Remove(key(i)));
                    lw.append(LrOp::Insert(key(i), Handle::new(0, gen(i))));
                    lw.publish();
                },
            );
            g.finish();
        }
    }
}

fn lookup(c: &mut Criterion) {
    size::<8>(c, 16);
    size::<128>(c, 256);
    size::<2048>(c, 4096);
    dense::<8>(c, 29);
    dense::<64>(c, 231);
    dense::<1024>(c, 3687);
    concurrent::<8>(c, 16);
    concurrent::<128>(c, 256);
    concurrent::<2048>(c, 4096);
}

criterion_group!(benches, lookup);
criterion_main!(benches);
