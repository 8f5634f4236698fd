//! The library's log: `tracing` events, written only when the user asks.
//!
//! `CORESIDENT_LOG=PATH` appends one line per event to `PATH` (created 0600);
//! `CORESIDENT_LOG=stderr` writes them to the program's stderr. Without it nothing is
//! written anywhere: the host program's output is never touched. `CORESIDENT_LOG_LEVEL`
//! (`error`, `warn`, `info` (default), `debug`, `trace`) sets the detail.
//!
//! Each event is formatted into a buffer and written with one raw `write(2)` on an
//! `O_APPEND` descriptor: no lock is taken, so a forked child whose parent was logging
//! at the fork cannot deadlock on the log, and lines of several processes sharing the
//! file do not interleave.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use rustix::fs::{Mode, OFlags};

/// A writer that writes each buffer with one raw `write` on a shared descriptor.
#[derive(Clone, Debug)]
struct RawWriter(Arc<OwnedFd>);

impl io::Write for RawWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // The formatter hands over one whole line: prefix it with the pid (several
        // processes share a log) and write it at once.
        let mut line = format!("pid {} ", std::process::id()).into_bytes();
        line.extend_from_slice(buf);
        rustix::io::write(self.0.as_fd(), &line).map_err(io::Error::from)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for RawWriter {
    type Writer = Self;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
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
    let level = match std::env::var("CORESIDENT_LOG_LEVEL")
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
        .as_str()
    {
        "error" => tracing::Level::ERROR,
        "warn" => tracing::Level::WARN,
        "debug" => tracing::Level::DEBUG,
        "trace" => tracing::Level::TRACE,
        _ => tracing::Level::INFO,
    };
    let subscriber = tracing_subscriber::fmt()
        .with_writer(RawWriter(Arc::new(fd)))
        .with_max_level(level)
        .with_target(false)
        .with_thread_ids(true)
        .finish();
    let _ = tracing::subscriber::set_global_default(subscriber);
    tracing::info!(target: "coresident_preload", pid = std::process::id(),
        version = env!("CARGO_PKG_VERSION"), "loaded");
}
