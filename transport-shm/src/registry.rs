//! Residency detection for processes and containers on one host: a directory of
//! listening sockets, one per peer id.
//!
//! ```text
//! /run/coresident/                    (as root), $XDG_RUNTIME_DIR/coresident (a user),
//!   10.0.0.1                          or any verified directory the peers share (a
//!   02-00-00-00-00-01                 bind mount into containers): 0700, ours
//!   db-primary                        one listening socket per peer id, mode 0600;
//!   .reg-5f1c0e...                    the file name is the id (see crate::peer_id);
//!                                     a registration in progress (ignored by scans)
//! ```
//!
//! * The directory is a [`SecureDir`]: opened once without following a symlink,
//!   verified (owner, mode) at open and before every operation, and reached through
//!   its descriptor, never through its path again. A directory others may write, such
//!   as a mode-`1777` one where another user could register `db-primary` first, is
//!   refused.
//! * [`Registry::register`] binds under an unpredictable temporary dot-name, sets the
//!   socket's mode, and renames it into place with `RENAME_NOREPLACE`: a socket under a
//!   peer's name is always already listening, so a scan never mistakes a peer that is
//!   still starting for a dead one, and two peers cannot both take one name.
//! * [`Registry::scan`] lists the sockets that accept a connection. A socket that
//!   refuses (`ECONNREFUSED`: its owner died without removing it) is stale and is
//!   removed, after checking it is still the same inode.
//! * [`Registry::connect`] offers a channel to a registered peer; the endpoint is ready
//!   for `Channel::new` (the rings are laid out before the offer).
//! * [`Registry::watch`] reports peers joining and leaving: inotify on the directory
//!   triggers a rescan, and a periodic rescan catches peers that died without a trace
//!   (and serves alone where inotify is unavailable). A peer that restarts under the
//!   same name between two rescans is reported as leaving, then joining: each socket
//!   is known by its identity (device, inode, change time), not only its name.
//!
//! A liveness probe is a connection that closes without sending a byte;
//! [`Listener::accept`] skips such connections.
//!
//! Peers that already share a channel learn of each other's death faster, from the
//! rendezvous socket (see [`crate::PeerLink`]).

use core::fmt;
use core::time::Duration;
use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use rustix::event::{PollFd, PollFlags};
use rustix::fs::inotify;
use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

use crate::cred::CredPolicy;
use crate::dir::{random_name, DirError, EntryIdent, SecureDir};
use crate::endpoint::Endpoint;
use crate::error::{SysContext, SysError};
use crate::listener::Listener;
use crate::offer::{OfferConfig, PreparedOffer};
use crate::peer_id::PeerId;
use crate::rendezvous::HandshakeError;

/// The default interval between periodic rescans of a [`Watcher`].
pub const DEFAULT_RESCAN_INTERVAL: Duration = Duration::from_secs(1);

/// The registry directory for root.
pub const ROOT_REGISTRY_DIR: &str = "/run/coresident";

/// A registry operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegistryError {
    /// A live peer is already registered under this id.
    AlreadyRegistered,
    /// Something that is not a socket holds the id's name (left alone).
    NameTaken,
    /// The directory failed its checks (see [`SecureDir`]).
    Dir(DirError),
    /// A system call failed.
    Sys(SysError),
}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AlreadyRegistered => {
                f.write_str("registry: a live peer is already registered under this id")
            }
            Self::NameTaken => {
                f.write_str("registry: a file that is not a socket holds this id's name")
            }
            Self::Dir(e) => write!(f, "registry: {e}"),
            Self::Sys(e) => write!(f, "registry: {e}"),
        }
    }
}

impl std::error::Error for RegistryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Dir(e) => Some(e),
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

impl From<DirError> for RegistryError {
    fn from(e: DirError) -> Self {
        match e {
            DirError::Sys(s) => Self::Sys(s),
            e => Self::Dir(e),
        }
    }
}

/// A peer joined or left the registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistryEvent {
    /// A peer registered (its socket appeared and accepts connections).
    Joined(PeerId),
    /// A peer left (its socket disappeared, went stale, or was replaced by a new
    /// registration under the same name, which is then reported as `Joined`).
    Left(PeerId),
}

/// What a liveness probe found.
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

/// The default registry directory: [`ROOT_REGISTRY_DIR`] as root;
/// `$XDG_RUNTIME_DIR/coresident` for a user; without `XDG_RUNTIME_DIR`,
/// `/tmp/coresident-<uid>` (which must then be ours and `0700`: checked at open).
#[must_use]
pub fn default_dir() -> PathBuf {
    let uid = rustix::process::geteuid().as_raw();
    if uid == 0 {
        return PathBuf::from(ROOT_REGISTRY_DIR);
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        Some(rt) => PathBuf::from(rt).join("coresident"),
        None => PathBuf::from(format!("/tmp/coresident-{uid}")),
    }
}

/// A directory of peer sockets.
///
/// Cloning shares the directory descriptor.
#[derive(Clone, Debug)]
pub struct Registry {
    /// The directory, verified.
    dir: Arc<SecureDir>,
}

impl Registry {
    /// Opens the registry in `dir`, creating it (mode `0700`) if it does not exist,
    /// with the default [`CredPolicy`] (the same user).
    ///
    /// The peers that should see each other must use the same directory (for
    /// containers: a shared bind mount, with [`open_with`](Self::open_with) and an
    /// allow-list).
    ///
    /// # Errors
    ///
    /// [`RegistryError::Dir`] if the directory fails its checks (see [`SecureDir`]);
    /// [`RegistryError::Sys`] if it cannot be created or opened.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, RegistryError> {
        Self::open_with(dir, &CredPolicy::default())
    }

    /// As [`open`](Self::open), with `policy` deciding who may own and share the
    /// directory and whom [`connect`](Self::connect) offers to.
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open).
    pub fn open_with(dir: impl Into<PathBuf>, policy: &CredPolicy) -> Result<Self, RegistryError> {
        Ok(Self {
            dir: Arc::new(SecureDir::create(dir, policy)?),
        })
    }

    /// Opens the registry in the [`default_dir`].
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open) (for instance [`DirError::Owner`] if another user made
    /// `/tmp/coresident-<uid>` first).
    pub fn open_default() -> Result<Self, RegistryError> {
        Self::open(default_dir())
    }

    /// The directory's path.
    #[must_use]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The verified directory.
    #[must_use]
    pub fn secure_dir(&self) -> &Arc<SecureDir> {
        &self.dir
    }

    /// The credential policy (the directory's, and [`connect`](Self::connect)'s).
    #[must_use]
    pub fn policy(&self) -> &CredPolicy {
        self.dir.policy()
    }

    /// The socket path of `id` (for people: the directory's path joined with the id).
    #[must_use]
    pub fn path_of(&self, id: &PeerId) -> PathBuf {
        self.dir.display_path(&id.to_string())
    }

    /// Removes the socket `name` if nobody listens on it. Returns whether a live
    /// socket is there.
    ///
    /// Checks that the file is still the same socket before unlinking, so a peer that
    /// replaced the stale socket in the meantime keeps its own (a window of a few
    /// instructions remains between that check and `unlink`; registrations use
    /// `RENAME_NOREPLACE` after this, so the worst case is one spurious
    /// re-registration).
    fn live_or_remove(&self, name: &str) -> Result<bool, SysError> {
        let Some(before) = self.dir.socket_ident(name) else {
            return Ok(false);
        };
        match probe(&self.dir.socket_path(name))? {
            Probe::Live => Ok(true),
            Probe::Gone => Ok(false),
            Probe::Stale => {
                if self.dir.socket_ident(name) == Some(before) {
                    match self.dir.unlink(name) {
                        Ok(()) | Err(Errno::NOENT) => {}
                        Err(e) => return Err(SysError::new("unlink", e)),
                    }
                }
                Ok(false)
            }
        }
    }

    /// Registers `id`: returns a listener whose socket is in place under the id's name.
    /// A stale socket under that name (its owner died) is replaced. The socket file is
    /// removed when the listener is dropped. Serve it with [`Listener::accept`] or an
    /// [`Acceptor`](crate::Acceptor), with the registry's [`policy`](Self::policy) in
    /// the [`AcceptConfig`](crate::AcceptConfig) (the default policy is the same).
    ///
    /// # Errors
    ///
    /// [`RegistryError::AlreadyRegistered`] if a live peer holds the name;
    /// [`RegistryError::NameTaken`] if a file that is not a socket does;
    /// [`RegistryError::Dir`] if the directory fails its checks now;
    /// [`RegistryError::Sys`] otherwise.
    pub fn register(&self, id: &PeerId) -> Result<Listener, RegistryError> {
        let tmp = random_name(".reg-")?;
        let name = id.to_string();
        let listener = Listener::bind_in(&self.dir, &tmp)?;
        // A few rounds: each failed round found a stale socket and removed it, and only
        // another registration racing us can make one more round necessary.
        for _ in 0..4 {
            match self.dir.rename_noreplace(&tmp, &name) {
                Ok(()) => return Ok(listener.renamed(&name)),
                Err(Errno::EXIST) => {
                    if self.live_or_remove(&name)? {
                        return Err(RegistryError::AlreadyRegistered);
                    }
                    if self.dir.socket_ident(&name).is_none() && self.dir.exists(&name) {
                        return Err(RegistryError::NameTaken);
                    }
                }
                Err(e) => return Err(SysError::new("renameat2(RENAME_NOREPLACE)", e).into()),
            }
        }
        // Dropping `listener` removes the temporary socket.
        Err(RegistryError::AlreadyRegistered)
    }

    /// Whether a live peer is registered under `id` (a stale socket is removed).
    ///
    /// # Errors
    ///
    /// [`RegistryError::Sys`] if the probe fails; [`RegistryError::Dir`] if the
    /// directory fails its checks.
    pub fn is_live(&self, id: &PeerId) -> Result<bool, RegistryError> {
        self.dir.verify()?;
        Ok(self.live_or_remove(&id.to_string())?)
    }

    /// The live peers with the identity of their sockets.
    fn scan_idents(&self) -> Result<BTreeMap<PeerId, EntryIdent>, RegistryError> {
        self.dir.verify()?;
        let mut live = BTreeMap::new();
        for name in self.dir.names()? {
            let Some(id) = PeerId::parse_canonical(&name) else {
                continue;
            };
            let Some(ident) = self.dir.socket_ident(&name) else {
                continue;
            };
            // A probe error for one entry (e.g. EACCES) does not hide the others.
            if let Ok(true) = self.live_or_remove(&name) {
                live.insert(id, ident);
            }
        }
        Ok(live)
    }

    /// Lists the live peers, sorted, removing stale sockets on the way. Files whose
    /// name is not a canonical peer id, dot-files and non-sockets are ignored (and left
    /// alone).
    ///
    /// # Errors
    ///
    /// [`RegistryError::Sys`] if the directory cannot be read; [`RegistryError::Dir`]
    /// if it fails its checks.
    pub fn scan(&self) -> Result<Vec<PeerId>, RegistryError> {
        Ok(self.scan_idents()?.into_keys().collect())
    }

    /// Connects to the peer registered as `id` and offers it a channel, ready for
    /// `Channel::new` (`cfg.peer_id` is set to `id` and `cfg.policy` to the
    /// registry's policy).
    ///
    /// # Errors
    ///
    /// [`HandshakeError::NoSuchSocket`] if nobody is registered as `id`,
    /// [`HandshakeError::NotListening`] for a stale socket (its owner died), and the
    /// rest as [`crate::connect`]; [`HandshakeError::Dir`] if the directory fails its
    /// checks now.
    pub fn connect(&self, id: &PeerId, cfg: &OfferConfig) -> Result<Endpoint, HandshakeError> {
        self.dir.verify().map_err(HandshakeError::Dir)?;
        let mut cfg = cfg.clone();
        cfg.peer_id = Some(id.clone());
        cfg.policy = self.dir.policy().clone();
        PreparedOffer::new(&cfg)?.connect(&self.dir.socket_path(&id.to_string()))
    }

    /// Starts watching the registry. The watcher starts out knowing the current live
    /// peers ([`Watcher::peers`]) and reports changes from then on.
    ///
    /// # Errors
    ///
    /// As [`scan`](Self::scan) for the first scan. If inotify is unavailable, the
    /// watcher falls back to periodic rescans.
    pub fn watch(&self) -> Result<Watcher, RegistryError> {
        let inotify = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)
            .ok()
            .filter(|fd| {
                inotify::add_watch(
                    fd,
                    self.dir.own_path(),
                    inotify::WatchFlags::CREATE
                        | inotify::WatchFlags::DELETE
                        | inotify::WatchFlags::MOVED_TO
                        | inotify::WatchFlags::MOVED_FROM
                        | inotify::WatchFlags::ATTRIB
                        | inotify::WatchFlags::ONLYDIR,
                )
                .is_ok()
            });
        let known = self.scan_idents()?;
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
    /// The live peers as of the last scan, with their sockets' identities.
    known: BTreeMap<PeerId, EntryIdent>,
    /// The longest time between two rescans.
    rescan_interval: Duration,
}

impl Watcher {
    /// The live peers as of the last scan.
    pub fn peers(&self) -> impl Iterator<Item = &PeerId> {
        self.known.keys()
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
    /// returns the changes (empty on timeout): every `Left` of a rescan before its
    /// `Joined`s, so a restart under the same name reads `Left(id)`, `Joined(id)`.
    ///
    /// # Errors
    ///
    /// [`RegistryError::Sys`] if a scan or the inotify wait fails;
    /// [`RegistryError::Dir`] if the directory fails its checks.
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
        let ts = crate::rendezvous::timespec(wait);
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
        let now = self.registry.scan_idents()?;
        let mut events: Vec<RegistryEvent> = self
            .known
            .iter()
            .filter(|(id, ident)| now.get(*id) != Some(*ident))
            .map(|(id, _)| RegistryEvent::Left(id.clone()))
            .collect();
        events.extend(
            now.iter()
                .filter(|(id, ident)| self.known.get(*id) != Some(*ident))
                .map(|(id, _)| RegistryEvent::Joined(id.clone())),
        );
        self.known = now;
        Ok(events)
    }
}
