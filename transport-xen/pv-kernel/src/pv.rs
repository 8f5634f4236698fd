//! [`PvKernel`]: coresident-xen's [`Kernel`] for this kernel.

use core::cell::Cell;
use core::ptr::NonNull;

use coresident_xen::kernel::{update_va_mapping, Hypercall, HypercallPage, Kernel, KernelError};
use coresident_xen::{DomId, EvtchnPort};

use crate::mm::{Arena, ArenaMemory};
use crate::{Boot, VIRT_BASE};

static PAGES: ArenaMemory = ArenaMemory::new();
static WINDOWS: ArenaMemory = ArenaMemory::new();

/// This kernel's services: hypercalls through the page Xen filled in, its
/// own pages from a BSS arena (frames from `start_info.mfn_list`), windows
/// from a second arena, and an optional idle hook (the dom0 test switches
/// coroutines there; without it a wait blocks in `SCHEDOP_poll`).
#[derive(Debug)]
pub struct PvKernel {
    boot: Boot,
    hc: HypercallPage,
    domid: DomId,
    pages: Arena,
    windows: Arena,
    idle_hook: Cell<Option<fn(EvtchnPort)>>,
}

impl PvKernel {
    /// The kernel of `boot`, in domain `domid` (dom0: 0; a domU reads it
    /// from XenStore). Call once: the arenas are the image's.
    pub fn new(boot: Boot, domid: DomId) -> Self {
        Self {
            boot,
            hc: boot.hypercalls(),
            domid,
            pages: Arena::new(&PAGES),
            windows: Arena::new(&WINDOWS),
            idle_hook: Cell::new(None),
        }
    }

    /// Makes [`Kernel::idle`] call `hook` instead of `SCHEDOP_poll`.
    pub fn set_idle_hook(&self, hook: Option<fn(EvtchnPort)>) {
        self.idle_hook.set(hook);
    }

    /// Pages of the page arena in use (bookkeeping included).
    pub fn pages_in_use(&self) -> usize {
        self.pages.in_use()
    }

    /// Pages of the window arena in use.
    pub fn windows_in_use(&self) -> usize {
        self.windows.in_use()
    }

    /// The machine frame behind the kernel-image address `va`, from
    /// `start_info.mfn_list` (pseudo-physical = virtual - `VIRT_BASE`).
    pub fn mfn_of(&self, va: *const u8) -> Option<u64> {
        let si = self.boot.start_info();
        let pfn = (va as u64).checked_sub(VIRT_BASE)? >> 12;
        if pfn >= si.nr_pages {
            return None;
        }
        let list = si.mfn_list as *const u64;
        // SAFETY: Xen maps the p2m array of `nr_pages` entries at
        // `mfn_list` for the whole life of a PV guest (start_info), and
        // `pfn < nr_pages`.
        Some(unsafe { list.add(pfn as usize).read_volatile() })
    }
}

// SAFETY: delegates to the hypercall page Xen filled in.
unsafe impl Hypercall for PvKernel {
    unsafe fn hypercall(&self, op: u32, args: [u64; 5]) -> i64 {
        // SAFETY: the caller's contract, passed on.
        unsafe { self.hc.hypercall(op, args) }
    }
}

// SAFETY:
// - pages come from the PAGES arena (BSS of the image, so this domain's
//   memory, page-aligned), zeroed here, each run handed to one owner;
// - frames come from Xen's own p2m list;
// - windows come from the WINDOWS arena, pages of the image (mapped down to
//   L1 by Xen's loader), used only as windows;
// - the domid is the caller's of `new`.
unsafe impl Kernel for PvKernel {
    fn domid(&self) -> DomId {
        self.domid
    }

    fn alloc_pages(&self, n: usize) -> Option<NonNull<u8>> {
        let p = self.pages.alloc(n)?;
        // SAFETY: a fresh run of `n` pages of the arena, ours alone.
        unsafe { p.as_ptr().write_bytes(0, n * 4096) };
        Some(p)
    }

    unsafe fn free_pages(&self, pages: NonNull<u8>, n: usize) {
        self.pages.free(pages, n);
    }

    fn frame_of(&self, page: NonNull<u8>) -> Option<u64> {
        if !self.pages.contains(page.as_ptr()) {
            return None;
        }
        self.mfn_of(page.as_ptr())
    }

    fn alloc_window(&self, n: usize) -> Option<NonNull<u8>> {
        self.windows.alloc(n)
    }

    unsafe fn free_window(&self, window: NonNull<u8>, n: usize) {
        // A grant unmap leaves the entries empty: give each page its own
        // frame back before the window is reused.
        for i in 0..n {
            let va = window.as_ptr().wrapping_add(i * 4096);
            if let Some(mfn) = self.mfn_of(va) {
                // SAFETY: `va` is a page of the window being returned:
                // nothing uses it; its own frame is this domain's.
                let _ = unsafe { update_va_mapping(&self.hc, va as u64, mfn) };
            }
        }
        self.windows.free(window, n);
    }

    unsafe fn map_frame(&self, va: NonNull<u8>, mfn: u64) -> Result<(), KernelError> {
        // SAFETY: the caller's contract: `va` a page of a live window.
        unsafe { update_va_mapping(&self.hc, va.as_ptr() as u64, mfn) }
    }

    fn idle(&self, port: EvtchnPort, until_ns: u64) {
        match self.idle_hook.get() {
            Some(hook) => hook(port),
            None => {
                let _ = coresident_xen::kernel::hypercall::poll(&self.hc, &[port], until_ns);
            }
        }
    }
}
