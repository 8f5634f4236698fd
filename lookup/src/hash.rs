//! The seeded hash that places keys into buckets.
//!
//! A keyed multiply-fold in the style of foldhash and wyhash: two chained rounds of
//! `fold(a, b) = lo(a * b) ^ hi(a * b)` (the full 128-bit product), every operand xored
//! with a secret: `fold(fold(a ^ s0, b ^ s1) ^ s2, s3)`, where `a` and `b` are the two
//! words of a two-word key or the two 32-bit halves of a one-word key (see [`hash`]).
//! The bucket indices come from bits `0..24` and `32..56` of the hash, the tag from
//! bits `57..64`.
//!
//! # Why this is enough against chosen keys
//!
//! The threat is a guest that picks its MAC addresses (or a peer its ids) so that
//! many of them share a bucket pair: once 8 keys share one pair (two buckets of 4
//! slots), a further one cannot be inserted. The defences:
//!
//! - Every folded multiply has foldhash's form, `fold(input ^ secret, input ^
//!   secret)`, with a 256-bit seed drawn per table: there is no list of keys that
//!   collides for every seed (the weak point of a folded multiply, an operand that is
//!   0, needs `k0 == s0` or a first-round result equal to `s2`). Like foldhash, and
//!   unlike SipHash-1-3, it is not a PRF: an attacker who could watch bucket positions
//!   could learn the seed. Only the host sees them; a guest has no view of a lookup
//!   the host runs, beyond a nanosecond or two of its latency behind a network path.
//! - What a successful attack buys is bounded: lookups read two buckets whatever the
//!   keys (no chains to lengthen, no probe sequences), so the only effect is
//!   [`InsertError::Full`](crate::InsertError::Full) for keys of a filled pair, after a
//!   relocation search of up to [`MAX_SEARCH`](crate::MAX_SEARCH) buckets, and those
//!   peers take the network path. A HashDoS on lookups is not possible.
//! - Structured key sets that a guest gets without knowing the seed (sequential MACs
//!   under one OUI, keys two bits apart, a block of IPv4 or IPv6 addresses) spread as
//!   random keys do: `tests/model.rs` (`structured_keys_spread`) checks the bucket
//!   loads (chi-square) and pairs for four seeds.
//!
//! Measured alternatives (callgrind instructions and a loop of 1024 independent hashes
//! of 6-byte MACs on the development machine, loaded):
//!
//! | hash of a MAC | instructions | ns |
//! |---|---|---|
//! | one fold, `fold(k ^ s0, s1)` (foldhash::fast on a `u64`) | 14 | 1.6 |
//! | two chained folds (this one) | 17 | 1.7 |
//! | `foldhash::fast` on `[u8; 6]` (hashbrown's default) | 16 | 1.8 |
//! | SipHash-1-3 on the MAC as a `u64` | 82 | 9.3 |
//! | SipHash-1-3 through `Hash for [u8; 6]` (std's `HashMap`) | 192 | 25 |
//!
//! One fold would save 3 instructions a lookup, and it fails the structured-keys test:
//! a multiply keeps the additive structure of its input in its high half, so a block of
//! 4096 IPv4 addresses put 30 keys into one first bucket of 1024 (random keys: about
//! 12) and gave a chi-square of 3151 where uniform loads give 1023 +- 45; sequential
//! MACs and keys two bits apart were off by 8 to 13 deviations. The second round
//! removes that. SipHash-1-3 would make the hash a PRF at the price of two to three
//! whole lookups (3 to 5 ns) on every outgoing message, to defend a table whose worst
//! case is already bounded.

/// The 256-bit secret that keys the table's hash.
///
/// Draw it from a real entropy source (`getrandom`, `RDRAND`, the hypervisor) when the
/// table is built, once per table.
///
/// # Examples
///
/// ```
/// use coresident_lookup::Seed;
///
/// let seed = Seed::from_bytes([7; 32]);
/// assert_eq!(seed, Seed::new([0x0707_0707_0707_0707; 4]));
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Seed {
    /// Four mixed 64-bit secrets, one per xor in [`hash`]; words 1 and 3 are odd, words
    /// 0 and 1 have bit 63 set.
    words: [u64; 4],
}

impl Seed {
    /// A seed from four 64-bit words.
    ///
    /// The words are mixed (a bijective `splitmix64` step each), the two that act as
    /// multipliers are made odd and the two that meet a key in the first multiply get
    /// their top bit set, so low-entropy seeds such as `[0; 4]` still give a
    /// well-spread hash and no operand of a one-word key's first multiply is 0.
    pub const fn new(words: [u64; 4]) -> Self {
        let mut mixed = [0u64; 4];
        let mut i = 0;
        while i < 4 {
            mixed[i] =
                splitmix(words[i].wrapping_add((i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)));
            i += 1;
        }
        mixed[1] |= 1;
        mixed[3] |= 1;
        // One-word keys split into 32-bit halves never cancel a word with its top bit set.
        mixed[0] |= 1 << 63;
        mixed[1] |= 1 << 63;
        Self { words: mixed }
    }

    /// A seed from 32 bytes, read as four little-endian words.
    pub const fn from_bytes(b: [u8; 32]) -> Self {
        let mut words = [0u64; 4];
        let mut i = 0;
        while i < 32 {
            words[i / 8] |= (b[i] as u64) << (8 * (i % 8));
            i += 1;
        }
        Self::new(words)
    }
}

impl core::fmt::Debug for Seed {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Never print the secret.
        f.write_str("Seed(..)")
    }
}

/// The finaliser of `splitmix64` (Steele, Lea and Flood, 2014): a bijection on `u64`.
const fn splitmix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The high and low halves of the full 128-bit product, xored.
#[inline(always)]
const fn fold(a: u64, b: u64) -> u64 {
    let p = (a as u128) * (b as u128);
    // Truncations are the point: low and high halves of the product.
    (p as u64) ^ ((p >> 64) as u64)
}

/// Hashes a key's words under `seed`: `fold(fold(a ^ s0, b ^ s1) ^ s2, s3)`, where
/// `(a, b)` are the two words of a two-word key and the low and high halves of a
/// one-word key (`key_words` says which).
///
/// Splitting a one-word key makes both operands of the first multiply key-dependent,
/// as foldhash does with the two overlapping halves of a short byte string, and lets
/// a reader feed the two loads of a 6-byte MAC (4 bytes and 2) to the multiply without
/// first assembling the word. `s0` and `s1` have their top bit set ([`Seed::new`]), so
/// neither operand is 0 for any one-word key.
#[inline(always)]
pub(crate) const fn hash(seed: &Seed, key: &[u64; 2], key_words: usize) -> u64 {
    let [s0, s1, s2, s3] = seed.words;
    let (a, b) = if key_words == 1 {
        // Truncation is the point: the low half.
        (key[0] as u32 as u64, key[0] >> 32)
    } else {
        (key[0], key[1])
    };
    fold(fold(a ^ s0, b ^ s1) ^ s2, s3)
}

/// The 7-bit tag of a key whose hash is `h`, stored beside it in one-word buckets: the
/// top seven bits, which [`buckets`] never uses (it reads bits `0..24` and `32..56`), so
/// keys that share a bucket still differ in their tags with probability 127/128.
#[inline(always)]
pub(crate) const fn tag(h: u64) -> u8 {
    // The shift leaves seven bits: the cast loses nothing.
    (h >> 57) as u8
}

/// The first candidate bucket of a key whose hash is `h` (see [`buckets`]).
#[inline(always)]
pub(crate) const fn first(h: u64, buckets: usize) -> usize {
    // Truncation is fine: only the bits under the mask are used.
    (h as usize) & buckets.wrapping_sub(1)
}

/// The second candidate bucket of a key whose hash is `h` (see [`buckets`]).
#[inline(always)]
pub(crate) const fn second(h: u64, buckets: usize) -> usize {
    let mask = buckets.wrapping_sub(1);
    let b1 = first(h, buckets);
    // Truncation is fine: only the bits under `mask` are used.
    let b2 = ((h >> 32) as usize) & mask;
    if b2 == b1 {
        (b1 ^ 1) & mask
    } else {
        b2
    }
}

/// The two candidate buckets of a key whose hash is `h`, in a table of `buckets`
/// buckets (a power of two). The second differs from the first whenever `buckets > 1`.
#[inline(always)]
pub(crate) const fn buckets(h: u64, buckets: usize) -> (usize, usize) {
    (first(h, buckets), second(h, buckets))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_changes_buckets() {
        let a = Seed::new([1, 2, 3, 4]);
        let b = Seed::new([5, 6, 7, 8]);
        let differ = (0u64..64)
            .filter(|k| {
                buckets(hash(&a, &[*k, 0], 1), 1024) != buckets(hash(&b, &[*k, 0], 1), 1024)
            })
            .count();
        assert!(differ > 56, "only {differ} of 64 keys moved");
    }

    #[test]
    fn two_distinct_buckets() {
        let s = Seed::new([9; 4]);
        for k in 0u64..1000 {
            let (b1, b2) = buckets(hash(&s, &[k, 0], 1), 2);
            assert_ne!(b1, b2);
            assert!(b1 < 2 && b2 < 2);
        }
        assert_eq!(buckets(12345, 1), (0, 0));
    }
}
