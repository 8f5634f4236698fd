//! coresident streams: a TCP connection whose bytes take a shared-memory ring while both
//! ends share a host and speak coresident, and TCP otherwise, switching mid-stream in
//! either direction without losing, duplicating or reordering a byte.
//!
//! ```text
//!   connecting side                                  accepting side
//!   ---------------                                  --------------
//!   lookup(dst) in the discovery backend             bind(addr): register addr
//!     miss: plain TCP, raw bytes for ever              (background acceptor)
//!     hit:  bind (route source, port 0) -> 4-tuple
//!           hello {4-tuple, session, epoch 0} ---->  placeholder[4-tuple]
//!           channel handshake (sealed memfd)   <->  handshake, ack
//!           COMMIT byte                       ---->  (queued on the rendezvous socket)
//!   connect TCP from the 4-tuple  ============SYN==>  accept(): placeholder[4-tuple]
//!                                                      committed? session : plain
//!   ========= session: TCP carries segments {kind, len, offset}; the ring carries frames
//!   ========= after an epoch frame; each receiver delivers the byte at its position
//!   ========= from whichever path holds it (docs/streams.md has the proof sketch)
//! ```
//!
//! # Examples
//!
//! A server:
//!
//! ```no_run
//! use std::io::{Read, Write};
//! use coresident_net::Listener;
//!
//! let listener = Listener::bind("127.0.0.1:7000")?;
//! loop {
//!     let (mut stream, _) = listener.accept()?;
//!     let mut req = [0u8; 4];
//!     stream.read_exact(&mut req)?;
//!     stream.write_all(b"pong")?;
//!     println!("served over {}", stream.path()); // ring, tcp or plain
//! }
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! A client:
//!
//! ```no_run
//! use std::io::{Read, Write};
//! use coresident_net::Stream;
//!
//! let mut stream = Stream::connect("127.0.0.1:7000")?;
//! stream.write_all(b"ping")?;
//! let mut reply = [0u8; 4];
//! stream.read_exact(&mut reply)?;
//! assert_eq!(&reply, b"pong");
//! println!("{:?}", stream.stats()); // bytes per path, switches, resends
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! Choose the backend, ring size and spin budget with [`Builder`]:
//! `Builder::new().discovery(NoDiscovery).connect(addr)` is plain TCP.
//!
//! # Backends
//!
//! - [`HostRegistry`] (default): processes and containers on one host, through
//!   `coresident-shm`'s sealed memfd channels;
//! - [`NoDiscovery`]: plain TCP;
//! - `xen::XenDiscovery` (feature `xen`): dom0 and guests of one Xen host; residency
//!   from `coresident-xen`'s agent lists (a peer the agent withdraws falls back to TCP
//!   on both sides, and upgrades again when listed again), channels from its XenStore
//!   rendezvous (keys and faults: `docs/streams.md`, section 9).
//!
//! # When to use which
//!
//! A [`Stream`] is a connection between two programs: `std::net`'s shape, one ring pair
//! per connection, TCP semantics (ordered bytes, FIN, reset). The core's `Router` is
//! for message routers in daemons and kernels that see many flows to many peers and
//! pick a path per message.
//!
//! # Events
//!
//! Every upgrade, downgrade, refusal and error is a `tracing` event with the 4-tuple,
//! the reason and the byte offsets; [`Stream::stats`] has the counters.
#![cfg(target_os = "linux")]
// OS code: nothing for loom to model; under `--cfg loom` the crate is empty (the root
// crate's loom tests build its dev-dependencies, this crate among them).
#![cfg(not(loom))]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs, missing_debug_implementations)]

mod core;
pub mod discovery;
mod listener;
mod stats;
mod stream;
mod sys;
#[cfg(feature = "tokio")]
mod tokio_io;
pub mod wire;
#[cfg(feature = "xen")]
pub mod xen;

pub use discovery::{
    CredentialPolicy, Discovery, HandshakeSink, HostLink, HostRegistry, NoDiscovery, OfferParams,
    Refusal, Registration, RingLink, Signal, Subscriber,
};
pub use listener::Listener;
pub use stats::{Path, StreamStats};
pub use stream::{Builder, Prepared, Stream, DEFAULT_RING_SIZE, DEFAULT_SPIN, MAX_MESSAGE};
#[cfg(feature = "tokio")]
pub use tokio_io::AsyncStream;
