//! Experiment 13: unmodified programs from Debian (`sockperf`, `iperf3`, `redis-server`
//! and `redis-benchmark`) run plain and under `coresident run`, side by side in one run,
//! over TCP loopback; the table reports the ratios against issue 13's targets, and the
//! CPU time the two processes spent per byte (throughput tests) or per operation
//! (latency and request tests), from `getrusage` (the client, reaped with `wait4`) and
//! `/proc/PID/stat` (the server, read before it is stopped).
//!
//! Needs the programs (`apt-get install -y sockperf iperf3 redis-server redis-tools`) and
//! the library and CLI built in the same profile as the study:
//! `cargo build --release -p coresident-preload -p coresident-cli`.
//!
//! | test | metric | target (coresident / plain) |
//! |---|---|---|
//! | sockperf ping-pong, 64 B | average latency, µs (p50 too) | ≤ 0.2 |
//! | sockperf throughput, 1 KiB | MB/s | ≥ 3 |
//! | iperf3, one stream | Gbit/s | ≥ 2 |
//! | redis-benchmark GET, 50 clients | requests/s | ≥ 1.3 |
//! | redis-benchmark GET, 1 client | requests/s (p50 too) | ≥ 2 |

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::report::{Csv, Panel, Pivot};

/// One measured run of one test.
#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    /// The test's metric (see the module table).
    value: f64,
    /// The median latency in µs, where the tool reports one (0 otherwise).
    p50_us: f64,
    /// CPU time of both processes per operation, µs (latency and request tests).
    cpu_us_per_op: f64,
    /// CPU time of both processes per payload byte, ns (throughput tests).
    cpu_ns_per_byte: f64,
}

/// How the two processes of a test run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Plain,
    Coresident,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::Coresident => "coresident",
        }
    }
}

/// The tests, their units and targets: (key, title, unit, target ratio, higher is better).
const TESTS: [(&str, &str, &str, f64, bool); 5] = [
    (
        "sockperf-pp-64",
        "sockperf ping-pong 64 B",
        "µs avg latency",
        0.2,
        false,
    ),
    (
        "sockperf-tp-1k",
        "sockperf throughput 1 KiB",
        "MB/s",
        3.0,
        true,
    ),
    ("iperf3-1", "iperf3, one stream", "Gbit/s", 2.0, true),
    (
        "redis-get-50",
        "redis-benchmark GET, 50 clients",
        "req/s",
        1.3,
        true,
    ),
    (
        "redis-get-1",
        "redis-benchmark GET, 1 client",
        "req/s",
        2.0,
        true,
    ),
];

/// Where the study binary's profile keeps the CLI and the library.
struct Tools {
    /// `coresident` (the CLI), if built.
    cli: Option<PathBuf>,
    /// `libcoresident_preload.so`.
    lib: PathBuf,
}

fn tools() -> Result<Tools, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    // target/<profile>/examples/study
    let profile = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("no target directory")?;
    let lib = [
        profile.join("libcoresident_preload.so"),
        profile.join("deps/libcoresident_preload.so"),
    ]
    .into_iter()
    .find(|p| p.is_file())
    .ok_or_else(|| {
        format!(
            "libcoresident_preload.so is not built in {}: run `cargo build --release -p coresident-preload -p coresident-cli` first",
            profile.display()
        )
    })?;
    let cli = Some(profile.join("coresident")).filter(|p| p.is_file());
    Ok(Tools { cli, lib })
}

fn have(prog: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_or(0, |a| a.port())
}

/// A command for `prog` in `mode`: under `coresident run --registry DIR` (or, without
/// the CLI, the same environment it sets).
fn command(tools: &Tools, registry: &Path, mode: Mode, prog: &str) -> Command {
    let mut c = match (mode, &tools.cli) {
        (Mode::Plain, _) => Command::new(prog),
        (Mode::Coresident, Some(cli)) => {
            let mut c = Command::new(cli);
            c.arg("run")
                .arg("--registry")
                .arg(registry)
                .arg("--")
                .arg(prog);
            c.env("CORESIDENT_PRELOAD_LIB", &tools.lib);
            c
        }
        (Mode::Coresident, None) => {
            let mut c = Command::new(prog);
            c.env("LD_PRELOAD", &tools.lib)
                .env("CORESIDENT_REGISTRY", registry);
            c
        }
    };
    c.env_remove("CORESIDENT_INPROC");
    c
}

/// Waits (10 s at most) until `port` has a listening TCP socket, without connecting.
fn wait_listening(port: u16) -> bool {
    let hex = format!(":{port:04X}");
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        let up = ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|f| {
            std::fs::read_to_string(f).is_ok_and(|t| {
                t.lines().skip(1).any(|l| {
                    let c: Vec<&str> = l.split_whitespace().collect();
                    c.len() > 3 && c[1].ends_with(&hex) && c[3] == "0A"
                })
            })
        });
        if up {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// CPU seconds (user + system) of a live process, from `/proc/PID/stat`.
fn proc_cpu(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start after ')'.
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    // State is field 3 overall, so utime (14) and stime (15) are at 11 and 12 here.
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks / hz
}

/// A server process, stopped when dropped; its CPU time is read just before.
struct Server {
    child: Child,
}

impl Server {
    fn cpu(&self) -> f64 {
        proc_cpu(self.child.id())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a client to completion: its stdout and CPU seconds (from `wait4`'s rusage), or
/// an error after `limit`.
fn client(mut c: Command, limit: Duration) -> Result<(String, f64), String> {
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut out = child.stdout.take().ok_or("no stdout")?;
    let mut err = child.stderr.take().ok_or("no stderr")?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let pid = child.id() as libc::pid_t;
    let start = Instant::now();
    loop {
        let mut status = 0;
        // SAFETY: a zeroed rusage is a valid out-parameter.
        let mut ru: libc::rusage = unsafe { core::mem::zeroed() };
        // SAFETY: `pid` is our child, `status` and `ru` valid out-parameters.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
        if r == pid {
            let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
            let cpu = secs(ru.ru_utime) + secs(ru.ru_stime);
            let text = reader.join().unwrap_or_default();
            let errs = err_reader.join().unwrap_or_default();
            if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
                return Err(format!("client failed: {}{}", text, errs));
            }
            return Ok((text + &errs, cpu));
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            return Err("client made no exit in time".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The number after `key` in `text` (the first occurrence).
fn number_after(text: &str, key: &str) -> Option<f64> {
    let i = text.find(key)? + key.len();
    let rest = text[i..]
        .trim_start_matches(|c: char| c.is_whitespace() || c == '=' || c == '"' || c == ':');
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == 'e' || c == '-' || c == '+'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// One run of test `key` in `mode` for `secs` seconds (or the request count of redis).
fn measure(
    tools: &Tools,
    reg: &Path,
    key: &str,
    mode: Mode,
    secs: u32,
    quick: bool,
) -> Result<Sample, String> {
    let port = free_port();
    let p = port.to_string();
    let limit = Duration::from_secs(u64::from(secs) * 4 + 60);
    let spawn = |mut c: Command| -> Result<Server, String> {
        let child = c
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        let s = Server { child };
        if wait_listening(port) {
            Ok(s)
        } else {
            Err("server did not listen".into())
        }
    };
    let t = secs.to_string();
    match key {
        "sockperf-pp-64" | "sockperf-tp-1k" => {
            let mut s = command(tools, reg, mode, "sockperf");
            s.args(["sr", "--tcp", "-i", "127.0.0.1", "-p", &p]);
            let server = spawn(s)?;
            let mut c = command(tools, reg, mode, "sockperf");
            let pp = key == "sockperf-pp-64";
            c.args([
                if pp { "pp" } else { "tp" },
                "--tcp",
                "-i",
                "127.0.0.1",
                "-p",
                &p,
                "-t",
                &t,
                "-m",
                if pp { "64" } else { "1024" },
            ]);
            let (out, ccpu) = client(c, limit)?;
            let cpu = ccpu + server.cpu();
            if pp {
                let lat = number_after(&out, "Summary: Latency is")
                    .ok_or(format!("no latency in {out}"))?;
                let p50 = number_after(&out, "percentile 50.000").unwrap_or(0.0);
                let rts = number_after(&out, "ReceivedMessages")
                    .unwrap_or(1.0)
                    .max(1.0);
                Ok(Sample {
                    value: lat,
                    p50_us: p50,
                    cpu_us_per_op: cpu * 1e6 / rts,
                    cpu_ns_per_byte: 0.0,
                })
            } else {
                let mbps =
                    number_after(&out, "BandWidth is").ok_or(format!("no bandwidth in {out}"))?;
                let bytes = mbps * 1e6 * f64::from(secs);
                Ok(Sample {
                    value: mbps,
                    p50_us: 0.0,
                    cpu_us_per_op: 0.0,
                    cpu_ns_per_byte: cpu * 1e9 / bytes.max(1.0),
                })
            }
        }
        "iperf3-1" => {
            let mut s = command(tools, reg, mode, "iperf3");
            s.args(["-s", "-1", "-p", &p, "-B", "127.0.0.1"]);
            let server = spawn(s)?;
            let mut c = command(tools, reg, mode, "iperf3");
            c.args(["-c", "127.0.0.1", "-p", &p, "-t", &t, "-J"]);
            let (out, ccpu) = client(c, limit)?;
            let cpu = ccpu + server.cpu();
            let i = out.find("\"sum_received\"").ok_or("no sum_received")?;
            let bps = number_after(&out[i..], "\"bits_per_second\"").ok_or("no bits_per_second")?;
            let bytes = number_after(&out[i..], "\"bytes\"").unwrap_or(1.0);
            Ok(Sample {
                value: bps / 1e9,
                p50_us: 0.0,
                cpu_us_per_op: 0.0,
                cpu_ns_per_byte: cpu * 1e9 / bytes.max(1.0),
            })
        }
        "redis-get-50" | "redis-get-1" => {
            let dir = reg.join("redis");
            let _ = std::fs::create_dir_all(&dir);
            let mut s = command(tools, reg, mode, "redis-server");
            s.args([
                "--port",
                &p,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&dir);
            let server = spawn(s)?;
            let clients = if key == "redis-get-50" { "50" } else { "1" };
            let n: u32 = match (quick, clients) {
                (true, "50") => 20_000,
                (true, _) => 5_000,
                (false, "50") => 500_000,
                (false, _) => 100_000,
            };
            let mut c = command(tools, reg, mode, "redis-benchmark");
            c.args([
                "-p",
                &p,
                "-t",
                "get",
                "-n",
                &n.to_string(),
                "-c",
                clients,
                "--csv",
            ]);
            let (out, ccpu) = client(c, limit)?;
            let cpu = ccpu + server.cpu();
            let line = out
                .lines()
                .find(|l| l.starts_with("\"GET"))
                .ok_or(format!("no GET line in {out}"))?;
            let cells: Vec<f64> = line
                .split(',')
                .skip(1)
                .filter_map(|c| c.trim_matches('"').parse().ok())
                .collect();
            let rps = *cells.first().ok_or("no rps")?;
            let p50_ms = cells.get(3).copied().unwrap_or(0.0);
            Ok(Sample {
                value: rps,
                p50_us: p50_ms * 1e3,
                cpu_us_per_op: cpu * 1e6 / f64::from(n),
                cpu_ns_per_byte: 0.0,
            })
        }
        _ => Err(format!("no test {key}")),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Experiment 13 (see the module docs).
pub fn exp13(quick: bool, out: &Path) -> (Csv, Vec<String>) {
    let mut csv = Csv::new(
        &[
            "test",
            "mode",
            "value",
            "p50_us",
            "cpu_us_per_op",
            "cpu_ns_per_byte",
        ],
        2,
    );
    let expected: Vec<String> = TESTS
        .iter()
        .flat_map(|t| [Mode::Plain, Mode::Coresident].map(|m| format!("{},{}", t.0, m.name())))
        .collect();
    println!("## 13. Unmodified programs: plain TCP loopback against `coresident run`\n");
    let tools = match tools() {
        Ok(t) => t,
        Err(e) => {
            println!("> skipped: {e}\n");
            return (csv, expected);
        }
    };
    let missing: Vec<&str> = ["sockperf", "iperf3", "redis-server", "redis-benchmark"]
        .into_iter()
        .filter(|p| !have(p))
        .collect();
    if !missing.is_empty() {
        println!("> skipped: not installed: {} (apt-get install -y sockperf iperf3 redis-server redis-tools)\n", missing.join(", "));
        return (csv, expected);
    }
    let reg = std::env::temp_dir().join(format!("coresident-study13-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&reg);
    let _ = std::fs::create_dir_all(&reg);
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&reg, std::fs::Permissions::from_mode(0o700));
    }
    let (secs, rounds) = if quick { (1, 1) } else { (10, 3) };
    let mut table = Pivot::new("test");
    let mut ratios = Vec::new();
    let mut progress = crate::Progress {
        exp: 13,
        done: 0,
        total: TESTS.len() * 2 * rounds,
    };
    for (i, (key, title, unit, target, higher)) in TESTS.iter().enumerate() {
        let mut got: [Vec<Sample>; 2] = [Vec::new(), Vec::new()];
        // Side by side: the two modes alternate, round after round.
        for _ in 0..rounds {
            for (m, mode) in [Mode::Plain, Mode::Coresident].into_iter().enumerate() {
                progress.step(&format!("{key} {}", mode.name()));
                match measure(&tools, &reg, key, mode, secs, quick) {
                    Ok(s) => got[m].push(s),
                    Err(e) => eprintln!("\n{key} {}: {e}", mode.name()),
                }
            }
        }
        let med = |m: usize, f: fn(&Sample) -> f64| median(got[m].iter().map(f).collect());
        for (m, mode) in [Mode::Plain, Mode::Coresident].into_iter().enumerate() {
            if got[m].is_empty() {
                continue;
            }
            csv.rows.push(vec![
                (*key).into(),
                mode.name().into(),
                format!("{:.3}", med(m, |s| s.value)),
                format!("{:.3}", med(m, |s| s.p50_us)),
                format!("{:.3}", med(m, |s| s.cpu_us_per_op)),
                format!("{:.4}", med(m, |s| s.cpu_ns_per_byte)),
            ]);
        }
        if got[0].is_empty() || got[1].is_empty() {
            continue;
        }
        let (plain, acc) = (med(0, |s| s.value), med(1, |s| s.value));
        let ratio = if plain > 0.0 { acc / plain } else { 0.0 };
        let met = if *higher {
            ratio >= *target
        } else {
            ratio <= *target
        };
        ratios.push((i as f64 + 1.0, ratio, *target));
        let row = format!("{title} ({unit})");
        table.set(&row, "plain", format!("{plain:.2}"));
        table.set(&row, "coresident", format!("{acc:.2}"));
        table.set(&row, "ratio", format!("{ratio:.2}"));
        table.set(
            &row,
            "target",
            format!("{}{target}", if *higher { "≥ " } else { "≤ " }),
        );
        table.set(&row, "met", if met { "yes".into() } else { "no".into() });
        let cpu = |m| {
            if med(m, |s| s.cpu_ns_per_byte) > 0.0 {
                format!("{:.3} ns/B", med(m, |s| s.cpu_ns_per_byte))
            } else {
                format!("{:.2} µs/op", med(m, |s| s.cpu_us_per_op))
            }
        };
        table.set(&row, "CPU plain", cpu(0));
        table.set(&row, "CPU coresident", cpu(1));
        if med(0, |s| s.p50_us) > 0.0 {
            table.set(&row, "p50 µs plain", format!("{:.1}", med(0, |s| s.p50_us)));
            table.set(
                &row,
                "p50 µs coresident",
                format!("{:.1}", med(1, |s| s.p50_us)),
            );
        }
    }
    drop(progress);
    println!(
        "{} s per run, {rounds} round(s), medians; both processes of a test run the same way.\n",
        secs
    );
    println!("{}", table.markdown());
    crate::report::plot(
        &out.join("exp13.svg"),
        &[Panel {
            title: "coresident / plain, per test (1: sockperf pp, 2: sockperf tp, 3: iperf3, 4: redis 50, 5: redis 1)".into(),
            x_desc: "test",
            y_desc: "ratio",
            log_x: false,
            log_y: false,
            series: vec![
                ("measured".into(), ratios.iter().map(|r| (r.0, r.1)).collect()),
                ("target".into(), ratios.iter().map(|r| (r.0, r.2)).collect()),
            ],
        }],
    );
    let _ = std::fs::remove_dir_all(&reg);
    (csv, expected)
}
