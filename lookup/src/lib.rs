//! The residency table: which peers are co-resident, and through which channel.
//!
//! Every outgoing message is looked up here, so a lookup costs the same small, bounded
//! amount whether it hits (a co-resident peer) or misses (a remote one, the common
//! case): the key is hashed with a secret seed to two buckets, and nothing else is
//! read. No chains, no probing sequence, no allocation. Each bucket is a control word
//! (per-slot tags, an overflow filter, a version) in a dense array, and a 64-byte line
//! of keys and handles. A miss usually reads one control word: the tags rule out
//! every stored key without comparing it, and the filter, which says whether keys of
//! the missing key's class overflowed into their second bucket, usually rules out the
//! second bucket. A hit reads one control word and one line.
//!
//! ```text
//!  key --seeded hash--> (b1, b2, tag)     Table<K, BUCKETS>
//!                                         control words, 8 bytes each, dense
//!  bucket b1 ──────────────────────────>  │ c0 c1 c2 c3 │ ovf │ ver │ ...
//!  bucket b2 ──────────────────────────>  │ c0 c1 c2 c3 │ ovf │ ver │ ...
//!                                         slot lines, 64 bytes each
//!         (only where a tag matches) ───> │ k0 h0 │ k1 h1 │ k2 h2 │ k3 h3 │
//!
//!  c_i: slot i's control byte, 0 (free) or 0x80 | tag (7 bits of the hash)
//!  ovf: bit c set while keys of class c (tag & 7) whose first bucket this is live
//!       in their second bucket
//!  (two-word keys such as IPv6: 3 slots, the keys first and the handles after)
//!
//!  reader (any thread)                       writer (one control thread)
//!  m1 = ctrl[b1].load(Acquire)               fill a free slot (Relaxed stores)
//!  c_i == 0x80|tag? (one SWAR op on m1)      ctrl.store(ver+1 | c_i = 0x80|tag, Release)
//!   ── for each match, compare the key       relocation: publish in the new bucket,
//!      (Relaxed); hit? fence(Acquire),                   then clear the old one
//!      ctrl[b1] == m1 ? done : retry         remove: ctrl.store(ver+1 | c_i = 0, Release)
//!  ovf bit clear? absent (re-read m1 if a    ovf changes in the store that moves a key
//!                 key was compared)                      out of / back into b1
//!  m2 = ctrl[b2].load(Acquire), match as above
//!  fence(Acquire)
//!  ctrl[b1] == m1 && ctrl[b2] == m2 ? done : retry
//! ```
//!
//! The design is bucketized cuckoo hashing with full keys stored in the buckets, a
//! 7-bit tag per slot beside the version (as hashbrown keeps a control byte per slot,
//! compared for a whole group at once) and a per-bucket version in the style of a
//! seqlock, but without a locked state: the writer fills a slot while it is marked free
//! and publishes it with one store, so readers never wait for it ([`table`] has the
//! protocol and its argument). Readers are lock-free, the writer wait-free. A
//! [`DomainTable`] indexes Xen domain ids directly for a one-load fast path, and
//! [`Table::generation`] lets a caller cache lookups behind one load.
//!
//! The crate is `no_std`, allocation-free and has no `unsafe` code. Atomics come from
//! `coresident-sync`, so `RUSTFLAGS="--cfg loom"` runs the protocol under loom.
//!
//! # Examples
//!
//! ```
//! use coresident_lookup::{Handle, Seed, Table};
//!
//! // 1024 buckets of 4 slots: up to about 3900 MAC addresses (95% load).
//! let table = Box::new(Table::<[u8; 6], 1024>::new(Seed::from_bytes([42; 32])));
//! let mut writer = table.writer().unwrap();
//! writer.insert([2, 0, 0, 0, 0, 1], Handle::new(0, 1)).unwrap();
//! assert_eq!(table.get(&[2, 0, 0, 0, 0, 1]), Some(Handle::new(0, 1)));
//! assert_eq!(table.get(&[2, 0, 0, 0, 0, 2]), None);
//! ```
#![no_std]
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs, missing_debug_implementations)]
#![warn(clippy::std_instead_of_core, clippy::alloc_instead_of_core)]

mod bucket;
mod domain;
mod error;
mod hash;
mod key;
pub mod table;

pub use coresident_sync::spin_loop;
pub use domain::DomainTable;
pub use error::{ClaimError, InsertError};
pub use hash::Seed;
pub use key::{DomainId, Handle, Key};
pub use table::{Access, Table, Writer, MAX_SEARCH};
