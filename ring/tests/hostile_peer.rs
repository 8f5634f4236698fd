//! The peer is hostile: every shared field set to adversarial values. Each case ends in
//! a typed error (never a panic, an out-of-bounds access or a hang), and a half that saw
//! `Corrupted` refuses further use.
#![cfg(not(loom))]

mod common;

use common::*;
use coresident_ring::{
    AttachError, Consumer, Corruption, Producer, Readiness, RecvError, SendError, MAGIC, VERSION,
};

fn pair(size: u32) -> (Mem, Producer, Consumer) {
    let mem = Mem::for_ring(size);
    let p = Producer::init(mem.ring_memory(), size).unwrap();
    let c = Consumer::attach(mem.ring_memory()).unwrap();
    (mem, p, c)
}

fn tag(kind: u8, pos: u32) -> u32 {
    (kind as u32) << 24 | ((pos >> 3) & 0xFF_FFFF)
}

#[test]
fn attach_rejects_bad_headers() {
    let mem = Mem::for_ring(1024);
    let _ = Producer::init(mem.ring_memory(), 1024).unwrap();
    mem.poke(0, 0xDEAD_BEEF);
    assert_eq!(
        Consumer::attach(mem.ring_memory()).unwrap_err(),
        AttachError::BadMagic { found: 0xDEAD_BEEF }
    );
    mem.poke(0, MAGIC);
    mem.poke(4, VERSION + 1);
    assert!(matches!(
        Consumer::attach(mem.ring_memory()),
        Err(AttachError::VersionMismatch { .. })
    ));
    mem.poke(4, VERSION);
    mem.poke(8, 4096);
    assert_eq!(
        Producer::attach(mem.ring_memory()).unwrap_err(),
        AttachError::BadDataOffset { found: 4096 }
    );
    mem.poke(8, 640);
    for bad in [0, 3, 32, 1000, 1 << 31, u32::MAX] {
        mem.poke(12, bad);
        assert_eq!(
            Consumer::attach(mem.ring_memory()).unwrap_err(),
            AttachError::BadDataSize { data_size: bad }
        );
    }
    // A header claiming more data than the region has.
    mem.poke(12, 1 << 20);
    assert!(matches!(
        Consumer::attach(mem.ring_memory()),
        Err(AttachError::RegionTooSmall { .. })
    ));
    mem.poke(12, 1024);
    assert!(Consumer::attach(mem.ring_memory()).is_ok());
    // A region too small for its own header.
    assert!(matches!(
        Consumer::attach(mem.ring_memory_len(64)),
        Err(AttachError::RegionTooSmall { .. })
    ));
    assert!(matches!(
        Producer::init(mem.ring_memory_len(1000), 1024),
        Err(AttachError::RegionTooSmall { .. })
    ));
}

#[test]
fn attach_rejects_impossible_indices() {
    let mem = Mem::for_ring(1024);
    let _ = Producer::init(mem.ring_memory(), 1024).unwrap();
    mem.poke(WRITE, 3);
    assert!(matches!(
        Producer::attach(mem.ring_memory()),
        Err(AttachError::Corrupted(_))
    ));
    mem.poke(WRITE, 4096);
    assert!(matches!(
        Producer::attach(mem.ring_memory()),
        Err(AttachError::Corrupted(_))
    ));
    mem.poke(WRITE, 0);
    mem.poke(READ, 5);
    assert!(matches!(
        Consumer::attach(mem.ring_memory()),
        Err(AttachError::Corrupted(_))
    ));
}

#[test]
fn misaligned_or_null_memory_is_refused() {
    let mem = Mem::new(2048);
    // SAFETY: refused before any use; `new` only checks the pointer.
    let null = unsafe { coresident_ring::RingMemory::new(std::ptr::null_mut(), 64) };
    assert_eq!(null.unwrap_err(), AttachError::Misaligned);
    // SAFETY: as above; one byte past a 128-aligned base is misaligned.
    let odd = unsafe { coresident_ring::RingMemory::new(mem.base().wrapping_add(1), 64) };
    assert_eq!(odd.unwrap_err(), AttachError::Misaligned);
}

#[test]
fn read_index_jumping_forward_or_back_is_corruption() {
    for bad in [8u32 * 1000, u32::MAX - 7, 4, 1 << 31] {
        let (mem, mut p, _c) = pair(256);
        let _ = p.send(1, &[0; 100]).unwrap();
        mem.poke(READ, bad);
        // Fill until the producer must look at `read`.
        let err = loop {
            match p.send(1, &[0; 100]) {
                Ok(_) => continue,
                Err(e) => break e,
            }
        };
        assert!(
            matches!(err, SendError::Corrupted(Corruption::ReadIndex { .. })),
            "{bad:#x}: {err:?}"
        );
        // Poisoned, even once the field is repaired.
        mem.poke(READ, 0);
        assert_eq!(p.send(1, b"x"), Err(err));
        assert_eq!(p.publish(), Err(err));
        assert_eq!(p.consumer_position(), Err(err));
    }
}

#[test]
fn write_index_garbage_is_corruption_when_the_consumer_arms() {
    // More than a data area ahead of `read`, or behind it, or misaligned.
    for bad in [12u32, 4096, u32::MAX - 4095] {
        let (mem, _p, mut c) = pair(1024);
        mem.poke(WRITE, bad);
        assert!(
            matches!(
                c.arm_data(1),
                Err(RecvError::Corrupted(Corruption::WriteIndex { .. }))
            ),
            "{bad}"
        );
        assert!(matches!(c.recv(&mut [0; 8]), Err(RecvError::Corrupted(_))));
    }
    // Behind `read` by less than a data area is possible (write is stored after the tags
    // the consumer reads), and means "nothing more": the consumer may sleep.
    let (mem, _p, mut c) = pair(1024);
    mem.poke(WRITE, u32::MAX - 7);
    assert_eq!(c.arm_data(1), Ok(Readiness::Armed));
}

#[test]
fn forged_tags_are_corruption_not_silence() {
    // A tag that is neither a published frame's nor the "nothing yet" mark: the ring does
    // not look empty forever (the libxenvchan clamp-to-zero deadlock), it says Corrupted.
    for bad in [0x0080_0001u32, 1, 0xFFFF_FFFF, tag(1, 8), tag(1, 1 << 20)] {
        let (mem, _p, mut c) = pair(1024);
        mem.poke(DATA + 4, bad);
        assert!(
            matches!(
                c.recv(&mut [0; 8]),
                Err(RecvError::Corrupted(Corruption::Tag { .. }))
            ),
            "{bad:#x}"
        );
    }
}

#[test]
fn lengths_past_the_data_area_or_max_are_corruption() {
    for bad in [1017u32, 505, 1 << 20, u32::MAX, u32::MAX - 7] {
        let (mem, _p, mut c) = pair(1024);
        mem.poke(DATA, bad);
        mem.poke(DATA + 4, tag(1, 0));
        assert!(
            matches!(
                c.recv(&mut [0; 2048]),
                Err(RecvError::Corrupted(Corruption::Length { .. }))
            ),
            "{bad}"
        );
    }
    // Near the end of the data area: a length that fits `max` but runs past the end.
    let (mem, mut p, mut c) = pair(1024);
    for _ in 0..9 {
        let _ = p.send(1, &[0; 96]).unwrap(); // 104-byte frames: 936 bytes
        c.recv(&mut [0; 96]).unwrap();
    }
    mem.poke(DATA + 936, 100);
    mem.poke(DATA + 936 + 4, tag(1, 936));
    assert!(matches!(
        c.recv(&mut [0; 200]),
        Err(RecvError::Corrupted(Corruption::Length { .. }))
    ));
}

#[test]
fn padding_in_the_middle_or_at_the_start_is_corruption() {
    let (mem, _p, mut c) = pair(1024);
    mem.poke(DATA, 100);
    mem.poke(DATA + 4, tag(0xFF, 0));
    assert!(matches!(
        c.recv(&mut [0; 8]),
        Err(RecvError::Corrupted(Corruption::Padding { .. }))
    ));

    let (mem, mut p, mut c) = pair(1024);
    let _ = p.send(1, &[0; 8]).unwrap();
    c.recv(&mut [0; 8]).unwrap();
    mem.poke(DATA + 16, 16); // not up to the end
    mem.poke(DATA + 16 + 4, tag(0xFF, 16));
    assert!(matches!(
        c.recv(&mut [0; 8]),
        Err(RecvError::Corrupted(Corruption::Padding { .. }))
    ));
}

#[test]
fn padding_chains_are_bounded() {
    // A valid-looking padding frame to the end, followed by another padding frame at
    // offset 0: at most one padding frame per call, then Corrupted.
    let (mem, mut p, mut c) = pair(1024);
    for _ in 0..4 {
        let _ = p.send(1, &[0; 120]).unwrap(); // 128-byte frames
        c.recv(&mut [0; 128]).unwrap();
    }
    mem.poke(DATA + 512, 1024 - 512 - 8);
    mem.poke(DATA + 512 + 4, tag(0xFF, 512));
    mem.poke(DATA, 1024 - 8);
    mem.poke(DATA + 4, tag(0xFF, 1024));
    assert!(matches!(
        c.recv(&mut [0; 8]),
        Err(RecvError::Corrupted(Corruption::Padding { .. }))
    ));
}

#[test]
fn a_length_changed_after_peek_cannot_widen_the_read() {
    // The consumer reads each shared value once: a peer rewriting the length between the
    // peek and the copy changes nothing we read.
    let (mem, mut p, mut c) = pair(1024);
    let _ = p.send(1, b"twelve bytes").unwrap();
    let f = c.peek().unwrap();
    mem.poke(DATA, 900);
    mem.poke(DATA + 8, 0x4141_4141); // the payload changes under us: we copy what is there
    let mut buf = [0u8; 1024];
    assert_eq!(f.copy_to(&mut buf).unwrap(), 12);
    assert_eq!(f.len(), 12);
    assert_eq!(&buf[..4], b"AAAA");
    assert_eq!(&buf[4..12], b"ve bytes");
    assert!(buf[12..].iter().all(|&b| b == 0));
    let _ = f.consume().unwrap();
}

#[test]
fn event_fields_are_only_hints() {
    // Garbage in the wake-up requests can cost a spurious or a missing doorbell, never
    // an error or a wrong byte: data moves by the indices and stamps alone.
    let (mem, mut p, mut c) = pair(256);
    let mut buf = [0; 64];
    for (i, v) in [0u32, 1, 7, 8, u32::MAX, 0x8000_0000, 12345]
        .into_iter()
        .enumerate()
    {
        mem.poke(DATA_EVENT, v);
        mem.poke(SPACE_EVENT, v);
        let b = payload(i as u64, 40);
        let _ = p.send(1, &b).unwrap();
        let got = c.recv(&mut buf).unwrap();
        assert_eq!(&buf[..got.len], &b[..]);
        assert!(matches!(p.arm_space(40), Ok(Readiness::Ready)));
    }
}

#[test]
fn closed_flags_with_any_value_are_just_closed() {
    let (mem, mut p, mut c) = pair(256);
    mem.poke(CONS_CLOSED, 0xDEAD);
    assert_eq!(p.send(1, b"x"), Err(SendError::Closed));
    mem.poke(PROD_CLOSED, 7);
    assert_eq!(c.recv(&mut [0; 8]).unwrap().len, 1); // published before we saw the flag
    assert_eq!(c.recv(&mut [0; 8]), Err(RecvError::Closed));
}

/// Every shared word, in turn, set to a list of adversarial values between operations
/// of both halves: no panic, no hang; errors are typed.
#[test]
fn every_shared_word_under_adversarial_values() {
    let size = 256u32;
    let words: Vec<usize> = [
        WRITE,
        SPACE_EVENT,
        PROD_CLOSED,
        READ,
        DATA_EVENT,
        CONS_CLOSED,
        0,
        4,
        8,
        12,
    ]
    .into_iter()
    .chain((DATA..DATA + size as usize).step_by(4))
    .collect();
    let values = [
        0u32,
        1,
        8,
        0x7F,
        0x80,
        0xFF,
        0x100,
        0xFFFF,
        0xFF00_0000,
        0x8000_0000,
        u32::MAX,
        u32::MAX - 7,
    ];
    let steps = if cfg!(miri) { 2 } else { 12 };
    for &w in &words {
        for (vi, &v) in values.iter().enumerate() {
            let (mem, mut p, mut c) = pair(size);
            let mut buf = [0u8; 256];
            for i in 0..steps {
                let _ = p.send((i % 3) as u8, &payload(i, (i as usize * 13) % 100));
                if i as usize == vi % steps as usize {
                    mem.poke(w, v);
                }
                let _ = c.recv(&mut buf);
                let _ = c.recv_batch(4, |v| {
                    let _ = v.read_at(0, &mut [0; 8]);
                });
                let _ = c.arm_data(1);
                let _ = p.arm_space(64);
                if let Ok(f) = c.peek() {
                    let _ = f.copy_to(&mut buf);
                }
            }
        }
    }
}

#[test]
fn the_unconsumed_walk_survives_a_peer_that_rewrote_its_frames() {
    let (mem, mut p, _c) = pair(1024);
    for i in 0..5u8 {
        let _ = p.send(1, &[i; 40]).unwrap();
    }
    // The peer rewrites the third frame's length: the walk hands out the two before it,
    // then says Corrupted; it never reads outside the data area.
    mem.poke(DATA + 2 * 48, 5000);
    let mut seen = 0;
    let r = p.for_each_unconsumed(|_| seen += 1);
    assert!(matches!(
        r,
        Err(SendError::Corrupted(Corruption::Length { .. }))
    ));
    assert_eq!(seen, 2);
    // A `read` index from nowhere: the walk starts from the last valid one instead.
    mem.poke(DATA + 2 * 48, 40);
    mem.poke(READ, 0x1234_5670);
    let mut seen = 0;
    assert_eq!(p.for_each_unconsumed(|_| seen += 1), Ok(5));
}

/// Issue 17, finding 1: a `write` index that covers a frame whose tag says "nothing
/// yet". An honest producer stores `write` after the tags it publishes, so a consumer
/// that sees `write` sees the tags: this is corruption. The old `arm_data` answered
/// `Ready` from `write` alone while `recv` answered `Empty`, and a blocking receive spun
/// between the two forever.
#[test]
fn a_write_index_over_an_unpublished_frame_is_corruption() {
    // One frame's worth, and a whole data area's worth (`Batching::STREAM` asks for
    // many bytes, so only `write` could make it ready).
    for (bad, min) in [(8u32, 1u32), (64, 1), (1024, 512), (1024, 1), (1016, 512)] {
        let (mem, _p, mut c) = pair(1024);
        mem.poke(WRITE, bad);
        assert_eq!(c.recv(&mut [0; 8]), Err(RecvError::Empty), "{bad}");
        assert_eq!(
            c.arm_data(min),
            Err(RecvError::Corrupted(Corruption::WriteIndex { write: bad })),
            "write = {bad}, waiting for {min} bytes"
        );
        assert!(matches!(c.recv(&mut [0; 8]), Err(RecvError::Corrupted(_))));
    }
    // After real traffic: `write` one frame past everything published.
    let (mem, mut p, mut c) = pair(1024);
    for i in 0..3 {
        let _ = p.send(1, &payload(i, 20)).unwrap();
    }
    for _ in 0..3 {
        c.recv(&mut [0; 64]).unwrap();
    }
    mem.poke(WRITE, 3 * 32 + 32);
    assert!(matches!(
        c.arm_data(1),
        Err(RecvError::Corrupted(Corruption::WriteIndex { .. }))
    ));
    // The honest cases still hold: published data is ready, an empty ring arms.
    let (_mem, mut p, mut c) = pair(1024);
    assert_eq!(c.arm_data(1), Ok(Readiness::Armed));
    let _ = p.send(1, b"x").unwrap();
    assert_eq!(c.arm_data(1), Ok(Readiness::Ready));
    assert_eq!(
        c.arm_data(24),
        Ok(Readiness::Armed),
        "one 16-byte frame < 24"
    );
}

/// Issue 17, finding 8: the walk over unconsumed frames found a frame the peer
/// rewrote, said `Corrupted`, and left the producer sending as if nothing happened.
#[test]
fn a_corrupt_unconsumed_walk_poisons_the_producer() {
    let (mem, mut p, _c) = pair(1024);
    for i in 0..3u8 {
        let _ = p.send(1, &[i; 40]).unwrap();
    }
    mem.poke(DATA + 48, 5000); // the second frame's length
    let err = p.for_each_unconsumed(|_| {}).unwrap_err();
    assert!(
        matches!(err, SendError::Corrupted(Corruption::Length { .. })),
        "{err:?}"
    );
    assert_eq!(p.send(1, b"x"), Err(err), "the half is poisoned");
    assert_eq!(p.publish(), Err(err));
    // A tag rewritten instead of a length: the same.
    let (mem, mut p, _c) = pair(1024);
    let _ = p.send(1, &[0; 40]).unwrap();
    mem.poke(DATA + 4, 0x00AB_CDEF);
    let err = p.for_each_unconsumed(|_| {}).unwrap_err();
    assert!(matches!(err, SendError::Corrupted(Corruption::Tag { .. })));
    assert_eq!(p.send(1, b"x"), Err(err));
}
