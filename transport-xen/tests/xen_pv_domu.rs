//! The dom0 half of the `pv-domu` job (`ci/xen-jobs/pv-domu.sh`): the
//! project's `no_std` PV kernel runs as a domU (`transport-xen/pv-kernel`,
//! binary `pv-domu`) and this test, in dom0, meets it through the XenStore
//! rendezvous (`coresident_xen::rendezvous`) twice. First dom0 offers: the
//! kernel reads the offer over its start_info XenStore ring
//! (`coresident_xen::rendezvous::ChannelKeys`), maps dom0's grants with hypercalls
//! and answers. Then the kernel offers its own pages and dom0 accepts
//! (gntdev maps the kernel's grants). On each channel the two exchange
//! messages both ways through the same `Channel` (see
//! `common/pv_domu_msgs.rs`).
//! `#[ignore]`d: it needs the kernel running in a domU (`DOMU_ID`).
#![cfg(target_os = "linux")]

#[path = "common/pv_domu_msgs.rs"]
#[allow(dead_code)]
mod msgs;

use coresident_xen::xenstore::XsClient;
use std::time::Duration;

use coresident::{
    Channel, ChannelConfig, ChannelError, ChannelLayout, Doorbell, Link, SharedRegion, StdClock,
};
use coresident_xen::protocol::xs_wire::{Access, Perm};
use coresident_xen::rendezvous::{ChannelKeys, Rendezvous};
use coresident_xen::XenStore;
use msgs::{Got, Rng, Totals};

/// Messages dom0 sends on each channel (the kernel answers each with one of
/// its own).
/// `PV_DOMU_MESSAGES` overrides.
const MESSAGES: u32 = 10_000;
const WAIT: Option<Duration> = Some(Duration::from_secs(60));

#[test]
#[ignore = "needs a Xen dom0 with the pv-kernel running as a domU"]
fn pv_domu_dom0() {
    let domu: u16 = std::env::var("DOMU_ID")
        .expect("DOMU_ID")
        .parse()
        .expect("DOMU_ID");
    let n: u32 = std::env::var("PV_DOMU_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(MESSAGES);
    let mut xs = XenStore::open_socket().unwrap();
    hostile_offer_first(&mut xs, domu);
    let mut rdv = Rendezvous::new(0, domu, msgs::CHANNEL).unwrap();
    let pending = rdv
        .offer(&mut xs, ChannelLayout::symmetric(16 * 1024))
        .unwrap();
    println!(
        "dom0: offered channel {:?} to the PV kernel in dom{domu}",
        msgs::CHANNEL
    );
    let link = pending
        .complete(&mut xs, Some(Duration::from_secs(120)))
        .unwrap();
    let t = drive(link, n, 0x5eed_d0d0_0000_0001);
    report(msgs::CHANNEL, domu, &t);
    rdv.withdraw(&mut xs).unwrap();

    // The other way round: the kernel grants its pages, dom0 maps them.
    let mut back = Rendezvous::new(0, domu, msgs::CHANNEL_BACK).unwrap();
    let link = back
        .accept(&mut xs, Some(Duration::from_secs(120)))
        .unwrap();
    println!("dom0: accepted the kernel's offer {:?}", msgs::CHANNEL_BACK);
    let t = drive(link, n, 0x5eed_d0d0_0000_0004);
    report(msgs::CHANNEL_BACK, domu, &t);
    back.withdraw(&mut xs).unwrap();
    println!("XEN-CHECK pv_domu_dom0 ok");
}

/// Publishes an offer naming grant reference 1 (Xen reserves 0..8: 1 is
/// the XenStore page) and waits until the kernel answers `refused`; the
/// real offer then replaces it.
fn hostile_offer_first(xs: &mut XenStore, domu: u16) {
    let keys = ChannelKeys::new(0, domu, msgs::CHANNEL).unwrap();
    let dir = keys.offer_dir().unwrap().as_str().to_owned();
    let answer = keys.peer_answer_dir().unwrap().as_str().to_owned();
    let _ = xs.rm(&dir);
    xs.mkdir(&dir).unwrap();
    let perms = [
        Perm {
            domid: 0,
            access: Access::None,
        },
        Perm {
            domid: domu,
            access: Access::Read,
        },
    ];
    xs.set_perms(&dir, &perms).unwrap();
    let refs = "1 101 102 103 104 105 106 107 108 109";
    for (k, v) in [
        ("version", "1"),
        ("port", "131071"),
        ("to-acceptor", "16384"),
        ("to-offerer", "16384"),
        ("nrefs", "10"),
        ("refs0", refs),
        ("state", "offered"),
    ] {
        xs.write(&format!("{dir}/{k}"), v.as_bytes()).unwrap();
    }
    xs.watch(&answer, "hostile").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let error = loop {
        if let Ok(state) = xs.read(&format!("{answer}/state")) {
            if state == b"refused" {
                break String::from_utf8_lossy(xs.read(&format!("{answer}/error")).unwrap())
                    .into_owned();
            }
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        assert!(
            !left.is_zero(),
            "the kernel did not refuse the hostile offer"
        );
        let _ = xs.wait_watch(Some(left)).unwrap();
    };
    xs.unwatch(&answer, "hostile").unwrap();
    assert!(error.contains("grant reference 1 "), "{error}");
    println!("dom0: the kernel refused an offer of grant reference 1: {error:?}");
}

fn report(name: &str, domu: u16, t: &Totals) {
    println!(
        "dom0: {name}: sent {} and received {} messages, hashes {:016x}/{:016x} match dom{domu}'s",
        t.sent, t.received, t.sent_hash, t.received_hash
    );
}

/// Sends `n` messages (random sizes and bytes from `seed`), checking the
/// kernel's answers as they come, then the summaries both ways; closes.
fn drive<R: SharedRegion, D: Doorbell>(link: Link<R, D>, n: u32, seed: u64) -> Totals {
    let config = ChannelConfig {
        liveness: None,
        ..ChannelConfig::default()
    };
    let mut ch = Channel::new(link, config, StdClock::default()).unwrap();
    let mut rng = Rng(seed);
    let mut t = Totals::new();
    let (mut out, mut got) = (vec![0u8; msgs::MAX_MESSAGE], vec![0u8; ch.max_message()]);
    let take = |msg: &[u8], t: &mut Totals| match msgs::check(t, msg) {
        Ok(Got::Data) => {}
        other => panic!("message {} from the kernel: {other:?}", t.received),
    };
    while t.sent < n {
        let len = msgs::next_message(&mut rng, &mut t, &mut out);
        loop {
            match ch.send(&out[..len]) {
                Ok(()) => break,
                Err(ChannelError::Full) => {
                    let len = ch.recv_blocking(&mut got, WAIT).expect("kernel");
                    take(&got[..len], &mut t);
                }
                Err(e) => panic!("send {}: {e}", t.sent),
            }
        }
        while let Ok(len) = ch.recv(&mut got) {
            take(&got[..len], &mut t);
        }
    }
    ch.flush().unwrap();
    while t.received < n {
        let len = ch.recv_blocking(&mut got, WAIT).expect("kernel");
        take(&got[..len], &mut t);
    }
    // Everything the kernel sent is here: our summary lets it check both
    // directions, and its summary lets us check them.
    let len = msgs::end_message(&t, &mut out);
    ch.send_blocking(&out[..len], WAIT).unwrap();
    ch.flush().unwrap();
    let len = ch.recv_blocking(&mut got, WAIT).unwrap();
    assert_eq!(
        msgs::check(&mut t, &got[..len]),
        Ok(Got::End),
        "the kernel's summary"
    );
    println!("dom0: channel stats {:?}", ch.stats());
    // Leaving clears our live byte (unmap-notify): the kernel waits for it.
    drop(ch.close());
    t
}

/// The message protocol on the host: two sides, one stream each way, and
/// every corruption caught.
#[test]
fn pv_domu_messages_check_both_ways() {
    let (mut a, mut b) = (Totals::new(), Totals::new());
    let (mut ra, mut rb) = (Rng(1), Rng(2));
    let mut buf = vec![0u8; msgs::MAX_MESSAGE];
    for _ in 0..500 {
        let len = msgs::next_message(&mut ra, &mut a, &mut buf);
        assert!((8..=msgs::MAX_MESSAGE).contains(&len));
        assert_eq!(msgs::check(&mut b, &buf[..len]), Ok(Got::Data));
        let len = msgs::next_message(&mut rb, &mut b, &mut buf);
        assert_eq!(msgs::check(&mut a, &buf[..len]), Ok(Got::Data));
    }
    // Corruptions: a flipped byte, a replayed or skipped message, a cut.
    let len = msgs::next_message(&mut ra, &mut a, &mut buf);
    let mut bad = buf[..len].to_vec();
    bad[len / 2] ^= 1;
    assert!(matches!(
        msgs::check(&mut b.clone(), &bad),
        Err(msgs::Bad::Checksum(_))
    ));
    let mut early = b;
    early.received += 1;
    assert!(matches!(
        msgs::check(&mut early, &buf[..len]),
        Err(msgs::Bad::Seq { .. })
    ));
    assert_eq!(
        msgs::check(&mut b.clone(), &buf[..7]),
        Err(msgs::Bad::Length(7))
    );
    assert_eq!(msgs::check(&mut b, &buf[..len]), Ok(Got::Data));
    // Summaries match only when both sides saw the same bytes.
    let len = msgs::end_message(&a, &mut buf);
    assert_eq!(msgs::check(&mut b.clone(), &buf[..len]), Ok(Got::End));
    let mut short = b;
    short.received_hash ^= 1;
    assert_eq!(
        msgs::check(&mut short, &buf[..len]),
        Err(msgs::Bad::Summary)
    );
    let len = msgs::end_message(&b, &mut buf);
    assert_eq!(msgs::check(&mut a, &buf[..len]), Ok(Got::End));
}
