//! `poll`, `ppoll`, `select`, `pselect` over accelerated sockets.
//!
//! When no descriptor of the call is accelerated, the call is passed through untouched
//! (one table lookup per descriptor, no allocation). Otherwise:
//!
//! ```text
//!  1. each accelerated entry's revents come from its connection's readiness;
//!  2. the other entries are polled by the kernel with timeout 0;
//!  3. nothing ready: spin on (1), then arm every connection and sleep in the kernel's
//!     ppoll on the other entries plus each connection's wake descriptor (standing in
//!     for the accelerated entries), with the caller's timeout and signal mask;
//!     then start over.
//! ```
//!
//! `select`/`pselect` are turned into the same loop over a `pollfd` array, and back
//! (`select` also writes the time left back into its `timeval`, as Linux does).

use core::ffi::c_int;
use std::sync::Arc;

use libc::{nfds_t, pollfd};

use crate::conn::Readiness;
use crate::guard::{fail, Verdict};
use crate::state::{conn_of, Conn};
use crate::wait::{timespec, Deadline};

/// The accelerated entries of a poll set: index and connection.
type Accel = Vec<(usize, Arc<Conn>)>;

/// The accelerated entries of `pfds`, or `None` if there are none (pass through).
fn accelerated(pfds: &[pollfd]) -> Option<Accel> {
    let mut acc: Option<Accel> = None;
    for (i, p) in pfds.iter().enumerate() {
        if p.fd < 0 || !crate::state::FDS.contains(p.fd) {
            continue;
        }
        if let Some((_, c)) = conn_of(p.fd) {
            acc.get_or_insert_with(Vec::new).push((i, c));
        }
    }
    acc
}

/// What `events` asks of a connection, as readiness.
fn interest(events: i16) -> Readiness {
    let mut r = Readiness::NONE;
    if events & (libc::POLLIN | libc::POLLRDNORM) != 0 {
        r = r | Readiness::READ;
    }
    if events & (libc::POLLOUT | libc::POLLWRNORM) != 0 {
        r = r | Readiness::WRITE;
    }
    if events & libc::POLLRDHUP != 0 {
        r = r | Readiness::RDHUP;
    }
    r
}

/// The revents of a connection for `events` (errors and hang-ups always reported).
fn revents(conn: &Conn, events: i16) -> i16 {
    let r = if conn.is_broken() {
        Readiness::ERR | Readiness::HUP
    } else {
        conn.imp.readiness()
    };
    let got = r.and(interest(events) | Readiness::ERR | Readiness::HUP);
    #[allow(clippy::cast_possible_truncation)]
    let mut out = got.0 as i16;
    if got.contains(Readiness::READ) && events & libc::POLLRDNORM != 0 {
        out |= libc::POLLRDNORM;
    }
    if got.contains(Readiness::WRITE) && events & libc::POLLWRNORM != 0 {
        out |= libc::POLLWRNORM;
    }
    out
}

/// Polls `pfds`, whose accelerated entries are `acc`, until something is ready, the
/// deadline passes, or a signal comes. Returns the C result (count, or -1 with errno).
fn poll_emulated(
    pfds: &mut [pollfd],
    acc: &Accel,
    deadline: Deadline,
    mask: *const libc::sigset_t,
) -> c_int {
    let mut scratch: Vec<pollfd> = pfds.to_vec();
    for (i, c) in acc {
        scratch[*i] = pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(&c.imp.wake_fd()),
            events: libc::POLLIN,
            revents: 0,
        };
    }
    let mut spun = false;
    loop {
        let mut acc_ready = acc.iter().any(|(i, c)| revents(c, pfds[*i].events) != 0);
        if !acc_ready && !deadline.passed() {
            if !spun {
                spun = true;
                let mut sp = crate::wait::POLL_SPINNER.with(core::cell::Cell::get);
                acc_ready = sp.spin(
                    deadline,
                    crate::wait::Look {
                        cheap: || {
                            acc.iter().any(|(i, c)| {
                                c.imp
                                    .glance()
                                    .is_none_or(|g| g.shows(interest(pfds[*i].events)))
                            })
                        },
                        full: || acc.iter().any(|(i, c)| revents(c, pfds[*i].events) != 0),
                    },
                );
                crate::wait::POLL_SPINNER.with(|c| c.set(sp));
            }
            if !acc_ready {
                for (i, c) in acc {
                    let want = interest(pfds[*i].events);
                    let r = c.imp.arm(want);
                    acc_ready |= r.intersects(want | Readiness::ERR | Readiness::HUP);
                }
            }
        }
        let ts = if acc_ready {
            Some(timespec(core::time::Duration::ZERO))
        } else {
            Some(timespec(crate::wait::nap(deadline)))
        };
        let ts_c = ts.map(|t| libc::timespec {
            tv_sec: t.tv_sec,
            tv_nsec: t.tv_nsec,
        });
        let tp = ts_c
            .as_ref()
            .map_or(core::ptr::null(), |t| t as *const libc::timespec);
        for p in &mut scratch {
            p.revents = 0;
        }
        let n = nfds_t::try_from(scratch.len()).unwrap_or(nfds_t::MAX);
        // SAFETY: `scratch` holds `n` valid entries; `tp` and `mask` are null or valid.
        let r = unsafe { crate::real::ppoll(scratch.as_mut_ptr(), n, tp, mask) };
        if r < 0 {
            return -1;
        }
        let mut count = 0;
        let mut is_acc = vec![false; pfds.len()];
        for (i, c) in acc {
            is_acc[*i] = true;
            pfds[*i].revents = revents(c, pfds[*i].events);
        }
        for (j, p) in pfds.iter_mut().enumerate() {
            if !is_acc[j] {
                p.revents = scratch[j].revents;
            }
            if p.revents != 0 {
                count += 1;
            }
        }
        if count > 0 || deadline.passed() {
            return count;
        }
    }
}

/// `poll`/`ppoll`: `Pass` if no entry is accelerated.
///
/// # Safety
///
/// `fds` is valid for `n` entries; `mask` is null or a valid signal set.
pub(crate) unsafe fn poll(
    fds: *mut pollfd,
    n: nfds_t,
    timeout: Option<core::time::Duration>,
    mask: *const libc::sigset_t,
) -> Verdict<c_int> {
    if fds.is_null() || n == 0 {
        return Verdict::Pass;
    }
    let Ok(len) = usize::try_from(n) else {
        return Verdict::Pass;
    };
    // SAFETY: `fds` is valid for `n` entries (caller).
    let pfds = unsafe { core::slice::from_raw_parts_mut(fds, len) };
    let Some(acc) = accelerated(pfds) else {
        return Verdict::Pass;
    };
    Verdict::Done(poll_emulated(pfds, &acc, Deadline::after(timeout), mask))
}

/// A `poll` timeout in milliseconds (negative: forever) as a `Duration`.
pub(crate) fn ms(timeout: c_int) -> Option<core::time::Duration> {
    u64::try_from(timeout)
        .ok()
        .map(core::time::Duration::from_millis)
}

/// Whether bit `fd` is set in the `fd_set` at `set` (null: no set).
///
/// # Safety
///
/// `set` is null or valid for at least `fd / 8 + 1` bytes.
unsafe fn is_set(set: *const libc::fd_set, fd: usize) -> bool {
    if set.is_null() {
        return false;
    }
    // SAFETY: an fd_set is an array of `c_ulong` bit words; word `fd / 64` is in range
    // (caller).
    let word = unsafe { set.cast::<u64>().add(fd / 64).read_unaligned() };
    word & (1 << (fd % 64)) != 0
}

/// Sets bit `fd` in the `fd_set` at `set`.
///
/// # Safety
///
/// As [`is_set`], for writes.
unsafe fn set_bit(set: *mut libc::fd_set, fd: usize) {
    if set.is_null() {
        return;
    }
    // SAFETY: as in `is_set`.
    unsafe {
        let p = set.cast::<u64>().add(fd / 64);
        p.write_unaligned(p.read_unaligned() | (1 << (fd % 64)));
    }
}

/// Clears the first `nfds` bits of the `fd_set` at `set`.
///
/// # Safety
///
/// As [`is_set`], for `nfds` bits and writes.
unsafe fn clear(set: *mut libc::fd_set, nfds: usize) {
    if set.is_null() {
        return;
    }
    for w in 0..nfds.div_ceil(64) {
        // SAFETY: word `w` is within the first `nfds` bits (caller).
        unsafe {
            let p = set.cast::<u64>().add(w);
            let keep = if (w + 1) * 64 > nfds {
                // Bits at and above `nfds` in the last word are the caller's.
                !0u64 << (nfds % 64)
            } else {
                0
            };
            p.write_unaligned(p.read_unaligned() & keep);
        }
    }
}

/// `select`/`pselect`: `Pass` if no descriptor in the sets is accelerated.
///
/// On success, `*left` (if given) is the time left, for `select`'s `timeval`.
///
/// # Safety
///
/// The sets are null or valid for `nfds` bits; `mask` is null or a valid signal set.
pub(crate) unsafe fn select(
    nfds: c_int,
    r: *mut libc::fd_set,
    w: *mut libc::fd_set,
    e: *mut libc::fd_set,
    timeout: Option<core::time::Duration>,
    mask: *const libc::sigset_t,
    left: Option<&mut Option<core::time::Duration>>,
) -> Verdict<c_int> {
    let Ok(n) = usize::try_from(nfds) else {
        return Verdict::Pass;
    };
    let mut pfds = Vec::new();
    let mut any = false;
    for fd in 0..n {
        // SAFETY: the sets hold `nfds` bits (caller).
        let (rr, ww, ee) = unsafe { (is_set(r, fd), is_set(w, fd), is_set(e, fd)) };
        if !(rr || ww || ee) {
            continue;
        }
        #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
        let fdi = fd as c_int;
        any |= crate::state::FDS.contains(fdi) && conn_of(fdi).is_some();
        let mut events = 0;
        if rr {
            events |= libc::POLLIN;
        }
        if ww {
            events |= libc::POLLOUT;
        }
        if ee {
            events |= libc::POLLPRI;
        }
        pfds.push(pollfd {
            fd: fdi,
            events,
            revents: 0,
        });
    }
    if !any {
        return Verdict::Pass;
    }
    let Some(acc) = accelerated(&pfds) else {
        return Verdict::Pass;
    };
    let deadline = Deadline::after(timeout);
    let rc = poll_emulated(&mut pfds, &acc, deadline, mask);
    if rc < 0 {
        return Verdict::Done(-1);
    }
    if pfds.iter().any(|p| p.revents & libc::POLLNVAL != 0) {
        return Verdict::Done(fail(libc::EBADF));
    }
    // SAFETY: the sets hold `nfds` bits (caller).
    unsafe {
        clear(r, n);
        clear(w, n);
        clear(e, n);
    }
    let mut count = 0;
    for p in &pfds {
        #[allow(clippy::cast_sign_loss)]
        let fd = p.fd as usize;
        let rev = p.revents;
        // SAFETY: as above; `fd < nfds`.
        unsafe {
            if p.events & libc::POLLIN != 0
                && rev & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0
            {
                set_bit(r, fd);
                count += 1;
            }
            if p.events & libc::POLLOUT != 0 && rev & (libc::POLLOUT | libc::POLLERR) != 0 {
                set_bit(w, fd);
                count += 1;
            }
            if p.events & libc::POLLPRI != 0 && rev & libc::POLLPRI != 0 {
                set_bit(e, fd);
                count += 1;
            }
        }
    }
    if let Some(l) = left {
        *l = deadline.remaining();
    }
    Verdict::Done(count)
}
