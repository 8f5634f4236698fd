//! The receiving process is SIGKILLed several times, at random points, while the
//! sender goes full speed; every message arrives once, in order, checksummed, through a
//! channel, `TcpPath`, or both.
//!
//! ```text
//!   parent: sender Router (key 1)                 child k: receiver Router (key 2)
//!   shm channel k ------------------------------> recv_blocking -> log "seq checksum"
//!   ring full: spill -> TcpPath (replay buffer) -> TcpPath listener (same port each k)
//!                    <- acks of what was logged   resume_flow(1, FLOW, last logged + 1)
//!     ... at a random sequence number: SIGKILL child k ...
//!   poll(): the channel's peer is gone -> fail over: unconsumed ring frames -> TcpPath
//!   sends go on (TcpPath buffers; refuses when full: nothing is taken then)
//!   offer channel k+1, spawn child k+1: it reads its log, resumes; TcpPath reconnects,
//!   the welcome says where the flow resumes, the replay buffer goes again from there
//! ```
//!
//! No pacing: the sender never waits for the receiver except when the network path
//! refuses a message (its replay buffer full of unacknowledged messages), so the ring
//! is full much of the time and messages overflow to TCP.
//!
//! Sizes: a 1/16 share log-uniform over 16 B ..= 64 KiB (every octave of the range gets
//! thousands of messages), the rest log-uniform over 16 ..= 512 B, and every 65,537th
//! message exactly 64 KiB, every 65,539th exactly 16 B; about 0.6 KiB on average, so a
//! million messages are ~0.6 GB. The log is appended with one `write(2)` per delivered
//! message, inside the delivery callback, so it survives the SIGKILL and says exactly
//! what the application was handed; acknowledgements go out only after it.
//!
//! `CORESIDENT_KILL_MESSAGES` (default 1,000,000), `CORESIDENT_KILL_KILLS` (default 4)
//! and `CORESIDENT_KILL_SEED` (default: from the clock, printed) change the run.
#![cfg(target_os = "linux")]

use std::hash::{DefaultHasher, Hasher};
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use coresident::lookup::{Seed, Table};
use coresident::path::{TcpError, TcpPath};
use coresident::{
    Channel, ChannelConfig, ChannelLayout, NetworkPath, PendingOffer, RouteError, Router, StdClock,
    ThresholdPolicy, Transport,
};
use coresident_shm::{MemfdRegion, PeerLink, ShmTransport};

const ROLE_ENV: &str = "CORESIDENT_KILL_CHILD";
const RDV_ENV: &str = "CORESIDENT_KILL_RDV";
const LOG_ENV: &str = "CORESIDENT_KILL_LOG";
const PORT_ENV: &str = "CORESIDENT_KILL_PORT";
const TOTAL_ENV: &str = "CORESIDENT_KILL_MESSAGES";
const DIR_ENV: &str = "CORESIDENT_KILL_DIR";
/// The longest anything may make no progress; never a bound on the test's runtime.
const WATCHDOG: Duration = Duration::from_secs(60);
const FLOW: u32 = 7;
const SENDER: u64 = 1;
const RECEIVER: u64 = 2;
/// Data area of each ring: a 64 KiB message fits with room to spare.
const RING: u32 = 1 << 20;
const MAX_LEN: usize = 64 << 10;
const MIN_LEN: usize = 16;

type Net = Router<'static, u64, MemfdRegion, PeerLink, StdClock, TcpPath<u64>, ThresholdPolicy, 4>;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A step of splitmix64: the test's only randomness, seeded and printed.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Log-uniform in `lo..=hi`.
fn log_uniform(r: u64, lo: usize, hi: usize) -> usize {
    let u = (r >> 11) as f64 / (1u64 << 53) as f64;
    let (a, b) = ((lo as f64).ln(), ((hi + 1) as f64).ln());
    ((a + u * (b - a)).exp() as usize).clamp(lo, hi)
}

/// The length of message `seq` (see the module docs).
fn len_of(seq: u64) -> usize {
    if seq % 65_537 == 0 {
        return MAX_LEN;
    }
    if seq % 65_539 == 1 {
        return MIN_LEN;
    }
    let r = mix(seq ^ 0x05EE_D0F5_12E5);
    if r & 15 == 0 {
        log_uniform(mix(r), MIN_LEN, MAX_LEN)
    } else {
        log_uniform(mix(r), MIN_LEN, 512)
    }
}

/// Deterministic bytes to cut payloads from.
fn pattern() -> Vec<u8> {
    (0..(MAX_LEN as u64 * 2) / 8)
        .flat_map(|i| mix(i).to_le_bytes())
        .collect()
}

/// Message `seq`: its sequence number, then bytes of the pattern at a place of its own.
fn payload(pattern: &[u8], seq: u64, out: &mut Vec<u8>) {
    let len = len_of(seq);
    let at = (mix(seq) % (pattern.len() - MAX_LEN) as u64) as usize;
    out.clear();
    out.extend_from_slice(&pattern[at..at + len]);
    out[..8].copy_from_slice(&seq.to_le_bytes());
}

fn checksum(bytes: &[u8]) -> u64 {
    // std's SipHash with fixed keys: the same in every process of this binary, and
    // fast (std is built optimised, the test is not).
    let mut h = DefaultHasher::new();
    h.write(bytes);
    h.finish()
}

fn table() -> &'static Table<u64, 4> {
    Box::leak(Box::new(Table::new(Seed::new([1, 3, 5, 7]))))
}

fn channel_config() -> ChannelConfig {
    ChannelConfig {
        spin: 20,
        ..ChannelConfig::default()
    }
}

// ------------------------------------------------------------------ the receiver

/// The log: one "seq checksum" line per delivered message, one `write(2)` each.
struct Log {
    file: std::fs::File,
    next: u64,
}

impl Log {
    /// Opens the log, drops a torn last line (a kill in the middle of a write), and
    /// returns it with the next sequence number it expects.
    fn open() -> Self {
        let path = std::env::var_os(LOG_ENV).unwrap();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .unwrap();
        let text = std::fs::read(&path).unwrap();
        let whole = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        if whole < text.len() {
            file.set_len(whole as u64).unwrap();
        }
        let next = text[..whole]
            .split(|&b| b == b'\n')
            .rev()
            .find(|l| !l.is_empty())
            .map_or(0, |l| {
                let l = std::str::from_utf8(l).unwrap();
                l.split(' ').next().unwrap().parse::<u64>().unwrap() + 1
            });
        Self { file, next }
    }

    fn deliver(&mut self, peer: &u64, flow: u32, m: &[u8]) {
        assert_eq!((*peer, flow), (SENDER, FLOW), "a message of another flow");
        let seq = u64::from_le_bytes(m[..8].try_into().unwrap());
        assert_eq!(seq, self.next, "delivered out of order");
        let line = format!("{seq} {}\n", checksum(m));
        // `O_APPEND`: one write(2) places the whole line at the end.
        (&self.file).write_all(line.as_bytes()).unwrap();
        self.next += 1;
    }
}

/// Tells the parent the port, on the real stdout (`println!` would go to the test
/// harness's capture).
fn ready(port: u16) {
    let mut out = std::io::stdout();
    out.write_all(format!("READY {port}\n").as_bytes()).unwrap();
    out.flush().unwrap();
}

fn receiver() {
    let mut log = Log::open();
    let total = env_u64(TOTAL_ENV, 1_000_000);
    let hex = std::env::var(RDV_ENV).unwrap();
    let rdv: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let port: u16 = std::env::var(PORT_ENV).unwrap().parse().unwrap();
    let net = TcpPath::bind(
        RECEIVER,
        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        |_| None,
    )
    .expect("bind the receiver's port");
    let port = net.local_addr().unwrap().port();
    let table = table();
    let mut router: Net = Router::new(table, ThresholdPolicy::default(), net, 1 << 20);
    // What this receiver's predecessors delivered is in the log: continue after it.
    router
        .resume_flow(&SENDER, FLOW, log.next, |_, _, _| {
            unreachable!("nothing is held yet")
        })
        .unwrap();
    let dir = std::path::PathBuf::from(std::env::var_os(DIR_ENV).unwrap());
    let mut t = ShmTransport::new("receiver".parse().unwrap(), dir);
    let link = t.accept(&rdv).unwrap();
    let ch = Channel::new(link, channel_config(), StdClock::default()).unwrap();
    router.attach(SENDER, ch).unwrap();
    ready(port);
    let mut idle = Instant::now();
    while log.next < total {
        match router.recv_blocking(Some(Duration::from_millis(100)), |p, f, m| {
            log.deliver(p, f, m)
        }) {
            Ok(_) => idle = Instant::now(),
            Err(RouteError::TimedOut) => {
                assert!(
                    idle.elapsed() < WATCHDOG,
                    "watchdog: nothing arrives; next {}, held {} ({} bytes), {:?}, tcp {:?}",
                    log.next,
                    router.held(),
                    router.held_bytes(),
                    router.stats(),
                    router.network_ref().stats()
                );
                router.poll().unwrap();
            }
            Err(e) => panic!("receiver: {e}"),
        }
    }
    // Let the last acknowledgements go out.
    for _ in 0..10 {
        router.poll().unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!("receiver: done at {}, {:?}", log.next, router.stats().rx);
}

#[test]
fn child_entry() {
    let Ok(role) = std::env::var(ROLE_ENV) else {
        return; // Not a child: nothing to do in the normal test run.
    };
    assert_eq!(role, "receiver");
    receiver();
    std::process::exit(0);
}

// ------------------------------------------------------------------ the sender

fn spawn(envs: &[(&str, String)]) -> (Child, BufReader<ChildStdout>, u16) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(ROLE_ENV, "receiver")
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let port = loop {
        let mut line = String::new();
        assert!(out.read_line(&mut line).unwrap() > 0, "the receiver exited");
        // The harness's "test child_entry ... " has no newline: READY ends that line.
        if let Some((_, p)) = line.trim().split_once("READY ") {
            break p.parse().unwrap();
        }
    };
    (child, out, port)
}

/// Offers a fresh channel, starts a receiver with it, and attaches it.
struct Spawner {
    transport: ShmTransport,
    envs: Vec<(&'static str, String)>,
}

impl Spawner {
    fn start(&mut self, router: &mut Net, table: &Table<u64, 4>) -> Child {
        let mut buf = [0u8; 256];
        let (pending, n) = self
            .transport
            .offer(ChannelLayout::symmetric(RING), &mut buf)
            .unwrap();
        let hex: String = buf[..n].iter().map(|b| format!("{b:02x}")).collect();
        let mut envs = self.envs.clone();
        envs.push((RDV_ENV, hex));
        let (child, _out, _port) = spawn(&envs);
        let link = pending.complete(Some(WATCHDOG)).unwrap();
        let ch = Channel::new(link, channel_config(), StdClock::default()).unwrap();
        let h = router.attach(RECEIVER, ch).unwrap();
        table.writer().unwrap().insert(RECEIVER, h).unwrap();
        child
    }
}

fn lines(path: &std::path::Path) -> u64 {
    std::fs::read(path).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count() as u64)
}

#[test]
fn the_receiver_killed_at_random_points_loses_nothing_at_full_speed() {
    let total = env_u64(TOTAL_ENV, 1_000_000).max(1);
    let kills = env_u64("CORESIDENT_KILL_KILLS", 4);
    let seed = env_u64(
        "CORESIDENT_KILL_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    );
    // Kill points: uniform over the middle 90% of the stream.
    let mut kill_at: Vec<u64> = (0..kills)
        .map(|i| total / 20 + mix(seed ^ i) % (total * 9 / 10).max(1))
        .collect();
    kill_at.sort_unstable();
    eprintln!("seed {seed}: {total} messages, kills at {kill_at:?}");

    let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("kill-fallback-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    // A free port for every receiver (each binds it again; std sets SO_REUSEADDR).
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // The rendezvous sockets' directory: ours alone (the host transport refuses a
    // world-writable one).
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("kill-fallback-{}", std::process::id()));
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .unwrap();
    }
    let mut spawner = Spawner {
        transport: ShmTransport::new("sender".parse().unwrap(), &dir),
        envs: vec![
            (DIR_ENV, dir.to_str().unwrap().to_string()),
            (LOG_ENV, log.to_str().unwrap().to_string()),
            (PORT_ENV, port.to_string()),
            (TOTAL_ENV, total.to_string()),
        ],
    };

    let table = table();
    let at = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let net = TcpPath::new(SENDER, move |k| (*k == RECEIVER).then_some(at));
    // The load never moves the flow by itself: only a full ring sends it to TCP.
    let policy = ThresholdPolicy {
        max_load: 1000,
        ..ThresholdPolicy::default()
    };
    let mut router: Net = Router::new(table, policy, net, 64);
    let mut child = spawner.start(&mut router, table);

    let pattern = pattern();
    let mut msg = Vec::new();
    let mut seq = 0u64;
    let (mut refused, mut switching) = (0u64, 0u64);
    let mut progress = Instant::now();
    let mut next_kill = 0;
    let t0 = Instant::now();
    while seq < total {
        if next_kill < kill_at.len() && seq >= kill_at[next_kill] {
            next_kill += 1;
            child.kill().unwrap(); // SIGKILL, wherever the receiver is
            child.wait().unwrap();
            eprintln!(
                "kill {next_kill} at seq {seq} ({:.1?}): {} logged",
                t0.elapsed(),
                lines(&log)
            );
            // The sender learns it from the channel (the rendezvous socket hangs up),
            // as it would in production; the control path drops the key meanwhile.
            let fallbacks = router.stats().fallbacks;
            let start = Instant::now();
            while router.stats().fallbacks == fallbacks {
                assert!(
                    start.elapsed() < WATCHDOG,
                    "watchdog: the death is never noticed"
                );
                router.poll().unwrap();
                std::thread::sleep(Duration::from_millis(1));
            }
            table.writer().unwrap().remove(&RECEIVER);
            child = spawner.start(&mut router, table);
        }
        payload(&pattern, seq, &mut msg);
        match router.send(&RECEIVER, FLOW, &msg) {
            Ok(_) => {
                seq += 1;
                progress = Instant::now();
                if seq % 1024 == 0 {
                    router.poll().unwrap();
                }
            }
            // Not taken (its sequence number stays free): the replay buffer is full of
            // what the receiver has not acknowledged yet, or the flow waits for the
            // network to deliver its messages before it goes back to the ring.
            Err(e @ (RouteError::Network(TcpError::Full { .. }) | RouteError::Switching)) => {
                if matches!(e, RouteError::Switching) {
                    switching += 1;
                } else {
                    refused += 1;
                }
                assert!(
                    progress.elapsed() < WATCHDOG,
                    "watchdog: the network path refuses for {WATCHDOG:?}"
                );
                router.poll().unwrap();
                router.network().wait(Duration::from_micros(200));
            }
            Err(e) => panic!("send {seq}: {e}"),
        }
    }
    let sent_at = t0.elapsed();
    // The rest: the receiver exits once it has logged everything.
    let start = Instant::now();
    let mut last = lines(&log);
    loop {
        router.flush();
        router.poll().unwrap();
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "the receiver failed: {status}");
            break;
        }
        let now = lines(&log);
        if now != last {
            last = now;
        } else {
            assert!(
                start.elapsed() < WATCHDOG,
                "watchdog: the receiver stopped at {now}; backlog {}, unacknowledged {}, {:?}, \
                 tcp {:?}",
                router.backlog(),
                router.network_ref().unacknowledged(&RECEIVER),
                router.stats(),
                router.network_ref().stats()
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let s = *router.stats();
    eprintln!(
        "sent {total} in {sent_at:.1?} ({:.1?} with the drain): {} via channel, {} via network \
         ({} spilled from a full ring), {} resent after a fail-over, {} fallbacks; not taken: \
         {refused} for a full replay buffer, {switching} while the flow waited for TCP to \
         deliver before going back to the ring; tcp: {:?}",
        t0.elapsed(),
        s.via_channel,
        s.via_network,
        s.spilled,
        s.resent,
        s.fallbacks,
        router.network().stats()
    );
    // Each kill is a fail-over (and the last receiver's exit may be one more).
    assert!(
        s.fallbacks >= kills,
        "{} fail-overs for {kills} kills",
        s.fallbacks
    );
    assert!(
        s.spilled > 0,
        "the ring never overflowed: the test proves less"
    );
    assert!(
        s.resent > 0,
        "nothing was unconsumed at a kill: the test proves less"
    );

    // Every sequence number once, in order, with its checksum.
    let text = std::fs::read_to_string(&log).unwrap();
    let mut count = 0u64;
    for (i, line) in text.lines().enumerate() {
        let (s, c) = line
            .split_once(' ')
            .unwrap_or_else(|| panic!("line {i}: {line:?}"));
        let s: u64 = s.parse().unwrap();
        assert_eq!(
            s, i as u64,
            "line {i}: seq {s} (lost, duplicated or reordered)"
        );
        payload(&pattern, s, &mut msg);
        assert_eq!(
            c.parse::<u64>().ok(),
            Some(checksum(&msg)),
            "line {i}: bad checksum"
        );
        count += 1;
    }
    assert_eq!(count, total, "the log ends early");
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_dir_all(&dir);
}
