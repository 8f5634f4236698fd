//! Waiting for an accelerated connection: spin briefly, then sleep on its wake-up
//! descriptor, as `Channel` does.
//!
//! The spin budget is a time, not a count (`CORESIDENT_SPIN_US`, default
//! [`crate::state::DEFAULT_SPIN`], 0 on a single CPU): a count is a cliff on a shared core,
//! where every poll only delays the peer. The spin never yields the CPU: on a loaded
//! machine `sched_yield` hands it to another runnable process for a whole time slice
//! (milliseconds), which measured as a round trip of about the spin budget or worse
//! (sockperf, 2 loaded CPUs: 20 µs spin gave a 34 µs median, none 9 µs).
//!
//! The sleep is arm-then-check-then-sleep ([`crate::conn::Accelerated::arm`]), so a
//! wake-up that comes between the check and the sleep is not lost: the descriptor is
//! already readable and the sleep returns at once.

use core::time::Duration;
use std::os::fd::BorrowedFd;
use std::time::Instant;

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;

use crate::conn::{Accelerated, Readiness};
use crate::state::config;

/// Until when a call may block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Deadline {
    /// Do not block at all.
    Now,
    /// Until this instant (`SO_RCVTIMEO`, `SO_SNDTIMEO`, a poll timeout).
    At(Instant),
    /// Forever.
    Never,
}

impl Deadline {
    /// A deadline `timeout` from now (`None`: never).
    pub(crate) fn after(timeout: Option<Duration>) -> Self {
        match timeout {
            None => Self::Never,
            Some(d) if d.is_zero() => Self::Now,
            Some(d) => Instant::now().checked_add(d).map_or(Self::Never, Self::At),
        }
    }

    /// The time left, `None` for forever.
    pub(crate) fn remaining(self) -> Option<Duration> {
        match self {
            Self::Now => Some(Duration::ZERO),
            Self::At(t) => Some(t.saturating_duration_since(Instant::now())),
            Self::Never => None,
        }
    }

    /// Whether the deadline has passed.
    pub(crate) fn passed(self) -> bool {
        self.remaining().is_some_and(|d| d.is_zero())
    }
}

/// The longest a sleeper sleeps before it checks its connections again by itself:
/// doorbells are hints and may be lost (docs/DESIGN.md), so a lost one costs at most
/// this much latency, never a hang.
pub(crate) const RECHECK: Duration = Duration::from_millis(50);

/// The time to sleep now: what is left of the deadline, at most [`RECHECK`].
pub(crate) fn nap(deadline: Deadline) -> Duration {
    deadline.remaining().map_or(RECHECK, |d| d.min(RECHECK))
}

/// The readiness bits that end any wait (an error or a hang-up must be seen).
pub(crate) const ALWAYS: Readiness = Readiness(Readiness::ERR.0 | Readiness::HUP.0);

/// A monotonic clock in µs since the first call.
pub(crate) fn now_us() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// How often a spin takes the full look (which may cost a system call) when the cheap
/// one says nothing: one turn in this many, about every microsecond or two.
pub(crate) const FULL_LOOK_EVERY: u32 = 16;

/// What a spin looks at on each turn.
///
/// - `cheap`: no system call (a look at the ring in shared memory and at our own
///   flags); `true` when something may be due;
/// - `full`: the real question, which may ask the kernel (a `poll` of the wake
///   descriptor, an `epoll_wait` of the private epoll).
///
/// Asking the kernel on every turn made a spin cost a system call per turn: with one
/// redis client, about three `epoll_pwait`s per request. Bytes on the ring are seen by
/// `cheap` at once; what only the kernel sees (TCP, a hang-up) within
/// [`FULL_LOOK_EVERY`] turns.
pub(crate) struct Look<C, F> {
    /// The cheap look.
    pub(crate) cheap: C,
    /// The full look.
    pub(crate) full: F,
}

/// Spins on `look` for at most `budget` (or until `deadline`). Returns how long it
/// took if the full look reported something in time.
pub(crate) fn spin<C: FnMut() -> bool, F: FnMut() -> bool>(
    deadline: Deadline,
    budget: Duration,
    mut look: Look<C, F>,
) -> Option<Duration> {
    if budget.is_zero() || deadline == Deadline::Now {
        return None;
    }
    let start = Instant::now();
    let mut rounds = 0u32;
    loop {
        rounds = rounds.wrapping_add(1);
        if (rounds % FULL_LOOK_EVERY == 1 || (look.cheap)()) && (look.full)() {
            return Some(start.elapsed());
        }
        if rounds % 16 == 0 && (start.elapsed() >= budget || deadline.passed()) {
            return None;
        }
        core::hint::spin_loop();
    }
}

/// The spin budget learnt from what spinning achieved, between 0 and the cap
/// (`CORESIDENT_SPIN_US`). The core's `SpinPolicy::Adaptive` rule (after glibc's
/// adaptive mutexes), for the same reason: a spin that runs out means the peer could
/// not answer meanwhile, often because it could not run.
///
/// - a spin that ends with readiness after `t` raises the budget to at least
///   `2t + 1 µs` (capped);
/// - a spin that runs out halves the budget; below 1 µs it is 0 (sleep at once);
/// - at 0, one wait in `k` still spins the whole cap, to notice that spinning pays
///   again; `k` starts at 8 and doubles after each probe that fails, up to 1024.
///
/// Measured on 2 loaded CPUs (load 9): redis-benchmark GET, one client, 17–19 k
/// requests/s without spinning against 6–8 k with a fixed 20 µs spin on both ends, and
/// plain TCP at 15 k; a fixed spin is what `sched` then punishes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Spinner {
    /// The budget in nanoseconds (`u64::MAX`: not started, take the cap).
    budget: u64,
    /// Waits left before a probe spin, while `budget` is 0.
    probe_in: u16,
    /// Waits between probe spins: 8 to 1024.
    probe_every: u16,
    /// Whether the spin in progress is a probe.
    probing: bool,
}

impl Default for Spinner {
    fn default() -> Self {
        Self::new()
    }
}

impl Spinner {
    const MIN_NS: u64 = 1_000;
    const PROBE_FIRST: u16 = 8;
    const PROBE_MAX: u16 = 1024;

    /// A spinner that starts at the cap.
    pub(crate) const fn new() -> Self {
        Self {
            budget: u64::MAX,
            probe_in: Self::PROBE_FIRST,
            probe_every: Self::PROBE_FIRST,
            probing: false,
        }
    }

    fn cap() -> u64 {
        u64::try_from(config().spin.as_nanos()).unwrap_or(u64::MAX)
    }

    /// The budget of the next wait.
    pub(crate) fn limit(&mut self) -> Duration {
        let cap = Self::cap();
        self.budget = self.budget.min(cap);
        self.probing = false;
        if self.budget > 0 || cap == 0 {
            return Duration::from_nanos(self.budget);
        }
        self.probe_in = self.probe_in.saturating_sub(1);
        if self.probe_in == 0 {
            self.probe_in = self.probe_every;
            self.probing = true;
            return Duration::from_nanos(cap);
        }
        Duration::ZERO
    }

    /// What the spin of the last `limit` gave: `Some(t)` ready after `t`, `None` it
    /// ran out (nothing if the budget was 0 and it did not spin).
    pub(crate) fn record(&mut self, outcome: Option<Duration>, spun: bool) {
        if !spun {
            return;
        }
        let cap = Self::cap();
        match outcome {
            Some(t) => {
                let t = u64::try_from(t.as_nanos()).unwrap_or(u64::MAX);
                self.budget = self.budget.max(t.saturating_mul(2) + Self::MIN_NS).min(cap);
                self.probe_every = Self::PROBE_FIRST;
            }
            None => {
                if self.probing {
                    self.probe_every = self.probe_every.saturating_mul(2).min(Self::PROBE_MAX);
                }
                self.budget /= 2;
                if self.budget < Self::MIN_NS {
                    self.budget = 0;
                }
            }
        }
        self.probing = false;
    }

    /// Spins on `look` with the learnt budget and learns from it.
    pub(crate) fn spin<C: FnMut() -> bool, F: FnMut() -> bool>(
        &mut self,
        deadline: Deadline,
        look: Look<C, F>,
    ) -> bool {
        let budget = self.limit();
        if budget.is_zero() || deadline == Deadline::Now {
            return false;
        }
        let outcome = spin(deadline, budget, look);
        self.record(outcome, true);
        outcome.is_some()
    }
}

std::thread_local! {
    /// The spinner of this thread's `poll`/`select` waits (no destructor: usable at any
    /// time).
    pub(crate) static POLL_SPINNER: core::cell::Cell<Spinner> = const { core::cell::Cell::new(Spinner::new()) };
}

/// Waits until `conn` reports any of `interest` (or an error or hang-up), or the
/// deadline passes.
///
/// # Errors
///
/// `AGAIN` when the deadline passed first, `INTR` when a signal interrupted the sleep.
pub(crate) fn wait_ready(
    conn: &dyn Accelerated,
    spinner: &std::sync::Mutex<Spinner>,
    interest: Readiness,
    deadline: Deadline,
) -> Result<Readiness, Errno> {
    let want = interest.union(ALWAYS);
    let r = conn.readiness();
    if r.intersects(want) {
        return Ok(r);
    }
    if deadline == Deadline::Now {
        return Err(Errno::AGAIN);
    }
    let mut sp = *crate::state::lock(spinner);
    let hit = sp.spin(
        deadline,
        Look {
            cheap: || conn.glance().is_none_or(|g| g.shows(want)),
            full: || conn.readiness().intersects(want),
        },
    );
    *crate::state::lock(spinner) = sp;
    if hit {
        return Ok(conn.readiness());
    }
    loop {
        let r = conn.arm(interest);
        if r.intersects(want) {
            return Ok(r);
        }
        if deadline.passed() {
            return Err(Errno::AGAIN);
        }
        sleep_on(&[conn.wake_fd()], Some(nap(deadline)))?;
    }
}

/// Sleeps until one of `fds` is readable or `timeout` passes (`None`: no timeout), with
/// a raw `ppoll` (never the hooks).
///
/// # Errors
///
/// `INTR` when a signal interrupted the sleep; another errno if `ppoll` failed.
pub(crate) fn sleep_on(fds: &[BorrowedFd<'_>], timeout: Option<Duration>) -> Result<(), Errno> {
    let mut pfds: Vec<PollFd<'_>> = fds
        .iter()
        .map(|fd| PollFd::new(fd, PollFlags::IN))
        .collect();
    let ts = timeout.map(timespec);
    match rustix::event::poll(&mut pfds, ts.as_ref()) {
        Ok(_) => Ok(()),
        Err(e) => Err(e),
    }
}

/// A `Duration` as a `Timespec`, saturating.
pub(crate) fn timespec(d: Duration) -> Timespec {
    Timespec {
        tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(d.subsec_nanos()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::MemConn;
    use std::io::IoSlice;

    #[test]
    fn deadline_arithmetic() {
        assert_eq!(Deadline::after(None), Deadline::Never);
        assert_eq!(Deadline::after(Some(Duration::ZERO)), Deadline::Now);
        assert!(Deadline::Now.passed());
        assert!(!Deadline::Never.passed());
        let d = Deadline::after(Some(Duration::from_secs(60)));
        assert!(d.remaining().unwrap() > Duration::from_secs(59));
    }

    #[test]
    fn the_spin_budget_learns_both_ways() {
        let cap = Duration::from_nanos(Spinner::cap());
        let mut sp = Spinner::new();
        if cap.is_zero() {
            // One CPU: never spin.
            assert_eq!(sp.limit(), Duration::ZERO);
            return;
        }
        assert_eq!(sp.limit(), cap, "starts at the cap");
        sp.record(None, true);
        assert_eq!(sp.limit(), cap / 2, "a spin that ran out halves it");
        // Failures halve it down to 0; from then on one wait in 8 probes with the cap.
        let mut budgets = Vec::new();
        loop {
            let b = sp.limit();
            if b.is_zero() {
                budgets.push(b);
                break;
            }
            sp.record(None, true);
        }
        for _ in 0..7 {
            let b = sp.limit();
            sp.record(None, !b.is_zero());
            budgets.push(b);
        }
        assert_eq!(
            budgets.iter().filter(|b| **b == cap).count(),
            1,
            "{budgets:?}"
        );
        assert_eq!(budgets.iter().filter(|b| b.is_zero()).count(), 7);
        // A spin that pays after t raises the budget to 2t + 1 µs.
        while sp.limit().is_zero() {}
        sp.record(Some(Duration::from_micros(3)), true);
        assert_eq!(sp.limit(), Duration::from_micros(7).min(cap));
    }

    #[test]
    fn wait_times_out_then_wakes_on_data() {
        let (a, b) = MemConn::pair(64).unwrap();
        let sp = std::sync::Mutex::new(Spinner::new());
        let r = wait_ready(
            &b,
            &sp,
            Readiness::READ,
            Deadline::after(Some(Duration::from_millis(20))),
        );
        assert_eq!(r, Err(Errno::AGAIN));
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            a.try_send(&[IoSlice::new(b"x")]).unwrap();
            a
        });
        let r = wait_ready(&b, &sp, Readiness::READ, Deadline::Never).unwrap();
        assert!(r.contains(Readiness::READ));
        drop(t.join().unwrap());
    }
}
