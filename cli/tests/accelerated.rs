//! Issue 13's tests against Debian's programs and the C test program, both ends under
//! `coresident run`: integrity through withdrawals both ways, redis through a
//! withdrawal, mixed accelerated and plain connections, and bad input (a forged registry
//! entry, a registry socket of another uid, a scribbled ring, a peer that stops reading,
//! internal failures).
//!
//! Sizes: `CORESIDENT_TEST_MIB` (default 64) for the big transfer; `.ci/run` runs this
//! file in release with 1024 (1 GiB).

#[path = "../../preload/tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    c_program, free_port, have, random_file, sha256, tempdir, wait_listening, Background,
};

const CLI: &str = env!("CARGO_BIN_EXE_coresident");
const LIMIT: Duration = Duration::from_secs(240);

/// `coresident run --registry REG --log LOG -- PROG ARGS` (REG is created 0700 first, so
/// the log can be opened by the first process).
fn under(reg: &Path, prog: impl AsRef<std::ffi::OsStr>) -> Command {
    use std::os::unix::fs::DirBuilderExt;
    let _ = std::fs::DirBuilder::new().mode(0o700).create(reg);
    let mut c = Command::new(CLI);
    c.arg("run")
        .arg("--registry")
        .arg(reg)
        .arg("--log")
        .arg(reg.join("log"))
        .arg("--")
        .arg(prog);
    c.env_remove("LD_PRELOAD")
        .env_remove("CORESIDENT_INPROC")
        .env("CORESIDENT_LOG_LEVEL", "debug");
    c
}

/// The log all processes of a registry share.
fn log(reg: &Path) -> String {
    std::fs::read_to_string(reg.join("log")).unwrap_or_default()
}

/// One row of `coresident status`.
#[derive(Debug, Clone)]
#[allow(dead_code)]
struct Row {
    pid: u32,
    local: String,
    peer: String,
    path: String,
    ring_tx: u64,
    ring_rx: u64,
    tcp_tx: u64,
    tcp_rx: u64,
}

fn status(reg: &Path) -> Vec<Row> {
    let out = Command::new(CLI)
        .args(["status", "--registry"])
        .arg(reg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .filter_map(|l| {
            let c: Vec<&str> = l.split_whitespace().collect();
            if c.len() != 10 {
                return None;
            }
            Some(Row {
                pid: c[0].parse().ok()?,
                local: c[2].into(),
                peer: c[3].into(),
                path: c[4].into(),
                ring_tx: c[5].parse().ok()?,
                ring_rx: c[6].parse().ok()?,
                tcp_tx: c[7].parse().ok()?,
                tcp_rx: c[8].parse().ok()?,
            })
        })
        .collect()
}

fn withdraw(reg: &Path, pid: u32) {
    let out = Command::new(CLI)
        .args(["withdraw", "--pid", &pid.to_string(), "--registry"])
        .arg(reg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "withdraw: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits (watchdog: 30 s) until `f` holds.
fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "watchdog: never {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn test_mib() -> usize {
    std::env::var("CORESIDENT_TEST_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

/// Which end of a transfer sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sender {
    Client,
    Server,
}

/// A socat transfer under the library whose sender reads its stdin, fed by the test
/// in chunks (so a withdrawal can come at a chosen offset). Returns the received file.
struct Transfer {
    sender: Background,
    receiver: Background,
    stdin: std::process::ChildStdin,
    out: PathBuf,
}

fn start_transfer(reg: &Path, dir: &Path, who: Sender, tag: &str) -> Transfer {
    let port = free_port();
    let out = dir.join(format!("out-{tag}"));
    let listen = format!("TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr");
    let connect = format!("TCP:127.0.0.1:{port}");
    let create = format!("CREATE:{}", out.display());
    let (server_args, client_args) = match who {
        Sender::Client => (vec!["-u", &listen, &create], vec!["-u", "STDIN", &connect]),
        Sender::Server => (vec!["-u", "STDIN", &listen], vec!["-u", &connect, &create]),
    };
    let mut server = under(reg, "socat");
    server.args(&server_args);
    if who == Sender::Server {
        server.stdin(Stdio::piped());
    }
    let mut server = server.spawn().unwrap();
    let server_stdin = server.stdin.take();
    let server = Background::new(server);
    wait_listening(port);
    let mut client = under(reg, "socat");
    client.args(&client_args);
    if who == Sender::Client {
        client.stdin(Stdio::piped());
    }
    let mut client = client.spawn().unwrap();
    let client_stdin = client.stdin.take();
    let client = Background::new(client);
    let (sender, receiver, stdin) = match who {
        Sender::Client => (client, server, client_stdin.unwrap()),
        Sender::Server => (server, client, server_stdin.unwrap()),
    };
    Transfer {
        sender,
        receiver,
        stdin,
        out,
    }
}

/// Sends `input` through a transfer; after `withdraw_at` bytes, `coresident withdraw`s
/// the sender's or the receiver's pid, checks `status` shows the fallback, and goes on.
/// Returns the status rows of the sender seen at the end (bytes on both paths).
fn run_transfer(
    reg: &Path,
    dir: &Path,
    input: &Path,
    who: Sender,
    withdraw_at: Option<(usize, bool)>,
    tag: &str,
) -> Vec<Row> {
    let mut t = start_transfer(reg, dir, who, tag);
    let mut data = std::fs::File::open(input).unwrap();
    let mut buf = vec![0u8; 256 * 1024];
    let mut sent = 0usize;
    let mut withdrawn = false;
    let mut seen = Vec::new();
    loop {
        let n = data.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        t.stdin.write_all(&buf[..n]).unwrap();
        sent += n;
        if let Some((at, sender_side)) = withdraw_at {
            if !withdrawn && sent >= at {
                withdrawn = true;
                // The connection must be accelerated by now.
                let pid = if sender_side {
                    t.sender.id()
                } else {
                    t.receiver.id()
                };
                wait_until("accelerated", || {
                    status(reg).iter().any(|r| r.pid == pid && r.path == "ring")
                });
                withdraw(reg, pid);
                wait_until("fallen back", || {
                    status(reg)
                        .iter()
                        .filter(|r| r.pid == pid)
                        .all(|r| r.path == "tcp")
                });
            }
        }
        if withdrawn && seen.is_empty() && sent >= withdraw_at.map_or(0, |w| w.0) + (4 << 20) {
            // Well after the withdrawal: the sender has bytes on both paths.
            let sp = t.sender.id();
            seen = status(reg).into_iter().filter(|r| r.pid == sp).collect();
        }
    }
    drop(t.stdin);
    let s = t.sender.finish(LIMIT);
    assert!(
        s.status.success(),
        "sender: {}",
        String::from_utf8_lossy(&s.stderr)
    );
    let r = t.receiver.finish(LIMIT);
    assert!(
        r.status.success(),
        "receiver: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert_eq!(
        sha256(input),
        sha256(&t.out),
        "{tag}: the received bytes differ"
    );
    seen
}

#[test]
fn a_large_transfer_through_socat_takes_the_ring_and_arrives_intact() {
    if !have("socat") {
        return;
    }
    let dir = tempdir("big");
    let reg = dir.join("reg");
    let input = random_file(&dir, "in", test_mib() << 20);
    let out = dir.join("out");
    let port = free_port();
    let mut rx = under(&reg, "socat");
    rx.arg("-u")
        .arg(format!("TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr"))
        .arg(format!("CREATE:{}", out.display()));
    let rx = Background::new(rx.spawn().unwrap());
    wait_listening(port);
    let mut tx = under(&reg, "socat");
    tx.arg("-u")
        .arg(format!("OPEN:{}", input.display()))
        .arg(format!("TCP:127.0.0.1:{port}"));
    let t = common::run_bounded(tx, LIMIT);
    assert!(t.status.success(), "{}", String::from_utf8_lossy(&t.stderr));
    assert!(rx.finish(LIMIT).status.success());
    assert_eq!(sha256(&input), sha256(&out));
    let l = log(&reg);
    assert_eq!(
        l.matches("upgrade: bytes take the ring").count(),
        2,
        "both ends on the ring:\n{l}"
    );
    assert!(
        !l.contains("resent_bytes=") || l.contains("resent_bytes=0"),
        "nothing resent:\n{l}"
    );
}

#[test]
fn withdrawals_mid_stream_both_directions_lose_nothing() {
    if !have("socat") {
        return;
    }
    let dir = tempdir("withdraw");
    let reg = dir.join("reg");
    let size = (test_mib() / 4).max(16) << 20;
    let input = random_file(&dir, "in", size);
    let mut k = 0;
    for who in [Sender::Client, Sender::Server] {
        for sender_side in [true, false] {
            k += 1;
            // A random point between 20% and 70% of the stream.
            let at = size / 5 + (common::rand_u32() as usize % (size / 2));
            let rows = run_transfer(
                &reg,
                &dir,
                &input,
                who,
                Some((at, sender_side)),
                &format!("{who:?}-{sender_side}-{k}"),
            );
            assert!(!rows.is_empty(), "the sender is listed by status");
            for r in &rows {
                assert_eq!(r.path, "tcp");
                assert!(
                    r.ring_tx > 0,
                    "bytes on the ring before the withdrawal: {r:?}"
                );
                assert!(r.tcp_tx > 0, "bytes on TCP after it: {r:?}");
            }
        }
    }
}

/// redis-cli (one session, under the library) against redis-server (under the
/// library): SET and GET of 1 B to 1 MiB; the server is withdrawn half-way.
#[test]
fn redis_set_get_1_byte_to_1_mib_through_a_withdrawal() {
    if !have("redis-server") || !have("redis-cli") {
        return;
    }
    let dir = tempdir("redis");
    let reg = dir.join("reg");
    let port = free_port();
    let mut s = under(&reg, "redis-server");
    s.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ])
    .arg("--dir")
    .arg(&dir)
    .stdout(Stdio::null());
    let server = Background::new(s.spawn().unwrap());
    wait_listening(port);
    let mut c = under(&reg, "redis-cli");
    c.args(["-p", &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut cli = c.spawn().unwrap();
    let mut stdin = cli.stdin.take().unwrap();
    let mut lines = BufReader::new(cli.stdout.take().unwrap()).lines();
    let cli = Background::new(cli);
    let sizes: Vec<usize> = (0..=20)
        .map(|p| 1usize << p)
        .chain([3, 1000, 65_537, 999_999])
        .collect();
    let mut withdrawn = false;
    for (i, &size) in sizes.iter().enumerate() {
        if i == sizes.len() / 2 {
            wait_until("accelerated", || {
                let st = status(&reg);
                st.iter().any(|r| r.pid == server.id() && r.path == "ring")
                    && st.iter().any(|r| r.pid == cli.id() && r.path == "ring")
            });
            withdraw(&reg, server.id());
            // The server's side falls back at once; the client's follows at its next
            // read (it waits on its stdin meanwhile).
            wait_until("fallen back", || {
                status(&reg)
                    .iter()
                    .filter(|r| r.pid == server.id())
                    .all(|r| r.path == "tcp")
            });
            withdrawn = true;
        }
        let value: String = (0..size)
            .map(|j| char::from(b'a' + ((i * 7 + j) % 26) as u8))
            .collect();
        writeln!(stdin, "SET k{i} {value}").unwrap();
        writeln!(stdin, "GET k{i}").unwrap();
        stdin.flush().unwrap();
        assert_eq!(lines.next().unwrap().unwrap(), "OK", "SET k{i}");
        let got = lines.next().unwrap().unwrap();
        assert!(
            got == value,
            "GET k{i} ({size} bytes) returned {} bytes, not what was SET",
            got.len()
        );
    }
    assert!(withdrawn);
    let rows = status(&reg);
    let mine: Vec<&Row> = rows.iter().filter(|r| r.pid == cli.id()).collect();
    assert!(!mine.is_empty(), "{rows:?}");
    assert!(
        mine.iter()
            .all(|r| r.path == "tcp" && r.ring_tx > 0 && r.tcp_tx > 0),
        "the client fell back too, with bytes on both paths: {mine:?}"
    );
    drop(stdin);
    assert!(cli.finish(LIMIT).status.success());
    drop(server);
}

#[test]
fn a_client_of_an_accelerated_and_a_plain_server_keeps_them_apart() {
    let Some(prog) = c_program("sockets") else {
        return;
    };
    let dir = tempdir("mixed");
    let reg = dir.join("reg");
    let (pa, pb) = (free_port(), free_port());
    let mut a = under(&reg, &prog);
    a.args(["echo-server", &pa.to_string()])
        .stdout(Stdio::piped());
    let a = Background::new(a.spawn().unwrap());
    let mut b = Command::new(&prog);
    b.args(["echo-server", &pb.to_string()])
        .env_remove("LD_PRELOAD")
        .stdout(Stdio::piped());
    let b = Background::new(b.spawn().unwrap());
    wait_listening(pa);
    wait_listening(pb);
    let mut c = under(&reg, &prog);
    c.args(["mixed", &pa.to_string(), &pb.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let child = Background::new(child);
    assert_eq!(out.next().unwrap().unwrap(), "ready");
    let rows = status(&reg);
    let mine: Vec<&Row> = rows.iter().filter(|r| r.pid == child.id()).collect();
    assert_eq!(
        mine.len(),
        1,
        "only the connection to the accelerated server: {rows:?}"
    );
    assert_eq!(mine[0].peer, format!("127.0.0.1:{pa}"));
    assert_eq!(mine[0].path, "ring");
    assert!(
        rows.iter().all(|r| r.peer != format!("127.0.0.1:{pb}")),
        "the plain one stays plain"
    );
    writeln!(stdin, "go").unwrap();
    assert_eq!(out.next().unwrap().unwrap(), "mixed: ok");
    assert!(child.finish(LIMIT).status.success());
    drop((a, b));
}

/// A plain echo server on `port`, and the C client under the library: its outcome and
/// the shared log.
fn client_against_plain_server(
    reg: &Path,
    prog: &Path,
    port: u16,
    env: &[(&str, &str)],
) -> (i32, String) {
    let mut s = Command::new(prog);
    s.args(["echo-server", &port.to_string()])
        .env_remove("LD_PRELOAD")
        .stdout(Stdio::null());
    let s = Background::new(s.spawn().unwrap());
    wait_listening(port);
    let mut c = under(reg, prog);
    c.args(["client", &port.to_string()]);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = common::run_bounded(c, LIMIT);
    drop(s);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Makes `reg/tcp/127.0.0.1_PORT` a socket served by a thread that answers every
/// connection with garbage.
fn forge_registration(reg: &Path, port: u16) -> std::thread::JoinHandle<()> {
    use std::os::unix::fs::PermissionsExt;
    let tcp = reg.join("tcp");
    std::fs::create_dir_all(&tcp).unwrap();
    for d in [reg, tcp.as_path()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let l = std::os::unix::net::UnixListener::bind(tcp.join(format!("127.0.0.1_{port}"))).unwrap();
    std::thread::spawn(move || {
        for mut s in l.incoming().take(4).flatten() {
            let _ = s.write_all(&[0xA5; 4096]);
        }
    })
}

#[test]
fn a_forged_registry_entry_gives_plain_tcp() {
    let Some(prog) = c_program("sockets") else {
        return;
    };
    let dir = tempdir("forged");
    let reg = dir.join("reg");
    let port = free_port();
    let _forger = forge_registration(&reg, port);
    let (code, out) = client_against_plain_server(&reg, &prog, port, &[]);
    assert_eq!((code, out.as_str()), (0, "client: ok\ndone\n"));
    let l = log(&reg);
    assert!(
        !l.contains(" accelerated "),
        "a forged entry must not accelerate:\n{l}"
    );
    assert!(
        l.contains("refused") || l.contains("plain TCP"),
        "the refusal is logged:\n{l}"
    );
}

#[test]
fn a_registry_socket_of_another_uid_gives_plain_tcp() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIP: needs root (a process of another uid serves the registry socket)");
        return;
    }
    let Some(prog) = c_program("sockets") else {
        return;
    };
    if !have("socat") {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    // In the system's temporary directory: uid 65534 must be able to reach the staging
    // directory (the target directory's parents may be closed to it), and the socket is
    // then renamed within one file system.
    let dir = std::env::temp_dir().join(format!(
        "coresident-uid-{}-{}",
        std::process::id(),
        common::rand_u32()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let reg = dir.join("reg");
    let stage = dir.join("stage");
    std::fs::create_dir_all(&stage).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&stage, std::fs::Permissions::from_mode(0o777)).unwrap();
    let port = free_port();
    // uid 65534 serves a socket, which we then move into our registry.
    let sock = stage.join("s");
    let foreign = Command::new("socat")
        .arg(format!("UNIX-LISTEN:{},fork", sock.display()))
        .arg("SYSTEM:echo garbage")
        .uid(65534)
        .gid(65534)
        .env_remove("LD_PRELOAD")
        .spawn()
        .unwrap();
    let _foreign = Background::new(foreign);
    wait_until("the foreign socket", || sock.exists());
    let tcp = reg.join("tcp");
    std::fs::create_dir_all(&tcp).unwrap();
    for d in [reg.as_path(), tcp.as_path()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    std::fs::rename(&sock, tcp.join(format!("127.0.0.1_{port}"))).unwrap();
    let (code, out) = client_against_plain_server(&reg, &prog, port, &[]);
    assert_eq!((code, out.as_str()), (0, "client: ok\ndone\n"));
    let l = log(&reg);
    assert!(
        !l.contains(" accelerated "),
        "another uid must never get a ring:\n{l}"
    );
    assert!(l.contains("65534"), "the refusal names the uid:\n{l}");
}

/// The receiver's memfd (the shared region of its connection), opened through /proc.
fn region_of(pid: u32) -> Option<std::fs::File> {
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        if std::fs::read_link(e.path())
            .is_ok_and(|l| l.to_string_lossy().starts_with("/memfd:coresident"))
        {
            return std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(e.path())
                .ok();
        }
    }
    None
}

#[test]
fn a_scribbled_ring_falls_back_or_resets_never_wrong_bytes() {
    if !have("socat") {
        return;
    }
    use std::os::unix::fs::FileExt;
    let dir = tempdir("scribble");
    let reg = dir.join("reg");
    let size = 32 << 20;
    let input = random_file(&dir, "in", size);
    let mut t = start_transfer(&reg, &dir, Sender::Client, "scribble");
    let mut data = std::fs::File::open(&input).unwrap();
    let mut buf = vec![0u8; 256 * 1024];
    let mut sent = 0;
    let mut scribbled = false;
    let mut write_ok = true;
    loop {
        let n = data.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        if t.stdin.write_all(&buf[..n]).is_err() {
            write_ok = false;
            break;
        }
        sent += n;
        if !scribbled && sent >= size / 3 {
            scribbled = true;
            let pid = t.receiver.id();
            wait_until("accelerated", || {
                status(&reg)
                    .iter()
                    .any(|r| r.pid == pid && r.path == "ring")
            });
            let region = region_of(pid).expect("the receiver's shared region");
            // The consumer's read index of the ring the sender produces into (offset
            // 384 of the region's first ring, coresident_ring::layout::off::READ), and
            // its write index (128): impossible values, over and over for a while.
            let start = Instant::now();
            while start.elapsed() < Duration::from_millis(300) {
                let _ = region.write_all_at(&0xDEAD_BEEF_u32.to_le_bytes(), 384);
                let _ = region.write_all_at(&0x0BAD_F00D_u32.to_le_bytes(), 128);
            }
        }
    }
    drop(t.stdin);
    let s = t.sender.finish(LIMIT);
    let r = t.receiver.finish(LIMIT);
    let got = std::fs::read(&t.out).unwrap_or_default();
    let want = std::fs::read(&input).unwrap();
    assert!(got.len() <= want.len(), "more bytes than were sent");
    assert_eq!(
        &got[..],
        &want[..got.len()],
        "the bytes received are not the bytes sent"
    );
    if s.status.success() && r.status.success() && write_ok {
        assert_eq!(
            got.len(),
            want.len(),
            "both ends succeeded: every byte must be there"
        );
    }
    let l = log(&reg);
    assert!(
        l.contains("reason=\"ring corrupted\""),
        "the scribble was seen as a corrupt ring:\n{l}"
    );
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

#[test]
fn a_peer_that_stops_reading_gets_back_pressure_and_bounded_memory() {
    if !have("socat") {
        return;
    }
    let dir = tempdir("stall");
    let reg = dir.join("reg");
    let size = 64 << 20;
    let input = random_file(&dir, "in", size);
    let t = start_transfer(&reg, &dir, Sender::Client, "stall");
    let receiver = t.receiver.id();
    let sender = t.sender.id();
    let mut stdin = t.stdin;
    wait_until("accelerated", || {
        status(&reg)
            .iter()
            .any(|r| r.pid == receiver && r.path == "ring")
    });
    // SAFETY: signalling our own child.
    unsafe { libc::kill(receiver as i32, libc::SIGSTOP) };
    let rss0 = rss_kib(sender);
    let feeder = std::thread::spawn(move || {
        let mut data = std::fs::File::open(&input).unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let fed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let fed2 = fed.clone();
        let h = std::thread::spawn(move || {
            loop {
                let n = data.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                if stdin.write_all(&buf[..n]).is_err() {
                    break;
                }
                fed2.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
            }
            drop(stdin);
            input
        });
        (fed, h)
    });
    let (fed, h) = feeder.join().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let stalled = fed.load(std::sync::atomic::Ordering::SeqCst);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        fed.load(std::sync::atomic::Ordering::SeqCst),
        stalled,
        "the sender goes on taking bytes"
    );
    assert!(
        stalled < 16 << 20,
        "back-pressure: {stalled} bytes taken while the peer does not read"
    );
    let grown = rss_kib(sender).saturating_sub(rss0);
    assert!(grown < 32 * 1024, "the sender's memory grew by {grown} KiB");
    // SAFETY: as above.
    unsafe { libc::kill(receiver as i32, libc::SIGCONT) };
    let input = h.join().unwrap();
    assert!(t.sender.finish(LIMIT).status.success());
    assert!(t.receiver.finish(LIMIT).status.success());
    assert_eq!(sha256(&input), sha256(&t.out));
}

#[test]
fn internal_failures_give_plain_tcp_or_an_errno_never_a_crash() {
    let Some(prog) = c_program("sockets") else {
        return;
    };
    for (fault, expect_ok) in [
        ("offer", true),
        ("control", true),
        ("session", false),
        ("adopt", false),
        ("read-panic", false),
    ] {
        let dir = tempdir(fault);
        let reg = dir.join("reg");
        let port = free_port();
        let mut s = under(&reg, &prog);
        s.args(["echo-server", &port.to_string()])
            .env("CORESIDENT_FAULT", fault)
            .stdout(Stdio::null());
        let s = Background::new(s.spawn().unwrap());
        wait_listening(port);
        let mut c = under(&reg, &prog);
        c.args(["client", &port.to_string()])
            .env("CORESIDENT_FAULT", fault);
        let out = common::run_bounded(c, LIMIT);
        let text = String::from_utf8_lossy(&out.stdout);
        let code = out.status.code();
        assert!(
            code.is_some(),
            "{fault}: the client died of a signal: {:?}",
            out.status
        );
        assert!(!text.contains("WRONG BYTES"), "{fault}: {text}");
        if expect_ok {
            assert_eq!(
                (code, text.as_ref()),
                (Some(0), "client: ok\ndone\n"),
                "{fault}"
            );
        } else {
            // A clean error: exit 3 ("client: read/write: ..."), or success if the fault
            // was not on this connection's path.
            assert!(matches!(code, Some(0 | 3)), "{fault}: {code:?} {text}");
        }
        let server = s.finish_or_kill();
        assert!(
            server.is_none_or(|st| st.code().is_some()),
            "{fault}: the server died of a signal"
        );
        let l = log(&reg);
        assert!(
            l.contains("fault injected"),
            "{fault}: the failure is logged:\n{l}"
        );
    }
}

/// `iperf3 -Z` (sendfile) with both ends under the library.
#[test]
fn iperf3_zerocopy_sendfile_is_served() {
    if !have("iperf3") {
        return;
    }
    let dir = tempdir("iperf");
    let reg = dir.join("reg");
    let port = free_port();
    let mut s = under(&reg, "iperf3");
    s.args(["-s", "-1", "-p", &port.to_string(), "-B", "127.0.0.1"])
        .stdout(Stdio::null());
    let s = Background::new(s.spawn().unwrap());
    wait_listening(port);
    let mut c = under(&reg, "iperf3");
    c.args([
        "-c",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-n",
        "32M",
        "-Z",
        "-J",
    ]);
    let out = common::run_bounded(c, LIMIT);
    let json = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{json}");
    assert!(json.contains("33554432"), "{json}");
    assert!(s.finish(LIMIT).status.success());
    assert!(
        log(&reg).matches(" accelerated ").count() >= 2,
        "{}",
        log(&reg)
    );
}

/// socat's `fork` option: the server forks a child per connection, which carries the
/// stream; the parent closes its copy at once.
#[test]
fn a_forked_child_carries_the_connection() {
    if !have("socat") {
        return;
    }
    let dir = tempdir("fork");
    let reg = dir.join("reg");
    let input = random_file(&dir, "in", 8 << 20);
    let out = dir.join("out");
    let port = free_port();
    let mut rx = under(&reg, "socat");
    rx.arg("-u")
        .arg(format!("TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork"))
        .arg(format!("OPEN:{},creat,append", out.display()));
    let rx = Background::new(rx.spawn().unwrap());
    wait_listening(port);
    for k in 1..=2u64 {
        let mut tx = under(&reg, "socat");
        tx.arg("-u")
            .arg(format!("OPEN:{}", input.display()))
            .arg(format!("TCP:127.0.0.1:{port}"));
        let t = common::run_bounded(tx, LIMIT);
        assert!(t.status.success(), "{}", String::from_utf8_lossy(&t.stderr));
        // The child that received this copy has written all of it before the next one.
        wait_until("a copy written", || {
            std::fs::metadata(&out).is_ok_and(|m| m.len() >= k * (8 << 20))
        });
    }
    wait_until("both copies written", || {
        std::fs::metadata(&out).is_ok_and(|m| m.len() >= 2 * (8 << 20))
    });
    drop(rx);
    let got = std::fs::read(&out).unwrap();
    let want = std::fs::read(&input).unwrap();
    assert_eq!(got.len(), 2 * want.len());
    assert!(got[..want.len()] == want[..] && got[want.len()..] == want[..]);
    let l = log(&reg);
    assert!(l.matches(" accelerated ").count() >= 4, "{l}");
    assert!(l.contains("handed over"), "{l}");
}

trait FinishOrKill {
    fn finish_or_kill(self) -> Option<std::process::ExitStatus>;
}

impl FinishOrKill for Background {
    /// Waits up to 5 s for the process to exit by itself, else kills it (`None`).
    fn finish_or_kill(self) -> Option<std::process::ExitStatus> {
        let id = self.id();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            let mut st = 0;
            // SAFETY: polling our own child without reaping others.
            let r = unsafe { libc::waitpid(id as i32, &mut st, libc::WNOHANG) };
            if r == id as i32 {
                std::mem::forget(self);
                return Some(std::os::unix::process::ExitStatusExt::from_raw(st));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

/// One connection used by several threads at once (a reader and one or two writers):
/// the SPSC case and two writers that must not interleave one write with another.
#[test]
fn a_reader_thread_and_writer_threads_on_one_connection() {
    let Some(prog) = c_program("sockets") else {
        return;
    };
    for writers in ["1", "2"] {
        let dir = tempdir("threads");
        let reg = dir.join("reg");
        let port = free_port();
        let mut s = under(&reg, &prog);
        s.args(["echo-server", &port.to_string()])
            .stdout(Stdio::null());
        let s = Background::new(s.spawn().unwrap());
        wait_listening(port);
        let mut c = under(&reg, &prog);
        c.args(["threads", &port.to_string(), writers]);
        let out = common::run_bounded(c, LIMIT);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains(&format!("threads: {writers} writers and a reader: ok")),
            "{text}"
        );
        drop(s);
        assert!(
            log(&reg).matches(" accelerated ").count() >= 2,
            "{}",
            log(&reg)
        );
    }
}

/// A session socket inherited across exec: the new image gets a closed socket in its
/// place (the write fails with EPIPE/SIGPIPE), never the session's TCP segments.
#[test]
fn an_accelerated_socket_does_not_cross_an_exec() {
    let Some(prog) = c_program("sockets") else {
        return;
    };
    let dir = tempdir("exec");
    let reg = dir.join("reg");
    let port = free_port();
    let mut s = under(&reg, &prog);
    s.args(["echo-server", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let s = Background::new(s.spawn().unwrap());
    wait_listening(port);
    let mut c = under(&reg, &prog);
    c.args(["exec-inherit", &port.to_string()]);
    let out = common::run_bounded(c, LIMIT);
    let text = String::from_utf8_lossy(&out.stdout);
    // Plain TCP would print "exec: echo: hello"; here the socket did not cross.
    assert!(!text.contains("exec: echo:"), "{text}");
    use std::os::unix::process::ExitStatusExt;
    assert!(
        out.status.signal() == Some(libc::SIGPIPE) || text.contains("did not cross"),
        "{:?} {text}",
        out.status
    );
    drop(s);
    let l = log(&reg);
    assert!(l.contains("cannot cross into a new image"), "{l}");
}
