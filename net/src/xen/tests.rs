//! The Xen backend's pure parts on the host: key schema, the hello in XenStore and its
//! checks (a hostile offering domain's values), address-to-domain mapping, refusals,
//! and residency changes reaching the streams' hooks.

use super::*;
use crate::core::{Mail, Mailbox};
use crate::wire::FourTuple;
use std::net::{Ipv4Addr, Ipv6Addr};

fn hello(src: &str, dst: &str, epoch: u32) -> Hello {
    Hello {
        mode: 0,
        epoch,
        session: [0xab; 16],
        tuple: FourTuple {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
        },
    }
}

fn addrs(v: &[Ipv4Addr]) -> Addresses {
    Addresses::from_addrs(v.iter().map(|a| Addr::Ipv4(*a))).unwrap()
}

const DOM0: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const DOMU: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

/// A connection factory that must never be called, and counts if it is.
fn no_xenstore() -> (Connect, Arc<AtomicUsize>) {
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = Arc::clone(&n);
    let c: Connect = Arc::new(move || {
        n2.fetch_add(1, Ordering::SeqCst);
        Err(XsError::Open(2))
    });
    (c, n)
}

#[test]
fn keys_are_in_xenstores_alphabet() {
    let a: SocketAddr = "10.0.0.1:7117".parse().unwrap();
    assert_eq!(addr_key(a), "4-0a000001-7117");
    assert_eq!(
        listen_candidates(a),
        [
            "4-0a000001-7117",
            "4-00000000-7117",
            "6-00000000000000000000000000000000-7117"
        ]
    );
    // An IPv4-mapped IPv6 destination is its IPv4 address.
    let m: SocketAddr = "[::ffff:10.0.0.1]:7117".parse().unwrap();
    assert_eq!(addr_key(m), "4-0a000001-7117");
    let v6: SocketAddr = "[fd00::2]:80".parse().unwrap();
    assert_eq!(
        listen_candidates(v6),
        [
            "6-fd000000000000000000000000000002-80",
            "6-00000000000000000000000000000000-80"
        ]
    );
    let ok = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    for k in listen_candidates(v6)
        .iter()
        .chain(listen_candidates(a).iter())
    {
        assert!(ok(k), "{k}");
    }
    let h = hello("10.0.0.2:40000", "10.0.0.1:7117", u32::MAX);
    let name = channel_name(&h);
    assert!(valid_name(&name), "{name}");
    assert_eq!(name, format!("s{}-4294967295", "ab".repeat(16)));
    assert_ne!(
        channel_name(&hello("10.0.0.2:40000", "10.0.0.1:7117", 1)),
        channel_name(&hello("10.0.0.2:40000", "10.0.0.1:7117", 2))
    );
}

#[test]
fn a_hello_goes_through_xenstore_and_back() {
    let h = hello("10.0.0.2:40000", "10.0.0.1:7117", 3);
    let v = encode_hello(&h);
    assert_eq!(v.len(), 2 * HELLO_LEN);
    assert_eq!(decode_hello(v.as_bytes()), Ok(h));
    let reg: SocketAddr = "10.0.0.1:7117".parse().unwrap();
    let any: SocketAddr = "0.0.0.0:7117".parse().unwrap();
    let peer = addrs(&[DOMU]);
    assert_eq!(
        check_hello(v.as_bytes(), &channel_name(&h), reg, &peer),
        Ok(h)
    );
    assert_eq!(
        check_hello(v.as_bytes(), &channel_name(&h), any, &peer),
        Ok(h)
    );
}

/// What a hostile offering domain may write as its hello: each refused, with its
/// reason, and nothing panics.
#[test]
fn garbage_hellos_are_refused() {
    let h = hello("10.0.0.2:40000", "10.0.0.1:7117", 0);
    let name = channel_name(&h);
    let reg: SocketAddr = "10.0.0.1:7117".parse().unwrap();
    let peer = addrs(&[DOMU]);
    let good = encode_hello(&h);
    let check = |v: &[u8]| check_hello(v, &name, reg, &peer);
    assert_eq!(check(b""), Err(HelloError::Length(0)));
    assert_eq!(check(&good.as_bytes()[1..]), Err(HelloError::Length(143)));
    // XenStore values reach 4096 bytes.
    assert_eq!(check(&[b'0'; 4096]), Err(HelloError::Length(4096)));
    assert_eq!(
        check(good.to_uppercase().as_bytes()),
        Err(HelloError::NotHex)
    );
    let mut v = good.clone().into_bytes();
    v[7] = b'g';
    assert_eq!(check(&v), Err(HelloError::NotHex));
    v[7] = 0xff;
    assert_eq!(check(&v), Err(HelloError::NotHex));
    // Hex, but no hello: wrong magic, all zeros, all ones.
    let mut v = good.clone().into_bytes();
    v[0] = if v[0] == b'0' { b'1' } else { b'0' };
    assert_eq!(check(&v), Err(HelloError::Wire));
    assert_eq!(check(&[b'0'; 144]), Err(HelloError::Wire));
    assert_eq!(check(&[b'f'; 144]), Err(HelloError::Wire));
    // A valid hello under another channel's name (a replay of another offer).
    let other = encode_hello(&hello("10.0.0.2:40000", "10.0.0.1:7117", 1));
    assert_eq!(check(other.as_bytes()), Err(HelloError::OtherName));
    // For another listener's address or port.
    let h2 = hello("10.0.0.2:40000", "10.0.0.9:7117", 0);
    assert_eq!(
        check_hello(encode_hello(&h2).as_bytes(), &channel_name(&h2), reg, &peer),
        Err(HelloError::OtherAddress)
    );
    let h3 = hello("10.0.0.2:40000", "10.0.0.1:22", 0);
    assert_eq!(
        check_hello(encode_hello(&h3).as_bytes(), &channel_name(&h3), reg, &peer),
        Err(HelloError::OtherAddress)
    );
    // The domain claims a connection from an address it does not own (another
    // domain's, dom0's own): the tuple would be taken over.
    let h4 = hello("10.0.0.7:40000", "10.0.0.1:7117", 0);
    assert_eq!(
        check_hello(encode_hello(&h4).as_bytes(), &channel_name(&h4), reg, &peer),
        Err(HelloError::NotThePeers)
    );
}

#[test]
fn addresses_map_to_their_domain() {
    let mut peers = BTreeMap::new();
    peers.insert(0, addrs(&[DOM0]));
    peers.insert(5, addrs(&[DOMU]));
    peers.insert(
        6,
        Addresses::from_addrs([Addr::Ipv6("fd00::6".parse::<Ipv6Addr>().unwrap())]).unwrap(),
    );
    assert_eq!(domain_of(&peers, IpAddr::V4(DOMU)), Some(5));
    assert_eq!(domain_of(&peers, IpAddr::V4(DOM0)), Some(0));
    assert_eq!(
        domain_of(&peers, "::ffff:10.0.0.2".parse().unwrap()),
        Some(5)
    );
    assert_eq!(domain_of(&peers, "fd00::6".parse().unwrap()), Some(6));
    assert_eq!(domain_of(&peers, "10.0.0.3".parse().unwrap()), None);
    assert_eq!(domain_of(&BTreeMap::new(), IpAddr::V4(DOMU)), None);
}

#[test]
fn an_unknown_destination_is_not_resident_without_a_xenstore_round_trip() {
    let (connect, calls) = no_xenstore();
    let x = XenDiscovery::manual(5, connect);
    let params = OfferParams {
        ring_size: 4096,
        timeout: Duration::from_secs(1),
    };
    let h = hello("10.0.0.2:40000", "10.0.0.1:7117", 0);
    assert_eq!(x.offer(&h, &params).unwrap_err(), Refusal::NotResident);
    assert_eq!(calls.load(Ordering::SeqCst), 0, "asked XenStore");
    // Listed: now XenStore is asked (and fails here: a refusal, not a panic).
    x.apply(&[PeerChange::Arrived {
        domid: 0,
        addrs: addrs(&[DOM0]),
    }]);
    assert_eq!(x.domain_of(IpAddr::V4(DOM0)), Some(0));
    assert_eq!(
        x.offer(&h, &params).unwrap_err(),
        Refusal::Handshake("XenStore")
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // Gone again: not resident, no round trip.
    x.apply(&[PeerChange::Left {
        domid: 0,
        addrs: addrs(&[DOM0]),
    }]);
    assert_eq!(x.offer(&h, &params).unwrap_err(), Refusal::NotResident);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

fn mails(m: &Mailbox) -> Vec<&'static str> {
    m.queue
        .lock()
        .unwrap()
        .drain(..)
        .map(|m| match m {
            Mail::Withdraw => "withdraw",
            Mail::Readmit => "readmit",
            Mail::Channel(..) => "channel",
        })
        .collect()
}

/// The view's changes reach exactly the streams with that peer: withdrawn when it
/// leaves (or loses the address), readmitted when it comes back; a closed stream's
/// hook is dropped.
#[test]
fn residency_changes_reach_the_streams_with_that_peer() {
    let (connect, _) = no_xenstore();
    let x = XenDiscovery::manual(0, connect);
    let (to_u, to_w, closed) = (
        Mailbox::new().unwrap(),
        Mailbox::new().unwrap(),
        Mailbox::new().unwrap(),
    );
    let w = Ipv4Addr::new(10, 0, 0, 3);
    x.subscribe(IpAddr::V4(DOMU), Subscriber::new(&to_u));
    x.subscribe("::ffff:10.0.0.3".parse().unwrap(), Subscriber::new(&to_w));
    x.subscribe(IpAddr::V4(DOMU), Subscriber::new(&closed));
    drop(closed);
    x.apply(&[
        PeerChange::Arrived {
            domid: 5,
            addrs: addrs(&[DOMU]),
        },
        PeerChange::Arrived {
            domid: 6,
            addrs: addrs(&[w]),
        },
    ]);
    assert_eq!(mails(&to_u), ["readmit"]);
    assert_eq!(mails(&to_w), ["readmit"]);
    x.apply(&[PeerChange::Left {
        domid: 5,
        addrs: addrs(&[DOMU]),
    }]);
    assert_eq!(mails(&to_u), ["withdraw"]);
    assert!(
        mails(&to_w).is_empty(),
        "another peer's stream was disturbed"
    );
    assert_eq!(x.domain_of(IpAddr::V4(DOMU)), None);
    // dom6 drops 10.0.0.3 for 10.0.0.4: its stream from .3 falls back.
    x.apply(&[PeerChange::Changed {
        domid: 6,
        old: addrs(&[w]),
        new: addrs(&[Ipv4Addr::new(10, 0, 0, 4)]),
    }]);
    assert_eq!(mails(&to_w), ["withdraw"]);
    assert_eq!(
        x.inner.subs.lock().unwrap().len(),
        2,
        "the closed stream's hook is dropped, the others kept"
    );
    x.apply(&[PeerChange::Moved { from: 0, to: 9 }]);
    assert_eq!(x.domid(), 9);
}

/// `may_serve` answers from the view alone: no XenStore connection for a listed or an
/// unlisted address, `true` only for an address a co-resident peer lists.
#[test]
fn may_serve_is_the_views_answer_without_xenstore() {
    let (connect, calls) = no_xenstore();
    let x = XenDiscovery::manual(5, connect);
    let dom0: SocketAddr = "10.0.0.1:7117".parse().unwrap();
    assert!(!x.may_serve(dom0), "nobody listed yet");
    x.apply(&[PeerChange::Arrived {
        domid: 0,
        addrs: addrs(&[DOM0]),
    }]);
    assert!(x.may_serve(dom0));
    assert!(x.may_serve("[::ffff:10.0.0.1]:7117".parse().unwrap()));
    assert!(!x.may_serve("10.0.0.3:7117".parse().unwrap()));
    assert!(!x.may_serve("[fd00::1]:7117".parse().unwrap()));
    x.apply(&[PeerChange::Left {
        domid: 0,
        addrs: addrs(&[DOM0]),
    }]);
    assert!(!x.may_serve(dom0), "the peer left");
    assert_eq!(calls.load(Ordering::SeqCst), 0, "asked XenStore");
}
