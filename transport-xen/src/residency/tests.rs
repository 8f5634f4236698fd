//! The agent against the multi-domain fake xenstored
//! (`xenstore/fake/store.rs`), hostile guests included; the helpers of the
//! residency tests (`tests_view.rs`, `tests_claims.rs` use them too).

use core::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::*;
use crate::protocol::xs_wire::{Access, Perm, XsErrno};
use crate::xenstore::fake::FakeXenstored;
use crate::xenstore::{XenStore, XsClient};

/// Long enough never to expire when an event is due (the fake queues every
/// watch event before it replies to the write that caused it).
pub(super) const DUE: Option<Duration> = Some(Duration::from_secs(20));

pub(super) fn addrs(last: u8) -> Addresses {
    Addresses::from_addrs([
        Addr::Mac([0x00, 0x16, 0x3e, 0, 0, last]),
        Addr::Ipv4(Ipv4Addr::new(10, 0, 0, last)),
        Addr::Ipv6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(last))),
    ])
    .unwrap()
}

/// Waits for the agent's next watch event (one is due: the fake's writer
/// threads deliver events asynchronously), then runs it until nothing is
/// queued; returns everything it did.
pub(super) fn settle_due(agent: &mut Agent<XenStore<UnixStream>>) -> Vec<Change> {
    let mut all = agent.step(DUE).unwrap();
    all.extend(settle(agent));
    all
}

/// Runs the agent until nothing is queued; returns everything it did.
pub(super) fn settle(agent: &mut Agent<XenStore<UnixStream>>) -> Vec<Change> {
    let mut all = Vec::new();
    loop {
        let c = agent.run_once().unwrap();
        if c.is_empty() {
            return all;
        }
        all.extend(c);
    }
}

pub(super) fn listed(agent: &Agent<XenStore<UnixStream>>, d: DomId) -> Vec<DomId> {
    agent
        .list_of(d)
        .map(|l| l.keys().copied().collect())
        .unwrap_or_default()
}

/// The policy of these tests, which are about lists and views rather than
/// who may claim what (`tests_claims`): every guest (`domN`) may claim
/// every address of `addrs(1..=9)`; no debounce.
pub(super) fn lenient(n: DomId) -> Policy {
    let mut p = Policy::default().debounce(Duration::ZERO);
    for d in 1..=n {
        for last in 1..=9 {
            p = p.allow(&format!("dom{d}"), addrs(last));
        }
    }
    p
}

/// dom0 and guests 1..=n, each with a client; the agent on its own
/// connection, with the [`lenient`] policy.
pub(super) fn world(
    n: DomId,
) -> (
    FakeXenstored,
    Agent<XenStore<UnixStream>>,
    Vec<XenStore<UnixStream>>,
) {
    world_with(n, lenient(n))
}

pub(super) fn world_with(
    n: DomId,
    policy: Policy,
) -> (
    FakeXenstored,
    Agent<XenStore<UnixStream>>,
    Vec<XenStore<UnixStream>>,
) {
    let fake = FakeXenstored::new();
    for d in 0..=n {
        fake.introduce(d);
    }
    let mut agent = Agent::with_policy(fake.connect(0), policy).unwrap();
    let first = settle(&mut agent);
    for d in 0..=n {
        assert!(first.contains(&Change::Appeared(d)), "{first:?}");
    }
    let clients = (0..=n).map(|d| fake.connect(d)).collect();
    (fake, agent, clients)
}

#[test]
fn agent_lists_every_advertising_domain_to_the_others() {
    let (fake, mut agent, mut xs) = world(3);
    for d in [0, 1, 2] {
        advertise(&mut xs[usize::from(d)], d, &addrs(d as u8 + 1)).unwrap();
    }
    let changes = settle_due(&mut agent);
    for d in [0, 1, 2] {
        assert!(
            changes.contains(&Change::Advertised {
                domid: d,
                addrs: addrs(d as u8 + 1)
            }),
            "{changes:?}"
        );
    }
    assert_eq!(listed(&agent, 0), [1, 2]);
    assert_eq!(listed(&agent, 1), [0, 2]);
    assert_eq!(listed(&agent, 2), [0, 1]);
    // Domain 3 does not advertise: no list written, and it is in none.
    assert_eq!(agent.list_of(3), None);
    assert_eq!(agent.domains()[&3], Status::Silent);
    // What is in XenStore, with its permissions.
    let (v, perms) = fake.peek("/local/domain/1/coresident/peers/2").unwrap();
    assert_eq!(Addresses::parse(&v).unwrap(), addrs(3));
    assert!(perms_ok(&perms, 1), "{perms:?}");
    assert!(fake.peek("/local/domain/1/coresident/generation").is_some());
    // Nothing changed: nothing is written again.
    assert!(settle(&mut agent).is_empty());

    // Domain 3 joins late; the others' lists grow.
    advertise(&mut xs[3], 3, &addrs(4)).unwrap();
    let changes = settle_due(&mut agent);
    assert_eq!(listed(&agent, 1), [0, 2, 3]);
    assert_eq!(listed(&agent, 3), [0, 1, 2]);
    assert_eq!(
        changes
            .iter()
            .filter(|c| matches!(c, Change::ListWritten { .. }))
            .count(),
        4,
        "{changes:?}"
    );

    // Stopping advertising leaves every list.
    unadvertise(&mut xs[3], 3).unwrap();
    let changes = settle_due(&mut agent);
    assert!(changes.contains(&Change::Silenced(3)), "{changes:?}");
    assert_eq!(listed(&agent, 1), [0, 2]);
    assert_eq!(listed(&agent, 3), Vec::<DomId>::new());
}

#[test]
fn a_guest_can_read_its_list_but_not_write_it() {
    let (fake, mut agent, mut xs) = world(2);
    // Domain 2's home has odd permissions (owned by the guest): its list
    // nodes would inherit them; the agent notices and makes them dom0's.
    let mut dom0 = fake.connect(0);
    dom0.set_perms(
        "/local/domain/2",
        &[Perm {
            domid: 2,
            access: Access::None,
        }],
    )
    .unwrap();
    advertise(&mut xs[1], 1, &addrs(1)).unwrap();
    advertise(&mut xs[2], 2, &addrs(2)).unwrap();
    settle_due(&mut agent);
    let denied = Err(XsError::Daemon(XsErrno::EACCES));
    for d in [1, 2] {
        let g = &mut xs[usize::from(d)];
        let dir = list_dir(d);
        let peer = 3 - d;
        assert_eq!(
            Addresses::parse(g.read(&format!("{dir}/peers/{peer}")).unwrap()).unwrap(),
            addrs(peer as u8)
        );
        assert_eq!(
            g.write(&format!("{dir}/peers/{peer}"), b"ipv4 10.9.9.9"),
            denied
        );
        assert_eq!(g.write(&format!("{dir}/peers/7"), b""), denied);
        assert_eq!(g.write(&format!("{dir}/generation"), b"1"), denied);
        assert_eq!(g.rm(&dir), denied);
        assert_eq!(
            g.set_perms(
                &dir,
                &[Perm {
                    domid: d,
                    access: Access::None
                }]
            ),
            denied
        );
    }
    let g = &mut xs[1];
    // Nor another guest's list, nor another guest's advertisement.
    assert_eq!(
        g.read(&format!("{}/generation", list_dir(2))),
        Err(XsError::Daemon(XsErrno::EACCES))
    );
    assert_eq!(advertise(g, 2, &addrs(1)), denied);
}

#[test]
fn hostile_advertisements_are_refused_and_the_agent_goes_on() {
    let (fake, mut agent, mut xs) = world(3);
    advertise(&mut xs[1], 1, &addrs(1)).unwrap();
    advertise(&mut xs[2], 2, &addrs(2)).unwrap();
    settle_due(&mut agent);
    assert_eq!(listed(&agent, 1), [2]);
    let path = advert_path(2);
    let huge = vec![b'7'; 3000];
    for (value, error) in [
        (&b"coresident 9\n"[..], AdvertError::Version(9)),
        (b"hello", AdvertError::MissingVersion),
        (b"coresident 1\nipv4 10.0.0.300", AdvertError::BadIpv4(2)),
        (
            b"coresident 1\nmac ff:ff:ff:ff:ff:ff",
            AdvertError::BadMac(2),
        ),
        (
            b"coresident 1\nipv4 10.0.0.3\nipv4 10.0.0.3",
            AdvertError::Duplicate(3),
        ),
        (b"coresident 1\n\xff", AdvertError::NotAscii),
        (&huge, AdvertError::TooLong(3000)),
    ] {
        xs[2].write(&path, value).unwrap();
        let changes = settle_due(&mut agent);
        assert!(
            changes.contains(&Change::Rejected { domid: 2, error }),
            "{error:?}: {changes:?}"
        );
        assert_eq!(listed(&agent, 1), Vec::<DomId>::new(), "{error:?}");
        assert_eq!(agent.domains()[&2], Status::Rejected(error));
        // Fixed again: back in the list.
        advertise(&mut xs[2], 2, &addrs(2)).unwrap();
        settle_due(&mut agent);
        assert_eq!(listed(&agent, 1), [2]);
    }
    // Domain 3 lets domain 2 write its data directory, and 2 advertises
    // for 3 (a guest id in a value would be trusted by a naive agent; the
    // owner XenStore records is not fooled).
    xs[3]
        .set_perms(
            "/local/domain/3/data",
            &[
                Perm {
                    domid: 3,
                    access: Access::None,
                },
                Perm {
                    domid: 2,
                    access: Access::Both,
                },
            ],
        )
        .unwrap();
    advertise(&mut xs[2], 3, &addrs(9)).unwrap();
    let changes = settle_due(&mut agent);
    assert!(
        changes.contains(&Change::Rejected {
            domid: 3,
            error: AdvertError::Owner(2)
        }),
        "{changes:?}"
    );
    assert_eq!(listed(&agent, 1), [2]);
    // Garbage under /local/domain is skipped.
    fake.poke(0, "/local/domain/notadomain/x", b"1");
    fake.poke(0, "/local/domain/0042/x", b"1");
    fake.poke(0, "/local/domain/40000/x", b"1");
    fake.introduce(5); // fires @introduceDomain, so the agent relists
    let changes = settle_due(&mut agent);
    assert_eq!(changes.first(), Some(&Change::Appeared(5)), "{changes:?}");
    assert_eq!(
        agent.domains().keys().copied().collect::<Vec<_>>(),
        [0, 1, 2, 3, 5]
    );
}

#[test]
fn an_address_claimed_twice_is_published_for_nobody() {
    let (_fake, mut agent, mut xs) = world(2);
    let dom0 = addrs(1);
    advertise(&mut xs[0], 0, &dom0).unwrap();
    advertise(&mut xs[1], 1, &addrs(2)).unwrap();
    settle_due(&mut agent);
    // Guest 2 claims dom0's IPv4 address besides its own MAC.
    let spoof = Addresses::from_addrs([
        Addr::Mac([0x00, 0x16, 0x3e, 0, 0, 3]),
        Addr::Ipv4(Ipv4Addr::new(10, 0, 0, 1)),
    ])
    .unwrap();
    advertise(&mut xs[2], 2, &spoof).unwrap();
    let changes = settle_due(&mut agent);
    let stolen = Addr::Ipv4(Ipv4Addr::new(10, 0, 0, 1));
    assert!(
        changes.contains(&Change::Conflict {
            addr: stolen,
            domains: vec![0, 2]
        }),
        "{changes:?}"
    );
    let l = agent.list_of(1).unwrap();
    assert!(
        !l[&0].contains(&stolen) && !l[&2].contains(&stolen),
        "{l:?}"
    );
    assert!(l[&0].contains(&Addr::Mac([0x00, 0x16, 0x3e, 0, 0, 1])));
    assert_eq!(l[&2].len(), 1);
    // The claim is dropped: dom0 has its address back.
    advertise(&mut xs[2], 2, &addrs(3)).unwrap();
    settle_due(&mut agent);
    assert_eq!(agent.list_of(1).unwrap()[&0], dom0);
}

#[test]
fn macs_must_be_the_domains_own_vifs() {
    // IPs allowed by name, MACs only from vifs.
    let mut ips = Policy::default().debounce(Duration::ZERO);
    for d in 1..=2 {
        for last in 1..=9 {
            let mut a = addrs(last);
            a.remove(&Addr::Mac([0x00, 0x16, 0x3e, 0, 0, last]));
            ips = ips.allow(&format!("dom{d}"), a);
        }
    }
    let (fake, mut agent, mut xs) = world_with(2, ips);
    fake.poke(
        0,
        "/local/domain/0/backend/vif/1/0/mac",
        b"00:16:3e:00:00:01",
    );
    advertise(&mut xs[1], 1, &addrs(1)).unwrap();
    settle_due(&mut agent);
    // The toolstack gives guest 2 a vif (its backend lives in dom0).
    fake.poke(
        0,
        "/local/domain/0/backend/vif/2/0/mac",
        b"00:16:3e:00:00:03",
    );
    fake.poke(0, "/local/domain/0/backend/vif/2/0/state", b"4");
    settle_due(&mut agent);
    advertise(&mut xs[2], 2, &addrs(3)).unwrap();
    settle_due(&mut agent);
    assert_eq!(listed(&agent, 1), [2]);
    // Guest 2 claims guest 1's MAC besides its own: refused.
    let mut spoof = addrs(3);
    spoof.push(Addr::Mac([0x00, 0x16, 0x3e, 0, 0, 1])).unwrap();
    advertise(&mut xs[2], 2, &spoof).unwrap();
    let changes = settle_due(&mut agent);
    let error = AdvertError::MacNotOwned([0x00, 0x16, 0x3e, 0, 0, 1]);
    assert!(
        changes.contains(&Change::Rejected { domid: 2, error }),
        "{changes:?}"
    );
    assert_eq!(listed(&agent, 1), Vec::<DomId>::new());
    // A second vif with that MAC (a toolstack decision): accepted, as the
    // vif watch re-reads the advertisement.
    fake.poke(
        0,
        "/local/domain/0/backend/vif/2/1/mac",
        b"00:16:3e:00:00:01",
    );
    let changes = settle_due(&mut agent);
    assert!(
        changes.contains(&Change::Advertised {
            domid: 2,
            addrs: spoof.clone()
        }),
        "{changes:?}"
    );
    // Garbage in a backend entry is skipped, not fatal.
    fake.poke(0, "/local/domain/0/backend/vif/2/7/mac", b"zz");
    settle_due(&mut agent);
    assert_eq!(agent.domains()[&2], Status::Advertising(spoof));
    assert_eq!(agent.domains()[&1], Status::Advertising(addrs(1)));
}

#[test]
fn a_restarted_agent_replaces_the_lists_it_inherits() {
    let fake = FakeXenstored::new();
    for d in 0..=2 {
        fake.introduce(d);
    }
    // An earlier agent listed peers 5 and 7, long gone, for guests 1 and 2.
    for d in [1, 2] {
        fake.poke(0, &format!("{}/peers/5", list_dir(d)), b"ipv4 10.0.0.5");
        fake.poke(0, &format!("{}/peers/7", list_dir(d)), b"");
        fake.poke(0, &format!("{}/generation", list_dir(d)), b"41");
    }
    let mut xs2 = fake.connect(2);
    advertise(&mut xs2, 2, &addrs(2)).unwrap();
    let mut view = ResidencyView::new(fake.connect(1), 1, addrs(1)).unwrap();
    assert_eq!(view.step(DUE).unwrap().len(), 2);
    let mut agent = Agent::with_policy(fake.connect(0), lenient(2)).unwrap();
    let changes = settle(&mut agent);
    // Guest 1 does not advertise, guest 2 is alone: both lists emptied.
    for d in [1, 2] {
        assert!(
            changes.iter().any(|c| matches!(c,
                Change::ListWritten { domid, peers, .. } if *domid == d && peers.is_empty())),
            "{d}: {changes:?}"
        );
    }
    let changes = view.step(DUE).unwrap();
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert!(view.peers().is_empty());
    assert!(fake.peek(&format!("{}/peers/5", list_dir(2))).is_none());
    // Domain 0 had no list and says nothing: none is made for it.
    assert!(fake.peek(&list_dir(0)).is_none());
}
