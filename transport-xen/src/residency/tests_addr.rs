//! Tests of the residency addresses (`addr.rs`): parsing, encoding, hostile values.

use super::*;

fn mac(last: u8) -> Addr {
    Addr::Mac([0x00, 0x16, 0x3e, 0, 0, last])
}

#[test]
fn round_trip() {
    let a = Addresses::from_addrs([
        mac(2),
        mac(1),
        Addr::Ipv4(Ipv4Addr::new(10, 0, 0, 2)),
        Addr::Ipv6("fd00::2".parse().unwrap()),
    ])
    .unwrap();
    assert_eq!(
        a.encode(),
        "mac 00:16:3e:00:00:01\nmac 00:16:3e:00:00:02\nipv4 10.0.0.2\nipv6 fd00::2\n"
    );
    assert_eq!(Addresses::parse(a.encode().as_bytes()).unwrap(), a);
    assert_eq!(
        Addresses::parse_advert(a.encode_advert().as_bytes()).unwrap(),
        a
    );
    assert_eq!(Addresses::parse(b"").unwrap(), Addresses::new());
    assert_eq!(
        Addresses::parse_advert(b"coresident 1").unwrap(),
        Addresses::new()
    );
    assert_eq!(
        Addresses::parse(b"mac 00:16:3E:AB:cd:01").unwrap().macs(),
        [[0, 0x16, 0x3e, 0xab, 0xcd, 1]]
    );
}

#[test]
fn hostile_values_are_typed_errors() {
    use AdvertError as E;
    let cases: &[(&[u8], E)] = &[
        (b"coresident 2\n", E::Version(2)),
        (b"coresident\n", E::MissingVersion),
        (b"coresident 1x\n", E::MissingVersion),
        (b"mac 00:16:3e:00:00:01\n", E::MissingVersion),
        (b"", E::MissingVersion),
        (b"coresident 1\n\n", E::BadLine(2)),
        (b"coresident 1\nmac  00:16:3e:00:00:01", E::BadLine(2)),
        (b"coresident 1\nmac 00:16:3e:00:00:01 ", E::BadLine(2)),
        (b"coresident 1\nmac", E::BadLine(2)),
        (b"coresident 1\nether 00:16:3e:00:00:01", E::UnknownKey(2)),
        (b"coresident 1\nmac 01:16:3e:00:00:01", E::BadMac(2)),
        (b"coresident 1\nmac 00:00:00:00:00:00", E::BadMac(2)),
        (b"coresident 1\nmac 00-16-3e-00-00-01", E::BadMac(2)),
        (b"coresident 1\nmac 00:16:3e:00:00:0g", E::BadMac(2)),
        (b"coresident 1\nmac +0:16:3e:00:00:01", E::BadMac(2)),
        (b"coresident 1\nipv4 10.0.0.256", E::BadIpv4(2)),
        (b"coresident 1\nipv4 010.0.0.1", E::BadIpv4(2)),
        (b"coresident 1\nipv4 0.0.0.0", E::BadIpv4(2)),
        (b"coresident 1\nipv4 127.0.0.1", E::BadIpv4(2)),
        (b"coresident 1\nipv4 255.255.255.255", E::BadIpv4(2)),
        (b"coresident 1\nipv4 224.0.0.1", E::BadIpv4(2)),
        (b"coresident 1\nipv6 ::", E::BadIpv6(2)),
        (b"coresident 1\nipv6 ::1", E::BadIpv6(2)),
        (b"coresident 1\nipv6 ff02::1", E::BadIpv6(2)),
        (b"coresident 1\nipv6 fd00::2::3", E::BadIpv6(2)),
        (
            b"coresident 1\nipv4 10.0.0.2\nipv4 10.0.0.2",
            E::Duplicate(3),
        ),
        (b"coresident 1\nipv4 10.0.0.2\r\n", E::NotAscii),
        (b"coresident 1\nipv4 10.0.0.\xc3\xa9", E::NotAscii),
        (b"coresident 1\0", E::NotAscii),
    ];
    for (v, e) in cases {
        assert_eq!(
            Addresses::parse_advert(v),
            Err(*e),
            "{:?}",
            String::from_utf8_lossy(v)
        );
    }
    let long = vec![b'x'; MAX_VALUE_LEN + 1];
    assert_eq!(Addresses::parse(&long), Err(E::TooLong(MAX_VALUE_LEN + 1)));
    let line = format!("ipv6 {}", "1".repeat(MAX_LINE_LEN));
    assert_eq!(Addresses::parse(line.as_bytes()), Err(E::BadLine(1)));
    let many: String = (1..=MAX_MACS + 1)
        .map(|i| format!("mac 00:16:3e:00:00:{i:02x}\n"))
        .collect();
    assert_eq!(
        Addresses::parse(many.as_bytes()),
        Err(E::TooMany(AddrKind::Mac))
    );
    let many: String = (1..=MAX_IPV4 + 1)
        .map(|i| format!("ipv4 10.0.0.{i}\n"))
        .collect();
    assert_eq!(
        Addresses::parse(many.as_bytes()),
        Err(E::TooMany(AddrKind::Ipv4))
    );
    let many: String = (1..=MAX_IPV6 + 1)
        .map(|i| format!("ipv6 fd00::{i:x}\n"))
        .collect();
    assert_eq!(
        Addresses::parse(many.as_bytes()),
        Err(E::TooMany(AddrKind::Ipv6))
    );
}

/// Random bytes and mutated valid values: every outcome is a value or
/// a typed error, and whatever parses re-encodes to something that
/// parses to the same set.
#[test]
fn random_values_never_panic() {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let base = Addresses::from_addrs([
        mac(1),
        Addr::Ipv4(Ipv4Addr::new(10, 0, 0, 2)),
        Addr::Ipv6("fd00::2".parse().unwrap()),
    ])
    .unwrap()
    .encode_advert()
    .into_bytes();
    let alphabet = b"coresidentmacipv46 :.0123456789abcdefABCDEF\n\0\xff";
    let (mut ok, mut err) = (0, 0);
    for i in 0..50_000 {
        let v: Vec<u8> = if i % 2 == 0 {
            let len = (next() % 200) as usize;
            (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect()
        } else {
            let mut v = base.clone();
            for _ in 0..1 + next() % 3 {
                let at = (next() % v.len() as u64) as usize;
                match next() % 3 {
                    0 => v[at] = alphabet[(next() % alphabet.len() as u64) as usize],
                    1 => {
                        v.remove(at);
                    }
                    _ => v.insert(at, alphabet[(next() % alphabet.len() as u64) as usize]),
                }
            }
            v
        };
        for advert in [true, false] {
            let r = if advert {
                Addresses::parse_advert(&v)
            } else {
                Addresses::parse(&v)
            };
            match r {
                Ok(a) => {
                    ok += 1;
                    let again = if advert {
                        Addresses::parse_advert(a.encode_advert().as_bytes())
                    } else {
                        Addresses::parse(a.encode().as_bytes())
                    };
                    assert_eq!(again.as_ref(), Ok(&a), "{:?}", String::from_utf8_lossy(&v));
                }
                Err(_) => err += 1,
            }
        }
    }
    // Both outcomes were exercised.
    assert!(ok > 100 && err > 100, "ok {ok}, err {err}");
}

#[test]
fn the_largest_set_fits_one_value() {
    let mut a = Addresses::new();
    for i in 0..MAX_MACS {
        a.push(Addr::Mac([2, 0xff, 0xff, 0xff, 0xff, i as u8]))
            .unwrap();
    }
    for i in 0..MAX_IPV4 {
        a.push(Addr::Ipv4(Ipv4Addr::new(192, 168, 200, 200 + i as u8)))
            .unwrap();
    }
    for i in 0..MAX_IPV6 {
        a.push(Addr::Ipv6(Ipv6Addr::new(
            0xfd00,
            0xffff,
            0xffff,
            0xffff,
            0xffff,
            0xffff,
            0xffff,
            0xff00 + i as u16,
        )))
        .unwrap();
    }
    assert_eq!(a.push(mac(9)), Err(AdvertError::TooMany(AddrKind::Mac)));
    let v = a.encode_advert();
    assert!(v.len() <= MAX_VALUE_LEN, "{}", v.len());
    assert_eq!(Addresses::parse_advert(v.as_bytes()).unwrap(), a);
}
