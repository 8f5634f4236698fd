//! The ring work of the `coresident_ring_test` Linux kernel module, as a small C ABI.
//!
//! The C glue (`../coresident_ring_test.c`) provides memory, two kernel threads, waits,
//! wake-ups and `printk`; everything that touches the ring is here and in
//! `coresident-ring`:
//!
//! - [`cr_region_size`] and [`cr_init`]: size and lay out the ring in the C's memory;
//! - [`cr_producer_run`]: sends `count` messages of random sizes (a PRNG both sides
//!   share), each filled in place through a [`Reservation`] with bytes from a
//!   per-message PRNG and a checksum in its first 4 bytes; arms and sleeps when the
//!   ring is full, rings the consumer's doorbell when `publish` says `Required`;
//! - [`cr_consumer_run`]: receives them in place, checks length, kind, checksum and
//!   every byte, sleeps when the ring is empty, rings the producer's doorbell when
//!   `consume` says `Required`.
//!
//! The C side defines `cr_wait`, `cr_wake` and `cr_panic`. No allocation, no `fmt`,
//! no panic on any path the test takes: the panic handler is there for the compiler,
//! which keeps one unreachable call into `core::panicking` (an impossible atomic
//! ordering; see `docs/kernel.md`); `ci/linux-module/build.sh` reports how many.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

use core::ffi::{c_char, c_int, c_void};
use coresident_ring::{
    region_size, Consumer, Notify, Producer, Readiness, RecvError, Reservation, RingMemory,
    SendError, MAX_DATA_SIZE, MIN_DATA_SIZE,
};

/// The consumer's doorbell: "data was published".
const SIDE_CONSUMER: u32 = 0;
/// The producer's doorbell: "space was released".
const SIDE_PRODUCER: u32 = 1;
/// Waits (of the C side's timeout each) a side sits through without any progress of
/// its peer before it gives up: the test never hangs, whatever goes wrong.
const MAX_IDLE_WAITS: u32 = 15;

extern "C" {
    /// Sleeps until the doorbell of `side` rings (returns 1), the C side's timeout
    /// passes (0) or a signal arrives (negative). Doorbells are hints.
    fn cr_wait(ctx: *mut c_void, side: u32) -> c_int;
    /// Rings the doorbell of `side`.
    fn cr_wake(ctx: *mut c_void, side: u32);
    /// Logs `msg` and BUG()s. Declared returning: objtool does not know it does not
    /// (it is not on objtool's list of noreturn functions), so the handler loops after it.
    fn cr_panic(msg: *const c_char);
}

/// What one side did, filled by [`cr_producer_run`] or [`cr_consumer_run`].
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct CrStats {
    /// Messages sent or received and verified.
    pub messages: u64,
    /// Payload bytes sent or received.
    pub bytes: u64,
    /// Doorbells this side rang at its peer (`Required` answers).
    pub doorbells: u64,
    /// Times this side armed its request and slept.
    pub sleeps: u64,
    /// Sleeps that ended by the C side's timeout rather than a doorbell.
    pub timeouts: u64,
    /// Timeouts after which the ring was ready: a lost wake-up.
    pub stalls: u64,
    /// 0, or one of the `CR_E_*` codes ([`cr_strerror`] names it).
    pub error: c_int,
    /// The message sequence number at which `error` happened.
    pub error_seq: u32,
}

/// Error codes of [`CrStats::error`] and of [`cr_init`]'s negative answers.
#[derive(Clone, Copy, Debug)]
#[repr(i32)]
enum Fail {
    BadRegion = 1,
    Attach = 2,
    SendCorrupted = 3,
    RecvCorrupted = 4,
    Length = 5,
    Kind = 6,
    Checksum = 7,
    Content = 8,
    PeerClosed = 9,
    Extra = 10,
    Interrupted = 11,
    Stalled = 12,
    PeerStuck = 13,
}

/// A static, NUL-terminated description of an error code.
#[no_mangle]
pub extern "C" fn cr_strerror(code: c_int) -> *const c_char {
    let s: &'static core::ffi::CStr = match code {
        0 => c"ok",
        1 => c"bad region (size, alignment or data size)",
        2 => c"attach failed",
        3 => c"producer: ring corrupted or send error",
        4 => c"consumer: ring corrupted",
        5 => c"consumer: wrong message length",
        6 => c"consumer: wrong message kind (lost, duplicated or reordered message)",
        7 => c"consumer: checksum mismatch",
        8 => c"consumer: payload differs from what was sent",
        9 => c"the peer closed early",
        10 => c"consumer: more messages than sent",
        11 => c"interrupted by a signal",
        12 => c"lost wake-up: a wait timed out while the ring was ready",
        13 => c"the peer made no progress",
        _ => c"unknown error",
    };
    s.as_ptr()
}

/// The region size (bytes, a multiple of 128) for a ring with a `data_size`-byte data
/// area, or 0 if `data_size` is not a valid data size.
#[no_mangle]
pub extern "C" fn cr_region_size(data_size: u32) -> usize {
    if data_size.is_power_of_two() && (MIN_DATA_SIZE..=MAX_DATA_SIZE).contains(&data_size) {
        region_size(data_size)
    } else {
        0
    }
}

/// Wraps the C side's memory.
///
/// # Safety
///
/// `mem` is valid for reads and writes of `len` bytes, for as long as the ring is
/// used, and nothing but the ring's code touches those bytes meanwhile.
unsafe fn region(mem: *mut u8, len: usize) -> Result<RingMemory, Fail> {
    // SAFETY:
    // - validity for `len` bytes and exclusive use by the ring are this function's
    //   contract, passed on from the C ABI's;
    // - `RingMemory::new` checks null and alignment itself.
    unsafe { RingMemory::new(mem, len) }.map_err(|_| Fail::BadRegion)
}

/// Lays a fresh ring with a `data_size`-byte data area out in `mem`. Returns 0, or a
/// negative error code.
///
/// # Safety
///
/// `mem` is valid for reads and writes of `len` bytes until both run functions have
/// returned, aligned to 128, and only this library touches it meanwhile.
#[no_mangle]
pub unsafe extern "C" fn cr_init(mem: *mut u8, len: usize, data_size: u32) -> c_int {
    // SAFETY:
    // - `cr_init`'s contract is `region`'s.
    let mem = match unsafe { region(mem, len) } {
        Ok(m) => m,
        Err(e) => return -(e as c_int),
    };
    match coresident_ring::init(&mem, data_size) {
        Ok(()) => 0,
        Err(_) => -(Fail::BadRegion as c_int),
    }
}

/// splitmix64: small, fast, good enough to pick sizes and fill payloads.
#[derive(Clone, Copy)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// The length of the next message: mostly small (0..=256 bytes), one in 16 up to
    /// `max`, so that frames of every size wrap the data area and fill it.
    fn len(&mut self, max: u32) -> usize {
        let r = self.next();
        let top = if r & 15 == 0 { max } else { max.min(256) };
        ((r >> 8) % (u64::from(top) + 1)) as usize
    }

    /// The payload generator of message `seq`.
    fn payload(seed: u64, seq: u32) -> Self {
        let mut r = Rng(seed ^ u64::from(seq).wrapping_mul(0xD6E8_FEB8_6659_FD93));
        r.next();
        r
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let w = self.next().to_le_bytes();
            // zip, not `copy_from_slice(&w[..chunk.len()])`: no length check that
            // the compiler cannot see through, so no panic path in the module.
            for (d, s) in chunk.iter_mut().zip(w) {
                *d = s;
            }
        }
    }
}

/// The message kind of message `seq`: tells a lost, doubled or reordered message.
fn kind(seq: u32) -> u8 {
    (seq % 251) as u8 // never `KIND_PAD` (0xFF)
}

/// FNV-1a, continued from `h`.
fn fnv1a(mut h: u32, bytes: &[u8]) -> u32 {
    for &b in bytes {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    h
}
const FNV_INIT: u32 = 0x811C_9DC5;
/// Bytes at the front of a payload that hold the checksum of the rest.
const SUM: usize = 4;
/// Payload bytes handled per step (a small stack buffer: kernel stacks are 16 KiB).
const CHUNK: usize = 64;

/// A side's view of the C side's waits and wake-ups.
struct Bell {
    ctx: *mut c_void,
}

impl Bell {
    fn ring(&self, side: u32, st: &mut CrStats) {
        st.doorbells += 1;
        // SAFETY:
        // - `ctx` is the pointer the C side passed to the run function, which the C
        //   side keeps valid until both run functions have returned;
        // - `cr_wake` only sets a flag and wakes a wait queue.
        unsafe { cr_wake(self.ctx, side) }
    }

    /// Sleeps on `side`'s doorbell; `Ok(true)` when it rang, `Ok(false)` on timeout.
    fn sleep(&self, side: u32, st: &mut CrStats) -> Result<bool, Fail> {
        st.sleeps += 1;
        // SAFETY:
        // - `ctx` as in `ring`;
        // - `cr_wait` sleeps in the calling kernel thread, which may sleep here (no
        //   lock is held: the ring has none).
        let r = unsafe { cr_wait(self.ctx, side) };
        if r < 0 {
            return Err(Fail::Interrupted);
        }
        if r == 0 {
            st.timeouts += 1;
        }
        Ok(r > 0)
    }

    fn notify(&self, n: Notify, side: u32, st: &mut CrStats) {
        if n.is_required() {
            self.ring(side, st);
        }
    }
}

/// Writes message `seq` (`len` bytes) into the reservation: random bytes after the
/// checksum slot, then the checksum.
fn fill(r: &mut Reservation<'_>, seed: u64, seq: u32, len: usize) -> Result<(), SendError> {
    let mut g = Rng::payload(seed, seq);
    let mut buf = [0u8; CHUNK];
    if len < SUM {
        let b = buf.get_mut(..len).unwrap_or_default();
        g.fill(b);
        return r.write_at(0, b);
    }
    let mut sum = FNV_INIT;
    let mut off = SUM;
    while off < len {
        let n = (len - off).min(CHUNK);
        let b = buf.get_mut(..n).unwrap_or_default();
        g.fill(b);
        sum = fnv1a(sum, b);
        r.write_at(off, b)?;
        off += n;
    }
    r.write_at(0, &sum.to_le_bytes())
}

fn produce(
    bell: &Bell,
    mem: RingMemory,
    count: u32,
    seed: u64,
    st: &mut CrStats,
) -> Result<(), Fail> {
    let mut p = Producer::attach(mem).map_err(|_| Fail::Attach)?;
    let max = p.max_message();
    let mut lens = Rng(seed);
    let corrupted = |e: SendError| match e {
        SendError::Closed => Fail::PeerClosed,
        _ => Fail::SendCorrupted,
    };
    let mut seq = 0;
    let result = loop {
        if seq == count {
            break Ok(());
        }
        st.error_seq = seq;
        let len = lens.len(max);
        let mut idle = 0;
        let sent: Result<(), Fail> = loop {
            match p.reserve(len) {
                Ok(mut r) => {
                    let filled = fill(&mut r, seed, seq, len);
                    break filled
                        .and_then(|()| r.commit(kind(seq), len))
                        .map_err(corrupted);
                }
                Err(SendError::Full) => {}
                Err(e) => break Err(corrupted(e)),
            }
            match p.arm_space(len) {
                Ok(Readiness::Ready) => continue,
                Ok(Readiness::Armed) => {}
                Err(e) => break Err(corrupted(e)),
            }
            match bell.sleep(SIDE_PRODUCER, st) {
                Ok(true) => idle = 0,
                Ok(false) => {
                    // Woken by the timeout: if the space is there, its doorbell was lost.
                    if matches!(p.arm_space(len), Ok(Readiness::Ready)) {
                        st.stalls += 1;
                        break Err(Fail::Stalled);
                    }
                    idle += 1;
                    if idle >= MAX_IDLE_WAITS {
                        break Err(Fail::PeerStuck);
                    }
                }
                Err(e) => break Err(e),
            }
        };
        if let Err(e) = sent {
            break Err(e);
        }
        match p.publish() {
            Ok(n) => bell.notify(n, SIDE_CONSUMER, st),
            Err(e) => break Err(corrupted(e)),
        }
        st.messages += 1;
        st.bytes += len as u64;
        seq += 1;
    };
    // Done or failed: close, so that the consumer sees the end (or the failure) now
    // rather than after its own timeouts.
    if let Ok(n) = p.close() {
        bell.notify(n, SIDE_CONSUMER, st);
    }
    result
}

/// Checks message `seq` in place against what the producer wrote.
fn verify(frame: &coresident_ring::View<'_>, seed: u64, seq: u32, len: usize) -> Result<(), Fail> {
    if frame.len() != len {
        return Err(Fail::Length);
    }
    if frame.kind() != kind(seq) {
        return Err(Fail::Kind);
    }
    let mut g = Rng::payload(seed, seq);
    let mut got = [0u8; CHUNK];
    let mut want = [0u8; CHUNK];
    if len < SUM {
        let n = frame.read_at(0, &mut got);
        let (got, want) = (
            got.get(..n).unwrap_or_default(),
            want.get_mut(..len).unwrap_or_default(),
        );
        g.fill(want);
        return if n == len && got == &*want {
            Ok(())
        } else {
            Err(Fail::Content)
        };
    }
    let mut stored = [0u8; SUM];
    if frame.read_at(0, &mut stored) != SUM {
        return Err(Fail::Length);
    }
    let mut sum = FNV_INIT;
    let mut off = SUM;
    while off < len {
        let n = frame.read_at(off, &mut got);
        if n == 0 {
            return Err(Fail::Length);
        }
        let (got, want) = (
            got.get(..n).unwrap_or_default(),
            want.get_mut(..n).unwrap_or_default(),
        );
        sum = fnv1a(sum, got);
        g.fill(want);
        if got != &*want {
            // Every byte against the generator; the checksum is checked at the end.
            return Err(Fail::Content);
        }
        off += n;
    }
    if sum != u32::from_le_bytes(stored) {
        return Err(Fail::Checksum);
    }
    Ok(())
}

fn consume(
    bell: &Bell,
    mem: RingMemory,
    count: u32,
    seed: u64,
    st: &mut CrStats,
) -> Result<(), Fail> {
    let mut c = Consumer::attach(mem).map_err(|_| Fail::Attach)?;
    let max = c.max_message();
    let mut lens = Rng(seed);
    let mut seq: u32 = 0;
    let mut idle = 0;
    let result = loop {
        st.error_seq = seq;
        match c.peek() {
            Ok(frame) => {
                idle = 0;
                if seq == count {
                    break Err(Fail::Extra);
                }
                let len = lens.len(max);
                if let Err(e) = verify(&frame, seed, seq, len) {
                    break Err(e);
                }
                match frame.consume() {
                    Ok(n) => bell.notify(n, SIDE_PRODUCER, st),
                    Err(_) => break Err(Fail::RecvCorrupted),
                }
                st.messages += 1;
                st.bytes += len as u64;
                seq += 1;
            }
            Err(RecvError::Empty) => match c.arm_data(1) {
                Ok(Readiness::Ready) => {}
                Ok(Readiness::Armed) => match bell.sleep(SIDE_CONSUMER, st) {
                    Ok(true) => {}
                    Ok(false) => {
                        // Woken by the timeout: a frame waiting means a lost doorbell.
                        if c.peek().is_ok() {
                            st.stalls += 1;
                            break Err(Fail::Stalled);
                        }
                        idle += 1;
                        if idle >= MAX_IDLE_WAITS {
                            break Err(Fail::PeerStuck);
                        }
                    }
                    Err(e) => break Err(e),
                },
                Err(RecvError::Closed) => {}
                Err(_) => break Err(Fail::RecvCorrupted),
            },
            Err(RecvError::Closed) if seq == count => break Ok(()),
            Err(RecvError::Closed) => break Err(Fail::PeerClosed),
            Err(_) => break Err(Fail::RecvCorrupted),
        }
    };
    // Tell a producer that is still sending (after a failure here) to stop. Not
    // counted as a doorbell: it is not a ring decision, and after a PASS nobody waits.
    let _ = c.close();
    // SAFETY:
    // - as in `Bell::ring`.
    unsafe { cr_wake(bell.ctx, SIDE_PRODUCER) };
    result
}

/// Runs `f`, recording its error in `stats`; returns 0 or the error code.
///
/// # Safety
///
/// `mem`/`len` as in [`cr_init`], and `cr_init` has laid the ring out; `stats` is
/// valid for writes and not otherwise accessed until this returns.
unsafe fn run(
    ctx: *mut c_void,
    mem: *mut u8,
    len: usize,
    count: u32,
    seed: u64,
    stats: *mut CrStats,
    f: impl FnOnce(&Bell, RingMemory, u32, u64, &mut CrStats) -> Result<(), Fail>,
) -> c_int {
    // SAFETY:
    // - `stats` is valid for writes and unaliased while we run (the contract);
    // - `as_mut` returns `None` for a null pointer instead of dereferencing it.
    let Some(st) = (unsafe { stats.as_mut() }) else {
        return Fail::BadRegion as c_int;
    };
    *st = CrStats::default();
    // SAFETY:
    // - the contract of `cr_*_run` is `region`'s.
    let r = unsafe { region(mem, len) }.and_then(|m| f(&Bell { ctx }, m, count, seed, st));
    st.error = match r {
        Ok(()) => 0,
        Err(e) => e as c_int,
    };
    st.error
}

/// Sends `count` messages through the ring in `mem`; fills `stats`; returns 0 or an
/// error code ([`cr_strerror`]). `ctx` is handed back to `cr_wait`/`cr_wake`.
///
/// # Safety
///
/// `mem`/`len` as in [`cr_init`], after `cr_init` succeeded on them; one producer at a
/// time; `stats` valid for writes and untouched by C until this returns; `ctx` valid
/// for `cr_wait`/`cr_wake` until this returns.
#[no_mangle]
pub unsafe extern "C" fn cr_producer_run(
    ctx: *mut c_void,
    mem: *mut u8,
    len: usize,
    count: u32,
    seed: u64,
    stats: *mut CrStats,
) -> c_int {
    // SAFETY:
    // - this function's contract is `run`'s.
    unsafe { run(ctx, mem, len, count, seed, stats, produce) }
}

/// Receives and verifies `count` messages from the ring in `mem`; as
/// [`cr_producer_run`] otherwise.
///
/// # Safety
///
/// As [`cr_producer_run`], with one consumer at a time.
#[no_mangle]
pub unsafe extern "C" fn cr_consumer_run(
    ctx: *mut c_void,
    mem: *mut u8,
    len: usize,
    count: u32,
    seed: u64,
    stats: *mut CrStats,
) -> c_int {
    // SAFETY:
    // - this function's contract is `run`'s.
    unsafe { run(ctx, mem, len, count, seed, stats, consume) }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    // SAFETY:
    // - `cr_panic` takes a NUL-terminated string, which a C string literal is; it
    //   logs it and BUG()s.
    unsafe { cr_panic(c"coresident_ring_test: panic in the Rust library".as_ptr()) };
    loop {
        core::hint::spin_loop();
    }
}
