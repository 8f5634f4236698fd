//! The fuzzer writes a guest's residency advertisement (issue 17): the
//! value of `/local/domain/N/data/coresident/advertise`, which a guest
//! writes freely and the dom0 agent parses
//! (`coresident_xen::residency::Addresses::parse_advert`), and a peer
//! entry of a list, which the guest's view parses (`Addresses::parse`).
//!
//! Properties: no panic; whatever parses obeys the documented bounds (at
//! most `MAX_MACS`/`MAX_IPV4`/`MAX_IPV6` of each kind, no duplicate, no
//! unusable address, one spelling per address: no IPv4-mapped IPv6), its
//! encoding fits `MAX_VALUE_LEN` and parses back to the same set.
#![no_main]

use coresident_xen::residency::{Addr, Addresses, MAX_IPV4, MAX_IPV6, MAX_MACS, MAX_VALUE_LEN};
use libfuzzer_sys::fuzz_target;

fn check(a: &Addresses) {
    assert!(a.macs().len() <= MAX_MACS);
    assert!(a.ipv4().len() <= MAX_IPV4);
    assert!(a.ipv6().len() <= MAX_IPV6);
    for x in a.iter() {
        assert_eq!(x, x.canonical(), "{x} has another spelling");
        match x {
            Addr::Mac(m) => assert!(m[0] & 1 == 0 && m != [0; 6]),
            Addr::Ipv4(v) => assert!(
                !(v.is_unspecified() || v.is_loopback() || v.is_broadcast() || v.is_multicast())
            ),
            Addr::Ipv6(v) => assert!(!(v.is_unspecified() || v.is_loopback() || v.is_multicast())),
        }
    }
    let body = a.encode();
    assert!(body.len() <= MAX_VALUE_LEN);
    assert_eq!(Addresses::parse(body.as_bytes()).as_ref(), Ok(a));
    let advert = a.encode_advert();
    assert!(advert.len() <= MAX_VALUE_LEN);
    assert_eq!(Addresses::parse_advert(advert.as_bytes()).as_ref(), Ok(a));
}

fuzz_target!(|data: &[u8]| {
    if let Ok(a) = Addresses::parse_advert(data) {
        check(&a);
    }
    if let Ok(a) = Addresses::parse(data) {
        check(&a);
    }
});
