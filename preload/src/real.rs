//! The next definition of every interposed function: `dlsym(RTLD_NEXT, name)`, resolved
//! once and cached in an atomic.
//!
//! All of them are resolved by the library's constructor ([`resolve_all`]), so a hook
//! called later never calls `dlsym` (which takes the loader's lock and may allocate: not
//! something to do inside a signal handler). A hook called before the constructor ran
//! (another library's constructor calling `socket`, say) resolves its symbol then.
//!
//! `RTLD_NEXT` finds the definition that follows this library in the lookup order: the C
//! library's, or another interposer's loaded after us, which then keeps working. A
//! symbol nobody defines (`epoll_pwait2` on a C library older than 2.35, for instance)
//! makes the call fail with `ENOSYS`, as the kernel of a system without it would.

use core::ffi::{c_char, c_int, c_uint, c_ulong, c_void, CStr};
use core::sync::atomic::{AtomicUsize, Ordering};

use libc::{
    epoll_event, fd_set, iovec, loff_t, mmsghdr, msghdr, nfds_t, off_t, pid_t, pollfd, sigset_t,
    size_t, sockaddr, socklen_t, ssize_t, timespec, timeval,
};

/// One symbol's next definition, resolved on first use.
#[derive(Debug)]
pub(crate) struct Next {
    /// The symbol's name.
    name: &'static CStr,
    /// The resolved address: 0 before resolution, 1 if nobody defines the symbol, else
    /// the address of the definition.
    addr: AtomicUsize,
}

/// The value of [`Next::addr`] for a symbol nobody defines.
const MISSING: usize = 1;

impl Next {
    /// A symbol not resolved yet.
    pub(crate) const fn new(name: &'static CStr) -> Self {
        Self {
            name,
            addr: AtomicUsize::new(0),
        }
    }

    /// The definition's address, or `None` if nobody defines the symbol.
    #[inline]
    pub(crate) fn get(&self) -> Option<usize> {
        // SYNC: resolved address, published by the Release store in `resolve`. The
        // code it points to was mapped by the loader before either thread ran, so the
        // pair only orders this word; Acquire costs nothing on x86-64.
        match self.addr.load(Ordering::Acquire) {
            0 => self.resolve(),
            MISSING => None,
            a => Some(a),
        }
    }

    /// Resolves the symbol and caches the result. Racing resolutions store the same
    /// value.
    #[cold]
    fn resolve(&self) -> Option<usize> {
        // SAFETY:
        // - `RTLD_NEXT` is a valid pseudo-handle for `dlsym` called from a shared object;
        // - `self.name` is a NUL-terminated string that lives for the whole program.
        let p = unsafe { libc::dlsym(libc::RTLD_NEXT, self.name.as_ptr()) };
        let a = p as usize;
        let stored = if a == 0 || a == MISSING { MISSING } else { a };
        // SYNC: resolved address, read by the Acquire load in `get`.
        self.addr.store(stored, Ordering::Release);
        (stored != MISSING).then_some(stored)
    }
}

/// Sets `errno`.
fn set_errno(e: c_int) {
    // SAFETY: `__errno_location` returns this thread's errno slot, always valid.
    unsafe { *libc::__errno_location() = e };
}

/// The "-1" every interposed call returns on failure.
pub(crate) trait Failure {
    /// -1 in this type.
    fn failure() -> Self;
}
impl Failure for c_int {
    fn failure() -> Self {
        -1
    }
}
impl Failure for ssize_t {
    fn failure() -> Self {
        -1
    }
}

macro_rules! next_fns {
    ($( $name:ident ( $($arg:ident : $ty:ty),* ) -> $ret:ty; )*) => {
        /// The cache of every next definition.
        pub(crate) mod sym {
            $(
                #[allow(non_upper_case_globals)]
                pub(crate) static $name: super::Next =
                    super::Next::new(match ::core::ffi::CStr::from_bytes_with_nul(
                        concat!(stringify!($name), "\0").as_bytes(),
                    ) {
                        Ok(s) => s,
                        Err(_) => panic!("symbol name with a NUL"),
                    });
            )*
            /// Every symbol, for [`super::resolve_all`].
            pub(crate) static ALL: &[&super::Next] = &[$(&$name),*];
        }
        $(
            #[doc = concat!("Calls the next definition of `", stringify!($name), "`.")]
            ///
            /// # Safety
            ///
            /// As the C function: the caller passes arguments valid for it.
            #[inline]
            #[allow(clippy::too_many_arguments)]
            pub(crate) unsafe fn $name($($arg: $ty),*) -> $ret {
                let Some(a) = sym::$name.get() else {
                    set_errno(libc::ENOSYS);
                    return <$ret as Failure>::failure();
                };
                // SAFETY: `a` is the address `dlsym` gave for this very symbol, whose C
                // type is the one written here (glibc's, x86-64/aarch64 Linux).
                let f: unsafe extern "C" fn($($ty),*) -> $ret = unsafe { core::mem::transmute(a) };
                // SAFETY: the caller upholds the C function's contract.
                unsafe { f($($arg),*) }
            }
        )*
    };
}

next_fns! {
    read(fd: c_int, buf: *mut c_void, n: size_t) -> ssize_t;
    __read_chk(fd: c_int, buf: *mut c_void, n: size_t, buflen: size_t) -> ssize_t;
    write(fd: c_int, buf: *const c_void, n: size_t) -> ssize_t;
    readv(fd: c_int, iov: *const iovec, iovcnt: c_int) -> ssize_t;
    writev(fd: c_int, iov: *const iovec, iovcnt: c_int) -> ssize_t;
    recv(fd: c_int, buf: *mut c_void, n: size_t, flags: c_int) -> ssize_t;
    __recv_chk(fd: c_int, buf: *mut c_void, n: size_t, buflen: size_t, flags: c_int) -> ssize_t;
    recvfrom(fd: c_int, buf: *mut c_void, n: size_t, flags: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> ssize_t;
    __recvfrom_chk(fd: c_int, buf: *mut c_void, n: size_t, buflen: size_t, flags: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> ssize_t;
    recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t;
    recvmmsg(fd: c_int, msgs: *mut mmsghdr, n: c_uint, flags: c_int, timeout: *mut timespec) -> c_int;
    send(fd: c_int, buf: *const c_void, n: size_t, flags: c_int) -> ssize_t;
    sendto(fd: c_int, buf: *const c_void, n: size_t, flags: c_int, addr: *const sockaddr, len: socklen_t) -> ssize_t;
    sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t;
    sendmmsg(fd: c_int, msgs: *mut mmsghdr, n: c_uint, flags: c_int) -> c_int;
    sendfile(out_fd: c_int, in_fd: c_int, offset: *mut off_t, count: size_t) -> ssize_t;
    sendfile64(out_fd: c_int, in_fd: c_int, offset: *mut off_t, count: size_t) -> ssize_t;
    splice(fd_in: c_int, off_in: *mut loff_t, fd_out: c_int, off_out: *mut loff_t, len: size_t, flags: c_uint) -> ssize_t;
    socket(domain: c_int, ty: c_int, proto: c_int) -> c_int;
    listen(fd: c_int, backlog: c_int) -> c_int;
    accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int;
    accept4(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, flags: c_int) -> c_int;
    connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int;
    close(fd: c_int) -> c_int;
    close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int;
    shutdown(fd: c_int, how: c_int) -> c_int;
    dup(fd: c_int) -> c_int;
    dup2(old: c_int, new: c_int) -> c_int;
    dup3(old: c_int, new: c_int, flags: c_int) -> c_int;
    fcntl(fd: c_int, cmd: c_int, arg: usize) -> c_int;
    fcntl64(fd: c_int, cmd: c_int, arg: usize) -> c_int;
    ioctl(fd: c_int, req: c_ulong, arg: *mut c_void) -> c_int;
    getsockopt(fd: c_int, level: c_int, name: c_int, val: *mut c_void, len: *mut socklen_t) -> c_int;
    setsockopt(fd: c_int, level: c_int, name: c_int, val: *const c_void, len: socklen_t) -> c_int;
    poll(fds: *mut pollfd, n: nfds_t, timeout: c_int) -> c_int;
    __poll_chk(fds: *mut pollfd, n: nfds_t, timeout: c_int, fdslen: size_t) -> c_int;
    ppoll(fds: *mut pollfd, n: nfds_t, timeout: *const timespec, mask: *const sigset_t) -> c_int;
    __ppoll_chk(fds: *mut pollfd, n: nfds_t, timeout: *const timespec, mask: *const sigset_t, fdslen: size_t) -> c_int;
    select(n: c_int, r: *mut fd_set, w: *mut fd_set, e: *mut fd_set, timeout: *mut timeval) -> c_int;
    pselect(n: c_int, r: *mut fd_set, w: *mut fd_set, e: *mut fd_set, timeout: *const timespec, mask: *const sigset_t) -> c_int;
    epoll_create(size: c_int) -> c_int;
    epoll_create1(flags: c_int) -> c_int;
    epoll_ctl(epfd: c_int, op: c_int, fd: c_int, ev: *mut epoll_event) -> c_int;
    epoll_wait(epfd: c_int, evs: *mut epoll_event, max: c_int, timeout: c_int) -> c_int;
    epoll_pwait(epfd: c_int, evs: *mut epoll_event, max: c_int, timeout: c_int, mask: *const sigset_t) -> c_int;
    epoll_pwait2(epfd: c_int, evs: *mut epoll_event, max: c_int, timeout: *const timespec, mask: *const sigset_t) -> c_int;
    execve(path: *const c_char, argv: *const *const c_char, envp: *const *const c_char) -> c_int;
    execv(path: *const c_char, argv: *const *const c_char) -> c_int;
    execvp(file: *const c_char, argv: *const *const c_char) -> c_int;
    execvpe(file: *const c_char, argv: *const *const c_char, envp: *const *const c_char) -> c_int;
    fexecve(fd: c_int, argv: *const *const c_char, envp: *const *const c_char) -> c_int;
    fork() -> pid_t;
}

/// Resolves every symbol now (the constructor calls it, before `main`).
pub(crate) fn resolve_all() {
    for s in sym::ALL {
        let _ = s.get();
    }
    let _ = FDOPEN.get();
    let _ = CLOSEFROM.get();
}

/// `fdopen` returns a pointer, so it is resolved here rather than by `next_fns!`.
pub(crate) static FDOPEN: Next = Next::new(c"fdopen");

/// Calls the next `fdopen` (null with `ENOSYS` if nobody defines it).
///
/// # Safety
///
/// As the C function (`mode` is a valid C string).
pub(crate) unsafe fn fdopen(fd: c_int, mode: *const c_char) -> *mut libc::FILE {
    match FDOPEN.get() {
        Some(a) => {
            // SAFETY: `a` is `fdopen`'s address; its C type is this one.
            let f: unsafe extern "C" fn(c_int, *const c_char) -> *mut libc::FILE =
                unsafe { core::mem::transmute(a) };
            // SAFETY: the caller upholds the contract.
            unsafe { f(fd, mode) }
        }
        None => {
            set_errno(libc::ENOSYS);
            core::ptr::null_mut()
        }
    }
}

/// `closefrom` returns nothing, so it is resolved here rather than by `next_fns!`.
pub(crate) static CLOSEFROM: Next = Next::new(c"closefrom");

/// Calls the next `closefrom`, or closes the range with `close_range` if nobody defines
/// `closefrom` (a C library older than 2.34).
///
/// # Safety
///
/// As the C function (closing descriptors the caller owns).
pub(crate) unsafe fn closefrom(low: c_int) {
    match CLOSEFROM.get() {
        Some(a) => {
            // SAFETY: `a` is `closefrom`'s address; its C type is `void (int)`.
            let f: unsafe extern "C" fn(c_int) = unsafe { core::mem::transmute(a) };
            // SAFETY: the caller upholds the contract.
            unsafe { f(low) }
        }
        None => {
            let low = c_uint::try_from(low).unwrap_or(0);
            // SAFETY: as above.
            unsafe { close_range(low, c_uint::MAX, 0) };
        }
    }
}
