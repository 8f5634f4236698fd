//! [`Stream`] and its [`Builder`]: `std::net::TcpStream`'s shape over the switching
//! core.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::core::{Cause, Core, Mailbox, Side, Tuning};
use crate::discovery::{Discovery, HostRegistry, OfferParams, Refusal, Subscriber};
use crate::listener::Listener;
use crate::stats::{Path, StreamStats};
use crate::sys;
use crate::wire::{FourTuple, Hello};

/// The default data area of each ring of a stream's channel: 256 KiB each way, so a
/// 64 KiB write and three more fit while the reader copies one out (the throughput of
/// a ring stops growing past a few of the largest writes in flight), and a thousand
/// streams cost 512 MiB of shared memory at most (pages are touched as used).
pub const DEFAULT_RING_SIZE: u32 = 256 * 1024;

/// The default spin budget of a blocking call before it sleeps on the descriptor:
/// short enough that two ends sharing one core lose little to each other's spinning
/// (a timeslice is milliseconds), long enough to catch a busy peer's answer.
pub const DEFAULT_SPIN: Duration = Duration::from_micros(20);

/// The largest message [`Stream::recv_msg`] accepts (a larger length prefix is a
/// protocol error).
pub const MAX_MESSAGE: usize = 16 << 20;

/// How streams are made: the discovery backend, ring sizes, waiting.
#[derive(Clone, Debug)]
pub struct Builder {
    pub(crate) discovery: Arc<dyn Discovery>,
    pub(crate) ring_size: u32,
    pub(crate) handshake_timeout: Duration,
    pub(crate) spin: Duration,
    pub(crate) gap_timeout: Duration,
}

impl Default for Builder {
    fn default() -> Self {
        Self::new()
    }
}

impl Builder {
    /// The defaults: the host registry at its default location, 256 KiB rings, a
    /// 20 µs spin, a 1 s handshake deadline.
    pub fn new() -> Self {
        Self {
            discovery: Arc::new(HostRegistry::new()),
            ring_size: DEFAULT_RING_SIZE,
            handshake_timeout: Duration::from_secs(1),
            spin: DEFAULT_SPIN,
            gap_timeout: Duration::from_secs(10),
        }
    }

    /// The discovery backend ([`HostRegistry`], [`NoDiscovery`](crate::NoDiscovery),
    /// or your own).
    #[must_use]
    pub fn discovery(mut self, d: impl Discovery + 'static) -> Self {
        self.discovery = Arc::new(d);
        self
    }

    /// The discovery backend, shared (one backend's background threads and views
    /// serving several builders, or kept by the caller to look at it).
    #[must_use]
    pub fn discovery_arc(mut self, d: Arc<dyn Discovery>) -> Self {
        self.discovery = d;
        self
    }

    /// The data area of each ring (rounded up to a power of two, 4 KiB to 16 MiB).
    #[must_use]
    pub fn ring_size(mut self, bytes: u32) -> Self {
        self.ring_size = bytes.clamp(4096, 16 << 20).next_power_of_two();
        self
    }

    /// How long a blocking call spins on the ring before it sleeps (0: never spin).
    #[must_use]
    pub fn spin(mut self, budget: Duration) -> Self {
        self.spin = budget;
        self
    }

    /// The deadline of one channel handshake.
    #[must_use]
    pub fn handshake_timeout(mut self, t: Duration) -> Self {
        self.handshake_timeout = t;
        self
    }

    /// How long a gap in the received stream may wait for a path to fill it (a new
    /// channel's handshake in flight) before the stream fails (default 10 s).
    #[must_use]
    pub fn gap_timeout(mut self, t: Duration) -> Self {
        self.gap_timeout = t;
        self
    }

    pub(crate) fn params(&self) -> OfferParams {
        OfferParams {
            ring_size: self.ring_size,
            timeout: self.handshake_timeout,
        }
    }

    pub(crate) fn tuning(&self) -> Tuning {
        Tuning {
            gap_timeout: self.gap_timeout,
            look_every: 64,
        }
    }

    /// Connects to `addr` (the first address that answers).
    ///
    /// # Errors
    ///
    /// As `TcpStream::connect`.
    pub fn connect(&self, addr: impl ToSocketAddrs) -> io::Result<Stream> {
        let mut last = io::Error::new(io::ErrorKind::InvalidInput, "no address");
        for a in addr.to_socket_addrs()? {
            match self.connect_one(a, None) {
                Ok(s) => return Ok(s),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Connects to `addr` within `timeout` (the TCP connect; a channel handshake has
    /// its own deadline, and a slow one only means plain TCP).
    ///
    /// # Errors
    ///
    /// As `TcpStream::connect_timeout`.
    pub fn connect_timeout(&self, addr: &SocketAddr, timeout: Duration) -> io::Result<Stream> {
        self.connect_one(*addr, Some(timeout))
    }

    /// Binds a listener on `addr` and registers it with the discovery backend.
    ///
    /// # Errors
    ///
    /// As `TcpListener::bind`. A failed registration is not an error: the listener
    /// then accepts plain TCP only (and says so in a `tracing` event).
    pub fn bind(&self, addr: impl ToSocketAddrs) -> io::Result<Listener> {
        Listener::bind_with(self.clone(), addr)
    }

    fn connect_one(&self, dst: SocketAddr, timeout: Option<Duration>) -> io::Result<Stream> {
        let dst = crate::wire::canonical(dst);
        let plain = |why: &str| -> io::Result<Stream> {
            tracing::debug!(%dst, why, "plain TCP");
            let tcp = match timeout {
                Some(t) => TcpStream::connect_timeout(&dst, t)?,
                None => TcpStream::connect(dst)?,
            };
            Stream::from_core(Core::new(tcp, None, None, self.tuning())?, self.spin)
        };
        if self.discovery.name() == "none" {
            return plain("discovery is none");
        }
        // The source address the route picks, and a port bound to it: the 4-tuple is
        // known before the TCP handshake.
        let Ok(src_ip) = route_source(dst) else {
            return plain("no route source");
        };
        let domain = socket2::Domain::for_address(dst);
        let sock =
            socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
        if sock.bind(&SocketAddr::new(src_ip, 0).into()).is_err() {
            return plain("bind failed");
        }
        let Some(src) = sock.local_addr()?.as_socket() else {
            return plain("no local address");
        };
        let session = self.offer_for(src, dst);
        // Committed or not, the TCP connection is made from the bound 4-tuple; the
        // listener knows which by the commit word (see docs/streams.md).
        let res = match timeout {
            Some(t) => sock.connect_timeout(&dst.into(), t),
            None => sock.connect(&dst.into()),
        };
        res?;
        let tcp: TcpStream = sock.into();
        match session {
            Some(p) => Stream::from_session(tcp, p),
            None => Stream::from_core(Core::new(tcp, None, None, self.tuning())?, self.spin),
        }
    }

    /// Whether this builder's backend may serve `dst` at all
    /// ([`Discovery::may_serve`]: a local look, no round trip). `false`: an offer would
    /// surely be refused as not resident; skip [`offer_for`](Self::offer_for).
    pub fn may_serve(&self, dst: SocketAddr) -> bool {
        self.discovery.may_serve(dst)
    }

    /// The connecting side's half of the agreement, for a caller that makes the TCP
    /// connection itself (the preload library around a program's own `connect`):
    /// offers a channel for the connection `src -> dst` (bind the socket to `src`
    /// first, e.g. the route's source address and port 0, to know it) and commits to
    /// it. Then connect the socket from `src`, and [`Stream::from_session`].
    ///
    /// `None`: the destination is not resident or refused (the reason is a `tracing`
    /// event): make a plain connection (raw bytes) from the same socket.
    pub fn offer_for(&self, src: SocketAddr, dst: SocketAddr) -> Option<Prepared> {
        let tuple = FourTuple { src, dst }.canonical();
        let hello = Hello {
            mode: 0,
            epoch: 0,
            session: sys::random_id(),
            tuple,
        };
        match self.discovery.offer(&hello, &self.params()) {
            Ok(link) => match link.commit() {
                Ok(()) => Some(Prepared {
                    hello,
                    link,
                    builder: self.clone(),
                }),
                Err(e) => {
                    tracing::info!(%tuple, error = %e, "upgrade refused at connect: commit failed; plain TCP");
                    None
                }
            },
            Err(Refusal::NotResident) => {
                tracing::debug!(%tuple, "not resident: plain TCP");
                None
            }
            Err(r) => {
                tracing::info!(%tuple, reason = %r, "upgrade refused at connect; plain TCP");
                None
            }
        }
    }
}

/// A channel handshaken and committed for one TCP connection that is not yet made
/// ([`Builder::offer_for`]); the connection must be made from its 4-tuple.
#[derive(Debug)]
pub struct Prepared {
    hello: Hello,
    link: Box<dyn crate::RingLink>,
    builder: Builder,
}

impl Prepared {
    /// The connection it belongs to.
    pub fn tuple(&self) -> FourTuple {
        self.hello.tuple
    }
}

/// The address a connection to `dst` would leave from (a UDP `connect` sends nothing).
fn route_source(dst: SocketAddr) -> io::Result<std::net::IpAddr> {
    let any: SocketAddr = if dst.is_ipv4() {
        "0.0.0.0:0".parse().map_err(io::Error::other)?
    } else {
        "[::]:0".parse().map_err(io::Error::other)?
    };
    let u = UdpSocket::bind(any)?;
    u.connect(dst)?;
    Ok(u.local_addr()?.ip())
}

/// A TCP connection whose bytes take a shared-memory ring while both ends share a host
/// and speak coresident, and TCP otherwise, switching mid-stream without losing,
/// duplicating or reordering a byte.
///
/// Shaped like `std::net::TcpStream`: `Read` and `Write` (also on `&Stream`),
/// [`shutdown`](Self::shutdown), [`set_nonblocking`](Self::set_nonblocking), timeouts,
/// addresses, [`try_clone`](Self::try_clone) (a handle to the same stream: one thread
/// may read while another writes).
///
/// Its descriptor ([`AsRawFd`]) is an epoll instance that becomes readable whenever the
/// stream may make progress in either direction: poll it for `POLLIN` whether you wait
/// to read or to write, then call the operation, which answers `WouldBlock` when there
/// is still nothing to do (level-correct: after `WouldBlock`, the descriptor is not
/// readable until something changed).
///
/// # Fork
///
/// A stream copied into a forked child lets go of its channel at the child's first
/// operation (the parent owns it) and speaks TCP only: the peer's view is never
/// corrupted by two processes on one ring. As with a TCP socket, a stream must be used
/// by one process at a time: the child may continue it where the parent left off only
/// if the parent no longer uses it.
#[derive(Debug)]
pub struct Stream {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    core: Mutex<Core>,
    spin: Duration,
    nonblocking: AtomicBool,
    /// Nanoseconds; 0: none.
    read_timeout: AtomicU64,
    write_timeout: AtomicU64,
    msg_rx: Mutex<MsgRx>,
    msg_tx: Mutex<usize>,
    peer: SocketAddr,
    local: SocketAddr,
}

#[derive(Debug, Default)]
struct MsgRx {
    hdr: [u8; 4],
    have: usize,
    /// Body bytes already read into the caller's buffer.
    body: usize,
}

fn to_nanos(t: Option<Duration>) -> io::Result<u64> {
    match t {
        None => Ok(0),
        Some(d) if d.is_zero() => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a zero timeout",
        )),
        Some(d) => Ok(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
    }
}

fn from_nanos(n: u64) -> Option<Duration> {
    (n != 0).then(|| Duration::from_nanos(n))
}

impl Stream {
    /// Connects to `addr` with the default [`Builder`].
    ///
    /// # Errors
    ///
    /// As `TcpStream::connect`.
    pub fn connect(addr: impl ToSocketAddrs) -> io::Result<Self> {
        Builder::new().connect(addr)
    }

    /// Connects to `addr` within `timeout`, with the default [`Builder`].
    ///
    /// # Errors
    ///
    /// As `TcpStream::connect_timeout`.
    pub fn connect_timeout(addr: &SocketAddr, timeout: Duration) -> io::Result<Self> {
        Builder::new().connect_timeout(addr, timeout)
    }

    /// A plain stream over a connected TCP socket (no session: raw bytes).
    ///
    /// # Errors
    ///
    /// The socket's addresses or the epoll set could not be had.
    pub fn from_tcp(tcp: TcpStream) -> io::Result<Self> {
        Self::from_core(
            Core::new(tcp, None, None, Builder::new().tuning())?,
            DEFAULT_SPIN,
        )
    }

    /// A session stream over `tcp`, connected from the 4-tuple `prepared` was offered
    /// for (see [`Builder::offer_for`]).
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::InvalidInput`] if `tcp`'s addresses are not the 4-tuple; the
    /// epoll set could not be made.
    pub fn from_session(tcp: TcpStream, prepared: Prepared) -> io::Result<Self> {
        let tuple = FourTuple {
            src: tcp.local_addr()?,
            dst: tcp.peer_addr()?,
        }
        .canonical();
        if tuple != prepared.hello.tuple {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the connection is not the one the channel was offered for",
            ));
        }
        let b = &prepared.builder;
        // The backend's residency news for this peer reaches the stream here.
        let mailbox = Mailbox::new()?;
        b.discovery
            .subscribe(tuple.dst.ip(), Subscriber::new(&mailbox));
        let session = Core::session(
            prepared.hello.session,
            Side::Connector,
            tuple,
            Arc::clone(&b.discovery),
            b.params(),
            Some(mailbox),
        );
        let core = Core::new(tcp, Some(session), Some(prepared.link), b.tuning())?;
        Self::from_core(core, b.spin)
    }

    pub(crate) fn from_core(core: Core, spin: Duration) -> io::Result<Self> {
        let peer = core.tcp.peer_addr()?;
        let local = core.tcp.local_addr()?;
        Ok(Self {
            shared: Arc::new(Shared {
                core: Mutex::new(core),
                spin,
                nonblocking: AtomicBool::new(false),
                read_timeout: AtomicU64::new(0),
                write_timeout: AtomicU64::new(0),
                msg_rx: Mutex::new(MsgRx::default()),
                msg_tx: Mutex::new(0),
                peer,
                local,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Core> {
        // A panic while holding the lock cannot leave the core half-updated in a way
        // that matters more than the panic itself; keep going.
        self.shared
            .core
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `op` until it does something: spin on the ring for the budget, then
    /// sleep on the descriptor; non-blocking streams try once.
    fn blocking<T>(
        &self,
        timeout: Option<Duration>,
        mut op: impl FnMut(&mut Core, bool) -> io::Result<T>,
    ) -> io::Result<T> {
        let nonblocking = self.shared.nonblocking.load(Ordering::Relaxed);
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if !nonblocking && !self.shared.spin.is_zero() {
                let until = Instant::now() + self.shared.spin;
                loop {
                    let (r, can) = {
                        let mut c = self.lock();
                        (op(&mut c, true), c.can_spin())
                    };
                    match r {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        other => return other,
                    }
                    if !can || Instant::now() >= until {
                        break;
                    }
                    std::hint::spin_loop();
                }
            }
            let (r, fd) = {
                let mut c = self.lock();
                (op(&mut c, false), c.poller.shared_fd())
            };
            match r {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                other => return other,
            }
            if nonblocking {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            // Doorbells are hints: wake by ourselves now and then (sooner when another
            // thread of this stream also waits: a switch it handled wakes nobody).
            let sleepers = {
                let mut c = self.lock();
                c.sleepers += 1;
                c.sleepers
            };
            let mut nap = if sleepers > 1 {
                Duration::from_millis(5)
            } else {
                Duration::from_millis(100)
            };
            if let Some(d) = deadline {
                let now = Instant::now();
                if now >= d {
                    self.lock().sleepers -= 1;
                    return Err(io::ErrorKind::TimedOut.into());
                }
                nap = nap.min(d - now);
            }
            let woke = sys::wait_readable((*fd).as_fd(), nap);
            {
                let mut c = self.lock();
                c.sleepers -= 1;
                c.stats.wakeups += 1;
            }
            woke?;
        }
    }

    /// Moves the stream into or out of non-blocking mode.
    ///
    /// # Errors
    ///
    /// Never today; kept for `std::net`'s signature.
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        self.shared
            .nonblocking
            .store(nonblocking, Ordering::Relaxed);
        Ok(())
    }

    /// Sets the read timeout (`None`: wait for ever).
    ///
    /// # Errors
    ///
    /// A zero duration, as `std::net`.
    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.shared
            .read_timeout
            .store(to_nanos(t)?, Ordering::Relaxed);
        Ok(())
    }

    /// Sets the write timeout (`None`: wait for ever).
    ///
    /// # Errors
    ///
    /// A zero duration, as `std::net`.
    pub fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.shared
            .write_timeout
            .store(to_nanos(t)?, Ordering::Relaxed);
        Ok(())
    }

    fn read_timeout(&self) -> Option<Duration> {
        from_nanos(self.shared.read_timeout.load(Ordering::Relaxed))
    }

    fn write_timeout(&self) -> Option<Duration> {
        from_nanos(self.shared.write_timeout.load(Ordering::Relaxed))
    }

    /// The peer's address (of the TCP connection).
    ///
    /// # Errors
    ///
    /// Never: the address is kept from the connection's start.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.shared.peer)
    }

    /// Our address (of the TCP connection).
    ///
    /// # Errors
    ///
    /// Never: the address is kept from the connection's start.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.shared.local)
    }

    /// Another handle to the same stream (one may read while the other writes).
    ///
    /// # Errors
    ///
    /// Never today; kept for `std::net`'s signature.
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            shared: Arc::clone(&self.shared),
        })
    }

    /// Shuts down the read, write, or both halves. Writing ends with a FIN segment at
    /// the final offset on TCP; the peer reads end-of-file once it has every byte
    /// before it, whichever path they took.
    ///
    /// # Errors
    ///
    /// As `TcpStream::shutdown`.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        if matches!(how, Shutdown::Write | Shutdown::Both) {
            let t = self.write_timeout();
            self.blocking(t, |c, _| {
                c.shutdown_write()?;
                c.flush()
            })?;
        }
        if matches!(how, Shutdown::Read | Shutdown::Both) {
            let c = self.lock();
            let _ = c.tcp.shutdown(Shutdown::Read);
        }
        Ok(())
    }

    /// Gives the ring up for TCP now: the bytes the peer never consumed go out again
    /// on TCP from their exact offsets. The peer follows for its own direction.
    pub fn downgrade(&self) {
        self.lock().downgrade(Cause::Explicit);
    }

    /// Asks for a ring channel again (residency returned): the connecting side offers
    /// a new one through the discovery backend, the accepting side asks the connecting
    /// side to. A refusal leaves the stream on TCP (and is in `stats().refusals`).
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::Unsupported`] for a plain stream (no session).
    pub fn upgrade(&self) -> io::Result<()> {
        self.lock().upgrade()
    }

    /// The counters and the current path.
    pub fn stats(&self) -> StreamStats {
        self.lock().stats()
    }

    /// The path the bytes take now.
    pub fn path(&self) -> Path {
        self.lock().stats.path
    }

    /// Whether a read may find bytes on the ring now, with no system call: one look at
    /// the shared ring (and the stream's lock). For event loops that spin before they
    /// sleep: a `true` is worth a read; a `false` says nothing of the TCP path, whose
    /// readiness only the descriptor ([`AsFd`](std::os::fd::AsFd)) tells.
    ///
    /// ```
    /// # use coresident_net::Stream;
    /// # let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// let s = Stream::connect(l.local_addr()?)?;
    /// assert!(!s.ring_pending(), "plain TCP: nothing on a ring");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn ring_pending(&self) -> bool {
        self.lock().ring_pending()
    }

    /// Handles pending events (peer death, withdrawal, new channels) without reading
    /// or writing: for an idle stream whose owner wants switches to happen now.
    ///
    /// # Errors
    ///
    /// The epoll set failed.
    pub fn poll_events(&self) -> io::Result<()> {
        self.lock().look()
    }

    // ------------------------------------------------------------ messages

    /// Sends one message; the peer's [`recv_msg`](Self::recv_msg) returns it whole,
    /// whichever paths its bytes took (it is framed in the byte stream: a 4-byte
    /// little-endian length, then the bytes).
    ///
    /// Non-blocking: `WouldBlock` may come after part of the message went out; call
    /// again with the same message to send the rest.
    ///
    /// # Errors
    ///
    /// A message over [`MAX_MESSAGE`] bytes; as `write`.
    pub fn send_msg(&self, msg: &[u8]) -> io::Result<()> {
        if msg.len() > MAX_MESSAGE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "message over MAX_MESSAGE bytes",
            ));
        }
        let hdr = (msg.len() as u32).to_le_bytes();
        let mut done = self
            .shared
            .msg_tx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let total = 4 + msg.len();
        // Small messages go out as one write (one ring frame).
        let small: Option<Vec<u8>> = (msg.len() <= 4096).then(|| {
            let mut v = Vec::with_capacity(total);
            v.extend_from_slice(&hdr);
            v.extend_from_slice(msg);
            v
        });
        while *done < total {
            let res = match &small {
                Some(v) => (&*self).write(&v[*done..]),
                None if *done < 4 => (&*self).write(&hdr[*done..]),
                None => (&*self).write(&msg[*done - 4..]),
            };
            match res {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => *done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        *done = 0;
        Ok(())
    }

    /// Receives one message into `buf` and returns its length.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::InvalidInput`] if `buf` is shorter than the next message (it
    /// stays: call again with a larger buffer); [`io::ErrorKind::UnexpectedEof`] at
    /// end of stream (between messages or inside one); `InvalidData` for a length over
    /// [`MAX_MESSAGE`]; as `read`. Non-blocking: `WouldBlock` keeps what was read.
    pub fn recv_msg(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut st = self
            .shared
            .msg_rx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while st.have < 4 {
            let have = st.have;
            match (&*self).read(&mut st.hdr[have..]) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => st.have += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let len = u32::from_le_bytes(st.hdr) as usize;
        if len > MAX_MESSAGE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "message length over MAX_MESSAGE",
            ));
        }
        if buf.len() < len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("buffer too small: the next message has {len} bytes"),
            ));
        }
        while st.body < len {
            let at = st.body;
            match (&*self).read(&mut buf[at..len]) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => st.body += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        *st = MsgRx::default();
        Ok(len)
    }
}

impl Read for &Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let t = self.read_timeout();
        self.blocking(t, |c, spinning| c.read(buf, spinning))
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self).read(buf)
    }
}

impl Write for &Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let t = self.write_timeout();
        self.blocking(t, |c, spinning| c.write(buf, spinning))
    }

    fn flush(&mut self) -> io::Result<()> {
        let t = self.write_timeout();
        self.blocking(t, |c, _| c.flush())
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        (&*self).flush()
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        self.lock().poller.as_fd().as_raw_fd()
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let core = self
            .core
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Queued segments and the FIN reach TCP: the peer then reads end-of-file at
        // the final offset, as with a closed TCP socket. Like the kernel's lingering
        // close, this does not block the caller: what does not fit now goes out from a
        // short-lived thread (bounded), which then closes the socket.
        if core.finish_now() {
            return;
        }
        let placeholder = Mutex::new(match Core::placeholder() {
            Ok(c) => c,
            Err(_) => return core.finish(Duration::from_secs(2)),
        });
        let mut core = std::mem::replace(&mut self.core, placeholder)
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let spawned = std::thread::Builder::new()
            .name("coresident-net-linger".into())
            .spawn(move || core.finish(Duration::from_secs(5)));
        if spawned.is_err() {
            tracing::warn!("no thread to finish a closed stream's queued bytes");
        }
    }
}
