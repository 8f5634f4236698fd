//! A receiving peer process is SIGKILLed mid-stream; the flow continues over the network
//! path (TCP) to a restarted receiver, and nothing is lost, duplicated or reordered.
//!
//! ```text
//!   parent (sender, Router)                  child 1 (receiver, Router)
//!   shm Channel ----------------------------> recv_channels -> log "flow seq cksum"
//!   (TCP path unused: lazily connected)      TCP listener on port P (write(2) per line)
//!         ... SIGKILL child 1, mid-stream ...
//!                                            child 2: reads the log, resume_flow(last+1),
//!   router.poll(): peer gone -> fail over:   listens on P, receives only from TCP
//!   unconsumed ring frames resent over TCP,
//!   oldest first; then new messages by TCP -> recv_network -> log
//! ```
//!
//! The log is appended with one `write(2)` per delivered message, so it survives the
//! SIGKILL; the parent checks it holds every sequence number once, in order, with the
//! right checksum. Child processes are this test binary re-run (`--exact child_entry`).
#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use coresident::lookup::{Seed, Table};
use coresident::{
    Channel, ChannelConfig, ChannelLayout, FlowHeader, NetworkPath, PendingOffer, Router, StdClock,
    ThresholdPolicy, Transport, FLOW_HEADER_LEN,
};
use coresident_shm::{MemfdRegion, PeerLink, ShmTransport};

const ROLE_ENV: &str = "CORESIDENT_KILL_CHILD";
const RDV_ENV: &str = "CORESIDENT_KILL_RDV";
const LOG_ENV: &str = "CORESIDENT_KILL_LOG";
const PORT_ENV: &str = "CORESIDENT_KILL_PORT";
/// The longest anything may make no progress; never a bound on the test's runtime.
const WATCHDOG: Duration = Duration::from_secs(30);
const FLOW: u32 = 7;
/// Child 1 is killed once it has logged `KILL_AT` messages; `AFTER` more follow.
const AFTER: u64 = 4_000;
const KILL_AT: usize = 1_500;
/// The sender keeps the ring at most this full (per mille), so it never overflows to
/// the network before the kill (a message the dead child took from TCP but did not log
/// would be lost: TCP has no application-level acknowledgement).
const PACE: u32 = 500;
/// Sent right before the kill, unpaced (at most ~0.5 MiB: fits beside `PACE`).
const BURST: u64 = 2_000;
/// Data area of each ring.
const RING: u32 = 1 << 22;

type Net<N> = Router<'static, u64, MemfdRegion, PeerLink, StdClock, N, ThresholdPolicy, 4>;

/// Deterministic payload of message `seq`: 8 bytes of `seq`, then 0..=500 more.
fn payload(seq: u64) -> Vec<u8> {
    let len = 8 + (seq.wrapping_mul(2654435761) % 501) as usize;
    let mut p: Vec<u8> = (0..len).map(|k| (seq as u8) ^ (k as u8)).collect();
    p[..8].copy_from_slice(&seq.to_le_bytes());
    p
}

fn checksum(bytes: &[u8]) -> u64 {
    // FNV-1a.
    bytes.iter().fold(0xcbf29ce484222325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

fn table() -> &'static Table<u64, 4> {
    Box::leak(Box::new(Table::new(Seed::new([1, 3, 5, 7]))))
}

fn channel_config() -> ChannelConfig {
    ChannelConfig {
        spin: 100,
        ..ChannelConfig::default()
    }
}

// ------------------------------------------------------------------ network paths

/// The sender's TCP path: connects on first use (to whoever listens on the port then).
struct LazyTcp {
    port: u16,
    stream: Option<TcpStream>,
}

impl NetworkPath<u64> for LazyTcp {
    type Error = std::io::Error;

    fn send(&mut self, _: &u64, h: FlowHeader, p: &[u8]) -> std::io::Result<()> {
        if self.stream.is_none() {
            self.stream = Some(TcpStream::connect((Ipv4Addr::LOCALHOST, self.port))?);
        }
        let mut frame = ((FLOW_HEADER_LEN + p.len()) as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(&h.encode());
        frame.extend_from_slice(p);
        self.stream.as_mut().unwrap().write_all(&frame)
    }
}

/// The receivers never send.
struct NoNet;

impl NetworkPath<u64> for NoNet {
    type Error = std::io::Error;

    fn send(&mut self, _: &u64, _: FlowHeader, _: &[u8]) -> std::io::Result<()> {
        Err(std::io::Error::other("a receiver does not send"))
    }
}

// ------------------------------------------------------------------ children

/// Appends one "flow seq checksum" line per delivered message with one write(2).
struct Log(std::fs::File);

impl Log {
    fn deliver(&mut self, flow: u32, m: &[u8]) {
        let seq = u64::from_le_bytes(m[..8].try_into().unwrap());
        let line = format!("{flow} {seq} {}\n", checksum(m));
        self.0.write_all(line.as_bytes()).unwrap();
    }
}

fn open_log() -> Log {
    let path = std::env::var_os(LOG_ENV).unwrap();
    Log(std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap())
}

/// Tells the parent the port, on the real stdout (`println!` would go to the test
/// harness's capture).
fn ready(port: u16) {
    let mut out = std::io::stdout();
    out.write_all(format!("READY {port}\n").as_bytes()).unwrap();
    out.flush().unwrap();
}

#[test]
fn child_entry() {
    let Ok(role) = std::env::var(ROLE_ENV) else {
        return; // Not a child: nothing to do in the normal test run.
    };
    let mut log = open_log();
    match role.as_str() {
        // Receives from the channel (and would from TCP) until killed.
        "first" => {
            let hex = std::env::var(RDV_ENV).unwrap();
            let rdv: Vec<u8> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            let mut t = ShmTransport::new("receiver".parse().unwrap(), std::env::temp_dir());
            let link = t.accept(&rdv).unwrap();
            let ch = Channel::new(link, channel_config(), StdClock::default()).unwrap();
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            let table = table();
            let mut router: Net<NoNet> =
                Router::new(table, ThresholdPolicy::default(), NoNet, 1 << 16);
            let h = router.attach(1, ch).unwrap();
            table.writer().unwrap().insert(1, h).unwrap();
            ready(listener.local_addr().unwrap().port());
            let mut idle = Instant::now();
            loop {
                // A slow receiver (a short sleep per message), so the sender's last
                // burst is mostly unread when the kill comes.
                let n = router
                    .recv_channels(|f, m| {
                        log.deliver(f, m);
                        std::thread::sleep(Duration::from_micros(20));
                    })
                    .unwrap();
                if n > 0 {
                    idle = Instant::now();
                } else {
                    assert!(idle.elapsed() < WATCHDOG, "watchdog: the sender went quiet");
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
        }
        // Continues where the log ends, from TCP only.
        "second" => {
            let text = std::fs::read_to_string(std::env::var_os(LOG_ENV).unwrap()).unwrap();
            let last: Option<u64> = text
                .lines()
                .last()
                .map(|l| l.split(' ').nth(1).unwrap().parse().unwrap());
            let mut router: Net<NoNet> =
                Router::new(table(), ThresholdPolicy::default(), NoNet, 1 << 16);
            router.resume_flow(FLOW, last.map_or(0, |l| l + 1));
            let port: u16 = std::env::var(PORT_ENV).unwrap().parse().unwrap();
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
            ready(port);
            let mut s = listener.accept().unwrap().0;
            s.set_read_timeout(Some(WATCHDOG)).unwrap();
            let mut len = [0u8; 4];
            while s.read_exact(&mut len).is_ok() {
                let mut frame = vec![0u8; u32::from_le_bytes(len) as usize];
                s.read_exact(&mut frame).unwrap();
                let h = FlowHeader::decode(&frame).unwrap();
                router
                    .recv_network(h, &frame[FLOW_HEADER_LEN..], |f, m| log.deliver(f, m))
                    .unwrap();
            }
            eprintln!(
                "second receiver: {} duplicates dropped",
                router.duplicates()
            );
        }
        other => panic!("unknown role {other}"),
    }
    std::process::exit(0);
}

// ------------------------------------------------------------------ parent

fn spawn(role: &str, envs: &[(&str, String)]) -> (Child, BufReader<ChildStdout>, u16) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(ROLE_ENV, role)
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    // The harness prints its own lines first.
    let port = loop {
        let mut line = String::new();
        assert!(out.read_line(&mut line).unwrap() > 0, "child {role} exited");
        // The harness's "test child_entry ... " has no newline: READY ends that line.
        if let Some((_, p)) = line.trim().split_once("READY ") {
            break p.parse().unwrap();
        }
    };
    (child, out, port)
}

fn lines(path: &Path) -> usize {
    std::fs::read(path).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count())
}

#[test]
fn killed_receiver_flow_continues_over_tcp_without_loss_duplicates_or_reordering() {
    let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("kill-fallback-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let log_env = log.to_str().unwrap().to_string();

    // The channel: offered here, accepted by child 1.
    let mut t = ShmTransport::in_default_dir("sender".parse().unwrap());
    let mut buf = [0u8; 256];
    let (pending, n) = t.offer(ChannelLayout::symmetric(RING), &mut buf).unwrap();
    let hex: String = buf[..n].iter().map(|b| format!("{b:02x}")).collect();
    let (mut first, _out1, port) = spawn("first", &[(RDV_ENV, hex), (LOG_ENV, log_env.clone())]);
    let link = pending.complete(Some(WATCHDOG)).unwrap();
    let ch = Channel::new(link, channel_config(), StdClock::default()).unwrap();

    let table = table();
    let net = LazyTcp { port, stream: None };
    let mut router: Net<LazyTcp> = Router::new(table, ThresholdPolicy::default(), net, 64);
    let h = router.attach(1, ch).unwrap();
    table.writer().unwrap().insert(1, h).unwrap();

    // Phase 1: over the channel, paced, until child 1 has logged KILL_AT messages.
    let mut seq = 0u64;
    let mut progress = Instant::now();
    while lines(&log) < KILL_AT {
        assert!(
            progress.elapsed() < WATCHDOG,
            "watchdog: child 1 logs nothing"
        );
        router.poll().unwrap();
        let full = router.channel(h).is_some_and(|c| c.load() > PACE);
        if full {
            std::thread::sleep(Duration::from_micros(100));
            continue;
        }
        for _ in 0..256 {
            router.send(&1, FLOW, &payload(seq)).unwrap();
            seq += 1;
        }
        progress = Instant::now();
    }
    // A last burst the child cannot have read yet, then the kill: the ring holds
    // unconsumed frames (and, likely, a batch the child delivered but never released).
    for _ in 0..BURST {
        router.send(&1, FLOW, &payload(seq)).unwrap();
        seq += 1;
    }
    assert_eq!(
        router.stats().via_network,
        0,
        "the ring overflowed before the kill"
    );
    first.kill().unwrap(); // SIGKILL, mid-stream
    first.wait().unwrap();
    let logged_by_first = lines(&log);
    eprintln!("killed child 1 after {seq} sent, {logged_by_first} logged");

    // Child 2 takes over the port and the log.
    let (mut second, _out2, _) = spawn(
        "second",
        &[(LOG_ENV, log_env.clone()), (PORT_ENV, port.to_string())],
    );

    // The sender notices the peer is gone and fails over: unconsumed frames go by TCP.
    let start = Instant::now();
    while router.stats().fallbacks == 0 {
        assert!(
            start.elapsed() < WATCHDOG,
            "watchdog: peer death never noticed"
        );
        router.poll().unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    let resent = router.stats().resent;

    // Phase 2: the rest of the flow, over TCP.
    let total = seq + AFTER;
    while seq < total {
        router.send(&1, FLOW, &payload(seq)).unwrap();
        seq += 1;
    }
    let stats = *router.stats();
    drop(router); // closes the TCP stream: child 2 sees EOF and exits
    let status = second.wait().unwrap();
    assert!(status.success(), "child 2: {status}");
    eprintln!(
        "resent {resent} unconsumed over TCP; {} via channel, {} via network",
        stats.via_channel, stats.via_network
    );
    assert!(
        resent > 0,
        "nothing was unconsumed at the kill: the test proves less"
    );

    // Every sequence number once, in order, with its checksum.
    let text = std::fs::read_to_string(&log).unwrap();
    let mut count = 0u64;
    for (i, line) in text.lines().enumerate() {
        let f: Vec<&str> = line.split(' ').collect();
        assert_eq!(f.len(), 3, "line {i}: {line:?}");
        assert_eq!(f[0], FLOW.to_string(), "line {i}: wrong flow");
        let s: u64 = f[1].parse().unwrap();
        assert_eq!(
            s, i as u64,
            "line {i}: seq {s} (lost, duplicated or reordered)"
        );
        assert_eq!(
            f[2],
            checksum(&payload(s)).to_string(),
            "line {i}: bad checksum"
        );
        count += 1;
    }
    assert_eq!(count, total, "the log ends early");
    let _ = std::fs::remove_file(&log);
}
