//! Tests of the Linux device wrappers (gntalloc, gntdev, evtchn) over the
//! fake driver of `fake.rs`: sharing, foreign mapping, unmap-notify, typed
//! errors, the event-channel loopback.

use core::ffi::{c_int, c_void};
use core::ptr::NonNull;
use core::time::Duration;
use std::ffi::CStr;
use std::os::fd::{BorrowedFd, OwnedFd};

use super::fake::*;
use crate::linux::error::EvtchnError;
use crate::linux::error::{EvtchnOp, GrantError, GrantOp};
use crate::linux::evtchn::Evtchn;
use crate::linux::evtchn::*;
use crate::linux::gntalloc::Gntalloc;
use crate::linux::gntalloc::*;
use crate::linux::gntdev::Gntdev;
use crate::linux::gntdev::*;
use crate::linux::privcmd::*;
use crate::linux::sys::{Errno, Opcode, Sys, PAGE_SIZE};
use crate::types::{UnmapNotify, MAX_PAGES};

#[test]
fn opcodes_match_the_c_headers() {
    // Values of the _IOC(_IOC_NONE, ...) macros, computed by gcc on
    // x86_64 from /usr/include/xen/{gntalloc,gntdev,evtchn}.h.
    assert_eq!(IOCTL_GNTALLOC_ALLOC_GREF as u64, 0x18_4705);
    assert_eq!(IOCTL_GNTALLOC_DEALLOC_GREF as u64, 0x10_4706);
    assert_eq!(IOCTL_GNTALLOC_SET_UNMAP_NOTIFY as u64, 0x10_4707);
    assert_eq!(IOCTL_GNTDEV_MAP_GRANT_REF as u64, 0x18_4700);
    assert_eq!(IOCTL_GNTDEV_UNMAP_GRANT_REF as u64, 0x10_4701);
    assert_eq!(IOCTL_GNTDEV_SET_UNMAP_NOTIFY as u64, 0x10_4707);
    assert_eq!(IOCTL_EVTCHN_BIND_INTERDOMAIN as u64, 0x08_4501);
    assert_eq!(IOCTL_EVTCHN_BIND_UNBOUND_PORT as u64, 0x04_4502);
    assert_eq!(IOCTL_EVTCHN_UNBIND as u64, 0x04_4503);
    assert_eq!(IOCTL_EVTCHN_NOTIFY as u64, 0x04_4504);
    // And from /usr/include/xen/sys/privcmd.h (libxen-dev's copy of
    // include/uapi/xen/privcmd.h).
    assert_eq!(IOCTL_PRIVCMD_HYPERCALL as u64, 0x30_5000);
}

fn read_byte(p: *mut u8, off: usize) -> u8 {
    // SAFETY: the tests pass offsets inside live mappings.
    unsafe { p.add(off).read_volatile() }
}

fn write_byte(p: *mut u8, off: usize, v: u8) {
    // SAFETY: the tests pass offsets inside live mappings.
    unsafe { p.add(off).write_volatile(v) }
}

#[test]
fn shared_pages_are_seen_through_the_foreign_mapping() {
    let xen = FakeXen::default();
    let ga = Gntalloc::open_with(xen.clone()).unwrap();
    let gd = Gntdev::open_with(xen.clone()).unwrap();
    let share = ga.share(0, 3).unwrap();
    assert_eq!(share.refs().len(), 3);
    assert_eq!(share.len(), 3 * PAGE_SIZE);
    let map = gd.map(0, share.refs()).unwrap();
    assert_eq!(map.len(), 3 * PAGE_SIZE);
    write_byte(share.as_ptr(), 2 * PAGE_SIZE + 5, 0xAB);
    assert_eq!(read_byte(map.as_ptr(), 2 * PAGE_SIZE + 5), 0xAB);
    write_byte(map.as_ptr(), 7, 0xCD);
    assert_eq!(read_byte(share.as_ptr(), 7), 0xCD);
    drop(map);
    drop(share);
    let st = xen.state();
    assert_eq!(st.munmaps, 2);
    assert_eq!(
        st.calls,
        [
            IOCTL_GNTALLOC_ALLOC_GREF,
            IOCTL_GNTDEV_MAP_GRANT_REF,
            IOCTL_GNTDEV_UNMAP_GRANT_REF,
            IOCTL_GNTALLOC_DEALLOC_GREF
        ]
    );
}

#[test]
fn unmap_notify_clears_the_byte_and_signals() {
    let xen = FakeXen::default();
    let ga = Gntalloc::open_with(xen.clone()).unwrap();
    let gd = Gntdev::open_with(xen.clone()).unwrap();
    let ev = Evtchn::open_with(xen.clone()).unwrap();
    let p1 = ev.bind_unbound(0).unwrap();
    let p2 = ev.bind_interdomain(0, p1).unwrap();
    // The fresh port is pending, as on real Xen.
    let mut buf = [0u32; 8];
    assert_eq!(ev.pending(&mut buf).unwrap(), 1);
    assert_eq!(buf[0], p2);
    ev.unmask(p2).unwrap();

    let share = ga.share(0, 2).unwrap();
    let map = gd.map(0, share.refs()).unwrap();
    write_byte(share.as_ptr(), PAGE_SIZE + 1, 1);
    map.set_unmap_notify(UnmapNotify {
        clear_byte: Some(PAGE_SIZE + 1),
        event: Some(p2),
    })
    .unwrap();
    drop(map);
    assert_eq!(read_byte(share.as_ptr(), PAGE_SIZE + 1), 0);
    assert!(ev.wait_for(p1, Duration::from_millis(10)).unwrap());

    assert_eq!(
        share.set_unmap_notify(UnmapNotify {
            clear_byte: Some(2 * PAGE_SIZE),
            event: None
        }),
        Err(GrantError::OffsetOutOfRange {
            offset: 2 * PAGE_SIZE,
            len: 2 * PAGE_SIZE
        })
    );
    share
        .set_unmap_notify(UnmapNotify {
            clear_byte: None,
            event: Some(p1),
        })
        .unwrap();
    drop(share);
    assert!(ev.wait_for(p2, Duration::from_millis(10)).unwrap());
}

#[test]
fn grant_errors_are_typed_and_clean_up() {
    let xen = FakeXen::default();
    let ga = Gntalloc::open_with(xen.clone()).unwrap();
    let gd = Gntdev::open_with(xen.clone()).unwrap();
    assert_eq!(ga.share(0, 0).unwrap_err(), GrantError::InvalidCount(0));
    assert_eq!(
        ga.share(0, MAX_PAGES + 1).unwrap_err(),
        GrantError::InvalidCount(MAX_PAGES + 1)
    );
    assert_eq!(gd.map(0, &[]).unwrap_err(), GrantError::InvalidCount(0));
    xen.state().fail = Some((IOCTL_GNTALLOC_ALLOC_GREF, Errno::NOSPC));
    assert_eq!(
        ga.share(0, 1).unwrap_err(),
        GrantError::Ioctl {
            op: GrantOp::Alloc,
            errno: Errno::NOSPC
        }
    );
    // A grant ref the peer made up: an error, nothing mapped.
    assert_eq!(
        gd.map(0, &[12345]).unwrap_err(),
        GrantError::Ioctl {
            op: GrantOp::Map,
            errno: Errno::INVAL
        }
    );
    assert!(matches!(
        Gntalloc::open_with(xen.clone()).map(|_| ()),
        Ok(())
    ));
    let e = GrantError::Ioctl {
        op: GrantOp::Map,
        errno: Errno::INVAL,
    };
    assert!(e.to_string().contains("Map"));
}

#[test]
fn event_channel_loopback() {
    let xen = FakeXen::default();
    let ev = Evtchn::open_with(xen.clone()).unwrap();
    let p1 = ev.bind_unbound(0).unwrap();
    let p2 = ev.bind_interdomain(0, p1).unwrap();
    assert!(ev.wait_for(p2, Duration::from_millis(10)).unwrap()); // spurious
    assert!(!ev.wait_for(p1, Duration::from_millis(10)).unwrap());
    ev.notify(p2).unwrap();
    assert!(ev.wait_for(p1, Duration::from_millis(10)).unwrap());
    ev.notify(p1).unwrap();
    let mut buf = [0u32; 4];
    assert_eq!(ev.pending(&mut buf).unwrap(), 1);
    assert_eq!(buf[0], p2);
    // Masked until unmasked: a second notify is not queued.
    ev.notify(p1).unwrap();
    assert_eq!(ev.pending(&mut buf).unwrap(), 0);
    ev.unmask(p2).unwrap();
    ev.unbind(p2).unwrap();
    assert_eq!(
        ev.notify(999).unwrap_err(),
        EvtchnError::Ioctl {
            op: EvtchnOp::Notify,
            errno: Errno::NOTCONN
        }
    );
    assert_eq!(
        ev.bind_interdomain(0, 999).unwrap_err(),
        EvtchnError::Ioctl {
            op: EvtchnOp::BindInterdomain,
            errno: Errno::INVAL
        }
    );
    assert_eq!(ev.pending(&mut []).unwrap(), 0);
}

#[test]
fn open_failure_is_typed() {
    #[derive(Clone, Debug)]
    struct NoXen;
    impl Sys for NoXen {
        fn open(&self, _: &CStr) -> Result<OwnedFd, Errno> {
            Err(Errno::NOENT)
        }
        unsafe fn ioctl(
            &self,
            _: BorrowedFd<'_>,
            _: Opcode,
            _: *mut c_void,
        ) -> Result<c_int, Errno> {
            unreachable!()
        }
        fn mmap_shared(&self, _: BorrowedFd<'_>, _: usize, _: u64) -> Result<NonNull<u8>, Errno> {
            unreachable!()
        }
        unsafe fn munmap(&self, _: NonNull<u8>, _: usize) -> Result<(), Errno> {
            unreachable!()
        }
        fn read(&self, _: BorrowedFd<'_>, _: &mut [u8]) -> Result<usize, Errno> {
            unreachable!()
        }
        fn write(&self, _: BorrowedFd<'_>, _: &[u8]) -> Result<usize, Errno> {
            unreachable!()
        }
        fn poll_readable(&self, _: BorrowedFd<'_>, _: Option<Duration>) -> Result<bool, Errno> {
            unreachable!()
        }
    }
    assert_eq!(
        Gntalloc::open_with(NoXen).unwrap_err(),
        GrantError::Open(Errno::NOENT)
    );
    assert_eq!(
        Gntdev::open_with(NoXen).unwrap_err(),
        GrantError::Open(Errno::NOENT)
    );
    assert_eq!(
        Evtchn::open_with(NoXen).unwrap_err(),
        EvtchnError::Open(Errno::NOENT)
    );
}
