//! Peer death: the peer process is killed (SIGKILL) while this side reads or writes:
//! an error, never a hang. The peer dies while a forked child keeps the TCP socket:
//! the stream continues over TCP with the child, nothing lost.
//!
//! The peers are this test binary run again as child processes.

mod common;

use common::builder;
use coresident_net::{Builder, HostRegistry, Path, Stream};
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn child_builder() -> Builder {
    Builder::new().discovery(HostRegistry::at(std::env::var("PEER_REG").unwrap()))
}

/// The peer processes.
#[test]
fn peer_child() {
    let Ok(role) = std::env::var("PEER_ROLE") else {
        return;
    };
    let addr = std::env::var("PEER_ADDR").unwrap();
    let s: Stream = child_builder().connect(addr.as_str()).unwrap();
    assert_eq!(s.path(), Path::Ring);
    match role.as_str() {
        // Sends a little, then waits to be killed.
        "idle" => {
            s.send_msg(b"ready").unwrap();
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        // Says ready, forks: the grandchild continues the stream, the child waits to
        // be killed.
        "fork" => {
            s.send_msg(b"ready").unwrap();
            // SAFETY:
            // - fork in a test process whose other threads hold no lock we take in the
            //   child (glibc's fork resets malloc's);
            // - the child only uses the stream and then `_exit`s, never returning into
            //   the test harness.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0);
            if pid == 0 {
                let mut buf = [0u8; 64];
                let ok = (|| {
                    let n = s.recv_msg(&mut buf).ok()?;
                    let mut reply = buf[..n].to_vec();
                    reply.reverse();
                    s.send_msg(&reply).ok()?;
                    s.shutdown(std::net::Shutdown::Write).ok()?;
                    Some(())
                })();
                // SAFETY: ends the forked child without running the parent's atexit
                // handlers or the harness.
                unsafe { libc::_exit(if ok.is_some() { 0 } else { 3 }) };
            }
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        _ => unreachable!(),
    }
}

fn spawn_peer(
    role: &str,
    name: &str,
) -> (
    coresident_net::Listener,
    std::process::Child,
    std::path::PathBuf,
) {
    let (b, dir) = builder(name);
    let listener = b.bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "peer_child", "--nocapture", "--test-threads=1"])
        .env("PEER_ROLE", role)
        .env("PEER_ADDR", addr.to_string())
        .env("PEER_REG", dir.join("reg"))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    (listener, child, dir)
}

/// Runs `f` on another thread and fails if it does not finish within `limit` (a hang).
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).expect("watchdog: the call hung")
}

#[test]
fn killed_peer_gives_a_reading_side_an_error_not_a_hang() {
    if std::env::var("PEER_ROLE").is_ok() {
        return;
    }
    let (listener, mut child, dir) = spawn_peer("idle", "death-read");
    let (s, _) = listener.accept().unwrap();
    assert_eq!(s.path(), Path::Ring);
    let mut buf = [0u8; 16];
    assert_eq!(s.recv_msg(&mut buf).unwrap(), 5);
    child.kill().unwrap();
    child.wait().unwrap();
    let t0 = Instant::now();
    let err = within(Duration::from_secs(30), move || {
        let mut b = [0u8; 100];
        (&s).read(&mut b).map(|n| (n, s.stats()))
    });
    let e = err.expect_err("a killed peer is an error, not end-of-file");
    eprintln!(
        "read after the peer's death: {e} ({:?}) after {:?}",
        e.kind(),
        t0.elapsed()
    );
    assert!(matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof
    ));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn killed_peer_gives_a_writing_side_an_error_not_a_hang() {
    if std::env::var("PEER_ROLE").is_ok() {
        return;
    }
    let (listener, mut child, dir) = spawn_peer("idle", "death-write");
    let (s, _) = listener.accept().unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(s.recv_msg(&mut buf).unwrap(), 5);
    child.kill().unwrap();
    child.wait().unwrap();
    let res = within(Duration::from_secs(30), move || {
        // The ring (256 KiB) and TCP's buffers fill up, then the death is noticed.
        let chunk = vec![7u8; 64 * 1024];
        let mut sent = 0u64;
        loop {
            match (&s).write(&chunk) {
                Ok(n) => sent += n as u64,
                Err(e) => return (sent, e, s.stats()),
            }
            if sent > 1 << 30 {
                panic!("wrote 1 GiB to a dead peer");
            }
        }
    });
    eprintln!(
        "write after the peer's death: {} after {} bytes; {:?}",
        res.1, res.0, res.2
    );
    assert_eq!(res.2.path, Path::Tcp, "fell back to TCP before failing");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn peer_dies_while_a_forked_child_keeps_the_socket_and_the_stream_goes_on_over_tcp() {
    if std::env::var("PEER_ROLE").is_ok() {
        return;
    }
    let (listener, mut child, dir) = spawn_peer("fork", "death-fork");
    let (s, _) = listener.accept().unwrap();
    assert_eq!(s.path(), Path::Ring);
    let mut buf = [0u8; 64];
    assert_eq!(s.recv_msg(&mut buf).unwrap(), 5);
    assert_eq!(&buf[..5], b"ready");
    // Give the fork a moment, then kill the process that made the stream; its forked
    // child still holds the TCP socket (and copies of the channel's descriptors).
    std::thread::sleep(Duration::from_millis(200));
    child.kill().unwrap();
    child.wait().unwrap();
    let (reply, eof, st) = within(Duration::from_secs(30), move || {
        s.send_msg(b"ping over whichever path").unwrap();
        let mut b = [0u8; 64];
        let n = s.recv_msg(&mut b).unwrap();
        let mut rest = Vec::new();
        let eof = (&s).read_to_end(&mut rest).map(|_| rest.len());
        (b[..n].to_vec(), eof, s.stats())
    });
    eprintln!("after the peer's death: {:?}", st);
    let mut want = b"ping over whichever path".to_vec();
    want.reverse();
    assert_eq!(reply, want, "the forked child answered over TCP");
    assert_eq!(
        eof.unwrap(),
        0,
        "FIN from the forked child at its final offset"
    );
    assert_eq!(st.path, Path::Tcp);
    assert!(st.downgrades >= 1);
    let _ = std::fs::remove_dir_all(dir);
}
