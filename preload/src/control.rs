//! The control socket: how `coresident status` and `coresident withdraw` reach the
//! processes that run the library.
//!
//! # Protocol
//!
//! A process serves `<registry>/ctl/<pid>` (a Unix stream socket) from its first
//! accelerated connection on, on a thread of its own that blocks every signal. The
//! registry directory is the one the connections' rendezvous uses
//! (`$CORESIDENT_REGISTRY`, else `$XDG_RUNTIME_DIR/coresident`, `/run/coresident` as root,
//! `/tmp/coresident-<uid>`); `ctl/` in it is created 0700 and used only if it is a
//! directory we own that nobody else may enter.
//!
//! A client connects, sends one request line, reads the answer until the server closes:
//!
//! ```text
//! > status
//! < conn id=3 fd=7 local=127.0.0.1:40112 peer=127.0.0.1:6379 path=ring ring_tx=512 ring_rx=2048 tcp_tx=0 tcp_rx=0 switches=0
//! < end pid=4242 conns=1 panics=0
//! > withdraw
//! < withdrawn 1
//! ```
//!
//! Before it reads a byte, the server checks the client's `SO_PEERCRED`: the same uid as
//! ours, or root. Anyone else is disconnected. A request line is at most 256 bytes; the
//! whole exchange has a 2 s deadline. Unknown requests get `error unknown request`.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

use crate::conn::Reason;

/// Whether this process's control thread runs.
static STARTED: AtomicBool = AtomicBool::new(false);
/// The control socket's descriptor (-1: none), for closing it in a forked child.
static LISTEN_FD: AtomicI32 = AtomicI32::new(-1);

/// The registry directory: `$CORESIDENT_REGISTRY`, else the user's runtime directory.
pub(crate) fn registry_dir() -> PathBuf {
    if let Some(d) = crate::state::config().registry.clone() {
        return d;
    }
    let euid = rustix::process::geteuid().as_raw();
    if euid == 0 {
        return PathBuf::from("/run/coresident");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(x) if !x.is_empty() => PathBuf::from(x).join("coresident"),
        _ => PathBuf::from(format!("/tmp/coresident-{euid}")),
    }
}

/// Why a directory is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub(crate) enum DirError {
    /// It could not be created or examined.
    Io,
    /// Not a directory (a symlink, a file...).
    NotADirectory,
    /// Owned by another user.
    NotOurs,
    /// Group or others may enter or write it.
    OpenToOthers,
}

impl core::fmt::Display for DirError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::Io => "cannot be created or examined",
            Self::NotADirectory => "is not a directory",
            Self::NotOurs => "belongs to another user",
            Self::OpenToOthers => "is open to group or others (must be 0700)",
        })
    }
}

/// Creates `dir` (mode 0700) if missing, then checks it is a directory of ours that
/// nobody else may enter.
pub(crate) fn private_dir(dir: &Path) -> Result<(), DirError> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(_) => return Err(DirError::Io),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|_| DirError::Io)?;
    if !meta.is_dir() {
        return Err(DirError::NotADirectory);
    }
    if meta.uid() != rustix::process::geteuid().as_raw() {
        return Err(DirError::NotOurs);
    }
    if meta.mode() & 0o077 != 0 {
        return Err(DirError::OpenToOthers);
    }
    Ok(())
}

/// The control socket path of `pid` in `registry`.
pub(crate) fn socket_path(registry: &Path, pid: u32) -> PathBuf {
    registry.join("ctl").join(pid.to_string())
}

/// Starts the control thread if it is not running (called at each new accelerated
/// connection; cheap after the first).
pub(crate) fn ensure_started() {
    // Relaxed: a one-way flag; the compare-exchange picks one starter.
    if STARTED.load(Ordering::Relaxed)
        || STARTED
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
    {
        return;
    }
    if crate::state::fault("control") {
        tracing::warn!(target: "coresident_preload", "fault injected: no control socket");
        return;
    }
    let registry = registry_dir();
    for d in [registry.clone(), registry.join("ctl")] {
        if let Err(e) = private_dir(&d) {
            tracing::warn!(target: "coresident_preload", dir = %d.display(), error = %e,
                "no control socket: `coresident status` will not list this process");
            return;
        }
    }
    let path = socket_path(&registry, std::process::id());
    // A socket under our pid is a leftover of an earlier image of this process (exec)
    // or of a dead process whose pid we got: ours to replace.
    let _ = std::fs::remove_file(&path);
    let listener = match UnixListener::bind(&path) {
        // Out of the way of the program's own descriptor numbers (see `log::high`).
        Ok(l) => UnixListener::from(crate::log::high(OwnedFd::from(l))),
        Err(e) => {
            tracing::warn!(target: "coresident_preload", path = %path.display(), error = %e,
                "no control socket");
            return;
        }
    };
    LISTEN_FD.store(
        std::os::fd::AsRawFd::as_raw_fd(&listener),
        Ordering::Relaxed,
    );
    let spawned = std::thread::Builder::new()
        .name("coresident-ctl".into())
        .spawn(move || serve(listener));
    if let Err(e) = spawned {
        tracing::warn!(target: "coresident_preload", error = %e, "no control thread");
        LISTEN_FD.store(-1, Ordering::Relaxed);
    } else {
        tracing::debug!(target: "coresident_preload", path = %path.display(), "control socket");
    }
}

/// The control thread: blocks every signal (the application's handlers must run on
/// its own threads), then serves one client at a time.
fn serve(listener: UnixListener) {
    let _inside = crate::guard::Inside::enter();
    // SAFETY: a full, initialised signal set; changing this thread's mask only.
    unsafe {
        let mut all: libc::sigset_t = core::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, core::ptr::null_mut());
    }
    for client in listener.incoming() {
        let Ok(client) = client else { continue };
        crate::guard::quietly(|| answer(client));
    }
}

/// Serves one client.
fn answer(client: UnixStream) {
    let Ok(cred) = rustix::net::sockopt::socket_peercred(client.as_fd()) else {
        return;
    };
    let ours = rustix::process::geteuid();
    if cred.uid != ours && !cred.uid.is_root() {
        tracing::warn!(target: "coresident_preload", uid = cred.uid.as_raw(),
            "control request from another user refused");
        return;
    }
    let _ = client.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = client.set_write_timeout(Some(Duration::from_secs(2)));
    let mut line = String::new();
    let mut reader = BufReader::new(std::io::Read::take(&client, 256));
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let reply = respond(line.trim());
    let _ = (&client).write_all(reply.as_bytes());
}

/// The answer to one request line.
pub(crate) fn respond(req: &str) -> String {
    use core::fmt::Write as _;
    let mut out = String::new();
    match req {
        "status" => {
            let conns = crate::fdops::accelerated();
            for (fd, _, c) in &conns {
                // One broken connection must not hide the others: its line says so,
                // the panic is counted (and poisons new connections, as at every
                // barrier), and the walk goes on.
                let stats =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.imp.stats()));
                let Ok(s) = stats else {
                    crate::guard::caught_panic();
                    let _ = writeln!(out, "conn id={} fd={fd} stats=unavailable", c.id);
                    continue;
                };
                let path = s.path.map_or("?".into(), |p| p.to_string());
                let addr =
                    |a: Option<core::net::SocketAddr>| a.map_or("-".into(), |a| a.to_string());
                let age = c.since.elapsed().map_or(0, |d| d.as_secs());
                let peer_pid = c.peer_pid.map_or("-".into(), |p| p.to_string());
                let _ = writeln!(
                    out,
                    "conn id={} fd={fd} local={} peer={} peer_pid={peer_pid} age_s={age} path={path} ring_tx={} ring_rx={} tcp_tx={} tcp_rx={} switches={}",
                    c.id,
                    addr(c.local),
                    addr(c.peer),
                    s.ring_tx,
                    s.ring_rx,
                    s.tcp_tx,
                    s.tcp_rx,
                    s.switches,
                );
            }
            let _ = writeln!(
                out,
                "end pid={} conns={} panics={}",
                std::process::id(),
                conns.len(),
                crate::guard::panics()
            );
        }
        "withdraw" => {
            let n = crate::fdops::withdraw_all(Reason::Operator, |_| true);
            let _ = writeln!(out, "withdrawn {n}");
        }
        _ => out.push_str("error unknown request\n"),
    }
    out
}

/// In a forked child (lock-free): the parent's control thread is not here; close the
/// inherited socket and let the next accelerated connection start our own.
pub(crate) fn after_fork_child() {
    let fd = LISTEN_FD.swap(-1, Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: `fd` is the control socket this process inherited; nothing else in
        // the child uses it (the thread that did is not here).
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    STARTED.store(false, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn private_dir_refuses_open_and_foreign_directories() {
        let base = std::env::temp_dir().join(format!("cr-ctl-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        assert_eq!(private_dir(&base), Ok(()));
        assert_eq!(
            std::fs::metadata(&base).unwrap().permissions().mode() & 0o777,
            0o700
        );
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(private_dir(&base), Err(DirError::OpenToOthers));
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o700)).unwrap();
        let link = base.with_extension("link");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&base, &link).unwrap();
        assert_eq!(private_dir(&link), Err(DirError::NotADirectory));
        if rustix::process::geteuid().is_root() {
            let foreign = base.join("foreign");
            private_dir(&foreign).unwrap();
            std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).unwrap();
            assert_eq!(private_dir(&foreign), Err(DirError::NotOurs));
        }
        std::fs::remove_file(&link).unwrap();
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn unknown_requests_are_answered_as_such() {
        assert_eq!(respond("reboot"), "error unknown request\n");
        assert!(
            respond("status").starts_with("end pid=") || respond("status").contains("conn id=")
        );
    }
}
