//! The producer half: writes frames, publishes batches, asks for space.

use crate::index::{crossed, distance};
use crate::layout::{
    frame_len, frame_size, header, invalid_tag, off, split, stamp, tag, KIND_PAD, STAMP_MASK,
};
use crate::region::OutOfBounds;
use crate::sync::atomic::fence;
use crate::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use crate::{
    AttachError, Corruption, Geometry, Notify, Readiness, RingMemory, SendError, State, View,
};
use core::cell::Cell;
use core::marker::PhantomData;

/// The writing half of a ring.
///
/// `Send` but neither `Sync` nor `Clone`: one thread at a time owns the only producer,
/// so single-producer is a property of the types.
#[derive(Debug)]
pub struct Producer {
    mem: RingMemory,
    geo: Geometry,
    /// Position after the last frame written, published or not. A multiple of 8;
    /// `write - cached_read` is in `0..=size - 8` (8 bytes of slack are always kept
    /// free for the "nothing yet" mark).
    write: u32,
    /// The value of `write` last stored to the shared `write`; `published..write` holds
    /// written but unpublished frames.
    published: u32,
    /// The last validated shared `read`: in `[previous cached_read, published]`.
    cached_read: u32,
    /// Header (length and tag) of the first unpublished frame (its slot is
    /// `published`). Stored last, by `publish`, with Release: until then the consumer
    /// cannot see past that slot.
    first: u64,
    state: State,
    /// Not `Sync`.
    _not_sync: PhantomData<Cell<()>>,
}

/// Where the next frame goes: computed first, written by `commit_frame`.
#[derive(Clone, Copy, Debug)]
struct Placement {
    /// Bytes of padding frame at `write` before the frame (0: none).
    pad: u32,
    /// Position of the frame.
    pos: u32,
}

impl Producer {
    /// Lays a fresh ring with a `data_size`-byte data area out in `mem` and returns its
    /// producer. The peer then attaches its [`Consumer`](crate::Consumer).
    ///
    /// # Errors
    ///
    /// [`AttachError::BadDataSize`] or [`AttachError::RegionTooSmall`].
    pub fn init(mem: RingMemory, data_size: u32) -> Result<Self, AttachError> {
        crate::lay_out(&mem, data_size)?;
        Self::attach(mem)
    }

    /// Attaches to a ring that the peer (or this side) laid out, validating its header
    /// and indices.
    ///
    /// # Errors
    ///
    /// Wrong magic, version, data offset or size, a region too small for the size the
    /// header claims, or indices that are impossible already.
    pub fn attach(mem: RingMemory) -> Result<Self, AttachError> {
        let geo = crate::attach(&mem)?;
        let bad = |_: OutOfBounds| AttachError::Corrupted(Corruption::OutOfBounds);
        // Acquire: pairs with nothing the peer must have done; a plain read of the
        // current state, validated below like any other.
        let write = mem.load(off::WRITE, Acquire).map_err(bad)?;
        let read = mem.load(off::READ, Acquire).map_err(bad)?;
        if write % 8 != 0 {
            return Err(AttachError::Corrupted(Corruption::WriteIndex { write }));
        }
        if read % 8 != 0 || distance(read, write) > geo.size - 8 {
            return Err(AttachError::Corrupted(Corruption::ReadIndex { read }));
        }
        let p = Self {
            mem,
            geo,
            write,
            published: write,
            cached_read: read,
            first: 0,
            state: State::Open,
            _not_sync: PhantomData,
        };
        // The slot at `write` must say "nothing yet" before we publish past it; a fresh
        // ring has the mark already, a re-attached one may not.
        p.put_mark();
        Ok(p)
    }

    /// The largest payload [`send`](Self::send) accepts: half the data area less 8.
    pub fn max_message(&self) -> u32 {
        self.geo.max
    }

    /// Size of the data area in bytes.
    pub fn data_size(&self) -> u32 {
        self.geo.size
    }

    /// The free-running position after the last frame written (published or not).
    pub fn position(&self) -> u32 {
        self.write
    }

    /// The consumer's position as last read and validated (no shared access): the
    /// consumer has consumed at least this far.
    pub fn cached_consumer_position(&self) -> u32 {
        self.cached_read
    }

    /// Bytes written but not yet published.
    pub fn pending_bytes(&self) -> u32 {
        distance(self.published, self.write)
    }

    /// Re-reads the consumer's index and returns it: every frame that ends at or before
    /// this position has been consumed. The core uses it to know which messages it may
    /// forget and which it must send again over another path.
    ///
    /// # Errors
    ///
    /// [`SendError::Corrupted`] if the index is impossible.
    pub fn consumer_position(&mut self) -> Result<u32, SendError> {
        self.usable()?;
        self.refresh_read()?;
        Ok(self.cached_read)
    }

    /// Writes one message of `kind` and publishes it.
    ///
    /// # Errors
    ///
    /// [`SendError::Full`] (nothing written), [`SendError::TooLarge`],
    /// [`SendError::ReservedKind`], [`SendError::Closed`] and [`SendError::Corrupted`].
    ///
    /// # Examples
    ///
    /// See the [crate docs](crate).
    #[inline]
    pub fn send(&mut self, kind: u8, msg: &[u8]) -> Result<Notify, SendError> {
        self.write(kind, msg)?;
        self.publish()
    }

    /// Writes one message without publishing it: the consumer sees nothing until
    /// [`publish`](Self::publish).
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send).
    #[inline]
    pub fn write(&mut self, kind: u8, msg: &[u8]) -> Result<(), SendError> {
        let len = self.check_len(kind, msg.len())?;
        self.write_len(kind, len, msg)
    }

    /// `write` of a message whose kind and length (`len == msg.len() <= max`) were
    /// checked, on an open half.
    #[inline(always)]
    fn write_len(&mut self, kind: u8, len: u32, msg: &[u8]) -> Result<(), SendError> {
        let place = self.place(len)?;
        // The payload's range comes from our own placement; the copy still checks it
        // against the region (the second wall).
        self.ok(self.mem.write_payload(self.geo.slot(place.pos) + 8, msg))?;
        self.commit_frame(place, kind, len);
        Ok(())
    }

    /// Writes as many of `msgs` as fit, all of `kind`, and publishes them with one
    /// index store. Returns how many were sent (the first `n`) and whether to notify.
    ///
    /// # Errors
    ///
    /// Only if not even the first message could be sent; a later one that does not fit
    /// ends the batch early instead.
    pub fn send_batch<M: AsRef<[u8]>>(
        &mut self,
        kind: u8,
        msgs: &[M],
    ) -> Result<(usize, Notify), SendError> {
        // The state and the kind once for the batch; each message's length and room.
        self.check_len(kind, 0)?;
        let mut sent = 0;
        for m in msgs {
            let m = m.as_ref();
            let r = match u32::try_from(m.len()) {
                Ok(len) if len <= self.geo.max => self.write_len(kind, len, m),
                _ => Err(SendError::TooLarge {
                    len: m.len(),
                    max: self.geo.max,
                }),
            };
            match r {
                Ok(()) => sent += 1,
                Err(e) if sent == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok((sent, self.publish()?))
    }

    /// Reserves room for a message of up to `max_len` bytes, to be written in place
    /// (zero-copy) and committed with [`Reservation::commit`]. Nothing is visible to the
    /// consumer until then and a later [`publish`](Self::publish); dropping the
    /// reservation writes nothing.
    ///
    /// # Errors
    ///
    /// As [`write`](Self::write) for a message of `max_len` bytes.
    pub fn reserve(&mut self, max_len: usize) -> Result<Reservation<'_>, SendError> {
        let cap = self.check_len(0, max_len)?;
        let place = self.place(cap)?;
        Ok(Reservation {
            producer: self,
            place,
            cap,
        })
    }

    /// Makes every written frame visible to the consumer, with one Release store of the
    /// first new frame's tag and one store of `write`, and says whether the consumer
    /// asked to be woken at a point this crossed.
    ///
    /// # Errors
    ///
    /// [`SendError::Closed`] if the consumer has closed its half (the frames are in the
    /// ring but nobody will read them), [`SendError::Corrupted`] if poisoned.
    pub fn publish(&mut self) -> Result<Notify, SendError> {
        self.usable()?;
        if self.write == self.published {
            return Ok(Notify::Suppressed);
        }
        // The slot after our last frame must read "nothing yet" before anything before
        // it becomes visible; it is free (`write + 8 <= read + size`, the slack).
        // Relaxed: ordered before the consumer can look by the Release store below.
        self.put_mark();
        // SAFETY: `hdr` is inside the region (`Geometry::hdr`; the region was checked
        // to hold this ring at attach).
        // SYNC: publish. Release; pairs with the Acquire load of the frame header in
        // `Consumer::next`. Every payload and header of this batch, and the mark above,
        // were written before it in program order, so they are visible to a consumer
        // that sees this header.
        unsafe {
            self.mem
                .store64(self.geo.hdr(self.published), self.first, Release)
        };
        // SYNC: event-data. Store `write`, full fence, load `data event`; the mirror of
        // `Consumer::arm_data` (store `data event`, full fence, load `write`). The two
        // SeqCst fences are ordered one way or the other in the single total order S;
        // whichever comes second, its side's load sees the other side's store. So
        // either the consumer's re-check sees this `write`, or this load sees its
        // request: a sleeping consumer is never missed (the store-buffering litmus;
        // without the fence both loads may miss: the lost wake-up of SPDK issue 3178).
        // Fences rather than SeqCst loads and stores, because loom models fences
        // exactly and treats SeqCst accesses as AcqRel.
        // Release: also publishes the frames to a consumer that reads `write`.
        // SAFETY: a control word at a constant offset below `DATA_OFFSET`, inside every
        // region a ring was attached to.
        unsafe { self.mem.store_ctl(off::WRITE, self.write, Release) };
        fence(SeqCst);
        // Relaxed: ordered by the fence above; a hint.
        // SAFETY: as above.
        let event = unsafe { self.mem.load_ctl(off::DATA_EVENT, Relaxed) };
        // Relaxed: the flag is a hint on the line just loaded; the consumer never
        // clears it, so a late view only delays `Closed` by one call.
        // SAFETY: as above.
        let closed = unsafe { self.mem.load_ctl(off::CONS_CLOSED, Relaxed) };
        let old = self.published;
        self.published = self.write;
        if closed != 0 {
            self.state = State::PeerClosed;
            return Err(SendError::Closed);
        }
        Ok(if crossed(event, old, self.write) {
            Notify::Required
        } else {
            Notify::Suppressed
        })
    }

    /// Before sleeping until a message of `len` bytes fits: records in shared memory how
    /// far the consumer must advance (the bytes this message needs, with padding), then
    /// checks again. The consumer's [`release`](crate::Consumer::release) answers
    /// `Required` when it crosses that point.
    ///
    /// # Errors
    ///
    /// As [`write`](Self::write), except that a full ring is not an error here.
    pub fn arm_space(&mut self, len: usize) -> Result<Readiness, SendError> {
        let len = self.check_len(0, len)?;
        let need = self.need(len);
        // The `read` value at which `used + need + 8 <= size` holds.
        let target = self
            .write
            .wrapping_add(need + 8)
            .wrapping_sub(self.geo.size);
        // SYNC: event-space. Store `space event`, full fence, load `read`; the mirror
        // of `Consumer::release` (store `read`, full fence, load `space event`). See
        // `SYNC: event-data` in `publish` for why one side always sees the other.
        // SAFETY: a control word at a constant offset below `DATA_OFFSET`.
        unsafe { self.mem.store_ctl(off::SPACE_EVENT, target, Relaxed) };
        fence(SeqCst);
        self.refresh_read()?;
        Ok(if self.fits(need) {
            Readiness::Ready
        } else {
            Readiness::Armed
        })
    }

    /// Hands every frame written but not yet consumed to `f`, oldest first, and returns
    /// how many: from the consumer's last stored position to the end of the last frame
    /// written, published or not. The ring is left as it was.
    ///
    /// After the peer died or moved away these are exactly the messages it never read
    /// (and perhaps a few it read but had not yet acknowledged by storing `read`): the
    /// core sends them again over the network path, in order. The ring is thus its own
    /// retransmit buffer, and the fast path keeps no copies.
    ///
    /// Frames are read back from shared memory and validated as the consumer validates
    /// them: a peer that rewrote them changes only what is handed out (its own
    /// messages), and cannot make this walk leave the data area or run forever (it
    /// visits at most `size / 8` frames). A poisoned producer walks from the last
    /// position it validated: more duplicates, never fewer messages.
    ///
    /// # Errors
    ///
    /// [`SendError::Corrupted`] at the first frame that fails validation; the frames
    /// before it were handed out, and the half is poisoned, as on every other path
    /// that finds the shared state impossible (a later walk still works, from the last
    /// validated position).
    pub fn for_each_unconsumed(
        &mut self,
        mut f: impl FnMut(&View<'_>),
    ) -> Result<usize, SendError> {
        if self.state == State::Open {
            // A fresh `read` means fewer duplicates; a bad one keeps the old position.
            let _ = self.refresh_read();
        }
        let mut pos = self.cached_read;
        let mut n = 0;
        for _ in 0..=self.geo.size / 8 {
            if pos == self.write {
                return Ok(n);
            }
            let h = if pos == self.published {
                // The first unpublished frame's header is still private.
                self.first
            } else {
                // SAFETY: `hdr` is inside the region (`Geometry::hdr`).
                // Relaxed: our own earlier store, or whatever the peer put there;
                // validated below either way. One load: length and tag together.
                unsafe { self.mem.load64(self.geo.hdr(pos), Relaxed) }
            };
            let (len, tag) = split(h);
            let offset = pos & self.geo.mask;
            let room = self.geo.size - offset - 8;
            let left = distance(pos, self.write);
            if tag & STAMP_MASK != stamp(pos) {
                return Err(self.poison(Corruption::Tag { pos, tag }));
            }
            if (tag >> 24) as u8 == KIND_PAD {
                if offset == 0 || len != room || left < room + 8 {
                    return Err(self.poison(Corruption::Padding { pos, len }));
                }
                pos = pos.wrapping_add(room + 8);
                continue;
            }
            match frame_size(len) {
                Some(fs) if len <= self.geo.max && fs - 8 <= room && fs <= left => {
                    f(&View::new(
                        &self.mem,
                        &self.geo,
                        (tag >> 24) as u8,
                        len,
                        pos,
                    ));
                    pos = pos.wrapping_add(fs);
                    n += 1;
                }
                _ => return Err(self.poison(Corruption::Length { pos, len })),
            }
        }
        Err(self.poison(Corruption::Length { pos, len: 0 }))
    }

    /// Publishes what is pending and closes this half: the consumer receives every
    /// frame, then [`RecvError::Closed`](crate::RecvError::Closed). Returns `Required`
    /// when the consumer must be woken to see it (always, if it might be asleep).
    ///
    /// # Errors
    ///
    /// As [`publish`](Self::publish).
    pub fn close(mut self) -> Result<Notify, SendError> {
        let n = self.publish()?;
        // SYNC: close. Release; pairs with the Acquire load of `prod closed` in
        // `Consumer::next`: every frame published above is visible to a consumer that
        // sees the flag.
        // SAFETY: a control word at a constant offset below `DATA_OFFSET`.
        unsafe { self.mem.store_ctl(off::PROD_CLOSED, 1, Release) };
        // A consumer asleep on an armed request needs the doorbell to see the close.
        Ok(n.or(Notify::Required))
    }

    // ---- internals ----

    /// A failed access: only reachable through a corrupted value; poisons the half.
    #[cold]
    fn oob(&mut self) -> SendError {
        self.poison(Corruption::OutOfBounds)
    }

    #[inline(always)]
    fn ok<T>(&mut self, r: Result<T, OutOfBounds>) -> Result<T, SendError> {
        r.map_err(|_| self.oob())
    }

    #[inline(always)]
    fn usable(&self) -> Result<(), SendError> {
        match self.state {
            State::Open => Ok(()),
            State::PeerClosed => Err(SendError::Closed),
            State::Corrupted(c) => Err(SendError::Corrupted(c)),
        }
    }

    #[inline(always)]
    fn poison(&mut self, c: Corruption) -> SendError {
        self.state = State::Corrupted(c);
        SendError::Corrupted(c)
    }

    #[inline(always)]
    fn check_len(&self, kind: u8, len: usize) -> Result<u32, SendError> {
        self.usable()?;
        if kind == KIND_PAD {
            return Err(SendError::ReservedKind);
        }
        match u32::try_from(len) {
            Ok(l) if l <= self.geo.max => Ok(l),
            _ => Err(SendError::TooLarge {
                len,
                max: self.geo.max,
            }),
        }
    }

    /// Bytes a frame of `len` bytes needs at `write`, counting a padding frame.
    #[inline(always)]
    fn need(&self, len: u32) -> u32 {
        let frame = frame_len(len);
        let tail = self.geo.size - (self.write & self.geo.mask);
        if frame <= tail {
            frame
        } else {
            tail + frame
        }
    }

    #[inline(always)]
    fn fits(&self, need: u32) -> bool {
        // used <= size - 8 and need <= 3/2 size, so the sum stays below 2^32 for
        // size <= 2^30.
        distance(self.cached_read, self.write) + need + 8 <= self.geo.size
    }

    /// Where a frame of `len <= max` bytes goes. `len` was checked against the
    /// maximum, so `frame_len` cannot overflow.
    #[inline(always)]
    fn place(&mut self, len: u32) -> Result<Placement, SendError> {
        let frame = frame_len(len);
        let tail = self.geo.size - (self.write & self.geo.mask);
        let pad = if frame <= tail { 0 } else { tail };
        if !self.fits(pad + frame) {
            // The cache says full: re-read the consumer's index, then check "really full".
            self.refresh_read()?;
            if !self.fits(pad + frame) {
                return Err(SendError::Full);
            }
        }
        Ok(Placement {
            pad,
            pos: self.write.wrapping_add(pad),
        })
    }

    fn refresh_read(&mut self) -> Result<(), SendError> {
        // SYNC: release-space. Acquire; pairs with the Release store of `read` in
        // `Consumer::release`: the consumer finished copying out the bytes it released
        // before we overwrite them.
        // SAFETY: a control word at a constant offset below `DATA_OFFSET`.
        let read = unsafe { self.mem.load_ctl(off::READ, Acquire) };
        // Valid: a multiple of 8 that moved forward by at most what was published.
        if read % 8 != 0
            || distance(self.cached_read, read) > distance(self.cached_read, self.published)
        {
            return Err(self.poison(Corruption::ReadIndex { read }));
        }
        self.cached_read = read;
        Ok(())
    }

    /// Stores the "nothing published here yet" mark at `write` (a header of length 0
    /// with the invalid tag).
    #[inline(always)]
    fn put_mark(&self) {
        // SAFETY: `hdr` is inside the region (`Geometry::hdr`).
        // Relaxed: ordered before the consumer can look past `published` by the
        // Release store of the first header in `publish`.
        unsafe {
            self.mem.store64(
                self.geo.hdr(self.write),
                header(0, invalid_tag(self.write)),
                Relaxed,
            )
        };
    }

    /// Writes the headers of a placed frame (and its padding frame) whose payload is in
    /// place, and advances `write`. The first unpublished frame's header is kept for
    /// `publish`; the others are stored now.
    #[inline(always)]
    fn commit_frame(&mut self, place: Placement, kind: u8, len: u32) {
        if place.pad != 0 {
            self.put_header(self.write, header(place.pad - 8, tag(KIND_PAD, self.write)));
        }
        self.put_header(place.pos, header(len, tag(kind, place.pos)));
        self.write = place.pos.wrapping_add(frame_len(len));
    }

    #[inline(always)]
    fn put_header(&mut self, pos: u32, h: u64) {
        if pos == self.published {
            self.first = h;
        } else {
            // SAFETY: `hdr` is inside the region (`Geometry::hdr`).
            // Relaxed: the consumer reaches this slot only after acquiring the first
            // unpublished frame's header, whose Release store in `publish` comes later
            // in program order.
            unsafe { self.mem.store64(self.geo.hdr(pos), h, Relaxed) };
        }
    }
}

/// Room for one message in the ring, written in place. See [`Producer::reserve`].
#[derive(Debug)]
pub struct Reservation<'a> {
    producer: &'a mut Producer,
    place: Placement,
    cap: u32,
}

impl Reservation<'_> {
    /// The bytes reserved.
    pub fn capacity(&self) -> usize {
        self.cap as usize
    }

    /// Copies `bytes` into the reserved payload at `offset`.
    ///
    /// # Errors
    ///
    /// [`SendError::TooLarge`] if `offset + bytes.len()` exceeds the capacity.
    pub fn write_at(&mut self, offset: usize, bytes: &[u8]) -> Result<(), SendError> {
        let end = offset
            .checked_add(bytes.len())
            .filter(|&e| e <= self.cap as usize);
        if end.is_none() {
            return Err(SendError::TooLarge {
                len: offset.saturating_add(bytes.len()),
                max: self.cap,
            });
        }
        let at = self.producer.geo.slot(self.place.pos) + 8 + offset;
        self.producer
            .mem
            .write_bytes(at, bytes)
            .map_err(|_| SendError::Corrupted(Corruption::OutOfBounds))
    }

    /// A raw pointer to the reserved payload, valid for writes of
    /// [`capacity`](Self::capacity) bytes while the reservation lives: for a system
    /// call (`read`, `recvmsg`) or a device to fill in place.
    ///
    /// The memory is shared with the peer: do not make a `&mut [u8]` of it; write
    /// through raw or volatile accesses, or hand it to the kernel.
    #[cfg(not(loom))]
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        let at = self.producer.geo.slot(self.place.pos) + 8;
        // `place` guaranteed the frame fits inside the data area.
        self.producer
            .mem
            .ptr(at, self.cap as usize)
            .unwrap_or(core::ptr::null_mut())
    }

    /// Commits the first `len` bytes as a message of `kind` (unpublished until
    /// [`Producer::publish`]).
    ///
    /// # Errors
    ///
    /// [`SendError::TooLarge`] if `len` exceeds the capacity,
    /// [`SendError::ReservedKind`] for [`KIND_PAD`].
    pub fn commit(self, kind: u8, len: usize) -> Result<(), SendError> {
        if kind == KIND_PAD {
            return Err(SendError::ReservedKind);
        }
        let len = match u32::try_from(len) {
            Ok(l) if l <= self.cap => l,
            _ => return Err(SendError::TooLarge { len, max: self.cap }),
        };
        self.producer.commit_frame(self.place, kind, len);
        Ok(())
    }
}
