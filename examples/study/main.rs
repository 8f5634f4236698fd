//! The 2013 study's experiments (Zhang, Liu, Ren et al., "Residency Aware Inter-VM
//! Communication in Virtualized Cloud") re-run on this host: the channel
//! (`coresident-shm` between two processes) against the network path (UDP and TCP
//! over loopback, and over a veth pair between two network namespaces when run as
//! root).
//!
//! ```text
//! cargo run --release --example study                      # everything, ~4 minutes
//! cargo run --release --example study -- --quick --check   # < 1 minute, CSVs checked
//! cargo run --release --example study -- --experiment 1,3 --out study-out
//! ```
//!
//! 1. Mixed workloads (Fig. 2): five concurrent flows of 1 KiB messages, local:remote
//!    from 0:5 to 5:0, each flow a thread with its own `Router` (table lookup and
//!    policy included); aggregate Mbit/s.
//! 2. Interception overhead (Table 2): remote-only TCP traffic, 4 B to 64 KiB, with no
//!    lookup, our residency table, a 1- and a 10-node chain (XenLoop's "1 lookup" and
//!    "10 lookups"), and the whole `Router::send`; Mbit/s and transactions/s.
//! 3. Message size and core assignment (Fig. 4, 8, 9): datagram (channel vs UDP) and
//!    stream (batched channel vs TCP) modes, 64 B to 64 KiB, both ends on CPU 0 or on
//!    CPUs 0 and 1.
//! 4. Notification batching: doorbells per message and throughput for `Always`,
//!    `EventIndex` and `STREAM`, on one core and on two.
//! 5. Streams (`coresident-net`) against TCP loopback and Unix sockets: throughput
//!    and round trip at 64 B, 1 KiB, 64 KiB, busy and sleeping; a switch's cost
//!    (`--experiment 5`; not in the default set).
//! 13. Unmodified programs (issue 13, run only when asked: `--experiment 13`):
//!     sockperf, iperf3 and redis plain and under `coresident run`, ratios and CPU per
//!     byte (see `programs.rs`).
//!
//! Markdown tables go to stdout, progress to stderr, `expN.csv` and `expN.svg` to
//! `--out` (default `study-out/`).

mod peer;
mod programs;
mod report;
mod streams;

use std::hint::black_box;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use coresident::lookup::{Seed, Table};
use coresident::{Batching, FlowHeader, NetworkPath, Router, Stats, ThresholdPolicy};
use peer::{Chan, Net, Peer, TcpPath, Veth};
use report::{human, Csv, Panel, Pivot};

struct Opts {
    quick: bool,
    check: bool,
    out: PathBuf,
    experiments: Vec<u32>,
}

fn parse_args(args: &[String]) -> Opts {
    let mut o = Opts {
        quick: false,
        check: false,
        out: "study-out".into(),
        experiments: vec![1, 2, 3, 4],
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => o.quick = true,
            "--check" => o.check = true,
            "--out" => o.out = it.next().expect("--out DIR").into(),
            "--experiment" | "--experiments" => {
                o.experiments = it
                    .next()
                    .expect("--experiment 1,3")
                    .split(',')
                    .map(|s| s.trim().parse().unwrap())
                    .collect()
            }
            "-h" | "--help" => {
                println!("study [--quick] [--check] [--out DIR] [--experiment 1,2,3,4,5,13]");
                std::process::exit(0);
            }
            o => panic!("unknown argument {o}"),
        }
    }
    o
}

// ------------------------------------------------------------------ Ctrl-C, progress

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Between configurations: stop by unwinding, so the namespaces are removed.
fn interruption_point() {
    if INTERRUPTED.load(Ordering::Relaxed) {
        panic!("interrupted");
    }
}

struct Progress {
    exp: u32,
    done: usize,
    total: usize,
}

impl Progress {
    fn step(&mut self, what: &str) {
        interruption_point();
        self.done += 1;
        eprint!(
            "\r\x1b[K[exp {}] {}/{} {what}",
            self.exp, self.done, self.total
        );
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        eprintln!();
    }
}

// ------------------------------------------------------------------ settings

struct Plan {
    /// Measured time per configuration.
    d: Duration,
    mixed_d: Duration,
    sizes2: Vec<usize>,
    sizes3: Vec<usize>,
    sizes4: Vec<usize>,
    veth: bool,
}

fn mbits(bytes: f64, secs: f64) -> f64 {
    if secs > 0.0 {
        bytes * 8.0 / secs / 1e6
    } else {
        0.0
    }
}

fn placement(same_core: bool) -> &'static str {
    if same_core {
        "one-core"
    } else {
        "two-cores"
    }
}

// ------------------------------------------------------------------ exp. 1

const FLOWS: usize = 5;
const MIXED_SIZE: usize = 1024;

/// One configuration of exp. 1: `local` of the five flows are co-resident.
fn mixed(local: usize, d: Duration) -> (f64, f64, u64, u64) {
    // Ten threads on this machine's cores: spinning would only delay the others.
    let config = peer::channel_config(Batching::EventIndex, true);
    let offers: Vec<_> = (0..local).map(|_| peer::offer()).collect();
    let rdv: Vec<&str> = offers.iter().map(|(_, h)| h.as_str()).collect();
    let args = vec![
        "mixed".to_string(),
        format!("size={MIXED_SIZE}"),
        format!("flows={FLOWS}"),
        format!("rdv={}", rdv.join(",")),
        "same_core=1".to_string(),
    ];
    let peer = Peer::spawn(Net::Loopback, &args);
    let mut chans: Vec<Option<Chan>> = offers
        .into_iter()
        .map(|(p, _)| Some(peer::complete(p, config)))
        .collect();
    chans.resize_with(FLOWS, || None);
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, peer.port));
    let counts: Vec<(u64, u64)> = std::thread::scope(|s| {
        let handles: Vec<_> = chans
            .into_iter()
            .enumerate()
            .map(|(i, ch)| {
                let stream = TcpStream::connect(addr).unwrap();
                s.spawn(move || mixed_flow(i as u32, ch, stream, d))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let r = peer.result();
    let secs = r["secs"];
    let (shm, tcp) = (r["shm"], r["tcp"]);
    let via_channel = counts.iter().map(|c| c.0).sum();
    let via_network = counts.iter().map(|c| c.1).sum();
    (
        mbits(shm + tcp, secs),
        shm / (shm + tcp).max(1.0),
        via_channel,
        via_network,
    )
}

/// One flow's sender: its own residency table and `Router`; a channel if co-resident.
fn mixed_flow(flow: u32, ch: Option<Chan>, stream: TcpStream, d: Duration) -> (u64, u64) {
    let table: Table<Ipv4Addr, 4> = Table::new(Seed::new([11, 13, 17, 19 + u64::from(flow)]));
    let policy = ThresholdPolicy {
        max_load: 1000, // flow control below, not the policy, handles a full ring
        ..ThresholdPolicy::default()
    };
    let mut router = Router::new(&table, policy, TcpPath::new(stream), 1024);
    let dst = Ipv4Addr::new(10, 0, 0, flow as u8 + 1);
    let local = ch.is_some();
    if let Some(ch) = ch {
        let h = router.attach(dst, ch).unwrap();
        table.writer().unwrap().insert(dst, h).unwrap();
    }
    let msg = vec![0x42u8; MIXED_SIZE];
    let end = Instant::now() + d;
    let mut n = 0u64;
    while n % 64 != 0 || Instant::now() < end {
        // Back off while the peer's ring is more than half full, so the channel's
        // spill-over to the network (a full ring) stays rare.
        if local && n % 16 == 0 {
            loop {
                router.poll().unwrap();
                let h = table.get(&dst).unwrap();
                if router.channel(h).is_none_or(|c| c.load() <= 500) {
                    break;
                }
                std::thread::yield_now();
            }
        }
        router.send(&dst, flow, &msg).unwrap();
        n += 1;
    }
    router.flush();
    let s = router.stats();
    // A remote flow's messages all go by network; a local flow's only when its ring
    // was full (spill-over).
    (s.via_channel, if local { s.via_network } else { 0 })
    // Dropping the router closes the channel and the stream: the peer sees the end.
}

fn exp1(plan: &Plan, out: &Path) -> (Csv, Vec<String>) {
    let mut csv = Csv::new(
        &[
            "local",
            "remote",
            "mbit_s",
            "local_byte_share",
            "via_channel",
            "via_network",
        ],
        2,
    );
    let mut t = Pivot::new("local:remote");
    let mut pts = Vec::new();
    let mut p = Progress {
        exp: 1,
        done: 0,
        total: FLOWS + 1,
    };
    for local in 0..=FLOWS {
        p.step(&format!("{local}:{}", FLOWS - local));
        let (mb, share, vc, vn) = mixed(local, plan.mixed_d);
        let row = format!("{local}:{}", FLOWS - local);
        t.set(&row, "aggregate Mbit/s", format!("{mb:.0}"));
        t.set(&row, "bytes via channel", format!("{:.0} %", share * 100.0));
        t.set(
            &row,
            "local flows' msgs spilled to network",
            format!("{vn}"),
        );
        csv.rows.push(vec![
            local.to_string(),
            (FLOWS - local).to_string(),
            format!("{mb:.1}"),
            format!("{share:.4}"),
            vc.to_string(),
            vn.to_string(),
        ]);
        pts.push((local as f64, mb));
    }
    drop(p);
    println!("## 1. Mixed workloads: five flows of {MIXED_SIZE} B messages (Fig. 2)\n");
    println!("{}", t.markdown());
    report::plot(
        &out.join("exp1.svg"),
        &[Panel {
            title: "Five 1 KiB flows: aggregate throughput".into(),
            x_desc: "co-resident (local) flows of five",
            y_desc: "Mbit/s",
            log_x: false,
            log_y: false,
            series: vec![("aggregate".into(), pts)],
        }],
    );
    let expected = (0..=FLOWS).map(|l| format!("{l},{}", FLOWS - l)).collect();
    (csv, expected)
}

// ------------------------------------------------------------------ exp. 2

const VARIANTS: [&str; 5] = ["none", "table", "chain-1", "chain-10", "router"];

/// XenLoop's `vmid_mac_table` bucket: a chain walked node by node.
struct Node {
    key: [u8; 6],
    next: Option<Box<Node>>,
}

fn chain(len: usize) -> Box<Node> {
    let mut head = None;
    for i in 0..len {
        head = Some(Box::new(Node {
            key: [2, 0, 0, 0, 0, i as u8],
            next: head,
        }));
    }
    head.unwrap()
}

/// Walks the whole chain for a key that is not there (a remote peer).
#[inline(never)]
fn chain_lookup(head: &Node, key: &[u8; 6]) -> bool {
    let mut n = Some(head);
    while let Some(node) = n {
        if node.key == *key {
            return true;
        }
        n = node.next.as_deref();
    }
    false
}

/// Sends `size`-byte messages over TCP with one of the lookup variants; for `rr`,
/// waits for a `size`-byte answer after each. Returns transactions (rr) or nothing.
fn intercept(variant: &str, size: usize, rr: bool, d: Duration) -> f64 {
    let args = if rr {
        vec![
            "echo".to_string(),
            format!("req={}", size + peer::TCP_FRAME_OVERHEAD),
            format!("resp={size}"),
        ]
    } else {
        vec!["sink".to_string(), "kind=tcp".to_string()]
    };
    let peer = Peer::spawn(Net::Loopback, &args);
    let stream = TcpStream::connect((Ipv4Addr::LOCALHOST, peer.port)).unwrap();
    stream.set_nodelay(rr).unwrap();
    let mut back = stream.try_clone().unwrap();
    back.set_read_timeout(Some(peer::WATCHDOG)).unwrap();
    let table: Table<[u8; 6], 64> = Table::new(Seed::new([3, 5, 7, 9]));
    let mut router: peer::NetRouter<'_, [u8; 6], 64> =
        Router::new(&table, ThresholdPolicy::default(), TcpPath::new(stream), 64);
    let dst: [u8; 6] = [2, 0, 0, 0, 1, 0xff]; // never resident: remote traffic only
    let (c1, c10) = (chain(1), chain(10));
    let msg = vec![0x33u8; size];
    let mut answer = vec![0u8; size];
    let start = Instant::now();
    let end = start + d;
    let mut n = 0u64;
    while n % 16 != 0 || Instant::now() < end {
        let h = FlowHeader { flow: 1, seq: n };
        match variant {
            "none" => {}
            "table" => {
                black_box(table.get(black_box(&dst)));
            }
            "chain-1" => {
                black_box(chain_lookup(black_box(&c1), black_box(&dst)));
            }
            "chain-10" => {
                black_box(chain_lookup(black_box(&c10), black_box(&dst)));
            }
            _ => {}
        }
        if variant == "router" {
            router.send(&dst, 1, &msg).unwrap();
        } else {
            router.network().send(&dst, h, &msg).unwrap();
        }
        if rr {
            back.read_exact(&mut answer).unwrap();
        }
        n += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    // EOF for the peer (`back` still holds the socket open).
    let _ = router.network().stream.shutdown(std::net::Shutdown::Write);
    drop((router, back));
    let r = peer.result();
    if rr {
        n as f64 / secs
    } else {
        let payload = r["bytes"] / (size + peer::TCP_FRAME_OVERHEAD) as f64 * size as f64;
        mbits(payload, r["secs"])
    }
}

fn exp2(plan: &Plan, out: &Path) -> (Csv, Vec<String>) {
    let mut csv = Csv::new(&["mode", "size", "variant", "value", "vs_none_pct"], 3);
    let mut expected = Vec::new();
    let mut p = Progress {
        exp: 2,
        done: 0,
        total: 2 * plan.sizes2.len() * VARIANTS.len(),
    };
    let mut panels = Vec::new();
    println!("## 2. Interception overhead: remote-only TCP over loopback (Table 2)\n");
    for (mode, rr) in [("stream", false), ("rr", true)] {
        let mut t = Pivot::new("size");
        let mut series: Vec<(String, Vec<(f64, f64)>)> = VARIANTS
            .iter()
            .map(|v| (v.to_string(), Vec::new()))
            .collect();
        for &size in &plan.sizes2 {
            let mut base = 0.0;
            for (vi, v) in VARIANTS.iter().enumerate() {
                p.step(&format!("{mode} {size} B {v}"));
                let val = intercept(v, size, rr, plan.d);
                if vi == 0 {
                    base = val;
                }
                let rel = if base > 0.0 {
                    (val / base - 1.0) * 100.0
                } else {
                    0.0
                };
                t.set(
                    &format!("{size} B"),
                    v,
                    if vi == 0 {
                        format!("{val:.0}")
                    } else {
                        format!("{val:.0} ({rel:+.1} %)")
                    },
                );
                csv.rows.push(vec![
                    mode.into(),
                    size.to_string(),
                    v.to_string(),
                    format!("{val:.1}"),
                    // The CSV keeps values non-negative: 100 = same as no lookup.
                    format!("{:.2}", 100.0 + rel),
                ]);
                expected.push(format!("{mode},{size},{v}"));
                series[vi].1.push((size as f64, val));
            }
        }
        let unit = if rr { "transactions/s" } else { "Mbit/s" };
        println!("{mode} ({unit}; in brackets: change against no lookup)\n");
        println!("{}", t.markdown());
        panels.push(Panel {
            title: format!("Remote-only TCP, {mode}"),
            x_desc: "message size (bytes)",
            y_desc: unit,
            log_x: true,
            log_y: true,
            series,
        });
    }
    drop(p);
    report::plot(&out.join("exp2.svg"), &panels);
    (csv, expected)
}

// ------------------------------------------------------------------ exp. 3 and 4

#[derive(Clone, Copy)]
enum Kind {
    Shm(Batching),
    Udp,
    Tcp,
}

/// A one-way stream of `size`-byte messages for `d`; the receiver's result and the
/// sender's channel counters.
fn stream(
    kind: Kind,
    net: Net,
    size: usize,
    same_core: bool,
    d: Duration,
) -> (f64, f64, std::collections::HashMap<String, f64>, Stats) {
    let batching = match kind {
        Kind::Shm(b) => b,
        _ => Batching::EventIndex,
    };
    let mut args = vec![
        "sink".to_string(),
        format!("cpu={}", if same_core { 0 } else { 1 }),
        format!("bind={}", net.peer_ip()),
        format!("batching={}", peer::batching_name(batching)),
        format!("same_core={}", u8::from(same_core)),
    ];
    let config = peer::channel_config(batching, same_core);
    let pending = match kind {
        Kind::Shm(_) => {
            let (p, hex) = peer::offer();
            args.push("kind=shm".into());
            args.push(format!("rdv={hex}"));
            Some(p)
        }
        Kind::Udp => {
            args.push("kind=udp".into());
            None
        }
        Kind::Tcp => {
            args.push("kind=tcp".into());
            None
        }
    };
    let peer = Peer::spawn(net, &args);
    let ch = pending.map(|p| peer::complete(p, config));
    let addr = SocketAddr::new(net.peer_ip(), peer.port);
    let size = match kind {
        Kind::Udp => size.min(peer::UDP_MAX),
        _ => size,
    };
    let stats = std::thread::scope(|s| {
        s.spawn(move || {
            peer::pin(0);
            if net == Net::Veth {
                peer::enter_netns(peer::NS_A);
            }
            send_for(kind, ch, addr, size, d)
        })
        .join()
        .unwrap()
    });
    let r = peer.result();
    let msgs = match kind {
        Kind::Tcp => r["bytes"] / size as f64,
        _ => r["msgs"],
    };
    let secs = r["secs"];
    let rate = if secs > 0.0 { msgs / secs } else { 0.0 };
    (mbits(r["bytes"], secs), rate, r, stats)
}

fn send_for(kind: Kind, ch: Option<Chan>, addr: SocketAddr, size: usize, d: Duration) -> Stats {
    let msg = vec![0x77u8; size];
    let end = Instant::now() + d;
    let until = |n: u64| n % 32 != 0 || Instant::now() < end;
    let mut n = 0u64;
    match kind {
        Kind::Shm(_) => {
            let mut ch = ch.unwrap();
            while until(n) {
                ch.send_blocking(&msg, Some(peer::WATCHDOG)).unwrap();
                n += 1;
            }
            ch.flush().unwrap();
            let s = *ch.stats();
            drop(ch.close());
            s
        }
        Kind::Tcp => {
            let mut s = TcpStream::connect(addr).unwrap();
            while until(n) {
                s.write_all(&msg).unwrap();
                n += 1;
            }
            Stats::default()
        }
        Kind::Udp => {
            let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
            s.connect(addr).unwrap();
            while until(n) {
                // A full queue or a transient refusal loses a datagram: UDP's nature.
                let _ = s.send(&msg);
                n += 1;
            }
            for _ in 0..20 {
                let _ = s.send(&[]); // end markers
                std::thread::sleep(Duration::from_millis(2));
            }
            Stats::default()
        }
    }
}

fn exp3(plan: &Plan, out: &Path) -> (Csv, Vec<String>) {
    let mut csv = Csv::new(
        &["mode", "path", "placement", "size", "mbit_s", "msgs_s"],
        4,
    );
    let mut expected = Vec::new();
    let mut nets = vec![("lo", Net::Loopback)];
    if plan.veth {
        nets.push(("veth", Net::Veth));
    }
    let mut paths: Vec<(&str, &str, Kind, Net)> = Vec::new();
    for (mode, shm, sock, sock_name) in [
        ("datagram", Batching::EventIndex, Kind::Udp, "udp"),
        ("stream", Batching::STREAM, Kind::Tcp, "tcp"),
    ] {
        paths.push((mode, "channel", Kind::Shm(shm), Net::Loopback));
        for (n, net) in &nets {
            let name: &'static str = Box::leak(format!("{sock_name}-{n}").into_boxed_str());
            paths.push((mode, name, sock, *net));
        }
    }
    let mut p = Progress {
        exp: 3,
        done: 0,
        total: paths.len() * 2 * plan.sizes3.len(),
    };
    let mut tables: Vec<(&str, Pivot)> = Vec::new();
    let mut panels = Vec::new();
    for mode in ["datagram", "stream"] {
        let mut t = Pivot::new("size");
        let mut series = Vec::new();
        for &(m, path, kind, net) in paths.iter().filter(|p| p.0 == mode) {
            for same_core in [true, false] {
                let mut pts = Vec::new();
                for &size in &plan.sizes3 {
                    let pl = placement(same_core);
                    p.step(&format!("{m} {path} {pl} {size} B"));
                    let (mb, rate, _, _) = stream(kind, net, size, same_core, plan.d);
                    t.set(
                        &format!("{size} B"),
                        &format!("{path} {pl}"),
                        format!("{mb:.0}"),
                    );
                    csv.rows.push(vec![
                        m.into(),
                        path.into(),
                        pl.into(),
                        size.to_string(),
                        format!("{mb:.1}"),
                        format!("{rate:.0}"),
                    ]);
                    expected.push(format!("{m},{path},{pl},{size}"));
                    pts.push((size as f64, mb));
                }
                series.push((format!("{path} {}", placement(same_core)), pts));
            }
        }
        panels.push(Panel {
            title: format!("{mode} mode"),
            x_desc: "message size (bytes)",
            y_desc: "Mbit/s",
            log_x: true,
            log_y: true,
            series,
        });
        tables.push((mode, t));
    }
    drop(p);
    println!("## 3. Message size and core assignment, Mbit/s (Fig. 4, 8, 9)\n");
    for (mode, t) in tables {
        let what = if mode == "datagram" {
            "channel with event-index doorbells vs UDP"
        } else {
            "channel with STREAM batching vs TCP"
        };
        println!("{mode} mode: {what}\n\n{}", t.markdown());
    }
    report::plot(&out.join("exp3.svg"), &panels);
    (csv, expected)
}

fn exp4(plan: &Plan, out: &Path) -> (Csv, Vec<String>) {
    let mut csv = Csv::new(
        &[
            "batching",
            "placement",
            "size",
            "mbit_s",
            "sender_doorbells_per_msg",
            "receiver_doorbells_per_msg",
            "receiver_wakeups_per_msg",
            "publishes_per_msg",
        ],
        3,
    );
    let mut expected = Vec::new();
    let policies = [Batching::Always, Batching::EventIndex, Batching::STREAM];
    let mut p = Progress {
        exp: 4,
        done: 0,
        total: policies.len() * 2 * plan.sizes4.len(),
    };
    let mut t = Pivot::new("batching, placement");
    let (mut door, mut thr) = (Vec::new(), Vec::new());
    for b in policies {
        for same_core in [true, false] {
            let (bn, pl) = (peer::batching_name(b), placement(same_core));
            let (mut dp, mut tp) = (Vec::new(), Vec::new());
            for &size in &plan.sizes4 {
                p.step(&format!("{bn} {pl} {size} B"));
                let (mb, _, r, s) = stream(Kind::Shm(b), Net::Loopback, size, same_core, plan.d);
                let sent = s.sent_messages.max(1) as f64;
                let tx_door = s.doorbells_rung as f64 / sent;
                let rx_door = r["rung"] / r["msgs"].max(1.0);
                let wake = r["wakeups"] / r["msgs"].max(1.0);
                let publ = s.publishes as f64 / sent;
                t.set(
                    &format!("{bn}, {pl}"),
                    &format!("{size} B"),
                    format!("{mb:.0} Mbit/s, {tx_door:.3}+{rx_door:.3} db/msg"),
                );
                csv.rows.push(vec![
                    bn.into(),
                    pl.into(),
                    size.to_string(),
                    format!("{mb:.1}"),
                    format!("{tx_door:.5}"),
                    format!("{rx_door:.5}"),
                    format!("{wake:.5}"),
                    format!("{publ:.5}"),
                ]);
                expected.push(format!("{bn},{pl},{size}"));
                dp.push((size as f64, tx_door + rx_door));
                tp.push((size as f64, mb));
            }
            door.push((format!("{bn} {pl}"), dp));
            thr.push((format!("{bn} {pl}"), tp));
        }
    }
    drop(p);
    println!("## 4. Notification batching: channel throughput and doorbells per message\n");
    println!("(db/msg: doorbells the sender rang per message + doorbells the receiver rang per message)\n");
    println!("{}", t.markdown());
    report::plot(
        &out.join("exp4.svg"),
        &[
            Panel {
                title: "Doorbells per message (both sides)".into(),
                x_desc: "message size (bytes)",
                y_desc: "doorbells / message",
                log_x: true,
                log_y: false,
                series: door,
            },
            Panel {
                title: "Channel throughput".into(),
                x_desc: "message size (bytes)",
                y_desc: "Mbit/s",
                log_x: true,
                log_y: true,
                series: thr,
            },
        ],
    );
    (csv, expected)
}

// ------------------------------------------------------------------ main

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--peer") {
        return peer::peer_main(&args[1..]);
    }
    let o = parse_args(&args);
    // SAFETY: installs an async-signal-safe handler (one atomic store).
    unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };
    std::fs::create_dir_all(&o.out).unwrap();
    let started = Instant::now();
    let veth = if o.experiments.contains(&3) {
        match Veth::create() {
            Ok(v) => Some(v),
            Err(note) => {
                println!("> note: {note}\n");
                None
            }
        }
    } else {
        None
    };
    let plan = if o.quick {
        Plan {
            d: Duration::from_millis(100),
            mixed_d: Duration::from_millis(250),
            sizes2: vec![4, 1024, 65536],
            sizes3: vec![64, 4096, 65536],
            sizes4: vec![64, 4096],
            veth: veth.is_some(),
        }
    } else {
        Plan {
            d: Duration::from_secs(1),
            mixed_d: Duration::from_secs(3),
            sizes2: vec![4, 16, 64, 256, 1024, 4096, 16384, 65536],
            sizes3: vec![64, 256, 1024, 4096, 16384, 65536],
            sizes4: vec![64, 1024, 16384],
            veth: veth.is_some(),
        }
    };
    println!(
        "# coresident study{}: {} CPUs, {} per configuration\n",
        if o.quick { " (quick)" } else { "" },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if o.quick { "0.1 s" } else { "1 s" },
    );
    let mut problems = Vec::new();
    for e in &o.experiments {
        let (csv, expected) = match e {
            1 => exp1(&plan, &o.out),
            2 => exp2(&plan, &o.out),
            3 => exp3(&plan, &o.out),
            4 => exp4(&plan, &o.out),
            5 => streams::exp5(&plan, &o.out),
            13 => programs::exp13(o.quick, &o.out),
            n => panic!("no experiment {n}"),
        };
        let path = o.out.join(format!("exp{e}.csv"));
        csv.write(&path);
        if o.check {
            problems.extend(report::check(&path, csv.keys, &expected));
        }
    }
    drop(veth); // removes the namespaces
    eprintln!(
        "study: {:.1} s; CSV and SVG files in {}",
        started.elapsed().as_secs_f64(),
        o.out.display()
    );
    if o.check {
        if problems.is_empty() {
            eprintln!("check: every configuration has its row");
        } else {
            for p in &problems {
                eprintln!("check: {p}");
            }
            std::process::exit(1);
        }
    }
    let _ = human; // used by the plots
}
