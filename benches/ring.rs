//! The ring: `coresident-ring` beside rtrb and crossbeam-queue, same inputs, same groups.
//!
//! **Throughput** (`throughput-{cross-core,one-core}-{len}B`): `n` messages of `len`
//! bytes from a producer thread to a consumer thread, pinned to cores 0 and 1 (cross)
//! or both to core 0 (one core; every wait loop then calls `yield_now`, for us and the
//! peers alike, or nobody would progress). The pair of threads lives as long as one
//! benchmark; each criterion sample starts both at a spin barrier and times from the
//! producer's start to the consumer's last message. Every contestant has 1 MiB of
//! payload room, copies each message in from the producer's buffer and out into the
//! consumer's, and checksums the first 8 and the last byte of what it received against
//! what was sent (asserted per sample):
//! - `coresident-send`: `Producer::send` (publish per message), `Consumer::recv`;
//! - `coresident-batch`: `Producer::write` then one `publish` per batch, `recv_batch`;
//! - `rtrb-chunk`: a `u8` ring, one `write_chunk_uninit` of a 4-byte length and the
//!   payload per message; the consumer peeks the length with `read_chunk(4)`, then
//!   `read_chunk(4 + len)` and commits;
//! - `rtrb-batch`: one chunk per batch both ways;
//! - `crossbeam-arrayqueue`: `ArrayQueue<[u8; len]>` with `1 MiB / len` slots: fixed
//!   arrays moved in and out (a `Box<[u8]>` per message would time the allocator).
//!
//! A batch is 32 messages, or fewer when 32 would exceed a quarter of the ring
//! ([`batch_len`]): 15 of 16 KiB, 3 of 64 KiB.
//!
//! The coresident consumers release lazily (`Consumer::set_lazy_release`, as the
//! channel does) and call `release` on an empty poll.
//!
//! **Round trip** (`round-trip-cross-core`): ping on core 0, pong on core 1, one ring
//! each way, 8- and 64-byte messages, echoed; beside `bare-pingpong`, where each
//! thread spins on an `AtomicU64` in its own 128-byte line and the other stores to it:
//! one cache-line transfer each way, the floor for any ring; `rtrb-u64` (a ring of
//! `u64`, `push`/`pop`: rtrb at its leanest); and `coresident-8B-exact` (every
//! receive fences, the default of the ring API) beside the lazy `coresident-8B`.
//!
//! **Copy** (`copy-{64,1024,65536}B`, one thread): `coresident-send-recv` sends one
//! message and receives it (volatile copy in, volatile copy out) beside
//! `memcpy-twice` (`copy_from_slice` into a buffer and out again: the same bytes
//! moved twice, without the ring) and `rtrb-chunk` doing the same through rtrb.
//! Target: the ring's copies at least 0.8x `memcpy` at 64 KiB.
//!
//! Round trips and the cache lines they move, by store order (issue 15): per message
//! and direction the frame's line moves twice (the producer's store takes it from the
//! consumer, which was polling it; the consumer's poll takes it back), as in a bare
//! ping-pong. The frame header is one 8-byte store issued last (after the payload and
//! the next slot's mark, which sit in the same line for small frames): the line is
//! written in one burst, so a poll between two of our stores can steal it back at
//! most once. `write` and `read` live on lines the other side does not read on its
//! fast path (the consumer polls headers, the producer re-reads `read` only when its
//! cache says full), and each side's event line is read-mostly. So 8 B costs the two
//! transfers a ping-pong costs; what it costs beyond is instructions and fences: the
//! publish fence waits for the frame line (after the stores, off the reply's path),
//! and the lazy release moves the receive fence to the next empty poll.
//!
//! `cargo bench --bench ring` takes about three minutes; a filter narrows it, e.g.
//! `cargo bench --bench ring -- round-trip`.

use core_affinity::CoreId;
use coresident_ring::{region_size, Consumer, Producer, RecvError, RingMemory, SendError};
use criterion::measurement::WallTime;
use criterion::{criterion_main, BenchmarkGroup, Criterion, Throughput};
use crossbeam_queue::ArrayQueue;
use rtrb::chunks::{ReadChunk, WriteChunkUninit};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, Scope};
use std::time::{Duration, Instant};

/// Payload room of every contestant: the coresident data area, rtrb's capacity in
/// bytes, crossbeam's slots times the message size.
const DATA: u32 = 1 << 20;
const SIZES: [usize; 7] = [8, 64, 256, 1024, 4096, 16384, 65536];
const BATCH: usize = 32;
/// The message kind used throughout (any but the reserved padding kind).
const KIND: u8 = 1;

/// Messages per batch: 32, or as many as fit in a quarter of the ring.
fn batch_len(len: usize) -> usize {
    (DATA as usize / 4 / (len + 8)).clamp(1, BATCH)
}

// ---------------------------------------------------------------- placement, waiting

/// How a benchmark's two threads are placed.
struct Place {
    name: &'static str,
    cores: [Option<CoreId>; 2],
    spin: Spin,
}

fn placements() -> Vec<Place> {
    let ids = core_affinity::get_core_ids().unwrap_or_default();
    let mut v = Vec::new();
    if ids.len() >= 2 {
        v.push(Place {
            name: "cross-core",
            cores: [Some(ids[0]), Some(ids[1])],
            spin: Spin { yield_: false },
        });
    }
    v.push(Place {
        name: "one-core",
        cores: [ids.first().copied(), ids.first().copied()],
        spin: Spin { yield_: true },
    });
    v
}

/// One step of a wait loop: a spin hint across cores, `yield_now` on one core.
#[derive(Clone, Copy)]
struct Spin {
    yield_: bool,
}

impl Spin {
    #[inline(always)]
    fn wait(self) {
        if self.yield_ {
            thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
}

// ------------------------------------------------------------------------ messages

/// Stamps message `seq` into `msg` (first 8 bytes, last byte) and returns its checksum.
#[inline(always)]
fn stamp(msg: &mut [u8], seq: u64) -> u64 {
    let last = msg.len() - 1;
    msg[last] = (seq as u8).wrapping_mul(31);
    msg[..8].copy_from_slice(&seq.to_le_bytes());
    check(msg)
}

/// The checksum of a received message: its first 8 bytes plus its last byte.
#[inline(always)]
fn check(msg: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&msg[..8]);
    u64::from_le_bytes(w).wrapping_add(u64::from(msg[msg.len() - 1]))
}

/// 128-byte aligned heap memory for one ring, reached only through raw pointers while
/// the halves live (as in `ring/tests/common`).
struct Region {
    ptr: *mut Line,
    lines: usize,
}

#[repr(C, align(128))]
#[derive(Clone, Copy)]
struct Line([u8; 128]);

impl Region {
    fn new() -> Self {
        let lines = region_size(DATA).div_ceil(128);
        let b: Box<[Line]> = vec![Line([0; 128]); lines].into_boxed_slice();
        Self {
            ptr: Box::into_raw(b).cast::<Line>(),
            lines,
        }
    }

    fn memory(&self) -> RingMemory {
        // SAFETY:
        // - `ptr..ptr + lines * 128` is one live allocation, valid for reads and writes
        //   until `self` drops, which each benchmark does after its threads are joined;
        // - nothing references those bytes: the ring reaches them through raw pointers.
        unsafe { RingMemory::new(self.ptr.cast::<u8>(), self.lines * 128) }.unwrap()
    }

    fn ring(&self) -> (Producer, Consumer) {
        let tx = Producer::init(self.memory(), DATA).unwrap();
        (tx, Consumer::attach(self.memory()).unwrap())
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        let raw = std::ptr::slice_from_raw_parts_mut(self.ptr, self.lines);
        // SAFETY: `ptr` and `lines` came from `Box::into_raw` of a `Box<[Line]>` of that
        // length, and the halves built on it are gone.
        drop(unsafe { Box::from_raw(raw) });
    }
}

// ------------------------------------------------------------ a persistent thread pair

/// The work of one thread for one sample: handle `n` messages, return a checksum.
type Work<'s> = Box<dyn FnMut(u64) -> u64 + Send + 's>;

/// Two pinned threads that run their `Work` for each sample, started together.
struct Pair {
    cmds: [mpsc::Sender<u64>; 2],
    done: mpsc::Receiver<(Instant, Instant, u64, usize)>,
}

impl Pair {
    fn spawn<'s>(s: &'s Scope<'s, '_>, place: &Place, work: [Work<'s>; 2]) -> Self {
        let gate = Arc::new(AtomicU64::new(0));
        let (done_tx, done) = mpsc::channel();
        let cmds = work.into_iter().enumerate().map(|(i, mut f)| {
            let (tx, rx) = mpsc::channel::<u64>();
            let (gate, done_tx, core, spin) =
                (gate.clone(), done_tx.clone(), place.cores[i], place.spin);
            thread::Builder::new()
                .stack_size(16 << 20) // crossbeam's 64 KiB arrays travel by value
                .spawn_scoped(s, move || {
                    if let Some(c) = core {
                        core_affinity::set_for_current(c);
                    }
                    let mut runs = 0;
                    while let Ok(n) = rx.recv() {
                        runs += 1;
                        gate.fetch_add(1, Ordering::AcqRel);
                        while gate.load(Ordering::Acquire) < 2 * runs {
                            spin.wait();
                        }
                        let t0 = Instant::now();
                        let sum = f(n);
                        if done_tx.send((t0, Instant::now(), sum, i)).is_err() {
                            break;
                        }
                    }
                })
                .unwrap();
            tx
        });
        let cmds: Vec<_> = cmds.collect();
        Self {
            cmds: cmds.try_into().unwrap(),
            done,
        }
    }

    /// Runs one sample of `n`; both threads' checksums must agree.
    fn run(&self, n: u64) -> Duration {
        for c in &self.cmds {
            c.send(n).unwrap();
        }
        let (a, b) = (self.done.recv().unwrap(), self.done.recv().unwrap());
        assert_eq!(a.2, b.2, "checksums of sent and received messages differ");
        a.1.max(b.1) - a.0.min(b.0)
    }
}

/// Benchmarks `work` under `id` in `g`, on a thread pair placed by `place`.
fn bench(g: &mut BenchmarkGroup<'_, WallTime>, id: &str, place: &Place, work: [Work<'_>; 2]) {
    thread::scope(|s| {
        let pair = Pair::spawn(s, place, work);
        g.bench_function(id, |b| b.iter_custom(|n| pair.run(n)));
    });
}

// ------------------------------------------------------------------------ coresident

fn coresident_send<'s>(rg: &Region, len: usize, spin: Spin) -> [Work<'s>; 2] {
    let (mut tx, mut rx) = rg.ring();
    rx.set_lazy_release(true);
    let (mut msg, mut buf, mut seq) = (vec![0xA5; len], vec![0; len], 0);
    let producer = move |n| {
        let mut sum = 0u64;
        for _ in 0..n {
            seq += 1;
            sum = sum.wrapping_add(stamp(&mut msg, seq));
            send(&mut tx, &msg, spin);
        }
        sum
    };
    let consumer = move |n| {
        let mut sum = 0u64;
        for _ in 0..n {
            let len = recv(&mut rx, &mut buf, spin);
            sum = sum.wrapping_add(check(&buf[..len]));
        }
        sum
    };
    [Box::new(producer), Box::new(consumer)]
}

#[inline(always)]
fn send(tx: &mut Producer, msg: &[u8], spin: Spin) {
    loop {
        match tx.send(KIND, msg) {
            Ok(_) => return,
            Err(SendError::Full) => spin.wait(),
            Err(e) => panic!("send: {e}"),
        }
    }
}

#[inline(always)]
fn recv(rx: &mut Consumer, buf: &mut [u8], spin: Spin) -> usize {
    loop {
        match rx.recv(buf) {
            Ok(r) => return r.len,
            Err(RecvError::Empty) => {
                // Lazy release: settle on the empty poll (nobody sleeps here).
                let _ = rx.release();
                spin.wait();
            }
            Err(e) => panic!("recv: {e}"),
        }
    }
}

fn coresident_batch<'s>(rg: &Region, len: usize, spin: Spin) -> [Work<'s>; 2] {
    let (mut tx, mut rx) = rg.ring();
    rx.set_lazy_release(true);
    let k = batch_len(len);
    let (mut msg, mut buf, mut seq) = (vec![0xA5; len], vec![0; len], 0);
    let producer = move |n| {
        let mut sum = 0u64;
        for i in 1..=n {
            seq += 1;
            sum = sum.wrapping_add(stamp(&mut msg, seq));
            loop {
                match tx.write(KIND, &msg) {
                    Ok(()) => break,
                    Err(SendError::Full) => {
                        let _ = tx.publish().unwrap();
                        spin.wait();
                    }
                    Err(e) => panic!("write: {e}"),
                }
            }
            if i % k as u64 == 0 {
                let _ = tx.publish().unwrap();
            }
        }
        let _ = tx.publish().unwrap();
        sum
    };
    let consumer = move |n| {
        let (mut sum, mut got) = (0u64, 0);
        while got < n {
            let r = rx.recv_batch(k, |v| {
                let l = v.copy_to(&mut buf).unwrap();
                sum = sum.wrapping_add(check(&buf[..l]));
            });
            match r {
                Ok((m, _)) => got += m as u64,
                Err(RecvError::Empty) => {
                    let _ = rx.release();
                    spin.wait();
                }
                Err(e) => panic!("recv_batch: {e}"),
            }
        }
        sum
    };
    [Box::new(producer), Box::new(consumer)]
}

// ------------------------------------------------------------------------------ rtrb

/// Copies `src` into the chunk at byte `at`, across its wrap.
#[inline(always)]
fn put(ch: &mut WriteChunkUninit<'_, u8>, at: usize, src: &[u8]) {
    let (a, b) = ch.as_mut_slices();
    let (dst1, dst2) = if at >= a.len() {
        (&mut b[at - a.len()..][..src.len()], &mut [][..])
    } else {
        let n = (a.len() - at).min(src.len());
        (&mut a[at..at + n], &mut b[..src.len() - n])
    };
    let (s1, s2) = src.split_at(dst1.len());
    for (d, s) in [(dst1, s1), (dst2, s2)] {
        assert_eq!(d.len(), s.len());
        // SAFETY:
        // - `s` is valid for reads and `d` for writes of `s.len()` bytes (equal lengths,
        //   asserted); `MaybeUninit<u8>` has the layout of `u8`;
        // - `d` is in the ring and `s` in our buffer: they do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(s.as_ptr(), d.as_mut_ptr().cast(), s.len()) };
    }
}

/// Copies bytes of the chunk from `at` into `dst`, across its wrap.
#[inline(always)]
fn get(ch: &ReadChunk<'_, u8>, at: usize, dst: &mut [u8]) {
    let (a, b) = ch.as_slices();
    if at >= a.len() {
        dst.copy_from_slice(&b[at - a.len()..][..dst.len()]);
    } else {
        let n = (a.len() - at).min(dst.len());
        dst[..n].copy_from_slice(&a[at..at + n]);
        let rest = dst.len() - n;
        dst[n..].copy_from_slice(&b[..rest]);
    }
}

#[inline(always)]
fn rtrb_send(p: &mut rtrb::Producer<u8>, msg: &[u8], spin: Spin) {
    let mut ch = loop {
        match p.write_chunk_uninit(4 + msg.len()) {
            Ok(ch) => break ch,
            Err(_) => spin.wait(),
        }
    };
    put(&mut ch, 0, &(msg.len() as u32).to_le_bytes());
    put(&mut ch, 4, msg);
    // SAFETY: `put` initialised all `4 + msg.len()` bytes of the chunk.
    unsafe { ch.commit_all() };
}

#[inline(always)]
fn rtrb_recv(c: &mut rtrb::Consumer<u8>, buf: &mut [u8], spin: Spin) -> usize {
    let len = loop {
        match c.read_chunk(4) {
            Ok(ch) => {
                let mut h = [0; 4];
                get(&ch, 0, &mut h);
                break u32::from_le_bytes(h) as usize;
            }
            Err(_) => spin.wait(),
        }
    };
    // The producer commits a length with its payload.
    let ch = c.read_chunk(4 + len).unwrap();
    get(&ch, 4, &mut buf[..len]);
    ch.commit_all();
    len
}

fn rtrb_chunk<'s>(len: usize, spin: Spin) -> [Work<'s>; 2] {
    let (mut p, mut c) = rtrb::RingBuffer::<u8>::new(DATA as usize);
    let (mut msg, mut buf, mut seq) = (vec![0xA5; len], vec![0; len], 0);
    let producer = move |n| {
        let mut sum = 0u64;
        for _ in 0..n {
            seq += 1;
            sum = sum.wrapping_add(stamp(&mut msg, seq));
            rtrb_send(&mut p, &msg, spin);
        }
        sum
    };
    let consumer = move |n| {
        let mut sum = 0u64;
        for _ in 0..n {
            let l = rtrb_recv(&mut c, &mut buf, spin);
            sum = sum.wrapping_add(check(&buf[..l]));
        }
        sum
    };
    [Box::new(producer), Box::new(consumer)]
}

fn rtrb_batch<'s>(len: usize, spin: Spin) -> [Work<'s>; 2] {
    let (mut p, mut c) = rtrb::RingBuffer::<u8>::new(DATA as usize);
    let k = batch_len(len);
    let (mut msg, mut buf, mut seq) = (vec![0xA5; len], vec![0; len], 0);
    let producer = move |n: u64| {
        let (mut sum, mut left) = (0u64, n);
        while left > 0 {
            let m = left.min(k as u64) as usize;
            let mut ch = loop {
                match p.write_chunk_uninit(m * (4 + len)) {
                    Ok(ch) => break ch,
                    Err(_) => spin.wait(),
                }
            };
            for j in 0..m {
                seq += 1;
                sum = sum.wrapping_add(stamp(&mut msg, seq));
                put(&mut ch, j * (4 + len), &(len as u32).to_le_bytes());
                put(&mut ch, j * (4 + len) + 4, &msg);
            }
            // SAFETY: the loop initialised all `m * (4 + len)` bytes of the chunk.
            unsafe { ch.commit_all() };
            left -= m as u64;
        }
        sum
    };
    let consumer = move |n| {
        let (mut sum, mut got) = (0u64, 0);
        while got < n {
            let avail = c.slots();
            if avail < 4 {
                spin.wait();
                continue;
            }
            // Chunks hold whole messages: every length seen has its payload.
            let ch = c.read_chunk(avail).unwrap();
            let (mut at, mut m) = (0, 0);
            while m < k && at + 4 <= avail {
                let mut h = [0; 4];
                get(&ch, at, &mut h);
                let l = u32::from_le_bytes(h) as usize;
                get(&ch, at + 4, &mut buf[..l]);
                sum = sum.wrapping_add(check(&buf[..l]));
                at += 4 + l;
                m += 1;
            }
            ch.commit(at);
            got += m as u64;
        }
        sum
    };
    [Box::new(producer), Box::new(consumer)]
}

// ------------------------------------------------------------------- crossbeam-queue

fn crossbeam<'s, const N: usize>(spin: Spin) -> [Work<'s>; 2] {
    let q = Arc::new(ArrayQueue::<[u8; N]>::new(DATA as usize / N));
    let q2 = q.clone();
    let (mut msg, mut seq) = ([0xA5; N], 0);
    let producer = move |n| {
        let mut sum = 0u64;
        for _ in 0..n {
            seq += 1;
            sum = sum.wrapping_add(stamp(&mut msg, seq));
            while q.push(msg).is_err() {
                spin.wait();
            }
        }
        sum
    };
    let consumer = move |n| {
        let mut sum = 0u64;
        for _ in 0..n {
            let m = loop {
                match q2.pop() {
                    Some(m) => break m,
                    None => spin.wait(),
                }
            };
            sum = sum.wrapping_add(check(&m));
        }
        sum
    };
    [Box::new(producer), Box::new(consumer)]
}

fn crossbeam_dyn<'s>(len: usize, spin: Spin) -> [Work<'s>; 2] {
    match len {
        8 => crossbeam::<8>(spin),
        64 => crossbeam::<64>(spin),
        256 => crossbeam::<256>(spin),
        1024 => crossbeam::<1024>(spin),
        4096 => crossbeam::<4096>(spin),
        16384 => crossbeam::<16384>(spin),
        65536 => crossbeam::<65536>(spin),
        _ => unreachable!("no array type for {len} bytes"),
    }
}

// ------------------------------------------------------------------------ the groups

fn throughput(c: &mut Criterion) {
    for place in placements() {
        for len in SIZES {
            let mut g = c.benchmark_group(format!("throughput-{}-{len}B", place.name));
            g.throughput(Throughput::Bytes(len as u64))
                .sample_size(10)
                .warm_up_time(Duration::from_millis(300))
                .measurement_time(Duration::from_millis(1000));
            let spin = place.spin;
            let rg = Region::new();
            bench(
                &mut g,
                "coresident-send",
                &place,
                coresident_send(&rg, len, spin),
            );
            let rg = Region::new();
            bench(
                &mut g,
                "coresident-batch",
                &place,
                coresident_batch(&rg, len, spin),
            );
            bench(&mut g, "rtrb-chunk", &place, rtrb_chunk(len, spin));
            bench(&mut g, "rtrb-batch", &place, rtrb_batch(len, spin));
            bench(
                &mut g,
                "crossbeam-arrayqueue",
                &place,
                crossbeam_dyn(len, spin),
            );
            g.finish();
        }
    }
}

fn round_trip(c: &mut Criterion) {
    let Some(place) = placements().into_iter().find(|p| p.name == "cross-core") else {
        return; // one core: a round trip would time the scheduler
    };
    let mut g = c.benchmark_group("round-trip-cross-core");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1500));
    let spin = place.spin;

    #[repr(align(128))]
    struct Flag(AtomicU64);
    let (ping, pong) = (Flag(AtomicU64::new(0)), Flag(AtomicU64::new(0)));
    let (mut seq_a, mut seq_b) = (0u64, 0u64);
    let (ping, pong) = (&ping, &pong);
    let a = move |n| {
        for _ in 0..n {
            seq_a += 1;
            ping.0.store(seq_a, Ordering::Release);
            while pong.0.load(Ordering::Acquire) != seq_a {
                spin.wait();
            }
        }
        seq_a
    };
    let b = move |n| {
        for _ in 0..n {
            seq_b += 1;
            while ping.0.load(Ordering::Acquire) != seq_b {
                spin.wait();
            }
            pong.0.store(seq_b, Ordering::Release);
        }
        seq_b
    };
    bench(&mut g, "bare-pingpong", &place, [Box::new(a), Box::new(b)]);

    for (len, lazy) in [(8, true), (64, true), (8, false)] {
        let (there, back) = (Region::new(), Region::new());
        let ((mut tx_a, mut rx_a), (mut tx_b, mut rx_b)) = (there.ring(), back.ring());
        rx_a.set_lazy_release(lazy);
        rx_b.set_lazy_release(lazy);
        let (mut msg, mut buf_a, mut buf_b, mut seq) =
            (vec![0; len], vec![0; len], vec![0; len], 0);
        let a = move |n| {
            let mut sum = 0u64;
            for _ in 0..n {
                seq += 1;
                stamp(&mut msg, seq);
                send(&mut tx_a, &msg, spin);
                let l = recv(&mut rx_b, &mut buf_a, spin);
                sum = sum.wrapping_add(check(&buf_a[..l]));
            }
            sum
        };
        let b = move |n| {
            let mut sum = 0u64;
            for _ in 0..n {
                let l = recv(&mut rx_a, &mut buf_b, spin);
                sum = sum.wrapping_add(check(&buf_b[..l]));
                send(&mut tx_b, &buf_b[..l], spin);
            }
            sum
        };
        let id = if lazy {
            format!("coresident-{len}B")
        } else {
            format!("coresident-{len}B-exact")
        };
        bench(&mut g, &id, &place, [Box::new(a), Box::new(b)]);
    }

    {
        let (mut tx_a, mut rx_a) = rtrb::RingBuffer::<u64>::new(1024);
        let (mut tx_b, mut rx_b) = rtrb::RingBuffer::<u64>::new(1024);
        let mut seq = 0u64;
        let a = move |n| {
            for _ in 0..n {
                seq += 1;
                while tx_a.push(seq).is_err() {
                    spin.wait();
                }
                let v = loop {
                    match rx_b.pop() {
                        Ok(v) => break v,
                        Err(_) => spin.wait(),
                    }
                };
                assert_eq!(v, seq);
            }
            seq
        };
        let mut seen = 0u64;
        let b = move |n| {
            for _ in 0..n {
                let v = loop {
                    match rx_a.pop() {
                        Ok(v) => break v,
                        Err(_) => spin.wait(),
                    }
                };
                seen = v;
                while tx_b.push(v).is_err() {
                    spin.wait();
                }
            }
            seen
        };
        bench(&mut g, "rtrb-u64", &place, [Box::new(a), Box::new(b)]);
    }

    for len in [8, 64] {
        let (mut tx_a, mut rx_a) = rtrb::RingBuffer::<u8>::new(DATA as usize);
        let (mut tx_b, mut rx_b) = rtrb::RingBuffer::<u8>::new(DATA as usize);
        let (mut msg, mut buf_a, mut buf_b, mut seq) =
            (vec![0; len], vec![0; len], vec![0; len], 0);
        let a = move |n| {
            let mut sum = 0u64;
            for _ in 0..n {
                seq += 1;
                stamp(&mut msg, seq);
                rtrb_send(&mut tx_a, &msg, spin);
                let l = rtrb_recv(&mut rx_b, &mut buf_a, spin);
                sum = sum.wrapping_add(check(&buf_a[..l]));
            }
            sum
        };
        let b = move |n| {
            let mut sum = 0u64;
            for _ in 0..n {
                let l = rtrb_recv(&mut rx_a, &mut buf_b, spin);
                sum = sum.wrapping_add(check(&buf_b[..l]));
                rtrb_send(&mut tx_b, &buf_b[..l], spin);
            }
            sum
        };
        bench(
            &mut g,
            &format!("rtrb-{len}B"),
            &place,
            [Box::new(a), Box::new(b)],
        );
    }
    g.finish();
}

/// One thread: a message into the ring and straight out again, beside `memcpy` and
/// rtrb moving the same bytes twice.
fn copy(c: &mut Criterion) {
    for len in [64usize, 1024, 65536] {
        let mut g = c.benchmark_group(format!("copy-{len}B"));
        g.throughput(Throughput::Bytes(len as u64))
            .sample_size(20)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(1));
        let msg = vec![0xA5u8; len];
        let mut buf = vec![0u8; len];
        let rg = Region::new();
        let (mut tx, mut rx) = rg.ring();
        rx.set_lazy_release(true);
        g.bench_function("coresident-send-recv", |b| {
            b.iter(|| {
                let _ = tx.send(KIND, std::hint::black_box(&msg)).unwrap();
                rx.recv(&mut buf).unwrap().len
            })
        });
        let mut mid = vec![0u8; len];
        g.bench_function("memcpy-twice", |b| {
            b.iter(|| {
                mid.copy_from_slice(std::hint::black_box(&msg));
                std::hint::black_box(&mut mid);
                buf.copy_from_slice(&mid);
                buf.len()
            })
        });
        let (mut p, mut cns) = rtrb::RingBuffer::<u8>::new(DATA as usize);
        let spin = Spin { yield_: false };
        g.bench_function("rtrb-chunk", |b| {
            b.iter(|| {
                rtrb_send(&mut p, std::hint::black_box(&msg), spin);
                rtrb_recv(&mut cns, &mut buf, spin)
            })
        });
        g.finish();
    }
}

/// `criterion_group!` makes a `pub fn`; inside a private module it needs no docs.
mod harness {
    use super::{copy, round_trip, throughput, Criterion};
    criterion::criterion_group! {
        name = ring;
        config = Criterion::default().nresamples(20_000).without_plots();
        targets = copy, throughput, round_trip
    }
}
criterion_main!(harness::ring);
