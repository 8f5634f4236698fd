//! `AsyncRead`/`AsyncWrite` through `tokio::io::unix::AsyncFd` (feature `tokio`).
//!
//! The stream's descriptor is an epoll set that is readable whenever the stream may
//! make progress in either direction, so both directions wait for read-readiness.

use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

use crate::{Stream, StreamStats};

/// A [`Stream`] for tokio: `AsyncRead` and `AsyncWrite`.
///
/// Not for use in a forked child of the process that made it (tokio runtimes do not
/// survive a fork).
#[derive(Debug)]
pub struct AsyncStream {
    fd: AsyncFd<Stream>,
}

impl AsyncStream {
    /// Wraps `stream` (made non-blocking); must be called inside a tokio runtime.
    ///
    /// # Errors
    ///
    /// The descriptor could not join the runtime's reactor.
    pub fn new(stream: Stream) -> io::Result<Self> {
        stream.set_nonblocking(true)?;
        // SAFETY:
        // - `stream.as_raw_fd()` is the stream's epoll descriptor, open for as long as
        //   the stream (owned by the `AsyncFd`) lives;
        // - it is the same descriptor on every call: the stream replaces it only in a
        //   forked child, and a tokio runtime does not survive a fork (documented on
        //   `AsyncStream`).
        let fd = unsafe { AsyncFd::register_with_interest(stream, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(Self { fd })
    }

    /// The stream.
    pub fn get_ref(&self) -> &Stream {
        self.fd.get_ref()
    }

    /// The counters.
    pub fn stats(&self) -> StreamStats {
        self.fd.get_ref().stats()
    }

    fn poll_op<T>(
        &self,
        cx: &mut Context<'_>,
        mut op: impl FnMut(&Stream) -> io::Result<T>,
    ) -> Poll<io::Result<T>> {
        loop {
            // Try first: readiness is only needed once the stream said WouldBlock.
            match op(self.fd.get_ref()) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                other => return Poll::Ready(other),
            }
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            guard.clear_ready();
        }
    }
}

impl AsyncRead for AsyncStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let dst = buf.initialize_unfilled();
        let n = ready!(self.poll_op(cx, |mut s| s.read(dst)))?;
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for AsyncStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_op(cx, |mut s| s.write(buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_op(cx, |mut s| s.flush())
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_op(cx, |s| s.shutdown(std::net::Shutdown::Write))
    }
}
