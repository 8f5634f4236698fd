//! A fake hypervisor for host tests of the kernel backend: "machine memory"
//! is a memfd, a frame is a page of it, and mapping a frame (own pages,
//! `update_va_mapping`, a grant map) is an `mmap` of that page at the
//! address, so two views of one frame really alias. It plays Xen's part for
//! the hypercalls the backend makes (grant table setup/map/unmap with
//! `GTF_reading`/`GTF_writing`, event channels with pending bits in a real
//! shared_info page, `bind_interdomain` leaving the local port pending) and
//! can fail a chosen hypercall.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::vec::Vec;

use rustix::fs::{ftruncate, memfd_create, MemfdFlags};
use rustix::mm::{mmap, mmap_anonymous, munmap, MapFlags, ProtFlags};

use super::event_channel::PENDING_OFFSET;
use super::grant_table::*;
use super::hypercall::Hypercall;
use super::{Kernel, KernelError, GRANT_FRAMES};
use crate::types::{DomId, EvtchnPort};

const FRAMES: u64 = 8192;
const PAGE: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Port {
    Free,
    Unbound(DomId),
    Interdomain(EvtchnPort),
}

#[derive(Debug, Default)]
pub(crate) struct State {
    next_mfn: u64,
    own: HashMap<usize, u64>,
    gnt_frames: Vec<u64>,
    ports: Vec<Port>,
    maps: HashMap<u32, (usize, u32)>,
    next_handle: u32,
    pub(crate) shared_mfn: u64,
    /// `(op, cmd, rc)`: the next hypercall `op` with first argument `cmd`
    /// returns `rc`.
    pub(crate) fail: Option<(u32, u64, i64)>,
    pub(crate) sends: u64,
    pub(crate) live_pages: usize,
    pub(crate) live_windows: usize,
}

#[derive(Debug)]
pub(crate) struct FakeXen {
    fd: OwnedFd,
    /// Xen's view: all of machine memory.
    xen: *mut u8,
    pub(crate) st: RefCell<State>,
    pub(crate) domid: DomId,
    pub(crate) idles: Cell<u64>,
    /// Calls of `relax` so far.
    pub(crate) relaxes: Cell<u64>,
    /// At this many `relax` calls, the peer unmaps every grant it maps
    /// (as a peer that unmaps a while after it said it left).
    pub(crate) peer_unmaps_at: Cell<Option<u64>>,
}

impl FakeXen {
    pub(crate) fn new(domid: DomId) -> Self {
        let fd = memfd_create("fake-xen", MemfdFlags::CLOEXEC).unwrap();
        ftruncate(&fd, FRAMES * PAGE as u64).unwrap();
        // SAFETY: a fresh shared mapping of the whole memfd, at an address
        // the kernel picks; unmapped never (the test process ends).
        let xen = unsafe {
            mmap(
                std::ptr::null_mut(),
                FRAMES as usize * PAGE,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &fd,
                0,
            )
        }
        .unwrap()
        .cast::<u8>();
        let st = State {
            next_mfn: 1,
            ports: vec![Port::Free],
            next_handle: 1,
            // Frame 0 plays shared_info: pass 0 to `Xen::new`.
            shared_mfn: 0,
            ..State::default()
        };
        Self {
            fd,
            xen,
            st: RefCell::new(st),
            domid,
            idles: Cell::new(0),
            relaxes: Cell::new(0),
            peer_unmaps_at: Cell::new(None),
        }
    }

    fn frame(&self, mfn: u64) -> *mut u8 {
        assert!(mfn < FRAMES);
        self.xen.wrapping_add(mfn as usize * PAGE)
    }

    fn alloc_mfns(&self, n: usize) -> u64 {
        let mut st = self.st.borrow_mut();
        let m = st.next_mfn;
        st.next_mfn += n as u64;
        assert!(st.next_mfn <= FRAMES, "fake machine memory exhausted");
        m
    }

    /// Maps frame `mfn` at `va` (fixed), like a page-table update.
    fn map_at(&self, va: usize, mfn: u64) {
        // SAFETY: `va` is a page the test's kernel owns (a window or its
        // own page); replacing its mapping is what the caller asked for.
        unsafe {
            mmap(
                va as *mut _,
                PAGE,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED | MapFlags::FIXED,
                &self.fd,
                mfn * PAGE as u64,
            )
        }
        .unwrap();
    }

    /// An empty page-table entry at `va`: any access faults.
    fn unmap_at(&self, va: usize) {
        // SAFETY: as in `map_at`.
        unsafe {
            mmap_anonymous(
                va as *mut _,
                PAGE,
                ProtFlags::empty(),
                MapFlags::PRIVATE | MapFlags::FIXED,
            )
        }
        .unwrap();
    }

    /// The grant entry `r` as Xen sees it: (flags, domid, frame).
    fn entry(&self, r: u32) -> Option<(&AtomicU16, u16, u32)> {
        let st = self.st.borrow();
        let f = *st.gnt_frames.get(r as usize / ENTRIES_PER_FRAME)?;
        let e = self
            .frame(f)
            .wrapping_add((r as usize % ENTRIES_PER_FRAME) * 8);
        // SAFETY: inside the grant frame, 8-aligned; accessed atomically by
        // the table and this fake.
        unsafe {
            Some((
                AtomicU16::from_ptr(e.cast()),
                AtomicU16::from_ptr(e.wrapping_add(2).cast()).load(Ordering::Acquire),
                std::sync::atomic::AtomicU32::from_ptr(e.wrapping_add(4).cast())
                    .load(Ordering::Acquire),
            ))
        }
    }

    /// Sets `GTF_reading`/`GTF_writing` on entry `r` as a mapping peer would.
    pub(crate) fn set_in_use(&self, r: u32, on: bool) {
        let (flags, ..) = self.entry(r).unwrap();
        if on {
            flags.fetch_or(GTF_READING | GTF_WRITING, Ordering::AcqRel);
        } else {
            flags.fetch_and(!(GTF_READING | GTF_WRITING), Ordering::AcqRel);
        }
    }

    fn set_pending(&self, port: EvtchnPort) {
        let shared = self.frame(self.st.borrow().shared_mfn);
        let w = shared.wrapping_add(PENDING_OFFSET + (port as usize / 64) * 8);
        // SAFETY: inside the shared_info frame, 8-aligned, atomic access.
        unsafe { AtomicU64::from_ptr(w.cast()).fetch_or(1 << (port % 64), Ordering::AcqRel) };
    }

    /// What Xen does to a destroyed domain's end of `port`'s channel: it
    /// closes it, and the survivor's end becomes unbound. No live byte is
    /// cleared.
    pub(crate) fn destroy_peer_of(&self, port: EvtchnPort) {
        let mut st = self.st.borrow_mut();
        if let Some(&Port::Interdomain(peer)) = st.ports.get(port as usize) {
            st.ports[peer as usize] = Port::Free;
            st.ports[port as usize] = Port::Unbound(self.domid);
        }
    }

    /// What the peer's unmapping of everything it maps does: the frames
    /// go from its windows, the grants' in-use flags clear; its handles
    /// are stale from then on. (The peer here is this same test process,
    /// whose doorbell still writes its live byte when dropped: its pages
    /// become scratch memory, not faulting holes.)
    pub(crate) fn peer_unmaps_all(&self) {
        let maps: Vec<(usize, u32)> = self.st.borrow_mut().maps.drain().map(|(_, m)| m).collect();
        for (va, gref) in maps {
            // SAFETY: `va` is a page of a window the test's kernel maps
            // grants at; replacing it is the unmap being imitated.
            unsafe {
                mmap_anonymous(
                    va as *mut _,
                    PAGE,
                    ProtFlags::READ | ProtFlags::WRITE,
                    MapFlags::PRIVATE | MapFlags::FIXED,
                )
            }
            .unwrap();
            self.set_in_use(gref, false);
        }
    }

    /// Xen's system time moves on by 1 ms (vCPU 0's `system_time`;
    /// `tsc_to_system_mul` stays 0, so only this moves it).
    fn tick(&self) {
        let shared = self.frame(self.st.borrow().shared_mfn);
        let t = shared.wrapping_add(super::event_channel::TIME_OFFSET + 16);
        // SAFETY: vCPU 0's system_time in the shared_info frame, 8-aligned.
        unsafe { AtomicU64::from_ptr(t.cast()).fetch_add(1_000_000, Ordering::AcqRel) };
    }

    pub(crate) fn maps(&self) -> usize {
        self.st.borrow().maps.len()
    }

    fn grant_op(&self, cmd: u64, ptr: u64, count: u64) -> i64 {
        match cmd as u32 {
            GNTTABOP_SETUP_TABLE => {
                // SAFETY: the caller passes a live GnttabSetupTable.
                let st = unsafe { &mut *(ptr as *mut GnttabSetupTable) };
                if st.nr_frames as usize != GRANT_FRAMES {
                    st.status = -1;
                    return 0;
                }
                let m = self.alloc_mfns(GRANT_FRAMES);
                self.st.borrow_mut().gnt_frames = (m..m + GRANT_FRAMES as u64).collect();
                for i in 0..GRANT_FRAMES {
                    // SAFETY: the frame list has nr_frames entries.
                    unsafe { (st.frame_list as *mut u64).add(i).write(m + i as u64) };
                }
                st.status = GNTST_OKAY;
                0
            }
            GNTTABOP_MAP_GRANT_REF => {
                for i in 0..count as usize {
                    // SAFETY: the caller passes `count` live entries.
                    let op = unsafe { &mut *(ptr as *mut GnttabMapGrantRef).add(i) };
                    let Some((flags, domid, frame)) = self.entry(op.gref) else {
                        op.status = GNTST_BAD_GNTREF;
                        continue;
                    };
                    let f = flags.load(Ordering::Acquire);
                    if f & GTF_PERMIT_ACCESS == 0 || domid != self.domid || op.dom != self.domid {
                        op.status = GNTST_PERMISSION_DENIED;
                        continue;
                    }
                    flags.fetch_or(GTF_READING | GTF_WRITING, Ordering::AcqRel);
                    self.map_at(op.host_addr as usize, u64::from(frame));
                    let mut st = self.st.borrow_mut();
                    let h = st.next_handle;
                    st.next_handle += 1;
                    st.maps.insert(h, (op.host_addr as usize, op.gref));
                    op.handle = h;
                    op.status = GNTST_OKAY;
                }
                0
            }
            GNTTABOP_UNMAP_GRANT_REF => {
                for i in 0..count as usize {
                    // SAFETY: the caller passes `count` live entries.
                    let op = unsafe { &mut *(ptr as *mut GnttabUnmapGrantRef).add(i) };
                    let m = self.st.borrow_mut().maps.remove(&op.handle);
                    match m {
                        Some((va, gref)) if va as u64 == op.host_addr => {
                            self.unmap_at(va);
                            let still = self.st.borrow().maps.values().any(|&(_, g)| g == gref);
                            if !still {
                                self.set_in_use(gref, false);
                            }
                            op.status = GNTST_OKAY;
                        }
                        _ => op.status = -4, // GNTST_bad_handle
                    }
                }
                0
            }
            _ => -38,
        }
    }

    fn evtchn_op(&self, cmd: u64, ptr: u64) -> i64 {
        let mut st = self.st.borrow_mut();
        match cmd as u32 {
            xen_sys::EVTCHNOP_alloc_unbound => {
                // SAFETY: the caller passes a live evtchn_alloc_unbound.
                let a = unsafe { &mut *(ptr as *mut xen_sys::evtchn_alloc_unbound) };
                st.ports.push(Port::Unbound(a.remote_dom));
                a.port = st.ports.len() as u32 - 1;
                0
            }
            xen_sys::EVTCHNOP_bind_interdomain => {
                // SAFETY: the caller passes a live evtchn_bind_interdomain.
                let b = unsafe { &mut *(ptr as *mut xen_sys::evtchn_bind_interdomain) };
                let r = b.remote_port as usize;
                if b.remote_dom != self.domid || st.ports.get(r) != Some(&Port::Unbound(self.domid))
                {
                    return -22; // EINVAL
                }
                st.ports.push(Port::Interdomain(b.remote_port));
                let local = st.ports.len() as u32 - 1;
                st.ports[r] = Port::Interdomain(local);
                b.local_port = local;
                drop(st);
                // Xen leaves the new local port pending.
                self.set_pending(local);
                0
            }
            xen_sys::EVTCHNOP_send => {
                // SAFETY: the caller passes a live evtchn_send.
                let port = unsafe { (*(ptr as *const xen_sys::evtchn_send)).port };
                match st.ports.get(port as usize) {
                    Some(&Port::Interdomain(peer)) => {
                        st.sends += 1;
                        drop(st);
                        self.set_pending(peer);
                        0
                    }
                    Some(Port::Unbound(_)) => 0,
                    _ => -22,
                }
            }
            xen_sys::EVTCHNOP_status => {
                // SAFETY: the caller passes a live evtchn_status.
                let q = unsafe { &mut *(ptr as *mut xen_sys::evtchn_status) };
                q.status = match st.ports.get(q.port as usize) {
                    Some(Port::Interdomain(_)) => xen_sys::EVTCHNSTAT_interdomain,
                    Some(Port::Unbound(_)) => xen_sys::EVTCHNSTAT_unbound,
                    Some(Port::Free) => xen_sys::EVTCHNSTAT_closed,
                    None => return -22,
                };
                0
            }
            xen_sys::EVTCHNOP_close => {
                // SAFETY: the caller passes a live evtchn_close.
                let port = unsafe { (*(ptr as *const xen_sys::evtchn_close)).port } as usize;
                match st.ports.get(port).copied() {
                    Some(Port::Interdomain(peer)) => {
                        st.ports[peer as usize] = Port::Unbound(self.domid);
                        st.ports[port] = Port::Free;
                        0
                    }
                    Some(Port::Unbound(_)) => {
                        st.ports[port] = Port::Free;
                        0
                    }
                    _ => -22,
                }
            }
            _ => -38,
        }
    }
}

// SAFETY: plays Xen for the calls it knows (mappings really made with
// mmap, statuses as Xen's), returns -ENOSYS for the others.
unsafe impl Hypercall for FakeXen {
    unsafe fn hypercall(&self, op: u32, args: [u64; 5]) -> i64 {
        let injected = self.st.borrow().fail;
        if let Some((fop, fcmd, rc)) = injected {
            if fop == op && fcmd == args[0] {
                self.st.borrow_mut().fail = None;
                return rc;
            }
        }
        match op {
            xen_sys::__HYPERVISOR_grant_table_op => self.grant_op(args[0], args[1], args[2]),
            xen_sys::__HYPERVISOR_event_channel_op => self.evtchn_op(args[0], args[1]),
            xen_sys::__HYPERVISOR_update_va_mapping => {
                self.map_at(args[0] as usize, args[1] >> 12);
                0
            }
            xen_sys::__HYPERVISOR_sched_op | xen_sys::__HYPERVISOR_console_io => 0,
            _ => -38,
        }
    }
}

// SAFETY: pages are fresh memfd frames mapped shared at a new address
// (zeroed: frames are never reused), their frames recorded; windows are
// fresh PROT_NONE reservations; domid as configured.
unsafe impl Kernel for FakeXen {
    fn domid(&self) -> DomId {
        self.domid
    }

    fn alloc_pages(&self, n: usize) -> Option<NonNull<u8>> {
        let m = self.alloc_mfns(n);
        // SAFETY: a fresh shared mapping of `n` fresh frames.
        let p = unsafe {
            mmap(
                std::ptr::null_mut(),
                n * PAGE,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &self.fd,
                m * PAGE as u64,
            )
        }
        .ok()?
        .cast::<u8>();
        let mut st = self.st.borrow_mut();
        for i in 0..n {
            st.own.insert(p as usize + i * PAGE, m + i as u64);
        }
        st.live_pages += n;
        NonNull::new(p)
    }

    unsafe fn free_pages(&self, pages: NonNull<u8>, n: usize) {
        let mut st = self.st.borrow_mut();
        for i in 0..n {
            st.own.remove(&(pages.as_ptr() as usize + i * PAGE));
        }
        st.live_pages -= n;
        // SAFETY: the caller's contract: from alloc_pages(n), unused now.
        unsafe { munmap(pages.as_ptr().cast(), n * PAGE) }.unwrap();
    }

    fn frame_of(&self, page: NonNull<u8>) -> Option<u64> {
        self.st.borrow().own.get(&(page.as_ptr() as usize)).copied()
    }

    fn alloc_window(&self, n: usize) -> Option<NonNull<u8>> {
        // SAFETY: a fresh reservation at an address the kernel picks.
        let p = unsafe {
            mmap_anonymous(
                std::ptr::null_mut(),
                n * PAGE,
                ProtFlags::empty(),
                MapFlags::PRIVATE,
            )
        }
        .ok()?;
        self.st.borrow_mut().live_windows += n;
        NonNull::new(p.cast())
    }

    unsafe fn free_window(&self, window: NonNull<u8>, n: usize) {
        self.st.borrow_mut().live_windows -= n;
        // SAFETY: the caller's contract: from alloc_window(n), unused now.
        unsafe { munmap(window.as_ptr().cast(), n * PAGE) }.unwrap();
    }

    unsafe fn map_frame(&self, va: NonNull<u8>, mfn: u64) -> Result<(), KernelError> {
        // SAFETY: the caller's contract, passed on.
        unsafe { super::update_va_mapping(self, va.as_ptr() as u64, mfn) }
    }

    /// Time passes only while idle or relaxing: 1 ms of Xen system time per
    /// call.
    fn idle(&self, _port: EvtchnPort, _until_ns: u64) {
        self.idles.set(self.idles.get() + 1);
        self.tick();
    }

    /// 1 ms passes; the peer unmaps everything if its time has come.
    fn relax(&self, _until_ns: u64) {
        self.relaxes.set(self.relaxes.get() + 1);
        self.tick();
        if self.peer_unmaps_at.get() == Some(self.relaxes.get()) {
            self.peer_unmaps_all();
        }
    }
}
