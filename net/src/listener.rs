//! [`Listener`]: `std::net::TcpListener`'s shape; a background acceptor (the discovery
//! backend's) keeps handshaken channels by 4-tuple until their TCP connection arrives.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::core::{Core, Mail, Mailbox, Side};
use crate::discovery::{HandshakeSink, Refusal, Registration, RingLink, Subscriber};
use crate::stream::{Builder, Stream};
use crate::wire::{FourTuple, Hello};

/// Handshaken channels waiting for their TCP connection, at most.
const MAX_PENDING: usize = 1024;
/// How long a handshaken channel waits for its TCP connection.
const PENDING_EXPIRY: Duration = Duration::from_secs(10);

#[derive(Debug)]
enum Entry {
    /// The hello arrived; the transport's handshake runs.
    Waiting(Instant),
    /// Handshaken; the session's mailbox already takes re-upgrades (a connecting side
    /// may offer epoch 1 before our `accept` ran).
    Ready(Instant, Hello, Box<dyn RingLink>, Arc<Mailbox>),
    /// The handshake failed.
    Failed(Instant),
}

impl Entry {
    fn since(&self) -> Instant {
        match self {
            Self::Waiting(t) | Self::Ready(t, ..) | Self::Failed(t) => *t,
        }
    }
}

/// The listener's side of discovery: the map of handshaken channels and the mailboxes
/// of accepted sessions.
#[derive(Debug, Default)]
pub(crate) struct Acceptor {
    pending: Mutex<HashMap<FourTuple, Entry>>,
    ready: Condvar,
    sessions: Mutex<HashMap<[u8; 16], Weak<Mailbox>>>,
}

impl HandshakeSink for Acceptor {
    fn begin(&self, hello: &Hello) -> Result<(), Refusal> {
        if hello.epoch > 0 {
            let sessions = self.sessions.lock().map_err(|_| Refusal::Busy)?;
            return match sessions.get(&hello.session).and_then(Weak::upgrade) {
                Some(_) => Ok(()),
                None => Err(Refusal::UnknownSession),
            };
        }
        let mut p = self.pending.lock().map_err(|_| Refusal::Busy)?;
        let now = Instant::now();
        p.retain(|_, e| now.duration_since(e.since()) < PENDING_EXPIRY);
        if p.len() >= MAX_PENDING {
            return Err(Refusal::Busy);
        }
        p.insert(hello.tuple, Entry::Waiting(now));
        Ok(())
    }

    fn complete(&self, hello: &Hello, link: Result<Box<dyn RingLink>, Refusal>) {
        if hello.epoch > 0 {
            let mailbox = self
                .sessions
                .lock()
                .ok()
                .and_then(|s| s.get(&hello.session).and_then(Weak::upgrade));
            if let (Some(m), Ok(link)) = (mailbox, link) {
                m.post(Mail::Channel(*hello, link));
            }
            return;
        }
        // The session is known from now on, before its TCP connection is accepted: the
        // entry holds the mailbox, the map a weak reference (gone with the entry if the
        // connection never comes or never commits).
        let link = link.and_then(|l| Ok((l, Mailbox::new().map_err(Refusal::from)?)));
        if let Ok((_, m)) = &link {
            if let Ok(mut s) = self.sessions.lock() {
                s.retain(|_, w| w.strong_count() > 0);
                s.insert(hello.session, Arc::downgrade(m));
            }
        }
        if let Ok(mut p) = self.pending.lock() {
            let now = Instant::now();
            if let Some(e) = p.get_mut(&hello.tuple) {
                *e = match link {
                    Ok((l, m)) => Entry::Ready(now, *hello, l, m),
                    Err(_) => Entry::Failed(now),
                };
            }
        }
        self.ready.notify_all();
    }
}

impl Acceptor {
    /// The channel handshaken for `tuple`, if its connecting side committed to it.
    fn take(
        &self,
        tuple: &FourTuple,
        wait: Duration,
    ) -> Option<(Hello, Box<dyn RingLink>, Arc<Mailbox>)> {
        let deadline = Instant::now() + wait;
        let mut p = self.pending.lock().ok()?;
        loop {
            match p.get(tuple) {
                None => return None,
                Some(Entry::Waiting(_)) => {
                    // The peer connects only after the ack, and the entry exists before
                    // the ack is sent: this wait ends with the handshake.
                    let now = Instant::now();
                    if now >= deadline {
                        p.remove(tuple);
                        return None;
                    }
                    p = self.ready.wait_timeout(p, deadline - now).ok()?.0;
                }
                Some(_) => break,
            }
        }
        match p.remove(tuple)? {
            Entry::Ready(_, hello, link, mailbox) => Some((hello, link, mailbox)),
            _ => None,
        }
    }

    fn broadcast(&self, m: impl Fn() -> Mail) {
        if let Ok(mut s) = self.sessions.lock() {
            s.retain(|_, w| w.strong_count() > 0);
            for w in s.values() {
                if let Some(mb) = w.upgrade() {
                    mb.post(m());
                }
            }
        }
    }
}

/// A TCP listener whose accepted streams take a ring while their peer shares the host.
///
/// # Examples
///
/// ```no_run
/// use std::io::{Read, Write};
/// let listener = coresident_net::Listener::bind("127.0.0.1:7000")?;
/// let (mut stream, _peer) = listener.accept()?;
/// let mut buf = [0u8; 5];
/// stream.read_exact(&mut buf)?;
/// stream.write_all(&buf)?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct Listener {
    tcp: TcpListener,
    acceptor: Arc<Acceptor>,
    registration: Mutex<Option<Box<dyn Registration>>>,
    addr: SocketAddr,
    builder: Builder,
}

impl Listener {
    /// Binds `addr` and registers it with the default [`Builder`]'s discovery (the
    /// host registry).
    ///
    /// # Errors
    ///
    /// As `TcpListener::bind`.
    pub fn bind(addr: impl ToSocketAddrs) -> io::Result<Self> {
        Builder::new().bind(addr)
    }

    pub(crate) fn bind_with(builder: Builder, addr: impl ToSocketAddrs) -> io::Result<Self> {
        let tcp = TcpListener::bind(addr)?;
        let addr = tcp.local_addr()?;
        let acceptor = Arc::new(Acceptor::default());
        let l = Self {
            tcp,
            acceptor,
            registration: Mutex::new(None),
            addr,
            builder,
        };
        l.register();
        Ok(l)
    }

    fn register(&self) {
        let sink: Arc<dyn HandshakeSink> = self.acceptor.clone();
        let reg = match self.builder.discovery.register(self.addr, sink) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(addr = %self.addr, error = %e, backend = self.builder.discovery.name(),
                    "registration failed: this listener accepts plain TCP only");
                None
            }
        };
        if let Ok(mut g) = self.registration.lock() {
            *g = reg;
        }
    }

    /// The bound address.
    ///
    /// # Errors
    ///
    /// Never: kept from `bind`.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.addr)
    }

    /// Accepts a connection: a session stream if its connecting side handshook a
    /// channel for this very 4-tuple and committed to it, plain TCP otherwise.
    ///
    /// # Errors
    ///
    /// As `TcpListener::accept`.
    pub fn accept(&self) -> io::Result<(Stream, SocketAddr)> {
        let (tcp, peer) = self.tcp.accept()?;
        Ok((self.adopt(tcp)?, peer))
    }

    /// Turns a TCP connection accepted by other means (the preload library's
    /// intercepted `accept`) into a stream of this listener.
    ///
    /// # Errors
    ///
    /// The connection's addresses or the epoll set could not be had.
    pub fn adopt(&self, tcp: TcpStream) -> io::Result<Stream> {
        let tuple = FourTuple {
            src: tcp.peer_addr()?,
            dst: tcp.local_addr()?,
        }
        .canonical();
        let taken = self.acceptor.take(&tuple, self.builder.handshake_timeout);
        let (session, link) = match taken {
            Some((hello, link, mailbox)) if link.committed() => {
                self.builder
                    .discovery
                    .subscribe(tuple.src.ip(), Subscriber::new(&mailbox));
                let s = Core::session(
                    hello.session,
                    Side::Acceptor,
                    tuple,
                    Arc::clone(&self.builder.discovery),
                    self.builder.params(),
                    Some(mailbox),
                );
                (Some(s), Some(link))
            }
            Some(_) => {
                tracing::info!(%tuple, "the connecting side did not commit: plain TCP");
                (None, None)
            }
            None => (None, None),
        };
        Stream::from_core(
            Core::new(tcp, session, link, self.builder.tuning())?,
            self.builder.spin,
        )
    }

    /// Residency ends (a migration away, an operator): the registration goes (new
    /// connections are plain TCP) and every accepted stream falls back to TCP.
    pub fn withdraw(&self) {
        if let Ok(mut g) = self.registration.lock() {
            *g = None;
        }
        tracing::info!(addr = %self.addr, "residency withdrawn");
        self.acceptor.broadcast(|| Mail::Withdraw);
    }

    /// Residency returns: registers again and asks every accepted stream's peer for a
    /// new channel.
    pub fn readmit(&self) {
        let registered = self.registration.lock().is_ok_and(|g| g.is_some());
        if !registered {
            self.register();
        }
        tracing::info!(addr = %self.addr, "residency readmitted");
        self.acceptor.broadcast(|| Mail::Readmit);
    }

    /// Moves the TCP listener into or out of non-blocking mode (a connection whose
    /// channel handshake is still finishing may still wait for it, up to the
    /// handshake deadline).
    ///
    /// # Errors
    ///
    /// As `TcpListener::set_nonblocking`.
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        self.tcp.set_nonblocking(nonblocking)
    }
}

impl std::os::fd::AsRawFd for Listener {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.tcp.as_raw_fd()
    }
}
