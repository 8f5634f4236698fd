//! Tests of the XenStore key schema (`keys.rs`): names, paths, the offer's keys, hostile values.
//!
//! The two sides' reading and checking are tested through them (the
//! `std` rendezvous over a fake xenstored, the ring one over a
//! simulated ring); here what is this module's alone.
extern crate std;
use super::*;
use std::string::String;
use std::vec::Vec;

fn written(f: impl FnOnce(&mut dyn FnMut(&str, &[u8]) -> Result<(), KeyError>)) -> Vec<String> {
    let mut out = Vec::new();
    f(&mut |k, v| {
        out.push(std::format!("{k}={}", std::str::from_utf8(v).unwrap()));
        Ok(())
    });
    out
}

#[test]
fn an_offer_is_written_in_order_state_last() {
    let layout = ChannelLayout::symmetric(4096);
    let refs: Vec<GrantRef> = (8..8 + 130).collect();
    let keys =
        written(|put| write_offer(put, 17, layout, refs.len(), &mut refs.iter().copied()).unwrap());
    let names: Vec<&str> = keys.iter().map(|k| k.split('=').next().unwrap()).collect();
    let order = [
        "version",
        "port",
        "to-acceptor",
        "to-offerer",
        "nrefs",
        "refs0",
        "refs1",
        "state",
    ];
    assert_eq!(names, order);
    assert_eq!(keys[1], "port=17");
    assert_eq!(keys[4], "nrefs=130");
    assert_eq!(keys[6], "refs1=136 137");
    assert_eq!(keys[7], "state=offered");
    // A count that lies about the references is not written.
    let mut n = 0;
    let mut count = |_: &str, _: &[u8]| -> Result<(), KeyError> {
        n += 1;
        Ok(())
    };
    let r = write_offer(&mut count, 17, layout, 3, &mut [8, 9].into_iter());
    assert_eq!(r, Err(KeyError::BadRefCount));
    let r = write_offer(&mut count, 17, layout, 1, &mut [8, 9].into_iter());
    assert_eq!(r, Err(KeyError::BadRefCount));
    assert_eq!(n, 12, "no state=offered after a lie");
}

#[test]
fn an_answer_is_written_state_last_and_its_reason_cut() {
    let keys = written(|put| write_answer(put, 21, Ok(4)).unwrap());
    assert_eq!(
        keys,
        ["version=1", "offer-port=21", "port=4", "state=accepted"]
    );
    let long = "é".repeat(200);
    let keys = written(|put| write_answer(put, 21, Err(&long)).unwrap());
    assert_eq!(keys.len(), 4);
    let error = keys[2].strip_prefix("error=").unwrap();
    assert_eq!(error.len(), ERROR_TEXT_MAX);
    assert_eq!(keys[3], "state=refused");
}

#[test]
fn names_keys_and_directories() {
    assert!(valid_name("a-Z_09"));
    assert!(!valid_name("") && !valid_name("a/b") && !valid_name(&"x".repeat(65)));
    assert_eq!(std::format!("{}", Key::Refs(3)), "refs3");
    assert_eq!(Key::Refs(3).name(), "refsN");
    let (ctx, pv) = (Name::new(CHANNELS).unwrap(), Name::new("pv").unwrap());
    assert_eq!(
        offer_dir(0, 5, &ctx, &pv).unwrap().as_str(),
        "/local/domain/0/data/coresident/channels/5/pv/offer"
    );
    assert_eq!(
        answer_dir(5, 0, &ctx, &pv).unwrap().as_str(),
        "/local/domain/5/data/coresident/channels/0/pv/answer"
    );
    assert_eq!(
        offers_from(0, 5, &ctx).unwrap().as_str(),
        "/local/domain/0/data/coresident/channels/5"
    );
    assert_eq!(Name::new("a/b").unwrap_err(), KeyError::BadName);
    assert_eq!(
        Path::new(format_args!("{}", "x".repeat(PATH_MAX + 1))).unwrap_err(),
        KeyError::PathTooLong
    );
    let long = Name::new(&"x".repeat(MAX_NAME_LEN)).unwrap();
    assert!(
        offer_dir(65535, 65535, &long, &long).is_ok(),
        "the longest names fit"
    );
    assert_eq!(
        xs_wire::decimal(u64::MAX, &mut [0; 20]),
        b"18446744073709551615"
    );
    assert_eq!(xs_wire::decimal(0, &mut [0; 20]), b"0");
}
