//! The seeded hash that places keys into buckets.
//!
//! A keyed multiply-fold in the style of foldhash and wyhash: two rounds of
//! `fold(a, b) = lo(a * b) ^ hi(a * b)` over the key words xored with 256 bits of seed.
//! It is not a cryptographic PRF (SipHash would be, at three to four times the cost on
//! every outgoing message); what protects the table is that the seed is secret and only
//! the host sees bucket positions. A guest that picks its own MAC addresses does not
//! know the seed, so it cannot aim keys at one bucket pair; if it still fills one,
//! insertion fails with [`InsertError::Full`](crate::InsertError::Full) for that key
//! rather than degrading lookups, which stay at two buckets whatever the keys.

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
    /// Four mixed 64-bit secrets, one per xor in [`hash`]; words 1 and 3 are odd.
    words: [u64; 4],
}

impl Seed {
    /// A seed from four 64-bit words.
    ///
    /// The words are mixed (a bijective `splitmix64` step each), and the two that act
    /// as multipliers are made odd, so low-entropy seeds such as `[0; 4]` still give a
    /// well-spread hash; distinct seeds stay distinct.
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

/// Hashes a key's words under `seed`.
#[inline(always)]
pub(crate) const fn hash(seed: &Seed, key: &[u64; 2]) -> u64 {
    let [s0, s1, s2, s3] = seed.words;
    let a = fold(key[0] ^ s0, key[1] ^ s1);
    fold(a ^ s2, s3)
}

/// The 7-bit tag of a key whose hash is `h`, stored beside it in one-word buckets: the
/// top seven bits, which [`buckets`] never uses (it reads bits `0..24` and `32..56`), so
/// keys that share a bucket still differ in their tags with probability 127/128.
#[inline(always)]
pub(crate) const fn tag(h: u64) -> u8 {
    // The shift leaves seven bits: the cast loses nothing.
    (h >> 57) as u8
}

/// The two candidate buckets of a key whose hash is `h`, in a table of `buckets`
/// buckets (a power of two). The second differs from the first whenever `buckets > 1`.
#[inline(always)]
pub(crate) const fn buckets(h: u64, buckets: usize) -> (usize, usize) {
    let mask = buckets.wrapping_sub(1);
    // Truncation is fine: only the bits under `mask` are used.
    let b1 = (h as usize) & mask;
    let mut b2 = ((h >> 32) as usize) & mask;
    if b2 == b1 {
        b2 = (b1 ^ 1) & mask;
    }
    (b1, b2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_changes_buckets() {
        let a = Seed::new([1, 2, 3, 4]);
        let b = Seed::new([5, 6, 7, 8]);
        let differ = (0u64..64)
            .filter(|k| buckets(hash(&a, &[*k, 0]), 1024) != buckets(hash(&b, &[*k, 0]), 1024))
            .count();
        assert!(differ > 56, "only {differ} of 64 keys moved");
    }

    #[test]
    fn two_distinct_buckets() {
        let s = Seed::new([9; 4]);
        for k in 0u64..1000 {
            let (b1, b2) = buckets(hash(&s, &[k, 0]), 2);
            assert_ne!(b1, b2);
            assert!(b1 < 2 && b2 < 2);
        }
        assert_eq!(buckets(12345, 1), (0, 0));
    }
}
