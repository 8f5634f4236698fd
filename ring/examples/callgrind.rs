//! Instruction counts of the ring's hot paths, for callgrind (deterministic whatever
//! the load on the machine; the figures in the commit messages come from this).
//!
//! ```text
//! cargo build --release -p coresident-ring --example callgrind
//! B=target/release/examples/callgrind
//! for n in 2000 4000; do
//!   valgrind --tool=callgrind --callgrind-out-file=/dev/null $B one $n 64 2>&1 | grep Collected
//! done   # (second - first) / 2000 = instructions per send+recv pair of 64 B
//! ```
//!
//! Modes: `one N LEN` (N times: `send` one message, `recv` it), `batch N LEN` (N
//! times: `send_batch` of 32 messages, `recv_batch` them all: divide by 32 more).
//! `LAZY=1` turns lazy release on. Valgrind counts `rep movsb` one instruction per
//! byte, so copies of 512 bytes and more (AVX2 absent) need criterion instead.

use coresident_ring::{region_size, Consumer, Producer, RingMemory};
use std::hint::black_box;

#[repr(C, align(128))]
#[derive(Clone, Copy)]
struct Line([u8; 128]);

#[inline(never)]
fn one(tx: &mut Producer, rx: &mut Consumer, msg: &[u8], buf: &mut [u8]) {
    let _ = tx.send(1, black_box(msg)).unwrap();
    black_box(rx.recv(buf).unwrap());
}

#[inline(never)]
fn batch(tx: &mut Producer, rx: &mut Consumer, msgs: &[&[u8]], buf: &mut [u8]) {
    let (n, _) = tx.send_batch(1, black_box(msgs)).unwrap();
    assert_eq!(n, msgs.len());
    let (m, _) = rx
        .recv_batch(usize::MAX, |v| {
            black_box(v.copy_to(buf).unwrap());
        })
        .unwrap();
    assert_eq!(m, n);
}

fn main() {
    let mut args = std::env::args().skip(1);
    let usage = "usage: callgrind one|batch N LEN";
    let mode = args.next().expect(usage);
    let n: usize = args.next().expect(usage).parse().expect(usage);
    let len: usize = args.next().expect(usage).parse().expect(usage);
    let data = 1u32 << 20;
    let lines = region_size(data).div_ceil(128);
    let mem: &mut [Line] = Box::leak(vec![Line([0; 128]); lines].into_boxed_slice());
    // SAFETY: a leaked allocation (valid for the whole run), reached only by the ring.
    let rm = unsafe { RingMemory::new(mem.as_mut_ptr().cast(), lines * 128) }.unwrap();
    let mut tx = Producer::init(rm, data).unwrap();
    let mut rx = Consumer::attach(rm).unwrap();
    rx.set_lazy_release(std::env::var_os("LAZY").is_some());
    let msg = vec![7u8; len];
    let mut buf = vec![0u8; 1 << 20];
    match mode.as_str() {
        "one" => (0..n).for_each(|_| one(&mut tx, &mut rx, &msg, &mut buf)),
        "batch" => {
            let msgs: Vec<&[u8]> = (0..32).map(|_| &msg[..]).collect();
            (0..n).for_each(|_| batch(&mut tx, &mut rx, &msgs, &mut buf));
        }
        _ => panic!("{usage}"),
    }
}
