//! Running the library's own code inside a host program: the re-entrance guard, the
//! panic barrier, errno.
//!
//! # Re-entrance
//!
//! The library's code calls the C library too: the standard library, the transports and
//! the log writer call `read`, `close`, `sendmsg`... through the same symbols this library
//! interposes. While a thread runs library code a thread-local depth is non-zero, and
//! every hook entered then passes straight through to the next definition: the library
//! never re-enters itself, never takes its own locks twice, and its internal descriptors
//! are never mistaken for the application's. (Its own system calls mostly go through
//! rustix's raw-syscall backend and do not reach the hooks at all.)
//!
//! The guard is held only while library code runs, never around a call the library
//! passes through on the application's behalf: a blocking `read` of a plain socket runs
//! unguarded, so a signal handler that interrupts it sees the hooks as usual.
//!
//! A signal handler that interrupts *library* code and uses an accelerated socket is
//! the case this cannot cover: the hooks pass it through to the idle TCP socket. No
//! program tried does that (see `docs/preload.md`).
//!
//! # Panics
//!
//! A panic must never cross into the host program (unwinding out of an `extern "C"`
//! function aborts). Every hook runs its body under [`catch_unwind`]; a panic is
//! recorded (see [`panics`]), turns the call into `-1`/`EIO`, and switches acceleration
//! off for connections made from then on. The crate is built with `panic = "unwind"` (the
//! workspace default) for this; an allocation failure still aborts, as it does in the
//! C library.

use core::cell::Cell;
use core::ffi::c_int;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::panic::{catch_unwind, AssertUnwindSafe};

std::thread_local! {
    /// How deep this thread is in library code (0: application code).
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Whether this thread is running library code (hooks must pass through).
#[inline]
pub(crate) fn inside() -> bool {
    DEPTH.with(|d| d.get() != 0)
}

/// Marks this thread as running library code until dropped.
#[derive(Debug)]
pub(crate) struct Inside(());

impl Inside {
    /// Enters library code.
    #[inline]
    pub(crate) fn enter() -> Self {
        DEPTH.with(|d| d.set(d.get().saturating_add(1)));
        Self(())
    }
}

impl Drop for Inside {
    #[inline]
    fn drop(&mut self) {
        DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
    }
}

/// Panics caught at the barrier since the library was loaded.
static PANICS: AtomicU64 = AtomicU64::new(0);
/// Set by the first caught panic: no new connection is accelerated after it.
static POISONED: AtomicBool = AtomicBool::new(false);

/// How many panics the barrier caught.
pub(crate) fn panics() -> u64 {
    // Relaxed: a statistic.
    PANICS.load(Ordering::Relaxed)
}

/// Whether a panic was caught (new connections then stay on TCP).
pub(crate) fn poisoned() -> bool {
    // Relaxed: a flag read once per new connection; a late view accelerates one more
    // connection, which is as safe as the ones before.
    POISONED.load(Ordering::Relaxed)
}

/// What a hook body decided.
#[derive(Debug)]
pub(crate) enum Verdict<T> {
    /// The library handled the call: return this.
    Done(T),
    /// Not the library's business: call the next definition (outside the guard).
    Pass,
}

/// Runs a hook body as library code, behind the panic barrier.
///
/// `body` runs with the guard held; if it says [`Verdict::Pass`], `pass` runs after the
/// guard is released. A panic in `body` is caught: it is recorded, errno is set to
/// `EIO`, and `-1` is returned.
#[inline]
pub(crate) fn hook<T: crate::real::Failure>(
    body: impl FnOnce() -> Verdict<T>,
    pass: impl FnOnce() -> T,
) -> T {
    if inside() {
        return pass();
    }
    let verdict = {
        let _inside = Inside::enter();
        catch_unwind(AssertUnwindSafe(body))
    };
    match verdict {
        Ok(Verdict::Done(v)) => v,
        Ok(Verdict::Pass) => pass(),
        Err(_) => {
            caught_panic();
            set_errno(libc::EIO);
            T::failure()
        }
    }
}

/// Runs `f` as library code behind the panic barrier, for work that returns nothing to
/// the application (constructors, fork handlers, the control thread).
pub(crate) fn quietly(f: impl FnOnce()) {
    let _inside = Inside::enter();
    if catch_unwind(AssertUnwindSafe(f)).is_err() {
        caught_panic();
    }
}

/// Records a caught panic.
#[cold]
pub(crate) fn caught_panic() {
    // Relaxed: statistics and a one-way flag (see `poisoned`).
    PANICS.fetch_add(1, Ordering::Relaxed);
    POISONED.store(true, Ordering::Relaxed);
    crate::log::raw_line(
        b"coresident_preload: internal panic caught at the hook barrier; new connections stay on TCP\n",
    );
}

/// Installs the panic hook: the message goes to the library's log (if the user asked
/// for one), never to the program's stderr.
pub(crate) fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        // Nothing here may panic (a panic in the hook aborts): no thread-locals, no
        // `tracing` (its subscriber asks for the current thread), no allocation. The
        // location goes to the log with raw writes.
        crate::log::raw_line(b"coresident_preload: internal panic: ");
        if let Some(msg) = info.payload().downcast_ref::<&str>() {
            crate::log::raw_line(msg.as_bytes());
        } else if let Some(msg) = info.payload().downcast_ref::<String>() {
            crate::log::raw_line(msg.as_bytes());
        }
        crate::log::raw_line(b" at ");
        if let Some(loc) = info.location() {
            crate::log::raw_line(loc.file().as_bytes());
            let mut line = [0u8; 12];
            let mut n = loc.line();
            let mut i = line.len();
            line[i - 1] = b'\n';
            i -= 1;
            loop {
                i -= 1;
                line[i] = b'0' + (n % 10) as u8;
                n /= 10;
                if n == 0 || i == 1 {
                    break;
                }
            }
            i -= 1;
            line[i] = b':';
            crate::log::raw_line(&line[i..]);
        } else {
            crate::log::raw_line(b"(unknown)\n");
        }
    }));
}

/// This thread's errno.
#[inline]
pub(crate) fn errno() -> c_int {
    // SAFETY: `__errno_location` returns this thread's errno slot, always valid.
    unsafe { *libc::__errno_location() }
}

/// Sets this thread's errno.
#[inline]
pub(crate) fn set_errno(e: c_int) {
    // SAFETY: as in `errno`.
    unsafe { *libc::__errno_location() = e };
}

/// `-1` with errno `e`: the C convention for a failed call.
#[inline]
pub(crate) fn fail<T: crate::real::Failure>(e: c_int) -> T {
    set_errno(e);
    T::failure()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_nests_and_unwinds() {
        assert!(!inside());
        {
            let _a = Inside::enter();
            assert!(inside());
            {
                let _b = Inside::enter();
                assert!(inside());
            }
            assert!(inside());
        }
        assert!(!inside());
    }

    #[test]
    fn hook_passes_inside_and_catches_panics() {
        let r: c_int = hook(|| Verdict::Done(7), || 1);
        assert_eq!(r, 7);
        let r: c_int = hook(|| Verdict::Pass, || 1);
        assert_eq!(r, 1);
        // Inside library code, the body never runs.
        let r: c_int = {
            let _i = Inside::enter();
            hook(|| panic!("must not run"), || 2)
        };
        assert_eq!(r, 2);
        let before = panics();
        let r: c_int = hook(|| panic!("boom"), || 3);
        assert_eq!(r, -1);
        assert_eq!(errno(), libc::EIO);
        assert!(panics() > before);
        assert!(!inside(), "the guard is released after a panic");
    }
}
