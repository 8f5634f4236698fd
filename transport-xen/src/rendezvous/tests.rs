//! The XenStore steps of a rendezvous against the socket fake xenstored
//! (one store, no permissions enforced): the keys an offer and an answer
//! are written as, and every hostile value a peer may write read back as a
//! typed error.

use std::os::unix::net::UnixStream;

use super::channel_keys::perms;
use super::*;
use crate::protocol::crxg::{self, CrxgError};
use crate::protocol::keys::{Key, REFS_PER_KEY};
use crate::protocol::xs_wire::ValueError;
use crate::types::MAX_PAGES;
use crate::xenstore::tests_socket::client;
use crate::xenstore::XenStore;
use crate::Rendezvous;

const O: DomId = 0;
const A: DomId = 3;
const NAME: &str = "chan-1";

fn layout() -> ChannelLayout {
    // 1 MiB per direction: libxenvchan's limit, five `refsN` keys.
    ChannelLayout::symmetric(1 << 20)
}

/// The transport's count: the region's pages plus the live page.
fn pages_for(layout: ChannelLayout) -> usize {
    layout.region_len().div_ceil(4096) + 1
}

fn refs(layout: ChannelLayout) -> Vec<GrantRef> {
    (0..pages_for(layout) as u32).map(|i| 100 + 3 * i).collect()
}

/// The offerer's keys of the channel.
fn offerer() -> ChannelKeys {
    ChannelKeys::new(O, A, NAME).unwrap()
}

/// Publishes an offer of `port` and `layout` (the references of
/// [`refs`]), as the offerer.
fn publish_as(xs: &mut XenStore<UnixStream>, port: u32, layout: ChannelLayout) -> String {
    let refs = refs(layout);
    let offer = Offer {
        offerer: O,
        port,
        layout,
        refs: refs.as_slice(),
    };
    offerer().publish_offer(xs, &offer).unwrap();
    offerer().offer_dir().unwrap().as_str().to_owned()
}

fn publish(xs: &mut XenStore<UnixStream>) -> String {
    publish_as(xs, 9, layout())
}

/// The acceptor's read of the offer, its references owned.
fn read(xs: &mut XenStore<UnixStream>) -> Result<Option<Offer<Vec<GrantRef>>>, KeyError> {
    let mut refs = vec![0; MAX_PAGES];
    let offer = ChannelKeys::new(A, O, NAME)
        .unwrap()
        .read_offer(xs, &mut refs)?;
    Ok(offer.map(|o| Offer {
        offerer: o.offerer,
        port: o.port,
        layout: o.layout,
        refs: o.refs.to_vec(),
    }))
}

#[test]
fn offer_round_trip_over_five_refs_keys() {
    let (mut xs, _t) = client();
    assert_eq!(read(&mut xs), Ok(None), "nothing published yet");
    let dir = publish(&mut xs);
    assert_eq!(
        dir,
        "/local/domain/0/data/coresident/channels/3/chan-1/offer"
    );
    let offer = read(&mut xs).unwrap().unwrap();
    assert_eq!(offer.offerer, O);
    assert_eq!(offer.port, 9);
    assert_eq!(offer.layout, layout());
    assert_eq!(offer.refs, refs(layout()));
    assert_eq!(offer.refs.len(), 514);
    let mut keys = xs.children(&dir).unwrap();
    keys.sort();
    assert_eq!(
        keys,
        [
            "nrefs",
            "port",
            "refs0",
            "refs1",
            "refs2",
            "refs3",
            "refs4",
            "state",
            "to-acceptor",
            "to-offerer",
            "version"
        ]
    );
    for k in keys {
        let v = xs.read(&format!("{dir}/{k}")).unwrap();
        assert!(
            v.len() <= 2048,
            "{k}: {} bytes over the guest quota",
            v.len()
        );
        assert_eq!(xs.perms(&format!("{dir}/{k}")).unwrap(), perms(O, A));
    }
    assert_eq!(xs.perms(&dir).unwrap(), perms(O, A));
    // The offer read back is the one the transport checks and encodes.
    offer.check().unwrap();
    let mut bytes = vec![0; crxg::encoded_len(layout())];
    crxg::encode(&offer, &mut bytes).unwrap();
    let mut back = vec![0; MAX_PAGES];
    assert_eq!(crxg::parse(O, &bytes, &mut back).unwrap(), offer.as_ref());
    // Publishing again replaces the offer, leaving no stale key.
    publish_as(&mut xs, 11, ChannelLayout::symmetric(4096));
    assert_eq!(read(&mut xs).unwrap().unwrap().port, 11);
    assert_eq!(xs.read(&format!("{dir}/refs1")), Err(XsError::NotFound));
}

/// Publishes a good offer, applies `f` to it, and reads it back.
fn hostile(
    f: impl FnOnce(&mut XenStore<UnixStream>, &str),
) -> Result<Option<Offer<Vec<GrantRef>>>, KeyError> {
    let (mut xs, _t) = client();
    let dir = publish(&mut xs);
    f(&mut xs, &dir);
    read(&mut xs)
}

fn set(value: &'static [u8], key: &'static str) -> impl FnOnce(&mut XenStore<UnixStream>, &str) {
    move |xs, dir| xs.write(&format!("{dir}/{key}"), value).unwrap()
}

#[test]
fn every_missing_key_is_named() {
    for (key, k) in [
        ("version", Key::Version),
        ("port", Key::Port),
        ("to-acceptor", Key::ToAcceptor),
        ("to-offerer", Key::ToOfferer),
        ("nrefs", Key::Nrefs),
        ("refs0", Key::Refs(0)),
        ("refs4", Key::Refs(4)),
    ] {
        let r = hostile(|xs, dir| xs.rm(&format!("{dir}/{key}")).unwrap());
        assert_eq!(r, Err(KeyError::Missing(k)), "{key}");
    }
    // Without `state` the offer is simply not there yet.
    assert_eq!(
        hostile(|xs, dir| xs.rm(&format!("{dir}/state")).unwrap()),
        Ok(None)
    );
}

#[test]
fn garbage_values_are_typed_errors() {
    let huge: &'static [u8] = Box::leak(vec![b'9'; 4000].into_boxed_slice());
    let garbage: [(&[u8], ValueError); 7] = [
        (b"", ValueError::Empty),
        (b"abc", ValueError::NotANumber),
        (b"-1", ValueError::NotANumber),
        (b" 9", ValueError::NotANumber),
        (b"0x10", ValueError::NotANumber),
        (b"4294967296", ValueError::OutOfRange),
        (huge, ValueError::OutOfRange),
    ];
    for (key, k) in [
        ("version", Key::Version),
        ("port", Key::Port),
        ("to-acceptor", Key::ToAcceptor),
        ("to-offerer", Key::ToOfferer),
        ("nrefs", Key::Nrefs),
        ("refs2", Key::Refs(2)),
    ] {
        for (v, mut e) in garbage {
            if key == "refs2" && v == b" 9" {
                // A list: the leading space leaves an empty first entry.
                e = ValueError::Empty;
            }
            let r = hostile(set(v, key));
            assert_eq!(r, Err(KeyError::Value(k, e)), "{key} = {v:?}");
        }
    }
    assert_eq!(
        hostile(set(b"offered?", "state")),
        Err(KeyError::BadState(Key::State))
    );
    assert_eq!(
        hostile(set(b"\xff\x00", "state")),
        Err(KeyError::BadState(Key::State))
    );
}

#[test]
fn out_of_range_values_are_refused() {
    assert_eq!(hostile(set(b"2", "version")), Err(KeyError::BadVersion(2)));
    for (v, p) in [
        (&b"0"[..], 0),
        (b"131072", 1 << 17),
        (b"4294967295", u32::MAX),
    ] {
        assert_eq!(hostile(set(v, "port")), Err(KeyError::BadPort(p)));
    }
    for v in [&b"0"[..], b"32", b"1000", b"2147483648"] {
        assert_eq!(
            hostile(set(v, "to-acceptor")),
            Err(KeyError::BadOffer(CrxgError::BadLayout)),
            "{v:?}"
        );
    }
    for v in [&b"0"[..], b"4097", b"4294967295"] {
        assert_eq!(
            hostile(set(v, "nrefs")),
            Err(KeyError::BadRefCount),
            "{v:?}"
        );
    }
    // One reference fewer: the last key holds one too many.
    assert_eq!(hostile(set(b"513", "nrefs")), Err(KeyError::BadRefCount));
    // Consistent keys, but not the count these ring sizes need.
    assert_eq!(
        hostile(|xs, dir| {
            xs.write(&format!("{dir}/nrefs"), b"3").unwrap();
            xs.write(&format!("{dir}/refs0"), b"8 9 10").unwrap();
            for k in 1..5 {
                xs.rm(&format!("{dir}/refs{k}")).unwrap();
            }
        }),
        Err(KeyError::BadOffer(CrxgError::BadPageCount))
    );
    // A key beyond the count.
    assert_eq!(hostile(set(b"8", "refs5")), Err(KeyError::BadRefCount));
}

#[test]
fn hostile_reference_lists() {
    // 128 refs per key: build variants of refs0.
    let good: Vec<String> = refs(layout())[..REFS_PER_KEY]
        .iter()
        .map(u32::to_string)
        .collect();
    let with = |i: usize, v: &str| {
        let mut l = good.clone();
        l[i] = v.to_owned();
        l.join(" ").into_bytes()
    };
    let cases: Vec<(Vec<u8>, KeyError)> = vec![
        (with(5, "7"), KeyError::BadRef(7)),
        (with(0, "0"), KeyError::BadRef(0)),
        (with(9, "1048576"), KeyError::BadRef(1 << 20)),
        (with(3, "100"), KeyError::BadRef(100)),
        (
            with(3, "x"),
            KeyError::Value(Key::Refs(0), ValueError::NotANumber),
        ),
        (
            with(3, ""),
            KeyError::Value(Key::Refs(0), ValueError::Empty),
        ),
        (
            with(127, "99999999999"),
            KeyError::Value(Key::Refs(0), ValueError::OutOfRange),
        ),
        (
            [good.join(" ").as_bytes(), b" "].concat(),
            KeyError::Value(Key::Refs(0), ValueError::Empty),
        ),
        (
            [good.join(" ").as_bytes(), b" 5000"].concat(),
            KeyError::BadRefCount,
        ),
        (good[..127].join(" ").into_bytes(), KeyError::BadRefCount),
        (
            good.join(",").into_bytes(),
            KeyError::Value(Key::Refs(0), ValueError::NotANumber),
        ),
    ];
    for (v, e) in cases {
        let r = hostile(|xs, dir| xs.write(&format!("{dir}/refs0"), &v).unwrap());
        assert_eq!(r, Err(e), "{}", String::from_utf8_lossy(&v));
    }
}

/// The offerer's view of the answer to its offer of `port` (what
/// [`XsPending::complete`] reads at each event).
fn answer_to(xs: &mut XenStore<UnixStream>, port: u32) -> Result<Option<bool>, KeyError> {
    keys::read_answer(xs, offerer().peer_answer_dir()?.as_str(), port)
}

#[test]
fn answers_name_their_offer() {
    let (mut xs, _t) = client();
    let acceptor = ChannelKeys::new(A, O, NAME).unwrap();
    let dir = acceptor.answer_dir().unwrap().as_str().to_owned();
    assert_eq!(
        dir,
        "/local/domain/3/data/coresident/channels/0/chan-1/answer"
    );
    assert_eq!(offerer().peer_answer_dir().unwrap().as_str(), dir);
    assert_eq!(answer_to(&mut xs, 9), Ok(None), "no answer yet");
    acceptor.answer(&mut xs, 9, Ok(21)).unwrap();
    assert_eq!(answer_to(&mut xs, 9), Ok(Some(true)));
    assert_eq!(xs.perms(&format!("{dir}/state")).unwrap(), perms(A, O));
    assert_eq!(xs.perms(&dir).unwrap(), perms(A, O));
    // A stale answer, to another offer, is not ours: keep waiting.
    assert_eq!(answer_to(&mut xs, 10), Ok(None));
    acceptor
        .answer(&mut xs, 9, Err(&KeyError::BadPort(0)))
        .unwrap();
    assert_eq!(answer_to(&mut xs, 9), Ok(Some(false)));
    assert_eq!(xs.read(&format!("{dir}/port")), Err(XsError::NotFound));
    let error = String::from_utf8(xs.read(&format!("{dir}/error")).unwrap().to_vec()).unwrap();
    assert!(error.contains("port 0"), "{error}");
    for (key, v, e) in [
        ("state", &b"maybe"[..], KeyError::BadState(Key::State)),
        ("version", b"7", KeyError::BadVersion(7)),
        (
            "version",
            b"x",
            KeyError::Value(Key::Version, ValueError::NotANumber),
        ),
        (
            "offer-port",
            b"-9",
            KeyError::Value(Key::OfferPort, ValueError::NotANumber),
        ),
    ] {
        acceptor.answer(&mut xs, 9, Ok(21)).unwrap();
        xs.write(&format!("{dir}/{key}"), v).unwrap();
        assert_eq!(answer_to(&mut xs, 9), Err(e), "{key}");
    }
}

#[test]
fn peer_death_is_the_peer_home_going_away() {
    let (mut xs, _t) = client();
    let rdv = Rendezvous::new(0, 5, NAME).unwrap();
    xs.mkdir("/local/domain/5").unwrap();
    rdv.watch_peer(&mut xs).unwrap();
    assert_eq!(rdv.peer_present(&mut xs), Ok(true));
    assert_eq!(
        rdv.wait_peer_gone(&mut xs, Some(Duration::from_millis(50))),
        Ok(false)
    );
    xs.rm("/local/domain/5").unwrap();
    assert_eq!(rdv.peer_present(&mut xs), Ok(false));
    assert_eq!(
        rdv.wait_peer_gone(&mut xs, Some(Duration::from_millis(50))),
        Ok(true)
    );
    rdv.unwatch_peer(&mut xs).unwrap();
}

#[test]
fn names_are_checked() {
    for bad in ["", "a/b", "..", "a b", "é", &"x".repeat(65), "a\0b"] {
        assert_eq!(
            Rendezvous::new(0, 1, bad).map(drop),
            Err(KeyError::BadName),
            "{bad:?}"
        );
    }
    let r = Rendezvous::new(0, 1, &"x".repeat(64)).unwrap();
    assert_eq!((r.own(), r.peer(), r.name().len()), (0, 1, 64));
    let (mut xs, _t) = client();
    assert_eq!(
        ChannelKeys::new(1, 0, "../x").map(drop),
        Err(KeyError::BadName)
    );
    assert_eq!(
        Rendezvous::new(0, 1, "x")
            .unwrap()
            .in_context("a/b")
            .map(drop),
        Err(KeyError::BadName)
    );
    assert_eq!(read(&mut xs), Ok(None));
}
