//! The stream's state machine: one TCP socket, at most one ring channel, and the
//! byte-offset bookkeeping that lets bytes take either path (see `docs/streams.md`).
//!
//! Every operation here is non-blocking; `stream.rs` adds the waiting.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read};
use std::net::TcpStream;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coresident::ring::{Consumer, Producer, RecvError, SendError};
use coresident::ring_memory;
use coresident_ring::Readiness;

use crate::discovery::{Discovery, OfferParams, Refusal, RingLink, Signal};
use crate::stats::{Path, StreamStats};
use crate::sys::{self, interest, Poller, Ready, Source};
use crate::wire::{
    self, FourTuple, Hello, Segment, WireError, FRAME_DATA, FRAME_EPOCH, MAX_SEGMENT, SEG_DATA,
    SEG_FIN, SEG_HEADER, SEG_UPGRADE,
};

/// Which side of the session this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    /// Connected: offers every channel.
    Connector,
    /// Accepted: adopts channels from its listener's mailbox.
    Acceptor,
}

/// Why a channel was given up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cause {
    /// `Stream::downgrade`.
    Explicit,
    /// The listener withdrew its registration (a migration away, an operator).
    Withdrawn,
    /// The peer closed the channel or died (rendezvous hang-up, pidfd, closed ring).
    PeerGone,
    /// The ring held an impossible value.
    Corrupted,
    /// The peer broke the channel protocol (no epoch frame, a wrong epoch).
    Protocol,
}

impl Cause {
    fn as_str(self) -> &'static str {
        match self {
            Self::Explicit => "explicit downgrade",
            Self::Withdrawn => "residency withdrawn",
            Self::PeerGone => "peer closed the channel or died",
            Self::Corrupted => "ring corrupted",
            Self::Protocol => "channel protocol violated",
        }
    }
}

/// What a listener (or a discovery backend, through a
/// [`Subscriber`](crate::discovery::Subscriber)) tells a session stream.
#[derive(Debug)]
pub(crate) enum Mail {
    /// A new channel for this session.
    Channel(Hello, Box<dyn RingLink>),
    /// Residency ended: go to TCP.
    Withdraw,
    /// Residency is back: ask the connecting side for a channel.
    Readmit,
}

/// A session stream's mailbox, filled by its listener (accepted streams) and by its
/// discovery backend's residency changes (both sides).
#[derive(Debug)]
pub(crate) struct Mailbox {
    pub(crate) queue: Mutex<VecDeque<Mail>>,
    pub(crate) bell: OwnedFd,
}

impl Mailbox {
    pub(crate) fn new() -> io::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            queue: Mutex::new(VecDeque::new()),
            bell: rustix::event::eventfd(
                0,
                rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
            )?,
        }))
    }

    pub(crate) fn post(&self, m: Mail) {
        if let Ok(mut q) = self.queue.lock() {
            // Bounded: a few control words and at most a handful of channels; a
            // listener that posts more than this drops the oldest (a stale channel's
            // drop tells its peer, who falls back).
            if q.len() >= 16 {
                q.pop_front();
            }
            q.push_back(m);
        }
        let _ = rustix::io::write(&self.bell, &1u64.to_ne_bytes());
    }

    fn take(&self) -> Vec<Mail> {
        let mut b = [0u8; 8];
        let _ = rustix::io::read(&self.bell, &mut b);
        match self.queue.lock() {
            Ok(mut q) => q.drain(..).collect(),
            Err(_) => Vec::new(),
        }
    }
}

/// The sending ring of a channel.
#[derive(Debug)]
struct TxRing {
    prod: Producer,
    /// The stream offset after the last byte written into the ring.
    end: u64,
    /// Whether frames were written but not published.
    unpublished: bool,
}

/// The receiving ring of a channel.
#[derive(Debug)]
struct RxRing {
    cons: Consumer,
    /// The stream offset of the next frame's first byte; `None` until the epoch frame.
    next: Option<u64>,
}

/// One ring channel of the session.
#[derive(Debug)]
struct Chan {
    epoch: u32,
    tx: Option<TxRing>,
    rx: Option<RxRing>,
    /// The peer is gone: receive what it published, then drop the channel.
    draining: bool,
    pidfd: Option<OwnedFd>,
    // Last: the halves point into its region.
    link: Box<dyn RingLink>,
}

/// Sending state of a session.
#[derive(Debug, Default)]
struct Tx {
    /// The offset of the next byte the application writes.
    off: u64,
    /// Segment bytes accepted for TCP and not yet written (one segment at most, plus
    /// the resend and control segments queued behind it): bounded by one ring's data
    /// area plus one segment.
    out: VecDeque<u8>,
    /// The final offset, once the application shut the write side down.
    fin: Option<u64>,
    /// The FIN segment is queued (in `out`), and `shutdown(SHUT_WR)` follows once
    /// `out` is empty.
    fin_queued: bool,
    /// `shutdown(SHUT_WR)` done.
    tcp_shut: bool,
    /// The last TCP write would have blocked (EPOLLOUT wanted).
    blocked: bool,
}

/// Receiving state of a session.
#[derive(Debug, Default)]
struct Rx {
    /// The offset of the next byte the application reads.
    pos: u64,
    hdr: [u8; SEG_HEADER],
    hdr_have: usize,
    /// The DATA segment being read from TCP: `(offset of its next byte, bytes left)`.
    seg: Option<(u64, u32)>,
    /// The peer's final offset (FIN segment).
    fin: Option<u64>,
    /// The highest offset any path has shown (a FIN below it is a lie).
    seen: u64,
    /// TCP gave end-of-file.
    tcp_eof: bool,
    /// Since when `pos` has waited for a byte that no known path holds.
    gap_since: Option<Instant>,
}

/// A session: the stream speaks segments on TCP and may hold a channel.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) id: [u8; 16],
    pub(crate) side: Side,
    pub(crate) tuple: FourTuple,
    pub(crate) discovery: Arc<dyn Discovery>,
    pub(crate) params: OfferParams,
    /// The highest epoch used.
    pub(crate) epoch: u32,
    pub(crate) mailbox: Option<Arc<Mailbox>>,
    chan: Option<Chan>,
    /// A channel adopted from the mailbox waits for the old one to drain.
    pending: Option<(Hello, Box<dyn RingLink>)>,
    tx: Tx,
    rx: Rx,
    /// The connecting side was asked for a new channel.
    upgrade_wanted: bool,
    /// The listener withdrew residency (the accepting side refuses channels until
    /// readmitted).
    withdrawn: bool,
    /// When this side last offered a channel.
    last_offer: Option<Instant>,
}

/// Tuning of a stream.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tuning {
    /// How long a bounded gap may wait for a path to fill it before the stream fails.
    pub gap_timeout: Duration,
    /// How many fast operations between two looks at the descriptors (peer death,
    /// withdrawal) while the ring never runs dry.
    pub look_every: u32,
}

/// The non-blocking core of a stream.
#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) tcp: TcpStream,
    pub(crate) poller: Poller,
    pub(crate) session: Option<Session>,
    pub(crate) stats: StreamStats,
    events: Vec<Ready>,
    /// Whether a TCP send is blocked, so TCP writability is of interest.
    tcp_want_out: bool,
    /// TCP interest as the poller has it, (in, out) (level-triggered: telling it the
    /// same again is a system call that changes nothing, once per wake-up on the
    /// ring's path).
    tcp_in_poller: (bool, bool),
    tcp_registered: bool,
    /// The doorbell was consumed by the last [`look`](Self::look) and not since: an
    /// arm right after it need not read the socket again (one `recv` per wake-up
    /// instead of two). A ring that lands after that read stays pending and makes the
    /// next sleep return at once, to a look that consumes it: a spurious wake-up at
    /// worst, never a lost one (the arm's own re-check of the ring is unchanged).
    doorbell_drained: bool,
    fork_gen: u64,
    ops: u32,
    tuning: Tuning,
    /// A hard error already reported (the stream is dead).
    failed: Option<io::ErrorKind>,
    /// Threads of this stream asleep in a blocking call (set by `stream.rs`).
    pub(crate) sleepers: u32,
    /// Our own wake-up, for sessions: a private eventfd (no peer holds it, so no peer
    /// can change its flags), non-blocking, in the epoll set as [`Source::Wake`].
    wake: Option<OwnedFd>,
    /// A reader is armed for ring data / a writer for this much ring space.
    rx_waiting: bool,
    tx_waiting: Option<usize>,
    /// TCP may have input: false after a read said `WouldBlock`, true again when the
    /// epoll set reports the socket readable (saves a `recv` per read on the ring).
    tcp_hint: bool,
    scratch: Vec<u8>,
}

fn would_block() -> io::Error {
    io::ErrorKind::WouldBlock.into()
}

fn protocol_error(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

impl Core {
    pub(crate) fn new(
        tcp: TcpStream,
        session: Option<Session>,
        link: Option<Box<dyn RingLink>>,
        tuning: Tuning,
    ) -> io::Result<Self> {
        tcp.set_nonblocking(true)?;
        let _ = tcp.set_nodelay(true);
        let poller = Poller::new()?;
        poller.add(tcp.as_fd(), Source::Tcp, interest(true, false))?;
        let wake = match &session {
            Some(_) => {
                let fd = rustix::event::eventfd(
                    0,
                    rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
                )?;
                poller.add(fd.as_fd(), Source::Wake, interest(true, false))?;
                Some(fd)
            }
            None => None,
        };
        let mut core = Self {
            tcp,
            poller,
            session,
            stats: StreamStats::default(),
            events: Vec::new(),
            tcp_want_out: false,
            tcp_in_poller: (true, false),
            tcp_registered: true,
            doorbell_drained: false,
            fork_gen: sys::fork_generation(),
            ops: 0,
            tuning,
            failed: None,
            sleepers: 0,
            wake,
            rx_waiting: false,
            tx_waiting: None,
            tcp_hint: true,
            scratch: vec![0u8; 16 * 1024],
        };
        if let Some(s) = &core.session {
            if let Some(m) = &s.mailbox {
                core.poller
                    .add(m.bell.as_fd(), Source::Mailbox, interest(true, false))?;
            }
        }
        core.stats.path = if core.session.is_some() {
            Path::Tcp
        } else {
            Path::Plain
        };
        if let Some(link) = link {
            let epoch = core.session.as_ref().map_or(0, |s| s.epoch);
            core.adopt(epoch, link);
        }
        Ok(core)
    }

    /// A dead plain core over a fresh, unconnected socket (what a closing stream
    /// leaves behind while its real core finishes elsewhere).
    pub(crate) fn placeholder() -> io::Result<Self> {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        let mut c = Self::new(
            sock.into(),
            None,
            None,
            Tuning {
                gap_timeout: Duration::ZERO,
                look_every: 64,
            },
        )?;
        c.failed = Some(io::ErrorKind::NotConnected);
        Ok(c)
    }

    /// A session for a fresh connection.
    pub(crate) fn session(
        id: [u8; 16],
        side: Side,
        tuple: FourTuple,
        discovery: Arc<dyn Discovery>,
        params: OfferParams,
        mailbox: Option<Arc<Mailbox>>,
    ) -> Session {
        Session {
            id,
            side,
            tuple,
            discovery,
            params,
            epoch: 0,
            mailbox,
            chan: None,
            pending: None,
            tx: Tx::default(),
            rx: Rx::default(),
            upgrade_wanted: false,
            withdrawn: false,
            last_offer: None,
        }
    }

    // ------------------------------------------------------------ entry checks

    /// Every operation starts here: a copy in a forked child lets go of the channel
    /// (its parent owns it) and speaks TCP only; a dead stream says so.
    fn enter(&mut self) -> io::Result<()> {
        if let Some(k) = self.failed {
            return Err(io::Error::new(k, "the stream failed earlier"));
        }
        if sys::fork_generation() != self.fork_gen {
            self.after_fork()?;
        }
        Ok(())
    }

    fn after_fork(&mut self) -> io::Result<()> {
        self.fork_gen = sys::fork_generation();
        // The epoll instance is shared with the parent: make our own.
        let poller = Poller::new()?;
        poller.add(self.tcp.as_fd(), Source::Tcp, interest(true, false))?;
        self.poller = poller;
        self.tcp_want_out = false;
        self.tcp_in_poller = (true, false);
        self.tcp_registered = true;
        if let Some(s) = &mut self.session {
            s.mailbox = None;
            s.pending = None;
            if let Some(chan) = s.chan.take() {
                tracing::info!(
                    tuple = %s.tuple, epoch = chan.epoch,
                    tx_offset = s.tx.off, rx_offset = s.rx.pos,
                    "downgrade: stream copied into a forked child; the child speaks TCP only"
                );
                // Neither resend nor drain: the parent owns the channel. Dropping our
                // copies of its descriptors and mapping is invisible to the peer.
                drop(chan);
                self.stats.downgrades += 1;
                self.stats.path = Path::Tcp;
            }
        }
        Ok(())
    }

    /// A cheap operation count that makes busy streams still look at their
    /// descriptors now and then.
    fn tick(&mut self) -> io::Result<()> {
        self.ops = self.ops.wrapping_add(1);
        if self.ops % self.tuning.look_every.max(1) == 0 {
            // Hints are hints: now and then, try TCP whatever the last answer was.
            self.tcp_hint = true;
            self.look()?;
        }
        Ok(())
    }

    // ------------------------------------------------------------ events

    /// Collects and handles what the descriptors say, without blocking.
    pub(crate) fn look(&mut self) -> io::Result<()> {
        // Queued segments (a resend, the tail of a segment, a FIN) go out whatever path
        // the new bytes take: the peer may wait for them.
        self.flush_out()?;
        let mut events = core::mem::take(&mut self.events);
        self.doorbell_drained = false;
        let res = self.poller.wait(Duration::ZERO, &mut events);
        for ev in &events {
            self.handle(*ev);
        }
        self.events = events;
        res?;
        self.after_events()
    }

    /// The peer closed the channel or died: the doorbell socket and the pidfd stay
    /// readable for ever, so they leave the poller once, and the stream falls back.
    fn peer_gone(&mut self) {
        let Some(c) = self.session.as_ref().and_then(|s| s.chan.as_ref()) else {
            return;
        };
        self.poller.delete(c.link.doorbell_fd());
        if let Some(p) = &c.pidfd {
            self.poller.delete(p.as_fd());
        }
        self.downgrade(Cause::PeerGone);
    }

    fn handle(&mut self, ev: Ready) {
        let Some(s) = &mut self.session else {
            return;
        };
        match ev.source {
            Source::Doorbell => {
                let signal = s.chan.as_ref().map(|c| c.link.consume_doorbell());
                self.doorbell_drained = signal.is_some();
                match signal {
                    Some(Signal::Rung) => {
                        self.stats.doorbells_seen += 1;
                        self.forward();
                    }
                    Some(Signal::Gone) => self.peer_gone(),
                    Some(Signal::Quiet) | None => {}
                }
            }
            Source::Wake => {
                if let Some(w) = &self.wake {
                    let _ = rustix::io::read(w, &mut [0u8; 8]);
                }
                self.forward();
            }
            Source::PeerProcess => self.peer_gone(),
            Source::Mailbox => {
                let mail = s.mailbox.as_ref().map(|m| m.take()).unwrap_or_default();
                for m in mail {
                    self.mail(m);
                }
            }
            Source::Tcp => {
                if ev.readable || ev.hangup {
                    self.tcp_hint = true;
                }
                if ev.hangup && !ev.readable && self.tcp_registered {
                    // A hung-up socket stays "ready" for ever: stop listening to it;
                    // the next read or write reports what happened.
                    self.poller.delete(self.tcp.as_fd());
                    self.tcp_registered = false;
                }
            }
        }
    }

    fn mail(&mut self, m: Mail) {
        let Some(s) = &mut self.session else {
            return;
        };
        match m {
            Mail::Channel(hello, link) => {
                if s.withdrawn {
                    self.refused(Refusal::NotResident, "withdrawn");
                    return;
                }
                if hello.epoch <= s.epoch || hello.tuple != s.tuple || hello.session != s.id {
                    tracing::warn!(
                        tuple = %s.tuple, epoch = hello.epoch, current = s.epoch,
                        "refused a channel: stale epoch or another connection"
                    );
                    self.stats.refusals += 1;
                    return;
                }
                s.pending = Some((hello, link));
            }
            Mail::Withdraw => {
                s.withdrawn = true;
                if s.chan.is_some() {
                    self.downgrade(Cause::Withdrawn);
                }
            }
            Mail::Readmit => {
                s.withdrawn = false;
                if s.chan.is_none() {
                    match s.side {
                        // Offers from `after_events`, at its bounded rate.
                        Side::Connector => s.upgrade_wanted = true,
                        Side::Acceptor => self.request_upgrade(),
                    }
                }
            }
        }
    }

    /// Work that follows events: adopt a waiting channel, finish a drain, answer an
    /// upgrade request.
    fn after_events(&mut self) -> io::Result<()> {
        let Some(s) = &mut self.session else {
            return Ok(());
        };
        // A drained channel of a gone peer ends here even if nobody reads.
        if let Some(c) = &mut s.chan {
            if c.draining && c.tx.is_none() {
                let empty = c.rx.as_mut().is_none_or(|r| {
                    matches!(r.cons.peek(), Err(RecvError::Empty | RecvError::Closed))
                });
                if empty {
                    c.rx = None;
                }
            }
        }
        self.drop_chan_if_done();
        let Some(s) = &mut self.session else {
            return Ok(());
        };
        if s.chan.is_none() {
            if let Some((hello, link)) = s.pending.take() {
                s.epoch = hello.epoch;
                let e = hello.epoch;
                self.adopt(e, link);
            }
        }
        let Some(s) = &mut self.session else {
            return Ok(());
        };
        // At most one peer-requested offer per 20 ms: a peer that keeps asking costs
        // bounded handshakes, never a busy loop.
        let recent = s
            .last_offer
            .is_some_and(|t| t.elapsed() < Duration::from_millis(20));
        if s.upgrade_wanted
            && s.side == Side::Connector
            && s.chan.is_none()
            && !s.withdrawn
            && !recent
        {
            s.upgrade_wanted = false;
            self.upgrade_now();
        }
        Ok(())
    }

    // ------------------------------------------------------------ switching

    /// Attaches a channel's rings and starts this side's epoch at its current offset.
    fn adopt(&mut self, epoch: u32, link: Box<dyn RingLink>) {
        let Some(s) = &mut self.session else {
            return;
        };
        let (layout, role) = link.layout();
        let ((tx_off, tx_size), (rx_off, rx_size)) = layout.rings(role);
        let (ptr, len) = link.region();
        let region = RawRegion { ptr, len };
        let halves = (|| {
            let tm = ring_memory(&region, tx_off, tx_size).ok()?;
            let rm = ring_memory(&region, rx_off, rx_size).ok()?;
            Some((Producer::attach(tm).ok()?, Consumer::attach(rm).ok()?))
        })();
        let Some((mut prod, cons)) = halves else {
            tracing::warn!(tuple = %s.tuple, epoch, "refused a channel: its rings do not attach");
            self.stats.refusals += 1;
            return;
        };
        // The epoch frame: where this side's bytes on this ring start.
        let start = s.tx.off;
        if prod
            .write(FRAME_EPOCH, &wire::encode_epoch(epoch, start))
            .is_err()
        {
            tracing::warn!(tuple = %s.tuple, epoch, "refused a channel: no room for the epoch frame");
            self.stats.refusals += 1;
            return;
        }
        let ok = self
            .poller
            .add(link.doorbell_fd(), Source::Doorbell, interest(true, false));
        if ok.is_err() {
            self.stats.refusals += 1;
            return;
        }
        let pidfd = link.peer_pid().and_then(sys::pidfd);
        if let Some(p) = &pidfd {
            let _ = self
                .poller
                .add(p.as_fd(), Source::PeerProcess, interest(true, false));
        }
        tracing::info!(
            tuple = %s.tuple, epoch, tx_offset = start, rx_offset = s.rx.pos,
            "upgrade: bytes take the ring"
        );
        s.chan = Some(Chan {
            epoch,
            tx: Some(TxRing {
                prod,
                end: start,
                unpublished: true,
            }),
            rx: Some(RxRing { cons, next: None }),
            draining: false,
            pidfd,
            link,
        });
        self.stats.upgrades += 1;
        self.stats.path = Path::Ring;
        self.stats.epoch = epoch;
        let _ = self.publish();
    }

    /// Gives the channel up for TCP: the bytes the peer never consumed go out again as
    /// segments from their exact offsets; what the peer published is received first
    /// when it is gone (it cannot resend), and dropped otherwise (it resends).
    pub(crate) fn downgrade(&mut self, cause: Cause) {
        let Some(s) = &mut self.session else {
            return;
        };
        let Some(chan) = &mut s.chan else {
            return;
        };
        if chan.tx.is_none() {
            // Already given up, still receiving (lingering for a live peer, or draining
            // a gone one). The peer's close turns lingering into draining (it writes
            // no more); a broken ring ends the receiving at once.
            match cause {
                Cause::PeerGone => chan.draining = true,
                Cause::Corrupted | Cause::Protocol => {
                    chan.rx = None;
                    chan.draining = false;
                }
                _ => {}
            }
            self.drop_chan_if_done();
            return;
        }
        let epoch = chan.epoch;
        let mut resent = 0u64;
        let mut lost = false;
        if let Some(mut t) = chan.tx.take() {
            // The ring is its own retransmit buffer.
            let mut frames: Vec<Vec<u8>> = Vec::new();
            let walk = t.prod.for_each_unconsumed(|v| {
                if v.kind() == FRAME_DATA {
                    let mut b = vec![0u8; v.len()];
                    v.read_at(0, &mut b);
                    frames.push(b);
                }
            });
            if walk.is_err() {
                // The peer rewrote our ring: the unconsumed bytes cannot be named.
                lost = true;
            }
            let total: u64 = frames.iter().map(|f| f.len() as u64).sum();
            let mut at = t.end.saturating_sub(total);
            for f in frames {
                for chunk in f.chunks(MAX_SEGMENT) {
                    queue_segment(&mut s.tx.out, SEG_DATA, at, chunk);
                    at += chunk.len() as u64;
                    resent += chunk.len() as u64;
                }
            }
        }
        if cause == Cause::PeerGone && !lost {
            // Gone: it cannot resend, so receive what it published.
            chan.draining = true;
        } else {
            // Our choice or a broken ring: the channel closes now and the peer, seeing
            // the hang-up, resends what we did not consume. (Bytes it writes into the
            // ring before it notices go out again on TCP at its next operation: see
            // docs/streams.md, "Limits".)
            chan.rx = None;
        }
        tracing::info!(
            tuple = %s.tuple, epoch, reason = cause.as_str(),
            tx_offset = s.tx.off, rx_offset = s.rx.pos, resent_bytes = resent,
            "downgrade: bytes take TCP"
        );
        self.stats.downgrades += 1;
        self.stats.resent_bytes += resent;
        self.stats.path = Path::Tcp;
        if lost {
            tracing::error!(
                tuple = %s.tuple, epoch,
                "the peer corrupted our sending ring: unconsumed bytes cannot be resent"
            );
            self.failed = Some(io::ErrorKind::InvalidData);
        }
        self.drop_chan_if_done();
        let _ = self.flush_out();
    }

    fn drop_chan_if_done(&mut self) {
        let Some(s) = &mut self.session else {
            return;
        };
        let done = s
            .chan
            .as_ref()
            .is_some_and(|c| c.tx.is_none() && c.rx.is_none());
        if done {
            if let Some(c) = s.chan.take() {
                self.poller.delete(c.link.doorbell_fd());
                if let Some(p) = &c.pidfd {
                    self.poller.delete(p.as_fd());
                }
            }
        }
    }

    /// The connecting side offers a new channel now; the accepting side asks for one.
    pub(crate) fn upgrade(&mut self) -> io::Result<()> {
        self.enter()?;
        let Some(s) = &mut self.session else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a plain TCP stream (no session) cannot upgrade",
            ));
        };
        if s.chan.is_some() {
            return Ok(());
        }
        match s.side {
            Side::Connector => self.upgrade_now(),
            Side::Acceptor => self.request_upgrade(),
        }
        Ok(())
    }

    fn request_upgrade(&mut self) {
        let Some(s) = &mut self.session else {
            return;
        };
        if s.tx.fin.is_some() {
            return;
        }
        queue_segment(&mut s.tx.out, SEG_UPGRADE, 0, &[]);
        let _ = self.flush_out();
    }

    fn upgrade_now(&mut self) {
        let Some(s) = &mut self.session else {
            return;
        };
        s.last_offer = Some(Instant::now());
        let hello = Hello {
            mode: 0,
            epoch: s.epoch + 1,
            session: s.id,
            tuple: s.tuple,
        };
        match s.discovery.offer(&hello, &s.params) {
            Ok(link) => {
                s.epoch = hello.epoch;
                self.adopt(hello.epoch, link);
            }
            Err(r) => self.refused(r, "upgrade"),
        }
    }

    fn refused(&mut self, r: Refusal, what: &'static str) {
        let tuple = self.session.as_ref().map(|s| s.tuple);
        tracing::info!(tuple = ?tuple, reason = %r, what, "upgrade refused: staying on TCP");
        self.stats.refusals += 1;
    }

    /// A doorbell consumed by one thread may have been meant for another thread of
    /// the same stream asleep on the other direction: ring it on when that direction
    /// can now make progress (and only then, so two idle waiters never ping-pong).
    fn forward(&mut self) {
        if self.sleepers == 0 {
            return;
        }
        let Some(c) = self.session.as_mut().and_then(|s| s.chan.as_mut()) else {
            return;
        };
        let mut ready = false;
        if let (Some(want), Some(t)) = (self.tx_waiting, c.tx.as_mut()) {
            ready |= t.prod.arm_space(want) == Ok(Readiness::Ready);
        }
        if self.rx_waiting {
            if let Some(r) = c.rx.as_mut() {
                ready |= r.cons.peek().is_ok();
            }
        }
        if let (true, Some(w)) = (ready, &self.wake) {
            let _ = rustix::io::write(w, &1u64.to_ne_bytes());
        }
    }

    // ------------------------------------------------------------ writing

    pub(crate) fn write(&mut self, buf: &[u8], spinning: bool) -> io::Result<usize> {
        self.enter()?;
        if self.session.is_none() {
            return self.write_plain(buf);
        }
        if buf.is_empty() {
            return Ok(0);
        }
        if self.session.as_ref().is_some_and(|s| s.tx.fin.is_some()) {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after shutdown",
            ));
        }
        self.tick()?;
        if self.session.as_ref().is_some_and(|s| !s.tx.out.is_empty()) {
            self.flush_out()?;
        }
        if self.has_tx_ring() {
            match self.write_ring(buf) {
                Ok(n) if n > 0 => {
                    self.tx_waiting = None;
                    return Ok(n);
                }
                Ok(_) => {
                    if spinning {
                        return Err(would_block());
                    }
                    // Full: ask to be told when the first chunk fits, then check again.
                    let want = buf.len().min(self.ring_chunk());
                    match self.arm_space(want) {
                        Some(Readiness::Ready) => {
                            let n = self.write_ring(buf)?;
                            if n > 0 {
                                return Ok(n);
                            }
                        }
                        Some(Readiness::Armed) => {}
                        None => {}
                    }
                    if self.has_tx_ring() {
                        self.look()?;
                        self.sync_interest();
                        return Err(would_block());
                    }
                }
                Err(e) => return Err(e),
            }
        }
        self.write_tcp(buf)
    }

    fn has_tx_ring(&self) -> bool {
        self.session
            .as_ref()
            .and_then(|s| s.chan.as_ref())
            .is_some_and(|c| c.tx.is_some())
    }

    fn ring_chunk(&self) -> usize {
        self.session
            .as_ref()
            .and_then(|s| s.chan.as_ref())
            .and_then(|c| c.tx.as_ref())
            .map_or(MAX_SEGMENT, |t| {
                (t.prod.max_message() as usize).min(MAX_SEGMENT)
            })
    }

    /// Writes as much of `buf` into the ring as fits; 0 when full.
    fn write_ring(&mut self, buf: &[u8]) -> io::Result<usize> {
        let chunk = self.ring_chunk();
        let mut done = 0;
        let mut failure = None;
        {
            let Some(s) = &mut self.session else {
                return Ok(0);
            };
            let Some(t) = s.chan.as_mut().and_then(|c| c.tx.as_mut()) else {
                return Ok(0);
            };
            while done < buf.len() {
                let n = (buf.len() - done).min(chunk);
                match t.prod.write(FRAME_DATA, &buf[done..done + n]) {
                    Ok(()) => {
                        done += n;
                        t.end += n as u64;
                        t.unpublished = true;
                    }
                    Err(SendError::Full) => break,
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            s.tx.off += done as u64;
        }
        self.stats.ring_tx_bytes += done as u64;
        if let Some(e) = failure {
            self.ring_send_failed(e);
        } else if let Err(e) = self.publish() {
            self.ring_send_failed(e);
        }
        Ok(done)
    }

    fn ring_send_failed(&mut self, e: SendError) {
        let cause = match e {
            SendError::Closed => Cause::PeerGone,
            _ => Cause::Corrupted,
        };
        self.downgrade(cause);
    }

    fn publish(&mut self) -> Result<(), SendError> {
        let Some(c) = self.session.as_mut().and_then(|s| s.chan.as_mut()) else {
            return Ok(());
        };
        let Some(t) = c.tx.as_mut() else {
            return Ok(());
        };
        if !t.unpublished {
            return Ok(());
        }
        t.unpublished = false;
        let n = t.prod.publish()?;
        if n.is_required() {
            self.stats.doorbells_rung += 1;
            let _ = c.link.notify_peer();
        }
        Ok(())
    }

    fn arm_space(&mut self, want: usize) -> Option<Readiness> {
        let c = self.session.as_mut().and_then(|s| s.chan.as_mut())?;
        if !core::mem::take(&mut self.doorbell_drained) && c.link.consume_doorbell().is_rung() {
            self.stats.doorbells_seen += 1;
            self.forward();
        }
        let c = self.session.as_mut().and_then(|s| s.chan.as_mut())?;
        let t = c.tx.as_mut()?;
        match t.prod.arm_space(want) {
            Ok(r) => {
                self.tx_waiting = (r == Readiness::Armed).then_some(want);
                Some(r)
            }
            Err(e) => {
                self.ring_send_failed(e);
                None
            }
        }
    }

    fn write_plain(&mut self, buf: &[u8]) -> io::Result<usize> {
        match rustix::net::send(&self.tcp, buf, rustix::net::SendFlags::NOSIGNAL) {
            Ok(n) => {
                self.stats.tcp_tx_bytes += n as u64;
                self.want_out(false);
                Ok(n)
            }
            Err(rustix::io::Errno::AGAIN) => {
                self.want_out(true);
                Err(would_block())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Writes one segment of `buf` on TCP (after what is queued).
    fn write_tcp(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.flush_out()?;
        let Some(s) = &mut self.session else {
            return Ok(0);
        };
        if !s.tx.out.is_empty() {
            self.want_out(true);
            return Err(would_block());
        }
        let n = buf.len().min(MAX_SEGMENT);
        let hdr = Segment {
            kind: SEG_DATA,
            len: n as u32,
            offset: s.tx.off,
        }
        .encode();
        let iov = [IoSlice::new(&hdr), IoSlice::new(&buf[..n])];
        let wrote = match rustix::net::sendmsg(
            &self.tcp,
            &iov,
            &mut rustix::net::SendAncillaryBuffer::default(),
            rustix::net::SendFlags::NOSIGNAL,
        ) {
            Ok(w) => w,
            Err(rustix::io::Errno::AGAIN) => {
                self.want_out(true);
                return Err(would_block());
            }
            Err(e) => return Err(e.into()),
        };
        // What the kernel did not take waits in `out` (one segment at most).
        let all = SEG_HEADER + n;
        if wrote < all {
            let rest_hdr = hdr.get(wrote..).unwrap_or(&[]);
            s.tx.out.extend(rest_hdr);
            let from = wrote.saturating_sub(SEG_HEADER);
            s.tx.out.extend(&buf[from..n]);
        }
        s.tx.off += n as u64;
        self.stats.tcp_tx_bytes += n as u64;
        Ok(n)
    }

    /// Writes queued segment bytes; `WouldBlock` is not an error here.
    fn flush_out(&mut self) -> io::Result<()> {
        let Some(s) = &mut self.session else {
            return Ok(());
        };
        while !s.tx.out.is_empty() {
            let (a, b) = s.tx.out.as_slices();
            let iov = [IoSlice::new(a), IoSlice::new(b)];
            match rustix::net::sendmsg(
                &self.tcp,
                &iov,
                &mut rustix::net::SendAncillaryBuffer::default(),
                rustix::net::SendFlags::NOSIGNAL,
            ) {
                Ok(n) => {
                    s.tx.out.drain(..n);
                }
                Err(rustix::io::Errno::AGAIN) => {
                    s.tx.blocked = true;
                    self.want_out(true);
                    return Ok(());
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        s.tx.blocked = false;
        if s.tx.fin_queued && !s.tx.tcp_shut {
            s.tx.tcp_shut = true;
            let _ = self.tcp.shutdown(std::net::Shutdown::Write);
        }
        self.want_out(false);
        Ok(())
    }

    fn want_out(&mut self, out: bool) {
        if self.tcp_want_out != out {
            self.tcp_want_out = out;
            self.sync_interest();
        }
    }

    /// Whether TCP input would make progress now.
    fn want_in(&self) -> bool {
        match &self.session {
            None => true,
            Some(s) => !s.rx.tcp_eof && s.rx.seg.is_none_or(|(off, _)| off <= s.rx.pos),
        }
    }

    /// Registers exactly the TCP interest that would make progress (level-correct:
    /// a level-triggered epoll never reports what nobody can act on).
    fn sync_interest(&mut self) {
        let want = (
            self.want_in() && !self.session.as_ref().is_some_and(|s| s.rx.tcp_eof),
            self.tcp_want_out,
        );
        if !self.tcp_registered || want == self.tcp_in_poller {
            return;
        }
        let flags = interest(want.0, want.1);
        if self
            .poller
            .modify(self.tcp.as_fd(), Source::Tcp, flags)
            .is_ok()
        {
            self.tcp_in_poller = want;
        }
    }

    /// Shuts this side's writing down: a FIN segment with the final offset, then
    /// `shutdown(SHUT_WR)` once everything before it is on TCP.
    pub(crate) fn shutdown_write(&mut self) -> io::Result<()> {
        self.enter()?;
        let Some(s) = &mut self.session else {
            return self.tcp.shutdown(std::net::Shutdown::Write);
        };
        if s.tx.fin.is_none() {
            s.tx.fin = Some(s.tx.off);
            queue_segment(&mut s.tx.out, SEG_FIN, s.tx.off, &[]);
            s.tx.fin_queued = true;
            tracing::debug!(tuple = %s.tuple, final_offset = s.tx.off, "shutdown: FIN queued");
        }
        self.flush_out()
    }

    /// Whether queued TCP bytes (segments, FIN) are all written.
    pub(crate) fn flushed(&self) -> bool {
        self.session.as_ref().is_none_or(|s| s.tx.out.is_empty())
    }

    pub(crate) fn flush(&mut self) -> io::Result<()> {
        self.enter()?;
        self.flush_out()?;
        if self.flushed() {
            Ok(())
        } else {
            Err(would_block())
        }
    }

    // ------------------------------------------------------------ reading

    pub(crate) fn read(&mut self, buf: &mut [u8], spinning: bool) -> io::Result<usize> {
        self.enter()?;
        if self.session.is_none() {
            return self.read_plain(buf);
        }
        if buf.is_empty() {
            return Ok(0);
        }
        self.tick()?;
        let mut armed = false;
        loop {
            let n = self.read_sources(buf, spinning)?;
            if n > 0 {
                self.rx_waiting = false;
                return Ok(n);
            }
            if self.at_eof()? {
                return Ok(0);
            }
            if spinning || armed {
                self.check_gap()?;
                self.sync_interest();
                return Err(would_block());
            }
            // Nothing now: look at the descriptors, arm the ring's data request, and
            // check once more before saying WouldBlock (level-correct readiness).
            self.look()?;
            self.arm_data();
            armed = true;
        }
    }

    fn read_plain(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match (&self.tcp).read(buf) {
            Ok(n) => {
                self.stats.tcp_rx_bytes += n as u64;
                Ok(n)
            }
            Err(e) => Err(e),
        }
    }

    fn arm_data(&mut self) {
        let Some(c) = self.session.as_mut().and_then(|s| s.chan.as_mut()) else {
            return;
        };
        if !core::mem::take(&mut self.doorbell_drained) && c.link.consume_doorbell().is_rung() {
            self.stats.doorbells_seen += 1;
            self.forward();
        }
        let Some(c) = self.session.as_mut().and_then(|s| s.chan.as_mut()) else {
            return;
        };
        let Some(r) = c.rx.as_mut() else {
            return;
        };
        match r.cons.arm_data(1) {
            Ok(r) => self.rx_waiting = r == Readiness::Armed,
            Err(RecvError::Closed) => {
                self.downgrade(Cause::PeerGone);
            }
            Err(_) => self.ring_recv_failed(),
        }
    }

    fn ring_recv_failed(&mut self) {
        // An impossible value in the peer's ring: it resends what we did not consume
        // once it sees the channel close.
        if let Some(c) = self.session.as_mut().and_then(|s| s.chan.as_mut()) {
            c.rx = None;
            c.draining = false;
        }
        self.downgrade(Cause::Corrupted);
        self.drop_chan_if_done();
    }

    /// End of this direction: the peer's FIN offset reached.
    fn at_eof(&mut self) -> io::Result<bool> {
        let Some(s) = &self.session else {
            return Ok(false);
        };
        if s.rx.fin == Some(s.rx.pos) {
            return Ok(true);
        }
        if s.rx.tcp_eof && s.rx.fin.is_none() && s.rx.seg.is_none() {
            // TCP ended without a FIN segment: the peer died or reset. Only what a
            // living channel may still deliver is worth waiting for.
            let ring_left = s
                .chan
                .as_ref()
                .is_some_and(|c| c.rx.is_some() && !c.draining);
            if !ring_left {
                self.failed = Some(io::ErrorKind::ConnectionReset);
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "the peer closed TCP without a FIN at a final offset",
                ));
            }
        }
        Ok(false)
    }

    /// Delivers bytes at `pos` from whichever path holds them.
    fn read_sources(&mut self, buf: &mut [u8], spinning: bool) -> io::Result<usize> {
        let mut got = 0;
        loop {
            let r = self.read_ring(&mut buf[got..])?;
            got += r;
            if got == buf.len() {
                return Ok(got);
            }
            if spinning {
                return Ok(got);
            }
            let t = self.read_tcp(&mut buf[got..])?;
            got += t;
            if (r == 0 && t == 0) || got == buf.len() {
                return Ok(got);
            }
        }
    }

    /// Ring frames at `pos`: delivered; below: dropped; beyond: left in the ring.
    fn read_ring(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut got = 0;
        let mut fail: Option<Cause> = None;
        let mut drained = false;
        let mut notify = false;
        {
            let Some(s) = &mut self.session else {
                return Ok(0);
            };
            let Some(c) = &mut s.chan else {
                return Ok(0);
            };
            let Some(r) = &mut c.rx else {
                return Ok(0);
            };
            let pos = &mut s.rx.pos;
            while got < buf.len() {
                let frame = match r.cons.peek() {
                    Ok(f) => f,
                    Err(RecvError::Empty) => {
                        drained = c.draining;
                        break;
                    }
                    Err(RecvError::Closed) => {
                        drained = true;
                        break;
                    }
                    Err(_) => {
                        fail = Some(Cause::Corrupted);
                        break;
                    }
                };
                let Some(next) = r.next else {
                    // The first frame must say where the epoch starts.
                    let mut b = [0u8; wire::EPOCH_LEN];
                    let n = frame.read_at(0, &mut b);
                    let ok = frame.kind() == FRAME_EPOCH && frame.len() == n;
                    match wire::decode_epoch(&b[..n]) {
                        Ok((e, start)) if ok && e == c.epoch => {
                            match frame.consume() {
                                Ok(n) => notify |= n.is_required(),
                                Err(_) => {
                                    fail = Some(Cause::Corrupted);
                                    break;
                                }
                            }
                            r.next = Some(start);
                            s.rx.seen = s.rx.seen.max(start);
                            continue;
                        }
                        _ => {
                            fail = Some(Cause::Protocol);
                            break;
                        }
                    }
                };
                if frame.kind() != FRAME_DATA || frame.is_empty() {
                    fail = Some(Cause::Protocol);
                    break;
                }
                let len = frame.len() as u64;
                let Some(end) = next.checked_add(len) else {
                    fail = Some(Cause::Protocol);
                    break;
                };
                s.rx.seen = s.rx.seen.max(end);
                if next > *pos {
                    // Bytes before it are still on TCP (an upgrade's handover).
                    break;
                }
                let mut consumed = end <= *pos;
                if !consumed {
                    let from = (*pos - next) as usize;
                    let n = frame.read_at(from, &mut buf[got..]);
                    got += n;
                    *pos += n as u64;
                    self.stats.ring_rx_bytes += n as u64;
                    consumed = *pos >= end;
                } else {
                    self.stats.duplicate_bytes += len;
                }
                if !consumed {
                    // The caller's buffer is full; the rest of the frame stays.
                    break;
                }
                match frame.consume() {
                    Ok(n) => notify |= n.is_required(),
                    Err(_) => {
                        fail = Some(Cause::Corrupted);
                        break;
                    }
                }
                r.next = Some(end);
            }
            if notify {
                self.stats.doorbells_rung += 1;
                let _ = c.link.notify_peer();
            }
            if got > 0 {
                s.rx.gap_since = None;
            }
        }
        if let Some(cause) = fail {
            tracing::warn!(reason = cause.as_str(), "receiving ring refused");
            if cause == Cause::Protocol {
                if let Some(c) = self.session.as_mut().and_then(|s| s.chan.as_mut()) {
                    c.rx = None;
                    c.draining = false;
                }
                self.downgrade(Cause::Protocol);
                self.drop_chan_if_done();
            } else {
                self.ring_recv_failed();
            }
        } else if drained {
            if let Some(c) = self.session.as_mut().and_then(|s| s.chan.as_mut()) {
                if c.draining || c.tx.is_none() {
                    c.rx = None;
                }
            }
            self.drop_chan_if_done();
        }
        Ok(got)
    }

    /// TCP segments at `pos`: delivered; below: dropped; beyond: the header waits and
    /// TCP is not read further (its flow control is the back-pressure).
    fn read_tcp(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut got = 0;
        loop {
            let Some(s) = &mut self.session else {
                return Ok(got);
            };
            if s.rx.tcp_eof || !self.tcp_hint {
                return Ok(got);
            }
            let Some((off, left)) = s.rx.seg else {
                // A header, byte by byte as TCP gives it.
                let want = &mut s.rx.hdr[s.rx.hdr_have..];
                match (&self.tcp).read(want) {
                    Ok(0) => {
                        if s.rx.hdr_have != 0 {
                            return Err(self.fail(
                                io::ErrorKind::UnexpectedEof,
                                "TCP ended inside a segment header",
                            ));
                        }
                        s.rx.tcp_eof = true;
                        return Ok(got);
                    }
                    Ok(n) => s.rx.hdr_have += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.tcp_hint = false;
                        return Ok(got);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
                if s.rx.hdr_have < SEG_HEADER {
                    continue;
                }
                s.rx.hdr_have = 0;
                let seg = match Segment::decode(&s.rx.hdr) {
                    Ok(seg) => seg,
                    Err(e) => return Err(self.fail_wire(e)),
                };
                match seg.kind {
                    SEG_DATA => {
                        if s.rx
                            .fin
                            .is_some_and(|f| seg.offset + u64::from(seg.len) > f)
                        {
                            return Err(
                                self.fail(io::ErrorKind::InvalidData, "data beyond the FIN offset")
                            );
                        }
                        s.rx.seen = s.rx.seen.max(seg.offset + u64::from(seg.len));
                        s.rx.seg = Some((seg.offset, seg.len));
                    }
                    SEG_FIN => {
                        if seg.offset < s.rx.pos || seg.offset < s.rx.seen || s.rx.fin.is_some() {
                            return Err(self.fail(
                                io::ErrorKind::InvalidData,
                                "a FIN below bytes already seen, or a second FIN",
                            ));
                        }
                        s.rx.fin = Some(seg.offset);
                    }
                    _ => {
                        // A request while a channel lives is stale (it crossed ours).
                        s.upgrade_wanted = s.chan.is_none();
                    }
                }
                continue;
            };
            let pos = s.rx.pos;
            if off > pos {
                // Beyond a gap: the ring must fill it first.
                return Ok(got);
            }
            if off < pos {
                // A resend of what we have: read and drop.
                let skip = ((pos - off).min(u64::from(left)) as usize).min(self.scratch.len());
                match (&self.tcp).read(&mut self.scratch[..skip]) {
                    Ok(0) => {
                        return Err(
                            self.fail(io::ErrorKind::UnexpectedEof, "TCP ended inside a segment")
                        )
                    }
                    Ok(n) => {
                        self.stats.duplicate_bytes += n as u64;
                        advance(&mut s.rx.seg, n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.tcp_hint = false;
                        return Ok(got);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
                continue;
            }
            if got == buf.len() {
                return Ok(got);
            }
            let n = (left as usize).min(buf.len() - got);
            match (&self.tcp).read(&mut buf[got..got + n]) {
                Ok(0) => {
                    return Err(
                        self.fail(io::ErrorKind::UnexpectedEof, "TCP ended inside a segment")
                    )
                }
                Ok(k) => {
                    got += k;
                    s.rx.pos += k as u64;
                    s.rx.gap_since = None;
                    self.stats.tcp_rx_bytes += k as u64;
                    advance(&mut s.rx.seg, k);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.tcp_hint = false;
                    return Ok(got);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// A gap that no path can fill is an error; one that a channel might still fill
    /// (a new channel's handshake in flight) may wait, but only for so long.
    fn check_gap(&mut self) -> io::Result<()> {
        let Some(s) = &mut self.session else {
            return Ok(());
        };
        let tcp_ahead = s.rx.seg.is_some_and(|(off, _)| off > s.rx.pos);
        if !tcp_ahead {
            s.rx.gap_since = None;
            return Ok(());
        }
        let ring_can = s.chan.as_ref().is_some_and(|c| {
            c.rx.as_ref()
                .is_some_and(|r| r.next.is_none_or(|n| n <= s.rx.pos))
        });
        let waiting_channel = s.pending.is_some() || s.side == Side::Acceptor;
        if !ring_can && !waiting_channel {
            return Err(self.fail(
                io::ErrorKind::InvalidData,
                "the peer skipped bytes that no path holds",
            ));
        }
        let since = *s.rx.gap_since.get_or_insert_with(Instant::now);
        if since.elapsed() > self.tuning.gap_timeout {
            return Err(self.fail(
                io::ErrorKind::TimedOut,
                "a gap in the stream was not filled in time",
            ));
        }
        Ok(())
    }

    #[cold]
    fn fail(&mut self, kind: io::ErrorKind, what: &'static str) -> io::Error {
        if let Some(s) = &self.session {
            tracing::error!(
                tuple = %s.tuple, rx_offset = s.rx.pos, tx_offset = s.tx.off,
                error = what, "stream failed"
            );
        }
        self.failed = Some(kind);
        io::Error::new(kind, what)
    }

    #[cold]
    fn fail_wire(&mut self, e: WireError) -> io::Error {
        if let Some(s) = &self.session {
            tracing::error!(tuple = %s.tuple, rx_offset = s.rx.pos, error = %e, "bad segment");
        }
        self.failed = Some(io::ErrorKind::InvalidData);
        protocol_error(&e.to_string())
    }

    // ------------------------------------------------------------ status

    pub(crate) fn stats(&self) -> StreamStats {
        let mut st = self.stats;
        if let Some(s) = &self.session {
            st.tx_offset = s.tx.off;
            st.rx_offset = s.rx.pos;
            st.epoch = s.epoch;
        } else {
            st.tx_offset = st.tcp_tx_bytes;
            st.rx_offset = st.tcp_rx_bytes;
        }
        st
    }

    /// Whether the stream can make progress for a waiter that spins (a ring exists).
    /// Whether the receiving ring holds a frame, or says something a read must report
    /// (closed, corrupted): one look at shared memory, no system call. A hint for
    /// spinning waiters: a read may still find nothing new (a frame the stream already
    /// had over TCP is dropped), and bytes or events on TCP are not seen here.
    pub(crate) fn ring_pending(&mut self) -> bool {
        self.session
            .as_mut()
            .and_then(|s| s.chan.as_mut())
            .and_then(|c| c.rx.as_mut())
            .is_some_and(|r| !matches!(r.cons.peek(), Err(RecvError::Empty)))
    }

    pub(crate) fn can_spin(&self) -> bool {
        self.session
            .as_ref()
            .and_then(|s| s.chan.as_ref())
            .is_some_and(|c| c.rx.is_some() || c.tx.is_some())
    }

    /// At the end, without blocking: publishes, queues the FIN; true when everything
    /// queued is on TCP (else [`finish`](Self::finish) can wait for it elsewhere).
    pub(crate) fn finish_now(&mut self) -> bool {
        if self.session.is_none() || sys::fork_generation() != self.fork_gen {
            return true;
        }
        let _ = self.publish();
        self.shutdown_write().is_err() || self.flushed()
    }

    /// Best effort at the end: queued segments and the FIN reach TCP within `limit`.
    pub(crate) fn finish(&mut self, limit: Duration) {
        if self.finish_now() {
            return;
        }
        let t0 = Instant::now();
        while !self.flushed() && t0.elapsed() < limit {
            let mut ev = Vec::new();
            let _ = self.poller.wait(Duration::from_millis(10), &mut ev);
            if self.flush_out().is_err() {
                return;
            }
        }
    }
}

fn advance(seg: &mut Option<(u64, u32)>, n: usize) {
    if let Some((off, left)) = seg {
        *off += n as u64;
        *left -= n as u32;
        if *left == 0 {
            *seg = None;
        }
    }
}

fn queue_segment(out: &mut VecDeque<u8>, kind: u8, offset: u64, payload: &[u8]) {
    let h = Segment {
        kind,
        len: payload.len() as u32,
        offset,
    }
    .encode();
    out.extend(h);
    out.extend(payload);
}

/// A backend's region as the core's `SharedRegion`, for `ring_memory`.
struct RawRegion {
    ptr: *mut u8,
    len: usize,
}

// SAFETY:
// - `ptr..ptr + len` comes from a `RingLink`, whose contract is one mapping valid for
//   reads and writes and aligned to 128 bytes while the link lives; the channel keeps
//   the link after (and so longer than) the ring halves built from it (`Chan` field
//   order), and this value itself lives only inside `adopt`;
// - this crate makes no Rust references into it: only the ring's atomics and volatile
//   copies touch it.
unsafe impl coresident::SharedRegion for RawRegion {
    fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }
    fn len(&self) -> usize {
        self.len
    }
}
