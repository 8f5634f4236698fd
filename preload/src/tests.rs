//! Unit tests of the socket emulation against the in-process connection.
//!
//! Each test makes a real TCP connection over loopback (so the descriptors are real
//! sockets the kernel knows), tracks both ends as the hooks would, and installs a
//! [`MemConn`] pair on them. The calls then go through the same code the exported
//! symbols run (`io::recv`, `poll::poll`, `epoll::wait`...), behind the same barrier.

use core::ffi::c_int;
use core::time::Duration;
use std::io::{IoSlice, IoSliceMut};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::conn::{Accelerated, ConnStats, Readiness, Reason, Shutdown};
use crate::guard::{errno, hook, Verdict};
use crate::io::Call;
use crate::mem::MemConn;
use crate::state::{lock, Conn, Entry, Sock, FDS};
use crate::{epoll, fdops, io, poll, real};

/// A real TCP connection whose two ends are tracked and accelerated by a `MemConn` pair.
struct Pair {
    a: TcpStream,
    b: TcpStream,
}

impl Pair {
    fn new(cap: usize) -> Self {
        let (a, b) = tcp_pair();
        let (ma, mb) = MemConn::pair(cap).unwrap();
        accelerate(a.as_raw_fd(), Box::new(ma));
        accelerate(b.as_raw_fd(), Box::new(mb));
        Self { a, b }
    }
    fn a(&self) -> c_int {
        self.a.as_raw_fd()
    }
    fn b(&self) -> c_int {
        self.b.as_raw_fd()
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        fdops::close(self.a());
        fdops::close(self.b());
    }
}

fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (b, _) = l.accept().unwrap();
    (a, b)
}

/// Tracks `fd` as a TCP socket, as the `socket`/`accept` hooks do.
fn track(fd: c_int) -> Arc<Entry> {
    let e = Arc::new(Entry::Sock(Sock::new(false, true)));
    fdops::put(fd, e.clone());
    e
}

fn accelerate(fd: c_int, imp: Box<dyn Accelerated>) -> Arc<Conn> {
    track(fd);
    let conn = Arc::new(Conn::new(imp, None, None, None));
    assert!(fdops::install(fd, conn.clone()));
    conn
}

fn read(fd: c_int, buf: &mut [u8], flags: c_int) -> isize {
    hook(
        // SAFETY: `buf` is a valid buffer for the call.
        || unsafe { io::recv(fd, &mut [IoSliceMut::new(buf)], flags) },
        || -2,
    )
}

fn write(fd: c_int, buf: &[u8], flags: c_int) -> isize {
    hook(
        || io::send(fd, &[IoSlice::new(buf)], flags, Call::Socket),
        || -2,
    )
}

fn set_nonblocking(fd: c_int, on: bool) {
    fdops::on_setfl(fd, if on { libc::O_NONBLOCK } else { 0 });
}

fn ppoll(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> c_int {
    hook(
        // SAFETY: `fds` is a valid array.
        || unsafe {
            poll::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                timeout,
                core::ptr::null(),
            )
        },
        || -2,
    )
}

fn pfd(fd: c_int, events: i16) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

fn epoll_new() -> OwnedFd {
    // SAFETY: plain syscall.
    let fd = unsafe { real::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(fd >= 0);
    epoll::on_create(fd);
    // SAFETY: `fd` is a fresh descriptor we own.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn ctl(ep: &OwnedFd, op: c_int, fd: c_int, events: u32, data: u64) -> c_int {
    let mut ev = libc::epoll_event { events, u64: data };
    let p: *mut libc::epoll_event = &mut ev;
    hook(
        // SAFETY: `ev` is valid.
        || unsafe { epoll::ctl(ep.as_raw_fd(), op, fd, p) },
        // SAFETY: as above (what the `epoll_ctl` export passes through).
        || unsafe { epoll::kernel_ctl(ep.as_raw_fd(), op, fd, p) },
    )
}

fn ewait(ep: &OwnedFd, timeout: Option<Duration>) -> Vec<(u32, u64)> {
    let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 16];
    let p = evs.as_mut_ptr();
    let n = hook(
        // SAFETY: `evs` holds 16 events.
        || unsafe { epoll::wait(ep.as_raw_fd(), p, 16, timeout, core::ptr::null()) },
        // SAFETY: as above.
        || unsafe {
            real::epoll_wait(
                ep.as_raw_fd(),
                p,
                16,
                timeout.map_or(-1, |d| d.as_millis() as c_int),
            )
        },
    );
    assert!(n >= 0, "epoll_wait failed: errno {}", errno());
    evs[..n as usize]
        .iter()
        .map(|e| (e.events, e.u64))
        .collect()
}

const SHORT: Option<Duration> = Some(Duration::from_millis(30));

#[test]
fn blocking_read_waits_for_a_writer() {
    let p = Pair::new(1024);
    let (a, b) = (p.a(), p.b());
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(write(a, b"late", 0), 4);
    });
    let mut buf = [0u8; 16];
    assert_eq!(read(b, &mut buf, 0), 4);
    assert_eq!(&buf[..4], b"late");
    t.join().unwrap();
}

#[test]
fn nonblocking_and_dontwait_give_eagain() {
    let p = Pair::new(1024);
    let mut buf = [0u8; 4];
    assert_eq!(read(p.b(), &mut buf, libc::MSG_DONTWAIT), -1);
    assert_eq!(errno(), libc::EAGAIN);
    set_nonblocking(p.b(), true);
    assert_eq!(read(p.b(), &mut buf, 0), -1);
    assert_eq!(errno(), libc::EAGAIN);
    // A full ring: a non-blocking write takes what fits, then EAGAIN.
    let p = Pair::new(8);
    set_nonblocking(p.a(), true);
    assert_eq!(write(p.a(), b"0123456789", 0), 8);
    assert_eq!(write(p.a(), b"x", 0), -1);
    assert_eq!(errno(), libc::EAGAIN);
}

#[test]
fn peek_waitall_and_trunc() {
    let p = Pair::new(1024);
    assert_eq!(write(p.a(), b"hello", 0), 5);
    let mut buf = [0u8; 5];
    assert_eq!(read(p.b(), &mut buf[..3], libc::MSG_PEEK), 3);
    assert_eq!(&buf[..3], b"hel");
    assert_eq!(read(p.b(), &mut buf[..2], libc::MSG_TRUNC), 2);
    assert_eq!(read(p.b(), &mut buf, 0), 3);
    assert_eq!(&buf[..3], b"llo");
    let a = p.a();
    let t = std::thread::spawn(move || {
        for chunk in [&b"ab"[..], b"cd", b"ef"] {
            std::thread::sleep(Duration::from_millis(10));
            assert_eq!(write(a, chunk, 0), 2);
        }
    });
    let mut all = [0u8; 6];
    assert_eq!(read(p.b(), &mut all, libc::MSG_WAITALL), 6);
    assert_eq!(&all, b"abcdef");
    t.join().unwrap();
}

#[test]
fn end_of_stream_and_epipe_with_and_without_sigpipe() {
    static SIGPIPES: AtomicUsize = AtomicUsize::new(0);
    extern "C" fn on_sigpipe(_: c_int) {
        SIGPIPES.fetch_add(1, Ordering::SeqCst);
    }
    // SAFETY: installing a plain handler for SIGPIPE.
    unsafe { libc::signal(libc::SIGPIPE, on_sigpipe as extern "C" fn(c_int) as usize) };
    let p = Pair::new(1024);
    assert_eq!(hook(|| fdops::shutdown(p.a(), libc::SHUT_WR), || -2), 0);
    let mut buf = [0u8; 4];
    assert_eq!(read(p.b(), &mut buf, 0), 0, "end of stream after SHUT_WR");
    let before = SIGPIPES.load(Ordering::SeqCst);
    assert_eq!(write(p.a(), b"x", libc::MSG_NOSIGNAL), -1);
    assert_eq!(errno(), libc::EPIPE);
    assert_eq!(
        SIGPIPES.load(Ordering::SeqCst),
        before,
        "MSG_NOSIGNAL: no signal"
    );
    assert_eq!(write(p.a(), b"x", 0), -1);
    assert_eq!(errno(), libc::EPIPE);
    assert_eq!(
        SIGPIPES.load(Ordering::SeqCst),
        before + 1,
        "SIGPIPE raised"
    );
}

#[test]
fn receive_timeout_gives_eagain() {
    let p = Pair::new(1024);
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 20_000,
    };
    // SAFETY: `tv` is a valid timeval for the call.
    unsafe {
        fdops::on_setsockopt(
            p.b(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            core::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
    }
    let t0 = Instant::now();
    let mut buf = [0u8; 4];
    assert_eq!(read(p.b(), &mut buf, 0), -1);
    assert_eq!(errno(), libc::EAGAIN);
    assert!(t0.elapsed() >= Duration::from_millis(15));
}

#[test]
fn fionread_and_so_error() {
    let (a, b) = tcp_pair();
    let (ma, mb) = MemConn::pair(1024).unwrap();
    let ma = Arc::new(ma);
    accelerate(a.as_raw_fd(), Box::new(ma.clone()));
    accelerate(b.as_raw_fd(), Box::new(mb));
    assert_eq!(write(a.as_raw_fd(), b"12345", 0), 5);
    let mut n: c_int = -1;
    let r = hook(
        // SAFETY: `n` is a valid int.
        || unsafe { fdops::fionread(b.as_raw_fd(), (&mut n as *mut c_int).cast()) },
        || -2,
    );
    assert_eq!((r, n), (0, 5));
    // A reset shows as SO_ERROR once, then 0.
    ma.reset();
    let mut err: c_int = -1;
    let mut len = core::mem::size_of::<c_int>() as libc::socklen_t;
    let r = hook(
        // SAFETY: `err` and `len` are valid.
        || unsafe {
            fdops::getsockopt(
                b.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                (&mut err as *mut c_int).cast(),
                &mut len,
            )
        },
        || -2,
    );
    assert_eq!((r, err), (0, libc::ECONNRESET));
    let mut buf = [0u8; 1];
    assert_eq!(write(b.as_raw_fd(), b"x", 0), -1);
    assert_eq!(errno(), libc::ECONNRESET);
    assert_eq!(read(b.as_raw_fd(), &mut buf, 0), -1);
    fdops::close(a.as_raw_fd());
    fdops::close(b.as_raw_fd());
}

#[test]
fn poll_reports_accelerated_and_plain_descriptors() {
    let p = Pair::new(8);
    let (pr, pw) = rustix::pipe::pipe().unwrap();
    let mut fds = [pfd(p.b(), libc::POLLIN), pfd(pr.as_raw_fd(), libc::POLLIN)];
    assert_eq!(ppoll(&mut fds, SHORT), 0, "nothing ready: timeout");
    assert_eq!(write(p.a(), b"x", 0), 1);
    assert_eq!(ppoll(&mut fds, SHORT), 1);
    assert_eq!(fds[0].revents, libc::POLLIN);
    assert_eq!(fds[1].revents, 0);
    rustix::io::write(&pw, b"y").unwrap();
    assert_eq!(ppoll(&mut fds, SHORT), 2);
    assert_eq!(fds[1].revents, libc::POLLIN);
    // POLLOUT only while there is room.
    let mut w = [pfd(p.a(), libc::POLLOUT)];
    assert_eq!(ppoll(&mut w, SHORT), 1);
    assert_eq!(write(p.a(), b"1234567", 0), 7);
    assert_eq!(ppoll(&mut w, SHORT), 0, "ring full: not writable");
    // A sleeper is woken by the peer.
    let b = p.b();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        let mut buf = [0u8; 8];
        assert_eq!(read(b, &mut buf, 0), 8);
    });
    assert_eq!(ppoll(&mut w, None), 1);
    assert_eq!(w[0].revents, libc::POLLOUT);
    t.join().unwrap();
    // End of stream: POLLIN | POLLRDHUP; both ways shut: POLLHUP.
    assert_eq!(hook(|| fdops::shutdown(p.a(), libc::SHUT_WR), || -2), 0);
    let mut r = [pfd(p.b(), libc::POLLIN | libc::POLLRDHUP)];
    assert_eq!(ppoll(&mut r, SHORT), 1);
    assert_eq!(r[0].revents, libc::POLLIN | libc::POLLRDHUP);
    assert_eq!(hook(|| fdops::shutdown(p.b(), libc::SHUT_WR), || -2), 0);
    assert_eq!(ppoll(&mut r, SHORT), 1);
    assert!(r[0].revents & libc::POLLHUP != 0);
}

#[test]
fn select_reports_accelerated_descriptors() {
    let p = Pair::new(1024);
    // SAFETY: plain fd_set manipulation on local sets.
    unsafe {
        let mut rs: libc::fd_set = core::mem::zeroed();
        let mut ws: libc::fd_set = core::mem::zeroed();
        libc::FD_SET(p.b(), &mut rs);
        libc::FD_SET(p.a(), &mut ws);
        let n = p.a().max(p.b()) + 1;
        let mut left = None;
        let v = poll::select(
            n,
            &mut rs,
            &mut ws,
            core::ptr::null_mut(),
            SHORT,
            core::ptr::null(),
            Some(&mut left),
        );
        assert!(matches!(v, Verdict::Done(1)));
        assert!(!libc::FD_ISSET(p.b(), &rs));
        assert!(libc::FD_ISSET(p.a(), &ws));
        assert!(left.is_some());
        assert_eq!(write(p.a(), b"x", 0), 1);
        libc::FD_ZERO(&mut rs);
        libc::FD_SET(p.b(), &mut rs);
        let v = poll::select(
            n,
            &mut rs,
            core::ptr::null_mut(),
            core::ptr::null_mut(),
            SHORT,
            core::ptr::null(),
            None,
        );
        assert!(matches!(v, Verdict::Done(1)));
        assert!(libc::FD_ISSET(p.b(), &rs));
    }
}

#[test]
fn a_kernel_registration_made_behind_the_librarys_back_is_still_reported() {
    // `wait` skips the kernel's half while its count says it is empty; a registration
    // the count never saw (a raw system call) must still come out: the sleep wakes on
    // the epoll descriptor itself, and the set stops trusting its count.
    let p = Pair::new(1024);
    let ep = epoll_new();
    assert_eq!(
        ctl(&ep, libc::EPOLL_CTL_ADD, p.b(), libc::EPOLLIN as u32, 7),
        0
    );
    let (pr, pw) = rustix::pipe::pipe().unwrap();
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: 9,
    };
    assert_eq!(
        // SAFETY: valid descriptors and event; the raw call the library does not see.
        unsafe { real::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, pr.as_raw_fd(), &mut ev) },
        0
    );
    rustix::io::write(&pw, b"y").unwrap();
    assert_eq!(
        ewait(&ep, Some(Duration::from_secs(10))),
        vec![(libc::EPOLLIN as u32, 9)]
    );
    // And from now on beside an emulated registration that is ready at once.
    assert_eq!(write(p.a(), b"z", 0), 1);
    let mut got = ewait(&ep, SHORT);
    got.sort_unstable_by_key(|e| e.1);
    assert_eq!(
        got,
        vec![(libc::EPOLLIN as u32, 7), (libc::EPOLLIN as u32, 9)]
    );
}

#[test]
fn epoll_level_triggered_reports_until_drained() {
    let p = Pair::new(1024);
    let ep = epoll_new();
    assert_eq!(
        ctl(&ep, libc::EPOLL_CTL_ADD, p.b(), libc::EPOLLIN as u32, 7),
        0
    );
    assert_eq!(
        ctl(&ep, libc::EPOLL_CTL_ADD, p.b(), libc::EPOLLIN as u32, 7),
        -1
    );
    assert_eq!(errno(), libc::EEXIST);
    assert!(ewait(&ep, SHORT).is_empty());
    assert_eq!(write(p.a(), b"abc", 0), 3);
    assert_eq!(ewait(&ep, SHORT), vec![(libc::EPOLLIN as u32, 7)]);
    assert_eq!(
        ewait(&ep, SHORT),
        vec![(libc::EPOLLIN as u32, 7)],
        "level: again"
    );
    let mut buf = [0u8; 8];
    assert_eq!(read(p.b(), &mut buf, 0), 3);
    assert!(ewait(&ep, SHORT).is_empty());
    // A plain descriptor in the same set is reported beside it.
    let (pr, pw) = rustix::pipe::pipe().unwrap();
    assert_eq!(
        ctl(
            &ep,
            libc::EPOLL_CTL_ADD,
            pr.as_raw_fd(),
            libc::EPOLLIN as u32,
            9
        ),
        0
    );
    rustix::io::write(&pw, b"y").unwrap();
    assert_eq!(write(p.a(), b"z", 0), 1);
    let mut got = ewait(&ep, SHORT);
    got.sort_unstable_by_key(|e| e.1);
    assert_eq!(
        got,
        vec![(libc::EPOLLIN as u32, 7), (libc::EPOLLIN as u32, 9)]
    );
    // MOD and DEL.
    assert_eq!(
        ctl(
            &ep,
            libc::EPOLL_CTL_MOD,
            p.b(),
            (libc::EPOLLIN | libc::EPOLLOUT) as u32,
            8
        ),
        0
    );
    assert!(ewait(&ep, SHORT).contains(&((libc::EPOLLIN | libc::EPOLLOUT) as u32, 8)));
    assert_eq!(ctl(&ep, libc::EPOLL_CTL_DEL, p.b(), 0, 0), 0);
    assert_eq!(ctl(&ep, libc::EPOLL_CTL_DEL, p.b(), 0, 0), -1);
    assert_eq!(errno(), libc::ENOENT);
    assert_eq!(ewait(&ep, SHORT), vec![(libc::EPOLLIN as u32, 9)]);
}

#[test]
fn epoll_edge_triggered_reports_each_edge_once() {
    let p = Pair::new(1024);
    let ep = epoll_new();
    let et = (libc::EPOLLIN | libc::EPOLLET) as u32;
    assert_eq!(ctl(&ep, libc::EPOLL_CTL_ADD, p.b(), et, 1), 0);
    assert_eq!(write(p.a(), b"ab", 0), 2);
    assert_eq!(ewait(&ep, SHORT), vec![(libc::EPOLLIN as u32, 1)]);
    assert!(ewait(&ep, SHORT).is_empty(), "edge: reported once");
    // New bytes are a new edge even if the first ones were not read.
    assert_eq!(write(p.a(), b"c", 0), 1);
    assert_eq!(ewait(&ep, SHORT), vec![(libc::EPOLLIN as u32, 1)]);
    assert!(ewait(&ep, SHORT).is_empty());
    // Read until EAGAIN, then new data: an edge.
    set_nonblocking(p.b(), true);
    let mut buf = [0u8; 8];
    assert_eq!(read(p.b(), &mut buf, 0), 3);
    assert_eq!(read(p.b(), &mut buf, 0), -1);
    assert!(ewait(&ep, SHORT).is_empty());
    // A writer thread while we sleep in epoll_wait.
    let a = p.a();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(write(a, b"d", 0), 1);
    });
    assert_eq!(
        ewait(&ep, Some(Duration::from_secs(10))),
        vec![(libc::EPOLLIN as u32, 1)]
    );
    t.join().unwrap();
    // Oneshot: one report until MOD.
    let os = (libc::EPOLLIN | libc::EPOLLONESHOT) as u32;
    assert_eq!(ctl(&ep, libc::EPOLL_CTL_MOD, p.b(), os, 2), 0);
    assert_eq!(ewait(&ep, SHORT), vec![(libc::EPOLLIN as u32, 2)]);
    assert!(ewait(&ep, SHORT).is_empty());
    assert_eq!(ctl(&ep, libc::EPOLL_CTL_MOD, p.b(), os, 3), 0);
    assert_eq!(ewait(&ep, SHORT), vec![(libc::EPOLLIN as u32, 3)]);
}

#[test]
fn epoll_out_rdhup_hup() {
    let p = Pair::new(4);
    let ep = epoll_new();
    let ev = (libc::EPOLLOUT | libc::EPOLLIN | libc::EPOLLRDHUP) as u32;
    assert_eq!(ctl(&ep, libc::EPOLL_CTL_ADD, p.a(), ev, 5), 0);
    assert_eq!(ewait(&ep, SHORT), vec![(libc::EPOLLOUT as u32, 5)]);
    assert_eq!(write(p.a(), b"1234", 0), 4);
    assert!(ewait(&ep, SHORT).is_empty(), "ring full: no EPOLLOUT");
    assert_eq!(hook(|| fdops::shutdown(p.b(), libc::SHUT_WR), || -2), 0);
    assert_eq!(
        ewait(&ep, SHORT),
        vec![((libc::EPOLLIN | libc::EPOLLRDHUP) as u32, 5)]
    );
    assert_eq!(hook(|| fdops::shutdown(p.a(), libc::SHUT_WR), || -2), 0);
    let got = ewait(&ep, SHORT);
    assert_eq!(got.len(), 1);
    assert!(got[0].0 & libc::EPOLLHUP as u32 != 0);
}

#[test]
fn kernel_registration_moves_into_the_emulation_and_back() {
    let (a, b) = tcp_pair();
    track(a.as_raw_fd());
    track(b.as_raw_fd());
    let ep = epoll_new();
    // Plain: the kernel's registration (the idle socket is writable).
    assert_eq!(
        ctl(
            &ep,
            libc::EPOLL_CTL_ADD,
            b.as_raw_fd(),
            (libc::EPOLLIN | libc::EPOLLOUT) as u32,
            4
        ),
        0
    );
    assert_eq!(ewait(&ep, SHORT), vec![(libc::EPOLLOUT as u32, 4)]);
    // Accelerated now: a full ring is not writable, which only the emulation knows.
    let (ma, mb) = MemConn::pair(2).unwrap();
    let ca = Arc::new(Conn::new(Box::new(ma), None, None, None));
    assert!(fdops::install(a.as_raw_fd(), ca));
    let cb = Arc::new(Conn::new(Box::new(mb), None, None, None));
    assert!(fdops::install(b.as_raw_fd(), cb.clone()));
    assert_eq!(write(b.as_raw_fd(), b"xy", 0), 2);
    assert!(
        ewait(&ep, SHORT).is_empty(),
        "the kernel's registration is gone"
    );
    assert_eq!(write(a.as_raw_fd(), b"q", 0), 1);
    assert_eq!(ewait(&ep, SHORT), vec![(libc::EPOLLIN as u32, 4)]);
    // Released (a connection that says it can be): back to the kernel's list.
    let entry = FDS.get(b.as_raw_fd()).unwrap();
    let released = Arc::new(Conn::new(Box::new(Releasable), None, None, None));
    assert!(fdops::install(b.as_raw_fd(), released.clone()));
    assert!(fdops::release(&entry, &released));
    assert_eq!(
        ewait(&ep, SHORT),
        vec![(libc::EPOLLOUT as u32, 4)],
        "kernel again"
    );
    fdops::close(a.as_raw_fd());
    fdops::close(b.as_raw_fd());
}

/// A connection that is always on TCP with nothing buffered.
#[derive(Debug)]
struct Releasable;

impl Accelerated for Releasable {
    fn try_recv(&self, _: &mut [IoSliceMut<'_>], _: bool) -> Result<usize, rustix::io::Errno> {
        Err(rustix::io::Errno::AGAIN)
    }
    fn try_send(&self, _: &[IoSlice<'_>]) -> Result<usize, rustix::io::Errno> {
        Err(rustix::io::Errno::AGAIN)
    }
    fn readiness(&self) -> Readiness {
        Readiness::NONE
    }
    fn arm(&self, _: Readiness) -> Readiness {
        Readiness::NONE
    }
    fn wake_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        rustix::stdio::stdin()
    }
    fn shutdown(&self, _: Shutdown) -> Result<(), rustix::io::Errno> {
        Ok(())
    }
    fn rx_pending(&self) -> usize {
        0
    }
    fn take_error(&self) -> Option<rustix::io::Errno> {
        None
    }
    fn downgrade(&self, _: Reason) -> Result<(), rustix::io::Errno> {
        Ok(())
    }
    fn releasable(&self) -> bool {
        true
    }
    fn stats(&self) -> ConnStats {
        ConnStats::default()
    }
}

#[test]
fn dup_shares_and_the_last_close_closes() {
    let p = Pair::new(1024);
    // SAFETY: plain dup of our own descriptor.
    let d = unsafe { real::dup(p.b()) };
    assert!(d >= 0);
    fdops::on_dup(p.b(), d);
    assert_eq!(write(p.a(), b"hi", 0), 2);
    let mut buf = [0u8; 2];
    assert_eq!(read(d, &mut buf, 0), 2, "the dup reads the same connection");
    fdops::close(p.b());
    assert_eq!(write(p.a(), b"x", 0), 1, "one descriptor left: still open");
    assert_eq!(read(d, &mut buf[..1], 0), 1);
    fdops::close(d);
    // SAFETY: our own descriptor.
    unsafe { real::close(d) };
    assert_eq!(
        read(p.a(), &mut buf, 0),
        0,
        "the peer closed: end of stream"
    );
    assert_eq!(write(p.a(), b"x", libc::MSG_NOSIGNAL), -1);
    assert_eq!(errno(), libc::EPIPE);
}

#[test]
fn close_range_forgets_every_descriptor_in_it() {
    // The range must hold only this test's descriptors: tests run in parallel in one
    // process, and a range spanning `p.a()..=p.b()` once forgot another test's
    // connection whose number fell between them (that test then read end-of-stream,
    // or saw its calls pass through untracked). Two fixed high numbers no other test
    // is given, duplicated from the pair and tracked as `dup2` would track them.
    let p = Pair::new(1024);
    let (lo, hi) = (3000, 3001);
    for (old, new) in [(p.a(), lo), (p.b(), hi)] {
        // SAFETY: plain dup2 of our own descriptor onto a number nothing else uses.
        assert_eq!(unsafe { real::dup2(old, new) }, new);
        fdops::on_dup(old, new);
    }
    fdops::close_range(lo as u32, hi as u32, libc::CLOSE_RANGE_CLOEXEC as c_int);
    assert!(FDS.contains(lo), "CLOEXEC only: nothing closed");
    fdops::close_range(lo as u32, hi as u32, 0);
    assert!(!FDS.contains(lo) && !FDS.contains(hi));
    assert!(
        FDS.contains(p.a()) && FDS.contains(p.b()),
        "outside the range: kept"
    );
    for fd in [lo, hi] {
        // SAFETY: our own duplicates, forgotten above.
        unsafe { real::close(fd) };
    }
}

#[test]
fn one_reader_and_one_writer_thread() {
    let p = Pair::new(4096);
    let a = p.a();
    let total = 1500 * 1400;
    let t = std::thread::spawn(move || {
        let mut sent = 0usize;
        let mut x = 0u8;
        while sent < total {
            let chunk: Vec<u8> = (0..1500)
                .map(|_| {
                    x = x.wrapping_add(1);
                    x
                })
                .collect();
            let n = write(a, &chunk, 0);
            assert_eq!(n, 1500);
            sent += 1500;
        }
        sent
    });
    let mut got = 0usize;
    let mut x = 0u8;
    let mut buf = [0u8; 7000];
    while got < total {
        let n = read(p.b(), &mut buf, 0);
        assert!(n > 0);
        for &b in &buf[..n as usize] {
            x = x.wrapping_add(1);
            assert_eq!(b, x, "byte {got}");
            got += 1;
        }
    }
    assert_eq!(t.join().unwrap(), got);
}

#[test]
fn two_writers_never_interleave_one_write() {
    let p = Pair::new(1000);
    let a = p.a();
    let writers: Vec<_> = [b'A', b'B']
        .into_iter()
        .map(|tag| {
            std::thread::spawn(move || {
                for _ in 0..200 {
                    // Larger than the ring: a blocking write that needs several rounds.
                    assert_eq!(write(a, &[tag; 3000], 0), 3000);
                }
            })
        })
        .collect();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.len() < 2 * 200 * 3000 {
        let n = read(p.b(), &mut buf, 0);
        assert!(n > 0);
        got.extend_from_slice(&buf[..n as usize]);
    }
    for w in writers {
        w.join().unwrap();
    }
    for (i, chunk) in got.chunks(3000).enumerate() {
        assert!(
            chunk.iter().all(|&b| b == chunk[0]),
            "write {i} interleaved"
        );
    }
}

/// A connection whose every call panics.
#[derive(Debug)]
struct Panicky(OwnedFd);

impl Accelerated for Panicky {
    fn try_recv(&self, _: &mut [IoSliceMut<'_>], _: bool) -> Result<usize, rustix::io::Errno> {
        panic!("try_recv")
    }
    fn try_send(&self, _: &[IoSlice<'_>]) -> Result<usize, rustix::io::Errno> {
        panic!("try_send")
    }
    fn readiness(&self) -> Readiness {
        panic!("readiness")
    }
    fn arm(&self, _: Readiness) -> Readiness {
        panic!("arm")
    }
    fn wake_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.0)
    }
    fn shutdown(&self, _: Shutdown) -> Result<(), rustix::io::Errno> {
        panic!("shutdown")
    }
    fn rx_pending(&self) -> usize {
        panic!("rx_pending")
    }
    fn take_error(&self) -> Option<rustix::io::Errno> {
        panic!("take_error")
    }
    fn downgrade(&self, _: Reason) -> Result<(), rustix::io::Errno> {
        panic!("downgrade")
    }
    fn releasable(&self) -> bool {
        panic!("releasable")
    }
    fn stats(&self) -> ConnStats {
        panic!("stats")
    }
}

#[test]
fn a_panicking_connection_gives_eio_never_a_crash() {
    let (a, _b) = tcp_pair();
    let ev = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap();
    accelerate(a.as_raw_fd(), Box::new(Panicky(ev)));
    let mut buf = [0u8; 4];
    assert_eq!(read(a.as_raw_fd(), &mut buf, 0), -1);
    assert_eq!(errno(), libc::EIO);
    assert_eq!(write(a.as_raw_fd(), b"x", 0), -1);
    assert_eq!(errno(), libc::EIO);
    let mut fds = [pfd(a.as_raw_fd(), libc::POLLIN)];
    assert_eq!(ppoll(&mut fds, SHORT), -1);
    assert_eq!(errno(), libc::EIO);
    assert!(crate::guard::panics() >= 3);
    fdops::close(a.as_raw_fd());
}

#[test]
fn untracked_descriptors_pass_through() {
    let (pr, _pw) = rustix::pipe::pipe().unwrap();
    let fd: RawFd = pr.as_raw_fd();
    let mut buf = [0u8; 1];
    assert_eq!(
        read(fd, &mut buf, 0),
        -2,
        "not tracked: the pass-through runs"
    );
    let mut fds = [pfd(fd, libc::POLLIN)];
    assert_eq!(ppoll(&mut fds, SHORT), -2);
}

#[test]
fn a_panicking_connection_does_not_hide_the_others_from_status() {
    // The control socket's `status` walks every accelerated connection. One whose
    // `stats` panics used to unwind the whole answer (caught by the control thread's
    // barrier, so the client got nothing): the operator lost sight of every healthy
    // connection because of one broken one.
    let p = Pair::new(64);
    let (x, _y) = tcp_pair();
    let ev = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap();
    let bad = accelerate(x.as_raw_fd(), Box::new(Panicky(ev)));
    let good = conn_of(p.a());
    let reply = crate::control::respond("status");
    assert!(
        reply.contains(&format!("conn id={} fd={} ", good.id, p.a())),
        "{reply}"
    );
    assert!(
        reply.contains(&format!(
            "conn id={} fd={} stats=unavailable",
            bad.id,
            x.as_raw_fd()
        )),
        "{reply}"
    );
    assert!(reply.contains("end pid="), "{reply}");
    fdops::close(x.as_raw_fd());
}

/// The connection installed on `fd`.
fn conn_of(fd: c_int) -> Arc<Conn> {
    FDS.get(fd)
        .and_then(|e| e.sock().and_then(|s| s.conn.load()))
        .unwrap()
}

/// The epoll set of `ep`, and the connection of `fd`.
fn set_and_conn(ep: &OwnedFd, fd: c_int) -> (Arc<Entry>, Arc<Conn>) {
    let set = FDS.get(ep.as_raw_fd()).unwrap();
    assert!(set.epoll().is_some());
    (set, conn_of(fd))
}

#[test]
fn delete_and_re_add_around_every_write_costs_nothing_and_grows_nothing() {
    // redis-benchmark's event loop deletes and re-adds its socket around every
    // request. Each cycle used to take the connection's wake descriptor out of the
    // private epoll and put it back (two system calls, which is what the emulation
    // saves), and to append one more entry to the socket's list of sets, for ever.
    let p = Pair::new(1024);
    let ep = epoll_new();
    let ev = libc::EPOLLIN as u32;
    for _ in 0..1000 {
        assert_eq!(ctl(&ep, libc::EPOLL_CTL_ADD, p.b(), ev, 1), 0);
        assert_eq!(ctl(&ep, libc::EPOLL_CTL_DEL, p.b(), 0, 0), 0);
    }
    let entry = FDS.get(p.b()).unwrap();
    assert_eq!(lock(&entry.sock().unwrap().emulated_in).len(), 1);
    let (set, conn) = set_and_conn(&ep, p.b());
    let set = set.epoll().unwrap();
    assert!(
        set.watches(&conn),
        "deleted: the wake descriptor stays, idle"
    );
    assert_eq!(set.idle_len(), 1);
    // Re-added: the same watch serves, and a late writer is reported.
    assert_eq!(ctl(&ep, libc::EPOLL_CTL_ADD, p.b(), ev, 7), 0);
    assert_eq!(set.idle_len(), 0);
    assert!(set.watches(&conn));
    let a = p.a();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(write(a, b"x", 0), 1);
    });
    assert_eq!(
        ewait(&ep, Some(Duration::from_secs(10))),
        vec![(libc::EPOLLIN as u32, 7)]
    );
    t.join().unwrap();
}

#[test]
fn a_deleted_connection_is_never_reported_and_its_idle_watch_goes_when_it_fires() {
    let p = Pair::new(1024);
    let q = Pair::new(1024);
    let ep = epoll_new();
    let ev = libc::EPOLLIN as u32;
    assert_eq!(ctl(&ep, libc::EPOLL_CTL_ADD, p.b(), ev, 1), 0);
    assert_eq!(ctl(&ep, libc::EPOLL_CTL_ADD, q.b(), ev, 2), 0);
    assert_eq!(ctl(&ep, libc::EPOLL_CTL_DEL, p.b(), 0, 0), 0);
    // Bytes for the deleted one: its idle wake descriptor fires; it is not reported,
    // and the watch goes for real (else every later sleep would wake at once).
    assert_eq!(write(p.a(), b"ab", 0), 2);
    assert!(ewait(&ep, SHORT).is_empty());
    let (set, conn) = set_and_conn(&ep, p.b());
    let set = set.epoll().unwrap();
    assert_eq!(set.idle_len(), 0);
    assert!(!set.watches(&conn));
    // The other registration still works, and the deleted one comes back when added.
    assert_eq!(write(q.a(), b"c", 0), 1);
    assert_eq!(ewait(&ep, SHORT), vec![(libc::EPOLLIN as u32, 2)]);
    assert_eq!(ctl(&ep, libc::EPOLL_CTL_ADD, p.b(), ev, 3), 0);
    assert!(set.watches(&conn));
    let mut got = ewait(&ep, SHORT);
    got.sort_unstable();
    assert_eq!(
        got,
        vec![(libc::EPOLLIN as u32, 2), (libc::EPOLLIN as u32, 3)]
    );
}

#[test]
fn idle_watches_are_bounded_and_go_when_their_socket_closes() {
    let ep = epoll_new();
    let ev = libc::EPOLLIN as u32;
    let pairs: Vec<Pair> = (0..80).map(|_| Pair::new(64)).collect();
    for (i, p) in pairs.iter().enumerate() {
        assert_eq!(ctl(&ep, libc::EPOLL_CTL_ADD, p.b(), ev, i as u64), 0);
        assert_eq!(ctl(&ep, libc::EPOLL_CTL_DEL, p.b(), 0, 0), 0);
    }
    let set = FDS.get(ep.as_raw_fd()).unwrap();
    let set = set.epoll().unwrap();
    assert_eq!(set.idle_len(), 64);
    let conns: Vec<Arc<Conn>> = pairs.iter().map(|p| set_and_conn(&ep, p.b()).1).collect();
    assert!(!set.watches(&conns[0]), "the oldest were evicted for real");
    assert!(set.watches(&conns[79]));
    // Closing a socket takes its idle watch out at once.
    fdops::close(pairs[79].b());
    assert_eq!(set.idle_len(), 63);
    assert!(!set.watches(&conns[79]));
}
