//! The consumer half: polls frame stamps, copies out, releases space.

use crate::index::{crossed, distance};
use crate::layout::{frame_len, invalid_tag, off, split, stamp, KIND_PAD, STAMP_MASK};
use crate::region::OutOfBounds;
use crate::sync::atomic::fence;
use crate::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use crate::{AttachError, Corruption, Geometry, Notify, Readiness, RecvError, RingMemory, State};
use core::cell::Cell;
use core::marker::PhantomData;

/// The reading half of a ring.
///
/// `Send` but neither `Sync` nor `Clone`: single-consumer is a property of the types.
#[derive(Debug)]
pub struct Consumer {
    mem: RingMemory,
    geo: Geometry,
    /// Position of the next frame to read (after frames consumed but maybe not yet
    /// released). A multiple of 8; `read - released` is in `0..=size`.
    read: u32,
    /// The value last stored to the shared `read`.
    released: u32,
    /// The value of `read` at the last check of the producer's space request made
    /// after a full fence (exact). Equal to `released` except in lazy mode, where the
    /// receiving calls check without the fence and [`release`](Consumer::release)
    /// settles `fenced..released`.
    fenced: u32,
    /// Lazy release ([`Consumer::set_lazy_release`]).
    lazy: bool,
    state: State,
    /// Not `Sync`.
    _not_sync: PhantomData<Cell<()>>,
}

/// What [`Consumer::recv`] received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    /// The frame's kind.
    pub kind: u8,
    /// Bytes copied into the caller's buffer: the whole message.
    pub len: usize,
    /// Whether the producer must be woken (it waits for the space this freed).
    pub notify: Notify,
}

/// A published message, seen in place. Reading copies out with volatile accesses: the
/// producer could change the bytes while they are read (only a hostile one would), and
/// a copy is all the caller ever holds.
#[derive(Debug)]
pub struct View<'a> {
    mem: RingMemory,
    /// Region offset of the payload.
    at: usize,
    len: u32,
    kind: u8,
    _borrow: PhantomData<&'a Consumer>,
}

impl View<'_> {
    /// A view of the validated frame of `kind` and `len` at `pos`.
    // `RingMemory` is `Copy` except under loom, where it is an `Arc`.
    #[allow(clippy::clone_on_copy)]
    #[inline]
    pub(crate) fn new(mem: &RingMemory, geo: &Geometry, kind: u8, len: u32, pos: u32) -> Self {
        View {
            mem: mem.clone(),
            at: geo.slot(pos) + 8,
            len,
            kind,
            _borrow: PhantomData,
        }
    }

    /// The frame's kind.
    #[inline]
    pub fn kind(&self) -> u8 {
        self.kind
    }

    /// The payload length.
    #[inline]
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether the payload is empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies payload bytes from `offset` into `buf`; returns how many (fewer than
    /// `buf.len()` at the end of the payload, 0 past it).
    #[inline]
    pub fn read_at(&self, offset: usize, buf: &mut [u8]) -> usize {
        let avail = self.len().saturating_sub(offset);
        let n = avail.min(buf.len());
        // `consumer::next` validated `at + len` against the data area, so this cannot
        // fail; if it did, the caller gets 0 bytes rather than a panic.
        let r = |dst: &mut [u8]| {
            if offset == 0 {
                self.mem.read_payload(self.at, dst)
            } else {
                self.mem.read_bytes(self.at + offset, dst)
            }
        };
        match buf.get_mut(..n) {
            Some(dst) => match r(dst) {
                Ok(()) => n,
                Err(_) => 0,
            },
            None => 0,
        }
    }

    /// Copies the whole payload into the front of `buf` and returns its length.
    ///
    /// # Errors
    ///
    /// [`RecvError::BufferTooSmall`] if `buf` is shorter than the payload.
    #[inline]
    pub fn copy_to(&self, buf: &mut [u8]) -> Result<usize, RecvError> {
        let n = self.len();
        let Some(dst) = buf.get_mut(..n) else {
            return Err(RecvError::BufferTooSmall { needed: n });
        };
        // `consumer::next` validated `at + len` against the data area, so this cannot
        // fail; if it did, the caller gets 0 bytes rather than a panic.
        Ok(match self.mem.read_payload(self.at, dst) {
            Ok(()) => n,
            Err(_) => 0,
        })
    }

    /// A raw pointer to the payload in shared memory, valid for reads of
    /// [`len`](Self::len) bytes while the view lives (for a `write`/`sendmsg` system
    /// call or a device). The peer may change these bytes at any time: never make a
    /// `&[u8]` of them.
    #[cfg(not(loom))]
    pub fn as_ptr(&self) -> *const u8 {
        self.mem
            .ptr(self.at, self.len())
            .map_or(core::ptr::null(), |p| p.cast_const())
    }
}

/// The next message, in place: read it through [`View`]'s methods (it derefs to one),
/// then [`consume`](Frame::consume) it. Dropping a frame leaves it in the ring.
#[derive(Debug)]
pub struct Frame<'a> {
    view: View<'a>,
    consumer: &'a mut Consumer,
    end: u32,
}

impl<'a> core::ops::Deref for Frame<'a> {
    type Target = View<'a>;
    fn deref(&self) -> &View<'a> {
        &self.view
    }
}

impl Frame<'_> {
    /// Removes the frame from the ring and releases its space to the producer.
    ///
    /// # Errors
    ///
    /// [`RecvError::Corrupted`] if the region turned out unusable.
    pub fn consume(self) -> Result<Notify, RecvError> {
        self.consumer.read = self.end;
        Ok(self.consumer.released_now())
    }
}

impl Consumer {
    /// Lays a fresh ring out in `mem` and returns its consumer; the peer then attaches
    /// its [`Producer`](crate::Producer).
    ///
    /// # Errors
    ///
    /// [`AttachError::BadDataSize`] or [`AttachError::RegionTooSmall`].
    pub fn init(mem: RingMemory, data_size: u32) -> Result<Self, AttachError> {
        crate::lay_out(&mem, data_size)?;
        Self::attach(mem)
    }

    /// Attaches to a ring laid out by the peer (or this side), validating its header.
    ///
    /// # Errors
    ///
    /// Wrong magic, version, data offset or size, a region too small, an impossible
    /// `read` index.
    pub fn attach(mem: RingMemory) -> Result<Self, AttachError> {
        let geo = crate::attach(&mem)?;
        // Acquire: a plain read of the current state, validated below.
        let read = mem
            .load(off::READ, Acquire)
            .map_err(|_| AttachError::Corrupted(Corruption::OutOfBounds))?;
        if read % 8 != 0 {
            return Err(AttachError::Corrupted(Corruption::ReadIndex { read }));
        }
        Ok(Self {
            mem,
            geo,
            read,
            released: read,
            fenced: read,
            lazy: false,
            state: State::Open,
            _not_sync: PhantomData,
        })
    }

    /// The largest payload the ring carries.
    pub fn max_message(&self) -> u32 {
        self.geo.max
    }

    /// Size of the data area in bytes.
    pub fn data_size(&self) -> u32 {
        self.geo.size
    }

    /// The free-running position of the next frame to read.
    pub fn position(&self) -> u32 {
        self.read
    }

    /// Receives the next message into `buf`.
    ///
    /// # Errors
    ///
    /// [`RecvError::Empty`], [`RecvError::BufferTooSmall`] (the message stays),
    /// [`RecvError::Closed`] once the producer closed and all is read,
    /// [`RecvError::Corrupted`].
    #[inline]
    pub fn recv(&mut self, buf: &mut [u8]) -> Result<Received, RecvError> {
        let (kind, len, pos) = self.next()?;
        let n = len as usize;
        let Some(dst) = buf.get_mut(..n) else {
            return Err(RecvError::BufferTooSmall { needed: n });
        };
        // `next` validated `pos + 8 + len` against the data area; the copy checks the
        // range against the region again (the second wall).
        let r = self.mem.read_payload(self.geo.slot(pos) + 8, dst);
        self.fail_oob(r)?;
        self.read = pos.wrapping_add(frame_len(len));
        let notify = self.released_now();
        Ok(Received {
            kind,
            len: n,
            notify,
        })
    }

    /// The next message, in place, without consuming it.
    ///
    /// # Errors
    ///
    /// As [`recv`](Self::recv), without `BufferTooSmall`.
    #[inline]
    pub fn peek(&mut self) -> Result<Frame<'_>, RecvError> {
        let (kind, len, pos) = self.next()?;
        let view = self.view(kind, len, pos);
        let end = pos.wrapping_add(frame_len(len));
        Ok(Frame {
            view,
            consumer: self,
            end,
        })
    }

    /// Receives up to `max` messages, handing each to `f` in place, then releases their
    /// space with one index store. Returns how many and whether to notify the producer.
    ///
    /// # Errors
    ///
    /// `Empty` or `Closed` only when no message was received; `Corrupted` at once (the
    /// frames received before it were consumed, and their space is not released).
    pub fn recv_batch(
        &mut self,
        max: usize,
        mut f: impl FnMut(&View<'_>),
    ) -> Result<(usize, Notify), RecvError> {
        let mut n = 0;
        while n < max {
            match self.next() {
                Ok((kind, len, pos)) => {
                    f(&self.view(kind, len, pos));
                    self.read = pos.wrapping_add(frame_len(len));
                    n += 1;
                }
                Err(RecvError::Empty | RecvError::Closed) if n > 0 => break,
                Err(e) => return Err(e),
            }
        }
        Ok((n, self.released_now()))
    }

    /// Stores the read position so the producer may reuse the space, and says, after a
    /// full fence, whether the producer asked to be woken at a point passed since the
    /// last such check. [`recv`](Self::recv), [`Frame::consume`] and
    /// [`recv_batch`](Self::recv_batch) do this themselves, unless lazy release is on
    /// ([`set_lazy_release`](Self::set_lazy_release)): then this call is the caller's
    /// duty whenever a receiving call answers `Empty`.
    ///
    /// # Errors
    ///
    /// [`RecvError::Corrupted`] if poisoned.
    pub fn release(&mut self) -> Result<Notify, RecvError> {
        self.usable()?;
        if self.read == self.fenced {
            return Ok(Notify::Suppressed);
        }
        self.store_read();
        Ok(self.check_space(true))
    }

    /// Makes receiving calls release their space lazily (`true`) or exactly (`false`,
    /// the default).
    ///
    /// Either way every receiving call stores the read position at once (the producer
    /// sees the space, and a dead consumer's unconsumed messages stay exact). What
    /// changes is the check of the producer's space request: exactly, each call makes
    /// it after a full fence (`SeqCst`), the store–load pairing that rules out a lost
    /// wake-up; lazily, each call makes it without the fence, and a request the
    /// producer is recording at that very moment can be missed. The caller then
    /// promises to call [`release`](Self::release) (with the fence, over every position
    /// since its last call) whenever a receiving call answers `Empty`, and before it
    /// arms, sleeps, stops receiving or closes; and to ring the producer's doorbell
    /// when it answers `Required`. A producer waiting for space always has frames in
    /// the ring for the consumer, so the consumer reaches an `Empty` (and that call)
    /// before it can run out of work: no wake-up is lost, it can only come at the
    /// `Empty` instead of at the crossing (`tests/loom_ring.rs` checks this).
    ///
    /// Why: the fence is the only costly instruction of a receive, and on a round trip
    /// it sits between the request's arrival and the reply. Lazily, it moves to the
    /// `Empty` that follows, where the consumer waits anyway.
    pub fn set_lazy_release(&mut self, lazy: bool) {
        self.lazy = lazy;
    }

    /// After a receiving call moved `read`: store it and check the producer's request
    /// (fenced unless lazy).
    #[inline(always)]
    fn released_now(&mut self) -> Notify {
        if self.read == self.released {
            return Notify::Suppressed;
        }
        self.store_read();
        self.check_space(!self.lazy)
    }

    #[inline(always)]
    fn store_read(&mut self) {
        // SAFETY: a control word at a constant offset below `DATA_OFFSET`, inside every
        // region a ring was attached to.
        // SYNC: release-space. Release; pairs with the Acquire load of `read` in
        // `Producer::refresh_read`: our copies out of the released bytes happen before
        // the producer overwrites them.
        unsafe { self.mem.store_ctl(off::READ, self.read, Release) };
    }

    /// Whether the producer's space request lies in the positions released since the
    /// last check: since the last fenced check when `fenced`, else since the last
    /// store (the lazy, unfenced check).
    #[inline(always)]
    fn check_space(&mut self, fenced: bool) -> Notify {
        let from = if fenced {
            // SYNC: event-space. Store `read`, full fence, load `space event`; the
            // mirror of `Producer::arm_space`. Either the producer's re-check sees this
            // `read`, or we see its request (the argument is at `SYNC: event-data` in
            // `Producer::publish`). Every `read` stored since the last fenced check is
            // covered: the range starts there.
            fence(SeqCst);
            core::mem::replace(&mut self.fenced, self.read)
        } else {
            self.released
        };
        // SAFETY: as in `store_read`.
        // Relaxed: a hint; ordered by the fence above when there is one.
        let event = unsafe { self.mem.load_ctl(off::SPACE_EVENT, Relaxed) };
        self.released = self.read;
        if crossed(event, from, self.read) {
            Notify::Required
        } else {
            Notify::Suppressed
        }
    }

    /// Before sleeping until at least `min_bytes` of frames (1: any frame) are
    /// published past the read position: records the request, then checks again.
    /// [`Producer::publish`](crate::Producer::publish) answers `Required` when it
    /// crosses that point. Every consuming call has already released its space, so
    /// there is nothing to release here.
    ///
    /// # Errors
    ///
    /// [`RecvError::Closed`] if the producer closed and nothing is left,
    /// [`RecvError::Corrupted`].
    pub fn arm_data(&mut self, min_bytes: u32) -> Result<Readiness, RecvError> {
        // max+min, not `clamp`: clamp asserts `1 <= size`, a panic path in a kernel.
        let min = min_bytes.max(1).min(self.geo.size);
        // SYNC: event-data. Store `data event`, full fence, load `write`; the mirror of
        // `Producer::publish`. Either the producer sees this request, or this load sees
        // its `write` (the argument is at `SYNC: event-data` in `Producer::publish`).
        // SAFETY: a control word at a constant offset below `DATA_OFFSET`, inside every
        // region a ring was attached to.
        unsafe {
            self.mem
                .store_ctl(off::DATA_EVENT, self.read.wrapping_add(min), Relaxed)
        };
        fence(SeqCst);
        // Acquire: pairs with the Release store of `write` in `Producer::publish`; the
        // frames before a `write` seen here are then visible to `next`.
        // SAFETY: as above.
        let write = unsafe { self.mem.load_ctl(off::WRITE, Acquire) };
        // The honest range, both ways: the producer keeps 8 bytes of slack, so `write`
        // is at most `size - 8` ahead of `read`; and `write` is stored after the tags
        // it publishes, so it may lag behind frames we already read by their stamps,
        // by at most one batch (again at most `size - 8`). Anything else is a lie.
        let slack = self.geo.size - 8;
        let avail = if distance(self.read, write) <= slack {
            distance(self.read, write)
        } else if distance(write, self.read) <= slack {
            0
        } else {
            return Err(self.poison(Corruption::WriteIndex { write }));
        };
        if write % 8 != 0 {
            return Err(self.poison(Corruption::WriteIndex { write }));
        }
        // Every frame `write` covers is visible by its stamp: the producer stored the
        // tags before `write` (`SYNC: publish`), and this Acquire load of `write` made
        // them visible. So `write` alone never says "ready": the frame at `read` must
        // say so too, or `write` covers a frame that was never published (issue 17,
        // finding 1: a blocking receive spun between a `Ready` here and an `Empty`
        // from `recv`). Bounded: `next` skips at most one padding frame.
        match self.next() {
            Ok(_) if avail >= min || min <= 8 => Ok(Readiness::Ready),
            Ok(_) => Ok(Readiness::Armed),
            Err(RecvError::Empty | RecvError::Closed) if avail > 0 => {
                Err(self.poison(Corruption::WriteIndex { write }))
            }
            Err(e @ RecvError::Closed) => Err(e),
            Err(RecvError::Empty) => Ok(Readiness::Armed),
            Err(e) => Err(e),
        }
    }

    /// Closes this half: the producer's next [`publish`](crate::Producer::publish)
    /// answers [`SendError::Closed`](crate::SendError::Closed).
    ///
    /// # Errors
    ///
    /// [`RecvError::Corrupted`] if the region turned out unusable.
    pub fn close(mut self) -> Result<(), RecvError> {
        let _ = self.release();
        // SAFETY: a control word at a constant offset below `DATA_OFFSET`.
        // Release: our last `read` store is visible with the flag. A hint for the
        // producer (read Relaxed there): closing never hides data.
        unsafe { self.mem.store_ctl(off::CONS_CLOSED, 1, Release) };
        self.usable()
    }

    // ---- internals ----

    #[inline(always)]
    fn view<'a>(&self, kind: u8, len: u32, pos: u32) -> View<'a> {
        View::new(&self.mem, &self.geo, kind, len, pos)
    }

    #[inline(always)]
    fn usable(&self) -> Result<(), RecvError> {
        match self.state {
            State::Open | State::PeerClosed => Ok(()),
            State::Corrupted(c) => Err(RecvError::Corrupted(c)),
        }
    }

    #[inline(always)]
    fn poison(&mut self, c: Corruption) -> RecvError {
        self.state = State::Corrupted(c);
        RecvError::Corrupted(c)
    }

    #[inline(always)]
    fn fail_oob<T>(&mut self, r: Result<T, OutOfBounds>) -> Result<T, RecvError> {
        r.map_err(|_| self.poison(Corruption::OutOfBounds))
    }

    /// Finds the next published frame, skipping a padding frame: `(kind, len, pos)`.
    /// Reads each frame header once (length and tag in one 8-byte load) and validates
    /// it before use. Bounded: at most one padding frame (a padding frame at offset 0
    /// is corruption).
    #[inline(always)]
    fn next(&mut self) -> Result<(u8, u32, u32), RecvError> {
        self.usable()?;
        for _ in 0..2 {
            let pos = self.read;
            // SAFETY: `hdr` is inside the region (`Geometry::hdr`; the region was
            // checked to hold this ring at attach).
            // SYNC: publish. Acquire; pairs with the Release store of the first frame's
            // header in `Producer::publish`: the frame's payload, and every frame after
            // it in that batch, are visible once this header is.
            let h = unsafe { self.mem.load64(self.geo.hdr(pos), Acquire) };
            let (len, tag) = split(h);
            if tag & STAMP_MASK != stamp(pos) {
                if tag != invalid_tag(pos) {
                    return Err(self.poison(Corruption::Tag { pos, tag }));
                }
                return Err(self.empty_or_closed(pos));
            }
            let kind = (tag >> 24) as u8;
            let offset = pos & self.geo.mask;
            let room = self.geo.size - offset - 8;
            if kind == KIND_PAD {
                if offset == 0 || len != room {
                    return Err(self.poison(Corruption::Padding { pos, len }));
                }
                self.read = pos.wrapping_add(room + 8);
                continue;
            }
            // `len <= max` first: then `frame_len` cannot overflow.
            if len > self.geo.max || frame_len(len) - 8 > room {
                return Err(self.poison(Corruption::Length { pos, len }));
            }
            return Ok((kind, len, pos));
        }
        let pos = self.read;
        Err(self.poison(Corruption::Padding { pos, len: 0 }))
    }

    /// Nothing is published at `pos`: `Empty`, or `Closed` if the producer closed
    /// after publishing everything.
    #[cold]
    fn empty_or_closed(&mut self, pos: u32) -> RecvError {
        // SYNC: close. Acquire; pairs with the Release store of `prod closed` in
        // `Producer::close`: if the flag is seen, so is every frame published before it.
        // SAFETY: a control word at a constant offset below `DATA_OFFSET`.
        if unsafe { self.mem.load_ctl(off::PROD_CLOSED, Acquire) } == 0 {
            return RecvError::Empty;
        }
        // Re-read the header now that the last publish is visible.
        // SAFETY: `hdr` is inside the region (`Geometry::hdr`).
        let (_, tag) = split(unsafe { self.mem.load64(self.geo.hdr(pos), Acquire) });
        if tag & STAMP_MASK == stamp(pos) {
            RecvError::Empty
        } else {
            RecvError::Closed
        }
    }
}
