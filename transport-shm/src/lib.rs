//! coresident's host transport: co-resident processes and containers on one Linux host
//! share a sealed memfd region and signal each other through eventfd doorbells; a
//! Unix-socket rendezvous passes the descriptors (the model of KVM's ivshmem server).
//!
//! # The rendezvous
//!
//! ```text
//!   offerer (connects)                                 acceptor (listens)
//!   ------------------                                 ------------------
//!   memfd_create, ftruncate(size),                     Listener::bind(path)  or
//!     seal SHRINK|GROW|SEAL, mmap                        Registry::register(id)
//!   eventfd "to offerer", eventfd "to acceptor"
//!   connect(path) ---------------------------------->  accept()
//!   Hello {magic, version, len, region size,
//!          ring data sizes, offerer id, acceptor id}
//!     + SCM_RIGHTS [memfd, to_offerer, to_acceptor] ->  read 16-byte prefix: magic, version, len
//!                                                      read the rest; exactly 3 fds;
//!                                                      ids, ring sizes, region size;
//!                                                      memfd: S_IFREG, sealed SHRINK|GROW,
//!                                                        size == declared; mmap
//!                                                      eventfds: /proc/self/fd link
//!                                                      SO_PEERCRED -> peer pid, uid
//!   SO_PEERCRED -> peer pid, uid  <-----------------  Ack {magic, version, status}
//!                                                      (status != 0: RejectReason, close)
//!   ==================== channel established ====================
//!   produce into "to acceptor" ring,                    produce into "to offerer" ring,
//!   ring the "to acceptor" eventfd;                     ring the "to offerer" eventfd;
//!   wait on "to offerer" + socket                       wait on "to acceptor" + socket
//!   socket hang-up (exit, crash, drop) = peer death, seen by the other side's wait
//! ```
//!
//! The region holds the two rings (see [`layout`]); the bytes of both messages are in
//! [`wire`].
//!
//! # Examples
//!
//! Both sides in one process, over a socket pair (across processes, the acceptor uses
//! [`Listener::bind`] or [`Registry::register`] and the offerer [`connect`]):
//!
//! ```
//! use std::os::unix::net::UnixStream;
//! use std::time::Duration;
//! use coresident_shm::{accept_offer, offer, AcceptConfig, OfferConfig, Wake};
//!
//! let (a, b) = UnixStream::pair()?;
//! let acceptor = std::thread::spawn(move || accept_offer(b, &AcceptConfig::default()));
//! let offerer = offer(a, &OfferConfig::new("client".parse()?))?;
//! let acceptor = acceptor.join().unwrap()?;
//!
//! // The offerer's transmit ring is the acceptor's receive ring, in shared memory.
//! assert_eq!(offerer.tx_slot(), acceptor.rx_slot());
//! offerer.notify_peer()?;
//! assert_eq!(acceptor.wait(Some(Duration::from_secs(5)))?, Wake::Notified { count: 1 });
//!
//! drop(offerer); // hang-up: the peer's next wait reports `PeerGone`
//! assert!(acceptor.wait(None).is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Discovery
//!
//! [`Registry`] keeps one listening socket per peer id in a directory; `scan` lists the
//! live ones (and removes stale sockets), `watch` reports peers coming and going.
//!
//! # The core's `Transport`
//!
//! With feature `core`, `ShmTransport` implements the core's `Transport` (rendezvous
//! bytes name a one-shot socket; see the `transport` module), [`SharedRegion`] its
//! `SharedRegion` and [`PeerLink`] its `Doorbell`. Feature `conformance` runs the core's
//! conformance suite in this crate's tests.
//!
//! # Trust
//!
//! The peer is not trusted: every field of the hello and every descriptor is validated
//! before use, each failure is a typed error, and nothing the peer sends can panic this
//! crate. The mapped memory is handed out as raw pointers only (the peer writes it
//! concurrently).
//!
//! Linux only: on other targets this crate is empty.
#![cfg(target_os = "linux")]
// OS code: nothing for loom to model; under `--cfg loom` the crate is empty.
#![cfg(not(loom))]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs, missing_debug_implementations)]

#[cfg(feature = "core")]
pub mod discovery;
pub mod endpoint;
pub mod error;
pub mod eventfd;
pub mod layout;
pub mod memfd;
pub mod offer;
pub mod peer_id;
pub mod registry;
pub mod rendezvous;
#[cfg(feature = "core")]
pub mod transport;
pub mod wire;

#[cfg(feature = "core")]
pub use discovery::{DiscoveryError, HostConfig, HostDiscovery, Withdraw};
pub use endpoint::{Endpoint, PeerInfo, PeerLink, Role};
pub use error::SysError;
pub use eventfd::{peer_alive, Doorbell, DoorbellError, WaitError, Wake};
pub use layout::{Layout, LayoutError, RingSlot};
pub use memfd::{RegionError, SharedRegion, MAX_REGION_SIZE, MIN_REGION_SIZE};
pub use offer::{connect, offer, OfferConfig, PendingOffer};
pub use peer_id::{PeerId, PeerIdError};
pub use registry::{Registry, RegistryError, RegistryEvent, Watcher};
pub use rendezvous::{accept_offer, AcceptConfig, HandshakeError, Listener, RejectReason};
#[cfg(feature = "core")]
pub use transport::{ready_offer, ShmError, ShmPending, ShmTransport};
