//! Streams against TCP loopback and Unix domain sockets, same inputs, same run:
//! one-way throughput and ping-pong round trip at 64 B, 1 KiB and 64 KiB, with both
//! ends busy (spinning) and sleeping (blocked between messages), and the cost of a
//! switch (downgrade + upgrade with a full ring).
//!
//! ```text
//! cargo bench -p coresident-net --bench stream
//! cargo bench -p coresident-net --bench stream -- 'rtt_busy/64'   # one group
//! ```
#![allow(missing_docs)]

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coresident_net::{Builder, HostRegistry, Path, Stream};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

trait Duplex: Read + Write + Send + 'static {
    fn busy(&self, on: bool);
}
impl Duplex for TcpStream {
    fn busy(&self, on: bool) {
        self.set_nonblocking(on).unwrap();
        self.set_nodelay(true).unwrap();
    }
}
impl Duplex for UnixStream {
    fn busy(&self, on: bool) {
        self.set_nonblocking(on).unwrap();
    }
}
impl Duplex for Stream {
    fn busy(&self, _: bool) {}
}

fn put(s: &mut dyn Duplex, b: &[u8]) {
    let mut d = 0;
    while d < b.len() {
        match s.write(&b[d..]) {
            Ok(n) => d += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) => panic!("{e}"),
        }
    }
}

fn get(s: &mut dyn Duplex, b: &mut [u8]) -> bool {
    let mut d = 0;
    while d < b.len() {
        match s.read(&mut b[d..]) {
            Ok(0) => return false,
            Ok(n) => d += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(_) => return false,
        }
    }
    true
}

fn reg() -> PathBuf {
    let d = std::env::temp_dir().join(format!("coresident-bench-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let mut p = std::fs::metadata(&d).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut p, 0o700);
    std::fs::set_permissions(&d, p).unwrap();
    d
}

const KINDS: [&str; 3] = ["coresident", "tcp", "unix"];

fn pair(kind: &str, busy: bool) -> (Box<dyn Duplex>, Box<dyn Duplex>) {
    let (a, b): (Box<dyn Duplex>, Box<dyn Duplex>) = match kind {
        "coresident" => {
            let spin = if busy {
                Duration::from_secs(1)
            } else {
                Duration::ZERO
            };
            let b = Builder::new().discovery(HostRegistry::at(reg())).spin(spin);
            let l = b.bind("127.0.0.1:0").unwrap();
            let c = b.connect(l.local_addr().unwrap()).unwrap();
            let (s, _) = l.accept().unwrap();
            assert_eq!(c.path(), Path::Ring);
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
    a.busy(busy);
    b.busy(busy);
    (a, b)
}

fn throughput(c: &mut Criterion) {
    for size in [64usize, 1024, 65536] {
        let mut g = c.benchmark_group(format!("throughput/{size}"));
        g.throughput(Throughput::Bytes(size as u64));
        for kind in KINDS {
            let (mut w, mut r) = pair(kind, false);
            let got = Arc::new(AtomicU64::new(0));
            let got2 = got.clone();
            let reader = std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 18];
                while let Ok(n) = r.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    got2.fetch_add(n as u64, Ordering::Relaxed);
                }
            });
            let buf = vec![7u8; size];
            let mut sent = 0u64;
            g.bench_function(BenchmarkId::from_parameter(kind), |b| {
                b.iter_custom(|iters| {
                    let t0 = Instant::now();
                    for _ in 0..iters {
                        put(&mut *w, &buf);
                    }
                    sent += iters * size as u64;
                    while got.load(Ordering::Relaxed) < sent {
                        std::hint::spin_loop();
                    }
                    t0.elapsed()
                })
            });
            drop(w);
            reader.join().unwrap();
        }
        g.finish();
    }
}

fn rtt(c: &mut Criterion, busy: bool) {
    let name = if busy { "rtt_busy" } else { "rtt_sleep" };
    for size in [64usize, 1024, 65536] {
        let mut g = c.benchmark_group(format!("{name}/{size}"));
        for kind in KINDS {
            let (mut a, mut s) = pair(kind, busy);
            let echo = std::thread::spawn(move || {
                let mut buf = vec![0u8; size];
                while get(&mut *s, &mut buf) {
                    put(&mut *s, &buf);
                }
            });
            let mut buf = vec![1u8; size];
            g.bench_function(BenchmarkId::from_parameter(kind), |b| {
                b.iter(|| {
                    put(&mut *a, &buf);
                    get(&mut *a, &mut buf);
                })
            });
            drop(a);
            echo.join().unwrap();
        }
        g.finish();
    }
}

fn rtt_busy(c: &mut Criterion) {
    rtt(c, true);
}

fn rtt_sleep(c: &mut Criterion) {
    rtt(c, false);
}

/// Downgrade + upgrade with a full ring (the peer does not read): the time of the two
/// calls on the connecting side; the bytes resent are printed.
fn switch(c: &mut Criterion) {
    let b = Builder::new().discovery(HostRegistry::at(reg()));
    let l = b.bind("127.0.0.1:0").unwrap();
    let cl = b.connect(l.local_addr().unwrap()).unwrap();
    let (sv, _) = l.accept().unwrap();
    cl.set_nonblocking(true).unwrap();
    sv.set_nonblocking(true).unwrap();
    let chunk = vec![3u8; 64 * 1024];
    let mut sink = vec![0u8; 1 << 20];
    let (mut resent, mut n) = (0u64, 0u64);
    c.bench_function("switch/full_ring", |bch| {
        bch.iter_custom(|iters| {
            let mut t = Duration::ZERO;
            for _ in 0..iters {
                while (&cl).write(&chunk).is_ok() {}
                let before = cl.stats().resent_bytes;
                let t0 = Instant::now();
                cl.downgrade();
                cl.upgrade().unwrap();
                t += t0.elapsed();
                resent += cl.stats().resent_bytes - before;
                n += 1;
                // Drain the peer so the next round starts empty.
                let d = Instant::now();
                while d.elapsed() < Duration::from_millis(20) {
                    if (&sv).read(&mut sink).is_err() {
                        let _ = (&cl).flush();
                    }
                }
            }
            t
        })
    });
    eprintln!(
        "switch/full_ring: {} bytes resent per switch",
        resent / n.max(1)
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).sample_size(20);
    targets = throughput, rtt_busy, rtt_sleep, switch
}
criterion_main!(benches);
