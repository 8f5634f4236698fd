//! Everything the library does not accelerate passes through untouched and exactly:
//! programs run under it (with acceleration off, or impossible: UDP, Unix sockets, a
//! peer without the library) behave as they do plain, byte for byte.
//!
//! And where the library does accelerate (a C program whose client and server threads
//! both run under it: `coresident_net` sessions within one process, or the in-process
//! backend), its whole transcript is the same as its plain run.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{
    c_program, command, have, random_file, run_bounded, sha256, tempdir, wait_listening,
    wait_udp_bound, Background, Mode,
};

const LIMIT: Duration = Duration::from_secs(60);

/// The transcript of `sockets MODE` run with `env` (plain or preloaded).
fn transcript(prog: &std::path::Path, arg: &str, mode: Mode, env: &[(&str, &str)]) -> String {
    let reg = tempdir("reg");
    let mut c = command(prog, mode, &reg);
    c.arg(arg);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = run_bounded(c, LIMIT);
    assert!(
        out.status.success(),
        "sockets {arg} ({mode:?} {env:?}) failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn c_program_transcripts_match_plain_runs() {
    let Some(prog) = c_program("sockets") else {
        return;
    };
    for arg in ["tcp", "udp", "unix"] {
        let plain = transcript(&prog, arg, Mode::Plain, &[]);
        assert!(plain.ends_with("done\n"), "{plain}");
        let pre = transcript(&prog, arg, Mode::Preloaded, &[]);
        assert_eq!(plain, pre, "sockets {arg}: preloaded differs from plain");
        let off = transcript(&prog, arg, Mode::Preloaded, &[("CORESIDENT_DISABLE", "1")]);
        assert_eq!(
            plain, off,
            "sockets {arg}: CORESIDENT_DISABLE differs from plain"
        );
    }
}

#[test]
fn accelerated_in_process_the_transcript_is_the_same() {
    let Some(prog) = c_program("sockets") else {
        return;
    };
    let plain = transcript(&prog, "tcp", Mode::Plain, &[]);
    let dir = tempdir("inproc");
    let log = dir.join("log");
    let log_s = log.to_str().unwrap();
    let acc = transcript(
        &prog,
        "tcp",
        Mode::Preloaded,
        &[
            ("CORESIDENT_INPROC", "1"),
            ("CORESIDENT_LOG", log_s),
            ("CORESIDENT_LOG_LEVEL", "debug"),
        ],
    );
    assert_eq!(plain, acc, "accelerated in-process: transcript differs");
    let log = std::fs::read_to_string(&log).unwrap();
    // Two connections, both ends accelerated, and the fork made them fall back.
    assert!(
        log.matches(" accelerated ").count() >= 4,
        "not accelerated:\n{log}"
    );
    assert!(log.contains("reason=fork"), "{log}");
}

#[test]
fn socat_tcp_to_a_peer_without_the_library_is_exact() {
    if !have("socat") {
        return;
    }
    let dir = tempdir("socat-tcp");
    let input = random_file(&dir, "in", 8 << 20);
    for (rx_mode, tx_mode) in [
        (Mode::Plain, Mode::Preloaded),
        (Mode::Preloaded, Mode::Plain),
        (Mode::Preloaded, Mode::Preloaded),
    ] {
        let out = dir.join(format!("out-{rx_mode:?}-{tx_mode:?}"));
        let port = common::free_port();
        let mut rx = command("socat", rx_mode, &dir);
        rx.arg("-u")
            .arg(format!("TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr"))
            .arg(format!("CREATE:{}", out.display()));
        let rx = Background::new(rx.spawn().unwrap());
        wait_listening(port);
        let mut tx = command("socat", tx_mode, &dir);
        tx.arg("-u")
            .arg(format!("OPEN:{}", input.display()))
            .arg(format!("TCP:127.0.0.1:{port}"));
        let st = run_bounded(tx, LIMIT);
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
        let done = rx.finish(LIMIT);
        assert!(done.status.success());
        assert_eq!(sha256(&input), sha256(&out), "{rx_mode:?} <- {tx_mode:?}");
    }
}

#[test]
fn socat_udp_and_unix_pass_through() {
    if !have("socat") {
        return;
    }
    let dir = tempdir("socat-other");
    // UDP: one datagram each way of a request/answer, preloaded both sides.
    let port = common::free_port();
    let mut rx = command("socat", Mode::Preloaded, &dir);
    rx.args(["-T", "2", "-u"])
        .arg(format!("UDP-RECV:{port},bind=127.0.0.1"))
        .arg("STDOUT");
    let rx = Background::new(rx.stdout(std::process::Stdio::piped()).spawn().unwrap());
    wait_udp_bound(port);
    let mut tx = command("sh", Mode::Plain, &dir);
    tx.arg("-c").arg(format!(
        "printf 'a datagram' | LD_PRELOAD={} socat -u STDIN UDP-SENDTO:127.0.0.1:{port}",
        common::library().display()
    ));
    assert!(run_bounded(tx, LIMIT).status.success());
    let got = rx.finish(LIMIT);
    assert_eq!(String::from_utf8_lossy(&got.stdout), "a datagram");
    // Unix stream sockets: a file through a Unix socket, preloaded both sides.
    let input = random_file(&dir, "in", 4 << 20);
    let out = dir.join("out");
    let path = dir.join("sock");
    let mut rx = command("socat", Mode::Preloaded, &dir);
    rx.arg("-u")
        .arg(format!("UNIX-LISTEN:{}", path.display()))
        .arg(format!("CREATE:{}", out.display()));
    let rx = Background::new(rx.spawn().unwrap());
    let start = std::time::Instant::now();
    while !path.exists() {
        assert!(start.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut tx = command("socat", Mode::Preloaded, &dir);
    tx.arg("-u")
        .arg(format!("OPEN:{}", input.display()))
        .arg(format!("UNIX-CONNECT:{}", path.display()));
    assert!(run_bounded(tx, LIMIT).status.success());
    assert!(rx.finish(LIMIT).status.success());
    assert_eq!(sha256(&input), sha256(&out));
}

/// `redis-cli` against `redis-server`, one side preloaded and the other not: the same
/// answers as plain.
#[test]
fn redis_with_one_side_preloaded_answers_as_plain() {
    if !have("redis-server") || !have("redis-cli") {
        return;
    }
    let dir = tempdir("redis");
    let script = |port: u16, cli: Mode| -> String {
        let mut out = String::new();
        for (i, size) in [1usize, 100, 10_000, 1 << 20].iter().enumerate() {
            let value: String = (0..*size)
                .map(|j| char::from(b'a' + ((i + j) % 26) as u8))
                .collect();
            let vfile = dir.join(format!("v{i}"));
            std::fs::write(&vfile, &value).unwrap();
            let mut set = command("redis-cli", cli, &dir);
            set.args(["-p", &port.to_string(), "-x", "SET", &format!("k{i}")])
                .stdin(std::fs::File::open(&vfile).unwrap());
            let o = set.output().unwrap();
            out.push_str(&String::from_utf8_lossy(&o.stdout));
            let mut get = command("redis-cli", cli, &dir);
            get.args(["-p", &port.to_string(), "GET", &format!("k{i}")]);
            let o = get.output().unwrap();
            let got = String::from_utf8_lossy(&o.stdout);
            out.push_str(&format!("GET k{i}: {}\n", got.trim_end() == value));
        }
        out
    };
    let mut results = Vec::new();
    for (server, cli) in [
        (Mode::Plain, Mode::Plain),
        (Mode::Plain, Mode::Preloaded),
        (Mode::Preloaded, Mode::Plain),
    ] {
        let port = common::free_port();
        let mut s = command("redis-server", server, &dir);
        s.args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            dir.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::null());
        let _s = Background::new(s.spawn().unwrap());
        wait_listening(port);
        results.push(script(port, cli));
    }
    assert!(results[0].contains("GET k3: true"), "{}", results[0]);
    assert_eq!(results[0], results[1], "preloaded redis-cli");
    assert_eq!(results[0], results[2], "preloaded redis-server");
}

/// `iperf3` and `sockperf` with one side preloaded: they run and report.
#[test]
fn iperf3_and_sockperf_with_one_side_preloaded() {
    let dir = tempdir("bench");
    if have("iperf3") {
        for (server, client) in [
            (Mode::Plain, Mode::Preloaded),
            (Mode::Preloaded, Mode::Plain),
        ] {
            let port = common::free_port();
            let mut s = command("iperf3", server, &dir);
            s.args(["-s", "-1", "-p", &port.to_string(), "-B", "127.0.0.1"])
                .stdout(std::process::Stdio::null());
            let s = Background::new(s.spawn().unwrap());
            wait_listening(port);
            let mut c = command("iperf3", client, &dir);
            c.args([
                "-c",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-n",
                "20M",
                "-J",
            ]);
            let out = run_bounded(c, LIMIT);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let json = String::from_utf8_lossy(&out.stdout);
            assert!(
                json.contains("\"bytes\":\t20971520")
                    || json.contains("\"bytes\": 20971520")
                    || json.contains("20971520"),
                "{json}"
            );
            assert!(s.finish(LIMIT).status.success());
        }
    }
    if have("sockperf") {
        let port = common::free_port();
        let mut s = command("sockperf", Mode::Plain, &dir);
        s.args(["sr", "--tcp", "-i", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null());
        let _s = Background::new(s.spawn().unwrap());
        wait_listening(port);
        let mut c = command("sockperf", Mode::Preloaded, &dir);
        c.args([
            "pp",
            "--tcp",
            "-i",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            "1",
            "-m",
            "64",
        ]);
        let out = run_bounded(c, LIMIT);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("avg-latency") || text.contains("Summary: Latency"),
            "{text}"
        );
    }
}

#[test]
fn coreutils_and_a_shell_run_unchanged() {
    let dir = tempdir("shell");
    let script =
        "for i in 1 2 3; do echo line $i; done | sort -r | tr a-z A-Z; ls / >/dev/null; echo ok";
    let plain = Command::new("sh").arg("-c").arg(script).output().unwrap();
    let mut c = command("sh", Mode::Preloaded, &dir);
    c.arg("-c").arg(script);
    let pre = run_bounded(c, LIMIT);
    assert_eq!(plain.stdout, pre.stdout);
    assert_eq!(
        plain.stderr, pre.stderr,
        "the library writes nothing to stderr"
    );
    assert!(pre.status.success());
}
