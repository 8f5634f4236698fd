//! The transport over the Linux backend against the fake drivers: the
//! checks before any device is touched, and what the doorbell concludes
//! from the live byte and from Xen's word on the port. (The rendezvous
//! bytes' own checks are `crxg`'s tests.)

use super::*;
use crate::linux::fake::FakeXen;
use crate::linux::privcmd::IOCTL_PRIVCMD_HYPERCALL;
use crate::linux::sys::Errno;
use crate::linux::{LinuxBackend, XenTransport};
use coresident::{Channel, ChannelConfig, ChannelError, StdClock};

type Fake = LinuxBackend<FakeXen>;
type FakeLink = Link<XenRegion<Fake>, XenDoorbell<Fake>>;

/// An offerer (domain 0) and an acceptor (domain `acceptor`), both
/// through `xen`.
fn pair(xen: &FakeXen, acceptor: DomId) -> (FakeLink, FakeLink) {
    let layout = ChannelLayout::symmetric(1024);
    let mut buf = [0u8; 256];
    let (pending, n) = XenTransport::with_sys(xen.clone(), 0, acceptor)
        .offer(layout, &mut buf)
        .unwrap();
    let acc = XenTransport::with_sys(xen.clone(), acceptor, 0)
        .accept(&buf[..n])
        .unwrap();
    let off = pending.complete(Some(Duration::from_secs(1))).unwrap();
    // Consume the handshake's events (the acceptor's ring, and the
    // fresh interdomain port's pending bit; the fake has one queue).
    while off.doorbell.wait(Some(Duration::ZERO)).unwrap() == Wake::Rung {}
    (off, acc)
}

fn with_privcmd() -> FakeXen {
    let xen = FakeXen::default();
    xen.state().privcmd = true;
    xen
}

fn hypercalls(xen: &FakeXen) -> usize {
    xen.state().hypercalls
}

#[test]
fn connected_port_means_alive_and_events_spare_hypercalls() {
    let xen = with_privcmd();
    let (off, acc) = pair(&xen, 0);
    // Every quiet check asks (no rate limit here).
    off.doorbell.set_recheck(Duration::ZERO);
    assert!(off.doorbell.can_ask_xen());
    assert_eq!(off.doorbell.port_connected(), Some(true));
    assert_eq!(acc.doorbell.port_connected(), Some(true));
    let n = hypercalls(&xen);
    assert!(off.doorbell.peer_alive());
    assert_eq!(hypercalls(&xen), n + 1, "quiet: Xen is asked");
    acc.doorbell.ring().unwrap();
    let t = Some(Duration::from_millis(10));
    assert_eq!(off.doorbell.wait(t).unwrap(), Wake::Rung);
    assert_eq!(hypercalls(&xen), n + 1, "a wake-up asks nothing");
    assert!(off.doorbell.peer_alive());
    assert_eq!(hypercalls(&xen), n + 1, "an event was heard: no need");
    assert!(off.doorbell.peer_alive());
    assert_eq!(hypercalls(&xen), n + 2, "heard nothing since: ask");
    // A quiet wait asks too, and the peer is still there.
    assert_eq!(off.doorbell.wait(t).unwrap(), Wake::TimedOut);
    assert_eq!(hypercalls(&xen), n + 3);
    drop(acc);
}

#[test]
fn destroyed_peer_domain_is_seen_without_unmap_notify() {
    let xen = with_privcmd();
    let (off, acc) = pair(&xen, 0);
    // The acceptor's domain is destroyed: its live byte stays set,
    // nothing rings, Xen leaves our end unbound.
    xen.state().destroy_peer_of(off.doorbell.port());
    assert_eq!(off.doorbell.byte(Role::Acceptor), 1);
    assert_eq!(off.doorbell.port_connected(), Some(false));
    assert!(!off.doorbell.peer_alive());
    assert_eq!(
        off.doorbell.wait(Some(Duration::from_millis(10))).unwrap(),
        Wake::PeerGone
    );
    // And a blocked channel reports it by itself.
    let xen = with_privcmd();
    let (off, acc2) = pair(&xen, 0);
    let config = ChannelConfig {
        liveness: None,
        spin: 0,
        ..ChannelConfig::default()
    };
    let mut ch = Channel::new(off, config, StdClock::default()).unwrap();
    let mut buf = vec![0u8; ch.max_incoming()];
    assert_eq!(
        ch.recv_blocking(&mut buf, Some(Duration::from_millis(50))),
        Err(ChannelError::TimedOut)
    );
    xen.state().destroy_peer_of(ch.doorbell().port());
    assert_eq!(
        ch.recv_blocking(&mut buf, Some(Duration::from_secs(5))),
        Err(ChannelError::PeerGone)
    );
    drop((acc, acc2));
}

/// Issue 17, finding 11: the channel asks `peer_alive` often (every
/// 1024 sends, and on its slow paths); Xen is asked at most once per
/// recheck period, and the live byte answers the rest.
#[test]
fn peer_alive_asks_xen_at_most_once_per_period() {
    let xen = with_privcmd();
    let (off, acc) = pair(&xen, 0);
    off.doorbell.set_recheck(Duration::from_secs(3600));
    let n = hypercalls(&xen);
    for _ in 0..1000 {
        assert!(off.doorbell.peer_alive());
    }
    let asked = hypercalls(&xen) - n;
    assert!(asked <= 1, "Xen asked {asked} times for 1000 checks");
    // Unmap-notify (the peer's process let go) is seen at once.
    drop(acc);
    assert!(!off.doorbell.peer_alive());
}

/// Issue 17, finding 11: the hint the channel takes on every send is
/// the live byte (and an earlier verdict), at the cost of a load.
#[test]
fn the_gone_hint_is_the_live_byte() {
    let xen = with_privcmd();
    let (off, acc) = pair(&xen, 0);
    let n = hypercalls(&xen);
    assert!(!off.doorbell.peer_gone_hint());
    drop(acc);
    assert!(off.doorbell.peer_gone_hint());
    assert_eq!(hypercalls(&xen), n, "the hint asks nobody");
    // A destroyed domain clears no byte: the probe finds it, then the
    // hint remembers.
    let (off, acc) = pair(&xen, 0);
    xen.state().destroy_peer_of(off.doorbell.port());
    assert!(!off.doorbell.peer_gone_hint());
    off.doorbell.set_recheck(Duration::ZERO);
    assert!(!off.doorbell.peer_alive());
    assert!(off.doorbell.peer_gone_hint());
    drop(acc);
}

/// Issue 17, finding 11: a sender that never blocks learnt of a dead
/// peer only when the ring was full (152 messages into a destroyed
/// domU's ring). A departed process is seen at the next send; a
/// destroyed domain within the channel's probe period.
#[test]
fn a_sender_that_never_blocks_sees_a_dead_peer() {
    let config = ChannelConfig {
        liveness: None,
        ..ChannelConfig::default()
    };
    let layout = ChannelLayout::symmetric(64 * 1024);
    let open = |xen: &FakeXen| {
        let mut buf = [0u8; 256];
        let (pending, n) = XenTransport::with_sys(xen.clone(), 0, 0)
            .offer(layout, &mut buf)
            .unwrap();
        let acc = XenTransport::with_sys(xen.clone(), 0, 0)
            .accept(&buf[..n])
            .unwrap();
        let off = pending.complete(Some(Duration::from_secs(1))).unwrap();
        (Channel::new(off, config, StdClock::default()).unwrap(), acc)
    };
    let sends_until_gone = |ch: &mut Channel<_, _, _>| {
        for sent in 0u32.. {
            match ch.send(&[7u8; 8]) {
                Ok(()) => {}
                Err(ChannelError::PeerGone) => return sent,
                Err(e) => panic!("after {sent} sends into a dead peer: {e:?}"),
            }
        }
        unreachable!()
    };
    let xen = with_privcmd();
    let (mut ch, acc) = open(&xen);
    ch.send(b"before").unwrap();
    drop(acc);
    assert_eq!(sends_until_gone(&mut ch), 0, "unmap-notify: the next send");
    let (mut ch, acc) = open(&xen);
    ch.send(b"before").unwrap();
    ch.doorbell().set_recheck(Duration::ZERO);
    xen.state().destroy_peer_of(ch.doorbell().port());
    let n = sends_until_gone(&mut ch);
    assert!(
        n <= coresident::PEER_PROBE_SENDS,
        "{n} sends into a destroyed peer"
    );
    drop(acc);
}

#[test]
fn quiet_timeout_asks_xen() {
    let xen = with_privcmd();
    let (off, acc) = pair(&xen, 0);
    // Nothing asked since the event of binding: the wait starts on the
    // cheap checks, times out, asks Xen, and reports the death.
    acc.doorbell.ring().unwrap();
    let t = Some(Duration::from_millis(10));
    assert_eq!(off.doorbell.wait(t).unwrap(), Wake::Rung);
    xen.state().destroy_peer_of(off.doorbell.port());
    assert_eq!(off.doorbell.wait(t).unwrap(), Wake::PeerGone);
    drop(acc);
}

#[test]
fn closed_port_or_another_domain_means_gone() {
    let xen = with_privcmd();
    let (off, acc) = pair(&xen, 0);
    // Our own end freed under us: EVTCHNSTAT_closed.
    let port = acc.doorbell.port();
    acc.doorbell.event_port().evtchn().unbind(port).unwrap();
    assert_eq!(acc.doorbell.port_connected(), Some(false));
    assert!(!acc.doorbell.peer_alive());
    drop((off, acc));
    // The offerer offered to domain 5, but its port is connected to a
    // port of domain 0 (all the fake knows): not the peer.
    let xen = with_privcmd();
    let (off, acc) = pair(&xen, 5);
    assert_eq!(off.doorbell.port_connected(), Some(false));
    assert_eq!(acc.doorbell.port_connected(), Some(true));
    drop((off, acc));
}

#[test]
fn hypercall_error_concludes_nothing() {
    let xen = with_privcmd();
    let (off, acc) = pair(&xen, 0);
    xen.state().destroy_peer_of(off.doorbell.port());
    xen.state().fail = Some((IOCTL_PRIVCMD_HYPERCALL, Errno::NOSYS));
    assert_eq!(off.doorbell.port_connected(), None);
    // Today's behaviour: the live byte is set, so alive.
    xen.state().fail = Some((IOCTL_PRIVCMD_HYPERCALL, Errno::FAULT));
    assert!(off.doorbell.peer_alive());
    xen.state().fail = Some((IOCTL_PRIVCMD_HYPERCALL, Errno::NOSYS));
    assert_eq!(
        off.doorbell.wait(Some(Duration::from_millis(10))).unwrap(),
        Wake::TimedOut
    );
    // Once Xen answers, the death shows.
    assert!(!off.doorbell.peer_alive());
    drop(acc);
}

#[test]
fn privcmd_refusing_the_first_call_is_not_asked_again() {
    // A domU's restricted privcmd: open works, hypercalls fail (EPERM).
    let xen = with_privcmd();
    xen.state().fail = Some((IOCTL_PRIVCMD_HYPERCALL, Errno::PERM));
    let (off, acc) = pair(&xen, 0);
    assert!(!off.doorbell.can_ask_xen());
    assert!(acc.doorbell.can_ask_xen());
    let n = hypercalls(&xen);
    assert_eq!(off.doorbell.port_connected(), None);
    assert!(off.doorbell.peer_alive());
    assert_eq!(hypercalls(&xen), n);
    drop(acc);
}

#[test]
fn without_privcmd_the_live_byte_decides() {
    let xen = FakeXen::default();
    let (off, acc) = pair(&xen, 0);
    assert!(!off.doorbell.can_ask_xen());
    assert_eq!(off.doorbell.port_connected(), None);
    xen.state().destroy_peer_of(off.doorbell.port());
    assert!(off.doorbell.peer_alive());
    let t = Some(Duration::from_millis(10));
    assert_eq!(off.doorbell.wait(t).unwrap(), Wake::TimedOut);
    assert_eq!(hypercalls(&xen), 0);
    // Unmap-notify still works: the acceptor's pages go, its byte clears.
    drop(acc);
    assert!(!off.doorbell.peer_alive());
    assert_eq!(off.doorbell.wait(t).unwrap(), Wake::PeerGone);
}

#[test]
fn offer_checks_before_touching_devices() {
    let mut t = XenTransport::new(0, 1);
    let mut small = [0u8; 8];
    assert_eq!(
        t.offer(ChannelLayout::symmetric(1024), &mut small)
            .map(|_| ())
            .unwrap_err(),
        XenTransportError::Offer(CrxgError::BufferTooSmall(
            32 + 4 * crxg::pages_for(ChannelLayout::symmetric(1024))
        ))
    );
    let mut buf = [0u8; 1024];
    assert_eq!(
        t.offer(ChannelLayout::symmetric(1000), &mut buf)
            .map(|_| ())
            .unwrap_err(),
        XenTransportError::Offer(CrxgError::BadLayout)
    );
    // Garbage never reaches a device (nothing is open on this host).
    assert!(matches!(
        t.accept(&[0xA5; 100]),
        Err(XenTransportError::Offer(_))
    ));
}
