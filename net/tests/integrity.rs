//! Integrity across processes: GiB of patterned bytes each way at once between two
//! processes, with path switches injected at random offsets by both sides (the
//! listener withdraws and readmits residency; the connecting side downgrades and
//! upgrades), random write and read sizes from 1 B to 1 MiB. Every byte is checked
//! where it lands (its value is a function of its offset), and the totals must match:
//! zero corrupted, missing, duplicated or reordered bytes.
//!
//! `CORESIDENT_INTEGRITY_MIB` sets the size of each direction (default 1024).
//! The connecting side is this test binary run again as a child process.

mod common;

use common::{builder, Gen, Pattern};
use coresident_net::{Listener, Stream};
use std::io::{Read, Write};
use std::net::Shutdown;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The listener's withdraw/readmit pairs: 100 switches, each waited for.
const LISTENER_PAIRS: usize = 50;
/// The connecting side's own downgrade/upgrade pairs, on top, unsynchronised.
const CLIENT_PAIRS: usize = 10;

fn bytes_each_way() -> u64 {
    std::env::var("CORESIDENT_INTEGRITY_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024u64)
        << 20
}

/// Switch points: `2 * pairs` sorted random offsets in `(0, total)`.
fn switch_points(seed: u64, total: u64, pairs: usize) -> Vec<u64> {
    let mut g = Gen(seed);
    let mut v: Vec<u64> = (0..2 * pairs).map(|_| 1 + g.next() % (total - 1)).collect();
    v.sort_unstable();
    v
}

/// Writes `total` patterned bytes in random sizes, calling `switch(i)` as the offset
/// passes each switch point; then shuts the write side down.
fn writer(
    s: &Stream,
    seed: u64,
    total: u64,
    points: &[u64],
    mut switch: impl FnMut(usize),
    progress: &AtomicU64,
) {
    let mut p = Pattern::new(seed);
    let mut g = Gen(seed ^ 0xABCD);
    let mut buf = vec![0u8; 1 << 20];
    let mut next = 0;
    let mut off = 0u64;
    while off < total {
        let n = (g.size(1 << 20) as u64).min(total - off) as usize;
        p.fill(&mut buf[..n]);
        let mut done = 0;
        while done < n {
            let k = (&*s).write(&buf[done..n]).expect("write");
            done += k;
            off += k as u64;
            progress.store(off, Ordering::Relaxed);
            while next < points.len() && off >= points[next] {
                switch(next);
                next += 1;
            }
        }
    }
    s.shutdown(Shutdown::Write).expect("shutdown");
}

/// Reads until EOF in random sizes, checking every byte; returns the count.
fn reader(s: &Stream, seed: u64, progress: &AtomicU64) -> u64 {
    let mut p = Pattern::new(seed);
    let mut g = Gen(seed ^ 0x1234);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let want = g.size(1 << 20);
        let n = (&*s).read(&mut buf[..want]).expect("read");
        if n == 0 {
            return p.offset();
        }
        if let Err(at) = p.check(&buf[..n]) {
            panic!("wrong byte at offset {at} (read of {n} at {})", p.offset());
        }
        progress.store(p.offset(), Ordering::Relaxed);
    }
}

/// A watchdog: fails when neither counter moved for `limit`.
fn watchdog(name: &'static str, counters: Vec<Arc<AtomicU64>>, limit: Duration) {
    std::thread::spawn(move || {
        let mut last: Vec<u64> = counters.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        let mut since = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(500));
            let now: Vec<u64> = counters.iter().map(|c| c.load(Ordering::Relaxed)).collect();
            if now != last {
                last = now;
                since = Instant::now();
            } else if since.elapsed() > limit {
                eprintln!("watchdog({name}): no progress for {limit:?}: {last:?}");
                std::process::exit(101);
            }
        }
    });
}

const SERVER_SEED: u64 = 0x5EED_0001;
const CLIENT_SEED: u64 = 0x5EED_0002;

/// The connecting side, run in a child process.
#[test]
fn integrity_child() {
    let Ok(addr) = std::env::var("CORESIDENT_INTEGRITY_CHILD") else {
        return;
    };
    let reg = std::env::var("CORESIDENT_INTEGRITY_REG").unwrap();
    let b = coresident_net::Builder::new().discovery(coresident_net::HostRegistry::at(reg));
    let total = bytes_each_way();
    let s = b.connect(addr.as_str()).unwrap();
    assert_eq!(s.path(), coresident_net::Path::Ring, "upgraded at connect");
    let (tx, rx) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    watchdog(
        "child",
        vec![tx.clone(), rx.clone()],
        Duration::from_secs(60),
    );
    let r = s.try_clone().unwrap();
    let rx2 = rx.clone();
    let reading = std::thread::spawn(move || reader(&r, SERVER_SEED, &rx2));
    let points = switch_points(7, total, CLIENT_PAIRS);
    let s2 = s.try_clone().unwrap();
    writer(
        &s,
        CLIENT_SEED,
        total,
        &points,
        |i| {
            if i % 2 == 0 {
                s2.downgrade();
            } else {
                s2.upgrade().unwrap();
            }
        },
        &tx,
    );
    let got = reading.join().unwrap();
    assert_eq!(got, total);
    println!("CHILD-OK {got} {:?}", s.stats());
}

#[test]
fn integrity_gib_each_way_with_100_switches() {
    if std::env::var("CORESIDENT_INTEGRITY_CHILD").is_ok() {
        return;
    }
    let total = bytes_each_way();
    let (b, dir) = builder("integrity");
    let listener: Listener = b.bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "integrity_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("CORESIDENT_INTEGRITY_CHILD", addr.to_string())
        .env("CORESIDENT_INTEGRITY_REG", dir.join("reg"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let (s, _) = listener.accept().unwrap();
    assert_eq!(
        s.path(),
        coresident_net::Path::Ring,
        "accepted with a channel"
    );
    let (tx, rx) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    watchdog(
        "parent",
        vec![tx.clone(), rx.clone()],
        Duration::from_secs(60),
    );
    let r = s.try_clone().unwrap();
    let rx2 = rx.clone();
    let reading = std::thread::spawn(move || reader(&r, CLIENT_SEED, &rx2));
    let points = switch_points(11, total, LISTENER_PAIRS);
    let s2 = s.try_clone().unwrap();
    writer(
        &s,
        SERVER_SEED,
        total,
        &points,
        |i| {
            if i % 2 == 0 {
                listener.withdraw();
            } else {
                listener.readmit();
                // The peer answers the readmission with a new channel: wait for it (the
                // connecting side may refuse if its own downgrade raced; bounded).
                let t = Instant::now();
                while s2.path() != coresident_net::Path::Ring
                    && t.elapsed() < Duration::from_secs(5)
                {
                    s2.poll_events().unwrap();
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        },
        &tx,
    );
    let got = reading.join().unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let st = s.stats();
    eprintln!("parent: {got} bytes in {:?}, {st:?}", t0.elapsed());
    eprintln!("child: {stdout}");
    assert!(out.status.success(), "child failed: {stdout}");
    assert!(
        stdout.contains("CHILD-OK"),
        "child did not finish: {stdout}"
    );
    assert_eq!(got, total);
    // 100 switches injected by the listener (and 20 by the connecting side, which
    // may coincide with them): nearly all of them must have happened.
    assert!(st.downgrades + st.upgrades >= 90, "switches: {st:?}");
    assert!(
        st.ring_rx_bytes > 0 && st.tcp_rx_bytes > 0,
        "both paths carried bytes: {st:?}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
