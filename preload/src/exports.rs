//! The interposed C symbols.
//!
//! Each one first asks the fast question "is this descriptor tracked at all?" (one
//! lock-free table lookup, no allocation): if not, or if the calling thread is already
//! inside library code, the call goes straight to the next definition. Otherwise the
//! library's code runs behind the panic barrier ([`crate::guard::hook`]) and either
//! serves the call or hands it on.
//!
//! Variadic C functions (`fcntl`, `ioctl`) are defined with their widest fixed
//! signature: on x86-64 and aarch64 Linux a variadic argument travels in the same
//! register as a fixed one, so reading the third argument is exactly what the C
//! function's `va_arg` does.
#![allow(clippy::missing_safety_doc)]
// The symbols' names and signatures are the C library's.
#![allow(non_snake_case)]

use core::ffi::{c_char, c_int, c_uint, c_ulong, c_void};
use std::io::{IoSlice, IoSliceMut};

use libc::{
    epoll_event, fd_set, iovec, loff_t, mmsghdr, msghdr, nfds_t, off_t, pollfd, sigset_t, size_t,
    sockaddr, socklen_t, ssize_t, timespec, timeval,
};

use crate::guard::{errno, hook, inside, set_errno, Verdict};
use crate::io::Call;
use crate::state::FDS;
use crate::{epoll, fdops, io, poll, real};

/// Whether `fd` may be the library's business (not inside library code, tracked).
#[inline]
fn tracked(fd: c_int) -> bool {
    // The table first: for an untracked descriptor (the common case) no thread-local is
    // touched (in a shared library that is a call to `__tls_get_addr`).
    FDS.contains(fd) && !inside()
}

/// Runs library bookkeeping around a call that was already made: errno is kept.
#[inline]
fn after(f: impl FnOnce()) {
    if inside() {
        return;
    }
    let e = errno();
    crate::guard::quietly(f);
    set_errno(e);
}

/// A byte slice for a C buffer (empty for a null or zero-length one).
///
/// # Safety
///
/// `p` is valid for writes of `n` bytes for `'a` (the C caller's contract).
unsafe fn buf_mut<'a>(p: *mut c_void, n: size_t) -> &'a mut [u8] {
    if p.is_null() || n == 0 {
        return &mut [];
    }
    // SAFETY: valid for `n` bytes (caller); the C contract lends us the buffer for the
    // call.
    unsafe { core::slice::from_raw_parts_mut(p.cast(), n) }
}

/// As [`buf_mut`], for reads.
///
/// # Safety
///
/// `p` is valid for reads of `n` bytes for `'a`.
unsafe fn buf<'a>(p: *const c_void, n: size_t) -> &'a [u8] {
    if p.is_null() || n == 0 {
        return &[];
    }
    // SAFETY: as above.
    unsafe { core::slice::from_raw_parts(p.cast(), n) }
}

/// An `iovec` array as `IoSliceMut`s (ABI-compatible on Unix), or `None` if `cnt` is
/// out of range (the kernel reports that).
///
/// # Safety
///
/// `iov` is valid for `cnt` entries, each valid for writes (the C contract).
unsafe fn iov_mut<'a>(iov: *const iovec, cnt: c_int) -> Option<&'a mut [IoSliceMut<'a>]> {
    let n = usize::try_from(cnt).ok().filter(|&n| n <= 1024)?;
    if n == 0 {
        return Some(&mut []);
    }
    if iov.is_null() {
        return None;
    }
    // SAFETY: `IoSliceMut` is guaranteed ABI-compatible with `iovec` on Unix; the array
    // is valid for `n` entries (caller).
    Some(unsafe { core::slice::from_raw_parts_mut(iov.cast_mut().cast(), n) })
}

/// As [`iov_mut`], for reads.
///
/// # Safety
///
/// As [`iov_mut`], for reads.
unsafe fn iov<'a>(iov: *const iovec, cnt: c_int) -> Option<&'a [IoSlice<'a>]> {
    let n = usize::try_from(cnt).ok().filter(|&n| n <= 1024)?;
    if n == 0 {
        return Some(&[]);
    }
    if iov.is_null() {
        return None;
    }
    // SAFETY: as in `iov_mut`.
    Some(unsafe { core::slice::from_raw_parts(iov.cast(), n) })
}

// ---------------------------------------------------------------------------------------
// Receiving.

#[no_mangle]
pub unsafe extern "C" fn read(fd: c_int, b: *mut c_void, n: size_t) -> ssize_t {
    // SAFETY: the caller's arguments, passed on.
    let pass = || unsafe { real::read(fd, b, n) };
    if !tracked(fd) {
        return pass();
    }
    // SAFETY: `b` is valid for `n` bytes (C contract).
    hook(
        || unsafe { io::recv(fd, &mut [IoSliceMut::new(buf_mut(b, n))], 0) },
        pass,
    )
}

#[no_mangle]
pub unsafe extern "C" fn __read_chk(
    fd: c_int,
    b: *mut c_void,
    n: size_t,
    buflen: size_t,
) -> ssize_t {
    // SAFETY: the caller's arguments, passed on (the next definition does the check).
    let pass = || unsafe { real::__read_chk(fd, b, n, buflen) };
    if !tracked(fd) || n > buflen {
        return pass();
    }
    // SAFETY: as in `read`.
    hook(
        || unsafe { io::recv(fd, &mut [IoSliceMut::new(buf_mut(b, n))], 0) },
        pass,
    )
}

#[no_mangle]
pub unsafe extern "C" fn readv(fd: c_int, v: *const iovec, cnt: c_int) -> ssize_t {
    // SAFETY: the caller's arguments, passed on.
    let pass = || unsafe { real::readv(fd, v, cnt) };
    if !tracked(fd) {
        return pass();
    }
    hook(
        // SAFETY: `v` is valid for `cnt` entries (C contract).
        || match unsafe { iov_mut(v, cnt) } {
            // SAFETY: as above.
            Some(bufs) => unsafe { io::recv(fd, bufs, 0) },
            None => Verdict::Pass,
        },
        pass,
    )
}

#[no_mangle]
pub unsafe extern "C" fn recv(fd: c_int, b: *mut c_void, n: size_t, flags: c_int) -> ssize_t {
    // SAFETY: the caller's arguments, passed on.
    let pass = || unsafe { real::recv(fd, b, n, flags) };
    if !tracked(fd) {
        return pass();
    }
    // SAFETY: as in `read`.
    hook(
        || unsafe { io::recv(fd, &mut [IoSliceMut::new(buf_mut(b, n))], flags) },
        pass,
    )
}

#[no_mangle]
pub unsafe extern "C" fn __recv_chk(
    fd: c_int,
    b: *mut c_void,
    n: size_t,
    buflen: size_t,
    flags: c_int,
) -> ssize_t {
    // SAFETY: the caller's arguments, passed on (the next definition does the check).
    let pass = || unsafe { real::__recv_chk(fd, b, n, buflen, flags) };
    if !tracked(fd) || n > buflen {
        return pass();
    }
    // SAFETY: as in `read`.
    hook(
        || unsafe { io::recv(fd, &mut [IoSliceMut::new(buf_mut(b, n))], flags) },
        pass,
    )
}

/// Stores an empty source address (a connected stream socket reports none).
///
/// # Safety
///
/// `len` is null or valid for writes.
unsafe fn no_address(len: *mut socklen_t) {
    if !len.is_null() {
        // SAFETY: non-null and valid (caller).
        unsafe { *len = 0 };
    }
}

#[no_mangle]
pub unsafe extern "C" fn recvfrom(
    fd: c_int,
    b: *mut c_void,
    n: size_t,
    flags: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
) -> ssize_t {
    // SAFETY: the caller's arguments, passed on.
    let pass = || unsafe { real::recvfrom(fd, b, n, flags, addr, len) };
    if !tracked(fd) {
        return pass();
    }
    hook(
        || {
            // SAFETY: as in `read`.
            let v = unsafe { io::recv(fd, &mut [IoSliceMut::new(buf_mut(b, n))], flags) };
            if matches!(v, Verdict::Done(r) if r >= 0) {
                // SAFETY: `len` is null or valid (C contract).
                unsafe { no_address(len) };
            }
            v
        },
        pass,
    )
}

#[no_mangle]
pub unsafe extern "C" fn __recvfrom_chk(
    fd: c_int,
    b: *mut c_void,
    n: size_t,
    buflen: size_t,
    flags: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
) -> ssize_t {
    // SAFETY: the caller's arguments, passed on (the next definition does the check).
    let pass = || unsafe { real::__recvfrom_chk(fd, b, n, buflen, flags, addr, len) };
    if !tracked(fd) || n > buflen {
        return pass();
    }
    // SAFETY: same arguments as the checked call, `n <= buflen`.
    unsafe { recvfrom(fd, b, n, flags, addr, len) }
}

/// `recvmsg` on an accelerated socket.
///
/// # Safety
///
/// `msg` is valid (the C contract).
unsafe fn recvmsg_impl(fd: c_int, msg: *mut msghdr, flags: c_int) -> Verdict<ssize_t> {
    if msg.is_null() {
        return Verdict::Pass;
    }
    // SAFETY: `msg` is valid (caller).
    let m = unsafe { &mut *msg };
    let Ok(cnt) = c_int::try_from(m.msg_iovlen) else {
        return Verdict::Pass;
    };
    // SAFETY: `msg_iov` is valid for `msg_iovlen` entries (C contract).
    let Some(bufs) = (unsafe { iov_mut(m.msg_iov, cnt) }) else {
        return Verdict::Pass;
    };
    // SAFETY: as above.
    let v = unsafe { io::recv(fd, bufs, flags) };
    if matches!(v, Verdict::Done(r) if r >= 0) {
        m.msg_namelen = 0;
        m.msg_controllen = 0;
        m.msg_flags = 0;
    }
    v
}

#[no_mangle]
pub unsafe extern "C" fn recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t {
    // SAFETY: the caller's arguments, passed on.
    let pass = || unsafe { real::recvmsg(fd, msg, flags) };
    if !tracked(fd) {
        return pass();
    }
    // SAFETY: `msg` is valid (C contract).
    hook(|| unsafe { recvmsg_impl(fd, msg, flags) }, pass)
}

#[no_mangle]
pub unsafe extern "C" fn recvmmsg(
    fd: c_int,
    msgs: *mut mmsghdr,
    n: c_uint,
    flags: c_int,
    timeout: *mut timespec,
) -> c_int {
    // SAFETY: the caller's arguments, passed on.
    let pass = || unsafe { real::recvmmsg(fd, msgs, n, flags, timeout) };
    if !tracked(fd) {
        return pass();
    }
    hook(
        || {
            if crate::state::conn_of(fd).is_none() {
                return Verdict::Pass;
            }
            // On a byte stream each message is one `recvmsg`; after the first, only what
            // is there without waiting.
            let mut done: c_int = 0;
            for i in 0..n as usize {
                let f = if done == 0 && flags & libc::MSG_WAITFORONE == 0 {
                    flags
                } else {
                    flags | libc::MSG_DONTWAIT
                };
                // SAFETY: `msgs` is valid for `n` entries (C contract).
                let m = unsafe { &mut *msgs.add(i) };
                // SAFETY: as above.
                match unsafe { recvmsg_impl(fd, &mut m.msg_hdr, f & !libc::MSG_WAITFORONE) } {
                    Verdict::Done(r) if r > 0 => {
                        m.msg_len = c_uint::try_from(r).unwrap_or(c_uint::MAX);
                        done += 1;
                    }
                    Verdict::Done(0) => {
                        m.msg_len = 0;
                        done += 1;
                        break;
                    }
                    Verdict::Done(_) if done > 0 => break,
                    Verdict::Done(r) => return Verdict::Done(c_int::try_from(r).unwrap_or(-1)),
                    Verdict::Pass => return Verdict::Pass,
                }
            }
            Verdict::Done(done)
        },
        pass,
    )
}

// ---------------------------------------------------------------------------------------
// Sending.

#[no_mangle]
pub unsafe extern "C" fn write(fd: c_int, b: *const c_void, n: size_t) -> ssize_t {
    // SAFETY: the caller's arguments, passed on.
    let pass = || unsafe { real::write(fd, b, n) };
    if !tracked(fd) {
        return pass();
    }
    // SAFETY: `b` is valid for `n` bytes (C contract).
    hook(
        || io::send(fd, &[IoSlice::new(unsafe { buf(b, n) })], 0, Call::Plain),
        pass,
    )
}

#[no_mangle]
pub unsafe extern "C" fn writev(fd: c_int, v: *const iovec, cnt: c_int) -> ssize_t {
    // SAFETY: the caller's arguments, passed on.
    let pass = || unsafe { real::writev(fd, v, cnt) };
    if !tracked(fd) {
        return pass();
    }
    hook(
        // SAFETY: `v` is valid for `cnt` entries (C contract).
        || match unsafe { iov(v, cnt) } {
            Some(bufs) => io::send(fd, bufs, 0, Call::Plain),
            None => Verdict::Pass,
        },
        pass,
    )
}

#[no_mangle]
pub unsafe extern "C" fn send(fd: c_int, b: *const c_void, n: size_t, flags: c_int) -> ssize_t {
    // SAFETY: the caller's arguments, passed on.
    let pass = || unsafe { real::send(fd, b, n, flags) };
    if !tracked(fd) {
        return pass();
    }
    hook(
        || {
            // SAFETY: `b` is valid for `n` bytes (C contract).
            let bytes = unsafe { buf(b, n) };
            io::send(fd, &[IoSlice::new(bytes)], flags, Call::Socket)
        },
        pass,
    )
}

#[no_mangle]
pub unsafe extern "C" fn sendto(
    fd: c_int,
    b: *const c_void,
    n: size_t,
    flags: c_int,
    addr: *const sockaddr,
    len: socklen_t,
) -> ssize_t {
    // SAFETY: the caller's arguments, passed on.
    let pass = || unsafe { real::sendto(fd, b, n, flags, addr, len) };
    if !tracked(fd) {
        return pass();
    }
    // A connected TCP socket ignores the address (as Linux does).
    hook(
        || {
            // SAFETY: `b` is valid for `n` bytes (C contract).
            let bytes = unsafe { buf(b, n) };
            io::send(fd, &[IoSlice::new(bytes)], flags, Call::Socket)
        },
        pass,
    )
}

/// `sendmsg` on an accelerated socket.
///
/// # Safety
///
/// `msg` is valid (the C contract).
unsafe fn sendmsg_impl(fd: c_int, msg: *const msghdr, flags: c_int) -> Verdict<ssize_t> {
    if msg.is_null() {
        return Verdict::Pass;
    }
    // SAFETY: `msg` is valid (caller).
    let m = unsafe { &*msg };
    let Ok(cnt) = c_int::try_from(m.msg_iovlen) else {
        return Verdict::Pass;
    };
    // SAFETY: `msg_iov` is valid for `msg_iovlen` entries (C contract).
    match unsafe { iov(m.msg_iov, cnt) } {
        Some(bufs) => io::send(fd, bufs, flags, Call::Socket),
        None => Verdict::Pass,
    }
}

#[no_mangle]
pub unsafe extern "C" fn sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t {
    // SAFETY: the caller's arguments, passed on.
    let pass = || unsafe { real::sendmsg(fd, msg, flags) };
    if !tracked(fd) {
        return pass();
    }
    // SAFETY: `msg` is valid (C contract).
    hook(|| unsafe { sendmsg_impl(fd, msg, flags) }, pass)
}

#[no_mangle]
pub unsafe extern "C" fn sendmmsg(fd: c_int, msgs: *mut mmsghdr, n: c_uint, flags: c_int) -> c_int {
    // SAFETY: the caller's arguments, passed on.
    let pass = || unsafe { real::sendmmsg(fd, msgs, n, flags) };
    if !tracked(fd) {
        return pass();
    }
    hook(
        || {
            if crate::state::conn_of(fd).is_none() {
                return Verdict::Pass;
            }
            let mut done: c_int = 0;
            for i in 0..n as usize {
                // SAFETY: `msgs` is valid for `n` entries (C contract).
                let m = unsafe { &mut *msgs.add(i) };
                // SAFETY: as above.
                match unsafe { sendmsg_impl(fd, &m.msg_hdr, flags) } {
                    Verdict::Done(r) if r >= 0 => {
                        m.msg_len = c_uint::try_from(r).unwrap_or(c_uint::MAX);
                        done += 1;
                    }
                    Verdict::Done(_) if done > 0 => break,
                    Verdict::Done(r) => return Verdict::Done(c_int::try_from(r).unwrap_or(-1)),
                    Verdict::Pass => return Verdict::Pass,
                }
            }
            Verdict::Done(done)
        },
        pass,
    )
}

#[no_mangle]
pub unsafe extern "C" fn sendfile(
    out_fd: c_int,
    in_fd: c_int,
    off: *mut off_t,
    count: size_t,
) -> ssize_t {
    // SAFETY: the caller's arguments, passed on.
    let pass = || unsafe { real::sendfile(out_fd, in_fd, off, count) };
    if !tracked(out_fd) && !tracked(in_fd) {
        return pass();
    }
    // SAFETY: `off` is null or valid (C contract).
    hook(|| unsafe { io::sendfile(out_fd, in_fd, off, count) }, pass)
}

#[no_mangle]
pub unsafe extern "C" fn sendfile64(
    out_fd: c_int,
    in_fd: c_int,
    off: *mut off_t,
    count: size_t,
) -> ssize_t {
    // SAFETY: the caller's arguments, passed on.
    let pass = || unsafe { real::sendfile64(out_fd, in_fd, off, count) };
    if !tracked(out_fd) && !tracked(in_fd) {
        return pass();
    }
    // SAFETY: `off` is null or valid (C contract); `off_t` is 64-bit here.
    hook(|| unsafe { io::sendfile(out_fd, in_fd, off, count) }, pass)
}

#[no_mangle]
pub unsafe extern "C" fn splice(
    fd_in: c_int,
    off_in: *mut loff_t,
    fd_out: c_int,
    off_out: *mut loff_t,
    len: size_t,
    flags: c_uint,
) -> ssize_t {
    // SAFETY: the caller's arguments, passed on.
    let pass = || unsafe { real::splice(fd_in, off_in, fd_out, off_out, len, flags) };
    if !tracked(fd_in) && !tracked(fd_out) {
        return pass();
    }
    hook(
        || {
            // The kernel moves the bytes itself: the socket must be plain TCP first.
            for fd in [fd_in, fd_out] {
                if let Some((e, c)) = crate::state::conn_of(fd) {
                    if io::decline(&e, &c, "splice").is_err() {
                        return Verdict::Done(crate::guard::fail(libc::EINVAL));
                    }
                }
            }
            Verdict::Pass
        },
        pass,
    )
}

// ---------------------------------------------------------------------------------------
// The descriptor table.

#[no_mangle]
pub unsafe extern "C" fn socket(domain: c_int, ty: c_int, proto: c_int) -> c_int {
    // SAFETY: the caller's arguments, passed on.
    let fd = unsafe { real::socket(domain, ty, proto) };
    if fd >= 0 {
        after(|| fdops::on_socket(fd, domain, ty, proto));
    }
    fd
}

#[no_mangle]
pub unsafe extern "C" fn accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    // SAFETY: the caller's arguments, passed on.
    let new = unsafe { real::accept(fd, addr, len) };
    if new >= 0 {
        after(|| fdops::on_accept(fd, new, 0));
    }
    new
}

#[no_mangle]
pub unsafe extern "C" fn accept4(
    fd: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
    flags: c_int,
) -> c_int {
    // SAFETY: the caller's arguments, passed on.
    let new = unsafe { real::accept4(fd, addr, len, flags) };
    if new >= 0 {
        after(|| fdops::on_accept(fd, new, flags));
    }
    new
}

#[no_mangle]
pub unsafe extern "C" fn listen(fd: c_int, backlog: c_int) -> c_int {
    // SAFETY: the caller's arguments, passed on.
    let r = unsafe { real::listen(fd, backlog) };
    if r == 0 && tracked(fd) {
        after(|| {
            if let Some(e) = crate::state::sock_entry(fd) {
                crate::accel::on_listen(&e, fd);
            }
        });
    }
    r
}

#[no_mangle]
pub unsafe extern "C" fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    // SAFETY: the caller's arguments, passed on.
    let pass = || unsafe { real::connect(fd, addr, len) };
    if !tracked(fd) {
        return pass();
    }
    let Some(entry) = crate::state::sock_entry(fd) else {
        return pass();
    };
    // SAFETY: `addr` is valid for `len` bytes (C contract).
    let to = unsafe { crate::sockaddr::to_std(addr, len) };
    if let Some(to) = to {
        after(|| crate::accel::before_connect(&entry, fd, to));
    }
    let r = pass();
    let e = errno();
    after(|| crate::accel::after_connect(&entry, fd, r, e));
    set_errno(e);
    r
}

#[no_mangle]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    if tracked(fd) {
        after(|| fdops::close(fd));
    }
    // SAFETY: the caller's argument, passed on.
    unsafe { real::close(fd) }
}

#[no_mangle]
pub unsafe extern "C" fn close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int {
    after(|| fdops::close_range(first, last, flags));
    // SAFETY: the caller's arguments, passed on.
    unsafe { real::close_range(first, last, flags) }
}

#[no_mangle]
pub unsafe extern "C" fn closefrom(low: c_int) {
    after(|| fdops::close_range(u32::try_from(low).unwrap_or(0), u32::MAX, 0));
    // SAFETY: the caller's argument, passed on.
    unsafe { real::closefrom(low) }
}

#[no_mangle]
pub unsafe extern "C" fn shutdown(fd: c_int, how: c_int) -> c_int {
    // SAFETY: the caller's arguments, passed on.
    let pass = || unsafe { real::shutdown(fd, how) };
    if !tracked(fd) {
        return pass();
    }
    hook(|| fdops::shutdown(fd, how), pass)
}

#[no_mangle]
pub unsafe extern "C" fn dup(fd: c_int) -> c_int {
    // SAFETY: the caller's argument, passed on.
    let new = unsafe { real::dup(fd) };
    if new >= 0 {
        after(|| fdops::on_dup(fd, new));
    }
    new
}

#[no_mangle]
pub unsafe extern "C" fn dup2(old: c_int, new: c_int) -> c_int {
    // SAFETY: the caller's arguments, passed on.
    let r = unsafe { real::dup2(old, new) };
    if r >= 0 {
        after(|| fdops::on_dup(old, r));
    }
    r
}

#[no_mangle]
pub unsafe extern "C" fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int {
    // SAFETY: the caller's arguments, passed on.
    let r = unsafe { real::dup3(old, new, flags) };
    if r >= 0 {
        after(|| fdops::on_dup(old, r));
    }
    r
}

/// `fcntl(fd, F_GETFL/F_SETFL)` on an accelerated socket: the kernel's `O_NONBLOCK`
/// stays set (the stream under the emulation needs it); the application sees and sets
/// its own, which the emulation honours. `None`: not accelerated, pass through.
fn fcntl_flags(fd: c_int, cmd: c_int, arg: usize, next: impl Fn(usize) -> c_int) -> Option<c_int> {
    if !tracked(fd) || !matches!(cmd, libc::F_GETFL | libc::F_SETFL) {
        return None;
    }
    let v = hook(
        || match fcntl_flags_inside(fd, cmd, arg, &next) {
            Some(r) => Verdict::Done(r),
            None => Verdict::Pass,
        },
        || c_int::MIN,
    );
    (v != c_int::MIN).then_some(v)
}

/// [`fcntl_flags`]'s body, behind the barrier.
fn fcntl_flags_inside(
    fd: c_int,
    cmd: c_int,
    arg: usize,
    next: &impl Fn(usize) -> c_int,
) -> Option<c_int> {
    let (entry, _) = crate::state::conn_of(fd)?;
    let sock = entry.sock()?;
    if cmd == libc::F_GETFL {
        let r = next(arg);
        if r < 0 {
            return Some(r);
        }
        let nb = if sock.is_nonblocking() {
            libc::O_NONBLOCK
        } else {
            0
        };
        return Some((r & !libc::O_NONBLOCK) | nb);
    }
    #[allow(clippy::cast_possible_truncation)]
    let want = arg as c_int;
    let r = next((arg as c_int | libc::O_NONBLOCK) as usize);
    if r == 0 {
        fdops::on_setfl(fd, want);
    }
    Some(r)
}

/// The bookkeeping after a successful `fcntl(fd, cmd, arg)` that returned `r`.
fn after_fcntl(fd: c_int, cmd: c_int, arg: usize, r: c_int) {
    if r < 0 {
        return;
    }
    match cmd {
        libc::F_DUPFD | libc::F_DUPFD_CLOEXEC => after(|| fdops::on_dup(fd, r)),
        #[allow(clippy::cast_possible_truncation)]
        libc::F_SETFL if tracked(fd) => after(|| fdops::on_setfl(fd, arg as c_int)),
        _ => {}
    }
}

#[no_mangle]
pub unsafe extern "C" fn fcntl(fd: c_int, cmd: c_int, arg: usize) -> c_int {
    // SAFETY: the caller's arguments, passed on (see the module docs on variadics).
    let next = |a: usize| unsafe { real::fcntl(fd, cmd, a) };
    if let Some(r) = fcntl_flags(fd, cmd, arg, next) {
        return r;
    }
    let r = next(arg);
    after_fcntl(fd, cmd, arg, r);
    r
}

#[no_mangle]
pub unsafe extern "C" fn fcntl64(fd: c_int, cmd: c_int, arg: usize) -> c_int {
    // SAFETY: as in `fcntl`.
    let next = |a: usize| unsafe { real::fcntl64(fd, cmd, a) };
    if let Some(r) = fcntl_flags(fd, cmd, arg, next) {
        return r;
    }
    let r = next(arg);
    after_fcntl(fd, cmd, arg, r);
    r
}

#[no_mangle]
pub unsafe extern "C" fn ioctl(fd: c_int, req: c_ulong, arg: *mut c_void) -> c_int {
    // SAFETY: the caller's arguments, passed on.
    let pass = || unsafe { real::ioctl(fd, req, arg) };
    if !tracked(fd) {
        return pass();
    }
    match req {
        libc::FIONREAD => {
            // SAFETY: `arg` points to an int for FIONREAD (C contract).
            hook(|| unsafe { fdops::fionread(fd, arg) }, pass)
        }
        libc::FIONBIO => {
            let accelerated = hook(
                || {
                    if arg.is_null() || crate::state::conn_of(fd).is_none() {
                        return Verdict::Done(0);
                    }
                    // Accelerated: the application's flag only (see `fcntl_flags`).
                    // SAFETY: `arg` points to an int for FIONBIO (C contract).
                    let on = unsafe { arg.cast::<c_int>().read_unaligned() } != 0;
                    fdops::on_fionbio(fd, on);
                    Verdict::Done(1)
                },
                || 0,
            );
            if accelerated == 1 {
                return 0;
            }
            let r = pass();
            if r == 0 && !arg.is_null() {
                // SAFETY: `arg` points to an int for FIONBIO (C contract).
                let on = unsafe { arg.cast::<c_int>().read_unaligned() } != 0;
                after(|| fdops::on_fionbio(fd, on));
            }
            r
        }
        _ => pass(),
    }
}

#[no_mangle]
pub unsafe extern "C" fn getsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *mut c_void,
    len: *mut socklen_t,
) -> c_int {
    // SAFETY: the caller's arguments, passed on.
    let pass = || unsafe { real::getsockopt(fd, level, name, val, len) };
    if !tracked(fd) {
        return pass();
    }
    // SAFETY: `val` and `len` are valid (C contract).
    hook(
        || unsafe { fdops::getsockopt(fd, level, name, val, len) },
        pass,
    )
}

#[no_mangle]
pub unsafe extern "C" fn setsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *const c_void,
    len: socklen_t,
) -> c_int {
    // SAFETY: the caller's arguments, passed on.
    let r = unsafe { real::setsockopt(fd, level, name, val, len) };
    if r == 0 && tracked(fd) {
        // SAFETY: `val` is valid for `len` bytes (C contract).
        after(|| unsafe { fdops::on_setsockopt(fd, level, name, val, len) });
    }
    r
}

// ---------------------------------------------------------------------------------------
// Readiness.

/// A `timespec` timeout as a `Duration` (`None` for a null pointer: forever).
///
/// # Safety
///
/// `ts` is null or valid.
unsafe fn ts_timeout(ts: *const timespec) -> Option<core::time::Duration> {
    if ts.is_null() {
        return None;
    }
    // SAFETY: non-null and valid (caller).
    let t = unsafe { ts.read() };
    Some(core::time::Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0).min(999_999_999),
    ))
}

/// Whether any entry of a poll array is tracked.
///
/// # Safety
///
/// `fds` is null or valid for `n` entries.
unsafe fn any_tracked(fds: *const pollfd, n: nfds_t) -> bool {
    if fds.is_null() {
        return false;
    }
    (0..n as usize).any(|i| {
        // SAFETY: `i < n` (caller).
        let fd = unsafe { (*fds.add(i)).fd };
        fd >= 0 && FDS.contains(fd)
    }) && !inside()
}

#[no_mangle]
pub unsafe extern "C" fn poll(fds: *mut pollfd, n: nfds_t, timeout: c_int) -> c_int {
    // SAFETY: the caller's arguments, passed on.
    let pass = || unsafe { real::poll(fds, n, timeout) };
    // SAFETY: `fds` is valid for `n` entries (C contract).
    if !unsafe { any_tracked(fds, n) } {
        return pass();
    }
    // SAFETY: as above.
    hook(
        || unsafe { poll::poll(fds, n, poll::ms(timeout), core::ptr::null()) },
        pass,
    )
}

#[no_mangle]
pub unsafe extern "C" fn __poll_chk(
    fds: *mut pollfd,
    n: nfds_t,
    timeout: c_int,
    fdslen: size_t,
) -> c_int {
    // SAFETY: the caller's arguments, passed on (the next definition does the check).
    let pass = || unsafe { real::__poll_chk(fds, n, timeout, fdslen) };
    let fits = fdslen / core::mem::size_of::<pollfd>() >= n as usize;
    // SAFETY: as in `poll`.
    if !fits || !unsafe { any_tracked(fds, n) } {
        return pass();
    }
    // SAFETY: as in `poll`.
    hook(
        || unsafe { poll::poll(fds, n, poll::ms(timeout), core::ptr::null()) },
        pass,
    )
}

#[no_mangle]
pub unsafe extern "C" fn ppoll(
    fds: *mut pollfd,
    n: nfds_t,
    ts: *const timespec,
    mask: *const sigset_t,
) -> c_int {
    // SAFETY: the caller's arguments, passed on.
    let pass = || unsafe { real::ppoll(fds, n, ts, mask) };
    // SAFETY: as in `poll`.
    if !unsafe { any_tracked(fds, n) } {
        return pass();
    }
    // SAFETY: `ts` and `mask` are null or valid (C contract).
    hook(|| unsafe { poll::poll(fds, n, ts_timeout(ts), mask) }, pass)
}

#[no_mangle]
pub unsafe extern "C" fn __ppoll_chk(
    fds: *mut pollfd,
    n: nfds_t,
    ts: *const timespec,
    mask: *const sigset_t,
    fdslen: size_t,
) -> c_int {
    // SAFETY: the caller's arguments, passed on (the next definition does the check).
    let pass = || unsafe { real::__ppoll_chk(fds, n, ts, mask, fdslen) };
    let fits = fdslen / core::mem::size_of::<pollfd>() >= n as usize;
    // SAFETY: as in `poll`.
    if !fits || !unsafe { any_tracked(fds, n) } {
        return pass();
    }
    // SAFETY: as in `ppoll`.
    hook(|| unsafe { poll::poll(fds, n, ts_timeout(ts), mask) }, pass)
}

#[no_mangle]
pub unsafe extern "C" fn select(
    n: c_int,
    r: *mut fd_set,
    w: *mut fd_set,
    e: *mut fd_set,
    tv: *mut timeval,
) -> c_int {
    // SAFETY: the caller's arguments, passed on.
    let pass = || unsafe { real::select(n, r, w, e, tv) };
    if inside() {
        return pass();
    }
    let timeout = if tv.is_null() {
        None
    } else {
        // SAFETY: non-null and valid (C contract).
        let t = unsafe { tv.read() };
        Some(core::time::Duration::from_micros(
            u64::try_from(t.tv_sec)
                .unwrap_or(0)
                .saturating_mul(1_000_000)
                .saturating_add(u64::try_from(t.tv_usec).unwrap_or(0)),
        ))
    };
    hook(
        || {
            let mut left = None;
            // SAFETY: the sets hold `n` bits (C contract).
            let v =
                unsafe { poll::select(n, r, w, e, timeout, core::ptr::null(), Some(&mut left)) };
            if let (Verdict::Done(k), false) = (&v, tv.is_null()) {
                if *k >= 0 {
                    let l = left.unwrap_or_default();
                    // SAFETY: `tv` is valid (C contract); Linux writes the time left.
                    unsafe {
                        tv.write(timeval {
                            tv_sec: i64::try_from(l.as_secs()).unwrap_or(i64::MAX),
                            tv_usec: i64::from(l.subsec_micros()),
                        });
                    }
                }
            }
            v
        },
        pass,
    )
}

#[no_mangle]
pub unsafe extern "C" fn pselect(
    n: c_int,
    r: *mut fd_set,
    w: *mut fd_set,
    e: *mut fd_set,
    ts: *const timespec,
    mask: *const sigset_t,
) -> c_int {
    // SAFETY: the caller's arguments, passed on.
    let pass = || unsafe { real::pselect(n, r, w, e, ts, mask) };
    if inside() {
        return pass();
    }
    // SAFETY: the sets hold `n` bits; `ts` and `mask` are null or valid (C contract).
    hook(
        || unsafe { poll::select(n, r, w, e, ts_timeout(ts), mask, None) },
        pass,
    )
}

#[no_mangle]
pub unsafe extern "C" fn epoll_create(size: c_int) -> c_int {
    // SAFETY: the caller's argument, passed on.
    let fd = unsafe { real::epoll_create(size) };
    if fd >= 0 {
        after(|| epoll::on_create(fd));
    }
    fd
}

#[no_mangle]
pub unsafe extern "C" fn epoll_create1(flags: c_int) -> c_int {
    // SAFETY: the caller's argument, passed on.
    let fd = unsafe { real::epoll_create1(flags) };
    if fd >= 0 {
        after(|| epoll::on_create(fd));
    }
    fd
}

#[no_mangle]
pub unsafe extern "C" fn epoll_ctl(
    epfd: c_int,
    op: c_int,
    fd: c_int,
    ev: *mut epoll_event,
) -> c_int {
    // SAFETY: the caller's arguments, passed on (and counted: `epoll::kernel_ctl`).
    let pass = || unsafe { epoll::kernel_ctl(epfd, op, fd, ev) };
    if !tracked(fd) {
        return pass();
    }
    // SAFETY: `ev` is null or valid (C contract).
    hook(|| unsafe { epoll::ctl(epfd, op, fd, ev) }, pass)
}

#[no_mangle]
pub unsafe extern "C" fn epoll_wait(
    epfd: c_int,
    evs: *mut epoll_event,
    max: c_int,
    timeout: c_int,
) -> c_int {
    // SAFETY: the caller's arguments, passed on.
    let pass = || unsafe { real::epoll_wait(epfd, evs, max, timeout) };
    if !tracked(epfd) {
        return pass();
    }
    // SAFETY: `evs` is valid for `max` events (C contract).
    hook(
        || unsafe { epoll::wait(epfd, evs, max, poll::ms(timeout), core::ptr::null()) },
        pass,
    )
}

#[no_mangle]
pub unsafe extern "C" fn epoll_pwait(
    epfd: c_int,
    evs: *mut epoll_event,
    max: c_int,
    timeout: c_int,
    mask: *const sigset_t,
) -> c_int {
    // SAFETY: the caller's arguments, passed on.
    let pass = || unsafe { real::epoll_pwait(epfd, evs, max, timeout, mask) };
    if !tracked(epfd) {
        return pass();
    }
    // SAFETY: as in `epoll_wait`; `mask` is null or valid.
    hook(
        || unsafe { epoll::wait(epfd, evs, max, poll::ms(timeout), mask) },
        pass,
    )
}

#[no_mangle]
pub unsafe extern "C" fn epoll_pwait2(
    epfd: c_int,
    evs: *mut epoll_event,
    max: c_int,
    ts: *const timespec,
    mask: *const sigset_t,
) -> c_int {
    // SAFETY: the caller's arguments, passed on.
    let pass = || unsafe { real::epoll_pwait2(epfd, evs, max, ts, mask) };
    if !tracked(epfd) {
        return pass();
    }
    // SAFETY: as in `epoll_pwait`; `ts` is null or valid.
    hook(
        || unsafe { epoll::wait(epfd, evs, max, ts_timeout(ts), mask) },
        pass,
    )
}

// ---------------------------------------------------------------------------------------
// Process images.

/// Before an exec (see `fdops::before_exec`); errno is kept.
fn exec_prepare() -> fdops::Swapped {
    if inside() {
        return Vec::new();
    }
    let e = errno();
    let mut swapped = Vec::new();
    crate::guard::quietly(|| swapped = fdops::before_exec());
    set_errno(e);
    swapped
}

/// After an exec that returned (it failed): put the swapped sockets back; errno is kept.
fn exec_undo(swapped: fdops::Swapped) {
    if swapped.is_empty() {
        return;
    }
    let e = errno();
    crate::guard::quietly(|| fdops::exec_failed(swapped));
    set_errno(e);
}

#[no_mangle]
pub unsafe extern "C" fn execve(
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    let swapped = exec_prepare();
    // SAFETY: the caller's arguments, passed on.
    let r = unsafe { real::execve(path, argv, envp) };
    exec_undo(swapped);
    r
}

#[no_mangle]
pub unsafe extern "C" fn execv(path: *const c_char, argv: *const *const c_char) -> c_int {
    let swapped = exec_prepare();
    // SAFETY: the caller's arguments, passed on.
    let r = unsafe { real::execv(path, argv) };
    exec_undo(swapped);
    r
}

#[no_mangle]
pub unsafe extern "C" fn execvp(file: *const c_char, argv: *const *const c_char) -> c_int {
    let swapped = exec_prepare();
    // SAFETY: the caller's arguments, passed on.
    let r = unsafe { real::execvp(file, argv) };
    exec_undo(swapped);
    r
}

#[no_mangle]
pub unsafe extern "C" fn execvpe(
    file: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    let swapped = exec_prepare();
    // SAFETY: the caller's arguments, passed on.
    let r = unsafe { real::execvpe(file, argv, envp) };
    exec_undo(swapped);
    r
}

#[no_mangle]
pub unsafe extern "C" fn fexecve(
    fd: c_int,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    let swapped = exec_prepare();
    // SAFETY: the caller's arguments, passed on.
    let r = unsafe { real::fexecve(fd, argv, envp) };
    exec_undo(swapped);
    r
}

#[no_mangle]
pub unsafe extern "C" fn fork() -> libc::pid_t {
    // The fork handlers (`pthread_atfork`) do the work before and after; here the
    // parent learns the child's pid, to know later whether a socket it closes is still
    // held by the child (see `fdops::fork`).
    // SAFETY: no arguments.
    let pid = unsafe { real::fork() };
    if pid > 0 {
        #[allow(clippy::cast_sign_loss)]
        let child = pid as u32;
        after(|| fdops::fork::forked(child));
    }
    pid
}

#[no_mangle]
pub unsafe extern "C" fn fdopen(fd: c_int, mode: *const c_char) -> *mut libc::FILE {
    // The C library's `FILE` reads and writes its descriptor with internal calls the
    // library does not see: over an accelerated socket it would read the TCP
    // connection's session segments, not the stream. Refused with `EINVAL` (a proper
    // errno), never wrong bytes; a plain socket passes.
    if tracked(fd) {
        let refused = hook(
            || match crate::state::conn_of(fd) {
                Some((_, c)) => {
                    tracing::warn!(target: "coresident_preload", conn = c.id, fd,
                        "fdopen of an accelerated socket refused (EINVAL): stdio bypasses the library");
                    Verdict::Done(1)
                }
                None => Verdict::Done(0),
            },
            || 0,
        );
        if refused == 1 {
            set_errno(libc::EINVAL);
            return core::ptr::null_mut();
        }
    }
    // SAFETY: the caller's arguments, passed on.
    unsafe { real::fdopen(fd, mode) }
}
