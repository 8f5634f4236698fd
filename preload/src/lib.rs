//! `libcoresident_preload.so`: unmodified, dynamically linked TCP programs on one host
//! take coresident's shared-memory ring when both ends run the library, and fall back
//! to TCP mid-stream, losing nothing, when that stops being possible.
//!
//! ```text
//!   program ── read/write/recv/send/poll/epoll_wait/... ──► libcoresident_preload.so
//!                                                              │
//!             descriptor not tracked (UDP, Unix, files, a     │ tracked TCP socket
//!             peer without the library, a remote host)        │ with an accelerated
//!             ◄──── passed through to the C library ──────────┤ connection
//!                                                              ▼
//!                                   socket emulation (blocking, flags, readiness)
//!                                                              │
//!                                             `Accelerated` ── coresident_net::Stream
//!                                                              (ring ⇄ TCP, byte offsets)
//! ```
//!
//! Load it with `LD_PRELOAD` (or `coresident run -- CMD`). How it works, which calls are
//! interposed, and what is not covered: `docs/preload.md`. Settings (environment):
//!
//! | variable | meaning |
//! |---|---|
//! | `CORESIDENT_DISABLE=1` | pass everything through |
//! | `CORESIDENT_SPIN_US` | the cap of the adaptive spin of a blocked call (default 20 µs, 0 on one CPU) |
//! | `CORESIDENT_LOG=PATH` (or `stderr`) | write the library's log there; nothing is written otherwise |
//! | `CORESIDENT_LOG_LEVEL` | `error`, `warn`, `info` (default), `debug`, `trace` |
//! | `CORESIDENT_REGISTRY=DIR` | the registry directory (see `coresident run --registry`) |
//! | `CORESIDENT_CREDENTIALS` | `same-uid` (default) or `any-uid` (containers sharing a registry directory) |
//! | `CORESIDENT_DISCOVERY` | `host` (default: the host registry), `xen` (dom0 and guests of one Xen host; the feature `xen`), `none`; anything else: plain TCP and a warning |
//! | `CORESIDENT_HANDSHAKE_MS` | one channel handshake's deadline (default 1000, 10000 with `xen`) |
//! | `CORESIDENT_INPROC=1` | accelerate connections within one process (a test aid) |
//! | `CORESIDENT_FAULT=name,...` | make internal steps fail, for the tests (see `state::fault`) |
//!
//! The library never panics into the host program and never aborts it: every hook runs
//! behind a panic barrier, and any internal failure means "this connection stays on
//! TCP", with the reason in the log.
// OS code: nothing for loom to model (the slot's protocol needs sequentially consistent
// atomics, which loom treats as acquire/release: Miri checks it, see `slot.rs`); under
// `--cfg loom` the crate is empty.
#![cfg(not(loom))]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs, missing_debug_implementations)]
// Under `cfg(test)` the exported symbols are left out (the test binary must not
// interpose its own C library calls), so what only they call looks unused.
#![cfg_attr(test, allow(dead_code))]

mod accel;
mod backend;
pub mod conn;
mod control;
mod epoll;
#[cfg(not(test))]
mod exports;
mod fdops;
mod guard;
mod io;
mod log;
pub mod mem;
mod netconn;
mod poll;
mod real;
mod slot;
mod sockaddr;
mod state;
mod wait;

#[cfg(test)]
mod tests;

pub use conn::{Accelerated, ConnStats, Path, Readiness, Reason, Shutdown};
pub use mem::MemConn;

/// The constructor: runs when the library is loaded, before the program's `main`.
#[cfg(not(test))]
#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn() = init;

/// Resolves every next symbol, installs the panic hook, the log and the fork handlers.
#[cfg(not(test))]
extern "C" fn init() {
    guard::quietly(|| {
        real::resolve_all();
        guard::install_panic_hook();
        log::init();
        let _ = state::config();
        // SAFETY: the handlers are `extern "C" fn()` that never unwind (each runs behind
        // the panic barrier).
        unsafe {
            libc::pthread_atfork(Some(fdops::fork::prepare), None, Some(fdops::fork::child));
        }
        // SAFETY: as above, a handler that never unwinds.
        unsafe {
            libc::atexit(fdops::at_exit);
        }
    });
}
