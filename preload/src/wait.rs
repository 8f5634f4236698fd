//! Waiting for an accelerated connection: spin briefly, then sleep on its wake-up
//! descriptor, as `Channel` does.
//!
//! The spin budget is a time, not a count (`CORESIDENT_SPIN_US`, default
//! [`crate::state::DEFAULT_SPIN`], 0 on a single CPU): a count is a cliff on a shared core,
//! where every poll only delays the peer. The spin yields the CPU every few rounds, so a
//! peer waiting for this core gets it.
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

/// Spins on `ready` for the spin budget (or until `deadline`), yielding now and then.
/// Returns the readiness once `ready` reports something, or `None` when the budget ran
/// out.
pub(crate) fn spin(deadline: Deadline, mut ready: impl FnMut() -> bool) -> bool {
    let budget = config().spin;
    if budget.is_zero() || deadline == Deadline::Now {
        return false;
    }
    let start = Instant::now();
    let mut rounds = 0u32;
    loop {
        if ready() {
            return true;
        }
        rounds = rounds.wrapping_add(1);
        if rounds % 16 == 0 {
            if start.elapsed() >= budget || deadline.passed() {
                return false;
            }
            // Let a peer that shares this core run.
            std::thread::yield_now();
        } else {
            core::hint::spin_loop();
        }
    }
}

/// Waits until `conn` reports any of `interest` (or an error or hang-up), or the
/// deadline passes.
///
/// # Errors
///
/// `AGAIN` when the deadline passed first, `INTR` when a signal interrupted the sleep.
pub(crate) fn wait_ready(
    conn: &dyn Accelerated,
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
    if spin(deadline, || conn.readiness().intersects(want)) {
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
    fn wait_times_out_then_wakes_on_data() {
        let (a, b) = MemConn::pair(64).unwrap();
        let r = wait_ready(
            &b,
            Readiness::READ,
            Deadline::after(Some(Duration::from_millis(20))),
        );
        assert_eq!(r, Err(Errno::AGAIN));
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            a.try_send(&[IoSlice::new(b"x")]).unwrap();
            a
        });
        let r = wait_ready(&b, Readiness::READ, Deadline::Never).unwrap();
        assert!(r.contains(Readiness::READ));
        drop(t.join().unwrap());
    }
}
