//! Readiness: the data tests in non-blocking mode, driven only by `poll(2)` on each
//! stream's descriptor (an operation is tried only after its stream's descriptor said
//! readable): a lost wake-up stalls the loop and fails the test. Both directions at
//! once, with switches in the middle.

mod common;

use common::{builder, Gen, Pattern};
use coresident_net::{Path, Stream};
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

struct Side {
    s: Stream,
    out: Pattern,
    inp: Pattern,
    sent: u64,
    got: u64,
    ready: bool,
    g: Gen,
    buf: Vec<u8>,
    rbuf: Vec<u8>,
    shut: bool,
    eof: bool,
}

impl Side {
    fn new(s: Stream, out_seed: u64, in_seed: u64) -> Self {
        s.set_nonblocking(true).unwrap();
        Self {
            s,
            out: Pattern::new(out_seed),
            inp: Pattern::new(in_seed),
            sent: 0,
            got: 0,
            ready: true,
            g: Gen(out_seed),
            buf: Vec::new(),
            rbuf: vec![0u8; 256 * 1024],
            shut: false,
            eof: false,
        }
    }

    /// Runs operations until both directions say WouldBlock (or are done).
    fn run(&mut self, total: u64) {
        loop {
            let mut progress = false;
            // Write: keep one pending chunk until it is accepted.
            if self.sent < total {
                if self.buf.is_empty() {
                    let n = (self.g.size(200_000) as u64).min(total - self.sent) as usize;
                    self.buf.resize(n, 0);
                    self.out.fill(&mut self.buf);
                }
                match (&self.s).write(&self.buf) {
                    Ok(n) => {
                        self.buf.drain(..n);
                        self.sent += n as u64;
                        progress = true;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => panic!("write: {e}"),
                }
            } else if !self.shut {
                match self.s.shutdown(std::net::Shutdown::Write) {
                    Ok(()) => self.shut = true,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => panic!("shutdown: {e}"),
                }
            }
            if !self.eof {
                let want = self.g.size(self.rbuf.len());
                match (&self.s).read(&mut self.rbuf[..want]) {
                    Ok(0) => self.eof = true,
                    Ok(n) => {
                        self.inp.check(&self.rbuf[..n]).expect("wrong byte");
                        self.got += n as u64;
                        progress = true;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => panic!("read: {e}"),
                }
            }
            if !progress {
                return;
            }
        }
    }
}

#[test]
fn non_blocking_streams_driven_by_poll_alone_with_switches() {
    let (b, dir) = builder("poll");
    let listener = b.bind("127.0.0.1:0").unwrap();
    let c = b.connect(listener.local_addr().unwrap()).unwrap();
    let (s, _) = listener.accept().unwrap();
    assert_eq!((c.path(), s.path()), (Path::Ring, Path::Ring));
    let total: u64 = 64 << 20;
    let mut sides = [Side::new(c, 1, 2), Side::new(s, 2, 1)];
    let mut switches = 0;
    let mut last = Instant::now();
    let mut idle = 0u64;
    let mut timeouts = 0u32;
    while !(sides.iter().all(|x| x.eof && x.shut)) {
        for x in sides.iter_mut() {
            if x.ready {
                let b = (x.sent, x.got);
                x.run(total);
                x.ready = false;
                if (x.sent, x.got) != b {
                    idle = 0;
                    last = Instant::now();
                }
            }
        }
        // A switch every 4 MiB: the client alternates downgrade and upgrade.
        let next = (switches as u64 + 1) * (4 << 20);
        if sides[0].sent >= next && switches < 14 {
            if switches % 2 == 0 {
                sides[0].s.downgrade();
            } else {
                sides[0].s.upgrade().unwrap();
            }
            switches += 1;
            sides[0].ready = true;
            sides[1].ready = true;
            continue;
        }
        // SAFETY: the descriptors are the streams' epoll instances, open while the
        // streams (owned by `sides`) live, which outlives this borrow.
        let (a, b2) = unsafe {
            (
                BorrowedFd::borrow_raw(sides[0].s.as_raw_fd()),
                BorrowedFd::borrow_raw(sides[1].s.as_raw_fd()),
            )
        };
        let mut fds = [
            PollFd::new(&a, PollFlags::IN),
            PollFd::new(&b2, PollFlags::IN),
        ];
        let ts = Timespec {
            tv_sec: 0,
            tv_nsec: 200_000_000,
        };
        let n = poll(&mut fds, Some(&ts)).unwrap();
        assert!(
            last.elapsed() < Duration::from_secs(20),
            "no progress for 20 s (busy or stalled)"
        );
        if n == 0 {
            // Nothing readable: every side said WouldBlock, so progress is only
            // possible if a wake-up was lost, or through the periodic recheck.
            assert!(
                last.elapsed() < Duration::from_secs(20),
                "stalled: a lost wake-up? sent {}/{} got {}/{}",
                sides[0].sent,
                sides[1].sent,
                sides[0].got,
                sides[1].got
            );
            // Doorbells are hints; a periodic recheck is part of the contract, but
            // counted: with level-correct readiness it is never needed.
            timeouts += 1;
            sides[0].ready = true;
            sides[1].ready = true;
            continue;
        }
        let before = (sides[0].sent, sides[1].sent, sides[0].got, sides[1].got);
        idle += 1;
        if idle % 100_000 == 0 {
            eprintln!(
                "busy without progress: {before:?} revents {:?} {:?}\n{:?}\n{:?}",
                fds[0].revents(),
                fds[1].revents(),
                sides[0].s.stats(),
                sides[1].s.stats()
            );
        }
        for (i, f) in fds.iter().enumerate() {
            if f.revents().contains(PollFlags::IN) {
                sides[i].ready = true;
            }
        }
    }
    assert_eq!((sides[0].got, sides[1].got), (total, total));
    let st = sides[0].s.stats();
    eprintln!("client {st:?}, poll timeouts {timeouts}");
    assert_eq!(timeouts, 0, "every wake-up came from the descriptor");
    assert!(st.downgrades >= 7 && st.upgrades >= 7, "{st:?}");
    let _ = std::fs::remove_dir_all(dir);
}
