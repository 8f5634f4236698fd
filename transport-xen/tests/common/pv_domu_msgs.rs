//! The messages of the `pv-domu` job, `core` only: the dom0 test
//! (`tests/xen_pv_domu.rs`) and the PV kernel's domU flavour
//! (`pv-kernel`, `#[path]`-included) share this one file, so the two
//! domains cannot drift apart.
//!
//! ```text
//!  ┌──────────┬───────────────────────────────┬──────────────────┐
//!  │ seq u32  │ body: 0 .. MAX_MESSAGE-8 bytes │ fnv1a32(seq‖body)│
//!  └──────────┴───────────────────────────────┴──────────────────┘
//!   little-endian; the last message has seq = END and a body of
//!   (count u32, received hash u64, sent hash u64)
//! ```
//!
//! On each channel dom0 drives: it sends its messages and the kernel
//! answers each with one of its own. Each side sends its own stream of random sizes and bytes and checks
//! every message it receives (sequence number, checksum), folding the bytes
//! it sent and received into two FNV-1a 64 hashes. The END message carries
//! the sender's count and hashes, so each side checks that what the other
//! sent is exactly what it received, and the other way round.

/// The channel dom0 offers (the kernel maps dom0's pages).
pub const CHANNEL: &str = "pv-domu";
/// The channel the kernel offers (dom0 maps the kernel's pages).
pub const CHANNEL_BACK: &str = "pv-domu-back";
/// The largest message either side sends.
pub const MAX_MESSAGE: usize = 2048;
/// The sequence number of the closing summary.
pub const END: u32 = u32::MAX;
/// Bytes of a summary message.
pub const END_LEN: usize = 4 + 4 + 8 + 8 + 4;

/// FNV-1a, 32 bits, over `bytes` (the per-message checksum).
pub fn fnv32(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for &b in bytes {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    h
}

/// Folds `bytes` into an FNV-1a 64 running hash (start from [`HASH0`]).
pub fn fold(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The FNV-1a 64 offset basis.
pub const HASH0: u64 = 0xcbf2_9ce4_8422_2325;

/// xorshift64*: sizes and bytes.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// The next pseudo-random number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// One side's running totals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    /// Messages sent (END not counted).
    pub sent: u32,
    /// Messages received and verified (END not counted).
    pub received: u32,
    /// FNV-1a 64 over every byte sent.
    pub sent_hash: u64,
    /// FNV-1a 64 over every byte received.
    pub received_hash: u64,
}

impl Totals {
    /// Nothing yet.
    pub const fn new() -> Self {
        Self {
            sent: 0,
            received: 0,
            sent_hash: HASH0,
            received_hash: HASH0,
        }
    }
}

impl Default for Totals {
    fn default() -> Self {
        Self::new()
    }
}

/// Why a received message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bad {
    /// Shorter than 8 bytes or longer than [`MAX_MESSAGE`].
    Length(usize),
    /// Another sequence number than the next one.
    Seq {
        /// Expected.
        want: u32,
        /// Received.
        got: u32,
    },
    /// The checksum does not match.
    Checksum(u32),
    /// The peer's summary does not match what this side received or sent.
    Summary,
}

fn seal(buf: &mut [u8], len: usize) {
    let sum = fnv32(&buf[..len - 4]);
    buf[len - 4..len].copy_from_slice(&sum.to_le_bytes());
}

/// Writes message `t.sent` of random size and content into `buf` (at
/// least [`MAX_MESSAGE`] bytes); returns its length and counts it as sent.
pub fn next_message(rng: &mut Rng, t: &mut Totals, buf: &mut [u8]) -> usize {
    let len = 8 + (rng.next_u64() % (MAX_MESSAGE as u64 - 7)) as usize;
    buf[..4].copy_from_slice(&t.sent.to_le_bytes());
    let mut i = 4;
    while i < len - 4 {
        let r = rng.next_u64().to_le_bytes();
        let n = (len - 4 - i).min(8);
        buf[i..i + n].copy_from_slice(&r[..n]);
        i += n;
    }
    seal(buf, len);
    t.sent += 1;
    t.sent_hash = fold(t.sent_hash, &buf[..len]);
    len
}

/// Writes the END summary of `t` into `buf`; returns its length.
pub fn end_message(t: &Totals, buf: &mut [u8]) -> usize {
    buf[..4].copy_from_slice(&END.to_le_bytes());
    buf[4..8].copy_from_slice(&t.sent.to_le_bytes());
    buf[8..16].copy_from_slice(&t.sent_hash.to_le_bytes());
    buf[16..24].copy_from_slice(&t.received_hash.to_le_bytes());
    seal(buf, END_LEN);
    END_LEN
}

/// What a received message was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Got {
    /// The next data message, verified and counted.
    Data,
    /// The peer's END summary, and it matches this side's totals: the peer
    /// sent exactly what we received, and received exactly what we sent.
    End,
}

/// Checks a received message against the totals and counts it.
///
/// # Errors
///
/// [`Bad`] for anything but the next message or a matching END.
pub fn check(t: &mut Totals, msg: &[u8]) -> Result<Got, Bad> {
    let len = msg.len();
    if !(8..=MAX_MESSAGE).contains(&len) {
        return Err(Bad::Length(len));
    }
    let (body, sum) = msg.split_at(len - 4);
    let sum = u32::from_le_bytes([sum[0], sum[1], sum[2], sum[3]]);
    if fnv32(body) != sum {
        return Err(Bad::Checksum(sum));
    }
    let seq = u32::from_le_bytes([msg[0], msg[1], msg[2], msg[3]]);
    if seq == END && len == END_LEN {
        let word = |r: core::ops::Range<usize>| {
            let mut b = [0u8; 8];
            b[..r.len()].copy_from_slice(&msg[r]);
            u64::from_le_bytes(b)
        };
        let (count, their_sent, their_received) = (word(4..8), word(8..16), word(16..24));
        if count != u64::from(t.received)
            || their_sent != t.received_hash
            || their_received != t.sent_hash
        {
            return Err(Bad::Summary);
        }
        return Ok(Got::End);
    }
    if seq != t.received {
        return Err(Bad::Seq {
            want: t.received,
            got: seq,
        });
    }
    t.received += 1;
    t.received_hash = fold(t.received_hash, msg);
    Ok(Got::Data)
}
