//! Issue 17, findings 6 and 7: what a guest may claim (only addresses the
//! toolstack gave it, or dom0's policy allows), one spelling per address,
//! and how often a guest can make the agent rewrite the lists.

use core::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::view::PeerChange;
use super::*;
use crate::xenstore::fake::FakeXenstored;
use crate::xenstore::{XenStore, XsClient};

const DUE: Option<Duration> = Some(Duration::from_secs(20));

fn mac(last: u8) -> Addr {
    Addr::Mac([0x00, 0x16, 0x3e, 0, 0, last])
}

fn v4(last: u8) -> Addr {
    Addr::Ipv4(Ipv4Addr::new(10, 0, 0, last))
}

/// The toolstack gives domain `d` a vif (backend in dom0) with `mac` and,
/// when it is set, `ip` (libxl's `vif = [ 'mac=..,ip=..' ]`).
fn vif(fake: &FakeXenstored, d: DomId, dev: u32, mac: &str, ip: Option<&str>) {
    let dir = format!("/local/domain/0/backend/vif/{d}/{dev}");
    fake.poke(0, &format!("{dir}/mac"), mac.as_bytes());
    if let Some(ip) = ip {
        fake.poke(0, &format!("{dir}/ip"), ip.as_bytes());
    }
}

/// Runs the agent until nothing is queued or held back by the debounce.
fn settle(agent: &mut Agent<XenStore<UnixStream>>) -> Vec<Change> {
    let mut all = agent.step(DUE).unwrap();
    loop {
        let c = agent.run_once().unwrap();
        if c.is_empty() && agent.deferred().next().is_none() {
            return all;
        }
        if c.is_empty() {
            all.extend(agent.step(DUE).unwrap());
        }
        all.extend(c);
    }
}

fn world(
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
    settle(&mut agent);
    let clients = (0..=n).map(|d| fake.connect(d)).collect();
    (fake, agent, clients)
}

fn listed(agent: &Agent<XenStore<UnixStream>>, d: DomId) -> Vec<DomId> {
    agent
        .list_of(d)
        .map(|l| l.keys().copied().collect())
        .unwrap_or_default()
}

/// Finding 6: a guest claimed 8.8.8.8 and every other guest's router would
/// have sent that traffic into its channel. IPs come from the toolstack
/// (the vif's `ip`) or dom0's allow-list, by the domain's name; the rest
/// is refused.
#[test]
fn an_ip_the_toolstack_did_not_give_is_refused() {
    let (fake, mut agent, mut xs) = world(3, Policy::default());
    vif(&fake, 1, 0, "00:16:3e:00:00:01", Some("10.0.0.1"));
    vif(&fake, 2, 0, "00:16:3e:00:00:02", Some("10.0.0.2 fd00::/64"));
    settle(&mut agent);
    advertise(
        &mut xs[1],
        1,
        &Addresses::from_addrs([mac(1), v4(1)]).unwrap(),
    )
    .unwrap();
    let intercept = Addr::Ipv4(Ipv4Addr::new(8, 8, 8, 8));
    let claim = Addresses::from_addrs([mac(2), v4(2), intercept]).unwrap();
    advertise(&mut xs[2], 2, &claim).unwrap();
    let changes = settle(&mut agent);
    assert!(
        changes.contains(&Change::Rejected {
            domid: 2,
            error: AdvertError::IpNotOwned(intercept)
        }),
        "{changes:?}"
    );
    assert_eq!(listed(&agent, 1), Vec::<DomId>::new());
    // What the toolstack gave, a network included: listed.
    let honest = Addresses::from_addrs([
        mac(2),
        v4(2),
        Addr::Ipv6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x22)),
    ])
    .unwrap();
    advertise(&mut xs[2], 2, &honest).unwrap();
    settle(&mut agent);
    assert_eq!(listed(&agent, 1), [2]);
    assert_eq!(agent.list_of(1).unwrap()[&2], honest);
    // Without `ip` on its vif a guest may claim no IP at all.
    vif(&fake, 3, 0, "00:16:3e:00:00:03", None);
    advertise(
        &mut xs[3],
        3,
        &Addresses::from_addrs([mac(3), v4(3)]).unwrap(),
    )
    .unwrap();
    let changes = settle(&mut agent);
    assert!(
        changes.contains(&Change::Rejected {
            domid: 3,
            error: AdvertError::IpNotOwned(v4(3))
        }),
        "{changes:?}"
    );
    // dom0 is trusted: its own daemon advertises it.
    advertise(&mut xs[0], 0, &Addresses::from_addrs([v4(100)]).unwrap()).unwrap();
    settle(&mut agent);
    assert_eq!(listed(&agent, 1), [0, 2]);
}

/// The allow-list, by the toolstack's domain name (`/local/domain/N/name`,
/// which the guest cannot write): what a domain without vif `ip` may claim.
#[test]
fn the_allow_list_grants_addresses_by_domain_name() {
    let web = Addresses::from_addrs([
        v4(7),
        Addr::Ipv6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 7)),
    ])
    .unwrap();
    let (fake, mut agent, mut xs) = world(2, Policy::default().allow("web", web.clone()));
    fake.poke(0, "/local/domain/1/name", b"db");
    fake.poke(0, "/local/domain/2/name", b"web");
    advertise(&mut xs[1], 1, &Addresses::new()).unwrap();
    advertise(&mut xs[2], 2, &web).unwrap();
    settle(&mut agent);
    assert_eq!(listed(&agent, 1), [2]);
    // Domain 1 claims web's address: refused, although it is allowed to 2.
    advertise(&mut xs[1], 1, &Addresses::from_addrs([v4(7)]).unwrap()).unwrap();
    let changes = settle(&mut agent);
    assert!(
        changes.contains(&Change::Rejected {
            domid: 1,
            error: AdvertError::IpNotOwned(v4(7))
        }),
        "{changes:?}"
    );
    // A guest writing a `name` into its own data/ changes nothing.
    xs[1].write("data/name", b"web").unwrap();
    advertise(&mut xs[1], 1, &Addresses::from_addrs([v4(7)]).unwrap()).unwrap();
    settle(&mut agent);
    assert!(matches!(agent.domains()[&1], Status::Rejected(_)));
}

/// Finding 6: `::ffff:10.0.0.2` is 10.0.0.2 in another spelling; it must
/// not escape the conflict rule (or the ownership rule).
#[test]
fn a_mapped_ipv6_address_is_its_ipv4_address() {
    let a = Addresses::parse_advert(b"coresident 1\nipv6 ::ffff:10.0.0.2").unwrap();
    assert_eq!(a, Addresses::from_addrs([v4(2)]).unwrap());
    assert_eq!(
        Addresses::parse_advert(b"coresident 1\nipv4 10.0.0.2\nipv6 ::ffff:10.0.0.2"),
        Err(AdvertError::Duplicate(3))
    );
    // The mapped form of an unusable IPv4 address is unusable too.
    assert_eq!(
        Addresses::parse_advert(b"coresident 1\nipv6 ::ffff:127.0.0.1"),
        Err(AdvertError::BadIpv6(2))
    );
    // IPv4-compatible addresses (deprecated, RFC 4291) are refused.
    assert_eq!(
        Addresses::parse_advert(b"coresident 1\nipv6 ::10.0.0.2"),
        Err(AdvertError::BadIpv6(2))
    );
    // Pushed, too.
    let mut s = Addresses::new();
    s.push(Addr::Ipv6("::ffff:10.0.0.2".parse().unwrap()))
        .unwrap();
    assert_eq!(s, Addresses::from_addrs([v4(2)]).unwrap());
    // The agent: dom0 and a guest the toolstack (wrongly) gave dom0's
    // address, each in one spelling: a conflict, published for neither.
    let (fake, mut agent, mut xs) = world(2, Policy::default());
    vif(&fake, 1, 0, "00:16:3e:00:00:01", Some("10.0.0.1 10.0.0.11"));
    vif(&fake, 2, 0, "00:16:3e:00:00:02", None);
    advertise(&mut xs[2], 2, &Addresses::new()).unwrap();
    xs[0]
        .write(
            &advert_path(0),
            b"coresident 1\nipv6 ::ffff:10.0.0.1\nipv4 10.0.0.100",
        )
        .unwrap();
    advertise(
        &mut xs[1],
        1,
        &Addresses::from_addrs([v4(1), v4(11)]).unwrap(),
    )
    .unwrap();
    let changes = settle(&mut agent);
    assert!(
        changes.contains(&Change::Conflict {
            addr: v4(1),
            domains: vec![0, 1]
        }),
        "{changes:?}"
    );
    let l = agent.list_of(2).unwrap();
    assert_eq!(l[&0], Addresses::from_addrs([v4(100)]).unwrap());
    assert_eq!(l[&1], Addresses::from_addrs([v4(11)]).unwrap());
}

/// Finding 6: a guest without dom0 vif backends could claim any MAC.
#[test]
fn a_mac_claim_needs_a_vif() {
    let (fake, mut agent, mut xs) = world(2, Policy::default());
    advertise(&mut xs[1], 1, &Addresses::new()).unwrap();
    advertise(&mut xs[2], 2, &Addresses::from_addrs([mac(1)]).unwrap()).unwrap();
    let changes = settle(&mut agent);
    assert!(
        changes.contains(&Change::Rejected {
            domid: 2,
            error: AdvertError::MacNotOwned([0x00, 0x16, 0x3e, 0, 0, 1])
        }),
        "{changes:?}"
    );
    assert_eq!(listed(&agent, 1), Vec::<DomId>::new());
    // Once the toolstack gives it that vif: listed.
    vif(&fake, 2, 0, "00:16:3e:00:00:01", None);
    settle(&mut agent);
    assert_eq!(listed(&agent, 1), [2]);
}

fn list_writes(changes: &[Change], d: DomId) -> usize {
    changes
        .iter()
        .filter(|c| matches!(c, Change::ListWritten { domid, .. } if *domid == d))
        .count()
}

/// Finding 7: a guest toggling its advertisement made dom0 rewrite every
/// list each time. Changes of one domain are applied at most once per
/// debounce period (the first at once).
#[test]
fn a_toggling_guest_is_debounced() {
    let long = Policy::default().debounce(Duration::from_secs(3600));
    let (_fake, mut agent, mut xs) = world(2, long);
    advertise(&mut xs[1], 1, &Addresses::new()).unwrap();
    agent.step(DUE).unwrap();
    let mut changes = Vec::new();
    for i in 0..200 {
        if i % 2 == 0 {
            advertise(&mut xs[2], 2, &Addresses::new()).unwrap();
        } else {
            unadvertise(&mut xs[2], 2).unwrap();
        }
        // The agent runs as fast as the guest toggles.
        changes.extend(agent.run_once().unwrap());
        changes.extend(agent.run_once().unwrap());
    }
    while let Some(c) = Some(agent.run_once().unwrap()).filter(|c| !c.is_empty()) {
        changes.extend(c);
    }
    let n = list_writes(&changes, 1);
    assert!(n <= 1, "domain 1's list written {n} times for 200 toggles");
    assert_eq!(listed(&agent, 1), [2], "the first change applied at once");
    assert_eq!(agent.deferred().collect::<Vec<_>>(), [2]);
    // Another domain is not held back by the toggling one.
    advertise(&mut xs[0], 0, &Addresses::new()).unwrap();
    agent.step(DUE).unwrap();
    assert_eq!(listed(&agent, 1), [0, 2]);
}

/// The last state a toggling guest leaves is applied once its period ends.
#[test]
fn a_debounced_change_is_applied_when_its_period_ends() {
    let short = Policy::default().debounce(Duration::from_millis(100));
    let (_fake, mut agent, mut xs) = world(2, short);
    advertise(&mut xs[1], 1, &Addresses::new()).unwrap();
    advertise(&mut xs[2], 2, &Addresses::new()).unwrap();
    settle(&mut agent);
    assert_eq!(listed(&agent, 1), [2]);
    for _ in 0..10 {
        unadvertise(&mut xs[2], 2).unwrap();
        advertise(&mut xs[2], 2, &Addresses::new()).unwrap();
        agent.run_once().unwrap();
    }
    unadvertise(&mut xs[2], 2).unwrap();
    // No new event comes: the agent wakes by itself at the period's end.
    let mut seen = Vec::new();
    let watchdog = std::time::Instant::now() + Duration::from_secs(20);
    while listed(&agent, 1) != Vec::<DomId>::new() {
        assert!(
            std::time::Instant::now() < watchdog,
            "never applied: {seen:?}"
        );
        seen.extend(agent.step(DUE).unwrap());
    }
    assert!(seen.contains(&Change::Silenced(2)), "{seen:?}");
}

/// `xl save` and `xl restore` (or a migration in): the guest runs on as
/// another domain. Its view sees it (`Moved`), every peer leaves (their
/// channels were to the old domain), and once it advertises again under
/// its new id the agent lists it again, and it sees its peers again.
#[test]
fn a_restored_guest_is_seen_moving_and_listed_again() {
    let (fake, mut agent, mut xs) = world(2, Policy::default().debounce(Duration::ZERO));
    advertise(&mut xs[0], 0, &Addresses::from_addrs([v4(1)]).unwrap()).unwrap();
    vif(&fake, 2, 0, "00:16:3e:00:00:02", Some("10.0.0.2"));
    let mine = Addresses::from_addrs([mac(2), v4(2)]).unwrap();
    advertise(&mut xs[2], 2, &mine).unwrap();
    settle(&mut agent);
    let mut view = ResidencyView::new(fake.connect(2), 2, mine.clone()).unwrap();
    let arrived = view.step(DUE).unwrap();
    assert!(
        matches!(arrived[..], [PeerChange::Arrived { domid: 0, .. }]),
        "{arrived:?}"
    );
    // Saved and restored as domain 5, with its vif (the toolstack's).
    fake.restore(2, 5);
    vif(&fake, 5, 0, "00:16:3e:00:00:02", Some("10.0.0.2"));
    let changes = settle(&mut agent);
    assert!(changes.contains(&Change::Gone(2)), "{changes:?}");
    assert_eq!(listed(&agent, 0), Vec::<DomId>::new());
    let moved = view.step(DUE).unwrap();
    assert_eq!(moved[0], PeerChange::Moved { from: 2, to: 5 }, "{moved:?}");
    assert!(moved.contains(&PeerChange::Left {
        domid: 0,
        addrs: Addresses::from_addrs([v4(1)]).unwrap()
    }));
    assert_eq!(view.domid(), 5);
    assert!(view.peers().is_empty());
    // The daemon advertises again: listed again, and it sees dom0 again.
    advertise(view.xenstore(), 5, &mine).unwrap();
    settle(&mut agent);
    assert_eq!(listed(&agent, 0), [5]);
    let watchdog = std::time::Instant::now() + Duration::from_secs(20);
    while !view.peers().contains_key(&0) {
        assert!(
            std::time::Instant::now() < watchdog,
            "dom0 never listed again"
        );
        view.step(DUE).unwrap();
    }
}
