//! coresident's host transport: co-resident processes and containers on one Linux host
//! share a sealed memfd region holding both rings; a Unix-socket rendezvous passes it,
//! and the same socket then carries the doorbells and signals the peer's death (the
//! model of KVM's ivshmem server).
//!
//! # The rendezvous
//!
//! ```text
//!   offerer (connects)                                 acceptor (listens)
//!   ------------------                                 ------------------
//!   memfd_create, ftruncate, seal SHRINK|GROW|SEAL,    Registry::register(id) in a
//!     mmap, lay both rings out (ChannelLayout)           verified 0700 directory,
//!   connect(path)  -------------------------------->    socket mode 0600; accept
//!   SO_PEERCRED: the listener's uid -> CredPolicy      SO_PEERCRED: the offerer's uid
//!     (refused: nothing is sent)                         -> CredPolicy (refused: say
//!                                                        why, read nothing)
//!   Hello v2 {magic, version, len, region size,
//!     ring sizes, ring layout version, ids,
//!     context (<= 256 B)} + SCM_RIGHTS [memfd] ---->  one deadline for the whole hello;
//!                                                      parse; exactly 1 descriptor;
//!                                                      memfd: F_GET_SEALS first, sealed
//!                                                        SHRINK|GROW, size == declared;
//!                                                        mmap; both ring headers match
//!                     <---------------------------  Ack {magic, version, status}
//!   ==================== channel established ====================
//!   each side: produce into its ring, send one byte on the socket as a doorbell;
//!   wait = poll the socket; the socket's hang-up (exit, crash, drop) = peer death
//! ```
//!
//! The bytes of both messages, and their parsers, are in [`wire`]. Every endpoint this
//! crate hands out is ready for the core's `Channel::new` ([`Endpoint::into_link`]).
//!
//! # Examples
//!
//! Two processes that share a registry directory: the server registers, the client
//! connects by name, and each side has a channel.
//!
//! ```
//! use std::time::Duration;
//! use coresident::{Channel, ChannelConfig, StdClock};
//! use coresident_shm::{AcceptConfig, OfferConfig, Registry};
//!
//! # let dir = std::env::temp_dir().join(format!("shm-doc-{}", std::process::id()));
//! let registry = Registry::open(&dir)?; // or Registry::open_default()
//! let listener = registry.register(&"server".parse()?)?;
//! let server = std::thread::spawn(move || listener.accept(&AcceptConfig::default()));
//!
//! let client = registry.connect(&"server".parse()?, &OfferConfig::new("client".parse()?))?;
//! let server = server.join().unwrap()?;
//! assert_eq!(server.peer().id, Some("client".parse()?));
//!
//! let mut tx = Channel::new(client.into_link(), ChannelConfig::default(), StdClock::default())?;
//! let mut rx = Channel::new(server.into_link(), ChannelConfig::default(), StdClock::default())?;
//! tx.send_blocking(b"hello", Some(Duration::from_secs(5)))?;
//! let mut buf = [0u8; 64];
//! let n = rx.recv_blocking(&mut buf, Some(Duration::from_secs(5)))?;
//! assert_eq!(&buf[..n], b"hello");
//! # drop((tx, rx));
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A server facing many offerers runs an [`Acceptor`]: a thread serving handshakes
//! concurrently, each with its own deadline, handing validated endpoints out through a
//! bounded queue.
//!
//! # Discovery
//!
//! [`Registry`] keeps one listening socket per peer id in a directory; `scan` lists the
//! live ones (and removes stale sockets), `watch` reports peers coming and going. A
//! [`PeerId`] converts to a residency-table key with [`PeerKey`].
//!
//! # The core's `Transport`
//!
//! [`ShmTransport`] implements the core's `Transport` (the rendezvous bytes name a
//! one-shot socket; see the `transport` module), [`MemfdRegion`] its `SharedRegion` and
//! [`PeerLink`] its `Doorbell`. Feature `conformance` runs the core's conformance suite
//! in this crate's tests.
//!
//! # Trust
//!
//! The peer is not trusted (see `docs/threat-model.md`):
//! - who it is: the kernel's `SO_PEERCRED`, checked against a [`CredPolicy`] on both
//!   sides before any descriptor moves, and carried in [`PeerInfo::cred`];
//! - where: sockets live in a [`SecureDir`] (owner, mode, no symlink; reached through
//!   its descriptor), under unpredictable names for one-shot offers;
//! - what it sends: every field of the hello and the descriptor are validated before
//!   use, each failure is a typed error, and nothing the peer sends can panic this
//!   crate (the `shm_hello` fuzz target holds that);
//! - when: one deadline bounds each whole handshake, and listeners serve many at once;
//! - after: no file description is shared with the peer except the memfd (whose size
//!   is sealed), so no flag the peer sets can make a call of ours block. The mapped
//!   memory is handed out as raw pointers only (the peer writes it concurrently).
//!
//! Linux only: on other targets this crate is empty.
#![cfg(target_os = "linux")]
// OS code: nothing for loom to model; under `--cfg loom` the crate is empty.
#![cfg(not(loom))]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs, missing_debug_implementations)]

pub mod acceptor;
pub mod cred;
pub mod dir;
pub mod discovery;
pub mod endpoint;
pub mod error;
pub mod listener;
pub mod memfd;
pub mod offer;
pub mod peer_id;
pub mod peer_link;
pub mod registry;
pub mod rendezvous;
pub mod transport;
pub mod wire;

pub use acceptor::{AcceptError, Acceptor, AcceptorStats};
pub use cred::{CredPolicy, PeerCred};
pub use dir::{DirError, SecureDir};
pub use discovery::{DiscoveryError, HostConfig, HostDiscovery, Withdraw};
pub use endpoint::{Endpoint, PeerInfo};
pub use error::SysError;
pub use listener::Listener;
pub use memfd::{MemfdRegion, RegionError, MAX_REGION_SIZE, MIN_REGION_SIZE};
pub use offer::{connect, offer, OfferConfig, PreparedOffer};
pub use peer_id::{PeerId, PeerIdError, PeerKey};
pub use peer_link::PeerLink;
pub use registry::{default_dir, Registry, RegistryError, RegistryEvent, Watcher};
pub use rendezvous::{accept_offer, AcceptConfig, HandshakeError, RejectReason};
pub use transport::{ShmError, ShmPending, ShmTransport};
pub use wire::{AckError, HelloError, RingSizeError};
