//! The view and the tables following the agent (arrival, withdrawal,
//! destruction, an address moving between peers), and hostile lists,
//! against the multi-domain fake xenstored; helpers from `tests.rs`.

use core::net::{Ipv4Addr, Ipv6Addr};
use std::collections::BTreeMap;
use std::os::unix::net::UnixStream;

use coresident::lookup::{DomainId, DomainTable, Handle, Seed, Table};

use super::tests::{addrs, lenient, listed, settle_due, world_with, DUE};
use super::*;
use crate::protocol::xs_wire::ValueError;
use crate::xenstore::fake::FakeXenstored;
use crate::xenstore::{XenStore, XsClient};

struct Tables {
    domains: DomainTable<64>,
    macs: Table<[u8; 6], 16>,
    v4: Table<Ipv4Addr, 16>,
    v6: Table<Ipv6Addr, 16>,
}

impl Tables {
    fn new() -> Box<Self> {
        Box::new(Self {
            domains: DomainTable::new(),
            macs: Table::new(Seed::new([1, 2, 3, 4])),
            v4: Table::new(Seed::new([5, 6, 7, 8])),
            v6: Table::new(Seed::new([9, 10, 11, 12])),
        })
    }

    fn writer(&self) -> ResidencyTables<'_, 64, 16> {
        ResidencyTables::new(&self.domains, &self.macs, &self.v4, &self.v6).unwrap()
    }

    /// Every key of `a` maps to `h` (or, `None`, to nothing).
    fn check(&self, d: DomId, a: &Addresses, h: Option<Handle>) {
        assert_eq!(self.domains.get(DomainId(d)), h, "domain {d}");
        for m in a.macs() {
            assert_eq!(self.macs.get(m), h, "{m:?}");
        }
        for ip in a.ipv4() {
            assert_eq!(self.v4.get(ip), h, "{ip}");
        }
        for ip in a.ipv6() {
            assert_eq!(self.v6.get(ip), h, "{ip}");
        }
    }
}

#[test]
fn views_and_tables_follow_the_agent_through_arrival_withdrawal_and_destruction() {
    // Domain 3 comes later: the policy names it already.
    let (fake, mut agent, mut xs) = world_with(2, lenient(3));
    let mut view1 = ResidencyView::new(fake.connect(1), 1, addrs(2)).unwrap();
    let mut view0 = ResidencyView::new(fake.connect(0), 0, addrs(1)).unwrap();
    // No list yet: no peers.
    assert_eq!(view1.step(DUE).unwrap(), []);
    assert_eq!(view1.generation(), None);
    advertise(&mut xs[0], 0, &addrs(1)).unwrap();
    advertise(&mut xs[1], 1, &addrs(2)).unwrap();
    advertise(&mut xs[2], 2, &addrs(3)).unwrap();
    settle_due(&mut agent);
    let t1 = Tables::new();
    let mut w1 = t1.writer();
    let changes = view1.step(DUE).unwrap();
    assert_eq!(
        changes,
        [
            PeerChange::Arrived {
                domid: 0,
                addrs: addrs(1)
            },
            PeerChange::Arrived {
                domid: 2,
                addrs: addrs(3)
            },
        ]
    );
    let updates = w1.apply(&changes, |d, _| Some(Handle::new(d, 1)));
    assert_eq!(
        updates,
        [
            TableUpdate::Inserted {
                domid: 0,
                handle: Handle::new(0, 1),
                keys: 4
            },
            TableUpdate::Inserted {
                domid: 2,
                handle: Handle::new(2, 1),
                keys: 4
            },
        ]
    );
    t1.check(0, &addrs(1), Some(Handle::new(0, 1)));
    t1.check(2, &addrs(3), Some(Handle::new(2, 1)));
    t1.check(1, &Addresses::new(), None);
    assert_eq!(view0.step(DUE).unwrap().len(), 2);
    assert_eq!(view0.peers().keys().copied().collect::<Vec<_>>(), [1, 2]);

    // Withdrawn (a migration away): gone from both views and the tables.
    agent.withdraw(2).unwrap();
    let changes = view1.step(DUE).unwrap();
    assert_eq!(
        changes,
        [PeerChange::Left {
            domid: 2,
            addrs: addrs(3)
        }]
    );
    assert_eq!(
        w1.apply(&changes, |_, _| unreachable!()),
        [TableUpdate::Removed {
            domid: 2,
            handle: Handle::new(2, 1)
        }]
    );
    t1.check(2, &addrs(3), None);
    t1.check(0, &addrs(1), Some(Handle::new(0, 1)));
    assert_eq!(
        view0.step(DUE).unwrap(),
        [PeerChange::Left {
            domid: 2,
            addrs: addrs(3)
        }]
    );
    // Guest 2's own list is emptied too.
    let mut view2 = ResidencyView::new(fake.connect(2), 2, addrs(3)).unwrap();
    view2.step(DUE).unwrap();
    assert!(view2.peers().is_empty());
    assert!(view2.generation().is_some());

    // Readmitted, then destroyed.
    agent.readmit(2).unwrap();
    let changes = view1.step(DUE).unwrap();
    assert_eq!(
        changes,
        [PeerChange::Arrived {
            domid: 2,
            addrs: addrs(3)
        }]
    );
    w1.apply(&changes, |d, _| Some(Handle::new(d, 2)));
    t1.check(2, &addrs(3), Some(Handle::new(2, 2)));
    view0.step(DUE).unwrap();
    fake.destroy(2);
    let changes = settle_due(&mut agent);
    assert!(changes.contains(&Change::Gone(2)), "{changes:?}");
    assert_eq!(listed(&agent, 1), [0]);
    let changes = view1.step(DUE).unwrap();
    assert_eq!(
        changes,
        [PeerChange::Left {
            domid: 2,
            addrs: addrs(3)
        }]
    );
    assert_eq!(
        w1.apply(&changes, |_, _| None),
        [TableUpdate::Removed {
            domid: 2,
            handle: Handle::new(2, 2)
        }]
    );
    t1.check(2, &addrs(3), None);
    assert_eq!(
        view0.step(DUE).unwrap(),
        [PeerChange::Left {
            domid: 2,
            addrs: addrs(3)
        }]
    );
    // The toolstack removes a home before Xen reports the death: the
    // agent does not wait for @releaseDomain.
    fake.introduce(3);
    settle_due(&mut agent);
    let mut xs3 = fake.connect(3);
    advertise(&mut xs3, 3, &addrs(4)).unwrap();
    settle_due(&mut agent);
    let changes = view1.step(DUE).unwrap();
    assert_eq!(
        changes,
        [PeerChange::Arrived {
            domid: 3,
            addrs: addrs(4)
        }]
    );
    view0.step(DUE).unwrap();
    fake.remove_home(3);
    let changes = settle_due(&mut agent);
    assert!(changes.contains(&Change::Gone(3)), "{changes:?}");
    assert!(!changes.contains(&Change::Silenced(3)), "{changes:?}");
    assert_eq!(
        view1.step(DUE).unwrap(),
        [PeerChange::Left {
            domid: 3,
            addrs: addrs(4)
        }]
    );
    view0.step(DUE).unwrap();

    // Address change of a peer: old keys go, new ones come, same handle.
    let mut moved = addrs(1);
    moved.remove(&Addr::Ipv4(Ipv4Addr::new(10, 0, 0, 1)));
    moved.push(Addr::Ipv4(Ipv4Addr::new(10, 0, 0, 77))).unwrap();
    advertise(&mut xs[0], 0, &moved).unwrap();
    settle_due(&mut agent);
    let changes = view1.step(DUE).unwrap();
    assert_eq!(
        changes,
        [PeerChange::Changed {
            domid: 0,
            old: addrs(1),
            new: moved.clone()
        }]
    );
    w1.apply(&changes, |_, _| unreachable!());
    t1.check(0, &moved, Some(Handle::new(0, 1)));
    assert_eq!(t1.v4.get(&Ipv4Addr::new(10, 0, 0, 1)), None);
}

/// dom0 writes guest 1's list by hand.
fn write_list(xs: &mut XenStore<UnixStream>, generation: &[u8], entries: &[(&str, &[u8])]) {
    let dir = list_dir(1);
    let _ = xs.rm(&dir);
    for (name, v) in entries {
        xs.write(&format!("{dir}/peers/{name}"), v).unwrap();
    }
    xs.write(&format!("{dir}/generation"), generation).unwrap();
}

#[test]
fn hostile_lists_are_refused_entry_by_entry() {
    let fake = FakeXenstored::new();
    fake.introduce(0);
    fake.introduce(1);
    let mut dom0 = fake.connect(0);
    let mine = addrs(1);
    let mut view = ResidencyView::new(fake.connect(1), 1, mine.clone()).unwrap();
    view.step(DUE).unwrap();
    let a2 = addrs(2).encode();
    let a3 = addrs(3).encode();
    write_list(
        &mut dom0,
        b"1",
        &[("2", a2.as_bytes()), ("3", a3.as_bytes())],
    );
    assert_eq!(view.step(DUE).unwrap().len(), 2);
    assert_eq!(view.generation(), Some(1));

    // Bad generation: the whole list is refused and every peer leaves.
    write_list(&mut dom0, b"x1", &[("2", a2.as_bytes())]);
    let changes = view.step(DUE).unwrap();
    assert!(changes.contains(&PeerChange::Refused {
        entry: None,
        error: ListError::Generation(ValueError::NotANumber)
    }));
    assert!(
        changes.contains(&PeerChange::Left {
            domid: 2,
            addrs: addrs(2)
        }),
        "{changes:?}"
    );
    assert!(view.peers().is_empty());

    // Bad entries are refused one by one; good ones stay.
    let claims_mine = format!("{}ipv4 10.0.0.1\n", addrs(4).encode());
    let clash = "ipv4 10.0.0.2\n";
    let long_name = "9".repeat(40);
    write_list(
        &mut dom0,
        b"2",
        &[
            ("2", a2.as_bytes()),
            ("1", a3.as_bytes()),
            ("abc", a3.as_bytes()),
            ("0007", a3.as_bytes()),
            ("32752", a3.as_bytes()),
            (&long_name, a3.as_bytes()),
            ("5", b"ipv4 999.0.0.1"),
            ("6", b"coresident 1\n"),
            ("4", claims_mine.as_bytes()),
            ("8", clash.as_bytes()),
        ],
    );
    let changes = view.step(DUE).unwrap();
    let refused: BTreeMap<String, ListError> = changes
        .iter()
        .filter_map(|c| match c {
            PeerChange::Refused {
                entry: Some(e),
                error,
            } => Some((e.clone(), *error)),
            _ => None,
        })
        .collect();
    let ip = |n| Addr::Ipv4(Ipv4Addr::new(10, 0, 0, n));
    assert_eq!(refused["1"], ListError::OwnDomain);
    assert_eq!(refused["abc"], ListError::BadName);
    assert_eq!(refused["0007"], ListError::BadName);
    assert_eq!(refused["32752"], ListError::BadName);
    assert_eq!(refused[&"9".repeat(16)], ListError::BadName);
    assert_eq!(refused["5"], ListError::Entry(AdvertError::BadIpv4(1)));
    assert_eq!(refused["6"], ListError::Entry(AdvertError::UnknownKey(1)));
    assert_eq!(refused["4"], ListError::OwnAddress(ip(1)));
    assert_eq!(refused["8"], ListError::Clash(ip(2)));
    assert_eq!(refused["2"], ListError::Clash(ip(2)));
    assert_eq!(view.peers().keys().copied().collect::<Vec<_>>(), [2, 4, 8]);
    assert!(!view.peers()[&2].contains(&ip(2)));
    assert!(!view.peers()[&4].contains(&ip(1)));
    assert!(view.peers()[&8].is_empty());

    // Too many entries: refused whole.
    let many: Vec<(String, Vec<u8>)> = (2..=MAX_PEERS as u16 + 2)
        .map(|d| (d.to_string(), Vec::new()))
        .collect();
    let many: Vec<(&str, &[u8])> = many
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_slice()))
        .collect();
    write_list(&mut dom0, b"3", &many);
    let changes = view.step(DUE).unwrap();
    assert!(changes.contains(&PeerChange::Refused {
        entry: None,
        error: ListError::TooManyPeers(MAX_PEERS + 1)
    }));
    assert!(view.peers().is_empty());

    // The list removed: no peers, no generation.
    write_list(&mut dom0, b"4", &[("2", a2.as_bytes())]);
    assert_eq!(view.step(DUE).unwrap().len(), 1);
    dom0.rm(&list_dir(1)).unwrap();
    assert_eq!(
        view.step(DUE).unwrap(),
        [PeerChange::Left {
            domid: 2,
            addrs: addrs(2)
        }]
    );
    assert_eq!(view.generation(), None);
}

#[test]
fn tables_keep_an_address_that_moves_between_peers() {
    let t = Tables::new();
    let mut w = t.writer();
    let x = Addr::Ipv4(Ipv4Addr::new(10, 0, 0, 9));
    let with_x = Addresses::from_addrs([x]).unwrap();
    w.insert(4, &with_x, Handle::new(4, 1));
    // In one list change, peer 3 gains the address that peer 4 loses;
    // the view reports 3 first.
    let changes = [
        PeerChange::Arrived {
            domid: 3,
            addrs: with_x.clone(),
        },
        PeerChange::Changed {
            domid: 4,
            old: with_x.clone(),
            new: Addresses::new(),
        },
    ];
    w.apply(&changes, |d, _| Some(Handle::new(d, 1)));
    assert_eq!(
        t.v4.get(&Ipv4Addr::new(10, 0, 0, 9)),
        Some(Handle::new(3, 1))
    );
    assert_eq!(t.domains.get(DomainId(4)), Some(Handle::new(4, 1)));
    // A domain id beyond the direct table: the addresses still go in.
    let big = w.insert(100, &addrs(7), Handle::new(9, 9));
    assert_eq!(
        big,
        [
            TableUpdate::Inserted {
                domid: 100,
                handle: Handle::new(9, 9),
                keys: 3
            },
            TableUpdate::Failed {
                domid: 100,
                addr: None,
                error: coresident::lookup::InsertError::OutOfRange
            },
        ]
    );
    assert_eq!(w.remove(100), Some(Handle::new(9, 9)));
    t.check(100, &addrs(7), None);
}
