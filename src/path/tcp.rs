//! `TcpPath`: a network path that keeps the no-loss promise across a receiver crash.
//!
//! Plain TCP does not: bytes in a crashed receiver's socket buffer are gone, and the
//! sender's kernel already called them sent. So the sender keeps every message until
//! the receiver *acknowledges its delivery* (to the application, by either path), and
//! after a reconnect resends, per (peer, flow), from the sequence number the receiver
//! says it expects next.
//!
//! ```text
//!   sender (connects)                                   receiver (listens)
//!   -----------------                                   ------------------
//!   send(): message -> replay buffer (per destination, by flow then seq, bounded)
//!   connect ---- HELLO {magic, version, sender's key} ---->  authorize(source, key)
//!           <--- WELCOME {(flow, next)...} ---------------  the reassembly's next per flow
//!   drop replay < next; write the rest, oldest first
//!   ---- DATA {flow header, payload} -------------------->  Inbox::offer -> reassembly
//!           <--- ACK {(flow, next)...} -------------------  after delivery (Router::recv)
//!   drop replay < next
//!           <--- RESEND {flow, from} --------------------  reassembly evicted a held one
//!   write replay >= from again
//!   connection lost: replay kept; reconnect with backoff, HELLO again
//! ```
//!
//! Frames are `[len: u32 LE][kind: u8][body]`, `len` counting kind and body; every
//! field a peer sends is checked and a bad one drops the connection (never a panic).
//!
//! # What it promises, and what it needs
//!
//! Every message `send` took reaches the receiver's reassembly once the receiver is
//! reachable again, and is resent until acknowledged; the reassembly makes delivery
//! exactly-once and in order. Across a receiver *restart*, that holds if the restarted
//! receiver knows what its predecessor delivered: it calls
//! [`Router::resume_flow`](crate::Router::resume_flow) from its own durable record
//! before it listens, and an acknowledgement is only sent for what the application was
//! handed. The replay buffer is bounded ([`TcpConfig::replay_bytes`]): a full one
//! refuses `send` (the router does not use the sequence number) until
//! acknowledgements free it; [`NetworkPath::send_blocking`] waits instead.
//!
//! TCP authenticates nothing: the sender's key comes from its hello. Bind the listener
//! where only peers can reach it, and give [`TcpConfig::authorize`] a check (for IP
//! keys, [`TcpConfig::source_must_match`]: the key must be the connection's source
//! address).

use super::WireKey;
use crate::flow::{FlowHeader, FLOW_HEADER_LEN};
use crate::net::{Inbox, NetworkPath, Offered};
use alloc::collections::BTreeMap;
use core::fmt;
use core::net::SocketAddr;
use core::time::Duration;
use hashbrown::HashMap;
use std::boxed::Box;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Instant;
use std::vec::Vec;

const MAGIC: [u8; 8] = *b"CRTCP\0\0\x01";
const VERSION: u32 = 1;

const KIND_HELLO: u8 = 1;
const KIND_WELCOME: u8 = 2;
const KIND_DATA: u8 = 3;
const KIND_ACK: u8 = 4;
const KIND_RESEND: u8 = 5;

/// `len` and `kind`.
const FRAME_HEAD: usize = 5;
const HELLO_LEN: usize = 8 + 4 + 16;
/// One `(flow, next)` pair of a WELCOME or an ACK.
const PAIR: usize = 12;

/// Where a destination key lives.
type Resolve<K> = Box<dyn FnMut(&K) -> Option<SocketAddr> + Send>;

/// A check of a connecting sender: its source address and the key it claims.
pub type Authorize<K> = Arc<dyn Fn(SocketAddr, &K) -> bool + Send + Sync>;

/// Tuning of a [`TcpPath`].
#[derive(Clone)]
pub struct TcpConfig<K> {
    /// Bytes of unacknowledged messages kept per destination (payloads plus 64 each).
    /// A send beyond it is refused (`send`) or waits (`send_blocking`). The receiver's
    /// per-peer hold budget should be at least this large plus its ring.
    pub replay_bytes: usize,
    /// The largest payload, both ways; a bigger frame from a peer drops its connection.
    pub max_message: usize,
    /// How long one connection attempt may block.
    pub connect_timeout: Duration,
    /// The first delay between failed connection attempts; it doubles up to
    /// `max_backoff`.
    pub backoff: Duration,
    /// The longest delay between connection attempts.
    pub max_backoff: Duration,
    /// Incoming connections at most (more are closed at once).
    pub max_connections: usize,
    /// Decides whether a sender claiming a key may deliver as it (`None`: anyone).
    pub authorize: Option<Authorize<K>>,
}

impl<K> fmt::Debug for TcpConfig<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpConfig")
            .field("replay_bytes", &self.replay_bytes)
            .field("max_message", &self.max_message)
            .field("connect_timeout", &self.connect_timeout)
            .field("backoff", &self.backoff)
            .field("max_backoff", &self.max_backoff)
            .field("max_connections", &self.max_connections)
            .field("authorize", &self.authorize.is_some())
            .finish()
    }
}

impl<K> Default for TcpConfig<K> {
    fn default() -> Self {
        Self {
            replay_bytes: 8 << 20,
            max_message: 16 << 20,
            connect_timeout: Duration::from_millis(200),
            backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(500),
            max_connections: 256,
            authorize: None,
        }
    }
}

impl<K: WireKey + Into<core::net::IpAddr> + 'static> TcpConfig<K> {
    /// An `authorize` check for IP keys: the claimed key must be the connection's
    /// source address.
    pub fn source_must_match() -> Authorize<K> {
        Arc::new(|src: SocketAddr, k: &K| src.ip() == (*k).into())
    }
}

/// Why a [`TcpPath`] did not take a message, or failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TcpError {
    /// No address is known for the destination.
    NoRoute,
    /// The destination's replay buffer is full: acknowledgements have not freed it.
    Full {
        /// The bound in bytes.
        replay_bytes: usize,
    },
    /// The payload exceeds [`TcpConfig::max_message`].
    TooLarge {
        /// Its length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// A blocking send's timeout passed.
    TimedOut,
    /// The listener or the poll set failed with this `errno`.
    Os(i32),
}

impl fmt::Display for TcpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::NoRoute => f.write_str("tcp path: no address known for the destination"),
            Self::Full { replay_bytes } => write!(
                f,
                "tcp path: {replay_bytes} bytes wait for acknowledgement: not taken"
            ),
            Self::TooLarge { len, max } => {
                write!(
                    f,
                    "tcp path: a {len}-byte message exceeds the {max}-byte maximum"
                )
            }
            Self::TimedOut => f.write_str("tcp path: timed out waiting for room"),
            Self::Os(e) => write!(f, "tcp path: system call failed with errno {e}"),
        }
    }
}

impl core::error::Error for TcpError {}

fn os(e: &io::Error) -> TcpError {
    TcpError::Os(e.raw_os_error().unwrap_or(0))
}

/// What a [`TcpPath`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpStats {
    /// Outgoing connections established (handshake done).
    pub connected: u64,
    /// Outgoing connections lost (the replay buffer kept their messages).
    pub disconnected: u64,
    /// Messages written again after a reconnect or a resend request.
    pub replayed: u64,
    /// Messages freed by acknowledgements.
    pub acknowledged: u64,
    /// Incoming connections accepted.
    pub accepted: u64,
    /// Incoming connections dropped: a malformed frame, a refused hello, too many.
    pub refused: u64,
    /// Messages handed to the inbox.
    pub received: u64,
    /// Messages the inbox refused for good (dropped).
    pub dropped: u64,
}

/// An outgoing connection.
#[derive(Debug)]
struct Out {
    stream: TcpStream,
    /// The WELCOME came: data may be written.
    ready: bool,
    tx: Vec<u8>,
    tx_pos: usize,
    rx: Vec<u8>,
}

/// A destination: its replay buffer and its connection.
#[derive(Debug)]
struct Dest<K> {
    key: K,
    addr: SocketAddr,
    conn: Option<Out>,
    /// Unacknowledged messages, per flow by sequence number.
    replay: HashMap<u32, BTreeMap<u64, Vec<u8>>>,
    replay_bytes: usize,
    retry_at: Instant,
    backoff: Duration,
    sends: u32,
}

/// An incoming connection.
#[derive(Debug)]
struct In<K> {
    stream: TcpStream,
    addr: SocketAddr,
    /// The sender, once its hello was accepted.
    peer: Option<K>,
    rx: Vec<u8>,
    tx: Vec<u8>,
    tx_pos: usize,
    /// Acknowledgements to send: flow -> next.
    acks: BTreeMap<u32, u64>,
    /// A frame the inbox said `Later` to waits at the front of `rx`.
    stalled: bool,
    dead: bool,
}

/// A reliable network path over TCP: sender and receiver (see the
/// [module docs](self)).
///
/// # Examples
///
/// ```
/// use coresident::path::TcpPath;
/// use coresident::NetworkPath;
/// use std::net::SocketAddr;
///
/// // The receiver listens; the sender knows where key 2 lives.
/// let rx: TcpPath<u64> = TcpPath::bind(2, "127.0.0.1:0".parse()?, |_| None)?;
/// let at = rx.local_addr().unwrap();
/// let mut tx: TcpPath<u64> = TcpPath::new(1, move |k| (*k == 2).then_some(at));
/// tx.send(&2, coresident::FlowHeader { flow: 7, seq: 0 }, b"hi")?; // taken: replayed until acked
/// # Ok::<(), Box<dyn core::error::Error>>(())
/// ```
pub struct TcpPath<K> {
    me: K,
    config: TcpConfig<K>,
    resolve: Resolve<K>,
    dests: Vec<Dest<K>>,
    by_key: HashMap<[u64; 2], usize>,
    listener: Option<TcpListener>,
    incoming: Vec<In<K>>,
    epoll: Option<OwnedFd>,
    stats: TcpStats,
}

impl<K: fmt::Debug> fmt::Debug for TcpPath<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpPath")
            .field("me", &self.me)
            .field("destinations", &self.dests.len())
            .field("incoming", &self.incoming.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

fn frame_into(out: &mut Vec<u8>, kind: u8, parts: &[&[u8]]) {
    let len: usize = 1 + parts.iter().map(|p| p.len()).sum::<usize>();
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.push(kind);
    for p in parts {
        out.extend_from_slice(p);
    }
}

fn pairs_into(out: &mut Vec<u8>, kind: u8, pairs: &[(u32, u64)]) {
    let body = 4 + pairs.len() * PAIR;
    out.extend_from_slice(&((1 + body) as u32).to_le_bytes());
    out.push(kind);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (f, n) in pairs {
        out.extend_from_slice(&f.to_le_bytes());
        out.extend_from_slice(&n.to_le_bytes());
    }
}

/// Parses a WELCOME or ACK body into `(flow, next)` pairs; `None` if malformed.
fn parse_pairs(body: &[u8]) -> Option<Vec<(u32, u64)>> {
    let (n, rest) = body.split_first_chunk::<4>()?;
    let n = u32::from_le_bytes(*n) as usize;
    if rest.len() != n.checked_mul(PAIR)? {
        return None;
    }
    Some(
        rest.chunks_exact(PAIR)
            .map(|c| {
                let (f, s) = c.split_at(4);
                (
                    u32::from_le_bytes(f.try_into().unwrap_or_default()),
                    u64::from_le_bytes(s.try_into().unwrap_or_default()),
                )
            })
            .collect(),
    )
}

/// Writes as much of `tx[*pos..]` as the socket takes; compacts. Err: the connection
/// is broken.
fn flush(stream: &mut TcpStream, tx: &mut Vec<u8>, pos: &mut usize) -> io::Result<()> {
    while *pos < tx.len() {
        match stream.write(&tx[*pos..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => *pos += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if *pos == tx.len() {
        tx.clear();
        *pos = 0;
    } else if *pos > (1 << 20) {
        tx.drain(..*pos);
        *pos = 0;
    }
    Ok(())
}

/// Reads what the socket has into `rx`, up to `budget` bytes; Ok(false) at EOF.
fn fill(stream: &mut TcpStream, rx: &mut Vec<u8>, budget: usize) -> io::Result<bool> {
    let mut got = 0;
    let mut chunk = [0u8; 64 * 1024];
    while got < budget {
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(false),
            Ok(n) => {
                rx.extend_from_slice(&chunk[..n]);
                got += n;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// The next whole frame at the start of `rx`: `Ok(Some((kind, body_range, total)))`,
/// `Ok(None)` if incomplete, `Err` if malformed (longer than `max`).
fn next_frame(rx: &[u8], max: usize) -> Result<Option<(u8, core::ops::Range<usize>, usize)>, ()> {
    let Some(head) = rx.first_chunk::<FRAME_HEAD>() else {
        return Ok(None);
    };
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    if len == 0 || len > max {
        return Err(());
    }
    let total = 4 + len;
    if rx.len() < total {
        return Ok(None);
    }
    Ok(Some((head[4], FRAME_HEAD..total, total)))
}

impl<K: WireKey + fmt::Debug> TcpPath<K> {
    /// A sending path for `me`: `resolve` gives each destination's address (`None`:
    /// no route).
    pub fn new(me: K, resolve: impl FnMut(&K) -> Option<SocketAddr> + Send + 'static) -> Self {
        Self {
            me,
            config: TcpConfig::default(),
            resolve: Box::new(resolve),
            dests: Vec::new(),
            by_key: HashMap::new(),
            listener: None,
            incoming: Vec::new(),
            epoll: None,
            stats: TcpStats::default(),
        }
    }

    /// A path for `me` that also listens on `addr` for senders.
    ///
    /// # Errors
    ///
    /// The bind's.
    pub fn bind(
        me: K,
        addr: SocketAddr,
        resolve: impl FnMut(&K) -> Option<SocketAddr> + Send + 'static,
    ) -> io::Result<Self> {
        let mut p = Self::new(me, resolve);
        let l = TcpListener::bind(addr)?;
        l.set_nonblocking(true)?;
        p.register(l.as_fd());
        p.listener = Some(l);
        Ok(p)
    }

    /// With `config` instead of the defaults.
    #[must_use]
    pub fn with_config(mut self, config: TcpConfig<K>) -> Self {
        self.config = config;
        self
    }

    /// The listening address, if listening.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The counters.
    pub fn stats(&self) -> &TcpStats {
        &self.stats
    }

    /// Bytes waiting for acknowledgement to `dst`.
    pub fn unacknowledged(&self, dst: &K) -> usize {
        self.by_key
            .get(&dst.encode())
            .map_or(0, |&i| self.dests[i].replay_bytes)
    }

    /// Adds `fd` to the poll set (made on first use).
    fn register(&mut self, fd: BorrowedFd<'_>) {
        use rustix::event::epoll;
        if self.epoll.is_none() {
            self.epoll = epoll::create(epoll::CreateFlags::CLOEXEC).ok();
        }
        if let Some(ep) = &self.epoll {
            let _ = epoll::add(
                ep,
                fd,
                epoll::EventData::new_u64(0),
                epoll::EventFlags::IN | epoll::EventFlags::RDHUP,
            );
        }
    }

    fn dest(&mut self, key: &K) -> Result<usize, TcpError> {
        if let Some(&i) = self.by_key.get(&key.encode()) {
            return Ok(i);
        }
        let addr = (self.resolve)(key).ok_or(TcpError::NoRoute)?;
        let i = self.dests.len();
        self.dests.push(Dest {
            key: *key,
            addr,
            conn: None,
            replay: HashMap::new(),
            replay_bytes: 0,
            retry_at: Instant::now(),
            backoff: self.config.backoff,
            sends: 0,
        });
        self.by_key.insert(key.encode(), i);
        Ok(i)
    }

    /// Connects destination `i` if it has no connection and its backoff has passed.
    fn connect(&mut self, i: usize) {
        let d = &self.dests[i];
        if d.conn.is_some() || Instant::now() < d.retry_at {
            return;
        }
        let attempt =
            TcpStream::connect_timeout(&d.addr, self.config.connect_timeout).and_then(|s| {
                s.set_nonblocking(true)?;
                s.set_nodelay(true)?;
                Ok(s)
            });
        match attempt {
            Ok(stream) => {
                let mut tx = Vec::with_capacity(64);
                let words = self.me.encode();
                frame_into(
                    &mut tx,
                    KIND_HELLO,
                    &[
                        &MAGIC,
                        &VERSION.to_le_bytes(),
                        &words[0].to_le_bytes(),
                        &words[1].to_le_bytes(),
                    ],
                );
                self.register(stream.as_fd());
                self.dests[i].conn = Some(Out {
                    stream,
                    ready: false,
                    tx,
                    tx_pos: 0,
                    rx: Vec::new(),
                });
                tracing::debug!(peer = ?self.dests[i].key, "tcp path: connected, hello sent");
            }
            Err(e) => {
                let d = &mut self.dests[i];
                d.retry_at = Instant::now() + d.backoff;
                d.backoff = (d.backoff * 2).min(self.config.max_backoff);
                tracing::trace!(peer = ?d.key, error = %e, "tcp path: connect failed");
            }
        }
    }

    /// Drops destination `i`'s connection (its replay buffer stays).
    fn disconnect(&mut self, i: usize, why: &dyn fmt::Display) {
        let d = &mut self.dests[i];
        if d.conn.take().is_some() {
            self.stats.disconnected += 1;
            d.retry_at = Instant::now() + d.backoff;
            tracing::info!(peer = ?d.key, reason = %why, "tcp path: connection lost, messages kept for replay");
        }
    }

    /// Writes and reads destination `i`'s connection: acknowledgements, the welcome,
    /// resend requests.
    fn pump(&mut self, i: usize) {
        self.connect(i);
        let max = self.config.max_message + FLOW_HEADER_LEN + 1;
        let d = &mut self.dests[i];
        let Some(c) = d.conn.as_mut() else {
            return;
        };
        if let Err(e) = flush(&mut c.stream, &mut c.tx, &mut c.tx_pos) {
            self.disconnect(i, &e);
            return;
        }
        match fill(&mut c.stream, &mut c.rx, 1 << 20) {
            Ok(true) => {}
            Ok(false) => {
                self.disconnect(i, &"closed by the receiver");
                return;
            }
            Err(e) => {
                self.disconnect(i, &e);
                return;
            }
        }
        let mut pos = 0;
        let mut bad = false;
        loop {
            let Some(c) = self.dests[i].conn.as_mut() else {
                return;
            };
            let frame = match next_frame(&c.rx[pos..], max) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(()) => {
                    bad = true;
                    break;
                }
            };
            let (kind, body, total) = frame;
            let body = c.rx[pos + body.start..pos + body.end].to_vec();
            pos += total;
            if !self.on_sender_frame(i, kind, &body) {
                bad = true;
                break;
            }
        }
        if bad {
            self.disconnect(i, &"malformed frame from the receiver");
            return;
        }
        if let Some(c) = self.dests[i].conn.as_mut() {
            c.rx.drain(..pos);
            if let Err(e) = flush(&mut c.stream, &mut c.tx, &mut c.tx_pos) {
                self.disconnect(i, &e);
            }
        }
    }

    /// One frame from a receiver; false if malformed.
    fn on_sender_frame(&mut self, i: usize, kind: u8, body: &[u8]) -> bool {
        match kind {
            KIND_WELCOME | KIND_ACK => {
                let Some(pairs) = parse_pairs(body) else {
                    return false;
                };
                for (flow, next) in pairs {
                    self.acknowledge(i, flow, next);
                }
                if kind == KIND_WELCOME {
                    let d = &mut self.dests[i];
                    let Some(c) = d.conn.as_mut() else {
                        return true;
                    };
                    if c.ready {
                        return false; // a second welcome
                    }
                    c.ready = true;
                    d.backoff = self.config.backoff;
                    let mut n = 0u64;
                    for (&flow, msgs) in &d.replay {
                        for (&seq, p) in msgs {
                            let h = FlowHeader { flow, seq }.encode();
                            frame_into(&mut c.tx, KIND_DATA, &[&h, p]);
                            n += 1;
                        }
                    }
                    self.stats.connected += 1;
                    self.stats.replayed += n;
                    tracing::info!(peer = ?d.key, replayed = n, "tcp path: welcomed, unacknowledged messages replayed");
                }
                true
            }
            KIND_RESEND => {
                let (Some(f), Some(s)) = (body.get(..4), body.get(4..12)) else {
                    return false;
                };
                if body.len() != 12 {
                    return false;
                }
                let flow = u32::from_le_bytes(f.try_into().unwrap_or_default());
                let from = u64::from_le_bytes(s.try_into().unwrap_or_default());
                let d = &mut self.dests[i];
                let (Some(c), Some(msgs)) = (d.conn.as_mut(), d.replay.get(&flow)) else {
                    return true;
                };
                if c.ready {
                    for (&seq, p) in msgs.range(from..) {
                        let h = FlowHeader { flow, seq }.encode();
                        frame_into(&mut c.tx, KIND_DATA, &[&h, p]);
                        self.stats.replayed += 1;
                    }
                }
                true
            }
            _ => false,
        }
    }

    /// Frees what `flow` of destination `i` had below `next`.
    fn acknowledge(&mut self, i: usize, flow: u32, next: u64) {
        let d = &mut self.dests[i];
        let Some(msgs) = d.replay.get_mut(&flow) else {
            return;
        };
        let rest = msgs.split_off(&next);
        let freed = core::mem::replace(msgs, rest);
        for p in freed.values() {
            d.replay_bytes -= p.len() + 64;
        }
        self.stats.acknowledged += freed.len() as u64;
        if msgs.is_empty() {
            d.replay.remove(&flow);
        }
    }

    /// Takes one message for destination `i` (its index), or refuses it; a resend is
    /// taken beyond the bound.
    fn take(
        &mut self,
        i: usize,
        header: FlowHeader,
        payload: &[u8],
        resend: bool,
    ) -> Result<(), TcpError> {
        let cost = payload.len() + 64;
        let limit = if resend {
            usize::MAX
        } else {
            self.config.replay_bytes
        };
        {
            let d = &mut self.dests[i];
            d.sends = d.sends.wrapping_add(1);
            if d.replay_bytes + cost > limit / 2 || d.sends % 32 == 0 || d.conn.is_none() {
                self.pump(i);
            }
        }
        let d = &mut self.dests[i];
        if d.replay_bytes + cost > limit && d.replay_bytes > 0 {
            return Err(TcpError::Full {
                replay_bytes: limit,
            });
        }
        if let Some(old) = d
            .replay
            .entry(header.flow)
            .or_default()
            .insert(header.seq, payload.to_vec())
        {
            d.replay_bytes -= old.len() + 64;
        }
        d.replay_bytes += cost;
        if let Some(c) = d.conn.as_mut().filter(|c| c.ready) {
            frame_into(&mut c.tx, KIND_DATA, &[&header.encode(), payload]);
            if let Err(e) = flush(&mut c.stream, &mut c.tx, &mut c.tx_pos) {
                self.disconnect(i, &e);
            }
        }
        Ok(())
    }

    /// Blocks up to `t` for destination `i`'s socket to have something to read (or its
    /// backoff to pass when disconnected).
    fn wait_dest(&mut self, i: usize, t: Duration) {
        let d = &self.dests[i];
        match &d.conn {
            Some(c) => {
                use rustix::event::{poll, PollFd, PollFlags, Timespec};
                let ts = Timespec {
                    tv_sec: t.as_secs() as i64,
                    tv_nsec: i64::from(t.subsec_nanos()),
                };
                let mut fds = [PollFd::new(&c.stream, PollFlags::IN)];
                let _ = poll(&mut fds, Some(&ts));
            }
            None => {
                let until = d.retry_at.saturating_duration_since(Instant::now());
                std::thread::sleep(until.min(t));
            }
        }
    }

    // ------------------------------------------------------------ receiving side

    fn accept_all(&mut self) -> Result<(), TcpError> {
        loop {
            let Some(l) = &self.listener else {
                return Ok(());
            };
            let (s, addr) = match l.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // A connection that died in the backlog, or out of descriptors: the
                // listener itself is fine; try again at the next call.
                Err(e)
                    if [
                        rustix::io::Errno::CONNABORTED,
                        rustix::io::Errno::MFILE,
                        rustix::io::Errno::NFILE,
                    ]
                    .iter()
                    .any(|x| e.raw_os_error() == Some(x.raw_os_error())) =>
                {
                    return Ok(())
                }
                Err(e) => return Err(os(&e)),
            };
            if self.incoming.len() >= self.config.max_connections
                || s.set_nonblocking(true).is_err()
            {
                self.stats.refused += 1;
                tracing::warn!(source = %addr, "tcp path: connection refused (too many, or broken)");
                continue;
            }
            let _ = s.set_nodelay(true);
            self.register(s.as_fd());
            self.incoming.push(In {
                stream: s,
                addr,
                peer: None,
                rx: Vec::new(),
                tx: Vec::new(),
                tx_pos: 0,
                acks: BTreeMap::new(),
                stalled: false,
                dead: false,
            });
            self.stats.accepted += 1;
        }
    }

    /// Sends the acknowledgements connection `c` has pending.
    fn queue_acks(c: &mut In<K>) {
        if c.acks.is_empty() {
            return;
        }
        let pairs: Vec<(u32, u64)> = core::mem::take(&mut c.acks).into_iter().collect();
        // Bounded frames: at most 4096 pairs each.
        for chunk in pairs.chunks(4096) {
            pairs_into(&mut c.tx, KIND_ACK, chunk);
        }
    }

    /// Reads and hands over what connection `ci` has; marks it dead on a protocol error
    /// or hang-up.
    fn serve(&mut self, ci: usize, inbox: &mut dyn Inbox<K>) -> usize {
        let max = self.config.max_message + FLOW_HEADER_LEN + 1;
        let c = &mut self.incoming[ci];
        Self::queue_acks(c);
        if flush(&mut c.stream, &mut c.tx, &mut c.tx_pos).is_err() {
            c.dead = true;
            return 0;
        }
        // Back-pressure: a frame the inbox deferred stays at the front; read more only
        // while little is buffered.
        if !c.stalled || c.rx.len() < max {
            match fill(&mut c.stream, &mut c.rx, 4 << 20) {
                Ok(true) => {}
                Ok(false) | Err(_) => c.dead = true,
            }
        }
        c.stalled = false;
        let mut pos = 0;
        let mut offered = 0;
        loop {
            let c = &mut self.incoming[ci];
            let (kind, body, total) = match next_frame(&c.rx[pos..], max) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(()) => {
                    self.refuse(ci, "malformed frame length");
                    return offered;
                }
            };
            let body = pos + body.start..pos + body.end;
            match kind {
                KIND_HELLO if c.peer.is_none() => {
                    let Some(peer) = self.hello(ci, body) else {
                        return offered;
                    };
                    let c = &mut self.incoming[ci];
                    let mut pairs = Vec::new();
                    inbox.for_each_flow(&peer, &mut |f, n| pairs.push((f, n)));
                    pairs.sort_unstable();
                    if pairs.len() > (max - 5) / PAIR {
                        pairs.truncate((max - 5) / PAIR);
                    }
                    pairs_into(&mut c.tx, KIND_WELCOME, &pairs);
                    tracing::info!(peer = ?peer, source = %c.addr, flows = pairs.len(), "tcp path: sender welcomed");
                }
                KIND_DATA if c.peer.is_some() => {
                    let Some(peer) = c.peer else { break };
                    let bytes = &c.rx[body];
                    let Some(h) = FlowHeader::decode(bytes) else {
                        self.refuse(ci, "malformed flow header");
                        return offered;
                    };
                    if bytes.len() < FLOW_HEADER_LEN {
                        self.refuse(ci, "short data frame");
                        return offered;
                    }
                    match inbox.offer(&peer, h, &bytes[FLOW_HEADER_LEN..]) {
                        Offered::Taken => self.stats.received += 1,
                        Offered::Refused => self.stats.dropped += 1,
                        Offered::Later => {
                            c.stalled = true;
                            break;
                        }
                    }
                    offered += 1;
                }
                _ => {
                    self.refuse(ci, "unexpected frame");
                    return offered;
                }
            }
            pos += total;
        }
        let c = &mut self.incoming[ci];
        c.rx.drain(..pos);
        if flush(&mut c.stream, &mut c.tx, &mut c.tx_pos).is_err() {
            c.dead = true;
        }
        offered
    }

    /// Checks a hello; on success the connection is the claimed peer's (an older
    /// connection of the same peer is closed: it reconnected).
    fn hello(&mut self, ci: usize, body: core::ops::Range<usize>) -> Option<K> {
        let c = &self.incoming[ci];
        let b = &c.rx[body];
        if b.len() != HELLO_LEN || b[..8] != MAGIC {
            self.refuse(ci, "not a coresident tcp hello");
            return None;
        }
        let version = u32::from_le_bytes(b[8..12].try_into().unwrap_or_default());
        if version != VERSION {
            self.refuse(ci, "hello of another protocol version");
            return None;
        }
        let w0 = u64::from_le_bytes(b[12..20].try_into().unwrap_or_default());
        let w1 = u64::from_le_bytes(b[20..28].try_into().unwrap_or_default());
        let Some(peer) = K::from_words([w0, w1]) else {
            self.refuse(ci, "hello names no valid key");
            return None;
        };
        if let Some(auth) = &self.config.authorize {
            if !auth(c.addr, &peer) {
                self.refuse(ci, "sender not authorized for the key it claims");
                return None;
            }
        }
        for (j, o) in self.incoming.iter_mut().enumerate() {
            if j != ci && o.peer == Some(peer) {
                o.dead = true;
            }
        }
        self.incoming[ci].peer = Some(peer);
        Some(peer)
    }

    fn refuse(&mut self, ci: usize, why: &str) {
        let c = &mut self.incoming[ci];
        c.dead = true;
        self.stats.refused += 1;
        tracing::warn!(source = %c.addr, peer = ?c.peer, reason = why, "tcp path: connection dropped");
    }
}

impl<K: WireKey + fmt::Debug> NetworkPath<K> for TcpPath<K> {
    type Error = TcpError;

    fn send(&mut self, peer: &K, header: FlowHeader, payload: &[u8]) -> Result<(), TcpError> {
        if payload.len() > self.config.max_message {
            return Err(TcpError::TooLarge {
                len: payload.len(),
                max: self.config.max_message,
            });
        }
        let i = self.dest(peer)?;
        self.take(i, header, payload, false)
    }

    fn resend(&mut self, peer: &K, header: FlowHeader, payload: &[u8]) -> Result<(), TcpError> {
        if payload.len() > self.config.max_message {
            return Err(TcpError::TooLarge {
                len: payload.len(),
                max: self.config.max_message,
            });
        }
        let i = self.dest(peer)?;
        self.take(i, header, payload, true)
    }

    fn send_blocking(
        &mut self,
        peer: &K,
        header: FlowHeader,
        payload: &[u8],
        timeout: Option<Duration>,
    ) -> Result<(), TcpError> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        loop {
            match self.send(peer, header, payload) {
                Err(TcpError::Full { .. }) => {}
                other => return other,
            }
            let left = match deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(l) if !l.is_zero() => l,
                    _ => return Err(TcpError::TimedOut),
                },
                None => Duration::from_millis(50),
            };
            let i = self.dest(peer)?;
            self.wait_dest(i, left.min(Duration::from_millis(50)));
            self.pump(i);
        }
    }

    fn recv(&mut self, inbox: &mut dyn Inbox<K>) -> Result<usize, TcpError> {
        self.accept_all()?;
        let mut n = 0;
        for ci in 0..self.incoming.len() {
            n += self.serve(ci, inbox);
        }
        self.incoming.retain(|c| !c.dead);
        for i in 0..self.dests.len() {
            if self.dests[i].conn.is_some() {
                self.pump(i);
            }
        }
        Ok(n)
    }

    fn poll(&mut self) -> Result<(), TcpError> {
        for i in 0..self.dests.len() {
            self.pump(i);
        }
        for c in &mut self.incoming {
            Self::queue_acks(c);
            if flush(&mut c.stream, &mut c.tx, &mut c.tx_pos).is_err() {
                c.dead = true;
            }
        }
        self.incoming.retain(|c| !c.dead);
        Ok(())
    }

    fn wait(&mut self, timeout: Duration) {
        // Any destination's acknowledgement will do: wait on the first connected one.
        match (0..self.dests.len()).find(|&i| self.dests[i].conn.is_some()) {
            Some(i) => self.wait_dest(i, timeout),
            None => std::thread::sleep(timeout),
        }
    }

    fn in_flight(&self, peer: &K, flow: u32) -> bool {
        self.by_key
            .get(&peer.encode())
            .is_some_and(|&i| self.dests[i].replay.contains_key(&flow))
    }

    fn wants_progress(&self) -> bool {
        self.listener.is_some()
    }

    fn delivered(&mut self, peer: &K, flow: u32, next: u64) {
        if let Some(c) = self
            .incoming
            .iter_mut()
            .find(|c| c.peer == Some(*peer) && !c.dead)
        {
            c.acks.insert(flow, next);
        }
    }

    fn flush_progress(&mut self) {
        for c in &mut self.incoming {
            if c.acks.is_empty() && c.tx_pos == c.tx.len() {
                continue;
            }
            Self::queue_acks(c);
            if flush(&mut c.stream, &mut c.tx, &mut c.tx_pos).is_err() {
                c.dead = true;
            }
        }
    }

    fn resend_from(&mut self, peer: &K, flow: u32, seq: u64) {
        if let Some(c) = self
            .incoming
            .iter_mut()
            .find(|c| c.peer == Some(*peer) && !c.dead)
        {
            frame_into(
                &mut c.tx,
                KIND_RESEND,
                &[&flow.to_le_bytes(), &seq.to_le_bytes()],
            );
        }
    }

    fn wait_fd(&self) -> Option<BorrowedFd<'_>> {
        self.epoll.as_ref().map(|e| e.as_fd())
    }
}
