//! Event channels (`xen/event_channel.h`, 2-level ABI): allocate an unbound
//! port, bind to a peer's, send, close; the pending and mask bits in
//! shared_info ([`SharedInfo`]); and Xen's system time ([`XenClock`]).
//!
//! Upcalls are the kernel's business: this module polls. Xen sets a port's
//! pending bit whether or not it is masked, and `SCHEDOP_poll` wakes on it
//! either way, so a kernel that never enables upcalls can still wait.
//!
//! # Examples
//!
//! ```
//! # use core::cell::Cell;
//! # use coresident_xen::kernel::Hypercall;
//! # struct Fake { last: Cell<(u32, [u64; 5])>, rc: i64 }
//! # // SAFETY: it emulates the calls of this example: it reads and maps nothing.
//! # unsafe impl Hypercall for Fake {
//! #     unsafe fn hypercall(&self, op: u32, args: [u64; 5]) -> i64 { self.last.set((op, args)); self.rc }
//! # }
//! # let fake = |rc| Fake { last: Cell::new((0, [0; 5])), rc };
//! use coresident_xen::kernel::event_channel;
//!
//! let xen = fake(0);
//! event_channel::send(&xen, 5)?;
//! let (op, args) = xen.last.get();
//! assert_eq!((op, args[0]), (32, 4)); // __HYPERVISOR_event_channel_op, EVTCHNOP_send
//! # Ok::<(), coresident_xen::kernel::KernelError>(())
//! ```

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use core::time::Duration;

use xen_sys::{
    evtchn_alloc_unbound, evtchn_bind_interdomain, evtchn_close, evtchn_send, evtchn_status,
};

use super::hypercall::{Hypercall, DOMID_SELF};
use super::KernelError;
use crate::types::{DomId, EvtchnPort};

// The structs xen-sys generated from event_channel.h, checked against the
// header's layout (IN domid_t dom, remote_dom; OUT port: 8 bytes, etc.).
const _: () = assert!(size_of::<evtchn_alloc_unbound>() == 8);
const _: () = assert!(core::mem::offset_of!(evtchn_alloc_unbound, port) == 4);
const _: () = assert!(size_of::<evtchn_bind_interdomain>() == 12);
const _: () = assert!(core::mem::offset_of!(evtchn_bind_interdomain, remote_port) == 4);
const _: () = assert!(core::mem::offset_of!(evtchn_bind_interdomain, local_port) == 8);
const _: () = assert!(size_of::<evtchn_send>() == 4 && size_of::<evtchn_close>() == 4);
const _: () = assert!(size_of::<evtchn_status>() == 24);
const _: () = assert!(core::mem::offset_of!(evtchn_status, status) == 8);

/// Ports of the 2-level ABI on x86_64: 64 words of 64 bits.
pub(crate) const MAX_PORTS: u32 = 64 * 64;

/// Offset of `evtchn_pending` in `struct shared_info` (x86_64: after 32
/// `vcpu_info` of 64 bytes).
pub(crate) const PENDING_OFFSET: usize =
    core::mem::offset_of!(xen_sys::shared_info, evtchn_pending);
/// Offset of `evtchn_mask` in `struct shared_info`.
pub(crate) const MASK_OFFSET: usize = core::mem::offset_of!(xen_sys::shared_info, evtchn_mask);
/// Offset of vCPU 0's `struct vcpu_time_info` in `struct shared_info`.
pub(crate) const TIME_OFFSET: usize = core::mem::offset_of!(xen_sys::vcpu_info, time);
const _: () = assert!(PENDING_OFFSET == 2048 && MASK_OFFSET == 2048 + 512 && TIME_OFFSET == 32);

fn op<T>(
    h: &(impl Hypercall + ?Sized),
    cmd: u32,
    arg: &mut T,
    name: &'static str,
) -> Result<(), KernelError> {
    // SAFETY: every EVTCHNOP_* used here takes one struct, read and written
    // by Xen during the call; `arg` is a live exclusive borrow of it.
    let rc = unsafe {
        h.hypercall(
            xen_sys::__HYPERVISOR_event_channel_op,
            [u64::from(cmd), core::ptr::from_mut(arg) as u64, 0, 0, 0],
        )
    };
    if rc < 0 {
        Err(KernelError::Hypercall { op: name, rc })
    } else {
        Ok(())
    }
}

/// Allocates a port that domain `remote` may bind to (`EVTCHNOP_alloc_unbound`).
///
/// # Errors
///
/// Xen's refusal.
///
/// # Examples
///
/// ```
/// use coresident_xen::kernel::{event_channel, Hypercall, KernelError};
///
/// /// A port dom0 may bind: its number goes into our offer.
/// fn for_dom0(h: &impl Hypercall) -> Result<u32, KernelError> {
///     event_channel::alloc_unbound(h, 0)
/// }
/// ```
pub fn alloc_unbound(
    h: &(impl Hypercall + ?Sized),
    remote: DomId,
) -> Result<EvtchnPort, KernelError> {
    let mut a = evtchn_alloc_unbound {
        dom: DOMID_SELF,
        remote_dom: remote,
        port: 0,
    };
    op(
        h,
        xen_sys::EVTCHNOP_alloc_unbound,
        &mut a,
        "evtchn(alloc_unbound)",
    )?;
    Ok(a.port)
}

/// Binds a local port to `remote`'s unbound port `remote_port`
/// (`EVTCHNOP_bind_interdomain`); returns the local port.
///
/// # Errors
///
/// Xen's refusal (no such port, not offered to us).
///
/// # Examples
///
/// ```
/// use coresident_xen::kernel::{event_channel, Hypercall, KernelError};
///
/// /// Binds dom0's unbound port `remote_port` (from its offer).
/// fn bind(h: &impl Hypercall, remote_port: u32) -> Result<u32, KernelError> {
///     event_channel::bind_interdomain(h, 0, remote_port)
/// }
/// ```
pub fn bind_interdomain(
    h: &(impl Hypercall + ?Sized),
    remote: DomId,
    remote_port: EvtchnPort,
) -> Result<EvtchnPort, KernelError> {
    let mut b = evtchn_bind_interdomain {
        remote_dom: remote,
        remote_port,
        local_port: 0,
    };
    op(
        h,
        xen_sys::EVTCHNOP_bind_interdomain,
        &mut b,
        "evtchn(bind_interdomain)",
    )?;
    Ok(b.local_port)
}

/// Signals the other end of `port` (`EVTCHNOP_send`).
///
/// # Errors
///
/// Xen's refusal (a closed port).
///
/// # Examples
///
/// ```
/// use coresident_xen::kernel::{event_channel, Hypercall, KernelError};
///
/// fn ring(h: &impl Hypercall, port: u32) -> Result<(), KernelError> {
///     event_channel::send(h, port) // EVTCHNOP_send
/// }
/// ```
pub fn send(h: &(impl Hypercall + ?Sized), port: EvtchnPort) -> Result<(), KernelError> {
    let mut s = evtchn_send { port };
    op(h, xen_sys::EVTCHNOP_send, &mut s, "evtchn(send)")
}

/// Closes `port` (`EVTCHNOP_close`); an interdomain peer's end becomes
/// unbound.
///
/// # Errors
///
/// Xen's refusal.
///
/// # Examples
///
/// ```
/// use coresident_xen::kernel::{event_channel, Hypercall, KernelError};
///
/// fn give_back(h: &impl Hypercall, port: u32) -> Result<(), KernelError> {
///     event_channel::close(h, port) // EVTCHNOP_close
/// }
/// ```
pub fn close(h: &(impl Hypercall + ?Sized), port: EvtchnPort) -> Result<(), KernelError> {
    let mut c = evtchn_close { port };
    op(h, xen_sys::EVTCHNOP_close, &mut c, "evtchn(close)")
}

/// Whether `port` is still connected to a peer (`EVTCHNOP_status` says
/// `EVTCHNSTAT_interdomain`). When a peer domain dies, Xen closes its ends
/// and ours becomes unbound: this is how a destroyed peer shows.
///
/// # Errors
///
/// Xen's refusal (a port that is not ours).
///
/// # Examples
///
/// ```
/// use coresident_xen::kernel::{event_channel, Hypercall, KernelError};
///
/// /// Whether the peer's end of `port` is still open (EVTCHNOP_status).
/// fn peer_alive(h: &impl Hypercall, port: u32) -> Result<bool, KernelError> {
///     event_channel::is_connected(h, port)
/// }
/// ```
pub fn is_connected(h: &(impl Hypercall + ?Sized), port: EvtchnPort) -> Result<bool, KernelError> {
    // SAFETY: evtchn_status is plain integers (a union of integer
    // structs): all zeroes is a valid value.
    let mut st: evtchn_status = unsafe { core::mem::zeroed() };
    st.dom = DOMID_SELF;
    st.port = port;
    op(h, xen_sys::EVTCHNOP_status, &mut st, "evtchn(status)")?;
    Ok(st.status == xen_sys::EVTCHNSTAT_interdomain)
}

/// This domain's shared_info page, mapped: event-channel pending and mask
/// bits, and vCPU 0's time. Xen writes it at any time: atomics only.
///
/// # Examples
///
/// ```
/// # use core::ptr::NonNull;
/// # use coresident_xen::kernel::SharedInfo;
/// #[repr(C, align(4096))]
/// struct Page([u8; 4096]);
/// let mut page = Box::new(Page([0; 4096])); // plays a shared_info no event has touched
/// // SAFETY: the zeroed page is page-aligned, outlives `shared`, and only
/// // `shared` touches it (atomically).
/// let shared = unsafe { SharedInfo::new(NonNull::from(&mut *page).cast()) };
/// assert!(!shared.is_pending(5)); // no event yet
/// shared.mask(5)?;
/// assert!(shared.is_masked(5));
/// # Ok::<(), coresident_xen::kernel::KernelError>(())
/// ```
#[derive(Debug)]
pub struct SharedInfo {
    base: NonNull<u8>,
}

// SAFETY: only atomic accesses to the page, which lives as long as the value.
unsafe impl Send for SharedInfo {}
// SAFETY: as for `Send`.
unsafe impl Sync for SharedInfo {}

impl SharedInfo {
    /// shared_info mapped at `base`.
    ///
    /// # Safety
    ///
    /// `base` maps this domain's shared_info page (or, in a test, a zeroed
    /// page playing it) for as long as the value lives, page-aligned, and
    /// nothing accesses it but atomically (this value, Xen).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use core::ptr::NonNull;
    /// use coresident_xen::kernel::{Kernel, KernelError, SharedInfo};
    ///
    /// /// Maps shared_info (`start_info.shared_info >> 12`) at a page of a window.
    /// fn map_shared_info<K: Kernel>(k: &K, mfn: u64) -> Result<SharedInfo, KernelError> {
    ///     let va: NonNull<u8> = k.alloc_window(1).ok_or(KernelError::NoMemory)?;
    ///     // SAFETY: `va` is a fresh page of the kernel's window; shared_info is ours.
    ///     unsafe { k.map_frame(va, mfn)? };
    ///     // SAFETY: `va` maps shared_info from now on, and the window is kept.
    ///     Ok(unsafe { SharedInfo::new(va) })
    /// }
    /// ```
    pub unsafe fn new(base: NonNull<u8>) -> Self {
        Self { base }
    }

    /// The word holding `port`'s bit at `offset`, and the bit.
    fn word(&self, offset: usize, port: EvtchnPort) -> Result<(&AtomicU64, u64), KernelError> {
        if port >= MAX_PORTS {
            return Err(KernelError::BadPort(port));
        }
        let p = self
            .base
            .as_ptr()
            .wrapping_add(offset + (port as usize / 64) * 8);
        // SAFETY: `port < MAX_PORTS`, so the word lies in the 512-byte array
        // at `offset` inside the mapped page, 8-aligned (page-aligned base,
        // offsets multiples of 8); the page is accessed atomically only and
        // outlives `&self`.
        Ok((unsafe { AtomicU64::from_ptr(p.cast()) }, 1 << (port % 64)))
    }

    /// Whether `port` is pending (false for a port out of range).
    ///
    /// # Examples
    ///
    /// ```
    /// # use core::ptr::NonNull;
    /// # use coresident_xen::kernel::SharedInfo;
    /// #[repr(C, align(4096))]
    /// struct Page([u8; 4096]);
    /// let mut page = Box::new(Page([0; 4096])); // plays a shared_info no event has touched
    /// // SAFETY: the zeroed page is page-aligned, outlives `shared`, and only
    /// // `shared` touches it (atomically).
    /// let shared = unsafe { SharedInfo::new(NonNull::from(&mut *page).cast()) };
    /// assert!(!shared.is_pending(5)); // Xen sets the bit; nobody has
    /// assert!(!shared.is_pending(u32::MAX)); // out of range: never
    /// ```
    pub fn is_pending(&self, port: EvtchnPort) -> bool {
        self.word(PENDING_OFFSET, port)
            .is_ok_and(|(w, bit)| w.load(Ordering::Acquire) & bit != 0)
    }

    /// Clears `port`'s pending bit and says whether it was set: consumes
    /// one event (which may stand for several sends).
    ///
    /// # Examples
    ///
    /// ```
    /// # use core::ptr::NonNull;
    /// # use coresident_xen::kernel::SharedInfo;
    /// #[repr(C, align(4096))]
    /// struct Page([u8; 4096]);
    /// let mut page = Box::new(Page([0; 4096])); // plays a shared_info no event has touched
    /// // SAFETY: the zeroed page is page-aligned, outlives `shared`, and only
    /// // `shared` touches it (atomically).
    /// let shared = unsafe { SharedInfo::new(NonNull::from(&mut *page).cast()) };
    /// // A doorbell's wait: consume the event if there is one, else idle.
    /// if !shared.test_and_clear_pending(5) {
    ///     // kernel.idle(5, deadline)
    /// }
    /// assert!(!shared.is_pending(5));
    /// ```
    pub fn test_and_clear_pending(&self, port: EvtchnPort) -> bool {
        // SYNC: event delivered. Xen sets the bit with a locked
        // test-and-set after the sender's stores (the ring's publish or
        // release, ordered by its own fence before EVTCHNOP_send); the
        // Acquire half here orders our re-reading of the ring after it.
        self.word(PENDING_OFFSET, port)
            .is_ok_and(|(w, bit)| w.fetch_and(!bit, Ordering::AcqRel) & bit != 0)
    }

    /// Whether `port` is masked (no upcall; still pending and pollable).
    ///
    /// # Examples
    ///
    /// ```
    /// # use core::ptr::NonNull;
    /// # use coresident_xen::kernel::SharedInfo;
    /// #[repr(C, align(4096))]
    /// struct Page([u8; 4096]);
    /// let mut page = Box::new(Page([0; 4096])); // plays a shared_info no event has touched
    /// // SAFETY: the zeroed page is page-aligned, outlives `shared`, and only
    /// // `shared` touches it (atomically).
    /// let shared = unsafe { SharedInfo::new(NonNull::from(&mut *page).cast()) };
    /// assert!(!shared.is_masked(5));
    /// shared.mask(5)?;
    /// assert!(shared.is_masked(5));
    /// # Ok::<(), coresident_xen::kernel::KernelError>(())
    /// ```
    pub fn is_masked(&self, port: EvtchnPort) -> bool {
        self.word(MASK_OFFSET, port)
            .is_ok_and(|(w, bit)| w.load(Ordering::Acquire) & bit != 0)
    }

    /// Masks `port`: Xen sets it pending but makes no upcall.
    ///
    /// # Errors
    ///
    /// [`KernelError::BadPort`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use core::ptr::NonNull;
    /// # use coresident_xen::kernel::SharedInfo;
    /// #[repr(C, align(4096))]
    /// struct Page([u8; 4096]);
    /// let mut page = Box::new(Page([0; 4096])); // plays a shared_info no event has touched
    /// // SAFETY: the zeroed page is page-aligned, outlives `shared`, and only
    /// // `shared` touches it (atomically).
    /// let shared = unsafe { SharedInfo::new(NonNull::from(&mut *page).cast()) };
    /// use coresident_xen::kernel::KernelError;
    ///
    /// shared.mask(5)?; // polled, not upcalled
    /// assert_eq!(shared.mask(4096), Err(KernelError::BadPort(4096))); // 2-level ABI: 64 * 64 ports
    /// # Ok::<(), KernelError>(())
    /// ```
    pub fn mask(&self, port: EvtchnPort) -> Result<(), KernelError> {
        let (w, bit) = self.word(MASK_OFFSET, port)?;
        w.fetch_or(bit, Ordering::AcqRel);
        Ok(())
    }

    /// Clears `port`'s mask bit. A kernel that takes upcalls must then
    /// check the pending bit itself (or use `EVTCHNOP_unmask`) to get an
    /// event that came while masked.
    ///
    /// # Errors
    ///
    /// [`KernelError::BadPort`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use core::ptr::NonNull;
    /// # use coresident_xen::kernel::SharedInfo;
    /// #[repr(C, align(4096))]
    /// struct Page([u8; 4096]);
    /// let mut page = Box::new(Page([0; 4096])); // plays a shared_info no event has touched
    /// // SAFETY: the zeroed page is page-aligned, outlives `shared`, and only
    /// // `shared` touches it (atomically).
    /// let shared = unsafe { SharedInfo::new(NonNull::from(&mut *page).cast()) };
    /// shared.mask(5)?;
    /// shared.unmask(5)?;
    /// assert!(!shared.is_masked(5));
    /// // What came while masked is still pending: check it after unmasking.
    /// let missed = shared.test_and_clear_pending(5);
    /// # assert!(!missed);
    /// # Ok::<(), coresident_xen::kernel::KernelError>(())
    /// ```
    pub fn unmask(&self, port: EvtchnPort) -> Result<(), KernelError> {
        let (w, bit) = self.word(MASK_OFFSET, port)?;
        w.fetch_and(!bit, Ordering::AcqRel);
        Ok(())
    }

    fn time_word(&self, off: usize) -> u64 {
        let p = self.base.as_ptr().wrapping_add(TIME_OFFSET + off);
        // SAFETY: `off` is 8 or 16 (tsc_timestamp, system_time), inside
        // vCPU 0's vcpu_time_info, 8-aligned; atomic access only.
        unsafe { AtomicU64::from_ptr(p.cast()).load(Ordering::Relaxed) }
    }

    fn time_u32(&self, off: usize) -> u32 {
        let p = self.base.as_ptr().wrapping_add(TIME_OFFSET + off);
        // SAFETY: `off` is 0 (version), 24 (tsc_to_system_mul) or 28
        // (tsc_shift, flags, pad), 4-aligned, inside the page.
        unsafe { AtomicU32::from_ptr(p.cast()).load(Ordering::Acquire) }
    }

    /// Xen's system time in ns (since boot), from vCPU 0's
    /// `vcpu_time_info` and the TSC: the snapshot is re-read while Xen
    /// updates it (odd or changed `version`), at most 1000 times.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::kernel::SharedInfo;
    ///
    /// /// Nanoseconds since `t0`, on Xen's system time.
    /// fn since(shared: &SharedInfo, t0: u64) -> u64 {
    ///     shared.system_time_ns().saturating_sub(t0)
    /// }
    /// ```
    pub fn system_time_ns(&self) -> u64 {
        for _ in 0..1000 {
            let v0 = self.time_u32(0);
            if v0 & 1 != 0 {
                core::hint::spin_loop();
                continue;
            }
            let tsc_stamp = self.time_word(8);
            let system = self.time_word(16);
            let mul = self.time_u32(24);
            let shift = self.time_u32(28) as u8 as i8;
            core::sync::atomic::fence(Ordering::Acquire);
            if self.time_u32(0) != v0 {
                continue;
            }
            // SAFETY: `rdtsc` only reads the time-stamp counter.
            let tsc = unsafe { core::arch::x86_64::_rdtsc() };
            return scale(system, tsc.wrapping_sub(tsc_stamp), mul, shift);
        }
        0
    }
}

/// Xen's `pvclock` scaling: `system + ((delta << shift) * mul >> 32)`
/// (`xen/xen.h`, `struct vcpu_time_info`); a negative shift shifts right.
fn scale(system: u64, delta: u64, mul: u32, shift: i8) -> u64 {
    let d = if shift >= 0 {
        delta
            .checked_shl(u32::from(shift.unsigned_abs()))
            .unwrap_or(0)
    } else {
        delta
            .checked_shr(u32::from(shift.unsigned_abs()))
            .unwrap_or(0)
    };
    system.wrapping_add(((u128::from(d) * u128::from(mul)) >> 32) as u64)
}

/// A [`Clock`](coresident::Clock) on Xen's system time.
///
/// # Examples
///
/// ```
/// use core::time::Duration;
/// use coresident::Clock;
/// use coresident_xen::kernel::{Kernel, Xen};
///
/// /// A deadline on Xen's system time, as a channel's timeouts use it.
/// fn deadline<K: Kernel>(xen: &Xen<K>, after: Duration) -> Duration {
///     xen.clock().now() + after
/// }
/// ```
#[derive(Clone, Copy, Debug)]
pub struct XenClock<'a> {
    shared: &'a SharedInfo,
}

impl<'a> XenClock<'a> {
    /// The clock of `shared`.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident::Clock;
    /// use coresident_xen::kernel::{SharedInfo, XenClock};
    ///
    /// fn now(shared: &SharedInfo) -> core::time::Duration {
    ///     XenClock::new(shared).now() // what Xen::clock gives
    /// }
    /// ```
    pub fn new(shared: &'a SharedInfo) -> Self {
        Self { shared }
    }
}

impl coresident::Clock for XenClock<'_> {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.shared.system_time_ns())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_and_mask_bits_are_the_headers() {
        let mut page = std::boxed::Box::new([0u64; 512]);
        let base = NonNull::new(page.as_mut_ptr().cast::<u8>()).unwrap();
        // SAFETY: a zeroed, 8-aligned 4 KiB buffer that outlives `si`,
        // accessed only through `si` while it lives.
        let si = unsafe { SharedInfo::new(base) };
        for port in [0u32, 1, 63, 64, 130, MAX_PORTS - 1] {
            assert!(!si.is_pending(port));
            // Xen's evtchn_2l_set_pending: bit `port` of evtchn_pending.
            let w = PENDING_OFFSET / 8 + port as usize / 64;
            // SAFETY: plain write to the test's buffer, no atomic view live.
            unsafe { *page.as_mut_ptr().add(w) |= 1 << (port % 64) };
            assert!(si.is_pending(port), "{port}");
            assert!(si.test_and_clear_pending(port));
            assert!(!si.test_and_clear_pending(port), "consumed once");
            // SAFETY: as above.
            assert_eq!(unsafe { *page.as_ptr().add(w) }, 0);
            si.mask(port).unwrap();
            // SAFETY: as above.
            let m = unsafe { *page.as_ptr().add(MASK_OFFSET / 8 + port as usize / 64) };
            assert_eq!(m, 1 << (port % 64));
            assert!(si.is_masked(port));
            si.unmask(port).unwrap();
            assert!(!si.is_masked(port));
        }
        assert_eq!(si.mask(MAX_PORTS), Err(KernelError::BadPort(MAX_PORTS)));
        assert!(!si.test_and_clear_pending(u32::MAX));
    }

    #[test]
    fn pvclock_scaling() {
        // 1 GHz TSC: mul = 2^31 with shift 1 gives 1 ns per tick.
        assert_eq!(scale(1000, 500, 1 << 31, 1), 1500);
        // shift -1 halves, mul 2^32 - 1 is just under 1.
        assert_eq!(scale(0, 1 << 20, u32::MAX, -1), (1 << 19) - 1);
        // Absurd shifts from a hostile page give 0, not a panic.
        assert_eq!(scale(7, u64::MAX, u32::MAX, 100), 7);
        assert_eq!(scale(7, u64::MAX, u32::MAX, -128), 7);
    }
}
