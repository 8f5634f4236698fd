//! The XenStore steps of a rendezvous over a PV kernel's ring
//! ([`ChannelKeys`] over `XsRing`, as `pv-domu` drives them), against the
//! simulated xenstored of the ring's tests: the offer is written into its
//! store as dom0's rendezvous writes it, then spoiled key by key.

use super::*;
use crate::protocol::crxg::{self, CrxgError};
use crate::protocol::keys::Key;
use crate::protocol::xs_wire::ValueError;
use crate::xenstore::fake::ring::{client, Daemon};
use crate::xenstore::ring::XsRing;
use coresident::ChannelLayout;

const OWN: DomId = 5;
const DIR: &str = "/local/domain/0/data/coresident/channels/5/pv/offer";
/// What the kernel makes room for (`pv-domu`'s limit).
const MAX_REFS: usize = 32;

/// Our keys of channel `name` with dom0.
fn keys(name: &str) -> ChannelKeys {
    ChannelKeys::new(OWN, 0, name).unwrap()
}

/// A 16 KiB + 16 KiB offer: 9 region pages + the live page.
fn offer_keys() -> Vec<(&'static str, String)> {
    let layout = ChannelLayout::symmetric(16 * 1024);
    let n = crxg::pages_for(layout);
    let refs: Vec<String> = (0..n).map(|i| (100 + i).to_string()).collect();
    vec![
        ("version", "1".into()),
        ("port", "17".into()),
        ("to-acceptor", "16384".into()),
        ("to-offerer", "16384".into()),
        ("nrefs", n.to_string()),
        ("refs0", refs.join(" ")),
        ("state", "offered".into()),
    ]
}

fn ring_with(keys: &[(&str, String)]) -> XsRing<Daemon> {
    let mut xs = client();
    for (k, v) in keys {
        let path = format!("{DIR}/{k}");
        xs.events_mut().dom0_write(&path, v.as_bytes());
    }
    xs
}

/// Reads dom0's offer (its port and references) from `xs`.
fn read(xs: &mut XsRing<Daemon>) -> Result<Option<(u32, Vec<GrantRef>)>, KeyError> {
    let mut refs = [0; MAX_REFS];
    let offer = keys("pv").read_offer(xs, &mut refs)?;
    Ok(offer.map(|o| (o.port, o.refs.to_vec())))
}

fn read_with(change: &str, value: Option<&str>) -> Result<Option<(u32, Vec<GrantRef>)>, KeyError> {
    let mut keys: Vec<(&str, String)> = offer_keys();
    keys.retain(|(k, _)| *k != change);
    if let Some(v) = value {
        keys.push((change, v.into()));
    }
    read(&mut ring_with(&keys))
}

/// Waits for a valid offer; any refusal fails the test.
fn wait_offer(xs: &mut XsRing<Daemon>) -> Result<(u32, Vec<GrantRef>), KeyError> {
    let mut refs = [0; MAX_REFS];
    let offer = keys("pv").wait_valid_offer(xs, &mut refs, &mut |e| panic!("refused: {e}"))?;
    Ok((offer.port, offer.refs.to_vec()))
}

#[test]
fn a_good_offer_becomes_the_transports_offer() {
    let mut xs = ring_with(&offer_keys());
    let mut refs = [0; MAX_REFS];
    let offer = keys("pv")
        .wait_valid_offer(&mut xs, &mut refs, &mut |e| panic!("{e}"))
        .unwrap();
    assert_eq!((offer.offerer, offer.port), (0, 17));
    assert_eq!(offer.layout, ChannelLayout::symmetric(16 * 1024));
    assert_eq!(offer.refs, (100..110).collect::<Vec<u32>>().as_slice());
    offer.check().unwrap();
    // The watch was removed again.
    assert_eq!(xs.events_mut().watches(), 0);
}

#[test]
fn an_absent_or_unreadable_offer_is_not_yet_there() {
    assert!(matches!(read_with("state", None), Ok(None)));
    let mut xs = ring_with(&offer_keys());
    xs.events_mut().deny(&format!("{DIR}/state"));
    assert!(matches!(read(&mut xs), Ok(None)));
    // The wait keeps waiting on the watch until the ring gives up.
    xs.events_mut().waits_left = 5;
    assert_eq!(
        wait_offer(&mut xs).unwrap_err(),
        KeyError::Store(XsError::Timeout)
    );
}

#[test]
fn an_offer_being_replaced_is_not_yet_there() {
    // `state` readable, a later key not: the offerer removed the
    // directory and made it again, its permissions not set yet.
    for key in ["version", "refs0", "refs1"] {
        let mut xs = ring_with(&offer_keys());
        xs.events_mut().deny(&format!("{DIR}/{key}"));
        assert!(matches!(read(&mut xs), Ok(None)), "{key}");
    }
    // The same for an answer: waited past, not an error.
    let mut xs = client();
    let refs = kernel_refs();
    keys("k")
        .publish_offer(&mut xs, &kernel_offer(21, &refs))
        .unwrap();
    let dir = keys("k").peer_answer_dir().unwrap();
    for (k, v) in [
        ("state", "accepted"),
        ("offer-port", "21"),
        ("version", "1"),
    ] {
        let path = format!("{}/{k}", dir.as_str());
        xs.events_mut().dom0_write(&path, v.as_bytes());
    }
    xs.events_mut().deny(&format!("{}/version", dir.as_str()));
    xs.events_mut().waits_left = 20;
    assert_eq!(
        keys("k").wait_answer(&mut xs, 21),
        Err(KeyError::Store(XsError::Timeout))
    );
}

#[test]
fn every_hostile_value_is_a_typed_error() {
    use KeyError as E;
    let cases: &[(&str, Option<&str>, KeyError)] = &[
        ("state", Some("accepted"), E::BadState(Key::State)),
        ("version", Some("2"), E::BadVersion(2)),
        ("version", None, E::Missing(Key::Version)),
        (
            "version",
            Some("1x"),
            E::Value(Key::Version, ValueError::NotANumber),
        ),
        ("port", Some("0"), E::BadPort(0)),
        ("port", Some("131072"), E::BadPort(1 << 17)),
        (
            "port",
            Some("99999999999"),
            E::Value(Key::Port, ValueError::OutOfRange),
        ),
        (
            "to-acceptor",
            Some("1000"),
            E::BadOffer(CrxgError::BadLayout),
        ),
        (
            "to-offerer",
            Some(""),
            E::Value(Key::ToOfferer, ValueError::Empty),
        ),
        ("nrefs", Some("0"), E::BadRefCount),
        ("nrefs", Some("33"), E::BadRefCount),
        ("nrefs", Some("9"), E::BadRefCount),
        ("nrefs", Some("11"), E::BadRefCount),
        ("refs0", None, E::Missing(Key::Refs(0))),
        ("refs0", Some("100 101"), E::BadRefCount),
        (
            "refs0",
            Some("100 101 102 103 104 105 106 107 108 7"),
            E::BadRef(7),
        ),
        (
            "refs0",
            Some("100 101 102 103 104 105 106 107 108 100"),
            E::BadRef(100),
        ),
        (
            "refs0",
            Some("100 101 102 103 104 105 106 107 108 1048576"),
            E::BadRef(1 << 20),
        ),
        (
            "refs0",
            Some("100 101 102 103 104 105 106 107 108  109"),
            E::Value(Key::Refs(0), ValueError::Empty),
        ),
        ("refs1", Some("200"), E::BadRefCount),
    ];
    for (key, value, want) in cases {
        assert_eq!(
            read_with(key, *value).map(|_| ()),
            Err(*want),
            "{key} = {value:?}"
        );
    }
    // A count that agrees with the keys but not with the ring sizes.
    let mut keys = offer_keys();
    keys.retain(|(k, _)| !matches!(*k, "nrefs" | "refs0"));
    keys.push(("nrefs", "3".into()));
    keys.push(("refs0", "100 101 102".into()));
    assert_eq!(
        read(&mut ring_with(&keys)).map(|_| ()),
        Err(E::BadOffer(CrxgError::BadPageCount))
    );
}

#[test]
fn a_malformed_offer_is_refused_and_waited_past() {
    let mut keys_ = offer_keys();
    keys_.retain(|(k, _)| *k != "refs0");
    keys_.push(("refs0", "1 101 102 103 104 105 106 107 108 109".into()));
    let mut xs = ring_with(&keys_);
    xs.events_mut().waits_left = 60;
    let mut seen = Vec::new();
    let mut refs = [0; MAX_REFS];
    let r = keys("pv").wait_valid_offer(&mut xs, &mut refs, &mut |e| seen.push(*e));
    // Nobody replaced it: the ring gave up, after one refusal.
    assert_eq!(r.map(|_| ()), Err(KeyError::Store(XsError::Timeout)));
    assert_eq!(seen, [KeyError::BadRef(1)]);
    let dir = "/local/domain/5/data/coresident/channels/0/pv/answer";
    let d = xs.events_mut();
    let get = |k: &str| d.value(&format!("{dir}/{k}"));
    assert_eq!(get("state").as_deref(), Some(&b"refused"[..]));
    assert_eq!(get("offer-port").as_deref(), Some(&b"17"[..]));
    let error = String::from_utf8(get("error").unwrap()).unwrap();
    // dom0's pv-domu job checks this text.
    assert!(error.contains("grant reference 1 "), "{error}");
    // A good offer is taken at once.
    let mut xs = ring_with(&offer_keys());
    assert_eq!(wait_offer(&mut xs).unwrap().0, 17);
    assert!(KeyError::BadPort(0).is_malformed());
    assert!(!KeyError::Store(XsError::Timeout).is_malformed());
}

#[test]
fn answers_are_ours_and_readable_by_the_offerer_alone() {
    let mut xs = ring_with(&offer_keys());
    let (port, _) = wait_offer(&mut xs).unwrap();
    keys("pv").answer(&mut xs, port, Ok(3)).unwrap();
    let dir = "/local/domain/5/data/coresident/channels/0/pv/answer";
    let d = xs.events_mut();
    let get = |k: &str| d.value(&format!("{dir}/{k}"));
    assert_eq!(get("state").as_deref(), Some(&b"accepted"[..]));
    assert_eq!(get("port").as_deref(), Some(&b"3"[..]));
    assert_eq!(get("offer-port").as_deref(), Some(&b"17"[..]));
    assert_eq!(get("version").as_deref(), Some(&b"1"[..]));
    for k in ["", "/state", "/port"] {
        let perms = d.perms(&format!("{dir}{k}"));
        assert_eq!(perms.as_deref(), Some(&b"n5\0r0\0"[..]), "{k}");
    }
    // A refusal replaces the answer, with the reason.
    keys("pv").answer(&mut xs, port, Err(&"no room")).unwrap();
    let d = xs.events_mut();
    let get = |k: &str| d.value(&format!("{dir}/{k}"));
    assert_eq!(get("state").as_deref(), Some(&b"refused"[..]));
    assert_eq!(get("error").as_deref(), Some(&b"no room"[..]));
    assert_eq!(get("port"), None);
    keys("pv").withdraw(&mut xs).unwrap();
    keys("pv").withdraw(&mut xs).unwrap();
    assert!(!xs.events_mut().paths().iter().any(|k| k.starts_with(dir)));
}

/// Our nodes: the simulated store's keys under our home.
fn ours(xs: &mut XsRing<Daemon>) -> Vec<String> {
    let home = format!("/local/domain/{OWN}");
    let paths = xs.events_mut().paths();
    paths.into_iter().filter(|k| k.starts_with(&home)).collect()
}

/// Issue 17, finding 9, on the kernel's side: an answer withdrawn and
/// an offer answered leave none of their nodes, parents included.
#[test]
fn no_node_outlives_a_kernel_rendezvous() {
    let mut xs = ring_with(&offer_keys());
    // What the toolstack made (the home, `data`, `domid`, `name`) stays.
    let base = ours(&mut xs);
    let (port, _) = wait_offer(&mut xs).unwrap();
    keys("pv").answer(&mut xs, port, Ok(3)).unwrap();
    assert_ne!(ours(&mut xs), base);
    keys("pv").withdraw(&mut xs).unwrap();
    assert_eq!(ours(&mut xs), base, "after the answer's withdrawal");
    let refs = kernel_refs();
    keys("k")
        .publish_offer(&mut xs, &kernel_offer(21, &refs))
        .unwrap();
    let dir = keys("k").peer_answer_dir().unwrap();
    for (k, v) in [
        ("version", "1"),
        ("offer-port", "21"),
        ("port", "4"),
        ("state", "accepted"),
    ] {
        let path = format!("{}/{k}", dir.as_str());
        xs.events_mut().dom0_write(&path, v.as_bytes());
    }
    assert_eq!(keys("k").wait_answer(&mut xs, 21), Ok(true));
    assert_eq!(ours(&mut xs), base, "after the offer was answered");
    // A sibling stays, and its parents with it.
    xs.write(
        &format!("/local/domain/{OWN}/data/coresident/advertise"),
        b"x",
    )
    .unwrap();
    let kept = ours(&mut xs);
    keys("pv").answer(&mut xs, port, Ok(3)).unwrap();
    keys("pv").withdraw(&mut xs).unwrap();
    assert_eq!(ours(&mut xs), kept);
}

/// The references of a kernel offer: 16 KiB each way.
fn kernel_refs() -> Vec<GrantRef> {
    let n = crxg::pages_for(ChannelLayout::symmetric(16 * 1024));
    (0..n as u32).map(|i| 1000 + i).collect()
}

/// A kernel offer of `port` (dom5's), over `refs`.
fn kernel_offer(port: u32, refs: &[GrantRef]) -> Offer<&[GrantRef]> {
    Offer {
        offerer: OWN,
        port,
        layout: ChannelLayout::symmetric(16 * 1024),
        refs,
    }
}

#[test]
fn a_published_offer_reads_back_as_the_same_offer() {
    let refs = kernel_refs();
    let mine = kernel_offer(21, &refs);
    let mut xs = client();
    keys("k").publish_offer(&mut xs, &mine).unwrap();
    let dir = keys("k").offer_dir().unwrap();
    let perms = xs.events_mut().perms(&format!("{}/refs0", dir.as_str()));
    assert_eq!(perms.as_deref(), Some(&b"n5\0r0\0"[..]));
    // The acceptor's reader (dom0's view of our keys) agrees.
    let mut back = [0; MAX_REFS];
    let theirs = ChannelKeys::new(0, OWN, "k").unwrap();
    let offer = theirs.read_offer(&mut xs, &mut back).unwrap().unwrap();
    assert_eq!(offer, mine);
    // An offer the peer would refuse is not published: nothing is asked.
    let mut xs = client();
    let short = Offer {
        refs: &refs[..3],
        ..mine
    };
    assert_eq!(
        keys("k").publish_offer(&mut xs, &short),
        Err(KeyError::BadOffer(CrxgError::BadPageCount))
    );
    let bad_port = Offer { port: 0, ..mine };
    assert_eq!(
        keys("k").publish_offer(&mut xs, &bad_port),
        Err(KeyError::BadOffer(CrxgError::BadPort(0)))
    );
    assert_eq!(xs.events_mut().requests, 0);
}

#[test]
fn answers_are_waited_for_and_checked() {
    let answer_at = |entries: &[(&str, &str)]| {
        let mut xs = client();
        let refs = kernel_refs();
        keys("k")
            .publish_offer(&mut xs, &kernel_offer(21, &refs))
            .unwrap();
        let dir = keys("k").peer_answer_dir().unwrap();
        for (k, v) in entries {
            let path = format!("{}/{k}", dir.as_str());
            xs.events_mut().dom0_write(&path, v.as_bytes());
        }
        // Enough for the requests, too few for a stale answer to
        // outlast; the timeout leaves the ring usable for the rm.
        xs.events_mut().waits_left = 40;
        let r = keys("k").wait_answer(&mut xs, 21);
        // The offer is gone whatever the outcome.
        let offer = keys("k").offer_dir().unwrap();
        let left = xs
            .events_mut()
            .paths()
            .iter()
            .any(|k| k.starts_with(offer.as_str()));
        assert!(!left, "{entries:?}: {r:?}");
        r
    };
    let ok = [
        ("version", "1"),
        ("offer-port", "21"),
        ("port", "4"),
        ("state", "accepted"),
    ];
    assert_eq!(answer_at(&ok), Ok(true));
    let refused = [("version", "1"), ("offer-port", "21"), ("state", "refused")];
    assert_eq!(answer_at(&refused), Ok(false));
    let stale = [
        ("version", "1"),
        ("offer-port", "20"),
        ("state", "accepted"),
    ];
    let timeout = Err(KeyError::Store(XsError::Timeout));
    assert_eq!(answer_at(&stale), timeout);
    assert_eq!(answer_at(&[]), timeout);
    let odd = [("version", "1"), ("offer-port", "21"), ("state", "maybe")];
    assert_eq!(answer_at(&odd), Err(KeyError::BadState(Key::State)));
    let newer = [
        ("version", "2"),
        ("offer-port", "21"),
        ("state", "accepted"),
    ];
    assert_eq!(answer_at(&newer), Err(KeyError::BadVersion(2)));
    let junk = [("version", "1"), ("offer-port", "x"), ("state", "accepted")];
    assert_eq!(
        answer_at(&junk),
        Err(KeyError::Value(Key::OfferPort, ValueError::NotANumber))
    );
}

#[test]
fn names_that_do_not_fit_are_refused() {
    let long = "x".repeat(200);
    assert_eq!(
        ChannelKeys::new(OWN, 0, &long).unwrap_err(),
        KeyError::BadName
    );
    assert_eq!(keys("pv").peer_offer_dir().unwrap().as_str(), DIR);
}
