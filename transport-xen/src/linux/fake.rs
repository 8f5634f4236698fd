//! An in-process fake of the Xen drivers behind [`Sys`], for unit tests:
//! gntalloc pages are heap pages, gntdev maps the same pages back by grant
//! reference, event channels link ports in pairs, and the unmap-notify
//! actions run when a share or mapping is released.
//!
//! An event-channel descriptor is a real eventfd, readable while a port
//! is pending (one queue for every descriptor, as every port here is
//! between domain 0 and itself), so `poll` on it, alone or beside another
//! descriptor, waits as on `/dev/xen/evtchn`.

use core::ffi::{c_int, c_void};
use core::ptr::NonNull;
use core::time::Duration;
use std::alloc::Layout;
use std::collections::{HashMap, VecDeque};
use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};

use zerocopy::{FromBytes, IntoBytes};

use crate::linux::evtchn::*;
use crate::linux::gntalloc::*;
use crate::linux::gntdev::*;
use crate::linux::privcmd::*;
use crate::linux::sys::{Errno, Opcode, Sys, PAGE_SIZE};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Gntalloc,
    Gntdev,
    Evtchn,
    Privcmd,
}

#[derive(Debug, Default)]
struct Region {
    addr: usize,
    len: usize,
    notify: Option<IoctlUnmapNotify>,
    mapped: bool,
}

#[derive(Debug, Default)]
pub(crate) struct State {
    fds: HashMap<RawFd, Kind>,
    allocs: Vec<(usize, Layout)>,
    /// grant ref -> page address.
    grants: HashMap<u32, usize>,
    next_gref: u32,
    /// (kind, mmap index) -> region.
    regions: HashMap<(Kind, u64), Region>,
    next_index: u64,
    /// local port -> peer port (None while unbound).
    ports: HashMap<u32, Option<u32>>,
    next_port: u32,
    pending: VecDeque<u32>,
    masked: Vec<u32>,
    /// A second handle on each event-channel descriptor (an eventfd):
    /// signalled while `pending` is not empty.
    evfds: Vec<OwnedFd>,
    /// Every ioctl issued, in order.
    pub(crate) calls: Vec<Opcode>,
    /// Make the next ioctl with this opcode fail.
    pub(crate) fail: Option<(Opcode, Errno)>,
    /// Whether `/dev/xen/privcmd` opens (it does not by default: the
    /// transport then works as without privcmd).
    pub(crate) privcmd: bool,
    /// Hypercalls made through privcmd.
    pub(crate) hypercalls: usize,
    pub(crate) munmaps: usize,
}

impl Drop for State {
    fn drop(&mut self) {
        for &(addr, layout) in &self.allocs {
            // SAFETY:
            // - `addr` came from `alloc_zeroed(layout)` in `ioctl` and is
            //   freed only here, once.
            unsafe { std::alloc::dealloc(addr as *mut u8, layout) };
        }
    }
}

#[derive(Clone, Debug, Default)]
pub(crate) struct FakeXen(Arc<Mutex<State>>);

impl FakeXen {
    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap()
    }
}

impl State {
    /// What Xen does to the survivor when the domain owning `port`'s peer
    /// dies: the peer's end is closed and ours becomes unbound, with no
    /// event (Xen's `evtchn_close`).
    pub(crate) fn destroy_peer_of(&mut self, port: u32) {
        if let Some(Some(peer)) = self.ports.insert(port, None) {
            self.ports.remove(&peer);
            self.pending.retain(|&p| p != peer);
            self.signal();
        }
    }

    fn raise(&mut self, port: u32) {
        if let Some(Some(peer)) = self.ports.get(&port).copied() {
            if !self.pending.contains(&peer) && !self.masked.contains(&peer) {
                self.pending.push_back(peer);
                self.signal();
            }
        }
    }

    /// Makes every event-channel descriptor readable while a port is
    /// pending, and not readable otherwise.
    fn signal(&mut self) {
        for fd in &self.evfds {
            if self.pending.is_empty() {
                let mut buf = [0u8; 8];
                let _ = rustix::io::read(fd, &mut buf);
            } else {
                let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
            }
        }
    }

    fn release(&mut self, kind: Kind, index: u64) {
        if let Some(r) = self.regions.remove(&(kind, index)) {
            if let Some(n) = r.notify {
                let off = usize::try_from(n.index - index).unwrap();
                if n.action & UNMAP_NOTIFY_CLEAR_BYTE != 0 {
                    // SAFETY:
                    // - `off < r.len` (checked by `notify_arg`), and the
                    //   pages stay allocated until the state drops.
                    unsafe { ((r.addr + off) as *mut u8).write_volatile(0) };
                }
                if n.action & UNMAP_NOTIFY_SEND_EVENT != 0 {
                    self.raise(n.event_channel_port);
                }
            }
        }
    }
}

/// Copies `T` out of an ioctl argument.
///
/// # Safety
///
/// - `arg` is valid for reads of `size_of::<T>()` bytes.
unsafe fn get<T: FromBytes>(arg: *const c_void) -> T {
    // SAFETY:
    // - The caller guarantees `size_of::<T>()` readable bytes.
    let b = unsafe { core::slice::from_raw_parts(arg.cast::<u8>(), size_of::<T>()) };
    T::read_from_bytes(b).unwrap()
}

/// Copies `bytes` into an ioctl argument at `off`.
///
/// # Safety
///
/// - `arg + off .. + bytes.len()` is valid for writes.
unsafe fn put(arg: *mut c_void, off: usize, bytes: &[u8]) {
    // SAFETY:
    // - The caller guarantees the range is writable; `bytes` is a
    //   separate local, so they do not overlap.
    unsafe {
        core::ptr::copy_nonoverlapping(bytes.as_ptr(), arg.cast::<u8>().add(off), bytes.len())
    };
}

impl Sys for FakeXen {
    fn open(&self, path: &CStr) -> Result<OwnedFd, Errno> {
        let kind = match path.to_bytes() {
            b"/dev/xen/gntalloc" => Kind::Gntalloc,
            b"/dev/xen/gntdev" => Kind::Gntdev,
            b"/dev/xen/evtchn" => Kind::Evtchn,
            b"/dev/xen/privcmd" if self.state().privcmd => Kind::Privcmd,
            _ => return Err(Errno::NOENT),
        };
        let fd: OwnedFd = if kind == Kind::Evtchn {
            rustix::event::eventfd(0, rustix::event::EventfdFlags::NONBLOCK)?
        } else {
            std::fs::File::open("/dev/null").unwrap().into()
        };
        let mut st = self.state();
        st.fds.insert(fd.as_raw_fd(), kind);
        if kind == Kind::Evtchn {
            let second = fd.try_clone().map_err(|_| Errno::MFILE)?;
            st.evfds.push(second);
            st.signal();
        }
        Ok(fd)
    }

    unsafe fn ioctl(
        &self,
        fd: BorrowedFd<'_>,
        opcode: Opcode,
        arg: *mut c_void,
    ) -> Result<c_int, Errno> {
        let mut st = self.state();
        st.calls.push(opcode);
        if let Some((op, e)) = st.fail {
            if op == opcode {
                st.fail = None;
                return Err(e);
            }
        }
        let kind = *st.fds.get(&fd.as_raw_fd()).ok_or(Errno::BADF)?;
        match (kind, opcode) {
            (Kind::Gntalloc, IOCTL_GNTALLOC_ALLOC_GREF) => {
                // SAFETY: the `Sys::ioctl` contract: a whole header and
                // `count` refs after it.
                let h: IoctlGntallocAllocGref = unsafe { get(arg) };
                let n = h.count as usize;
                let layout = Layout::from_size_align(n * PAGE_SIZE, PAGE_SIZE).unwrap();
                // SAFETY: `layout` has a non-zero size (count >= 1).
                let addr = unsafe { std::alloc::alloc_zeroed(layout) } as usize;
                st.allocs.push((addr, layout));
                let index = st.next_index;
                st.next_index += (n * PAGE_SIZE) as u64;
                // SAFETY: the header's `index` field (offset 8) is writable.
                unsafe { put(arg, 8, index.as_bytes()) };
                for i in 0..n {
                    // Like Xen: references below 8 are reserved.
                    st.next_gref = st.next_gref.max(crate::protocol::crxg::FIRST_GRANT_REF - 1) + 1;
                    let g = st.next_gref;
                    st.grants.insert(g, addr + i * PAGE_SIZE);
                    // SAFETY: slot `i` of `count` refs after the header.
                    unsafe { put(arg, 16 + 4 * i, g.as_bytes()) };
                }
                let len = n * PAGE_SIZE;
                st.regions.insert(
                    (kind, index),
                    Region {
                        addr,
                        len,
                        ..Default::default()
                    },
                );
                Ok(0)
            }
            (Kind::Gntalloc, IOCTL_GNTALLOC_DEALLOC_GREF) => {
                // SAFETY: the whole argument struct.
                let a: IoctlGntallocDeallocGref = unsafe { get(arg) };
                st.release(kind, a.index);
                Ok(0)
            }
            (Kind::Gntdev, IOCTL_GNTDEV_MAP_GRANT_REF) => {
                // SAFETY: the header.
                let h: IoctlGntdevMapGrantRef = unsafe { get(arg) };
                let n = h.count as usize;
                let mut addrs = Vec::new();
                for i in 0..n {
                    // SAFETY: ref `i` of `count` after the header.
                    let r: IoctlGntdevGrantRef =
                        unsafe { get(arg.cast::<u8>().add(16 + 8 * i).cast()) };
                    addrs.push(*st.grants.get(&r.r#ref).ok_or(Errno::INVAL)?);
                }
                // The fake maps only runs of consecutive pages.
                if addrs.windows(2).any(|w| w[1] != w[0] + PAGE_SIZE) {
                    return Err(Errno::NOSYS);
                }
                let index = st.next_index;
                st.next_index += (n * PAGE_SIZE) as u64;
                // SAFETY: the header's `index` field (offset 8) is writable.
                unsafe { put(arg, 8, index.as_bytes()) };
                let region = Region {
                    addr: addrs[0],
                    len: n * PAGE_SIZE,
                    ..Default::default()
                };
                st.regions.insert((kind, index), region);
                Ok(0)
            }
            (Kind::Gntdev, IOCTL_GNTDEV_UNMAP_GRANT_REF) => {
                // SAFETY: the whole argument struct.
                let a: IoctlGntdevUnmapGrantRef = unsafe { get(arg) };
                st.release(kind, a.index);
                Ok(0)
            }
            (Kind::Gntalloc, IOCTL_GNTALLOC_SET_UNMAP_NOTIFY)
            | (Kind::Gntdev, IOCTL_GNTDEV_SET_UNMAP_NOTIFY) => {
                // SAFETY: the whole argument struct.
                let a: IoctlUnmapNotify = unsafe { get(arg) };
                let r = st
                    .regions
                    .iter_mut()
                    .find(|((k, i), r)| *k == kind && a.index >= *i && a.index < *i + r.len as u64)
                    .ok_or(Errno::NOENT)?;
                r.1.notify = Some(a);
                Ok(0)
            }
            (Kind::Evtchn, IOCTL_EVTCHN_BIND_UNBOUND_PORT) => {
                st.next_port += 1;
                let p = st.next_port;
                st.ports.insert(p, None);
                Ok(p as c_int)
            }
            (Kind::Evtchn, IOCTL_EVTCHN_BIND_INTERDOMAIN) => {
                // SAFETY: the whole argument struct.
                let a: IoctlEvtchnBindInterdomain = unsafe { get(arg) };
                if st.ports.get(&a.remote_port) != Some(&None) {
                    return Err(Errno::INVAL);
                }
                st.next_port += 1;
                let p = st.next_port;
                st.ports.insert(p, Some(a.remote_port));
                st.ports.insert(a.remote_port, Some(p));
                // Like Xen: the new local port starts pending.
                st.pending.push_back(p);
                st.signal();
                Ok(p as c_int)
            }
            (Kind::Evtchn, IOCTL_EVTCHN_NOTIFY) => {
                // SAFETY: the whole argument struct.
                let a: IoctlEvtchnNotify = unsafe { get(arg) };
                if !matches!(st.ports.get(&a.port), Some(Some(_))) {
                    return Err(Errno::NOTCONN);
                }
                st.raise(a.port);
                Ok(0)
            }
            (Kind::Evtchn, IOCTL_EVTCHN_UNBIND) => {
                // SAFETY: the whole argument struct.
                let a: IoctlEvtchnUnbind = unsafe { get(arg) };
                st.ports.remove(&a.port).ok_or(Errno::NOTCONN)?;
                Ok(0)
            }
            (Kind::Privcmd, IOCTL_PRIVCMD_HYPERCALL) => {
                // SAFETY: the whole argument struct.
                let h: PrivcmdHypercall = unsafe { get(arg) };
                st.hypercalls += 1;
                if h.op != HYPERVISOR_EVENT_CHANNEL_OP || h.arg[0] != EVTCHNOP_STATUS {
                    return Err(Errno::NOSYS);
                }
                let status = h.arg[1] as usize as *mut c_void;
                // SAFETY: `EVTCHNOP_status`'s argument is a whole `struct
                // evtchn_status` (the caller's contract, as with Xen).
                let mut s: EvtchnStatus = unsafe { get(status) };
                if s.dom != DOMID_SELF {
                    return Err(Errno::PERM);
                }
                // All ports are between domain 0 and itself here. Like
                // Xen: a port once allocated and now free is closed, one
                // never allocated is invalid.
                match st.ports.get(&s.port) {
                    Some(None) => s.status = EVTCHNSTAT_UNBOUND,
                    Some(Some(peer)) => {
                        s.status = EVTCHNSTAT_INTERDOMAIN;
                        s.remote_port = *peer;
                    }
                    None if s.port <= st.next_port => s.status = EVTCHNSTAT_CLOSED,
                    None => return Err(Errno::INVAL),
                }
                s.remote_dom = 0;
                // SAFETY: as for the read above.
                unsafe { put(status, 0, s.as_bytes()) };
                Ok(0)
            }
            _ => Err(Errno::NOTTY),
        }
    }

    fn mmap_shared(
        &self,
        fd: BorrowedFd<'_>,
        len: usize,
        offset: u64,
    ) -> Result<NonNull<u8>, Errno> {
        let mut st = self.state();
        let kind = *st.fds.get(&fd.as_raw_fd()).ok_or(Errno::BADF)?;
        let r = st.regions.get_mut(&(kind, offset)).ok_or(Errno::INVAL)?;
        if r.len != len || r.mapped {
            return Err(Errno::INVAL);
        }
        r.mapped = true;
        NonNull::new(r.addr as *mut u8).ok_or(Errno::FAULT)
    }

    unsafe fn munmap(&self, _ptr: NonNull<u8>, _len: usize) -> Result<(), Errno> {
        self.state().munmaps += 1;
        Ok(())
    }

    fn read(&self, _fd: BorrowedFd<'_>, buf: &mut [u8]) -> Result<usize, Errno> {
        let mut st = self.state();
        let mut n = 0;
        while n + 4 <= buf.len() {
            let Some(p) = st.pending.pop_front() else {
                break;
            };
            st.masked.push(p);
            buf[n..n + 4].copy_from_slice(&p.to_ne_bytes());
            n += 4;
        }
        st.signal();
        if n == 0 {
            Err(Errno::AGAIN)
        } else {
            Ok(n)
        }
    }

    fn write(&self, _fd: BorrowedFd<'_>, buf: &[u8]) -> Result<usize, Errno> {
        let mut st = self.state();
        for c in buf.chunks_exact(4) {
            let p = u32::from_ne_bytes(c.try_into().unwrap());
            st.masked.retain(|&m| m != p);
        }
        Ok(buf.len())
    }

    fn poll_readable(&self, fd: BorrowedFd<'_>, t: Option<Duration>) -> Result<bool, Errno> {
        // A real wait on the eventfd (without the state's lock).
        crate::linux::sys::poll_readable(fd, t)
    }
}
