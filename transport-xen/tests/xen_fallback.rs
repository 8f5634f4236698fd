//! `domu-fallback`: one flow each way between dom0 and a domU, first through
//! the Xen channel while the two are listed as co-resident, then, once the
//! domU's entry is withdrawn, over the domU's real network path (a vif:
//! xen-netfront in the domU, xen-netback and the bridge `xenbr0` in dom0,
//! set up by the kit's `run.sh -n`), with nothing lost, duplicated or
//! reordered.
//!
//! Both sides run a [`Router`] keyed by IPv4 address (dom0 10.0.0.1, the
//! domU 10.0.0.2) whose network path is one TCP connection across the vif,
//! carrying the same flow headers as the channel; the channel comes from
//! the XenStore rendezvous ([`Rendezvous`]). Residency is the crate's own:
//! both domains advertise their addresses ([`residency::advertise`]), the
//! residency [`Agent`] runs in dom0's test process, and each side keeps its
//! tables ([`ResidencyTables`]: domain id, MAC, IPv4) in step with its
//! [`ResidencyView`]. A third of the way through, dom0 withdraws the domU
//! ([`Agent::withdraw`], what a migration away looks like): each view sees
//! the peer leave, the tables drop its keys, and each side calls
//! [`Router::peer_left`] with the handle they report: unconsumed channel
//! messages are sent again over TCP, the channel is drained, and the flow
//! goes on over the vif. Every message carries its index and a checksum;
//! the receiver checks each one arrives exactly once, in order. Before the
//! flows the guest also checks that a UDP datagram comes back from dom0.
//!
//! `fallback_host` runs in dom0 (`DOMU_ID` names the guest),
//! `fallback_guest` in the domU; `.ci/xen`'s job `domu-fallback` runs both.
//! `XEN_FALLBACK_MESSAGES` sets the messages per direction (default
//! 10,000).
//!
//! With `XEN_FALLBACK_EVENT=save` on both sides (`.ci/xen`'s job
//! `domu-save`), `xl save` and `xl restore` of the domU follow the
//! withdrawal, mid-stream (the domU paces its flow so that both are still
//! running): the domU runs on as a new domain, with new grants and event
//! channels and (usually) a new domain id. The save is *prepared*, as a
//! migration away is: the agent withdraws the domU first, both sides fall
//! back and close the channel, the domU says so (`SAVE_READY`), and only
//! then does dom0 run `xl save`. The flows go on over the vif while the
//! domU is suspended and after it is restored, with nothing lost; the
//! restored domU's view sees its domain id change ([`PeerChange::Moved`]),
//! it advertises again under its new id, and the agent lists it again.
//! Here the domU offers the channel (its own pages, granted to dom0).
//!
//! Why prepared: a Linux domU whose *process* holds Xen channels through
//! the `/dev/xen` devices across `xl save` and `xl restore` does not
//! survive it on Debian 12's Linux 6.1 (both seen in this kit): a mapping
//! of another domain's grants (gntdev) is lost, the process faults and
//! gntdev oopses in `unmap_grant_pages` on the way out; an interdomain
//! event channel bound through `/dev/xen/evtchn` hits `kernel BUG at
//! drivers/xen/evtchn.c:422` (`evtchn_unbind_from_user`'s `BUG_ON(irq <
//! 0)`: the driver has no resume handling) when its descriptor is closed
//! after the restore, which kills the process. dom0's side copes with an
//! unprepared save (its channel reports the saved domain gone at once).
#![cfg(target_os = "linux")]

use coresident_xen::xenstore::XsClient;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use coresident::lookup::{DomainId, DomainTable, Handle, Seed, Table};
use coresident::{
    Channel, ChannelConfig, ChannelLayout, FlowHeader, NetworkPath, Path, Router, StdClock,
    ThresholdPolicy, FLOW_HEADER_LEN,
};
use coresident_xen::residency::{
    self, Addr, Addresses, Agent, PeerChange, ResidencyTables, ResidencyView, TableUpdate,
};
use coresident_xen::{Rendezvous, XenDoorbell, XenRegion, XenStore};

const DOM0_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const DOMU_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const PORT: u16 = 7117;
/// dom0 → domU.
const FLOW_DOWN: u32 = 1;
/// domU → dom0.
const FLOW_UP: u32 = 2;
/// The channel's name in the XenStore rendezvous.
const CHANNEL: &str = "fallback";
/// How far a side's outgoing flow may run ahead of its incoming one.
const WINDOW: u64 = 128;
/// A generous bound on the whole exchange (TCG is slow and shared).
const WATCHDOG: Duration = Duration::from_secs(240);
/// The channel's name in the `save` variant.
const CHANNEL_SAVE: &str = "fallback-save";

/// Whether this run's event is `xl save` and `xl restore` of the domU
/// (`XEN_FALLBACK_EVENT=save`) rather than the agent's withdrawal.
fn save_event() -> bool {
    match std::env::var("XEN_FALLBACK_EVENT").as_deref() {
        Ok("save") => true,
        Ok("withdraw") | Err(_) => false,
        Ok(other) => panic!("XEN_FALLBACK_EVENT={other}: withdraw or save"),
    }
}

/// Steps `view` (and `agent`) until `pred` holds for its peers.
fn wait_view(
    side: &str,
    view: &mut ResidencyView,
    mut agent: Option<&mut Agent>,
    what: &str,
    pred: impl Fn(&ResidencyView) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(200);
    while !pred(view) {
        assert!(Instant::now() < deadline, "{side}: never saw {what}");
        if let Some(a) = agent.as_deref_mut() {
            for c in a.step(Some(Duration::from_millis(50))).unwrap() {
                println!("{side}: agent: {c}");
            }
        }
        for c in view.step(Some(Duration::from_millis(50))).unwrap() {
            println!("{side}: residency view: {c}");
        }
    }
}

type XenRouter<'t> =
    Router<'t, Ipv4Addr, XenRegion, XenDoorbell, StdClock, TcpNet, ThresholdPolicy, 16>;

fn messages() -> u64 {
    std::env::var("XEN_FALLBACK_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if save_event() { 3_000 } else { 10_000 })
}

/// How long the domU rests after each burst of up to 16 messages in the
/// `save` variant: the flows must still run when `xl save` has suspended
/// the domU (it takes seconds to get there under TCG); dom0 follows the
/// domU's pace through its window.
const SAVE_PACE: Duration = Duration::from_millis(150);
/// Relative to the domU's home: the domU's word that its channel to dom0
/// is closed (`save` variant), so dom0 may save it.
const SAVE_READY: &str = "data/coresident-test/save-ready";

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

    fn arrived(&self) -> u64 {
        self.from_channel + self.from_network
    }
}

// The receiver's checks, on the host: they must refuse what a broken
// fallback would deliver.
fn inbox(flow: u32) -> Inbox {
    Inbox {
        flow,
        ..Inbox::default()
    }
}

#[test]
fn inbox_takes_a_flow_in_order() {
    let (mut ib, mut m) = (inbox(FLOW_UP), Vec::new());
    for i in 0..1000 {
        message(FLOW_UP, i, &mut m);
        ib.deliver(FLOW_UP, &m);
    }
    assert_eq!(ib.next, 1000);
}

#[test]
#[should_panic(expected = "bad checksum")]
fn inbox_refuses_a_corrupted_message() {
    let (mut ib, mut m) = (inbox(FLOW_UP), Vec::new());
    message(FLOW_UP, 0, &mut m);
    m[9] ^= 1;
    ib.deliver(FLOW_UP, &m);
}

#[test]
#[should_panic(expected = "lost, duplicated or reordered")]
fn inbox_refuses_a_gap() {
    let (mut ib, mut m) = (inbox(FLOW_DOWN), Vec::new());
    message(FLOW_DOWN, 0, &mut m);
    ib.deliver(FLOW_DOWN, &m);
    message(FLOW_DOWN, 2, &mut m);
    ib.deliver(FLOW_DOWN, &m);
}

#[test]
#[should_panic(expected = "lost, duplicated or reordered")]
fn inbox_refuses_a_duplicate() {
    let (mut ib, mut m) = (inbox(FLOW_DOWN), Vec::new());
    message(FLOW_DOWN, 0, &mut m);
    ib.deliver(FLOW_DOWN, &m);
    ib.deliver(FLOW_DOWN, &m);
}

#[test]
#[should_panic(expected = "wrong contents")]
fn inbox_refuses_another_flows_message() {
    // Same index, valid checksum, other flow's bytes.
    let (mut ib, mut m) = (inbox(FLOW_DOWN), Vec::new());
    message(FLOW_UP, 0, &mut m);
    ib.deliver(FLOW_DOWN, &m);
}

/// What the reader thread hands the router.
enum Incoming {
    Frame(FlowHeader, Vec<u8>),
    /// The peer has failed over and sent its whole flow: everything it sent
    /// is in our ring or came before this on TCP.
    Fin,
    /// The peer has also received its whole incoming flow.
    Bye,
    Failed(String),
}

/// Length word of the "fin" frame.
const FIN: u32 = u32::MAX - 1;
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
                    if len == FIN {
                        let _ = tx.send(Incoming::Fin);
                        continue;
                    }
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

    fn marker(&mut self, m: u32) -> io::Result<()> {
        self.stream.write_all(&m.to_le_bytes())
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
/// and receive `n` of `in_flow`, in bursts; `departed(sent, arrived)` is
/// asked each round which channels' peers have left this host (the
/// residency list changed and their keys left the tables): those fail over.
#[allow(clippy::too_many_arguments)]
fn exchange(
    side: &str,
    router: &mut XenRouter<'_>,
    handle: Handle,
    peer: Ipv4Addr,
    incoming: &mpsc::Receiver<Incoming>,
    (out_flow, in_flow): (u32, u32),
    n: u64,
    pace: Duration,
    mut departed: impl FnMut(u64, u64) -> Vec<Handle>,
    mut closed: impl FnMut(),
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
    let (mut sent, mut fin_sent, mut peer_fin) = (0u64, false, false);
    let (mut bye_sent, mut peer_bye) = (false, false);
    let mut closed_told = false;
    let mut m = Vec::new();
    let t0 = Instant::now();
    loop {
        assert!(
            t0.elapsed() < WATCHDOG,
            "{side}: watchdog: sent {sent}/{n}, received {}/{n}, peer left: {:?}, fin sent {fin_sent}, \
             peer's fin {peer_fin}, bye sent {bye_sent}, peer's bye {peer_bye}, stats {:?}",
            r.inbox.next,
            r.left_at,
            router.stats()
        );
        // Once the router has drained and closed the channel (after the
        // peer left), say so once.
        if r.left_at.is_some() && !closed_told && router.channel(handle).is_none() {
            closed_told = true;
            closed();
        }
        let gone = departed(sent, r.inbox.arrived());
        for &h in &gone {
            assert_eq!(h, handle, "{side}: a handle that was never attached left");
            assert!(r.left_at.is_none(), "{side}: the peer left twice");
            router.peer_left(h).expect("peer_left: resend");
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
            // Paced by the other flow while resident: both flows then cross
            // the switch, and a full ring (the peer starved of CPU) does not
            // push most of the resident traffic onto the network. Arrivals,
            // not deliveries: a gap must not stall the sender.
            // In the `save` variant the window holds after the fallback
            // too, so that both flows are still running when the domU is
            // suspended (the domU paces its own).
            let windowed = r.left_at.is_none() || save_event();
            if sent == n || (windowed && sent >= r.inbox.arrived() + WINDOW) {
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
        // The peer wrote its fin after failing over and sending everything:
        // what it had not seen consumed went again over TCP, before the fin.
        // Once a receive pass that began after the fin finds the channel
        // empty, anything still missing was lost.
        let after_fin = peer_fin;
        let inbox = &mut r.inbox;
        let got = router
            .recv_channels(|f, p| inbox.deliver(f, p))
            .expect("recv_channels");
        inbox.from_channel += got as u64;
        assert!(
            !(after_fin && got == 0 && inbox.next < n),
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
                Incoming::Fin => peer_fin = true,
                Incoming::Bye => peer_bye = true,
                Incoming::Failed(e) => panic!("{side}: the TCP path failed: {e}"),
            }
        }
        if sent == n && r.left_at.is_some() && !fin_sent {
            router.network().marker(FIN).expect("fin");
            fin_sent = true;
        }
        if fin_sent && r.inbox.next == n && !bye_sent {
            router.network().marker(BYE).expect("bye");
            bye_sent = true;
        }
        if bye_sent && peer_bye {
            break;
        }
        if !progress {
            std::thread::sleep(Duration::from_millis(1));
        } else if !pace.is_zero() && sent < n {
            std::thread::sleep(pace);
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

/// The tables behind one side's router: the router reads the IPv4 table.
struct Tables {
    domains: DomainTable<64>,
    macs: Table<[u8; 6], 16>,
    v4: Table<Ipv4Addr, 16>,
    v6: Table<std::net::Ipv6Addr, 16>,
}

impl Tables {
    fn new(seed: u64) -> Self {
        Self {
            domains: DomainTable::new(),
            macs: Table::new(Seed::new([seed, 1, 2, 3])),
            v4: Table::new(Seed::new([seed, 4, 5, 6])),
            v6: Table::new(Seed::new([seed, 7, 8, 9])),
        }
    }
}

/// Steps `view` (and `agent`, in dom0) until `peer` is listed; puts it in
/// the tables under `handle`; returns its addresses.
fn wait_for_peer(
    side: &str,
    view: &mut ResidencyView,
    mut agent: Option<&mut Agent>,
    tables: &mut ResidencyTables<'_, 64, 16>,
    peer: u16,
    handle: Handle,
) -> Addresses {
    let deadline = Instant::now() + Duration::from_secs(200);
    loop {
        assert!(
            Instant::now() < deadline,
            "{side}: dom{peer} never listed as co-resident"
        );
        if let Some(a) = agent.as_deref_mut() {
            for c in a.step(Some(Duration::from_millis(50))).unwrap() {
                println!("{side}: agent: {c}");
            }
        }
        let changes = view.step(Some(Duration::from_millis(50))).unwrap();
        for c in &changes {
            println!("{side}: residency view: {c}");
        }
        let mut addrs = None;
        let updates = tables.apply(&changes, |d, a| {
            (d == peer).then(|| {
                addrs = Some(a.clone());
                handle
            })
        });
        for u in &updates {
            println!("{side}: tables: {u:?}");
        }
        if let Some(a) = addrs {
            return a;
        }
    }
}

/// The handles of the peers `changes` took out of the tables.
fn departed(
    side: &str,
    tables: &mut ResidencyTables<'_, 64, 16>,
    changes: &[PeerChange],
) -> Vec<Handle> {
    for c in changes {
        println!("{side}: residency view: {c}");
    }
    tables
        .apply(changes, |_, _| None)
        .into_iter()
        .filter_map(|u| match u {
            TableUpdate::Removed { handle, .. } => Some(handle),
            _ => None,
        })
        .collect()
}

#[test]
#[ignore = "needs a Xen dom0 (run.sh -n) with a domU running fallback_guest"]
fn fallback_host() {
    let n = messages();
    let domu: u16 = std::env::var("DOMU_ID")
        .expect("DOMU_ID")
        .parse()
        .expect("DOMU_ID");

    // The network path first: the guest connects once its eth0 is up.
    let listener = TcpListener::bind(SocketAddrV4::new(DOM0_IP, PORT)).unwrap();
    // UDP across the vif too: dom0 echoes the guest's datagrams.
    let udp = UdpSocket::bind(SocketAddrV4::new(DOM0_IP, PORT)).unwrap();
    std::thread::spawn(move || {
        let mut b = [0u8; 1500];
        while let Ok((len, from)) = udp.recv_from(&mut b) {
            if udp.send_to(&b[..len], from).is_err() {
                break;
            }
        }
    });

    // The channel: offered to the guest through the XenStore rendezvous,
    // on a connection of its own (it consumes watch events). Before a
    // save, the guest offers its own pages instead (see the module docs).
    let save = save_event();
    let mut xs_rv = XenStore::open_socket().unwrap();
    let mut saved_link = None;
    let mut pending = None;
    if save {
        let link = Rendezvous::new(0, domu, CHANNEL_SAVE)
            .unwrap()
            .accept(&mut xs_rv, Some(Duration::from_secs(200)))
            .unwrap();
        println!("dom0: accepted dom{domu}'s channel (its pages, mapped here)");
        saved_link = Some(link);
    } else {
        pending = Some(
            Rendezvous::new(0, domu, CHANNEL)
                .unwrap()
                .offer(&mut xs_rv, ChannelLayout::symmetric(64 * 1024))
                .unwrap(),
        );
    }

    // Residency: dom0 advertises too, runs the agent, and has its own view.
    let me = Addresses::from_addrs([Addr::Ipv4(DOM0_IP)]).unwrap();
    let mut xs = XenStore::open_socket().unwrap();
    residency::advertise(&mut xs, 0, &me).unwrap();
    let mut agent = Agent::new(XenStore::open_socket().unwrap()).unwrap();
    let mut view = ResidencyView::new(xs, 0, me).unwrap();
    println!("dom0: offered a channel to dom{domu}; advertising {DOM0_IP}; agent running");

    let (stream, from) = listener.accept().unwrap();
    println!("dom0: TCP connection from {from} over the vif");
    let (net, incoming) = TcpNet::new(stream, DOMU_IP);
    let link = match (pending, saved_link) {
        (Some(p), _) => p
            .complete(&mut xs_rv, Some(Duration::from_secs(200)))
            .unwrap(),
        (None, Some(l)) => l,
        (None, None) => unreachable!(),
    };
    let ch = Channel::new(link, channel_config(), StdClock::default()).unwrap();

    let t = Tables::new(0xd0);
    let mut tables = ResidencyTables::new(&t.domains, &t.macs, &t.v4, &t.v6).unwrap();
    let mut router: XenRouter = Router::new(&t.v4, ThresholdPolicy::default(), net, 1 << 16);
    let handle = router.attach(DOMU_IP, ch).unwrap();
    let addrs = wait_for_peer(
        "dom0",
        &mut view,
        Some(&mut agent),
        &mut tables,
        domu,
        handle,
    );
    assert_eq!(
        t.v4.get(&DOMU_IP),
        Some(handle),
        "the domU's IPv4 address is not in dom0's table"
    );
    assert_eq!(
        t.domains.get(DomainId(domu)),
        Some(handle),
        "the domU's id is not in dom0's table"
    );
    for m in addrs.macs() {
        assert_eq!(
            t.macs.get(m),
            Some(handle),
            "the domU's MAC is not in dom0's table"
        );
    }
    println!(
        "dom0: dom{domu} is co-resident ({} addresses in the tables): channel attached",
        addrs.len()
    );

    // dom0 withdraws the guest (or saves and restores it) once a third of
    // each flow has gone by: both lists lose the other side.
    let mut withdrawn = false;
    let mut saver: Option<std::thread::JoinHandle<std::process::ExitStatus>> = None;
    let ready = format!("/local/domain/{domu}/{SAVE_READY}");
    if save {
        xs_rv.watch(&ready, "save-ready").unwrap();
    }
    let report = exchange(
        "dom0",
        &mut router,
        handle,
        DOMU_IP,
        &incoming,
        (FLOW_DOWN, FLOW_UP),
        n,
        Duration::ZERO,
        |sent, got| {
            if !withdrawn && sent >= n / 3 && got >= n / 3 {
                withdrawn = true;
                for c in agent.withdraw(domu).unwrap() {
                    println!("dom0: agent: {c}");
                }
            }
            if !withdrawn {
                return Vec::new();
            }
            if save {
                for c in agent.step(Some(Duration::ZERO)).unwrap() {
                    println!("dom0: agent: {c}");
                }
                // Once the domU closed its channel: save it, mid-stream.
                if saver.is_none()
                    && xs_rv.wait_watch(Some(Duration::ZERO)).unwrap().is_some()
                    && xs_rv.read(&ready).is_ok()
                {
                    println!(
                        "dom0: dom{domu} closed its channel; xl save and xl restore, mid-stream"
                    );
                    saver = Some(std::thread::spawn(|| {
                        std::process::Command::new("sh")
                            .args([
                                "-c",
                                "xl save domu /tmp/domu.save && xl restore /tmp/domu.save; \
                                 rc=$?; rm -f /tmp/domu.save; exit $rc",
                            ])
                            .status()
                            .unwrap()
                    }));
                }
            }
            let changes = view.step(Some(Duration::ZERO)).unwrap();
            departed("dom0", &mut tables, &changes)
        },
        || {},
    );
    assert_eq!(
        t.v4.get(&DOMU_IP),
        None,
        "the domU is still in dom0's table"
    );
    assert_eq!(
        t.domains.get(DomainId(domu)),
        None,
        "the domU's id is still in dom0's table"
    );
    print_report("dom0", &mut router, &report, n);
    check_report("dom0", &router, &report, n);
    if save {
        let s = saver.expect("the domU never said it closed its channel: no save");
        let status = s.join().unwrap();
        assert!(status.success(), "xl save / xl restore: {status}");
        let out = std::process::Command::new("xl")
            .args(["domid", "domu"])
            .output()
            .unwrap();
        let new: u16 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        println!("dom0: dom{domu} was saved and restored as dom{new}");
        // The agent lists the restored domU again once it advertises anew.
        wait_view(
            "dom0",
            &mut view,
            Some(&mut agent),
            &format!("the restored dom{new} listed"),
            |v| {
                v.peers()
                    .get(&new)
                    .is_some_and(|a| a.ipv4().contains(&DOMU_IP))
            },
        );
        println!("XEN-CHECK save: the agent lists the restored domU again (dom{domu} -> dom{new})");
        residency::unadvertise(view.xenstore(), 0).unwrap();
        println!("XEN-CHECK save_host ok");
        return;
    }
    residency::unadvertise(view.xenstore(), 0).unwrap();
    println!("XEN-CHECK fallback_host ok");
}

/// Sends a datagram to dom0's echo until it comes back (UDP may drop one);
/// returns the number of tries.
fn udp_echo(own: u16, deadline: Instant) -> u32 {
    let udp = UdpSocket::bind(SocketAddrV4::new(DOMU_IP, 0)).unwrap();
    udp.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let dom0 = SocketAddrV4::new(DOM0_IP, PORT);
    let msg = format!("coresident-fallback udp from dom{own}");
    let mut b = [0u8; 1500];
    let mut tries = 0;
    loop {
        tries += 1;
        assert!(Instant::now() < deadline, "no UDP echo from dom0");
        udp.send_to(msg.as_bytes(), dom0).unwrap();
        if let Ok((len, from)) = udp.recv_from(&mut b) {
            if from == dom0.into() && &b[..len] == msg.as_bytes() {
                return tries;
            }
        }
    }
}

#[test]
#[ignore = "needs a Xen domU (run.sh -n) with dom0 running fallback_host"]
fn fallback_guest() {
    let n = messages();
    let mut xs = XenStore::open().unwrap();
    let own = residency::own_domid(&mut xs).unwrap();
    let mac = residency::mac_of("eth0").expect("eth0's MAC address");
    let me = Addresses::from_addrs([Addr::Mac(mac), Addr::Ipv4(DOMU_IP)]).unwrap();
    residency::advertise(&mut xs, own, &me).unwrap();
    let mut view = ResidencyView::new(xs, own, me.clone()).unwrap();
    println!(
        "domU (dom{own}): advertising{}",
        me.iter().map(|a| format!(" {a}")).collect::<String>()
    );

    // The rendezvous on a connection of its own (it consumes watch events).
    let save = save_event();
    let mut xs_rv = XenStore::open().unwrap();
    let link = if save {
        Rendezvous::new(own, 0, CHANNEL_SAVE)
            .unwrap()
            .offer(&mut xs_rv, ChannelLayout::symmetric(64 * 1024))
            .unwrap()
            .complete(&mut xs_rv, Some(Duration::from_secs(200)))
            .unwrap()
    } else {
        Rendezvous::new(own, 0, CHANNEL)
            .unwrap()
            .accept(&mut xs_rv, Some(Duration::from_secs(200)))
            .unwrap()
    };
    let ch = Channel::new(link, channel_config(), StdClock::default()).unwrap();
    println!(
        "domU: channel with dom0 up ({})",
        if save { "our pages" } else { "dom0's pages" }
    );

    let deadline = Instant::now() + Duration::from_secs(200);
    let tries = udp_echo(own, deadline);
    println!("domU: a UDP datagram to {DOM0_IP}:{PORT} came back from dom0 (try {tries})");
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

    let t = Tables::new(0xd1);
    let mut tables = ResidencyTables::new(&t.domains, &t.macs, &t.v4, &t.v6).unwrap();
    let mut router: XenRouter = Router::new(&t.v4, ThresholdPolicy::default(), net, 1 << 16);
    let handle = router.attach(DOM0_IP, ch).unwrap();
    wait_for_peer("domU", &mut view, None, &mut tables, 0, handle);
    assert_eq!(
        t.v4.get(&DOM0_IP),
        Some(handle),
        "dom0's address is not in the domU's table"
    );
    println!("domU: dom0 ({DOM0_IP}) is co-resident: channel in the tables");

    let report = exchange(
        "domU",
        &mut router,
        handle,
        DOM0_IP,
        &incoming,
        (FLOW_UP, FLOW_DOWN),
        n,
        if save { SAVE_PACE } else { Duration::ZERO },
        |sent, got| {
            let changes = view.step(Some(Duration::ZERO)).unwrap();
            for c in &changes {
                // Restored as another domain: advertise again under the new
                // id (the old advertisement went with the old domain).
                if let PeerChange::Moved { from, to } = c {
                    println!(
                        "domU: restored: dom{from} is now dom{to}, after {sent} sent and {got} \
                         received of {n}; advertising again"
                    );
                    assert!(sent < n && got < n, "the save was not mid-stream");
                    println!("XEN-CHECK save: restored mid-stream");
                    residency::advertise(view.xenstore(), *to, &me).unwrap();
                }
            }
            departed("domU", &mut tables, &changes)
        },
        || {
            if save {
                // Our channel is closed (its descriptors released): dom0
                // may save us now.
                xs_rv.write(SAVE_READY, b"1").unwrap();
                println!("domU: channel closed; ready to be saved");
            }
        },
    );
    assert_eq!(
        t.v4.get(&DOM0_IP),
        None,
        "dom0 is still in the domU's table"
    );
    print_report("domU", &mut router, &report, n);
    check_report("domU", &router, &report, n);
    if save {
        assert_ne!(view.domid(), own, "the domU never saw its restore");
        wait_view("domU", &mut view, None, "dom0 listed again", |v| {
            v.peers().contains_key(&0)
        });
        println!("domU: dom0 is listed again for dom{}", view.domid());
        println!("XEN-CHECK save_guest ok");
        return;
    }
    println!("XEN-CHECK fallback_guest ok");
}
