//! Grant table v1 (`xen/grant_table.h`): set the table up, grant a page to a
//! peer domain, end the access (refused while the peer maps it), and map
//! and unmap a peer's grants.
//!
//! The table's frames are shared with Xen, which sets `GTF_reading` and
//! `GTF_writing` in an entry's flags while the peer maps or copies the page:
//! entries are only ever accessed with atomics.
//!
//! # Examples
//!
//! ```
//! use core::ptr::NonNull;
//! use coresident_xen::kernel::{GrantTable, Kernel, KernelError, Xen, GRANT_FRAMES};
//!
//! assert_eq!(GrantTable::capacity(), GRANT_FRAMES * 512 - 8);
//!
//! /// Lets dom0 read a page of ours, then takes it back.
//! fn lend<K: Kernel>(xen: &Xen<K>, page: NonNull<u8>) -> Result<(), KernelError> {
//!     let mfn = xen.kernel().frame_of(page).ok_or(KernelError::NoFrame)?;
//!     let r = xen.grants().grant(0, mfn, true)?;
//!     // ... dom0 maps `r`, reads, unmaps ...
//!     xen.grants().end_access(r) // GrantInUse while dom0 still maps it
//! }
//! ```

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::shared::SharedMem;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::hypercall::{Hypercall, DOMID_SELF};
use super::{Kernel, KernelError};
use crate::types::{DomId, GrantRef};

/// `GNTTABOP_map_grant_ref`.
pub(crate) const GNTTABOP_MAP_GRANT_REF: u32 = 0;
/// `GNTTABOP_unmap_grant_ref`.
pub(crate) const GNTTABOP_UNMAP_GRANT_REF: u32 = 1;
/// `GNTTABOP_setup_table`.
pub(crate) const GNTTABOP_SETUP_TABLE: u32 = 2;

/// `GTF_permit_access`: the domain in the entry may map the frame.
pub(crate) const GTF_PERMIT_ACCESS: u16 = 1;
/// `GTF_readonly`: read-only access only.
pub(crate) const GTF_READONLY: u16 = 1 << 2;
/// `GTF_reading` (set by Xen): the grant is mapped or being copied from.
pub(crate) const GTF_READING: u16 = 1 << 3;
/// `GTF_writing` (set by Xen): the grant is mapped writable.
pub(crate) const GTF_WRITING: u16 = 1 << 4;

/// `GNTMAP_host_map`: map for host (CPU) access.
pub(crate) const GNTMAP_HOST_MAP: u32 = 1 << 1;
/// `GNTMAP_readonly`.
pub(crate) const GNTMAP_READONLY: u32 = 1 << 2;

/// `GNTST_okay`.
pub(crate) const GNTST_OKAY: i16 = 0;
/// `GNTST_bad_gntref`: unrecognised or inappropriate grant reference.
#[cfg(test)] // what the fake Xen answers
pub(crate) const GNTST_BAD_GNTREF: i16 = -3;
/// `GNTST_permission_denied`.
#[cfg(test)] // what the fake Xen answers
pub(crate) const GNTST_PERMISSION_DENIED: i16 = -8;

/// `GNTTAB_NR_RESERVED_ENTRIES`: entries 0..8 belong to the toolstack
/// (console, XenStore); never handed out here.
pub(crate) const NR_RESERVED_ENTRIES: u32 = 8;
/// v1 entries per 4 KiB frame.
pub(crate) const ENTRIES_PER_FRAME: usize = 4096 / size_of::<GrantEntryV1>();
/// Frames of grant table set up here: 2048 entries, 2040 usable.
///
/// # Examples
///
/// ```
/// use coresident_xen::kernel::{GrantTable, GRANT_FRAMES};
///
/// // 4 frames of 512 eight-byte v1 entries, 8 of them reserved by Xen.
/// assert_eq!(GRANT_FRAMES, 4);
/// assert_eq!(GrantTable::capacity(), GRANT_FRAMES * 512 - 8);
/// ```
pub const GRANT_FRAMES: usize = 4;
const ENTRIES: usize = GRANT_FRAMES * ENTRIES_PER_FRAME;

/// `struct grant_entry_v1`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct GrantEntryV1 {
    /// `GTF_*`.
    pub flags: u16,
    /// The domain granted access.
    pub domid: u16,
    /// The frame (a machine frame for a PV guest).
    pub frame: u32,
}
const _: () = assert!(size_of::<GrantEntryV1>() == 8);

/// `struct gnttab_setup_table` (with its implicit padding spelt out).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct GnttabSetupTable {
    /// IN: `DOMID_SELF`.
    pub dom: u16,
    /// Padding.
    pub _pad0: u16,
    /// IN: frames wanted.
    pub nr_frames: u32,
    /// OUT: `GNTST_*`.
    pub status: i16,
    /// Padding.
    pub _pad1: [u8; 6],
    /// IN: guest handle of `nr_frames` `xen_pfn_t` (OUT: the frames).
    pub frame_list: u64,
}
const _: () = assert!(size_of::<GnttabSetupTable>() == 24);
const _: () = assert!(core::mem::offset_of!(GnttabSetupTable, status) == 8);
const _: () = assert!(core::mem::offset_of!(GnttabSetupTable, frame_list) == 16);

/// `struct gnttab_map_grant_ref`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct GnttabMapGrantRef {
    /// IN: where to map (a virtual address for a PV guest's host map).
    pub host_addr: u64,
    /// IN: `GNTMAP_*`.
    pub flags: u32,
    /// IN: the grant reference.
    pub gref: u32,
    /// IN: the granting domain.
    pub dom: u16,
    /// OUT: `GNTST_*`.
    pub status: i16,
    /// OUT: the handle to unmap with.
    pub handle: u32,
    /// OUT: the bus address (device maps).
    pub dev_bus_addr: u64,
}
const _: () = assert!(size_of::<GnttabMapGrantRef>() == 32);
const _: () = assert!(core::mem::offset_of!(GnttabMapGrantRef, dom) == 16);
const _: () = assert!(core::mem::offset_of!(GnttabMapGrantRef, handle) == 20);

/// `struct gnttab_unmap_grant_ref` (with its tail padding spelt out).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct GnttabUnmapGrantRef {
    /// IN: the mapped address.
    pub host_addr: u64,
    /// IN: the bus address (0 for host maps).
    pub dev_bus_addr: u64,
    /// IN: the handle from the map.
    pub handle: u32,
    /// OUT: `GNTST_*`.
    pub status: i16,
    /// Padding.
    pub _pad: u16,
}
const _: () = assert!(size_of::<GnttabUnmapGrantRef>() == 24);
const _: () = assert!(core::mem::offset_of!(GnttabUnmapGrantRef, status) == 20);

/// This domain's grant table: [`GRANT_FRAMES`] frames mapped in a window of
/// the kernel, and a bitmap of the references in use.
///
/// # Examples
///
/// ```
/// use core::ptr::NonNull;
/// use coresident_xen::kernel::{Kernel, KernelError, Xen};
///
/// /// Lets dom0 read one page of ours; returns the reference to publish.
/// fn share<K: Kernel>(xen: &Xen<K>, page: NonNull<u8>) -> Result<u32, KernelError> {
///     let mfn = xen.kernel().frame_of(page).ok_or(KernelError::NoFrame)?;
///     xen.grants().grant(0, mfn, true)
/// }
/// ```
#[derive(Debug)]
pub struct GrantTable {
    /// The [`ENTRIES`] 8-byte entries (`grant_entry_v1`), which Xen writes
    /// too: flags at +0, domid at +2, frame at +4.
    entries: SharedMem,
    used: [AtomicU64; ENTRIES / 64],
}

impl GrantTable {
    /// `GNTTABOP_setup_table` for [`GRANT_FRAMES`] frames, each mapped at a
    /// page of a fresh window of `kernel` (kept for the table's life).
    ///
    /// # Errors
    ///
    /// The hypercall's or the setup's status, no window, a refused mapping.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::kernel::{GrantTable, Kernel, KernelError};
    ///
    /// /// What `Xen::new` does after mapping shared_info.
    /// fn grant_table<K: Kernel>(kernel: &K) -> Result<GrantTable, KernelError> {
    ///     GrantTable::setup(kernel)
    /// }
    /// ```
    pub fn setup<K: Kernel + ?Sized>(kernel: &K) -> Result<Self, KernelError> {
        let mut frames = [0u64; GRANT_FRAMES];
        let mut st = GnttabSetupTable {
            dom: DOMID_SELF,
            nr_frames: GRANT_FRAMES as u32,
            frame_list: frames.as_mut_ptr() as u64,
            ..GnttabSetupTable::default()
        };
        // SAFETY: Xen reads `st` and writes `st.status` and `nr_frames`
        // frame numbers into `frames`, both live locals.
        let rc = unsafe {
            kernel.hypercall(
                xen_sys::__HYPERVISOR_grant_table_op,
                [
                    u64::from(GNTTABOP_SETUP_TABLE),
                    core::ptr::addr_of_mut!(st) as u64,
                    1,
                    0,
                    0,
                ],
            )
        };
        if rc < 0 {
            return Err(KernelError::Hypercall {
                op: "grant_table_op(setup_table)",
                rc,
            });
        }
        if st.status != GNTST_OKAY {
            return Err(KernelError::Grant {
                op: "setup_table",
                status: st.status,
            });
        }
        let win = kernel
            .alloc_window(GRANT_FRAMES)
            .ok_or(KernelError::NoMemory)?;
        for (i, &mfn) in frames.iter().enumerate() {
            let va = win.as_ptr().wrapping_add(i * 4096);
            // SAFETY: `va` is page `i` of the fresh window (non-null: inside
            // a non-null window); the frame is this domain's grant table.
            unsafe { kernel.map_frame(NonNull::new(va).ok_or(KernelError::NoMemory)?, mfn)? };
        }
        // SAFETY: the window now maps GRANT_FRAMES grant-table frames.
        Ok(unsafe { Self::from_mapped(win) })
    }

    /// A table over frames already set up and mapped at `entries`.
    ///
    /// # Safety
    ///
    /// `entries` maps this domain's [`GRANT_FRAMES`] grant-table frames
    /// (or, in a test, memory playing Xen's part), aligned to 8 bytes,
    /// for as long as the table lives, and nothing else writes the entries
    /// but Xen (atomically).
    unsafe fn from_mapped(entries: NonNull<u8>) -> Self {
        let used: [AtomicU64; ENTRIES / 64] = core::array::from_fn(|_| AtomicU64::new(0));
        used[0].store((1 << NR_RESERVED_ENTRIES) - 1, Ordering::Relaxed);
        // SAFETY: `entries` maps the table's `ENTRIES * 8` bytes for the
        // table's life, and only Xen and these atomics touch them (this
        // function's contract).
        let entries = unsafe { SharedMem::new(entries.as_ptr(), ENTRIES * 8) };
        Self { entries, used }
    }

    /// References that can be handed out.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::kernel::GrantTable;
    /// use coresident_xen::MAX_PAGES;
    ///
    /// // 2040 references for every link of the kernel together: fewer than
    /// // the MAX_PAGES one link may have, so the table, not MAX_PAGES, bounds
    /// // a kernel's largest link.
    /// assert_eq!(GrantTable::capacity(), 2040);
    /// assert!(GrantTable::capacity() < MAX_PAGES);
    /// ```
    pub const fn capacity() -> usize {
        ENTRIES - NR_RESERVED_ENTRIES as usize
    }

    /// The offset of entry `r`'s flags (`domid` follows at +2, `frame` at +4);
    /// every access through [`SharedMem`] checks it against the table's end.
    fn entry(r: GrantRef) -> usize {
        r as usize * 8
    }

    fn alloc_ref(&self) -> Option<GrantRef> {
        for (w, word) in self.used.iter().enumerate() {
            let mut cur = word.load(Ordering::Relaxed);
            while cur != u64::MAX {
                let bit = cur.trailing_ones();
                match word.compare_exchange_weak(
                    cur,
                    cur | (1 << bit),
                    Ordering::Acquire,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => return Some((w * 64) as u32 + bit),
                    Err(now) => cur = now,
                }
            }
        }
        None
    }

    fn free_ref(&self, r: GrantRef) {
        // SYNC: reference reuse. Release pairs with the Acquire of the
        // exchange in `alloc_ref`: the entry's cleared flags are visible to
        // the next user of `r`.
        self.used[r as usize / 64].fetch_and(!(1 << (r % 64)), Ordering::Release);
    }

    fn in_use_by_us(&self, r: GrantRef) -> bool {
        r >= NR_RESERVED_ENTRIES
            && (r as usize) < ENTRIES
            && self.used[r as usize / 64].load(Ordering::Relaxed) & (1 << (r % 64)) != 0
    }

    /// Grants domain `peer` access to machine frame `frame` (read-only if
    /// `readonly`); returns the reference to give the peer.
    ///
    /// # Errors
    ///
    /// [`KernelError::NoGrantRefs`], [`KernelError::FrameTooLarge`].
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::kernel::{GrantTable, KernelError};
    ///
    /// /// Grants domain 3 write access to frame `mfn`, or says why not.
    /// fn give(table: &GrantTable, mfn: u64) -> Result<u32, KernelError> {
    ///     match table.grant(3, mfn, false) {
    ///         Err(KernelError::NoGrantRefs) => Err(KernelError::NoGrantRefs), // all in use: drop a link
    ///         other => other,
    ///     }
    /// }
    /// ```
    pub fn grant(&self, peer: DomId, frame: u64, readonly: bool) -> Result<GrantRef, KernelError> {
        let frame32 = u32::try_from(frame).map_err(|_| KernelError::FrameTooLarge(frame))?;
        let r = self.alloc_ref().ok_or(KernelError::NoGrantRefs)?;
        let e = Self::entry(r);
        let f = GTF_PERMIT_ACCESS | if readonly { GTF_READONLY } else { 0 };
        let published = self
            .entries
            .store_u16(e + 2, peer, Ordering::Relaxed)
            .and_then(|()| self.entries.store_u32(e + 4, frame32, Ordering::Relaxed))
            // SYNC: grant entry published. Xen reads the flags (its cmpxchg
            // in `_set_status_v1`) before domid and frame; this Release
            // orders the two stores above before it, as Linux's `wmb()` in
            // `gnttab_update_entry_v1`.
            .and_then(|()| self.entries.store_u16(e, f, Ordering::Release));
        if published.is_err() {
            // Unreachable (`alloc_ref` hands out references below ENTRIES);
            // the reference goes back rather than half-published.
            self.free_ref(r);
            return Err(KernelError::BadGrantRef(r));
        }
        Ok(r)
    }

    /// Whether the peer maps (or copies from) grant `r` now.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::kernel::GrantTable;
    ///
    /// /// Whether every page of a dropped link may be taken back now.
    /// fn all_released(table: &GrantTable, refs: &[u32]) -> bool {
    ///     refs.iter().all(|&r| !table.in_use(r))
    /// }
    /// ```
    pub fn in_use(&self, r: GrantRef) -> bool {
        self.entries
            .load_u16(Self::entry(r), Ordering::Acquire)
            .is_ok_and(|f| f & (GTF_READING | GTF_WRITING) != 0)
    }

    /// Ends the peer's access to grant `r` and frees the reference, unless
    /// the peer maps it now (Linux's `gnttab_end_foreign_access_ref`: one
    /// compare-and-swap of the flags against Xen's `GTF_reading`/`writing`).
    ///
    /// # Errors
    ///
    /// [`KernelError::GrantInUse`] (the access stays; try again after the
    /// peer unmapped), [`KernelError::BadGrantRef`] for a reference this
    /// table did not hand out.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::kernel::{GrantTable, Kernel, KernelError};
    ///
    /// /// Ends access to `r`, waiting (as a dropped link does) while the peer maps it.
    /// fn revoke<K: Kernel>(kernel: &K, table: &GrantTable, r: u32, until_ns: u64) -> Result<(), KernelError> {
    ///     loop {
    ///         match table.end_access(r) {
    ///             Err(KernelError::GrantInUse(_)) => kernel.relax(until_ns), // the peer unmaps first
    ///             done => return done,
    ///         }
    ///     }
    /// }
    /// ```
    pub fn end_access(&self, r: GrantRef) -> Result<(), KernelError> {
        if !self.in_use_by_us(r) {
            return Err(KernelError::BadGrantRef(r));
        }
        let flags = Self::entry(r);
        let bad = |_| KernelError::BadGrantRef(r);
        // SYNC: grant in use. Xen sets GTF_reading/GTF_writing with a
        // cmpxchg before it maps the frame and clears them after it unmaps;
        // the Acquire here and of the exchange pairs with those, so a
        // cleared flag means the peer's mapping is gone.
        let mut cur = self
            .entries
            .load_u16(flags, Ordering::Acquire)
            .map_err(bad)?;
        loop {
            if cur & (GTF_READING | GTF_WRITING) != 0 {
                return Err(KernelError::GrantInUse(r));
            }
            match self
                .entries
                .compare_exchange_u16(flags, cur, 0)
                .map_err(bad)?
            {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        self.free_ref(r);
        Ok(())
    }

    /// The raw entry `r`, as Xen sees it (`None` outside the table): what
    /// the unit tests check the table's writes with.
    #[cfg(test)]
    pub(crate) fn read_entry(&self, r: GrantRef) -> Option<GrantEntryV1> {
        let e = Self::entry(r);
        Some(GrantEntryV1 {
            flags: self.entries.load_u16(e, Ordering::Acquire).ok()?,
            domid: self.entries.load_u16(e + 2, Ordering::Relaxed).ok()?,
            frame: self.entries.load_u32(e + 4, Ordering::Relaxed).ok()?,
        })
    }
}

/// Maps grants `refs` of domain `dom` at consecutive pages from `va`
/// (`GNTTABOP_map_grant_ref`, host maps, in batches of 16), writing each
/// mapping's handle into `handles`. On failure, unmaps what it mapped.
///
/// # Safety
///
/// `va .. va + refs.len() pages` is a window of this kernel (what it maps
/// now is replaced and lost), and nothing accesses it through references.
///
/// # Errors
///
/// The hypercall's result or the first failed entry's `GNTST_*` status;
/// [`KernelError::NoMemory`] if `handles` is shorter than `refs`, or `refs`
/// yields fewer references than its length said.
///
/// # Examples
///
/// ```
/// use core::ptr::NonNull;
/// use coresident_xen::kernel::grant_table::{map_grants, unmap_grants};
/// use coresident_xen::kernel::{Kernel, KernelError};
///
/// /// Maps dom0's grants `refs` in a fresh window, reads the first byte, and
/// /// unmaps them (a link keeps its mapping instead: `KernelPages`).
/// fn peek<K: Kernel>(k: &K, refs: &[u32]) -> Result<u8, KernelError> {
///     let va: NonNull<u8> = k.alloc_window(refs.len()).ok_or(KernelError::NoMemory)?;
///     let mut handles = [0u32; 16];
///     // SAFETY: `va` is a fresh window of `refs.len()` pages, used by nothing else.
///     unsafe { map_grants(k, 0, refs.iter().copied(), va, true, &mut handles)? };
///     // SAFETY: the first page is mapped (read-only) and in bounds; a volatile
///     // read, as the peer may write it.
///     let first = unsafe { va.as_ptr().read_volatile() };
///     // SAFETY: the mapping made above, not used after.
///     unsafe { unmap_grants(k, va, &handles[..refs.len()])? };
///     // SAFETY: nothing is mapped in the window any more.
///     unsafe { k.free_window(va, refs.len()) };
///     Ok(first)
/// }
/// ```
pub unsafe fn map_grants<H: Hypercall + ?Sized>(
    h: &H,
    dom: DomId,
    refs: impl ExactSizeIterator<Item = GrantRef>,
    va: NonNull<u8>,
    readonly: bool,
    handles: &mut [u32],
) -> Result<(), KernelError> {
    const BATCH: usize = 16;
    let n = refs.len();
    if handles.len() < n {
        return Err(KernelError::NoMemory);
    }
    let flags = GNTMAP_HOST_MAP | if readonly { GNTMAP_READONLY } else { 0 };
    let mut refs = refs;
    let mut done = 0;
    while done < n {
        let k = (n - done).min(BATCH);
        let mut ops = [GnttabMapGrantRef::default(); BATCH];
        for (i, op) in ops.iter_mut().enumerate().take(k) {
            // An iterator shorter than it said: never map a made-up
            // reference (0 is the toolstack's console grant).
            let Some(gref) = refs.next() else {
                // SAFETY: pages 0..done were mapped with these handles.
                let _ = unsafe { unmap_grants(h, va, &handles[..done]) };
                return Err(KernelError::NoMemory);
            };
            *op = GnttabMapGrantRef {
                host_addr: va.as_ptr() as u64 + ((done + i) * 4096) as u64,
                flags,
                gref,
                dom,
                status: 1,
                ..GnttabMapGrantRef::default()
            };
        }
        // SAFETY: Xen reads and writes `k` entries of `ops` (a live local);
        // each maps at a page of the caller's window (contract).
        let rc = unsafe {
            h.hypercall(
                xen_sys::__HYPERVISOR_grant_table_op,
                [
                    u64::from(GNTTABOP_MAP_GRANT_REF),
                    ops.as_mut_ptr() as u64,
                    k as u64,
                    0,
                    0,
                ],
            )
        };
        // An entry is mapped iff its status says so (Xen writes each
        // status; ours start at 1, not a GNTST_* value).
        let mut failure = (rc < 0).then_some(KernelError::Hypercall {
            op: "grant_table_op(map_grant_ref)",
            rc,
        });
        for (i, op) in ops.iter().enumerate().take(k) {
            if op.status == GNTST_OKAY {
                handles[done + i] = op.handle;
            } else if failure.is_none() {
                failure = Some(KernelError::Grant {
                    op: "map_grant_ref",
                    status: op.status,
                });
            }
        }
        if let Some(e) = failure {
            // SAFETY: the earlier batches mapped pages 0..done with these
            // handles, and this batch the entries whose status is okay.
            unsafe {
                let _ = unmap_grants(h, va, &handles[..done]);
                for (i, op) in ops.iter().enumerate().take(k) {
                    if op.status == GNTST_OKAY {
                        let _ = unmap_grants(h, page(va, done + i), &[op.handle]);
                    }
                }
            }
            return Err(e);
        }
        done += k;
    }
    Ok(())
}

fn page(va: NonNull<u8>, i: usize) -> NonNull<u8> {
    // The window is `i + 1` pages at least (callers), so no wrap to null.
    NonNull::new(va.as_ptr().wrapping_add(i * 4096)).unwrap_or(va)
}

/// Unmaps the grants mapped at consecutive pages from `va` with `handles`
/// (`GNTTABOP_unmap_grant_ref`, in batches of 16). The page-table entries
/// are left empty.
///
/// # Safety
///
/// `va` and `handles` are a mapping made by [`map_grants`], and nothing
/// uses those pages afterwards.
///
/// # Errors
///
/// The hypercall's result or the first failed entry's status (the others
/// are still unmapped).
///
/// # Examples
///
/// ```
/// use core::ptr::NonNull;
/// use coresident_xen::kernel::grant_table::unmap_grants;
/// use coresident_xen::kernel::{Kernel, KernelError};
///
/// /// Takes down a mapping made by `map_grants` and gives the window back.
/// ///
/// /// # Safety
/// ///
/// /// `va` and `handles` are one `map_grants` mapping, not used after.
/// unsafe fn unmap<K: Kernel>(k: &K, va: NonNull<u8>, handles: &[u32]) -> Result<(), KernelError> {
///     // SAFETY: this function's contract.
///     unsafe { unmap_grants(k, va, handles)? };
///     // SAFETY: the window is empty now; nothing uses it after.
///     unsafe { k.free_window(va, handles.len()) };
///     Ok(())
/// }
/// ```
pub unsafe fn unmap_grants<H: Hypercall + ?Sized>(
    h: &H,
    va: NonNull<u8>,
    handles: &[u32],
) -> Result<(), KernelError> {
    const BATCH: usize = 16;
    let mut first_err = None;
    for (b, chunk) in handles.chunks(BATCH).enumerate() {
        let mut ops = [GnttabUnmapGrantRef::default(); BATCH];
        for (i, (op, &handle)) in ops.iter_mut().zip(chunk).enumerate() {
            *op = GnttabUnmapGrantRef {
                host_addr: va.as_ptr() as u64 + ((b * BATCH + i) * 4096) as u64,
                handle,
                status: 1,
                ..GnttabUnmapGrantRef::default()
            };
        }
        // SAFETY: Xen reads and writes `chunk.len()` entries of `ops`, a
        // live local; the addresses and handles are the caller's mapping.
        let rc = unsafe {
            h.hypercall(
                xen_sys::__HYPERVISOR_grant_table_op,
                [
                    u64::from(GNTTABOP_UNMAP_GRANT_REF),
                    ops.as_mut_ptr() as u64,
                    chunk.len() as u64,
                    0,
                    0,
                ],
            )
        };
        if rc < 0 {
            first_err.get_or_insert(KernelError::Hypercall {
                op: "grant_table_op(unmap_grant_ref)",
                rc,
            });
        }
        if let Some(op) = ops[..chunk.len()].iter().find(|o| o.status != GNTST_OKAY) {
            first_err.get_or_insert(KernelError::Grant {
                op: "unmap_grant_ref",
                status: op.status,
            });
        }
    }
    first_err.map_or(Ok(()), Err)
}
