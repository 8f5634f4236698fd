//! Residency detection for processes and containers on one host: a directory of
//! listening sockets, one per peer id.
//!
//! ```text
//! $XDG_RUNTIME_DIR/coresident/        (or any directory the peers share, e.g. a bind
//!   10.0.0.1                           mount into several containers)
//!   02-00-00-00-00-01                 one listening Unix socket per registered peer;
//!   db-primary                        the file name is the peer id (see crate::peer_id)
//!   .reg-4242-0                       a registration in progress (ignored by scans)
//! ```
//!
//! * [`Registry::register`] binds and listens under a temporary dot-name, then renames
//!   the socket into place with `RENAME_NOREPLACE`: a socket under a peer's name is
//!   always already listening, so a scan never mistakes a peer that is still starting
//!   for a dead one, and two peers cannot both take one name.
//! * [`Registry::scan`] lists the sockets that accept a connection. A socket that
//!   refuses (`ECONNREFUSED`: its owner died without removing it) is stale and is
//!   removed, after checking it is still the same inode.
//! * [`Registry::watch`] reports peers joining and leaving: inotify on the directory
//!   triggers a rescan, and a periodic rescan catches peers that died without a trace
//!   (and serves alone where inotify is unavailable).
//!
//! A liveness probe is a connection that closes without sending a byte;
//! [`Listener::accept`] skips such connections.
//!
//! Peers that already share a channel learn of each other's death faster, from the
//! rendezvous socket (see [`crate::Endpoint::wait`]).

use core::fmt;
use core::time::Duration;
use std::collections::BTreeSet;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use rustix::event::{PollFd, PollFlags};
use rustix::fs::inotify;
use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

use crate::endpoint::Endpoint;
use crate::error::{SysContext, SysError};
use crate::offer::{connect, OfferConfig};
use crate::peer_id::PeerId;
use crate::rendezvous::{HandshakeError, Listener};

/// The default interval between periodic rescans of a [`Watcher`].
pub const DEFAULT_RESCAN_INTERVAL: Duration = Duration::from_secs(1);

/// A registry operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegistryError {
    /// A live peer is already registered under this id.
    AlreadyRegistered,
    /// The default registry directory exists but belongs to another user or is
    /// writable by others.
    InsecureDirectory,
    /// A system call failed.
    Sys(SysError),
}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AlreadyRegistered => {
                f.write_str("registry: a live peer is already registered under this id")
            }
            Self::InsecureDirectory => f.write_str(
                "registry: the default directory belongs to another user or is writable by others",
            ),
            Self::Sys(e) => write!(f, "registry: {e}"),
        }
    }
}

impl std::error::Error for RegistryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Sys(e) => Some(e),
            _ => None,
        }
    }
}

impl From<SysError> for RegistryError {
    fn from(e: SysError) -> Self {
        Self::Sys(e)
    }
}

/// A peer joined or left the registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistryEvent {
    /// A peer registered (its socket appeared and accepts connections).
    Joined(PeerId),
    /// A peer left (its socket disappeared or went stale).
    Left(PeerId),
}

/// What a liveness probe found at a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Probe {
    /// Something listens (or its backlog is full, which also means alive).
    Live,
    /// A socket file nobody listens on.
    Stale,
    /// No such file (any more).
    Gone,
}

/// Probes `path` with a non-blocking connect (which never waits on a full backlog).
fn probe(path: &Path) -> Result<Probe, SysError> {
    let addr = SocketAddrUnix::new(path).sys("sockaddr_un")?;
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )
    .sys("socket")?;
    match rustix::net::connect(&fd, &addr) {
        Ok(()) | Err(Errno::AGAIN | Errno::INPROGRESS) => Ok(Probe::Live),
        Err(Errno::CONNREFUSED) => Ok(Probe::Stale),
        Err(Errno::NOENT) => Ok(Probe::Gone),
        Err(e) => Err(SysError::new("connect", e)),
    }
}

/// `(st_dev, st_ino)` of a socket file at `path`, or `None` if there is no socket there.
fn socket_ident(path: &Path) -> Option<(u64, u64)> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    meta.file_type()
        .is_socket()
        .then(|| (meta.dev(), meta.ino()))
}

/// Removes the socket at `path` if nobody listens on it. Returns whether a live socket
/// is there.
///
/// Checks that the file is still the same inode before unlinking, so a peer that
/// replaced the stale socket in the meantime keeps its own (a window of a few
/// instructions remains between that check and `unlink`; registrations use
/// `RENAME_NOREPLACE` after this, so the worst case is one spurious re-registration).
fn live_or_remove(path: &Path) -> Result<bool, SysError> {
    let Some(before) = socket_ident(path) else {
        return Ok(false);
    };
    match probe(path)? {
        Probe::Live => Ok(true),
        Probe::Gone => Ok(false),
        Probe::Stale => {
            if socket_ident(path) == Some(before) {
                match std::fs::remove_file(path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(SysError::from_io("unlink", &e)),
                }
            }
            Ok(false)
        }
    }
}

/// A directory of peer sockets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registry {
    /// The directory.
    dir: PathBuf,
}

impl Registry {
    /// Opens the registry in `dir`, creating it (mode 0700) if it does not exist.
    ///
    /// The peers that should see each other must use the same directory (for
    /// containers: a shared bind mount); its permissions decide who may join.
    ///
    /// # Errors
    ///
    /// [`RegistryError::Sys`] if the directory cannot be created.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, RegistryError> {
        let dir = dir.into();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| SysError::from_io("mkdir", &e))?;
        Ok(Self { dir })
    }

    /// Opens the registry in the default directory: `$XDG_RUNTIME_DIR/coresident`, or,
    /// without `XDG_RUNTIME_DIR`, `/tmp/coresident-<uid>` (which must then belong to us
    /// and not be writable by others).
    ///
    /// # Errors
    ///
    /// [`RegistryError::InsecureDirectory`] if the `/tmp` fallback is not ours;
    /// [`RegistryError::Sys`] if the directory cannot be created.
    pub fn open_default() -> Result<Self, RegistryError> {
        if let Some(rt) = std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
            return Self::open(PathBuf::from(rt).join("coresident"));
        }
        let uid = rustix::process::getuid().as_raw();
        let reg = Self::open(format!("/tmp/coresident-{uid}"))?;
        let meta =
            std::fs::symlink_metadata(&reg.dir).map_err(|e| SysError::from_io("lstat", &e))?;
        if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o022 != 0 {
            return Err(RegistryError::InsecureDirectory);
        }
        Ok(reg)
    }

    /// The directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The socket path of `id`.
    #[must_use]
    pub fn path_of(&self, id: &PeerId) -> PathBuf {
        self.dir.join(id.to_string())
    }

    /// Registers `id`: returns a listener whose socket is in place under the id's name.
    /// A stale socket under that name (its owner died) is replaced. The socket file is
    /// removed when the listener is dropped.
    ///
    /// # Errors
    ///
    /// [`RegistryError::AlreadyRegistered`] if a live peer holds the name;
    /// [`RegistryError::Sys`] otherwise (`ENAMETOOLONG` if the path does not fit a
    /// `sockaddr_un`).
    pub fn register(&self, id: &PeerId) -> Result<Listener, RegistryError> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        // Relaxed: the counter only makes temporary names unique within this process.
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = self.dir.join(format!(".reg-{}-{n}", std::process::id()));
        let target = self.path_of(id);
        if target.as_os_str().len() >= 108 {
            return Err(SysError::new("bind", Errno::NAMETOOLONG).into());
        }
        // A leftover from a dead process whose pid we now have.
        let _ = std::fs::remove_file(&tmp);
        let listener = Listener::bind(&tmp)?;
        let result = self.move_into_place(&tmp, &target);
        match result {
            Ok(()) => Ok(listener.rename_to(target)),
            // Dropping `listener` removes the temporary socket.
            Err(e) => Err(e),
        }
    }

    /// Renames the listening socket at `tmp` to `target`, never over a live peer.
    fn move_into_place(&self, tmp: &Path, target: &Path) -> Result<(), RegistryError> {
        // A few rounds: each failed round found a stale socket and removed it, and only
        // another registration racing us can make one more round necessary.
        for _ in 0..4 {
            match rustix::fs::renameat_with(
                rustix::fs::CWD,
                tmp,
                rustix::fs::CWD,
                target,
                rustix::fs::RenameFlags::NOREPLACE,
            ) {
                Ok(()) => return Ok(()),
                Err(Errno::EXIST) => {
                    if live_or_remove(target)? {
                        return Err(RegistryError::AlreadyRegistered);
                    }
                    if socket_ident(target).is_none() && target.exists() {
                        // Not a socket: a file we must not remove.
                        return Err(SysError::new("rename", Errno::EXIST).into());
                    }
                }
                Err(e) => return Err(SysError::new("renameat2(RENAME_NOREPLACE)", e).into()),
            }
        }
        Err(RegistryError::AlreadyRegistered)
    }

    /// Whether a live peer is registered under `id` (a stale socket is removed).
    ///
    /// # Errors
    ///
    /// [`RegistryError::Sys`] if the probe fails.
    pub fn is_live(&self, id: &PeerId) -> Result<bool, RegistryError> {
        Ok(live_or_remove(&self.path_of(id))?)
    }

    /// Lists the live peers, sorted, removing stale sockets on the way. Files whose
    /// name is not a canonical peer id, dot-files and non-sockets are ignored (and left
    /// alone).
    ///
    /// # Errors
    ///
    /// [`RegistryError::Sys`] if the directory cannot be read.
    pub fn scan(&self) -> Result<Vec<PeerId>, RegistryError> {
        let mut live = Vec::new();
        let entries = std::fs::read_dir(&self.dir).map_err(|e| SysError::from_io("opendir", &e))?;
        for entry in entries {
            let entry = entry.map_err(|e| SysError::from_io("readdir", &e))?;
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(PeerId::parse_canonical) else {
                continue;
            };
            // A probe error for one entry (e.g. EACCES) does not hide the others.
            if let Ok(true) = live_or_remove(&entry.path()) {
                live.push(id);
            }
        }
        live.sort();
        Ok(live)
    }

    /// Connects to the peer registered as `id` and offers it a channel
    /// (`cfg.peer_id` is set to `id`).
    ///
    /// # Errors
    ///
    /// As [`crate::connect`].
    pub fn connect(&self, id: &PeerId, cfg: &OfferConfig) -> Result<Endpoint, HandshakeError> {
        let mut cfg = cfg.clone();
        cfg.peer_id = Some(id.clone());
        connect(&self.path_of(id), &cfg)
    }

    /// Starts watching the registry. The watcher starts out knowing the current live
    /// peers ([`Watcher::peers`]) and reports changes from then on.
    ///
    /// # Errors
    ///
    /// [`RegistryError::Sys`] if the first scan fails. If inotify is unavailable, the
    /// watcher falls back to periodic rescans.
    pub fn watch(&self) -> Result<Watcher, RegistryError> {
        let inotify = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)
            .ok()
            .filter(|fd| {
                inotify::add_watch(
                    fd,
                    &self.dir,
                    inotify::WatchFlags::CREATE
                        | inotify::WatchFlags::DELETE
                        | inotify::WatchFlags::MOVED_TO
                        | inotify::WatchFlags::MOVED_FROM
                        | inotify::WatchFlags::ONLYDIR,
                )
                .is_ok()
            });
        let known = self.scan()?.into_iter().collect();
        Ok(Watcher {
            registry: self.clone(),
            inotify,
            known,
            rescan_interval: DEFAULT_RESCAN_INTERVAL,
        })
    }
}

/// Reports peers joining and leaving a [`Registry`].
#[derive(Debug)]
pub struct Watcher {
    /// The registry watched.
    registry: Registry,
    /// The inotify instance watching the directory, if inotify is available.
    inotify: Option<OwnedFd>,
    /// The live peers as of the last scan.
    known: BTreeSet<PeerId>,
    /// The longest time between two rescans.
    rescan_interval: Duration,
}

impl Watcher {
    /// The live peers as of the last scan.
    pub fn peers(&self) -> impl Iterator<Item = &PeerId> {
        self.known.iter()
    }

    /// Whether changes are noticed through inotify (else only by periodic rescans).
    #[must_use]
    pub fn uses_inotify(&self) -> bool {
        self.inotify.is_some()
    }

    /// Sets the longest time between two rescans (default
    /// [`DEFAULT_RESCAN_INTERVAL`]); it bounds how late a peer that died without
    /// removing its socket is reported.
    pub fn set_rescan_interval(&mut self, interval: Duration) {
        self.rescan_interval = interval.max(Duration::from_millis(1));
    }

    /// Waits until peers join or leave, or `timeout` passes (`None`: no timeout), and
    /// returns the changes (empty on timeout).
    ///
    /// # Errors
    ///
    /// [`RegistryError::Sys`] if a scan or the inotify wait fails.
    pub fn next_events(
        &mut self,
        timeout: Option<Duration>,
    ) -> Result<Vec<RegistryEvent>, RegistryError> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        loop {
            let events = self.rescan()?;
            if !events.is_empty() {
                return Ok(events);
            }
            let now = Instant::now();
            let mut wait = self.rescan_interval;
            if let Some(d) = deadline {
                if now >= d {
                    return Ok(events);
                }
                wait = wait.min(d - now);
            }
            self.wait_for_change(wait)?;
        }
    }

    /// Waits up to `wait` for an inotify event (or just sleeps without inotify), then
    /// drains the events: their content does not matter, a rescan follows.
    fn wait_for_change(&self, wait: Duration) -> Result<(), RegistryError> {
        let Some(fd) = &self.inotify else {
            std::thread::sleep(wait);
            return Ok(());
        };
        let ts = rustix::event::Timespec {
            tv_sec: i64::try_from(wait.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(wait.subsec_nanos()),
        };
        let mut fds = [PollFd::new(fd, PollFlags::IN)];
        match rustix::event::poll(&mut fds, Some(&ts)) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => return Err(SysError::new("poll(inotify)", e).into()),
        }
        let mut buf = [0u8; 4096];
        loop {
            match rustix::io::read(fd, &mut buf) {
                Ok(0) | Err(Errno::AGAIN) => return Ok(()),
                Ok(_) | Err(Errno::INTR) => {}
                Err(e) => return Err(SysError::new("read(inotify)", e).into()),
            }
        }
    }

    /// Rescans and returns the difference to the last scan.
    fn rescan(&mut self) -> Result<Vec<RegistryEvent>, RegistryError> {
        let now: BTreeSet<PeerId> = self.registry.scan()?.into_iter().collect();
        let mut events: Vec<RegistryEvent> = self
            .known
            .difference(&now)
            .cloned()
            .map(RegistryEvent::Left)
            .collect();
        events.extend(
            now.difference(&self.known)
                .cloned()
                .map(RegistryEvent::Joined),
        );
        self.known = now;
        Ok(events)
    }
}
