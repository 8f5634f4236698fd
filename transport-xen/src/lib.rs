//! coresident's Xen transport: the shared region lives in grant pages, the
//! doorbells are event channels, and the rendezvous goes through XenStore.
//!
//! ```text
//!   dom A (offers)                                   dom B (accepts)
//!   ┌──────────────────────┐   grant refs, port     ┌──────────────────────┐
//!   │ Gntalloc::share(B,n) │──── via XenStore ─────▶│ Gntdev::map(A, refs) │
//!   │   SharedPages ───────┼──── same frames ───────┼─── ForeignPages      │
//!   │ Evtchn::bind_unbound │◀─── event channel ────▶│ Evtchn::bind_inter.. │
//!   │ XenStore (socket)    │   /local/domain/B/...  │ XenStore (xenbus)    │
//!   └──────────────────────┘                        └──────────────────────┘
//!   unmap-notify: whoever goes away last-minute clears a "live" byte in the
//!   shared pages and signals the port, so the survivor sees peer death.
//! ```
//!
//! One concept per folder, bottom up:
//! - [`types`]: the shared ids ([`DomId`], [`GrantRef`], [`EvtchnPort`])
//!   and limits; `lib.rs` only declares modules and re-exports.
//! - [`protocol`] (`core` only): [`protocol::xs_wire`], the XenStore wire
//!   protocol (`xen/io/xs_wire.h`); [`protocol::crxg`], the offer
//!   ([`protocol::crxg::Offer`]: one `encode`, one `parse`) and the page
//!   layout; [`protocol::keys`], the rendezvous's XenStore keys, limits,
//!   write order and value checks, with one
//!   [`KeyError`](protocol::keys::KeyError).
//! - [`xenstore`]: one client trait, [`xenstore::XsClient`] (every verb,
//!   watches, transactions), implemented by `xenstore::socket` (xenstored's
//!   socket in dom0, `/dev/xen/xenbus` in any domain; feature `std`) and
//!   [`xenstore::ring`] (a PV guest kernel's `start_info` ring, `core`
//!   only).
//! - [`backend`]: [`backend::XenBackend`], what the transport needs of a
//!   way to reach Xen (grant and map pages, ports, the release signal,
//!   Xen's word on a port); `linux` implements it over the `/dev/xen`
//!   devices (gntalloc, gntdev, evtchn, privcmd, behind a `Sys` trait so
//!   unit tests swap in a fake driver; feature `std`).
//! - [`transport`]: one [`transport::XenTransport`], the core's `Transport`
//!   over any backend (region, event-channel doorbell, live bytes for peer
//!   death).
//! - [`rendezvous`]: one [`rendezvous::Rendezvous`], the transport's offer
//!   and answer as XenStore keys with permissions and watches, over any
//!   client; [`rendezvous::ChannelKeys`] is its XenStore side alone (the
//!   `pv-domu` kernel drives it over the ring).
//! - [`guest`] (`core` only): PV-guest pieces, the console ring.
//! - `kernel` (feature `xen-sys`, x86_64, `no_std`): grant table v1, event
//!   channels and `KernelTransport` over hypercalls, for a PV guest kernel
//!   that supplies them through the `Kernel` trait (docs/kernel.md).
//! - [`residency`]: residency detection: the dom0 [`residency::Agent`]
//!   lists each advertising domain's co-resident peers, and a guest's
//!   [`residency::ResidencyView`] keeps its residency tables in step (keys,
//!   writers and permissions in the module docs).
//!
//! # The rendezvous, in order
//!
//! Offerer O, acceptor A, channel `NAME` (details and every key in
//! [`rendezvous`]):
//! 1. O shares the pages with A (gntalloc), allocates an unbound port for
//!    A, lays both rings out and sets its live byte.
//! 2. O writes `/local/domain/O/data/coresident/channels/A/NAME/offer/`
//!    with permissions `[n O, r A]`: `version`, `port`, `to-acceptor`,
//!    `to-offerer`, `nrefs`, `refs0`…, and `state=offered` last.
//! 3. A, watching that directory, reads and validates every key, maps the
//!    pages (gntdev), binds the port, sets its live byte and rings.
//! 4. A writes `/local/domain/A/data/coresident/channels/O/NAME/answer/`
//!    with `[n A, r O]`: `version`, `offer-port`, `port`, `state=accepted`
//!    last (or `error` and `state=refused`).
//! 5. O, watching the answer, sees `accepted` (or A's live byte), removes
//!    its offer and starts; A removes its answer ([`Rendezvous::withdraw`]).
//!
//! # The pages
//!
//! ```text
//!  pages granted by O, mapped by A
//!  ┌─────────────────────────┬─────────────────────────┬──────────────────┐
//!  │ ring O→A: header, then  │ ring A→O (at a 128-byte │ live page: byte 0│
//!  │ a 2^k-byte data area    │ aligned offset)         │ O, byte 64 A     │
//!  └─────────────────────────┴─────────────────────────┴──────────────────┘
//!   0           ChannelLayout::region_len, rounded up to a page   + 4096
//! ```
//! Each ring is `coresident_ring`'s layout (header line, producer and
//! consumer index and event lines, data area). A live byte is 1 while its
//! side runs; unmap-notify clears it and signals the port when the side's
//! process exits or unmaps. A destroyed domain runs no unmap-notify: the
//! survivor's doorbell learns of `xl destroy` from Xen, which has closed the
//! dead domain's end of the event channel ([`XenDoorbell`] asks through
//! `/dev/xen/privcmd`), and XenStore says so too
//! ([`Rendezvous::watch_peer`]).
//!
//! # A daemon in a guest
//!
// Compiled (not run) as a doctest with `std`; without it the example's
// modules do not exist.
#![cfg_attr(feature = "std", doc = "```no_run")]
#![cfg_attr(not(feature = "std"), doc = "```ignore")]
//! use std::time::Duration;
//! use coresident::{Channel, ChannelConfig, ChannelLayout, StdClock};
//! use coresident_xen::rendezvous::{own_domid, Rendezvous};
//! use coresident_xen::XenStore;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // XenStore through /dev/xen/xenbus (in dom0: xenstored's socket).
//! let mut xs = XenStore::open()?;
//! let own = own_domid(&mut xs)?;
//! // Offer channel "logs" to dom0, 64 KiB rings each way; dom0 runs
//! // `Rendezvous::new(0, guest, "logs")?.accept(&mut xs, timeout)`.
//! let mut rdv = Rendezvous::new(own, 0, "logs")?;
//! let pending = rdv.offer(&mut xs, ChannelLayout::symmetric(64 * 1024))?;
//! let link = pending.complete(&mut xs, Some(Duration::from_secs(30)))?;
//! let mut ch = Channel::new(link, ChannelConfig::default(), StdClock::default())?;
//! ch.send(b"hello from a guest")?;
//! let mut buf = vec![0; ch.max_incoming()];
//! let n = ch.recv_blocking(&mut buf, Some(Duration::from_secs(5)))?;
//! println!("dom0 answered {:?}", &buf[..n]);
//! # Ok(())
//! # }
//! ```
//!
//! # The peer is not trusted
//!
//! Pages a peer can write are never behind `&`/`&mut`: a backend's pages
//! ([`backend::GrantedPages`]) are a raw pointer and a length, touched by
//! atomics and volatile copies only.
//! Everything read from XenStore (a guest writes its own subtree freely) is
//! parsed with checked conversions into typed errors, never a panic.
//!
//! # Features
//!
//! - `std` (default): the Linux userspace modules (the devices and their
//!   backend, the XenStore socket client, [`residency`]; the aliases
//!   [`XenTransport`] and [`Rendezvous`] over them); without it the crate
//!   is `no_std` and keeps the `core`-only modules.
//! - `xen-sys` (x86_64): the `kernel` module, with or without `std`.
//!
// Without `std` the Linux modules do not exist: the links above point here.
#![cfg_attr(
    not(all(feature = "std", target_os = "linux")),
    doc = "[`XenTransport`]: crate#features
[`XenDoorbell`]: crate#features
[`Rendezvous`]: crate#features
[`Rendezvous::withdraw`]: crate#features
[`Rendezvous::watch_peer`]: crate#features
[`residency`]: crate#features
[`residency::Agent`]: crate#features
[`residency::ResidencyView`]: crate#features
[`mapping::Mapping`]: crate#features"
)]
#![cfg_attr(not(feature = "std"), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs, missing_debug_implementations)]

pub mod backend;
pub mod guest;
pub mod protocol;
pub mod rendezvous;
mod shared;
pub mod transport;
pub mod types;
pub mod xenstore;

#[cfg(all(feature = "xen-sys", target_arch = "x86_64"))]
pub mod kernel;

#[cfg(all(feature = "std", target_os = "linux"))]
pub mod linux;
#[cfg(all(feature = "std", target_os = "linux"))]
pub mod residency;

pub use types::{DomId, EvtchnPort, GrantRef, UnmapNotify, MAX_PAGES, XEN_PAGE_SIZE};

#[cfg(all(feature = "std", target_os = "linux"))]
pub use linux::error::{EvtchnError, EvtchnOp, GrantError, GrantOp};
#[cfg(all(feature = "std", target_os = "linux"))]
pub use linux::evtchn::Evtchn;
#[cfg(all(feature = "std", target_os = "linux"))]
pub use linux::gntalloc::{Gntalloc, SharedPages};
#[cfg(all(feature = "std", target_os = "linux"))]
pub use linux::gntdev::{ForeignPages, Gntdev};
#[cfg(all(feature = "std", target_os = "linux"))]
pub use linux::mapping::Mapping;
#[cfg(all(feature = "std", target_os = "linux"))]
pub use linux::sys::PAGE_SIZE;
#[cfg(all(feature = "std", target_os = "linux"))]
pub use linux::{Rendezvous, RendezvousError, XsPending};
#[cfg(all(feature = "std", target_os = "linux"))]
pub use linux::{XenDoorbell, XenPending, XenRegion, XenTransport, XenTransportError};
#[cfg(all(feature = "std", target_os = "linux"))]
pub use xenstore::{XenStore, XsError};
