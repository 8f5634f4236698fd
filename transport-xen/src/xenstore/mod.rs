//! XenStore clients behind one trait, [`XsClient`]: `socket::XenStore`
//! (xenstored's socket in dom0, or `/dev/xen/xenbus` in any domain;
//! feature `std`) and [`ring::XsRing`] (the ring page of a PV guest
//! kernel's `start_info`, `core` only). A client supplies one request and
//! its reply ([`XsClient::request`]) and the next watch event
//! ([`XsClient::wait_watch`]); every verb (read, write, mkdir, rm,
//! directory, get and set permissions, watch and unwatch, transactions,
//! the domain path) is written once, here, over those two.
//!
//! ```text
//!  rendezvous, residency ─── XsClient ─┬─ socket::XenStore ── UnixStream / /dev/xen/xenbus
//!    (generic over it)                 ├─ ring::XsRing ────── start_info's ring page + port
//!                                      └─ fake (tests) ────── an in-memory xenstored
//! ```
//!
//! Watch events are hints: re-read the keys they name. Everything read
//! (values, directory names, event paths) may have been written by a guest
//! and is returned as bytes or parsed strictly.

mod error;
pub mod ring;
#[cfg(all(feature = "std", target_os = "linux"))]
pub mod socket;

#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
mod tests_ring;
#[cfg(all(test, feature = "std", target_os = "linux"))]
pub(crate) mod tests_socket;

use core::time::Duration;

pub use error::{RingIndex, XsError};
#[cfg(all(feature = "std", target_os = "linux"))]
pub use socket::{Conn, XenStore, EVENT_QUEUE_MAX, SOCKET_PATH, XENBUS_PATH};

use crate::protocol::xs_wire::{self, MsgType, Payload, Perm, ValueError, XsErrno};
use crate::types::DomId;

/// A transaction id (`tx_id` of `struct xsd_sockmsg`); 0: none.
///
/// # Examples
///
/// ```
/// # use coresident_xen::protocol::xs_wire::{MsgType, Payload};
/// # use coresident_xen::xenstore::{TxId, WatchEvent, XsClient, XsError};
/// # struct Script(Vec<u8>, Vec<(MsgType, Vec<u8>)>);
/// # impl XsClient for Script { fn lost_events(&self) -> u64 { 0 }
/// #   fn request(&mut self, _: TxId, t: MsgType, p: &Payload) -> Result<&[u8], XsError> { self.1.push((t, p.as_bytes().to_vec())); Ok(&self.0) }
/// #   fn wait_watch(&mut self, _: Option<core::time::Duration>) -> Result<Option<WatchEvent<'_>>, XsError> { Ok(None) } }
/// // Every verb of a transaction carries its id; outside one, 0.
/// let mut xs = Script(b"9\0".to_vec(), Vec::new());
/// let tx = xs.transaction()?;
/// tx.abort()?;
/// # Ok::<(), XsError>(())
/// ```
pub type TxId = u32;

/// How often a transaction that met a conflicting change (`EAGAIN`) is
/// redone by [`with_transaction`] before it gives up.
///
/// # Examples
///
/// ```
/// assert_eq!(coresident_xen::xenstore::TX_RETRIES, 16);
/// ```
pub const TX_RETRIES: usize = 16;

/// A watch event: `path` changed, or the watch was just set (xenstored
/// fires each new watch once). Borrowed from the client until its next
/// call.
///
/// # Examples
///
/// ```
/// use coresident_xen::xenstore::WatchEvent;
///
/// let ev = WatchEvent { path: b"/local/domain/3/data/x", token: b"t" };
/// assert_eq!(ev.path_str(), Some("/local/domain/3/data/x"));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchEvent<'a> {
    /// The node that changed (bytes the daemon sent: not trusted).
    pub path: &'a [u8],
    /// The token given to [`XsClient::watch`].
    pub token: &'a [u8],
}

impl<'a> WatchEvent<'a> {
    /// The path as text, if it is UTF-8.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::xenstore::WatchEvent;
    ///
    /// assert_eq!(WatchEvent { path: b"domid", token: b"t" }.path_str(), Some("domid"));
    /// assert_eq!(WatchEvent { path: b"\xff", token: b"t" }.path_str(), None);
    /// ```
    pub fn path_str(&self) -> Option<&'a str> {
        core::str::from_utf8(self.path).ok()
    }

    /// The token as text, if it is UTF-8.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::xenstore::WatchEvent;
    ///
    /// let ev = WatchEvent { path: b"@releaseDomain", token: b"gone" };
    /// assert_eq!(ev.token_str(), Some("gone"));
    /// ```
    pub fn token_str(&self) -> Option<&'a str> {
        core::str::from_utf8(self.token).ok()
    }
}

/// The children of a node, as `XS_DIRECTORY` gives them (NUL-separated
/// names), borrowed from the client.
///
/// # Examples
///
/// ```
/// use coresident_xen::xenstore::Names;
///
/// let names = Names::new(b"a\0bc\0");
/// assert_eq!(names.iter().collect::<Vec<_>>(), [&b"a"[..], b"bc"]);
/// assert_eq!(names.len(), 2);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Names<'a>(&'a [u8]);

impl<'a> Names<'a> {
    /// The names in a directory reply.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::xenstore::Names;
    ///
    /// assert_eq!(Names::new(b"0\x005\0").len(), 2);
    /// ```
    pub const fn new(reply: &'a [u8]) -> Self {
        Self(reply)
    }

    /// Each name's bytes.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::xenstore::Names;
    ///
    /// let mut it = Names::new(b"0\x005\0").iter();
    /// assert_eq!((it.next(), it.next(), it.next()), (Some(&b"0"[..]), Some(&b"5"[..]), None));
    /// ```
    pub fn iter(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        xs_wire::split_strings(self.0)
    }

    /// How many names.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::xenstore::Names;
    ///
    /// assert_eq!(Names::new(b"a\0b\0c\0").len(), 3);
    /// ```
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// Whether there are none.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::xenstore::Names;
    ///
    /// assert!(Names::new(b"").is_empty());
    /// assert!(!Names::new(b"a\0").is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }

    /// The names as owned strings.
    ///
    /// # Errors
    ///
    /// [`XsError::Value`] (`NotUtf8`) for a name that is not UTF-8.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::xenstore::Names;
    ///
    /// assert_eq!(Names::new(b"0\x005\0").to_strings()?, ["0", "5"]);
    /// assert!(Names::new(b"\xff\0").to_strings().is_err());
    /// # Ok::<(), coresident_xen::XsError>(())
    /// ```
    #[cfg(feature = "std")]
    pub fn to_strings(&self) -> Result<std::vec::Vec<std::string::String>, XsError> {
        self.iter()
            .map(|n| {
                core::str::from_utf8(n)
                    .map(std::string::ToString::to_string)
                    .map_err(|_| XsError::Value(ValueError::NotUtf8))
            })
            .collect()
    }
}

/// A XenStore client: one request at a time, and the watch events that
/// arrive between the replies.
///
/// Implementations supply [`request`](Self::request),
/// [`wait_watch`](Self::wait_watch) and [`lost_events`](Self::lost_events);
/// the verbs are provided.
///
/// # Examples
///
/// Any client does; here the ring client against nothing is not shown, so
/// a function generic over the trait:
///
/// ```
/// use coresident_xen::xenstore::{XsClient, XsError};
///
/// /// Whether `path` exists (`EACCES`: it does, not ours to read).
/// fn exists<X: XsClient>(xs: &mut X, path: &str) -> Result<bool, XsError> {
///     match xs.read(path) {
///         Ok(_) => Ok(true),
///         Err(e) if e.is_denied() => Ok(true),
///         Err(XsError::NotFound) => Ok(false),
///         Err(e) => Err(e),
///     }
/// }
/// # let _ = exists::<coresident_xen::xenstore::ring::XsRing<NoEvents>>;
/// # struct NoEvents;
/// # impl coresident_xen::xenstore::ring::Events for NoEvents {
/// #     fn notify(&mut self) {}
/// #     fn wait(&mut self) -> bool { false }
/// # }
/// ```
pub trait XsClient {
    /// Sends one request (`tx`: 0, or a transaction of
    /// [`transaction`](Self::transaction)) and returns its reply's payload,
    /// queueing the watch events that arrive meanwhile.
    ///
    /// # Errors
    ///
    /// [`XsError::NotFound`] and [`XsError::Daemon`] for an `XS_ERROR`
    /// reply (the connection goes on); the connection's errors.
    ///
    /// # Examples
    ///
    /// A client is these three methods. `Script` here answers every request
    /// with one reply and records what was asked (the examples of the verbs
    /// below use it to show what each sends and reads):
    ///
    /// ```
    /// use core::time::Duration;
    /// use coresident_xen::protocol::xs_wire::{MsgType, Payload};
    /// use coresident_xen::xenstore::{TxId, WatchEvent, XsClient, XsError};
    ///
    /// struct Script(Vec<u8>, Vec<(MsgType, Vec<u8>)>);
    /// impl XsClient for Script {
    ///     fn request(&mut self, _: TxId, t: MsgType, p: &Payload) -> Result<&[u8], XsError> {
    ///         self.1.push((t, p.as_bytes().to_vec()));
    ///         Ok(&self.0)
    ///     }
    ///     fn wait_watch(&mut self, _: Option<Duration>) -> Result<Option<WatchEvent<'_>>, XsError> {
    ///         Ok(None)
    ///     }
    ///     fn lost_events(&self) -> u64 { 0 }
    /// }
    /// let mut xs = Script(b"5".to_vec(), Vec::new());
    /// assert_eq!(xs.read_u32("domid")?, 5);
    /// assert_eq!(xs.1, [(MsgType::Read, b"domid\0".to_vec())]);
    /// # Ok::<(), XsError>(())
    /// ```
    fn request(&mut self, tx: TxId, ty: MsgType, payload: &Payload) -> Result<&[u8], XsError>;

    /// The next watch event: a queued one, or one that arrives before
    /// `timeout` (`None`: wait as long as the connection waits;
    /// `Some(Duration::ZERO)`: do not wait). `Ok(None)` when none came.
    ///
    /// # Errors
    ///
    /// The connection's errors.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use coresident_xen::xenstore::XsClient;
    /// use coresident_xen::XenStore;
    ///
    /// let mut xs = XenStore::open()?;
    /// xs.watch("data/app", "app")?;
    /// while let Some(ev) = xs.wait_watch(Some(Duration::from_secs(5)))? {
    ///     // A hint: re-read what it names.
    ///     println!("{:?} changed ({:?})", ev.path_str(), ev.token_str());
    /// }
    /// # Ok::<(), coresident_xen::XsError>(())
    /// ```
    fn wait_watch(&mut self, timeout: Option<Duration>) -> Result<Option<WatchEvent<'_>>, XsError>;

    /// Watch events dropped because the queue was full: what they named
    /// is unknown, so a caller re-reads everything when this grows.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use coresident_xen::xenstore::XsClient;
    /// use coresident_xen::XenStore;
    ///
    /// let mut xs = XenStore::open()?;
    /// xs.watch("data/app", "app")?;
    /// let seen = xs.lost_events();
    /// xs.wait_watch(Some(Duration::from_secs(5)))?;
    /// if xs.lost_events() != seen {
    ///     println!("events were dropped: re-read everything watched");
    /// }
    /// # Ok::<(), coresident_xen::XsError>(())
    /// ```
    fn lost_events(&self) -> u64;

    /// The descriptor a `poll(2)` can wait on beside others (readable when
    /// a message arrived), for clients that have one.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::xenstore::XsClient;
    /// use coresident_xen::XenStore;
    ///
    /// let xs = XenStore::open()?;
    /// // Register it with the event loop beside the channels' doorbells.
    /// // A socket or /dev/xen/xenbus has one; a PV kernel's ring has none.
    /// let fd: Option<i32> = xs.poll_fd();
    /// # Ok::<(), coresident_xen::XsError>(())
    /// ```
    fn poll_fd(&self) -> Option<i32> {
        None
    }

    /// Whether a watch event is queued already (then
    /// [`poll_fd`](Self::poll_fd) need not become readable for one).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use coresident_xen::xenstore::XsClient;
    /// use coresident_xen::XenStore;
    ///
    /// let mut xs = XenStore::open()?;
    /// xs.watch("data/app", "app")?; // the reply may bring the first event along
    /// if xs.has_queued_event() {
    ///     // Do not wait for poll_fd: take it now.
    ///     xs.wait_watch(Some(Duration::ZERO))?;
    /// }
    /// # Ok::<(), coresident_xen::XsError>(())
    /// ```
    fn has_queued_event(&self) -> bool {
        false
    }

    /// Reads a value (raw bytes: a guest may have written anything).
    ///
    /// # Errors
    ///
    /// [`XsError::NotFound`], [`XsError::Daemon`] (`EACCES`), the
    /// connection's.
    ///
    /// # Examples
    ///
    /// ```
    /// # use coresident_xen::protocol::xs_wire::{MsgType, Payload};
    /// # use coresident_xen::xenstore::{TxId, WatchEvent, XsClient, XsError};
    /// # struct Script(Vec<u8>, Vec<(MsgType, Vec<u8>)>);
    /// # impl XsClient for Script { fn lost_events(&self) -> u64 { 0 }
    /// #   fn request(&mut self, _: TxId, t: MsgType, p: &Payload) -> Result<&[u8], XsError> { self.1.push((t, p.as_bytes().to_vec())); Ok(&self.0) }
    /// #   fn wait_watch(&mut self, _: Option<core::time::Duration>) -> Result<Option<WatchEvent<'_>>, XsError> { Ok(None) } }
    /// let mut xs = Script(b"guest-1".to_vec(), Vec::new());
    /// assert_eq!(xs.read("name")?, b"guest-1");
    /// assert_eq!(xs.1, [(MsgType::Read, b"name\0".to_vec())]);
    /// # Ok::<(), XsError>(())
    /// ```
    fn read(&mut self, path: &str) -> Result<&[u8], XsError> {
        verbs::read(self, 0, path)
    }

    /// Reads a plain decimal `u32` (grant refs, ports).
    ///
    /// # Errors
    ///
    /// As [`read`](Self::read), and [`XsError::Value`] for anything but
    /// `[0-9]+` within range.
    ///
    /// # Examples
    ///
    /// ```
    /// # use coresident_xen::protocol::xs_wire::{MsgType, Payload};
    /// # use coresident_xen::xenstore::{TxId, WatchEvent, XsClient, XsError};
    /// # struct Script(Vec<u8>, Vec<(MsgType, Vec<u8>)>);
    /// # impl XsClient for Script { fn lost_events(&self) -> u64 { 0 }
    /// #   fn request(&mut self, _: TxId, t: MsgType, p: &Payload) -> Result<&[u8], XsError> { self.1.push((t, p.as_bytes().to_vec())); Ok(&self.0) }
    /// #   fn wait_watch(&mut self, _: Option<core::time::Duration>) -> Result<Option<WatchEvent<'_>>, XsError> { Ok(None) } }
    /// assert_eq!(Script(b"42".to_vec(), Vec::new()).read_u32("domid")?, 42);
    /// // Strict: no sign, no space, no hex.
    /// assert!(Script(b" 42".to_vec(), Vec::new()).read_u32("domid").is_err());
    /// # Ok::<(), XsError>(())
    /// ```
    fn read_u32(&mut self, path: &str) -> Result<u32, XsError> {
        Ok(xs_wire::parse_u32(self.read(path)?)?)
    }

    /// Writes a value, creating the node and its missing parents.
    ///
    /// # Errors
    ///
    /// [`XsError::Wire`] for a path or value over the limits,
    /// [`XsError::Daemon`] (`EACCES`, `ENOSPC`), the connection's.
    ///
    /// # Examples
    ///
    /// ```
    /// # use coresident_xen::protocol::xs_wire::{MsgType, Payload};
    /// # use coresident_xen::xenstore::{TxId, WatchEvent, XsClient, XsError};
    /// # struct Script(Vec<u8>, Vec<(MsgType, Vec<u8>)>);
    /// # impl XsClient for Script { fn lost_events(&self) -> u64 { 0 }
    /// #   fn request(&mut self, _: TxId, t: MsgType, p: &Payload) -> Result<&[u8], XsError> { self.1.push((t, p.as_bytes().to_vec())); Ok(&self.0) }
    /// #   fn wait_watch(&mut self, _: Option<core::time::Duration>) -> Result<Option<WatchEvent<'_>>, XsError> { Ok(None) } }
    /// let mut xs = Script(b"OK\0".to_vec(), Vec::new());
    /// xs.write("data/app/state", b"ready")?;
    /// // The path, its NUL, then the value's bytes.
    /// assert_eq!(xs.1, [(MsgType::Write, b"data/app/state\0ready".to_vec())]);
    /// # Ok::<(), XsError>(())
    /// ```
    fn write(&mut self, path: &str, value: &[u8]) -> Result<(), XsError> {
        verbs::write(self, 0, path, value)
    }

    /// Creates an empty node (no error if it exists).
    ///
    /// # Errors
    ///
    /// [`XsError::Daemon`], the connection's.
    ///
    /// # Examples
    ///
    /// ```
    /// # use coresident_xen::protocol::xs_wire::{MsgType, Payload};
    /// # use coresident_xen::xenstore::{TxId, WatchEvent, XsClient, XsError};
    /// # struct Script(Vec<u8>, Vec<(MsgType, Vec<u8>)>);
    /// # impl XsClient for Script { fn lost_events(&self) -> u64 { 0 }
    /// #   fn request(&mut self, _: TxId, t: MsgType, p: &Payload) -> Result<&[u8], XsError> { self.1.push((t, p.as_bytes().to_vec())); Ok(&self.0) }
    /// #   fn wait_watch(&mut self, _: Option<core::time::Duration>) -> Result<Option<WatchEvent<'_>>, XsError> { Ok(None) } }
    /// let mut xs = Script(b"OK\0".to_vec(), Vec::new());
    /// xs.mkdir("data/app")?;
    /// assert_eq!(xs.1, [(MsgType::Mkdir, b"data/app\0".to_vec())]);
    /// # Ok::<(), XsError>(())
    /// ```
    fn mkdir(&mut self, path: &str) -> Result<(), XsError> {
        verbs::simple(self, 0, MsgType::Mkdir, path)
    }

    /// Removes a node and everything below it.
    ///
    /// # Errors
    ///
    /// [`XsError::NotFound`], [`XsError::Daemon`], the connection's.
    ///
    /// # Examples
    ///
    /// ```
    /// # use coresident_xen::protocol::xs_wire::{MsgType, Payload};
    /// # use coresident_xen::xenstore::{TxId, WatchEvent, XsClient, XsError};
    /// # struct Script(Vec<u8>, Vec<(MsgType, Vec<u8>)>);
    /// # impl XsClient for Script { fn lost_events(&self) -> u64 { 0 }
    /// #   fn request(&mut self, _: TxId, t: MsgType, p: &Payload) -> Result<&[u8], XsError> { self.1.push((t, p.as_bytes().to_vec())); Ok(&self.0) }
    /// #   fn wait_watch(&mut self, _: Option<core::time::Duration>) -> Result<Option<WatchEvent<'_>>, XsError> { Ok(None) } }
    /// let mut xs = Script(b"OK\0".to_vec(), Vec::new());
    /// xs.rm("data/app")?; // and everything below it
    /// assert_eq!(xs.1, [(MsgType::Rm, b"data/app\0".to_vec())]);
    /// # Ok::<(), XsError>(())
    /// ```
    fn rm(&mut self, path: &str) -> Result<(), XsError> {
        verbs::simple(self, 0, MsgType::Rm, path)
    }

    /// Lists a node's children.
    ///
    /// # Errors
    ///
    /// [`XsError::NotFound`], [`XsError::Daemon`], the connection's.
    ///
    /// # Examples
    ///
    /// ```
    /// # use coresident_xen::protocol::xs_wire::{MsgType, Payload};
    /// # use coresident_xen::xenstore::{TxId, WatchEvent, XsClient, XsError};
    /// # struct Script(Vec<u8>, Vec<(MsgType, Vec<u8>)>);
    /// # impl XsClient for Script { fn lost_events(&self) -> u64 { 0 }
    /// #   fn request(&mut self, _: TxId, t: MsgType, p: &Payload) -> Result<&[u8], XsError> { self.1.push((t, p.as_bytes().to_vec())); Ok(&self.0) }
    /// #   fn wait_watch(&mut self, _: Option<core::time::Duration>) -> Result<Option<WatchEvent<'_>>, XsError> { Ok(None) } }
    /// let mut xs = Script(b"0\x005\x007\0".to_vec(), Vec::new());
    /// let names = xs.directory("/local/domain")?;
    /// assert_eq!(names.iter().collect::<Vec<_>>(), [&b"0"[..], b"5", b"7"]);
    /// # Ok::<(), XsError>(())
    /// ```
    fn directory(&mut self, path: &str) -> Result<Names<'_>, XsError> {
        verbs::directory(self, 0, path)
    }

    /// A node's permissions (the first is the owner), into `out`; how many
    /// there were (at most `out.len()` are kept).
    ///
    /// # Errors
    ///
    /// [`XsError::NotFound`], [`XsError::Value`] for a malformed entry, the
    /// connection's.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::protocol::xs_wire::{Access, Perm};
    /// # use coresident_xen::protocol::xs_wire::{MsgType, Payload};
    /// # use coresident_xen::xenstore::{TxId, WatchEvent, XsClient, XsError};
    /// # struct Script(Vec<u8>, Vec<(MsgType, Vec<u8>)>);
    /// # impl XsClient for Script { fn lost_events(&self) -> u64 { 0 }
    /// #   fn request(&mut self, _: TxId, t: MsgType, p: &Payload) -> Result<&[u8], XsError> { self.1.push((t, p.as_bytes().to_vec())); Ok(&self.0) }
    /// #   fn wait_watch(&mut self, _: Option<core::time::Duration>) -> Result<Option<WatchEvent<'_>>, XsError> { Ok(None) } }
    /// // Owner domain 5 (no access for others), domain 0 may read.
    /// let mut xs = Script(b"n5\0r0\0".to_vec(), Vec::new());
    /// let mut perms = [Perm { domid: 0, access: Access::None }; 4];
    /// assert_eq!(xs.get_perms("data/app", &mut perms)?, 2);
    /// assert_eq!(perms[1], Perm { domid: 0, access: Access::Read });
    /// # Ok::<(), XsError>(())
    /// ```
    fn get_perms(&mut self, path: &str, out: &mut [Perm]) -> Result<usize, XsError> {
        let mut p = Payload::new();
        p.path(path)?;
        let mut n = 0;
        for s in xs_wire::split_strings(self.request(0, MsgType::GetPerms, &p)?) {
            let perm = Perm::parse(s)?;
            if let Some(slot) = out.get_mut(n) {
                *slot = perm;
            }
            n += 1;
        }
        Ok(n)
    }

    /// A node's permissions, all of them (the first is the owner).
    ///
    /// # Errors
    ///
    /// As [`get_perms`](Self::get_perms).
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::protocol::xs_wire::{Access, Perm};
    /// # use coresident_xen::protocol::xs_wire::{MsgType, Payload};
    /// # use coresident_xen::xenstore::{TxId, WatchEvent, XsClient, XsError};
    /// # struct Script(Vec<u8>, Vec<(MsgType, Vec<u8>)>);
    /// # impl XsClient for Script { fn lost_events(&self) -> u64 { 0 }
    /// #   fn request(&mut self, _: TxId, t: MsgType, p: &Payload) -> Result<&[u8], XsError> { self.1.push((t, p.as_bytes().to_vec())); Ok(&self.0) }
    /// #   fn wait_watch(&mut self, _: Option<core::time::Duration>) -> Result<Option<WatchEvent<'_>>, XsError> { Ok(None) } }
    /// let mut xs = Script(b"n5\0r0\0".to_vec(), Vec::new());
    /// let perms = xs.perms("data/app")?;
    /// assert_eq!(perms[0], Perm { domid: 5, access: Access::None }); // the owner
    /// assert_eq!(perms.len(), 2);
    /// # Ok::<(), XsError>(())
    /// ```
    #[cfg(feature = "std")]
    fn perms(&mut self, path: &str) -> Result<std::vec::Vec<Perm>, XsError> {
        let mut p = Payload::new();
        p.path(path)?;
        xs_wire::split_strings(self.request(0, MsgType::GetPerms, &p)?)
            .map(|s| Perm::parse(s).map_err(XsError::Value))
            .collect()
    }

    /// Reads a value that must be UTF-8 text.
    ///
    /// # Errors
    ///
    /// As [`read`](Self::read), and [`XsError::Value`] (`NotUtf8`).
    ///
    /// # Examples
    ///
    /// ```
    /// # use coresident_xen::protocol::xs_wire::{MsgType, Payload};
    /// # use coresident_xen::xenstore::{TxId, WatchEvent, XsClient, XsError};
    /// # struct Script(Vec<u8>, Vec<(MsgType, Vec<u8>)>);
    /// # impl XsClient for Script { fn lost_events(&self) -> u64 { 0 }
    /// #   fn request(&mut self, _: TxId, t: MsgType, p: &Payload) -> Result<&[u8], XsError> { self.1.push((t, p.as_bytes().to_vec())); Ok(&self.0) }
    /// #   fn wait_watch(&mut self, _: Option<core::time::Duration>) -> Result<Option<WatchEvent<'_>>, XsError> { Ok(None) } }
    /// assert_eq!(Script(b"guest-1".to_vec(), Vec::new()).read_string("name")?, "guest-1");
    /// assert!(Script(vec![0xff], Vec::new()).read_string("name").is_err());
    /// # Ok::<(), XsError>(())
    /// ```
    #[cfg(feature = "std")]
    fn read_string(&mut self, path: &str) -> Result<std::string::String, XsError> {
        core::str::from_utf8(self.read(path)?)
            .map(std::string::ToString::to_string)
            .map_err(|_| XsError::Value(ValueError::NotUtf8))
    }

    /// A node's children as owned strings.
    ///
    /// # Errors
    ///
    /// As [`directory`](Self::directory), and [`XsError::Value`] for a name
    /// that is not UTF-8.
    ///
    /// # Examples
    ///
    /// ```
    /// # use coresident_xen::protocol::xs_wire::{MsgType, Payload};
    /// # use coresident_xen::xenstore::{TxId, WatchEvent, XsClient, XsError};
    /// # struct Script(Vec<u8>, Vec<(MsgType, Vec<u8>)>);
    /// # impl XsClient for Script { fn lost_events(&self) -> u64 { 0 }
    /// #   fn request(&mut self, _: TxId, t: MsgType, p: &Payload) -> Result<&[u8], XsError> { self.1.push((t, p.as_bytes().to_vec())); Ok(&self.0) }
    /// #   fn wait_watch(&mut self, _: Option<core::time::Duration>) -> Result<Option<WatchEvent<'_>>, XsError> { Ok(None) } }
    /// let mut xs = Script(b"0\x005\0".to_vec(), Vec::new());
    /// assert_eq!(xs.children("/local/domain")?, ["0", "5"]);
    /// # Ok::<(), XsError>(())
    /// ```
    #[cfg(feature = "std")]
    fn children(&mut self, path: &str) -> Result<std::vec::Vec<std::string::String>, XsError> {
        self.directory(path)?.to_strings()
    }

    /// Sets a node's permissions: `perms[0]` is the owner and the default
    /// for unlisted domains; only the owner (or dom0) may do this.
    ///
    /// # Errors
    ///
    /// [`XsError::Wire`] (no entries, or too many), [`XsError::Daemon`],
    /// the connection's.
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::protocol::xs_wire::{Access, Perm};
    /// # use coresident_xen::protocol::xs_wire::{MsgType, Payload};
    /// # use coresident_xen::xenstore::{TxId, WatchEvent, XsClient, XsError};
    /// # struct Script(Vec<u8>, Vec<(MsgType, Vec<u8>)>);
    /// # impl XsClient for Script { fn lost_events(&self) -> u64 { 0 }
    /// #   fn request(&mut self, _: TxId, t: MsgType, p: &Payload) -> Result<&[u8], XsError> { self.1.push((t, p.as_bytes().to_vec())); Ok(&self.0) }
    /// #   fn wait_watch(&mut self, _: Option<core::time::Duration>) -> Result<Option<WatchEvent<'_>>, XsError> { Ok(None) } }
    /// let mut xs = Script(b"OK\0".to_vec(), Vec::new());
    /// // Owned by domain 5, readable by domain 0 alone.
    /// let perms = [Perm { domid: 5, access: Access::None }, Perm { domid: 0, access: Access::Read }];
    /// xs.set_perms("data/app", &perms)?;
    /// assert_eq!(xs.1, [(MsgType::SetPerms, b"data/app\0n5\0r0\0".to_vec())]);
    /// # Ok::<(), XsError>(())
    /// ```
    fn set_perms(&mut self, path: &str, perms: &[Perm]) -> Result<(), XsError> {
        verbs::set_perms(self, 0, path, perms)
    }

    /// Watches `path` and everything below it; events carry `token`.
    /// xenstored fires a new watch once right away.
    ///
    /// # Errors
    ///
    /// [`XsError::Daemon`] (`EEXIST` for the same path and token twice,
    /// `E2BIG` past the domain's watch quota, `EINVAL` for a malformed
    /// path), the connection's.
    ///
    /// # Examples
    ///
    /// ```
    /// # use coresident_xen::protocol::xs_wire::{MsgType, Payload};
    /// # use coresident_xen::xenstore::{TxId, WatchEvent, XsClient, XsError};
    /// # struct Script(Vec<u8>, Vec<(MsgType, Vec<u8>)>);
    /// # impl XsClient for Script { fn lost_events(&self) -> u64 { 0 }
    /// #   fn request(&mut self, _: TxId, t: MsgType, p: &Payload) -> Result<&[u8], XsError> { self.1.push((t, p.as_bytes().to_vec())); Ok(&self.0) }
    /// #   fn wait_watch(&mut self, _: Option<core::time::Duration>) -> Result<Option<WatchEvent<'_>>, XsError> { Ok(None) } }
    /// let mut xs = Script(b"OK\0".to_vec(), Vec::new());
    /// xs.watch("@releaseDomain", "gone")?;
    /// assert_eq!(xs.1, [(MsgType::Watch, b"@releaseDomain\0gone\0".to_vec())]);
    /// # Ok::<(), XsError>(())
    /// ```
    fn watch(&mut self, path: &str, token: &str) -> Result<(), XsError> {
        verbs::watch(self, MsgType::Watch, path, token)
    }

    /// Removes a watch.
    ///
    /// # Errors
    ///
    /// [`XsError::NotFound`], the connection's.
    ///
    /// # Examples
    ///
    /// ```
    /// # use coresident_xen::protocol::xs_wire::{MsgType, Payload};
    /// # use coresident_xen::xenstore::{TxId, WatchEvent, XsClient, XsError};
    /// # struct Script(Vec<u8>, Vec<(MsgType, Vec<u8>)>);
    /// # impl XsClient for Script { fn lost_events(&self) -> u64 { 0 }
    /// #   fn request(&mut self, _: TxId, t: MsgType, p: &Payload) -> Result<&[u8], XsError> { self.1.push((t, p.as_bytes().to_vec())); Ok(&self.0) }
    /// #   fn wait_watch(&mut self, _: Option<core::time::Duration>) -> Result<Option<WatchEvent<'_>>, XsError> { Ok(None) } }
    /// let mut xs = Script(b"OK\0".to_vec(), Vec::new());
    /// xs.unwatch("@releaseDomain", "gone")?; // the same path and token
    /// assert_eq!(xs.1, [(MsgType::Unwatch, b"@releaseDomain\0gone\0".to_vec())]);
    /// # Ok::<(), XsError>(())
    /// ```
    fn unwatch(&mut self, path: &str, token: &str) -> Result<(), XsError> {
        verbs::watch(self, MsgType::Unwatch, path, token)
    }

    /// The home path of a domain (`/local/domain/N`), as bytes.
    ///
    /// # Errors
    ///
    /// The connection's.
    ///
    /// # Examples
    ///
    /// ```
    /// # use coresident_xen::protocol::xs_wire::{MsgType, Payload};
    /// # use coresident_xen::xenstore::{TxId, WatchEvent, XsClient, XsError};
    /// # struct Script(Vec<u8>, Vec<(MsgType, Vec<u8>)>);
    /// # impl XsClient for Script { fn lost_events(&self) -> u64 { 0 }
    /// #   fn request(&mut self, _: TxId, t: MsgType, p: &Payload) -> Result<&[u8], XsError> { self.1.push((t, p.as_bytes().to_vec())); Ok(&self.0) }
    /// #   fn wait_watch(&mut self, _: Option<core::time::Duration>) -> Result<Option<WatchEvent<'_>>, XsError> { Ok(None) } }
    /// let mut xs = Script(b"/local/domain/5\0".to_vec(), Vec::new());
    /// assert_eq!(xs.get_domain_path(5)?, b"/local/domain/5");
    /// assert_eq!(xs.1, [(MsgType::GetDomainPath, b"5\0".to_vec())]);
    /// # Ok::<(), XsError>(())
    /// ```
    fn get_domain_path(&mut self, domid: DomId) -> Result<&[u8], XsError> {
        let mut p = Payload::new();
        let mut buf = [0u8; 20];
        p.string(xs_wire::decimal(domid.into(), &mut buf))?;
        let body = self.request(0, MsgType::GetDomainPath, &p)?;
        Ok(body.strip_suffix(&[0]).unwrap_or(body))
    }

    /// Starts a transaction; commit with [`Transaction::commit`] (on
    /// `EAGAIN` the whole transaction must be redone: [`with_transaction`]
    /// does), aborted on drop.
    ///
    /// # Errors
    ///
    /// [`XsError::Value`] for a malformed id, the connection's.
    ///
    /// # Examples
    ///
    /// ```
    /// # use coresident_xen::protocol::xs_wire::{MsgType, Payload};
    /// # use coresident_xen::xenstore::{TxId, WatchEvent, XsClient, XsError};
    /// # struct Script(Vec<u8>, Vec<(MsgType, Vec<u8>)>);
    /// # impl XsClient for Script { fn lost_events(&self) -> u64 { 0 }
    /// #   fn request(&mut self, _: TxId, t: MsgType, p: &Payload) -> Result<&[u8], XsError> { self.1.push((t, p.as_bytes().to_vec())); Ok(&self.0) }
    /// #   fn wait_watch(&mut self, _: Option<core::time::Duration>) -> Result<Option<WatchEvent<'_>>, XsError> { Ok(None) } }
    /// // xenstored answers the start with the transaction's id.
    /// let mut xs = Script(b"7\0".to_vec(), Vec::new());
    /// let mut tx = xs.transaction()?;
    /// tx.write("data/a", b"1")?;
    /// tx.commit()?;
    /// let sent: Vec<MsgType> = xs.1.iter().map(|s| s.0).collect();
    /// assert_eq!(sent, [MsgType::TransactionStart, MsgType::Write, MsgType::TransactionEnd]);
    /// # Ok::<(), XsError>(())
    /// ```
    fn transaction(&mut self) -> Result<Transaction<'_, Self>, XsError>
    where
        Self: Sized,
    {
        let mut p = Payload::new();
        p.string(b"")?;
        let id = xs_wire::parse_u32(self.request(0, MsgType::TransactionStart, &p)?)?;
        if id == 0 {
            return Err(XsError::Value(ValueError::OutOfRange));
        }
        Ok(Transaction {
            xs: self,
            id,
            done: false,
        })
    }
}

/// The verbs, once, for a client and for a transaction.
mod verbs {
    use super::*;

    pub(super) fn read<'x, X: XsClient + ?Sized>(
        x: &'x mut X,
        tx: TxId,
        path: &str,
    ) -> Result<&'x [u8], XsError> {
        let mut p = Payload::new();
        p.path(path)?;
        x.request(tx, MsgType::Read, &p)
    }

    pub(super) fn write<X: XsClient + ?Sized>(
        x: &mut X,
        tx: TxId,
        path: &str,
        value: &[u8],
    ) -> Result<(), XsError> {
        let mut p = Payload::new();
        p.path(path)?.raw(value)?;
        x.request(tx, MsgType::Write, &p).map(drop)
    }

    pub(super) fn simple<X: XsClient + ?Sized>(
        x: &mut X,
        tx: TxId,
        ty: MsgType,
        path: &str,
    ) -> Result<(), XsError> {
        let mut p = Payload::new();
        p.path(path)?;
        x.request(tx, ty, &p).map(drop)
    }

    pub(super) fn directory<'x, X: XsClient + ?Sized>(
        x: &'x mut X,
        tx: TxId,
        path: &str,
    ) -> Result<Names<'x>, XsError> {
        let mut p = Payload::new();
        p.path(path)?;
        x.request(tx, MsgType::Directory, &p).map(Names)
    }

    pub(super) fn set_perms<X: XsClient + ?Sized>(
        x: &mut X,
        tx: TxId,
        path: &str,
        perms: &[Perm],
    ) -> Result<(), XsError> {
        if perms.is_empty() {
            return Err(XsError::Wire(xs_wire::WireError::Malformed));
        }
        let mut p = Payload::new();
        p.path(path)?;
        let mut buf = [0u8; 6];
        for perm in perms {
            p.string(perm.encode(&mut buf))?;
        }
        x.request(tx, MsgType::SetPerms, &p).map(drop)
    }

    pub(super) fn watch<X: XsClient + ?Sized>(
        x: &mut X,
        ty: MsgType,
        path: &str,
        token: &str,
    ) -> Result<(), XsError> {
        let mut p = Payload::new();
        p.path(path)?.string(token.as_bytes())?;
        x.request(0, ty, &p).map(drop)
    }
}

/// An open XenStore transaction: the verbs see (and change) one snapshot
/// of the store; aborted on drop unless committed.
///
/// # Examples
///
/// ```no_run
/// use coresident_xen::xenstore::{with_transaction, XsClient};
/// use coresident_xen::XenStore;
///
/// let mut xs = XenStore::open()?;
/// // Both keys or neither, redone on a conflicting change.
/// with_transaction(&mut xs, |tx| {
///     tx.write("data/app/a", b"1")?;
///     tx.write("data/app/b", b"2")
/// })?;
/// # Ok::<(), coresident_xen::xenstore::XsError>(())
/// ```
#[derive(Debug)]
pub struct Transaction<'a, X: XsClient> {
    xs: &'a mut X,
    /// Non-zero transaction id.
    id: TxId,
    done: bool,
}

impl<X: XsClient> Transaction<'_, X> {
    /// [`XsClient::read`] inside the transaction.
    ///
    /// # Errors
    ///
    /// As [`XsClient::read`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use coresident_xen::protocol::xs_wire::{MsgType, Payload};
    /// # use coresident_xen::xenstore::{TxId, WatchEvent, XsClient, XsError};
    /// # struct Script(Vec<u8>, Vec<(MsgType, Vec<u8>)>);
    /// # impl XsClient for Script { fn lost_events(&self) -> u64 { 0 }
    /// #   fn request(&mut self, _: TxId, t: MsgType, p: &Payload) -> Result<&[u8], XsError> { self.1.push((t, p.as_bytes().to_vec())); Ok(&self.0) }
    /// #   fn wait_watch(&mut self, _: Option<core::time::Duration>) -> Result<Option<WatchEvent<'_>>, XsError> { Ok(None) } }
    /// let mut xs = Script(b"3\0".to_vec(), Vec::new());
    /// let mut tx = xs.transaction()?;
    /// let v = tx.read("data/count")?.to_vec(); // in the transaction's snapshot
    /// tx.commit()?;
    /// assert_eq!(v, b"3\0");
    /// # Ok::<(), XsError>(())
    /// ```
    pub fn read(&mut self, path: &str) -> Result<&[u8], XsError> {
        verbs::read(self.xs, self.id, path)
    }

    /// [`XsClient::write`] inside the transaction.
    ///
    /// # Errors
    ///
    /// As [`XsClient::write`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use coresident_xen::protocol::xs_wire::{MsgType, Payload};
    /// # use coresident_xen::xenstore::{TxId, WatchEvent, XsClient, XsError};
    /// # struct Script(Vec<u8>, Vec<(MsgType, Vec<u8>)>);
    /// # impl XsClient for Script { fn lost_events(&self) -> u64 { 0 }
    /// #   fn request(&mut self, _: TxId, t: MsgType, p: &Payload) -> Result<&[u8], XsError> { self.1.push((t, p.as_bytes().to_vec())); Ok(&self.0) }
    /// #   fn wait_watch(&mut self, _: Option<core::time::Duration>) -> Result<Option<WatchEvent<'_>>, XsError> { Ok(None) } }
    /// let mut xs = Script(b"7\0".to_vec(), Vec::new());
    /// let mut tx = xs.transaction()?;
    /// tx.write("data/a", b"1")?;
    /// tx.write("data/b", b"2")?;
    /// tx.commit()?; // both keys or neither
    /// assert_eq!(xs.1.len(), 4);
    /// # Ok::<(), XsError>(())
    /// ```
    pub fn write(&mut self, path: &str, value: &[u8]) -> Result<(), XsError> {
        verbs::write(self.xs, self.id, path, value)
    }

    /// [`XsClient::mkdir`] inside the transaction.
    ///
    /// # Errors
    ///
    /// As [`XsClient::mkdir`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use coresident_xen::protocol::xs_wire::{MsgType, Payload};
    /// # use coresident_xen::xenstore::{TxId, WatchEvent, XsClient, XsError};
    /// # struct Script(Vec<u8>, Vec<(MsgType, Vec<u8>)>);
    /// # impl XsClient for Script { fn lost_events(&self) -> u64 { 0 }
    /// #   fn request(&mut self, _: TxId, t: MsgType, p: &Payload) -> Result<&[u8], XsError> { self.1.push((t, p.as_bytes().to_vec())); Ok(&self.0) }
    /// #   fn wait_watch(&mut self, _: Option<core::time::Duration>) -> Result<Option<WatchEvent<'_>>, XsError> { Ok(None) } }
    /// let mut xs = Script(b"7\0".to_vec(), Vec::new());
    /// let mut tx = xs.transaction()?;
    /// tx.mkdir("data/app")?;
    /// tx.commit()?;
    /// assert_eq!(xs.1[1].0, MsgType::Mkdir);
    /// # Ok::<(), XsError>(())
    /// ```
    pub fn mkdir(&mut self, path: &str) -> Result<(), XsError> {
        verbs::simple(self.xs, self.id, MsgType::Mkdir, path)
    }

    /// [`XsClient::rm`] inside the transaction.
    ///
    /// # Errors
    ///
    /// As [`XsClient::rm`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use coresident_xen::protocol::xs_wire::{MsgType, Payload};
    /// # use coresident_xen::xenstore::{TxId, WatchEvent, XsClient, XsError};
    /// # struct Script(Vec<u8>, Vec<(MsgType, Vec<u8>)>);
    /// # impl XsClient for Script { fn lost_events(&self) -> u64 { 0 }
    /// #   fn request(&mut self, _: TxId, t: MsgType, p: &Payload) -> Result<&[u8], XsError> { self.1.push((t, p.as_bytes().to_vec())); Ok(&self.0) }
    /// #   fn wait_watch(&mut self, _: Option<core::time::Duration>) -> Result<Option<WatchEvent<'_>>, XsError> { Ok(None) } }
    /// let mut xs = Script(b"7\0".to_vec(), Vec::new());
    /// let mut tx = xs.transaction()?;
    /// tx.rm("data/old")?;
    /// tx.write("data/new", b"1")?; // a rename, seen whole or not at all
    /// tx.commit()?;
    /// # Ok::<(), XsError>(())
    /// ```
    pub fn rm(&mut self, path: &str) -> Result<(), XsError> {
        verbs::simple(self.xs, self.id, MsgType::Rm, path)
    }

    /// [`XsClient::directory`] inside the transaction.
    ///
    /// # Errors
    ///
    /// As [`XsClient::directory`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::xenstore::XsClient;
    /// use coresident_xen::XenStore;
    ///
    /// let mut xs = XenStore::open()?;
    /// // The peers and the generation of one list, from one snapshot.
    /// let mut tx = xs.transaction()?;
    /// let peers = tx.directory("coresident/peers")?.to_strings()?;
    /// let generation = tx.read("coresident/generation")?.to_vec();
    /// tx.commit()?;
    /// # drop((peers, generation));
    /// # Ok::<(), coresident_xen::XsError>(())
    /// ```
    pub fn directory(&mut self, path: &str) -> Result<Names<'_>, XsError> {
        verbs::directory(self.xs, self.id, path)
    }

    /// [`XsClient::set_perms`] inside the transaction.
    ///
    /// # Errors
    ///
    /// As [`XsClient::set_perms`].
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::protocol::xs_wire::{Access, Perm};
    /// # use coresident_xen::protocol::xs_wire::{MsgType, Payload};
    /// # use coresident_xen::xenstore::{TxId, WatchEvent, XsClient, XsError};
    /// # struct Script(Vec<u8>, Vec<(MsgType, Vec<u8>)>);
    /// # impl XsClient for Script { fn lost_events(&self) -> u64 { 0 }
    /// #   fn request(&mut self, _: TxId, t: MsgType, p: &Payload) -> Result<&[u8], XsError> { self.1.push((t, p.as_bytes().to_vec())); Ok(&self.0) }
    /// #   fn wait_watch(&mut self, _: Option<core::time::Duration>) -> Result<Option<WatchEvent<'_>>, XsError> { Ok(None) } }
    /// let mut xs = Script(b"7\0".to_vec(), Vec::new());
    /// let mut tx = xs.transaction()?;
    /// tx.write("data/a", b"1")?;
    /// // Created and restricted in one step: no reader sees it open.
    /// tx.set_perms("data/a", &[Perm { domid: 5, access: Access::None }])?;
    /// tx.commit()?;
    /// # Ok::<(), XsError>(())
    /// ```
    pub fn set_perms(&mut self, path: &str, perms: &[Perm]) -> Result<(), XsError> {
        verbs::set_perms(self.xs, self.id, path, perms)
    }

    fn end(&mut self, commit: bool) -> Result<(), XsError> {
        self.done = true;
        let mut p = Payload::new();
        p.string(if commit { b"T" } else { b"F" })?;
        self.xs
            .request(self.id, MsgType::TransactionEnd, &p)
            .map(drop)
    }

    /// Commits.
    ///
    /// # Errors
    ///
    /// [`XsError::Daemon`]`(EAGAIN)`: a conflicting change; redo the
    /// transaction. The connection's.
    ///
    /// # Examples
    ///
    /// ```
    /// # use coresident_xen::protocol::xs_wire::{MsgType, Payload};
    /// # use coresident_xen::xenstore::{TxId, WatchEvent, XsClient, XsError};
    /// # struct Script(Vec<u8>, Vec<(MsgType, Vec<u8>)>);
    /// # impl XsClient for Script { fn lost_events(&self) -> u64 { 0 }
    /// #   fn request(&mut self, _: TxId, t: MsgType, p: &Payload) -> Result<&[u8], XsError> { self.1.push((t, p.as_bytes().to_vec())); Ok(&self.0) }
    /// #   fn wait_watch(&mut self, _: Option<core::time::Duration>) -> Result<Option<WatchEvent<'_>>, XsError> { Ok(None) } }
    /// let mut xs = Script(b"7\0".to_vec(), Vec::new());
    /// let mut tx = xs.transaction()?;
    /// tx.write("data/a", b"1")?;
    /// tx.commit()?;
    /// assert_eq!(xs.1.last(), Some(&(MsgType::TransactionEnd, b"T\0".to_vec())));
    /// # Ok::<(), XsError>(())
    /// ```
    pub fn commit(mut self) -> Result<(), XsError> {
        self.end(true)
    }

    /// Aborts.
    ///
    /// # Errors
    ///
    /// The connection's.
    ///
    /// # Examples
    ///
    /// ```
    /// # use coresident_xen::protocol::xs_wire::{MsgType, Payload};
    /// # use coresident_xen::xenstore::{TxId, WatchEvent, XsClient, XsError};
    /// # struct Script(Vec<u8>, Vec<(MsgType, Vec<u8>)>);
    /// # impl XsClient for Script { fn lost_events(&self) -> u64 { 0 }
    /// #   fn request(&mut self, _: TxId, t: MsgType, p: &Payload) -> Result<&[u8], XsError> { self.1.push((t, p.as_bytes().to_vec())); Ok(&self.0) }
    /// #   fn wait_watch(&mut self, _: Option<core::time::Duration>) -> Result<Option<WatchEvent<'_>>, XsError> { Ok(None) } }
    /// let mut xs = Script(b"7\0".to_vec(), Vec::new());
    /// let mut tx = xs.transaction()?;
    /// tx.write("data/a", b"1")?;
    /// tx.abort()?; // nothing of it happened
    /// assert_eq!(xs.1.last(), Some(&(MsgType::TransactionEnd, b"F\0".to_vec())));
    /// # Ok::<(), XsError>(())
    /// ```
    pub fn abort(mut self) -> Result<(), XsError> {
        self.end(false)
    }
}

impl<X: XsClient> Drop for Transaction<'_, X> {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.end(false);
        }
    }
}

/// Runs `f` in a transaction and commits, redoing the whole of it when the
/// commit meets a conflicting change (`EAGAIN`), up to [`TX_RETRIES`]
/// times. An error of `f` aborts.
///
/// # Errors
///
/// `f`'s; [`XsError::Daemon`]`(EAGAIN)` after the last try; the
/// connection's.
///
/// # Examples
///
/// ```
/// use coresident_xen::xenstore::with_transaction;
/// # use coresident_xen::protocol::xs_wire::{MsgType, Payload};
/// # use coresident_xen::xenstore::{TxId, WatchEvent, XsClient, XsError};
/// # struct Script(Vec<u8>, Vec<(MsgType, Vec<u8>)>);
/// # impl XsClient for Script { fn lost_events(&self) -> u64 { 0 }
/// #   fn request(&mut self, _: TxId, t: MsgType, p: &Payload) -> Result<&[u8], XsError> { self.1.push((t, p.as_bytes().to_vec())); Ok(&self.0) }
/// #   fn wait_watch(&mut self, _: Option<core::time::Duration>) -> Result<Option<WatchEvent<'_>>, XsError> { Ok(None) } }
/// let mut xs = Script(b"7\0".to_vec(), Vec::new());
/// let n = with_transaction(&mut xs, |tx| {
///     tx.write("data/a", b"1")?;
///     tx.write("data/b", b"2")?;
///     Ok(2)
/// })?;
/// assert_eq!(n, 2);
/// # Ok::<(), XsError>(())
/// ```
pub fn with_transaction<X: XsClient, T>(
    xs: &mut X,
    mut f: impl FnMut(&mut Transaction<'_, X>) -> Result<T, XsError>,
) -> Result<T, XsError> {
    for _ in 0..TX_RETRIES {
        let mut tx = xs.transaction()?;
        let v = f(&mut tx)?;
        match tx.commit() {
            Ok(()) => return Ok(v),
            Err(XsError::Daemon(XsErrno::EAGAIN)) => {}
            Err(e) => return Err(e),
        }
    }
    Err(XsError::Daemon(XsErrno::EAGAIN))
}
