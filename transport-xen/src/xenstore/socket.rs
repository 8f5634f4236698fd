//! A XenStore client speaking the wire protocol ([`crate::protocol::xs_wire`])
//! directly: over xenstored's Unix socket in dom0, or `/dev/xen/xenbus` in
//! any domain (the kernel relays the same messages). No C library.
//!
//! One request is in flight at a time. Watch events arrive unrequested and
//! interleaved with replies; the client demultiplexes them by type
//! (`XS_WATCH_EVENT`) into a bounded queue that [`XsClient::wait_watch`]
//! drains. Watch events are hints: re-read the keys they name.
//!
//! Hostile input: values and directory names may be written by a guest.
//! [`XsClient::read_u32`] and friends parse strictly; framing errors (a
//! length over `XENSTORE_PAYLOAD_MAX`, an unknown type, a reply to another
//! request) mark the connection broken, since its byte stream can no longer
//! be trusted to be in step.
//!
//! A request the daemon refuses is that request's error, never the
//! connection's: over the socket xenstored answers `XS_ERROR`; over
//! `/dev/xen/xenbus` Linux answers some refusals (a watch past the
//! domain's quota, `E2BIG`; a malformed watch path, `EINVAL`) with the
//! `write(2)` error instead, having consumed the message, and the client
//! reports them as the same [`XsError::Daemon`] (issue 17, finding 12).
//!
//! # Examples
//!
//! ```no_run
//! use coresident_xen::xenstore::XsClient;
//! use coresident_xen::XenStore;
//!
//! // dom0: xenstored's socket; a domU: /dev/xen/xenbus.
//! let mut xs = XenStore::open()?;
//! let domid = xs.read("domid")?.to_vec();
//! println!("this domain: {}", String::from_utf8_lossy(&domid));
//! # Ok::<(), coresident_xen::XsError>(())
//! ```

use core::time::Duration;
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use super::{TxId, WatchEvent, XsClient, XsError};
use crate::linux::sys::Errno;
use crate::protocol::xs_wire::{self, Header, MsgType, Payload, WireError, XsErrno, HEADER_LEN};

/// xenstored's socket (Xen 4.17; newer releases may drop it).
///
/// # Examples
///
/// ```
/// use coresident_xen::xenstore::SOCKET_PATH;
///
/// assert_eq!(SOCKET_PATH, "/var/run/xenstored/socket");
/// ```
pub const SOCKET_PATH: &str = "/var/run/xenstored/socket";
/// The kernel's XenStore device, in every domain.
///
/// # Examples
///
/// ```
/// use coresident_xen::xenstore::XENBUS_PATH;
///
/// assert_eq!(XENBUS_PATH, "/dev/xen/xenbus");
/// ```
pub const XENBUS_PATH: &str = "/dev/xen/xenbus";
/// How many watch events are queued before new ones are dropped (counted in
/// [`XsClient::lost_events`]).
///
/// # Examples
///
/// ```
/// use coresident_xen::xenstore::EVENT_QUEUE_MAX;
///
/// assert_eq!(EVENT_QUEUE_MAX, 1024);
/// ```
pub const EVENT_QUEUE_MAX: usize = 1024;

fn errno(e: &io::Error) -> i32 {
    Errno::from_io_error(e).unwrap_or(Errno::IO).raw_os_error()
}

fn io_error(e: &io::Error) -> XsError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        XsError::Closed
    } else {
        XsError::Io(errno(e))
    }
}

/// A request `/dev/xen/xenbus` refused through `write(2)`'s errno: the
/// error xenstored would have sent in `XS_ERROR` (the kernel relays it).
fn refused(e: &io::Error) -> XsError {
    XsError::from_errno_name(XsErrno::from_errno(errno(e)))
}

/// The connection: xenstored's socket or the xenbus device.
///
/// # Examples
///
/// ```no_run
/// use coresident_xen::xenstore::{Conn, XenStore};
///
/// // `XenStore::open()`'s type: `XenStore<Conn>`, a socket or the device.
/// let xs: XenStore<Conn> = XenStore::open_xenbus()?;
/// # drop(xs);
/// # Ok::<(), coresident_xen::XsError>(())
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Conn {
    /// `/var/run/xenstored/socket` (dom0 with a local xenstored).
    Socket(UnixStream),
    /// `/dev/xen/xenbus`.
    Xenbus(File),
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Socket(s) => s.read(buf),
            Self::Xenbus(f) => f.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Socket(s) => s.write(buf),
            Self::Xenbus(f) => f.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsFd for Conn {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Self::Socket(s) => s.as_fd(),
            Self::Xenbus(f) => f.as_fd(),
        }
    }
}

/// A XenStore client over a socket or `/dev/xen/xenbus` (or, in tests, any
/// blocking byte stream with a descriptor). The verbs are
/// [`XsClient`]'s.
///
/// # Examples
///
/// ```no_run
/// use coresident_xen::xenstore::XsClient;
/// use coresident_xen::XenStore;
///
/// let mut xs = XenStore::open()?;
/// let me = xs.read_u32("domid")?;
/// xs.write("data/hello", format!("from {me}").as_bytes())?;
/// # Ok::<(), coresident_xen::xenstore::XsError>(())
/// ```
#[derive(Debug)]
pub struct XenStore<C: Read + Write + AsFd = Conn> {
    conn: C,
    next_req: u32,
    /// The last reply's payload.
    reply: Vec<u8>,
    /// Watch events not yet taken, at most [`EVENT_QUEUE_MAX`].
    events: VecDeque<(Vec<u8>, Vec<u8>)>,
    /// The event [`XsClient::wait_watch`] returned last.
    current: (Vec<u8>, Vec<u8>),
    lost_events: u64,
    broken: bool,
    reply_timeout: Duration,
    /// The connection takes one whole message per `write(2)` and reports
    /// a refused request as that write's error (`/dev/xen/xenbus`).
    message_writes: bool,
}

impl XenStore<Conn> {
    /// Connects to xenstored's socket if there is one, else opens
    /// `/dev/xen/xenbus`.
    ///
    /// # Errors
    ///
    /// [`XsError::Open`] with the xenbus device's error.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::xenstore::XsClient;
    /// use coresident_xen::XenStore;
    ///
    /// let mut xs = XenStore::open()?; // dom0: the socket; a guest: xenbus
    /// println!("this is domain {}", xs.read_u32("domid")?);
    /// # Ok::<(), coresident_xen::XsError>(())
    /// ```
    pub fn open() -> Result<Self, XsError> {
        Self::open_socket().or_else(|_| Self::open_xenbus())
    }

    /// Connects to xenstored's socket ([`SOCKET_PATH`]).
    ///
    /// # Errors
    ///
    /// [`XsError::Open`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::XenStore;
    ///
    /// // In dom0, insisting on xenstored's socket.
    /// let xs = XenStore::open_socket()?;
    /// # drop(xs);
    /// # Ok::<(), coresident_xen::XsError>(())
    /// ```
    pub fn open_socket() -> Result<Self, XsError> {
        let s = UnixStream::connect(SOCKET_PATH).map_err(|e| XsError::Open(errno(&e)))?;
        Ok(Self::new(Conn::Socket(s)))
    }

    /// Opens `/dev/xen/xenbus` ([`XENBUS_PATH`]).
    ///
    /// # Errors
    ///
    /// [`XsError::Open`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use coresident_xen::XenStore;
    ///
    /// // In a guest (or a dom0 without the socket).
    /// let xs = XenStore::open_xenbus()?;
    /// # drop(xs);
    /// # Ok::<(), coresident_xen::XsError>(())
    /// ```
    pub fn open_xenbus() -> Result<Self, XsError> {
        let f = File::options()
            .read(true)
            .write(true)
            .open(XENBUS_PATH)
            .map_err(|e| XsError::Open(errno(&e)))?;
        Ok(Self::xenbus(Conn::Xenbus(f)))
    }
}

impl<C: Read + Write + AsFd> XenStore<C> {
    /// A client over an open, blocking connection with a socket's semantics
    /// (tests use one end of a `UnixStream::pair()`).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::io::{Read, Write};
    /// use std::os::unix::net::UnixStream;
    /// use coresident_xen::protocol::xs_wire::{Header, MsgType};
    /// use coresident_xen::xenstore::XsClient;
    /// use coresident_xen::XenStore;
    ///
    /// let (ours, mut daemon) = UnixStream::pair()?;
    /// let mut xs = XenStore::new(ours);
    /// std::thread::spawn(move || -> std::io::Result<()> {
    ///     let mut req = [0u8; 16 + 6]; // a header, then "domid\0"
    ///     daemon.read_exact(&mut req)?;
    ///     let h = Header::decode(&req[..16].try_into().unwrap()).unwrap();
    ///     let reply = Header { ty: MsgType::Read, len: 1, ..h };
    ///     daemon.write_all(&reply.encode().unwrap())?;
    ///     daemon.write_all(b"5")
    /// });
    /// assert_eq!(xs.read_u32("domid")?, 5);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(conn: C) -> Self {
        Self {
            conn,
            next_req: 1,
            reply: Vec::new(),
            events: VecDeque::new(),
            current: (Vec::new(), Vec::new()),
            lost_events: 0,
            broken: false,
            reply_timeout: Duration::from_secs(60),
            message_writes: false,
        }
    }

    /// A client over a connection with `/dev/xen/xenbus`'s semantics: each
    /// `write(2)` carries one whole message, and the kernel answers a
    /// request it refuses (a watch over the domain's quota, a malformed
    /// path) with the `write` error itself, having consumed the message
    /// (Linux's `xenbus_file_write` empties its buffer): that request
    /// fails with [`XsError::Daemon`] (or [`XsError::NotFound`]), as it
    /// would over xenstored's socket, and the connection goes on.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::fs::File;
    /// use coresident_xen::XenStore;
    ///
    /// // What `XenStore::open_xenbus` does, over a device opened by the caller.
    /// let dev = File::options().read(true).write(true).open("/dev/xen/xenbus")?;
    /// let xs = XenStore::xenbus(dev);
    /// # drop(xs);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn xenbus(conn: C) -> Self {
        Self {
            message_writes: true,
            ..Self::new(conn)
        }
    }

    /// How long a request waits for its reply (default 60 s; xenstored
    /// under emulation is slow). After a timeout the connection is broken.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::os::unix::net::UnixStream;
    /// use std::time::Duration;
    /// use coresident_xen::xenstore::{XsClient, XsError};
    /// use coresident_xen::XenStore;
    ///
    /// let (ours, _silent) = UnixStream::pair()?; // a daemon that never answers
    /// let mut xs = XenStore::new(ours);
    /// xs.set_reply_timeout(Duration::from_millis(20));
    /// assert_eq!(xs.read("domid").err(), Some(XsError::Timeout));
    /// assert_eq!(xs.read("domid").err(), Some(XsError::Broken)); // for good
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_reply_timeout(&mut self, timeout: Duration) {
        self.reply_timeout = timeout;
    }

    /// Receives one message; `None` if nothing arrived before `deadline`.
    fn recv(&mut self, deadline: Option<Instant>) -> Result<Option<(Header, Vec<u8>)>, XsError> {
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let readable = crate::linux::sys::poll_readable(self.conn.as_fd(), left)
            .map_err(|e| XsError::Io(e.raw_os_error()))?;
        if !readable {
            return Ok(None);
        }
        let mut raw = [0u8; HEADER_LEN];
        self.conn.read_exact(&mut raw).map_err(|e| io_error(&e))?;
        let header = Header::decode(&raw)?;
        let mut body = vec![0u8; header.len];
        self.conn.read_exact(&mut body).map_err(|e| io_error(&e))?;
        Ok(Some((header, body)))
    }

    fn queue_event(&mut self, body: &[u8]) -> Result<(), XsError> {
        let (path, token) = xs_wire::parse_watch_event(body)?;
        if self.events.len() >= EVENT_QUEUE_MAX {
            self.lost_events = self.lost_events.saturating_add(1);
            return Ok(());
        }
        self.events.push_back((path.to_vec(), token.to_vec()));
        Ok(())
    }

    fn request_inner(&mut self, tx: TxId, ty: MsgType, payload: &Payload) -> Result<(), XsError> {
        let body = payload.as_bytes();
        let req_id = self.next_req;
        self.next_req = self.next_req.wrapping_add(1);
        let header = Header {
            ty,
            req_id,
            tx_id: tx,
            len: body.len(),
        }
        .encode()?;
        // One write: /dev/xen/xenbus wants whole messages.
        let mut msg = Vec::with_capacity(HEADER_LEN + body.len());
        msg.extend_from_slice(&header);
        msg.extend_from_slice(body);
        if self.message_writes {
            match self.conn.write(&msg) {
                Ok(n) if n == msg.len() => {}
                // A short write of a whole-message device: out of step.
                Ok(_) => return Err(XsError::Io(Errno::IO.raw_os_error())),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    return Err(XsError::Io(Errno::INTR.raw_os_error()))
                }
                // The kernel refused this request and consumed it.
                Err(e) => return Err(refused(&e)),
            }
        } else {
            self.conn.write_all(&msg).map_err(|e| io_error(&e))?;
        }
        let deadline = Instant::now() + self.reply_timeout;
        loop {
            let Some((h, body)) = self.recv(Some(deadline))? else {
                return Err(XsError::Timeout);
            };
            if h.ty == MsgType::WatchEvent {
                self.queue_event(&body)?;
                continue;
            }
            if h.req_id != req_id {
                return Err(XsError::UnexpectedReply(Some(h.ty)));
            }
            if h.ty == MsgType::Error {
                return Err(XsError::from_reply(&body));
            }
            if h.ty != ty {
                return Err(XsError::UnexpectedReply(Some(h.ty)));
            }
            self.reply = body;
            return Ok(());
        }
    }
}

/// Whether an error leaves the byte stream out of step.
fn breaks(e: &XsError) -> bool {
    matches!(
        e,
        XsError::Io(_)
            | XsError::Closed
            | XsError::Timeout
            | XsError::UnexpectedReply(_)
            | XsError::Wire(
                WireError::TooLong(_) | WireError::UnknownType(_) | WireError::Malformed
            )
    )
}

impl<C: Read + Write + AsFd> XsClient for XenStore<C> {
    fn request(&mut self, tx: TxId, ty: MsgType, payload: &Payload) -> Result<&[u8], XsError> {
        if self.broken {
            return Err(XsError::Broken);
        }
        let r = self.request_inner(tx, ty, payload);
        if let Err(e) = &r {
            self.broken |= breaks(e);
        }
        r.map(|()| self.reply.as_slice())
    }

    fn wait_watch(&mut self, timeout: Option<Duration>) -> Result<Option<WatchEvent<'_>>, XsError> {
        if self.events.is_empty() {
            if self.broken {
                return Err(XsError::Broken);
            }
            let deadline = timeout.map(|t| Instant::now() + t);
            let r = self.recv(deadline).and_then(|m| match m {
                None => Ok(false),
                Some((h, body)) if h.ty == MsgType::WatchEvent => {
                    self.queue_event(&body).map(|()| true)
                }
                Some((h, _)) => Err(XsError::UnexpectedReply(Some(h.ty))),
            });
            match r {
                Ok(false) => return Ok(None),
                Ok(true) => {}
                Err(e) => {
                    self.broken = true;
                    return Err(e);
                }
            }
        }
        match self.events.pop_front() {
            Some(ev) => {
                self.current = ev;
                Ok(Some(WatchEvent {
                    path: &self.current.0,
                    token: &self.current.1,
                }))
            }
            None => Ok(None),
        }
    }

    fn lost_events(&self) -> u64 {
        self.lost_events
    }

    fn poll_fd(&self) -> Option<i32> {
        Some(self.conn.as_fd().as_raw_fd())
    }

    fn has_queued_event(&self) -> bool {
        !self.events.is_empty()
    }
}
