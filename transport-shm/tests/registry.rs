//! The registry: registration, scans that drop stale sockets, the watcher, and a
//! rendezvous through a registered name.
#![cfg(target_os = "linux")]

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use coresident_shm::{AcceptConfig, OfferConfig, PeerId, Registry, RegistryError, RegistryEvent};

/// Watchdog for waits that should end quickly; never asserted as a runtime bound.
const WATCHDOG: Duration = Duration::from_secs(30);

fn fresh_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("reg-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn id(s: &str) -> PeerId {
    s.parse().unwrap()
}

#[test]
fn register_scan_and_unregister_on_drop() {
    let reg = Registry::open(fresh_dir("basic")).unwrap();
    let a = reg.register(&id("10.0.0.1")).unwrap();
    let b = reg.register(&id("02-00-00-00-00-01")).unwrap();
    let c = reg.register(&id("db-primary")).unwrap();
    assert_eq!(a.path(), reg.dir().join("10.0.0.1"));
    let mut want = vec![id("10.0.0.1"), id("02-00-00-00-00-01"), id("db-primary")];
    want.sort();
    assert_eq!(reg.scan().unwrap(), want);
    drop(a);
    assert!(!reg.dir().join("10.0.0.1").exists());
    assert!(!reg.is_live(&id("10.0.0.1")).unwrap());
    assert_eq!(reg.scan().unwrap().len(), 2);
    drop((b, c));
    assert!(reg.scan().unwrap().is_empty());
    // No temporary registration files are left behind.
    assert_eq!(std::fs::read_dir(reg.dir()).unwrap().count(), 0);
}

#[test]
fn a_live_name_cannot_be_taken_twice() {
    let reg = Registry::open(fresh_dir("twice")).unwrap();
    let _a = reg.register(&id("alpha")).unwrap();
    assert_eq!(
        reg.register(&id("alpha")).unwrap_err(),
        RegistryError::AlreadyRegistered
    );
    assert_eq!(reg.scan().unwrap(), vec![id("alpha")]);
}

#[test]
fn stale_sockets_are_removed_and_can_be_replaced() {
    let reg = Registry::open(fresh_dir("stale")).unwrap();
    // A peer that died without removing its socket: std's listener leaves the file.
    drop(UnixListener::bind(reg.dir().join("ghost")).unwrap());
    drop(UnixListener::bind(reg.dir().join("10.9.9.9")).unwrap());
    assert!(reg.dir().join("ghost").exists());
    assert!(reg.scan().unwrap().is_empty());
    assert!(!reg.dir().join("ghost").exists());
    // Registering over a stale socket works too.
    drop(UnixListener::bind(reg.dir().join("ghost")).unwrap());
    let _g = reg.register(&id("ghost")).unwrap();
    assert_eq!(reg.scan().unwrap(), vec![id("ghost")]);
}

#[test]
fn foreign_files_are_left_alone() {
    let reg = Registry::open(fresh_dir("foreign")).unwrap();
    std::fs::write(reg.dir().join("notes"), b"not a socket").unwrap();
    std::fs::write(reg.dir().join("FD00::1"), b"non-canonical name").unwrap();
    drop(UnixListener::bind(reg.dir().join(".hidden")).unwrap());
    assert!(reg.scan().unwrap().is_empty());
    assert!(reg.dir().join("notes").exists());
    assert!(reg.dir().join("FD00::1").exists());
    assert!(reg.dir().join(".hidden").exists());
    // A regular file under a peer's name is not clobbered by a registration.
    assert!(reg.register(&id("notes")).is_err());
    assert!(reg.dir().join("notes").exists());
}

/// Collects events until `want` has been seen, or the watchdog fires.
fn expect_event(w: &mut coresident_shm::Watcher, want: &RegistryEvent) {
    let start = Instant::now();
    while start.elapsed() < WATCHDOG {
        let events = w.next_events(Some(Duration::from_secs(1))).unwrap();
        if events.contains(want) {
            return;
        }
    }
    panic!("watchdog: {want:?} not reported within {WATCHDOG:?}");
}

#[test]
fn watcher_reports_joins_and_leaves() {
    let reg = Registry::open(fresh_dir("watch")).unwrap();
    let _early = reg.register(&id("early")).unwrap();
    let mut w = reg.watch().unwrap();
    assert!(w.uses_inotify());
    assert_eq!(w.peers().cloned().collect::<Vec<_>>(), vec![id("early")]);

    let late = reg.register(&id("late")).unwrap();
    expect_event(&mut w, &RegistryEvent::Joined(id("late")));
    drop(late);
    expect_event(&mut w, &RegistryEvent::Left(id("late")));

    // A peer that dies without a trace (its socket file stays) is found by a rescan.
    w.set_rescan_interval(Duration::from_millis(50));
    drop(UnixListener::bind(reg.dir().join("crashed")).unwrap());
    // It never counted as live, so nothing is reported; the stale file goes away.
    assert!(w
        .next_events(Some(Duration::from_millis(200)))
        .unwrap()
        .is_empty());
    assert!(!reg.dir().join("crashed").exists());
    assert_eq!(w.peers().cloned().collect::<Vec<_>>(), vec![id("early")]);
}

#[test]
fn rendezvous_through_the_registry_survives_scans() {
    let reg = Registry::open(fresh_dir("connect")).unwrap();
    let listener = reg.register(&id("server")).unwrap();
    // Probes queue connections that close without a byte; `accept` must skip them.
    assert_eq!(reg.scan().unwrap(), vec![id("server")]);
    assert!(reg.is_live(&id("server")).unwrap());
    let server = thread::spawn(move || {
        let cfg = AcceptConfig {
            local_id: Some("server".parse().unwrap()),
            ..AcceptConfig::default()
        };
        listener.accept(&cfg).unwrap()
    });
    let client = reg
        .connect(&id("server"), &OfferConfig::new(id("client")))
        .unwrap();
    let server_end = server.join().unwrap();
    assert_eq!(server_end.peer().id, Some(id("client")));
    assert_eq!(client.peer().id, Some(id("server")));
    coresident::Doorbell::ring(client.link()).unwrap();
    let woke = coresident::Doorbell::wait(server_end.link(), Some(WATCHDOG)).unwrap();
    assert_eq!(woke, coresident::Wake::Rung);
}

#[test]
fn acceptor_hands_out_endpoints_and_is_pollable() {
    use coresident_shm::{AcceptError, Acceptor};
    use std::os::fd::AsFd;
    let reg = Registry::open(fresh_dir("acceptor")).unwrap();
    let acceptor = Acceptor::spawn(
        reg.register(&id("server")).unwrap(),
        AcceptConfig::default(),
    )
    .unwrap();
    let readable = |a: &Acceptor, ms: i64| {
        let fd = a.as_fd();
        let mut fds = [rustix::event::PollFd::new(
            &fd,
            rustix::event::PollFlags::IN,
        )];
        let ts = rustix::event::Timespec {
            tv_sec: ms / 1000,
            tv_nsec: (ms % 1000) * 1_000_000,
        };
        rustix::event::poll(&mut fds, Some(&ts)).unwrap() == 1
    };
    assert!(!readable(&acceptor, 0));
    assert_eq!(acceptor.try_accept().unwrap().map(|_| ()), None);
    let mut cfg = OfferConfig::new(id("client"));
    cfg.context = b"session-1".to_vec();
    let client = reg.connect(&id("server"), &cfg).unwrap();
    // Readable once the endpoint is queued (watchdog-bounded wait, not a runtime bound).
    assert!(readable(&acceptor, WATCHDOG.as_millis() as i64));
    let server = acceptor.try_accept().unwrap().unwrap();
    assert_eq!(server.peer().context, b"session-1");
    assert_eq!(server.peer().cred.uid, client.peer().cred.uid);
    assert!(!readable(&acceptor, 0));
    assert_eq!(
        acceptor
            .accept(Some(Duration::from_millis(10)))
            .unwrap_err(),
        AcceptError::TimedOut
    );
    assert_eq!(acceptor.stats().accepted, 1);
    let path = acceptor.path().to_owned();
    drop(acceptor);
    assert!(!path.exists(), "the socket goes with the acceptor");
}

/// A server stops its acceptor thread by shutting the listening socket down: the
/// thread's `accept_stream` must return an error, not spin on EAGAIN for ever (it did:
/// the shut-down socket polls as hung up while `accept` keeps saying EAGAIN).
#[test]
fn accept_stream_returns_once_the_listener_is_shut_down() {
    use std::os::fd::AsFd;
    let reg = Registry::open(fresh_dir("shutdown")).unwrap();
    let listener = reg.register(&id("stopping")).unwrap();
    let fd = listener.as_fd().try_clone_to_owned().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let t = thread::spawn(move || tx.send(listener.accept_stream().is_err()).unwrap());
    thread::sleep(Duration::from_millis(50));
    rustix::net::shutdown(&fd, rustix::net::Shutdown::Both).unwrap();
    assert!(rx
        .recv_timeout(WATCHDOG)
        .expect("accept_stream spun on a shut-down listener"));
    t.join().unwrap();
}
