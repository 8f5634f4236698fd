//! A XenStore client speaking the wire protocol ([`crate::protocol::xs_wire`])
//! directly: over xenstored's Unix socket in dom0, or `/dev/xen/xenbus` in
//! any domain (the kernel relays the same messages). No C library.
//!
//! One request is in flight at a time. Watch events arrive unrequested and
//! interleaved with replies; the client demultiplexes them by type
//! (`XS_WATCH_EVENT`) into a bounded queue that [`XenStore::wait_watch`]
//! drains. Watch events are hints: re-read the keys they name.
//!
//! Hostile input: values and directory names may be written by a guest.
//! [`XenStore::read_u32`] and friends parse strictly; framing errors (a
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

use core::fmt;
use core::time::Duration;
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use crate::linux::sys::Errno;
use crate::protocol::xs_wire::{
    self, Header, MsgType, Payload, Perm, ValueError, WireError, XsErrno, HEADER_LEN,
};
use crate::types::DomId;

/// xenstored's socket (Xen 4.17; newer releases may drop it).
pub const SOCKET_PATH: &str = "/var/run/xenstored/socket";
/// The kernel's XenStore device, in every domain.
pub const XENBUS_PATH: &str = "/dev/xen/xenbus";
/// How many watch events are queued before new ones are dropped (counted in
/// [`XenStore::lost_events`]).
pub const EVENT_QUEUE_MAX: usize = 1024;

/// A failure of [`XenStore`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum XsError {
    /// Neither the socket nor `/dev/xen/xenbus` could be opened.
    Open(Errno),
    /// Reading or writing the connection failed.
    Io(Errno),
    /// The daemon closed the connection.
    Closed,
    /// No reply within the reply timeout (the connection is then broken).
    Timeout,
    /// The key does not exist (`ENOENT`).
    NotFound,
    /// Another error reply from xenstored.
    Daemon(XsErrno),
    /// A request that cannot be encoded, or a reply that cannot be decoded.
    Wire(WireError),
    /// A reply to another request, or of the wrong type.
    UnexpectedReply,
    /// An earlier framing error left the connection out of step.
    Broken,
    /// A value that is not what the caller asked for.
    Value(ValueError),
}

impl fmt::Display for XsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Open(e) => write!(f, "cannot connect to XenStore: {e}"),
            Self::Io(e) => write!(f, "XenStore connection failed: {e}"),
            Self::Closed => f.write_str("XenStore closed the connection"),
            Self::Timeout => f.write_str("XenStore did not reply in time"),
            Self::NotFound => f.write_str("no such XenStore key (ENOENT)"),
            Self::Daemon(e) => write!(f, "XenStore refused: {}", e.name()),
            Self::Wire(e) => write!(f, "XenStore protocol error: {e}"),
            Self::UnexpectedReply => f.write_str("XenStore reply does not match the request"),
            Self::Broken => f.write_str("XenStore connection is out of step after an error"),
            Self::Value(e) => write!(f, "bad XenStore value: {e}"),
        }
    }
}

impl std::error::Error for XsError {}

impl From<WireError> for XsError {
    fn from(e: WireError) -> Self {
        Self::Wire(e)
    }
}

impl From<ValueError> for XsError {
    fn from(e: ValueError) -> Self {
        Self::Value(e)
    }
}

fn io_error(e: &io::Error) -> XsError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        XsError::Closed
    } else {
        XsError::Io(Errno::from_io_error(e).unwrap_or(Errno::IO))
    }
}

/// A request `/dev/xen/xenbus` refused through `write(2)`'s errno: the
/// error xenstored would have sent in `XS_ERROR` (the kernel relays it).
fn refused(e: &io::Error) -> XsError {
    let errno = Errno::from_io_error(e).unwrap_or(Errno::IO);
    match XsErrno::from_errno(errno.raw_os_error()) {
        XsErrno::ENOENT => XsError::NotFound,
        e => XsError::Daemon(e),
    }
}

/// A watch event: `path` changed (or the watch was just set: xenstored
/// fires every new watch once).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    /// The node that changed (lossily UTF-8: guests can't write non-ASCII
    /// paths, but this is not trusted).
    pub path: String,
    /// The token given to [`XenStore::watch`].
    pub token: String,
}

/// A transaction id (`tx_id`), 0 = none.
type TxId = u32;

/// The connection: xenstored's socket or the xenbus device.
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

/// A XenStore client.
#[derive(Debug)]
pub struct XenStore<C: Read + Write + AsFd = Conn> {
    conn: C,
    next_req: u32,
    events: VecDeque<WatchEvent>,
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
    pub fn open() -> Result<Self, XsError> {
        Self::open_socket().or_else(|_| Self::open_xenbus())
    }

    /// Connects to xenstored's socket ([`SOCKET_PATH`]).
    ///
    /// # Errors
    ///
    /// [`XsError::Open`].
    pub fn open_socket() -> Result<Self, XsError> {
        let s = UnixStream::connect(SOCKET_PATH)
            .map_err(|e| XsError::Open(Errno::from_io_error(&e).unwrap_or(Errno::IO)))?;
        Ok(Self::new(Conn::Socket(s)))
    }

    /// Opens `/dev/xen/xenbus` ([`XENBUS_PATH`]).
    ///
    /// # Errors
    ///
    /// [`XsError::Open`].
    pub fn open_xenbus() -> Result<Self, XsError> {
        let f = File::options()
            .read(true)
            .write(true)
            .open(XENBUS_PATH)
            .map_err(|e| XsError::Open(Errno::from_io_error(&e).unwrap_or(Errno::IO)))?;
        Ok(Self::xenbus(Conn::Xenbus(f)))
    }
}

impl<C: Read + Write + AsFd> XenStore<C> {
    /// A client over an open, blocking connection (tests use one end of a
    /// `UnixStream::pair()`).
    pub fn new(conn: C) -> Self {
        Self {
            conn,
            next_req: 1,
            events: VecDeque::new(),
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
    pub fn xenbus(conn: C) -> Self {
        Self {
            message_writes: true,
            ..Self::new(conn)
        }
    }

    /// How long a request waits for its reply (default 60 s; xenstored
    /// under emulation is slow). After a timeout the connection is broken.
    pub fn set_reply_timeout(&mut self, timeout: Duration) {
        self.reply_timeout = timeout;
    }

    /// Whether a watch event is queued already (the connection's
    /// descriptor then need not be readable for one to be there).
    pub(crate) fn has_queued_event(&self) -> bool {
        !self.events.is_empty()
    }

    /// The connection's descriptor, readable when a message arrived.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.conn.as_fd()
    }

    /// Watch events dropped because the queue was full.
    pub fn lost_events(&self) -> u64 {
        self.lost_events
    }

    /// Receives one message; `None` if nothing arrived before `deadline`.
    fn recv(&mut self, deadline: Option<Instant>) -> Result<Option<(Header, Vec<u8>)>, XsError> {
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if !crate::linux::sys::poll_readable(self.conn.as_fd(), left).map_err(XsError::Io)? {
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
        self.events.push_back(WatchEvent {
            path: String::from_utf8_lossy(path).into_owned(),
            token: String::from_utf8_lossy(token).into_owned(),
        });
        Ok(())
    }

    /// Sends one request and waits for its reply, queueing watch events
    /// that arrive meanwhile.
    fn request(&mut self, tx: TxId, ty: MsgType, payload: &Payload) -> Result<Vec<u8>, XsError> {
        if self.broken {
            return Err(XsError::Broken);
        }
        let r = self.request_inner(tx, ty, payload);
        if matches!(
            r,
            Err(XsError::Io(_)
                | XsError::Closed
                | XsError::Timeout
                | XsError::UnexpectedReply
                | XsError::Wire(
                    WireError::TooLong(_) | WireError::UnknownType(_) | WireError::Malformed
                ))
        ) {
            self.broken = true;
        }
        r
    }

    fn request_inner(
        &mut self,
        tx: TxId,
        ty: MsgType,
        payload: &Payload,
    ) -> Result<Vec<u8>, XsError> {
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
                Ok(_) => return Err(XsError::Io(Errno::IO)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    return Err(XsError::Io(Errno::INTR))
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
                return Err(XsError::UnexpectedReply);
            }
            if h.ty == MsgType::Error {
                return Err(match XsErrno::parse(&body) {
                    XsErrno::ENOENT => XsError::NotFound,
                    e => XsError::Daemon(e),
                });
            }
            if h.ty != ty {
                return Err(XsError::UnexpectedReply);
            }
            return Ok(body);
        }
    }

    fn path_request(&mut self, tx: TxId, ty: MsgType, path: &str) -> Result<Vec<u8>, XsError> {
        let mut p = Payload::new();
        p.path(path)?;
        self.request(tx, ty, &p)
    }

    fn do_write(&mut self, tx: TxId, path: &str, value: &[u8]) -> Result<(), XsError> {
        let mut p = Payload::new();
        p.path(path)?.raw(value)?;
        self.request(tx, MsgType::Write, &p).map(drop)
    }

    fn do_directory(&mut self, tx: TxId, path: &str) -> Result<Vec<String>, XsError> {
        let body = self.path_request(tx, MsgType::Directory, path)?;
        xs_wire::split_strings(&body)
            .map(|s| {
                core::str::from_utf8(s)
                    .map(str::to_owned)
                    .map_err(|_| XsError::Value(ValueError::NotUtf8))
            })
            .collect()
    }

    /// Reads a value (raw bytes; a guest may have written anything).
    ///
    /// # Errors
    ///
    /// [`XsError::NotFound`], [`XsError::Daemon`] (`EACCES`), and the
    /// connection errors.
    pub fn read(&mut self, path: &str) -> Result<Vec<u8>, XsError> {
        self.path_request(0, MsgType::Read, path)
    }

    /// Reads a UTF-8 value.
    ///
    /// # Errors
    ///
    /// As [`XenStore::read`], and [`ValueError::NotUtf8`].
    pub fn read_string(&mut self, path: &str) -> Result<String, XsError> {
        String::from_utf8(self.read(path)?).map_err(|_| XsError::Value(ValueError::NotUtf8))
    }

    /// Reads a plain decimal `u32` (grant refs, ports).
    ///
    /// # Errors
    ///
    /// As [`XenStore::read`], and [`XsError::Value`] for anything but
    /// `[0-9]+` within range.
    pub fn read_u32(&mut self, path: &str) -> Result<u32, XsError> {
        Ok(xs_wire::parse_u32(&self.read(path)?)?)
    }

    /// Writes a value, creating the node (and missing parents).
    ///
    /// # Errors
    ///
    /// [`XsError::Wire`] for a path or value over the limits,
    /// [`XsError::Daemon`] (`EACCES`, `ENOSPC`), connection errors.
    pub fn write(&mut self, path: &str, value: &[u8]) -> Result<(), XsError> {
        self.do_write(0, path, value)
    }

    /// Creates an empty node (no error if it exists).
    ///
    /// # Errors
    ///
    /// [`XsError::Daemon`], connection errors.
    pub fn mkdir(&mut self, path: &str) -> Result<(), XsError> {
        self.path_request(0, MsgType::Mkdir, path).map(drop)
    }

    /// Removes a node and everything below it.
    ///
    /// # Errors
    ///
    /// [`XsError::NotFound`], [`XsError::Daemon`], connection errors.
    pub fn rm(&mut self, path: &str) -> Result<(), XsError> {
        self.path_request(0, MsgType::Rm, path).map(drop)
    }

    /// Lists the children of a node.
    ///
    /// # Errors
    ///
    /// [`XsError::NotFound`], [`ValueError::NotUtf8`], connection errors.
    pub fn directory(&mut self, path: &str) -> Result<Vec<String>, XsError> {
        self.do_directory(0, path)
    }

    /// A node's permissions; the first entry is the owner.
    ///
    /// # Errors
    ///
    /// [`XsError::NotFound`], [`XsError::Value`] for a malformed entry,
    /// connection errors.
    pub fn get_perms(&mut self, path: &str) -> Result<Vec<Perm>, XsError> {
        let body = self.path_request(0, MsgType::GetPerms, path)?;
        xs_wire::split_strings(&body)
            .map(|s| Perm::parse(s).map_err(XsError::Value))
            .collect()
    }

    /// Sets a node's permissions: `perms[0]` is the owner and the default
    /// for unlisted domains; only the owner (or dom0) may do this.
    ///
    /// # Errors
    ///
    /// [`XsError::Wire`] (no entries, or too many), [`XsError::Daemon`],
    /// connection errors.
    pub fn set_perms(&mut self, path: &str, perms: &[Perm]) -> Result<(), XsError> {
        if perms.is_empty() {
            return Err(XsError::Wire(WireError::Malformed));
        }
        let mut p = Payload::new();
        p.path(path)?;
        let mut buf = [0u8; 6];
        for perm in perms {
            p.string(perm.encode(&mut buf))?;
        }
        self.request(0, MsgType::SetPerms, &p).map(drop)
    }

    /// Watches `path` and everything below it; events carry `token`.
    /// xenstored fires a new watch once right away.
    ///
    /// # Errors
    ///
    /// [`XsError::Daemon`] (`EEXIST` for the same path and token twice,
    /// `E2BIG` past the domain's watch quota, `EINVAL` for a malformed
    /// path), connection errors.
    pub fn watch(&mut self, path: &str, token: &str) -> Result<(), XsError> {
        let mut p = Payload::new();
        p.path(path)?.string(token.as_bytes())?;
        self.request(0, MsgType::Watch, &p).map(drop)
    }

    /// Removes a watch.
    ///
    /// # Errors
    ///
    /// [`XsError::NotFound`], connection errors.
    pub fn unwatch(&mut self, path: &str, token: &str) -> Result<(), XsError> {
        let mut p = Payload::new();
        p.path(path)?.string(token.as_bytes())?;
        self.request(0, MsgType::Unwatch, &p).map(drop)
    }

    /// The next watch event: a queued one, or one that arrives before
    /// `timeout` (`None`: wait forever). `Ok(None)` on timeout.
    ///
    /// # Errors
    ///
    /// Connection and framing errors; a reply with no request outstanding
    /// is [`XsError::UnexpectedReply`].
    pub fn wait_watch(&mut self, timeout: Option<Duration>) -> Result<Option<WatchEvent>, XsError> {
        if let Some(e) = self.events.pop_front() {
            return Ok(Some(e));
        }
        if self.broken {
            return Err(XsError::Broken);
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        let r = self.recv(deadline).and_then(|m| match m {
            None => Ok(None),
            Some((h, body)) if h.ty == MsgType::WatchEvent => {
                self.queue_event(&body)?;
                Ok(self.events.pop_front())
            }
            Some(_) => Err(XsError::UnexpectedReply),
        });
        if r.is_err() {
            self.broken = true;
        }
        r
    }

    /// The home path of a domain (`/local/domain/N`).
    ///
    /// # Errors
    ///
    /// [`XsError::Value`] for a non-UTF-8 reply, connection errors.
    pub fn get_domain_path(&mut self, domid: DomId) -> Result<String, XsError> {
        let mut p = Payload::new();
        p.string(domid.to_string().as_bytes())?;
        let body = self.request(0, MsgType::GetDomainPath, &p)?;
        let s = body.strip_suffix(&[0]).unwrap_or(&body);
        core::str::from_utf8(s)
            .map(str::to_owned)
            .map_err(|_| XsError::Value(ValueError::NotUtf8))
    }

    /// Starts a transaction. Commit with [`Transaction::commit`]; on
    /// [`XsError::Daemon`]`(EAGAIN)` the whole transaction must be redone.
    ///
    /// # Errors
    ///
    /// [`XsError::Value`] for a malformed id, connection errors.
    pub fn transaction(&mut self) -> Result<Transaction<'_, C>, XsError> {
        let mut p = Payload::new();
        p.string(b"")?;
        let body = self.request(0, MsgType::TransactionStart, &p)?;
        let id = xs_wire::parse_u32(&body)?;
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

/// An open XenStore transaction; aborted on drop unless committed.
#[derive(Debug)]
pub struct Transaction<'a, C: Read + Write + AsFd = Conn> {
    xs: &'a mut XenStore<C>,
    /// Non-zero transaction id.
    id: TxId,
    done: bool,
}

impl<C: Read + Write + AsFd> Transaction<'_, C> {
    /// [`XenStore::read`] inside the transaction.
    ///
    /// # Errors
    ///
    /// As [`XenStore::read`].
    pub fn read(&mut self, path: &str) -> Result<Vec<u8>, XsError> {
        self.xs.path_request(self.id, MsgType::Read, path)
    }

    /// [`XenStore::write`] inside the transaction.
    ///
    /// # Errors
    ///
    /// As [`XenStore::write`].
    pub fn write(&mut self, path: &str, value: &[u8]) -> Result<(), XsError> {
        self.xs.do_write(self.id, path, value)
    }

    /// [`XenStore::mkdir`] inside the transaction.
    ///
    /// # Errors
    ///
    /// As [`XenStore::mkdir`].
    pub fn mkdir(&mut self, path: &str) -> Result<(), XsError> {
        self.xs
            .path_request(self.id, MsgType::Mkdir, path)
            .map(drop)
    }

    /// [`XenStore::rm`] inside the transaction.
    ///
    /// # Errors
    ///
    /// As [`XenStore::rm`].
    pub fn rm(&mut self, path: &str) -> Result<(), XsError> {
        self.xs.path_request(self.id, MsgType::Rm, path).map(drop)
    }

    /// [`XenStore::directory`] inside the transaction.
    ///
    /// # Errors
    ///
    /// As [`XenStore::directory`].
    pub fn directory(&mut self, path: &str) -> Result<Vec<String>, XsError> {
        self.xs.do_directory(self.id, path)
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
    /// transaction. Connection errors.
    pub fn commit(mut self) -> Result<(), XsError> {
        self.end(true)
    }

    /// Aborts.
    ///
    /// # Errors
    ///
    /// Connection errors.
    pub fn abort(mut self) -> Result<(), XsError> {
        self.end(false)
    }
}

impl<C: Read + Write + AsFd> Drop for Transaction<'_, C> {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.end(false);
        }
    }
}
