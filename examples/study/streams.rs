//! Experiment 5: `coresident_net::Stream` against TCP loopback and Unix domain sockets
//! in the same run: throughput and round trip at 64 B, 1 KiB and 64 KiB, with both ends
//! busy (spinning between messages) and sleeping (blocked in the kernel between
//! messages), and the cost of a switch (downgrade then upgrade) with a full ring: its
//! time and the bytes resent. Both ends are threads of this process (the ring is the
//! same shared memory across processes; the two-process figures are the integrity
//! test's and the criterion bench's subject).

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coresident_net::{Builder, HostRegistry, Stream};

use crate::report::{self, Csv, Panel, Pivot};
use crate::{Plan, Progress};

/// A connected byte stream of any kind.
pub trait Duplex: Read + Write + Send + 'static {
    /// Spin instead of blocking (TCP and Unix sockets: non-blocking and retried).
    fn set_busy(&self, busy: bool);
}

impl Duplex for TcpStream {
    fn set_busy(&self, busy: bool) {
        self.set_nonblocking(busy).unwrap();
        self.set_nodelay(true).unwrap();
    }
}

impl Duplex for UnixStream {
    fn set_busy(&self, busy: bool) {
        self.set_nonblocking(busy).unwrap();
    }
}

impl Duplex for Stream {
    fn set_busy(&self, _: bool) {
        // The spin budget is the builder's (see `pair`).
    }
}

/// Writes all of `buf`, retrying `WouldBlock` (busy mode).
fn put(s: &mut dyn Duplex, buf: &[u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match s.write(&buf[done..]) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads exactly `buf.len()` bytes, retrying `WouldBlock` (busy mode).
fn get(s: &mut dyn Duplex, buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match s.read(&mut buf[done..]) {
            Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

pub const KINDS: [&str; 3] = ["coresident", "tcp", "unix"];

fn registry_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("coresident-study-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&d);
    let mut p = std::fs::metadata(&d).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut p, 0o700);
    std::fs::set_permissions(&d, p).unwrap();
    d
}

/// A connected pair of `kind`; `busy`: both ends spin between messages.
pub fn pair(kind: &str, busy: bool, reg: &Path) -> (Box<dyn Duplex>, Box<dyn Duplex>) {
    let (a, b): (Box<dyn Duplex>, Box<dyn Duplex>) = match kind {
        "coresident" => {
            let spin = if busy {
                Duration::from_secs(1)
            } else {
                Duration::ZERO
            };
            let b = Builder::new().discovery(HostRegistry::at(reg)).spin(spin);
            let l = b.bind("127.0.0.1:0").unwrap();
            let c = b.connect(l.local_addr().unwrap()).unwrap();
            let (s, _) = l.accept().unwrap();
            assert_eq!(c.path(), coresident_net::Path::Ring, "the stream upgraded");
            (Box::new(c), Box::new(s))
        }
        "tcp" => {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (s, _) = l.accept().unwrap();
            (Box::new(c), Box::new(s))
        }
        _ => {
            let (c, s) = UnixStream::pair().unwrap();
            (Box::new(c), Box::new(s))
        }
    };
    a.set_busy(busy);
    b.set_busy(busy);
    (a, b)
}

/// One direction for `d`: MB/s at the reader.
pub fn throughput(kind: &str, size: usize, d: Duration, reg: &Path) -> f64 {
    let (mut c, mut s) = pair(kind, false, reg);
    let stop = Arc::new(AtomicBool::new(false));
    let got = Arc::new(AtomicU64::new(0));
    let (stop2, got2) = (stop.clone(), got.clone());
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; (size * 16).max(1 << 16)];
        let t0 = Instant::now();
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    got2.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        }
        t0.elapsed()
    });
    let buf = vec![0x5Au8; size];
    let t0 = Instant::now();
    while t0.elapsed() < d {
        for _ in 0..64 {
            put(&mut *c, &buf).unwrap();
        }
    }
    stop2.store(true, Ordering::Relaxed);
    drop(c); // EOF (a coresident stream ends with its FIN segment)
    let el = reader.join().unwrap();
    got.load(Ordering::Relaxed) as f64 / el.as_secs_f64() / 1e6
}

/// Ping-pong of `size` bytes for `d`: mean round trip in µs.
pub fn round_trip(kind: &str, size: usize, busy: bool, d: Duration, reg: &Path) -> f64 {
    let (mut c, mut s) = pair(kind, busy, reg);
    let echo = std::thread::spawn(move || {
        let mut buf = vec![0u8; size];
        while get(&mut *s, &mut buf).is_ok() {
            if put(&mut *s, &buf).is_err() {
                break;
            }
        }
    });
    let mut buf = vec![1u8; size];
    // Warm up.
    for _ in 0..100 {
        put(&mut *c, &buf).unwrap();
        get(&mut *c, &mut buf).unwrap();
    }
    let (t0, mut n) = (Instant::now(), 0u64);
    while t0.elapsed() < d {
        put(&mut *c, &buf).unwrap();
        get(&mut *c, &mut buf).unwrap();
        n += 1;
    }
    let us = t0.elapsed().as_secs_f64() * 1e6 / n as f64;
    drop(c);
    let _ = echo.join();
    us
}

/// A switch with a full ring: µs for `downgrade()` + `upgrade()` on the connecting
/// side (the peer's part runs on its own thread), and bytes resent.
pub fn switch_cost(reg: &Path, rounds: u32) -> (f64, f64) {
    let b = Builder::new().discovery(HostRegistry::at(reg));
    let l = b.bind("127.0.0.1:0").unwrap();
    let c = b.connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    c.set_nonblocking(true).unwrap();
    let chunk = vec![3u8; 64 * 1024];
    let (mut total, mut resent) = (Duration::ZERO, 0u64);
    let mut sink = vec![0u8; 1 << 20];
    s.set_nonblocking(true).unwrap();
    for _ in 0..rounds {
        // Fill the ring (the peer does not read meanwhile).
        while (&c).write(&chunk).is_ok() {}
        let before = c.stats().resent_bytes;
        let t0 = Instant::now();
        c.downgrade();
        c.upgrade().unwrap();
        total += t0.elapsed();
        resent += c.stats().resent_bytes - before;
        // Drain everything on the peer's side.
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(200) {
            match (&s).read(&mut sink) {
                Ok(n) => {
                    std::hint::black_box(n);
                }
                Err(_) => {
                    let _ = (&c).flush();
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
    (
        total.as_secs_f64() * 1e6 / f64::from(rounds),
        resent as f64 / f64::from(rounds),
    )
}

pub fn exp5(plan: &Plan, out: &Path) -> (Csv, Vec<String>) {
    let reg = registry_dir();
    let sizes = [64usize, 1024, 65536];
    let mut csv = Csv::new(&["measure", "kind", "size", "value", "ratio_to_tcp"], 3);
    let mut expected = Vec::new();
    let mut p = Progress {
        exp: 5,
        done: 0,
        total: sizes.len() * KINDS.len() * 3 + 1,
    };
    let mut t = Pivot::new("measure, kind");
    let mut panels = Vec::new();
    for (measure, unit) in [
        ("throughput", "MB/s"),
        ("rtt_busy", "µs"),
        ("rtt_sleep", "µs"),
    ] {
        let mut series = Vec::new();
        let mut tcp = std::collections::HashMap::new();
        for kind in ["tcp", "coresident", "unix"] {
            let mut pts = Vec::new();
            for &size in &sizes {
                p.step(&format!("{measure} {kind} {size} B"));
                let v = match measure {
                    "throughput" => throughput(kind, size, plan.d, &reg),
                    "rtt_busy" => round_trip(kind, size, true, plan.d, &reg),
                    _ => round_trip(kind, size, false, plan.d, &reg),
                };
                if kind == "tcp" {
                    tcp.insert(size, v);
                }
                let ratio = v / tcp.get(&size).copied().unwrap_or(v);
                t.set(
                    &format!("{measure}, {kind}"),
                    &format!("{size} B"),
                    format!("{v:.1} {unit} ({ratio:.3}x TCP)"),
                );
                csv.rows.push(vec![
                    measure.into(),
                    kind.into(),
                    size.to_string(),
                    format!("{v:.3}"),
                    format!("{ratio:.4}"),
                ]);
                expected.push(format!("{measure},{kind},{size}"));
                pts.push((size as f64, v));
            }
            series.push((kind.to_string(), pts));
        }
        panels.push(Panel {
            title: format!("{measure} ({unit})"),
            x_desc: "write / message size (bytes)",
            y_desc: unit,
            log_x: true,
            log_y: true,
            series,
        });
    }
    p.step("switch cost");
    let (us, resent) = switch_cost(
        &reg,
        if plan.d < Duration::from_millis(500) {
            5
        } else {
            20
        },
    );
    drop(p);
    csv.rows.push(vec![
        "switch_us".into(),
        "coresident".into(),
        "262144".into(),
        format!("{us:.1}"),
        "0".into(),
    ]);
    expected.push("switch_us,coresident,262144".into());
    csv.rows.push(vec![
        "switch_resent_bytes".into(),
        "coresident".into(),
        "262144".into(),
        format!("{resent:.0}"),
        "0".into(),
    ]);
    expected.push("switch_resent_bytes,coresident,262144".into());
    println!("## 5. Streams: coresident-net against TCP loopback and Unix sockets\n");
    println!("{}", t.markdown());
    println!(
        "Switch with a full 256 KiB ring: downgrade + upgrade {us:.1} µs, {resent:.0} bytes resent per switch.\n"
    );
    report::plot(&out.join("exp5.svg"), &panels);
    let _ = std::fs::remove_dir_all(&reg);
    (csv, expected)
}
