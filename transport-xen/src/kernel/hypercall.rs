//! Issuing hypercalls ([`Hypercall`], [`HypercallPage`]) and the handful of
//! non-grant, non-event hypercalls a PV kernel needs (console, scheduler,
//! page-table update, version).
//!
//! # Why not `xen-sys`'s `hypercall_1` … `hypercall_5`
//!
//! The `xen-sys` crate (0.0.0-pre2) supplies this crate's hypercall numbers,
//! `EVTCHNOP_*`/`SCHEDOP_*` constants and `evtchn_*` structs, but not its
//! hypercall functions, for four reasons:
//! - `hypercall_5` passes the fifth argument in `r9`; Xen's x86_64 PV ABI
//!   takes it in `r8` (`rdi, rsi, rdx, r10, r8`);
//! - they call through an `extern` static that must be named
//!   `HYPERCALL_PAGE`, so the page cannot be a value: no fake page, no host
//!   test of the register assignment;
//! - they declare `options(nostack)` around a `call`, which pushes a return
//!   address (and Xen's stub pushes `rcx`/`r11`): on a target with a red
//!   zone that overwrites live data;
//! - a debug build of Xen deliberately clobbers every argument register of
//!   the hypercall it ran (`0xDEADBEEF`); the 1–3 argument functions declare
//!   only the registers they pass.
//!
//! [`HypercallPage::hypercall`] is one `call` with all five argument
//! registers declared clobbered, tested on the host against a fake page
//! that records the registers it receives.
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
//! use coresident_xen::kernel::hypercall::xen_version;
//!
//! assert_eq!(xen_version(&fake(4 << 16 | 19)), (4, 19));
//! ```

use core::arch::asm;

use super::KernelError;

/// `DOMID_SELF` (`xen/xen.h`): "this domain" in hypercall arguments.
pub(crate) const DOMID_SELF: u16 = 0x7FF0;
/// `UVMF_INVLPG` (`xen/xen.h`): flush the one TLB entry of the address.
pub(crate) const UVMF_INVLPG: u64 = 2;
/// `UVMF_LOCAL` (`xen/xen.h`): on this vCPU only.
pub(crate) const UVMF_LOCAL: u64 = 0;
/// `SHUTDOWN_poweroff` (`xen/sched.h`).
///
/// # Examples
///
/// ```
/// use coresident_xen::kernel::hypercall::SHUTDOWN_POWEROFF;
///
/// // xen/include/public/sched.h: `#define SHUTDOWN_poweroff 0`
/// assert_eq!(SHUTDOWN_POWEROFF, 0);
/// ```
pub const SHUTDOWN_POWEROFF: u32 = 0;
/// `SHUTDOWN_reboot` (`xen/sched.h`): QEMU's `-no-reboot` turns it into an exit.
///
/// # Examples
///
/// ```
/// use coresident_xen::kernel::hypercall::SHUTDOWN_REBOOT;
///
/// // xen/include/public/sched.h: `#define SHUTDOWN_reboot 1`
/// assert_eq!(SHUTDOWN_REBOOT, 1);
/// ```
pub const SHUTDOWN_REBOOT: u32 = 1;
/// `SHUTDOWN_crash` (`xen/sched.h`).
///
/// # Examples
///
/// ```
/// use coresident_xen::kernel::hypercall::SHUTDOWN_CRASH;
///
/// // xen/include/public/sched.h: `#define SHUTDOWN_crash 3`
/// assert_eq!(SHUTDOWN_CRASH, 3);
/// ```
pub const SHUTDOWN_CRASH: u32 = 3;
/// Page-table entry bits of a writable kernel mapping: present, writable,
/// accessed, dirty (x86 PTE bits 0, 1, 5, 6).
pub(crate) const PTE_KERNEL_RW: u64 = 0x63;
/// `ENOSYS` as Xen returns it (`xen/errno.h`), negated.
pub(crate) const ENOSYS: i64 = -38;

/// Issues hypercalls: the one thing every Xen guest kernel does its own way
/// (hypercall page, `vmcall`, a test double).
///
/// # Safety
///
/// Implementors issue exactly hypercall `op` with `args`, and return Xen's
/// result, or behave like Xen would for the calls they emulate (tests):
/// callers rely on it for memory safety (a mapping that was reported made
/// is made).
///
/// # Examples
///
/// A test double (the crate's own unit tests use one), and the call it
/// answers:
///
/// ```
/// use core::cell::Cell;
/// use coresident_xen::kernel::hypercall::xen_version;
/// use coresident_xen::kernel::Hypercall;
///
/// /// Answers `XENVER_version` as Xen 4.19 would, refuses the rest.
/// struct Xen419 { calls: Cell<u32> }
/// // SAFETY: it emulates XENVER_version, which takes no pointer, and
/// // refuses every other call (`-ENOSYS`) without touching its arguments.
/// unsafe impl Hypercall for Xen419 {
///     unsafe fn hypercall(&self, op: u32, args: [u64; 5]) -> i64 {
///         self.calls.set(self.calls.get() + 1);
///         match (op, args[0]) {
///             (17, 0) => 4 << 16 | 19, // __HYPERVISOR_xen_version, XENVER_version
///             _ => -38,
///         }
///     }
/// }
/// let xen = Xen419 { calls: Cell::new(0) };
/// assert_eq!(xen_version(&xen), (4, 19));
/// assert_eq!(xen.calls.get(), 1);
/// ```
pub unsafe trait Hypercall {
    /// Issues hypercall `op` with `args` (x86_64: `rdi, rsi, rdx, r10, r8`;
    /// the ones the hypercall does not take are ignored) and returns Xen's
    /// result: 0 or more on success, a negated errno on failure.
    ///
    /// # Safety
    ///
    /// `args` are what hypercall `op` expects; every pointer among them is
    /// valid, for the duration of the call, for what Xen reads and writes
    /// through it (a page-table update can unmap memory: the caller owns
    /// the address it remaps).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::kernel::{Hypercall, HypercallPage};
    ///
    /// /// `XENVER_version` by hand (what `hypercall::xen_version` does).
    /// fn version(page: &HypercallPage) -> i64 {
    ///     // SAFETY: XENVER_version (0) takes no pointer argument.
    ///     unsafe { page.hypercall(17, [0; 5]) } // __HYPERVISOR_xen_version (xen/xen.h)
    /// }
    /// ```
    unsafe fn hypercall(&self, op: u32, args: [u64; 5]) -> i64;
}

/// The hypercall page Xen fills in at boot (ELF note
/// `XEN_ELFNOTE_HYPERCALL_PAGE`): 128 entries of 32 bytes of code, entry
/// `op` at `op * 32`.
///
/// # Examples
///
/// ```no_run
/// use coresident_xen::kernel::hypercall::{console_write, xen_version};
/// use coresident_xen::kernel::HypercallPage;
///
/// extern "C" {
///     /// The page the kernel's `XEN_ELFNOTE_HYPERCALL_PAGE` names (its
///     /// linker script reserves it in `.text`); Xen fills it in at boot.
///     static hypercall_page: [u8; 4096];
/// }
/// // SAFETY: Xen filled the page in before the kernel's first instruction.
/// let page = unsafe { HypercallPage::new(core::ptr::addr_of!(hypercall_page).cast()) };
/// let (major, minor) = xen_version(&page);
/// console_write(&page, if (major, minor) >= (4, 19) { b"new Xen\n" } else { b"old Xen\n" });
/// ```
#[derive(Clone, Copy, Debug)]
pub struct HypercallPage {
    base: *const u8,
}

// SAFETY: the page is code that Xen wrote once at boot and that nobody
// writes afterwards; calling it from any CPU is what it is for.
unsafe impl Send for HypercallPage {}
// SAFETY: as for `Send`: `&HypercallPage` only calls into immutable code.
unsafe impl Sync for HypercallPage {}

impl HypercallPage {
    /// The hypercall page at `base`.
    ///
    /// # Safety
    ///
    /// `base` is the start of 4096 bytes of executable memory holding 128
    /// hypercall stubs of 32 bytes that follow Xen's x86_64 PV convention
    /// (arguments in `rdi, rsi, rdx, r10, r8`, result in `rax`, other
    /// registers preserved but for `rcx` and `r11`), for as long as the
    /// value is used: the page Xen filled in, or a test's fake.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::kernel::HypercallPage;
    ///
    /// /// The hypercall page at `addr`, once Xen filled it in.
    /// ///
    /// /// # Safety
    /// ///
    /// /// `addr` is the kernel's `XEN_ELFNOTE_HYPERCALL_PAGE` page.
    /// const unsafe fn xen_page(addr: usize) -> HypercallPage {
    ///     // SAFETY: Xen's page (this function's contract) follows the PV convention.
    ///     unsafe { HypercallPage::new(addr as *const u8) }
    /// }
    /// ```
    pub const unsafe fn new(base: *const u8) -> Self {
        Self { base }
    }
}

// SAFETY: `hypercall` calls entry `op` of a page that `new`'s contract says
// is Xen's (or behaves like it), with the arguments unchanged.
unsafe impl Hypercall for HypercallPage {
    unsafe fn hypercall(&self, op: u32, args: [u64; 5]) -> i64 {
        if op >= 128 {
            return ENOSYS;
        }
        let entry = self.base.wrapping_add(op as usize * 32);
        let ret: i64;
        // SAFETY:
        // - `entry` is inside the page (`op < 128`), at a stub that follows
        //   the PV convention (`new`'s contract);
        // - every register the stub or a debug Xen may change is declared:
        //   the five argument registers, `rax` (result), `rcx` and `r11`
        //   (`syscall`); the stack is used (no `nostack`), and the target
        //   has no red zone to protect or the compiler keeps it clear;
        // - the memory the arguments point to is valid for Xen (the
        //   caller's contract).
        unsafe {
            asm!(
                "call {entry}",
                entry = in(reg) entry,
                inlateout("rdi") args[0] => _,
                inlateout("rsi") args[1] => _,
                inlateout("rdx") args[2] => _,
                inlateout("r10") args[3] => _,
                inlateout("r8") args[4] => _,
                lateout("rax") ret,
                lateout("rcx") _,
                lateout("r11") _,
            );
        }
        ret
    }
}

fn check(op: &'static str, rc: i64) -> Result<i64, KernelError> {
    if rc < 0 {
        Err(KernelError::Hypercall { op, rc })
    } else {
        Ok(rc)
    }
}

/// Writes `s` to Xen's console (`CONSOLEIO_write`; dom0 only in a release
/// build of Xen, a domU writes its PV console ring).
///
/// # Examples
///
/// ```
/// # use core::cell::Cell;
/// # use coresident_xen::kernel::Hypercall;
/// # /// Records the last call, answers `rc`: no Xen needed.
/// # struct Fake { last: Cell<(u32, [u64; 5])>, rc: i64 }
/// # // SAFETY: it emulates the calls of this example: it reads and maps nothing.
/// # unsafe impl Hypercall for Fake {
/// #     unsafe fn hypercall(&self, op: u32, args: [u64; 5]) -> i64 { self.last.set((op, args)); self.rc }
/// # }
/// # let fake = |rc| Fake { last: Cell::new((0, [0; 5])), rc };
/// use coresident_xen::kernel::hypercall::console_write;
///
/// let xen = fake(0);
/// console_write(&xen, b"hello from a PV guest\n");
/// let (op, args) = xen.last.get();
/// // __HYPERVISOR_console_io, CONSOLEIO_write (xen/xen.h), the length.
/// assert_eq!((op, args[0], args[1]), (18, 0, 22));
/// ```
pub fn console_write<H: Hypercall + ?Sized>(h: &H, s: &[u8]) {
    // SAFETY: CONSOLEIO_write reads `s.len()` bytes at `s.as_ptr()`, valid
    // for the call.
    let _ = unsafe {
        h.hypercall(
            xen_sys::__HYPERVISOR_console_io,
            [
                u64::from(xen_sys::CONSOLEIO_write),
                s.len() as u64,
                s.as_ptr() as u64,
                0,
                0,
            ],
        )
    };
}

/// Xen's version, `(major, minor)` (`XENVER_version`).
///
/// # Examples
///
/// ```
/// # use core::cell::Cell;
/// # use coresident_xen::kernel::Hypercall;
/// # /// Records the last call, answers `rc`: no Xen needed.
/// # struct Fake { last: Cell<(u32, [u64; 5])>, rc: i64 }
/// # // SAFETY: it emulates the calls of this example: it reads and maps nothing.
/// # unsafe impl Hypercall for Fake {
/// #     unsafe fn hypercall(&self, op: u32, args: [u64; 5]) -> i64 { self.last.set((op, args)); self.rc }
/// # }
/// # let fake = |rc| Fake { last: Cell::new((0, [0; 5])), rc };
/// use coresident_xen::kernel::hypercall::xen_version;
///
/// // Xen answers `major << 16 | minor`.
/// assert_eq!(xen_version(&fake(4 << 16 | 19)), (4, 19));
/// ```
pub fn xen_version<H: Hypercall + ?Sized>(h: &H) -> (u16, u16) {
    // SAFETY: XENVER_version (0) takes no buffer.
    let v = unsafe { h.hypercall(xen_sys::__HYPERVISOR_xen_version, [0; 5]) };
    ((v >> 16) as u16, v as u16)
}

/// Shuts this domain down with `reason` (`SCHEDOP_shutdown`).
///
/// # Errors
///
/// Only if Xen refuses; on success it does not return to the caller's
/// next instruction in any useful sense (the domain is gone).
///
/// # Examples
///
/// ```
/// # use core::cell::Cell;
/// # use coresident_xen::kernel::Hypercall;
/// # /// Records the last call, answers `rc`: no Xen needed.
/// # struct Fake { last: Cell<(u32, [u64; 5])>, rc: i64 }
/// # // SAFETY: it emulates the calls of this example: it reads and maps nothing.
/// # unsafe impl Hypercall for Fake {
/// #     unsafe fn hypercall(&self, op: u32, args: [u64; 5]) -> i64 { self.last.set((op, args)); self.rc }
/// # }
/// # let fake = |rc| Fake { last: Cell::new((0, [0; 5])), rc };
/// use coresident_xen::kernel::hypercall::{shutdown, SHUTDOWN_POWEROFF};
/// use coresident_xen::kernel::KernelError;
///
/// let xen = fake(0);
/// shutdown(&xen, SHUTDOWN_POWEROFF)?;
/// let (op, args) = xen.last.get();
/// assert_eq!((op, args[0]), (29, 2)); // __HYPERVISOR_sched_op, SCHEDOP_shutdown
/// // A refusal is Xen's negated errno.
/// let refused = shutdown(&fake(-1), SHUTDOWN_POWEROFF);
/// assert_eq!(refused, Err(KernelError::Hypercall { op: "sched_op(shutdown)", rc: -1 }));
/// # Ok::<(), KernelError>(())
/// ```
pub fn shutdown<H: Hypercall + ?Sized>(h: &H, reason: u32) -> Result<(), KernelError> {
    let r = reason;
    // SAFETY: `struct sched_shutdown` is one `unsigned int`, read by Xen
    // during the call.
    let rc = unsafe {
        h.hypercall(
            xen_sys::__HYPERVISOR_sched_op,
            [
                u64::from(xen_sys::SCHEDOP_shutdown),
                core::ptr::addr_of!(r) as u64,
                0,
                0,
                0,
            ],
        )
    };
    check("sched_op(shutdown)", rc).map(drop)
}

/// `struct sched_poll` (`xen/sched.h`): the ports to wait on, and an absolute
/// timeout in Xen system time (ns), 0 for none.
#[repr(C)]
#[derive(Debug)]
struct SchedPoll {
    ports: u64,
    nr_ports: u32,
    _pad: u32,
    timeout: u64,
}
const _: () = assert!(size_of::<SchedPoll>() == size_of::<xen_sys::sched_poll>());
const _: () = assert!(core::mem::offset_of!(SchedPoll, timeout) == 16);

/// Blocks this vCPU until one of `ports` is pending (whether or not it is
/// masked) or Xen's system time reaches `until_ns` (0: no timeout)
/// (`SCHEDOP_poll`). Returns at once if one is pending already.
///
/// # Errors
///
/// Xen's refusal (more than 128 ports, a bad port).
///
/// # Examples
///
/// ```
/// # use core::cell::Cell;
/// # use coresident_xen::kernel::Hypercall;
/// # /// Records the last call, answers `rc`: no Xen needed.
/// # struct Fake { last: Cell<(u32, [u64; 5])>, rc: i64 }
/// # // SAFETY: it emulates the calls of this example: it reads and maps nothing.
/// # unsafe impl Hypercall for Fake {
/// #     unsafe fn hypercall(&self, op: u32, args: [u64; 5]) -> i64 { self.last.set((op, args)); self.rc }
/// # }
/// # let fake = |rc| Fake { last: Cell::new((0, [0; 5])), rc };
/// use coresident_xen::kernel::hypercall::poll;
///
/// let xen = fake(0);
/// // Wait for port 5, at most until Xen's system time reaches 2 s.
/// poll(&xen, &[5], 2_000_000_000)?;
/// let (op, args) = xen.last.get();
/// assert_eq!((op, args[0]), (29, 3)); // __HYPERVISOR_sched_op, SCHEDOP_poll
/// # Ok::<(), coresident_xen::kernel::KernelError>(())
/// ```
pub fn poll<H: Hypercall + ?Sized>(h: &H, ports: &[u32], until_ns: u64) -> Result<(), KernelError> {
    let p = SchedPoll {
        ports: ports.as_ptr() as u64,
        nr_ports: u32::try_from(ports.len()).unwrap_or(u32::MAX),
        _pad: 0,
        timeout: until_ns,
    };
    // SAFETY: Xen reads the struct and `nr_ports` ports from `ports`, both
    // valid for the call.
    let rc = unsafe {
        h.hypercall(
            xen_sys::__HYPERVISOR_sched_op,
            [
                u64::from(xen_sys::SCHEDOP_poll),
                core::ptr::addr_of!(p) as u64,
                0,
                0,
                0,
            ],
        )
    };
    check("sched_op(poll)", rc).map(drop)
}

/// Maps machine frame `mfn` writable at the page-aligned virtual address
/// `va` of this vCPU's address space (`update_va_mapping`, x86 PV), flushing
/// that address from the local TLB. What `va` mapped before is unmapped.
///
/// # Safety
///
/// Nothing may use what `va` mapped before through a reference or pointer
/// afterwards, `va` must lie where the kernel's page tables have an L1
/// table, and `mfn` must be a frame this domain may map writable (its own,
/// shared_info, a grant-table frame).
///
/// # Examples
///
/// ```
/// # use core::cell::Cell;
/// # use coresident_xen::kernel::Hypercall;
/// # /// Records the last call, answers `rc`: no Xen needed.
/// # struct Fake { last: Cell<(u32, [u64; 5])>, rc: i64 }
/// # // SAFETY: it emulates the calls of this example: it reads and maps nothing.
/// # unsafe impl Hypercall for Fake {
/// #     unsafe fn hypercall(&self, op: u32, args: [u64; 5]) -> i64 { self.last.set((op, args)); self.rc }
/// # }
/// # let fake = |rc| Fake { last: Cell::new((0, [0; 5])), rc };
/// use coresident_xen::kernel::update_va_mapping;
///
/// let xen = fake(0);
/// // SAFETY: the double maps nothing; with Xen, `va` would be a page of
/// // the kernel's own window.
/// unsafe { update_va_mapping(&xen, 0xffff_c000_0000_0000, 0x1234)? };
/// let (op, args) = xen.last.get();
/// assert_eq!(op, 14); // __HYPERVISOR_update_va_mapping
/// assert_eq!((args[0], args[1] >> 12), (0xffff_c000_0000_0000, 0x1234)); // va, the frame in the PTE
/// # Ok::<(), coresident_xen::kernel::KernelError>(())
/// ```
pub unsafe fn update_va_mapping<H: Hypercall + ?Sized>(
    h: &H,
    va: u64,
    mfn: u64,
) -> Result<(), KernelError> {
    // SAFETY: the caller's contract: `va` is the caller's to remap, `mfn`
    // mappable; no pointer argument.
    let rc = unsafe {
        h.hypercall(
            xen_sys::__HYPERVISOR_update_va_mapping,
            [
                va,
                (mfn << 12) | PTE_KERNEL_RW,
                UVMF_INVLPG | UVMF_LOCAL,
                0,
                0,
            ],
        )
    };
    check("update_va_mapping", rc).map(drop)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use core::arch::global_asm;

    // A fake hypercall page: entry `i` loads `i` into eax and jumps to a
    // common tail that records rdi, rsi, rdx, r10, r8, rcx, r11 as the stub
    // saw them, then clobbers the argument registers like a debug Xen, and
    // returns `i` in rax. Code, so in .text; the records in .bss.
    global_asm!(
        r#"
        .pushsection .text.coresident_fake_hcall, "ax", @progbits
        .balign 4096
        .globl coresident_fake_hcall_page
    coresident_fake_hcall_page:
        .set i, 0
        .rept 128
        .balign 32
        mov $i, %eax
        jmp coresident_fake_hcall_tail
        .set i, i + 1
        .endr
        .balign 32
    coresident_fake_hcall_tail:
        mov %rdi, coresident_fake_hcall_regs+0(%rip)
        mov %rsi, coresident_fake_hcall_regs+8(%rip)
        mov %rdx, coresident_fake_hcall_regs+16(%rip)
        mov %r10, coresident_fake_hcall_regs+24(%rip)
        mov %r8,  coresident_fake_hcall_regs+32(%rip)
        mov %r9,  coresident_fake_hcall_regs+40(%rip)
        mov $0xdeadbeef, %edi
        mov $0xdeadbeef, %esi
        mov $0xdeadbeef, %edx
        mov $0xdeadbeef, %r10d
        mov $0xdeadbeef, %r8d
        mov $0xdeadbeef, %ecx
        mov $0xdeadbeef, %r11d
        ret
        .popsection
        .pushsection .bss.coresident_fake_hcall, "aw", @nobits
        .balign 8
        .globl coresident_fake_hcall_regs
    coresident_fake_hcall_regs:
        .skip 48
        .popsection
    "#,
        options(att_syntax)
    );

    extern "C" {
        static coresident_fake_hcall_page: u8;
        static coresident_fake_hcall_regs: [u64; 6];
    }

    /// Serialises the tests that use the fake page (it records into one
    /// static).
    pub(crate) static FAKE_PAGE: std::sync::Mutex<()> = std::sync::Mutex::new(());

    pub(crate) fn fake_page() -> HypercallPage {
        // SAFETY: the symbol is the 4096-byte fake page above, 128 stubs of
        // 32 bytes (`mov` 5 bytes + `jmp` ≤ 5 bytes each) that take the PV
        // convention's registers and return in rax, clobbering only the
        // argument registers, rcx and r11.
        unsafe { HypercallPage::new(core::ptr::addr_of!(coresident_fake_hcall_page)) }
    }

    fn recorded() -> [u64; 6] {
        // SAFETY: the stub wrote it during the call that returned before
        // this read, on this thread; a volatile read of plain integers.
        unsafe { core::ptr::addr_of!(coresident_fake_hcall_regs).read_volatile() }
    }

    #[test]
    fn five_arguments_reach_rdi_rsi_rdx_r10_r8() {
        let _g = FAKE_PAGE.lock().unwrap();
        let page = fake_page();
        for op in [0u32, 1, 20, 32, 127] {
            let args = [0x11, 0x22_0000_0000, 0x33, 0x44, 0x55 + u64::from(op)];
            // SAFETY: the fake page reads no memory.
            let rc = unsafe { page.hypercall(op, args) };
            assert_eq!(rc, i64::from(op), "entry {op} returned another index");
            let r = recorded();
            assert_eq!(r[..5], args, "op {op}: rdi, rsi, rdx, r10, r8");
            assert_ne!(r[5], args[4], "the fifth argument must not be in r9");
        }
        // SAFETY: refused before any call.
        assert_eq!(unsafe { page.hypercall(128, [0; 5]) }, ENOSYS);
    }

    #[test]
    fn values_live_across_a_clobbering_call_survive() {
        let _g = FAKE_PAGE.lock().unwrap();
        let page = fake_page();
        // Values the compiler may keep in registers across the call: a
        // wrong clobber list would let the fake's 0xdeadbeef leak in.
        let mut acc = [1u64, 2, 3, 4, 5, 6, 7, 8];
        for round in 0..64u64 {
            // SAFETY: the fake page reads no memory.
            let rc = unsafe { page.hypercall(3, [round, round, round, round, round]) };
            for (i, a) in acc.iter_mut().enumerate() {
                *a = a
                    .wrapping_mul(31)
                    .wrapping_add(round ^ i as u64 ^ rc as u64);
            }
        }
        let mut want = [1u64, 2, 3, 4, 5, 6, 7, 8];
        for round in 0..64u64 {
            for (i, a) in want.iter_mut().enumerate() {
                *a = a.wrapping_mul(31).wrapping_add(round ^ i as u64 ^ 3);
            }
        }
        assert_eq!(acc, want);
    }
}
