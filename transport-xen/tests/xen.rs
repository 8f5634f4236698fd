//! Tests against the real Xen devices and XenStore. They need a Xen domain
//! and are `#[ignore]`d on the host; `.ci/xen` runs them inside Xen under
//! QEMU (`ci/xen-qemu`), statically linked, with `--ignored --exact NAME`.
//!
//! - `dom0_*`: dom0 alone (xenstored running for `dom0_xenstore_socket`).
//! - `domu_xenstore_host` (dom0) and `domu_xenstore_guest` (the domU) run
//!   together: `DOMU_ID` names the guest. The channel between dom0 and a
//!   domU (the library's rendezvous) is in `tests/xen_domu.rs`.
#![cfg(target_os = "linux")]

use coresident_xen::xenstore::XsClient;
use std::time::{Duration, Instant};

use coresident_xen::protocol::xs_wire::{Access, Perm, XsErrno};
use coresident_xen::xenstore::WatchEvent;
use coresident_xen::{Evtchn, Gntalloc, Gntdev, UnmapNotify, XenStore, XsError, PAGE_SIZE};

const SECOND: Duration = Duration::from_secs(1);

fn rd(p: *mut u8, off: usize) -> u8 {
    // SAFETY: the tests pass offsets inside live mappings.
    unsafe { p.add(off).read_volatile() }
}

fn wr(p: *mut u8, off: usize, v: u8) {
    // SAFETY: the tests pass offsets inside live mappings.
    unsafe { p.add(off).write_volatile(v) }
}

#[test]
#[ignore = "needs a Xen dom0"]
fn dom0_grant_share_and_map() {
    let ga = Gntalloc::open().unwrap();
    let gd = Gntdev::open().unwrap();
    let pages = 4;
    let share = ga.share(0, pages).unwrap();
    println!("granted refs {:?} to dom0", share.refs());
    let map = gd.map(0, share.refs()).unwrap();
    assert_eq!(map.len(), pages * PAGE_SIZE);
    for page in 0..pages {
        let off = page * PAGE_SIZE + 17 * page;
        wr(share.as_ptr(), off, 0xA0 + page as u8);
        assert_eq!(
            rd(map.as_ptr(), off),
            0xA0 + page as u8,
            "page {page} via gntdev"
        );
        wr(map.as_ptr(), off + 1, 0xB0 + page as u8);
        assert_eq!(
            rd(share.as_ptr(), off + 1),
            0xB0 + page as u8,
            "page {page} via gntalloc"
        );
    }
}

#[test]
#[ignore = "needs a Xen dom0"]
fn dom0_evtchn_loopback() {
    let ev = Evtchn::open().unwrap();
    let p1 = ev.bind_unbound(0).unwrap();
    let p2 = ev.bind_interdomain(0, p1).unwrap();
    println!("ports {p1} <-> {p2}");
    // Whatever is pending now (Xen leaves a fresh port pending) is drained.
    let _ = ev.wait_for(p2, Duration::from_millis(200)).unwrap();
    for round in 0..100 {
        ev.notify(p2).unwrap();
        assert!(
            ev.wait_for(p1, 10 * SECOND).unwrap(),
            "round {round}: p1 did not fire"
        );
        ev.notify(p1).unwrap();
        assert!(
            ev.wait_for(p2, 10 * SECOND).unwrap(),
            "round {round}: p2 did not fire"
        );
    }
    // Raw pending/unmask: one notification, one port, then nothing more.
    ev.notify(p2).unwrap();
    assert!(ev.wait(Some(10 * SECOND)).unwrap());
    let mut buf = [0u32; 8];
    let n = ev.pending(&mut buf).unwrap();
    assert_eq!(&buf[..n], &[p1]);
    ev.unmask(p1).unwrap();
    assert_eq!(ev.pending(&mut buf).unwrap(), 0);
    ev.unbind(p2).unwrap();
    ev.unbind(p1).unwrap();
    assert!(ev.notify(p2).is_err());
}

#[test]
#[ignore = "needs a Xen dom0"]
fn dom0_unmap_notify() {
    let ga = Gntalloc::open().unwrap();
    let gd = Gntdev::open().unwrap();
    let ev = Evtchn::open().unwrap();
    let p1 = ev.bind_unbound(0).unwrap();
    let p2 = ev.bind_interdomain(0, p1).unwrap();
    let _ = ev.wait_for(p2, Duration::from_millis(200)).unwrap();

    // The mapping side goes away: its live byte is cleared in the granted
    // pages and the granting side's port fires.
    let share = ga.share(0, 2).unwrap();
    let map = gd.map(0, share.refs()).unwrap();
    let live = PAGE_SIZE + 64;
    wr(map.as_ptr(), live, 1);
    assert_eq!(rd(share.as_ptr(), live), 1);
    map.set_unmap_notify(UnmapNotify {
        clear_byte: Some(live),
        event: Some(p2),
    })
    .unwrap();
    drop(map);
    assert!(
        ev.wait_for(p1, 10 * SECOND).unwrap(),
        "gntdev unmap did not signal"
    );
    assert_eq!(
        rd(share.as_ptr(), live),
        0,
        "gntdev unmap did not clear the byte"
    );
    println!("gntdev unmap-notify: byte cleared, port {p1} fired");

    // The granting side goes away while the peer still maps the pages: the
    // byte is cleared in the pages the peer sees and the peer's port fires.
    let map = gd.map(0, share.refs()).unwrap();
    let live = 8;
    wr(share.as_ptr(), live, 1);
    assert_eq!(rd(map.as_ptr(), live), 1);
    share
        .set_unmap_notify(UnmapNotify {
            clear_byte: Some(live),
            event: Some(p1),
        })
        .unwrap();
    drop(share);
    assert!(
        ev.wait_for(p2, 10 * SECOND).unwrap(),
        "gntalloc release did not signal"
    );
    assert_eq!(
        rd(map.as_ptr(), live),
        0,
        "gntalloc release did not clear the byte"
    );
    println!("gntalloc unmap-notify: byte cleared, port {p2} fired");
    drop(map);
}

/// The next watch event's path and token, as text.
fn next_event(xs: &mut XenStore, timeout: Duration) -> (String, String) {
    let ev: WatchEvent = xs
        .wait_watch(Some(timeout))
        .unwrap()
        .expect("no watch event in time");
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).expect("UTF-8");
    (text(ev.path), text(ev.token))
}

#[test]
#[ignore = "needs a Xen dom0 with xenstored"]
fn dom0_xenstore_socket() {
    let mut xs = XenStore::open_socket().unwrap();
    let base = "/local/domain/0/data/coresident-test";
    let _ = xs.rm(base);
    assert_eq!(xs.read(&format!("{base}/missing")), Err(XsError::NotFound));
    xs.write(&format!("{base}/a"), b"1234").unwrap();
    xs.write(&format!("{base}/b"), b"not a number").unwrap();
    xs.mkdir(&format!("{base}/c")).unwrap();
    assert_eq!(xs.read_u32(&format!("{base}/a")).unwrap(), 1234);
    assert!(matches!(
        xs.read_u32(&format!("{base}/b")),
        Err(XsError::Value(_))
    ));
    let mut dir = xs.children(base).unwrap();
    dir.sort();
    assert_eq!(dir, ["a", "b", "c"]);

    let perms = [
        Perm {
            domid: 0,
            access: Access::None,
        },
        Perm {
            domid: 7,
            access: Access::Read,
        },
    ];
    xs.set_perms(&format!("{base}/a"), &perms).unwrap();
    assert_eq!(xs.perms(&format!("{base}/a")).unwrap(), perms);

    xs.watch(base, "t1").unwrap();
    let ev = next_event(&mut xs, 30 * SECOND);
    assert_eq!(
        (ev.0.as_str(), ev.1.as_str()),
        (base, "t1"),
        "initial watch event"
    );
    xs.write(&format!("{base}/c/d"), b"x").unwrap();
    let ev = next_event(&mut xs, 30 * SECOND);
    assert_eq!(ev.0, format!("{base}/c/d"));
    xs.unwatch(base, "t1").unwrap();

    let mut tx = xs.transaction().unwrap();
    tx.write(&format!("{base}/tx"), b"in-tx").unwrap();
    assert_eq!(tx.read(&format!("{base}/tx")).unwrap(), b"in-tx");
    tx.commit().unwrap();
    assert_eq!(xs.read(&format!("{base}/tx")).unwrap(), b"in-tx");

    assert_eq!(xs.get_domain_path(0).unwrap(), b"/local/domain/0");
    assert_eq!(
        xs.write(&format!("{base}/big"), &[b'x'; 5000])
            .map_err(|_| ()),
        Err(())
    );
    xs.rm(base).unwrap();
    assert_eq!(xs.read(&format!("{base}/a")), Err(XsError::NotFound));
}

/// Relative to the guest's home, `/local/domain/$DOMU_ID`.
const REL: &str = "data/coresident";

#[test]
#[ignore = "needs a Xen dom0 with a domU running domu_xenstore_guest"]
fn domu_xenstore_host() {
    let domu: u16 = std::env::var("DOMU_ID")
        .expect("DOMU_ID")
        .parse()
        .expect("DOMU_ID");
    let mut xs = XenStore::open_socket().unwrap();
    let home = String::from_utf8(xs.get_domain_path(domu).unwrap().to_vec()).unwrap();
    let base = format!("{home}/{REL}");
    let offer = format!("{base}/offer");
    let answer = format!("{base}/answer");
    // The offer: dom0 owns it, the guest may only read it.
    xs.write(&format!("{offer}/gref"), b"123").unwrap();
    xs.write(&format!("{offer}/port"), b"45").unwrap();
    xs.write(&format!("{offer}/note"), b"hello").unwrap();
    // The answer: owned by the guest.
    xs.mkdir(&answer).unwrap();
    xs.set_perms(
        &answer,
        &[Perm {
            domid: domu,
            access: Access::None,
        }],
    )
    .unwrap();
    xs.watch(&answer, "answer").unwrap();
    let read_only = [
        Perm {
            domid: 0,
            access: Access::None,
        },
        Perm {
            domid: domu,
            access: Access::Read,
        },
    ];
    for k in ["gref", "port", "note"] {
        xs.set_perms(&format!("{offer}/{k}"), &read_only).unwrap();
    }
    // `ready` last: the guest waits for it.
    xs.write(&format!("{offer}/ready"), b"1").unwrap();
    xs.set_perms(&format!("{offer}/ready"), &read_only).unwrap();
    xs.set_perms(&offer, &read_only).unwrap();
    println!("dom0: offer published under {offer}");

    let deadline = Instant::now() + Duration::from_secs(200);
    let value = loop {
        match xs.read(&format!("{answer}/value")) {
            Ok(v) => break v,
            Err(XsError::NotFound) => {}
            Err(e) => panic!("reading the answer: {e}"),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no answer from the domU");
        let _ = xs.wait_watch(Some(left)).unwrap();
    };
    assert_eq!(value, b"pong:hello:123:45");
    println!(
        "dom0: the domU answered via its watch: {}",
        String::from_utf8_lossy(value)
    );
    xs.write(&format!("{offer}/ack"), b"done").unwrap();
    xs.set_perms(&format!("{offer}/ack"), &read_only).unwrap();
    // `.ci/xen` runs several tests in one boot and greps these markers.
    println!("XEN-CHECK domu_xenstore_host ok");
}

#[test]
#[ignore = "needs a Xen domU with dom0 running domu_xenstore_host"]
fn domu_xenstore_guest() {
    let mut xs = XenStore::open().unwrap();
    let offer = format!("{REL}/offer");
    xs.watch(&offer, "offer").unwrap();
    let deadline = Instant::now() + Duration::from_secs(200);
    // The guest may boot before dom0 wrote anything: wait for `ready`.
    let wait_for = |xs: &mut XenStore, key: &str| loop {
        match xs.read(key) {
            Ok(v) => return v.to_vec(),
            Err(XsError::NotFound | XsError::Daemon(XsErrno::EACCES)) => {}
            Err(e) => panic!("reading {key}: {e}"),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "{key} never appeared");
        let _ = xs.wait_watch(Some(left)).unwrap();
    };
    wait_for(&mut xs, &format!("{offer}/ready"));
    let gref = xs.read_u32(&format!("{offer}/gref")).unwrap();
    let port = xs.read_u32(&format!("{offer}/port")).unwrap();
    let note = xs.read_string(&format!("{offer}/note")).unwrap();
    println!("domU: offer gref {gref} port {port} note {note}");
    // Read-only for us.
    assert_eq!(
        xs.write(&format!("{offer}/gref"), b"666"),
        Err(XsError::Daemon(XsErrno::EACCES)),
        "the guest could overwrite dom0's offer"
    );
    xs.write(
        &format!("{REL}/answer/value"),
        format!("pong:{note}:{gref}:{port}").as_bytes(),
    )
    .unwrap();
    let ack = wait_for(&mut xs, &format!("{offer}/ack"));
    assert_eq!(ack, b"done");
    println!("domU: dom0 acknowledged");
    watch_refusals_are_request_errors();
    println!("XEN-CHECK domu_xenstore_guest ok");
}

/// Issue 17, finding 12: over `/dev/xen/xenbus` Linux answers a refused
/// watch with the `write(2)` error. Past the domain's watch quota
/// (xenstored's `quota-nb-watch-per-domain`, 128; the domU's kernel holds
/// a few) a watch fails with `E2BIG`, a path xenstored refuses with
/// `EINVAL`; each is that request's error and the connection goes on.
fn watch_refusals_are_request_errors() {
    let mut xs = XenStore::open().unwrap();
    let mut set = Vec::new();
    let refused = loop {
        let path = format!("data/coresident-test/w{}", set.len());
        match xs.watch(&path, "quota") {
            Ok(()) => set.push(path),
            Err(e) => break e,
        }
        assert!(set.len() < 4096, "no watch quota");
    };
    println!(
        "domU: watch {} refused: {refused} ({refused:?})",
        set.len() + 1
    );
    assert_eq!(refused, XsError::Daemon(XsErrno::E2BIG));
    let me = xs
        .read_string("domid")
        .expect("the connection survives E2BIG");
    for path in &set {
        xs.unwatch(path, "quota").unwrap();
    }
    let bad = xs.watch("data/bad!path", "t");
    println!("domU: watch data/bad!path: {bad:?}");
    assert_eq!(bad, Err(XsError::Daemon(XsErrno::EINVAL)));
    assert_eq!(
        xs.read_string("domid")
            .expect("the connection survives EINVAL"),
        me
    );
    println!(
        "XEN-CHECK domu_xenstore watch refusals are request errors (watch {} E2BIG, bad path EINVAL)",
        set.len() + 1
    );
}
