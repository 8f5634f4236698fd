//! `domu-fallback`: one flow each way between dom0 and a domU, first through
//! the Xen channel while the two are listed as co-resident, then, once the
//! domU's entry is withdrawn, over the domU's real network path (a vif:
//! xen-netfront in the domU, xen-netback and the bridge `xenbr0` in dom0,
//! set up by the kit's `run.sh -n`), with nothing lost, duplicated or
//! reordered.
//!
//! Both sides run a [`Router`] keyed by IPv4 address (dom0 10.0.0.1, the
//! domU 10.0.0.2) whose network path is one TCP connection across the vif,
//! carrying the same flow headers as the channel. The residency table of
//! each side is kept in step with the residency list dom0 publishes in
//! XenStore; when the domU is withdrawn, each side removes the peer from its
//! table and calls [`Router::peer_left`]: unconsumed channel messages are
//! sent again over TCP, the channel is drained, and the flow goes on over
//! the vif. Every message carries its index and a checksum; the receiver
//! checks each one arrives exactly once, in order.
//!
//! `fallback_host` runs in dom0 (`DOMU_ID` names the guest),
//! `fallback_guest` in the domU; `.ci/xen`'s job `domu-fallback`
//! (`ci/xen-jobs/domu-fallback.sh`) runs both. `XEN_FALLBACK_MESSAGES` sets
//! the messages per direction (default 10,000).
#![cfg(target_os = "linux")]

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use coresident::lookup::{Handle, Seed, Table};
use coresident::{
    Channel, ChannelConfig, ChannelLayout, FlowHeader, NetworkPath, Path, Router, StdClock,
    ThresholdPolicy, FLOW_HEADER_LEN,
};
use coresident_xen::rendezvous::own_domid;
use coresident_xen::xs_wire::{Access, Perm, XsErrno};
use coresident_xen::{Rendezvous, XenDoorbell, XenRegion, XenStore, XsError};

const DOM0_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const DOMU_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const PORT: u16 = 7117;
/// dom0 → domU.
const FLOW_DOWN: u32 = 1;
/// domU → dom0.
const FLOW_UP: u32 = 2;
/// The channel's name in the XenStore rendezvous.
const CHANNEL: &str = "fallback";
/// Relative to the guest's home: the residency list dom0 writes for the
/// guest, one `DOMID IPV4` line per co-resident peer (read-only for it).
const PEERS_KEY: &str = "data/coresident-fallback/peers";
/// A generous bound on the whole exchange (TCG is slow and shared).
const WATCHDOG: Duration = Duration::from_secs(240);

type XenRouter<'t> =
    Router<'t, Ipv4Addr, XenRegion, XenDoorbell, StdClock, TcpNet, ThresholdPolicy, 16>;

fn messages() -> u64 {
    std::env::var("XEN_FALLBACK_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

fn fnv64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Message `i` of `flow`: its index, 0..=600 pseudo-random bytes, and the
/// FNV-1a checksum of both (little-endian), so either end regenerates it.
fn message(flow: u32, i: u64, out: &mut Vec<u8>) {
    let mut x = (i ^ (u64::from(flow) << 40)).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let len = (next() % 601) as usize;
    out.clear();
    out.extend_from_slice(&i.to_le_bytes());
    out.extend((0..len).map(|_| next() as u8));
    let sum = fnv64(out);
    out.extend_from_slice(&sum.to_le_bytes());
}

/// What one side received of its incoming flow.
#[derive(Default)]
struct Inbox {
    flow: u32,
    next: u64,
    want: Vec<u8>,
    /// Messages that arrived through the channel (duplicates included).
    from_channel: u64,
    /// Messages that arrived over TCP (duplicates included).
    from_network: u64,
}

impl Inbox {
    fn deliver(&mut self, flow: u32, m: &[u8]) {
        assert_eq!(flow, self.flow, "a message of an unknown flow");
        let i = self.next;
        let (body, sum) = m.split_at(m.len().saturating_sub(8));
        let sum: [u8; 8] = sum
            .try_into()
            .unwrap_or_else(|_| panic!("message {i}: shorter than its checksum"));
        assert_eq!(
            u64::from_le_bytes(sum),
            fnv64(body),
            "message {i}: bad checksum"
        );
        let idx: [u8; 8] = body
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .expect("message without an index");
        assert_eq!(
            u64::from_le_bytes(idx),
            i,
            "flow {flow}: message {} delivered where {i} was due (lost, duplicated or reordered)",
            u64::from_le_bytes(idx)
        );
        message(flow, i, &mut self.want);
        assert_eq!(m, self.want.as_slice(), "message {i}: wrong contents");
        self.next += 1;
    }
}

/// What the reader thread hands the router.
enum Incoming {
    Frame(FlowHeader, Vec<u8>),
    /// The peer has received all it expected and sends nothing more.
    Bye,
    Failed(String),
}

/// Length word of the "bye" frame.
const BYE: u32 = u32::MAX;
/// The longest frame the reader accepts.
const MAX_FRAME: u32 = 1 << 20;

/// The network path: one TCP connection across the vif, each message one
/// frame `len: u32 LE | flow header | payload`.
struct TcpNet {
    stream: TcpStream,
    peer: Ipv4Addr,
    frames: u64,
    bytes: u64,
}

impl TcpNet {
    /// Wraps `stream` and starts the reader thread, which parses the peer's
    /// frames into the returned queue.
    fn new(stream: TcpStream, peer: Ipv4Addr) -> (Self, mpsc::Receiver<Incoming>) {
        stream.set_nodelay(true).unwrap();
        let mut rd = stream.try_clone().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let r = (|| -> io::Result<()> {
                loop {
                    let mut len = [0u8; 4];
                    rd.read_exact(&mut len)?;
                    let len = u32::from_le_bytes(len);
                    if len == BYE {
                        let _ = tx.send(Incoming::Bye);
                        return Ok(());
                    }
                    if !(FLOW_HEADER_LEN as u32..=MAX_FRAME).contains(&len) {
                        return Err(io::Error::other(format!("frame length {len}")));
                    }
                    let mut f = vec![0u8; len as usize];
                    rd.read_exact(&mut f)?;
                    let h = FlowHeader::decode(&f)
                        .ok_or_else(|| io::Error::other("unreadable flow header"))?;
                    f.drain(..FLOW_HEADER_LEN);
                    if tx.send(Incoming::Frame(h, f)).is_err() {
                        return Ok(());
                    }
                }
            })();
            if let Err(e) = r {
                let _ = tx.send(Incoming::Failed(e.to_string()));
            }
        });
        (
            Self {
                stream,
                peer,
                frames: 0,
                bytes: 0,
            },
            rx,
        )
    }

    fn bye(&mut self) -> io::Result<()> {
        self.stream.write_all(&BYE.to_le_bytes())
    }
}

impl NetworkPath<Ipv4Addr> for TcpNet {
    type Error = io::Error;

    fn send(&mut self, peer: &Ipv4Addr, h: FlowHeader, p: &[u8]) -> io::Result<()> {
        if *peer != self.peer {
            return Err(io::Error::other(format!("no route to {peer}")));
        }
        let len = u32::try_from(FLOW_HEADER_LEN + p.len())
            .ok()
            .filter(|&l| l <= MAX_FRAME)
            .ok_or_else(|| io::Error::other("message too long for a frame"))?;
        let mut f = Vec::with_capacity(4 + len as usize);
        f.extend_from_slice(&len.to_le_bytes());
        f.extend_from_slice(&h.encode());
        f.extend_from_slice(p);
        self.stream.write_all(&f)?;
        self.frames += 1;
        self.bytes += f.len() as u64;
        Ok(())
    }
}

fn channel_config() -> ChannelConfig {
    // Peer death comes from the transport (unmap-notify) and the residency
    // list, not a heartbeat.
    ChannelConfig {
        liveness: None,
        ..ChannelConfig::default()
    }
}

/// What a side saw, for the report and the checks.
struct Report {
    sent_channel_before: u64,
    sent_network_before: u64,
    sent_channel_after: u64,
    sent_network_after: u64,
    /// (sent, received) when the peer left this side's table.
    left_at: Option<(u64, u64)>,
    inbox: Inbox,
}

/// The exchange both sides run: send `n` messages of `out_flow` to `peer`
/// and receive `n` of `in_flow`, in bursts; `departed(sent, received)` is
/// asked each round whether the peer has left this host (the residency
/// list changed), and is then removed from the table and failed over.
#[allow(clippy::too_many_arguments)]
fn exchange(
    side: &str,
    router: &mut XenRouter<'_>,
    writer: &mut coresident::lookup::Writer<'_, Ipv4Addr, 16>,
    handle: Handle,
    peer: Ipv4Addr,
    incoming: &mpsc::Receiver<Incoming>,
    (out_flow, in_flow): (u32, u32),
    n: u64,
    mut departed: impl FnMut(u64, u64) -> bool,
) -> Report {
    let mut r = Report {
        sent_channel_before: 0,
        sent_network_before: 0,
        sent_channel_after: 0,
        sent_network_after: 0,
        left_at: None,
        inbox: Inbox {
            flow: in_flow,
            ..Inbox::default()
        },
    };
    let (mut sent, mut bye_sent, mut peer_bye) = (0u64, false, false);
    let mut m = Vec::new();
    let t0 = Instant::now();
    loop {
        assert!(
            t0.elapsed() < WATCHDOG,
            "{side}: watchdog: sent {sent}/{n}, received {}/{n}, peer left: {:?}, bye sent {bye_sent}, \
             peer's bye {peer_bye}, stats {:?}",
            r.inbox.next,
            r.left_at,
            router.stats()
        );
        if r.left_at.is_none() && departed(sent, r.inbox.next) {
            writer.remove(&peer);
            router.peer_left(handle).expect("peer_left: resend");
            r.left_at = Some((sent, r.inbox.next));
            println!(
                "{side}: peer {peer} left the residency table after {sent} sent, {} received; \
                 {} unconsumed resent over TCP",
                r.inbox.next,
                router.stats().resent
            );
        }
        let mut progress = false;
        for _ in 0..16 {
            if sent == n {
                break;
            }
            message(out_flow, sent, &mut m);
            let path = router.send(&peer, out_flow, &m).expect("send");
            match (path, r.left_at.is_some()) {
                (Path::Channel, false) => r.sent_channel_before += 1,
                (Path::Network, false) => r.sent_network_before += 1,
                (Path::Channel, true) => r.sent_channel_after += 1,
                (Path::Network, true) => r.sent_network_after += 1,
            }
            sent += 1;
            progress = true;
        }
        router.flush();
        router.poll().expect("poll");
        // The peer wrote its bye after publishing all it sent through the
        // channel: once a receive pass that began after the bye finds the
        // channel empty, anything still missing was lost.
        let after_bye = peer_bye;
        let inbox = &mut r.inbox;
        let got = router
            .recv_channels(|f, p| inbox.deliver(f, p))
            .expect("recv_channels");
        inbox.from_channel += got as u64;
        assert!(
            !(after_bye && got == 0 && inbox.next < n),
            "{side}: the peer finished but only {} of {n} messages arrived: lost",
            inbox.next
        );
        progress |= got > 0;
        while let Ok(x) = incoming.try_recv() {
            progress = true;
            match x {
                Incoming::Frame(h, p) => {
                    inbox.from_network += 1;
                    router
                        .recv_network(h, &p, |f, p| inbox.deliver(f, p))
                        .expect("recv_network");
                }
                Incoming::Bye => peer_bye = true,
                Incoming::Failed(e) => panic!("{side}: the TCP path failed: {e}"),
            }
        }
        if sent == n && r.inbox.next == n && !bye_sent {
            router.network().bye().expect("bye");
            bye_sent = true;
        }
        if bye_sent && peer_bye {
            break;
        }
        if !progress {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    r
}

fn print_report(side: &str, router: &mut XenRouter<'_>, r: &Report, n: u64) {
    let s = *router.stats();
    let (frames, bytes) = (router.network().frames, router.network().bytes);
    println!(
        "{side}: sent {n} of flow out: {} by channel + {} by network while resident, {} by channel + {} \
         by network after the peer left; {} unconsumed resent over TCP; {} TCP frames ({} bytes) in all",
        r.sent_channel_before,
        r.sent_network_before,
        r.sent_channel_after,
        r.sent_network_after,
        s.resent,
        frames,
        bytes,
    );
    println!(
        "{side}: received {} of flow in, each once, in order, checksums good; arrivals: {} through the \
         channel, {} over TCP; duplicates dropped: {}; router stats {s:?}",
        r.inbox.next,
        r.inbox.from_channel,
        r.inbox.from_network,
        router.duplicates()
    );
}

/// The checks both sides make on their own report.
fn check_report(side: &str, router: &XenRouter<'_>, r: &Report, n: u64) {
    assert_eq!(r.inbox.next, n, "{side}: messages missing");
    assert!(
        r.sent_channel_before > 0,
        "{side}: nothing took the channel while the peer was resident"
    );
    assert!(r.left_at.is_some(), "{side}: the peer never left the table");
    assert_eq!(
        r.sent_channel_after, 0,
        "{side}: the channel was used after the peer left"
    );
    assert_eq!(router.stats().fallbacks, 1, "{side}: one fallback");
    assert!(
        r.inbox.from_channel > 0,
        "{side}: nothing arrived through the channel"
    );
    assert!(
        r.inbox.from_network > 0,
        "{side}: nothing arrived over the vif"
    );
}

fn read_only_for(domu: u16) -> [Perm; 2] {
    [
        Perm {
            domid: 0,
            access: Access::None,
        },
        Perm {
            domid: domu,
            access: Access::Read,
        },
    ]
}

#[test]
#[ignore = "needs a Xen dom0 (run.sh -n) with a domU running fallback_guest"]
fn fallback_host() {
    let n = messages();
    let domu: u16 = std::env::var("DOMU_ID")
        .expect("DOMU_ID")
        .parse()
        .expect("DOMU_ID");
    let mut xs = XenStore::open_socket().unwrap();
    let home = xs.get_domain_path(domu).unwrap();

    // The network path first: the guest connects once its eth0 is up.
    let listener = TcpListener::bind(SocketAddrV4::new(DOM0_IP, PORT)).unwrap();

    // The channel: offered to the guest through the XenStore rendezvous,
    // on a connection of its own (it consumes watch events).
    let mut xs_rv = XenStore::open_socket().unwrap();
    let pending = Rendezvous::new(0, domu, CHANNEL)
        .unwrap()
        .offer(&mut xs_rv, ChannelLayout::symmetric(64 * 1024))
        .unwrap();

    // The residency list for the guest: dom0 is co-resident.
    let peers = format!("{home}/{PEERS_KEY}");
    xs.write(&peers, format!("0 {DOM0_IP}\n").as_bytes())
        .unwrap();
    xs.set_perms(&peers, &read_only_for(domu)).unwrap();
    println!("dom0: offered a channel to dom{domu} and listed dom0 as its co-resident peer");

    let (stream, from) = listener.accept().unwrap();
    println!("dom0: TCP connection from {from} over the vif");
    let (net, incoming) = TcpNet::new(stream, DOMU_IP);
    let link = pending
        .complete(&mut xs_rv, Some(Duration::from_secs(200)))
        .unwrap();
    let ch = Channel::new(link, channel_config(), StdClock::default()).unwrap();

    let table: Table<Ipv4Addr, 16> = Table::new(Seed::new([0xd0, 1, 2, 3]));
    let mut writer = table.writer().unwrap();
    let mut router: XenRouter = Router::new(&table, ThresholdPolicy::default(), net, 1 << 16);
    let handle = router.attach(DOMU_IP, ch).unwrap();
    writer.insert(DOMU_IP, handle).unwrap();
    println!("dom0: dom{domu} ({DOMU_IP}) is co-resident: channel attached");

    // dom0 withdraws the guest once a third of each flow has gone by: the
    // guest's list loses dom0, and dom0's own table loses the guest.
    let report = exchange(
        "dom0",
        &mut router,
        &mut writer,
        handle,
        DOMU_IP,
        &incoming,
        (FLOW_DOWN, FLOW_UP),
        n,
        |sent, got| {
            if sent >= n / 3 && got >= n / 3 {
                xs.write(&peers, b"").unwrap();
                println!("dom0: withdrew dom{domu}: its residency list is now empty");
                true
            } else {
                false
            }
        },
    );
    let _ = xs.rm(&format!("{home}/data/coresident-fallback"));
    print_report("dom0", &mut router, &report, n);
    check_report("dom0", &router, &report, n);
    println!("XEN-CHECK fallback_host ok");
}

#[test]
#[ignore = "needs a Xen domU (run.sh -n) with dom0 running fallback_host"]
fn fallback_guest() {
    let n = messages();
    let mut xs = XenStore::open().unwrap();
    let own = own_domid(&mut xs).unwrap();
    xs.watch(PEERS_KEY, "peers").unwrap();
    let deadline = Instant::now() + Duration::from_secs(200);
    // The rendezvous on a connection of its own (it consumes watch events).
    let mut xs_rv = XenStore::open().unwrap();
    let link = Rendezvous::new(own, 0, CHANNEL)
        .unwrap()
        .accept(&mut xs_rv, Some(Duration::from_secs(200)))
        .unwrap();
    let ch = Channel::new(link, channel_config(), StdClock::default()).unwrap();
    println!("domU (dom{own}): accepted dom0's channel");

    let stream = loop {
        match TcpStream::connect_timeout(
            &SocketAddrV4::new(DOM0_IP, PORT).into(),
            Duration::from_secs(5),
        ) {
            Ok(s) => break s,
            Err(e) => {
                assert!(Instant::now() < deadline, "no TCP connection to dom0: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    println!("domU: TCP connection to {DOM0_IP}:{PORT} over the vif");
    let (net, incoming) = TcpNet::new(stream, DOM0_IP);

    let table: Table<Ipv4Addr, 16> = Table::new(Seed::new([0xd1, 4, 5, 6]));
    let mut writer = table.writer().unwrap();
    let mut router: XenRouter = Router::new(&table, ThresholdPolicy::default(), net, 1 << 16);
    let handle = router.attach(DOM0_IP, ch).unwrap();

    // The residency list: dom0 must be on it before traffic starts.
    let resident = |xs: &mut XenStore| -> bool {
        match xs.read(PEERS_KEY) {
            Ok(v) => String::from_utf8_lossy(&v)
                .lines()
                .any(|l| l.split_whitespace().nth(1) == Some(&DOM0_IP.to_string())),
            Err(XsError::NotFound | XsError::Daemon(XsErrno::EACCES)) => false,
            Err(e) => panic!("reading the residency list: {e}"),
        }
    };
    while !resident(&mut xs) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "dom0 never listed as co-resident");
        let _ = xs.wait_watch(Some(left)).unwrap();
    }
    writer.insert(DOM0_IP, handle).unwrap();
    println!("domU: dom0 ({DOM0_IP}) is co-resident: channel in the table");

    let report = exchange(
        "domU",
        &mut router,
        &mut writer,
        handle,
        DOM0_IP,
        &incoming,
        (FLOW_UP, FLOW_DOWN),
        n,
        |_, _| {
            // Only a watch event makes us read the list again.
            match xs.wait_watch(Some(Duration::ZERO)).unwrap() {
                Some(_) => !resident(&mut xs),
                None => false,
            }
        },
    );
    print_report("domU", &mut router, &report, n);
    check_report("domU", &router, &report, n);
    println!("XEN-CHECK fallback_guest ok");
}
