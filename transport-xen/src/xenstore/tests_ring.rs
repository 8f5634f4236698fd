//! The `start_info` ring client's tests ([`XsRing`]), against the
//! simulated daemon of `xenstore/fake/ring.rs`.

extern crate std;
use super::fake::ring::*;
use super::ring::*;
use std::vec::Vec;

use super::{RingIndex, XsClient, XsError};
use crate::protocol::xs_wire::{self, Access, MsgType, Perm, WireError, XsErrno, PAYLOAD_MAX};

#[test]
fn layout_matches_xs_wire_h() {
    assert_eq!(size_of::<XenstoreDomainInterface>(), 2 * RING_SIZE + 7 * 4);
    assert_eq!((REQ_PROD, RSP_CONS), (2052, 2056));
}

#[test]
fn read_write_mkdir_perms() {
    let mut xs = client();
    xs.write("data/a", b"42").unwrap();
    assert_eq!(xs.read("data/a").unwrap(), b"42");
    assert_eq!(xs_wire::parse_u32(xs.read("data/a").unwrap()).unwrap(), 42);
    assert_eq!(xs.read("data/missing").unwrap_err(), XsError::NotFound);
    xs.mkdir("data/dir").unwrap();
    assert_eq!(xs.read("data/dir").unwrap(), b"");
    let perms = [
        Perm {
            domid: 5,
            access: Access::None,
        },
        Perm {
            domid: 0,
            access: Access::Read,
        },
    ];
    xs.set_perms("data/a", &perms).unwrap();
    assert_eq!(xs.events_mut().perms("data/a").unwrap(), b"n5\0r0\0");
    xs.rm("data/a").unwrap();
    assert_eq!(xs.read("data/a").unwrap_err(), XsError::NotFound);
    assert_eq!(xs.rm("data/a").unwrap_err(), XsError::NotFound);
    xs.events_mut().deny("data/dir");
    assert_eq!(
        xs.read("data/dir").unwrap_err(),
        XsError::Daemon(XsErrno::EACCES)
    );
    xs.watch("data/dir", "t").unwrap();
    xs.unwatch("data/dir", "t").unwrap();
    assert_eq!(xs.events_mut().requests, 13);
    assert!(xs.events_mut().notifies >= 8);
}

#[test]
fn values_longer_than_the_ring_wrap_both_ways() {
    for start in [0, u32::MAX - 700] {
        let mut xs = client_at(start);
        for len in [0usize, 1, 1000, 1023, 1024, 1025, 3000, PAYLOAD_MAX - 12] {
            let v: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            xs.write("data/big", &v).unwrap();
            assert_eq!(xs.read("data/big").unwrap(), v.as_slice(), "len {len}");
        }
        assert_eq!(
            xs.write("data/big", &[0; PAYLOAD_MAX - 8]).unwrap_err(),
            XsError::Wire(WireError::TooLong(PAYLOAD_MAX as u32 + 1))
        );
    }
}

#[test]
fn watch_events_initial_and_on_write() {
    let mut xs = client();
    xs.watch("data/key", "tok").unwrap();
    let ev = xs.wait_watch(None).unwrap().unwrap();
    assert_eq!((ev.path, ev.token), (&b"data/key"[..], &b"tok"[..]));
    // An event that arrives during a request is kept for wait_watch.
    xs.write("data/key", b"v").unwrap();
    let ev = xs.wait_watch(None).unwrap().unwrap();
    assert_eq!(ev.path, b"data/key");
    assert_eq!(xs.lost_events(), 0);
    // xenstored queues a write's events before its reply, so the client
    // meets them during the request: one is held, a second is lost.
    xs.write("data/key", b"w").unwrap();
    assert_eq!(xs.lost_events(), 0);
    xs.write("data/key/sub", b"x").unwrap();
    assert_eq!(xs.lost_events(), 1);
    xs.write("data/other", b"y").unwrap();
    assert_eq!(xs.lost_events(), 1);
    assert_eq!(xs.wait_watch(None).unwrap().unwrap().path, b"data/key");
    // Nothing more: the daemon stays quiet until wait gives up.
    xs.events_mut().waits_left = 3;
    assert_eq!(xs.wait_watch(None).unwrap_err(), XsError::Timeout);
}

#[test]
fn event_before_reply_is_held() {
    let mut xs = client();
    xs.write("data/k", b"1").unwrap();
    xs.events_mut().mischief = Mischief::EventFirst;
    assert_eq!(xs.read("data/k").unwrap(), b"1");
    let ev = xs.wait_watch(None).unwrap().unwrap();
    assert_eq!((ev.path, ev.token), (&b"/early"[..], &b"tok"[..]));
}

#[test]
fn silent_daemon_times_out() {
    let mut xs = client();
    xs.events_mut().mischief = Mischief::Silent;
    xs.events_mut().waits_left = 5;
    assert_eq!(xs.read("data/k").unwrap_err(), XsError::Timeout);
    // A late reply would answer the next request: no next request.
    assert_eq!(xs.read("data/k").unwrap_err(), XsError::Broken);
    // A quiet wait for a watch event is not a broken stream.
    let mut xs = client();
    xs.events_mut().waits_left = 2;
    assert_eq!(xs.wait_watch(None).unwrap_err(), XsError::Timeout);
    xs.write("data/k", b"still fine").unwrap();
}

fn hostile(m: Mischief) -> XsError {
    let mut xs = client();
    xs.write("data/k", b"1").unwrap();
    xs.events_mut().mischief = m;
    let e = xs.read("data/k").unwrap_err();
    // Whatever the daemon does next, the stream is not trusted again.
    assert_eq!(xs.read("data/k").unwrap_err(), XsError::Broken, "{m:?}");
    assert_eq!(xs.wait_watch(None).unwrap_err(), XsError::Broken, "{m:?}");
    e
}

#[test]
fn hostile_daemon_gets_typed_errors() {
    assert!(matches!(
        hostile(Mischief::RspProdJump(RING_SIZE as u32 + 1)),
        XsError::BadIndex {
            which: RingIndex::RspProd,
            ..
        }
    ));
    assert!(matches!(
        hostile(Mischief::RspProdJump(u32::MAX)),
        XsError::BadIndex { .. }
    ));
    assert_eq!(
        hostile(Mischief::HugeLen(PAYLOAD_MAX as u32 + 1)),
        XsError::Wire(WireError::TooLong(PAYLOAD_MAX as u32 + 1))
    );
    assert_eq!(
        hostile(Mischief::HugeLen(u32::MAX)),
        XsError::Wire(WireError::TooLong(u32::MAX))
    );
    assert_eq!(
        hostile(Mischief::BadType),
        XsError::Wire(WireError::UnknownType(99))
    );
    assert!(matches!(
        hostile(Mischief::WrongId),
        XsError::UnexpectedReply(_)
    ));
    assert_eq!(
        hostile(Mischief::WrongType),
        XsError::UnexpectedReply(Some(MsgType::Directory))
    );
    assert_eq!(hostile(Mischief::ErrorWord), XsError::Server(3));
}

#[test]
fn req_cons_ahead_of_our_prod_is_refused() {
    let mut xs = client();
    // The daemon answers a request, then moves req_cons past our
    // req_prod; the next request sees the bad index.
    xs.events_mut().mischief = Mischief::ReqConsAhead(1);
    xs.write("data/k", b"1").unwrap();
    assert!(matches!(
        xs.write("data/k", b"1").unwrap_err(),
        XsError::BadIndex {
            which: RingIndex::ReqCons,
            ..
        }
    ));
    assert_eq!(xs.read("data/k").unwrap_err(), XsError::Broken);
    // Inconsistent indices found at start are refused too.
    let page = new_page();
    page.set(REQ_CONS, 5);
    // SAFETY: as in `client`.
    let e = unsafe { XsRing::new(page.0, Daemon::new(page)) }.unwrap_err();
    assert!(matches!(
        e,
        XsError::BadIndex {
            which: RingIndex::ReqCons,
            ..
        }
    ));
}

#[test]
fn a_reply_nobody_asked_for_is_refused() {
    let mut xs = client();
    xs.events_mut().reply(2, 77, b"stray");
    assert_eq!(
        xs.wait_watch(None).unwrap_err(),
        XsError::UnexpectedReply(Some(MsgType::Read))
    );
}

#[test]
fn malformed_watch_event_is_an_error_not_a_panic() {
    let mut xs = client();
    xs.events_mut().reply(15, 0, b"only-a-path");
    assert_eq!(
        xs.wait_watch(None).unwrap_err(),
        XsError::Wire(WireError::Malformed)
    );
}

#[test]
fn bad_pages_are_refused() {
    let page = new_page();
    // SAFETY: never dereferenced (refused first).
    let e = unsafe { XsRing::new(core::ptr::null_mut(), Daemon::new(page)) }.unwrap_err();
    assert_eq!(e, XsError::BadPage);
    // SAFETY: never dereferenced (refused first).
    let e = unsafe { XsRing::new(page.0.add(1), Daemon::new(page)) }.unwrap_err();
    assert_eq!(e, XsError::BadPage);
}

/// The ring client meets xenstored's rules, not a map's: permissions are
/// enforced and a transaction's commit fails after a conflicting write.
#[test]
fn the_ring_meets_the_daemons_permissions_and_transactions() {
    let mut xs = client();
    let eacces = XsError::Daemon(XsErrno::EACCES);
    // The home is the toolstack's: readable, not writable, by the guest.
    assert_eq!(xs.read("name").unwrap(), b"dom5");
    assert_eq!(xs.write("k", b"1").unwrap_err(), eacces);
    // dom0's node, readable by the guest, is not the guest's to change.
    let offer = "/local/domain/0/data/offer";
    xs.events_mut().dom0_write(offer, b"17");
    assert_eq!(xs.read(offer).unwrap(), b"17");
    assert_eq!(xs.write(offer, b"18").unwrap_err(), eacces);
    assert_eq!(xs.rm(offer).unwrap_err(), eacces);
    let perms = [Perm {
        domid: 5,
        access: Access::None,
    }];
    assert_eq!(xs.set_perms(offer, &perms).unwrap_err(), eacces);
    // dom0 writes while our transaction is open: the commit is refused
    // and nothing of ours was written.
    xs.events_mut().dom0_writes_next = Some((offer.into(), b"19".to_vec()));
    let mut tx = xs.transaction().unwrap();
    tx.write("data/tx", b"ours").unwrap();
    assert_eq!(tx.commit().unwrap_err(), XsError::Daemon(XsErrno::EAGAIN));
    assert_eq!(xs.read("data/tx").unwrap_err(), XsError::NotFound);
    assert_eq!(xs.read(offer).unwrap(), b"19");
    // Redone with nobody in the way, it commits.
    let mut tx = xs.transaction().unwrap();
    tx.write("data/tx", b"ours").unwrap();
    tx.commit().unwrap();
    assert_eq!(xs.read("data/tx").unwrap(), b"ours");
}
