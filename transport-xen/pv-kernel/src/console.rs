//! The kernel's console: Xen's console through `console_io`
//! (`CONSOLEIO_write`, what dom0 sees on the serial line), unless the
//! kernel installs its own writer with [`set_console`]. A release build of
//! Xen refuses `console_io` to a domU, which installs its PV console ring
//! writer instead, so `say!` and the panic handler reach dom0's log in
//! both flavours.

use core::fmt;
use core::sync::atomic::{AtomicPtr, Ordering};

use coresident_xen::kernel::hypercall::console_write;

/// A console writer the kernel installs ([`set_console`]). It must not
/// panic, and must cope with being called again while it runs (a panic
/// inside it): refuse (return `Err`) rather than re-enter what it writes.
pub type ConsoleHook = fn(&str) -> fmt::Result;

/// The installed [`ConsoleHook`] as a pointer, or null.
static HOOK: AtomicPtr<()> = AtomicPtr::new(core::ptr::null_mut());

/// From now on, [`Console`] (so `say!` and the panic handler) writes
/// through `hook`; where it fails, to Xen's console.
pub fn set_console(hook: ConsoleHook) {
    HOOK.store(hook as *mut (), Ordering::Release);
}

fn hook() -> Option<ConsoleHook> {
    let p = HOOK.load(Ordering::Acquire);
    if p.is_null() {
        return None;
    }
    // SAFETY: `HOOK` only ever holds null or a `ConsoleHook` cast to a
    // pointer (`set_console`); on x86_64 a function pointer and a data
    // pointer have one size and representation, so this is that very
    // function pointer again.
    Some(unsafe { core::mem::transmute::<*mut (), ConsoleHook>(p) })
}

/// Writes to the installed console, or Xen's.
#[derive(Debug, Clone, Copy, Default)]
pub struct Console;

impl fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if hook().is_some_and(|h| h(s).is_ok()) {
            return Ok(());
        }
        console_write(&crate::hypercalls(), s.as_bytes());
        Ok(())
    }
}

/// `say!("fmt", args..)`: one line on the kernel's console (formatted in
/// pieces, no allocation).
#[macro_export]
macro_rules! say {
    ($($t:tt)*) => {{
        use core::fmt::Write as _;
        let _ = writeln!($crate::console::Console, $($t)*);
    }};
}
