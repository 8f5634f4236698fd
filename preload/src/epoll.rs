//! epoll over accelerated sockets.
//!
//! The kernel cannot see an accelerated socket's readiness (its TCP socket is idle and
//! always writable), so such a socket never sits in the kernel's interest list. Its
//! registration is kept here, in the [`EpollSet`] of the application's epoll descriptor,
//! and `epoll_wait` merges two sources:
//!
//! ```text
//!  epoll_wait(epfd)
//!    1. emulated registrations: readiness from each connection      (level / edge / oneshot)
//!    2. the kernel's: epoll_wait(epfd, timeout 0)                    (plain descriptors)
//!    nothing yet: spin on (1) for the spin budget, then arm every connection's
//!    wake-ups and sleep in ppoll([epfd, inner]) where `inner` is a private epoll
//!    holding each connection's wake descriptor; then start over.
//! ```
//!
//! Edge-triggered registrations report when a readiness bit appears that was not
//! reported yet, when new bytes arrived ([`crate::conn::Accelerated::rx_seq`]), or after the
//! application saw `EAGAIN` on the socket (the usual "read until `EAGAIN`" re-arms):
//! at worst one spurious edge, never a missed one. `EPOLLONESHOT` disables the
//! registration after one report until `EPOLL_CTL_MOD`.
//!
//! A plain TCP socket's kernel registrations are remembered (they are passed through),
//! so that when the socket becomes accelerated later (a non-blocking `connect` that
//! completed) they move here, and when a connection is handed back to the kernel they
//! move back.
//!
//! Not covered: an epoll descriptor holding accelerated sockets that is itself polled
//! (nested in another epoll, or given to `poll`/`select`) reports only its kernel
//! registrations there.

use core::ffi::c_int;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use core::time::Duration;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use libc::epoll_event;
use rustix::event::epoll;

use crate::conn::Readiness;
use crate::guard::{errno, fail, Verdict};
use crate::state::{lock, Conn, Entry, KernelReg, Sock, FDS};
use crate::wait::Deadline;

/// The bits of `events` that are readiness (the rest are `EPOLLET` and friends).
const READY_BITS: u32 = (libc::EPOLLIN
    | libc::EPOLLOUT
    | libc::EPOLLRDHUP
    | libc::EPOLLPRI
    | libc::EPOLLERR
    | libc::EPOLLHUP
    | libc::EPOLLRDNORM
    | libc::EPOLLWRNORM) as u32;

/// One emulated registration.
#[derive(Debug)]
struct Reg {
    /// The registered descriptor.
    fd: c_int,
    /// The epoll descriptor the application registered it with.
    epfd: c_int,
    /// The socket's entry.
    sock: Weak<Entry>,
    /// Its connection.
    conn: Arc<Conn>,
    /// The registered events (with `EPOLLET`, `EPOLLONESHOT`...).
    events: u32,
    /// The registered data.
    data: u64,
    /// Edge-triggered: the bits reported and still ready since.
    reported: Readiness,
    /// Edge-triggered: the connection's kicks at the last report.
    seen_kicks: u64,
    /// Edge-triggered: the connection's `rx_seq` at the last report.
    seen_rx: u64,
    /// `EPOLLONESHOT` fired: nothing is reported until `EPOLL_CTL_MOD`.
    disabled: bool,
}

impl Reg {
    /// The readiness this registration asks for (errors and hang-ups always count).
    fn interest(&self) -> Readiness {
        let mut r = Readiness::ERR | Readiness::HUP;
        if self.events & (libc::EPOLLIN | libc::EPOLLRDNORM) as u32 != 0 {
            r = r | Readiness::READ;
        }
        if self.events & (libc::EPOLLOUT | libc::EPOLLWRNORM) as u32 != 0 {
            r = r | Readiness::WRITE;
        }
        if self.events & libc::EPOLLRDHUP as u32 != 0 {
            r = r | Readiness::RDHUP;
        }
        r
    }

    /// The connection's readiness, `fired` saying whether its wake descriptor is
    /// readable (asked of the private epoll once for all registrations).
    fn readiness(&self, fired: bool) -> Readiness {
        if self.conn.is_broken() {
            Readiness::ERR | Readiness::HUP
        } else {
            self.conn.imp.readiness_known(fired)
        }
    }

    /// The events to report now, if any (pure: no state changes).
    fn due(&self, fired: bool) -> Option<u32> {
        if self.disabled {
            return None;
        }
        self.due_given(self.readiness(fired))
    }

    /// The events to report if the connection's readiness is `r` (pure).
    fn due_given(&self, r: Readiness) -> Option<u32> {
        if self.disabled {
            return None;
        }
        let ready = r.and(self.interest());
        if ready.is_empty() {
            return None;
        }
        if self.events & libc::EPOLLET as u32 != 0 {
            let fresh = Readiness(ready.0 & !self.reported.0);
            // Relaxed: see `Conn::kick`.
            let kicked = self.conn.kicks.load(Ordering::Relaxed) != self.seen_kicks;
            let arrived = self.conn.imp.rx_seq() != self.seen_rx && ready.contains(Readiness::READ);
            if fresh.is_empty() && !kicked && !arrived {
                return None;
            }
        }
        let mut ev = ready.0;
        if ready.contains(Readiness::READ) && self.events & libc::EPOLLRDNORM as u32 != 0 {
            ev |= libc::EPOLLRDNORM as u32;
        }
        if ready.contains(Readiness::WRITE) && self.events & libc::EPOLLWRNORM as u32 != 0 {
            ev |= libc::EPOLLWRNORM as u32;
        }
        Some(ev & READY_BITS)
    }

    /// Records that `ev` was reported.
    fn reported(&mut self, ev: u32) {
        self.reported = Readiness(ev);
        // Relaxed: see `Conn::kick`.
        self.seen_kicks = self.conn.kicks.load(Ordering::Relaxed);
        self.seen_rx = self.conn.imp.rx_seq();
        if self.events & libc::EPOLLONESHOT as u32 != 0 {
            self.disabled = true;
        }
    }

    /// Edge-triggered: forgets reported bits that are no longer ready, so that their
    /// return is an edge.
    fn settle(&mut self, fired: bool) {
        if self.events & libc::EPOLLET as u32 != 0 && !self.reported.is_empty() {
            let now = self.readiness(fired);
            self.reported = self.reported.and(now);
        }
    }
}

/// A connection the application took out of the set (`EPOLL_CTL_DEL`) whose wake
/// descriptor is left in the private epoll for a while.
///
/// Event loops delete and re-add a descriptor around every write (redis-benchmark's
/// `ae` loop: five `epoll_ctl` per request): taking the wake descriptor out of the
/// private epoll at once made each of those a system call again, which is what the
/// emulation exists to save. It goes for real when it fires unused (at most one
/// spurious look of a `wait`), when its socket is closed or handed back to the kernel,
/// or when more than [`MAX_IDLE`] are left.
#[derive(Debug)]
struct Idle {
    /// The connection's id (the private epoll's event data).
    id: u64,
    /// Its socket's entry (close and hand-back find their idle watches by it).
    sock: Weak<Entry>,
    /// The connection (for its wake descriptor when the watch goes for real).
    conn: Weak<Conn>,
}

/// Removes the items `gone` selects from `v` (order not kept) and returns them.
fn take_where<T>(v: &mut Vec<T>, mut gone: impl FnMut(&T) -> bool) -> Vec<T> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < v.len() {
        if gone(&v[i]) {
            out.push(v.swap_remove(i));
        } else {
            i += 1;
        }
    }
    out
}

/// Idle watches kept per epoll set (bounded memory whatever the application does).
const MAX_IDLE: usize = 64;

/// The emulated half of one epoll instance.
#[derive(Debug, Default)]
pub(crate) struct EpollSet {
    /// The emulated registrations.
    regs: Mutex<Vec<Reg>>,
    /// `regs.len()`, readable without the lock (the fast "nothing emulated" path).
    count: AtomicUsize,
    /// Where the next scan starts (fairness among ready registrations).
    cursor: AtomicUsize,
    /// A private epoll holding each emulated connection's wake descriptor.
    inner: OnceLock<OwnedFd>,
    /// Connections whose wake descriptor stays in `inner` though no registration uses
    /// it any more (see [`Idle`]). Lock order: `regs`, then `idle`.
    idle: Mutex<Vec<Idle>>,
    /// What spinning achieved in this set's waits (`wait::Spinner`).
    spinner: Mutex<crate::wait::Spinner>,
    /// When [`Self::fired`] last asked the kernel (`wait::now_us`).
    kernel_looked: AtomicU64,
    /// Whether [`Self::kernel_members`] is the whole truth: the set was created under
    /// the library (`epoll_create`), and nothing since showed a registration it missed.
    kernel_known: AtomicBool,
    /// Registrations in the kernel's half, as counted by [`kernel_ctl`] (added minus
    /// deleted; a descriptor closed while registered leaves it high, the safe side).
    kernel_members: AtomicUsize,
    /// When `wait` last asked the kernel's half (`wait::now_us`).
    kernel_waited: AtomicU64,
}

/// How long `wait` trusts "the kernel's half is empty" before asking anyway: a
/// registration made behind the library's back (a raw system call, another process
/// sharing the epoll) is seen at least this often, and at once when a sleep wakes on
/// it.
const KERNEL_TRUST_US: u64 = 1000;

/// The longest the emulated registrations go without asking the private epoll while
/// their glances keep showing something due: what only the kernel sees (bytes on a
/// TCP path, a hang-up) waits at most this long behind a busy ring.
const KERNEL_LOOK_PERIOD_US: u64 = 50;

impl EpollSet {
    /// The private epoll, created on first use.
    fn inner(&self) -> Option<&OwnedFd> {
        if self.inner.get().is_none() {
            if let Ok(fd) = epoll::create(epoll::CreateFlags::CLOEXEC) {
                let _ = self.inner.set(fd);
            }
        }
        self.inner.get()
    }

    /// Adds `conn`'s wake descriptor to the private epoll (once per connection; none
    /// if it is still there, idle, or already used by another registration).
    fn watch(&self, regs: &[Reg], conn: &Conn) {
        if regs.iter().any(|r| r.conn.id == conn.id) {
            return;
        }
        {
            let mut idle = lock(&self.idle);
            if let Some(i) = idle.iter().position(|w| w.id == conn.id) {
                idle.swap_remove(i);
                return;
            }
        }
        if let Some(inner) = self.inner() {
            let _ = epoll::add(
                inner,
                conn.imp.wake_fd(),
                epoll::EventData::new_u64(conn.id),
                epoll::EventFlags::IN,
            );
        }
    }

    /// `conn`'s wake descriptor, once no registration uses it: left in the private
    /// epoll, idle (`lazy`: the application's `EPOLL_CTL_DEL`), or removed now.
    fn unwatch_if_unused(&self, regs: &[Reg], reg: &Reg, lazy: bool) {
        if regs.iter().any(|r| r.conn.id == reg.conn.id) {
            return;
        }
        if !lazy {
            self.delete(&reg.conn);
            return;
        }
        let evicted = {
            let mut idle = lock(&self.idle);
            idle.push(Idle {
                id: reg.conn.id,
                sock: reg.sock.clone(),
                conn: Arc::downgrade(&reg.conn),
            });
            if idle.len() > MAX_IDLE {
                Some(idle.remove(0))
            } else {
                None
            }
        };
        if let Some(conn) = evicted.and_then(|w| w.conn.upgrade()) {
            self.delete(&conn);
        }
    }

    /// Takes `conn`'s wake descriptor out of the private epoll.
    fn delete(&self, conn: &Conn) {
        if let Some(inner) = self.inner.get() {
            let _ = epoll::delete(inner, conn.imp.wake_fd());
        }
    }

    /// Removes the idle watches `gone` selects from the private epoll.
    fn drop_idle(&self, mut gone: impl FnMut(&Idle) -> bool) {
        let dropped = take_where(&mut lock(&self.idle), |w| gone(w));
        for conn in dropped.iter().filter_map(|w| w.conn.upgrade()) {
            self.delete(&conn);
        }
    }

    /// Adds a registration.
    fn add(&self, reg: Reg) -> Result<(), c_int> {
        let mut regs = lock(&self.regs);
        if regs.iter().any(|r| r.fd == reg.fd) {
            return Err(libc::EEXIST);
        }
        self.watch(&regs, &reg.conn);
        regs.push(reg);
        // Relaxed: a hint for the fast path; the lock orders the real state.
        self.count.store(regs.len(), Ordering::Relaxed);
        Ok(())
    }

    /// Removes the registrations that `gone` selects; returns them. `lazy`: the
    /// application's `EPOLL_CTL_DEL`, whose wake descriptors may stay, idle.
    fn remove_where(&self, lazy: bool, mut gone: impl FnMut(&Reg) -> bool) -> Vec<Reg> {
        let mut regs = lock(&self.regs);
        let out = take_where(&mut regs, |r| gone(r));
        for r in &out {
            self.unwatch_if_unused(&regs, r, lazy);
        }
        // Relaxed: as in `add`.
        self.count.store(regs.len(), Ordering::Relaxed);
        out
    }

    /// Whether any registration is emulated.
    /// A set for an epoll descriptor just created: its kernel half is empty and every
    /// change to it is seen by [`kernel_ctl`].
    fn created() -> Self {
        Self {
            kernel_known: AtomicBool::new(true),
            ..Self::default()
        }
    }

    /// Whether `wait` must ask the kernel's half (`epoll_wait` with timeout 0): it may
    /// hold registrations, or it was not asked for [`KERNEL_TRUST_US`].
    fn kernel_may_hold(&self) -> bool {
        // Relaxed: counters and hints; a registration racing with a wait is reported
        // by a later look, as with the kernel's own epoll.
        !self.kernel_known.load(Ordering::Relaxed)
            || self.kernel_members.load(Ordering::Relaxed) != 0
            || crate::wait::now_us().saturating_sub(self.kernel_waited.load(Ordering::Relaxed))
                >= KERNEL_TRUST_US
    }

    /// The kernel's half reported readiness: if the count says it is empty, a
    /// registration was made behind the library's back (a raw system call); ask the
    /// kernel every time from now on.
    fn kernel_reported(&self) {
        // Relaxed: see `kernel_may_hold`.
        if self.kernel_known.load(Ordering::Relaxed)
            && self.kernel_members.load(Ordering::Relaxed) == 0
        {
            tracing::debug!(
                target: "coresident_preload",
                "epoll: a kernel registration the library did not see; counting stops"
            );
            self.kernel_known.store(false, Ordering::Relaxed);
        }
    }

    pub(crate) fn is_active(&self) -> bool {
        // Relaxed: see `add`.
        self.count.load(Ordering::Relaxed) != 0
    }

    /// The connections whose wake descriptor is readable now: one `epoll_wait` with
    /// timeout 0 on the private epoll, for every registration at once.
    fn fired(&self) -> Vec<u64> {
        let Some(inner) = self.inner.get() else {
            return Vec::new();
        };
        // Relaxed: a time stamp for a heuristic.
        self.kernel_looked
            .store(crate::wait::now_us(), Ordering::Relaxed);
        // Room for every registration: a connection left out would wait for the next
        // look.
        // Relaxed: see `add`.
        let mut evs = Vec::with_capacity(self.count.load(Ordering::Relaxed).max(16));
        let zero = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let _ = epoll::wait(inner, rustix::buffer::spare_capacity(&mut evs), Some(&zero));
        let fired: Vec<u64> = evs.iter().map(|e| e.data.u64()).collect();
        // An idle watch that fired would wake every sleep from now on: it goes now.
        // Any id fired here that a registration re-took since is no longer idle.
        if !fired.is_empty() && !lock(&self.idle).is_empty() {
            self.drop_idle(|w| fired.contains(&w.id));
        }
        fired
    }

    /// [`Self::fired`], unless the glances already show something due and the kernel
    /// was asked less than [`KERNEL_LOOK_PERIOD_US`] ago: then `None` (a ring's bytes
    /// need no system call to be seen).
    fn fired_unless_glanced(&self) -> Option<Vec<u64>> {
        // Relaxed: see `fired`.
        let since =
            crate::wait::now_us().saturating_sub(self.kernel_looked.load(Ordering::Relaxed));
        if since < KERNEL_LOOK_PERIOD_US && self.any_hint() {
            return None;
        }
        Some(self.fired())
    }

    /// Fills `out` with due events (up to its length); returns how many.
    fn collect(&self, out: &mut [epoll_event]) -> usize {
        let fired = self.fired_unless_glanced().unwrap_or_default();
        let mut regs = lock(&self.regs);
        let len = regs.len();
        if len == 0 || out.is_empty() {
            return 0;
        }
        // Relaxed: fairness only.
        let start = self.cursor.load(Ordering::Relaxed) % len;
        let mut n = 0;
        for k in 0..len {
            let i = (start + k) % len;
            let reg = &mut regs[i];
            let f = fired.contains(&reg.conn.id);
            reg.settle(f);
            if let Some(ev) = reg.due(f) {
                out[n] = epoll_event {
                    events: ev,
                    u64: reg.data,
                };
                reg.reported(ev);
                n += 1;
                if n == out.len() {
                    self.cursor.store(i + 1, Ordering::Relaxed);
                    return n;
                }
            }
        }
        self.cursor.store(start + 1, Ordering::Relaxed);
        n
    }

    /// Whether some registration has something due (no state change).
    fn any_due(&self) -> bool {
        let Some(fired) = self.fired_unless_glanced() else {
            return true;
        };
        lock(&self.regs)
            .iter()
            .any(|r| r.due(fired.contains(&r.conn.id)).is_some())
    }

    /// Whether some registration may have something due, by the connections' looks
    /// that make no system call ([`crate::conn::Accelerated::glance`]).
    fn any_hint(&self) -> bool {
        lock(&self.regs).iter().any(|r| {
            !r.disabled
                && r.conn.imp.glance().is_none_or(|g| {
                    (g.fresh && r.interest().contains(Readiness::READ))
                        || r.due_given(g.ready).is_some()
                })
        })
    }

    /// Arms every connection's wake-ups for its registrations; returns whether something
    /// is due after arming (then do not sleep).
    fn arm_all(&self) -> bool {
        let fired = self.fired();
        let regs = lock(&self.regs);
        let mut due = false;
        for r in regs.iter().filter(|r| !r.disabled) {
            let f = fired.contains(&r.conn.id);
            let _ = r.conn.imp.arm_known(r.interest(), f);
            due |= r.due(f).is_some();
        }
        due
    }
}

/// The epoll set of `epfd`, creating its entry if the kernel says `epfd` is an epoll.
fn set_of(epfd: c_int, create: bool) -> Option<Arc<Entry>> {
    if let Some(e) = FDS.get(epfd) {
        return e.epoll().is_some().then_some(e);
    }
    if !create || !is_epoll(epfd) {
        return None;
    }
    let e = Arc::new(Entry::Epoll(EpollSet::default()));
    crate::fdops::put(epfd, e.clone());
    Some(e)
}

/// Whether `fd` is an epoll descriptor (by its `/proc/self/fd` link).
fn is_epoll(fd: c_int) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .is_ok_and(|p| p.as_os_str() == "anon_inode:[eventpoll]")
}

/// After a successful `epoll_create`/`epoll_create1`.
pub(crate) fn on_create(epfd: c_int) {
    crate::fdops::put(epfd, Arc::new(Entry::Epoll(EpollSet::created())));
}

/// The kernel's `epoll_ctl`, counted in `epfd`'s set (its kernel half's size, which
/// lets `wait` skip asking an empty kernel half). Every `epoll_ctl` the library passes
/// through or makes on an application's epoll goes through here.
///
/// # Safety
///
/// As `epoll_ctl`: `ev` is null or valid for reads and writes.
pub(crate) unsafe fn kernel_ctl(epfd: c_int, op: c_int, fd: c_int, ev: *mut epoll_event) -> c_int {
    // SAFETY: the caller's arguments (the contract above).
    let r = unsafe { crate::real::epoll_ctl(epfd, op, fd, ev) };
    if r == 0 && (op == libc::EPOLL_CTL_ADD || op == libc::EPOLL_CTL_DEL) {
        let saved = errno();
        if let Some(set) = FDS.get(epfd).as_deref().and_then(Entry::epoll) {
            // Relaxed: a counter (see `kernel_may_hold`).
            if op == libc::EPOLL_CTL_ADD {
                set.kernel_members.fetch_add(1, Ordering::Relaxed);
            } else {
                let _ =
                    set.kernel_members
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                            Some(n.saturating_sub(1))
                        });
            }
        }
        crate::guard::set_errno(saved);
    }
    r
}

/// `epoll_ctl(epfd, op, fd, ev)`.
///
/// # Safety
///
/// `ev` is null or valid for reads (the C contract).
pub(crate) unsafe fn ctl(
    epfd: c_int,
    op: c_int,
    fd: c_int,
    ev: *mut epoll_event,
) -> Verdict<c_int> {
    let Some(target) = FDS.get(fd) else {
        return Verdict::Pass;
    };
    let Some(sock) = target.sock() else {
        return Verdict::Pass;
    };
    let read_ev = || {
        if ev.is_null() {
            None
        } else {
            // SAFETY: `ev` is non-null and valid (caller).
            Some(unsafe { ev.read_unaligned() })
        }
    };
    let Some(conn) = sock.conn.load() else {
        // A plain socket: the kernel's business, remembered for a later move.
        // SAFETY: the caller's arguments, passed on unchanged.
        let r = unsafe { kernel_ctl(epfd, op, fd, ev) };
        if r == 0 {
            let saved = errno();
            remember_kernel(epfd, op, fd, read_ev(), &target);
            crate::guard::set_errno(saved);
        }
        return Verdict::Done(r);
    };
    let Some(set_entry) = set_of(epfd, true) else {
        return Verdict::Done(fail(if epfd == fd {
            libc::EINVAL
        } else {
            libc::EBADF
        }));
    };
    let Some(set) = set_entry.epoll() else {
        return Verdict::Done(fail(libc::EINVAL));
    };
    match op {
        libc::EPOLL_CTL_ADD => {
            let Some(e) = read_ev() else {
                return Verdict::Done(fail(libc::EFAULT));
            };
            let reg = Reg {
                fd,
                epfd,
                sock: Arc::downgrade(&target),
                conn,
                events: e.events,
                data: e.u64,
                reported: Readiness::NONE,
                seen_kicks: 0,
                seen_rx: 0,
                disabled: false,
            };
            match set.add(reg) {
                Ok(()) => {
                    note_emulated_in(sock, &set_entry);
                    Verdict::Done(0)
                }
                Err(e) => Verdict::Done(fail(e)),
            }
        }
        libc::EPOLL_CTL_MOD => {
            let Some(e) = read_ev() else {
                return Verdict::Done(fail(libc::EFAULT));
            };
            let mut regs = lock(&set.regs);
            match regs.iter_mut().find(|r| r.fd == fd) {
                Some(r) => {
                    r.events = e.events;
                    r.data = e.u64;
                    r.reported = Readiness::NONE;
                    r.disabled = false;
                    Verdict::Done(0)
                }
                None => Verdict::Done(fail(libc::ENOENT)),
            }
        }
        libc::EPOLL_CTL_DEL => {
            if set.remove_where(true, |r| r.fd == fd).is_empty() {
                Verdict::Done(fail(libc::ENOENT))
            } else {
                Verdict::Done(0)
            }
        }
        _ => Verdict::Done(fail(libc::EINVAL)),
    }
}

/// Records that `sock` has (or had) a registration in `set_entry`'s set, once: an
/// application that deletes and re-adds a socket around every write must not grow
/// the list (it did, by one entry per `EPOLL_CTL_ADD`, for the socket's lifetime).
fn note_emulated_in(sock: &Sock, set_entry: &Arc<Entry>) {
    let mut sets = lock(&sock.emulated_in);
    if !sets
        .iter()
        .any(|w| core::ptr::eq(w.as_ptr(), Arc::as_ptr(set_entry)))
    {
        sets.retain(|w| w.strong_count() > 0);
        sets.push(Arc::downgrade(set_entry));
    }
}

/// Records a successful kernel `epoll_ctl` on a plain tracked socket.
fn remember_kernel(
    epfd: c_int,
    op: c_int,
    fd: c_int,
    ev: Option<epoll_event>,
    target: &Arc<Entry>,
) {
    let Some(sock) = target.sock() else { return };
    // The kernel accepted `epfd` as an epoll: make sure it has an entry.
    let _ = set_of(epfd, true);
    let mut regs = lock(&sock.kernel_regs);
    regs.retain(|r| !(r.epfd == epfd && r.fd == fd));
    if op != libc::EPOLL_CTL_DEL {
        if let Some(e) = ev {
            regs.push(KernelReg {
                epfd,
                fd,
                events: e.events,
                data: e.u64,
            });
        }
    }
}

/// The socket of `entry` was just accelerated: its kernel registrations move into the
/// emulation.
pub(crate) fn take_from_kernel(entry: &Arc<Entry>) {
    let Some(sock) = entry.sock() else { return };
    let Some(conn) = sock.conn.load() else { return };
    let moving: Vec<KernelReg> = core::mem::take(&mut *lock(&sock.kernel_regs));
    for kr in moving {
        let Some(set_entry) = set_of(kr.epfd, false) else {
            continue;
        };
        let Some(set) = set_entry.epoll() else {
            continue;
        };
        // SAFETY: plain `epoll_ctl` on the application's descriptors, a null event is
        // allowed for `EPOLL_CTL_DEL`.
        let r = unsafe { kernel_ctl(kr.epfd, libc::EPOLL_CTL_DEL, kr.fd, core::ptr::null_mut()) };
        if r != 0 {
            continue;
        }
        let reg = Reg {
            fd: kr.fd,
            epfd: kr.epfd,
            sock: Arc::downgrade(entry),
            conn: conn.clone(),
            events: kr.events,
            data: kr.data,
            reported: Readiness::NONE,
            seen_kicks: 0,
            seen_rx: 0,
            disabled: false,
        };
        if set.add(reg).is_ok() {
            note_emulated_in(sock, &set_entry);
        }
    }
}

/// The socket of `entry` was handed back to the kernel: its emulated registrations go
/// back into the kernel's interest lists.
pub(crate) fn return_to_kernel(entry: &Arc<Entry>) {
    let Some(sock) = entry.sock() else { return };
    let sets: Vec<Weak<Entry>> = core::mem::take(&mut *lock(&sock.emulated_in));
    for w in sets {
        let Some(set_entry) = w.upgrade() else {
            continue;
        };
        let Some(set) = set_entry.epoll() else {
            continue;
        };
        let moved = set.remove_where(false, |r| r.sock.as_ptr() == Arc::as_ptr(entry));
        set.drop_idle(|w| w.sock.as_ptr() == Arc::as_ptr(entry));
        for r in moved {
            let mut ev = epoll_event {
                events: r.events,
                u64: r.data,
            };
            if r.disabled {
                // A fired oneshot stays disabled in the kernel too: registered with no
                // events until the application's `EPOLL_CTL_MOD`.
                ev.events &= !READY_BITS;
            }
            // SAFETY: plain `epoll_ctl` with a valid event.
            let ok = unsafe { kernel_ctl(r.epfd, libc::EPOLL_CTL_ADD, r.fd, &mut ev) } == 0;
            if ok {
                lock(&sock.kernel_regs).push(KernelReg {
                    epfd: r.epfd,
                    fd: r.fd,
                    events: ev.events,
                    data: r.data,
                });
            }
        }
    }
}

/// `fd` (a socket) is being closed: its emulated registrations under that number go.
pub(crate) fn forget_fd(entry: &Arc<Entry>, fd: c_int) {
    let Some(sock) = entry.sock() else { return };
    lock(&sock.kernel_regs).retain(|r| r.fd != fd);
    let sets: Vec<Weak<Entry>> = lock(&sock.emulated_in).clone();
    for w in sets {
        if let Some(set_entry) = w.upgrade() {
            if let Some(set) = set_entry.epoll() {
                let _ = set.remove_where(false, |r| r.fd == fd);
                set.drop_idle(|w| w.sock.as_ptr() == Arc::as_ptr(entry));
            }
        }
    }
    lock(&sock.emulated_in).retain(|w| w.strong_count() > 0);
}

/// `epoll_wait`/`epoll_pwait`/`epoll_pwait2` on `epfd`: `Pass` when nothing in the set
/// is emulated.
///
/// # Safety
///
/// `evs` is valid for `max` events and `mask` is null or a valid signal set (the C
/// contract).
pub(crate) unsafe fn wait(
    epfd: c_int,
    evs: *mut epoll_event,
    max: c_int,
    timeout: Option<Duration>,
    mask: *const libc::sigset_t,
) -> Verdict<c_int> {
    let Some(entry) = FDS.get(epfd) else {
        return Verdict::Pass;
    };
    let Some(set) = entry.epoll() else {
        return Verdict::Pass;
    };
    if !set.is_active() {
        return Verdict::Pass;
    }
    let Ok(max_n) = usize::try_from(max) else {
        return Verdict::Done(fail(libc::EINVAL));
    };
    if max_n == 0 || evs.is_null() {
        return Verdict::Done(fail(if max_n == 0 {
            libc::EINVAL
        } else {
            libc::EFAULT
        }));
    }
    // SAFETY: `evs` is valid for `max` events (caller).
    let out = unsafe { core::slice::from_raw_parts_mut(evs, max_n) };
    let deadline = Deadline::after(timeout);
    let mut spun = false;
    loop {
        let mut n = set.collect(out);
        if n < max_n && set.kernel_may_hold() {
            // Relaxed: see `kernel_may_hold`.
            set.kernel_waited
                .store(crate::wait::now_us(), Ordering::Relaxed);
            let room = c_int::try_from(max_n - n).unwrap_or(c_int::MAX);
            // SAFETY: `out[n..]` is valid for `room` events.
            let k = unsafe { crate::real::epoll_wait(epfd, out[n..].as_mut_ptr(), room, 0) };
            if k > 0 {
                n += usize::try_from(k).unwrap_or(0);
                set.kernel_reported();
            } else if k < 0 && n == 0 {
                return Verdict::Done(-1);
            }
        }
        if n > 0 {
            return Verdict::Done(c_int::try_from(n).unwrap_or(c_int::MAX));
        }
        if deadline.passed() {
            return Verdict::Done(0);
        }
        if !spun {
            spun = true;
            let mut sp = *lock(&set.spinner);
            let hit = sp.spin(
                deadline,
                crate::wait::Look {
                    cheap: || set.any_hint(),
                    full: || set.any_due(),
                },
            );
            *lock(&set.spinner) = sp;
            if hit {
                continue;
            }
        }
        if set.arm_all() {
            continue;
        }
        // Sleep until the kernel's side or a connection's wake-up fires.
        // SAFETY: `epfd` is the caller's open descriptor for this call.
        let ep = unsafe { std::os::fd::BorrowedFd::borrow_raw(epfd) };
        let mut pfds = [
            libc::pollfd {
                fd: ep.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: set.inner().map_or(-1, |f| f.as_fd().as_raw_fd()),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let ts = Some(crate::wait::timespec(crate::wait::nap(deadline)));
        let ts_c = ts.map(|t| libc::timespec {
            tv_sec: t.tv_sec,
            tv_nsec: t.tv_nsec,
        });
        let tp = ts_c
            .as_ref()
            .map_or(core::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: `pfds` holds two valid entries; `tp` and `mask` are null or valid.
        let r = unsafe { crate::real::ppoll(pfds.as_mut_ptr(), 2, tp, mask) };
        if r < 0 {
            return Verdict::Done(-1);
        }
        if pfds[0].revents != 0 {
            set.kernel_reported();
        }
    }
}

#[cfg(test)]
impl EpollSet {
    /// Whether `conn`'s wake descriptor is in the private epoll (a `MOD` to the same
    /// event succeeds only for a descriptor that is there).
    pub(crate) fn watches(&self, conn: &Conn) -> bool {
        self.inner.get().is_some_and(|inner| {
            epoll::modify(
                inner,
                conn.imp.wake_fd(),
                epoll::EventData::new_u64(conn.id),
                epoll::EventFlags::IN,
            )
            .is_ok()
        })
    }

    /// How many idle watches are kept.
    pub(crate) fn idle_len(&self) -> usize {
        lock(&self.idle).len()
    }
}
