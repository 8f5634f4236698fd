//! The boot pieces of a minimal `no_std` Xen PV kernel (x86_64), shared by
//! every flavour built from this crate:
//!
//! - [`pv_entry!`]: the ELF notes Xen's loaders read, the entry point, the
//!   hypercall page and the boot stack, in the binary that invokes it;
//! - [`Boot`]: `start_info` and the hypercall page, [`Boot::shutdown`];
//! - [`console`]: `say!` (and the panic handler) to Xen's console
//!   (`console_io`: dom0 only in a release build of Xen) or the writer the
//!   kernel installs ([`console::set_console`]: a domU's PV console ring);
//! - [`mm`]: page and window allocators over arenas in the image's BSS;
//! - [`coro`]: two-stack coroutines (the dom0 test runs producer and
//!   consumer on one vCPU);
//! - [`PvKernel`]: coresident-xen's [`Kernel`] trait for this kernel.
//!
//! One image suits dom0 and a domU: the notes declare `dom0` as a
//! *supported* feature (Xen's dom0 builder insists on it; a domU builder
//! ignores it), and [`Boot::is_dom0`] tells at run time.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs, missing_debug_implementations)]

pub mod console;
pub mod coro;
pub mod mm;
mod pv;

pub use pv::PvKernel;

use core::ptr::addr_of;

pub use coresident_xen::kernel::hypercall::{
    shutdown, SHUTDOWN_CRASH, SHUTDOWN_POWEROFF, SHUTDOWN_REBOOT,
};
pub use coresident_xen::kernel::{Hypercall, HypercallPage, Kernel};

/// Where the kernel is linked (`link.ld`) and what the notes tell Xen:
/// virtual address = pseudo-physical address + `VIRT_BASE`.
pub const VIRT_BASE: u64 = 0xffff_ffff_8000_0000;

/// `SIF_INITDOMAIN` (`xen/xen.h`): `start_info.flags` of dom0.
pub const SIF_INITDOMAIN: u32 = 1 << 1;

/// `struct start_info` (`xen/xen.h`), as Xen leaves it for a PV guest.
#[repr(C)]
#[derive(Debug)]
pub struct StartInfo {
    /// `"xen-<version>-<platform>"`.
    pub magic: [u8; 32],
    /// Pages of this domain.
    pub nr_pages: u64,
    /// Machine address of shared_info.
    pub shared_info: u64,
    /// `SIF_*`.
    pub flags: u32,
    /// Machine frame of the XenStore ring page (domU).
    pub store_mfn: u64,
    /// Event channel of the XenStore ring (domU).
    pub store_evtchn: u32,
    /// domU: console ring frame (`u64`) and event channel (`u32`); dom0:
    /// offset and size of `console_info`.
    pub console: [u64; 2],
    /// Virtual address of the page directory.
    pub pt_base: u64,
    /// Number of bootstrap page-table frames.
    pub nr_pt_frames: u64,
    /// Virtual address of the pfn → mfn array.
    pub mfn_list: u64,
    /// Virtual address (or pfn) of a pre-loaded module.
    pub mod_start: u64,
    /// Size of the module.
    pub mod_len: u64,
    /// The command line.
    pub cmd_line: [u8; 1024],
    /// First pfn of the initial p2m table.
    pub first_p2m_pfn: u64,
    /// Pfns of the initial p2m table.
    pub nr_p2m_frames: u64,
}
const _: () = assert!(size_of::<StartInfo>() == 1168);
const _: () = assert!(core::mem::offset_of!(StartInfo, console) == 72);
const _: () = assert!(core::mem::offset_of!(StartInfo, mfn_list) == 104);

extern "C" {
    /// Defined by [`pv_entry!`]; Xen fills it in at boot.
    static hypercall_page: [u8; 4096];
}

/// What Xen handed over at boot.
#[derive(Debug, Clone, Copy)]
pub struct Boot {
    si: &'static StartInfo,
}

impl Boot {
    /// # Safety
    ///
    /// `si` is the `start_info` Xen passed in `rsi` at entry (mapped for
    /// the kernel's whole life, never written by the kernel), and the
    /// binary defines the hypercall page through [`pv_entry!`].
    pub unsafe fn new(si: *const StartInfo) -> Self {
        // SAFETY: the caller's contract.
        Self {
            si: unsafe { &*si },
        }
    }

    /// `start_info`.
    pub fn start_info(&self) -> &'static StartInfo {
        self.si
    }

    /// Whether this is dom0 (`SIF_INITDOMAIN`).
    pub fn is_dom0(&self) -> bool {
        self.si.flags & SIF_INITDOMAIN != 0
    }

    /// The hypercall page.
    pub fn hypercalls(&self) -> HypercallPage {
        hypercalls()
    }

    /// Shuts the domain down; under QEMU with `-no-reboot`,
    /// [`SHUTDOWN_REBOOT`] ends QEMU.
    pub fn shutdown(&self, reason: u32) -> ! {
        halt(reason)
    }
}

/// The hypercall page defined by [`pv_entry!`].
pub fn hypercalls() -> HypercallPage {
    // SAFETY: `hypercall_page` is the 4096-byte, page-aligned, executable
    // page that the ELF note XEN_ELFNOTE_HYPERCALL_PAGE names: Xen fills it
    // with its stubs before the kernel's first instruction.
    unsafe { HypercallPage::new(addr_of!(hypercall_page).cast()) }
}

/// Shuts the domain down with `reason`, forever.
pub fn halt(reason: u32) -> ! {
    loop {
        let _ = shutdown(&hypercalls(), reason);
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    say!("panic: {}", info);
    halt(SHUTDOWN_CRASH)
}

/// Defines the image's Xen ELF notes, `_start`, the hypercall page and a
/// 64 KiB boot stack, and calls `$main(boot: Boot) -> !`.
///
/// Notes (`xen/elfnote.h`): GUEST_OS, GUEST_VERSION, XEN_VERSION
/// "xen-3.0", LOADER "generic", VIRT_BASE and PADDR_OFFSET
/// `0xffffffff80000000`, ENTRY, HYPERCALL_PAGE, FEATURES "dom0" and
/// SUPPORTED_FEATURES bit 11 (`XENFEAT_dom0`).
#[macro_export]
macro_rules! pv_entry {
    ($main:path) => {
        core::arch::global_asm!(
            r#"
            .macro xennote type, kind, value
            .pushsection .note.Xen, "a", @note
            .balign 4
            .long 4
            .long 9f - 8f
            .long \type
            .asciz "Xen"
            .balign 4
        8:  \kind \value
        9:  .balign 4
            .popsection
            .endm
            .macro xnstr type, str
            .pushsection .note.Xen, "a", @note
            .balign 4
            .long 4
            .long 9f - 8f
            .long \type
            .asciz "Xen"
            .balign 4
        8:  .asciz "\str"
        9:  .balign 4
            .popsection
            .endm

            xnstr 6, "coresident"                  /* GUEST_OS */
            xnstr 7, "0.1"                         /* GUEST_VERSION */
            xnstr 5, "xen-3.0"                     /* XEN_VERSION */
            xnstr 8, "generic"                     /* LOADER */
            xennote 3,  .quad, 0xffffffff80000000  /* VIRT_BASE */
            xennote 4,  .quad, 0xffffffff80000000  /* PADDR_OFFSET */
            xennote 1,  .quad, _start              /* ENTRY */
            xennote 2,  .quad, hypercall_page      /* HYPERCALL_PAGE */
            xnstr 10, "dom0"                       /* FEATURES: may be dom0 */
            xennote 17, .long, (1 << 11)           /* SUPPORTED_FEATURES: XENFEAT_dom0 */

            .section .text.boot, "ax"
            .globl _start
        _start:
            lea  pv_boot_stack_top(%rip), %rsp
            mov  %rsi, %rdi             /* start_info (virtual) */
            call pv_rust_start
            ud2

            .balign 4096
            .globl hypercall_page
        hypercall_page:
            .skip 4096

            .section .bss.pv_boot_stack, "aw", @nobits
            .balign 16
            .skip 65536
        pv_boot_stack_top:
            "#,
            options(att_syntax)
        );

        #[no_mangle]
        extern "C" fn pv_rust_start(si: *const $crate::StartInfo) -> ! {
            // SAFETY: `_start` passes the start_info pointer Xen put in rsi,
            // and this macro defined the hypercall page.
            let boot = unsafe { $crate::Boot::new(si) };
            $main(boot)
        }
    };
}
