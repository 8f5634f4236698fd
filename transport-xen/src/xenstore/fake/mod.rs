//! The tests' xenstoreds, in one place:
//! - [`FakeXenstored`] (`store.rs`, feature `std`): the one daemon over
//!   sockets, multi-domain, enforcing permissions, watches and optimistic
//!   transactions as xenstored does. The socket client's tests, the
//!   rendezvous's and the residency agent's all use it.
//! - [`engine`]: the request engine both answer through (core-only, so
//!   Miri runs it), independent of sockets and threads.
//! - [`ring`]: a simulated daemon behind a `start_info` ring page, for
//!   the ring client (core-only: Miri runs it), with misbehaviours to
//!   order.

// Without `std` only the ring's own tests build: the socket daemon's
// half of the engine and the rendezvous's helpers of the ring go unused.
#[cfg_attr(not(all(feature = "std", target_os = "linux")), allow(dead_code))]
pub(crate) mod engine;
#[cfg_attr(not(feature = "std"), allow(dead_code))]
pub(crate) mod ring;
#[cfg(all(feature = "std", target_os = "linux"))]
mod store;

#[cfg(all(feature = "std", target_os = "linux"))]
pub(crate) use store::FakeXenstored;
