//! The fuzzer writes the peer's XenStore rendezvous keys (issue 17): the
//! offer directory's `version`, `port`, `to-acceptor`, `to-offerer`,
//! `nrefs`, `refsN` and `state`, and the answer's `version`, `offer-port`,
//! `port`, `error` and `state`, each present, absent or unreadable, with
//! any bytes, and both readers (`coresident_xen::protocol::keys::{
//! read_offer, read_answer}`, `core` only, shared by the daemon and the
//! PV kernel) run over them.
//!
//! Properties: no panic; an offer that reads back `Ok(Some(..))` obeys
//! every documented bound (port in `1..PORT_LIMIT`, `nrefs` in
//! `1..=max`, exactly `nrefs` references, each in
//! `FIRST_GRANT_REF..GRANT_REF_LIMIT`), and written again with
//! `write_offer` it reads back the same; an answer is only ever judged for
//! the port it names.
#![no_main]

use std::collections::BTreeMap;

use coresident_xen::protocol::crxg::{FIRST_GRANT_REF, GRANT_REF_LIMIT, PORT_LIMIT};
use coresident_xen::protocol::keys::{read_answer, read_offer, write_offer, KeyError};
use coresident_xen::protocol::xs_wire::{MsgType, Payload, XsErrno};
use coresident_xen::xenstore::{TxId, WatchEvent, XsClient, XsError};
use libfuzzer_sys::fuzz_target;

/// A store of the fuzzer's values: `None` stands for a node we may not
/// read (EACCES). Only reads are asked of it.
#[derive(Default)]
struct Fake(BTreeMap<String, Option<Vec<u8>>>);

impl XsClient for Fake {
    fn request(&mut self, _tx: TxId, ty: MsgType, payload: &Payload) -> Result<&[u8], XsError> {
        assert_eq!(ty, MsgType::Read, "the readers only read");
        let path = payload.as_bytes().strip_suffix(&[0]).unwrap_or(payload.as_bytes());
        let path = std::str::from_utf8(path).expect("the readers' paths are text");
        match self.0.get(path) {
            None => Err(XsError::NotFound),
            Some(None) => Err(XsError::Daemon(XsErrno::EACCES)),
            Some(Some(v)) => Ok(v),
        }
    }

    fn wait_watch(&mut self, _: Option<std::time::Duration>) -> Result<Option<WatchEvent<'_>>, XsError> {
        Ok(None)
    }

    fn lost_events(&self) -> u64 {
        0
    }
}

const OFFER: &str = "/local/domain/3/data/coresident/channels/0/c/offer";
const ANSWER: &str = "/local/domain/0/data/coresident/channels/3/c/answer";
const OFFER_KEYS: [&str; 11] = [
    "version", "port", "to-acceptor", "to-offerer", "nrefs", "refs0", "refs1", "refs2", "refs3",
    "state", "refs4",
];
const ANSWER_KEYS: [&str; 5] = ["version", "offer-port", "port", "error", "state"];

/// Splits the input into one value per key: a tag byte (0 absent, 1
/// denied, otherwise present) and a length byte, then the bytes; the
/// last byte picks the reader's limit on references.
fn store(data: &[u8]) -> (Fake, usize, u32) {
    let mut s = Fake::default();
    let mut at = 0;
    let mut take = |n: usize| {
        let v = data.get(at..at + n).map(<[u8]>::to_vec);
        at += n;
        v
    };
    let dirs = OFFER_KEYS
        .iter()
        .map(|k| (OFFER, *k))
        .chain(ANSWER_KEYS.iter().map(|k| (ANSWER, *k)));
    for (dir, key) in dirs {
        let Some(h) = take(2) else { break };
        let path = format!("{dir}/{key}");
        match h[0] % 4 {
            0 => {}
            1 => {
                s.0.insert(path, None);
            }
            _ => {
                // Longer values for the reference lists, which hold up to
                // 128 numbers.
                let len = usize::from(h[1]) * if key.starts_with("refs") { 6 } else { 1 };
                let v = take(len).unwrap_or_default();
                s.0.insert(path, Some(v));
            }
        }
    }
    let max = usize::from(*data.last().unwrap_or(&0)) * 4 + 1;
    let port = u32::from(*data.first().unwrap_or(&0));
    (s, max, port)
}

fuzz_target!(|data: &[u8]| {
    let (mut s, max, port) = store(data);
    let mut refs = Vec::new();
    let r = read_offer(&mut s, OFFER, max, &mut |r| {
        refs.push(r);
        Ok(())
    });
    if let Ok(Some(k)) = r {
        assert!((1..PORT_LIMIT).contains(&k.port));
        assert!(k.nrefs >= 1 && k.nrefs <= max);
        assert_eq!(refs.len(), k.nrefs);
        assert!(refs
            .iter()
            .all(|r| (FIRST_GRANT_REF..GRANT_REF_LIMIT).contains(r)));
        // Written again, the same offer reads back.
        let mut again = Fake::default();
        let mut put = |key: &str, v: &[u8]| -> Result<(), KeyError> {
            again.0.insert(format!("{OFFER}/{key}"), Some(v.to_vec()));
            Ok(())
        };
        write_offer(&mut put, k.port, k.layout, k.nrefs, &mut refs.iter().copied())
            .expect("a valid offer writes");
        let mut back = Vec::new();
        let k2 = read_offer(&mut again, OFFER, max, &mut |r| {
            back.push(r);
            Ok(())
        });
        assert_eq!(k2, Ok(Some(k)));
        assert_eq!(back, refs);
    }
    // The answer, for the port the input names and for another one.
    for p in [port, port.wrapping_add(1)] {
        let a = read_answer(&mut s, ANSWER, p);
        if let Ok(Some(_)) = a {
            let named = s
                .0
                .get(&format!("{ANSWER}/offer-port"))
                .and_then(|v| v.as_ref())
                .and_then(|v| coresident_xen::protocol::xs_wire::parse_u32(v).ok());
            assert_eq!(named, Some(p), "an answer judged for another offer");
        }
    }
});
