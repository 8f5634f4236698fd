//! Issue 17, findings 9 and 10, against the multi-domain fake xenstored
//! (permissions, transactions, `@releaseDomain`) and the fake drivers:
//! no node outlives a rendezvous, whatever its outcome, and an offerer
//! learns at once of an acceptor that died before it answered.

use std::os::unix::net::UnixStream;
use std::thread;
use std::time::Instant;

use super::*;
use crate::linux::fake::FakeXen;
use crate::linux::{LinuxBackend, LinuxError};
use crate::protocol::crxg::CrxgError;
use crate::residency;
use crate::types::MAX_PAGES;
use crate::xenstore::fake::FakeXenstored;
use crate::xenstore::XenStore;
use coresident::{ChannelLayout, Doorbell};

type Fake = LinuxBackend<FakeXen>;
type XsRendezvousError = RendezvousError<LinuxError>;

const O: DomId = 0;
const A: DomId = 3;
const LONG: Option<Duration> = Some(Duration::from_secs(20));

fn layout() -> ChannelLayout {
    ChannelLayout::symmetric(4096)
}

fn world() -> (FakeXenstored, FakeXen) {
    let fake = FakeXenstored::new();
    fake.introduce(O);
    fake.introduce(A);
    (fake, FakeXen::default())
}

fn offerer(xen: &FakeXen, name: &str) -> Rendezvous<Fake> {
    Rendezvous::with_sys(xen.clone(), O, A, name).unwrap()
}

fn acceptor(xen: &FakeXen, name: &str) -> Rendezvous<Fake> {
    Rendezvous::with_sys(xen.clone(), A, O, name).unwrap()
}

/// One accepted rendezvous, the acceptor in a thread of its own.
fn accepted(fake: &FakeXenstored, xen: &FakeXen, xo: &mut XenStore<UnixStream>, name: &str) {
    let (xen2, name2, mut xa) = (xen.clone(), name.to_owned(), fake.connect(A));
    let acc = thread::spawn(move || {
        let mut rdv = acceptor(&xen2, &name2);
        let link = rdv.accept(&mut xa, LONG).unwrap();
        // The teardown the docs ask of an acceptor.
        rdv.withdraw(&mut xa).unwrap();
        link
    });
    let pending = offerer(xen, name).offer(xo, layout()).unwrap();
    let link = pending.complete(xo, LONG).unwrap();
    let peer = acc.join().unwrap();
    drop((link, peer));
}

/// Finding 9: the parents `data/coresident/channels/<peer>/<name>` and
/// `channels/<peer>` stayed behind on both sides, whether the rendezvous
/// succeeded or not (27 nodes after 27 rendezvous in dom0): a guest's node
/// quota would run out. Every outcome leaves the store as it found it.
#[test]
fn no_node_outlives_a_rendezvous() {
    let (fake, xen) = world();
    let mut xo = fake.connect(O);
    let base = fake.nodes_under("/local/domain");
    for i in 0..27 {
        accepted(&fake, &xen, &mut xo, &format!("chan-{i}"));
    }
    assert_eq!(fake.nodes_under("/local/domain"), base, "after 27 accepted");

    // Refused: the offer is malformed (a ring size rewritten), the
    // acceptor answers `refused`, the offerer reads it and withdraws.
    let pending = offerer(&xen, "refused").offer(&mut xo, layout()).unwrap();
    xo.write(&format!("{}/to-acceptor", pending.offer_path()), b"1000")
        .unwrap();
    let (xen2, mut xa) = (xen.clone(), fake.connect(A));
    let acc = thread::spawn(move || acceptor(&xen2, "refused").accept(&mut xa, LONG).map(drop));
    assert_eq!(
        pending.complete(&mut xo, LONG).map(drop),
        Err(XsRendezvousError::Refused)
    );
    assert_eq!(
        acc.join().unwrap(),
        Err(XsRendezvousError::Key(KeyError::BadOffer(
            CrxgError::BadLayout
        )))
    );
    assert_eq!(fake.nodes_under("/local/domain"), base, "after a refusal");

    // Nobody answers: the offerer times out.
    let short = Some(Duration::from_millis(100));
    let pending = offerer(&xen, "alone").offer(&mut xo, layout()).unwrap();
    assert_eq!(
        pending.complete(&mut xo, short).map(drop),
        Err(XsRendezvousError::Timeout)
    );
    // Nobody offers: the acceptor times out.
    let mut xa = fake.connect(A);
    assert_eq!(
        acceptor(&xen, "alone").accept(&mut xa, short).map(drop),
        Err(XsRendezvousError::Timeout)
    );
    // An offer withdrawn before anyone came.
    let pending = offerer(&xen, "withdrawn").offer(&mut xo, layout()).unwrap();
    pending.withdraw(&mut xo).unwrap();
    assert_eq!(
        fake.nodes_under("/local/domain"),
        base,
        "after the failures"
    );

    // A node of ours beside the channels stays, and so do its parents.
    residency::advertise(&mut xa, A, &residency::Addresses::new()).unwrap();
    let with_advert = fake.nodes_under("/local/domain");
    accepted(&fake, &xen, &mut xo, "beside");
    assert_eq!(fake.nodes_under("/local/domain"), with_advert);
}

/// Two channels with one peer: tearing one down leaves the other's nodes.
#[test]
fn teardown_keeps_a_sibling_channel() {
    let (fake, xen) = world();
    let mut xo = fake.connect(O);
    let first = offerer(&xen, "first").offer(&mut xo, layout()).unwrap();
    accepted(&fake, &xen, &mut xo, "second");
    let dir = first.offer_path().to_owned();
    assert!(fake.peek(&format!("{dir}/state")).is_some(), "{dir}");
    first.withdraw(&mut xo).unwrap();
    assert!(fake.peek(&dir).is_none());
}

/// Finding 10: an acceptor process that mapped the grants and aborted
/// before `state=accepted` (its live byte set, then cleared by unmap-notify,
/// which also signals our port) left the offerer waiting out its whole
/// timeout. `complete` waits on the event channel too.
#[test]
fn complete_sees_an_acceptor_that_died_before_answering() {
    let (fake, xen) = world();
    let mut xo = fake.connect(O);
    let mut xa = fake.connect(A);
    let pending = offerer(&xen, "dies").offer(&mut xo, layout()).unwrap();
    let mut refs = vec![0; MAX_PAGES];
    let offer = acceptor(&xen, "dies")
        .read_offer(&mut xa, &mut refs)
        .unwrap()
        .unwrap();
    // The acceptor's steps up to the answer, then its death.
    let link = XenTransport::with_sys(xen.clone(), A, O)
        .accept_offer(&offer)
        .unwrap();
    drop(link);
    let t = Instant::now();
    assert_eq!(
        pending.complete(&mut xo, LONG).map(drop),
        Err(XsRendezvousError::Transport(XenTransportError::PeerGone))
    );
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
}

/// Finding 10: the same while the offerer is already waiting.
#[test]
fn a_waiting_complete_wakes_when_the_acceptor_dies() {
    let (fake, xen) = world();
    let mut xo = fake.connect(O);
    let pending = offerer(&xen, "dies-later")
        .offer(&mut xo, layout())
        .unwrap();
    let (xen2, mut xa) = (xen.clone(), fake.connect(A));
    let acc = thread::spawn(move || {
        let mut refs = vec![0; MAX_PAGES];
        let offer = acceptor(&xen2, "dies-later")
            .read_offer(&mut xa, &mut refs)
            .unwrap()
            .unwrap();
        thread::sleep(Duration::from_millis(100));
        let link = XenTransport::with_sys(xen2, A, O).accept_offer(&offer);
        // Killed at once: the live byte may have been seen set, which is an
        // acceptance whose channel then reports the death; either is fine.
        drop(link);
    });
    let r = pending.complete(&mut xo, LONG);
    acc.join().unwrap();
    let r = r.map(|link| link.doorbell.peer_alive());
    assert!(
        matches!(
            r,
            Err(XsRendezvousError::Transport(XenTransportError::PeerGone)) | Ok(false)
        ),
        "{r:?}"
    );
}

/// Finding 10: the acceptor's domain is destroyed mid-accept (no
/// unmap-notify, no event): `@releaseDomain` and its home going away.
#[test]
fn complete_sees_the_acceptor_domain_destroyed() {
    let (fake, xen) = world();
    let mut xo = fake.connect(O);
    let pending = offerer(&xen, "destroyed").offer(&mut xo, layout()).unwrap();
    let fake2 = fake.clone();
    let killer = thread::spawn(move || {
        thread::sleep(Duration::from_millis(100));
        fake2.destroy(A);
    });
    let t = Instant::now();
    assert_eq!(
        pending.complete(&mut xo, LONG).map(drop),
        Err(XsRendezvousError::Transport(XenTransportError::PeerGone))
    );
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    killer.join().unwrap();
}
