//! The PV console ring of a guest kernel: `struct xencons_interface` of
//! `xen/include/public/io/console.h` (Xen 4.17), the page and event channel
//! named in `start_info.console.domU`. A domU cannot use `console_io` on a
//! release build of Xen; what it writes here, dom0's `xenconsoled` copies
//! to its log (`/var/log/xen/guest-<name>.log` with `--log=guest`). `core`
//! only, no allocation.
//!
//! ```text
//!  0           1024                 3072    3076    3080     3084
//!  ┌───────────┬────────────────────┬───────┬───────┬────────┬────────┐
//!  │ in[1024]  │ out[2048]          │in_cons│in_prod│out_cons│out_prod│
//!  │ dom0→guest│ guest→dom0         │ guest │ dom0  │  dom0  │ guest  │
//!  └───────────┴────────────────────┴───────┴───────┴────────┴────────┘
//! ```
//!
//! Indices are free-running `u32`s (`MASK_XENCONS_IDX`). As in
//! [`crate::xenstore::ring`], the guest keeps its own copies of the indices it
//! owns (`out_prod`, `in_cons`) and checks that the ones dom0 writes stay
//! within one ring of them ([`ConsoleError::BadIndex`]); the bytes are
//! copied with volatile accesses, the indices are atomics. Event-channel
//! signalling comes from the kernel through [`Events`].

use core::fmt;
use core::mem::offset_of;
use core::sync::atomic::Ordering;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::shared::SharedMem;

pub use crate::xenstore::ring::Events;

/// Bytes of the guest→dom0 ring (`sizeof(out)`).
///
/// # Examples
///
/// ```
/// use coresident_xen::guest::console::OUT_SIZE;
///
/// assert_eq!(OUT_SIZE, 2048);
/// ```
pub const OUT_SIZE: usize = 2048;
/// Bytes of the dom0→guest ring (`sizeof(in)`).
///
/// # Examples
///
/// ```
/// use coresident_xen::guest::console::{XenconsInterface, IN_SIZE, OUT_SIZE};
///
/// assert_eq!(size_of::<XenconsInterface>(), IN_SIZE + OUT_SIZE + 4 * 4);
/// ```
pub const IN_SIZE: usize = 1024;

/// `xen/include/public/io/console.h`: `struct xencons_interface`. Only its
/// layout is used; the live page is never behind a reference of this type.
///
/// # Examples
///
/// ```
/// use core::mem::offset_of;
/// use coresident_xen::guest::console::XenconsInterface as Xi;
///
/// assert_eq!((offset_of!(Xi, out), offset_of!(Xi, in_cons), offset_of!(Xi, out_prod)), (1024, 3072, 3084));
/// ```
#[repr(C)]
#[derive(Clone, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct XenconsInterface {
    /// Input from dom0 (`in`).
    pub input: [u8; IN_SIZE],
    /// Output to dom0.
    pub out: [u8; OUT_SIZE],
    /// Written by the guest: input bytes consumed.
    pub in_cons: u32,
    /// Written by dom0: input bytes produced.
    pub in_prod: u32,
    /// Written by dom0: output bytes consumed.
    pub out_cons: u32,
    /// Written by the guest: output bytes produced.
    pub out_prod: u32,
}
const _: () = assert!(size_of::<XenconsInterface>() == 3088);

const IN: usize = offset_of!(XenconsInterface, input);
const OUT: usize = offset_of!(XenconsInterface, out);
const IN_CONS: usize = offset_of!(XenconsInterface, in_cons);
const IN_PROD: usize = offset_of!(XenconsInterface, in_prod);
const OUT_CONS: usize = offset_of!(XenconsInterface, out_cons);
const OUT_PROD: usize = offset_of!(XenconsInterface, out_prod);
const _: () = assert!(IN == 0 && OUT == 1024 && IN_CONS == 3072 && OUT_PROD == 3084);

/// A failure of [`ConsoleRing`].
///
/// # Examples
///
/// ```
/// use coresident_xen::guest::console::ConsoleError;
///
/// assert_eq!(ConsoleError::TimedOut.to_string(), "console ring full: nobody reads it");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConsoleError {
    /// The page pointer is null or not 4-aligned.
    BadPage,
    /// dom0's `out_cons` (or `in_prod`) is not within one ring of ours.
    BadIndex {
        /// Its value.
        peer: u32,
        /// Our index it was checked against.
        ours: u32,
    },
    /// [`Events::wait`] gave up with the ring still full (no console
    /// daemon is reading); part of the output was dropped.
    TimedOut,
    /// An earlier index error: the ring is not used again.
    Broken,
}

impl fmt::Display for ConsoleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadPage => f.write_str("console ring page is null or misaligned"),
            Self::BadIndex { peer, ours } => {
                write!(
                    f,
                    "console ring index {peer} is not within one ring of {ours}"
                )
            }
            Self::TimedOut => f.write_str("console ring full: nobody reads it"),
            Self::Broken => f.write_str("console ring unusable after an earlier error"),
        }
    }
}

impl core::error::Error for ConsoleError {}

/// The guest's end of the PV console.
///
/// # Examples
///
/// ```
/// # use coresident_xen::guest::console::{ConsoleError, ConsoleRing, Events};
/// # struct Port(u32);
/// # impl Events for Port { fn notify(&mut self) { self.0 += 1 } fn wait(&mut self) -> bool { false } }
/// let mut page = Box::new([0u32; 1024]); // zeroed: an empty console page
/// // SAFETY: the page outlives the console and is touched by nothing else.
/// let mut con = unsafe { ConsoleRing::new(page.as_mut_ptr().cast(), Port(0)) }?;
/// con.write(b"hello\n")?;
/// let mut input = [0u8; 16];
/// assert_eq!(con.read(&mut input)?, 0); // dom0 typed nothing
/// # Ok::<(), ConsoleError>(())
/// ```
pub struct ConsoleRing<E: Events> {
    /// The interface: 4-aligned, `size_of::<XenconsInterface>()` bytes,
    /// valid while `self` lives (`new`); every access checked, atomic or
    /// volatile, never through a reference.
    page: SharedMem,
    events: E,
    /// Our copy of `out_prod`.
    out_prod: u32,
    /// Our copy of `in_cons`.
    in_cons: u32,
    broken: bool,
}

impl<E: Events> fmt::Debug for ConsoleRing<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsoleRing")
            .field("page", &self.page)
            .field("out_prod", &self.out_prod)
            .field("in_cons", &self.in_cons)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl<E: Events> ConsoleRing<E> {
    /// The console over the page at `page`, signalled through `events`,
    /// starting from the indices it finds there.
    ///
    /// # Errors
    ///
    /// [`ConsoleError::BadPage`]; [`ConsoleError::BadIndex`] for indices
    /// that are not within one ring of each other.
    ///
    /// # Safety
    ///
    /// - `page` is valid for reads and writes of
    ///   `size_of::<XenconsInterface>()` bytes while the console lives (the
    ///   mapped console page of `start_info`);
    /// - nothing in this domain accesses those bytes meanwhile except
    ///   through atomics or volatile accesses (dom0 may write them at any
    ///   time).
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::guest::console::{ConsoleError, ConsoleRing, Events};
    /// # struct Port;
    /// # impl Events for Port { fn notify(&mut self) {} fn wait(&mut self) -> bool { false } }
    ///
    /// // SAFETY: a null page is refused before it is touched.
    /// let r = unsafe { ConsoleRing::new(core::ptr::null_mut(), Port) };
    /// assert_eq!(r.err(), Some(ConsoleError::BadPage));
    /// ```
    pub unsafe fn new(page: *mut u8, events: E) -> Result<Self, ConsoleError> {
        if page.is_null() || (page as usize) % 4 != 0 {
            return Err(ConsoleError::BadPage);
        }
        // SAFETY: `page` is valid for the interface's bytes while the
        // console lives, touched only through atomics and volatile accesses
        // here (this function's contract).
        let page = unsafe { SharedMem::new(page, size_of::<XenconsInterface>()) };
        let mut c = Self {
            page,
            events,
            out_prod: 0,
            in_cons: 0,
            broken: false,
        };
        c.out_prod = c.load(OUT_PROD, Ordering::Relaxed)?;
        c.in_cons = c.load(IN_CONS, Ordering::Relaxed)?;
        c.out_space()?;
        c.in_avail()?;
        Ok(c)
    }

    /// The kernel's event-channel half.
    ///
    /// # Examples
    ///
    /// ```
    /// # use coresident_xen::guest::console::{ConsoleError, ConsoleRing, Events};
    /// # struct Port(u32);
    /// # impl Events for Port { fn notify(&mut self) { self.0 += 1 } fn wait(&mut self) -> bool { false } }
    /// let mut page = Box::new([0u32; 1024]); // zeroed: an empty console page
    /// // SAFETY: the page outlives the console and is touched by nothing else.
    /// let mut con = unsafe { ConsoleRing::new(page.as_mut_ptr().cast(), Port(0)) }?;
    /// con.write(b"boot\n")?;
    /// assert_eq!(con.events_mut().0, 1); // dom0 was signalled once
    /// # Ok::<(), ConsoleError>(())
    /// ```
    pub fn events_mut(&mut self) -> &mut E {
        &mut self.events
    }

    /// Atomically loads the index at `off` (a constant offset of
    /// `XenconsInterface`: never [`ConsoleError::BadPage`] for them).
    fn load(&self, off: usize, order: Ordering) -> Result<u32, ConsoleError> {
        self.page
            .load_u32(off, order)
            .map_err(|_| ConsoleError::BadPage)
    }

    /// Atomically stores our index `v` at `off` with `Release`.
    fn store_release(&self, off: usize, v: u32) -> Result<(), ConsoleError> {
        self.page
            .store_u32(off, v, Ordering::Release)
            .map_err(|_| ConsoleError::BadPage)
    }

    fn fail<T>(&mut self, peer: u32, ours: u32) -> Result<T, ConsoleError> {
        self.broken = true;
        Err(ConsoleError::BadIndex { peer, ours })
    }

    /// Free bytes in `out`, checking dom0's `out_cons`.
    fn out_space(&mut self) -> Result<usize, ConsoleError> {
        // SYNC: out-cons. xenconsoled copied the bytes before its Release of
        // `out_cons`; after this Acquire we may overwrite them.
        let cons = self.load(OUT_CONS, Ordering::Acquire)?;
        let used = self.out_prod.wrapping_sub(cons) as usize;
        if used > OUT_SIZE {
            return self.fail(cons, self.out_prod);
        }
        Ok(OUT_SIZE - used)
    }

    /// Input bytes available, checking dom0's `in_prod`.
    fn in_avail(&mut self) -> Result<usize, ConsoleError> {
        // SYNC: in-prod. dom0 wrote the input before its Release of `in_prod`.
        let prod = self.load(IN_PROD, Ordering::Acquire)?;
        let avail = prod.wrapping_sub(self.in_cons) as usize;
        if avail > IN_SIZE {
            return self.fail(prod, self.in_cons);
        }
        Ok(avail)
    }

    /// Writes all of `bytes`, waiting for space when the ring is full, and
    /// signals dom0.
    ///
    /// # Errors
    ///
    /// [`ConsoleError::TimedOut`] if the ring stays full (the bytes that
    /// fit were written); [`ConsoleError::BadIndex`],
    /// [`ConsoleError::Broken`].
    ///
    /// # Examples
    ///
    /// ```
    /// use coresident_xen::guest::console::OUT_SIZE;
    /// # use coresident_xen::guest::console::{ConsoleError, ConsoleRing, Events};
    /// # struct Port(u32);
    /// # impl Events for Port { fn notify(&mut self) { self.0 += 1 } fn wait(&mut self) -> bool { false } }
    /// let mut page = Box::new([0u32; 1024]); // zeroed: an empty console page
    /// // SAFETY: the page outlives the console and is touched by nothing else.
    /// let mut con = unsafe { ConsoleRing::new(page.as_mut_ptr().cast(), Port(0)) }?;
    /// con.write(b"hello from a PV guest\n")?;
    /// // The ring is full after OUT_SIZE unread bytes: nobody reads it here.
    /// assert_eq!(con.write(&[b'x'; OUT_SIZE]), Err(ConsoleError::TimedOut));
    /// # Ok::<(), ConsoleError>(())
    /// ```
    pub fn write(&mut self, mut bytes: &[u8]) -> Result<(), ConsoleError> {
        if self.broken {
            return Err(ConsoleError::Broken);
        }
        while !bytes.is_empty() {
            let free = self.out_space()?;
            if free == 0 {
                self.events.notify();
                if !self.events.wait() {
                    return Err(ConsoleError::TimedOut);
                }
                continue;
            }
            let slot = self.out_prod as usize % OUT_SIZE;
            let n = free.min(bytes.len()).min(OUT_SIZE - slot);
            let (now, rest) = bytes.split_at(n);
            // `slot + n <= OUT_SIZE`: inside `out`. dom0 reads these bytes
            // only after our Release of `out_prod` below.
            self.page
                .write_bytes(OUT + slot, now)
                .map_err(|_| ConsoleError::BadPage)?;
            self.out_prod = self.out_prod.wrapping_add(n as u32);
            // SYNC: out-prod. The bytes above are visible to xenconsoled once it
            // Acquires this `out_prod`.
            self.store_release(OUT_PROD, self.out_prod)?;
            bytes = rest;
        }
        self.events.notify();
        Ok(())
    }

    /// Copies available input into `out` without waiting; returns the
    /// number of bytes copied.
    ///
    /// # Errors
    ///
    /// [`ConsoleError::BadIndex`], [`ConsoleError::Broken`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use coresident_xen::guest::console::{ConsoleError, ConsoleRing, Events};
    /// # struct Port(u32);
    /// # impl Events for Port { fn notify(&mut self) { self.0 += 1 } fn wait(&mut self) -> bool { false } }
    /// let mut page = Box::new([0u32; 1024]); // zeroed: an empty console page
    /// // SAFETY: the page outlives the console and is touched by nothing else.
    /// let mut con = unsafe { ConsoleRing::new(page.as_mut_ptr().cast(), Port(0)) }?;
    /// let mut buf = [0u8; 64];
    /// assert_eq!(con.read(&mut buf)?, 0); // nothing typed on dom0's side; no wait
    /// # Ok::<(), ConsoleError>(())
    /// ```
    pub fn read(&mut self, out: &mut [u8]) -> Result<usize, ConsoleError> {
        if self.broken {
            return Err(ConsoleError::Broken);
        }
        let mut filled = 0;
        loop {
            let avail = self.in_avail()?;
            let slot = self.in_cons as usize % IN_SIZE;
            let rest = out.get_mut(filled..).unwrap_or(&mut []);
            let n = avail.min(rest.len()).min(IN_SIZE - slot);
            if n == 0 {
                break;
            }
            // `slot + n <= IN_SIZE`: inside `in`; bytes dom0 may change are
            // wrong bytes at worst.
            let dst = rest.get_mut(..n).unwrap_or(&mut []);
            self.page
                .read_bytes(IN + slot, dst)
                .map_err(|_| ConsoleError::BadPage)?;
            filled += n;
            self.in_cons = self.in_cons.wrapping_add(n as u32);
            // SYNC: in-cons. Our reads are done before dom0 Acquires `in_cons`.
            self.store_release(IN_CONS, self.in_cons)?;
        }
        if filled > 0 {
            self.events.notify();
        }
        Ok(filled)
    }
}

/// Formatted output (`writeln!(console, ...)`); a [`ConsoleError`] becomes
/// [`fmt::Error`].
impl<E: Events> fmt::Write for ConsoleRing<E> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.write(s.as_bytes()).map_err(|_| fmt::Error)
    }
}

#[cfg(test)]
mod tests {
    //! A simulated xenconsoled that drains `out` (and feeds `in`) inside
    //! `Events::wait`.
    extern crate std;
    use super::*;
    use core::fmt::Write as _;
    use core::sync::atomic::AtomicU32;
    use std::vec::Vec;

    #[derive(Clone, Copy)]
    struct Page(*mut u8);

    impl Page {
        fn word(self, off: usize) -> &'static AtomicU32 {
            // SAFETY: a 4-aligned 4096-byte page alive until the test
            // thread ends (`xenstore::fake::ring::new_page`); `off` a word in it.
            unsafe { AtomicU32::from_ptr(self.0.add(off).cast()) }
        }
        fn byte(self, off: usize) -> u8 {
            // SAFETY: as in `word`, any offset below 4096.
            unsafe { self.0.add(off).read_volatile() }
        }
        fn put(self, off: usize, v: u8) {
            // SAFETY: as in `byte`.
            unsafe { self.0.add(off).write_volatile(v) }
        }
    }

    struct Consoled {
        page: Page,
        log: Vec<u8>,
        /// Bytes taken per wait (0: a console nobody reads).
        per_wait: usize,
        waits: u32,
        notifies: u32,
    }

    impl Consoled {
        fn drain(&mut self) {
            let prod = self.page.word(OUT_PROD).load(Ordering::Acquire);
            let mut cons = self.page.word(OUT_CONS).load(Ordering::Relaxed);
            let mut took = 0;
            while cons != prod && took < self.per_wait {
                self.log
                    .push(self.page.byte(OUT + cons as usize % OUT_SIZE));
                cons = cons.wrapping_add(1);
                took += 1;
            }
            self.page.word(OUT_CONS).store(cons, Ordering::Release);
        }
        fn type_in(&mut self, bytes: &[u8]) {
            let mut prod = self.page.word(IN_PROD).load(Ordering::Relaxed);
            for &b in bytes {
                self.page.put(IN + prod as usize % IN_SIZE, b);
                prod = prod.wrapping_add(1);
            }
            self.page.word(IN_PROD).store(prod, Ordering::Release);
        }
    }

    impl Events for Consoled {
        fn notify(&mut self) {
            self.notifies += 1;
        }
        fn wait(&mut self) -> bool {
            self.waits += 1;
            self.drain();
            self.waits < 10_000
        }
    }

    fn console(start: u32, per_wait: usize) -> ConsoleRing<Consoled> {
        let page = Page(crate::xenstore::fake::ring::new_page().0);
        for off in [IN_CONS, IN_PROD, OUT_CONS, OUT_PROD] {
            page.word(off).store(start, Ordering::Relaxed);
        }
        let d = Consoled {
            page,
            log: Vec::new(),
            per_wait,
            waits: 0,
            notifies: 0,
        };
        // SAFETY: a page alive until the test thread ends, accessed only
        // through atomics and volatile accesses by the console and the
        // simulated daemon.
        unsafe { ConsoleRing::new(page.0, d) }.unwrap()
    }

    #[test]
    fn output_reaches_the_daemon_in_order_across_wraps() {
        for start in [0, u32::MAX - 100] {
            let mut c = console(start, 700);
            let mut want = Vec::new();
            for i in 0..200 {
                let line = std::format!("line {i}: {}\n", "x".repeat(i % 97));
                want.extend_from_slice(line.as_bytes());
                c.write_str(&line).unwrap();
            }
            writeln!(c, "PASS {}", 42).unwrap();
            want.extend_from_slice(b"PASS 42\n");
            let d = c.events_mut();
            d.per_wait = usize::MAX;
            d.drain();
            assert_eq!(d.log, want);
            assert!(d.waits > 0, "a full ring was waited on");
            assert!(d.notifies >= 201);
        }
    }

    #[test]
    fn a_console_nobody_reads_times_out_after_filling() {
        let mut c = console(0, 0);
        assert_eq!(c.write(&[b'a'; 5000]), Err(ConsoleError::TimedOut));
        let d = c.events_mut();
        d.per_wait = usize::MAX;
        d.drain();
        assert_eq!(d.log.len(), OUT_SIZE);
    }

    #[test]
    fn input_is_read_without_waiting() {
        let mut c = console(u32::MAX - 3, 0);
        let mut buf = [0u8; 64];
        assert_eq!(c.read(&mut buf), Ok(0));
        c.events_mut().type_in(b"hello, guest");
        assert_eq!(c.read(&mut buf[..5]), Ok(5));
        assert_eq!(&buf[..5], b"hello");
        assert_eq!(c.read(&mut buf), Ok(7));
        assert_eq!(&buf[..7], b", guest");
        assert_eq!(c.events_mut().waits, 0);
    }

    #[test]
    fn hostile_indices_are_refused_for_good() {
        let mut c = console(0, 0);
        let p = c.events_mut().page;
        // out_cons ahead of our out_prod.
        p.word(OUT_CONS).store(1, Ordering::Release);
        assert_eq!(
            c.write(b"x"),
            Err(ConsoleError::BadIndex { peer: 1, ours: 0 })
        );
        assert_eq!(c.write(b"x"), Err(ConsoleError::Broken));
        assert_eq!(c.read(&mut [0; 4]), Err(ConsoleError::Broken));

        let mut c = console(0, 0);
        let p = c.events_mut().page;
        p.word(IN_PROD).store(IN_SIZE as u32 + 1, Ordering::Release);
        assert_eq!(
            c.read(&mut [0; 4]),
            Err(ConsoleError::BadIndex {
                peer: IN_SIZE as u32 + 1,
                ours: 0
            })
        );
        // A page with inconsistent indices is refused up front.
        let page = Page(crate::xenstore::fake::ring::new_page().0);
        page.word(OUT_CONS).store(5000, Ordering::Relaxed);
        let d = Consoled {
            page,
            log: Vec::new(),
            per_wait: 0,
            waits: 0,
            notifies: 0,
        };
        // SAFETY: as in `console`.
        let e = unsafe { ConsoleRing::new(page.0, d) }.unwrap_err();
        assert!(matches!(e, ConsoleError::BadIndex { .. }));
    }
}
