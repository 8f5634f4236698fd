//! Attacks at the host boundaries (issue 17 findings 2, 3, 4, 11; issue 14's discovery
//! trap), written against the code as it stands, before any fix: each must fail here.
#![cfg(target_os = "linux")]

use std::io::{BufRead, Read};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use coresident::{Channel, ChannelConfig, ChannelLayout, PendingOffer, StdClock, Transport};
use coresident_shm::{
    accept_offer, offer, AcceptConfig, Endpoint, Listener, OfferConfig, PeerId, Registry,
    ShmTransport,
};
use rustix::fs::OFlags;

const WATCHDOG: Duration = Duration::from_secs(20);
const ROLE_ENV: &str = "CORESIDENT_HOSTILE_CHILD";
const PATH_ENV: &str = "CORESIDENT_HOSTILE_PATH";
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

fn dir(name: &str, mode: u32) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("hostile-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode)).unwrap();
    d
}

/// Finding 2: the peer clears O_NONBLOCK on the shared description and fills the
/// counter to its maximum; our notify must still return.
#[test]
fn notify_returns_when_the_peer_clears_nonblock_and_fills_the_counter() {
    let (ours, theirs) = pair();
    let bell = theirs.link().local_doorbell().as_fd();
    rustix::fs::fcntl_setfl(bell, OFlags::empty()).unwrap();
    rustix::io::write(bell, &0xFFFF_FFFF_FFFF_FFFEu64.to_ne_bytes()).unwrap();
    let r = within_watchdog("notify", move || ours.notify_peer().is_ok());
    assert!(r);
    drop(theirs);
}

/// Finding 2: try_consume on a zero counter after the peer cleared O_NONBLOCK.
#[test]
fn try_consume_returns_when_the_peer_clears_nonblock() {
    let (ours, theirs) = pair();
    rustix::fs::fcntl_setfl(theirs.link().remote_doorbell().as_fd(), OFlags::empty()).unwrap();
    let r = within_watchdog("try_consume", move || ours.try_consume().map(|c| c.is_none()));
    assert_eq!(r, Ok(true));
    drop(theirs);
}

/// Finding 2: the peer steals the count between our poll and our read, then dies.
#[test]
fn wait_returns_by_its_deadline_when_the_peer_steals_the_count() {
    for _ in 0..8 {
        let (ours, theirs) = pair();
        let bell = theirs.link().remote_doorbell().as_fd().try_clone_to_owned().unwrap();
        rustix::fs::fcntl_setfl(&bell, OFlags::empty()).unwrap();
        let thief_bell = bell.try_clone().unwrap();
        // A thief reading every count (blocking), and a writer that rings 300 times.
        thread::spawn(move || {
            let mut b = [0u8; 8];
            while rustix::io::read(&thief_bell, &mut b).is_ok() {}
        });
        let writer = thread::spawn(move || {
            for _ in 0..300 {
                let _ = rustix::io::write(&bell, &1u64.to_ne_bytes());
                thread::sleep(Duration::from_micros(300));
            }
        });
        within_watchdog("wait(50 ms)", move || {
            while !writer.is_finished() {
                let _ = ours.wait(Some(Duration::from_millis(50)));
            }
            for _ in 0..4 {
                let _ = ours.wait(Some(Duration::from_millis(50)));
            }
        });
        drop(theirs);
    }
}

/// Finding 11: a sender that never blocks sees the hang-up at its next ring.
#[test]
fn a_sender_that_never_blocks_sees_the_hang_up() {
    let (ours, theirs) = pair();
    drop(theirs);
    let (_, link) = ours.into_parts();
    assert_eq!(
        coresident::Doorbell::ring(&link),
        Err(coresident::TransportError::PeerGone)
    );
    assert!(!coresident::Doorbell::peer_alive(&link));
}

/// Finding 3: a registry directory others may write is refused.
#[test]
fn registry_refuses_a_directory_others_can_write() {
    let d = dir("sticky", 0o1777);
    assert!(Registry::open(&d).is_err(), "a mode 1777 registry was opened");
}

/// Finding 3: the offerer learns who listens before any descriptor moves.
#[test]
fn offerer_sends_no_descriptor_to_a_listener_of_another_user() {
    let d = dir("squat", 0o777);
    let path = d.join("db-primary");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(ROLE_ENV, "listen")
        .env(PATH_ENV, &path)
        .uid(NOBODY)
        .gid(NOBODY)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    // The harness prints its own lines first; wait for ours.
    let mut line = String::new();
    while !line.trim_end().ends_with("ready") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "child died");
    }
    let res = connect_offer(&path);
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    child.wait().unwrap();
    assert!(res.is_err(), "connect to another user's listener returned Ok");
    assert!(
        rest.contains("fds=0"),
        "the other user received descriptors: {rest}"
    );
}

fn connect_offer(path: &std::path::Path) -> Result<Endpoint, coresident_shm::HandshakeError> {
    coresident_shm::connect(path, &OfferConfig::new(id("root-client")))
}

/// Finding 3: the acceptor refuses an offerer of another user.
#[test]
fn acceptor_refuses_an_offerer_of_another_user() {
    let d = dir("accept", 0o777);
    let path = d.join("server");
    let listener = Listener::bind(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(ROLE_ENV, "offer")
        .env(PATH_ENV, &path)
        .uid(NOBODY)
        .gid(NOBODY)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let res = listener.accept(&AcceptConfig::default());
    child.wait().unwrap();
    assert!(res.is_err(), "an offer from another user was accepted");
}

/// Finding 3: a one-shot offer socket in a shared /tmp-like directory.
#[test]
fn one_shot_offer_cannot_be_taken_by_another_user() {
    let d = dir("oneshot", 0o1777);
    let mut t = ShmTransport::new(id("offerer"), &d);
    let mut buf = [0u8; 256];
    // The steps: umask 000.
    let old = rustix::process::umask(rustix::fs::Mode::empty());
    let offered = t.offer(ChannelLayout::symmetric(4096), &mut buf);
    rustix::process::umask(old);
    let Ok((pending, n)) = offered else {
        return; // refused outright: the fix
    };
    let hex: String = buf[..n].iter().map(|b| format!("{b:02x}")).collect();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(ROLE_ENV, "take")
        .env(PATH_ENV, hex)
        .uid(NOBODY)
        .gid(NOBODY)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let res = pending.complete(Some(WATCHDOG));
    child.wait().unwrap();
    assert!(res.is_err(), "another user took the one-shot offer");
}

/// Finding 3: socket files are private whatever the umask.
#[test]
fn registry_sockets_are_private() {
    let d = dir("private", 0o700);
    let reg = Registry::open(&d).unwrap();
    let old = rustix::process::umask(rustix::fs::Mode::empty());
    let l = reg.register(&id("svc"));
    rustix::process::umask(old);
    let l = l.unwrap();
    let mode = std::fs::symlink_metadata(l.path()).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "socket mode {mode:o}");
}

/// The bytes of a well-formed hello (its descriptors never come).
fn good_hello_bytes() -> Vec<u8> {
    use zerocopy::IntoBytes;
    let l = coresident_shm::Layout::new(4096, 4096).unwrap();
    coresident_shm::wire::HelloWire::new(l.region_alloc_size() as u64, 4096, 4096, &id("slow"), None)
        .as_bytes()
        .to_vec()
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
    let hello = good_hello_bytes();
    let mut sent = 0;
    for b in hello.chunks(1) {
        if rustix::net::send(&ours, b, rustix::net::SendFlags::NOSIGNAL).is_err() {
            break;
        }
        sent += 1;
        if acceptor.is_finished() {
            break;
        }
        thread::sleep(Duration::from_millis(60));
    }
    let _ = acceptor.join();
    assert!(sent < 40, "the acceptor listened to {sent} slow bytes");
}

/// Finding 4: a slow client does not hold the listener against an honest offerer.
#[test]
fn slow_loris_does_not_delay_an_honest_offerer() {
    let d = dir("loris", 0o700);
    let path = d.join("srv");
    let listener = Listener::bind(&path).unwrap();
    let p2 = path.clone();
    let loris = thread::spawn(move || {
        let s = UnixStream::connect(&p2).unwrap();
        for b in good_hello_bytes().chunks(1) {
            if rustix::net::send(&s, b, rustix::net::SendFlags::NOSIGNAL).is_err() {
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
    });
    thread::sleep(Duration::from_millis(50));
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
    // Serve until the honest offer is in, or the honest offerer gave up.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let server = thread::spawn(move || loop {
        match listener.accept(&cfg) {
            Ok(ep) => break Some(ep),
            Err(_) if stop2.load(std::sync::atomic::Ordering::SeqCst) => break None,
            Err(_) => {}
        }
    });
    let h = honest.join().unwrap();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    // Wake a server still waiting for a connection: 16 bytes of garbage.
    if let Ok(s) = UnixStream::connect(&path) {
        let _ = rustix::net::send(&s, &[0u8; 16], rustix::net::SendFlags::NOSIGNAL);
        thread::sleep(Duration::from_millis(100));
    }
    let served = server.join().unwrap();
    loris.join().unwrap();
    assert!(served.is_some() && h.is_ok(), "honest offerer: {h:?}");
}

/// Issue 14: `Registry::connect` gives an endpoint `Channel::new` accepts.
#[test]
fn registry_connect_gives_an_endpoint_channel_new_accepts() {
    let d = dir("trap", 0o700);
    let reg = Registry::open(&d).unwrap();
    let l = reg.register(&id("server")).unwrap();
    let srv = thread::spawn(move || l.accept(&AcceptConfig::default()).unwrap());
    let ep = reg
        .connect(&id("server"), &OfferConfig::new(id("client")))
        .unwrap();
    let theirs = srv.join().unwrap();
    let cfg = ChannelConfig::default();
    let ch = Channel::new(ep.into_link(), cfg, StdClock::default());
    assert!(ch.is_ok(), "{:?}", ch.err());
    let ch2 = Channel::new(theirs.into_link(), cfg, StdClock::default());
    assert!(ch2.is_ok(), "{:?}", ch2.err());
}

/// Issue 14: a restart under the same name between two rescans is reported.
#[test]
fn watcher_reports_a_restart_between_two_rescans() {
    let d = dir("restart", 0o700);
    let reg = Registry::open(&d).unwrap();
    let first = reg.register(&id("svc")).unwrap();
    let mut w = reg.watch().unwrap();
    drop(first);
    let _second = reg.register(&id("svc")).unwrap();
    let mut events = Vec::new();
    for _ in 0..3 {
        events.extend(w.next_events(Some(Duration::from_millis(100))).unwrap());
    }
    assert!(
        events.contains(&coresident_shm::RegistryEvent::Left(id("svc")))
            && events.contains(&coresident_shm::RegistryEvent::Joined(id("svc"))),
        "{events:?}"
    );
}

/// The other user's side of the tests above.
#[test]
fn child_entry() {
    let Ok(role) = std::env::var(ROLE_ENV) else {
        return;
    };
    let arg = std::env::var(PATH_ENV).unwrap();
    match role.as_str() {
        "listen" => {
            let l = std::os::unix::net::UnixListener::bind(&arg).unwrap();
            println!("ready");
            let (s, _) = l.accept().unwrap();
            let mut fds = 0;
            let mut buf = [0u8; 512];
            let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(8))];
            let mut cmsg = rustix::net::RecvAncillaryBuffer::new(&mut space);
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            let _ = rustix::net::recvmsg(
                &s,
                &mut iov,
                &mut cmsg,
                rustix::net::RecvFlags::empty(),
            );
            for m in cmsg.drain() {
                if let rustix::net::RecvAncillaryMessage::ScmRights(r) = m {
                    fds += r.count();
                }
            }
            println!("fds={fds}");
            let _ = std::fs::remove_file(&arg);
            let _ = s.as_raw_fd();
        }
        "offer" => {
            let _ = coresident_shm::connect(
                std::path::Path::new(&arg),
                &OfferConfig::new(id("nobody")),
            );
        }
        "take" => {
            let bytes: Vec<u8> = (0..arg.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&arg[i..i + 2], 16).unwrap())
                .collect();
            let mut t = ShmTransport::new(id("thief"), std::env::temp_dir());
            let _ = t.accept(&bytes);
        }
        other => panic!("unknown role {other}"),
    }
    std::process::exit(0);
}
