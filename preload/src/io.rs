//! The data path of an accelerated socket: `read`/`recv*`/`readv` and
//! `write`/`send*`/`writev`, with TCP's semantics on top of the non-blocking
//! [`Accelerated`] calls.
//!
//! | flag or setting | what the emulation does |
//! |---|---|
//! | `O_NONBLOCK`, `MSG_DONTWAIT` | never wait: `EAGAIN` when nothing can move |
//! | `SO_RCVTIMEO`, `SO_SNDTIMEO` | wait at most that long, then `EAGAIN` (or the partial count) |
//! | `MSG_PEEK` | the bytes stay for the next read |
//! | `MSG_WAITALL` | wait until the buffer is full, the stream ends or an error comes |
//! | `MSG_TRUNC` (receive) | the bytes are read and thrown away, as TCP does |
//! | `MSG_NOSIGNAL` | `EPIPE` without `SIGPIPE`; otherwise a write to a closed peer raises `SIGPIPE` |
//! | `MSG_MORE`, `MSG_EOR`, `MSG_CONFIRM` | hints, ignored |
//! | `MSG_OOB`, `MSG_ZEROCOPY` | the connection falls back to TCP and the call goes to the kernel; if it cannot be handed back yet, `EOPNOTSUPP` |
//! | `MSG_ERRQUEUE` | passed to the kernel (the TCP socket's own error queue) |
//!
//! A blocked call returns early with `EINTR` when a signal handler runs, or with the
//! bytes already moved. Readers are serialised among themselves and writers among
//! themselves (one reader and one writer run at once): one `write`'s bytes are never
//! interleaved with another's.

use core::ffi::c_int;
use std::io::{IoSlice, IoSliceMut};
use std::sync::Arc;

use rustix::io::Errno;

use crate::conn::{Readiness, Reason};
use crate::guard::{fail, Verdict};
use crate::state::{conn_of, lock, Conn, Entry};
use crate::wait::{wait_ready, Deadline};

/// Receive flags the emulation knows.
const RECV_FLAGS_PASS: c_int = libc::MSG_ERRQUEUE;
/// Send flags that make the connection fall back.
const SEND_DECLINE: c_int = libc::MSG_OOB | libc::MSG_ZEROCOPY;

/// Which call the application made (decides `SIGPIPE` and the error convention).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Call {
    /// `read`, `readv`, `write`, `writev`: no flags; `write` always raises `SIGPIPE`.
    Plain,
    /// `recv*`, `send*`: flags apply.
    Socket,
}

/// The result of a data-path call, as the C function returns it.
fn ret(r: Result<usize, Errno>) -> Verdict<isize> {
    match r {
        Ok(n) => Verdict::Done(isize::try_from(n).unwrap_or(isize::MAX)),
        Err(e) => Verdict::Done(fail(e.raw_os_error())),
    }
}

/// Falls back to TCP for a call the ring cannot serve, and hands the socket back to the
/// application if nothing is buffered. `Ok` means the call may go to the kernel now.
///
/// # Errors
///
/// `EOPNOTSUPP`-like: the caller picks; here `Err(())` means "still accelerated".
pub(crate) fn decline(entry: &Arc<Entry>, conn: &Arc<Conn>, call: &'static str) -> Result<(), ()> {
    if let Err(e) = conn.imp.downgrade(Reason::Declined(call)) {
        tracing::warn!(target: "coresident_preload", conn = conn.id, call, error = %e,
            "fallback to TCP for a declined call failed");
        return Err(());
    }
    if crate::fdops::release(entry, conn) {
        tracing::info!(target: "coresident_preload", conn = conn.id, call,
            "connection handed back to the kernel as plain TCP");
        Ok(())
    } else {
        Err(())
    }
}

/// `recv` family on `fd`: `Pass` if `fd` is not accelerated.
///
/// # Safety
///
/// `bufs` must be valid for writes for the duration of the call (the C caller's
/// contract for its buffers).
pub(crate) unsafe fn recv(fd: c_int, bufs: &mut [IoSliceMut<'_>], flags: c_int) -> Verdict<isize> {
    let Some((entry, conn)) = conn_of(fd) else {
        return Verdict::Pass;
    };
    if flags & RECV_FLAGS_PASS != 0 {
        return Verdict::Pass;
    }
    if flags & libc::MSG_OOB != 0 {
        return match decline(&entry, &conn, "MSG_OOB") {
            Ok(()) => Verdict::Pass,
            Err(()) => Verdict::Done(fail(libc::EINVAL)),
        };
    }
    if conn.is_broken() {
        return Verdict::Done(fail(libc::EIO));
    }
    let Some(sock) = entry.sock() else {
        return Verdict::Pass;
    };
    let nonblocking = sock.is_nonblocking() || flags & libc::MSG_DONTWAIT != 0;
    let deadline = if nonblocking {
        Deadline::Now
    } else {
        Deadline::after(sock.rcvtimeo())
    };
    let peek = flags & libc::MSG_PEEK != 0;
    let waitall = flags & libc::MSG_WAITALL != 0 && !peek;
    if flags & libc::MSG_TRUNC != 0 {
        // TCP's MSG_TRUNC: read the bytes and drop them.
        let want: usize = bufs.iter().map(|b| b.len()).sum();
        let mut scratch = vec![0u8; want.min(1 << 20)];
        return ret(recv_loop(
            &conn,
            &mut [IoSliceMut::new(&mut scratch)],
            peek,
            waitall,
            deadline,
        ));
    }
    ret(recv_loop(&conn, bufs, peek, waitall, deadline))
}

/// Receives until something arrives (or everything, with `waitall`).
fn recv_loop(
    conn: &Conn,
    mut bufs: &mut [IoSliceMut<'_>],
    peek: bool,
    waitall: bool,
    deadline: Deadline,
) -> Result<usize, Errno> {
    let want: usize = bufs.iter().map(|b| b.len()).sum();
    if want == 0 {
        return Ok(0);
    }
    let _rx = lock(&conn.rx);
    let mut total = 0usize;
    loop {
        match conn.imp.try_recv(bufs, peek) {
            Ok(0) => return Ok(total),
            Ok(n) => {
                total += n;
                if !waitall || total >= want {
                    return Ok(total);
                }
                IoSliceMut::advance_slices(&mut bufs, n);
            }
            Err(Errno::AGAIN) => {
                // The connection's own blocking receive, if it has one (it spins on the
                // ring without system calls, then sleeps).
                if deadline != Deadline::Now && !peek {
                    if let Some(r) = conn.imp.recv_blocking(bufs, deadline.remaining()) {
                        match r {
                            Ok(0) => return Ok(total),
                            Ok(n) => {
                                total += n;
                                if !waitall || total >= want {
                                    return Ok(total);
                                }
                                IoSliceMut::advance_slices(&mut bufs, n);
                                continue;
                            }
                            Err(Errno::AGAIN) if deadline != Deadline::Never => {
                                if total > 0 {
                                    return Ok(total);
                                }
                                conn.kick();
                                return Err(Errno::AGAIN);
                            }
                            Err(Errno::AGAIN) => continue,
                            Err(e) => return if total > 0 { Ok(total) } else { Err(e) },
                        }
                    }
                }
                match wait_ready(&*conn.imp, &conn.spinner, Readiness::READ, deadline) {
                    Ok(_) => {}
                    Err(e) => {
                        if total > 0 {
                            return Ok(total);
                        }
                        if e == Errno::AGAIN {
                            conn.kick();
                        }
                        return Err(e);
                    }
                }
            }
            Err(e) => {
                return if total > 0 { Ok(total) } else { Err(e) };
            }
        }
    }
}

/// `send` family on `fd`: `Pass` if `fd` is not accelerated.
pub(crate) fn send(fd: c_int, bufs: &[IoSlice<'_>], flags: c_int, call: Call) -> Verdict<isize> {
    let Some((entry, conn)) = conn_of(fd) else {
        return Verdict::Pass;
    };
    if flags & SEND_DECLINE != 0 {
        let what = if flags & libc::MSG_OOB != 0 {
            "MSG_OOB"
        } else {
            "MSG_ZEROCOPY"
        };
        return match decline(&entry, &conn, what) {
            Ok(()) => Verdict::Pass,
            Err(()) => Verdict::Done(fail(libc::EOPNOTSUPP)),
        };
    }
    if conn.is_broken() {
        return Verdict::Done(fail(libc::EIO));
    }
    let Some(sock) = entry.sock() else {
        return Verdict::Pass;
    };
    let nonblocking = sock.is_nonblocking() || flags & libc::MSG_DONTWAIT != 0;
    let deadline = if nonblocking {
        Deadline::Now
    } else {
        Deadline::after(sock.sndtimeo())
    };
    let r = send_loop(&conn, bufs, deadline);
    if r == Err(Errno::PIPE) && (call == Call::Plain || flags & libc::MSG_NOSIGNAL == 0) {
        // What the kernel does for a stream socket whose peer is gone.
        // SAFETY: `raise` is async-signal-safe and takes any signal number.
        unsafe { libc::raise(libc::SIGPIPE) };
    }
    ret(r)
}

/// Sends everything (blocking) or what fits (non-blocking).
pub(crate) fn send_loop(
    conn: &Conn,
    bufs: &[IoSlice<'_>],
    deadline: Deadline,
) -> Result<usize, Errno> {
    let want: usize = bufs.iter().map(|b| b.len()).sum();
    if want == 0 {
        // A zero-length send on a live connection succeeds; on a closed one TCP says EPIPE.
        return conn.imp.try_send(&[]).map(|_| 0);
    }
    let _tx = lock(&conn.tx);
    let mut total = 0usize;
    // After a partial write: the bytes still to send (the caller's slices are shared).
    let mut rest: Vec<IoSlice<'_>> = Vec::new();
    loop {
        let now: &[IoSlice<'_>] = if total == 0 { bufs } else { &rest };
        match conn.imp.try_send(now) {
            Ok(n) => {
                total += n;
                if total >= want {
                    return Ok(total);
                }
                rest = remaining(bufs, total);
                if deadline == Deadline::Now {
                    // Non-blocking: a partial write returns what fitted.
                    return Ok(total);
                }
            }
            Err(Errno::AGAIN) => {
                match wait_ready(&*conn.imp, &conn.spinner, Readiness::WRITE, deadline) {
                    Ok(_) => {}
                    Err(e) => {
                        if total > 0 {
                            return Ok(total);
                        }
                        if e == Errno::AGAIN {
                            conn.kick();
                        }
                        return Err(e);
                    }
                }
            }
            Err(e) => return if total > 0 { Ok(total) } else { Err(e) },
        }
    }
}

/// The bytes of `bufs` after the first `done`.
fn remaining<'a>(bufs: &[IoSlice<'a>], mut done: usize) -> Vec<IoSlice<'a>> {
    let mut out = Vec::with_capacity(bufs.len());
    for b in bufs {
        if done >= b.len() {
            done -= b.len();
            continue;
        }
        let whole: &'a [u8] = slice_of(b);
        out.push(IoSlice::new(&whole[done..]));
        done = 0;
    }
    out
}

/// The bytes of an `IoSlice` with its own lifetime.
fn slice_of<'a>(b: &IoSlice<'a>) -> &'a [u8] {
    // SAFETY: an `IoSlice<'a>` is a valid `&'a [u8]` by construction; std does not expose
    // the lifetime through `Deref`, so rebuild it from its parts.
    unsafe { core::slice::from_raw_parts(b.as_ptr(), b.len()) }
}

/// `sendfile(out_fd, in_fd, offset, count)` where either side may be accelerated: the
/// bytes are read from `in_fd` and written to `out_fd` through the emulation. `Pass` if
/// neither is accelerated.
///
/// # Safety
///
/// `offset` is null or valid for reads and writes (the C contract).
pub(crate) unsafe fn sendfile(
    out_fd: c_int,
    in_fd: c_int,
    offset: *mut libc::off_t,
    count: usize,
) -> Verdict<isize> {
    let out_conn = conn_of(out_fd);
    let in_conn = conn_of(in_fd);
    if out_conn.is_none() && in_conn.is_none() {
        return Verdict::Pass;
    }
    if in_conn.is_some() {
        // Reading a socket with sendfile: hand it back to the kernel if possible.
        let (e, c) = in_conn
            .as_ref()
            .map(|(e, c)| (e.clone(), c.clone()))
            .unwrap_or_else(|| unreachable!());
        if decline(&e, &c, "sendfile").is_err() {
            return Verdict::Done(fail(libc::EINVAL));
        }
        if out_conn.is_none() {
            return Verdict::Pass;
        }
    }
    let Some((entry, conn)) = out_conn else {
        return Verdict::Pass;
    };
    let Some(sock) = entry.sock() else {
        return Verdict::Pass;
    };
    let deadline = if sock.is_nonblocking() {
        Deadline::Now
    } else {
        Deadline::after(sock.sndtimeo())
    };
    let mut buf = vec![0u8; count.min(1 << 16)];
    let mut sent = 0usize;
    while sent < count {
        let chunk = (count - sent).min(buf.len());
        // Read from the file: at *offset (pread, position untouched) or at its position.
        let got = if offset.is_null() {
            // SAFETY: `buf` is valid for `chunk` bytes.
            unsafe { crate::real::read(in_fd, buf.as_mut_ptr().cast(), chunk) }
        } else {
            // SAFETY: `offset` is valid (caller); `buf` holds `chunk` bytes.
            unsafe { libc::pread(in_fd, buf.as_mut_ptr().cast(), chunk, *offset) }
        };
        if got < 0 {
            return if sent > 0 {
                ret(Ok(sent))
            } else {
                Verdict::Done(-1)
            };
        }
        let got = usize::try_from(got).unwrap_or(0);
        if got == 0 {
            break;
        }
        let wrote = send_loop(&conn, &[IoSlice::new(&buf[..got])], deadline);
        let wrote_n = *wrote.as_ref().unwrap_or(&0);
        if wrote_n < got && offset.is_null() {
            // Give back what was read from the file but not sent.
            let back = i64::try_from(got - wrote_n).unwrap_or(0);
            // SAFETY: plain lseek on the caller's descriptor.
            unsafe { libc::lseek(in_fd, -back, libc::SEEK_CUR) };
        }
        if !offset.is_null() {
            // SAFETY: as above.
            unsafe { *offset += i64::try_from(wrote_n).unwrap_or(0) };
        }
        sent += wrote_n;
        match wrote {
            Ok(n) if n == got => {}
            Ok(_) => break,
            Err(e) => {
                if sent > 0 {
                    break;
                }
                if e == Errno::PIPE {
                    // SAFETY: as in `send`.
                    unsafe { libc::raise(libc::SIGPIPE) };
                }
                return Verdict::Done(fail(e.raw_os_error()));
            }
        }
    }
    ret(Ok(sent))
}
