//! Wrap-safe arithmetic on free-running `u32` indices.
//!
//! Indices count bytes since the ring was initialised and wrap at 2^32. Every
//! comparison is a wrapping distance, never `<` on raw values, so wrap-around is just
//! another position (tests start rings near `u32::MAX` to prove it).

/// Bytes from `from` forward to `to`.
#[inline(always)]
pub(crate) const fn distance(from: u32, to: u32) -> u32 {
    to.wrapping_sub(from)
}

/// Whether an index moving from `old` to `new` crossed `event`, i.e. `event` lies in
/// `(old, new]`: the notification rule of Xen's `io/ring.h`
/// (`RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`: `new - event < new - old`) and of virtio's
/// `vring_need_event`, on wrapping counters.
#[inline(always)]
pub(crate) const fn crossed(event: u32, old: u32, new: u32) -> bool {
    new.wrapping_sub(event) < new.wrapping_sub(old)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crossed_is_half_open_and_wrap_safe() {
        for base in [0u32, 1000, u32::MAX - 5, u32::MAX] {
            let old = base;
            let new = base.wrapping_add(16);
            assert!(!crossed(old, old, new), "old itself is excluded");
            assert!(crossed(old.wrapping_add(1), old, new));
            assert!(crossed(new, old, new), "new itself is included");
            assert!(!crossed(new.wrapping_add(1), old, new));
            assert!(!crossed(old.wrapping_sub(1), old, new));
            assert!(!crossed(old, old, old), "no movement never notifies");
        }
    }

    #[test]
    fn distance_wraps() {
        assert_eq!(distance(u32::MAX - 3, 4), 8);
        assert_eq!(distance(7, 7), 0);
    }
}
