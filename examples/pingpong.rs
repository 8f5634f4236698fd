//! Round-trip latency between two processes over the host transport (`coresident-shm`).
//!
//! ```text
//! cargo run --release --example pingpong                      # spawns its own server
//! cargo run --release --example pingpong -- --messages 200000 --size 1024 --spin 0
//! cargo run --release --example pingpong -- --role server --rendezvous /tmp/pp.rdv &
//! cargo run --release --example pingpong -- --role client --rendezvous /tmp/pp.rdv
//! ```
//!
//! The server offers a channel (`ShmTransport::offer`: memfd, one-shot socket in the
//! default registry directory) and writes the rendezvous bytes to a file; the client reads them and
//! accepts. The client then sends `--messages` messages of `--size` bytes, one at a
//! time; the server echoes each one back. Both sides use the blocking `send` and
//! `recv_blocking` of a `Channel`: spin up to `--spin` microseconds (the cap of the
//! adaptive budget, `ChannelConfig::spin`), then sleep on the doorbell (the rendezvous
//! socket).
//! The client checks every echo and prints round-trip percentiles.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use coresident::{Channel, ChannelConfig, ChannelError, ChannelLayout, StdClock};
use coresident::{PendingOffer, Transport};
use coresident_shm::ShmTransport;

type Chan = Channel<coresident_shm::MemfdRegion, coresident_shm::PeerLink, StdClock>;

const WATCHDOG: Duration = Duration::from_secs(30);

struct Args {
    role: Option<String>,
    messages: u64,
    size: usize,
    spin: u32,
    rendezvous: PathBuf,
}

fn parse_args() -> Args {
    let mut a = Args {
        role: None,
        messages: 100_000,
        size: 64,
        spin: ChannelConfig::default().spin,
        rendezvous: std::env::temp_dir().join(format!("pingpong-{}.rdv", std::process::id())),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--role" => a.role = Some(v()),
            "--messages" => a.messages = v().parse().unwrap(),
            "--size" => a.size = v().parse().unwrap(),
            "--spin" => a.spin = v().parse().unwrap(),
            "--rendezvous" => a.rendezvous = v().into(),
            "-h" | "--help" => {
                println!(
                    "pingpong [--role server|client] [--messages N] [--size BYTES] \
                     [--spin MICROSECONDS] [--rendezvous FILE]"
                );
                std::process::exit(0);
            }
            other => panic!("unknown argument {other}"),
        }
    }
    assert!(
        a.size >= 8,
        "--size must be at least 8 (the sequence stamp)"
    );
    a
}

fn config(a: &Args) -> ChannelConfig {
    ChannelConfig {
        spin: a.spin,
        ..ChannelConfig::default()
    }
}

/// Rings large enough for a few messages of `size` bytes.
fn layout(size: usize) -> ChannelLayout {
    let data = (size * 4 + 64).next_power_of_two().max(64 << 10);
    ChannelLayout::symmetric(data as u32)
}

/// The server: offers the channel, publishes the rendezvous bytes, echoes until the
/// client goes away.
fn server(a: &Args) {
    // Offers live in a private, verified directory (never /tmp: others could take them).
    let mut t = ShmTransport::in_default_dir("pingpong-server".parse().unwrap());
    let mut buf = [0u8; 256];
    let (pending, n) = t.offer(layout(a.size), &mut buf).unwrap();
    // Write then rename: the client never reads half a file.
    let tmp = a.rendezvous.with_extension("tmp");
    std::fs::write(&tmp, &buf[..n]).unwrap();
    std::fs::rename(&tmp, &a.rendezvous).unwrap();
    let link = pending.complete(Some(WATCHDOG)).unwrap();
    let _ = std::fs::remove_file(&a.rendezvous);
    let mut ch = Chan::new(link, config(a), StdClock::default()).unwrap();
    let mut msg = vec![0u8; ch.max_incoming()];
    loop {
        match ch.recv_blocking(&mut msg, None) {
            Ok(len) => ch.send_blocking(&msg[..len], None).unwrap(),
            Err(ChannelError::PeerGone) => break,
            Err(e) => panic!("server: {e}"),
        }
    }
}

/// The client: accepts the server's offer, runs the round trips, prints percentiles.
fn client(a: &Args) {
    let start = Instant::now();
    let bytes = loop {
        if let Ok(b) = std::fs::read(&a.rendezvous) {
            break b;
        }
        assert!(
            start.elapsed() < WATCHDOG,
            "no rendezvous file {:?}",
            a.rendezvous
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut t = ShmTransport::new("pingpong-client".parse().unwrap(), std::env::temp_dir());
    let link = t.accept(&bytes).unwrap();
    let mut ch = Chan::new(link, config(a), StdClock::default()).unwrap();
    let mut msg = vec![0xA5u8; a.size];
    let mut echo = vec![0u8; ch.max_incoming()];
    let warmup = (a.messages / 10).min(1_000);
    let mut rtt = Vec::with_capacity(a.messages as usize);
    let total = Instant::now();
    for seq in 0..warmup + a.messages {
        msg[..8].copy_from_slice(&seq.to_le_bytes());
        let t0 = Instant::now();
        ch.send_blocking(&msg, Some(WATCHDOG)).unwrap();
        let len = ch.recv_blocking(&mut echo, Some(WATCHDOG)).unwrap();
        let dt = t0.elapsed();
        assert_eq!(&echo[..len], &msg[..], "echo {seq} differs");
        if seq >= warmup {
            rtt.push(dt);
        }
    }
    let total = total.elapsed();
    rtt.sort_unstable();
    let pct = |p: f64| rtt[((rtt.len() as f64 * p) as usize).min(rtt.len() - 1)];
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "{} round trips of {} B (spin {}), after {warmup} warm-up ones:",
        rtt.len(),
        a.size,
        a.spin
    );
    println!("| p50 | p90 | p99 | p99.9 | max |");
    println!("|---|---|---|---|---|");
    println!(
        "| {:.2} µs | {:.2} µs | {:.2} µs | {:.2} µs | {:.2} µs |",
        us(pct(0.50)),
        us(pct(0.90)),
        us(pct(0.99)),
        us(pct(0.999)),
        us(*rtt.last().unwrap())
    );
    let s = ch.stats();
    println!(
        "{:.0} round trips/s; doorbells rung {} ({:.3} per message), wake-ups {}, spurious {}",
        (warmup + a.messages) as f64 / total.as_secs_f64(),
        s.doorbells_rung,
        s.doorbells_per_message(),
        s.wakeups,
        s.spurious_wakeups
    );
    drop(ch.close()); // the server sees the hang-up and exits
}

fn spawn_server(a: &Args, rendezvous: &Path) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--role", "server", "--size", &a.size.to_string()])
        .args(["--spin", &a.spin.to_string()])
        .arg("--rendezvous")
        .arg(rendezvous)
        .stdin(Stdio::null())
        .spawn()
        .unwrap()
}

fn main() {
    let a = parse_args();
    match a.role.as_deref() {
        Some("server") => server(&a),
        Some("client") => client(&a),
        None => {
            let _ = std::fs::remove_file(&a.rendezvous);
            let mut child = spawn_server(&a, &a.rendezvous);
            client(&a);
            let status = child.wait().unwrap();
            assert!(status.success(), "server: {status}");
        }
        Some(other) => panic!("unknown role {other}"),
    }
}
