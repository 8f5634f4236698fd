//! The synchronisation facade of the coresident crates.
//!
//! Every atomic, fence and spin hint in `coresident-ring`, `coresident-lookup` and the
//! core comes from here, never from `core::sync` directly. A normal build re-exports
//! `core`'s types; a build with `RUSTFLAGS="--cfg loom"` re-exports [loom]'s, so the
//! same protocol code runs under the model checker. This is tokio's `loom` facade
//! (`tokio/src/loom/mod.rs`), shared by the crates that need it instead of copied into
//! each of them.
//!
//! [loom]: https://docs.rs/loom
//!
//! `UnsafeCell` follows loom's closure API (`with`, `with_mut`) in both builds, so
//! loom can check that no access to a cell races.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

#[cfg(not(loom))]
mod imp {
    pub use core::hint::spin_loop;
    pub use core::sync::atomic;

    /// `core::cell::UnsafeCell` with loom's closure API.
    #[derive(Debug, Default)]
    #[repr(transparent)]
    pub struct UnsafeCell<T>(core::cell::UnsafeCell<T>);

    impl<T> UnsafeCell<T> {
        /// Wraps `value`.
        pub const fn new(value: T) -> Self {
            Self(core::cell::UnsafeCell::new(value))
        }

        /// Calls `f` with a shared raw pointer to the contents.
        #[inline(always)]
        pub fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
            f(self.0.get())
        }

        /// Calls `f` with a unique raw pointer to the contents.
        #[inline(always)]
        pub fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
            f(self.0.get())
        }
    }
}

#[cfg(loom)]
mod imp {
    pub use loom::cell::UnsafeCell;
    pub use loom::hint::spin_loop;
    pub use loom::sync::atomic;
}

pub use imp::*;
