//! A listening rendezvous socket, and the engine that serves many handshakes at once.
//!
//! The engine polls the listening socket and every handshake in progress together.
//! Each connection is checked against the credential policy as soon as it is accepted,
//! before a byte is read; each handshake has its own deadline for the whole hello; at
//! most [`AcceptConfig::max_handshakes`] run at once, and one more is refused at once
//! with [`RejectReason::Busy`](crate::RejectReason::Busy). So a peer sending one byte
//! at a time holds one slot for at most its deadline, and an honest offerer behind it
//! is served meanwhile.

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use rustix::event::{PollFd, PollFlags};
use rustix::io::Errno;
use rustix::net::SocketFlags;

use crate::cred::PeerCred;
use crate::dir::{EntryIdent, SecureDir};
use crate::endpoint::Endpoint;
use crate::error::SysError;
use crate::rendezvous::{refuse, timespec, AcceptConfig, HandshakeError, HelloReader};

/// The most connections one engine turn accepts from the backlog.
const ACCEPTS_PER_TURN: usize = 16;

/// One handshake in progress.
#[derive(Debug)]
struct InFlight {
    /// The connection.
    stream: UnixStream,
    /// The hello so far.
    reader: HelloReader,
    /// When the whole handshake must be done.
    deadline: Instant,
    /// The peer's credentials (already admitted).
    cred: PeerCred,
}

/// Serves handshakes concurrently on one listening socket (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Engine {
    /// Handshakes in progress.
    inflight: Vec<InFlight>,
    /// Finished handshakes, oldest first (probes left out).
    done: VecDeque<Result<Endpoint, HandshakeError>>,
}

impl Engine {
    /// The oldest finished handshake, if any.
    pub(crate) fn pop(&mut self) -> Option<Result<Endpoint, HandshakeError>> {
        self.done.pop_front()
    }

    /// Runs until a handshake finishes, `wake` becomes readable, or `until` passes.
    /// New connections are taken from `listener` only if `accept_new`.
    pub(crate) fn run(
        &mut self,
        listener: &UnixListener,
        cfg: &AcceptConfig,
        accept_new: bool,
        wake: Option<BorrowedFd<'_>>,
        until: Option<Instant>,
    ) -> Result<(), SysError> {
        loop {
            self.expire();
            if !self.done.is_empty() {
                return Ok(());
            }
            let now = Instant::now();
            if until.is_some_and(|u| now >= u) {
                return Ok(());
            }
            let next = self.inflight.iter().map(|h| h.deadline).chain(until).min();
            let ts = next.map(|d| timespec(d.saturating_duration_since(now)));
            let mut fds = Vec::with_capacity(self.inflight.len() + 2);
            let lfd = listener.as_fd();
            fds.push(PollFd::new(
                &lfd,
                if accept_new {
                    PollFlags::IN
                } else {
                    PollFlags::empty()
                },
            ));
            let wfd = wake.unwrap_or(lfd);
            fds.push(PollFd::new(
                &wfd,
                if wake.is_some() {
                    PollFlags::IN
                } else {
                    PollFlags::empty()
                },
            ));
            for h in &self.inflight {
                fds.push(PollFd::new(&h.stream, PollFlags::IN | PollFlags::RDHUP));
            }
            match rustix::event::poll(&mut fds, ts.as_ref()) {
                Ok(_) | Err(Errno::INTR) => {}
                Err(e) => return Err(SysError::new("poll", e)),
            }
            let listener_ready = !fds[0].revents().is_empty();
            // Shut down (see `accept_stream`): it would poll ready for ever.
            let listener_hup =
                accept_new && fds[0].revents().intersects(PollFlags::HUP | PollFlags::ERR);
            let wake_ready = wake.is_some() && !fds[1].revents().is_empty();
            let ready: Vec<bool> = fds[2..].iter().map(|f| !f.revents().is_empty()).collect();
            drop(fds);
            // Handshakes first (they are older), back to front so removal keeps indices.
            for i in (0..ready.len()).rev() {
                if ready[i] {
                    self.step(i, cfg);
                }
            }
            if listener_ready && accept_new {
                self.accept_new(listener, cfg)?;
            }
            if listener_hup {
                return Err(SysError::new("accept", Errno::INVAL));
            }
            if wake_ready {
                return Ok(());
            }
        }
    }

    /// Fails the handshakes whose deadline passed.
    fn expire(&mut self) {
        let now = Instant::now();
        let mut i = 0;
        while i < self.inflight.len() {
            if self.inflight[i].deadline <= now {
                let h = self.inflight.swap_remove(i);
                let e = HandshakeError::Timeout;
                refuse(h.stream.as_fd(), &e, h.cred);
                self.done.push_back(Err(e));
            } else {
                i += 1;
            }
        }
    }

    /// Advances handshake `i`, which has something to read.
    fn step(&mut self, i: usize, cfg: &AcceptConfig) {
        let h = &mut self.inflight[i];
        match h.reader.read_some(h.stream.as_fd()) {
            Ok(false) => {}
            Ok(true) => {
                let h = self.inflight.swap_remove(i);
                self.done.push_back(h.reader.finish(h.stream, h.cred, cfg));
            }
            Err(HandshakeError::Closed) => {
                // A liveness probe: a connection that closes without a byte.
                self.inflight.swap_remove(i);
            }
            Err(e) => {
                let h = self.inflight.swap_remove(i);
                refuse(h.stream.as_fd(), &e, h.cred);
                self.done.push_back(Err(e));
            }
        }
    }

    /// Accepts what the backlog holds (a bounded number per turn).
    fn accept_new(&mut self, listener: &UnixListener, cfg: &AcceptConfig) -> Result<(), SysError> {
        for _ in 0..ACCEPTS_PER_TURN {
            let fd = match rustix::net::accept_with(
                listener,
                SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            ) {
                Ok(fd) => fd,
                Err(Errno::AGAIN) => return Ok(()),
                Err(Errno::INTR | Errno::CONNABORTED) => continue,
                // Out of descriptors or memory: leave the backlog for a later turn.
                Err(Errno::MFILE | Errno::NFILE | Errno::NOBUFS | Errno::NOMEM) => return Ok(()),
                Err(e) => return Err(SysError::new("accept", e)),
            };
            let stream = UnixStream::from(fd);
            let cred = match PeerCred::of(stream.as_fd()) {
                Ok(c) => c,
                Err(e) => {
                    self.done.push_back(Err(e.into()));
                    continue;
                }
            };
            let refusal = if !cfg.policy.allows(&cred) {
                Some(HandshakeError::PeerRefused(cred))
            } else if self.inflight.len() >= cfg.max_handshakes.max(1) {
                Some(HandshakeError::Busy)
            } else {
                None
            };
            if let Some(e) = refusal {
                refuse(stream.as_fd(), &e, cred);
                self.done.push_back(Err(e));
                continue;
            }
            let deadline = Instant::now()
                .checked_add(cfg.handshake_timeout)
                .unwrap_or_else(|| Instant::now() + core::time::Duration::from_secs(86_400));
            self.inflight.push(InFlight {
                stream,
                reader: HelloReader::new(),
                deadline,
                cred,
            });
        }
        Ok(())
    }
}

/// Where a listener's socket file lives, to remove it (only if still ours) on drop.
#[derive(Debug)]
enum Home {
    /// Bound by path.
    Path {
        /// The path.
        path: PathBuf,
        /// `(st_dev, st_ino)` of the socket we created.
        ident: (u64, u64),
    },
    /// Bound in a verified directory.
    Dir {
        /// The directory.
        dir: std::sync::Arc<SecureDir>,
        /// The entry's name.
        name: String,
        /// The socket we created.
        ident: EntryIdent,
    },
}

/// A listening rendezvous socket.
///
/// [`accept`](Self::accept) serves many handshakes at once (see the module docs); for
/// a background thread handing validated endpoints out, see
/// [`Acceptor`](crate::Acceptor). The socket file is removed on drop, if it is still
/// ours (same inode).
#[derive(Debug)]
pub struct Listener {
    /// The listening socket.
    inner: UnixListener,
    /// Where its file is.
    home: Home,
    /// Handshakes in progress between `accept` calls.
    engine: Mutex<Engine>,
}

impl Listener {
    /// Binds a listening socket at `path` (which must not exist). Prefer a
    /// [`Registry`](crate::Registry) or a [`SecureDir`]: a path alone says nothing of
    /// who else may connect, and the socket's mode follows the umask.
    ///
    /// # Errors
    ///
    /// [`SysError`] from `bind` (`EADDRINUSE` if the path exists, `ENAMETOOLONG` if it
    /// does not fit a `sockaddr_un`, 107 bytes).
    pub fn bind(path: &Path) -> Result<Self, SysError> {
        if path.as_os_str().len() >= 108 {
            return Err(SysError::new("bind", Errno::NAMETOOLONG));
        }
        let inner = UnixListener::bind(path).map_err(|e| SysError::from_io("bind", &e))?;
        // Non-blocking: the engine accepts only what `poll` announced, and a
        // connection that vanished in between must not block it.
        inner
            .set_nonblocking(true)
            .map_err(|e| SysError::from_io("fcntl(O_NONBLOCK)", &e))?;
        let st = rustix::fs::lstat(path).map_err(|e| SysError::new("lstat", e))?;
        Ok(Self {
            inner,
            home: Home::Path {
                path: path.to_owned(),
                ident: (st.st_dev, st.st_ino),
            },
            engine: Mutex::default(),
        })
    }

    /// Binds a listening socket as `name` in `dir`, mode `0600` (`0660` when the
    /// directory's policy allows groups). The directory is verified first.
    ///
    /// # Errors
    ///
    /// A [`DirError`](crate::DirError) as [`SysError`]-carrying variants, or `bind`'s.
    pub fn bind_in(dir: &std::sync::Arc<SecureDir>, name: &str) -> Result<Self, crate::DirError> {
        dir.verify()?;
        let inner =
            UnixListener::bind(dir.socket_path(name)).map_err(|e| SysError::from_io("bind", &e))?;
        // Non-blocking: see `bind`.
        if let Err(e) = inner.set_nonblocking(true) {
            let _ = dir.unlink(name);
            return Err(SysError::from_io("fcntl(O_NONBLOCK)", &e).into());
        }
        // The directory admits nobody else, so nobody can reach the socket before this.
        let ident = match dir
            .chmod(name, dir.policy().socket_mode())
            .map(|()| dir.socket_ident(name))
        {
            Ok(Some(ident)) => ident,
            Ok(None) => {
                return Err(SysError::new("lstat(socket)", Errno::NOENT).into());
            }
            Err(e) => {
                let _ = dir.unlink(name);
                return Err(e.into());
            }
        };
        Ok(Self {
            inner,
            home: Home::Dir {
                dir: dir.clone(),
                name: name.to_owned(),
                ident,
            },
            engine: Mutex::default(),
        })
    }

    /// The same listener after its socket file was renamed to `name` in its directory
    /// (the registry binds under a temporary name and renames it into place; a rename
    /// keeps the inode).
    pub(crate) fn renamed(mut self, new_name: &str) -> Self {
        if let Home::Dir { dir, name, ident } = &mut self.home {
            *name = new_name.to_owned();
            // A rename updates the change time; the inode stays.
            if let Some(now) = dir.socket_ident(new_name) {
                *ident = now;
            }
        }
        self
    }

    /// Where the socket is bound (for a socket in a directory: the directory's path
    /// joined with its name).
    #[must_use]
    pub fn path(&self) -> PathBuf {
        match &self.home {
            Home::Path { path, .. } => path.clone(),
            Home::Dir { dir, name, .. } => dir.display_path(name),
        }
    }

    /// Accepts one connection, without a handshake, waiting as long as it takes. The
    /// stream is non-blocking (every call of this crate passes `MSG_DONTWAIT` anyway).
    ///
    /// # Errors
    ///
    /// [`SysError`] from `poll` or `accept`.
    pub fn accept_stream(&self) -> Result<UnixStream, SysError> {
        // A listening socket shut down (how a server stops its acceptor thread) polls
        // as readable and hung up while `accept` keeps saying EAGAIN: without this
        // flag the loop would spin for ever.
        let mut hung_up = false;
        loop {
            match rustix::net::accept_with(
                &self.inner,
                SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            ) {
                Ok(fd) => return Ok(UnixStream::from(fd)),
                Err(Errno::AGAIN) if hung_up => {
                    return Err(SysError::new("accept", Errno::INVAL));
                }
                Err(Errno::AGAIN) => {
                    let mut fds = [PollFd::new(&self.inner, PollFlags::IN)];
                    match rustix::event::poll(&mut fds, None) {
                        Ok(_) | Err(Errno::INTR) => {}
                        Err(e) => return Err(SysError::new("poll", e)),
                    }
                    hung_up = fds[0]
                        .revents()
                        .intersects(PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL);
                }
                Err(Errno::INTR | Errno::CONNABORTED) => {}
                Err(e) => return Err(SysError::new("accept", e)),
            }
        }
    }

    /// Serves handshakes until one finishes, and returns it: an endpoint, or the error
    /// of a handshake that failed (a refusal, a timeout...). Liveness probes from
    /// [`Registry::scan`](crate::Registry::scan) are skipped. Handshakes still in
    /// progress continue at the next call.
    ///
    /// # Errors
    ///
    /// The [`HandshakeError`] of the first handshake that failed; the caller may simply
    /// call `accept` again: a bad peer does not spoil the listener.
    pub fn accept(&self, cfg: &AcceptConfig) -> Result<Endpoint, HandshakeError> {
        let mut engine = self.engine.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(done) = engine.pop() {
                return done;
            }
            engine.run(&self.inner, cfg, true, None, None)?;
        }
    }

    /// The listening socket and the engine, for [`Acceptor`](crate::Acceptor).
    pub(crate) fn parts(&self) -> (&UnixListener, &Mutex<Engine>) {
        (&self.inner, &self.engine)
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.as_fd()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        // Best effort: someone may have removed or replaced it already.
        match &self.home {
            Home::Path { path, ident } => {
                if let Ok(st) = rustix::fs::lstat(path) {
                    if (st.st_dev, st.st_ino) == *ident {
                        let _ = std::fs::remove_file(path);
                    }
                }
            }
            Home::Dir { dir, name, ident } => {
                if dir.socket_ident(name) == Some(*ident) {
                    let _ = dir.unlink(name);
                }
            }
        }
    }
}
