//! Keys and values of the residency table.
//!
//! A key is stored in the table as one or two `u64` words ([`Key::WORDS`]), compared
//! word by word and hashed from those words, so the writer can rehash a stored key
//! during relocation without knowing its type.

use core::fmt;
use core::net::{Ipv4Addr, Ipv6Addr};

/// A key of the residency table: anything with an injective encoding into at most two
/// `u64` words.
///
/// Implement it for your own peer ids. The encoding must be injective (two keys encode
/// to equal words exactly when they are equal) and words at index `WORDS` and above
/// must be zero. A wrong implementation makes lookups return wrong answers; it cannot
/// cause undefined behaviour or a panic.
///
/// # Examples
///
/// ```
/// use coresident_lookup::Key;
///
/// /// A container id made of a host number and a local number.
/// #[derive(Clone, Copy, PartialEq, Eq)]
/// struct ContainerId { host: u32, local: u32 }
///
/// impl Key for ContainerId {
///     const WORDS: usize = 1;
///     fn encode(&self) -> [u64; 2] {
///         [(u64::from(self.host) << 32) | u64::from(self.local), 0]
///     }
/// }
/// assert_eq!(ContainerId { host: 1, local: 2 }.encode(), [0x1_0000_0002, 0]);
/// ```
pub trait Key: Copy + Eq {
    /// How many words of [`encode`](Key::encode) are used: 1 or 2 (checked at compile
    /// time when a [`Table`](crate::Table) is built). One-word keys get 4 tagged slots
    /// per bucket, two-word keys 3.
    const WORDS: usize;

    /// The key's words; words at index [`WORDS`](Key::WORDS) and above must be 0.
    fn encode(&self) -> [u64; 2];
}

/// A MAC address, as the six bytes on the wire.
impl Key for [u8; 6] {
    const WORDS: usize = 1;
    #[inline]
    fn encode(&self) -> [u64; 2] {
        let [a, b, c, d, e, f] = *self;
        // Bytes 0..4 and 4..6 as two loads, the halves the hash multiplies (`hash.rs`):
        // the same word as `from_le_bytes([a, b, c, d, e, f, 0, 0])`.
        let lo = u32::from_le_bytes([a, b, c, d]);
        let hi = u16::from_le_bytes([e, f]);
        [u64::from(lo) | u64::from(hi) << 32, 0]
    }
}

impl Key for Ipv4Addr {
    const WORDS: usize = 1;
    #[inline]
    fn encode(&self) -> [u64; 2] {
        [u64::from(self.to_bits()), 0]
    }
}

impl Key for Ipv6Addr {
    const WORDS: usize = 2;
    #[inline]
    fn encode(&self) -> [u64; 2] {
        let bits = self.to_bits();
        // Truncations are the point: low and high halves of the 128-bit address.
        [bits as u64, (bits >> 64) as u64]
    }
}

impl Key for u64 {
    const WORDS: usize = 1;
    #[inline]
    fn encode(&self) -> [u64; 2] {
        [*self, 0]
    }
}

/// A Xen domain id.
///
/// Ids below [`DomainId::FIRST_RESERVED`] name guests and may index a
/// [`DomainTable`](crate::DomainTable) directly; any id can key a hashed
/// [`Table`](crate::Table).
///
/// # Examples
///
/// ```
/// use coresident_lookup::DomainId;
///
/// assert!(DomainId(7).is_guest());
/// assert!(!DomainId(DomainId::FIRST_RESERVED).is_guest());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DomainId(pub u16);

impl DomainId {
    /// `DOMID_FIRST_RESERVED` of Xen's `public/xen.h`: ids from here on are special
    /// (`DOMID_SELF`, `DOMID_IO`, ...) and never name a guest.
    pub const FIRST_RESERVED: u16 = 0x7FF0;

    /// Whether this id can name a guest (it lies below [`Self::FIRST_RESERVED`]).
    #[inline]
    pub const fn is_guest(self) -> bool {
        self.0 < Self::FIRST_RESERVED
    }
}

impl Key for DomainId {
    const WORDS: usize = 1;
    #[inline]
    fn encode(&self) -> [u64; 2] {
        [u64::from(self.0), 0]
    }
}

/// What the table maps a peer to: a channel slot and that slot's generation.
///
/// The generation tells a reused slot from its previous occupant, so a data path that
/// read a handle just before the peer left can detect that the channel it names is
/// gone. It packs into 32 bits, which is what a bucket stores.
///
/// # Examples
///
/// ```
/// use coresident_lookup::Handle;
///
/// let h = Handle::new(3, 9);
/// assert_eq!((h.slot(), h.generation()), (3, 9));
/// assert_eq!(Handle::from_bits(h.to_bits()), h);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Handle {
    /// Index of the channel slot.
    slot: u16,
    /// Generation of the slot, bumped by its owner on every reuse.
    generation: u16,
}

impl Handle {
    /// A handle for channel slot `slot` at generation `generation`.
    #[inline]
    pub const fn new(slot: u16, generation: u16) -> Self {
        Self { slot, generation }
    }

    /// The channel slot.
    #[inline]
    pub const fn slot(self) -> u16 {
        self.slot
    }

    /// The slot's generation.
    #[inline]
    pub const fn generation(self) -> u16 {
        self.generation
    }

    /// The packed form: generation in the high 16 bits, slot in the low 16.
    #[inline]
    pub const fn to_bits(self) -> u32 {
        ((self.generation as u32) << 16) | self.slot as u32
    }

    /// Unpacks [`to_bits`](Handle::to_bits); every `u32` is a valid handle.
    #[inline]
    pub const fn from_bits(bits: u32) -> Self {
        // Truncations are the point: the two 16-bit halves.
        Self {
            slot: bits as u16,
            generation: (bits >> 16) as u16,
        }
    }
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Handle({}@{})", self.slot, self.generation)
    }
}
