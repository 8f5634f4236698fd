//! Tests of the XenStore wire format (`xs_wire.rs`) against xs_wire.h.

extern crate std;
use super::*;
use std::vec::Vec;

#[test]
fn header_round_trip_and_limits() {
    let h = Header {
        ty: MsgType::Read,
        req_id: 7,
        tx_id: 3,
        len: 12,
    };
    let b = h.encode().unwrap();
    assert_eq!(Header::decode(&b).unwrap(), h);
    let mut raw = XsdSockmsg {
        r#type: 2,
        req_id: 1,
        tx_id: 0,
        len: 4097,
    };
    assert_eq!(
        Header::decode(raw.as_bytes().try_into().unwrap()),
        Err(WireError::TooLong(4097))
    );
    raw.len = u32::MAX;
    assert!(Header::decode(raw.as_bytes().try_into().unwrap()).is_err());
    raw.len = 0;
    raw.r#type = 99;
    assert_eq!(
        Header::decode(raw.as_bytes().try_into().unwrap()),
        Err(WireError::UnknownType(99))
    );
    let big = Header {
        len: PAYLOAD_MAX + 1,
        ..h
    };
    assert!(big.encode().is_err());
}

#[test]
fn payload_building() {
    let mut p = Payload::new();
    p.path("/a/b").unwrap().raw(b"val").unwrap();
    assert_eq!(p.as_bytes(), b"/a/b\0val");
    assert_eq!(Payload::new().path("").unwrap_err(), WireError::BadPath);
    assert_eq!(
        Payload::new().string(b"a\0b").unwrap_err(),
        WireError::InteriorNul
    );
    let long = "x".repeat(REL_PATH_MAX + 1);
    assert_eq!(Payload::new().path(&long).unwrap_err(), WireError::BadPath);
    let mut p = Payload::new();
    p.raw(&[1; PAYLOAD_MAX]).unwrap();
    assert!(p.raw(&[1]).is_err());
    assert_eq!(p.as_bytes().len(), PAYLOAD_MAX);
}

#[test]
fn strings_and_events() {
    let v: Vec<&[u8]> = split_strings(b"a\0bc\0").collect();
    assert_eq!(v, [b"a".as_slice(), b"bc"]);
    assert_eq!(split_strings(b"").count(), 0);
    assert_eq!(split_strings(b"x").count(), 1);
    assert_eq!(
        parse_watch_event(b"/p\0tok\0").unwrap(),
        (&b"/p"[..], &b"tok"[..])
    );
    assert_eq!(parse_watch_event(b"/p").unwrap_err(), WireError::Malformed);
    assert_eq!(parse_watch_event(b"").unwrap_err(), WireError::Malformed);
}

#[test]
fn errnos() {
    assert_eq!(XsErrno::parse(b"ENOENT\0"), XsErrno::ENOENT);
    assert_eq!(XsErrno::parse(b"EACCES"), XsErrno::EACCES);
    assert_eq!(XsErrno::parse(b"\xff\xfe"), XsErrno::Unknown);
    assert_eq!(XsErrno::EAGAIN.name(), "EAGAIN");
}

#[test]
fn numbers_are_strict() {
    assert_eq!(parse_u32(b"42"), Ok(42));
    assert_eq!(parse_u32(b"42\0"), Ok(42));
    assert_eq!(parse_u32(b"4294967295"), Ok(u32::MAX));
    assert_eq!(parse_u32(b"4294967296"), Err(ValueError::OutOfRange));
    assert_eq!(
        parse_u64(b"99999999999999999999999"),
        Err(ValueError::OutOfRange)
    );
    assert_eq!(parse_u32(b""), Err(ValueError::Empty));
    for bad in [&b"-1"[..], b"+1", b" 1", b"1 ", b"0x10", b"1e3", b"\xff"] {
        assert_eq!(parse_u32(bad), Err(ValueError::NotANumber), "{bad:?}");
    }
    assert_eq!(parse_u16(b"65536"), Err(ValueError::OutOfRange));
}

#[test]
fn permissions() {
    assert_eq!(
        Perm::parse(b"r5"),
        Ok(Perm {
            domid: 5,
            access: Access::Read
        })
    );
    assert_eq!(
        Perm::parse(b"n0"),
        Ok(Perm {
            domid: 0,
            access: Access::None
        })
    );
    assert_eq!(Perm::parse(b"x5"), Err(ValueError::BadPermission));
    assert_eq!(Perm::parse(b"r"), Err(ValueError::BadPermission));
    assert_eq!(Perm::parse(b""), Err(ValueError::BadPermission));
    assert_eq!(Perm::parse(b"b70000"), Err(ValueError::OutOfRange));
    let mut buf = [0; 6];
    for (p, s) in [
        (
            Perm {
                domid: 0,
                access: Access::None,
            },
            &b"n0"[..],
        ),
        (
            Perm {
                domid: 65535,
                access: Access::Both,
            },
            b"b65535",
        ),
        (
            Perm {
                domid: 12,
                access: Access::Write,
            },
            b"w12",
        ),
    ] {
        assert_eq!(p.encode(&mut buf), s);
        assert_eq!(Perm::parse(s), Ok(p));
    }
}
