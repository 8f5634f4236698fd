//! Two processes, pinned to cores 0 and 1, one shared-memory channel between them:
//! coresident's ring beside iceoryx2 0.10 and shmem-ipc 0.3, on the same inputs, in
//! the same criterion groups, plus two floors.
//!
//! **Throughput** (`ipc-throughput-{64,1024,65536}B`): the bench process sends `n`
//! messages of `len` bytes, each copied in from its buffer; the peer process copies
//! each out into its own buffer and checksums it (first 8 bytes and the last one, as
//! in `benches/ring.rs`); a sample is timed from the command to the peer's checksum,
//! which must match. Every contestant spins when full or empty (two cores).
//! - `coresident`: `Producer::send` (publish per message) and `Consumer::recv` with
//!   lazy release (`release` on an empty poll), 1 MiB ring, in a memfd both map;
//! - `shmem-ipc`: a `u8` ring of 1 MiB (`sharedring::{Sender, Receiver}`), a 4-byte
//!   length then the payload, written and read as a byte stream through
//!   `send_raw`/`receive_raw` (its documented API; it rings its eventfd when it
//!   decides the peer needs it);
//! - `iceoryx2`: publish-subscribe of `[u8]` (`loan_slice_uninit`, `write_from_slice`,
//!   `send`; `receive`, copy out), backpressure `RetryUntilDelivered`, 256 samples of
//!   buffer, no safe overflow.
//!
//! **Round trip** (`ipc-round-trip-8B`): 8 bytes there and back, one ring (service)
//! each way, the bench process pinging; beside `bare-pingpong` (one `AtomicU64` per
//! direction in its own 128-byte line of the memfd: one line transfer each way, the
//! floor for anything) and `minimal-ring` (an 80-line-style SPSC ring of `u64` slots
//! with a head and a tail index, no validation: the baseline the issue names).
//!
//! The peer is this same binary, started with `IPC_PEER` set (and the descriptors it
//! needs in `IPC_FDS`); commands and checksums travel over its stdin and stdout.
//!
//! Run: `cargo bench -p coresident-bench-ipc --bench ipc` (about two minutes); a
//! filter narrows it, e.g. `-- ipc-round-trip`.
#![allow(missing_docs)]

use coresident_ring::{region_size, Consumer, Producer, RecvError, RingMemory, SendError};
use criterion::{BenchmarkGroup, Criterion, Throughput};
use iox::UpdateConnections;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Payload room of every contestant.
const DATA: u32 = 1 << 20;
const KIND: u8 = 1;

// ------------------------------------------------------------------ shared memory

/// A `MAP_SHARED` mapping of a memfd, inherited by the peer.
struct Shm {
    fd: RawFd,
    ptr: *mut u8,
    len: usize,
}

impl Shm {
    fn create(len: usize) -> Self {
        // SAFETY: a NUL-terminated name; no flags (no CLOEXEC: the peer inherits it).
        let fd = unsafe { libc::memfd_create(c"coresident-bench-ipc".as_ptr(), 0) };
        assert!(fd >= 0, "memfd_create");
        // SAFETY: `fd` is the memfd just created.
        assert_eq!(unsafe { libc::ftruncate(fd, len as libc::off_t) }, 0);
        Self::map(fd, len)
    }

    fn map(fd: RawFd, len: usize) -> Self {
        // SAFETY: a fresh shared mapping of `len` bytes of `fd`; nothing aliases it.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED, "mmap");
        Self {
            fd,
            ptr: ptr.cast(),
            len,
        }
    }

    /// The ring memory at `off` (page-aligned mapping, 128-aligned offsets).
    fn ring(&self, off: usize) -> RingMemory {
        assert!(off + region_size(DATA) <= self.len);
        // SAFETY:
        // - the range is inside the mapping, which lives until the process exits (the
        //   benches never unmap);
        // - the ring is the only user of those bytes in this process, through raw
        //   pointers (the other process is the peer).
        unsafe { RingMemory::new(self.ptr.add(off), region_size(DATA)) }.unwrap()
    }

    /// The `AtomicU64` at `off` (a 128-byte line of its own).
    fn word(&self, off: usize) -> &AtomicU64 {
        assert!(off + 8 <= self.len && off.is_multiple_of(8));
        // SAFETY: inside the mapping, 8-aligned, only ever accessed atomically.
        unsafe { AtomicU64::from_ptr(self.ptr.add(off).cast()) }
    }
}

/// Two rings (one each way) in one memfd.
const RING_B: usize = region_size(DATA).next_multiple_of(4096);
const SHM_LEN: usize = 2 * RING_B;

// ------------------------------------------------------------------ messages

#[inline(always)]
fn stamp(msg: &mut [u8], seq: u64) -> u64 {
    let last = msg.len() - 1;
    msg[last] = (seq as u8).wrapping_mul(31);
    msg[..8].copy_from_slice(&seq.to_le_bytes());
    check(msg)
}

#[inline(always)]
fn check(msg: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&msg[..8]);
    u64::from_le_bytes(w).wrapping_add(u64::from(msg[msg.len() - 1]))
}

// ------------------------------------------------------------------ the peer process

/// A running peer and its control pipe.
struct Peer {
    child: Child,
    cmd: ChildStdin,
    out: ChildStdout,
}

impl Peer {
    fn spawn(role: &str, fds: &[RawFd]) -> Self {
        let fds: Vec<String> = fds.iter().map(|f| f.to_string()).collect();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env("IPC_PEER", role)
            .env("IPC_OWNER", std::process::id().to_string())
            .env("IPC_FDS", fds.join(","))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the peer");
        let cmd = child.stdin.take().unwrap();
        let mut out = child.stdout.take().unwrap();
        let mut ready = [0u8; 1];
        out.read_exact(&mut ready).expect("the peer's ready byte");
        Self { child, cmd, out }
    }

    fn start(&mut self, n: u64) {
        self.cmd.write_all(&n.to_le_bytes()).unwrap();
        self.cmd.flush().unwrap();
    }

    fn result(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.out.read_exact(&mut b).unwrap();
        u64::from_le_bytes(b)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.cmd.write_all(&0u64.to_le_bytes());
        let _ = self.cmd.flush();
        let _ = self.child.wait();
    }
}

/// The peer's side of the control pipe.
struct Control {
    stdin: std::io::Stdin,
    stdout: std::io::Stdout,
}

impl Control {
    fn new() -> Self {
        let c = Self {
            stdin: std::io::stdin(),
            stdout: std::io::stdout(),
        };
        c.reply_bytes(&[1]);
        c
    }
    /// The next command: how many operations (0: exit).
    fn next(&self) -> u64 {
        let mut b = [0u8; 8];
        if self.stdin.lock().read_exact(&mut b).is_err() {
            return 0;
        }
        u64::from_le_bytes(b)
    }
    fn reply(&self, v: u64) {
        self.reply_bytes(&v.to_le_bytes());
    }
    fn reply_bytes(&self, b: &[u8]) {
        let mut o = self.stdout.lock();
        o.write_all(b).unwrap();
        o.flush().unwrap();
    }
}

/// Pins this thread to CPU `core` (or CPU 0 where there is no such CPU). Not through
/// `get_core_ids`: it lists the CPUs of the *current* mask, and a peer spawned after the
/// parent pinned itself to CPU 0 inherits that mask, so it found one CPU and pinned to 0
/// too: both processes shared a core and each round trip waited for a scheduler tick
/// (7.7 ms, for every system alike).
fn pin(core: usize) {
    use core_affinity::CoreId;
    if !core_affinity::set_for_current(CoreId { id: core }) {
        core_affinity::set_for_current(CoreId { id: 0 });
    }
}

fn fds() -> Vec<RawFd> {
    std::env::var("IPC_FDS")
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect()
}

fn peer_main(role: &str) {
    pin(1);
    let mut parts = role.split(':');
    let (system, scenario) = (parts.next().unwrap(), parts.next().unwrap());
    let len: usize = parts.next().unwrap_or("8").parse().unwrap();
    match (system, scenario) {
        ("coresident", "tput") => coresident_sink(len),
        ("coresident", "rtt") => coresident_echo(),
        ("shmem-ipc", "tput") => shmem_sink(len),
        ("shmem-ipc", "rtt") => shmem_echo(),
        ("iceoryx2", "tput") => iox_sink(len),
        ("iceoryx2", "rtt") => iox_echo(),
        ("bare", "rtt") => bare_echo(),
        ("minimal", "rtt") => minimal_echo(),
        _ => panic!("unknown peer role {role}"),
    }
}

// ------------------------------------------------------------------ coresident

fn coresident_send(tx: &mut Producer, msg: &[u8]) {
    loop {
        match tx.send(KIND, msg) {
            Ok(_) => return,
            Err(SendError::Full) => std::hint::spin_loop(),
            Err(e) => panic!("send: {e}"),
        }
    }
}

fn coresident_recv(rx: &mut Consumer, buf: &mut [u8]) -> usize {
    loop {
        match rx.recv(buf) {
            Ok(r) => return r.len,
            Err(RecvError::Empty) => {
                // Lazy release: settle on the empty poll (nobody sleeps here, so the
                // answer needs no doorbell).
                let _ = rx.release();
                std::hint::spin_loop();
            }
            Err(e) => panic!("recv: {e}"),
        }
    }
}

fn coresident_rings(shm: &Shm, creator: bool) -> (Producer, Consumer) {
    let (tx_off, rx_off) = if creator { (0, RING_B) } else { (RING_B, 0) };
    let tx = if creator {
        Producer::init(shm.ring(tx_off), DATA).unwrap()
    } else {
        Producer::attach(shm.ring(tx_off)).unwrap()
    };
    let mut rx = if creator {
        Consumer::init(shm.ring(rx_off), DATA).unwrap()
    } else {
        Consumer::attach(shm.ring(rx_off)).unwrap()
    };
    rx.set_lazy_release(true);
    (tx, rx)
}

fn coresident_sink(len: usize) {
    let shm = Shm::map(fds()[0], SHM_LEN);
    let (_tx, mut rx) = coresident_rings(&shm, false);
    let ctl = Control::new();
    let mut buf = vec![0u8; len];
    loop {
        let n = ctl.next();
        if n == 0 {
            return;
        }
        let mut sum = 0u64;
        for _ in 0..n {
            let l = coresident_recv(&mut rx, &mut buf);
            sum = sum.wrapping_add(check(&buf[..l]));
        }
        ctl.reply(sum);
    }
}

fn coresident_echo() {
    let shm = Shm::map(fds()[0], SHM_LEN);
    let (mut tx, mut rx) = coresident_rings(&shm, false);
    let ctl = Control::new();
    let mut buf = [0u8; 8];
    loop {
        let n = ctl.next();
        if n == 0 {
            return;
        }
        for _ in 0..n {
            let l = coresident_recv(&mut rx, &mut buf);
            coresident_send(&mut tx, &buf[..l]);
        }
        ctl.reply(n);
    }
}

fn coresident_throughput(g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>, len: usize) {
    let shm = Shm::create(SHM_LEN);
    let (mut tx, _rx) = coresident_rings(&shm, true);
    let mut peer = Peer::spawn(&format!("coresident:tput:{len}"), &[shm.fd]);
    let (mut msg, mut seq) = (vec![0xA5u8; len], 0u64);
    g.bench_function("coresident", |b| {
        b.iter_custom(|n| {
            let t0 = Instant::now();
            peer.start(n);
            let mut sum = 0u64;
            for _ in 0..n {
                seq += 1;
                sum = sum.wrapping_add(stamp(&mut msg, seq));
                coresident_send(&mut tx, &msg);
            }
            assert_eq!(peer.result(), sum, "checksums differ");
            t0.elapsed()
        })
    });
}

fn coresident_round_trip(g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    let shm = Shm::create(SHM_LEN);
    let (mut tx, mut rx) = coresident_rings(&shm, true);
    let mut peer = Peer::spawn("coresident:rtt:8", &[shm.fd]);
    let mut buf = [0u8; 8];
    let mut seq = 0u64;
    g.bench_function("coresident", |b| {
        b.iter_custom(|n| {
            peer.start(n);
            let t0 = Instant::now();
            for _ in 0..n {
                seq += 1;
                coresident_send(&mut tx, &seq.to_le_bytes());
                assert_eq!(coresident_recv(&mut rx, &mut buf), 8);
            }
            let d = t0.elapsed();
            assert_eq!(u64::from_le_bytes(buf), seq);
            assert_eq!(peer.result(), n);
            d
        })
    });
}

// ------------------------------------------------------------------ shmem-ipc

type ShmTx = shmem_ipc::sharedring::Sender<u8>;
type ShmRx = shmem_ipc::sharedring::Receiver<u8>;

/// The descriptors of one shmem-ipc ring, duplicated without close-on-exec for the
/// peer: memfd, empty signal, full signal.
fn shmem_dup(tx: &ShmTx) -> [RawFd; 3] {
    use std::os::fd::AsRawFd;
    let fds = [
        tx.memfd().as_file().as_raw_fd(),
        tx.empty_signal().as_raw_fd(),
        tx.full_signal().as_raw_fd(),
    ];
    // SAFETY: `dup` of descriptors we own; the copies have no CLOEXEC.
    fds.map(|f| unsafe { libc::dup(f) })
}

fn shmem_dup_rx(rx: &ShmRx) -> [RawFd; 3] {
    use std::os::fd::AsRawFd;
    let fds = [
        rx.memfd().as_file().as_raw_fd(),
        rx.empty_signal().as_raw_fd(),
        rx.full_signal().as_raw_fd(),
    ];
    // SAFETY: as in `shmem_dup`.
    fds.map(|f| unsafe { libc::dup(f) })
}

fn shmem_files(fds: &[RawFd]) -> (std::fs::File, std::fs::File, std::fs::File) {
    // SAFETY: the descriptors were inherited from the bench process, for us alone.
    unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
            std::fs::File::from_raw_fd(fds[2]),
        )
    }
}

/// Sends one framed message (a 4-byte length, then the payload) as a byte stream,
/// in as few `send_raw` calls as the ring's free space allows (one, unless it wraps).
fn shmem_send(tx: &mut ShmTx, msg: &[u8]) {
    let hdr = (msg.len() as u32).to_le_bytes();
    let total = 4 + msg.len();
    let mut at = 0usize;
    while at < total {
        let mut took = 0;
        tx.send_raw(|p, count| {
            let k = count.min(total - at);
            let h = k.min(4usize.saturating_sub(at));
            // SAFETY: `k <= count` bytes are writable at `p` (shmem-ipc's contract);
            // the sources are our own buffers, in range by the `min`s.
            unsafe {
                std::ptr::copy_nonoverlapping(hdr.as_ptr().add(at.min(4)), p, h);
                let m0 = (at + h).saturating_sub(4);
                std::ptr::copy_nonoverlapping(msg.as_ptr().add(m0), p.add(h), k - h);
            }
            took = k;
            k
        })
        .expect("shmem-ipc send");
        at += took;
        if took == 0 {
            std::hint::spin_loop();
        }
    }
}

/// Receives one framed message into `buf`; returns its length.
fn shmem_recv(rx: &mut ShmRx, buf: &mut [u8]) -> usize {
    let mut hdr = [0u8; 4];
    let mut got = 0usize;
    let mut len = 0usize;
    loop {
        let mut took = 0;
        rx.receive_raw(|p, count| {
            let mut i = 0;
            while i < count {
                if got < 4 {
                    // SAFETY: `i < count` bytes are readable at `p`.
                    hdr[got] = unsafe { p.add(i).read() };
                    got += 1;
                    i += 1;
                    if got == 4 {
                        len = u32::from_le_bytes(hdr) as usize;
                        assert!(len <= buf.len());
                    }
                    continue;
                }
                let k = (4 + len - got).min(count - i);
                // SAFETY: `k` readable bytes at `p + i`; `buf[got - 4..]` has room.
                unsafe {
                    std::ptr::copy_nonoverlapping(p.add(i), buf.as_mut_ptr().add(got - 4), k)
                };
                got += k;
                i += k;
                if got == 4 + len {
                    break;
                }
            }
            took = i;
            i
        })
        .expect("shmem-ipc receive");
        if got >= 4 && got == 4 + len {
            return len;
        }
        if took == 0 {
            std::hint::spin_loop();
        }
    }
}

fn shmem_sink(len: usize) {
    let (m, e, f) = shmem_files(&fds());
    let mut rx = ShmRx::open(DATA as usize, m, e, f).expect("open shmem-ipc ring");
    let ctl = Control::new();
    let mut buf = vec![0u8; len];
    loop {
        let n = ctl.next();
        if n == 0 {
            return;
        }
        let mut sum = 0u64;
        for _ in 0..n {
            let l = shmem_recv(&mut rx, &mut buf);
            sum = sum.wrapping_add(check(&buf[..l]));
        }
        ctl.reply(sum);
    }
}

fn shmem_echo() {
    let fds = fds();
    let (m, e, f) = shmem_files(&fds[..3]);
    let mut rx = ShmRx::open(4096, m, e, f).expect("open the ping ring");
    let (m, e, f) = shmem_files(&fds[3..]);
    let mut tx = ShmTx::open(4096, m, e, f).expect("open the pong ring");
    let ctl = Control::new();
    let mut buf = [0u8; 8];
    loop {
        let n = ctl.next();
        if n == 0 {
            return;
        }
        for _ in 0..n {
            let l = shmem_recv(&mut rx, &mut buf);
            shmem_send(&mut tx, &buf[..l]);
        }
        ctl.reply(n);
    }
}

fn shmem_throughput(g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>, len: usize) {
    let mut tx = ShmTx::new(DATA as usize).expect("shmem-ipc ring");
    let mut peer = Peer::spawn(&format!("shmem-ipc:tput:{len}"), &shmem_dup(&tx));
    let (mut msg, mut seq) = (vec![0xA5u8; len], 0u64);
    g.bench_function("shmem-ipc", |b| {
        b.iter_custom(|n| {
            let t0 = Instant::now();
            peer.start(n);
            let mut sum = 0u64;
            for _ in 0..n {
                seq += 1;
                sum = sum.wrapping_add(stamp(&mut msg, seq));
                shmem_send(&mut tx, &msg);
            }
            assert_eq!(peer.result(), sum, "checksums differ");
            t0.elapsed()
        })
    });
}

fn shmem_round_trip(g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    let mut tx = ShmTx::new(4096).expect("ping ring");
    let mut rx = ShmRx::new(4096).expect("pong ring");
    let mut fds = shmem_dup(&tx).to_vec();
    fds.extend(shmem_dup_rx(&rx));
    let mut peer = Peer::spawn("shmem-ipc:rtt:8", &fds);
    let mut buf = [0u8; 8];
    let mut seq = 0u64;
    g.bench_function("shmem-ipc", |b| {
        b.iter_custom(|n| {
            peer.start(n);
            let t0 = Instant::now();
            for _ in 0..n {
                seq += 1;
                shmem_send(&mut tx, &seq.to_le_bytes());
                assert_eq!(shmem_recv(&mut rx, &mut buf), 8);
            }
            let d = t0.elapsed();
            assert_eq!(u64::from_le_bytes(buf), seq);
            assert_eq!(peer.result(), n);
            d
        })
    });
}

// ------------------------------------------------------------------ iceoryx2

mod iox {
    pub use iceoryx2::port::backpressure_strategy::BackpressureStrategy;
    pub use iceoryx2::port::update_connections::UpdateConnections;
    pub use iceoryx2::prelude::*;

    pub type Svc =
        iceoryx2::service::port_factory::publish_subscribe::PortFactory<ipc::Service, [u8], ()>;
    pub type Pub = iceoryx2::port::publisher::Publisher<ipc::Service, [u8], ()>;
    pub type Sub = iceoryx2::port::subscriber::Subscriber<ipc::Service, [u8], ()>;

    pub fn node() -> Node<ipc::Service> {
        NodeBuilder::new()
            .create::<ipc::Service>()
            .expect("iceoryx2 node")
    }

    pub fn service(node: &Node<ipc::Service>, name: &str) -> Svc {
        let name: ServiceName = name.try_into().expect("service name");
        node.service_builder(&name)
            .publish_subscribe::<[u8]>()
            .max_publishers(1)
            .max_subscribers(1)
            .subscriber_max_buffer_size(256)
            .enable_safe_overflow(false)
            .open_or_create()
            .expect("iceoryx2 service")
    }

    pub fn publisher(svc: &Svc, len: usize) -> Pub {
        svc.publisher_builder()
            .initial_max_slice_len(len)
            .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
            .create()
            .expect("iceoryx2 publisher")
    }

    pub fn subscriber(svc: &Svc) -> Sub {
        svc.subscriber_builder()
            .buffer_size(256)
            .create()
            .expect("iceoryx2 subscriber")
    }

    /// Copies `msg` into a loaned sample and sends it (spinning while no sample is
    /// free: the subscriber still holds them).
    pub fn send(p: &Pub, msg: &[u8]) {
        loop {
            match p.loan_slice_uninit(msg.len()) {
                Ok(s) => {
                    s.write_from_slice(msg).send().expect("iceoryx2 send");
                    return;
                }
                Err(_) => std::hint::spin_loop(),
            }
        }
    }

    /// Receives one sample and copies it out into `buf`.
    pub fn recv(s: &Sub, buf: &mut [u8]) -> usize {
        loop {
            if let Some(sample) = s.receive().expect("iceoryx2 receive") {
                let p = sample.payload();
                buf[..p.len()].copy_from_slice(p);
                return p.len();
            }
            std::hint::spin_loop();
        }
    }
}

fn iox_name(what: &str) -> String {
    format!(
        "coresident-bench/{}/{what}",
        std::env::var("IPC_OWNER").unwrap_or_else(|_| std::process::id().to_string())
    )
}

fn iox_sink(len: usize) {
    let node = iox::node();
    let svc = iox::service(&node, &iox_name(&format!("tput-{len}")));
    let sub = iox::subscriber(&svc);
    let ctl = Control::new();
    let mut buf = vec![0u8; len];
    loop {
        let n = ctl.next();
        if n == 0 {
            return;
        }
        let mut sum = 0u64;
        for _ in 0..n {
            let l = iox::recv(&sub, &mut buf);
            sum = sum.wrapping_add(check(&buf[..l]));
        }
        ctl.reply(sum);
    }
}

fn iox_echo() {
    let node = iox::node();
    let ping = iox::service(&node, &iox_name("ping"));
    let pong = iox::service(&node, &iox_name("pong"));
    let sub = iox::subscriber(&ping);
    let publ = iox::publisher(&pong, 8);
    let ctl = Control::new();
    let mut buf = [0u8; 8];
    loop {
        let n = ctl.next();
        if n == 0 {
            return;
        }
        for _ in 0..n {
            let l = iox::recv(&sub, &mut buf);
            iox::send(&publ, &buf[..l]);
        }
        ctl.reply(n);
    }
}

fn iox_throughput(g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>, len: usize) {
    let node = iox::node();
    let svc = iox::service(&node, &iox_name(&format!("tput-{len}")));
    let publ = iox::publisher(&svc, len);
    let mut peer = Peer::spawn(&format!("iceoryx2:tput:{len}"), &[]);
    publ.update_connections().expect("iceoryx2 connections");
    let (mut msg, mut seq) = (vec![0xA5u8; len], 0u64);
    g.bench_function("iceoryx2", |b| {
        b.iter_custom(|n| {
            let t0 = Instant::now();
            peer.start(n);
            let mut sum = 0u64;
            for _ in 0..n {
                seq += 1;
                sum = sum.wrapping_add(stamp(&mut msg, seq));
                iox::send(&publ, &msg);
            }
            assert_eq!(peer.result(), sum, "checksums differ");
            t0.elapsed()
        })
    });
}

fn iox_round_trip(g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    let node = iox::node();
    let ping = iox::service(&node, &iox_name("ping"));
    let pong = iox::service(&node, &iox_name("pong"));
    let publ = iox::publisher(&ping, 8);
    let sub = iox::subscriber(&pong);
    let mut peer = Peer::spawn("iceoryx2:rtt:8", &[]);
    publ.update_connections().expect("iceoryx2 connections");
    let mut buf = [0u8; 8];
    let mut seq = 0u64;
    g.bench_function("iceoryx2", |b| {
        b.iter_custom(|n| {
            peer.start(n);
            let t0 = Instant::now();
            for _ in 0..n {
                seq += 1;
                iox::send(&publ, &seq.to_le_bytes());
                assert_eq!(iox::recv(&sub, &mut buf), 8);
            }
            let d = t0.elapsed();
            assert_eq!(u64::from_le_bytes(buf), seq);
            assert_eq!(peer.result(), n);
            d
        })
    });
}

// ------------------------------------------------------------------ floors

/// Offsets of the two flags of `bare-pingpong`, each in its own 128-byte line.
const PING: usize = 0;
const PONG: usize = 128;

fn bare_echo() {
    let shm = Shm::map(fds()[0], 4096);
    let ctl = Control::new();
    let mut k = 0u64;
    loop {
        let n = ctl.next();
        if n == 0 {
            return;
        }
        for _ in 0..n {
            k += 1;
            while shm.word(PING).load(Ordering::Acquire) != k {
                std::hint::spin_loop();
            }
            shm.word(PONG).store(k, Ordering::Release);
        }
        ctl.reply(n);
    }
}

fn bare_round_trip(g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    let shm = Shm::create(4096);
    let mut peer = Peer::spawn("bare:rtt:8", &[shm.fd]);
    let mut k = 0u64;
    g.bench_function("bare-pingpong", |b| {
        b.iter_custom(|n| {
            peer.start(n);
            let t0 = Instant::now();
            for _ in 0..n {
                k += 1;
                shm.word(PING).store(k, Ordering::Release);
                while shm.word(PONG).load(Ordering::Acquire) != k {
                    std::hint::spin_loop();
                }
            }
            let d = t0.elapsed();
            assert_eq!(peer.result(), n);
            d
        })
    });
}

/// The minimal ring: a head line, a tail line and `u64` slots; one each way.
struct Minimal<'a> {
    head: &'a AtomicU64,
    tail: &'a AtomicU64,
    shm: &'a Shm,
    base: usize,
    /// This side's index and its cache of the other side's.
    mine: u64,
    theirs: u64,
}

const MIN_CAP: u64 = 1024;

impl<'a> Minimal<'a> {
    fn new(shm: &'a Shm, base: usize) -> Self {
        Self {
            head: shm.word(base),
            tail: shm.word(base + 128),
            shm,
            base,
            mine: 0,
            theirs: 0,
        }
    }
    fn slot(&self, i: u64) -> &'a AtomicU64 {
        self.shm.word(self.base + 256 + 8 * (i % MIN_CAP) as usize)
    }
    fn push(&mut self, v: u64) {
        while self.mine - self.theirs == MIN_CAP {
            self.theirs = self.tail.load(Ordering::Acquire);
        }
        self.slot(self.mine).store(v, Ordering::Relaxed);
        self.mine += 1;
        self.head.store(self.mine, Ordering::Release);
    }
    fn pop(&mut self) -> u64 {
        while self.mine == self.theirs {
            self.theirs = self.head.load(Ordering::Acquire);
            std::hint::spin_loop();
        }
        let v = self.slot(self.mine).load(Ordering::Relaxed);
        self.mine += 1;
        self.tail.store(self.mine, Ordering::Release);
        v
    }
}

const MIN_RING_B: usize = 256 + 8 * MIN_CAP as usize;

fn minimal_echo() {
    let shm = Shm::map(fds()[0], 2 * MIN_RING_B);
    let (mut rx, mut tx) = (Minimal::new(&shm, 0), Minimal::new(&shm, MIN_RING_B));
    let ctl = Control::new();
    loop {
        let n = ctl.next();
        if n == 0 {
            return;
        }
        for _ in 0..n {
            let v = rx.pop();
            tx.push(v);
        }
        ctl.reply(n);
    }
}

fn minimal_round_trip(g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    let shm = Shm::create(2 * MIN_RING_B);
    let (mut tx, mut rx) = (Minimal::new(&shm, 0), Minimal::new(&shm, MIN_RING_B));
    let mut peer = Peer::spawn("minimal:rtt:8", &[shm.fd]);
    let mut k = 0u64;
    g.bench_function("minimal-ring", |b| {
        b.iter_custom(|n| {
            peer.start(n);
            let t0 = Instant::now();
            for _ in 0..n {
                k += 1;
                tx.push(k);
                assert_eq!(rx.pop(), k);
            }
            let d = t0.elapsed();
            assert_eq!(peer.result(), n);
            d
        })
    });
}

fn main() {
    if let Ok(role) = std::env::var("IPC_PEER") {
        peer_main(&role);
        return;
    }
    pin(0);
    let mut c = Criterion::default().configure_from_args();
    for len in [64usize, 1024, 65536] {
        let mut g = c.benchmark_group(format!("ipc-throughput-{len}B"));
        g.throughput(Throughput::Bytes(len as u64))
            .sample_size(10)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(1));
        coresident_throughput(&mut g, len);
        shmem_throughput(&mut g, len);
        iox_throughput(&mut g, len);
        g.finish();
    }
    let mut g = c.benchmark_group("ipc-round-trip-8B");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1500));
    bare_round_trip(&mut g);
    minimal_round_trip(&mut g);
    coresident_round_trip(&mut g);
    shmem_round_trip(&mut g);
    iox_round_trip(&mut g);
    g.finish();
    c.final_summary();
}
