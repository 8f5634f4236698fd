//! The measuring machinery: the peer process (this example re-run with `--peer`), the
//! paths (shm channel, UDP, TCP), CPU pinning and the veth namespaces.
//!
//! ```text
//!   parent (sender)                                 child: study --peer ROLE k=v ...
//!   offer shm channel (if any) ----- rdv=HEX ---->  accept channel / bind UDP / listen TCP
//!                              <---- READY port --  (stdout)
//!   pin, maybe setns; connect; send for D; close
//!                              <---- RESULT k=v --  received counts, time, channel stats
//! ```
//!
//! Every throughput is measured at the receiver: payload bytes received divided by the
//! time from its first message to the end of the stream (close, EOF, end marker).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use coresident::{
    Batching, Channel, ChannelConfig, ChannelError, ChannelLayout, FlowHeader, NetworkPath,
    PendingOffer, StdClock, Transport, FLOW_HEADER_LEN,
};
use coresident_shm::{ShmPending, ShmTransport};

/// The channel type over the host transport.
pub type Chan = Channel<coresident_shm::MemfdRegion, coresident_shm::PeerLink, StdClock>;

/// A router whose channels are host-transport channels and whose network path is TCP.
pub type NetRouter<'t, K, const B: usize> = coresident::Router<
    't,
    K,
    coresident_shm::MemfdRegion,
    coresident_shm::PeerLink,
    StdClock,
    TcpPath,
    coresident::ThresholdPolicy,
    B,
>;

/// The longest any side waits for the other; a hang becomes a panic, never a bound on
/// how long a measurement may take.
pub const WATCHDOG: Duration = Duration::from_secs(30);
/// Data area of each direction's ring.
pub const RING: u32 = 1 << 20;
/// Routed frames on TCP: a 4-byte length, the flow header, the payload.
pub const TCP_FRAME_OVERHEAD: usize = 4 + FLOW_HEADER_LEN;
/// The largest UDP payload over IPv4.
pub const UDP_MAX: usize = 65_507;

/// The two namespaces and the veth pair's addresses.
pub const NS_A: &str = "cr-study-a";
pub const NS_B: &str = "cr-study-b";
pub const VETH_A: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 1);
pub const VETH_B: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 2);

/// Where the network path runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Net {
    /// 127.0.0.1 in our own namespace.
    Loopback,
    /// From namespace A to namespace B over the veth pair.
    Veth,
}

impl Net {
    pub fn peer_ip(self) -> IpAddr {
        match self {
            Net::Loopback => IpAddr::V4(Ipv4Addr::LOCALHOST),
            Net::Veth => IpAddr::V4(VETH_B),
        }
    }
}

// ------------------------------------------------------------------ pinning, netns

/// Pins the calling thread (and what it spawns later) to `cpu`.
pub fn pin(cpu: usize) {
    // SAFETY:
    // - `cpu_set_t` is plain data, all-zero is the empty set;
    // - CPU_SET writes inside the set (cpu < CPU_SETSIZE, asserted by the caller's
    //   small numbers; the macro bounds-checks too);
    // - sched_setaffinity(0, ...) reads `size_of` bytes of the set for this thread.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    assert_eq!(rc, 0, "sched_setaffinity(cpu {cpu}) failed");
}

/// Moves the calling thread into network namespace `ns` (made by `ip netns add`).
pub fn enter_netns(ns: &str) {
    let f = std::fs::File::open(format!("/var/run/netns/{ns}")).unwrap();
    // SAFETY: `f` is an open namespace file for the duration of the call; setns only
    // affects this thread's network namespace.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns({ns}) failed");
}

/// Asks for large socket buffers (root may exceed the sysctl limits), so a 64 KiB
/// datagram burst is not dropped by a default 208 KiB buffer.
fn big_buffers(fd: &impl AsRawFd) {
    let size: libc::c_int = 4 << 20;
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        for opt in [force, plain] {
            // SAFETY: a valid socket fd and a pointer to a c_int of the given length.
            let rc = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&size as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc == 0 {
                break;
            }
        }
    }
}

/// The veth pair between two namespaces; removed on drop (also while unwinding).
#[derive(Debug)]
pub struct Veth;

impl Veth {
    /// Creates the namespaces and the pair when we are root and `ip` works; `Err` is
    /// the note to print otherwise.
    pub fn create() -> Result<Self, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root: the veth experiments are skipped".into());
        }
        remove_namespaces(); // leftovers of a run killed with SIGKILL
        let v = Veth;
        let a = VETH_A.to_string() + "/24";
        let b = VETH_B.to_string() + "/24";
        let steps: &[&[&str]] = &[
            &["netns", "add", NS_A],
            &["netns", "add", NS_B],
            &[
                "link", "add", "cr-va", "type", "veth", "peer", "name", "cr-vb",
            ],
            &["link", "set", "cr-va", "netns", NS_A],
            &["link", "set", "cr-vb", "netns", NS_B],
            &["-n", NS_A, "addr", "add", &a, "dev", "cr-va"],
            &["-n", NS_B, "addr", "add", &b, "dev", "cr-vb"],
            &["-n", NS_A, "link", "set", "cr-va", "up"],
            &["-n", NS_B, "link", "set", "cr-vb", "up"],
            &["-n", NS_A, "link", "set", "lo", "up"],
            &["-n", NS_B, "link", "set", "lo", "up"],
        ];
        for s in steps {
            let out = Command::new("ip").args(*s).stdin(Stdio::null()).output();
            match out {
                Ok(o) if o.status.success() => {}
                Ok(o) => {
                    return Err(format!(
                        "`ip {}` failed ({}): the veth experiments are skipped",
                        s.join(" "),
                        String::from_utf8_lossy(&o.stderr).trim()
                    ))
                }
                Err(e) => return Err(format!("no `ip` ({e}): the veth experiments are skipped")),
            }
        }
        Ok(v) // dropped on an error above: the namespaces are removed again
    }
}

fn remove_namespaces() {
    for ns in [NS_A, NS_B] {
        // Deleting a namespace destroys the veth end inside it, and with it the pair.
        let _ = Command::new("ip")
            .args(["netns", "del", ns])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    let _ = Command::new("ip")
        .args(["link", "del", "cr-va"])
        .stderr(Stdio::null())
        .status();
}

impl Drop for Veth {
    fn drop(&mut self) {
        remove_namespaces();
    }
}

/// A `tc` token-bucket rate limit on a device inside a namespace; removed on drop (also
/// while unwinding; a run killed with SIGKILL leaves it on a veth that the next run's
/// `Veth::create` deletes with its namespaces).
#[derive(Debug)]
pub struct RateLimit {
    ns: &'static str,
    dev: &'static str,
}

impl RateLimit {
    /// Limits `dev`'s egress in namespace `ns` to `rate` (a `tc` rate such as
    /// `1gbit`). The bucket holds 256 KiB, enough for the largest GSO segment the veth
    /// hands it, and queues up to 20 ms before dropping, like a switch port's buffer.
    pub fn new(ns: &'static str, dev: &'static str, rate: &str) -> Result<Self, String> {
        let args = [
            "netns", "exec", ns, "tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", rate,
            "burst", "256kb", "latency", "20ms",
        ];
        match Command::new("ip").args(args).stdin(Stdio::null()).output() {
            Ok(o) if o.status.success() => Ok(Self { ns, dev }),
            Ok(o) => Err(format!(
                "`ip {}` failed ({}): the rate-limited veth column is skipped",
                args.join(" "),
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => Err(format!(
                "no `ip` ({e}): the rate-limited veth column is skipped"
            )),
        }
    }
}

impl Drop for RateLimit {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args([
                "netns", "exec", self.ns, "tc", "qdisc", "del", "dev", self.dev, "root",
            ])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

// ------------------------------------------------------------------ channels

pub fn channel_config(batching: Batching, same_core: bool) -> ChannelConfig {
    ChannelConfig {
        batching,
        // On one shared core spinning only delays the peer.
        spin: if same_core {
            0
        } else {
            ChannelConfig::default().spin
        },
        ..ChannelConfig::default()
    }
}

pub fn batching_name(b: Batching) -> &'static str {
    match b {
        Batching::Always => "always",
        Batching::EventIndex => "event-index",
        _ => "stream",
    }
}

fn batching_from(s: &str) -> Batching {
    match s {
        "always" => Batching::Always,
        "event-index" => Batching::EventIndex,
        "stream" => Batching::STREAM,
        o => panic!("unknown batching {o}"),
    }
}

/// Offers a channel; returns the pending offer and the rendezvous bytes as hex.
pub fn offer() -> (ShmPending, String) {
    // A private, verified directory (never /tmp: others could take the offer).
    let mut t = ShmTransport::in_default_dir("study-sender".parse().unwrap());
    let mut buf = [0u8; 256];
    let (p, n) = t.offer(ChannelLayout::symmetric(RING), &mut buf).unwrap();
    (p, buf[..n].iter().map(|b| format!("{b:02x}")).collect())
}

pub fn complete(p: ShmPending, config: ChannelConfig) -> Chan {
    let link = p.complete(Some(WATCHDOG)).unwrap();
    Chan::new(link, config, StdClock::default()).unwrap()
}

fn accept(hex: &str, config: ChannelConfig) -> Chan {
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let mut t = ShmTransport::new("study-peer".parse().unwrap(), std::env::temp_dir());
    let link = t.accept(&bytes).unwrap();
    Chan::new(link, config, StdClock::default()).unwrap()
}

// ------------------------------------------------------------------ network path

/// The network path of a `Router`: routed frames on a TCP stream.
#[derive(Debug)]
pub struct TcpPath {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl TcpPath {
    pub fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            buf: Vec::with_capacity(64 << 10),
        }
    }
}

impl<K> NetworkPath<K> for TcpPath {
    type Error = std::io::Error;

    fn send(&mut self, _peer: &K, h: FlowHeader, payload: &[u8]) -> std::io::Result<()> {
        self.buf.clear();
        self.buf
            .extend_from_slice(&((FLOW_HEADER_LEN + payload.len()) as u32).to_le_bytes());
        self.buf.extend_from_slice(&h.encode());
        self.buf.extend_from_slice(payload);
        self.stream.write_all(&self.buf)
    }
}

// ------------------------------------------------------------------ the peer process

/// A running peer process.
pub struct Peer {
    child: Child,
    out: BufReader<ChildStdout>,
    /// The port it listens on (0 for a channel only).
    pub port: u16,
}

impl Peer {
    /// Starts `study --peer ARGS` (inside namespace B for the veth path) and waits
    /// until it is ready.
    pub fn spawn(net: Net, args: &[String]) -> Self {
        let exe = std::env::current_exe().unwrap();
        let mut cmd = match net {
            Net::Veth => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", NS_B]).arg(exe);
                c
            }
            Net::Loopback => Command::new(exe),
        };
        let mut child = cmd
            .arg("--peer")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let line = read_line(&mut out);
        let port = line
            .strip_prefix("READY ")
            .unwrap_or_else(|| panic!("peer said {line:?}"))
            .parse()
            .unwrap();
        Self { child, out, port }
    }

    /// Waits for the peer's result line and its exit.
    pub fn result(mut self) -> HashMap<String, f64> {
        let line = read_line(&mut self.out);
        let status = self.child.wait().unwrap();
        assert!(status.success(), "peer failed: {status}");
        let rest = line
            .strip_prefix("RESULT")
            .unwrap_or_else(|| panic!("peer said {line:?}"));
        rest.split_whitespace()
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (k.to_string(), v.parse().unwrap())
            })
            .collect()
    }
}

fn read_line(r: &mut impl BufRead) -> String {
    let mut s = String::new();
    r.read_line(&mut s).unwrap();
    s.trim().to_string()
}

/// What a sink received.
#[derive(Default)]
struct Got {
    msgs: u64,
    bytes: u64,
    first: Option<Instant>,
    end: Option<Instant>,
    rung: u64,
    wakeups: u64,
    spurious: u64,
}

fn sink_channel(mut ch: Chan) -> Got {
    let mut buf = vec![0u8; ch.max_incoming()];
    let mut g = Got::default();
    loop {
        match ch.recv_blocking(&mut buf, Some(WATCHDOG)) {
            Ok(n) => {
                if g.msgs == 0 {
                    g.first = Some(Instant::now());
                }
                g.msgs += 1;
                g.bytes += n as u64;
            }
            Err(ChannelError::PeerGone) => break,
            Err(e) => panic!("sink: {e}"),
        }
    }
    g.end = Some(Instant::now());
    let s = ch.stats();
    (g.rung, g.wakeups, g.spurious) = (s.doorbells_rung, s.wakeups, s.spurious_wakeups);
    g
}

fn sink_tcp(mut s: TcpStream) -> Got {
    let mut buf = vec![0u8; 256 << 10];
    let mut g = Got::default();
    s.set_read_timeout(Some(WATCHDOG)).unwrap();
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        if g.first.is_none() {
            g.first = Some(Instant::now());
        }
        g.bytes += n as u64;
    }
    g.end = Some(Instant::now());
    g
}

fn sink_udp(s: UdpSocket) -> Got {
    let mut buf = vec![0u8; 1 << 16];
    let mut g = Got::default();
    s.set_read_timeout(Some(WATCHDOG)).unwrap();
    loop {
        match s.recv(&mut buf) {
            Ok(0) => break, // the end marker
            Ok(n) => {
                let now = Instant::now();
                g.first.get_or_insert(now);
                g.end = Some(now);
                g.msgs += 1;
                g.bytes += n as u64;
                s.set_read_timeout(Some(Duration::from_millis(500)))
                    .unwrap();
            }
            // Every end marker lost: the last datagram marks the end.
            Err(e) if g.msgs > 0 && e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("udp sink: {e}"),
        }
    }
    g
}

fn secs(g: &Got) -> f64 {
    match (g.first, g.end) {
        (Some(a), Some(b)) => (b - a).as_secs_f64(),
        _ => 0.0,
    }
}

fn kv(args: &[String]) -> HashMap<&str, &str> {
    args.iter().filter_map(|a| a.split_once('=')).collect()
}

/// The peer process's main: `--peer ROLE k=v ...`.
pub fn peer_main(args: &[String]) {
    let role = args[0].as_str();
    let kv = kv(&args[1..]);
    if let Some(c) = kv.get("cpu") {
        pin(c.parse().unwrap());
    }
    let bind: IpAddr = kv.get("bind").unwrap_or(&"127.0.0.1").parse().unwrap();
    let same_core = kv.get("same_core") == Some(&"1");
    let batching = batching_from(kv.get("batching").unwrap_or(&"event-index"));
    let config = channel_config(batching, same_core);
    match role {
        // One stream in: kind=shm|udp|tcp.
        "sink" => {
            let g = match kv["kind"] {
                "shm" => {
                    let ch = accept(kv["rdv"], config);
                    println!("READY 0");
                    sink_channel(ch)
                }
                "udp" => {
                    let s = UdpSocket::bind((bind, 0)).unwrap();
                    big_buffers(&s);
                    println!("READY {}", s.local_addr().unwrap().port());
                    sink_udp(s)
                }
                "tcp" => {
                    let l = TcpListener::bind((bind, 0)).unwrap();
                    println!("READY {}", l.local_addr().unwrap().port());
                    sink_tcp(l.accept().unwrap().0)
                }
                k => panic!("unknown kind {k}"),
            };
            println!(
                "RESULT msgs={} bytes={} secs={} rung={} wakeups={} spurious={}",
                g.msgs,
                g.bytes,
                secs(&g),
                g.rung,
                g.wakeups,
                g.spurious
            );
        }
        // TCP request/response: read `req` bytes, answer `resp` bytes, until EOF.
        "echo" => {
            let (req, resp): (usize, usize) =
                (kv["req"].parse().unwrap(), kv["resp"].parse().unwrap());
            let l = TcpListener::bind((bind, 0)).unwrap();
            println!("READY {}", l.local_addr().unwrap().port());
            let mut s = l.accept().unwrap().0;
            s.set_nodelay(true).unwrap();
            s.set_read_timeout(Some(WATCHDOG)).unwrap();
            let (mut inb, out) = (vec![0u8; req], vec![0x5Au8; resp]);
            let mut n = 0u64;
            while s.read_exact(&mut inb).is_ok() {
                s.write_all(&out).unwrap();
                n += 1;
            }
            println!("RESULT transactions={n}");
        }
        // Exp. 1: `local` channels (rdv=HEX,HEX,...) and `flows` TCP connections, one
        // receiving thread each; aggregate payload bytes of `size`-byte messages.
        "mixed" => {
            let size: u64 = kv["size"].parse().unwrap();
            let flows: usize = kv["flows"].parse().unwrap();
            let chans: Vec<Chan> = kv
                .get("rdv")
                .map(|r| r.split(',').filter(|h| !h.is_empty()).collect::<Vec<_>>())
                .unwrap_or_default()
                .into_iter()
                .map(|h| accept(h, config))
                .collect();
            let l = TcpListener::bind((bind, 0)).unwrap();
            println!("READY {}", l.local_addr().unwrap().port());
            let conns: Vec<TcpStream> = (0..flows).map(|_| l.accept().unwrap().0).collect();
            let (gc, gt) = std::thread::scope(|s| {
                let c: Vec<_> = chans
                    .into_iter()
                    .map(|ch| s.spawn(|| sink_channel(ch)))
                    .collect();
                let t: Vec<_> = conns
                    .into_iter()
                    .map(|st| s.spawn(|| sink_tcp(st)))
                    .collect();
                let c: Vec<Got> = c.into_iter().map(|h| h.join().unwrap()).collect();
                let t: Vec<Got> = t.into_iter().map(|h| h.join().unwrap()).collect();
                (c, t)
            });
            let all = gc.iter().chain(&gt);
            let first = all.clone().filter_map(|g| g.first).min();
            let end = all.filter_map(|g| g.end).max();
            let secs = match (first, end) {
                (Some(a), Some(b)) => (b - a).as_secs_f64(),
                _ => 0.0,
            };
            let via_shm: u64 = gc.iter().map(|g| g.msgs * size).sum();
            let via_tcp: u64 = gt
                .iter()
                .map(|g| g.bytes / (size + TCP_FRAME_OVERHEAD as u64) * size)
                .sum();
            println!("RESULT shm={via_shm} tcp={via_tcp} secs={secs}");
        }
        r => panic!("unknown peer role {r}"),
    }
}
