//! The library's log: `tracing` events (its own and `coresident_net`'s), written only
//! when the user asks.
//!
//! `CORESIDENT_LOG=PATH` appends one line per event to `PATH` (created 0600);
//! `CORESIDENT_LOG=stderr` writes them to the program's stderr. Without it nothing is
//! written anywhere: the host program's output is never touched. `CORESIDENT_LOG_LEVEL`
//! (`error`, `warn`, `info` (default), `debug`, `trace`) sets the detail.
//!
//! The subscriber is this module's, not `tracing-subscriber`'s: it uses no thread-local
//! and asks nothing of the current thread (the C library's exit path calls `close` in
//! threads whose thread-locals are gone, where those would panic). Each event is
//! formatted into a buffer and written with one raw `write(2)` on an `O_APPEND`
//! descriptor: no lock is taken, so a forked child whose parent was logging at the fork
//! cannot deadlock on the log, and lines of several processes sharing the file do not
//! interleave.

use core::fmt::{self, Write as _};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};

use rustix::fs::{Mode, OFlags};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// The log's descriptor (-1: no log), for the panic hook.
static LOG_FD: AtomicI32 = AtomicI32::new(-1);

/// Writes `msg` to the log with one raw `write`, if there is a log. Never panics, never
/// allocates (the panic hook uses it).
pub(crate) fn raw_line(msg: &[u8]) {
    // Relaxed: set once at load time, before any hook runs on another thread.
    let fd = LOG_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: `fd` is the log's descriptor, open for the life of the process.
        let b = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let _ = rustix::io::write(b, msg);
    }
}

/// One line per event, written raw (see the module docs).
#[derive(Debug)]
struct RawLog {
    fd: OwnedFd,
    max: Level,
}

/// Formats an event's fields: the message first, then `name=value`.
struct Fields<'a>(&'a mut String);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, " {value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            let _ = write!(self.0, " {value}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
}

impl Subscriber for RawLog {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        *m.level() <= self.max
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, e: &Event<'_>) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let mut line = String::with_capacity(256);
        let _ = write!(
            line,
            "{}.{:06} pid {} {:>5} {}:",
            now.as_secs(),
            now.subsec_micros(),
            std::process::id(),
            e.metadata().level(),
            e.metadata().target(),
        );
        e.record(&mut Fields(&mut line));
        line.push('\n');
        let _ = rustix::io::write(self.fd.as_fd(), line.as_bytes());
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

/// `fd` moved to a high descriptor number (below the soft limit), or left where it is.
pub(crate) fn high(fd: OwnedFd) -> OwnedFd {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(1024)
        .min(1 << 20);
    let want = i32::try_from(limit.saturating_sub(64).max(256)).unwrap_or(256);
    match rustix::io::fcntl_dupfd_cloexec(&fd, want) {
        Ok(moved) => moved,
        Err(_) => fd,
    }
}

/// Installs the log if the user asked for one.
pub(crate) fn init() {
    let Some(target) = std::env::var_os("CORESIDENT_LOG").filter(|v| !v.is_empty()) else {
        return;
    };
    let fd = if target == "stderr" {
        match rustix::io::fcntl_dupfd_cloexec(rustix::stdio::stderr(), 3) {
            Ok(fd) => fd,
            Err(_) => return,
        }
    } else {
        match rustix::fs::open(
            std::path::Path::new(&target),
            OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        ) {
            Ok(fd) => fd,
            Err(_) => return,
        }
    };
    let max = match std::env::var("CORESIDENT_LOG_LEVEL")
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
        .as_str()
    {
        "error" => Level::ERROR,
        "warn" => Level::WARN,
        "debug" => Level::DEBUG,
        "trace" => Level::TRACE,
        _ => Level::INFO,
    };
    // Out of the way of the program's own descriptor numbers: programs `dup2` onto low
    // numbers (a socket onto 3 before an exec, say), which would close our log there
    // and send our lines into their socket.
    let fd = high(fd);
    LOG_FD.store(fd.as_raw_fd(), Ordering::Relaxed);
    if tracing::subscriber::set_global_default(RawLog { fd, max }).is_ok() {
        tracing::info!(target: "coresident_preload", version = env!("CARGO_PKG_VERSION"), "loaded");
    } else {
        LOG_FD.store(-1, Ordering::Relaxed);
    }
}
