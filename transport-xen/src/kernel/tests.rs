//! Host tests of the kernel backend against the fake hypervisor
//! (`fake.rs`): grant table semantics, the transport end to end (two real
//! views of the same memfd frames), teardown, and error paths.

use std::vec::Vec;

use coresident::{
    Channel, ChannelConfig, ChannelError, ChannelLayout, Doorbell, PendingOffer, Transport, Wake,
};
use zerocopy::IntoBytes;

use super::fake::FakeXen;
use super::grant_table::*;
use super::KernelTransportError;
use super::{KernelError, KernelTransport, Xen};
use crate::protocol::crxg::{self, CrxgError};

/// A kernel whose services may be called from any CPU gets links that can
/// move between CPUs.
#[allow(dead_code)]
fn links_are_send_for_a_sync_kernel<K: super::Kernel + Sync + 'static>() {
    fn send<T: Send>() {}
    send::<super::KernelRegion<'static, K>>();
    send::<super::KernelDoorbell<'static, K>>();
    send::<super::KernelPending<'static, K>>();
    send::<
        coresident::Channel<
            super::KernelRegion<'static, K>,
            super::KernelDoorbell<'static, K>,
            super::XenClock<'static>,
        >,
    >();
}

fn xen() -> Xen<FakeXen> {
    Xen::new(FakeXen::new(0), 0).unwrap()
}

/// Windows `Xen::new` keeps for good: shared_info and the grant table.
const XEN_WINDOWS: usize = 1 + super::GRANT_FRAMES;

#[test]
fn grant_entries_are_the_headers_and_end_access_checks_use() {
    let x = xen();
    let g = x.grants();
    let r = g.grant(3, 0x1234, true).unwrap();
    assert!(
        r >= NR_RESERVED_ENTRIES,
        "reserved entries are never handed out"
    );
    let e = g.read_entry(r).unwrap();
    assert_eq!(
        (e.flags, e.domid, e.frame),
        (GTF_PERMIT_ACCESS | GTF_READONLY, 3, 0x1234)
    );
    // grant_entry_v1 as bytes: flags, domid, frame, little-endian.
    assert_eq!(e.as_bytes(), &[5, 0, 3, 0, 0x34, 0x12, 0, 0]);
    let w = g.grant(3, 0x99, false).unwrap();
    assert_eq!(g.read_entry(w).unwrap().flags, GTF_PERMIT_ACCESS);

    // The peer maps it: access stays.
    x.kernel().set_in_use(r, true);
    assert!(g.in_use(r));
    assert_eq!(g.end_access(r), Err(KernelError::GrantInUse(r)));
    assert_eq!(g.read_entry(r).unwrap().flags & GTF_PERMIT_ACCESS, 1);
    x.kernel().set_in_use(r, false);
    assert_eq!(g.end_access(r), Ok(()));
    assert_eq!(g.read_entry(r).unwrap().flags, 0);
    // Freed: handed out again, and ending it twice is refused.
    assert_eq!(g.end_access(r), Err(KernelError::BadGrantRef(r)));
    assert_eq!(g.grant(4, 1, false).unwrap(), r);
    for bad in [0u32, 7, 1 << 20, u32::MAX] {
        assert_eq!(g.end_access(bad), Err(KernelError::BadGrantRef(bad)));
    }
    assert_eq!(
        g.grant(3, 1 << 32, false),
        Err(KernelError::FrameTooLarge(1 << 32))
    );
}

#[test]
fn the_table_runs_out_with_an_error() {
    let x = xen();
    let g = x.grants();
    let refs: Vec<u32> = (0..GrantTable::capacity())
        .map(|i| g.grant(1, i as u64, false).unwrap())
        .collect();
    assert_eq!(g.grant(1, 0, false), Err(KernelError::NoGrantRefs));
    g.end_access(refs[77]).unwrap();
    assert_eq!(g.grant(1, 0, false), Ok(refs[77]));
}

#[test]
fn setup_failures_are_errors() {
    let k = FakeXen::new(0);
    k.st.borrow_mut().fail = Some((
        xen_sys::__HYPERVISOR_grant_table_op,
        u64::from(GNTTABOP_SETUP_TABLE),
        -12,
    ));
    assert_eq!(
        Xen::new(k, 0).unwrap_err(),
        KernelError::Hypercall {
            op: "grant_table_op(setup_table)",
            rc: -12
        }
    );
}

fn layout() -> ChannelLayout {
    ChannelLayout {
        to_acceptor: 8192,
        to_offerer: 2048,
    }
}

#[test]
fn offer_accept_and_a_two_way_exchange_through_the_same_frames() {
    let x = xen();
    let mut off = KernelTransport::new(&x, 0);
    let mut acc = KernelTransport::new(&x, 0);
    let mut buf = [0u8; 256];
    let (pending, n) = off.offer(layout(), &mut buf).unwrap();
    assert_eq!(n, crxg::encoded_len(layout()));
    // The very bytes the userspace transport parses.
    let mut refs = [0; 64];
    let o = crxg::parse(0, &buf[..n], &mut refs).unwrap();
    assert_eq!(
        (o.layout, o.refs.len()),
        (layout(), crxg::pages_for(layout()))
    );
    let b = acc.accept(&buf[..n]).unwrap();
    assert_eq!(x.kernel().maps(), crxg::pages_for(layout()));
    let a = pending.complete(Some(core::time::Duration::ZERO)).unwrap();
    // bind_interdomain leaves the acceptor's port pending, and the accept
    // signalled the offerer: both doorbells ring once.
    assert_eq!(
        a.doorbell.wait(Some(core::time::Duration::ZERO)),
        Ok(Wake::Rung)
    );
    assert_eq!(
        b.doorbell.wait(Some(core::time::Duration::ZERO)),
        Ok(Wake::Rung)
    );
    assert_eq!(
        a.doorbell.wait(Some(core::time::Duration::from_millis(3))),
        Ok(Wake::TimedOut)
    );
    assert!(
        x.kernel().idles.get() >= 3,
        "a timed wait idles until the time passes"
    );

    let config = ChannelConfig {
        spin: 0,
        liveness: None,
        recheck: None,
        ..ChannelConfig::default()
    };
    let mut ca = Channel::new(a, config, x.clock()).unwrap();
    let mut cb = Channel::new(b, config, x.clock()).unwrap();
    let mut seq = 0u32;
    let mut got = 0u32;
    let mut rbuf = [0u8; 4096];
    let msg = |s: u32| -> Vec<u8> {
        (0..(s as usize * 37) % 3000)
            .map(|i| (s as usize + i) as u8)
            .collect()
    };
    while got < 2000 {
        // Fill, then drain: the rings really are shared between the views.
        while seq < 2000 {
            match ca.send(&msg(seq)) {
                Ok(()) => seq += 1,
                Err(ChannelError::Full) => break,
                Err(e) => panic!("{e}"),
            }
        }
        loop {
            match cb.recv(&mut rbuf) {
                Ok(n) => {
                    assert_eq!(&rbuf[..n], msg(got).as_slice(), "message {got}");
                    cb.send(&got.to_le_bytes()).unwrap();
                    got += 1;
                }
                Err(ChannelError::Empty) => break,
                Err(e) => panic!("{e}"),
            }
        }
        while let Ok(n) = ca.recv(&mut rbuf) {
            assert_eq!(n, 4);
        }
    }
    assert_eq!(ca.stats().sent_messages, 2000);

    // Teardown, acceptor first: every grant ends, every page comes back.
    drop(cb);
    assert_eq!(x.kernel().maps(), 0);
    drop(ca);
    assert_eq!(x.leaked_pages(), 0);
    let st = x.kernel().st.borrow();
    assert_eq!((st.live_pages, st.live_windows), (0, XEN_WINDOWS));
}

#[test]
fn a_kernel_offer_is_what_the_userspace_transport_reads() {
    // One protocol: the bytes the userspace transport parses (the one
    // `crxg::parse`) are the kernel's offer, field by field.
    let x = xen();
    let mut off = KernelTransport::new(&x, 0);
    let mut buf = [0u8; 256];
    let (pending, n) = off.offer(layout(), &mut buf).unwrap();
    let mut parsed = [0; 64];
    let o = crxg::parse(0, &buf[..n], &mut parsed).unwrap();
    let mut mine = [0; 64];
    assert_eq!(o, pending.offer(&mut mine).unwrap());
    assert_eq!(o.layout, layout());
    let refs = o.refs.to_vec();
    // Each reference grants the matching page to the peer, read-write.
    for r in refs {
        let e = x.grants().read_entry(r).unwrap();
        assert_eq!((e.flags, e.domid), (GTF_PERMIT_ACCESS, 0));
    }
    drop(pending);
}

#[test]
fn an_offerer_gone_first_shows_as_peer_gone_and_its_mapped_pages_stay() {
    let x = xen();
    x.set_release_timeout(core::time::Duration::from_millis(50));
    let mut off = KernelTransport::new(&x, 0);
    let mut acc = KernelTransport::new(&x, 0);
    let mut buf = [0u8; 256];
    let (pending, n) = off.offer(layout(), &mut buf).unwrap();
    let b = acc.accept(&buf[..n]).unwrap();
    let a = pending.complete(None).unwrap();
    assert!(b.doorbell.peer_alive() && a.doorbell.peer_alive());
    let t0 = x.shared_info().system_time_ns();
    drop(a);
    // The drop waited for the acceptor to unmap (the region, then the live
    // page: the release timeout each), then gave up.
    assert_eq!(x.shared_info().system_time_ns() - t0, 2 * 50_000_000);
    assert_eq!(x.kernel().relaxes.get(), 2 * 50);
    assert!(!b.doorbell.peer_alive());
    assert_eq!(b.doorbell.wait(None), Ok(Wake::PeerGone));
    // The acceptor still maps every page: none may be reused.
    assert_eq!(x.leaked_pages(), crxg::pages_for(layout()));
    drop(b);
    assert_eq!(x.kernel().maps(), 0);
}

#[test]
fn granted_pages_unmapped_late_are_released_not_leaked() {
    // Linux's unmap-notify clears the peer's live byte just before gntdev
    // unmaps: the offerer's drop must wait for the grants, not leak them.
    let x = xen();
    let mut off = KernelTransport::new(&x, 0);
    let mut acc = KernelTransport::new(&x, 0);
    let mut buf = [0u8; 256];
    let (pending, n) = off.offer(layout(), &mut buf).unwrap();
    let b = acc.accept(&buf[..n]).unwrap();
    let a = pending.complete(None).unwrap();
    let pages_with_b = {
        let st = x.kernel().st.borrow();
        st.live_pages
    };
    x.kernel().peer_unmaps_at.set(Some(7));
    drop(a);
    assert_eq!(x.kernel().maps(), 0, "the peer unmapped during the wait");
    assert_eq!(
        x.kernel().relaxes.get(),
        7,
        "the drop waited, and no longer"
    );
    assert_eq!(x.leaked_pages(), 0);
    // Every page of the offer came back; what is left is the acceptor's
    // bookkeeping, freed with it.
    let st = x.kernel().st.borrow();
    assert_eq!(
        st.live_pages,
        pages_with_b - crxg::pages_for(layout()) - 2,
        "the offer's pages and its two bookkeeping pages are free"
    );
    drop(st);
    drop(b);
    let st = x.kernel().st.borrow();
    assert_eq!((st.live_pages, st.live_windows), (0, XEN_WINDOWS));
}

#[test]
fn a_destroyed_peer_shows_through_the_event_channel() {
    let x = xen();
    let mut off = KernelTransport::new(&x, 0);
    let mut acc = KernelTransport::new(&x, 0);
    let mut buf = [0u8; 256];
    let (pending, n) = off.offer(layout(), &mut buf).unwrap();
    let b = acc.accept(&buf[..n]).unwrap();
    let a = pending.complete(None).unwrap();
    // Consume the pending bits the set-up left.
    assert_eq!(b.doorbell.wait(None), Ok(Wake::Rung));
    assert_eq!(a.doorbell.wait(None), Ok(Wake::Rung));
    // The offerer's domain dies: its live byte stays 1, but Xen closes its
    // end of the channel.
    x.kernel().destroy_peer_of(b.doorbell.port());
    assert!(b.doorbell.peer_alive(), "nothing to see before a wait");
    assert_eq!(
        b.doorbell.wait(Some(core::time::Duration::from_millis(10))),
        Ok(Wake::PeerGone)
    );
    assert!(!b.doorbell.peer_alive());
    drop((a, b));
}

#[test]
fn garbage_and_hostile_rendezvous_map_nothing() {
    let x = xen();
    let mut acc = KernelTransport::new(&x, 0);
    coresident::conformance::rendezvous_refuses_garbage(&mut acc).unwrap();
    assert_eq!(x.kernel().maps(), 0);

    let mut off = KernelTransport::new(&x, 0);
    let mut buf = [0u8; 256];
    let (pending, n) = off.offer(layout(), &mut buf).unwrap();
    // From another domain than the expected peer.
    let mut other = KernelTransport::new(&x, 9);
    assert_eq!(
        other.accept(&buf[..n]).unwrap_err(),
        KernelTransportError::Offer(CrxgError::WrongPeer(0))
    );
    // A reference the offerer never granted: the map fails part way and
    // undoes what it mapped.
    let mut bad = buf;
    bad[32 + 4 * 3..32 + 4 * 4].copy_from_slice(&2000u32.to_le_bytes());
    assert!(matches!(
        acc.accept(&bad[..n]).unwrap_err(),
        KernelTransportError::Backend(KernelError::Grant { .. })
    ));
    assert_eq!(x.kernel().maps(), 0);
    // Past the first batch of 16: the earlier batches are undone as well.
    let big = ChannelLayout::symmetric(64 * 1024);
    let mut bigbuf = [0u8; 512];
    let (big_pending, bn) = off.offer(big, &mut bigbuf).unwrap();
    assert!(crxg::pages_for(big) > 20);
    bigbuf[32 + 4 * 20..32 + 4 * 21].copy_from_slice(&2001u32.to_le_bytes());
    assert!(matches!(
        acc.accept(&bigbuf[..bn]).unwrap_err(),
        KernelTransportError::Backend(KernelError::Grant { .. })
    ));
    assert_eq!(x.kernel().maps(), 0);
    drop(big_pending);
    // The port refused: the maps are undone too.
    x.kernel().st.borrow_mut().fail = Some((
        xen_sys::__HYPERVISOR_event_channel_op,
        u64::from(xen_sys::EVTCHNOP_bind_interdomain),
        -22,
    ));
    assert!(matches!(
        acc.accept(&buf[..n]).unwrap_err(),
        KernelTransportError::Backend(KernelError::Hypercall { rc: -22, .. })
    ));
    assert_eq!(x.kernel().maps(), 0);
    assert_eq!(x.kernel().st.borrow().live_windows, XEN_WINDOWS);
    // And the genuine offer still works afterwards.
    let b = acc.accept(&buf[..n]).unwrap();
    let a = pending.complete(None).unwrap();
    drop((b, a));
    assert_eq!(x.leaked_pages(), 0);
}

#[test]
fn offer_refuses_before_it_grants() {
    let x = xen();
    let mut off = KernelTransport::new(&x, 1);
    let mut small = [0u8; 40];
    assert_eq!(
        off.offer(layout(), &mut small).map(|_| ()).unwrap_err(),
        KernelTransportError::Offer(CrxgError::BufferTooSmall(crxg::encoded_len(layout())))
    );
    let mut buf = [0u8; 256];
    assert_eq!(
        off.offer(ChannelLayout::symmetric(1000), &mut buf)
            .map(|_| ())
            .unwrap_err(),
        KernelTransportError::Offer(CrxgError::BadLayout)
    );
    assert_eq!(x.kernel().st.borrow().live_pages, 0);
    // The pending offer times out when nobody accepts (time passes while
    // idle in the fake).
    let (pending, _) = off.offer(layout(), &mut buf).unwrap();
    assert_eq!(
        pending
            .complete(Some(core::time::Duration::from_millis(5)))
            .unwrap_err(),
        KernelTransportError::Timeout
    );
    // Dropped unaccepted: every grant ends, every page comes back.
    assert_eq!(x.leaked_pages(), 0);
    assert_eq!(x.kernel().st.borrow().live_pages, 0);
}

#[test]
fn map_grants_never_invents_a_reference() {
    use super::Kernel;
    /// Claims `len` references, yields fewer.
    struct Liar(std::vec::IntoIter<u32>, usize);
    impl Iterator for Liar {
        type Item = u32;
        fn next(&mut self) -> Option<u32> {
            self.0.next()
        }
        fn size_hint(&self) -> (usize, Option<usize>) {
            (self.1, Some(self.1))
        }
    }
    impl ExactSizeIterator for Liar {}
    let x = xen();
    let k = x.kernel();
    let page = k.alloc_pages(1).unwrap();
    let frame = k.frame_of(page).unwrap();
    let refs: Vec<u32> = (0..18)
        .map(|_| x.grants().grant(0, frame, false).unwrap())
        .collect();
    let win = k.alloc_window(20).unwrap();
    let mut handles = [0u32; 20];
    // SAFETY: a fresh window of 20 pages, used by nothing else.
    let r = unsafe { map_grants(k, 0, Liar(refs.into_iter(), 20), win, false, &mut handles) };
    assert_eq!(r, Err(KernelError::NoMemory));
    assert_eq!(k.maps(), 0, "the first batch of 16 is unmapped again");
}

/// The `pv-kernel` job's 1 MiB rings each way (514 references, more than
/// any buffer on a kernel's stack): offered and accepted through the
/// rendezvous bytes, the references going from the pages into the bytes
/// and from the bytes into the mapping with no copy between.
#[test]
fn a_one_mib_offer_goes_through_the_bytes() {
    let x = xen();
    let mut off = KernelTransport::new(&x, 0);
    let mut acc = KernelTransport::new(&x, 0);
    let layout = ChannelLayout::symmetric(1 << 20);
    assert_eq!(crxg::pages_for(layout), 514);
    let mut buf = vec![0u8; crxg::encoded_len(layout)];
    let (pending, n) = off.offer(layout, &mut buf).unwrap();
    assert_eq!(n, buf.len());
    let parsed = crxg::parse_borrowed(0, &buf).unwrap();
    let mut mine = vec![0; 514];
    let offer = pending.offer(&mut mine).unwrap();
    assert!(parsed.refs.iter().eq(offer.refs.iter().copied()));
    let b = acc.accept(&buf).unwrap();
    assert_eq!(x.kernel().maps(), 514);
    let a = pending.complete(Some(core::time::Duration::ZERO)).unwrap();
    drop((b, a));
    assert_eq!(x.leaked_pages(), 0);
}
