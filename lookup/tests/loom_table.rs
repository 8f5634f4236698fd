//! The table's reader/writer protocol under loom: one reader concurrent with an insert,
//! an update, a relocation and a remove, on a 4-bucket table (16 slots).
//!
//! ```text
//! RUSTFLAGS="--cfg loom" cargo test -p coresident-lookup --release --test loom_table
//! ```
//!
//! Budget: exhaustive. No `LOOM_MAX_PREEMPTIONS` bound is needed: the whole file
//! explores every interleaving in about 3.5 s on the 2-core development machine (plus
//! about 90 s to build the loom test binary from scratch); `LOOM_MAX_PREEMPTIONS=2`
//! takes 0.2 s. Each test was checked to fail when the protocol step it guards is
//! removed: publish-before-clear in relocation, the re-read of the first bucket's
//! version on a miss, the Release fence before reusing a slot (with two keys of one
//! tag), and changing a first bucket's overflow count in the same store that moves a
//! key out of it or back into it (relocation in either direction); the generation
//! test fails with a Relaxed store of the generation, or with the store made before
//! a change's bucket stores.
#![cfg(loom)]

use coresident_lookup::{Handle, Seed, Table};
use loom::sync::atomic::{AtomicBool, Ordering};
use loom::sync::Arc;
use loom::thread;

/// 4 buckets: every key has two of them; small enough to fill and force relocations.
type Small = Table<u64, 4>;

/// Slots per bucket.
const S: usize = Small::SLOTS / 4;

fn table() -> Arc<Small> {
    Arc::new(Table::new(Seed::new([11, 22, 33, 44])))
}

/// The first keys, from 1000 up, whose candidate buckets are exactly `(b1, b2)`.
fn keys_in(t: &Small, b1: usize, b2: usize, n: usize) -> Vec<u64> {
    (1000u64..)
        .filter(|k| t.buckets_of(k) == (b1, b2))
        .take(n)
        .collect()
}

fn model(f: impl Fn() + Sync + Send + 'static) {
    // `Builder::new` reads LOOM_MAX_PREEMPTIONS, LOOM_MAX_BRANCHES etc. from the env.
    loom::model::Builder::new().check(f);
}

/// Insert of a new key and an update of an old one: the reader sees `None` or the new
/// handle, the old or the new handle; never anything else.
#[test]
fn get_races_insert_and_update() {
    model(|| {
        let t = table();
        let (a, b) = (1u64, 2u64);
        t.writer().unwrap().insert(a, Handle::new(1, 0)).unwrap();
        let reader = {
            let t = t.clone();
            thread::spawn(move || {
                let got_b = t.get(&b);
                assert!(
                    got_b.is_none() || got_b == Some(Handle::new(2, 0)),
                    "{got_b:?}"
                );
                let got_a = t.get(&a);
                assert!(
                    got_a == Some(Handle::new(1, 0)) || got_a == Some(Handle::new(1, 1)),
                    "{got_a:?}"
                );
            })
        };
        let mut w = t.writer().unwrap();
        w.insert(b, Handle::new(2, 0)).unwrap();
        w.insert(a, Handle::new(1, 1)).unwrap();
        reader.join().unwrap();
    });
}

/// An insert into two full buckets relocates key `x` from bucket `p` to bucket `r`.
/// `x` is present throughout, so the reader must find it, with its handle.
#[test]
fn get_races_relocation() {
    model(|| {
        let t = table();
        let (p, q, r) = (0, 1, 2);
        let x = keys_in(&t, p, r, 1)[0];
        // p and q fill up with keys in their first buckets, so p's overflow count is
        // 0 until x leaves: a reader relies on the count going up in that same store.
        let pq = keys_in(&t, p, q, S);
        let qp = keys_in(&t, q, p, S);
        let (fill, y) = (pq[..S - 1].iter().chain(&qp), pq[S - 1]);
        {
            let mut w = t.writer().unwrap();
            // x first, so it takes slot 0 of p; then p and q fill up.
            w.insert(x, Handle::new(9, 9)).unwrap();
            for (i, k) in fill.enumerate() {
                w.insert(*k, Handle::new(i as u16, 0)).unwrap();
            }
            assert_eq!(t.len(), 2 * S);
            let mut lines = Vec::new();
            assert_eq!(t.get_traced(&x, |a| lines.push(a)), Some(Handle::new(9, 9)));
            assert_eq!(t.get_traced(&y, |a| lines.push(a)), None);
            assert_eq!(lines.len(), 2, "p's overflow count should be 0");
        }
        let reader = {
            let t = t.clone();
            thread::spawn(move || {
                // Twice: the second lookup may overlap a later step of the move.
                assert_eq!(t.get(&x), Some(Handle::new(9, 9)));
                assert_eq!(t.get(&x), Some(Handle::new(9, 9)));
            })
        };
        t.writer().unwrap().insert(y, Handle::new(7, 7)).unwrap();
        reader.join().unwrap();
        // The insert had to move x out of p.
        let mut lines = Vec::new();
        assert_eq!(t.get_traced(&x, |a| lines.push(a)), Some(Handle::new(9, 9)));
        assert_eq!(lines.len(), 2, "x should now be in its second bucket");
    });
}

/// The other direction: `x` sits in its second bucket `p` and moves to its first,
/// `r`. A reader that misses `x` in `r` and then finds it cleared from `p` must notice
/// that `r` changed in between (the re-read of the first bucket's version).
#[test]
fn get_races_relocation_to_first_bucket() {
    model(|| {
        let t = table();
        let (p, q, r, s) = (0, 1, 2, 3);
        let x = keys_in(&t, r, p, 1)[0];
        let rs = keys_in(&t, r, s, S);
        let pq = keys_in(&t, p, q, 2 * S);
        let (fill, y) = (&pq[..2 * S - 1], pq[2 * S - 1]);
        {
            let mut w = t.writer().unwrap();
            for k in &rs {
                w.insert(*k, Handle::new(0, 0)).unwrap();
            }
            // r is full, so x lands in p (slot 0); then free a slot of r.
            w.insert(x, Handle::new(9, 9)).unwrap();
            w.remove(&rs[0]);
            for k in fill {
                w.insert(*k, Handle::new(1, 1)).unwrap();
            }
        }
        let mut lines = Vec::new();
        t.get_traced(&x, |a| lines.push(a));
        assert_eq!(lines.len(), 2, "x should start in its second bucket");
        let reader = {
            let t = t.clone();
            thread::spawn(move || {
                // Twice: the second lookup may overlap a later step of the move.
                assert_eq!(t.get(&x), Some(Handle::new(9, 9)));
                assert_eq!(t.get(&x), Some(Handle::new(9, 9)));
            })
        };
        t.writer().unwrap().insert(y, Handle::new(7, 7)).unwrap();
        reader.join().unwrap();
        let mut lines = Vec::new();
        assert_eq!(t.get_traced(&x, |a| lines.push(a)), Some(Handle::new(9, 9)));
        assert_eq!(lines.len(), 1, "x should now be in its first bucket");
    });
}

/// A remove: concurrently the reader sees the handle or `None`; once it has seen the
/// writer's "removed" flag (so its lookup happens after `remove` returned), `None`.
#[test]
fn get_races_remove() {
    model(|| {
        let t = table();
        let done = Arc::new(AtomicBool::new(false));
        t.writer().unwrap().insert(5, Handle::new(5, 5)).unwrap();
        let reader = {
            let (t, done) = (t.clone(), done.clone());
            thread::spawn(move || {
                let got = t.get(&5);
                assert!(got.is_none() || got == Some(Handle::new(5, 5)));
                // Acquire: pairs with the Release below; the lookup that follows
                // happens after `remove` returned.
                if done.load(Ordering::Acquire) {
                    assert_eq!(t.get(&5), None);
                }
            })
        };
        assert_eq!(t.writer().unwrap().remove(&5), Some(Handle::new(5, 5)));
        // Release: pairs with the Acquire in the reader.
        done.store(true, Ordering::Release);
        reader.join().unwrap();
    });
}

/// A slot reused by another key while a reader scans it: the reader never returns the
/// new key's handle for the old key (a torn entry), nor the old one's for the new. The
/// two keys share their tag, so the stale control byte sends the reader to the key.
#[test]
fn get_races_slot_reuse() {
    model(|| {
        let t = table();
        let old = keys_in(&t, 0, 1, 1)[0];
        let new = (old + 1..)
            .find(|k| t.buckets_of(k) == (0, 1) && t.tag_of(k) == t.tag_of(&old))
            .unwrap();
        t.writer().unwrap().insert(old, Handle::new(1, 1)).unwrap();
        let reader = {
            let t = t.clone();
            thread::spawn(move || {
                let o = t.get(&old);
                assert!(o.is_none() || o == Some(Handle::new(1, 1)), "old: {o:?}");
                let n = t.get(&new);
                assert!(n.is_none() || n == Some(Handle::new(2, 2)), "new: {n:?}");
            })
        };
        let mut w = t.writer().unwrap();
        w.remove(&old);
        // Lands in the slot `old` had (the first free one of bucket 0).
        w.insert(new, Handle::new(2, 2)).unwrap();
        drop(w);
        reader.join().unwrap();
    });
}

/// The generation contract (SYNC: generation): a reader that loads generation `n`
/// and then looks up sees at least the first `n` changes; a load of the generation
/// after the writer's last change returned (seen through a flag) counts it, so a
/// result cached under an older generation is never reused.
#[test]
fn generation_orders_changes() {
    model(|| {
        let t = table();
        let done = Arc::new(AtomicBool::new(false));
        let (h1, h2) = (Handle::new(1, 1), Handle::new(2, 2));
        let reader = {
            let (t, done) = (t.clone(), done.clone());
            thread::spawn(move || {
                let g1 = t.generation();
                let r = t.get(&5);
                // The contents after change n: 0 none, 1 h1, 2 h2, 3 none.
                let after = [None, Some(h1), Some(h2), None];
                let possible = after.get(g1 as usize..).unwrap_or(&[]);
                assert!(possible.contains(&r), "generation {g1}, got {r:?}");
                // Acquire: pairs with the Release below.
                if done.load(Ordering::Acquire) {
                    assert_eq!(t.generation(), 3, "a finished change is counted");
                    if t.generation() == g1 {
                        assert_eq!(r, None, "a stale cached result reused");
                    }
                }
            })
        };
        let mut w = t.writer().unwrap();
        w.insert(5, h1).unwrap();
        w.insert(5, h2).unwrap();
        assert_eq!(w.remove(&5), Some(h2));
        drop(w);
        // Release: pairs with the Acquire in the reader.
        done.store(true, Ordering::Release);
        reader.join().unwrap();
        assert_eq!(t.generation(), 3);
    });
}
