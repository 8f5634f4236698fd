//! Attacks at the host boundaries: issue 17 findings 2, 3, 4 and 11, issue 14's
//! discovery and naming findings. Each test is the attack the issue describes. The
//! thirteen that commit 8b46c8d holds against the old API all failed on the code before
//! the fix (each test's doc says what happened then); the others were added with the
//! fix (their docs say whether the old code had the flaw). Another user is played by
//! this test binary re-run as `nobody` (65534).
#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader, Read};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use coresident::{
    Channel, ChannelConfig, ChannelLayout, Doorbell, PendingOffer, StdClock, Transport,
    TransportError, Wake,
};
use coresident_shm::wire::{encode_hello, region_alloc_size, Hello};
use coresident_shm::{
    accept_offer, offer, AcceptConfig, Acceptor, DirError, Endpoint, HandshakeError, Listener,
    OfferConfig, PeerId, Registry, RegistryError, RegistryEvent, RejectReason, ShmError,
    ShmTransport,
};
use rustix::fs::OFlags;

/// The longest any call may take before we call it blocked; never a runtime bound.
const WATCHDOG: Duration = Duration::from_secs(20);
const ROLE_ENV: &str = "CORESIDENT_HOSTILE_CHILD";
const ARG_ENV: &str = "CORESIDENT_HOSTILE_ARG";
const NOBODY: u32 = 65534;

fn id(s: &str) -> PeerId {
    s.parse().unwrap()
}

/// Runs `f` on a thread; panics if it has not returned within the watchdog.
fn within_watchdog<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(WATCHDOG)
        .unwrap_or_else(|_| panic!("watchdog: {what} did not return (blocked)"))
}

fn pair() -> (Endpoint, Endpoint) {
    let (a, b) = UnixStream::pair().unwrap();
    let acc = thread::spawn(move || accept_offer(b, &AcceptConfig::default()).unwrap());
    let off = offer(a, &OfferConfig::new(id("offerer"))).unwrap();
    (off, acc.join().unwrap())
}

/// A fresh directory with `mode`, for tests that need a bad one or one `nobody` enters.
fn dir(name: &str, mode: u32) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("hostile-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode)).unwrap();
    d
}

/// A path for a registry (created 0700 by `Registry::open`).
fn reg_dir(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("hostile-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Every descriptor a peer endpoint holds: what a hostile peer could `fcntl`.
fn clear_nonblock_on_everything(ep: &Endpoint) {
    for fd in [ep.link().as_fd(), ep.region().as_fd()] {
        rustix::fs::fcntl_setfl(fd, OFlags::empty()).unwrap();
    }
}

/// Re-runs this binary as `nobody` in role `role`; returns the child and its stdout,
/// after its "ready" line.
fn as_nobody(role: &str, arg: &str) -> (Child, BufReader<ChildStdout>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(ROLE_ENV, role)
        .env(ARG_ENV, arg)
        .uid(NOBODY)
        .gid(NOBODY)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    // The harness prints its own words first, on the same line as ours.
    let mut line = String::new();
    while !line.trim_end().ends_with("ready") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "child died: {line}");
    }
    (child, out)
}

fn rest(mut child: Child, mut out: BufReader<ChildStdout>) -> String {
    let mut s = String::new();
    out.read_to_string(&mut s).unwrap();
    child.wait().unwrap();
    s
}

/// Finding 2: the peer clears `O_NONBLOCK` on every descriptor it holds and never
/// reads; our rings still return (before: the peer filled the shared eventfd's counter
/// and `notify` blocked forever).
#[test]
fn notify_returns_when_the_peer_clears_nonblock_and_fills_the_counter() {
    let (ours, theirs) = pair();
    clear_nonblock_on_everything(&theirs);
    let n = within_watchdog("ring", move || {
        // Far more rings than a socket buffer holds.
        (0..200_000).filter(|_| ours.link().ring().is_ok()).count()
    });
    assert_eq!(n, 200_000);
    drop(theirs);
}

/// Finding 2: `try_consume` on nothing returns at once, whatever the peer did.
#[test]
fn try_consume_returns_when_the_peer_clears_nonblock() {
    let (ours, theirs) = pair();
    clear_nonblock_on_everything(&theirs);
    let r = within_watchdog("try_consume", move || ours.link().try_consume());
    assert_eq!(r, Ok(false));
    drop(theirs);
}

/// Finding 2: a hostile peer rings and reads as fast as it can on everything it holds,
/// then dies; every `wait(50 ms)` of ours returns, and the death is reported (before:
/// the peer took the count between our poll and our read, and our read blocked for
/// good).
#[test]
fn wait_returns_by_its_deadline_when_the_peer_steals_the_count() {
    for _ in 0..4 {
        let (ours, theirs) = pair();
        clear_nonblock_on_everything(&theirs);
        let sock = theirs.link().as_fd().try_clone_to_owned().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let rang = Arc::new(AtomicBool::new(false));
        let (stop2, rang2) = (stop.clone(), rang.clone());
        // The thief reads everything its end of the socket gives (blocking: it cleared
        // the flag), and rings us 300 times.
        let thief = thread::spawn(move || {
            let reader = sock.try_clone().unwrap();
            thread::spawn(move || {
                let mut b = [0u8; 64];
                while rustix::io::read(&reader, &mut b).is_ok_and(|n| n > 0) {}
            });
            for _ in 0..300 {
                let _ = rustix::net::send(&sock, &[1], rustix::net::SendFlags::NOSIGNAL);
                thread::sleep(Duration::from_micros(300));
            }
            rang2.store(true, Ordering::SeqCst);
            while !stop2.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(1));
            }
            // The peer dies: every copy of its end goes.
            let _ = rustix::net::shutdown(&sock, rustix::net::Shutdown::Both);
        });
        let gone = within_watchdog("wait(50 ms)", move || {
            let mut rung = 0;
            while !rang.load(Ordering::SeqCst) {
                if ours.link().wait(Some(Duration::from_millis(50))).unwrap() == Wake::Rung {
                    rung += 1;
                }
                let _ = ours.link().ring();
            }
            assert!(rung > 0);
            stop.store(true, Ordering::SeqCst);
            thief.join().unwrap();
            drop(theirs); // the peer dies (its last holder of the socket)
            loop {
                match ours.link().wait(Some(Duration::from_millis(50))).unwrap() {
                    Wake::PeerGone => break true,
                    Wake::Rung | Wake::TimedOut => {}
                }
            }
        });
        assert!(gone);
    }
}

/// Finding 11: a sender that never blocks sees the hang-up at its next ring, and
/// `peer_alive` reports it (one `poll`, then no system call at all).
#[test]
fn a_sender_that_never_blocks_sees_the_hang_up() {
    // Other tests here fork children: until a child's exec closes our descriptors, it
    // holds a copy of the peer's end too. So the hang-up is awaited (watchdog), not
    // asserted at once; a sender checks periodically anyway.
    let eventually = |f: &dyn Fn() -> bool| {
        let start = std::time::Instant::now();
        while !f() {
            assert!(start.elapsed() < WATCHDOG, "watchdog: no hang-up seen");
            thread::sleep(Duration::from_millis(1));
        }
    };
    let (ours, theirs) = pair();
    drop(theirs);
    let link = ours.into_link().doorbell;
    eventually(&|| link.ring() == Err(TransportError::PeerGone));
    assert!(!link.peer_alive());
    assert!(link.peer_known_gone());
    // And from `peer_alive` first, without a ring.
    let (ours, theirs) = pair();
    drop(theirs);
    eventually(&|| !ours.link().peer_alive());
    assert_eq!(ours.link().ring(), Err(TransportError::PeerGone));
}

/// Finding 3: a registry directory others may write (mode 1777) is refused.
#[test]
fn registry_refuses_a_directory_others_can_write() {
    let d = dir("sticky", 0o1777);
    assert_eq!(
        Registry::open(&d).unwrap_err(),
        RegistryError::Dir(DirError::Mode { mode: 0o1777 })
    );
}

/// Finding 3: the offerer learns who listens before any descriptor moves. A listener
/// of user `nobody` (in a directory both may enter) receives nothing.
#[test]
fn offerer_sends_no_descriptor_to_a_listener_of_another_user() {
    let d = dir("squat", 0o777);
    let path = d.join("db-primary");
    let (child, out) = as_nobody("listen", path.to_str().unwrap());
    let res = coresident_shm::connect(&path, &OfferConfig::new(id("root-client")));
    let report = rest(child, out);
    match res {
        Err(HandshakeError::PeerRefused(c)) => assert_eq!(c.uid, NOBODY),
        other => panic!("connect to another user's listener: {other:?}"),
    }
    assert!(report.contains("fds=0"), "the other user got: {report}");
}

/// Finding 3: the acceptor refuses an offerer of another user, before reading its
/// hello, and tells it why.
#[test]
fn acceptor_refuses_an_offerer_of_another_user() {
    let d = dir("accept", 0o777);
    let path = d.join("server");
    let listener = Listener::bind(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (child, out) = as_nobody("offer", path.to_str().unwrap());
    let res = listener.accept(&AcceptConfig::default());
    let report = rest(child, out);
    match res {
        Err(HandshakeError::PeerRefused(c)) => assert_eq!(c.uid, NOBODY),
        other => panic!("an offer from another user: {other:?}"),
    }
    assert!(
        report.contains(&format!(
            "{:?}",
            HandshakeError::Rejected(RejectReason::Credentials)
        )),
        "the offerer was told: {report}"
    );
}

/// Finding 3: a one-shot offer socket in a shared directory (mode 1777, umask 000, as
/// in the issue) cannot be made; in our own 0700 directory, another user cannot reach
/// it; and its name is unpredictable.
#[test]
fn one_shot_offer_cannot_be_taken_by_another_user() {
    let d = dir("oneshot", 0o1777);
    let mut t = ShmTransport::new(id("offerer"), &d);
    let mut buf = [0u8; 256];
    let old = rustix::process::umask(rustix::fs::Mode::empty());
    let offered = t.offer(ChannelLayout::symmetric(4096), &mut buf);
    rustix::process::umask(old);
    assert_eq!(
        offered.unwrap_err(),
        ShmError::Dir(DirError::Mode { mode: 0o1777 })
    );

    let own = reg_dir("oneshot-own");
    let mut t = ShmTransport::new(id("offerer"), &own);
    let old = rustix::process::umask(rustix::fs::Mode::empty());
    let offered = t.offer(ChannelLayout::symmetric(4096), &mut buf);
    rustix::process::umask(old);
    let (pending, n) = offered.unwrap();
    let name = pending
        .path()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        name.starts_with(".offer-") && name.len() == 7 + 16,
        "{name}"
    );
    let mode = std::fs::symlink_metadata(pending.path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "socket mode {mode:o}");
    let hex: String = buf[..n].iter().map(|b| format!("{b:02x}")).collect();
    let (child, out) = as_nobody("take", &hex);
    let report = rest(child, out);
    assert!(report.contains("Err"), "the other user took it: {report}");
    // Still ours to complete.
    let mut mine = ShmTransport::new(id("me"), &own);
    let acc = thread::spawn(move || mine.accept(&buf[..n]).map(|_| ()));
    assert!(pending.complete(Some(WATCHDOG)).is_ok());
    assert!(acc.join().unwrap().is_ok());
}

/// Finding 3's allow-list, the container case: a directory shared through a group
/// (mode 0770, group `nogroup`), each side admitting the other's uid. The channel
/// works, and each side holds the other's kernel-reported credentials.
#[test]
fn an_allowed_user_of_a_shared_directory_can_connect() {
    let d = dir("shared", 0o770);
    rustix::fs::chown(&d, None, Some(rustix::process::Gid::from_raw(NOBODY))).unwrap();
    let policy = coresident_shm::CredPolicy::same_user()
        .allow_uid(NOBODY)
        .allow_gid(NOBODY);
    let reg = Registry::open_with(&d, &policy).unwrap();
    let (child, out) = as_nobody("serve-allowed", d.to_str().unwrap());
    let mut cfg = OfferConfig::new(id("root-side"));
    cfg.context = b"container handshake".to_vec();
    let ep = reg.connect(&id("svc"), &cfg).unwrap();
    assert_eq!(ep.peer().cred.uid, NOBODY);
    let report = rest(child, out);
    assert!(
        report.contains("uid=0 context=container handshake"),
        "{report}"
    );
}

/// Finding 3: registry sockets are private whatever the umask.
#[test]
fn registry_sockets_are_private() {
    let reg = Registry::open(reg_dir("private")).unwrap();
    let old = rustix::process::umask(rustix::fs::Mode::empty());
    let l = reg.register(&id("svc"));
    rustix::process::umask(old);
    let l = l.unwrap();
    let mode = std::fs::symlink_metadata(l.path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "socket mode {mode:o}");
    let dmode = std::fs::metadata(reg.dir()).unwrap().permissions().mode();
    assert_eq!(dmode & 0o777, 0o700);
}

/// Finding 3: the registry keeps using the directory it verified, even when its path
/// is swapped for a symlink to another directory afterwards.
#[test]
fn registry_keeps_its_directory_when_the_path_is_swapped() {
    let path = reg_dir("swap");
    let reg = Registry::open(&path).unwrap();
    let moved = path.with_extension("moved");
    let _ = std::fs::remove_dir_all(&moved);
    std::fs::rename(&path, &moved).unwrap();
    let evil = dir("swap-evil", 0o777);
    std::os::unix::fs::symlink(&evil, &path).unwrap();
    let _l = reg.register(&id("svc")).unwrap();
    assert!(
        moved.join("svc").exists(),
        "registered in the verified directory"
    );
    assert!(!evil.join("svc").exists());
    // A fresh open of the swapped path is refused (a symlink).
    assert_eq!(
        Registry::open(&path).unwrap_err(),
        RegistryError::Dir(DirError::NotADirectory)
    );
}

/// The bytes of a well-formed hello (its descriptor never comes).
fn good_hello_bytes() -> Vec<u8> {
    let layout = ChannelLayout::symmetric(4096);
    encode_hello(&Hello {
        region_size: region_alloc_size(layout) as u64,
        layout,
        offerer: id("slow"),
        acceptor: None,
        context: Vec::new(),
    })
    .unwrap()
}

/// Finding 4: the deadline bounds the whole hello, not each read.
#[test]
fn hello_deadline_bounds_the_whole_hello() {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let cfg = AcceptConfig {
        handshake_timeout: Duration::from_millis(200),
        ..AcceptConfig::default()
    };
    let acceptor = thread::spawn(move || accept_offer(theirs, &cfg).map(|_| ()));
    // One byte of a good hello every 60 ms: each read is well within the timeout.
    let mut sent = 0;
    for b in good_hello_bytes().chunks(1) {
        if rustix::net::send(&ours, b, rustix::net::SendFlags::NOSIGNAL).is_err() {
            break;
        }
        sent += 1;
        if acceptor.is_finished() {
            break;
        }
        thread::sleep(Duration::from_millis(60));
    }
    assert_eq!(acceptor.join().unwrap(), Err(HandshakeError::Timeout));
    // About 4 bytes fit the deadline; the old code read all 168. Generous for load.
    assert!(sent < 100, "the acceptor listened to {sent} slow bytes");
}

/// A slow client (a byte every 100 ms) and a silent one, connected to `path`.
fn slow_and_silent(path: &Path) -> (thread::JoinHandle<usize>, UnixStream) {
    let p = path.to_owned();
    let loris = thread::spawn(move || {
        let s = UnixStream::connect(&p).unwrap();
        let mut sent = 0;
        for b in good_hello_bytes().chunks(1) {
            if rustix::net::send(&s, b, rustix::net::SendFlags::NOSIGNAL).is_err() {
                break;
            }
            sent += 1;
            thread::sleep(Duration::from_millis(100));
        }
        sent
    });
    let silent = UnixStream::connect(path).unwrap();
    thread::sleep(Duration::from_millis(50));
    (loris, silent)
}

/// Finding 4: a slow client does not hold the listener against an honest offerer
/// (before: the honest offerer queued behind it timed out).
#[test]
fn slow_loris_does_not_delay_an_honest_offerer() {
    let d = dir("loris", 0o700);
    let path = d.join("srv");
    let listener = Listener::bind(&path).unwrap();
    let (loris, _silent) = slow_and_silent(&path);
    let p3 = path.clone();
    let honest = thread::spawn(move || {
        let cfg = OfferConfig {
            handshake_timeout: Duration::from_secs(2),
            ..OfferConfig::new(id("honest"))
        };
        coresident_shm::connect(&p3, &cfg).map(|_| ())
    });
    let cfg = AcceptConfig {
        handshake_timeout: Duration::from_millis(500),
        ..AcceptConfig::default()
    };
    let served = within_watchdog("accept", move || loop {
        // The slow and silent ones fail with their own timeouts; the honest one is in.
        if let Ok(ep) = listener.accept(&cfg) {
            break ep.peer().id.clone();
        }
    });
    assert_eq!(served, Some(id("honest")));
    assert_eq!(honest.join().unwrap(), Ok(()));
    assert!(loris.join().unwrap() < 100, "the slow client was heard out");
}

/// Finding 4 and the background acceptor for streams: many slow, silent and honest
/// offerers at once; every honest one gets through, bounded memory, counted refusals.
#[test]
fn acceptor_serves_honest_offerers_past_slow_and_silent_ones() {
    let reg = Registry::open(reg_dir("acceptor")).unwrap();
    let listener = reg.register(&id("srv")).unwrap();
    let cfg = AcceptConfig {
        handshake_timeout: Duration::from_millis(300),
        max_handshakes: 8,
        ..AcceptConfig::default()
    };
    let acceptor = Acceptor::with_queue(listener, cfg, 2).unwrap();
    let path = reg.secure_dir().socket_path("srv");
    let lorises: Vec<_> = (0..3).map(|_| slow_and_silent(&path)).collect();
    let honest: Vec<_> = (0..6)
        .map(|i| {
            let reg = reg.clone();
            thread::spawn(move || {
                let mut cfg = OfferConfig::new(id(&format!("honest-{i}")));
                cfg.handshake_timeout = WATCHDOG;
                cfg.context = vec![i as u8; 16];
                // Busy is a valid answer under load: retry, as a client would.
                loop {
                    match reg.connect(&id("srv"), &cfg) {
                        Err(HandshakeError::Rejected(RejectReason::Busy)) => {
                            thread::sleep(Duration::from_millis(20));
                        }
                        other => break other.map(|_| ()),
                    }
                }
            })
        })
        .collect();
    let mut got = Vec::new();
    while got.len() < 6 {
        let ep = acceptor.accept(Some(WATCHDOG)).unwrap();
        let ctx = ep.peer().context.clone();
        assert_eq!(ctx.len(), 16);
        got.push(ctx[0]);
    }
    for h in honest {
        assert_eq!(h.join().unwrap(), Ok(()));
    }
    for (l, _s) in lorises {
        assert!(l.join().unwrap() < 100);
    }
    got.sort_unstable();
    assert_eq!(got, vec![0, 1, 2, 3, 4, 5]);
    let stats = acceptor.stats();
    assert_eq!(stats.accepted, 6);
    // The silent ones connected before any honest one (never refused Busy): each
    // timed out. (A slow one may be refused Busy instead under load.)
    assert!(stats.timed_out >= 3, "{stats:?}");
}

/// Finding 4: an offerer never blocks in `connect(2)` on a listener whose backlog the
/// attacker keeps full; it gives up at its deadline.
#[test]
fn connect_never_blocks_on_a_full_backlog() {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let d = dir("backlog", 0o700);
    let path = d.join("full");
    let l = rustix::net::socket(AddressFamily::UNIX, SocketType::STREAM, None).unwrap();
    let addr = SocketAddrUnix::new(&path).unwrap();
    rustix::net::bind(&l, &addr).unwrap();
    rustix::net::listen(&l, 0).unwrap();
    // Fill the backlog (never accepted).
    let mut held = Vec::new();
    loop {
        let s = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::NONBLOCK,
            None,
        )
        .unwrap();
        if rustix::net::connect(&s, &addr).is_err() {
            break;
        }
        held.push(s);
        assert!(held.len() < 1000);
    }
    let cfg = OfferConfig {
        handshake_timeout: Duration::from_millis(200),
        ..OfferConfig::new(id("patient"))
    };
    let r = within_watchdog("connect", move || {
        coresident_shm::connect(&path, &cfg).map(|_| ())
    });
    assert_eq!(r, Err(HandshakeError::Timeout));
    drop((l, held));
}

/// Issue 14: `Registry::connect` gives an endpoint `Channel::new` accepts (before:
/// "ring header magic 0x00000000").
#[test]
fn registry_connect_gives_an_endpoint_channel_new_accepts() {
    let reg = Registry::open(reg_dir("trap")).unwrap();
    let l = reg.register(&id("server")).unwrap();
    let srv = thread::spawn(move || l.accept(&AcceptConfig::default()).unwrap());
    let ep = reg
        .connect(&id("server"), &OfferConfig::new(id("client")))
        .unwrap();
    let theirs = srv.join().unwrap();
    let cfg = ChannelConfig::default();
    let mut a = Channel::new(ep.into_link(), cfg, StdClock::default()).unwrap();
    let mut b = Channel::new(theirs.into_link(), cfg, StdClock::default()).unwrap();
    a.send_blocking(b"over the ring", Some(WATCHDOG)).unwrap();
    let mut buf = [0u8; 64];
    let n = b.recv_blocking(&mut buf, Some(WATCHDOG)).unwrap();
    assert_eq!(&buf[..n], b"over the ring");
}

/// Issue 14: a restart under the same name between two rescans is reported.
#[test]
fn watcher_reports_a_restart_between_two_rescans() {
    let reg = Registry::open(reg_dir("restart")).unwrap();
    let first = reg.register(&id("svc")).unwrap();
    let mut w = reg.watch().unwrap();
    drop(first);
    let _second = reg.register(&id("svc")).unwrap();
    let mut events = Vec::new();
    for _ in 0..3 {
        events.extend(w.next_events(Some(Duration::from_millis(100))).unwrap());
    }
    assert_eq!(
        events,
        vec![
            RegistryEvent::Left(id("svc")),
            RegistryEvent::Joined(id("svc"))
        ]
    );
}

/// Issue 14: a stale socket, a missing peer, a taken offer and a second acceptor are
/// typed, worded errors (before: raw errno text).
#[test]
fn stale_missing_and_taken_are_typed() {
    let reg = Registry::open(reg_dir("typed")).unwrap();
    let cfg = OfferConfig::new(id("c"));
    let e = reg.connect(&id("nobody-here"), &cfg).unwrap_err();
    assert_eq!(e, HandshakeError::NoSuchSocket);
    assert!(e.to_string().contains("no socket"), "{e}");
    // A stale socket: its owner died without removing it.
    drop(std::os::unix::net::UnixListener::bind(reg.dir().join("ghost")).unwrap());
    let e = reg.connect(&id("ghost"), &cfg).unwrap_err();
    assert_eq!(e, HandshakeError::NotListening);
    assert!(e.to_string().contains("stale"), "{e}");

    // One offer, two acceptors: the second is told the offer was taken.
    let offers = reg_dir("typed-offers");
    let mut t = ShmTransport::new(id("offerer"), &offers);
    let mut buf = [0u8; 256];
    let (pending, n) = t.offer(ChannelLayout::symmetric(4096), &mut buf).unwrap();
    let bytes = buf[..n].to_vec();
    let mut first = ShmTransport::new(id("first"), &offers);
    let link = first.accept(&bytes).unwrap();
    let _done = pending.complete(Some(WATCHDOG)).unwrap();
    let mut second = ShmTransport::new(id("second"), &offers);
    let e = second.accept(&bytes).unwrap_err();
    assert_eq!(e, ShmError::OfferTaken);
    assert!(e.to_string().contains("already taken"), "{e}");
    drop(link);
}

/// Issue 12: the default registry location.
#[test]
fn default_registry_directory() {
    let d = coresident_shm::default_dir();
    if rustix::process::geteuid().is_root() {
        assert_eq!(d, PathBuf::from("/run/coresident"));
    } else if let Some(rt) = std::env::var_os("XDG_RUNTIME_DIR") {
        assert_eq!(d, PathBuf::from(rt).join("coresident"));
    }
    let reg = Registry::open_default().unwrap();
    let mode = std::fs::metadata(reg.dir()).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "{mode:o}");
}

/// The other user's side of the tests above.
#[test]
fn child_entry() {
    let Ok(role) = std::env::var(ROLE_ENV) else {
        return;
    };
    let arg = std::env::var(ARG_ENV).unwrap();
    match role.as_str() {
        // A squatter: listens, counts the descriptors it is sent.
        "listen" => {
            let l = std::os::unix::net::UnixListener::bind(&arg).unwrap();
            println!("ready");
            let (s, _) = l.accept().unwrap();
            let mut fds = 0;
            let mut buf = [0u8; 512];
            let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(8))];
            let mut cmsg = rustix::net::RecvAncillaryBuffer::new(&mut space);
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            let _ = rustix::net::recvmsg(&s, &mut iov, &mut cmsg, rustix::net::RecvFlags::empty());
            for m in cmsg.drain() {
                if let rustix::net::RecvAncillaryMessage::ScmRights(r) = m {
                    fds += r.count();
                }
            }
            println!("fds={fds}");
            let _ = std::fs::remove_file(&arg);
        }
        // An offerer of another user.
        "offer" => {
            println!("ready");
            let mut cfg = OfferConfig::new(id("nobody"));
            // It would offer to anyone; the acceptor decides.
            cfg.policy = coresident_shm::CredPolicy::anyone();
            let r = coresident_shm::connect(Path::new(&arg), &cfg).map(|_| ());
            println!("{:?}", r.unwrap_err());
        }
        // An allowed user of a shared directory: registers, serves one offer.
        "serve-allowed" => {
            let policy = coresident_shm::CredPolicy::same_user()
                .allow_uid(0)
                .allow_gid(NOBODY);
            let reg = Registry::open_with(&arg, &policy).unwrap();
            let l = reg.register(&id("svc")).unwrap();
            println!("ready");
            let cfg = AcceptConfig {
                policy,
                ..AcceptConfig::default()
            };
            let ep = l.accept(&cfg).unwrap();
            println!(
                "uid={} context={}",
                ep.peer().cred.uid,
                String::from_utf8_lossy(&ep.peer().context)
            );
        }
        // A thief of one-shot offers.
        "take" => {
            println!("ready");
            let bytes: Vec<u8> = (0..arg.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&arg[i..i + 2], 16).unwrap())
                .collect();
            let mut t = ShmTransport::new(id("thief"), std::env::temp_dir())
                .with_policy(coresident_shm::CredPolicy::anyone());
            println!("{:?}", t.accept(&bytes).map(|_| ()));
        }
        other => panic!("unknown role {other}"),
    }
    std::process::exit(0);
}
